//! The real `mcpd` binary: check-config, configuration errors, start-up, SIGTERM.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, temp_dir, unique_name, wait_until};

/// `mcpd` with a clean environment: no inherited `MCPD__…` or `RUST_LOG` can change the outcome.
fn mcpd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcpd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MCPD__") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run mcpd")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts a configuration failure: exit 2, exactly one stderr line mentioning `key`.
fn assert_config_error(output: &Output, key: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err:?}");
    assert!(err.contains(key), "stderr does not name {key}: {err}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
}

#[test]
fn check_config_prints_the_masked_effective_config() {
    let output = run(mcpd()
        .arg("check-config")
        .env("MCPD__BROKER__BACKEND", "redis")
        .env("MCPD__BROKER__REDIS__URL", "redis://:hunter2@cache:6379")
        .env("MCPD__STORE__BACKEND", "mongodb")
        .env(
            "MCPD__STORE__MONGODB__URI",
            "mongodb://mcpd:s3cret@db:27017/",
        ));
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("[broker.redis]"), "{out}");
    assert!(out.contains(r#"backend = "redis""#), "{out}");
    assert!(out.contains("redis://:****@cache:6379"), "{out}");
    assert!(out.contains("mongodb://mcpd:****@db:27017/"), "{out}");
    assert!(!out.contains("hunter2") && !out.contains("s3cret"), "{out}");
}

#[test]
fn check_config_reads_the_config_file() {
    let dir = temp_dir("cli_file");
    let file = dir.join("mcpd.toml");
    std::fs::write(&file, "[scheduler]\nlease_ttl_seconds = 12\n").unwrap();
    let output = run(mcpd().arg("--config").arg(&file).arg("check-config"));
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(stdout(&output).contains("lease_ttl_seconds = 12"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_broker_backend_exits_2_naming_the_key() {
    let output = run(mcpd()
        .arg("check-config")
        .env("MCPD__BROKER__BACKEND", "foo"));
    assert_config_error(&output, "broker.backend");
    assert!(stderr(&output).contains(r#"unknown backend "foo""#));
}

#[test]
fn unparsable_http_addr_exits_2_naming_the_key() {
    let output = run(mcpd()
        .arg("check-config")
        .env("MCPD__SERVER__HTTP_ADDR", "not-an-address"));
    assert_config_error(&output, "server.http_addr");
}

#[test]
fn mongodb_backend_without_uri_exits_2_naming_the_uri_key() {
    let output = run(mcpd()
        .arg("check-config")
        .env("MCPD__STORE__BACKEND", "mongodb"));
    assert_config_error(&output, "store.mongodb.uri");
}

#[test]
fn bad_config_on_run_exits_2_and_writes_nothing() {
    let parent = temp_dir("cli_nodata");
    let data_dir = parent.join("data");
    // `run` is the default command; a bad config must stop it before it creates anything.
    for args in [&[][..], &["run"][..], &["migrate"][..]] {
        let output = run(mcpd()
            .args(args)
            .env("MCPD__STORE__DATA_DIR", &data_dir)
            .env("MCPD__SERVER__HTTP_ADDR", "127.0.0.1:0")
            .env("MCPD__BROKER__BACKEND", "foo"));
        assert_config_error(&output, "broker.backend");
        assert!(
            !data_dir.exists(),
            "{} was created by {args:?}",
            data_dir.display()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&parent).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(parent);
}

#[test]
fn migrate_with_valid_config_succeeds() {
    let data_dir = temp_dir("cli_migrate").join("data");
    let output = run(mcpd()
        .arg("migrate")
        .env("MCPD__STORE__DATA_DIR", &data_dir));
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(
        data_dir.join("mcpd.db").is_file(),
        "the embedded store was created"
    );
    let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
}

#[test]
fn daemon_runs_on_mongodb_and_redis_and_reports_ready() {
    let data_dir = temp_dir("cli_prod").join("data");
    let mongo = support::shared_mongo().url().to_string();
    let env = [
        ("MCPD__STORE__BACKEND", "mongodb".to_string()),
        ("MCPD__STORE__MONGODB__URI", mongo),
        ("MCPD__STORE__MONGODB__DATABASE", unique_name("clidb")),
        ("MCPD__BROKER__BACKEND", "redis".to_string()),
        ("MCPD__BROKER__REDIS__URL", support::shared_redis().url()),
        (
            "MCPD__BROKER__REDIS__KEY_PREFIX",
            format!("{}:", unique_name("cli")),
        ),
    ];
    let mut daemon = Daemon::start_with(&data_dir, &env);
    wait_healthy(&mut daemon);
    let ready = wait_until(Duration::from_secs(20), || {
        matches!(http_get(daemon.http_addr, "/readyz"), Ok((200, _)))
    });
    assert!(ready, "/readyz never 200 with MongoDB and Redis");
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("mcpd still running 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        !data_dir.exists(),
        "no embedded store when the store is MongoDB"
    );
    let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
}

/// A running `mcpd run`, killed on drop if the test did not stop it.
struct Daemon {
    child: Child,
    http_addr: SocketAddr,
}

impl Daemon {
    fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Starts `mcpd run` with extra environment overrides.
    fn start_with(data_dir: &Path, env: &[(&str, String)]) -> Self {
        let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tcp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = mcpd()
            .arg("run")
            .env("MCPD__SERVER__HTTP_ADDR", http_addr.to_string())
            .env("MCPD__SERVER__TCP_ADDR", tcp_addr.to_string())
            .env("MCPD__STORE__DATA_DIR", data_dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mcpd");
        Self { child, http_addr }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain syscall on a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// Waits for exit at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 GET: returns (status code, body). `Connection: close`, so the body ends at
/// EOF.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_healthy(daemon: &mut Daemon) {
    let addr = daemon.http_addr;
    let healthy = wait_until(Duration::from_secs(20), || {
        matches!(http_get(addr, "/healthz"), Ok((200, _)))
    });
    if !healthy {
        let status = daemon.child.try_wait().ok().flatten();
        panic!("mcpd never answered /healthz on {addr} (exit status: {status:?})");
    }
}

#[test]
fn daemon_serves_health_and_exits_0_within_5s_of_sigterm() {
    let data_dir = temp_dir("cli_run").join("data");
    let mut daemon = Daemon::start(&data_dir);
    wait_healthy(&mut daemon);

    let (status, body) = http_get(daemon.http_addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("healthz body is JSON");
    assert_eq!(json["status"], "ok");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    let (status, _) = http_get(daemon.http_addr, "/readyz").unwrap();
    assert_eq!(status, 200);
    let (status, body) = http_get(daemon.http_addr, "/no/such/route").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("not_found"), "{body}");
    assert!(data_dir.is_dir(), "embedded store data_dir was not created");

    let sent = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("mcpd still running 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(sent.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
}

#[test]
fn daemon_exits_0_on_sigint() {
    let data_dir = temp_dir("cli_int").join("data");
    let mut daemon = Daemon::start(&data_dir);
    wait_healthy(&mut daemon);
    daemon.signal(libc::SIGINT);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("mcpd still running 5 s after SIGINT");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let _ = std::fs::remove_dir_all(data_dir.parent().unwrap());
}

#[test]
fn port_in_use_fails_with_an_error_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let data_dir = std::env::temp_dir().join(unique_name("cli_busy"));
    let output = run(mcpd()
        .env("MCPD__SERVER__HTTP_ADDR", addr.to_string())
        .env("MCPD__STORE__DATA_DIR", &data_dir)
        .env("MCPD__LOG__LEVEL", "off"));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("server.http_addr"), "{err}");
    let _ = std::fs::remove_dir_all(data_dir);
}
