//! Fixtures of the store conformance suite: rich documents with every field populated (all
//! `Option`s `Some`, nested structs, metadata objects with nested values, millisecond
//! timestamps, floats that only survive an exact encoding), and lean builders for the query
//! tests.

use mcpd_actors::model::*;
use serde_json::{json, Value};

/// A base instant with a non-zero millisecond part, so truncation would show.
pub const T0: i64 = 1_705_314_600_123;

/// `T0 + offset_ms`.
pub fn ts(offset_ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + offset_ms)
}

/// A JSON object from a `json!` literal.
pub fn obj(v: Value) -> Object {
    match v {
        Value::Object(m) => m,
        other => panic!("fixture is not an object: {other}"),
    }
}

/// Metadata with nesting, arrays, nulls, booleans, integers and floats.
pub fn rich_object(tag: &str) -> Object {
    obj(json!({
        "tag": tag,
        "count": 42,
        "negative": -7,
        "ratio": 0.1 + 0.2,
        "flag": true,
        "nothing": null,
        "list": [1, "two", 3.5, false, null, {"deep": "yes"}],
        "nested": {"level": {"deeper": {"unicode": "Grüße – 日本"}}},
    }))
}

/// An agent with every field populated.
pub fn rich_agent(id: &str) -> Agent {
    Agent {
        agent_id: id.into(),
        name: format!("agent {id}"),
        agent_type: AgentType::BiasDetector,
        capabilities: vec!["bias_detection".into(), "emotion_analysis".into()],
        status: AgentStatus::Busy,
        auth_token: "sha256:0f1e2d3c".into(),
        permissions: vec!["task:execute".into(), "task:read".into()],
        api_key: Some("sha256:a1b2c3".into()),
        version: "1.4.2".into(),
        schema_version: 2,
        endpoint_url: Some("http://agent.example:8080".into()),
        health_check_url: Some("http://agent.example:8080/health".into()),
        websocket_url: Some("ws://agent.example:8081/ws".into()),
        performance_metrics: AgentPerformance {
            tasks_completed: 120,
            tasks_failed: 3,
            average_response_time: 1.75,
            success_rate: 0.1 + 0.2,
            last_24h: AgentLast24h {
                tasks_completed: 12,
                average_response_time: std::f64::consts::PI,
                peak_load: 4,
            },
            last_7d: AgentLast7d {
                tasks_completed: 80,
                average_response_time: 1.9,
                availability: 99.95,
            },
            hourly: vec![HourlyOutcomes {
                hour: ts(3_600_000),
                completed: 7,
                failed: 1,
                response_time_sum: 0.1 + 0.2,
                peak_load: 3,
                seen: true,
            }],
        },
        resource_limits: ResourceLimits {
            max_concurrent_tasks: 4,
            max_memory_mb: Some(2048),
            max_cpu_percent: Some(80),
            timeout_seconds: 600,
        },
        scheduling_config: SchedulingConfig {
            priority: 7,
            timezone: "Europe/Berlin".into(),
            working_hours: Some(WorkingHours {
                start: "09:00".into(),
                end: "17:00".into(),
                days: vec![Weekday::Mon, Weekday::Wed, Weekday::Fri],
            }),
            maintenance_window: Some(MaintenanceWindow {
                start: "02:00".into(),
                duration_minutes: 30,
            }),
        },
        metadata: rich_object("agent"),
        tags: vec!["prod".into(), "eu".into()],
        registered_at: ts(1),
        last_heartbeat: Some(ts(5_007)),
        last_task_completed: Some(ts(4_321)),
        updated_at: ts(5_009),
        created_at: ts(1),
        created_by: "admin".into(),
        updated_by: Some("operator".into()),
        is_deleted: false,
        deleted_at: Some(ts(9_999)),
        revision: 1,
    }
}

