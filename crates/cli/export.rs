//! What a live run exports to Prometheus (`handoff run --metrics-listen ADDR`,
//! `--pushgateway URL`): every metric a step emits, as `handoff_<metric>{plan, environment,
//! phase, step}` (named by the plan's metric when one maps to it), every metric handoff
//! reads from an HTTP endpoint (`http_json`), polled while a phase is active and exported
//! under it with an empty step, and
//! `handoff_phase_active{plan, environment, phase}` (1 for the phase in progress, else 0) —
//! the series `handoff render`'s alert rules read. The exposition format is
//! prometheus-client's.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use handoff_engine::events::{Event, Notice};
use handoff_engine::metrics::{Emitted, MetricProvider as _, Metrics};
use handoff_executor::Endpoints;
use handoff_plan::model::{Metric, MetricSource, Plan};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The exporting flags of `handoff run` and `handoff resume`.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct ExportArgs {
    /// Serve the run's metrics and active phase at `http://ADDR/metrics` while it is live
    /// (for Prometheus to scrape a long-running process).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Push the run's metrics and active phase to this Pushgateway as they change (for runs
    /// started from CI), under `job=handoff`, `plan` and `environment`.
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    plan: String,
    environment: String,
    phase: String,
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    plan: String,
    environment: String,
    phase: String,
}

type Values = Family<StepLabels, Gauge<f64, AtomicU64>>;

/// The exported series, encoded on demand.
struct Series {
    registry: Registry,
    phases: Family<PhaseLabels, Gauge>,
    values: BTreeMap<String, Values>,
}

/// A live run's exporter: the series, the `/metrics` server, the Pushgateway pusher and
/// the poller of the metrics handoff reads from HTTP endpoints.
pub(crate) struct Exporter {
    shared: Arc<Shared>,
    phase_ids: Vec<String>,
    push: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// Tells the poller the active phase (`None`: none); dropped, it stops.
    poll: Option<mpsc::Sender<Option<String>>>,
}

/// What the exporter's threads share.
struct Shared {
    plan: String,
    environment: String,
    /// Plan metric names by (step id, emitted name).
    names: BTreeMap<(String, String), Vec<String>>,
    series: Arc<Mutex<Series>>,
}

/// How often the poller reads the metrics handoff measures from HTTP endpoints while a
/// phase is active (Prometheus' default scrape interval), and at once when one starts.
const POLL_EVERY: Duration = Duration::from_secs(15);

impl Exporter {
    /// An exporter for `plan` in `environment`, when a flag asks for one; the `/metrics`
    /// listener is bound here, so a taken address fails before the run starts.
    pub(crate) fn start(plan: &Plan, environment: &str, args: &ExportArgs) -> anyhow::Result<Option<Exporter>> {
        if args.metrics_listen.is_none() && args.pushgateway.is_none() {
            return Ok(None);
        }
        let mut registry = Registry::with_prefix("handoff");
        let phases = Family::<PhaseLabels, Gauge>::default();
        registry.register("phase_active", "1 while the phase is in progress, else 0", phases.clone());
        let series = Arc::new(Mutex::new(Series { registry, phases, values: BTreeMap::new() }));
        if let Some(addr) = args.metrics_listen {
            serve(addr, series.clone())?;
        }
        let push = args.pushgateway.as_ref().map(|url| pusher(url, plan, environment, series.clone()));
        let shared = Arc::new(Shared {
            plan: plan.metadata.name.0.clone(),
            environment: environment.to_owned(),
            names: metric_names(plan),
            series,
        });
        let changed = push.as_ref().map(|(changed, _)| changed.clone());
        let poll = poller(plan, shared.clone(), changed);
        let exporter = Exporter { shared, phase_ids: plan.phases.iter().map(|p| p.id.0.clone()).collect(), push, poll };
        exporter.set_active(None);
        Ok(Some(exporter))
    }

    /// Takes in one of the engine's notices.
    pub(crate) fn notice(&self, notice: &Notice) {
        let Notice::Record(record) = notice else { return };
        match &record.event {
            Event::PhaseStarted { phase } => self.set_active(Some(phase)),
            Event::PhasePassed { .. } | Event::RunFinished { .. } => self.set_active(None),
            Event::Metric { phase, step, name, value } => self.shared.record(phase, step, name, *value),
            _ => return,
        }
        if let Some((changed, _)) = &self.push {
            // The pusher coalesces: it pushes the latest state after each change.
            let _ = changed.send(());
        }
    }

    /// Stops the poller, pushes the final state and waits for the pusher (at most a
    /// request's timeout).
    pub(crate) fn finish(mut self) {
        drop(self.poll.take());
        if let Some((changed, pusher)) = self.push {
            drop(changed);
            let _ = pusher.join();
        }
    }

