//! The planner: a validated plan compiled into a deterministic execution graph with a
//! content digest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use handoff_executor::{DecisionKey, Executors};
use handoff_plan::model::{
    Alert, AlertAction, Comparator, Criterion, Denominator, FailureAction, Gate, Id, Metric, MetricSource,
    NoDataPolicy, Phase, Plan, Step, Uses,
};
use handoff_plan::units::Quantity;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Errors compiling a plan.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A step names an executor that is not registered.
    #[error(
        "phase `{phase}`, step `{step}`: no executor `{executor}` (built in, or `handoff-executor-{executor}` on PATH)"
    )]
    UnknownExecutor {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// Executor name.
        executor: String,
    },
    /// A step names an action its executor does not have.
    #[error("phase `{phase}`, step `{step}`: executor `{}` has no action `{}`", .uses.executor, .uses.action)]
    UnknownAction {
        /// Phase id.
        phase: String,
        /// Step id.
        step: String,
        /// `executor.action`.
        uses: Uses,
    },
}

/// The compiled plan.
#[derive(Debug, Clone)]
pub struct Graph {
    /// The plan.
    pub plan: Plan,
    /// `sha256:` of the canonical form; approvals and runs bind to it.
    pub digest: String,
    /// The canonical form (keys sorted), kept with every run.
    pub canonical: Value,
    /// Phases in execution order.
    pub phases: Vec<PhaseNode>,
    /// Position of each phase in `phases`, by id.
    index: BTreeMap<String, usize>,
}

/// A phase: stages of steps, then gates and criteria, with its rollback.
#[derive(Debug, Clone)]
pub struct PhaseNode {
    /// Phase id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Steps, grouped: a stage of several steps runs them concurrently.
    pub stages: Vec<Vec<StepNode>>,
    /// Soak gates' total.
    pub soak: Duration,
    /// Approval gates, in order.
    pub approvals: Vec<ApprovalGate>,
    /// Criteria, compiled.
    pub criteria: Vec<CriterionNode>,
    /// The criteria of its background analysis (indices into `criteria`).
    pub background: Vec<usize>,
    /// Alerts watched during the phase (the plan's that apply, then the phase's own).
    pub alerts: Vec<Alert>,
    /// Rollback steps.
    pub rollback: Vec<StepNode>,
    /// Rollback budget.
    pub budget: Option<Duration>,
    /// A point of no return when false.
    pub reversible: bool,
}

/// An approval gate: a person approves before the phase passes.
#[derive(Debug, Clone)]
pub struct ApprovalGate {
    /// Its decision key (`<phase>/approval-<n>`).
    pub key: DecisionKey,
    /// What the person is asked.
    pub prompt: String,
    /// The distinct approvers it needs, by group (none: one approval opens it).
    pub require: Vec<handoff_plan::model::Required>,
}

/// A criterion, compiled: what decides it, and what its failure means.
#[derive(Debug, Clone)]
pub struct CriterionNode {
    /// Criterion id.
    pub id: String,
    /// The criterion in words.
    pub description: String,
    /// What handoff does when it fails.
    pub on_failure: FailureAction,
    /// Measure only: its verdicts are recorded, never acted on.
    pub dry_run: bool,
    /// What decides it.
    pub check: CriterionCheck,
}

/// What decides a criterion.
#[derive(Debug, Clone)]
pub enum CriterionCheck {
    /// A metric sampled over a window.
    Metric(MetricCheck),
    /// A person confirms it.
    Confirm {
        /// The question asked.
        prompt: String,
    },
    /// Nothing can: it names neither a complete metric check nor a confirmation
    /// (validation refuses such plans; the runner judges it inconclusive).
    Undecidable,
}

