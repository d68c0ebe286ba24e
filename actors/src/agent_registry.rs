//! `AgentRegistry`: who the agents are, whether they may work, and how well they do.
//!
//! Owns registration (the token is returned once and stored only as a SHA-256 hash),
//! authentication, heartbeats (published to the broker's presence structures every time,
//! written to the store at most every `heartbeat_persist_interval`), status changes, soft
//! deletion, and the seed's per-agent performance metrics, which become the capability scores
//! the dispatcher uses to prefer reliable agents.
//!
//! Messages in: [`RegisterAgent`], [`Authenticate`], [`GetAgent`], [`Heartbeat`],
//! [`SetAgentStatus`], [`DeregisterAgent`], [`MarkInactive`], [`RecordOutcome`].
//! State: a cache of agent documents (rebuilt from the store on demand after a restart) and
//! outcome counters not yet flushed. Every write is a compare-and-set transition with its
//! event and audit record; a conflict re-reads and retries.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use sha2::{Digest, Sha256};

use crate::broker::AgentPresence;
use crate::deps::{hold_after_restart, Counters, Deps, Restarts};
use crate::error::{SchedResult, SchedulerError};
use crate::journal::{obj, Actor as By};
use crate::model::{
    new_id, Agent, AgentStatus, AgentType, AuditAction, DataClassification, Object, ResourceLimits,
    ResourceType, SchedulingConfig, Timestamp,
};
use crate::store::{StoreError, Transition, Write};

/// How often outcome counters are folded into the agents' documents.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// The agent registry actor.
pub struct AgentRegistry {
    deps: Deps,
    agents: HashMap<String, Agent>,
    last_persisted: HashMap<String, Timestamp>,
    outcomes: HashMap<String, Outcomes>,
    restarts: Restarts,
    hold: Duration,
}

/// Outcomes of one agent not yet written to its document.
#[derive(Debug, Default, Clone)]
struct Outcomes {
    completed: u64,
    failed: u64,
    response_time_sum: f64,
    peak_load: u32,
    last_completed: Option<Timestamp>,
}

impl AgentRegistry {
    /// A registry over `deps`.
    pub fn new(deps: Deps) -> Self {
        AgentRegistry {
            deps,
            agents: HashMap::new(),
            last_persisted: HashMap::new(),
            outcomes: HashMap::new(),
            restarts: Restarts::default(),
            hold: Duration::ZERO,
        }
    }
}

impl Actor for AgentRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        hold_after_restart(&mut self.hold, ctx);
        ctx.run_interval(FLUSH_INTERVAL, |_, ctx| ctx.notify(FlushOutcomes));
    }
}

impl Supervised for AgentRegistry {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.hold = self
            .restarts
            .failed(&self.deps.settings, &self.deps.counters);
        // Everything cached comes back from the store on demand.
        self.agents.clear();
        self.last_persisted.clear();
    }
}

/// Hashes an agent token for storage and comparison.
pub fn hash_token(token: &str) -> String {
    crate::hex::encode(&Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    crate::hex::encode(&bytes)
}

/// Compares two strings in time independent of where they differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What an agent declares when it registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSpec {
    /// Wanted id; generated when absent.
    pub agent_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Kind.
    pub agent_type: AgentType,
    /// Task types it can run.
    pub capabilities: Vec<String>,
    /// Software version.
    pub version: String,
    /// Limits.
    pub resource_limits: ResourceLimits,
    /// Working hours, maintenance window, priority.
    pub scheduling_config: SchedulingConfig,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: Object,
    /// Who registers it.
    pub created_by: String,
}

impl AgentSpec {
    fn check(&self) -> SchedResult<()> {
        if self.capabilities.is_empty() {
            return Err(SchedulerError::Invalid(
                "agent needs at least one capability".into(),
            ));
        }
        if let Some(bad) = self
            .capabilities
            .iter()
            .find(|c| c.trim().is_empty() || c.contains(char::is_whitespace))
        {
            return Err(SchedulerError::Invalid(format!(
                "capability {bad:?} must be a non-empty word"
            )));
        }
        if let Some(id) = &self.agent_id {
            if id.is_empty() || id.len() > 128 || id.contains(char::is_whitespace) {
                return Err(SchedulerError::Invalid(format!(
                    "agent_id {id:?} must be 1–128 characters without spaces"
                )));
            }
        }
        if self.resource_limits.max_concurrent_tasks == 0 {
            return Err(SchedulerError::Invalid(
                "resource_limits.max_concurrent_tasks must be at least 1".into(),
            ));
        }
        self.scheduling_config.validate()?;
        Ok(())
    }
}

