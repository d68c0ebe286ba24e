//! The pipeline engine: what a [`StageCoordinator`](crate::stage_coordinator) decides, as pure
//! functions of a pipeline, its tasks and the time.
//!
//! [`reconcile`] looks at the stored state and returns a [`Plan`]: the pipeline as it should be
//! now, the tasks to create and update, what the broker must queue, drop or revoke, the events
//! to write, and when to look again. It is idempotent — reconciling the result changes nothing
//! until time passes or a task moves — so a coordinator that crashed, restarted or took over
//! from another instance simply reconciles again. No I/O here; the coordinator applies a plan
//! as one store transition and then touches the broker.
//!
//! # Stage inputs and outputs
//! A stage's input is `{"pipeline": <pipeline input_data>, "dependencies": {<stage name>:
//! <that stage's output>}}`. A fan-out stage (`fan_out = "/pipeline/texts"`, a JSON pointer into
//! that input) runs one task per list item, each with the input plus `"item"` and
//! `"item_index"` — and with the list itself left out (null), so tasks stay small. A stage's
//! output is its task's `output_data` (or `result`), or for a fan-out stage `{"items": [...]}`
//! in item order — the fan-in its dependants receive. The pipeline's `output_data` holds the
//! outputs of the stages nothing depends on, by name.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::broker::{Lease, QueueEntry};
use crate::journal::{obj, Actor, Journal};
use crate::model::Event;
use crate::model::{
    new_id, Assignment, Object, OnStageFailure, Pipeline, PipelineContext, PipelineErrorEntry,
    PipelineStatus, StageDefinition, StageState, StageStatus, Task, TaskError, TaskStatus,
    Timestamp,
};

/// What a reconciliation decided.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// Whether the pipeline document changed.
    pub pipeline_changed: bool,
    /// Tasks to create.
    pub inserts: Vec<Task>,
    /// Tasks changed, each with the status it had when read.
    pub updates: Vec<(Task, TaskStatus)>,
    /// Tasks to put in the broker's queues.
    pub enqueue: Vec<QueueEntry>,
    /// Tasks to take out of the queues.
    pub dequeue: Vec<QueueEntry>,
    /// Leases to revoke (timed out or cancelled tasks).
    pub revoke: Vec<(QueueEntry, Lease)>,
    /// Events to write with the transition.
    pub events: Vec<Event>,
    /// When to reconcile again even if nothing happens (retry due, timeout, deadline).
    pub next_wake: Option<Timestamp>,
}

impl Plan {
    /// Whether the plan writes anything.
    pub fn is_empty(&self) -> bool {
        !self.pipeline_changed && self.inserts.is_empty() && self.updates.is_empty()
    }

    fn wake_at(&mut self, t: Timestamp) {
        self.next_wake = Some(self.next_wake.map_or(t, |w| w.min(t)));
    }
}

/// A command from outside the pipeline's own progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop everything; the pipeline ends `cancelled`.
    Cancel,
    /// No new dispatch; running tasks finish.
    Pause,
    /// Dispatch again.
    Resume,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command:?} a pipeline that is {status}")]
pub struct CommandRefused {
    /// The command.
    pub command: Command,
    /// The pipeline's status.
    pub status: PipelineStatus,
}

/// Working state of one reconciliation: the pipeline being edited, the tasks as read, and an
/// overlay of the tasks changed so far (so one task changed twice is written once).
struct Run<'a> {
    p: &'a mut Pipeline,
    tasks: &'a [Task],
    changed: HashMap<String, (Task, TaskStatus)>,
    plan: Plan,
    now: Timestamp,
    journal: &'a Journal,
    actor: &'a Actor,
}

impl<'a> Run<'a> {
    fn new(
        p: &'a mut Pipeline,
        tasks: &'a [Task],
        now: Timestamp,
        journal: &'a Journal,
        actor: &'a Actor,
    ) -> Self {
        Run {
            p,
            tasks,
            changed: HashMap::new(),
            plan: Plan::default(),
            now,
            journal,
            actor,
        }
    }

