//! What the commands share: the registry with plugins, logging, the flags that name a plan's
//! target and how it runs, loading and compiling a plan for the engine, its `RunOptions`,
//! the tokio runtime, signals, the sandbox provider flags, and printing the engine's
//! notices.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use handoff_engine::{Answer, DirStore, Engine, Event, Graph, Notice, Outcome, Record, RunOptions, Store};
use handoff_executor::{Clock, Endpoints, Policy, SystemClock, VirtualClock, expand_env};
use handoff_plan::escape::{escape, escape_lines};
use handoff_plan::model::Plan;
use handoff_plan::units::Measured;
use handoff_registry::Registry;

use crate::exit;

/// Default lock expiry after the last heartbeat.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// The built-in executors plus every `handoff-executor-*` plugin on PATH.
pub(crate) fn registry_with_plugins() -> Registry {
    let mut registry = Registry::builtin();
    let (plugins, errors) = handoff_plugin::Plugin::discover(&std::env::var_os("PATH").unwrap_or_default());
    for error in errors {
        eprintln!("warning: plugin ignored: {error}");
    }
    for plugin in plugins {
        registry = registry.with(plugin.executor());
    }
    registry
}

/// Logs go to stderr: warnings and errors as text by default, everything from `info` as
/// JSON with `--log-format json`. `HANDOFF_LOG` (e.g. `debug`) sets the level.
pub(crate) fn init_tracing(json: bool) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let default = if json { "info" } else { "warn" };
    let level = std::env::var("HANDOFF_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or_else(|| default.parse().unwrap_or(tracing_subscriber::filter::LevelFilter::WARN));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_ansi(false);
    let _ = if json {
        builder.json().with_span_list(true).with_span_events(FmtSpan::CLOSE).try_init()
    } else {
        builder.with_target(false).without_time().try_init()
    };
}

/// A multi-threaded tokio runtime, for the commands that need one.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// SIGINT and SIGTERM, registered once so that none is lost between two waits. Needs a
/// runtime.
pub(crate) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts watching both signals.
    pub(crate) fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Where sandbox services come from (`sandbox up`, `simulate`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ProviderArg {
    /// Real server processes on this machine, provisioned into the cache when missing.
    Local,
    /// Endpoints you run yourself (`--endpoint NAME=URL`); nothing is started or stopped.
    External,
}

impl ProviderArg {
    /// The sandbox provider; `endpoints` are the `--endpoint` values of `External`.
    pub(crate) fn provider(self, endpoints: &[(String, String)]) -> handoff_sandbox::Provider {
        match self {
            ProviderArg::Local => handoff_sandbox::Provider::Local,
            ProviderArg::External => handoff_sandbox::Provider::External(endpoints.to_vec()),
        }
    }
}

/// Parses `--endpoint NAME=URL`.
pub(crate) fn parse_endpoint(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(name, url)| !name.is_empty() && !url.is_empty())
        .map(|(name, url)| (name.to_owned(), url.to_owned()))
        .ok_or_else(|| "expected NAME=URL".to_owned())
}

/// Which plan, in which environment, with its state where.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The plan file.
    #[arg(value_name = "PLAN")]
    pub(crate) plan: PathBuf,
    /// The environment (a key of the plan's `environments`).
    #[arg(long)]
    pub(crate) env: String,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

/// Where runs keep their state.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// Where runs keep their state (event logs and locks) when no shared store is chosen.
    #[arg(long, env = "HANDOFF_STATE_DIR", default_value = ".handoff/state")]
    state_dir: PathBuf,
    /// A shared store for runs' state and locks: a MongoDB connection string (`mongodb://…`).
    /// Overrides the environment's `state`; never printed with its credentials.
    #[arg(long, env = "HANDOFF_STATE", value_name = "URL", hide_env_values = true)]
    state: Option<String>,
}

impl Target {
    /// The store of this plan's runs in this environment: `--state` (or `HANDOFF_STATE`),
    /// else the environment's `state` (its `${VAR}` expanded), else the state directory.
    /// Refused (exit 2, naming the plan's environments) when `--env` is not one of them, so
    /// that no name reaches a path.
    pub(crate) fn store(&self, plan: &Plan) -> anyhow::Result<Arc<dyn Store>> {
        let (name, env) = (plan.metadata.name.as_str(), self.env.as_str());
        let Some(url) = self.state_url(plan)? else {
            return Ok(Arc::new(DirStore::new(&self.store.state_dir, name, env)));
        };
        Ok(Arc::new(handoff_store_mongo::MongoStore::connect(&url, name, env)?))
    }

