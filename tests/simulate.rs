//! `handoff simulate` through the binary: the menu plan against a real sandbox (two
//! MongoDB-API servers, a Kafka-API broker, Redis) with the application model under load —
//! every phase passing, and each fault scenario failing its phase and rolling back within
//! budget — losing no acknowledged write and misrouting none; and a small plan whose read
//! canary also routes writes, failing with the misrouted writes named. A query that selects
//! nothing stops a simulation, naming the query. The reports (Markdown, JSON, JUnit) are
//! checked for their shape; the Markdown's structure is a snapshot with the measured numbers
//! masked.

mod support;

use serde_json::Value;
use std::time::Duration;

use support::{handoff_within, transcript};

/// Runs a simulation of the menu plan; returns the exit code, the JSON report, the
/// Markdown and the JUnit.
fn simulate(extra: &[&str]) -> (Option<i32>, Value, String, String) {
    let mut args = vec!["--time-scale", "500ms"];
    args.extend_from_slice(extra);
    simulate_plan("plans/menu-service.yaml", &args)
}

/// Runs a simulation of `plan` at its own time scale; returns what [`simulate`] does, and
/// checks the progress it printed for people on stderr ([`plain_progress`]).
fn simulate_plan(plan: &str, extra: &[&str]) -> (Option<i32>, Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().to_str().unwrap();
    let mut args = vec!["simulate", plan, "--report", report];
    args.extend_from_slice(extra);
    // A guard against a hang, not a performance check.
    let output = handoff_within(&args, &[], Duration::from_secs(600));
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|_| panic!("{name}: {}", transcript(&output)))
    };
    let json: Value = serde_json::from_str(&read("report.json")).unwrap();
    plain_progress(&String::from_utf8_lossy(&output.stderr), &json);
    (output.status.code(), json, read("report.md"), read("junit.xml"))
}

/// The progress a simulation printed on stderr, not a terminal (a CI log): no line when a
/// step starts, one per finished step with its duration, and a verdict line for each
/// criterion the report says passed or failed.
fn plain_progress(stderr: &str, json: &Value) {
    assert!(!stderr.lines().any(|l| l.starts_with("  · ")), "a line for a step that starts: {stderr}");
    let finished: Vec<&str> =
        stderr.lines().filter(|l| l.starts_with("  ✓ ") && !l.starts_with("  ✓ criterion ")).collect();
    assert!(!finished.is_empty() && finished.iter().all(|l| l.contains(" in ")), "{stderr}");
    for phase in json["phases"].as_array().unwrap() {
        for id in criteria(phase, "pass").iter().chain(&criteria(phase, "fail")) {
            assert!(stderr.contains(&format!(" criterion {id}: ")), "no verdict line for {id}: {stderr}");
        }
    }
}

/// Digits masked, so a snapshot keeps the report's structure, not its measurements.
fn masked(text: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // A measured value may be written in scientific notation (`1.5e-5`): its exponent
        // belongs to the number.
        let exponent = in_number && c == 'e' && {
            let sign = usize::from(matches!(chars.get(i + 1), Some('-' | '+')));
            chars.get(i + 1 + sign).is_some_and(char::is_ascii_digit)
        };
        if exponent {
            i += if matches!(chars.get(i + 1), Some('-' | '+')) { 2 } else { 1 };
            continue;
        }
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
        i += 1;
    }
    out
}

#[test]
fn masking_keeps_the_shape_whatever_the_notation() {
    assert_eq!(masked("last value 0.00012; 3 samples < 5m"), "last value N; N samples < Nm");
    assert_eq!(masked("last value 1.2e-5 and 3e+7, then 2 e-mails"), "last value N and N, then N e-mails");
}

/// The end-of-run audit found every acknowledged write in `store`, and no write that the
/// VirtualService sent to a service not owning writes.
fn nothing_lost(json: &Value, store: &str) {
    let audit = &json["audit"];
    assert_eq!((audit["store"].as_str(), audit["lost"].as_u64()), (Some(store), Some(0)), "{audit}");
    assert_eq!(misrouted(json), "", "{audit}");
    assert!(audit["documents"].as_u64().unwrap() > 100, "{audit}");
}

