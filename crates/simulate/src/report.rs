//! The simulation report, built from the run's log: verdict, per phase the criteria
//! (target, measured, verdict), the rollback against its budget, data-integrity checks
//! and what was assumed; rendered as Markdown (a PR comment), JSON and JUnit XML.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_engine::{Event, Outcome, Record, Verdict};
use handoff_executor::{DecisionKey, StepOutput};
use handoff_plan::model::{Id, Phase, Plan};
use handoff_plan::simulation::{Measure, Scenario};
use handoff_plan::units::Measured;
use serde::Serialize;
use serde_json::Value;

use crate::Timings;
use crate::app::{Audit, CanaryPoint, Tally};
use crate::junit::{self, Case, CaseOutcome, Suite};

/// The hidden marker that lets CI update one PR comment in place.
pub const MARKER: &str = "<!-- handoff-simulate-report -->";

/// What a simulation found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Plan name.
    pub plan: String,
    /// Scenario name, if any.
    pub scenario: Option<String>,
    /// `pass` when the run went as expected: every phase passed and nothing was lost, or,
    /// for a scenario that expects a phase to fail, its expectation was met; otherwise
    /// `fail`. The exit code and the JUnit failures follow it.
    pub verdict: RunVerdict,
    /// What the scenario expected, and whether it happened.
    pub expectation: Option<Expectation>,
    /// How the run ended, in words.
    pub outcome: String,
    /// Simulated time the run covered, in days.
    pub simulated_days: f64,
    /// The plan date simulated day 0 stands for: the first phase's planned start (the
    /// plan's calendar), else the day the run started.
    pub starts_on: jiff::civil::Date,
    /// Real seconds per simulated day.
    pub day_seconds: f64,
    /// Wall time of each stage.
    pub timings: Timings,
    /// Every phase of the plan.
    pub phases: Vec<PhaseReport>,
    /// The end-of-run check that no acknowledged write was lost, or why it could not run.
    pub audit: AuditOutcome,
    /// Rollback drills, each from a run of its own.
    pub drills: Vec<Drill>,
    /// Read latency and errors at each share of reads the canary gave the new owner.
    pub canary: Vec<CanaryPoint>,
    /// Faults injected.
    pub faults: Vec<String>,
    /// Requests the application model made, and how many failed, by kind.
    pub load: Vec<LoadLine>,
}

/// A scenario's expectation.
#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    /// The phase expected to fail and roll back.
    pub phase: String,
    /// Whether it failed, rolled back within budget and lost nothing (the end-of-run audit
    /// found every acknowledged write).
    pub met: bool,
    /// Why not, when not.
    pub detail: String,
}

impl AuditOutcome {
    /// What was lost and which writes were misrouted, in words (with examples), or why the
    /// audit could not run; `None` when the audit found nothing.
    pub fn loss(&self) -> Option<String> {
        match (self.lost(), self.misrouted()) {
            (Some(lost), Some(misrouted)) => Some(format!("{misrouted}; and {lost}")),
            (lost, misrouted) => lost.or(misrouted),
        }
    }

    /// What was lost, or why the audit could not run.
    fn lost(&self) -> Option<String> {
        match self {
            AuditOutcome::Done(audit) if audit.lost == 0 => None,
            AuditOutcome::Done(audit) => Some(format!(
                "the last acknowledged write of {} of {} documents is missing from `{}` ({})",
                audit.lost,
                audit.documents,
                audit.store,
                audit.examples.join("; ")
            )),
            AuditOutcome::Failed { error } => Some(format!("the loss audit could not run: {error}")),
        }
    }

    /// The writes the VirtualService sent to a service that did not own writes.
    fn misrouted(&self) -> Option<String> {
        let AuditOutcome::Done(audit) = self else { return None };
        let total: u64 = audit.misrouted.iter().map(|m| m.writes).sum();
        let each = audit.misrouted.iter().take(5).map(|m| {
            let via = m.via.as_ref().map_or(" (its host has no VirtualService)".to_owned(), |v| {
                format!(" by route `{}` at weight {}% (applied by `{}/{}`)", v.route, v.weight, v.phase, v.step)
            });
            let owners: Vec<String> = m.owners.iter().map(|o| format!("`{o}`")).collect();
            format!("{} to `{}`{via}, while {} owned writes", m.writes, m.service, owners.join(" and "))
        });
        (total > 0).then(|| {
            format!(
                "{total} writes were routed to a service that did not own writes: {}",
                each.collect::<Vec<_>>().join("; ")
            )
        })
    }
}

/// A rollback drill: the phase failed on purpose once its steps were done.
#[derive(Debug, Clone, Serialize)]
pub struct Drill {
    /// The phase.
    pub phase: String,
    /// Its rollback, when the drill got that far.
    pub rollback: Option<RollbackReport>,
    /// Documents whose last acknowledged write was missing after the rollback (`None`:
    /// the audit could not run).
    pub lost: Option<u64>,
    /// Whether the rollback ran within its budget, every step succeeded and nothing was
    /// lost.
    pub met: bool,
    /// Why not, when not.
    pub detail: String,
}

/// The end-of-run loss audit, or why it could not run.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AuditOutcome {
    /// It ran.
    Done(Audit),
    /// It could not read the store.
    Failed {
        /// Why.
        error: String,
    },
}

