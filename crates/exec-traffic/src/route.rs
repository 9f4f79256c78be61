//! Where a route's weights go, and the VirtualService a weight becomes.
//!
//! A `mesh` resource's endpoint says where its routing lives:
//! - `kubernetes://<context>/<namespace>/virtualservices/<name>`: a VirtualService in a
//!   cluster, applied with `kubectl apply -f -`;
//! - `file:<path>` (relative to the plan's directory, or absolute): a VirtualService file in
//!   a GitOps checkout, written in place for the GitOps controller to apply;
//! - `http://…` or `https://…`: a router that holds the VirtualService value as JSON (`GET`
//!   answers the current one, `PUT` sets it) — the simulator's router, which routes every
//!   request of the application model by it. Its hosts are service resource ids.

use std::collections::BTreeMap;
use std::path::PathBuf;

use handoff_plan::model::{Id, RequestMatch, Resource};
use handoff_render::{Destination, HttpMatch, HttpRoute, Origin, RouteDestination, StringMatch, VirtualService};
use serde_json::Value;

use crate::{Shift, TrafficDirection};

/// Where a route's weights are applied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// A VirtualService in a cluster.
    Cluster {
        /// kubectl context.
        context: String,
        /// Namespace.
        namespace: String,
        /// VirtualService name.
        name: String,
    },
    /// A VirtualService file in a GitOps checkout.
    File(PathBuf),
    /// A router speaking JSON weights over HTTP.
    Router(String),
}

impl Target {
    /// Reads an endpoint value (`base` resolves relative file paths).
    pub(crate) fn parse(endpoint: &str, base: &std::path::Path) -> Result<Target, String> {
        if let Some(rest) = endpoint.strip_prefix("kubernetes://") {
            return match rest.split('/').collect::<Vec<_>>().as_slice() {
                [context, namespace, "virtualservices", name]
                    if ![context, namespace, name].iter().any(|s| s.is_empty()) =>
                {
                    Ok(Target::Cluster {
                        context: (*context).to_owned(),
                        namespace: (*namespace).to_owned(),
                        name: (*name).to_owned(),
                    })
                }
                _ => {
                    Err("a `kubernetes://` route is `kubernetes://<context>/<namespace>/virtualservices/<name>`"
                        .to_owned())
                }
            };
        }
        if let Some(path) = endpoint.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "a `file:` route names the VirtualService file (`file:gitops/menu/routing.yaml`)".to_owned()
                );
            }
            return Ok(Target::File(base.join(path)));
        }
        if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            return Ok(Target::Router(endpoint.to_owned()));
        }
        Err("a route endpoint is `kubernetes://<context>/<namespace>/virtualservices/<name>`, `file:<path>` or an http(s) router URL".to_owned())
    }

    /// The VirtualService's name and namespace, as far as the target tells them.
    pub(crate) fn object(&self, route: &Id) -> (String, Option<String>) {
        match self {
            Target::Cluster { namespace, name, .. } => (name.clone(), Some(namespace.clone())),
            Target::File(path) => {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(&route.0);
                (stem.trim_end_matches(".yaml").to_owned(), None)
            }
            Target::Router(_) => (route.0.replace('_', "-"), None),
        }
    }
}

/// The host of a `service` resource: the host of its endpoint URL.
pub(crate) fn service_host(
    resources: &BTreeMap<Id, Resource>,
    endpoint: &dyn Fn(&str) -> Option<String>,
    service: &Id,
) -> Result<String, String> {
    let name = resources
        .get(service)
        .and_then(|r| r.endpoint.as_ref())
        .ok_or_else(|| format!("service `{service}` names no endpoint"))?;
    let url =
        endpoint(&name.0).ok_or_else(|| format!("the environment has no endpoint `{name}` (service `{service}`)"))?;
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() || host.contains("${") {
        return Err(format!(
            "cannot tell the host of service `{service}` from its endpoint `{name}`: a VirtualService names hosts, so \
             the endpoint must be a URL with a literal host (`http://{service}.<namespace>.svc:8080`), not a \
             `${{VAR}}` known only at run time"
        ));
    }
    Ok(host.to_owned())
}

/// What a shift on a VirtualService routes, in one environment.
#[derive(Debug, Clone)]
pub(crate) struct Mesh {
    /// The host the route claims (`spec.hosts`, and where requests no route takes go).
    pub(crate) host: String,
    /// The host of the service traffic moves away from.
    pub(crate) from: String,
    /// The host of the service traffic moves to.
    pub(crate) to: String,
    /// The requests of the shift's direction.
    pub(crate) matcher: RequestMatch,
}

