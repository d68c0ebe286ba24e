//! A write the embedded store acknowledged survives `kill -9` of the process that made it.
//!
//! The test re-runs its own binary as a child that writes transitions and reports each one the
//! store acknowledged on stdout; the parent kills it with SIGKILL mid-stream, reopens the
//! database and checks that every acknowledged write is there, whole.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use mcpd::store::embedded::{EmbeddedStore, Synchronous};
use mcpd_actors::model::{Task, Timestamp};
use mcpd_actors::store::{Store, Transition, Write};

const CHILD_ENV: &str = "MCPD_DURABILITY_CHILD_DIR";

/// The child: writes tasks forever, printing the id of each acknowledged one. Not a test of
/// its own (hence ignored); the test below runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of acknowledged_writes_survive_kill_9"]
async fn durability_child_writer() {
    let dir = std::env::var(CHILD_ENV).expect("run by acknowledged_writes_survive_kill_9");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.as_ref(), Synchronous::Normal).unwrap());
    for i in 0u64.. {
        let mut t = Task {
            task_id: format!("task-{i:06}"),
            pipeline_id: "p".into(),
            task_type: "work".into(),
            created_at: Timestamp::from_millis(1_000 + i as i64),
            ..Default::default()
        };
        store
            .apply(Transition::new().write(Write::insert(&mut t)))
            .await
            .unwrap();
        println!("ack {}", t.task_id);
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = support::temp_dir("durability");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durability_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 200 {
        let line = lines.next().expect("child stopped early").unwrap();
        if let Some(id) = line.strip_prefix("ack ") {
            acked.push(id.to_string());
        }
    }
    // SIGKILL: no destructor, no flush, no clean close of the database.
    child.kill().unwrap();
    child.wait().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(&dir, Synchronous::Normal).unwrap();
        for id in &acked {
            let t = store.get_task(id).await.unwrap();
            assert!(t.is_some(), "acknowledged task {id} lost after kill -9");
            assert_eq!(t.unwrap().revision, 1);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
