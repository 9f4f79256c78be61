//! The simulator's router: the VirtualService `traffic.shift` applied to a host, and how it
//! routes one request, by Istio's rules — the first HTTP route with a match that holds (a
//! route without matches takes every request), where a match holds when its method, URI and
//! every header hold (exact, prefix, or an RE2 regular expression matching the whole
//! string); then one of the route's destinations by weight. A host without a
//! VirtualService sends every request to itself, and a request no route takes is not
//! delivered (Istio answers 404).

use std::collections::{BTreeMap, HashMap};

use handoff_render::{HttpMatch, HttpRoute, RouteDestination, StringMatch, VirtualService};
use regex::Regex;

/// A request as it reaches the mesh.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method (`GET`).
    pub method: &'a str,
    /// The path.
    pub uri: &'a str,
    /// Headers by name (names compare without case, as HTTP's do).
    pub headers: &'a BTreeMap<String, String>,
}

/// A VirtualService ready to route requests: its value, with every regular expression in
/// it compiled.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The value `traffic.shift` applied.
    pub service: VirtualService,
    regexes: HashMap<String, Regex>,
}

/// Where a request went, and by which route of which VirtualService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The destination host (in a simulation, a `service` resource's id).
    pub host: String,
    /// The route that took the request; `None` when the host has no VirtualService.
    pub via: Option<Via>,
}

/// The route that took a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Via {
    /// Phase of the step that applied the VirtualService last.
    pub phase: String,
    /// That step.
    pub step: String,
    /// The route's name.
    pub route: String,
    /// The weight of the destination picked, in percent.
    pub weight: u8,
    /// Every destination of the route and its weight, in percent.
    pub split: Vec<(String, u8)>,
}

impl Routing {
    /// Compiles the VirtualService's regular expressions; an invalid one is an error that
    /// names it.
    pub fn new(service: VirtualService) -> Result<Routing, String> {
        let mut regexes = HashMap::new();
        let conditions = service.http.iter().flat_map(|r| &r.matches).flat_map(|m| {
            m.method.iter().chain(m.uri.iter()).chain(m.headers.values()).filter_map(|s| match s {
                StringMatch::Regex(text) => Some(text),
                _ => None,
            })
        });
        for text in conditions {
            let regex = Regex::new(&format!("^(?:{text})$"))
                .map_err(|e| format!("VirtualService `{}`: regex `{text}` does not compile: {e}", service.name))?;
            regexes.insert(text.clone(), regex);
        }
        Ok(Routing { service, regexes })
    }

    /// The first route that takes `request`.
    pub fn matched(&self, request: &Request<'_>) -> Option<&HttpRoute> {
        self.service.http.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| self.holds(m, request)))
    }

    /// Where `request` goes for `roll` in [0, 1): a destination of the route that takes it,
    /// by weight; `None` when no route takes it, or its route has no destination with weight.
    pub fn route(&self, request: &Request<'_>, roll: f64) -> Option<Routed> {
        let route = self.matched(request)?;
        let split: Vec<(String, u8)> =
            route.route.iter().map(|d| (d.destination.host.clone(), effective_weight(d, route))).collect();
        let total: f64 = split.iter().map(|(_, w)| f64::from(*w)).sum();
        let mut point = roll.clamp(0.0, 1.0) * total;
        let (host, weight) = split.iter().find(|(_, w)| {
            let hit = point < f64::from(*w);
            point -= f64::from(*w);
            hit
        })?;
        let origin = &self.service.origin;
        let via = Via {
            phase: origin.phase.clone(),
            step: origin.step.clone(),
            route: route.name.clone(),
            weight: *weight,
            split: split.clone(),
        };
        Some(Routed { host: host.clone(), via: Some(via) })
    }

    /// The hosts `direction`'s routes (handoff's routes named by direction: `writes` and
    /// `writes-by-header`) send requests to, with their greatest weight.
    pub fn direction_hosts(&self, direction: &str) -> BTreeMap<String, u8> {
        let mut hosts = BTreeMap::new();
        for route in self.service.http.iter().filter(|r| r.direction() == Some(direction)) {
            for destination in route.route.iter().filter(|d| effective_weight(d, route) > 0) {
                let weight = hosts.entry(destination.destination.host.clone()).or_default();
                *weight = effective_weight(destination, route).max(*weight);
            }
        }
        hosts
    }

    fn holds(&self, m: &HttpMatch, request: &Request<'_>) -> bool {
        let text = |s: &StringMatch, value: &str| match s {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Regex(text) => self.regexes.get(text).is_some_and(|r| r.is_match(value)),
        };
        let header = |name: &String, s: &StringMatch| {
            let value = request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            value.is_some_and(|v| text(s, v))
        };
        m.method.as_ref().is_none_or(|s| text(s, request.method))
            && m.uri.as_ref().is_none_or(|s| text(s, request.uri))
            && m.headers.iter().all(|(name, s)| header(name, s))
    }
}

