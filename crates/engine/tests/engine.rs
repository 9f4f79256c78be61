//! Engine tests with an in-process test executor (the only fake executor allowed: every
//! real executor is tested against its real service).
//!
//! Each test runs a plan and compares a transcript of the run's event log (and the test
//! executor's effects) with a snapshot, through one `check` helper.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_engine::{DirStore, Engine, Event, Graph, Outcome, Record, Role, RunOptions, Store};
use handoff_executor::{
    BoxFuture, Clock, Compensation, Context, Decision, Declaration, DynAction, Executor, Policy, StepError, StepOutput,
    VirtualClock,
};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site};
use handoff_registry::Registry;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Parameters of every test action.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// `fail`: attempts that fail before one succeeds (all when absent).
    #[serde(default)]
    fail_times: Option<u32>,
    /// `emit`: metric name.
    #[serde(default)]
    metric: Option<String>,
    /// `emit`: value.
    #[serde(default)]
    value: Option<f64>,
    /// `wait`: seconds of the run's clock; `walk`: how long each weight is held.
    #[serde(default)]
    seconds: Option<u64>,
    /// `walk`: each weight with the value of `rate` emitted while it is held.
    #[serde(default)]
    weights: Option<Vec<(u8, f64)>>,
    /// `walk`: the events (`reads`) each weight serves.
    #[serde(default)]
    events: Option<f64>,
}

/// The test executor: records every effect and undo in order.
#[derive(Clone, Default)]
struct Probe {
    effects: Arc<Mutex<Vec<String>>>,
    /// What `listen` heard of the run's lifecycle, in order.
    heard: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    fn note(&self, text: String) {
        self.effects.lock().unwrap().push(text);
    }
}

/// The test executor's actions (one dispatch by name, in [`Probe::run`]).
const ACTIONS: &[Declaration] = &[
    Declaration::new::<Params>("ok", "Succeeds.", Effect::Change),
    Declaration::new::<Params>("fail", "Fails (fail_times times, or always).", Effect::Change),
    Declaration::new::<Params>("emit", "Emits a metric.", Effect::Observe).emitting(&["lag", "errors"]),
    Declaration::new::<Params>("wait", "Waits on the run's clock.", Effect::Observe),
    Declaration::new::<Params>("hang", "Waits until cancelled, checkpointing first.", Effect::Change).resumable(),
    Declaration::new::<Params>("once", "Succeeds; not idempotent.", Effect::Change).not_idempotent(),
    Declaration::new::<Params>("backup", "Takes a (pretend) verified backup.", Effect::Backup),
    Declaration::new::<Params>("bg", "Starts background work.", Effect::Change).background(),
    Declaration::new::<Params>("stop", "Stops the background step `bg`.", Effect::Change),
    Declaration::new::<Params>("walk", "Walks weights like a traffic shift, holding each.", Effect::Change)
        .emitting(&["rate", "reads"]),
    Declaration::new::<Params>("listen", "Notes the run's lifecycle from now on.", Effect::Observe),
];

impl Probe {
    /// The `test` executor, every action of which notes its effects here.
    fn executor(&self) -> Executor {
        ACTIONS.iter().fold(Executor::new("test", "In-process test executor."), |executor, declaration| {
            executor.with_dyn(Box::new(ProbeAction { probe: self.clone(), declaration: *declaration }))
        })
    }

    async fn run(&self, action: &str, with: &Value, cx: &Context) -> Result<Value, StepError> {
        let params = Params::deserialize(with).unwrap();
        let at = format!("{}/{}", cx.phase, cx.step);
        match action {
            "fail" if params.fail_times.is_none_or(|n| cx.attempt <= n) => {
                self.note(format!("fail {at} #{}", cx.attempt));
                Err(StepError::Failed(format!("attempt {} failed on purpose", cx.attempt)))
            }
            "bg" => {
                self.note(format!("background {at} from {:?}", cx.checkpoint));
                cx.save_checkpoint(&json!({ "position": cx.attempt })).unwrap();
                Ok(Value::Null)
            }
            "listen" => {
                let feed = cx.sink.lifecycle().expect("the engine has a lifecycle");
                let probe = self.clone();
                let note = |change: &handoff_executor::Lifecycle| {
                    format!("lifecycle {} {}", change.event, change.phase.as_deref().unwrap_or("-"))
                };
                probe.heard.lock().unwrap().extend(feed.history.iter().map(note));
                tokio::spawn(async move {
                    let mut events = feed.events;
                    while let Ok(change) = events.recv().await {
                        // Handling takes time; the engine waits for it at the end.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        probe.heard.lock().unwrap().push(note(&change));
                    }
                    drop(feed.done);
                });
                Ok(Value::Null)
            }
            "stop" => {
                self.note(format!("stop {at}"));
                Ok(json!({ "stops": ["bg"] }))
            }
            "walk" => {
                // Like `traffic.shift`: the checkpoint names the next weight before a hold.
                let from = cx.checkpoint.as_ref().and_then(|c| c["next"].as_u64()).unwrap_or(0) as usize;
                for (i, (weight, rate)) in params.weights.unwrap().into_iter().enumerate().skip(from) {
                    self.note(format!("weight {weight}% at {at}"));
                    cx.save_checkpoint(&json!({ "next": i + 1 })).unwrap();
                    cx.emit("rate", rate);
                    if let Some(events) = params.events {
                        cx.emit("reads", events);
                    }
                    cx.hold(&format!("{weight}%"), Duration::from_secs(params.seconds.unwrap())).await?;
                }
                Ok(Value::Null)
            }
            "emit" => {
                cx.emit(params.metric.as_deref().unwrap(), params.value.unwrap());
                Ok(Value::Null)
            }
            "wait" => {
                tokio::select! {
                    () = cx.clock.sleep(Duration::from_secs(params.seconds.unwrap())) => Ok(Value::Null),
                    () = cx.cancel.cancelled() => { self.note(format!("cancelled {at}")); Err(StepError::Cancelled) }
                }
            }
            "hang" => {
                let resumed = cx.checkpoint.clone();
                if resumed.is_some() {
                    self.note(format!("resume {at} from {}", resumed.clone().unwrap()));
                    return Ok(json!({ "resumed": true }));
                }
                cx.save_checkpoint(&json!({ "done": 40 })).unwrap();
                self.note(format!("hang {at}"));
                cx.cancel.cancelled().await;
                Err(StepError::Cancelled)
            }
            _ => {
                self.note(format!("run {at}"));
                Ok(json!({ "did": at }))
            }
        }
    }
}

