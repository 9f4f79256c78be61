//! The `traffic` executor: move read or write traffic between two services by weight, with
//! a header route that forces the new service.
//!
//! Weights reach the traffic through the route's endpoint (see [`route`](crate::route)): a
//! VirtualService applied with kubectl, a file in a GitOps checkout, or the same
//! VirtualService value handed to the simulator's router as JSON. The VirtualService is
//! rendered from the `virtualservice.yaml.tera` template that `handoff render` uses too.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use handoff_executor::{Action, Compensation, Context, Declaration, Executor, StepError, StepOutput};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref, traffic_schedule};
use handoff_plan::model::{Id, Phase, Plan, ResourceKind, Step, TrafficSchedule};
use handoff_render::{HttpRoute, Origin, Templates, VirtualService};
use schemars::JsonSchema;
use serde::Deserialize;

mod check;
mod route;
mod run;

pub use run::ShiftOutput;

/// How weights reach the traffic.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Render an Istio VirtualService and apply it (`kubectl apply`), write it to a GitOps
    /// directory, or print it (dry run).
    #[default]
    Istio,
    /// Hand the VirtualService value to the simulator's router (simulation only), which
    /// routes the application model's requests by it.
    Simulated,
}

/// Which requests move: on a VirtualService, the ones the route's `directions:` says are
/// reads (or writes); every other request keeps its route.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    /// Reads.
    #[default]
    Reads,
    /// Writes.
    Writes,
}

/// `traffic.shift`: move traffic from one service to another.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// The `mesh` resource (route) that splits the traffic.
    pub route: Id,
    /// The `service` traffic moves away from.
    pub from: Id,
    /// The `service` traffic moves to.
    pub to: Id,
    /// Which requests move (the route's `directions:` tells them apart).
    #[serde(default)]
    pub direction: TrafficDirection,
    /// Weights step by step (10 → 25 → 50 → 75 → 100), each held for its soak time.
    pub schedule: TrafficSchedule,
    /// How the weights are applied.
    #[serde(default)]
    pub backend: Backend,
}

/// The `traffic` executor.
pub fn executor() -> Executor {
    Executor::new("traffic", "Shifts traffic between services by weight and header.").with(Traffic::default())
}

/// `traffic.shift`.
#[derive(Default)]
pub struct Traffic {
    templates: OnceLock<Result<Templates, String>>,
}

impl Traffic {
    fn templates(&self) -> Result<&Templates, StepError> {
        self.templates
            .get_or_init(|| Templates::load(None).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| StepError::Failed(e.clone()))
    }
}

/// The VirtualServices a plan's `traffic.shift` steps apply, one per weight, with file
/// names (`<phase>--<step>--<weight>.yaml`), for `handoff render`. Endpoints are looked up
/// with `endpoint` (an environment's values as written); steps whose route is not a
/// VirtualService (a router URL) are left out.
///
/// Each object holds the routes of every step that routes its host, merged as a run would
/// merge them: the steps of each phase in order, each on the routes the steps before it
/// left; a rollback step on the routes its phase's steps left (a rollback does not carry
/// into the next phase).
pub fn virtual_services(
    plan: &Plan,
    endpoint: &dyn Fn(&str) -> Option<String>,
    base: &std::path::Path,
) -> Result<Vec<(String, VirtualService)>, String> {
    let mut out = Vec::new();
    let mut live = BTreeMap::new();
    for phase in &plan.phases {
        for step in &phase.steps {
            render_step(plan, phase, step, endpoint, base, &mut live, &mut out)?;
        }
        let mut after_rollback = live.clone();
        for step in phase.rollback.iter().flat_map(|r| &r.steps) {
            render_step(plan, phase, step, endpoint, base, &mut after_rollback, &mut out)?;
        }
    }
    Ok(out)
}

