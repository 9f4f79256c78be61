//! The stand-in HTTP service: what the plan's HTTP steps, routes and metrics talk to in a
//! simulation.
//!
//! - `/svc/<VAR>/…`: the service an environment variable names (`FLAGS_API_URL`,
//!   `MENU_SERVICE_URL`, …). Writes (`PUT`, `POST`, `PATCH`) keep their JSON body under
//!   their path; a `GET` of that path answers it; any other `GET` answers 200. A `GET` of
//!   a path with `/health` answers
//!   `{"status", "checks": {"mongodb", "redis", "kafka"}}`: `up`, or `down` for a kind of
//!   dependency whose server is out.
//! - `/routes/<route>`: the router's weights (`GET`, `PUT` of `{"weights", "header_route"}`)
//!   that `traffic.shift` drives and the application model reads.
//! - `/measures/<metric>`: what the simulator measured for a plan metric (`{"value": x}`;
//!   404 while there is no value yet).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Shared state of the stand-in service.
#[derive(Debug, Default)]
pub struct State {
    /// Bodies written, by path (`/svc/FLAGS_API_URL/flags/x`).
    pub written: BTreeMap<String, Value>,
    /// Router weights by route id: service id → percent.
    pub routes: BTreeMap<String, Value>,
    /// Measured values by metric id.
    pub measures: BTreeMap<String, f64>,
    /// Kinds of dependency (`mongodb`, `redis`, `kafka`) with a server out.
    pub dependencies_down: Vec<String>,
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

    /// A route's weight for a service (percent), if the route was ever set.
    pub fn weight(&self, route: &str, service: &str) -> Option<f64> {
        self.routes.get(route).and_then(|r| r.pointer(&format!("/weights/{service}"))).and_then(Value::as_f64)
    }
}

/// A running stand-in service.
pub struct StandIn {
    /// Base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// Its state.
    pub state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Starts it on a free loopback port.
    pub fn start() -> std::io::Result<StandIn> {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").map_err(std::io::Error::other)?);
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or_default();
        let state = Arc::new(Mutex::new(State::default()));
        let (serving, shared) = (server.clone(), state.clone());
        let thread = std::thread::Builder::new().name("handoff-standin".to_owned()).spawn(move || {
            for request in serving.incoming_requests() {
                answer(request, &shared);
            }
        })?;
        Ok(StandIn { url: format!("http://127.0.0.1:{port}"), state, server, thread: Some(thread) })
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

fn answer(mut request: tiny_http::Request, state: &Mutex<State>) {
    let path = request.url().split('?').next().unwrap_or_default().to_owned();
    let method = request.method().as_str().to_ascii_uppercase();
    let mut text = String::new();
    let _ = request.as_reader().take(1 << 20).read_to_string(&mut text);
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let (status, reply) = { route(&mut lock(state), &method, &path, body) };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut response = tiny_http::Response::from_string(reply.to_string()).with_status_code(status);
    if let Ok(header) = header {
        response.add_header(header);
    }
    let _ = request.respond(response);
}

fn route(state: &mut State, method: &str, path: &str, body: Value) -> (u16, Value) {
    let writes = matches!(method, "PUT" | "POST" | "PATCH");
    if let Some(route) = path.strip_prefix("/routes/") {
        if writes {
            state.routes.insert(route.to_owned(), body.clone());
            return (200, body);
        }
        return match state.routes.get(route) {
            Some(current) => (200, current.clone()),
            None => (404, json!({"error": "no weights set"})),
        };
    }
    if let Some(metric) = path.strip_prefix("/measures/") {
        return match state.measures.get(metric) {
            Some(value) => (200, json!({"value": value})),
            None => (404, json!({"error": "not measured yet"})),
        };
    }
    if path.starts_with("/svc/") {
        if writes {
            state.written.insert(path.to_owned(), body.clone());
            return (200, body);
        }
        if path.contains("/health") {
            let check = |kind: &str| if state.dependencies_down.iter().any(|d| d == kind) { "down" } else { "up" };
            let status = if state.dependencies_down.is_empty() { "up" } else { "down" };
            let body = json!({"status": status, "checks": {"mongodb": check("mongodb"), "redis": check("redis"), "kafka": check("kafka")}});
            return (if status == "up" { 200 } else { 503 }, body);
        }
        return match state.written.get(path) {
            Some(body) => (200, body.clone()),
            None => (200, json!({"status": "ok"})),
        };
    }
    (404, json!({"error": "unknown path"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_routes_and_measures_round_trip() {
        let mut state = State::default();
        assert_eq!(route(&mut state, "GET", "/svc/MENU/health/ready", Value::Null).1["checks"]["kafka"], "up");
        state.dependencies_down.push("kafka".into());
        assert_eq!(route(&mut state, "GET", "/svc/MENU/health/ready", Value::Null).0, 503);
        state.dependencies_down.clear();
        route(&mut state, "PUT", "/svc/FLAGS/flags/dual_write", json!({"enabled": true}));
        assert!(state.flag("dual_write") && !state.flag("read_only"));
        assert_eq!(route(&mut state, "GET", "/svc/FLAGS/flags/dual_write", Value::Null).1, json!({"enabled": true}));
        assert_eq!(route(&mut state, "GET", "/routes/reads", Value::Null).0, 404);
        route(&mut state, "PUT", "/routes/reads", json!({"weights": {"old": 75, "new": 25}}));
        assert_eq!(state.weight("reads", "new"), Some(25.0));
        assert_eq!(route(&mut state, "GET", "/measures/p95", Value::Null).0, 404);
        state.measures.insert("p95".into(), 12.5);
        assert_eq!(route(&mut state, "GET", "/measures/p95", Value::Null).1, json!({"value": 12.5}));
    }
}
