//! The handoff engine: compiles a plan into an execution graph and runs it through the
//! executors, with gates, criteria, alerts, compensation and rollback within budget, and
//! durable state that survives crashes.
//!
//! - [`graph`]: the planner and the plan digest.
//! - [`events`], [`store`], [`state`]: the append-only, fsync'd event log, the lock, and
//!   the run state as a replay of the log.
//! - [`metrics`], [`observe`]: metric providers, criteria verdicts and alerts.
//! - [`Engine`]: start, resume, abort, decide.
//!
//! Architecture invariant: a step's "started" record is durable before its executor is
//! called, and its "finished" record after the executor returned; nothing about a run lives
//! anywhere but its log (and the plan snapshot taken when it started).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_executor::{Clock, DecisionKey, Endpoints, Executors, Policy};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

mod analysis;
pub mod events;
pub mod graph;
pub mod hosted;
mod journal;
pub mod metrics;
pub mod observe;
mod runner;
mod schedule;
pub mod state;
pub mod store;

pub use events::{Event, Notice, Record, Role, RunStatus, Verdict};
pub use graph::{Graph, GraphError};
pub use runner::{Answer, Outcome};
pub use schedule::CUT_SHORT;
pub use state::RunState;
pub use store::{Acquired, BreakTarget, DirStore, Lease, LockRecord, LockRequest, LockState, Store, StoreError};

use journal::Journal;
use runner::Runner;

/// Errors of the engine (a failed step or criterion is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is no run of this plan in this environment.
    #[error(
        "no run of this plan in this environment yet (looked in {0}); start one with `handoff run`, or pass the `--state-dir` it used"
    )]
    NoRun(String),
    /// The latest run already ended.
    #[error("run {run} already ended ({status}); start a new one with `handoff run`")]
    Ended {
        /// Run id.
        run: String,
        /// How it ended.
        status: String,
    },
    /// The latest run has not ended.
    #[error(
        "run {run} has not ended ({status}); continue it with `handoff resume` or roll it back with `handoff abort`"
    )]
    Unfinished {
        /// Run id.
        run: String,
        /// Where it stands.
        status: String,
    },
    /// The plan changed for phases the run already reached.
    #[error("the plan changed for phases run {run} already started or passed; resume refuses:\n{}\nrestore the plan, or abort this run and start a new one", .changes.join("\n"))]
    PlanChanged {
        /// Run id.
        run: String,
        /// One line per change.
        changes: Vec<String>,
    },
    /// The run's policy refuses some steps.
    #[error("the run would refuse these steps, so it does not start:\n{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// A decision key the plan does not have.
    #[error("`{key}` is nothing this plan asks a person to decide; it asks about: {}", .known.join(", "))]
    UnknownKey {
        /// The key given.
        key: String,
        /// The keys the plan has.
        known: Vec<String>,
    },
    /// The run lost its lock while it ran; it stopped at once.
    #[error(
        "the run lost its lock (another process took it, or the lock file could not be written) and stopped; see `handoff status`, then `handoff resume` when no other run is active"
    )]
    LostLock,
    /// A stale lock's holder left step processes running on this host.
    #[error(
        "the lock {holder} is stale, but processes of its steps are still running on this host (pids {pids}) and may still take effect; resume once they are gone (they end by themselves, or stop them with `kill -TERM <pid>`)"
    )]
    StepsStillRunning {
        /// The stale lock's id.
        holder: String,
        /// The live step processes, as a list.
        pids: String,
    },
    /// A stale lock's holder on another host may still be stopping its steps.
    #[error(
        "the lock {holder} expired, but its holder on another host may still be stopping its steps; resume in {seconds} s"
    )]
    HolderStopping {
        /// The stale lock's id.
        holder: String,
        /// Seconds until its steps' kill grace has passed.
        seconds: i64,
    },
    /// `--settle` named something that is not an interrupted step or undo.
    #[error(
        "--settle {0}: not a step (`PHASE/STEP`) or a step's undo (`PHASE/STEP/undo`) that was running when the run stopped"
    )]
    Settle(String),
}

