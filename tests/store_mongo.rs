//! The MongoDB store against a real server (SecantusDB from the test harness, or
//! `$MCPD_TEST_MONGODB_URL`): schema (indexes, schema version), encoding, transitions and
//! queries. Every test works in its own database on the shared server.

mod conformance;
mod support;

use std::sync::Arc;

use bson::{doc, Bson, Document};
use futures::TryStreamExt as _;

use mcpd::store::mongo::MongoStore;
use mcpd_actors::model::{Event, Metric, Task, TaskStatus, Timestamp};
use mcpd_actors::store::{
    EntityKind, EventQuery, MetricQuery, Page, Store, StoreError, TaskQuery, Transition, Write,
};

async fn store() -> MongoStore {
    let url = support::shared_mongo().url().to_string();
    MongoStore::connect(&url, &support::unique_name("mongo"))
        .await
        .expect("connect to the shared mongodb server")
}

crate::store_conformance!(conformance_suite, async {
    Arc::new(store().await) as Arc<dyn Store>
});

fn task(id: &str, priority: u8, created_ms: i64) -> Task {
    Task {
        task_id: id.into(),
        pipeline_id: "p1".into(),
        task_type: "bias_detection".into(),
        priority,
        created_at: Timestamp::from_millis(created_ms),
        updated_at: Timestamp::from_millis(created_ms),
        ..Default::default()
    }
}

fn event(id: &str, target: &str, created_ms: i64) -> Event {
    let mut e = Event {
        event_id: id.into(),
        event_type: "task_created".into(),
        created_at: Timestamp::from_millis(created_ms),
        ..Default::default()
    };
    e.target.id = target.into();
    e
}

async fn insert(s: &MongoStore, t: &mut Task) {
    s.apply(Transition::new().write(Write::insert(t)))
        .await
        .expect("insert task");
}

async fn indexes(s: &MongoStore, coll: &str) -> Vec<mongodb::IndexModel> {
    s.database()
        .collection::<Document>(coll)
        .list_indexes()
        .await
        .expect("list indexes")
        .try_collect()
        .await
        .expect("read indexes")
}

fn name(ix: &mongodb::IndexModel) -> Option<&str> {
    ix.options.as_ref().and_then(|o| o.name.as_deref())
}

#[tokio::test]
async fn connect_creates_the_seed_indexes_without_a_heartbeat_ttl() {
    let s = store().await;
    let names = s
        .database()
        .collection::<Document>("tasks")
        .list_index_names()
        .await
        .unwrap();
    for want in [
        "tasks_task_id_unique",
        "tasks_status_priority_created",
        "tasks_lease_token_desc",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let tasks = indexes(&s, "tasks").await;
    let unique = tasks
        .iter()
        .find(|ix| name(ix) == Some("tasks_task_id_unique"))
        .expect("unique task index");
    assert_eq!(unique.keys, doc! {"task_id": 1});
    assert_eq!(unique.options.as_ref().and_then(|o| o.unique), Some(true));

    let events = indexes(&s, "events").await;
    let ttl = events
        .iter()
        .find(|ix| ix.keys.contains_key("expires_at"))
        .expect("TTL index on events.expires_at");
    let opts = ttl.options.as_ref().expect("index options");
    assert_eq!(opts.name.as_deref(), Some("events_expires_at_ttl"));
    assert_eq!(opts.expire_after, Some(std::time::Duration::ZERO));

    let agents = indexes(&s, "agents").await;
    assert!(
        agents
            .iter()
            .any(|ix| ix.keys.contains_key("last_heartbeat")),
        "plain last_heartbeat index expected: {agents:?}"
    );
    for ix in &agents {
        let ttl = ix.options.as_ref().and_then(|o| o.expire_after);
        assert_eq!(ttl, None, "TTL index on agents: {ix:?}");
    }
    // The seed's audit index names a field that does not exist; the real one is indexed.
    let audit = s
        .database()
        .collection::<Document>("audit_logs")
        .list_index_names()
        .await
        .unwrap();
    assert!(audit.contains(&"audit_logs_classification_timestamp".to_string()));
}

#[tokio::test]
async fn schema_version_is_recorded_and_migrate_is_idempotent() {
    let s = store().await;
    let version = s
        .database()
        .collection::<Document>("schema_version")
        .find_one(doc! {"_id": "schema_version"})
        .await
        .unwrap()
        .expect("schema version document");
    assert!(
        matches!(
            version.get("current_version"),
            Some(Bson::Int64(1) | Bson::Int32(1))
        ),
        "{version:?}"
    );
    let migrations = version.get_array("migrations").unwrap();
    assert_eq!(migrations.len(), 1, "{version:?}");
    let first = migrations[0].as_document().unwrap();
    assert!(
        matches!(first.get("applied_at"), Some(Bson::DateTime(_))),
        "{first:?}"
    );
    assert!(first.get_str("description").is_ok());

    let again = s.migrate().await.unwrap();
    assert_eq!((again.from_version, again.to_version), (1, 1));
    assert!(again.applied.is_empty(), "{again:?}");
    let after = s
        .database()
        .collection::<Document>("schema_version")
        .find_one(doc! {"_id": "schema_version"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.get_array("migrations").unwrap().len(), 1);
}

#[tokio::test]
async fn dates_are_stored_as_bson_dates() {
    let s = store().await;
    let mut t = task("t-dates", 5, 1_705_314_600_123);
    t.deadline = Some(Timestamp::from_millis(1_705_400_000_000));
    insert(&s, &mut t).await;
    s.apply(Transition::new().event(event("e-dates", "t-dates", 1_705_314_600_123)))
        .await
        .unwrap();
    let raw = s
        .database()
        .collection::<Document>("tasks")
        .find_one(doc! {"task_id": "t-dates"})
        .await
        .unwrap()
        .unwrap();
    match raw.get("created_at") {
        Some(Bson::DateTime(d)) => assert_eq!(d.timestamp_millis(), 1_705_314_600_123),
        other => panic!("created_at stored as {other:?}"),
    }
    assert!(
        matches!(raw.get("deadline"), Some(Bson::DateTime(_))),
        "{raw:?}"
    );
    let ev = s
        .database()
        .collection::<Document>("events")
        .find_one(doc! {"event_id": "e-dates"})
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev.get("created_at"), Some(Bson::DateTime(_))),
        "{ev:?}"
    );
    assert_eq!(s.get_task("t-dates").await.unwrap(), Some(t));
}