impl From<Result<Audit, String>> for AuditOutcome {
    fn from(audit: Result<Audit, String>) -> AuditOutcome {
        match audit {
            Ok(audit) => AuditOutcome::Done(audit),
            Err(error) => AuditOutcome::Failed { error },
        }
    }
}

/// One kind of request of the model.
#[derive(Debug, Clone, Serialize)]
pub struct LoadLine {
    /// Reads, writes, dual writes, events, shadow reads.
    pub kind: String,
    /// Requests made.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Phase id.
    pub id: String,
    /// Name.
    pub name: String,
    /// How far it got.
    pub status: PhaseStatus,
    /// Simulated start (day number from the run's start).
    pub start_day: Option<f64>,
    /// Simulated duration in days.
    pub days: Option<f64>,
    /// Criteria.
    pub criteria: Vec<CriterionReport>,
    /// Verdicts of analysis while the steps ran (each weight of a canary, background).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub analyses: Vec<AnalysisReport>,
    /// The rollback, when one ran.
    pub rollback: Option<RollbackReport>,
    /// Full comparisons made by the phase's `mongo.verify` steps.
    pub integrity: Vec<IntegrityReport>,
    /// What the simulation could not do for real and assumed (shell commands, people).
    pub assumed: Vec<String>,
}

/// How far a phase got; in the report as its words (`passed`, `rolled back`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum PhaseStatus {
    /// `not reached`: the run ended before it started.
    NotReached,
    /// `stopped`: it started and neither passed nor rolled back.
    Stopped,
    /// `passed`.
    Passed,
    /// `rolled back`: within its budget, every rollback step succeeding.
    RolledBack,
    /// `rollback failed`: a rollback step failed or the rollback overran its budget.
    RollbackFailed,
}

impl PhaseStatus {
    /// The status in words, as the report shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::NotReached => "not reached",
            PhaseStatus::Stopped => "stopped",
            PhaseStatus::Passed => "passed",
            PhaseStatus::RolledBack => "rolled back",
            PhaseStatus::RollbackFailed => "rollback failed",
        }
    }
}

impl From<PhaseStatus> for &'static str {
    fn from(status: PhaseStatus) -> &'static str {
        status.as_str()
    }
}

/// One criterion.
#[derive(Debug, Clone, Serialize)]
pub struct CriterionReport {
    /// Criterion id.
    pub id: String,
    /// In words.
    pub description: String,
    /// `metric op threshold`, or the person's check.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// What was decided.
    pub verdict: CriterionVerdict,
}

/// A verdict of analysis while a phase's steps ran.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisReport {
    /// The step held (none: background analysis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What was held (`25%`), `after` the step, or `background`.
    pub hold: String,
    /// Criterion id.
    pub criterion: String,
    /// Samples taken.
    pub samples: u32,
    /// Samples that violated the threshold.
    pub failed: u32,
    /// What was decided.
    pub verdict: CriterionVerdict,
    /// The criterion only measures (its verdict changed nothing).
    pub dry_run: bool,
}

/// A criterion's verdict in a simulation; in the report as its words (`pass`, `fail`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum CriterionVerdict {
    /// `pass`.
    Pass,
    /// `fail`.
    Fail,
    /// `inconclusive`: not enough data to decide.
    Inconclusive,
    /// `provider error`: the metric could not be read.
    ProviderError,
    /// `assumed in simulation`: a person's check, which the simulation cannot make.
    Assumed,
}

impl CriterionVerdict {
    /// The verdict in words, as the report shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            CriterionVerdict::Pass => "pass",
            CriterionVerdict::Fail => "fail",
            CriterionVerdict::Inconclusive => "inconclusive",
            CriterionVerdict::ProviderError => "provider error",
            CriterionVerdict::Assumed => "assumed in simulation",
        }
    }

    /// Whether it counts as a failure (an assumed check does not).
    pub fn failed(self) -> bool {
        !matches!(self, CriterionVerdict::Pass | CriterionVerdict::Assumed)
    }
}

impl From<Verdict> for CriterionVerdict {
    fn from(verdict: Verdict) -> CriterionVerdict {
        match verdict {
            Verdict::Pass => CriterionVerdict::Pass,
            Verdict::Fail => CriterionVerdict::Fail,
            Verdict::Inconclusive => CriterionVerdict::Inconclusive,
            Verdict::ProviderError => CriterionVerdict::ProviderError,
        }
    }
}

impl From<CriterionVerdict> for &'static str {
    fn from(verdict: CriterionVerdict) -> &'static str {
        verdict.as_str()
    }
}

/// A rollback.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// Why the phase rolled back.
    pub reason: String,
    /// Budget, in simulated seconds.
    pub budget_seconds: Option<f64>,
    /// Time it took, in simulated seconds.
    pub seconds: f64,
    /// Whether it overran its budget.
    pub breached: bool,
    /// Whether every compensation and rollback step succeeded.
    pub ok: bool,
}

impl RollbackReport {
    /// Whether it failed or overran its budget.
    fn failed(&self) -> bool {
        self.breached || !self.ok
    }
}

/// A `mongo.verify` result.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    /// Step id.
    pub step: String,
    /// `source` vs `target`.
    pub compared: String,
    /// Documents compared.
    pub documents: u64,
    /// Missing + extra + different.
    pub discrepancies: u64,
}

