//! `handoff validate` end to end: the example plans are valid, and every fixture of the
//! invalid corpus produces its diagnostics (text and JSON snapshots, with line and column).

mod support;

use std::path::Path;

use support::{handoff, transcript};

/// Validates one fixture in text and JSON form (warnings denied, so every fixture fails);
/// the snapshot holds both transcripts.
fn check(fixture: &Path) -> String {
    let relative = fixture.strip_prefix(support::root()).expect("fixture under the repository");
    let path = relative.to_str().expect("UTF-8 path");
    let text = handoff(&["validate", "--deny-warnings", path]);
    let json = handoff(&["validate", "--deny-warnings", "--format", "json", path]);
    assert_eq!(text.status.code(), json.status.code(), "text and JSON runs agree on the exit code");
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--format json prints JSON");
    format!("{}\n{}", transcript(&text), serde_json::to_string_pretty(&parsed).unwrap())
}

#[test]
fn invalid_fixtures() {
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        let output = check(path);
        assert!(output.starts_with("exit: 1\n") || output.starts_with("exit: 2\n"), "{output}");
        insta::assert_snapshot!(output);
    });
}

#[test]
fn every_plan_in_the_repository_is_valid_without_warnings() {
    let mut plans = vec!["plans/menu-service.yaml".to_owned()];
    for entry in std::fs::read_dir(support::root().join("plans/examples")).unwrap() {
        plans.push(format!("plans/examples/{}", entry.unwrap().file_name().to_string_lossy()));
    }
    assert!(plans.len() >= 3, "the menu plan and at least two examples");
    for plan in &plans {
        let output = handoff(&["validate", "--deny-warnings", plan]);
        assert_eq!(output.status.code(), Some(0), "{}", transcript(&output));
    }
}

/// The schema an editor shows says what lint H208 enforces: a step id is unique in the whole
/// plan, so the same id in two phases is refused.
#[test]
fn the_schema_states_the_step_id_uniqueness_the_lint_enforces() {
    let output = handoff(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).expect("`handoff schema` prints JSON");
    let described = schema["$defs"]["Step"]["properties"]["id"]["description"].as_str().unwrap_or_default();
    assert!(described.contains("unique in the whole plan, across phases"), "{described}");
    let fixture = "tests/fixtures/invalid/h208-duplicate-step-id-across-phases.yaml";
    let across = handoff(&["validate", fixture]);
    assert!(String::from_utf8_lossy(&across.stdout).contains("H208"), "{}", transcript(&across));
}

/// Validating a plan checks the scenarios next to it (`scenarios/<plan name>/*.yaml`, where
/// `handoff simulate --scenario NAME` finds them): their schema, and every phase, resource
/// and service they name against the plan, with file:line diagnostics. The fixture plan is
/// a link to the menu plan.
#[test]
fn scenarios_are_checked_against_their_plan() {
    let output = handoff(&["validate", "tests/fixtures/scenarios/menu-service.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{}", transcript(&output));
    insta::assert_snapshot!(transcript(&output));
    let menu = handoff(&["validate", "plans/menu-service.yaml"]);
    let stdout = String::from_utf8(menu.stdout).unwrap();
    for name in ["broker-outage", "dual-write-failures", "slow-menu-service"] {
        assert!(stdout.contains(&format!("plans/scenarios/menu-service/{name}.yaml: valid\n")), "{stdout}");
    }
}

/// A scenario that does not fit the plan stops `handoff simulate` before anything starts,
/// with the same diagnostics.
#[test]
fn simulate_refuses_a_scenario_that_does_not_fit_the_plan() {
    let scenario = "tests/fixtures/scenarios/scenarios/menu-service/h205-mistyped-service.yaml";
    let output = handoff(&["simulate", "plans/menu-service.yaml", "--scenario", scenario]);
    assert_eq!(output.status.code(), Some(1), "{}", transcript(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("[H205 undefined-resource]") && stdout.contains(&format!("{scenario}:5:40")), "{stdout}");
}

#[test]
fn menu_plan_summary() {
    let output = handoff(&["validate", "--format", "json", "plans/menu-service.yaml"]);
    // One object per line: the plan's, then one per scenario next to it.
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    let summary = &report["summary"];
    assert_eq!(report["valid"], true, "{report:#}");
    assert_eq!(summary["phases"], 5);
    assert!(summary["criteria"].as_u64().unwrap() >= 20, "{summary}");
    assert!(summary["rollbacks"].as_u64().unwrap() >= 4, "{summary}");
}

#[test]
fn github_annotations_point_at_file_line_and_column() {
    let output = handoff(&["validate", "--format", "github", "tests/fixtures/invalid/h201-unknown-executor.yaml"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    assert!(first.starts_with("::error file=tests/fixtures/invalid/h201-unknown-executor.yaml,line="), "{first}");
    assert!(first.contains(",title=H201 unknown-executor::"), "{first}");
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn warnings_fail_only_when_denied() {
    let fixture = "tests/fixtures/invalid/h312-phase-without-criteria.yaml";
    assert_eq!(handoff(&["validate", fixture]).status.code(), Some(0));
    assert_eq!(handoff(&["validate", "--deny-warnings", fixture]).status.code(), Some(1));
}

#[test]
fn literal_secrets_never_reach_any_output() {
    for fixture in std::fs::read_dir(support::root().join("tests/fixtures/invalid")).unwrap() {
        let path = fixture.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap_or_default();
        if !source.contains("s3cr3t") {
            continue;
        }
        let shown = path.strip_prefix(support::root()).unwrap().to_str().unwrap().to_owned();
        for format in ["text", "json", "github"] {
            let output = handoff(&["validate", "--format", format, &shown]);
            let all = transcript(&output);
            assert!(!all.contains("s3cr3t"), "{shown} ({format}) leaks the secret:\n{all}");
            if shown.contains("/h309-") {
                assert!(all.contains("H309"), "{shown} ({format}) reports the literal credential:\n{all}");
            }
        }
    }
}

/// A FIFO would block the read forever and a device never ends: both are refused before
/// they are opened, with exit 2, by `validate` and by a command that loads a plan; a
/// symlink to a plan is read as the plan. (`handoff` fails a test that hangs.)
#[test]
fn only_regular_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("plan.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    for args in [&["validate", fifo][..], &["plan", "show", fifo], &["validate", "/dev/zero"]] {
        let output = handoff(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", transcript(&output));
        let text = transcript(&output);
        assert!(text.contains("not a regular file; pass a plan file"), "{text}");
    }
    assert!(transcript(&handoff(&["validate", fifo])).contains("is a FIFO (named pipe)"));
    let link = dir.path().join("link.yaml");
    std::os::unix::fs::symlink(support::root().join("plans/menu-service.yaml"), &link).unwrap();
    let output = handoff(&["validate", link.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(&output));
}
