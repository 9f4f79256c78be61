//! The application model: the service whose data moves, serving a steady load through the
//! real stores, cache and broker of the sandbox, the way the plan's routes and flags say —
//! and what the simulator measures from it.
//!
//! Every read and write is a request of the shape `simulation.app.requests` declares
//! (method, path, headers), sent to the clients' host: the stand-in router picks the service
//! by the VirtualService `traffic.shift` applied to that host, as Istio would
//! ([`router`](crate::router)). Reads go cache-aside through Redis to that service's store.
//! Writes go to that service's store and, while the dual-write flag is on, to the other
//! store as well, whose failure does not fail the write. A write sent to a service that
//! does not own writes (the VirtualService's `writes` routes give it none; before any, only
//! the `owner` does) is misrouted: a finding of the loss audit. Once a service other than
//! the original owner takes writes it publishes an event per write; consumer groups read
//! them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use handoff_plan::model::HttpMethod;
use handoff_plan::simulation::{App, Measure, ModelRequests, Outcome, RequestKind, RequestShape, Workload};
use mongodb::bson::{Document, doc};
use rand::Rng;
use rand::SeedableRng;
use rand_distr::Distribution;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::router::{Request, Routed, Via};
use crate::standin::{Measurer, State};

/// How far back measures look (real time).
const WINDOW: Duration = Duration::from_secs(5);

/// What one request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    DualWrite,
    Event,
    Shadow,
    /// A shadow comparison while dual writes are off: only one store takes writes, so the
    /// other is stale by design (after the write cutover) and a difference is no mismatch.
    ShadowOneStoreWritten,
    /// The writing service's write to its own store alone (observed for telemetry only).
    StoreWrite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Read => "reads",
            Kind::Write => "writes",
            Kind::DualWrite => "dual_writes",
            Kind::Event => "events",
            Kind::Shadow => "shadow_reads",
            Kind::ShadowOneStoreWritten => "shadow_reads_while_one_store_written",
            Kind::StoreWrite => "store_writes",
        }
    }

    /// The kind a telemetry series observes.
    fn of(requests: RequestKind) -> Kind {
        match requests {
            RequestKind::Reads => Kind::Read,
            RequestKind::Writes => Kind::Write,
            RequestKind::StoreWrites => Kind::StoreWrite,
            RequestKind::DualWrites => Kind::DualWrite,
            RequestKind::ShadowReads => Kind::Shadow,
            RequestKind::Events => Kind::Event,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    kind: Kind,
    ok: bool,
    micros: u64,
    /// The store (service index) that served it.
    store: usize,
}

/// Measurements of the recent past, and totals.
#[derive(Debug, Default)]
pub struct Stats {
    recent: VecDeque<Sample>,
    /// Totals over the whole simulation, by kind name.
    pub totals: BTreeMap<&'static str, Tally>,
    /// Publish times of events not yet read, per consumer group.
    pending: BTreeMap<String, VecDeque<Instant>>,
    /// Latencies (µs) of the last successful requests, by kind: percentiles are taken
    /// over a number of requests, not a span of time. Time runs compressed while the
    /// load does not, so a few seconds of requests stand for many sampling intervals;
    /// a fixed count keeps a single slow request from deciding several samples.
    latencies: BTreeMap<&'static str, VecDeque<u64>>,
    /// Latencies (µs) of the last writes that went to one store only: the baseline dual
    /// writes are compared with.
    single_writes: VecDeque<u64>,
    /// Latencies (µs) the client saw of the last writes made while dual writes ran.
    dual_writes: VecDeque<u64>,
    /// Reads by the share (percent) of reads the route gave the new owner when they ran.
    canary: BTreeMap<u32, CanaryReads>,
}

/// Requests of one kind, and how many failed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Requests made.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
}

impl Tally {
    /// Counts one request.
    fn count(&mut self, ok: bool) {
        self.requests += 1;
        self.failed += u64::from(!ok);
    }
}

/// Reads made while the read route gave the new owner one share of them.
#[derive(Debug, Default)]
struct CanaryReads {
    tally: Tally,
    /// Latencies (µs) of the successful ones.
    micros: Vec<u64>,
}

/// Reads while the read route gave the new owner one share of them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryPoint {
    /// Percent of reads routed to the new owner.
    pub weight: u32,
    /// Reads made at that weight (all of them, on either service).
    pub reads: u64,
    /// Their p95 latency, in milliseconds.
    pub p95_ms: f64,
    /// Percent of them that failed.
    pub error_percent: f64,
}

/// Documents the loss audit reads per query.
const AUDIT_BATCH: usize = 5_000;

/// How long a measure may take before the stand-in answers that it has none.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shadow read waits before it reads a difference again.
const SHADOW_RECHECK: Duration = Duration::from_millis(200);

/// Reads in flight at most (beyond it, the read load waits).
const READS_IN_FLIGHT: usize = 256;

/// How many requests a latency percentile is taken over.
const LATENCY_SAMPLES: usize = 200;

/// The fewest writes a p95 of dual writes is taken over: below it, the p95 is one of the
/// few slowest writes (the first dual writes on cold connections, say), which compressed
/// time would let decide days of samples.
const P95_WRITES: usize = 50;

fn keep(buffer: &mut VecDeque<u64>, micros: u64) {
    buffer.push_back(micros);
    if buffer.len() > LATENCY_SAMPLES {
        buffer.pop_front();
    }
}

