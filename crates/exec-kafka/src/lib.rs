//! The `kafka` executor: topics, the migration's lifecycle and domain events, and
//! downstream consumer lag.

use std::collections::BTreeMap;

use handoff_executor::{Action, Context, Declaration, Executor, StepError, StepOutput};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, Plan, ResourceKind};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

mod run;

pub use run::{ConsumptionOutput, LifecycleOutput, PartitionLag, PublishOutput, TopicOutput};

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
pub fn executor() -> Executor {
    Executor::new("kafka", "Creates topics, publishes events, measures consumer lag.")
        .with(EnsureTopicAction)
        .with(PublishLifecycleAction)
        .with(PublishAction)
        .with(VerifyConsumptionAction)
}

/// The broker and topic every action names: the broker must be a `kafka` resource, and the
/// topic one of its declared topics when it declares any.
fn broker_topic(plan: &Plan, broker: &Id, topic: &str) -> Vec<ParamIssue> {
    if let Some(issue) = resource_ref(plan, "/broker", broker, &[ResourceKind::Kafka]) {
        return vec![issue];
    }
    let declared = &plan.resources[broker].topics;
    if !declared.is_empty() && !declared.iter().any(|t| t == topic) {
        return vec![ParamIssue::new(
            handoff_plan::codes::UNDEFINED_RESOURCE,
            "/topic",
            format!("topic `{topic}` is not among the topics of resource `{broker}`: {}", declared.join(", ")),
        )];
    }
    Vec::new()
}

/// `kafka.ensure_topic`.
pub struct EnsureTopicAction;

impl Action for EnsureTopicAction {
    type Params = EnsureTopic;
    type Output = TopicOutput;
    const DECLARATION: Declaration =
        Declaration::new::<EnsureTopic>("ensure_topic", "Create a topic or check its settings.", Effect::Change);

    fn check(&self, p: &EnsureTopic, site: &Site<'_>) -> Vec<ParamIssue> {
        broker_topic(site.plan, &p.broker, &p.topic)
    }

    fn describe(&self, p: &EnsureTopic) -> String {
        format!("ensure topic `{}` on `{}` with {} partitions", p.topic, p.broker, p.partitions)
    }

    async fn execute(&self, p: EnsureTopic, cx: &Context) -> Result<StepOutput<TopicOutput>, StepError> {
        run::ensure_topic(&p, cx).await.map(StepOutput::new)
    }
}

/// `kafka.publish_lifecycle`.
pub struct PublishLifecycleAction;

impl Action for PublishLifecycleAction {
    type Params = PublishLifecycle;
    type Output = LifecycleOutput;
    const DECLARATION: Declaration = Declaration::new::<PublishLifecycle>(
        "publish_lifecycle",
        "Publish the run's lifecycle events from now on.",
        Effect::Change,
    )
    .background()
    .emitting(&["event_publish_success_rate"]);

    fn check(&self, p: &PublishLifecycle, site: &Site<'_>) -> Vec<ParamIssue> {
        broker_topic(site.plan, &p.broker, &p.topic)
    }

    fn describe(&self, p: &PublishLifecycle) -> String {
        format!("publish the run's lifecycle events to `{}` from now on (in the background)", p.topic)
    }

    async fn execute(&self, p: PublishLifecycle, cx: &Context) -> Result<StepOutput<LifecycleOutput>, StepError> {
        run::publish_lifecycle(&p, cx).await.map(StepOutput::new)
    }
}

/// `kafka.publish`.
pub struct PublishAction;

impl Action for PublishAction {
    type Params = Publish;
    type Output = PublishOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Publish>("publish", "Publish keyed domain events, idempotently.", Effect::Change)
            .emitting(&["event_publish_success_rate"]);

    fn check(&self, p: &Publish, site: &Site<'_>) -> Vec<ParamIssue> {
        broker_topic(site.plan, &p.broker, &p.topic)
    }

    fn describe(&self, p: &Publish) -> String {
        format!("publish {} `{}` event(s) to `{}`", p.events.len(), p.event_type, p.topic)
    }

    async fn execute(&self, p: Publish, cx: &Context) -> Result<StepOutput<PublishOutput>, StepError> {
        run::publish(&p, cx).await.map(StepOutput::new)
    }
}

/// `kafka.verify_consumption`.
pub struct VerifyConsumptionAction;

impl Action for VerifyConsumptionAction {
    type Params = VerifyConsumption;
    type Output = ConsumptionOutput;
    const DECLARATION: Declaration = Declaration::new::<VerifyConsumption>(
        "verify_consumption",
        "Check a consumer group's lag on a topic.",
        Effect::Observe,
    )
    .emitting(&["consumer_lag"]);

    fn check(&self, p: &VerifyConsumption, site: &Site<'_>) -> Vec<ParamIssue> {
        broker_topic(site.plan, &p.broker, &p.topic)
    }

    fn describe(&self, p: &VerifyConsumption) -> String {
        format!("check that group `{}` is at most {} messages behind on `{}`", p.group, p.max_lag, p.topic)
    }

    async fn execute(&self, p: VerifyConsumption, cx: &Context) -> Result<StepOutput<ConsumptionOutput>, StepError> {
        run::verify_consumption(&p, cx).await.map(StepOutput::new)
    }
}
