//! The planner: a validated plan compiled into a deterministic execution graph with a
//! content digest.

use std::fmt::Write as _;
use std::time::Duration;

use handoff_executor::Executors;
use handoff_plan::model::{Alert, Criterion, Gate, Plan, Step, Uses};
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
    /// Approval gates: (key, prompt).
    pub approvals: Vec<(String, String)>,
    /// Criteria.
    pub criteria: Vec<Criterion>,
    /// Alerts watched during the phase (the plan's that apply, then the phase's own).
    pub alerts: Vec<Alert>,
    /// Rollback steps.
    pub rollback: Vec<StepNode>,
    /// Rollback budget.
    pub budget: Option<Duration>,
    /// A point of no return when false.
    pub reversible: bool,
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
        let mut phases = Vec::new();
        for phase in &plan.phases {
            let mut node = |step: &Step| -> Option<StepNode> {
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
                    describe,
                    digest: digest(&step_identity(step)),
                    with,
                })
            };
            let mut stages: Vec<Vec<StepNode>> = Vec::new();
            let mut last_group = None;
            for step in &phase.steps {
                let Some(built) = node(step) else { continue };
                match (&step.group, last_group.as_ref(), stages.last_mut()) {
                    (Some(group), Some(last), Some(stage)) if group == last => stage.push(built),
                    _ => stages.push(vec![built]),
                }
                last_group = step.group.clone();
            }
            let rollback: Vec<StepNode> =
                phase.rollback.iter().flat_map(|r| r.steps.iter()).filter_map(&mut node).collect();
            let mut soak = Duration::ZERO;
            let mut approvals = Vec::new();
            for gate in &phase.gates {
                match gate {
                    Gate::Soak(duration) => soak += duration.get(),
                    Gate::Approval { prompt, .. } => {
                        approvals.push((format!("{}/approval-{}", phase.id, approvals.len() + 1), prompt.clone()));
                    }
                }
            }
            let alerts = plan
                .alerts
                .iter()
                .filter(|a| a.phases.is_empty() || a.phases.contains(&phase.id))
                .chain(&phase.alerts)
                .cloned()
                .collect();
            phases.push(PhaseNode {
                id: phase.id.to_string(),
                name: phase.name.clone(),
                stages,
                soak,
                approvals,
                criteria: phase.criteria.clone(),
                alerts,
                rollback,
                budget: phase.rollback.as_ref().and_then(|r| r.max_duration.as_ref()).map(|d| d.get()),
                reversible: phase.reversible,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let value = serde_json::to_value(plan).unwrap_or_default();
        Ok(Graph { plan: plan.clone(), digest: digest(&value), canonical: canonical(&value), phases })
    }

    /// Every step with its phase id, rollback steps included.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &StepNode)> {
        self.phases.iter().flat_map(|p| p.stages.iter().flatten().chain(&p.rollback).map(move |s| (p.id.as_str(), s)))
    }

    /// Every key a person can decide on (`handoff approve`): approval gates, steps,
    /// criteria, a phase's alerts, points of no return.
    pub fn decision_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for phase in &self.phases {
            keys.extend(phase.approvals.iter().map(|(key, _)| key.clone()));
            keys.extend(phase.stages.iter().flatten().chain(&phase.rollback).map(|s| format!("{}/{}", phase.id, s.id)));
            keys.extend(phase.criteria.iter().map(|c| format!("{}/{}", phase.id, c.id)));
            if !phase.alerts.is_empty() {
                keys.push(format!("{}/alerts", phase.id));
            }
            if !phase.reversible {
                keys.push(format!("{}/irreversible", phase.id));
            }
        }
        keys
    }

    /// The step with this id in a phase (forward or rollback).
    pub fn step(&self, phase: &str, step: &str) -> Option<&StepNode> {
        let phase = self.phases.iter().find(|p| p.id == phase)?;
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
            for (key, prompt) in &phase.approvals {
                let _ = writeln!(out, "  gate: approval `{key}`: {prompt}");
            }
            for criterion in &phase.criteria {
                let _ = writeln!(out, "  criterion `{}`: {}", criterion.id, criterion_text(criterion));
            }
            for alert in &phase.alerts {
                let _ = writeln!(
                    out,
                    "  alert `{}`: {} {} {} → {:?}",
                    alert.name,
                    alert.metric,
                    alert.op.symbol(),
                    alert.threshold,
                    alert.action
                );
            }
            let budget =
                phase.budget.map_or("no budget".to_owned(), |b| format!("budget {}", humantime::format_duration(b)));
            let _ = writeln!(out, "  on failure: compensate completed steps in reverse, then rollback ({budget}):");
            for step in &phase.rollback {
                let _ = writeln!(out, "      {:<28} {}", step.id, step.uses);
            }
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

/// A criterion in one line.
pub fn criterion_text(criterion: &Criterion) -> String {
    if let Some(confirm) = &criterion.confirm {
        return format!("person confirms: {}", confirm.prompt);
    }
    let (Some(metric), Some(op), Some(threshold)) = (&criterion.metric, criterion.op, &criterion.threshold) else {
        return criterion.description.clone();
    };
    let mut text = format!("{metric} {} {threshold}", op.symbol());
    if let Some(window) = &criterion.window {
        let _ = write!(text, " over {window}");
    }
    if let Some(interval) = &criterion.interval {
        let _ = write!(text, " every {interval}");
    }
    let _ = write!(
        text,
        ", failure limit {}, no data: {:?}, on failure: {:?}",
        criterion.failure_limit, criterion.no_data, criterion.on_failure
    );
    text.to_lowercase()
}