/// One action of the test executor.
struct ProbeAction {
    probe: Probe,
    declaration: Declaration,
}

impl DynAction for ProbeAction {
    fn declaration(&self) -> &Declaration {
        &self.declaration
    }
    fn check(&self, _: &Value, _: &Site<'_>) -> Vec<ParamIssue> {
        Vec::new()
    }
    fn describe(&self, _: &Value) -> String {
        self.declaration.summary.to_owned()
    }
    fn preflight(&self, _: &Policy) -> Result<(), String> {
        Ok(())
    }
    fn execute<'a>(&'a self, with: &'a Value, cx: &'a Context) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(async move { self.probe.run(self.declaration.name, with, cx).await.map(StepOutput::from_json) })
    }
    fn compensate<'a>(
        &'a self,
        _: &'a Value,
        output: &'a StepOutput,
        cx: &'a Context,
    ) -> BoxFuture<'a, Result<Compensation, StepError>> {
        Box::pin(async move {
            if self.declaration.name == "emit" {
                return Ok(Compensation::NotNeeded);
            }
            let output = serde_json::to_value(output).unwrap();
            self.probe.note(format!("undo {}/{} (output {output})", cx.phase, cx.step));
            Ok(Compensation::Undone("test undo".to_owned()))
        })
    }
}

const HEAD: &str = "apiVersion: handoff.dev/v1alpha1\nkind: MigrationPlan\nmetadata: {name: t}\nenvironments: {test: {endpoints: {}}}\n";

/// A harness: one state directory, one test executor, one virtual clock.
struct Harness {
    dir: tempfile::TempDir,
    probe: Probe,
    registry: Registry,
    clock: Arc<VirtualClock>,
}

impl Harness {
    fn new() -> Harness {
        Harness::on(VirtualClock::new())
    }

    fn on(clock: VirtualClock) -> Harness {
        let probe = Probe::default();
        let registry = Registry::builtin().with(probe.executor());
        Harness { dir: tempfile::tempdir().unwrap(), probe, registry, clock: Arc::new(clock) }
    }

    /// A harness whose state lives in memory (tmpfs, where there is one): the log's fsyncs
    /// cost nothing there, so a run measures the engine rather than the disk.
    fn in_memory() -> Harness {
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        Harness { dir, ..Harness::new() }
    }

    fn graph(&self, phases: &str) -> Graph {
        let text = format!("{HEAD}{phases}");
        let report = handoff_plan::Checker::new(&self.registry).unwrap().check(text.as_bytes());
        let errors: Vec<String> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == handoff_plan::Severity::Error)
            .map(|d| d.message.clone())
            .collect();
        assert!(errors.is_empty(), "plan invalid: {errors:?}");
        Graph::compile(report.plan.as_ref().unwrap(), &self.registry).unwrap()
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::new(DirStore::new(self.dir.path(), "t", "test"))
    }

    fn options(&self) -> RunOptions {
        let clock: Arc<dyn Clock> = self.clock.clone();
        RunOptions::new("test", clock)
    }

    fn records(&self) -> Vec<Record> {
        let store = self.store();
        store.load(&store.latest_run().unwrap().unwrap()).unwrap()
    }

    /// The run's transcript: one line per record, the effects, and the outcome.
    fn transcript(&self, outcome: &Outcome, from: usize) -> String {
        let mut lines: Vec<String> = self.records().iter().skip(from).filter_map(|r| line(&r.event)).collect();
        lines.push("-- effects".to_owned());
        lines.extend(self.probe.effects.lock().unwrap().drain(..));
        let heard: Vec<String> = self.probe.heard.lock().unwrap().drain(..).collect();
        if !heard.is_empty() {
            lines.push("-- lifecycle heard".to_owned());
            lines.extend(heard);
        }
        lines.push(format!("-- {}", shown(outcome)));
        lines.join("\n")
    }
}

/// An outcome without wall-clock noise (real work takes real time, even on a virtual clock).
fn shown(outcome: &Outcome) -> String {
    match outcome {
        Outcome::RolledBack { phase, reason, seconds } => {
            format!("RolledBack {{ phase: {phase:?}, reason: {reason:?}, seconds: {} }}", seconds.round())
        }
        Outcome::RollbackFailed { phase, reason } => {
            format!("RollbackFailed {{ phase: {phase:?}, reason: {:?} }}", rounded_took(reason))
        }
        other => format!("{other:?}"),
    }
}

/// `reason` with the figure after "took " rounded to whole seconds.
fn rounded_took(reason: &str) -> String {
    let Some((head, tail)) = reason.split_once("took ") else { return reason.to_owned() };
    let Some((figure, rest)) = tail.split_once('s') else { return reason.to_owned() };
    match figure.parse::<f64>() {
        Ok(seconds) => format!("{head}took {}s{rest}", seconds.round()),
        Err(_) => reason.to_owned(),
    }
}

