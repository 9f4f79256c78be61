//! `handoff sandbox up` and `handoff sandbox doctor`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use handoff_registry::Registry;
use handoff_sandbox::{Options, Prometheus, Sandbox, ServiceKind, ServiceSpec, engine};
use serde_json::json;

use crate::exit;
use crate::support::{self, ProviderArg, Signals};

/// `handoff sandbox …`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start throwaway MongoDB, Kafka and Redis servers, print their endpoints, and hold
    /// until Ctrl-C (or SIGTERM), then stop them.
    #[command(after_help = "\
Examples:
  handoff sandbox up
  handoff sandbox up --plan plans/menu-service.yaml --format json
  handoff sandbox up --provider external --endpoint restaurant_db=mongodb://db:27017 ...")]
    Up(Up),
    /// Report which engines are available (Prometheus too, which a simulation of a plan with
    /// a `prometheus` resource starts), their versions, and what would be provisioned.
    Doctor {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Arguments of `handoff sandbox up`.
#[derive(Debug, clap::Args)]
pub(crate) struct Up {
    /// Start the services this plan's resources need (default: two MongoDB servers
    /// `old_db` and `new_db`, a Kafka broker `events` and Redis `cache`).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Where services come from.
    #[arg(long, value_enum, default_value_t = ProviderArg::Local)]
    provider: ProviderArg,
    /// With `--provider external`: a service's endpoint, as NAME=URL (repeat per service).
    #[arg(long = "endpoint", value_name = "NAME=URL", value_parser = support::parse_endpoint)]
    endpoints: Vec<(String, String)>,
    /// Leave the servers running after handoff exits (for debugging).
    #[arg(long)]
    keep: bool,
    /// Output format of the endpoint list.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

fn default_services() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::new("old_db", ServiceKind::Mongo),
        ServiceSpec::new("new_db", ServiceKind::Mongo),
        ServiceSpec::new("events", ServiceKind::Kafka),
        ServiceSpec::new("cache", ServiceKind::Redis),
    ]
}

/// `handoff sandbox up`: starts the servers, prints their endpoints, holds until a signal,
/// then stops them (or, with `--keep`, leaves them running).
pub(crate) fn up(args: &Up, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    let services = match &args.plan {
        None => default_services(),
        Some(path) => {
            let Some(plan) = crate::validate::load_plan(path, registry, out)? else { return Ok(exit::INVALID) };
            ServiceSpec::for_plan(&plan)
        }
    };
    let options = Options { provider: args.provider.provider(&args.endpoints), keep: args.keep, ..Options::default() };
    support::runtime()?.block_on(async {
        let started = Instant::now();
        // Watch the signals before anything starts: a SIGTERM during start-up cancels it
        // (and drops what was started), one right after the endpoints are printed stops
        // cleanly.
        let mut signals = Signals::new()?;
        let sandbox = tokio::select! {
            started = Sandbox::start(&services, &options) => started.context("the sandbox did not start")?,
            () = signals.next() => {
                writeln!(out, "interrupted during start-up; nothing is left running")?;
                return Ok(exit::INTERRUPTED);
            }
        };
        write_ready(&sandbox, started.elapsed(), args.format, out)?;
        signals.next().await;
        stop(sandbox, args.keep, out).await?;
        Ok(exit::OK)
    })
}

/// The sandbox's directory and endpoints, once every server is ready.
fn write_ready(sandbox: &Sandbox, elapsed: Duration, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(
            out,
            "{}",
            json!({"dir": sandbox.dir(), "ready_seconds": elapsed.as_secs_f64(), "endpoints": sandbox.endpoints()})
        )?,
        Format::Text => {
            writeln!(out, "sandbox ready in {:.1} s ({})", elapsed.as_secs_f64(), sandbox.dir().display())?;
            for endpoint in sandbox.endpoints() {
                writeln!(
                    out,
                    "  {:<16} {:<8} {:<22} {}",
                    endpoint.name,
                    endpoint.kind.as_str(),
                    endpoint.engine,
                    endpoint.url
                )?;
            }
            writeln!(out, "connect with e.g. `mongosh URL`, `kcat -b HOST:PORT -L`, `redis-cli -u URL`")?;
            writeln!(out, "holding until Ctrl-C …")?;
        }
    }
    out.flush()
}

/// Stops the servers, or with `keep` leaves them running and says where.
async fn stop(sandbox: Sandbox, keep: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if keep {
        writeln!(out, "kept: the servers keep running on their own ports (the fault proxies stop with handoff):")?;
        for endpoint in sandbox.endpoints() {
            writeln!(out, "  {:<16} 127.0.0.1:{}", endpoint.name, endpoint.server_port)?;
        }
        writeln!(out, "data and logs: {}", sandbox.dir().display())?;
        drop(sandbox);
    } else {
        sandbox.shutdown().await;
        writeln!(out, "sandbox stopped")?;
    }
    Ok(())
}

/// `handoff sandbox doctor`: which engines are available, and what would be provisioned.
pub(crate) fn doctor(format: Format, out: &mut dyn Write) -> anyhow::Result<u8> {
    let cache = engine::cache_dir();
    let python = which::which("python3").ok();
    let rows: Vec<serde_json::Value> = [ServiceKind::Mongo, ServiceKind::Kafka, ServiceKind::Redis]
        .into_iter()
        .map(|kind| match engine::locate(kind, &cache) {
            Ok(engine) => json!({"service": kind.as_str(), "engine": engine.name, "version": engine.version, "origin": engine.origin, "program": engine.program, "available": true}),
            Err(plan) => json!({"service": kind.as_str(), "available": false, "provisioning": plan}),
        })
        .chain(std::iter::once(match Prometheus::locate() {
            Ok((program, version)) => json!({"service": "prometheus", "engine": "prometheus", "version": version, "origin": "PATH", "program": program, "available": true}),
            Err(fix) => json!({"service": "prometheus", "available": false, "provisioning": fix}),
        }))
        .collect();
    let providers = json!([
        {"provider": "local", "available": true, "note": if python.is_some() { "missing engines are provisioned with python3 -m venv and pip" } else { "python3 is not on PATH: missing engines cannot be provisioned" }},
        {"provider": "external", "available": true, "note": "endpoints you pass with --endpoint NAME=URL"},
        {"provider": "docker", "available": false, "note": "not in this release"},
    ]);
    match format {
        Format::Json => writeln!(out, "{}", json!({"cache": cache, "engines": rows, "providers": providers}))?,
        Format::Text => {
            writeln!(out, "engine cache: {}", cache.display())?;
            for row in &rows {
                let service = row["service"].as_str().unwrap_or_default();
                if row["available"] == true {
                    writeln!(
                        out,
                        "  {service:<8} {} {} ({}: {})",
                        row["engine"].as_str().unwrap_or_default(),
                        row["version"].as_str().unwrap_or_default(),
                        row["origin"].as_str().unwrap_or_default(),
                        row["program"].as_str().unwrap_or_default()
                    )?;
                } else {
                    writeln!(out, "  {service:<8} missing: {}", row["provisioning"].as_str().unwrap_or_default())?;
                }
            }
            for provider in providers.as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "provider {:<9} {} — {}",
                    provider["provider"].as_str().unwrap_or_default(),
                    if provider["available"] == true { "available" } else { "unavailable" },
                    provider["note"].as_str().unwrap_or_default()
                )?;
            }
        }
    }
    Ok(exit::OK)
}