/// How a run executes.
pub struct RunOptions {
    /// Environment name.
    pub env: String,
    /// Real or virtual time.
    pub clock: Arc<dyn Clock>,
    /// What the run allows.
    pub policy: Policy,
    /// The environment's endpoints, resolved.
    pub endpoints: Endpoints,
    /// Points of no return may start without a recorded decision.
    pub confirm_irreversible: bool,
    /// Decide every question automatically, as this person (simulations).
    pub auto_decide: Option<String>,
    /// Lock expiry after the last heartbeat.
    pub lock_ttl: Duration,
    /// Take over this lock even if it is live.
    pub force_unlock: Option<String>,
    /// The command line, for the lock record.
    pub command: String,
    /// The board of steps hosted by workers (`handoff worker`) in the shared store: a step
    /// that stops a hosted background step asks its worker through it.
    pub jobs: Option<Arc<dyn hosted::Jobs>>,
    /// Post background steps to `jobs` for a worker instead of running them here.
    pub post_background: bool,
    /// On a real clock, sleep through a phase's observation (its soak and criteria windows)
    /// longer than this: record when to wake, release the lock and end with
    /// `Outcome::Waiting`; resumed after that, the slept window is judged from range
    /// queries. `None`: every wait is waited.
    pub detach_over: Option<Duration>,
}

impl RunOptions {
    /// Options for a run in `env` on `clock`: nothing allowed beyond the defaults, no
    /// endpoints, a 30 s lock expiry.
    pub fn new(env: &str, clock: Arc<dyn Clock>) -> RunOptions {
        RunOptions {
            env: env.to_owned(),
            clock,
            policy: Policy::default(),
            endpoints: Endpoints::default(),
            confirm_irreversible: false,
            auto_decide: None,
            lock_ttl: LOCK_TTL,
            force_unlock: None,
            command: String::new(),
            jobs: None,
            post_background: false,
            detach_over: None,
        }
    }
}

/// The lock's default expiry after the last heartbeat.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// A run's plan, executors and store.
pub struct Engine<'e> {
    graph: &'e Graph,
    executors: &'e dyn Executors,
    store: Arc<dyn Store>,
    notices: broadcast::Sender<Notice>,
    /// The lease held while a command runs; outside one there is none, and a journal
    /// made without one can append nothing (the store fences it).
    lease: Mutex<Option<Lease>>,
}

/// What `handoff lock break` did.
#[derive(Debug)]
pub struct Broken {
    /// The lock removed (`None` for a damaged lock file).
    pub removed: Option<LockRecord>,
    /// The unfinished run the break was recorded in (as its interruption), if there is
    /// one, or why it could not be recorded.
    pub recorded: Result<Option<String>, EngineError>,
}

/// Why a cancelled run stopped, unless something else (a lost lock) says otherwise.
fn signal_reason() -> Arc<Mutex<String>> {
    Arc::new(Mutex::new("interrupted by a signal".to_owned()))
}

/// A new run id: UTC time, so ids sort by start, plus the pid.
fn run_id() -> String {
    let now = jiff::Timestamp::now();
    format!("{}-{}", now.strftime("%Y%m%dT%H%M%S%.3fZ"), std::process::id()).replace('.', "")
}

/// Records `what` as the interruption of the latest run, if it has not ended, under a lock
/// of this process's own; returns that run.
fn record_break(store: &dyn Store, what: &str, command: &str) -> Result<Option<String>, EngineError> {
    let Some(run) = store.latest_run()? else { return Ok(None) };
    let record = LockRecord::for_this_process(command, LOCK_TTL);
    let Acquired { lease, .. } = store.lock(&LockRequest { record, force_unlock: None })?;
    let result = (|| {
        let state = RunState::replay(&store.load(&run)?);
        if state.finished.is_some() {
            return Ok(None);
        }
        let event = Event::Interrupted { reason: what.to_owned() };
        store.append(&run, &lease, &Record { seq: state.next_seq, at: jiff::Timestamp::now(), event })?;
        Ok(Some(run))
    })();
    store.unlock(&lease)?;
    result
}

