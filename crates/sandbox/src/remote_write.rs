//! Prometheus remote write (protocol 1.0): a `WriteRequest` protobuf, snappy-compressed
//! (block format), POSTed to `/api/v1/write`. The messages are declared here with prost's
//! derive (no protoc, no generated code): only the fields remote write 1.0 needs.

use std::time::Duration;

use crate::SandboxError;

/// How long one write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

/// One series to write: its name, its labels and its samples in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The metric name (`__name__`).
    pub name: String,
    /// Label name → value.
    pub labels: Vec<(String, String)>,
    /// (Unix time in milliseconds, value), oldest first.
    pub samples: Vec<(i64, f64)>,
}

/// Writes series into one Prometheus through its remote-write receiver.
#[derive(Debug, Clone)]
pub struct RemoteWriter {
    url: String,
}

/// The request body: the protobuf, snappy-compressed. Labels are sorted by name, as the
/// protocol requires.
fn encode(series: &[Series]) -> Result<Vec<u8>, snap::Error> {
    let timeseries = series
        .iter()
        .map(|s| {
            let mut labels: Vec<Label> = std::iter::once(("__name__", s.name.as_str()))
                .chain(s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map(|(name, value)| Label { name: name.to_owned(), value: value.to_owned() })
                .collect();
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let samples = s.samples.iter().map(|&(timestamp, value)| Sample { value, timestamp }).collect();
            TimeSeries { labels, samples }
        })
        .collect();
    snap::raw::Encoder::new().compress_vec(&prost::Message::encode_to_vec(&WriteRequest { timeseries }))
}

fn write_failed(reason: String) -> SandboxError {
    SandboxError::Provision {
        engine: "prometheus",
        reason: format!("remote write failed: {reason}"),
        fix: "see prometheus.log in the sandbox directory".to_owned(),
    }
}

impl RemoteWriter {
    /// A writer to the Prometheus at `base` (`http://127.0.0.1:<port>`).
    pub fn new(base: &str) -> RemoteWriter {
        RemoteWriter { url: format!("{}/api/v1/write", base.trim_end_matches('/')) }
    }

    /// Writes `series` (nothing when empty).
    pub async fn write(&self, series: &[Series]) -> Result<(), SandboxError> {
        if series.iter().all(|s| s.samples.is_empty()) {
            return Ok(());
        }
        let body = encode(series).map_err(|e| write_failed(e.to_string()))?;
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || post(&url, body)).await.map_err(|e| write_failed(e.to_string()))?
    }
}

/// POSTs one write request; Prometheus answers 204 when it took every sample.
fn post(url: &str, body: Vec<u8>) -> Result<(), SandboxError> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(WRITE_TIMEOUT)).http_status_as_error(false).build().into();
    let mut response = agent
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send(&body[..])
        .map_err(|e| write_failed(e.to_string()))?;
    if response.status().is_success() {
        return Ok(());
    }
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Err(write_failed(format!("{} answered {}: {}", url, response.status(), text.trim())))
}
