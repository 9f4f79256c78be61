//! Semantic lints: what the schema cannot say. They run on a plan that passed the schema,
//! and report every problem with a JSON pointer; [`crate::check`] turns pointers into
//! file positions.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::codes::{self, Code};
use crate::diagnostic::Diagnostic;
use crate::model::{
    Alert, Comparator, Criterion, Gate, Id, MetricSource, Phase, PhaseDates, Plan, ResourceKind, Step, TrafficSchedule,
    Uses,
};
use crate::redact::{argument_secrets, is_reference, is_referenced_value, is_secret_key};
use crate::units::{Dimension, Measured, Quantity};
use crate::{Catalog, Effect};

/// A problem an executor found in a step's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamIssue {
    /// Code of the problem.
    pub code: &'static Code,
    /// JSON pointer relative to the step's `with:` (`""` for `with:` itself).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl ParamIssue {
    /// An issue with a given code.
    pub fn new(code: &'static Code, pointer: impl Into<String>, message: impl Into<String>) -> ParamIssue {
        ParamIssue { code, pointer: pointer.into(), message: message.into() }
    }

    /// A generic `invalid-params` issue.
    pub fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> ParamIssue {
        ParamIssue::new(codes::INVALID_PARAMS, pointer, message)
    }
}

/// Where a step stands in its plan: what an executor may look at to check its parameters.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The whole plan.
    pub plan: &'a Plan,
    /// Index of the step's phase.
    pub phase: usize,
    /// Index of the step among the phase's steps, or among its rollback's steps.
    pub step: usize,
    /// Whether the step belongs to the phase's rollback.
    pub rollback: bool,
}

impl<'a> Site<'a> {
    /// Steps that have run when this one runs: the steps of earlier phases, the earlier
    /// steps of this phase, and (for a rollback step) the earlier steps of its rollback.
    /// Earlier phases' rollbacks are not included: they run only when those phases fail.
    pub fn steps_before(&self) -> impl Iterator<Item = &'a Step> {
        let phases = &self.plan.phases[..=self.phase.min(self.plan.phases.len().saturating_sub(1))];
        let (phase, step, rollback) = (self.phase, self.step, self.rollback);
        phases.iter().enumerate().flat_map(move |(i, p)| {
            let forward = if i < phase || rollback { p.steps.len() } else { step };
            let rolled = if i == phase && rollback { step } else { 0 };
            p.steps.iter().take(forward).chain(p.rollback.iter().flat_map(|r| r.steps.iter()).take(rolled))
        })
    }
}

/// Checks that `name` (found at `pointer` in `with:`) is a resource of one of `kinds`.
pub fn resource_ref(plan: &Plan, pointer: &str, name: &Id, kinds: &[ResourceKind]) -> Option<ParamIssue> {
    let wanted = || kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ");
    match plan.resources.get(name) {
        None => Some(ParamIssue::new(
            codes::UNDEFINED_RESOURCE,
            pointer,
            format!(
                "resource `{name}` is not defined under `resources:`{}",
                suggestion(name.as_str(), plan.resources.keys().map(Id::as_str))
            ),
        )),
        Some(r) if !kinds.contains(&r.kind) => Some(ParamIssue::new(
            codes::UNDEFINED_RESOURCE,
            pointer,
            format!("resource `{name}` is a {} resource; this parameter needs {}", r.kind.as_str(), wanted()),
        )),
        Some(_) => None,
    }
}

/// Checks a traffic schedule: weights strictly increase and end at 100.
pub fn traffic_schedule(schedule: &TrafficSchedule, pointer: &str) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    for (i, pair) in schedule.steps.windows(2).enumerate() {
        if pair[1].weight <= pair[0].weight {
            issues.push(ParamIssue::new(
                codes::TRAFFIC_WEIGHTS,
                format!("{pointer}/steps/{}/weight", i + 1),
                format!(
                    "traffic weights must increase: step {} sends {}% after step {} sent {}%",
                    i + 2,
                    pair[1].weight,
                    i + 1,
                    pair[0].weight
                ),
            ));
        }
    }
    match schedule.steps.last() {
        None => issues.push(ParamIssue::new(
            codes::TRAFFIC_WEIGHTS,
            format!("{pointer}/steps"),
            "a traffic schedule needs at least one step",
        )),
        Some(last) if last.weight != 100 => issues.push(ParamIssue::new(
            codes::TRAFFIC_WEIGHTS,
            format!("{pointer}/steps/{}/weight", schedule.steps.len() - 1),
            format!("the last traffic weight is {}%; a schedule must end at 100%", last.weight),
        )),
        Some(_) => {}
    }
    issues
}

/// ` (did you mean `x`?)` when a candidate is close to `name`, else nothing.
pub fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Runs every semantic lint. `raw` is the document as loaded (for lints that look at every
/// string, such as literal credentials).
pub fn lint(plan: &Plan, raw: &Value, catalog: &dyn Catalog) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    ids(plan, &mut out);
    dependencies(plan, &mut out);
    endpoints(plan, &mut out);
    metrics(plan, catalog, &mut out);
    for (a, alert) in plan.alerts.iter().enumerate() {
        alert_units(plan, alert, &format!("/alerts/{a}"), &mut out);
    }
    let mut emitted_so_far: HashSet<String> = HashSet::new();
    let mut backup_taken = false;
    for (p, phase) in plan.phases.iter().enumerate() {
        let at = format!("/phases/{p}");
        for (s, step) in phase.steps.iter().enumerate() {
            let step_at = format!("{at}/steps/{s}");
            let site = Site { plan, phase: p, step: s, rollback: false };
            if let Some(facts) = step_action(step, &step_at, &site, catalog, &mut out) {
                emitted_so_far.extend(facts.emits.iter().map(|m| (*m).to_owned()));
                match facts.effect {
                    Effect::Backup => backup_taken = true,
                    Effect::Destroy => destroy_step(phase, &at, &step_at, step, backup_taken, &mut out),
                    Effect::Observe | Effect::Change => {}
                }
            }
        }
        if let Some(rollback) = &phase.rollback {
            for (s, step) in rollback.steps.iter().enumerate() {
                let site = Site { plan, phase: p, step: s, rollback: true };
                step_action(step, &format!("{at}/rollback/steps/{s}"), &site, catalog, &mut out);
            }
        }
        // A hook runs after every step of its phase.
        let site = Site { plan, phase: p, step: phase.steps.len(), rollback: false };
        for (step_at, step) in hook_steps(phase, &at) {
            step_action(step, &step_at, &site, catalog, &mut out);
        }
        criteria(plan, phase, &at, &emitted_so_far, &mut out);
        reversibility(phase, &at, backup_taken, &mut out);
        contradictions(plan, phase, &at, &mut out);
        approvals(plan, phase, &at, &mut out);
        alerts_measured(plan, phase, &at, &mut out);
    }
    timeline(plan, &mut out);
    calendar(plan, catalog, &mut out);
    if let Some(simulation) = &plan.simulation {
        simulation_refs(plan, simulation, &mut out);
    }
    credentials(raw, &mut String::new(), &mut out);
    references(raw, &mut String::new(), &mut out);
    out
}

