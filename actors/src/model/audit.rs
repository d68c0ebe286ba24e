//! The `audit_logs` collection (HIPAA): who read or changed what.

use serde::{Deserialize, Serialize};

use super::{string_enum, Object, SourceType, Timestamp};

string_enum! {
    /// `audit_logs.action`.
    #[derive(Default)]
    pub enum AuditAction {
        Create = "create",
        #[default]
        Read = "read",
        Update = "update",
        Delete = "delete",
        Execute = "execute",
    }
}

string_enum! {
    /// `audit_logs.resource_type`.
    #[derive(Default)]
    pub enum ResourceType {
        #[default]
        Task = "task",
        Agent = "agent",
        Pipeline = "pipeline",
        UserData = "user_data",
    }
}

string_enum! {
    /// `data_accessed.data_classification`.
    #[derive(Default)]
    pub enum DataClassification {
        Public = "public",
        #[default]
        Internal = "internal",
        Confidential = "confidential",
        Restricted = "restricted",
    }
}

string_enum! {
    /// `audit_logs.risk_level`.
    #[derive(Default)]
    pub enum RiskLevel {
        #[default]
        Low = "low",
        Medium = "medium",
        High = "high",
        Critical = "critical",
    }
}

/// A document of the `audit_logs` collection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditLog {
    /// Unique identifier.
    pub audit_id: String,
    /// What was done.
    pub action: AuditAction,
    /// To what kind of resource.
    pub resource_type: ResourceType,
    /// Which one.
    pub resource_id: String,
    /// Who did it.
    pub actor: AuditActor,
    /// What data was touched.
    pub data_accessed: DataAccessed,
    /// State before an update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_state: Option<Object>,
    /// State after an update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_state: Option<Object>,
    /// How access was secured.
    pub security_context: SecurityContext,
    /// Compliance flags.
    pub compliance_flags: ComplianceFlags,
    /// Risk.
    pub risk_level: RiskLevel,
    /// Why that risk.
    pub risk_factors: Vec<String>,
    /// Free-form metadata.
    pub metadata: Object,
    /// Agent or API session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When it happened.
    pub timestamp: Timestamp,
    /// When the record was written.
    pub created_at: Timestamp,
    /// Keep until (six years for HIPAA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_until: Option<Timestamp>,
    /// Why it was deleted, if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_reason: Option<String>,
}

/// `audit_logs.actor`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditActor {
    /// `user`, `agent` or `system`.
    #[serde(rename = "type")]
    pub actor_type: SourceType,
    /// Identifier.
    pub id: String,
    /// Roles held.
    pub roles: Vec<String>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Client software.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// `audit_logs.data_accessed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataAccessed {
    /// Fields read or written.
    pub fields: Vec<String>,
    /// Records touched.
    pub records_count: u64,
    /// Sensitivity.
    pub data_classification: DataClassification,
}

/// `audit_logs.security_context`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityContext {
    /// `token`, `mtls`, `internal`, …
    pub authentication_method: String,
    /// Role or level that authorised it.
    pub authorization_level: String,
    /// Whether encrypted fields were involved.
    pub encryption_applied: bool,
    /// Whether fields were masked for the actor.
    pub data_masking_applied: bool,
}

/// `audit_logs.compliance_flags`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComplianceFlags {
    /// Relevant to HIPAA.
    pub hipaa_relevant: bool,
    /// Protected health information involved.
    pub phi_involved: bool,
    /// Consent required.
    pub consent_required: bool,
    /// Must be retained.
    pub retention_required: bool,
}
