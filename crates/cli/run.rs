//! `handoff run`, `resume` and `abort`: each prepares the engine and hands one engine call
//! to [`drive`], which prints the run's notices until it ends.

use std::io::Write;

use handoff_engine::{Engine, EngineError, Graph, Outcome, RunOptions};
use handoff_registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::export::{ExportArgs, Exporter};
use crate::support::{self, Exec, Prepared, Printer, Signals, Target};

/// Arguments of `handoff run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    exec: Exec,
    #[command(flatten)]
    export: ExportArgs,
}

/// Arguments of `handoff resume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    exec: Exec,
    #[command(flatten)]
    export: ExportArgs,
    /// For a step that was running when the run stopped and is not idempotent: whether
    /// it took effect (`done`) or must run again (`retry`); during a rollback, `retry` says
    /// it did not take effect (nothing to undo). `PHASE/STEP/undo=…` settles the step's
    /// interrupted undo the same way.
    #[arg(long, value_name = "PHASE/STEP=done|retry", value_parser = parse_settle)]
    settle: Vec<(String, String, bool)>,
}

/// Arguments of `handoff abort`.
#[derive(Debug, clap::Args)]
pub(crate) struct AbortArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    exec: Exec,
    /// Why (kept in the log).
    #[arg(long, default_value = "aborted by a person")]
    reason: String,
}

/// Parses `PHASE/STEP=done|retry`.
fn parse_settle(text: &str) -> Result<(String, String, bool), String> {
    let (key, how) = text.split_once('=').ok_or("expected PHASE/STEP=done or PHASE/STEP=retry")?;
    let (phase, step) = key.split_once('/').ok_or("expected PHASE/STEP=done or PHASE/STEP=retry")?;
    let done = match how {
        "done" => true,
        "retry" => false,
        _ => return Err(format!("`{how}`: expected done or retry")),
    };
    Ok((phase.to_owned(), step.to_owned(), done))
}

/// `handoff run`: starts a run (or, with `--dry-run`, says what it would do).
pub(crate) fn run(args: &RunArgs, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let RunArgs { target, exec, export } = args;
    let Some((prepared, options)) = prepare(target, exec, registry, out)? else { return Ok(exit::INVALID) };
    let engine = prepared.engine(registry);
    if exec.dry_run {
        return dry_run(&prepared.graph, &engine, &options, out);
    }
    let exporter = Exporter::start(&prepared.graph.plan, &options.env, export)?;
    let cancel = CancellationToken::new();
    let work = engine.start(&options, &cancel);
    drive("run", &engine, work, &cancel, Printer::new(target, exec, out), exporter)
}

/// `handoff resume`: continues the latest run where it stopped.
pub(crate) fn resume(args: &ResumeArgs, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let ResumeArgs { target, exec, export, settle } = args;
    let Some((prepared, options)) = prepare(target, exec, registry, out)? else { return Ok(exit::INVALID) };
    let engine = prepared.engine(registry);
    let exporter = Exporter::start(&prepared.graph.plan, &options.env, export)?;
    let cancel = CancellationToken::new();
    let work = engine.resume(&options, settle, &cancel);
    drive("resume", &engine, work, &cancel, Printer::new(target, exec, out), exporter)
}

/// `handoff abort`: rolls back the phase in progress and ends the latest run.
pub(crate) fn abort(args: &AbortArgs, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let AbortArgs { target, exec, reason } = args;
    let Some((prepared, options)) = prepare(target, exec, registry, out)? else { return Ok(exit::INVALID) };
    let engine = prepared.engine(registry);
    let cancel = CancellationToken::new();
    drive("abort", &engine, engine.abort(&options, reason, &cancel), &cancel, Printer::new(target, exec, out), None)
}

/// What run, resume and abort share before their engine call: logging, the plan loaded and
/// compiled and the engine's options. `None` when the plan is invalid (its diagnostics are written to `out`).
fn prepare(
    target: &Target,
    exec: &Exec,
    registry: &Registry,
    out: &mut dyn Write,
) -> anyhow::Result<Option<(Prepared, RunOptions)>> {
    support::init_tracing(exec.json_logs());
    let Some(prepared) = Prepared::load(target, registry, out)? else { return Ok(None) };
    let options = prepared.options(target, Some(exec))?;
    Ok(Some((prepared, options)))
}

/// Runs `work` (one of `engine`'s run calls, watching `cancel`) to its end on a runtime of
/// its own, printing the engine's notices as they come. The first SIGINT or SIGTERM cancels
/// the work (running steps are stopped: SIGTERM to their process groups, SIGKILL after the
/// grace), a second exits at once. Returns the exit code of the outcome. The `exporter`,
/// when there is one, sees every notice and pushes its last state before this returns.
pub(crate) fn drive(
    command: &str,
    engine: &Engine<'_>,
    work: impl Future<Output = Result<(String, Outcome), EngineError>>,
    cancel: &CancellationToken,
    mut printer: Printer<'_>,
    exporter: Option<Exporter>,
) -> anyhow::Result<u8> {
    let export = |notice: &handoff_engine::Notice| {
        if let Some(exporter) = &exporter {
            exporter.notice(notice);
        }
    };
    let code = support::runtime()?.block_on(async {
        let mut signals = Signals::new()?;
        let mut notices = engine.subscribe();
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                notice = notices.recv() => if let Ok(notice) = notice { export(&notice); printer.notice(&notice)? },
                () = signals.next() => {
                    if cancel.is_cancelled() {
                        eprintln!("second interrupt: exiting now; `handoff resume` continues from the log");
                        return Ok(exit::INTERRUPTED);
                    }
                    eprintln!("interrupt: stopping the running steps (SIGTERM, SIGKILL after 5 s); Ctrl-C again exits at once");
                    cancel.cancel();
                }
            }
        };
        while let Ok(notice) = notices.try_recv() {
            export(&notice);
            printer.notice(&notice)?;
        }
        tracing::debug!(command, "done");
        match result {
            Ok((run, outcome)) => printer.outcome(&run, &outcome),
            Err(error) => exit::engine_error(error),
        }
    });
    if let Some(exporter) = exporter {
        exporter.finish();
    }
    code
}

/// `handoff run --dry-run`: every step with what it would do, and what would be refused.
fn dry_run(graph: &Graph, engine: &Engine<'_>, options: &RunOptions, out: &mut dyn Write) -> anyhow::Result<u8> {
    let out = &mut support::Escaped(out);
    writeln!(
        out,
        "dry run of {} in {} ({}); nothing is executed or recorded",
        graph.plan.metadata.name, options.env, graph.digest
    )?;
    for phase in &graph.phases {
        writeln!(out, "phase {}: {}", phase.id, phase.name)?;
        for step in phase.stages.iter().flatten() {
            writeln!(out, "  {} ({}): {}", step.id, step.uses, step.describe)?;
        }
        for step in &phase.rollback {
            writeln!(out, "  on rollback: {} ({}): {}", step.id, step.uses, step.describe)?;
        }
    }
    let refused = engine.preflight(options);
    if refused.is_empty() {
        writeln!(out, "the run would start")?;
        Ok(exit::OK)
    } else {
        writeln!(out, "the run would refuse:\n{}", refused.join("\n"))?;
        Ok(exit::ERROR)
    }
}
