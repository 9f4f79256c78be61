//! A run's state: a pure replay of its event log.

use std::collections::{BTreeMap, BTreeSet};

use handoff_executor::{Decision, StepOutput};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::events::{Event, Record, Role, RunStatus, Verdict};

/// Where a run stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunState {
    /// Run id.
    pub run: String,
    /// Plan name.
    pub plan: String,
    /// Environment.
    pub env: String,
    /// Digest of the plan the run started with.
    pub digest: String,
    /// Whether it is a simulation.
    pub simulation: bool,
    /// First record's time.
    pub started_at: Option<Timestamp>,
    /// Last record's time.
    pub updated_at: Option<Timestamp>,
    /// How it ended, when it did.
    pub finished: Option<RunStatus>,
    /// The decision it waits for, when paused.
    pub paused: Option<Pause>,
    /// Why it was interrupted, when it was and has not resumed since.
    pub interrupted: Option<String>,
    /// Phases that started, in order.
    pub phases: Vec<PhaseState>,
    /// Decisions people made, by key (the latest).
    pub decisions: BTreeMap<String, Decision>,
    /// Every decision on each key, in order: a gate that needs several approvers counts them
    /// (not serialized: `decisions` shows the latest).
    #[serde(skip)]
    pub approvals: BTreeMap<String, Vec<Decision>>,
    /// Latest value of every emitted metric.
    pub metrics: BTreeMap<String, f64>,
    /// Background steps a later step stopped (its output's `stops`).
    pub stopped: BTreeSet<String>,
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// Position of each phase in `phases`, by id (lookups stay logarithmic in long plans).
    #[serde(skip)]
    index: BTreeMap<String, usize>,
}

/// A run asleep through a phase's observation: from `since` (the record's time) until
/// `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sleep {
    /// When it went to sleep: the observation's start.
    pub since: Timestamp,
    /// When it wants to wake: the observation's end.
    pub until: Timestamp,
}

/// Where a phase stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseState {
    /// Phase id.
    pub id: String,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// It passed.
    pub passed: bool,
    /// When it ended: passed, or its rollback finished.
    pub ended_at: Option<Timestamp>,
    /// Its steps (forward and rollback), by id.
    pub steps: BTreeMap<String, StepState>,
    /// Forward steps in the order they finished (compensation runs in reverse).
    pub finished_order: Vec<String>,
    /// Steps already compensated (or whose interrupted compensation a person settled as
    /// done).
    pub compensated: BTreeSet<String>,
    /// Steps whose compensation started and has not ended: it was running when the run
    /// stopped.
    pub undoing: BTreeSet<String>,
    /// Steps whose interrupted compensation a person said to run again (for one attempt).
    pub undo_retry: BTreeSet<String>,
    /// Steps whose compensation failed, with the error.
    pub undo_failed: BTreeMap<String, String>,
    /// Gates that opened.
    pub gates: BTreeSet<String>,
    /// Criteria results, by criterion id.
    pub criteria: BTreeMap<String, CriterionResult>,
    /// Verdicts of analysis while the steps ran, in order.
    pub analyses: Vec<AnalysisResult>,
    /// Alerts that fired.
    pub alerts: Vec<String>,
    /// The rollback, once it started.
    pub rollback: Option<RollbackState>,
    /// When the run went to sleep through its observation, and when it wakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleeping: Option<Sleep>,
}

/// A phase's rollback.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackState {
    /// Why.
    pub reason: String,
    /// When it started (the budget counts from here).
    pub started_at: Timestamp,
    /// How it ended, once it did.
    pub finished: Option<RollbackEnd>,
}

/// How a rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RollbackEnd {
    /// Every compensation and rollback step succeeded.
    pub ok: bool,
    /// How long it took, in seconds of the run's clock.
    pub seconds: f64,
    /// Its budget in seconds, if it had one.
    pub budget_seconds: Option<f64>,
    /// It took longer than its budget.
    pub breached: bool,
}

/// The decision a paused run waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// Decision key (`handoff approve … <key>`).
    pub key: String,
    /// The question.
    pub reason: String,
}

/// A criterion's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CriterionResult {
    /// The verdict.
    pub verdict: Verdict,
    /// A one-line account of it.
    pub detail: String,
    /// Samples taken.
    pub samples: u32,
    /// Samples that violated the threshold.
    pub failed: u32,
    /// The last value measured (`None`: none was, or a person confirmed it).
    pub last: Option<f64>,
    /// When it was judged.
    pub at: Timestamp,
}

/// A verdict of analysis while a phase's steps ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisResult {
    /// The step held (`None`: background analysis).
    pub step: Option<String>,
    /// What was held (`25%`), `after` the step, or `background`.
    pub hold: String,
    /// Criterion id.
    pub criterion: String,
    /// The verdict.
    pub verdict: Verdict,
    /// A one-line account of it.
    pub detail: String,
    /// The criterion only measures.
    pub dry_run: bool,
    /// The last value measured (`None`: none was).
    pub last: Option<f64>,
    /// When it was judged.
    pub at: Timestamp,
}

