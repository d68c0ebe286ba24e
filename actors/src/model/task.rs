//! The `tasks` collection and the task state machine.

use serde::{Deserialize, Serialize};

use super::{string_enum, Object, Timestamp};

string_enum! {
    /// `tasks.status`.
    #[derive(Default)]
    pub enum TaskStatus {
        #[default]
        Pending = "pending",
        Assigned = "assigned",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
        Retry = "retry",
    }
}

string_enum! {
    /// `tasks.task_category`.
    #[derive(Default)]
    pub enum TaskCategory {
        #[default]
        AiAnalysis = "ai_analysis",
        DataProcessing = "data_processing",
        Reporting = "reporting",
    }
}

/// A move the task state machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid task transition {from} -> {to}")]
pub struct InvalidTransition {
    /// The state the task is in.
    pub from: TaskStatus,
    /// The state that was asked for.
    pub to: TaskStatus,
}

impl TaskStatus {
    /// Whether the task can never move again.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// Whether an agent holds (or held) a lease on the task in this state.
    pub const fn is_leased(self) -> bool {
        matches!(self, TaskStatus::Assigned | TaskStatus::Running)
    }

    /// The task state machine, in one place:
    ///
    /// ```text
    /// pending ──► assigned ──► running ──► completed | failed | cancelled | retry
    ///    ▲           │  └────────────────► completed | failed | cancelled | retry
    ///    └───────────┴── requeue (lease lapsed or released) ◄── running
    /// retry ──► pending | cancelled          pending ──► cancelled
    /// ```
    ///
    /// `assigned → completed` is allowed so an agent that finishes quickly need not send a
    /// separate start report (one round trip less per task).
    pub fn transition(self, to: TaskStatus) -> Result<TaskStatus, InvalidTransition> {
        use TaskStatus::*;
        let legal = match self {
            Pending => matches!(to, Assigned | Cancelled),
            Assigned | Running => {
                matches!(
                    to,
                    Running | Completed | Failed | Cancelled | Retry | Pending
                ) && !(self == Running && to == Running)
            }
            Retry => matches!(to, Pending | Cancelled),
            Completed | Failed | Cancelled => false,
        };
        if legal {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }
}

/// A document of the `tasks` collection: one unit of work for one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    /// Unique identifier.
    pub task_id: String,
    /// The pipeline this task belongs to.
    pub pipeline_id: String,
    /// For subtasks: the task that spawned it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,

    /// Stage number within the pipeline.
    pub stage: u32,
    /// What kind of work (`bias_detection`); routed to agents with this capability.
    pub task_type: String,
    /// Broad category.
    pub task_category: TaskCategory,

    /// Lifecycle status.
    pub status: TaskStatus,
    /// Finer-grained status text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Attempts so far beyond the first.
    pub retry_count: u32,
    /// Attempts allowed beyond the first.
    pub max_retries: u32,

    /// Agent currently holding the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_agent_id: Option<String>,
    /// Every assignment, in order.
    pub assignment_history: Vec<Assignment>,

    /// Task-specific parameters.
    pub parameters: Object,
    /// Input data snapshot.
    pub input_data: Object,
    /// Expected output schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<Object>,

    /// Result of execution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Object>,
    /// Result metadata (confidence, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_metadata: Option<Object>,
    /// Processed output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_data: Option<Object>,

    /// Last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,

    /// Timing and resource figures.
    pub performance_metrics: TaskPerformance,

    /// 1–10, higher first.
    pub priority: u8,
    /// Latest acceptable completion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// Expected run time, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<f64>,
    /// Task ids that must complete first.
    pub dependencies: Vec<String>,
    /// Task ids that wait on this one.
    pub dependent_tasks: Vec<String>,

    /// Where the task sits in its pipeline.
    pub pipeline_context: PipelineContext,
    /// What the task needs from an agent.
    pub resource_requirements: ResourceRequirements,

    /// Quality scores reported with the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality_scores: Option<QualityScores>,
    /// Validator verdicts.
    pub validation_results: Vec<ValidationResult>,

    /// Free-form metadata.
    pub metadata: Object,
    /// Searchable tags.
    pub tags: Vec<String>,

    /// Creation.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Current assignment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<Timestamp>,
    /// Execution start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Completion (any terminal state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// The deadline as an instant the reaper acts on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Timestamp>,

    /// Who created the task.
    pub created_by: String,
    /// Who changed it last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,

    /// Soft-delete flag.
    pub is_deleted: bool,
    /// When it was soft-deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,

    /// Extension: the fencing token of the latest lease granted on this task. Only grows; the
    /// store refuses a write that carries a lower one.
    pub lease_token: u64,
    /// Extension: when the current lease lapses unless renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
    /// Extension: when a task in `retry` becomes pending again (set by its coordinator from
    /// the stage's backoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// Extension: optimistic-concurrency revision, bumped by every write.
    pub revision: u64,
}

