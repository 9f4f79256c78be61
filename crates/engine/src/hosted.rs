//! Background steps hosted by a worker (`handoff worker`), so that a run can exit while its
//! background steps (a `mongo.sync` through a 14-day soak) keep working.
//!
//! When a run is given a [`Jobs`] board, each background step is posted there as a [`Job`]
//! instead of being run in the run's process, and a step that stops a background step (its
//! action asks [`Sink::stop_hosted`]) posts a stop request and waits for the host's
//! acknowledgement, whose output becomes the stopping step's own. A worker claims a job
//! under its own lease (holder, expiry, epoch: every claim issues a greater epoch), runs the
//! step with the same executors, keeps the step's checkpoint and health in the job, and
//! renews its lease; a worker whose lease was taken over is fenced (its checkpoints and
//! acknowledgement are refused) and stops the step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_executor::{
    Context, Decision, Endpoints, Executors, HostedReply, HostedStop, Policy, Sink, StepOutput, SystemClock,
};
use handoff_plan::model::{Plan, Uses};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// How often a run waits between reads of a stop request's acknowledgement.
const STOP_POLL: Duration = Duration::from_millis(200);

/// A background step handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<plan>/<env>/<run>/<step>`.
    pub id: String,
    /// The plan as the run compiled it (its resources and environments).
    pub plan: Value,
    /// The environment whose endpoints the step reaches (resolved by the worker from its
    /// own environment variables: no secret is posted).
    pub env: String,
    /// The run.
    pub run: String,
    /// The step's phase.
    pub phase: String,
    /// The step.
    pub step: String,
    /// What it runs.
    pub uses: Uses,
    /// Its parameters as written (`${VAR}` unexpanded).
    pub with: Value,
    /// Where it continues from: the run's last checkpoint when posted, the host's since.
    pub checkpoint: Option<Value>,
}

/// A worker's hold on a job: the epoch its claim issued fences every later write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLease {
    /// The job.
    pub id: String,
    /// The epoch of this claim.
    pub epoch: u64,
    /// Who holds it (`<host>/<pid>`).
    pub holder: String,
}

/// What a host reports with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobHealth {
    /// The step's latest value of each metric it emits (`sync_lag_seconds`, …).
    pub metrics: BTreeMap<String, f64>,
    /// Its last progress message.
    pub progress: Option<String>,
    /// Why starting it failed, if it did.
    pub failed: Option<String>,
}

/// What a host reports when it carried out a stop request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReport {
    /// The stopping action's output.
    Stopped(Value),
    /// Why the step or its stop failed (the stopping step fails with it).
    Failed(String),
}

/// A job as the board shows it (`handoff worker --list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// `<plan>/<env>/<run>/<step>`.
    pub id: String,
    /// The holder of its lease (`<host>/<pid>`), if any.
    pub holder: Option<String>,
    /// When that lease expires (milliseconds since the Unix epoch, on the holder's clock).
    pub expires_ms: Option<i64>,
    /// The epoch of the latest claim.
    pub epoch: u64,
    /// What the holder last reported.
    pub health: JobHealth,
    /// A stop was requested.
    pub stop_requested: bool,
    /// The stop was carried out and acknowledged.
    pub done: bool,
}

/// Where a stop request stands.
#[derive(Debug, Clone, PartialEq)]
pub enum StopState {
    /// No such job: nothing hosts the step.
    Unknown,
    /// Asked; not acknowledged yet.
    Requested,
    /// The host carried it out and reported this.
    Acknowledged(StopReport),
}

/// The board of hosted background steps, in the shared store.
pub trait Jobs: Send + Sync {
    /// Posts `job` unless a job of that id exists already (a resumed run posts again).
    fn post(&self, job: &Job) -> Result<(), StoreError>;
    /// Asks the host of job `id` to run `stop` (once; asking again only reads the state).
    fn request_stop(&self, id: &str, stop: &HostedStop) -> Result<StopState, StoreError>;
    /// Claims a job that is not done and whose lease is free or expired, for `ttl`.
    fn claim(&self, holder: &str, ttl: Duration) -> Result<Option<(Job, JobLease)>, StoreError>;
    /// Renews `lease` for `ttl` with `health`; the stop request, if one was posted.
    /// `StoreError::Fenced` once another claim took the job.
    fn heartbeat(&self, lease: &JobLease, ttl: Duration, health: &JobHealth) -> Result<Option<HostedStop>, StoreError>;
    /// Saves the step's checkpoint under `lease` (fenced).
    fn checkpoint(&self, lease: &JobLease, data: &Value) -> Result<(), StoreError>;
    /// Marks the job done with the stop's report (fenced).
    fn acknowledge(&self, lease: &JobLease, report: &StopReport) -> Result<(), StoreError>;
    /// Gives the job up now (a worker shutting down), so another claims it at once.
    fn release(&self, lease: &JobLease) -> Result<(), StoreError>;
    /// Every job on the board, by id.
    fn list(&self) -> Result<Vec<JobStatus>, StoreError>;
}

