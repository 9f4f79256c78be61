//! The rendered PrometheusRule checked by Prometheus' own tool (Debian's `prometheus`
//! package; `.ci/setup` installs it): `promtool check rules`, then `promtool test rules`
//! with unit tests generated from the plan that prove every alert fires in each of its
//! phases and in no other. The input series violate every alert's threshold all the time,
//! so only the phase scoping can keep an alert quiet; a value measured by handoff in an
//! earlier phase (still exported, as a Pushgateway keeps it) is present too and must not fire.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value, json};
use support::{handoff, transcript};

const PLAN: &str = "plans/menu-service.yaml";
const ENV: &str = "production";

/// Series for the menu plan's Prometheus queries, every one past its alert's threshold:
/// 47% errors, 9% write success, p95 ≈ 955 ms, 50% dual-write success, 50% shadow mismatches.
const QUERY_SERIES: &[(&str, &str)] = &[
    (
        r#"istio_requests_total{destination_service_name="menu-service",response_code="500",request_method="POST"}"#,
        "0+600x60",
    ),
    (
        r#"istio_requests_total{destination_service_name="menu-service",response_code="200",request_method="GET"}"#,
        "0+600x60",
    ),
    (
        r#"istio_requests_total{destination_service_name="menu-service",response_code="200",request_method="POST"}"#,
        "0+60x60",
    ),
    (r#"istio_request_duration_milliseconds_bucket{destination_service_name="menu-service",le="100"}"#, "0x60"),
    (r#"istio_request_duration_milliseconds_bucket{destination_service_name="menu-service",le="1000"}"#, "0+60x60"),
    (r#"istio_request_duration_milliseconds_bucket{destination_service_name="menu-service",le="+Inf"}"#, "0+60x60"),
    (r#"restaurant_menu_dual_write_total{menu_result="fulfilled"}"#, "0+60x60"),
    (r#"restaurant_menu_dual_write_total{menu_result="rejected"}"#, "0+60x60"),
    (r#"restaurant_menu_shadow_read_total{result="mismatch"}"#, "0+60x60"),
    (r#"restaurant_menu_shadow_read_total{result="match"}"#, "0+60x60"),
];

/// Values of the metrics handoff measures itself, past their alerts' thresholds.
const MEASURED: &[(&str, &str)] = &[("data_consistency_percent", "99x60"), ("sync_lag_seconds", "600x60")];

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("promtool ({e}): run .ci/setup, which installs Debian's prometheus package"))
}

/// The plan's alerts with the phases each applies to (all phases when the plan says none),
/// read from the plan itself, not from what handoff rendered.
fn alerts_by_phase(plan: &Value) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let ids =
        |v: &Value| v.as_array().into_iter().flatten().map(|p| p.as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let phases: Vec<String> =
        plan["phases"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    let mut alerts: Vec<(String, Vec<String>)> = plan["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let named = ids(&a["phases"]);
            (a["name"].as_str().unwrap().to_owned(), if named.is_empty() { phases.clone() } else { named })
        })
        .collect();
    for phase in plan["phases"].as_array().unwrap() {
        let id = phase["id"].as_str().unwrap().to_owned();
        alerts.extend(
            phase["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| (a["name"].as_str().unwrap().to_owned(), vec![id.clone()])),
        );
    }
    (phases, alerts)
}

/// One promtool test per phase: that phase active, every other one exported as inactive.
fn unit_test(phase: &str, phases: &[String], alerts: &[(String, Vec<String>)], rules: &[Value]) -> Value {
    let mut series: Vec<Value> = QUERY_SERIES.iter().map(|(s, v)| json!({"series": s, "values": v})).collect();
    for other in phases {
        let active = if other == phase { "1x60" } else { "0x60" };
        series.push(json!({"series": format!(r#"handoff_phase_active{{plan="menu-service",environment="{ENV}",phase="{other}"}}"#), "values": active}));
    }
    let earlier = phases.iter().find(|p| *p != phase).unwrap();
    for (metric, values) in MEASURED {
        for measured_in in [phase, earlier.as_str()] {
            series.push(json!({
                "series": format!(r#"handoff_{metric}{{plan="menu-service",environment="{ENV}",phase="{measured_in}",step="s"}}"#),
                "values": values,
            }));
        }
    }
    let tests = alerts.iter().map(|(name, in_phases)| {
        let rule = rules.iter().find(|r| r["alert"] == name.as_str()).unwrap_or_else(|| panic!("no rule for {name}"));
        let mut labels: Map<String, Value> = rule["labels"].as_object().unwrap().clone();
        if rule["expr"].as_str().unwrap().starts_with("(handoff_") {
            for (k, v) in [("plan", "menu-service"), ("environment", ENV), ("phase", phase), ("step", "s")] {
                labels.insert(k.to_owned(), json!(v));
            }
        }
        let expected = if in_phases.iter().any(|p| p == phase) {
            vec![json!({"exp_labels": labels, "exp_annotations": rule["annotations"]})]
        } else {
            vec![]
        };
        json!({"eval_time": "30m", "alertname": name, "exp_alerts": expected})
    });
    json!({"name": format!("phase {phase}"), "interval": "1m", "input_series": series, "alert_rule_test": tests.collect::<Vec<_>>()})
}

#[test]
fn every_alert_is_a_rule_that_fires_in_its_phases_and_no_other() {
    let out = tempfile::tempdir().unwrap();
    let output = handoff(&["render", PLAN, "--out", out.path().to_str().unwrap(), "--env", ENV]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(&output));
    let rendered: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(out.path().join("alert-rules.yaml")).unwrap()).unwrap();
    let rules_file = out.path().join("rules.json");
    std::fs::write(&rules_file, rendered["spec"].to_string()).unwrap();
    let check = promtool(&["check", "rules", rules_file.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr)
    );

    let plan: Value = serde_saphyr::from_str(&std::fs::read_to_string(PLAN).unwrap()).unwrap();
    let (phases, alerts) = alerts_by_phase(&plan);
    let rules = rendered["spec"]["groups"][0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(names.len(), alerts.len(), "one rule per alert: {names:?}");
    assert!(names.contains(&"MigrationDataMismatch"), "{names:?}");
    let tests: Vec<Value> = phases.iter().map(|p| unit_test(p, &phases, &alerts, rules)).collect();
    let test_file = out.path().join("rules.test.json");
    std::fs::write(&test_file, json!({"rule_files": ["rules.json"], "tests": tests}).to_string()).unwrap();
    let run = promtool(&["test", "rules", test_file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&run.stdout) + String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{text}");
    assert!(Path::new(&rules_file).exists());
}
