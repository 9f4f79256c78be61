//! `handoff plan show`, `run`, `resume`, `status`, `abort` and `approve`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use handoff_engine::{
    DirStore, Engine, EngineError, Event, Graph, Notice, Outcome, Record, RunOptions, RunState, StoreError,
};
use handoff_executor::{Clock, Decision, Endpoints, Policy, SystemClock, VirtualClock, expand_env};
use handoff_plan::model::Plan;
use handoff_registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::sandbox::Signals;
use crate::{EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK};

/// Exit code: a phase failed and was rolled back within its budget.
pub(crate) const EXIT_ROLLED_BACK: u8 = 3;
/// Exit code: the run waits for a person (approval, confirmation, settling a step).
pub(crate) const EXIT_PAUSED: u8 = 4;
/// Exit code: a rollback failed or overran its budget.
pub(crate) const EXIT_ROLLBACK_FAILED: u8 = 5;
/// Exit code: another run holds the lock.
pub(crate) const EXIT_LOCKED: u8 = 6;

/// Default lock expiry after the last heartbeat.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// Which plan, in which environment, with its state where.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    plan: PathBuf,
    /// The environment (a key of the plan's `environments`).
    #[arg(long)]
    env: String,
    /// Where runs keep their state (event logs and locks).
    #[arg(long, env = "HANDOFF_STATE_DIR", default_value = ".handoff/state")]
    state_dir: PathBuf,
}

/// How a run executes.
#[derive(Debug, clap::Args)]
pub(crate) struct Exec {
    /// Allow `shell.run` steps (review their commands first).
    #[arg(long)]
    allow_shell: bool,
    /// Start points of no return (`reversible: false` phases) without stopping to ask.
    #[arg(long)]
    confirm_irreversible: bool,
    /// Take over this lock although its holder looks alive (the id is in the lock error).
    #[arg(long, value_name = "LOCK_ID")]
    force_unlock: Option<String>,
    /// Real time, or virtual time that skips every wait (rehearsals).
    #[arg(long, value_enum, default_value_t = ClockArg::Real)]
    clock: ClockArg,
    /// Print what each step would do, check the run would start, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Progress as text for people, or one JSON record per line for CI.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Exec {
    /// Whether logs and progress are JSON.
    pub(crate) fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClockArg {
    /// Wall-clock time: waits really wait.
    Real,
    /// Compressed time: waits are skipped, timestamps read in plan time.
    Virtual,
}

/// Formats of progress and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// For people.
    Text,
    /// JSON lines: records on stdout, logs on stderr.
    Json,
}

/// `handoff plan …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PlanCommand {
    /// Print the execution graph a plan compiles to, with its digest.
    Show {
        /// The plan file.
        plan: PathBuf,
        /// Text, or a mermaid flowchart.
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShowFormat {
    /// Phases, steps, gates, criteria and rollbacks.
    Text,
    /// A mermaid flowchart.
    Mermaid,
}

/// Execution commands.
#[derive(Debug)]
pub(crate) enum Command {
    Run { target: Target, exec: Exec },
    Resume { target: Target, exec: Exec, settle: Vec<(String, String, bool)> },
    Abort { target: Target, exec: Exec, reason: String },
    Status { target: Target, json: bool },
    Approve { target: Target, key: String, decision: Decision },
}

/// Parses `PHASE/STEP=done|retry`.
pub(crate) fn parse_settle(text: &str) -> Result<(String, String, bool), String> {
    let (key, how) = text.split_once('=').ok_or("expected PHASE/STEP=done or PHASE/STEP=retry")?;
    let (phase, step) = key.split_once('/').ok_or("expected PHASE/STEP=done or PHASE/STEP=retry")?;
    let done = match how {
        "done" => true,
        "retry" => false,
        _ => return Err(format!("`{how}`: expected done or retry")),
    };
    Ok((phase.to_owned(), step.to_owned(), done))
}

/// `handoff plan show`.
pub(crate) fn show(command: PlanCommand, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let PlanCommand::Show { plan, format } = command;
    let Some(plan) = crate::validate::load_plan(&plan, registry, out)? else { return Ok(EXIT_INVALID) };
    let graph = compile(&plan, registry)?;
    match format {
        ShowFormat::Text => write!(out, "{}", graph.text())?,
        ShowFormat::Mermaid => write!(out, "{}", graph.mermaid())?,
    }
    Ok(EXIT_OK)
}

/// Compiles a plan against the registry.
fn compile(plan: &Plan, registry: &Registry) -> anyhow::Result<Graph> {
    Graph::compile(plan, registry).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!("the plan cannot run:\n{}", lines.join("\n"))
    })
}

