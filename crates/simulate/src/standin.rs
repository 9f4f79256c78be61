//! The stand-in HTTP service: what the plan's HTTP steps, routes and metrics talk to in a
//! simulation.
//!
//! - `/svc/<VAR>/…`: the service an environment variable names (`FLAGS_API_URL`,
//!   `MENU_SERVICE_URL`, …). Writes (`PUT`, `POST`, `PATCH`) keep their JSON body under
//!   their path; a `GET` of that path answers it; any other `GET` answers 200. A `GET` of
//!   a path with `/health` answers
//!   `{"status", "checks": {"mongodb", "redis", "kafka"}}`: `up`, or `down` for a kind of
//!   dependency whose server is out.
//! - `/routes/<host>`: the router — the VirtualService (`handoff_render::VirtualService`
//!   as JSON) that `traffic.shift` last applied to the host (`GET`, `PUT`); the application
//!   model routes every request to the host by it (see [`router`](crate::router)).
//! - `/measures/<metric>`: what the simulator measures for a plan metric, measured when
//!   asked (`{"value": x}`; 404 while there is no value).
//! - A path the plan's `simulation.responses` declare answers `GET` with its JSON built
//!   from measures (503 while one of them has no value).
//! - `/prometheus/…`: the sandbox's Prometheus HTTP API, answered once the application's
//!   telemetry is written up to the run clock's time (as if scraped right before the
//!   query), so a query at plan time reads samples of that time, not a forecast.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};

use handoff_plan::simulation::{Response, ResponseField};
use serde_json::{Value, json};

use crate::router::{Request, Routed, Routing};

/// Shared state of the stand-in service.
#[derive(Debug, Default)]
pub struct State {
    /// Bodies written, by path (`/svc/FLAGS_API_URL/flags/x`).
    pub written: BTreeMap<String, Value>,
    /// The VirtualService of each host (a `service` resource's id) that has one.
    pub routes: BTreeMap<String, Routing>,
    /// Kinds of dependency (`mongodb`, `redis`, `kafka`) with a server out.
    pub dependencies_down: Vec<String>,
    /// Declared answers by path: JSON pointer → measured field.
    pub responses: BTreeMap<String, BTreeMap<String, ResponseField>>,
}

