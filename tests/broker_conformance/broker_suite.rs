//! The suite's test bodies. Each takes a fresh, empty broker and the [`ManualClock`] it judges
//! time by; nothing here knows which backend it runs against. Lease, lock and rate-limit
//! expiry are exercised by advancing the clock, never by sleeping.
//!
//! Conventions the suite pins down where the trait leaves room:
//! - a lease or lock is live while `now < expires_at` (tests step at least 1 ms past it);
//! - `rate_limit` counts every request, refused ones too (`count` = requests this window,
//!   `allowed` = `count <= limit`); the window opens at its first request and
//!   `reset_at` = opening + window;
//! - `requeue` with a lease older than the stored one leaves the stored lease alone.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mcpd_actors::broker::{
    AgentPresence, Broker, BrokerError, CacheKey, ClaimRequest, Fence, Lease, LockKey, QueueEntry,
    Session,
};
use mcpd_actors::clock::{Clock, ManualClock};
use mcpd_actors::model::{Task, TaskStatus, Timestamp};

use super::fake_store::FakeStore;

/// What every suite function gets.
pub struct BrokerFixture {
    /// A fresh, empty broker judging time by `clock`.
    pub broker: Arc<dyn Broker>,
    /// The broker's clock.
    pub clock: Arc<ManualClock>,
}

/// Where fixtures' clocks should start (2023-11-14T22:13:20Z).
pub const T0: i64 = 1_700_000_000_000;

const TTL: Duration = Duration::from_secs(30);

fn ms(m: i64) -> Duration {
    Duration::from_millis(m as u64)
}

fn entry(id: &str, ty: &str, priority: u8, deadline: Option<i64>, created: i64) -> QueueEntry {
    QueueEntry {
        task_id: id.into(),
        task_type: ty.into(),
        priority,
        deadline: deadline.map(|d| Timestamp::from_millis(T0 + d)),
        created_at: Timestamp::from_millis(T0 - 100_000 + created),
    }
}

fn req(agent: &str, caps: &[&str]) -> ClaimRequest {
    ClaimRequest {
        agent_id: agent.into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        lease_ttl: TTL,
    }
}

async fn claim(fx: &BrokerFixture, agent: &str, caps: &[&str]) -> Option<Lease> {
    fx.broker.claim(&req(agent, caps)).await.expect("claim")
}

async fn claim_ids(fx: &BrokerFixture, agent: &str, caps: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(l) = claim(fx, agent, caps).await {
        out.push(l.task_id);
    }
    out
}

fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, BrokerError>, what: &str) {
    match r {
        Err(BrokerError::LeaseLost { .. }) => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

fn assert_lock_lost<T: std::fmt::Debug>(r: Result<T, BrokerError>, what: &str) {
    match r {
        Err(BrokerError::LockLost { .. }) => {}
        other => panic!("{what}: expected LockLost, got {other:?}"),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub async fn backend_answers_ping(fx: BrokerFixture) {
    fx.broker.ping().await.expect("ping");
    assert!(!fx.broker.backend().is_empty());
}

pub async fn claim_order_priority_deadline_age_id(fx: BrokerFixture) {
    // Enqueued scrambled, in two batches, to show order comes from the keys alone.
    let entries = [
        entry("a1", "x", 5, None, 100),
        entry("f", "x", 1, Some(10), 1),
        entry("c", "x", 5, Some(1_000), 500),
        entry("a2", "x", 5, None, 100),
        entry("b", "x", 9, None, 300),
        entry("g", "x", 5, None, 50),
        entry("d", "x", 5, Some(500), 600),
    ];
    fx.broker.enqueue(&entries[..3]).await.unwrap();
    fx.broker.enqueue(&entries[3..]).await.unwrap();
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 7);
    let order = claim_ids(&fx, "agent-1", &["x"]).await;
    // priority 9; then deadlines earliest first; then no deadline oldest first, ids break ties;
    // the lowest priority last even though its deadline is the earliest of all.
    assert_eq!(order, ["b", "d", "c", "g", "a1", "a2", "f"]);
}

pub async fn claim_respects_capabilities(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[
            entry("x-low", "x", 5, None, 1),
            entry("y-high", "y", 8, None, 2),
            entry("z-1", "z", 10, None, 0),
            entry("x-dl", "x", 3, Some(2_000), 3),
            entry("y-dl", "y", 3, Some(1_000), 4),
        ])
        .await
        .unwrap();
    // An agent with none of the types gets nothing, and nothing leaves the queues.
    assert!(claim(&fx, "w", &["w"]).await.is_none());
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 2);
    // Best across both capabilities; z (the best overall) is never handed to it.
    let order = claim_ids(&fx, "xy", &["x", "y"]).await;
    assert_eq!(order, ["y-high", "x-low", "y-dl", "x-dl"]);
    assert_eq!(fx.broker.queue_len("z").await.unwrap(), 1);
    let z = claim(&fx, "z-agent", &["z"]).await.expect("z task");
    assert_eq!(z.task_id, "z-1");
}

pub async fn claim_on_empty_is_none(fx: BrokerFixture) {
    assert!(claim(&fx, "a", &["x", "y"]).await.is_none());
    assert!(claim(&fx, "a", &[]).await.is_none());
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 0);
}

