//! `handoff`: declarative migration-as-code.
//!
//! Architecture invariant: only this binary knows clap, terminal output and exit codes;
//! library crates return typed values and errors.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod sandbox;
mod validate;

/// Exit code: success (plans valid).
const EXIT_OK: u8 = 0;
/// Exit code: a plan is invalid (or has warnings under `--deny-warnings`).
const EXIT_INVALID: u8 = 1;
/// Exit code: usage error, or a file could not be read.
const EXIT_ERROR: u8 = 2;
/// Exit code: interrupted (SIGINT/SIGTERM) before the work was done, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
Examples:
  handoff validate plans/menu-service.yaml
  handoff validate --format github plans/*.yaml
  handoff sandbox up --plan plans/menu-service.yaml
  handoff schema > schemas/plan.schema.json
  handoff completions bash > /etc/bash_completion.d/handoff

Exit codes:
  0  every plan is valid
  1  a plan is invalid (errors, or warnings with --deny-warnings)
  2  usage error, or a file could not be read (or a sandbox did not start)
  130  interrupted while a sandbox was starting";

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

fn run(command: Command, color: bool) -> anyhow::Result<u8> {
    let registry = handoff_registry::Registry::builtin();
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Validate(args) => return validate::run(&args, &registry, color, &mut stdout),
        Command::Sandbox(command) => return sandbox::run(command, &registry, &mut stdout),
        Command::Schema => stdout.write_all(registry.schema_text().as_bytes())?,
        Command::Executors => {
            for executor in registry.executors() {
                writeln!(stdout, "{:<10} {}", executor.name(), executor.summary())?;
                for action in executor.actions() {
                    writeln!(stdout, "  {:<28} {}", format!("{}.{}", executor.name(), action.name), action.summary)?;
                }
            }
        }
        Command::Docs { which } => {
            let text = match which {
                Doc::Lints => handoff_registry::lints_markdown(),
                Doc::Executors => handoff_registry::executors_markdown(&registry),
            };
            stdout.write_all(text.as_bytes())?;
        }
        Command::Completions { shell } => clap_complete::generate(shell, &mut Cli::command(), "handoff", &mut stdout),
    }
    Ok(EXIT_OK)
}
