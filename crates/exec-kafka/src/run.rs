//! Execution of the `kafka` actions with rdkafka.
//!
//! Every event is versioned JSON (`{"version": 1, "type", "id", "plan", "run", "at", …}`),
//! keyed, sent by an idempotent producer (`enable.idempotence`, `acks=all`). Event ids are
//! deterministic (run, step, index or log sequence), so a consumer can drop the duplicates
//! a retried step publishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use handoff_executor::{Context, Lifecycle, StepError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{EnsureTopic, Publish, PublishLifecycle, VerifyConsumption};

/// How long a broker call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker's bootstrap servers (the resource's endpoint value).
fn bootstrap(cx: &Context, broker: &handoff_plan::model::Id) -> Result<ClientConfig, StepError> {
    let (_, _, servers) = cx.resource_endpoint(broker)?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers.trim_start_matches("kafka://"))
        .set("client.id", "handoff")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    Ok(config)
}

fn failed(what: &str, error: impl std::fmt::Display) -> StepError {
    StepError::Failed(format!("{what}: {error}"))
}

/// Runs blocking rdkafka calls off the async runtime, unless the run is cancelled first.
async fn blocking<T: Send + 'static>(
    cx: &Context,
    work: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    cx.cancellable(tokio::task::spawn_blocking(work))
        .await?
        .map_err(|e| StepError::Failed(format!("broker call crashed: {e}")))?
}

/// `kafka.ensure_topic`: creates the topic, or checks that the existing one has the
/// plan's partitions and configs.
pub(crate) async fn ensure_topic(p: &EnsureTopic, cx: &Context) -> Result<TopicOutput, StepError> {
    let config = bootstrap(cx, &p.broker)?;
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| failed("kafka admin client", e))?;
    let replication = p.replication_factor.map_or(-1, i32::from);
    let mut topic = NewTopic::new(&p.topic, p.partitions as i32, TopicReplication::Fixed(replication));
    for (key, value) in &p.configs {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    let created = cx
        .cancellable(admin.create_topics([&topic], &options))
        .await?
        .map_err(|e| failed(&format!("creating topic `{}`", p.topic), e))?;
    match created.into_iter().next() {
        Some(Ok(_)) => {
            return Ok(TopicOutput { topic: p.topic.clone(), created: true, partitions: p.partitions as usize });
        }
        Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => return Err(failed(&format!("creating topic `{}`", p.topic), code)),
        None => return Err(StepError::Failed(format!("creating topic `{}`: the broker did not answer", p.topic))),
    }
    // It exists: it must be what the plan says.
    let name = p.topic.clone();
    let consumer: BaseConsumer = config.create().map_err(|e| failed("kafka client", e))?;
    let partitions = blocking(cx, move || {
        let metadata = consumer.fetch_metadata(Some(&name), CALL_TIMEOUT).map_err(|e| failed("topic metadata", e))?;
        Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
    })
    .await?;
    let mut differences = Vec::new();
    if partitions != p.partitions as usize {
        differences.push(format!("{partitions} partitions, the plan says {}", p.partitions));
    }
    if !p.configs.is_empty() {
        let described = cx
            .cancellable(admin.describe_configs([&ResourceSpecifier::Topic(&p.topic)], &options))
            .await?
            .map_err(|e| failed(&format!("describing topic `{}`", p.topic), e))?;
        let entries: BTreeMap<String, Option<String>> = described
            .into_iter()
            .flatten()
            .flat_map(|resource| resource.entries)
            .map(|entry| (entry.name, entry.value))
            .collect();
        for (key, wanted) in &p.configs {
            let actual = entries.get(key).cloned().flatten();
            if actual.as_deref() != Some(wanted.as_str()) {
                differences.push(format!("{key}={}, the plan says {wanted}", actual.as_deref().unwrap_or("(unset)")));
            }
        }
    }
    if !differences.is_empty() {
        return Err(StepError::Failed(format!(
            "topic `{}` exists with {}; change the topic (kafka-topics --alter / kafka-configs) or the plan",
            p.topic,
            differences.join("; ")
        )));
    }
    Ok(TopicOutput { topic: p.topic.clone(), created: false, partitions })
}

