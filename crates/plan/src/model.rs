//! The typed plan language.
//!
//! Every type here derives `Deserialize` with `deny_unknown_fields` and `JsonSchema`;
//! `schemas/plan.schema.json` is generated from these types (see [`crate::schema`]), so a
//! field's doc comment is its description in editors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{Date, Duration, Quantity};

/// The only `apiVersion` this release reads.
pub const API_VERSION: &str = "handoff.dev/v1alpha1";

/// A migration plan: how data ownership moves from one service to another, phase by phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "handoff migration plan")]
pub struct Plan {
    /// Version of the plan language. Currently `handoff.dev/v1alpha1`.
    pub api_version: ApiVersion,
    /// Kind of document. Always `MigrationPlan`.
    pub kind: Kind,
    /// Name, ownership and description of the migration.
    pub metadata: Metadata,
    /// Named sets of endpoints (production, staging, ...). Connection strings may carry
    /// secrets only as `${ENV_VAR}` references.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<Id, Environment>,
    /// Everything the plan touches: datastores, brokers, caches, services, meshes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<Id, Resource>,
    /// Named metrics that criteria and alerts refer to, with where their values come from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<Id, Metric>,
    /// Alerts evaluated continuously during every phase (or the phases they name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
    /// Named groups of people who approve gates (as a GitHub team or an Atlas review
    /// policy's reviewers): each group's members by the name they approve with (`--by`).
    /// An approval gate's `require:` counts approvals from them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub approvers: BTreeMap<Id, Vec<String>>,
    /// The phases, in execution order.
    pub phases: Vec<Phase>,
    /// Calendar of the migration: when it starts and its milestones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// Known risks and how the plan mitigates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risks: Vec<Risk>,
    /// Who is told what, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication: Option<Communication>,
    /// How `handoff simulate` exercises the plan (data, load, faults, time scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<crate::simulation::Simulation>,
}

/// Version of the plan language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// The first version of the plan language.
    #[serde(rename = "handoff.dev/v1alpha1")]
    V1Alpha1,
}

/// Kind of handoff document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    /// A migration plan.
    MigrationPlan,
}

/// An identifier: lower-case letters, digits, `-` and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(pub String);

impl JsonSchema for Id {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Id".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[a-z][a-z0-9_-]{0,62}$",
            "description": "An identifier: lower-case letters, digits, `-` and `_`, starting with a letter (at most 63 characters)."
        })
    }
}

impl Id {
    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What a step runs: `executor.action` (e.g. `mongo.copy`), parsed once when the plan
/// loads so no other code splits the text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Uses {
    /// The executor, before the dot (a built-in executor, or a `handoff-executor-<name>`
    /// plugin).
    pub executor: String,
    /// The action, after the dot.
    pub action: String,
}

impl Uses {
    /// `executor.action` from its two parts.
    pub fn new(executor: &str, action: &str) -> Uses {
        Uses { executor: executor.to_owned(), action: action.to_owned() }
    }

    /// Whether this is `executor.action`.
    pub fn is(&self, executor: &str, action: &str) -> bool {
        self.executor == executor && self.action == action
    }
}

impl TryFrom<String> for Uses {
    type Error = String;

    fn try_from(text: String) -> Result<Uses, String> {
        match text.split_once('.') {
            Some((executor, action)) if !executor.is_empty() && !action.is_empty() && !action.contains('.') => {
                Ok(Uses::new(executor, action))
            }
            _ => Err(format!("`{text}` is not `executor.action` (e.g. `mongo.verify`)")),
        }
    }
}

impl From<Uses> for String {
    fn from(uses: Uses) -> String {
        uses.to_string()
    }
}

impl std::fmt::Display for Uses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&format!("{}.{}", self.executor, self.action))
    }
}

impl JsonSchema for Uses {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Uses".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": crate::schema::USES_PATTERN })
    }
}

