//! The `traffic` executor: move read or write traffic between two services by weight, with
//! a header route that forces the new service.

use handoff_executor::{Action, Executor, params};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref, traffic_schedule};
use handoff_plan::model::{Id, ResourceKind, TrafficSchedule};
use schemars::JsonSchema;
use serde::Deserialize;

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
}

/// The `traffic` executor.
pub struct Traffic;

impl Executor for Traffic {
    fn name(&self) -> &'static str {
        "traffic"
    }

    fn summary(&self) -> &'static str {
        "Shifts traffic between services by weight and header."
    }

    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] = &[Action::new::<Shift>(
            "shift",
            "Shift traffic by a weight schedule; compensation restores the previous weights.",
            Effect::Change,
        )];
        ACTIONS
    }

    fn check(&self, _: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let shift: Shift = match params(with) {
            Ok(shift) => shift,
            Err(issues) => return issues,
        };
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
}
