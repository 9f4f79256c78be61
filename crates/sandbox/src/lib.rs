//! Throwaway real services for simulations and tests.
//!
//! A [`Sandbox`] starts one real server per service a plan needs — each MongoDB resource on
//! its own server, a Kafka-API broker, Redis — on free loopback ports, each in its own
//! directory, behind a [`FaultProxy`]. It provisions missing engines into a per-user cache
//! ([`engine`]), waits for each with ordered readiness conditions (process alive, then a
//! protocol probe with the real client; no fixed sleeps), and cleans up on drop, on
//! Ctrl-C/SIGTERM of its owner (the caller drops it) and even on SIGKILL (a lifeline pipe
//! stops every server whose owner is gone). Sandboxes of killed runs are reaped by the next
//! start; `keep` leaves a sandbox running for debugging.
//!
//! Architecture invariant: servers bind to 127.0.0.1 only, and every client path goes
//! through the service's fault proxy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

pub mod engine;
mod probe;
mod process;
mod prometheus;
mod proxy;
mod remote_write;

pub use engine::Engine;
pub use prometheus::Prometheus;
pub use proxy::FaultProxy;
pub use remote_write::{RemoteWriter, Series};

use process::{Launch, Process};

/// The kinds of services a sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// A MongoDB-API server.
    #[serde(rename = "mongodb")]
    Mongo,
    /// A Kafka-API broker.
    Kafka,
    /// A Redis server.
    Redis,
}

impl ServiceKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Mongo => "mongodb",
            ServiceKind::Kafka => "kafka",
            ServiceKind::Redis => "redis",
        }
    }
}

/// A service to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name, unique in the sandbox (a plan's resource id).
    pub name: String,
    /// What it is.
    pub kind: ServiceKind,
    /// Database name in the endpoint URL (MongoDB).
    pub database: Option<String>,
    /// Topics to create (Kafka).
    pub topics: Vec<String>,
}

impl ServiceSpec {
    /// A service with no database or topics.
    pub fn new(name: impl Into<String>, kind: ServiceKind) -> ServiceSpec {
        ServiceSpec { name: name.into(), kind, database: None, topics: Vec::new() }
    }

    /// The services a plan's resources need: one per MongoDB, Kafka and Redis resource, so
    /// that the old and the new owner's databases live on separate servers. A Kafka
    /// resource's topics are created (one partition each) except those a
    /// `kafka.ensure_topic` step of the plan creates on it: those are left to the step,
    /// with the partitions and configs it declares.
    pub fn for_plan(plan: &handoff_plan::model::Plan) -> Vec<ServiceSpec> {
        use handoff_plan::model::ResourceKind;
        plan.resources
            .iter()
            .filter_map(|(id, resource)| {
                let kind = match resource.kind {
                    ResourceKind::Mongodb => ServiceKind::Mongo,
                    ResourceKind::Kafka => ServiceKind::Kafka,
                    ResourceKind::Redis => ServiceKind::Redis,
                    ResourceKind::Service | ResourceKind::Mesh | ResourceKind::Prometheus => return None,
                };
                Some(ServiceSpec {
                    name: id.to_string(),
                    kind,
                    database: resource.database.clone(),
                    topics: resource.topics.iter().filter(|t| !ensured(plan, &id.0, t)).cloned().collect(),
                })
            })
            .collect()
    }
}

/// Whether a `kafka.ensure_topic` step of `plan` (forward or rollback) creates `topic` on
/// the Kafka resource `broker`.
fn ensured(plan: &handoff_plan::model::Plan, broker: &str, topic: &str) -> bool {
    let steps = plan.phases.iter().flat_map(|p| p.steps.iter().chain(p.rollback.iter().flat_map(|r| r.steps.iter())));
    let text =
        |step: &handoff_plan::model::Step, key: &str| step.with.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    steps
        .filter(|step| step.uses.executor == "kafka" && step.uses.action == "ensure_topic")
        .any(|step| text(step, "broker").as_deref() == Some(broker) && text(step, "topic").as_deref() == Some(topic))
}

