//! What a live run exports, through the binary: `--metrics-listen` serves `/metrics` and
//! `--pushgateway` pushes to Debian's `prometheus-pushgateway`, and a real Prometheus
//! (Debian's `prometheus`, through the sandbox) scrapes both and answers queries on the
//! series the rendered alert rules read: `handoff_<metric>{plan,environment,phase,step}` (for
//! emitted metrics, and for HTTP JSON metrics handoff polls, with an empty step) and
//! `handoff_phase_active{plan,environment,phase}`.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{handoff_with, transcript};

const PLAN: &str = "tests/fixtures/run/metrics-export.yaml";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(url: &str) -> Option<String> {
    ureq::get(url).call().ok()?.body_mut().read_to_string().ok()
}

/// Polls `probe` until it answers (a bounded wait for servers and scrapes, not a timing
/// assertion).
fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Debian's Pushgateway on a free port; killed when dropped.
struct Pushgateway(Child, String);

impl Pushgateway {
    fn start(dir: &std::path::Path) -> Pushgateway {
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address={address}"))
            .arg(format!("--persistence.file={}", dir.join("pushgateway.db").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway: run .ci/setup, which installs Debian's package");
        let gateway = Pushgateway(child, address);
        eventually("the Pushgateway", || get(&format!("http://{}/-/ready", gateway.1)));
        gateway
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The instant vector `query` returns, once it is not empty.
fn query(prometheus: &str, query: &str) -> Vec<Value> {
    eventually(query, || {
        let url = format!(
            "{prometheus}/api/v1/query?query={}",
            query.replace(' ', "%20").replace('"', "%22").replace('=', "%3D")
        );
        let body: Value = serde_json::from_str(&get(&url)?).ok()?;
        let result = body["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    })
}

fn line_for<'a>(exposition: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    exposition.lines().find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|p| l.contains(p)))
}

#[test]
fn a_pushed_run_is_queryable_in_prometheus_with_its_phase_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Pushgateway::start(dir.path());
    let route = dir.path().join("route.yaml");
    let state = dir.path().join("state");
    let url = format!("http://{}", gateway.1);
    let args = [
        "run",
        PLAN,
        "--env",
        "local",
        "--clock",
        "virtual",
        "--pushgateway",
        &url,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let output = handoff_with(&args, &[("ROUTE_FILE", route.as_os_str())]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(&output));

    // What the Pushgateway holds after the run: the last weight, and no phase active.
    let exposition = get(&format!("{url}/metrics")).unwrap();
    let weight = line_for(
        &exposition,
        "handoff_canary_weight",
        &[r#"phase="shift""#, r#"step="canary""#, r#"plan="metrics-export""#, r#"environment="local""#],
    );
    assert!(weight.is_some_and(|l| l.ends_with(" 100")), "{exposition}");
    for phase in ["shift", "hold"] {
        let active = line_for(&exposition, "handoff_phase_active", &[&format!(r#"phase="{phase}""#)]);
        assert!(active.is_some_and(|l| l.ends_with(" 0")), "{exposition}");
    }

    // A real Prometheus scraping the Pushgateway answers the alert rules' kind of query.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let prometheus = runtime
        .block_on(handoff_sandbox::Prometheus::scraping(
            &dir.path().join("prometheus"),
            std::slice::from_ref(&gateway.1),
        ))
        .unwrap();
    let result = query(prometheus.url(), r#"handoff_canary_weight{plan="metrics-export",environment="local"}"#);
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(
        (result[0]["metric"]["phase"].as_str(), result[0]["metric"]["step"].as_str()),
        (Some("shift"), Some("canary"))
    );
    assert_eq!(result[0]["value"][1], "100");
    runtime.block_on(prometheus.stop());
}

#[test]
fn a_live_run_serves_metrics_with_the_active_phase() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let route = dir.path().join("route.yaml");
    let state = dir.path().join("state");
    let listen = format!("127.0.0.1:{port}");
    // The plan with a metric handoff reads from an HTTP endpoint (exported while polled).
    let plan = dir.path().join("plan.yaml");
    let text = std::fs::read_to_string(support::root().join(PLAN)).unwrap();
    let metric = format!(
        "metrics:\n  index_lag:\n    unit: seconds\n    source: {{http_json: {{url: \"http://{}/status\", pointer: /lag}}}}\n",
        json_server()
    );
    std::fs::write(&plan, text.replacen("metrics:\n", &metric, 1)).unwrap();
    // Real time: the second phase holds for an hour, so the run is live while it is scraped.
    let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["run", plan.to_str().unwrap(), "--env", "local", "--metrics-listen", &listen])
        .args(["--state-dir", state.to_str().unwrap()])
        .current_dir(support::root())
        .env("ROUTE_FILE", &route)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let prometheus = runtime
        .block_on(handoff_sandbox::Prometheus::scraping(&dir.path().join("prometheus"), std::slice::from_ref(&listen)))
        .unwrap();
    let active = query(prometheus.url(), r#"handoff_phase_active{plan="metrics-export",phase="hold"} == 1"#);
    let polled = query(prometheus.url(), r#"handoff_index_lag{plan="metrics-export",phase="hold"}"#);
    let exposition = get(&format!("http://{listen}/metrics")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    runtime.block_on(prometheus.stop());
    assert_eq!(active[0]["metric"]["environment"], "local", "{active:?}");
    assert!(
        line_for(&exposition, "handoff_phase_active", &[r#"phase="shift""#]).is_some_and(|l| l.ends_with(" 0")),
        "{exposition}"
    );
    let weight = line_for(&exposition, "handoff_canary_weight", &[r#"phase="shift""#, r#"step="canary""#]);
    assert!(weight.is_some_and(|l| l.ends_with(" 100.0") || l.ends_with(" 100")), "{exposition}");
    assert_eq!(
        (&polled[0]["value"][1], &polled[0]["metric"]["step"]),
        (&Value::from("42"), &Value::Null),
        "{polled:?}"
    );
}

/// Serves `{"lag": 42}` at any path until the process ends; returns its address.
fn json_server() -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("the JSON server listens");
    let address = server.server_addr().to_ip().expect("an IP address").to_string();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("a valid header");
            let _ = request.respond(tiny_http::Response::from_string("{\"lag\": 42}").with_header(header));
        }
    });
    address
}
