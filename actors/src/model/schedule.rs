//! Scheduling rules that are pure functions of a definition and a time: an agent's working
//! hours and maintenance window, and the delay before a task's next attempt.

use std::str::FromStr;
use std::time::Duration;

use chrono::{Datelike, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;

use super::{BackoffStrategy, RetryConfig, SchedulingConfig, Timestamp, Weekday};

/// Cap on a retry delay when the definition sets none: one hour.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3600);

/// A scheduling configuration that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not an IANA time zone.
    #[error("scheduling_config.timezone: unknown time zone {0:?}")]
    TimeZone(String),
    /// Not "HH:MM".
    #[error("scheduling_config.{field}: {value:?} is not a time of day (HH:MM)")]
    TimeOfDay {
        /// The field.
        field: &'static str,
        /// What was given.
        value: String,
    },
}

fn time_of_day(field: &'static str, value: &str) -> Result<NaiveTime, ScheduleError> {
    NaiveTime::parse_from_str(value, "%H:%M").map_err(|_| ScheduleError::TimeOfDay {
        field,
        value: value.to_string(),
    })
}

fn weekday(d: chrono::Weekday) -> Weekday {
    match d {
        chrono::Weekday::Mon => Weekday::Mon,
        chrono::Weekday::Tue => Weekday::Tue,
        chrono::Weekday::Wed => Weekday::Wed,
        chrono::Weekday::Thu => Weekday::Thu,
        chrono::Weekday::Fri => Weekday::Fri,
        chrono::Weekday::Sat => Weekday::Sat,
        chrono::Weekday::Sun => Weekday::Sun,
    }
}

