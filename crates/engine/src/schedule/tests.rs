//! The observation schedule, driven without a clock: each test is a fixture of soak,
//! alerts and criteria (with the samples each criterion's metric returns, in order) and
//! the transcript of what the schedule samples when, how it stops, and the verdicts.
//!
//! Fixture lines: `soak <duration>`, `alert <interval>`, `virtual` (virtual time),
//! `prometheus <metric>` (a Prometheus metric), `steps <duration>` (how long the steps
//! took before the observation), `<criterion id> {<criterion fields>} <samples>`, where a
//! sample is a value, `-` (no data) or `!` (a provider error) — a criterion given no more
//! samples gets no data —, and `earlier <criterion id> <ago>=<sample> …` (samples taken
//! while the steps ran, `ago` before the observation).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use handoff_plan::model::{Criterion, Id, Metric, MetricSource, Unit};

use super::{Next, Observation};
use crate::events::Verdict;
use crate::graph::CriterionNode;

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap()
}

fn at(time: Duration) -> String {
    humantime::format_duration(time).to_string()
}

fn sample(text: &str) -> Result<Option<f64>, String> {
    match text {
        "-" => Ok(None),
        "!" => Err("connection refused".to_owned()),
        value => Ok(Some(value.parse().unwrap())),
    }
}

/// A parsed fixture.
#[derive(Default)]
struct Fixture {
    soak: Duration,
    alerts: Vec<Duration>,
    virtual_time: bool,
    steps: Duration,
    earlier: Vec<(String, Vec<(Duration, String)>)>,
    metrics: BTreeMap<Id, Metric>,
    criteria: Vec<(Criterion, VecDeque<String>)>,
}

impl Fixture {
    fn parse(text: &str) -> Fixture {
        let mut fixture = Fixture::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split_once(' ') {
                None => {
                    assert_eq!(line, "virtual", "unknown fixture line");
                    fixture.virtual_time = true;
                }
                Some(("soak", soak)) => fixture.soak = duration(soak),
                Some(("alert", interval)) => fixture.alerts.push(duration(interval)),
                Some(("steps", took)) => fixture.steps = duration(took),
                Some(("earlier", rest)) => {
                    let (id, samples) = rest.split_once(' ').unwrap();
                    let samples = samples.split_whitespace().map(|s| s.split_once('=').unwrap());
                    let samples = samples.map(|(ago, value)| (duration(ago), value.to_owned())).collect();
                    fixture.earlier.push((id.to_owned(), samples));
                }
                Some(("prometheus", metric)) => {
                    let source = MetricSource::Prometheus { resource: Id("prom".to_owned()), query: metric.to_owned() };
                    let metric_ = Metric { description: None, unit: Unit::Count, source };
                    fixture.metrics.insert(Id(metric.to_owned()), metric_);
                }
                Some((id, rest)) => {
                    let close = rest.rfind('}').unwrap();
                    let fields = &rest[1..close];
                    let yaml = format!("{{id: {id}, description: d, {fields}}}");
                    let samples = rest[close + 1..].split_whitespace().map(str::to_owned).collect();
                    fixture.criteria.push((serde_saphyr::from_str(&yaml).unwrap(), samples));
                }
            }
        }
        fixture
    }
}