/// What a report is built from: the plan, the run and what the simulator saw.
pub(crate) struct Inputs<'a> {
    /// The plan as written.
    pub(crate) plan: &'a Plan,
    /// The run's log.
    pub(crate) records: &'a [Record],
    /// How the run ended.
    pub(crate) outcome: &'a Outcome,
    /// The scenario (or drill), if any.
    pub(crate) scenario: Option<&'a Scenario>,
    /// The end-of-run loss audit, or why it could not run.
    pub(crate) audit: Result<Audit, String>,
    /// Reads at each share of reads the canary gave the new owner.
    pub(crate) canary: Vec<CanaryPoint>,
    /// Faults injected, in words.
    pub(crate) faults: Vec<String>,
    /// Requests of the application model by kind.
    pub(crate) totals: BTreeMap<&'static str, Tally>,
    /// Wall time of each stage.
    pub(crate) timings: Timings,
    /// Real time per simulated day.
    pub(crate) day: Duration,
}

/// Builds the report from the run's records.
pub(crate) fn build(inputs: Inputs<'_>) -> Report {
    let phases = phases(inputs.plan, inputs.records);
    let audit = AuditOutcome::from(inputs.audit);
    let lost = audit.loss();
    let (verdict, outcome) = headline(inputs.outcome, &phases, lost.as_deref());
    let expectation =
        inputs.scenario.and_then(|s| s.expect_rollback.as_ref()).map(|e| expectation(e, &phases, lost.as_deref()));
    // A scenario's run passes when it went as the scenario expects, and only then.
    let verdict = match &expectation {
        Some(expected) if expected.met => RunVerdict::Pass,
        Some(_) => RunVerdict::Fail,
        None => verdict,
    };
    Report {
        plan: inputs.plan.metadata.name.0.clone(),
        scenario: inputs.scenario.map(|s| s.name.clone()),
        verdict,
        expectation,
        outcome,
        simulated_days: simulated_days(inputs.records),
        starts_on: starts_on(inputs.plan, inputs.records),
        day_seconds: inputs.day.as_secs_f64(),
        timings: inputs.timings,
        phases,
        drills: Vec::new(),
        canary: inputs.canary,
        audit,
        faults: inputs.faults,
        load: inputs
            .totals
            .into_iter()
            .map(|(kind, tally)| LoadLine { kind: kind.to_owned(), requests: tally.requests, failed: tally.failed })
            .collect(),
    }
}

/// The plan date of simulated day 0.
fn starts_on(plan: &Plan, records: &[Record]) -> jiff::civil::Date {
    let planned = plan.calendar().into_iter().flatten().next().map(|dates| dates.start.0);
    let started =
        || records.first().map_or(jiff::civil::Date::ZERO, |r| jiff::tz::Offset::UTC.to_datetime(r.at).date());
    planned.unwrap_or_else(started)
}

/// Every phase of `plan` as the run's log tells it.
fn phases(plan: &Plan, records: &[Record]) -> Vec<PhaseReport> {
    let mut timeline = Timeline::new(plan, records.first().map(|r| r.at));
    for record in records {
        timeline.record(record);
    }
    timeline.phases
}

/// The phases as the run's log tells them, record by record.
struct Timeline<'a> {
    plan: &'a Plan,
    /// When the log begins.
    start: Option<jiff::Timestamp>,
    phases: Vec<PhaseReport>,
    /// Why each phase that rolled back did, by phase id.
    reasons: BTreeMap<String, String>,
}

impl<'a> Timeline<'a> {
    /// Every phase of `plan`, not reached yet.
    fn new(plan: &'a Plan, start: Option<jiff::Timestamp>) -> Timeline<'a> {
        let phases = plan
            .phases
            .iter()
            .map(|p| PhaseReport {
                id: p.id.0.clone(),
                name: p.name.clone(),
                status: PhaseStatus::NotReached,
                start_day: None,
                days: None,
                criteria: Vec::new(),
                analyses: Vec::new(),
                rollback: None,
                integrity: Vec::new(),
                assumed: Vec::new(),
            })
            .collect();
        Timeline { plan, start, phases, reasons: BTreeMap::new() }
    }

    /// The phase a record is about: its own, or a decision's (by the decision's key).
    fn phase_of(&self, event: &Event) -> Option<usize> {
        let id = match event {
            Event::Decided { key, .. } => key.parse::<DecisionKey>().ok()?.phase,
            other => other.phase()?.to_owned(),
        };
        self.plan.phases.iter().position(|p| p.id.0 == id)
    }

    /// What one record of a phase says about it.
    fn record(&mut self, record: &Record) {
        let Some(phase) = self.phase_of(&record.event) else { return };
        let day = self.start.map(|s| record.at.duration_since(s).as_secs_f64() / 86_400.0);
        let report = &mut self.phases[phase];
        match &record.event {
            Event::PhaseStarted { phase: id } => {
                report.status = PhaseStatus::Stopped;
                report.start_day = day;
                if !self.plan.phases[phase].reversible {
                    let key = DecisionKey::irreversible(id);
                    report
                        .assumed
                        .push(format!("`{key}`: a person's go for a point of no return (given by the simulation)"));
                }
            }
            Event::PhasePassed { .. } => {
                report.status = PhaseStatus::Passed;
                report.end(day);
            }
            Event::RollbackStarted { phase, reason } => {
                self.reasons.insert(phase.clone(), reason.clone());
            }
            Event::RollbackFinished { phase, ok, seconds, budget_seconds, breached } => {
                let reason = self.reasons.get(phase).cloned().unwrap_or_default();
                let rollback = RollbackReport {
                    reason,
                    budget_seconds: *budget_seconds,
                    seconds: *seconds,
                    breached: *breached,
                    ok: *ok,
                };
                report.status = if rollback.failed() { PhaseStatus::RollbackFailed } else { PhaseStatus::RolledBack };
                report.rollback = Some(rollback);
                report.end(day);
            }
            Event::CriterionEvaluated { criterion, verdict, detail, .. } => {
                let evaluated = Evaluated { criterion, verdict: *verdict, detail };
                report.criteria.push(criterion_report(self.plan, &self.plan.phases[phase], evaluated));
            }
            Event::AnalysisEvaluated { step, hold, criterion, verdict, samples, failed, dry_run, .. } => {
                report.analyses.push(AnalysisReport {
                    step: step.clone(),
                    hold: hold.clone(),
                    criterion: criterion.clone(),
                    samples: *samples,
                    failed: *failed,
                    verdict: (*verdict).into(),
                    dry_run: *dry_run,
                });
            }
            Event::StepFinished { step, output, .. } => step_finding(report, step, output),
            Event::Decided { key, decision } if decision.by == "simulation" => {
                report.assumed.push(format!("`{key}`: a person's decision (approved by the simulation)"));
            }
            _ => {}
        }
    }
}

impl PhaseReport {
    /// Its duration, now that it ended on simulated day `day`.
    fn end(&mut self, day: Option<f64>) {
        if let (Some(start), Some(now)) = (self.start_day, day) {
            self.days = Some(now - start);
        }
    }
}

/// A criterion as the engine evaluated it.
struct Evaluated<'r> {
    criterion: &'r str,
    verdict: Verdict,
    detail: &'r str,
}

