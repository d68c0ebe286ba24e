//! The MongoDB store: the source of truth in the seed's six collections (`agents`, `tasks`,
//! `pipelines`, `events`, `audit_logs`, `metrics`), through the official `mongodb` driver.
//!
//! It owns the mapping of the [`Store`] contract onto MongoDB:
//! - **atomicity** ([`apply`](Store::apply)): one multi-document transaction per transition on
//!   a replica set or sharded cluster; in-order, per-document-atomic writes on a standalone
//!   server, which has no transactions (see the `apply` module for what that gives up).
//! - **concurrency control**: compare-and-set through the replacement filter (`revision`,
//!   optionally `status`) and fencing of task writes (`lease_token` never goes down).
//! - **schema**: indexes and the seed's `schema_version` document, by [`MongoStore::migrate`],
//!   which [`MongoStore::connect`] runs.
//! - **encoding**: documents are `Collection<Document>` converted by [`codec`], so dates are
//!   native BSON dates (TTL indexes and range queries depend on it).
//!
//! Layout: [`codec`] (BSON and error conversions, cursors), [`indexes`], [`migrate`], `apply`
//! (transitions) and `query` (filters, keyset paging).

mod apply;
pub mod codec;
pub mod indexes;
pub mod migrate;
mod query;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use mongodb::{Client, Collection, Database};

use mcpd_actors::model::{Agent, AuditLog, Event, Metric, Pipeline, Task};
use mcpd_actors::store::{
    AgentQuery, AuditQuery, EventQuery, MetricQuery, Page, Paged, PipelineQuery, Store, StoreError,
    StoreResult, TaskQuery, Transition,
};

use codec::{decode, encode, is_duplicate_key, map_err};
pub use migrate::{Migration, MigrationReport};
use query::{
    agent_filter, audit_filter, event_filter, metric_filter, pipeline_filter, task_filter,
    AGENT_ORDER, AUDIT_ORDER, EVENT_ORDER, METRIC_ORDER, PIPELINE_ORDER, TASK_ORDER,
};

/// Transitions of one [`Store::apply_batch`] run concurrently at most this many at a time.
const BATCH_CONCURRENCY: usize = 16;

/// The MongoDB implementation of [`Store`]. Cheap to clone (the driver's client is a handle to
/// a shared connection pool).
#[derive(Clone, Debug)]
pub struct MongoStore {
    client: Client,
    db: Database,
    /// Whether the deployment runs multi-document transactions (replica set or mongos).
    transactions: bool,
}

impl MongoStore {
    /// Connects to `uri`, checks the server answers, detects whether it runs transactions,
    /// and brings database `database` to the current schema ([`MongoStore::migrate`]).
    pub async fn connect(uri: &str, database: &str) -> Result<MongoStore, StoreError> {
        if database.is_empty() {
            return Err(StoreError::Invalid("empty mongodb database name".into()));
        }
        let mut options = mongodb::options::ClientOptions::parse(uri)
            .await
            .map_err(|e| match map_err("parse mongodb uri", "connect", e) {
                StoreError::Backend(m) => StoreError::Invalid(m),
                other => other,
            })?;
        if options.app_name.is_none() {
            options.app_name = Some("mcpd".into());
        }
        let client = Client::with_options(options)
            .map_err(|e| map_err("create mongodb client", "connect", e))?;
        let db = client.database(database);
        let mut store = MongoStore {
            client,
            db,
            transactions: false,
        };
        store.ping().await?;
        store.transactions = store.detect_transactions().await?;
        if store.transactions {
            tracing::info!(database, "mongodb store: transactions available");
        } else {
            tracing::warn!(
                database,
                "mongodb store: standalone server without transactions; a transition's writes \
                 are applied in order but are NOT atomic together (use a replica set)"
            );
        }
        let report = store.migrate().await?;
        if !report.applied.is_empty() {
            tracing::info!(?report, "mongodb store: schema migrated");
        }
        Ok(store)
    }

