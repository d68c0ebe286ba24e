//! The scheduler end to end: the actor tree over a real store and a real broker (in-process and
//! redis-server), driven by test agents through the library-level agent handle. Wall-clock
//! limits (leases, timeouts, retry delays, deadlines, working hours) follow a manual clock the
//! tests advance; nothing waits on them in real time.

mod scheduler_env;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mcpd_actors::agent_registry::FlushOutcomes;
use mcpd_actors::deps::Counters;
use mcpd_actors::dispatch::ResultReport;
use mcpd_actors::engine::Command;
use mcpd_actors::error::SchedulerError;
use mcpd_actors::journal::Actor as By;
use mcpd_actors::metrics_aggregator::CloseWindow;
use mcpd_actors::model::{
    AgentStatus, AgentType, BackoffStrategy, MaintenanceWindow, OnStageFailure, Pipeline,
    PipelineConfiguration, PipelineStatus, QualityScores, RetryConfig, StageDefinition,
    StageStatus, TaskError, TaskStatus, Timestamp, Weekday, WorkingHours,
};
use mcpd_actors::store::{EventQuery, MetricQuery, Page};
use mcpd_actors::supervisor::{FailCoordinator, Snapshot};
use mcpd_actors::task_dispatcher::InjectFailure;
use parking_lot::Mutex;
use scheduler_env::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

/// The production pair — MongoDB store and Redis broker — on the tests where the store's
/// behaviour matters most.
macro_rules! production_pair_tests {
    ($($name:ident),* $(,)?) => {
        mod redis_mongo {
            $(#[actix_rt::test] async fn $name() { super::$name(super::BrokerKind::RedisMongo).await })*
        }
    };
}

production_pair_tests!(
    mental_health_analysis_runs_end_to_end,
    retries_back_off_exponentially_on_the_clock,
    cancel_pause_and_resume,
    a_silent_agents_task_is_finished_by_another,
    a_survivor_takes_over_a_dead_instances_pipelines,
    a_broker_that_loses_its_data_mid_run_is_rebuilt,
);

macro_rules! scheduler_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[actix_rt::test] async fn $name() { super::$name(super::BrokerKind::Memory).await })*
        }
        mod redis {
            $(#[actix_rt::test] async fn $name() { super::$name(super::BrokerKind::Redis).await })*
        }
    };
}

scheduler_tests!(
    mental_health_analysis_runs_end_to_end,
    retries_back_off_exponentially_on_the_clock,
    a_stage_timeout_takes_the_task_back,
    the_pipeline_deadline_fails_it,
    a_result_below_the_quality_threshold_is_a_failed_attempt,
    strategy_stop,
    strategy_continue,
    strategy_rollback,
    cancel_pause_and_resume,
    a_silent_agents_task_is_finished_by_another,
    working_hours_and_maintenance_are_respected,
    eight_agents_two_thousand_tasks_each_exactly_once,
    a_failing_actor_is_restarted_and_the_pipeline_finishes,
    a_survivor_takes_over_a_dead_instances_pipelines,
    a_broker_that_loses_its_data_mid_run_is_rebuilt,
    results_sent_to_another_instance_reach_the_coordinator,
);

fn stage(n: u32, task_type: &str, deps: &[u32]) -> StageDefinition {
    StageDefinition {
        stage: n,
        name: format!("s{n}"),
        task_type: task_type.into(),
        dependencies: deps.to_vec(),
        timeout_seconds: 600,
        ..Default::default()
    }
}