/// Where handoff expands `${NAME}`: a step's (or a hook's) `with:`, environments, metric
/// sources and the simulation section (JSON pointers).
fn expands_references(pointer: &str) -> bool {
    let parts: Vec<&str> = pointer.split('/').collect();
    let step_with = |at: usize| parts.get(at) == Some(&"steps") && parts.get(at + 2) == Some(&"with");
    match parts.get(1) {
        Some(&("environments" | "metrics" | "simulation")) => true,
        Some(&"phases") => {
            let hook_with = parts.get(3) == Some(&"hooks") && parts.get(6) == Some(&"with");
            step_with(3) || (parts.get(3) == Some(&"rollback") && step_with(4)) || hook_with
        }
        _ => false,
    }
}

/// The first `${` of `text` that is not a well-formed `${NAME}`, as written.
fn malformed_reference(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..name_len];
        if !after[name_len..].starts_with('}') || name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            let end = after.find('}').map_or(after.len(), |e| e + 1).min(24);
            let end = (0..=end).rev().find(|&i| after.is_char_boundary(i)).unwrap_or(0);
            return Some(&rest[start..start + 2 + end]);
        }
        rest = &after[name_len + 1..];
    }
    None
}

/// H313: a `${` that would reach an executor or the output as written.
fn references(value: &Value, pointer: &mut String, out: &mut Vec<Diagnostic>) {
    match value {
        Value::String(text) if text.contains("${") => {
            if let Some(bad) = malformed_reference(text) {
                let message = format!("`{bad}` is not a `${{NAME}}` reference, so it would be used as written");
                out.push(Diagnostic::new(codes::UNEXPANDED_REFERENCE, pointer.clone(), message));
            } else if !expands_references(pointer) {
                let message = "`${…}` is not expanded in this field (only in a step's or a hook's `with:`, environments, metrics and the simulation)";
                out.push(Diagnostic::new(codes::UNEXPANDED_REFERENCE, pointer.clone(), message));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                references(item, pointer, out);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = pointer.len();
                crate::source::push_token(pointer, key);
                references(item, pointer, out);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// A reference the `simulation:` section makes: where, to what, and the kinds it may be.
type SimRef<'p> = (String, &'p Id, &'static [ResourceKind]);

/// Every resource, phase and metric the `simulation:` section names exists and has the
/// right kind.
fn simulation_refs(plan: &Plan, simulation: &crate::simulation::Simulation, out: &mut Vec<Diagnostic>) {
    let mut refs: Vec<SimRef<'_>> = Vec::new();
    for (i, dataset) in simulation.dataset.iter().enumerate() {
        refs.push((format!("/simulation/dataset/{i}/resource"), &dataset.resource, &[ResourceKind::Mongodb]));
    }
    app_refs(&simulation.app, &mut refs, out);
    requests_host(plan, &simulation.app, out);
    fault_refs(plan, simulation, (&simulation.faults, "/simulation"), &mut refs, out);
    measure_refs(plan, simulation, &mut refs, out);
    telemetry_refs(simulation, &mut refs);
    response_checks(simulation, out);
    crate::promql::lint(plan, simulation, out);
    for (at, id, kinds) in refs {
        if let Some(issue) = resource_ref(plan, "", id, kinds) {
            out.push(Diagnostic::new(issue.code, at, issue.message));
        }
    }
}

/// The application model's services, stores, routes, cache and broker.
fn app_refs<'p>(app: &'p crate::simulation::App, refs: &mut Vec<SimRef<'p>>, out: &mut Vec<Diagnostic>) {
    use ResourceKind::{Kafka, Mongodb, Redis, Service};
    for (service, store) in &app.stores {
        refs.push((format!("/simulation/app/stores/{service}"), service, &[Service]));
        refs.push((format!("/simulation/app/stores/{service}"), store, &[Mongodb]));
    }
    refs.push(("/simulation/app/owner".to_owned(), &app.owner, &[Service]));
    if let Some(host) = app.requests.as_ref().and_then(|r| r.host.as_ref()) {
        refs.push(("/simulation/app/requests/host".to_owned(), host, &[Service]));
    }
    for service in app.read_only_flags.keys().filter(|s| !app.stores.contains_key(*s)) {
        out.push(Diagnostic::new(
            codes::UNDEFINED_RESOURCE,
            format!("/simulation/app/read_only_flags/{service}"),
            format!("`{service}` has no store under `app.stores`; name a service listed there"),
        ));
    }
    for store in app.renamed.keys().filter(|s| !app.stores.values().any(|v| v == *s)) {
        out.push(Diagnostic::new(
            codes::UNDEFINED_RESOURCE,
            crate::source::child("/simulation/app/renamed", &store.0),
            format!("`{store}` is no store under `app.stores`; name a store listed there"),
        ));
    }
    if let Some(cache) = &app.cache {
        refs.push(("/simulation/app/cache/resource".to_owned(), &cache.resource, &[Redis]));
    }
    if let Some(events) = &app.events {
        refs.push(("/simulation/app/events/broker".to_owned(), &events.broker, &[Kafka]));
    }
    if !app.stores.contains_key(&app.owner) {
        out.push(Diagnostic::new(
            codes::UNDEFINED_RESOURCE,
            "/simulation/app/owner",
            format!("the owner `{}` has no store under `app.stores`", app.owner),
        ));
    }
}

/// The host the application's requests call is one the plan's `mesh` routes claim, when
/// they claim any (H330).
fn requests_host(plan: &Plan, app: &crate::simulation::App, out: &mut Vec<Diagnostic>) {
    let claimed: Vec<&Id> =
        plan.resources.values().filter(|r| r.kind == ResourceKind::Mesh).filter_map(|r| r.host.as_ref()).collect();
    let (host, at) = match app.requests.as_ref().and_then(|r| r.host.as_ref()) {
        Some(host) => (host, "/simulation/app/requests/host"),
        None => (&app.owner, "/simulation/app/owner"),
    };
    if claimed.is_empty() || claimed.contains(&host) {
        return;
    }
    let names: Vec<String> = claimed.iter().map(|h| format!("`{h}`")).collect();
    out.push(Diagnostic::new(
        codes::UNROUTED_REQUESTS,
        at,
        format!(
            "the simulated application calls `{host}`, but the plan's routes claim {}: no traffic step would ever route its requests; set `simulation.app.requests.host` to the host they claim",
            names.join(", ")
        ),
    ));
}

/// What each of `faults` (under the pointer `at`) acts on, the phase it is injected in,
/// and whether the simulation can apply it.
fn fault_refs<'p>(
    plan: &Plan,
    simulation: &crate::simulation::Simulation,
    (faults, at): (&'p [crate::simulation::Fault], &str),
    refs: &mut Vec<SimRef<'p>>,
    out: &mut Vec<Diagnostic>,
) {
    use crate::simulation::FaultKind;
    use ResourceKind::{Kafka, Mongodb, Redis, Service};
    const ANY: &[ResourceKind] = &[Mongodb, Kafka, Redis];
    for (i, fault) in faults.iter().enumerate() {
        let (resource, kinds, field): (&Id, &'static [ResourceKind], &str) = match &fault.fault {
            FaultKind::WriteErrors { resource, .. } => (resource, &[Mongodb], "write_errors/resource"),
            FaultKind::CacheFlush { resource } => (resource, &[Redis], "cache_flush/resource"),
            FaultKind::Latency { resource, .. } => (resource, ANY, "latency/resource"),
            FaultKind::Outage { resource } => (resource, ANY, "outage/resource"),
            FaultKind::ServiceLatency { service, .. } => (service, &[Service], "service_latency/service"),
        };
        let pointer = format!("{at}/faults/{i}/fault/{field}");
        if resource_ref(plan, "", resource, kinds).is_none()
            && let Some(why) = inapplicable(&simulation.app, &fault.fault)
        {
            out.push(Diagnostic::new(codes::INAPPLICABLE_FAULT, pointer.clone(), why));
        }
        refs.push((pointer, resource, kinds));
        if !plan.phases.iter().any(|p| p.id == fault.phase) {
            out.push(Diagnostic::new(
                codes::UNDEFINED_PHASE,
                format!("{at}/faults/{i}/phase"),
                format!(
                    "no phase has the id `{}`{}",
                    fault.phase,
                    suggestion(fault.phase.as_str(), plan.phases.iter().map(|p| p.id.as_str()))
                ),
            ));
        }
    }
}

/// Why the application model cannot apply `fault` to a resource of the right kind: a
/// write error on a store it does not write, a slow service it does not run, a flush of a
/// cache it does not use.
fn inapplicable(app: &crate::simulation::App, fault: &crate::simulation::FaultKind) -> Option<String> {
    use crate::simulation::FaultKind;
    let names = |ids: Vec<&Id>| ids.iter().map(|id| format!("`{id}`")).collect::<Vec<_>>().join(", ");
    match fault {
        FaultKind::WriteErrors { resource, .. } if !app.stores.values().any(|s| s == resource) => Some(format!(
            "the application writes no data to `{resource}`, so no write of it can fail; name a store under `simulation.app.stores`: {}",
            names(app.stores.values().collect())
        )),
        FaultKind::ServiceLatency { service, .. } if !app.stores.contains_key(service) => Some(format!(
            "the application model runs no service `{service}`; name a service under `simulation.app.stores`: {}",
            names(app.stores.keys().collect())
        )),
        FaultKind::CacheFlush { resource } if app.cache.as_ref().is_none_or(|c| c.resource != *resource) => {
            Some(format!("the application reads through no cache `{resource}` (`simulation.app.cache`)"))
        }
        _ => None,
    }
}

/// Every phase, resource and service a scenario names exists, each of its faults can be
/// applied to the plan's simulation, and the phase it expects to roll back can.
pub fn scenario(plan: &Plan, scenario: &crate::simulation::Scenario) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let Some(simulation) = &plan.simulation else {
        let message = format!("plan `{}` has no `simulation:` section to run this scenario in", plan.metadata.name.0);
        return vec![Diagnostic::new(codes::MISSING_FIELD, "", message)];
    };
    let mut refs = Vec::new();
    fault_refs(plan, simulation, (&scenario.faults, ""), &mut refs, &mut out);
    for (at, id, kinds) in refs {
        if let Some(issue) = resource_ref(plan, "", id, kinds) {
            out.push(Diagnostic::new(issue.code, at, issue.message));
        }
    }
    if let Some(expected) = &scenario.expect_rollback {
        let phases = || plan.phases.iter().map(|p| p.id.as_str());
        let message = match plan.phases.iter().find(|p| p.id == *expected) {
            None => Some(format!("no phase has the id `{expected}`{}", suggestion(expected.as_str(), phases()))),
            Some(p) if !p.reversible || p.rollback.is_none() => {
                Some(format!("phase `{expected}` has no rollback (or is irreversible), so it cannot roll back"))
            }
            Some(_) => None,
        };
        out.extend(message.map(|m| Diagnostic::new(codes::UNDEFINED_PHASE, "/expect_rollback", m)));
    }
    out
}

/// Every measure is of a metric the plan defines, on a service or store that exists.
fn measure_refs<'p>(
    plan: &Plan,
    simulation: &'p crate::simulation::Simulation,
    refs: &mut Vec<SimRef<'p>>,
    out: &mut Vec<Diagnostic>,
) {
    use crate::simulation::Measure;
    for (metric, measure) in &simulation.measures {
        let at = format!("/simulation/measures/{metric}");
        if !plan.metrics.contains_key(metric) {
            out.push(Diagnostic::new(
                codes::UNDEFINED_METRIC,
                at.clone(),
                format!("metric `{metric}` is not defined under `metrics:`"),
            ));
        }
        match measure {
            Measure::ServiceUp(service) => refs.push((at, service, &[ResourceKind::Service])),
            Measure::Collections(store) | Measure::StoreReads(store) | Measure::Documents(store) => {
                refs.push((at, store, &[ResourceKind::Mongodb]));
            }
            Measure::ReadP95 => out.extend(other_quantile(plan, metric, 95.0, &at)),
            Measure::ReadPercentile(q) => out.extend(other_quantile(plan, metric, *q, &at)),
            _ => {}
        }
    }
}

/// The services and stores the declared telemetry names exist.
fn telemetry_refs<'p>(simulation: &'p crate::simulation::Simulation, refs: &mut Vec<SimRef<'p>>) {
    use crate::simulation::{Measure, MeshTelemetry, SeriesSpec};
    let Some(telemetry) = &simulation.telemetry else { return };
    if let Some(MeshTelemetry::Istio(istio)) = &telemetry.mesh {
        for service in istio.services.keys() {
            refs.push((
                format!("/simulation/telemetry/mesh/istio/services/{service}"),
                service,
                &[ResourceKind::Service],
            ));
        }
    }
    for (i, series) in telemetry.series.iter().enumerate() {
        let at = format!("/simulation/telemetry/series/{i}");
        let (requests, measure) = match series {
            SeriesSpec::Counter(c) => (c.requests.as_ref(), None),
            SeriesSpec::Histogram(h) => (Some(&h.requests), None),
            SeriesSpec::Gauge(g) => (None, Some(&g.measure)),
        };
        if let Some(service) = requests.and_then(|r| r.service.as_ref()) {
            refs.push((at.clone(), service, &[ResourceKind::Service]));
        }
        match measure {
            Some(Measure::ServiceUp(service)) => refs.push((at, service, &[ResourceKind::Service])),
            Some(Measure::Collections(store) | Measure::StoreReads(store) | Measure::Documents(store)) => {
                refs.push((at, store, &[ResourceKind::Mongodb]));
            }
            _ => {}
        }
    }
}

