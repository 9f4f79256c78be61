//! `handoff approve`: a person's decision for a paused run, recorded in its log; or an
//! approval of a planned run (`handoff plan --out`), recorded in its file with the digest
//! approved.

use std::io::Write;
use std::path::PathBuf;

use handoff_executor::Decision;
use handoff_registry::Registry;

use crate::exit;
use crate::planned::{Approval, Planned};
use crate::support::{self, Prepared, StoreArgs, Target};

/// Arguments of `handoff approve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The plan file (with `--env` and KEY), or a planned run written by `handoff plan --out`.
    #[arg(value_name = "PLAN|PLANNED")]
    plan: PathBuf,
    /// The environment (a key of the plan's `environments`); a planned run names its own.
    #[arg(long)]
    env: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// What is decided, as printed by the paused run (e.g. `cutover/approval-1`). For a
    /// planned run: `apply` and gates' keys (default: `apply`, and the gate the run waits at).
    #[arg(value_name = "KEY")]
    keys: Vec<String>,
    /// Reject instead of approve.
    #[arg(long)]
    reject: bool,
    /// Who decides (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
    /// For a planned run: the digest the approver reviewed (default: the planned one).
    /// `handoff apply` refuses an approval of another digest.
    #[arg(long, value_name = "sha256:…")]
    digest: Option<String>,
}

/// `handoff approve`. Deciding needs no endpoints (nor their secrets), and no runtime.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    support::init_tracing(false);
    let by = args.by.clone().unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()));
    if let Some(planned) = Planned::read(&args.plan)? {
        return approve_planned(args, planned, by, out);
    }
    let (Some(env), [key]) = (&args.env, args.keys.as_slice()) else {
        anyhow::bail!(
            "approving a paused run needs `--env` and one KEY (a planned run from `handoff plan --out` needs neither)"
        )
    };
    if args.digest.is_some() {
        anyhow::bail!("`--digest` approves a planned run (`handoff plan --out`), not a plan file");
    }
    let target = Target { plan: args.plan.clone(), env: env.clone(), store: args.store.clone() };
    let Some(prepared) = Prepared::load(&target, registry, out)? else { return Ok(exit::INVALID) };
    let options = prepared.options(&target, None)?;
    let decision = Decision { approved: !args.reject, by, comment: args.comment.clone(), digest: None };
    let verb = if decision.approved { "approved" } else { "rejected" };
    match prepared.engine(registry).decide(&options, key, decision) {
        Ok(run) => {
            let (plan, env) = (target.plan.display(), &target.env);
            writeln!(out, "{verb} `{key}` in run {run}; continue with `handoff resume {plan} --env {env}`")?;
            Ok(exit::OK)
        }
        Err(error) => exit::engine_error(error),
    }
}

/// Adds approvals of `keys` (default: `apply` and the gate waited at) to a planned run.
fn approve_planned(args: &Args, mut planned: Planned, by: String, out: &mut dyn Write) -> anyhow::Result<u8> {
    if args.reject {
        anyhow::bail!("a planned run is not rejected: leave it unapproved, or plan again");
    }
    if args.env.as_ref().is_some_and(|env| env != &planned.env) {
        anyhow::bail!(
            "{} plans a run in `{}`, not in `{}`",
            args.plan.display(),
            planned.env,
            args.env.as_deref().unwrap_or("")
        );
    }
    let keys = if args.keys.is_empty() { planned.default_keys() } else { args.keys.clone() };
    if let Some(unknown) = keys.iter().find(|key| !planned.keys.contains(key)) {
        anyhow::bail!("`{unknown}` is not a decision of this plan; it has: {}", planned.keys.join(", "));
    }
    let digest = args.digest.clone().unwrap_or_else(|| planned.reviewed.digest.clone());
    let at = jiff::Timestamp::now().to_string();
    for key in &keys {
        let approval = Approval {
            key: key.clone(),
            by: by.clone(),
            at: at.clone(),
            digest: digest.clone(),
            comment: args.comment.clone(),
        };
        planned.approvals.push(approval);
    }
    planned.write(&args.plan)?;
    let out = &mut support::Escaped(out);
    writeln!(out, "approved {} of {} by {by} (digest {digest})", keys.join(", "), args.plan.display())?;
    if digest != planned.reviewed.digest {
        writeln!(
            out,
            "warning: the planned digest is {}; `handoff apply` will refuse this approval",
            planned.reviewed.digest
        )?;
    }
    writeln!(out, "apply with `handoff apply {}`", args.plan.display())?;
    Ok(exit::OK)
}
