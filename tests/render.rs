//! `handoff render` through the real binary: every artifact of the menu plan as a
//! snapshot, the YAML ones parsed and checked for the API versions and field shapes their
//! consumers (Istio, the Prometheus operator) require, and template errors reported with
//! the template's file and line.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{handoff, transcript};

/// Renders `plan` into a fresh directory; returns it with the transcript.
fn render(plan: &str, extra: &[&str]) -> (tempfile::TempDir, String) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap().to_owned();
    let mut args = vec!["render", plan, "--out", &dir];
    args.extend_from_slice(extra);
    let text = transcript(&handoff(&args)).replace(&dir, "[OUT]");
    (out, text)
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

#[test]
fn menu_plan_artifacts() {
    let (out, text) = render("plans/menu-service.yaml", &[]);
    insta::assert_snapshot!("menu_transcript", text);
    for file in ["runbook.md", "alert-rules.yaml", "timeline.md"] {
        insta::assert_snapshot!(file, std::fs::read_to_string(out.path().join(file)).unwrap());
    }
    let dir = out.path().join("virtualservices");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let name = name.to_str().unwrap();
        insta::assert_snapshot!(format!("vs-{name}"), std::fs::read_to_string(dir.join(name)).unwrap());
    }
}

/// The handoff routes of a rendered VirtualService, by name.
fn routes(vs: &Value) -> Vec<(String, Value)> {
    let http = vs["spec"]["http"].as_array().unwrap();
    http.iter().map(|r| (r["name"].as_str().unwrap().to_owned(), r.clone())).collect()
}

fn weights(route: &Value) -> Vec<(String, u64)> {
    let destinations = route["route"].as_array().unwrap();
    destinations
        .iter()
        .map(|d| (d["destination"]["host"].as_str().unwrap().to_owned(), d["weight"].as_u64().unwrap()))
        .collect()
}

const RESTAURANT: &str = "restaurant-service.restaurant.svc.cluster.local";
const MENU: &str = "menu-service.menu.svc.cluster.local";

#[test]
fn the_read_canary_routes_only_reads_and_the_write_cutover_leaves_it_alone() {
    let (out, _) = render("plans/menu-service.yaml", &[]);
    let dir = out.path().join("virtualservices");
    for w in [10, 25, 50, 75, 100] {
        let vs = yaml(&dir.join(format!("switch-reads--p3-canary-reads--{w:03}.yaml")));
        assert_eq!(vs["apiVersion"], "networking.istio.io/v1");
        assert_eq!(vs["kind"], "VirtualService");
        assert_eq!(vs["spec"]["hosts"], serde_json::json!([RESTAURANT]));
        assert_eq!(names_of(&vs), ["reads-by-header", "reads", "rest"], "the header route first, writes untouched");
        let routes = routes(&vs);
        let reads = serde_json::json!({"method": {"regex": "GET|HEAD"}, "uri": {"prefix": "/menu"}});
        assert_eq!(routes[1].1["match"], serde_json::json!([reads]));
        assert_eq!(routes[0].1["match"][0]["headers"]["x-canary"]["exact"], "true");
        assert_eq!(routes[0].1["match"][0]["method"], reads["method"]);
        assert_eq!(weights(&routes[0].1), [(MENU.to_owned(), 100)]);
        assert_eq!(weights(&routes[1].1), [(RESTAURANT.to_owned(), 100 - w), (MENU.to_owned(), w)]);
        assert_eq!(weights(&routes[2].1), [(RESTAURANT.to_owned(), 100)], "every other request stays");
    }
    // The write cutover lands in the same object, after the read canary's routes.
    let cutover = yaml(&dir.join("cutover-writes--p4-route-writes--100.yaml"));
    assert_eq!(names_of(&cutover), ["reads-by-header", "reads", "writes", "rest"]);
    let routes = routes(&cutover);
    assert_eq!(weights(&routes[1].1), [(RESTAURANT.to_owned(), 0), (MENU.to_owned(), 100)], "reads stay on Menu");
    assert_eq!(routes[2].1["match"][0]["method"]["regex"], "POST|PUT|PATCH|DELETE");
    // The read rollback routes every read back, without the header route.
    let back = yaml(&dir.join("switch-reads--p3-rb-route-reads-back--100.yaml"));
    assert_eq!(names_of(&back), ["reads", "rest"]);
    assert_eq!(weights(&back["spec"]["http"][0]), [(MENU.to_owned(), 0), (RESTAURANT.to_owned(), 100)]);
    // One object per host: every file is the same VirtualService.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let vs = yaml(&entry.unwrap().path());
        assert_eq!(
            (vs["metadata"]["name"].as_str(), vs["metadata"]["namespace"].as_str()),
            (Some("menu-routing"), Some("menu"))
        );
    }
}

