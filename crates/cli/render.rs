//! `handoff render`: every artifact of a plan, from the tera templates.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use handoff_registry::Registry;

use crate::exit;

/// Arguments of `handoff render`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The plan.
    plan: PathBuf,
    /// Directory the artifacts are written to (created when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Directory of templates that replace built-in ones of the same file name.
    #[arg(long, value_name = "DIR")]
    templates: Option<PathBuf>,
    /// Environment whose endpoints name the VirtualServices and their hosts (default:
    /// `production`, or the plan's only environment).
    #[arg(long, value_name = "NAME")]
    env: Option<String>,
}

/// `handoff render`: writes every artifact into `--out`.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(plan) = crate::validate::load_plan(&args.plan, registry, out)? else { return Ok(exit::INVALID) };
    let env = match &args.env {
        Some(env) => env.clone(),
        None if plan.environments.contains_key("production") => "production".to_owned(),
        None if plan.environments.len() == 1 => {
            plan.environments.keys().next().map(|k| k.0.clone()).unwrap_or_default()
        }
        None => anyhow::bail!(
            "say which environment's endpoints to render with `--env` (the plan defines {})",
            plan.environments.keys().map(|k| k.0.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    let environment =
        plan.environments.get(env.as_str()).with_context(|| format!("environment `{env}` is not in the plan"))?;
    let endpoint = |name: &str| environment.endpoints.get(name).cloned();
    let base = args.plan.parent().unwrap_or(Path::new("."));
    let services = registry
        .virtual_services(&plan, &endpoint, base)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.plan.display()))?;
    let templates = handoff_render::Templates::load(args.templates.as_deref())?;
    let artifacts = templates.plan(&plan, &|step| registry.describe_step(step), &services)?;
    for artifact in &artifacts {
        let path = args.out.join(&artifact.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, &artifact.text).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(exit::OK)
}