/// Name, ownership and description of the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Machine name of the plan; state, locks and reports are keyed by it.
    pub name: Id,
    /// Human title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What moves where, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// People and teams accountable for the migration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<Owner>,
    /// Free-form labels (team, domain, ticket).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A person or team accountable for the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// Name of the person or team.
    pub name: String,
    /// What they own in this migration (e.g. `migration lead`, `old owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Contact address or channel (e-mail, `#slack-channel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
}

/// A named set of endpoints the plan runs against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// What this environment is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Endpoint name → connection string or URL. Secrets appear only as `${ENV_VAR}`
    /// references, which are resolved at run time and never printed.
    #[serde(default)]
    pub endpoints: BTreeMap<Id, String>,
    /// Where runs in this environment keep their state and lock: a MongoDB connection
    /// string, normally a `${ENV_VAR}` reference (e.g. `${HANDOFF_STATE}`), so that CI jobs
    /// and laptops share one run. Absent: the local state directory. `--state` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Something the plan touches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// What kind of thing this is; decides which executors can act on it and which
    /// sandbox service simulates it.
    pub kind: ResourceKind,
    /// What it is and who uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The service or team that owns it today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Name of the environment endpoint that reaches it; every environment must define it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Id>,
    /// Database name (for `mongodb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Collections the plan moves (for `mongodb`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// Topics the plan publishes to or reads from (for `kafka`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Key prefix of the plan's keys (for `redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// The `service` whose host a `mesh` route claims (the VirtualService's `spec.hosts`):
    /// the host of that service's endpoint in the environment the plan runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Id>,
    /// How a `mesh` route tells reads from writes; a `traffic.shift` of one direction
    /// routes only the requests that direction matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directions: Option<Directions>,
}

/// How a route tells reads from writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Directions {
    /// The requests that are reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<RequestMatch>,
    /// The requests that are writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<RequestMatch>,
}

/// Requests of one direction: a request matches when its method is one of `methods` (any
/// method when empty) and its path starts with one of `uri_prefixes` (any path when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
    /// Path prefixes (each starts with `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uri_prefixes: Vec<String>,
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `OPTIONS`.
    Options,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl HttpMethod {
    /// The method as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// Kinds of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A MongoDB (or MongoDB-API) database.
    Mongodb,
    /// A Kafka (or Kafka-API) broker.
    Kafka,
    /// A Redis cache.
    Redis,
    /// An HTTP service (one of the services that trade ownership, or a dependency).
    Service,
    /// A service mesh route (Istio VirtualService) that splits traffic between services.
    Mesh,
    /// A Prometheus server metrics are read from.
    Prometheus,
}

impl ResourceKind {
    /// The kind's name as written in plans.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Mongodb => "mongodb",
            ResourceKind::Kafka => "kafka",
            ResourceKind::Redis => "redis",
            ResourceKind::Service => "service",
            ResourceKind::Mesh => "mesh",
            ResourceKind::Prometheus => "prometheus",
        }
    }
}

/// A named metric: its unit and where its values come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// What the metric measures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Unit of the values the source returns.
    pub unit: Unit,
    /// Where values come from.
    pub source: MetricSource,
}

/// Units of metric values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Percent (0–100).
    Percent,
    /// Milliseconds.
    Ms,
    /// Seconds.
    Seconds,
    /// A plain count or number.
    Count,
    /// Events per second.
    PerSecond,
}

/// Where a metric's values come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MetricSource {
    /// Emitted by a step of the plan (e.g. `mongo.sync` emits `sync_lag_seconds`).
    Emitted {
        /// The action that emits it, as `executor.action`.
        by: Uses,
        /// Name of the metric the action emits, when it differs from this metric's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A PromQL query against a Prometheus resource.
    Prometheus {
        /// The Prometheus resource to query.
        resource: Id,
        /// PromQL expression returning one series.
        query: String,
    },
    /// A number read from an HTTP JSON endpoint.
    HttpJson {
        /// URL to GET (may contain `${ENV_VAR}` references).
        url: String,
        /// JSON pointer (RFC 6901) to the number in the response, e.g. `/data/count`.
        pointer: String,
    },
}