/// Where services come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Real server processes on this machine, provisioned into the cache when missing.
    Local,
    /// Endpoints the user runs (name → URL); nothing is started, stopped or dropped.
    External(Vec<(String, String)>),
}

/// Options of a sandbox.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where services come from.
    pub provider: Provider,
    /// Leave the servers running when the sandbox is dropped (for debugging).
    pub keep: bool,
    /// How long each service may take to become ready.
    pub startup_timeout: Duration,
    /// Engine cache (default [`engine::cache_dir`]).
    pub cache: PathBuf,
    /// Where sandboxes keep their data and records (default `$HANDOFF_SANDBOX_DIR` or
    /// `<tmp>/handoff-sandboxes`).
    pub root: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            provider: Provider::Local,
            keep: false,
            startup_timeout: Duration::from_secs(60),
            cache: engine::cache_dir(),
            root: std::env::var_os("HANDOFF_SANDBOX_DIR")
                .map_or_else(|| std::env::temp_dir().join("handoff-sandboxes"), PathBuf::from),
        }
    }
}

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A missing engine could not be installed.
    #[error("cannot provision {engine}: {reason}\n  fix: {fix}")]
    Provision {
        /// The engine.
        engine: &'static str,
        /// What went wrong.
        reason: String,
        /// What the user can do.
        fix: String,
    },
    /// A server did not answer its readiness probe in time, or exited.
    #[error("{0}")]
    NotReady(Box<NotReady>),
    /// The service is not part of this sandbox.
    #[error("no service named `{0}` in this sandbox")]
    UnknownService(String),
    /// The operation needs a local service (external endpoints cannot be faulted).
    #[error("service `{0}` is external: handoff does not control its process")]
    External(String),
    /// An external endpoint is missing for a service.
    #[error("no external endpoint given for service `{0}`; pass one as NAME=URL")]
    MissingEndpoint(String),
    /// Filesystem or process error.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// Why a service is not ready, with the end of its log.
#[derive(Debug, thiserror::Error)]
#[error("{service} ({engine}) is not ready after {waited:.1?}: {reason}\n--- last lines of {log}:\n{tail}")]
pub struct NotReady {
    /// Service name.
    pub service: String,
    /// Engine name and version.
    pub engine: String,
    /// How long it was given.
    pub waited: Duration,
    /// The last probe error or the exit status.
    pub reason: String,
    /// The server's log file.
    pub log: String,
    /// Its last lines.
    pub tail: String,
}

/// How to reach a service.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Service name.
    pub name: String,
    /// What it is.
    pub kind: ServiceKind,
    /// Connection string for clients (through the fault proxy).
    pub url: String,
    /// The port clients connect to.
    pub port: u16,
    /// The port the server itself listens on (no fault proxy; 0 for external endpoints).
    pub server_port: u16,
    /// Engine and version serving it (`external` for external endpoints).
    pub engine: String,
}

/// A started service.
#[derive(Debug)]
pub struct Service {
    endpoint: Endpoint,
    local: Option<Local>,
}

#[derive(Debug)]
struct Local {
    engine: Engine,
    launch: Launch,
    dir: PathBuf,
    proxy: FaultProxy,
    process: Mutex<Option<Process>>,
}