/// The ids of a phase's criteria with this verdict.
fn criteria(phase: &Value, verdict: &str) -> Vec<String> {
    let all = phase["criteria"].as_array().unwrap();
    all.iter().filter(|c| c["verdict"] == verdict).map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

/// A scenario's phase failed for `criterion` (or step) and rolled back within budget; the
/// phases before it passed, the ones after it were not reached. The scenario's expectation
/// is met, so the run passes: exit 0, and a JUnit report without failures or errors.
fn rolled_back(code: Option<i32>, json: &Value, junit: &str, phase: usize) {
    assert_eq!(json["expectation"]["met"], true, "{json:#}");
    assert_eq!((code, &json["verdict"]), (Some(0), &Value::from("pass")), "{json:#}");
    assert!(junit.contains(" failures=\"0\" errors=\"0\">") && !junit.contains("<failure"), "{junit}");
    let phases = json["phases"].as_array().unwrap();
    assert!(phases[..phase].iter().all(|p| p["status"] == "passed"), "{json:#}");
    assert_eq!(phases[phase]["status"], "rolled back", "{json:#}");
    let rollback = &phases[phase]["rollback"];
    assert!(rollback["seconds"].as_f64().unwrap() <= rollback["budget_seconds"].as_f64().unwrap(), "{rollback}");
    assert!(phases[phase + 1..].iter().all(|p| p["status"] == "not reached"), "{json:#}");
}

#[test]
fn the_menu_plan_passes_every_phase_and_loses_nothing() {
    let (code, json, markdown, junit) = simulate(&[]);
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["verdict"], "pass");
    // The calendar holds: each phase starts and lasts as the plan's schedule says (the
    // seed's dates, 2024-01-01 = day 0), within half a day.
    let planned = [(0.0, 14.0), (14.0, 14.0), (28.0, 7.0), (35.0, 7.0), (42.0, 14.0)];
    let phases = json["phases"].as_array().unwrap();
    for (phase, (start, days)) in phases.iter().zip(planned) {
        let (ran_start, ran_days) = (phase["start_day"].as_f64().unwrap(), phase["days"].as_f64().unwrap());
        assert!(
            (ran_start - start).abs() <= 0.5 && (ran_days - days).abs() <= 0.5,
            "planned {start}+{days}: {phase:#}"
        );
    }
    for phase in phases {
        assert_eq!(phase["status"], "passed", "{phase:#}");
        let failed: Vec<String> =
            ["fail", "inconclusive", "provider error"].iter().flat_map(|v| criteria(phase, v)).collect();
        assert!(failed.is_empty(), "{failed:?} in {phase:#}");
        for check in phase["integrity"].as_array().unwrap() {
            assert_eq!(check["discrepancies"], 0, "{check}");
        }
    }
    // Menu Service owns writes at the end; Restaurant DB's collection is gone.
    nothing_lost(&json, "menu_db");
    // Every canary step served reads, none failed.
    let canary = json["canary"].as_array().unwrap();
    let weights: Vec<u64> = canary.iter().map(|p| p["weight"].as_u64().unwrap()).collect();
    assert_eq!(weights, [0, 10, 25, 50, 75, 100], "{canary:?}");
    assert!(canary.iter().all(|p| p["reads"].as_u64().unwrap() > 0 && p["error_percent"] == 0.0), "{canary:?}");
    assert!(!junit.contains("<failure"), "{junit}");
    // Shadow reads while dual writes run all agree; those after the cutover (one store
    // written) are counted apart.
    let load = json["load"].as_array().unwrap();
    let shadow = load.iter().find(|l| l["kind"] == "shadow_reads").unwrap();
    assert!(shadow["requests"].as_u64().unwrap() > 100 && shadow["failed"] == 0, "{load:?}");
    insta::assert_snapshot!("every_phase_passes", masked(&markdown));
}