    /// The shared store's connection string (`--state`, else the environment's `state`),
    /// checked to be one; `None` for the state directory.
    fn state_url(&self, plan: &Plan) -> anyhow::Result<Option<String>> {
        let environment = environment(plan, &self.env)?;
        let env = self.env.as_str();
        let url = match (&self.store.state, &environment.state) {
            (Some(url), _) => url.clone(),
            (None, Some(template)) => expand_env(template).with_context(|| format!("environment `{env}`, state"))?,
            (None, None) => return Ok(None),
        };
        if !handoff_store_mongo::is_url(&url) {
            anyhow::bail!(
                "the state store `{}` is not a MongoDB connection string (mongodb:// or mongodb+srv://)",
                handoff_store_mongo::mask(&url)
            );
        }
        Ok(Some(url))
    }
}

/// The plan's environment `env`, or an error naming the environments it defines.
pub(crate) fn environment<'p>(plan: &'p Plan, env: &str) -> anyhow::Result<&'p handoff_plan::model::Environment> {
    plan.environments.iter().find(|(name, _)| name.as_str() == env).map(|(_, environment)| environment).ok_or_else(
        || {
            let known: Vec<_> = plan.environments.keys().map(|k| escape(k.as_str())).collect();
            anyhow::anyhow!(
                "environment `{}` is not in the plan; it defines: {}",
                escape(env),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )
        },
    )
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
    /// Seconds after its last heartbeat when this run's lock expires (it heartbeats every
    /// third of that); another process may take over an expired lock.
    #[arg(long, env = "HANDOFF_LOCK_TTL", value_name = "SECONDS", default_value_t = LOCK_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lock_ttl: u64,
    /// Real time, or virtual time that skips every wait (rehearsals).
    #[arg(long, value_enum, default_value_t = ClockArg::Real)]
    clock: ClockArg,
    /// Print what each step would do, check the run would start, and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Progress as text for people, or one JSON record per line for CI.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where background steps (`mongo.sync`) run: in this process, or posted to the shared
    /// store for a `handoff worker`, so that this run may exit while they keep working.
    #[arg(long, env = "HANDOFF_BACKGROUND", value_enum, default_value_t = Background::Here)]
    background: Background,
    /// Sleep through a phase's observation (its soak and criteria windows) longer than this
    /// (`1h`, `2d`): record when to wake, release the lock and exit 8; `handoff resume`
    /// after that time judges the slept window from range queries and continues. Needs
    /// `--background worker` when the plan has background steps (they keep working while
    /// no handoff process runs).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    detach_over: Option<Duration>,
}

/// Parses a duration as the plan language writes one (`90s`, `1h`, `2d`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    handoff_plan::units::Duration::parse(text)
        .filter(|_| handoff_plan::units::Duration::within_bounds(text))
        .map(|d| d.get())
        .ok_or_else(|| format!("`{text}` is not a duration such as 90s, 30m, 1h or 2d"))
}

/// Where a run's background steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Background {
    /// In the run's own process; they stop when it exits (a resumed run starts them again).
    Here,
    /// In a `handoff worker` that takes them from the shared store (`--state`).
    Worker,
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
enum LogFormat {
    /// For people.
    Text,
    /// JSON lines: records on stdout, logs on stderr.
    Json,
}

/// A plan loaded, checked and compiled for the engine, with the store of its runs.
pub(crate) struct Prepared {
    /// The execution graph (it holds the plan).
    pub(crate) graph: Graph,
    /// Where the plan's runs in the target environment are kept.
    pub(crate) store: Arc<dyn Store>,
    /// The shared store's connection string, when the runs are kept in one.
    state_url: Option<String>,
}

