//! The in-process broker: every structure of the broker key layout (see the module doc of
//! [`mcpd_actors::broker`]) held in this process, for a single instance and for tests.
//!
//! # Layout
//! One `State` mirrors the Redis keys one to one:
//! - `tasks:pending:{priority}:{task_type}` → per task type, ten ordered sets of
//!   `(score, member)` (index = priority − 1), so a claim reads the first element of each
//!   capability's set per priority: O(log n) per (priority, capability), never a scan;
//! - `lock:task:{id}` → the lease map; `leases:expiry` → an ordered set of
//!   `(expires ms, task id)` for the reaper; `fence:counter` → one `u64`;
//! - `tasks:running`, `tasks:assigned:{agent}`, `lock:pipeline:…`, `ws:session:…`, the status
//!   caches, `agents:status:…`, `agents:capabilities:…`, `agents:active`, `rate_limit:…`.
//!
//! # Concurrency
//! One `parking_lot::Mutex` over the whole state. Every operation is short and synchronous
//! (no `.await` while the lock is held), so contention costs less than finer locks would, and
//! multi-key atomicity — a claim pops a queue, writes a lease, indexes its expiry and bumps the
//! counter — comes free, as a Lua script gives it in Redis.
//!
//! # Time
//! Leases, locks, sessions, caches, presence and rate windows are judged against the injected
//! clock. Expired sessions, caches and presence are dropped lazily when read; lapsed leases
//! stay until requeued or replaced, as the reaper needs to see them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use mcpd_actors::broker::{
    AgentPresence, Broker, BrokerError, BrokerResult, CacheKey, ClaimRequest, Fence, Lease,
    LockKey, QueueEntry, RateDecision, Session, AGENT_STATUS_TTL,
};
use mcpd_actors::clock::SharedClock;
use mcpd_actors::model::Timestamp;

/// The ten priority queues of one task type (`tasks:pending:{p}:{type}`, index `p - 1`).
type Queues = [BTreeSet<(i64, String)>; 10];

/// Everything the broker holds. See the module doc for the key each field stands for.
#[derive(Debug, Default)]
struct State {
    pending: HashMap<String, Queues>,
    running: HashSet<String>,
    assigned: HashMap<String, BTreeSet<String>>,
    leases: HashMap<String, Lease>,
    lease_expiry: BTreeSet<(i64, String)>,
    fence: u64,
    locks: HashMap<String, Fence>,
    sessions: HashMap<String, (Session, Timestamp)>,
    caches: HashMap<String, (serde_json::Value, Timestamp)>,
    presence: HashMap<String, (AgentPresence, Timestamp)>,
    capabilities: HashMap<String, HashMap<String, f64>>,
    active: BTreeSet<String>,
    rate: HashMap<String, (u32, Timestamp)>,
    epoch: Option<String>,
    /// Writes of expiring entries since the last sweep.
    writes: u32,
}

/// Writes of expiring entries between two sweeps of expired ones.
const SWEEP_EVERY: u32 = 1024;

/// Announcements buffered per watcher before the oldest are dropped (a lagging watcher
/// re-checks everything).
const ANNOUNCEMENTS: usize = 1024;

/// The in-process [`Broker`].
pub struct MemoryBroker {
    clock: SharedClock,
    state: Mutex<State>,
    queued: tokio::sync::broadcast::Sender<Vec<String>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// An empty broker judging time by `clock`.
    pub fn new(clock: SharedClock) -> Self {
        MemoryBroker {
            clock,
            state: Mutex::new(State::default()),
            queued: tokio::sync::broadcast::channel(ANNOUNCEMENTS).0,
        }
    }

