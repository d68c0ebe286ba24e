//! `StageCoordinator`: one per running pipeline, on exactly one instance at a time.
//!
//! It holds the pipeline's coordination lock (`lock:pipeline:{id}`, renewed at a third of its
//! TTL) and drives the pipeline with the [`engine`](crate::engine::reconcile): every time a task settles,
//! a timer it asked for fires (retry due, stage timeout, deadline) or a periodic resync reads
//! the store, it reconciles and applies the resulting plan — pipeline update, task inserts and
//! updates and their events, all in **one** store transition with compare-and-set — before it
//! touches the broker (queue, dequeue, revoke) and the progress caches. A conflict means
//! someone else (an agent's result, the reaper) wrote first: it re-reads and reconciles again.
//!
//! State: the pipeline and its tasks, read from the store at start — which is all a restarted
//! or taking-over coordinator needs. Progress-only changes (a task finished, nothing else
//! moved) are written at most once per resync interval; every state change is written at once.
//!
//! Messages in: [`Reconcile`], [`TaskSettled`], [`RunCommand`], [`InjectFailure`].
//! Messages out: [`TasksQueued`] to the dispatcher, [`CoordinatorExited`] to the supervisor.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use crate::broker::QueueEntry;
use crate::broker::{CacheKey, Fence, LockKey};
use crate::deps::Deps;
use crate::engine::{self, Command, Plan};
use crate::error::{SchedResult, SchedulerError};
use crate::journal::{classification_of, Actor as By};
use crate::messages::{TaskSettled, TasksQueued};
use crate::model::{AuditAction, ResourceType};
use crate::model::{Pipeline, PipelineStatus, Task, TaskStatus};
use crate::store::{collect_all, StoreError, TaskQuery, Transition, Write};

/// Why a coordinator stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The pipeline reached a terminal state.
    Finished,
    /// Another instance coordinates the pipeline.
    LockHeld,
    /// The coordination lock was lost (expired or taken over).
    LockLost,
    /// The pipeline does not exist.
    Missing,
    /// The instance is shutting down.
    Shutdown,
    /// Something failed; the supervisor restarts the coordinator.
    Failed(String),
}

/// Sent to the supervisor when a coordinator stops.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CoordinatorExited {
    /// The pipeline.
    pub pipeline_id: String,
    /// Why.
    pub reason: ExitReason,
}

/// The coordinator actor.
pub struct StageCoordinator {
    deps: Deps,
    pipeline_id: String,
    queued: Recipient<TasksQueued>,
    exited: Recipient<CoordinatorExited>,
    fence: Option<Fence>,
    pipeline: Option<Pipeline>,
    tasks: Vec<Task>,
    index: HashMap<String, usize>,
    busy: bool,
    again: bool,
    wake: Option<SpawnHandle>,
    /// A progress-only change not yet written.
    progress_dirty: bool,
    exit: Option<ExitReason>,
}

impl StageCoordinator {
    /// A coordinator for `pipeline_id`; it takes the lock and loads the pipeline when started.
    pub fn new(
        deps: Deps,
        pipeline_id: String,
        queued: Recipient<TasksQueued>,
        exited: Recipient<CoordinatorExited>,
    ) -> Self {
        StageCoordinator {
            deps,
            pipeline_id,
            queued,
            exited,
            fence: None,
            pipeline: None,
            tasks: Vec::new(),
            index: HashMap::new(),
            busy: false,
            again: false,
            wake: None,
            progress_dirty: false,
            exit: None,
        }
    }

    fn set_tasks(&mut self, tasks: Vec<Task>) {
        self.index = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.task_id.clone(), i))
            .collect();
        self.tasks = tasks;
    }

    fn upsert_task(&mut self, t: Task) {
        match self.index.get(&t.task_id) {
            Some(&i) => {
                if t.revision >= self.tasks[i].revision {
                    self.tasks[i] = t;
                }
            }
            None => {
                self.index.insert(t.task_id.clone(), self.tasks.len());
                self.tasks.push(t);
            }
        }
    }

    /// Stops for `reason` (the first reason given wins).
    pub fn stop_with(&mut self, reason: ExitReason, ctx: &mut Context<Self>) {
        if self.exit.is_none() {
            self.exit = Some(reason);
        }
        ctx.stop();
    }

    fn schedule_wake(
        &mut self,
        plan_wake: Option<crate::model::Timestamp>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(h) = self.wake.take() {
            ctx.cancel_future(h);
        }
        if let Some(at) = plan_wake {
            let delay = at.since(self.deps.now()).max(Duration::from_millis(1));
            self.wake = Some(ctx.run_later(delay, |_, ctx| ctx.notify(Reconcile)));
        }
    }
}