/// An idempotent producer.
fn producer(cx: &Context, broker: &handoff_plan::model::Id) -> Result<FutureProducer, StepError> {
    bootstrap(cx, broker)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| failed("kafka producer", e))
}

/// Sends one event; `Ok(false)` when the broker did not acknowledge it.
async fn send(producer: &FutureProducer, topic: &str, key: &str, event: &Value) -> Result<(), String> {
    let payload = event.to_string();
    let record = FutureRecord::to(topic).key(key).payload(&payload);
    producer.send(record, CALL_TIMEOUT).await.map(drop).map_err(|(error, _)| error.to_string())
}

/// `kafka.publish`: publishes keyed domain events; emits `event_publish_success_rate`.
pub(crate) async fn publish(p: &Publish, cx: &Context) -> Result<PublishOutput, StepError> {
    let producer = producer(cx, &p.broker)?;
    let at = cx.clock.now().to_string();
    let sends = p.events.iter().enumerate().map(|(i, event)| {
        let envelope = json!({
            "version": 1,
            "type": p.event_type,
            "id": format!("{}/{}/{}/{i}", cx.run_id, cx.phase, cx.step),
            "plan": cx.plan,
            "run": cx.run_id,
            "at": at,
            "key": event.key,
            "payload": event.payload,
        });
        let producer = &producer;
        async move { send(producer, &p.topic, &event.key, &envelope).await }
    });
    let results = cx.cancellable(futures_util::future::join_all(sends)).await?;
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let delivered = results.len() - errors.len();
    cx.emit("event_publish_success_rate", 100.0 * delivered as f64 / results.len().max(1) as f64);
    if let Some(first) = errors.first() {
        return Err(StepError::Failed(format!(
            "{} of {} events to `{}` were not acknowledged (first: {first}); event ids are stable, so retrying re-sends them for consumers to deduplicate",
            errors.len(),
            results.len(),
            p.topic
        )));
    }
    Ok(PublishOutput { topic: p.topic.clone(), published: delivered })
}

/// `kafka.publish_lifecycle`: publishes the run's lifecycle events from now on, in the
/// background, until the run stops in this process.
pub(crate) async fn publish_lifecycle(p: &PublishLifecycle, cx: &Context) -> Result<LifecycleOutput, StepError> {
    let producer = producer(cx, &p.broker)?;
    // Fail now, not in the background, when the topic is missing.
    let (probe, topic) = (producer.clone(), p.topic.clone());
    blocking(cx, move || {
        let metadata =
            probe.client().fetch_metadata(Some(&topic), CALL_TIMEOUT).map_err(|e| failed("topic metadata", e))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => {
                Err(StepError::Failed(format!("topic `{topic}` does not exist; create it first (kafka.ensure_topic)")))
            }
        }
    })
    .await?;
    let feed =
        cx.sink.lifecycle().ok_or_else(|| StepError::Refused("this run has no lifecycle to publish".to_owned()))?;
    let publisher = Arc::new(Publisher { producer, topic: p.topic.clone(), cx: cx.clone(), sent: Default::default() });
    // What happened before this step is published before it finishes (and proves the
    // broker takes the events); the rest follows in the background.
    for change in &feed.history {
        cx.cancellable(publisher.publish(change)).await?;
    }
    let backlog = feed.history.len();
    tokio::spawn(async move {
        let mut events = feed.events;
        loop {
            match events.recv().await {
                Ok(change) => publisher.publish(&change).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => publisher.missed(missed),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        let producer = publisher.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(CALL_TIMEOUT)).await;
        drop(feed.done);
    });
    Ok(LifecycleOutput { topic: p.topic.clone(), background: true, backlog })
}

/// Publishes lifecycle changes and keeps the success rate.
struct Publisher {
    producer: FutureProducer,
    topic: String,
    cx: Context,
    /// (attempted, acknowledged).
    sent: std::sync::Mutex<(u64, u64)>,
}

