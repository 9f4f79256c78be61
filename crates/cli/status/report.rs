//! The report `handoff status` prints: the run's log set against the plan.
//!
//! Everything here is read from the run's log (replayed into [`RunState`]) or declared by
//! the plan; a value neither holds is `None` (`null` in JSON, "unknown" in text), never
//! guessed.

use handoff_engine::state::{PhaseState, RollbackEnd};
use handoff_engine::{LockRecord, RunState, Verdict};
use handoff_executor::DecisionKey;
use handoff_executor::decision::Subject;
use handoff_plan::model::{Gate, Phase, Plan};
use handoff_plan::units::Date;
use handoff_registry::Registry;
use jiff::Timestamp;
use serde::Serialize;

/// Where a run stands (`handoff status --format json`).
#[derive(Debug, Serialize)]
pub(crate) struct Report<'a> {
    /// One word: `completed`, `paused`, `rolled back`, …
    pub(crate) status: &'static str,
    /// The run's state replayed from its log (ids, digest, every phase, step and verdict).
    pub(crate) state: &'a RunState,
    /// Who holds the plan's lock (`None`: nobody).
    pub(crate) lock: Option<&'a LockRecord>,
    /// Why the lock could not be read, when it could not.
    pub(crate) lock_damaged: Option<&'a str>,
    /// The phase and step the run is at (`None`: no phase started).
    pub(crate) position: Option<Position>,
    /// Every phase of the plan: planned dates against actual ones.
    pub(crate) calendar: Vec<CalendarRow>,
    /// Decisions the run waits for or will ask for in its current phase.
    pub(crate) pending: Vec<Pending>,
    /// The criteria of the current (or last) phase with their latest values.
    pub(crate) criteria: Vec<CriterionRow>,
    /// The current phase's rollback budget and how it was used.
    pub(crate) rollback: Option<Budget>,
    /// When a run asleep through a long wait (`--detach-over`) wants to wake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wakes_at: Option<Timestamp>,
}

/// The phase and step a run is at.
#[derive(Debug, Serialize)]
pub(crate) struct Position {
    /// The phase started last.
    pub(crate) phase: String,
    /// Its step started last (`None`: none started).
    pub(crate) step: Option<String>,
    /// Where that step stands: `done`, `failed`, `running (or interrupted)`.
    pub(crate) step_status: Option<&'static str>,
}

/// One phase's planned and actual dates.
#[derive(Debug, Serialize)]
pub(crate) struct CalendarRow {
    /// Phase id.
    pub(crate) phase: String,
    /// Planned first day (`None`: the plan does not date the phase).
    pub(crate) planned_start: Option<Date>,
    /// Planned day after the last (`None`: the plan does not date the phase).
    pub(crate) planned_end: Option<Date>,
    /// When the phase started (`None`: not yet).
    pub(crate) started_at: Option<Timestamp>,
    /// When it passed or its rollback finished (`None`: not yet).
    pub(crate) ended_at: Option<Timestamp>,
}

/// A decision a person gives with `handoff approve <key>`.
#[derive(Debug, Serialize)]
pub(crate) struct Pending {
    /// The decision key.
    pub(crate) key: String,
    /// The question asked.
    pub(crate) question: String,
    /// Who may give it, as the plan declares (empty: the plan names nobody).
    pub(crate) approvers: Vec<String>,
    /// The run is paused on it now (else its phase will ask for it).
    pub(crate) waiting: bool,
}

/// A criterion of the current phase with its latest verdict.
#[derive(Debug, Serialize)]
pub(crate) struct CriterionRow {
    /// Criterion id.
    pub(crate) id: String,
    /// What passes: `error_rate < 1%`, or the question a person confirms.
    pub(crate) condition: String,
    /// The metric measured (`None`: a person confirms the criterion).
    pub(crate) metric: Option<String>,
    /// The latest verdict (`None`: not judged yet).
    pub(crate) verdict: Option<Verdict>,
    /// The last value measured (`None`: none measured, or a person confirms it).
    pub(crate) last_value: Option<f64>,
    /// When the latest verdict was given.
    pub(crate) judged_at: Option<Timestamp>,
    /// Which judgement it was: `phase end`, or the analysis at a hold (`25% of shift`).
    pub(crate) judged_by: Option<String>,
    /// The verdict's account (counts, who confirmed).
    pub(crate) detail: Option<String>,
}

