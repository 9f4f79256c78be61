//! Property tests: the checker never panics, whatever bytes it is given; and no numeric or
//! date bound of a plan makes the loader or any command of the binary panic.

mod support;

use handoff_plan::Checker;
use handoff_registry::Registry;
use proptest::prelude::*;

thread_local! {
    static CHECKER: Checker<'static> = Checker::new(Box::leak(Box::new(Registry::builtin()))).unwrap();
}

fn checker_run(bytes: &[u8]) {
    let report = CHECKER.with(|checker| checker.check(bytes));
    for diagnostic in &report.diagnostics {
        let _ = diagnostic.render("plan.yaml", &report.text, &report.secrets, false);
        let _ = diagnostic.to_json();
    }
}

/// A count near the edges of every integer type a plan holds.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..=100, 1 => Just(0), 1 => Just(u64::from(u32::MAX)), 1 => Just(u64::MAX), 1 => any::<u64>()]
}

/// A duration: one or two `<count><unit>` parts, some past the longest one a plan may use.
fn duration() -> impl Strategy<Value = String> {
    let part =
        (prop_oneof![16 => 1u64..1_000, 1 => 36_000u64..37_000, 1 => 5_000u64..6_000, 1 => count()], "(ms|s|m|h|d|w)")
            .prop_map(|(n, unit)| format!("{n}{unit}"));
    proptest::collection::vec(part, 1..3).prop_map(|parts| parts.join(" "))
}

/// A date, valid or not, from year 0 to 9999 (most near the calendar's end).
fn date() -> impl Strategy<Value = String> {
    (
        prop_oneof![0u32..=9999, 9_800u32..=9999],
        prop_oneof![9 => 1u32..=12, 1 => 0u32..=13],
        prop_oneof![9 => 1u32..=28, 1 => 0u32..=32],
    )
        .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
}

/// A threshold: a number of any length, with a unit or not.
fn threshold() -> impl Strategy<Value = String> {
    (prop_oneof![4 => "-?[0-9]{1,6}(\\.[0-9]{1,3})?", 1 => "-?[0-9]{1,400}(\\.[0-9]{1,40})?"], "(%|ms|s|m|h|d|w)?")
        .prop_map(|(n, unit)| format!("{n}{unit}"))
}

/// The bounds template with generated values.
fn bounded_plan(dates: [String; 2], durations: [String; 8], threshold: String, attempts: u64) -> String {
    let template = include_str!("fixtures/props/bounds.yaml");
    let names = ["@SCHEDULE2@", "@SCHEDULE@", "@TIMEOUT@", "@BACKOFF@", "@WINDOW@", "@INTERVAL@", "@BUDGET@", "@SOAK@"];
    let mut plan = template.replace("@TIMELINE@", &dates[0]).replace("@START@", &dates[1]);
    for (name, value) in names.iter().zip(&durations) {
        plan = plan.replace(name, value);
    }
    plan.replace("@THRESHOLD@", &threshold).replace("@ATTEMPTS@", &attempts.to_string())
}

fn bounds() -> impl Strategy<Value = String> {
    (
        [date(), date()],
        [duration(), duration(), duration(), duration(), duration(), duration(), duration(), duration()],
        threshold(),
        count(),
    )
        .prop_map(|(dates, durations, threshold, attempts)| bounded_plan(dates, durations, threshold, attempts))
}

/// Every command that loads a plan, on one generated plan: none exits 101 (a panic).
fn commands_run(plan: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    let (file, out, state) = (file.to_str().unwrap(), dir.path().join("out"), dir.path().join("state"));
    let commands: [&[&str]; 4] = [
        &["validate", file],
        &["plan", "show", file],
        &["render", file, "--out", out.to_str().unwrap()],
        &["run", file, "--env", "sandbox", "--dry-run", "--allow-shell", "--state-dir", state.to_str().unwrap()],
    ];
    for args in commands {
        let output = support::handoff(args);
        assert_ne!(output.status.code(), Some(101), "{args:?} panicked on\n{plan}\n{}", support::transcript(&output));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        checker_run(&bytes);
    }

    #[test]
    fn yaml_like_text(text in "[a-z:{}\\[\\],&*!|>'\"#\\- \n\t0-9.%]{0,400}") {
        checker_run(text.as_bytes());
    }

    /// The menu plan with a slice removed and a few bytes changed: near-valid documents
    /// reach the schema and lint tiers.
    #[test]
    fn mutated_menu_plan(cut in 0usize..40_000, len in 0usize..200, flips in proptest::collection::vec((0usize..40_000, any::<u8>()), 0..4)) {
        let mut bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/plans/menu-service.yaml")).unwrap();
        let cut = cut.min(bytes.len());
        let end = (cut + len).min(bytes.len());
        bytes.drain(cut..end);
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
        }
        checker_run(&bytes);
    }

    /// Durations, dates, thresholds and counts at and past their bounds, through the loader.
    #[test]
    fn bounds_through_the_loader(plan in bounds()) {
        checker_run(plan.as_bytes());
    }
}

proptest! {
    // Each case starts the binary four times.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The same plans through validate, plan show, render and run --dry-run.
    #[test]
    fn bounds_through_the_commands(plan in bounds()) {
        commands_run(&plan);
    }
}

/// The valid extremes: the longest durations a plan may use, starting on the last day a
/// phase of that length fits the calendar, run through every command.
#[test]
fn longest_durations_at_the_end_of_the_calendar() {
    let durations = ["1d", "36525d", "36525d", "36525d", "36525d", "36525d", "36525d", "36525d"].map(str::to_owned);
    let plan = bounded_plan(["9899-12-29".into(), "9899-12-29".into()], durations, "36525d".into(), 100);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, &plan).unwrap();
    let output = support::handoff(&["validate", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", support::transcript(&output));
    commands_run(&plan);
}
