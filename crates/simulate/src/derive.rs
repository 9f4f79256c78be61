//! The plan as the simulation runs it: one `simulation` environment whose endpoints are the
//! sandbox's servers, the router (a `mesh` route's endpoint is the router's path of the host
//! it claims) and the stand-in service; every `${VAR}` resolved to a stand-in URL or a
//! placeholder (a simulation never reads real secrets); Prometheus resources at the
//! sandbox's Prometheus, where every Prometheus metric keeps its query as written; metrics
//! the simulator measures itself (`simulation.measures`) read from the stand-in; file paths
//! moved into the scratch directory.

use std::collections::BTreeMap;
use std::path::Path;

use handoff_plan::model::{Plan, ResourceKind};
use serde_json::{Value, json};

/// What a `${VAR}` the simulation does not stand in for becomes.
pub const PLACEHOLDER: &str = "simulated";

/// The derived plan and its environment's endpoints.
pub struct Derived {
    /// The plan to run.
    pub plan: Plan,
    /// Endpoint name → value.
    pub endpoints: BTreeMap<String, String>,
}

/// Where the derived plan's resources are: a sandboxed resource's server, the stand-in
/// service's base URL, and the sandbox's Prometheus (when it runs).
pub struct Targets<'a> {
    /// A sandboxed resource's URL.
    pub server: &'a dyn Fn(&str) -> Option<String>,
    /// The stand-in service's base URL.
    pub standin: &'a str,
    /// Where the plan's queries reach the sandbox's Prometheus.
    pub prometheus: Option<&'a str>,
}

/// Derives the plan to run from `plan`, its resources at `targets`; `drill` names a phase
/// whose rollback is drilled (a criterion that fails once its steps are done).
pub fn derive(plan: &Plan, targets: &Targets<'_>, scratch: &Path, drill: Option<&str>) -> Result<Derived, String> {
    let standin = targets.standin;
    let simulation = plan.simulation.as_ref().ok_or("the plan has no `simulation:` section")?;
    let mut endpoints = BTreeMap::new();
    for (id, resource) in &plan.resources {
        let Some(endpoint) = &resource.endpoint else { continue };
        let value = match resource.kind {
            ResourceKind::Mongodb | ResourceKind::Kafka | ResourceKind::Redis => {
                (targets.server)(&id.0).ok_or_else(|| format!("the sandbox has no server for resource `{id}`"))?
            }
            // The router keeps one VirtualService per host, as a cluster does: routes that
            // claim one host share it.
            ResourceKind::Mesh => format!("{standin}/routes/{}", resource.host.as_ref().unwrap_or(id)),
            ResourceKind::Prometheus => {
                targets.prometheus.map_or_else(|| format!("{standin}/svc/{endpoint}"), str::to_owned)
            }
            ResourceKind::Service => format!("{standin}/svc/{endpoint}"),
        };
        // Resources sharing an endpoint share the first one's server, as they would.
        endpoints.entry(endpoint.0.clone()).or_insert(value);
    }
    let mut value = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    let stand_ins: Vec<&str> = simulation.stand_ins.iter().map(String::as_str).collect();
    resolve(&mut value, &|name| {
        if stand_ins.contains(&name) {
            format!("{standin}/svc/{name}")
        } else if handoff_plan::model::HOOK_VARIABLES.contains(&name) {
            // Filled in by the engine when the hook runs.
            format!("${{{name}}}")
        } else {
            PLACEHOLDER.to_owned()
        }
    });
    value["environments"] = json!({"simulation": {"description": "handoff simulate", "endpoints": endpoints}});
    for metric in simulation.measures.keys() {
        if let Some(entry) = value.pointer_mut(&format!("/metrics/{metric}/source")) {
            *entry = json!({"http_json": {"url": format!("{standin}/measures/{metric}"), "pointer": "/value"}});
        }
    }
    if let Some(phase) = drill {
        add_drill(&mut value, phase, standin)?;
    }
    relocate_paths(&mut value, scratch);
    let plan = serde_json::from_value(value).map_err(|e| format!("the derived plan does not load: {e}"))?;
    Ok(Derived { plan, endpoints })
}

/// Adds the drill's metric and, to `phase`, a criterion on it that fails at its first
/// sample (criteria are observed once the phase's steps are done).
fn add_drill(plan: &mut Value, phase: &str, standin: &str) -> Result<(), String> {
    let metric = crate::DRILL_METRIC;
    let metrics = plan.as_object_mut().map(|p| p.entry("metrics").or_insert_with(|| json!({})));
    if let Some(metrics) = metrics.and_then(Value::as_object_mut) {
        metrics.insert(
            metric.to_owned(),
            json!({
                "description": "A rollback drill: 1 while the simulator fails the phase on purpose.",
                "unit": "count",
                "source": {"http_json": {"url": format!("{standin}/measures/{metric}"), "pointer": "/value"}},
            }),
        );
    }
    let phases = plan.get_mut("phases").and_then(Value::as_array_mut).ok_or("the plan has no phases")?;
    let target = phases.iter_mut().find(|p| p["id"] == phase).ok_or_else(|| format!("no phase `{phase}` to drill"))?;
    let criterion = json!({
        "id": "handoff-rollback-drill",
        "description": "Rollback drill: the simulator fails the phase once its steps are done",
        "metric": metric, "op": "==", "threshold": 0,
    });
    match target.get_mut("criteria").and_then(Value::as_array_mut) {
        Some(criteria) => criteria.insert(0, criterion),
        None => target["criteria"] = json!([criterion]),
    }
    Ok(())
}

/// Replaces every `${NAME}` in every string of `value`.
fn resolve(value: &mut Value, lookup: &dyn Fn(&str) -> String) {
    match value {
        Value::String(text) if text.contains("${") => {
            if let Ok(resolved) = handoff_executor::context::expand_with(text, |name| Some(lookup(name))) {
                *text = resolved;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve(v, lookup)),
        Value::Object(map) => map.values_mut().for_each(|v| resolve(v, lookup)),
        _ => {}
    }
}

/// Archive paths of `mongo.archive` / `mongo.restore` steps go under `scratch`.
fn relocate_paths(plan: &mut Value, scratch: &Path) {
    let Some(phases) = plan.get_mut("phases").and_then(Value::as_array_mut) else { return };
    for phase in phases {
        if let Some(steps) = phase.get_mut("steps") {
            relocate_in(steps, scratch);
        }
        if let Some(steps) = phase.pointer_mut("/rollback/steps") {
            relocate_in(steps, scratch);
        }
    }
}

fn relocate_in(steps: &mut Value, scratch: &Path) {
    for step in steps.as_array_mut().into_iter().flatten() {
        let uses = step.get("uses").and_then(Value::as_str).unwrap_or_default();
        if !matches!(uses, "mongo.archive" | "mongo.restore") {
            continue;
        }
        if let Some(path) = step.pointer_mut("/with/path")
            && let Some(text) = path.as_str()
        {
            *path = Value::String(scratch.join(text.trim_start_matches('/')).display().to_string());
        }
    }
}
