//! Engine overhead per step with the durable event log: a plan of 1,000 no-op steps
//! (`wait.soak` on a virtual clock, so the wait itself takes no time) run end to end.
//!
//! The baseline, measured in the same run on the same file system, is the physical limit of
//! the durable log: appending the same number of records with one `fdatasync` each, and
//! nothing else. The ratio shows what the engine adds on top of the fsyncs it must do.
//! Medians of several runs. Run with `cargo bench --bench engine`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_engine::{DirStore, Engine, Event, Graph, LockRecord, LockRequest, Outcome, Record, RunOptions, Store};
use handoff_executor::VirtualClock;
use handoff_registry::Registry;
use tokio_util::sync::CancellationToken;

const STEPS: usize = 1000;
const PHASES: usize = 10;
const RUNS: usize = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn plan() -> String {
    let mut text = String::from(
        "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: bench}\nenvironments: {bench: {endpoints: {}}}\nphases:\n",
    );
    for phase in 0..PHASES {
        text.push_str(&format!(
            "  - id: p{phase}\n    name: Phase {phase}\n    rollback: {{max_duration: 1m, steps: []}}\n    steps:\n"
        ));
        for step in 0..STEPS / PHASES {
            text.push_str(&format!("      - {{id: s{phase}-{step}, uses: wait.soak, with: {{duration: 1s}}}}\n"));
        }
    }
    text
}

fn main() {
    let registry = Registry::builtin();
    let report = handoff_plan::Checker::new(&registry).unwrap().check(plan().as_bytes());
    let graph = Graph::compile(report.plan.as_ref().expect("the bench plan is valid"), &registry).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let base = std::env::current_dir().unwrap().join("target/bench-engine");
    let _ = std::fs::remove_dir_all(&base);
    let mut engine_times = Vec::new();
    let mut log_times = Vec::new();
    let mut records = 0;
    for run in 0..RUNS {
        let dir = base.join(format!("run{run}"));
        let store: Arc<dyn Store> = Arc::new(DirStore::new(&dir, "bench", "bench"));
        let options = RunOptions::new("bench", Arc::new(VirtualClock::new()));
        let engine = Engine::new(&graph, &registry, store.clone());
        let started = Instant::now();
        let (id, outcome) = runtime.block_on(engine.start(&options, &CancellationToken::new())).unwrap();
        engine_times.push(started.elapsed());
        assert_eq!(outcome, Outcome::Completed);
        records = store.load(&id).unwrap().len();

        // The physical limit: the same number of durable appends, nothing else.
        let raw = DirStore::new(&dir, "raw", "bench");
        raw.create_run("raw", &serde_json::Value::Null).unwrap();
        let record = LockRecord::for_this_process("bench", Duration::from_secs(30));
        let lease = raw.lock(&LockRequest { record, force_unlock: None }).unwrap().lease;
        let record = Record {
            seq: 0,
            at: jiff::Timestamp::now(),
            event: Event::StepStarted {
                phase: "p0".to_owned(),
                step: "s0-0".to_owned(),
                role: handoff_engine::Role::Forward,
                attempt: 1,
            },
        };
        let started = Instant::now();
        for seq in 0..records {
            raw.append("raw", &lease, &Record { seq: seq as u64, ..record.clone() }).unwrap();
        }
        log_times.push(started.elapsed());
    }
    let _ = std::fs::remove_dir_all(&base);
    let engine = median(engine_times);
    let log = median(log_times);
    println!("{STEPS} no-op steps in {PHASES} phases, {records} durable records, medians of {RUNS} runs");
    println!(
        "  engine run               {:>8.3} s  ({:.3} ms per step)",
        engine.as_secs_f64(),
        engine.as_secs_f64() * 1000.0 / STEPS as f64
    );
    println!(
        "  fsync'd appends alone    {:>8.3} s  ({:.3} ms per record)",
        log.as_secs_f64(),
        log.as_secs_f64() * 1000.0 / records as f64
    );
    println!("  engine / durable-log limit {:>6.2}", engine.as_secs_f64() / log.as_secs_f64());
}
