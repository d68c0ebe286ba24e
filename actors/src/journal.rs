//! The journal: builders for the `events` and `audit_logs` records that accompany every
//! transition, so each actor writes them the same way.

use std::time::Duration;

use serde_json::Value;

use crate::model::{
    new_id, AuditAction, AuditActor, AuditLog, ComplianceFlags, DataAccessed, DataClassification,
    Event, EventCategory, EventContext, EventSource, EventTarget, Object, Pipeline, ResourceType,
    SecurityContext, SecurityLevel, SourceType, TargetType, Task, Timestamp,
};

/// Retention the journal stamps on what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events expire after this (`expires_at`).
    pub events: Duration,
    /// Audit records are kept until this has passed (`retention_until`).
    pub audit_logs: Duration,
}

impl Default for Retention {
    /// The seed's: events 30 days, audit logs 6 years.
    fn default() -> Self {
        Retention {
            events: Duration::from_secs(30 * 86_400),
            audit_logs: Duration::from_secs(6 * 365 * 86_400),
        }
    }
}

/// Who caused a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Kind.
    pub kind: SourceType,
    /// Identifier (agent id, user, or this instance for the system).
    pub id: String,
}

impl Actor {
    /// The scheduler itself, on instance `instance_id`.
    pub fn system(instance_id: &str) -> Self {
        Actor {
            kind: SourceType::System,
            id: instance_id.to_string(),
        }
    }

    /// An agent.
    pub fn agent(agent_id: &str) -> Self {
        Actor {
            kind: SourceType::Agent,
            id: agent_id.to_string(),
        }
    }

    /// A user of the API.
    pub fn user(user: &str) -> Self {
        Actor {
            kind: SourceType::User,
            id: user.to_string(),
        }
    }
}

/// Makes event and audit documents.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// Retention stamped on records.
    pub retention: Retention,
}

impl Journal {
    /// An event about a task.
    pub fn task_event(
        &self,
        event_type: &str,
        task: &Task,
        by: &Actor,
        payload: Object,
        now: Timestamp,
    ) -> Event {
        let mut e = self.event(
            event_type,
            EventCategory::Task,
            TargetType::Task,
            &task.task_id,
            by,
            payload,
            now,
        );
        e.context.pipeline_id = Some(task.pipeline_id.clone());
        e.context.stage = Some(task.stage);
        e.context.correlation_id = Some(task.pipeline_id.clone());
        e
    }

    /// An event about a pipeline (`stage` for stage events).
    #[allow(clippy::too_many_arguments)]
    pub fn pipeline_event(
        &self,
        event_type: &str,
        pipeline: &Pipeline,
        stage: Option<u32>,
        by: &Actor,
        payload: Object,
        now: Timestamp,
    ) -> Event {
        let mut e = self.event(
            event_type,
            EventCategory::Pipeline,
            TargetType::Pipeline,
            &pipeline.pipeline_id,
            by,
            payload,
            now,
        );
        e.context.pipeline_id = Some(pipeline.pipeline_id.clone());
        e.context.stage = stage;
        e.context.correlation_id = Some(pipeline.pipeline_id.clone());
        e
    }

    /// An event about an agent.
    pub fn agent_event(
        &self,
        event_type: &str,
        agent_id: &str,
        by: &Actor,
        payload: Object,
        now: Timestamp,
    ) -> Event {
        self.event(
            event_type,
            EventCategory::Agent,
            TargetType::Agent,
            agent_id,
            by,
            payload,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        event_type: &str,
        category: EventCategory,
        target_type: TargetType,
        target_id: &str,
        by: &Actor,
        payload: Object,
        now: Timestamp,
    ) -> Event {
        Event {
            event_id: new_id("evt"),
            event_type: event_type.to_string(),
            event_category: category,
            source: EventSource {
                source_type: by.kind,
                id: by.id.clone(),
                ip_address: None,
                user_agent: None,
            },
            target: EventTarget {
                target_type,
                id: target_id.to_string(),
            },
            payload,
            metadata: Object::new(),
            context: EventContext::default(),
            processed: false,
            processing_errors: Vec::new(),
            retry_count: 0,
            created_at: now,
            processed_at: None,
            expires_at: Some(now.plus(self.retention.events)),
        }
    }

    /// An audit record: `by` did `action` on `fields` of a resource.
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        action: AuditAction,
        resource_type: ResourceType,
        resource_id: &str,
        fields: &[&str],
        classification: DataClassification,
        by: &Actor,
        now: Timestamp,
    ) -> AuditLog {
        let phi = matches!(
            classification,
            DataClassification::Confidential | DataClassification::Restricted
        );
        AuditLog {
            audit_id: new_id("aud"),
            action,
            resource_type,
            resource_id: resource_id.to_string(),
            actor: AuditActor {
                actor_type: by.kind,
                id: by.id.clone(),
                roles: Vec::new(),
                ip_address: None,
                user_agent: None,
            },
            data_accessed: DataAccessed {
                fields: fields.iter().map(|f| f.to_string()).collect(),
                records_count: 1,
                data_classification: classification,
            },
            before_state: None,
            after_state: None,
            security_context: SecurityContext {
                authentication_method: match by.kind {
                    SourceType::Agent => "agent_token".into(),
                    SourceType::System => "internal".into(),
                    _ => "bearer_token".into(),
                },
                authorization_level: by.kind.as_str().to_string(),
                encryption_applied: false,
                data_masking_applied: false,
            },
            compliance_flags: ComplianceFlags {
                hipaa_relevant: phi,
                phi_involved: phi,
                consent_required: false,
                retention_required: true,
            },
            risk_level: Default::default(),
            risk_factors: Vec::new(),
            metadata: Object::new(),
            session_id: None,
            request_id: None,
            timestamp: now,
            created_at: now,
            retention_until: Some(now.plus(self.retention.audit_logs)),
            deletion_reason: None,
        }
    }
}

/// How sensitive a pipeline's data is, from its security level: analysis inputs of `hipaa` and
/// `fhe` pipelines are treated as PHI.
pub fn classification_of(level: SecurityLevel) -> DataClassification {
    match level {
        SecurityLevel::Standard => DataClassification::Internal,
        SecurityLevel::Hipaa | SecurityLevel::Fhe => DataClassification::Restricted,
    }
}

/// Builds a JSON object from pairs: `obj([("stage", 2.into())])`.
pub fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Object {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