impl SchedulingConfig {
    /// Checks the time zone and every time of day.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        Tz::from_str(&self.timezone).map_err(|_| ScheduleError::TimeZone(self.timezone.clone()))?;
        if let Some(w) = &self.working_hours {
            time_of_day("working_hours.start", &w.start)?;
            time_of_day("working_hours.end", &w.end)?;
        }
        if let Some(m) = &self.maintenance_window {
            time_of_day("maintenance_window.start", &m.start)?;
        }
        Ok(())
    }

    /// Whether the agent takes work at `now`: inside its working hours (local to its time
    /// zone; no hours means always) and outside its daily maintenance window.
    ///
    /// Working hours whose end is before their start run overnight and belong to the day they
    /// start on; a maintenance window may also cross midnight.
    pub fn accepts_work_at(&self, now: Timestamp) -> Result<bool, ScheduleError> {
        let tz = Tz::from_str(&self.timezone)
            .map_err(|_| ScheduleError::TimeZone(self.timezone.clone()))?;
        let local = tz.from_utc_datetime(&now.to_chrono().naive_utc());
        let time = local.time();
        let today = weekday(local.weekday());
        let yesterday = weekday(local.weekday().pred());

        if let Some(w) = &self.working_hours {
            let start = time_of_day("working_hours.start", &w.start)?;
            let end = time_of_day("working_hours.end", &w.end)?;
            let inside = if start <= end {
                w.days.contains(&today) && start <= time && time < end
            } else {
                (w.days.contains(&today) && time >= start)
                    || (w.days.contains(&yesterday) && time < end)
            };
            if !inside {
                return Ok(false);
            }
        }
        if let Some(m) = &self.maintenance_window {
            let start = time_of_day("maintenance_window.start", &m.start)?;
            let minutes_now = i64::from(time.num_seconds_from_midnight()) / 60;
            let minutes_start = i64::from(start.num_seconds_from_midnight()) / 60;
            let duration = i64::from(m.duration_minutes);
            // Minutes since today's window opened, or since yesterday's if it crossed midnight.
            let since_today = minutes_now - minutes_start;
            let since_yesterday = since_today + 24 * 60;
            let inside =
                (0..duration).contains(&since_today) || (0..duration).contains(&since_yesterday);
            if inside {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl RetryConfig {
    /// The delay before retry number `attempt` (1 for the first retry).
    ///
    /// `fixed`: `delay`; `linear`: `delay × attempt`; `exponential`: `delay × 2^(attempt−1)`
    /// with "equal jitter" — half the delay fixed, half scaled by `jitter` (a sample from
    /// [0, 1), passed in so the function stays pure and tests exact). Every strategy is
    /// capped at `max_delay_seconds` (default [`DEFAULT_MAX_DELAY`]).
    pub fn delay_for(&self, attempt: u32, jitter: f64) -> Duration {
        let base = Duration::from_secs(self.delay_seconds.into());
        let cap = self
            .max_delay_seconds
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(DEFAULT_MAX_DELAY);
        let attempt = attempt.max(1);
        let raw = match self.backoff_strategy {
            BackoffStrategy::Fixed => base,
            BackoffStrategy::Linear => base.saturating_mul(attempt),
            BackoffStrategy::Exponential => {
                let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
                let full = base.saturating_mul(factor).min(cap);
                let jitter = jitter.clamp(0.0, 1.0);
                full / 2 + full.mul_f64(jitter) / 2
            }
        };
        raw.min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MaintenanceWindow, WorkingHours};

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn office(tz: &str) -> SchedulingConfig {
        SchedulingConfig {
            timezone: tz.into(),
            working_hours: Some(WorkingHours {
                start: "09:00".into(),
                end: "17:00".into(),
                days: vec![
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn working_hours_follow_the_agents_time_zone() {
        let c = office("Europe/Berlin");
        // Monday 2026-01-05, 08:30 UTC = 09:30 in Berlin (CET, +1).
        assert!(c.accepts_work_at(at("2026-01-05T08:30:00Z")).unwrap());
        // 16:30 UTC = 17:30 Berlin: after hours.
        assert!(!c.accepts_work_at(at("2026-01-05T16:30:00Z")).unwrap());
        // Saturday.
        assert!(!c.accepts_work_at(at("2026-01-10T10:00:00Z")).unwrap());
        // In UTC the same instant 08:30 is before hours.
        assert!(!office("UTC")
            .accepts_work_at(at("2026-01-05T08:30:00Z"))
            .unwrap());
    }

    #[test]
    fn overnight_hours_belong_to_their_start_day() {
        let mut c = office("UTC");
        let w = c.working_hours.as_mut().unwrap();
        w.start = "22:00".into();
        w.end = "06:00".into();
        w.days = vec![Weekday::Fri];
        assert!(
            c.accepts_work_at(at("2026-01-09T23:00:00Z")).unwrap(),
            "Fri 23:00"
        );
        assert!(
            c.accepts_work_at(at("2026-01-10T05:59:00Z")).unwrap(),
            "Sat 05:59"
        );
        assert!(
            !c.accepts_work_at(at("2026-01-10T23:00:00Z")).unwrap(),
            "Sat 23:00"
        );
    }

    #[test]
    fn maintenance_window_blocks_work_even_across_midnight() {
        let c = SchedulingConfig {
            maintenance_window: Some(MaintenanceWindow {
                start: "23:30".into(),
                duration_minutes: 60,
            }),
            ..Default::default()
        };
        assert!(c.accepts_work_at(at("2026-01-05T23:00:00Z")).unwrap());
        assert!(!c.accepts_work_at(at("2026-01-05T23:45:00Z")).unwrap());
        assert!(!c.accepts_work_at(at("2026-01-06T00:15:00Z")).unwrap());
        assert!(c.accepts_work_at(at("2026-01-06T00:30:00Z")).unwrap());
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = office("Mars/Olympus");
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "scheduling_config.timezone: unknown time zone \"Mars/Olympus\""
        );
        c.timezone = "UTC".into();
        c.working_hours.as_mut().unwrap().end = "25:00".into();
        let e = c.accepts_work_at(at("2026-01-05T10:00:00Z")).unwrap_err();
        assert!(e.to_string().contains("working_hours.end"), "{e}");
    }

    #[test]
    fn backoff_strategies_and_cap() {
        let mut r = RetryConfig {
            max_retries: 5,
            backoff_strategy: BackoffStrategy::Fixed,
            delay_seconds: 10,
            max_delay_seconds: Some(60),
        };
        assert_eq!(r.delay_for(3, 0.5), Duration::from_secs(10));
        r.backoff_strategy = BackoffStrategy::Linear;
        assert_eq!(r.delay_for(3, 0.5), Duration::from_secs(30));
        assert_eq!(r.delay_for(9, 0.5), Duration::from_secs(60), "capped");
        r.backoff_strategy = BackoffStrategy::Exponential;
        // 10, 20, 40 s before jitter; jitter 1.0 keeps the full delay, 0.0 halves it.
        assert_eq!(r.delay_for(1, 1.0), Duration::from_secs(10));
        assert_eq!(r.delay_for(2, 1.0), Duration::from_secs(20));
        assert_eq!(r.delay_for(3, 0.0), Duration::from_secs(20));
        assert_eq!(r.delay_for(3, 0.5), Duration::from_secs(30));
        assert_eq!(
            r.delay_for(30, 1.0),
            Duration::from_secs(60),
            "capped, no overflow"
        );
    }
}
