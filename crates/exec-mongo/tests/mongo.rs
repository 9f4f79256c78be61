//! The `mongo` executor against two real MongoDB-API servers from the sandbox: copy with
//! mixed `_id` types, resume from a checkpoint, idempotence on overlap, and verification
//! that detects every kind of discrepancy (and nothing on identical collections).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::TryStreamExt;

use handoff_executor::{Context, Endpoints, Executor, Recorder};
use handoff_plan::model::{Id, Resource};
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use serde_json::{Value, json};

struct World {
    sandbox: Sandbox,
    mongo: Executor,
    old: mongodb::Collection<Document>,
    new: mongodb::Collection<Document>,
}

impl World {
    async fn start() -> World {
        let specs = [
            ServiceSpec { database: Some("restaurant".to_owned()), ..ServiceSpec::new("old_db", ServiceKind::Mongo) },
            ServiceSpec { database: Some("menu".to_owned()), ..ServiceSpec::new("new_db", ServiceKind::Mongo) },
        ];
        let sandbox = Sandbox::start(&specs, &Options::default()).await.expect("the sandbox starts");
        let collection = |name: &str, db: &str| {
            let url = sandbox.service(name).unwrap().endpoint().url.clone();
            let db = db.to_owned();
            async move {
                mongodb::Client::with_uri_str(&url).await.unwrap().database(&db).collection::<Document>("menu_items")
            }
        };
        let old = collection("old_db", "restaurant").await;
        let new = collection("new_db", "menu").await;
        World { sandbox, mongo: handoff_exec_mongo::executor(), old, new }
    }

    fn context(&self, reports: Arc<Recorder>, checkpoint: Option<Value>) -> Context {
        let mut endpoints = BTreeMap::new();
        let mut resources = BTreeMap::new();
        for (name, db) in [("old_db", "restaurant"), ("new_db", "menu")] {
            endpoints.insert(name.to_owned(), self.sandbox.service(name).unwrap().endpoint().url.clone());
            let resource: Resource = serde_json::from_value(json!({
                "kind": "mongodb", "endpoint": name, "database": db, "collections": ["menu_items"]
            }))
            .unwrap();
            resources.insert(Id(name.to_owned()), resource);
        }
        Context::detached("s", Endpoints::new(endpoints), resources, checkpoint, reports)
    }

    async fn step(&self, action: &str, with: Value, checkpoint: Option<Value>) -> (Value, Arc<Recorder>) {
        let reports = Arc::new(Recorder::default());
        let output = self
            .try_step(action, with, checkpoint, reports.clone(), false)
            .await
            .unwrap_or_else(|e| panic!("mongo.{action}: {e}"));
        (output, reports)
    }

    async fn try_step(
        &self,
        action: &str,
        with: Value,
        checkpoint: Option<Value>,
        reports: Arc<Recorder>,
        simulation: bool,
    ) -> Result<Value, handoff_executor::StepError> {
        let mut cx = self.context(reports, checkpoint);
        cx.policy = Arc::new(handoff_executor::Policy { simulation, ..handoff_executor::Policy::default() });
        self.mongo.run(action, &with, &cx).await.map(|o| serde_json::to_value(o).expect("outputs serialize"))
    }

    async fn verify(&self, extra: Value) -> Value {
        let mut with = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "max_examples": 5});
        with.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (output, reports) = self.step("verify", with, None).await;
        let metrics = reports.metrics.lock().unwrap().clone();
        assert_eq!(metrics["data_discrepancies"], output["discrepancies"].as_f64().unwrap());
        output
    }
}

/// A menu item of realistic shape.
fn item(n: i64) -> Document {
    doc! {
        "restaurant_id": format!("r{}", n % 97),
        "name": format!("Dish {n}"),
        "price": { "amount": 500 + n % 2000, "currency": "EUR" },
        "modifiers": [{ "name": "extra cheese", "price": 150 }, { "name": "no onions", "price": 0 }],
        "available": n % 7 != 0,
        "tags": ["vegetarian", "spicy"],
    }
}

/// Documents with `_id`s of four types.
async fn seed(coll: &mongodb::Collection<Document>, n: i64) -> u64 {
    let mut documents = Vec::new();
    for i in 0..n {
        let id = match i % 4 {
            0 => Bson::ObjectId(ObjectId::new()),
            1 => Bson::String(format!("item-{i:06}")),
            2 => Bson::Int32(i as i32),
            _ => Bson::Int64(1_000_000_000_000 + i),
        };
        let mut document = doc! { "_id": id };
        document.extend(item(i));
        documents.push(document);
    }
    coll.insert_many(documents).await.unwrap();
    n as u64
}