impl Service {
    /// How to reach it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn local(&self) -> Result<&Local, SandboxError> {
        self.local.as_ref().ok_or_else(|| SandboxError::External(self.endpoint.name.clone()))
    }

    /// The fault proxy in front of the server (latency, cut connections, refuse).
    pub fn proxy(&self) -> Result<&FaultProxy, SandboxError> {
        Ok(&self.local()?.proxy)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s). Its data directory stays.
    pub async fn stop(&self) -> Result<(), SandboxError> {
        if let Some(process) = self.local()?.process.lock().await.take() {
            process.stop(Duration::from_secs(5)).await;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port and data, and waits until it is ready.
    pub async fn restart(&self, timeout: Duration) -> Result<(), SandboxError> {
        self.stop().await?;
        let local = self.local()?;
        let process = Process::spawn(&local.launch, &local.dir, &local.dir.join("server.log"))
            .map_err(io(format!("cannot start {}", self.endpoint.name)))?;
        let mut slot = local.process.lock().await;
        *slot = Some(process);
        wait_ready(&self.endpoint, &local.engine, slot.as_mut(), timeout).await
    }

    /// Freezes the server (SIGSTOP): its port stays open but nothing answers.
    pub async fn pause(&self) -> Result<(), SandboxError> {
        match self.local()?.process.lock().await.as_ref() {
            Some(process) => process.pause().map_err(io(format!("cannot pause {}", self.endpoint.name))),
            None => Ok(()),
        }
    }

    /// Thaws a paused server (SIGCONT).
    pub async fn resume(&self) -> Result<(), SandboxError> {
        match self.local()?.process.lock().await.as_ref() {
            Some(process) => process.resume().map_err(io(format!("cannot resume {}", self.endpoint.name))),
            None => Ok(()),
        }
    }

    async fn pgid(&self) -> Option<i32> {
        self.local.as_ref()?.process.lock().await.as_ref().map(Process::pgid)
    }
}

/// The record of a sandbox on disk, read by the reaper of a later run.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    owner_pid: u32,
    /// The owner's start time: a reused pid is not the owner.
    #[serde(default)]
    owner_started: Option<u64>,
    keep: bool,
    process_groups: Vec<i32>,
    /// Each group leader's start time: only a group whose leader is still the recorded
    /// process is killed.
    #[serde(default)]
    started: BTreeMap<i32, u64>,
}

/// Running services; dropped, it stops them and removes its directory (unless kept).
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    keep: bool,
    services: Vec<Service>,
}

impl Sandbox {
    /// Starts every service of `specs` in parallel and waits until each is ready.
    pub async fn start(specs: &[ServiceSpec], options: &Options) -> Result<Sandbox, SandboxError> {
        reap(&options.root);
        let id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        );
        let dir = options.root.join(id);
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let mut sandbox = Sandbox { dir, keep: options.keep, services: Vec::new() };
        sandbox.record(&[])?;
        let mut engines = std::collections::HashMap::new();
        for spec in specs {
            if let (Provider::Local, std::collections::hash_map::Entry::Vacant(slot)) =
                (&options.provider, engines.entry(spec.kind))
            {
                slot.insert(engine::ensure(spec.kind, &options.cache).await?);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (index, spec) in specs.iter().enumerate() {
            let (spec, provider, timeout, keep) =
                (spec.clone(), options.provider.clone(), options.startup_timeout, options.keep);
            let engine = engines.get(&spec.kind).cloned();
            let dir = sandbox.dir.join(&spec.name);
            let span = tracing::info_span!("sandbox_service", name = %spec.name, kind = spec.kind.as_str());
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let started = match (provider, engine) {
                        (Provider::External(endpoints), _) => external(&spec, &endpoints, timeout).await,
                        (Provider::Local, Some(engine)) => start_local(&spec, engine, dir, timeout, keep).await,
                        (Provider::Local, None) => Err(SandboxError::UnknownService(spec.name.clone())),
                    };
                    (index, started)
                },
                span,
            ));
        }
        let mut started: Vec<(usize, Service)> = Vec::new();
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, Ok(service))) => started.push((index, service)),
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(SandboxError::Io {
                        context: "a start-up task failed".to_owned(),
                        source: std::io::Error::other(e),
                    });
                }
            }
        }
        started.sort_by_key(|(index, _)| *index);
        sandbox.services = started.into_iter().map(|(_, service)| service).collect();
        let groups = sandbox.process_groups().await;
        sandbox.record(&groups)?;
        match first_error {
            Some(error) => Err(error),
            None => Ok(sandbox),
        }
    }

    /// Every endpoint, in the order the services were given.
    pub fn endpoints(&self) -> Vec<&Endpoint> {
        self.services.iter().map(Service::endpoint).collect()
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Result<&Service, SandboxError> {
        self.services
            .iter()
            .find(|s| s.endpoint.name == name)
            .ok_or_else(|| SandboxError::UnknownService(name.to_owned()))
    }

    /// The sandbox's directory (data and logs of every service).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops every service (in parallel) and removes the directory (unless kept), waiting
    /// for each server to exit cleanly.
    pub async fn shutdown(mut self) {
        if !self.keep {
            futures_util::future::join_all(self.services.iter().map(Service::stop)).await;
        }
        self.services.clear();
        self.cleanup();
    }

    async fn process_groups(&self) -> Vec<i32> {
        let mut groups = Vec::new();
        for service in &self.services {
            groups.extend(service.pgid().await);
        }
        groups
    }

    fn record(&self, process_groups: &[i32]) -> Result<(), SandboxError> {
        let owner = std::process::id();
        let record = Record {
            owner_pid: owner,
            owner_started: i32::try_from(owner).ok().and_then(process::start_time),
            keep: self.keep,
            process_groups: process_groups.to_vec(),
            started: process_groups.iter().filter_map(|g| Some((*g, process::start_time(*g)?))).collect(),
        };
        let text = serde_json::to_string(&record).unwrap_or_default();
        std::fs::write(self.dir.join("sandbox.json"), text).map_err(io("cannot write the sandbox record"))
    }

    fn cleanup(&mut self) {
        if self.keep {
            return;
        }
        // Dropping each service's process kills its group; then the files go.
        self.services.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.keep {
            // Kept servers run without a lifeline; detach them so their handles do not
            // kill them.
            for service in self.services.drain(..) {
                if let Some(process) = service.local.and_then(|local| local.process.into_inner()) {
                    process.detach();
                }
            }
            return;
        }
        self.cleanup();
    }
}

