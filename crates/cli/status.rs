//! `handoff status`: where the latest run of a plan stands, read from its log and set
//! against the plan: position, calendar, pending decisions, criteria, rollback budget.

mod report;

use std::io::Write;

use handoff_engine::state::PhaseState;
use handoff_engine::{Engine, LockState};
use handoff_registry::Registry;
use report::{Budget, CalendarRow, CriterionRow, Pending, Report};

use crate::exit;
use crate::support::{self, Target};

/// Arguments of `handoff status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// How `handoff status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// One JSON document (the report's fields, documented in the README).
    Json,
}

/// `handoff status`.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Args { target, format } = args;
    support::init_tracing(false);
    let Some(plan) = crate::validate::load_plan(&target.plan, registry, out)? else { return Ok(exit::INVALID) };
    let store = target.store(&plan)?;
    let Some((state, lock)) = Engine::status(store.as_ref())? else {
        writeln!(out, "no run of {} in {} yet (state in {})", target.plan.display(), target.env, store.location())?;
        return Ok(exit::OK);
    };
    let mut report = Report::new(registry, &plan, &state);
    match &lock {
        LockState::Free => {}
        LockState::Held(record) => report.lock = Some(record),
        LockState::Damaged(message) => report.lock_damaged = Some(message),
    }
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Format::Text => write_status(&report, target, &mut support::Escaped(out))?,
    }
    Ok(exit::OK)
}

/// The run, its lock, where it is, then calendar, decisions, criteria, budget and phases.
fn write_status(report: &Report, target: &Target, out: &mut dyn Write) -> std::io::Result<()> {
    let state = report.state;
    writeln!(out, "run {} of {} in {}: {}", state.run, state.plan, state.env, report.status)?;
    writeln!(out, "  plan digest {}", state.digest)?;
    if let (Some(start), Some(last)) = (state.started_at, state.updated_at) {
        writeln!(out, "  started {start}, last record {last}")?;
    }
    if let Some(reason) = &state.interrupted {
        writeln!(out, "  interrupted: {reason}")?;
    }
    match (report.lock, report.lock_damaged) {
        (Some(lock), _) => writeln!(
            out,
            "  lock {} held by {} (pid {} on {}, epoch {}), heartbeat {}",
            lock.id, lock.owner, lock.pid, lock.host, lock.epoch, lock.heartbeat_at
        )?,
        (None, Some(message)) => writeln!(out, "  LOCK DAMAGED: {message}")?,
        (None, None) => writeln!(out, "  not locked")?,
    }
    match &report.position {
        Some(at) => {
            let step = at.step.as_ref().map(|s| format!(", step {s}: {}", at.step_status.unwrap_or("unknown")));
            writeln!(out, "  at phase {}{}", at.phase, step.unwrap_or_else(|| ", no step started".to_owned()))?;
        }
        None => writeln!(out, "  no phase started")?,
    }
    if let Some(until) = report.wakes_at {
        let (plan, env) = (target.plan.display(), &target.env);
        writeln!(out, "  next wake-up {until}: `handoff resume {plan} --env {env}` after it judges the slept window")?;
    }
    write_calendar(&report.calendar, out)?;
    write_pending(&report.pending, target, out)?;
    if let Some(at) = &report.position {
        write_criteria(&at.phase, &report.criteria, out)?;
    }
    if let Some(budget) = &report.rollback {
        write_budget(budget, out)?;
    }
    state.phases.iter().try_for_each(|phase| write_phase(phase, out))
}

fn write_calendar(rows: &[CalendarRow], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "  calendar (planned from the plan file, actual from the log):")?;
    for row in rows {
        let planned = match (row.planned_start, row.planned_end) {
            (Some(start), Some(end)) => format!("{start} to {end}"),
            _ => "not dated by the plan".to_owned(),
        };
        let actual = match (row.started_at, row.ended_at) {
            (None, _) => "not started".to_owned(),
            (Some(start), None) => format!("started {start}, not ended"),
            (Some(start), Some(end)) => format!("{start} to {end}"),
        };
        writeln!(out, "    {}: planned {planned}; actual {actual}", row.phase)?;
    }
    Ok(())
}

