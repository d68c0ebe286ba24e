//! The `agents` collection.

use serde::{Deserialize, Serialize};

use super::{string_enum, Object, Timestamp};

string_enum! {
    /// `agents.type`.
    #[derive(Default)]
    pub enum AgentType {
        BiasDetector = "bias-detector",
        EmotionAnalyzer = "emotion-analyzer",
        Therapist = "therapist",
        #[default]
        General = "general",
    }
}

string_enum! {
    /// `agents.status`.
    #[derive(Default)]
    pub enum AgentStatus {
        Active = "active",
        #[default]
        Inactive = "inactive",
        Busy = "busy",
        Error = "error",
        Maintenance = "maintenance",
    }
}

string_enum! {
    /// A day of the week in `working_hours.days`.
    pub enum Weekday {
        Mon = "mon",
        Tue = "tue",
        Wed = "wed",
        Thu = "thu",
        Fri = "fri",
        Sat = "sat",
        Sun = "sun",
    }
}

/// A document of the `agents` collection: a registered worker and what it may run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agent {
    /// Unique identifier.
    pub agent_id: String,
    /// Display name.
    pub name: String,
    /// Agent kind.
    #[serde(rename = "type")]
    pub agent_type: AgentType,
    /// The task types this agent can run.
    pub capabilities: Vec<String>,
    /// Lifecycle status.
    pub status: AgentStatus,

    /// Hash of the agent's authentication token (never the token itself).
    pub auth_token: String,
    /// Permission strings (`task:execute`, `task:read`, …).
    pub permissions: Vec<String>,
    /// Hash of an optional API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,

    /// The agent software's semantic version.
    pub version: String,
    /// Version of this document's schema.
    pub schema_version: u32,

    /// Agent service endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Health-check endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<String>,
    /// WebSocket URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_url: Option<String>,

    /// Running performance figures.
    pub performance_metrics: AgentPerformance,
    /// What the agent may take on at once.
    pub resource_limits: ResourceLimits,
    /// When and how eagerly the agent is scheduled.
    pub scheduling_config: SchedulingConfig,

    /// Free-form metadata.
    pub metadata: Object,
    /// Searchable tags.
    pub tags: Vec<String>,

    /// When the agent registered.
    pub registered_at: Timestamp,
    /// Last heartbeat received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Timestamp>,
    /// Last task the agent completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_task_completed: Option<Timestamp>,
    /// Last change.
    pub updated_at: Timestamp,
    /// Creation.
    pub created_at: Timestamp,

    /// Who registered the agent.
    pub created_by: String,
    /// Who changed it last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,

    /// Soft-delete flag.
    pub is_deleted: bool,
    /// When it was soft-deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,

    /// Extension: optimistic-concurrency revision, bumped by every write.
    pub revision: u64,
}

/// `agents.performance_metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentPerformance {
    /// Tasks completed, all time.
    pub tasks_completed: u64,
    /// Tasks failed, all time.
    pub tasks_failed: u64,
    /// Mean seconds from assignment to result.
    pub average_response_time: f64,
    /// completed / (completed + failed), 0.0–1.0.
    pub success_rate: f64,
    /// The last 24 hours.
    pub last_24h: AgentLast24h,
    /// The last 7 days.
    pub last_7d: AgentLast7d,
    /// Extension: outcomes per hour over the last seven days, from which `last_24h` and
    /// `last_7d` are computed (oldest first, at most 168).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hourly: Vec<HourlyOutcomes>,
}

/// One hour of an agent's outcomes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HourlyOutcomes {
    /// Start of the hour.
    pub hour: Timestamp,
    /// Tasks completed.
    pub completed: u64,
    /// Attempts failed.
    pub failed: u64,
    /// Sum of response times, seconds.
    pub response_time_sum: f64,
    /// Most tasks held at once.
    pub peak_load: u32,
    /// Whether the agent was heard from (heartbeat or result) in this hour.
    pub seen: bool,
}

const HOUR_MS: i64 = 3_600_000;
const WEEK_HOURS: i64 = 7 * 24;

impl AgentPerformance {
    /// Adds outcomes at `now`: the all-time figures, the hour's bucket, and the 24-hour and
    /// 7-day windows recomputed from the buckets (older ones dropped).
    pub fn record(
        &mut self,
        now: Timestamp,
        completed: u64,
        failed: u64,
        response_time_sum: f64,
        peak_load: u32,
        registered_at: Timestamp,
    ) {
        let n = completed + failed;
        let before = self.tasks_completed + self.tasks_failed;
        if n > 0 {
            self.average_response_time = (self.average_response_time * before as f64
                + response_time_sum)
                / (before + n) as f64;
            self.tasks_completed += completed;
            self.tasks_failed += failed;
            self.success_rate =
                self.tasks_completed as f64 / (self.tasks_completed + self.tasks_failed) as f64;
        }
        let b = self.bucket(now);
        b.completed += completed;
        b.failed += failed;
        b.response_time_sum += response_time_sum;
        b.peak_load = b.peak_load.max(peak_load);
        b.seen = true;
        self.recompute(now, registered_at);
    }

    /// Notes that the agent was heard from at `now` (for `last_7d.availability`).
    pub fn mark_seen(&mut self, now: Timestamp, registered_at: Timestamp) {
        self.bucket(now).seen = true;
        self.recompute(now, registered_at);
    }

