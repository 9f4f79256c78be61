//! `handoff simulate`: a plan run for real against throwaway services.
//!
//! The sandbox starts the plan's MongoDB, Kafka and Redis servers; the stores are seeded;
//! an application model serves a steady load through them, every request routed by the
//! VirtualService the plan's traffic steps apply, and shaped by its feature flags; the engine runs the plan with the real executors on a paced
//! virtual clock (one simulated day per `simulation.day` of real time) while faults are
//! injected at the phases a scenario names; the run's log becomes the report.
//!
//! Architecture invariant: the simulation runs the same engine and executors as
//! `handoff run`; it changes only what the plan points at (the derived plan), never how a
//! step executes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_engine::{DirStore, Engine, Event, Graph, Notice, Record, RunOptions, Store};
use handoff_executor::{Clock, Endpoints, Executors, Policy, VirtualClock};
use handoff_plan::model::Plan;
use handoff_plan::simulation::{Fault, FaultKind, Scenario, Simulation};
use handoff_sandbox::{Sandbox, ServiceSpec};
use mongodb::bson::Document;
use tokio_util::sync::CancellationToken;

pub mod app;
pub mod dataset;
pub mod derive;
mod junit;
pub mod report;
pub mod router;
pub mod standin;
pub mod telemetry;

pub use report::{Report, RunVerdict};

/// Why a simulation could not run (as opposed to a plan that fails in it).
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The plan says nothing about how to simulate it.
    #[error(
        "plan `{0}` has no `simulation:` section; add one (see plans/menu-service.yaml) to describe the data, load and time scale"
    )]
    NoSimulation(String),
    /// The sandbox did not start.
    #[error("the sandbox did not start")]
    Sandbox(#[from] handoff_sandbox::SandboxError),
    /// Something the simulation set up failed.
    #[error("{0}")]
    Setup(String),
    /// A fault of the plan or the scenario cannot be applied in this sandbox.
    #[error("fault {0}")]
    Fault(String),
    /// The engine could not run the plan.
    #[error("the run could not proceed")]
    Engine(#[from] handoff_engine::EngineError),
    /// A Prometheus query of the plan selects nothing the simulated application publishes.
    #[error(
        "metric `{metric}`: selector `{selector}` of query `{query}` selects no series on the simulation's Prometheus; {why}"
    )]
    QuerySelectsNothing {
        /// The plan's metric.
        metric: String,
        /// Its query, as written.
        query: String,
        /// The selector that selects nothing.
        selector: String,
        /// Why, as far as the declared telemetry tells.
        why: String,
    },
}

/// How to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Faults (and expectations) on top of the plan's.
    pub scenario: Option<Scenario>,
    /// The sandbox's options (provider, keep).
    pub sandbox: handoff_sandbox::Options,
    /// Real time per simulated day, overriding the plan's `simulation.day`.
    pub day: Option<Duration>,
    /// Where the run's log and scratch files go.
    pub work_dir: PathBuf,
    /// Seeds the generated data (`simulation.dataset`): a seed reproduces the documents.
    pub seed: u64,
    /// A rollback drill of this phase: the simulator fails it once its steps are done, so
    /// its rollback runs against the sandbox and is timed against its budget. The run
    /// stops there.
    pub drill: Option<String>,
}

/// The metric a rollback drill's criterion reads (always 1, and the criterion wants 0).
pub const DRILL_METRIC: &str = "handoff_rollback_drill";

/// Wall time of each stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Sandbox start.
    pub sandbox_seconds: f64,
    /// Seeding the stores.
    pub seed_seconds: f64,
    /// The plan's run.
    pub run_seconds: f64,
}

fn setup(what: &str) -> impl Fn(String) -> SimulateError + '_ {
    move |e| SimulateError::Setup(format!("{what}: {e}"))
}

