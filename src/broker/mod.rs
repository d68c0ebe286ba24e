//! Broker backends: implementations of [`mcpd_actors::broker::Broker`], the dispatch fast path
//! (priority queues, task leases with fencing tokens, locks, rate limits, sessions, caches and
//! agent presence).
//!
//! Every backend keeps the logical key layout documented on [`mcpd_actors::broker`] and passes
//! the one conformance suite in `tests/broker_conformance/`. Nothing a broker holds is the
//! truth: after a flush, [`mcpd_actors::broker::Broker::rebuild_from`] repopulates it from the
//! store.
//!
//! - [`memory`]: in-process structures behind one mutex, for a single instance and for tests.

pub mod memory;
pub mod redis;