/// A registered agent and its token, which is never shown again.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The agent as stored.
    pub agent: Agent,
    /// The bearer token for the agent protocol.
    pub token: String,
}

/// Registers a new agent.
#[derive(Message)]
#[rtype(result = "SchedResult<Registered>")]
pub struct RegisterAgent(pub AgentSpec);

impl Handler<RegisterAgent> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<Registered>>;

    fn handle(&mut self, msg: RegisterAgent, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let spec = msg.0;
                spec.check()?;
                let now = deps.now();
                let token = new_token();
                let mut agent = Agent {
                    agent_id: spec.agent_id.clone().unwrap_or_else(|| new_id("agent")),
                    name: spec.name,
                    agent_type: spec.agent_type,
                    capabilities: spec.capabilities,
                    status: AgentStatus::Active,
                    auth_token: hash_token(&token),
                    permissions: spec.permissions,
                    version: spec.version,
                    schema_version: 1,
                    resource_limits: spec.resource_limits,
                    scheduling_config: spec.scheduling_config,
                    metadata: spec.metadata,
                    tags: spec.tags,
                    registered_at: now,
                    updated_at: now,
                    created_at: now,
                    created_by: spec.created_by.clone(),
                    ..Default::default()
                };
                agent.performance_metrics.success_rate = 1.0;
                let by = By::user(&spec.created_by);
                let tx = Transition::new()
                    .write(Write::insert(&mut agent))
                    .event(deps.journal.agent_event(
                        "agent_registered",
                        &agent.agent_id,
                        &by,
                        Object::new(),
                        now,
                    ))
                    .audit(deps.journal.audit(
                        AuditAction::Create,
                        ResourceType::Agent,
                        &agent.agent_id,
                        &["capabilities", "auth_token"],
                        DataClassification::Confidential,
                        &by,
                        now,
                    ));
                deps.store.apply(tx).await.map_err(|e| match e {
                    StoreError::Conflict { id, .. } => {
                        SchedulerError::Invalid(format!("agent {id} is already registered"))
                    }
                    other => other.into(),
                })?;
                Ok(Registered { agent, token })
            }
            .into_actor(self)
            .map(|res, act, _| {
                if let Ok(r) = &res {
                    act.agents.insert(r.agent.agent_id.clone(), r.agent.clone());
                }
                res
            }),
        )
    }
}

/// Loads an agent, from the cache or the store.
async fn load(deps: &Deps, agent_id: &str) -> SchedResult<Agent> {
    deps.store
        .get_agent(agent_id)
        .await?
        .ok_or_else(|| SchedulerError::NotFound {
            kind: "agent",
            id: agent_id.to_string(),
        })
}

/// Read-modify-write of an agent with compare-and-set, retried on conflict.
async fn modify(
    deps: &Deps,
    agent_id: &str,
    event: &str,
    fields: &[&str],
    by: &By,
    mut change: impl FnMut(&mut Agent, Timestamp) -> SchedResult<bool>,
) -> SchedResult<Agent> {
    for _ in 0..8 {
        let mut agent = load(deps, agent_id).await?;
        let now = deps.now();
        if !change(&mut agent, now)? {
            return Ok(agent);
        }
        agent.updated_at = now;
        agent.updated_by = Some(by.id.clone());
        let tx = Transition::new()
            .write(Write::update(&mut agent))
            .event(deps.journal.agent_event(
                event,
                agent_id,
                by,
                obj([("status", agent.status.as_str().into())]),
                now,
            ))
            .audit(deps.journal.audit(
                AuditAction::Update,
                ResourceType::Agent,
                agent_id,
                fields,
                DataClassification::Internal,
                by,
                now,
            ));
        match deps.store.apply(tx).await {
            Ok(()) => return Ok(agent),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SchedulerError::Unavailable(format!(
        "agent {agent_id} keeps changing; try again"
    )))
}

/// Checks an agent's token; answers the agent.
#[derive(Message)]
#[rtype(result = "SchedResult<Agent>")]
pub struct Authenticate {
    /// The agent.
    pub agent_id: String,
    /// Its token.
    pub token: String,
}

impl Handler<Authenticate> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<Agent>>;

    fn handle(&mut self, msg: Authenticate, ctx: &mut Self::Context) -> Self::Result {
        let get = self.get(msg.agent_id.clone(), ctx);
        Box::pin(get.map(move |res, _act, _| {
            let unauthorized = || {
                SchedulerError::Unauthorized(format!(
                    "agent {}: unknown agent or wrong token",
                    msg.agent_id
                ))
            };
            match res {
                Ok(a)
                    if !a.is_deleted
                        && constant_time_eq(&a.auth_token, &hash_token(&msg.token)) =>
                {
                    Ok(a)
                }
                Ok(_) | Err(SchedulerError::NotFound { .. }) => Err(unauthorized()),
                Err(e) => Err(e),
            }
        }))
    }
}

