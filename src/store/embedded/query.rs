//! Reads of the embedded store: gets by id and the filtered, keyset-paged queries.
//!
//! Filters become `WHERE` terms on the query columns (never on the JSON), the order is the
//! query's [`Sort`] (ending in the primary key, so it is total), and a page fetches one row
//! more than its limit to know whether another page follows — so `next` is `None` exactly
//! when nothing does, even when the last page is full.

use mcpd_actors::store::{
    AgentQuery, AuditQuery, EventQuery, MetricQuery, Page, Paged, PipelineQuery, StoreError,
    StoreResult, TaskQuery,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;

use super::cursor::{self, Sort};
use super::sql_err;

/// Decodes a stored document.
pub(super) fn decode<T: DeserializeOwned>(collection: &'static str, doc: &str) -> StoreResult<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        collection,
        message: e.to_string(),
    })
}

/// A document by primary key.
pub(super) fn get<T: DeserializeOwned>(
    conn: &Connection,
    table: &'static str,
    id_column: &str,
    id: &str,
) -> StoreResult<Option<T>> {
    let sql = format!("SELECT doc FROM {table} WHERE {id_column} = ?1");
    let doc: Option<String> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| sql_err(&format!("get from {table}"), e))?;
    doc.map(|d| decode(table, &d)).transpose()
}

/// A `SELECT` under construction: `WHERE` terms and their parameters.
struct Select {
    table: &'static str,
    sort: Sort,
    terms: Vec<String>,
    params: Vec<Value>,
}

impl Select {
    fn new(table: &'static str, sort: Sort) -> Self {
        Select {
            table,
            sort,
            terms: Vec::new(),
            params: Vec::new(),
        }
    }

    /// `column = ?` when `v` is set.
    fn eq(&mut self, column: &str, v: Option<Value>) -> &mut Self {
        if let Some(v) = v {
            self.terms.push(format!("{column} = ?"));
            self.params.push(v);
        }
        self
    }

    /// `column IN (?, …)` when `values` is not empty.
    fn any_of(&mut self, column: &str, values: Vec<&'static str>) -> &mut Self {
        if !values.is_empty() {
            let marks = vec!["?"; values.len()].join(", ");
            self.terms.push(format!("{column} IN ({marks})"));
            self.params
                .extend(values.into_iter().map(|s| Value::Text(s.into())));
        }
        self
    }

    fn live_only(&mut self, include_deleted: bool) -> &mut Self {
        if !include_deleted {
            self.terms.push("is_deleted = 0".into());
        }
        self
    }

    /// Runs the page: documents decoded as `T`, and the next cursor.
    fn run<T: DeserializeOwned>(mut self, conn: &Connection, page: &Page) -> StoreResult<Paged<T>> {
        page.check()?;
        if let Some(after) = &page.after {
            let key = self.sort.decode(after)?;
            let clause = self.sort.after_clause(&key, &mut self.params);
            self.terms.push(clause);
        }
        let filter = if self.terms.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.terms.join(" AND "))
        };
        let sql = format!(
            "SELECT doc, {} FROM {}{filter} ORDER BY {} LIMIT ?",
            self.sort.columns(),
            self.table,
            self.sort.order_by()
        );
        self.params.push(Value::Integer(i64::from(page.limit) + 1));
        let op = format!("query {}", self.table);
        let nkeys = self.sort.keys.len();
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| sql_err(&op, e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(self.params), |r| {
                let doc: String = r.get(0)?;
                let key = (1..=nkeys)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((doc, key))
            })
            .map_err(|e| sql_err(&op, e))?;
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        for row in rows {
            let (doc, key) = row.map_err(|e| sql_err(&op, e))?;
            if items.len() == page.limit as usize {
                more = true;
                break;
            }
            items.push(decode(self.table, &doc)?);
            last_key = Some(key);
        }
        let next = match (more, last_key) {
            (true, Some(key)) => Some(self.sort.encode(&key)),
            _ => None,
        };
        Ok(Paged { items, next })
    }
}

fn text(s: &Option<String>) -> Option<Value> {
    s.as_ref().map(|s| Value::Text(s.clone()))
}

pub(super) fn tasks<T: DeserializeOwned>(
    conn: &Connection,
    q: &TaskQuery,
    page: &Page,
) -> StoreResult<Paged<T>> {
    let mut s = Select::new("tasks", cursor::TASKS);
    s.eq("pipeline_id", text(&q.pipeline_id))
        .eq("stage", q.stage.map(|v| Value::Integer(v.into())))
        .any_of("status", q.statuses.iter().map(|s| s.as_str()).collect())
        .eq("assigned_agent_id", text(&q.assigned_agent_id))
        .eq("task_type", text(&q.task_type))
        .live_only(q.include_deleted);
    s.run(conn, page)
}

pub(super) fn pipelines<T: DeserializeOwned>(
    conn: &Connection,
    q: &PipelineQuery,
    page: &Page,
) -> StoreResult<Paged<T>> {
    let mut s = Select::new("pipelines", cursor::PIPELINES);
    s.any_of("status", q.statuses.iter().map(|s| s.as_str()).collect())
        .eq("created_by", text(&q.created_by))
        .live_only(q.include_deleted);
    s.run(conn, page)
}

pub(super) fn agents<T: DeserializeOwned>(
    conn: &Connection,
    q: &AgentQuery,
    page: &Page,
) -> StoreResult<Paged<T>> {
    let mut s = Select::new("agents", cursor::AGENTS);
    s.eq(
        "agent_type",
        q.agent_type.map(|t| Value::Text(t.as_str().into())),
    )
    .any_of("status", q.statuses.iter().map(|s| s.as_str()).collect())
    .live_only(q.include_deleted);
    if let Some(cap) = &q.capability {
        s.terms.push(
            "agent_id IN (SELECT agent_id FROM agent_capabilities WHERE capability = ?)".into(),
        );
        s.params.push(Value::Text(cap.clone()));
    }
    s.run(conn, page)
}

pub(super) fn events<T: DeserializeOwned>(
    conn: &Connection,
    q: &EventQuery,
    page: &Page,
) -> StoreResult<Paged<T>> {
    let mut s = Select::new("events", cursor::EVENTS);
    s.eq("event_type", text(&q.event_type))
        .eq("target_id", text(&q.target_id))
        .eq("pipeline_id", text(&q.pipeline_id));
    s.run(conn, page)
}

pub(super) fn audit_logs<T: DeserializeOwned>(
    conn: &Connection,
    q: &AuditQuery,
    page: &Page,
) -> StoreResult<Paged<T>> {
    let mut s = Select::new("audit_logs", cursor::AUDIT_LOGS);
    s.eq(
        "resource_type",
        q.resource_type.map(|t| Value::Text(t.as_str().into())),
    )
    .eq("resource_id", text(&q.resource_id))
    .eq("actor_id", text(&q.actor_id))
    .eq("action", q.action.map(|a| Value::Text(a.as_str().into())));
    s.run(conn, page)
}

pub(super) fn metrics<T: DeserializeOwned>(
    conn: &Connection,
    q: &MetricQuery,
    page: &Page,
) -> StoreResult<Paged<T>> {
    let mut s = Select::new("metrics", cursor::METRICS);
    s.eq("metric_name", text(&q.metric_name));
    if let Some(since) = q.since {
        s.terms.push("window_start >= ?".into());
        s.params.push(Value::Integer(since.millis()));
    }
    s.run(conn, page)
}
