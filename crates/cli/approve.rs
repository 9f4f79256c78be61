//! `handoff approve`: a person's decision for a paused run, recorded in its log.

use std::io::Write;

use handoff_executor::Decision;
use handoff_registry::Registry;

use crate::exit;
use crate::support::{self, Prepared, Target};

/// Arguments of `handoff approve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// What is decided, as printed by the paused run (e.g. `cutover/approval-1`).
    key: String,
    /// Reject instead of approve.
    #[arg(long)]
    reject: bool,
    /// Who decides (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
}

/// `handoff approve`. Deciding needs no endpoints (nor their secrets), and no runtime.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Args { target, key, reject, by, comment } = args;
    support::init_tracing(false);
    let Some(prepared) = Prepared::load(target, registry, out)? else { return Ok(exit::INVALID) };
    let options = prepared.options(target, None)?;
    let by = by.clone().unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()));
    let decision = Decision { approved: !reject, by, comment: comment.clone() };
    let verb = if decision.approved { "approved" } else { "rejected" };
    match prepared.engine(registry).decide(&options, key, decision) {
        Ok(run) => {
            writeln!(
                out,
                "{verb} `{key}` in run {run}; continue with `handoff resume {} --env {}`",
                target.plan.display(),
                target.env
            )?;
            Ok(exit::OK)
        }
        Err(error) => exit::engine_error(error),
    }
}