fn pipeline(stages: Vec<StageDefinition>) -> Pipeline {
    Pipeline {
        name: "test".into(),
        priority: 5,
        configuration: PipelineConfiguration {
            stages,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ledger() -> Arc<Mutex<Ledger>> {
    Arc::new(Mutex::new(Ledger::default()))
}

async fn mental_health_analysis_runs_end_to_end(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let caps: HashMap<&str, Vec<&str>> = HashMap::from([
        (
            "ag-general",
            vec!["text_preprocessing", "report_generation"],
        ),
        ("ag-bias", vec!["bias_detection"]),
        ("ag-emotion", vec!["emotion_analysis", "risk_assessment"]),
        (
            "ag-therapist",
            vec!["therapeutic_response", "emotion_analysis"],
        ),
    ]);
    let types = [
        ("ag-general", AgentType::General),
        ("ag-bias", AgentType::BiasDetector),
        ("ag-emotion", AgentType::EmotionAnalyzer),
        ("ag-therapist", AgentType::Therapist),
    ];
    let l = ledger();
    let mut agents = Vec::new();
    let mut bias = None;
    for (id, t) in types {
        let h = connect(&s, spec(id, t, &caps[id])).await;
        if id == "ag-bias" {
            // Holds its task until the other branch is done: both branches run at once.
            bias = Some(TestAgent::spawn(h, Arc::new(|_| Outcome::Hang), l.clone()));
        } else {
            agents.push(TestAgent::spawn(h, echo(), l.clone()));
        }
    }
    let bias = bias.unwrap();
    let template = mcpd::templates::template("mental_health_analysis", None).unwrap();
    let input = obj(json!({"messages": ["I feel low", "work is hard", "thank you"]}));
    let p = submit(&s, template.instantiate(input)).await;
    // The emotion branch (stages 3 and 4) finishes while bias detection (stage 2) is running.
    let snapshot = env
        .until_tasks(&p.pipeline_id, LONG, "emotion branch done", |t| {
            t.iter()
                .any(|t| t.stage == 4 && t.status == TaskStatus::Completed)
        })
        .await;
    let held = snapshot.iter().find(|t| t.stage == 2).unwrap();
    assert_eq!(
        held.status,
        TaskStatus::Assigned,
        "stage 2 ran alongside stages 3–4"
    );
    let a = bias.take_held().await;
    let t = bias
        .handle
        .complete(&a.lease, echo_report(&a.task))
        .await
        .unwrap();
    l.lock()
        .accepted
        .entry(t.task_id)
        .or_default()
        .push("ag-bias".into());
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Completed, "{:?}", done.errors);
    assert!(done
        .stages
        .iter()
        .all(|st| st.status == StageStatus::Completed));
    assert_eq!(done.progress, 1.0);

    let tasks = env.tasks(&p.pipeline_id).await;
    let per_stage = |n: u32| tasks.iter().filter(|t| t.stage == n).collect::<Vec<_>>();
    assert_eq!(per_stage(1).len(), 3, "fan-out over the messages");
    assert_eq!(per_stage(3).len(), 3, "fan-out over the preprocessed items");
    let risk = per_stage(4)[0];
    let fan_in = risk.input_data["dependencies"]["emotion_analysis"]["items"]
        .as_array()
        .unwrap();
    assert_eq!(fan_in.len(), 3, "fan-in of the emotion analyses");
    assert_eq!(
        fan_in[1]["item"]["item"], "work is hard",
        "outputs passed on, in order"
    );
    let response = per_stage(5)[0];
    assert!(response.input_data["dependencies"]["bias_detection"].is_object());
    assert!(response.input_data["dependencies"]["risk_assessment"].is_object());
    assert_eq!(
        done.output_data.as_ref().unwrap()["report"]["stage"],
        "report"
    );

    // Each task completed once, by an agent with the capability.
    let g = l.lock();
    for t in &tasks {
        assert_eq!(t.status, TaskStatus::Completed);
        let by = &g.accepted[&t.task_id];
        assert_eq!(by.len(), 1, "task {} accepted {by:?}", t.task_id);
        assert!(
            caps[by[0].as_str()].contains(&t.task_type.as_str()),
            "{} ran {}",
            by[0],
            t.task_type
        );
    }
    agents.iter().for_each(TestAgent::stop);
    bias.stop();
}

/// One stage whose task fails `failures` times (retryable), then succeeds.
async fn flaky(
    env: &Env,
    failures: u32,
    retry: RetryConfig,
) -> (mcpd_actors::handle::Scheduler, Pipeline, TestAgent) {
    let s = env.start("i1").await;
    let h = connect(&s, spec("ag-1", AgentType::General, &["work"])).await;
    let n = Arc::new(AtomicU32::new(0));
    let work: Behaviour = Arc::new(move |t| {
        if n.fetch_add(1, Ordering::SeqCst) < failures {
            Outcome::Fail(TaskError {
                code: "flaky".into(),
                message: "try again".into(),
                is_retryable: true,
                ..Default::default()
            })
        } else {
            Outcome::Complete(echo_report(t))
        }
    });
    let agent = TestAgent::spawn(h, work, ledger());
    let mut st = stage(1, "work", &[]);
    st.retry_config = retry;
    let p = submit(&s, pipeline(vec![st])).await;
    (s, p, agent)
}

async fn retries_back_off_exponentially_on_the_clock(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let retry = RetryConfig {
        max_retries: 3,
        backoff_strategy: BackoffStrategy::Exponential,
        delay_seconds: 10,
        max_delay_seconds: None,
    };
    let (_s, p, agent) = flaky(&env, 2, retry).await;
    let id = p.pipeline_id.clone();
    // First failure: due 10 s later on the clock, and not a moment before.
    let t = env
        .until_tasks(&id, LONG, "first retry scheduled", |t| {
            t.first().is_some_and(|t| t.retry_at.is_some())
        })
        .await;
    let failed_at = t[0].updated_at;
    assert_eq!(
        t[0].retry_at.unwrap(),
        failed_at.plus(Duration::from_secs(10))
    );
    env.advance(Duration::from_millis(9_999));
    tokio::time::sleep(Duration::from_millis(300)).await; // several resyncs
    assert_eq!(
        env.tasks(&id).await[0].status,
        TaskStatus::Retry,
        "not due yet"
    );
    env.advance(Duration::from_millis(1));
    // Second failure: 20 s.
    let t = env
        .until_tasks(&id, LONG, "second retry scheduled", |t| {
            t[0].retry_count == 2 && t[0].retry_at.is_some()
        })
        .await;
    assert_eq!(
        t[0].retry_at.unwrap(),
        t[0].updated_at.plus(Duration::from_secs(20))
    );
    env.advance(Duration::from_secs(20));
    let done = env.finished(&id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Completed);
    let t = &env.tasks(&id).await[0];
    assert_eq!((t.status, t.retry_count), (TaskStatus::Completed, 2));
    let events = env.events_of(&t.task_id).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "task_retry_scheduled")
            .count(),
        2,
        "{events:?}"
    );
    agent.stop();
}

