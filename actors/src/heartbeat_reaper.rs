//! `HeartbeatReaper`: takes back what silent agents hold.
//!
//! Every `reaper_interval` it (1) reclaims up to `reaper_batch` lapsed leases — each task goes
//! back to the queue with an `assignment_history` entry and one more retry, through the store's
//! compare-and-set so a result that arrives at the same moment wins or loses cleanly — and
//! (2) marks agents whose last heartbeat is older than `heartbeat_timeout` inactive and
//! reclaims their leases at once, without waiting for them to lapse. Both passes are bounded.
//! First of all it checks the broker's epoch marker: a broker that lost its data while mcpd
//! runs is rebuilt from the store.
//!
//! Messages in: [`Reap`] (its own timer; tests send it directly).
//! Messages out: `MarkInactive` to the registry, [`TaskSettled`] for tasks that failed for
//! good, [`TasksQueued`] for requeued ones.

use actix::prelude::*;

use crate::agent_registry::{AgentRegistry, MarkInactive};
use crate::deps::{hold_after_restart, Deps, Restarts};
use crate::dispatch::{reclaim, Reclaimed};
use crate::error::SchedResult;
use crate::messages::{TaskSettled, TasksQueued};

/// The reaper actor.
pub struct HeartbeatReaper {
    deps: Deps,
    registry: Addr<AgentRegistry>,
    settled: Recipient<TaskSettled>,
    queued: Recipient<TasksQueued>,
    restarts: Restarts,
    hold: std::time::Duration,
}

impl HeartbeatReaper {
    /// A reaper over `deps`.
    pub fn new(
        deps: Deps,
        registry: Addr<AgentRegistry>,
        settled: Recipient<TaskSettled>,
        queued: Recipient<TasksQueued>,
    ) -> Self {
        HeartbeatReaper {
            deps,
            registry,
            settled,
            queued,
            restarts: Restarts::default(),
            hold: std::time::Duration::ZERO,
        }
    }
}

impl Actor for HeartbeatReaper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        hold_after_restart(&mut self.hold, ctx);
        ctx.run_interval(self.deps.settings.reaper_interval, |_, ctx| {
            ctx.notify(Reap)
        });
    }
}

impl Supervised for HeartbeatReaper {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.hold = self
            .restarts
            .failed(&self.deps.settings, &self.deps.counters);
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Tasks put back in the queue.
    pub requeued: usize,
    /// Tasks failed for lapsing too often.
    pub failed: usize,
    /// Stale leases dropped.
    pub stale: usize,
    /// Agents marked inactive.
    pub agents_expired: usize,
    /// Whether the broker had lost its data and was rebuilt from the store.
    pub broker_rebuilt: bool,
}

/// Runs one reaper pass.
#[derive(Message)]
#[rtype(result = "SchedResult<ReapReport>")]
pub struct Reap;

impl Handler<Reap> for HeartbeatReaper {
    type Result = ResponseFuture<SchedResult<ReapReport>>;

    fn handle(&mut self, _: Reap, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        let registry = self.registry.clone();
        let settled = self.settled.clone();
        let queued = self.queued.clone();
        Box::pin(async move {
            let mut report = ReapReport::default();
            // No epoch marker: the broker lost its data (a flushed or replaced Redis). Rebuild
            // it from the store before anything else, so no task is lost and no token is
            // handed out twice.
            if deps.broker.epoch().await?.is_none() {
                tracing::warn!(
                    "broker has no epoch marker (lost its data?); rebuilding it from the store"
                );
                let rebuilt = deps
                    .broker
                    .rebuild_from(deps.store.as_ref(), deps.now())
                    .await?;
                tracing::info!(
                    queued = rebuilt.queued,
                    leases_restored = rebuilt.leases_restored,
                    "broker rebuilt"
                );
                report.broker_rebuilt = true;
                crate::deps::Counters::bump(&deps.counters.broker_rebuilds);
                queued.do_send(TasksQueued {
                    task_types: Vec::new(),
                });
            }
            let mut requeued_types = Vec::new();
            let mut take = |r: Reclaimed, report: &mut ReapReport| match r {
                Reclaimed::Stale => report.stale += 1,
                Reclaimed::Requeued(t) => {
                    report.requeued += 1;
                    requeued_types.push(t.task_type);
                }
                Reclaimed::Failed(t) => {
                    report.failed += 1;
                    settled.do_send(TaskSettled { task: t });
                }
            };

            for lease in deps
                .broker
                .lapsed_leases(deps.settings.reaper_batch)
                .await?
            {
                match reclaim(&deps, &lease, "lease_expired").await {
                    Ok(r) => take(r, &mut report),
                    Err(e) => {
                        tracing::warn!(task_id = %lease.task_id, cause = %e, "lapsed lease not reclaimed")
                    }
                }
            }

            let now = deps.now();
            let timeout = deps.settings.heartbeat_timeout;
            let active = deps.broker.active_agents().await?;
            for agent_id in active.into_iter().take(deps.settings.reaper_batch) {
                let silent = match deps.broker.agent_presence(&agent_id).await? {
                    Some(p) => now.since(p.last_heartbeat) >= timeout,
                    None => true,
                };
                if !silent {
                    continue;
                }
                tracing::info!(agent_id = %agent_id, "agent silent past its heartbeat timeout; marking inactive");
                match registry.send(MarkInactive(agent_id.clone())).await? {
                    Ok(true) => report.agents_expired += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(agent_id = %agent_id, cause = %e, "agent not marked inactive");
                        continue;
                    }
                }
                for task_id in deps.broker.assigned_tasks(&agent_id).await? {
                    let Some(lease) = deps.broker.lease(&task_id).await? else {
                        continue;
                    };
                    match reclaim(&deps, &lease, "agent_inactive").await {
                        Ok(r) => take(r, &mut report),
                        Err(e) => {
                            tracing::warn!(task_id = %task_id, cause = %e, "lease of silent agent not reclaimed")
                        }
                    }
                }
            }
            if !requeued_types.is_empty() {
                requeued_types.sort();
                requeued_types.dedup();
                queued.do_send(TasksQueued {
                    task_types: requeued_types,
                });
            }
            if report != ReapReport::default() {
                tracing::info!(
                    requeued = report.requeued,
                    failed = report.failed,
                    stale = report.stale,
                    agents_expired = report.agents_expired,
                    "reaper pass"
                );
            }
            Ok(report)
        })
    }
}
