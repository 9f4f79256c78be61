//! Runs that sleep through soaks (`--detach-over`), through the binary on the real clock: a
//! plan whose soak is a few seconds exits "waiting" (8) with its lock released, a resume
//! before the time exits again at once, and a resume after it judges the slept window — a
//! Prometheus criterion from a real range query (Debian's `prometheus`, scraping an
//! exporter here), an HTTP JSON criterion inconclusive (its provider cannot answer for the
//! past), never a pass. A `wait.soak` step is slept through the same way, the phase's
//! alerts judged over the slept wait before the steps after it run.

mod support;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::{handoff, transcript};

/// Serves `errors_ratio` (OpenMetrics text) and `{"errors": …}` with the value in `ratio`
/// (an `f64`'s bits) until the process ends; returns its address.
fn exporter(ratio: Arc<AtomicU64>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("the exporter listens");
    let address = server.server_addr().to_ip().expect("an IP address").to_string();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let value = f64::from_bits(ratio.load(Ordering::SeqCst));
            let body = if request.url() == "/json" {
                format!("{{\"errors\": {value}}}\n")
            } else {
                format!("errors_ratio {value}\n")
            };
            let kind = if request.url() == "/json" { "application/json" } else { "text/plain; version=0.0.4" };
            let header = tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
            let _ = request.respond(tiny_http::Response::from_string(body).with_header(header));
        }
    });
    address
}

/// Waits until Prometheus has scraped `errors_ratio` at `value` (it applies its targets a
/// few seconds after it starts), so that the window has data.
fn scraped(prometheus: &str, value: &str) {
    let url = format!("{prometheus}/api/v1/query?query=errors_ratio");
    for _ in 0..300 {
        let body = ureq::get(&url).call().ok().and_then(|r| r.into_body().read_to_string().ok()).unwrap_or_default();
        if body.contains(&format!("\"{value}\"")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("prometheus never scraped errors_ratio {value}");
}

/// The start of a plan named `name` whose metric `errors` is `errors_ratio` on the
/// Prometheus at `prometheus` (more metrics may follow).
fn head(name: &str, prometheus: &str) -> String {
    format!(
        "apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata: {{name: {name}}}
environments:
  test: {{endpoints: {{prom: \"{prometheus}\"}}}}
resources:
  prom: {{kind: prometheus, endpoint: prom}}
metrics:
  errors: {{unit: percent, source: {{prometheus: {{resource: prom, query: errors_ratio}}}}}}
"
    )
}

/// Debian's Prometheus (under `work`) scraping `exporter`, once it has scraped
/// `errors_ratio` at `value`.
fn scraping(
    runtime: &tokio::runtime::Runtime,
    work: &std::path::Path,
    exporter: &str,
    value: &str,
) -> handoff_sandbox::Prometheus {
    let targets = [exporter.to_owned()];
    let prometheus = runtime
        .block_on(handoff_sandbox::Prometheus::scraping(&work.join("prometheus"), &targets))
        .expect("prometheus starts");
    scraped(prometheus.url(), value);
    prometheus
}

fn plan(prometheus: &str, exporter: &str) -> String {
    let head = head("sleepy", prometheus);
    format!(
        "{head}  errors_json: {{unit: percent, source: {{http_json: {{url: \"http://{exporter}/json\", pointer: /errors}}}}}}
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
    let exporter = exporter(Arc::new(AtomicU64::new(0.5f64.to_bits())));
    let prometheus = scraping(&runtime, work.path(), &exporter, "0.5");
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

/// A phase that waits (`wait.soak`) between two steps, with an alert on `errors` above
/// 0.1% that rolls back: the step after the wait appends to `marker`.
fn waiting_plan(prometheus: &str, marker: &str) -> String {
    let head = head("waits", prometheus);
    format!(
        "{head}phases:
  - id: canary
    name: Canary
    steps:
      - {{id: start, uses: shell.run, with: {{command: [\"true\"]}}}}
      - {{id: hold, uses: wait.soak, with: {{duration: 6s}}}}
      - {{id: after, uses: shell.run, with: {{command: [sh, -c, \"echo ran >> {marker}\"]}}}}
    alerts:
      - {{name: ErrorsHigh, description: errors over 0.1%, metric: errors, op: '>', threshold: 0.1%, severity: critical, action: rollback}}
    rollback: {{max_duration: 1m, steps: []}}
"
    )
}

/// Runs `waiting_plan` with `--detach-over 2s` through its wait, errors at 0 until the run
/// sleeps, at `asleep` (a ratio) for a while in its wait, and at 0 again before it wakes
/// (so that only the slept window shows them): the run exits "waiting", a resume before
/// the wait's end exits again at once, and `status` says when it wakes. Returns how the
/// resume after the wait ended and the marker's content.
fn sleep_through_the_wait(asleep: f64) -> (std::process::Output, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ratio = Arc::new(AtomicU64::new(0f64.to_bits()));
    let exporter = exporter(ratio.clone());
    let prometheus = scraping(&runtime, work.path(), &exporter, "0");
    let marker = work.path().join("after.txt");
    let path = work.path().join("waits.yaml");
    std::fs::write(&path, waiting_plan(prometheus.url(), marker.to_str().unwrap())).unwrap();
    let (plan, state) = (path.to_str().unwrap(), work.path().join("state"));
    let state = state.to_str().unwrap();
    let run = |command: &str| {
        handoff(&[command, plan, "--env", "test", "--allow-shell", "--detach-over", "2s", "--state-dir", state])
    };
    let sleeping = run("run");
    let text = transcript(&sleeping);
    assert_eq!(sleeping.status.code(), Some(8), "{text}");
    assert!(text.contains("hold: the run sleeps through its wait"), "{text}");
    assert!(!marker.exists(), "the step after the wait ran before it: {text}");
    ratio.store(asleep.to_bits(), Ordering::SeqCst);
    scraped(prometheus.url(), &asleep.to_string());
    let early = run("resume");
    assert_eq!(early.status.code(), Some(8), "a resume before the time sleeps on: {}", transcript(&early));
    let status = handoff(&["status", plan, "--env", "test", "--state-dir", state]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains(": waiting") && status.contains("next wake-up"), "{status}");
    // Errors go back to 0 before the run wakes: only the slept window shows them.
    std::thread::sleep(Duration::from_secs(2));
    ratio.store(0f64.to_bits(), Ordering::SeqCst);
    scraped(prometheus.url(), "0");
    std::thread::sleep(Duration::from_secs(4));
    let woken = run("resume");
    runtime.block_on(prometheus.stop());
    (woken, std::fs::read_to_string(&marker).unwrap_or_default())
}

#[test]
fn a_run_sleeps_through_a_wait_step_and_goes_on_after_it() {
    let (woken, marker) = sleep_through_the_wait(0.0);
    assert_eq!(woken.status.code(), Some(0), "{}", transcript(&woken));
    assert_eq!(marker, "ran\n", "the step after the wait ran once: {}", transcript(&woken));
}

#[test]
fn an_alert_that_fired_while_the_run_slept_through_a_wait_rolls_the_phase_back() {
    let (woken, marker) = sleep_through_the_wait(0.5);
    let text = transcript(&woken);
    assert_eq!(woken.status.code(), Some(3), "{text}");
    assert!(text.contains("ErrorsHigh"), "the alert is named: {text}");
    assert_eq!(marker, "", "the step after the wait never ran: {text}");
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