async fn load_tasks(deps: &Deps, pipeline_id: &str) -> Result<Vec<Task>, StoreError> {
    load_tasks_in(deps, pipeline_id, Vec::new()).await
}

/// The tasks of a pipeline in any of `statuses` (all when empty).
async fn load_tasks_in(
    deps: &Deps,
    pipeline_id: &str,
    statuses: Vec<TaskStatus>,
) -> Result<Vec<Task>, StoreError> {
    let q = TaskQuery {
        pipeline_id: Some(pipeline_id.to_string()),
        statuses,
        ..Default::default()
    };
    collect_all(1000, |page| {
        let q = &q;
        async move { deps.store.query_tasks(q, &page).await }
    })
    .await
}

impl Actor for StageCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let deps = self.deps.clone();
        let id = self.pipeline_id.clone();
        let start = async move {
            let key = LockKey::Pipeline(id.clone());
            let Some(fence) = deps
                .broker
                .acquire_lock(&key, &deps.instance_id, deps.settings.pipeline_lock_ttl)
                .await?
            else {
                return Ok(None);
            };
            let pipeline = deps.store.get_pipeline(&id).await?;
            let tasks = load_tasks(&deps, &id).await?;
            // Whatever a crashed predecessor persisted but never queued is queued now.
            if let Some(p) = pipeline.as_ref().filter(|p| !p.status.is_terminal()) {
                repair_queues(&deps, p, &tasks).await;
            }
            let pending: Vec<QueueEntry> = tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Pending)
                .map(QueueEntry::of)
                .collect();
            Ok::<_, SchedulerError>(Some((fence, pipeline, tasks, pending)))
        };
        ctx.wait(start.into_actor(self).map(|res, act, ctx| match res {
            Ok(None) => act.stop_with(ExitReason::LockHeld, ctx),
            Ok(Some((fence, None, _, _))) => {
                act.fence = Some(fence);
                act.stop_with(ExitReason::Missing, ctx)
            }
            Ok(Some((fence, Some(p), tasks, pending))) => {
                tracing::info!(pipeline_id = %act.pipeline_id, tasks = tasks.len(), "coordinating pipeline");
                act.fence = Some(fence);
                act.pipeline = Some(p);
                act.set_tasks(tasks);
                if !pending.is_empty() {
                    let mut types: Vec<String> = pending.into_iter().map(|e| e.task_type).collect();
                    types.sort();
                    types.dedup();
                    let _ = act.queued.try_send(TasksQueued { task_types: types });
                }
                let renew_every = act.deps.settings.pipeline_lock_ttl / 3;
                ctx.run_interval(renew_every, |act, ctx| act.renew_lock(ctx));
                ctx.run_interval(act.deps.settings.resync_interval, |_, ctx| ctx.notify(Resync));
                ctx.notify(Reconcile);
            }
            Err(e) => act.stop_with(ExitReason::Failed(e.to_string()), ctx),
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let reason = self
            .exit
            .clone()
            .unwrap_or(ExitReason::Failed("stopped".into()));
        if let Some(fence) = self.fence.take() {
            if reason != ExitReason::LockLost {
                let deps = self.deps.clone();
                let key = LockKey::Pipeline(self.pipeline_id.clone());
                actix::spawn(async move {
                    let _ = deps.broker.release_lock(&key, &fence).await;
                });
            }
        }
        self.exited.do_send(CoordinatorExited {
            pipeline_id: self.pipeline_id.clone(),
            reason,
        });
    }
}

impl StageCoordinator {
    fn renew_lock(&mut self, ctx: &mut Context<Self>) {
        let Some(fence) = self.fence.clone() else {
            return;
        };
        let deps = self.deps.clone();
        let key = LockKey::Pipeline(self.pipeline_id.clone());
        let ttl = deps.settings.pipeline_lock_ttl;
        ctx.spawn(
            async move { deps.broker.renew_lock(&key, &fence, ttl).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(f) => act.fence = Some(f),
                    Err(crate::broker::BrokerError::LockLost { reason, .. }) => {
                        tracing::warn!(pipeline_id = %act.pipeline_id, reason, "coordination lock lost; stopping");
                        act.fence = None;
                        act.stop_with(ExitReason::LockLost, ctx);
                    }
                    Err(e) => tracing::warn!(pipeline_id = %act.pipeline_id, cause = %e, "lock renewal failed; will retry"),
                }),
        );
    }

    /// Writes a plan: one transition, then the broker and the caches.
    fn apply(
        &mut self,
        mut p: Pipeline,
        plan: Plan,
        ctx: &mut Context<Self>,
        reply: Option<tokio::sync::oneshot::Sender<SchedResult<Pipeline>>>,
    ) {
        // A coordinator whose lock lapsed (renewals failing) must not write: another instance
        // may coordinate the pipeline by now.
        if self
            .fence
            .as_ref()
            .is_some_and(|f| f.expires_at <= self.deps.now())
        {
            tracing::warn!(pipeline_id = %self.pipeline_id, "coordination lock lapsed; stopping");
            if let Some(reply) = reply {
                let _ = reply.send(Err(SchedulerError::Unavailable(
                    "coordination lock lapsed".into(),
                )));
            }
            self.stop_with(ExitReason::LockLost, ctx);
            return;
        }
        self.busy = true;
        let deps = self.deps.clone();
        let old_revision = self.pipeline.as_ref().map_or(0, |p| p.revision);
        let write_pipeline = plan.pipeline_changed || self.progress_dirty;
        let mut tx = Transition::new();
        if write_pipeline {
            p.revision = old_revision;
            tx = tx.write(Write::update(&mut p));
        }
        let mut inserts = plan.inserts.clone();
        let mut updates: Vec<Task> = Vec::with_capacity(plan.updates.len());
        for t in inserts.iter_mut() {
            tx = tx.write(Write::insert(t));
        }
        for (t, from) in &plan.updates {
            let mut t = t.clone();
            tx = tx.write(Write::update_from(&mut t, from.as_str()));
            updates.push(t);
        }
        tx.events = plan.events.clone();
        if !tx.writes.is_empty() {
            // One audit record per step: the scheduler changed this pipeline and its tasks.
            let mut fields = vec!["status", "stages", "progress"];
            if !plan.inserts.is_empty() {
                fields.push("tasks.input_data");
            }
            if !plan.updates.is_empty() {
                fields.push("tasks.status");
            }
            let mut audit = deps.journal.audit(
                AuditAction::Update,
                ResourceType::Pipeline,
                &self.pipeline_id,
                &fields,
                classification_of(p.security_level),
                &deps.system(),
                deps.now(),
            );
            audit.data_accessed.records_count = tx.writes.len() as u64;
            tx = tx.audit(audit);
        }
        let enqueue = plan.enqueue.clone();
        let dequeue = plan.dequeue.clone();
        let revoke = plan.revoke.clone();
        let cache = cache_entries(&p);
        let work = async move {
            if !tx.writes.is_empty() || !tx.events.is_empty() {
                deps.store.apply(tx).await?;
            }
            for e in &dequeue {
                deps.broker.dequeue(e).await?;
            }
            for (_, lease) in &revoke {
                deps.broker.revoke(lease).await?;
            }
            for chunk in enqueue.chunks(500) {
                deps.broker.enqueue(chunk).await?;
            }
            for (key, value) in &cache {
                if let Err(e) = deps.broker.put_cache(key, value).await {
                    tracing::debug!(cause = %e, "pipeline cache not updated");
                }
            }
            Ok::<_, SchedulerError>(())
        };
        let types: Vec<String> = {
            let mut t: Vec<String> = plan.enqueue.iter().map(|e| e.task_type.clone()).collect();
            t.sort();
            t.dedup();
            t
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            act.busy = false;
            match res {
                Ok(()) => {
                    if write_pipeline {
                        act.progress_dirty = false;
                    }
                    let terminal = p.status.is_terminal();
                    act.pipeline = Some(p.clone());
                    for t in inserts.into_iter().chain(updates) {
                        act.upsert_task(t);
                    }
                    if !types.is_empty() {
                        let _ = act.queued.try_send(TasksQueued { task_types: types });
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(p));
                    }
                    if terminal {
                        tracing::info!(pipeline_id = %act.pipeline_id, "pipeline finished");
                        act.stop_with(ExitReason::Finished, ctx);
                        return;
                    }
                    act.schedule_wake(plan.next_wake, ctx);
                    if act.again {
                        act.again = false;
                        ctx.notify(Reconcile);
                    }
                }
                Err(SchedulerError::Store(StoreError::Conflict { .. } | StoreError::Fenced { .. })) => {
                    // Someone wrote first (a result, the reaper, an operator): read again.
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(SchedulerError::Unavailable("pipeline changed meanwhile; try again".into())));
                    }
                    ctx.notify(Resync);
                }
                Err(e) => {
                    tracing::warn!(pipeline_id = %act.pipeline_id, cause = %e, "pipeline step not applied; retrying");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    // Re-read before trying again: the store may hold the step already while the
                    // broker missed part of it (the resync repairs the queues).
                    ctx.run_later(Duration::from_millis(500), |_, ctx| ctx.notify(Resync));
                }
            }
        }));
    }
}

