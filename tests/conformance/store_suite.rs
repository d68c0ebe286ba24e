//! The store conformance suite: what every [`Store`] backend must do, written once against the
//! trait. Each function gets a fresh, empty store and panics on a violation; the
//! `store_conformance!` macro turns each into a test per backend.
//!
//! Contract points pinned here beyond the trait docs: a page's `next` is `None` whenever no
//! item follows (also when the last page is exactly full); a cursor the backend did not issue
//! is refused as `Invalid`; a task update that is both fenced and stale may report either, so
//! fencing is checked with a current revision.

use std::collections::HashSet;
use std::sync::Arc;

use mcpd_actors::model::*;
use mcpd_actors::store::*;

use super::fixtures::*;

type S = Arc<dyn Store>;

async fn apply_ok(store: &S, tx: Transition) {
    if let Err(e) = store.apply(tx).await {
        panic!("apply failed: {e:?}");
    }
}

async fn insert_task(store: &S, mut t: Task) -> Task {
    apply_ok(store, Transition::new().write(Write::insert(&mut t))).await;
    t
}

async fn insert_agent(store: &S, mut a: Agent) -> Agent {
    apply_ok(store, Transition::new().write(Write::insert(&mut a))).await;
    a
}

async fn insert_pipeline(store: &S, mut p: Pipeline) -> Pipeline {
    apply_ok(store, Transition::new().write(Write::insert(&mut p))).await;
    p
}

async fn get_task(store: &S, id: &str) -> Option<Task> {
    store.get_task(id).await.expect("get_task")
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|x| id(x).to_string()).collect()
}

async fn tasks(store: &S, q: TaskQuery) -> Vec<String> {
    let page = store
        .query_tasks(&q, &Page::first(1000))
        .await
        .expect("query_tasks");
    assert_eq!(page.next, None, "a page holding everything has no next");
    ids(&page.items, |t| &t.task_id)
}

fn expect_conflict(r: StoreResult<()>, kind: EntityKind, id: &str) -> String {
    match r {
        Err(StoreError::Conflict {
            kind: k,
            id: i,
            reason,
        }) => {
            assert_eq!((k, i.as_str()), (kind, id));
            reason
        }
        other => panic!("expected a conflict on {kind} {id}, got {other:?}"),
    }
}

/// `ping` answers on a healthy store.
pub async fn ping(store: S) {
    store.ping().await.expect("ping");
    assert!(!store.backend().is_empty());
}

/// An agent with every field set reads back equal; absent ids read as `None`.
pub async fn agent_round_trip(store: S) {
    let a = insert_agent(&store, rich_agent("agent-rich")).await;
    assert_eq!(store.get_agent("agent-rich").await.unwrap(), Some(a));
    assert_eq!(store.get_agent("agent-none").await.unwrap(), None);
}

/// A task with every field set reads back equal.
pub async fn task_round_trip(store: S) {
    let t = insert_task(&store, rich_task("task-rich", "pipe-1")).await;
    assert_eq!(get_task(&store, "task-rich").await, Some(t));
    assert_eq!(get_task(&store, "task-none").await, None);
}

/// A pipeline with every field set reads back equal.
pub async fn pipeline_round_trip(store: S) {
    let p = insert_pipeline(&store, rich_pipeline("pipe-rich")).await;
    assert_eq!(store.get_pipeline("pipe-rich").await.unwrap(), Some(p));
    assert_eq!(store.get_pipeline("pipe-none").await.unwrap(), None);
}

/// Events, audit records and metrics with every field set read back equal through queries.
pub async fn event_audit_metric_round_trip(store: S) {
    let e = rich_event("ev-rich");
    let a = rich_audit("au-rich");
    apply_ok(&store, Transition::new().event(e.clone()).audit(a.clone())).await;
    let m = rich_metric("m-rich");
    store.put_metrics(vec![m.clone()]).await.unwrap();
    let page = Page::first(10);
    let events = store
        .query_events(&EventQuery::default(), &page)
        .await
        .unwrap();
    assert_eq!(events.items, vec![e]);
    let audits = store
        .query_audit_logs(&AuditQuery::default(), &page)
        .await
        .unwrap();
    assert_eq!(audits.items, vec![a]);
    let metrics = store
        .query_metrics(&MetricQuery::default(), &page)
        .await
        .unwrap();
    assert_eq!(metrics.items, vec![m]);
}

/// Millisecond timestamps survive exactly, including ones before the epoch and the `.999` edge.
pub async fn timestamps_keep_milliseconds(store: S) {
    for (i, ms) in [1_705_314_600_001_i64, 1_705_314_600_999, -1_234_567, 0]
        .into_iter()
        .enumerate()
    {
        let mut t = task(&format!("task-ts-{i}"), "pipe-ts", 1, 5, 0);
        t.created_at = Timestamp::from_millis(ms);
        t.deadline = Some(Timestamp::from_millis(ms + 1));
        let t = insert_task(&store, t).await;
        let back = get_task(&store, &t.task_id).await.expect("stored");
        assert_eq!(back.created_at.millis(), ms);
        assert_eq!(back.deadline.map(Timestamp::millis), Some(ms + 1));
    }
}