fn p95(micros: &mut [u64]) -> Option<f64> {
    percentile(micros, 95.0)
}

/// The `q`th percentile (0–100, nearest rank) of latencies in microseconds, in
/// milliseconds.
fn percentile(micros: &mut [u64], q: f64) -> Option<f64> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let rank = ((micros.len() - 1) as f64 * q.clamp(0.0, 100.0) / 100.0).round() as usize;
    Some(micros[rank] as f64 / 1000.0)
}

impl Stats {
    fn record(&mut self, sample: Sample) {
        let name = sample.kind.name();
        self.totals.entry(name).or_default().count(sample.ok);
        if sample.ok {
            keep(self.latencies.entry(name).or_default(), sample.micros);
        }
        self.observe(sample);
    }

    /// Keeps a sample among the recent ones only (what telemetry alone observes).
    fn observe(&mut self, sample: Sample) {
        self.recent.push_back(sample);
        while self.recent.front().is_some_and(|s| s.at.elapsed() > WINDOW) {
            self.recent.pop_front();
        }
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = &Sample> {
        self.recent.iter().filter(move |s| s.kind == kind && s.at.elapsed() <= WINDOW)
    }

    fn success_percent(&self, kind: Kind) -> Option<f64> {
        let (n, ok) = self.of(kind).fold((0, 0), |(n, ok), s| (n + 1, ok + u64::from(s.ok)));
        (n > 0).then(|| 100.0 * ok as f64 / n as f64)
    }

    fn percentile_ms(&self, kind: Kind, q: f64) -> Option<f64> {
        percentile(&mut self.latencies.get(kind.name())?.iter().copied().collect::<Vec<_>>(), q)
    }
}

/// What each written document must hold: the value of its last acknowledged write, and
/// the values of later writes whose outcome is unknown (the server failed mid-write, so
/// the write may or may not have been applied).
#[derive(Debug, Default)]
struct Ledger {
    documents: HashMap<String, Written>,
    acknowledged: u64,
}

impl Ledger {
    /// Notes a write of `amount` to document `id`, by how it went in each store.
    fn note(&mut self, id: &str, amount: i32, primary: Attempt, secondary: Option<Attempt>) {
        let written = self.documents.entry(id.to_owned()).or_default();
        // A write the client saw fail may still be in a store: the owner failed
        // mid-write, or the owner refused it and the other store took the dual write.
        let maybe_applied = !primary.refused || secondary.is_some_and(|s| !s.refused);
        if primary.ok {
            written.acknowledged = Some(amount);
            written.uncertain.clear();
        } else if maybe_applied {
            written.uncertain.push(amount);
        }
        self.acknowledged += u64::from(primary.ok);
    }

    /// What each document with an acknowledged write must hold.
    fn expected(&self) -> Vec<Expected> {
        let expected = self.documents.iter().filter_map(|(id, w)| {
            Some(Expected { id: id.clone(), acknowledged: w.acknowledged?, uncertain: w.uncertain.clone() })
        });
        expected.collect()
    }
}

/// A document the loss audit checks, and the values it may hold.
#[derive(Debug)]
struct Expected {
    id: String,
    /// The value of its last acknowledged write.
    acknowledged: i32,
    /// Values of later writes of unknown outcome.
    uncertain: Vec<i32>,
}

impl Expected {
    /// Whether `value` (`None`: absent) is one the document may hold.
    fn holds(&self, value: Option<i32>) -> bool {
        value.is_some_and(|v| v == self.acknowledged || self.uncertain.contains(&v))
    }
}

#[derive(Debug, Default)]
struct Written {
    acknowledged: Option<i32>,
    uncertain: Vec<i32>,
}

/// The end-of-run audit: every acknowledged write is in the store that owns writes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Audit {
    /// The resource that owned writes when the run ended.
    pub store: String,
    /// Writes the application saw acknowledged during the run.
    pub acknowledged_writes: u64,
    /// Documents those writes touched, all checked.
    pub documents: u64,
    /// Documents whose last acknowledged write is not there: absent, or holding a value
    /// neither that write nor a later one of unknown outcome wrote.
    pub lost: u64,
    /// Up to five of them, with what was expected and found.
    pub examples: Vec<String>,
    /// Writes the VirtualService sent to a service that did not own writes, by service and
    /// route, the most first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub misrouted: Vec<Misrouted>,
}

/// Writes the VirtualService sent to a service that did not own writes then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Misrouted {
    /// The service they went to.
    pub service: String,
    /// How many.
    pub writes: u64,
    /// The services that owned writes then.
    pub owners: Vec<String>,
    /// The route that sent them there, its destination's weight, and the step that applied
    /// the VirtualService; `None` when the host had no VirtualService.
    pub via: Option<MisroutedVia>,
}

/// The route of misrouted writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MisroutedVia {
    /// Route name.
    pub route: String,
    /// Percent of the route's requests that go to the service.
    pub weight: u8,
    /// Phase of the step that applied the VirtualService.
    pub phase: String,
    /// That step.
    pub step: String,
}

impl From<Via> for MisroutedVia {
    fn from(via: Via) -> MisroutedVia {
        MisroutedVia { route: via.route, weight: via.weight, phase: via.phase, step: via.step }
    }
}

