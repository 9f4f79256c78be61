//! `handoff plan`: a planned run (`--out`) with its summary for a pull request, and
//! `handoff plan show`, the execution graph a plan compiles to.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use handoff_engine::Graph;
use handoff_plan::model::{Gate, Plan};
use handoff_registry::Registry;

use crate::exit;
use crate::planned::{APPLY, Planned, Reviewed};
use crate::support::{StoreArgs, Target};

/// Arguments of `handoff plan`: plan a run, or a subcommand.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// The plan file.
    #[arg(value_name = "PLAN", required = true)]
    plan: Option<PathBuf>,
    /// The environment (a key of the plan's `environments`).
    #[arg(long, required = true)]
    env: Option<String>,
    /// Write the planned run here (JSON) for `handoff approve` and `handoff apply`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

/// `handoff plan …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the execution graph a plan compiles to, with its digest.
    Show {
        /// The plan file.
        plan: std::path::PathBuf,
        /// Text, or a mermaid flowchart.
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
}

/// Renderings of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShowFormat {
    /// Phases, steps, gates, criteria and rollbacks.
    Text,
    /// A mermaid flowchart.
    Mermaid,
}

/// `handoff plan`.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    if let Some(Command::Show { plan, format }) = &args.command {
        return show(plan, *format, registry, out);
    }
    let (Some(plan), Some(env)) = (&args.plan, &args.env) else { anyhow::bail!("`handoff plan` needs PLAN and --env") };
    let target = Target { plan: plan.clone(), env: env.clone(), store: args.store.clone() };
    crate::support::init_tracing(false);
    let Some((prepared, source)) = crate::planned::load(&target, registry, out)? else { return Ok(exit::INVALID) };
    let reviewed = Reviewed::now(&prepared.graph, source, env, registry, prepared.store.as_ref())?;
    let planned = Planned::new(plan, env, reviewed, &prepared.graph);
    if let Some(path) = &args.out {
        planned.write(path)?;
    }
    summary(&planned, &prepared.graph, args.out.as_deref(), &mut crate::support::Escaped(out))?;
    Ok(exit::OK)
}

/// The planned run in Markdown, fit for a pull request comment.
fn summary(planned: &Planned, graph: &Graph, file: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
    let reviewed = &planned.reviewed;
    writeln!(out, "### handoff plan: `{}` in `{}`\n", graph.plan.metadata.name, planned.env)?;
    writeln!(out, "- plan: `{}`, digest `{}`", planned.plan.display(), reviewed.digest)?;
    writeln!(out, "- position: {}", reviewed.position.describe())?;
    let list = |items: Vec<String>| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    writeln!(out, "- endpoints:{}", if reviewed.endpoints.is_empty() { " none" } else { "" })?;
    for (name, value) in &reviewed.endpoints {
        writeln!(out, "  - `{name}`: `{value}`")?;
    }
    let executors = reviewed.executors.iter().map(|(name, version)| format!("`{name}` ({version})")).collect();
    writeln!(out, "- executors: {}\n", list(executors))?;
    writeln!(out, "| phase | steps | gates |\n|---|---|---|")?;
    for (phase, node) in graph.plan.phases.iter().zip(&graph.phases) {
        let steps: Vec<String> = node.stages.iter().flatten().map(|s| format!("`{}` ({})", s.id, s.uses)).collect();
        let gates: Vec<String> = phase.gates.iter().map(|gate| gate_words(&graph.plan, gate)).collect();
        let name = cell(&format!("`{}` {}", phase.id, phase.name));
        writeln!(out, "| {name} | {} | {} |", cell(&list(steps)), cell(&list(gates)))?;
    }
    writeln!(out, "\n<details><summary>Execution graph</summary>\n\n```text\n{}```\n</details>\n", graph.text())?;
    let file = file.map_or_else(|| "FILE".to_owned(), |f| f.display().to_string());
    writeln!(
        out,
        "To apply: `handoff approve {file} --by NAME` (approves `{APPLY}` and the gate the run waits at), then `handoff apply {file}`."
    )
}

/// A gate in words: a soak, or an approval with the approvers it needs.
fn gate_words(plan: &Plan, gate: &Gate) -> String {
    match gate {
        Gate::Soak(duration) => format!("soak {duration}"),
        Gate::Approval { prompt, require, .. } if require.is_empty() => format!("approval: {prompt}"),
        Gate::Approval { prompt, require, .. } => {
            let needs: Vec<String> = require.iter().map(|r| r.describe(&plan.approvers)).collect();
            format!("approval by {}: {prompt}", needs.join(" and "))
        }
    }
}

/// Text safe in a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `handoff plan show`.
pub(crate) fn show(plan: &Path, format: ShowFormat, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(plan) = crate::validate::load_plan(plan, registry, out)? else { return Ok(exit::INVALID) };
    let graph = crate::support::compile(&plan, registry)?;
    let out = &mut crate::support::Escaped(out);
    match format {
        ShowFormat::Text => write!(out, "{}", graph.text())?,
        ShowFormat::Mermaid => write!(out, "{}", graph.mermaid())?,
    }
    Ok(exit::OK)
}
