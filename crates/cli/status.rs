//! `handoff status`: where the latest run of a plan stands, read from its log.

use std::io::Write;

use handoff_engine::state::PhaseState;
use handoff_engine::{Engine, LockState, RunState};
use handoff_registry::Registry;

use crate::exit;
use crate::support::{self, Target};

/// Arguments of `handoff status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `handoff status`.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Args { target, json } = args;
    support::init_tracing(false);
    let Some(plan) = crate::validate::load_plan(&target.plan, registry, out)? else { return Ok(exit::INVALID) };
    let store = target.store(&plan)?;
    let Some((state, lock)) = Engine::status(store.as_ref())? else {
        writeln!(out, "no run of {} in {} yet (state in {})", target.plan.display(), target.env, store.location())?;
        return Ok(exit::OK);
    };
    if *json {
        let lock = match &lock {
            LockState::Free => serde_json::Value::Null,
            LockState::Held(record) => serde_json::json!(record),
            LockState::Damaged(message) => serde_json::json!({"damaged": message}),
        };
        writeln!(out, "{}", serde_json::json!({"status": state.status_word(), "state": state, "lock": lock}))?;
    } else {
        write_status(&state, &lock, &mut support::Escaped(out))?;
    }
    Ok(exit::OK)
}

/// The run, its lock, then every phase.
fn write_status(state: &RunState, lock: &LockState, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "run {} of {} in {}: {}", state.run, state.plan, state.env, state.status_word())?;
    writeln!(out, "  plan digest {}", state.digest)?;
    if let (Some(start), Some(last)) = (state.started_at, state.updated_at) {
        writeln!(out, "  started {start}, last record {last}")?;
    }
    if let Some(pause) = &state.paused {
        writeln!(out, "  waiting for `{}`: {}", pause.key, pause.reason)?;
    }
    if let Some(reason) = &state.interrupted {
        writeln!(out, "  interrupted: {reason}")?;
    }
    match lock {
        LockState::Held(lock) => writeln!(
            out,
            "  lock {} held by {} (pid {} on {}, epoch {}), heartbeat {}",
            lock.id, lock.owner, lock.pid, lock.host, lock.epoch, lock.heartbeat_at
        )?,
        LockState::Free => writeln!(out, "  not locked")?,
        LockState::Damaged(message) => writeln!(out, "  LOCK DAMAGED: {message}")?,
    }
    for phase in &state.phases {
        write_phase(phase, out)?;
    }
    Ok(())
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