/// Where a step stands.
#[derive(Debug, Clone, Serialize)]
pub struct StepState {
    /// Why it ran.
    pub role: Role,
    /// Attempts started.
    pub attempts: u32,
    /// It finished (or a person settled it as done).
    pub finished: bool,
    /// Last error, if the last attempt failed.
    pub error: Option<String>,
    /// What the executor returned.
    pub output: StepOutput,
    /// Last checkpoint.
    pub checkpoint: Option<Value>,
    /// A person said to run it again although it was interrupted.
    pub retry_settled: bool,
    /// When the first attempt started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

impl StepState {
    /// Started, not finished, and not failed: it was running when the run stopped.
    pub fn interrupted(&self) -> bool {
        !self.finished && self.error.is_none()
    }
}

impl PhaseState {
    /// A step's attempt started (the first creates its state).
    fn started(&mut self, step: &str, role: Role, attempt: u32, at: Timestamp) {
        let state = self.steps.entry(step.to_owned()).or_insert_with(|| StepState {
            role,
            attempts: 0,
            finished: false,
            error: None,
            output: StepOutput::default(),
            checkpoint: None,
            retry_settled: false,
            started_at: at,
            finished_at: None,
        });
        state.attempts = attempt;
        state.error = None;
        // A person's "run it again" covers one attempt, not every later crash.
        state.retry_settled = false;
    }

    /// A step finished with `output`.
    fn finished(&mut self, step: &str, role: Role, output: &StepOutput, at: Timestamp) {
        if role == Role::Forward {
            self.finished_order.push(step.to_owned());
        }
        if let Some(state) = self.steps.get_mut(step) {
            state.finished = true;
            state.output = output.clone();
            state.finished_at = Some(at);
        }
    }

    /// A person settled an interrupted step: it took effect (`done`), or it runs again
    /// (during a rollback: it did not take effect, so there is nothing to undo).
    fn settled(&mut self, step: &str, done: bool, at: Timestamp) {
        let Some(state) = self.steps.get_mut(step) else { return };
        if !done {
            state.retry_settled = true;
            return;
        }
        state.finished = true;
        state.finished_at = Some(at);
        if state.role == Role::Forward {
            self.finished_order.push(step.to_owned());
        }
    }
}

impl PhaseState {
    /// A compensation of `step` started (a person's "run it again" covers this attempt).
    fn compensation_started(&mut self, step: &str) {
        self.undoing.insert(step.to_owned());
        self.undo_retry.remove(step);
    }

    /// A compensation of `step` ended: done, or failed with `error`.
    fn compensation_ended(&mut self, step: &str, error: Option<&str>) {
        self.undoing.remove(step);
        match error {
            Some(error) => drop(self.undo_failed.insert(step.to_owned(), error.to_owned())),
            None => drop(self.compensated.insert(step.to_owned())),
        }
    }

    /// A person settled an interrupted compensation: it took effect (`done`), or it runs
    /// again.
    fn compensation_settled(&mut self, step: &str, done: bool) {
        if done {
            self.compensation_ended(step, None);
        } else {
            self.undo_retry.insert(step.to_owned());
        }
    }

    /// Whether `step`'s compensation was running when the run stopped and nobody said to
    /// run it again.
    pub fn undo_interrupted(&self, step: &str) -> bool {
        self.undoing.contains(step) && !self.undo_retry.contains(step)
    }
}

impl RunState {
    /// Replays a log.
    pub fn replay(records: &[Record]) -> RunState {
        let mut state = RunState { next_seq: 1, ..RunState::default() };
        for record in records {
            state.apply(record);
        }
        state
    }

    /// The state of a phase, if it started.
    pub fn phase(&self, id: &str) -> Option<&PhaseState> {
        self.phases.get(*self.index.get(id)?)
    }

    fn phase_mut(&mut self, id: &str) -> &mut PhaseState {
        let index = *self.index.entry(id.to_owned()).or_insert_with(|| {
            self.phases.push(PhaseState { id: id.to_owned(), ..PhaseState::default() });
            self.phases.len() - 1
        });
        &mut self.phases[index]
    }