/// Runs the simulation; `progress` sees every notice of the run as it happens.
pub async fn simulate(
    plan: &Plan,
    executors: &dyn Executors,
    options: &Options,
    progress: &mut (dyn FnMut(&Notice) + Send),
    cancel: &CancellationToken,
) -> Result<Report, SimulateError> {
    let setting = Setting::resolve(plan, options)?;
    let mut timings = Timings::default();
    let servers = Servers::start(plan, setting.spec, options, &mut timings).await?;
    let standin = standin::StandIn::start().map_err(|e| setup("the stand-in service")(e.to_string()))?;
    let seeded = seed(plan, (setting.spec, options.seed), &servers, &mut timings).await?;
    let scratch = options.work_dir.join("scratch");
    // The plan's queries reach the sandbox's Prometheus through the stand-in, which writes
    // the application's telemetry up to the clock's time before forwarding each.
    let prometheus = servers.prometheus.as_ref().map(|_| format!("{}/prometheus", standin.url));
    let targets =
        derive::Targets { server: &|id| servers.url(id), standin: &standin.url, prometheus: prometheus.as_deref() };
    let derived = derive::derive(plan, &targets, &scratch, options.drill.as_deref()).map_err(SimulateError::Setup)?;
    standin.declare(derived.plan.simulation.as_ref().map_or(&[], |s| s.responses.as_slice()));
    let graph = compile(&derived.plan, executors)?;
    let clock = Arc::new(VirtualClock::paced(setting.day));
    let application = Application::start(setting.spec, &servers, seeded, &standin, clock.clone()).await?;

    let store: Arc<dyn Store> =
        Arc::new(DirStore::new(&options.work_dir.join("state"), &plan.metadata.name.0, "simulation"));
    let engine = Engine::new(&graph, executors, store.clone());
    let mut faults = Faults::new(&setting.faults, &servers, &application);
    faults.check()?;
    let started = Instant::now();
    let result = drive(&engine, &run_options(clock, scratch, &derived), cancel, &mut faults, progress).await;
    timings.run_seconds = started.elapsed().as_secs_f64();
    let applied = faults.applied;
    let model = application.stop().await;

    let (run_id, outcome) = result?;
    if let Err(error) = check_queries(plan, setting.spec, &servers).await {
        servers.shutdown(options.sandbox.keep).await;
        return Err(error);
    }
    // A sync the run left going may still be applying the last writes: allow it a moment.
    let audit = model.audit(Duration::from_secs(5)).await;
    let canary = model.canary();
    let records = store.load(&run_id).map_err(handoff_engine::EngineError::from)?;
    let totals = model.totals();
    let report = report::build(report::Inputs {
        plan,
        records: &records,
        outcome: &outcome,
        scenario: setting.scenario(options),
        audit,
        canary,
        faults: applied,
        totals,
        timings,
        day: setting.day,
    });
    servers.shutdown(options.sandbox.keep).await;
    Ok(report)
}

/// Every selector of every query the simulation ran on its Prometheus selected a series
/// there at some time of the run; the first that selected none fails the simulation,
/// naming the metric, query and selector (whatever the criteria said: their verdicts rest
/// on a query that reads nothing).
async fn check_queries(plan: &Plan, spec: &Simulation, servers: &Servers<'_>) -> Result<(), SimulateError> {
    let Some(prometheus) = &servers.prometheus else { return Ok(()) };
    let declared = handoff_plan::promql::declared(spec);
    for (id, query) in handoff_plan::promql::simulated_queries(plan, spec) {
        let Ok(selectors) = handoff_plan::promql::selectors(query) else { continue };
        for selector in selectors {
            if !prometheus_selects(prometheus.url(), &selector.to_string()).await? {
                return Err(SimulateError::QuerySelectsNothing {
                    metric: id.to_string(),
                    query: query.to_owned(),
                    selector: selector.to_string(),
                    why: handoff_plan::promql::why_nothing(&selector, &declared),
                });
            }
        }
    }
    Ok(())
}

/// Whether the Prometheus at `base` holds a series `selector` selects.
async fn prometheus_selects(base: &str, selector: &str) -> Result<bool, SimulateError> {
    let encoded = percent_encoding::utf8_percent_encode(selector, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("{base}/api/v1/series?match[]={encoded}");
    let response = handoff_executor::http::Request::get(&url, Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| setup("the simulation's Prometheus")(e.to_string()))?;
    let found = response.json.as_ref().and_then(|j| j.pointer("/data")).and_then(serde_json::Value::as_array);
    match found {
        Some(series) => Ok(!series.is_empty()),
        None => Err(setup("the simulation's Prometheus")(format!("{url} answered {}", response.excerpt))),
    }
}

/// What to simulate: the plan's `simulation:` section, the time scale, the faults.
struct Setting<'p> {
    spec: &'p Simulation,
    /// Real time per simulated day.
    day: Duration,
    /// The plan's faults, then the scenario's.
    faults: Vec<Fault>,
    /// The scenario of a rollback drill, whose fault is the drill's criterion.
    drill: Option<Scenario>,
}

