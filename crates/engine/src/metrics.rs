//! Metric providers: where criteria and alerts get their values.
//!
//! - emitted by the plan's own steps (the latest value any step emitted wins),
//! - the Prometheus HTTP API (instant queries at the run clock's time while sampling —
//!   plan time in a simulation —, range queries over a criterion's window when the clock
//!   is real),
//! - a number in an HTTP JSON document (a JSON pointer),
//!
//! and person-confirmed checks, which the runner asks through decisions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_executor::http::Request;
use handoff_executor::{BoxFuture, Clock};
use handoff_plan::model::{Metric, MetricSource, Plan};
use jiff::Timestamp;
use serde_json::Value;

/// Timeout of one provider query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a provider could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("metric `{metric}`: {message}")]
pub struct MetricError {
    /// Metric name.
    pub metric: String,
    /// What went wrong.
    pub message: String,
}

/// A source of metric values.
pub trait MetricProvider: Send + Sync {
    /// The value now; `None` when there is no data.
    fn sample<'a>(&'a self, name: &'a str, metric: &'a Metric) -> BoxFuture<'a, Result<Option<f64>, MetricError>>;

    /// Values over `[start, end]` every `step`, when the provider keeps history.
    fn range<'a>(
        &'a self,
        name: &'a str,
        metric: &'a Metric,
        window: (Timestamp, Timestamp),
        step: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<f64>>, MetricError>> {
        let _ = (name, metric, window, step);
        Box::pin(async { Ok(None) })
    }
}

/// Values the plan's steps emitted: the latest per metric name, and per step and name.
#[derive(Debug, Clone, Default)]
pub struct Emitted(Arc<Mutex<EmittedValues>>);

/// What [`Emitted`] holds.
#[derive(Debug, Clone, Default)]
pub struct EmittedValues {
    /// The latest value of each name, whichever step emitted it.
    pub latest: BTreeMap<String, f64>,
    /// The latest value of each name by the step that emitted it (step id, name).
    pub by_step: BTreeMap<(String, String), f64>,
}

impl Emitted {
    /// Starts from values replayed from a log.
    pub fn with(values: EmittedValues) -> Emitted {
        Emitted(Arc::new(Mutex::new(values)))
    }

    fn values(&self) -> std::sync::MutexGuard<'_, EmittedValues> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a value `step` emitted.
    pub fn record(&self, step: &str, name: &str, value: f64) {
        let mut values = self.values();
        values.latest.insert(name.to_owned(), value);
        values.by_step.insert((step.to_owned(), name.to_owned()), value);
    }

    /// The latest value, from any step.
    pub fn latest(&self, name: &str) -> Option<f64> {
        self.values().latest.get(name).copied()
    }

    /// The latest value `step` emitted.
    pub fn latest_from(&self, step: &str, name: &str) -> Option<f64> {
        self.values().by_step.get(&(step.to_owned(), name.to_owned())).copied()
    }
}

/// Routes each metric to its provider.
pub struct Metrics {
    emitted: Emitted,
    /// Prometheus base URL per resource id.
    prometheus: BTreeMap<String, String>,
    /// The run's clock: instant queries are evaluated at its time (plan time, in a
    /// simulation).
    clock: Arc<dyn Clock>,
}

impl Metrics {
    /// Providers for a plan, with the environment's endpoints (Prometheus resources are
    /// reached through their `endpoint`) and the run's clock.
    pub fn new(
        plan: &Plan,
        endpoints: &handoff_executor::Endpoints,
        emitted: Emitted,
        clock: Arc<dyn Clock>,
    ) -> Metrics {
        let prometheus = plan
            .resources
            .iter()
            .filter_map(|(id, r)| {
                let endpoint = r.endpoint.as_ref()?;
                Some((id.to_string(), endpoints.get(endpoint.as_str())?.trim_end_matches('/').to_owned()))
            })
            .collect();
        Metrics { emitted, prometheus, clock }
    }

    /// The emitted-values store.
    pub fn emitted(&self) -> &Emitted {
        &self.emitted
    }
}