/// The value a simulation gives `metric` without measuring it (a `constant` measure).
fn constant(plan: &Plan, metric: &Id) -> Option<f64> {
    match plan.simulation.as_ref()?.measures.get(metric)? {
        Measure::Constant(value) => Some(*value),
        _ => None,
    }
}

/// A criterion of `phase` as evaluated: its target in words and its verdict. A person's
/// check is assumed in a simulation, whatever the engine recorded; so is a criterion on a
/// metric the simulation holds constant (its samples measured nothing).
fn criterion_report(plan: &Plan, phase: &Phase, evaluated: Evaluated<'_>) -> CriterionReport {
    let Evaluated { criterion, verdict, detail } = evaluated;
    let declared = phase.criteria.iter().find(|c| c.id.0 == *criterion);
    let confirm = declared.and_then(|c| c.confirm.as_ref());
    let target = match (declared, confirm) {
        (_, Some(confirm)) => format!("confirmed: {}", confirm.prompt),
        (Some(c), None) => format!(
            "{} {} {}",
            c.metric.as_ref().map(|m| m.0.as_str()).unwrap_or("?"),
            c.op.map(|o| o.symbol()).unwrap_or("?"),
            c.threshold.as_ref().map(ToString::to_string).unwrap_or_default()
        ),
        _ => String::new(),
    };
    let held = declared.and_then(|c| c.metric.as_ref()).and_then(|m| constant(plan, m));
    let (measured, verdict) = match (confirm, held) {
        (Some(_), _) => (detail.to_owned(), CriterionVerdict::Assumed),
        (None, Some(value)) => {
            (format!("not measured: held at {} by the simulation", Measured(value)), CriterionVerdict::Assumed)
        }
        (None, None) => (detail.to_owned(), verdict.into()),
    };
    CriterionReport {
        id: criterion.to_owned(),
        description: declared.map(|c| c.description.clone()).unwrap_or_default(),
        target,
        measured,
        verdict,
    }
}

/// What a finished step's output adds to its phase's report: a comparison's findings (a
/// data-integrity check) and an effect assumed instead of produced.
fn step_finding(report: &mut PhaseReport, step: &str, output: &StepOutput) {
    if let Some(integrity) = &output.integrity {
        report.integrity.push(IntegrityReport {
            step: step.to_owned(),
            compared: format!("{} vs {}", integrity.source, integrity.target),
            documents: integrity.compared,
            discrepancies: integrity.discrepancies,
        });
    }
    if let Some(why) = &output.assumed {
        report.assumed.push(format!("`{step}`: {why}"));
    }
}

/// Simulated time from the first record to the last, in days.
fn simulated_days(records: &[Record]) -> f64 {
    match (records.first(), records.last()) {
        (Some(first), Some(last)) => last.at.duration_since(first.at).as_secs_f64() / 86_400.0,
        _ => 0.0,
    }
}

/// A simulation's verdict, in the report as `pass` or `fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunVerdict {
    /// Every phase passed and nothing acknowledged was lost.
    Pass,
    /// Anything else.
    Fail,
}