/// Resolves the environment's endpoints (`${VAR}` expanded); names the first unset one.
fn endpoints(plan: &Plan, env: &str) -> anyhow::Result<Endpoints> {
    let Some(environment) = plan.environments.get(env) else {
        let known: Vec<&str> = plan.environments.keys().map(|k| k.as_str()).collect();
        anyhow::bail!(
            "environment `{env}` is not in the plan; it defines: {}",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    };
    let mut values = BTreeMap::new();
    for (name, template) in &environment.endpoints {
        let value = expand_env(template).with_context(|| format!("environment `{env}`, endpoint `{name}`"))?;
        values.insert(name.to_string(), value);
    }
    Ok(Endpoints::new(values))
}

/// Runs an execution command; returns the exit code.
pub(crate) fn run(command: Command, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(execute(command, registry, out))
}

async fn execute(command: Command, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let target = match &command {
        Command::Run { target, .. }
        | Command::Resume { target, .. }
        | Command::Abort { target, .. }
        | Command::Status { target, .. }
        | Command::Approve { target, .. } => target,
    };
    let Some(plan) = crate::validate::load_plan(&target.plan, registry, out)? else { return Ok(EXIT_INVALID) };
    let store = Arc::new(DirStore::new(&target.state_dir, plan.metadata.name.as_str(), &target.env));
    let (exec, label) = match &command {
        Command::Status { json, .. } => return status(&store, &target.plan, &target.env, *json, out),
        Command::Run { exec, .. } => (Some(exec), "run"),
        Command::Resume { exec, .. } => (Some(exec), "resume"),
        Command::Abort { exec, .. } => (Some(exec), "abort"),
        Command::Approve { .. } => (None, "approve"),
    };
    let graph = compile(&plan, registry)?;
    // Deciding needs no endpoints (nor their secrets); running does.
    let endpoints = if exec.is_some() { endpoints(&plan, &target.env)? } else { Endpoints::default() };
    let clock: Arc<dyn Clock> = match exec.map(|e| e.clock) {
        Some(ClockArg::Virtual) => Arc::new(VirtualClock::new()),
        _ => Arc::new(SystemClock),
    };
    let mut options = RunOptions::new(&target.env, clock);
    options.policy = Policy {
        allow_shell: exec.is_some_and(|e| e.allow_shell),
        simulation: false,
        base_dir: target.plan.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    options.endpoints = endpoints;
    options.confirm_irreversible = exec.is_some_and(|e| e.confirm_irreversible);
    options.lock_ttl = LOCK_TTL;
    options.force_unlock = exec.and_then(|e| e.force_unlock.clone());
    options.command = std::env::args().collect::<Vec<_>>().join(" ");
    let engine = Engine::new(&graph, registry, store);
    if let (Some(exec), Command::Run { .. }) = (exec, &command)
        && exec.dry_run
    {
        return dry_run(&graph, &engine, &options, out);
    }
    if let Command::Approve { key, decision, .. } = &command {
        let verb = if decision.approved { "approved" } else { "rejected" };
        return match engine.decide(&options, key, decision.clone()) {
            Ok(run) => {
                writeln!(
                    out,
                    "{verb} `{key}` in run {run}; continue with `handoff resume {} --env {}`",
                    target.plan.display(),
                    target.env
                )?;
                Ok(EXIT_OK)
            }
            Err(error) => engine_error(error),
        };
    }
    let json = exec.is_some_and(|e| e.log_format == LogFormat::Json);
    let cancel = CancellationToken::new();
    let mut signals = Signals::new()?;
    let mut notices = engine.subscribe();
    let work = async {
        match &command {
            Command::Run { .. } => engine.start(&options, &cancel).await,
            Command::Resume { settle, .. } => engine.resume(&options, settle, &cancel).await,
            Command::Abort { reason, .. } => engine.abort(&options, reason, &cancel).await,
            _ => unreachable!("handled above"),
        }
    };
    tokio::pin!(work);
    let mut printer = Printer { json, out, plan: &target.plan, env: &target.env };
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            notice = notices.recv() => if let Ok(notice) = notice { printer.notice(&notice)? },
            () = signals.next() => {
                if cancel.is_cancelled() {
                    eprintln!("second interrupt: exiting now; `handoff resume` continues from the log");
                    return Ok(EXIT_INTERRUPTED);
                }
                eprintln!("interrupt: stopping after the running steps (Ctrl-C again to exit at once)");
                cancel.cancel();
            }
        }
    };
    while let Ok(notice) = notices.try_recv() {
        printer.notice(&notice)?;
    }
    tracing::debug!(command = label, "done");
    match result {
        Ok((run, outcome)) => printer.outcome(&run, &outcome),
        Err(error) => engine_error(error),
    }
}

