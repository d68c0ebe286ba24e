//! The embedded store: SQLite in the data dir (`mcpd.db`), the zero-set-up default backend.
//!
//! **Atomicity.** [`Store::apply`] is one SQLite transaction opened with `BEGIN IMMEDIATE`
//! (the write lock is taken up front, so a transaction never fails half-way on a lock
//! upgrade); every precondition is checked by the `UPDATE` that writes
//! (see [`write`]), and the first failure rolls the whole transaction back.
//! [`Store::apply_batch`] is also one transaction, with a `SAVEPOINT` per transition: a failed
//! transition rolls back to its savepoint only, and the batch costs one commit — one fsync —
//! however many transitions it holds (group commit).
//!
//! **Durability.** WAL mode with `synchronous=NORMAL` by default: a write acknowledged to the
//! caller survives the process being killed (`kill -9`), which is the guarantee mcpd gives;
//! [`Synchronous::Full`] also survives power loss, at one fsync per commit.
//!
//! **Concurrency.** rusqlite is synchronous, so every call runs in `spawn_blocking`. Writes go
//! through one connection behind a mutex (SQLite admits one writer at a time anyway; queueing
//! in-process is cheaper than spinning on the file lock). Reads use a small pool of separate
//! read-only connections: in WAL mode readers see the last commit and never wait for the
//! writer, so a long batch commit does not stall queries. Several mcpd processes on one host
//! may open the same file: `busy_timeout` makes a process wait for another's write lock
//! instead of failing at once; past it the call fails with [`StoreError::Timeout`].

mod cursor;
mod query;
mod schema;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mcpd_actors::model::{Agent, AuditLog, Event, Metric, Pipeline, Task};
use mcpd_actors::store::{
    AgentQuery, AuditQuery, EventQuery, MetricQuery, Page, Paged, PipelineQuery, Store, StoreError,
    StoreResult, TaskQuery, Transition,
};
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use schema::{AppliedMigration, SchemaVersion, CURRENT_VERSION};

/// The database file's name inside the data dir.
pub const DB_FILE: &str = "mcpd.db";

/// How long a connection waits for another connection's (or process's) lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections kept open between calls.
const IDLE_READERS: usize = 4;

/// SQLite's `synchronous` setting for the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Survives a crash of the process (the default).
    #[default]
    Normal,
    /// Also survives power loss: one fsync per commit.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// The embedded SQLite store. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    schema: SchemaVersion,
}

/// Maps a SQLite error to the store's vocabulary; `op` names the operation.
pub(crate) fn sql_err(op: &str, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy => StoreError::Timeout(format!("{op}: database is busy: {e}")),
            ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::OutOfMemory => StoreError::Unavailable(format!("{op}: {e}")),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreError::Corrupt {
                collection: "database",
                message: format!("{op}: {e}"),
            },
            _ => StoreError::Backend(format!("{op}: {e}")),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt {
            collection: "database",
            message: format!("{op}: {e}"),
        },
        _ => StoreError::Backend(format!("{op}: {e}")),
    }
}

fn open_connection(path: &Path, read_only: bool) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_err(&format!("open {}", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_err("open: set busy_timeout", e))?;
    if read_only {
        // A guard, not a permission: readers must never write behind the writer's back.
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| sql_err("open: set query_only", e))?;
    }
    Ok(conn)
}

impl EmbeddedStore {
    /// Opens (creating if needed) `data_dir/mcpd.db`, switches it to WAL mode and applies
    /// pending schema migrations.
    pub fn open(data_dir: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("open: create data dir {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut writer = open_connection(&path, false)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| sql_err("open: set journal_mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "open: {} refused WAL mode (got {mode})",
                path.display()
            )));
        }
        writer
            .pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(|e| sql_err("open: set synchronous", e))?;
        let schema = schema::migrate(&mut writer)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                schema,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version document as found or written at open.
    pub fn schema_version(&self) -> &SchemaVersion {
        &self.inner.schema
    }

    /// Runs `f` on a worker thread with access to the connections.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("{op}: worker failed: {e}")))?
    }

    /// Runs a read on a pooled read connection.
    async fn read<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.blocking(op, move |inner| inner.read(f)).await
    }
}

impl Inner {
    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Applies `txs` in one SQLite transaction, one savepoint each. `results[i]` is already
    /// set for a transition refused before any I/O.
    fn apply_all(&self, txs: &[Transition], results: &mut [Option<StoreResult<()>>]) {
        let conn = self.writer.lock();
        if !conn.is_autocommit() {
            // A previous call died between BEGIN and COMMIT; never build on its leftovers.
            let _ = conn.execute_batch("ROLLBACK");
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = sql_err("apply: begin", e);
            fill(results, |_| true, &err);
            return;
        }
        for (tx, slot) in txs.iter().zip(results.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            if let Err(e) = conn.execute_batch("SAVEPOINT tx") {
                *slot = Some(Err(sql_err("apply: savepoint", e)));
                continue;
            }
            let outcome = write::apply_transition(&conn, tx).and_then(|()| {
                conn.execute_batch("RELEASE tx")
                    .map_err(|e| sql_err("apply: release savepoint", e))
            });
            match outcome {
                Ok(()) => *slot = Some(Ok(())),
                // Refused, or its savepoint could not be released: either way its writes must
                // not reach the commit.
                Err(err) => {
                    if let Err(e) = conn.execute_batch("ROLLBACK TO tx; RELEASE tx") {
                        // The savepoint is unusable: abandon the whole batch.
                        let _ = conn.execute_batch("ROLLBACK");
                        let err = sql_err("apply: roll back savepoint", e);
                        fill(results, |r| !matches!(r, Some(Err(_))), &err);
                        return;
                    }
                    *slot = Some(Err(err));
                }
            }
        }
        let any_applied = results.iter().any(|r| matches!(r, Some(Ok(()))));
        let end = if any_applied { "COMMIT" } else { "ROLLBACK" };
        if let Err(e) = conn.execute_batch(end) {
            let _ = conn.execute_batch("ROLLBACK");
            let err = sql_err("apply: commit", e);
            fill(results, |r| matches!(r, Some(Ok(()))), &err);
        }
    }
}