/// Inserting an existing id is a conflict and leaves the stored document alone.
pub async fn insert_existing_id_conflicts(store: S) {
    let first = insert_task(&store, task("task-dup", "pipe-1", 1, 5, 0)).await;
    let mut again = task("task-dup", "pipe-2", 3, 9, 5);
    let r = store
        .apply(Transition::new().write(Write::insert(&mut again)))
        .await;
    expect_conflict(r, EntityKind::Task, "task-dup");
    assert_eq!(get_task(&store, "task-dup").await, Some(first));

    insert_agent(
        &store,
        agent("agent-dup", AgentType::General, AgentStatus::Active, &[]),
    )
    .await;
    let mut a = agent("agent-dup", AgentType::Therapist, AgentStatus::Busy, &[]);
    let r = store
        .apply(Transition::new().write(Write::insert(&mut a)))
        .await;
    expect_conflict(r, EntityKind::Agent, "agent-dup");

    insert_pipeline(
        &store,
        pipeline("pipe-dup", PipelineStatus::Created, 0, "u"),
    )
    .await;
    let mut p = pipeline("pipe-dup", PipelineStatus::Running, 0, "u");
    let r = store
        .apply(Transition::new().write(Write::insert(&mut p)))
        .await;
    expect_conflict(r, EntityKind::Pipeline, "pipe-dup");
}

/// A transition whose last write fails stores nothing: not its earlier insert, update, event
/// or audit record.
pub async fn failed_transition_writes_nothing(store: S) {
    let existing = insert_task(&store, task("task-old", "pipe-1", 1, 5, 0)).await;
    let mut bumped = existing.clone();
    bumped.substatus = Some("touched".into());
    let mut fresh = task("task-new", "pipe-1", 1, 5, 1);
    let mut dup = task("task-old", "pipe-1", 1, 5, 2);
    let mut other = agent("agent-new", AgentType::General, AgentStatus::Active, &["x"]);
    let tx = Transition::new()
        .write(Write::insert(&mut fresh))
        .write(Write::insert(&mut other))
        .event(event(
            "ev-lost",
            "task_created",
            "task-new",
            Some("pipe-1"),
            1,
        ))
        .audit(audit(
            "au-lost",
            ResourceType::Task,
            "task-new",
            "u",
            AuditAction::Create,
            1,
        ))
        .write(Write::insert(&mut dup));
    expect_conflict(store.apply(tx).await, EntityKind::Task, "task-old");
    assert_eq!(get_task(&store, "task-new").await, None);
    assert_eq!(store.get_agent("agent-new").await.unwrap(), None);
    assert_eq!(get_task(&store, "task-old").await, Some(existing.clone()));
    let page = Page::first(10);
    assert!(store
        .query_events(&EventQuery::default(), &page)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store
        .query_audit_logs(&AuditQuery::default(), &page)
        .await
        .unwrap()
        .items
        .is_empty());

    // The failure comes last — an audit record whose id exists — after an update, an insert
    // and an event that all succeeded: every one of them is rolled back.
    let earlier = Transition::new().audit(audit(
        "au-dup",
        ResourceType::Task,
        "task-old",
        "u",
        AuditAction::Read,
        1,
    ));
    store.apply(earlier).await.unwrap();
    let mut fresh2 = task("task-new2", "pipe-1", 1, 5, 3);
    let tx = Transition::new()
        .write(Write::update(&mut bumped))
        .write(Write::insert(&mut fresh2))
        .event(event(
            "ev-late",
            "task_created",
            "task-new2",
            Some("pipe-1"),
            2,
        ))
        .audit(audit(
            "au-dup",
            ResourceType::Task,
            "task-new2",
            "u",
            AuditAction::Create,
            2,
        ));
    assert!(
        store.apply(tx).await.is_err(),
        "a duplicate audit id is refused"
    );
    assert_eq!(
        get_task(&store, "task-old").await,
        Some(existing),
        "the update was rolled back"
    );
    assert_eq!(
        get_task(&store, "task-new2").await,
        None,
        "the insert was rolled back"
    );
    let events = store
        .query_events(&EventQuery::default(), &page)
        .await
        .unwrap()
        .items;
    assert!(events.is_empty(), "the event was rolled back: {events:?}");
    let audits = store
        .query_audit_logs(&AuditQuery::default(), &page)
        .await
        .unwrap()
        .items;
    assert_eq!(audits.len(), 1, "only the earlier audit record");
}

/// An update at the stored revision lands and bumps it; chained updates keep working.
pub async fn update_with_current_revision(store: S) {
    let mut t = insert_task(&store, task("task-u", "pipe-1", 1, 5, 0)).await;
    t.status = TaskStatus::Assigned;
    t.assigned_agent_id = Some("agent-1".into());
    apply_ok(
        &store,
        Transition::new().write(Write::update_from(&mut t, "pending")),
    )
    .await;
    assert_eq!(t.revision, 2);
    assert_eq!(get_task(&store, "task-u").await, Some(t.clone()));
    t.status = TaskStatus::Running;
    apply_ok(&store, Transition::new().write(Write::update(&mut t))).await;
    assert_eq!(
        get_task(&store, "task-u")
            .await
            .map(|t| (t.revision, t.status)),
        Some((3, TaskStatus::Running))
    );

    let mut a = insert_agent(
        &store,
        agent("agent-u", AgentType::General, AgentStatus::Inactive, &["a"]),
    )
    .await;
    a.status = AgentStatus::Active;
    a.capabilities = vec!["b".into()];
    apply_ok(
        &store,
        Transition::new().write(Write::update_from(&mut a, "inactive")),
    )
    .await;
    assert_eq!(store.get_agent("agent-u").await.unwrap(), Some(a));

    let mut p = insert_pipeline(&store, pipeline("pipe-u", PipelineStatus::Created, 0, "u")).await;
    p.status = PipelineStatus::Running;
    apply_ok(
        &store,
        Transition::new().write(Write::update_from(&mut p, "created")),
    )
    .await;
    assert_eq!(store.get_pipeline("pipe-u").await.unwrap(), Some(p));
}