/// Removes sandboxes whose owner is gone (and which were not kept), killing their servers.
pub fn reap(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("sandbox.json")) else { continue };
        let Ok(record) = serde_json::from_str::<Record>(&text) else { continue };
        let owner = i32::try_from(record.owner_pid).unwrap_or(0);
        if record.keep || process::alive(owner, record.owner_started) {
            continue;
        }
        // Servers normally died with their owner (see `process`); this catches the rest.
        for group in record.process_groups {
            if let Some(started) = record.started.get(&group) {
                process::kill_group(group, *started);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn url(kind: ServiceKind, port: u16, database: Option<&str>) -> String {
    match kind {
        ServiceKind::Mongo => format!("mongodb://127.0.0.1:{port}/{}?directConnection=true", database.unwrap_or("")),
        ServiceKind::Kafka => format!("127.0.0.1:{port}"),
        ServiceKind::Redis => format!("redis://127.0.0.1:{port}/0"),
    }
}

async fn free_port() -> Result<u16, SandboxError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(io("cannot find a free port"))?;
    Ok(listener.local_addr().map_err(io("cannot find a free port"))?.port())
}

/// Ports tried for a server whose port was taken before it could bind it.
const PORT_ATTEMPTS: u32 = 3;

async fn start_local(
    spec: &ServiceSpec,
    engine: Engine,
    dir: PathBuf,
    timeout: Duration,
    keep: bool,
) -> Result<Service, SandboxError> {
    std::fs::create_dir_all(dir.join("data")).map_err(io(format!("cannot create {}", dir.display())))?;
    std::fs::write(dir.join("secantusd.toml"), "").map_err(io(format!("cannot write into {}", dir.display())))?;
    // A free port can be taken by someone else between finding it and the server binding
    // it (parallel sandboxes): a server that exits with "address in use" gets another.
    let mut attempt = 1;
    let (endpoint, proxy, launch, process) = loop {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(io("cannot open the fault proxy"))?;
        let server_port = free_port().await?;
        let proxy = FaultProxy::start(listener, server_port).map_err(io("cannot open the fault proxy"))?;
        let endpoint = Endpoint {
            name: spec.name.clone(),
            kind: spec.kind,
            url: url(spec.kind, proxy.port(), spec.database.as_deref()),
            port: proxy.port(),
            server_port,
            engine: format!("{} {}", engine.name, engine.version),
        };
        // A kept sandbox outlives this process and its proxies: clients then use server ports.
        let advertised = if keep { server_port } else { proxy.port() };
        let launch = Launch { keep, ..engine.launch(server_port, advertised, &dir) };
        let mut process = Process::spawn(&launch, &dir, &dir.join("server.log"))
            .map_err(io(format!("cannot start {} for {}", engine.name, spec.name)))?;
        match wait_ready(&endpoint, &engine, Some(&mut process), timeout).await {
            Ok(()) => break (endpoint, proxy, launch, process),
            Err(_) if attempt < PORT_ATTEMPTS && process.log_tail(20).to_lowercase().contains("in use") => {
                tracing::warn!(server_port, "port taken before the server bound it; trying another");
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    };
    let server_port = endpoint.server_port;
    tracing::info!(engine = %endpoint.engine, port = endpoint.port, server_port, "ready");
    if !spec.topics.is_empty() {
        probe::create_topics(&endpoint.url, &spec.topics).await.map_err(|reason| {
            SandboxError::NotReady(Box::new(NotReady {
                service: spec.name.clone(),
                engine: endpoint.engine.clone(),
                waited: timeout,
                reason: format!("cannot create topics: {reason}"),
                log: "server.log".to_owned(),
                tail: process.log_tail(20),
            }))
        })?;
    }
    Ok(Service { endpoint, local: Some(Local { engine, launch, dir, proxy, process: Mutex::new(Some(process)) }) })
}

async fn external(
    spec: &ServiceSpec,
    endpoints: &[(String, String)],
    timeout: Duration,
) -> Result<Service, SandboxError> {
    let (_, url) = endpoints
        .iter()
        .find(|(name, _)| name == &spec.name)
        .ok_or_else(|| SandboxError::MissingEndpoint(spec.name.clone()))?;
    let endpoint = Endpoint {
        name: spec.name.clone(),
        kind: spec.kind,
        url: url.clone(),
        port: 0,
        server_port: 0,
        engine: "external".to_owned(),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match probe::probe(spec.kind, url).await {
            Ok(()) => return Ok(Service { endpoint, local: None }),
            Err(reason) if Instant::now() >= deadline => {
                return Err(SandboxError::NotReady(Box::new(NotReady {
                    service: spec.name.clone(),
                    engine: "external".to_owned(),
                    waited: timeout,
                    reason,
                    log: "(external)".to_owned(),
                    tail: String::new(),
                })));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Ordered readiness: the process must stay alive, then the protocol probe must pass.
async fn wait_ready(
    endpoint: &Endpoint,
    engine: &Engine,
    mut process: Option<&mut Process>,
    timeout: Duration,
) -> Result<(), SandboxError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        let not_ready = |reason: String, process: Option<&mut Process>| {
            SandboxError::NotReady(Box::new(NotReady {
                service: endpoint.name.clone(),
                engine: endpoint.engine.clone(),
                waited: started.elapsed(),
                reason,
                log: process.as_ref().map_or_else(String::new, |_| "server.log".to_owned()),
                tail: process.map(|p| p.log_tail(20)).unwrap_or_default(),
            }))
        };
        if let Some(status) = process.as_mut().and_then(|p| p.exited()) {
            return Err(not_ready(format!("{} exited ({status})", engine.name), process));
        }
        match probe::probe(endpoint.kind, &endpoint.url).await {
            Ok(()) => return Ok(()),
            Err(reason) if started.elapsed() >= timeout => return Err(not_ready(reason, process)),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ServiceKind, ServiceSpec};

    /// Topics a plan's `kafka.ensure_topic` steps create (24 and 6 partitions) are left to
    /// them; the others are created up front.
    #[test]
    fn topics_the_plan_ensures_are_left_to_its_steps() {
        let bytes = include_bytes!("../../../plans/examples/kafka-topic-migration.yaml");
        let (_, document) = handoff_plan::source::load(bytes).unwrap();
        let plan: handoff_plan::model::Plan = serde_json::from_value(document.value).unwrap();
        let topics = |name: &str| {
            let specs = ServiceSpec::for_plan(&plan);
            let spec = specs.into_iter().find(|s| s.name == name).unwrap();
            assert_eq!(spec.kind, ServiceKind::Kafka);
            spec.topics
        };
        assert_eq!(topics("legacy_kafka"), ["orders"]);
        assert_eq!(topics("platform_kafka"), ["orders-migration.lifecycle"]);
    }
}