/// A latency measure of percentile `q` for a metric whose PromQL asks for another
/// quantile (`histogram_quantile(0.99, …)` simulated as a p95).
fn other_quantile(plan: &Plan, metric: &Id, q: f64, at: &str) -> Option<Diagnostic> {
    let Some(MetricSource::Prometheus { query, .. }) = plan.metrics.get(metric).map(|m| &m.source) else {
        return None;
    };
    let (_, rest) = query.split_once("histogram_quantile(")?;
    let asked: f64 = rest.split(',').next()?.trim().parse().ok()?;
    let percent = (asked * 10_000.0).round() / 100.0;
    ((percent - q).abs() > 1e-6).then(|| {
        Diagnostic::new(
            codes::INVALID_VALUE,
            at,
            format!(
                "metric `{metric}` is the {percent}th percentile (`histogram_quantile({asked}, …)`), but this measure takes the {q}th; use `read_percentile: {percent}`"
            ),
        )
    })
}

/// Declared responses start with a stand-in variable and build their fields from measures.
fn response_checks(simulation: &crate::simulation::Simulation, out: &mut Vec<Diagnostic>) {
    for (i, response) in simulation.responses.iter().enumerate() {
        let at = format!("/simulation/responses/{i}");
        let variable = response.url.strip_prefix("${").and_then(|rest| rest.split_once('}')).map(|(name, _)| name);
        if !variable.is_some_and(|name| simulation.stand_ins.iter().any(|s| s == name)) {
            out.push(Diagnostic::new(
                codes::INVALID_VALUE,
                format!("{at}/url"),
                format!(
                    "`{}` does not start with a stand-in variable; start it with `${{VAR}}` where VAR is listed under `simulation.stand_ins`",
                    response.url
                ),
            ));
        }
        for (pointer, field) in &response.json {
            response_field(simulation, &crate::source::child(&format!("{at}/json"), pointer), pointer, field, out);
        }
    }
}