async fn a_stage_timeout_takes_the_task_back(kind: BrokerKind) {
    let mut env = Env::new(kind).await;
    env.settings.lease_ttl = Duration::from_secs(3600); // only the stage timeout acts here
    let s = env.start("i1").await;
    let slow = TestAgent::spawn(
        connect(&s, spec("ag-slow", AgentType::General, &["work"])).await,
        Arc::new(|_| Outcome::Hang),
        ledger(),
    );
    let mut st = stage(1, "work", &[]);
    st.timeout_seconds = 30;
    st.retry_config = RetryConfig {
        max_retries: 1,
        backoff_strategy: BackoffStrategy::Fixed,
        delay_seconds: 1,
        max_delay_seconds: None,
    };
    let p = submit(&s, pipeline(vec![st])).await;
    // The slow agent holds the task (it has it, not only the store says so).
    let held = slow.take_held().await;
    slow.stop();
    env.advance(Duration::from_secs(31));
    let t = env
        .until_tasks(&p.pipeline_id, LONG, "timed out", |t| {
            t[0].status == TaskStatus::Retry
        })
        .await;
    assert_eq!(t[0].error.as_ref().unwrap().code, "timeout");
    assert_eq!(
        t[0].assignment_history[0].reason.as_deref(),
        Some("timeout")
    );
    let l = ledger();
    let quick = TestAgent::spawn(
        connect(&s, spec("ag-quick", AgentType::General, &["work"])).await,
        echo(),
        l.clone(),
    );
    env.advance(Duration::from_secs(1));
    assert_eq!(
        env.finished(&p.pipeline_id, LONG).await.status,
        PipelineStatus::Completed
    );
    // The slow agent's late result is refused.
    let late = slow
        .handle
        .complete(&held.lease, echo_report(&held.task))
        .await;
    assert!(
        matches!(late, Err(SchedulerError::LeaseRefused { .. })),
        "{late:?}"
    );
    assert_eq!(l.lock().accepted.len(), 1);
    quick.stop();
}

async fn the_pipeline_deadline_fails_it(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let hang = TestAgent::spawn(
        connect(&s, spec("ag-1", AgentType::General, &["work"])).await,
        Arc::new(|_| Outcome::Hang),
        ledger(),
    );
    let mut p = pipeline(vec![stage(1, "work", &[]), stage(2, "work", &[1])]);
    p.deadline = Some(Timestamp::from_millis(T0 + 60_000));
    let p = submit(&s, p).await;
    env.until_tasks(&p.pipeline_id, LONG, "assigned", |t| {
        t.first().is_some_and(|t| t.status == TaskStatus::Assigned)
    })
    .await;
    env.advance(Duration::from_secs(61));
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Failed);
    let tasks = env.tasks(&p.pipeline_id).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status, TaskStatus::Cancelled);
    let events = env.events_of(&p.pipeline_id).await;
    assert!(
        events.contains(&"pipeline_failed".to_string()),
        "{events:?}"
    );
    // The agent's lease went with it.
    assert!(env.broker.lease(&tasks[0].task_id).await.unwrap().is_none());
    hang.stop();
}

async fn a_result_below_the_quality_threshold_is_a_failed_attempt(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let n = Arc::new(AtomicU32::new(0));
    let work: Behaviour = Arc::new(move |t| {
        let mut r = echo_report(t);
        let q = if n.fetch_add(1, Ordering::SeqCst) == 0 {
            0.4
        } else {
            0.9
        };
        r.quality_scores = Some(QualityScores {
            overall: Some(q),
            ..Default::default()
        });
        Outcome::Complete(r)
    });
    let a = TestAgent::spawn(
        connect(&s, spec("ag-1", AgentType::General, &["work"])).await,
        work,
        ledger(),
    );
    let mut st = stage(1, "work", &[]);
    st.retry_config = RetryConfig {
        max_retries: 2,
        backoff_strategy: BackoffStrategy::Fixed,
        delay_seconds: 5,
        max_delay_seconds: None,
    };
    let mut p = pipeline(vec![st]);
    p.configuration.quality_thresholds = obj(json!({"overall": 0.8}));
    let p = submit(&s, p).await;
    let t = env
        .until_tasks(&p.pipeline_id, LONG, "retry", |t| {
            t.first().is_some_and(|t| t.retry_at.is_some())
        })
        .await;
    assert_eq!(t[0].error.as_ref().unwrap().code, "quality_below_threshold");
    env.advance(Duration::from_secs(5));
    assert_eq!(
        env.finished(&p.pipeline_id, LONG).await.status,
        PipelineStatus::Completed
    );
    let t = &env.tasks(&p.pipeline_id).await[0];
    assert_eq!(
        (t.retry_count, t.quality_scores.as_ref().unwrap().overall),
        (1, Some(0.9))
    );
    a.stop();
}

