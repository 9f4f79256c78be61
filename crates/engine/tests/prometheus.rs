//! The Prometheus metric provider against a real Prometheus server (Debian's `prometheus`
//! package, started by the sandbox) whose TSDB is backfilled by `promtool` with series at
//! known times: instant and range queries (one longer than Prometheus answers at once), no
//! data, a stale series, NaN, several series, a bad query, an unreachable server, and
//! instant queries at the run clock's time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use handoff_engine::metrics::{Emitted, MetricProvider, Metrics};
use handoff_executor::{Clock, Endpoints, SystemClock, VirtualClock};
use handoff_plan::model::{Metric, Plan};
use handoff_sandbox::Prometheus;
use jiff::{SignedDuration, Timestamp};

/// Series at times relative to `now`: `errors_ratio` every 15 s over the last 10 minutes
/// (the value is the minute it belongs to, counted back: 10 … 1, then 0.5 in the last
/// minute), `old_gauge` only 30 to 20 minutes ago (stale now), and two `twin` series.
fn openmetrics(now: Timestamp) -> String {
    let at = |seconds_ago: i64| (now - SignedDuration::from_secs(seconds_ago)).as_second();
    let mut text = String::from("# TYPE errors_ratio gauge\n");
    for seconds_ago in (15..=600).rev().step_by(15) {
        let minute = (seconds_ago + 59) / 60;
        let value = if minute == 1 { 0.5 } else { minute as f64 };
        text.push_str(&format!("errors_ratio{{service=\"menu\"}} {value} {}\n", at(seconds_ago)));
    }
    text.push_str("# TYPE old_gauge gauge\n");
    for seconds_ago in (1200..=1800).rev().step_by(60) {
        text.push_str(&format!("old_gauge 7 {}\n", at(seconds_ago)));
    }
    text.push_str("# TYPE twin gauge\n");
    for k in ["a", "b"] {
        for seconds_ago in (30..=120).rev().step_by(30) {
            text.push_str(&format!("twin{{k=\"{k}\"}} 1 {}\n", at(seconds_ago)));
        }
    }
    text.push_str("# EOF\n");
    text
}

/// A plan whose Prometheus resource is reached at `url`, read on the wall clock.
fn metrics(url: &str) -> Metrics {
    metrics_on(url, Arc::new(SystemClock))
}

/// A plan whose Prometheus resource is reached at `url`, read on `clock`.
fn metrics_on(url: &str, clock: Arc<dyn Clock>) -> Metrics {
    let plan: Plan = serde_saphyr::from_str(
        "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: p}\n\
         environments: {test: {endpoints: {prom: x}}}\n\
         resources: {prom: {kind: prometheus, endpoint: prom}}\nphases: []\n",
    )
    .expect("the plan parses");
    let endpoints = Endpoints::new(BTreeMap::from([("prom".to_owned(), url.to_owned())]));
    Metrics::new(&plan, &endpoints, Emitted::default(), clock)
}

fn metric(query: &str) -> Metric {
    let yaml = format!("{{unit: count, source: {{prometheus: {{resource: prom, query: '{query}'}}}}}}");
    serde_saphyr::from_str(&yaml).expect("the metric parses")
}

/// What an instant query answers now, in words.
async fn instant(metrics: &Metrics, query: &str) -> String {
    match metrics.sample("m", &metric(query)).await {
        Ok(Some(value)) => format!("value {value}"),
        Ok(None) => "no data".to_owned(),
        Err(error) => format!("error: {}", error.message),
    }
}

/// What a range query over `[now - from, now - to]` every minute answers, in words.
async fn range(metrics: &Metrics, query: &str, now: Timestamp, minutes_ago: (i64, i64)) -> String {
    let window = (now - SignedDuration::from_mins(minutes_ago.0), now - SignedDuration::from_mins(minutes_ago.1));
    match metrics.range("m", &metric(query), window, Duration::from_secs(60)).await {
        Ok(Some(values)) => format!("values {values:?}"),
        Ok(None) => "no history".to_owned(),
        Err(error) => format!("error: {}", error.message),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_reads_a_real_prometheus() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let now = Timestamp::now();
    let server = Prometheus::start(dir.path(), Some(&openmetrics(now))).await.expect("prometheus starts");
    let metrics = metrics(server.url());
    let checks = [
        (r#"errors_ratio{service="menu"}"#, "value 0.5"),
        (r#"max_over_time(errors_ratio{service="menu"}[10m])"#, "value 10"),
        (r#"errors_ratio{service="orders"}"#, "no data"),
        ("old_gauge", "no data"),
        (r#"0 * errors_ratio{service="menu"} / 0"#, "no data"),
        ("twin", "error: the query returned 2 series; it must return one"),
    ];
    for (query, expect) in checks {
        assert_eq!(instant(&metrics, query).await, expect, "instant query `{query}`");
    }
    let bad = instant(&metrics, "rate(errors_ratio[").await;
    assert!(bad.starts_with("error: Prometheus answered 400: ") && bad.contains("parse error"), "{bad}");
    assert_eq!(range(&metrics, r#"errors_ratio{service="menu"}"#, now, (5, 2)).await, "values [5.0, 4.0, 3.0, 2.0]");
    assert_eq!(
        range(&metrics, "old_gauge", now, (30, 20)).await,
        "values [7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0]"
    );
    assert_eq!(range(&metrics, "old_gauge", now, (5, 1)).await, "values []");
    // Four hours at one-second steps: 14,401 points, over Prometheus' 11,000 per query.
    let long = (now - SignedDuration::from_hours(4), now);
    let values = metrics.range("m", &metric("vector(1)"), long, Duration::from_secs(1)).await;
    let values = values.map(|v| v.unwrap_or_default()).map_err(|e| e.message);
    assert_eq!(values.as_ref().map(Vec::len), Ok(4 * 3600 + 1), "every point of a long range: {values:?}");
    // An instant query is evaluated at the run clock's time: ten minutes ahead of the
    // wall clock (as a simulation's plan time runs ahead), the menu's series is stale.
    let ahead = VirtualClock::new();
    ahead.sleep(Duration::from_secs(600)).await;
    let later = metrics_on(server.url(), Arc::new(ahead));
    assert_eq!(instant(&later, r#"errors_ratio{service="menu"}"#).await, "no data", "queried at plan time");
    assert_eq!(instant(&later, r#"max_over_time(errors_ratio{service="menu"}[30m])"#).await, "value 10");
    let url = server.url().to_owned();
    server.stop().await;
    let gone = instant(&crate::metrics(&url), "old_gauge").await;
    assert!(gone.starts_with("error: ") && gone.contains("127.0.0.1"), "an unreachable server is an error: {gone}");
}
