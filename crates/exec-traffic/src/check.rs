//! What `traffic.shift` checks beyond its schema: the route tells the shift's direction
//! apart and names the host it claims, and no two VirtualServices claim one host (H320).

use std::path::Path;

use handoff_plan::codes;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Plan, ResourceKind, Step};
use serde::Deserialize;

use crate::route::{self, Target};
use crate::{Shift, TrafficDirection};

/// The route's declarations a VirtualService needs: `host:` and the direction's matcher —
/// where the route is one in some environment, or in a simulation, which hands the same
/// VirtualService to its router.
pub(crate) fn route_declarations(shift: &Shift, plan: &Plan) -> Vec<ParamIssue> {
    let Some(route) = plan.resources.get(&shift.route) else { return Vec::new() };
    if !applies_a_virtual_service(shift, plan) && plan.simulation.is_none() {
        return Vec::new();
    }
    let mut issues = Vec::new();
    match &route.host {
        None => issues.push(ParamIssue::invalid(
            "/route",
            format!(
                "route `{}` is a VirtualService (in an environment, or in the simulation) and names no `host:` (the `service` whose host it routes)",
                shift.route
            ),
        )),
        Some(host) => issues.extend(resource_ref(plan, "/route", host, &[ResourceKind::Service])),
    }
    let what = route::direction_name(shift.direction);
    let matcher = route.directions.as_ref().and_then(|d| match shift.direction {
        TrafficDirection::Reads => d.reads.as_ref(),
        TrafficDirection::Writes => d.writes.as_ref(),
    });
    match matcher {
        None => issues.push(ParamIssue::invalid(
            "/direction",
            format!(
                "route `{}` does not say which requests are {what}: add `directions: {{{what}: {{methods: [...], uri_prefixes: [...]}}}}` to it",
                shift.route
            ),
        )),
        Some(m) if m.methods.is_empty() && m.uri_prefixes.is_empty() => issues.push(ParamIssue::invalid(
            "/direction",
            format!("route `{}`: `directions.{what}` matches every request; name `methods:` or `uri_prefixes:`", shift.route),
        )),
        Some(m) => issues.extend(m.uri_prefixes.iter().filter(|p| !p.starts_with('/')).map(|p| {
            ParamIssue::invalid("/direction", format!("route `{}`: URI prefix `{p}` does not start with `/`", shift.route))
        })),
    }
    issues
}

/// Whether the route is a VirtualService (`kubernetes://` or `file:`) in some environment.
fn applies_a_virtual_service(shift: &Shift, plan: &Plan) -> bool {
    plan.environments.values().any(|env| {
        object(shift, plan, &|name| env.endpoints.get(name).cloned()).is_some_and(|t| !matches!(t, Target::Router(_)))
    })
}

fn object(shift: &Shift, plan: &Plan, endpoint: &dyn Fn(&str) -> Option<String>) -> Option<Target> {
    let name = plan.resources.get(&shift.route)?.endpoint.as_ref()?;
    Target::parse(&endpoint(&name.0)?, Path::new("")).ok()
}

/// H320: an earlier `traffic.shift` step routes the same host in a different VirtualService
/// (in some environment). Reported once, on the later step.
pub(crate) fn host_claimed_twice(shift: &Shift, site: &Site<'_>) -> Option<ParamIssue> {
    let plan = site.plan;
    let this = current_step(site)?;
    let earlier = plan
        .all_steps()
        .map(|(_, step)| step)
        .take_while(|step| step.id != this.id)
        .filter(|step| step.uses.is("traffic", "shift"))
        .filter_map(|step| Shift::deserialize(&step.with).ok().map(|s| (step, s)));
    for (step, other) in earlier {
        for (env_name, env) in &plan.environments {
            let endpoint = |name: &str| env.endpoints.get(name).cloned();
            let claim = |s: &Shift| {
                let target = object(s, plan, &endpoint).filter(|t| !matches!(t, Target::Router(_)))?;
                let host = plan.resources.get(&s.route)?.host.as_ref()?;
                Some((target, route::service_host(&plan.resources, &endpoint, host).ok()?))
            };
            let (Some((mine, host)), Some((theirs, their_host))) = (claim(shift), claim(&other)) else { continue };
            if host == their_host && mine != theirs {
                return Some(ParamIssue::new(
                    codes::ROUTE_HOST_CLAIMED_TWICE,
                    "/route",
                    format!(
                        "in environment `{env_name}`, route `{}` claims host `{host}` in another VirtualService than route `{}` of step `{}`; Istio applies only one VirtualService per host: point both routes at one object",
                        shift.route, other.route, step.id
                    ),
                ));
            }
        }
    }
    None
}

fn current_step<'a>(site: &Site<'a>) -> Option<&'a Step> {
    let phase = site.plan.phases.get(site.phase)?;
    if site.rollback { phase.rollback.as_ref()?.steps.get(site.step) } else { phase.steps.get(site.step) }
}
