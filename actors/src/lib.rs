//! # mcpd-actors
//!
//! The heart of mcpd: the domain model of the seed schema, the ports through which the
//! scheduler reaches the outside (the [`store::Store`] and the [`broker::Broker`]), and — with
//! the scheduler issue — the supervisor tree of actors that drives pipelines.
//!
//! # Layout
//! - [`model`]: the six seed collections as types, the task and pipeline state machines, and
//!   pipeline-definition validation. Pure; no I/O.
//! - [`store`]: the store trait (source of truth) — atomic [`store::Transition`]s with
//!   compare-and-set and fencing, queries with cursors.
//! - [`broker`]: the broker trait (dispatch fast path) — priority queues, leases with fencing
//!   tokens, locks, sessions, rate limits, caches, and rebuild from the store.
//! - [`clock`]: the injected wall clock.
//!
//! Backends (embedded SQLite, MongoDB, in-process, Redis) live in the `mcpd` crate, which
//! depends on this one and never the other way round.

#![warn(missing_docs)]

pub mod agent_registry;
pub mod broker;
pub mod clock;
pub mod deps;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod handle;
pub mod heartbeat_reaper;
pub mod hex;
pub mod journal;
pub mod messages;
pub mod metrics_aggregator;
pub mod model;
pub mod stage_coordinator;
pub mod stats;
pub mod store;
pub mod supervisor;
pub mod task_dispatcher;