/// One field of a declared response.
fn response_field(
    simulation: &crate::simulation::Simulation,
    at: &str,
    pointer: &str,
    field: &crate::simulation::ResponseField,
    out: &mut Vec<Diagnostic>,
) {
    if !pointer.starts_with('/') {
        out.push(Diagnostic::new(
            codes::INVALID_VALUE,
            at,
            format!("`{pointer}` is not a JSON pointer; write it as `/{pointer}`"),
        ));
    }
    if !simulation.measures.contains_key(&field.metric) {
        out.push(Diagnostic::new(
            codes::UNDEFINED_METRIC,
            format!("{at}/metric"),
            format!("metric `{}` is not measured; add it under `simulation.measures`", field.metric),
        ));
    }
    if field.op.is_some() != field.threshold.is_some() {
        out.push(Diagnostic::new(
            codes::INVALID_VALUE,
            at,
            "`op` and `threshold` go together: give both for a true/false field, or neither for the value",
        ));
    }
}

fn duplicate<'a>(seen: &mut HashMap<&'a str, String>, id: &'a str, at: String, what: &str, out: &mut Vec<Diagnostic>) {
    if let Some(first) = seen.get(id) {
        out.push(Diagnostic::new(
            codes::DUPLICATE_ID,
            at,
            format!("duplicate {what} `{id}`; it is first defined at {first}"),
        ));
    } else {
        seen.insert(id, at);
    }
}

fn ids(plan: &Plan, out: &mut Vec<Diagnostic>) {
    let mut phases = HashMap::new();
    let mut steps = HashMap::new();
    let mut alerts = HashMap::new();
    for (i, alert) in plan.alerts.iter().enumerate() {
        duplicate(&mut alerts, &alert.name, format!("/alerts/{i}/name"), "alert name", out);
    }
    for (p, phase) in plan.phases.iter().enumerate() {
        duplicate(&mut phases, phase.id.as_str(), format!("/phases/{p}/id"), "phase id", out);
        for (s, step) in phase.steps.iter().enumerate() {
            duplicate(&mut steps, step.id.as_str(), format!("/phases/{p}/steps/{s}/id"), "step id", out);
        }
        for (s, step) in phase.rollback.iter().flat_map(|r| r.steps.iter()).enumerate() {
            duplicate(&mut steps, step.id.as_str(), format!("/phases/{p}/rollback/steps/{s}/id"), "step id", out);
        }
        for (at, step) in hook_steps(phase, &format!("/phases/{p}")) {
            duplicate(&mut steps, step.id.as_str(), format!("{at}/id"), "step id", out);
        }
        let mut criteria = HashMap::new();
        for (c, criterion) in phase.criteria.iter().enumerate() {
            duplicate(
                &mut criteria,
                criterion.id.as_str(),
                format!("/phases/{p}/criteria/{c}/id"),
                "criterion id",
                out,
            );
        }
        for (a, alert) in phase.alerts.iter().enumerate() {
            duplicate(&mut alerts, &alert.name, format!("/phases/{p}/alerts/{a}/name"), "alert name", out);
        }
    }
}

fn dependencies(plan: &Plan, out: &mut Vec<Diagnostic>) {
    let position: HashMap<&str, usize> = plan.phases.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
    let known = || plan.phases.iter().map(|p| p.id.as_str());
    for (p, phase) in plan.phases.iter().enumerate() {
        for (d, dep) in phase.depends_on.iter().flatten().enumerate() {
            let at = format!("/phases/{p}/depends_on/{d}");
            match position.get(dep.as_str()) {
                None => out.push(Diagnostic::new(
                    codes::UNDEFINED_PHASE,
                    at,
                    format!(
                        "phase `{}` depends on `{dep}`, which is not a phase{}",
                        phase.id,
                        suggestion(dep.as_str(), known())
                    ),
                )),
                Some(&q) if q >= p => out.push(
                    Diagnostic::new(
                        codes::DEPENDENCY_CYCLE,
                        at,
                        if q == p {
                            format!("phase `{}` depends on itself", phase.id)
                        } else {
                            format!(
                                "phase `{}` depends on `{dep}`, which comes after it: that can never be satisfied",
                                phase.id
                            )
                        },
                    )
                    .with_help("phases run in the order written; move the phase or drop the dependency"),
                ),
                Some(_) => {}
            }
        }
    }
    let plan_alerts = plan.alerts.iter().enumerate().map(|(a, alert)| (format!("/alerts/{a}"), alert));
    let phase_alerts = plan.phases.iter().enumerate().flat_map(|(p, phase)| {
        phase.alerts.iter().enumerate().map(move |(a, alert)| (format!("/phases/{p}/alerts/{a}"), alert))
    });
    for (alert_at, alert) in plan_alerts.chain(phase_alerts) {
        for (i, id) in alert.phases.iter().enumerate() {
            if !position.contains_key(id.as_str()) {
                out.push(Diagnostic::new(
                    codes::UNDEFINED_PHASE,
                    format!("{alert_at}/phases/{i}"),
                    format!(
                        "alert `{}` names phase `{id}`, which does not exist{}",
                        alert.name,
                        suggestion(id.as_str(), known())
                    ),
                ));
            }
        }
    }
}

fn endpoints(plan: &Plan, out: &mut Vec<Diagnostic>) {
    for (name, resource) in &plan.resources {
        let Some(endpoint) = &resource.endpoint else { continue };
        for (env_name, env) in &plan.environments {
            if !env.endpoints.contains_key(endpoint) {
                out.push(Diagnostic::new(
                    codes::UNDEFINED_ENDPOINT,
                    format!("/resources/{name}/endpoint"),
                    format!(
                        "resource `{name}` uses endpoint `{endpoint}`, which environment `{env_name}` does not define{}",
                        suggestion(endpoint.as_str(), env.endpoints.keys().map(Id::as_str))
                    ),
                ));
            }
        }
    }
}

/// H340: an approval gate whose `require:` nobody could meet, even with every member of
/// every group approving.
fn approvals(plan: &Plan, phase: &Phase, at: &str, out: &mut Vec<Diagnostic>) {
    for (g, gate) in phase.gates.iter().enumerate() {
        let crate::model::Gate::Approval { require, .. } = gate else { continue };
        let everyone: Vec<&str> = plan.approvers.values().flatten().map(String::as_str).collect();
        for missing in crate::model::missing_approvals(require, &plan.approvers, &everyone) {
            let (group, count, r) = (missing.group, missing.count, missing.index);
            let wanted = require[r].count;
            let message = match plan.approvers.get(group) {
                None => format!(
                    "the gate asks for approvals from group `{group}`, which the plan's `approvers:` does not define{}",
                    suggestion(group.as_str(), plan.approvers.keys().map(Id::as_str))
                ),
                Some(members) if members.len() < wanted as usize => format!(
                    "the gate asks for {wanted} distinct approvers from `{group}`, which has {} member(s)",
                    members.len()
                ),
                Some(_) => format!(
                    "the gate asks for {wanted} approver(s) from `{group}` beside its other requirements; nobody counts twice, so even with everyone approving it lacks {count}"
                ),
            };
            out.push(Diagnostic::new(
                codes::IMPOSSIBLE_APPROVAL,
                format!("{at}/gates/{g}/approval/require/{r}"),
                message,
            ));
        }
    }
}