/// The report's verdict and how the run ended, in words (naming the criterion that failed
/// a phase); `lost` is what the loss audit found missing, if anything.
fn headline(outcome: &Outcome, phases: &[PhaseReport], lost: Option<&str>) -> (RunVerdict, String) {
    let failed = |words: String| (RunVerdict::Fail, words);
    let why = |phase: &str, reason: &str| failed_because(phases.iter().find(|p| p.id == phase), reason);
    match outcome {
        Outcome::Completed if lost.is_none() => (RunVerdict::Pass, "every phase passed".to_owned()),
        Outcome::Completed => failed(format!("every phase passed, but {}", lost.unwrap_or_default())),
        Outcome::RolledBack { phase, reason, .. } => {
            failed(format!("phase `{phase}` failed and was rolled back within its budget: {}", why(phase, reason)))
        }
        Outcome::RollbackFailed { phase, reason } => failed(format!("phase `{phase}`'s rollback failed: {reason}")),
        Outcome::Paused { reason, .. } => failed(format!("paused: {reason}")),
        Outcome::Interrupted { reason } => failed(format!("interrupted: {reason}")),
        Outcome::Aborted => failed("aborted".to_owned()),
        Outcome::Waiting { until } => failed(format!("asleep until {until}")),
    }
}

/// Why a phase failed: the engine's `reason`, unless it names a criterion whose
/// observation was only cut short by another's failure — then the criterion that failed.
fn failed_because(phase: Option<&PhaseReport>, reason: &str) -> String {
    let criteria = phase.map_or(&[][..], |p| p.criteria.as_slice());
    let cut_short = |c: &&CriterionReport| c.measured.contains(handoff_engine::CUT_SHORT);
    let names = |c: &&CriterionReport| reason.starts_with(&format!("criterion `{}`", c.id));
    let failed = criteria.iter().find(|c| c.verdict == CriterionVerdict::Fail && !cut_short(c));
    match (criteria.iter().find(names), failed) {
        (Some(named), Some(failed)) if cut_short(&named) => {
            format!("criterion `{}` ({}) failed: {}", failed.id, failed.description, failed.measured)
        }
        _ => reason.to_owned(),
    }
}

/// Whether phase `expected` failed and rolled back within its budget with nothing `lost`.
fn expectation(expected: &Id, phases: &[PhaseReport], lost: Option<&str>) -> Expectation {
    let phase = phases.iter().find(|p| p.id == expected.0);
    let (met, detail) = match (phase.map(|p| (p.status, &p.rollback)), lost) {
        (Some((PhaseStatus::RolledBack, Some(rollback))), None) if !rollback.breached => (true, String::new()),
        (Some((PhaseStatus::RolledBack, _)), Some(lost)) => (false, lost.to_owned()),
        (Some((PhaseStatus::RolledBack, _)), None) => (false, "the rollback overran its budget".to_owned()),
        (Some((status, _)), _) => (false, format!("phase `{expected}` is {}, not rolled back", status.as_str())),
        (None, _) => (false, format!("no phase `{expected}`")),
    };
    Expectation { phase: expected.0.clone(), met, detail }
}

impl Report {
    /// Adds the result of a drill run (a report whose expectation is its phase's rollback);
    /// a failed drill fails the report.
    pub fn add_drill(&mut self, drill: &Report) {
        let phase = drill.expectation.as_ref().map(|e| e.phase.clone()).unwrap_or_default();
        let met = drill.expectation.as_ref().is_some_and(|e| e.met);
        let detail = match &drill.expectation {
            Some(e) if !e.detail.is_empty() => e.detail.clone(),
            _ if met => String::new(),
            _ => drill.outcome.clone(),
        };
        self.drills.push(Drill {
            rollback: drill.phases.iter().find(|p| p.id == phase).and_then(|p| p.rollback.clone()),
            lost: match &drill.audit {
                AuditOutcome::Done(audit) => Some(audit.lost),
                AuditOutcome::Failed { .. } => None,
            },
            phase,
            met,
            detail,
        });
        if !met && self.verdict == RunVerdict::Pass {
            self.verdict = RunVerdict::Fail;
            self.outcome = format!("{}, but a rollback drill failed", self.outcome);
        }
    }

    /// The report as Markdown for a PR comment (the `report.md.tera` template).
    pub fn markdown(&self, templates: &handoff_render::Templates) -> Result<String, handoff_render::RenderError> {
        let mut view = serde_json::to_value(self).unwrap_or_default();
        view["marker"] = Value::String(MARKER.to_owned());
        // The Gantt shows plan dates (`dateFormat YYYY-MM-DD HH:mm`): day 0 is `starts_on`.
        let origin = self.starts_on.to_datetime(jiff::civil::Time::midnight());
        for (phase, shown) in self.phases.iter().zip(view["phases"].as_array_mut().into_iter().flatten()) {
            shown["passed_criteria"] =
                phase.criteria.iter().filter(|c| c.verdict == CriterionVerdict::Pass).count().into();
            shown["discrepancies"] = phase.integrity.iter().map(|i| i.discrepancies).sum::<u64>().into();
            if let (Some(start), Some(days)) = (phase.start_day, phase.days) {
                let minutes = (start * 1_440.0).round() as i64;
                let at = origin.checked_add(jiff::SignedDuration::from_mins(minutes)).unwrap_or(origin);
                shown["gantt"] = serde_json::json!({
                    "start": at.strftime("%Y-%m-%d %H:%M").to_string(),
                    "hours": (days * 24.0).round().max(1.0) as u64,
                });
            }
        }
        templates.render(handoff_render::REPORT, &view)
    }

