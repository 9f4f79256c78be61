//! `handoff lock list|break`: who holds a plan's lock in an environment, and removing a
//! lock whose holder is gone (or a lock file that cannot be read).

use std::io::Write;

use handoff_engine::{BreakTarget, Broken, Engine, LockRecord, LockState};
use handoff_registry::Registry;

use crate::exit;
use crate::support::{self, Target};

/// `handoff lock …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Show who holds the lock: id, owner, host, pid, command, heartbeat, expiry, epoch.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lock (`ID`, from `handoff lock list` or the lock error) or a damaged lock
    /// file (`--damaged`), and record the break with its reason in the latest run's log
    /// if that run has not ended. A holder still running stops at its next write.
    #[command(after_help = "\
Examples:
  handoff lock break plans/release.yaml --env staging host-4242-1234 --reason \"host rebooted\"
  handoff lock break plans/release.yaml --env staging --damaged --reason \"lock.json truncated\"")]
    Break {
        #[command(flatten)]
        target: Target,
        /// The id of the lock to remove; a different current lock is refused.
        #[arg(required_unless_present = "damaged", conflicts_with = "damaged")]
        id: Option<String>,
        /// Remove a lock file that cannot be read (empty or corrupt); refused if it can.
        #[arg(long)]
        damaged: bool,
        /// Why (kept in the run's log).
        #[arg(long)]
        reason: String,
    },
}

/// `handoff lock`.
pub(crate) fn run(command: &Command, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    support::init_tracing(false);
    let target = match command {
        Command::List { target, .. } | Command::Break { target, .. } => target,
    };
    let Some(plan) = crate::validate::load_plan(&target.plan, registry, out)? else { return Ok(exit::INVALID) };
    let store = target.store(&plan)?;
    match command {
        Command::List { json, .. } => {
            let lock = LockState::of(store.as_ref())?;
            list(&lock, *json, &store.location(), out)?;
        }
        Command::Break { id, reason, .. } => {
            let target = id.clone().map_or(BreakTarget::Damaged, BreakTarget::Id);
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let broken = Engine::break_lock(store.as_ref(), &target, reason, &command)?;
            report_break(&broken, out)?;
        }
    }
    Ok(exit::OK)
}

/// Prints the lock: free, held (every field), or damaged.
fn list(lock: &LockState, json: bool, dir: &str, out: &mut dyn Write) -> std::io::Result<()> {
    match (lock, json) {
        (LockState::Free, true) => writeln!(out, "{}", serde_json::json!({"lock": null, "state": dir})),
        (LockState::Held(record), true) => {
            let stale = record.is_stale_now();
            let value =
                serde_json::json!({"lock": record, "expires_at": record.expires_at(), "stale": stale, "state": dir});
            writeln!(out, "{value}")
        }
        (LockState::Damaged(message), true) => {
            writeln!(out, "{}", serde_json::json!({"lock": {"damaged": message}, "state": dir}))
        }
        (LockState::Free, false) => writeln!(out, "not locked (state in {dir})"),
        (LockState::Held(record), false) => held(record, out),
        (LockState::Damaged(message), false) => writeln!(out, "DAMAGED: {message}"),
    }
}

/// A held lock, one field a line.
fn held(record: &LockRecord, out: &mut dyn Write) -> std::io::Result<()> {
    let stale = if record.is_stale_now() { "stale: its holder is gone" } else { "live" };
    writeln!(out, "lock {} ({stale})", record.id)?;
    writeln!(out, "  owner      {}", record.owner)?;
    writeln!(out, "  host       {} (pid {})", record.host, record.pid)?;
    writeln!(out, "  command    {}", record.command)?;
    writeln!(out, "  acquired   {}", record.acquired_at)?;
    writeln!(out, "  heartbeat  {}", record.heartbeat_at)?;
    writeln!(out, "  expires    {} ({}s after the heartbeat)", record.expires_at(), record.ttl_seconds)?;
    writeln!(out, "  epoch      {}", record.epoch)
}

/// What a break removed and where it was recorded.
fn report_break(broken: &Broken, out: &mut dyn Write) -> std::io::Result<()> {
    match &broken.removed {
        Some(record) => {
            writeln!(
                out,
                "broke lock {} of {} (pid {} on {}, epoch {})",
                record.id, record.owner, record.pid, record.host, record.epoch
            )?;
            if !record.is_stale_now() {
                writeln!(out, "  its holder looked alive: if it still runs, it stops at its next write")?;
            }
        }
        None => writeln!(out, "removed the damaged lock file")?,
    }
    match &broken.recorded {
        Ok(Some(run)) => writeln!(out, "  recorded in run {run} as its interruption; continue with `handoff resume`"),
        Ok(None) => writeln!(out, "  no unfinished run to record it in"),
        Err(error) => writeln!(out, "  warning: the break could not be recorded in the run's log: {error}"),
    }
}
