//! The `handoff` binary: help, generated artifacts, and bad input.

mod support;

use std::io::Write;

use support::{handoff, transcript};

#[test]
fn help_shows_examples_and_exit_codes() {
    insta::assert_snapshot!(transcript(&handoff(&["--help"])));
    insta::assert_snapshot!(transcript(&handoff(&["validate", "--help"])));
}

#[test]
fn usage_errors_exit_2() {
    insta::assert_snapshot!(transcript(&handoff(&["validate"])));
    insta::assert_snapshot!(transcript(&handoff(&["validate", "--format", "yaml", "plans/menu-service.yaml"])));
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let output = handoff(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains("validate"), "{shell} completion offers `validate`");
    }
}

/// Generated files are committed; each must equal what the binary generates now.
#[test]
fn generated_artifacts_are_up_to_date() {
    for (args, file) in [
        (&["schema"][..], "schemas/plan.schema.json"),
        (&["schema", "scenario"][..], "schemas/scenario.schema.json"),
        (&["docs", "lints"][..], "docs/lints.md"),
        (&["docs", "executors"][..], "docs/executors.md"),
    ] {
        let output = handoff(args);
        assert_eq!(output.status.code(), Some(0));
        let committed = std::fs::read_to_string(support::root().join(file)).unwrap_or_default();
        assert!(
            committed.as_bytes() == output.stdout,
            "{file} is out of date: run `cargo run -- {} > {file}`",
            args.join(" ")
        );
    }
}

#[test]
fn the_schema_accepts_the_menu_plan_as_an_editor_would_see_it() {
    let schema: serde_json::Value = serde_json::from_slice(&handoff(&["schema"]).stdout).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let step = &schema["$defs"]["Step"];
    let uses: Vec<&str> =
        step["properties"]["uses"]["examples"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(uses.contains(&"mongo.copy") && uses.contains(&"traffic.shift"), "{uses:?}");
    assert!(step["properties"]["timeout"].get("description").is_some(), "field docs become descriptions");
    assert_eq!(step["allOf"].as_array().unwrap().len(), uses.len(), "one parameter schema per action");
}

/// A bad input, written to a temporary file, with the exit code it must produce.
fn bad_input(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    let shown = path.to_str().unwrap();
    let output = handoff(&["validate", shown]);
    let text = transcript(&output).replace(shown, name);
    assert!(matches!(output.status.code(), Some(1 | 2)), "{text}");
    assert!(text.contains(name), "the message names the file:\n{text}");
    text
}

#[test]
fn bad_input_gets_a_clear_error_never_a_panic() {
    let deep_flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let deep_block: String = (0..1_000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    let bomb = {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        text
    };
    let mut huge = b"apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\ndescription: \"".to_vec();
    huge.resize(50 * 1024 * 1024, b'x');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.yaml", Vec::new()),
        ("comments-only.yaml", b"# nothing here\n---\n".to_vec()),
        ("latin1.yaml", b"metadata:\n  name: caf\xe9\n".to_vec()),
        ("binary.yaml", b"\x7fELF\x02\x01\x01\x00\x00\x00".to_vec()),
        ("broken.yaml", b"phases: [\n  - id: one\n".to_vec()),
        ("tabs.yaml", b"metadata:\n\tname: x\n".to_vec()),
        ("scalar.yaml", b"just a string\n".to_vec()),
        ("list.yaml", b"- a\n- b\n".to_vec()),
        ("duplicate.yaml", b"kind: MigrationPlan\nkind: MigrationPlan\n".to_vec()),
        ("bomb.yaml", bomb.into_bytes()),
        ("deep-flow.yaml", deep_flow.into_bytes()),
        ("deep-block.yaml", deep_block.into_bytes()),
        ("huge.yaml", huge),
    ];
    let report: Vec<String> = cases.iter().map(|(name, bytes)| bad_input(name, bytes)).collect();
    insta::assert_snapshot!(report.join("\n"));
}

#[test]
fn unreadable_paths_exit_2_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let shown = dir.path().to_str().unwrap();
    let output = handoff(&["validate", shown, "missing.yaml"]);
    let text = transcript(&output).replace(shown, "DIR");
    assert_eq!(output.status.code(), Some(2), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn simulate_refuses_what_it_cannot_run_before_starting_anything() {
    let cases = [
        vec!["simulate", "plans/menu-service.yaml", "--scenario", "no-such-scenario"],
        vec!["simulate", "plans/menu-service.yaml", "--drill-rollbacks", "no-such-phase"],
        vec!["simulate", "plans/menu-service.yaml", "--drill-rollbacks", "read-only-sync,decommission"],
        vec!["simulate", "plans/examples/settings-handoff.yaml"],
    ];
    let mut shown = Vec::new();
    for args in cases {
        let output = handoff(&args);
        let text = transcript(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        shown.push(format!("$ handoff {}\n{text}", args.join(" ")));
    }
    insta::assert_snapshot!(shown.join("\n"));
}