    fn bucket(&mut self, now: Timestamp) -> &mut HourlyOutcomes {
        let hour = Timestamp::from_millis(now.millis().div_euclid(HOUR_MS) * HOUR_MS);
        if self.hourly.last().is_none_or(|b| b.hour != hour) {
            self.hourly.push(HourlyOutcomes {
                hour,
                ..Default::default()
            });
        }
        self.hourly.last_mut().expect("pushed above")
    }

    fn recompute(&mut self, now: Timestamp, registered_at: Timestamp) {
        let this_hour = now.millis().div_euclid(HOUR_MS);
        self.hourly
            .retain(|b| this_hour - b.hour.millis().div_euclid(HOUR_MS) < WEEK_HOURS);
        let window = |hours: i64| {
            self.hourly
                .iter()
                .filter(move |b| this_hour - b.hour.millis().div_euclid(HOUR_MS) < hours)
        };
        let mean = |it: &mut dyn Iterator<Item = &HourlyOutcomes>| {
            let (mut sum, mut n, mut completed, mut peak) = (0.0, 0u64, 0u64, 0u32);
            for b in it {
                sum += b.response_time_sum;
                n += b.completed + b.failed;
                completed += b.completed;
                peak = peak.max(b.peak_load);
            }
            (if n > 0 { sum / n as f64 } else { 0.0 }, completed, peak)
        };
        let (avg24, done24, peak24) = mean(&mut window(24));
        self.last_24h = AgentLast24h {
            tasks_completed: done24,
            average_response_time: avg24,
            peak_load: peak24,
        };
        let (avg7, done7, _) = mean(&mut window(WEEK_HOURS));
        let lived_hours =
            (this_hour - registered_at.millis().div_euclid(HOUR_MS) + 1).clamp(1, WEEK_HOURS);
        let seen = window(WEEK_HOURS).filter(|b| b.seen).count() as f64;
        self.last_7d = AgentLast7d {
            tasks_completed: done7,
            average_response_time: avg7,
            availability: (100.0 * seen / lived_hours as f64).min(100.0),
        };
    }
}

/// `agents.performance_metrics.last_24h`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentLast24h {
    /// Tasks completed.
    pub tasks_completed: u64,
    /// Mean response time, seconds.
    pub average_response_time: f64,
    /// Most tasks held at once.
    pub peak_load: u32,
}

/// `agents.performance_metrics.last_7d`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentLast7d {
    /// Tasks completed.
    pub tasks_completed: u64,
    /// Mean response time, seconds.
    pub average_response_time: f64,
    /// Percentage of the window the agent was reachable.
    pub availability: f64,
}

/// `agents.resource_limits`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceLimits {
    /// Most tasks the agent holds at once.
    pub max_concurrent_tasks: u32,
    /// Memory ceiling, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u32>,
    /// CPU ceiling, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<u32>,
    /// Per-task timeout the agent asks for, seconds.
    pub timeout_seconds: u32,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            max_concurrent_tasks: 1,
            max_memory_mb: None,
            max_cpu_percent: None,
            timeout_seconds: 300,
        }
    }
}

/// `agents.scheduling_config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulingConfig {
    /// 1–10; higher is preferred.
    pub priority: u8,
    /// IANA time zone of the working hours (`Europe/Berlin`).
    pub timezone: String,
    /// When the agent takes work; absent means always.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_hours: Option<WorkingHours>,
    /// A daily window in which the agent takes no work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            priority: 5,
            timezone: "UTC".to_string(),
            working_hours: None,
            maintenance_window: None,
        }
    }
}

/// `scheduling_config.working_hours`: local `start`–`end` ("09:00"–"17:00") on `days`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingHours {
    /// Local start, "HH:MM".
    pub start: String,
    /// Local end, "HH:MM".
    pub end: String,
    /// Days on which the hours apply.
    pub days: Vec<Weekday>,
}

/// `scheduling_config.maintenance_window`: a daily local start and a duration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Local start, "HH:MM".
    pub start: String,
    /// Length, minutes.
    pub duration_minutes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn windows_hold_only_their_hours() {
        let born = Timestamp::from_millis(0);
        let mut p = AgentPerformance::default();
        p.record(Timestamp::from_millis(H / 2), 10, 0, 20.0, 3, born); // hour 0
        p.record(Timestamp::from_millis(30 * H), 4, 1, 10.0, 1, born); // hour 30
        assert_eq!((p.tasks_completed, p.tasks_failed), (14, 1));
        assert_eq!(
            p.last_24h.tasks_completed, 4,
            "hour 0 is older than a day at hour 30"
        );
        assert_eq!(p.last_24h.average_response_time, 2.0);
        assert_eq!(p.last_24h.peak_load, 1);
        assert_eq!(p.last_7d.tasks_completed, 14);
        assert_eq!(p.last_7d.average_response_time, 2.0);
        // Two hours heard from out of 31 lived.
        assert!(
            (p.last_7d.availability - 200.0 / 31.0).abs() < 1e-9,
            "{}",
            p.last_7d.availability
        );
        p.mark_seen(Timestamp::from_millis(200 * H), born);
        assert_eq!(p.hourly.len(), 1, "only the last week is kept");
        assert_eq!(
            (p.last_24h.tasks_completed, p.last_7d.tasks_completed),
            (0, 0)
        );
        assert!((p.last_7d.availability - 100.0 / 168.0).abs() < 1e-9);
        assert_eq!(p.tasks_completed, 14, "all-time figures stay");
    }
}