    /// The finished plan: changed tasks in id order, and whether the pipeline (compared with
    /// `before`) changed — in which case it is stamped `updated_at`.
    fn into_plan(self, before: &Pipeline) -> Plan {
        let Run {
            p,
            changed,
            mut plan,
            now,
            ..
        } = self;
        let mut updates: Vec<(Task, TaskStatus)> = changed.into_values().collect();
        updates.sort_by(|a, b| a.0.task_id.cmp(&b.0.task_id));
        plan.updates = updates;
        if *p != *before {
            p.updated_at = now;
            plan.pipeline_changed = true;
        }
        plan
    }

    /// The current version of every task of `stage` in its current attempt, borrowed: a
    /// coordinator reconciles after every settled task, so nothing is cloned that is only read.
    fn stage_view(&self, stage: u32, attempt: u32) -> impl Iterator<Item = &Task> + '_ {
        let of_stage = move |t: &&Task| t.stage == stage && t.pipeline_context.attempt == attempt;
        self.tasks
            .iter()
            .filter(of_stage)
            .map(|t| self.changed.get(&t.task_id).map_or(t, |(c, _)| c))
            .chain(self.plan.inserts.iter().filter(of_stage))
    }

    /// Owned copies of the tasks of a stage, for the rare steps that change or keep them.
    fn stage_tasks(&self, stage: u32, attempt: u32) -> Vec<Task> {
        self.stage_view(stage, attempt).cloned().collect()
    }

    fn update(&mut self, before: &Task, after: Task) {
        let orig = self
            .changed
            .get(&before.task_id)
            .map(|(_, s)| *s)
            .unwrap_or(before.status);
        if let Some(ins) = self
            .plan
            .inserts
            .iter_mut()
            .find(|t| t.task_id == after.task_id)
        {
            *ins = after;
            return;
        }
        self.changed.insert(after.task_id.clone(), (after, orig));
    }

    fn event(&mut self, kind: &str, stage: Option<u32>, payload: Object) {
        let e = self
            .journal
            .pipeline_event(kind, self.p, stage, self.actor, payload, self.now);
        self.plan.events.push(e);
    }

    fn task_event(&mut self, kind: &str, task: &Task, payload: Object) {
        let e = self
            .journal
            .task_event(kind, task, self.actor, payload, self.now);
        self.plan.events.push(e);
    }

    fn state_mut(&mut self, stage: u32) -> &mut StageState {
        let idx = self
            .p
            .stages
            .iter()
            .position(|s| s.stage == stage)
            .unwrap_or_else(|| {
                self.p.stages.push(StageState {
                    stage,
                    attempt: 1,
                    ..Default::default()
                });
                self.p.stages.len() - 1
            });
        &mut self.p.stages[idx]
    }

    fn state(&self, stage: u32) -> Option<&StageState> {
        self.p.stages.iter().find(|s| s.stage == stage)
    }

    /// Ends a task that has not finished: dequeues or revokes it as its state needs.
    fn cancel_task(&mut self, task: &Task, reason: &str) {
        if task.status.is_terminal() {
            return;
        }
        let mut t = task.clone();
        let from = t.status;
        if t.transition_to(TaskStatus::Cancelled, self.now).is_err() {
            return;
        }
        t.substatus = Some(reason.to_string());
        t.retry_at = None;
        match from {
            TaskStatus::Pending => self.plan.dequeue.push(QueueEntry::of(&t)),
            TaskStatus::Assigned | TaskStatus::Running => {
                self.release_assignment(&mut t, reason);
                if let Some(lease) = recorded_lease(task) {
                    self.plan.revoke.push((QueueEntry::of(&t), lease));
                }
            }
            _ => {}
        }
        self.task_event("task_cancelled", &t, obj([("reason", reason.into())]));
        self.update(task, t);
    }

    fn release_assignment(&self, t: &mut Task, reason: &str) {
        if let Some(last) = t.assignment_history.last_mut() {
            if last.released_at.is_none() {
                last.released_at = Some(self.now);
                last.reason = Some(reason.to_string());
            }
        }
        t.lease_expires_at = None;
    }

    /// One failed attempt of a leased or finished-badly task: retry with backoff or fail.
    fn fail_attempt(
        &mut self,
        task: &Task,
        def: &StageDefinition,
        error: TaskError,
        jitter: &mut dyn FnMut() -> f64,
    ) {
        let mut t = task.clone();
        let lease = recorded_lease(task);
        let next = if error.is_retryable && t.retry_count < t.max_retries {
            TaskStatus::Retry
        } else {
            TaskStatus::Failed
        };
        if t.transition_to(next, self.now).is_err() {
            return;
        }
        self.release_assignment(&mut t, &error.code);
        if next == TaskStatus::Retry {
            t.retry_count += 1;
            let due = self
                .now
                .plus(def.retry_config.delay_for(t.retry_count, jitter()));
            t.retry_at = Some(due);
            self.plan.wake_at(due);
        }
        if let Some(lease) = lease {
            self.plan.revoke.push((QueueEntry::of(&t), lease));
        }
        let code = error.code.clone();
        t.error = Some(error);
        self.task_event(
            if next == TaskStatus::Retry {
                "task_retry_scheduled"
            } else {
                "task_failed"
            },
            &t,
            obj([
                ("reason", code.into()),
                ("retry_count", t.retry_count.into()),
            ]),
        );
        self.update(task, t);
    }
}