/// An update from a revision that is no longer stored is a conflict naming both revisions.
pub async fn stale_revision_conflicts(store: S) {
    let t = insert_task(&store, task("task-s", "pipe-1", 1, 5, 0)).await;
    let (mut a, mut b) = (t.clone(), t);
    a.substatus = Some("a".into());
    b.substatus = Some("b".into());
    apply_ok(&store, Transition::new().write(Write::update(&mut a))).await;
    let reason = expect_conflict(
        store
            .apply(Transition::new().write(Write::update(&mut b)))
            .await,
        EntityKind::Task,
        "task-s",
    );
    assert!(
        reason.contains('1') && reason.contains('2'),
        "reason names revisions: {reason}"
    );
    assert_eq!(get_task(&store, "task-s").await, Some(a));

    let ag = insert_agent(
        &store,
        agent("agent-s", AgentType::General, AgentStatus::Active, &[]),
    )
    .await;
    let (mut x, mut y) = (ag.clone(), ag);
    apply_ok(&store, Transition::new().write(Write::update(&mut x))).await;
    let r = store
        .apply(Transition::new().write(Write::update(&mut y)))
        .await;
    expect_conflict(r, EntityKind::Agent, "agent-s");

    let p = insert_pipeline(&store, pipeline("pipe-s", PipelineStatus::Created, 0, "u")).await;
    let (mut x, mut y) = (p.clone(), p);
    apply_ok(&store, Transition::new().write(Write::update(&mut x))).await;
    let r = store
        .apply(Transition::new().write(Write::update(&mut y)))
        .await;
    expect_conflict(r, EntityKind::Pipeline, "pipe-s");
}

/// An update expecting another status than the stored one is a conflict naming both.
pub async fn wrong_expected_status_conflicts(store: S) {
    let mut t = insert_task(&store, task("task-w", "pipe-1", 1, 5, 0)).await;
    let before = t.clone();
    t.status = TaskStatus::Running;
    let r = store
        .apply(Transition::new().write(Write::update_from(&mut t, "assigned")))
        .await;
    let reason = expect_conflict(r, EntityKind::Task, "task-w");
    assert!(
        reason.contains("assigned") && reason.contains("pending"),
        "{reason}"
    );
    assert_eq!(get_task(&store, "task-w").await, Some(before));
}

/// Updating what does not exist is `NotFound`, and nothing of the transition is written.
pub async fn update_missing_is_not_found(store: S) {
    let mut ghost = task("task-ghost", "pipe-1", 1, 5, 0);
    ghost.revision = 1;
    let tx = Transition::new()
        .write(Write::update(&mut ghost))
        .event(event("ev-ghost", "task_updated", "task-ghost", None, 0));
    match store.apply(tx).await {
        Err(StoreError::NotFound { kind, id }) => {
            assert_eq!((kind, id.as_str()), (EntityKind::Task, "task-ghost"))
        }
        other => panic!("expected not found, got {other:?}"),
    }
    let events = store
        .query_events(&EventQuery::default(), &Page::first(5))
        .await
        .unwrap();
    assert!(events.items.is_empty());
    let mut a = agent("agent-ghost", AgentType::General, AgentStatus::Active, &[]);
    a.revision = 3;
    let r = store
        .apply(Transition::new().write(Write::update(&mut a)))
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::NotFound {
                kind: EntityKind::Agent,
                ..
            })
        ),
        "{r:?}"
    );
    let mut p = pipeline("pipe-ghost", PipelineStatus::Created, 0, "u");
    p.revision = 1;
    let r = store
        .apply(Transition::new().write(Write::update(&mut p)))
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::NotFound {
                kind: EntityKind::Pipeline,
                ..
            })
        ),
        "{r:?}"
    );
}