impl<'p> Setting<'p> {
    fn resolve(plan: &'p Plan, options: &Options) -> Result<Setting<'p>, SimulateError> {
        let spec = plan.simulation.as_ref().ok_or_else(|| SimulateError::NoSimulation(plan.metadata.name.0.clone()))?;
        let day = options.day.or_else(|| spec.day.as_ref().map(|d| d.get())).unwrap_or(Duration::from_secs(1));
        let mut faults: Vec<Fault> = spec.faults.clone();
        if let Some(scenario) = &options.scenario {
            faults.extend(scenario.faults.iter().cloned());
        }
        let drill = options.drill.as_ref().map(|phase| Scenario {
            name: format!("rollback drill of `{phase}`"),
            description: Some(format!("phase `{phase}` is failed on purpose once its steps are done")),
            faults: Vec::new(),
            expect_rollback: Some(handoff_plan::model::Id(phase.clone())),
        });
        Ok(Setting { spec, day, faults, drill })
    }

    /// The scenario the report holds the run to: the drill's, else the one asked for.
    fn scenario<'s>(&'s self, options: &'s Options) -> Option<&'s Scenario> {
        self.drill.as_ref().or(options.scenario.as_ref())
    }
}

/// The sandbox, and which of its servers serves each resource of the plan.
struct Servers<'p> {
    plan: &'p Plan,
    sandbox: Sandbox,
    /// The Prometheus the application's telemetry is written to and the plan's queries
    /// run on (when the plan has a `prometheus` resource and declares telemetry).
    prometheus: Option<handoff_sandbox::Prometheus>,
    /// Endpoint → the resource whose server stands for it.
    serving: BTreeMap<&'p str, &'p str>,
}

impl<'p> Servers<'p> {
    /// Starts the sandbox for the plan's resources. Resources that share an endpoint share
    /// a server, as in production: the one of the resource the simulation seeds or stores
    /// data in, else the first.
    async fn start(
        plan: &'p Plan,
        spec: &'p Simulation,
        options: &Options,
        timings: &mut Timings,
    ) -> Result<Servers<'p>, SimulateError> {
        let started = Instant::now();
        let wants_prometheus = spec.telemetry.is_some()
            && plan.resources.values().any(|r| r.kind == handoff_plan::model::ResourceKind::Prometheus);
        let dir = options.work_dir.join("prometheus");
        let specs = ServiceSpec::for_plan(plan);
        let (sandbox, prometheus) = tokio::join!(Sandbox::start(&specs, &options.sandbox), async {
            if wants_prometheus { handoff_sandbox::Prometheus::receiving(&dir).await.map(Some) } else { Ok(None) }
        });
        let (sandbox, prometheus) = (sandbox?, prometheus?);
        timings.sandbox_seconds = started.elapsed().as_secs_f64();
        let mut serving: BTreeMap<&str, &str> = BTreeMap::new();
        let preferred: Vec<&str> = spec
            .dataset
            .iter()
            .map(|d| d.resource.0.as_str())
            .chain(spec.app.stores.values().map(|s| s.0.as_str()))
            .collect();
        let mut resources: Vec<_> = plan.resources.iter().collect();
        resources.sort_by_key(|(id, _)| !preferred.contains(&id.0.as_str()));
        for (id, resource) in resources {
            if let Some(endpoint) = &resource.endpoint {
                serving.entry(endpoint.0.as_str()).or_insert(id.0.as_str());
            }
        }
        Ok(Servers { plan, sandbox, prometheus, serving })
    }

    /// Stops every server (unless `keep`).
    async fn shutdown(self, keep: bool) {
        if keep {
            return;
        }
        if let Some(prometheus) = self.prometheus {
            prometheus.stop().await;
        }
        self.sandbox.shutdown().await;
    }

    /// The URL of resource `id`'s server, if it has one.
    fn url(&self, id: &str) -> Option<String> {
        self.server(id).ok().map(|s| s.endpoint().url.clone())
    }

    /// The sandbox server that stands for resource `id` (one it shares an endpoint with).
    fn server(&self, id: &str) -> Result<&handoff_sandbox::Service, handoff_sandbox::SandboxError> {
        let endpoint = self.plan.resources.get(id).and_then(|r| r.endpoint.as_ref());
        let server = endpoint.and_then(|e| self.serving.get(e.0.as_str()).copied()).unwrap_or(id);
        self.sandbox.service(server)
    }
}