/// The route's facts for a shift; `host` names a `service` resource's host (in a
/// VirtualService, the host of its endpoint: [`service_host`]; in the simulator's router,
/// the service's id).
pub(crate) fn mesh(
    resources: &BTreeMap<Id, Resource>,
    host: &dyn Fn(&Id) -> Result<String, String>,
    shift: &Shift,
) -> Result<Mesh, String> {
    let route = resources.get(&shift.route).ok_or_else(|| format!("route `{}` is not a resource", shift.route))?;
    let claimed = route.host.as_ref().ok_or_else(|| {
        format!("route `{}` names no `host:` (the `service` whose host its VirtualService routes)", shift.route)
    })?;
    let matcher = route
        .directions
        .as_ref()
        .and_then(|d| match shift.direction {
            TrafficDirection::Reads => d.reads.clone(),
            TrafficDirection::Writes => d.writes.clone(),
        })
        .ok_or_else(|| {
            let what = direction_name(shift.direction);
            format!(
                "route `{}` does not say which requests are {what}: add `directions: {{{what}: {{methods: [...], uri_prefixes: [...]}}}}` to it",
                shift.route
            )
        })?;
    Ok(Mesh { host: host(claimed)?, from: host(&shift.from)?, to: host(&shift.to)?, matcher })
}

/// `reads` or `writes`.
pub(crate) fn direction_name(direction: TrafficDirection) -> &'static str {
    match direction {
        TrafficDirection::Reads => "reads",
        TrafficDirection::Writes => "writes",
    }
}

/// The order of handoff's routes in a VirtualService: every header route first (the most
/// specific), then each direction's weighted route, then `rest` (every other request, to
/// the claimed host unchanged). Routes of any other name are not handoff's and are dropped.
const ORDER: [&str; 5] = ["reads-by-header", "writes-by-header", "reads", "writes", "rest"];

/// Whether `route` is part of `direction`'s routes.
fn owned(route: &HttpRoute, direction: TrafficDirection) -> bool {
    route.direction() == Some(direction_name(direction))
}

/// The routes a shift at `weight` owns: its header route (when the schedule has one) and
/// its weighted route, both limited to the direction's requests.
fn part(shift: &Shift, weight: u8, mesh: &Mesh) -> Vec<HttpRoute> {
    let name = direction_name(shift.direction);
    let to = |host: &str, weight: u8| RouteDestination { destination: Destination { host: host.to_owned() }, weight };
    let mut routes: Vec<HttpRoute> = shift
        .schedule
        .header_route
        .iter()
        .map(|h| HttpRoute {
            name: format!("{name}-by-header"),
            matches: matches(&mesh.matcher, Some((&h.header, &h.value))),
            route: vec![to(&mesh.to, 100)],
        })
        .collect();
    routes.push(HttpRoute {
        name: name.to_owned(),
        matches: matches(&mesh.matcher, None),
        route: vec![to(&mesh.from, 100 - weight), to(&mesh.to, weight)],
    });
    routes
}

/// Istio matches for a direction's requests, with a header condition when given.
fn matches(matcher: &RequestMatch, header: Option<(&str, &str)>) -> Vec<HttpMatch> {
    let methods: Vec<&str> = matcher.methods.iter().map(|m| m.as_str()).collect();
    let base = HttpMatch {
        method: (!methods.is_empty()).then(|| StringMatch::Regex(methods.join("|"))),
        uri: None,
        headers: header.map(|(h, v)| (h.to_owned(), StringMatch::Exact(v.to_owned()))).into_iter().collect(),
    };
    if matcher.uri_prefixes.is_empty() {
        return vec![base];
    }
    matcher
        .uri_prefixes
        .iter()
        .map(|prefix| HttpMatch { uri: Some(StringMatch::Prefix(prefix.clone())), ..base.clone() })
        .collect()
}

/// `current` with `direction`'s routes replaced by `own`, in the defined [`ORDER`].
fn merge(current: &[HttpRoute], direction: TrafficDirection, own: Vec<HttpRoute>, host: &str) -> Vec<HttpRoute> {
    let rest = HttpRoute {
        name: "rest".to_owned(),
        matches: Vec::new(),
        route: vec![RouteDestination { destination: Destination { host: host.to_owned() }, weight: 100 }],
    };
    let mut routes: Vec<HttpRoute> = current
        .iter()
        .filter(|r| ORDER[..4].contains(&r.name.as_str()) && !owned(r, direction))
        .cloned()
        .chain(own)
        .chain([rest])
        .collect();
    routes.sort_by_key(|r| ORDER.iter().position(|n| *n == r.name));
    routes
}

/// The HTTP routes of a VirtualService as JSON: a Kubernetes object's `spec.http`, or the
/// `http` of the value the simulator's router holds.
fn http_of(document: &Value) -> Option<&Vec<Value>> {
    document.pointer("/spec/http").or_else(|| document.get("http")).and_then(Value::as_array)
}

/// handoff's routes of a VirtualService (as JSON); routes of other names are left out.
pub(crate) fn routes_of(document: &Value) -> Vec<HttpRoute> {
    let Some(routes) = http_of(document) else { return Vec::new() };
    routes
        .iter()
        .filter_map(|r| serde_json::from_value::<HttpRoute>(r.clone()).ok())
        .filter(|r| ORDER.contains(&r.name.as_str()))
        .collect()
}

