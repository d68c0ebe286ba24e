//! Embedded-only properties: sharing one file between stores (the multi-process case),
//! durability across reopen, the schema version row, and error mapping.

use super::*;
use mcpd_actors::model::{TaskStatus, Timestamp};
use mcpd_actors::store::{EntityKind, Write};

/// A temporary data dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p =
            std::env::temp_dir().join(format!("mcpd-embedded-{}", uuid::Uuid::new_v4().simple()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn task(id: &str) -> Task {
    Task {
        task_id: id.into(),
        pipeline_id: "pipe-1".into(),
        task_type: "x".into(),
        created_at: Timestamp::from_millis(1_705_314_600_123),
        ..Default::default()
    }
}

#[tokio::test]
async fn two_stores_on_one_dir_see_each_others_writes_and_race_fairly() {
    let dir = TempDir::new();
    let a = EmbeddedStore::open(&dir.0, Synchronous::Normal).unwrap();
    let b = EmbeddedStore::open(&dir.0, Synchronous::Full).unwrap();
    let mut t = task("t-shared");
    a.apply(Transition::new().write(Write::insert(&mut t)))
        .await
        .unwrap();
    let seen = b.get_task("t-shared").await.unwrap();
    assert_eq!(seen.as_ref(), Some(&t));

    // Both update from the same read: the second writer, on the other "process", conflicts.
    let (mut x, mut y) = (t.clone(), t);
    x.status = TaskStatus::Assigned;
    y.status = TaskStatus::Cancelled;
    b.apply(Transition::new().write(Write::update_from(&mut x, "pending")))
        .await
        .unwrap();
    let r = a
        .apply(Transition::new().write(Write::update_from(&mut y, "pending")))
        .await;
    match r {
        Err(StoreError::Conflict {
            kind: EntityKind::Task,
            reason,
            ..
        }) => {
            assert_eq!(reason, "expected status pending, found assigned")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.get_task("t-shared").await.unwrap(), Some(x));
}

#[tokio::test]
async fn acknowledged_writes_survive_reopen_and_migrations_run_once() {
    let dir = TempDir::new();
    let mut t = task("t-durable");
    let first_applied = {
        let s = EmbeddedStore::open(&dir.0, Synchronous::Normal).unwrap();
        s.apply(Transition::new().write(Write::insert(&mut t)))
            .await
            .unwrap();
        let v = s.schema_version().clone();
        assert_eq!(v.current_version, CURRENT_VERSION);
        assert_eq!(v.migrations.len(), 1);
        v
    };
    let s = EmbeddedStore::open(&dir.0, Synchronous::Normal).unwrap();
    assert_eq!(s.get_task("t-durable").await.unwrap(), Some(t));
    assert_eq!(
        s.schema_version(),
        &first_applied,
        "reopen applies nothing again"
    );
    assert_eq!(s.path(), dir.0.join(DB_FILE));
}

#[tokio::test]
async fn a_file_from_a_newer_mcpd_is_refused() {
    let dir = TempDir::new();
    let s = EmbeddedStore::open(&dir.0, Synchronous::Normal).unwrap();
    let mut v = s.schema_version().clone();
    v.current_version = CURRENT_VERSION + 1;
    s.inner
        .writer
        .lock()
        .execute(
            "UPDATE schema_version SET current_version = ?1, doc = ?2",
            rusqlite::params![v.current_version, serde_json::to_string(&v).unwrap()],
        )
        .unwrap();
    drop(s);
    let e = EmbeddedStore::open(&dir.0, Synchronous::Normal)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("newer than this mcpd"), "{e}");
}

#[tokio::test]
async fn an_undecodable_document_is_corrupt_not_a_panic() {
    let dir = TempDir::new();
    let s = EmbeddedStore::open(&dir.0, Synchronous::Normal).unwrap();
    let mut t = task("t-bad");
    s.apply(Transition::new().write(Write::insert(&mut t)))
        .await
        .unwrap();
    s.inner
        .writer
        .lock()
        .execute("UPDATE tasks SET doc = '{\"priority\": \"high\"}'", [])
        .unwrap();
    match s.get_task("t-bad").await {
        Err(StoreError::Corrupt {
            collection: "tasks",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_held_write_lock_times_out_instead_of_hanging() {
    let dir = TempDir::new();
    let s = EmbeddedStore::open(&dir.0, Synchronous::Normal).unwrap();
    // Another "process" holding the write lock past the busy timeout.
    let other = open_connection(&s.inner.path, false).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    s.inner
        .writer
        .lock()
        .busy_timeout(Duration::from_millis(50))
        .unwrap();
    let mut t = task("t-busy");
    let r = s
        .apply(Transition::new().write(Write::insert(&mut t)))
        .await;
    assert!(matches!(r, Err(StoreError::Timeout(_))), "{r:?}");
    assert!(r.unwrap_err().is_retryable());
    other.execute_batch("ROLLBACK").unwrap();
    s.apply(Transition::new().write(Write::insert(&mut t)))
        .await
        .unwrap();
}

#[test]
fn sqlite_errors_map_to_store_errors() {
    let failure = |code, extended| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code,
                extended_code: extended,
            },
            None,
        )
    };
    assert!(matches!(
        sql_err("x", failure(ErrorCode::DatabaseBusy, 5)),
        StoreError::Timeout(_)
    ));
    assert!(matches!(
        sql_err("x", failure(ErrorCode::DiskFull, 13)),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        sql_err("x", failure(ErrorCode::DatabaseCorrupt, 11)),
        StoreError::Corrupt { .. }
    ));
    let e = sql_err("insert task", failure(ErrorCode::ConstraintViolation, 19));
    assert!(
        matches!(&e, StoreError::Backend(m) if m.starts_with("insert task")),
        "{e:?}"
    );
}
