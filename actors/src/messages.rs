//! Messages that flow between actors (each actor's private messages live beside it).

use actix::Message;

use crate::model::Task;

/// A task reached a state its coordinator must act on (completed, failed, retry), sent by
/// whoever persisted it (dispatcher, reaper) to the supervisor, which forwards it to the
/// pipeline's coordinator when that runs here.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct TaskSettled {
    /// The task as stored.
    pub task: Task,
}

/// Tasks of these types were queued: waiting fetches may now be answered.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct TasksQueued {
    /// The task types queued; empty means any (after a rebuild).
    pub task_types: Vec<String>,
}

/// One finished attempt, for the metrics windows.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct TaskSample {
    /// Task type.
    pub task_type: String,
    /// Agent that ran it.
    pub agent_id: String,
    /// Pipeline.
    pub pipeline_id: String,
    /// Seconds from creation to first assignment.
    pub queue_time: Option<f64>,
    /// Seconds from assignment to result.
    pub processing_time: Option<f64>,
    /// Whether it succeeded.
    pub ok: bool,
}

impl TaskSample {
    /// The sample of a settled task.
    pub fn of(task: &Task, agent_id: &str) -> Self {
        TaskSample {
            task_type: task.task_type.clone(),
            agent_id: agent_id.to_string(),
            pipeline_id: task.pipeline_id.clone(),
            queue_time: task.performance_metrics.queue_time,
            processing_time: task.performance_metrics.processing_time,
            ok: task.status == crate::model::TaskStatus::Completed,
        }
    }
}
