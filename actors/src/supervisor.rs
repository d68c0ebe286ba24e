//! `Supervisor`: the root of the actor tree.
//!
//! ```text
//! Supervisor
//! ├── AgentRegistry         (actix supervised: same address across restarts)
//! ├── TaskDispatcher        (actix supervised)
//! ├── StageCoordinator × N  (started and restarted here, with capped backoff)
//! ├── HeartbeatReaper       (actix supervised)
//! └── MetricsAggregator     (actix supervised)
//! ```
//!
//! The long-lived children are run under `actix::Supervisor`, which restarts a stopped actor
//! in place (its address stays valid, so the others keep talking to it) after calling its
//! `restarting()`, where it counts the restart and drops what it cached. Coordinators come and
//! go with pipelines, so the supervisor starts them itself: on submit, at start-up and every
//! `pipeline_scan_interval` for unfinished pipelines nobody coordinates (a crashed instance's
//! pipelines are taken over once their lock lapses), and after a failure — with a delay that
//! doubles per consecutive failure up to `restart_backoff_max`, each restart counted.
//!
//! Messages in: [`SubmitPipeline`], [`PipelineCommand`], [`TaskSettled`],
//! [`CoordinatorExited`], [`ScanPipelines`], [`Snapshot`], and the test hook
//! [`FailCoordinator`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use actix::prelude::*;

use crate::agent_registry::AgentRegistry;
use crate::deps::{Counters, Deps, Restarts};
use crate::engine::Command;
use crate::error::{SchedResult, SchedulerError};
use crate::heartbeat_reaper::HeartbeatReaper;
use crate::journal::{classification_of, Actor as By};
use crate::messages::{TaskSettled, TasksQueued};
use crate::metrics_aggregator::MetricsAggregator;
use crate::model::{
    new_id, AuditAction, Object, Pipeline, PipelineStatus, ResourceType, StageState,
};
use crate::stage_coordinator::{self, CoordinatorExited, ExitReason, RunCommand, StageCoordinator};
use crate::store::{collect_all, PipelineQuery, StoreError, Transition, Write};
use crate::task_dispatcher::TaskDispatcher;

/// Addresses of the long-lived children.
#[derive(Clone)]
pub struct Children {
    /// The registry.
    pub registry: Addr<AgentRegistry>,
    /// The dispatcher.
    pub dispatcher: Addr<TaskDispatcher>,
    /// The reaper.
    pub reaper: Addr<HeartbeatReaper>,
    /// The metrics aggregator.
    pub metrics: Addr<MetricsAggregator>,
}

/// The supervisor actor.
pub struct Supervisor {
    deps: Deps,
    children: Option<Children>,
    coordinators: HashMap<String, Addr<StageCoordinator>>,
    /// Consecutive failures per pipeline, for the restart backoff.
    failures: HashMap<String, Restarts>,
    /// Pipelines whose coordinator waits out its restart delay (scans leave them alone).
    restarting: HashSet<String>,
}

impl Supervisor {
    /// A supervisor over `deps`; its children start with it.
    pub fn new(deps: Deps) -> Self {
        Supervisor {
            deps,
            children: None,
            coordinators: HashMap::new(),
            failures: HashMap::new(),
            restarting: HashSet::new(),
        }
    }

    fn children(&self) -> &Children {
        self.children
            .as_ref()
            .expect("children start in Supervisor::started")
    }