/// A task write under a lower lease token than stored is fenced; equal or higher lands.
pub async fn fencing_refuses_lower_lease_tokens(store: S) {
    let mut t = task("task-f", "pipe-1", 1, 5, 0);
    t.lease_token = 5;
    let mut t = insert_task(&store, t).await;

    let mut stale = t.clone();
    stale.lease_token = 4;
    stale.status = TaskStatus::Completed;
    match store
        .apply(Transition::new().write(Write::update(&mut stale)))
        .await
    {
        Err(StoreError::Fenced {
            task_id,
            offered,
            current,
        }) => {
            assert_eq!((task_id.as_str(), offered, current), ("task-f", 4, 5))
        }
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(get_task(&store, "task-f").await, Some(t.clone()));

    t.substatus = Some("same token".into());
    apply_ok(&store, Transition::new().write(Write::update(&mut t))).await;
    t.lease_token = 9;
    apply_ok(&store, Transition::new().write(Write::update(&mut t))).await;
    assert_eq!(
        get_task(&store, "task-f").await.map(|t| t.lease_token),
        Some(9)
    );
    assert_eq!(store.max_lease_token().await.unwrap(), 9);

    let mut late = t.clone();
    late.lease_token = 7;
    match store
        .apply(Transition::new().write(Write::update(&mut late)))
        .await
    {
        Err(StoreError::Fenced {
            offered: 7,
            current: 9,
            ..
        }) => {}
        other => panic!("expected fenced 7 < 9, got {other:?}"),
    }
}

/// `max_lease_token` is 0 on an empty store and the highest token over all tasks after.
pub async fn max_lease_token(store: S) {
    assert_eq!(store.max_lease_token().await.unwrap(), 0);
    for (i, tok) in [3_u64, 41, 7].into_iter().enumerate() {
        let mut t = task(&format!("task-m{i}"), "pipe-1", 1, 5, i as i64);
        t.lease_token = tok;
        insert_task(&store, t).await;
    }
    assert_eq!(store.max_lease_token().await.unwrap(), 41);
}

/// Soft-deleted documents stay readable by id and leave queries unless asked for.
pub async fn soft_delete_hides_from_queries(store: S) {
    insert_task(&store, task("task-keep", "pipe-d", 1, 5, 0)).await;
    let mut gone = insert_task(&store, task("task-gone", "pipe-d", 1, 5, 1)).await;
    gone.is_deleted = true;
    gone.deleted_at = Some(ts(10));
    apply_ok(&store, Transition::new().write(Write::update(&mut gone))).await;
    let q = TaskQuery {
        pipeline_id: Some("pipe-d".into()),
        ..Default::default()
    };
    assert_eq!(tasks(&store, q.clone()).await, ["task-keep"]);
    let all = TaskQuery {
        include_deleted: true,
        ..q
    };
    assert_eq!(tasks(&store, all).await, ["task-keep", "task-gone"]);
    assert_eq!(get_task(&store, "task-gone").await, Some(gone));

    insert_agent(
        &store,
        agent(
            "agent-keep",
            AgentType::General,
            AgentStatus::Active,
            &["c"],
        ),
    )
    .await;
    let mut a = insert_agent(
        &store,
        agent(
            "agent-gone",
            AgentType::General,
            AgentStatus::Active,
            &["c"],
        ),
    )
    .await;
    a.is_deleted = true;
    apply_ok(&store, Transition::new().write(Write::update(&mut a))).await;
    let q = AgentQuery {
        capability: Some("c".into()),
        ..Default::default()
    };
    let got = store.query_agents(&q, &Page::first(10)).await.unwrap();
    assert_eq!(ids(&got.items, |a| &a.agent_id), ["agent-keep"]);
    let q = AgentQuery {
        include_deleted: true,
        ..q
    };
    let got = store.query_agents(&q, &Page::first(10)).await.unwrap();
    assert_eq!(
        ids(&got.items, |a| &a.agent_id),
        ["agent-gone", "agent-keep"]
    );

    insert_pipeline(
        &store,
        pipeline("pipe-keep", PipelineStatus::Created, 0, "u"),
    )
    .await;
    let mut p = insert_pipeline(
        &store,
        pipeline("pipe-gone", PipelineStatus::Created, 1, "u"),
    )
    .await;
    p.is_deleted = true;
    apply_ok(&store, Transition::new().write(Write::update(&mut p))).await;
    let got = store
        .query_pipelines(&PipelineQuery::default(), &Page::first(10))
        .await
        .unwrap();
    assert_eq!(ids(&got.items, |p| &p.pipeline_id), ["pipe-keep"]);
    let q = PipelineQuery {
        include_deleted: true,
        ..Default::default()
    };
    let got = store.query_pipelines(&q, &Page::first(10)).await.unwrap();
    assert_eq!(
        ids(&got.items, |p| &p.pipeline_id),
        ["pipe-gone", "pipe-keep"]
    );
}

/// Tasks by pipeline, and by pipeline and stage.
pub async fn tasks_by_pipeline_and_stage(store: S) {
    insert_task(&store, task("t-a1", "pipe-a", 1, 5, 0)).await;
    insert_task(&store, task("t-a2", "pipe-a", 2, 5, 1)).await;
    insert_task(&store, task("t-a3", "pipe-a", 2, 5, 2)).await;
    insert_task(&store, task("t-b2", "pipe-b", 2, 5, 3)).await;
    let q = TaskQuery {
        pipeline_id: Some("pipe-a".into()),
        ..Default::default()
    };
    assert_eq!(tasks(&store, q.clone()).await, ["t-a1", "t-a2", "t-a3"]);
    let q = TaskQuery {
        stage: Some(2),
        ..q
    };
    assert_eq!(tasks(&store, q).await, ["t-a2", "t-a3"]);
    let q = TaskQuery {
        pipeline_id: Some("pipe-none".into()),
        ..Default::default()
    };
    assert!(tasks(&store, q).await.is_empty());
}

/// Tasks in a set of states, ordered priority desc, then created_at asc, then id asc.
pub async fn tasks_by_status_in_priority_order(store: S) {
    let specs = [
        ("t-low-old", 2, 0, TaskStatus::Pending),
        ("t-high-new", 9, 50, TaskStatus::Pending),
        ("t-high-old", 9, 10, TaskStatus::Retry),
        ("t-mid-b", 5, 20, TaskStatus::Pending),
        ("t-mid-a", 5, 20, TaskStatus::Pending),
        ("t-running", 10, 0, TaskStatus::Running),
    ];
    for (id, prio, at, status) in specs {
        let mut t = task(id, "pipe-q", 1, prio, at);
        t.status = status;
        insert_task(&store, t).await;
    }
    let q = TaskQuery {
        statuses: vec![TaskStatus::Pending, TaskStatus::Retry],
        ..Default::default()
    };
    assert_eq!(
        tasks(&store, q).await,
        [
            "t-high-old",
            "t-high-new",
            "t-mid-a",
            "t-mid-b",
            "t-low-old"
        ]
    );
    let q = TaskQuery {
        statuses: vec![TaskStatus::Running],
        ..Default::default()
    };
    assert_eq!(tasks(&store, q).await, ["t-running"]);
    let everything = tasks(&store, TaskQuery::default()).await;
    assert_eq!(everything.first().map(String::as_str), Some("t-running"));
    assert_eq!(everything.len(), 6);
}

/// Tasks held by an agent, and of a task type.
pub async fn tasks_by_agent_and_type(store: S) {
    for (id, agent, ty) in [
        ("t-1", Some("agent-1"), "ingest"),
        ("t-2", Some("agent-2"), "bias_detection"),
        ("t-3", Some("agent-1"), "bias_detection"),
        ("t-4", None, "bias_detection"),
    ] {
        let mut t = task(id, "pipe-x", 1, 5, 0);
        t.assigned_agent_id = agent.map(str::to_string);
        t.task_type = ty.into();
        insert_task(&store, t).await;
    }
    let q = TaskQuery {
        assigned_agent_id: Some("agent-1".into()),
        ..Default::default()
    };
    assert_eq!(tasks(&store, q).await, ["t-1", "t-3"]);
    let q = TaskQuery {
        task_type: Some("bias_detection".into()),
        ..Default::default()
    };
    assert_eq!(tasks(&store, q).await, ["t-2", "t-3", "t-4"]);
    let q = TaskQuery {
        task_type: Some("bias_detection".into()),
        assigned_agent_id: Some("agent-1".into()),
        ..Default::default()
    };
    assert_eq!(tasks(&store, q).await, ["t-3"]);
}

/// Pipelines by status and submitter, newest first (created_at then id, descending).
pub async fn pipelines_by_status_newest_first(store: S) {
    for (id, status, at, by) in [
        ("p-1", PipelineStatus::Running, 10, "alice"),
        ("p-2", PipelineStatus::Created, 20, "bob"),
        ("p-3", PipelineStatus::Running, 30, "bob"),
        ("p-4", PipelineStatus::Running, 30, "alice"),
        ("p-5", PipelineStatus::Completed, 40, "alice"),
    ] {
        insert_pipeline(&store, pipeline(id, status, at, by)).await;
    }
    let page = Page::first(100);
    let q = PipelineQuery {
        statuses: vec![PipelineStatus::Running],
        ..Default::default()
    };
    let got = store.query_pipelines(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |p| &p.pipeline_id), ["p-4", "p-3", "p-1"]);
    let q = PipelineQuery {
        created_by: Some("alice".into()),
        ..Default::default()
    };
    let got = store.query_pipelines(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |p| &p.pipeline_id), ["p-5", "p-4", "p-1"]);
    let q = PipelineQuery {
        statuses: vec![PipelineStatus::Created, PipelineStatus::Completed],
        ..Default::default()
    };
    let got = store.query_pipelines(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |p| &p.pipeline_id), ["p-5", "p-2"]);
}

