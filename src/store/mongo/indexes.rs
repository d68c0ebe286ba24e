//! The indexes of the seed (`mcp-database-schema.md`), with explicit stable names, and their
//! creation.
//!
//! Departures from the seed, each marked where it applies:
//! - no TTL index on `agents.last_heartbeat`: it would *delete the registered agent* five
//!   minutes after its last heartbeat. Liveness belongs to the broker's `agents:status` keys,
//!   whose TTL expires a cache entry, not the source of truth. A plain index on the field is
//!   kept for "stale agents" scans.
//! - the seed's `security_context.data_classification` index names a field that does not exist;
//!   the classification lives in `data_accessed.data_classification`, which is indexed instead.
//! - extensions for the store's own queries: `tasks.lease_token` (the fencing floor,
//!   [`mcpd_actors::store::Store::max_lease_token`]) and the keyset order of task queries.
//!
//! Each index is created by its own `createIndexes` command, so one the server refuses (a
//! MongoDB-compatible server without text indexes, an existing index of the same name with
//! other options) is logged with `tracing::warn!` and skipped instead of failing the start or
//! taking the others down with it. Creating an index that exists with the same spec is a no-op.

use bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use super::codec::{error_code, map_err};
use mcpd_actors::store::StoreError;

/// One index: collection, stable name, key pattern and options.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    /// Collection.
    pub collection: &'static str,
    /// Explicit, stable name (what `list_index_names` reports).
    pub name: &'static str,
    /// Key pattern (`1`, `-1` or `"text"` per field).
    pub keys: Document,
    /// Unique.
    pub unique: bool,
    /// Sparse.
    pub sparse: bool,
    /// TTL: documents expire this many seconds after the indexed date.
    pub expire_after_secs: Option<u64>,
}

impl IndexSpec {
    fn new(collection: &'static str, name: &'static str, keys: Document) -> Self {
        IndexSpec {
            collection,
            name,
            keys,
            unique: false,
            sparse: false,
            expire_after_secs: None,
        }
    }
    fn unique(mut self) -> Self {
        self.unique = true;
        self
    }
    fn sparse(mut self) -> Self {
        self.sparse = true;
        self
    }
    fn ttl(mut self, secs: u64) -> Self {
        self.expire_after_secs = Some(secs);
        self
    }

    fn model(&self) -> IndexModel {
        let mut options = IndexOptions::builder().name(self.name.to_string()).build();
        if self.unique {
            options.unique = Some(true);
        }
        if self.sparse {
            options.sparse = Some(true);
        }
        options.expire_after = self.expire_after_secs.map(std::time::Duration::from_secs);
        IndexModel::builder()
            .keys(self.keys.clone())
            .options(options)
            .build()
    }
}

