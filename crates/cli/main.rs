//! `handoff`: declarative migration-as-code.
//!
//! Architecture invariant: only this binary knows clap, terminal output and exit codes;
//! library crates return typed values and errors.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod execute;
mod render;
mod sandbox;
mod simulate;
mod validate;

/// Exit code: success (plans valid).
const EXIT_OK: u8 = 0;
/// Exit code: a plan is invalid (or has warnings under `--deny-warnings`).
const EXIT_INVALID: u8 = 1;
/// Exit code: usage error, a file could not be read, the environment is incomplete, or
/// the state store failed.
const EXIT_ERROR: u8 = 2;
/// Exit code: interrupted (SIGINT/SIGTERM) before the work was done, as shells report it;
/// a run's state is saved and `handoff resume` continues it.
const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
Examples:
  handoff validate plans/menu-service.yaml
  handoff validate --format github plans/*.yaml
  handoff plan show plans/menu-service.yaml --format mermaid
  handoff run plans/examples/release-train.yaml --env staging --allow-shell
  handoff status plans/examples/release-train.yaml --env staging
  handoff sandbox up --plan plans/menu-service.yaml
  handoff schema > schemas/plan.schema.json
  handoff completions bash > /etc/bash_completion.d/handoff

Exit codes:
  0    success: plans valid, run completed
  1    a plan is invalid (errors, or warnings with --deny-warnings)
  2    usage or I/O error, incomplete environment, a sandbox did not start
  3    a phase failed and was rolled back within its budget (or the run was aborted)
  4    the run is paused, waiting for a person (`handoff approve`, then `handoff resume`)
  5    a rollback failed or overran its budget: a person must act now
  6    another run holds the plan's lock
  130  interrupted; `handoff resume` continues from the log";

const RUN_HELP: &str = "\
Every step is written to the run's event log (fsync'd) before and after it runs, so a run
killed at any point continues with `handoff resume`. One run per plan and environment holds
the lock at a time.

Exit codes: 0 completed, 1 invalid plan, 2 error, 3 rolled back, 4 paused for a person,
5 rollback failed or over budget, 6 locked, 130 interrupted (resume continues).";

/// Declarative migration-as-code: validate, simulate and execute plans that move data
/// ownership between services.
#[derive(Debug, Parser)]
#[command(name = "handoff", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// When to color output.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check plans: YAML, schema, then semantic lints. Reports every problem with a stable
    /// code and file:line:column.
    #[command(after_help = "\
Examples:
  handoff validate plans/menu-service.yaml
  handoff validate --format json plans/menu-service.yaml | jq .summary
  handoff validate --format github --deny-warnings plans/*.yaml

Exit codes: 0 valid, 1 invalid, 2 usage or I/O error.
Codes are documented in docs/lints.md.")]
    Validate(validate::Args),
    /// Inspect the execution graph a plan compiles to.
    #[command(subcommand)]
    Plan(execute::PlanCommand),
    /// Execute a plan in an environment: phases, gates, criteria, automatic rollback.
    #[command(after_help = RUN_HELP)]
    Run {
        #[command(flatten)]
        target: execute::Target,
        #[command(flatten)]
        exec: execute::Exec,
    },
    /// Continue the latest run of a plan where it stopped.
    #[command(after_help = RUN_HELP)]
    Resume {
        #[command(flatten)]
        target: execute::Target,
        #[command(flatten)]
        exec: execute::Exec,
        /// For a step that was running when the run stopped and is not idempotent: whether
        /// it took effect (`done`) or must run again (`retry`).
        #[arg(long, value_name = "PHASE/STEP=done|retry", value_parser = execute::parse_settle)]
        settle: Vec<(String, String, bool)>,
    },
    /// Show where the latest run of a plan stands.
    Status {
        #[command(flatten)]
        target: execute::Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort the latest run: roll back the phase in progress and end the run.
    #[command(after_help = RUN_HELP)]
    Abort {
        #[command(flatten)]
        target: execute::Target,
        #[command(flatten)]
        exec: execute::Exec,
        /// Why (kept in the log).
        #[arg(long, default_value = "aborted by a person")]
        reason: String,
    },
    /// Record a person's decision for a paused run (an approval gate, a `gate.manual`
    /// step, a confirmed criterion, a point of no return).
    Approve {
        #[command(flatten)]
        target: execute::Target,
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
    },
    /// Simulate a plan against throwaway real services: seeded data, an application
    /// model under load, faults, compressed time; prints the report.
    #[command(after_help = "\
Examples:
  handoff simulate plans/menu-service.yaml
  handoff simulate plans/menu-service.yaml --scenario dual-write-failures --report out/
  handoff simulate plans/menu-service.yaml --format json --time-scale 500ms

Exit codes: 0 every phase passed, 1 something failed (a criterion, a rollback, a
scenario's failing phase), 2 the simulation could not run, 130 interrupted.")]
    Simulate(simulate::Args),
    /// Render a plan's artifacts from tera templates: the VirtualService of every traffic
    /// weight, the runbook, Prometheus alert rules, the Gantt chart of the timeline.
    #[command(after_help = "\
Examples:
  handoff render plans/menu-service.yaml --out rendered/
  handoff render plans/menu-service.yaml --out rendered/ --templates my-templates/ --env staging

Templates: templates/{virtualservice.yaml,runbook.md,alert-rules.yaml,timeline.md}.tera;
a file of the same name in --templates replaces the built-in one.
Exit codes: 0 rendered, 1 invalid plan, 2 template, I/O or usage error.")]
    Render(render::Args),
    /// Throwaway real MongoDB, Kafka and Redis servers for simulations and debugging.
    #[command(subcommand)]
    Sandbox(sandbox::Command),
    /// Print the plan JSON Schema (generated from the plan types and every executor's
    /// parameters).
    #[command(
        after_help = "Editors: put `# yaml-language-server: $schema=<path>/plan.schema.json` on a plan's first line."
    )]
    Schema,
    /// List the built-in executors and their actions.
    Executors,
    /// Print a generated reference document.
    Docs {
        /// Which document.
        #[arg(value_enum)]
        which: Doc,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Doc {
    /// docs/lints.md: every diagnostic code.
    Lints,
    /// docs/executors.md: every built-in executor and action.
    Executors,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match run(cli.command, color) {
        Ok(code) => ExitCode::from(code),
        // A closed pipe (`handoff … | head`) is the reader's choice, not an error.
        Err(error)
            if error.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(EXIT_OK)
        }
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {error}");
            for cause in error.chain().skip(1) {
                let _ = writeln!(stderr, "  caused by: {cause}");
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The built-in executors plus every `handoff-executor-*` plugin on PATH.
fn registry_with_plugins() -> handoff_registry::Registry {
    let mut registry = handoff_registry::Registry::builtin();
    let (plugins, errors) = handoff_plugin::Plugin::discover(&std::env::var_os("PATH").unwrap_or_default());
    for error in errors {
        eprintln!("warning: plugin ignored: {error}");
    }
    for plugin in plugins {
        registry = registry.with(plugin.executor());
    }
    registry
}

fn run(command: Command, color: bool) -> anyhow::Result<u8> {
    // The schema and the generated docs describe the built-in executors only.
    let builtin = matches!(command, Command::Schema | Command::Docs { .. } | Command::Completions { .. });
    let registry = if builtin { handoff_registry::Registry::builtin() } else { registry_with_plugins() };
    let mut stdout = std::io::stdout().lock();
    let user = || std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    let exec = match command {
        Command::Run { target, exec } => Some(execute::Command::Run { target, exec }),
        Command::Resume { target, exec, settle } => Some(execute::Command::Resume { target, exec, settle }),
        Command::Abort { target, exec, reason } => Some(execute::Command::Abort { target, exec, reason }),
        Command::Status { target, json } => Some(execute::Command::Status { target, json }),
        Command::Approve { target, key, reject, by, comment } => Some(execute::Command::Approve {
            target,
            key,
            decision: handoff_executor::Decision { approved: !reject, by: by.unwrap_or_else(user), comment },
        }),
        other => return dispatch(other, &registry, color, &mut stdout),
    };
    let json_logs = matches!(&exec, Some(execute::Command::Run { exec, .. } | execute::Command::Resume { exec, .. } | execute::Command::Abort { exec, .. }) if exec.json_logs());
    init_tracing(json_logs);
    execute::run(exec.unwrap_or_else(|| unreachable!("matched above")), &registry, &mut stdout)
}

/// Logs go to stderr: warnings and errors as text by default, everything from `info` as
/// JSON with `--log-format json`. `HANDOFF_LOG` (e.g. `debug`) sets the level.
fn init_tracing(json: bool) {
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

fn dispatch(
    command: Command,
    registry: &handoff_registry::Registry,
    color: bool,
    stdout: &mut dyn Write,
) -> anyhow::Result<u8> {
    match command {
        Command::Plan(command) => return execute::show(command, registry, stdout),
        Command::Validate(args) => return validate::run(&args, registry, color, stdout),
        Command::Render(args) => return render::run(&args, registry, stdout),
        Command::Simulate(args) => return simulate::run(args, registry, stdout),
        Command::Sandbox(command) => return sandbox::run(command, registry, stdout),
        Command::Schema => stdout.write_all(registry.schema_text().as_bytes())?,
        Command::Executors => {
            for executor in registry.executors() {
                writeln!(stdout, "{:<10} {}", executor.name(), executor.summary())?;
                for action in executor.actions().map(|a| a.declaration()) {
                    writeln!(stdout, "  {:<28} {}", format!("{}.{}", executor.name(), action.name), action.summary)?;
                }
            }
        }
        Command::Docs { which } => {
            let text = match which {
                Doc::Lints => handoff_registry::lints_markdown(),
                Doc::Executors => handoff_registry::executors_markdown(registry),
            };
            stdout.write_all(text.as_bytes())?;
        }
        Command::Completions { shell } => clap_complete::generate(shell, &mut Cli::command(), "handoff", stdout),
        Command::Run { .. }
        | Command::Resume { .. }
        | Command::Abort { .. }
        | Command::Status { .. }
        | Command::Approve { .. } => {
            unreachable!("execution commands are dispatched by `run`")
        }
    }
    Ok(EXIT_OK)
}
