//! Group commit: a [`Store`] decorator that gathers the transitions concurrent callers apply
//! and writes them with one [`Store::apply_batch`] — one SQLite transaction (one commit) or one
//! round of MongoDB transactions — instead of one commit each.
//!
//! Nothing is weakened: every caller still waits until its own transition is durable, and
//! gets its own outcome (a conflict in one transition of a batch fails only that one). There
//! is no waiting window either: a batch is whatever queued up while the previous one was
//! being written, so a lone writer pays no extra latency and a busy one gets larger batches.

use std::sync::Arc;

use async_trait::async_trait;
use mcpd_actors::model::{Agent, AuditLog, Event, Metric, Pipeline, Task};
use mcpd_actors::store::{
    AgentQuery, AuditQuery, EventQuery, MetricQuery, Page, Paged, PipelineQuery, Store, StoreError,
    StoreResult, TaskQuery, Transition,
};
use tokio::sync::{mpsc, oneshot};

type Job = (Transition, oneshot::Sender<StoreResult<()>>);

/// The decorator. Reads go straight to the inner store.
pub struct GroupCommit {
    inner: Arc<dyn Store>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Wraps `inner`; batches hold at most `max_batch` transitions. Must be called inside a
    /// tokio runtime (it starts the writer task, which ends when the decorator is dropped).
    pub fn new(inner: Arc<dyn Store>, max_batch: usize) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(inner.clone(), rx, max_batch.max(1)));
        GroupCommit { inner, jobs }
    }
}

async fn writer(inner: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (txs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let n = txs.len();
        let results = inner.apply_batch(txs).await;
        if results.len() != n {
            tracing::error!(
                expected = n,
                got = results.len(),
                "apply_batch answered the wrong number of results"
            );
        }
        let mut results = results.into_iter();
        for reply in replies {
            let r = results.next().unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "no result for a batched transition".into(),
                ))
            });
            // The caller may have gone away; its transition is written all the same.
            let _ = reply.send(r);
        }
    }
}

#[async_trait]
impl Store for GroupCommit {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn apply(&self, tx: Transition) -> StoreResult<()> {
        // Refuse what no backend would take before queuing it behind others.
        tx.check()?;
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((tx, reply))
            .map_err(|_| StoreError::Unavailable("group commit writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("group commit writer stopped".into()))?
    }

    async fn apply_batch(&self, txs: Vec<Transition>) -> Vec<StoreResult<()>> {
        self.inner.apply_batch(txs).await
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        self.inner.get_agent(agent_id).await
    }

    async fn get_task(&self, task_id: &str) -> StoreResult<Option<Task>> {
        self.inner.get_task(task_id).await
    }

    async fn get_pipeline(&self, pipeline_id: &str) -> StoreResult<Option<Pipeline>> {
        self.inner.get_pipeline(pipeline_id).await
    }

    async fn query_agents(&self, q: &AgentQuery, page: &Page) -> StoreResult<Paged<Agent>> {
        self.inner.query_agents(q, page).await
    }

    async fn query_tasks(&self, q: &TaskQuery, page: &Page) -> StoreResult<Paged<Task>> {
        self.inner.query_tasks(q, page).await
    }

    async fn query_pipelines(
        &self,
        q: &PipelineQuery,
        page: &Page,
    ) -> StoreResult<Paged<Pipeline>> {
        self.inner.query_pipelines(q, page).await
    }

    async fn query_events(&self, q: &EventQuery, page: &Page) -> StoreResult<Paged<Event>> {
        self.inner.query_events(q, page).await
    }

    async fn query_audit_logs(&self, q: &AuditQuery, page: &Page) -> StoreResult<Paged<AuditLog>> {
        self.inner.query_audit_logs(q, page).await
    }

    async fn put_metrics(&self, metrics: Vec<Metric>) -> StoreResult<()> {
        self.inner.put_metrics(metrics).await
    }

    async fn query_metrics(&self, q: &MetricQuery, page: &Page) -> StoreResult<Paged<Metric>> {
        self.inner.query_metrics(q, page).await
    }

    async fn max_lease_token(&self) -> StoreResult<u64> {
        self.inner.max_lease_token().await
    }
}