/// Comparison of a measured value against a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Comparator {
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
}

impl Comparator {
    /// The comparator as written in plans.
    pub fn symbol(self) -> &'static str {
        match self {
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
            Comparator::Eq => "==",
            Comparator::Ne => "!=",
        }
    }

    /// Whether `value` satisfies `value <op> threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparator::Lt => value < threshold,
            Comparator::Le => value <= threshold,
            Comparator::Gt => value > threshold,
            Comparator::Ge => value >= threshold,
            Comparator::Eq => value == threshold,
            Comparator::Ne => value != threshold,
        }
    }
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// Page someone; with `action: rollback` the phase rolls back.
    Critical,
    /// Look at it soon.
    Warning,
    /// For the record.
    Info,
}

/// An alert: a condition on a metric that is watched for the whole phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Alert name (also the Prometheus alert name when rendered).
    pub name: String,
    /// What firing means and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The metric watched.
    pub metric: Id,
    /// The alert fires when `metric <op> threshold` holds.
    pub op: Comparator,
    /// Threshold, with its unit (`99.9%`, `300ms`, `5m`, `10`).
    pub threshold: Quantity,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Duration>,
    /// Severity.
    pub severity: AlertSeverity,
    /// What handoff does when it fires.
    #[serde(default)]
    pub action: AlertAction,
    /// Phases the alert applies to (ids); all phases when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Id>,
}

/// What handoff does when an alert fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    /// Notify only.
    #[default]
    Notify,
    /// Pause the run until a person resumes it.
    Pause,
    /// Roll the current phase back.
    Rollback,
}

/// One phase of the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Phase id, unique in the plan.
    pub id: Id,
    /// Human name.
    pub name: String,
    /// What the phase achieves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
    /// Phases that must have completed first; by default the previous phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<Id>>,
    /// When the phase runs and for how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// What must hold for the phase to pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub criteria: Vec<Criterion>,
    /// Background analysis (as in Argo Rollouts): criteria sampled on their interval from
    /// the phase's start while its steps run; one that fails rolls the phase back at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub background_analysis: Vec<Id>,
    /// Metrics watched and reported during the phase (dashboards, reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitor: Vec<Id>,
    /// Alerts watched during this phase only, in addition to the plan's alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
    /// Gates that must open before the phase completes (soak time, approvals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// Whether the phase can be undone. A phase with `reversible: false` is a point of no
    /// return: it needs `restore` notes and a verified backup before it.
    #[serde(default = "yes")]
    pub reversible: bool,
    /// How to undo the phase, and within what time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// For an irreversible phase: how to recover anyway (e.g. restore from the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
}

fn yes() -> bool {
    true
}

/// When a phase runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Planned start date (`YYYY-MM-DD`); by default the end of the previous phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Date>,
    /// Planned duration (`14d`, `1w`, `36h`).
    pub duration: Duration,
}

/// One unit of work: an executor action with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Step id, unique in the whole plan, across phases and rollback steps (lint H208).
    pub id: Id,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The action to run, as `executor.action` (e.g. `mongo.copy`). Out-of-process
    /// executors are named by their `handoff-executor-<name>` binary.
    pub uses: Uses,
    /// Parameters of the action; each executor declares and checks its own.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub with: serde_json::Map<String, serde_json::Value>,
    /// Steps with the same group that follow each other run concurrently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Id>,
    /// Give up on one attempt after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Overrides the action's declared idempotency: `false` forbids automatic retries and
    /// re-running the step on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Step analysis (as in Argo Rollouts): criteria of the phase judged at each hold of the
    /// step (each weight of `traffic.shift`, over its soak), or after the step when it holds
    /// nothing. A failing verdict stops the step there and rolls the phase back; an
    /// inconclusive one pauses for a person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<Id>,
}

/// Retry policy of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
    #[schemars(range(min = 1, max = 100))]
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each further failure.
    pub backoff: Duration,
}

