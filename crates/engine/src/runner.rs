//! The runner: phases in order, steps in stages, gates, criteria and alerts, compensation
//! and rollback within budget — every transition written to the journal first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use handoff_executor::{
    Clock, Compensation, Context, DecisionKey, DynAction, Endpoints, Executors, Policy, StepError, StepOutput,
};
use handoff_plan::model::{AlertAction, FailureAction};
use handoff_plan::units::Measured;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::EngineError;
use crate::analysis::{Background, Earlier};
use crate::events::{Event, Role, RunStatus, Verdict};
use crate::graph::{ApprovalGate, CriterionCheck, CriterionNode, Graph, MetricCheck, PhaseNode, StepNode};
use crate::journal::Journal;
use crate::metrics::{MetricProvider, Metrics};
use crate::observe::{AlertWatch, Tally};
use crate::schedule::{Judged, Next, Observation, RangeQuery};
use crate::state::{PhaseState, Sleep, StepState};

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
        key: DecisionKey,
        /// The question.
        reason: String,
        /// How the person answers.
        answer: Answer,
    },
    /// Interrupted (signal, lost lock); resume continues.
    Interrupted {
        /// Why.
        reason: String,
    },
    /// A person aborted the run.
    Aborted,
    /// Asleep through a phase's observation until `until` (`RunOptions::detach_over`):
    /// the lock is released; resuming before then ends here again at once.
    Waiting {
        /// When the run wants to wake.
        until: Timestamp,
    },
}

/// How a person answers a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// With a decision: `handoff approve KEY [--reject]`, then `handoff resume`.
    Approve,
    /// By saying whether what was running when the run stopped took effect: `handoff
    /// resume --settle KEY=done` (it did) or `--settle KEY=retry` (it did not).
    Settle,
}

/// What the reason of an abort's rollback starts with (a rollback resumed after it paused
/// for a person is still an abort).
pub(crate) const ABORTED: &str = "aborted: ";

/// The suffix of the key that settles a step's interrupted undo (`<phase>/<step>/undo`).
pub(crate) const UNDO: &str = "/undo";

/// How a phase or step ended.
#[derive(Debug)]
pub(crate) enum End {
    Done,
    Failed(String),
    /// Cancelled because a sibling failed or an alert fired; the cause explains it.
    Cancelled(String),
    Paused {
        key: DecisionKey,
        reason: String,
    },
    /// Something that was running when the run stopped may or may not have taken effect;
    /// a person settles it.
    Unsettled {
        key: DecisionKey,
        reason: String,
    },
    Interrupted,
    /// Asleep through the observation until then.
    Waiting(Timestamp),
}

/// How undoing one step ended.
enum Undo {
    Done,
    Failed(String),
    Interrupted,
}

/// A criterion's verdict and its account.
type Judgement<'p> = (&'p CriterionNode, Verdict, String);

/// An alert that asked for more than a notification.
#[derive(Debug, Default)]
pub(crate) struct Alarm(Mutex<Option<(AlertAction, String)>>);

impl Alarm {
    pub(crate) fn raise(&self, action: AlertAction, what: String) {
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
    /// Sleep through observations longer than this on a real clock (release the lock, end
    /// with `Outcome::Waiting`).
    pub(crate) detach_over: Option<Duration>,
}

fn seconds(duration: SignedDuration) -> f64 {
    duration.as_secs_f64().max(0.0)
}

/// Plan time from `start` to `now` (zero if the clock went back).
pub(crate) fn since(start: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(start)).unwrap_or_default()
}

