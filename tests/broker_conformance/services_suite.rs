//! Suite bodies for locks, the fencing floor, rate limits, sessions, caches, agent presence
//! and purge. See [`super::broker_suite`] for the conventions.

use std::time::Duration;

use mcpd_actors::broker::{AgentPresence, CacheKey, Fence, LockKey, Session};
use mcpd_actors::clock::Clock;
use mcpd_actors::model::Timestamp;

use super::broker_suite::{
    assert_lock_lost, claim, entry, ms, req, sorted, BrokerFixture, T0, TTL,
};

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

pub async fn epoch_marker_set_read_and_purged(fx: BrokerFixture) {
    assert_eq!(
        fx.broker.epoch().await.unwrap(),
        None,
        "a fresh broker has none"
    );
    fx.broker.set_epoch("epoch-1").await.unwrap();
    assert_eq!(fx.broker.epoch().await.unwrap().as_deref(), Some("epoch-1"));
    fx.clock.advance(Duration::from_secs(86_400 * 365));
    assert_eq!(
        fx.broker.epoch().await.unwrap().as_deref(),
        Some("epoch-1"),
        "no expiry"
    );
    fx.broker.purge().await.unwrap();
    assert_eq!(
        fx.broker.epoch().await.unwrap(),
        None,
        "a lost broker has none"
    );
}

pub async fn a_lapsed_lock_cannot_be_released(fx: BrokerFixture) {
    let key = LockKey::Pipeline("p-lapse".into());
    let ttl = Duration::from_secs(10);
    let f = fx
        .broker
        .acquire_lock(&key, "me", ttl)
        .await
        .unwrap()
        .unwrap();
    fx.clock.advance(ttl + Duration::from_millis(1));
    let err = fx.broker.release_lock(&key, &f).await.unwrap_err();
    assert!(
        matches!(err, mcpd_actors::broker::BrokerError::LockLost { .. }),
        "{err:?}"
    );
    // And it is free for anyone.
    assert!(fx
        .broker
        .acquire_lock(&key, "other", ttl)
        .await
        .unwrap()
        .is_some());
}

pub async fn capability_ties_are_presented_by_id(fx: BrokerFixture) {
    for id in ["ag-c", "ag-a", "ag-b"] {
        let p = AgentPresence {
            agent_id: id.into(),
            status: "active".into(),
            last_heartbeat: fx.clock.now(),
            current_tasks: 0,
            performance_score: 0.5,
            capabilities: vec!["tie".into()],
            endpoint_url: None,
            version: "1".into(),
        };
        fx.broker.publish_agent(&p).await.unwrap();
    }
    let ranked = fx.broker.agents_with_capability("tie", 10).await.unwrap();
    let ids: Vec<&str> = ranked.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(ids, ["ag-a", "ag-b", "ag-c"]);
}
