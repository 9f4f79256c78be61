//! Analysis while a phase's steps run, the way Argo Rollouts judges a canary: step analysis
//! over each hold of a step (each weight of a traffic shift, or once after a step that holds
//! nothing), and background analysis sampled on each criterion's interval over the whole
//! phase. A failing verdict stops the step where it stands and rolls the phase back; an
//! inconclusive one asks a person; a `dry_run` criterion is recorded and never acted on.

use std::sync::Mutex;
use std::time::Duration;

use handoff_executor::{Analysis, Context, DecisionKey, DynAction, Hold, StepError, StepOutput};
use handoff_plan::model::{AlertAction, FailureAction};
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::events::{Event, Verdict};
use crate::graph::{CriterionCheck, CriterionNode, MetricCheck, PhaseNode, StepNode};
use crate::observe::{Sample, Tally};
use crate::runner::{Alarm, End, Runner};
use crate::schedule::{Judged, Observation};

/// What `at` names for background analysis and for a step judged after it finished.
const BACKGROUND: &str = "background";
const AFTER: &str = "after";

/// What analysis makes of a set of verdicts.
enum Held {
    /// Go on.
    Go,
    /// Stop here: the phase fails (rolls back) or waits for a person.
    Stop(End),
}

/// The metric criteria of a phase named by `indices`, with their checks.
fn metric_criteria<'p>(phase: &'p PhaseNode, indices: &[usize]) -> Vec<(&'p CriterionNode, &'p MetricCheck)> {
    let criteria = indices.iter().filter_map(|&i| phase.criteria.get(i));
    criteria
        .filter_map(|c| match &c.check {
            CriterionCheck::Metric(check) => Some((c, check)),
            CriterionCheck::Confirm { .. } | CriterionCheck::Undecidable => None,
        })
        .collect()
}

/// The criteria judged over a step's holds: its step analysis, then the phase's background
/// analysis not already among them.
fn hold_criteria<'p>(phase: &'p PhaseNode, step: &StepNode) -> Vec<&'p CriterionNode> {
    let mut indices = step.analysis.clone();
    indices.extend(phase.background.iter().filter(|i| !step.analysis.contains(i)));
    metric_criteria(phase, &indices).into_iter().map(|(c, _)| c).collect()
}

/// The key a person decides under when analysis at `at` of `step` was inconclusive
/// (`<phase>/<step>@<at>`).
fn hold_key(phase: &str, step: &str, at: &str) -> DecisionKey {
    DecisionKey::step(phase, &format!("{step}@{at}"))
}

/// What is sampled while a phase's steps run: its background analysis (judged as it
/// goes), and every criterion whose window may overlap the steps (sampled only, for the
/// verdict at the phase's end: see [`Observation::earlier`]).
pub(crate) struct Background<'p> {
    watches: Vec<Watch<'p>>,
}

struct Watch<'p> {
    criterion: &'p CriterionNode,
    check: &'p MetricCheck,
    tally: Tally,
    next: Option<Timestamp>,
    failed: bool,
    /// Background analysis: judged while the steps run.
    judged: bool,
    /// Samples kept for the phase's end (criteria with a window), with when each was taken.
    kept: Option<Vec<(Timestamp, Sample)>>,
}

/// The samples of each criterion (by id) taken while a phase's steps ran, with when.
pub(crate) type Earlier = std::collections::HashMap<String, Vec<(Timestamp, Sample)>>;

impl<'p> Background<'p> {
    /// What to sample in `phase` while its steps run (nothing sampled yet): its background
    /// analysis, and with `windows` the criteria whose windows may overlap the steps — but
    /// with `ranges`, not a Prometheus criterion: its window is read as a range at the end.
    pub(crate) fn new(phase: &'p PhaseNode, (windows, ranges): (bool, bool)) -> Background<'p> {
        let all: Vec<usize> = (0..phase.criteria.len()).collect();
        let watches = metric_criteria(phase, &all).into_iter().filter_map(|(criterion, check)| {
            let index = phase.criteria.iter().position(|c| std::ptr::eq(c, criterion))?;
            let judged = phase.background.contains(&index);
            let windowed = windows && !check.window().is_zero() && !(ranges && check.prometheus);
            (judged || windowed).then(|| Watch {
                criterion,
                check,
                tally: Tally::default(),
                next: None,
                failed: false,
                judged,
                kept: windowed.then(Vec::new),
            })
        });
        Background { watches: watches.collect() }
    }

    /// Whether it has nothing to sample.
    pub(crate) fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// The sampling intervals of its criteria.
    pub(crate) fn intervals(&self) -> impl Iterator<Item = Duration> + '_ {
        self.watches.iter().map(|w| w.check.interval())
    }