    /// The report as JUnit XML: a test suite per phase (a test case per criterion and the
    /// rollback), one for the loss audit, one for the rollback drills.
    pub fn junit(&self) -> String {
        // The failures of the phase a scenario expects to fail, as it did, are its passes.
        let expected = self.expectation.as_ref().filter(|e| e.met).map(|e| e.phase.as_str());
        let mut suites: Vec<Suite> = self.phases.iter().map(|p| p.suite(expected == Some(p.id.as_str()))).collect();
        if let Some(expectation) = &self.expectation {
            let outcome = if expectation.met {
                CaseOutcome::Passed
            } else {
                CaseOutcome::Failed("scenario expectation not met".to_owned(), expectation.detail.clone())
            };
            let name = format!("`{}` fails and rolls back within budget with nothing lost", expectation.phase);
            suites.push(Suite { name: "scenario".to_owned(), cases: vec![Case::new(name, outcome)] });
        }
        let message = if self.audit.lost().is_some() { "acknowledged writes lost" } else { "writes misrouted" };
        let audit = match self.audit.loss() {
            Some(found) => CaseOutcome::Failed(message.to_owned(), found),
            None => CaseOutcome::Passed,
        };
        let case = Case::new("no-acknowledged-write-lost".to_owned(), audit);
        suites.push(Suite { name: "audit".to_owned(), cases: vec![case] });
        if !self.drills.is_empty() {
            let cases = self.drills.iter().map(Drill::case).collect();
            suites.push(Suite { name: "rollback-drills".to_owned(), cases });
        }
        junit::document(&format!("handoff simulate {}", self.plan), &suites)
    }
}

impl PhaseReport {
    /// Its JUnit test suite: a case per criterion, and the rollback. When the phase was
    /// `expected` to fail (and did, as a scenario expects), its failed or undecided
    /// criteria pass, saying how they ended.
    fn suite(&self, expected: bool) -> Suite {
        let mut cases: Vec<Case> = self.criteria.iter().map(CriterionReport::case).collect();
        for case in cases.iter_mut().filter(|_| expected) {
            if let CaseOutcome::Failed(message, details) | CaseOutcome::Error(message, details) = &case.outcome {
                case.output = Some(format!("{message}, in the phase the scenario expects to fail: {details}"));
                case.outcome = CaseOutcome::Passed;
            }
        }
        if let Some(rollback) = &self.rollback {
            let outcome = if rollback.failed() {
                CaseOutcome::Failed(
                    format!("rollback {}", if rollback.ok { "over budget" } else { "failed" }),
                    format!(
                        "{:.0} s against a budget of {:.0} s",
                        rollback.seconds,
                        rollback.budget_seconds.unwrap_or(0.0)
                    ),
                )
            } else {
                CaseOutcome::Passed
            };
            cases.push(Case::new("rollback".to_owned(), outcome));
        }
        Suite { name: self.id.clone(), cases }
    }
}

impl CriterionReport {
    /// Its JUnit test case: a provider error is an error (the criterion could not be
    /// decided), a person's check assumed by the simulation is skipped.
    fn case(&self) -> Case {
        let details = || format!("{}: {}", self.target, self.measured);
        let outcome = match self.verdict {
            CriterionVerdict::Pass => CaseOutcome::Passed,
            CriterionVerdict::Assumed => CaseOutcome::Skipped("assumed in simulation".to_owned()),
            CriterionVerdict::ProviderError => CaseOutcome::Error(self.verdict.as_str().to_owned(), details()),
            verdict => CaseOutcome::Failed(verdict.as_str().to_owned(), details()),
        };
        Case::new(self.id.clone(), outcome)
    }
}

