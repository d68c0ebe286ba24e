//! The in-process broker: the shared conformance suite, plus the expiry behaviours that are
//! specific to it (sessions, caches and presence expire by the injected clock here, whereas a
//! Redis backend leaves them to key TTLs on the server's own clock).

#[macro_use]
mod broker_conformance;

use std::sync::Arc;
use std::time::Duration;

use broker_conformance::broker_suite::{presence, T0};
use broker_conformance::BrokerFixture;
use mcpd::broker::memory::MemoryBroker;
use mcpd_actors::broker::{
    CacheKey, Session, AGENT_STATUS_TTL, PIPELINE_CACHE_TTL, TASK_STATUS_TTL,
};
use mcpd_actors::clock::ManualClock;
use mcpd_actors::model::Timestamp;

async fn memory_fixture() -> BrokerFixture {
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    BrokerFixture {
        broker: Arc::new(MemoryBroker::new(clock.clone())),
        clock,
    }
}

broker_conformance!(memory, crate::memory_fixture());

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn sessions_expire_by_the_clock() {
    let fx = memory_fixture().await;
    let s = Session {
        agent_id: "a".into(),
        connected_at: Timestamp::from_millis(T0),
        last_activity: Timestamp::from_millis(T0),
        permissions: vec![],
    };
    let ttl = Duration::from_secs(1800);
    fx.broker.put_session("s", &s, ttl).await.unwrap();
    fx.clock.advance(ttl - MS);
    assert_eq!(fx.broker.get_session("s").await.unwrap(), Some(s.clone()));
    // Putting it again (activity) restarts its ttl.
    fx.broker.put_session("s", &s, ttl).await.unwrap();
    fx.clock.advance(ttl - MS);
    assert!(fx.broker.get_session("s").await.unwrap().is_some());
    fx.clock.advance(MS);
    assert!(fx.broker.get_session("s").await.unwrap().is_none());
}

#[tokio::test]
async fn caches_expire_by_their_seed_ttl() {
    let fx = memory_fixture().await;
    let task = CacheKey::TaskStatus("t".into());
    let pipe = CacheKey::PipelineStatus("p".into());
    let stage = CacheKey::PipelineStage("p".into(), 1);
    let v = serde_json::json!({"status": "running"});
    for k in [&task, &pipe, &stage] {
        fx.broker.put_cache(k, &v).await.unwrap();
    }
    fx.clock.advance(PIPELINE_CACHE_TTL);
    assert!(fx.broker.get_cache(&pipe).await.unwrap().is_none());
    assert!(fx.broker.get_cache(&stage).await.unwrap().is_none());
    assert_eq!(fx.broker.get_cache(&task).await.unwrap(), Some(v));
    fx.clock.advance(TASK_STATUS_TTL - PIPELINE_CACHE_TTL);
    assert!(fx.broker.get_cache(&task).await.unwrap().is_none());
}

#[tokio::test]
async fn presence_expires_but_ranking_stays_until_withdrawn() {
    let fx = memory_fixture().await;
    fx.broker
        .publish_agent(&presence("a", 0.5, &["x"]))
        .await
        .unwrap();
    fx.clock.advance(AGENT_STATUS_TTL - MS);
    assert!(fx.broker.agent_presence("a").await.unwrap().is_some());
    fx.clock.advance(MS);
    assert!(fx.broker.agent_presence("a").await.unwrap().is_none());
    // As in Redis, the capability index and the active set have no TTL: the registry
    // withdraws silent agents explicitly.
    assert_eq!(fx.broker.active_agents().await.unwrap(), ["a"]);
    assert_eq!(
        fx.broker
            .agents_with_capability("x", 5)
            .await
            .unwrap()
            .len(),
        1
    );
}