/// Agents by type, status and capability, ordered by id.
pub async fn agents_by_type_status_capability(store: S) {
    use AgentStatus::*;
    use AgentType::*;
    for (id, ty, st, caps) in [
        (
            "ag-4",
            BiasDetector,
            Active,
            &["bias_detection", "ingest"][..],
        ),
        ("ag-1", BiasDetector, Busy, &["bias_detection"][..]),
        ("ag-3", Therapist, Active, &["therapy"][..]),
        ("ag-2", General, Maintenance, &["ingest"][..]),
    ] {
        insert_agent(&store, agent(id, ty, st, caps)).await;
    }
    let page = Page::first(100);
    let q = AgentQuery {
        agent_type: Some(BiasDetector),
        ..Default::default()
    };
    let got = store.query_agents(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |a| &a.agent_id), ["ag-1", "ag-4"]);
    let q = AgentQuery {
        statuses: vec![Active, Maintenance],
        ..Default::default()
    };
    let got = store.query_agents(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |a| &a.agent_id), ["ag-2", "ag-3", "ag-4"]);
    let q = AgentQuery {
        capability: Some("ingest".into()),
        ..Default::default()
    };
    let got = store.query_agents(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |a| &a.agent_id), ["ag-2", "ag-4"]);
    let q = AgentQuery {
        capability: Some("bias_detection".into()),
        statuses: vec![Active],
        agent_type: Some(BiasDetector),
        ..Default::default()
    };
    let got = store.query_agents(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |a| &a.agent_id), ["ag-4"]);
    let q = AgentQuery {
        capability: Some("bias".into()),
        ..Default::default()
    };
    assert!(
        store
            .query_agents(&q, &page)
            .await
            .unwrap()
            .items
            .is_empty(),
        "no prefix match"
    );
}