fn names_of(vs: &Value) -> Vec<String> {
    routes(vs).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn staging_renders_staging_hosts_and_destinations() {
    let (out, _) = render("plans/menu-service.yaml", &["--env", "staging"]);
    let vs = yaml(&out.path().join("virtualservices/cutover-writes--p4-route-writes--100.yaml"));
    let staging = "restaurant-service.restaurant.staging.svc.cluster.local";
    assert_eq!(vs["spec"]["hosts"], serde_json::json!([staging]));
    let text = serde_json::to_string(&vs).unwrap();
    assert!(!text.contains(RESTAURANT) && !text.contains(MENU), "a production host in staging: {text}");
}

#[test]
fn alert_rules_have_the_prometheus_operator_shape() {
    let (out, _) = render("plans/menu-service.yaml", &[]);
    let rules = yaml(&out.path().join("alert-rules.yaml"));
    assert_eq!(rules["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rules["kind"], "PrometheusRule");
    assert!(rules["metadata"]["name"].is_string());
    let groups = rules["spec"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    let rules = groups[0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 5);
    for rule in rules {
        assert!(rule["alert"].is_string() && rule["expr"].is_string(), "{rule}");
        assert!(!rule["expr"].as_str().unwrap().contains('\n'), "one-line expr: {rule}");
        let severity = rule["labels"]["severity"].as_str().unwrap();
        assert!(["info", "warning", "critical"].contains(&severity), "{severity}");
        if let Some(duration) = rule["for"].as_str() {
            assert!(duration.trim_end_matches(char::is_alphabetic).parse::<u64>().is_ok(), "{duration}");
        }
        assert!(rule["annotations"]["summary"].is_string());
    }
    // Thresholds are in the metric's unit: `300ms` on a metric in milliseconds is 300; each
    // rule is joined to the active-phase series (tests/alert_rules.rs runs them in promtool).
    let latency = rules.iter().find(|r| r["alert"] == "MigrationHighLatency").unwrap();
    let expr = latency["expr"].as_str().unwrap();
    assert!(expr.contains(")) > 300) and on() (handoff_phase_active{"), "{latency}");
}

#[test]
fn other_plans_render_too() {
    for plan in ["plans/examples/kafka-topic-migration.yaml", "plans/examples/cache-cutover.yaml"] {
        let (out, text) = render(plan, &[]);
        assert!(text.starts_with("exit: 0"), "{plan}: {text}");
        assert!(out.path().join("runbook.md").exists());
        yaml(&out.path().join("alert-rules.yaml"));
    }
}

#[test]
fn template_errors_name_the_file_and_line() {
    let templates = tempfile::tempdir().unwrap();
    let dir = templates.path().to_str().unwrap().to_owned();
    let check = |file: &str, text: &str| {
        std::fs::write(templates.path().join(file), text).unwrap();
        let (_, text) = render("plans/menu-service.yaml", &["--templates", &dir]);
        std::fs::remove_file(templates.path().join(file)).unwrap();
        text.replace(&dir, "[TEMPLATES]")
    };
    insta::assert_snapshot!("syntax_error", check("runbook.md.tera", "# {{ plan.metadata.name }}\n{% for x in %}\n"));
    insta::assert_snapshot!("render_error", check("timeline.md.tera", "gantt\n\n{{ plan.no_such_field.name }}\n"));
    insta::assert_snapshot!("unknown_template", check("notes.md.tera", "hello"));
    // A valid override replaces the built-in template.
    std::fs::write(templates.path().join("timeline.md.tera"), "phases: {{ phases | length }}\n").unwrap();
    let (out, text) = render("plans/menu-service.yaml", &["--templates", &dir]);
    assert!(text.starts_with("exit: 0"), "{text}");
    assert_eq!(std::fs::read_to_string(out.path().join("timeline.md")).unwrap(), "phases: 5\n");
}

#[test]
fn render_refuses_to_write_through_a_symbolic_link_in_its_output_directory() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let outside = work.path().join("outside.md");
    std::fs::write(&outside, "keep me").unwrap();
    std::os::unix::fs::symlink(&outside, out.join("runbook.md")).unwrap();
    let output = handoff(&["render", "plans/menu-service.yaml", "--out", out.to_str().unwrap()]);
    let text = transcript(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("is a symbolic link"), "{text}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me", "the link was followed");
}

/// Runs `tests/validators/k8s-models.mjs` (the CRD schemas of Istio and the Prometheus
/// operator, from npm's kubernetes-models) on `objects`; returns its status and output.
fn validate_models(objects: &[Value]) -> (bool, String) {
    use std::io::Write as _;
    let root = support::root().join("tests/validators");
    assert!(root.join("node_modules/@kubernetes-models").exists(), "run .ci/setup (npm ci in tests/validators)");
    let mut child = std::process::Command::new("node")
        .arg(root.join("k8s-models.mjs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    child.stdin.take().unwrap().write_all(Value::Array(objects.to_vec()).to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn every_rendered_virtual_service_and_prometheus_rule_passes_its_crd_schema() {
    let mut objects = Vec::new();
    for (plan, env) in [
        ("plans/menu-service.yaml", "production"),
        ("plans/menu-service.yaml", "staging"),
        ("plans/examples/cache-cutover.yaml", "production"),
        ("plans/examples/kafka-topic-migration.yaml", "production"),
    ] {
        let (out, text) = render(plan, &["--env", env]);
        assert!(text.starts_with("exit: 0"), "{plan}: {text}");
        let mut files = vec![out.path().join("alert-rules.yaml")];
        if let Ok(dir) = std::fs::read_dir(out.path().join("virtualservices")) {
            files.extend(dir.map(|e| e.unwrap().path()));
        }
        for file in files {
            let name = format!("{plan} ({env}): {}", file.file_name().unwrap().to_str().unwrap());
            objects.push(serde_json::json!({"file": name, "object": yaml(&file)}));
        }
    }
    assert!(objects.len() > 10, "{}", objects.len());
    let (ok, report) = validate_models(&objects);
    assert!(ok, "{report}");
    assert_eq!(report.lines().filter(|l| l.starts_with("ok ")).count(), objects.len(), "{report}");
    // The validator finds what it is there to find: a weight that is not a number.
    let mut broken = objects[1]["object"].clone();
    broken["spec"]["http"][0]["route"][0]["weight"] = "ten".into();
    let (ok, report) = validate_models(&[serde_json::json!({"file": "broken", "object": broken})]);
    assert!(!ok && report.contains("must be integer"), "{report}");
}