/// A query that would select nothing in the simulation — a misspelled metric, a label the
/// declared series do not carry — stops `handoff simulate` before anything starts, with a
/// diagnostic naming the metric, the query and the selector (H335).
#[test]
fn a_query_selecting_nothing_fails_the_simulation_naming_it() {
    for (fixture, selector) in [
        (
            "h335-query-misspells-a-metric",
            r#"istio_request_total{destination_service_name="api",response_code=~"5.."}"#,
        ),
        ("h335-query-matches-a-wrong-label", r#"istio_requests_total{destination_service="api",response_code=~"5.."}"#),
    ] {
        let path = format!("tests/fixtures/invalid/{fixture}.yaml");
        let output = handoff_within(&["simulate", &path], &[], Duration::from_secs(60));
        let text = transcript(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        let named = format!("metric `error_rate`: selector `{selector}` of query `100 * sum(rate({selector}[5m]))");
        assert!(text.contains(&named) && text.contains("[H335 query-selects-nothing]"), "{text}");
    }
}

#[test]
fn a_broker_outage_fails_the_cutover_whose_rollback_hands_writes_back_intact() {
    let (code, json, _, junit) = simulate(&["--scenario", "broker-outage"]);
    rolled_back(code, &json, &junit, 3);
    // Writes made to Menu DB during the cutover were carried back: Restaurant DB, owner
    // again, holds every acknowledged write, and equals Menu DB before taking writes.
    nothing_lost(&json, "restaurant_db");
    let cutover = &json["phases"][3];
    let back = cutover["integrity"].as_array().unwrap().iter().find(|c| c["step"] == "p4-rb-verify-back");
    assert_eq!(back.map(|c| &c["discrepancies"]), Some(&Value::from(0)), "{cutover:#}");
}

#[test]
fn a_slow_menu_service_fails_the_read_canary_and_reads_go_back() {
    let (code, json, _, junit) = simulate(&["--scenario", "slow-menu-service"]);
    rolled_back(code, &json, &junit, 2);
    // The canary alert stops it at the first step whose reads are slow, before 100%.
    let reason = json["phases"][2]["rollback"]["reason"].as_str().unwrap();
    assert!(reason.contains("CanaryReadLatency") || reason.contains("p95-latency"), "{reason}");
    let canary = json["canary"].as_array().unwrap();
    let at = |weight: u64| canary.iter().find(|p| p["weight"] == weight).map(|p| p["p95_ms"].as_f64().unwrap());
    assert!(at(0).unwrap() < 200.0, "{canary:?}");
    assert!(canary.iter().any(|p| p["p95_ms"].as_f64().unwrap() > 300.0), "{canary:?}");
    assert!(at(100).is_none(), "the canary went on to 100%: {canary:?}");
    // The report shows the verdict of each weight the canary was judged at, all below 100%.
    let analyses = json["phases"][2]["analyses"].as_array().unwrap();
    assert!(analyses.iter().any(|a| a["hold"] == "10%"), "{analyses:?}");
    assert!(analyses.iter().all(|a| a["step"] == "p3-canary-reads" && a["hold"] != "100%"), "{analyses:?}");
    nothing_lost(&json, "restaurant_db");
}

#[test]
fn a_scenario_fails_its_phase_and_rolls_back_within_budget_and_a_drill_rolls_back_phase_1() {
    let (code, json, markdown, junit) =
        simulate(&["--scenario", "dual-write-failures", "--drill-rollbacks", "read-only-sync"]);
    rolled_back(code, &json, &junit, 1);
    // Whichever the dropped writes break first ends the observation: the dual-write
    // success rate, or the consistency the day-1 comparison finds.
    let failed = criteria(&json["phases"][1], "fail");
    assert!(failed.iter().any(|c| c == "dual-write-success" || c == "data-consistency"), "{json:#}");
    // Restaurant DB, which kept owning writes, holds every acknowledged write; and phase
    // 1's last comparison found the stores equal.
    nothing_lost(&json, "restaurant_db");
    let last = json["phases"][0]["integrity"].as_array().unwrap().last().unwrap();
    assert_eq!(last["discrepancies"], 0, "{last}");
    assert!(markdown.starts_with("<!-- handoff-simulate-report -->"), "{markdown}");
    assert!(
        junit.contains("<testsuite name=\"shadow-writes\"") && junit.contains("scenario expects to fail"),
        "{junit}"
    );
    // The drill of phase 1, in a run of its own: failed on purpose after its steps, rolled
    // back within budget, nothing lost.
    let drills = json["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 1, "{json:#}");
    let drill = &drills[0];
    assert_eq!(
        (drill["phase"].as_str(), &drill["met"], &drill["lost"]),
        (Some("read-only-sync"), &Value::from(true), &Value::from(0)),
        "{drill}"
    );
    assert!(drill["rollback"]["seconds"].as_f64().unwrap() <= drill["rollback"]["budget_seconds"].as_f64().unwrap());
    assert!(markdown.contains("Rollback drills"), "{markdown}");
    assert!(
        junit.contains("<testsuite name=\"rollback-drills\" tests=\"1\" failures=\"0\" errors=\"0\" skipped=\"0\">"),
        "{junit}"
    );
    // Which criterion fails first varies from run to run, so the structure is checked
    // here and snapshotted on the passing run.
    assert!(markdown.contains("fails and rolls back within budget with nothing lost — **met**"), "{markdown}");
    assert!(markdown.contains("Nothing lost: the last acknowledged write of each of the "), "{markdown}");
}

/// The misrouted writes the loss audit found, one line each: where they went and by
/// which route, weight and step (counts masked).
fn misrouted(json: &Value) -> String {
    let found = json["audit"]["misrouted"].as_array().cloned().unwrap_or_default();
    let mut lines: Vec<String> = found
        .iter()
        .map(|m| {
            let via = &m["via"];
            format!(
                "N writes to `{}` while {} owned writes: route `{}` at {}% of `{}/{}`",
                m["service"].as_str().unwrap(),
                m["owners"],
                via["route"].as_str().unwrap(),
                via["weight"],
                via["phase"].as_str().unwrap(),
                via["step"].as_str().unwrap()
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// A read canary whose route names no methods takes writes too: the simulation routes every
/// request by the VirtualService the canary applies, so the writes it sends to the new
/// service, which does not own writes, fail the run as misrouted. The same plan with the
/// route's methods passes with nothing misrouted: the VirtualService decides, not the
/// kind of request.
#[test]
fn a_read_canary_that_takes_writes_fails_with_the_misrouted_writes_and_one_that_does_not_passes() {
    let plan = "tests/fixtures/simulate/read-canary-takes-writes.yaml";
    let (code, json, markdown, junit) = simulate_plan(plan, &[]);
    assert_eq!((code, &json["verdict"]), (Some(1), &Value::from("fail")), "{json:#}");
    let outcome = json["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("every phase passed, but "), "{outcome}");
    assert!(outcome.contains(" writes were routed to a service that did not own writes: "), "{outcome}");
    assert!(junit.contains(" writes were routed to a service that did not own writes: "), "{junit}");
    let section = markdown.split("**Misrouted writes**").nth(1).unwrap().split("\n\n").take(2).collect::<Vec<_>>();
    insta::assert_snapshot!("misrouted_writes", format!("{}\n\n{}", misrouted(&json), masked(&section.join("\n\n"))));

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(support::root().join(plan)).unwrap();
    let fixed = text.replace("reads: {uri_prefixes: [/menu]}", "reads: {methods: [GET, HEAD], uri_prefixes: [/menu]}");
    assert_ne!(fixed, text);
    let fixed_plan = dir.path().join("read-canary.yaml");
    std::fs::write(&fixed_plan, fixed).unwrap();
    let (code, json, _, _) = simulate_plan(fixed_plan.to_str().unwrap(), &[]);
    assert_eq!((code, &json["verdict"]), (Some(0), &Value::from("pass")), "{json:#}");
    assert_eq!(misrouted(&json), "", "{json:#}");
    assert_eq!(json["audit"]["lost"], 0, "{json:#}");
}

#[test]
fn the_example_ci_workflow_finds_the_report_by_its_marker_and_uses_real_flags() {
    let text = std::fs::read_to_string(support::root().join("examples/github/handoff-simulate.yml")).unwrap();
    let workflow: Value = serde_saphyr::from_str(&text).unwrap();
    let steps = workflow["jobs"]["simulate"]["steps"].as_array().unwrap();
    let script = steps.iter().find_map(|s| s["with"]["script"].as_str()).unwrap();
    assert!(script.contains(&format!("'{}'", handoff_simulate::report::MARKER)), "{script}");
    let commands: Vec<&str> =
        steps.iter().filter_map(|s| s["run"].as_str()).filter(|r| r.starts_with("handoff ")).collect();
    assert!(commands.iter().any(|c| c.starts_with("handoff simulate ")), "{commands:?}");
    for command in commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        let help = support::handoff(&[words[1], "--help"]);
        let help = String::from_utf8_lossy(&help.stdout);
        for word in &words[2..] {
            if word.starts_with("--") {
                assert!(
                    help.contains(&format!("{word} ")) || help.contains(&format!("{word}\n")),
                    "`{word}` in `{command}`"
                );
            } else if word.ends_with(".yaml") {
                assert!(support::root().join(word).is_file(), "`{word}` in `{command}`");
            }
        }
    }
}