fn line(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted { .. } => "run started".to_owned(),
        Event::RunResumed { .. } => "run resumed".to_owned(),
        Event::PhaseStarted { phase } => format!("phase {phase}"),
        Event::StepStarted { phase, step, role, attempt } => format!("  start {phase}/{step} {role:?} #{attempt}"),
        Event::StepFinished { phase, step, .. } => format!("  done {phase}/{step}"),
        Event::StepFailed { phase, step, error, retrying, .. } => {
            format!("  failed {phase}/{step}: {error} (retrying: {retrying})")
        }
        Event::StepCompensated { phase, step, outcome } => format!("  compensated {phase}/{step}: {outcome}"),
        Event::BackgroundRestarted { phase, step } => format!("  restarted {phase}/{step}"),
        Event::StepSettled { phase, step, done, role } => {
            let undo = if *role == Role::Compensate { "/undo" } else { "" };
            format!("  settled {phase}/{step}{undo} done={done}")
        }
        Event::Checkpoint { step, data, .. } => format!("  checkpoint {step} {data}"),
        Event::Metric { name, value, .. } => format!("  metric {name}={value}"),
        Event::GateOpened { gate, .. } => format!("  gate {gate}"),
        Event::Sleeping { phase, .. } => format!("  sleeping through {phase}"),
        Event::CriterionEvaluated { criterion, verdict, detail, .. } => {
            format!("  criterion {criterion}: {verdict:?} ({detail})")
        }
        Event::AnalysisEvaluated { step, hold: at, criterion, verdict, samples, failed, dry_run, .. } => {
            format!(
                "  analysis {step:?} at {at}: {criterion} {verdict:?} ({samples} samples, {failed} failed, dry run {dry_run})"
            )
        }
        Event::AlertFired { alert, value, action, .. } => format!("  alert {alert}={value} {action}"),
        Event::Decided { key, decision } => format!("decided {key} approved={} by {}", decision.approved, decision.by),
        Event::Paused { key, .. } => format!("paused for {key}"),
        Event::Interrupted { reason } => format!("interrupted: {reason}"),
        Event::RollbackStarted { phase, reason } => format!("rollback {phase}: {reason}"),
        Event::RollbackFinished { ok, seconds, budget_seconds, breached, .. } => {
            format!(
                "rollback finished ok={ok} seconds={} budget={budget_seconds:?} breached={breached}",
                seconds.round()
            )
        }
        Event::PhasePassed { phase } => format!("passed {phase}"),
        Event::RunFinished { status } => format!("finished {status:?}"),
    })
}

/// Runs `phases` from the start and snapshots the transcript under `name`.
async fn check(name: &str, phases: &str) -> Harness {
    let harness = Harness::new();
    let graph = harness.graph(phases);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
    insta::assert_snapshot!(name, harness.transcript(&outcome, 0));
    harness
}

#[tokio::test]
async fn phases_run_in_order_and_a_group_runs_together() {
    check(
        "in_order",
        "
phases:
  - {id: one, name: One, steps: [{id: a, uses: test.ok}, {id: b, uses: test.ok, group: g}, {id: c, uses: test.ok, group: g}, {id: d, uses: test.ok}], rollback: {max_duration: 1m, steps: []}}
  - {id: two, name: Two, steps: [{id: e, uses: test.ok}], rollback: {max_duration: 1m, steps: []}}
",
    )
    .await;
}

#[tokio::test]
async fn lifecycle_subscribers_see_every_change_and_the_engine_waits_for_them() {
    check(
        "lifecycle",
        "
phases:
  - {id: one, name: One, steps: [{id: a, uses: test.ok}, {id: listen, uses: test.listen}], rollback: {max_duration: 1m, steps: []}}
  - {id: two, name: Two, steps: [{id: bad, uses: test.fail}], rollback: {max_duration: 1m, steps: []}}
",
    )
    .await;
}

#[tokio::test]
async fn a_failed_step_is_retried_then_compensation_runs_in_reverse_then_the_rollback() {
    check(
        "rollback_order",
        "
phases:
  - id: one
    name: One
    steps:
      - {id: a, uses: test.ok}
      - {id: flaky, uses: test.fail, with: {fail_times: 2}, retry: {attempts: 3, backoff: 10s}}
      - {id: c, uses: test.emit, with: {metric: lag, value: 1}}
      - {id: broken, uses: test.fail, retry: {attempts: 2, backoff: 1m}}
      - {id: never, uses: test.ok}
    rollback:
      max_duration: 5m
      steps: [{id: restore, uses: test.ok}, {id: settle, uses: test.wait, with: {seconds: 60}}]
",
    )
    .await;
}

#[tokio::test]
async fn a_failing_step_cancels_the_rest_of_its_group() {
    check(
        "group_failure",
        "
phases:
  - id: one
    name: One
    steps:
      - {id: slow, uses: test.hang, group: g}
      - {id: bad, uses: test.fail, group: g}
    rollback: {max_duration: 1m, steps: []}
",
    )
    .await;
}

#[tokio::test]
async fn a_rollback_over_its_budget_is_a_failed_rollback() {
    check(
        "budget_breach",
        "
phases:
  - id: one
    name: One
    steps: [{id: a, uses: test.ok}, {id: bad, uses: test.fail}]
    rollback:
      max_duration: 5m
      steps: [{id: slow-restore, uses: test.wait, with: {seconds: 600}}]
",
    )
    .await;
}

const METRICS: &str = "
metrics:
  lag: {unit: seconds, source: {emitted: {by: test.emit}}}
  errors: {unit: percent, source: {emitted: {by: test.emit}}}
";

