//! `impl Broker for RedisBroker`: each operation is one command, one pipeline or one script.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis;
use mcpd_actors::model::Timestamp;

use super::error::{corrupt, redis_error};
use super::scripts;
use super::*;

#[async_trait]
impl Broker for RedisBroker {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> BrokerResult<()> {
        let pong: String = self.query("ping", &redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(BrokerError::Backend(format!(
                "ping: unexpected reply {pong:?}"
            )))
        }
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> BrokerResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            entry.check()?;
            pipe.cmd("ZADD")
                .arg(self.keys.pending(entry.priority, &entry.task_type))
                .arg("NX")
                .arg(entry.score())
                .arg(entry.member())
                .ignore();
        }
        // The announcement rides in the same round trip.
        pipe.cmd("PUBLISH")
            .arg(self.keys.queued_channel())
            .arg(announcement(entries))
            .ignore();
        let mut conn = self.conn("enqueue").await?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error("enqueue", e))
    }

    async fn watch_queued(&self) -> BrokerResult<tokio::sync::broadcast::Receiver<Vec<String>>> {
        let rx = self.queued.subscribe();
        self.listen_queued();
        Ok(rx)
    }

    async fn dequeue(&self, entry: &QueueEntry) -> BrokerResult<bool> {
        entry.check()?;
        let removed: i64 = self
            .query(
                "dequeue",
                redis::cmd("ZREM")
                    .arg(self.keys.pending(entry.priority, &entry.task_type))
                    .arg(entry.member()),
            )
            .await?;
        Ok(removed > 0)
    }

    async fn claim(&self, req: &ClaimRequest) -> BrokerResult<Option<Lease>> {
        if req.agent_id.is_empty() {
            return Err(BrokerError::Invalid("claim: agent_id is empty".into()));
        }
        check_ttl("claim", req.lease_ttl)?;
        if req.capabilities.is_empty() {
            return Ok(None);
        }
        let now = self.now();
        let mut inv = scripts::CLAIM.prepare_invoke();
        inv.key(self.keys.fence_counter())
            .key(self.keys.lease_expiry())
            .key(self.keys.assigned(&req.agent_id))
            .key(self.keys.running())
            .arg(self.keys.prefix())
            .arg(&req.agent_id)
            .arg(now.millis())
            .arg(ms(req.lease_ttl))
            .arg(px(GC_GRACE));
        for cap in &req.capabilities {
            inv.arg(cap);
        }
        // Each call drops at most a bounded number of stale queue heads; keep going while it
        // says there may be more behind them.
        let mut reply = self.run("claim", &inv).await?;
        for _ in 0..64 {
            if reply.tag()? != "retry" {
                break;
            }
            reply = self.run("claim", &inv).await?;
        }
        match reply.tag()?.as_str() {
            "none" | "retry" => Ok(None),
            "ok" => Ok(Some(Lease {
                task_id: reply.str(1)?,
                agent_id: req.agent_id.clone(),
                token: reply.token(2)?,
                locked_at: Timestamp::from_millis(reply.int(3)?),
                expires_at: Timestamp::from_millis(reply.int(4)?),
            })),
            other => Err(BrokerError::Backend(format!(
                "claim: unexpected outcome {other}"
            ))),
        }
    }

    async fn start(&self, lease: &Lease) -> BrokerResult<()> {
        check_lease(lease)?;
        let key = self.keys.task_lock(&lease.task_id);
        let mut inv = scripts::START.prepare_invoke();
        inv.key(&key)
            .key(self.keys.running())
            .arg(&lease.agent_id)
            .arg(lease.token)
            .arg(self.now().millis())
            .arg(&lease.task_id);
        let reply = self.run("start", &inv).await?;
        self.lease_outcome("start", &lease.task_id, &key, &reply)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> BrokerResult<Lease> {
        check_lease(lease)?;
        check_ttl("renew", ttl)?;
        let key = self.keys.task_lock(&lease.task_id);
        let mut inv = scripts::RENEW.prepare_invoke();
        inv.key(&key)
            .key(self.keys.lease_expiry())
            .arg(&lease.agent_id)
            .arg(lease.token)
            .arg(self.now().millis())
            .arg(ms(ttl))
            .arg(px(GC_GRACE))
            .arg(&lease.task_id);
        let reply = self.run("renew", &inv).await?;
        self.lease_outcome("renew", &lease.task_id, &key, &reply)?;
        Ok(Lease {
            locked_at: Timestamp::from_millis(reply.int(1)?),
            expires_at: Timestamp::from_millis(reply.int(2)?),
            ..lease.clone()
        })
    }

    async fn finish(&self, lease: &Lease) -> BrokerResult<()> {
        check_lease(lease)?;
        let key = self.keys.task_lock(&lease.task_id);
        let mut inv = scripts::FINISH.prepare_invoke();
        inv.key(&key)
            .key(self.keys.running())
            .key(self.keys.assigned(&lease.agent_id))
            .key(self.keys.lease_expiry())
            .arg(&lease.agent_id)
            .arg(lease.token)
            .arg(self.now().millis())
            .arg(&lease.task_id);
        let reply = self.run("finish", &inv).await?;
        self.lease_outcome("finish", &lease.task_id, &key, &reply)
    }

    async fn requeue(&self, entry: &QueueEntry, lease: Option<&Lease>) -> BrokerResult<()> {
        entry.check()?;
        if let Some(lease) = lease {
            if lease.task_id != entry.task_id {
                return Err(BrokerError::Invalid(format!(
                    "requeue: lease of task {} given for task {}",
                    lease.task_id, entry.task_id
                )));
            }
        }
        let mut inv = scripts::REQUEUE.prepare_invoke();
        inv.key(self.keys.task_lock(&entry.task_id))
            .key(self.keys.running())
            .key(self.keys.lease_expiry())
            .key(self.keys.pending(entry.priority, &entry.task_type))
            .arg(self.keys.prefix())
            .arg(&entry.task_id)
            .arg(lease.map_or(-1, |l| i128::from(l.token)).to_string())
            .arg(lease.map_or("", |l| l.agent_id.as_str()))
            .arg(entry.score())
            .arg(entry.member());
        let reply = self.run("requeue", &inv).await?;
        match reply.tag()?.as_str() {
            "queued" => {
                let _: i64 = self
                    .query(
                        "requeue",
                        redis::cmd("PUBLISH")
                            .arg(self.keys.queued_channel())
                            .arg(announcement(std::slice::from_ref(entry))),
                    )
                    .await?;
                Ok(())
            }
            "newer" => Ok(()),
            other => Err(BrokerError::Backend(format!(
                "requeue: unexpected outcome {other}"
            ))),
        }
    }

    async fn revoke(&self, lease: &Lease) -> BrokerResult<bool> {
        let mut inv = scripts::REVOKE.prepare_invoke();
        inv.key(self.keys.task_lock(&lease.task_id))
            .key(self.keys.running())
            .key(self.keys.lease_expiry())
            .arg(self.keys.prefix())
            .arg(&lease.task_id)
            .arg(lease.token)
            .arg(&lease.agent_id);
        let reply = self.run("revoke", &inv).await?;
        match reply.tag()?.as_str() {
            "dropped" => Ok(reply.int(1)? == 1),
            "newer" => Ok(false),
            other => Err(BrokerError::Backend(format!(
                "revoke: unexpected outcome {other}"
            ))),
        }
    }

    async fn lease(&self, task_id: &str) -> BrokerResult<Option<Lease>> {
        self.get_json("lease", &self.keys.task_lock(task_id)).await
    }

    async fn lapsed_leases(&self, limit: usize) -> BrokerResult<Vec<Lease>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.now();
        let expiry = self.keys.lease_expiry();
        let ids: Vec<String> = self
            .query(
                "lapsed_leases",
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&expiry)
                    .arg("-inf")
                    .arg(now.millis())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let lock_keys: Vec<String> = ids.iter().map(|id| self.keys.task_lock(id)).collect();
        let values: Vec<Option<String>> = self
            .query("lapsed_leases", redis::cmd("MGET").arg(&lock_keys))
            .await?;
        let mut lapsed = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for ((id, key), value) in ids.iter().zip(&lock_keys).zip(values) {
            let Some(raw) = value else {
                // The lock key was collected (or deleted): nothing left to reap here; the
                // store still records the lease, and a rebuild restores it.
                gone.push(id.clone());
                continue;
            };
            let lease: Lease = match serde_json::from_str(&raw) {
                Ok(lease) => lease,
                Err(e) => {
                    // One bad value must not stall the reaper: drop it from the index and go on.
                    tracing::warn!(key = %key, error = %corrupt(key, e), "lapsed_leases: skipping");
                    gone.push(id.clone());
                    continue;
                }
            };
            if lease.expires_at <= now {
                lapsed.push(lease);
            }
        }
        if !gone.is_empty() {
            let _: i64 = self
                .query("lapsed_leases", redis::cmd("ZREM").arg(&expiry).arg(&gone))
                .await?;
        }
        lapsed.sort_by(|a, b| (a.expires_at, &a.task_id).cmp(&(b.expires_at, &b.task_id)));
        Ok(lapsed)
    }

    async fn assigned_tasks(&self, agent_id: &str) -> BrokerResult<Vec<String>> {
        let mut ids: Vec<String> = self
            .query(
                "assigned_tasks",
                redis::cmd("SMEMBERS").arg(self.keys.assigned(agent_id)),
            )
            .await?;
        ids.sort();
        Ok(ids)
    }

    async fn running_tasks(&self) -> BrokerResult<Vec<String>> {
        let mut ids: Vec<String> = self
            .query(
                "running_tasks",
                redis::cmd("SMEMBERS").arg(self.keys.running()),
            )
            .await?;
        ids.sort();
        Ok(ids)
    }

    async fn queue_len(&self, task_type: &str) -> BrokerResult<u64> {
        let mut pipe = redis::pipe();
        for priority in 1..=10u8 {
            pipe.cmd("ZCARD")
                .arg(self.keys.pending(priority, task_type));
        }
        let mut conn = self.conn("queue_len").await?;
        let counts: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("queue_len", e))?;
        Ok(counts.iter().sum())
    }

    async fn restore_lease(&self, lease: &Lease, running: bool) -> BrokerResult<()> {
        check_lease(lease)?;
        let mut inv = scripts::RESTORE_LEASE.prepare_invoke();
        inv.key(self.keys.task_lock(&lease.task_id))
            .key(self.keys.lease_expiry())
            .key(self.keys.assigned(&lease.agent_id))
            .key(self.keys.running())
            .key(self.keys.fence_counter())
            .arg(self.keys.prefix())
            .arg(&lease.task_id)
            .arg(&lease.agent_id)
            .arg(lease.token)
            .arg(lease.locked_at.millis())
            .arg(lease.expires_at.millis())
            .arg(self.now().millis())
            .arg(px(GC_GRACE))
            .arg(if running { "1" } else { "0" });
        let reply = self.run("restore_lease", &inv).await?;
        match reply.tag()?.as_str() {
            "restored" | "kept" => Ok(()),
            other => Err(BrokerError::Backend(format!(
                "restore_lease: unexpected outcome {other}"
            ))),
        }
    }

    async fn raise_fence_floor(&self, floor: u64) -> BrokerResult<u64> {
        let mut inv = scripts::FENCE_FLOOR.prepare_invoke();
        inv.key(self.keys.fence_counter()).arg(floor);
        let mut conn = self.conn("raise_fence_floor").await?;
        inv.invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("raise_fence_floor", e))
    }

    async fn epoch(&self) -> BrokerResult<Option<String>> {
        self.query("epoch", redis::cmd("GET").arg(self.keys.epoch()))
            .await
    }

    async fn set_epoch(&self, epoch: &str) -> BrokerResult<()> {
        self.query(
            "set_epoch",
            redis::cmd("SET").arg(self.keys.epoch()).arg(epoch),
        )
        .await
    }

    async fn acquire_lock(
        &self,
        key: &LockKey,
        owner: &str,
        ttl: Duration,
    ) -> BrokerResult<Option<Fence>> {
        if owner.is_empty() {
            return Err(BrokerError::Invalid("acquire_lock: owner is empty".into()));
        }
        check_ttl("acquire_lock", ttl)?;
        let mut inv = scripts::LOCK_ACQUIRE.prepare_invoke();
        inv.key(self.keys.lock(key))
            .key(self.keys.fence_counter())
            .arg(owner)
            .arg(self.now().millis())
            .arg(ms(ttl))
            .arg(px(GC_GRACE));
        let reply = self.run("acquire_lock", &inv).await?;
        match reply.tag()?.as_str() {
            "held" => Ok(None),
            "ok" => Ok(Some(Fence {
                owner: owner.to_owned(),
                token: reply.token(1)?,
                locked_at: Timestamp::from_millis(reply.int(2)?),
                expires_at: Timestamp::from_millis(reply.int(3)?),
            })),
            other => Err(BrokerError::Backend(format!(
                "acquire_lock: unexpected outcome {other}"
            ))),
        }
    }

    async fn renew_lock(&self, key: &LockKey, fence: &Fence, ttl: Duration) -> BrokerResult<Fence> {
        check_ttl("renew_lock", ttl)?;
        let mut inv = scripts::LOCK_RENEW.prepare_invoke();
        inv.key(self.keys.lock(key))
            .arg(&fence.owner)
            .arg(fence.token)
            .arg(self.now().millis())
            .arg(ms(ttl))
            .arg(px(GC_GRACE));
        let reply = self.run("renew_lock", &inv).await?;
        self.lock_outcome("renew_lock", key, &reply)?;
        Ok(Fence {
            locked_at: Timestamp::from_millis(reply.int(1)?),
            expires_at: Timestamp::from_millis(reply.int(2)?),
            ..fence.clone()
        })
    }

    async fn release_lock(&self, key: &LockKey, fence: &Fence) -> BrokerResult<()> {
        let mut inv = scripts::LOCK_RELEASE.prepare_invoke();
        inv.key(self.keys.lock(key))
            .arg(&fence.owner)
            .arg(fence.token)
            .arg(self.now().millis());
        let reply = self.run("release_lock", &inv).await?;
        self.lock_outcome("release_lock", key, &reply)
    }

    async fn rate_limit(
        &self,
        endpoint: &str,
        actor: &str,
        limit: u32,
        window: Duration,
    ) -> BrokerResult<RateDecision> {
        check_ttl("rate_limit", window)?;
        let mut inv = scripts::RATE_LIMIT.prepare_invoke();
        inv.key(self.keys.rate_limit(endpoint, actor))
            .arg(self.now().millis())
            .arg(limit)
            .arg(px(window));
        let mut conn = self.conn("rate_limit").await?;
        let (allowed, count, reset_at): (i64, i64, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("rate_limit", e))?;
        Ok(RateDecision {
            allowed: allowed == 1,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            limit,
            reset_at: Timestamp::from_millis(reset_at),
        })
    }

    async fn put_session(
        &self,
        session_id: &str,
        session: &Session,
        ttl: Duration,
    ) -> BrokerResult<()> {
        check_ttl("put_session", ttl)?;
        self.put_live("put_session", &self.keys.session(session_id), session, ttl)
            .await
    }

    async fn get_session(&self, session_id: &str) -> BrokerResult<Option<Session>> {
        self.get_live("get_session", &self.keys.session(session_id))
            .await
    }

    async fn delete_session(&self, session_id: &str) -> BrokerResult<()> {
        let _: i64 = self
            .query(
                "delete_session",
                redis::cmd("DEL").arg(self.keys.session(session_id)),
            )
            .await?;
        Ok(())
    }

    async fn put_cache(&self, key: &CacheKey, value: &serde_json::Value) -> BrokerResult<()> {
        let expires_at = self.now().plus(key.ttl());
        // The document keeps its own shape; a non-object is wrapped so the expiry has a home.
        let json = match value {
            serde_json::Value::Object(_) => {
                stamped("put_cache", value, CACHE_EXPIRES_FIELD, expires_at)?
            }
            other => stamped(
                "put_cache",
                &serde_json::json!({ CACHE_VALUE_FIELD: other }),
                CACHE_EXPIRES_FIELD,
                expires_at,
            )?,
        };
        self.query(
            "put_cache",
            redis::cmd("SET")
                .arg(self.keys.cache(key))
                .arg(json)
                .arg("PX")
                .arg(px(key.ttl())),
        )
        .await
    }

    async fn get_cache(&self, key: &CacheKey) -> BrokerResult<Option<serde_json::Value>> {
        let Some(mut value) = self
            .get_json::<serde_json::Value>("get_cache", &self.keys.cache(key))
            .await?
        else {
            return Ok(None);
        };
        if !live(&value, CACHE_EXPIRES_FIELD, self.now()) {
            return Ok(None);
        }
        let Some(map) = value.as_object_mut() else {
            return Ok(Some(value));
        };
        map.remove(CACHE_EXPIRES_FIELD);
        if map.len() == 1 {
            if let Some(inner) = map.remove(CACHE_VALUE_FIELD) {
                return Ok(Some(inner));
            }
        }
        Ok(Some(value))
    }

    async fn publish_agent(&self, presence: &AgentPresence) -> BrokerResult<()> {
        if presence.agent_id.is_empty() {
            return Err(BrokerError::Invalid(
                "publish_agent: agent_id is empty".into(),
            ));
        }
        let id = &presence.agent_id;
        let json = stamped(
            "publish_agent",
            presence,
            EXPIRES_FIELD,
            self.now().plus(AGENT_STATUS_TTL),
        )?;
        // MULTI: a reader never sees the agent active without its status, or the reverse.
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.keys.agent_status(id))
            .arg(json)
            .arg("EX")
            .arg(AGENT_STATUS_TTL.as_secs())
            .ignore();
        for cap in &presence.capabilities {
            pipe.cmd("ZADD")
                .arg(self.keys.capability(cap))
                .arg(presence.performance_score)
                .arg(id)
                .ignore();
        }
        pipe.cmd("SADD")
            .arg(self.keys.active_agents())
            .arg(id)
            .ignore();
        let mut conn = self.conn("publish_agent").await?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error("publish_agent", e))
    }

    async fn withdraw_agent(&self, agent_id: &str, capabilities: &[String]) -> BrokerResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL")
            .arg(self.keys.agent_status(agent_id))
            .ignore();
        for cap in capabilities {
            pipe.cmd("ZREM")
                .arg(self.keys.capability(cap))
                .arg(agent_id)
                .ignore();
        }
        pipe.cmd("SREM")
            .arg(self.keys.active_agents())
            .arg(agent_id)
            .ignore();
        let mut conn = self.conn("withdraw_agent").await?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error("withdraw_agent", e))
    }

    async fn agent_presence(&self, agent_id: &str) -> BrokerResult<Option<AgentPresence>> {
        let presence: Option<AgentPresence> = self
            .get_live("agent_presence", &self.keys.agent_status(agent_id))
            .await?;
        Ok(presence.map(|p| AgentPresence {
            agent_id: agent_id.to_owned(),
            ..p
        }))
    }

    async fn active_agents(&self) -> BrokerResult<Vec<String>> {
        let mut ids: Vec<String> = self
            .query(
                "active_agents",
                redis::cmd("SMEMBERS").arg(self.keys.active_agents()),
            )
            .await?;
        ids.sort();
        Ok(ids)
    }

    async fn agents_with_capability(
        &self,
        capability: &str,
        limit: usize,
    ) -> BrokerResult<Vec<(String, f64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut agents: Vec<(String, f64)> = self
            .query(
                "agents_with_capability",
                redis::cmd("ZRANGE")
                    .arg(self.keys.capability(capability))
                    .arg(0)
                    .arg(limit - 1)
                    .arg("REV")
                    .arg("WITHSCORES"),
            )
            .await?;
        // Equal scores come back in reverse id order; present them by id.
        agents.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(agents)
    }

    async fn purge(&self) -> BrokerResult<u64> {
        let pattern = self.keys.scan_pattern();
        let mut conn = self.conn("purge").await?;
        let mut cursor: u64 = 0;
        let mut deleted: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(PURGE_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error("purge", e))?;
            for chunk in batch.chunks(PURGE_BATCH) {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error("purge", e))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// The `events:queued` payload: the distinct task types of `entries`, as a JSON list.
fn announcement(entries: &[QueueEntry]) -> String {
    let mut types: Vec<&str> = entries.iter().map(|e| e.task_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    serde_json::to_string(&types).unwrap_or_else(|_| "[]".into())
}