pub async fn enqueue_is_idempotent(fx: BrokerFixture) {
    let e = entry("t1", "x", 4, Some(100), 1);
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    fx.broker.enqueue(&[e.clone(), e.clone()]).await.unwrap();
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 1);
    assert_eq!(claim_ids(&fx, "a", &["x"]).await, ["t1"]);
}

pub async fn enqueue_refuses_invalid_entries_atomically(fx: BrokerFixture) {
    let good = entry("ok", "x", 5, None, 1);
    for bad in [
        entry("p0", "x", 0, None, 1),
        entry("p11", "x", 11, None, 1),
        entry("", "x", 5, None, 1),
        entry("no-type", "", 5, None, 1),
    ] {
        let r = fx.broker.enqueue(&[good.clone(), bad.clone()]).await;
        assert!(matches!(r, Err(BrokerError::Invalid(_))), "{bad:?}: {r:?}");
    }
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 0);
}

pub async fn dequeue_removes_a_queued_task(fx: BrokerFixture) {
    let a = entry("a", "x", 5, None, 1);
    let b = entry("b", "x", 5, None, 2);
    fx.broker.enqueue(&[a.clone(), b.clone()]).await.unwrap();
    assert!(fx.broker.dequeue(&a).await.unwrap());
    assert!(!fx.broker.dequeue(&a).await.unwrap(), "second dequeue");
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 1);
    assert_eq!(claim_ids(&fx, "ag", &["x"]).await, ["b"]);
    assert!(
        !fx.broker.dequeue(&b).await.unwrap(),
        "claimed is not queued"
    );
}

pub async fn queue_len_counts_every_priority(fx: BrokerFixture) {
    let entries: Vec<QueueEntry> = (1..=10u8)
        .map(|p| entry(&format!("t{p}"), "x", p, None, p as i64))
        .chain([entry("y1", "y", 3, None, 0)])
        .collect();
    fx.broker.enqueue(&entries).await.unwrap();
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 10);
    assert_eq!(fx.broker.queue_len("y").await.unwrap(), 1);
    assert_eq!(fx.broker.queue_len("nope").await.unwrap(), 0);
    claim(&fx, "a", &["x"]).await.unwrap();
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 9);
}

pub async fn claim_grants_a_lease(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("t1", "x", 5, None, 1), entry("t2", "x", 5, None, 2)])
        .await
        .unwrap();
    let now = fx.clock.now();
    let l1 = claim(&fx, "ag", &["x"]).await.unwrap();
    assert_eq!((l1.task_id.as_str(), l1.agent_id.as_str()), ("t1", "ag"));
    assert!(l1.token > 0);
    assert_eq!(l1.locked_at, now);
    assert_eq!(l1.expires_at, now.plus(TTL));
    assert_eq!(fx.broker.lease("t1").await.unwrap(), Some(l1.clone()));
    let l2 = claim(&fx, "ag", &["x"]).await.unwrap();
    assert!(l2.token > l1.token, "tokens grow");
    assert_eq!(
        sorted(fx.broker.assigned_tasks("ag").await.unwrap()),
        ["t1", "t2"]
    );
    assert!(fx.broker.assigned_tasks("other").await.unwrap().is_empty());
    assert!(fx.broker.lease("unknown").await.unwrap().is_none());
    assert!(fx.broker.lapsed_leases(10).await.unwrap().is_empty());
}

pub async fn renew_extends_the_lease(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("t", "x", 5, None, 1)])
        .await
        .unwrap();
    let l = claim(&fx, "ag", &["x"]).await.unwrap();
    fx.clock.advance(Duration::from_secs(20));
    let r = fx.broker.renew(&l, Duration::from_secs(60)).await.unwrap();
    assert_eq!(r.token, l.token);
    assert_eq!(r.agent_id, "ag");
    assert_eq!(r.expires_at, fx.clock.now().plus(Duration::from_secs(60)));
    assert_eq!(fx.broker.lease("t").await.unwrap(), Some(r.clone()));
    // Past the original expiry, inside the renewed one: still live.
    fx.clock.advance(Duration::from_secs(30));
    assert!(fx.broker.lapsed_leases(10).await.unwrap().is_empty());
    let r2 = fx.broker.renew(&r, TTL).await.unwrap();
    assert_eq!(r2.expires_at, fx.clock.now().plus(TTL));
}

