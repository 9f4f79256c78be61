//! `handoff plan show`: the execution graph a plan compiles to.

use std::io::Write;
use std::path::Path;

use clap::ValueEnum;
use handoff_registry::Registry;

use crate::exit;

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