/// A criterion on a metric: `metric <op> threshold` over a window.
#[derive(Debug, Clone)]
pub struct MetricCheck {
    /// The metric's id.
    pub metric: String,
    /// The comparison that must hold.
    pub op: Comparator,
    /// The threshold as written.
    pub threshold: Quantity,
    /// The threshold in the metric's unit.
    pub limit: f64,
    /// The evaluation window as written.
    pub window: Option<handoff_plan::units::Duration>,
    /// The sampling interval as written.
    pub interval: Option<handoff_plan::units::Duration>,
    /// Fewer samples than this make it inconclusive.
    pub min_samples: Option<u32>,
    /// Violating samples tolerated.
    pub failure_limit: u32,
    /// What a window without data means.
    pub no_data: NoDataPolicy,
    /// The metric is a Prometheus query (whose window can be read as a range at its end).
    pub prometheus: bool,
    /// For a rate: the events it is measured over, and the confidence a verdict needs.
    pub denominator: Option<Denominator>,
}

impl MetricCheck {
    /// The evaluation window (zero: one sample at the end of the observation).
    pub fn window(&self) -> Duration {
        self.window.as_ref().map_or(Duration::ZERO, handoff_plan::units::Duration::get)
    }

    /// Time between samples: as written, else a tenth of the window and at least 10 s.
    pub fn interval(&self) -> Duration {
        self.interval.as_ref().map_or_else(|| (self.window() / 10).max(Duration::from_secs(10)), |i| i.get())
    }

    /// For a rate with a denominator: the fewest events in the window that resolve the
    /// threshold — those among which a rate at the threshold shows at least one event (an
    /// error, for `<`; a miss, for `>`) with the denominator's confidence.
    pub fn events_needed(&self) -> Option<u64> {
        let denominator = self.denominator.as_ref()?;
        let rate = (self.limit / 100.0).clamp(0.0, 1.0);
        let rate = if matches!(self.op, Comparator::Gt | Comparator::Ge) { 1.0 - rate } else { rate };
        let confidence = (denominator.confidence / 100.0).clamp(0.0, 0.9999);
        if rate <= 0.0 {
            return Some(u64::MAX);
        }
        if rate >= 1.0 {
            return Some(1);
        }
        Some(((1.0 - confidence).ln() / (1.0 - rate).ln()).ceil().max(1.0) as u64)
    }

    /// Whether a measured value satisfies the criterion.
    pub fn holds(&self, value: f64) -> bool {
        self.op.holds(value, self.limit)
    }
}

impl CriterionNode {
    /// Compiles a criterion against the plan's metrics.
    pub fn compile(criterion: &Criterion, metrics: &BTreeMap<Id, Metric>) -> CriterionNode {
        let check = match (&criterion.confirm, &criterion.metric, criterion.op, &criterion.threshold) {
            (Some(confirm), ..) => CriterionCheck::Confirm { prompt: confirm.prompt.clone() },
            (None, Some(metric_id), Some(op), Some(threshold)) => {
                let metric = metrics.get(metric_id.as_str());
                CriterionCheck::Metric(MetricCheck {
                    metric: metric_id.to_string(),
                    op,
                    threshold: threshold.clone(),
                    limit: crate::observe::threshold(threshold, metric),
                    window: criterion.window.clone(),
                    interval: criterion.interval.clone(),
                    min_samples: criterion.min_samples,
                    failure_limit: criterion.failure_limit,
                    no_data: criterion.no_data,
                    prometheus: metric.is_some_and(|m| matches!(m.source, MetricSource::Prometheus { .. })),
                    denominator: criterion.denominator.clone(),
                })
            }
            _ => CriterionCheck::Undecidable,
        };
        CriterionNode {
            id: criterion.id.to_string(),
            description: criterion.description.clone(),
            on_failure: criterion.on_failure,
            dry_run: criterion.dry_run,
            check,
        }
    }

    /// Its decision key in `phase`.
    pub fn key(&self, phase: &str) -> DecisionKey {
        DecisionKey::criterion(phase, &self.id)
    }
}

/// A step, resolved against its executor.
#[derive(Debug, Clone)]
pub struct StepNode {
    /// Step id.
    pub id: String,
    /// What it runs.
    pub uses: Uses,
    /// Parameters.
    pub with: Value,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Attempts in all.
    pub attempts: u32,
    /// Wait before the second attempt (doubling after).
    pub backoff: Duration,
    /// Running it again is safe (declared by the action, overridable per step).
    pub idempotent: bool,
    /// It continues from checkpoints.
    pub resumable: bool,
    /// It keeps working in the background after it finished.
    pub background: bool,
    /// The criteria of its step analysis (indices into its phase's criteria).
    pub analysis: Vec<usize>,
    /// What it would do (for dry runs).
    pub describe: String,
    /// `sha256:` of the step's canonical form (resume refuses when it changed).
    pub digest: String,
}

