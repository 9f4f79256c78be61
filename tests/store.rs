//! The run log and the lease through the real binary: a torn last line against a corrupt
//! record, a read-only `status`, an empty log, damaged lock files (the directory store), and,
//! against both the directory store and the MongoDB store, `handoff lock list|break`, a run
//! resumed from another host identity after its SIGKILLed holder's lease expired, and a
//! holder stopped (SIGSTOP) past its lease that must never write again once another process
//! took over.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use handoff_engine::{LockRecord, LockRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::backend::{BOTH, Backend, Kind};
use support::{handoff_with, transcript};

/// A phase that does something, asks a person, then does something else; and a phase
/// with a step that takes a while.
const PLAN: &str = r#"apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata: {name: store}
environments: {local: {endpoints: {}}}
phases:
  - id: one
    name: One
    steps:
      - {id: a, uses: shell.run, idempotent: true, with: {command: [sh, -c, 'echo a >> "$WORK/runs.log"'], env: {WORK: "${WORK}"}}}
      - {id: ask, uses: gate.manual, with: {prompt: Go on?, approvers: [lead]}}
    rollback: {max_duration: 1m, steps: []}
  - id: two
    name: Two
    steps:
      - {id: slow, uses: shell.run, idempotent: true, with: {command: [sh, -c, 'sleep 2; echo slow >> "$WORK/runs.log"'], env: {WORK: "${WORK}"}}}
      - {id: b, uses: shell.run, idempotent: true, with: {command: [sh, -c, 'echo b >> "$WORK/runs.log"'], env: {WORK: "${WORK}"}}}
    rollback: {max_duration: 1m, steps: []}
"#;

/// A plan, the store of its runs and the work directory its steps write to.
struct Workspace {
    dir: tempfile::TempDir,
    backend: Backend,
}

impl Workspace {
    /// A plan whose runs keep their state in a store of `kind`.
    fn with(plan: &str, kind: Kind) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plan.yaml"), plan).unwrap();
        Workspace { dir, backend: Backend::new(kind) }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// `handoff VERB plan.yaml ARGS --env local --state-dir …` (or `--state URL`).
    fn args(&self, verb: &str, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = verb.split(' ').map(str::to_owned).collect();
        all.push(self.path("plan.yaml").display().to_string());
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all.extend(["--env".to_owned(), "local".to_owned()]);
        all.extend(self.backend.args());
        all
    }

    fn run(&self, verb: &str, args: &[&str]) -> Output {
        self.run_on(None, verb, args)
    }

