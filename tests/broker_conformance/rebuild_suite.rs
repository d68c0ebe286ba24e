//! Suite bodies for [`Broker::rebuild_from`]: a flushed broker repopulated from a store
//! (the [`FakeStore`]), with tokens above every recorded one, idempotently.
//!
//! [`Broker::rebuild_from`]: mcpd_actors::broker::Broker::rebuild_from

use std::collections::BTreeSet;

use mcpd_actors::broker::{Lease, LockKey};
use mcpd_actors::clock::Clock;
use mcpd_actors::model::{Task, TaskStatus, Timestamp};

use super::broker_suite::{claim, entry, BrokerFixture, T0, TTL};
use super::fake_store::FakeStore;

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
    // Pending in a paused pipeline: stays out of the queues (not counted as queued below).
    tasks.push(Task {
        pipeline_id: "paused".into(),
        ..stored_task("pend-paused", TaskStatus::Pending, 5, 3)
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
    // The reaper requeues the lapsed task and someone claims it; the store (not yet updated)
    // still records the old lease.
    let lapsed = fx.broker.lapsed_leases(10).await.unwrap().remove(0);
    let lapsed_entry = entry("as-lapsed", "rb", 5, None, 0);
    fx.broker
        .requeue(&lapsed_entry, Some(&lapsed))
        .await
        .unwrap();
    let reclaimed = claim(&fx, "reaped", &["rb"]).await.expect("requeued");
    assert_eq!(reclaimed.task_id, "as-lapsed");
    // Rebuilding while those leases are live (the store still says pending or holds an older
    // lease) hands nothing out again, and leaves the new leases and the restored ones alone.
    let held = fx.broker.lease("pend-000").await.unwrap().expect("leased");
    fx.broker
        .rebuild_from(&store, fx.clock.now())
        .await
        .unwrap();
    assert!(claim(&fx, "again", &["rb"]).await.is_none());
    assert_eq!(fx.broker.lease("pend-000").await.unwrap(), Some(held));
    assert_eq!(
        fx.broker.lease("as-lapsed").await.unwrap(),
        Some(reclaimed),
        "an older recorded lease never replaces a newer one"
    );
    assert!(fx.broker.lapsed_leases(10).await.unwrap().is_empty());
    let run = fx.broker.lease("run-live").await.unwrap().unwrap();
    assert_eq!(run.token, 500);
}
