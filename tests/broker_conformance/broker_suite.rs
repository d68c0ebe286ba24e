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
//!
//! Split by concern: queues and leases here, locks/limits/sessions/caches/presence/purge in
//! [`super::services_suite`], rebuild from the store in [`super::rebuild_suite`]; their
//! functions are re-exported here so the macro names one module.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mcpd_actors::broker::{Broker, BrokerError, ClaimRequest, Lease, QueueEntry};
use mcpd_actors::clock::{Clock, ManualClock};
use mcpd_actors::model::Timestamp;

pub use super::rebuild_suite::*;
pub use super::services_suite::*;

/// What every suite function gets.
pub struct BrokerFixture {
    /// A fresh, empty broker judging time by `clock`.
    pub broker: Arc<dyn Broker>,
    /// The broker's clock.
    pub clock: Arc<ManualClock>,
}

/// Where fixtures' clocks should start (2023-11-14T22:13:20Z).
pub const T0: i64 = 1_700_000_000_000;

pub const TTL: Duration = Duration::from_secs(30);

pub fn ms(m: i64) -> Duration {
    Duration::from_millis(m as u64)
}

pub fn entry(id: &str, ty: &str, priority: u8, deadline: Option<i64>, created: i64) -> QueueEntry {
    QueueEntry {
        task_id: id.into(),
        task_type: ty.into(),
        priority,
        deadline: deadline.map(|d| Timestamp::from_millis(T0 + d)),
        created_at: Timestamp::from_millis(T0 - 100_000 + created),
    }
}

pub fn req(agent: &str, caps: &[&str]) -> ClaimRequest {
    ClaimRequest {
        agent_id: agent.into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        lease_ttl: TTL,
    }
}

pub async fn claim(fx: &BrokerFixture, agent: &str, caps: &[&str]) -> Option<Lease> {
    fx.broker.claim(&req(agent, caps)).await.expect("claim")
}

pub async fn claim_ids(fx: &BrokerFixture, agent: &str, caps: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(l) = claim(fx, agent, caps).await {
        out.push(l.task_id);
    }
    out
}

pub fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, BrokerError>, what: &str) {
    match r {
        Err(BrokerError::LeaseLost { .. }) => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

pub fn assert_lock_lost<T: std::fmt::Debug>(r: Result<T, BrokerError>, what: &str) {
    match r {
        Err(BrokerError::LockLost { .. }) => {}
        other => panic!("{what}: expected LockLost, got {other:?}"),
    }
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
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

pub async fn revoke_drops_a_lease_without_queuing(fx: BrokerFixture) {
    let e = entry("t", "x", 5, None, 1);
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let old = claim(&fx, "ag-old", &["x"]).await.unwrap();
    fx.broker.start(&old).await.unwrap();
    // A live lease is revoked (stage timeout, cancel): gone, and the task is not queued.
    assert!(fx.broker.revoke(&old).await.unwrap());
    assert!(!fx.broker.revoke(&old).await.unwrap(), "idempotent");
    assert!(fx.broker.lease("t").await.unwrap().is_none());
    assert!(fx.broker.assigned_tasks("ag-old").await.unwrap().is_empty());
    assert!(fx.broker.running_tasks().await.unwrap().is_empty());
    assert!(fx.broker.lapsed_leases(10).await.unwrap().is_empty());
    assert_eq!(fx.broker.queue_len("x").await.unwrap(), 0);
    assert_lease_lost(fx.broker.renew(&old, TTL).await, "revoked lease renews");
    // An older lease never revokes a newer one.
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let new = claim(&fx, "ag-new", &["x"]).await.unwrap();
    assert!(!fx.broker.revoke(&old).await.unwrap());
    assert_eq!(fx.broker.lease("t").await.unwrap(), Some(new.clone()));
    fx.broker
        .renew(&new, TTL)
        .await
        .expect("newer lease survives");
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

pub async fn queued_work_is_announced(fx: BrokerFixture) {
    let mut rx = fx.broker.watch_queued().await.unwrap();
    let mut other = fx.broker.watch_queued().await.unwrap();
    // A subscription may take a moment to become active: keep queuing until one is heard.
    let mut heard = None;
    for i in 0..100 {
        let e = entry(&format!("t{i}"), "announced", 5, None, i);
        fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
        if let Ok(Ok(types)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            heard = Some(types);
            break;
        }
    }
    assert_eq!(heard.expect("an announcement within 5 s"), ["announced"]);
    let types = tokio::time::timeout(Duration::from_secs(5), other.recv())
        .await
        .expect("every watcher hears it")
        .unwrap();
    assert_eq!(types, ["announced"]);
    // A requeue is announced too.
    while rx.try_recv().is_ok() {}
    let e = entry("r", "again", 5, None, 1);
    fx.broker.enqueue(std::slice::from_ref(&e)).await.unwrap();
    let l = claim(&fx, "ag", &["again"]).await.unwrap();
    while rx.try_recv().is_ok() {}
    fx.broker.requeue(&e, Some(&l)).await.unwrap();
    let types = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("requeue announced")
        .unwrap();
    assert_eq!(types, ["again"]);
}
