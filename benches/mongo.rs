//! The MongoDB data executors against two real MongoDB-API servers from the sandbox.
//!
//! Every figure is a ratio to a physical limit measured in the same run, with the same
//! driver, on the same servers: raw read (drain a `find`), raw write (unordered
//! `insert_many` of prebuilt documents, as parallel as the copy), raw parallel scan of both
//! sides. Medians of several runs. `HANDOFF_BENCH_DOCS` sets the collection size.
//! Run with `cargo bench --bench mongo`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use handoff_executor::{Context, Endpoints, Executor, Recorder};
use handoff_plan::model::{Id, Resource};
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use serde_json::{Value, json};

const RUNS: usize = 3;
const PARALLELISM: usize = 4;
const BATCH: usize = 1000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A menu item of realistic shape, about 1 KB.
fn item(n: usize, id: Bson) -> Document {
    let modifiers: Vec<Document> = (0..6)
        .map(|m| doc! { "name": format!("modifier {m} of dish {n}"), "price": m * 50, "available": m % 3 != 0 })
        .collect();
    doc! {
        "_id": id,
        "restaurant_id": format!("restaurant-{:05}", n % 5000),
        "name": format!("Dish number {n}"),
        "description": "Slow-cooked, served with seasonal vegetables and a choice of sauce; contains nuts.",
        "price": { "amount": (500 + n % 2500) as i32, "currency": "EUR" },
        "modifiers": modifiers,
        "availability": { "days": ["mon", "tue", "wed", "thu", "fri", "sat"], "from": "11:30", "to": "22:00" },
        "tags": ["house special", "vegetarian", "spicy"],
        "updated_at": mongodb::bson::DateTime::now(),
    }
}

fn id(n: usize, mixed: bool) -> Bson {
    match (mixed, n % 4) {
        (false, _) | (true, 0) => Bson::ObjectId(ObjectId::new()),
        (true, 1) => Bson::String(format!("item-{n:08}")),
        (true, 2) => Bson::Int32(n as i32),
        _ => Bson::Int64(10_000_000_000 + n as i64),
    }
}

async fn raw_write(coll: &mongodb::Collection<Document>, docs: &[Document]) -> Duration {
    coll.drop().await.unwrap();
    let started = Instant::now();
    let chunks: Vec<Vec<Document>> = docs.chunks(BATCH).map(<[Document]>::to_vec).collect();
    futures_util::stream::iter(chunks)
        .map(|chunk| async move { coll.insert_many(chunk).ordered(false).await.map(drop) })
        .buffer_unordered(PARALLELISM)
        .try_collect::<()>()
        .await
        .unwrap();
    started.elapsed()
}

async fn drain(coll: &mongodb::Collection<Document>) -> usize {
    let raw = coll.clone_with_type::<mongodb::bson::RawDocumentBuf>();
    let mut cursor = raw.find(doc! {}).batch_size(BATCH as u32).await.unwrap();
    let mut n = 0;
    while cursor.advance().await.unwrap() {
        n += 1;
    }
    n
}

struct Bench {
    _sandbox: Sandbox,
    old: mongodb::Collection<Document>,
    new: mongodb::Collection<Document>,
    scratch: mongodb::Collection<Document>,
    endpoints: BTreeMap<String, String>,
    resources: BTreeMap<Id, Resource>,
    mongo: Executor,
}

impl Bench {
    async fn step(&self, action: &str, with: Value) -> (Value, Duration) {
        let cx = Context::detached(
            "bench",
            Endpoints::new(self.endpoints.clone()),
            self.resources.clone(),
            None,
            Arc::new(Recorder::default()),
        );
        let started = Instant::now();
        let output = self.mongo.run(action, &with, &cx).await.unwrap_or_else(|e| panic!("{action}: {e}"));
        (serde_json::to_value(output).expect("outputs serialize"), started.elapsed())
    }
}

/// Percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sync lag under a steady write load: documents carry their write time; a change stream
/// on the target sees them arrive. Returns (p50, p99, achieved writes per second).
async fn sync_lag(bench: &Bench, rate: u64, seconds: u64) -> (f64, f64, f64) {
    let pair = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "checkpoint_every": "1s"});
    bench.step("sync", pair).await;
    let mut arrivals = bench.new.watch().await.unwrap();
    let total = rate * seconds;
    let writer = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        let started = Instant::now();
        for n in 0..total {
            tick.tick().await;
            let now = mongodb::bson::DateTime::now().timestamp_millis();
            bench.old.insert_one(doc! {"_id": format!("lag-{rate}-{n}"), "t": now}).await.unwrap();
        }
        total as f64 / started.elapsed().as_secs_f64()
    };
    let reader = async {
        let mut lags = Vec::new();
        while (lags.len() as u64) < total {
            let Some(event) = arrivals.next().await.transpose().unwrap() else { break };
            if let Some(t) = event.full_document.as_ref().and_then(|d| d.get_i64("t").ok()) {
                lags.push((mongodb::bson::DateTime::now().timestamp_millis() - t) as f64 / 1000.0);
            }
        }
        lags
    };
    let (achieved, mut lags) = tokio::join!(writer, reader);
    bench.step("stop_sync", json!({"sync": "bench", "drain": true})).await;
    lags.sort_by(f64::total_cmp);
    (percentile(&lags, 0.5), percentile(&lags, 0.99), achieved)
}

/// A sink that records like [`Recorder`] and fires a copy's cancellation at the first
/// checkpoint crediting at least `at` documents: the interruption point is a count, not a
/// time, so it does not depend on how fast the copy runs.
struct Interrupter {
    recorder: Recorder,
    at: u64,
    cancel: tokio_util::sync::CancellationToken,
}

impl handoff_executor::Sink for Interrupter {
    fn checkpoint(&self, phase: &str, step: &str, data: &Value) -> std::io::Result<()> {
        self.recorder.checkpoint(phase, step, data)?;
        if data["copied"].as_u64().is_some_and(|copied| copied >= self.at) {
            self.cancel.cancel();
        }
        Ok(())
    }
    fn metric(&self, phase: &str, step: &str, name: &str, value: f64) {
        self.recorder.metric(phase, step, name, value);
    }
    fn progress(&self, phase: &str, step: &str, message: &str, fraction: Option<f64>) {
        self.recorder.progress(phase, step, message, fraction);
    }
    fn decision(&self, key: &str) -> Option<handoff_executor::Decision> {
        self.recorder.decision(key)
    }
    fn output(&self, step: &str) -> Option<handoff_executor::StepOutput> {
        self.recorder.output(step)
    }
}

/// A copy interrupted at its first checkpoint past half the documents (its cancellation
/// token fired, as a kill would stop it), then resumed from its last checkpoint. Returns
/// the share of documents written twice, or `None` when the copy had finished all its
/// ranges before the interruption could stop it (a small collection: nothing to resume).
async fn interrupted_copy(bench: &Bench, docs: usize) -> Option<f64> {
    bench.new.drop().await.unwrap();
    // Ranges small enough that each `_id` type splits into PARALLELISM of them: when half
    // the documents are credited, ranges remain that have not started, so the interruption
    // stops the copy at any size (each finished range is checkpointed).
    let range_size = (docs / (4 * PARALLELISM)).max(1);
    let with = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "parallelism": PARALLELISM, "batch_size": BATCH, "range_size": range_size, "copy_indexes": false});
    let cancel = tokio_util::sync::CancellationToken::new();
    let sink = Arc::new(Interrupter { recorder: Recorder::default(), at: docs as u64 / 2, cancel: cancel.clone() });
    let mut cx = Context::detached(
        "bench",
        Endpoints::new(bench.endpoints.clone()),
        bench.resources.clone(),
        None,
        sink.clone(),
    );
    cx.cancel = cancel;
    if bench.mongo.run("copy", &with, &cx).await.is_ok() {
        return None;
    }
    let written_before = bench.new.count_documents(doc! {}).await.unwrap();
    let checkpoint = sink.recorder.checkpoints.lock().unwrap().last().cloned();
    let credited = checkpoint.as_ref().and_then(|c| c["copied"].as_u64()).unwrap_or(0);
    let cx = Context::detached(
        "bench",
        Endpoints::new(bench.endpoints.clone()),
        bench.resources.clone(),
        checkpoint,
        Arc::new(Recorder::default()),
    );
    let second = bench.mongo.run("copy", &with, &cx).await.unwrap();
    let processed_again = second.detail["documents_copied"].as_u64().unwrap() - credited;
    assert_eq!(bench.new.count_documents(doc! {}).await.unwrap(), docs as u64, "nothing lost");
    Some((written_before + processed_again).saturating_sub(docs as u64) as f64 / docs as f64)
}

