//! `MetricsAggregator`: time-window statistics of task queue and processing times.
//!
//! Collects a [`TaskSample`] per finished attempt and, at the end of every window (default
//! 60 s), writes one seed `metrics` document per metric, dimension and value — by task type,
//! by agent and by pipeline — with count, sum, min, max, avg, std_dev and p50/p90/p95/p99, and
//! `expires_at` for retention. Samples of a window that could not be written are kept for the
//! next attempt rather than lost.
//!
//! Messages in: [`TaskSample`], [`CloseWindow`] (its own timer; tests send it directly).

use std::collections::BTreeMap;

use actix::prelude::*;

use crate::deps::{hold_after_restart, Deps, Restarts};
use crate::messages::TaskSample;
use crate::model::{new_id, Metric, MetricDimensions, MetricType, Timestamp, ValueType};
use crate::stats::statistics;

/// The metrics aggregator actor.
pub struct MetricsAggregator {
    deps: Deps,
    window_start: Option<Timestamp>,
    samples: Vec<TaskSample>,
    restarts: Restarts,
    hold: std::time::Duration,
}

impl MetricsAggregator {
    /// An aggregator over `deps`.
    pub fn new(deps: Deps) -> Self {
        MetricsAggregator {
            deps,
            window_start: None,
            samples: Vec::new(),
            restarts: Restarts::default(),
            hold: std::time::Duration::ZERO,
        }
    }
}

impl Actor for MetricsAggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        hold_after_restart(&mut self.hold, ctx);
        self.window_start = Some(self.deps.now());
        ctx.run_interval(self.deps.settings.metrics_window, |_, ctx| {
            ctx.notify(CloseWindow)
        });
    }
}

impl Supervised for MetricsAggregator {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.hold = self
            .restarts
            .failed(&self.deps.settings, &self.deps.counters);
    }
}

impl Handler<TaskSample> for MetricsAggregator {
    type Result = ();

    fn handle(&mut self, msg: TaskSample, _ctx: &mut Self::Context) {
        self.samples.push(msg);
    }
}

/// Ends the current window and writes its metrics; answers how many documents were written.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseWindow;

impl Handler<CloseWindow> for MetricsAggregator {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, _: CloseWindow, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.deps.now();
        let start = self.window_start.replace(now).unwrap_or(now);
        let samples = std::mem::take(&mut self.samples);
        let metrics = window_metrics(
            &samples,
            start,
            now,
            now.plus(self.deps.settings.metrics_retention),
        );
        let deps = self.deps.clone();
        Box::pin(async move {
            if metrics.is_empty() {
                return Ok(0);
            }
            let n = metrics.len();
            deps.store.put_metrics(metrics).await.map(|()| n).map_err(|e| (e, samples, start))
        }
        .into_actor(self)
        .map(|res, act, _| match res {
            Ok(n) => n,
            Err((e, mut samples, start)) => {
                tracing::warn!(cause = %e, samples = samples.len(), "metrics window not written; kept for the next one");
                samples.append(&mut act.samples);
                act.samples = samples;
                act.window_start = Some(start);
                0
            }
        }))
    }
}

/// The metric documents of one window: queue and processing time, each by task type, agent
/// and pipeline.
pub fn window_metrics(
    samples: &[TaskSample],
    start: Timestamp,
    end: Timestamp,
    expires_at: Timestamp,
) -> Vec<Metric> {
    type Key = (&'static str, &'static str, String);
    let mut groups: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for s in samples {
        for (name, value) in [
            ("task_queue_time", s.queue_time),
            ("task_processing_time", s.processing_time),
        ] {
            let Some(v) = value else { continue };
            for (dim, id) in [
                ("task_type", &s.task_type),
                ("agent_id", &s.agent_id),
                ("pipeline_id", &s.pipeline_id),
            ] {
                groups.entry((name, dim, id.clone())).or_default().push(v);
            }
        }
    }
    groups
        .into_iter()
        .map(|((name, dim, id), values)| {
            let stats = statistics(&values);
            let mut dimensions = MetricDimensions::default();
            match dim {
                "task_type" => dimensions.task_type = Some(id),
                "agent_id" => dimensions.agent_id = Some(id),
                _ => dimensions.pipeline_id = Some(id),
            }
            Metric {
                metric_id: new_id("metric"),
                metric_name: name.to_string(),
                metric_type: MetricType::Summary,
                value: stats.avg,
                value_type: ValueType::Average,
                dimensions,
                window_start: start,
                window_end: end,
                window_duration: end.seconds_since(start),
                statistics: stats,
                created_at: end,
                expires_at: Some(expires_at),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(task_type: &str, agent: &str, q: f64, p: f64) -> TaskSample {
        TaskSample {
            task_type: task_type.into(),
            agent_id: agent.into(),
            pipeline_id: "p1".into(),
            queue_time: Some(q),
            processing_time: Some(p),
            ok: true,
        }
    }

    #[test]
    fn one_document_per_metric_dimension_and_value() {
        let s = vec![
            sample("a", "ag1", 1.0, 10.0),
            sample("a", "ag2", 3.0, 30.0),
            sample("b", "ag1", 5.0, 50.0),
        ];
        let t0 = Timestamp::from_millis(0);
        let t1 = Timestamp::from_millis(60_000);
        let m = window_metrics(&s, t0, t1, t1);
        // 2 metrics × (2 task types + 2 agents + 1 pipeline).
        assert_eq!(m.len(), 10);
        let by_type_a = m
            .iter()
            .find(|m| {
                m.metric_name == "task_processing_time"
                    && m.dimensions.task_type.as_deref() == Some("a")
            })
            .unwrap();
        assert_eq!(by_type_a.statistics.count, 2);
        assert_eq!(by_type_a.statistics.avg, 20.0);
        assert_eq!(by_type_a.window_duration, 60.0);
        let pipeline = m
            .iter()
            .find(|m| m.metric_name == "task_queue_time" && m.dimensions.pipeline_id.is_some())
            .unwrap();
        assert_eq!(
            (pipeline.statistics.count, pipeline.statistics.max),
            (3, 5.0)
        );
    }
}
