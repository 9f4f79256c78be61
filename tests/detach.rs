//! Runs that sleep through soaks (`--detach-over`), through the binary on the real clock: a
//! plan whose soak is a few seconds exits "waiting" (8) with its lock released, a resume
//! before the time exits again at once, and a resume after it judges the slept window — a
//! Prometheus criterion from a real range query (Debian's `prometheus`, scraping an
//! exporter here), an HTTP JSON criterion inconclusive (its provider cannot answer for the
//! past), never a pass.

mod support;

use std::io::Write as _;
use std::time::Duration;

use support::{handoff, transcript};

/// Serves `errors_ratio 0.5` (OpenMetrics text) and `{"errors": 0.5}` until the process
/// ends; returns its address.
fn exporter() -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("the exporter listens");
    let address = server.server_addr().to_ip().expect("an IP address").to_string();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let body = if request.url() == "/json" { "{\"errors\": 0.5}\n" } else { "errors_ratio 0.5\n" };
            let kind = if request.url() == "/json" { "application/json" } else { "text/plain; version=0.0.4" };
            let header = tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
            let _ = request.respond(tiny_http::Response::from_string(body).with_header(header));
        }
    });
    address
}

/// Waits until Prometheus has scraped the exporter (it applies its targets a few seconds
/// after it starts), so that the soak's window has data.
fn scraped(prometheus: &str) {
    let url = format!("{prometheus}/api/v1/query?query=errors_ratio");
    for _ in 0..300 {
        let body = ureq::get(&url).call().ok().and_then(|r| r.into_body().read_to_string().ok()).unwrap_or_default();
        if body.contains("\"0.5\"") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("prometheus never scraped the exporter");
}

fn plan(prometheus: &str, exporter: &str) -> String {
    format!(
        "apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata: {{name: sleepy}}
environments:
  test: {{endpoints: {{prom: \"{prometheus}\"}}}}
resources:
  prom: {{kind: prometheus, endpoint: prom}}
metrics:
  errors: {{unit: percent, source: {{prometheus: {{resource: prom, query: errors_ratio}}}}}}
  errors_json: {{unit: percent, source: {{http_json: {{url: \"http://{exporter}/json\", pointer: /errors}}}}}}
phases:
  - id: soak
    name: Soak
    steps: [{{id: start, uses: shell.run, with: {{command: [\"true\"]}}}}]
    criteria:
      - {{id: errors-low, description: errors under 1%, metric: errors, op: '<', threshold: 1%, window: 3s, interval: 1s}}
      - {{id: errors-low-json, description: errors under 1% (JSON), metric: errors_json, op: '<', threshold: 1%, window: 3s, interval: 1s}}
    gates: [{{soak: 4s}}]
    rollback: {{max_duration: 1m, steps: []}}
"
    )
}

#[test]
fn a_run_sleeps_through_its_soak_and_judges_the_window_when_resumed_after_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let work = tempfile::tempdir().unwrap();
    let exporter = exporter();
    let prometheus = runtime
        .block_on(handoff_sandbox::Prometheus::scraping(
            &work.path().join("prometheus"),
            std::slice::from_ref(&exporter),
        ))
        .expect("prometheus starts");
    scraped(prometheus.url());
    let path = work.path().join("sleepy.yaml");
    std::fs::File::create(&path).unwrap().write_all(plan(prometheus.url(), &exporter).as_bytes()).unwrap();
    let (plan, state) = (path.to_str().unwrap(), work.path().join("state"));
    let state = state.to_str().unwrap();
    let run = |command: &str| {
        handoff(&[command, plan, "--env", "test", "--allow-shell", "--detach-over", "2s", "--state-dir", state])
    };
    let asleep = run("run");
    assert_eq!(asleep.status.code(), Some(8), "{}", transcript(&asleep));
    assert!(String::from_utf8_lossy(&asleep.stdout).contains("waiting until"), "{}", transcript(&asleep));
    let early = run("resume");
    assert_eq!(early.status.code(), Some(8), "a resume before the time sleeps on: {}", transcript(&early));
    let status = handoff(&["status", plan, "--env", "test", "--state-dir", state]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains(": waiting") && status.contains("next wake-up") && status.contains("not locked"),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(6));
    let woken = run("resume");
    let text = transcript(&woken);
    assert_eq!(woken.status.code(), Some(4), "the JSON criterion cannot be judged for the past: {text}");
    let passed = text.lines().find(|l| l.contains("criterion errors-low:")).unwrap_or_default();
    assert!(passed.contains("Pass") && passed.contains("over the slept window"), "{text}");
    let json = text.lines().find(|l| l.contains("criterion errors-low-json:")).unwrap_or_default();
    assert!(json.contains("Inconclusive") && json.contains("cannot answer for the past"), "{text}");
    runtime.block_on(prometheus.stop());
}

/// A run whose background steps would stop with its process does not detach: it refuses
/// before anything runs and says why.
#[test]
fn a_run_with_background_steps_detaches_only_when_a_worker_hosts_them() {
    let state = tempfile::tempdir().unwrap();
    let uri = std::ffi::OsStr::new("mongodb://127.0.0.1:1/x");
    let env = [("RESTAURANT_MONGO_URI", uri), ("MENU_MONGO_URI", uri), ("MENU_REDIS_PASSWORD", uri)];
    let args = ["run", "plans/menu-service.yaml", "--env", "staging", "--detach-over", "1h", "--state-dir"];
    let mut args = args.to_vec();
    args.push(state.path().to_str().unwrap());
    let refused = support::handoff_with(&args, &env);
    let text = transcript(&refused);
    assert_eq!(refused.status.code(), Some(2), "{text}");
    assert!(text.contains("p1-sync") && text.contains("--background worker"), "{text}");
    assert!(std::fs::read_dir(state.path()).unwrap().next().is_none(), "nothing ran: {text}");
}