/// A check that decides whether a phase passed.
///
/// Either a metric criterion (`metric`, `op`, `threshold`) or a person-confirmed one
/// (`confirm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// Criterion id, unique within its phase.
    pub id: Id,
    /// The criterion in words, as the team states it.
    pub description: String,
    /// The metric measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Id>,
    /// The criterion passes when `metric <op> threshold` holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Comparator>,
    /// Threshold with its unit (`99.9%`, `200ms`, `5m`, `0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Quantity>,
    /// A check a person confirms instead of a metric (e.g. "zero customer complaints").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Confirmation>,
    /// Evaluation window: values measured over this trailing period count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// How often the metric is sampled during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Fewer samples than this make the result inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// Failed samples tolerated before the criterion fails.
    #[serde(default)]
    pub failure_limit: u32,
    /// What a window with no data means.
    #[serde(default)]
    pub no_data: NoDataPolicy,
    /// What handoff does when the criterion fails.
    #[serde(default)]
    pub on_failure: FailureAction,
    /// For a criterion on a rate: the metric counting the events the rate is measured over
    /// in the window, and the confidence its verdict needs. Too few events to resolve the
    /// threshold makes the criterion inconclusive, never a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<Denominator>,
    /// Measure only (Argo's `dryRun`): its verdicts are recorded and reported but never
    /// fail, pause or roll back anything — for trying a new metric without risk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// The events a rate criterion is measured over, and the confidence its verdict needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Denominator {
    /// The metric whose value at the window's end is the number of events in the window
    /// (e.g. requests served).
    pub metric: Id,
    /// Confidence, in percent, that a rate at the threshold would have shown at least one
    /// event among them (default 95).
    #[serde(default = "default_confidence")]
    #[schemars(range(min = 50, max = 99.99))]
    pub confidence: f64,
}

fn default_confidence() -> f64 {
    95.0
}

/// A check confirmed by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// The question asked.
    pub prompt: String,
    /// Who may confirm (role or team).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// What a window without data means for a criterion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// The criterion fails: the data must be there ("must have data").
    #[default]
    Fail,
    /// The criterion is inconclusive; the phase waits for a person.
    Inconclusive,
    /// The criterion passes.
    Pass,
}

/// What handoff does when a criterion fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Roll the phase back.
    #[default]
    Rollback,
    /// Stop and wait for a person.
    Pause,
    /// Report and go on.
    Warn,
}

/// A gate that must open before a phase completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Gate {
    /// Wait this long with every criterion and alert watched (e.g. `14d`).
    Soak(Duration),
    /// A person approves.
    Approval {
        /// What the approver confirms.
        prompt: String,
        /// Who may approve (roles or teams); anyone with access when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvers: Vec<String>,
        /// Approvals the gate needs, from distinct people: each entry `count` members of
        /// its group (the plan's `approvers:`), nobody counted twice. Without it, one
        /// approval opens the gate.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        require: Vec<Required>,
    },
}

/// Approvals an approval gate needs from one group of approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Required {
    /// The group (a key of the plan's `approvers:`).
    pub group: Id,
    /// How many distinct members of the group must approve.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Required {
    /// In words, with the group's members: "2 of `dba` (ana, bo)".
    pub fn describe(&self, groups: &BTreeMap<Id, Vec<String>>) -> String {
        let members = groups.get(&self.group).map(|m| m.join(", ")).unwrap_or_default();
        format!("{} of `{}` ({members})", self.count, self.group)
    }
}

/// A requirement that the approvals given do not meet: how many more members of `group`
/// must approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing<'a> {
    /// Its position in `require`.
    pub index: usize,
    /// The group.
    pub group: &'a Id,
    /// How many more of its members must approve.
    pub count: u32,
}

