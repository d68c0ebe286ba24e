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
    /// Times the broker was found to have lost its data and was rebuilt from the store.
    pub broker_rebuilds: AtomicU64,
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

/// Restart bookkeeping of one supervised actor: how many times in a row it failed, and so how
/// long to wait before it runs again.
#[derive(Debug, Default, Clone)]
pub struct Restarts {
    consecutive: u32,
    last: Option<tokio::time::Instant>,
}

impl Restarts {
    /// Records a failure (counted in [`Counters::actor_restarts`]) and returns the delay before
    /// the restart: `restart_backoff`, doubled per consecutive failure, capped at
    /// `restart_backoff_max`. A failure long after the previous one (ten caps) starts over.
    pub fn failed(&mut self, settings: &Settings, counters: &Counters) -> Duration {
        Counters::bump(&counters.actor_restarts);
        let now = tokio::time::Instant::now();
        let calm = settings.restart_backoff_max.saturating_mul(10);
        if self.last.is_some_and(|t| now.duration_since(t) > calm) {
            self.consecutive = 0;
        }
        self.last = Some(now);
        self.consecutive = self.consecutive.saturating_add(1);
        let factor = 1u32.checked_shl(self.consecutive - 1).unwrap_or(u32::MAX);
        settings
            .restart_backoff
            .saturating_mul(factor)
            .min(settings.restart_backoff_max)
    }

    /// Failures in a row so far.
    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }
}

/// Called first in `started()` of a supervised actor: after a restart, holds every message
/// back for the backoff `hold` (then clears it), so a failing actor cannot spin.
pub fn hold_after_restart<A>(hold: &mut Duration, ctx: &mut actix::Context<A>)
where
    A: actix::Actor<Context = actix::Context<A>>,
{
    use actix::AsyncContext;
    let delay = std::mem::take(hold);
    if !delay.is_zero() {
        ctx.wait(actix::fut::wrap_future::<_, A>(actix::clock::sleep(delay)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn restart_delays_double_up_to_the_cap_and_calm_down() {
        let settings = Settings {
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_millis(350),
            ..Settings::default()
        };
        let counters = Counters::default();
        let mut r = Restarts::default();
        let delays: Vec<u64> = (0..4)
            .map(|_| r.failed(&settings, &counters).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert_eq!(Counters::get(&counters.actor_restarts), 4);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            r.failed(&settings, &counters),
            Duration::from_millis(100),
            "calm again"
        );
        assert_eq!(r.consecutive(), 1);
    }
}
