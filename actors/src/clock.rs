//! Wall-clock time, injected.
//!
//! Every timestamp the scheduler writes and every lease or session expiry it judges comes from
//! a [`Clock`], never from `SystemTime` directly, so tests can freeze and advance time. Timers
//! that *wait* use tokio time; [`TokioClock`] ties the two together so that a test which pauses
//! tokio's clock and advances it moves the wall clock by the same amount.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::model::Timestamp;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_utc()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(start.millis())))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// Wall-clock time that follows tokio's clock: `start` plus the tokio time elapsed since the
/// clock was made. Under `tokio::time::pause()` it advances exactly as the test advances tokio.
#[derive(Debug)]
pub struct TokioClock {
    start: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(TokioClock {
            start,
            origin: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.start.plus(self.origin.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp::from_millis(5_000));
        assert_eq!(c.now().millis(), 5_000);
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now().millis(), 5_250);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new(Timestamp::from_millis(1_000));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(c.now().millis(), 31_000);
    }
}