/// Small ranges, so that every `_id` type is split into several.
fn copy_params() -> Value {
    json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "parallelism": 3, "batch_size": 100, "range_size": 50})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_moves_every_document_of_every_id_type_and_verify_proves_it() {
    let world = World::start().await;
    let count = seed(&world.old, 2000).await;
    world.old.create_index(mongodb::IndexModel::builder().keys(doc! {"restaurant_id": 1}).build()).await.unwrap();

    let (output, reports) = world.step("copy", copy_params(), None).await;
    assert_eq!(output["documents_copied"], json!(count), "{output}");
    assert_eq!(output["id_types"], json!(["int", "long", "objectId", "string"]));
    assert_eq!(output["ranges"], json!(12), "three ranges per type: {output}");
    assert_eq!(output["indexes"], json!(1));
    assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), count);
    assert_eq!(reports.metrics.lock().unwrap()["documents_copied"], count as f64);
    let indexes = world.new.list_index_names().await.unwrap();
    assert!(indexes.iter().any(|n| n.starts_with("restaurant_id")), "{indexes:?}");

    // A/A: identical collections, zero discrepancies, every document compared.
    let same = world.verify(json!({"mode": "full"})).await;
    assert_eq!((same["discrepancies"].clone(), same["compared"].clone()), (json!(0), json!(count)), "{same}");
    assert_eq!(same["consistency_percent"], json!(100.0));

    // Copying again over the same documents is a no-op, not an error.
    let (again, _) = world.step("copy", copy_params(), None).await;
    assert_eq!(again["documents_copied"], json!(count));
    assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_copy_skips_what_its_checkpoint_says_is_written() {
    let world = World::start().await;
    let count = seed(&world.old, 1200).await;
    let (_, first) = world.step("copy", copy_params(), None).await;
    // The first checkpoint with a finished range and a position inside another, as if the
    // copy had been killed then.
    let checkpoints = first.checkpoints.lock().unwrap().clone();
    let checkpoint = checkpoints
        .iter()
        .find(|c| {
            c["done"].as_array().is_some_and(|d| !d.is_empty())
                && c["positions"].as_object().is_some_and(|p| !p.is_empty())
        })
        .expect("a checkpoint with a finished range and a position")
        .clone();
    // What it covers: finished ranges whole, others up to their position.
    let mut covered = 0;
    for (index, range) in checkpoint["ranges"].as_array().unwrap().iter().enumerate() {
        let mut id = doc! {"$type": range["bson_type"].as_str().unwrap()};
        if let Some(lo) = range["lo"].as_object() {
            id.insert("$gte", Bson::try_from(Value::Object(lo.clone())).unwrap());
        }
        let position = checkpoint["positions"].get(index.to_string());
        if checkpoint["done"].as_array().unwrap().contains(&json!(index)) {
            if let Some(hi) = range["hi"].as_object() {
                id.insert("$lt", Bson::try_from(Value::Object(hi.clone())).unwrap());
            }
        } else if let Some(position) = position {
            id.insert("$lte", Bson::try_from(position.clone()).unwrap());
        } else {
            continue;
        }
        covered += world.old.count_documents(doc! {"_id": id}).await.unwrap();
    }
    assert!(covered > 0);
    world.new.delete_many(doc! {}).await.unwrap();
    let (resumed, _) = world.step("copy", copy_params(), Some(checkpoint.clone())).await;
    assert!(resumed["ranges_resumed_inside"].as_u64().unwrap() >= 1, "{resumed}");
    // Only what the checkpoint did not cover was copied again (the target was emptied to
    // show it).
    assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), count - covered, "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_every_kind_of_discrepancy() {
    let world = World::start().await;
    seed(&world.old, 400).await;
    world.step("copy", copy_params(), None).await;
    // Inject: one missing, one extra, one changed, one int → long, one with reordered fields.
    let ids: Vec<Bson> = world
        .old
        .find(doc! {"_id": {"$type": "string"}})
        .sort(doc! {"_id": 1})
        .limit(4)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.get("_id").unwrap().clone())
        .collect();
    world.new.delete_one(doc! {"_id": &ids[0]}).await.unwrap();
    world.new.insert_one(doc! {"_id": "only-in-target", "name": "ghost"}).await.unwrap();
    world.new.update_one(doc! {"_id": &ids[1]}, doc! {"$set": {"name": "Tampered"}}).await.unwrap();
    world.new.update_one(doc! {"_id": &ids[2]}, doc! {"$set": {"price.amount": Bson::Int64(777)}}).await.unwrap();
    world.old.update_one(doc! {"_id": &ids[2]}, doc! {"$set": {"price.amount": Bson::Int32(777)}}).await.unwrap();
    let original = world.new.find_one(doc! {"_id": &ids[3]}).await.unwrap().unwrap();
    let mut reordered: Vec<(String, Bson)> = original.into_iter().collect();
    reordered[1..].reverse();
    world.new.replace_one(doc! {"_id": &ids[3]}, reordered.into_iter().collect::<Document>()).await.unwrap();

    let strict = world.verify(json!({"mode": "full", "ignore_field_order": false})).await;
    assert_eq!(
        [&strict["missing"], &strict["extra"], &strict["different"]],
        [&json!(1), &json!(1), &json!(3)],
        "changed, int→long and reordered all count when compared strictly: {strict}"
    );
    assert_eq!(strict["examples"]["missing"], json!([ids[0].clone().into_canonical_extjson()]));
    assert_eq!(strict["examples"]["extra"], json!(["only-in-target"]));
    let lenient = world.verify(json!({"mode": "full", "ignore_field_order": true, "numeric_by_value": true})).await;
    assert_eq!(lenient["different"], json!(1), "only the real change is left: {lenient}");
    assert_eq!(lenient["examples"]["different"][0]["fields"], json!(["name"]));
    let hashed = world.verify(json!({"mode": "hashed", "ignore_field_order": true})).await;
    assert_eq!(hashed["discrepancies"], json!(4), "{hashed}");
    // The seed's sampled check sees the count gap only through the tolerance it is given.
    let sampled = world.verify(json!({"mode": "sample", "sample_size": 1000, "count_tolerance": 10})).await;
    assert_eq!(sampled["compared"], json!(400));
    assert!(sampled["discrepancies"].as_u64().unwrap() >= 2, "{sampled}");

    // Reconcile makes the target equal the source; a second pass has nothing to do.
    let with = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "direction": "source_to_target", "delete_extra": true});
    let (repaired, _) = world.step("reconcile", with.clone(), None).await;
    assert_eq!((repaired["copied"].clone(), repaired["deleted"].clone()), (json!(3), json!(1)), "{repaired}");
    let (again, _) = world.step("reconcile", with.clone(), None).await;
    assert_eq!((again["copied"].clone(), again["deleted"].clone()), (json!(0), json!(0)), "{again}");
    let clean = world.verify(json!({"mode": "full", "ignore_field_order": true})).await;
    assert_eq!(clean["discrepancies"], json!(0), "missing, changed and int→long repaired, extra deleted: {clean}");

    // Under a strict verify's settings reconcile repairs what that verify reports: the
    // document whose fields differ only in order is rewritten, and strict verify converges.
    let still = world.verify(json!({"mode": "full", "ignore_field_order": false})).await;
    assert_eq!(still["different"], json!(1), "the reordered document: {still}");
    let mut strict_with = with;
    strict_with["ignore_field_order"] = json!(false);
    let (rewritten, _) = world.step("reconcile", strict_with.clone(), None).await;
    assert_eq!(rewritten["copied"], json!(1), "{rewritten}");
    let converged = world.verify(json!({"mode": "full", "ignore_field_order": false})).await;
    assert_eq!(converged["discrepancies"], json!(0), "{converged}");
    let (nothing, _) = world.step("reconcile", strict_with, None).await;
    assert_eq!(nothing["copied"], json!(0), "{nothing}");
}

