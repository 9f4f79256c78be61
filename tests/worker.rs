//! `handoff worker` through the real binary against a sandbox MongoDB: a run posts its
//! background `mongo.sync` for a worker and exits; the worker keeps applying the source's
//! writes while no `handoff run` process is alive; a SIGKILLed worker's sync is taken over
//! by a second worker once its job lease expired, from its checkpoint; the run, resumed,
//! stops the sync through the worker and `mongo.verify` finds no discrepancy.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use serde_json::Value;
use support::backend::{Backend, Kind};
use support::{handoff_with, transcript};

/// A copy, then a sync from where the copy started (so no write after the run began is
/// missed, whenever the worker opens its change stream), held open by a person's gate (the
/// run exits, paused), then stopped and verified in phase two.
const PLAN: &str = r#"apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata: {name: hosted}
environments: {local: {endpoints: {db: "${DB_URL}"}}}
resources:
  src: {kind: mongodb, endpoint: db, database: src, collections: [items]}
  dst: {kind: mongodb, endpoint: db, database: dst, collections: [items]}
phases:
  - id: one
    name: One
    steps:
      - id: copy
        uses: mongo.copy
        with: {source: {resource: src, collection: items}, target: {resource: dst, collection: items}}
      - id: sync
        uses: mongo.sync
        with: {source: {resource: src, collection: items}, target: {resource: dst, collection: items}, checkpoint_every: 200ms}
      - {id: ask, uses: gate.manual, with: {prompt: Soak done?, approvers: [lead]}}
    rollback: {max_duration: 1m, steps: []}
  - id: two
    name: Two
    steps:
      - {id: stop, uses: mongo.stop_sync, with: {sync: sync}}
      - id: check
        uses: mongo.verify
        with: {source: {resource: src, collection: items}, target: {resource: dst, collection: items}}
    rollback: {max_duration: 1m, steps: []}
"#;

/// How long the test waits for a worker to do what it must (a guard against a hang, not a
/// performance check).
const PATIENCE: Duration = Duration::from_secs(60);

/// The plan, its shared store (one sandbox MongoDB that also holds the data) and a client.
struct Scenario {
    dir: tempfile::TempDir,
    backend: Backend,
    runtime: tokio::runtime::Runtime,
    client: mongodb::Client,
}

/// A running `handoff worker` and the lines it printed.
struct Worker {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Worker {
    /// Waits until the worker printed a line containing `text`.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("the worker never printed {text:?}; it printed {:?}", self.seen),
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Scenario {
    fn new() -> Scenario {
        Scenario::of(PLAN)
    }

    /// A scenario of `plan`.
    fn of(plan: &str) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plan.yaml"), plan).unwrap();
        let backend = Backend::new(Kind::Mongo);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let url = backend.url().unwrap().to_owned();
        let client = runtime.block_on(mongodb::Client::with_uri_str(&url)).unwrap();
        Scenario { dir, backend, runtime, client }
    }

    fn url(&self) -> &str {
        self.backend.url().unwrap()
    }

    /// `handoff VERB plan.yaml ARGS --env local --state URL` with the data's endpoint set.
    fn handoff(&self, verb: &str, args: &[&str]) -> std::process::Output {
        let plan = self.dir.path().join("plan.yaml").display().to_string();
        let mut all = vec![verb, plan.as_str()];
        all.extend(args);
        all.extend(["--env", "local", "--state", self.url()]);
        handoff_with(&all, &[("DB_URL", self.url().as_ref())])
    }

    /// Starts `handoff worker` as host `host` with a 2 s lease.
    fn worker(&self, host: &str) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
            .args(["worker", "--state", self.url(), "--lease-ttl", "2", "--poll", "1"])
            .env("DB_URL", self.url())
            .env("HANDOFF_HOST", host)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts");
        let (send, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Worker { child, lines, seen: Vec::new() }
    }

    fn collection(&self, db: &str) -> mongodb::Collection<Document> {
        self.client.database(db).collection("items")
    }

    /// Writes documents `range` to the source.
    fn write(&self, range: std::ops::Range<i32>) {
        let docs: Vec<Document> = range.map(|n| doc! {"_id": n, "name": format!("item {n}")}).collect();
        self.runtime.block_on(async { self.collection("src").insert_many(docs).await }).unwrap();
    }

