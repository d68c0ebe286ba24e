#!/usr/bin/env bash
# Installs what the test suite needs (redis-server, SecantusDB in ./.venv), then runs
# formatting checks and the whole workspace's tests against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Redis: the harness spawns its own redis-server on a free port (nothing persistent).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: installing redis-server" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi
MCPD_TEST_REDIS_SERVER="$(command -v redis-server)"

# SecantusDB (MongoDB wire protocol) in a project-local virtualenv.
if [ ! -x .venv/bin/secantusd-py ]; then
    echo "test.sh: installing SecantusDB into .venv" >&2
    if ! python3 -m venv .venv; then
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
        python3 -m venv .venv
    fi
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet "secantusdb==0.7.0b3"
fi
MCPD_TEST_SECANTUSD="$PWD/.venv/bin/secantusd-py"

export MCPD_TEST_REDIS_SERVER MCPD_TEST_SECANTUSD

cargo fmt --all --check

if cargo nextest --version >/dev/null 2>&1; then
    # Under CI (CI=true) the `ci` profile retries a failed test once and reports it as flaky.
    cargo nextest run --workspace --no-fail-fast --profile "$([ "${CI:-}" = true ] && echo ci || echo default)"
else
    echo "test.sh: cargo-nextest not found, falling back to cargo test" >&2
    cargo test --workspace --no-fail-fast
fi