/// The lease the store records for a leased task (holder, token, grant-time expiry).
pub fn recorded_lease(task: &Task) -> Option<Lease> {
    let agent_id = task.assigned_agent_id.clone()?;
    if !task.status.is_leased() {
        return None;
    }
    Some(Lease {
        task_id: task.task_id.clone(),
        agent_id,
        token: task.lease_token,
        locked_at: task.assigned_at.unwrap_or(task.updated_at),
        expires_at: task.lease_expires_at.unwrap_or(task.updated_at),
    })
}

/// Brings a pipeline up to date with its tasks at `now`. See the module doc.
///
/// `jitter` yields samples in [0, 1) for retry backoff.
pub fn reconcile(
    p: &mut Pipeline,
    tasks: &[Task],
    now: Timestamp,
    journal: &Journal,
    actor: &Actor,
    jitter: &mut dyn FnMut() -> f64,
) -> Plan {
    let before = p.clone();
    let mut run = Run::new(p, tasks, now, journal, actor);
    step(&mut run, jitter);
    run.into_plan(&before)
}

fn step(run: &mut Run<'_>, jitter: &mut dyn FnMut() -> f64) {
    let now = run.now;
    if run.p.status.is_terminal() {
        return;
    }
    if run.p.status == PipelineStatus::Created {
        if let Some(start) = run.p.scheduled_start {
            if start > now {
                run.plan.wake_at(start);
                return;
            }
        }
        run.p.status = PipelineStatus::Running;
        run.p.started_at = Some(now);
        let defs = run.p.configuration.stages.clone();
        for def in &defs {
            let st = run.state_mut(def.stage);
            st.name = def.name.clone();
            st.attempt = st.attempt.max(1);
        }
        run.event("pipeline_started", None, Object::new());
    }
    if let Some(deadline) = run.p.deadline {
        if now >= deadline {
            // Work that finished before the deadline still counts: settle what ran (starting
            // nothing new) and fail the pipeline only if that does not complete it.
            settle_running_stages(run, jitter);
            if !run.p.status.is_terminal() {
                finish_if_done(run);
            }
            if !run.p.status.is_terminal() {
                finish_failed(run, OnStageFailure::Stop, "deadline_exceeded");
            }
            return;
        }
        run.plan.wake_at(deadline);
    }
    if run.p.status == PipelineStatus::Paused {
        return;
    }

    // Settle running stages, start ready ones; repeat while starting a stage settles it at once
    // (an empty fan-out) so the pipeline never waits for a wake-up it does not need.
    for _ in 0..=run.p.configuration.stages.len() {
        settle_running_stages(run, jitter);
        if run.p.status.is_terminal() {
            return;
        }
        if !start_ready_stages(run) {
            break;
        }
    }
    if run.p.status.is_terminal() {
        return;
    }
    finish_if_done(run);
    update_progress(run);
}

