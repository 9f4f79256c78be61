//! The application model's telemetry: the series `simulation.telemetry` declares (what
//! production's mesh, services and exporters publish), fed by what the model measures and
//! written with plan-time timestamps into the sandbox's Prometheus by remote write. The
//! plan's queries then run on them as written — nothing here is derived from a query.
//!
//! Time runs compressed and load does not: the model serves its requests per real second,
//! so a series grows per plan second at the rate the model's requests came in over the
//! measures' recent window (a counter by their count, a histogram's buckets by their
//! latencies), and a gauge holds the measure's value as it is. Samples lie on a fixed
//! plan-time grid, written up to the run clock's time every tick and right before every
//! query the engine makes (the stand-in's `/prometheus/…` flushes, then forwards), so a
//! query at plan time reads samples of that time, never a forecast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_executor::Clock;
use handoff_plan::simulation::{SeriesSpec, Telemetry};
use handoff_sandbox::{RemoteWriter, Series};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::Model;
use crate::standin::Forwarder;

/// Real time between two writes.
const TICK: Duration = Duration::from_millis(250);

/// How long a forwarded query, or a write, may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// Real time a gauge's measure is reused for (a document count scans a collection: the
/// sandbox's servers must not spend the load's time on it).
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// How long a gauge's measure may take before the gauge has no value this time.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(2);

/// Plan time between two samples of a series: half of Prometheus' 5-minute lookback (and of
/// the shortest range the menu plan's queries select over), so an instant selection finds
/// a sample and a `[5m]` range holds two.
pub const STEP: Duration = Duration::from_secs(150);

/// Prometheus' staleness marker (a NaN with this bit pattern).
const STALE: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// Plan time the series start before the run, so the first windows have samples.
const HISTORY: Duration = Duration::from_secs(3600);

/// One declared series and the running totals of what it published.
struct Fed {
    spec: SeriesSpec,
    /// The published series (a histogram's buckets, sum and count), in `published()` order.
    names: Vec<(String, Vec<(String, String)>)>,
    /// Counter values so far, one per published series (gauges keep none).
    totals: Vec<f64>,
    /// A gauge's last value, and when it was measured.
    gauge: Option<f64>,
    measured: Option<Instant>,
    /// Whether its last sample written is a value (not a staleness marker).
    present: bool,
}

/// Writes the declared series while the simulation runs.
pub struct Publisher {
    fed: Vec<Fed>,
    model: Arc<Model>,
    clock: Arc<dyn Clock>,
    writer: RemoteWriter,
    /// Plan time of the next sample.
    next: Timestamp,
    /// Unix milliseconds of the last grid time written.
    written: i64,
    started: Instant,
}

impl Publisher {
    /// A publisher of `telemetry`'s series, fed by `model`, at `clock`'s time.
    pub fn new(telemetry: &Telemetry, model: Arc<Model>, clock: Arc<dyn Clock>, writer: RemoteWriter) -> Publisher {
        let fed = telemetry
            .series()
            .into_iter()
            .map(|spec| {
                let names: Vec<_> =
                    spec.published().into_iter().map(|(name, labels)| (name, labels.into_iter().collect())).collect();
                Fed { totals: vec![0.0; names.len()], names, spec, gauge: None, measured: None, present: false }
            })
            .collect();
        let next = clock.now() - SignedDuration::try_from(HISTORY).unwrap_or(SignedDuration::ZERO);
        Publisher { fed, model, clock, writer, next, written: i64::MIN, started: Instant::now() }
    }

    /// Writes the samples up to the clock's time (the first call also the history before
    /// the run).
    pub async fn publish(&mut self, fresh: bool) -> Result<(), handoff_sandbox::SandboxError> {
        let until = self.clock.now();
        let mut times = Vec::new();
        while self.next <= until {
            times.push(self.next.as_millisecond());
            self.next += SignedDuration::try_from(STEP).unwrap_or(SignedDuration::ZERO);
        }
        if times.is_empty() && !fresh {
            return Ok(());
        }
        // A gauge found gone is marked stale right after the last grid time written — the
        // earliest it may have gone — not at a time of this write: the query this write
        // precedes runs at the time the engine read its clock, a little before `until`, and
        // a marker after that time would leave the gauge's last value in its lookback.
        let marker = self.written.saturating_add(1);
        self.written = times.last().copied().unwrap_or(self.written);
        let mut series = Vec::new();
        for index in 0..self.fed.len() {
            let increments = match &self.fed[index].spec {
                SeriesSpec::Gauge(_) => self.gauge(index, fresh).await.map(|v| vec![v]),
                _ => self.increments(index),
            };
            series.extend(samples(&mut self.fed[index], increments, &times, marker));
        }
        self.writer.write(&series).await
    }

