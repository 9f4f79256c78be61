//! The `traffic` executor: move read or write traffic between two services by weight, with
//! a header route that forces the new service.
//!
//! Weights reach the traffic through the route's endpoint (see [`route`](crate::route)): a
//! VirtualService applied with kubectl, a file in a GitOps checkout, or a router's JSON
//! API (the simulator's). The VirtualService comes from the `virtualservice.yaml.tera`
//! template that `handoff render` uses too.

use std::sync::OnceLock;

use handoff_executor::{Action, Compensation, Context, Declaration, Executor, StepError, StepOutput};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref, traffic_schedule};
use handoff_plan::model::{Id, Plan, ResourceKind, TrafficSchedule};
use handoff_render::{Origin, Templates, VirtualService};
use schemars::JsonSchema;
use serde::Deserialize;

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
    /// Drive the simulator's router (simulation only).
    Simulated,
}

/// Which traffic moves.
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
    /// Which traffic moves.
    #[serde(default)]
    pub direction: TrafficDirection,
    /// Weights step by step (10 → 25 → 50 → 75 → 100), each held for its soak time.
    pub schedule: TrafficSchedule,
    /// How the weights are applied.
    #[serde(default)]
    pub backend: Backend,
    /// Hosts the VirtualService routes (`spec.hosts`); the VirtualService's name when
    /// empty.
    #[serde(default)]
    pub hosts: Vec<String>,
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
pub fn virtual_services(
    plan: &Plan,
    endpoint: &dyn Fn(&str) -> Option<String>,
    base: &std::path::Path,
) -> Result<Vec<(String, VirtualService)>, String> {
    let mut out = Vec::new();
    for (phase, step) in plan.all_steps().filter(|(_, step)| step.uses.is("traffic", "shift")) {
        let shift = Shift::deserialize(&step.with).map_err(|e| format!("step `{}`: {e}", step.id))?;
        let at = |e: String| format!("step `{}/{}`: {e}", phase.id, step.id);
        let route = plan.resources.get(&shift.route).and_then(|r| r.endpoint.as_ref());
        let value = route
            .and_then(|name| endpoint(&name.0))
            .ok_or_else(|| at(format!("route `{}` has no endpoint", shift.route)))?;
        let target = route::Target::parse(&value, base).map_err(at)?;
        if matches!(target, route::Target::Router(_)) {
            continue;
        }
        let host = |service: &Id| route::service_host(&plan.resources, endpoint, service).map_err(at);
        let hosts = (host(&shift.from)?, host(&shift.to)?);
        for weight in shift.schedule.steps.iter().map(|s| s.weight) {
            let origin =
                Origin { plan: plan.metadata.name.0.clone(), phase: phase.id.0.clone(), step: step.id.0.clone() };
            let service = route::virtual_service(&shift, weight, &target, origin, hosts.clone());
            out.push((format!("{}--{}--{weight:03}.yaml", phase.id, step.id), service));
        }
    }
    Ok(out)
}

impl Action for Traffic {
    type Params = Shift;
    type Output = ShiftOutput;
    const DECLARATION: Declaration = Declaration::new::<Shift>(
        "shift",
        "Shift traffic by a weight schedule; compensation restores the previous weights.",
        Effect::Change,
    )
    .resumable()
    .emitting(&["traffic_weight"]);

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
        issues
    }

    fn describe(&self, shift: &Shift) -> String {
        let weights: Vec<String> = shift.schedule.steps.iter().map(|s| format!("{}% ({})", s.weight, s.soak)).collect();
        let header = shift
            .schedule
            .header_route
            .as_ref()
            .map(|h| format!("; `{}: {}` always goes to `{}`", h.header, h.value, shift.to))
            .unwrap_or_default();
        let what = match shift.direction {
            TrafficDirection::Reads => "reads",
            TrafficDirection::Writes => "writes",
        };
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
