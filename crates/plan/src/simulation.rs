//! The `simulation:` section: how `handoff simulate` exercises a plan — the data the old
//! owner starts with, the application's data paths, the load, what the simulator measures
//! for the plan's metrics, faults, and how fast simulated time runs.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Id;
use crate::units::Duration;

/// How `handoff simulate` exercises the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    /// Real time one simulated day takes (default `1s`): a plan of eight weeks then
    /// simulates in about a minute. Waits, soaks and criteria windows are scaled by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<Duration>,
    /// Documents the stores hold when the simulation starts.
    pub dataset: Vec<Dataset>,
    /// Environment variables the plan's steps and metrics use as URLs (`FLAGS_API_URL`,
    /// `MENU_SERVICE_URL`, …): each points at the simulator's stand-in HTTP service, which
    /// answers health checks, keeps feature flags and records every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stand_ins: Vec<String>,
    /// The application whose data moves: its stores, routes, cache and events.
    pub app: App,
    /// The load the application serves during the simulation.
    pub workload: Workload,
    /// Plan metrics the simulator measures itself instead of reading their source (an
    /// HTTP source the sandbox does not have, a value nothing in the sandbox moves). Every
    /// other Prometheus metric is queried as written on the sandbox's Prometheus, which
    /// holds the series `telemetry` declares.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub measures: BTreeMap<Id, Measure>,
    /// What production's services and mesh publish to Prometheus — declared apart from the
    /// plan's queries, so a query that selects a series nothing publishes fails. The
    /// simulated application publishes these series, fed by what it measures, into the
    /// sandbox's Prometheus at plan time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    /// Faults injected into the services while the plan runs (a scenario adds its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// What stand-in endpoints answer beyond health and flags: JSON built from measured
    /// metrics (e.g. a search index's status derived from the indexer's consumer lag).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub responses: Vec<Response>,
}

/// A stand-in endpoint's answer to `GET`: a JSON object whose fields are measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The URL, under a stand-in variable (`${SEARCH_SERVICE_URL}/internal/status`).
    pub url: String,
    /// Each field by JSON pointer (`/up_to_date`). While a field's metric has no value
    /// yet, the endpoint answers 503.
    pub json: BTreeMap<String, ResponseField>,
}

/// A measured field: the metric's value, or with `op` and `threshold` whether the value
/// meets the threshold (`true` / `false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseField {
    /// A metric listed under `measures`.
    pub metric: Id,
    /// Comparison that turns the value into a boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<crate::model::Comparator>,
    /// The value compared against (in the metric's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl ResponseField {
    /// The field's JSON value for a measured value.
    pub fn value(&self, measured: f64) -> serde_json::Value {
        match (self.op, self.threshold) {
            (Some(op), Some(threshold)) => op.holds(measured, threshold).into(),
            _ => measured.into(),
        }
    }
}

/// Generated documents in a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// The `mongodb` resource.
    pub resource: Id,
    /// Collection.
    pub collection: String,
    /// Number of documents.
    #[schemars(range(min = 1, max = 10000000))]
    pub documents: u64,
    /// The `_id` of document `n`: `prefix` then `n`, zero-padded to `width` digits
    /// (`item-0000042`).
    pub ids: IdSequence,
    /// The other fields of each document, in order, each with its generator. Generators
    /// draw from a random source seeded by `handoff simulate --seed`, so a seed reproduces
    /// the data.
    pub document: BTreeMap<String, Generator>,
}

/// The string ids of generated documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdSequence {
    /// Text before the number.
    pub prefix: String,
    /// Digits of the number, zero-padded.
    #[schemars(range(min = 1, max = 19))]
    pub width: u8,
}