impl Publisher {
    async fn publish(&self, change: &Lifecycle) {
        let cx = &self.cx;
        let event = json!({
            "version": 1,
            "type": format!("handoff.lifecycle.{}", change.event),
            "id": format!("{}/{}", cx.run_id, change.seq),
            "plan": cx.plan,
            "run": cx.run_id,
            "phase": change.phase,
            "at": change.at.to_string(),
            "data": change.detail,
        });
        let result = send(&self.producer, &self.topic, &cx.plan, &event).await;
        if let Err(error) = &result {
            tracing::warn!(topic = %self.topic, event = change.event, "lifecycle event not published: {error}");
        }
        let rate = {
            let mut sent = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sent.0 += 1;
            sent.1 += u64::from(result.is_ok());
            100.0 * sent.1 as f64 / sent.0 as f64
        };
        // After the run's last record, nothing more is written to its log.
        if !matches!(change.event, "run_finished" | "run_paused" | "run_interrupted") {
            cx.emit("event_publish_success_rate", rate);
        }
    }

    fn missed(&self, missed: u64) {
        tracing::warn!(topic = %self.topic, missed, "lifecycle events dropped: the publisher fell behind");
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 += missed;
    }
}

/// `kafka.verify_consumption`: samples a consumer group's total lag on a topic over the
/// window; passes when the last sample is within `max_lag`.
pub(crate) async fn verify_consumption(p: &VerifyConsumption, cx: &Context) -> Result<ConsumptionOutput, StepError> {
    let window = p.window.as_ref().map_or(Duration::ZERO, |w| w.get());
    let interval = (window / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let config = bootstrap(cx, &p.broker)?;
    let consumer: Arc<BaseConsumer> = Arc::new(
        config
            .clone()
            .set("group.id", &p.group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| failed("kafka consumer", e))?,
    );
    // Reads each partition's end (see `end_offset`); one for every sample.
    let reader: Arc<BaseConsumer> = Arc::new(
        config
            .clone()
            .set("group.id", "handoff-end-offsets")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            // An empty fetch answers at once: the end is reached when nothing more comes.
            .set("fetch.wait.max.ms", "20")
            .create()
            .map_err(|e| failed("kafka consumer", e))?,
    );
    let started = cx.clock.now();
    let mut samples = Vec::new();
    let last = loop {
        let (consumer, reader, topic) = (consumer.clone(), reader.clone(), p.topic.clone());
        let lag = blocking(cx, move || lag(&consumer, &reader, &topic)).await?;
        cx.emit("consumer_lag", lag.total as f64);
        samples.push(lag.total);
        let elapsed = cx.clock.now().duration_since(started).unsigned_abs();
        if elapsed >= window {
            break lag;
        }
        cx.cancellable(cx.clock.sleep(interval.min(window - elapsed))).await?;
    };
    // Consumers that never joined a group never close it; nothing to wait for.
    std::thread::spawn(move || drop((consumer, reader)));
    let output = ConsumptionOutput {
        topic: p.topic.clone(),
        group: p.group.clone(),
        lag: last.total,
        max_seen: samples.iter().max().copied(),
        samples: samples.len(),
        partitions: last.partitions,
    };
    // Early in the window a group may not have committed yet; at its end it must have.
    if last.uncommitted {
        return Err(StepError::Failed(format!(
            "consumer group `{}` has committed no offset on `{}`: is it running and consuming this topic?",
            p.group, p.topic
        )));
    }
    if last.total > p.max_lag {
        return Err(StepError::Failed(format!(
            "consumer group `{}` is {} messages behind on `{}` (at most {} passes): {}",
            p.group,
            output.lag,
            p.topic,
            p.max_lag,
            serde_json::to_string(&output).unwrap_or_default()
        )));
    }
    Ok(output)
}

/// What `kafka.ensure_topic` found or did.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopicOutput {
    /// The topic.
    pub topic: String,
    /// It was created (else it existed with the plan's settings).
    pub created: bool,
    /// Its partitions.
    pub partitions: usize,
}

