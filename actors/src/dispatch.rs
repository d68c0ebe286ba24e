//! Lease life cycle, as plain async functions over [`Deps`]: grant, renew, complete, fail,
//! and take back. The [`TaskDispatcher`](crate::task_dispatcher) and the
//! [`HeartbeatReaper`](crate::heartbeat_reaper) call these; keeping them out of the actors
//! keeps the actors thin and lets these be tested without a runtime.
//!
//! # Ordering
//! The broker grants (claim), the store decides: a lease is acknowledged to the agent only
//! after the store recorded it (`pending → assigned` with the lease token, compare-and-set),
//! and a result is accepted only if the store takes it under the same token and revision. Two
//! parties racing on one task — an agent's late result and the reaper's requeue, say — both go
//! through the store's compare-and-set, so exactly one outcome is accepted. The broker is
//! tidied afterwards; if that fails the reaper tidies it later.

use serde_json::Value;

use crate::broker::{CacheKey, ClaimRequest, Lease, QueueEntry};
use crate::deps::{Counters, Deps};
use crate::engine::{assignment, meets_quality, record_failure};
use crate::error::{SchedResult, SchedulerError};
use crate::journal::{obj, Actor};
use crate::model::{
    Agent, AgentStatus, AuditAction, DataClassification, Object, QualityScores, ResourceType, Task,
    TaskError, TaskStatus,
};
use crate::store::{StoreError, Transition, Write};

/// A granted lease and the task it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The task, as stored after the grant.
    pub task: Task,
    /// The lease.
    pub lease: Lease,
}

/// What an agent sends with a result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultReport {
    /// Processed output (what dependants receive).
    pub output_data: Option<Object>,
    /// Raw result.
    pub result: Option<Object>,
    /// Result metadata (confidence, …).
    pub result_metadata: Option<Object>,
    /// Quality scores, checked against the pipeline's thresholds.
    pub quality_scores: Option<QualityScores>,
    /// Peak memory, MiB.
    pub memory_usage_mb: Option<f64>,
    /// CPU, percent.
    pub cpu_usage_percent: Option<f64>,
}

/// Whether `agent` may take work now, and if not, why.
pub fn eligibility(agent: &Agent, held: usize, deps: &Deps) -> Result<(), String> {
    if agent.is_deleted {
        return Err("agent is deleted".into());
    }
    if !matches!(agent.status, AgentStatus::Active | AgentStatus::Busy) {
        return Err(format!("agent is {}", agent.status));
    }
    match agent.scheduling_config.accepts_work_at(deps.now()) {
        Ok(true) => {}
        Ok(false) => return Err("outside working hours or in maintenance".into()),
        Err(e) => return Err(e.to_string()),
    }
    let limit = agent.resource_limits.max_concurrent_tasks.max(1) as usize;
    if held >= limit {
        return Err(format!("at max_concurrent_tasks ({limit})"));
    }
    Ok(())
}

fn classification(task: &Task) -> DataClassification {
    task.metadata
        .get("data_classification")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(DataClassification::Internal)
}

