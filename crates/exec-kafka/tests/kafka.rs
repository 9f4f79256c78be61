//! The `kafka` executor against the sandbox's real Kafka-API broker: topics created and
//! checked, events published then consumed and counted, and a real consumer group's lag.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use handoff_executor::{Context, Endpoints, Executor, Recorder, StepError, VirtualClock};
use handoff_plan::model::{Id, Resource};
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use serde_json::{Value, json};

struct World {
    sandbox: Sandbox,
    kafka: Executor,
}

impl World {
    async fn start() -> World {
        let specs = [ServiceSpec::new("events", ServiceKind::Kafka)];
        World {
            sandbox: Sandbox::start(&specs, &Options::default()).await.expect("the sandbox starts"),
            kafka: handoff_exec_kafka::executor(),
        }
    }

    fn bootstrap(&self) -> String {
        self.sandbox.service("events").unwrap().endpoint().url.clone()
    }

    async fn step(&self, action: &str, with: Value) -> (Result<Value, StepError>, Arc<Recorder>) {
        let reports = Arc::new(Recorder::default());
        let endpoints = BTreeMap::from([("kafka".to_owned(), self.bootstrap())]);
        let resource: Resource = serde_json::from_value(json!({"kind": "kafka", "endpoint": "kafka"})).unwrap();
        let resources = BTreeMap::from([(Id("events".to_owned()), resource)]);
        let mut cx = Context::detached("s", Endpoints::new(endpoints), resources, None, reports.clone());
        cx.clock = Arc::new(VirtualClock::new());
        (self.kafka.run(action, &with, &cx).await.map(|o| serde_json::to_value(o).expect("outputs serialize")), reports)
    }

    /// Reads `count` messages of `topic` from the start, as group `group`, committing them.
    async fn consume(&self, topic: &str, group: &str, partitions: i32, count: usize) -> Vec<(String, Value)> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning).unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut out = Vec::new();
        while out.len() < count {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .expect("the message arrives")
                .unwrap();
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            out.push((key, serde_json::from_slice(message.payload().unwrap()).unwrap()));
            consumer.commit_message(&message, CommitMode::Sync).unwrap();
        }
        // Tansu 0.6 never completes a consumer's LeaveGroup; close it on a thread of its own.
        std::thread::spawn(move || drop(consumer));
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topic_creates_then_checks_the_existing_topic() {
    let world = World::start().await;
    let with = json!({"broker": "events", "topic": "menu.events", "partitions": 3});
    let (created, _) = world.step("ensure_topic", with.clone()).await;
    assert_eq!(created.unwrap(), json!({"topic": "menu.events", "created": true, "partitions": 3}));
    let (again, _) = world.step("ensure_topic", with).await;
    assert_eq!(again.unwrap(), json!({"topic": "menu.events", "created": false, "partitions": 3}));
    let (different, _) =
        world.step("ensure_topic", json!({"broker": "events", "topic": "menu.events", "partitions": 6})).await;
    let error = different.unwrap_err().to_string();
    assert!(error.contains("3 partitions, the plan says 6"), "{error}");
    world.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_arrive_keyed_and_versioned() {
    let world = World::start().await;
    world.step("ensure_topic", json!({"broker": "events", "topic": "menu.events", "partitions": 2})).await.0.unwrap();
    let events: Vec<Value> =
        (0..40).map(|i| json!({"key": format!("item-{}", i % 7), "payload": {"item": i, "price": i * 100}})).collect();
    let (output, reports) = world
        .step(
            "publish",
            json!({"broker": "events", "topic": "menu.events", "event_type": "menu.item.updated", "events": events}),
        )
        .await;
    assert_eq!(output.unwrap(), json!({"topic": "menu.events", "published": 40}));
    assert_eq!(reports.metrics.lock().unwrap()["event_publish_success_rate"], 100.0);

    let mut received = world.consume("menu.events", "reader", 2, 40).await;
    received.sort_by_key(|(_, event)| event["payload"]["item"].as_u64());
    assert_eq!(received.len(), 40);
    for (i, (key, event)) in received.iter().enumerate() {
        assert_eq!(key, &format!("item-{}", i % 7));
        assert_eq!(event["version"], 1);
        assert_eq!(event["type"], "menu.item.updated");
        assert_eq!(event["id"], format!("detached/detached/s/{i}"));
        assert_eq!(event["payload"]["price"], i * 100);
    }
    world.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_measured_against_a_real_consumer_group() {
    let world = World::start().await;
    world.step("ensure_topic", json!({"broker": "events", "topic": "menu.events", "partitions": 1})).await.0.unwrap();
    let events: Vec<Value> = (0..20).map(|i| json!({"key": "k", "payload": i})).collect();
    world
        .step("publish", json!({"broker": "events", "topic": "menu.events", "event_type": "t", "events": events}))
        .await
        .0
        .unwrap();
    // The search indexer consumes and commits 15 of the 20 events.
    world.consume("menu.events", "search-indexer", 1, 15).await;

    let check = |max_lag: u64| json!({"broker": "events", "topic": "menu.events", "group": "search-indexer", "max_lag": max_lag, "window": "10m"});
    let (within, reports) = world.step("verify_consumption", check(10)).await;
    let within = within.unwrap();
    assert_eq!(within["lag"], 5, "{within}");
    assert!(within["samples"].as_u64().unwrap() > 1, "sampled over the window: {within}");
    assert_eq!(reports.metrics.lock().unwrap()["consumer_lag"], 5.0);
    let (behind, _) = world.step("verify_consumption", check(2)).await;
    let error = behind.unwrap_err().to_string();
    assert!(error.contains("`search-indexer` is 5 messages behind"), "{error}");
    // A group that never consumed is named as such.
    let (absent, _) = world
        .step(
            "verify_consumption",
            json!({"broker": "events", "topic": "menu.events", "group": "nobody", "max_lag": 1000}),
        )
        .await;
    assert!(absent.unwrap_err().to_string().contains("has committed no offset"));
    world.sandbox.shutdown().await;
}
