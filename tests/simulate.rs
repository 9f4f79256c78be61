//! `handoff simulate` through the binary: the menu plan against a real sandbox (two
//! MongoDB-API servers, a Kafka-API broker, Redis) with the application model under load,
//! and a fault scenario that must fail its phase and roll back within budget, losing
//! nothing. The reports (Markdown, JSON, JUnit) are checked for their shape; the
//! Markdown's structure is a snapshot with the measured numbers masked.

mod support;

use serde_json::Value;
use std::time::Duration;

use support::{handoff_within, transcript};

/// Runs a simulation; returns the exit code, the JSON report, the Markdown and the JUnit.
fn simulate(extra: &[&str]) -> (Option<i32>, Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().to_str().unwrap();
    let mut args =
        vec!["simulate", "plans/menu-service.yaml", "--report", report, "--format", "json", "--time-scale", "500ms"];
    args.extend_from_slice(extra);
    // A guard against a hang, not a performance check.
    let output = handoff_within(&args, &[], Duration::from_secs(600));
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|_| panic!("{name}: {}", transcript(&output)))
    };
    let json: Value = serde_json::from_str(&read("report.json")).unwrap();
    (output.status.code(), json, read("report.md"), read("junit.xml"))
}

/// Digits masked, so a snapshot keeps the report's structure, not its measurements.
fn masked(text: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[test]
fn a_scenario_fails_its_phase_and_rolls_back_within_budget_losing_nothing() {
    let (code, json, markdown, junit) = simulate(&["--scenario", "dual-write-failures"]);
    assert_eq!(code, Some(1), "{json:#}");
    assert_eq!(json["expectation"]["met"], true, "{json:#}");
    let phases = json["phases"].as_array().unwrap();
    assert_eq!(phases[0]["status"], "passed", "{json:#}");
    assert_eq!(phases[1]["status"], "rolled back", "{json:#}");
    let failed: Vec<&Value> =
        phases[1]["criteria"].as_array().unwrap().iter().filter(|c| c["verdict"] == "fail").collect();
    assert!(failed.iter().any(|c| c["id"] == "dual-write-success"), "{json:#}");
    let rollback = &phases[1]["rollback"];
    assert!(rollback["seconds"].as_f64().unwrap() <= rollback["budget_seconds"].as_f64().unwrap());
    // Each phase's last comparison (after its repairs, or its rollback's) found nothing
    // missing or different.
    for phase in phases {
        if let Some(check) = phase["integrity"].as_array().unwrap().last() {
            assert_eq!(check["discrepancies"], 0, "{check}");
        }
    }
    assert!(phases[2..].iter().all(|p| p["status"] == "not reached"));
    assert!(markdown.starts_with("<!-- handoff-simulate-report -->"), "{markdown}");
    assert!(junit.contains("<testsuite name=\"shadow-writes\"") && junit.contains("<failure"), "{junit}");
    insta::assert_snapshot!("dual_write_failures", masked(&markdown));
}
