//! `handoff validate`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::ValueEnum;
use handoff_plan::source::MAX_FILE_BYTES;
use handoff_plan::{Checker, Diagnostic, Report, Severity, codes};
use serde_json::json;

use crate::exit;

/// Arguments of `handoff validate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Treat warnings as errors (exit 1 when there are any).
    #[arg(long)]
    deny_warnings: bool,
    /// Plan files.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable, with source snippets.
    Text,
    /// One JSON object per file, one per line.
    Json,
    /// GitHub Actions workflow annotations.
    Github,
}

/// Reads at most `MAX_FILE_BYTES + 1` bytes, so a huge file is rejected without being
/// loaded. Only a regular file (or a symlink to one) is opened: a FIFO would block the read
/// forever and a device would never end, so both are refused before opening, and the opened
/// file is checked again.
pub(crate) fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    regular(path, &metadata)?;
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    regular(path, &file.metadata().with_context(|| format!("cannot read {}", path.display()))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// Refuses anything but a regular file, naming what it is.
fn regular(path: &Path, metadata: &std::fs::Metadata) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    if kind.is_dir() {
        anyhow::bail!("{} is a directory; pass plan files (e.g. {}/*.yaml)", path.display(), path.display());
    }
    let what = if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    anyhow::bail!("{} is {what}, not a regular file; pass a plan file", path.display())
}

/// Validates every path, and the scenarios next to each valid plan; returns the exit code.
pub(crate) fn run(
    args: &Args,
    registry: &handoff_registry::Registry,
    color: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let checker = Checker::new(registry)?;
    let mut code = exit::OK;
    for path in &args.paths {
        let report = match read(path) {
            Ok(bytes) if bytes.len() > MAX_FILE_BYTES => too_large(bytes.len()),
            Ok(bytes) => checker.check(&bytes),
            Err(error) => {
                unreadable(path, &error, args.format, out)?;
                code = exit::ERROR;
                continue;
            }
        };
        code = code.max(show(path, &report, args, color, out)?);
        let Some(plan) = report.plan.as_ref().filter(|_| report.is_valid(false)) else { continue };
        for scenario in scenario_files(path, plan) {
            let report = match read(&scenario) {
                Ok(bytes) if bytes.len() > MAX_FILE_BYTES => too_large(bytes.len()),
                Ok(bytes) => checker.check_scenario(&bytes, plan).0,
                Err(error) => {
                    unreadable(&scenario, &error, args.format, out)?;
                    code = exit::ERROR;
                    continue;
                }
            };
            code = code.max(show(&scenario, &report, args, color, out)?);
        }
    }
    Ok(code)
}

/// A file that could not be read, in the output format.
fn unreadable(path: &Path, error: &anyhow::Error, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let (shown, message) = (path.display().to_string(), format!("{error:#}"));
    match format {
        Format::Text => writeln!(out, "error: {message}")?,
        Format::Json => {
            writeln!(out, "{}", json!({"path": shown, "valid": false, "error": message, "diagnostics": []}))?
        }
        Format::Github => writeln!(out, "::error file={shown}::{message}")?,
    }
    Ok(())
}

/// Prints one file's report in the output format; returns its exit code.
fn show(path: &Path, report: &Report, args: &Args, color: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
    let shown = path.display().to_string();
    let valid = report.is_valid(args.deny_warnings);
    match args.format {
        Format::Text => text(&shown, report, valid, color, out)?,
        Format::Json => writeln!(out, "{}", to_json(&shown, report, valid))?,
        Format::Github => {
            for diagnostic in &report.diagnostics {
                writeln!(out, "{}", diagnostic.to_github(&shown))?;
            }
            writeln!(out, "{}", verdict(&shown, report, valid))?;
        }
    }
    Ok(if valid { exit::OK } else { exit::INVALID })
}