/// A task with every field populated.
pub fn rich_task(id: &str, pipeline_id: &str) -> Task {
    Task {
        task_id: id.into(),
        pipeline_id: pipeline_id.into(),
        parent_task_id: Some("task-parent".into()),
        stage: 2,
        task_type: "bias_detection".into(),
        task_category: TaskCategory::DataProcessing,
        status: TaskStatus::Running,
        substatus: Some("uploading".into()),
        retry_count: 1,
        max_retries: 3,
        assigned_agent_id: Some("agent-7".into()),
        assignment_history: vec![
            Assignment {
                agent_id: "agent-3".into(),
                assigned_at: ts(100),
                released_at: Some(ts(200)),
                reason: Some("lease_expired".into()),
            },
            Assignment {
                agent_id: "agent-7".into(),
                assigned_at: ts(300),
                released_at: Some(ts(301)),
                reason: Some("still running".into()),
            },
        ],
        parameters: rich_object("parameters"),
        input_data: rich_object("input"),
        expected_output: Some(obj(json!({"type": "object", "required": ["score"]}))),
        result: Some(obj(json!({"score": 0.875, "labels": ["a", "b"]}))),
        result_metadata: Some(obj(json!({"confidence": 0.93}))),
        output_data: Some(rich_object("output")),
        error: Some(TaskError {
            code: "E_TIMEOUT".into(),
            message: "agent did not answer".into(),
            stack_trace: Some("at line 1\nat line 2".into()),
            details: Some(obj(json!({"attempt": 1}))),
            is_retryable: true,
        }),
        performance_metrics: TaskPerformance {
            queue_time: Some(0.5),
            processing_time: Some(12.25),
            total_time: Some(12.75),
            memory_usage_mb: Some(512.0),
            cpu_usage_percent: Some(0.1 + 0.7),
        },
        priority: 8,
        deadline: Some(ts(60_000)),
        estimated_duration: Some(30.5),
        dependencies: vec!["task-a".into(), "task-b".into()],
        dependent_tasks: vec!["task-z".into()],
        pipeline_context: PipelineContext {
            stage_name: "detect".into(),
            stage_dependencies: vec![1],
            is_critical_path: true,
            attempt: 2,
            item_index: Some(3),
        },
        resource_requirements: ResourceRequirements {
            memory_mb: Some(1024),
            cpu_cores: Some(1.5),
            gpu_required: true,
            estimated_duration: Some(29.0),
        },
        quality_scores: Some(QualityScores {
            accuracy: Some(0.91),
            completeness: Some(0.88),
            relevance: Some(0.77),
            overall: Some(0.85),
        }),
        validation_results: vec![ValidationResult {
            validator: "schema".into(),
            passed: true,
            score: Some(0.99),
            details: Some(obj(json!({"checked": 4}))),
        }],
        metadata: rich_object("task"),
        tags: vec!["urgent".into()],
        created_at: ts(10),
        updated_at: ts(400),
        assigned_at: Some(ts(300)),
        started_at: Some(ts(350)),
        completed_at: Some(ts(399)),
        deadline_at: Some(ts(60_001)),
        created_by: "scheduler".into(),
        updated_by: Some("agent-7".into()),
        is_deleted: false,
        deleted_at: Some(ts(70_000)),
        lease_token: 17,
        retry_at: Some(ts(45_000)),
        lease_expires_at: Some(ts(30_300)),
        revision: 1,
    }
}