/// Grants `agent` the best task it may run, or `None` when none is queued for it.
///
/// Queue entries whose task is no longer pending (cancelled, paused, already taken) are
/// dropped on the way; a bounded number of them is skipped per call.
pub async fn claim_for(deps: &Deps, agent: &Agent) -> SchedResult<Option<Assignment>> {
    let req = ClaimRequest {
        agent_id: agent.agent_id.clone(),
        capabilities: agent.capabilities.clone(),
        lease_ttl: deps.settings.lease_ttl,
    };
    for _ in 0..16 {
        let Some(lease) = deps.broker.claim(&req).await? else {
            return Ok(None);
        };
        // On an error from here until the grant is recorded the lease is left to lapse: the
        // reaper then puts the task back (see `reclaim`), whatever the store ended up holding.
        let task = deps.store.get_task(&lease.task_id).await?;
        let Some(task) = task.filter(|t| t.status == TaskStatus::Pending && !t.is_deleted) else {
            drop_stale_claim(deps, &lease, None).await?;
            continue;
        };
        let now = deps.now();
        let mut t = task.clone();
        t.transition_to(TaskStatus::Assigned, now)?;
        t.assigned_agent_id = Some(agent.agent_id.clone());
        t.lease_token = lease.token;
        t.lease_expires_at = Some(lease.expires_at);
        t.assignment_history.push(assignment(&agent.agent_id, now));
        if t.performance_metrics.queue_time.is_none() {
            t.performance_metrics.queue_time = Some(now.seconds_since(t.created_at));
        }
        t.updated_by = Some(agent.agent_id.clone());
        let by = Actor::agent(&agent.agent_id);
        let tx = Transition::new()
            .write(Write::update_from(&mut t, "pending"))
            .event(deps.journal.task_event(
                "task_assigned",
                &t,
                &by,
                obj([("lease_token", lease.token.into())]),
                now,
            ))
            .audit(deps.journal.audit(
                AuditAction::Read,
                ResourceType::Task,
                &t.task_id,
                &["input_data", "parameters"],
                classification(&t),
                &by,
                now,
            ));
        match deps.store.apply(tx).await {
            Ok(()) => {
                Counters::bump(&deps.counters.leases_granted);
                cache_status(deps, &t).await;
                return Ok(Some(Assignment { task: t, lease }));
            }
            Err(StoreError::Fenced { current, .. }) => {
                // The broker handed out a token the store has seen surpassed: its counter went
                // back (it lost its data). Raise it now; the reaper rebuilds the rest.
                deps.broker.raise_fence_floor(current).await?;
                let fresh = deps.store.get_task(&lease.task_id).await?;
                drop_stale_claim(deps, &lease, fresh.as_ref()).await?;
            }
            Err(StoreError::Conflict { .. }) => {
                // The task moved between claim and grant; put it back only if still pending.
                let fresh = deps.store.get_task(&lease.task_id).await?;
                drop_stale_claim(deps, &lease, fresh.as_ref()).await?;
            }
            // Not known whether the grant was recorded (a commit whose outcome is unknown):
            // the lease lapses and the reaper settles it either way.
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Undoes a claim whose task turned out not to be grantable. A task still pending goes back
/// to its queue; a task the store records as leased to someone else gets that recorded lease
/// back in the broker (the claim may have taken over its lapsed lock), so the reaper finds and
/// reclaims it; anything else just loses the claim's lease.
async fn drop_stale_claim(deps: &Deps, lease: &Lease, task: Option<&Task>) -> SchedResult<()> {
    let task = match task {
        Some(t) => Some(t.clone()),
        None => deps.store.get_task(&lease.task_id).await?,
    };
    match task {
        Some(t) if t.status == TaskStatus::Pending && !t.is_deleted => {
            deps.broker
                .requeue(&QueueEntry::of(&t), Some(lease))
                .await?;
        }
        Some(t) if t.status.is_leased() && t.lease_token != lease.token => {
            deps.broker.revoke(lease).await?;
            if let Some(recorded) = crate::engine::recorded_lease(&t) {
                deps.broker
                    .restore_lease(&recorded, t.status == TaskStatus::Running)
                    .await?;
            }
        }
        _ => {
            deps.broker.revoke(lease).await?;
        }
    }
    Ok(())
}

/// Loads a task and checks that `agent_id` holds it under `token`, with a live lease.
async fn held_task(
    deps: &Deps,
    agent_id: &str,
    task_id: &str,
    token: u64,
) -> SchedResult<(Task, Lease)> {
    let task = deps
        .store
        .get_task(task_id)
        .await?
        .ok_or_else(|| SchedulerError::refused(task_id, "unknown task"))?;
    if task.assigned_agent_id.as_deref() != Some(agent_id) {
        return Err(SchedulerError::refused(task_id, "held by another agent"));
    }
    if task.lease_token != token {
        return Err(SchedulerError::refused(
            task_id,
            format!("lease token {token} superseded by {}", task.lease_token),
        ));
    }
    if !task.status.is_leased() {
        return Err(SchedulerError::refused(
            task_id,
            format!("task is {}", task.status),
        ));
    }
    let lease = deps
        .broker
        .lease(task_id)
        .await?
        .filter(|l| l.token == token && l.agent_id == agent_id)
        .ok_or_else(|| SchedulerError::refused(task_id, "lease expired"))?;
    if lease.expires_at <= deps.now() {
        return Err(SchedulerError::refused(task_id, "lease expired"));
    }
    Ok((task, lease))
}

/// [`held_task`] for a result or failure report: a refusal is counted.
async fn held_for_result(
    deps: &Deps,
    agent_id: &str,
    task_id: &str,
    token: u64,
) -> SchedResult<(Task, Lease)> {
    let held = held_task(deps, agent_id, task_id, token).await;
    if held.is_err() {
        Counters::bump(&deps.counters.results_refused);
    }
    held
}

async fn settle(
    deps: &Deps,
    mut t: Task,
    from: TaskStatus,
    lease: &Lease,
    event: &str,
    payload: Object,
) -> SchedResult<Task> {
    let now = deps.now();
    let by = Actor::agent(&lease.agent_id);
    let tx = Transition::new()
        .write(Write::update_from(&mut t, from.as_str()))
        .event(deps.journal.task_event(event, &t, &by, payload, now))
        .audit(deps.journal.audit(
            AuditAction::Update,
            ResourceType::Task,
            &t.task_id,
            &["status", "result", "output_data", "error"],
            classification(&t),
            &by,
            now,
        ));
    match deps.store.apply(tx).await {
        Ok(()) => {}
        Err(e @ (StoreError::Conflict { .. } | StoreError::Fenced { .. })) => {
            Counters::bump(&deps.counters.results_refused);
            return Err(SchedulerError::refused(
                &t.task_id,
                format!("task changed under the lease: {e}"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Counters::bump(&deps.counters.results_accepted);
    // The store has spoken; a broker that lost the lease meanwhile is tidied by the reaper.
    if let Err(e) = deps.broker.finish(lease).await {
        tracing::debug!(task_id = %t.task_id, cause = %e, "lease already gone at finish");
        let _ = deps.broker.revoke(lease).await;
    }
    cache_status(deps, &t).await;
    Ok(t)
}

/// Accepts a result under the current lease. A result below the task's quality thresholds
/// counts as a failed attempt (retried while retries remain). Returns the task as stored.
pub async fn complete(
    deps: &Deps,
    agent_id: &str,
    task_id: &str,
    token: u64,
    report: ResultReport,
) -> SchedResult<Task> {
    let (task, lease) = held_for_result(deps, agent_id, task_id, token).await?;
    let now = deps.now();
    let from = task.status;
    let mut t = task;
    t.quality_scores = report.quality_scores;
    t.result = report.result;
    t.result_metadata = report.result_metadata;
    t.output_data = report.output_data;
    let pm = &mut t.performance_metrics;
    pm.processing_time = t.assigned_at.map(|a| now.seconds_since(a));
    pm.total_time = Some(now.seconds_since(t.created_at));
    pm.memory_usage_mb = report.memory_usage_mb.or(pm.memory_usage_mb);
    pm.cpu_usage_percent = report.cpu_usage_percent.or(pm.cpu_usage_percent);
    t.updated_by = Some(agent_id.to_string());
    if let Err(message) = meets_quality(&t) {
        let error = TaskError {
            code: "quality_below_threshold".into(),
            message,
            is_retryable: true,
            ..Default::default()
        };
        let next = record_failure(&mut t, error, now)?;
        let event = if next == TaskStatus::Retry {
            "task_retry_scheduled"
        } else {
            "task_failed"
        };
        return settle(
            deps,
            t,
            from,
            &lease,
            event,
            obj([("reason", "quality_below_threshold".into())]),
        )
        .await;
    }
    t.transition_to(TaskStatus::Completed, now)?;
    t.lease_expires_at = None;
    if let Some(last) = t.assignment_history.last_mut() {
        last.released_at = Some(now);
        last.reason = Some("completed".into());
    }
    settle(deps, t, from, &lease, "task_completed", Object::new()).await
}

/// Records a failure reported under the current lease: retried while the error is retryable
/// and retries remain, failed otherwise. Returns the task as stored.
pub async fn fail(
    deps: &Deps,
    agent_id: &str,
    task_id: &str,
    token: u64,
    error: TaskError,
) -> SchedResult<Task> {
    let (task, lease) = held_for_result(deps, agent_id, task_id, token).await?;
    let from = task.status;
    let mut t = task;
    let code = error.code.clone();
    let next = record_failure(&mut t, error, deps.now())?;
    t.updated_by = Some(agent_id.to_string());
    let event = if next == TaskStatus::Retry {
        "task_retry_scheduled"
    } else {
        "task_failed"
    };
    settle(deps, t, from, &lease, event, obj([("reason", code.into())])).await
}

/// Renews a live lease; with `started`, also moves an `assigned` task to `running` (the first
/// progress report). Returns the renewed lease.
pub async fn renew(
    deps: &Deps,
    agent_id: &str,
    task_id: &str,
    token: u64,
    started: bool,
) -> SchedResult<Lease> {
    let probe = Lease {
        task_id: task_id.to_string(),
        agent_id: agent_id.to_string(),
        token,
        locked_at: deps.now(),
        expires_at: deps.now(),
    };
    let lease = deps
        .broker
        .renew(&probe, deps.settings.lease_ttl)
        .await
        .map_err(|e| match e {
            crate::broker::BrokerError::LeaseLost { reason, .. } => {
                SchedulerError::refused(task_id, reason)
            }
            other => other.into(),
        })?;
    if started {
        let (task, _) = held_task(deps, agent_id, task_id, token).await?;
        if task.status == TaskStatus::Assigned {
            let now = deps.now();
            let mut t = task;
            t.transition_to(TaskStatus::Running, now)?;
            t.lease_expires_at = Some(lease.expires_at);
            let by = Actor::agent(agent_id);
            let tx = Transition::new()
                .write(Write::update_from(&mut t, "assigned"))
                .event(
                    deps.journal
                        .task_event("task_started", &t, &by, Object::new(), now),
                );
            deps.store.apply(tx).await.map_err(|e| match e {
                StoreError::Conflict { .. } | StoreError::Fenced { .. } => {
                    SchedulerError::refused(task_id, format!("task changed under the lease: {e}"))
                }
                other => other.into(),
            })?;
            deps.broker.start(&lease).await?;
            cache_status(deps, &t).await;
        }
    }
    Ok(lease)
}

/// What taking back a lease did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reclaimed {
    /// The lease was stale (the task had moved on); it was only dropped from the broker.
    Stale,
    /// The task went back to the queue.
    Requeued(Task),
    /// The task lapsed too often and failed.
    Failed(Task),
}

/// Takes back a lease whose holder went silent (`reason`: `lease_expired`, `agent_inactive`):
/// the task returns to the queue with an `assignment_history` entry and one more retry, or
/// fails after [`Settings::max_lease_lapses`](crate::deps::Settings) lapses.
pub async fn reclaim(deps: &Deps, lease: &Lease, reason: &str) -> SchedResult<Reclaimed> {
    let task = deps.store.get_task(&lease.task_id).await?;
    let Some(task) = task.filter(|t| t.status.is_leased() && t.lease_token == lease.token) else {
        // A lease the store never recorded (a claim that failed before its grant), or one
        // left behind by a reclaim whose requeue failed: a task still pending is queued again,
        // otherwise the lease is only dropped.
        drop_stale_claim(deps, lease, None).await?;
        return Ok(Reclaimed::Stale);
    };
    let now = deps.now();
    let from = task.status;
    let mut t = task;
    if let Some(last) = t.assignment_history.last_mut() {
        if last.released_at.is_none() {
            last.released_at = Some(now);
            last.reason = Some(reason.to_string());
        }
    }
    let lapses = t
        .assignment_history
        .iter()
        .filter(|a| {
            matches!(
                a.reason.as_deref(),
                Some("lease_expired" | "agent_inactive")
            )
        })
        .count() as u32;
    let failed = lapses > deps.settings.max_lease_lapses;
    if failed {
        t.transition_to(TaskStatus::Failed, now)?;
        t.error = Some(TaskError {
            code: "lease_expired_too_often".into(),
            message: format!("{lapses} agents went silent holding this task"),
            is_retryable: false,
            ..Default::default()
        });
    } else {
        t.transition_to(TaskStatus::Pending, now)?;
        // A silent holder costs the task an attempt; a fetch that gave up before its answer
        // does not.
        if reason != "fetch_abandoned" {
            t.retry_count += 1;
        }
    }
    t.assigned_agent_id = None;
    t.lease_expires_at = None;
    let by = deps.system();
    let event = if failed {
        "task_failed"
    } else {
        "task_requeued"
    };
    let tx = Transition::new()
        .write(Write::update_from(&mut t, from.as_str()))
        .event(deps.journal.task_event(
            event,
            &t,
            &by,
            obj([
                ("reason", reason.into()),
                ("agent_id", lease.agent_id.clone().into()),
            ]),
            now,
        ));
    match deps.store.apply(tx).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. } | StoreError::Fenced { .. }) => {
            // The holder's result (or another reaper) won the race; only tidy the broker.
            deps.broker.revoke(lease).await?;
            return Ok(Reclaimed::Stale);
        }
        Err(e) => return Err(e.into()),
    }
    Counters::bump(&deps.counters.tasks_requeued);
    cache_status(deps, &t).await;
    if failed {
        deps.broker.revoke(lease).await?;
        Ok(Reclaimed::Failed(t))
    } else {
        deps.broker
            .requeue(&QueueEntry::of(&t), Some(lease))
            .await?;
        Ok(Reclaimed::Requeued(t))
    }
}

/// Mirrors a task's status into `tasks:status:{id}`; a failure only costs the cache.
pub async fn cache_status(deps: &Deps, t: &Task) {
    let value = serde_json::json!({
        "status": t.status,
        "agent_id": t.assigned_agent_id,
        "progress": if t.status.is_terminal() { 1.0 } else { 0.0 },
        "started_at": t.started_at,
        "updated_at": t.updated_at,
    });
    if let Err(e) = deps
        .broker
        .put_cache(&CacheKey::TaskStatus(t.task_id.clone()), &value)
        .await
    {
        tracing::debug!(task_id = %t.task_id, cause = %e, "task status cache not updated");
    }
}
