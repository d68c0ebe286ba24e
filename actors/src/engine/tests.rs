use super::*;
use crate::model::{
    BackoffStrategy, ErrorStrategy, PipelineConfiguration, QualityScores, RetryConfig,
};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + ms)
}

fn def(n: u32, deps: &[u32]) -> StageDefinition {
    StageDefinition {
        stage: n,
        name: format!("s{n}"),
        task_type: format!("type{n}"),
        dependencies: deps.to_vec(),
        timeout_seconds: 60,
        ..Default::default()
    }
}

fn pipeline(stages: Vec<StageDefinition>) -> Pipeline {
    Pipeline {
        pipeline_id: "p1".into(),
        priority: 5,
        configuration: PipelineConfiguration {
            stages,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The store, in memory: applies a plan's task writes.
struct World {
    p: Pipeline,
    tasks: Vec<Task>,
    journal: Journal,
    actor: Actor,
}

impl World {
    fn new(p: Pipeline) -> Self {
        World {
            p,
            tasks: Vec::new(),
            journal: Journal::default(),
            actor: Actor::system("test"),
        }
    }

    fn reconcile(&mut self, now: Timestamp) -> Plan {
        let plan = reconcile(
            &mut self.p,
            &self.tasks,
            now,
            &self.journal,
            &self.actor,
            &mut || 1.0,
        );
        self.absorb(&plan);
        plan
    }

    fn command(&mut self, cmd: Command, now: Timestamp) -> Result<Plan, CommandRefused> {
        let plan = command(
            &mut self.p,
            &self.tasks,
            cmd,
            now,
            &self.journal,
            &self.actor,
        )?;
        self.absorb(&plan);
        Ok(plan)
    }

    fn absorb(&mut self, plan: &Plan) {
        for (t, _) in &plan.updates {
            let slot = self
                .tasks
                .iter_mut()
                .find(|x| x.task_id == t.task_id)
                .unwrap();
            *slot = t.clone();
        }
        self.tasks.extend(plan.inserts.iter().cloned());
    }

    fn stage(&self, n: u32) -> Vec<&Task> {
        self.tasks.iter().filter(|t| t.stage == n).collect()
    }

    fn stage_status(&self, n: u32) -> StageStatus {
        self.p.stages.iter().find(|s| s.stage == n).unwrap().status
    }

    /// An agent takes and finishes a task with `output`.
    fn complete(&mut self, task_id: &str, output: Value, now: Timestamp) {
        let t = self
            .tasks
            .iter_mut()
            .find(|t| t.task_id == task_id)
            .unwrap();
        t.transition_to(TaskStatus::Assigned, now).unwrap();
        t.transition_to(TaskStatus::Completed, now).unwrap();
        t.output_data = output.as_object().cloned();
    }

    fn assign(&mut self, task_id: &str, agent: &str, token: u64, now: Timestamp) {
        let t = self
            .tasks
            .iter_mut()
            .find(|t| t.task_id == task_id)
            .unwrap();
        t.transition_to(TaskStatus::Assigned, now).unwrap();
        t.assigned_agent_id = Some(agent.into());
        t.lease_token = token;
        t.assignment_history.push(assignment(agent, now));
    }

    fn fail(&mut self, task_id: &str, retryable: bool, now: Timestamp) -> TaskStatus {
        let t = self
            .tasks
            .iter_mut()
            .find(|t| t.task_id == task_id)
            .unwrap();
        if t.status == TaskStatus::Pending {
            t.transition_to(TaskStatus::Assigned, now).unwrap();
        }
        let error = TaskError {
            code: "boom".into(),
            message: "agent failed".into(),
            is_retryable: retryable,
            ..Default::default()
        };
        record_failure(t, error, now).unwrap()
    }

    fn ids(&self, n: u32) -> Vec<String> {
        self.stage(n).iter().map(|t| t.task_id.clone()).collect()
    }
}

#[test]
fn a_linear_pipeline_runs_to_completion_passing_outputs_on() {
    let mut w = World::new(pipeline(vec![def(1, &[]), def(2, &[1])]));
    w.p.input_data = obj([("text", "hello".into())]);
    let plan = w.reconcile(at(0));
    assert_eq!(w.p.status, PipelineStatus::Running);
    assert_eq!((plan.inserts.len(), plan.enqueue.len()), (1, 1));
    assert_eq!(w.stage_status(1), StageStatus::Running);
    assert_eq!(w.stage_status(2), StageStatus::Pending);
    assert_eq!(w.tasks[0].input_data["pipeline"]["text"], "hello");
    assert_eq!(w.tasks[0].task_type, "type1");

    assert!(
        w.reconcile(at(1)).is_empty(),
        "nothing happened, nothing to do"
    );

    let id = w.ids(1)[0].clone();
    w.complete(&id, json!({"score": 0.9}), at(10));
    w.reconcile(at(10));
    assert_eq!(w.stage_status(1), StageStatus::Completed);
    let t2 = w.stage(2)[0].clone();
    assert_eq!(
        t2.input_data["dependencies"]["s1"]["score"], 0.9,
        "output passed on"
    );

    w.complete(&t2.task_id, json!({"report": "ok"}), at(20));
    let plan = w.reconcile(at(20));
    assert_eq!(w.p.status, PipelineStatus::Completed);
    assert_eq!(w.p.progress, 1.0);
    assert_eq!(
        w.p.output_data.as_ref().unwrap()["s2"]["report"],
        "ok",
        "sink output"
    );
    assert!(plan
        .events
        .iter()
        .any(|e| e.event_type == "pipeline_completed"));
    assert!(
        w.reconcile(at(30)).is_empty(),
        "a finished pipeline stays finished"
    );
}

#[test]
fn parallel_branches_start_together_and_join() {
    let mut w = World::new(pipeline(vec![
        def(1, &[]),
        def(2, &[1]),
        def(3, &[1]),
        def(4, &[2, 3]),
    ]));
    w.reconcile(at(0));
    let id = w.ids(1)[0].clone();
    w.complete(&id, json!({}), at(1));
    let plan = w.reconcile(at(1));
    assert_eq!(plan.inserts.len(), 2, "stages 2 and 3 at once");
    assert_eq!(w.stage_status(2), StageStatus::Running);
    assert_eq!(w.stage_status(3), StageStatus::Running);
    let id2 = w.ids(2)[0].clone();
    w.complete(&id2, json!({"b": 2}), at(2));
    w.reconcile(at(2));
    assert_eq!(
        w.stage_status(4),
        StageStatus::Pending,
        "waits for both branches"
    );
    let id3 = w.ids(3)[0].clone();
    w.complete(&id3, json!({"c": 3}), at(3));
    w.reconcile(at(3));
    let t4 = w.stage(4)[0];
    assert_eq!(t4.input_data["dependencies"]["s2"]["b"], 2);
    assert_eq!(t4.input_data["dependencies"]["s3"]["c"], 3);
}

#[test]
fn fan_out_runs_a_task_per_item_and_fans_in_in_order() {
    let mut d1 = def(1, &[]);
    d1.fan_out = Some("/pipeline/texts".into());
    let mut w = World::new(pipeline(vec![d1, def(2, &[1])]));
    w.p.input_data = obj([("texts", json!(["a", "b", "c"]))]);
    w.reconcile(at(0));
    let tasks: Vec<Task> = w.stage(1).into_iter().cloned().collect();
    assert_eq!(tasks.len(), 3);
    assert_eq!(
        tasks[0].input_data["pipeline"]["texts"],
        Value::Null,
        "the list stays out"
    );
    assert_eq!(tasks[1].input_data["item"], "b");
    for t in tasks.iter().rev() {
        let item = t.input_data["item"].as_str().unwrap().to_uppercase();
        w.complete(&t.task_id, json!({ "upper": item }), at(5));
    }
    w.reconcile(at(5));
    let fan_in = &w.stage(2)[0].input_data["dependencies"]["s1"]["items"];
    assert_eq!(
        fan_in,
        &json!([{"upper": "A"}, {"upper": "B"}, {"upper": "C"}])
    );
}

#[test]
fn a_fan_out_over_something_that_is_not_a_list_fails_the_stage_clearly() {
    let mut d1 = def(1, &[]);
    d1.fan_out = Some("/pipeline/texts".into());
    let mut w = World::new(pipeline(vec![d1]));
    w.p.input_data = obj([("texts", "just one".into())]);
    w.reconcile(at(0));
    assert_eq!(w.p.status, PipelineStatus::Failed);
    let msg = w.p.errors[0].error["message"].as_str().unwrap();
    assert!(msg.contains("names a string, not a list"), "{msg}");
}

#[test]
fn retries_back_off_exponentially_then_fail_the_stage() {
    let mut d1 = def(1, &[]);
    d1.retry_config = RetryConfig {
        max_retries: 2,
        backoff_strategy: BackoffStrategy::Exponential,
        delay_seconds: 10,
        max_delay_seconds: None,
    };
    let mut w = World::new(pipeline(vec![d1]));
    w.reconcile(at(0));
    let id = w.ids(1)[0].clone();

    assert_eq!(w.fail(&id, true, at(1_000)), TaskStatus::Retry);
    let plan = w.reconcile(at(1_000));
    assert_eq!(plan.next_wake, Some(at(11_000)), "first retry after 10 s");
    assert!(w.reconcile(at(10_999)).is_empty(), "not yet due");
    let plan = w.reconcile(at(11_000));
    assert_eq!(plan.enqueue.len(), 1, "requeued when due");
    assert_eq!(w.stage(1)[0].status, TaskStatus::Pending);

    assert_eq!(w.fail(&id, true, at(12_000)), TaskStatus::Retry);
    let plan = w.reconcile(at(12_000));
    assert_eq!(plan.next_wake, Some(at(32_000)), "second retry after 20 s");
    w.reconcile(at(32_000));

    assert_eq!(
        w.fail(&id, true, at(33_000)),
        TaskStatus::Failed,
        "retries exhausted"
    );
    w.reconcile(at(33_000));
    assert_eq!(w.stage_status(1), StageStatus::Failed);
    assert_eq!(
        w.p.status,
        PipelineStatus::Failed,
        "default strategy is stop"
    );
}

#[test]
fn an_attempt_past_the_stage_timeout_is_revoked_and_retried() {
    let mut d1 = def(1, &[]);
    d1.timeout_seconds = 30;
    d1.retry_config.max_retries = 1;
    let mut w = World::new(pipeline(vec![d1]));
    w.reconcile(at(0));
    let id = w.ids(1)[0].clone();
    w.assign(&id, "agent-a", 7, at(1_000));
    let plan = w.reconcile(at(2_000));
    assert_eq!(plan.next_wake, Some(at(31_000)));
    let plan = w.reconcile(at(31_000));
    assert_eq!(plan.revoke.len(), 1);
    assert_eq!(plan.revoke[0].1.token, 7);
    let t = w.stage(1)[0];
    assert_eq!(t.status, TaskStatus::Retry);
    assert_eq!(t.error.as_ref().unwrap().code, "timeout");
    assert_eq!(t.assignment_history[0].reason.as_deref(), Some("timeout"));
}

#[test]
fn the_pipeline_deadline_fails_it_and_cancels_its_tasks() {
    let mut w = World::new(pipeline(vec![def(1, &[])]));
    w.p.deadline = Some(at(60_000));
    let plan = w.reconcile(at(0));
    assert_eq!(plan.next_wake, Some(at(60_000)));
    let plan = w.reconcile(at(60_000));
    assert_eq!(w.p.status, PipelineStatus::Failed);
    assert_eq!(w.stage(1)[0].status, TaskStatus::Cancelled);
    assert_eq!(plan.dequeue.len(), 1);
    assert_eq!(w.stage_status(1), StageStatus::Cancelled);
}

fn three_stage(strategy: OnStageFailure) -> World {
    // 1 -> 2, 1 -> 3: stage 2 fails while 3 runs.
    let mut p = pipeline(vec![def(1, &[]), def(2, &[1]), def(3, &[1]), def(4, &[2])]);
    p.error_strategy = ErrorStrategy {
        on_stage_failure: strategy,
        ..Default::default()
    };
    let mut w = World::new(p);
    w.reconcile(at(0));
    let id = w.ids(1)[0].clone();
    w.complete(&id, json!({"x": 1}), at(1));
    w.reconcile(at(1));
    let id3 = w.ids(3)[0].clone();
    w.assign(&id3, "agent-b", 3, at(2));
    let id2 = w.ids(2)[0].clone();
    w.fail(&id2, false, at(3));
    w
}

#[test]
fn stop_cancels_running_work_and_fails_the_pipeline() {
    let mut w = three_stage(OnStageFailure::Stop);
    let plan = w.reconcile(at(3));
    assert_eq!(w.p.status, PipelineStatus::Failed);
    assert_eq!(w.stage_status(2), StageStatus::Failed);
    assert_eq!(w.stage_status(3), StageStatus::Cancelled);
    assert_eq!(w.stage_status(4), StageStatus::Cancelled);
    assert_eq!(w.stage_status(1), StageStatus::Completed);
    assert_eq!(plan.revoke.len(), 1, "stage 3's lease revoked");
}

#[test]
fn rollback_also_marks_finished_stages_rolled_back() {
    let mut w = three_stage(OnStageFailure::Rollback);
    w.reconcile(at(3));
    assert_eq!(w.p.status, PipelineStatus::Failed);
    assert_eq!(w.stage_status(1), StageStatus::RolledBack);
    assert_eq!(w.stage_status(3), StageStatus::Cancelled);
}

#[test]
fn continue_runs_the_rest_and_completes_with_errors_recorded() {
    let mut w = three_stage(OnStageFailure::Continue);
    w.reconcile(at(3));
    assert_eq!(w.p.status, PipelineStatus::Running);
    assert_eq!(w.stage_status(2), StageStatus::Failed);
    assert_eq!(
        w.stage_status(4),
        StageStatus::Running,
        "dependants still run"
    );
    assert_eq!(w.stage(4)[0].input_data["dependencies"]["s2"], Value::Null);
    let id3 = w.ids(3)[0].clone();
    let t3 = w.tasks.iter_mut().find(|t| t.task_id == id3).unwrap();
    t3.transition_to(TaskStatus::Completed, at(4)).unwrap();
    let id4 = w.ids(4)[0].clone();
    w.complete(&id4, json!({}), at(4));
    w.reconcile(at(4));
    assert_eq!(w.p.status, PipelineStatus::Completed);
    assert!(w.p.errors.iter().all(|e| e.handled));
}

#[test]
fn a_failed_stage_is_run_once_more_when_asked() {
    let mut p = pipeline(vec![def(1, &[])]);
    p.error_strategy.retry_failed_stages = true;
    let mut w = World::new(p);
    w.reconcile(at(0));
    let first = w.ids(1)[0].clone();
    w.fail(&first, false, at(1));
    let plan = w.reconcile(at(1));
    assert_eq!(plan.inserts.len(), 1, "a fresh task for the second run");
    assert_eq!(plan.inserts[0].pipeline_context.attempt, 2);
    assert_eq!(w.stage_status(1), StageStatus::Running);
    let second = plan.inserts[0].task_id.clone();
    w.fail(&second, false, at(2));
    w.reconcile(at(2));
    assert_eq!(w.p.status, PipelineStatus::Failed, "only once");
}

#[test]
fn quality_thresholds_travel_with_the_task() {
    let mut p = pipeline(vec![def(1, &[])]);
    p.configuration.quality_thresholds = obj([("overall", 0.8.into())]);
    let mut w = World::new(p);
    w.reconcile(at(0));
    let mut t = w.tasks[0].clone();
    assert!(meets_quality(&t).unwrap_err().contains("missing"));
    t.quality_scores = Some(QualityScores {
        overall: Some(0.5),
        ..Default::default()
    });
    assert!(meets_quality(&t)
        .unwrap_err()
        .contains("below the threshold 0.8"));
    t.quality_scores.as_mut().unwrap().overall = Some(0.9);
    meets_quality(&t).unwrap();
}

#[test]
fn pause_stops_dispatch_resume_restores_it_cancel_ends_everything() {
    let mut w = World::new(pipeline(vec![def(1, &[]), def(2, &[1])]));
    w.reconcile(at(0));
    let plan = w.command(Command::Pause, at(1)).unwrap();
    assert_eq!(plan.dequeue.len(), 1);
    assert_eq!(w.p.status, PipelineStatus::Paused);
    let id = w.ids(1)[0].clone();
    w.complete(&id, json!({}), at(2));
    let plan = w.reconcile(at(2));
    assert!(plan.inserts.is_empty(), "paused: no new stage starts");
    assert_eq!(
        w.command(Command::Pause, at(3)).unwrap_err().to_string(),
        "cannot Pause a pipeline that is paused"
    );
    w.command(Command::Resume, at(3)).unwrap();
    let plan = w.reconcile(at(3));
    assert_eq!(plan.inserts.len(), 1, "resumed: stage 2 starts");
    let plan = w.command(Command::Cancel, at(4)).unwrap();
    assert_eq!(w.p.status, PipelineStatus::Cancelled);
    assert_eq!(plan.dequeue.len(), 1);
    assert!(w.tasks.iter().all(|t| t.status.is_terminal()));
}

#[test]
fn a_scheduled_start_waits() {
    let mut w = World::new(pipeline(vec![def(1, &[])]));
    w.p.scheduled_start = Some(at(5_000));
    let plan = w.reconcile(at(0));
    assert_eq!(plan.next_wake, Some(at(5_000)));
    assert_eq!(w.p.status, PipelineStatus::Created);
    w.reconcile(at(5_000));
    assert_eq!(w.p.status, PipelineStatus::Running);
}

#[test]
fn work_finished_before_the_deadline_completes_the_pipeline_even_if_seen_after() {
    let mut w = World::new(pipeline(vec![def(1, &[])]));
    w.p.deadline = Some(at(60_000));
    w.reconcile(at(0));
    let id = w.ids(1)[0].clone();
    w.complete(&id, json!({"ok": true}), at(59_000));
    w.reconcile(at(61_000));
    assert_eq!(w.p.status, PipelineStatus::Completed);
}