    /// The samples kept for the phase's end.
    pub(crate) fn earlier(self) -> Earlier {
        let kept = self.watches.into_iter().filter_map(|w| Some((w.criterion.id.clone(), w.kept?)));
        kept.collect()
    }
}

impl Runner<'_> {
    /// Samples the background criteria due now (when there is a background analysis); a
    /// failure raises the alarm that rolls the phase back and cancels its steps.
    pub(crate) async fn background_due(
        &self,
        phase: &PhaseNode,
        background: Option<&mut Background<'_>>,
        alarm: &Alarm,
        phase_cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let Some(background) = background else { return Ok(()) };
        if let Some(why) = self.sample_background(phase, background).await? {
            alarm.raise(AlertAction::Rollback, why);
            phase_cancel.cancel();
        }
        Ok(())
    }

    /// Samples the background criteria due now; the first that fails for good (and does
    /// not only measure) is recorded and returned as the reason to roll back.
    async fn sample_background(
        &self,
        phase: &PhaseNode,
        background: &mut Background<'_>,
    ) -> Result<Option<String>, EngineError> {
        let now = self.clock.now();
        for watch in background.watches.iter_mut().filter(|w| !w.failed && w.next.is_none_or(|n| n <= now)) {
            watch.next = Some(now + SignedDuration::try_from(watch.check.interval()).unwrap_or(SignedDuration::MAX));
            let sample = self.sample_metric(watch.check).await;
            if let Some(kept) = &mut watch.kept {
                kept.push((now, sample.clone()));
            }
            if !watch.judged {
                continue;
            }
            watch.tally.add(sample, |v| watch.check.holds(v));
            if watch.tally.failed_for_good(watch.check) && !watch.criterion.dry_run {
                watch.failed = true;
                let (verdict, detail) = watch.tally.verdict(watch.check);
                self.record_analysis(phase, None, BACKGROUND, watch.criterion, (verdict, &detail), &watch.tally)?;
                if watch.criterion.on_failure == FailureAction::Rollback {
                    return Ok(Some(failed_at(watch.criterion, BACKGROUND, &detail)));
                }
            }
        }
        Ok(None)
    }

    /// Records the background verdicts once the steps ended (those that failed already
    /// are), unless the phase was cancelled: then they judged nothing to its end.
    pub(crate) fn finish_background(
        &self,
        phase: &PhaseNode,
        background: &Background<'_>,
        phase_cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        if phase_cancel.is_cancelled() {
            return Ok(());
        }
        for watch in background.watches.iter().filter(|w| w.judged && !w.failed) {
            let (verdict, detail) = watch.tally.verdict(watch.check);
            self.record_analysis(phase, None, BACKGROUND, watch.criterion, (verdict, &detail), &watch.tally)?;
        }
        Ok(())
    }

    fn record_analysis(
        &self,
        phase: &PhaseNode,
        step: Option<&StepNode>,
        at: &str,
        criterion: &CriterionNode,
        (verdict, detail): (Verdict, &str),
        tally: &Tally,
    ) -> Result<(), EngineError> {
        self.record(Event::AnalysisEvaluated {
            phase: phase.id.clone(),
            step: step.map(|s| s.id.clone()),
            hold: at.to_owned(),
            criterion: criterion.id.clone(),
            verdict,
            samples: tally.values,
            failed: tally.failed,
            detail: detail.to_owned(),
            last: tally.last,
            dry_run: criterion.dry_run,
        })
    }

    /// One attempt of a step with its holds judged by its step analysis (and the phase's
    /// background analysis); a step with step analysis that held nothing is judged once it
    /// finished. Returns the attempt's result and, when analysis stopped it, how.
    pub(crate) async fn analysed(
        &self,
        phase: &PhaseNode,
        step: &StepNode,
        action: &dyn DynAction,
        cx: &mut Context,
    ) -> Result<(Result<StepOutput, StepError>, Option<End>), EngineError> {
        let criteria = hold_criteria(phase, step);
        if criteria.is_empty() {
            return Ok((self.execute(step, action, cx).await, None));
        }
        let (engine, mut holds) = tokio::sync::mpsc::unbounded_channel::<Hold>();
        cx.analysis = Some(Analysis(engine));
        let stopped: Mutex<Option<Result<End, EngineError>>> = Mutex::new(None);
        let mut held = false;
        let serve = async {
            while let Some(hold) = holds.recv().await {
                held = true;
                let answer = self.serve(phase, step, &criteria, &hold, &stopped).await;
                // A step that stopped waiting has nothing to be told.
                let _ = hold.reply.send(answer);
            }
            std::future::pending::<()>().await;
        };
        let result = tokio::select! {
            biased;
            result = self.execute(step, action, cx) => result,
            () = serve => unreachable!("serving holds never ends"),
        };
        let stopped = stopped.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).transpose()?;
        if held || result.is_err() || step.analysis.is_empty() {
            return Ok((result, stopped));
        }
        let after = metric_criteria(phase, &step.analysis).into_iter().map(|(c, _)| c).collect::<Vec<_>>();
        match self.hold(phase, step, &after, AFTER, Duration::ZERO).await? {
            Held::Go => Ok((result, None)),
            Held::Stop(end) => Ok((result, Some(end))),
        }
    }

    /// Answers one hold of a step; how analysis stopped the step is kept in `stopped`.
    async fn serve(
        &self,
        phase: &PhaseNode,
        step: &StepNode,
        criteria: &[&CriterionNode],
        hold: &Hold,
        stopped: &Mutex<Option<Result<End, EngineError>>>,
    ) -> Result<(), StepError> {
        let held = self.hold(phase, step, criteria, &hold.at, hold.duration).await;
        let answer = match &held {
            Ok(Held::Go) => return Ok(()),
            Ok(Held::Stop(End::Paused { key, reason })) => {
                StepError::NeedsDecision { key: key.to_string(), prompt: reason.clone() }
            }
            Ok(Held::Stop(End::Failed(why))) => StepError::Failed(why.clone()),
            Ok(Held::Stop(_)) => StepError::Cancelled,
            Err(error) => StepError::Failed(format!("the run's log failed: {error}")),
        };
        let stop = held.map(|held| match held {
            Held::Stop(end) => end,
            Held::Go => End::Done,
        });
        *stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stop);
        Err(answer)
    }

    /// Holds `step` at `at` for `duration` (at least the longest window of `criteria`)
    /// while `criteria` are sampled, with the phase's alerts when nothing else watches
    /// them; records each verdict and says what they mean.
    async fn hold(
        &self,
        phase: &PhaseNode,
        step: &StepNode,
        criteria: &[&CriterionNode],
        at: &str,
        duration: Duration,
    ) -> Result<Held, EngineError> {
        let watched = self.clock.real_time(Duration::from_secs(60)).is_some();
        let mut watches = if watched { Vec::new() } else { self.alert_watches(phase) };
        let intervals: Vec<Duration> = watches.iter().map(|w| w.interval).collect();
        let mut observation =
            Observation::new(criteria, duration, &intervals, (self.clock.is_virtual(), Duration::ZERO));
        let start = self.clock.now();
        if let Some(end) = self.watch(phase, &mut observation, &mut watches, start).await? {
            return Ok(Held::Stop(end));
        }
        let mut fail = None;
        let mut ask = None;
        for judged in self.judged(observation, start).await {
            let (criterion, verdict) = (judged.criterion, judged.verdict);
            self.record_analysis(phase, Some(step), at, criterion, (verdict, &judged.detail), &judged.tally)?;
            if verdict == Verdict::Pass || criterion.dry_run {
                continue;
            }
            match (verdict, criterion.on_failure) {
                (Verdict::Fail, FailureAction::Rollback) => {
                    fail.get_or_insert_with(|| failed_at(criterion, at, &judged.detail));
                }
                (Verdict::Fail, FailureAction::Warn) => {
                    tracing::warn!(criterion = %criterion.id, at, "analysis failed")
                }
                _ => {
                    ask.get_or_insert_with(|| {
                        format!("criterion `{}` is {verdict:?} at {at}: {}", criterion.id, judged.detail)
                    });
                }
            }
        }
        Ok(match (fail, ask) {
            (Some(why), _) => Held::Stop(End::Failed(why)),
            (None, Some(what)) => {
                // A person who already decided on this hold (it ran again) is not asked twice.
                let key = hold_key(&phase.id, &step.id, at);
                match self.journal.decision(&key)? {
                    Some(decision) if decision.approved => Held::Go,
                    Some(decision) => Held::Stop(End::Failed(format!("{what}; {} rejected going on", decision.by))),
                    None => {
                        let reason = format!("{what}; approve `{key}` to go on, reject it to roll back");
                        Held::Stop(End::Paused { key, reason })
                    }
                }
            }
            (None, None) => Held::Go,
        })
    }

    /// A pass on a rate stands only when the window held enough events to resolve the
    /// threshold at the denominator's confidence; else it is inconclusive, never a pass.
    pub(crate) async fn power(&self, judged: &mut Judged<'_>) {
        let CriterionCheck::Metric(check) = &judged.criterion.check else { return };
        let (Some(needed), Some(denominator)) = (check.events_needed(), check.denominator.as_ref()) else { return };
        if judged.verdict != Verdict::Pass {
            return;
        }
        let events = match self.plan_metric(denominator.metric.as_str()).await {
            Ok(Some(events)) => events,
            Ok(None) => 0.0,
            Err(error) => {
                judged.verdict = Verdict::ProviderError;
                judged.detail = format!("{}; events (`{}`) unreadable: {error}", judged.detail, denominator.metric);
                return;
            }
        };
        let resolves = events >= needed as f64;
        if !resolves {
            judged.verdict = Verdict::Inconclusive;
        }
        judged.detail = format!(
            "{}; {events} events (`{}`) {} {} at {}% confidence (needs {needed})",
            judged.detail,
            denominator.metric,
            if resolves { "resolve" } else { "too few to resolve" },
            check.threshold,
            denominator.confidence
        );
    }

    /// What a person decided about the analysis of `step` that asked them: `None` when
    /// every question is approved (or there was none), else the phase fails (rejected) or
    /// waits again.
    pub(crate) fn analysis_answered(&self, phase: &PhaseNode, step: &StepNode) -> Result<Option<End>, EngineError> {
        let asked = self.journal.read(|s| {
            let analyses = s.phase(&phase.id).map(|p| p.analyses.clone()).unwrap_or_default();
            let asked = analyses.into_iter().filter(|a| a.step.as_deref() == Some(step.id.as_str()));
            asked
                .filter(|a| !a.dry_run && a.verdict != Verdict::Pass)
                .filter(|a| {
                    let criterion = phase.criteria.iter().find(|c| c.id == a.criterion);
                    a.verdict != Verdict::Fail || criterion.is_some_and(|c| c.on_failure == FailureAction::Pause)
                })
                .map(|a| (a.hold, a.detail))
                .collect::<Vec<_>>()
        });
        for (at, detail) in asked {
            let key = hold_key(&phase.id, &step.id, &at);
            match self.journal.decision(&key)? {
                Some(decision) if decision.approved => {}
                Some(decision) => {
                    let why =
                        format!("analysis at {at} of step `{}` ({detail}): {} rejected going on", step.id, decision.by);
                    return Ok(Some(End::Failed(why)));
                }
                None => {
                    let reason = format!("analysis at {at} of step `{}`: {detail}; approve `{key}` to go on", step.id);
                    return Ok(Some(End::Paused { key, reason }));
                }
            }
        }
        Ok(None)
    }
}

/// Why a criterion's failure at `at` rolls the phase back.
fn failed_at(criterion: &CriterionNode, at: &str, detail: &str) -> String {
    format!("criterion `{}` ({}) failed at {at}: {detail}", criterion.id, criterion.description)
}