    /// `hello`: a replica set member reports `setName`, a mongos `msg: "isdbgrid"`; both run
    /// multi-document transactions, a standalone `mongod` does not.
    async fn detect_transactions(&self) -> Result<bool, StoreError> {
        let hello = self
            .client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| map_err("hello", "admin", e))?;
        let replica_set = matches!(hello.get("setName"), Some(Bson::String(_)));
        let mongos = hello.get_str("msg").ok() == Some("isdbgrid");
        Ok(replica_set || mongos)
    }

    /// Applies the pending schema migrations in order (idempotent); `mcpd migrate` calls it.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        migrate::migrate(&self.db).await
    }

    /// Whether transitions are applied in multi-document transactions (see the `apply` module).
    pub fn supports_transactions(&self) -> bool {
        self.transactions
    }

    /// Switches this handle to the standalone-server write path (in-order writes, no
    /// transaction) on any deployment, so tests can exercise it against a replica set.
    #[doc(hidden)]
    pub fn without_transactions_for_tests(mut self) -> Self {
        self.transactions = false;
        self
    }

    /// The database, for tools and tests that inspect raw documents.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection::<Document>(name)
    }

    async fn get_by_id<T: serde::de::DeserializeOwned>(
        &self,
        collection: &'static str,
        field: &str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let found = self
            .coll(collection)
            .find_one(doc! {field: id})
            .await
            .map_err(|e| map_err(&format!("get {collection} {id}"), collection, e))?;
        found.map(|d| decode(collection, d)).transpose()
    }

    /// Upserts one metric window by `metric_id`.
    async fn put_metric(&self, m: &Metric) -> StoreResult<()> {
        let doc = encode(&format!("metric {}", m.metric_id), m)?;
        let coll = self.coll("metrics");
        let op = || format!("put metric {}", m.metric_id);
        // Two concurrent upserts of a new id can both miss and both insert; the loser gets a
        // duplicate key error and, retried once, now matches the winner's document.
        for attempt in 0..2 {
            match coll
                .replace_one(doc! {"metric_id": &m.metric_id}, doc.clone())
                .upsert(true)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_duplicate_key(&e) && attempt == 0 => continue,
                Err(e) => return Err(map_err(&op(), "metrics", e)),
            }
        }
        Ok(())
    }
}

/// Groups a batch into waves of transitions that touch disjoint entities, each wave ending
/// before the first transition that shares an entity with an earlier one of the wave, so
/// transitions on the same entity keep their batch order. Transitions with only events and
/// audits touch no entity.
fn waves(txs: &[Transition]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, tx) in txs.iter().enumerate() {
        let keys: Vec<_> = tx
            .writes
            .iter()
            .map(|w| (w.entity().kind(), w.entity().id().to_string()))
            .collect();
        if i - start >= BATCH_CONCURRENCY || keys.iter().any(|k| seen.contains(k)) {
            out.push(start..i);
            start = i;
            seen.clear();
        }
        seen.extend(keys);
    }
    if start < txs.len() {
        out.push(start..txs.len());
    }
    out
}