    /// Gauge `index`'s value: measured when `fresh` (right before a query) or when its last
    /// measure is older than `GAUGE_EVERY`, else the last one.
    async fn gauge(&mut self, index: usize, fresh: bool) -> Option<f64> {
        let fed = &self.fed[index];
        let SeriesSpec::Gauge(gauge) = &fed.spec else { return None };
        if !fresh && fed.measured.is_some_and(|at| at.elapsed() < GAUGE_EVERY) {
            return fed.gauge;
        }
        let value = tokio::time::timeout(MEASURE_TIMEOUT, self.model.value(&gauge.measure)).await.ok().flatten();
        let fed = &mut self.fed[index];
        (fed.gauge, fed.measured) = (value, Some(Instant::now()));
        value
    }

    /// What each published series of counter or histogram `index` adds per step.
    fn increments(&self, index: usize) -> Option<Vec<f64>> {
        let step = STEP.as_secs_f64();
        match &self.fed[index].spec {
            SeriesSpec::Gauge(_) => None,
            SeriesSpec::Counter(counter) => Some(vec![counter.requests.as_ref().map_or(0.0, |requests| {
                let (micros, window) = self.model.recent(requests, self.started);
                micros.len() as f64 / window.as_secs_f64().max(TICK.as_secs_f64()) * step
            })]),
            SeriesSpec::Histogram(histogram) => {
                let (micros, window) = self.model.recent(&histogram.requests, self.started);
                let per_step = step / window.as_secs_f64().max(TICK.as_secs_f64());
                let observed: Vec<f64> = micros.iter().map(|m| histogram.unit.of_micros(*m)).collect();
                let mut out: Vec<f64> = histogram
                    .buckets
                    .iter()
                    .map(|bound| observed.iter().filter(|o| **o <= *bound).count() as f64 * per_step)
                    .collect();
                out.push(observed.len() as f64 * per_step);
                out.push(observed.iter().sum::<f64>() * per_step);
                out.push(observed.len() as f64 * per_step);
                Some(out)
            }
        }
    }
}

/// A publisher shared by its ticker and the stand-in's flush before each query.
pub type Shared = Arc<tokio::sync::Mutex<Publisher>>;

/// Writes what is due; a failed write is logged and the next one carries on (a query that
/// then finds no samples fails its criterion, visibly).
async fn flush(publisher: &Shared, fresh: bool) {
    match tokio::time::timeout(FORWARD_TIMEOUT, async { publisher.lock().await.publish(fresh).await }).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "telemetry write failed"),
        Err(_) => tracing::warn!("telemetry write timed out"),
    }
}

/// Publishes every `TICK` until `stop`.
pub async fn run(publisher: Shared, stop: CancellationToken) {
    loop {
        flush(&publisher, false).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The stand-in's `/prometheus/…`: writes what is due, then asks the Prometheus at `base`
/// (on the runtime of `handle`; the stand-in answers on its own threads).
pub fn forwarder(publisher: Shared, base: String, handle: tokio::runtime::Handle) -> Forwarder {
    Arc::new(move |path_and_query: &str| {
        handle.block_on(async {
            flush(&publisher, true).await;
            let url = format!("{base}{path_and_query}");
            match handoff_executor::http::Request::get(&url, FORWARD_TIMEOUT).send().await {
                Ok(response) => (response.status, response.json.unwrap_or(Value::String(response.excerpt))),
                Err(error) => (502, json!({"status": "error", "error": error.to_string()})),
            }
        })
    })
}

/// The samples of one declared series at `times`: a gauge's value at each, or counters
/// grown by `increments` per step.
fn samples(fed: &mut Fed, increments: Option<Vec<f64>>, times: &[i64], marker: i64) -> Vec<Series> {
    let gauge = matches!(fed.spec, SeriesSpec::Gauge(_));
    let was_present = fed.present;
    // Present once a sample of it is written: a gauge measured between grid times is not.
    if increments.is_none() || !times.is_empty() {
        fed.present = increments.is_some();
    }
    let Some(increments) = increments else {
        // Gone, as an exporter's series is: marked stale at once, as Prometheus marks a
        // series a scrape no longer returns, so no query sees its last value for 5 minutes.
        if !(gauge && was_present) {
            return Vec::new();
        }
        return fed
            .names
            .iter()
            .map(|(name, labels)| Series { name: name.clone(), labels: labels.clone(), samples: vec![(marker, STALE)] })
            .collect();
    };
    let mut out = Vec::with_capacity(fed.names.len());
    for (i, (name, labels)) in fed.names.iter().enumerate() {
        let add = increments.get(i).copied().unwrap_or(0.0);
        let mut values = Vec::with_capacity(times.len());
        for time in times {
            if gauge {
                values.push((*time, add));
            } else {
                fed.totals[i] += add;
                values.push((*time, fed.totals[i]));
            }
        }
        out.push(Series { name: name.clone(), labels: labels.clone(), samples: values });
    }
    out
}