/// The seeded stores: a database per `mongodb` resource, and the ids of the documents the
/// application serves.
struct Seeded {
    databases: BTreeMap<String, mongodb::Database>,
    ids: Vec<String>,
}

/// Connects to every `mongodb` resource and fills the plan's datasets with documents of
/// their declared shape, generated from `seed`.
async fn seed(
    plan: &Plan,
    (spec, seed): (&Simulation, u64),
    servers: &Servers<'_>,
    timings: &mut Timings,
) -> Result<Seeded, SimulateError> {
    let started = Instant::now();
    let mut databases = BTreeMap::new();
    for (id, resource) in plan.resources.iter().filter(|(_, r)| r.kind == handoff_plan::model::ResourceKind::Mongodb) {
        let Some(address) = servers.url(&id.0) else { continue };
        let client = mongodb::Client::with_uri_str(&address)
            .await
            .map_err(|e| setup(&format!("connecting to `{id}`"))(e.to_string()))?;
        let name = resource.database.clone().unwrap_or_else(|| "test".to_owned());
        databases.insert(id.0.clone(), client.database(&name));
    }
    let mut ids = Vec::new();
    for declared in &spec.dataset {
        let database = databases
            .get(&declared.resource.0)
            .ok_or_else(|| setup("seeding")(format!("no server for `{}`", declared.resource)))?;
        let collection = database.collection::<Document>(&declared.collection);
        let documents: Vec<Document> = dataset::documents(declared, seed).collect();
        for chunk in documents.chunks(1000) {
            collection.insert_many(chunk.to_vec()).await.map_err(|e| setup("seeding")(e.to_string()))?;
        }
        let owner_store = spec.app.stores.get(&spec.app.owner);
        if owner_store == Some(&declared.resource) && declared.collection == spec.app.collection_in(&declared.resource)
        {
            ids.extend((0..declared.documents).map(|n| dataset::id(declared, n)));
        }
    }
    timings.seed_seconds = started.elapsed().as_secs_f64();
    Ok(Seeded { databases, ids })
}