/// Puts the broker's queues right for a pipeline: every pending task queued (running), or none
/// (paused). Idempotent — queuing a queued task changes nothing and claims skip leased ones —
/// so it repairs whatever a failed broker call, a lost Redis or a reclaim left behind.
async fn repair_queues(deps: &Deps, p: &Pipeline, tasks: &[Task]) {
    let pending: Vec<QueueEntry> = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Pending && !t.is_deleted)
        .map(QueueEntry::of)
        .collect();
    let res = if p.status == PipelineStatus::Paused {
        let mut r = Ok(());
        for e in &pending {
            if let Err(err) = deps.broker.dequeue(e).await {
                r = Err(err);
                break;
            }
        }
        r
    } else {
        let mut r = Ok(());
        for chunk in pending.chunks(500) {
            if let Err(err) = deps.broker.enqueue(chunk).await {
                r = Err(err);
                break;
            }
        }
        r
    };
    if let Err(e) = res {
        tracing::warn!(pipeline_id = %p.pipeline_id, cause = %e, "queues not repaired; will retry");
    }
}

/// The broker's progress caches of a pipeline (`pipeline:{id}:status`, `pipeline:{id}:stage:{n}`).
fn cache_entries(p: &Pipeline) -> Vec<(CacheKey, serde_json::Value)> {
    let mut out = vec![(
        CacheKey::PipelineStatus(p.pipeline_id.clone()),
        json!({
            "status": p.status,
            "progress": p.progress,
            "current_stage": p.current_stage,
            "started_at": p.started_at,
            "revision": p.revision,
        }),
    )];
    for s in &p.stages {
        out.push((
            CacheKey::PipelineStage(p.pipeline_id.clone(), s.stage),
            json!({
                "status": s.status,
                "progress": s.progress,
                "tasks_total": s.tasks.len(),
                "started_at": s.started_at,
            }),
        ));
    }
    out
}

