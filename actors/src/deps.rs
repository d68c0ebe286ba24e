//! What every actor is given: the two ports, the clock, the journal and the settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::journal::{Actor, Journal};
use crate::store::Store;

/// Scheduler timings and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long a lease lasts unless renewed by a heartbeat or progress report.
    pub lease_ttl: Duration,
    /// Silence after which an agent is marked inactive and its leases released.
    pub heartbeat_timeout: Duration,
    /// How often the reaper looks for lapsed leases and silent agents.
    pub reaper_interval: Duration,
    /// Most leases or agents the reaper handles per pass.
    pub reaper_batch: usize,
    /// Lease lapses a task survives before it fails (`lease_expired_too_often`).
    pub max_lease_lapses: u32,
    /// Lifetime of the lock through which one instance coordinates a pipeline.
    pub pipeline_lock_ttl: Duration,
    /// How often a coordinator re-reads its pipeline's tasks from the store, to see results
    /// that reached other instances.
    pub resync_interval: Duration,
    /// How often the supervisor looks for running pipelines nobody coordinates.
    pub pipeline_scan_interval: Duration,
    /// How often a waiting fetch re-checks the queues (tasks queued by other instances).
    pub fetch_recheck_interval: Duration,
    /// Longest a fetch may wait for work.
    pub fetch_max_wait: Duration,
    /// Metrics aggregation window.
    pub metrics_window: Duration,
    /// How long metric windows are kept (`expires_at`).
    pub metrics_retention: Duration,
    /// First restart delay of a failed actor; doubles per consecutive failure.
    pub restart_backoff: Duration,
    /// Cap of the restart delay.
    pub restart_backoff_max: Duration,
    /// How often an agent's `last_heartbeat` is written to the store (the broker sees every one).
    pub heartbeat_persist_interval: Duration,
    /// Whether exponential retry delays are jittered (off only for exact tests).
    pub retry_jitter: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease_ttl: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            reaper_interval: Duration::from_secs(5),
            reaper_batch: 256,
            max_lease_lapses: 5,
            pipeline_lock_ttl: Duration::from_secs(15),
            resync_interval: Duration::from_secs(2),
            pipeline_scan_interval: Duration::from_secs(5),
            fetch_recheck_interval: Duration::from_millis(500),
            fetch_max_wait: Duration::from_secs(30),
            metrics_window: Duration::from_secs(60),
            metrics_retention: Duration::from_secs(30 * 86_400),
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(10),
            heartbeat_persist_interval: Duration::from_secs(30),
            retry_jitter: true,
        }
    }
}

/// Counters every actor updates and tests, metrics and the admin API read.
#[derive(Debug, Default)]
pub struct Counters {
    /// Actor restarts after a failure, all actors.
    pub actor_restarts: AtomicU64,
    /// Leases granted.
    pub leases_granted: AtomicU64,
    /// Results accepted.
    pub results_accepted: AtomicU64,
    /// Results refused (stale or foreign lease).
    pub results_refused: AtomicU64,
    /// Tasks requeued by the reaper.
    pub tasks_requeued: AtomicU64,
    /// Agents marked inactive by the reaper.
    pub agents_expired: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Shared dependencies of the actors.
#[derive(Clone)]
pub struct Deps {
    /// Source of truth.
    pub store: Arc<dyn Store>,
    /// Dispatch fast path.
    pub broker: Arc<dyn Broker>,
    /// Wall clock.
    pub clock: SharedClock,
    /// Event and audit builder.
    pub journal: Journal,
    /// Timings.
    pub settings: Settings,
    /// This instance's identity (lock owner, event source).
    pub instance_id: String,
    /// Shared counters.
    pub counters: Arc<Counters>,
}

impl Deps {
    /// The scheduler acting on this instance.
    pub fn system(&self) -> Actor {
        Actor::system(&self.instance_id)
    }

    /// The current time.
    pub fn now(&self) -> crate::model::Timestamp {
        self.clock.now()
    }
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("store", &self.store.backend())
            .field("broker", &self.broker.backend())
            .field("instance_id", &self.instance_id)
            .finish()
    }
}