/// The derived plan compiled for the run.
fn compile(derived: &Plan, executors: &dyn Executors) -> Result<Graph, SimulateError> {
    Graph::compile(derived, executors)
        .map_err(|errors| SimulateError::Setup(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
}

/// The application model serving its load and consuming its events.
struct Application {
    model: Arc<app::Model>,
    /// The cache, for faults that flush it.
    cache: Option<redis::aio::MultiplexedConnection>,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    /// The telemetry publisher.
    publishing: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Starts the model over the sandbox's servers, hands the stand-in its measures, and
    /// publishes the declared telemetry (its first samples written before it returns).
    async fn start(
        spec: &Simulation,
        servers: &Servers<'_>,
        seeded: Seeded,
        standin: &standin::StandIn,
        clock: Arc<VirtualClock>,
    ) -> Result<Application, SimulateError> {
        let day = clock.real_time(Duration::from_secs(86_400)).unwrap_or(Duration::from_secs(1));
        let cache = match spec.app.cache.as_ref().and_then(|model| servers.url(&model.resource.0)) {
            Some(address) => {
                let client = redis::Client::open(address).map_err(|e| setup("the cache")(e.to_string()))?;
                Some(client.get_multiplexed_async_connection().await.map_err(|e| setup("the cache")(e.to_string()))?)
            }
            None => None,
        };
        let kafka = spec.app.events.as_ref().and_then(|e| servers.url(&e.broker.0));
        let connections = app::Connections { databases: seeded.databases, cache: cache.clone(), kafka: kafka.clone() };
        let model = Arc::new(
            app::Model::new(&spec.app, &spec.workload, connections, seeded.ids, standin.state.clone(), day)
                .map_err(SimulateError::Setup)?,
        );
        let stop = CancellationToken::new();
        let serving = tokio::spawn(model.clone().serve(stop.clone()));
        let consumers = kafka.as_deref().map(|k| model.consume(k, &stop)).unwrap_or_default();
        let mut measures: BTreeMap<String, _> = spec.measures.iter().map(|(k, v)| (k.0.clone(), v.clone())).collect();
        measures.insert(DRILL_METRIC.to_owned(), handoff_plan::simulation::Measure::Constant(1.0));
        standin.measure_with(model.measurer(measures, tokio::runtime::Handle::current()));
        let publishing = match (&spec.telemetry, &servers.prometheus) {
            (Some(telemetry), Some(prometheus)) => {
                let mut publisher = telemetry::Publisher::new(telemetry, model.clone(), clock, prometheus.writer());
                publisher.publish(true).await?;
                let shared = Arc::new(tokio::sync::Mutex::new(publisher));
                let handle = tokio::runtime::Handle::current();
                standin.forward_prometheus_with(telemetry::forwarder(
                    shared.clone(),
                    prometheus.url().to_owned(),
                    handle,
                ));
                Some(tokio::spawn(telemetry::run(shared, stop.clone())))
            }
            _ => None,
        };
        Ok(Application { model, cache, stop, serving, consumers, publishing })
    }

    /// Stops the load and the consumers; the model is left to audit.
    async fn stop(self) -> Arc<app::Model> {
        self.stop.cancel();
        let _ = self.serving.await;
        for task in self.consumers.into_iter().chain(self.publishing) {
            let _ = task.await;
        }
        self.model
    }
}

/// How the engine runs the derived plan: on a paced virtual clock, under the simulation's
/// policy, deciding for people automatically.
fn run_options(clock: Arc<VirtualClock>, scratch: PathBuf, derived: &derive::Derived) -> RunOptions {
    let mut run = RunOptions::new("simulation", clock);
    run.policy = Policy { allow_shell: false, simulation: true, base_dir: scratch };
    run.endpoints = Endpoints::new(derived.endpoints.clone());
    run.confirm_irreversible = true;
    run.auto_decide = Some("simulation".to_owned());
    run.command = "handoff simulate".to_owned();
    run
}

/// Runs the plan to its end, passing every notice to `progress` and each record to the
/// faults.
async fn drive(
    engine: &Engine<'_>,
    run: &RunOptions,
    cancel: &CancellationToken,
    faults: &mut Faults<'_>,
    progress: &mut (dyn FnMut(&Notice) + Send),
) -> Result<(String, handoff_engine::Outcome), handoff_engine::EngineError> {
    let mut notices = engine.subscribe();
    let work = engine.start(run, cancel);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            notice = notices.recv() => {
                let Ok(notice) = notice else { continue };
                if let Notice::Record(Record { event, .. }) = &notice {
                    faults.follow(event).await;
                }
                progress(&notice);
            }
        }
    };
    while let Ok(notice) = notices.try_recv() {
        progress(&notice);
    }
    result
}

/// Faults, applied when their phase starts and lifted when it passes or rolls back.
struct Faults<'a> {
    faults: &'a [Fault],
    servers: &'a Servers<'a>,
    model: &'a app::Model,
    cache: Option<&'a redis::aio::MultiplexedConnection>,
    /// What each application did, in words, for the report.
    applied: Vec<String>,
}

