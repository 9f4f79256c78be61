//! Renders a plan's artifacts with tera: the Istio VirtualService of every traffic
//! weight, a runbook in Markdown, Prometheus alerting rules and a mermaid Gantt chart.
//!
//! The templates live in the repository's `templates/` directory and are built into the
//! binary; a directory of the same file names overrides any of them. A template error is
//! reported with the template's file, line and column.
//!
//! Architecture invariant: this crate knows no executor. What a step does (its one-line
//! summary) and which VirtualServices a plan applies are handed in by the caller (the
//! CLI asks the registry and the `traffic` executor).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use handoff_plan::model::{Alert, Criterion, FailureAction, Gate, MetricSource, NoDataPolicy, Phase, Plan, Step};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The built-in templates: file name and text.
pub const BUILTIN: &[(&str, &str)] = &[
    (VIRTUAL_SERVICE, include_str!("../../../templates/virtualservice.yaml.tera")),
    (RUNBOOK, include_str!("../../../templates/runbook.md.tera")),
    (ALERT_RULES, include_str!("../../../templates/alert-rules.yaml.tera")),
    (GANTT, include_str!("../../../templates/timeline.md.tera")),
    (REPORT, include_str!("../../../templates/report.md.tera")),
];

/// Template of an Istio VirtualService.
pub const VIRTUAL_SERVICE: &str = "virtualservice.yaml.tera";
/// Template of the runbook.
pub const RUNBOOK: &str = "runbook.md.tera";
/// Template of the Prometheus alerting rules.
pub const ALERT_RULES: &str = "alert-rules.yaml.tera";
/// Template of the Gantt chart.
pub const GANTT: &str = "timeline.md.tera";
/// Template of the simulation report (`handoff simulate`).
pub const REPORT: &str = "report.md.tera";

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template does not parse or does not render; `file:line:column` points into it.
    #[error("{file}:{line}:{column}: {message}")]
    Template {
        /// The template's file (built-in ones as `templates/<name>`).
        file: String,
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A template failed without a position (a missing include, a loop of includes).
    #[error("{file}: {message}")]
    Other {
        /// The template's file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The override directory cannot be read, or holds a file that is not a template.
    #[error("{path}: {message}")]
    Overrides {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Loaded templates, ready to render.
pub struct Templates {
    tera: tera::Tera,
    /// Template name → the file it came from, for messages.
    files: BTreeMap<&'static str, String>,
}

impl Templates {
    /// The built-in templates, each replaced by a file of the same name in `overrides`
    /// when there is one.
    pub fn load(overrides: Option<&Path>) -> Result<Templates, RenderError> {
        let mut files = BTreeMap::new();
        let mut texts = Vec::new();
        for (name, text) in BUILTIN {
            files.insert(*name, format!("templates/{name}"));
            texts.push((*name, (*text).to_owned()));
        }
        if let Some(dir) = overrides {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| RenderError::Overrides { path: dir.to_owned(), message: format!("cannot read: {e}") })?;
            for entry in entries {
                let path = entry
                    .map_err(|e| RenderError::Overrides { path: dir.to_owned(), message: format!("cannot read: {e}") })?
                    .path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let Some(slot) = texts.iter_mut().find(|(builtin, _)| *builtin == name) else {
                    let known: Vec<_> = BUILTIN.iter().map(|(n, _)| *n).collect();
                    return Err(RenderError::Overrides {
                        path,
                        message: format!("not a template handoff renders; name the file one of: {}", known.join(", ")),
                    });
                };
                slot.1 = std::fs::read_to_string(&path)
                    .map_err(|e| RenderError::Overrides { path: path.clone(), message: format!("cannot read: {e}") })?;
                files.insert(slot.0, path.display().to_string());
            }
        }
        let mut tera = tera::Tera::default();
        tera.autoescape_on(Vec::<&str>::new());
        tera.register_filter("json", |value: tera::Value, _: tera::Kwargs, _: &tera::State| {
            serde_json::to_string(&value).unwrap_or_default()
        });
        tera.register_filter("mermaid", |text: &str, _: tera::Kwargs, _: &tera::State| mermaid_text(text));
        for (name, text) in &texts {
            tera.add_raw_template(name, text).map_err(|e| locate(&files, e))?;
        }
        Ok(Templates { tera, files })
    }

    /// Renders template `name` with `context`; control characters in the result (line breaks
    /// aside) are escaped.
    pub fn render(&self, name: &str, context: &impl Serialize) -> Result<String, RenderError> {
        let context = tera::Context::from_serialize(context).map_err(|e| locate(&self.files, e))?;
        // Plan text may hold control characters: none reaches a document (or the terminal
        // that shows it) as itself.
        let text = self.tera.render(name, &context).map_err(|e| locate(&self.files, e))?;
        Ok(handoff_plan::escape::escape_lines(&text))
    }

    /// Renders one VirtualService.
    pub fn virtual_service(&self, service: &VirtualService) -> Result<String, RenderError> {
        self.render(VIRTUAL_SERVICE, service)
    }

    /// Renders every artifact of a plan for `environment` (the alert rules select its
    /// series): `summaries` gives each step's one-line summary, `services` the
    /// VirtualServices its traffic steps apply (with their file names).
    pub fn plan(
        &self,
        plan: &Plan,
        environment: &str,
        summaries: &dyn Fn(&Step) -> String,
        services: &[(String, VirtualService)],
    ) -> Result<Vec<Artifact>, RenderError> {
        let view = PlanView::new(plan, environment, summaries, services);
        let mut out = vec![
            Artifact { path: "runbook.md".into(), text: self.render(RUNBOOK, &view)? },
            Artifact { path: "alert-rules.yaml".into(), text: self.render(ALERT_RULES, &view)? },
            Artifact { path: "timeline.md".into(), text: self.render(GANTT, &view)? },
        ];
        for (file, service) in services {
            out.push(Artifact { path: Path::new("virtualservices").join(file), text: self.virtual_service(service)? });
        }
        Ok(out)
    }
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Path relative to the output directory.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// What the VirtualService template renders: one object per host and namespace, holding
/// the routes of every step that routes that host (see [`HttpRoute`]). The simulator's
/// router takes the same value as JSON and routes every request of the application model by
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    /// Object name.
    pub name: String,
    /// Namespace, when known.
    pub namespace: Option<String>,
    /// Hosts the routing applies to.
    pub hosts: Vec<String>,
    /// HTTP routes in the order Istio tries them (the first that matches wins).
    pub http: Vec<HttpRoute>,
    /// Plan, phase and step that applied it last (for labels and the header comment).
    pub origin: Origin,
}

/// One HTTP route of a VirtualService, in Istio's own shape (it reads back from a live
/// object as it was written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Route name; handoff's routes are named by direction (`reads`, `reads-by-header`,
    /// `writes`, `writes-by-header`) and `rest`.
    pub name: String,
    /// Requests the route takes: any of these (all requests when empty).
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations (weights add up to 100).
    pub route: Vec<RouteDestination>,
}

/// The name of the route that moves reads (`traffic.shift`'s `direction: reads`).
pub const READS: &str = "reads";
/// The name of the route that moves writes (`traffic.shift`'s `direction: writes`).
pub const WRITES: &str = "writes";
/// The directions handoff's routes are named by.
pub const DIRECTIONS: [&str; 2] = [READS, WRITES];

impl HttpRoute {
    /// The direction whose requests this route moves (`reads` or `writes`, also for its
    /// `…-by-header` route), or `None` for `rest` and routes handoff did not write.
    pub fn direction(&self) -> Option<&'static str> {
        let base = self.name.strip_suffix("-by-header").unwrap_or(&self.name);
        DIRECTIONS.into_iter().find(|d| *d == base)
    }
}