/// A sync killed halfway through a steady load (its task aborted without draining, so only its checkpoints
/// survive, as after SIGKILL) and started again from its last checkpoint. Returns (changes
/// made, changes applied twice, discrepancies after).
async fn interrupted_sync(bench: &Bench, every: &str) -> (u64, u64, Value) {
    bench.reset().await;
    let seed: Vec<Document> = (0..2000).map(|n| item(n, Bson::Int64(n as i64))).collect();
    raw_write(&bench.old, &seed).await;
    let pair = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "checkpoint_every": every});
    bench.step("copy", json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}})).await;
    let recorder = Arc::new(Recorder::default());
    let cx = |checkpoint: Option<Value>, sink: Arc<Recorder>| {
        Context::detached("bench", Endpoints::new(bench.endpoints.clone()), bench.resources.clone(), checkpoint, sink)
    };
    bench.mongo.run("sync", &pair, &cx(None, recorder.clone())).await.unwrap();
    // 6,000 changes at ~300/s (20 s): inserts, then updates of what was inserted.
    let changes = 6000_u64;
    let writer = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / 300.0));
        for n in 0..changes {
            tick.tick().await;
            if n % 2 == 0 {
                bench.old.insert_one(doc! {"_id": format!("s-{n}"), "v": 0}).await.unwrap();
            } else {
                bench.old.update_one(doc! {"_id": format!("s-{}", n - 1)}, doc! {"$set": {"v": 1}}).await.unwrap();
            }
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        // What a killed process leaves: the checkpoints saved until now. The stop below
        // saves one more, which a kill would not; it is not used.
        let durable = recorder.checkpoints.lock().unwrap().last().cloned();
        let stop = json!({"sync": "bench", "drain": false});
        let stopped = bench.mongo.run("stop_sync", &stop, &cx(None, Arc::new(Recorder::default()))).await.unwrap();
        (durable, stopped)
    };
    let ((), (checkpoint, killed)) = tokio::join!(writer, killer);
    let credited = checkpoint.as_ref().and_then(|c| c["applied"].as_u64()).unwrap_or(0);
    let applied_before = killed.detail["applied"].as_u64().unwrap_or(0);
    bench.mongo.run("sync", &pair, &cx(checkpoint, Arc::new(Recorder::default()))).await.unwrap();
    let stop = json!({"sync": "bench", "drain": true});
    let resumed = bench.mongo.run("stop_sync", &stop, &cx(None, Arc::new(Recorder::default()))).await.unwrap();
    let applied_after = resumed.detail["applied"].as_u64().unwrap_or(0);
    let verified = bench
        .step("verify", json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "mode": "full"}))
        .await
        .0;
    // Applied before the kill but after the last checkpoint: applied again after it.
    debug_assert!(applied_before >= credited);
    (changes, (applied_before + applied_after).saturating_sub(changes), verified["discrepancies"].clone())
}

/// Injects each kind of discrepancy into an exact copy; returns lines of what verify found
/// (strict, and lenient on field order and numeric types) against what was injected.
async fn accuracy(bench: &Bench, docs: usize) -> Vec<String> {
    bench.reset().await;
    let prebuilt: Vec<Document> = (0..docs).map(|n| item(n, id(n, true))).collect();
    raw_write(&bench.old, &prebuilt).await;
    let pair = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}});
    bench.step("copy", pair.clone()).await;
    let verify = |extra: Value| {
        let mut with = pair.clone();
        with.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        with
    };
    let aa = bench.step("verify", verify(json!({"mode": "full"}))).await.0;
    let mut lines = vec![format!("A/A (identical collections): {} discrepancies", aa["discrepancies"])];
    // 50 of each kind, on distinct documents.
    let ids: Vec<Bson> = prebuilt.iter().step_by(docs / 250).take(250).map(|d| d.get("_id").unwrap().clone()).collect();
    for id in &ids[0..50] {
        bench.new.delete_one(doc! {"_id": id}).await.unwrap();
    }
    for n in 0..50 {
        bench.new.insert_one(doc! {"_id": format!("extra-{n}"), "name": "extra"}).await.unwrap();
    }
    for id in &ids[50..100] {
        bench.new.update_one(doc! {"_id": id}, doc! {"$set": {"name": "changed"}}).await.unwrap();
    }
    for id in &ids[100..150] {
        let current = bench.new.find_one(doc! {"_id": id}).await.unwrap().unwrap();
        // The same price, stored as a long where the source has an int.
        let mut changed = current.clone();
        let mut price = current.get_document("price").unwrap().clone();
        price.insert("amount", Bson::Int64(i64::from(price.get_i32("amount").unwrap())));
        changed.insert("price", price);
        bench.new.replace_one(doc! {"_id": id}, changed).await.unwrap();
    }
    for id in &ids[150..200] {
        let current = bench.new.find_one(doc! {"_id": id}).await.unwrap().unwrap();
        let mut reordered = Document::new();
        reordered.insert("_id", current.get("_id").unwrap().clone());
        let fields: Vec<_> = current.iter().filter(|(k, _)| *k != "_id").collect();
        for (key, value) in fields.into_iter().rev() {
            reordered.insert(key, value.clone());
        }
        bench.new.replace_one(doc! {"_id": id}, reordered).await.unwrap();
    }
    let strict =
        bench.step("verify", verify(json!({"mode": "full", "ignore_field_order": false, "max_examples": 1}))).await.0;
    let lenient = bench
        .step(
            "verify",
            verify(json!({"mode": "full", "ignore_field_order": true, "numeric_by_value": true, "max_examples": 1})),
        )
        .await
        .0;
    let counts = |v: &Value| format!("missing {}, extra {}, different {}", v["missing"], v["extra"], v["different"]);
    lines.push("injected: 50 missing, 50 extra, 50 changed, 50 int→long, 50 reordered".to_owned());
    lines.push(format!("strict verify found:  {} (expected missing 50, extra 50, different 150)", counts(&strict)));
    lines.push(format!("lenient verify found: {} (expected missing 50, extra 50, different 50)", counts(&lenient)));
    lines
}