#[async_trait]
impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(|e| map_err("ping", "admin", e))
    }

    async fn apply(&self, tx: Transition) -> StoreResult<()> {
        self.apply_transition(tx).await
    }

    /// Each transition in its own transaction, never all in one: a single refused
    /// precondition would abort the whole group, and the contract is one all-or-nothing
    /// outcome *per transition*. MongoDB gains nothing from grouping commits (each commit is
    /// its own oplog entry), so the round trips are overlapped instead: transitions on
    /// disjoint entities run concurrently (at most `BATCH_CONCURRENCY`, 16), and a transition
    /// touching an entity an earlier one of the batch touches waits for it, so dependent
    /// transitions see each other in batch order.
    async fn apply_batch(&self, txs: Vec<Transition>) -> Vec<StoreResult<()>> {
        let mut out = Vec::with_capacity(txs.len());
        for wave in waves(&txs) {
            let runs = txs[wave].iter().map(|tx| self.apply_transition(tx.clone()));
            out.extend(futures::future::join_all(runs).await);
        }
        out
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        self.get_by_id("agents", "agent_id", agent_id).await
    }

    async fn get_task(&self, task_id: &str) -> StoreResult<Option<Task>> {
        self.get_by_id("tasks", "task_id", task_id).await
    }

    async fn get_pipeline(&self, pipeline_id: &str) -> StoreResult<Option<Pipeline>> {
        self.get_by_id("pipelines", "pipeline_id", pipeline_id)
            .await
    }

    async fn query_agents(&self, q: &AgentQuery, page: &Page) -> StoreResult<Paged<Agent>> {
        self.page("agents", &AGENT_ORDER, agent_filter(q), page)
            .await
    }

    async fn query_tasks(&self, q: &TaskQuery, page: &Page) -> StoreResult<Paged<Task>> {
        self.page("tasks", &TASK_ORDER, task_filter(q)?, page).await
    }

    async fn query_pipelines(
        &self,
        q: &PipelineQuery,
        page: &Page,
    ) -> StoreResult<Paged<Pipeline>> {
        self.page("pipelines", &PIPELINE_ORDER, pipeline_filter(q), page)
            .await
    }

    async fn query_events(&self, q: &EventQuery, page: &Page) -> StoreResult<Paged<Event>> {
        self.page("events", &EVENT_ORDER, event_filter(q), page)
            .await
    }

    async fn query_audit_logs(&self, q: &AuditQuery, page: &Page) -> StoreResult<Paged<AuditLog>> {
        self.page("audit_logs", &AUDIT_ORDER, audit_filter(q), page)
            .await
    }

    async fn put_metrics(&self, metrics: Vec<Metric>) -> StoreResult<()> {
        if let Some(m) = metrics.iter().find(|m| m.metric_id.is_empty()) {
            return Err(StoreError::Invalid(format!(
                "metric {} without a metric_id",
                m.metric_name
            )));
        }
        for m in &metrics {
            self.put_metric(m).await?;
        }
        Ok(())
    }

    async fn query_metrics(&self, q: &MetricQuery, page: &Page) -> StoreResult<Paged<Metric>> {
        self.page("metrics", &METRIC_ORDER, metric_filter(q), page)
            .await
    }

    async fn max_lease_token(&self) -> StoreResult<u64> {
        // Soft-deleted tasks count too: their tokens were handed out.
        let top = self
            .coll("tasks")
            .find_one(doc! {})
            .sort(doc! {"lease_token": -1})
            .projection(doc! {"lease_token": 1, "_id": 0})
            .await
            .map_err(|e| map_err("max lease token", "tasks", e))?;
        let corrupt = |v: &Bson| StoreError::Corrupt {
            collection: "tasks",
            message: format!("lease_token is {v:?}"),
        };
        match top.as_ref().and_then(|d| d.get("lease_token")) {
            None => Ok(0),
            Some(Bson::Int64(v)) => u64::try_from(*v).map_err(|_| corrupt(&Bson::Int64(*v))),
            Some(Bson::Int32(v)) => u64::try_from(*v).map_err(|_| corrupt(&Bson::Int32(*v))),
            Some(other) => Err(corrupt(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpd_actors::model::Task;
    use mcpd_actors::store::Write;

    fn touching(ids: &[&str]) -> Transition {
        let mut tx = Transition::new();
        for id in ids {
            let mut t = Task {
                task_id: id.to_string(),
                ..Default::default()
            };
            tx = tx.write(Write::insert(&mut t));
        }
        tx
    }

    #[test]
    fn waves_keep_transitions_on_one_entity_in_order() {
        let txs = vec![
            touching(&["a"]),
            touching(&["b"]),
            touching(&["c", "a"]),
            touching(&[]),
            touching(&["b"]),
            touching(&["c"]),
        ];
        assert_eq!(waves(&txs), vec![0..2, 2..5, 5..6]);
        let many: Vec<_> = (0..40).map(|i| touching(&[&format!("t{i}")])).collect();
        assert_eq!(waves(&many), vec![0..16, 16..32, 32..40]);
        assert!(waves(&[]).is_empty());
    }
}