fn settle_running_stages(run: &mut Run<'_>, jitter: &mut dyn FnMut() -> f64) {
    let now = run.now;
    let defs = run.p.configuration.stages.clone();
    for def in &defs {
        let Some(state) = run.state(def.stage).cloned() else {
            continue;
        };
        if state.status != StageStatus::Running {
            continue;
        }
        let timeout = Duration::from_secs(def.timeout_seconds.into());
        let active: Vec<Task> = run
            .stage_view(def.stage, state.attempt)
            .filter(|t| !t.status.is_terminal() && t.status != TaskStatus::Pending)
            .cloned()
            .collect();
        for t in active {
            match t.status {
                TaskStatus::Retry => match t.retry_at {
                    Some(due) if due <= now => {
                        let mut n = t.clone();
                        if n.transition_to(TaskStatus::Pending, now).is_ok() {
                            n.retry_at = None;
                            n.assigned_agent_id = None;
                            run.plan.enqueue.push(QueueEntry::of(&n));
                            run.task_event(
                                "task_requeued",
                                &n,
                                obj([("reason", "retry_due".into())]),
                            );
                            run.update(&t, n);
                        }
                    }
                    Some(due) => run.plan.wake_at(due),
                    None => {
                        let mut n = t.clone();
                        let due =
                            now.plus(def.retry_config.delay_for(n.retry_count.max(1), jitter()));
                        n.retry_at = Some(due);
                        n.updated_at = now;
                        run.plan.wake_at(due);
                        run.update(&t, n);
                    }
                },
                TaskStatus::Assigned | TaskStatus::Running => {
                    let started = t.assigned_at.unwrap_or(t.updated_at);
                    let limit = started.plus(timeout);
                    if now >= limit {
                        let error = TaskError {
                            code: "timeout".into(),
                            message: format!(
                                "attempt exceeded the stage timeout of {}s",
                                def.timeout_seconds
                            ),
                            is_retryable: true,
                            ..Default::default()
                        };
                        run.fail_attempt(&t, def, error, jitter);
                    } else {
                        run.plan.wake_at(limit);
                    }
                }
                _ => {}
            }
        }

        let (mut failed, mut done, mut total) = (0, 0, 0);
        for t in run.stage_view(def.stage, state.attempt) {
            total += 1;
            failed += usize::from(t.status == TaskStatus::Failed);
            done += usize::from(t.status.is_terminal());
        }
        run.state_mut(def.stage).progress = done as f64 / total.max(1) as f64;
        if failed > run.p.error_strategy.max_failed_tasks as usize {
            let tasks = run.stage_tasks(def.stage, state.attempt);
            stage_failed(run, def, &tasks);
            if run.p.status.is_terminal() {
                return;
            }
        } else if done == total {
            let tasks = run.stage_tasks(def.stage, state.attempt);
            let output = stage_output(def, &tasks);
            run.p.intermediate_results.insert(def.name.clone(), output);
            let st = run.state_mut(def.stage);
            st.status = StageStatus::Completed;
            st.completed_at = Some(now);
            st.actual_duration = st.started_at.map(|s| now.seconds_since(s));
            st.progress = 1.0;
            run.event(
                "stage_completed",
                Some(def.stage),
                obj([
                    ("tasks", tasks.len().into()),
                    ("failed_tasks", failed.into()),
                ]),
            );
        }
    }
}

