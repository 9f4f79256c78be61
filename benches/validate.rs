//! Benchmark of `handoff validate`: the menu plan and a generated 1 MB plan.
//!
//! Every figure is a ratio to a baseline measured in the same run on the same input: a
//! plain YAML parse (serde-saphyr into `serde_json::Value`, no positions, no checks). Times
//! are medians of several runs. Run with `cargo bench --bench validate`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use handoff_plan::Checker;
use handoff_registry::Registry;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

/// A valid plan of about `bytes` bytes: `phases` copies of a realistic phase.
fn generated_plan(bytes: usize) -> String {
    let mut text = String::from(
        "apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata:
  name: generated
  owners: [{name: bench, role: owner}]
environments:
  production:
    endpoints: {old: \"${OLD_URI}\", new: \"${NEW_URI}\", prom: \"${PROM_URL}\"}
resources:
  old_db: {kind: mongodb, endpoint: old, database: old, collections: [items]}
  new_db: {kind: mongodb, endpoint: new, database: new, collections: [items]}
  prom: {kind: prometheus, endpoint: prom}
  old_svc: {kind: service}
  new_svc: {kind: service}
  route: {kind: mesh}
metrics:
  consistency: {unit: percent, source: {emitted: {by: mongo.verify, name: data_consistency_percent}}}
  p95: {unit: ms, source: {prometheus: {resource: prom, query: 'histogram_quantile(0.95, rate(http_duration_bucket[5m]))'}}}
phases:
",
    );
    let mut i = 0;
    while text.len() < bytes {
        let _ = write!(
            text,
            "  - id: phase-{i}
    name: Phase {i}
    objective: Move slice {i} of the items to the new owner and prove it.
    steps:
      - id: copy-{i}
        uses: mongo.copy
        with: {{source: {{resource: old_db, collection: items}}, target: {{resource: new_db}}, parallelism: 4}}
        timeout: 2h
        retry: {{attempts: 3, backoff: 30s}}
      - id: verify-{i}
        uses: mongo.verify
        with: {{source: {{resource: old_db, collection: items}}, target: {{resource: new_db}}, mode: full}}
      - id: shift-{i}
        uses: traffic.shift
        with:
          route: route
          from: old_svc
          to: new_svc
          schedule:
            steps: [{{weight: 10, soak: 1h}}, {{weight: 50, soak: 1h}}, {{weight: 100, soak: 1h}}]
            header_route: {{header: x-canary, value: \"true\"}}
    criteria:
      - {{id: consistent, description: All documents match, metric: consistency, op: \">=\", threshold: 100%}}
      - {{id: fast, description: p95 under 200 ms, metric: p95, op: \"<\", threshold: 200ms, window: 1h, min_samples: 10}}
      - {{id: people, description: No complaints, confirm: {{prompt: Any complaints?, by: support}}}}
    gates: [{{soak: 1d}}]
    rollback:
      max_duration: 5m
      steps:
        - id: back-{i}
          uses: traffic.shift
          with: {{route: route, from: new_svc, to: old_svc, schedule: {{steps: [{{weight: 100, soak: 0s}}]}}}}
"
        );
        i += 1;
    }
    text
}

fn main() {
    let registry = Registry::builtin();
    let build = time(5, || {
        let _ = Checker::new(&registry).unwrap();
    });
    let checker = Checker::new(&registry).unwrap();
    let menu = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plans/menu-service.yaml")).unwrap();
    let large = generated_plan(1024 * 1024);
    println!("handoff validate benchmark (medians; ratios to a plain YAML parse of the same input)");
    println!("schema build + compile, once per process: {:.1} ms", build.as_secs_f64() * 1e3);
    for (name, text, runs) in [("menu plan", &menu, 31), ("generated 1 MB plan", &large, 7)] {
        let report = checker.check(text.as_bytes());
        assert!(report.is_valid(false), "{name} is valid: {:#?}", report.diagnostics);
        let parse = time(runs, || {
            let _: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        });
        let validate = time(runs, || {
            let _ = checker.check(text.as_bytes());
        });
        println!(
            "{name:<22} {:>8} bytes  parse {:>8.2} ms  validate {:>8.2} ms  validate/parse {:>5.2}",
            text.len(),
            parse.as_secs_f64() * 1e3,
            validate.as_secs_f64() * 1e3,
            validate.as_secs_f64() / parse.as_secs_f64()
        );
    }
}
