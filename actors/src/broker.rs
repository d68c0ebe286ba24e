//! The broker port: the dispatch fast path.
//!
//! Queues, leases, locks, sessions, rate limits and status caches. Nothing here is the truth:
//! everything can be rebuilt from the [`Store`] ([`Broker::rebuild_from`]), so a flushed Redis
//! loses no task.
//!
//! # Key layout
//! The seed's Redis keys, under a configurable prefix (`mcpd:` by default). Every backend keeps
//! the same logical layout so the conformance suite and operators see one model:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `tasks:pending:{priority}:{task_type}` | sorted set | queued tasks; score = deadline (ms, or [`NO_DEADLINE`]), member = `{created_at ms, 13 digits}:{task_id}` so ties break by age, then id |
//! | `tasks:running` | set | task ids an agent has started |
//! | `tasks:assigned:{agent_id}` | set | task ids leased to the agent |
//! | `tasks:status:{task_id}` | string (JSON) | status cache, TTL 3600 s |
//! | `agents:status:{agent_id}` | string (JSON) | [`AgentPresence`], TTL 300 s |
//! | `agents:capabilities:{capability}` | sorted set | agent id → performance score |
//! | `agents:active` | set | agent ids currently connected |
//! | `pipeline:{id}:status`, `pipeline:{id}:stage:{n}` | string (JSON) | progress caches, TTL 600 s |
//! | `rate_limit:{endpoint}:{actor}` | string (JSON) | fixed-window counter, TTL = window |
//! | `ws:session:{session_id}` | string (JSON) | [`Session`], TTL 1800 s |
//! | `lock:task:{task_id}` | string (JSON) | the task's lease: owner, fencing token, expiry |
//! | `lock:pipeline:{id}`, `lock:pipeline:{id}:stage:{n}` | string (JSON) | coordination locks |
//! | `fence:counter` | integer | extension: the fencing-token counter shared by every lock |
//! | `leases:expiry` | sorted set | extension: task id → lease expiry (ms), so the reaper finds lapsed leases without scanning |
//! | `events:queued` | pub/sub channel | extension: every enqueue and requeue announces its task types (a JSON list), so a fetch waiting on any instance is answered at once |
//! | `meta:epoch` | string | extension: set by every rebuild; its absence tells a running mcpd that the broker lost its data |
//!
//! # Time
//! Lease and lock expiry is judged against the broker's injected [`crate::clock::Clock`]
//! (the value records `expires_at`); Redis key TTLs only collect garbage. Instances sharing a
//! Redis must therefore keep their clocks in sync (NTP), as with any lease system.
//!
//! # Fencing
//! Every grant of a lease or lock takes the next value of one counter. Tokens only grow, also
//! across a broker that lost its data: [`Broker::rebuild_from`] raises the counter above the
//! highest token the store has recorded.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{Task, TaskStatus, Timestamp};
use crate::store::{collect_all, Store, StoreError, TaskQuery};

/// Score of a queued task that has no deadline: after every real deadline (2^53 − 1 ms, the
/// largest integer a sorted-set score holds exactly).
pub const NO_DEADLINE: i64 = (1 << 53) - 1;

/// Seed TTL of `tasks:status:{id}`.
pub const TASK_STATUS_TTL: Duration = Duration::from_secs(3600);
/// Seed TTL of `agents:status:{id}`.
pub const AGENT_STATUS_TTL: Duration = Duration::from_secs(300);
/// Seed TTL of the pipeline progress caches.
pub const PIPELINE_CACHE_TTL: Duration = Duration::from_secs(600);
/// Seed TTL of `ws:session:{id}`.
pub const SESSION_TTL: Duration = Duration::from_secs(1800);