/// How a field's value is generated for document `n` (counting from 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Generator {
    /// This value in every document (any YAML value).
    Const(serde_json::Value),
    /// Text with `{n}` replaced by the document's number, and `{n % M}` by its remainder
    /// modulo `M` (`restaurant-{n % 5000}`).
    Template(String),
    /// One of these values, drawn uniformly.
    Choice(Vec<serde_json::Value>),
    /// A whole number from `min` to `max` (inclusive; a 32-bit integer when both fit).
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// A decimal number from `min` to `max`, rounded to `places` decimals.
    Decimal {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
        /// Decimal places kept.
        #[serde(default)]
        #[schemars(range(max = 9))]
        places: u8,
    },
    /// A date and time (BSON date) within `days` days after `from` (`YYYY-MM-DD`).
    Date {
        /// The earliest date.
        from: crate::units::Date,
        /// Days after it the latest may fall.
        days: u32,
    },
    /// `min` to `max` words of filler text.
    Text {
        /// Fewest words.
        min: u32,
        /// Most words.
        max: u32,
    },
    /// A nested document, its fields in order.
    Document(BTreeMap<String, Generator>),
    /// A list of `min` to `max` values of one generator.
    Array {
        /// The items' generator.
        of: Box<Generator>,
        /// Fewest items.
        #[serde(default)]
        min: u32,
        /// Most items.
        max: u32,
    },
    /// The field is present in `percent` of the documents.
    Optional {
        /// Percent of documents that have it.
        percent: f64,
        /// Its generator.
        of: Box<Generator>,
    },
}

/// What a write of the application changes in a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The field each write sets to a new whole number (a dotted path: `price.amount`);
    /// the end-of-run audit checks the last acknowledged value of every document written.
    pub field: String,
    /// Smallest value written.
    pub min: i32,
    /// Largest value written.
    pub max: i32,
    /// A field set to the write's time (`updated_at`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// The application's data paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Each `service` resource with the `mongodb` resource it reads and writes.
    pub stores: BTreeMap<Id, Id>,
    /// The collection that changes owner.
    pub collection: String,
    /// Its name in a store where the migration renames it (`{orders_db: history}`); the
    /// other stores use `collection`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub renamed: BTreeMap<Id, String>,
    /// Reads may find no document (ids the load asks for that a store need not hold);
    /// without it, a read that finds nothing is a failed read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reads_may_miss: bool,
    /// What each write changes.
    pub change: Change,
    /// The service that owns reads and writes when the simulation starts.
    pub owner: Id,
    /// The requests the application's clients send for a read and a write of one document.
    /// The simulator's router sends each to the service the VirtualService that
    /// `traffic.shift` applied to their host picks (Istio's rules: the first route that
    /// matches, then a weighted destination). Without it: `GET` and `PUT`
    /// `/<collection>/{_id}` to the `owner`'s host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    /// Reads go through this cache (cache-aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheModel>,
    /// While this feature flag (as set through the `FLAGS_API_URL` stand-in) is on, the
    /// owner also writes every change to the other service's store, which may fail without
    /// failing the write (the seed's `Promise.allSettled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_write_flag: Option<String>,
    /// While this feature flag is on, every fifth read is also read from the other
    /// service's store and compared (shadow reads). Without it, shadow reads run whenever
    /// there are two stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_reads_flag: Option<String>,
    /// Feature flags that stop a service taking writes: while one is on, the service
    /// refuses every write (its own and dual writes to it) and the client sees an error,
    /// as a read-only or paused service answers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub read_only_flags: BTreeMap<Id, String>,
    /// Events the new owner publishes for each write once it owns writes, and the
    /// downstream consumer groups that read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsModel>,
}

impl App {
    /// The collection's name in `store` (a `mongodb` resource).
    pub fn collection_in(&self, store: &Id) -> &str {
        self.renamed.get(store).unwrap_or(&self.collection)
    }
}

/// The application's requests, as its clients send them through the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    /// The `service` resource whose host the clients call (a `mesh` route's `host:`);
    /// default: the `owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Id>,
    /// How a client reads one document.
    pub read: RequestShape,
    /// How a client writes one document.
    pub write: RequestShape,
}

