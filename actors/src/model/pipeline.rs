//! The `pipelines` collection: a pipeline's definition (`configuration`) and its execution
//! record (`status`, `stages`, results and metrics).

use serde::{Deserialize, Serialize};

use super::{string_enum, Object, Timestamp};

string_enum! {
    /// `pipelines.type`.
    #[derive(Default)]
    pub enum PipelineType {
        MentalHealthAnalysis = "mental_health_analysis",
        BiasDetection = "bias_detection",
        #[default]
        Custom = "custom",
    }
}

string_enum! {
    /// `pipelines.status`.
    #[derive(Default)]
    pub enum PipelineStatus {
        #[default]
        Created = "created",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
        Paused = "paused",
    }
}

string_enum! {
    /// `pipelines.stages[].status`. `cancelled` and `rolled_back` extend the seed for the
    /// `stop` and `rollback` error strategies.
    #[derive(Default)]
    pub enum StageStatus {
        #[default]
        Pending = "pending",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
        RolledBack = "rolled_back",
    }
}

string_enum! {
    /// `retry_config.backoff_strategy`.
    #[derive(Default)]
    pub enum BackoffStrategy {
        #[default]
        Fixed = "fixed",
        Linear = "linear",
        Exponential = "exponential",
    }
}

string_enum! {
    /// `error_strategy.on_stage_failure`.
    #[derive(Default)]
    pub enum OnStageFailure {
        Continue = "continue",
        #[default]
        Stop = "stop",
        Rollback = "rollback",
    }
}

string_enum! {
    /// `pipelines.security_level`.
    #[derive(Default)]
    pub enum SecurityLevel {
        #[default]
        Standard = "standard",
        Hipaa = "hipaa",
        Fhe = "fhe",
    }
}

/// A pipeline state change the state machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid pipeline transition {from} -> {to}")]
pub struct InvalidPipelineTransition {
    /// Current state.
    pub from: PipelineStatus,
    /// Requested state.
    pub to: PipelineStatus,
}

impl PipelineStatus {
    /// Whether the pipeline can never move again.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            PipelineStatus::Completed | PipelineStatus::Failed | PipelineStatus::Cancelled
        )
    }

    /// `created → running → completed | failed | cancelled`, `running ⇄ paused`, and
    /// `created | paused → cancelled`.
    pub fn transition(
        self,
        to: PipelineStatus,
    ) -> Result<PipelineStatus, InvalidPipelineTransition> {
        use PipelineStatus::*;
        let legal = match self {
            Created => matches!(to, Running | Cancelled),
            Running => matches!(to, Paused | Completed | Failed | Cancelled),
            Paused => matches!(to, Running | Cancelled | Failed),
            Completed | Failed | Cancelled => false,
        };
        if legal {
            Ok(to)
        } else {
            Err(InvalidPipelineTransition { from: self, to })
        }
    }
}

/// A document of the `pipelines` collection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    /// Unique identifier.
    pub pipeline_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,

    /// Pipeline kind.
    #[serde(rename = "type")]
    pub pipeline_type: PipelineType,
    /// The definition: stages, routing, thresholds.
    pub configuration: PipelineConfiguration,

    /// Lifecycle status.
    pub status: PipelineStatus,
    /// 0.0–1.0.
    pub progress: f64,
    /// The lowest-numbered stage still running (or the last one).
    pub current_stage: u32,

    /// Per-stage execution record.
    pub stages: Vec<StageState>,

    /// Original input.
    pub input_data: Object,
    /// Final output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_data: Option<Object>,
    /// Stage-by-stage results, keyed by stage number.
    pub intermediate_results: Object,

    /// Execution figures.
    pub performance_metrics: PipelinePerformance,
    /// Resource figures.
    pub resource_usage: ResourceUsage,

    /// What to do when a stage fails.
    pub error_strategy: ErrorStrategy,
    /// Errors met on the way.
    pub errors: Vec<PipelineErrorEntry>,

    /// 1–10, higher first.
    pub priority: u8,
    /// Do not start before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_start: Option<Timestamp>,
    /// Finish by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,

    /// Runtime context.
    pub context: Object,
    /// Free-form metadata.
    pub metadata: Object,
    /// Searchable tags.
    pub tags: Vec<String>,

    /// Security handling of the data.
    pub security_level: SecurityLevel,
    /// Whether PHI fields are encrypted at rest.
    pub encryption_enabled: bool,
    /// Embedded trail of user actions on the pipeline.
    pub audit_trail: Vec<AuditTrailEntry>,

    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// End (any terminal state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,

    /// Who submitted it.
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

/// `pipelines.configuration`: the definition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineConfiguration {
    /// The stages, a DAG through `dependencies`.
    pub stages: Vec<StageDefinition>,
    /// Dynamic routing configuration.
    pub routing_rules: Object,
    /// Minimum quality scores (`{"overall": 0.8}`); a result below them counts as a failure.
    pub quality_thresholds: Object,
}

/// `configuration.stages[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageDefinition {
    /// Stage number, unique within the pipeline.
    pub stage: u32,
    /// Name.
    pub name: String,
    /// Task type its tasks carry.
    pub task_type: String,
    /// Stage numbers that must complete first.
    pub dependencies: Vec<u32>,
    /// Whether the stage may run beside its siblings.
    pub is_parallel: bool,
    /// Limit for one attempt of one task, seconds.
    pub timeout_seconds: u32,
    /// Retries of the stage's tasks.
    pub retry_config: RetryConfig,
    /// Extension: fan-out. A JSON pointer into the stage input (see the coordinator) naming a
    /// list; the stage runs one task per item and its output gathers their outputs in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<String>,
}

