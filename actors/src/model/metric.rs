//! The `metrics` collection: statistics over a time window.

use serde::{Deserialize, Serialize};

use super::{string_enum, Object, Timestamp};

string_enum! {
    /// `metrics.metric_type`.
    #[derive(Default)]
    pub enum MetricType {
        #[default]
        Gauge = "gauge",
        Counter = "counter",
        Histogram = "histogram",
        Summary = "summary",
    }
}

string_enum! {
    /// `metrics.value_type`.
    #[derive(Default)]
    pub enum ValueType {
        #[default]
        Current = "current",
        Average = "average",
        Percentile = "percentile",
        Rate = "rate",
    }
}

/// A document of the `metrics` collection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metric {
    /// Unique identifier.
    pub metric_id: String,
    /// `task_processing_time`, `task_queue_time`, …
    pub metric_name: String,
    /// Kind.
    pub metric_type: MetricType,
    /// The headline value.
    pub value: f64,
    /// What the headline value is.
    pub value_type: ValueType,
    /// What the figures are broken down by.
    pub dimensions: MetricDimensions,
    /// Window start.
    pub window_start: Timestamp,
    /// Window end.
    pub window_end: Timestamp,
    /// Window length, seconds.
    pub window_duration: f64,
    /// Statistics over the window.
    pub statistics: Statistics,
    /// 0.0–1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality_score: Option<f64>,
    /// 0.0–1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence_level: Option<f64>,
    /// Free-form metadata.
    pub metadata: Object,
    /// Tags.
    pub tags: Vec<String>,
    /// Creation.
    pub created_at: Timestamp,
    /// When retention removes it (TTL index).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `metrics.dimensions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricDimensions {
    /// Agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Agent type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Task type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// Pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    /// Stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// `production`, `staging`, `development`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `metrics.statistics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Statistics {
    /// Samples.
    pub count: u64,
    /// Sum.
    pub sum: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub avg: f64,
    /// Population standard deviation.
    pub std_dev: f64,
    /// Percentiles.
    pub percentiles: Percentiles,
}

/// `statistics.percentiles`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 95th.
    pub p95: f64,
    /// 99th.
    pub p99: f64,
}
