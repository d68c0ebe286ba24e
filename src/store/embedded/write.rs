//! Writes of the embedded store: one [`Transition`] applied inside the caller's SQLite
//! transaction (or savepoint), and metric upserts.
//!
//! Every precondition is part of the `UPDATE` itself (`WHERE id = ? AND revision = ?
//! [AND status = ?] [AND lease_token <= ?]`), so check and write are one step under the
//! write lock `BEGIN IMMEDIATE` holds; when no row changes, one read of the stored row names
//! the precise failure. Nothing here commits or rolls back: the caller does, so a failure
//! anywhere leaves nothing of the transition behind.

use mcpd_actors::model::{AuditLog, Event, Metric};
use mcpd_actors::store::{Entity, EntityKind, Expect, StoreError, StoreResult, Transition, Write};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::sql_err;

/// An entity as a row: its table, key and query columns.
struct Row {
    kind: EntityKind,
    id_column: &'static str,
    id: String,
    /// Query columns and `doc`, in a fixed order per table.
    columns: Vec<(&'static str, Value)>,
    lease_token: Option<i64>,
}

/// A `u64` the model allows but SQLite's signed integers cannot hold.
pub(super) fn to_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v)
        .map_err(|_| StoreError::Invalid(format!("{what} {v} exceeds the store's range")))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn encode<T: serde::Serialize>(doc: &T, what: &str) -> StoreResult<Value> {
    serde_json::to_string(doc)
        .map(Value::Text)
        .map_err(|e| StoreError::Invalid(format!("encode {what}: {e}")))
}

fn row(e: &Entity) -> StoreResult<Row> {
    Ok(match e {
        Entity::Agent(a) => Row {
            kind: EntityKind::Agent,
            id_column: "agent_id",
            id: a.agent_id.clone(),
            columns: vec![
                ("agent_type", text(a.agent_type.as_str())),
                ("status", text(a.status.as_str())),
                ("is_deleted", Value::Integer(a.is_deleted.into())),
                ("created_at", Value::Integer(a.created_at.millis())),
                ("revision", Value::Integer(to_i64(a.revision, "revision")?)),
                ("doc", encode(a, "agent")?),
            ],
            lease_token: None,
        },
        Entity::Task(t) => {
            let lease = to_i64(t.lease_token, "lease token")?;
            Row {
                kind: EntityKind::Task,
                id_column: "task_id",
                id: t.task_id.clone(),
                columns: vec![
                    ("pipeline_id", text(&t.pipeline_id)),
                    ("stage", Value::Integer(t.stage.into())),
                    ("status", text(t.status.as_str())),
                    ("priority", Value::Integer(t.priority.into())),
                    ("created_at", Value::Integer(t.created_at.millis())),
                    (
                        "assigned_agent_id",
                        t.assigned_agent_id.as_deref().map_or(Value::Null, text),
                    ),
                    ("task_type", text(&t.task_type)),
                    ("is_deleted", Value::Integer(t.is_deleted.into())),
                    ("lease_token", Value::Integer(lease)),
                    ("revision", Value::Integer(to_i64(t.revision, "revision")?)),
                    ("doc", encode(t, "task")?),
                ],
                lease_token: Some(lease),
            }
        }
        Entity::Pipeline(p) => Row {
            kind: EntityKind::Pipeline,
            id_column: "pipeline_id",
            id: p.pipeline_id.clone(),
            columns: vec![
                ("status", text(p.status.as_str())),
                ("created_by", text(&p.created_by)),
                ("created_at", Value::Integer(p.created_at.millis())),
                ("priority", Value::Integer(p.priority.into())),
                ("is_deleted", Value::Integer(p.is_deleted.into())),
                ("revision", Value::Integer(to_i64(p.revision, "revision")?)),
                ("doc", encode(p, "pipeline")?),
            ],
            lease_token: None,
        },
    })
}

/// Applies every write, event and audit record of `tx`; the caller owns commit and rollback.
pub(super) fn apply_transition(conn: &Connection, tx: &Transition) -> StoreResult<()> {
    for w in &tx.writes {
        match w {
            Write::Insert(e) => insert(conn, e)?,
            Write::Update { entity, expect } => update(conn, entity, expect)?,
        }
        if let Entity::Agent(a) = w.entity() {
            set_capabilities(conn, &a.agent_id, &a.capabilities)?;
        }
    }
    for e in &tx.events {
        insert_event(conn, e)?;
    }
    for a in &tx.audits {
        insert_audit(conn, a)?;
    }
    Ok(())
}

fn insert(conn: &Connection, e: &Entity) -> StoreResult<()> {
    let r = row(e)?;
    let table = r.kind.collection();
    let names: Vec<_> = r.columns.iter().map(|(c, _)| *c).collect();
    let sql = format!(
        "INSERT INTO {table} ({}, {}) VALUES (?{}) ON CONFLICT ({}) DO NOTHING",
        r.id_column,
        names.join(", "),
        ", ?".repeat(names.len()),
        r.id_column
    );
    let mut params = vec![Value::Text(r.id.clone())];
    params.extend(r.columns.into_iter().map(|(_, v)| v));
    let changed = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
        .map_err(|e| sql_err(&format!("insert {}", r.kind), e))?;
    if changed == 0 {
        return Err(StoreError::Conflict {
            kind: r.kind,
            id: r.id,
            reason: "already exists".into(),
        });
    }
    Ok(())
}

