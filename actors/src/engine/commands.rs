//! Commands from outside a pipeline's own progress (cancel, pause, resume) and an agent's
//! failure report.

use super::*;

/// Applies a [`Command`] to a pipeline and its tasks.
pub fn command(
    p: &mut Pipeline,
    tasks: &[Task],
    cmd: Command,
    now: Timestamp,
    journal: &Journal,
    actor: &Actor,
) -> Result<Plan, CommandRefused> {
    let refused = CommandRefused {
        command: cmd,
        status: p.status,
    };
    let target = match cmd {
        Command::Cancel => PipelineStatus::Cancelled,
        Command::Pause => PipelineStatus::Paused,
        Command::Resume => PipelineStatus::Running,
    };
    p.status.transition(target).map_err(|_| refused)?;
    let before = p.clone();
    let mut run = Run::new(p, tasks, now, journal, actor);
    let current: Vec<Task> = tasks.to_vec();
    match cmd {
        Command::Cancel => {
            for t in &current {
                run.cancel_task(t, "pipeline_cancelled");
            }
            for st in run.p.stages.iter_mut() {
                if matches!(st.status, StageStatus::Pending | StageStatus::Running) {
                    st.status = StageStatus::Cancelled;
                    st.completed_at = Some(now);
                }
            }
            run.p.completed_at = Some(now);
            run.p.performance_metrics.total_duration =
                run.p.started_at.map(|s| now.seconds_since(s));
        }
        Command::Pause => {
            for t in current.iter().filter(|t| t.status == TaskStatus::Pending) {
                run.plan.dequeue.push(QueueEntry::of(t));
            }
        }
        Command::Resume => {
            for t in current.iter().filter(|t| t.status == TaskStatus::Pending) {
                run.plan.enqueue.push(QueueEntry::of(t));
            }
        }
    }
    run.p.status = target;
    let kind = match cmd {
        Command::Cancel => "pipeline_cancelled",
        Command::Pause => "pipeline_paused",
        Command::Resume => "pipeline_resumed",
    };
    run.event(kind, None, Object::new());
    Ok(run.into_plan(&before))
}

/// Records an agent's failure report on a task: a retryable error with retries left moves it to
/// `retry` (its coordinator schedules the backoff), anything else to `failed`. Returns the new
/// state, or why the move is illegal.
pub fn record_failure(
    task: &mut Task,
    error: TaskError,
    now: Timestamp,
) -> Result<TaskStatus, crate::model::InvalidTransition> {
    let next = if error.is_retryable && task.retry_count < task.max_retries {
        TaskStatus::Retry
    } else {
        TaskStatus::Failed
    };
    task.transition_to(next, now)?;
    if next == TaskStatus::Retry {
        task.retry_count += 1;
        task.retry_at = None;
    }
    if let Some(last) = task.assignment_history.last_mut() {
        if last.released_at.is_none() {
            last.released_at = Some(now);
            last.reason = Some(format!("failed: {}", error.code));
        }
    }
    task.lease_expires_at = None;
    task.error = Some(error);
    Ok(next)
}

/// The assignment record of a fresh lease.
pub fn assignment(agent_id: &str, now: Timestamp) -> Assignment {
    Assignment {
        agent_id: agent_id.to_string(),
        assigned_at: now,
        released_at: None,
        reason: None,
    }
}