/// One request match: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpMatch {
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Headers, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Istio's string match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    /// Exactly this string.
    Exact(String),
    /// Starts with this string.
    Prefix(String),
    /// Matches this RE2 expression as a whole.
    Regex(String),
}

/// A weighted destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDestination {
    /// Where requests go.
    pub destination: Destination,
    /// Percent of the route's requests.
    #[serde(default)]
    pub weight: u8,
}

/// A destination host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Destination host.
    pub host: String,
}

/// Where a rendered object comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Plan name.
    pub plan: String,
    /// Phase id.
    pub phase: String,
    /// Step id.
    pub step: String,
}

/// Makes text safe inside a mermaid statement (`:`, `;` and `#` end or start syntax).
fn mermaid_text(text: &str) -> String {
    let text = text.replace(": ", " - ").replace([':', ';', '#'], " ");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A tera error with the file and position of the template it points into.
fn locate(files: &BTreeMap<&'static str, String>, error: tera::Error) -> RenderError {
    let file_of = |name: &str| files.get(name).cloned().unwrap_or_else(|| name.to_owned());
    match error.kind() {
        tera::ErrorKind::SyntaxError(report) | tera::ErrorKind::RenderingError(report) => {
            let span = report.span();
            RenderError::Template {
                file: file_of(report.filename()),
                line: span.start_line,
                column: span.start_col + 1,
                message: report.message().to_owned(),
            }
        }
        other => {
            let mut message = other.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            RenderError::Other { file: "templates".to_owned(), message }
        }
    }
}

/// What the runbook, alert rules and Gantt templates see.
#[derive(Serialize)]
struct PlanView {
    /// The plan as written.
    plan: Value,
    /// Phases with dates, step summaries and criteria in words.
    phases: Vec<Value>,
    /// An alerting rule for every alert of the plan.
    rules: Vec<Value>,
    /// The environment the artifacts are rendered for.
    environment: String,
    /// VirtualService files, by step.
    virtual_services: Vec<Value>,
}

impl PlanView {
    fn new(
        plan: &Plan,
        environment: &str,
        summaries: &dyn Fn(&Step) -> String,
        services: &[(String, VirtualService)],
    ) -> PlanView {
        let calendar = plan.calendar();
        let phases = plan
            .phases
            .iter()
            .zip(&calendar)
            .map(|(phase, dates)| {
                let step = |step: &Step| {
                    json!({
                        "id": step.id, "name": step.name, "uses": step.uses, "summary": summaries(step),
                        "timeout": step.timeout, "files": services.iter()
                            .filter(|(_, s)| s.origin.phase == phase.id.0 && s.origin.step == step.id.0)
                            .map(|(file, _)| format!("virtualservices/{file}")).collect::<Vec<_>>(),
                    })
                };
                json!({
                    "id": phase.id, "name": phase.name, "objective": phase.objective,
                    "start": dates.map(|d| d.start.to_string()), "end": dates.map(|d| d.end.to_string()),
                    "duration": phase.schedule.as_ref().map(|s| s.duration.as_str()),
                    "days": phase.schedule.as_ref().map(|s| (s.duration.as_secs_f64() / 86_400.0).ceil().max(1.0) as u64),
                    "reversible": phase.reversible, "restore": phase.restore,
                    "steps": phase.steps.iter().map(step).collect::<Vec<_>>(),
                    "criteria": phase.criteria.iter().map(|c| criterion(c, phase.reversible)).collect::<Vec<_>>(),
                    "gates": phase.gates.iter().map(gate).collect::<Vec<_>>(),
                    "rollback": phase.rollback.as_ref().map(|r| json!({
                        "budget": r.max_duration.as_ref().map(|d| d.as_str()),
                        "description": r.description,
                        "steps": r.steps.iter().map(step).collect::<Vec<_>>(),
                    })),
                })
            })
            .collect();
        let alerts =
            plan.alerts.iter().map(|a| (a, None)).chain(
                plan.phases.iter().flat_map(|p: &Phase| p.alerts.iter().map(move |a| (a, Some(p.id.0.as_str())))),
            );
        let rules = alerts.filter_map(|(alert, phase)| rule(plan, environment, alert, phase)).collect();
        let virtual_services = services
            .iter()
            .map(|(file, s)| json!({"file": format!("virtualservices/{file}"), "phase": s.origin.phase, "step": s.origin.step}))
            .collect();
        PlanView {
            plan: serde_json::to_value(plan).unwrap_or_default(),
            phases,
            rules,
            environment: environment.to_owned(),
            virtual_services,
        }
    }
}

/// A criterion in words: `metric op threshold`, or the person's check; how it is sampled;
/// what no data and a failure do (`reversible`: whether its phase can roll back).
fn criterion(c: &Criterion, reversible: bool) -> Value {
    let check = match (&c.metric, c.op, &c.threshold, &c.confirm) {
        (Some(metric), Some(op), Some(threshold), _) => format!("`{metric} {} {threshold}`", op.symbol()),
        (_, _, _, Some(confirm)) => {
            format!("confirmed by {}: {}", confirm.by.as_deref().unwrap_or("a person"), confirm.prompt)
        }
        _ => String::new(),
    };
    let mut sampling = Vec::new();
    if c.confirm.is_some() {
        sampling.push("asked once; a person answers".to_owned());
    } else {
        sampling.push(c.window.as_ref().map_or("the latest value".to_owned(), |w| format!("over {w}")));
        sampling.extend(c.interval.as_ref().map(|i| format!("sampled every {i}")));
        sampling.extend(c.min_samples.map(|n| format!("at least {n} samples (fewer: inconclusive)")));
        sampling.push(format!("{} failed samples tolerated", c.failure_limit));
        sampling.push(format!(
            "no data: {}",
            match c.no_data {
                NoDataPolicy::Fail => "fails",
                NoDataPolicy::Inconclusive => "inconclusive, a person decides",
                NoDataPolicy::Pass => "passes",
            }
        ));
    }
    let on_failure = match (c.on_failure, reversible) {
        (FailureAction::Rollback, true) => "the phase rolls back",
        (FailureAction::Rollback, false) => {
            "the phase fails (a point of no return: no rollback, follow its recovery notes)"
        }
        (FailureAction::Pause, _) => "the run stops for a person",
        (FailureAction::Warn, _) => "reported, the run goes on",
    };
    json!({"id": c.id, "description": c.description, "check": check, "sampling": sampling.join(", "), "on_failure": on_failure})
}

fn gate(g: &Gate) -> String {
    match g {
        Gate::Soak(duration) => format!("soak {duration} with every criterion and alert watched"),
        Gate::Approval { prompt, approvers, .. } if approvers.is_empty() => format!("approval: {prompt}"),
        Gate::Approval { prompt, approvers, .. } => format!("approval by {}: {prompt}", approvers.join(" or ")),
    }
}

/// The series handoff exports while a run is live: 1 for the active phase.
pub const PHASE_ACTIVE: &str = "handoff_phase_active";

/// The name under which handoff exports a metric it measures itself (emitted by a step or
/// read from an HTTP endpoint), labelled with plan, environment, phase and step.
pub fn exported_name(metric: &str) -> String {
    let name: String = metric.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("handoff_{name}")
}

/// A Prometheus alerting rule for every alert, joined to the active-phase series so that it
/// fires only while one of its phases runs in `environment`. An alert on a Prometheus metric
/// compares the metric's query; an alert on a metric handoff measures compares the series
/// handoff exports, as measured in the active phase (a value left from an earlier phase does
/// not fire). `None` when the threshold's unit does not fit the metric (the lint reports it).
fn rule(plan: &Plan, environment: &str, alert: &Alert, phase: Option<&str>) -> Option<Value> {
    let metric = plan.metrics.get(&alert.metric)?;
    let threshold = alert.threshold.in_unit(metric.unit)?;
    let phases: Vec<&str> = match phase {
        Some(phase) => vec![phase],
        None => alert.phases.iter().map(|p| p.0.as_str()).collect(),
    };
    let scope = |labels: &str| {
        let phase = match phases.as_slice() {
            [] => String::new(),
            [one] => format!(",phase={}", promql_string(one)),
            many => format!(
                ",phase=~{}",
                promql_string(&many.iter().map(|p| regex_escape(p)).collect::<Vec<_>>().join("|"))
            ),
        };
        format!("on({labels}) ({PHASE_ACTIVE}{{{}{phase}}} == 1)", selector(plan, environment))
    };
    let op = alert.op.symbol();
    let expr = match &metric.source {
        MetricSource::Prometheus { query, .. } => format!("(({}) {op} {threshold}) and {}", one_line(query), scope("")),
        _ => format!(
            "({}{{{}}} {op} {threshold}) and {}",
            exported_name(&alert.metric.0),
            selector(plan, environment),
            scope("plan, environment, phase")
        ),
    };
    Some(json!({
        "alert": alert.name,
        "expr": expr,
        "for": alert.for_.as_ref().map(|d| d.as_str()),
        "severity": alert.severity,
        "action": alert.action,
        "metric": alert.metric,
        "threshold": alert.threshold.to_string(),
        "op": op,
        "phases": phases.join(","),
        "summary": format!("{}: {} {op} {}", alert.name, alert.metric, alert.threshold),
        "description": alert.description,
    }))
}

/// `plan="…",environment="…"`.
fn selector(plan: &Plan, environment: &str) -> String {
    format!("plan={},environment={}", promql_string(&plan.metadata.name.0), promql_string(environment))
}

/// A PromQL string literal.
fn promql_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// `text` matched literally inside a PromQL (RE2) regular expression.
fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// A PromQL query on one line (a line break inside a query is only whitespace).
fn one_line(query: &str) -> String {
    query.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mermaid_text_has_no_statement_syntax() {
        assert_eq!(mermaid_text("Phase 4: Cutover; #1"), "Phase 4 - Cutover 1");
    }
}