impl AgentRegistry {
    fn get(
        &mut self,
        agent_id: String,
        _ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, SchedResult<Agent>> {
        if let Some(a) = self.agents.get(&agent_id) {
            return Box::pin(fut::ready(Ok(a.clone())));
        }
        let deps = self.deps.clone();
        Box::pin(
            async move { load(&deps, &agent_id).await }
                .into_actor(self)
                .map(|res, act, _| {
                    if let Ok(a) = &res {
                        act.agents.insert(a.agent_id.clone(), a.clone());
                    }
                    res
                }),
        )
    }

    fn remember(&mut self, res: &SchedResult<Agent>) {
        if let Ok(a) = res {
            self.agents.insert(a.agent_id.clone(), a.clone());
        }
    }
}

/// An agent's document.
#[derive(Message)]
#[rtype(result = "SchedResult<Agent>")]
pub struct GetAgent(pub String);

impl Handler<GetAgent> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<Agent>>;

    fn handle(&mut self, msg: GetAgent, ctx: &mut Self::Context) -> Self::Result {
        self.get(msg.0, ctx)
    }
}

/// An agent is alive and holds `current_tasks` tasks.
#[derive(Message)]
#[rtype(result = "SchedResult<()>")]
pub struct Heartbeat {
    /// The agent.
    pub agent_id: String,
    /// Tasks it holds.
    pub current_tasks: u32,
}

impl Handler<Heartbeat> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<()>>;

    fn handle(&mut self, msg: Heartbeat, ctx: &mut Self::Context) -> Self::Result {
        let now = self.deps.now();
        let due = self
            .last_persisted
            .get(&msg.agent_id)
            .is_none_or(|t| now.since(*t) >= self.deps.settings.heartbeat_persist_interval);
        let cached = self.agents.get(&msg.agent_id).cloned();
        let deps = self.deps.clone();
        let get = match cached {
            Some(a) => Box::pin(fut::ready(Ok(a))) as ResponseActFuture<Self, SchedResult<Agent>>,
            None => self.get(msg.agent_id.clone(), ctx),
        };
        Box::pin(get.then(move |res, act, _| {
            let persist = res
                .as_ref()
                .map(|a| due || a.status == AgentStatus::Inactive)
                .unwrap_or(false);
            if persist {
                act.last_persisted.insert(msg.agent_id.clone(), now);
            }
            async move {
                let mut agent = res?;
                if agent.is_deleted {
                    return Err(SchedulerError::Unauthorized(format!(
                        "agent {} is deleted",
                        agent.agent_id
                    )));
                }
                if persist {
                    let by = By::agent(&agent.agent_id);
                    agent = modify(
                        &deps,
                        &agent.agent_id,
                        "agent_heartbeat",
                        &["last_heartbeat", "status"],
                        &by,
                        |a, now| {
                            a.last_heartbeat = Some(now);
                            let registered = a.registered_at;
                            a.performance_metrics.mark_seen(now, registered);
                            if a.status == AgentStatus::Inactive {
                                a.status = AgentStatus::Active;
                            }
                            Ok(true)
                        },
                    )
                    .await?;
                }
                deps.broker
                    .publish_agent(&presence(&agent, msg.current_tasks, now))
                    .await?;
                Ok(agent)
            }
            .into_actor(act)
            .map(|res, act, _| {
                act.remember(&res);
                res.map(|_| ())
            })
        }))
    }
}