pub async fn wrong_owner_or_token_is_lease_lost(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("t", "x", 5, None, 1)])
        .await
        .unwrap();
    let l = claim(&fx, "ag", &["x"]).await.unwrap();
    let forged = [
        Lease {
            agent_id: "thief".into(),
            ..l.clone()
        },
        Lease {
            token: l.token + 1,
            ..l.clone()
        },
        Lease {
            token: l.token - 1,
            ..l.clone()
        },
        Lease {
            task_id: "not-leased".into(),
            ..l.clone()
        },
    ];
    for f in &forged {
        assert_lease_lost(fx.broker.renew(f, TTL).await, "renew forged");
        assert_lease_lost(fx.broker.finish(f).await, "finish forged");
        assert_lease_lost(fx.broker.start(f).await, "start forged");
    }
    assert_eq!(fx.broker.lease("t").await.unwrap(), Some(l.clone()));
    assert!(fx.broker.running_tasks().await.unwrap().is_empty());
    assert_eq!(fx.broker.assigned_tasks("ag").await.unwrap(), ["t"]);
    fx.broker
        .renew(&l, TTL)
        .await
        .expect("the owner still holds it");
}

pub async fn lapsed_lease_is_lost_and_listed(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("t", "x", 5, None, 1)])
        .await
        .unwrap();
    let l = claim(&fx, "ag", &["x"]).await.unwrap();
    fx.clock.advance(TTL + ms(1));
    assert_lease_lost(fx.broker.renew(&l, TTL).await, "renew lapsed");
    assert_lease_lost(fx.broker.finish(&l).await, "finish lapsed");
    // Lapsed but unreaped: still readable, and listed for the reaper.
    assert_eq!(fx.broker.lease("t").await.unwrap(), Some(l.clone()));
    assert_eq!(fx.broker.lapsed_leases(10).await.unwrap(), vec![l]);
}

pub async fn lapsed_leases_are_bounded_oldest_first(fx: BrokerFixture) {
    let entries: Vec<QueueEntry> = (0..4)
        .map(|i| entry(&format!("t{i}"), "x", 5, None, i))
        .collect();
    fx.broker.enqueue(&entries).await.unwrap();
    // Claimed in order t0..t3 with ttls 40, 10, 30, 100 s: expiry order t1, t2, t0, (t3 live).
    let mut leases = Vec::new();
    for secs in [40, 10, 30, 100] {
        let r = ClaimRequest {
            lease_ttl: Duration::from_secs(secs),
            ..req("ag", &["x"])
        };
        leases.push(fx.broker.claim(&r).await.unwrap().unwrap());
    }
    fx.clock.advance(Duration::from_secs(50));
    let ids = |v: Vec<Lease>| v.into_iter().map(|l| l.task_id).collect::<Vec<_>>();
    assert_eq!(ids(fx.broker.lapsed_leases(2).await.unwrap()), ["t1", "t2"]);
    assert_eq!(
        ids(fx.broker.lapsed_leases(10).await.unwrap()),
        ["t1", "t2", "t0"]
    );
    assert!(fx.broker.lapsed_leases(0).await.unwrap().is_empty());
    fx.broker.renew(&leases[3], TTL).await.expect("t3 is live");
}

pub async fn requeue_after_lapse_gives_larger_token(fx: BrokerFixture) {
    let e = entry("t", "x", 5, None, 1);
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let old = claim(&fx, "ag-old", &["x"]).await.unwrap();
    fx.broker.start(&old).await.unwrap();
    fx.clock.advance(TTL + ms(1));
    fx.broker.requeue(&e, Some(&old)).await.unwrap();
    fx.broker.requeue(&e, Some(&old)).await.unwrap(); // idempotent
    assert!(fx.broker.lapsed_leases(10).await.unwrap().is_empty());
    assert!(fx.broker.lease("t").await.unwrap().is_none());
    assert!(fx.broker.assigned_tasks("ag-old").await.unwrap().is_empty());
    assert!(fx.broker.running_tasks().await.unwrap().is_empty());
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 1);
    let new = claim(&fx, "ag-new", &["x"]).await.expect("claimable again");
    assert_eq!(new.task_id, "t");
    assert!(new.token > old.token);
    assert!(claim(&fx, "ag-3", &["x"]).await.is_none(), "claimed once");
    assert_lease_lost(fx.broker.renew(&old, TTL).await, "old owner renews");
    fx.broker.renew(&new, TTL).await.unwrap();
}

