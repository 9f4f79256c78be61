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

#[test]
fn virtual_services_have_istio_shapes_for_each_canary_weight() {
    let (out, _) = render("plans/menu-service.yaml", &[]);
    let dir = out.path().join("virtualservices");
    let canary: Vec<u64> = [10, 25, 50, 75, 100]
        .iter()
        .map(|w| {
            let vs = yaml(&dir.join(format!("switch-reads--p3-canary-reads--{w:03}.yaml")));
            assert_eq!(vs["apiVersion"], "networking.istio.io/v1");
            assert_eq!(vs["kind"], "VirtualService");
            assert_eq!(vs["metadata"]["name"], "menu-read-routing");
            assert_eq!(vs["metadata"]["namespace"], "menu");
            assert!(vs["spec"]["hosts"].as_array().is_some_and(|h| !h.is_empty()));
            let http = vs["spec"]["http"].as_array().unwrap();
            // The header route comes first and forces the new service.
            assert_eq!(http[0]["match"][0]["headers"]["x-canary"]["exact"], "true");
            assert_eq!(http[0]["route"][0]["destination"]["host"], "menu-service.menu.svc.cluster.local");
            assert_eq!(http[0]["route"][0]["weight"], 100);
            let weighted = http[1]["route"].as_array().unwrap();
            let total: u64 = weighted.iter().map(|d| d["weight"].as_u64().unwrap()).sum();
            assert_eq!(total, 100, "weights add up to 100");
            assert!(weighted.iter().all(|d| d["destination"]["host"].is_string()));
            weighted[1]["weight"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(canary, [10, 25, 50, 75, 100]);
    // The rollback routes every read back, without the header route.
    let back = yaml(&dir.join("switch-reads--p3-rb-route-reads-back--100.yaml"));
    assert_eq!(back["spec"]["http"].as_array().unwrap().len(), 1);
    assert_eq!(
        back["spec"]["http"][0]["route"][1]["destination"]["host"],
        "restaurant-service.restaurant.svc.cluster.local"
    );
    assert_eq!(back["spec"]["http"][0]["route"][1]["weight"], 100);
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
    // Thresholds are in the metric's unit: `300ms` on a metric in milliseconds is 300.
    let latency = rules.iter().find(|r| r["alert"] == "MigrationHighLatency").unwrap();
    assert!(latency["expr"].as_str().unwrap().ends_with(") > 300"), "{latency}");
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