fn metric_ref(plan: &Plan, id: &Id, at: String, out: &mut Vec<Diagnostic>) -> bool {
    if plan.metrics.contains_key(id) {
        return true;
    }
    out.push(Diagnostic::new(
        codes::UNDEFINED_METRIC,
        at,
        format!(
            "metric `{id}` is not defined under `metrics:`{}",
            suggestion(id.as_str(), plan.metrics.keys().map(Id::as_str))
        ),
    ));
    false
}

/// Reports an unknown executor or action. Returns the facts when both exist.
fn resolve(uses: &Uses, at: &str, catalog: &dyn Catalog, out: &mut Vec<Diagnostic>) -> Option<crate::ActionFacts> {
    let Uses { executor, action } = uses;
    let Some(actions) = catalog.actions(executor) else {
        let executors = catalog.executors();
        out.push(
            Diagnostic::new(
                codes::UNKNOWN_EXECUTOR,
                at,
                format!("unknown executor `{executor}` in `{uses}`{}", suggestion(executor, executors.iter().copied())),
            )
            .with_help(format!("built-in executors: {}", executors.join(", "))),
        );
        return None;
    };
    let Some(facts) = catalog.facts(uses) else {
        out.push(
            Diagnostic::new(
                codes::UNKNOWN_ACTION,
                at,
                format!(
                    "executor `{executor}` has no action `{action}`{}",
                    suggestion(action, actions.iter().copied())
                ),
            )
            .with_help(format!("actions of `{executor}`: {}", actions.join(", "))),
        );
        return None;
    };
    Some(facts)
}

fn step_action(
    step: &Step,
    at: &str,
    site: &Site<'_>,
    catalog: &dyn Catalog,
    out: &mut Vec<Diagnostic>,
) -> Option<crate::ActionFacts> {
    let facts = resolve(&step.uses, &format!("{at}/uses"), catalog, out)?;
    let with = Value::Object(step.with.clone());
    for issue in catalog.check_params(&step.uses, &with, site) {
        out.push(Diagnostic::new(issue.code, format!("{at}/with{}", issue.pointer), issue.message));
    }
    Some(facts)
}

fn metrics(plan: &Plan, catalog: &dyn Catalog, out: &mut Vec<Diagnostic>) {
    for (name, metric) in &plan.metrics {
        let at = format!("/metrics/{name}/source");
        match &metric.source {
            MetricSource::Emitted { by, name: emitted } => {
                let wanted = emitted.as_deref().unwrap_or(name.as_str());
                if let Some(facts) = resolve(by, &format!("{at}/emitted/by"), catalog, out)
                    && !facts.emits.contains(&wanted)
                {
                    out.push(Diagnostic::new(
                        codes::CRITERION_WITHOUT_SOURCE,
                        format!("{at}/emitted/by"),
                        format!(
                            "`{by}` does not emit `{wanted}`; it emits {}",
                            if facts.emits.is_empty() { "no metrics".to_owned() } else { facts.emits.join(", ") }
                        ),
                    ));
                }
            }
            MetricSource::Prometheus { resource, .. } => {
                if let Some(issue) = resource_ref(plan, "", resource, &[ResourceKind::Prometheus]) {
                    out.push(Diagnostic::new(issue.code, format!("{at}/prometheus/resource"), issue.message));
                }
            }
            MetricSource::HttpJson { .. } => {}
        }
    }
}

fn criteria(plan: &Plan, phase: &Phase, at: &str, emitted_so_far: &HashSet<String>, out: &mut Vec<Diagnostic>) {
    if phase.criteria.is_empty() {
        out.push(Diagnostic::new(
            codes::NO_CRITERIA,
            format!("{at}/id"),
            format!("phase `{}` has no success criteria", phase.id),
        ));
    }
    for (m, metric) in phase.monitor.iter().enumerate() {
        metric_ref(plan, metric, format!("{at}/monitor/{m}"), out);
    }
    for (c, criterion) in phase.criteria.iter().enumerate() {
        let c_at = format!("{at}/criteria/{c}");
        criterion_source(plan, phase, criterion, &c_at, emitted_so_far, out);
        emitter(plan, phase, criterion, &c_at, out);
        if let Some(denominator) = &criterion.denominator {
            metric_ref(plan, &denominator.metric, format!("{c_at}/denominator/metric"), out);
        }
    }
    for (a, alert) in phase.alerts.iter().enumerate() {
        alert_units(plan, alert, &format!("{at}/alerts/{a}"), out);
    }
    analysis_refs(phase, at, out);
}

/// Which step's emission a criterion reads: `from:` names a step of its phase or an earlier
/// one that runs the emitting action (H305); without it, several emitting steps in the
/// phase are ambiguous (H347).
fn emitter(plan: &Plan, phase: &Phase, criterion: &Criterion, at: &str, out: &mut Vec<Diagnostic>) {
    let metric = criterion.metric.as_ref().and_then(|m| plan.metrics.get(m));
    let by = match metric.map(|m| &m.source) {
        Some(MetricSource::Emitted { by, .. }) => Some(by),
        _ => None,
    };
    let (id, metric_id) = (&criterion.id, criterion.metric.as_ref().map(Id::as_str).unwrap_or_default());
    match (&criterion.from, by) {
        (Some(_), None) => out.push(Diagnostic::new(
            codes::CRITERION_WITHOUT_SOURCE,
            format!("{at}/from"),
            format!("criterion `{id}` names a step with `from:`, but `{metric_id}` is not emitted by a step"),
        )),
        (Some(from), Some(by)) => {
            let upto = plan.phases.iter().position(|p| p.id == phase.id).map_or(0, |p| p + 1);
            let steps = plan.phases[..upto].iter().flat_map(|p| &p.steps);
            if !steps.clone().any(|s| s.id == *from && s.uses == *by) {
                let candidates: Vec<&str> = steps.filter(|s| s.uses == *by).map(|s| s.id.as_str()).collect();
                let hint = suggestion(from.as_str(), candidates.iter().copied());
                out.push(
                    Diagnostic::new(
                        codes::CRITERION_WITHOUT_SOURCE,
                        format!("{at}/from"),
                        format!("criterion `{id}` reads `{metric_id}` from `{from}`, which is no `{by}` step of phase `{}` or an earlier one{hint}", phase.id),
                    )
                    .with_help(format!("name one of: {}", candidates.join(", "))),
                );
            }
        }
        (None, Some(by)) => {
            let emitters: Vec<&str> = phase.steps.iter().filter(|s| s.uses == *by).map(|s| s.id.as_str()).collect();
            if emitters.len() > 1 {
                out.push(
                    Diagnostic::new(
                        codes::AMBIGUOUS_EMITTER,
                        format!("{at}/metric"),
                        format!(
                            "criterion `{id}` reads `{metric_id}`, which {} steps of phase `{}` emit ({}): the latest of them decides",
                            emitters.len(),
                            phase.id,
                            emitters.join(", ")
                        ),
                    )
                    .with_help(format!("name the step it judges with `from:` (one of {})", emitters.join(", "))),
                );
            }
        }
        (None, None) => {}
    }
}