/// The scenario files of `plan` (read from `plan_path`): `<plan dir>/scenarios/<plan
/// name>/*.yaml`, in name order, where `handoff simulate --scenario NAME` finds them.
pub(crate) fn scenario_files(plan_path: &Path, plan: &handoff_plan::model::Plan) -> Vec<PathBuf> {
    let dir = scenario_dir(plan_path, &plan.metadata.name.0);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Where the scenarios of plan `name` (read from `plan_path`) live.
pub(crate) fn scenario_dir(plan_path: &Path, name: &str) -> PathBuf {
    plan_path.parent().unwrap_or(Path::new(".")).join("scenarios").join(name)
}

/// Reads and checks a scenario against `plan`. An invalid scenario's diagnostics are
/// written to `out` and `None` is returned.
pub(crate) fn load_scenario(
    path: &Path,
    plan: &handoff_plan::model::Plan,
    registry: &handoff_registry::Registry,
    out: &mut dyn Write,
) -> anyhow::Result<Option<handoff_plan::simulation::Scenario>> {
    let bytes = read(path)?;
    let (report, scenario) = if bytes.len() > MAX_FILE_BYTES {
        (too_large(bytes.len()), None)
    } else {
        Checker::new(registry)?.check_scenario(&bytes, plan)
    };
    match scenario.filter(|_| report.is_valid(false)) {
        Some(scenario) => Ok(Some(scenario)),
        None => {
            text(&path.display().to_string(), &report, false, false, out)?;
            writeln!(out, "fix the scenario first: `handoff validate <plan>` checks it")?;
            Ok(None)
        }
    }
}

/// Reads and checks one plan for a command that acts on it. An invalid plan's diagnostics
/// are written to `out` and `None` is returned.
pub(crate) fn load_plan(
    path: &Path,
    registry: &handoff_registry::Registry,
    out: &mut dyn Write,
) -> anyhow::Result<Option<handoff_plan::model::Plan>> {
    let bytes = read(path)?;
    let report =
        if bytes.len() > MAX_FILE_BYTES { too_large(bytes.len()) } else { Checker::new(registry)?.check(&bytes) };
    match report.plan.clone().filter(|_| report.is_valid(false)) {
        Some(plan) => Ok(Some(plan)),
        None => {
            text(&path.display().to_string(), &report, false, false, out)?;
            writeln!(out, "fix the plan first: `handoff validate {}`", path.display())?;
            Ok(None)
        }
    }
}

fn too_large(len: usize) -> Report {
    Report {
        text: String::new(),
        diagnostics: vec![Diagnostic::new(
            codes::LIMIT,
            "",
            format!(
                "the file is larger than {} MiB (read {len} bytes before stopping); plans are small documents",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        )],
        plan: None,
        secrets: Vec::new(),
    }
}

fn text(path: &str, report: &Report, valid: bool, color: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    for diagnostic in &report.diagnostics {
        writeln!(out, "{}\n", diagnostic.render(path, &report.text, &report.secrets, color))?;
    }
    writeln!(out, "{}", verdict(path, report, valid))?;
    Ok(())
}

/// `path: valid (5 phases, …)` or `path: invalid (2 errors, 1 warning)`.
fn verdict(path: &str, report: &Report, valid: bool) -> String {
    let errors = report.count(Severity::Error);
    let warnings = report.count(Severity::Warning);
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let problems = match (errors, warnings) {
        (0, 0) => String::new(),
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    };
    match (valid, report.summary()) {
        (true, Some(s)) => format!(
            "{path}: valid ({} phases, {} steps, {} criteria, {} rollbacks{})",
            s.phases,
            s.steps,
            s.criteria,
            s.rollbacks,
            if problems.is_empty() { String::new() } else { format!("; {problems}") }
        ),
        (true, None) if problems.is_empty() => format!("{path}: valid"),
        (true, None) => format!("{path}: valid ({problems})"),
        _ => format!("{path}: invalid ({problems})"),
    }
}

fn to_json(path: &str, report: &Report, valid: bool) -> serde_json::Value {
    json!({
        "path": path,
        "valid": valid,
        "diagnostics": report.diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
        "summary": report.summary(),
    })
}