/// The presence record of an agent.
pub fn presence(agent: &Agent, current_tasks: u32, now: Timestamp) -> AgentPresence {
    AgentPresence {
        agent_id: agent.agent_id.clone(),
        status: agent.status.as_str().to_string(),
        last_heartbeat: now,
        current_tasks,
        performance_score: score(agent),
        capabilities: agent.capabilities.clone(),
        endpoint_url: agent.endpoint_url.clone(),
        version: agent.version.clone(),
    }
}

/// An agent's reliability score, 0.0–1.0: its success rate with a prior of one success and one
/// failure, so a new agent starts at 0.5 and a few results do not swing it to an extreme.
pub fn score(agent: &Agent) -> f64 {
    let p = &agent.performance_metrics;
    (p.tasks_completed as f64 + 1.0) / ((p.tasks_completed + p.tasks_failed) as f64 + 2.0)
}

/// Changes an agent's status (operator or agent request).
#[derive(Message)]
#[rtype(result = "SchedResult<Agent>")]
pub struct SetAgentStatus {
    /// The agent.
    pub agent_id: String,
    /// New status.
    pub status: AgentStatus,
    /// Who asks.
    pub by: By,
}

impl Handler<SetAgentStatus> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<Agent>>;

    fn handle(&mut self, msg: SetAgentStatus, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let status = msg.status;
                let agent = modify(
                    &deps,
                    &msg.agent_id,
                    "agent_status_changed",
                    &["status"],
                    &msg.by,
                    |a, _| {
                        if a.is_deleted {
                            return Err(SchedulerError::Invalid(format!(
                                "agent {} is deleted",
                                a.agent_id
                            )));
                        }
                        let changed = a.status != status;
                        a.status = status;
                        Ok(changed)
                    },
                )
                .await?;
                if status != AgentStatus::Active && status != AgentStatus::Busy {
                    deps.broker
                        .withdraw_agent(&agent.agent_id, &agent.capabilities)
                        .await?;
                }
                Ok(agent)
            }
            .into_actor(self)
            .map(|res, act, _| {
                act.remember(&res);
                res
            }),
        )
    }
}

/// Marks a silent agent inactive (the reaper). Answers whether it changed.
#[derive(Message)]
#[rtype(result = "SchedResult<bool>")]
pub struct MarkInactive(pub String);

impl Handler<MarkInactive> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<bool>>;

    fn handle(&mut self, msg: MarkInactive, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let by = deps.system();
                let mut changed = false;
                let agent = modify(&deps, &msg.0, "agent_inactive", &["status"], &by, |a, _| {
                    changed = matches!(a.status, AgentStatus::Active | AgentStatus::Busy);
                    if changed {
                        a.status = AgentStatus::Inactive;
                    }
                    Ok(changed)
                })
                .await?;
                deps.broker
                    .withdraw_agent(&agent.agent_id, &agent.capabilities)
                    .await?;
                if changed {
                    Counters::bump(&deps.counters.agents_expired);
                }
                Ok((agent, changed))
            }
            .into_actor(self)
            .map(|res, act, _| {
                res.map(|(a, changed)| {
                    act.agents.insert(a.agent_id.clone(), a);
                    changed
                })
            }),
        )
    }
}

/// Soft-deletes an agent.
#[derive(Message)]
#[rtype(result = "SchedResult<()>")]
pub struct DeregisterAgent {
    /// The agent.
    pub agent_id: String,
    /// Who asks.
    pub by: By,
}

impl Handler<DeregisterAgent> for AgentRegistry {
    type Result = ResponseActFuture<Self, SchedResult<()>>;

    fn handle(&mut self, msg: DeregisterAgent, _ctx: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let agent = modify(
                    &deps,
                    &msg.agent_id,
                    "agent_deleted",
                    &["is_deleted", "status"],
                    &msg.by,
                    |a, now| {
                        if a.is_deleted {
                            return Ok(false);
                        }
                        a.is_deleted = true;
                        a.deleted_at = Some(now);
                        a.status = AgentStatus::Inactive;
                        Ok(true)
                    },
                )
                .await?;
                deps.broker
                    .withdraw_agent(&agent.agent_id, &agent.capabilities)
                    .await?;
                Ok(agent)
            }
            .into_actor(self)
            .map(|res, act, _| {
                act.remember(&res);
                res.map(|_| ())
            }),
        )
    }
}

