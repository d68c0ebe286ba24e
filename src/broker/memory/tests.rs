//! Unit tests of the in-process broker for what the conformance suite leaves open: exact
//! expiry boundaries, stale queue entries, lease restoration and purge counts.

use std::sync::Arc;

use mcpd_actors::clock::{Clock, ManualClock};

use super::*;

const T0: i64 = 1_700_000_000_000;
const TTL: Duration = Duration::from_secs(30);

fn setup() -> (MemoryBroker, Arc<ManualClock>) {
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    (MemoryBroker::new(clock.clone()), clock)
}

fn entry(id: &str, priority: u8) -> QueueEntry {
    QueueEntry {
        task_id: id.into(),
        task_type: "x".into(),
        priority,
        deadline: None,
        created_at: Timestamp::from_millis(T0),
    }
}

fn req(agent: &str) -> ClaimRequest {
    ClaimRequest {
        agent_id: agent.into(),
        capabilities: vec!["x".into(), "x".into()],
        lease_ttl: TTL,
    }
}

#[tokio::test]
async fn claim_drops_entries_of_live_leased_tasks() {
    let (b, _) = setup();
    b.enqueue(&[entry("t", 5)]).await.unwrap();
    b.claim(&req("a")).await.unwrap().unwrap();
    // The same task queued at two priorities while leased.
    b.enqueue(&[entry("t", 5), entry("t", 9)]).await.unwrap();
    assert_eq!(b.queue_len("x").await.unwrap(), 2);
    assert!(b.claim(&req("b")).await.unwrap().is_none());
    assert_eq!(b.queue_len("x").await.unwrap(), 0, "stale entries dropped");
    assert!(b.state.lock().pending.is_empty(), "empty queues removed");
}

#[tokio::test]
async fn a_lapsed_task_queued_again_moves_to_the_new_owner() {
    let (b, clock) = setup();
    b.enqueue(&[entry("t", 5)]).await.unwrap();
    let old = b.claim(&req("a")).await.unwrap().unwrap();
    b.start(&old).await.unwrap();
    clock.advance(TTL);
    b.enqueue(&[entry("t", 5)]).await.unwrap();
    let new = b.claim(&req("b")).await.unwrap().unwrap();
    assert!(new.token > old.token);
    assert!(b.assigned_tasks("a").await.unwrap().is_empty());
    assert!(b.running_tasks().await.unwrap().is_empty());
    assert!(b.lapsed_leases(10).await.unwrap().is_empty());
    assert_eq!(b.state.lock().lease_expiry.len(), 1);
}

#[tokio::test]
async fn a_lease_lapses_exactly_at_expires_at() {
    let (b, clock) = setup();
    b.enqueue(&[entry("t", 5)]).await.unwrap();
    let l = b.claim(&req("a")).await.unwrap().unwrap();
    clock.advance(TTL - Duration::from_millis(1));
    assert!(b.lapsed_leases(10).await.unwrap().is_empty());
    let l = b.renew(&l, Duration::from_millis(1)).await.unwrap();
    clock.advance(Duration::from_millis(1));
    assert_eq!(b.lapsed_leases(10).await.unwrap(), vec![l.clone()]);
    assert!(matches!(
        b.renew(&l, TTL).await,
        Err(BrokerError::LeaseLost { reason, .. }) if reason == "lease expired"
    ));
    // The renewal moved the expiry index entry rather than adding one.
    assert_eq!(b.state.lock().lease_expiry.len(), 1);
}

