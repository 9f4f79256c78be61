//! The run's event log vocabulary. A run's state is a replay of these records
//! ([`crate::state`]); nothing else is persisted about a run except its plan snapshot.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use handoff_executor::Decision;

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, on the run's clock (plan time in a simulation).
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Why a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// One of the phase's steps.
    Forward,
    /// Undoing a completed step of a phase that rolls back.
    Compensate,
    /// One of the phase's rollback steps.
    Rollback,
}

impl Role {
    /// [`Role::Forward`] (what a record without a role means).
    pub fn forward() -> Role {
        Role::Forward
    }

    /// Whether it is [`Role::Forward`].
    pub fn is_forward(&self) -> bool {
        *self == Role::Forward
    }
}

/// How a run ended (or stopped for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every phase passed.
    Completed,
    /// A phase failed and was rolled back within its budget.
    RolledBack,
    /// A phase failed and its rollback failed or overran its budget.
    RollbackFailed,
    /// A person aborted the run (the current phase was rolled back).
    Aborted,
}

/// A criterion's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The criterion held.
    Pass,
    /// The criterion did not hold.
    Fail,
    /// Not enough data to decide.
    Inconclusive,
    /// The metric provider failed.
    ProviderError,
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run began.
    RunStarted {
        /// Run id.
        run: String,
        /// Plan name.
        plan: String,
        /// Environment.
        env: String,
        /// Plan digest (`sha256:…`).
        digest: String,
        /// Whether this is a simulation.
        simulation: bool,
    },
    /// A stopped run continues.
    RunResumed {
        /// Plan digest at resume.
        digest: String,
    },
    /// A phase began.
    PhaseStarted {
        /// Phase id.
        phase: String,
    },
    /// A step attempt began (written, durably, before the executor is called).
    StepStarted {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// Why it runs.
        role: Role,
        /// Attempt, from 1.
        attempt: u32,
    },
    /// A step saved a checkpoint.
    Checkpoint {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// Executor-defined data.
        data: Value,
    },
    /// A step measured a metric.
    Metric {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// Metric name.
        name: String,
        /// Value.
        value: f64,
    },
    /// A step finished (written after the executor returned).
    StepFinished {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// Why it ran.
        role: Role,
        /// What the executor returned (for compensation).
        output: handoff_executor::StepOutput,
    },
    /// A step attempt failed.
    StepFailed {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// Why it ran.
        role: Role,
        /// Attempt, from 1.
        attempt: u32,
        /// The error.
        error: String,
        /// Whether another attempt follows.
        retrying: bool,
    },
    /// A person settled a step that was running when the run stopped.
    StepSettled {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// `true`: it took effect, count it as finished; `false`: run it again.
        done: bool,
        /// What was running: the step itself (forward or rollback) or its compensation.
        #[serde(default = "Role::forward", skip_serializing_if = "Role::is_forward")]
        role: Role,
    },
    /// A background step that finished before the run stopped was started again.
    BackgroundRestarted {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
    },
    /// A completed step was undone (or found to need no undoing).
    StepCompensated {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// What happened.
        outcome: String,
    },
    /// A gate opened.
    GateOpened {
        /// Phase id.
        phase: String,
        /// Gate (`soak 14d`, `approval-1`).
        gate: String,
    },
    /// The run released its lock to sleep through the phase's observation (a soak longer
    /// than `RunOptions::detach_over`); resumed after `until`, it judges the slept window
    /// from range queries.
    Sleeping {
        /// Phase id.
        phase: String,
        /// When the observation ends.
        until: Timestamp,
    },
    /// A criterion was decided.
    CriterionEvaluated {
        /// Phase id.
        phase: String,
        /// Criterion id.
        criterion: String,
        /// Result.
        verdict: Verdict,
        /// Samples taken.
        samples: u32,
        /// Samples that violated the threshold.
        failed: u32,
        /// Details (last value, provider error, who confirmed).
        detail: String,
        /// The last value measured in the window (`None`: none, or a person confirmed it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<f64>,
    },
    /// A criterion was judged by analysis while the phase's steps ran: at a hold of a step
    /// (a weight of a traffic shift) or in the background.
    AnalysisEvaluated {
        /// Phase id.
        phase: String,
        /// The step held (`None`: background analysis).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// What was held (`25%`), `after` the step, or `background`.
        hold: String,
        /// Criterion id.
        criterion: String,
        /// Result.
        verdict: Verdict,
        /// Samples taken.
        samples: u32,
        /// Samples that violated the threshold.
        failed: u32,
        /// Details (counts, last value).
        detail: String,
        /// The last value measured (`None`: none was).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<f64>,
        /// The criterion only measures: its verdict changed nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
    },
    /// An alert fired.
    AlertFired {
        /// Phase id.
        phase: String,
        /// Alert name.
        alert: String,
        /// The value that fired it.
        value: f64,
        /// What handoff does.
        action: String,
    },
    /// A person decided on an approval or confirmation.
    Decided {
        /// Decision key (`<phase>/<step|criterion|approval-N|irreversible>`).
        key: String,
        /// The decision.
        #[serde(flatten)]
        decision: Decision,
    },
    /// The run stopped to wait for a person.
    Paused {
        /// Decision key that unblocks it.
        key: String,
        /// What is asked.
        reason: String,
    },
    /// The run was interrupted (Ctrl-C, SIGTERM, lost lock); resume continues it.
    Interrupted {
        /// Why.
        reason: String,
    },
    /// A phase's rollback began.
    RollbackStarted {
        /// Phase id.
        phase: String,
        /// Why.
        reason: String,
    },
    /// A phase's rollback ended.
    RollbackFinished {
        /// Phase id.
        phase: String,
        /// Whether every compensation and rollback step succeeded.
        ok: bool,
        /// Rollback time, in seconds of the run's clock.
        seconds: f64,
        /// The phase's budget (`max_duration`), in seconds.
        budget_seconds: Option<f64>,
        /// Whether the rollback overran its budget.
        breached: bool,
    },
    /// A phase passed.
    PhasePassed {
        /// Phase id.
        phase: String,
    },
    /// The run ended.
    RunFinished {
        /// How.
        status: RunStatus,
    },
}