/// Sorts object keys recursively, so equal plans serialize equally.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), canonical(&map[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// `sha256:<hex>` of a value's canonical JSON.
pub fn digest(value: &Value) -> String {
    let bytes = serde_json::to_vec(&canonical(value)).unwrap_or_default();
    let hash = Sha256::digest(&bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The phases of a plan's canonical JSON ([`Graph::canonical`], or a run's snapshot), in
/// order.
pub fn phases_of(plan: &Value) -> Vec<&Value> {
    plan["phases"].as_array().map(|phases| phases.iter().collect()).unwrap_or_default()
}

/// What `resume` compares of a phase of a plan's canonical JSON: the phase as written but
/// for names — its steps, their order and groups, gates, criteria, alerts, rollback steps
/// and budget, reversibility — plus the plan's alerts that apply to it (`plan_alerts`) and
/// the definitions of the metrics its criteria and alerts read (`plan_metrics`).
pub fn phase_structure(plan: &Value, phase: &Value) -> Value {
    let mut structure = phase.clone();
    let unname = |value: &mut Value| drop(value.as_object_mut().map(|o| o.remove("name")));
    unname(&mut structure);
    for steps in ["/steps", "/rollback/steps"] {
        if let Some(Value::Array(steps)) = structure.pointer_mut(steps) {
            steps.iter_mut().for_each(unname);
        }
    }
    let applies = |alert: &&Value| alert["phases"].as_array().is_none_or(|p| p.is_empty() || p.contains(&phase["id"]));
    let alerts: Vec<Value> = plan["alerts"].as_array().into_iter().flatten().filter(applies).cloned().collect();
    let read = phase["criteria"].as_array().into_iter().chain(phase["alerts"].as_array()).flatten().chain(&alerts);
    let metrics: serde_json::Map<String, Value> = read
        .filter_map(|item| item["metric"].as_str())
        .map(|id| (id.to_owned(), plan["metrics"][id].clone()))
        .collect();
    if let Some(object) = structure.as_object_mut() {
        object.insert("plan_alerts".to_owned(), Value::Array(alerts));
        object.insert("plan_metrics".to_owned(), Value::Object(metrics));
    }
    structure
}

/// What identifies a step's work: everything but its name.
fn step_identity(step: &Step) -> Value {
    let mut value = serde_json::to_value(step).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("name");
    }
    value
}

impl Graph {
    /// Compiles a plan (which passed validation) against the executors that will run it.
    pub fn compile(plan: &Plan, executors: &dyn Executors) -> Result<Graph, Vec<GraphError>> {
        let mut errors = Vec::new();
        let phases: Vec<PhaseNode> =
            plan.phases.iter().map(|phase| phase_node(plan, phase, executors, &mut errors)).collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let value = serde_json::to_value(plan).unwrap_or_default();
        let index = phases.iter().enumerate().map(|(at, phase): (usize, &PhaseNode)| (phase.id.clone(), at)).collect();
        Ok(Graph { plan: plan.clone(), digest: digest(&value), canonical: canonical(&value), phases, index })
    }