/// A destination's weight: as written, or 100 for the only destination of a route that
/// gives none (Istio's default).
fn effective_weight(destination: &RouteDestination, route: &HttpRoute) -> u8 {
    if route.route.len() == 1 && destination.weight == 0 { 100 } else { destination.weight }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The menu plan's VirtualService during the read canary at 25%, with a header route.
    fn canary() -> serde_json::Value {
        json!({
            "name": "menu-routing", "namespace": null, "hosts": ["restaurant"],
            "origin": {"plan": "menu", "phase": "switch-reads", "step": "p3-canary-reads"},
            "http": [
                {"name": "reads-by-header", "match": [{"method": {"regex": "GET|HEAD"}, "uri": {"prefix": "/menu"},
                    "headers": {"x-canary": {"exact": "true"}}}],
                 "route": [{"destination": {"host": "menu"}, "weight": 100}]},
                {"name": "reads", "match": [{"method": {"regex": "GET|HEAD"}, "uri": {"prefix": "/menu"}}],
                 "route": [{"destination": {"host": "restaurant"}, "weight": 75},
                           {"destination": {"host": "menu"}, "weight": 25}]},
                {"name": "rest", "route": [{"destination": {"host": "restaurant"}, "weight": 100}]},
            ],
        })
    }

    /// Routes `request` (`METHOD /path [header=value]`) by `vs` for 100 rolls spread over
    /// [0, 1) and compares `<route>: <host> <count>, …` (or `no route`, or an error) with
    /// `expect`.
    fn check(vs: serde_json::Value, request: &str, expect: &str) {
        let service: VirtualService = serde_json::from_value(vs).unwrap();
        let routing = match Routing::new(service) {
            Ok(routing) => routing,
            Err(error) => return assert!(error.starts_with(expect), "{error}"),
        };
        let mut words = request.split_whitespace();
        let (method, uri) = (words.next().unwrap(), words.next().unwrap());
        let headers: BTreeMap<String, String> =
            words.filter_map(|h| h.split_once('=')).map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
        let request = Request { method, uri, headers: &headers };
        let mut counts: BTreeMap<(String, String), u32> = BTreeMap::new();
        for roll in (0..100).map(|n| f64::from(n) / 100.0) {
            if let Some(Routed { host, via }) = routing.route(&request, roll) {
                *counts.entry((via.map(|v| v.route).unwrap_or_default(), host)).or_default() += 1;
            }
        }
        let found: Vec<String> = counts.iter().map(|((route, host), n)| format!("{route}: {host} {n}")).collect();
        let found = if found.is_empty() { "no route".to_owned() } else { found.join(", ") };
        assert_eq!(found, expect, "{request:?}");
    }

    #[test]
    fn the_first_matching_route_takes_the_request_and_its_weights_split_it() {
        check(canary(), "GET /menu/items/1", "reads: menu 25, reads: restaurant 75");
        check(canary(), "HEAD /menu", "reads: menu 25, reads: restaurant 75");
        check(canary(), "GET /menu/items/1 X-Canary=true", "reads-by-header: menu 100");
        check(canary(), "GET /menu/items/1 x-canary=yes", "reads: menu 25, reads: restaurant 75");
        // Writes and other paths fall through to `rest`; a regex matches the whole method.
        check(canary(), "PUT /menu/items/1", "rest: restaurant 100");
        check(canary(), "GETS /menu/items/1", "rest: restaurant 100");
        check(canary(), "GET /orders/1", "rest: restaurant 100");
    }

    #[test]
    fn a_read_route_without_methods_takes_writes_too() {
        let mut vs = canary();
        vs["http"][1]["match"] = json!([{"uri": {"prefix": "/menu"}}]);
        check(vs, "PUT /menu/items/1", "reads: menu 25, reads: restaurant 75");
    }

    #[test]
    fn order_exact_and_regex_uris_and_default_weights() {
        let vs = json!({
            "name": "r", "hosts": ["a"], "origin": {"plan": "p", "phase": "x", "step": "s"},
            "http": [
                {"name": "exact", "match": [{"uri": {"exact": "/health"}}], "route": [{"destination": {"host": "b"}}]},
                {"name": "regex", "match": [{"uri": {"regex": "/items/[0-9]+"}}],
                 "route": [{"destination": {"host": "c"}, "weight": 100}, {"destination": {"host": "a"}, "weight": 0}]},
            ],
        });
        check(vs.clone(), "GET /health", "exact: b 100");
        check(vs.clone(), "GET /health/ready", "no route");
        check(vs.clone(), "DELETE /items/42", "regex: c 100");
        check(vs.clone(), "DELETE /items/42/x", "no route");
        let mut broken = vs;
        broken["http"][1]["match"][0]["uri"] = json!({"regex": "/items/("});
        check(broken, "GET /", "VirtualService `r`: regex `/items/(` does not compile: ");
    }

    #[test]
    fn write_routes_name_the_hosts_that_take_writes() {
        let mut vs = canary();
        assert!(
            Routing::new(serde_json::from_value(vs.clone()).unwrap()).unwrap().direction_hosts("writes").is_empty()
        );
        vs["http"][2] = json!({"name": "writes", "match": [{"method": {"regex": "PUT"}}],
            "route": [{"destination": {"host": "restaurant"}, "weight": 0}, {"destination": {"host": "menu"}, "weight": 100}]});
        let routing = Routing::new(serde_json::from_value(vs).unwrap()).unwrap();
        assert_eq!(routing.direction_hosts("writes"), BTreeMap::from([("menu".to_owned(), 100)]));
        assert_eq!(
            routing.direction_hosts("reads"),
            BTreeMap::from([("menu".to_owned(), 100), ("restaurant".to_owned(), 75)])
        );
    }
}
