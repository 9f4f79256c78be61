//! The application model: the service whose data moves, serving a steady load through the
//! real stores, cache and broker of the sandbox, the way the plan's routes and flags say —
//! and what the simulator measures from it.
//!
//! Reads pick a service by the read route's weights and go cache-aside through Redis to
//! that service's store. Writes go to the service the write route names (the original
//! owner until the cutover) and, while the dual-write flag is on, to the other store as
//! well, whose failure does not fail the write. Once the new owner takes writes it
//! publishes an event per write; consumer groups read them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_plan::simulation::{App, Measure, Workload};
use mongodb::bson::{Document, doc};
use rand::Rng;
use rand::SeedableRng;
use rand_distr::Distribution;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::standin::State;

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
    /// Totals over the whole simulation: (requests, failed) by kind name.
    pub totals: BTreeMap<&'static str, (u64, u64)>,
    /// Publish times of events not yet read, per consumer group.
    pending: BTreeMap<String, VecDeque<Instant>>,
}

impl Stats {
    fn record(&mut self, sample: Sample) {
        let name = match sample.kind {
            Kind::Read => "reads",
            Kind::Write => "writes",
            Kind::DualWrite => "dual_writes",
            Kind::Event => "events",
            Kind::Shadow => "shadow_reads",
        };
        let total = self.totals.entry(name).or_default();
        total.0 += 1;
        total.1 += u64::from(!sample.ok);
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

    fn p95_ms(&self, kind: Kind) -> Option<f64> {
        let mut micros: Vec<u64> = self.of(kind).filter(|s| s.ok).map(|s| s.micros).collect();
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        Some(micros[((micros.len() - 1) as f64 * 0.95).round() as usize] as f64 / 1000.0)
    }
}

/// Faults the model applies itself (the others act on the real servers).
#[derive(Debug, Default)]
pub struct ModelFaults {
    /// Percent of writes that fail, by `mongodb` resource.
    pub write_errors: BTreeMap<String, f64>,
    /// Resources whose server is stopped.
    pub down: Vec<String>,
}

/// The running application.
pub struct Model {
    spec: App,
    workload: Workload,
    /// Services in a fixed order, with their store resource and collection.
    services: Vec<(String, String, mongodb::Collection<Document>)>,
    cache: Option<(redis::aio::MultiplexedConnection, String, u64)>,
    events: Option<(FutureProducer, String)>,
    ids: Arc<Vec<String>>,
    /// The stand-in service's state (routes, flags, measures).
    pub routes: Arc<Mutex<State>>,
    /// Measurements.
    pub stats: Arc<Mutex<Stats>>,
    /// Model-level faults.
    pub faults: Arc<Mutex<ModelFaults>>,
    databases: BTreeMap<String, mongodb::Database>,
    /// p95 write latency (ms) while writes went to one store only.
    baseline: Mutex<Option<f64>>,
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
            services.push((service.0.clone(), store.0.clone(), database.collection::<Document>(&spec.collection)));
        }
        let cache = match (&spec.cache, connections.cache) {
            (Some(model), Some(connection)) => {
                // The TTL is simulated time; the model runs in real time.
                let ttl = (model.ttl.as_secs_f64() * day.as_secs_f64() / 86_400.0).ceil().max(1.0) as u64;
                Some((connection, model.key.clone(), ttl))
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
                Some((producer, model.topic.clone()))
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
            baseline: Mutex::new(None),
        })
    }

    /// Index of the service at `weight` percent along the route (by its weights), or the
    /// owner when the route was never set.
    fn pick(&self, route: Option<&handoff_plan::model::Id>, roll: f64) -> usize {
        let owner = self.services.iter().position(|(s, _, _)| *s == self.spec.owner.0).unwrap_or(0);
        let Some(route) = route else { return owner };
        let routes = lock(&self.routes);
        let weights: Vec<f64> =
            self.services.iter().map(|(service, _, _)| routes.weight(&route.0, service).unwrap_or(0.0)).collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return owner;
        }
        let mut point = roll * total;
        for (i, weight) in weights.iter().enumerate() {
            if point < *weight {
                return i;
            }
            point -= weight;
        }
        owner
    }

    fn write_fails(&self, store: &str, roll: f64) -> bool {
        let faults = lock(&self.faults);
        faults.write_errors.get(store).is_some_and(|percent| roll * 100.0 < *percent)
    }

    async fn read(&self, rng: &mut rand::rngs::SmallRng, id: &str) {
        let started = Instant::now();
        let store = self.pick(self.spec.reads.as_ref(), rng.random());
        let key = self.cache.as_ref().map(|(_, key, _)| key.replace("{_id}", id));
        let mut ok = true;
        let mut found = false;
        if let (Some((connection, _, _)), Some(key)) = (&self.cache, &key) {
            let mut connection = connection.clone();
            match redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut connection).await {
                Ok(hit) => found = hit.is_some(),
                Err(_) => ok = false,
            }
        }
        if !found {
            let collection = &self.services[store].2;
            match collection.find_one(doc! {"_id": id}).await {
                Ok(document) => {
                    if let (Some((connection, _, ttl)), Some(key), Some(document)) = (&self.cache, &key, document) {
                        let mut connection = connection.clone();
                        let value = mongodb::bson::Bson::Document(document).into_relaxed_extjson().to_string();
                        let _: Result<(), _> = redis::cmd("SET")
                            .arg(key)
                            .arg(value)
                            .arg("EX")
                            .arg(*ttl)
                            .query_async(&mut connection)
                            .await;
                    }
                }
                Err(_) => ok = false,
            }
        }
        let sample =
            Sample { at: Instant::now(), kind: Kind::Read, ok, micros: started.elapsed().as_micros() as u64, store };
        lock(&self.stats).record(sample);
        // A shadow comparison on every fifth read while both stores are written.
        if rng.random_ratio(1, 5) && self.services.len() == 2 {
            self.shadow(id).await;
        }
    }

    async fn shadow(&self, id: &str) {
        let started = Instant::now();
        let (a, b) =
            tokio::join!(self.services[0].2.find_one(doc! {"_id": id}), self.services[1].2.find_one(doc! {"_id": id}));
        if let (Ok(a), Ok(b)) = (a, b)
            && a.is_some()
            && b.is_some()
        {
            let same = a == b;
            let sample = Sample {
                at: Instant::now(),
                kind: Kind::Shadow,
                ok: same,
                micros: started.elapsed().as_micros() as u64,
                store: 0,
            };
            lock(&self.stats).record(sample);
        }
    }

    async fn write(&self, rng: &mut rand::rngs::SmallRng, id: &str) {
        let started = Instant::now();
        let writer = self.pick(self.spec.writes.as_ref(), rng.random());
        let change = doc! {"$set": {"price.amount": rng.random_range(100..5000_i32), "updated_at": mongodb::bson::DateTime::now()}};
        let dual = self.spec.dual_write_flag.as_ref().is_some_and(|flag| lock(&self.routes).flag(flag))
            && self.services.len() == 2;
        // The owner's write and, while the flag is on, the other store's, at once (the
        // seed's `Promise.allSettled`): the second may fail without failing the write.
        let write_to = |index: usize, roll: f64| {
            let (_, store, collection) = &self.services[index];
            let fails = self.write_fails(store, roll);
            let change = change.clone();
            async move {
                let started = Instant::now();
                let ok = !fails && collection.update_one(doc! {"_id": id}, change).await.is_ok();
                (ok, started.elapsed())
            }
        };
        let (primary, secondary) = if dual {
            let (a, b) = tokio::join!(write_to(writer, rng.random()), write_to(1 - writer, rng.random()));
            (a, Some(b))
        } else {
            (write_to(writer, rng.random()).await, None)
        };
        let at = Instant::now();
        let ok = primary.0;
        lock(&self.stats).record(Sample {
            at,
            kind: Kind::Write,
            ok,
            micros: (at - started).as_micros() as u64,
            store: writer,
        });
        if let Some((dual_ok, took)) = secondary {
            // What the client waits longer because of the second write.
            let extra = took.saturating_sub(primary.1);
            lock(&self.stats).record(Sample {
                at,
                kind: Kind::DualWrite,
                ok: dual_ok,
                micros: extra.as_micros() as u64,
                store: 1 - writer,
            });
        }
        if !ok {
            return;
        }
        if let Some((connection, key, _)) = &self.cache {
            let mut connection = connection.clone();
            let _: Result<(), _> = redis::cmd("DEL").arg(key.replace("{_id}", id)).query_async(&mut connection).await;
        }
        let new_owner = self.services[writer].0 != self.spec.owner.0;
        if let (true, Some((producer, topic))) = (new_owner, &self.events) {
            let started = Instant::now();
            let payload = serde_json::json!({"version": 1, "type": "menu.item.updated", "id": id}).to_string();
            let ok =
                producer.send(FutureRecord::to(topic).key(id).payload(&payload), Duration::from_secs(5)).await.is_ok();
            let at = Instant::now();
            let mut stats = lock(&self.stats);
            stats.record(Sample {
                at,
                kind: Kind::Event,
                ok,
                micros: (at - started).as_micros() as u64,
                store: writer,
            });
            if ok {
                for pending in stats.pending.values_mut() {
                    pending.push_back(at);
                }
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
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let n = zipf.map_or(0, |z| z.sample(&mut rng) as usize - 1).min(model.ids.len().saturating_sub(1));
                    let Some(id) = model.ids.get(n).cloned() else { return };
                    match kind {
                        Kind::Read => model.read(&mut rng, &id).await,
                        _ => model.write(&mut rng, &id).await,
                    }
                }
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
            let consumer: Result<rdkafka::consumer::StreamConsumer, _> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create();
            let Ok(consumer) = consumer else { continue };
            let (model, stop, group, topic) = (self.clone(), stop.clone(), group.clone(), events.topic.clone());
            tasks.push(tokio::spawn(async move {
                use rdkafka::consumer::Consumer;
                let mut assignment = rdkafka::TopicPartitionList::new();
                let partitions = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                    .unwrap_or(1);
                for partition in 0..partitions {
                    let _ = assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning);
                }
                if let Err(error) = consumer.assign(&assignment) {
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
                        if let Some(pending) = lock(&model.stats).pending.get_mut(&group) {
                            pending.pop_front();
                        }
                    }
                }
                // Tansu 0.6 never completes a consumer's LeaveGroup: close on a thread.
                std::thread::spawn(move || drop(consumer));
            }));
        }
        tasks
    }

    /// Measures every mapped metric into the stand-in service, every 250 ms, until `stop`.
    pub async fn measure(self: Arc<Self>, measures: BTreeMap<String, Measure>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while !stop.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            for (metric, measure) in &measures {
                if let Some(value) = self.value(measure).await {
                    lock(&self.routes).measures.insert(metric.clone(), value);
                }
            }
        }
    }

    async fn value(&self, measure: &Measure) -> Option<f64> {
        let stats = || lock(&self.stats);
        match measure {
            Measure::ServiceUp(service) => {
                let store = self.spec.stores.get(service)?;
                Some(if lock(&self.faults).down.contains(&store.0) { 0.0 } else { 1.0 })
            }
            Measure::Completion => {
                let owner = self.services.iter().position(|(s, _, _)| *s == self.spec.owner.0)?;
                let other = self.services.iter().position(|(s, _, _)| *s != self.spec.owner.0)?;
                let total = self.services[owner].2.count_documents(doc! {}).await.ok()?;
                let copied = self.services[other].2.count_documents(doc! {}).await.ok()?;
                Some(if total == 0 { 100.0 } else { 100.0 * copied as f64 / total as f64 })
            }
            Measure::DualWriteSuccess => stats().success_percent(Kind::DualWrite),
            Measure::DualWriteLatency => {
                // The increase over the write latency measured before dual writes began.
                let dual = self.spec.dual_write_flag.as_ref().is_some_and(|flag| lock(&self.routes).flag(flag));
                let p95 = stats().p95_ms(Kind::Write)?;
                let mut baseline = lock(&self.baseline);
                if !dual {
                    *baseline = Some(p95);
                    return None;
                }
                Some((p95 - (*baseline)?).max(0.0))
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
            Measure::ReadP95 => stats().p95_ms(Kind::Read),
            Measure::WriteSuccess => stats().success_percent(Kind::Write),
            Measure::EventPublishSuccess => stats().success_percent(Kind::Event),
            Measure::Collections(resource) => {
                let database = self.databases.get(&resource.0)?;
                let names = database.list_collection_names().await.ok()?;
                Some(names.iter().filter(|n| n.starts_with(&self.spec.collection)).count() as f64)
            }
            Measure::StoreReads(resource) => {
                let index = self.services.iter().position(|(_, store, _)| *store == resource.0);
                let stats = stats();
                Some(index.map_or(0, |i| stats.of(Kind::Read).filter(|s| s.store == i).count()) as f64)
            }
            Measure::ConsumerLagSeconds => {
                let stats = stats();
                let oldest = stats.pending.values().filter_map(|p| p.front()).map(|at| at.elapsed().as_secs_f64());
                Some(oldest.fold(0.0, f64::max))
            }
            Measure::Constant(value) => Some(*value),
        }
    }
}