/// Brings the pipeline up to date (timers, settled tasks, resyncs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconcile;

impl Handler<Reconcile> for StageCoordinator {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Self::Context) {
        if self.busy {
            self.again = true;
            return;
        }
        let Some(mut p) = self.pipeline.clone() else {
            return;
        };
        if p.status.is_terminal() && !self.progress_dirty {
            // Loaded finished (a command for an old pipeline, a scan racing its end).
            self.stop_with(ExitReason::Finished, ctx);
            return;
        }
        let now = self.deps.now();
        let mut rng = rand::rng();
        let jittered = self.deps.settings.retry_jitter;
        let mut jitter = || {
            if jittered {
                rand::Rng::random::<f64>(&mut rng)
            } else {
                1.0
            }
        };
        let plan = engine::reconcile(
            &mut p,
            &self.tasks,
            now,
            &self.deps.journal,
            &self.deps.system(),
            &mut jitter,
        );
        let only_progress = plan.pipeline_changed
            && plan.inserts.is_empty()
            && plan.updates.is_empty()
            && plan.events.is_empty()
            && plan.enqueue.is_empty();
        if plan.is_empty() || only_progress {
            // Nothing to persist now; progress is written with the next change or resync.
            if only_progress {
                self.progress_dirty = true;
                let rev = self.pipeline.as_ref().map_or(0, |o| o.revision);
                p.revision = rev;
                self.pipeline = Some(p);
            }
            self.schedule_wake(plan.next_wake, ctx);
            return;
        }
        self.apply(p, plan, ctx, None);
    }
}

/// Re-reads the pipeline and its tasks from the store, then reconciles.
#[derive(Message)]
#[rtype(result = "()")]
struct Resync;