    /// Every step with its phase id, rollback steps included.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &StepNode)> {
        self.phases.iter().flat_map(|p| p.stages.iter().flatten().chain(&p.rollback).map(move |s| (p.id.as_str(), s)))
    }

    /// Every key a person can decide on (`handoff approve`): approval gates, steps,
    /// criteria, a phase's alerts, points of no return.
    pub fn decision_keys(&self) -> Vec<DecisionKey> {
        let mut keys = Vec::new();
        for phase in &self.phases {
            let id = phase.id.as_str();
            keys.extend(phase.approvals.iter().map(|gate| gate.key.clone()));
            keys.extend(phase.stages.iter().flatten().chain(&phase.rollback).map(|s| DecisionKey::step(id, &s.id)));
            keys.extend(phase.criteria.iter().map(|c| c.key(id)));
            if !phase.alerts.is_empty() {
                keys.push(DecisionKey::alerts(id));
            }
            if !phase.reversible {
                keys.push(DecisionKey::irreversible(id));
            }
        }
        keys
    }

    /// Whether a person may decide under `key`: one of [`Graph::decision_keys`], or the
    /// analysis of a hold of a step with step analysis (`<phase>/<step>@<hold>`, the hold
    /// named by its executor, e.g. a weight).
    pub fn asks(&self, key: &DecisionKey) -> bool {
        let text = key.to_string();
        let hold = text.split_once('/').and_then(|(phase, name)| Some((phase, name.split_once('@')?.0)));
        let analysed = hold.and_then(|(phase, step)| self.step(phase, step)).is_some_and(|s| !s.analysis.is_empty());
        analysed || self.decision_keys().contains(key)
    }

    /// The phase with this id.
    pub fn phase(&self, id: &str) -> Option<&PhaseNode> {
        self.phases.get(*self.index.get(id)?)
    }

    /// The step with this id in a phase (forward or rollback).
    pub fn step(&self, phase: &str, step: &str) -> Option<&StepNode> {
        let phase = self.phase(phase)?;
        phase.stages.iter().flatten().chain(&phase.rollback).find(|s| s.id == step)
    }

    /// The graph as text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "plan {} ({})", self.plan.metadata.name, self.digest);
        for (index, phase) in self.phases.iter().enumerate() {
            let kind = if phase.reversible { "reversible" } else { "IRREVERSIBLE: needs confirmation" };
            let _ = writeln!(out, "\nphase {} `{}`: {} [{kind}]", index + 1, phase.id, phase.name);
            for (number, stage) in phase.stages.iter().enumerate() {
                let parallel = if stage.len() > 1 { " (in parallel)" } else { "" };
                for step in stage {
                    let line =
                        format!("  {:>2}. {:<28} {:<24} {}{parallel}", number + 1, step.id, step.uses, flags(step));
                    let _ = writeln!(out, "{}", line.trim_end());
                }
            }
            if !phase.soak.is_zero() {
                let _ = writeln!(
                    out,
                    "  gate: soak {} with criteria and alerts watched",
                    humantime::format_duration(phase.soak)
                );
            }
            for gate in &phase.approvals {
                let _ = writeln!(out, "  gate: approval `{}`: {}", gate.key, gate.prompt);
            }
            for criterion in &phase.criteria {
                let _ =
                    writeln!(out, "  criterion `{}`: {}", criterion.id, criterion_text(criterion, phase.reversible));
            }
            for alert in &phase.alerts {
                let _ = writeln!(out, "  alert `{}`: {}", alert.name, alert_text(alert, phase.reversible));
            }
            let restore = self.plan.phases.get(index).and_then(|p| p.restore.as_deref());
            failure_text(phase, restore, &mut out);
        }
        out
    }

    /// The graph as a mermaid flowchart.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let node = |phase: &str, id: &str| format!("{}__{}", phase.replace('-', "_"), id.replace('-', "_"));
        let mut previous_end: Option<String> = None;
        for phase in &self.phases {
            let start = node(&phase.id, "start");
            let _ = writeln!(out, "  subgraph {}[\"{}\"]", phase.id.replace('-', "_"), phase.name.replace('"', "'"));
            let _ = writeln!(out, "    {start}([\"start {}\"])", phase.id);
            let mut tails = vec![start.clone()];
            for stage in &phase.stages {
                let heads: Vec<String> = stage.iter().map(|s| node(&phase.id, &s.id)).collect();
                for (step, id) in stage.iter().zip(&heads) {
                    let _ = writeln!(out, "    {id}[\"{}<br/>{}\"]", step.id, step.uses);
                    for tail in &tails {
                        let _ = writeln!(out, "    {tail} --> {id}");
                    }
                }
                tails = heads;
            }
            let check = node(&phase.id, "check");
            let _ = writeln!(out, "    {check}{{\"gates and {} criteria\"}}", phase.criteria.len());
            for tail in &tails {
                let _ = writeln!(out, "    {tail} --> {check}");
            }
            if !phase.rollback.is_empty() || phase.budget.is_some() {
                let rollback = node(&phase.id, "rollback");
                let budget =
                    phase.budget.map(|b| format!(" within {}", humantime::format_duration(b))).unwrap_or_default();
                let _ = writeln!(out, "    {rollback}[/\"rollback{budget}\"/]");
                let _ = writeln!(out, "    {check} -. fail .-> {rollback}");
            }
            let _ = writeln!(out, "  end");
            if let Some(end) = previous_end {
                let _ = writeln!(out, "  {end} -- pass --> {start}");
            }
            previous_end = Some(check);
        }
        out
    }
}

