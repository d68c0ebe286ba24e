//! Graceful shutdown: the root cancellation token, the task tracker, and the order of things.
//!
//! One [`Shutdown`] exists per daemon. Every long-lived task is spawned on its
//! [`TaskTracker`](Shutdown::tracker) and watches a token derived from the root
//! [`CancellationToken`], so "stop" is one call and "wait until everything stopped" is another.
//!
//! # Shutdown order
//!
//! When the shutdown future passed to [`crate::daemon::run`] completes (SIGTERM/SIGINT in
//! production, anything in tests), the daemon walks these phases in order. The order is what
//! makes a graceful stop lose nothing: work is not accepted that could not be finished, and
//! nothing is released before its state is persisted.
//!
//! 1. **Stop intake** — listeners stop accepting connections; `/readyz` turns 503 so load
//!    balancers drain us; no new pipelines are accepted.
//! 2. **Stop dispatch** — the dispatcher hands out no new leases (agents asking for work get
//!    "none"), so the set of in-flight tasks can only shrink.
//! 3. **Drain** — in-flight requests and results are given up to
//!    `server.shutdown_timeout_seconds` to complete ([`Shutdown::drain`]). Whatever is still
//!    running afterwards keeps its lease and is requeued by another instance (or by us after
//!    restart) when the lease lapses — at-least-once, never lost.
//! 4. **Persist** — pending store writes (group-commit buffers, metrics windows) are flushed.
//! 5. **Release locks** — pipeline-coordinator locks are released (owner-checked) so another
//!    instance can take over immediately instead of waiting for the lock TTL.
//! 6. **Exit** — the process exits 0.
//!
//! Phases 2, 4 and 5 are wired by the scheduler and the store/broker as they land; the daemon
//! logs each phase so an operator can see where a slow stop spends its time.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The root of the daemon's cancellation tree and the tracker of its tasks.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, not yet cancelled root.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token. Cancelling it starts the shutdown of everything derived from it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A token cancelled with the root but cancellable on its own, for one component.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Tracks every long-lived task so [`Shutdown::drain`] can wait for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begins shutdown: cancels the root token.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Closes the tracker and waits for all tracked tasks, at most `timeout`.
    ///
    /// Returns `true` when every task finished in time, `false` when the deadline cut the wait
    /// short (the stragglers are abandoned; their leases lapse and their tasks are requeued).
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Completes when the process receives SIGTERM or SIGINT.
///
/// The signal handlers are installed when this is *called*, not when it is first polled, so a
/// signal arriving between start-up and the first poll is not lost (and does not kill the
/// process with the default disposition).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                    _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                }
            }
            (Err(err), _) | (_, Err(err)) => {
                // Without handlers the default disposition still terminates us; degrade to
                // Ctrl-C only rather than refusing to start.
                tracing::warn!(cause = %err, "cannot install signal handlers; only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_tasks_that_honour_the_token() {
        let shutdown = Shutdown::new();
        let token = shutdown.child_token();
        shutdown.tracker().spawn(async move {
            token.cancelled().await;
        });
        shutdown.trigger();
        assert!(shutdown.is_shutting_down());
        assert!(shutdown.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_timeout() {
        let shutdown = Shutdown::new();
        shutdown
            .tracker()
            .spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        shutdown.trigger();
        assert!(!shutdown.drain(Duration::from_secs(2)).await);
    }
}