/// Runs the fixture's observation to its end and compares the transcript with `expect`.
fn check(fixture: &str, expect: &str) {
    let Fixture { soak, alerts, virtual_time, steps, earlier, metrics, criteria } = Fixture::parse(fixture);
    let nodes: Vec<CriterionNode> = criteria.iter().map(|(c, _)| CriterionNode::compile(c, &metrics)).collect();
    let mut samples: Vec<VecDeque<String>> = criteria.into_iter().map(|(_, s)| s).collect();
    let refs: Vec<&CriterionNode> = nodes.iter().collect();
    let mut observation = Observation::new(&refs, soak, &alerts, (virtual_time, steps));
    for (id, taken) in earlier {
        let index = nodes.iter().position(|n| n.id == id).unwrap();
        let taken: Vec<_> = taken.into_iter().map(|(ago, value)| (ago, sample(&value))).collect();
        observation.earlier(index, &taken);
    }
    let mut out = Vec::new();
    let mut now = Duration::ZERO;
    for _ in 0..10_000 {
        out.extend(observation.alerts_due(now).into_iter().map(|i| format!("{} alert {i}", at(now))));
        for (index, _) in observation.criteria_due(now) {
            let value = samples[index].pop_front().unwrap_or_else(|| "-".to_owned());
            out.push(format!("{} {} {value}", at(now), nodes[index].id));
            observation.sampled(index, sample(&value));
        }
        match observation.next(now) {
            Next::Wait(wait) => now += wait,
            Next::Stop => break,
        }
    }
    let soak = if observation.soak_opens(now) { ", soak opens" } else { "" };
    out.push(format!("{} stop{soak}", at(now)));
    for query in observation.range_queries() {
        let (window, interval) = (at(query.window), at(query.interval));
        out.push(format!("{} read as a range over {window} every {interval}", nodes[query.index].id));
        observation.decide(query.index, (Verdict::Pass, "from the range".to_owned()));
    }
    for judged in observation.verdicts() {
        out.push(format!("{}: {:?} ({})", judged.criterion.id, judged.verdict, judged.detail));
    }
    let expect: Vec<&str> = expect.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(out, expect, "\n{}", out.join("\n"));
}

#[test]
fn a_window_is_sampled_at_the_end_of_the_soak_and_the_soak_opens() {
    check(
        "
        soak 10m
        alert 4m
        lag {metric: lag, op: '<', threshold: 5, window: 3m, interval: 1m} 1 2 3 4
        ",
        "
        0s alert 0
        4m alert 0
        7m lag 1
        8m alert 0
        8m lag 2
        9m lag 3
        10m lag 4
        10m stop, soak opens
        lag: Pass (4 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 4)
        ",
    );
}

#[test]
fn the_longest_window_sets_the_end_and_a_zero_window_is_one_sample_at_the_end() {
    check(
        "
        lag {metric: lag, op: '<', threshold: 5, window: 2m, interval: 1m} 1 2 3
        now {metric: errors, op: '==', threshold: 0} 0
        ",
        "
        0s lag 1
        1m lag 2
        2m lag 3
        2m now 0
        2m stop
        lag: Pass (3 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 3)
        now: Pass (1 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 0)
        ",
    );
}

#[test]
fn a_failure_that_rolls_back_ends_the_observation_early_and_others_say_so() {
    check(
        "
        soak 1h
        lag {metric: lag, op: '<', threshold: 5, window: 1h, interval: 10m, failure_limit: 1} 1 9 9
        rate {metric: rate, op: '>', threshold: 100, window: 1h, interval: 20m} 200 300
        ",
        "
        0s lag 1
        0s rate 200
        10m lag 9
        20m lag 9
        20m rate 300
        20m stop
        lag: Fail (3 samples, 2 violating (limit 1), 0 without data, 0 provider errors; last value 9)
        rate: Pass (2 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 300; observation cut short: `lag` failed)
        ",
    );
}

#[test]
fn a_failure_that_only_warns_lets_the_observation_run_to_its_end() {
    check(
        "
        lag {metric: lag, op: '<', threshold: 5, window: 20m, interval: 10m, on_failure: warn} 9 1 1
        rate {metric: rate, op: '>', threshold: 100, window: 20m, interval: 10m} 200 200 200
        ",
        "
        0s lag 9
        0s rate 200
        10m rate 200
        20m rate 200
        20m stop
        lag: Fail (1 samples, 1 violating (limit 0), 0 without data, 0 provider errors; last value 9)
        rate: Pass (3 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 200)
        ",
    );
}