fn write_pending(pending: &[Pending], target: &Target, out: &mut dyn Write) -> std::io::Result<()> {
    if pending.is_empty() {
        return writeln!(out, "  no decision pending");
    }
    for decision in pending {
        let when = if decision.waiting { "waiting for" } else { "will ask for" };
        writeln!(out, "  {when} `{}`: {}", decision.key, decision.question)?;
        match decision.approvers.as_slice() {
            [] => writeln!(out, "    who: the plan names no approvers (anyone who can run `handoff approve`)")?,
            names => writeln!(out, "    who: {}", names.join(", "))?,
        }
        let (plan, env, key) = (target.plan.display(), &target.env, &decision.key);
        writeln!(out, "    give it: handoff approve {plan} --env {env} {key} --by <name> [--reject]")?;
    }
    Ok(())
}

fn write_criteria(phase: &str, rows: &[CriterionRow], out: &mut dyn Write) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "  phase {phase} has no criteria");
    }
    writeln!(out, "  criteria of phase {phase} (latest verdict in the log):")?;
    for row in rows {
        let verdict = match (row.verdict, &row.judged_by) {
            (Some(verdict), Some(by)) => format!("{verdict:?} ({by})"),
            _ => "not judged yet".to_owned(),
        };
        let value = match (&row.metric, row.last_value) {
            (None, _) => String::new(),
            (Some(_), Some(value)) => format!(", last value {value}"),
            (Some(_), None) => ", last value unknown".to_owned(),
        };
        writeln!(out, "    {}: {} → {verdict}{value}", row.id, row.condition)?;
    }
    Ok(())
}

fn write_budget(budget: &Budget, out: &mut dyn Write) -> std::io::Result<()> {
    let limit = budget.max_duration.as_deref().unwrap_or("none set by the plan");
    let used = match (&budget.reason, budget.ended) {
        (None, _) => "not rolled back".to_owned(),
        (Some(_), None) => "rolling back now".to_owned(),
        (Some(_), Some(end)) => {
            format!("rolled back in {:.1}s{}", end.seconds, if end.breached { ", BREACHED" } else { "" })
        }
    };
    writeln!(out, "  rollback budget of {}: {limit} ({used})", budget.phase)
}
/// A phase's standing, its steps and its criteria.
fn write_phase(phase: &PhaseState, out: &mut dyn Write) -> std::io::Result<()> {
    let word = match (&phase.rollback, phase.passed) {
        (_, true) => "passed".to_owned(),
        (Some(rollback), _) => match rollback.finished {
            Some(end) => format!(
                "rolled back{} in {:.1}s{}{} ({})",
                if end.ok { "" } else { " WITH FAILURES" },
                end.seconds,
                end.budget_seconds.map(|b| format!(" of {b:.0}s budget")).unwrap_or_default(),
                if end.breached { ", BUDGET BREACHED" } else { "" },
                rollback.reason
            ),
            None => format!("rolling back ({})", rollback.reason),
        },
        (None, false) => "in progress".to_owned(),
    };
    writeln!(out, "  phase {}: {word}", phase.id)?;
    for (id, step) in &phase.steps {
        let word = if step.finished {
            "done".to_owned()
        } else if let Some(error) = &step.error {
            format!("failed: {error}")
        } else {
            "running (or interrupted)".to_owned()
        };
        let checkpoint = if step.checkpoint.is_some() && !step.finished { ", has a checkpoint" } else { "" };
        writeln!(
            out,
            "    {id}: {word} ({} attempt{}{checkpoint})",
            step.attempts,
            if step.attempts == 1 { "" } else { "s" }
        )?;
    }
    for analysis in &phase.analyses {
        let whose = analysis.step.as_deref().map(|s| format!(" of {s}")).unwrap_or_default();
        let dry = if analysis.dry_run { ", dry run" } else { "" };
        let (at, criterion, verdict) = (&analysis.hold, &analysis.criterion, analysis.verdict);
        writeln!(out, "    analysis at {at}{whose}: {criterion} {verdict:?}{dry} ({})", analysis.detail)?;
    }
    for (id, result) in &phase.criteria {
        writeln!(out, "    criterion {id}: {:?} ({})", result.verdict, result.detail)?;
    }
    Ok(())
}