/// What `require` still misses when the distinct people `approved` have approved: a
/// maximum matching of people to the requirements' places (each person fills at most one
/// place, only of a group they belong to), so an empty result means the gate opens. A
/// group not in `groups` has no members.
pub fn missing_approvals<'a>(
    require: &'a [Required],
    groups: &BTreeMap<Id, Vec<String>>,
    approved: &[&str],
) -> Vec<Missing<'a>> {
    let mut people: Vec<&str> = approved.to_vec();
    people.sort_unstable();
    people.dedup();
    let members = |r: &Required| groups.get(&r.group).map_or(&[][..], Vec::as_slice);
    // A requirement has at most as many places as its group has members; the rest is missing anyway.
    let places: Vec<usize> = require
        .iter()
        .enumerate()
        .flat_map(|(at, r)| std::iter::repeat_n(at, (r.count as usize).min(members(r).len())))
        .collect();
    let fits = |place: usize, person: &str| members(&require[places[place]]).iter().any(|m| m == person);
    let mut holder: Vec<Option<usize>> = vec![None; places.len()];
    for person in 0..people.len() {
        let mut seen = vec![false; places.len()];
        augment(person, &people, &fits, &mut holder, &mut seen);
    }
    let mut filled = vec![0u32; require.len()];
    for (place, person) in holder.iter().enumerate() {
        if person.is_some() {
            filled[places[place]] += 1;
        }
    }
    require
        .iter()
        .zip(filled)
        .enumerate()
        .filter(|(_, (r, filled))| *filled < r.count)
        .map(|(index, (r, filled))| Missing { index, group: &r.group, count: r.count - filled })
        .collect()
}

/// Kuhn's augmenting path: finds `person` a place, moving others to free ones.
fn augment(
    person: usize,
    people: &[&str],
    fits: &dyn Fn(usize, &str) -> bool,
    holder: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for place in 0..holder.len() {
        if seen[place] || !fits(place, people[person]) {
            continue;
        }
        seen[place] = true;
        if holder[place].is_none_or(|other| augment(other, people, fits, holder, seen)) {
            holder[place] = Some(person);
            return true;
        }
    }
    false
}

/// How to undo a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Rollback budget: the rollback must complete within this time (`5m`, `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Duration>,
    /// What the rollback does, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Rollback steps, run in order after the phase's completed steps are compensated.
    pub steps: Vec<Step>,
}

/// Calendar of the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// Start of the first phase (`YYYY-MM-DD`).
    pub start: Date,
    /// Dates that matter besides phase boundaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub milestones: Vec<Milestone>,
}

/// A dated milestone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Milestone {
    /// What happens.
    pub name: String,
    /// When (`YYYY-MM-DD`).
    pub date: Date,
}

/// A known risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Risk {
    /// The risk.
    pub risk: String,
    /// How bad it would be.
    pub impact: Level,
    /// How likely it is.
    pub probability: Level,
    /// What the plan does about it.
    pub mitigation: String,
}

/// Low, medium or high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
}

/// Who is told what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Communication {
    /// Groups that must be kept informed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stakeholders: Vec<String>,
    /// Recurring and event-driven updates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<Update>,
}

/// One kind of update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// When it happens (`daily during migration`, `after each phase`).
    pub when: String,
    /// What and where (`standup`, `#menu-migration`).
    pub what: String,
}

/// A traffic-shifting schedule: weights sent to the new service, step by step.
///
/// Used by the `traffic` executor's parameters and by `handoff render`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficSchedule {
    /// Weight steps in order; weights increase and end at 100.
    pub steps: Vec<TrafficStep>,
    /// A header that always routes to the new service, whatever the weights
    /// (e.g. `x-canary: "true"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_route: Option<HeaderRoute>,
}

/// One weight step of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficStep {
    /// Percent of traffic sent to the new service.
    #[schemars(range(max = 100))]
    pub weight: u8,
    /// How long to hold this weight, with criteria watched, before the next step.
    pub soak: Duration,
}

/// A header match that forces the new service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRoute {
    /// Header name, lower case.
    pub header: String,
    /// Exact header value.
    pub value: String,
}