impl Runner<'_> {
    pub(crate) fn record(&self, event: Event) -> Result<(), EngineError> {
        self.journal.record(event).map(drop).map_err(EngineError::from)
    }

    fn interrupted(&self) -> Result<Outcome, EngineError> {
        let reason = self.interrupt_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        self.record(Event::Interrupted { reason: reason.clone() })?;
        Ok(Outcome::Interrupted { reason })
    }

    fn paused(&self, key: DecisionKey, reason: String) -> Result<Outcome, EngineError> {
        self.asked(key, reason, Answer::Approve)
    }

    fn asked(&self, key: DecisionKey, reason: String, answer: Answer) -> Result<Outcome, EngineError> {
        self.record(Event::Paused { key: key.to_string(), reason: reason.clone() })?;
        Ok(Outcome::Paused { key, reason, answer })
    }

    /// How a phase's stop ends the run, when it is a question or an interruption.
    fn stopped(&self, end: End) -> Result<Outcome, EngineError> {
        match end {
            End::Paused { key, reason } => self.paused(key, reason),
            End::Unsettled { key, reason } => self.asked(key, reason, Answer::Settle),
            End::Waiting(until) => Ok(Outcome::Waiting { until }),
            _ => self.interrupted(),
        }
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
                if crate::hosted::Hosted::posted(&step_state.output) {
                    continue; // a worker hosts it: its job outlives this process
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
            if let Some(phase) = current.and_then(|id| self.graph.phase(&id)) {
                return self
                    .rollback(phase, failure)
                    .instrument(tracing::info_span!("rollback", phase = %phase.id))
                    .await;
            }
        }
        for phase in &self.graph.phases {
            let (started, passed, rollback) = self.journal.read(|s| {
                let state = s.phase(&phase.id);
                let rollback = state.and_then(|p| Some(p.rollback.as_ref()?.reason.clone()));
                (state.is_some(), state.is_some_and(|p| p.passed), rollback)
            });
            if passed {
                continue;
            }
            if let Some(reason) = rollback {
                let span = tracing::info_span!("rollback", phase = %phase.id);
                return if reason.starts_with(ABORTED) {
                    self.abort(phase, reason).instrument(span).await
                } else {
                    self.rollback(phase, reason).instrument(span).await
                };
            }
            if !started {
                if let Some(outcome) = self.confirm_start(phase)? {
                    return Ok(outcome);
                }
                self.record(Event::PhaseStarted { phase: phase.id.clone() })?;
            }
            let span = tracing::info_span!("phase", phase = %phase.id);
            match self.phase(phase).instrument(span.clone()).await? {
                End::Done => self.record(Event::PhasePassed { phase: phase.id.clone() })?,
                End::Failed(reason) | End::Cancelled(reason) => {
                    return self.rollback(phase, reason).instrument(span).await;
                }
                end => return self.stopped(end),
            }
        }
        self.record(Event::RunFinished { status: RunStatus::Completed })?;
        Ok(Outcome::Completed)
    }

    /// Whether a phase may start: a point of no return needs `--confirm-irreversible` or
    /// an approval; else the run pauses (or stops, declined).
    fn confirm_start(&self, phase: &PhaseNode) -> Result<Option<Outcome>, EngineError> {
        if phase.reversible || self.confirm_irreversible {
            return Ok(None);
        }
        let key = DecisionKey::irreversible(&phase.id);
        match self.journal.decision(&key)? {
            Some(decision) if decision.approved => Ok(None),
            Some(decision) => {
                let reason = format!("{} declined to start point of no return `{}`", decision.by, phase.id);
                self.paused(key, reason).map(Some)
            }
            None => {
                let reason = format!(
                    "phase `{}` is a point of no return; confirm it (`--confirm-irreversible`, or approve `{key}`)",
                    phase.id
                );
                self.paused(key, reason).map(Some)
            }
        }
    }

    /// A phase: its stages with alerts watched, then the observation, then its approvals.
    async fn phase(&self, phase: &PhaseNode) -> Result<End, EngineError> {
        let alarm = Alarm::default();
        let (end, earlier) = self.stages(phase, &alarm).await?;
        if self.cancel.is_cancelled() {
            return Ok(End::Interrupted);
        }
        match alarm.get() {
            Some((AlertAction::Rollback, what)) => return Ok(End::Failed(what)),
            Some((AlertAction::Pause, what)) if matches!(end, End::Done) => {
                let key = DecisionKey::alerts(&phase.id);
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
        let end = self.observe(phase, &earlier).await?;
        if !matches!(end, End::Done) {
            return Ok(end);
        }
        self.approvals(phase)
    }

    /// Runs a phase's stages in order while its alerts are watched; returns how they ended
    /// and the criteria's samples taken meanwhile.
    async fn stages(&self, phase: &PhaseNode, alarm: &Alarm) -> Result<(End, Earlier), EngineError> {
        let phase_cancel = self.cancel.child_token();
        let steps_done = CancellationToken::new();
        // When waits take real time (a real clock, or a simulation's paced one), a watcher
        // samples alerts while the steps run; when they take none, alerts are sampled at
        // every step boundary (deterministically).
        let watched = self.clock.real_time(Duration::from_secs(60)).is_some();
        let steps = async {
            let mut watches = if watched { Vec::new() } else { self.alert_watches(phase) };
            let mut background = (!watched).then(|| Background::new(phase, (false, false)));
            let mut end = End::Done;
            for stage in &phase.stages {
                for watch in &mut watches {
                    self.sample_alert(phase, watch, alarm, &phase_cancel).await?;
                }
                self.background_due(phase, background.as_mut(), alarm, &phase_cancel).await?;
                if phase_cancel.is_cancelled() {
                    end = End::Cancelled("the phase was cancelled".to_owned());
                    break;
                }
                end = self.stage(phase, stage, &phase_cancel).await?;
                if !matches!(end, End::Done) {
                    break;
                }
            }
            if matches!(end, End::Done) {
                self.background_due(phase, background.as_mut(), alarm, &phase_cancel).await?;
            }
            if let Some(background) = background.as_ref().filter(|_| matches!(end, End::Done)) {
                self.finish_background(phase, background, &phase_cancel)?;
            }
            steps_done.cancel();
            Ok::<(End, Option<Background<'_>>), EngineError>((end, background))
        };
        let watch =
            async { if watched { self.watch_alerts(phase, alarm, &phase_cancel, &steps_done).await } else { None } };
        let (steps, watched) = tokio::join!(steps, watch);
        let (end, background) = steps?;
        Ok((end, background.or(watched).map(Background::earlier).unwrap_or_default()))
    }

    /// The phase's approval gates, in order: opened once approved.
    fn approvals(&self, phase: &PhaseNode) -> Result<End, EngineError> {
        for gate in &phase.approvals {
            let key = gate.key.to_string();
            if self.journal.read(|s| s.phase(&phase.id).is_some_and(|p| p.gates.contains(&key))) {
                continue;
            }
            if gate.require.is_empty() || self.journal.decides_automatically() {
                match self.journal.decision(&gate.key)? {
                    Some(decision) if decision.approved => {}
                    Some(decision) => return Ok(End::Failed(format!("approval `{key}` rejected by {}", decision.by))),
                    None => return Ok(End::Paused { key: gate.key.clone(), reason: gate.prompt.clone() }),
                }
            } else if let Some(end) = self.approvers_missing(gate) {
                return Ok(end);
            }
            self.record(Event::GateOpened { phase: phase.id.clone(), gate: key })?;
        }
        Ok(End::Done)
    }

    /// For a gate that needs several approvers: the run's end when they have not all
    /// approved yet (each person's latest decision counts; one rejection fails the gate).
    fn approvers_missing(&self, gate: &ApprovalGate) -> Option<End> {
        let key = gate.key.to_string();
        let mut latest: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
        for decision in self.journal.read(|s| s.approvals.get(&key).cloned().unwrap_or_default()) {
            latest.insert(decision.by, decision.approved);
        }
        if let Some((by, _)) = latest.iter().find(|(_, approved)| !**approved) {
            return Some(End::Failed(format!("approval `{key}` rejected by {by}")));
        }
        let approved: Vec<&str> = latest.keys().map(String::as_str).collect();
        let missing = handoff_plan::model::missing_approvals(&gate.require, &self.graph.plan.approvers, &approved);
        if missing.is_empty() {
            return None;
        }
        let needs: Vec<String> = missing.iter().map(|m| format!("{} more from `{}`", m.count, m.group)).collect();
        let so_far = if approved.is_empty() { "nobody yet".to_owned() } else { approved.join(", ") };
        let reason = format!("{} (needs {}; approved by {so_far})", gate.prompt, needs.join(" and "));
        Some(End::Paused { key: gate.key.clone(), reason })
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
            End::Paused { .. } | End::Unsettled { .. } | End::Waiting(_) => 3,
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
            masks: Default::default(),
            analysis: None,
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
            if let Some(end) = self.analysis_answered(phase, step)? {
                return Ok(end);
            }
            let (attempt, checkpoint) = match self.resume_point(phase, step) {
                Ok(start) => start,
                Err(end) => return Ok(end),
            };
            let Some(action) = self.executors.action(&step.uses) else {
                return Ok(End::Failed(format!("no action `{}`", step.uses)));
            };
            self.attempts(phase, step, action, role, cancel, (attempt, checkpoint)).await
        }
        .instrument(span)
        .await
    }

    /// Where a step starts: its first attempt, or the attempt after the last one recorded
    /// (with its checkpoint). Not at all when it finished, or when it was interrupted, is
    /// not safe to run again and nobody settled it (the end says so).
    fn resume_point(&self, phase: &PhaseNode, step: &StepNode) -> Result<(u32, Option<Value>), End> {
        let existing = self.journal.read(|s| s.phase(&phase.id).and_then(|p| p.steps.get(&step.id).cloned()));
        let Some(existing) = existing else { return Ok((1, None)) };
        if existing.finished {
            return Err(End::Done);
        }
        if existing.interrupted() && !existing.retry_settled && !(step.idempotent || step.resumable) {
            let key = DecisionKey::step(&phase.id, &step.id);
            return Err(End::Unsettled {
                reason: format!(
                    "step `{}` ({}) was running when the run stopped and is not idempotent: check whether it took effect, then `handoff resume --settle {key}=done` or `--settle {key}=retry`",
                    step.id, step.uses
                ),
                key,
            });
        }
        Ok((existing.attempts + 1, existing.checkpoint))
    }

    /// How a step ends when its cancellation token fired: interrupted with the run, else
    /// cancelled with its stage or phase.
    fn cancelled(&self, step: &StepNode) -> End {
        if self.cancel.is_cancelled() {
            End::Interrupted
        } else {
            End::Cancelled(format!("step `{}` was cancelled", step.id))
        }
    }

    /// A step's attempts from `start` (attempt number, checkpoint), with backoff between.
    async fn attempts(
        &self,
        phase: &PhaseNode,
        step: &StepNode,
        action: &dyn DynAction,
        role: Role,
        cancel: &CancellationToken,
        start: (u32, Option<Value>),
    ) -> Result<End, EngineError> {
        let (mut attempt, mut checkpoint) = start;
        let attempts = step.attempts.max(attempt);
        loop {
            if cancel.is_cancelled() {
                return Ok(self.cancelled(step));
            }
            self.record(Event::StepStarted { phase: phase.id.clone(), step: step.id.clone(), role, attempt })?;
            let mut cx = self.context(&phase.id, &step.id, attempt, checkpoint.clone(), role, cancel);
            let (result, stopped) = self.analysed(phase, step, action, &mut cx).await?;
            let error = match (result, stopped) {
                (Ok(output), stopped) => {
                    self.record(Event::StepFinished { phase: phase.id.clone(), step: step.id.clone(), role, output })?;
                    return Ok(stopped.unwrap_or(End::Done));
                }
                (Err(_), _) if self.cancel.is_cancelled() => return Ok(End::Interrupted),
                (Err(StepError::NeedsDecision { key, prompt }), _) => return Ok(paused_by_step(step, &key, prompt)),
                // Analysis stopped the step where it stood (no retry can change the verdict):
                // like a step an alert cancelled, it may have taken effect, and a rollback
                // undoes it.
                (Err(_), Some(stopped)) => return Ok(stopped),
                (Err(StepError::Cancelled), None) => {
                    return Ok(End::Cancelled(format!("step `{}` was cancelled", step.id)));
                }
                (Err(error), None) => error,
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
                () = cancel.cancelled() => return Ok(self.cancelled(step)),
            }
            attempt += 1;
            checkpoint =
                self.journal.read(|s| s.phase(&phase.id).and_then(|p| p.steps.get(&step.id)?.checkpoint.clone()));
        }
    }

    /// One attempt of a step, within its timeout.
    pub(crate) async fn execute(
        &self,
        step: &StepNode,
        action: &dyn DynAction,
        cx: &Context,
    ) -> Result<StepOutput, StepError> {
        if let Some(hosted) = self.journal.hosted.get().filter(|h| h.post && step.background && !cx.rolling_back) {
            return hosted.post(&self.journal.run, &step.uses, &step.with, cx).map_err(StepError::Failed);
        }
        let run = action.execute(&step.with, cx);
        match step.timeout {
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(StepError::Failed(format!("timed out after {}", humantime::format_duration(limit))))
            }),
            None => run.await,
        }
    }

    pub(crate) fn alert_watches(&self, phase: &PhaseNode) -> Vec<AlertWatch> {
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
        if let Some(value) = watch.observe(value, self.clock.now())
            && let Some((action, what)) = self.alert_fired(phase, watch, value)?
        {
            alarm.raise(action, what);
            if action == AlertAction::Rollback {
                phase_cancel.cancel();
            }
        }
        Ok(())
    }

    /// Records that `watch`'s alert fired at `value`; its action and account unless it
    /// only notifies.
    fn alert_fired(
        &self,
        phase: &PhaseNode,
        watch: &AlertWatch,
        value: f64,
    ) -> Result<Option<(AlertAction, String)>, EngineError> {
        let action = watch.alert.action;
        let (alert, metric) = (&watch.alert, &watch.alert.metric);
        let what = format!(
            "alert `{}` fired: {metric} = {} {} {}",
            alert.name,
            Measured(value),
            alert.op.symbol(),
            alert.threshold
        );
        tracing::info!("{what}");
        self.record(Event::AlertFired {
            phase: phase.id.clone(),
            alert: watch.alert.name.clone(),
            value,
            action: format!("{action:?}").to_lowercase(),
        })?;
        Ok((action != AlertAction::Notify).then_some((action, what)))
    }

    /// Watches the phase's alerts and samples its criteria while its steps run (when waits
    /// take real time); returns what it sampled.
    async fn watch_alerts<'p>(
        &self,
        phase: &'p PhaseNode,
        alarm: &Alarm,
        phase_cancel: &CancellationToken,
        done: &CancellationToken,
    ) -> Option<Background<'p>> {
        let mut watches = self.alert_watches(phase);
        let mut background = Background::new(phase, (true, !self.clock.is_virtual()));
        if watches.is_empty() && background.is_empty() {
            return None;
        }
        let interval = watches.iter().map(|w| w.interval).chain(background.intervals()).min();
        let interval = interval.unwrap_or(Duration::from_secs(60));
        // Each sample is a query; on a fast-paced clock, no more than 20 a second.
        let tick = self.clock.real_time(interval).unwrap_or(interval).max(Duration::from_millis(50));
        loop {
            for watch in &mut watches {
                if let Err(error) = self.sample_alert(phase, watch, alarm, phase_cancel).await {
                    tracing::error!(%error, "cannot record an alert");
                }
            }
            if let Err(error) = self.background_due(phase, Some(&mut background), alarm, phase_cancel).await {
                tracing::error!(%error, "cannot record background analysis");
            }
            tokio::select! {
                () = done.cancelled() => {
                    if let Err(error) = self.finish_background(phase, &background, phase_cancel) {
                        tracing::error!(%error, "cannot record background analysis");
                    }
                    return Some(background);
                }
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// The observation after the steps: soak gates and criteria windows (which end with
    /// the phase and overlap the steps: `earlier` holds the samples taken while they ran),
    /// with alerts; then criteria people confirm, then what the verdicts mean.
    async fn observe(&self, phase: &PhaseNode, earlier: &Earlier) -> Result<End, EngineError> {
        let (soaked, verdicts, started) = self.journal.read(|s| {
            let state = s.phase(&phase.id);
            let started = state.and_then(|p| p.started_at);
            state.map(|p| (p.gates.contains("soak"), p.criteria.clone(), started)).unwrap_or_default()
        });
        let mut results: Vec<Judgement<'_>> = Vec::new();
        let mut confirmations = Vec::new();
        let mut sampled = Vec::new();
        for criterion in &phase.criteria {
            match (verdicts.get(&criterion.id), &criterion.check) {
                (Some(result), _) => results.push((criterion, result.verdict, result.detail.clone())),
                (None, CriterionCheck::Confirm { prompt }) => confirmations.push((criterion, prompt.as_str())),
                (None, _) => sampled.push(criterion),
            }
        }
        let mut watches = self.alert_watches(phase);
        let intervals: Vec<Duration> = watches.iter().map(|w| w.interval).collect();
        let soak = if soaked { Duration::ZERO } else { phase.soak };
        let start = self.clock.now();
        let elapsed = started.map_or(Duration::ZERO, |started| since(started, start));
        let mut observation = Observation::new(&sampled, soak, &intervals, (self.clock.is_virtual(), elapsed));
        for (index, criterion) in sampled.iter().enumerate() {
            let taken = earlier.get(&criterion.id).into_iter().flatten();
            let taken: Vec<_> = taken.map(|(at, sample)| (since(*at, start), sample.clone())).collect();
            observation.earlier(index, &taken);
        }
        let slept = self.journal.read(|s| s.phase(&phase.id).and_then(|p| p.sleeping));
        let long = self.detach_over.is_some_and(|over| !self.clock.is_virtual() && observation.end() > over);
        match slept {
            Some(sleep) if start < sleep.until => return Ok(End::Waiting(sleep.until)),
            Some(sleep) => match self.judge_slept(phase, &sampled, &mut watches, sleep).await? {
                Ok(judged) => results.extend(judged),
                Err(end) => return Ok(end),
            },
            None if long => {
                let until = start + SignedDuration::try_from(observation.end()).unwrap_or(SignedDuration::MAX);
                self.record(Event::Sleeping { phase: phase.id.clone(), until })?;
                return Ok(End::Waiting(until));
            }
            None => {
                if let Some(end) = self.watch(phase, &mut observation, &mut watches, start).await? {
                    return Ok(end);
                }
                results.extend(self.record_verdicts(phase, observation, start).await?);
            }
        }
        for (criterion, prompt) in confirmations {
            match self.confirmation(phase, criterion, prompt)? {
                Ok(judgement) => results.push(judgement),
                Err(paused) => return Ok(paused),
            }
        }
        self.judge(phase, &results)
    }

    /// Drives an observation on the run's clock: samples what is due and waits for the
    /// next, until it stops. An alert that rolls back, or the run's cancellation, ends the
    /// phase (returned).
    pub(crate) async fn watch(
        &self,
        phase: &PhaseNode,
        observation: &mut Observation<'_>,
        watches: &mut [AlertWatch],
        start: Timestamp,
    ) -> Result<Option<End>, EngineError> {
        let alarm = Alarm::default();
        let phase_cancel = self.cancel.child_token();
        loop {
            if self.cancel.is_cancelled() {
                return Ok(Some(End::Interrupted));
            }
            let now = since(start, self.clock.now());
            for index in observation.alerts_due(now) {
                self.sample_alert(phase, &mut watches[index], &alarm, &phase_cancel).await?;
            }
            if let Some((AlertAction::Rollback, what)) = alarm.get() {
                return Ok(Some(End::Failed(what)));
            }
            for (index, check) in observation.criteria_due(now) {
                observation.sampled(index, self.sample_metric(check).await);
            }
            let Next::Wait(wait) = observation.next(now) else { return Ok(None) };
            tokio::select! {
                () = self.clock.sleep(wait) => {}
                () = self.cancel.cancelled() => return Ok(Some(End::Interrupted)),
            }
        }
    }

    /// One sample of a criterion's metric.
    pub(crate) async fn sample_metric(&self, check: &MetricCheck) -> Result<Option<f64>, String> {
        self.plan_metric(&check.metric).await
    }

    /// One sample of the plan's metric `id`.
    pub(crate) async fn plan_metric(&self, id: &str) -> Result<Option<f64>, String> {
        match self.graph.plan.metrics.get(id) {
            Some(metric) => self.metrics.sample(id, metric).await.map_err(|e| e.to_string()),
            None => Err(format!("metric `{id}` is not defined")),
        }
    }

    /// Records how an observation (started at `start`) ended: the soak gate, when it
    /// opened, and every sampled criterion's verdict (range queries made now).
    async fn record_verdicts<'p>(
        &self,
        phase: &'p PhaseNode,
        observation: Observation<'p>,
        start: Timestamp,
    ) -> Result<Vec<Judgement<'p>>, EngineError> {
        if observation.soak_opens(since(start, self.clock.now())) {
            self.record(Event::GateOpened { phase: phase.id.clone(), gate: "soak".to_owned() })?;
        }
        let mut results = Vec::new();
        for judged in self.judged(observation, start).await {
            self.record(Event::CriterionEvaluated {
                phase: phase.id.clone(),
                criterion: judged.criterion.id.clone(),
                verdict: judged.verdict,
                samples: judged.tally.values,
                failed: judged.tally.failed,
                detail: judged.detail.clone(),
                last: judged.tally.last,
            })?;
            results.push((judged.criterion, judged.verdict, judged.detail));
        }
        Ok(results)
    }

    /// The verdicts of an observation started at `start` (range queries made now).
    pub(crate) async fn judged<'p>(&self, mut observation: Observation<'p>, start: Timestamp) -> Vec<Judged<'p>> {
        let end = start + SignedDuration::try_from(observation.end()).unwrap_or(SignedDuration::MAX);
        for query in observation.range_queries() {
            let verdict = self.range_verdict(&query, end).await;
            observation.decide(query.index, verdict);
        }
        let mut verdicts = observation.verdicts();
        for judged in &mut verdicts {
            self.power(judged).await;
        }
        verdicts
    }

    /// Judges, after the run slept through it, a phase's observation from `sleep.since` to
    /// `sleep.until` from range queries: each alert over the window with its `for:` (one
    /// that fired acts as it would have; one whose provider cannot answer for the past
    /// pauses for a person under `<phase>/alerts`), then the soak gate opens and each
    /// sampled criterion is decided over the whole window — inconclusive when its provider
    /// cannot answer for the past (HTTP JSON, emitted), never a pass.
    async fn judge_slept<'p>(
        &self,
        phase: &PhaseNode,
        sampled: &[&'p CriterionNode],
        watches: &mut [AlertWatch],
        sleep: Sleep,
    ) -> Result<Result<Vec<Judgement<'p>>, End>, EngineError> {
        for watch in watches.iter_mut() {
            if let Some(end) = self.alert_slept(phase, watch, sleep).await? {
                return Ok(Err(end));
            }
        }
        self.record(Event::GateOpened { phase: phase.id.clone(), gate: "soak".to_owned() })?;
        let mut results = Vec::new();
        for criterion in sampled {
            let (verdict, detail, tally) = match &criterion.check {
                CriterionCheck::Metric(check) => self.slept_verdict(check, sleep).await,
                _ => (Verdict::Inconclusive, "nothing decides it".to_owned(), Tally::default()),
            };
            self.record(Event::CriterionEvaluated {
                phase: phase.id.clone(),
                criterion: criterion.id.clone(),
                verdict,
                samples: tally.values,
                failed: tally.failed,
                detail: detail.clone(),
                last: tally.last,
            })?;
            results.push((*criterion, verdict, detail));
        }
        Ok(Ok(results))
    }

    /// A criterion over the slept window, read as one range query.
    async fn slept_verdict(&self, check: &MetricCheck, sleep: Sleep) -> (Verdict, String, Tally) {
        let mut tally = Tally::default();
        let Some(metric) = self.graph.plan.metrics.get(check.metric.as_str()) else {
            return (Verdict::Inconclusive, format!("metric `{}` is not defined", check.metric), tally);
        };
        match self.metrics.range(&check.metric, metric, (sleep.since, sleep.until), check.interval()).await {
            Ok(Some(values)) => values.into_iter().for_each(|v| tally.add(Ok(Some(v)), |v| check.holds(v))),
            Ok(None) => {
                let why = format!(
                    "its provider cannot answer for the past: the run slept from {} to {}",
                    sleep.since, sleep.until
                );
                return (Verdict::Inconclusive, why, tally);
            }
            Err(error) => tally.add(Err(error.to_string()), |_| true),
        }
        let (verdict, detail) = tally.verdict(check);
        (verdict, format!("over the slept window {} to {}: {detail}", sleep.since, sleep.until), tally)
    }

    /// An alert over the slept window: its condition on a range query, held for its `for:`
    /// (samples at the alert's interval from the window's start). `Some` ends the phase: the
    /// alert fired and rolls back or pauses, or it could not be judged and a person decides.
    async fn alert_slept(
        &self,
        phase: &PhaseNode,
        watch: &mut AlertWatch,
        sleep: Sleep,
    ) -> Result<Option<End>, EngineError> {
        let name = watch.alert.metric.to_string();
        let key = DecisionKey::alerts(&phase.id);
        let values = match self.graph.plan.metrics.get(name.as_str()) {
            Some(metric) => self.metrics.range(&name, metric, (sleep.since, sleep.until), watch.interval).await,
            None => Ok(None),
        };
        let values = match values {
            Ok(Some(values)) => values,
            _ if self.journal.decision(&key)?.is_some_and(|d| d.approved) => return Ok(None),
            Ok(None) | Err(_) => {
                let reason = format!(
                    "alert `{}` could not be judged over the slept window ({} to {}): its provider cannot answer for the past; approve to go on, reject to roll back",
                    watch.alert.name, sleep.since, sleep.until
                );
                return Ok(Some(End::Paused { key, reason }));
            }
        };
        let step = SignedDuration::try_from(watch.interval).unwrap_or_default();
        let mut at = sleep.since;
        for value in values {
            if let Some(value) = watch.observe(Some(value), at) {
                return Ok(self.alert_fired(phase, watch, value)?.and_then(|(action, what)| match action {
                    AlertAction::Rollback => Some(End::Failed(what)),
                    AlertAction::Pause => Some(End::Paused {
                        key: key.clone(),
                        reason: format!("{what}; approve to go on, reject to roll back"),
                    }),
                    _ => None,
                }));
            }
            at += step;
        }
        Ok(None)
    }

    /// A criterion a person confirms: its verdict (recorded), or the pause that asks.
    fn confirmation<'p>(
        &self,
        phase: &PhaseNode,
        criterion: &'p CriterionNode,
        prompt: &str,
    ) -> Result<Result<Judgement<'p>, End>, EngineError> {
        let key = criterion.key(&phase.id);
        let (verdict, detail) = match self.journal.decision(&key)? {
            Some(d) if d.approved => (Verdict::Pass, format!("confirmed by {}", d.by)),
            Some(d) => (Verdict::Fail, format!("denied by {}", d.by)),
            None => return Ok(Err(End::Paused { key, reason: prompt.to_owned() })),
        };
        self.record(Event::CriterionEvaluated {
            phase: phase.id.clone(),
            criterion: criterion.id.clone(),
            verdict,
            samples: 0,
            failed: 0,
            detail: detail.clone(),
            last: None,
        })?;
        Ok(Ok((criterion, verdict, detail)))
    }

    /// A criterion's window read as one range query ending at `end`.
    async fn range_verdict(&self, query: &RangeQuery<'_>, end: Timestamp) -> (Verdict, String) {
        let check = query.check;
        let mut tally = Tally::default();
        let Some(metric) = self.graph.plan.metrics.get(check.metric.as_str()) else { return tally.verdict(check) };
        let start = end - SignedDuration::try_from(query.window).unwrap_or_default();
        match self.metrics.range(&check.metric, metric, (start, end), query.interval).await {
            Ok(values) => {
                values.unwrap_or_default().into_iter().for_each(|v| tally.add(Ok(Some(v)), |v| check.holds(v)))
            }
            Err(error) => tally.add(Err(error.to_string()), |_| true),
        }
        tally.verdict(check)
    }

    /// What the phase's verdicts mean.
    fn judge(&self, phase: &PhaseNode, results: &[Judgement<'_>]) -> Result<End, EngineError> {
        // A failure rolls back even when another criterion would pause for a person.
        let mut pause = None;
        for (criterion, verdict, detail) in results {
            if *verdict == Verdict::Pass || criterion.dry_run {
                continue;
            }
            let key = criterion.key(&phase.id);
            let what = format!("criterion `{}` ({}) is {verdict:?}: {detail}", criterion.id, criterion.description)
                .replace("ProviderError", "provider error");
            let decided = self.journal.read(|s| s.decisions.get(&key.to_string()).cloned());
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

    /// Rolls `phase` back because a person aborted the run (`reason` starts with
    /// [`ABORTED`]); a rollback that succeeds ends the run as aborted.
    pub(crate) async fn abort(&self, phase: &PhaseNode, reason: String) -> Result<Outcome, EngineError> {
        let outcome = self.rollback(phase, reason).await?;
        if !matches!(outcome, Outcome::RolledBack { .. }) {
            return Ok(outcome);
        }
        // `rollback` ended the run as rolled back; the abort is recorded too.
        self.record(Event::RunFinished { status: RunStatus::Aborted })?;
        Ok(Outcome::Aborted)
    }

    /// Rolls a phase back: its steps undone in reverse (see `compensate`), then the
    /// rollback steps, timed against the budget. Continues an interrupted rollback.
    pub(crate) async fn rollback(&self, phase: &PhaseNode, reason: String) -> Result<Outcome, EngineError> {
        let started_at = match self.journal.read(|s| Some(s.phase(&phase.id)?.rollback.as_ref()?.started_at)) {
            Some(started_at) => started_at,
            None => {
                tracing::info!(phase = %phase.id, "rolling back: {reason}");
                self.record(Event::RollbackStarted { phase: phase.id.clone(), reason: reason.clone() })?;
                self.clock.now()
            }
        };
        let mut failures = match self.compensate(phase).await? {
            Ok(failures) => failures,
            Err(stop) => return self.stopped(stop),
        };
        for step in &phase.rollback {
            match self.step(phase, step, Role::Rollback, &self.cancel).await? {
                End::Done => {}
                End::Failed(why) | End::Cancelled(why) => failures.push(why),
                stop => return self.stopped(stop),
            }
        }
        self.finish_rollback(phase, reason, started_at, failures)
    }

    /// Undoes the phase's steps (those not undone yet), each once: first the forward steps
    /// that were running when the phase stopped, since they may have taken effect (last in
    /// plan order first), then the completed ones, last completed first. A step that is not
    /// idempotent and whose step or undo may or may not have taken effect is not undone
    /// blindly: the rollback stops with the question. What failed, or how it stopped.
    async fn compensate(&self, phase: &PhaseNode) -> Result<Result<Vec<String>, End>, EngineError> {
        let state = self.journal.read(|s| s.phase(&phase.id).cloned()).unwrap_or_default();
        let mut failures = Vec::new();
        for step in to_undo(phase, &state) {
            if let Some(error) = state.undo_failed.get(&step.id) {
                failures.push(format!("undoing `{}` failed: {error}", step.id));
                continue;
            }
            if let Some(question) = unsettled(phase, step, &state) {
                if self.journal.auto_decide.is_none() {
                    return Ok(Err(question));
                }
                self.auto_settle(phase, step, &state)?;
            }
            let Some(action) = self.executors.action(&step.uses) else { continue };
            let Some(step_state) = state.steps.get(&step.id) else { continue };
            // An observation that was stopped changed nothing.
            if !step_state.finished && action.declaration().effect == handoff_plan::Effect::Observe {
                continue;
            }
            match self.undo(phase, step, action, step_state).await? {
                Undo::Done => {}
                Undo::Failed(why) => failures.push(why),
                Undo::Interrupted => return Ok(Err(End::Interrupted)),
            }
        }
        Ok(Ok(failures))
    }

    /// When every question is decided automatically (a simulation), what was stopped while
    /// it ran is made sure to be undone: a step is settled as done (so it is undone), an
    /// interrupted undo as not done (so it runs again).
    fn auto_settle(&self, phase: &PhaseNode, step: &StepNode, state: &PhaseState) -> Result<(), EngineError> {
        let (done, role) =
            if state.undo_interrupted(&step.id) { (false, Role::Compensate) } else { (true, Role::Forward) };
        self.record(Event::StepSettled { phase: phase.id.clone(), step: step.id.clone(), done, role })
    }

    /// Runs one step's compensation with the output it recorded (none when it never
    /// finished), its start and end recorded. A step that never finished and whose
    /// compensation refuses to run without its output is left to the rollback steps.
    async fn undo(
        &self,
        phase: &PhaseNode,
        step: &StepNode,
        action: &dyn DynAction,
        state: &StepState,
    ) -> Result<Undo, EngineError> {
        let (phase_id, id) = (phase.id.clone(), step.id.clone());
        self.record(Event::StepStarted {
            phase: phase_id.clone(),
            step: id.clone(),
            role: Role::Compensate,
            attempt: 1,
        })?;
        let cx = self.context(&phase.id, &step.id, 1, None, Role::Compensate, &self.cancel);
        let span = tracing::info_span!("compensate", step = %id, uses = %step.uses);
        match action.compensate(&step.with, &state.output, &cx).instrument(span).await {
            Ok(compensation) => {
                let outcome = match compensation {
                    Compensation::NotNeeded => "nothing to undo".to_owned(),
                    Compensation::Undone(what) => format!("undone: {what}"),
                    Compensation::LeftToRollback => "left to the rollback steps".to_owned(),
                };
                self.record(Event::StepCompensated { phase: phase_id, step: id, outcome })?;
                Ok(Undo::Done)
            }
            Err(_) if self.cancel.is_cancelled() => Ok(Undo::Interrupted),
            Err(StepError::Refused(why)) if !state.finished => {
                let outcome = format!("left to the rollback steps: it never finished, and its undo refused ({why})");
                self.record(Event::StepCompensated { phase: phase_id, step: id, outcome })?;
                Ok(Undo::Done)
            }
            Err(error) => {
                let failure = format!("undoing `{id}` failed: {error}");
                let error = error.to_string();
                let role = Role::Compensate;
                self.record(Event::StepFailed { phase: phase_id, step: id, role, attempt: 1, error, retrying: false })?;
                Ok(Undo::Failed(failure))
            }
        }
    }

    /// Records how the rollback started at `started_at` ended, against its budget, and ends
    /// the run.
    fn finish_rollback(
        &self,
        phase: &PhaseNode,
        reason: String,
        started_at: Timestamp,
        mut failures: Vec<String>,
    ) -> Result<Outcome, EngineError> {
        let elapsed = seconds(self.clock.now().duration_since(started_at));
        let budget = phase.budget.map(|b| b.as_secs_f64());
        let breached = budget.is_some_and(|b| elapsed > b);
        self.record(Event::RollbackFinished {
            phase: phase.id.clone(),
            ok: failures.is_empty(),
            seconds: elapsed,
            budget_seconds: budget,
            breached,
        })?;
        if breached {
            failures.push(format!(
                "the rollback took {elapsed:.1}s, over its budget of {:.0}s",
                budget.unwrap_or_default()
            ));
        }
        let status = if failures.is_empty() { RunStatus::RolledBack } else { RunStatus::RollbackFailed };
        self.record(Event::RunFinished { status })?;
        Ok(if failures.is_empty() {
            Outcome::RolledBack { phase: phase.id.clone(), reason, seconds: elapsed }
        } else {
            Outcome::RollbackFailed { phase: phase.id.clone(), reason: format!("{reason}; {}", failures.join("; ")) }
        })
    }
}

/// The steps a rollback of `phase` undoes, in order: the forward steps that were running
/// when the phase stopped (unless a person said they did not take effect), last in plan
/// order first; then the completed ones, last completed first; none already undone.
fn to_undo<'g>(phase: &'g PhaseNode, state: &PhaseState) -> Vec<&'g StepNode> {
    let forward = || phase.stages.iter().flatten();
    let interrupted =
        forward().rev().filter(|s| state.steps.get(&s.id).is_some_and(|s| s.interrupted() && !s.retry_settled));
    let finished = state.finished_order.iter().rev().filter_map(|id| forward().find(|s| s.id == *id));
    interrupted.chain(finished).filter(|s| !state.compensated.contains(&s.id)).collect()
}

