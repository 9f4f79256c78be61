//! End-to-end tests of execution through the real binary: `run`, `resume`, `approve`,
//! `abort`, `status`, `plan show`; crashes by SIGKILL at many points and lock contention
//! between processes (each with the directory store and the MongoDB store); the example
//! plugin. HTTP metrics and health checks talk to a real
//! HTTP server (Python's `http.server`).

mod support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::backend::{BOTH, Backend, Kind};
use support::{Terminal, handoff, handoff_with, root, transcript};

/// A real HTTP server on a free port, serving a directory.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn serve(dir: &Path) -> HttpServer {
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line.split_whitespace().skip_while(|w| *w != "port").nth(1).expect("a port").to_owned();
        HttpServer { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace for the settings example: data files, a served directory, a state dir.
struct Settings {
    dir: tempfile::TempDir,
    server: HttpServer,
    /// `state` and `data` in `dir`.
    state: PathBuf,
    data: PathBuf,
}

impl Settings {
    fn new(metrics: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["www", "data", "state"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("www/health.json"), r#"{"status": "ok"}"#).unwrap();
        std::fs::write(dir.path().join("www/metrics.json"), metrics).unwrap();
        std::fs::write(dir.path().join("data/monolith.json"), r#"{"tenant-1": {"theme": "dark"}}"#).unwrap();
        let server = HttpServer::serve(&dir.path().join("www"));
        let (state, data) = (dir.path().join("state"), dir.path().join("data"));
        Settings { dir, server, state, data }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        handoff_with(&self.args(args), &self.env())
    }

    /// `args` with the environment and the state directory.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--env", "local", "--state-dir", self.state.to_str().unwrap()]);
        all
    }

    /// The variables the plan reads.
    fn env(&self) -> [(&str, &OsStr); 2] {
        [("SETTINGS_URL", OsStr::new(&self.server.url)), ("SETTINGS_DIR", self.data.as_os_str())]
    }

    /// [`Settings::run`] started on a terminal.
    fn on_terminal(&self, args: &[&str]) -> Terminal {
        Terminal::start(&self.args(args), &self.env(), 300, 50)
    }

    /// The exit code and the final screen of `terminal`, cleaned, with durations written
    /// `<t>`.
    fn screen(&self, terminal: Terminal) -> (Option<i32>, String) {
        let (code, screen) = terminal.finish();
        (code, without_durations(&self.clean_text(&screen)))
    }

    /// A transcript without the run id, digest, temp paths and wall-clock noise. Steps of a
    /// parallel group start and finish in any order: runs of consecutive start (or finish)
    /// lines are sorted.
    fn clean(&self, output: &std::process::Output) -> String {
        self.clean_text(&transcript(output))
    }

    /// [`Settings::clean`] of any text: a transcript, or a terminal's screen.
    fn clean_text(&self, text: &str) -> String {
        let text = text.replace(self.dir.path().to_str().unwrap(), "<tmp>");
        let mut lines: Vec<&str> = text.lines().collect();
        let mut start = 0;
        while start < lines.len() {
            let prefix = |l: &str| (l.starts_with("  ✓ ") || l.starts_with("  · ")) && !l.starts_with("  ✓ criterion");
            let kind = lines[start].get(..5).unwrap_or_default().to_owned();
            let end = (start..lines.len())
                .find(|&i| !(prefix(lines[i]) && lines[i].starts_with(&kind)))
                .unwrap_or(lines.len());
            lines[start..end.max(start + 1)].sort_unstable();
            start = end.max(start + 1);
        }
        lines
            .into_iter()
            .map(|l| {
                let l = match l.find("run 2") {
                    Some(at) => format!(
                        "{}run <id>{}",
                        &l[..at],
                        &l[at + 4..].split_once(':').map(|(_, r)| format!(":{r}")).unwrap_or_default()
                    ),
                    None => l.to_owned(),
                };
                let l = match l.find("sha256:") {
                    Some(at) => format!("{}sha256:…)", &l[..at]),
                    None => l,
                };
                without_seconds(&l)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Settings {
    /// Snapshots `handoff status` as text and as JSON (`status_<name>`, `status_<name>_json`),
    /// without run ids, digests, temp paths and times.
    fn check_status(&self, name: &str) {
        let text = self.run(&["status", SETTINGS]);
        assert_eq!(text.status.code(), Some(0), "{}", transcript(&text));
        let text = self.clean(&text).lines().map(without_times).collect::<Vec<_>>().join("\n");
        insta::assert_snapshot!(format!("status_{name}"), text);
        let json = self.run(&["status", SETTINGS, "--format", "json"]);
        let mut json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON document");
        let run = json["state"]["run"].as_str().expect("a run id").to_owned();
        normalize(&mut json, &[(&run, "<id>"), (self.dir.path().to_str().unwrap(), "<tmp>")]);
        insta::assert_json_snapshot!(format!("status_{name}_json"), json);
    }
}

/// `value` with every timestamp written `<time>`, every digest `<digest>`, each of `names`
/// replaced, steps' outputs (what shell commands printed) and a rollback's measured
/// `seconds` (wall-clock time) left out, and the order steps finished in sorted.
fn normalize(value: &mut serde_json::Value, names: &[(&str, &str)]) {
    for noisy in ["output", "seconds"] {
        if let Some(field) = value.get_mut(noisy) {
            *field = serde_json::Value::Null;
        }
    }
    // Steps of one group run together: the order in which they finish is the machine's.
    if let Some(serde_json::Value::Array(order)) = value.get_mut("finished_order") {
        order.sort_by_key(|step| step.to_string());
    }
    match value {
        serde_json::Value::String(text) if text.parse::<jiff::Timestamp>().is_ok() => *text = "<time>".to_owned(),
        serde_json::Value::String(text) if text.starts_with("sha256:") => *text = "<digest>".to_owned(),
        serde_json::Value::String(text) => {
            *text = names.iter().fold(text.clone(), |text, (name, with)| text.replace(name, with));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|item| normalize(item, names)),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(|field| normalize(field, names)),
        _ => {}
    }
}

/// `l` with every RFC 3339 timestamp (`2026-01-05T10:00:00Z`) written `<time>`.
fn without_times(l: &str) -> String {
    let mut out = String::new();
    let mut rest = l;
    while let Some(at) = rest.find('T') {
        let start = at.saturating_sub(10);
        let dated = at >= 10 && rest.is_char_boundary(start) && rest[start..at].parse::<jiff::civil::Date>().is_ok();
        match rest[at..].find('Z').filter(|_| dated) {
            Some(z) => {
                out.push_str(&rest[..start]);
                out.push_str("<time>");
                rest = &rest[at + z + 1..];
            }
            None => {
                out.push_str(&rest[..=at]);
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `l` with every wall-clock duration (` in 0.1s`, ` in 4m05s`) written ` in <t>s`: a
/// step's or a rollback's measured time depends on the machine's load, a budget does not.
fn without_seconds(l: &str) -> String {
    let mut out = String::new();
    let mut rest = l;
    while let Some(at) = rest.find(" in ") {
        let (head, tail) = rest.split_at(at + 4);
        out.push_str(head);
        let end = tail.find(|c: char| !(c.is_ascii_digit() || ".dhms".contains(c))).unwrap_or(tail.len());
        let word = &tail[..end];
        if word.starts_with(|c: char| c.is_ascii_digit()) && word.ends_with(['d', 'h', 'm', 's']) {
            out.push_str("<t>s");
            rest = &tail[end..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

const SETTINGS: &str = "plans/examples/settings-handoff.yaml";

#[test]
fn the_settings_plan_runs_end_to_end_with_decisions_by_people() {
    let settings = Settings::new(r#"{"error_rate": 0.2, "stale_reads": 0}"#);
    let mut steps = Vec::new();
    let first = settings.run(&["run", SETTINGS, "--allow-shell", "--clock", "virtual"]);
    steps.push(format!("$ handoff run\n{}", settings.clean(&first)));
    settings.check_status("paused");
    for key in ["switch-writes/confirm-owner", "switch-writes/no-lost-settings", "switch-writes/approval-1"] {
        let approve = settings.run(&["approve", SETTINGS, key, "--by", "ada"]);
        steps.push(format!("$ handoff approve {key}\n{}", settings.clean(&approve)));
        let resume = settings.run(&["resume", SETTINGS, "--allow-shell", "--clock", "virtual"]);
        steps.push(format!("$ handoff resume\n{}", settings.clean(&resume)));
    }
    let typo = settings.run(&["approve", SETTINGS, "switch-writes/aproval-1"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("is nothing this plan asks a person to decide"));
    insta::assert_snapshot!("settings_end_to_end", steps.join("\n\n"));
    settings.check_status("finished");
    assert_eq!(std::fs::read_to_string(settings.path("data/read-owner")).unwrap().trim(), "service");
    assert!(settings.path("data/monolith.frozen").exists());
}

#[test]
fn a_failed_criterion_compensates_the_phase_and_runs_its_rollback_within_budget() {
    let settings = Settings::new(r#"{"error_rate": 3, "stale_reads": 0}"#);
    let output = settings.run(&["run", SETTINGS, "--allow-shell", "--clock", "virtual"]);
    insta::assert_snapshot!("settings_rollback", settings.clean(&output));
    assert_eq!(output.status.code(), Some(3));
    assert!(!settings.path("data/service.json").exists(), "the copy was undone");
    assert!(!settings.path("data/snapshots/before.json").exists(), "the snapshot was undone");
    assert_eq!(std::fs::read_to_string(settings.path("data/rollbacks.log")).unwrap(), "copy rolled back\n");
    settings.check_status("rolled_back");
    // The run ended: resuming it is refused, and says what to do.
    let resume = settings.run(&["resume", SETTINGS, "--allow-shell"]);
    assert_eq!(resume.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&resume.stderr);
    assert!(stderr.contains("already ended (rolled back); start a new one"), "{stderr}");
}

#[test]
fn shell_steps_are_refused_unless_allowed_and_a_missing_variable_is_named() {
    let settings = Settings::new(r#"{"error_rate": 0, "stale_reads": 0}"#);
    let dry = settings.run(&["run", SETTINGS, "--dry-run"]);
    insta::assert_snapshot!("dry_run", settings.clean(&dry));
    let refused = settings.run(&["run", SETTINGS, "--clock", "virtual"]);
    insta::assert_snapshot!("shell_refused", settings.clean(&refused));
    assert!(std::fs::read_dir(settings.path("data")).unwrap().count() == 1, "nothing ran");

    let unset = handoff(&["run", SETTINGS, "--env", "local"]);
    assert_eq!(unset.status.code(), Some(2));
    insta::assert_snapshot!("missing_variable", transcript(&unset));
    let unknown = handoff(&["run", SETTINGS, "--env", "prod"]);
    insta::assert_snapshot!("unknown_environment", transcript(&unknown));
}

#[test]
fn an_environment_with_unset_variables_is_refused_before_anything_runs() {
    let state = tempfile::tempdir().unwrap();
    let output =
        handoff(&["run", "plans/menu-service.yaml", "--env", "staging", "--state-dir", state.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("environment variable `MENU_MONGO_URI` is not set"), "{stderr}");
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0, "nothing was written");
}

#[test]
fn plan_show_prints_the_graph_as_text_and_mermaid() {
    for plan in ["plans/menu-service.yaml", SETTINGS] {
        let name = Path::new(plan).file_stem().unwrap().to_str().unwrap().to_owned();
        let text = handoff(&["plan", "show", plan]);
        assert_eq!(text.status.code(), Some(0), "{}", transcript(&text));
        insta::assert_snapshot!(format!("show_{name}"), String::from_utf8_lossy(&text.stdout));
        let mermaid = handoff(&["plan", "show", plan, "--format", "mermaid"]);
        insta::assert_snapshot!(format!("show_{name}_mermaid"), String::from_utf8_lossy(&mermaid.stdout));
    }
}

/// Starts `handoff ARGS` in the background.
fn spawn(args: &[&str], work: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(args)
        .current_dir(root())
        .env("WORK", work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn step_key(event: &serde_json::Value) -> String {
    format!("{}/{}", event["phase"].as_str().unwrap_or_default(), event["step"].as_str().unwrap_or_default())
}

/// What the SIGKILL test saw at its kills.
#[derive(Default)]
struct Kills {
    /// Pids killed.
    killed: Vec<serde_json::Value>,
    /// Steps started and not finished at some kill.
    interrupted: std::collections::BTreeSet<String>,
    /// For each step finished at a kill: how many executions `runs.log` had then.
    finished_before: std::collections::BTreeMap<String, usize>,
}

impl Kills {
    /// Notes what the log says at a kill, when `runs.log` had `runs` executions.
    fn note(&mut self, log: &[serde_json::Value], runs: usize) {
        for event in log {
            if event["event"] == "step_finished" {
                self.finished_before.entry(step_key(event)).or_insert(runs);
            }
        }
        for event in log.iter().filter(|e| e["event"] == "step_started") {
            let key = step_key(event);
            if !log.iter().any(|e| e["event"] == "step_finished" && step_key(e) == key) {
                self.interrupted.insert(key);
            }
        }
    }

    /// Every step took effect; it ran again only when a kill interrupted it, never after it
    /// finished; and a kill cost at most one execution per step of a parallel group.
    fn check(&self, work: &Path, executions: &[&str], steps: &[&str]) {
        for &step in steps {
            let marker = work.join("effects").join(step.replace('/', "-"));
            assert!(marker.is_dir(), "the effect of {step} is missing");
            let count = executions.iter().filter(|l| **l == step).count();
            assert!(count >= 1, "{step} never ran");
            if count > 1 {
                assert!(self.interrupted.contains(step), "{step} ran {count} times but was never interrupted mid-run");
            }
            if let Some(&seen) = self.finished_before.get(step) {
                assert!(!executions[seen..].contains(&step), "{step} ran again after it finished");
            }
        }
        let (kills, widest_group) = (self.killed.len(), 2);
        assert!(
            executions.len() - steps.len() <= kills * widest_group,
            "{} extra executions for {kills} kills",
            executions.len() - steps.len()
        );
    }
}

#[test]
fn sigkill_at_many_points_then_resume_finishes_without_repeating_finished_steps() {
    for kind in BOTH {
        sigkill_and_resume(kind);
    }
}

/// `handoff VERB PLAN --env local --allow-shell` with the arguments choosing `backend`.
fn exec_args<'a>(verb: &'a str, plan: &'a str, backend: &'a [String]) -> Vec<&'a str> {
    let mut args = vec![verb, plan, "--env", "local", "--allow-shell"];
    args.extend(backend.iter().map(String::as_str));
    args
}

/// Kills a run at many points (SIGKILL), resuming after each, with its state in `kind`.
fn sigkill_and_resume(kind: Kind) {
    let work = tempfile::tempdir().unwrap();
    let backend = Backend::new(kind);
    let state_args = backend.args();
    let events = || backend.records("crash", "local");
    let plan = "tests/fixtures/run/crash.yaml";
    let mut kills = Kills::default();
    let mut target = 3;
    let mut first = true;
    let mut finished = 0;
    loop {
        let verb = if first { "run" } else { "resume" };
        first = false;
        let mut child = spawn(&exec_args(verb, plan, &state_args), work.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        let ended = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if events().len() >= target {
                break None;
            }
            assert!(Instant::now() < deadline, "handoff {verb} hung");
            std::thread::sleep(Duration::from_millis(2));
        };
        match ended {
            Some(status) => {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
                assert_eq!(status.code(), Some(0), "the last resume completes; stderr: {stderr}");
                break;
            }
            None => {
                kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
                child.wait().unwrap();
                kills.killed.push(serde_json::Value::from(child.id()));
                // What the log says at the moment of the kill.
                let log = events();
                if log.iter().any(|e| e["event"] == "run_finished") {
                    break; // killed after the run had ended: nothing to resume
                }
                let runs = std::fs::read_to_string(work.path().join("runs.log")).unwrap_or_default();
                kills.note(&log, runs.lines().count());
                // Kill again after 2 to 5 more records; when a resume made no progress
                // (it records itself and starts a group's steps before any finishes), give
                // the next one room to finish a step.
                let now_finished = log.iter().filter(|e| e["event"] == "step_finished").count();
                target = log.len() + if now_finished == finished { 6 } else { 2 + kills.killed.len() % 4 };
                finished = now_finished;
            }
        }
    }
    assert!(kills.killed.len() >= 10, "the run was killed at {} points only", kills.killed.len());
    let runs = std::fs::read_to_string(work.path().join("runs.log")).unwrap();
    let executions: Vec<&str> = runs.lines().collect();
    let steps = [
        "one/a", "one/b", "one/c", "one/d", "two/a2", "two/b2", "two/c2", "two/d2", "three/a3", "three/b3", "three/c3",
        "three/d3", "four/a4", "four/b4", "four/c4", "four/d4",
    ];
    kills.check(work.path(), &executions, &steps);
    let mut status_args = vec!["status", plan, "--env", "local", "--format", "json"];
    status_args.extend(state_args.iter().map(String::as_str));
    let status = handoff(&status_args);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["status"], "completed");
    // The lock is released, or left by a process killed after the run ended.
    assert!(status["lock"].is_null() || kills.killed.contains(&status["lock"]["pid"]), "{}", status["lock"]);
}

#[test]
fn two_processes_cannot_both_hold_the_lock() {
    for kind in BOTH {
        two_racers(kind);
    }
}

/// A second `run` and a `resume` are locked out while the first runs (state in `kind`);
/// SIGTERM stops the first cleanly and releases the lock.
fn two_racers(kind: Kind) {
    let work = tempfile::tempdir().unwrap();
    let backend = Backend::new(kind);
    let state_args = backend.args();
    let plan = work.path().join("slow.yaml");
    let text = std::fs::read_to_string(root().join("tests/fixtures/run/crash.yaml"))
        .unwrap()
        .replace("sleep 0.03", "sleep 30");
    std::fs::write(&plan, text).unwrap();
    let plan_arg = plan.to_str().unwrap();
    let args = exec_args("run", plan_arg, &state_args);
    let mut first = spawn(&args, work.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !backend.records("crash", "local").iter().any(|e| e["event"] == "step_started") {
        assert!(Instant::now() < deadline, "the first run did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let work_env = [("WORK", work.path().as_os_str())];
    let second = handoff_with(&args, &work_env);
    assert_eq!(second.status.code(), Some(6), "{}", transcript(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("the plan is locked by") && stderr.contains("--force-unlock"), "{stderr}");
    let resume = handoff_with(&exec_args("resume", plan_arg, &state_args), &work_env);
    assert_eq!(resume.status.code(), Some(6), "resume is locked out too: {}", transcript(&resume));

    // SIGTERM: the first run stops cleanly, records why, and releases the lock.
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(130));
    let log = backend.records("crash", "local");
    assert_eq!(log.last().unwrap()["event"], "interrupted");
    let mut status_args = vec!["status", plan_arg, "--env", "local"];
    status_args.extend(state_args.iter().map(String::as_str));
    let status = handoff(&status_args);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(": interrupted") && text.contains("not locked"), "{text}");
}

#[test]
fn the_example_plugin_validates_runs_and_compensates() {
    let work = tempfile::tempdir().unwrap();
    let plugins = root().join("examples/plugins");
    let path =
        std::env::join_paths(std::iter::once(plugins).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())))
            .unwrap();
    let env = [("PATH", path.as_os_str()), ("WORK", work.path().as_os_str())];
    let listed = handoff_with(&["executors"], &env);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("flags.set"), "{}", transcript(&listed));

    let plan = work.path().join("flags.yaml");
    let write = |text: &str| {
        std::fs::write(&plan, format!("{}{text}", "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: flags}\nenvironments: {local: {endpoints: {}}}\n")).unwrap()
    };
    write(
        "phases:\n  - {id: one, name: One, steps: [{id: s, uses: flags.set, with: {file: flags.json, flag: Menu Reads, value: new}}], rollback: {max_duration: 1m, steps: []}}\n",
    );
    let invalid = handoff_with(&["validate", plan.to_str().unwrap()], &env);
    insta::assert_snapshot!("plugin_invalid", transcript(&invalid).replace(work.path().to_str().unwrap(), "<tmp>"));

    std::fs::write(work.path().join("flags.json"), r#"{"menu.reads": "old"}"#).unwrap();
    write(
        "phases:
  - id: one
    name: One
    steps:
      - {id: switch, uses: flags.set, with: {file: flags.json, flag: menu.reads, value: new}}
      - {id: check, uses: flags.check, with: {file: flags.json, flag: menu.reads, value: new}}
      - {id: fails, uses: flags.check, with: {file: flags.json, flag: menu.writes, value: new}}
    rollback: {max_duration: 1m, steps: []}
",
    );
    let state = work.path().join("state");
    let run =
        handoff_with(&["run", plan.to_str().unwrap(), "--env", "local", "--state-dir", state.to_str().unwrap()], &env);
    let text = transcript(&run);
    assert_eq!(run.status.code(), Some(3), "{text}");
    assert!(without_seconds(&text).contains("↺ switch in <t>s: undone: restored menu.reads"), "{text}");
    let flags: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("flags.json")).unwrap()).unwrap();
    assert_eq!(flags["menu.reads"], "old", "the rollback restored the flag");
}

#[test]
fn a_data_phase_copies_and_verifies_against_real_mongodb_servers() {
    use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let specs = [ServiceSpec::new("old", ServiceKind::Mongo), ServiceSpec::new("new", ServiceKind::Mongo)];
    let sandbox = runtime.block_on(Sandbox::start(&specs, &Options::default())).expect("the sandbox starts");
    let url = |name: &str| sandbox.service(name).unwrap().endpoint().url.clone();
    let (old, new) = (url("old"), url("new"));
    runtime.block_on(async {
        let client = mongodb::Client::with_uri_str(&old).await.unwrap();
        let items = client.database("restaurant").collection::<mongodb::bson::Document>("menu_items");
        let documents: Vec<_> =
            (0..500).map(|i| mongodb::bson::doc! {"_id": i, "name": format!("Dish {i}"), "price": i * 10}).collect();
        items.insert_many(documents).await.unwrap();
    });
    let state = tempfile::tempdir().unwrap();
    let output = handoff_with(
        &[
            "run",
            "tests/fixtures/run/mongo-copy.yaml",
            "--env",
            "sandbox",
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &[("OLD_DB_URL", OsStr::new(&old)), ("NEW_DB_URL", OsStr::new(&new))],
    );
    let text = transcript(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ criterion nothing-lost: Pass"), "{text}");
    assert!(!text.contains(&old) && !text.contains(&new), "endpoints never appear in output");
    runtime.block_on(sandbox.shutdown());
}

#[test]
fn what_a_command_prints_of_a_secret_is_masked_in_the_log() {
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("leak.yaml");
    std::fs::write(
        &plan,
        "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: leak}\nenvironments: {local: {endpoints: {}}}\n\
phases:\n  - {id: one, name: One, rollback: {max_duration: 1m, steps: []}, steps: [{id: echo, uses: shell.run, \
with: {command: [sh, -c, 'echo \"connecting with $TOKEN\"; echo \"bad $TOKEN\" >&2'], env: {TOKEN: \"${SECRET_TOKEN}\"}}}]}\n",
    )
    .unwrap();
    let state = work.path().join("state");
    let secret = "s3cr3t-value-42";
    let output = handoff_with(
        &[
            "run",
            plan.to_str().unwrap(),
            "--env",
            "local",
            "--state-dir",
            state.to_str().unwrap(),
            "--allow-shell",
            "--log-format",
            "json",
        ],
        &[("SECRET_TOKEN", OsStr::new(secret))],
    );
    assert_eq!(output.status.code(), Some(0), "{}", transcript(&output));
    let log =
        std::fs::read_dir(state.join("leak/local/runs")).unwrap().next().unwrap().unwrap().path().join("events.jsonl");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("connecting with ${SECRET_TOKEN}"), "{log}");
    assert!(!log.contains(secret) && !transcript(&output).contains(secret), "the secret leaked");
}

/// A plan of steps that are not idempotent: each appends its effect line (`P/S`) to
/// `effects` and its undo appends `undo P/S`. Phase `two` fails: `e` fails while `d`, in
/// its group, runs (so `d` is cancelled, its effect there or not), and its rollback step
/// `r` appends `two/r`. Steps pause a little on both sides of their effect, so kills land
/// in the middle of steps as well as between them.
fn undo_plan(effects: &Path) -> String {
    let effects = effects.display();
    let command = |line: &str| format!("[sh, -c, 'sleep 0.01; echo {line} >> {effects}; sleep 0.01']");
    let step = |phase: &str, id: &str, extra: &str| {
        let undo = command(&format!("undo {phase}/{id}"));
        format!(
            "{{id: {id}, uses: shell.run{extra}, with: {{command: {}, undo: {undo}}}}}",
            command(&format!("{phase}/{id}"))
        )
    };
    let rollback = format!("{{id: r, uses: shell.run, with: {{command: {}}}}}", command("two/r"));
    let fail = "{id: e, uses: shell.run, group: g, with: {command: [sh, -c, 'sleep 0.015; exit 1']}}";
    format!(
        "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {{name: undo}}\nenvironments: {{local: {{endpoints: {{}}}}}}
phases:
  - {{id: one, name: One, steps: [{}, {}], rollback: {{max_duration: 1h, steps: []}}}}
  - {{id: two, name: Two, steps: [{}, {}, {fail}], rollback: {{max_duration: 1h, steps: [{rollback}]}}}}
",
        step("one", "a", ""),
        step("one", "b", ""),
        step("two", "c", ""),
        step("two", "d", ", group: g"),
    )
}

/// Waits until no process names `dir` on its command line: a step's `sh` that outlived a
/// killed handoff has finished its effect (or is gone) before anyone looks at the effects.
fn wait_for_steps_gone(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            cmdline.windows(needle.len()).any(|w| w == needle.as_slice())
        });
        if !alive {
            return;
        }
        assert!(Instant::now() < deadline, "a step's process outlived handoff for 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One trial of the crash harness: its directory, plan and state.
struct Trial {
    dir: tempfile::TempDir,
}

impl Trial {
    fn new() -> Trial {
        let trial = Trial { dir: tempfile::tempdir().unwrap() };
        std::fs::write(trial.path("plan.yaml"), undo_plan(&trial.path("effects"))).unwrap();
        trial
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn effects(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("effects")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// The event log's whole records.
    fn log(&self) -> Vec<serde_json::Value> {
        let runs = self.path("state/undo/local/runs");
        let Some(run) = std::fs::read_dir(runs).ok().and_then(|mut d| d.next()).and_then(Result::ok) else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(run.path().join("events.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// `handoff VERB` on the trial's plan, in the background.
    fn spawn(&self, verb: &str, settle: &[String]) -> Child {
        let (plan, state) = (self.path("plan.yaml"), self.path("state"));
        let mut args = vec![verb, plan.to_str().unwrap(), "--env", "local", "--state-dir", state.to_str().unwrap()];
        args.extend(["--allow-shell", "--clock", "virtual"]);
        for key in settle {
            args.extend(["--settle", key.as_str()]);
        }
        spawn(&args, self.dir.path())
    }

    /// Runs `child` to its end, or kills it once the log has `kill_at` records (and a few
    /// random milliseconds more): its exit code, `None` when killed.
    fn drive(&self, mut child: Child, kill_at: Option<(usize, u64)>) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status.code().expect("handoff exits by itself unless killed"));
            }
            if let Some((records, delay)) = kill_at
                && self.log().len() >= records
            {
                std::thread::sleep(Duration::from_millis(delay));
                kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
                let status = child.wait().unwrap();
                wait_for_steps_gone(self.dir.path());
                return status.code();
            }
            assert!(Instant::now() < deadline, "handoff hung");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What the effects file says about what the run paused on: a step's key (`P/S`) or a
    /// step's undo (`P/S/undo`) is settled as done when its line is there.
    fn settle(&self) -> String {
        let paused = self.log().into_iter().rev().find(|e| e["event"] == "paused").expect("a pause");
        let key = paused["key"].as_str().unwrap().to_owned();
        let line = match key.strip_suffix("/undo") {
            Some(step) => format!("undo {step}"),
            None => key.clone(),
        };
        let done = self.effects().contains(&line);
        format!("{key}={}", if done { "done" } else { "retry" })
    }
}

#[test]
fn killed_at_random_points_and_settled_as_the_effects_show_every_effect_and_undo_happens_once() {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("HANDOFF_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // `two/d` may have been cancelled before or after its effect; the rest happen.
    let expected = ["one/a", "one/b", "two/c", "two/r", "undo two/c"];
    let mut settled = 0;
    for trial_number in 0..40 {
        let trial = Trial::new();
        let mut child = trial.spawn("run", &[]);
        // A run writes about 30 records; kill somewhere in it, and now and then in a resume.
        let mut kill_at = Some((rng.random_range(2..32), rng.random_range(0..25)));
        let mut settle = Vec::new();
        let code = loop {
            let code = trial.drive(child, kill_at);
            kill_at = if code.is_none() && rng.random_bool(0.3) {
                Some((trial.log().len() + rng.random_range(1..8), rng.random_range(0..25)))
            } else {
                None
            };
            if trial.log().iter().any(|e| e["event"] == "run_finished") {
                break code;
            }
            match code {
                Some(4) => {
                    settle = vec![trial.settle()];
                    settled += 1;
                }
                None => settle.clear(),
                Some(other) => panic!("trial {trial_number} (seed {seed}): handoff exited {other}"),
            }
            child = trial.spawn("resume", &settle);
        };
        let effects = trial.effects();
        for line in expected {
            let count = effects.iter().filter(|e| *e == line).count();
            assert_eq!(count, 1, "trial {trial_number} (seed {seed}): `{line}` happened {count} times: {effects:?}");
        }
        let count = |line: &str| effects.iter().filter(|e| *e == line).count();
        assert!(count("two/d") <= 1, "trial {trial_number} (seed {seed}): {effects:?}");
        assert_eq!(count("undo two/d"), count("two/d"), "trial {trial_number} (seed {seed}): {effects:?}");
        assert_eq!(
            effects.len(),
            expected.len() + 2 * count("two/d"),
            "trial {trial_number} (seed {seed}): {effects:?}"
        );
        let finished = trial.log().into_iter().rev().find(|e| e["event"] == "run_finished").unwrap();
        assert_eq!(finished["status"], "rolled_back", "trial {trial_number} (seed {seed}), exit {code:?}");
    }
    println!("seed {seed}: 40 trials, {settled} settled by a person");
}

/// A plan whose one step writes its process group id to `$WORK/pgid`, leaves a grandchild
/// running, and would record its effect in `$WORK/effects` half a minute later; its shell
/// first runs `TRAP` (`trap "" TERM` ignores SIGTERM).
const LINGERING: &str = "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: crash}\n\
environments: {local: {endpoints: {}}}\nphases:\n  - {id: one, name: One, rollback: {max_duration: 1m, steps: []}, \
steps: [{id: slow, uses: shell.run, with: {env: {WORK: \"${WORK}\"}, command: [sh, -c, \
'TRAP; cut -d\" \" -f5 /proc/$$/stat > \"$WORK/pgid.new\"; mv \"$WORK/pgid.new\" \"$WORK/pgid\"; \
sleep 30 & sleep 30; echo done >> \"$WORK/effects\"']}}]}\n";

/// Starts the lingering plan with `trap` as its shell's first command, waits until its step
/// is running, and returns handoff and the step's process group.
fn start_lingering(work: &Path, trap: &str) -> (Child, i32) {
    let plan = work.join("lingering.yaml");
    std::fs::write(&plan, LINGERING.replace("TRAP", trap)).unwrap();
    let state = work.join("state");
    let args =
        ["run", plan.to_str().unwrap(), "--env", "local", "--state-dir", state.to_str().unwrap(), "--allow-shell"];
    let child = spawn(&args, work);
    let started = Instant::now();
    let pgid = loop {
        if let Ok(text) = std::fs::read_to_string(work.join("pgid")) {
            break text.trim().parse::<i32>().expect("a process group id");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the step never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    (child, pgid)
}

/// Waits (a bounded time, a guard against a hang) until no process of `pgid` is left.
fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let started = Instant::now();
    while !handoff_executor::process::group_gone(pgid) {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn a_step_s_processes_die_with_a_killed_handoff() {
    // A step that ignores SIGTERM is killed after the grace.
    for trap in ["true", r#"trap "" TERM"#] {
        let work = tempfile::tempdir().unwrap();
        let (mut child, pgid) = start_lingering(work.path(), trap);
        assert!(!handoff_executor::process::group_gone(pgid), "the step runs");
        kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(wait_group_gone(pgid, Duration::from_secs(25)), "the step's group outlived handoff ({trap})");
        assert!(!work.path().join("effects").exists(), "the step's effect happened after handoff died ({trap})");
    }
}

#[test]
fn sigterm_stops_a_step_s_whole_group_before_handoff_exits() {
    // A step that ignores SIGTERM is killed after the grace.
    for trap in ["true", r#"trap "" TERM"#] {
        let work = tempfile::tempdir().unwrap();
        let (mut child, pgid) = start_lingering(work.path(), trap);
        kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{trap}");
        assert!(handoff_executor::process::group_gone(pgid), "handoff exited with processes of the step left ({trap})");
        assert!(!work.path().join("effects").exists(), "the step's effect happened ({trap})");
    }
}

#[test]
fn an_archive_path_from_a_variable_is_written_where_the_variable_points() {
    use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let specs = [ServiceSpec::new("old", ServiceKind::Mongo)];
    let sandbox = runtime.block_on(Sandbox::start(&specs, &Options::default())).expect("the sandbox starts");
    let old = sandbox.service("old").unwrap().endpoint().url.clone();
    runtime.block_on(async {
        let client = mongodb::Client::with_uri_str(&old).await.unwrap();
        let items = client.database("restaurant").collection::<mongodb::bson::Document>("menu_items");
        items.insert_many((0..50).map(|i| mongodb::bson::doc! {"_id": i, "name": format!("Dish {i}")})).await.unwrap();
    });
    let work = tempfile::tempdir().unwrap();
    let archives = work.path().join("archives");
    let state = work.path().join("state");
    let plan = "tests/fixtures/run/mongo-archive.yaml";
    let args = ["run", plan, "--env", "sandbox", "--state-dir", state.to_str().unwrap()];
    let env = [("OLD_DB_URL", OsStr::new(&old)), ("ARCHIVE_DIR", archives.as_os_str())];
    let output = handoff_with(&args, &env);
    runtime.block_on(sandbox.shutdown());
    let text = transcript(&output);
    assert!(matches!(output.status.code(), Some(0 | 4)), "{text}");
    let written: Vec<_> = std::fs::read_dir(archives.join("menu-items")).expect("the archive's directory").collect();
    assert!(written.len() >= 2, "the archive and its manifest: {written:?}");
    assert!(!root().join("tests/fixtures/run/${ARCHIVE_DIR}").exists(), "a directory named after the reference");
}

#[test]
fn an_environment_not_in_the_plan_is_refused_by_every_command_before_any_path_is_made() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("a/b/state");
    let state_arg = state.to_str().unwrap();
    for args in [
        vec!["approve", SETTINGS, "switch-writes/approval-1", "--env", "../../x", "--state-dir", state_arg],
        vec!["status", SETTINGS, "--env", "nosuchenv", "--state-dir", state_arg],
        vec!["resume", SETTINGS, "--env", "../x", "--state-dir", state_arg],
        vec!["abort", SETTINGS, "--env", "nosuchenv", "--state-dir", state_arg],
    ] {
        let output = handoff(&args);
        let text = transcript(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains("is not in the plan; it defines: local"), "{args:?}: {text}");
    }
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "nothing was written anywhere");
}

#[test]
fn control_characters_from_a_plan_and_a_command_never_reach_the_terminal_raw() {
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("escape.yaml");
    std::fs::write(
        &plan,
        "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: escape}\nenvironments: {local: {endpoints: {}}}\n\
phases:\n  - {id: one, name: \"One \\e[2J\", rollback: {max_duration: 1m, steps: []}, steps: [{id: loud, uses: shell.run, \
with: {command: [sh, -c, 'printf \"\\033[31mred\\033]0;title\\007\" >&2; exit 3']}}]}\n",
    )
    .unwrap();
    let state = work.path().join("state");
    let args =
        ["run", plan.to_str().unwrap(), "--env", "local", "--state-dir", state.to_str().unwrap(), "--allow-shell"];
    let run = handoff(&args);
    let status = handoff(&["status", plan.to_str().unwrap(), "--env", "local", "--state-dir", state.to_str().unwrap()]);
    let rendered = work.path().join("out");
    let render = handoff(&["render", plan.to_str().unwrap(), "--out", rendered.to_str().unwrap()]);
    assert_eq!(render.status.code(), Some(0), "{}", transcript(&render));
    let runbook = std::fs::read_to_string(rendered.join("runbook.md")).unwrap();
    let show = transcript(&handoff(&["plan", "show", plan.to_str().unwrap()]));
    let dry = transcript(&handoff(&[&args[..], &["--dry-run"]].concat()));
    let outputs = [("run", transcript(&run)), ("status", transcript(&status)), ("runbook", runbook)];
    for (what, text) in outputs.into_iter().chain([("plan show", show), ("dry run", dry)]) {
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{what} printed control characters raw: {text:?}");
    }
    assert!(transcript(&run).contains("\\u{1b}[31mred"), "{}", transcript(&run));
}

/// Five steps that each take a moment and record their effect.
const FIVE_STEPS: &str = "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: piped}\n\
environments: {local: {endpoints: {}}}\nphases:\n  - {id: one, name: One, rollback: {max_duration: 1m, steps: []}, steps: [\
{id: s1, uses: shell.run, with: {env: {WORK: \"${WORK}\"}, command: [sh, -c, 'sleep 0.2; echo s1 >> \"$WORK/effects\"']}}, \
{id: s2, uses: shell.run, with: {env: {WORK: \"${WORK}\"}, command: [sh, -c, 'sleep 0.2; echo s2 >> \"$WORK/effects\"']}}, \
{id: s3, uses: shell.run, with: {env: {WORK: \"${WORK}\"}, command: [sh, -c, 'sleep 0.2; echo s3 >> \"$WORK/effects\"']}}, \
{id: s4, uses: shell.run, with: {env: {WORK: \"${WORK}\"}, command: [sh, -c, 'sleep 0.2; echo s4 >> \"$WORK/effects\"']}}, \
{id: s5, uses: shell.run, with: {env: {WORK: \"${WORK}\"}, command: [sh, -c, 'sleep 0.2; echo s5 >> \"$WORK/effects\"']}}]}\n";

#[test]
fn a_reader_that_goes_away_does_not_stop_the_run() {
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("piped.yaml");
    std::fs::write(&plan, FIVE_STEPS).unwrap();
    let state = work.path().join("state");
    let args =
        ["run", plan.to_str().unwrap(), "--env", "local", "--state-dir", state.to_str().unwrap(), "--allow-shell"];
    // `handoff run … | head -1`: the reader takes one line and closes the pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(args)
        .env("WORK", work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "the run's own exit code: {stderr}");
    assert!(stderr.contains("stdout was closed: the run goes on") && stderr.contains("completed"), "{stderr}");
    let effects = std::fs::read_to_string(work.path().join("effects")).unwrap();
    assert_eq!(effects, "s1\ns2\ns3\ns4\ns5\n", "every step ran once, to the end");
}

/// `text` with every duration (`0.1s`, `4m05s`, `2d03h`) written `<t>`: what a terminal
/// shows of real time depends on the machine's load.
fn without_durations(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let in_word = out.chars().last().is_some_and(char::is_alphanumeric);
        let end = rest.find(|c: char| !(c.is_ascii_digit() || ".dhms".contains(c))).unwrap_or(rest.len());
        let word = &rest[..end];
        let whole = !rest[end..].starts_with(char::is_alphanumeric);
        if c.is_ascii_digit() && !in_word && whole && word.ends_with(['d', 'h', 'm', 's']) {
            out.push_str("<t>");
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[test]
fn the_live_view_in_a_terminal_shows_the_calendar_the_steps_and_the_criteria_against_their_thresholds() {
    let args = ["run", SETTINGS, "--allow-shell", "--clock", "virtual"];
    let settings = Settings::new(r#"{"error_rate": 0.2, "stale_reads": 0}"#);
    let (code, paused) = settings.screen(settings.on_terminal(&args));
    assert_eq!(code, Some(4), "{paused}");
    insta::assert_snapshot!("live_paused", paused);
    let settings = Settings::new(r#"{"error_rate": 3, "stale_reads": 0}"#);
    let (code, rolled_back) = settings.screen(settings.on_terminal(&args));
    assert_eq!(code, Some(3), "{rolled_back}");
    insta::assert_snapshot!("live_rolled_back", rolled_back);
}

/// Two dated phases: a soak of a day in the first, a step that sleeps in the second.
const DATED: &str = "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: dated}\n\
environments: {local: {endpoints: {}}}\ntimeline: {start: 2026-03-02}\nphases:\n\
  - {id: prepare, name: Prepare, schedule: {duration: 2d}, gates: [{soak: 1d}], rollback: {max_duration: 1m, steps: []}, \
steps: [{id: quick, uses: shell.run, with: {command: [sh, -c, 'true']}}]}\n\
  - {id: move, name: Move, schedule: {duration: 3d}, rollback: {max_duration: 1m, steps: []}, \
steps: [{id: slow, uses: shell.run, with: {command: [sh, -c, 'sleep 30']}}]}\n";

#[test]
fn ctrl_c_under_the_live_view_leaves_its_last_frame_then_how_to_resume() {
    let settings = Settings::new("{}");
    let plan = settings.path("dated.yaml");
    std::fs::write(&plan, DATED).unwrap();
    let terminal = settings.on_terminal(&["run", plan.to_str().unwrap(), "--allow-shell", "--clock", "virtual"]);
    // The frame while the slow step runs: the calendar on plan day 3, the step's spinner.
    terminal.wait_for(" slow (");
    assert!(terminal.contents().contains("plan day 3 of 5 ["), "{}", terminal.contents());
    kill(Pid::from_raw(i32::try_from(terminal.pid()).unwrap()), Signal::SIGINT).unwrap();
    let (code, screen) = settings.screen(terminal);
    assert_eq!(code, Some(130), "{screen}");
    insta::assert_snapshot!("live_interrupted", screen);
}
