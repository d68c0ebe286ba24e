//! `TaskDispatcher`: answers agents' fetches with work and takes their results.
//!
//! A fetch is answered at once with the best task the agent may run (its capabilities cover the
//! task type, it is under `max_concurrent_tasks`, inside its working hours and outside its
//! maintenance window; order: priority, earliest deadline, age). With nothing to give, the
//! fetch *waits* — up to the time the agent allows — and is answered the moment a matching task
//! is queued: coordinators and the reaper send [`TasksQueued`], and waiting agents are tried
//! best-score first, so reliable agents are preferred. Tasks queued by *other* instances are
//! noticed by a slow re-check (`fetch_recheck_interval`), not by polling per fetch.
//!
//! Results, failures and renewals are accepted only under the task's current live lease
//! (see [`crate::dispatch`]); anything else gets [`SchedulerError::LeaseRefused`].
//!
//! Messages in: [`FetchTask`], [`CompleteTask`], [`FailTask`], [`RenewLease`],
//! [`TasksQueued`], [`InjectFailure`]. Messages out: [`TaskSettled`], [`TaskSample`],
//! `RecordOutcome`.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::agent_registry::{score, AgentRegistry, GetAgent, RecordOutcome};
use crate::deps::{hold_after_restart, Deps, Restarts};
use crate::dispatch::{self, claim_for, eligibility, Assignment, ResultReport};
use crate::error::{SchedResult, SchedulerError};
use crate::messages::{TaskSample, TaskSettled, TasksQueued};
use crate::model::{Agent, Task, TaskError, TaskStatus};

/// How much longer than its wait a fetch waits for the dispatcher's answer before giving up.
const WAIT_SAFETY_MARGIN: Duration = Duration::from_secs(30);

/// The dispatcher actor.
pub struct TaskDispatcher {
    deps: Deps,
    registry: Addr<AgentRegistry>,
    settled: Recipient<TaskSettled>,
    samples: Recipient<TaskSample>,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    restarts: Restarts,
    hold: Duration,
    /// Relays the broker's queued-work announcements (from every instance) to this actor.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// A fetch waiting for work.
struct Waiter {
    id: u64,
    agent: Agent,
    until: tokio::time::Instant,
    reply: Option<oneshot::Sender<SchedResult<Option<Assignment>>>>,
    /// A claim is in flight for this waiter.
    busy: bool,
}

impl TaskDispatcher {
    /// A dispatcher over `deps`.
    pub fn new(
        deps: Deps,
        registry: Addr<AgentRegistry>,
        settled: Recipient<TaskSettled>,
        samples: Recipient<TaskSample>,
    ) -> Self {
        TaskDispatcher {
            deps,
            registry,
            settled,
            samples,
            waiters: Vec::new(),
            next_waiter: 0,
            restarts: Restarts::default(),
            hold: Duration::ZERO,
            watcher: None,
        }
    }

    /// Tries to serve waiting fetches — those whose agent can run one of `types`, or all —
    /// best-scored agents first; expired or abandoned waiters are answered `None` and dropped.
    fn serve_waiters(&mut self, types: Option<&[String]>, ctx: &mut Context<Self>) {
        let now = tokio::time::Instant::now();
        self.waiters.retain_mut(|w| {
            let closed = w.reply.as_ref().is_none_or(|r| r.is_closed());
            if closed {
                return false;
            }
            if w.until <= now && !w.busy {
                if let Some(reply) = w.reply.take() {
                    let _ = reply.send(Ok(None));
                }
                return false;
            }
            true
        });
        self.waiters.sort_by(|a, b| {
            score(&b.agent)
                .total_cmp(&score(&a.agent))
                .then(a.id.cmp(&b.id))
        });
        let ids: Vec<u64> = self
            .waiters
            .iter()
            .filter(|w| !w.busy)
            .filter(|w| types.is_none_or(|ts| ts.iter().any(|t| w.agent.capabilities.contains(t))))
            .map(|w| w.id)
            .collect();
        for id in ids {
            let Some(w) = self.waiters.iter_mut().find(|w| w.id == id) else {
                continue;
            };
            w.busy = true;
            let agent = w.agent.clone();
            let deps = self.deps.clone();
            let attempt = async move { try_claim(&deps, &agent).await };
            ctx.spawn(attempt.into_actor(self).map(move |res, act, _| {
                let Some(pos) = act.waiters.iter().position(|w| w.id == id) else {
                    return;
                };
                match res {
                    Ok(None) => act.waiters[pos].busy = false,
                    done => {
                        let mut w = act.waiters.remove(pos);
                        if let Some(reply) = w.reply.take() {
                            if let Err(Ok(Some(a))) = reply.send(done) {
                                // The agent hung up between claim and answer: give it back.
                                let deps = act.deps.clone();
                                actix::spawn(async move {
                                    let _ =
                                        dispatch::reclaim(&deps, &a.lease, "fetch_abandoned").await;
                                });
                            }
                        }
                    }
                }
            }));
        }
    }
}

impl TaskDispatcher {
    /// Relays the broker's announcements of queued work — made by any instance sharing the
    /// broker — as [`TasksQueued`], so a fetch waiting here is answered the moment matching work
    /// is queued anywhere. A lagging relay asks for every waiter to be tried.
    fn watch_announcements(&mut self, ctx: &mut Context<Self>) {
        let broker = self.deps.broker.clone();
        let me = ctx.address();
        self.watcher = Some(actix::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let mut rx = match broker.watch_queued().await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(cause = %e, "no queued-work announcements; relying on re-checks");
                    return;
                }
            };
            loop {
                let task_types = match rx.recv().await {
                    Ok(types) => types,
                    Err(RecvError::Lagged(_)) => Vec::new(),
                    Err(RecvError::Closed) => return,
                };
                if me.try_send(TasksQueued { task_types }).is_err() && !me.connected() {
                    return;
                }
            }
        }));
    }
}