/// Sets every slot `which` selects to `err`.
fn fill(
    results: &mut [Option<StoreResult<()>>],
    which: impl Fn(&Option<StoreResult<()>>) -> bool,
    err: &StoreError,
) {
    for r in results.iter_mut().filter(|r| which(r)) {
        *r = Some(Err(err.clone()));
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read("ping", |conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(drop)
                .map_err(|e| sql_err("ping", e))
        })
        .await
    }

    async fn apply(&self, tx: Transition) -> StoreResult<()> {
        self.apply_batch(vec![tx])
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("apply: no result".into())))
    }

    async fn apply_batch(&self, txs: Vec<Transition>) -> Vec<StoreResult<()>> {
        // `Transition::check` before any I/O: refused transitions never reach SQLite.
        let mut results: Vec<Option<StoreResult<()>>> =
            txs.iter().map(|t| t.check().err().map(Err)).collect();
        if results.iter().all(Option::is_some) {
            return results.into_iter().flatten().collect();
        }
        let n = txs.len();
        let done = self
            .blocking("apply", move |inner| {
                inner.apply_all(&txs, &mut results);
                Ok(results)
            })
            .await;
        match done {
            Ok(results) => results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(StoreError::Backend("apply: skipped".into()))))
                .collect(),
            Err(e) => vec![Err(e); n],
        }
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        let id = agent_id.to_string();
        self.read("get agent", move |c| {
            query::get(c, "agents", "agent_id", &id)
        })
        .await
    }

    async fn get_task(&self, task_id: &str) -> StoreResult<Option<Task>> {
        let id = task_id.to_string();
        self.read("get task", move |c| query::get(c, "tasks", "task_id", &id))
            .await
    }

    async fn get_pipeline(&self, pipeline_id: &str) -> StoreResult<Option<Pipeline>> {
        let id = pipeline_id.to_string();
        self.read("get pipeline", move |c| {
            query::get(c, "pipelines", "pipeline_id", &id)
        })
        .await
    }

    async fn query_agents(&self, q: &AgentQuery, page: &Page) -> StoreResult<Paged<Agent>> {
        let (q, page) = (q.clone(), page.clone());
        self.read("query agents", move |c| query::agents(c, &q, &page))
            .await
    }

    async fn query_tasks(&self, q: &TaskQuery, page: &Page) -> StoreResult<Paged<Task>> {
        if q.stage.is_some() && q.pipeline_id.is_none() {
            return Err(StoreError::Invalid(
                "task query by stage needs a pipeline_id".into(),
            ));
        }
        let (q, page) = (q.clone(), page.clone());
        self.read("query tasks", move |c| query::tasks(c, &q, &page))
            .await
    }

    async fn query_pipelines(
        &self,
        q: &PipelineQuery,
        page: &Page,
    ) -> StoreResult<Paged<Pipeline>> {
        let (q, page) = (q.clone(), page.clone());
        self.read("query pipelines", move |c| query::pipelines(c, &q, &page))
            .await
    }

    async fn query_events(&self, q: &EventQuery, page: &Page) -> StoreResult<Paged<Event>> {
        let (q, page) = (q.clone(), page.clone());
        self.read("query events", move |c| query::events(c, &q, &page))
            .await
    }

    async fn query_audit_logs(&self, q: &AuditQuery, page: &Page) -> StoreResult<Paged<AuditLog>> {
        let (q, page) = (q.clone(), page.clone());
        self.read("query audit logs", move |c| query::audit_logs(c, &q, &page))
            .await
    }

    async fn put_metrics(&self, metrics: Vec<Metric>) -> StoreResult<()> {
        if metrics.is_empty() {
            return Ok(());
        }
        if metrics.iter().any(|m| m.metric_id.is_empty()) {
            return Err(StoreError::Invalid("metric without a metric_id".into()));
        }
        self.blocking("put metrics", move |inner| {
            let mut conn = inner.writer.lock();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| sql_err("put metrics: begin", e))?;
            write::put_metrics(&tx, &metrics)?;
            tx.commit().map_err(|e| sql_err("put metrics: commit", e))
        })
        .await
    }

    async fn query_metrics(&self, q: &MetricQuery, page: &Page) -> StoreResult<Paged<Metric>> {
        let (q, page) = (q.clone(), page.clone());
        self.read("query metrics", move |c| query::metrics(c, &q, &page))
            .await
    }

    async fn max_lease_token(&self) -> StoreResult<u64> {
        self.read("max lease token", |c| {
            let max: i64 = c
                .query_row("SELECT COALESCE(MAX(lease_token), 0) FROM tasks", [], |r| {
                    r.get(0)
                })
                .map_err(|e| sql_err("max lease token", e))?;
            u64::try_from(max).map_err(|_| StoreError::Corrupt {
                collection: "tasks",
                message: format!("negative lease token {max}"),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