#[tokio::test]
async fn transitions_enforce_revision_status_and_fencing() {
    let s = store().await;
    assert!(
        s.supports_transactions(),
        "the harness server is a replica set"
    );
    let mut t = task("t-cas", 5, 1_000);
    insert(&s, &mut t).await;

    let mut dup = task("t-cas", 5, 1_000);
    let err = s
        .apply(Transition::new().write(Write::insert(&mut dup)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { kind: EntityKind::Task, reason, .. } if reason == "already exists"),
        "{err:?}"
    );

    let mut stale = t.clone();
    t.lease_token = 3;
    t.status = TaskStatus::Assigned;
    s.apply(Transition::new().write(Write::update_from(&mut t, "pending")))
        .await
        .unwrap();
    assert_eq!(s.get_task("t-cas").await.unwrap().unwrap().revision, 2);

    // Read at revision 1, the store holds 2.
    stale.lease_token = 3;
    let err = s
        .apply(Transition::new().write(Write::update(&mut stale)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            kind: EntityKind::Task,
            id: "t-cas".into(),
            reason: "expected revision 1, found 2".into()
        }
    );

    let mut wrong_status = t.clone();
    let err = s
        .apply(Transition::new().write(Write::update_from(&mut wrong_status, "pending")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { reason, .. } if reason == "expected status pending, found assigned"),
        "{err:?}"
    );

    let mut fenced = t.clone();
    fenced.lease_token = 2;
    let err = s
        .apply(Transition::new().write(Write::update(&mut fenced)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Fenced {
            task_id: "t-cas".into(),
            offered: 2,
            current: 3
        }
    );

    let mut ghost = task("t-ghost", 5, 1_000);
    ghost.revision = 1;
    let err = s
        .apply(Transition::new().write(Write::update(&mut ghost)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: EntityKind::Task,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.max_lease_token().await.unwrap(), 3);
}

#[tokio::test]
async fn a_refused_write_leaves_nothing_of_its_transition() {
    let s = store().await;
    let mut a = task("t-a", 5, 1_000);
    insert(&s, &mut a).await;
    let mut fresh = task("t-new", 5, 2_000);
    let mut stale = a.clone();
    stale.revision = 7; // the store holds 1
    let tx = Transition::new()
        .write(Write::insert(&mut fresh))
        .write(Write::update(&mut stale))
        .event(event("e-lost", "t-new", 2_000));
    let err = s.apply(tx).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        s.get_task("t-new").await.unwrap(),
        None,
        "insert rolled back"
    );
    let events = s
        .query_events(&EventQuery::default(), &Page::first(10))
        .await
        .unwrap();
    assert!(events.items.is_empty(), "event rolled back: {events:?}");
}

#[tokio::test]
async fn batch_outcomes_are_independent_and_in_order() {
    let s = store().await;
    let mut existing = task("t-b0", 5, 1_000);
    insert(&s, &mut existing).await;
    let mut one = task("t-b1", 5, 1_000);
    let mut dup = task("t-b0", 5, 1_000);
    let mut two = task("t-b2", 5, 1_000);
    let mut one_again = one.clone();
    one_again.revision = 1;
    one_again.status = TaskStatus::Cancelled;
    let results = s
        .apply_batch(vec![
            Transition::new().write(Write::insert(&mut one)),
            Transition::new().write(Write::insert(&mut dup)),
            Transition::new().write(Write::insert(&mut two)),
            // Depends on the first: must run after it.
            Transition::new().write(Write::update(&mut one_again)),
        ])
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::Conflict { .. })),
        "{results:?}"
    );
    assert!(results[2].is_ok() && results[3].is_ok(), "{results:?}");
    let got = s.get_task("t-b1").await.unwrap().unwrap();
    assert_eq!((got.revision, got.status), (2, TaskStatus::Cancelled));
}