/// Errors of the broker layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerError {
    /// The caller does not hold the lease (expired, superseded or never granted).
    #[error("lease on task {task_id} lost: {reason}")]
    LeaseLost {
        /// The task.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// The caller does not hold the lock.
    #[error("lock {key} not held: {reason}")]
    LockLost {
        /// The lock key (without prefix).
        key: String,
        /// Why.
        reason: String,
    },
    /// The request is malformed.
    #[error("invalid broker request: {0}")]
    Invalid(String),
    /// The backend cannot be reached; retrying may help.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("broker timed out: {0}")]
    Timeout(String),
    /// A stored value could not be decoded.
    #[error("corrupt broker value at {key}: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// Anything else the backend reported.
    #[error("broker backend error: {0}")]
    Backend(String),
    /// The store failed during a rebuild.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            BrokerError::Unavailable(_) | BrokerError::Timeout(_) => true,
            BrokerError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Result alias of the broker layer.
pub type BrokerResult<T> = Result<T, BrokerError>;

/// A queued task, as the broker orders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The task.
    pub task_id: String,
    /// Routes it to agents with this capability.
    pub task_type: String,
    /// 1–10.
    pub priority: u8,
    /// Earlier deadlines first.
    pub deadline: Option<Timestamp>,
    /// Then older tasks first.
    pub created_at: Timestamp,
}

impl QueueEntry {
    /// The entry of a task.
    pub fn of(task: &Task) -> Self {
        QueueEntry {
            task_id: task.task_id.clone(),
            task_type: task.task_type.clone(),
            priority: task.priority,
            deadline: task.deadline,
            created_at: task.created_at,
        }
    }

    /// Sorted-set score: the deadline in ms, or [`NO_DEADLINE`].
    pub fn score(&self) -> i64 {
        self.deadline
            .map(|d| d.millis().clamp(0, NO_DEADLINE))
            .unwrap_or(NO_DEADLINE)
    }

    /// Sorted-set member: `{created_at ms, 13 digits}:{task_id}`.
    pub fn member(&self) -> String {
        format!("{:013}:{}", self.created_at.millis().max(0), self.task_id)
    }

    /// Task id of a member.
    pub fn task_id_of(member: &str) -> &str {
        member.split_once(':').map(|(_, id)| id).unwrap_or(member)
    }

    /// Checks the fields keys are built from.
    pub fn check(&self) -> BrokerResult<()> {
        if self.task_id.is_empty() || self.task_type.is_empty() {
            return Err(BrokerError::Invalid(format!(
                "queue entry needs a task_id and a task_type: {self:?}"
            )));
        }
        if !(1..=10).contains(&self.priority) {
            return Err(BrokerError::Invalid(format!(
                "task {}: priority {} out of range (1..=10)",
                self.task_id, self.priority
            )));
        }
        Ok(())
    }
}

/// An agent asking for work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claimant, who becomes the lease owner.
    pub agent_id: String,
    /// Task types it may run.
    pub capabilities: Vec<String>,
    /// Lease length.
    pub lease_ttl: Duration,
}

/// A lease on a task: owner, fencing token and expiry. The value of `lock:task:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The task.
    pub task_id: String,
    /// The owner.
    pub agent_id: String,
    /// Fencing token; larger than every earlier grant.
    pub token: u64,
    /// When it was granted.
    pub locked_at: Timestamp,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// A coordination lock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// `lock:task:{id}` (task leases use [`Broker::claim`] instead).
    Task(String),
    /// `lock:pipeline:{id}`: the instance coordinating a pipeline.
    Pipeline(String),
    /// `lock:pipeline:{id}:stage:{n}`.
    PipelineStage(String, u32),
}

impl LockKey {
    /// The key without prefix.
    pub fn key(&self) -> String {
        match self {
            LockKey::Task(id) => format!("lock:task:{id}"),
            LockKey::Pipeline(id) => format!("lock:pipeline:{id}"),
            LockKey::PipelineStage(id, n) => format!("lock:pipeline:{id}:stage:{n}"),
        }
    }
}

/// A held lock: owner and fencing token. The value of a `lock:…` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The owner (an instance or agent id).
    pub owner: String,
    /// Fencing token.
    pub token: u64,
    /// When it was taken.
    pub locked_at: Timestamp,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// An agent connection's session (`ws:session:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The agent.
    pub agent_id: String,
    /// When it connected.
    pub connected_at: Timestamp,
    /// Last frame received.
    pub last_activity: Timestamp,
    /// Permissions granted.
    pub permissions: Vec<String>,
}