fn error(name: &str, message: impl Into<String>) -> MetricError {
    MetricError { metric: name.to_owned(), message: message.into() }
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The number in a Prometheus sample `[<time>, "<value>"]`. `NaN` (a ratio over no events,
/// `0/0`) is no data, never a value that passes or fails a threshold.
fn prometheus_value(sample: &Value) -> Option<f64> {
    sample.get(1)?.as_str()?.parse().ok().filter(|v: &f64| !v.is_nan())
}

impl Metrics {
    async fn prometheus(&self, name: &str, resource: &str, path_and_query: String) -> Result<Value, MetricError> {
        let base = self.prometheus.get(resource).ok_or_else(|| {
            error(name, format!("Prometheus resource `{resource}` has no endpoint in this environment"))
        })?;
        let response = Request::get(&format!("{base}{path_and_query}"), QUERY_TIMEOUT)
            .send()
            .await
            .map_err(|e| error(name, e.to_string()))?;
        let body = response.json.ok_or_else(|| error(name, format!("answer is not JSON: {}", response.excerpt)))?;
        if body.get("status").and_then(Value::as_str) != Some("success") {
            let message = body.get("error").and_then(Value::as_str).unwrap_or(&response.excerpt);
            return Err(error(name, format!("Prometheus answered {}: {message}", response.status)));
        }
        Ok(body.pointer("/data/result").cloned().unwrap_or(Value::Null))
    }
}

impl MetricProvider for Metrics {
    fn sample<'a>(&'a self, name: &'a str, metric: &'a Metric) -> BoxFuture<'a, Result<Option<f64>, MetricError>> {
        Box::pin(async move {
            match &metric.source {
                MetricSource::Emitted { name: emitted_as, .. } => {
                    Ok(self.emitted.latest(emitted_as.as_deref().unwrap_or(name)))
                }
                MetricSource::Prometheus { resource, query } => {
                    let time = self.clock.now().as_millisecond() as f64 / 1000.0;
                    let path = format!("/api/v1/query?query={}&time={time:.3}", encode(query));
                    let result = self.prometheus(name, resource.as_str(), path).await?;
                    let series = result.as_array().map(Vec::as_slice).unwrap_or_default();
                    match series {
                        [] => Ok(None),
                        [one] => match one.get("value") {
                            Some(sample) if sample.get(1).and_then(Value::as_str) == Some("NaN") => Ok(None),
                            sample => sample
                                .and_then(prometheus_value)
                                .map(Some)
                                .ok_or_else(|| error(name, "the series has no numeric value")),
                        },
                        _ => {
                            Err(error(name, format!("the query returned {} series; it must return one", series.len())))
                        }
                    }
                }
                MetricSource::HttpJson { url, pointer } => {
                    let response =
                        Request::get(url, QUERY_TIMEOUT).send().await.map_err(|e| error(name, e.to_string()))?;
                    if !(200..300).contains(&response.status) {
                        return Err(error(name, format!("{url} answered {}: {}", response.status, response.excerpt)));
                    }
                    match response.json.as_ref().and_then(|j| j.pointer(pointer)) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::Number(n)) => Ok(n.as_f64()),
                        Some(Value::String(s)) => s
                            .parse()
                            .map(Some)
                            .map_err(|_| error(name, format!("`{pointer}` is \"{s}\", not a number"))),
                        Some(other) => Err(error(name, format!("`{pointer}` is {other}, not a number"))),
                    }
                }
            }
        })
    }

    fn range<'a>(
        &'a self,
        name: &'a str,
        metric: &'a Metric,
        (start, end): (Timestamp, Timestamp),
        step: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<f64>>, MetricError>> {
        Box::pin(async move {
            let MetricSource::Prometheus { resource, query } = &metric.source else { return Ok(None) };
            // Prometheus answers at most 11,000 points per series: a long window (two weeks
            // at one-minute steps) is read in consecutive chunks.
            let step = step.as_secs().max(1);
            let chunk = i64::try_from(step).unwrap_or(i64::MAX).saturating_mul(MAX_POINTS - 1);
            let (mut from, end) = (start.as_second(), end.as_second());
            let mut values = Vec::new();
            while from <= end {
                let to = from.saturating_add(chunk).min(end);
                let path = format!("/api/v1/query_range?query={}&start={from}&end={to}&step={step}", encode(query));
                values.extend(self.range_values(name, resource.as_str(), path).await?);
                from = to.saturating_add(i64::try_from(step).unwrap_or(i64::MAX));
            }
            Ok(Some(values))
        })
    }
}

/// The most points a range query asks Prometheus for (its limit is 11,000 per series).
const MAX_POINTS: i64 = 10_000;

impl Metrics {
    /// The latest value of the emitted `metric` (named `name` in the plan) that `step`
    /// emitted; `None` when the metric is not emitted or the step has not emitted it.
    pub fn emitted_by(&self, step: &str, name: &str, metric: &Metric) -> Option<f64> {
        let MetricSource::Emitted { name: emitted_as, .. } = &metric.source else { return None };
        self.emitted.latest_from(step, emitted_as.as_deref().unwrap_or(name))
    }

    /// The values of one range query (`path`): none when it selects nothing.
    async fn range_values(&self, name: &str, resource: &str, path: String) -> Result<Vec<f64>, MetricError> {
        let result = self.prometheus(name, resource, path).await?;
        let series = result.as_array().map(Vec::as_slice).unwrap_or_default();
        match series {
            [] => Ok(Vec::new()),
            [one] => Ok(one
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(prometheus_value)
                .collect()),
            _ => Err(error(name, format!("the query returned {} series; it must return one", series.len()))),
        }
    }
}