/// Events by type, target and pipeline, oldest first.
pub async fn events_by_type_target_pipeline(store: S) {
    apply_ok(
        &store,
        Transition::new()
            .event(event(
                "ev-3",
                "task_completed",
                "task-1",
                Some("pipe-1"),
                30,
            ))
            .event(event("ev-1", "task_created", "task-1", Some("pipe-1"), 10))
            .event(event("ev-2", "task_created", "task-2", Some("pipe-2"), 20))
            .event(event("ev-4", "agent_registered", "agent-1", None, 20)),
    )
    .await;
    let page = Page::first(100);
    let q = |q: EventQuery| {
        let store = store.clone();
        let page = page.clone();
        async move {
            ids(&store.query_events(&q, &page).await.unwrap().items, |e| {
                &e.event_id
            })
        }
    };
    assert_eq!(
        q(EventQuery::default()).await,
        ["ev-1", "ev-2", "ev-4", "ev-3"]
    );
    let by_type = EventQuery {
        event_type: Some("task_created".into()),
        ..Default::default()
    };
    assert_eq!(q(by_type).await, ["ev-1", "ev-2"]);
    let by_target = EventQuery {
        target_id: Some("task-1".into()),
        ..Default::default()
    };
    assert_eq!(q(by_target).await, ["ev-1", "ev-3"]);
    let by_pipeline = EventQuery {
        pipeline_id: Some("pipe-2".into()),
        ..Default::default()
    };
    assert_eq!(q(by_pipeline).await, ["ev-2"]);
}

/// Audit records by resource, actor and action, oldest first.
pub async fn audit_by_resource_actor_action(store: S) {
    use AuditAction::*;
    use ResourceType as R;
    apply_ok(
        &store,
        Transition::new()
            .audit(audit("au-2", R::Task, "task-1", "alice", Update, 20))
            .audit(audit("au-1", R::Task, "task-1", "bob", Create, 10))
            .audit(audit("au-3", R::Pipeline, "task-1", "alice", Read, 30))
            .audit(audit("au-4", R::Agent, "agent-1", "system", Update, 20)),
    )
    .await;
    let page = Page::first(100);
    let q = |q: AuditQuery| {
        let store = store.clone();
        let page = page.clone();
        async move {
            ids(
                &store.query_audit_logs(&q, &page).await.unwrap().items,
                |a| &a.audit_id,
            )
        }
    };
    assert_eq!(
        q(AuditQuery::default()).await,
        ["au-1", "au-2", "au-4", "au-3"]
    );
    let res = AuditQuery {
        resource_type: Some(R::Task),
        resource_id: Some("task-1".into()),
        ..Default::default()
    };
    assert_eq!(q(res).await, ["au-1", "au-2"]);
    let by_id = AuditQuery {
        resource_id: Some("task-1".into()),
        ..Default::default()
    };
    assert_eq!(q(by_id).await, ["au-1", "au-2", "au-3"]);
    let actor = AuditQuery {
        actor_id: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(q(actor).await, ["au-2", "au-3"]);
    let action = AuditQuery {
        action: Some(Update),
        ..Default::default()
    };
    assert_eq!(q(action).await, ["au-2", "au-4"]);
}

/// Walks a query page by page; returns every item and the number of pages.
async fn walk<T, F, Fut>(limit: u32, mut fetch: F) -> (Vec<T>, usize)
where
    F: FnMut(Page) -> Fut,
    Fut: std::future::Future<Output = StoreResult<Paged<T>>>,
{
    let mut page = Page::first(limit);
    let mut out = Vec::new();
    for pages in 1..=1000 {
        let got = fetch(page.clone()).await.expect("page");
        assert!(
            got.items.len() <= limit as usize,
            "page larger than its limit"
        );
        let full = got.items.len() == limit as usize;
        out.extend(got.items);
        match got.next {
            Some(c) => {
                assert!(full, "a short page must be the last");
                page.after = Some(c);
            }
            None => return (out, pages),
        }
    }
    panic!("paging does not end");
}

/// Cursors walk every item exactly once in query order and end with `next = None`, also when
/// the last page is exactly full.
pub async fn paging_walks_each_item_once(store: S) {
    let mut expected = Vec::new();
    for i in 0..21_i64 {
        let t = task(
            &format!("t-{i:02}"),
            "pipe-pg",
            1,
            (i % 3) as u8 + 4,
            (i * 7) % 5,
        );
        expected.push(t.clone());
        insert_task(&store, t).await;
    }
    // One soft-deleted task the walk must skip.
    let mut d = insert_task(&store, task("t-deleted", "pipe-pg", 1, 9, 0)).await;
    d.is_deleted = true;
    apply_ok(&store, Transition::new().write(Write::update(&mut d))).await;
    expected.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.created_at.cmp(&b.created_at))
            .then(a.task_id.cmp(&b.task_id))
    });
    let want = ids(&expected, |t| &t.task_id);
    let q = TaskQuery {
        pipeline_id: Some("pipe-pg".into()),
        ..Default::default()
    };
    for (limit, pages) in [(7, 3), (5, 5), (1, 21), (21, 1), (100, 1)] {
        let (got, n) = walk(limit, |p| {
            let (store, q) = (store.clone(), q.clone());
            async move { store.query_tasks(&q, &p).await }
        })
        .await;
        assert_eq!(ids(&got, |t| &t.task_id), want, "limit {limit}");
        assert_eq!(n, pages, "pages at limit {limit}");
    }

    // The other collections page the same way.
    for i in 0..9_i64 {
        insert_pipeline(
            &store,
            pipeline(&format!("p-{i}"), PipelineStatus::Created, i % 4, "u"),
        )
        .await;
        insert_agent(
            &store,
            agent(
                &format!("a-{i}"),
                AgentType::General,
                AgentStatus::Active,
                &[],
            ),
        )
        .await;
        apply_ok(
            &store,
            Transition::new()
                .event(event(&format!("e-{i}"), "x", "t", None, i % 2))
                .audit(audit(
                    &format!("l-{i}"),
                    ResourceType::Task,
                    "t",
                    "u",
                    AuditAction::Read,
                    i % 3,
                )),
        )
        .await;
        store
            .put_metrics(vec![metric(&format!("m-{i}"), "n", 1.0, i % 4)])
            .await
            .unwrap();
    }
    let (p, _) = walk(2, |pg| {
        let s = store.clone();
        async move { s.query_pipelines(&PipelineQuery::default(), &pg).await }
    })
    .await;
    let got: Vec<_> = p
        .iter()
        .map(|p| (p.created_at, p.pipeline_id.clone()))
        .collect();
    let mut sorted = got.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!((got.len(), &got), (9, &sorted));
    // Nine items and nine distinct ids: each one exactly once, none repeated or skipped.
    assert_eq!(got.iter().map(|g| &g.1).collect::<HashSet<_>>().len(), 9);
    let (a, _) = walk(4, |pg| {
        let s = store.clone();
        async move { s.query_agents(&AgentQuery::default(), &pg).await }
    })
    .await;
    assert_eq!(
        ids(&a, |a| &a.agent_id),
        (0..9).map(|i| format!("a-{i}")).collect::<Vec<_>>()
    );
    let (e, _) = walk(2, |pg| {
        let s = store.clone();
        async move { s.query_events(&EventQuery::default(), &pg).await }
    })
    .await;
    let got: Vec<_> = e
        .iter()
        .map(|e| (e.created_at, e.event_id.clone()))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!((got.len(), &got), (9, &sorted));
    // Nine items and nine distinct ids: each one exactly once, none repeated or skipped.
    assert_eq!(got.iter().map(|g| &g.1).collect::<HashSet<_>>().len(), 9);
    let (l, _) = walk(3, |pg| {
        let s = store.clone();
        async move { s.query_audit_logs(&AuditQuery::default(), &pg).await }
    })
    .await;
    let got: Vec<_> = l
        .iter()
        .map(|a| (a.timestamp, a.audit_id.clone()))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!((got.len(), &got), (9, &sorted));
    // Nine items and nine distinct ids: each one exactly once, none repeated or skipped.
    assert_eq!(got.iter().map(|g| &g.1).collect::<HashSet<_>>().len(), 9);
    let (m, _) = walk(2, |pg| {
        let s = store.clone();
        async move { s.query_metrics(&MetricQuery::default(), &pg).await }
    })
    .await;
    let got: Vec<_> = m
        .iter()
        .map(|m| (m.window_start, m.metric_id.clone()))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!((got.len(), &got), (9, &sorted));
    // Nine items and nine distinct ids: each one exactly once, none repeated or skipped.
    assert_eq!(got.iter().map(|g| &g.1).collect::<HashSet<_>>().len(), 9);
}