/// One claim attempt for an agent: eligibility, then the queues.
async fn try_claim(deps: &Deps, agent: &Agent) -> SchedResult<Option<Assignment>> {
    let held = deps.broker.assigned_tasks(&agent.agent_id).await?.len();
    if let Err(reason) = eligibility(agent, held, deps) {
        tracing::trace!(agent_id = %agent.agent_id, reason, "not eligible for work now");
        return Ok(None);
    }
    claim_for(deps, agent).await
}

impl Actor for TaskDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        hold_after_restart(&mut self.hold, ctx);
        self.watch_announcements(ctx);
        ctx.run_interval(self.deps.settings.fetch_recheck_interval, |act, ctx| {
            if !act.waiters.is_empty() {
                act.serve_waiters(None, ctx);
            }
        });
    }
}

impl Supervised for TaskDispatcher {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.hold = self
            .restarts
            .failed(&self.deps.settings, &self.deps.counters);
        // Waiting fetches are dropped: their agents see the error and fetch again.
        self.waiters.clear();
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

/// An agent asks for work, waiting up to `wait` for some to be queued.
#[derive(Message)]
#[rtype(result = "SchedResult<Option<Assignment>>")]
pub struct FetchTask {
    /// The agent (already authenticated).
    pub agent_id: String,
    /// How long to wait when nothing is queued (capped at `fetch_max_wait`).
    pub wait: Duration,
}

impl Handler<FetchTask> for TaskDispatcher {
    type Result = ResponseActFuture<Self, SchedResult<Option<Assignment>>>;

    fn handle(&mut self, msg: FetchTask, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        let registry = self.registry.clone();
        let wait = msg.wait.min(self.deps.settings.fetch_max_wait);
        let first = async move {
            let agent = registry.send(GetAgent(msg.agent_id)).await??;
            let got = try_claim(&deps, &agent).await?;
            Ok::<_, SchedulerError>((agent, got))
        };
        Box::pin(first.into_actor(self).then(move |res, act, _ctx| {
            let next = match res {
                Err(e) => Next::Done(Err(e)),
                Ok((_, Some(a))) => Next::Done(Ok(Some(a))),
                Ok((_, None)) if wait.is_zero() => Next::Done(Ok(None)),
                Ok((agent, None)) => {
                    let (tx, rx) = oneshot::channel();
                    act.next_waiter += 1;
                    act.waiters.push(Waiter {
                        id: act.next_waiter,
                        agent,
                        until: tokio::time::Instant::now() + wait,
                        reply: Some(tx),
                        busy: false,
                    });
                    Next::Wait(rx)
                }
            };
            async move {
                match next {
                    Next::Done(answer) => answer,
                    // The re-check answers an expired waiter itself, and never one whose claim
                    // is in flight (a lease granted to a fetch that already gave up would only
                    // be taken back again). The timeout is a safety net against a lost answer.
                    Next::Wait(rx) => {
                        match tokio::time::timeout(wait + WAIT_SAFETY_MARGIN, rx).await {
                            Ok(Ok(answer)) => answer,
                            // Timed out, or the dispatcher restarted: no work this time.
                            Ok(Err(_)) | Err(_) => Ok(None),
                        }
                    }
                }
            }
            .into_actor(act)
        }))
    }
}

/// What a fetch does after its first claim attempt (short-lived; size does not matter).
#[allow(clippy::large_enum_variant)]
enum Next {
    Done(SchedResult<Option<Assignment>>),
    Wait(oneshot::Receiver<SchedResult<Option<Assignment>>>),
}

impl Handler<TasksQueued> for TaskDispatcher {
    type Result = ();