/// A rate-limit verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateDecision {
    /// Whether this request is within the limit.
    pub allowed: bool,
    /// Requests counted in the window, this one included.
    pub count: u32,
    /// The limit.
    pub limit: u32,
    /// When the window ends.
    pub reset_at: Timestamp,
}

/// A status cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// `tasks:status:{id}`.
    TaskStatus(String),
    /// `pipeline:{id}:status`.
    PipelineStatus(String),
    /// `pipeline:{id}:stage:{n}`.
    PipelineStage(String, u32),
}

impl CacheKey {
    /// The key without prefix.
    pub fn key(&self) -> String {
        match self {
            CacheKey::TaskStatus(id) => format!("tasks:status:{id}"),
            CacheKey::PipelineStatus(id) => format!("pipeline:{id}:status"),
            CacheKey::PipelineStage(id, n) => format!("pipeline:{id}:stage:{n}"),
        }
    }

    /// The seed's TTL for this entry.
    pub fn ttl(&self) -> Duration {
        match self {
            CacheKey::TaskStatus(_) => TASK_STATUS_TTL,
            CacheKey::PipelineStatus(_) | CacheKey::PipelineStage(..) => PIPELINE_CACHE_TTL,
        }
    }
}

/// An agent's live presence (`agents:status:{id}`), published on connect and heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// The agent.
    #[serde(skip)]
    pub agent_id: String,
    /// Its status string.
    pub status: String,
    /// Last heartbeat.
    pub last_heartbeat: Timestamp,
    /// Tasks it holds.
    pub current_tasks: u32,
    /// 0.0–1.0, the score in `agents:capabilities:{cap}`.
    pub performance_score: f64,
    /// What it can run.
    pub capabilities: Vec<String>,
    /// Its endpoint.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub endpoint_url: Option<String>,
    /// Its version.
    pub version: String,
}

/// What [`Broker::rebuild_from`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Tasks put back in the queues.
    pub queued: usize,
    /// Live leases restored from the store.
    pub leases_restored: usize,
    /// Leases already lapsed, left for the reaper.
    pub leases_lapsed: usize,
    /// The fencing floor the counter now stands above.
    pub fence_floor: u64,
}