/// One request as it reaches the mesh: method, path and headers; `{_id}` in the path and
/// in header values stands for the document's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestShape {
    /// The HTTP method.
    pub method: crate::model::HttpMethod,
    /// The path (`/menu/items/{_id}`), starting with `/`.
    #[schemars(regex(pattern = r"^/"))]
    pub uri: String,
    /// Headers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A cache in front of the reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheModel {
    /// The `redis` resource.
    pub resource: Id,
    /// Key of a document; `{_id}` is replaced by its id.
    pub key: String,
    /// Time to live of a cached document (simulated time).
    pub ttl: Duration,
}

/// Events published on writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsModel {
    /// The `kafka` resource.
    pub broker: Id,
    /// Topic.
    pub topic: String,
    /// The event of a write: JSON whose strings have `{_id}` replaced by the document's
    /// id (the key is the id).
    pub payload: serde_json::Value,
    /// Consumer groups that read the topic (search indexing, booking, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

/// The load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Reads per second (real time).
    #[schemars(range(min = 0, max = 100000))]
    pub reads_per_second: u32,
    /// Writes per second (real time).
    #[schemars(range(min = 0, max = 100000))]
    pub writes_per_second: u32,
    /// Skew of the keys read and written: the exponent of a Zipf distribution over the
    /// dataset (0 = uniform; 1 ≈ a few hot items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipf: Option<f64>,
}

/// What the simulator measures for a plan metric, over the metric's evaluation window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Measure {
    /// 1 when the service answers (no outage or freeze injected), else 0.
    ServiceUp(Id),
    /// Documents in the new owner's store as a percent of the old owner's.
    Completion,
    /// Percent of dual writes to the other store that succeeded.
    DualWriteSuccess,
    /// Extra write latency of dual writes, in milliseconds, while they run: the p95 of
    /// the last 200 writes minus the p95 of the last 200 writes to one store only.
    DualWriteLatency,
    /// Percent of shadow reads (every fifth read, while the shadow-read flag is on) whose
    /// document differs between the two stores, still 200 ms later (a write in flight to
    /// one of them is not a mismatch). While dual writes are off (a dual-write flag is
    /// declared and off), only one store takes writes and the other is stale by design:
    /// those comparisons are counted apart (`shadow_reads_while_one_store_written`).
    ShadowMismatch,
    /// Percent of requests (reads and writes) that failed.
    ErrorRate,
    /// p95 read latency in milliseconds over the last 200 reads, as the client sees it.
    ReadP95,
    /// This percentile (0–100, e.g. `99` for a p99 criterion) of read latency in
    /// milliseconds over the last 200 reads, as the client sees it.
    ReadPercentile(f64),
    /// Percent of writes that succeeded.
    WriteSuccess,
    /// Percent of the events the application published that the broker acknowledged.
    EventPublishSuccess,
    /// Collections of a `mongodb` resource whose name starts with the app's collection (as
    /// named in that store).
    Collections(Id),
    /// Reads served from a `mongodb` resource.
    StoreReads(Id),
    /// Documents of the application's collection in a `mongodb` resource (as named in
    /// that store); none while the collection does not exist.
    Documents(Id),
    /// How far (seconds) the slowest consumer group trails the topic.
    ConsumerLagSeconds,
    /// A fixed value (for a metric nothing in the sandbox moves, e.g. failed bookings).
    Constant(f64),
}

/// Series the simulated application publishes to Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The mesh's standard metrics for the application's services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshTelemetry>,
    /// The application's own series (and those of exporters: kube-state-metrics,
    /// mongodb_exporter, …), each fed by something the model measures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesSpec>,
}

/// A mesh's standard metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MeshTelemetry {
    /// Istio's standard metrics, as the destination's sidecar reports them:
    /// `istio_requests_total` and the `istio_request_duration_milliseconds` histogram
    /// (Istio's default buckets), labelled `reporter="destination"`,
    /// `destination_service_name`, `destination_workload`, `destination_app`,
    /// `request_protocol="http"`, `response_code` (200, or 503 for a failed request) and
    /// `response_flags="-"`. Reads are `GET`s and writes `PUT`s.
    Istio(IstioTelemetry),
}

