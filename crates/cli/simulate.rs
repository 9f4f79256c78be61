//! `handoff simulate`: the plan against a sandbox, with load, faults and compressed time;
//! the report as Markdown (a PR comment), JSON and JUnit XML.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use handoff_engine::Notice;
use handoff_registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::support::{self, ProviderArg, Signals};

/// Arguments of `handoff simulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The plan (it needs a `simulation:` section).
    plan: PathBuf,
    /// Faults to inject: a scenario file, or the name of one in
    /// `<plan dir>/scenarios/<plan name>/<NAME>.yaml`.
    #[arg(long, value_name = "NAME|FILE")]
    scenario: Option<String>,
    /// Where services come from.
    #[arg(long, value_enum, default_value_t = ProviderArg::Local)]
    provider: ProviderArg,
    /// With `--provider external`: a service's endpoint, as NAME=URL (repeat per service).
    #[arg(long = "endpoint", value_name = "NAME=URL", value_parser = support::parse_endpoint)]
    endpoints: Vec<(String, String)>,
    /// Real time one simulated day takes (overrides the plan's `simulation.day`), e.g.
    /// `500ms`, `2s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    time_scale: Option<std::time::Duration>,
    /// Seed of the generated data (`simulation.dataset`): the same seed, the same documents.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Write report.md, report.json and junit.xml into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// What is printed at the end.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Leave the sandbox running afterwards (for debugging).
    #[arg(long)]
    keep: bool,
    /// After the run, drill the rollback of these phases (comma-separated; every
    /// reversible phase with a rollback when none is named): each in a run of its own, the
    /// phase failed on purpose once its steps are done, its rollback timed against its
    /// budget and checked for lost writes.
    #[arg(long, value_name = "PHASE", num_args = 0.., value_delimiter = ',')]
    drill_rollbacks: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Progress lines, then the Markdown report.
    Text,
    /// The report as JSON (no progress lines).
    Json,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    handoff_plan::units::Duration::parse(text)
        .map(|d| d.get())
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 500ms, 2s, 1m)"))
}

/// Finds a scenario: a file, or a name looked up next to the plan.
fn scenario_path(plan_path: &Path, plan: &handoff_plan::model::Plan, arg: &str) -> anyhow::Result<PathBuf> {
    let as_file = Path::new(arg);
    if as_file.is_file() {
        return Ok(as_file.to_owned());
    }
    let path = crate::validate::scenario_dir(plan_path, &plan.metadata.name.0).join(format!("{arg}.yaml"));
    if path.is_file() {
        return Ok(path);
    }
    let names: Vec<String> = crate::validate::scenario_files(plan_path, plan)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    let known = if names.is_empty() { "there are none".to_owned() } else { format!("there: {}", names.join(", ")) };
    anyhow::bail!("scenario `{arg}`: no file {} (give a file, or the name of a scenario {known})", path.display())
}

/// The phases to drill: the named ones (each must exist and be reversible), or every
/// reversible phase with a rollback.
fn drills(plan: &handoff_plan::model::Plan, named: &[String]) -> anyhow::Result<Vec<String>> {
    let drillable = |p: &&handoff_plan::model::Phase| p.reversible && p.rollback.is_some();
    if named.is_empty() {
        return Ok(plan.phases.iter().filter(drillable).map(|p| p.id.0.clone()).collect());
    }
    for id in named {
        match plan.phases.iter().find(|p| p.id.0 == *id) {
            Some(phase) if drillable(&phase) => {}
            Some(phase) if !phase.reversible => anyhow::bail!(
                "phase `{id}` is irreversible (`reversible: false`): it has no rollback to drill; rehearse its `restore:` in its steps instead"
            ),
            Some(_) => anyhow::bail!("phase `{id}` has no `rollback:` to drill"),
            None => {
                let ids: Vec<&str> = plan.phases.iter().map(|p| p.id.0.as_str()).collect();
                anyhow::bail!("--drill-rollbacks: no phase `{id}`; the phases are {}", ids.join(", "))
            }
        }
    }
    Ok(named.to_vec())
}

