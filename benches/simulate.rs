//! `handoff simulate` of the menu plan: where the wall time goes.
//!
//! The floor is the plan's simulated time at the chosen pace (simulated days × real seconds
//! per day), measured in the same run: a simulation cannot be faster than its paced clock.
//! The ratio run time / floor is what real work the clock does not compress (full
//! comparisons, consumer-lag reads, criteria samples, health polls) adds. Medians of
//! several runs. Run with `cargo bench --bench simulate`.

use std::time::Duration;

use handoff_registry::Registry;
use tokio_util::sync::CancellationToken;

const RUNS: usize = 3;
const DAY: Duration = Duration::from_millis(500);

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let registry = Registry::builtin();
    let text = std::fs::read("plans/menu-service.yaml").expect("run from the workspace root");
    let report = handoff_plan::Checker::new(&registry).unwrap().check(&text);
    let plan = report.plan.expect("the menu plan is valid");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut ratios, mut runs, mut floors, mut sandboxes, mut seeds) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        let work = tempfile::tempdir().unwrap();
        let options = handoff_simulate::Options {
            scenario: None,
            sandbox: handoff_sandbox::Options::default(),
            day: Some(DAY),
            seed: 0,
            work_dir: work.path().to_owned(),
            drill: None,
        };
        let report = runtime
            .block_on(handoff_simulate::simulate(&plan, &registry, &options, &mut |_| {}, &CancellationToken::new()))
            .expect("the simulation runs");
        assert_eq!(report.verdict, handoff_simulate::RunVerdict::Pass, "{}", report.outcome);
        let floor = report.simulated_days * DAY.as_secs_f64();
        let seconds = report.timings.run_seconds;
        println!(
            "run {run}: {:.1} simulated days, floor {floor:.1} s, run {seconds:.1} s ({:.2}x), sandbox {:.2} s, seed {:.2} s",
            report.simulated_days,
            seconds / floor,
            report.timings.sandbox_seconds,
            report.timings.seed_seconds
        );
        ratios.push(seconds / floor);
        runs.push(seconds);
        floors.push(floor);
        sandboxes.push(report.timings.sandbox_seconds);
        seeds.push(report.timings.seed_seconds);
    }
    println!(
        "menu plan, one day = {:.1} s, medians of {RUNS}: run {:.1} s / paced floor {:.1} s = {:.2}x; sandbox {:.2} s, seed {:.2} s",
        DAY.as_secs_f64(),
        median(runs),
        median(floors),
        median(ratios),
        median(sandboxes),
        median(seeds)
    );
}