/// A pipeline with every field populated.
pub fn rich_pipeline(id: &str) -> Pipeline {
    Pipeline {
        pipeline_id: id.into(),
        name: format!("pipeline {id}"),
        description: "analyse a session".into(),
        pipeline_type: PipelineType::MentalHealthAnalysis,
        configuration: PipelineConfiguration {
            stages: vec![
                StageDefinition {
                    stage: 1,
                    name: "ingest".into(),
                    task_type: "ingest".into(),
                    dependencies: vec![],
                    is_parallel: false,
                    timeout_seconds: 60,
                    retry_config: RetryConfig {
                        max_retries: 2,
                        backoff_strategy: BackoffStrategy::Exponential,
                        delay_seconds: 5,
                        max_delay_seconds: Some(600),
                    },
                    fan_out: None,
                },
                StageDefinition {
                    stage: 2,
                    name: "detect".into(),
                    task_type: "bias_detection".into(),
                    dependencies: vec![1],
                    is_parallel: true,
                    timeout_seconds: 300,
                    retry_config: RetryConfig {
                        max_retries: 1,
                        backoff_strategy: BackoffStrategy::Linear,
                        delay_seconds: 10,
                        max_delay_seconds: Some(60),
                    },
                    fan_out: Some("/pipeline/texts".into()),
                },
            ],
            routing_rules: obj(json!({"bias_detection": {"prefer": "bias-detector"}})),
            quality_thresholds: obj(json!({"overall": 0.8})),
        },
        status: PipelineStatus::Running,
        progress: 0.1 + 0.2,
        current_stage: 2,
        stages: vec![StageState {
            stage: 1,
            name: "ingest".into(),
            status: StageStatus::RolledBack,
            tasks: vec!["task-1".into(), "task-2".into()],
            progress: 1.0,
            started_at: Some(ts(20)),
            completed_at: Some(ts(2_020)),
            estimated_duration: Some(2.5),
            actual_duration: Some(2.0),
            results: Some(rich_object("stage-results")),
            errors: vec![obj(json!({"code": "E1"}))],
            attempt: 2,
        }],
        input_data: rich_object("pipeline-input"),
        output_data: Some(obj(json!({"summary": "ok"}))),
        intermediate_results: obj(json!({"1": {"rows": 10}})),
        performance_metrics: PipelinePerformance {
            total_duration: Some(123.5),
            stage_durations: vec![2.0, 0.1 + 0.2],
            task_success_rate: Some(0.75),
            average_task_time: Some(4.125),
            peak_memory_usage: Some(900.5),
            total_tasks: 9,
        },
        resource_usage: ResourceUsage {
            total_cpu_seconds: 77.5,
            total_memory_mb: 1024.25,
            peak_concurrent_tasks: 3,
            agent_utilization: obj(json!({"agent-7": 0.5})),
        },
        error_strategy: ErrorStrategy {
            on_stage_failure: OnStageFailure::Rollback,
            max_failed_tasks: 2,
            retry_failed_stages: true,
        },
        errors: vec![PipelineErrorEntry {
            stage: 1,
            task_id: Some("task-2".into()),
            error: obj(json!({"message": "boom"})),
            handled: true,
        }],
        priority: 9,
        scheduled_start: Some(ts(15)),
        deadline: Some(ts(3_600_000)),
        context: obj(json!({"session": "s-1"})),
        metadata: rich_object("pipeline"),
        tags: vec!["hipaa".into(), "batch".into()],
        security_level: SecurityLevel::Hipaa,
        encryption_enabled: true,
        audit_trail: vec![AuditTrailEntry {
            action: "submit".into(),
            timestamp: ts(5),
            user: "clinician-1".into(),
            details: obj(json!({"via": "api"})),
        }],
        created_at: ts(5),
        updated_at: ts(2_021),
        started_at: Some(ts(20)),
        completed_at: Some(ts(4_000)),
        created_by: "clinician-1".into(),
        updated_by: Some("scheduler".into()),
        is_deleted: false,
        deleted_at: Some(ts(5_000)),
        revision: 1,
    }
}

/// An event with every field populated.
pub fn rich_event(id: &str) -> Event {
    Event {
        event_id: id.into(),
        event_type: "task_assigned".into(),
        event_category: EventCategory::Task,
        source: EventSource {
            source_type: SourceType::Agent,
            id: "agent-7".into(),
            ip_address: Some("127.0.0.1".into()),
            user_agent: Some("mcp-agent/1.4".into()),
        },
        target: EventTarget {
            target_type: TargetType::Task,
            id: "task-1".into(),
        },
        payload: rich_object("payload"),
        metadata: rich_object("event"),
        context: EventContext {
            request_id: Some("req-1".into()),
            session_id: Some("sess-1".into()),
            pipeline_id: Some("pipe-1".into()),
            stage: Some(2),
            correlation_id: Some("corr-1".into()),
        },
        processed: true,
        processing_errors: vec![obj(json!({"consumer": "x", "error": "late"}))],
        retry_count: 2,
        created_at: ts(77),
        processed_at: Some(ts(78)),
        expires_at: Some(ts(86_400_000)),
    }
}

/// An audit record with every field populated.
pub fn rich_audit(id: &str) -> AuditLog {
    AuditLog {
        audit_id: id.into(),
        action: AuditAction::Update,
        resource_type: ResourceType::Pipeline,
        resource_id: "pipe-1".into(),
        actor: AuditActor {
            actor_type: SourceType::User,
            id: "clinician-1".into(),
            roles: vec!["clinician".into(), "reviewer".into()],
            ip_address: Some("127.0.0.2".into()),
            user_agent: Some("browser".into()),
        },
        data_accessed: DataAccessed {
            fields: vec!["input_data".into()],
            records_count: 1,
            data_classification: DataClassification::Restricted,
        },
        before_state: Some(obj(json!({"status": "created"}))),
        after_state: Some(obj(json!({"status": "running"}))),
        security_context: SecurityContext {
            authentication_method: "token".into(),
            authorization_level: "admin".into(),
            encryption_applied: true,
            data_masking_applied: true,
        },
        compliance_flags: ComplianceFlags {
            hipaa_relevant: true,
            phi_involved: true,
            consent_required: true,
            retention_required: true,
        },
        risk_level: RiskLevel::High,
        risk_factors: vec!["phi".into()],
        metadata: rich_object("audit"),
        session_id: Some("sess-1".into()),
        request_id: Some("req-1".into()),
        timestamp: ts(90),
        created_at: ts(91),
        retention_until: Some(ts(189_216_000_000)),
        deletion_reason: Some("never".into()),
    }
}