impl Event {
    /// The event as a lifecycle change (for `kafka.publish_lifecycle` and the like), if it
    /// is one.
    pub fn lifecycle(&self) -> Option<(&'static str, Option<String>, Value)> {
        let phase = |p: &String| Some(p.clone());
        Some(match self {
            Event::RunStarted { run, env, simulation, .. } => {
                ("run_started", None, serde_json::json!({"run": run, "env": env, "simulation": simulation}))
            }
            Event::RunResumed { .. } => ("run_resumed", None, Value::Null),
            Event::PhaseStarted { phase: p } => ("phase_started", phase(p), Value::Null),
            Event::PhasePassed { phase: p } => ("phase_passed", phase(p), Value::Null),
            Event::RollbackStarted { phase: p, reason } => {
                ("phase_failed", phase(p), serde_json::json!({"reason": reason}))
            }
            Event::RollbackFinished { phase: p, ok, seconds, budget_seconds, breached } => (
                "phase_rolled_back",
                phase(p),
                serde_json::json!({"ok": ok, "seconds": seconds, "budget_seconds": budget_seconds, "breached": breached}),
            ),
            Event::Paused { key, reason } => ("run_paused", None, serde_json::json!({"key": key, "reason": reason})),
            Event::Interrupted { reason } => ("run_interrupted", None, serde_json::json!({"reason": reason})),
            Event::RunFinished { status } => ("run_finished", None, serde_json::json!({"status": status})),
            _ => return None,
        })
    }

    /// The phase the event belongs to, if any.
    pub fn phase(&self) -> Option<&str> {
        match self {
            Event::PhaseStarted { phase }
            | Event::StepStarted { phase, .. }
            | Event::Checkpoint { phase, .. }
            | Event::Metric { phase, .. }
            | Event::StepFinished { phase, .. }
            | Event::StepFailed { phase, .. }
            | Event::StepSettled { phase, .. }
            | Event::BackgroundRestarted { phase, .. }
            | Event::StepCompensated { phase, .. }
            | Event::GateOpened { phase, .. }
            | Event::Sleeping { phase, .. }
            | Event::CriterionEvaluated { phase, .. }
            | Event::AnalysisEvaluated { phase, .. }
            | Event::AlertFired { phase, .. }
            | Event::RollbackStarted { phase, .. }
            | Event::RollbackFinished { phase, .. }
            | Event::PhasePassed { phase } => Some(phase),
            _ => None,
        }
    }
}

/// What subscribers of a running engine receive: every durable record, and progress
/// reports that are not persisted.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A record, after it is durable.
    Record(Record),
    /// A step's progress report.
    Progress {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// What is going on.
        message: String,
        /// Fraction done, when known.
        fraction: Option<f64>,
    },
}