/// A page limit of 0 or above 1000, or a cursor the store did not issue, is `Invalid`.
pub async fn bad_pages_are_invalid(store: S) {
    insert_task(&store, task("t-1", "pipe-1", 1, 5, 0)).await;
    for limit in [0, Page::MAX_LIMIT + 1] {
        let page = Page::first(limit);
        let r = store.query_tasks(&TaskQuery::default(), &page).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "limit {limit}: {r:?}"
        );
        let r = store.query_agents(&AgentQuery::default(), &page).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "limit {limit}: {r:?}"
        );
        let r = store
            .query_pipelines(&PipelineQuery::default(), &page)
            .await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "limit {limit}: {r:?}"
        );
        let r = store.query_events(&EventQuery::default(), &page).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "limit {limit}: {r:?}"
        );
        let r = store.query_audit_logs(&AuditQuery::default(), &page).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "limit {limit}: {r:?}"
        );
        let r = store.query_metrics(&MetricQuery::default(), &page).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "limit {limit}: {r:?}"
        );
    }
    assert!(store
        .query_tasks(&TaskQuery::default(), &Page::first(1000))
        .await
        .is_ok());
    let forged = Page {
        limit: 5,
        after: Some("not a cursor \u{1F600}".into()),
    };
    let r = store.query_tasks(&TaskQuery::default(), &forged).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}

/// `put_metrics` replaces a stored `metric_id`; queries filter by name and window start.
pub async fn metrics_put_replace_and_query(store: S) {
    store
        .put_metrics(vec![
            metric("m-1", "queue_time", 1.0, 0),
            metric("m-2", "queue_time", 2.0, 60_000),
            metric("m-3", "processing_time", 3.0, 30_000),
        ])
        .await
        .unwrap();
    store
        .put_metrics(vec![metric("m-1", "queue_time", 10.5, 0)])
        .await
        .unwrap();
    store
        .put_metrics(vec![])
        .await
        .expect("an empty put is a no-op");
    let page = Page::first(100);
    let q = MetricQuery {
        metric_name: Some("queue_time".into()),
        ..Default::default()
    };
    let got = store.query_metrics(&q, &page).await.unwrap();
    let vals: Vec<_> = got
        .items
        .iter()
        .map(|m| (m.metric_id.as_str(), m.value))
        .collect();
    assert_eq!(vals, [("m-1", 10.5), ("m-2", 2.0)]);
    let q = MetricQuery {
        since: Some(ts(30_000)),
        ..Default::default()
    };
    let got = store.query_metrics(&q, &page).await.unwrap();
    assert_eq!(ids(&got.items, |m| &m.metric_id), ["m-3", "m-2"]);
    let all = store
        .query_metrics(&MetricQuery::default(), &page)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
}