/// The VirtualService that results from sending `weight` percent of a shift's requests to
/// its `to` service, on top of the object's `current` routes.
pub(crate) fn virtual_service(
    shift: &Shift,
    weight: u8,
    target: &Target,
    current: &[HttpRoute],
    mesh: &Mesh,
    origin: Origin,
) -> VirtualService {
    let http = merge(current, shift.direction, part(shift, weight, mesh), &mesh.host);
    object(shift, target, mesh, http, origin)
}

/// The VirtualService that results from putting back this shift's own routes as they were
/// in `previous` (none when there were none), keeping every other step's routes of `current`.
pub(crate) fn restored(
    shift: &Shift,
    target: &Target,
    current: &[HttpRoute],
    previous: &[HttpRoute],
    mesh: &Mesh,
    origin: Origin,
) -> VirtualService {
    let own = previous.iter().filter(|r| owned(r, shift.direction)).cloned().collect();
    let http = merge(current, shift.direction, own, &mesh.host);
    object(shift, target, mesh, http, origin)
}

fn object(shift: &Shift, target: &Target, mesh: &Mesh, http: Vec<HttpRoute>, origin: Origin) -> VirtualService {
    let (name, namespace) = target.object(&shift.route);
    VirtualService { name, namespace, hosts: vec![mesh.host.clone()], http, origin }
}

/// The weight a VirtualService (as JSON) sends to `host` on `direction`'s route (or, in an
/// object handoff did not write, on its last route without a match), if it has one.
pub(crate) fn weight_in(document: &Value, direction: TrafficDirection, host: &str) -> Option<u64> {
    let routes = http_of(document)?;
    let named = routes.iter().find(|r| r.get("name").and_then(Value::as_str) == Some(direction_name(direction)));
    let weighted = named.or_else(|| routes.iter().rev().find(|r| r.get("match").is_none())).or(routes.last())?;
    let destinations = weighted.get("route")?.as_array()?;
    let total: u64 = destinations.iter().filter_map(|d| d.get("weight").and_then(Value::as_u64)).sum();
    let found = destinations.iter().find(|d| d.pointer("/destination/host").and_then(Value::as_str) == Some(host));
    match found {
        Some(d) => {
            Some(d.get("weight").and_then(Value::as_u64).unwrap_or(if destinations.len() == 1 { 100 } else { 0 }))
        }
        None if total > 0 || !destinations.is_empty() => Some(0),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_name_their_target() {
        let base = std::path::Path::new("/plans");
        assert_eq!(
            Target::parse("kubernetes://prod/menu/virtualservices/menu-read-routing", base),
            Ok(Target::Cluster { context: "prod".into(), namespace: "menu".into(), name: "menu-read-routing".into() })
        );
        assert_eq!(Target::parse("file:gitops/vs.yaml", base), Ok(Target::File("/plans/gitops/vs.yaml".into())));
        assert_eq!(Target::parse("file:///abs/vs.yaml", base), Ok(Target::File("/abs/vs.yaml".into())));
        assert_eq!(
            Target::parse("http://127.0.0.1:9/routes/r", base),
            Ok(Target::Router("http://127.0.0.1:9/routes/r".into()))
        );
        for bad in [
            "kubernetes://prod/menu/menu-read-routing",
            "file:",
            "menu-read-routing",
            "kubernetes://a//virtualservices/b",
        ] {
            assert!(Target::parse(bad, base).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_known_only_at_run_time_says_what_to_write() {
        let service: Resource =
            serde_json::from_value(json!({"kind": "service", "endpoint": "monolith_http"})).unwrap();
        let resources = BTreeMap::from([(Id("monolith".to_owned()), service)]);
        let host = |value: &str| {
            let value = value.to_owned();
            service_host(&resources, &move |_| Some(value.clone()), &Id("monolith".to_owned()))
        };
        assert_eq!(host("http://monolith.app.svc:8080/api"), Ok("monolith.app.svc".to_owned()));
        let error = host("${MONOLITH_URL}").unwrap_err();
        assert!(error.contains("a URL with a literal host (`http://monolith.<namespace>.svc:8080`)"), "{error}");
    }

    #[test]
    fn weights_are_read_from_the_weighted_route() {
        let vs = json!({"spec": {"http": [
            {"match": [{"headers": {}}], "route": [{"destination": {"host": "new"}, "weight": 100}]},
            {"route": [{"destination": {"host": "old"}, "weight": 75}, {"destination": {"host": "new"}, "weight": 25}]},
        ]}});
        assert_eq!(weight_in(&vs, TrafficDirection::Reads, "new"), Some(25));
        assert_eq!(weight_in(&vs, TrafficDirection::Reads, "old"), Some(75));
        assert_eq!(weight_in(&vs, TrafficDirection::Reads, "other"), Some(0));
        let single = json!({"spec": {"http": [{"route": [{"destination": {"host": "old"}}]}]}});
        assert_eq!(weight_in(&single, TrafficDirection::Reads, "old"), Some(100));
        assert_eq!(weight_in(&json!({}), TrafficDirection::Reads, "old"), None);
    }
}