#[tokio::test]
async fn criteria_read_emitted_metrics_and_a_failed_one_rolls_back_even_beside_an_inconclusive_one() {
    check(
        "criteria",
        &format!(
            "{METRICS}
phases:
  - id: good
    name: Good
    steps: [{{id: measure, uses: test.emit, with: {{metric: lag, value: 2}}}}]
    criteria:
      - {{id: lag-low, description: lag under 5s, metric: lag, op: '<', threshold: 5s, window: 10m, interval: 1m, min_samples: 5}}
    rollback: {{max_duration: 1m, steps: []}}
  - id: bad
    name: Bad
    steps: [{{id: a, uses: test.ok}}, {{id: measure-errors, uses: test.emit, with: {{metric: errors, value: 3}}}}]
    criteria:
      # Cut short by the failure below, it has too few samples: the failure still rolls
      # back rather than pausing for a person.
      - {{id: lag-steady, description: lag under 5s for long enough, metric: lag, op: '<', threshold: 5s, window: 1h, interval: 5m, min_samples: 10}}
      - {{id: errors-low, description: errors under 1%, metric: errors, op: '<', threshold: 1%, window: 1h, interval: 5m, failure_limit: 2}}
    rollback: {{max_duration: 1m, steps: [{{id: undo-all, uses: test.ok}}]}}
"
        ),
    )
    .await;
}

/// A metric emitted by `test.walk` at each of its weights.
const RATE: &str = "
metrics:
  rate: {unit: percent, source: {emitted: {by: test.walk}}}
  reads: {unit: count, source: {emitted: {by: test.walk}}}
";

