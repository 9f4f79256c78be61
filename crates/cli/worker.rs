//! `handoff worker`: a long-running host for the background steps of runs kept in a shared
//! store (posted by `handoff run --background worker`), each under its own job lease.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use handoff_engine::hosted::{Host, HostEnd, Job, JobLease, JobStatus, Jobs};
use handoff_plan::escape::escape;
use handoff_plan::model::Plan;
use handoff_plan::units::Measured;
use handoff_registry::Registry;
use handoff_store_mongo::{MongoJobs, is_url, mask};
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::support::{self, Signals};

/// `handoff worker`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  handoff worker --state \"mongodb://handoff:$PASSWORD@state-db:27017/handoff\"
  HANDOFF_STATE=mongodb://state-db:27017/handoff HANDOFF_LEASE_TTL=60 handoff worker

Endpoints are resolved from this process's environment variables (`${VAR}` of the plan's
environment), like `handoff run` does. SIGTERM or SIGINT stops the hosted steps at their
checkpoints and releases their leases, so another worker takes them over at once.

Exit codes: 0 stopped by a signal, 2 usage, store or environment error.")]
pub(crate) struct Args {
    /// The shared store whose runs' background steps this worker hosts (`mongodb://…`);
    /// never printed with its credentials.
    #[arg(long, env = "HANDOFF_STATE", value_name = "URL", hide_env_values = true)]
    state: String,
    /// Seconds after its last heartbeat when a job's lease expires (renewed every third of
    /// that); another worker takes an expired job over from its checkpoint.
    #[arg(long, env = "HANDOFF_LEASE_TTL", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lease_ttl: u64,
    /// Print the jobs in the store (holder, epoch, lease expiry, lag and progress, stop)
    /// and exit, instead of hosting them.
    #[arg(long)]
    list: bool,
    /// Seconds between looks for jobs to claim.
    #[arg(long, value_name = "SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    poll: u64,
}

/// Runs the worker until SIGINT or SIGTERM.
pub(crate) fn run(args: &Args, registry: &Registry, out: &mut dyn Write) -> anyhow::Result<u8> {
    support::init_tracing(false);
    if !is_url(&args.state) {
        anyhow::bail!("`--state` must be a MongoDB connection string (mongodb:// or mongodb+srv://)");
    }
    let runtime = support::runtime()?;
    let _guard = runtime.enter();
    let jobs: Arc<dyn Jobs> = Arc::new(MongoJobs::connect(&args.state)?);
    if args.list {
        return list(jobs.as_ref(), out);
    }
    let holder = format!("{}/{}", handoff_engine::store::hostname(), std::process::id());
    let host = Host { jobs: jobs.clone(), executors: registry, ttl: Duration::from_secs(args.lease_ttl) };
    writeln!(out, "worker {holder}: hosting background steps from {}", mask(&args.state))?;
    out.flush()?;
    runtime.block_on(serve(&host, &holder, Duration::from_secs(args.poll), out))?;
    Ok(exit::OK)
}

/// Claims jobs every `poll` and hosts them until a signal, then waits for each to release.
async fn serve(host: &Host<'_>, holder: &str, poll: Duration, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let cancel = CancellationToken::new();
    let mut hosted: FuturesUnordered<_> = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = signals.next() => break,
            () = tokio::time::sleep(poll) => {}
            Some((id, end)) = hosted.next(), if !hosted.is_empty() => report(out, id, &end)?,
        }
        loop {
            let (job, lease) = match host.jobs.claim(holder, host.ttl) {
                Ok(Some(claimed)) => claimed,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!("claiming jobs: {error}");
                    break;
                }
            };
            writeln!(out, "claimed {} (epoch {}) from {}", job.id, lease.epoch, checkpoint_of(&job))?;
            out.flush()?;
            match endpoints(&job) {
                Ok(endpoints) => hosted.push(hosting(host, job, lease, endpoints, cancel.clone())),
                // Not released: it expires, and a worker with the variables set takes it.
                Err(error) => writeln!(out, "cannot host {}: {error:#}", job.id)?,
            }
        }
    }
    cancel.cancel();
    while let Some((id, end)) = hosted.next().await {
        report(out, id, &end)?;
    }
    Ok(())
}

async fn hosting(
    host: &Host<'_>,
    job: Job,
    lease: JobLease,
    endpoints: handoff_executor::Endpoints,
    cancel: CancellationToken,
) -> (String, HostEnd) {
    let id = job.id.clone();
    (id, host.run(job, lease, endpoints, cancel).await)
}

fn checkpoint_of(job: &Job) -> &'static str {
    if job.checkpoint.is_some() { "its checkpoint" } else { "the start" }
}

fn report(out: &mut dyn Write, id: String, end: &HostEnd) -> anyhow::Result<()> {
    match end {
        HostEnd::Stopped => writeln!(out, "stopped {id}: the stop was acknowledged")?,
        HostEnd::Lost(why) => writeln!(out, "lost {id}: {why}")?,
        HostEnd::Released => writeln!(out, "released {id}")?,
    }
    out.flush()?;
    Ok(())
}

/// The job's environment's endpoints, from this process's variables.
fn endpoints(job: &Job) -> anyhow::Result<handoff_executor::Endpoints> {
    let plan: Plan = serde_json::from_value(job.plan.clone()).context("the job's plan")?;
    support::endpoints(&plan, &job.env)
}

/// `--list`: one line per job.
fn list(jobs: &dyn Jobs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let all = jobs.list()?;
    if all.is_empty() {
        writeln!(out, "no jobs")?;
    }
    for job in &all {
        writeln!(out, "{}", describe(job))?;
    }
    Ok(exit::OK)
}

/// A job in one line: its state, holder and epoch, then what its holder last reported.
fn describe(job: &JobStatus) -> String {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let now = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    let state = match (&job.holder, job.expires_ms) {
        _ if job.done => "stopped".to_owned(),
        (Some(holder), Some(expires)) if expires >= now => format!("held by {} (epoch {})", escape(holder), job.epoch),
        (Some(holder), _) => format!("lease of {} expired (epoch {})", escape(holder), job.epoch),
        (None, _) => format!("waiting for a worker (epoch {})", job.epoch),
    };
    let mut line = format!("{}: {state}", escape(&job.id));
    if job.stop_requested && !job.done {
        line.push_str("; stop requested");
    }
    for (name, value) in &job.health.metrics {
        line.push_str(&format!("; {name} {}", Measured(*value)));
    }
    if let Some(failed) = &job.health.failed {
        line.push_str(&format!("; failed: {}", escape(failed)));
    } else if let Some(progress) = &job.health.progress {
        line.push_str(&format!("; {}", escape(progress)));
    }
    line
}