impl<'a> Faults<'a> {
    fn new(faults: &'a [Fault], servers: &'a Servers<'a>, application: &'a Application) -> Faults<'a> {
        Faults { faults, servers, model: &application.model, cache: application.cache.as_ref(), applied: Vec::new() }
    }

    /// Every fault can be applied here: a network fault's resource has a server behind a
    /// fault proxy (not so with `--provider external`), a flushed cache is connected. A
    /// fault that cannot be applied is an error, never a line of the report.
    fn check(&self) -> Result<(), SimulateError> {
        for fault in self.faults {
            let problem = match &fault.fault {
                FaultKind::Latency { resource, .. } | FaultKind::Outage { resource } => {
                    self.servers.server(&resource.0).and_then(|s| s.proxy().map(|_| ())).err().map(|e| e.to_string())
                }
                FaultKind::CacheFlush { resource } if self.cache.is_none() => {
                    Some(format!("the application has no connection to the cache `{resource}`"))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                let kind = serde_json::to_value(&fault.fault).ok().and_then(|v| v.as_object()?.keys().next().cloned());
                let kind = kind.unwrap_or_default();
                return Err(SimulateError::Fault(format!(
                    "`{kind}` in phase `{}` cannot be applied: {problem}",
                    fault.phase
                )));
            }
        }
        Ok(())
    }

    /// Applies or lifts the faults of the phase a record starts or ends.
    async fn follow(&mut self, event: &Event) {
        let (phase, on) = match event {
            Event::PhaseStarted { phase } => (phase, true),
            Event::PhasePassed { phase } | Event::RollbackStarted { phase, .. } => (phase, false),
            _ => return,
        };
        for fault in self.faults.iter().filter(|f| f.phase.0 == *phase) {
            let done = self.inject(&fault.fault, on).await;
            if on {
                self.applied.push(done);
            }
        }
    }

    /// Applies (or lifts) a fault; returns what it did, for the report.
    async fn inject(&self, fault: &FaultKind, on: bool) -> String {
        self.model_fault(fault, on);
        match fault {
            FaultKind::WriteErrors { resource, percent } => format!("{percent}% of writes to `{resource}` fail"),
            FaultKind::Latency { resource, added } => {
                if let Ok(proxy) = self.servers.server(&resource.0).and_then(|s| s.proxy()) {
                    proxy.set_latency(if on { added.get() } else { Duration::ZERO });
                }
                format!("`{resource}` answers {added} later")
            }
            FaultKind::ServiceLatency { service, added } => format!("`{service}` answers {added} later"),
            FaultKind::Outage { resource } => {
                self.outage(&resource.0, on);
                format!("`{resource}` is down")
            }
            FaultKind::CacheFlush { resource } => {
                if let (true, Some(connection)) = (on, self.cache) {
                    let mut connection = connection.clone();
                    let _: Result<(), _> = redis::cmd("FLUSHALL").query_async(&mut connection).await;
                }
                format!("`{resource}` flushed")
            }
        }
    }

    /// The part of a fault the application model applies itself.
    fn model_fault(&self, fault: &FaultKind, on: bool) {
        let mut faults = self.model.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match fault {
            FaultKind::WriteErrors { resource, percent } if on => {
                faults.write_errors.insert(resource.0.clone(), *percent);
            }
            FaultKind::WriteErrors { resource, .. } => {
                faults.write_errors.remove(&resource.0);
            }
            FaultKind::Outage { resource } if on => faults.down.push(resource.0.clone()),
            FaultKind::Outage { resource } => faults.down.retain(|d| *d != resource.0),
            FaultKind::ServiceLatency { service, added } if on => {
                faults.slow.insert(service.0.clone(), added.get());
            }
            FaultKind::ServiceLatency { service, .. } => {
                faults.slow.remove(&service.0);
            }
            FaultKind::Latency { .. } | FaultKind::CacheFlush { .. } => {}
        }
    }

    /// Takes resource `id`'s server out (or back): health checks report its kind of
    /// dependency down, and its proxy refuses connections.
    fn outage(&self, id: &str, on: bool) {
        let Ok(service) = self.servers.server(id) else { return };
        let kind = service.endpoint().kind.as_str().to_owned();
        {
            let mut state = self.model.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if on {
                state.dependencies_down.push(kind);
            } else if let Some(i) = state.dependencies_down.iter().position(|d| *d == kind) {
                state.dependencies_down.remove(i);
            }
        }
        // Through the fault proxy, not by stopping the server: librdkafka 2.12 can crash (a
        // metadata-cache use after a broker restart, as in confluentinc/librdkafka#5280), and
        // clients see the same outage either way.
        if let Ok(proxy) = service.proxy() {
            proxy.set_refuse(on);
            if on {
                proxy.cut_connections();
            }
        }
    }
}
