//! The runner: phases in order, steps in stages, gates, criteria and alerts, compensation
//! and rollback within budget — every transition written to the journal first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use handoff_executor::{Clock, Compensation, Context, Endpoints, Executors, Policy, StepError};
use handoff_plan::model::{AlertAction, FailureAction, MetricSource};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::EngineError;
use crate::events::{Event, Role, RunStatus, Verdict};
use crate::graph::{Graph, PhaseNode, StepNode};
use crate::journal::Journal;
use crate::metrics::{MetricProvider, Metrics};
use crate::observe::{AlertWatch, Tally, threshold};

/// How a run stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every phase passed.
    Completed,
    /// A phase failed and was rolled back within its budget.
    RolledBack {
        /// The phase.
        phase: String,
        /// Why it failed.
        reason: String,
        /// Rollback time in seconds of the run's clock.
        seconds: f64,
    },
    /// A phase failed and its rollback failed or overran its budget.
    RollbackFailed {
        /// The phase.
        phase: String,
        /// What went wrong.
        reason: String,
    },
    /// Waiting for a person's decision.
    Paused {
        /// Decision key.
        key: String,
        /// The question.
        reason: String,
    },
    /// Interrupted (signal, lost lock); resume continues.
    Interrupted {
        /// Why.
        reason: String,
    },
    /// A person aborted the run.
    Aborted,
}

/// How a phase or step ended.
#[derive(Debug)]
enum End {
    Done,
    Failed(String),
    /// Cancelled because a sibling failed or an alert fired; the cause explains it.
    Cancelled(String),
    Paused {
        key: String,
        reason: String,
    },
    Interrupted,
}

/// An alert that asked for more than a notification.
#[derive(Debug, Default)]
struct Alarm(Mutex<Option<(AlertAction, String)>>);

impl Alarm {
    fn raise(&self, action: AlertAction, what: String) {
        let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A rollback request outranks a pause.
        if slot.as_ref().is_none_or(|(a, _)| *a != AlertAction::Rollback) {
            *slot = Some((action, what));
        }
    }

    fn get(&self) -> Option<(AlertAction, String)> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Everything one execution of a run needs.
pub(crate) struct Runner<'e> {
    pub(crate) graph: &'e Graph,
    pub(crate) executors: &'e dyn Executors,
    pub(crate) journal: Arc<Journal>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) endpoints: Arc<Endpoints>,
    pub(crate) resources: Arc<std::collections::BTreeMap<handoff_plan::model::Id, handoff_plan::model::Resource>>,
    pub(crate) metrics: Metrics,
    pub(crate) cancel: CancellationToken,
    pub(crate) confirm_irreversible: bool,
    pub(crate) interrupt_reason: Arc<Mutex<String>>,
}

fn seconds(duration: SignedDuration) -> f64 {
    duration.as_secs_f64().max(0.0)
}