/// Renders one step's weights on the routes `live` holds per object, and leaves its last
/// weight's routes there.
fn render_step(
    plan: &Plan,
    phase: &Phase,
    step: &Step,
    endpoint: &dyn Fn(&str) -> Option<String>,
    base: &std::path::Path,
    live: &mut BTreeMap<route::Target, Vec<HttpRoute>>,
    out: &mut Vec<(String, VirtualService)>,
) -> Result<(), String> {
    if !step.uses.is("traffic", "shift") {
        return Ok(());
    }
    let shift = Shift::deserialize(&step.with).map_err(|e| format!("step `{}`: {e}", step.id))?;
    let at = |e: String| format!("step `{}/{}`: {e}", phase.id, step.id);
    let route = plan.resources.get(&shift.route).and_then(|r| r.endpoint.as_ref());
    let value = route
        .and_then(|name| endpoint(&name.0))
        .ok_or_else(|| at(format!("route `{}` has no endpoint", shift.route)))?;
    let target = route::Target::parse(&value, base).map_err(at)?;
    if matches!(target, route::Target::Router(_)) {
        return Ok(());
    }
    let host = |service: &Id| route::service_host(&plan.resources, endpoint, service);
    let mesh = route::mesh(&plan.resources, &host, &shift).map_err(at)?;
    let current = live.entry(target.clone()).or_default();
    for weight in shift.schedule.steps.iter().map(|s| s.weight) {
        let origin = Origin { plan: plan.metadata.name.0.clone(), phase: phase.id.0.clone(), step: step.id.0.clone() };
        let service = route::virtual_service(&shift, weight, &target, current, &mesh, origin);
        *current = service.http.clone();
        out.push((format!("{}--{}--{weight:03}.yaml", phase.id, step.id), service));
    }
    Ok(())
}

impl Action for Traffic {
    type Params = Shift;
    type Output = ShiftOutput;
    const DECLARATION: Declaration = Declaration::new::<Shift>(
        "shift",
        "Shift one direction of a route's requests (its `mesh` resource's `directions:`) by a weight schedule, in the one VirtualService of its host (`kubernetes://<context>/<namespace>/virtualservices/<name>`, `file:<path>`) or a router URL (simulation).",
        Effect::Change,
    )
    .resumable()
    .emitting(&["traffic_weight"])
    .undone_by("undone before the rollback steps: its own routes are restored in the VirtualService");

    fn check(&self, shift: &Shift, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let mut issues: Vec<ParamIssue> =
            resource_ref(plan, "/route", &shift.route, &[ResourceKind::Mesh]).into_iter().collect();
        issues.extend(resource_ref(plan, "/from", &shift.from, &[ResourceKind::Service]));
        issues.extend(resource_ref(plan, "/to", &shift.to, &[ResourceKind::Service]));
        if shift.from == shift.to {
            issues.push(ParamIssue::invalid("/to", format!("traffic moves from `{}` to itself", shift.from)));
        }
        issues.extend(traffic_schedule(&shift.schedule, "/schedule"));
        issues.extend(check::route_declarations(shift, plan));
        issues.extend(check::host_claimed_twice(shift, site));
        issues
    }

    fn planned_duration(&self, shift: &Shift) -> Option<std::time::Duration> {
        Some(shift.schedule.steps.iter().map(|step| step.soak.get()).sum())
    }

    fn describe(&self, shift: &Shift) -> String {
        let weights: Vec<String> = shift.schedule.steps.iter().map(|s| format!("{}% ({})", s.weight, s.soak)).collect();
        let header = shift
            .schedule
            .header_route
            .as_ref()
            .map(|h| format!("; `{}: {}` always goes to `{}`", h.header, h.value, shift.to))
            .unwrap_or_default();
        let what = route::direction_name(shift.direction);
        format!(
            "send {what} on `{}` from `{}` to `{}`: {}{header}",
            shift.route,
            shift.from,
            shift.to,
            weights.join(" → ")
        )
    }

    async fn execute(&self, shift: Shift, cx: &Context) -> Result<StepOutput<ShiftOutput>, StepError> {
        run::shift(&shift, cx, self.templates()?).await.map(StepOutput::new)
    }

    async fn compensate(&self, shift: Shift, output: ShiftOutput, cx: &Context) -> Result<Compensation, StepError> {
        run::undo(&shift, &output, cx, self.templates()?).await
    }
}
