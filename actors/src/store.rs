//! The store port: the source of truth.
//!
//! Every mutation is a [`Transition`]: entity writes (inserts and compare-and-set updates),
//! the events they emit and the audit records they require, applied **atomically** — all or
//! nothing. That is the guarantee the scheduler builds on (a transition is persisted before it
//! is acknowledged, with its event and audit record) and the operation the hash-chained audit
//! trail will need. [`Store::apply_batch`] commits many independent transitions in one round
//! (group commit) while keeping each one's all-or-nothing outcome.
//!
//! Concurrency control is optimistic: every agent, task and pipeline carries a `revision`.
//! [`Write::update`] bumps the caller's copy and expects the stored revision to be the one the
//! copy was read at, so two writers racing from the same state cannot both win; the loser gets
//! [`StoreError::Conflict`] and re-reads. Tasks are also *fenced*: a write carrying a
//! `lease_token` lower than the stored one is refused with [`StoreError::Fenced`], so a result
//! sent under a superseded lease can never land, even after the broker lost its counters.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{
    Agent, AgentStatus, AgentType, AuditAction, AuditLog, Event, Metric, Pipeline, PipelineStatus,
    ResourceType, Task, TaskStatus, Timestamp,
};

/// Errors of the store layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The document does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Collection kind.
        kind: EntityKind,
        /// Identifier.
        id: String,
    },
    /// A compare-and-set precondition failed, or an insert met an existing id.
    #[error("conflict on {kind} {id}: {reason}")]
    Conflict {
        /// Collection kind.
        kind: EntityKind,
        /// Identifier.
        id: String,
        /// What did not match.
        reason: String,
    },
    /// A task write carried a lease token lower than the one the store holds.
    #[error("task {task_id}: lease token {offered} is stale (current {current})")]
    Fenced {
        /// The task.
        task_id: String,
        /// Token the writer acted under.
        offered: u64,
        /// Token the store holds.
        current: u64,
    },
    /// The request itself is malformed.
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The backend cannot be reached or refused service; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("store timed out: {0}")]
    Timeout(String),
    /// A stored document could not be decoded.
    #[error("corrupt document in {collection}: {message}")]
    Corrupt {
        /// Collection.
        collection: &'static str,
        /// Decoder message.
        message: String,
    },
    /// Anything else the backend reported.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// Result alias of the store layer.
pub type StoreResult<T> = Result<T, StoreError>;

/// The collections holding versioned entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// `agents`.
    Agent,
    /// `tasks`.
    Task,
    /// `pipelines`.
    Pipeline,
}

impl EntityKind {
    /// The seed's collection name.
    pub const fn collection(self) -> &'static str {
        match self {
            EntityKind::Agent => "agents",
            EntityKind::Task => "tasks",
            EntityKind::Pipeline => "pipelines",
        }
    }
}

impl std::fmt::Display for EntityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntityKind::Agent => "agent",
            EntityKind::Task => "task",
            EntityKind::Pipeline => "pipeline",
        })
    }
}

/// A versioned entity to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Entity {
    /// An agent.
    Agent(Box<Agent>),
    /// A task.
    Task(Box<Task>),
    /// A pipeline.
    Pipeline(Box<Pipeline>),
}

impl Entity {
    /// Its collection.
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::Agent(_) => EntityKind::Agent,
            Entity::Task(_) => EntityKind::Task,
            Entity::Pipeline(_) => EntityKind::Pipeline,
        }
    }

    /// Its identifier.
    pub fn id(&self) -> &str {
        match self {
            Entity::Agent(a) => &a.agent_id,
            Entity::Task(t) => &t.task_id,
            Entity::Pipeline(p) => &p.pipeline_id,
        }
    }

    /// Its revision.
    pub fn revision(&self) -> u64 {
        match self {
            Entity::Agent(a) => a.revision,
            Entity::Task(t) => t.revision,
            Entity::Pipeline(p) => p.revision,
        }
    }

    /// Its status string.
    pub fn status(&self) -> &'static str {
        match self {
            Entity::Agent(a) => a.status.as_str(),
            Entity::Task(t) => t.status.as_str(),
            Entity::Pipeline(p) => p.status.as_str(),
        }
    }
}