/// The broker. Implementations live in the `mcpd` crate (in-process, Redis) and all pass one
/// conformance suite.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Backend name for logs (`memory`, `redis`).
    fn backend(&self) -> &'static str;

    /// Checks the backend answers (readiness).
    async fn ping(&self) -> BrokerResult<()>;

    // --- queues and leases -------------------------------------------------------------

    /// Queues tasks (one round trip). Queuing a queued task again changes nothing.
    async fn enqueue(&self, entries: &[QueueEntry]) -> BrokerResult<()>;

    /// Announcements of queued work: the task types of every enqueue and requeue made through
    /// this broker by any instance sharing it. Best effort — an announcement may be missed
    /// (a reconnect, a lagging receiver) — so waiters also re-check now and then.
    async fn watch_queued(&self) -> BrokerResult<tokio::sync::broadcast::Receiver<Vec<String>>>;

    /// Removes a queued task (cancel). `true` when it was queued.
    async fn dequeue(&self, entry: &QueueEntry) -> BrokerResult<bool>;

    /// Atomically takes the best task the claimant may run — highest priority, then earliest
    /// deadline, then oldest — and grants it a lease with a fresh fencing token. One round
    /// trip; O(log n) per capability and priority, never a scan. Tasks whose lease is still
    /// live are skipped. `None` when nothing matches.
    async fn claim(&self, req: &ClaimRequest) -> BrokerResult<Option<Lease>>;

    /// Marks a leased task as running (`tasks:running`). Owner-checked.
    async fn start(&self, lease: &Lease) -> BrokerResult<()>;

    /// Extends a live lease by `ttl` from now. Owner- and token-checked; a lapsed or
    /// superseded lease is [`BrokerError::LeaseLost`].
    async fn renew(&self, lease: &Lease, ttl: Duration) -> BrokerResult<Lease>;

    /// Ends a live lease because its task finished: drops the lock and the task's running and
    /// assigned memberships. Owner- and token-checked.
    async fn finish(&self, lease: &Lease) -> BrokerResult<()>;

    /// Puts a task back in its queue. With `lease`, first drops that lease (or any older one)
    /// but never a newer one. Idempotent.
    async fn requeue(&self, entry: &QueueEntry, lease: Option<&Lease>) -> BrokerResult<()>;

    /// Drops a lease — lapsed or live — without queuing the task: the task timed out, was
    /// cancelled, or its lease was found stale. Drops `lease` or an older one, never a newer
    /// one; `true` when something was dropped. Idempotent.
    async fn revoke(&self, lease: &Lease) -> BrokerResult<bool>;

    /// The task's current lease, live or lapsed-but-unreaped.
    async fn lease(&self, task_id: &str) -> BrokerResult<Option<Lease>>;

    /// Up to `limit` leases that lapsed by now, oldest expiry first (bounded reaper batch).
    async fn lapsed_leases(&self, limit: usize) -> BrokerResult<Vec<Lease>>;

    /// Task ids leased to an agent.
    async fn assigned_tasks(&self, agent_id: &str) -> BrokerResult<Vec<String>>;

    /// Task ids marked running.
    async fn running_tasks(&self) -> BrokerResult<Vec<String>>;

    /// Tasks queued for `task_type`, over every priority.
    async fn queue_len(&self, task_type: &str) -> BrokerResult<u64>;

    /// Re-installs a lease recorded in the store (recovery). Does nothing if a lease with the
    /// same or a newer token exists.
    async fn restore_lease(&self, lease: &Lease, running: bool) -> BrokerResult<()>;

    /// Raises the fencing counter to at least `floor`; returns the counter's value.
    async fn raise_fence_floor(&self, floor: u64) -> BrokerResult<u64>;

    /// The broker's epoch marker: set by [`Broker::rebuild_from`], gone when the broker lost
    /// its data (a flushed or replaced Redis). No TTL.
    async fn epoch(&self) -> BrokerResult<Option<String>>;

    /// Sets the epoch marker.
    async fn set_epoch(&self, epoch: &str) -> BrokerResult<()>;

    // --- locks -----------------------------------------------------------------------------

    /// Takes a lock if it is free or lapsed. `None` when someone else holds it.
    async fn acquire_lock(
        &self,
        key: &LockKey,
        owner: &str,
        ttl: Duration,
    ) -> BrokerResult<Option<Fence>>;

    /// Extends a held lock by `ttl` from now; owner- and token-checked, atomically.
    async fn renew_lock(&self, key: &LockKey, fence: &Fence, ttl: Duration) -> BrokerResult<Fence>;

    /// Releases a held lock; owner- and token-checked, atomically.
    async fn release_lock(&self, key: &LockKey, fence: &Fence) -> BrokerResult<()>;

    // --- rate limits, sessions, caches -------------------------------------------------------

    /// Counts one request of `actor` at `endpoint` in a fixed window.
    async fn rate_limit(
        &self,
        endpoint: &str,
        actor: &str,
        limit: u32,
        window: Duration,
    ) -> BrokerResult<RateDecision>;

    /// Stores a session for `ttl`.
    async fn put_session(
        &self,
        session_id: &str,
        session: &Session,
        ttl: Duration,
    ) -> BrokerResult<()>;
    /// A live session.
    async fn get_session(&self, session_id: &str) -> BrokerResult<Option<Session>>;
    /// Ends a session.
    async fn delete_session(&self, session_id: &str) -> BrokerResult<()>;

    /// Caches a status document under the key's seed TTL.
    async fn put_cache(&self, key: &CacheKey, value: &serde_json::Value) -> BrokerResult<()>;
    /// A cached status document.
    async fn get_cache(&self, key: &CacheKey) -> BrokerResult<Option<serde_json::Value>>;

    /// Publishes an agent's presence: status cache, capability scores, active set.
    async fn publish_agent(&self, presence: &AgentPresence) -> BrokerResult<()>;
    /// Withdraws an agent from the presence structures.
    async fn withdraw_agent(&self, agent_id: &str, capabilities: &[String]) -> BrokerResult<()>;
    /// An agent's presence, if published and not expired.
    async fn agent_presence(&self, agent_id: &str) -> BrokerResult<Option<AgentPresence>>;
    /// Active agent ids.
    async fn active_agents(&self) -> BrokerResult<Vec<String>>;
    /// Agents with a capability, best score first.
    async fn agents_with_capability(
        &self,
        capability: &str,
        limit: usize,
    ) -> BrokerResult<Vec<(String, f64)>>;

    // --- maintenance -------------------------------------------------------------------------

    /// Deletes everything under this broker's prefix; returns how many keys went. For tests and
    /// for an operator rebuilding from the store.
    async fn purge(&self) -> BrokerResult<u64>;

    /// Repopulates the broker from the store after it lost its data (or at start): raises the
    /// fencing counter above every token the store has recorded, re-queues every pending task
    /// (except those of paused pipelines) and restores every recorded lease of assigned and
    /// running tasks. Idempotent; safe
    /// while other instances run (queued and leased tasks are left as they are).
    async fn rebuild_from(&self, store: &dyn Store, now: Timestamp) -> BrokerResult<RebuildReport> {
        let mut report = RebuildReport {
            fence_floor: store.max_lease_token().await?,
            ..Default::default()
        };
        self.raise_fence_floor(report.fence_floor).await?;

        let statuses = vec![
            TaskStatus::Pending,
            TaskStatus::Assigned,
            TaskStatus::Running,
        ];
        let query = TaskQuery {
            statuses,
            ..Default::default()
        };
        let tasks = collect_all(500, |page| {
            let query = &query;
            async move { store.query_tasks(query, &page).await }
        })
        .await?;

        // Pending tasks of paused pipelines stay out of the queues until the pipeline resumes.
        let mut paused = std::collections::HashMap::new();
        for task in tasks.iter().filter(|t| t.status == TaskStatus::Pending) {
            if !paused.contains_key(&task.pipeline_id) {
                let is_paused = store
                    .get_pipeline(&task.pipeline_id)
                    .await?
                    .is_some_and(|p| p.status == crate::model::PipelineStatus::Paused);
                paused.insert(task.pipeline_id.clone(), is_paused);
            }
        }
        let mut pending = Vec::new();
        for task in &tasks {
            if task.status == TaskStatus::Pending {
                if !paused.get(&task.pipeline_id).copied().unwrap_or(false) {
                    pending.push(QueueEntry::of(task));
                }
                continue;
            }
            let (Some(agent_id), Some(expires_at)) =
                (&task.assigned_agent_id, task.lease_expires_at)
            else {
                // A leased task with no recorded lease: queue it again (at-least-once).
                pending.push(QueueEntry::of(task));
                continue;
            };
            let lease = Lease {
                task_id: task.task_id.clone(),
                agent_id: agent_id.clone(),
                token: task.lease_token,
                locked_at: task.assigned_at.unwrap_or(task.updated_at),
                expires_at,
            };
            // Lapsed leases are restored too: the reaper then finds them and requeues the task
            // through the store, with an assignment_history entry and a retry count.
            self.restore_lease(&lease, task.status == TaskStatus::Running)
                .await?;
            if expires_at > now {
                report.leases_restored += 1;
            } else {
                report.leases_lapsed += 1;
            }
        }
        for chunk in pending.chunks(500) {
            self.enqueue(chunk).await?;
        }
        report.queued = pending.len();
        self.set_epoch(&crate::model::new_id("epoch")).await?;
        Ok(report)
    }
}