/// Step and background analysis name metric criteria of their phase.
fn analysis_refs(phase: &Phase, at: &str, out: &mut Vec<Diagnostic>) {
    let background =
        phase.background_analysis.iter().enumerate().map(|(i, id)| (format!("{at}/background_analysis/{i}"), id));
    let steps = phase.steps.iter().enumerate().flat_map(|(s, step)| {
        step.analysis.iter().enumerate().map(move |(i, id)| (format!("{at}/steps/{s}/analysis/{i}"), id))
    });
    for (pointer, id) in background.chain(steps) {
        let problem = match phase.criteria.iter().find(|c| c.id == *id) {
            None => format!(
                "phase `{}` has no criterion `{id}`{}",
                phase.id,
                suggestion(id.as_str(), phase.criteria.iter().map(|c| c.id.as_str()))
            ),
            Some(c) if c.metric.is_none() || c.op.is_none() || c.threshold.is_none() => {
                format!("criterion `{id}` is not decided by a metric, so analysis cannot sample it")
            }
            Some(_) => continue,
        };
        out.push(Diagnostic::new(codes::ANALYSIS_CRITERION, pointer, problem));
    }
}

fn criterion_source(
    plan: &Plan,
    phase: &Phase,
    criterion: &Criterion,
    at: &str,
    emitted_so_far: &HashSet<String>,
    out: &mut Vec<Diagnostic>,
) {
    let id = &criterion.id;
    match (&criterion.metric, &criterion.confirm) {
        (None, None) => out.push(
            Diagnostic::new(
                codes::CRITERION_WITHOUT_SOURCE,
                format!("{at}/id"),
                format!("criterion `{id}` has neither a metric nor `confirm:`: nothing can decide it"),
            )
            .with_help("add `metric:`, `op:` and `threshold:`, or `confirm: {prompt: ...}` for a check a person makes"),
        ),
        (Some(_), Some(_)) => out.push(Diagnostic::new(
            codes::CRITERION_WITHOUT_SOURCE,
            format!("{at}/confirm"),
            format!("criterion `{id}` has both a metric and `confirm:`; split it into two criteria"),
        )),
        (None, Some(_)) => {}
        (Some(metric_id), None) => {
            if !metric_ref(plan, metric_id, format!("{at}/metric"), out) {
                return;
            }
            let metric = &plan.metrics[metric_id];
            match (&criterion.op, &criterion.threshold) {
                (Some(_), Some(threshold)) => {
                    out.extend(threshold_misfit(format!("{at}/threshold"), threshold, metric_id, metric.unit));
                }
                (op, _) => out.push(Diagnostic::new(
                    codes::MISSING_FIELD,
                    at.to_owned(),
                    format!(
                        "criterion `{id}` measures `{metric_id}` but has no `{}:`",
                        if op.is_none() { "op" } else { "threshold" }
                    ),
                )),
            }
            if let MetricSource::Emitted { by, name } = &metric.source {
                let wanted = name.as_deref().unwrap_or(metric_id.as_str());
                if !emitted_so_far.contains(wanted) {
                    out.push(
                        Diagnostic::new(
                            codes::CRITERION_WITHOUT_SOURCE,
                            format!("{at}/metric"),
                            format!("criterion `{id}` needs `{metric_id}`, emitted by `{by}`, but no step of phase `{}` or of an earlier phase uses `{by}`", phase.id),
                        )
                        .with_help(format!("add a `{by}` step to this phase or an earlier one")),
                    );
                }
            }
        }
    }
}

/// A phase's hook steps with their JSON pointers (the phase's is `at`).
fn hook_steps<'p>(phase: &'p Phase, at: &str) -> Vec<(String, &'p Step)> {
    let hooks = &phase.hooks;
    [("on_pass", &hooks.on_pass), ("on_fail", &hooks.on_fail), ("on_rollback", &hooks.on_rollback)]
        .into_iter()
        .flat_map(|(when, steps)| {
            steps.iter().enumerate().map(move |(s, step)| (format!("{at}/hooks/{when}/{s}"), step))
        })
        .collect()
}

/// The alerts that apply to a phase (the plan's that name it or no phase, and its own)
/// whose metric a step emits, when no step of the phase uses that step's action (H346).
fn alerts_measured(plan: &Plan, phase: &Phase, at: &str, out: &mut Vec<Diagnostic>) {
    let plan_alerts = plan.alerts.iter().enumerate().map(|(a, alert)| (format!("/alerts/{a}"), alert));
    let plan_alerts = plan_alerts.filter(|(_, alert)| alert.phases.is_empty() || alert.phases.contains(&phase.id));
    let own = phase.alerts.iter().enumerate().map(|(a, alert)| (format!("{at}/alerts/{a}"), alert));
    for (pointer, alert) in plan_alerts.chain(own) {
        let Some(MetricSource::Emitted { by, .. }) = plan.metrics.get(&alert.metric).map(|m| &m.source) else {
            continue;
        };
        if phase.steps.iter().any(|step| step.uses == *by) {
            continue;
        }
        let message = format!(
            "alert `{}` watches `{}`, which `{by}` emits, but no step of phase `{}` uses `{by}`: its rule cannot fire in this phase, and the run would judge a value left from an earlier phase",
            alert.name, alert.metric, phase.id
        );
        let help = if pointer.starts_with("/alerts/") {
            format!(
                "list the phases that measure it in the alert's `phases:`, or add a `{by}` step to phase `{}`",
                phase.id
            )
        } else {
            format!("add a `{by}` step to phase `{}`, or watch it in the phases that measure it", phase.id)
        };
        out.push(Diagnostic::new(codes::ALERT_NOT_MEASURED, format!("{pointer}/metric"), message).with_help(help));
    }
}

/// What is wrong with a threshold against its metric's unit: a unit that does not fit (H310),
/// or a bare fraction on a metric in percent (`0.9`, quoted or not, where `90%` was likely
/// meant: H321).
fn threshold_misfit(at: String, threshold: &Quantity, metric: &Id, unit: crate::model::Unit) -> Option<Diagnostic> {
    if threshold.in_unit(unit).is_none() {
        return Some(unit_mismatch(at, threshold.dimension(), metric, unit));
    }
    let value = threshold.base_value();
    let fraction = unit == crate::model::Unit::Percent && threshold.dimension() == Dimension::Number;
    (fraction && value > 0.0 && value < 1.0).then(|| {
        Diagnostic::new(
            codes::PERCENT_AS_FRACTION,
            at,
            format!("threshold `{threshold}` is {}% but metric `{metric}` is measured in percent", Measured(value)),
        )
        .with_help(format!(
            "write `{}%` if the fraction {threshold} is meant, or `{threshold}%` to keep {threshold} percent",
            Measured(value * 100.0)
        ))
    })
}

fn unit_mismatch(at: String, dimension: Dimension, metric: &Id, unit: crate::model::Unit) -> Diagnostic {
    Diagnostic::new(
        codes::UNIT_MISMATCH,
        at,
        format!(
            "the threshold is {} but metric `{metric}` is measured in {}",
            dimension.name(),
            serde_json::to_value(unit).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ),
    )
}

fn alert_units(plan: &Plan, alert: &Alert, at: &str, out: &mut Vec<Diagnostic>) {
    if metric_ref(plan, &alert.metric, format!("{at}/metric"), out) {
        let metric = &plan.metrics[&alert.metric];
        out.extend(threshold_misfit(format!("{at}/threshold"), &alert.threshold, &alert.metric, metric.unit));
    }
}