impl From<Agent> for Entity {
    fn from(a: Agent) -> Self {
        Entity::Agent(Box::new(a))
    }
}
impl From<Task> for Entity {
    fn from(t: Task) -> Self {
        Entity::Task(Box::new(t))
    }
}
impl From<Pipeline> for Entity {
    fn from(p: Pipeline) -> Self {
        Entity::Pipeline(Box::new(p))
    }
}

/// What an update expects to find in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// The stored revision must equal this.
    pub revision: u64,
    /// The stored status must equal this, when set (a clearer conflict than the revision's).
    pub status: Option<&'static str>,
}

/// One entity write inside a [`Transition`].
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Creates the entity; [`StoreError::Conflict`] when its id exists.
    Insert(Entity),
    /// Replaces the entity when `expect` holds; [`StoreError::Conflict`] otherwise,
    /// [`StoreError::NotFound`] when it does not exist.
    Update {
        /// The new document; its `revision` must be `expect.revision + 1`.
        entity: Entity,
        /// The precondition.
        expect: Expect,
    },
}

/// Something with a revision and a status that [`Write::update`] can version.
pub trait Versioned: Clone + Into<Entity> {
    /// Mutable access to the revision.
    fn revision_mut(&mut self) -> &mut u64;
}

impl Versioned for Agent {
    fn revision_mut(&mut self) -> &mut u64 {
        &mut self.revision
    }
}
impl Versioned for Task {
    fn revision_mut(&mut self) -> &mut u64 {
        &mut self.revision
    }
}
impl Versioned for Pipeline {
    fn revision_mut(&mut self) -> &mut u64 {
        &mut self.revision
    }
}

impl Write {
    /// Inserts a new entity at revision 1 (sets the caller's copy too).
    pub fn insert<T: Versioned>(entity: &mut T) -> Write {
        *entity.revision_mut() = 1;
        Write::Insert(entity.clone().into())
    }

    /// A compare-and-set update of `entity`, which was read at its current revision: bumps the
    /// caller's copy to the next revision and expects the store to still hold the read one.
    pub fn update<T: Versioned>(entity: &mut T) -> Write {
        let read_at = *entity.revision_mut();
        *entity.revision_mut() = read_at + 1;
        Write::Update {
            entity: entity.clone().into(),
            expect: Expect {
                revision: read_at,
                status: None,
            },
        }
    }

    /// Like [`Write::update`], and the stored status must be `from` (the state the caller
    /// moved the entity out of).
    pub fn update_from<T: Versioned>(entity: &mut T, from: &'static str) -> Write {
        let mut w = Write::update(entity);
        if let Write::Update { expect, .. } = &mut w {
            expect.status = Some(from);
        }
        w
    }

    /// The entity written.
    pub fn entity(&self) -> &Entity {
        match self {
            Write::Insert(e) | Write::Update { entity: e, .. } => e,
        }
    }
}

/// An atomic unit of change: writes, the events they emit and the audit records they need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    /// Entity writes, applied in order.
    pub writes: Vec<Write>,
    /// Events to append.
    pub events: Vec<Event>,
    /// Audit records to append.
    pub audits: Vec<AuditLog>,
}

impl Transition {
    /// An empty transition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write.
    pub fn write(mut self, w: Write) -> Self {
        self.writes.push(w);
        self
    }

    /// Adds an event.
    pub fn event(mut self, e: Event) -> Self {
        self.events.push(e);
        self
    }

    /// Adds an audit record.
    pub fn audit(mut self, a: AuditLog) -> Self {
        self.audits.push(a);
        self
    }