#[tokio::test]
async fn restore_lease_keeps_the_newer_token_and_raises_the_counter() {
    let (b, clock) = setup();
    let now = clock.now();
    let lease = |agent: &str, token| Lease {
        task_id: "t".into(),
        agent_id: agent.into(),
        token,
        locked_at: now,
        expires_at: now.plus(TTL),
    };
    b.restore_lease(&lease("a", 50), true).await.unwrap();
    assert_eq!(b.state.lock().fence, 50);
    b.restore_lease(&lease("b", 40), false).await.unwrap();
    b.restore_lease(&lease("b", 50), false).await.unwrap();
    assert_eq!(b.lease("t").await.unwrap(), Some(lease("a", 50)));
    assert_eq!(b.running_tasks().await.unwrap(), ["t"]);
    b.restore_lease(&lease("c", 60), false).await.unwrap();
    assert_eq!(b.lease("t").await.unwrap(), Some(lease("c", 60)));
    assert!(b.assigned_tasks("a").await.unwrap().is_empty());
    assert!(b.running_tasks().await.unwrap().is_empty());
    assert_eq!(b.raise_fence_floor(0).await.unwrap(), 60);
    assert!(b.restore_lease(&lease("", 70), false).await.is_err());
}

#[tokio::test]
async fn requeue_with_a_reaped_lease_cleans_its_memberships() {
    let (b, _) = setup();
    b.enqueue(&[entry("t", 5)]).await.unwrap();
    let l = b.claim(&req("a")).await.unwrap().unwrap();
    b.start(&l).await.unwrap();
    // Simulate a half-done cleanup: the lock is gone, the memberships are not.
    b.state.lock().leases.remove("t");
    b.requeue(&entry("t", 5), Some(&l)).await.unwrap();
    assert!(b.assigned_tasks("a").await.unwrap().is_empty());
    assert!(b.running_tasks().await.unwrap().is_empty());
    assert_eq!(b.queue_len("x").await.unwrap(), 1);
}

#[tokio::test]
async fn rate_window_resets_exactly_at_reset_at() {
    let (b, clock) = setup();
    let w = Duration::from_secs(10);
    let d = b.rate_limit("e", "a", 1, w).await.unwrap();
    assert!(d.allowed);
    clock.advance(w - Duration::from_millis(1));
    assert!(!b.rate_limit("e", "a", 1, w).await.unwrap().allowed);
    clock.advance(Duration::from_millis(1));
    let d = b.rate_limit("e", "a", 1, w).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.reset_at, clock.now().plus(w));
    assert!(!b.rate_limit("e", "a", 0, w).await.unwrap().allowed);
    assert!(b.rate_limit("e", "a", 1, Duration::ZERO).await.is_err());
}

#[tokio::test]
async fn purge_counts_keys_as_redis_would() {
    let (b, _) = setup();
    assert_eq!(b.purge().await.unwrap(), 0);
    // Two queues (priorities 5 and 9 of x) and, after one claim: one queue left, the lease,
    // leases:expiry, tasks:assigned:a, fence:counter = 5 keys.
    b.enqueue(&[entry("t1", 5), entry("t2", 9)]).await.unwrap();
    b.claim(&req("a")).await.unwrap().unwrap();
    assert_eq!(b.purge().await.unwrap(), 5);
    assert_eq!(b.purge().await.unwrap(), 0);
}

#[tokio::test]
async fn zero_ttls_are_refused() {
    let (b, _) = setup();
    let r = ClaimRequest {
        lease_ttl: Duration::ZERO,
        ..req("a")
    };
    assert!(matches!(b.claim(&r).await, Err(BrokerError::Invalid(_))));
    let k = LockKey::Pipeline("p".into());
    assert!(b.acquire_lock(&k, "o", Duration::ZERO).await.is_err());
}

#[tokio::test]
async fn equal_scores_rank_like_zrevrange() {
    let (b, _) = setup();
    for id in ["a", "c", "b"] {
        let p = AgentPresence {
            agent_id: id.into(),
            status: "active".into(),
            last_heartbeat: Timestamp::from_millis(T0),
            current_tasks: 0,
            performance_score: 0.5,
            capabilities: vec!["x".into()],
            endpoint_url: None,
            version: "1".into(),
        };
        b.publish_agent(&p).await.unwrap();
    }
    let ids = |limit| {
        let b = &b;
        async move {
            b.agents_with_capability("x", limit)
                .await
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(ids(10).await, ["a", "b", "c"]);
    // A limit keeps the agents ZREVRANGE would (highest ids among ties).
    assert_eq!(ids(2).await, ["b", "c"]);
}
