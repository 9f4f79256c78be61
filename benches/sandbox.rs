//! Start-up time of a full sandbox (two MongoDB servers, a Kafka broker, Redis), engines
//! already provisioned. The baseline, measured in the same run, is the slowest single
//! service started alone: the ratio shows what starting everything together costs beyond
//! the one server that must be waited for anyway. Medians of several runs.
//! Run with `cargo bench --bench sandbox`.

use std::time::{Duration, Instant};

use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn start(specs: &[ServiceSpec]) -> Duration {
    let started = Instant::now();
    let sandbox = Sandbox::start(specs, &Options::default()).await.expect("the sandbox starts");
    let elapsed = started.elapsed();
    sandbox.shutdown().await;
    elapsed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let full = [
            ServiceSpec::new("old_db", ServiceKind::Mongo),
            ServiceSpec::new("new_db", ServiceKind::Mongo),
            ServiceSpec::new("events", ServiceKind::Kafka),
            ServiceSpec::new("cache", ServiceKind::Redis),
        ];
        start(&full).await; // provisions engines if needed; not measured
        let runs = 5;
        let mut singles = Vec::new();
        for kind in [ServiceKind::Mongo, ServiceKind::Kafka, ServiceKind::Redis] {
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(start(&[ServiceSpec::new("alone", kind)]).await);
            }
            let m = median(samples);
            println!("{:<8} alone        {:>7.3} s", kind.as_str(), m.as_secs_f64());
            singles.push(m);
        }
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(start(&full).await);
        }
        let full_median = median(samples);
        let slowest = singles.into_iter().max().unwrap_or_default();
        println!(
            "full sandbox (2 mongodb, kafka, redis) {:>7.3} s  full / slowest single service {:>5.2}",
            full_median.as_secs_f64(),
            full_median.as_secs_f64() / slowest.as_secs_f64()
        );
    });
}