/// The question a rollback asks before undoing a step that is not idempotent when what
/// was running of it — its undo, or the step itself — may or may not have taken effect.
fn unsettled(phase: &PhaseNode, step: &StepNode, state: &PhaseState) -> Option<End> {
    if step.idempotent {
        return None;
    }
    let what = format!("step `{}` ({})", step.id, step.uses);
    if state.undo_interrupted(&step.id) {
        let key = DecisionKey::step(&phase.id, &format!("{}{UNDO}", step.id));
        let reason = format!(
            "the undo of {what} was running when the run stopped and is not idempotent: check whether it took effect, then `handoff resume --settle {key}=done` (it did) or `--settle {key}=retry` (run it again)"
        );
        return Some(End::Unsettled { key, reason });
    }
    if !state.steps.get(&step.id).is_some_and(StepState::interrupted) {
        return None;
    }
    let key = DecisionKey::step(&phase.id, &step.id);
    let reason = format!(
        "{what} was stopped while it ran and is not idempotent, and phase `{}` rolls back: check whether it took effect, then `handoff resume --settle {key}=done` (it did: it is undone) or `--settle {key}=retry` (it did not: nothing to undo)",
        phase.id
    );
    Some(End::Unsettled { key, reason })
}

/// The pause a step asked for, under the key it named (an executor's key that is not
/// `<phase>/<what>` is a failure of the step).
fn paused_by_step(step: &StepNode, key: &str, prompt: String) -> End {
    match key.parse() {
        Ok(key) => End::Paused { key, reason: prompt },
        Err(error) => {
            End::Failed(format!("step `{}` ({}) asked a person under a bad key: {error}", step.id, step.uses))
        }
    }
}