/// A phase's rollback budget.
#[derive(Debug, Serialize)]
pub(crate) struct Budget {
    /// Phase id.
    pub(crate) phase: String,
    /// The budget (`rollback.max_duration`; `None`: the plan sets none).
    pub(crate) max_duration: Option<String>,
    /// Why the phase rolled back, when it did.
    pub(crate) reason: Option<String>,
    /// How the rollback ended, when it did.
    pub(crate) ended: Option<RollbackEnd>,
}

impl<'a> Report<'a> {
    /// The report of `state` against `plan` (`registry` reads what steps declare).
    pub(crate) fn new(registry: &Registry, plan: &Plan, state: &'a RunState) -> Report<'a> {
        let current = state.phases.last();
        let declared = current.and_then(|c| plan.phases.iter().find(|p| p.id.as_str() == c.id));
        Report {
            status: state.status_word(),
            state,
            lock: None,
            lock_damaged: None,
            position: current.map(position),
            calendar: calendar(plan, state),
            pending: pending(registry, plan, declared.zip(current), state),
            criteria: declared.zip(current).map(|(p, c)| criteria(p, c)).unwrap_or_default(),
            rollback: declared.zip(current).map(|(p, c)| budget(p, c)),
            wakes_at: state.wakes_at(),
        }
    }
}

fn position(phase: &PhaseState) -> Position {
    let step = phase.steps.iter().max_by_key(|(_, s)| s.started_at);
    let status = step.map(|(_, s)| match (s.finished, &s.error) {
        (true, _) => "done",
        (false, Some(_)) => "failed",
        (false, None) => "running (or interrupted)",
    });
    Position { phase: phase.id.clone(), step: step.map(|(id, _)| id.clone()), step_status: status }
}

fn calendar(plan: &Plan, state: &RunState) -> Vec<CalendarRow> {
    plan.phases
        .iter()
        .zip(plan.calendar())
        .map(|(phase, dates)| {
            let actual = state.phase(phase.id.as_str());
            CalendarRow {
                phase: phase.id.to_string(),
                planned_start: dates.map(|d| d.start),
                planned_end: dates.map(|d| d.end),
                started_at: actual.and_then(|a| a.started_at),
                ended_at: actual.and_then(|a| a.ended_at),
            }
        })
        .collect()
}

/// The pause the run waits on, then the approval gates of the current phase (as declared,
/// with its state) not yet open.
fn pending(registry: &Registry, plan: &Plan, current: Option<(&Phase, &PhaseState)>, state: &RunState) -> Vec<Pending> {
    let mut out: Vec<Pending> = state
        .paused
        .iter()
        .map(|pause| Pending {
            key: pause.key.clone(),
            question: pause.reason.clone(),
            approvers: pause.key.parse().map(|key| approvers(registry, plan, &key)).unwrap_or_default(),
            waiting: true,
        })
        .collect();
    let Some((phase, current)) = current.filter(|_| state.finished.is_none()) else { return out };
    let gates = phase.gates.iter().filter_map(|gate| match gate {
        Gate::Approval { prompt, .. } => Some(prompt),
        Gate::Soak(_) => None,
    });
    for (n, prompt) in gates.enumerate() {
        let gate = DecisionKey::approval(phase.id.as_str(), n + 1);
        let key = gate.to_string();
        if !current.gates.contains(&key) && !out.iter().any(|p| p.key == key) {
            let approvers = approvers(registry, plan, &gate);
            out.push(Pending { key, question: prompt.clone(), approvers, waiting: false });
        }
    }
    out
}

/// Who the plan says may decide `key`: an approval gate's approvers, a confirmed
/// criterion's `by`, a `gate.manual` step's approvers; nobody named otherwise (nor when
/// the plan file no longer has the key's phase).
fn approvers(registry: &Registry, plan: &Plan, key: &DecisionKey) -> Vec<String> {
    let Some(phase) = plan.phases.iter().find(|p| p.id.as_str() == key.phase) else { return Vec::new() };
    match &key.subject {
        Subject::Approval(n) => {
            let mut gates = phase.gates.iter().filter_map(|gate| match gate {
                Gate::Approval { approvers, require, .. } => {
                    Some(approvers.iter().cloned().chain(require.iter().map(|r| r.describe(&plan.approvers))).collect())
                }
                Gate::Soak(_) => None,
            });
            gates.nth(n.saturating_sub(1)).unwrap_or_default()
        }
        Subject::Named(name) => {
            let confirmed = phase.criteria.iter().find(|c| c.id.as_str() == name).and_then(|c| c.confirm.as_ref());
            match confirmed {
                Some(confirm) => confirm.by.clone().into_iter().collect(),
                None => {
                    let mut steps = phase.steps.iter().chain(phase.rollback.iter().flat_map(|r| r.steps.iter()));
                    steps.find(|s| s.id.as_str() == name).map(|s| registry.step_approvers(s)).unwrap_or_default()
                }
            }
        }
        Subject::Alerts | Subject::Irreversible => Vec::new(),
    }
}

fn criteria(phase: &Phase, current: &PhaseState) -> Vec<CriterionRow> {
    phase
        .criteria
        .iter()
        .map(|criterion| {
            let id = criterion.id.as_str();
            let condition = match (&criterion.metric, criterion.op, &criterion.threshold, &criterion.confirm) {
                (Some(metric), Some(op), Some(threshold), _) => format!("{metric} {} {threshold}", op.symbol()),
                (_, _, _, Some(confirm)) => format!("confirmed by a person: {}", confirm.prompt),
                _ => criterion.description.clone(),
            };
            let mut row = CriterionRow {
                id: id.to_owned(),
                condition,
                metric: criterion.metric.as_ref().map(ToString::to_string),
                verdict: None,
                last_value: None,
                judged_at: None,
                judged_by: None,
                detail: None,
            };
            latest(current, id, &mut row);
            row
        })
        .collect()
}

/// Fills `row` with the latest verdict on criterion `id`: the phase-end judgement or the
/// latest analysis, whichever came last.
fn latest(current: &PhaseState, id: &str, row: &mut CriterionRow) {
    let analysis = current.analyses.iter().rev().find(|a| a.criterion == id);
    let end = current.criteria.get(id);
    if let Some(end) = end.filter(|e| analysis.is_none_or(|a| e.at >= a.at)) {
        (row.verdict, row.last_value, row.judged_at) = (Some(end.verdict), end.last, Some(end.at));
        (row.judged_by, row.detail) = (Some("phase end".to_owned()), Some(end.detail.clone()));
    } else if let Some(a) = analysis {
        let by = match &a.step {
            Some(step) => format!("analysis at {} of {step}", a.hold),
            None => "background analysis".to_owned(),
        };
        (row.verdict, row.last_value, row.judged_at) = (Some(a.verdict), a.last, Some(a.at));
        (row.judged_by, row.detail) = (Some(by), Some(a.detail.clone()));
    }
}

fn budget(phase: &Phase, current: &PhaseState) -> Budget {
    Budget {
        phase: phase.id.to_string(),
        max_duration: phase.rollback.as_ref().and_then(|r| r.max_duration.as_ref()).map(ToString::to_string),
        reason: current.rollback.as_ref().map(|r| r.reason.clone()),
        ended: current.rollback.as_ref().and_then(|r| r.finished),
    }
}