    fn set_active(&self, active: Option<&str>) {
        let shared = &self.shared;
        let series = shared.series.lock().unwrap_or_else(|e| e.into_inner());
        for phase in &self.phase_ids {
            let labels = PhaseLabels {
                plan: shared.plan.clone(),
                environment: shared.environment.clone(),
                phase: phase.clone(),
            };
            series.phases.get_or_create(&labels).set(i64::from(Some(phase.as_str()) == active));
        }
        if let Some(poll) = &self.poll {
            let _ = poll.send(active.map(str::to_owned));
        }
    }
}

impl Shared {
    fn record(&self, phase: &str, step: &str, name: &str, value: f64) {
        let fallback = [name.to_owned()];
        let names = self.names.get(&(step.to_owned(), name.to_owned())).map_or(&fallback[..], |n| &n[..]);
        let labels = StepLabels {
            plan: self.plan.clone(),
            environment: self.environment.clone(),
            phase: phase.to_owned(),
            step: step.to_owned(),
        };
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for metric in names {
            let exported = handoff_render::exported_name(metric);
            let family = match series.values.get(&exported) {
                Some(family) => family.clone(),
                None => {
                    let family = Values::default();
                    let help = format!("`{metric}` as measured by the run");
                    series.registry.register(exported.trim_start_matches("handoff_"), help, family.clone());
                    series.values.insert(exported, family.clone());
                    family
                }
            };
            family.get_or_create(&labels).set(value);
        }
    }
}

/// A thread that reads the plan's HTTP JSON metrics (with the engine's provider) while a
/// phase is active — when it starts, then every [`POLL_EVERY`] — and exports them under
/// that phase (no step label), so that the rendered rules on them can fire. `None` when
/// the plan has none.
fn poller(plan: &Plan, shared: Arc<Shared>, changed: Option<mpsc::Sender<()>>) -> Option<mpsc::Sender<Option<String>>> {
    let polled: Vec<(String, Metric)> = plan
        .metrics
        .iter()
        .filter(|(_, m)| matches!(m.source, MetricSource::HttpJson { .. }))
        .map(|(id, m)| (id.0.clone(), m.clone()))
        .collect();
    if polled.is_empty() {
        return None;
    }
    let provider =
        Metrics::new(plan, &Endpoints::default(), Emitted::default(), Arc::new(handoff_executor::SystemClock));
    let (tell, receive) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let mut active = None;
        loop {
            match receive.recv_timeout(POLL_EVERY) {
                Ok(phase) => active = phase,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let Some(phase) = &active else { continue };
            for (id, metric) in &polled {
                match runtime.block_on(provider.sample(id, metric)) {
                    Ok(Some(value)) => shared.record(phase, "", id, value),
                    Ok(None) => {}
                    Err(error) => tracing::debug!("cannot export `{id}`: {}", error.message),
                }
            }
            if let Some(changed) = &changed {
                let _ = changed.send(());
            }
        }
    });
    Some(tell)
}

/// The plan's emitted metrics by (step id, name the step emits).
fn metric_names(plan: &Plan) -> BTreeMap<(String, String), Vec<String>> {
    let mut names: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (id, metric) in &plan.metrics {
        let MetricSource::Emitted { by, name } = &metric.source else { continue };
        for (_, step) in plan.all_steps().filter(|(_, s)| s.uses == *by) {
            let emitted = name.clone().unwrap_or_else(|| id.0.clone());
            names.entry((step.id.0.clone(), emitted)).or_default().push(id.0.clone());
        }
    }
    names
}

fn encode(series: &Mutex<Series>) -> String {
    let series = series.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &series.registry);
    text
}

/// Serves `GET /metrics` on `addr` from a thread that lives as long as the process.
fn serve(addr: std::net::SocketAddr, series: Arc<Mutex<Series>>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    let content_type =
        tiny_http::Header::from_bytes("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .map_err(|()| anyhow::anyhow!("bad header"))?;
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let response = if request.url() == "/metrics" {
                tiny_http::Response::from_string(encode(&series)).with_header(content_type.clone())
            } else {
                tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
            };
            let _ = request.respond(response);
        }
    });
    Ok(())
}

/// A thread that pushes the latest state to the Pushgateway after each change (changes
/// that arrive during a push are coalesced into the next), and once more at the end.
fn pusher(url: &str, plan: &Plan, environment: &str, series: Arc<Mutex<Series>>) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let target = format!(
        "{}/metrics/job/handoff/plan/{}/environment/{}",
        url.trim_end_matches('/'),
        plan.metadata.name,
        environment
    );
    // Never print credentials a URL may carry.
    let shown = url.split_once('@').map_or(url.to_owned(), |(_, host)| format!("…@{host}"));
    let (changed, receive) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build(),
        );
        let push = || {
            let result = agent.put(&target).content_type("text/plain; version=0.0.4").send(encode(&series).as_str());
            if let Err(error) = result {
                tracing::warn!("cannot push metrics to the Pushgateway {shown}: {error}");
            }
        };
        while receive.recv().is_ok() {
            while receive.try_recv().is_ok() {}
            push();
        }
        push();
    });
    (changed, thread)
}