/// A metric window with every field populated.
pub fn rich_metric(id: &str) -> Metric {
    Metric {
        metric_id: id.into(),
        metric_name: "task_processing_time".into(),
        metric_type: MetricType::Histogram,
        value: 12.5,
        value_type: ValueType::Percentile,
        dimensions: MetricDimensions {
            agent_id: Some("agent-7".into()),
            agent_type: Some("bias-detector".into()),
            task_type: Some("bias_detection".into()),
            pipeline_id: Some("pipe-1".into()),
            stage: Some(2),
            environment: Some("production".into()),
            region: Some("eu-west".into()),
        },
        window_start: ts(0),
        window_end: ts(60_000),
        window_duration: 60.0,
        statistics: Statistics {
            count: 10,
            sum: 125.0,
            min: 1.25,
            max: 30.5,
            avg: 12.5,
            std_dev: 0.1 + 0.2,
            percentiles: Percentiles {
                p50: 11.0,
                p90: 25.0,
                p95: 28.0,
                p99: 30.0,
            },
        },
        quality_score: Some(0.9),
        confidence_level: Some(0.95),
        metadata: rich_object("metric"),
        tags: vec!["agg".into()],
        created_at: ts(60_001),
        expires_at: Some(ts(60_000 + 86_400_000)),
    }
}

/// A lean task for query tests.
pub fn task(id: &str, pipeline_id: &str, stage: u32, priority: u8, created_ms: i64) -> Task {
    Task {
        task_id: id.into(),
        pipeline_id: pipeline_id.into(),
        stage,
        task_type: "bias_detection".into(),
        priority,
        created_at: ts(created_ms),
        updated_at: ts(created_ms),
        ..Default::default()
    }
}

/// A lean agent for query tests.
pub fn agent(id: &str, agent_type: AgentType, status: AgentStatus, caps: &[&str]) -> Agent {
    Agent {
        agent_id: id.into(),
        agent_type,
        status,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

/// A lean pipeline for query tests.
pub fn pipeline(id: &str, status: PipelineStatus, created_ms: i64, created_by: &str) -> Pipeline {
    Pipeline {
        pipeline_id: id.into(),
        status,
        created_at: ts(created_ms),
        created_by: created_by.into(),
        ..Default::default()
    }
}

/// A lean event for query tests.
pub fn event(
    id: &str,
    event_type: &str,
    target: &str,
    pipeline: Option<&str>,
    at_ms: i64,
) -> Event {
    Event {
        event_id: id.into(),
        event_type: event_type.into(),
        target: EventTarget {
            target_type: TargetType::Task,
            id: target.into(),
        },
        context: EventContext {
            pipeline_id: pipeline.map(str::to_string),
            ..Default::default()
        },
        created_at: ts(at_ms),
        ..Default::default()
    }
}

/// A lean audit record for query tests.
pub fn audit(
    id: &str,
    resource_type: ResourceType,
    resource_id: &str,
    actor: &str,
    action: AuditAction,
    at_ms: i64,
) -> AuditLog {
    AuditLog {
        audit_id: id.into(),
        resource_type,
        resource_id: resource_id.into(),
        actor: AuditActor {
            id: actor.into(),
            ..Default::default()
        },
        action,
        timestamp: ts(at_ms),
        created_at: ts(at_ms),
        ..Default::default()
    }
}

/// A lean metric for query tests.
pub fn metric(id: &str, name: &str, value: f64, start_ms: i64) -> Metric {
    Metric {
        metric_id: id.into(),
        metric_name: name.into(),
        value,
        window_start: ts(start_ms),
        window_end: ts(start_ms + 60_000),
        window_duration: 60.0,
        ..Default::default()
    }
}