    /// Checks what every backend would refuse anyway, before any I/O: an empty transition,
    /// missing ids, an update whose revision is not `expect.revision + 1`, or one entity
    /// written twice.
    pub fn check(&self) -> StoreResult<()> {
        if self.writes.is_empty() && self.events.is_empty() && self.audits.is_empty() {
            return Err(StoreError::Invalid("empty transition".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for w in &self.writes {
            let e = w.entity();
            if e.id().is_empty() {
                return Err(StoreError::Invalid(format!("{} without an id", e.kind())));
            }
            if !seen.insert((e.kind(), e.id())) {
                return Err(StoreError::Invalid(format!(
                    "{} {} written twice in one transition",
                    e.kind(),
                    e.id()
                )));
            }
            match w {
                Write::Insert(e) if e.revision() != 1 => {
                    return Err(StoreError::Invalid(format!(
                        "insert of {} {} must carry revision 1, not {}",
                        e.kind(),
                        e.id(),
                        e.revision()
                    )))
                }
                Write::Update { entity, expect } if entity.revision() != expect.revision + 1 => {
                    return Err(StoreError::Invalid(format!(
                        "update of {} {} must carry revision {}, not {}",
                        entity.kind(),
                        entity.id(),
                        expect.revision + 1,
                        entity.revision()
                    )))
                }
                _ => {}
            }
        }
        if let Some(e) = self.events.iter().find(|e| e.event_id.is_empty()) {
            return Err(StoreError::Invalid(format!(
                "event {} without an event_id",
                e.event_type
            )));
        }
        if self.audits.iter().any(|a| a.audit_id.is_empty()) {
            return Err(StoreError::Invalid(
                "audit record without an audit_id".into(),
            ));
        }
        Ok(())
    }
}

/// A page request: at most `limit` items after the opaque `after` cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items wanted, 1..=[`Page::MAX_LIMIT`].
    pub limit: u32,
    /// Cursor returned as `next` by the previous page.
    pub after: Option<String>,
}

impl Page {
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 1000;

    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        Page { limit, after: None }
    }

    /// Checks the limit.
    pub fn check(&self) -> StoreResult<()> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(StoreError::Invalid(format!(
                "page limit {} out of range (1..={})",
                self.limit,
                Self::MAX_LIMIT
            )));
        }
        Ok(())
    }
}

impl Default for Page {
    fn default() -> Self {
        Page::first(100)
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// Task filter. Results are ordered by priority (high first), then `created_at`, then id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    /// In this pipeline.
    pub pipeline_id: Option<String>,
    /// At this stage (needs `pipeline_id`).
    pub stage: Option<u32>,
    /// In any of these states (empty: any).
    pub statuses: Vec<TaskStatus>,
    /// Held by this agent.
    pub assigned_agent_id: Option<String>,
    /// Of this type.
    pub task_type: Option<String>,
    /// Include soft-deleted tasks.
    pub include_deleted: bool,
}

/// Pipeline filter. Results are ordered newest first (`created_at`, then id, descending).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineQuery {
    /// In any of these states (empty: any).
    pub statuses: Vec<PipelineStatus>,
    /// Submitted by.
    pub created_by: Option<String>,
    /// Include soft-deleted pipelines.
    pub include_deleted: bool,
}

/// Agent filter. Results are ordered by `agent_id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentQuery {
    /// Of this type.
    pub agent_type: Option<AgentType>,
    /// In any of these states (empty: any).
    pub statuses: Vec<AgentStatus>,
    /// Having this capability.
    pub capability: Option<String>,
    /// Include soft-deleted agents.
    pub include_deleted: bool,
}

/// Event filter. Results are ordered oldest first (`created_at`, then id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Of this type.
    pub event_type: Option<String>,
    /// About this target id.
    pub target_id: Option<String>,
    /// In this pipeline (`context.pipeline_id`).
    pub pipeline_id: Option<String>,
}

/// Audit filter. Results are ordered oldest first (`timestamp`, then id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Of this resource type.
    pub resource_type: Option<ResourceType>,
    /// About this resource.
    pub resource_id: Option<String>,
    /// By this actor.
    pub actor_id: Option<String>,
    /// This action.
    pub action: Option<AuditAction>,
}

/// Metric filter. Results are ordered by `window_start`, then id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricQuery {
    /// Named.
    pub metric_name: Option<String>,
    /// Windows starting at or after.
    pub since: Option<Timestamp>,
}