fn update(conn: &Connection, e: &Entity, expect: &Expect) -> StoreResult<()> {
    let r = row(e)?;
    let table = r.kind.collection();
    let sets: Vec<_> = r.columns.iter().map(|(c, _)| format!("{c} = ?")).collect();
    let mut sql = format!(
        "UPDATE {table} SET {} WHERE {} = ? AND revision = ?",
        sets.join(", "),
        r.id_column
    );
    let mut params: Vec<Value> = r.columns.into_iter().map(|(_, v)| v).collect();
    params.push(Value::Text(r.id.clone()));
    params.push(Value::Integer(to_i64(expect.revision, "revision")?));
    if let Some(status) = expect.status {
        sql.push_str(" AND status = ?");
        params.push(text(status));
    }
    if let Some(token) = r.lease_token {
        sql.push_str(" AND lease_token <= ?");
        params.push(Value::Integer(token));
    }
    let op = format!("update {}", r.kind);
    let changed = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
        .map_err(|e| sql_err(&op, e))?;
    if changed == 1 {
        return Ok(());
    }
    Err(diagnose(
        conn,
        r.kind,
        r.id_column,
        &r.id,
        expect,
        r.lease_token,
    )?)
}

/// Names why an update matched no row: missing, fenced, wrong status or stale revision, in
/// that order (a fenced writer is told so even when its revision is stale too).
fn diagnose(
    conn: &Connection,
    kind: EntityKind,
    id_column: &str,
    id: &str,
    expect: &Expect,
    offered: Option<i64>,
) -> StoreResult<StoreError> {
    let lease = if kind == EntityKind::Task {
        "lease_token"
    } else {
        "0"
    };
    let sql = format!(
        "SELECT revision, status, {lease} FROM {} WHERE {id_column} = ?1",
        kind.collection()
    );
    let stored: Option<(i64, String, i64)> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(|e| sql_err(&format!("update {kind}: read stored"), e))?;
    let Some((revision, status, token)) = stored else {
        return Ok(StoreError::NotFound {
            kind,
            id: id.to_string(),
        });
    };
    if let Some(offered) = offered.filter(|o| *o < token) {
        return Ok(StoreError::Fenced {
            task_id: id.to_string(),
            offered: offered as u64,
            current: token as u64,
        });
    }
    let reason = match expect.status {
        Some(want) if want != status => format!("expected status {want}, found {status}"),
        _ => format!("expected revision {}, found {revision}", expect.revision),
    };
    Ok(StoreError::Conflict {
        kind,
        id: id.to_string(),
        reason,
    })
}

/// Replaces an agent's capability rows with its document's list.
fn set_capabilities(conn: &Connection, agent_id: &str, caps: &[String]) -> StoreResult<()> {
    let op = |e| sql_err("write agent capabilities", e);
    conn.prepare_cached("DELETE FROM agent_capabilities WHERE agent_id = ?1")
        .and_then(|mut s| s.execute([agent_id]))
        .map_err(op)?;
    let mut ins = conn
        .prepare_cached(
            "INSERT INTO agent_capabilities (capability, agent_id) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )
        .map_err(op)?;
    for c in caps {
        ins.execute([c.as_str(), agent_id]).map_err(op)?;
    }
    Ok(())
}

fn insert_event(conn: &Connection, e: &Event) -> StoreResult<()> {
    let doc = serde_json::to_string(e)
        .map_err(|err| StoreError::Invalid(format!("encode event: {err}")))?;
    let changed = conn
        .prepare_cached(
            "INSERT INTO events (event_id, event_type, target_type, target_id, pipeline_id,
                                 created_at, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (event_id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                e.event_id,
                e.event_type,
                e.target.target_type.as_str(),
                e.target.id,
                e.context.pipeline_id,
                e.created_at.millis(),
                doc,
            ])
        })
        .map_err(|err| sql_err("insert event", err))?;
    if changed == 0 {
        // Ids are generated; a repeat means the caller re-sent a transition.
        return Err(StoreError::Invalid(format!(
            "event {} already stored",
            e.event_id
        )));
    }
    Ok(())
}

fn insert_audit(conn: &Connection, a: &AuditLog) -> StoreResult<()> {
    let doc = serde_json::to_string(a)
        .map_err(|err| StoreError::Invalid(format!("encode audit record: {err}")))?;
    let changed = conn
        .prepare_cached(
            "INSERT INTO audit_logs (audit_id, resource_type, resource_id, actor_id, action, ts,
                                     doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (audit_id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                a.audit_id,
                a.resource_type.as_str(),
                a.resource_id,
                a.actor.id,
                a.action.as_str(),
                a.timestamp.millis(),
                doc,
            ])
        })
        .map_err(|err| sql_err("insert audit record", err))?;
    if changed == 0 {
        return Err(StoreError::Invalid(format!(
            "audit record {} already stored",
            a.audit_id
        )));
    }
    Ok(())
}

/// Inserts or replaces metric windows by `metric_id`.
pub(super) fn put_metrics(conn: &Connection, metrics: &[Metric]) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO metrics (metric_id, metric_name, window_start, doc)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (metric_id) DO UPDATE SET metric_name = excluded.metric_name,
                 window_start = excluded.window_start, doc = excluded.doc",
        )
        .map_err(|e| sql_err("put metrics", e))?;
    for m in metrics {
        let doc = serde_json::to_string(m)
            .map_err(|e| StoreError::Invalid(format!("encode metric: {e}")))?;
        stmt.execute(rusqlite::params![
            m.metric_id,
            m.metric_name,
            m.window_start.millis(),
            doc
        ])
        .map_err(|e| sql_err("put metrics", e))?;
    }
    Ok(())
}