    /// Tells watchers which task types were queued (nobody watching is fine).
    fn announce(&self, entries: &[QueueEntry]) {
        let mut types: Vec<String> = entries.iter().map(|e| e.task_type.clone()).collect();
        types.sort();
        types.dedup();
        if !types.is_empty() {
            let _ = self.queued.send(types);
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

fn lease_lost(task_id: &str, reason: &str) -> BrokerError {
    BrokerError::LeaseLost {
        task_id: task_id.to_string(),
        reason: reason.to_string(),
    }
}

fn lock_lost(key: &LockKey, reason: &str) -> BrokerError {
    BrokerError::LockLost {
        key: key.key(),
        reason: reason.to_string(),
    }
}

fn check_ttl(ttl: Duration, what: &str) -> BrokerResult<()> {
    if ttl.is_zero() {
        return Err(BrokerError::Invalid(format!(
            "{what}: ttl must be positive"
        )));
    }
    Ok(())
}

impl State {
    fn next_token(&mut self) -> u64 {
        self.fence += 1;
        self.fence
    }

    fn enqueue(&mut self, e: &QueueEntry) {
        let queues = self.pending.entry(e.task_type.clone()).or_default();
        queues[usize::from(e.priority - 1)].insert((e.score(), e.member()));
    }

    fn dequeue(&mut self, e: &QueueEntry) -> bool {
        let Some(queues) = self.pending.get_mut(&e.task_type) else {
            return false;
        };
        let removed = queues[usize::from(e.priority - 1)].remove(&(e.score(), e.member()));
        if queues.iter().all(BTreeSet::is_empty) {
            self.pending.remove(&e.task_type);
        }
        removed
    }

    /// Pops the best queued entry at `priority` over `caps`: the smallest `(score, member)`
    /// among the first elements of each capability's set.
    fn pop_best(&mut self, caps: &[&str], priority: u8) -> Option<(String, String)> {
        let idx = usize::from(priority - 1);
        let mut best: Option<(&(i64, String), &str)> = None;
        for cap in caps {
            let Some(first) = self.pending.get(*cap).and_then(|q| q[idx].first()) else {
                continue;
            };
            if best.is_none_or(|(b, _)| first < b) {
                best = Some((first, cap));
            }
        }
        let (key, cap) = best.map(|(k, c)| (k.clone(), c.to_string()))?;
        if let Some(queues) = self.pending.get_mut(&cap) {
            queues[idx].remove(&key);
            if queues.iter().all(BTreeSet::is_empty) {
                self.pending.remove(&cap);
            }
        }
        Some((cap, QueueEntry::task_id_of(&key.1).to_string()))
    }

    fn live_lease(&self, task_id: &str, now: Timestamp) -> Option<&Lease> {
        self.leases.get(task_id).filter(|l| l.expires_at > now)
    }

    /// Removes a task's lease and every membership hanging off it.
    fn drop_lease(&mut self, task_id: &str) -> Option<Lease> {
        let old = self.leases.remove(task_id)?;
        self.lease_expiry
            .remove(&(old.expires_at.millis(), old.task_id.clone()));
        self.unassign(&old.agent_id, task_id);
        self.running.remove(task_id);
        Some(old)
    }

    fn unassign(&mut self, agent_id: &str, task_id: &str) {
        if let Some(set) = self.assigned.get_mut(agent_id) {
            set.remove(task_id);
            if set.is_empty() {
                self.assigned.remove(agent_id);
            }
        }
    }

    fn install_lease(&mut self, lease: Lease, running: bool) {
        self.drop_lease(&lease.task_id);
        self.lease_expiry
            .insert((lease.expires_at.millis(), lease.task_id.clone()));
        self.assigned
            .entry(lease.agent_id.clone())
            .or_default()
            .insert(lease.task_id.clone());
        if running {
            self.running.insert(lease.task_id.clone());
        }
        self.leases.insert(lease.task_id.clone(), lease);
    }

    /// The stored lease if `lease` is it (same owner and token) and it is live.
    fn held(&self, lease: &Lease, now: Timestamp) -> BrokerResult<&Lease> {
        let stored = self
            .leases
            .get(&lease.task_id)
            .ok_or_else(|| lease_lost(&lease.task_id, "no lease"))?;
        if stored.agent_id != lease.agent_id {
            return Err(lease_lost(&lease.task_id, "held by another agent"));
        }
        if stored.token != lease.token {
            return Err(lease_lost(&lease.task_id, "fencing token superseded"));
        }
        if stored.expires_at <= now {
            return Err(lease_lost(&lease.task_id, "lease expired"));
        }
        Ok(stored)
    }

    fn held_lock(&self, key: &LockKey, fence: &Fence) -> BrokerResult<&Fence> {
        let stored = self
            .locks
            .get(&key.key())
            .ok_or_else(|| lock_lost(key, "not held"))?;
        if stored.owner != fence.owner {
            return Err(lock_lost(key, "held by another owner"));
        }
        if stored.token != fence.token {
            return Err(lock_lost(key, "fencing token superseded"));
        }
        Ok(stored)
    }

    /// Counts a write of an expiring entry; every [`SWEEP_EVERY`] writes, drops what Redis
    /// would have expired by now (caches, sessions, presence, rate windows, lapsed locks), so
    /// the maps do not grow with every task, session and client ever seen.
    fn wrote(&mut self, now: Timestamp) {
        self.writes += 1;
        if self.writes < SWEEP_EVERY {
            return;
        }
        self.writes = 0;
        self.caches.retain(|_, (_, exp)| *exp > now);
        self.sessions.retain(|_, (_, exp)| *exp > now);
        self.presence.retain(|_, (_, exp)| *exp > now);
        self.rate.retain(|_, (_, end)| *end > now);
        self.locks.retain(|_, f| f.expires_at > now);
    }

    /// How many Redis keys this state stands for (what `purge` reports).
    fn key_count(&self) -> u64 {
        let queues: usize = self
            .pending
            .values()
            .map(|q| q.iter().filter(|s| !s.is_empty()).count())
            .sum();
        let singles = [
            !self.running.is_empty(),
            !self.lease_expiry.is_empty(),
            self.fence > 0,
            !self.active.is_empty(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        (queues
            + singles
            + self.assigned.len()
            + self.leases.len()
            + self.locks.len()
            + self.sessions.len()
            + self.caches.len()
            + self.presence.len()
            + self.capabilities.len()
            + self.rate.len()) as u64
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> BrokerResult<()> {
        Ok(())
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> BrokerResult<()> {
        // Check all first: a batch goes in whole or not at all.
        entries.iter().try_for_each(QueueEntry::check)?;
        {
            let mut st = self.state.lock();
            for e in entries {
                st.enqueue(e);
            }
        }
        self.announce(entries);
        Ok(())
    }

    async fn watch_queued(&self) -> BrokerResult<tokio::sync::broadcast::Receiver<Vec<String>>> {
        Ok(self.queued.subscribe())
    }

    async fn dequeue(&self, entry: &QueueEntry) -> BrokerResult<bool> {
        entry.check()?;
        Ok(self.state.lock().dequeue(entry))
    }

    async fn claim(&self, req: &ClaimRequest) -> BrokerResult<Option<Lease>> {
        check_ttl(req.lease_ttl, "claim")?;
        let caps: Vec<&str> = {
            let mut seen = HashSet::new();
            req.capabilities
                .iter()
                .map(String::as_str)
                .filter(|c| seen.insert(*c))
                .collect()
        };
        let now = self.now();
        let mut st = self.state.lock();
        for priority in (1..=10u8).rev() {
            while let Some((_, task_id)) = st.pop_best(&caps, priority) {
                // Queued again while leased (a rebuild or requeue racing a claim): the holder
                // keeps it, and the stale entry is dropped.
                if st.live_lease(&task_id, now).is_some() {
                    continue;
                }
                let lease = Lease {
                    task_id,
                    agent_id: req.agent_id.clone(),
                    token: st.next_token(),
                    locked_at: now,
                    expires_at: now.plus(req.lease_ttl),
                };
                st.install_lease(lease.clone(), false);
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    async fn start(&self, lease: &Lease) -> BrokerResult<()> {
        let now = self.now();
        let mut st = self.state.lock();
        st.held(lease, now)?;
        st.running.insert(lease.task_id.clone());
        Ok(())
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> BrokerResult<Lease> {
        check_ttl(ttl, "renew")?;
        let now = self.now();
        let mut st = self.state.lock();
        let old_expiry = st.held(lease, now)?.expires_at;
        let renewed = Lease {
            expires_at: now.plus(ttl),
            ..lease.clone()
        };
        st.lease_expiry
            .remove(&(old_expiry.millis(), lease.task_id.clone()));
        st.lease_expiry
            .insert((renewed.expires_at.millis(), lease.task_id.clone()));
        st.leases.insert(lease.task_id.clone(), renewed.clone());
        Ok(renewed)
    }

    async fn finish(&self, lease: &Lease) -> BrokerResult<()> {
        let now = self.now();
        let mut st = self.state.lock();
        st.held(lease, now)?;
        st.drop_lease(&lease.task_id);
        Ok(())
    }

    async fn requeue(&self, entry: &QueueEntry, lease: Option<&Lease>) -> BrokerResult<()> {
        entry.check()?;
        let mut st = self.state.lock();
        if let Some(l) = lease {
            match st.leases.get(&entry.task_id).map(|s| s.token) {
                // A newer grant exists: the task is someone else's now; queuing it would only
                // leave an entry that claim skips.
                Some(stored) if stored > l.token => return Ok(()),
                Some(_) => {
                    st.drop_lease(&entry.task_id);
                }
                None => {
                    st.unassign(&l.agent_id, &entry.task_id);
                    st.running.remove(&entry.task_id);
                }
            }
        }
        st.enqueue(entry);
        drop(st);
        self.announce(std::slice::from_ref(entry));
        Ok(())
    }

    async fn revoke(&self, lease: &Lease) -> BrokerResult<bool> {
        let mut st = self.state.lock();
        match st.leases.get(&lease.task_id).map(|s| s.token) {
            Some(stored) if stored <= lease.token => Ok(st.drop_lease(&lease.task_id).is_some()),
            Some(_) => Ok(false),
            None => {
                st.unassign(&lease.agent_id, &lease.task_id);
                st.running.remove(&lease.task_id);
                Ok(false)
            }
        }
    }

    async fn lease(&self, task_id: &str) -> BrokerResult<Option<Lease>> {
        Ok(self.state.lock().leases.get(task_id).cloned())
    }

    async fn lapsed_leases(&self, limit: usize) -> BrokerResult<Vec<Lease>> {
        let now = self.now().millis();
        let st = self.state.lock();
        Ok(st
            .lease_expiry
            .iter()
            .take_while(|(exp, _)| *exp <= now)
            .filter_map(|(_, id)| st.leases.get(id).cloned())
            .take(limit)
            .collect())
    }

    async fn assigned_tasks(&self, agent_id: &str) -> BrokerResult<Vec<String>> {
        let st = self.state.lock();
        Ok(st
            .assigned
            .get(agent_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn running_tasks(&self) -> BrokerResult<Vec<String>> {
        let mut ids: Vec<String> = self.state.lock().running.iter().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    async fn queue_len(&self, task_type: &str) -> BrokerResult<u64> {
        let st = self.state.lock();
        Ok(st
            .pending
            .get(task_type)
            .map(|q| q.iter().map(|s| s.len() as u64).sum())
            .unwrap_or(0))
    }

    async fn restore_lease(&self, lease: &Lease, running: bool) -> BrokerResult<()> {
        if lease.task_id.is_empty() || lease.agent_id.is_empty() {
            return Err(BrokerError::Invalid(format!(
                "restore_lease needs a task_id and an agent_id: {lease:?}"
            )));
        }
        let mut st = self.state.lock();
        if st
            .leases
            .get(&lease.task_id)
            .is_some_and(|s| s.token >= lease.token)
        {
            return Ok(());
        }
        // Tokens only grow: never grant again below a token that is in use.
        st.fence = st.fence.max(lease.token);
        st.install_lease(lease.clone(), running);
        Ok(())
    }

    async fn raise_fence_floor(&self, floor: u64) -> BrokerResult<u64> {
        let mut st = self.state.lock();
        st.fence = st.fence.max(floor);
        Ok(st.fence)
    }

    async fn epoch(&self) -> BrokerResult<Option<String>> {
        Ok(self.state.lock().epoch.clone())
    }

    async fn set_epoch(&self, epoch: &str) -> BrokerResult<()> {
        self.state.lock().epoch = Some(epoch.to_string());
        Ok(())
    }

    async fn acquire_lock(
        &self,
        key: &LockKey,
        owner: &str,
        ttl: Duration,
    ) -> BrokerResult<Option<Fence>> {
        check_ttl(ttl, "acquire_lock")?;
        let now = self.now();
        let k = key.key();
        let mut st = self.state.lock();
        if st.locks.get(&k).is_some_and(|f| f.expires_at > now) {
            return Ok(None);
        }
        let fence = Fence {
            owner: owner.to_string(),
            token: st.next_token(),
            locked_at: now,
            expires_at: now.plus(ttl),
        };
        st.locks.insert(k, fence.clone());
        st.wrote(now);
        Ok(Some(fence))
    }

    async fn renew_lock(&self, key: &LockKey, fence: &Fence, ttl: Duration) -> BrokerResult<Fence> {
        check_ttl(ttl, "renew_lock")?;
        let now = self.now();
        let mut st = self.state.lock();
        if st.held_lock(key, fence)?.expires_at <= now {
            return Err(lock_lost(key, "lock expired"));
        }
        let renewed = Fence {
            expires_at: now.plus(ttl),
            ..fence.clone()
        };
        st.locks.insert(key.key(), renewed.clone());
        Ok(renewed)
    }

    async fn release_lock(&self, key: &LockKey, fence: &Fence) -> BrokerResult<()> {
        let now = self.now();
        let mut st = self.state.lock();
        // A lapsed lock is no longer held (as with renew): releasing it is LockLost.
        if st.held_lock(key, fence)?.expires_at <= now {
            return Err(lock_lost(key, "expired"));
        }
        st.locks.remove(&key.key());
        Ok(())
    }

    async fn rate_limit(
        &self,
        endpoint: &str,
        actor: &str,
        limit: u32,
        window: Duration,
    ) -> BrokerResult<RateDecision> {
        check_ttl(window, "rate_limit")?;
        let now = self.now();
        let mut st = self.state.lock();
        st.wrote(now);
        let slot = st
            .rate
            .entry(format!("rate_limit:{endpoint}:{actor}"))
            .or_insert((0, now.plus(window)));
        if slot.1 <= now {
            *slot = (0, now.plus(window));
        }
        slot.0 = slot.0.saturating_add(1);
        Ok(RateDecision {
            allowed: slot.0 <= limit,
            count: slot.0,
            limit,
            reset_at: slot.1,
        })
    }

    async fn put_session(
        &self,
        session_id: &str,
        session: &Session,
        ttl: Duration,
    ) -> BrokerResult<()> {
        check_ttl(ttl, "put_session")?;
        let now = self.now();
        let mut st = self.state.lock();
        st.sessions
            .insert(session_id.to_string(), (session.clone(), now.plus(ttl)));
        st.wrote(now);
        Ok(())
    }

    async fn get_session(&self, session_id: &str) -> BrokerResult<Option<Session>> {
        let now = self.now();
        let mut st = self.state.lock();
        match st.sessions.get(session_id) {
            Some((s, exp)) if *exp > now => Ok(Some(s.clone())),
            Some(_) => {
                st.sessions.remove(session_id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete_session(&self, session_id: &str) -> BrokerResult<()> {
        self.state.lock().sessions.remove(session_id);
        Ok(())
    }

    async fn put_cache(&self, key: &CacheKey, value: &serde_json::Value) -> BrokerResult<()> {
        let now = self.now();
        let mut st = self.state.lock();
        st.caches
            .insert(key.key(), (value.clone(), now.plus(key.ttl())));
        st.wrote(now);
        Ok(())
    }

    async fn get_cache(&self, key: &CacheKey) -> BrokerResult<Option<serde_json::Value>> {
        let now = self.now();
        let k = key.key();
        let mut st = self.state.lock();
        match st.caches.get(&k) {
            Some((v, exp)) if *exp > now => Ok(Some(v.clone())),
            Some(_) => {
                st.caches.remove(&k);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn publish_agent(&self, presence: &AgentPresence) -> BrokerResult<()> {
        if presence.agent_id.is_empty() {
            return Err(BrokerError::Invalid("publish_agent: empty agent_id".into()));
        }
        let now = self.now();
        let expires = now.plus(AGENT_STATUS_TTL);
        let id = presence.agent_id.clone();
        let mut st = self.state.lock();
        st.wrote(now);
        for cap in &presence.capabilities {
            st.capabilities
                .entry(cap.clone())
                .or_default()
                .insert(id.clone(), presence.performance_score);
        }
        st.active.insert(id.clone());
        st.presence.insert(id, (presence.clone(), expires));
        Ok(())
    }

    async fn withdraw_agent(&self, agent_id: &str, capabilities: &[String]) -> BrokerResult<()> {
        let mut st = self.state.lock();
        for cap in capabilities {
            if let Some(ranked) = st.capabilities.get_mut(cap) {
                ranked.remove(agent_id);
                if ranked.is_empty() {
                    st.capabilities.remove(cap);
                }
            }
        }
        st.active.remove(agent_id);
        st.presence.remove(agent_id);
        Ok(())
    }

    async fn agent_presence(&self, agent_id: &str) -> BrokerResult<Option<AgentPresence>> {
        let now = self.now();
        let mut st = self.state.lock();
        match st.presence.get(agent_id) {
            Some((p, exp)) if *exp > now => Ok(Some(p.clone())),
            Some(_) => {
                st.presence.remove(agent_id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn active_agents(&self) -> BrokerResult<Vec<String>> {
        Ok(self.state.lock().active.iter().cloned().collect())
    }

    async fn agents_with_capability(
        &self,
        capability: &str,
        limit: usize,
    ) -> BrokerResult<Vec<(String, f64)>> {
        let st = self.state.lock();
        let Some(ranked) = st.capabilities.get(capability) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(String, f64)> = ranked.iter().map(|(a, s)| (a.clone(), *s)).collect();
        // The same agents a ZREVRANGE with this limit keeps (ties: highest ids), presented as the
        // Redis broker does: best first, ties by id.
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        out.truncate(limit);
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    async fn purge(&self) -> BrokerResult<u64> {
        let mut st = self.state.lock();
        let n = st.key_count();
        *st = State::default();
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