#[test]
fn no_data_and_provider_errors_are_counted_not_failed() {
    check(
        "
        lag {metric: lag, op: '<', threshold: 5, window: 20m, interval: 10m, min_samples: 2, no_data: inconclusive} ! - 3
        ",
        "
        0s lag !
        10m lag -
        20m lag 3
        20m stop
        lag: Inconclusive (1 samples, 0 violating (limit 0), 1 without data, 1 provider errors; last value 3)
        ",
    );
}

#[test]
fn virtual_time_samples_at_most_about_500_times_but_never_fewer_than_needed() {
    // The floor is 500m / 500 = 1m: the 10 s interval becomes 1m; a window of 2m needing 3
    // samples keeps 30 s (2m / (3 + 1)).
    check(
        "
        virtual
        soak 500m
        slow {metric: lag, op: '<', threshold: 5, window: 3m, interval: 10s} 1 1 1 1
        tight {metric: lag, op: '<', threshold: 5, window: 2m, interval: 10s, min_samples: 3} 1 1 1 1 1
        ",
        "
        8h 17m slow 1
        8h 18m slow 1
        8h 18m tight 1
        8h 18m 30s tight 1
        8h 19m slow 1
        8h 19m tight 1
        8h 19m 30s tight 1
        8h 20m slow 1
        8h 20m tight 1
        8h 20m stop, soak opens
        slow: Pass (4 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 1)
        tight: Pass (5 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 1)
        ",
    );
}

#[test]
fn a_prometheus_window_is_read_as_a_range_at_the_end_except_on_virtual_time() {
    check(
        "
        prometheus p99
        alert 5m
        p99 {metric: p99, op: '<', threshold: 200ms, window: 10m, interval: 1m} 1
        ",
        "
        0s alert 0
        5m alert 0
        10m alert 0
        10m stop
        p99 read as a range over 10m every 1m
        p99: Pass (from the range)
        ",
    );
    check(
        "
        virtual
        prometheus p99
        p99 {metric: p99, op: '<', threshold: 200, window: 10m, interval: 5m} 100 150 190
        ",
        "
        0s p99 100
        5m p99 150
        10m p99 190
        10m stop
        p99: Pass (3 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 190)
        ",
    );
}

#[test]
fn alerts_alone_are_sampled_once_and_nothing_is_decided() {
    check(
        "
        alert 1m
        alert 2m
        ",
        "
        0s alert 0
        0s alert 1
        0s stop
        ",
    );
}

#[test]
fn windows_overlap_the_steps_and_keep_only_their_own_samples_from_them() {
    // Steps took 12 days; a 14-day window ends 2 days after them (not 14), counting the
    // samples taken in its last 12 days of steps; the soak still follows the steps.
    check(
        "
        steps 12d
        lag {metric: lag, op: '<', threshold: 5, window: 14d, interval: 1d} 1 2 3
        earlier lag 13d=9 12d=1 1d=2
        ",
        "
        0s lag 1
        1day lag 2
        2days lag 3
        2days stop
        lag: Pass (5 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 3)
        ",
    );
    // A soak after the steps outlasts a short window: the earlier samples are outside it.
    check(
        "
        soak 2d
        steps 5d
        rate {metric: rate, op: '<', threshold: 5, window: 1h, interval: 30m} 1 1 1
        earlier rate 30m=9
        ",
        "
        1day 23h rate 1
        1day 23h 30m rate 1
        2days rate 1
        2days stop, soak opens
        rate: Pass (3 samples, 0 violating (limit 0), 0 without data, 0 provider errors; last value 1)
        ",
    );
    // A failure among the earlier samples decides the window at once.
    check(
        "
        steps 1d
        lag {metric: lag, op: '<', threshold: 5, window: 2d, interval: 12h} 1 1 1
        earlier lag 12h=9
        ",
        "
        0s stop
        lag: Fail (1 samples, 1 violating (limit 0), 0 without data, 0 provider errors; last value 9)
        ",
    );
}
