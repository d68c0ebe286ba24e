//! Queries: filters from the query structs and keyset paging in the orders the trait
//! specifies.
//!
//! Paging is by keyset, not `skip`: the cursor names the last item's sort keys and the next
//! page selects what sorts strictly after it, so pages stay stable while documents are
//! inserted and cost the same however deep. One more item than asked is fetched to know
//! whether there is a next page without a second round trip.

use bson::{doc, Bson, Document};
use futures::TryStreamExt as _;
use serde::de::DeserializeOwned;

use super::codec::{decode, map_err, KeyType, Order, SortKey};
use super::MongoStore;
use mcpd_actors::store::{
    AgentQuery, AuditQuery, EventQuery, MetricQuery, Page, Paged, PipelineQuery, StoreError,
    TaskQuery,
};

const fn key(field: &'static str, desc: bool, ty: KeyType) -> SortKey {
    SortKey { field, desc, ty }
}

/// Tasks: priority (high first), then `created_at`, then id.
pub(crate) const TASK_ORDER: Order = Order {
    tag: "task",
    keys: &[
        key("priority", true, KeyType::Int),
        key("created_at", false, KeyType::Date),
        key("task_id", false, KeyType::Str),
    ],
};
/// Pipelines: newest first.
pub(crate) const PIPELINE_ORDER: Order = Order {
    tag: "pipeline",
    keys: &[
        key("created_at", true, KeyType::Date),
        key("pipeline_id", true, KeyType::Str),
    ],
};
/// Agents: by id.
pub(crate) const AGENT_ORDER: Order = Order {
    tag: "agent",
    keys: &[key("agent_id", false, KeyType::Str)],
};
/// Events: oldest first.
pub(crate) const EVENT_ORDER: Order = Order {
    tag: "event",
    keys: &[
        key("created_at", false, KeyType::Date),
        key("event_id", false, KeyType::Str),
    ],
};
/// Audit records: oldest first.
pub(crate) const AUDIT_ORDER: Order = Order {
    tag: "audit",
    keys: &[
        key("timestamp", false, KeyType::Date),
        key("audit_id", false, KeyType::Str),
    ],
};
/// Metrics: by window start.
pub(crate) const METRIC_ORDER: Order = Order {
    tag: "metric",
    keys: &[
        key("window_start", false, KeyType::Date),
        key("metric_id", false, KeyType::Str),
    ],
};

/// `{field: {$in: values}}` when `values` is not empty.
fn any_of<T: Copy>(filter: &mut Document, field: &str, values: &[T], text: fn(T) -> &'static str) {
    if !values.is_empty() {
        let list: Vec<Bson> = values.iter().map(|v| Bson::from(text(*v))).collect();
        filter.insert(field, doc! {"$in": list});
    }
}

fn not_deleted(filter: &mut Document, include_deleted: bool) {
    if !include_deleted {
        filter.insert("is_deleted", doc! {"$ne": true});
    }
}

pub(crate) fn task_filter(q: &TaskQuery) -> Result<Document, StoreError> {
    let mut f = Document::new();
    if let Some(p) = &q.pipeline_id {
        f.insert("pipeline_id", p.as_str());
    }
    if let Some(stage) = q.stage {
        if q.pipeline_id.is_none() {
            return Err(StoreError::Invalid(
                "task query by stage needs a pipeline_id".into(),
            ));
        }
        f.insert("stage", i64::from(stage));
    }
    any_of(&mut f, "status", &q.statuses, |s| s.as_str());
    if let Some(a) = &q.assigned_agent_id {
        f.insert("assigned_agent_id", a.as_str());
    }
    if let Some(t) = &q.task_type {
        f.insert("task_type", t.as_str());
    }
    not_deleted(&mut f, q.include_deleted);
    Ok(f)
}

pub(crate) fn pipeline_filter(q: &PipelineQuery) -> Document {
    let mut f = Document::new();
    any_of(&mut f, "status", &q.statuses, |s| s.as_str());
    if let Some(c) = &q.created_by {
        f.insert("created_by", c.as_str());
    }
    not_deleted(&mut f, q.include_deleted);
    f
}

pub(crate) fn agent_filter(q: &AgentQuery) -> Document {
    let mut f = Document::new();
    if let Some(t) = q.agent_type {
        f.insert("type", t.as_str());
    }
    any_of(&mut f, "status", &q.statuses, |s| s.as_str());
    if let Some(c) = &q.capability {
        // Equality on an array field matches documents whose array contains the value.
        f.insert("capabilities", c.as_str());
    }
    not_deleted(&mut f, q.include_deleted);
    f
}

pub(crate) fn event_filter(q: &EventQuery) -> Document {
    let mut f = Document::new();
    if let Some(t) = &q.event_type {
        f.insert("event_type", t.as_str());
    }
    if let Some(t) = &q.target_id {
        f.insert("target.id", t.as_str());
    }
    if let Some(p) = &q.pipeline_id {
        f.insert("context.pipeline_id", p.as_str());
    }
    f
}

pub(crate) fn audit_filter(q: &AuditQuery) -> Document {
    let mut f = Document::new();
    if let Some(t) = q.resource_type {
        f.insert("resource_type", t.as_str());
    }
    if let Some(r) = &q.resource_id {
        f.insert("resource_id", r.as_str());
    }
    if let Some(a) = &q.actor_id {
        f.insert("actor.id", a.as_str());
    }
    if let Some(a) = q.action {
        f.insert("action", a.as_str());
    }
    f
}

pub(crate) fn metric_filter(q: &MetricQuery) -> Document {
    let mut f = Document::new();
    if let Some(n) = &q.metric_name {
        f.insert("metric_name", n.as_str());
    }
    if let Some(since) = q.since {
        f.insert(
            "window_start",
            doc! {"$gte": bson::DateTime::from_millis(since.millis())},
        );
    }
    f
}

impl MongoStore {
    /// One page of `collection` matching `filter`, in `order`, after `page.after`.
    pub(super) async fn page<T: DeserializeOwned>(
        &self,
        collection: &'static str,
        order: &Order,
        filter: Document,
        page: &Page,
    ) -> Result<Paged<T>, StoreError> {
        page.check()?;
        let filter = match &page.after {
            None => filter,
            Some(after) => {
                let keyset = order.after_filter(after)?;
                if filter.is_empty() {
                    keyset
                } else {
                    doc! {"$and": [filter, keyset]}
                }
            }
        };
        let op = || format!("query {collection}");
        let limit = page.limit as usize;
        let mut cursor = self
            .coll(collection)
            .find(filter)
            .sort(order.sort())
            .limit(limit as i64 + 1)
            .await
            .map_err(|e| map_err(&op(), collection, e))?;
        let mut docs = Vec::with_capacity(limit + 1);
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| map_err(&op(), collection, e))?
        {
            docs.push(d);
        }
        let next = if docs.len() > limit {
            docs.truncate(limit);
            match docs.last() {
                Some(last) => Some(order.cursor_after(collection, last)?),
                None => None,
            }
        } else {
            None
        };
        let items = docs
            .into_iter()
            .map(|d| decode(collection, d))
            .collect::<Result<Vec<T>, _>>()?;
        Ok(Paged { items, next })
    }
}