/// In a batch, a conflicting transition fails alone; the others are applied whole.
pub async fn apply_batch_isolates_failures(store: S) {
    let existing = insert_task(&store, task("t-old", "pipe-b", 1, 5, 0)).await;
    let mut stale = existing.clone();
    stale.revision = 7;
    let mut a = task("t-a", "pipe-b", 1, 5, 1);
    let mut c = task("t-c", "pipe-b", 1, 5, 2);
    let mut lost = task("t-lost", "pipe-b", 1, 5, 3);
    let results = store
        .apply_batch(vec![
            Transition::new().write(Write::insert(&mut a)).event(event(
                "ev-a",
                "task_created",
                "t-a",
                None,
                1,
            )),
            Transition::new()
                .write(Write::insert(&mut lost))
                .write(Write::update(&mut stale))
                .event(event("ev-lost", "task_updated", "t-old", None, 2)),
            Transition::new().write(Write::insert(&mut c)).event(event(
                "ev-c",
                "task_created",
                "t-c",
                None,
                3,
            )),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    expect_conflict(results[1].clone(), EntityKind::Task, "t-old");
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(get_task(&store, "t-a").await, Some(a));
    assert_eq!(get_task(&store, "t-c").await, Some(c));
    assert_eq!(get_task(&store, "t-lost").await, None);
    assert_eq!(get_task(&store, "t-old").await, Some(existing));
    let events = store
        .query_events(&EventQuery::default(), &Page::first(10))
        .await
        .unwrap();
    assert_eq!(ids(&events.items, |e| &e.event_id), ["ev-a", "ev-c"]);

    // A transition the check refuses fails alone too; an empty batch is fine.
    let mut d = task("t-d", "pipe-b", 1, 5, 4);
    let results = store
        .apply_batch(vec![
            Transition::new(),
            Transition::new().write(Write::insert(&mut d)),
        ])
        .await;
    assert!(
        matches!(results[0], Err(StoreError::Invalid(_))),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(store.apply_batch(vec![]).await.is_empty());
}

/// Two writers updating from the same read revision: exactly one wins, every round.
pub async fn concurrent_compare_and_set_has_one_winner(store: S) {
    for round in 0..50 {
        let id = format!("t-race-{round}");
        let read = insert_task(&store, task(&id, "pipe-r", 1, 5, round)).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut handles = Vec::new();
        for writer in ["w1", "w2"] {
            let (store, barrier, mut copy) = (store.clone(), barrier.clone(), read.clone());
            handles.push(tokio::spawn(async move {
                copy.substatus = Some(writer.to_string());
                let w = Write::update_from(&mut copy, "pending");
                barrier.wait().await;
                (writer, store.apply(Transition::new().write(w)).await)
            }));
        }
        let mut winners = Vec::new();
        for h in handles {
            let (writer, r) = h.await.expect("join");
            match r {
                Ok(()) => winners.push(writer),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => panic!("round {round}: unexpected {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let stored = get_task(&store, &id).await.expect("stored");
        assert_eq!(stored.revision, 2);
        assert_eq!(stored.substatus.as_deref(), Some(winners[0]));
    }
}

/// What `Transition::check` refuses is `Invalid` and writes nothing.
pub async fn invalid_transitions_write_nothing(store: S) {
    let r = store.apply(Transition::new()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    let mut ok = task("t-ok", "pipe-i", 1, 5, 0);
    let mut forged = task("t-forged", "pipe-i", 1, 5, 0);
    forged.revision = 5;
    let tx = Transition::new()
        .write(Write::insert(&mut ok))
        .write(Write::Insert(forged.into()))
        .event(event("ev-i", "x", "t-ok", None, 0));
    let r = store.apply(tx).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    let mut nameless = Event {
        event_id: String::new(),
        ..event("", "x", "t", None, 0)
    };
    nameless.event_type = "nameless".into();
    let r = store.apply(Transition::new().event(nameless)).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    assert_eq!(get_task(&store, "t-ok").await, None);
    let events = store
        .query_events(&EventQuery::default(), &Page::first(10))
        .await
        .unwrap();
    assert!(events.items.is_empty());
    // An events-only transition is valid.
    apply_ok(
        &store,
        Transition::new().event(event("ev-only", "x", "t", None, 0)),
    )
    .await;
    let seen: HashSet<_> = store
        .query_events(&EventQuery::default(), &Page::first(10))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(seen, HashSet::from(["ev-only".to_string()]));
}

pub async fn a_stage_query_needs_a_pipeline(store: S) {
    let q = TaskQuery {
        stage: Some(2),
        ..Default::default()
    };
    let err = store.query_tasks(&q, &Page::first(10)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ref m) if m.contains("pipeline_id")),
        "{err}"
    );
}