fn sync_params(every: &str) -> Value {
    json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "checkpoint_every": every})
}

/// Inserts, updates, replaces and deletes on the source (ids from `from`).
async fn churn(coll: &mongodb::Collection<Document>, from: i32) {
    for i in from..from + 30 {
        let mut document = doc! { "_id": i };
        document.extend(item(i64::from(i)));
        coll.insert_one(document).await.unwrap();
    }
    coll.update_many(doc! {"_id": {"$gte": from, "$lt": from + 10}}, doc! {"$set": {"available": false}})
        .await
        .unwrap();
    coll.replace_one(doc! {"_id": from + 10}, doc! {"name": "replaced"}).await.unwrap();
    coll.delete_many(doc! {"_id": {"$gte": from + 20, "$lt": from + 25}}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_applies_every_change_since_the_copy_started_and_stop_drains_it() {
    let world = World::start().await;
    seed(&world.old, 300).await;
    world.step("copy", copy_params(), None).await;
    churn(&world.old, 10_000).await; // after the copy, before the sync starts
    let (started, reports) = world.step("sync", sync_params("100ms"), None).await;
    assert_eq!(started["from"], json!("where the copy started"), "{started}");
    churn(&world.old, 20_000).await; // while it runs
    let (stopped, _) = world.step("stop_sync", json!({"sync": "s", "drain": true}), None).await;
    assert_eq!(stopped["stops"], json!(["s"]));
    assert!(stopped["applied"].as_u64().unwrap() >= 2 * 44, "{stopped}");
    let verified = world.verify(json!({"mode": "full"})).await;
    assert_eq!(verified["discrepancies"], json!(0), "{verified}");
    let lag = reports.metrics.lock().unwrap()["sync_lag_seconds"];
    assert!(lag < 1.0e9, "a healthy sync reports its lag, not the failure value: {lag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sync_resumes_from_its_checkpoint_without_losing_changes() {
    let world = World::start().await;
    seed(&world.old, 100).await;
    world.step("copy", copy_params(), None).await;
    let (_, reports) = world.step("sync", sync_params("100ms"), None).await;
    churn(&world.old, 10_000).await;
    let token = loop {
        let last = reports.checkpoints.lock().unwrap().last().cloned();
        if let Some(checkpoint) = last.filter(|c| c["applied"].as_u64() >= Some(40)) {
            break checkpoint;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Stopped without draining, as a crash would; then more changes arrive.
    world.step("stop_sync", json!({"sync": "s", "drain": false}), None).await;
    churn(&world.old, 20_000).await;
    let (resumed, _) = world.step("sync", sync_params("100ms"), Some(token)).await;
    assert_eq!(resumed["from"], json!("its checkpoint"));
    world.step("stop_sync", json!({"sync": "s", "drain": true}), None).await;
    let verified = world.verify(json!({"mode": "full"})).await;
    assert_eq!(verified["discrepancies"], json!(0), "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_sync_starts_from_the_present_and_a_reconcile_removes_what_only_the_target_has() {
    let world = World::start().await;
    seed(&world.old, 200).await;
    world.step("copy", copy_params(), None).await;
    // Weeks later: the copy's change-stream position is gone (here: unusable), the source
    // changed, and the target holds documents the source never had.
    let markers = world.new.clone_with_type::<Document>();
    let markers = markers.client().database("menu").collection::<Document>("_handoff_sync");
    markers.update_many(doc! {}, doc! {"$set": {"change_stream_start": {"_data": "00"}}}).await.unwrap();
    churn(&world.old, 10_000).await;
    world.new.insert_many([doc! {"_id": "only-in-new-1"}, doc! {"_id": "only-in-new-2"}]).await.unwrap();
    let forward = world.try_step("sync", sync_params("100ms"), None, Arc::default(), false).await;
    assert!(forward.is_err(), "a forward sync starts from the copy's position, which is gone: {forward:?}");
    // The rollback's sync starts now; its reconcile repairs what changed before, extras
    // included, while the sync applies what changes meanwhile.
    let mut cx = world.context(Arc::default(), None);
    cx.rolling_back = true;
    let started = world.mongo.run("sync", &sync_params("100ms"), &cx).await.unwrap();
    assert_eq!(serde_json::to_value(started).unwrap()["from"], json!("now"));
    churn(&world.old, 20_000).await;
    let reconcile = json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "direction": "source_to_target", "delete_extra": true});
    let (repaired, _) = world.step("reconcile", reconcile, None).await;
    // What changed before the sync (the running sync may apply some of it first).
    assert!(repaired["missing"].as_u64() >= Some(25) && repaired["extra"].as_u64() >= Some(2), "{repaired}");
    churn(&world.old, 30_000).await;
    world.step("stop_sync", json!({"sync": "s", "drain": true}), None).await;
    let verified = world.verify(json!({"mode": "full"})).await;
    assert_eq!(verified["discrepancies"], json!(0), "{verified}");
    let extras = world.new.count_documents(doc! {"_id": {"$in": ["only-in-new-1", "only-in-new-2"]}}).await.unwrap();
    assert_eq!(extras, 0, "documents only the new store had are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_restores_identically_and_drop_needs_it_and_a_person() {
    let world = World::start().await;
    let count = seed(&world.old, 300).await;
    world.old.create_index(mongodb::IndexModel::builder().keys(doc! {"name": 1}).build()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("menu-archive");
    let (archived, _) = world.step("archive", json!({"source": {"resource": "old_db"}, "path": path}), None).await;
    assert_eq!(
        (archived["documents"].clone(), archived["verified"].clone()),
        (json!(count), json!(true)),
        "{archived}"
    );
    assert!(path.join("menu_items.bson.gz").is_file() && path.join("manifest.json").is_file());

    let reports = Arc::new(Recorder::default());
    reports.outputs.lock().unwrap().insert("arch".to_owned(), serde_json::from_value(archived.clone()).unwrap());
    let drop = json!({"target": {"resource": "old_db"}, "archive": "arch"});
    // A write after the archive: the drop is refused.
    world.old.insert_one(doc! {"_id": "late", "name": "late"}).await.unwrap();
    let refused = world.try_step("drop", drop.clone(), None, reports.clone(), true).await.unwrap_err().to_string();
    assert!(refused.contains("changed since it was archived"), "{refused}");
    world.old.delete_one(doc! {"_id": "late"}).await.unwrap();
    // Outside simulation a person must confirm.
    let asked = world.try_step("drop", drop.clone(), None, reports.clone(), false).await.unwrap_err().to_string();
    assert!(asked.starts_with("waiting for a person: drop old_db.menu_items for good?"), "{asked}");
    // Without an archive step in the run, nothing is dropped.
    let none = world
        .try_step("drop", json!({"target": {"resource": "old_db"}, "archive": "nope"}), None, reports.clone(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(none.contains("has not archived anything"), "{none}");
    let dropped = world.try_step("drop", drop, None, reports, true).await.unwrap();
    assert_eq!(dropped["documents"], json!(count));
    assert_eq!(world.old.count_documents(doc! {}).await.unwrap(), 0);

    // The archive brings it all back, indexes included.
    let (restored, _) = world.step("restore", json!({"path": path, "target": {"resource": "old_db"}}), None).await;
    assert_eq!(restored["restored"], json!(count), "{restored}");
    let indexes = world.old.list_index_names().await.unwrap();
    assert!(indexes.iter().any(|n| n.starts_with("name")), "{indexes:?}");
    world.step("copy", copy_params(), None).await;
    let same = world.verify(json!({"mode": "full", "ignore_field_order": false})).await;
    assert_eq!(same["discrepancies"], json!(0), "{same}");
}

/// Waits until `coll` holds at least `at_least` documents (a copy is filling it).
async fn wait_for(coll: &mongodb::Collection<Document>, at_least: u64) {
    while coll.estimated_document_count().await.unwrap() < at_least {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cut_off_from_its_target_resumes_from_its_checkpoint_and_loses_nothing() {
    let world = World::start().await;
    let count = seed(&world.old, 6000).await;
    let proxy = world.sandbox.service("new_db").unwrap().proxy().unwrap();
    let reports = Arc::new(Recorder::default());
    let copy = world.try_step("copy", copy_params(), None, reports.clone(), false);
    let fault = async {
        wait_for(&world.new, 1500).await;
        // Every connection to the target drops, and new ones are refused for a while.
        proxy.set_refuse(true);
        proxy.cut_connections();
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        proxy.heal();
    };
    let (first, ()) = tokio::join!(copy, fault);
    // The driver may retry its way through the cut; if not, the step fails and resumes.
    if let Err(error) = first {
        eprintln!("the copy failed on the cut ({error}); resuming it from its checkpoint");
        let checkpoint = reports.checkpoints.lock().unwrap().last().cloned();
        assert!(checkpoint.is_some(), "the cut copy checkpointed its progress");
        world.step("copy", copy_params(), checkpoint).await;
    }
    assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), count);
    let verified = world.verify(json!({"mode": "full"})).await;
    assert_eq!(verified["discrepancies"], json!(0), "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_source_drops_its_connections_catches_up_without_loss() {
    let world = World::start().await;
    seed(&world.old, 200).await;
    world.step("copy", copy_params(), None).await;
    let (_, reports) = world.step("sync", sync_params("100ms"), None).await;
    churn(&world.old, 10_000).await;
    let proxy = world.sandbox.service("old_db").unwrap().proxy().unwrap();
    proxy.cut_connections();
    churn(&world.old, 20_000).await; // through fresh connections, while the stream recovers
    // The running sync either resumes its stream by itself or stops with an error; a
    // sync started again from its last checkpoint must then catch up.
    let stop = json!({"sync": "s", "drain": true});
    if let Err(error) = world.try_step("stop_sync", stop.clone(), None, Arc::new(Recorder::default()), false).await {
        eprintln!("the sync stopped on the cut ({error}); starting it again from its checkpoint");
        let checkpoint = reports.checkpoints.lock().unwrap().last().cloned();
        world.step("sync", sync_params("100ms"), checkpoint).await;
        world.step("stop_sync", stop, None).await;
    }
    let verified = world.verify(json!({"mode": "full"})).await;
    assert_eq!(verified["discrepancies"], json!(0), "{verified}");
}

/// The `_id` of the i-th document.
type IdOf = fn(i64) -> Bson;

/// `_id`s of one numeric type with a NaN among them (which sorts first, and which no range
/// operator matches).
async fn seed_with_nan(coll: &mongodb::Collection<Document>, id: IdOf, nan: Bson) -> u64 {
    let mut documents: Vec<Document> = (0..300).map(|i| doc! { "_id": id(i), "n": i }).collect();
    documents.push(doc! { "_id": nan, "n": -1 });
    coll.insert_many(documents).await.unwrap();
    301
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_ids_are_copied_and_verified_in_a_range_of_their_own() {
    let world = World::start().await;
    let decimal = |text: &str| Bson::Decimal128(text.parse().unwrap());
    let kinds: [(&str, IdOf, Bson); 2] = [
        ("double", |i| Bson::Double(i as f64 + 0.5), Bson::Double(f64::NAN)),
        ("decimal", |i| Bson::Decimal128(format!("{i}.25").parse().unwrap()), decimal("NaN")),
    ];
    for (kind, id, nan) in kinds {
        world.old.delete_many(doc! {}).await.unwrap();
        world.new.delete_many(doc! {}).await.unwrap();
        let count = seed_with_nan(&world.old, id, nan.clone()).await;
        let (output, _) = world.step("copy", copy_params(), None).await;
        assert_eq!(output["id_types"], json!([kind]), "{output}");
        assert!(output["ranges"].as_u64().unwrap() > 1, "{kind} ids are split: {output}");
        assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), count, "{kind}: {output}");
        assert_eq!(world.new.count_documents(doc! {"_id": nan.clone()}).await.unwrap(), 1, "{kind}");
        let same = world.verify(json!({"mode": "full"})).await;
        assert_eq!((same["discrepancies"].clone(), same["compared"].clone()), (json!(0), json!(count)), "{same}");
        // A NaN only on the source side is found.
        world.new.delete_one(doc! {"_id": nan.clone()}).await.unwrap();
        let missing = world.verify(json!({"mode": "full"})).await;
        assert_eq!((missing["missing"].clone(), missing["discrepancies"].clone()), (json!(1), json!(1)), "{missing}");
        // A copy resumed just after the NaN (written first, in `_id` order) copies the rest.
        world.new.delete_many(doc! {}).await.unwrap();
        let (_, first) = world.step("copy", copy_params(), None).await;
        let mut plan = first.checkpoints.lock().unwrap()[0].clone();
        let nan_range = (plan["ranges"].as_array().unwrap().iter())
            .position(|r| r["lo"].is_null() && !r["hi"].is_null())
            .expect("a first range");
        plan["positions"] = json!({ nan_range.to_string(): nan.clone().into_canonical_extjson() });
        world.new.delete_many(doc! {}).await.unwrap();
        world.step("copy", copy_params(), Some(plan)).await;
        assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), count - 1, "{kind}: all but the NaN");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_prefixed_field_survives_the_sync_and_a_refused_change_does_not_stop_it() {
    let world = World::start().await;
    seed(&world.old, 10).await;
    world.step("copy", copy_params(), None).await;
    let (_, reports) = world.step("sync", sync_params("100ms"), None).await;
    // A top-level `$`-prefixed field: MongoDB 5.0+ refuses it in a replacement document.
    let raw = world.old.clone_with_type::<mongodb::bson::RawDocumentBuf>();
    raw.insert_one(mongodb::bson::rawdoc! {"_id": "dollar", "$price": 5, "name": "odd"}).await.unwrap();
    let change = vec![doc! {"$replaceWith": {"$literal": {"_id": "dollar", "$price": 6, "name": "odder"}}}];
    world.old.update_one(doc! {"_id": "dollar"}, change).await.unwrap();
    // A change the target refuses outright (its validator), then an ordinary one.
    let target_db = world.new.client().database("menu");
    let validator = doc! {"collMod": "menu_items", "validator": {"name": {"$type": "string"}}};
    target_db.run_command(validator).await.unwrap();
    world.old.insert_one(doc! {"_id": "refused", "name": 42}).await.unwrap();
    world.old.insert_one(doc! {"_id": "after", "name": "fine"}).await.unwrap();
    let (stopped, _) = world.step("stop_sync", json!({"sync": "s", "drain": true}), None).await;
    assert_eq!((stopped["refused"].clone(), stopped["refused_examples"].clone()), (json!(1), json!(["refused"])));
    let dollar = world.new.clone_with_type::<mongodb::bson::RawDocumentBuf>();
    let copied = dollar.find_one(doc! {"_id": "dollar"}).await.unwrap().expect("the $-prefixed document arrived");
    assert_eq!(copied.get_i32("$price").unwrap(), 6);
    assert_eq!(copied.get_str("name").unwrap(), "odder");
    assert!(world.new.find_one(doc! {"_id": "after"}).await.unwrap().is_some(), "the sync went on");
    assert_eq!(reports.metrics.lock().unwrap()["sync_refused_documents"], 1.0);
    let verified = world.verify(json!({"mode": "full"})).await;
    assert_eq!(verified["missing"], json!(1), "only the refused document differs: {verified}");
    // A server's refusal is printed as what the server said, not as the raw reply in hex.
    let with =
        json!({"source": {"resource": "old_db"}, "target": {"resource": "new_db"}, "direction": "source_to_target"});
    let error = world.try_step("reconcile", with, None, Default::default(), false).await.unwrap_err().to_string();
    assert!(error.contains("Document failed validation (code 121)"), "{error}");
    assert!(!error.contains("RawDocumentBuf") && !error.contains("server response"), "{error}");
}

/// The options `listCollections` reports for a collection.
async fn options(coll: &mongodb::Collection<Document>) -> Document {
    let db = coll.client().database(coll.namespace().db.as_str());
    let reply = db.run_command(doc! {"listCollections": 1, "filter": {"name": coll.name()}}).await.unwrap();
    let batch = reply.get_document("cursor").unwrap().get_array("firstBatch").unwrap();
    batch[0].as_document().unwrap().get_document("options").unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_carries_the_collation_and_the_validation_rules_over() {
    let world = World::start().await;
    let source_db = world.old.client().database("restaurant");
    let create = doc! {
        "create": "menu_items", "collation": {"locale": "fr"},
        "validator": {"name": {"$type": "string"}}, "validationLevel": "moderate", "validationAction": "warn",
    };
    source_db.run_command(create).await.unwrap();
    seed(&world.old, 50).await;
    // The source's `warn` action let this one in; the copy must not be refused it.
    world.old.insert_one(doc! {"_id": "unnamed", "name": 7}).await.unwrap();
    let (output, _) = world.step("copy", copy_params(), None).await;
    assert_eq!(
        output["collection_options"],
        json!(["collation", "validator", "validationLevel", "validationAction"]),
        "{output}"
    );
    assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), 51);
    let (source, target) = (options(&world.old).await, options(&world.new).await);
    for key in ["validator", "validationLevel", "validationAction"] {
        assert_eq!(source.get(key), target.get(key), "{key}: {target}");
    }
    assert_eq!(target.get_document("collation").unwrap().get_str("locale").unwrap(), "fr", "{target}");
    // A target that exists with another collation is refused, before anything is written.
    world.new.drop().await.unwrap();
    world.new.client().database("menu").run_command(doc! {"create": "menu_items"}).await.unwrap();
    let refused = world.try_step("copy", copy_params(), None, Default::default(), false).await.unwrap_err();
    assert!(refused.to_string().contains("exists with another collation"), "{refused}");
    assert_eq!(world.new.count_documents(doc! {}).await.unwrap(), 0);
}