/// `handoff simulate`: the run, then the rollback drills; prints the report and writes its files.
pub(crate) fn run(args: Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(plan) = crate::validate::load_plan(&args.plan, registry, out)? else { return Ok(exit::INVALID) };
    let scenario = match args.scenario.as_deref().map(|s| scenario_path(&args.plan, &plan, s)).transpose()? {
        Some(path) => match crate::validate::load_scenario(&path, &plan, registry, out)? {
            Some(scenario) => Some(scenario),
            None => return Ok(exit::INVALID),
        },
        None => None,
    };
    let drills = args.drill_rollbacks.as_deref().map(|named| drills(&plan, named)).transpose()?.unwrap_or_default();
    let work =
        tempfile::Builder::new().prefix("handoff-simulate-").tempdir().context("cannot create a work directory")?;
    let provider = args.provider.provider(&args.endpoints);
    let options = handoff_simulate::Options {
        scenario,
        sandbox: handoff_sandbox::Options { provider, keep: args.keep, ..handoff_sandbox::Options::default() },
        day: args.time_scale,
        seed: args.seed,
        work_dir: work.path().to_owned(),
        drill: None,
    };
    let runtime = support::runtime()?;
    let text = args.format == Format::Text;
    let Some(mut report) = simulate(&runtime, &plan, registry, &options, text)? else { return Ok(exit::INTERRUPTED) };
    let mut interrupted = false;
    for (i, phase) in drills.iter().enumerate() {
        if text {
            eprintln!("\n── rollback drill {} of {}: `{phase}` ──", i + 1, drills.len());
        }
        let options = handoff_simulate::Options {
            scenario: None,
            work_dir: work.path().join(format!("drill-{phase}")),
            drill: Some(phase.clone()),
            ..options.clone()
        };
        // Interrupted, the report of what finished is still written.
        let Some(drill) = simulate(&runtime, &plan, registry, &options, text)? else {
            interrupted = true;
            break;
        };
        report.add_drill(&drill);
    }
    let templates = handoff_render::Templates::load(None)?;
    let markdown = report.markdown(&templates)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, text) in [("report.md", &markdown), ("report.json", &json), ("junit.xml", &report.junit())] {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
        }
    }
    match args.format {
        Format::Text => write!(out, "{markdown}")?,
        Format::Json => writeln!(out, "{json}")?,
    }
    Ok(match report.verdict {
        _ if interrupted => exit::INTERRUPTED,
        handoff_simulate::RunVerdict::Pass => exit::OK,
        _ => exit::SIMULATION_FAILED,
    })
}

/// One simulation on `runtime`, stopped by Ctrl-C; `None` when interrupted. Progress goes
/// to stderr when `text`: the live view on a terminal, else plain lines.
fn simulate(
    runtime: &tokio::runtime::Runtime,
    plan: &handoff_plan::model::Plan,
    registry: &Registry,
    options: &handoff_simulate::Options,
    text: bool,
) -> anyhow::Result<Option<handoff_simulate::Report>> {
    let mut view = text.then(|| crate::progress::Progress::for_screen(plan, crate::progress::Screen::Stderr));
    let mut progress = |notice: &Notice| {
        // Plain lines are the records'; the live view shows the steps' progress too.
        if let Some(line) = view.as_mut().and_then(|view| view.notice(notice))
            && matches!(notice, Notice::Record(_))
        {
            eprintln!("{line}");
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let mut signals = Signals::new()?;
        let simulation = handoff_simulate::simulate(plan, registry, options, &mut progress, &cancel);
        tokio::pin!(simulation);
        loop {
            tokio::select! {
                result = &mut simulation => break result.map(Some).map_err(anyhow::Error::from),
                () = signals.next() => {
                    if cancel.is_cancelled() {
                        return Ok(None);
                    }
                    crate::progress::suspended(|| eprintln!("interrupt: stopping the simulation (Ctrl-C again to exit at once)"));
                    cancel.cancel();
                }
            }
        }
    });
    // The live view's last frame stays above what follows.
    drop(view);
    result
}