impl Drill {
    /// Its JUnit test case.
    fn case(&self) -> Case {
        let outcome = if self.met {
            CaseOutcome::Passed
        } else {
            CaseOutcome::Failed("rollback drill failed".to_owned(), self.detail.clone())
        };
        Case::new(self.phase.clone(), outcome)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The report's Gantt chart as mermaid's own parser reads it (tests/validators, installed
    /// by `.ci/setup`): a line per task, `<phase> <start> <end>` in UTC.
    fn gantt_as_mermaid_reads_it(markdown: &str) -> String {
        use std::io::Write as _;
        let chart = markdown.split("```mermaid\n").find(|block| block.starts_with("gantt")).expect("a Gantt chart");
        let chart = chart.split("```").next().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/validators/mermaid-gantt.mjs");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .env("TZ", "UTC")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("node runs");
        child.stdin.take().unwrap().write_all(chart.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "mermaid rejects the Gantt (run `bash .ci/setup` first):\n{stderr}\n{chart}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// Checks JUnit text with the consumers' own schema (Jenkins' junit-10.xsd, beside the
    /// project in shared/validators) and libxml2's validator.
    fn assert_valid_junit(text: &str) {
        use std::io::Write as _;
        let xsd = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/validators/junit-10.xsd");
        let mut child = std::process::Command::new("xmllint")
            .args(["--noout", "--schema", xsd, "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("xmllint runs (`bash .ci/setup` installs libxml2-utils)");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the JUnit report does not validate against {xsd}:\n{stderr}\n{text}");
    }

    fn plan() -> Plan {
        let (_, document) = handoff_plan::source::load(include_bytes!("../../../plans/menu-service.yaml")).unwrap();
        serde_json::from_value(document.value).unwrap()
    }

    /// A log from events given as `(hours since the start, event)`.
    fn records(events: Vec<(i64, Value)>) -> Vec<Record> {
        let start: jiff::Timestamp = "2025-03-01T00:00:00Z".parse().unwrap();
        let records = events.into_iter().enumerate().map(|(i, (hours, mut event))| {
            event["seq"] = json!(i + 1);
            event["at"] = json!(start + jiff::SignedDuration::from_hours(hours));
            serde_json::from_value(event).unwrap()
        });
        records.collect()
    }

    fn audit(lost: u64) -> Audit {
        let examples = (0..lost).map(|n| format!("`item-{n:07}`: missing")).collect();
        Audit {
            store: "restaurant-db".into(),
            acknowledged_writes: 1200,
            documents: 300,
            lost,
            examples,
            misrouted: Vec::new(),
        }
    }

    /// A report of `events`, as a scenario expecting `expect` to roll back when given.
    fn report(events: Vec<(i64, Value)>, outcome: &Outcome, audit: Result<Audit, String>, expect: &str) -> Report {
        let plan = plan();
        let scenario = (!expect.is_empty()).then(|| Scenario {
            name: format!("fail `{expect}`"),
            description: None,
            faults: Vec::new(),
            expect_rollback: Some(Id(expect.to_owned())),
        });
        let canary = vec![
            CanaryPoint { weight: 0, reads: 900, p95_ms: 4.5, error_percent: 0.0 },
            CanaryPoint { weight: 25, reads: 300, p95_ms: 6.25, error_percent: 1.5 },
        ];
        let tally = |requests, failed| Tally { requests, failed };
        let totals =
            BTreeMap::from([("reads", tally(1500, 3)), ("writes", tally(1200, 0)), ("dual_writes", tally(400, 2))]);
        build(Inputs {
            plan: &plan,
            records: &records(events),
            outcome,
            scenario: scenario.as_ref(),
            audit,
            canary,
            faults: vec!["`kafka` is down".to_owned()],
            totals,
            timings: Timings { sandbox_seconds: 2.5, seed_seconds: 0.75, run_seconds: 30.0 },
            day: Duration::from_secs(2),
        })
    }

    /// Phase 1 passes with a full comparison, an assumed command and decisions (which carry
    /// no phase, so the report leaves them out); phase 2 fails its criteria in every way and
    /// rolls back.
    fn rolled_back_log(ok: bool, breached: bool) -> Vec<(i64, Value)> {
        let criterion = |phase: &str, criterion: &str, verdict: &str| {
            json!({"event": "criterion_evaluated", "phase": phase, "criterion": criterion, "verdict": verdict,
                   "samples": 10, "failed": 1, "detail": format!("last value of `{criterion}` | 1")})
        };
        let finished = |step: &str, output: Value| {
            json!({"event": "step_finished", "phase": "read-only-sync", "step": step, "role": "forward",
                   "output": output})
        };
        vec![
            (0, json!({"event": "phase_started", "phase": "read-only-sync"})),
            (3, finished("p1-deploy-menu-service", json!({"assumed": "`kubectl apply` (command not run)"}))),
            (
                5,
                finished(
                    "p1-verify-full",
                    json!({"integrity": {"source": "menu-db", "target": "restaurant-db", "compared": 5000, "discrepancies": 2}}),
                ),
            ),
            (6, json!({"event": "decided", "key": "read-only-sync/approval-1", "approved": true, "by": "simulation"})),
            (7, json!({"event": "decided", "key": "read-only-sync/approval-2", "approved": true, "by": "someone"})),
            (8, criterion("read-only-sync", "sync-complete", "pass")),
            (9, criterion("read-only-sync", "sync-lag", "inconclusive")),
            (30, json!({"event": "phase_passed", "phase": "read-only-sync"})),
            (31, json!({"event": "phase_started", "phase": "shadow-writes"})),
            (40, criterion("shadow-writes", "dual-write-success", "fail")),
            (41, criterion("shadow-writes", "data-consistency", "provider_error")),
            (41, criterion("shadow-writes", "no-such-criterion", "pass")),
            (
                42,
                json!({"event": "rollback_started", "phase": "shadow-writes", "reason": "criterion <failed> & \"x\""}),
            ),
            (
                43,
                json!({"event": "rollback_finished", "phase": "shadow-writes", "ok": ok, "seconds": 125.5,
                        "budget_seconds": 600.0, "breached": breached}),
            ),
        ]
    }

    /// Phase 1 as above, then phase 3 passes a confirmed criterion and phase 4 one on a
    /// metric the simulation holds constant.
    fn passing_log() -> Vec<(i64, Value)> {
        let mut log = rolled_back_log(true, false);
        log.truncate(8);
        log.push((31, json!({"event": "phase_started", "phase": "switch-reads"})));
        log.push((
            32,
            json!({"event": "criterion_evaluated", "phase": "switch-reads",
            "criterion": "zero-customer-complaints", "verdict": "pass", "samples": 1, "failed": 0,
            "detail": "confirmed by simulation"}),
        ));
        log.push((50, json!({"event": "phase_passed", "phase": "switch-reads"})));
        log.push((51, json!({"event": "phase_started", "phase": "cutover-writes"})));
        log.push((
            60,
            json!({"event": "criterion_evaluated", "phase": "cutover-writes",
            "criterion": "zero-booking-failures", "verdict": "pass", "samples": 168, "failed": 0,
            "detail": "168 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 0"}),
        ));
        log.push((61, json!({"event": "phase_passed", "phase": "cutover-writes"})));
        log
    }

    fn outputs(report: &Report) -> String {
        let templates = handoff_render::Templates::load(None).unwrap();
        let json = serde_json::to_string_pretty(report).unwrap();
        let junit = report.junit();
        assert_valid_junit(&junit);
        let markdown = report.markdown(&templates).unwrap();
        let gantt = gantt_as_mermaid_reads_it(&markdown);
        format!("{json}\n---\n{junit}\n---\n{markdown}\n---\n{gantt}")
    }

    #[test]
    fn a_rolled_back_phase_with_every_kind_of_finding() {
        let outcome =
            Outcome::RolledBack { phase: "shadow-writes".into(), reason: "criterion failed".into(), seconds: 1.0 };
        let report = report(rolled_back_log(true, false), &outcome, Ok(audit(0)), "shadow-writes");
        insta::assert_snapshot!("rolled_back", outputs(&report));
    }

    #[test]
    fn a_rollback_over_budget_with_writes_lost() {
        let outcome = Outcome::RollbackFailed { phase: "shadow-writes".into(), reason: "over budget".into() };
        let report = report(rolled_back_log(true, true), &outcome, Ok(audit(2)), "shadow-writes");
        insta::assert_snapshot!("over_budget", outputs(&report));
    }

    #[test]
    fn a_failed_rollback_expected_elsewhere() {
        let outcome = Outcome::RollbackFailed { phase: "shadow-writes".into(), reason: "a step failed".into() };
        let report = report(rolled_back_log(false, false), &outcome, Err("no server".into()), "switch-reads");
        insta::assert_snapshot!("rollback_failed", outputs(&report));
    }

    #[test]
    fn a_passing_run_and_its_drills() {
        let mut report = report(passing_log(), &Outcome::Completed, Ok(audit(0)), "");
        let drill = |lost: u64| {
            let outcome = Outcome::RolledBack { phase: "shadow-writes".into(), reason: "drill".into(), seconds: 1.0 };
            super::tests::report(rolled_back_log(true, false), &outcome, Ok(audit(lost)), "shadow-writes")
        };
        report.add_drill(&drill(0));
        report.add_drill(&drill(1));
        insta::assert_snapshot!("passed_with_drills", outputs(&report));
    }

    #[test]
    fn the_headline_names_the_criterion_that_failed_not_one_it_cut_short() {
        let mut log = rolled_back_log(true, false);
        let cut_short = format!("3 samples, 1 violating; {}: `dual-write-success` failed", handoff_engine::CUT_SHORT);
        log[9].1["detail"] = json!(cut_short.clone());
        log[9].1["criterion"] = json!("data-consistency");
        log[10].1["verdict"] = json!("fail");
        log[10].1["criterion"] = json!("dual-write-success");
        log[10].1["detail"] = json!("0 samples of 10 held");
        let reason = format!("criterion `data-consistency` (Stores agree) is Fail: {cut_short}");
        let outcome = Outcome::RolledBack { phase: "shadow-writes".into(), reason: reason.clone(), seconds: 1.0 };
        let named = report(log.clone(), &outcome, Ok(audit(0)), "");
        let expected = "criterion `dual-write-success` (Dual-write success rate > 99.9%) failed: 0 samples of 10 held";
        assert!(named.outcome.ends_with(expected), "{}", named.outcome);
        // A reason naming the criterion that failed is kept.
        let reason = "criterion `dual-write-success` (Dual writes succeed) is Fail: 0 of 10".to_owned();
        let outcome = Outcome::RolledBack { phase: "shadow-writes".into(), reason: reason.clone(), seconds: 1.0 };
        assert!(report(log, &outcome, Ok(audit(0)), "").outcome.ends_with(&reason));
    }

    #[test]
    fn every_phase_passed_but_writes_were_lost() {
        for outcome in [Outcome::Completed, Outcome::Aborted] {
            let report = report(passing_log(), &outcome, Ok(audit(1)), "read-only-sync");
            insta::assert_snapshot!(outputs(&report));
        }
    }

    /// Misrouted writes fail a run whose phases all passed, with nothing lost: the
    /// headline, the Markdown and the JUnit name them.
    #[test]
    fn every_phase_passed_but_writes_were_misrouted() {
        let via = crate::app::MisroutedVia {
            route: "reads".into(),
            weight: 10,
            phase: "switch-reads".into(),
            step: "p3-canary-reads".into(),
        };
        let misrouted = crate::app::Misrouted {
            service: "menu_service".into(),
            writes: 7,
            owners: vec!["restaurant_service".into()],
            via: Some(via),
        };
        let audit = Audit { misrouted: vec![misrouted], ..audit(0) };
        let report = report(passing_log(), &Outcome::Completed, Ok(audit), "");
        assert_eq!(report.verdict, RunVerdict::Fail);
        let expected = "7 writes were routed to a service that did not own writes: 7 to `menu_service` by route \
                        `reads` at weight 10% (applied by `switch-reads/p3-canary-reads`), while `restaurant_service` \
                        owned writes";
        assert_eq!(report.outcome, format!("every phase passed, but {expected}"));
        let markdown = report.markdown(&handoff_render::Templates::load(None).unwrap()).unwrap();
        assert!(markdown.contains("\n\n**Misrouted writes**: the VirtualService sent writes to a service that did not own writes then:\n\n- 7 to `menu_service` (owning writes: `restaurant_service`), by route `reads` at weight 10% applied by `switch-reads/p3-canary-reads`\n\n"), "{markdown}");
        assert!(report.junit().contains(&format!("<failure message=\"writes misrouted\">{expected}</failure>")));
    }
}
