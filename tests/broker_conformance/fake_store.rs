//! A tiny in-memory [`Store`] holding only tasks: just what [`Broker::rebuild_from`] reads
//! (`max_lease_token` and paged `query_tasks`). The real store backends live on other
//! branches; this keeps the broker suite self-contained. Everything else answers
//! [`StoreError::Invalid`] so a rebuild that started needing more would fail loudly.
//!
//! [`Broker::rebuild_from`]: mcpd_actors::broker::Broker::rebuild_from

use async_trait::async_trait;
use mcpd_actors::model::{Agent, AuditLog, Event, Metric, Pipeline, Task};
use mcpd_actors::store::{
    AgentQuery, AuditQuery, EventQuery, MetricQuery, Page, Paged, PipelineQuery, Store, StoreError,
    StoreResult, TaskQuery, Transition,
};

/// Tasks in a vector, queried by a linear scan (tests hold at most a few thousand).
#[derive(Debug, Default)]
pub struct FakeStore {
    tasks: Vec<Task>,
}

fn unsupported<T>() -> StoreResult<T> {
    Err(StoreError::Invalid(
        "not supported by the test store".into(),
    ))
}

impl FakeStore {
    /// A store holding `tasks`.
    pub fn with_tasks(tasks: Vec<Task>) -> Self {
        FakeStore { tasks }
    }

    fn matches(q: &TaskQuery, t: &Task) -> bool {
        (q.statuses.is_empty() || q.statuses.contains(&t.status))
            && (q.include_deleted || !t.is_deleted)
            && q.pipeline_id.as_ref().is_none_or(|p| *p == t.pipeline_id)
            && q.stage.is_none_or(|s| s == t.stage)
            && q.task_type.as_ref().is_none_or(|ty| *ty == t.task_type)
            && q.assigned_agent_id
                .as_ref()
                .is_none_or(|a| t.assigned_agent_id.as_ref() == Some(a))
    }
}

#[async_trait]
impl Store for FakeStore {
    fn backend(&self) -> &'static str {
        "fake"
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn apply(&self, _tx: Transition) -> StoreResult<()> {
        unsupported()
    }

    async fn get_agent(&self, _agent_id: &str) -> StoreResult<Option<Agent>> {
        unsupported()
    }

    async fn get_task(&self, task_id: &str) -> StoreResult<Option<Task>> {
        Ok(self.tasks.iter().find(|t| t.task_id == task_id).cloned())
    }

    async fn get_pipeline(&self, pipeline_id: &str) -> StoreResult<Option<Pipeline>> {
        // Rebuild asks whether a pending task's pipeline is paused; these tests' pipelines
        // are running, except the one named "paused".
        Ok((pipeline_id == "paused").then(|| Pipeline {
            pipeline_id: pipeline_id.to_string(),
            status: mcpd_actors::model::PipelineStatus::Paused,
            ..Default::default()
        }))
    }

    async fn query_agents(&self, _q: &AgentQuery, _page: &Page) -> StoreResult<Paged<Agent>> {
        unsupported()
    }

    /// Ordered by priority (high first), `created_at`, id, as the trait says; the cursor is
    /// the offset of the next item.
    async fn query_tasks(&self, q: &TaskQuery, page: &Page) -> StoreResult<Paged<Task>> {
        page.check()?;
        let mut hits: Vec<&Task> = self.tasks.iter().filter(|t| Self::matches(q, t)).collect();
        hits.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
                .then(a.task_id.cmp(&b.task_id))
        });
        let start = match &page.after {
            Some(c) => c
                .parse::<usize>()
                .map_err(|_| StoreError::Invalid(format!("bad cursor {c:?}")))?,
            None => 0,
        };
        let end = (start + page.limit as usize).min(hits.len());
        let items: Vec<Task> = hits
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|t| (*t).clone())
            .collect();
        let next = (end < hits.len()).then(|| end.to_string());
        Ok(Paged { items, next })
    }

    async fn query_pipelines(
        &self,
        _q: &PipelineQuery,
        _page: &Page,
    ) -> StoreResult<Paged<Pipeline>> {
        unsupported()
    }

    async fn query_events(&self, _q: &EventQuery, _page: &Page) -> StoreResult<Paged<Event>> {
        unsupported()
    }

    async fn query_audit_logs(
        &self,
        _q: &AuditQuery,
        _page: &Page,
    ) -> StoreResult<Paged<AuditLog>> {
        unsupported()
    }

    async fn put_metrics(&self, _metrics: Vec<Metric>) -> StoreResult<()> {
        unsupported()
    }

    async fn query_metrics(&self, _q: &MetricQuery, _page: &Page) -> StoreResult<Paged<Metric>> {
        unsupported()
    }

    async fn max_lease_token(&self) -> StoreResult<u64> {
        Ok(self.tasks.iter().map(|t| t.lease_token).max().unwrap_or(0))
    }
}
