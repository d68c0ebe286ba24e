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