/// What changed between two JSON values, as `pointer: old → new` lines.
fn differences(old: &Value, new: &Value, pointer: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let child = format!("{pointer}/{key}");
                differences(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &child, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for at in 0..a.len().max(b.len()) {
                let child = format!("{pointer}/{at}");
                differences(a.get(at).unwrap_or(&Value::Null), b.get(at).unwrap_or(&Value::Null), &child, out);
            }
        }
        (a, b) if a != b => out.push(format!("{pointer}: {a} → {b}")),
        _ => {}
    }
}

/// What people said (`--settle PHASE/STEP=done|retry`, or `PHASE/STEP/undo=…` for a
/// step's undo) about what was running when the run stopped, as the records that say it;
/// anything else named is refused.
fn settlements(state: &RunState, settle: &[(String, String, bool)]) -> Result<Vec<Event>, EngineError> {
    let mut events = Vec::new();
    for (phase, named, done) in settle {
        let phase_state = state.phase(phase);
        let (step, role, open) = match named.strip_suffix(runner::UNDO) {
            Some(step) => (step, Role::Compensate, phase_state.is_some_and(|p| p.undoing.contains(step))),
            None => (
                named.as_str(),
                Role::Forward,
                phase_state.and_then(|p| p.steps.get(named)).is_some_and(|s| s.interrupted()),
            ),
        };
        if !open {
            return Err(EngineError::Settle(DecisionKey::step(phase, named).to_string()));
        }
        events.push(Event::StepSettled { phase: phase.clone(), step: step.to_owned(), done: *done, role });
    }
    Ok(events)
}