/// Misrouted writes are counted by the service they went to, the owners of writes then, and
/// the route that sent them.
type MisrouteKey = (String, Vec<String>, Option<Via>);

/// The requests the application's clients send, and the host they call.
#[derive(Debug, Clone)]
struct Requests {
    host: String,
    read: RequestShape,
    write: RequestShape,
}

impl Requests {
    /// `app.requests`, or `GET` and `PUT` `/<collection>/{_id}` to the owner.
    fn of(app: &App) -> Requests {
        let shape =
            |method| RequestShape { method, uri: format!("/{}/{{_id}}", app.collection), headers: BTreeMap::new() };
        match &app.requests {
            Some(r) => Requests {
                host: r.host.as_ref().unwrap_or(&app.owner).0.clone(),
                read: r.read.clone(),
                write: r.write.clone(),
            },
            None => Requests { host: app.owner.0.clone(), read: shape(HttpMethod::Get), write: shape(HttpMethod::Put) },
        }
    }
}

/// How a write to one store went.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    ok: bool,
    /// Refused by an injected fault before reaching the server (certainly not applied).
    refused: bool,
    took: Duration,
}

/// Faults the model applies itself (the others act on the real servers).
#[derive(Debug, Default)]
pub struct ModelFaults {
    /// Percent of writes that fail, by `mongodb` resource.
    pub write_errors: BTreeMap<String, f64>,
    /// Resources whose server is stopped.
    pub down: Vec<String>,
    /// Latency added to every request a service serves, by `service` resource.
    pub slow: BTreeMap<String, Duration>,
}

/// The running application.
pub struct Model {
    spec: App,
    workload: Workload,
    /// Services in a fixed order.
    services: Vec<Service>,
    cache: Option<Cache>,
    events: Option<Events>,
    ids: Arc<Vec<String>>,
    /// The stand-in service's state (routes, flags, measures).
    pub routes: Arc<Mutex<State>>,
    /// Measurements.
    pub stats: Arc<Mutex<Stats>>,
    /// Model-level faults.
    pub faults: Arc<Mutex<ModelFaults>>,
    databases: BTreeMap<String, mongodb::Database>,
    ledger: Mutex<Ledger>,
    requests: Requests,
    /// Misrouted writes, counted.
    misrouted: Mutex<BTreeMap<MisrouteKey, u64>>,
}

/// A service of the application, and the store it owns.
struct Service {
    /// Service resource id.
    id: String,
    /// Its store's resource id.
    store: String,
    /// The collection whose data moves, in that store.
    collection: mongodb::Collection<Document>,
}

/// The cache reads go through (cache-aside).
struct Cache {
    connection: redis::aio::MultiplexedConnection,
    /// Key pattern, with `{_id}` for the document's id.
    key: String,
    /// Time to live of an entry, in real seconds.
    ttl_seconds: u64,
}

impl Cache {
    /// The key of document `id`.
    fn key(&self, id: &str) -> String {
        self.key.replace("{_id}", id)
    }

    /// Whether the cache holds `key`.
    async fn holds(&self, key: &str) -> redis::RedisResult<bool> {
        let mut connection = self.connection.clone();
        redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut connection).await.map(|hit| hit.is_some())
    }

    /// Keeps `document` under `key` for the entry's time to live; a failure is ignored.
    async fn fill(&self, key: &str, document: Document) {
        let mut connection = self.connection.clone();
        let value = mongodb::bson::Bson::Document(document).into_relaxed_extjson().to_string();
        let _: Result<(), _> =
            redis::cmd("SET").arg(key).arg(value).arg("EX").arg(self.ttl_seconds).query_async(&mut connection).await;
    }

    /// Drops document `id`'s entry; a failure is ignored.
    async fn forget(&self, id: &str) {
        let mut connection = self.connection.clone();
        let _: Result<(), _> = redis::cmd("DEL").arg(self.key(id)).query_async(&mut connection).await;
    }
}

/// Where the new owner publishes an event per write.
struct Events {
    producer: FutureProducer,
    topic: String,
    /// The event's template (`{_id}` in its strings).
    payload: serde_json::Value,
}