/// Istio's metrics for the application's services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IstioTelemetry {
    /// Each `service` resource of `app.stores` → its Kubernetes service name
    /// (`destination_service_name`, `destination_workload` and `destination_app`).
    pub services: BTreeMap<Id, String>,
    /// The mesh's `Telemetry` adds a `request_method` label (a `tagOverrides` entry);
    /// Istio's default metrics have none, so a query matching on it selects nothing, or
    /// (`!=`) everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_method: bool,
}

/// One declared series (or, for a histogram, family of bucket, sum and count series).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SeriesSpec {
    /// A counter of the model's requests (without `requests`, one that stays at 0).
    Counter(CounterSeries),
    /// A gauge: a measurement of the model, sampled as plan time goes.
    Gauge(GaugeSeries),
    /// A histogram of the model's request latencies: `<name>_bucket{le}`, `<name>_sum`,
    /// `<name>_count`.
    Histogram(HistogramSeries),
}

/// A counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterSeries {
    /// Metric name (`restaurant_menu_dual_write_total`).
    pub name: String,
    /// Its labels, fixed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What it counts; nothing when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ModelRequests>,
}

/// A gauge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GaugeSeries {
    /// Metric name (`up`).
    pub name: String,
    /// Its labels, fixed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its value; while the measure has none (a dropped collection's documents), the
    /// series is not published.
    pub measure: Measure,
}

/// A histogram of latencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistogramSeries {
    /// Metric name, without `_bucket` (`restaurant_menu_write_duration_seconds`).
    pub name: String,
    /// Its labels, fixed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The requests whose latency it observes.
    pub requests: ModelRequests,
    /// The unit of observations and bucket bounds.
    pub unit: LatencyUnit,
    /// Upper bounds of the buckets, increasing (`+Inf` is added).
    #[schemars(length(min = 1))]
    pub buckets: Vec<f64>,
}

/// Requests of the application model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRequests {
    /// Which requests.
    pub kind: RequestKind,
    /// Only those the service served (a `service` resource of `app.stores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Id>,
    /// Only those that went this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// Kinds of requests the application model makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Reads (latency as the client sees it).
    Reads,
    /// Writes (latency of the whole write, dual write included).
    Writes,
    /// The writing service's write to its own store alone.
    StoreWrites,
    /// Dual writes to the other store (latency: what they add to the write).
    DualWrites,
    /// Shadow reads (ok: the stores agreed; failed: a mismatch).
    ShadowReads,
    /// Events published (ok: acknowledged by the broker).
    Events,
}

/// How a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// It failed.
    Failed,
}

/// The unit of a latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatencyUnit {
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Milliseconds,
}

impl LatencyUnit {
    /// A latency in microseconds, in this unit.
    pub fn of_micros(self, micros: u64) -> f64 {
        match self {
            LatencyUnit::Seconds => micros as f64 / 1e6,
            LatencyUnit::Milliseconds => micros as f64 / 1e3,
        }
    }
}

/// Istio's default buckets of `istio_request_duration_milliseconds`.
pub const ISTIO_BUCKETS: [f64; 18] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

impl Telemetry {
    /// Every declared series, the mesh's expanded: what a simulation publishes.
    pub fn series(&self) -> Vec<SeriesSpec> {
        let mut all = Vec::new();
        if let Some(MeshTelemetry::Istio(istio)) = &self.mesh {
            all.extend(istio.series());
        }
        all.extend(self.series.iter().cloned());
        all
    }
}

