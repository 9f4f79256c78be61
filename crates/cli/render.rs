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
    if args.env.is_none() {
        writeln!(out, "rendering for environment `{env}` (choose another with --env)")?;
    }
    let environment = crate::support::environment(&plan, &env)?;
    let endpoint = |name: &str| environment.endpoints.get(name).cloned();
    let base = args.plan.parent().unwrap_or(Path::new("."));
    let services = registry
        .virtual_services(&plan, &endpoint, base)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.plan.display()))?;
    let templates = handoff_render::Templates::load(args.templates.as_deref())?;
    let artifacts = templates.plan(&plan, &env, &|step| registry.describe_step(step), &services)?;
    for artifact in &artifacts {
        let path = inside(&args.out, &artifact.path)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, &artifact.text).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(exit::OK)
}

/// `out/relative`, refused when `relative` leaves `out` or when anything on the way below
/// `out` (the file included) is a symbolic link: render writes only inside `--out`.
fn inside(out: &Path, relative: &Path) -> anyhow::Result<PathBuf> {
    let mut path = out.to_path_buf();
    for component in relative.components() {
        let std::path::Component::Normal(name) = component else {
            anyhow::bail!("the artifact path `{}` leaves --out", relative.display());
        };
        path.push(name);
        if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!(
                "{} is a symbolic link: render writes only inside --out and does not follow links; remove it",
                path.display()
            );
        }
    }
    Ok(path)
}