fn stage_failed(run: &mut Run<'_>, def: &StageDefinition, tasks: &[Task]) {
    for t in tasks {
        run.cancel_task(t, "stage_failed");
    }
    let errors: Vec<Value> = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .filter_map(|t| {
            t.error
                .as_ref()
                .map(|e| json!({"task_id": t.task_id, "code": e.code, "message": e.message}))
        })
        .collect();
    let attempt = run.state(def.stage).map_or(1, |s| s.attempt);
    let retry = run.p.error_strategy.retry_failed_stages && attempt == 1;
    {
        let st = run.state_mut(def.stage);
        st.errors.push(obj([
            ("attempt", attempt.into()),
            ("failed_tasks", Value::Array(errors.clone())),
        ]));
    }
    run.p.errors.push(PipelineErrorEntry {
        stage: def.stage,
        task_id: None,
        error: obj([
            ("code", "stage_failed".into()),
            ("attempt", attempt.into()),
            ("tasks", Value::Array(errors)),
        ]),
        handled: retry || run.p.error_strategy.on_stage_failure == OnStageFailure::Continue,
    });
    if retry {
        let st = run.state_mut(def.stage);
        st.attempt = 2;
        st.status = StageStatus::Pending;
        st.tasks.clear();
        st.progress = 0.0;
        run.event("stage_retried", Some(def.stage), Object::new());
        return;
    }
    let strategy = run.p.error_strategy.on_stage_failure;
    let now = run.now;
    let st = run.state_mut(def.stage);
    st.status = StageStatus::Failed;
    st.completed_at = Some(now);
    run.event(
        "stage_failed",
        Some(def.stage),
        obj([("strategy", strategy.as_str().into())]),
    );
    if strategy != OnStageFailure::Continue {
        finish_failed(run, strategy, "stage_failed");
    }
}

/// Ends the pipeline as failed under `stop` or `rollback`: cancels every unfinished task,
/// marks unfinished stages cancelled and, for rollback, finished ones rolled back.
fn finish_failed(run: &mut Run<'_>, strategy: OnStageFailure, reason: &str) {
    let all: Vec<Task> = run
        .tasks
        .iter()
        .map(|t| {
            run.changed
                .get(&t.task_id)
                .map(|(c, _)| c.clone())
                .unwrap_or_else(|| t.clone())
        })
        .chain(run.plan.inserts.clone())
        .collect();
    for t in &all {
        run.cancel_task(t, reason);
    }
    let now = run.now;
    for st in run.p.stages.iter_mut() {
        match st.status {
            StageStatus::Pending | StageStatus::Running => {
                st.status = StageStatus::Cancelled;
                st.completed_at = Some(now);
            }
            StageStatus::Completed if strategy == OnStageFailure::Rollback => {
                st.status = StageStatus::RolledBack;
            }
            _ => {}
        }
    }
    run.p.status = PipelineStatus::Failed;
    run.p.completed_at = Some(now);
    run.p.performance_metrics.total_duration = run.p.started_at.map(|s| now.seconds_since(s));
    run.event(
        "pipeline_failed",
        None,
        obj([
            ("reason", reason.into()),
            ("strategy", strategy.as_str().into()),
        ]),
    );
}

/// Starts every stage whose dependencies are settled. Returns whether any started.
fn start_ready_stages(run: &mut Run<'_>) -> bool {
    let continue_on_failure = run.p.error_strategy.on_stage_failure == OnStageFailure::Continue;
    let status_of = |p: &Pipeline, n: u32| {
        p.stages
            .iter()
            .find(|s| s.stage == n)
            .map(|s| s.status)
            .unwrap_or_default()
    };
    let ready: Vec<StageDefinition> = run
        .p
        .configuration
        .stages
        .iter()
        .filter(|d| status_of(run.p, d.stage) == StageStatus::Pending)
        .filter(|d| {
            d.dependencies
                .iter()
                .all(|&dep| match status_of(run.p, dep) {
                    StageStatus::Completed => true,
                    StageStatus::Failed => continue_on_failure,
                    _ => false,
                })
        })
        .cloned()
        .collect();
    for def in &ready {
        let attempt = run.state(def.stage).map_or(1, |s| s.attempt.max(1));
        match stage_tasks(run.p, def, attempt, run.now) {
            Ok(tasks) => {
                let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
                for t in &tasks {
                    run.plan.enqueue.push(QueueEntry::of(t));
                    run.task_event("task_created", t, Object::new());
                }
                run.plan.inserts.extend(tasks);
                let now = run.now;
                let st = run.state_mut(def.stage);
                st.name = def.name.clone();
                st.status = StageStatus::Running;
                st.started_at = Some(now);
                st.completed_at = None;
                st.tasks = ids.clone();
                st.progress = 0.0;
                run.p.performance_metrics.total_tasks += ids.len() as u64;
                run.event(
                    "stage_started",
                    Some(def.stage),
                    obj([("tasks", ids.len().into())]),
                );
            }
            Err(message) => {
                let st = run.state_mut(def.stage);
                st.status = StageStatus::Failed;
                st.errors.push(obj([
                    ("code", "bad_input".into()),
                    ("message", message.clone().into()),
                ]));
                run.p.errors.push(PipelineErrorEntry {
                    stage: def.stage,
                    task_id: None,
                    error: obj([("code", "bad_input".into()), ("message", message.into())]),
                    handled: continue_on_failure,
                });
                run.event(
                    "stage_failed",
                    Some(def.stage),
                    obj([("reason", "bad_input".into())]),
                );
                if !continue_on_failure {
                    let strategy = run.p.error_strategy.on_stage_failure;
                    finish_failed(run, strategy, "stage_failed");
                    return false;
                }
            }
        }
    }
    !ready.is_empty()
}

