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