    /// Waits until the target holds `count` documents.
    fn wait_target(&self, count: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let have = self.runtime.block_on(async { self.collection("dst").count_documents(doc! {}).await }).unwrap();
            if have == count {
                return;
            }
            assert!(Instant::now() < deadline, "the target has {have} documents, not {count}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the hosted sync's checkpoint in the shared store counts `applied` changes.
    fn wait_checkpoint(&self, applied: u64) {
        let jobs = self.client.database("state").collection::<Document>("jobs");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.runtime.block_on(async { jobs.find_one(doc! {}).await }).unwrap();
            let checkpoint = job.as_ref().and_then(|j| j.get_str("checkpoint").ok()).unwrap_or("null");
            let checkpoint: Value = serde_json::from_str(checkpoint).unwrap();
            if checkpoint["applied"] == applied {
                return;
            }
            assert!(Instant::now() < deadline, "the job's checkpoint is {checkpoint}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `handoff worker --list` shows a line containing every one of `texts`.
    fn wait_listed(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let list = handoff_with(&["worker", "--list", "--state", self.url()], &[]);
            assert!(list.status.success(), "{}", transcript(&list));
            let text = String::from_utf8_lossy(&list.stdout).into_owned();
            if let Some(line) = text.lines().find(|line| texts.iter().all(|t| line.contains(t))) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "`worker --list` never showed {texts:?}: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The output of step `id` in the run's log.
    fn output(&self, id: &str) -> Value {
        let records = self.backend.records("hosted", "local");
        let finished = records.iter().rev().find(|r| r["event"] == "step_finished" && r["step"] == id);
        finished.unwrap_or_else(|| panic!("no step_finished of `{id}` in {records:#?}"))["output"].clone()
    }

    /// Writes ten documents for the copy, then starts the run with its background steps
    /// posted for a worker; it pauses at the gate and its process exits.
    fn start(&self) {
        self.write(0..10);
        let run = self.handoff("run", &["--background", "worker"]);
        assert_eq!(run.status.code(), Some(4), "{}", transcript(&run));
        assert_eq!(self.output("sync")["hosted_by"], "worker", "{}", transcript(&run));
    }

    /// Approves the gate and resumes: the stop goes through the worker, then the verify.
    fn finish(&self) -> std::process::Output {
        let approve = self.handoff("approve", &["one/ask"]);
        assert!(approve.status.success(), "{}", transcript(&approve));
        let resume = self.handoff("resume", &[]);
        assert_eq!(resume.status.code(), Some(0), "{}", transcript(&resume));
        resume
    }
}

#[test]
fn a_worker_keeps_a_sync_applying_while_no_run_is_alive_and_the_stop_step_reports_it() {
    let scenario = Scenario::new();
    let mut worker = scenario.worker("worker-a");
    scenario.start();
    worker.wait_for("claimed hosted/local/");
    scenario.write(10..50);
    scenario.wait_target(50);
    scenario.write(50..70);
    scenario.wait_target(70);
    scenario.wait_listed(&["/sync: held by worker-a/", "(epoch 1)", "; sync_lag_seconds "]);
    let resume = scenario.finish();
    worker.wait_for("stopped hosted/local/");
    let stop = scenario.output("stop");
    assert_eq!(stop["was_running"], true, "{}", transcript(&resume));
    assert_eq!(stop["applied"], 60, "{stop}");
    assert_eq!(stop["stops"], serde_json::json!(["sync"]), "{stop}");
    assert_eq!(scenario.output("check")["integrity"]["discrepancies"], 0, "{}", transcript(&resume));
}

#[test]
fn a_killed_workers_sync_is_taken_over_from_its_checkpoint_with_no_discrepancy() {
    let scenario = Scenario::new();
    let mut first = scenario.worker("worker-a");
    scenario.start();
    first.wait_for("claimed hosted/local/");
    scenario.write(10..50);
    scenario.wait_target(50);
    scenario.wait_checkpoint(40);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.child.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let _ = first.child.wait();
    scenario.write(50..90);
    let mut second = scenario.worker("worker-b");
    let claimed = second.wait_for("claimed hosted/local/");
    assert!(claimed.contains("(epoch 2) from its checkpoint"), "{claimed}");
    scenario.wait_target(90);
    let resume = scenario.finish();
    second.wait_for("stopped hosted/local/");
    scenario.wait_listed(&["/sync: stopped"]);
    let check = scenario.output("check");
    assert_eq!(check["integrity"]["discrepancies"], 0, "{}", transcript(&resume));
    assert_eq!(check["integrity"]["compared"], 90, "{check}");
}

#[test]
fn background_steps_go_to_a_worker_only_through_a_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let state = dir.path().join("state");
    let args = ["run", plan.to_str().unwrap(), "--env", "local", "--background", "worker", "--state-dir"];
    let run = handoff_with(&[&args[..], &[state.to_str().unwrap()]].concat(), &[("DB_URL", "mongodb://x".as_ref())]);
    assert_eq!(run.status.code(), Some(2), "{}", transcript(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("`--background worker` needs a shared store"),
        "{}",
        transcript(&run)
    );
}

/// The plan with a 3 s soak gate instead of the person's gate: the run sleeps through it.
fn soaking_plan() -> String {
    let plan =
        PLAN.replace("      - {id: ask, uses: gate.manual, with: {prompt: Soak done?, approvers: [lead]}}\n", "");
    plan.replacen(
        "    rollback: {max_duration: 1m, steps: []}\n",
        "    gates: [{soak: 3s}]\n    rollback: {max_duration: 1m, steps: []}\n",
        1,
    )
}

/// A run whose sync a worker hosts sleeps through its soak (exit 8, no process alive); the
/// source's writes made meanwhile are in the target, and the run resumed after the soak
/// stops the sync and verifies with no discrepancy.
#[test]
fn a_run_sleeps_through_its_soak_while_a_worker_keeps_its_sync_applying() {
    let scenario = Scenario::of(&soaking_plan());
    let mut worker = scenario.worker("worker-a");
    scenario.write(0..10);
    let detached = ["--background", "worker", "--detach-over", "1s"];
    let asleep = scenario.handoff("run", &detached);
    assert_eq!(asleep.status.code(), Some(8), "{}", transcript(&asleep));
    worker.wait_for("claimed hosted/local/");
    scenario.write(10..40);
    scenario.wait_target(40);
    let early = scenario.handoff("resume", &detached);
    assert_eq!(early.status.code(), Some(8), "{}", transcript(&early));
    std::thread::sleep(Duration::from_secs(4));
    let woken = scenario.handoff("resume", &detached);
    assert_eq!(woken.status.code(), Some(0), "{}", transcript(&woken));
    assert_eq!(scenario.output("stop")["applied"], 30, "{}", transcript(&woken));
    assert_eq!(scenario.output("check")["integrity"]["discrepancies"], 0, "{}", transcript(&woken));
}