impl Bench {
    /// Two sandbox servers, with the source and target collections and the executor.
    async fn start() -> Bench {
        let specs = [ServiceSpec::new("old_db", ServiceKind::Mongo), ServiceSpec::new("new_db", ServiceKind::Mongo)];
        let sandbox = Sandbox::start(&specs, &Options::default()).await.expect("the sandbox starts");
        let url = |name: &str| sandbox.service(name).unwrap().endpoint().url.clone();
        let client = |name: &str| {
            let url = url(name);
            async move { mongodb::Client::with_uri_str(&url).await.unwrap() }
        };
        let (old_client, new_client) = (client("old_db").await, client("new_db").await);
        let mut endpoints = BTreeMap::new();
        let mut resources = BTreeMap::new();
        for (name, db) in [("old_db", "restaurant"), ("new_db", "menu")] {
            endpoints.insert(name.to_owned(), url(name));
            let resource: Resource = serde_json::from_value(
                json!({"kind": "mongodb", "endpoint": name, "database": db, "collections": ["menu_items"]}),
            )
            .unwrap();
            resources.insert(Id(name.to_owned()), resource);
        }
        Bench {
            old: old_client.database("restaurant").collection("menu_items"),
            new: new_client.database("menu").collection("menu_items"),
            scratch: new_client.database("menu").collection("scratch"),
            _sandbox: sandbox,
            endpoints,
            resources,
            mongo: handoff_exec_mongo::executor(),
        }
    }

    /// Empties both sides between parts. SecantusDB has answered a `drop` right after a
    /// large interrupted copy with "internal server error": the documents are then deleted
    /// instead, so the next part starts empty either way.
    async fn reset(&self) {
        for coll in [&self.old, &self.new] {
            if let Err(error) = coll.drop().await {
                eprintln!("dropping {} failed ({error}); deleting its documents instead", coll.name());
                coll.delete_many(doc! {}).await.unwrap();
            }
        }
    }

    /// The step parameters naming both sides, with `extra`.
    fn with(&self, extra: Value) -> Value {
        let mut value = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}});
        value.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        value
    }
}

/// The `resume` part: a copy interrupted at half, then resumed.
async fn resume_part(bench: &Bench, docs: usize) {
    let prebuilt: Vec<Document> = (0..docs).map(|n| item(n, id(n, true))).collect();
    raw_write(&bench.old, &prebuilt).await;
    let redone = interrupted_copy(bench, docs).await;
    let verified = bench.step("verify", bench.with(json!({"mode": "full"}))).await.0;
    match redone {
        Some(redone) => println!(
            "copy of {docs} documents (mixed _ids) interrupted at its first checkpoint past half, then resumed: {:.2}% written twice, {} discrepancies after",
            redone * 100.0,
            verified["discrepancies"]
        ),
        None => println!(
            "copy of {docs} documents (mixed _ids): every range finished before the interruption at half could stop it (nothing to resume), {} discrepancies",
            verified["discrepancies"]
        ),
    }
    bench.reset().await;
}

