//! `handoff`: declarative migration-as-code.
//!
//! Architecture invariant: only this binary knows clap, terminal output and exit codes;
//! library crates return typed values and errors.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use handoff_registry::Registry;

mod apply;
mod approve;
mod exit;
mod export;
mod lock;
mod plan;
mod planned;
mod render;
mod run;
mod sandbox;
mod simulate;
mod status;
mod support;
mod validate;
mod worker;

const EXAMPLES: &str = "\
Examples:
  handoff validate plans/menu-service.yaml
  handoff validate --format github plans/*.yaml
  handoff plan show plans/menu-service.yaml --format mermaid
  handoff run plans/examples/release-train.yaml --env staging --allow-shell
  handoff status plans/examples/release-train.yaml --env staging
  handoff sandbox up --plan plans/menu-service.yaml
  handoff schema > schemas/plan.schema.json
  handoff completions bash > /etc/bash_completion.d/handoff";

/// `handoff --help`'s closing text: examples, then every exit code.
fn after_help() -> String {
    format!("{EXAMPLES}\n\nExit codes:\n{}", exit::table())
}

const RUN_HELP: &str = "\
Every step is written to the run's event log (fsync'd) before and after it runs, so a run
killed at any point continues with `handoff resume`. One run per plan and environment holds
the lock at a time.

Exit codes: 0 completed, 1 invalid plan, 2 error, 3 rolled back, 4 paused for a person,
5 rollback failed or over budget, 6 locked, 7 apply refused, 8 asleep until the time printed
(`--detach-over`; resume after it continues), 130 interrupted (resume continues).";

/// Declarative migration-as-code: validate, simulate and execute plans that move data
/// ownership between services.
#[derive(Debug, Parser)]
#[command(name = "handoff", version, about, after_help = after_help())]
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
    /// Plan a run for review: what it will do, its digest, the endpoints and executors, where
    /// the run stands (`--out FILE` for `approve` and `apply`; a Markdown summary for a pull
    /// request). `plan show` prints the execution graph.
    #[command(after_help = "\
Examples:
  handoff plan plans/menu-service.yaml --env production --out planned.json > comment.md
  handoff plan show plans/menu-service.yaml --format mermaid")]
    Plan(plan::Args),
    /// Execute a plan in an environment: phases, gates, criteria, automatic rollback.
    #[command(after_help = RUN_HELP)]
    Run(run::RunArgs),
    /// Continue the latest run of a plan where it stopped.
    #[command(after_help = RUN_HELP)]
    Resume(run::ResumeArgs),
    /// Show where the latest run of a plan stands.
    Status(status::Args),
    /// Abort the latest run: roll back the phase in progress and end the run.
    #[command(after_help = RUN_HELP)]
    Abort(run::AbortArgs),
    /// Show or break a plan's lock in an environment (`lock list`, `lock break`).
    #[command(subcommand)]
    Lock(lock::Command),
    /// Record a person's decision for a paused run (an approval gate, a `gate.manual`
    /// step, a confirmed criterion, a point of no return), or approve a planned run.
    #[command(after_help = "\
Examples:
  handoff approve plans/menu-service.yaml --env production cutover/approval-1 --by ana
  handoff approve planned.json --by \"$GITHUB_ACTOR\"")]
    Approve(approve::Args),
    /// Run a planned run (`handoff plan --out`) exactly as approved: refused, with a diff,
    /// when anything changed since it was planned or approvals are missing.
    #[command(after_help = "\
Examples:
  handoff apply planned.json

Exit codes: as `handoff run`'s; 7 refused (nothing ran).")]
    Apply(apply::Args),
    /// Simulate a plan against throwaway real services: seeded data, an application
    /// model under load, faults, compressed time; prints the report.
    #[command(after_help = "\
Examples:
  handoff simulate plans/menu-service.yaml
  handoff simulate plans/menu-service.yaml --scenario dual-write-failures --report out/
  handoff simulate plans/menu-service.yaml --format json --time-scale 500ms

Exit codes: 0 the run went as expected (every phase passed; with a scenario, its
expected rollback happened within budget), 1 something else failed or the scenario is
invalid, 2 the simulation could not run, 130 interrupted.")]
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
    /// Host the background steps of runs in a shared store (a `mongo.sync` through a long
    /// soak) under a lease per step, until SIGTERM; deployable as a Kubernetes Deployment.
    Worker(worker::Args),
    /// Throwaway real MongoDB, Kafka and Redis servers for simulations and debugging.
    #[command(subcommand)]
    Sandbox(sandbox::Command),
    /// Print the plan JSON Schema (generated from the plan types and every executor's
    /// parameters), or that of scenario files.
    #[command(
        after_help = "Editors: put `# yaml-language-server: $schema=<path>/plan.schema.json` on a plan's first line \
(`scenario.schema.json` on a scenario's)."
    )]
    Schema {
        /// Which schema.
        #[arg(value_enum, default_value_t = SchemaOf::Plan)]
        which: SchemaOf,
    },
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
enum SchemaOf {
    /// schemas/plan.schema.json: migration plans.
    Plan,
    /// schemas/scenario.schema.json: `handoff simulate --scenario` files.
    Scenario,
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
    // The schema, the generated docs and completions describe the built-in executors only.
    let builtin = matches!(cli.command, Command::Schema { .. } | Command::Docs { .. } | Command::Completions { .. });
    let registry = if builtin { Registry::builtin() } else { support::registry_with_plugins() };
    let out = &mut std::io::stdout().lock();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args, &registry, color, out),
        Command::Plan(args) => plan::run(&args, &registry, out),
        Command::Apply(args) => apply::run(&args, &registry, out),
        Command::Run(args) => run::run(&args, &registry, out),
        Command::Resume(args) => run::resume(&args, &registry, out),
        Command::Status(args) => status::run(&args, &registry, out),
        Command::Abort(args) => run::abort(&args, &registry, out),
        Command::Approve(args) => approve::run(&args, &registry, out),
        Command::Lock(command) => lock::run(&command, &registry, out),
        Command::Worker(args) => worker::run(&args, &registry, out),
        Command::Simulate(args) => simulate::run(args, &registry, out),
        Command::Render(args) => render::run(&args, &registry, out),
        Command::Sandbox(sandbox::Command::Up(args)) => sandbox::up(&args, &registry, out),
        Command::Sandbox(sandbox::Command::Doctor { format }) => sandbox::doctor(format, out),
        Command::Schema { which } => schema(which, &registry, out),
        Command::Executors => executors(&registry, out),
        Command::Docs { which } => docs(which, &registry, out),
        Command::Completions { shell } => completions(shell, out),
    };
    exit::status(result)
}

/// `handoff schema [plan|scenario]`.
fn schema(which: SchemaOf, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let text = match which {
        SchemaOf::Plan => registry.schema_text(),
        SchemaOf::Scenario => format!("{:#}\n", handoff_plan::schema::scenario()),
    };
    out.write_all(text.as_bytes())?;
    Ok(exit::OK)
}

/// `handoff executors`: every executor with its actions, one line each.
fn executors(registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    for executor in registry.executors() {
        writeln!(out, "{:<10} {}", executor.name(), executor.summary())?;
        for action in executor.actions().map(|a| a.declaration()) {
            writeln!(out, "  {:<28} {}", format!("{}.{}", executor.name(), action.name), action.summary)?;
        }
    }
    Ok(exit::OK)
}

/// `handoff docs`.
fn docs(which: Doc, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let text = match which {
        Doc::Lints => handoff_registry::lints_markdown(),
        Doc::Executors => handoff_registry::executors_markdown(registry),
    };
    out.write_all(text.as_bytes())?;
    Ok(exit::OK)
}

/// `handoff completions`.
fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<u8> {
    clap_complete::generate(shell, &mut Cli::command(), "handoff", out);
    Ok(exit::OK)
}