    fn spawn_coordinator(&mut self, pipeline_id: String, ctx: &mut Context<Self>) {
        if self.coordinators.contains_key(&pipeline_id) {
            return;
        }
        let c = StageCoordinator::new(
            self.deps.clone(),
            pipeline_id.clone(),
            self.children().dispatcher.clone().recipient(),
            ctx.address().recipient(),
        );
        self.coordinators.insert(pipeline_id, c.start());
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let deps = self.deps.clone();
        let me = ctx.address();
        let registry = actix::Supervisor::start({
            let deps = deps.clone();
            move |_| AgentRegistry::new(deps)
        });
        let metrics = actix::Supervisor::start({
            let deps = deps.clone();
            move |_| MetricsAggregator::new(deps)
        });
        let dispatcher = actix::Supervisor::start({
            let (deps, registry, me, metrics) =
                (deps.clone(), registry.clone(), me.clone(), metrics.clone());
            move |_| TaskDispatcher::new(deps, registry, me.recipient(), metrics.recipient())
        });
        let reaper = actix::Supervisor::start({
            let (deps, registry, me, dispatcher) = (
                deps.clone(),
                registry.clone(),
                me.clone(),
                dispatcher.clone(),
            );
            move |_| {
                HeartbeatReaper::new(
                    deps,
                    registry,
                    me.recipient(),
                    dispatcher.recipient::<TasksQueued>(),
                )
            }
        });
        self.children = Some(Children {
            registry,
            dispatcher,
            reaper,
            metrics,
        });
        ctx.notify(ScanPipelines);
        ctx.run_interval(self.deps.settings.pipeline_scan_interval, |_, ctx| {
            ctx.notify(ScanPipelines)
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        for c in self.coordinators.values() {
            c.do_send(StopCoordinating);
        }
        Running::Stop
    }
}

/// Asks a coordinator to stop and release its lock (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
struct StopCoordinating;

impl Handler<StopCoordinating> for StageCoordinator {
    type Result = ();

    fn handle(&mut self, _: StopCoordinating, ctx: &mut Self::Context) {
        self.stop_with(ExitReason::Shutdown, ctx);
    }
}

/// The children's addresses.
#[derive(Message)]
#[rtype(result = "Children")]
pub struct GetChildren;

impl Handler<GetChildren> for Supervisor {
    type Result = MessageResult<GetChildren>;

    fn handle(&mut self, _: GetChildren, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.children().clone())
    }
}

/// Validates, stores and starts a pipeline. Answers it as stored.
#[derive(Message)]
#[rtype(result = "SchedResult<Pipeline>")]
pub struct SubmitPipeline {
    /// The pipeline: definition, input, priority, deadline…
    pub pipeline: Pipeline,
    /// Who submits it.
    pub by: By,
}

impl Handler<SubmitPipeline> for Supervisor {
    type Result = ResponseActFuture<Self, SchedResult<Pipeline>>;

    fn handle(&mut self, msg: SubmitPipeline, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let mut p = msg.pipeline;
                p.validate()?;
                let now = deps.now();
                if p.pipeline_id.is_empty() {
                    p.pipeline_id = new_id("pipeline");
                }
                p.status = PipelineStatus::Created;
                p.created_at = now;
                p.updated_at = now;
                p.created_by = msg.by.id.clone();
                p.stages = p
                    .configuration
                    .stages
                    .iter()
                    .map(|d| StageState {
                        stage: d.stage,
                        name: d.name.clone(),
                        attempt: 1,
                        ..Default::default()
                    })
                    .collect();
                let tx = Transition::new()
                    .write(Write::insert(&mut p))
                    .event(deps.journal.pipeline_event(
                        "pipeline_created",
                        &p,
                        None,
                        &msg.by,
                        Object::new(),
                        now,
                    ))
                    .audit(deps.journal.audit(
                        AuditAction::Create,
                        ResourceType::Pipeline,
                        &p.pipeline_id,
                        &["configuration", "input_data"],
                        classification_of(p.security_level),
                        &msg.by,
                        now,
                    ));
                deps.store.apply(tx).await.map_err(|e| match e {
                    StoreError::Conflict { id, .. } => {
                        SchedulerError::Invalid(format!("pipeline {id} already exists"))
                    }
                    other => other.into(),
                })?;
                Ok(p)
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                if let Ok(p) = &res {
                    act.spawn_coordinator(p.pipeline_id.clone(), ctx);
                }
                res
            }),
        )
    }
}

/// Cancel, pause or resume a pipeline coordinated here (or taken over for it).
#[derive(Message)]
#[rtype(result = "SchedResult<Pipeline>")]
pub struct PipelineCommand {
    /// The pipeline.
    pub pipeline_id: String,
    /// The command.
    pub command: Command,
    /// Who asks.
    pub by: By,
}

impl Handler<PipelineCommand> for Supervisor {
    type Result = ResponseFuture<SchedResult<Pipeline>>;