/// The `copy` part for one kind of `_id`: copy and verify against the raw limits.
async fn copy_part(bench: &Bench, docs: usize, mixed: bool) {
    let prebuilt: Vec<Document> = (0..docs).map(|n| item(n, id(n, mixed))).collect();
    let bytes = mongodb::bson::to_vec(&prebuilt[0]).unwrap().len();
    raw_write(&bench.old, &prebuilt).await;
    let label = if mixed { "mixed _id types" } else { "ObjectId _ids" };
    println!("{docs} documents of {bytes} bytes, {label}; medians of {RUNS} runs");
    let (mut reads, mut writes, mut copies, mut scans, mut verifies) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let started = Instant::now();
        assert_eq!(drain(&bench.old).await, docs);
        reads.push(started.elapsed());
        writes.push(raw_write(&bench.scratch, &prebuilt).await);
        bench.new.drop().await.unwrap();
        let (output, took) = bench
            .step("copy", bench.with(json!({"parallelism": PARALLELISM, "batch_size": BATCH, "copy_indexes": false})))
            .await;
        assert_eq!(output["documents_copied"], json!(docs));
        copies.push(took);
        let started = Instant::now();
        let (a, b) = tokio::join!(drain(&bench.old), drain(&bench.new));
        assert_eq!((a, b), (docs, docs));
        scans.push(started.elapsed());
        let (output, took) = bench.step("verify", bench.with(json!({"mode": "full"}))).await;
        assert_eq!(output["discrepancies"], json!(0), "{output}");
        verifies.push(took);
    }
    let (read, write, copy, scan, verify) =
        (median(reads), median(writes), median(copies), median(scans), median(verifies));
    let limit = read.max(write);
    println!(
        "  raw read {:.2} s, raw write {:.2} s (parallel {PARALLELISM}, batches of {BATCH})",
        read.as_secs_f64(),
        write.as_secs_f64()
    );
    println!(
        "  copy     {:.2} s   copy / max(read, write)      {:.2}",
        copy.as_secs_f64(),
        copy.as_secs_f64() / limit.as_secs_f64()
    );
    println!("  scan both sides {:.2} s", scan.as_secs_f64());
    println!(
        "  verify   {:.2} s   verify / parallel scan        {:.2}   ({:.0} documents/s)",
        verify.as_secs_f64(),
        verify.as_secs_f64() / scan.as_secs_f64(),
        docs as f64 / verify.as_secs_f64()
    );
    if !mixed {
        // The seed's check: 1,000 random documents, one round trip each.
        let ids: Vec<Bson> = bench
            .old
            .find(doc! {})
            .projection(doc! {"_id": 1})
            .limit(1000)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.get("_id").unwrap().clone())
            .collect();
        let started = Instant::now();
        for id in &ids {
            let _ = bench.old.find_one(doc! {"_id": id}).await.unwrap();
            let _ = bench.new.find_one(doc! {"_id": id}).await.unwrap();
        }
        let seed = ids.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "  seed method (1,000 samples, a round trip per document per side): {seed:.0} documents/s; verify 100% is {:.1}x faster per document",
            docs as f64 / verify.as_secs_f64() / seed
        );
    }
    bench.reset().await;
}

fn main() {
    let docs: usize = std::env::var("HANDOFF_BENCH_DOCS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let parts =
        std::env::var("HANDOFF_BENCH_PARTS").unwrap_or_else(|_| "sync,sync-resume,accuracy,resume,copy".to_owned());
    let wants = |part: &str| parts.split(',').any(|p| p == part);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let bench = Bench::start().await;
        if wants("sync") {
            println!("sync lag under a steady insert load (a change stream on the target times arrivals), 10 s per rate:");
            for rate in [100, 300, 1000] {
                let (p50, p99, achieved) = sync_lag(&bench, rate, 10).await;
                println!("  {rate:>5}/s asked, {achieved:>6.0}/s achieved: lag p50 {p50:.3} s, p99 {p99:.3} s");
            }
            bench.reset().await;
        }
        if wants("sync-resume") {
            for every in ["1s", "250ms"] {
                let (changes, redone, discrepancies) = interrupted_sync(&bench, every).await;
                println!(
                    "sync killed 10 s into a 6,000-change load (~300/s), started again from its last checkpoint (every {every}): {redone} of {changes} changes applied twice ({:.2}%; at most one checkpoint interval of changes), {discrepancies} discrepancies after",
                    100.0 * redone as f64 / changes as f64
                );
            }
        }
        if wants("accuracy") {
            for line in accuracy(&bench, docs.min(20_000)).await {
                println!("accuracy: {line}");
            }
            bench.reset().await;
        }
        if wants("resume") {
            resume_part(&bench, docs).await;
        }
        for mixed in [false, true] {
            let wanted = wants("copy") || wants(if mixed { "mixed" } else { "objectid" });
            if !wanted {
                continue;
            }
            copy_part(&bench, docs, mixed).await;
        }
    });
}