impl IstioTelemetry {
    /// Per service, direction and response code: a request counter and a latency histogram.
    fn series(&self) -> Vec<SeriesSpec> {
        let mut all = Vec::new();
        for (service, name) in &self.services {
            for (kind, method) in [(RequestKind::Reads, "GET"), (RequestKind::Writes, "PUT")] {
                for (outcome, code) in [(Outcome::Ok, "200"), (Outcome::Failed, "503")] {
                    let mut labels: BTreeMap<String, String> = [
                        ("reporter", "destination"),
                        ("destination_service_name", name),
                        ("destination_workload", name),
                        ("destination_app", name),
                        ("request_protocol", "http"),
                        ("response_code", code),
                        ("response_flags", "-"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                    if self.request_method {
                        labels.insert("request_method".to_owned(), method.to_owned());
                    }
                    let requests = ModelRequests { kind, service: Some(service.clone()), outcome: Some(outcome) };
                    all.push(SeriesSpec::Counter(CounterSeries {
                        name: "istio_requests_total".to_owned(),
                        labels: labels.clone(),
                        requests: Some(requests.clone()),
                    }));
                    all.push(SeriesSpec::Histogram(HistogramSeries {
                        name: "istio_request_duration_milliseconds".to_owned(),
                        labels,
                        requests,
                        unit: LatencyUnit::Milliseconds,
                        buckets: ISTIO_BUCKETS.to_vec(),
                    }));
                }
            }
        }
        all
    }
}

impl SeriesSpec {
    /// The metric name as written (a histogram's, without `_bucket`).
    pub fn name(&self) -> &str {
        match self {
            SeriesSpec::Counter(s) => &s.name,
            SeriesSpec::Gauge(s) => &s.name,
            SeriesSpec::Histogram(s) => &s.name,
        }
    }

    /// Its fixed labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            SeriesSpec::Counter(s) => &s.labels,
            SeriesSpec::Gauge(s) => &s.labels,
            SeriesSpec::Histogram(s) => &s.labels,
        }
    }

    /// The series Prometheus holds for it, each as its name and labels: a histogram's
    /// `_bucket` series (one per bound and `+Inf`, labelled `le`), `_sum` and `_count`.
    pub fn published(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let SeriesSpec::Histogram(histogram) = self else {
            return vec![(self.name().to_owned(), self.labels().clone())];
        };
        let mut all: Vec<(String, BTreeMap<String, String>)> = histogram
            .buckets
            .iter()
            .map(|b| le(*b))
            .chain(std::iter::once("+Inf".to_owned()))
            .map(|le| {
                let mut labels = histogram.labels.clone();
                labels.insert("le".to_owned(), le);
                (format!("{}_bucket", histogram.name), labels)
            })
            .collect();
        for suffix in ["_sum", "_count"] {
            all.push((format!("{}{suffix}", histogram.name), histogram.labels.clone()));
        }
        all
    }
}

/// A bucket bound as Prometheus clients write `le` (`0.005`, `1.0`, `2500.0`).
pub fn le(bound: f64) -> String {
    if bound.fract() == 0.0 && bound.abs() < 1e15 { format!("{bound:.1}") } else { bound.to_string() }
}

/// A fault injected while a phase runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The phase during which the fault holds (from its start until the phase ends).
    pub phase: Id,
    /// What goes wrong.
    pub fault: FaultKind,
}

/// Kinds of faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// This percent of writes to a store's collection fail (the application's writes).
    WriteErrors {
        /// The `mongodb` resource.
        resource: Id,
        /// Percent of writes that fail.
        percent: f64,
    },
    /// Every request to a server takes this much longer (on the network path, through
    /// the sandbox's fault proxy).
    Latency {
        /// The resource (any sandboxed kind).
        resource: Id,
        /// Added latency.
        added: Duration,
    },
    /// A service of the application answers every read and write this much later,
    /// wherever its data comes from (a slow deploy, an undersized pool) — unlike
    /// `latency`, which a cache in front of the server hides.
    ServiceLatency {
        /// The `service` resource (one of `app.stores`).
        service: Id,
        /// Added latency.
        added: Duration,
    },
    /// The server is out (an outage): open connections are cut and new ones refused on
    /// the network path, until the phase ends.
    Outage {
        /// The resource.
        resource: Id,
    },
    /// The cache is emptied once, when the phase starts.
    CacheFlush {
        /// The `redis` resource.
        resource: Id,
    },
}

/// A scenario: faults (and optionally a different load) applied to a plan's simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Scenario name.
    pub name: String,
    /// What it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Faults added to the plan's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// The phase expected to fail and roll back (tests and the report check it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_rollback: Option<Id>,
}