/// The store: the source of truth for agents, tasks, pipelines, events, audit logs and
/// metrics. Implementations live in the `mcpd` crate (embedded SQLite, MongoDB) and all pass
/// one conformance suite.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs (`embedded`, `mongodb`).
    fn backend(&self) -> &'static str;

    /// Checks the backend answers (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Applies one transition atomically: every write's precondition holds and everything is
    /// written, or nothing is and the first failure is returned.
    async fn apply(&self, tx: Transition) -> StoreResult<()>;

    /// Applies independent transitions, each atomically, committing them together where the
    /// backend can (group commit). One result per transition, in order.
    async fn apply_batch(&self, txs: Vec<Transition>) -> Vec<StoreResult<()>> {
        let mut out = Vec::with_capacity(txs.len());
        for tx in txs {
            out.push(self.apply(tx).await);
        }
        out
    }

    /// An agent by id (soft-deleted ones included).
    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>>;
    /// A task by id (soft-deleted ones included).
    async fn get_task(&self, task_id: &str) -> StoreResult<Option<Task>>;
    /// A pipeline by id (soft-deleted ones included).
    async fn get_pipeline(&self, pipeline_id: &str) -> StoreResult<Option<Pipeline>>;

    /// Agents matching `q`.
    async fn query_agents(&self, q: &AgentQuery, page: &Page) -> StoreResult<Paged<Agent>>;
    /// Tasks matching `q`.
    async fn query_tasks(&self, q: &TaskQuery, page: &Page) -> StoreResult<Paged<Task>>;
    /// Pipelines matching `q`.
    async fn query_pipelines(&self, q: &PipelineQuery, page: &Page)
        -> StoreResult<Paged<Pipeline>>;
    /// Events matching `q`.
    async fn query_events(&self, q: &EventQuery, page: &Page) -> StoreResult<Paged<Event>>;
    /// Audit records matching `q`.
    async fn query_audit_logs(&self, q: &AuditQuery, page: &Page) -> StoreResult<Paged<AuditLog>>;

    /// Writes metric windows; a `metric_id` already stored is replaced (re-aggregation).
    async fn put_metrics(&self, metrics: Vec<Metric>) -> StoreResult<()>;
    /// Metric windows matching `q`.
    async fn query_metrics(&self, q: &MetricQuery, page: &Page) -> StoreResult<Paged<Metric>>;

    /// The highest task `lease_token` ever stored: the fencing floor a rebuilt broker must
    /// start above.
    async fn max_lease_token(&self) -> StoreResult<u64>;
}

/// Pages through a query to the end, for recovery scans. `fetch` gets each page request.
pub async fn collect_all<T, F, Fut>(page_size: u32, mut fetch: F) -> StoreResult<Vec<T>>
where
    F: FnMut(Page) -> Fut,
    Fut: std::future::Future<Output = StoreResult<Paged<T>>>,
{
    let mut out = Vec::new();
    let mut page = Page::first(page_size);
    loop {
        let Paged { items, next } = fetch(page.clone()).await?;
        out.extend(items);
        match next {
            Some(cursor) => page.after = Some(cursor),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_bumps_the_callers_copy_and_expects_the_read_revision() {
        let mut t = Task {
            task_id: "t1".into(),
            revision: 4,
            ..Default::default()
        };
        let w = Write::update_from(&mut t, "pending");
        assert_eq!(t.revision, 5);
        match &w {
            Write::Update { entity, expect } => {
                assert_eq!(entity.revision(), 5);
                assert_eq!(
                    expect,
                    &Expect {
                        revision: 4,
                        status: Some("pending")
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        Transition::new().write(w).check().unwrap();
    }

    #[test]
    fn check_refuses_what_no_backend_would_take() {
        assert!(Transition::new().check().is_err());
        let mut t = Task {
            task_id: "t1".into(),
            ..Default::default()
        };
        let ins = Write::insert(&mut t);
        let twice = Transition::new().write(ins.clone()).write(ins);
        assert!(twice
            .check()
            .unwrap_err()
            .to_string()
            .contains("written twice"));
        let mut nameless = Task::default();
        let e = Transition::new()
            .write(Write::insert(&mut nameless))
            .check();
        assert!(e.unwrap_err().to_string().contains("without an id"));
        let forged = Write::Update {
            entity: t.clone().into(),
            expect: Expect {
                revision: 7,
                status: None,
            },
        };
        let e = Transition::new().write(forged).check().unwrap_err();
        assert!(e.to_string().contains("must carry revision 8"), "{e}");
    }
}
