//! The `events` collection: one document per state change.

use serde::{Deserialize, Serialize};

use super::{string_enum, Object, Timestamp};

string_enum! {
    /// `events.event_category`.
    #[derive(Default)]
    pub enum EventCategory {
        #[default]
        System = "system",
        Task = "task",
        Agent = "agent",
        Pipeline = "pipeline",
    }
}

string_enum! {
    /// `events.source.type` and the audit `actor.type` family.
    #[derive(Default)]
    pub enum SourceType {
        Agent = "agent",
        User = "user",
        #[default]
        System = "system",
        External = "external",
    }
}

string_enum! {
    /// `events.target.type`.
    #[derive(Default)]
    pub enum TargetType {
        #[default]
        Task = "task",
        Agent = "agent",
        Pipeline = "pipeline",
    }
}

/// A document of the `events` collection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Unique identifier.
    pub event_id: String,
    /// `task_created`, `task_assigned`, `agent_registered`, …
    pub event_type: String,
    /// Broad category.
    pub event_category: EventCategory,
    /// Who caused it.
    pub source: EventSource,
    /// What it happened to.
    pub target: EventTarget,
    /// Event-specific data.
    pub payload: Object,
    /// Additional metadata.
    pub metadata: Object,
    /// Correlation context.
    pub context: EventContext,
    /// Whether a consumer has handled it.
    pub processed: bool,
    /// Errors consumers met.
    pub processing_errors: Vec<Object>,
    /// Consumer retries.
    pub retry_count: u32,
    /// Creation.
    pub created_at: Timestamp,
    /// When a consumer handled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<Timestamp>,
    /// When the retention policy removes it (TTL index).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `events.source`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventSource {
    /// Kind of source.
    #[serde(rename = "type")]
    pub source_type: SourceType,
    /// Its identifier.
    pub id: String,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Client software.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// `events.target`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventTarget {
    /// Kind of target.
    #[serde(rename = "type")]
    pub target_type: TargetType,
    /// Its identifier.
    pub id: String,
}

/// `events.context`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventContext {
    /// Request that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Agent session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    /// Stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// Correlation id across events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}