fn finish_if_done(run: &mut Run<'_>) {
    let settled = |s: StageStatus| matches!(s, StageStatus::Completed | StageStatus::Failed);
    let defs = &run.p.configuration.stages;
    if defs.is_empty()
        || !defs.iter().all(|d| {
            run.p
                .stages
                .iter()
                .any(|s| s.stage == d.stage && settled(s.status))
        })
    {
        return;
    }
    let mut output = Object::new();
    for d in defs {
        let is_sink = !defs.iter().any(|o| o.dependencies.contains(&d.stage));
        if is_sink {
            let v = run
                .p
                .intermediate_results
                .get(&d.name)
                .cloned()
                .unwrap_or(Value::Null);
            output.insert(d.name.clone(), v);
        }
    }
    let now = run.now;
    // Task figures over every task's current version.
    let (mut finished, mut completed, mut time_sum, mut timed) = (0u32, 0u32, 0.0, 0u32);
    let mut peak_memory: Option<f64> = None;
    for t in run
        .tasks
        .iter()
        .map(|t| run.changed.get(&t.task_id).map_or(t, |(c, _)| c))
    {
        if t.status.is_terminal() {
            finished += 1;
        }
        if t.status == TaskStatus::Completed {
            completed += 1;
        }
        if let Some(pt) = t.performance_metrics.processing_time {
            time_sum += pt;
            timed += 1;
        }
        if let Some(m) = t.performance_metrics.memory_usage_mb {
            peak_memory = Some(peak_memory.map_or(m, |p: f64| p.max(m)));
        }
    }
    let p = &mut *run.p;
    if finished > 0 {
        p.performance_metrics.task_success_rate = Some(f64::from(completed) / f64::from(finished));
    }
    if timed > 0 {
        p.performance_metrics.average_task_time = Some(time_sum / f64::from(timed));
    }
    p.performance_metrics.peak_memory_usage = peak_memory;
    p.output_data = Some(output);
    p.status = PipelineStatus::Completed;
    p.completed_at = Some(now);
    p.progress = 1.0;
    p.performance_metrics.total_duration = p.started_at.map(|s| now.seconds_since(s));
    p.performance_metrics.stage_durations = p
        .stages
        .iter()
        .map(|s| s.actual_duration.unwrap_or(0.0))
        .collect();
    let failed_stages = p
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Failed)
        .count();
    run.event(
        "pipeline_completed",
        None,
        obj([("failed_stages", failed_stages.into())]),
    );
}

fn update_progress(run: &mut Run<'_>) {
    let p = &mut *run.p;
    let n = p.configuration.stages.len().max(1) as f64;
    let sum: f64 = p
        .stages
        .iter()
        .map(|s| match s.status {
            StageStatus::Completed | StageStatus::Failed => 1.0,
            _ => s.progress,
        })
        .sum();
    if p.status != PipelineStatus::Completed {
        p.progress = (sum / n).min(1.0);
    }
    p.current_stage = p
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Running)
        .map(|s| s.stage)
        .min()
        .or_else(|| p.stages.iter().map(|s| s.stage).max())
        .unwrap_or(0);
}

mod commands;
mod stage_io;

pub use commands::{assignment, command, record_failure};
pub use stage_io::{meets_quality, stage_input, stage_output, stage_tasks};

#[cfg(test)]
mod tests;