/// Every index the store creates, per collection.
pub fn index_specs() -> Vec<IndexSpec> {
    use IndexSpec as I;
    vec![
        // agents
        I::new("agents", "agents_agent_id_unique", doc! {"agent_id": 1}).unique(),
        I::new(
            "agents",
            "agents_type_status",
            doc! {"type": 1, "status": 1},
        ),
        I::new("agents", "agents_capabilities", doc! {"capabilities": 1}),
        // Seed: TTL 300 s on last_heartbeat. Deliberately a plain index (see module doc).
        I::new(
            "agents",
            "agents_last_heartbeat",
            doc! {"last_heartbeat": 1},
        ),
        I::new(
            "agents",
            "agents_success_rate_desc",
            doc! {"performance_metrics.success_rate": -1},
        ),
        I::new(
            "agents",
            "agents_tasks_completed_desc",
            doc! {"performance_metrics.tasks_completed": -1},
        ),
        I::new(
            "agents",
            "agents_text",
            doc! {"name": "text", "capabilities": "text", "tags": "text"},
        ),
        I::new(
            "agents",
            "agents_type_status_success_rate",
            doc! {"type": 1, "status": 1, "performance_metrics.success_rate": -1},
        ),
        I::new(
            "agents",
            "agents_status_last_heartbeat",
            doc! {"status": 1, "last_heartbeat": -1},
        ),
        // tasks
        I::new("tasks", "tasks_task_id_unique", doc! {"task_id": 1}).unique(),
        I::new(
            "tasks",
            "tasks_pipeline_stage",
            doc! {"pipeline_id": 1, "stage": 1},
        ),
        I::new(
            "tasks",
            "tasks_agent_status",
            doc! {"assigned_agent_id": 1, "status": 1},
        ),
        I::new(
            "tasks",
            "tasks_status_priority_created",
            doc! {"status": 1, "priority": -1, "created_at": 1},
        ),
        I::new(
            "tasks",
            "tasks_status_deadline",
            doc! {"status": 1, "deadline": 1},
        ),
        I::new(
            "tasks",
            "tasks_status_type",
            doc! {"status": 1, "task_type": 1},
        ),
        I::new("tasks", "tasks_created_at_desc", doc! {"created_at": -1}),
        I::new("tasks", "tasks_deadline_sparse", doc! {"deadline": 1}).sparse(),
        I::new(
            "tasks",
            "tasks_completed_at_sparse",
            doc! {"completed_at": -1},
        )
        .sparse(),
        I::new(
            "tasks",
            "tasks_processing_time_desc",
            doc! {"performance_metrics.processing_time": -1},
        ),
        I::new(
            "tasks",
            "tasks_quality_overall_desc",
            doc! {"quality_scores.overall": -1},
        ),
        I::new(
            "tasks",
            "tasks_pipeline_status_priority",
            doc! {"pipeline_id": 1, "status": 1, "priority": -1},
        ),
        I::new(
            "tasks",
            "tasks_agent_status_created",
            doc! {"assigned_agent_id": 1, "status": 1, "created_at": -1},
        ),
        // Extension: the fencing floor (`max_lease_token`: sort by lease_token desc, limit 1).
        I::new("tasks", "tasks_lease_token_desc", doc! {"lease_token": -1}),
        // Extension: the keyset order of `query_tasks` (priority desc, created_at, task_id).
        I::new(
            "tasks",
            "tasks_query_order",
            doc! {"priority": -1, "created_at": 1, "task_id": 1},
        ),
        // pipelines
        I::new(
            "pipelines",
            "pipelines_pipeline_id_unique",
            doc! {"pipeline_id": 1},
        )
        .unique(),
        I::new(
            "pipelines",
            "pipelines_status_created",
            doc! {"status": 1, "created_at": -1},
        ),
        I::new(
            "pipelines",
            "pipelines_created_by_created",
            doc! {"created_by": 1, "created_at": -1},
        ),
        I::new(
            "pipelines",
            "pipelines_status_priority",
            doc! {"status": 1, "priority": -1},
        ),
        I::new(
            "pipelines",
            "pipelines_status_current_stage",
            doc! {"status": 1, "current_stage": 1},
        ),
        I::new(
            "pipelines",
            "pipelines_created_at_desc",
            doc! {"created_at": -1},
        ),
        I::new(
            "pipelines",
            "pipelines_deadline_sparse",
            doc! {"deadline": 1},
        )
        .sparse(),
        I::new(
            "pipelines",
            "pipelines_completed_at_sparse",
            doc! {"completed_at": -1},
        )
        .sparse(),
        I::new(
            "pipelines",
            "pipelines_text",
            doc! {"name": "text", "description": "text", "tags": "text"},
        ),
        I::new(
            "pipelines",
            "pipelines_status_priority_created",
            doc! {"status": 1, "priority": -1, "created_at": -1},
        ),
        // events
        I::new("events", "events_event_id_unique", doc! {"event_id": 1}).unique(),
        I::new(
            "events",
            "events_type_created",
            doc! {"event_type": 1, "created_at": -1},
        ),
        I::new(
            "events",
            "events_target_created",
            doc! {"target.type": 1, "target.id": 1, "created_at": -1},
        ),
        I::new("events", "events_created_at_desc", doc! {"created_at": -1}),
        I::new("events", "events_expires_at_ttl", doc! {"expires_at": 1}).ttl(0),
        I::new(
            "events",
            "events_processed_created",
            doc! {"processed": 1, "created_at": 1},
        ),
        I::new(
            "events",
            "events_correlation_id",
            doc! {"context.correlation_id": 1},
        ),
        I::new(
            "events",
            "events_type_processed_created",
            doc! {"event_type": 1, "processed": 1, "created_at": -1},
        ),
        // audit_logs
        I::new(
            "audit_logs",
            "audit_logs_audit_id_unique",
            doc! {"audit_id": 1},
        )
        .unique(),
        I::new(
            "audit_logs",
            "audit_logs_actor_timestamp",
            doc! {"actor.id": 1, "timestamp": -1},
        ),
        I::new(
            "audit_logs",
            "audit_logs_resource_timestamp",
            doc! {"resource_type": 1, "resource_id": 1, "timestamp": -1},
        ),
        I::new(
            "audit_logs",
            "audit_logs_hipaa_timestamp",
            doc! {"compliance_flags.hipaa_relevant": 1, "timestamp": -1},
        ),
        // Seed says `security_context.data_classification`; the field lives in `data_accessed`.
        I::new(
            "audit_logs",
            "audit_logs_classification_timestamp",
            doc! {"data_accessed.data_classification": 1, "timestamp": -1},
        ),
        I::new(
            "audit_logs",
            "audit_logs_timestamp_desc",
            doc! {"timestamp": -1},
        ),
        I::new(
            "audit_logs",
            "audit_logs_retention_sparse",
            doc! {"retention_until": 1},
        )
        .sparse(),
        I::new(
            "audit_logs",
            "audit_logs_risk_timestamp",
            doc! {"risk_level": 1, "timestamp": -1},
        ),
        I::new(
            "audit_logs",
            "audit_logs_action_actor_type_timestamp",
            doc! {"action": 1, "actor.type": 1, "timestamp": -1},
        ),
        // metrics
        I::new("metrics", "metrics_metric_id_unique", doc! {"metric_id": 1}).unique(),
        I::new(
            "metrics",
            "metrics_name_agent_window",
            doc! {"metric_name": 1, "dimensions.agent_id": 1, "window_start": -1},
        ),
        I::new(
            "metrics",
            "metrics_window",
            doc! {"window_start": -1, "window_end": -1},
        ),
        I::new(
            "metrics",
            "metrics_created_at_desc",
            doc! {"created_at": -1},
        ),
        I::new("metrics", "metrics_expires_at_ttl", doc! {"expires_at": 1}).ttl(0),
        I::new(
            "metrics",
            "metrics_agent_type_name_window",
            doc! {"dimensions.agent_type": 1, "metric_name": 1, "window_start": -1},
        ),
        I::new(
            "metrics",
            "metrics_task_type_name_window",
            doc! {"dimensions.task_type": 1, "metric_name": 1, "window_start": -1},
        ),
        I::new(
            "metrics",
            "metrics_pipeline_name_window",
            doc! {"dimensions.pipeline_id": 1, "metric_name": 1, "window_start": -1},
        ),
        I::new(
            "metrics",
            "metrics_name_environment_window",
            doc! {"metric_name": 1, "dimensions.environment": 1, "window_start": -1},
        ),
    ]
}

