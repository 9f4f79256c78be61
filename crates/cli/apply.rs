//! `handoff apply`: runs a planned run (`handoff plan --out`) exactly as it was approved.
//! It refuses, with a diff, when the plan, its graph, the environment's endpoints, the
//! executors or the run's position changed since it was planned, when an approval names
//! another digest, and when the approvals it needs are missing. Approvals of gates are
//! recorded in the run's log (with the digest) when the run reaches them.

use std::io::Write;
use std::path::PathBuf;

use handoff_engine::{Engine, Graph, RunOptions};
use handoff_executor::Decision;
use handoff_plan::model::missing_approvals;
use handoff_registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::export::{ExportArgs, Exporter};
use crate::planned::{APPLY, Approval, Planned, Reviewed, diff};
use crate::support::{self, Exec, Prepared, Printer, StoreArgs, Target};

/// Arguments of `handoff apply`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The planned run, written by `handoff plan --out` and approved with `handoff approve`.
    #[arg(value_name = "PLANNED")]
    planned: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    exec: Exec,
    #[command(flatten)]
    export: ExportArgs,
}

/// `handoff apply`.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(planned) = Planned::read(&args.planned)? else {
        anyhow::bail!(
            "{} is not a planned run; write one with `handoff plan PLAN --env ENV --out FILE`",
            args.planned.display()
        )
    };
    support::init_tracing(args.exec.json_logs());
    let target = Target { plan: planned.plan.clone(), env: planned.env.clone(), store: args.store.clone() };
    let Some((prepared, source)) = crate::planned::load(&target, registry, out)? else { return Ok(exit::INVALID) };
    let now = Reviewed::now(&prepared.graph, source, &planned.env, registry, prepared.store.as_ref())?;
    let refusals = refusals(&planned, &now, &prepared.graph);
    if !refusals.is_empty() {
        let out = &mut support::Escaped(out);
        writeln!(out, "apply refused: {}; nothing ran", args.planned.display())?;
        for refusal in refusals {
            write!(out, "{refusal}")?;
        }
        return Ok(exit::REFUSED);
    }
    let options = prepared.options(&target, Some(&args.exec))?;
    if args.exec.dry_run {
        let what = planned.reviewed.position.describe();
        writeln!(support::Escaped(out), "{} may be applied ({what}); --dry-run: nothing ran", args.planned.display())?;
        return Ok(exit::OK);
    }
    apply(&Applying { planned: &planned, target: &target, prepared: &prepared, registry, options }, args, out)
}

/// Why `planned` may not be applied now: each reason a paragraph, empty when it may.
fn refusals(planned: &Planned, now: &Reviewed, graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(diff) = diff(&planned.reviewed.text(), &now.text(), "planned", "now") {
        out.push(format!(
            "- the plan, its endpoints, executors or the run's position changed since it was planned:\n{diff}"
        ));
    }
    for approval in planned.approvals.iter().filter(|a| a.digest != planned.reviewed.digest) {
        let (approved, digest) =
            (format!("digest: {}\n", approval.digest), format!("digest: {}\n", planned.reviewed.digest));
        let label = format!("approved by {} ({})", approval.by, approval.key);
        let shown = diff(&approved, &digest, &label, "planned").unwrap_or_default();
        out.push(format!("- {} approved `{}` of another digest:\n{shown}", approval.by, approval.key));
    }
    let valid: Vec<&Approval> = planned.approvals.iter().filter(|a| a.digest == planned.reviewed.digest).collect();
    if !valid.iter().any(|a| a.key == APPLY) {
        out.push("- nobody approved applying it: `handoff approve FILE --by NAME`\n".to_owned());
    }
    if let Some(missing) = planned.reviewed.position.paused.as_deref().and_then(|key| gate_missing(graph, key, &valid))
    {
        out.push(missing);
    }
    out
}

/// What the approval gate `key` (the one the run waits at) still lacks among `approvals`;
/// `None` when it is met or is not a gate.
fn gate_missing(graph: &Graph, key: &str, approvals: &[&Approval]) -> Option<String> {
    let gate = graph.phases.iter().flat_map(|p| &p.approvals).find(|gate| gate.key.to_string() == key)?;
    let by: Vec<&str> = approvals.iter().filter(|a| a.key == key).map(|a| a.by.as_str()).collect();
    if gate.require.is_empty() {
        return by.is_empty().then(|| format!("- the run waits at gate `{key}`, which nobody approved\n"));
    }
    let missing = missing_approvals(&gate.require, &graph.plan.approvers, &by);
    let needs: Vec<String> = missing.iter().map(|m| format!("{} more from `{}`", m.count, m.group)).collect();
    (!missing.is_empty()).then(|| format!("- the run waits at gate `{key}`, which needs {}\n", needs.join(" and ")))
}

/// A planned run being applied.
struct Applying<'a> {
    planned: &'a Planned,
    target: &'a Target,
    prepared: &'a Prepared,
    registry: &'a Registry,
    options: RunOptions,
}

/// Starts or resumes the run; whenever it pauses at a gate the planned run holds approvals
/// for that the log does not, records them and resumes. Returns the last exit code.
fn apply(applying: &Applying<'_>, args: &Args, out: &mut dyn Write) -> anyhow::Result<u8> {
    let engine = applying.prepared.engine(applying.registry);
    let fresh = applying.planned.reviewed.position.starts_anew();
    if !fresh {
        record_approvals(applying, &engine)?;
    }
    let mut code = drive(applying, &engine, fresh, args, out)?;
    while code == exit::PAUSED && record_approvals(applying, &engine)? > 0 {
        code = drive(applying, &engine, false, args, out)?;
    }
    Ok(code)
}

/// Records in the log the planned run's approvals of the gate the run waits at that the
/// log does not hold yet (each with the digest approved); returns how many.
fn record_approvals(applying: &Applying<'_>, engine: &Engine<'_>) -> anyhow::Result<usize> {
    let Some((state, _)) = Engine::status(applying.prepared.store.as_ref())? else { return Ok(0) };
    let Some(key) = state.paused.map(|pause| pause.key) else { return Ok(0) };
    let recorded: Vec<&str> = state.approvals.get(&key).into_iter().flatten().map(|d| d.by.as_str()).collect();
    let planned = applying.planned;
    let new: Vec<&Approval> = planned
        .approvals
        .iter()
        .filter(|a| a.key == key && a.digest == planned.reviewed.digest && !recorded.contains(&a.by.as_str()))
        .collect();
    let options = applying.prepared.options(applying.target, None)?;
    for approval in &new {
        let decision = Decision {
            approved: true,
            by: approval.by.clone(),
            comment: approval.comment.clone(),
            digest: Some(approval.digest.clone()),
        };
        if let Err(error) = engine.decide(&options, &key, decision) {
            return Err(
                anyhow::Error::from(error).context(format!("cannot record {}'s approval of `{key}`", approval.by))
            );
        }
    }
    Ok(new.len())
}

/// Starts (`fresh`) or resumes the run and prints it to its end.
fn drive(
    applying: &Applying<'_>,
    engine: &Engine<'_>,
    fresh: bool,
    args: &Args,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let options = &applying.options;
    let exporter = Exporter::start(&applying.prepared.graph.plan, &options.env, &args.export)?;
    let cancel = CancellationToken::new();
    let printer = Printer::new(applying.target, &args.exec, out);
    if fresh {
        crate::run::drive("apply", engine, engine.start(options, &cancel), &cancel, printer, exporter)
    } else {
        crate::run::drive("apply", engine, engine.resume(options, &[], &cancel), &cancel, printer, exporter)
    }
}