/// One phase, compiled; the errors of its steps go to `errors`.
fn phase_node(plan: &Plan, phase: &Phase, executors: &dyn Executors, errors: &mut Vec<GraphError>) -> PhaseNode {
    let mut node = |step: &Step| step_node(phase, step, executors, errors);
    let stages = stages(phase.steps.iter().filter_map(|step| Some((step, node(step)?))));
    let rollback = phase.rollback.iter().flat_map(|r| r.steps.iter()).filter_map(&mut node).collect();
    let (soak, approvals) = gates(phase);
    let alerts = plan
        .alerts
        .iter()
        .filter(|a| a.phases.is_empty() || a.phases.contains(&phase.id))
        .chain(&phase.alerts)
        .cloned()
        .collect();
    PhaseNode {
        id: phase.id.to_string(),
        name: phase.name.clone(),
        stages,
        soak,
        approvals,
        criteria: phase.criteria.iter().map(|c| CriterionNode::compile(c, &plan.metrics)).collect(),
        background: criteria_named(phase, &phase.background_analysis),
        alerts,
        rollback,
        budget: phase.rollback.as_ref().and_then(|r| r.max_duration.as_ref()).map(|d| d.get()),
        reversible: phase.reversible,
    }
}

/// The indices of the criteria of `phase` that `ids` name (validation refuses other names).
fn criteria_named(phase: &Phase, ids: &[Id]) -> Vec<usize> {
    ids.iter().filter_map(|id| phase.criteria.iter().position(|c| c.id == *id)).collect()
}

/// One step resolved against its executor and action; an unknown one is an error (and no
/// node).
fn step_node(phase: &Phase, step: &Step, executors: &dyn Executors, errors: &mut Vec<GraphError>) -> Option<StepNode> {
    let (phase_id, step_id) = (phase.id.to_string(), step.id.to_string());
    let Some(executor) = executors.find(&step.uses.executor) else {
        let executor = step.uses.executor.clone();
        errors.push(GraphError::UnknownExecutor { phase: phase_id, step: step_id, executor });
        return None;
    };
    let Some(action) = executor.action(&step.uses.action) else {
        errors.push(GraphError::UnknownAction { phase: phase_id, step: step_id, uses: step.uses.clone() });
        return None;
    };
    let declared = action.declaration();
    let with = Value::Object(step.with.clone());
    let describe = action.describe(&with);
    Some(StepNode {
        id: step_id,
        uses: step.uses.clone(),
        timeout: step.timeout.as_ref().map(|t| t.get()),
        attempts: step.retry.as_ref().map_or(1, |r| r.attempts.max(1)),
        backoff: step.retry.as_ref().map_or(Duration::ZERO, |r| r.backoff.get()),
        idempotent: step.idempotent.unwrap_or(declared.idempotent),
        resumable: declared.resumable,
        background: declared.background,
        analysis: criteria_named(phase, &step.analysis),
        describe,
        digest: digest(&step_identity(step)),
        with,
    })
}

/// Steps grouped into stages: consecutive steps of one `group` share a stage.
fn stages<'p>(steps: impl Iterator<Item = (&'p Step, StepNode)>) -> Vec<Vec<StepNode>> {
    let mut stages: Vec<Vec<StepNode>> = Vec::new();
    let mut last_group = None;
    for (step, built) in steps {
        match (&step.group, last_group, stages.last_mut()) {
            (Some(group), Some(last), Some(stage)) if group == last => stage.push(built),
            _ => stages.push(vec![built]),
        }
        last_group = step.group.as_ref();
    }
    stages
}

