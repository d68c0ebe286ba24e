//! The scheduler under test: a real store (embedded SQLite in a temp dir), a real broker
//! (in-process or the shared redis-server), a manual wall clock the test advances, short real
//! timer intervals, and test agents that pull work through the library-level `AgentHandle`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mcpd::broker::memory::MemoryBroker;
use mcpd::broker::redis::RedisBroker;
use mcpd::store::embedded::{EmbeddedStore, Synchronous};
use mcpd::store::group_commit::GroupCommit;
use mcpd::store::mongo::MongoStore;
use mcpd_actors::agent_registry::AgentSpec;
use mcpd_actors::broker::Broker;
use mcpd_actors::clock::{ManualClock, SharedClock};
use mcpd_actors::deps::{Counters, Deps, Settings};
use mcpd_actors::dispatch::{Assignment, ResultReport};
use mcpd_actors::handle::{AgentHandle, Scheduler};
use mcpd_actors::journal::{Actor as By, Journal};
use mcpd_actors::model::{
    AgentType, Object, Pipeline, QualityScores, ResourceLimits, SchedulingConfig, Task, TaskError,
    TaskStatus, Timestamp,
};
use mcpd_actors::store::{collect_all, EventQuery, Store, TaskQuery};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::support;

/// Monday 2026-01-05 10:00:00 UTC: inside office hours everywhere the tests look.
pub const T0: i64 = 1_767_607_200_000;

/// Which broker backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// In-process.
    Memory,
    /// The shared redis-server.
    Redis,
    /// The shared redis-server, with the MongoDB store (SecantusDB in CI) instead of SQLite.
    RedisMongo,
}

/// Everything two scheduler instances may share.
#[derive(Clone)]
pub struct Env {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub clock: Arc<ManualClock>,
    pub settings: Settings,
}

impl Env {
    pub async fn new(kind: BrokerKind) -> Env {
        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let shared: SharedClock = clock.clone();
        let inner: Arc<dyn Store> = match kind {
            BrokerKind::RedisMongo => Arc::new(
                MongoStore::connect(
                    support::shared_mongo().url(),
                    &support::unique_name("sched"),
                )
                .await
                .unwrap(),
            ),
            _ => Arc::new(
                EmbeddedStore::open(&support::temp_dir("sched"), Synchronous::Normal).unwrap(),
            ),
        };
        // Through group commit, as the daemon runs every store.
        let store: Arc<dyn Store> = Arc::new(GroupCommit::new(inner, 256));
        let broker: Arc<dyn Broker> = match kind {
            BrokerKind::Memory => Arc::new(MemoryBroker::new(shared)),
            BrokerKind::Redis | BrokerKind::RedisMongo => Arc::new(
                RedisBroker::connect(
                    &support::shared_redis().url(),
                    &format!("{}:", support::unique_name("sched")),
                    8,
                    shared,
                )
                .await
                .unwrap(),
            ),
        };
        Env {
            store,
            broker,
            clock,
            settings: test_settings(),
        }
    }

    pub fn deps(&self, instance: &str) -> Deps {
        Deps {
            store: self.store.clone(),
            broker: self.broker.clone(),
            clock: self.clock.clone(),
            journal: Journal::default(),
            settings: self.settings.clone(),
            instance_id: instance.to_string(),
            counters: Arc::new(Counters::default()),
        }
    }