fn destroy_step(
    phase: &Phase,
    phase_at: &str,
    step_at: &str,
    step: &Step,
    backup_taken: bool,
    out: &mut Vec<Diagnostic>,
) {
    if phase.reversible {
        out.push(
            Diagnostic::new(
                codes::DESTRUCTIVE_IN_REVERSIBLE,
                format!("{step_at}/uses"),
                format!(
                    "step `{}` (`{}`) destroys data, but phase `{}` is marked reversible",
                    step.id, step.uses, phase.id
                ),
            )
            .with_help(format!("set `reversible: false` and `restore:` notes on the phase at {phase_at}")),
        );
    }
    if !backup_taken {
        out.push(
            Diagnostic::new(
                codes::IRREVERSIBLE_WITHOUT_BACKUP,
                format!("{step_at}/uses"),
                format!(
                    "step `{}` (`{}`) destroys data, but no earlier step takes a verified backup",
                    step.id, step.uses
                ),
            )
            .with_help("add a backup step (e.g. `mongo.archive`) before it, in this phase or an earlier one"),
        );
    }
}

fn reversibility(phase: &Phase, at: &str, backup_taken: bool, out: &mut Vec<Diagnostic>) {
    let id = &phase.id;
    if phase.reversible {
        match &phase.rollback {
            None => out.push(
                Diagnostic::new(codes::MISSING_ROLLBACK, format!("{at}/id"), format!("phase `{id}` is reversible but has no `rollback:`"))
                    .with_help("add `rollback: {max_duration: 5m, steps: [...]}`, or mark the phase `reversible: false` with `restore:` notes"),
            ),
            Some(rollback) if rollback.max_duration.is_none() => out.push(
                Diagnostic::new(codes::MISSING_ROLLBACK_BUDGET, format!("{at}/rollback"), format!("the rollback of phase `{id}` has no `max_duration:` budget"))
                    .with_help("state how long the rollback may take, e.g. `max_duration: 5m`"),
            ),
            Some(_) => {}
        }
    } else {
        if !backup_taken {
            out.push(
                Diagnostic::new(
                    codes::IRREVERSIBLE_WITHOUT_BACKUP,
                    format!("{at}/reversible"),
                    format!("phase `{id}` is a point of no return, but no step before its end takes a verified backup"),
                )
                .with_help("add a backup step (e.g. `mongo.archive`) to this phase or an earlier one"),
            );
        }
        if phase.restore.is_none() {
            out.push(
                Diagnostic::new(
                    codes::IRREVERSIBLE_WITHOUT_BACKUP,
                    format!("{at}/reversible"),
                    format!("phase `{id}` is a point of no return but has no `restore:` notes"),
                )
                .with_help(
                    "say how to recover anyway, e.g. `restore: restore menu_items from the archive with mongo.restore`",
                ),
            );
        }
    }
}

/// Whether some value passes `criterion` while firing `alert` (same metric); returns one.
fn overlap(c_op: Comparator, c: f64, a_op: Comparator, a: f64) -> Option<f64> {
    let eps = (c.abs().max(a.abs()) * 1e-9).max(1e-9);
    let candidates = [(c + a) / 2.0, c, a, c - eps, c + eps, a - eps, a + eps, c.min(a) - 1.0, c.max(a) + 1.0];
    candidates.into_iter().find(|&v| c_op.holds(v, c) && a_op.holds(v, a))
}

fn contradictions(plan: &Plan, phase: &Phase, at: &str, out: &mut Vec<Diagnostic>) {
    let alerts =
        plan.alerts.iter().filter(|a| a.phases.is_empty() || a.phases.contains(&phase.id)).chain(phase.alerts.iter());
    let alerts: Vec<&Alert> = alerts.filter(|a| a.severity == crate::model::AlertSeverity::Critical).collect();
    for (c, criterion) in phase.criteria.iter().enumerate() {
        let (Some(metric_id), Some(c_op), Some(c_t)) = (&criterion.metric, criterion.op, &criterion.threshold) else {
            continue;
        };
        let Some(metric) = plan.metrics.get(metric_id) else { continue };
        for alert in alerts.iter().filter(|a| &a.metric == metric_id) {
            let (Some(cv), Some(av)) = (c_t.in_unit(metric.unit), alert.threshold.in_unit(metric.unit)) else {
                continue;
            };
            if let Some(v) = overlap(c_op, cv, alert.op, av) {
                out.push(
                    Diagnostic::new(
                        codes::ALERT_CONTRADICTS_CRITERION,
                        format!("{at}/criteria/{c}/threshold"),
                        format!(
                            "criterion `{}` ({metric_id} {} {c_t}) passes at {v} where critical alert `{}` ({metric_id} {} {}) fires",
                            criterion.id,
                            c_op.symbol(),
                            alert.name,
                            alert.op.symbol(),
                            alert.threshold
                        ),
                    )
                    .with_help("make the criterion at least as strict as the alert"),
                );
            }
        }
    }
}

fn timeline(plan: &Plan, out: &mut Vec<Diagnostic>) {
    for (p, dates) in plan.calendar().iter().enumerate() {
        let Some(PhaseDates { start, expected: Some((end, after)), .. }) = dates else { continue };
        if plan.phases[p].schedule.as_ref().and_then(|s| s.start).is_none() {
            continue;
        }
        let (start, end) = (*start, *end);
        let phase = &plan.phases[p];
        let at = format!("/phases/{p}/schedule/start");
        let days = end.days_until(start);
        let what = after.map_or_else(|| "the timeline starts".to_owned(), |id| format!("phase `{id}` ends"));
        if days < 0 {
            out.push(Diagnostic::new(
                codes::TIMELINE_OVERLAP,
                at,
                format!("phase `{}` starts {start}, {} days before {what} ({end})", phase.id, -days),
            ));
        } else if days > 0 && after.is_some() {
            out.push(Diagnostic::new(
                codes::TIMELINE_GAP,
                at,
                format!("phase `{}` starts {start}, {days} days after {what} ({end})", phase.id),
            ));
        }
    }
}

/// How long a phase runs at least, as far as is known offline: its steps' planned waits
/// (steps of one group side by side) then its soak gates, or its longest criterion window
/// (windows end with the phase, overlapping the steps), whichever is longer. Returns the
/// length and an account of it.
pub fn executed_length(phase: &Phase, catalog: &dyn Catalog) -> (std::time::Duration, String) {
    use std::time::Duration as Std;
    let planned = |step: &Step| catalog.planned_duration(&step.uses, &Value::Object(step.with.clone()));
    let mut steps = Std::ZERO;
    let mut stage: (Option<&Id>, Std) = (None, Std::ZERO);
    for step in &phase.steps {
        let wait = planned(step).unwrap_or_default();
        match (&stage.0, &step.group) {
            (Some(group), Some(next)) if *group == next => stage.1 = stage.1.max(wait),
            _ => {
                steps += stage.1;
                stage = (step.group.as_ref(), wait);
            }
        }
    }
    steps += stage.1;
    let soaks: Std = phase.gates.iter().filter_map(|g| if let Gate::Soak(d) = g { Some(d.get()) } else { None }).sum();
    let window = phase.criteria.iter().filter_map(|c| c.window.as_ref().map(|w| w.get())).max().unwrap_or_default();
    let show = |d: Std| humantime::format_duration(d).to_string();
    let account =
        format!("steps {} then soak gates {}; longest criterion window {}", show(steps), show(soaks), show(window));
    ((steps + soaks).max(window), account)
}