/// 1 → {2, 3}, 2 → 4: stage 2's task fails for good while stage 3's is held.
async fn strategy_case(
    kind: BrokerKind,
    strategy: OnStageFailure,
) -> (Env, Pipeline, Vec<TestAgent>) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let good = TestAgent::spawn(
        connect(&s, spec("ag-good", AgentType::General, &["ok", "end"])).await,
        echo(),
        ledger(),
    );
    let bad = TestAgent::spawn(
        connect(&s, spec("ag-bad", AgentType::General, &["bad"])).await,
        Arc::new(|_| {
            Outcome::Fail(TaskError {
                code: "broken".into(),
                message: "cannot".into(),
                is_retryable: false,
                ..Default::default()
            })
        }),
        ledger(),
    );
    let mut p = pipeline(vec![
        stage(1, "ok", &[]),
        stage(2, "bad", &[1]),
        stage(3, "slow", &[1]),
        stage(4, "end", &[2]),
    ]);
    p.error_strategy.on_stage_failure = strategy;
    let p = submit(&s, p).await;
    let hold = env
        .until_tasks(&p.pipeline_id, LONG, "stage 3 queued", |t| {
            t.iter().any(|t| t.stage == 3)
        })
        .await;
    let slow_task = hold.iter().find(|t| t.stage == 3).unwrap().clone();
    // Stage 3's agent takes its task only once stage 2 has failed, or completes it at once
    // under `continue`.
    let slow_handle = connect(&s, spec("ag-slow", AgentType::General, &["slow"])).await;
    let slow = if strategy == OnStageFailure::Continue {
        TestAgent::spawn(slow_handle, echo(), ledger())
    } else {
        TestAgent::spawn(slow_handle, Arc::new(|_| Outcome::Hang), ledger())
    };
    let _ = slow_task;
    (env, p, vec![good, bad, slow])
}

async fn strategy_stop(kind: BrokerKind) {
    let (env, p, agents) = strategy_case(kind, OnStageFailure::Stop).await;
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Failed);
    let st = |n: u32| done.stages.iter().find(|s| s.stage == n).unwrap().status;
    assert_eq!(
        (st(1), st(2), st(3), st(4)),
        (
            StageStatus::Completed,
            StageStatus::Failed,
            StageStatus::Cancelled,
            StageStatus::Cancelled
        )
    );
    let tasks = env.tasks(&p.pipeline_id).await;
    let s3 = tasks.iter().find(|t| t.stage == 3).unwrap();
    assert_eq!(s3.status, TaskStatus::Cancelled);
    assert!(tasks.iter().all(|t| t.stage != 4), "stage 4 never started");
    agents.iter().for_each(TestAgent::stop);
}

async fn strategy_rollback(kind: BrokerKind) {
    let (env, p, agents) = strategy_case(kind, OnStageFailure::Rollback).await;
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Failed);
    let st = |n: u32| done.stages.iter().find(|s| s.stage == n).unwrap().status;
    assert_eq!(
        (st(1), st(2), st(3)),
        (
            StageStatus::RolledBack,
            StageStatus::Failed,
            StageStatus::Cancelled
        )
    );
    agents.iter().for_each(TestAgent::stop);
}

async fn strategy_continue(kind: BrokerKind) {
    let (env, p, agents) = strategy_case(kind, OnStageFailure::Continue).await;
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Completed, "{:?}", done.stages);
    let st = |n: u32| done.stages.iter().find(|s| s.stage == n).unwrap().status;
    assert_eq!(
        (st(2), st(3), st(4)),
        (
            StageStatus::Failed,
            StageStatus::Completed,
            StageStatus::Completed
        )
    );
    assert!(done.errors.iter().any(|e| e.stage == 2 && e.handled));
    agents.iter().for_each(TestAgent::stop);
}