    /// Applies one record.
    pub fn apply(&mut self, record: &Record) {
        self.next_seq = record.seq + 1;
        self.started_at.get_or_insert(record.at);
        self.updated_at = Some(record.at);
        let at = record.at;
        match &record.event {
            Event::RunStarted { run, plan, env, digest, simulation } => {
                (self.run, self.plan, self.env, self.digest) = (run.clone(), plan.clone(), env.clone(), digest.clone());
                self.simulation = *simulation;
            }
            Event::RunResumed { .. } => {
                self.paused = None;
                self.interrupted = None;
            }
            Event::PhaseStarted { phase } => self.phase_mut(phase).started_at = Some(at),
            Event::StepStarted { .. }
            | Event::Checkpoint { .. }
            | Event::StepFinished { .. }
            | Event::StepFailed { .. }
            | Event::StepSettled { .. }
            | Event::StepCompensated { .. } => self.apply_step(&record.event, at),
            Event::Metric { name, value, .. } => {
                self.metrics.insert(name.clone(), *value);
            }
            Event::GateOpened { phase, gate } => {
                self.phase_mut(phase).gates.insert(gate.clone());
            }
            Event::Sleeping { phase, until } => {
                self.phase_mut(phase).sleeping = Some(Sleep { since: at, until: *until })
            }
            Event::CriterionEvaluated { phase, criterion, verdict, samples, failed, detail, last } => {
                let (samples, failed, last) = (*samples, *failed, *last);
                let result = CriterionResult { verdict: *verdict, detail: detail.clone(), samples, failed, last, at };
                self.phase_mut(phase).criteria.insert(criterion.clone(), result);
            }
            Event::AnalysisEvaluated { phase, step, hold, criterion, verdict, detail, dry_run, last, .. } => {
                let result = AnalysisResult {
                    step: step.clone(),
                    hold: hold.clone(),
                    criterion: criterion.clone(),
                    verdict: *verdict,
                    detail: detail.clone(),
                    dry_run: *dry_run,
                    last: *last,
                    at,
                };
                self.phase_mut(phase).analyses.push(result);
            }
            Event::AlertFired { phase, alert, .. } => self.phase_mut(phase).alerts.push(alert.clone()),
            Event::Decided { key, decision } => {
                self.decisions.insert(key.clone(), decision.clone());
                self.approvals.entry(key.clone()).or_default().push(decision.clone());
            }
            Event::Paused { key, reason } => self.paused = Some(Pause { key: key.clone(), reason: reason.clone() }),
            Event::Interrupted { reason } => self.interrupted = Some(reason.clone()),
            Event::RollbackStarted { phase, reason } => {
                self.phase_mut(phase).rollback =
                    Some(RollbackState { reason: reason.clone(), started_at: at, finished: None });
            }
            Event::RollbackFinished { phase, ok, seconds, budget_seconds, breached } => {
                let state = self.phase_mut(phase);
                state.ended_at = Some(at);
                if let Some(rollback) = state.rollback.as_mut() {
                    let end = RollbackEnd {
                        ok: *ok,
                        seconds: *seconds,
                        budget_seconds: *budget_seconds,
                        breached: *breached,
                    };
                    rollback.finished = Some(end);
                }
            }
            Event::PhasePassed { phase } => {
                let state = self.phase_mut(phase);
                (state.passed, state.ended_at) = (true, Some(at));
            }
            Event::RunFinished { status } => self.finished = Some(*status),
            Event::BackgroundRestarted { .. } => {}
        }
    }

    /// Applies a record about one step: started, checkpointed, finished, failed, settled,
    /// compensated.
    fn apply_step(&mut self, event: &Event, at: Timestamp) {
        match event {
            Event::StepStarted { phase, step, role, attempt } => {
                let phase = self.phase_mut(phase);
                if *role == Role::Compensate {
                    phase.compensation_started(step);
                } else {
                    phase.started(step, *role, *attempt, at);
                }
            }
            Event::Checkpoint { phase, step, data } => {
                if let Some(state) = self.phase_mut(phase).steps.get_mut(step) {
                    state.checkpoint = Some(data.clone());
                }
            }
            Event::StepFinished { phase, step, role, output } => {
                self.stopped.extend(output.stops.iter().cloned());
                self.phase_mut(phase).finished(step, *role, output, at);
            }
            Event::StepFailed { phase, step, role: Role::Compensate, error, .. } => {
                self.phase_mut(phase).compensation_ended(step, Some(error));
            }
            Event::StepFailed { phase, step, error, .. } => {
                if let Some(state) = self.phase_mut(phase).steps.get_mut(step) {
                    state.error = Some(error.clone());
                }
            }
            Event::StepSettled { phase, step, done, role: Role::Compensate } => {
                self.phase_mut(phase).compensation_settled(step, *done);
            }
            Event::StepSettled { phase, step, done, .. } => self.phase_mut(phase).settled(step, *done, at),
            Event::StepCompensated { phase, step, .. } => self.phase_mut(phase).compensation_ended(step, None),
            _ => {}
        }
    }

    /// One word for where the run stands.
    pub fn status_word(&self) -> &'static str {
        match (self.finished, &self.paused, &self.interrupted) {
            (Some(RunStatus::Completed), ..) => "completed",
            (Some(RunStatus::RolledBack), ..) => "rolled back",
            (Some(RunStatus::RollbackFailed), ..) => "rollback failed",
            (Some(RunStatus::Aborted), ..) => "aborted",
            (None, Some(_), _) => "paused",
            (None, None, Some(_)) => "interrupted",
            (None, None, None) if self.wakes_at().is_some() => "waiting",
            (None, None, None) => "running (or crashed)",
        }
    }

    /// When a run asleep through its current phase's observation wants to wake
    /// (`handoff resume` before then exits again at once).
    pub fn wakes_at(&self) -> Option<Timestamp> {
        let phase = self.phases.last().filter(|_| self.finished.is_none())?;
        phase.sleeping.filter(|_| !phase.gates.contains("soak") && phase.rollback.is_none()).map(|s| s.until)
    }
}