impl Default for Task {
    fn default() -> Self {
        Task {
            task_id: String::new(),
            pipeline_id: String::new(),
            parent_task_id: None,
            stage: 1,
            task_type: String::new(),
            task_category: TaskCategory::default(),
            status: TaskStatus::Pending,
            substatus: None,
            retry_count: 0,
            max_retries: 0,
            assigned_agent_id: None,
            assignment_history: Vec::new(),
            parameters: Object::new(),
            input_data: Object::new(),
            expected_output: None,
            result: None,
            result_metadata: None,
            output_data: None,
            error: None,
            performance_metrics: TaskPerformance::default(),
            priority: 5,
            deadline: None,
            estimated_duration: None,
            dependencies: Vec::new(),
            dependent_tasks: Vec::new(),
            pipeline_context: PipelineContext::default(),
            resource_requirements: ResourceRequirements::default(),
            quality_scores: None,
            validation_results: Vec::new(),
            metadata: Object::new(),
            tags: Vec::new(),
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            assigned_at: None,
            started_at: None,
            completed_at: None,
            deadline_at: None,
            created_by: String::new(),
            updated_by: None,
            is_deleted: false,
            deleted_at: None,
            lease_token: 0,
            lease_expires_at: None,
            retry_at: None,
            revision: 0,
        }
    }
}

impl Task {
    /// Moves the task to `to` through [`TaskStatus::transition`], stamping `updated_at` and the
    /// timestamp that belongs to the new state. Leaves the task untouched on an illegal move.
    pub fn transition_to(
        &mut self,
        to: TaskStatus,
        now: Timestamp,
    ) -> Result<(), InvalidTransition> {
        self.status = self.status.transition(to)?;
        self.updated_at = now;
        match to {
            TaskStatus::Assigned => self.assigned_at = Some(now),
            TaskStatus::Running => self.started_at = Some(now),
            s if s.is_terminal() => self.completed_at = Some(now),
            _ => {}
        }
        Ok(())
    }
}

/// An entry of `tasks.assignment_history`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Assignment {
    /// The agent.
    pub agent_id: String,
    /// When it got the task.
    pub assigned_at: Timestamp,
    /// When it lost or gave it up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Timestamp>,
    /// Why (`completed`, `lease_expired`, `agent_inactive`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `tasks.error`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Stack trace from the agent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
    /// Extra detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Object>,
    /// Whether another attempt may succeed.
    pub is_retryable: bool,
}

/// `tasks.performance_metrics` (seconds, MiB, percent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskPerformance {
    /// From creation to first assignment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_time: Option<f64>,
    /// From assignment to result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<f64>,
    /// From creation to result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<f64>,
    /// Peak memory reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_usage_mb: Option<f64>,
    /// CPU reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage_percent: Option<f64>,
}

/// `tasks.pipeline_context`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineContext {
    /// The stage's name.
    pub stage_name: String,
    /// Stage numbers this stage waits for.
    pub stage_dependencies: Vec<u32>,
    /// Whether the stage is on the pipeline's critical path.
    pub is_critical_path: bool,
    /// Extension: which run of the stage created the task (a failed stage may be run again).
    pub attempt: u32,
    /// Extension: the task's position when its stage fans out over a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_index: Option<u32>,
}

/// `tasks.resource_requirements`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceRequirements {
    /// Memory, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Whether a GPU is needed.
    pub gpu_required: bool,
    /// Expected run time, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<f64>,
}

/// `tasks.quality_scores`, each 0.0–1.0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityScores {
    /// Accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Completeness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completeness: Option<f64>,
    /// Relevance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance: Option<f64>,
    /// Overall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overall: Option<f64>,
}

/// An entry of `tasks.validation_results`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationResult {
    /// Validator name.
    pub validator: String,
    /// Verdict.
    pub passed: bool,
    /// Score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Object>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn the_happy_path_is_legal() {
        assert_eq!(Pending.transition(Assigned), Ok(Assigned));
        assert_eq!(Assigned.transition(Running), Ok(Running));
        assert_eq!(Running.transition(Completed), Ok(Completed));
        assert_eq!(Running.transition(Retry), Ok(Retry));
        assert_eq!(Retry.transition(Pending), Ok(Pending));
        assert_eq!(Running.transition(Pending), Ok(Pending), "requeue");
    }

    #[test]
    fn terminal_states_never_move() {
        for from in [Completed, Failed, Cancelled] {
            for &to in TaskStatus::ALL {
                assert_eq!(
                    from.transition(to),
                    Err(InvalidTransition { from, to }),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn illegal_moves_are_refused_with_both_states() {
        let err = Pending.transition(Completed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid task transition pending -> completed"
        );
        assert!(Pending.transition(Running).is_err());
        assert!(Retry.transition(Running).is_err());
        assert!(Running.transition(Running).is_err());
        assert!(Pending.transition(Pending).is_err());
    }

    #[test]
    fn transition_to_stamps_times_and_leaves_task_alone_on_error() {
        let mut t = Task::default();
        let now = Timestamp::from_millis(10_000);
        t.transition_to(Assigned, now).unwrap();
        assert_eq!((t.status, t.assigned_at), (Assigned, Some(now)));
        t.transition_to(Completed, now.plus(std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(t.completed_at.unwrap().millis(), 11_000);
        let before = t.clone();
        assert!(t.transition_to(Running, now).is_err());
        assert_eq!(t, before);
    }

    #[test]
    fn status_strings_are_the_seeds() {
        let names: Vec<_> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pending",
                "assigned",
                "running",
                "completed",
                "failed",
                "cancelled",
                "retry"
            ]
        );
        assert_eq!("retry".parse::<TaskStatus>(), Ok(Retry));
        let err = "done".parse::<TaskStatus>().unwrap_err();
        assert!(
            err.to_string().contains("expected one of: pending"),
            "{err}"
        );
    }
}