    pub async fn start(&self, instance: &str) -> Scheduler {
        Scheduler::start(self.deps(instance)).await.unwrap()
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    pub async fn tasks(&self, pipeline_id: &str) -> Vec<Task> {
        let q = TaskQuery {
            pipeline_id: Some(pipeline_id.to_string()),
            ..Default::default()
        };
        collect_all(1000, |page| {
            let q = &q;
            async move { self.store.query_tasks(q, &page).await }
        })
        .await
        .unwrap()
    }

    pub async fn pipeline(&self, pipeline_id: &str) -> Pipeline {
        self.store.get_pipeline(pipeline_id).await.unwrap().unwrap()
    }

    /// Event types about a target, oldest first.
    pub async fn events_of(&self, target_id: &str) -> Vec<String> {
        let q = EventQuery {
            target_id: Some(target_id.to_string()),
            ..Default::default()
        };
        collect_all(1000, |page| {
            let q = &q;
            async move { self.store.query_events(q, &page).await }
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
    }

    /// Waits (bounded, real time) until the pipeline is in a terminal state.
    pub async fn finished(&self, pipeline_id: &str, within: Duration) -> Pipeline {
        let until = tokio::time::Instant::now() + within;
        loop {
            let p = self.pipeline(pipeline_id).await;
            if p.status.is_terminal() {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "pipeline {pipeline_id} not finished within {within:?}: {:?} progress {} stages {:?}",
                p.status,
                p.progress,
                p.stages.iter().map(|s| (s.stage, s.status)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded, real time) until `probe` holds for the tasks of a pipeline.
    pub async fn until_tasks(
        &self,
        pipeline_id: &str,
        within: Duration,
        what: &str,
        probe: impl Fn(&[Task]) -> bool,
    ) -> Vec<Task> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let tasks = self.tasks(pipeline_id).await;
            if probe(&tasks) {
                return tasks;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{what}: not reached within {within:?}; tasks: {:?}",
                tasks
                    .iter()
                    .map(|t| (t.stage, t.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Real timers short, wall-clock limits (leases, heartbeats, locks) left to the manual clock.
pub fn test_settings() -> Settings {
    Settings {
        lease_ttl: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(90),
        reaper_interval: Duration::from_millis(50),
        reaper_batch: 256,
        max_lease_lapses: 5,
        pipeline_lock_ttl: Duration::from_secs(15),
        resync_interval: Duration::from_millis(1000),
        pipeline_scan_interval: Duration::from_millis(100),
        fetch_recheck_interval: Duration::from_millis(50),
        fetch_max_wait: Duration::from_secs(5),
        metrics_window: Duration::from_secs(3600),
        metrics_retention: Duration::from_secs(86_400),
        restart_backoff: Duration::from_millis(20),
        restart_backoff_max: Duration::from_millis(200),
        heartbeat_persist_interval: Duration::from_secs(30),
        retry_jitter: false,
    }
}

pub fn spec(id: &str, agent_type: AgentType, caps: &[&str]) -> AgentSpec {
    AgentSpec {
        agent_id: Some(id.to_string()),
        name: id.to_string(),
        agent_type,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        version: "1.0.0".into(),
        resource_limits: ResourceLimits {
            max_concurrent_tasks: 4,
            ..Default::default()
        },
        scheduling_config: SchedulingConfig::default(),
        created_by: "test".into(),
        ..Default::default()
    }
}

pub async fn connect(s: &Scheduler, spec: AgentSpec) -> AgentHandle {
    let id = spec.agent_id.clone().unwrap();
    let reg = s.register_agent(spec).await.unwrap();
    s.connect(&id, &reg.token).await.unwrap()
}

/// What a test agent does with a task.
pub type Behaviour = Arc<dyn Fn(&Task) -> Outcome + Send + Sync>;

/// A test agent's answer.
pub enum Outcome {
    Complete(ResultReport),
    Fail(TaskError),
    /// Takes the task and never answers (a silent agent).
    Hang,
}

/// The default work: echo the item (or the stage name) in the output, high quality.
pub fn echo() -> Behaviour {
    Arc::new(|t: &Task| Outcome::Complete(echo_report(t)))
}

pub fn echo_report(t: &Task) -> ResultReport {
    let mut out = Object::new();
    out.insert("stage".into(), json!(t.pipeline_context.stage_name));
    out.insert(
        "item".into(),
        t.input_data.get("item").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "inputs".into(),
        t.input_data
            .get("dependencies")
            .cloned()
            .unwrap_or(Value::Null),
    );
    ResultReport {
        output_data: Some(out),
        quality_scores: Some(QualityScores {
            overall: Some(0.95),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Per-task record of what the test agents did.
#[derive(Default)]
pub struct Ledger {
    /// task id → agents that got a result accepted for it.
    pub accepted: HashMap<String, Vec<String>>,
    /// Results refused.
    pub refused: Vec<(String, String)>,
    /// (task id, agent, started, finished) in manual-clock milliseconds and real order.
    pub spans: Vec<(String, String, Timestamp, Timestamp)>,
}

/// A running test agent: loops fetch → work → report until stopped.
pub struct TestAgent {
    pub handle: AgentHandle,
    stop: tokio::sync::watch::Sender<bool>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub held: Arc<Mutex<Vec<Assignment>>>,
}

impl TestAgent {
    pub fn spawn(
        handle: AgentHandle,
        behaviour: Behaviour,
        ledger: Arc<Mutex<Ledger>>,
    ) -> TestAgent {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = handle.clone();
        let (l, hd) = (ledger.clone(), held.clone());
        actix_rt::spawn(async move {
            loop {
                if *stopped.borrow() {
                    return;
                }
                let fetched = tokio::select! {
                    r = h.fetch(Duration::from_millis(200)) => r,
                    _ = stopped.changed() => return,
                };
                let Ok(Some(a)) = fetched else { continue };
                let started = h_now(&a);
                match behaviour(&a.task) {
                    Outcome::Hang => {
                        hd.lock().push(a);
                    }
                    Outcome::Complete(report) => match h.complete(&a.lease, report).await {
                        Ok(t) => {
                            let mut g = l.lock();
                            g.accepted
                                .entry(t.task_id.clone())
                                .or_default()
                                .push(h.agent_id().to_string());
                            g.spans.push((
                                t.task_id.clone(),
                                h.agent_id().to_string(),
                                started,
                                t.updated_at,
                            ));
                        }
                        Err(e) => l
                            .lock()
                            .refused
                            .push((a.task.task_id.clone(), e.to_string())),
                    },
                    Outcome::Fail(err) => {
                        let _ = h.fail(&a.lease, err).await;
                    }
                }
            }
        });
        TestAgent {
            handle,
            stop,
            ledger,
            held,
        }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits (bounded, real time) until this agent holds a task without answering; takes it.
    pub async fn take_held(&self) -> Assignment {
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(a) = self.held.lock().pop() {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "agent {} holds nothing",
                self.handle.agent_id()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn h_now(a: &Assignment) -> Timestamp {
    a.task.assigned_at.unwrap_or(a.task.updated_at)
}

/// Submits a pipeline as the test user.
pub async fn submit(s: &Scheduler, p: Pipeline) -> Pipeline {
    s.submit(p, By::user("tester")).await.unwrap()
}

pub fn obj(v: Value) -> Object {
    v.as_object().cloned().unwrap()
}

pub fn count(tasks: &[Task], status: TaskStatus) -> usize {
    tasks.iter().filter(|t| t.status == status).count()
}