async fn cancel_pause_and_resume(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let by = By::user("operator");
    let p = submit(
        &s,
        pipeline(vec![stage(1, "work", &[]), stage(2, "work", &[1])]),
    )
    .await;
    env.until_tasks(&p.pipeline_id, LONG, "queued", |t| t.len() == 1)
        .await;
    let paused = s
        .command(&p.pipeline_id, Command::Pause, by.clone())
        .await
        .unwrap();
    assert_eq!(paused.status, PipelineStatus::Paused);
    assert_eq!(
        env.broker.queue_len("work").await.unwrap(),
        0,
        "no dispatch while paused"
    );
    let h = connect(&s, spec("ag-1", AgentType::General, &["work"])).await;
    assert!(h.fetch(Duration::ZERO).await.unwrap().is_none());
    let again = s.command(&p.pipeline_id, Command::Pause, by.clone()).await;
    assert!(
        matches!(again, Err(SchedulerError::Invalid(ref m)) if m.contains("paused")),
        "{again:?}"
    );
    s.command(&p.pipeline_id, Command::Resume, by.clone())
        .await
        .unwrap();
    let a = h
        .fetch(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("work after resume");
    h.complete(&a.lease, echo_report(&a.task)).await.unwrap();
    env.until_tasks(&p.pipeline_id, LONG, "stage 2 queued", |t| t.len() == 2)
        .await;
    let cancelled = s
        .command(&p.pipeline_id, Command::Cancel, by)
        .await
        .unwrap();
    assert_eq!(cancelled.status, PipelineStatus::Cancelled);
    let tasks = env.tasks(&p.pipeline_id).await;
    assert_eq!(count(&tasks, TaskStatus::Cancelled), 1);
    assert_eq!(count(&tasks, TaskStatus::Completed), 1);
    assert!(
        h.fetch(Duration::ZERO).await.unwrap().is_none(),
        "a cancelled task is not handed out"
    );
}

async fn a_silent_agents_task_is_finished_by_another(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let silent = connect(&s, spec("ag-silent", AgentType::General, &["work"])).await;
    let p = submit(&s, pipeline(vec![stage(1, "work", &[])])).await;
    let taken = silent.fetch(Duration::from_secs(2)).await.unwrap().unwrap();
    env.advance(Duration::from_secs(91)); // past the lease and the heartbeat timeout
    let t = env
        .until_tasks(&p.pipeline_id, LONG, "requeued", |t| {
            t[0].status == TaskStatus::Pending
        })
        .await;
    assert_eq!(t[0].retry_count, 1);
    assert_eq!(t[0].assignment_history.len(), 1);
    let reason = t[0].assignment_history[0].reason.clone().unwrap();
    assert!(
        reason == "lease_expired" || reason == "agent_inactive",
        "{reason}"
    );
    let l = ledger();
    let other = TestAgent::spawn(
        connect(&s, spec("ag-other", AgentType::General, &["work"])).await,
        echo(),
        l.clone(),
    );
    assert_eq!(
        env.finished(&p.pipeline_id, LONG).await.status,
        PipelineStatus::Completed
    );
    let late = silent
        .complete(&taken.lease, echo_report(&taken.task))
        .await;
    assert!(
        matches!(late, Err(SchedulerError::LeaseRefused { .. })),
        "{late:?}"
    );
    let t = &env.tasks(&p.pipeline_id).await[0];
    assert_eq!(t.assigned_agent_id.as_deref(), Some("ag-other"));
    assert!(
        t.lease_token > taken.lease.token,
        "the new lease has a larger token"
    );
    assert_eq!(l.lock().accepted[&t.task_id], ["ag-other"]);
    let agent = env.store.get_agent("ag-silent").await.unwrap().unwrap();
    let until = tokio::time::Instant::now() + LONG;
    let mut status = agent.status;
    while status != AgentStatus::Inactive && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = env
            .store
            .get_agent("ag-silent")
            .await
            .unwrap()
            .unwrap()
            .status;
    }
    assert_eq!(
        status,
        AgentStatus::Inactive,
        "the silent agent is marked inactive"
    );
    other.stop();
}

async fn working_hours_and_maintenance_are_respected(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let mut office = spec("ag-office", AgentType::General, &["work"]);
    office.scheduling_config.working_hours = Some(WorkingHours {
        start: "09:00".into(),
        end: "17:00".into(),
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ],
    });
    let office = connect(&s, office).await;
    let mut maint = spec("ag-maint", AgentType::General, &["work"]);
    maint.scheduling_config.maintenance_window = Some(MaintenanceWindow {
        start: "18:00".into(),
        duration_minutes: 60,
    });
    let maint = connect(&s, maint).await;
    let p = submit(&s, pipeline(vec![stage(1, "work", &[])])).await;
    env.until_tasks(&p.pipeline_id, LONG, "queued", |t| t.len() == 1)
        .await;
    // Live agents heartbeat; without it the reaper would (rightly) retire them as silent.
    let alive = || async {
        office.heartbeat(&[]).await.unwrap();
        maint.heartbeat(&[]).await.unwrap();
    };
    // Monday 18:30: after office hours, inside the maintenance window.
    env.advance(Duration::from_secs(8 * 3600 + 1800));
    alive().await;
    assert!(
        office.fetch(Duration::ZERO).await.unwrap().is_none(),
        "after hours"
    );
    assert!(
        maint.fetch(Duration::ZERO).await.unwrap().is_none(),
        "in maintenance"
    );
    // Monday 19:30: the maintenance window is over.
    env.advance(Duration::from_secs(3600));
    alive().await;
    assert!(
        office.fetch(Duration::ZERO).await.unwrap().is_none(),
        "still after hours"
    );
    let a = maint
        .fetch(Duration::ZERO)
        .await
        .unwrap()
        .expect("maintenance over");
    maint
        .complete(&a.lease, echo_report(&a.task))
        .await
        .unwrap();
    // Tuesday 09:30: the office agent works again.
    let p2 = submit(&s, pipeline(vec![stage(1, "work", &[])])).await;
    env.until_tasks(&p2.pipeline_id, LONG, "queued", |t| t.len() == 1)
        .await;
    env.advance(Duration::from_secs(14 * 3600));
    alive().await;
    assert!(
        office.fetch(Duration::ZERO).await.unwrap().is_some(),
        "office hours"
    );
}