    fn handle(&mut self, msg: TasksQueued, ctx: &mut Self::Context) {
        if !self.waiters.is_empty() {
            let types = (!msg.task_types.is_empty()).then_some(&msg.task_types[..]);
            self.serve_waiters(types, ctx);
        }
    }
}

impl TaskDispatcher {
    /// Runs a result or failure report and, when it is accepted, announces it.
    fn settling(
        &mut self,
        agent_id: String,
        report: impl std::future::Future<Output = SchedResult<Task>> + 'static,
    ) -> ResponseActFuture<Self, SchedResult<Task>> {
        Box::pin(report.into_actor(self).map(move |res, act, _| {
            if let Ok(t) = &res {
                announce(act, t, &agent_id);
            }
            res
        }))
    }
}

/// Tells the registry, the metrics and the coordinator about a settled attempt.
fn announce(act: &TaskDispatcher, task: &Task, agent_id: &str) {
    let sample = TaskSample::of(task, agent_id);
    act.registry.do_send(RecordOutcome {
        agent_id: agent_id.to_string(),
        ok: sample.ok,
        response_time: sample.processing_time.unwrap_or(0.0),
        load: 0,
    });
    let _ = act.samples.try_send(sample);
    if matches!(
        task.status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Retry
    ) {
        act.settled.do_send(TaskSettled { task: task.clone() });
    }
}

/// An agent's result.
#[derive(Message)]
#[rtype(result = "SchedResult<Task>")]
pub struct CompleteTask {
    /// The agent.
    pub agent_id: String,
    /// The task.
    pub task_id: String,
    /// The lease's fencing token.
    pub token: u64,
    /// What it produced.
    pub report: ResultReport,
}

impl Handler<CompleteTask> for TaskDispatcher {
    type Result = ResponseActFuture<Self, SchedResult<Task>>;

    fn handle(&mut self, msg: CompleteTask, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        let agent_id = msg.agent_id.clone();
        self.settling(agent_id, async move {
            dispatch::complete(&deps, &msg.agent_id, &msg.task_id, msg.token, msg.report).await
        })
    }
}

/// An agent's failure report.
#[derive(Message)]
#[rtype(result = "SchedResult<Task>")]
pub struct FailTask {
    /// The agent.
    pub agent_id: String,
    /// The task.
    pub task_id: String,
    /// The lease's fencing token.
    pub token: u64,
    /// What went wrong.
    pub error: TaskError,
}

impl Handler<FailTask> for TaskDispatcher {
    type Result = ResponseActFuture<Self, SchedResult<Task>>;

    fn handle(&mut self, msg: FailTask, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        let agent_id = msg.agent_id.clone();
        self.settling(agent_id, async move {
            dispatch::fail(&deps, &msg.agent_id, &msg.task_id, msg.token, msg.error).await
        })
    }
}

/// Renews a lease (heartbeat or progress); `started` marks the task running.
#[derive(Message)]
#[rtype(result = "SchedResult<crate::broker::Lease>")]
pub struct RenewLease {
    /// The agent.
    pub agent_id: String,
    /// The task.
    pub task_id: String,
    /// The lease's fencing token.
    pub token: u64,
    /// Whether the agent reports it has started.
    pub started: bool,
}

impl Handler<RenewLease> for TaskDispatcher {
    type Result = ResponseFuture<SchedResult<crate::broker::Lease>>;

    fn handle(&mut self, msg: RenewLease, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(async move {
            dispatch::renew(&deps, &msg.agent_id, &msg.task_id, msg.token, msg.started).await
        })
    }
}

/// Test and chaos hook: the actor fails as if a handler had hit an unrecoverable error; its
/// supervisor restarts it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFailure;

impl Handler<InjectFailure> for TaskDispatcher {
    type Result = ();

    fn handle(&mut self, _: InjectFailure, ctx: &mut Self::Context) {
        tracing::warn!("dispatcher failing on request");
        ctx.stop();
    }
}
