//! `handoff plan --out` → `handoff approve` → `handoff apply`, through the binary: a planned
//! run applies as approved, with a gate that needs a DBA and a member of the menu team; a
//! changed plan, an approval of another digest, a moved run or missing approvals are
//! refused with the diff, and nothing runs.

mod support;

use std::path::{Path, PathBuf};

use support::{handoff, transcript};

const FIXTURE: &str = "tests/fixtures/run/approved.yaml";

/// A copy of the fixture plan and its state directory in a scratch directory.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(support::root().join(FIXTURE), dir.path().join("plan.yaml")).unwrap();
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `handoff ARGS` with this directory's state, and its transcript with the
    /// directory's path shown as `WORK`.
    fn handoff(&self, args: &[&str]) -> (Option<i32>, String) {
        let state = self.path("state");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state-dir", state.to_str().unwrap()]);
        let output = handoff(&all);
        let mut text = transcript(&output).replace(self.dir.path().to_str().unwrap(), "WORK");
        for run in std::fs::read_dir(self.path("state/approved/staging/runs")).into_iter().flatten() {
            text = text.replace(run.unwrap().file_name().to_str().unwrap(), "RUN");
        }
        (output.status.code(), text)
    }

    /// `handoff plan` of the copy, written to `name`.
    fn plan(&self, name: &str) -> PathBuf {
        let out = self.path(name);
        let plan = self.path("plan.yaml");
        let (code, text) =
            self.handoff(&["plan", plan.to_str().unwrap(), "--env", "staging", "--out", out.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{text}");
        out
    }

    fn approve(&self, planned: &Path, by: &str, extra: &[&str]) {
        let mut args = vec!["approve", planned.to_str().unwrap(), "--by", by];
        args.extend(extra);
        let (code, text) = self.handoff(&args);
        assert_eq!(code, Some(0), "{text}");
    }

    fn apply(&self, planned: &Path) -> (Option<i32>, String) {
        self.handoff(&["apply", planned.to_str().unwrap(), "--allow-shell"])
    }
}

#[test]
fn a_planned_run_applies_as_approved_and_its_gate_opens_with_a_dba_and_a_menu_member() {
    let work = Work::new();
    let planned = work.plan("planned.json");
    work.approve(&planned, "ana", &["apply", "prepare/approval-1"]);
    work.approve(&planned, "bo", &["prepare/approval-1"]);
    let (code, dry) = work.handoff(&["apply", planned.to_str().unwrap(), "--allow-shell", "--dry-run"]);
    assert_eq!(
        (code, dry.as_str()),
        (Some(0), "exit: 0\n--- stdout\nWORK/planned.json may be applied (a new run starts); --dry-run: nothing ran\n")
    );
    let (code, text) = work.apply(&planned);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("gate prepare/approval-1 open") && text.contains("completed"), "{text}");
    let log = std::fs::read_dir(work.path("state").join("approved/staging/runs")).unwrap();
    let log = std::fs::read_to_string(log.map(|e| e.unwrap().path()).next().unwrap().join("events.jsonl")).unwrap();
    let digest =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&planned).unwrap()).unwrap()["digest"].clone();
    let decided: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["event"] == "decided")
        .collect();
    assert_eq!(decided.len(), 2, "both approvals of the gate are in the log: {log}");
    assert!(decided.iter().all(|d| d["digest"] == digest), "each with the digest approved: {decided:?}");
}

#[test]
fn apply_stops_at_a_gate_the_planned_run_holds_no_approval_for_and_the_next_plan_needs_them_all() {
    let work = Work::new();
    let first = work.plan("first.json");
    work.approve(&first, "ana", &[]);
    let (code, text) = work.apply(&first);
    assert_eq!(code, Some(4), "{text}");
    let plan = work.path("plan.yaml");
    let (_, status) = work.handoff(&["status", plan.to_str().unwrap(), "--env", "staging"]);
    assert!(
        status.contains("who: 1 of `dba` (ana, bo), 1 of `menu` (bo, cy)"),
        "status names who may approve: {status}"
    );
    let second = work.plan("second.json");
    work.approve(&second, "ana", &[]);
    let (code, missing) = work.apply(&second);
    assert_eq!(code, Some(7), "{missing}");
    work.approve(&second, "bo", &[]);
    let (code, text) = work.apply(&second);
    assert_eq!(code, Some(0), "{text}");
    let (code, moved) = work.apply(&first);
    assert_eq!(code, Some(7), "{moved}");
    insta::assert_snapshot!("missing_approvals_and_a_moved_run", format!("{missing}\n{moved}"));
}

#[test]
fn a_changed_plan_or_an_approval_of_another_digest_is_refused_with_the_diff() {
    let work = Work::new();
    let planned = work.plan("planned.json");
    work.approve(&planned, "ana", &[]);
    let plan = work.path("plan.yaml");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, text.replacen("Cut over to", "Cut ower to", 1)).unwrap();
    let (code, changed) = work.apply(&planned);
    assert_eq!(code, Some(7), "{changed}");
    std::fs::write(&plan, text).unwrap();
    let other = work.plan("other.json");
    work.approve(&other, "ana", &["--digest", "sha256:0123456789abcdef"]);
    let (code, digest) = work.apply(&other);
    assert_eq!(code, Some(7), "{digest}");
    assert!(!work.path("state/approved/staging/runs").exists(), "nothing ran");
    insta::assert_snapshot!("changed_plan_and_other_digest", format!("{changed}\n{digest}"));
}

/// A plugin that declares something else since the plan was approved (here only an
/// action's summary) is another executor: apply refuses, showing its version change.
#[test]
fn a_changed_plugin_is_refused_with_its_version_in_the_diff() {
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let plugin = bin.join("handoff-executor-flags");
    std::fs::copy(support::root().join("examples/plugins/handoff-executor-flags"), &plugin).unwrap();
    let path =
        std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())))
            .unwrap();
    let env = [("PATH", path.as_os_str())];
    let plan = work.path().join("flags.yaml");
    std::fs::write(
        &plan,
        "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: flags}\nenvironments: {local: {endpoints: {}}}
phases:
  - {id: one, name: One, steps: [{id: check, uses: flags.check, with: {file: flags.json, flag: menu.reads, value: new}}], rollback: {max_duration: 1m, steps: []}}
",
    )
    .unwrap();
    let (planned, state) = (work.path().join("planned.json"), work.path().join("state"));
    let (planned, state) = (planned.to_str().unwrap(), state.to_str().unwrap());
    let handoff = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--state-dir", state]);
        support::handoff_with(&all, &env)
    };
    let planning = handoff(&["plan", plan.to_str().unwrap(), "--env", "local", "--out", planned]);
    assert_eq!(planning.status.code(), Some(0), "{}", transcript(&planning));
    assert_eq!(handoff(&["approve", planned, "--by", "ana"]).status.code(), Some(0));
    let script = std::fs::read_to_string(&plugin).unwrap();
    std::fs::write(&plugin, script.replacen("Check a flag's value.", "Check the value of a flag.", 1)).unwrap();
    let applied = handoff(&["apply", planned]);
    let text = transcript(&applied);
    assert_eq!(applied.status.code(), Some(7), "{text}");
    let changed: Vec<&str> =
        text.lines().filter(|line| line.starts_with(['-', '+']) && line.contains("executor flags")).collect();
    assert_eq!(changed.len(), 2, "the plugin's old and new version: {text}");
    assert!(changed.iter().all(|line| line.contains("plugin sha256:")), "{text}");
}