    fn handle(&mut self, msg: PipelineCommand, ctx: &mut Self::Context) -> Self::Result {
        if !self.coordinators.contains_key(&msg.pipeline_id) {
            self.spawn_coordinator(msg.pipeline_id.clone(), ctx);
        }
        let addr = self.coordinators.get(&msg.pipeline_id).cloned();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| SchedulerError::Unavailable("no coordinator".into()))?;
            addr.send(RunCommand {
                command: msg.command,
                by: msg.by,
            })
            .await
            .map_err(|_| {
                SchedulerError::Unavailable(format!(
                    "pipeline {} is finished, missing, or coordinated by another instance",
                    msg.pipeline_id
                ))
            })?
        })
    }
}

impl Handler<TaskSettled> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: TaskSettled, _ctx: &mut Self::Context) {
        // A coordinator on another instance sees it at its next resync.
        if let Some(c) = self.coordinators.get(&msg.task.pipeline_id) {
            c.do_send(msg);
        }
    }
}

impl Handler<CoordinatorExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: CoordinatorExited, ctx: &mut Self::Context) {
        self.coordinators.remove(&msg.pipeline_id);
        match msg.reason {
            ExitReason::Failed(cause) => {
                let restarts = self.failures.entry(msg.pipeline_id.clone()).or_default();
                let delay = restarts.failed(&self.deps.settings, &self.deps.counters);
                tracing::warn!(
                    pipeline_id = %msg.pipeline_id,
                    cause,
                    failures = restarts.consecutive(),
                    delay_ms = delay.as_millis() as u64,
                    "restarting coordinator"
                );
                let id = msg.pipeline_id;
                self.restarting.insert(id.clone());
                ctx.run_later(delay, move |act, ctx| {
                    act.restarting.remove(&id);
                    act.spawn_coordinator(id, ctx);
                });
            }
            ExitReason::Finished | ExitReason::Missing => {
                self.failures.remove(&msg.pipeline_id);
            }
            ExitReason::LockHeld | ExitReason::LockLost | ExitReason::Shutdown => {}
        }
    }
}

/// Starts coordinators for unfinished pipelines nobody here coordinates (start-up, takeover).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScanPipelines;

impl Handler<ScanPipelines> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: ScanPipelines, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let q = PipelineQuery {
                    statuses: vec![
                        PipelineStatus::Created,
                        PipelineStatus::Running,
                        PipelineStatus::Paused,
                    ],
                    ..Default::default()
                };
                collect_all(500, |page| {
                    let q = &q;
                    let deps = &deps;
                    async move { deps.store.query_pipelines(q, &page).await }
                })
                .await
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(pipelines) => {
                    for p in pipelines {
                        if !act.coordinators.contains_key(&p.pipeline_id)
                            && !act.restarting.contains(&p.pipeline_id)
                        {
                            act.spawn_coordinator(p.pipeline_id, ctx);
                        }
                    }
                }
                Err(e) => tracing::warn!(cause = %e, "pipeline scan failed; will retry"),
            }),
        )
    }
}

/// What the supervisor sees: for tests, metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorSnapshot {
    /// Pipelines coordinated here.
    pub coordinating: Vec<String>,
    /// Actor restarts so far.
    pub restarts: u64,
}

/// Asks for a [`SupervisorSnapshot`].
#[derive(Message)]
#[rtype(result = "SupervisorSnapshot")]
pub struct Snapshot;

impl Handler<Snapshot> for Supervisor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let mut coordinating: Vec<String> = self.coordinators.keys().cloned().collect();
        coordinating.sort();
        MessageResult(SupervisorSnapshot {
            coordinating,
            restarts: Counters::get(&self.deps.counters.actor_restarts),
        })
    }
}

/// Test and chaos hook: makes the coordinator of a pipeline fail. Answers whether one ran here.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FailCoordinator(pub String);

impl Handler<FailCoordinator> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: FailCoordinator, _ctx: &mut Self::Context) -> bool {
        match self.coordinators.get(&msg.0) {
            Some(c) => {
                c.do_send(stage_coordinator::InjectFailure);
                true
            }
            None => false,
        }
    }
}

/// Default wait between retries of a command that met a busy coordinator.
pub const COMMAND_RETRY: Duration = Duration::from_millis(50);