/// The output of a background step posted for a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostedOutput {
    /// Who runs it: `worker`.
    pub hosted_by: String,
    /// The job's id.
    pub job: String,
    /// It goes on in the background.
    pub background: bool,
}

/// A run's side of the board: which jobs are its own.
#[derive(Clone)]
pub(crate) struct Hosted {
    pub(crate) jobs: Arc<dyn Jobs>,
    /// Background steps are posted (else they run in the run's process, and the board only
    /// answers the stop of a step an earlier part of the run posted).
    pub(crate) post: bool,
    /// `<plan>/<env>/<run>`.
    pub(crate) prefix: String,
    pub(crate) env: String,
    pub(crate) plan: Value,
}

impl Hosted {
    fn id(&self, step: &str) -> String {
        format!("{}/{step}", self.prefix)
    }

    /// Posts a background step; its output says where it runs.
    pub(crate) fn post(&self, run: &str, uses: &Uses, with: &Value, cx: &Context) -> Result<StepOutput, String> {
        let id = self.id(&cx.step);
        let job = Job {
            id: id.clone(),
            plan: self.plan.clone(),
            env: self.env.clone(),
            run: run.to_owned(),
            phase: cx.phase.clone(),
            step: cx.step.clone(),
            uses: uses.clone(),
            with: with.clone(),
            checkpoint: cx.checkpoint.clone(),
        };
        self.jobs.post(&job).map_err(|e| format!("posting the step for a worker: {e}"))?;
        StepOutput::new(PostedOutput { hosted_by: "worker".to_owned(), job: id, background: true })
            .erase()
            .map_err(|e| e.to_string())
    }

    /// Whether `output` is a step's posting for a worker (a resumed run leaves it there).
    pub(crate) fn posted(output: &StepOutput) -> bool {
        output.typed::<PostedOutput>().is_ok()
    }

    /// Asks the host to stop `step` and waits for its acknowledgement; `None` when no job
    /// of the run is that step.
    pub(crate) fn stop(&self, step: &str, stop: &HostedStop) -> Option<HostedReply> {
        let (jobs, id, stop) = (self.jobs.clone(), self.id(step), stop.clone());
        match jobs.request_stop(&id, &stop) {
            Ok(StopState::Unknown) => None,
            Ok(StopState::Acknowledged(report)) => Some(Box::pin(async move { reported(report) })),
            Ok(StopState::Requested) => Some(Box::pin(async move {
                loop {
                    tokio::time::sleep(STOP_POLL).await;
                    match jobs.request_stop(&id, &stop).map_err(|e| e.to_string())? {
                        StopState::Acknowledged(report) => return reported(report),
                        StopState::Unknown => return Err(format!("the job `{id}` disappeared")),
                        StopState::Requested => {}
                    }
                }
            })),
            Err(error) => Some(Box::pin(async move { Err(error.to_string()) })),
        }
    }
}

/// A host's report as the stopping step's result.
fn reported(report: StopReport) -> Result<Value, String> {
    match report {
        StopReport::Stopped(output) => Ok(output),
        StopReport::Failed(error) => Err(error),
    }
}

/// What a worker reports of the step it hosts: checkpoints go to the job (fenced), metrics
/// and progress into the health of the next heartbeat.
struct JobSink {
    jobs: Arc<dyn Jobs>,
    lease: JobLease,
    health: Mutex<JobHealth>,
}