impl Handler<Resync> for StageCoordinator {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Self::Context) {
        if self.busy {
            self.again = true;
            return;
        }
        self.busy = true;
        let deps = self.deps.clone();
        let id = self.pipeline_id.clone();
        let flush_progress = self.progress_dirty;
        let local = self.pipeline.clone();
        // Finished tasks never change again, so only the unfinished ones are re-read: those
        // still unfinished come back from one query, and those that finished meanwhile (on
        // another instance) are the ones missing from it, read one by one.
        let unfinished: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| !t.status.is_terminal())
            .map(|t| t.task_id.clone())
            .collect();
        let read = async move {
            let stored = deps.store.get_pipeline(&id).await?;
            let open = vec![
                TaskStatus::Pending,
                TaskStatus::Assigned,
                TaskStatus::Running,
                TaskStatus::Retry,
            ];
            let mut tasks = load_tasks_in(&deps, &id, open).await?;
            let still: std::collections::HashSet<&str> =
                tasks.iter().map(|t| t.task_id.as_str()).collect();
            let gone: Vec<String> = unfinished
                .into_iter()
                .filter(|t| !still.contains(t.as_str()))
                .collect();
            for task_id in gone {
                if let Some(t) = deps.store.get_task(&task_id).await? {
                    tasks.push(t);
                }
            }
            if let Some(p) = stored.as_ref().filter(|p| !p.status.is_terminal()) {
                repair_queues(&deps, p, &tasks).await;
            }
            Ok::<_, StoreError>((stored, tasks))
        };
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            act.busy = false;
            match res {
                Ok((Some(stored), tasks)) => {
                    // Keep unwritten progress only if nobody else changed the pipeline.
                    let keep_local = flush_progress && local.as_ref().is_some_and(|l| l.revision == stored.revision);
                    if !keep_local {
                        act.pipeline = Some(stored);
                        act.progress_dirty = false;
                    }
                    // Merge by revision: a task that settled while the read was in flight keeps
                    // its newer version.
                    for t in tasks {
                        act.upsert_task(t);
                    }
                    if keep_local {
                        // Force the pending progress out with this reconcile.
                        if let Some(p) = act.pipeline.clone() {
                            let plan = Plan {
                                pipeline_changed: true,
                                ..Default::default()
                            };
                            act.apply(p, plan, ctx, None);
                            return;
                        }
                    }
                    ctx.notify(Reconcile);
                }
                Ok((None, _)) => act.stop_with(ExitReason::Missing, ctx),
Err(e) => {
                    tracing::warn!(pipeline_id = %act.pipeline_id, cause = %e, "resync failed; will retry");
                    if std::mem::take(&mut act.again) {
                        ctx.notify(Reconcile);
                    }
                }
            }
        }));
    }
}

impl Handler<TaskSettled> for StageCoordinator {
    type Result = ();

    fn handle(&mut self, msg: TaskSettled, ctx: &mut Self::Context) {
        self.upsert_task(msg.task);
        ctx.notify(Reconcile);
    }
}

/// Cancel, pause or resume, on behalf of `by`. Answers the pipeline as stored.
#[derive(Message)]
#[rtype(result = "SchedResult<Pipeline>")]
pub struct RunCommand {
    /// The command.
    pub command: Command,
    /// Who asks.
    pub by: By,
}

impl Handler<RunCommand> for StageCoordinator {
    type Result = ResponseFuture<SchedResult<Pipeline>>;

    fn handle(&mut self, msg: RunCommand, ctx: &mut Self::Context) -> Self::Result {
        let Some(mut p) = self.pipeline.clone() else {
            return Box::pin(async {
                Err(SchedulerError::Unavailable(
                    "pipeline not loaded yet; try again".into(),
                ))
            });
        };
        if self.busy {
            return Box::pin(async {
                Err(SchedulerError::Unavailable(
                    "pipeline busy; try again".into(),
                ))
            });
        }
        let now = self.deps.now();
        let mut plan = match engine::command(
            &mut p,
            &self.tasks,
            msg.command,
            now,
            &self.deps.journal,
            &msg.by,
        ) {
            Ok(plan) => plan,
            Err(e) => {
                let e = SchedulerError::Invalid(e.to_string());
                return Box::pin(async move { Err(e) });
            }
        };
        plan.pipeline_changed = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.apply(p, plan, ctx, Some(tx));
        Box::pin(async move {
            rx.await
                .map_err(|_| SchedulerError::Unavailable("coordinator stopped".into()))?
        })
    }
}

/// Test and chaos hook: the coordinator fails; the supervisor restarts it from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFailure;

impl Handler<InjectFailure> for StageCoordinator {
    type Result = ();

    fn handle(&mut self, _: InjectFailure, ctx: &mut Self::Context) {
        tracing::warn!(pipeline_id = %self.pipeline_id, "coordinator failing on request");
        self.stop_with(ExitReason::Failed("injected failure".into()), ctx);
    }
}