impl Prepared {
    /// Loads and compiles the target's plan. An invalid plan's diagnostics are written to
    /// `out` and `None` is returned.
    pub(crate) fn load(target: &Target, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<Option<Prepared>> {
        let Some(plan) = crate::validate::load_plan(&target.plan, registry, out)? else { return Ok(None) };
        let store = target.store(&plan)?;
        let state_url = target.state_url(&plan)?;
        let graph = compile(&plan, registry)?;
        Ok(Some(Prepared { graph, store, state_url }))
    }

    /// The engine over this graph.
    pub(crate) fn engine<'a>(&'a self, registry: &'a Registry) -> Engine<'a> {
        Engine::new(&self.graph, registry, self.store.clone())
    }

    /// The engine's options from the flags. With `exec` (running), the environment's
    /// endpoints are resolved; without (deciding), no endpoint nor its secret is read.
    pub(crate) fn options(&self, target: &Target, exec: Option<&Exec>) -> anyhow::Result<RunOptions> {
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
        if exec.is_some() {
            options.endpoints = endpoints(&self.graph.plan, &target.env)?;
        }
        options.confirm_irreversible = exec.is_some_and(|e| e.confirm_irreversible);
        options.lock_ttl = exec.map_or(LOCK_TTL, |e| Duration::from_secs(e.lock_ttl));
        options.force_unlock = exec.and_then(|e| e.force_unlock.clone());
        options.command = std::env::args().collect::<Vec<_>>().join(" ");
        options.post_background = exec.is_some_and(|e| e.background == Background::Worker);
        options.detach_over = exec.and_then(|e| e.detach_over);
        if options.detach_over.is_some() && !options.post_background {
            let background: Vec<&str> =
                self.graph.steps().filter(|(_, s)| s.background).map(|(_, s)| s.id.as_str()).collect();
            if !background.is_empty() {
                anyhow::bail!(
                    "`--detach-over` would stop the background steps {} while the run sleeps: host them with `--background worker` (and a `handoff worker`)",
                    background.join(", ")
                );
            }
        }
        match &self.state_url {
            Some(url) if exec.is_some() => options.jobs = Some(Arc::new(handoff_store_mongo::MongoJobs::connect(url)?)),
            None if options.post_background => {
                anyhow::bail!("`--background worker` needs a shared store (`--state mongodb://…`) that workers read")
            }
            _ => {}
        }
        Ok(options)
    }
}

/// Compiles a plan against the registry.
pub(crate) fn compile(plan: &Plan, registry: &Registry) -> anyhow::Result<Graph> {
    Graph::compile(plan, registry).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!("the plan cannot run:\n{}", lines.join("\n"))
    })
}

/// Resolves the environment's endpoints (`${VAR}` expanded); names the first unset one.
pub(crate) fn endpoints(plan: &Plan, env: &str) -> anyhow::Result<Endpoints> {
    let environment = environment(plan, env)?;
    let mut values = BTreeMap::new();
    for (name, template) in &environment.endpoints {
        let value = expand_env(template).with_context(|| format!("environment `{env}`, endpoint `{name}`"))?;
        values.insert(name.to_string(), value);
    }
    Ok(Endpoints::new(values))
}

/// Prints the engine's notices and a run's outcome: lines for people, or JSON lines.
pub(crate) struct Printer<'a> {
    json: bool,
    out: &'a mut dyn Write,
    target: &'a Target,
    /// Standard output was closed by its reader (`| head`): the run goes on unprinted.
    closed: bool,
}