impl JobSink {
    fn health(&self) -> JobHealth {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn update(&self, change: impl FnOnce(&mut JobHealth)) {
        change(&mut self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

impl Sink for JobSink {
    fn checkpoint(&self, _phase: &str, _step: &str, data: &Value) -> std::io::Result<()> {
        self.jobs.checkpoint(&self.lease, data).map_err(std::io::Error::other)
    }

    fn metric(&self, _phase: &str, _step: &str, name: &str, value: f64) {
        self.update(|h| {
            h.metrics.insert(name.to_owned(), value);
        });
    }

    fn progress(&self, phase: &str, step: &str, message: &str, fraction: Option<f64>) {
        tracing::info!(phase, step, fraction, "{message}");
        self.update(|h| h.progress = Some(message.to_owned()));
    }

    fn decision(&self, _key: &str) -> Option<Decision> {
        None
    }
}

/// How hosting a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEnd {
    /// The stop step's request was carried out and acknowledged.
    Stopped,
    /// Another worker took the job over (this one's lease had expired): the step was stopped
    /// here without acknowledging.
    Lost(String),
    /// The worker is shutting down: the step was stopped and the job released.
    Released,
}

/// A worker's hosting of claimed jobs.
pub struct Host<'e> {
    /// The board.
    pub jobs: Arc<dyn Jobs>,
    /// The actions.
    pub executors: &'e dyn Executors,
    /// The lease's expiry after each heartbeat (renewed every third of it).
    pub ttl: Duration,
}

impl Host<'_> {
    /// Runs `job` under `lease` with the environment's `endpoints` until a stop request is
    /// carried out, the lease is lost, or `cancel` (the worker stops).
    pub async fn run(&self, job: Job, lease: JobLease, endpoints: Endpoints, cancel: CancellationToken) -> HostEnd {
        let step_cancel = CancellationToken::new();
        let sink = Arc::new(JobSink { jobs: self.jobs.clone(), lease: lease.clone(), health: Mutex::default() });
        let cx = match context(&job, endpoints, sink.clone(), &step_cancel) {
            Ok(cx) => cx,
            Err(error) => {
                sink.update(|h| h.failed = Some(error));
                return self.watch(&sink, &job.id, None, &cancel).await;
            }
        };
        match self.executors.action(&job.uses) {
            None => sink.update(|h| h.failed = Some(format!("no action `{}` in this worker", job.uses))),
            Some(action) => {
                if let Err(error) = action.execute(&job.with, &cx).await {
                    sink.update(|h| h.failed = Some(error.to_string()));
                }
            }
        }
        let end = self.watch(&sink, &job.id, Some(&cx), &cancel).await;
        step_cancel.cancel();
        end
    }

    /// Heartbeats until a stop request (carried out with `cx`), a lost lease, or `cancel`.
    async fn watch(&self, sink: &JobSink, id: &str, cx: Option<&Context>, cancel: &CancellationToken) -> HostEnd {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.ttl / 3) => {}
                () = cancel.cancelled() => {
                    if let Some(cx) = cx { cx.cancel.cancel(); }
                    let _ = self.jobs.release(&sink.lease);
                    return HostEnd::Released;
                }
            }
            match self.jobs.heartbeat(&sink.lease, self.ttl, &sink.health()) {
                Ok(None) => renewed = Instant::now(),
                Ok(Some(stop)) => return self.stop(sink, cx, &stop).await,
                Err(error @ StoreError::Fenced { .. }) => return HostEnd::Lost(error.to_string()),
                Err(error) if renewed.elapsed() >= self.ttl => return HostEnd::Lost(error.to_string()),
                Err(error) => tracing::warn!(job = id, "heartbeat failed: {error}"),
            }
        }
    }

    /// Runs the stopping action here and acknowledges its output.
    async fn stop(&self, sink: &JobSink, cx: Option<&Context>, stop: &HostedStop) -> HostEnd {
        let action = Uses::try_from(stop.uses.clone()).ok().and_then(|uses| self.executors.action(&uses));
        let report = match (sink.health().failed, cx, action) {
            (Some(failed), _, _) => StopReport::Failed(format!("the step had failed in the worker: {failed}")),
            (None, Some(cx), Some(action)) => match action.execute(&stop.with, cx).await {
                Ok(output) => {
                    serde_json::to_value(output).map_or_else(|e| StopReport::Failed(e.to_string()), StopReport::Stopped)
                }
                Err(error) => StopReport::Failed(error.to_string()),
            },
            (None, _, _) => StopReport::Failed(format!("no action `{}` in this worker", stop.uses)),
        };
        match self.jobs.acknowledge(&sink.lease, &report) {
            Ok(()) => HostEnd::Stopped,
            Err(error) => HostEnd::Lost(error.to_string()),
        }
    }
}

/// The step's context in the worker: the job's plan and checkpoint, the worker's endpoints.
fn context(job: &Job, endpoints: Endpoints, sink: Arc<JobSink>, cancel: &CancellationToken) -> Result<Context, String> {
    let plan: Plan = serde_json::from_value(job.plan.clone()).map_err(|e| format!("the job's plan: {e}"))?;
    Ok(Context {
        plan: plan.metadata.name.to_string(),
        run_id: job.run.clone(),
        phase: job.phase.clone(),
        step: job.step.clone(),
        attempt: 1,
        rolling_back: false,
        clock: Arc::new(SystemClock),
        cancel: cancel.clone(),
        checkpoint: job.checkpoint.clone(),
        endpoints: Arc::new(endpoints),
        resources: Arc::new(plan.resources),
        policy: Arc::new(Policy::default()),
        sink,
        masks: Default::default(),
        analysis: None,
        detach_over: None,
    })
}