pub async fn requeue_with_older_lease_keeps_newer_lease(fx: BrokerFixture) {
    let e = entry("t", "x", 5, None, 1);
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let old = claim(&fx, "ag-old", &["x"]).await.unwrap();
    fx.clock.advance(TTL + ms(1));
    fx.broker.requeue(&e, Some(&old)).await.unwrap();
    let new = claim(&fx, "ag-new", &["x"]).await.unwrap();
    fx.broker.start(&new).await.unwrap();
    // A late reaper acting on the old lease.
    fx.broker.requeue(&e, Some(&old)).await.unwrap();
    assert_eq!(fx.broker.lease("t").await.unwrap(), Some(new.clone()));
    assert_eq!(fx.broker.assigned_tasks("ag-new").await.unwrap(), ["t"]);
    assert_eq!(fx.broker.running_tasks().await.unwrap(), ["t"]);
    assert!(
        claim(&fx, "ag-3", &["x"]).await.is_none(),
        "not handed out twice"
    );
    fx.broker
        .renew(&new, TTL)
        .await
        .expect("newer lease survives");
    // Requeue with the current lease does drop it.
    fx.broker.requeue(&e, Some(&new)).await.unwrap();
    assert!(fx.broker.lease("t").await.unwrap().is_none());
    assert!(fx.broker.running_tasks().await.unwrap().is_empty());
    let third = claim(&fx, "ag-3", &["x"]).await.unwrap();
    assert!(third.token > new.token);
}

pub async fn claim_skips_live_leased_tasks(fx: BrokerFixture) {
    let e = entry("t", "x", 5, None, 1);
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let l = claim(&fx, "ag", &["x"]).await.unwrap();
    // Queued again while leased (e.g. a rebuild racing a claim).
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    fx.broker
        .enqueue(&[entry("u", "x", 1, None, 2)])
        .await
        .unwrap();
    assert_eq!(claim_ids(&fx, "other", &["x"]).await, ["u"]);
    assert_eq!(fx.broker.lease("t").await.unwrap(), Some(l));
    assert!(fx.broker.assigned_tasks("other").await.unwrap() == ["u"]);
}

pub async fn start_and_finish(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("t1", "x", 5, None, 1), entry("t2", "x", 5, None, 2)])
        .await
        .unwrap();
    let l1 = claim(&fx, "ag", &["x"]).await.unwrap();
    let l2 = claim(&fx, "ag", &["x"]).await.unwrap();
    fx.broker.start(&l1).await.unwrap();
    fx.broker.start(&l1).await.unwrap(); // idempotent
    assert_eq!(fx.broker.running_tasks().await.unwrap(), ["t1"]);
    fx.broker.finish(&l1).await.unwrap();
    assert!(fx.broker.running_tasks().await.unwrap().is_empty());
    assert_eq!(fx.broker.assigned_tasks("ag").await.unwrap(), ["t2"]);
    assert!(fx.broker.lease("t1").await.unwrap().is_none());
    assert_lease_lost(fx.broker.finish(&l1).await, "finish twice");
    fx.broker.finish(&l2).await.unwrap();
    assert!(fx.broker.assigned_tasks("ag").await.unwrap().is_empty());
    // Finished leases never show up for the reaper.
    fx.clock.advance(TTL * 2);
    assert!(fx.broker.lapsed_leases(10).await.unwrap().is_empty());
}

pub async fn start_with_wrong_owner_is_lease_lost(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("t", "x", 5, None, 1)])
        .await
        .unwrap();
    let l = claim(&fx, "ag", &["x"]).await.unwrap();
    let thief = Lease {
        agent_id: "thief".into(),
        ..l.clone()
    };
    assert_lease_lost(fx.broker.start(&thief).await, "start by thief");
    assert!(fx.broker.running_tasks().await.unwrap().is_empty());
    fx.clock.advance(TTL + ms(1));
    assert_lease_lost(fx.broker.start(&l).await, "start lapsed");
}