/// `handoff run --dry-run`: every step with what it would do, and what would be refused.
fn dry_run(graph: &Graph, engine: &Engine<'_>, options: &RunOptions, out: &mut dyn Write) -> anyhow::Result<u8> {
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
        Ok(EXIT_OK)
    } else {
        writeln!(out, "the run would refuse:\n{}", refused.join("\n"))?;
        Ok(crate::EXIT_ERROR)
    }
}

/// Maps an engine error to its exit code (printing happens at the binary's edge).
fn engine_error(error: EngineError) -> anyhow::Result<u8> {
    if let EngineError::Store(StoreError::Locked(_)) = &error {
        eprintln!("error: {error}");
        return Ok(EXIT_LOCKED);
    }
    Err(error.into())
}

struct Printer<'a> {
    json: bool,
    out: &'a mut dyn Write,
    plan: &'a Path,
    env: &'a str,
}

impl Printer<'_> {
    fn notice(&mut self, notice: &Notice) -> std::io::Result<()> {
        match (notice, self.json) {
            (Notice::Record(record), true) => {
                writeln!(self.out, "{}", serde_json::to_string(record).unwrap_or_default())
            }
            (Notice::Progress { .. }, true) => Ok(()),
            (Notice::Record(record), false) => match line(record) {
                Some(text) => writeln!(self.out, "{text}"),
                None => Ok(()),
            },
            (Notice::Progress { step, message, fraction, .. }, false) => {
                let percent = fraction.map(|f| format!(" {:.0}%", f * 100.0)).unwrap_or_default();
                writeln!(self.out, "    … {step}{percent}: {message}")
            }
        }
    }

    fn outcome(&mut self, run: &str, outcome: &Outcome) -> anyhow::Result<u8> {
        let (plan, env) = (self.plan.display(), self.env);
        let (code, text) = match outcome {
            Outcome::Completed => (EXIT_OK, format!("run {run}: completed")),
            Outcome::RolledBack { phase, reason, seconds } => (
                EXIT_ROLLED_BACK,
                format!("run {run}: phase `{phase}` failed and was rolled back in {seconds:.1}s: {reason}"),
            ),
            Outcome::RollbackFailed { phase, reason } => (
                EXIT_ROLLBACK_FAILED,
                format!(
                    "run {run}: phase `{phase}` failed and its ROLLBACK FAILED: {reason}\n  a person must restore service now; the log has every step: handoff status {plan} --env {env}"
                ),
            ),
            Outcome::Paused { key, reason } => (
                EXIT_PAUSED,
                format!(
                    "run {run}: paused: {reason}\n  decide:  handoff approve {plan} --env {env} {key} [--reject]\n  then:    handoff resume {plan} --env {env}"
                ),
            ),
            Outcome::Interrupted { reason } => (
                EXIT_INTERRUPTED,
                format!("run {run}: interrupted ({reason}); continue with `handoff resume {plan} --env {env}`"),
            ),
            Outcome::Aborted => {
                (EXIT_ROLLED_BACK, format!("run {run}: aborted; the phase in progress was rolled back"))
            }
        };
        if self.json {
            let word = match code {
                EXIT_OK => "completed",
                EXIT_ROLLED_BACK => "rolled_back",
                EXIT_ROLLBACK_FAILED => "rollback_failed",
                EXIT_PAUSED => "paused",
                _ => "interrupted",
            };
            writeln!(self.out, "{}", serde_json::json!({"run": run, "outcome": word, "message": text, "exit": code}))?;
        } else {
            writeln!(self.out, "{text}")?;
        }
        Ok(code)
    }
}