/// Server error codes that mean "this index is refused" rather than "the server is in
/// trouble": the index is skipped with a warning.
fn refused(err: &mongodb::error::Error) -> bool {
    const UNAUTHORIZED: i32 = 13;
    matches!(err.kind.as_ref(), ErrorKind::Command(_))
        && error_code(err) != Some(UNAUTHORIZED)
        && !err.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
}

/// Creates every index of [`index_specs`]; returns the names of those the server refused
/// (each logged with `tracing::warn!`). A refused unique index, and any connection failure,
/// abort with the error (a migration is then not recorded as applied).
pub async fn ensure_indexes(db: &Database) -> Result<Vec<String>, StoreError> {
    let mut skipped = Vec::new();
    for spec in index_specs() {
        let coll = db.collection::<Document>(spec.collection);
        match coll.create_index(spec.model()).await {
            Ok(_) => {}
            // A unique index is what makes an insert of an existing id a conflict (and one
            // document per id the basis of compare-and-set): without it mcpd must not run.
            Err(e) if refused(&e) && !spec.unique => {
                tracing::warn!(
                    collection = spec.collection,
                    index = spec.name,
                    error = %e,
                    "index refused by the server; continuing without it"
                );
                skipped.push(spec.name.to_string());
            }
            Err(e) => {
                return Err(map_err(
                    &format!("create index {}.{}", spec.collection, spec.name),
                    spec.collection,
                    e,
                ))
            }
        }
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_there_is_no_heartbeat_ttl() {
        let specs = index_specs();
        let mut names: Vec<_> = specs.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "duplicate index names");
        for s in &specs {
            assert!(
                s.name.starts_with(s.collection),
                "{} on {}",
                s.name,
                s.collection
            );
            if s.keys.contains_key("last_heartbeat") {
                assert_eq!(s.expire_after_secs, None, "{}", s.name);
            }
        }
        let ttl: Vec<_> = specs
            .iter()
            .filter(|s| s.expire_after_secs.is_some())
            .map(|s| s.name)
            .collect();
        assert_eq!(ttl, ["events_expires_at_ttl", "metrics_expires_at_ttl"]);
    }
}
