//! The Redis broker: the shared conformance suite against the test binary's redis-server, each
//! test under its own key prefix, plus what only Redis shows — the seed key layout and TTLs,
//! prefix isolation of purge, script reloading after `SCRIPT FLUSH`, and surviving a flush.

#[macro_use]
mod broker_conformance;
mod support;

use std::sync::Arc;

use broker_conformance::broker_suite::T0;
use broker_conformance::BrokerFixture;
use mcpd::broker::redis::RedisBroker;
use mcpd_actors::clock::ManualClock;
use mcpd_actors::model::Timestamp;

/// A broker on the shared server under a fresh prefix, and its clock.
async fn redis_broker() -> (RedisBroker, Arc<ManualClock>, String) {
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let prefix = format!("{}:", support::unique_name("broker"));
    let url = support::shared_redis().url();
    let broker = RedisBroker::connect(&url, &prefix, 4, clock.clone())
        .await
        .expect("connect to the shared redis-server");
    (broker, clock, prefix)
}

async fn redis_fixture() -> BrokerFixture {
    let (broker, clock, _) = redis_broker().await;
    BrokerFixture {
        broker: Arc::new(broker),
        clock,
    }
}

broker_conformance!(redis, crate::redis_fixture());

// --- Redis-specific ----------------------------------------------------------------------------

use std::ops::RangeInclusive;
use std::time::Duration;

use broker_conformance::broker_suite::presence;
use broker_conformance::fake_store::FakeStore;
use deadpool_redis::redis as driver;
use mcpd_actors::broker::{
    Broker, BrokerError, CacheKey, ClaimRequest, LockKey, QueueEntry, Session,
};
use mcpd_actors::clock::Clock;
use mcpd_actors::model::{Task, TaskStatus};

const TTL: Duration = Duration::from_secs(30);

