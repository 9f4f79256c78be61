//! Progress people can follow, shared by `handoff run` (and `resume`, `abort`, `apply`) and
//! `handoff simulate`. In a terminal, a live view redrawn in place under the lines that
//! scroll above it: the plan's calendar as a bar (plan day N of M, or phase N of M when the
//! phases are not dated) with the real time elapsed and an estimate of the time left, one
//! line per running step with its elapsed time and latest progress, and the latest value of
//! each of the current phase's criteria against its threshold. Elsewhere (CI logs), plain
//! lines only: one per finished step with its duration on the run's clock, one per
//! verdict. JSON records never come here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use handoff_engine::{Event, Notice, Record, Role, Verdict};
use handoff_plan::escape::escape;
use handoff_plan::model::Plan;
use handoff_plan::units::Measured;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use jiff::Timestamp;

/// Where a live view draws.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Screen {
    /// Standard output (`handoff run`, whose lines go there).
    Stdout,
    /// Standard error (`handoff simulate`, whose stdout is the report).
    Stderr,
}

impl Screen {
    /// Whether this stream is a terminal, where a live view can be drawn.
    fn is_terminal(self) -> bool {
        use std::io::IsTerminal as _;
        match self {
            Screen::Stdout => std::io::stdout().is_terminal(),
            Screen::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// The live view on screen, if any: what writes to the terminal outside it (log lines,
/// interrupt notices) hides it for the write, so neither corrupts the other.
static SHOWN: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Runs `write` with the live view (if one is shown) cleared, then redraws it.
pub(crate) fn suspended<R>(write: impl FnOnce() -> R) -> R {
    let shown = SHOWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match shown {
        Some(multi) => multi.suspend(write),
        None => write(),
    }
}

/// Standard error, written with the live view [`suspended`]: the log's writer.
pub(crate) struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspended(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Turns the engine's notices into plain lines, and draws the live view when there is one.
pub(crate) struct Progress {
    /// When each running step (by phase and step) started on the run's clock, and which
    /// attempt it is.
    started: BTreeMap<(String, String), (Timestamp, u32)>,
    live: Option<Live>,
}

impl Progress {
    /// Plain lines only.
    pub(crate) fn plain() -> Progress {
        Progress { started: BTreeMap::new(), live: None }
    }

    /// The live view of `plan` on `screen` when it is a terminal, else plain lines.
    pub(crate) fn for_screen(plan: &Plan, screen: Screen) -> Progress {
        Progress { live: screen.is_terminal().then(|| Live::new(plan, screen)), ..Progress::plain() }
    }

    /// Takes one notice. Returns the plain line to print, if any (control characters
    /// escaped); with a live view, the view shows the notice, record lines are printed
    /// above it, and `None` is returned.
    pub(crate) fn notice(&mut self, notice: &Notice) -> Option<String> {
        let text = match notice {
            Notice::Record(record) => self.line(record),
            Notice::Progress { .. } if self.live.is_some() => None,
            Notice::Progress { step, message, fraction, .. } => {
                Some(format!("    … {step}{}: {message}", percent(*fraction)))
            }
        };
        let text = text.map(|t| escape(&t).into_owned());
        let Some(live) = &mut self.live else { return text };
        live.notice(notice);
        if let Some(text) = text {
            live.multi.println(text).ok();
        }
        None
    }

    /// Stops the live view, leaving its last frame on the screen (the calendar where the
    /// run got to, the steps still running, the criteria's last values) before the outcome
    /// is printed under it.
    pub(crate) fn finish(&mut self) {
        self.live = None;
    }

    /// The plain line of a record (some records are not worth one): none when a step
    /// starts, one with its duration when it finishes, fails or is undone.
    fn line(&mut self, record: &Record) -> Option<String> {
        let mark = |verdict: &Verdict| if *verdict == Verdict::Pass { "✓" } else { "✗" };
        Some(match &record.event {
            Event::RunStarted { run, plan, env, digest, .. } => format!("run {run}: plan {plan} in {env} ({digest})"),
            Event::RunResumed { .. } => "resumed".to_owned(),
            Event::PhaseStarted { phase } => format!("▶ phase {phase}"),
            Event::StepStarted { phase, step, attempt, .. } => {
                self.started.insert((phase.clone(), step.clone()), (record.at, *attempt));
                return None;
            }
            Event::StepFinished { phase, step, .. } => format!("  ✓ {step}{}", self.took(phase, step, record)),
            Event::StepFailed { phase, step, error, retrying, .. } => {
                let again = if *retrying { " (retrying)" } else { "" };
                format!("  ✗ {step}{}: {error}{again}", self.took(phase, step, record))
            }
            Event::BackgroundRestarted { step, .. } => format!("  ↻ {step} started again in the background"),
            Event::StepSettled { step, done, role, .. } => {
                let what = if *role == Role::Compensate { format!("the undo of {step}") } else { step.clone() };
                format!("  = {what} settled as {}", if *done { "done" } else { "to retry" })
            }
            Event::StepCompensated { phase, step, outcome } => {
                format!("  ↺ {step}{}: {outcome}", self.took(phase, step, record))
            }
            Event::GateOpened { gate, .. } => format!("  ◆ gate {gate} open"),
            Event::Sleeping { phase, step: None, until } => {
                format!("  ☾ phase {phase} observed while the run sleeps, until {until}")
            }
            Event::Sleeping { step: Some(step), until, .. } => {
                format!("  ☾ {step}: the run sleeps through its wait, until {until}")
            }
            Event::CriterionEvaluated { criterion, verdict, detail, .. } => {
                format!("  {} criterion {criterion}: {verdict:?} ({detail})", mark(verdict))
            }
            Event::AnalysisEvaluated { step, hold: at, criterion, verdict, detail, dry_run, .. } => {
                let whose = step.as_deref().map(|s| format!(" of {s}")).unwrap_or_default();
                let dry = if *dry_run { ", dry run" } else { "" };
                format!("    {} analysis at {at}{whose}: {criterion} {verdict:?}{dry} ({detail})", mark(verdict))
            }
            Event::AlertFired { alert, value, action, .. } => {
                format!("  ! alert {alert} fired at {} ({action})", Measured(*value))
            }
            Event::Decided { key, decision } => {
                format!("  = {key} {} by {}", if decision.approved { "approved" } else { "rejected" }, decision.by)
            }
            Event::RollbackStarted { phase, reason } => format!("↺ rolling back phase {phase}: {reason}"),
            Event::RollbackFinished { ok, seconds, budget_seconds, breached, .. } => format!(
                "↺ rollback {} in {seconds:.1}s{}{}",
                if *ok { "finished" } else { "FAILED" },
                budget_seconds.map(|b| format!(" (budget {b:.0}s)")).unwrap_or_default(),
                if *breached { " — BUDGET BREACHED" } else { "" }
            ),
            Event::PhasePassed { phase } => format!("✓ phase {phase} passed"),
            Event::Checkpoint { .. }
            | Event::Metric { .. }
            | Event::Paused { .. }
            | Event::Interrupted { .. }
            | Event::RunFinished { .. } => return None,
        })
    }

    /// ` in 1.2s`, and ` (attempt 2)` after the first: how long the step took since it
    /// started, on the run's clock; nothing when its start was before this process.
    fn took(&mut self, phase: &str, step: &str, record: &Record) -> String {
        let Some((start, attempt)) = self.started.remove(&(phase.to_owned(), step.to_owned())) else {
            return String::new();
        };
        let again = if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
        let took = record.at.duration_since(start).unsigned_abs();
        format!(" in {}{again}", short(took))
    }
}

/// ` 45%` for a known fraction done, else nothing.
fn percent(fraction: Option<f64>) -> String {
    fraction.map(|f| format!(" {:.0}%", f * 100.0)).unwrap_or_default()
}

/// A duration in at most two units without spaces: `0.4s`, `12.0s`, `4m05s`, `2h10m`, `3d04h`.
fn short(duration: Duration) -> String {
    let tenths = (duration.as_millis() + 50) / 100;
    let seconds = u64::try_from((tenths + 5) / 10).unwrap_or(u64::MAX);
    match seconds {
        _ if tenths < 600 => format!("{}.{}s", tenths / 10, tenths % 10),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// The live view: bars redrawn in place.
struct Live {
    multi: MultiProgress,
    calendar: Calendar,
    /// One spinner per running step, by phase and step.
    steps: BTreeMap<(String, String), ProgressBar>,
    /// The current phase, and its criteria in the plan's order: id and line.
    phase: String,
    criteria: Vec<(String, ProgressBar)>,
    /// Each criterion's `needs metric op threshold`, by phase and criterion.
    targets: BTreeMap<(String, String), String>,
}

impl Live {
    fn new(plan: &Plan, screen: Screen) -> Live {
        let target = match screen {
            Screen::Stdout => ProgressDrawTarget::stdout(),
            Screen::Stderr => ProgressDrawTarget::stderr(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let calendar = Calendar::new(plan, &multi);
        let targets = plan
            .phases
            .iter()
            .flat_map(|phase| phase.criteria.iter().map(move |c| (phase, c)))
            .map(|(phase, c)| ((phase.id.to_string(), c.id.to_string()), escape(&needs(c)).into_owned()))
            .collect();
        *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = Some(multi.clone());
        Live { multi, calendar, steps: BTreeMap::new(), phase: String::new(), criteria: Vec::new(), targets }
    }

    fn notice(&mut self, notice: &Notice) {
        match notice {
            Notice::Progress { phase, step, message, fraction } => {
                let key = (phase.clone(), step.clone());
                if !self.steps.contains_key(&key) {
                    // A step started before this process (a resumed background step).
                    self.step_started(phase, step, Role::Forward);
                }
                if let Some(bar) = self.steps.get(&key) {
                    bar.set_message(escape(&format!("{step}{}: {message}", percent(*fraction))).into_owned());
                }
            }
            Notice::Record(record) => self.record(record),
        }
    }

    fn record(&mut self, record: &Record) {
        self.calendar.at(record);
        match &record.event {
            Event::PhaseStarted { phase } => self.phase(phase),
            Event::StepStarted { phase, step, role, .. } => self.step_started(phase, step, *role),
            Event::StepFinished { phase, step, .. }
            | Event::StepFailed { phase, step, .. }
            | Event::StepCompensated { phase, step, .. } => {
                if let Some(bar) = self.steps.remove(&(phase.clone(), step.clone())) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
            Event::CriterionEvaluated { phase, criterion, verdict, last, .. }
            | Event::AnalysisEvaluated { phase, criterion, verdict, last, .. } => {
                self.judged(phase, criterion, *verdict, *last);
            }
            _ => {}
        }
    }

    /// A phase began: its criteria replace the previous phase's, waiting for a value.
    fn phase(&mut self, phase: &str) {
        for (_, bar) in self.criteria.drain(..) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        phase.clone_into(&mut self.phase);
        let ids: Vec<String> =
            self.targets.keys().filter(|(p, _)| p == phase).map(|(_, criterion)| criterion.clone()).collect();
        for criterion in ids {
            let bar = self.multi.add(ProgressBar::new(1).with_style(style("{msg}")));
            self.criteria.push((criterion.clone(), bar));
            self.show(phase, &criterion, "·", "no value yet", "");
        }
    }

    /// A step began: a spinner with its elapsed time, above the criteria.
    fn step_started(&mut self, phase: &str, step: &str, role: Role) {
        let bar = ProgressBar::new_spinner().with_style(style("  {spinner} {msg} ({took})").tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏·"));
        let bar = match self.criteria.first() {
            Some((_, first)) => self.multi.insert_before(first, bar),
            None => self.multi.add(bar),
        };
        let what = if role == Role::Compensate { format!("undoing {step}") } else { step.to_owned() };
        bar.set_message(escape(&what).into_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Some(old) = self.steps.insert((phase.to_owned(), step.to_owned()), bar) {
            old.finish_and_clear();
            self.multi.remove(&old);
        }
    }

    /// Shows a criterion's latest value against its threshold, and its verdict.
    fn judged(&mut self, phase: &str, criterion: &str, verdict: Verdict, last: Option<f64>) {
        let mark = if verdict == Verdict::Pass { "✓" } else { "✗" };
        let value = last.map_or_else(|| "no value".to_owned(), |v| format!("last {}", Measured(v)));
        self.show(phase, criterion, mark, &value, &format!(": {verdict:?}"));
    }

    /// Writes a criterion's line, if it is one of the current phase's.
    fn show(&self, phase: &str, criterion: &str, mark: &str, value: &str, verdict: &str) {
        let key = (phase.to_owned(), criterion.to_owned());
        let Some((_, bar)) = self.criteria.iter().find(|(id, _)| id == criterion && self.phase == phase) else {
            return;
        };
        let needs = self.targets.get(&key).map(String::as_str).unwrap_or_default();
        bar.set_message(format!("  {mark} criterion {}: {value}, needs {needs}{verdict}", escape(criterion)));
    }
}

impl Drop for Live {
    /// Leaves the last frame: the steps still running (a person's decision awaited, an
    /// interrupt) say so, with their time.
    fn drop(&mut self) {
        *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = None;
        for bar in self.steps.values() {
            bar.disable_steady_tick();
            bar.set_style(style("  · {msg} (not finished after {took})"));
            bar.abandon();
        }
        self.calendar.bar.abandon();
        for (_, bar) in &self.criteria {
            bar.abandon();
        }
    }
}

/// What a criterion needs: `metric op threshold`, or a person's confirmation.
fn needs(criterion: &handoff_plan::model::Criterion) -> String {
    match (&criterion.metric, criterion.op, &criterion.threshold) {
        (Some(metric), Some(op), Some(threshold)) => format!("{metric} {} {}", op.symbol(), threshold.as_str()),
        _ => "a person's confirmation".to_owned(),
    }
}

/// A style from `template`, where `{took}` is the real time since the bar started (`4m05s`).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).with_key(
        "took",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&short(state.elapsed()));
        },
    )
}

/// Seconds in a plan day.
const DAY: u64 = 86_400;

/// The plan's calendar as a bar, in seconds of plan time when every phase is dated (plan
/// days), else in phases.
struct Calendar {
    /// Whether the bar counts plan days (else phases).
    dated: bool,
    /// Each phase's first and last position on the bar, by phase id.
    spans: BTreeMap<String, (u64, u64)>,
    /// The current phase and when it started, on the run's clock.
    current: Option<(String, Timestamp)>,
    /// Whether the current phase is rolling back.
    rolling_back: bool,
    /// The estimate of the real time left, shared with the bar's `{left}`.
    left: Arc<Mutex<Estimate>>,
    bar: ProgressBar,
}

/// How much real time is left, estimated from the progress made since the view started.
#[derive(Default)]
struct Estimate {
    /// The bar's position when the view saw its first record, and when.
    origin: Option<(u64, Instant)>,
    /// The time left as of an instant.
    left: Option<(Duration, Instant)>,
}

impl Estimate {
    /// Estimates from the progress to `position` of `length`, at the pace so far.
    fn update(&mut self, position: u64, length: u64) {
        let now = Instant::now();
        let (origin, since) = *self.origin.get_or_insert((position, now));
        let done = position.saturating_sub(origin);
        if done > 0 {
            let pace = now.duration_since(since).as_secs_f64() / done as f64;
            self.left = Some((Duration::from_secs_f64(pace * length.saturating_sub(position) as f64), now));
        }
    }

    /// `about 1m20s left`, counting down since the last estimate; `time left unknown`
    /// before any progress.
    fn show(&self, w: &mut dyn std::fmt::Write) {
        match self.left {
            Some((left, at)) => write!(w, "about {} left", short(left.saturating_sub(at.elapsed()))),
            None => write!(w, "time left unknown"),
        }
        .ok();
    }
}

impl Calendar {
    fn new(plan: &Plan, multi: &MultiProgress) -> Calendar {
        let dates = plan.calendar();
        let first = dates.iter().flatten().map(|d| d.start).min();
        let dated = first.is_some() && dates.iter().all(Option::is_some);
        let spans = match first {
            Some(first) if dated => dates
                .iter()
                .flatten()
                .zip(&plan.phases)
                .map(|(d, p)| (p.id.to_string(), (days(first.days_until(d.start)), days(first.days_until(d.end)))))
                .collect(),
            _ => plan.phases.iter().zip(0..).map(|(p, i)| (p.id.to_string(), (i, i + 1))).collect(),
        };
        let left = Arc::new(Mutex::new(Estimate::default()));
        let shared = Arc::clone(&left);
        let bar = multi.add(ProgressBar::new(1)).with_style(
            style("{prefix} [{bar:30}] {msg} · {took} elapsed, {left}")
                .with_key("left", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    shared.lock().unwrap_or_else(PoisonError::into_inner).show(w);
                })
                .progress_chars("=> "),
        );
        let calendar = Calendar { dated, spans, current: None, rolling_back: false, left, bar };
        calendar.bar.set_length(calendar.length().max(1));
        calendar.bar.set_prefix(calendar.count(0));
        calendar.bar.set_message("starting");
        calendar.bar.enable_steady_tick(Duration::from_millis(500));
        calendar
    }

    /// The bar's length: the last phase's end.
    fn length(&self) -> u64 {
        self.spans.values().map(|(_, end)| *end).max().unwrap_or(0)
    }

    /// `plan day 3 of 30` or `phase 2 of 4`, for a position on the bar.
    fn count(&self, position: u64) -> String {
        let (unit, size) = if self.dated { ("plan day", DAY) } else { ("phase", 1) };
        let total = self.length().div_ceil(size);
        format!("{unit} {} of {total}", (position / size + 1).min(total))
    }

    /// Moves the bar to where a record of the current phase falls: the phase's first
    /// position plus the time since it started (plan days only), never past its end.
    /// Records of earlier phases (a background step still syncing) leave the bar alone.
    fn at(&mut self, record: &Record) {
        let Some(phase) = record.event.phase() else { return };
        if matches!(record.event, Event::PhaseStarted { .. }) || self.current.is_none() {
            self.current = Some((phase.to_owned(), record.at));
        } else if self.current.as_ref().is_some_and(|(current, _)| current != phase) {
            return;
        }
        let Some(&(start, end)) = self.spans.get(phase) else { return };
        let since = self.current.as_ref().map_or(0, |(_, at)| record.at.duration_since(*at).unsigned_abs().as_secs());
        let position = match record.event {
            Event::PhasePassed { .. } => end,
            _ if self.dated => (start + since).min(end),
            _ => start,
        };
        self.bar.set_position(position);
        self.bar.set_prefix(self.count(position.min(end.saturating_sub(1))));
        match record.event {
            Event::PhaseStarted { .. } => self.rolling_back = false,
            Event::RollbackStarted { .. } => self.rolling_back = true,
            _ => {}
        }
        let doing = match record.event {
            Event::PhasePassed { .. } => " passed",
            Event::RollbackFinished { ok: true, .. } => " rolled back",
            Event::RollbackFinished { ok: false, .. } => " ROLLBACK FAILED",
            _ if self.rolling_back => " rolling back",
            _ => "",
        };
        self.bar.set_message(format!("phase {}{doing}", escape(phase)));
        self.left.lock().unwrap_or_else(PoisonError::into_inner).update(position, self.length());
    }
}

/// Whole plan days as seconds on the bar (none before the first day).
fn days(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0) * DAY
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::short;

    #[test]
    fn a_duration_reads_in_at_most_two_units() {
        let shown: Vec<String> = [0.04, 12.0, 59.96, 60.0, 245.0, 3600.0, 7830.0, 86_400.0, 273_600.0]
            .into_iter()
            .map(|s| short(Duration::from_secs_f64(s)))
            .collect();
        assert_eq!(shown, ["0.0s", "12.0s", "1m00s", "1m00s", "4m05s", "1h00m", "2h10m", "1d00h", "3d04h"]);
    }
}