/// One human line per record (some records are not worth a line).
pub(crate) fn line(record: &Record) -> Option<String> {
    Some(match &record.event {
        Event::RunStarted { run, plan, env, digest, .. } => format!("run {run}: plan {plan} in {env} ({digest})"),
        Event::RunResumed { .. } => "resumed".to_owned(),
        Event::PhaseStarted { phase } => format!("▶ phase {phase}"),
        Event::StepStarted { step, role, attempt, .. } => {
            let again = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
            match role {
                handoff_engine::Role::Compensate => format!("  ↺ undoing {step}"),
                _ => format!("  · {step}{again}"),
            }
        }
        Event::StepFinished { step, .. } => format!("  ✓ {step}"),
        Event::StepFailed { step, error, retrying, .. } => {
            format!("  ✗ {step}: {error}{}", if *retrying { " (retrying)" } else { "" })
        }
        Event::BackgroundRestarted { step, .. } => format!("  ↻ {step} started again in the background"),
        Event::StepSettled { step, done, .. } => {
            format!("  = {step} settled as {}", if *done { "done" } else { "to retry" })
        }
        Event::StepCompensated { step, outcome, .. } => format!("  ↺ {step}: {outcome}"),
        Event::GateOpened { gate, .. } => format!("  ◆ gate {gate} open"),
        Event::CriterionEvaluated { criterion, verdict, detail, .. } => {
            format!(
                "  {} criterion {criterion}: {verdict:?} ({detail})",
                if *verdict == handoff_engine::Verdict::Pass { "✓" } else { "✗" }
            )
        }
        Event::AlertFired { alert, value, action, .. } => format!("  ! alert {alert} fired at {value} ({action})"),
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
        | Event::RunFinished { .. } => {
            return None;
        }
    })
}

fn status(store: &DirStore, plan: &Path, env: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Some((state, lock)) = Engine::status(store)? else {
        writeln!(out, "no run of {} in {env} yet (state in {})", plan.display(), store.dir().display())?;
        return Ok(EXIT_OK);
    };
    if json {
        writeln!(out, "{}", serde_json::json!({"status": state.status_word(), "state": state, "lock": lock}))?;
        return Ok(EXIT_OK);
    }
    write_status(&state, lock.as_ref(), out)?;
    Ok(EXIT_OK)
}

fn write_status(
    state: &RunState,
    lock: Option<&handoff_engine::LockRecord>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
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
        Some(lock) => writeln!(
            out,
            "  lock {} held by {} (pid {} on {}), heartbeat {}",
            lock.id, lock.owner, lock.pid, lock.host, lock.heartbeat_at
        )?,
        None => writeln!(out, "  not locked")?,
    }
    for phase in &state.phases {
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
        for (id, result) in &phase.criteria {
            writeln!(out, "    criterion {id}: {:?} ({})", result.verdict, result.detail)?;
        }
    }
    Ok(())
}