#[tokio::test]
async fn a_failing_sample_at_the_second_weight_rolls_back_from_that_weight_and_a_dry_run_never_acts() {
    check(
        "step_analysis",
        &format!(
            "{RATE}
phases:
  - id: canary
    name: Canary
    steps:
      - {{id: shift, uses: test.walk, with: {{weights: [[10, 0.05], [25, 0.3], [50, 0.05]], seconds: 3600}}, analysis: [rate-low, rate-tiny]}}
    criteria:
      - {{id: rate-low, description: rate under 0.1%, metric: rate, op: '<', threshold: 0.1%, window: 30m, interval: 1m, min_samples: 10}}
      - {{id: rate-tiny, description: trying a stricter rate, metric: rate, op: '<', threshold: 0.01%, window: 30m, interval: 1m, dry_run: true}}
    rollback: {{max_duration: 5m, steps: [{{id: route-back, uses: test.ok}}]}}
"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_background_criterion_fails_mid_step() {
    check(
        "background_analysis",
        &format!(
            "{RATE}
phases:
  - id: canary
    name: Canary
    background_analysis: [rate-low]
    steps:
      - {{id: before, uses: test.ok}}
      - {{id: shift, uses: test.walk, with: {{weights: [[10, 0.05], [20, 0.05], [30, 0.4], [40, 0.05]], seconds: 7200}}}}
      - {{id: after, uses: test.ok}}
    criteria:
      - {{id: rate-low, description: rate under 0.1%, metric: rate, op: '<', threshold: 0.1%, window: 1h, interval: 5m, failure_limit: 1}}
    rollback: {{max_duration: 5m, steps: [{{id: route-back, uses: test.ok}}]}}
"
        ),
    )
    .await;
}

#[tokio::test]
async fn too_few_events_to_resolve_a_rate_is_inconclusive_never_a_pass() {
    // 0.1 % at 95 % confidence needs 2995 events; 80 reads cannot show one error, 5000 can.
    check(
        "statistical_power",
        &format!(
            "{RATE}
phases:
  - id: canary
    name: Canary
    steps:
      - {{id: busy, uses: test.walk, with: {{weights: [[10, 0.0]], events: 5000, seconds: 3600}}, analysis: [rate-low]}}
      - {{id: quiet, uses: test.walk, with: {{weights: [[25, 0.0]], events: 80, seconds: 3600}}, analysis: [rate-low]}}
    criteria:
      - {{id: rate-low, description: rate under 0.1%, metric: rate, op: '<', threshold: 0.1%, window: 30m, interval: 5m, denominator: {{metric: reads, confidence: 95}}}}
    rollback: {{max_duration: 5m, steps: [{{id: route-back, uses: test.ok}}]}}
"
        ),
    )
    .await;
}

#[tokio::test]
async fn an_inconclusive_weight_waits_for_a_person_approval_goes_on_at_the_next_weight_and_rejection_rolls_back() {
    let phases = format!(
        "{RATE}
phases:
  - id: canary
    name: Canary
    steps:
      - {{id: quiet, uses: test.walk, with: {{weights: [[25, 0.0], [50, 0.0], [75, 0.0]], events: 80, seconds: 3600}}, analysis: [rate-low]}}
    criteria:
      - {{id: rate-low, description: rate under 0.1%, metric: rate, op: '<', threshold: 0.1%, window: 30m, interval: 5m, denominator: {{metric: reads}}}}
    rollback: {{max_duration: 5m, steps: [{{id: route-back, uses: test.ok}}]}}
"
    );
    let harness = check("inconclusive_weight", &phases).await;
    let graph = harness.graph(&phases);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let options = harness.options();
    let decide = |key: &str, approved: bool| {
        engine.decide(&options, key, Decision { approved, by: "ada".to_owned(), comment: None, digest: None }).unwrap();
    };
    decide("canary/quiet@25%", true);
    let before = harness.records().len();
    let (_, paused) = engine.resume(&options, &[], &CancellationToken::new()).await.unwrap();
    let approved = harness.transcript(&paused, before);
    decide("canary/quiet@50%", false);
    let before = harness.records().len();
    let (_, rejected) = engine.resume(&options, &[], &CancellationToken::new()).await.unwrap();
    let text = format!("{approved}\n== rejected:\n{}", harness.transcript(&rejected, before));
    insta::assert_snapshot!("inconclusive_weight_decided", text);
}

#[tokio::test]
async fn no_data_pauses_an_inconclusive_criterion_for_a_person() {
    check(
        "no_data",
        &format!(
            "{METRICS}
phases:
  - id: one
    name: One
    steps: [{{id: a, uses: test.emit, with: {{metric: errors, value: 0}}}}]
    criteria:
      - {{id: lag-low, description: lag under 5s, metric: lag, op: '<', threshold: 5s, window: 10m, no_data: inconclusive}}
    rollback: {{max_duration: 1m, steps: []}}
"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_critical_alert_rolls_the_phase_back_while_its_steps_run() {
    check(
        "alert",
        &format!(
            "{METRICS}
alerts:
  - {{name: ErrorsHigh, metric: errors, op: '>', threshold: 5%, severity: critical, action: rollback}}
phases:
  - id: one
    name: One
    steps:
      - {{id: spike, uses: test.emit, with: {{metric: errors, value: 12}}}}
      - {{id: long-soak, uses: test.wait, with: {{seconds: 86400}}}}
      - {{id: never, uses: test.ok}}
    rollback: {{max_duration: 5m, steps: [{{id: restore, uses: test.ok}}]}}
"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_paced_clock_an_alert_fires_after_holding_for_its_plan_time_not_at_a_jump() {
    // One simulated day per second: the 4-day soak would take 4 s; the alert holds from the
    // start and must fire about a plan day into the soak (plan time moved on at the soak's
    // start by all 4 days before).
    let harness = Harness::on(VirtualClock::paced(std::time::Duration::from_secs(1)));
    let graph = harness.graph(&format!(
        "{METRICS}
alerts:
  - {{name: ErrorsHigh, metric: errors, op: '>', threshold: 5%, for: 1d, severity: critical, action: rollback}}
phases:
  - id: one
    name: One
    steps:
      - {{id: spike, uses: test.emit, with: {{metric: errors, value: 12}}}}
      - {{id: long-soak, uses: test.wait, with: {{seconds: 345600}}}}
    rollback: {{max_duration: 5m, steps: [{{id: restore, uses: test.ok}}]}}
"
    ));
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let records = harness.records();
    let at = |found: &dyn Fn(&Event) -> bool| records.iter().find(|r| found(&r.event)).map(|r| r.at).unwrap();
    let spiked = at(&|e| matches!(e, Event::StepFinished { step, .. } if step.as_str() == "spike"));
    let fired = at(&|e| matches!(e, Event::AlertFired { .. }));
    let held = fired.duration_since(spiked);
    assert!(
        held >= jiff::SignedDuration::from_hours(24) && held < jiff::SignedDuration::from_hours(48),
        "fired {held:?} after the value went over (for: 1d)"
    );
    assert!(
        !records.iter().any(|r| matches!(&r.event, Event::StepFinished { step, .. } if step.as_str() == "long-soak"))
    );
}

/// A phase whose step emits `first`, waits 4 days, then emits 1, judged by a 6-day window
/// on a paced clock (a simulated day in 200 ms): how it ended, and how long it ran.
async fn overlapping_window(first: u32) -> (Outcome, jiff::SignedDuration) {
    let harness = Harness::on(VirtualClock::paced(std::time::Duration::from_millis(200)));
    let graph = harness.graph(&format!(
        "{METRICS}
phases:
  - id: one
    name: One
    steps:
      - {{id: first, uses: test.emit, with: {{metric: errors, value: {first}}}}}
      - {{id: wait, uses: test.wait, with: {{seconds: 345600}}}}
      - {{id: last, uses: test.emit, with: {{metric: errors, value: 1}}}}
    criteria:
      - {{id: errors, description: d, metric: errors, op: '<', threshold: 5%, window: 6d, interval: 1h}}
    rollback: {{max_duration: 5m, steps: [{{id: restore, uses: test.ok}}]}}
"
    ));
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
    let records = harness.records();
    let (start, end) = (records.first().unwrap().at, records.last().unwrap().at);
    (outcome, end.duration_since(start))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_criterion_window_overlaps_the_steps_so_the_phase_keeps_its_length_and_sees_them() {
    // Steps of 4 days and a 6-day window: the phase runs 6 days, not 4 + 6.
    let (outcome, ran) = overlapping_window(1).await;
    assert_eq!(outcome, Outcome::Completed);
    let day = jiff::SignedDuration::from_hours(24);
    assert!(ran >= day * 6 && ran < day * 7, "the phase ran {ran:?}");
    // The window holds what was measured while the steps ran: 12 % during the wait fails it
    // (a window after the steps would have seen only the last value, 1 %), at once.
    let (outcome, ran) = overlapping_window(12).await;
    assert!(matches!(&outcome, Outcome::RolledBack { reason, .. } if reason.contains("`errors`")), "{outcome:?}");
    assert!(ran < day * 5, "judged when the steps ended: {ran:?}");
}

#[tokio::test]
async fn a_seven_week_plan_runs_in_virtual_time() {
    let harness = check(
        "seven_weeks",
        "
phases:
  - {id: one, name: One, steps: [{id: a, uses: wait.soak, with: {duration: 1w}}], gates: [{soak: 1w}], rollback: {max_duration: 1m, steps: []}}
  - {id: two, name: Two, steps: [{id: b, uses: wait.soak, with: {duration: 2w}}], gates: [{soak: 1w}], rollback: {max_duration: 1m, steps: []}}
  - {id: three, name: Three, steps: [{id: c, uses: test.ok}], gates: [{soak: 2w}], rollback: {max_duration: 1m, steps: []}}
",
    )
    .await;
    let records = harness.records();
    let span = records.last().unwrap().at.duration_since(records[0].at);
    assert!(span >= jiff::SignedDuration::from_hours(7 * 7 * 24), "the log spans {span:?} of plan time");
}

#[tokio::test]
async fn a_point_of_no_return_waits_for_confirmation_and_approvals_for_a_person() {
    const PHASES: &str = "
phases:
  - {id: one, name: One, steps: [{id: a, uses: test.backup}], gates: [{approval: {prompt: go on?}}], rollback: {max_duration: 1m, steps: []}}
  - {id: two, name: Two, steps: [{id: b, uses: test.ok}], reversible: false, restore: from backup}
";
    let harness = check("irreversible", PHASES).await;
    let graph = harness.graph(PHASES);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let options = harness.options();
    let decide = |key: &str, approved: bool| {
        engine.decide(&options, key, Decision { approved, by: "ada".to_owned(), comment: None, digest: None }).unwrap();
    };
    decide("one/approval-1", true);
    let before = harness.records().len();
    let (_, paused) = engine.resume(&options, &[], &CancellationToken::new()).await.unwrap();
    decide("two/irreversible", true);
    let (_, done) = engine.resume(&options, &[], &CancellationToken::new()).await.unwrap();
    let text = format!("{}\n== second resume: {}", harness.transcript(&paused, before), shown(&done));
    insta::assert_snapshot!("irreversible_resumed", text);
}

/// A gate that needs distinct approvers from named groups stays paused, saying what it
/// still needs, until they have all approved; one person never counts twice.
#[tokio::test]
async fn a_gate_needing_several_approvers_opens_when_distinct_members_of_each_group_approved() {
    const PHASES: &str = "
approvers: {dba: [ana, bo], menu: [bo, cy]}
phases:
  - id: one
    name: One
    steps: [{id: a, uses: test.ok}]
    gates: [{approval: {prompt: go on?, require: [{group: dba}, {group: menu, count: 2}]}}]
    rollback: {max_duration: 1m, steps: []}
";
    let harness = Harness::new();
    let graph = harness.graph(PHASES);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let options = harness.options();
    let (_, first) = engine.start(&options, &CancellationToken::new()).await.unwrap();
    let mut outcomes = vec![shown(&first)];
    for by in ["bo", "bo", "cy", "ana"] {
        let decision = Decision { approved: true, by: by.to_owned(), comment: None, digest: None };
        engine.decide(&options, "one/approval-1", decision).unwrap();
        let (_, outcome) = engine.resume(&options, &[], &CancellationToken::new()).await.unwrap();
        outcomes.push(format!("after {by}: {}", shown(&outcome)));
    }
    insta::assert_snapshot!("approvers_required", outcomes.join("\n"));
}

const RESUMABLE: &str = "
phases:
  - id: one
    name: One
    steps:
      - {id: a, uses: test.ok}
      - {id: copy, uses: test.hang}
      - {id: after, uses: test.ok}
    rollback: {max_duration: 1m, steps: []}
";

/// A token cancelled once the test executor has recorded an effect starting with `prefix`.
fn cancel_at(probe: &Probe, prefix: &'static str) -> CancellationToken {
    let cancel = CancellationToken::new();
    let (stop, probe) = (cancel.clone(), probe.clone());
    tokio::spawn(async move {
        while !probe.effects.lock().unwrap().iter().any(|e| e.starts_with(prefix)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
    });
    cancel
}

/// Interrupts a run while `copy` hangs.
async fn interrupted(harness: &Harness, phases: &str) -> Outcome {
    let graph = harness.graph(phases);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let cancel = cancel_at(&harness.probe, "hang one/copy");
    engine.start(&harness.options(), &cancel).await.unwrap().1
}

#[tokio::test]
async fn resume_continues_at_the_interrupted_step_with_its_checkpoint() {
    let harness = Harness::new();
    let first = interrupted(&harness, RESUMABLE).await;
    let graph = harness.graph(RESUMABLE);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.resume(&harness.options(), &[], &CancellationToken::new()).await.unwrap();
    insta::assert_snapshot!("resume", format!("first: {}\n{}", shown(&first), harness.transcript(&outcome, 0)));
}

/// [`RESUMABLE`] and a second phase, with metrics and an alert that only notifies.
fn two_phases() -> String {
    format!(
        "{METRICS}alerts: [{{name: Lag, metric: lag, op: '>', threshold: 50s, severity: warning, action: notify}}]{RESUMABLE}  - {{id: two, name: Two, steps: [{{id: b, uses: test.ok}}], rollback: {{max_duration: 1m, steps: []}}}}\n"
    )
}

#[tokio::test]
async fn resume_refuses_any_change_to_a_phase_the_run_reached_but_not_to_later_ones() {
    let harness = Harness::new();
    let plan = two_phases();
    interrupted(&harness, &plan).await;
    let run = harness.store().latest_run().unwrap().unwrap();
    let edits = [
        ("a completed step", "{id: a, uses: test.ok}", "{id: a, uses: test.ok, with: {fail_times: 1}}"),
        ("a step not started yet", "{id: after, uses: test.ok}", "{id: after, uses: test.ok, with: {fail_times: 1}}"),
        ("steps grouped", "{id: after, uses: test.ok}", "{id: after, uses: test.ok, group: g}"),
        (
            "the rollback budget",
            "rollback: {max_duration: 1m, steps: []}\n  - {id: two",
            "rollback: {max_duration: 1s, steps: []}\n  - {id: two",
        ),
        ("an alert on it", "threshold: 50s", "threshold: 40s"),
        ("a metric it reads", "lag: {unit: seconds", "lag: {unit: ms"),
        (
            "a phase inserted before",
            "phases:\n",
            "phases:\n  - {id: zero, name: Zero, steps: [{id: z, uses: test.ok}], rollback: {max_duration: 1m, steps: []}}\n",
        ),
    ];
    let mut refusals = Vec::new();
    for (what, from, to) in edits {
        let changed = plan.replacen(from, to, 1);
        assert_ne!(changed, plan, "{what}: the edit applies");
        let graph = harness.graph(&changed);
        let engine = Engine::new(&graph, &harness.registry, harness.store());
        let error = engine.resume(&harness.options(), &[], &CancellationToken::new()).await.unwrap_err();
        refusals.push(format!("== {what}\n{}", error.to_string().replace(&run, "<run>")));
    }
    insta::assert_snapshot!("resume_changed", refusals.join("\n"));
    // A phase not started yet may change, and phases may be added after it; names may change.
    let later = plan
        .replace("{id: b, uses: test.ok}", "{id: b, uses: test.ok, with: {fail_times: 0}}")
        .replace("name: One", "name: The first")
        + "  - {id: three, name: Three, steps: [{id: c, uses: test.ok}], rollback: {max_duration: 1m, steps: []}}\n";
    let graph = harness.graph(&later);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.resume(&harness.options(), &[], &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Completed);
}

/// Cuts the run's log just before the last record `at` matches (as a crash there would
/// leave it) and forgets the test executor's effects; the number of records kept.
fn crash_before(harness: &Harness, run: &str, at: impl Fn(&Event) -> bool) -> usize {
    let mut records = harness.store().load(run).unwrap();
    let cut = records.iter().rposition(|r| at(&r.event)).unwrap();
    records.truncate(cut);
    let path = harness.dir.path().join("t/test/runs").join(run).join("events.jsonl");
    let text: String = records.iter().map(|r| format!("{}\n", serde_json::to_string(r).unwrap())).collect();
    std::fs::write(path, text).unwrap();
    harness.probe.effects.lock().unwrap().clear();
    records.len()
}

fn finished(name: &'static str) -> impl Fn(&Event) -> bool {
    move |event| matches!(event, Event::StepFinished { step, .. } if step == name)
}

fn compensated(name: &'static str) -> impl Fn(&Event) -> bool {
    move |event| matches!(event, Event::StepCompensated { step, .. } if step == name)
}

#[tokio::test]
async fn an_interrupted_step_that_is_not_idempotent_must_be_settled() {
    let phases =
        RESUMABLE.replace("uses: test.hang}", "uses: test.hang, idempotent: false}").replace("test.hang", "test.once");
    for done in [true, false] {
        let harness = Harness::new();
        let graph = harness.graph(&phases);
        let store = harness.store();
        let engine = Engine::new(&graph, &harness.registry, store.clone());
        let (run, _) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
        // `once` finishes at once; interrupt it by hand: its last start with no finish.
        let interrupt = || crash_before(&harness, &run, finished("copy"));
        let before = interrupt();
        let (_, paused) = engine.resume(&harness.options(), &[], &CancellationToken::new()).await.unwrap();
        let settle = [("one".to_owned(), "copy".to_owned(), done)];
        let (_, settled) = engine.resume(&harness.options(), &settle, &CancellationToken::new()).await.unwrap();
        if done {
            let text = format!("{}\n== settled: {settled:?}", harness.transcript(&paused, before));
            insta::assert_snapshot!("settle", text);
        } else {
            // Settled as "retry", it runs again; interrupted again, it asks again.
            assert_eq!(settled, Outcome::Completed);
            assert!(harness.probe.effects.lock().unwrap().contains(&"run one/copy".to_owned()), "it ran again");
            interrupt();
            let (_, asked) = engine.resume(&harness.options(), &[], &CancellationToken::new()).await.unwrap();
            assert!(matches!(asked, Outcome::Paused { ref key, .. } if key.to_string() == "one/copy"), "{asked:?}");
        }
    }
}

#[tokio::test]
async fn a_second_run_cannot_start_while_the_first_holds_the_lock() {
    let harness = Harness::new();
    let graph = harness.graph(RESUMABLE);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let cancel = CancellationToken::new();
    let options = harness.options();
    let first = engine.start(&options, &cancel);
    let second = async {
        while !harness.probe.effects.lock().unwrap().iter().any(|e| e.starts_with("hang")) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let other = Engine::new(&graph, &harness.registry, harness.store());
        let refused = other.start(&options, &CancellationToken::new()).await.unwrap_err();
        cancel.cancel();
        refused
    };
    let (first, refused) = tokio::join!(first, second);
    assert!(matches!(first.unwrap().1, Outcome::Interrupted { .. }));
    let message = refused.to_string();
    assert!(message.starts_with("the plan is locked by"), "{message}");
    assert!(message.contains("--force-unlock"), "{message}");
}

#[tokio::test]
async fn background_steps_start_again_on_resume_until_a_step_stops_them() {
    let phases = "
phases:
  - id: one
    name: One
    steps:
      - {id: bg, uses: test.bg}
      - {id: copy, uses: test.hang}
      - {id: halt, uses: test.stop}
      - {id: copy2, uses: test.hang, idempotent: true}
    rollback: {max_duration: 1m, steps: []}
";
    let harness = Harness::new();
    interrupted(&harness, phases).await;
    let graph = harness.graph(phases);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    // Resumed: `bg` starts again from its checkpoint; `copy` resumes; `halt` stops `bg`;
    // interrupted again in `copy2`, the next resume leaves `bg` alone.
    let cancel = cancel_at(&harness.probe, "hang one/copy2");
    engine.resume(&harness.options(), &[], &cancel).await.unwrap();
    let (_, outcome) = engine.resume(&harness.options(), &[], &CancellationToken::new()).await.unwrap();
    insta::assert_snapshot!("background", harness.transcript(&outcome, 0));
}

/// A phase of a step that is not idempotent (`a`), a completed one and a failing one.
const UNDO: &str = "
phases:
  - id: one
    name: One
    steps:
      - {id: a, uses: test.once}
      - {id: b, uses: test.ok}
      - {id: bad, uses: test.fail}
    rollback: {max_duration: 1m, steps: []}
";

async fn resume(harness: &Harness, graph: &Graph, settle: &[(&str, &str, bool)]) -> Outcome {
    let engine = Engine::new(graph, &harness.registry, harness.store());
    let settle: Vec<_> = settle.iter().map(|(p, s, d)| (p.to_string(), s.to_string(), *d)).collect();
    engine.resume(&harness.options(), &settle, &CancellationToken::new()).await.unwrap().1
}

#[tokio::test]
async fn an_aborted_run_undoes_the_idempotent_step_it_interrupted() {
    let harness = Harness::new();
    let first = interrupted(&harness, RESUMABLE).await;
    let graph = harness.graph(RESUMABLE);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.abort(&harness.options(), "changed our minds", &CancellationToken::new()).await.unwrap();
    insta::assert_snapshot!(
        "abort_interrupted",
        format!("first: {}\n{}", shown(&first), harness.transcript(&outcome, 0))
    );
}

#[tokio::test]
async fn a_rollback_asks_whether_an_interrupted_step_that_is_not_idempotent_took_effect() {
    let mut answers = Vec::new();
    for done in [true, false] {
        let harness = Harness::new();
        let graph = harness.graph(UNDO);
        let engine = Engine::new(&graph, &harness.registry, harness.store());
        let (run, _) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
        // Killed while `a` ran; then the run is aborted.
        let before = crash_before(&harness, &run, finished("a"));
        let (_, asked) = engine.abort(&harness.options(), "stop", &CancellationToken::new()).await.unwrap();
        let settled = resume(&harness, &graph, &[("one", "a", done)]).await;
        answers.push(format!(
            "== a=done: {done}\n{}\n-- then: {}",
            harness.transcript(&asked, before),
            shown(&settled)
        ));
    }
    insta::assert_snapshot!("rollback_settle", answers.join("\n"));
}

#[tokio::test]
async fn a_simulation_undoes_what_was_stopped_without_asking() {
    let harness = Harness::new();
    let graph = harness.graph(UNDO);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (run, _) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
    let before = crash_before(&harness, &run, finished("a"));
    let options = RunOptions { auto_decide: Some("simulation".to_owned()), ..harness.options() };
    let (_, outcome) = engine.abort(&options, "drill", &CancellationToken::new()).await.unwrap();
    insta::assert_snapshot!("auto_settle", harness.transcript(&outcome, before));
}

#[tokio::test]
async fn an_interrupted_undo_runs_again_only_when_idempotent_or_settled() {
    let mut transcripts = Vec::new();
    for (step, settle) in [("b", None), ("a", Some(true)), ("a", Some(false))] {
        let harness = Harness::new();
        let graph = harness.graph(UNDO);
        let engine = Engine::new(&graph, &harness.registry, harness.store());
        let (run, _) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
        // Killed while `step` was being undone.
        let before = crash_before(&harness, &run, if step == "a" { compensated("a") } else { compensated("b") });
        let mut outcome = resume(&harness, &graph, &[]).await;
        let mut text = format!("== undo of {step} interrupted, settled {settle:?}");
        if let Some(done) = settle {
            let key = format!("{step}/undo");
            assert!(
                matches!(&outcome, Outcome::Paused { key: asked, .. } if asked.to_string() == format!("one/{key}"))
            );
            text.push_str(&format!("\n-- asked: {}", shown(&outcome)));
            outcome = resume(&harness, &graph, &[("one", &key, done)]).await;
        }
        transcripts.push(format!("{text}\n{}", harness.transcript(&outcome, before)));
    }
    insta::assert_snapshot!("undo_settle", transcripts.join("\n"));
}

#[tokio::test]
async fn settle_refuses_what_was_not_running() {
    let harness = Harness::new();
    let graph = harness.graph(UNDO);
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (run, _) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
    crash_before(&harness, &run, compensated("a"));
    for (step, why) in [("b", "finished"), ("b/undo", "undone"), ("nope/undo", "no such step")] {
        let settle = [("one".to_owned(), step.to_owned(), true)];
        let error = engine.resume(&harness.options(), &settle, &CancellationToken::new()).await.unwrap_err();
        assert!(error.to_string().starts_with(&format!("--settle one/{step}: not a step")), "{why}: {error}");
    }
}

#[tokio::test]
async fn a_plan_of_ten_thousand_phases_runs_in_time_linear_in_its_phases() {
    let harness = Harness::in_memory();
    let phases: String = (0..10_000)
        .map(|n| format!("  - {{id: p{n}, name: P, steps: [{{id: s{n}, uses: test.ok}}], rollback: {{max_duration: 1m, steps: []}}}}\n"))
        .collect();
    let started = std::time::Instant::now();
    let graph = harness.graph(&format!("phases:\n{phases}"));
    let compiled = started.elapsed();
    let engine = Engine::new(&graph, &harness.registry, harness.store());
    let (_, outcome) = engine.start(&harness.options(), &CancellationToken::new()).await.unwrap();
    // Measured, not asserted: printed for the record (`--nocapture`).
    println!("10,000 phases: checked and compiled in {compiled:?}, ran in {:?}", started.elapsed() - compiled);
    assert_eq!(outcome, Outcome::Completed);
    assert_eq!(harness.probe.effects.lock().unwrap().len(), 10_000);
}
