//! The observation after a phase's steps, as a pure schedule: what to sample when, when
//! each criterion's window is decided, when the soak gate opens, and when a failure ends
//! the observation early. Time is plan time since the observation started; the runner's
//! thin loop reads the clock, samples what is due, feeds the samples back and waits.

use std::time::Duration;

use handoff_plan::model::FailureAction;

use crate::events::Verdict;
use crate::graph::{CriterionCheck, CriterionNode, MetricCheck};
use crate::observe::{Sample, Tally};

/// A simulation samples each series at most about this many times per observation.
const VIRTUAL_SAMPLES: u32 = 500;

/// One criterion's window.
struct Window<'c> {
    criterion: &'c CriterionNode,
    /// Its metric check; `None` for a criterion nothing can decide.
    check: Option<&'c MetricCheck>,
    window: Duration,
    interval: Duration,
    /// When it is sampled next.
    next: Duration,
    tally: Tally,
    decided: Option<(Verdict, String)>,
    /// Read as one range query at the end instead of sampled.
    range: bool,
}

/// An alert's sampling.
struct Beat {
    interval: Duration,
    next: Duration,
}

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait this long, then sample what is due.
    Wait(Duration),
    /// The observation is over (its end came, or a failure cut it short).
    Stop,
}

/// A criterion's verdict at the end of the observation.
pub(crate) struct Judged<'c> {
    /// The criterion.
    pub(crate) criterion: &'c CriterionNode,
    /// Its verdict.
    pub(crate) verdict: Verdict,
    /// A one-line account.
    pub(crate) detail: String,
    /// Its samples (none for a range query).
    pub(crate) tally: Tally,
}

/// A range query a criterion is decided by.
pub(crate) struct RangeQuery<'c> {
    /// Index of the criterion.
    pub(crate) index: usize,
    /// Its check.
    pub(crate) check: &'c MetricCheck,
    /// The window, which ends at the observation's end.
    pub(crate) window: Duration,
    /// The step between points.
    pub(crate) interval: Duration,
}

/// The schedule of one observation.
pub(crate) struct Observation<'c> {
    end: Duration,
    soak: bool,
    criteria: Vec<Window<'c>>,
    alerts: Vec<Beat>,
    /// The criterion whose failure ended the observation before its end.
    cut_short_by: Option<usize>,
}

impl<'c> Observation<'c> {
    /// The observation of `criteria` (metric checks, or ones nothing decides) and the
    /// alerts sampled every `alerts` interval, after steps that took `elapsed`: it lasts the
    /// `soak`, and at least until the longest window since the steps started has passed
    /// (windows overlap the steps: see [`Observation::earlier`]). On virtual time
    /// (`virtual_time`), series are sampled more coarsely and never read as ranges.
    pub(crate) fn new(
        criteria: &[&'c CriterionNode],
        soak: Duration,
        alerts: &[Duration],
        (virtual_time, elapsed): (bool, Duration),
    ) -> Observation<'c> {
        let checks = criteria.iter().map(|c| match &c.check {
            CriterionCheck::Metric(check) => Some(check),
            CriterionCheck::Confirm { .. } | CriterionCheck::Undecidable => None,
        });
        let longest = checks.clone().flatten().map(MetricCheck::window).max().unwrap_or_default();
        let end = longest.saturating_sub(elapsed).max(soak);
        let floor = if virtual_time { end / VIRTUAL_SAMPLES } else { Duration::ZERO };
        let criteria = criteria
            .iter()
            .zip(checks)
            .map(|(criterion, check)| Window::new(criterion, check, end, floor, virtual_time))
            .collect();
        let alerts = alerts.iter().map(|interval| Beat { interval: (*interval).max(floor), next: Duration::ZERO });
        Observation { end, soak: !soak.is_zero(), criteria, alerts: alerts.collect(), cut_short_by: None }
    }

    /// How long it lasts.
    pub(crate) fn end(&self) -> Duration {
        self.end
    }

    /// The alerts (by index) to sample at `now`; they are due again an interval later.
    pub(crate) fn alerts_due(&mut self, now: Duration) -> Vec<usize> {
        let due = self.alerts.iter_mut().enumerate().filter(|(_, beat)| beat.next <= now);
        due.map(|(index, beat)| {
            beat.next = now + beat.interval;
            index
        })
        .collect()
    }

    /// The criteria (by index, with their checks) to sample at `now`; each is due again an
    /// interval later, and the sample is fed back with [`Observation::sampled`].
    pub(crate) fn criteria_due(&mut self, now: Duration) -> Vec<(usize, &'c MetricCheck)> {
        let due = self.criteria.iter_mut().enumerate().filter(|(_, w)| w.decided.is_none() && !w.range);
        due.filter(|(_, w)| w.next <= now)
            .filter_map(|(index, w)| {
                w.next = now + w.interval;
                Some((index, w.check?))
            })
            .collect()
    }