/// `template` with `{_id}` in every string replaced by `id`.
fn filled(template: &serde_json::Value, id: &str) -> serde_json::Value {
    use serde_json::Value;
    match template {
        Value::String(text) => Value::String(text.replace("{_id}", id)),
        Value::Array(items) => Value::Array(items.iter().map(|item| filled(item, id)).collect()),
        Value::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), filled(v, id))).collect()),
        other => other.clone(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections the model needs, by resource id.
pub struct Connections {
    /// Databases of `mongodb` resources.
    pub databases: BTreeMap<String, mongodb::Database>,
    /// The cache, if any.
    pub cache: Option<redis::aio::MultiplexedConnection>,
    /// Kafka bootstrap servers, if any.
    pub kafka: Option<String>,
}

impl Model {
    /// The model over the sandbox's connections; `ids` are the dataset's document ids.
    pub fn new(
        spec: &App,
        workload: &Workload,
        connections: Connections,
        ids: Vec<String>,
        routes: Arc<Mutex<State>>,
        day: Duration,
    ) -> Result<Model, String> {
        let mut services = Vec::new();
        for (service, store) in &spec.stores {
            let database = connections.databases.get(&store.0).ok_or_else(|| format!("no connection to `{store}`"))?;
            let collection = database.collection::<Document>(spec.collection_in(store));
            services.push(Service { id: service.0.clone(), store: store.0.clone(), collection });
        }
        let cache = match (&spec.cache, connections.cache) {
            (Some(model), Some(connection)) => {
                // The TTL is simulated time; the model runs in real time.
                let ttl_seconds = (model.ttl.as_secs_f64() * day.as_secs_f64() / 86_400.0).ceil().max(1.0) as u64;
                Some(Cache { connection, key: model.key.clone(), ttl_seconds })
            }
            _ => None,
        };
        let events = match (&spec.events, &connections.kafka) {
            (Some(model), Some(bootstrap)) => {
                let producer: FutureProducer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .set("enable.idempotence", "true")
                    .set("message.timeout.ms", "10000")
                    .create()
                    .map_err(|e| format!("kafka producer: {e}"))?;
                Some(Events { producer, topic: model.topic.clone(), payload: model.payload.clone() })
            }
            _ => None,
        };
        Ok(Model {
            spec: spec.clone(),
            workload: workload.clone(),
            services,
            cache,
            events,
            ids: Arc::new(ids),
            routes,
            stats: Arc::default(),
            faults: Arc::default(),
            databases: connections.databases,
            ledger: Mutex::default(),
            requests: Requests::of(spec),
            misrouted: Mutex::default(),
        })
    }

    fn owner(&self) -> usize {
        self.services.iter().position(|s| s.id == self.spec.owner.0).unwrap_or(0)
    }

    /// Where a request of `shape` for document `id` goes, for `roll` in [0, 1): routed by
    /// the VirtualService of the clients' host; `None` when no route takes it.
    fn routed(&self, shape: &RequestShape, id: &str, roll: f64) -> Option<Routed> {
        let uri = shape.uri.replace("{_id}", id);
        let headers = shape.headers.iter().map(|(name, value)| (name.clone(), value.replace("{_id}", id))).collect();
        let request = Request { method: shape.method.as_str(), uri: &uri, headers: &headers };
        lock(&self.routes).route(&self.requests.host, &request, roll)
    }

    /// The index of the service a request went to, if the application has it.
    fn index(&self, host: &str) -> Option<usize> {
        self.services.iter().position(|s| s.id == host)
    }

    /// Percent of the requests of a routed request's route that go to services other than
    /// the original owner.
    fn away_share(&self, routed: &Routed) -> u32 {
        let Some(via) = &routed.via else { return 0 };
        let total: u32 = via.split.iter().map(|(_, w)| u32::from(*w)).sum();
        let away: u32 = via.split.iter().filter(|(h, _)| *h != self.spec.owner.0).map(|(_, w)| u32::from(*w)).sum();
        if total == 0 { 0 } else { (100.0 * f64::from(away) / f64::from(total)).round() as u32 }
    }

    /// The services that own writes now, with their weight: those the VirtualService's
    /// `writes` routes send writes to, or the owner while it has none.
    fn write_owners(&self) -> BTreeMap<String, u8> {
        let routes = lock(&self.routes);
        let hosts = routes.routes.get(&self.requests.host).map(|r| r.direction_hosts(handoff_render::WRITES));
        match hosts {
            Some(hosts) if !hosts.is_empty() => hosts,
            _ => BTreeMap::from([(self.spec.owner.0.clone(), 100)]),
        }
    }

    /// Notes a write the VirtualService sent to a service that does not own writes now.
    fn check_owner(&self, routed: &Routed) {
        let owners = self.write_owners();
        if !owners.contains_key(&routed.host) {
            let key = (routed.host.clone(), owners.into_keys().collect(), routed.via.clone());
            *lock(&self.misrouted).entry(key).or_default() += 1;
        }
    }

    /// Misrouted writes so far, the most first.
    fn misrouted(&self) -> Vec<Misrouted> {
        let mut out: Vec<Misrouted> = lock(&self.misrouted)
            .iter()
            .map(|((service, owners, via), writes)| Misrouted {
                service: service.clone(),
                writes: *writes,
                owners: owners.clone(),
                via: via.clone().map(MisroutedVia::from),
            })
            .collect();
        out.sort_by_key(|m| std::cmp::Reverse(m.writes));
        out
    }

    /// Reads by the new owner's share of them, from 0% (none) up; empty when the reads
    /// never moved.
    pub fn canary(&self) -> Vec<CanaryPoint> {
        let stats = lock(&self.stats);
        if stats.canary.len() < 2 {
            return Vec::new();
        }
        stats
            .canary
            .iter()
            .map(|(weight, CanaryReads { tally: Tally { requests: reads, failed }, micros })| CanaryPoint {
                weight: *weight,
                reads: *reads,
                p95_ms: p95(&mut micros.clone()).unwrap_or(0.0),
                error_percent: if *reads == 0 { 0.0 } else { 100.0 * *failed as f64 / *reads as f64 },
            })
            .collect()
    }

    /// Requests made so far, and how many failed, by kind.
    pub fn totals(&self) -> BTreeMap<&'static str, Tally> {
        lock(&self.stats).totals.clone()
    }

    /// The service that owns (most) writes now.
    fn writer(&self) -> usize {
        let owners = self.write_owners();
        let most = owners.iter().max_by_key(|(_, weight)| **weight).map(|(host, _)| host.as_str());
        most.and_then(|host| self.index(host)).unwrap_or_else(|| self.owner())
    }

    /// Checks that every write the application saw acknowledged is in the store that owns
    /// writes now; call it once the load has stopped. Documents that do not match are read
    /// again until `settle` has passed, so a sync still catching up is not counted as loss.
    pub async fn audit(&self, settle: Duration) -> Result<Audit, String> {
        let Service { store, collection, .. } = &self.services[self.writer()];
        let expected: Vec<Expected> = lock(&self.ledger).expected();
        let deadline = Instant::now() + settle;
        let mut pending: Vec<&Expected> = expected.iter().collect();
        let mut found: HashMap<String, Option<i32>>;
        loop {
            let ids: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
            found = values(collection, &self.spec.change.field, &ids)
                .await
                .map_err(|e| format!("reading `{store}`: {e}"))?;
            pending.retain(|e| !e.holds(found.get(&e.id).copied().flatten()));
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let examples = pending
            .iter()
            .take(5)
            .map(|Expected { id, acknowledged, .. }| {
                let field = &self.spec.change.field;
                match found.get(id) {
                    Some(Some(value)) => format!("`{id}`: {field} {value}, acknowledged {acknowledged}"),
                    _ => format!("`{id}`: missing (or no int32 {field}), acknowledged {field} {acknowledged}"),
                }
            })
            .collect();
        Ok(Audit {
            store: store.clone(),
            acknowledged_writes: lock(&self.ledger).acknowledged,
            documents: expected.len() as u64,
            lost: pending.len() as u64,
            examples,
            misrouted: self.misrouted(),
        })
    }

    /// Waits out a `service_latency` fault of service `index`.
    async fn delay(&self, index: usize) {
        let added = lock(&self.faults).slow.get(&self.services[index].id).copied();
        if let Some(added) = added {
            tokio::time::sleep(added).await;
        }
    }

    /// Whether a write to service `index` is refused before it reaches the store: an
    /// injected write error, or the service is read-only by a flag.
    fn refuses(&self, index: usize, roll: f64) -> bool {
        let service = &self.services[index];
        let read_only =
            self.spec.read_only_flags.iter().any(|(s, flag)| s.0 == service.id && lock(&self.routes).flag(flag));
        let faults = lock(&self.faults);
        read_only || faults.write_errors.get(&service.store).is_some_and(|percent| roll * 100.0 < *percent)
    }

    async fn read(&self, rng: &mut rand::rngs::SmallRng, id: &str) {
        let started = Instant::now();
        let routed = self.routed(&self.requests.read, id, rng.random());
        let share = routed.as_ref().map_or(0, |r| self.away_share(r));
        let delivered = routed.and_then(|r| self.index(&r.host));
        let store = delivered.unwrap_or_else(|| self.owner());
        // A read no route takes, or sent to a service the application does not have, fails.
        let ok = match delivered {
            Some(store) => self.read_from(store, id).await,
            None => false,
        };
        let sample =
            Sample { at: Instant::now(), kind: Kind::Read, ok, micros: started.elapsed().as_micros() as u64, store };
        {
            let mut stats = lock(&self.stats);
            stats.record(sample);
            let point = stats.canary.entry(share).or_default();
            point.tally.count(ok);
            if ok {
                point.micros.push(sample.micros);
            }
        }
        // A shadow comparison on every fifth read while shadow reads are on.
        let shadowing = self.spec.shadow_reads_flag.as_ref().is_none_or(|flag| lock(&self.routes).flag(flag));
        if shadowing && rng.random_ratio(1, 5) && self.services.len() == 2 {
            self.shadow(id).await;
        }
    }

    /// Reads document `id` as service `store` does, cache-aside; whether it went well.
    async fn read_from(&self, store: usize, id: &str) -> bool {
        self.delay(store).await;
        let cached = self.cache.as_ref().map(|cache| (cache, cache.key(id)));
        let mut found = false;
        if let Some((cache, key)) = &cached {
            match cache.holds(key).await {
                Ok(hit) => found = hit,
                Err(_) => return false,
            }
        }
        if found {
            return true;
        }
        match self.services[store].collection.find_one(doc! {"_id": id}).await {
            Ok(Some(document)) => {
                if let Some((cache, key)) = &cached {
                    cache.fill(key, document).await;
                }
                true
            }
            // Nothing found: a failed read, unless the plan says documents may be absent.
            Ok(None) => self.spec.reads_may_miss,
            Err(_) => false,
        }
    }

    /// A shadow comparison of one document in both stores. A difference is read again
    /// after a moment before it counts: a dual write in flight (one store written, the
    /// other not yet) is not a mismatch; a dropped one stays. A comparison while dual
    /// writes are off (the shadow-read flag left on after the cutover) is counted apart.
    async fn shadow(&self, id: &str) {
        let started = Instant::now();
        let both = || async {
            let (a, b) = tokio::join!(
                self.services[0].collection.find_one(doc! {"_id": id}),
                self.services[1].collection.find_one(doc! {"_id": id})
            );
            match (a, b) {
                (Ok(Some(a)), Ok(Some(b))) => Some(a == b),
                _ => None,
            }
        };
        let mut same = both().await;
        if same == Some(false) {
            tokio::time::sleep(SHADOW_RECHECK).await;
            same = both().await;
        }
        // Compared while only one store takes writes, the other is stale by design.
        let one_store_written = self.spec.dual_write_flag.as_ref().is_some_and(|flag| !lock(&self.routes).flag(flag));
        if let Some(same) = same {
            let sample = Sample {
                at: Instant::now(),
                kind: if one_store_written { Kind::ShadowOneStoreWritten } else { Kind::Shadow },
                ok: same,
                micros: started.elapsed().as_micros() as u64,
                store: 0,
            };
            lock(&self.stats).record(sample);
        }
    }

    async fn write(&self, rng: &mut rand::rngs::SmallRng, id: &str) {
        let started = Instant::now();
        let routed = self.routed(&self.requests.write, id, rng.random());
        let change = &self.spec.change;
        let amount = rng.random_range(change.min.min(change.max)..=change.max.max(change.min));
        if let Some(routed) = &routed {
            self.check_owner(routed);
        }
        let delivered = routed.and_then(|r| self.index(&r.host));
        let (writer, (primary, secondary)) = match delivered {
            Some(writer) => (writer, self.write_stores(rng, id, writer, amount).await),
            // No route takes it, or it went to a service without a store: nothing written.
            None => (self.owner(), (Attempt { ok: false, refused: true, took: started.elapsed() }, None)),
        };
        let at = Instant::now();
        lock(&self.ledger).note(id, amount, primary, secondary);
        self.record_write(writer, (at - started).as_micros() as u64, at, primary, secondary);
        if !primary.ok {
            return;
        }
        if let Some(cache) = &self.cache {
            cache.forget(id).await;
        }
        let new_owner = self.services[writer].id != self.spec.owner.0;
        if let (true, Some(events)) = (new_owner, &self.events) {
            self.publish(events, id, writer).await;
        }
    }

    /// Writes `amount` to the writer's store and, while the dual-write flag is on, to the
    /// other store at once (the seed's `Promise.allSettled`): the second may fail without
    /// failing the write. Returns how each went.
    async fn write_stores(
        &self,
        rng: &mut rand::rngs::SmallRng,
        id: &str,
        writer: usize,
        amount: i32,
    ) -> (Attempt, Option<Attempt>) {
        let mut set = doc! {self.spec.change.field.as_str(): amount};
        if let Some(field) = &self.spec.change.timestamp {
            set.insert(field.as_str(), mongodb::bson::DateTime::now());
        }
        let change = doc! {"$set": set};
        let dual = self.spec.dual_write_flag.as_ref().is_some_and(|flag| lock(&self.routes).flag(flag))
            && self.services.len() == 2;
        let write_to = |index: usize, roll: f64| {
            let collection = &self.services[index].collection;
            let refused = self.refuses(index, roll);
            let change = change.clone();
            async move {
                let started = Instant::now();
                self.delay(index).await;
                let ok = !refused && collection.update_one(doc! {"_id": id}, change).await.is_ok();
                Attempt { ok, refused, took: started.elapsed() }
            }
        };
        if dual {
            let (a, b) = tokio::join!(write_to(writer, rng.random()), write_to(1 - writer, rng.random()));
            (a, Some(b))
        } else {
            (write_to(writer, rng.random()).await, None)
        }
    }

    /// Records a write the client waited `micros` for, and the dual write's extra wait.
    fn record_write(&self, writer: usize, micros: u64, at: Instant, primary: Attempt, secondary: Option<Attempt>) {
        let mut stats = lock(&self.stats);
        stats.record(Sample { at, kind: Kind::Write, ok: primary.ok, micros, store: writer });
        let alone = primary.took.as_micros() as u64;
        stats.observe(Sample { at, kind: Kind::StoreWrite, ok: primary.ok, micros: alone, store: writer });
        match (primary.ok, secondary) {
            (true, None) => keep(&mut stats.single_writes, micros),
            (true, Some(_)) => keep(&mut stats.dual_writes, micros),
            (false, _) => {}
        }
        if let Some(secondary) = secondary {
            // What the client waits longer because of the second write.
            let extra = secondary.took.saturating_sub(primary.took);
            stats.record(Sample {
                at,
                kind: Kind::DualWrite,
                ok: secondary.ok,
                micros: extra.as_micros() as u64,
                store: 1 - writer,
            });
        }
    }

    /// Publishes the event of a write to document `id`, as the new owner `writer` does.
    async fn publish(&self, events: &Events, id: &str, writer: usize) {
        let started = Instant::now();
        let payload = filled(&events.payload, id).to_string();
        let record = FutureRecord::to(&events.topic).key(id).payload(&payload);
        let ok = events.producer.send(record, Duration::from_secs(5)).await.is_ok();
        let at = Instant::now();
        let mut stats = lock(&self.stats);
        stats.record(Sample { at, kind: Kind::Event, ok, micros: (at - started).as_micros() as u64, store: writer });
        if ok {
            for pending in stats.pending.values_mut() {
                pending.push_back(at);
            }
        }
    }

    /// Serves the workload until `stop` fires.
    pub async fn serve(self: Arc<Self>, stop: CancellationToken) {
        let zipf = rand_distr::Zipf::new(self.ids.len().max(1) as f64, self.workload.zipf.unwrap_or(0.0).max(0.0)).ok();
        let lane = |kind: Kind, rate: u32| {
            let model = self.clone();
            let stop = stop.clone();
            async move {
                if rate == 0 {
                    return;
                }
                let mut rng = rand::rngs::SmallRng::from_os_rng();
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Reads arrive at their rate however slowly they are served (open loop), as
                // a service's clients do; writes go one after the other, so each document's
                // last acknowledged write is well defined for the loss audit.
                let mut reading = tokio::task::JoinSet::new();
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let n = zipf.map_or(0, |z| z.sample(&mut rng) as usize - 1).min(model.ids.len().saturating_sub(1));
                    let Some(id) = model.ids.get(n).cloned() else { break };
                    match kind {
                        Kind::Read => {
                            while reading.try_join_next().is_some() {}
                            if reading.len() >= READS_IN_FLIGHT {
                                let _ = reading.join_next().await;
                            }
                            let (model, mut rng) = (model.clone(), rand::rngs::SmallRng::from_rng(&mut rng));
                            reading.spawn(async move { model.read(&mut rng, &id).await });
                        }
                        _ => model.write(&mut rng, &id).await,
                    }
                }
                while reading.join_next().await.is_some() {}
            }
        };
        tokio::join!(
            lane(Kind::Read, self.workload.reads_per_second),
            lane(Kind::Write, self.workload.writes_per_second)
        );
    }

    /// Reads the topic as each consumer group, committing, until `stop` fires.
    pub fn consume(self: &Arc<Self>, bootstrap: &str, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(events) = &self.spec.events else { return Vec::new() };
        let mut tasks = Vec::new();
        for group in &events.consumers {
            lock(&self.stats).pending.insert(group.clone(), VecDeque::new());
            let consumer: Result<StreamConsumer, _> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create();
            let Ok(consumer) = consumer else { continue };
            let (model, stop, group, topic) = (self.clone(), stop.clone(), group.clone(), events.topic.clone());
            tasks.push(tokio::spawn(model.consume_as(Arc::new(consumer), group, topic, stop)));
        }
        tasks
    }

    /// Reads every partition of `topic` from the beginning as consumer `group`, committing
    /// each message, until `stop` fires.
    async fn consume_as(
        self: Arc<Self>,
        consumer: Arc<StreamConsumer>,
        group: String,
        topic: String,
        stop: CancellationToken,
    ) {
        if let Err(error) = assign_every_partition(&consumer, &topic).await {
            tracing::warn!(group, "cannot read `{topic}`: {error}");
            return;
        }
        loop {
            let message = tokio::select! {
                message = consumer.recv() => message,
                () = stop.cancelled() => break,
            };
            if let Err(error) = &message {
                tracing::warn!(group, "reading `{topic}`: {error}");
            }
            if let Ok(message) = message {
                // A synchronous commit blocks: let the runtime move other tasks away.
                let committed = tokio::task::block_in_place(|| {
                    consumer.commit_message(&message, rdkafka::consumer::CommitMode::Sync)
                });
                if let Err(error) = committed {
                    tracing::warn!(group, "commit failed: {error}");
                }
                if let Some(pending) = lock(&self.stats).pending.get_mut(&group) {
                    pending.pop_front();
                }
            }
        }
        // Tansu 0.6 never completes a consumer's LeaveGroup: close on a thread.
        std::thread::spawn(move || drop(consumer));
    }

    /// Measures plan metrics when the stand-in service is asked for them, on the runtime
    /// of `handle` (the stand-in answers on its own thread).
    pub fn measurer(self: &Arc<Self>, measures: BTreeMap<String, Measure>, handle: tokio::runtime::Handle) -> Measurer {
        let model = self.clone();
        Arc::new(move |metric: &str| {
            let measure = measures.get(metric)?;
            // The timer is made inside the runtime (`block_on` enters it).
            handle.block_on(async { tokio::time::timeout(MEASURE_TIMEOUT, model.value(measure)).await }).ok().flatten()
        })
    }

    /// The latencies (µs) of the recent requests `requests` selects, and the real time they
    /// were made in (at most the measures' window, at least `since` ago).
    pub(crate) fn recent(&self, requests: &ModelRequests, since: Instant) -> (Vec<u64>, Duration) {
        let kind = Kind::of(requests.kind);
        let service = requests.service.as_ref().map(|s| self.services.iter().position(|x| x.id == s.0));
        let outcome = requests.outcome.map(|o| o == Outcome::Ok);
        let stats = lock(&self.stats);
        let micros = stats
            .of(kind)
            .filter(|s| service.is_none_or(|index| Some(s.store) == index))
            .filter(|s| outcome.is_none_or(|ok| s.ok == ok))
            .map(|s| s.micros)
            .collect();
        (micros, since.elapsed().min(WINDOW))
    }

    /// What `measure` measures now (`None`: nothing to measure).
    pub(crate) async fn value(&self, measure: &Measure) -> Option<f64> {
        let stats = || lock(&self.stats);
        match measure {
            Measure::ServiceUp(service) => {
                let store = self.spec.stores.get(service)?;
                Some(if lock(&self.faults).down.contains(&store.0) { 0.0 } else { 1.0 })
            }
            Measure::Completion => {
                let owner = self.owner();
                let other = self.services.iter().position(|s| s.id != self.spec.owner.0)?;
                let total = self.services[owner].collection.count_documents(doc! {}).await.ok()?;
                let copied = self.services[other].collection.count_documents(doc! {}).await.ok()?;
                Some(if total == 0 { 100.0 } else { 100.0 * copied as f64 / total as f64 })
            }
            Measure::DualWriteSuccess => stats().success_percent(Kind::DualWrite),
            Measure::DualWriteLatency => {
                // While dual writes run: the increase over the last single-store writes.
                let dual = self.spec.dual_write_flag.as_ref().is_some_and(|flag| lock(&self.routes).flag(flag));
                if !dual {
                    return None;
                }
                // Too few writes for a p95 (`P95_WRITES`): no data yet, neither pass nor fail.
                let stats = stats();
                if stats.dual_writes.len().min(stats.single_writes.len()) < P95_WRITES {
                    return None;
                }
                let dual = p95(&mut stats.dual_writes.iter().copied().collect::<Vec<_>>())?;
                let single = p95(&mut stats.single_writes.iter().copied().collect::<Vec<_>>())?;
                Some((dual - single).max(0.0))
            }
            Measure::ShadowMismatch => stats().success_percent(Kind::Shadow).map(|ok| 100.0 - ok),
            Measure::ErrorRate => {
                let stats = stats();
                let (n, failed) = stats
                    .of(Kind::Read)
                    .chain(stats.of(Kind::Write))
                    .fold((0, 0), |(n, f), s| (n + 1, f + u64::from(!s.ok)));
                (n > 0).then(|| 100.0 * failed as f64 / n as f64)
            }
            Measure::ReadP95 => stats().percentile_ms(Kind::Read, 95.0),
            Measure::ReadPercentile(q) => stats().percentile_ms(Kind::Read, *q),
            Measure::WriteSuccess => stats().success_percent(Kind::Write),
            Measure::EventPublishSuccess => stats().success_percent(Kind::Event),
            Measure::Collections(resource) => {
                let database = self.databases.get(&resource.0)?;
                let names = database.list_collection_names().await.ok()?;
                let name = self.spec.collection_in(resource);
                Some(names.iter().filter(|n| n.starts_with(name)).count() as f64)
            }
            Measure::StoreReads(resource) => {
                let index = self.services.iter().position(|s| s.store == resource.0);
                let stats = stats();
                Some(index.map_or(0, |i| stats.of(Kind::Read).filter(|s| s.store == i).count()) as f64)
            }
            Measure::ConsumerLagSeconds => {
                let stats = stats();
                let oldest = stats.pending.values().filter_map(|p| p.front()).map(|at| at.elapsed().as_secs_f64());
                Some(oldest.fold(0.0, f64::max))
            }
            Measure::Documents(resource) => self.documents(resource).await,
            Measure::Constant(value) => Some(*value),
        }
    }

    /// Documents of the application's collection in the `mongodb` resource `store`; none
    /// while the collection does not exist.
    async fn documents(&self, store: &handoff_plan::model::Id) -> Option<f64> {
        let database = self.databases.get(&store.0)?;
        let name = self.spec.collection_in(store);
        let names = database.list_collection_names().await.ok()?;
        if !names.iter().any(|n| n == name) {
            return None;
        }
        // The collection's count from its metadata (what collStats reports), not a scan:
        // telemetry reads it before every query.
        let collection = database.collection::<Document>(name);
        let count = match collection.estimated_document_count().await {
            Ok(count) => count,
            Err(_) => collection.count_documents(doc! {}).await.ok()?,
        };
        Some(count as f64)
    }
}

