//! The `redis` executor against the sandbox's real Redis and MongoDB servers: warming
//! from the new owner's collection, invalidation by pattern with SCAN, and the hit ratio
//! from the server's own counters while real reads hit and miss.

use std::collections::BTreeMap;
use std::sync::Arc;

use handoff_executor::{BoxFuture, Clock, Context, Endpoints, Recorder, StepError, SystemClock};
use handoff_plan::model::{Id, Resource};
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use mongodb::bson::{DateTime, doc};
use serde_json::{Value, json};
use tokio::sync::Notify;

struct World {
    sandbox: Sandbox,
    cache: redis::aio::MultiplexedConnection,
}

impl World {
    async fn start() -> World {
        let specs = [
            ServiceSpec { database: Some("menu".to_owned()), ..ServiceSpec::new("menu_db", ServiceKind::Mongo) },
            ServiceSpec::new("menu_cache", ServiceKind::Redis),
        ];
        let sandbox = Sandbox::start(&specs, &Options::default()).await.expect("the sandbox starts");
        let url = sandbox.service("menu_cache").unwrap().endpoint().url.clone();
        let cache = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        World { sandbox, cache }
    }

    fn url(&self, name: &str) -> String {
        self.sandbox.service(name).unwrap().endpoint().url.clone()
    }

    fn context(&self, clock: Arc<dyn Clock>) -> (Context, Arc<Recorder>) {
        let endpoints = BTreeMap::from([
            ("menu_db".to_owned(), self.url("menu_db")),
            ("menu_cache".to_owned(), self.url("menu_cache")),
        ]);
        let resource = |value: Value| -> Resource { serde_json::from_value(value).unwrap() };
        let resources = BTreeMap::from([
            (Id("menu_db".to_owned()), resource(json!({"kind": "mongodb", "endpoint": "menu_db", "database": "menu"}))),
            (Id("menu_cache".to_owned()), resource(json!({"kind": "redis", "endpoint": "menu_cache"}))),
        ]);
        let reports = Arc::new(Recorder::default());
        let mut cx = Context::detached("s", Endpoints::new(endpoints), resources, None, reports.clone());
        cx.clock = clock;
        (cx, reports)
    }

    async fn step(&self, action: &str, with: Value) -> Result<Value, StepError> {
        let (cx, _) = self.context(Arc::new(SystemClock));
        handoff_exec_redis::executor()
            .run(action, &with, &cx)
            .await
            .map(|o| serde_json::to_value(o).expect("outputs serialize"))
    }

    async fn keys(&mut self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut self.cache).await.unwrap();
        keys.sort();
        keys
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_loads_the_most_recently_updated_documents_with_a_ttl() {
    let mut world = World::start().await;
    let items = mongodb::Client::with_uri_str(world.url("menu_db"))
        .await
        .unwrap()
        .database("menu")
        .collection::<mongodb::bson::Document>("menu_items");
    let documents: Vec<_> = (0..300)
        .map(|i| doc! {"_id": format!("item-{i:03}"), "name": format!("Dish {i}"), "updated_at": DateTime::from_millis(1_700_000_000_000 + i * 1000)})
        .collect();
    items.insert_many(documents).await.unwrap();

    let output = world
        .step(
            "warm",
            json!({"cache": "menu_cache", "source": "menu_db", "collection": "menu_items", "key": "menu:item:{_id}", "hot_keys": 120, "ttl": "1h"}),
        )
        .await
        .unwrap();
    assert_eq!(output["warmed"], 120);
    let keys = world.keys("menu:item:*").await;
    assert_eq!(keys.len(), 120);
    // The 120 most recently updated: items 180..=299.
    assert_eq!(
        (keys.first().unwrap().as_str(), keys.last().unwrap().as_str()),
        ("menu:item:item-180", "menu:item:item-299")
    );
    let value: String = redis::cmd("GET").arg("menu:item:item-250").query_async(&mut world.cache).await.unwrap();
    let cached: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(cached["name"], "Dish 250");
    let ttl: i64 = redis::cmd("TTL").arg("menu:item:item-250").query_async(&mut world.cache).await.unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
    world.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_deletes_only_matching_keys_in_many_scan_rounds() {
    let mut world = World::start().await;
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("menu:item:{i}"), i).ignore();
    }
    for i in 0..50 {
        pipe.set(format!("booking:{i}"), i).ignore();
    }
    let _: () = pipe.query_async(&mut world.cache).await.unwrap();

    let output =
        world.step("invalidate", json!({"cache": "menu_cache", "pattern": "menu:item:*", "batch": 25})).await.unwrap();
    assert_eq!(output["deleted"], 500);
    assert!(output["scan_rounds"].as_u64().unwrap() > 5, "{output}");
    assert!(world.keys("menu:*").await.is_empty());
    assert_eq!(world.keys("booking:*").await.len(), 50);
    world.sandbox.shutdown().await;
}

/// A clock whose waits end when the test says so: the test reads the cache while
/// `redis.observe` waits out its window.
#[derive(Debug, Default)]
struct GatedClock {
    waiting: Arc<Notify>,
    release: Arc<Notify>,
}

impl Clock for GatedClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
    fn sleep(&self, _: std::time::Duration) -> BoxFuture<'static, ()> {
        let (waiting, release) = (self.waiting.clone(), self.release.clone());
        Box::pin(async move {
            waiting.notify_one();
            release.notified().await;
        })
    }
    fn is_virtual(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_reports_the_hit_ratio_of_the_reads_in_its_window() {
    let mut world = World::start().await;
    let _: () = redis::cmd("SET").arg("menu:item:1").arg("x").query_async(&mut world.cache).await.unwrap();
    // Reads before the window do not count.
    let _: Option<String> = redis::cmd("GET").arg("menu:item:404").query_async(&mut world.cache).await.unwrap();

    let clock = Arc::new(GatedClock::default());
    let (cx, reports) = world.context(clock.clone());
    let observing = tokio::spawn(async move {
        let output =
            handoff_exec_redis::executor().run("observe", &json!({"cache": "menu_cache", "window": "5m"}), &cx).await;
        output.map(|o| serde_json::to_value(o).expect("outputs serialize"))
    });
    clock.waiting.notified().await;
    for i in 0..40 {
        let key = if i % 4 == 3 { "menu:item:missing" } else { "menu:item:1" };
        let _: Option<String> = redis::cmd("GET").arg(key).query_async(&mut world.cache).await.unwrap();
    }
    clock.release.notify_one();
    let output = observing.await.unwrap().unwrap();
    assert_eq!((output["hits"].as_u64(), output["misses"].as_u64()), (Some(30), Some(10)), "{output}");
    assert_eq!(reports.metrics.lock().unwrap()["cache_hit_ratio"], 75.0);

    // A window without reads has no ratio, and emits none.
    let clock = Arc::new(GatedClock::default());
    let (cx, reports) = world.context(clock.clone());
    let quiet = tokio::spawn(async move {
        let output =
            handoff_exec_redis::executor().run("observe", &json!({"cache": "menu_cache", "window": "5m"}), &cx).await;
        output.map(|o| serde_json::to_value(o).expect("outputs serialize"))
    });
    clock.waiting.notified().await;
    clock.release.notify_one();
    let output = quiet.await.unwrap().unwrap();
    assert_eq!(output["ratio_percent"], Value::Null, "{output}");
    assert!(reports.metrics.lock().unwrap().is_empty());
    world.sandbox.shutdown().await;
}