    /// Feeds criterion `index` the samples taken while the steps ran, each with how long
    /// before the observation's start it was taken: those inside its window (which ends
    /// with the observation) count, the others are dropped. A range query reads the whole
    /// window itself.
    pub(crate) fn earlier(&mut self, index: usize, samples: &[(Duration, Sample)]) {
        let end = self.end;
        let window = &mut self.criteria[index];
        let Some(check) = window.check.filter(|_| !window.range && window.decided.is_none()) else { return };
        for (_, sample) in samples.iter().filter(|(ago, _)| *ago + end <= window.window) {
            window.tally.add(sample.clone(), |v| check.holds(v));
        }
        if window.tally.failed_for_good(check) {
            window.decided = Some(window.tally.verdict(check));
        }
    }

    /// Feeds criterion `index` a sample; the window is decided once it failed for good or
    /// no sample of it is left before the end.
    pub(crate) fn sampled(&mut self, index: usize, sample: Sample) {
        let window = &mut self.criteria[index];
        let Some(check) = window.check else { return };
        window.tally.add(sample, |v| check.holds(v));
        if window.tally.failed_for_good(check) || window.next > self.end {
            window.decided = Some(window.tally.verdict(check));
        }
    }

    /// What to do after sampling at `now`: stop at the end, or when a criterion that rolls
    /// back failed for good; else wait for the next sample due.
    pub(crate) fn next(&mut self, now: Duration) -> Next {
        if now >= self.end {
            return Next::Stop;
        }
        let failed = |w: &Window<'_>| {
            matches!(w.decided, Some((Verdict::Fail, _)))
                && w.criterion.on_failure == FailureAction::Rollback
                && !w.criterion.dry_run
        };
        if let Some(index) = self.criteria.iter().position(failed) {
            self.cut_short_by = Some(index);
            return Next::Stop;
        }
        let criteria = self.criteria.iter().filter(|w| w.decided.is_none() && !w.range).map(|w| w.next);
        let next = criteria.chain(self.alerts.iter().map(|b| b.next)).fold(self.end, Duration::min);
        Next::Wait(next.saturating_sub(now))
    }

    /// Whether the soak gate opens when the observation stopped at `now`: there is one, and
    /// the observation ran to its end.
    pub(crate) fn soak_opens(&self, now: Duration) -> bool {
        self.soak && now >= self.end
    }

    /// The range queries still to make (their windows end at the observation's end).
    pub(crate) fn range_queries(&self) -> Vec<RangeQuery<'c>> {
        let pending = self.criteria.iter().enumerate().filter(|(_, w)| w.range && w.decided.is_none());
        pending
            .filter_map(|(index, w)| {
                Some(RangeQuery { index, check: w.check?, window: w.window, interval: w.interval })
            })
            .collect()
    }

    /// Decides criterion `index` (by its range query).
    pub(crate) fn decide(&mut self, index: usize, verdict: (Verdict, String)) {
        self.criteria[index].decided = Some(verdict);
    }

    /// Every criterion's verdict, in order: as decided, else from its samples so far (saying
    /// so when a failure cut the observation short).
    pub(crate) fn verdicts(self) -> Vec<Judged<'c>> {
        let cut_short_by = self.cut_short_by.map(|index| self.criteria[index].criterion.id.clone());
        let judge = |window: Window<'c>| {
            let (verdict, detail) = window.decided.unwrap_or_else(|| {
                let (verdict, detail) = window.check.map_or_else(undecidable, |check| window.tally.verdict(check));
                match &cut_short_by {
                    Some(failed) => (verdict, format!("{detail}; {CUT_SHORT}: `{failed}` failed")),
                    None => (verdict, detail),
                }
            });
            Judged { criterion: window.criterion, verdict, detail, tally: window.tally }
        };
        self.criteria.into_iter().map(judge).collect()
    }
}

/// How the detail of a criterion whose observation another criterion's failure ended
/// says so (its verdict is from the samples taken until then).
pub const CUT_SHORT: &str = "observation cut short";

/// The verdict on a criterion nothing can decide.
fn undecidable() -> (Verdict, String) {
    (Verdict::Inconclusive, "the criterion names no metric".to_owned())
}

impl<'c> Window<'c> {
    /// The window of `criterion` in an observation ending at `end`, sampled no finer than
    /// `floor` unless that would leave it fewer samples than it needs.
    fn new(
        criterion: &'c CriterionNode,
        check: Option<&'c MetricCheck>,
        end: Duration,
        floor: Duration,
        virtual_time: bool,
    ) -> Window<'c> {
        let window = check.map_or(Duration::ZERO, MetricCheck::window);
        let interval = check.map_or(Duration::ZERO, MetricCheck::interval);
        let needed = check.and_then(|c| c.min_samples).unwrap_or(1).max(1);
        let coarsest = if window.is_zero() { floor } else { (window / (needed + 1)).max(interval) };
        Window {
            criterion,
            check,
            window,
            interval: interval.max(floor.min(coarsest)).max(Duration::from_millis(1)),
            next: end.saturating_sub(window),
            tally: Tally::default(),
            decided: check.is_none().then(undecidable),
            range: check.is_some_and(|c| c.prometheus) && !virtual_time && !window.is_zero(),
        }
    }
}

#[cfg(test)]
mod tests;