/// A plain connection for inspecting what the broker wrote.
async fn raw() -> driver::aio::MultiplexedConnection {
    driver::Client::open(support::shared_redis().url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw redis connection")
}

async fn key_type(conn: &mut driver::aio::MultiplexedConnection, key: &str) -> String {
    driver::cmd("TYPE")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

async fn pttl(conn: &mut driver::aio::MultiplexedConnection, key: &str) -> i64 {
    driver::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

async fn get(conn: &mut driver::aio::MultiplexedConnection, key: &str) -> serde_json::Value {
    let raw: String = driver::cmd("GET").arg(key).query_async(conn).await.unwrap();
    serde_json::from_str(&raw).expect("stored value is JSON")
}

/// Every key under `prefix`.
async fn keys_under(conn: &mut driver::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let pattern = Keys::new(prefix).scan_pattern();
    let mut keys: Vec<String> = driver::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

use mcpd::broker::redis::keys::Keys;

fn ms_range(r: RangeInclusive<Duration>) -> RangeInclusive<i64> {
    r.start().as_millis() as i64..=r.end().as_millis() as i64
}

/// A TTL that was set to `ttl` a moment ago.
fn fresh(ttl: Duration) -> RangeInclusive<i64> {
    ms_range(ttl - Duration::from_secs(5)..=ttl)
}

fn entry(id: &str, ty: &str, priority: u8) -> QueueEntry {
    QueueEntry {
        task_id: id.into(),
        task_type: ty.into(),
        priority,
        deadline: None,
        created_at: Timestamp::from_millis(T0 - 1_000),
    }
}

fn claim_req(agent: &str, caps: &[&str]) -> ClaimRequest {
    ClaimRequest {
        agent_id: agent.into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        lease_ttl: TTL,
    }
}

#[tokio::test]
async fn queue_lease_and_lock_keys_follow_the_seed_layout() {
    let (b, _clock, p) = redis_broker().await;
    let mut conn = raw().await;
    b.enqueue(&[entry("t1", "bias_detection", 5)])
        .await
        .unwrap();
    let queue = format!("{p}tasks:pending:5:bias_detection");
    assert_eq!(key_type(&mut conn, &queue).await, "zset");
    let member: Vec<String> = driver::cmd("ZRANGE")
        .arg(&queue)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(member, [format!("{:013}:t1", T0 - 1_000)]);

    let lease = b
        .claim(&claim_req("ag-1", &["bias_detection"]))
        .await
        .unwrap()
        .expect("claimed");
    b.start(&lease).await.unwrap();
    let lock = format!("{p}lock:task:t1");
    assert_eq!(key_type(&mut conn, &lock).await, "string");
    // No TTL: a lapsed lease stays until the reaper takes the task back, however late.
    assert_eq!(pttl(&mut conn, &lock).await, -1);
    let value = get(&mut conn, &lock).await;
    assert_eq!(value["agent_id"], "ag-1");
    assert_eq!(value["task_id"], "t1");
    assert_eq!(value["token"], lease.token);
    assert_eq!(value["locked_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(value["expires_at"], "2023-11-14T22:13:50.000Z");
    assert_eq!(
        key_type(&mut conn, &format!("{p}tasks:assigned:ag-1")).await,
        "set"
    );
    assert_eq!(
        key_type(&mut conn, &format!("{p}tasks:running")).await,
        "set"
    );
    assert_eq!(
        key_type(&mut conn, &format!("{p}fence:counter")).await,
        "string"
    );
    let expiry: Option<i64> = driver::cmd("ZSCORE")
        .arg(format!("{p}leases:expiry"))
        .arg("t1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(expiry, Some(lease.expires_at.millis()));

    b.acquire_lock(&LockKey::Pipeline("pl".into()), "inst-1", TTL)
        .await
        .unwrap()
        .expect("free lock");
    b.acquire_lock(&LockKey::PipelineStage("pl".into(), 2), "inst-1", TTL)
        .await
        .unwrap()
        .expect("free lock");
    let stage_lock = get(&mut conn, &format!("{p}lock:pipeline:pl:stage:2")).await;
    assert_eq!(stage_lock["owner"], "inst-1");
    assert_eq!(
        key_type(&mut conn, &format!("{p}lock:pipeline:pl")).await,
        "string"
    );

    let window = Duration::from_secs(60);
    b.rate_limit("submit", "u1", 10, window).await.unwrap();
    b.rate_limit("submit", "u1", 10, window).await.unwrap();
    let rl = format!("{p}rate_limit:submit:u1");
    assert!(fresh(window).contains(&pttl(&mut conn, &rl).await));
    let counter = get(&mut conn, &rl).await;
    assert_eq!(counter["count"], 2);
    assert_eq!(counter["window_start"], "2023-11-14T22:13:20.000Z");
    assert_eq!(counter["window_end"], "2023-11-14T22:14:20.000Z");

    // Nothing outside the layout.
    let expected: Vec<String> = [
        "fence:counter",
        "leases:expiry",
        "lock:pipeline:pl",
        "lock:pipeline:pl:stage:2",
        "lock:task:t1",
        "rate_limit:submit:u1",
        "tasks:assigned:ag-1",
        "tasks:running",
    ]
    .iter()
    .map(|k| format!("{p}{k}"))
    .collect();
    assert_eq!(keys_under(&mut conn, &p).await, expected);
}

#[tokio::test]
async fn caches_sessions_and_presence_carry_the_seed_ttls() {
    let (b, _clock, p) = redis_broker().await;
    let mut conn = raw().await;
    let doc = serde_json::json!({"status": "running", "progress": 0.5});
    b.put_cache(&CacheKey::TaskStatus("t".into()), &doc)
        .await
        .unwrap();
    b.put_cache(&CacheKey::PipelineStatus("pl".into()), &doc)
        .await
        .unwrap();
    b.put_cache(&CacheKey::PipelineStage("pl".into(), 3), &doc)
        .await
        .unwrap();
    assert!(fresh(Duration::from_secs(3600))
        .contains(&pttl(&mut conn, &format!("{p}tasks:status:t")).await));
    assert!(fresh(Duration::from_secs(600))
        .contains(&pttl(&mut conn, &format!("{p}pipeline:pl:status")).await));
    assert!(fresh(Duration::from_secs(600))
        .contains(&pttl(&mut conn, &format!("{p}pipeline:pl:stage:3")).await));
    assert_eq!(
        get(&mut conn, &format!("{p}tasks:status:t")).await["status"],
        "running"
    );

    let session = Session {
        agent_id: "ag-1".into(),
        connected_at: Timestamp::from_millis(T0),
        last_activity: Timestamp::from_millis(T0),
        permissions: vec!["task:execute".into()],
    };
    b.put_session("s1", &session, Duration::from_secs(1800))
        .await
        .unwrap();
    let key = format!("{p}ws:session:s1");
    assert!(fresh(Duration::from_secs(1800)).contains(&pttl(&mut conn, &key).await));
    let stored = get(&mut conn, &key).await;
    assert_eq!(stored["agent_id"], "ag-1");
    assert_eq!(stored["connected_at"], "2023-11-14T22:13:20.000Z");

    b.publish_agent(&presence("ag-1", 0.9, &["bias_detection"]))
        .await
        .unwrap();
    let status = format!("{p}agents:status:ag-1");
    assert!(fresh(Duration::from_secs(300)).contains(&pttl(&mut conn, &status).await));
    assert_eq!(get(&mut conn, &status).await["status"], "active");
    let caps = format!("{p}agents:capabilities:bias_detection");
    assert_eq!(key_type(&mut conn, &caps).await, "zset");
    assert_eq!(pttl(&mut conn, &caps).await, -1, "the index has no ttl");
    assert_eq!(
        key_type(&mut conn, &format!("{p}agents:active")).await,
        "set"
    );
}

#[tokio::test]
async fn sessions_caches_and_presence_expire_by_the_injected_clock() {
    let (b, clock, _) = redis_broker().await;
    let session = Session {
        agent_id: "a".into(),
        connected_at: Timestamp::from_millis(T0),
        last_activity: Timestamp::from_millis(T0),
        permissions: vec![],
    };
    let ttl = Duration::from_secs(1800);
    b.put_session("s", &session, ttl).await.unwrap();
    b.put_cache(
        &CacheKey::PipelineStatus("pl".into()),
        &serde_json::json!(7),
    )
    .await
    .unwrap();
    b.publish_agent(&presence("a", 0.5, &["x"])).await.unwrap();
    clock.advance(Duration::from_secs(299));
    assert_eq!(b.get_session("s").await.unwrap(), Some(session.clone()));
    assert_eq!(
        b.get_cache(&CacheKey::PipelineStatus("pl".into()))
            .await
            .unwrap(),
        Some(serde_json::json!(7)),
        "a non-object document comes back as it went in"
    );
    assert!(b.agent_presence("a").await.unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    assert!(b.agent_presence("a").await.unwrap().is_none());
    clock.advance(Duration::from_secs(300));
    assert!(b
        .get_cache(&CacheKey::PipelineStatus("pl".into()))
        .await
        .unwrap()
        .is_none());
    clock.set(Timestamp::from_millis(T0).plus(ttl));
    assert!(b.get_session("s").await.unwrap().is_none());
}

#[tokio::test]
async fn purge_touches_only_its_own_prefix() {
    let base = support::unique_name("purge");
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let url = support::shared_redis().url();
    // A prefix with glob characters must not match its look-alikes.
    let mine = RedisBroker::connect(&url, &format!("{base}[a]:"), 2, clock.clone())
        .await
        .unwrap();
    let other = RedisBroker::connect(&url, &format!("{base}a:"), 2, clock.clone())
        .await
        .unwrap();
    for b in [&mine, &other] {
        b.enqueue(&[entry("t1", "x", 5), entry("t2", "x", 4)])
            .await
            .unwrap();
        b.claim(&claim_req("ag", &["x"]))
            .await
            .unwrap()
            .expect("claimed");
    }
    let mut conn = raw().await;
    let before = keys_under(&mut conn, &format!("{base}[a]:")).await.len() as u64;
    assert!(before >= 4);
    assert_eq!(mine.purge().await.unwrap(), before);
    assert!(keys_under(&mut conn, &format!("{base}[a]:"))
        .await
        .is_empty());
    assert_eq!(other.queue_len("x").await.unwrap(), 1);
    assert!(other.lease("t1").await.unwrap().is_some());
    assert_eq!(other.purge().await.unwrap(), before);
}

#[tokio::test]
async fn scripts_survive_script_flush() {
    let (b, _clock, _) = redis_broker().await;
    b.enqueue(&[entry("t1", "x", 5), entry("t2", "x", 5)])
        .await
        .unwrap();
    let first = b
        .claim(&claim_req("ag", &["x"]))
        .await
        .unwrap()
        .expect("claimed");
    let mut conn = raw().await;
    let _: () = driver::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    // EVALSHA now answers NOSCRIPT; the broker loads the script again.
    let second = b
        .claim(&claim_req("ag", &["x"]))
        .await
        .unwrap()
        .expect("claimed");
    assert!(second.token > first.token);
    b.renew(&second, TTL).await.expect("renew after flush");
}

#[tokio::test]
async fn broker_keeps_working_after_its_keys_are_deleted() {
    let (b, clock, p) = redis_broker().await;
    b.enqueue(&[entry("t1", "x", 5)]).await.unwrap();
    let before = b
        .claim(&claim_req("ag", &["x"]))
        .await
        .unwrap()
        .expect("claimed");
    // Lose everything, as a flushed or replaced Redis would (without the broker's help).
    let mut conn = raw().await;
    let keys = keys_under(&mut conn, &p).await;
    let _: i64 = driver::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.lease("t1").await.unwrap(), None);
    assert_lease_lost(b.renew(&before, TTL).await);

    // The store still knows the task is pending and the highest token it recorded.
    let task = Task {
        task_id: "t1".into(),
        pipeline_id: "pl".into(),
        task_type: "x".into(),
        status: TaskStatus::Pending,
        priority: 5,
        lease_token: 900,
        created_at: Timestamp::from_millis(T0 - 1_000),
        updated_at: Timestamp::from_millis(T0),
        ..Default::default()
    };
    let store = FakeStore::with_tasks(vec![task]);
    let report = b.rebuild_from(&store, clock.now()).await.unwrap();
    assert_eq!(report.queued, 1);
    let after = b
        .claim(&claim_req("ag", &["x"]))
        .await
        .unwrap()
        .expect("requeued");
    assert_eq!(after.task_id, "t1");
    assert!(after.token > 900, "tokens only grow across the loss");
    b.finish(&after).await.unwrap();
}

fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, BrokerError>) {
    assert!(matches!(r, Err(BrokerError::LeaseLost { .. })), "{r:?}");
}

fn reason<T: std::fmt::Debug>(r: Result<T, BrokerError>) -> String {
    match r {
        Err(BrokerError::LeaseLost { reason, .. }) => reason,
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

#[tokio::test]
async fn lease_lost_names_the_reason() {
    let (b, clock, _) = redis_broker().await;
    b.enqueue(&[entry("t1", "x", 5)]).await.unwrap();
    let lease = b.claim(&claim_req("ag", &["x"])).await.unwrap().unwrap();
    let mut forged = lease.clone();
    forged.agent_id = "intruder".into();
    assert_eq!(reason(b.renew(&forged, TTL).await), "held by another owner");
    let mut older = lease.clone();
    older.token -= 1;
    assert_eq!(
        reason(b.renew(&older, TTL).await),
        format!("superseded by token {}", lease.token)
    );
    clock.advance(TTL);
    assert_eq!(reason(b.renew(&lease, TTL).await), "expired");
    b.requeue(&entry("t1", "x", 5), Some(&lease)).await.unwrap();
    assert_eq!(reason(b.finish(&lease).await), "no lease");
}

#[tokio::test]
async fn corrupt_values_are_reported_with_their_key() {
    let (b, _clock, p) = redis_broker().await;
    let mut conn = raw().await;
    let _: () = driver::cmd("SET")
        .arg(format!("{p}lock:task:t1"))
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    match b.lease("t1").await {
        Err(BrokerError::Corrupt { key, .. }) => assert_eq!(key, format!("{p}lock:task:t1")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let _: () = driver::cmd("SET")
        .arg(format!("{p}ws:session:s"))
        .arg("[1, 2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        b.get_session("s").await,
        Err(BrokerError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let url = format!("redis://127.0.0.1:{}", support::free_port());
    match RedisBroker::connect(&url, "x:", 1, clock).await {
        Err(e @ BrokerError::Unavailable(_)) => assert!(e.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// The scripts format dates themselves (Redis Lua has no date library): they must agree with
/// the Rust side on every calendar corner.
#[tokio::test]
async fn scripts_write_dates_as_rust_does() {
    let (b, clock, p) = redis_broker().await;
    let mut conn = raw().await;
    let parse = |s: &str| Timestamp::parse_rfc3339(s).unwrap().millis();
    let mut instants = vec![
        0,
        parse("1999-12-31T23:59:59.999Z"),
        parse("2000-02-29T12:00:00.001Z"),
        parse("2000-03-01T00:00:00.000Z"),
        parse("2024-02-29T23:59:59.999Z"),
        parse("2100-02-28T23:59:59.999Z"),
        parse("2100-03-01T00:00:00.000Z"),
        parse("2400-02-29T00:00:00.000Z"),
    ];
    instants.extend((0..200).map(|_| rand::random_range(0..parse("2500-01-01T00:00:00Z"))));
    for (i, at) in instants.iter().enumerate() {
        clock.set(Timestamp::from_millis(*at));
        let key = LockKey::Pipeline(format!("d{i}"));
        let fence = b
            .acquire_lock(&key, "o", Duration::from_millis(1))
            .await
            .unwrap()
            .expect("free lock");
        let value = get(&mut conn, &format!("{p}lock:pipeline:d{i}")).await;
        assert_eq!(
            value["locked_at"],
            Timestamp::from_millis(*at).to_rfc3339(),
            "at {at} ms"
        );
        assert_eq!(fence.locked_at.millis(), *at);
    }
}

#[tokio::test]
async fn claim_over_an_unreaped_lapsed_lease_moves_the_task() {
    let (b, clock, _) = redis_broker().await;
    let e = entry("t1", "x", 5);
    b.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let old = b
        .claim(&claim_req("ag-old", &["x"]))
        .await
        .unwrap()
        .unwrap();
    b.start(&old).await.unwrap();
    clock.advance(TTL);
    // The task is queued again (requeue without a lease) before the reaper ran.
    b.requeue(&e, None).await.unwrap();
    let new = b
        .claim(&claim_req("ag-new", &["x"]))
        .await
        .unwrap()
        .unwrap();
    assert!(new.token > old.token);
    assert!(b.assigned_tasks("ag-old").await.unwrap().is_empty());
    assert_eq!(b.assigned_tasks("ag-new").await.unwrap(), ["t1"]);
    assert!(
        b.running_tasks().await.unwrap().is_empty(),
        "not started yet"
    );
    assert!(b.lapsed_leases(10).await.unwrap().is_empty());
}
