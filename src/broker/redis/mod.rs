//! The Redis broker: the dispatch fast path shared by every mcpd instance.
//!
//! Owns every key under its prefix, laid out exactly as the table in [`mcpd_actors::broker`]
//! (templates in [`keys`]). Nothing here is the truth: a flushed prefix is rebuilt from the
//! store ([`Broker::rebuild_from`]).
//!
//! # Atomicity
//! A change that touches several keys, or reads before it writes, is one Lua script
//! (`scripts.rs`, files in `src/broker/lua/`), so no interleaving of instances can observe or
//! create a half-done claim, renewal or lock hand-over. Batches of independent commands go in
//! one pipeline (enqueue, queue lengths), and presence updates in one `MULTI`.
//!
//! # Time
//! `now` is read from the injected clock and passed to every script in ARGV; Redis's own clock
//! is never consulted. Lease and lock values record `expires_at` (RFC 3339, plus
//! `expires_at_ms` for the scripts), and a lease is live exactly when `expires_at > now`. The
//! key's PX TTL is the logical TTL plus [`GC_GRACE`]: it only collects garbage once no reader
//! can care, so a lapsed lease stays readable long enough for the reaper to find it. Sessions,
//! presence and status caches carry the seed's TTL as PX and also record their logical expiry
//! (`expires_at_ms`), so a reader judges them against the same clock.
//!
//! # Errors
//! Driver errors are mapped in `error.rs`: a refused or dropped connection, a pool that hands
//! out no connection in time, or a server that is loading or read-only is
//! [`BrokerError::Unavailable`]; an I/O timeout is [`BrokerError::Timeout`]; a value that does
//! not decode is [`BrokerError::Corrupt`] naming its key; script and other errors are
//! [`BrokerError::Backend`]. Scripts report a failed owner/token check as an outcome, which
//! becomes [`BrokerError::LeaseLost`] / [`BrokerError::LockLost`] with the reason (`expired`,
//! `held by another owner`, `superseded by token N`, `no lease` / `not held`).
//!
//! # Scale
//! A claim is O(log n) per capability and priority (the head of each sorted set); the reaper
//! reads `leases:expiry` by score and fetches the lease values with one MGET; purge walks the
//! prefix with SCAN in batches and never issues FLUSHDB. Keys built inside scripts from the
//! prefix are not declared in KEYS, which Redis Cluster needs unless the prefix carries a hash
//! tag (`{mcpd}:`), putting every key of the broker in one slot.

mod error;
pub mod keys;
mod scripts;

use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use deadpool_redis::{Config, Connection, Pool, PoolConfig, Runtime, Timeouts};
use mcpd_actors::broker::{
    AgentPresence, Broker, BrokerError, BrokerResult, CacheKey, ClaimRequest, Fence, Lease,
    LockKey, QueueEntry, RateDecision, Session, AGENT_STATUS_TTL,
};
use mcpd_actors::clock::SharedClock;
use mcpd_actors::model::Timestamp;
use serde::de::DeserializeOwned;
use serde::Serialize;

use self::error::{corrupt, pool_error, redis_error};
use self::keys::Keys;
use self::scripts::Reply;

/// How long a lease or lock key outlives its logical expiry before Redis collects it, so the
/// reaper still reads a lapsed lease.
pub const GC_GRACE: Duration = Duration::from_secs(60);

/// Keys deleted per UNLINK during a purge, and the SCAN COUNT hint.
const PURGE_BATCH: usize = 1000;

/// How long to wait for a pooled connection or a new one.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Field recording a value's logical expiry (ms) in sessions, presence and caches.
const EXPIRES_FIELD: &str = "expires_at_ms";
/// The same in a cache document, whose own fields are the caller's.
const CACHE_EXPIRES_FIELD: &str = "_expires_at_ms";
/// Wrapper field of a cache value that is not a JSON object.
const CACHE_VALUE_FIELD: &str = "_value";

