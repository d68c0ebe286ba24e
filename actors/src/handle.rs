//! The library-level handles: [`Scheduler`] (start the tree, submit and steer pipelines,
//! register agents) and [`AgentHandle`] (what one authenticated agent can do: fetch,
//! heartbeat, progress, complete, fail). The network edge and the tests both use these.

use std::time::Duration;

use actix::prelude::*;

use crate::agent_registry::{AgentSpec, Authenticate, Heartbeat, RegisterAgent, Registered};
use crate::broker::Lease;
use crate::deps::Deps;
use crate::dispatch::{Assignment, ResultReport};
use crate::engine::Command;
use crate::error::{SchedResult, SchedulerError};
use crate::journal::Actor as By;
use crate::model::{Pipeline, Task, TaskError};
use crate::supervisor::{
    Children, GetChildren, PipelineCommand, SubmitPipeline, Supervisor, COMMAND_RETRY,
};
use crate::task_dispatcher::{CompleteTask, FailTask, FetchTask, RenewLease};

/// A running scheduler: the supervisor tree of one mcpd instance.
#[derive(Clone)]
pub struct Scheduler {
    /// The root.
    pub supervisor: Addr<Supervisor>,
    /// The long-lived children.
    pub children: Children,
    /// What the actors were given.
    pub deps: Deps,
}

impl Scheduler {
    /// Starts the tree. Must run inside an actix system (`actix_rt::System`, `#[actix::main]`,
    /// `#[actix::test]`).
    pub async fn start(deps: Deps) -> SchedResult<Scheduler> {
        let supervisor = Supervisor::new(deps.clone()).start();
        let children = supervisor.send(GetChildren).await?;
        Ok(Scheduler {
            supervisor,
            children,
            deps,
        })
    }

    /// Validates, stores and starts a pipeline.
    pub async fn submit(&self, pipeline: Pipeline, by: By) -> SchedResult<Pipeline> {
        self.supervisor
            .send(SubmitPipeline { pipeline, by })
            .await?
    }

    /// Cancels, pauses or resumes a pipeline; retries briefly while its coordinator is busy.
    pub async fn command(
        &self,
        pipeline_id: &str,
        command: Command,
        by: By,
    ) -> SchedResult<Pipeline> {
        let mut last = None;
        for _ in 0..100 {
            let res = self
                .supervisor
                .send(PipelineCommand {
                    pipeline_id: pipeline_id.to_string(),
                    command,
                    by: by.clone(),
                })
                .await?;
            match res {
                Err(SchedulerError::Unavailable(reason)) => {
                    last = Some(reason);
                    tokio::time::sleep(COMMAND_RETRY).await;
                }
                other => return other,
            }
        }
        Err(SchedulerError::Unavailable(last.unwrap_or_default()))
    }

    /// Registers an agent; the token in the answer is shown only this once.
    pub async fn register_agent(&self, spec: AgentSpec) -> SchedResult<Registered> {
        self.children.registry.send(RegisterAgent(spec)).await?
    }

    /// Authenticates an agent and hands back what it may do.
    pub async fn connect(&self, agent_id: &str, token: &str) -> SchedResult<AgentHandle> {
        let agent = self
            .children
            .registry
            .send(Authenticate {
                agent_id: agent_id.to_string(),
                token: token.to_string(),
            })
            .await??;
        let handle = AgentHandle {
            agent_id: agent.agent_id,
            scheduler: self.clone(),
        };
        handle.heartbeat(&[]).await?;
        Ok(handle)
    }

    /// A pipeline as stored.
    pub async fn pipeline(&self, pipeline_id: &str) -> SchedResult<Pipeline> {
        self.deps
            .store
            .get_pipeline(pipeline_id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound {
                kind: "pipeline",
                id: pipeline_id.to_string(),
            })
    }

    /// A pipeline's progress (`status`, `progress`, `current_stage`, …): from the broker's
    /// `pipeline:{id}:status` cache when it holds it, else from the store (and the answer says
    /// which, under `"source"`).
    pub async fn progress(&self, pipeline_id: &str) -> SchedResult<serde_json::Value> {
        let key = crate::broker::CacheKey::PipelineStatus(pipeline_id.to_string());
        match self.deps.broker.get_cache(&key).await {
            Ok(Some(mut cached)) => {
                if let Some(o) = cached.as_object_mut() {
                    o.insert("source".into(), "cache".into());
                }
                return Ok(cached);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(pipeline_id, cause = %e, "progress cache unavailable; reading the store")
            }
        }
        let p = self.pipeline(pipeline_id).await?;
        Ok(serde_json::json!({
            "status": p.status,
            "progress": p.progress,
            "current_stage": p.current_stage,
            "started_at": p.started_at,
            "revision": p.revision,
            "source": "store",
        }))
    }

    /// Stops the tree: coordinators release their locks.
    pub fn stop(&self) {
        // Stopping the root stops its coordinators; the supervised children end with the system.
        self.supervisor.do_send(StopSupervisor);
    }
}

/// Stops the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
struct StopSupervisor;

impl Handler<StopSupervisor> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StopSupervisor, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// What one authenticated agent can do.
#[derive(Clone)]
pub struct AgentHandle {
    agent_id: String,
    scheduler: Scheduler,
}

impl AgentHandle {
    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Asks for work, waiting up to `wait` for some to be queued.
    pub async fn fetch(&self, wait: Duration) -> SchedResult<Option<Assignment>> {
        self.scheduler
            .children
            .dispatcher
            .send(FetchTask {
                agent_id: self.agent_id.clone(),
                wait,
            })
            .await?
    }

    /// Says the agent is alive and renews the leases it holds. One result per lease: a
    /// refused renewal means the agent must drop that task.
    pub async fn heartbeat(&self, leases: &[Lease]) -> SchedResult<Vec<SchedResult<Lease>>> {
        self.scheduler
            .children
            .registry
            .send(Heartbeat {
                agent_id: self.agent_id.clone(),
                current_tasks: leases.len() as u32,
            })
            .await??;
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            out.push(self.renew(l, false).await);
        }
        Ok(out)
    }

    /// Reports progress on a task (the first report marks it running) and renews its lease.
    pub async fn progress(&self, lease: &Lease) -> SchedResult<Lease> {
        self.renew(lease, true).await
    }

    async fn renew(&self, lease: &Lease, started: bool) -> SchedResult<Lease> {
        self.scheduler
            .children
            .dispatcher
            .send(RenewLease {
                agent_id: self.agent_id.clone(),
                task_id: lease.task_id.clone(),
                token: lease.token,
                started,
            })
            .await?
    }

    /// Sends a result under `lease`.
    pub async fn complete(&self, lease: &Lease, report: ResultReport) -> SchedResult<Task> {
        self.scheduler
            .children
            .dispatcher
            .send(CompleteTask {
                agent_id: self.agent_id.clone(),
                task_id: lease.task_id.clone(),
                token: lease.token,
                report,
            })
            .await?
    }

    /// Reports a failure under `lease`.
    pub async fn fail(&self, lease: &Lease, error: TaskError) -> SchedResult<Task> {
        self.scheduler
            .children
            .dispatcher
            .send(FailTask {
                agent_id: self.agent_id.clone(),
                task_id: lease.task_id.clone(),
                token: lease.token,
                error,
            })
            .await?
    }
}