impl State {
    /// Whether a feature flag was last written as enabled (`{"enabled": true}`).
    pub fn flag(&self, name: &str) -> bool {
        let suffix = format!("/flags/{name}");
        self.written
            .iter()
            .filter(|(path, _)| path.ends_with(&suffix))
            .any(|(_, body)| body.get("enabled").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Where a request to `host` goes for `roll` in [0, 1): by the host's VirtualService,
    /// or to the host itself when it has none; `None` when no route takes it.
    pub fn route(&self, host: &str, request: &Request<'_>, roll: f64) -> Option<Routed> {
        match self.routes.get(host) {
            Some(routing) => routing.route(request, roll),
            None => Some(Routed { host: host.to_owned(), via: None }),
        }
    }

    /// Sets `host`'s VirtualService from its JSON value; refused when it does not load or
    /// routes another host.
    fn set_route(&mut self, host: &str, body: Value) -> Result<(), String> {
        let service: handoff_render::VirtualService =
            serde_json::from_value(body).map_err(|e| format!("not a VirtualService: {e}"))?;
        if !service.hosts.iter().any(|h| h == host) {
            return Err(format!("VirtualService `{}` routes {:?}, not `{host}`", service.name, service.hosts));
        }
        self.routes.insert(host.to_owned(), Routing::new(service)?);
        Ok(())
    }
}

/// Measures a plan metric by id, when it is asked for.
pub type Measurer = Arc<dyn Fn(&str) -> Option<f64> + Send + Sync>;

/// Answers a Prometheus API request (path and query string): status and JSON body.
pub type Forwarder = Arc<dyn Fn(&str) -> (u16, Value) + Send + Sync>;

/// A running stand-in service.
pub struct StandIn {
    /// Base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// Its state.
    pub state: Arc<Mutex<State>>,
    measurer: Arc<OnceLock<Measurer>>,
    forwarder: Arc<OnceLock<Forwarder>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Starts it on a free loopback port.
    pub fn start() -> std::io::Result<StandIn> {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").map_err(std::io::Error::other)?);
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or_default();
        let state = Arc::new(Mutex::new(State::default()));
        let measurer: Arc<OnceLock<Measurer>> = Arc::default();
        let forwarder: Arc<OnceLock<Forwarder>> = Arc::default();
        let (serving, shared, measuring, forwarding) =
            (server.clone(), state.clone(), measurer.clone(), forwarder.clone());
        // A thread per request: a slow measure (a query to a server that is out) must not
        // hold up flags, routes and health checks.
        let thread = std::thread::Builder::new().name("handoff-standin".to_owned()).spawn(move || {
            for request in serving.incoming_requests() {
                let (shared, measuring, forwarding) = (shared.clone(), measuring.clone(), forwarding.clone());
                let spawned = std::thread::Builder::new().name("handoff-standin-request".to_owned()).spawn(move || {
                    let measure = |metric: &str| measuring.get().and_then(|m| m(metric));
                    let url = request.url().to_owned();
                    match (url.strip_prefix("/prometheus"), forwarding.get()) {
                        (Some(rest), Some(forward)) => {
                            let (status, body) = forward(rest);
                            respond(request, &Reply::new(status, body));
                        }
                        _ => answer(request, &shared, &measure),
                    }
                });
                if let Err(error) = spawned {
                    tracing::warn!("the stand-in service cannot answer a request: {error}");
                }
            }
        })?;
        let url = format!("http://127.0.0.1:{port}");
        Ok(StandIn { url, state, measurer, forwarder, server, thread: Some(thread) })
    }

    /// Answers the plan's declared `responses` (at their URLs' paths under this service).
    pub fn declare(&self, responses: &[Response]) {
        let mut state = lock(&self.state);
        for response in responses {
            let path = response.url.strip_prefix(&self.url).unwrap_or(&response.url).to_owned();
            state.responses.insert(path, response.json.clone());
        }
    }

    /// Where `/measures/…` and declared responses get their values (set once).
    pub fn measure_with(&self, measurer: Measurer) {
        let _ = self.measurer.set(measurer);
    }

    /// Who answers `/prometheus/…` (set once; until then it is an unknown path).
    pub fn forward_prometheus_with(&self, forwarder: Forwarder) {
        let _ = self.forwarder.set(forwarder);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn answer(mut request: tiny_http::Request, state: &Mutex<State>, measure: &dyn Fn(&str) -> Option<f64>) {
    let path = request.url().split('?').next().unwrap_or_default().to_owned();
    let method = request.method().as_str().to_ascii_uppercase();
    let mut text = String::new();
    let _ = request.as_reader().take(1 << 20).read_to_string(&mut text);
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let reply = route(state, &method, &path, body, measure);
    respond(request, &reply);
}

/// Sends `reply` as JSON.
fn respond(request: tiny_http::Request, reply: &Reply) {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut response = tiny_http::Response::from_string(reply.body.to_string()).with_status_code(reply.status);
    if let Ok(header) = header {
        response.add_header(header);
    }
    let _ = request.respond(response);
}

/// A status code and a JSON body.
#[derive(Debug, PartialEq)]
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn new(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }
}

/// Answers one request. The state is not locked while measuring: measures read it.
fn route(state: &Mutex<State>, method: &str, path: &str, body: Value, measure: &dyn Fn(&str) -> Option<f64>) -> Reply {
    let writes = matches!(method, "PUT" | "POST" | "PATCH");
    if let Some(metric) = path.strip_prefix("/measures/") {
        return match measure(metric) {
            Some(value) => Reply::new(200, json!({"value": value})),
            None => Reply::new(
                404,
                json!({"error": format!("no value for `{metric}`: is it under `simulation.measures`? A measure of requests has none until such requests ran")}),
            ),
        };
    }
    let declared = if writes { None } else { lock(state).responses.get(path).cloned() };
    if let Some(fields) = declared {
        let mut body = json!({});
        for (pointer, field) in fields {
            let Some(measured) = measure(&field.metric.0) else {
                return Reply::new(
                    503,
                    json!({"error": format!("`{}` has no value yet (no requests of its kind ran)", field.metric)}),
                );
            };
            set(&mut body, &pointer, field.value(measured));
        }
        return Reply::new(200, body);
    }
    let mut state = lock(state);
    if let Some(host) = path.strip_prefix("/routes/") {
        if writes {
            return match state.set_route(host, body.clone()) {
                Ok(()) => Reply::new(200, body),
                Err(error) => Reply::new(400, json!({"error": error})),
            };
        }
        return match state.routes.get(host) {
            Some(current) => Reply::new(200, serde_json::to_value(&current.service).unwrap_or_default()),
            None => Reply::new(404, json!({"error": format!("no VirtualService routes `{host}`")})),
        };
    }
    if path.starts_with("/svc/") {
        if writes {
            state.written.insert(path.to_owned(), body.clone());
            return Reply::new(200, body);
        }
        if path.contains("/health") {
            let check = |kind: &str| if state.dependencies_down.iter().any(|d| d == kind) { "down" } else { "up" };
            let status = if state.dependencies_down.is_empty() { "up" } else { "down" };
            let body = json!({"status": status, "checks": {"mongodb": check("mongodb"), "redis": check("redis"), "kafka": check("kafka")}});
            return Reply::new(if status == "up" { 200 } else { 503 }, body);
        }
        return match state.written.get(path) {
            Some(body) => Reply::new(200, body.clone()),
            None => Reply::new(200, json!({"status": "ok"})),
        };
    }
    Reply::new(404, json!({"error": "unknown path"}))
}

/// Sets `value` at a JSON pointer, creating the objects on the way.
fn set(body: &mut Value, pointer: &str, value: Value) {
    let mut at = body;
    let tokens: Vec<String> = pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    for (i, token) in tokens.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        let Some(object) = at.as_object_mut() else { return };
        if i + 1 == tokens.len() {
            object.insert(token.clone(), value);
            return;
        }
        at = object.entry(token.clone()).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_routes_and_measures_round_trip() {
        let state = Mutex::new(State::default());
        let measures = Mutex::new(BTreeMap::<String, f64>::new());
        let measure = |metric: &str| measures.lock().unwrap().get(metric).copied();
        let get = |path: &str| route(&state, "GET", path, Value::Null, &measure);
        let put = |path: &str, body: Value| route(&state, "PUT", path, body, &measure);
        assert_eq!(get("/svc/MENU/health/ready").body["checks"]["kafka"], "up");
        lock(&state).dependencies_down.push("kafka".into());
        assert_eq!(get("/svc/MENU/health/ready").status, 503);
        lock(&state).dependencies_down.clear();
        put("/svc/FLAGS/flags/dual_write", json!({"enabled": true}));
        assert!(lock(&state).flag("dual_write") && !lock(&state).flag("read_only"));
        assert_eq!(get("/svc/FLAGS/flags/dual_write").body, json!({"enabled": true}));
        assert_eq!(get("/routes/old").status, 404);
        let vs = json!({"name": "r", "namespace": null, "hosts": ["old"], "origin": {"plan": "p", "phase": "x", "step": "s"},
            "http": [{"name": "rest", "route": [{"destination": {"host": "new"}, "weight": 100}]}]});
        assert_eq!(put("/routes/other", vs.clone()).status, 400);
        assert_eq!(put("/routes/old", json!({"weights": {"old": 75}})).status, 400);
        assert_eq!(put("/routes/old", vs.clone()), Reply::new(200, vs.clone()));
        assert_eq!(get("/routes/old").body, vs);
        let request = Request { method: "GET", uri: "/", headers: &BTreeMap::new() };
        assert_eq!(lock(&state).route("old", &request, 0.5).map(|r| r.host).as_deref(), Some("new"));
        assert_eq!(lock(&state).route("elsewhere", &request, 0.5).map(|r| r.host).as_deref(), Some("elsewhere"));
        assert_eq!(get("/measures/p95").status, 404);
        measures.lock().unwrap().insert("p95".into(), 12.5);
        assert_eq!(get("/measures/p95").body, json!({"value": 12.5}));
    }

    #[test]
    fn declared_responses_are_built_from_measures() {
        let state = Mutex::new(State::default());
        let lag = Mutex::new(None);
        let measure = |metric: &str| (metric == "lag").then(|| *lag.lock().unwrap()).flatten();
        let field = |op: Option<&str>, threshold: Option<f64>| {
            serde_json::from_value::<ResponseField>(json!({"metric": "lag", "op": op, "threshold": threshold})).unwrap()
        };
        lock(&state).responses.insert(
            "/svc/SEARCH/index/status".into(),
            BTreeMap::from([
                ("/lag_seconds".to_owned(), field(None, None)),
                ("/index/up_to_date".to_owned(), field(Some("<"), Some(1.0))),
            ]),
        );
        let get = || route(&state, "GET", "/svc/SEARCH/index/status", Value::Null, &measure);
        assert_eq!(get().status, 503);
        *lag.lock().unwrap() = Some(0.25);
        assert_eq!(get(), Reply::new(200, json!({"lag_seconds": 0.25, "index": {"up_to_date": true}})));
        *lag.lock().unwrap() = Some(4.0);
        assert_eq!(get().body["index"]["up_to_date"], false);
    }
}
