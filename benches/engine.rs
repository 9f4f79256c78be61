//! Engine overhead per step with the durable event log: a plan of 1,000 no-op steps
//! (`wait.soak` on a virtual clock, so the wait itself takes no time) run end to end, once
//! with the local store (`DirStore`) and once with the shared store (`MongoStore`, on a
//! sandbox MongoDB-API server).
//!
//! The baselines, measured in the same run on the same file system or server, are the
//! physical limits of each log: for the local store, the same number of records appended
//! with one `fdatasync` each and nothing else; for the shared store, the same number of
//! fenced appends through the store alone, and beneath that one plain `insert_one` round
//! trip per record on the same server (what any durable remote log must pay at least).
//! Medians of several runs. Run with `cargo bench --bench engine`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_engine::{DirStore, Engine, Event, Graph, LockRecord, LockRequest, Outcome, Record, RunOptions, Store};
use handoff_executor::VirtualClock;
use handoff_registry::Registry;
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use handoff_store_mongo::MongoStore;
use tokio::runtime::Runtime;
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

/// One record as the engine writes them (the raw appends repeat it with new numbers).
fn record(seq: usize) -> Record {
    Record {
        seq: seq as u64,
        at: jiff::Timestamp::now(),
        event: Event::StepStarted {
            phase: "p0".to_owned(),
            step: "s0-0".to_owned(),
            role: handoff_engine::Role::Forward,
            attempt: 1,
        },
    }
}

/// Medians of one store's runs: the engine end to end, and the store's appends alone.
struct Figures {
    engine: Duration,
    appends: Duration,
    records: usize,
}

/// Runs the plan `RUNS` times on stores from `open` (a fresh store per run and name), and
/// appends as many records through a fresh store alone after each run.
fn measure(
    runtime: &Runtime,
    graph: &Graph,
    registry: &Registry,
    open: &dyn Fn(usize, &str) -> Arc<dyn Store>,
) -> Figures {
    let (mut engine_times, mut append_times, mut records) = (Vec::new(), Vec::new(), 0);
    for run in 0..RUNS {
        let store = open(run, "bench");
        let options = RunOptions::new("bench", Arc::new(VirtualClock::new()));
        let engine = Engine::new(graph, registry, store.clone());
        let started = Instant::now();
        let (id, outcome) = runtime.block_on(engine.start(&options, &CancellationToken::new())).unwrap();
        engine_times.push(started.elapsed());
        assert_eq!(outcome, Outcome::Completed);
        records = store.load(&id).unwrap().len();

        let raw = open(run, "raw");
        raw.create_run("raw", &serde_json::Value::Null).unwrap();
        let holder = LockRecord::for_this_process("bench", Duration::from_secs(30));
        let lease = raw.lock(&LockRequest { record: holder, force_unlock: None }).unwrap().lease;
        let started = Instant::now();
        for seq in 0..records {
            raw.append("raw", &lease, &record(seq + 1)).unwrap();
        }
        append_times.push(started.elapsed());
    }
    Figures { engine: median(engine_times), appends: median(append_times), records }
}

/// One plain `insert_one` per record on the server at `url`, `RUNS` times: the median.
fn raw_inserts(runtime: &Runtime, url: &str, records: usize) -> Duration {
    runtime.block_on(async {
        let client = mongodb::Client::with_uri_str(url).await.unwrap();
        let mut times = Vec::new();
        for run in 0..RUNS {
            let collection = client.database("bench-raw").collection::<mongodb::bson::Document>(&format!("r{run}"));
            let started = Instant::now();
            for seq in 0..records {
                let document = mongodb::bson::to_document(&record(seq + 1)).unwrap();
                collection.insert_one(document).await.unwrap();
            }
            times.push(started.elapsed());
        }
        median(times)
    })
}

fn per(time: Duration, count: usize) -> String {
    format!("{:>8.3} s  ({:.3} ms each)", time.as_secs_f64(), time.as_secs_f64() * 1000.0 / count as f64)
}

fn main() {
    let registry = Registry::builtin();
    let report = handoff_plan::Checker::new(&registry).unwrap().check(plan().as_bytes());
    let graph = Graph::compile(report.plan.as_ref().expect("the bench plan is valid"), &registry).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let base = std::env::current_dir().unwrap().join("target/bench-engine");
    let _ = std::fs::remove_dir_all(&base);
    let local = measure(&runtime, &graph, &registry, &|run, name| {
        Arc::new(DirStore::new(&base.join(format!("run{run}")), name, "bench"))
    });
    let _ = std::fs::remove_dir_all(&base);
    println!("{STEPS} no-op steps in {PHASES} phases, {} durable records, medians of {RUNS} runs", local.records);
    println!("local store (DirStore)");
    println!("  engine run               {}", per(local.engine, STEPS));
    println!("  fsync'd appends alone    {}", per(local.appends, local.records));
    println!("  engine / durable-log limit {:>6.2}", local.engine.as_secs_f64() / local.appends.as_secs_f64());

    let sandbox = runtime
        .block_on(Sandbox::start(&[ServiceSpec::new("state", ServiceKind::Mongo)], &Options::default()))
        .expect("the sandbox starts");
    let url = sandbox.service("state").unwrap().endpoint().url.clone();
    let shared = measure(&runtime, &graph, &registry, &|run, name| {
        let url = url.replacen("/?", &format!("/bench-{run}?"), 1);
        let store = MongoStore::connect(&url, name, "bench").expect("the store connects");
        Arc::new(store)
    });
    let inserts = raw_inserts(&runtime, &url, shared.records);
    println!("shared store (MongoStore, SecantusDB from the sandbox)");
    println!("  engine run               {}", per(shared.engine, STEPS));
    println!("  fenced appends alone     {}", per(shared.appends, shared.records));
    println!("  plain insert_one alone   {}", per(inserts, shared.records));
    println!("  engine / fenced appends    {:>6.2}", shared.engine.as_secs_f64() / shared.appends.as_secs_f64());
    println!("  fenced append / insert_one {:>6.2}", shared.appends.as_secs_f64() / inserts.as_secs_f64());
}