/// `stages[].retry_config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts beyond the first.
    pub max_retries: u32,
    /// How delays grow.
    pub backoff_strategy: BackoffStrategy,
    /// Base delay, seconds.
    pub delay_seconds: u32,
    /// Extension: cap on any single delay, seconds (default: one hour).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay_seconds: Option<u32>,
}

/// `pipelines.stages[]`: the execution record of one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageState {
    /// Stage number.
    pub stage: u32,
    /// Name.
    pub name: String,
    /// Status.
    pub status: StageStatus,
    /// Task ids.
    pub tasks: Vec<String>,
    /// 0.0–1.0.
    pub progress: f64,
    /// Start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// End.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// Expected, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<f64>,
    /// Actual, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_duration: Option<f64>,
    /// The stage's results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Object>,
    /// Errors.
    pub errors: Vec<Object>,
    /// Extension: the current run of the stage (1, or 2 after `retry_failed_stages`).
    pub attempt: u32,
}

/// `pipelines.performance_metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelinePerformance {
    /// Seconds from start to end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<f64>,
    /// Per stage, seconds.
    pub stage_durations: Vec<f64>,
    /// 0.0–1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_success_rate: Option<f64>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_task_time: Option<f64>,
    /// MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_usage: Option<f64>,
    /// Tasks created.
    pub total_tasks: u64,
}

/// `pipelines.resource_usage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceUsage {
    /// CPU seconds.
    pub total_cpu_seconds: f64,
    /// MiB.
    pub total_memory_mb: f64,
    /// Most tasks running at once.
    pub peak_concurrent_tasks: u32,
    /// Per agent usage.
    pub agent_utilization: Object,
}

/// `pipelines.error_strategy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorStrategy {
    /// What a failed stage does to the pipeline.
    pub on_stage_failure: OnStageFailure,
    /// Failed tasks tolerated before the stage fails.
    pub max_failed_tasks: u32,
    /// Whether a failed stage is run again once.
    pub retry_failed_stages: bool,
}

impl Default for ErrorStrategy {
    fn default() -> Self {
        ErrorStrategy {
            on_stage_failure: OnStageFailure::Stop,
            max_failed_tasks: 0,
            retry_failed_stages: false,
        }
    }
}

/// `pipelines.errors[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineErrorEntry {
    /// Stage.
    pub stage: u32,
    /// Task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The error.
    pub error: Object,
    /// Whether the error strategy dealt with it.
    pub handled: bool,
}

/// `pipelines.audit_trail[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditTrailEntry {
    /// What was done.
    pub action: String,
    /// When.
    pub timestamp: Timestamp,
    /// By whom.
    pub user: String,
    /// Detail.
    pub details: Object,
}

impl Pipeline {
    /// Stage numbers whose execution record is `pending` and whose dependencies have all
    /// completed, in definition order: what a coordinator may start now. A stage without an
    /// execution record counts as pending.
    pub fn ready_stages(&self) -> Vec<u32> {
        let status_of = |n: u32| {
            self.stages
                .iter()
                .find(|s| s.stage == n)
                .map(|s| s.status)
                .unwrap_or_default()
        };
        self.configuration
            .stages
            .iter()
            .filter(|def| status_of(def.stage) == StageStatus::Pending)
            .filter(|def| {
                def.dependencies
                    .iter()
                    .all(|&d| status_of(d) == StageStatus::Completed)
            })
            .map(|def| def.stage)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipelineStatus::*;

    #[test]
    fn ready_stages_wait_for_every_dependency() {
        let def = |n: u32, deps: &[u32]| StageDefinition {
            stage: n,
            dependencies: deps.to_vec(),
            ..Default::default()
        };
        let state = |n: u32, status| StageState {
            stage: n,
            status,
            ..Default::default()
        };
        let mut p = Pipeline::default();
        p.configuration.stages = vec![def(1, &[]), def(2, &[1]), def(3, &[1]), def(4, &[2, 3])];
        assert_eq!(p.ready_stages(), vec![1]);
        p.stages = vec![state(1, StageStatus::Completed)];
        assert_eq!(p.ready_stages(), vec![2, 3], "parallel branches together");
        p.stages.push(state(2, StageStatus::Completed));
        p.stages.push(state(3, StageStatus::Running));
        assert_eq!(p.ready_stages(), Vec::<u32>::new());
        p.stages[2].status = StageStatus::Completed;
        assert_eq!(p.ready_stages(), vec![4]);
    }

    #[test]
    fn pipeline_state_machine() {
        assert!(Created.transition(Running).is_ok());
        assert!(Running.transition(Paused).is_ok());
        assert!(Paused.transition(Running).is_ok());
        assert!(Running.transition(Completed).is_ok());
        let err = Completed.transition(Running).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pipeline transition completed -> running"
        );
        assert!(Created.transition(Paused).is_err());
    }

    #[test]
    fn seed_type_field_name_is_kept() {
        let p = Pipeline {
            pipeline_type: PipelineType::BiasDetection,
            ..Default::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "bias_detection");
        assert_eq!(v["status"], "created");
        assert!(v.get("output_data").is_none(), "absent, not null");
    }
}