async fn eight_agents_two_thousand_tasks_each_exactly_once(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let l = ledger();
    let mut agents = Vec::new();
    for i in 0..8 {
        let h = connect(&s, spec(&format!("ag-{i}"), AgentType::General, &["work"])).await;
        agents.push(TestAgent::spawn(h, echo(), l.clone()));
    }
    let mut ids = Vec::new();
    for _ in 0..10 {
        let mut st = stage(1, "work", &[]);
        st.fan_out = Some("/pipeline/items".into());
        let mut p = pipeline(vec![st]);
        p.input_data = obj(json!({ "items": (0..200).collect::<Vec<_>>() }));
        ids.push(submit(&s, p).await.pipeline_id);
    }
    for id in &ids {
        assert_eq!(
            env.finished(id, Duration::from_secs(240)).await.status,
            PipelineStatus::Completed
        );
    }
    let mut all = Vec::new();
    for id in &ids {
        all.extend(env.tasks(id).await);
    }
    agents.iter().for_each(TestAgent::stop);
    {
        let mut total = 0;
        let g = l.lock();
        for t in all {
            assert_eq!(t.status, TaskStatus::Completed);
            assert_eq!(
                g.accepted.get(&t.task_id).map(Vec::len),
                Some(1),
                "task {} accepted once",
                t.task_id
            );
            total += 1;
        }
        assert_eq!(total, 2000);
        assert_eq!(g.accepted.len(), 2000, "no result for anything else");
        assert!(
            g.refused.is_empty(),
            "{:?}",
            &g.refused[..g.refused.len().min(3)]
        );
    }
    // The agents' performance metrics add up to the same 2,000 (all-time and last 24 h); a
    // periodic flush may be writing at the same moment, so look until they settle.
    let until = tokio::time::Instant::now() + LONG;
    loop {
        s.children.registry.send(FlushOutcomes).await.unwrap();
        let (mut all_time, mut day, mut perfect) = (0, 0, true);
        for i in 0..8 {
            let a = env
                .store
                .get_agent(&format!("ag-{i}"))
                .await
                .unwrap()
                .unwrap();
            all_time += a.performance_metrics.tasks_completed;
            day += a.performance_metrics.last_24h.tasks_completed;
            perfect &= a.performance_metrics.tasks_failed == 0;
        }
        assert!(perfect, "no failures were reported");
        if (all_time, day) == (2000, 2000) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "agent metrics stuck at {all_time} all-time, {day} in 24 h"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = s.children.metrics.send(CloseWindow).await.unwrap();
    assert!(written > 0);
    let m = env
        .store
        .query_metrics(
            &MetricQuery {
                metric_name: Some("task_processing_time".into()),
                ..Default::default()
            },
            &Page::first(100),
        )
        .await
        .unwrap();
    let by_type = m
        .items
        .iter()
        .find(|m| m.dimensions.task_type.as_deref() == Some("work"))
        .unwrap();
    assert_eq!(by_type.statistics.count, 2000);
}

async fn a_failing_actor_is_restarted_and_the_pipeline_finishes(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let l = ledger();
    let a = TestAgent::spawn(
        connect(&s, spec("ag-1", AgentType::General, &["work"])).await,
        echo(),
        l.clone(),
    );
    let p = submit(
        &s,
        pipeline(vec![
            stage(1, "work", &[]),
            stage(2, "hold", &[1]),
            stage(3, "work", &[2]),
        ]),
    )
    .await;
    // Mid-pipeline: stage 1 done, stage 2 queued for an agent that is not there yet.
    env.until_tasks(&p.pipeline_id, LONG, "stage 2 queued", |t| {
        t.iter().any(|t| t.stage == 2)
    })
    .await;
    assert!(s
        .supervisor
        .send(FailCoordinator(p.pipeline_id.clone()))
        .await
        .unwrap());
    s.children.dispatcher.do_send(InjectFailure);
    let b = TestAgent::spawn(
        connect(&s, spec("ag-2", AgentType::General, &["hold"])).await,
        echo(),
        l.clone(),
    );
    assert_eq!(
        env.finished(&p.pipeline_id, LONG).await.status,
        PipelineStatus::Completed
    );
    let snap = s.supervisor.send(Snapshot).await.unwrap();
    assert!(
        snap.restarts >= 2,
        "coordinator and dispatcher restarts counted: {snap:?}"
    );
    let tasks = env.tasks(&p.pipeline_id).await;
    assert_eq!(tasks.len(), 3, "no stage created twice");
    assert!(l.lock().accepted.values().all(|v| v.len() == 1));
    a.stop();
    b.stop();
}

async fn a_survivor_takes_over_a_dead_instances_pipelines(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let three = || {
        pipeline(vec![
            stage(1, "first", &[]),
            stage(2, "later", &[1]),
            stage(3, "later", &[2]),
        ])
    };
    // Instance A runs on its own actix system and thread, with an agent for the first stages
    // only, and dies without any clean-up.
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let (ready, started) = std::sync::mpsc::channel();
    let env_a = env.clone();
    let a_thread = std::thread::spawn(move || {
        let sys = actix_rt::System::new();
        sys.block_on(async move {
            let a = env_a.start("instance-a").await;
            let agent = TestAgent::spawn(
                connect(&a, spec("ag-a", AgentType::General, &["first"])).await,
                echo(),
                ledger(),
            );
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(submit(&a, three()).await.pipeline_id);
            }
            ready.send(ids).unwrap();
            while killed.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            agent.stop();
        });
        // Dropping the system drops every actor of A mid-flight: no lock is released.
    });
    // Never block this runtime: the shared store's group-commit writer runs on it.
    let ids: Vec<String> = loop {
        match started.try_recv() {
            Ok(ids) => break ids,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("instance A died: {e}"),
        }
    };
    // A drives every pipeline to its second stage, then dies.
    for id in &ids {
        env.until_tasks(id, LONG, "A reached stage 2", |t| {
            t.iter().any(|t| t.stage == 2)
        })
        .await;
    }
    kill.send(()).unwrap();
    tokio::task::spawn_blocking(move || a_thread.join().unwrap())
        .await
        .unwrap();

    let b = env.start("instance-b").await;
    let l = ledger();
    let mut agents = Vec::new();
    for i in 0..2 {
        let h = connect(
            &b,
            spec(&format!("ag-{i}"), AgentType::General, &["first", "later"]),
        )
        .await;
        agents.push(TestAgent::spawn(h, echo(), l.clone()));
    }
    // B's agents finish the queued second stages, but while A's locks are live nobody may
    // coordinate: no third stage appears.
    for id in &ids {
        env.until_tasks(id, LONG, "stage 2 done", |t| {
            t.iter()
                .any(|t| t.stage == 2 && t.status == TaskStatus::Completed)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // several scans by B
    for id in &ids {
        assert!(
            env.tasks(id).await.iter().all(|t| t.stage != 3),
            "B must not take a live lock"
        );
    }
    // A's locks lapse; B's scan takes the pipelines over.
    env.advance(Duration::from_secs(16));
    for id in &ids {
        let done = env.finished(id, LONG).await;
        assert_eq!(done.status, PipelineStatus::Completed, "{id}");
        let tasks = env.tasks(id).await;
        assert_eq!(tasks.len(), 3, "no stage created twice");
        for t in tasks {
            assert_eq!(t.status, TaskStatus::Completed);
            let completions = env
                .events_of(&t.task_id)
                .await
                .iter()
                .filter(|e| *e == "task_completed")
                .count();
            assert_eq!(completions, 1, "task {} completed once", t.task_id);
        }
    }
    assert!(l.lock().accepted.values().all(|v| v.len() == 1));
    agents.iter().for_each(TestAgent::stop);
}

#[actix_rt::test]
async fn a_result_for_a_report_nobody_leased_is_refused() {
    let env = Env::new(BrokerKind::Memory).await;
    let s = env.start("i1").await;
    let h = connect(&s, spec("ag-1", AgentType::General, &["work"])).await;
    let other = connect(&s, spec("ag-2", AgentType::General, &["work"])).await;
    let p = submit(&s, pipeline(vec![stage(1, "work", &[])])).await;
    let a = h.fetch(Duration::from_secs(2)).await.unwrap().unwrap();
    // A foreign agent, and a forged token, are refused and change nothing.
    let foreign = other.complete(&a.lease, ResultReport::default()).await;
    assert!(
        matches!(&foreign, Err(SchedulerError::LeaseRefused { reason, .. }) if reason.contains("another agent")),
        "{foreign:?}"
    );
    let mut forged = a.lease.clone();
    forged.token += 1;
    let forged = h.complete(&forged, ResultReport::default()).await;
    assert!(
        matches!(&forged, Err(SchedulerError::LeaseRefused { reason, .. }) if reason.contains("superseded")),
        "{forged:?}"
    );
    assert_eq!(
        env.tasks(&p.pipeline_id).await[0].status,
        TaskStatus::Assigned
    );
    h.complete(&a.lease, echo_report(&a.task)).await.unwrap();
    let twice = h.complete(&a.lease, echo_report(&a.task)).await;
    assert!(
        matches!(twice, Err(SchedulerError::LeaseRefused { .. })),
        "{twice:?}"
    );
    // Bad credentials.
    let bad = s.connect("ag-1", "not-the-token").await;
    assert!(matches!(bad, Err(SchedulerError::Unauthorized(_))));
}

#[actix_rt::test]
async fn an_invalid_pipeline_is_refused_and_nothing_is_written() {
    let env = Env::new(BrokerKind::Memory).await;
    let s = env.start("i1").await;
    let bad = pipeline(vec![stage(1, "work", &[2]), stage(2, "work", &[1])]);
    let err = s.submit(bad, By::user("tester")).await.unwrap_err();
    assert!(err.to_string().contains("dependency cycle"), "{err}");
    let all = env
        .store
        .query_pipelines(&Default::default(), &Page::first(10))
        .await
        .unwrap();
    assert!(all.items.is_empty());
}

#[actix_rt::test]
async fn a_command_on_a_finished_pipeline_is_refused_and_leaves_no_coordinator() {
    let env = Env::new(BrokerKind::Memory).await;
    let s = env.start("i1").await;
    let a = TestAgent::spawn(
        connect(&s, spec("ag-1", AgentType::General, &["work"])).await,
        echo(),
        ledger(),
    );
    let p = submit(&s, pipeline(vec![stage(1, "work", &[])])).await;
    assert_eq!(
        env.finished(&p.pipeline_id, LONG).await.status,
        PipelineStatus::Completed
    );
    let err = s
        .command(&p.pipeline_id, Command::Cancel, By::user("operator"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("completed"), "{err}");
    let until = tokio::time::Instant::now() + LONG;
    while !s
        .supervisor
        .send(Snapshot)
        .await
        .unwrap()
        .coordinating
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < until,
            "coordinator of a finished pipeline lingers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.pipeline(&p.pipeline_id).await.status,
        PipelineStatus::Completed
    );
    a.stop();
}

async fn a_broker_that_loses_its_data_mid_run_is_rebuilt(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let s = env.start("i1").await;
    let l = ledger();
    let fast = TestAgent::spawn(
        connect(&s, spec("ag-1", AgentType::General, &["work"])).await,
        echo(),
        l.clone(),
    );
    let mut st = stage(1, "work", &[]);
    st.fan_out = Some("/pipeline/items".into());
    let mut p = pipeline(vec![st, stage(2, "held", &[1])]);
    p.input_data = obj(json!({ "items": (0..20).collect::<Vec<_>>() }));
    let p = submit(&s, p).await;
    env.until_tasks(&p.pipeline_id, LONG, "stage 2 queued", |t| {
        t.iter().any(|t| t.stage == 2)
    })
    .await;
    let before = env.store.max_lease_token().await.unwrap();
    let rebuilds = Counters::get(&s.deps.counters.broker_rebuilds);
    // Redis flushed (or replaced) while mcpd runs: queues, leases, locks and the counter go.
    env.broker.purge().await.unwrap();
    let late = TestAgent::spawn(
        connect(&s, spec("ag-2", AgentType::General, &["held"])).await,
        echo(),
        l.clone(),
    );
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(
        done.status,
        PipelineStatus::Completed,
        "the queued task was not lost"
    );
    let tasks = env.tasks(&p.pipeline_id).await;
    assert_eq!(tasks.len(), 21);
    assert!(
        Counters::get(&s.deps.counters.broker_rebuilds) > rebuilds,
        "the loss was noticed"
    );
    let counter = env.broker.raise_fence_floor(0).await.unwrap();
    assert!(
        counter >= before,
        "the fencing counter is back above every recorded token"
    );
    assert!(l.lock().accepted.values().all(|v| v.len() == 1));
    fast.stop();
    late.stop();
}

async fn results_sent_to_another_instance_reach_the_coordinator(kind: BrokerKind) {
    let env = Env::new(kind).await;
    let a = env.start("instance-a").await;
    // Coordinated by A (B starts once A holds the pipeline); every agent talks to B only.
    let mut st = stage(1, "work", &[]);
    st.fan_out = Some("/pipeline/items".into());
    let mut p = pipeline(vec![st, stage(2, "work", &[1]), stage(3, "work", &[2])]);
    p.input_data = obj(json!({ "items": (0..30).collect::<Vec<_>>() }));
    let p = submit(&a, p).await;
    env.until_tasks(&p.pipeline_id, LONG, "A started the pipeline", |t| {
        !t.is_empty()
    })
    .await;
    let b = env.start("instance-b").await;
    let l = ledger();
    let agents: Vec<_> = futures::future::join_all((0..3).map(|i| {
        let b = b.clone();
        async move { connect(&b, spec(&format!("ag-{i}"), AgentType::General, &["work"])).await }
    }))
    .await
    .into_iter()
    .map(|h| TestAgent::spawn(h, echo(), l.clone()))
    .collect();
    let done = env.finished(&p.pipeline_id, LONG).await;
    assert_eq!(done.status, PipelineStatus::Completed);
    assert_eq!(
        env.tasks(&p.pipeline_id).await.len(),
        32,
        "each stage created once"
    );
    // Every pipeline step was written by A, none by B.
    let steps = env
        .store
        .query_events(
            &EventQuery {
                target_id: Some(p.pipeline_id.clone()),
                ..Default::default()
            },
            &Page::first(1000),
        )
        .await
        .unwrap();
    let writers: std::collections::BTreeSet<String> = steps
        .items
        .iter()
        .filter(|e| e.event_type != "pipeline_created")
        .map(|e| e.source.id.clone())
        .collect();
    assert_eq!(writers.into_iter().collect::<Vec<_>>(), ["instance-a"]);
    assert!(l.lock().accepted.values().all(|v| v.len() == 1));
    agents.iter().for_each(TestAgent::stop);
}