/// What `kafka.publish` delivered.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishOutput {
    /// The topic.
    pub topic: String,
    /// Events acknowledged.
    pub published: usize,
}

/// What `kafka.publish_lifecycle` started.
#[derive(Debug, Serialize, Deserialize)]
pub struct LifecycleOutput {
    /// The topic.
    pub topic: String,
    /// It publishes in the background.
    pub background: bool,
    /// Lifecycle events of the run so far, published first.
    pub backlog: usize,
}

/// What `kafka.verify_consumption` measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumptionOutput {
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Its lag at the end of the window, in messages.
    pub lag: u64,
    /// The largest lag sampled.
    pub max_seen: Option<u64>,
    /// Samples taken.
    pub samples: usize,
    /// The lag per partition at the end.
    pub partitions: Vec<PartitionLag>,
}

/// One partition's offsets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PartitionLag {
    /// Partition id.
    pub partition: i32,
    /// End offset (confirmed by reading).
    pub end: i64,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
}

/// A group's lag on a topic.
struct Lag {
    total: u64,
    /// The group has committed nothing on the topic (yet).
    uncommitted: bool,
    /// Per partition.
    partitions: Vec<PartitionLag>,
}

/// Records read at most to confirm a partition's end offset.
const END_READ_LIMIT: u64 = 100_000;
/// Time spent at most confirming a partition's end offset.
const END_READ_TIME: Duration = Duration::from_secs(3);

/// The partition's end offset as of `as_of` (milliseconds since the epoch): the broker's
/// listed high watermark, checked by reading from it to the end of the partition. With
/// Kafka the read ends at once; some Kafka-API brokers (Tansu 0.6) list the offset of the
/// last batch rather than of the last record, and the read finds the records after it.
/// Records produced after `as_of` end the read: under a steady load the end moves on, and
/// the lag is measured at one instant.
fn end_offset(reader: &BaseConsumer, topic: &str, partition: i32, listed: i64, as_of: i64) -> Result<i64, StepError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(listed))
        .map_err(|e| failed("partition end offsets", e))?;
    reader.assign(&assignment).map_err(|e| failed("partition end offsets", e))?;
    let deadline = std::time::Instant::now() + END_READ_TIME;
    let (mut end, mut read) = (listed, 0_u64);
    while std::time::Instant::now() < deadline && read < END_READ_LIMIT {
        match reader.poll(Duration::from_millis(300)) {
            Some(Ok(message)) => {
                if message.timestamp().to_millis().is_some_and(|at| at > as_of) {
                    break;
                }
                end = end.max(message.offset() + 1);
                read += 1;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(failed("reading the partition's end", error)),
            // Nothing more within the poll: at the end (the broker may not report EOF).
            None if read > 0 || end > listed => break,
            None => {}
        }
    }
    Ok(end)
}

fn lag(consumer: &BaseConsumer, reader: &BaseConsumer, topic: &str) -> Result<Lag, StepError> {
    let as_of = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT).map_err(|e| failed("topic metadata", e))?;
    let ids: Vec<i32> =
        metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    if ids.is_empty() {
        return Err(StepError::Failed(format!("topic `{topic}` does not exist")));
    }
    let mut wanted = TopicPartitionList::new();
    for id in &ids {
        wanted.add_partition(topic, *id);
    }
    let committed =
        consumer.committed_offsets(wanted, CALL_TIMEOUT).map_err(|e| failed("the group's committed offsets", e))?;
    let mut out = Lag { total: 0, uncommitted: false, partitions: Vec::new() };
    for id in ids {
        let (low, listed) =
            consumer.fetch_watermarks(topic, id, CALL_TIMEOUT).map_err(|e| failed("partition end offsets", e))?;
        let high = end_offset(reader, topic, id, listed, as_of)?;
        let position = match committed.find_partition(topic, id).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        };
        out.total += (high - position.unwrap_or(low)).max(0) as u64;
        out.partitions.push(PartitionLag { partition: id, end: high, committed: position });
    }
    out.uncommitted = out.partitions.iter().all(|p| p.committed.is_none()) && out.total > 0;
    Ok(out)
}