impl Runner<'_> {
    fn record(&self, event: Event) -> Result<(), EngineError> {
        self.journal.record(event).map(drop).map_err(EngineError::from)
    }

    fn interrupted(&self) -> Result<Outcome, EngineError> {
        let reason = self.interrupt_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        self.record(Event::Interrupted { reason: reason.clone() })?;
        Ok(Outcome::Interrupted { reason })
    }

    fn paused(&self, key: String, reason: String) -> Result<Outcome, EngineError> {
        self.record(Event::Paused { key: key.clone(), reason: reason.clone() })?;
        Ok(Outcome::Paused { key, reason })
    }

    /// Starts again the background steps that were running when the run stopped (they
    /// finished, and no later step stopped them). A failure is a failure of the phase in
    /// progress.
    async fn restart_background(&self) -> Result<Option<String>, EngineError> {
        let state = self.journal.state();
        for phase in &state.phases {
            for (id, step_state) in &phase.steps {
                let Some(step) = self.graph.step(&phase.id, id) else { continue };
                if !step.background || !step_state.finished || state.stopped.contains(id) || phase.rollback.is_some() {
                    continue;
                }
                let Some(action) = self.executors.action(&step.uses) else { continue };
                self.record(Event::BackgroundRestarted { phase: phase.id.clone(), step: id.clone() })?;
                let attempt = step_state.attempts + 1;
                let cx =
                    self.context(&phase.id, id, attempt, step_state.checkpoint.clone(), step_state.role, &self.cancel);
                if let Err(error) = action.execute(&step.with, &cx).await {
                    return Ok(Some(format!("background step `{id}` ({}) could not start again: {error}", step.uses)));
                }
            }
        }
        Ok(None)
    }

    /// Runs (or continues) the plan from wherever the journal stands; then ends the
    /// lifecycle feed (its subscribers publish the last events before this returns).
    pub(crate) async fn drive(&self) -> Result<Outcome, EngineError> {
        let outcome = self.drive_phases().await;
        self.journal.close_lifecycle().await;
        outcome
    }

    async fn drive_phases(&self) -> Result<Outcome, EngineError> {
        if let Some(failure) = self.restart_background().await? {
            let current = self.journal.read(|s| s.phases.iter().rev().find(|p| !p.passed).map(|p| p.id.clone()));
            if let Some(phase) = current.and_then(|id| self.graph.phases.iter().find(|p| p.id == id)) {
                return self
                    .rollback(phase, failure)
                    .instrument(tracing::info_span!("rollback", phase = %phase.id))
                    .await;
            }
        }
        for phase in &self.graph.phases {
            let state = self.journal.state();
            let phase_state = state.phase(&phase.id);
            if phase_state.is_some_and(|p| p.passed) {
                continue;
            }
            if let Some(rollback) = phase_state.and_then(|p| p.rollback.as_ref()) {
                let reason = rollback.reason.clone();
                return self
                    .rollback(phase, reason)
                    .instrument(tracing::info_span!("rollback", phase = %phase.id))
                    .await;
            }
            if phase_state.is_none() {
                if !phase.reversible && !self.confirm_irreversible {
                    let key = format!("{}/irreversible", phase.id);
                    match self.journal.decision(&key)? {
                        Some(decision) if decision.approved => {}
                        Some(decision) => {
                            return self.paused(
                                key,
                                format!("{} declined to start point of no return `{}`", decision.by, phase.id),
                            );
                        }
                        None => {
                            let reason = format!(
                                "phase `{}` is a point of no return; confirm it (`--confirm-irreversible`, or approve `{key}`)",
                                phase.id
                            );
                            return self.paused(key, reason);
                        }
                    }
                }
                self.record(Event::PhaseStarted { phase: phase.id.clone() })?;
            }
            let span = tracing::info_span!("phase", phase = %phase.id);
            match self.phase(phase).instrument(span.clone()).await? {
                End::Done => self.record(Event::PhasePassed { phase: phase.id.clone() })?,
                End::Failed(reason) | End::Cancelled(reason) => {
                    return self.rollback(phase, reason).instrument(span).await;
                }
                End::Paused { key, reason } => return self.paused(key, reason),
                End::Interrupted => return self.interrupted(),
            }
        }
        self.record(Event::RunFinished { status: RunStatus::Completed })?;
        Ok(Outcome::Completed)
    }

    async fn phase(&self, phase: &PhaseNode) -> Result<End, EngineError> {
        let alarm = Alarm::default();
        let phase_cancel = self.cancel.child_token();
        let steps_done = CancellationToken::new();
        // When waits take real time (a real clock, or a simulation's paced one), a watcher
        // samples alerts while the steps run; when they take none, alerts are sampled at
        // every step boundary (deterministically).
        let watched = self.clock.real_time(Duration::from_secs(60)).is_some();
        let steps = async {
            let mut watches = if watched { Vec::new() } else { self.alert_watches(phase) };
            let mut end = End::Done;
            for stage in &phase.stages {
                for watch in &mut watches {
                    self.sample_alert(phase, watch, &alarm, &phase_cancel).await?;
                }
                if phase_cancel.is_cancelled() {
                    end = End::Cancelled("the phase was cancelled".to_owned());
                    break;
                }
                end = self.stage(phase, stage, &phase_cancel).await?;
                if !matches!(end, End::Done) {
                    break;
                }
            }
            steps_done.cancel();
            Ok::<End, EngineError>(end)
        };
        let watch = async {
            if watched {
                self.watch_alerts(phase, &alarm, &phase_cancel, &steps_done).await;
            }
        };
        let (end, ()) = tokio::join!(steps, watch);
        let end = end?;
        if self.cancel.is_cancelled() {
            return Ok(End::Interrupted);
        }
        match alarm.get() {
            Some((AlertAction::Rollback, what)) => return Ok(End::Failed(what)),
            Some((AlertAction::Pause, what)) if matches!(end, End::Done) => {
                let key = format!("{}/alerts", phase.id);
                if self.journal.decision(&key)?.is_none_or(|d| !d.approved) {
                    return Ok(End::Paused { key, reason: format!("{what}; approve to go on, reject to roll back") });
                }
            }
            _ => {}
        }
        match end {
            End::Done => {}
            End::Cancelled(why) => return Ok(End::Failed(why)),
            other => return Ok(other),
        }
        let end = self.observe(phase).await?;
        if !matches!(end, End::Done) {
            return Ok(end);
        }
        for (key, prompt) in &phase.approvals {
            if self.journal.read(|s| s.phase(&phase.id).is_some_and(|p| p.gates.contains(key))) {
                continue;
            }
            match self.journal.decision(key)? {
                Some(decision) if decision.approved => {
                    self.record(Event::GateOpened { phase: phase.id.clone(), gate: key.clone() })?;
                }
                Some(decision) => return Ok(End::Failed(format!("approval `{key}` rejected by {}", decision.by))),
                None => return Ok(End::Paused { key: key.clone(), reason: prompt.clone() }),
            }
        }
        Ok(End::Done)
    }

    async fn stage(
        &self,
        phase: &PhaseNode,
        stage: &[StepNode],
        cancel: &CancellationToken,
    ) -> Result<End, EngineError> {
        if let [step] = stage {
            return self.step(phase, step, Role::Forward, cancel).await;
        }
        let group = cancel.child_token();
        let ends = join_all(stage.iter().map(|step| {
            let group = group.clone();
            async move {
                let end = self.step(phase, step, Role::Forward, &group).await;
                if !matches!(end, Ok(End::Done)) {
                    group.cancel();
                }
                end
            }
        }))
        .await;
        // The first real failure explains the others' cancellation.
        let rank = |end: &End| match end {
            End::Done => 0,
            End::Cancelled(_) => 1,
            End::Interrupted => 2,
            End::Paused { .. } => 3,
            End::Failed(_) => 4,
        };
        let mut result = End::Done;
        for end in ends {
            let end = end?;
            if rank(&end) > rank(&result) {
                result = end;
            }
        }
        Ok(result)
    }

    fn context(
        &self,
        phase: &str,
        step: &str,
        attempt: u32,
        checkpoint: Option<Value>,
        role: Role,
        cancel: &CancellationToken,
    ) -> Context {
        let state = &self.journal;
        Context {
            plan: self.graph.plan.metadata.name.to_string(),
            run_id: state.run.clone(),
            phase: phase.to_owned(),
            step: step.to_owned(),
            attempt,
            rolling_back: role != Role::Forward,
            clock: self.clock.clone(),
            cancel: cancel.clone(),
            checkpoint,
            endpoints: self.endpoints.clone(),
            resources: self.resources.clone(),
            policy: self.policy.clone(),
            sink: self.journal.clone(),
        }
    }

    /// Runs one step with its retries, unless it already finished.
    async fn step(
        &self,
        phase: &PhaseNode,
        step: &StepNode,
        role: Role,
        cancel: &CancellationToken,
    ) -> Result<End, EngineError> {
        let span = tracing::info_span!("step", step = %step.id, uses = %step.uses, ?role);
        async {
            let existing = self.journal.read(|s| s.phase(&phase.id).and_then(|p| p.steps.get(&step.id).cloned()));
            let mut attempt = 1;
            let mut checkpoint = None;
            if let Some(existing) = existing {
                if existing.finished {
                    return Ok(End::Done);
                }
                if existing.interrupted() && !existing.retry_settled && !(step.idempotent || step.resumable) {
                    let key = format!("{}/{}", phase.id, step.id);
                    return Ok(End::Paused {
                        reason: format!(
                            "step `{}` ({}) was running when the run stopped and is not idempotent: check whether it took effect, then `handoff resume --settle {key}=done` or `--settle {key}=retry`",
                            step.id,
                            step.uses
                        ),
                        key,
                    });
                }
                attempt = existing.attempts + 1;
                checkpoint = existing.checkpoint;
            }
            let Some(action) = self.executors.action(&step.uses) else {
                return Ok(End::Failed(format!("no action `{}`", step.uses)));
            };
            let attempts = step.attempts.max(attempt);
            loop {
                if cancel.is_cancelled() {
                    return Ok(if self.cancel.is_cancelled() { End::Interrupted } else { End::Cancelled(format!("step `{}` was cancelled", step.id)) });
                }
                self.record(Event::StepStarted { phase: phase.id.clone(), step: step.id.clone(), role, attempt })?;
                let cx = self.context(&phase.id, &step.id, attempt, checkpoint.clone(), role, cancel);
                let run = action.execute(&step.with, &cx);
                let result = match step.timeout {
                    Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                        Err(StepError::Failed(format!("timed out after {}", humantime::format_duration(limit))))
                    }),
                    None => run.await,
                };
                let error = match result {
                    Ok(output) => {
                        self.record(Event::StepFinished { phase: phase.id.clone(), step: step.id.clone(), role, output })?;
                        return Ok(End::Done);
                    }
                    Err(_) if self.cancel.is_cancelled() => return Ok(End::Interrupted),
                    Err(StepError::NeedsDecision { key, prompt }) => return Ok(End::Paused { key, reason: prompt }),
                    Err(StepError::Cancelled) => {
                        return Ok(End::Cancelled(format!("step `{}` was cancelled", step.id)));
                    }
                    Err(error) => error,
                };
                let retrying = matches!(error, StepError::Failed(_)) && attempt < attempts && step.idempotent;
                self.record(Event::StepFailed {
                    phase: phase.id.clone(),
                    step: step.id.clone(),
                    role,
                    attempt,
                    error: error.to_string(),
                    retrying,
                })?;
                if !retrying {
                    return Ok(End::Failed(format!("step `{}` ({}) failed: {error}", step.id, step.uses)));
                }
                let backoff = step.backoff.saturating_mul(1 << (attempt - 1).min(16));
                tokio::select! {
                    () = self.clock.sleep(backoff) => {}
                    () = cancel.cancelled() => return Ok(if self.cancel.is_cancelled() { End::Interrupted } else { End::Cancelled(format!("step `{}` was cancelled", step.id)) }),
                }
                attempt += 1;
                checkpoint =
                    self.journal.read(|s| s.phase(&phase.id).and_then(|p| p.steps.get(&step.id)?.checkpoint.clone()));
            }
        }
        .instrument(span)
        .await
    }

    fn alert_watches(&self, phase: &PhaseNode) -> Vec<AlertWatch> {
        let fired = self.journal.read(|s| s.phase(&phase.id).map(|p| p.alerts.clone()).unwrap_or_default());
        phase
            .alerts
            .iter()
            .filter(|a| !fired.contains(&a.name))
            .map(|a| AlertWatch::new(a.clone(), self.graph.plan.metrics.get(a.metric.as_str())))
            .collect()
    }

    /// Samples one alert; records it and raises the alarm when it fires.
    async fn sample_alert(
        &self,
        phase: &PhaseNode,
        watch: &mut AlertWatch,
        alarm: &Alarm,
        phase_cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let name = watch.alert.metric.to_string();
        let name = name.as_str();
        let Some(metric) = self.graph.plan.metrics.get(name) else { return Ok(()) };
        let value = self.metrics.sample(name, metric).await.unwrap_or_else(|error| {
            tracing::warn!(%error, alert = %watch.alert.name, "alert sample failed");
            None
        });
        if let Some(value) = watch.observe(value, self.clock.now()) {
            let action = watch.alert.action;
            let what = format!(
                "alert `{}` fired: {} = {value} {} {}",
                watch.alert.name,
                name,
                watch.alert.op.symbol(),
                watch.alert.threshold
            );
            tracing::info!("{what}");
            self.record(Event::AlertFired {
                phase: phase.id.clone(),
                alert: watch.alert.name.clone(),
                value,
                action: format!("{action:?}").to_lowercase(),
            })?;
            if action != AlertAction::Notify {
                alarm.raise(action, what);
                if action == AlertAction::Rollback {
                    phase_cancel.cancel();
                }
            }
        }
        Ok(())
    }

    /// Watches the phase's alerts while its steps run (when waits take real time).
    async fn watch_alerts(
        &self,
        phase: &PhaseNode,
        alarm: &Alarm,
        phase_cancel: &CancellationToken,
        done: &CancellationToken,
    ) {
        let mut watches = self.alert_watches(phase);
        if watches.is_empty() {
            return;
        }
        let interval = watches.iter().map(|w| w.interval).min().unwrap_or(Duration::from_secs(60));
        // Each sample is a query; on a fast-paced clock, no more than 20 a second.
        let tick = self.clock.real_time(interval).unwrap_or(interval).max(Duration::from_millis(50));
        loop {
            for watch in &mut watches {
                if let Err(error) = self.sample_alert(phase, watch, alarm, phase_cancel).await {
                    tracing::error!(%error, "cannot record an alert");
                }
            }
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// The observation after the steps: soak gates and criteria windows, with alerts.
    async fn observe(&self, phase: &PhaseNode) -> Result<End, EngineError> {
        let state = self.journal.state();
        let done = state.phase(&phase.id).map(|p| (p.gates.clone(), p.criteria.clone())).unwrap_or_default();
        let (gates, verdicts) = done;
        let soak = if gates.contains("soak") { Duration::ZERO } else { phase.soak };

        struct Pending<'c> {
            criterion: &'c handoff_plan::model::Criterion,
            window: Duration,
            interval: Duration,
            next: Timestamp,
            tally: Tally,
            decided: Option<(Verdict, String)>,
            range: bool,
        }
        let mut confirmations = Vec::new();
        let mut pending = Vec::new();
        // The criterion whose failure ended the observation before its end.
        let mut ended_early: Option<String> = None;
        let mut results: Vec<(&handoff_plan::model::Criterion, Verdict, String)> = Vec::new();
        for criterion in &phase.criteria {
            if let Some((verdict, detail)) = verdicts.get(criterion.id.as_str()) {
                results.push((criterion, *verdict, detail.clone()));
            } else if criterion.confirm.is_some() {
                confirmations.push(criterion);
            } else {
                let window = criterion.window.as_ref().map_or(Duration::ZERO, |w| w.get());
                let interval =
                    criterion.interval.as_ref().map_or_else(|| (window / 10).max(Duration::from_secs(10)), |i| i.get());
                let prometheus = criterion
                    .metric
                    .as_ref()
                    .and_then(|m| self.graph.plan.metrics.get(m.as_str()))
                    .is_some_and(|m| matches!(m.source, MetricSource::Prometheus { .. }));
                pending.push(Pending {
                    criterion,
                    window,
                    interval,
                    next: Timestamp::MAX,
                    tally: Tally::default(),
                    decided: None,
                    range: prometheus && !self.clock.is_virtual() && !window.is_zero(),
                });
            }
        }
        let total = pending.iter().map(|p| p.window).max().unwrap_or_default().max(soak);
        let start = self.clock.now();
        let end = start + SignedDuration::try_from(total).unwrap_or(SignedDuration::MAX);
        // A simulation samples each series at most about 500 times per observation.
        let floor = if self.clock.is_virtual() { total / 500 } else { Duration::ZERO };
        for p in &mut pending {
            // The floor never leaves a criterion fewer samples than it needs.
            let needed = p.criterion.min_samples.unwrap_or(1).max(1);
            let coarsest = if p.window.is_zero() { floor } else { (p.window / (needed + 1)).max(p.interval) };
            p.interval = p.interval.max(floor.min(coarsest)).max(Duration::from_millis(1));
            p.next = end - SignedDuration::try_from(p.window).unwrap_or_default();
        }
        let alarm = Alarm::default();
        let phase_cancel = self.cancel.child_token();
        let mut watches = self.alert_watches(phase);
        let mut alert_next: Vec<Timestamp> = watches.iter().map(|_| start).collect();
        for w in &mut watches {
            w.interval = w.interval.max(floor);
        }
        loop {
            if self.cancel.is_cancelled() {
                return Ok(End::Interrupted);
            }
            let now = self.clock.now();
            for (watch, next) in watches.iter_mut().zip(&mut alert_next) {
                if *next <= now {
                    self.sample_alert(phase, watch, &alarm, &phase_cancel).await?;
                    *next = now + watch.interval;
                }
            }
            if let Some((AlertAction::Rollback, what)) = alarm.get() {
                return Ok(End::Failed(what));
            }
            for p in pending.iter_mut().filter(|p| p.decided.is_none() && !p.range && p.next <= now) {
                let (Some(metric_id), Some(op), Some(limit)) =
                    (&p.criterion.metric, p.criterion.op, &p.criterion.threshold)
                else {
                    p.decided = Some((Verdict::Inconclusive, "the criterion names no metric".to_owned()));
                    continue;
                };
                let metric = self.graph.plan.metrics.get(metric_id.as_str());
                let threshold = threshold(limit, metric);
                let sample = match metric {
                    Some(metric) => self.metrics.sample(metric_id.as_str(), metric).await.map_err(|e| e.to_string()),
                    None => Err(format!("metric `{metric_id}` is not defined")),
                };
                p.tally.add(sample, |v| op.holds(v, threshold));
                p.next = now + p.interval;
                if p.tally.failed_for_good(p.criterion) || p.next > end {
                    p.decided = Some(p.tally.verdict(p.criterion));
                }
            }
            if now >= end {
                break;
            }
            let next = pending
                .iter()
                .filter(|p| p.decided.is_none() && !p.range)
                .map(|p| p.next)
                .chain(alert_next.iter().copied())
                .chain([end])
                .min()
                .unwrap_or(end)
                .min(end);
            // A criterion that failed for good ends the observation early.
            if let Some(failed) = pending.iter().find(|p| {
                matches!(p.decided, Some((Verdict::Fail, _))) && p.criterion.on_failure == FailureAction::Rollback
            }) {
                ended_early = Some(failed.criterion.id.to_string());
                break;
            }
            let wait = next.duration_since(now).unsigned_abs();
            tokio::select! {
                () = self.clock.sleep(wait) => {}
                () = self.cancel.cancelled() => return Ok(End::Interrupted),
            }
        }
        if !soak.is_zero() && self.clock.now() >= end {
            self.record(Event::GateOpened { phase: phase.id.clone(), gate: "soak".to_owned() })?;
        }
        for p in &mut pending {
            if p.range && p.decided.is_none() {
                p.decided = Some(self.range_verdict(p.criterion, p.window, p.interval, end).await);
            }
            let (verdict, detail) = p.decided.take().unwrap_or_else(|| {
                let (verdict, detail) = p.tally.verdict(p.criterion);
                match &ended_early {
                    Some(failed) => (verdict, format!("{detail}; observation cut short: `{failed}` failed")),
                    None => (verdict, detail),
                }
            });
            self.record(Event::CriterionEvaluated {
                phase: phase.id.clone(),
                criterion: p.criterion.id.to_string(),
                verdict,
                samples: p.tally.values,
                failed: p.tally.failed,
                detail: detail.clone(),
            })?;
            results.push((p.criterion, verdict, detail));
        }
        for criterion in confirmations {
            let key = format!("{}/{}", phase.id, criterion.id);
            let prompt = criterion.confirm.as_ref().map(|c| c.prompt.clone()).unwrap_or_default();
            let (verdict, detail) = match self.journal.decision(&key)? {
                Some(d) if d.approved => (Verdict::Pass, format!("confirmed by {}", d.by)),
                Some(d) => (Verdict::Fail, format!("denied by {}", d.by)),
                None => return Ok(End::Paused { key, reason: prompt }),
            };
            self.record(Event::CriterionEvaluated {
                phase: phase.id.clone(),
                criterion: criterion.id.to_string(),
                verdict,
                samples: 0,
                failed: 0,
                detail: detail.clone(),
            })?;
            results.push((criterion, verdict, detail));
        }
        self.judge(phase, &results)
    }

    async fn range_verdict(
        &self,
        criterion: &handoff_plan::model::Criterion,
        window: Duration,
        interval: Duration,
        end: Timestamp,
    ) -> (Verdict, String) {
        let mut tally = Tally::default();
        let (Some(metric_id), Some(op), Some(limit)) = (&criterion.metric, criterion.op, &criterion.threshold) else {
            return tally.verdict(criterion);
        };
        let Some(metric) = self.graph.plan.metrics.get(metric_id.as_str()) else { return tally.verdict(criterion) };
        let threshold = threshold(limit, Some(metric));
        let start = end - SignedDuration::try_from(window).unwrap_or_default();
        match self.metrics.range(metric_id.as_str(), metric, (start, end), interval).await {
            Ok(values) => {
                values.unwrap_or_default().into_iter().for_each(|v| tally.add(Ok(Some(v)), |v| op.holds(v, threshold)))
            }
            Err(error) => tally.add(Err(error.to_string()), |_| true),
        }
        tally.verdict(criterion)
    }

    /// What the phase's verdicts mean.
    fn judge(
        &self,
        phase: &PhaseNode,
        results: &[(&handoff_plan::model::Criterion, Verdict, String)],
    ) -> Result<End, EngineError> {
        // A failure rolls back even when another criterion would pause for a person.
        let mut pause = None;
        for (criterion, verdict, detail) in results {
            if *verdict == Verdict::Pass {
                continue;
            }
            let key = format!("{}/{}", phase.id, criterion.id);
            let what = format!("criterion `{}` ({}) is {verdict:?}: {detail}", criterion.id, criterion.description)
                .replace("ProviderError", "provider error");
            let decided = self.journal.read(|s| s.decisions.get(&key).cloned());
            match (verdict, criterion.on_failure, decided) {
                (_, _, Some(d)) if d.approved => continue,
                (_, _, Some(d)) => return Ok(End::Failed(format!("{what}; {} rejected going on", d.by))),
                (Verdict::Fail, FailureAction::Warn, None) => tracing::warn!("{what}"),
                (Verdict::Fail, FailureAction::Rollback, None) => return Ok(End::Failed(what)),
                _ => {
                    pause.get_or_insert(End::Paused {
                        key,
                        reason: format!("{what}; approve to go on, reject to roll back"),
                    });
                }
            }
        }
        Ok(pause.unwrap_or(End::Done))
    }

    /// Rolls a phase back: completed steps compensated in reverse, then the rollback
    /// steps, timed against the budget. Continues an interrupted rollback.
    pub(crate) async fn rollback(&self, phase: &PhaseNode, reason: String) -> Result<Outcome, EngineError> {
        let state = self.journal.state();
        let started_at = match state.phase(&phase.id).and_then(|p| p.rollback.as_ref()) {
            Some(rollback) => rollback.started_at,
            None => {
                tracing::info!(phase = %phase.id, "rolling back: {reason}");
                self.record(Event::RollbackStarted { phase: phase.id.clone(), reason: reason.clone() })?;
                self.clock.now()
            }
        };
        let mut failures = Vec::new();
        let state = self.journal.state();
        let phase_state = state.phase(&phase.id).cloned().unwrap_or_default();
        for id in phase_state.finished_order.iter().rev() {
            if phase_state.compensated.contains(id) {
                continue;
            }
            let (Some(step), Some(done)) = (self.graph.step(&phase.id, id), phase_state.steps.get(id)) else {
                continue;
            };
            let Some(action) = self.executors.action(&step.uses) else { continue };
            self.record(Event::StepStarted {
                phase: phase.id.clone(),
                step: id.clone(),
                role: Role::Compensate,
                attempt: 1,
            })?;
            let cx = self.context(&phase.id, id, 1, None, Role::Compensate, &self.cancel);
            let span = tracing::info_span!("compensate", step = %id, uses = %step.uses);
            match action.compensate(&step.with, &done.output, &cx).instrument(span).await {
                Ok(compensation) => {
                    let outcome = match compensation {
                        Compensation::NotNeeded => "nothing to undo".to_owned(),
                        Compensation::Undone(what) => format!("undone: {what}"),
                        Compensation::LeftToRollback => "left to the rollback steps".to_owned(),
                    };
                    self.record(Event::StepCompensated { phase: phase.id.clone(), step: id.clone(), outcome })?;
                }
                Err(_) if self.cancel.is_cancelled() => return self.interrupted(),
                Err(error) => {
                    self.record(Event::StepFailed {
                        phase: phase.id.clone(),
                        step: id.clone(),
                        role: Role::Compensate,
                        attempt: 1,
                        error: error.to_string(),
                        retrying: false,
                    })?;
                    failures.push(format!("undoing `{id}` failed: {error}"));
                }
            }
        }
        for step in &phase.rollback {
            match self.step(phase, step, Role::Rollback, &self.cancel).await? {
                End::Done => {}
                End::Failed(why) | End::Cancelled(why) => failures.push(why),
                End::Paused { key, reason } => return self.paused(key, reason),
                End::Interrupted => return self.interrupted(),
            }
        }
        let elapsed = self.clock.now().duration_since(started_at);
        let budget = phase.budget.map(|b| b.as_secs_f64());
        let breached = budget.is_some_and(|b| seconds(elapsed) > b);
        self.record(Event::RollbackFinished {
            phase: phase.id.clone(),
            ok: failures.is_empty(),
            seconds: seconds(elapsed),
            budget_seconds: budget,
            breached,
        })?;
        if breached {
            failures.push(format!(
                "the rollback took {:.1}s, over its budget of {:.0}s",
                seconds(elapsed),
                budget.unwrap_or_default()
            ));
        }
        let status = if failures.is_empty() { RunStatus::RolledBack } else { RunStatus::RollbackFailed };
        self.record(Event::RunFinished { status })?;
        Ok(if failures.is_empty() {
            Outcome::RolledBack { phase: phase.id.clone(), reason, seconds: seconds(elapsed) }
        } else {
            Outcome::RollbackFailed { phase: phase.id.clone(), reason: format!("{reason}; {}", failures.join("; ")) }
        })
    }
}