/// Assigns `consumer` every partition of `topic`, from the beginning (one when the
/// topic's metadata cannot be read).
async fn assign_every_partition(consumer: &Arc<StreamConsumer>, topic: &str) -> rdkafka::error::KafkaResult<()> {
    let mut assignment = rdkafka::TopicPartitionList::new();
    // A blocking call: off the runtime's threads, which serve everything else.
    let (client, name) = (consumer.clone(), topic.to_owned());
    let partitions = tokio::task::spawn_blocking(move || {
        client
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(1);
    for partition in 0..partitions {
        let _ = assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning);
    }
    consumer.assign(&assignment)
}

/// The int32 at the dotted path `field` of each document of `ids` that `collection` holds
/// (`None`: not an int32).
async fn values(
    collection: &mongodb::Collection<Document>,
    field: &str,
    ids: &[&str],
) -> mongodb::error::Result<HashMap<String, Option<i32>>> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(AUDIT_BATCH) {
        let mut cursor = collection.find(doc! {"_id": {"$in": chunk}}).projection(doc! {field: 1}).await?;
        while let Some(document) = cursor.try_next().await? {
            let id = document.get_str("_id").unwrap_or_default().to_owned();
            let mut path = field.split('.');
            let first = path.next().and_then(|key| document.get(key));
            let value = path.try_fold(first, |at, key| Some(at?.as_document()?.get(key))).flatten();
            found.insert(id, value.and_then(mongodb::bson::Bson::as_i32));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    /// Each percentile is its own rank: a p99 is not a p95.
    #[test]
    fn percentiles_are_nearest_ranks() {
        let mut micros: Vec<u64> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let at = |q: f64, micros: &mut Vec<u64>| percentile(micros, q).unwrap();
        assert_eq!((at(50.0, &mut micros), at(95.0, &mut micros), at(99.0, &mut micros)), (51.0, 95.0, 99.0));
        assert_eq!((at(0.0, &mut micros), at(100.0, &mut micros)), (1.0, 100.0));
        assert_eq!(percentile(&mut [], 99.0), None);
    }
}