    /// [`Workspace::run`] as a process of host identity `host` (`HANDOFF_HOST`), if given.
    fn run_on(&self, host: Option<&str>, verb: &str, args: &[&str]) -> Output {
        let all = self.args(verb, args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut env = vec![("WORK", self.dir.path().as_os_str())];
        env.extend(host.map(|h| ("HANDOFF_HOST", OsStr::new(h))));
        handoff_with(&all, &env)
    }

    fn spawn(&self, verb: &str, args: &[&str]) -> Child {
        self.spawn_on(None, verb, args)
    }

    /// [`Workspace::spawn`] as a process of host identity `host`, if given.
    fn spawn_on(&self, host: Option<&str>, verb: &str, args: &[&str]) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
        if let Some(host) = host {
            command.env("HANDOFF_HOST", host);
        }
        command
            .args(self.args(verb, args))
            .env("WORK", self.dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The directory of the directory store.
    fn store(&self) -> PathBuf {
        self.backend.dir().join("store/local")
    }

    /// The log of the only run (directory store).
    fn log(&self) -> PathBuf {
        let runs = self.store().join("runs");
        let run = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap();
        run.path().join("events.jsonl")
    }

    /// The records of the latest run, complete ones only.
    fn records(&self) -> Vec<serde_json::Value> {
        self.backend.records("store", "local")
    }

    /// A run paused at the gate of phase one.
    fn paused(plan: &str) -> Workspace {
        Workspace::paused_in(plan, Kind::Dir)
    }

    /// A run paused at the gate of phase one, its state in a store of `kind`.
    fn paused_in(plan: &str, kind: Kind) -> Workspace {
        let work = Workspace::with(plan, kind);
        let run = work.run("run", &["--allow-shell"]);
        assert_eq!(run.status.code(), Some(4), "{}", transcript(&run));
        work
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
}

#[test]
fn a_torn_last_line_is_left_to_a_resume_and_a_corrupt_record_is_refused_with_its_number() {
    let work = Workspace::paused(PLAN);
    let log = work.log();
    let whole = std::fs::read(&log).unwrap();
    let records = work.records().len();

    // Torn: `status` reads around it and leaves the file as it is.
    append(&log, b"{\"seq\":99,\"at\":\"19");
    let torn = std::fs::read(&log).unwrap();
    let status = work.run("status", &[]);
    assert_eq!(status.status.code(), Some(0), "{}", transcript(&status));
    assert!(stdout(&status).contains("waiting for `one/ask`"), "{}", transcript(&status));
    assert_eq!(std::fs::read(&log).unwrap(), torn, "status never writes");
    // A resume (under the lock) cuts it off and goes on from the records before it.
    let resume = work.run("resume", &["--allow-shell"]);
    assert_eq!(resume.status.code(), Some(4), "{}", transcript(&resume));
    let repaired = std::fs::read(&log).unwrap();
    assert!(repaired.starts_with(&whole) && repaired.ends_with(b"\n"), "{}", String::from_utf8_lossy(&repaired));
    assert_eq!(work.records().len(), std::fs::read_to_string(&log).unwrap().lines().count());

    // Complete but corrupt: refused by every command, with its number, and never changed.
    let records_now = work.records().len();
    assert!(records_now > records);
    append(&log, b"{\"seq\": not json}\n");
    let corrupt = std::fs::read(&log).unwrap();
    for verb in ["status", "resume", "run", "abort"] {
        let flags: &[&str] = if verb == "status" { &[] } else { &["--allow-shell"] };
        let output = work.run(verb, flags);
        assert_eq!(output.status.code(), Some(2), "{verb}: {}", transcript(&output));
        let text = stderr(&output);
        let number = records_now + 1;
        assert!(text.contains(&format!("record {number} is corrupt")), "{verb}: {text}");
        assert!(text.contains(&format!("head -n {records_now}")), "{verb}: {text}");
        assert_eq!(std::fs::read(&log).unwrap(), corrupt, "{verb} changed the log");
    }
}

#[test]
fn an_empty_log_is_reported_and_no_run_starts_over_it() {
    let work = Workspace::paused(PLAN);
    std::fs::write(work.log(), b"").unwrap();
    let status = work.run("status", &[]);
    assert_eq!(status.status.code(), Some(2), "{}", transcript(&status));
    assert!(stderr(&status).contains("the event log is empty"), "{}", transcript(&status));
    let run = work.run("run", &["--allow-shell"]);
    assert_eq!(run.status.code(), Some(2), "{}", transcript(&run));
    assert!(stderr(&run).contains("the event log is empty") && stderr(&run).contains("runs/"), "{}", transcript(&run));
    assert_eq!(std::fs::read_dir(work.store().join("runs")).unwrap().count(), 1, "no new run started");
    assert_eq!(std::fs::read_to_string(work.path("runs.log")).unwrap(), "a\n", "nothing ran again");
}

#[test]
fn a_damaged_lock_is_reported_and_lock_break_clears_it() {
    let work = Workspace::paused(PLAN);
    let lock = work.store().join("lock.json");
    for damage in ["", "{\"id\": \"x\", "] {
        std::fs::write(&lock, damage).unwrap();
        let status = work.run("status", &[]);
        assert_eq!(status.status.code(), Some(0), "{}", transcript(&status));
        assert!(
            stdout(&status).contains("LOCK DAMAGED") && stdout(&status).contains("lock.json"),
            "{}",
            transcript(&status)
        );
        let resume = work.run("resume", &["--allow-shell"]);
        assert_eq!(resume.status.code(), Some(2), "{}", transcript(&resume));
        assert!(stderr(&resume).contains("is damaged") && stderr(&resume).contains("lock break --damaged"));
        let list = work.run("lock list", &[]);
        assert!(stdout(&list).starts_with("DAMAGED: "), "{}", transcript(&list));
        let wrong = work.run("lock break", &["some-id", "--reason", "test"]);
        assert_eq!(wrong.status.code(), Some(2), "{}", transcript(&wrong));
        assert!(stderr(&wrong).contains("the current lock is damaged"), "{}", transcript(&wrong));
        let broken = work.run("lock break", &["--damaged", "--reason", "lock.json truncated"]);
        assert_eq!(broken.status.code(), Some(0), "{}", transcript(&broken));
        assert!(stdout(&broken).contains("recorded in run"), "{}", transcript(&broken));
        assert!(stdout(&work.run("lock list", &[])).starts_with("not locked"));
    }
    let status = stdout(&work.run("status", &[]));
    assert!(status.contains("interrupted: a damaged lock file was removed: lock.json truncated"), "{status}");
    let resume = work.run("resume", &["--allow-shell"]);
    assert_eq!(resume.status.code(), Some(4), "the run goes on: {}", transcript(&resume));
}

#[test]
fn lock_list_shows_the_holder_and_lock_break_removes_only_that_lock() {
    for kind in BOTH {
        lock_list_and_break(kind);
    }
}

/// A lock of another host is listed, refused to a resume, and broken only by its id, with
/// the reason kept in the run's log; the next lease's epoch is past the broken one.
fn lock_list_and_break(kind: Kind) {
    let work = Workspace::paused_in(PLAN, kind);
    let holder = LockRecord {
        id: "elsewhere-42-7".to_owned(),
        owner: "ada".to_owned(),
        host: "elsewhere".to_owned(),
        pid: 42,
        ..LockRecord::for_this_process("handoff run", Duration::from_secs(3600))
    };
    let store = work.backend.store("store", "local");
    let epoch = store.lock(&LockRequest { record: holder, force_unlock: None }).unwrap().lease.epoch;
    assert_eq!(work.run("resume", &["--allow-shell"]).status.code(), Some(6));
    let list = stdout(&work.run("lock list", &[]));
    let epoch_line = format!("epoch      {epoch}");
    for field in ["lock elsewhere-42-7 (live)", "owner      ada", "host       elsewhere (pid 42)", &epoch_line] {
        assert!(list.contains(field), "{field}: {list}");
    }
    let json: serde_json::Value = serde_json::from_str(&stdout(&work.run("lock list", &["--json"]))).unwrap();
    assert_eq!((json["lock"]["epoch"].as_u64(), json["stale"].as_bool()), (Some(epoch), Some(false)));
    let wrong = work.run("lock break", &["other", "--reason", "no"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("the current lock is elsewhere-42-7"), "{}", transcript(&wrong));
    let damaged = work.run("lock break", &["--damaged", "--reason", "no"]);
    assert_eq!(damaged.status.code(), Some(2), "a readable lock is not damaged: {}", transcript(&damaged));
    let broken = work.run("lock break", &["elsewhere-42-7", "--reason", "host decommissioned"]);
    assert_eq!(broken.status.code(), Some(0), "{}", transcript(&broken));
    assert!(stdout(&broken).contains("its holder looked alive"), "{}", transcript(&broken));
    let last = work.records().pop().unwrap();
    assert_eq!(last["event"], "interrupted");
    assert!(last["reason"].as_str().unwrap().ends_with("broken: host decommissioned"), "{last}");
    let resume = work.run("resume", &["--allow-shell"]);
    assert_eq!(resume.status.code(), Some(4), "{}", transcript(&resume));
    let record = LockRecord::for_this_process("test", Duration::from_secs(60));
    let next = store.lock(&LockRequest { record, force_unlock: None }).unwrap().lease;
    assert!(next.epoch > epoch + 1, "epoch {} after {epoch} and a resume", next.epoch);
    store.unlock(&next).unwrap();
}

/// Waits for `done` to hold, up to `limit`; says whether it did.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether every thread of `pid` is stopped.
fn stopped(pid: Pid) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.filter_map(Result::ok).all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// Stops `pid` (SIGSTOP) at a moment it does not hold the store's guard (an append's or a
/// heartbeat's `flock`): a holder stopped inside one would keep a take-over waiting until
/// it continues, which is safe but not the race under test.
fn stop_outside_the_guard(pid: Pid, guard: &Path) {
    loop {
        kill(pid, Signal::SIGSTOP).unwrap();
        assert!(wait_for(Duration::from_secs(10), || stopped(pid)), "SIGSTOP did not stop {pid}");
        let file = std::fs::File::open(guard).unwrap();
        if file.try_lock().is_ok() {
            return;
        }
        kill(pid, Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops `pid` where the race under test needs it: outside the directory store's guard; in
/// the MongoDB store anywhere, an append half done (written, not committed) included.
fn stop_holder(work: &Workspace, pid: Pid) {
    match work.backend.kind() {
        Kind::Dir => stop_outside_the_guard(pid, &work.store().join("lock.guard")),
        Kind::Mongo => {
            kill(pid, Signal::SIGSTOP).unwrap();
            assert!(wait_for(Duration::from_secs(10), || stopped(pid)), "SIGSTOP did not stop {pid}");
        }
    }
}

/// One trial of the race: the holder is stopped in its slow step until its lease expires,
/// another process resumes, then the holder continues.
fn stopped_holder_race(kind: Kind) {
    let work = Workspace::paused_in(PLAN, kind);
    let approve = work.run("approve", &["one/ask"]);
    assert_eq!(approve.status.code(), Some(0), "{}", transcript(&approve));
    let first = work.spawn("resume", &["--allow-shell", "--lock-ttl", "1"]);
    let started = |work: &Workspace| work.records().iter().any(|r| r["event"] == "step_started" && r["step"] == "slow");
    assert!(wait_for(Duration::from_secs(30), || started(&work)), "the slow step did not start");
    let pid = Pid::from_raw(i32::try_from(first.id()).unwrap());
    stop_holder(&work, pid);
    let expired = || {
        let list = work.run("lock list", &["--json"]);
        serde_json::from_slice::<serde_json::Value>(&list.stdout).is_ok_and(|v| v["stale"] == true)
    };
    assert!(wait_for(Duration::from_secs(30), expired), "the stopped holder's lease never expired");
    let second = take_over(&work);
    // Let a `slow` step finish meanwhile, so that the first, when it continues, has a
    // result to record as well as an overdue heartbeat.
    let slow_done = || std::fs::read_to_string(work.path("runs.log")).is_ok_and(|t| t.contains("slow"));
    wait_for(Duration::from_secs(20), slow_done);
    kill(pid, Signal::SIGCONT).unwrap();
    let lost = first.wait_with_output_stderr();
    assert_eq!(lost.0, Some(2), "the stopped holder exits as having lost its lock: {}", lost.1);
    assert!(lost.1.contains("lost its lock"), "{}", lost.1);
    let done = second.wait_with_output_stderr();
    assert_eq!(done.0, Some(0), "the second run completes: {}", done.1);
    check_single_writer(&work.records());
}

/// Resumes the stopped holder's run from a second process, again while the holder's step
/// processes still run (each such attempt is refused, exit 6, naming them); returns the
/// process that took over.
fn take_over(work: &Workspace) -> Child {
    let resumes = |work: &Workspace| work.records().iter().filter(|r| r["event"] == "run_resumed").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut second = work.spawn("resume", &["--allow-shell"]);
        let took_over =
            wait_for(Duration::from_secs(30), || resumes(work) == 2 || second.try_wait().unwrap().is_some());
        assert!(took_over, "the second neither took over nor exited");
        if resumes(work) == 2 {
            return second;
        }
        let (code, stderr) = second.wait_with_output_stderr();
        assert_eq!(code, Some(6), "a refused take-over exits 6: {stderr}");
        assert!(stderr.contains("processes of its steps are still running"), "{stderr}");
        assert!(Instant::now() < deadline, "the stopped holder's steps never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log of the race: sequence numbers 1, 2, …; after the take-over's `run_resumed`,
/// only the new holder's records (each step started and finished once, no interruption).
fn check_single_writer(records: &[serde_json::Value]) {
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    let takeover = records.iter().rposition(|r| r["event"] == "run_resumed").unwrap();
    let after = &records[takeover + 1..];
    let events: Vec<String> = after
        .iter()
        .filter(|r| !matches!(r["event"].as_str(), Some("metric" | "checkpoint")))
        .map(|r| {
            format!("{} {}", r["event"].as_str().unwrap(), r["step"].as_str().or(r["phase"].as_str()).unwrap_or(""))
        })
        .collect();
    let expected = [
        "step_started slow",
        "step_finished slow",
        "step_started b",
        "step_finished b",
        "phase_passed two",
        "run_finished ",
    ];
    assert_eq!(events, expected, "{records:#?}");
}

/// `wait_with_output` for a child whose stdout is not piped: its exit code and stderr.
trait WaitStderr {
    fn wait_with_output_stderr(self) -> (Option<i32>, String);
}

impl WaitStderr for Child {
    fn wait_with_output_stderr(mut self) -> (Option<i32>, String) {
        let mut text = String::new();
        if let Some(mut pipe) = self.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        }
        (self.wait().unwrap().code(), text)
    }
}

/// A step that runs for a minute, after which it would record its effect.
const LONG_STEP: &str = r#"apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata: {name: store}
environments: {local: {endpoints: {}}}
phases:
  - id: one
    name: One
    steps:
      - {id: long, uses: shell.run, idempotent: true, with: {command: [sh, -c, 'sleep 60; echo long >> "$WORK/runs.log"'], env: {WORK: "${WORK}"}}}
    rollback: {max_duration: 1m, steps: []}
"#;

#[test]
fn a_stale_lease_is_not_taken_over_while_its_holders_steps_still_run() {
    for kind in BOTH {
        stale_lease_with_running_steps(kind);
    }
}

/// A holder stopped past its lease while its step's processes run is not taken over on
/// this host until they are gone (its state in `kind`).
fn stale_lease_with_running_steps(kind: Kind) {
    let work = Workspace::with(LONG_STEP, kind);
    let first = work.spawn("run", &["--allow-shell", "--lock-ttl", "1"]);
    let started = || work.records().iter().any(|r| r["event"] == "step_started" && r["step"] == "long");
    assert!(wait_for(Duration::from_secs(30), started), "the long step did not start");
    let pid = Pid::from_raw(i32::try_from(first.id()).unwrap());
    stop_holder(&work, pid);
    let stale = || {
        let list = work.run("lock list", &["--json"]);
        serde_json::from_slice::<serde_json::Value>(&list.stdout).is_ok_and(|v| v["stale"] == true)
    };
    assert!(wait_for(Duration::from_secs(30), stale), "the stopped holder's lease never expired");
    let refused = work.run("resume", &["--allow-shell"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(6), "{}", transcript(&refused));
    assert!(stderr.contains("processes of its steps are still running on this host (pids "), "{stderr}");
    // The holder dies; its lifeline takes its steps' processes down: now the run can be
    // taken over (an abort, which ends at once, where a resume would run the step again).
    kill(pid, Signal::SIGKILL).unwrap();
    let _ = first.wait_with_output_stderr();
    let mut aborted = None;
    let taken = wait_for(Duration::from_secs(30), || {
        aborted = work.run("abort", &["--allow-shell"]).status.code();
        aborted != Some(6)
    });
    assert!(taken && aborted == Some(3), "the run was not taken over once the holder's steps ended: {aborted:?}");
    assert!(!work.path("runs.log").exists(), "the killed holder's step never took effect");
}

#[test]
fn a_holder_stopped_past_its_lease_never_writes_after_a_take_over() {
    for kind in BOTH {
        for _ in 0..3 {
            stopped_holder_race(kind);
        }
    }
}

#[test]
fn a_run_started_on_one_host_is_resumed_on_another_after_its_killed_holder_s_lease_expires() {
    for kind in BOTH {
        resumed_on_another_host(kind);
    }
}

/// A run paused on `ci-runner-1` is resumed there, and that holder is SIGKILLed in its slow
/// step; `laptop` cannot take over until the lease expired (and the steps' kill grace
/// passed), then does, and finishes the run as the only writer.
fn resumed_on_another_host(kind: Kind) {
    let work = Workspace::with(PLAN, kind);
    let run = work.run_on(Some("ci-runner-1"), "run", &["--allow-shell"]);
    assert_eq!(run.status.code(), Some(4), "{}", transcript(&run));
    let approve = work.run_on(Some("laptop"), "approve", &["one/ask"]);
    assert_eq!(approve.status.code(), Some(0), "{}", transcript(&approve));
    let mut first = work.spawn_on(Some("ci-runner-1"), "resume", &["--allow-shell", "--lock-ttl", "2"]);
    let started = || work.records().iter().any(|r| r["event"] == "step_started" && r["step"] == "slow");
    assert!(wait_for(Duration::from_secs(30), started), "the slow step did not start");
    first.kill().unwrap();
    first.wait().unwrap();
    let held = work.backend.lock("store", "local").expect("the killed holder's lease is left");
    assert_eq!(held.host, "ci-runner-1");
    let refused = work.run_on(Some("laptop"), "resume", &["--allow-shell"]);
    assert_eq!(refused.status.code(), Some(6), "a live lease of another host is not taken: {}", transcript(&refused));
    let mut done = None;
    let taken = wait_for(Duration::from_secs(30), || {
        done = Some(work.run_on(Some("laptop"), "resume", &["--allow-shell"]));
        done.as_ref().unwrap().status.code() != Some(6)
    });
    let done = done.unwrap();
    assert!(taken && done.status.code() == Some(0), "{}", transcript(&done));
    assert!(stderr(&done).contains("took over a stale lock"), "{}", transcript(&done));
    let records = work.records();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    assert_eq!(records.last().unwrap()["event"], "run_finished");
    assert_eq!(work.backend.lock("store", "local"), None);
}

#[test]
fn the_environment_s_state_chooses_the_shared_store_and_its_credentials_are_never_printed() {
    let shared = Backend::new(Kind::Mongo);
    let url = shared.url().unwrap().to_owned();
    let plan = PLAN.replace("{local: {endpoints: {}}}", r#"{local: {state: "${STATE_URL}", endpoints: {}}}"#);
    // `--state-dir` (given by the workspace) is the fallback only: the plan's store wins.
    let work = Workspace::with(&plan, Kind::Dir);
    let as_shared = |verb: &str, args: &[&str], url: &str| {
        let all = work.args(verb, args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        handoff_with(&all, &[("WORK", work.path("").as_os_str()), ("STATE_URL", OsStr::new(url))])
    };
    let run = as_shared("run", &["--allow-shell"], &url);
    assert_eq!(run.status.code(), Some(4), "{}", transcript(&run));
    assert!(!work.store().exists(), "nothing was written to the state directory");
    let records = shared.records("store", "local");
    assert_eq!(records.last().unwrap()["event"], "paused", "{records:#?}");
    let status = as_shared("status", &[], &url);
    assert!(stdout(&status).contains("waiting for `one/ask`"), "{}", transcript(&status));

    // With credentials in the connection string, no command prints them, whatever the
    // server makes of them.
    let (scheme, rest) = url.split_once("://").unwrap();
    let secret = "canary-pw-93d1";
    let with_credentials = format!("{scheme}://ada:{secret}@{rest}");
    for (verb, args) in [("lock list", &[][..]), ("status", &[]), ("resume", &["--allow-shell"][..])] {
        let output = as_shared(verb, args, &with_credentials);
        assert!(!transcript(&output).contains(secret), "{verb}: {}", transcript(&output));
    }
    let list = as_shared("lock list", &[], &with_credentials);
    assert!(transcript(&list).contains("mongodb://***@127.0.0.1:"), "{}", transcript(&list));
    let not_mongo = as_shared("status", &[], "postgres://ada:canary-pw-93d1@db/state");
    assert_eq!(not_mongo.status.code(), Some(2), "{}", transcript(&not_mongo));
    assert!(stderr(&not_mongo).contains("not a MongoDB connection string"), "{}", transcript(&not_mongo));
    assert!(!transcript(&not_mongo).contains(secret), "{}", transcript(&not_mongo));
}