/// When a phase runs, from its schedule and the phases before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseDates<'a> {
    /// First day: the declared start, else the previous phase's end (or the timeline's
    /// start for the first phase).
    pub start: Date,
    /// Day after the last: start plus the planned duration.
    pub end: Date,
    /// Where the phase would start by default: the previous phase's end (with its id) or
    /// the timeline's start (no id); `None` when nothing before it is dated.
    pub expected: Option<(Date, Option<&'a Id>)>,
}

impl Plan {
    /// The dates of every phase, in order; `None` for a phase without a schedule or whose
    /// start cannot be known (no declared start and nothing dated before it, or an end past
    /// the calendar before it: see [`Plan::calendar_overflow`]).
    pub fn calendar(&self) -> Vec<Option<PhaseDates<'_>>> {
        self.dated().0
    }

    /// The index of the first phase whose planned end falls past the calendar's last day
    /// (9999-12-31); its dates, and those that follow from them, are unknown.
    pub fn calendar_overflow(&self) -> Option<usize> {
        self.dated().1
    }

    fn dated(&self) -> (Vec<Option<PhaseDates<'_>>>, Option<usize>) {
        let mut previous_end = self.timeline.as_ref().map(|t| (t.start, None::<&Id>));
        let mut overflow = None;
        let mut out = Vec::with_capacity(self.phases.len());
        for (p, phase) in self.phases.iter().enumerate() {
            let expected = previous_end;
            let dates = phase.schedule.as_ref().and_then(|schedule| {
                let start = schedule.start.or(expected.map(|(end, _)| end))?;
                let end = start.plus(&schedule.duration);
                if end.is_none() {
                    overflow = overflow.or(Some(p));
                }
                Some(PhaseDates { start, end: end?, expected })
            });
            previous_end = dates.map(|d| (d.end, Some(&phase.id)));
            out.push(dates);
        }
        (out, overflow)
    }

    /// Every step of the plan with its phase: phase steps first, then rollback steps.
    pub fn all_steps(&self) -> impl Iterator<Item = (&Phase, &Step)> {
        self.phases.iter().flat_map(|phase| {
            phase.steps.iter().chain(phase.rollback.iter().flat_map(|r| r.steps.iter())).map(move |step| (phase, step))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Id, Required, missing_approvals};

    /// What `require` (group:count pairs) still misses after `approved`, as `group:missing`.
    fn check(require: &[(&str, u32)], approved: &[&str], expect: &[(&str, u32)]) {
        let groups: BTreeMap<Id, Vec<String>> =
            [("dba", vec!["ana", "bo"]), ("menu", vec!["bo", "cy", "di"]), ("sre", vec!["ana"])]
                .into_iter()
                .map(|(group, members)| (Id(group.to_owned()), members.into_iter().map(str::to_owned).collect()))
                .collect();
        let require: Vec<Required> =
            require.iter().map(|(group, count)| Required { group: Id((*group).to_owned()), count: *count }).collect();
        let missing: Vec<(&str, u32)> =
            missing_approvals(&require, &groups, approved).iter().map(|m| (m.group.0.as_str(), m.count)).collect();
        assert_eq!(missing, expect, "require {require:?}, approved by {approved:?}");
    }

    #[test]
    fn distinct_approvers_fill_the_groups_requirements() {
        check(&[("dba", 1)], &["ana"], &[]);
        check(&[("dba", 1)], &["cy"], &[("dba", 1)]);
        check(&[("dba", 2)], &["ana", "ana"], &[("dba", 1)]);
        // bo could fill either; the matching gives dba to ana and menu to bo.
        check(&[("menu", 1), ("dba", 1)], &["bo", "ana"], &[]);
        // One person never counts twice.
        check(&[("dba", 1), ("menu", 1)], &["bo"], &[("menu", 1)]);
        check(&[("dba", 1), ("sre", 1)], &["ana"], &[("sre", 1)]);
        check(&[("menu", 5)], &["bo", "cy", "di"], &[("menu", 2)]);
        check(&[("nobody", 1)], &["ana"], &[("nobody", 1)]);
        check(&[], &[], &[]);
    }
}