impl<'e> Engine<'e> {
    /// An engine for a compiled plan.
    pub fn new(graph: &'e Graph, executors: &'e dyn Executors, store: Arc<dyn Store>) -> Engine<'e> {
        Engine { graph, executors, store, notices: broadcast::channel(4096).0, lease: Mutex::new(None) }
    }

    /// Everything the engine records, as it happens, plus progress reports.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// The latest run's state and its lock, if there is a run. Never writes: a torn last
    /// line is left out, not cut off.
    pub fn status(store: &dyn Store) -> Result<Option<(RunState, LockState)>, EngineError> {
        let Some(run) = store.latest_run()? else { return Ok(None) };
        let state = RunState::replay(&store.load(&run)?);
        let lock = LockState::of(store)?;
        Ok(Some((state, lock)))
    }

    /// Removes the lock `target` names (`handoff lock break`) and records the break, with
    /// `reason`, as the interruption of the latest run if it has not ended. A holder
    /// still running stops at its next append, which the store refuses.
    pub fn break_lock(
        store: &dyn Store,
        target: &BreakTarget,
        reason: &str,
        command: &str,
    ) -> Result<Broken, EngineError> {
        let removed = store.break_lock(target)?;
        let what = match &removed {
            Some(lock) => format!("lock {} (pid {} on {}, epoch {}) broken", lock.id, lock.pid, lock.host, lock.epoch),
            None => "a damaged lock file was removed".to_owned(),
        };
        let recorded = record_break(store, &format!("{what}: {reason}"), command);
        Ok(Broken { removed, recorded })
    }

    /// The lease of the command running now (none outside one).
    fn lease(&self) -> Lease {
        self.lease.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone().unwrap_or_default()
    }

    /// Takes the lock for this process (over `force_unlock`, if given) and keeps its lease
    /// for the journal.
    fn acquire(&self, options: &RunOptions, force_unlock: Option<String>) -> Result<Lease, EngineError> {
        if force_unlock.is_none() {
            self.previous_steps_gone()?;
        }
        let record = LockRecord::for_this_process(&options.command, options.lock_ttl);
        let Acquired { lease, previous } = self.store.lock(&LockRequest { record, force_unlock })?;
        if let Some(previous) = previous {
            tracing::warn!(lock = %previous.id, host = %previous.host, pid = previous.pid, "took over a stale lock");
        }
        *self.lease.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(lease.clone());
        Ok(lease)
    }

    /// A stale lock is taken over only once its holder's steps cannot still be taking
    /// effect: on this host, no process of the latest run's steps is alive (a holder stopped
    /// past its lease leaves them running; one that died takes them down within the kill
    /// grace, which is waited for); on another host, the steps' kill grace has passed since
    /// the lease expired (a holder that lost its lease stops its steps within it).
    fn previous_steps_gone(&self) -> Result<(), EngineError> {
        let Some(held) = self.store.current_lock()? else { return Ok(()) };
        if !held.is_stale_now() {
            return Ok(());
        }
        if held.host != store::hostname() {
            let grace = jiff::SignedDuration::try_from(handoff_executor::process::KILL_GRACE).unwrap_or_default();
            let wait = (held.expires_at() + grace).duration_since(jiff::Timestamp::now());
            if wait.is_positive() {
                return Err(EngineError::HolderStopping { holder: held.id, seconds: wait.as_secs() + 1 });
            }
            return Ok(());
        }
        let Some(run) = self.store.latest_run()? else { return Ok(()) };
        let mut pids = handoff_executor::process::processes_of_run(&run);
        // A holder that died takes its steps down through their lifelines within the kill
        // grace: wait for that rather than refuse a resume right after a crash.
        let deadline = std::time::Instant::now() + handoff_executor::process::KILL_GRACE + Duration::from_secs(2);
        while !pids.is_empty() && !store::pid_alive(held.pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            pids = handoff_executor::process::processes_of_run(&run);
        }
        if pids.is_empty() {
            return Ok(());
        }
        let pids = pids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Err(EngineError::StepsStillRunning { holder: held.id, pids })
    }

    /// Releases the lock; a store error of a holder that no longer holds it is a lost lock.
    fn release<T>(&self, lease: &Lease, result: Result<T, EngineError>) -> Result<T, EngineError> {
        self.lease.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let lost = matches!(result, Err(EngineError::Store(_)))
            && !matches!(self.store.current_lock(), Ok(Some(ref current)) if current.lease() == *lease);
        self.store.unlock(lease)?;
        if lost { Err(EngineError::LostLock) } else { result }
    }

    fn latest(&self) -> Result<(String, RunState), EngineError> {
        let run = self.store.latest_run()?.ok_or_else(|| EngineError::NoRun(self.store.location()))?;
        let state = RunState::replay(&self.store.load(&run)?);
        Ok((run, state))
    }

    /// The latest run, which must not have ended. Called under the lock, it first cuts off
    /// a torn last line of the run's log.
    fn unfinished(&self) -> Result<(String, RunState), EngineError> {
        if let Some(run) = self.store.latest_run()? {
            let cut = self.store.repair(&run, &self.lease())?;
            if cut > 0 {
                tracing::warn!(
                    run,
                    cut,
                    store = %self.store.location(),
                    "cut off a torn last record of the log (a crash while it was written: bytes of a file, records never committed in a database)"
                );
            }
        }
        let (run, state) = self.latest()?;
        if state.finished.is_some() {
            return Err(EngineError::Ended { run, status: state.status_word().to_owned() });
        }
        Ok((run, state))
    }

    /// What the run's policy refuses, one line per reason with the steps it concerns
    /// (empty when the run can start).
    pub fn preflight(&self, options: &RunOptions) -> Vec<String> {
        let mut refused = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (phase, step) in self.graph.steps() {
            let Some(action) = self.executors.action(&step.uses) else { continue };
            if let Err(why) = action.preflight(&options.policy) {
                refused.entry(why).or_default().push(format!("{phase}/{}", step.id));
            }
        }
        refused.into_iter().map(|(why, steps)| format!("  {}: {why}", steps.join(", "))).collect()
    }

    /// Takes the lock, runs `work`, heartbeats meanwhile, and always releases it.
    async fn locked<T>(
        &self,
        options: &RunOptions,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<String>>,
        work: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        let refused = self.preflight(options);
        if !refused.is_empty() {
            return Err(EngineError::Refused(refused));
        }
        let lease = self.acquire(options, options.force_unlock.clone())?;
        let heartbeat = async {
            let every = options.lock_ttl / 3;
            let mut failures = 0;
            loop {
                tokio::time::sleep(every).await;
                match self.store.heartbeat(&lease) {
                    Ok(true) => failures = 0,
                    // A passing I/O error is retried; two in a row leave too little of the TTL.
                    Err(error) if failures == 0 => {
                        tracing::warn!(%error, "lock heartbeat failed; retrying");
                        failures += 1;
                    }
                    Ok(false) | Err(_) => {
                        *reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                            "lost the lock (another process took it, or its file could not be written)".to_owned();
                        cancel.cancel();
                        return;
                    }
                }
            }
        };
        let result = tokio::select! {
            result = work => result,
            () = heartbeat => Err(EngineError::LostLock),
        };
        self.release(&lease, result)
    }

    fn runner(
        &self,
        journal: Arc<Journal>,
        options: &RunOptions,
        cancel: &CancellationToken,
        reason: Arc<Mutex<String>>,
    ) -> Runner<'_> {
        let endpoints = Arc::new(options.endpoints.clone());
        Runner {
            graph: self.graph,
            executors: self.executors,
            metrics: metrics::Metrics::new(
                &self.graph.plan,
                &endpoints,
                journal.emitted.clone(),
                options.clock.clone(),
            ),
            clock: options.clock.clone(),
            policy: Arc::new(options.policy.clone()),
            endpoints,
            resources: Arc::new(self.graph.plan.resources.clone()),
            cancel: cancel.clone(),
            confirm_irreversible: options.confirm_irreversible,
            interrupt_reason: reason,
            detach_over: options.detach_over,
            journal,
        }
    }

    fn journal(&self, run: &str, state: RunState, options: &RunOptions) -> Arc<Journal> {
        let journal = Arc::new(Journal::new(
            self.store.clone(),
            run.to_owned(),
            self.lease(),
            state,
            options.clock.clone(),
            self.notices.clone(),
            options.auto_decide.clone(),
        ));
        if let Some(jobs) = &options.jobs {
            let plan = &self.graph.plan;
            let _ = journal.hosted.set(hosted::Hosted {
                jobs: jobs.clone(),
                post: options.post_background,
                prefix: format!("{}/{}/{run}", plan.metadata.name, options.env),
                env: options.env.clone(),
                plan: serde_json::to_value(plan).unwrap_or_default(),
            });
        }
        journal
    }

    /// Starts a new run. Refuses while the latest run has not ended.
    pub async fn start(
        &self,
        options: &RunOptions,
        cancel: &CancellationToken,
    ) -> Result<(String, Outcome), EngineError> {
        let reason = signal_reason();
        self.locked(options, cancel, &reason, async {
            match self.latest() {
                Ok((run, state)) if state.finished.is_none() => {
                    return Err(EngineError::Unfinished { run, status: state.status_word().to_owned() });
                }
                // A log that cannot be read is not a reason to start over.
                Ok(_) | Err(EngineError::NoRun(_)) => {}
                Err(error) => return Err(error),
            }
            let run = run_id();
            self.store.create_run(&run, &self.graph.canonical)?;
            let journal = self.journal(&run, RunState::replay(&[]), options);
            journal.record(Event::RunStarted {
                run: run.clone(),
                plan: self.graph.plan.metadata.name.to_string(),
                env: options.env.clone(),
                digest: self.graph.digest.clone(),
                simulation: options.policy.simulation,
            })?;
            let outcome = self.runner(journal, options, cancel, reason.clone()).drive().await?;
            Ok((run, outcome))
        })
        .await
    }

    /// How this plan differs from the run's for the phases the run reached (started,
    /// passed or rolling back): the phases up to the last one reached must be the same, in
    /// the same order, and each must be unchanged but for names ([`graph::phase_structure`]).
    /// Later phases may change. One line per difference.
    fn changes(&self, run: &str, state: &RunState) -> Result<Vec<String>, EngineError> {
        let old: Value = self.store.plan_of(run)?;
        let new = &self.graph.canonical;
        let (before, after) = (graph::phases_of(&old), graph::phases_of(new));
        let id = |phase: &Value| phase["id"].as_str().unwrap_or_default().to_owned();
        let reached = before.iter().rposition(|p| state.phase(&id(p)).is_some()).map_or(0, |at| at + 1);
        let ids = |phases: &[&Value], upto: usize| phases.iter().take(upto).map(|p| id(p)).collect::<Vec<_>>();
        let was = ids(&before, reached);
        let current = was.last().cloned().unwrap_or_default();
        // The new plan's phases up to the current one (where it moved), else as many.
        let upto = after.iter().position(|p| id(p) == current).map_or(reached, |at| at + 1);
        let now = ids(&after, upto);
        if was != now {
            let list = |ids: &[String]| ids.join(", ");
            return Ok(vec![format!(
                "  the phases up to `{current}`, where the run stands, were [{}] and are now [{}]",
                list(&was),
                list(&now)
            )]);
        }
        let mut changes = Vec::new();
        for (a, b) in before.iter().zip(&after).take(reached) {
            let phase = id(a);
            let how = if state.phase(&phase).is_some_and(|p| p.passed) { "passed" } else { "started" };
            let mut lines = Vec::new();
            differences(&graph::phase_structure(&old, a), &graph::phase_structure(new, b), "", &mut lines);
            changes.extend(lines.into_iter().map(|line| format!("  phase `{phase}` ({how}): {line}")));
        }
        Ok(changes)
    }

    /// Continues the latest run where it stopped. `settle` says, for steps that were
    /// running when it stopped (`(phase, step, done)`), whether they took effect (`true`)
    /// or not (run again; in a rollback, nothing to undo); a step named `<step>/undo`
    /// settles the step's interrupted undo (`false`: run it again). Refuses a plan changed
    /// for the phases the run reached (see `changes`).
    pub async fn resume(
        &self,
        options: &RunOptions,
        settle: &[(String, String, bool)],
        cancel: &CancellationToken,
    ) -> Result<(String, Outcome), EngineError> {
        let reason = signal_reason();
        self.locked(options, cancel, &reason, async {
            let (run, state) = self.unfinished()?;
            let changes = self.changes(&run, &state)?;
            if !changes.is_empty() {
                return Err(EngineError::PlanChanged { run, changes });
            }
            let settled = settlements(&state, settle)?;
            let journal = self.journal(&run, state.clone(), options);
            journal.record(Event::RunResumed { digest: self.graph.digest.clone() })?;
            for event in settled {
                journal.record(event)?;
            }
            let outcome = self.runner(journal, options, cancel, reason.clone()).drive().await?;
            Ok((run, outcome))
        })
        .await
    }

    /// Aborts the latest run: rolls back the phase in progress, then ends the run.
    pub async fn abort(
        &self,
        options: &RunOptions,
        why: &str,
        cancel: &CancellationToken,
    ) -> Result<(String, Outcome), EngineError> {
        let reason = signal_reason();
        self.locked(options, cancel, &reason, async {
            let (run, state) = self.unfinished()?;
            let journal = self.journal(&run, state.clone(), options);
            journal.record(Event::RunResumed { digest: self.graph.digest.clone() })?;
            let current = state.phases.iter().rev().find(|p| !p.passed).map(|p| p.id.clone());
            let runner = self.runner(journal.clone(), options, cancel, reason.clone());
            let outcome = match current.and_then(|id| self.graph.phase(&id)) {
                Some(phase) => runner.abort(phase, format!("{}{why}", runner::ABORTED)).await?,
                None => {
                    journal.record(Event::RunFinished { status: RunStatus::Aborted })?;
                    Outcome::Aborted
                }
            };
            Ok((run, outcome))
        })
        .await
    }

    /// Records a person's decision in the latest run (which must not be running).
    pub fn decide(
        &self,
        options: &RunOptions,
        key: &str,
        decision: handoff_executor::Decision,
    ) -> Result<String, EngineError> {
        if !key.parse::<DecisionKey>().is_ok_and(|key| self.graph.asks(&key)) {
            let known = self.graph.decision_keys().iter().map(DecisionKey::to_string).collect();
            return Err(EngineError::UnknownKey { key: key.to_owned(), known });
        }
        let lease = self.acquire(options, None)?;
        let result = (|| {
            let (run, state) = self.unfinished()?;
            self.journal(&run, state, options).record(Event::Decided { key: key.to_owned(), decision })?;
            Ok(run)
        })();
        self.release(&lease, result)
    }
}
