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
//! - [`redis`]: Redis through `deadpool-redis`; every multi-key change is one Lua script.
//!
//! [`open`] picks one from the configuration.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use mcpd_actors::broker::{Broker, BrokerError};
use mcpd_actors::clock::SharedClock;

use crate::config::{BrokerBackend, BrokerConfig};

/// Opens the configured broker backend. Errors name the configuration key behind them.
pub async fn open(cfg: &BrokerConfig, clock: SharedClock) -> Result<Arc<dyn Broker>, OpenError> {
    match cfg.backend {
        BrokerBackend::Memory => Ok(Arc::new(memory::MemoryBroker::new(clock))),
        BrokerBackend::Redis => {
            let broker = redis::RedisBroker::connect(
                &cfg.redis.url,
                &cfg.redis.key_prefix,
                cfg.redis.pool_size,
                clock,
            )
            .await
            .map_err(|source| OpenError {
                key: "broker.redis.url",
                source,
            })?;
            Ok(Arc::new(broker))
        }
    }
}

/// A broker that could not be opened, with the configuration key behind it.
#[derive(Debug, thiserror::Error)]
#[error("cannot open broker ({key}): {source}")]
pub struct OpenError {
    /// The configuration key to look at.
    pub key: &'static str,
    /// What the backend said.
    #[source]
    pub source: BrokerError,
}
