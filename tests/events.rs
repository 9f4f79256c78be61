//! `kafka.publish_lifecycle` through the binary against the sandbox's real broker: every
//! change of the run's life arrives on the topic, in order, versioned and keyed by plan —
//! including the rollback and the end of the run, published before handoff exits.

mod support;

use std::ffi::OsStr;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use serde_json::Value;
use support::{handoff_with, transcript};

#[test]
fn the_run_lifecycle_arrives_on_kafka_in_order() {
    use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = runtime
        .block_on(Sandbox::start(&[ServiceSpec::new("events", ServiceKind::Kafka)], &Options::default()))
        .expect("the sandbox starts");
    let bootstrap = sandbox.service("events").unwrap().endpoint().url.clone();
    let state = tempfile::tempdir().unwrap();
    let output = handoff_with(
        &[
            "run",
            "tests/fixtures/run/lifecycle.yaml",
            "--env",
            "sandbox",
            "--allow-shell",
            "--clock",
            "virtual",
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &[("KAFKA_BOOTSTRAP", OsStr::new(&bootstrap))],
    );
    let text = transcript(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(text.contains("criterion published: Pass"), "{text}");

    let events: Vec<(String, Value)> = runtime.block_on(async {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "lifecycle-reader")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset("migration.lifecycle", 0, rdkafka::Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let mut events = Vec::new();
        while let Ok(message) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            let message = message.unwrap();
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            events.push((key, serde_json::from_slice(message.payload().unwrap()).unwrap()));
        }
        // Tansu 0.6 never completes a consumer's LeaveGroup; close it on a thread of its own.
        std::thread::spawn(move || drop(consumer));
        events
    });
    let kinds: Vec<String> = events
        .iter()
        .map(|(key, event)| {
            assert_eq!(key, "lifecycle");
            assert_eq!(event["version"], 1);
            assert_eq!(event["plan"], "lifecycle");
            format!("{} {}", event["type"].as_str().unwrap(), event["phase"].as_str().unwrap_or("-"))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "handoff.lifecycle.run_started -",
            "handoff.lifecycle.phase_started one",
            "handoff.lifecycle.phase_passed one",
            "handoff.lifecycle.phase_started two",
            "handoff.lifecycle.phase_failed two",
            "handoff.lifecycle.phase_rolled_back two",
            "handoff.lifecycle.run_finished -",
        ]
    );
    assert_eq!(events[6].1["data"]["status"], "rolled_back");
    runtime.block_on(sandbox.shutdown());
}