/// One finished attempt of an agent, for its performance metrics.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RecordOutcome {
    /// The agent.
    pub agent_id: String,
    /// Whether the attempt succeeded.
    pub ok: bool,
    /// Seconds from assignment to result.
    pub response_time: f64,
    /// Tasks the agent held at the time.
    pub load: u32,
}

impl Handler<RecordOutcome> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: RecordOutcome, _ctx: &mut Self::Context) {
        let o = self.outcomes.entry(msg.agent_id).or_default();
        if msg.ok {
            o.completed += 1;
            o.last_completed = Some(self.deps.now());
        } else {
            o.failed += 1;
        }
        o.response_time_sum += msg.response_time;
        o.peak_load = o.peak_load.max(msg.load);
    }
}

/// Folds pending outcomes into the agents' documents (group commit, one batch).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushOutcomes;

impl Handler<FlushOutcomes> for AgentRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: FlushOutcomes, _ctx: &mut Self::Context) -> Self::Result {
        let pending = std::mem::take(&mut self.outcomes);
        let deps = self.deps.clone();
        Box::pin(
            async move {
                let mut updated = Vec::new();
                for (agent_id, o) in pending {
                    let by = deps.system();
                    let res = modify(&deps, &agent_id, "agent_metrics_updated", &["performance_metrics"], &by, |a, now| {
                        fold(a, &o, now);
                        Ok(true)
                    })
                    .await;
                    match res {
                        Ok(a) => {
                            let now = deps.now();
                            let _ = deps.broker.publish_agent(&presence(&a, 0, now)).await;
                            updated.push(a);
                        }
                        Err(e) => tracing::warn!(agent_id = %agent_id, cause = %e, "agent metrics not saved"),
                    }
                }
                updated
            }
            .into_actor(self)
            .map(|updated, act, _| {
                for a in updated {
                    act.agents.insert(a.agent_id.clone(), a);
                }
            }),
        )
    }
}

/// Adds outcomes to an agent's performance metrics (all-time, and the 24-hour and 7-day
/// windows kept in hourly buckets).
fn fold(a: &mut Agent, o: &Outcomes, now: Timestamp) {
    let registered = a.registered_at;
    a.performance_metrics.record(
        now,
        o.completed,
        o.failed,
        o.response_time_sum,
        o.peak_load,
        registered,
    );
    if o.last_completed.is_some() {
        a.last_task_completed = o.last_completed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
        assert!(constant_time_eq(&hash_token(&a), &hash_token(&a)));
        assert!(!constant_time_eq(&hash_token(&a), &hash_token(&b)));
    }

    #[test]
    fn score_prefers_reliable_agents_and_starts_neutral() {
        let mut a = Agent::default();
        assert_eq!(score(&a), 0.5);
        a.performance_metrics.tasks_completed = 98;
        a.performance_metrics.tasks_failed = 0;
        let good = score(&a);
        a.performance_metrics.tasks_failed = 50;
        assert!(score(&a) < good);
    }

    #[test]
    fn outcomes_fold_into_the_seed_metrics() {
        let mut a = Agent::default();
        fold(
            &mut a,
            &Outcomes {
                completed: 3,
                failed: 1,
                response_time_sum: 8.0,
                peak_load: 2,
                last_completed: Some(Timestamp::from_millis(5)),
            },
            Timestamp::from_millis(10),
        );
        let p = &a.performance_metrics;
        assert_eq!((p.tasks_completed, p.tasks_failed), (3, 1));
        assert_eq!(p.success_rate, 0.75);
        assert_eq!(p.average_response_time, 2.0);
        assert_eq!((p.last_24h.tasks_completed, p.last_24h.peak_load), (3, 2));
        assert_eq!(p.last_7d.availability, 100.0);
        assert_eq!(a.last_task_completed, Some(Timestamp::from_millis(5)));
    }

    #[test]
    fn specs_are_checked() {
        let spec = AgentSpec {
            capabilities: vec![],
            ..Default::default()
        };
        assert!(spec
            .check()
            .unwrap_err()
            .to_string()
            .contains("at least one capability"));
        let spec = AgentSpec {
            capabilities: vec!["bias detection".into()],
            ..Default::default()
        };
        assert!(spec
            .check()
            .unwrap_err()
            .to_string()
            .contains("non-empty word"));
    }
}
