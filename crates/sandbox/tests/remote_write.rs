//! A receiving Prometheus takes series by remote write at plan-time timestamps — days
//! ahead of the wall clock, spanning more than a default head block — and answers queries
//! at those times.

use handoff_sandbox::{Prometheus, Series};
use jiff::{SignedDuration, Timestamp};

/// A counter that grows by 60 a minute, one sample a minute over `[from, from + minutes)`.
fn counter(from: Timestamp, start_value: f64, minutes: i64) -> Series {
    let samples = (0..minutes)
        .map(|m| ((from + SignedDuration::from_mins(m)).as_millisecond(), start_value + 60.0 * m as f64))
        .collect();
    Series { name: "requests_total".to_owned(), labels: vec![("service".to_owned(), "menu".to_owned())], samples }
}

/// The one value an instant query returns at `time`, or what it returned instead.
fn query(base: &str, query: &str, time: Timestamp) -> Result<f64, String> {
    let url = format!("{base}/api/v1/query");
    let mut response = ureq::get(&url)
        .query("query", query)
        .query("time", time.as_second().to_string())
        .call()
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = response.body_mut().read_json().map_err(|e| e.to_string())?;
    match body.pointer("/data/result/0/value/1").and_then(|v| v.as_str()) {
        Some(value) => value.parse().map_err(|_| body.to_string()),
        None => Err(body.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_time_series_are_written_and_queried_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::receiving(dir.path()).await.unwrap();
    let writer = prometheus.writer();
    let start = Timestamp::from_second(Timestamp::now().as_second() + 30 * 86_400).unwrap();
    // Two writes, three plan days in all, the second continuing the first.
    let day = 24 * 60;
    writer.write(&[counter(start, 0.0, day)]).await.unwrap();
    let second = start + SignedDuration::from_mins(day);
    writer.write(&[counter(second, 60.0 * day as f64, 2 * day)]).await.unwrap();
    // A gauge that goes away: its last sample a staleness marker, as Prometheus writes for a
    // series a scrape no longer returns.
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let minute = |m: i64| (start + SignedDuration::from_mins(m)).as_millisecond();
    let gone = Series {
        name: "collections".to_owned(),
        labels: Vec::new(),
        samples: vec![(minute(0), 1.0), (minute(1), 1.0), (minute(2), stale)],
    };
    writer.write(&[gone]).await.unwrap();
    let base = prometheus.url().to_owned();
    let at = move |hours: i64| start + SignedDuration::from_hours(hours);
    let answers = tokio::task::spawn_blocking(move || {
        [
            query(&base, "rate(requests_total[5m])", at(1)),
            query(&base, "rate(requests_total[5m])", at(60)),
            query(&base, "requests_total", at(48)),
            query(&base, "rate(requests_total{service=\"search\"}[5m])", at(60)),
            query(&base, "count(collections) or vector(0)", start + SignedDuration::from_secs(90)),
            query(&base, "count(collections) or vector(0)", start + SignedDuration::from_secs(150)),
        ]
    })
    .await
    .unwrap();
    prometheus.stop().await;
    assert_eq!(answers[0], Ok(1.0), "a rate in the first plan day");
    assert_eq!(answers[1], Ok(1.0), "a rate in the third plan day, after the second write");
    assert_eq!(answers[2], Ok(60.0 * 48.0 * 60.0), "the counter's value two plan days in");
    assert!(answers[3].is_err(), "a label no series has selects nothing: {:?}", answers[3]);
    assert_eq!(answers[4], Ok(1.0), "the gauge before its staleness marker");
    assert_eq!(answers[5], Ok(0.0), "the gauge is gone at once after its staleness marker");
}
