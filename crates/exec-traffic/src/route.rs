//! Where a route's weights go, and the VirtualService a weight becomes.
//!
//! A `mesh` resource's endpoint says where its routing lives:
//! - `kubernetes://<context>/<namespace>/virtualservices/<name>`: a VirtualService in a
//!   cluster, applied with `kubectl apply -f -`;
//! - `file:<path>` (relative to the plan's directory, or absolute): a VirtualService file in
//!   a GitOps checkout, written in place for the GitOps controller to apply;
//! - `http://…` or `https://…`: a router that takes weights as JSON (`GET` answers the
//!   current ones, `PUT` sets them) — the simulator's router, or any router speaking it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use handoff_plan::model::{Id, Resource};
use handoff_render::{Destination, ForcedRoute, Origin, VirtualService};
use serde_json::{Value, json};

use crate::Shift;

/// Where a route's weights are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        return Err(format!("cannot tell the host of service `{service}` from its endpoint `{name}`"));
    }
    Ok(host.to_owned())
}

/// The VirtualService that sends `weight` percent of a shift's traffic to its `to`
/// service.
pub(crate) fn virtual_service(
    shift: &Shift,
    weight: u8,
    target: &Target,
    origin: Origin,
    hosts: (String, String),
) -> VirtualService {
    let (name, namespace) = target.object(&shift.route);
    let (from, to) = hosts;
    let header_route = shift.schedule.header_route.as_ref().map(|h| ForcedRoute {
        header: h.header.clone(),
        value: h.value.clone(),
        host: to.clone(),
    });
    VirtualService {
        hosts: if shift.hosts.is_empty() { vec![name.clone()] } else { shift.hosts.clone() },
        name,
        namespace,
        header_route,
        destinations: vec![Destination { host: from, weight: 100 - weight }, Destination { host: to, weight }],
        origin,
    }
}

/// What a router is sent: weights by service id, and the forced route.
pub(crate) fn router_body(shift: &Shift, weight: u8) -> Value {
    json!({
        "weights": {shift.from.0.clone(): 100 - weight, shift.to.0.clone(): weight},
        "header_route": shift.schedule.header_route.as_ref().map(|h| json!({
            "header": h.header, "value": h.value, "service": shift.to,
        })),
    })
}

/// The weight a VirtualService (as JSON) sends to `host` on its weighted route, if it
/// has one.
pub(crate) fn weight_in(document: &Value, host: &str) -> Option<u64> {
    let routes = document.pointer("/spec/http")?.as_array()?;
    let weighted = routes.iter().rev().find(|r| r.get("match").is_none()).or(routes.last())?;
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
    fn weights_are_read_from_the_weighted_route() {
        let vs = json!({"spec": {"http": [
            {"match": [{"headers": {}}], "route": [{"destination": {"host": "new"}, "weight": 100}]},
            {"route": [{"destination": {"host": "old"}, "weight": 75}, {"destination": {"host": "new"}, "weight": 25}]},
        ]}});
        assert_eq!(weight_in(&vs, "new"), Some(25));
        assert_eq!(weight_in(&vs, "old"), Some(75));
        assert_eq!(weight_in(&vs, "other"), Some(0));
        let single = json!({"spec": {"http": [{"route": [{"destination": {"host": "old"}}]}]}});
        assert_eq!(weight_in(&single, "old"), Some(100));
        assert_eq!(weight_in(&json!({}), "old"), None);
    }
}