#[tokio::test]
async fn task_pages_follow_priority_then_age_then_id() {
    let s = store().await;
    let specs = [
        ("t5", 1, 100),
        ("t1", 9, 300),
        ("t3", 5, 100),
        ("t2", 5, 100),
        ("t4", 5, 50),
    ];
    for (id, prio, at) in specs {
        insert(&s, &mut task(id, prio, at)).await;
    }
    let mut deleted = task("t6", 9, 1);
    deleted.is_deleted = true;
    insert(&s, &mut deleted).await;

    let mut seen = Vec::new();
    let mut page = Page::first(2);
    loop {
        let p = s.query_tasks(&TaskQuery::default(), &page).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.into_iter().map(|t| t.task_id));
        match p.next {
            Some(c) => page.after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["t1", "t4", "t2", "t3", "t5"]);

    let with_deleted = TaskQuery {
        include_deleted: true,
        ..Default::default()
    };
    let all = s
        .query_tasks(&with_deleted, &Page::first(10))
        .await
        .unwrap();
    assert_eq!(all.items.first().map(|t| t.task_id.as_str()), Some("t6"));
    assert_eq!(all.next, None);

    let garbage = Page {
        limit: 2,
        after: Some("definitely-not-a-cursor".into()),
    };
    let err = s
        .query_tasks(&TaskQuery::default(), &garbage)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn metrics_upsert_by_id_and_page_by_window() {
    let s = store().await;
    let metric = |id: &str, start: i64, value: f64| Metric {
        metric_id: id.into(),
        metric_name: "task_processing_time".into(),
        value,
        window_start: Timestamp::from_millis(start),
        window_end: Timestamp::from_millis(start + 60_000),
        ..Default::default()
    };
    s.put_metrics(vec![metric("m2", 60_000, 1.0), metric("m1", 0, 2.0)])
        .await
        .unwrap();
    s.put_metrics(vec![metric("m2", 60_000, 3.0)])
        .await
        .unwrap();
    let page = s
        .query_metrics(&MetricQuery::default(), &Page::first(10))
        .await
        .unwrap();
    let got: Vec<_> = page
        .items
        .iter()
        .map(|m| (m.metric_id.as_str(), m.value))
        .collect();
    assert_eq!(got, [("m1", 2.0), ("m2", 3.0)]);
    let since = MetricQuery {
        since: Some(Timestamp::from_millis(1)),
        ..Default::default()
    };
    let later = s.query_metrics(&since, &Page::first(10)).await.unwrap();
    assert_eq!(later.items.len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = support::free_port();
    let url =
        format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300");
    let err = MongoStore::connect(&url, "nowhere").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

/// The standalone-server path (no transactions): preconditions still hold write by write, the
/// entity writes precede the events, and — the documented trade-off — a failure part-way
/// leaves the earlier writes in place.
#[tokio::test]
async fn without_transactions_writes_in_order_and_keeps_cas() {
    let s = store().await.without_transactions_for_tests();
    assert!(!s.supports_transactions());
    let mut t = task("t-sa", 5, 1_000);
    insert(&s, &mut t).await;
    let mut stale = t.clone();
    t.status = TaskStatus::Assigned;
    s.apply(
        Transition::new()
            .write(Write::update_from(&mut t, "pending"))
            .event(event("e-sa-1", "t-sa", 1_000)),
    )
    .await
    .unwrap();
    let err = s
        .apply(Transition::new().write(Write::update(&mut stale)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    let mut fresh = task("t-sa-new", 5, 2_000);
    let mut dup = task("t-sa", 5, 2_000);
    let err = s
        .apply(
            Transition::new()
                .write(Write::insert(&mut fresh))
                .write(Write::insert(&mut dup))
                .event(event("e-sa-2", "t-sa-new", 2_000)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(
        s.get_task("t-sa-new").await.unwrap().is_some(),
        "not atomic without transactions"
    );
    let events = s
        .query_events(&EventQuery::default(), &Page::first(10))
        .await
        .unwrap();
    let ids: Vec<_> = events.items.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e-sa-1"], "events come after the entity writes");
}

/// A fresh database migrates from 0 to 1, and every index of the plan is either created or
/// reported as refused by the server (SecantusDB has no text indexes) — never a failed start.
#[tokio::test]
async fn every_planned_index_is_created_or_reported_skipped() {
    use mcpd::store::mongo::{indexes::index_specs, migrate};
    let s = store().await;
    let fresh = s.database().client().database(&support::unique_name("mig"));
    let report = migrate::migrate(&fresh).await.unwrap();
    assert_eq!((report.from_version, report.to_version), (0, 1));
    assert_eq!(report.applied, [1]);
    for spec in index_specs() {
        let names = fresh
            .collection::<Document>(spec.collection)
            .list_index_names()
            .await
            .unwrap();
        let created = names.iter().any(|n| n == spec.name);
        let skipped = report.notes.iter().any(|n| n.contains(spec.name));
        assert!(
            created ^ skipped,
            "{}: created {created}, skipped {skipped}",
            spec.name
        );
    }
}