/// H345: a phase that runs longer than its schedule, and what it runs into.
fn calendar(plan: &Plan, catalog: &dyn Catalog, out: &mut Vec<Diagnostic>) {
    let dates = plan.calendar();
    for (p, phase) in plan.phases.iter().enumerate() {
        let (Some(schedule), Some(Some(planned))) = (&phase.schedule, dates.get(p)) else { continue };
        let (length, account) = executed_length(phase, catalog);
        let Some(excess) = length.checked_sub(schedule.duration.get()).filter(|e| !e.is_zero()) else { continue };
        let show = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let next = plan.phases.iter().zip(&dates).skip(p + 1).find_map(|(next, d)| Some((next, (*d)?)));
        let runs_into = next
            .filter(|(_, d)| {
                planned.start.days_until(d.start).saturating_mul(86_400)
                    < i64::try_from(length.as_secs()).unwrap_or(i64::MAX)
            })
            .map(|(next, d)| format!(", past the start of phase `{}` ({})", next.id, d.start))
            .unwrap_or_default();
        out.push(
            Diagnostic::new(
                codes::PHASE_OVERRUNS_SCHEDULE,
                format!("/phases/{p}/schedule/duration"),
                format!(
                    "phase `{}` runs at least {} ({account}), {} over its schedule of {} ({} to {}){runs_into}",
                    phase.id,
                    show(length),
                    show(excess),
                    schedule.duration,
                    planned.start,
                    planned.end
                ),
            )
            .with_help("shorten the waits, soak gates or criteria windows, or lengthen the schedule"),
        );
    }
}

fn credentials(value: &Value, pointer: &mut String, out: &mut Vec<Diagnostic>) {
    match value {
        Value::String(text) => {
            if let Some(message) = literal_credential_in_url(text) {
                out.push(Diagnostic::new(codes::LITERAL_CREDENTIAL, pointer.clone(), message));
            } else if let Some((scheme, rest)) = text
                .split_once(' ')
                .filter(|(s, _)| s.eq_ignore_ascii_case("bearer") || s.eq_ignore_ascii_case("basic"))
                && !is_reference(rest.trim())
            {
                out.push(Diagnostic::new(
                    codes::LITERAL_CREDENTIAL,
                    pointer.clone(),
                    format!("literal `{scheme}` credentials; use a `${{ENV_VAR}}` reference"),
                ));
            } else if !argument_secrets(text).is_empty() {
                out.push(argument_credential(pointer.clone()));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                credentials(item, pointer, out);
                // `--password` `hunter2`: a secret-named flag, then its value.
                if let (Some(Value::String(flag)), Value::String(value)) = (i.checked_sub(1).map(|p| &items[p]), item)
                    && argument_secrets(flag).is_empty()
                    && argument_secrets(value).is_empty()
                    && !argument_secrets(&format!("{flag} {value}")).is_empty()
                {
                    out.push(argument_credential(pointer.clone()));
                }
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = pointer.len();
                crate::source::push_token(pointer, key);
                match item {
                    Value::String(text) if is_secret_key(key) && !text.is_empty() && !is_referenced_value(text) => {
                        out.push(
                            Diagnostic::new(codes::LITERAL_CREDENTIAL, pointer.clone(), format!("`{key}` holds a literal secret"))
                                .with_help("replace the value with a `${ENV_VAR}` reference and set the variable where handoff runs"),
                        );
                    }
                    _ => credentials(item, pointer, out),
                }
                pointer.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A credential written into a command argument (`--password=…`, `-p…`, `token=…`).
fn argument_credential(pointer: String) -> Diagnostic {
    Diagnostic::new(codes::LITERAL_CREDENTIAL, pointer, "a command argument carries a literal credential").with_help(
        "pass the secret in the step's `env:` as a `${ENV_VAR}` reference and use the shell variable (`$NAME`) in the command",
    )
}

/// `scheme://user:password@host` with a literal password, anywhere in `text` (a command line
/// may hold several URLs) → a message (without the secret). A `${ENV_VAR}` reference or a
/// shell variable (`$DB_PASSWORD`) is no literal.
fn literal_credential_in_url(text: &str) -> Option<String> {
    text.match_indices("://").find_map(|(at, _)| {
        // Inside a command line, the scheme is the word just before `://`.
        let scheme = text[..at].rsplit(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))).next()?;
        let rest = &text[at + 3..];
        let authority = rest.split(['/', '?', '#', ' ', '"', '\'']).next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        if password.is_empty() || is_reference(password) || password.starts_with('$') {
            return None;
        }
        Some(format!(
            "the `{scheme}://` connection string carries a literal password for user `{}`; use a `${{ENV_VAR}}` reference",
            if is_reference(user) { "<from env>" } else { user }
        ))
    })
}

/// Counts for summaries: phases, steps, criteria, rollbacks.
pub fn counts(plan: &Plan) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    counts.insert("phases", plan.phases.len());
    counts.insert("steps", plan.phases.iter().map(|p| p.steps.len()).sum());
    counts.insert("criteria", plan.phases.iter().map(|p| p.criteria.len()).sum());
    counts.insert("rollbacks", plan.phases.iter().filter(|p| p.rollback.is_some()).count());
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A p99 metric simulated with a p95 measure is refused; with its own percentile, not.
    #[test]
    fn a_latency_measure_takes_the_percentile_its_metric_asks_for() {
        let (_, document) = crate::source::load(include_bytes!("../../../plans/menu-service.yaml")).unwrap();
        let mut plan: Plan = serde_json::from_value(document.value).unwrap();
        let metric = Id("p95_latency".to_owned());
        assert!(other_quantile(&plan, &metric, 95.0, "").is_none());
        if let Some(MetricSource::Prometheus { query, .. }) = plan.metrics.get_mut(&metric).map(|m| &mut m.source) {
            *query = query.replace("histogram_quantile(0.95", "histogram_quantile(0.99");
        }
        let refused = other_quantile(&plan, &metric, 95.0, "").unwrap();
        assert!(refused.message.contains("the 99th percentile") && refused.message.ends_with("`read_percentile: 99`"));
        assert!(other_quantile(&plan, &metric, 99.0, "").is_none());
    }

    #[test]
    fn overlap_finds_values_where_both_hold() {
        use Comparator::*;
        assert_eq!(overlap(Ge, 99.9, Lt, 99.9), None);
        assert!(overlap(Lt, 1.0, Gt, 0.5).is_some());
        assert_eq!(overlap(Lt, 200.0, Gt, 300.0), None);
        assert!(overlap(Lt, 500.0, Gt, 300.0).is_some());
        assert_eq!(overlap(Eq, 0.0, Gt, 0.0), None);
    }

    #[test]
    fn urls_with_literal_passwords_are_found_without_echoing_them() {
        let message = literal_credential_in_url("mongodb://app:hunter2@db:27017/menu").unwrap();
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(literal_credential_in_url("mongodb://app:${DB_PASSWORD}@db/menu"), None);
        assert_eq!(literal_credential_in_url("${MONGO_URI}"), None);
        assert_eq!(literal_credential_in_url("https://example.com/a@b"), None);
        let command = "curl https://example.com/x && mongosh 'mongodb://app:hunter2@db/menu' --quiet";
        let message = literal_credential_in_url(command).unwrap();
        assert!(message.starts_with("the `mongodb://` connection string") && !message.contains("hunter2"), "{message}");
        assert_eq!(literal_credential_in_url(r#"mongosh "mongodb://app:$DB_PASSWORD@db/menu""#), None);
    }
}