impl<'a> Printer<'a> {
    /// A printer for a run of `target`, in `exec`'s log format.
    pub(crate) fn new(target: &'a Target, exec: &Exec, out: &'a mut dyn Write) -> Printer<'a> {
        Printer { json: exec.json_logs(), out, target, closed: false }
    }

    /// Prints one notice (records as lines or JSON; progress for people only).
    pub(crate) fn notice(&mut self, notice: &Notice) -> std::io::Result<()> {
        let text = match (notice, self.json) {
            (Notice::Record(record), true) => Some(serde_json::to_string(record).unwrap_or_default()),
            (Notice::Progress { .. }, true) => None,
            (Notice::Record(record), false) => line(record).map(|text| escape(&text).to_string()),
            (Notice::Progress { step, message, fraction, .. }, false) => {
                let percent = fraction.map(|f| format!(" {:.0}%", f * 100.0)).unwrap_or_default();
                Some(escape(&format!("    … {step}{percent}: {message}")).to_string())
            }
        };
        text.map_or(Ok(()), |text| self.line(&text))
    }

    /// Writes one line. A reader that went away (`handoff run … | head`) does not stop the
    /// run: it goes on, unprinted, and says so once on stderr.
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match writeln!(self.out, "{text}").and_then(|()| self.out.flush()) {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                let (plan, env) = (self.target.plan.display(), &self.target.env);
                eprintln!("stdout was closed: the run goes on without printing (`handoff status {plan} --env {env}`)");
                Ok(())
            }
            other => other,
        }
    }

    /// Prints how the run ended, with what to do next; returns its exit code.
    pub(crate) fn outcome(&mut self, run: &str, outcome: &Outcome) -> anyhow::Result<u8> {
        let (code, text) = self.describe(run, outcome);
        if self.json {
            let word = match code {
                exit::OK => "completed",
                exit::ROLLED_BACK => "rolled_back",
                exit::ROLLBACK_FAILED => "rollback_failed",
                exit::PAUSED => "paused",
                exit::WAITING => "waiting",
                _ => "interrupted",
            };
            self.line(&serde_json::json!({"run": run, "outcome": word, "message": text, "exit": code}).to_string())?;
        } else {
            self.line(&escape_lines(&text))?;
        }
        if self.closed {
            eprintln!("{}", escape_lines(&text));
        }
        Ok(code)
    }

    /// An outcome's exit code and message.
    fn describe(&self, run: &str, outcome: &Outcome) -> (u8, String) {
        let (plan, env) = (self.target.plan.display(), &self.target.env);
        match outcome {
            Outcome::Completed => (exit::OK, format!("run {run}: completed")),
            Outcome::RolledBack { phase, reason, seconds } => (
                exit::ROLLED_BACK,
                format!("run {run}: phase `{phase}` failed and was rolled back in {seconds:.1}s: {reason}"),
            ),
            Outcome::RollbackFailed { phase, reason } => (
                exit::ROLLBACK_FAILED,
                format!(
                    "run {run}: phase `{phase}` failed and its ROLLBACK FAILED: {reason}\n  a person must restore service now; the log has every step: handoff status {plan} --env {env}"
                ),
            ),
            Outcome::Paused { key, reason, answer: Answer::Approve } => (
                exit::PAUSED,
                format!(
                    "run {run}: paused: {reason}\n  decide:  handoff approve {plan} --env {env} {key} [--reject]\n  then:    handoff resume {plan} --env {env}"
                ),
            ),
            Outcome::Paused { key, reason, answer: Answer::Settle } => (
                exit::PAUSED,
                format!(
                    "run {run}: paused: {reason}\n  settle:  handoff resume {plan} --env {env} --settle {key}=done   (or --settle {key}=retry)"
                ),
            ),
            Outcome::Interrupted { reason } => (
                exit::INTERRUPTED,
                format!("run {run}: interrupted ({reason}); continue with `handoff resume {plan} --env {env}`"),
            ),
            Outcome::Aborted => {
                (exit::ROLLED_BACK, format!("run {run}: aborted; the phase in progress was rolled back"))
            }
            Outcome::Waiting { until } => (
                exit::WAITING,
                format!(
                    "run {run}: waiting until {until}; the lock is released\n  wake it:  handoff resume {plan} --env {env}   (after {until}; before, it exits again at once)"
                ),
            ),
        }
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
        Event::StepSettled { step, done, role, .. } => {
            let what =
                if *role == handoff_engine::Role::Compensate { format!("the undo of {step}") } else { step.clone() };
            format!("  = {what} settled as {}", if *done { "done" } else { "to retry" })
        }
        Event::StepCompensated { step, outcome, .. } => format!("  ↺ {step}: {outcome}"),
        Event::GateOpened { gate, .. } => format!("  ◆ gate {gate} open"),
        Event::Sleeping { phase, until } => format!("  ☾ phase {phase} observed while the run sleeps, until {until}"),
        Event::CriterionEvaluated { criterion, verdict, detail, .. } => {
            format!(
                "  {} criterion {criterion}: {verdict:?} ({detail})",
                if *verdict == handoff_engine::Verdict::Pass { "✓" } else { "✗" }
            )
        }
        Event::AnalysisEvaluated { step, hold: at, criterion, verdict, detail, dry_run, .. } => {
            let mark = if *verdict == handoff_engine::Verdict::Pass { "✓" } else { "✗" };
            let whose = step.as_deref().map(|s| format!(" of {s}")).unwrap_or_default();
            let dry = if *dry_run { ", dry run" } else { "" };
            format!("    {mark} analysis at {at}{whose}: {criterion} {verdict:?}{dry} ({detail})")
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
        | Event::RunFinished { .. } => {
            return None;
        }
    })
}

/// A writer that escapes control characters (line breaks aside) in everything written
/// through it: for lines built from plan names and logged messages.
pub(crate) struct Escaped<'a>(pub(crate) &'a mut dyn Write);

impl Write for Escaped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(escape_lines(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
