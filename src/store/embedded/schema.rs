//! The embedded store's SQL schema and its migrations.
//!
//! Each collection is a table holding the full document as JSON text (`doc`, the one source
//! of every field read back) plus copies of the fields that queries filter and sort on and
//! that compare-and-set checks (`status`, `revision`, `lease_token`, …). Those columns are
//! written from the same document in the same statement, so they never drift from it.
//! Timestamps are integer milliseconds, so ordering is numeric.
//!
//! Agent capabilities live in a side table `(capability, agent_id)` rather than being matched
//! with `json_each` over the document: the capability filter is what the dispatcher asks most
//! often, and a side table with that primary key answers it from an index, where `json_each`
//! would scan and parse every agent document.
//!
//! The `schema_version` row mirrors the seed's document (`current_version` and the list of
//! applied migrations). Migrations run at open inside one `BEGIN IMMEDIATE` transaction, so
//! two processes opening the same file at once apply each migration exactly once.

use mcpd_actors::model::Timestamp;
use mcpd_actors::store::{StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::sql_err;

/// One forward migration.
struct Migration {
    version: u32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "initial schema: collections as JSON documents with query columns and indexes",
    sql: r#"
CREATE TABLE agents (
    agent_id    TEXT PRIMARY KEY NOT NULL,
    agent_type  TEXT NOT NULL,
    status      TEXT NOT NULL,
    is_deleted  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    revision    INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX agents_type_status ON agents (agent_type, status);
CREATE INDEX agents_status ON agents (status);

CREATE TABLE agent_capabilities (
    capability  TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    PRIMARY KEY (capability, agent_id)
) WITHOUT ROWID;
CREATE INDEX agent_capabilities_agent ON agent_capabilities (agent_id);

CREATE TABLE tasks (
    task_id           TEXT PRIMARY KEY NOT NULL,
    pipeline_id       TEXT NOT NULL,
    stage             INTEGER NOT NULL,
    status            TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    assigned_agent_id TEXT,
    task_type         TEXT NOT NULL,
    is_deleted        INTEGER NOT NULL,
    lease_token       INTEGER NOT NULL,
    revision          INTEGER NOT NULL,
    doc               TEXT NOT NULL
);
CREATE INDEX tasks_order ON tasks (priority DESC, created_at, task_id);
CREATE INDEX tasks_status_order ON tasks (status, priority DESC, created_at, task_id);
CREATE INDEX tasks_pipeline_stage ON tasks (pipeline_id, stage, priority DESC, created_at);
CREATE INDEX tasks_agent_status ON tasks (assigned_agent_id, status)
    WHERE assigned_agent_id IS NOT NULL;
CREATE INDEX tasks_type_status ON tasks (task_type, status);
CREATE INDEX tasks_lease_token ON tasks (lease_token);

CREATE TABLE pipelines (
    pipeline_id TEXT PRIMARY KEY NOT NULL,
    status      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    priority    INTEGER NOT NULL,
    is_deleted  INTEGER NOT NULL,
    revision    INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX pipelines_order ON pipelines (created_at DESC, pipeline_id DESC);
CREATE INDEX pipelines_status ON pipelines (status, created_at DESC, pipeline_id DESC);
CREATE INDEX pipelines_created_by ON pipelines (created_by, created_at DESC, pipeline_id DESC);

CREATE TABLE events (
    event_id    TEXT PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    pipeline_id TEXT,
    created_at  INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX events_order ON events (created_at, event_id);
CREATE INDEX events_type ON events (event_type, created_at, event_id);
CREATE INDEX events_target ON events (target_id, created_at, event_id);
CREATE INDEX events_pipeline ON events (pipeline_id, created_at, event_id)
    WHERE pipeline_id IS NOT NULL;

CREATE TABLE audit_logs (
    audit_id      TEXT PRIMARY KEY NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    action        TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    doc           TEXT NOT NULL
);
CREATE INDEX audit_logs_order ON audit_logs (ts, audit_id);
CREATE INDEX audit_logs_resource ON audit_logs (resource_id, resource_type, ts);
CREATE INDEX audit_logs_actor ON audit_logs (actor_id, ts);
CREATE INDEX audit_logs_action ON audit_logs (action, ts);

CREATE TABLE metrics (
    metric_id    TEXT PRIMARY KEY NOT NULL,
    metric_name  TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    doc          TEXT NOT NULL
);
CREATE INDEX metrics_order ON metrics (window_start, metric_id);
CREATE INDEX metrics_name ON metrics (metric_name, window_start, metric_id);
"#,
}];

/// The schema version this build writes.
pub const CURRENT_VERSION: u32 = 1;

/// The `schema_version` document, as in the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// Always `schema_version`.
    #[serde(rename = "_id")]
    pub id: String,
    /// The latest migration applied.
    pub current_version: u32,
    /// Every migration applied, oldest first.
    pub migrations: Vec<AppliedMigration>,
}

/// An entry of [`SchemaVersion::migrations`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppliedMigration {
    /// Its version.
    pub version: u32,
    /// What it did.
    pub description: String,
    /// When it ran.
    pub applied_at: Timestamp,
}

/// Creates or upgrades the schema; refuses a file written by a newer mcpd.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<SchemaVersion> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err("open: begin migration", e))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            id TEXT PRIMARY KEY NOT NULL,
            current_version INTEGER NOT NULL,
            doc TEXT NOT NULL)",
    )
    .map_err(|e| sql_err("open: create schema_version", e))?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT doc FROM schema_version WHERE id = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_err("open: read schema_version", e))?;
    let mut version = match stored {
        Some(doc) => {
            serde_json::from_str::<SchemaVersion>(&doc).map_err(|e| StoreError::Corrupt {
                collection: "schema_version",
                message: e.to_string(),
            })?
        }
        None => SchemaVersion {
            id: "schema_version".into(),
            current_version: 0,
            migrations: Vec::new(),
        },
    };
    if version.current_version > CURRENT_VERSION {
        return Err(StoreError::Invalid(format!(
            "database schema version {} is newer than this mcpd supports ({CURRENT_VERSION})",
            version.current_version
        )));
    }
    let pending: Vec<_> = MIGRATIONS
        .iter()
        .filter(|m| m.version > version.current_version)
        .collect();
    if pending.is_empty() {
        return Ok(version);
    }
    for m in pending {
        tx.execute_batch(m.sql)
            .map_err(|e| sql_err("open: apply migration", e))?;
        version.current_version = m.version;
        version.migrations.push(AppliedMigration {
            version: m.version,
            description: m.description.into(),
            applied_at: Timestamp::now_utc(),
        });
    }
    let doc = serde_json::to_string(&version)
        .map_err(|e| StoreError::Backend(format!("open: encode schema_version: {e}")))?;
    tx.execute(
        "INSERT INTO schema_version (id, current_version, doc) VALUES ('schema_version', ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET current_version = excluded.current_version, doc = excluded.doc",
        rusqlite::params![version.current_version, doc],
    )
    .map_err(|e| sql_err("open: write schema_version", e))?;
    tx.commit()
        .map_err(|e| sql_err("open: commit migration", e))?;
    Ok(version)
}