/// A phase's soak gates' total and its approval gates.
fn gates(phase: &Phase) -> (Duration, Vec<ApprovalGate>) {
    let mut soak = Duration::ZERO;
    let mut approvals = Vec::new();
    for gate in &phase.gates {
        match gate {
            Gate::Soak(duration) => soak += duration.get(),
            Gate::Approval { prompt, require, .. } => approvals.push(ApprovalGate {
                key: DecisionKey::approval(phase.id.as_str(), approvals.len() + 1),
                prompt: prompt.clone(),
                require: require.clone(),
            }),
        }
    }
    (soak, approvals)
}

fn flags(step: &StepNode) -> String {
    let mut flags = Vec::new();
    if let Some(timeout) = step.timeout {
        flags.push(format!("timeout {}", humantime::format_duration(timeout)));
    }
    if step.attempts > 1 {
        flags.push(format!("{} attempts", step.attempts));
    }
    if !step.idempotent {
        flags.push("not idempotent".to_owned());
    }
    if step.background {
        flags.push("runs in the background".to_owned());
    } else if step.resumable {
        flags.push("resumable".to_owned());
    }
    flags.join(", ")
}

/// What a failure that asks for a rollback does in a phase: a point of no return has no
/// rollback, so the runner undoes the completed steps it can and ends the run there.
fn rollback_text(reversible: bool) -> &'static str {
    if reversible {
        "rollback"
    } else {
        "stop the run after compensating completed steps (no rollback: a point of no return)"
    }
}

/// An alert's condition, hold time (`for:`, or "at once" without one), severity and what it
/// does in its phase, in one line.
fn alert_text(alert: &Alert, reversible: bool) -> String {
    let held = alert.for_.as_ref().map_or(" at once".to_owned(), |d| format!(" for {d}"));
    let action = match alert.action {
        AlertAction::Rollback => rollback_text(reversible).to_owned(),
        action => format!("{action:?}").to_lowercase(),
    };
    let condition = format!("{} {} {}", alert.metric, alert.op.symbol(), alert.threshold);
    format!("{condition}{held} ({}) → {action}", format!("{:?}", alert.severity).to_lowercase())
}

/// What a phase's failure sets off: compensation and the rollback steps within their
/// budget, or, for a point of no return, compensation only and how to recover.
fn failure_text(phase: &PhaseNode, restore: Option<&str>, out: &mut String) {
    if !phase.reversible {
        let _ =
            writeln!(out, "  on failure: compensate completed steps in reverse; no rollback (a point of no return)");
        let _ = writeln!(out, "  to recover: {}", restore.unwrap_or("nothing written (`restore:`)"));
        return;
    }
    let budget = phase.budget.map_or("no budget".to_owned(), |b| format!("budget {}", humantime::format_duration(b)));
    let _ = writeln!(out, "  on failure: compensate completed steps in reverse, then rollback ({budget}):");
    for step in &phase.rollback {
        let _ = writeln!(out, "      {:<28} {}", step.id, step.uses);
    }
}

/// A criterion in one line, with what its failure does in a phase that is `reversible` or not.
pub fn criterion_text(criterion: &CriterionNode, reversible: bool) -> String {
    let check = match &criterion.check {
        CriterionCheck::Confirm { prompt } => return format!("person confirms: {prompt}"),
        CriterionCheck::Undecidable => return criterion.description.clone(),
        CriterionCheck::Metric(check) => check,
    };
    let mut text = format!("{} {} {}", check.metric, check.op.symbol(), check.threshold);
    if let Some(window) = &check.window {
        let _ = write!(text, " over {window}");
    }
    if let Some(interval) = &check.interval {
        let _ = write!(text, " every {interval}");
    }
    let _ = write!(text, ", failure limit {}, no data: {:?}", check.failure_limit, check.no_data);
    let on_failure = match criterion.on_failure {
        FailureAction::Rollback => rollback_text(reversible).to_owned(),
        action => format!("{action:?}").to_lowercase(),
    };
    format!("{}, on failure: {on_failure}", text.to_lowercase())
}
