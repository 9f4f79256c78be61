//! Progress people can follow, shared by `handoff run` (and `resume`, `abort`) and
//! `handoff simulate`. In a terminal, a live view: the plan's calendar as a bar (plan day
//! N of M on the run's clock, real time elapsed), the current phase and step with its
//! elapsed time, and the latest value of each criterion against its threshold, with the
//! plain lines scrolling above. Elsewhere (CI logs), plain lines only: one per finished
//! step with its duration on the run's clock, one per verdict. JSON records never come
//! here.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_engine::{Event, Notice, Record, Verdict};
use handoff_plan::escape::escape;
use handoff_plan::model::Plan;
use handoff_plan::units::Measured;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    pub(crate) fn is_terminal(self) -> bool {
        use std::io::IsTerminal as _;
        match self {
            Screen::Stdout => std::io::stdout().is_terminal(),
            Screen::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Turns the engine's notices into plain lines, and draws the live view when there is one.
pub(crate) struct Progress {
    /// When each running step (by phase and step) started, on the run's clock.
    started: BTreeMap<(String, String), Timestamp>,
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

    /// Takes one notice. Returns the plain line to print, if any; with a live view, the
    /// line is printed above the view and `None` is returned.
    pub(crate) fn notice(&mut self, notice: &Notice) -> Option<String> {
        let text = match notice {
            Notice::Record(record) => self.line(record),
            Notice::Progress { step, message, fraction, .. } => {
                let percent = fraction.map(|f| format!(" {:.0}%", f * 100.0)).unwrap_or_default();
                Some(format!("    … {step}{percent}: {message}"))
            }
        };
        let text = text.map(|t| escape(&t).to_string());
        let Some(live) = &mut self.live else { return text };
        live.notice(notice);
        if let Some(text) = text {
            let _ = live.multi.println(&text);
        }
        None
    }

    /// Leaves the live view's last frame on the screen, before the outcome is printed.
    pub(crate) fn finish(&mut self) {
        if let Some(live) = self.live.take() {
            live.finish();
        }
    }

    /// The plain line of a record: none when a step starts, the duration when it ends.
    fn line(&mut self, record: &Record) -> Option<String> {
        match &record.event {
            Event::StepStarted { phase, step, .. } => {
                self.started.insert((phase.clone(), step.clone()), record.at);
                None
            }
            Event::StepFinished { phase, step, .. } => Some(format!("  ✓ {step}{}", self.took(phase, step, record))),
            Event::StepCompensated { phase, step, outcome, .. } => {
                Some(format!("  ↺ {step}{}: {outcome}", self.took(phase, step, record)))
            }
            _ => crate::support::line(record),
        }
    }

    /// ` in 1.2s`: how long the step took since it started, on the run's clock.
    fn took(&mut self, phase: &str, step: &str, record: &Record) -> String {
        let Some(start) = self.started.remove(&(phase.to_owned(), step.to_owned())) else { return String::new() };
        let seconds = record.at.duration_since(start).as_secs_f64().max(0.0);
        format!(" in {}", short(Duration::from_secs_f64(seconds)))
    }
}

/// A duration in at most two units without spaces: `0.4s`, `12.0s`, `4m05s`, `2h10m`, `3d04h`.
pub(crate) fn short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// The live view: bars redrawn in place.
struct Live {
    multi: MultiProgress,
    calendar: Calendar,
    step: ProgressBar,
    /// One line per criterion judged so far, by phase and criterion.
    criteria: BTreeMap<(String, String), ProgressBar>,
    /// Each criterion's `metric op threshold`, by phase and criterion.
    targets: BTreeMap<(String, String), String>,
}

impl Live {
    fn new(plan: &Plan, screen: Screen) -> Live {
        let target = match screen {
            Screen::Stdout => ProgressDrawTarget::stdout(),
            Screen::Stderr => ProgressDrawTarget::stderr(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let calendar = Calendar::new(plan);
        let bar = multi.add(ProgressBar::new(calendar.length()));
        bar.set_style(style("{prefix} [{bar:30}] {msg}, {elapsed} real time"));
        bar.set_prefix(calendar.unit);
        bar.set_message(format!("{} of {}", 0, calendar.length()));
        let step = multi.add(ProgressBar::new_spinner());
        step.set_style(style("{spinner} {msg} ({elapsed})"));
        step.set_message("starting");
        step.enable_steady_tick(Duration::from_millis(200));
        let targets = plan
            .phases
            .iter()
            .flat_map(|phase| phase.criteria.iter().map(move |c| (phase, c)))
            .map(|(phase, c)| ((phase.id.to_string(), c.id.to_string()), threshold(c)))
            .collect();
        Live { multi, calendar: Calendar { bar, ..calendar }, step, criteria: BTreeMap::new(), targets }
    }

    fn notice(&mut self, notice: &Notice) {
        match notice {
            Notice::Progress { phase, step, message, fraction, .. } => {
                let percent = fraction.map(|f| format!(" {:.0}%", f * 100.0)).unwrap_or_default();
                self.step.set_message(escape(&format!("phase {phase} · step {step}{percent}: {message}")).to_string());
            }
            Notice::Record(record) => self.record(record),
        }
    }

    fn record(&mut self, record: &Record) {
        self.calendar.at(record);
        match &record.event {
            Event::StepStarted { phase, step, .. } => {
                self.step.reset_elapsed();
                self.step.set_message(escape(&format!("phase {phase} · step {step}")).to_string());
            }
            Event::CriterionEvaluated { phase, criterion, verdict, last, .. }
            | Event::AnalysisEvaluated { phase, criterion, verdict, last, .. } => {
                self.judged(phase, criterion, *verdict, *last);
            }
            _ => {}
        }
    }

    /// Shows a criterion's latest value against its threshold.
    fn judged(&mut self, phase: &str, criterion: &str, verdict: Verdict, last: Option<f64>) {
        let key = (phase.to_owned(), criterion.to_owned());
        let mark = if verdict == Verdict::Pass { "✓" } else { "✗" };
        let value = last.map_or_else(|| "no value".to_owned(), |v| Measured(v).to_string());
        let target = self.targets.get(&key).map(String::as_str).unwrap_or_default();
        let text = escape(&format!("  {mark} {phase}/{criterion}: {value} against {target} — {verdict:?}")).to_string();
        let multi = &self.multi;
        let bar = self.criteria.entry(key).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(1));
            bar.set_style(style("{msg}"));
            bar
        });
        bar.set_message(text);
    }

    fn finish(self) {
        self.step.disable_steady_tick();
        self.step.abandon_with_message("finished");
        self.calendar.bar.abandon();
        for bar in self.criteria.values() {
            bar.abandon();
        }
    }
}

/// A criterion's `metric op threshold`, or `confirmed by a person`.
fn threshold(criterion: &handoff_plan::model::Criterion) -> String {
    match (&criterion.metric, criterion.op, &criterion.threshold) {
        (Some(metric), Some(op), Some(threshold)) => format!("{metric} {} {}", op.symbol(), threshold.as_str()),
        _ => "a person's confirmation".to_owned(),
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// The plan's calendar as a bar: plan days when its phases are dated, else phases.
struct Calendar {
    unit: &'static str,
    /// Each phase's (first, last) position on the bar, by phase id.
    spans: BTreeMap<String, (u64, u64)>,
    /// The current phase and when it started, on the run's clock.
    current: Option<(String, Timestamp)>,
    bar: ProgressBar,
}

impl Calendar {
    fn new(plan: &Plan) -> Calendar {
        let dates = plan.calendar();
        let first = dates.iter().flatten().map(|d| d.start).min();
        let spans = match first {
            Some(first) if dates.iter().all(Option::is_some) => dates
                .iter()
                .flatten()
                .zip(&plan.phases)
                .map(|(d, p)| (p.id.to_string(), (days(first.days_until(d.start)), days(first.days_until(d.end)))))
                .collect(),
            _ => plan.phases.iter().zip(0..).map(|(p, i)| (p.id.to_string(), (i, i + 1))).collect(),
        };
        let unit = if first.is_some() && dates.iter().all(Option::is_some) { "plan day" } else { "phase" };
        Calendar { unit, spans, current: None, bar: ProgressBar::hidden() }
    }

    /// The bar's length: the last phase's end.
    fn length(&self) -> u64 {
        self.spans.values().map(|(_, end)| *end).max().unwrap_or(0)
    }

    /// Moves the bar to where the record falls: its phase's first day plus the time since
    /// the phase started (plan days only), never past the phase's end.
    fn at(&mut self, record: &Record) {
        let Some(phase) = record.event.phase() else { return };
        if self.current.as_ref().is_none_or(|(current, _)| current != phase) {
            self.current = Some((phase.to_owned(), record.at));
        }
        let Some(&(start, end)) = self.spans.get(phase) else { return };
        let since = self.current.as_ref().map_or(0, |(_, at)| record.at.duration_since(*at).as_secs().max(0));
        let elapsed = if self.unit == "plan day" { days(since / 86_400) } else { 0 };
        let passed = matches!(record.event, Event::PhasePassed { .. });
        let position = if passed { end } else { (start + elapsed).min(end.saturating_sub(1)).max(start) };
        self.bar.set_position(position);
        let shown = if passed { position } else { position + 1 };
        self.bar.set_message(format!("{shown} of {}", self.length()));
    }
}

fn days(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
