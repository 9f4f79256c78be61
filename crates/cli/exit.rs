//! Every exit code of `handoff`, the table `--help` prints of them, and how a command's
//! result becomes the process's exit status.

use std::io::Write as _;
use std::process::ExitCode;

use handoff_engine::{EngineError, StoreError};

/// Success: plans valid, run completed.
pub(crate) const OK: u8 = 0;
/// A plan is invalid (or has warnings under `--deny-warnings`).
pub(crate) const INVALID: u8 = 1;
/// A simulation that did not go as expected (a criterion or a rollback failed, the loss
/// audit found a loss, a scenario's expectation was not met); the same number as
/// [`INVALID`].
pub(crate) const SIMULATION_FAILED: u8 = INVALID;
/// Usage error, a file could not be read, the environment is incomplete, the state store
/// failed, the run refuses a step, or a sandbox did not start.
pub(crate) const ERROR: u8 = 2;
/// A phase failed and was rolled back within its budget (or the run was aborted).
pub(crate) const ROLLED_BACK: u8 = 3;
/// The run waits for a person (approval, confirmation, settling a step).
pub(crate) const PAUSED: u8 = 4;
/// A rollback failed or overran its budget: a person must act now.
pub(crate) const ROLLBACK_FAILED: u8 = 5;
/// Another run holds the plan's lock, or a stale holder's steps may still be running.
pub(crate) const LOCKED: u8 = 6;
/// `handoff apply` refused a planned run: the plan, its endpoints, the executors or the
/// run's position changed since it was planned, an approval names another digest, or
/// approvals are missing. Nothing ran.
pub(crate) const REFUSED: u8 = 7;
/// The run sleeps through a long wait (`--detach-over`): it recorded when it wakes and
/// released its lock; `handoff resume` after that time continues it (before, it exits
/// again with this code).
pub(crate) const WAITING: u8 = 8;
/// Interrupted (SIGINT/SIGTERM) before the work was done, as shells report it; a run's
/// state is saved and `handoff resume` continues it.
pub(crate) const INTERRUPTED: u8 = 130;

/// Every code with its line in `handoff --help`, in order.
const ALL: &[(u8, &str)] = &[
    (OK, "success: plans valid, run completed"),
    (INVALID, "a plan is invalid (errors, or warnings with --deny-warnings)"),
    (ERROR, "usage or I/O error, incomplete environment, a sandbox did not start"),
    (ROLLED_BACK, "a phase failed and was rolled back within its budget (or the run was aborted)"),
    (PAUSED, "the run is paused, waiting for a person (`handoff approve`, then `handoff resume`)"),
    (ROLLBACK_FAILED, "a rollback failed or overran its budget: a person must act now"),
    (LOCKED, "another run holds the plan's lock (or a stale holder's steps still run)"),
    (REFUSED, "`handoff apply` refused a planned run that changed or lacks approvals; nothing ran"),
    (WAITING, "the run sleeps through a long wait until the time printed; `handoff resume` after it continues"),
    (INTERRUPTED, "interrupted; `handoff resume` continues from the log"),
];

/// The exit-code table of `handoff --help`, one indented line per code.
pub(crate) fn table() -> String {
    let lines: Vec<String> = ALL.iter().map(|(code, meaning)| format!("  {code:<4} {meaning}")).collect();
    lines.join("\n")
}

/// The process's exit status for a command's result; an error's cause chain goes to
/// stderr.
pub(crate) fn status(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        // A closed pipe (`handoff … | head`) is the reader's choice, not an error.
        Err(error)
            if error.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(OK)
        }
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {error}");
            for cause in error.chain().skip(1) {
                let _ = writeln!(stderr, "  caused by: {cause}");
            }
            ExitCode::from(ERROR)
        }
    }
}

/// The exit code of an engine error: a held lock is [`LOCKED`] (said on stderr here),
/// anything else an error.
pub(crate) fn engine_error(error: EngineError) -> anyhow::Result<u8> {
    if let EngineError::Store(StoreError::Locked(_))
    | EngineError::StepsStillRunning { .. }
    | EngineError::HolderStopping { .. } = &error
    {
        eprintln!("error: {error}");
        return Ok(LOCKED);
    }
    Err(error.into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    use super::ALL;

    fn all() -> BTreeSet<u8> {
        ALL.iter().map(|(code, _)| *code).collect()
    }

    /// The codes an `Exit codes:` section of a help text names: the numbers that start a
    /// line of the table, or that precede a word in a one-paragraph list.
    fn codes_in_help(text: &str) -> BTreeSet<u8> {
        let Some((_, section)) = text.split_once("Exit codes:") else { return BTreeSet::new() };
        let section = section.split("\n\n").next().unwrap_or_default();
        section
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_digit()))
            .filter_map(|word| word.parse().ok())
            .collect()
    }

    #[test]
    fn the_help_lists_every_code_and_commands_name_only_known_ones() {
        let mut cli = crate::Cli::command();
        cli.build();
        let help = |command: &clap::Command| command.get_after_help().map(ToString::to_string).unwrap_or_default();
        assert_eq!(codes_in_help(&help(&cli)), all());
        assert_eq!(codes_in_help(&help(cli.find_subcommand("run").expect("run"))), all());
        for command in cli.get_subcommands() {
            let named = codes_in_help(&help(command));
            assert!(named.is_subset(&all()), "`handoff {}` names exit codes {named:?}", command.get_name());
        }
    }

    #[test]
    fn the_readme_table_lists_exactly_these_codes() {
        let readme = include_str!("../../README.md");
        let (_, section) = readme.split_once("### Exit codes").expect("README.md has an exit-code section");
        let section = section.split("\n#").next().unwrap_or_default();
        let codes: BTreeSet<u8> =
            section.lines().filter_map(|line| line.strip_prefix("| ")?.split(" |").next()?.parse().ok()).collect();
        assert_eq!(codes, all());
    }
}