/// The Redis broker.
#[derive(Clone)]
pub struct RedisBroker {
    pool: Pool,
    keys: Keys,
    clock: SharedClock,
    /// For the dedicated pub/sub connection (not pooled: it only listens).
    client: redis::Client,
    queued: tokio::sync::broadcast::Sender<Vec<String>>,
    /// Whether the listener task runs (it starts with the first watcher).
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects a pool of `pool_size` connections to `url` and checks the server answers
    /// (PING). Every key lives under `key_prefix`, used verbatim (`mcpd:`).
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        pool_size: usize,
        clock: SharedClock,
    ) -> Result<RedisBroker, BrokerError> {
        if pool_size == 0 {
            return Err(BrokerError::Invalid(
                "redis pool size must be at least 1".into(),
            ));
        }
        let mut config = Config::from_url(url);
        let mut pool_config = PoolConfig::new(pool_size);
        pool_config.timeouts = Timeouts {
            wait: Some(POOL_TIMEOUT),
            create: Some(POOL_TIMEOUT),
            recycle: Some(POOL_TIMEOUT),
        };
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| BrokerError::Invalid(format!("connect: redis url {url:?}: {e}")))?;
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Invalid(format!("connect: redis url: {e}")))?;
        let broker = RedisBroker {
            pool,
            keys: Keys::new(key_prefix),
            clock,
            client,
            queued: tokio::sync::broadcast::channel(1024).0,
            listening: Default::default(),
        };
        broker.ping().await?;
        Ok(broker)
    }

    /// The key templates of this broker (for tests and operators).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn conn(&self, op: &'static str) -> BrokerResult<Connection> {
        self.pool.get().await.map_err(|e| pool_error(op, e))
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs one command.
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> BrokerResult<T> {
        let mut conn = self.conn(op).await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| redis_error(op, e))
    }

    /// Runs a script and reads its tagged reply.
    async fn run(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> BrokerResult<Reply> {
        let mut conn = self.conn(op).await?;
        let value: Value = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(op, e))?;
        Reply::new(op, value)
    }

    /// Starts, once, the task that relays `events:queued` into [`Self::queued`]; it reconnects
    /// after any error and ends when the broker is dropped (no receiver and no sender left).
    pub(crate) fn listen_queued(&self) {
        if self
            .listening
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let client = self.client.clone();
        let channel = self.keys.queued_channel();
        let tx = self.queued.downgrade();
        tokio::spawn(async move {
            use futures::StreamExt;
            // Only a weak sender is kept: once the broker is gone, the task ends.
            while tx.upgrade().is_some() {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                let Some(sender) = tx.upgrade() else { return };
                                let payload: String = msg.get_payload().unwrap_or_default();
                                if let Ok(types) = serde_json::from_str::<Vec<String>>(&payload) {
                                    let _ = sender.send(types);
                                }
                            }
                            tracing::warn!(
                                channel,
                                "queued-work announcements interrupted; reconnecting"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(channel, cause = %e, "cannot subscribe to queued-work announcements")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(channel, cause = %e, "cannot open the announcements connection")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        op: &'static str,
        key: &str,
    ) -> BrokerResult<Option<T>> {
        let raw: Option<String> = self.query(op, redis::cmd("GET").arg(key)).await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(key, e)))
            .transpose()
    }

    /// Reads a value stamped with [`EXPIRES_FIELD`]; `None` when absent or lapsed by now.
    async fn get_live<T: DeserializeOwned>(
        &self,
        op: &'static str,
        key: &str,
    ) -> BrokerResult<Option<T>> {
        let Some(value) = self.get_json::<serde_json::Value>(op, key).await? else {
            return Ok(None);
        };
        if !live(&value, EXPIRES_FIELD, self.now()) {
            return Ok(None);
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| corrupt(key, e))
    }

    /// Writes `value` with its logical expiry under PX `ttl`.
    async fn put_live<T: Serialize>(
        &self,
        op: &'static str,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> BrokerResult<()> {
        let json = stamped(op, value, EXPIRES_FIELD, self.now().plus(ttl))?;
        self.query(
            op,
            redis::cmd("SET").arg(key).arg(json).arg("PX").arg(px(ttl)),
        )
        .await
    }

    fn lease_lost(&self, task_id: &str, reply: &Reply) -> BrokerResult<BrokerError> {
        Ok(BrokerError::LeaseLost {
            task_id: task_id.to_owned(),
            reason: reply.lost_reason("no lease")?,
        })
    }

    fn lock_lost(&self, key: &LockKey, reply: &Reply) -> BrokerResult<BrokerError> {
        Ok(BrokerError::LockLost {
            key: key.key(),
            reason: reply.lost_reason("not held")?,
        })
    }

    /// Maps the outcome of a lease-checking script: `ok`, or why the lease is lost.
    fn lease_outcome(&self, op: &str, task_id: &str, key: &str, reply: &Reply) -> BrokerResult<()> {
        match reply.tag()?.as_str() {
            "ok" => Ok(()),
            "lost" => Err(self.lease_lost(task_id, reply)?),
            "corrupt" => Err(corrupt_lock(key)),
            other => Err(BrokerError::Backend(format!(
                "{op}: unexpected outcome {other}"
            ))),
        }
    }

    fn lock_outcome(&self, op: &str, key: &LockKey, reply: &Reply) -> BrokerResult<()> {
        match reply.tag()?.as_str() {
            "ok" => Ok(()),
            "lost" => Err(self.lock_lost(key, reply)?),
            "corrupt" => Err(corrupt_lock(&key.key())),
            other => Err(BrokerError::Backend(format!(
                "{op}: unexpected outcome {other}"
            ))),
        }
    }
}

/// Milliseconds of a duration for PX, at least 1 (Redis refuses PX 0).
fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn corrupt_lock(key: &str) -> BrokerError {
    BrokerError::Corrupt {
        key: key.to_owned(),
        message: "lock value is not a JSON object".into(),
    }
}

fn check_lease(lease: &Lease) -> BrokerResult<()> {
    if lease.task_id.is_empty() || lease.agent_id.is_empty() {
        return Err(BrokerError::Invalid(format!(
            "lease needs a task_id and an agent_id: {lease:?}"
        )));
    }
    Ok(())
}

fn check_ttl(op: &str, ttl: Duration) -> BrokerResult<()> {
    if ttl.is_zero() {
        return Err(BrokerError::Invalid(format!("{op}: ttl must be positive")));
    }
    Ok(())
}

/// Whether `value` records a logical expiry in `field` later than `now`.
fn live(value: &serde_json::Value, field: &str, now: Timestamp) -> bool {
    value
        .get(field)
        .and_then(serde_json::Value::as_i64)
        .is_none_or(|expires| expires > now.millis())
}

/// `value` as a JSON object with its logical expiry recorded in `field`.
fn stamped<T: Serialize>(
    op: &str,
    value: &T,
    field: &str,
    expires_at: Timestamp,
) -> BrokerResult<String> {
    let mut json = serde_json::to_value(value)
        .map_err(|e| BrokerError::Invalid(format!("{op}: value does not encode: {e}")))?;
    let serde_json::Value::Object(map) = &mut json else {
        return Err(BrokerError::Invalid(format!(
            "{op}: value is not a JSON object"
        )));
    };
    map.insert(field.to_owned(), expires_at.millis().into());
    Ok(json.to_string())
}

mod broker_impl;
