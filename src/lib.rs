//! mcpd, the Management Control Panel daemon: schedules multi-stage analysis pipelines onto a
//! fleet of pulling agents. The actors and the domain model live in the `mcpd-actors` crate;
//! this crate wires them to the outside world.
//!
//! # Layout
//!
//! - [`broker`] — the broker backends: [`broker::memory`] (in-process) and [`broker::redis`] (Redis, Lua scripts).
//! - [`store`] — the store backends: [`store::embedded`] (SQLite) and [`store::mongo`] (MongoDB).
//! - [`config`] — layered configuration (`config/default.toml`, `--config FILE`,
//!   `MCPD__SECTION__KEY`), validation with one-line errors, masked rendering.
//! - [`daemon`] — the library entry points: [`daemon::run`] (serve until a shutdown future
//!   completes) and [`daemon::migrate`].
//! - [`http`] — the HTTP surface: `/healthz`, `/readyz` and its pluggable readiness checks,
//!   JSON errors; later the REST API, the agent WebSocket and `/metrics`.
//! - [`shutdown`] — the root cancellation token, the task tracker, the SIGTERM/SIGINT future and
//!   the documented shutdown order.
//! - [`templates`] — pipeline templates usable by name (`config/pipelines/*.toml`).
//! - `main.rs` / `cli.rs` (binary only) — command line, tracing set-up, exit codes.
#![warn(missing_docs)]

pub mod broker;
pub mod config;
pub mod daemon;
pub mod http;
pub mod shutdown;
pub mod store;
pub mod templates;