pub async fn locks_acquire_renew_release(fx: BrokerFixture) {
    let key = LockKey::Pipeline("p1".into());
    let other = LockKey::PipelineStage("p1".into(), 2);
    let now = fx.clock.now();
    let f = fx
        .broker
        .acquire_lock(&key, "i1", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.owner, "i1");
    assert_eq!((f.locked_at, f.expires_at), (now, now.plus(TTL)));
    assert!(fx
        .broker
        .acquire_lock(&key, "i2", TTL)
        .await
        .unwrap()
        .is_none());
    assert!(
        fx.broker
            .acquire_lock(&key, "i1", TTL)
            .await
            .unwrap()
            .is_none(),
        "not reentrant"
    );
    let g = fx
        .broker
        .acquire_lock(&other, "i2", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(g.token > f.token, "one counter for every grant");

    fx.clock.advance(Duration::from_secs(20));
    let f2 = fx.broker.renew_lock(&key, &f, TTL).await.unwrap();
    assert_eq!(f2.token, f.token);
    assert_eq!(f2.expires_at, fx.clock.now().plus(TTL));
    let forged = Fence {
        owner: "i2".into(),
        ..f2.clone()
    };
    assert_lock_lost(
        fx.broker.renew_lock(&key, &forged, TTL).await,
        "renew foreign",
    );
    assert_lock_lost(
        fx.broker.release_lock(&key, &forged).await,
        "release foreign",
    );
    let stale = Fence {
        token: f.token + 100,
        ..f2.clone()
    };
    assert_lock_lost(
        fx.broker.release_lock(&key, &stale).await,
        "release bad token",
    );
    assert_lock_lost(fx.broker.renew_lock(&other, &f2, TTL).await, "wrong key");

    fx.broker.release_lock(&key, &f2).await.unwrap();
    assert_lock_lost(fx.broker.renew_lock(&key, &f2, TTL).await, "renew released");
    let h = fx
        .broker
        .acquire_lock(&key, "i2", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(h.token > g.token);
}

pub async fn lapsed_lock_goes_to_next_owner_with_larger_token(fx: BrokerFixture) {
    let key = LockKey::PipelineStage("p9".into(), 1);
    let f = fx
        .broker
        .acquire_lock(&key, "i1", TTL)
        .await
        .unwrap()
        .unwrap();
    fx.clock.advance(TTL + ms(1));
    assert_lock_lost(fx.broker.renew_lock(&key, &f, TTL).await, "renew lapsed");
    let g = fx
        .broker
        .acquire_lock(&key, "i2", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.owner, "i2");
    assert!(g.token > f.token);
    assert_lock_lost(fx.broker.renew_lock(&key, &f, TTL).await, "stale renew");
    assert_lock_lost(fx.broker.release_lock(&key, &f).await, "stale release");
    // The stale owner's release did not free it.
    assert!(fx
        .broker
        .acquire_lock(&key, "i3", TTL)
        .await
        .unwrap()
        .is_none());
    fx.broker.renew_lock(&key, &g, TTL).await.unwrap();
}

pub async fn fence_floor_raises_tokens(fx: BrokerFixture) {
    fx.broker
        .enqueue(&[entry("a", "x", 5, None, 1), entry("b", "x", 5, None, 2)])
        .await
        .unwrap();
    let first = claim(&fx, "ag", &["x"]).await.unwrap();
    assert!(first.token < 1000);
    assert_eq!(fx.broker.raise_fence_floor(1000).await.unwrap(), 1000);
    let second = claim(&fx, "ag", &["x"]).await.unwrap();
    assert!(second.token > 1000, "{second:?}");
    let now = fx.broker.raise_fence_floor(10).await.unwrap();
    assert!(now >= second.token, "a lower floor changes nothing ({now})");
    let lock = fx
        .broker
        .acquire_lock(&LockKey::Pipeline("p".into()), "i", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(lock.token > second.token);
}

pub async fn rate_limit_fixed_window(fx: BrokerFixture) {
    let window = Duration::from_secs(60);
    let opened = fx.clock.now();
    for i in 1..=3 {
        let d = fx
            .broker
            .rate_limit("submit", "u1", 3, window)
            .await
            .unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!((d.count, d.limit), (i, 3));
        assert_eq!(d.reset_at, opened.plus(window));
        fx.clock.advance(Duration::from_secs(5));
    }
    let d = fx
        .broker
        .rate_limit("submit", "u1", 3, window)
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.count, 4);
    assert_eq!(d.reset_at, opened.plus(window));
    // Other actors and endpoints have their own windows.
    assert!(
        fx.broker
            .rate_limit("submit", "u2", 3, window)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        fx.broker
            .rate_limit("query", "u1", 3, window)
            .await
            .unwrap()
            .allowed
    );

    fx.clock.set(opened.plus(window).plus(ms(1)));
    let d = fx
        .broker
        .rate_limit("submit", "u1", 3, window)
        .await
        .unwrap();
    assert!(d.allowed, "new window");
    assert_eq!(d.count, 1);
    assert_eq!(d.reset_at, fx.clock.now().plus(window));
}

fn session(agent: &str) -> Session {
    Session {
        agent_id: agent.into(),
        connected_at: Timestamp::from_millis(T0 - 5_000),
        last_activity: Timestamp::from_millis(T0 - 1_000),
        permissions: vec!["tasks:claim".into(), "tasks:report".into()],
    }
}

pub async fn sessions_put_get_delete(fx: BrokerFixture) {
    let ttl = Duration::from_secs(1800);
    assert!(fx.broker.get_session("s1").await.unwrap().is_none());
    fx.broker
        .put_session("s1", &session("a1"), ttl)
        .await
        .unwrap();
    fx.broker
        .put_session("s2", &session("a2"), ttl)
        .await
        .unwrap();
    assert_eq!(
        fx.broker.get_session("s1").await.unwrap(),
        Some(session("a1"))
    );
    let mut updated = session("a1");
    updated.last_activity = Timestamp::from_millis(T0);
    fx.broker.put_session("s1", &updated, ttl).await.unwrap();
    assert_eq!(fx.broker.get_session("s1").await.unwrap(), Some(updated));
    fx.broker.delete_session("s1").await.unwrap();
    fx.broker.delete_session("s1").await.unwrap(); // idempotent
    assert!(fx.broker.get_session("s1").await.unwrap().is_none());
    assert_eq!(
        fx.broker.get_session("s2").await.unwrap(),
        Some(session("a2"))
    );
}

pub async fn caches_put_get_every_key(fx: BrokerFixture) {
    let keys = [
        CacheKey::TaskStatus("t1".into()),
        CacheKey::PipelineStatus("p1".into()),
        CacheKey::PipelineStage("p1".into(), 3),
    ];
    for k in &keys {
        assert!(fx.broker.get_cache(k).await.unwrap().is_none(), "{k:?}");
    }
    for (i, k) in keys.iter().enumerate() {
        let v = serde_json::json!({"status": "running", "progress": i as f64 / 4.0, "n": i});
        fx.broker.put_cache(k, &v).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        let v = fx.broker.get_cache(k).await.unwrap().expect("cached");
        assert_eq!(v["n"], i, "{k:?} kept its own value");
    }
    let v2 = serde_json::json!({"status": "completed"});
    fx.broker.put_cache(&keys[0], &v2).await.unwrap();
    assert_eq!(fx.broker.get_cache(&keys[0]).await.unwrap(), Some(v2));
    assert!(fx
        .broker
        .get_cache(&CacheKey::PipelineStage("p1".into(), 4))
        .await
        .unwrap()
        .is_none());
}

pub fn presence(agent: &str, score: f64, caps: &[&str]) -> AgentPresence {
    AgentPresence {
        agent_id: agent.into(),
        status: "active".into(),
        last_heartbeat: Timestamp::from_millis(T0),
        current_tasks: 2,
        performance_score: score,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        endpoint_url: Some(format!("http://{agent}:8000")),
        version: "1.0.0".into(),
    }
}

pub async fn agent_presence_and_capabilities(fx: BrokerFixture) {
    let a1 = presence("a1", 0.9, &["x", "y"]);
    let a2 = presence("a2", 0.5, &["x"]);
    let a3 = AgentPresence {
        endpoint_url: None,
        ..presence("a3", 0.7, &["x"])
    };
    for p in [&a1, &a2, &a3] {
        fx.broker.publish_agent(p).await.unwrap();
    }
    assert_eq!(
        fx.broker.agent_presence("a1").await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(
        fx.broker.agent_presence("a3").await.unwrap(),
        Some(a3.clone())
    );
    assert!(fx.broker.agent_presence("nobody").await.unwrap().is_none());
    assert_eq!(
        sorted(fx.broker.active_agents().await.unwrap()),
        ["a1", "a2", "a3"]
    );
    let ranked = fx.broker.agents_with_capability("x", 10).await.unwrap();
    assert_eq!(
        ranked,
        vec![("a1".into(), 0.9), ("a3".into(), 0.7), ("a2".into(), 0.5)]
    );
    let top = fx.broker.agents_with_capability("x", 2).await.unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].0, "a1");
    assert_eq!(
        fx.broker.agents_with_capability("y", 10).await.unwrap(),
        vec![("a1".into(), 0.9)]
    );
    assert!(fx
        .broker
        .agents_with_capability("z", 10)
        .await
        .unwrap()
        .is_empty());

    // A heartbeat with a new score re-ranks.
    fx.broker
        .publish_agent(&presence("a2", 0.95, &["x"]))
        .await
        .unwrap();
    let ranked = fx.broker.agents_with_capability("x", 1).await.unwrap();
    assert_eq!(ranked, vec![("a2".into(), 0.95)]);

    fx.broker
        .withdraw_agent("a1", &a1.capabilities)
        .await
        .unwrap();
    assert!(fx.broker.agent_presence("a1").await.unwrap().is_none());
    assert_eq!(
        sorted(fx.broker.active_agents().await.unwrap()),
        ["a2", "a3"]
    );
    assert!(fx
        .broker
        .agents_with_capability("y", 10)
        .await
        .unwrap()
        .is_empty());
    let ids: Vec<String> = fx
        .broker
        .agents_with_capability("x", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["a2", "a3"]);
}

pub async fn purge_empties_everything(fx: BrokerFixture) {
    let b = &fx.broker;
    b.enqueue(&[entry("q", "x", 5, None, 1), entry("c", "x", 9, None, 1)])
        .await
        .unwrap();
    let l = claim(&fx, "ag", &["x"]).await.unwrap();
    b.start(&l).await.unwrap();
    let key = LockKey::Pipeline("p".into());
    b.acquire_lock(&key, "i1", TTL).await.unwrap().unwrap();
    b.put_session("s", &session("ag"), TTL).await.unwrap();
    let ck = CacheKey::TaskStatus("c".into());
    b.put_cache(&ck, &serde_json::json!({"status": "running"}))
        .await
        .unwrap();
    b.publish_agent(&presence("ag", 0.8, &["x"])).await.unwrap();
    b.rate_limit("submit", "u", 1, TTL).await.unwrap();

    let n = b.purge().await.unwrap();
    assert!(n >= 8, "purged {n} keys");
    assert_eq!(b.queue_len("x").await.unwrap(), 0);
    assert!(b.claim(&req("ag2", &["x"])).await.unwrap().is_none());
    assert!(b.lease("c").await.unwrap().is_none());
    assert!(b.running_tasks().await.unwrap().is_empty());
    assert!(b.assigned_tasks("ag").await.unwrap().is_empty());
    assert!(b.acquire_lock(&key, "i2", TTL).await.unwrap().is_some());
    assert!(b.get_session("s").await.unwrap().is_none());
    assert!(b.get_cache(&ck).await.unwrap().is_none());
    assert!(b.agent_presence("ag").await.unwrap().is_none());
    assert!(b.active_agents().await.unwrap().is_empty());
    assert!(b.agents_with_capability("x", 10).await.unwrap().is_empty());
    assert!(b.rate_limit("submit", "u", 1, TTL).await.unwrap().allowed);
    assert!(b.lapsed_leases(10).await.unwrap().is_empty());
}

pub async fn concurrent_claimers_take_each_task_once(fx: BrokerFixture) {
    const N: usize = 1000;
    let entries: Vec<QueueEntry> = (0..N)
        .map(|i| {
            entry(
                &format!("t{i:04}"),
                "race",
                (i % 10) as u8 + 1,
                None,
                i as i64,
            )
        })
        .collect();
    for chunk in entries.chunks(250) {
        fx.broker.enqueue(chunk).await.unwrap();
    }
    let mut handles = Vec::new();
    for a in 0..8 {
        let broker = fx.broker.clone();
        handles.push(tokio::spawn(async move {
            let r = req(&format!("agent-{a}"), &["race", "other"]);
            let mut got = Vec::new();
            while let Some(l) = broker.claim(&r).await.expect("claim") {
                assert_eq!(l.agent_id, r.agent_id);
                got.push((l.task_id, l.token));
            }
            got
        }));
    }
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut total = 0;
    for h in handles {
        for (id, token) in h.await.expect("claimer") {
            total += 1;
            assert!(ids.insert(id.clone()), "{id} claimed twice");
            assert!(tokens.insert(token), "token {token} granted twice");
        }
    }
    assert_eq!(total, N);
    assert_eq!(ids.len(), N);
    assert_eq!(fx.broker.queue_len("race").await.unwrap(), 0);
}

// --- rebuild -------------------------------------------------------------------------------

const OLD_MAX_TOKEN: u64 = 700;
const PENDING: usize = 600; // more than one 500-task page of the rebuild scan

fn stored_task(id: &str, status: TaskStatus, priority: u8, created: i64) -> Task {
    Task {
        task_id: id.into(),
        pipeline_id: "p".into(),
        task_type: "rb".into(),
        status,
        priority,
        created_at: Timestamp::from_millis(T0 - 100_000 + created),
        updated_at: Timestamp::from_millis(T0 - 50_000),
        ..Default::default()
    }
}

fn leased(id: &str, status: TaskStatus, agent: &str, token: u64, expires_in: i64) -> Task {
    Task {
        assigned_agent_id: Some(agent.into()),
        assigned_at: Some(Timestamp::from_millis(T0 - 10_000)),
        lease_token: token,
        lease_expires_at: Some(Timestamp::from_millis(T0 + expires_in)),
        ..stored_task(id, status, 5, 0)
    }
}

fn rebuild_store() -> FakeStore {
    let mut tasks: Vec<Task> = (0..PENDING)
        .map(|i| {
            let mut t = stored_task(
                &format!("pend-{i:03}"),
                TaskStatus::Pending,
                (i % 10) as u8 + 1,
                i as i64,
            );
            t.lease_token = (i % 300) as u64; // earlier, released leases
            t
        })
        .collect();
    tasks.push(leased("as-live", TaskStatus::Assigned, "ag-1", 400, 60_000));
    tasks.push(leased("run-live", TaskStatus::Running, "ag-2", 500, 60_000));
    tasks.push(leased(
        "as-lapsed",
        TaskStatus::Assigned,
        "ag-3",
        300,
        -5_000,
    ));
    // Assigned with no recorded lease: queued again (at-least-once).
    tasks.push(Task {
        assigned_agent_id: None,
        ..stored_task("as-nolease", TaskStatus::Assigned, 5, 1)
    });
    tasks.push(Task {
        lease_token: OLD_MAX_TOKEN,
        ..stored_task("done", TaskStatus::Completed, 5, 2)
    });
    FakeStore::with_tasks(tasks)
}

fn expected_queued() -> BTreeSet<String> {
    (0..PENDING)
        .map(|i| format!("pend-{i:03}"))
        .chain(["as-nolease".to_string()])
        .collect()
}

/// Puts some state in the broker, then purges it (a flushed Redis).
async fn dirty_then_flush(fx: &BrokerFixture) {
    fx.broker
        .enqueue(&[entry("junk", "rb", 5, None, 1)])
        .await
        .unwrap();
    claim(fx, "ag-junk", &["rb"]).await.unwrap();
    fx.broker
        .acquire_lock(&LockKey::Pipeline("p".into()), "i", TTL)
        .await
        .unwrap();
    fx.broker.purge().await.unwrap();
}

pub async fn rebuild_restores_queues_and_leases(fx: BrokerFixture) {
    dirty_then_flush(&fx).await;
    let store = rebuild_store();
    let report = fx
        .broker
        .rebuild_from(&store, fx.clock.now())
        .await
        .unwrap();
    assert_eq!(report.queued, PENDING + 1);
    assert_eq!(report.leases_restored, 2);
    assert_eq!(report.leases_lapsed, 1);
    assert_eq!(report.fence_floor, OLD_MAX_TOKEN);
    assert_eq!(
        fx.broker.queue_len("rb").await.unwrap(),
        (PENDING + 1) as u64
    );
    assert!(fx.broker.lease("junk").await.unwrap().is_none());

    // Live leases are back, renewable by their owners with their old tokens.
    let live = Lease {
        task_id: "as-live".into(),
        agent_id: "ag-1".into(),
        token: 400,
        locked_at: Timestamp::from_millis(T0 - 10_000),
        expires_at: Timestamp::from_millis(T0 + 60_000),
    };
    assert_eq!(
        fx.broker.lease("as-live").await.unwrap(),
        Some(live.clone())
    );
    fx.broker.renew(&live, TTL).await.expect("owner renews");
    let run = fx
        .broker
        .lease("run-live")
        .await
        .unwrap()
        .expect("running lease");
    assert_eq!((run.agent_id.as_str(), run.token), ("ag-2", 500));
    assert_eq!(fx.broker.running_tasks().await.unwrap(), ["run-live"]);
    assert_eq!(
        fx.broker.assigned_tasks("ag-2").await.unwrap(),
        ["run-live"]
    );
    assert_eq!(fx.broker.assigned_tasks("ag-1").await.unwrap(), ["as-live"]);
    let lapsed = fx.broker.lapsed_leases(10).await.unwrap();
    assert_eq!(lapsed.len(), 1);
    assert_eq!(
        (lapsed[0].task_id.as_str(), lapsed[0].token),
        ("as-lapsed", 300)
    );

    // Every queued task is claimable once, with a token above every recorded one.
    let mut claimed = BTreeSet::new();
    while let Some(l) = claim(&fx, "new", &["rb"]).await {
        assert!(l.token > OLD_MAX_TOKEN, "{l:?}");
        assert!(claimed.insert(l.task_id.clone()), "{} twice", l.task_id);
    }
    assert_eq!(claimed, expected_queued());
    let lock = fx
        .broker
        .acquire_lock(&LockKey::Pipeline("p".into()), "i", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(lock.token > OLD_MAX_TOKEN);
}

pub async fn rebuild_is_idempotent(fx: BrokerFixture) {
    dirty_then_flush(&fx).await;
    let store = rebuild_store();
    for _ in 0..2 {
        fx.broker
            .rebuild_from(&store, fx.clock.now())
            .await
            .unwrap();
    }
    assert_eq!(
        fx.broker.queue_len("rb").await.unwrap(),
        (PENDING + 1) as u64
    );
    assert_eq!(fx.broker.lapsed_leases(10).await.unwrap().len(), 1);
    let mut claimed = BTreeSet::new();
    while let Some(l) = claim(&fx, "new", &["rb"]).await {
        assert!(claimed.insert(l.task_id.clone()), "{} twice", l.task_id);
    }
    assert_eq!(claimed, expected_queued());
    // Rebuilding while those leases are live (the store still says pending) hands nothing out
    // again, and leaves the new leases and the restored ones alone.
    let held = fx.broker.lease("pend-000").await.unwrap().expect("leased");
    fx.broker
        .rebuild_from(&store, fx.clock.now())
        .await
        .unwrap();
    assert!(claim(&fx, "again", &["rb"]).await.is_none());
    assert_eq!(fx.broker.lease("pend-000").await.unwrap(), Some(held));
    let run = fx.broker.lease("run-live").await.unwrap().unwrap();
    assert_eq!(run.token, 500);
}
