//! The `kafka` executor: topics, the migration's lifecycle and domain events, and
//! downstream consumer lag.

use std::collections::BTreeMap;

use handoff_executor::{Action, BoxFuture, Call, Context, Executor, StepError, params};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, ResourceKind};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

mod run;

/// `kafka.ensure_topic`: create a topic, or check an existing one matches.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnsureTopic {
    /// The `kafka` resource.
    pub broker: Id,
    /// Topic name.
    pub topic: String,
    /// Partitions.
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: u32,
    /// Replication factor.
    #[serde(default)]
    #[schemars(range(min = 1, max = 16))]
    pub replication_factor: Option<u16>,
    /// Topic configs (`retention.ms`, `cleanup.policy`, ...).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// `kafka.publish_lifecycle`: publish the run's lifecycle events (phase started, passed,
/// failed, rolled back) as versioned JSON, keyed by plan, from this step on.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishLifecycle {
    /// The `kafka` resource.
    pub broker: Id,
    /// Topic name.
    pub topic: String,
}

/// `kafka.publish`: publish domain events with an idempotent producer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// The `kafka` resource.
    pub broker: Id,
    /// Topic name.
    pub topic: String,
    /// Event type (the `type` field of the versioned JSON envelope).
    pub event_type: String,
    /// Events to publish: each with a key and a JSON payload.
    #[schemars(length(min = 1))]
    pub events: Vec<Event>,
}

/// One event.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Partition key.
    pub key: String,
    /// JSON payload.
    pub payload: serde_json::Value,
}

/// `kafka.verify_consumption`: a consumer group keeps up with a topic.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyConsumption {
    /// The `kafka` resource.
    pub broker: Id,
    /// Topic name.
    pub topic: String,
    /// Consumer group whose lag is measured.
    pub group: String,
    /// Largest total lag (messages) that passes.
    pub max_lag: u64,
    /// How long the lag must stay under `max_lag`.
    #[serde(default)]
    pub window: Option<Duration>,
}

/// The `kafka` executor.
pub struct Kafka;

impl Executor for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn summary(&self) -> &'static str {
        "Creates topics, publishes events, measures consumer lag."
    }

    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] = &[
            Action::new::<EnsureTopic>("ensure_topic", "Create a topic or check its settings.", Effect::Change),
            Action::new::<PublishLifecycle>(
                "publish_lifecycle",
                "Publish the run's lifecycle events from now on.",
                Effect::Change,
            )
            .background()
            .emitting(&["event_publish_success_rate"]),
            Action::new::<Publish>("publish", "Publish keyed domain events, idempotently.", Effect::Change)
                .emitting(&["event_publish_success_rate"]),
            Action::new::<VerifyConsumption>(
                "verify_consumption",
                "Check a consumer group's lag on a topic.",
                Effect::Observe,
            )
            .emitting(&["consumer_lag"]),
        ];
        ACTIONS
    }

    fn executes(&self, _: &str) -> bool {
        true
    }

    fn describe(&self, call: Call<'_>) -> String {
        let with = call.with;
        let text = |key: &str| with.get(key).and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
        match call.action {
            "ensure_topic" => format!(
                "ensure topic `{}` on `{}` with {} partitions",
                text("topic"),
                text("broker"),
                with.get("partitions").and_then(serde_json::Value::as_u64).unwrap_or(0)
            ),
            "publish_lifecycle" => {
                format!("publish the run's lifecycle events to `{}` from now on (in the background)", text("topic"))
            }
            "publish" => format!(
                "publish {} `{}` event(s) to `{}`",
                with.get("events").and_then(serde_json::Value::as_array).map_or(0, Vec::len),
                text("event_type"),
                text("topic")
            ),
            _ => format!(
                "check that group `{}` is at most {} messages behind on `{}`",
                text("group"),
                with.get("max_lag").and_then(serde_json::Value::as_u64).unwrap_or(0),
                text("topic")
            ),
        }
    }

    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            match call.action {
                "ensure_topic" => run::ensure_topic(&call.params()?, cx).await,
                "publish_lifecycle" => run::publish_lifecycle(&call.params()?, cx).await,
                "publish" => run::publish(&call.params()?, cx).await,
                "verify_consumption" => run::verify_consumption(&call.params()?, cx).await,
                other => Err(StepError::Refused(format!("kafka has no action `{other}`"))),
            }
        })
    }

    fn check(&self, action: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let checked = match action {
            "ensure_topic" => params::<EnsureTopic>(with).map(|p| (p.broker, p.topic)),
            "publish_lifecycle" => params::<PublishLifecycle>(with).map(|p| (p.broker, p.topic)),
            "publish" => params::<Publish>(with).map(|p| (p.broker, p.topic)),
            _ => params::<VerifyConsumption>(with).map(|p| (p.broker, p.topic)),
        };
        let (broker, topic) = match checked {
            Ok(found) => found,
            Err(issues) => return issues,
        };
        if let Some(issue) = resource_ref(plan, "/broker", &broker, &[ResourceKind::Kafka]) {
            return vec![issue];
        }
        let declared = &plan.resources[&broker].topics;
        if !declared.is_empty() && !declared.contains(&topic) {
            return vec![ParamIssue::new(
                handoff_plan::codes::UNDEFINED_RESOURCE,
                "/topic",
                format!("topic `{topic}` is not among the topics of resource `{broker}`: {}", declared.join(", ")),
            )];
        }
        Vec::new()
    }
}
