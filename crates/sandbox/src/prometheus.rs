//! A throwaway Prometheus server: Debian's `prometheus` package (or `prometheus` and
//! `promtool` on `PATH`), on a free loopback port, in its own directory, under the same
//! lifeline supervisor as the other servers. Its TSDB can be backfilled before it starts
//! from OpenMetrics text, with timestamps, by `promtool tsdb create-blocks-from openmetrics`
//! — Prometheus' own importer — so a test or a simulation queries series at the times it
//! chose, instant and range alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Launch, Process};
use crate::remote_write::RemoteWriter;
use crate::{NotReady, SandboxError, free_port, io};

/// How long Prometheus may take to answer `/-/ready`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The time span of a receiving Prometheus' head block and retention: longer than any
/// plan's simulated span.
const RECEIVING_BLOCK: &str = "5y";

/// How to get Prometheus when it is missing.
const FIX: &str = "install Debian's `prometheus` package (`apt-get install prometheus`; `.ci/setup` does), or put \
                   `prometheus` and `promtool` on PATH";

/// A running Prometheus server.
#[derive(Debug)]
pub struct Prometheus {
    process: Process,
    url: String,
}

/// A program on `PATH`, or why Prometheus cannot be provisioned.
fn program(name: &str) -> Result<PathBuf, SandboxError> {
    which::which(name).map_err(|e| SandboxError::Provision {
        engine: "prometheus",
        reason: format!("`{name}` is not on PATH ({e})"),
        fix: FIX.to_owned(),
    })
}

/// Writes `openmetrics` (OpenMetrics text ending in `# EOF`) into the TSDB at `data` with
/// promtool's backfill.
async fn backfill(dir: &Path, data: &Path, openmetrics: &str) -> Result<(), SandboxError> {
    let input = dir.join("backfill.om");
    std::fs::write(&input, openmetrics).map_err(io(format!("cannot write {}", input.display())))?;
    let output = tokio::process::Command::new(program("promtool")?)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(data)
        .output()
        .await
        .map_err(io("cannot run promtool"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(SandboxError::Provision {
        engine: "prometheus",
        reason: format!("promtool could not backfill: {}", String::from_utf8_lossy(&output.stderr).trim()),
        fix: "check the OpenMetrics text (each series' samples in time order, `# EOF` at the end)".to_owned(),
    })
}

/// The status code of `GET path` on `127.0.0.1:port`, if it answered.
async fn status(port: u16, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Prometheus {
    /// The `prometheus` program a sandbox would start and its version (from
    /// `prometheus --version`), or what to do to get one.
    pub fn locate() -> Result<(PathBuf, String), String> {
        let program = program("prometheus").map_err(|_| FIX.to_owned())?;
        let output = std::process::Command::new(&program).arg("--version").output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        let version = text.split_whitespace().skip_while(|w| *w != "version").nth(1).unwrap_or("unknown");
        Ok((program, version.to_owned()))
    }

    /// Starts Prometheus in `dir` (created when missing), its TSDB first backfilled from
    /// `openmetrics` when given; returns once it answers `/-/ready`.
    pub async fn start(dir: &Path, openmetrics: Option<&str>) -> Result<Prometheus, SandboxError> {
        Prometheus::launch(dir, openmetrics, "global:\n  evaluation_interval: 1s\n", &[]).await
    }

    /// Starts Prometheus in `dir` taking series by remote write ([`Prometheus::writer`]) with
    /// whatever timestamps a simulation's plan time gives them: one head block spans
    /// `RECEIVING_BLOCK` (no compaction while plan time runs days per second, so no sample
    /// in time order is ever out of bounds) and nothing is deleted before it ends.
    pub async fn receiving(dir: &Path) -> Result<Prometheus, SandboxError> {
        let flags = [
            "--web.enable-remote-write-receiver".to_owned(),
            format!("--storage.tsdb.min-block-duration={RECEIVING_BLOCK}"),
            format!("--storage.tsdb.max-block-duration={RECEIVING_BLOCK}"),
            format!("--storage.tsdb.retention.time={RECEIVING_BLOCK}"),
        ];
        Prometheus::launch(dir, None, "global:\n  evaluation_interval: 1s\n", &flags).await
    }

    /// Starts Prometheus in `dir` scraping `targets` (`host:port`, `/metrics`) every second,
    /// keeping the labels the targets give (`honor_labels`, as a Pushgateway needs).
    pub async fn scraping(dir: &Path, targets: &[String]) -> Result<Prometheus, SandboxError> {
        let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let config = format!(
            "global:\n  evaluation_interval: 1s\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: scrape\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        Prometheus::launch(dir, None, &config, &[]).await
    }

    async fn launch(
        dir: &Path,
        openmetrics: Option<&str>,
        config_text: &str,
        flags: &[String],
    ) -> Result<Prometheus, SandboxError> {
        let server = program("prometheus")?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(io(format!("cannot create {}", data.display())))?;
        if let Some(text) = openmetrics {
            backfill(dir, &data, text).await?;
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text).map_err(io(format!("cannot write {}", config.display())))?;
        let port = free_port().await?;
        let launch = Launch {
            program: server,
            args: vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ]
            .into_iter()
            .chain(flags.iter().cloned())
            .collect(),
            env: Vec::new(),
            keep: false,
        };
        let log = dir.join("prometheus.log");
        let process = Process::spawn(&launch, dir, &log).map_err(io("cannot start prometheus"))?;
        let mut prometheus = Prometheus { process, url: format!("http://127.0.0.1:{port}") };
        prometheus.ready(port, &log).await?;
        Ok(prometheus)
    }

    /// Waits for `/-/ready`: the process alive, then the answer 200.
    async fn ready(&mut self, port: u16, log: &Path) -> Result<(), SandboxError> {
        let started = Instant::now();
        loop {
            let exited = self.process.exited();
            let answer = tokio::time::timeout(Duration::from_secs(2), status(port, "/-/ready")).await.ok().flatten();
            if exited.is_none() && answer == Some(200) {
                return Ok(());
            }
            if exited.is_some() || started.elapsed() > READY_WITHIN {
                let reason = match exited {
                    Some(status) => format!("it exited ({status})"),
                    None => format!("`/-/ready` answered {answer:?}, not 200"),
                };
                return Err(SandboxError::NotReady(Box::new(NotReady {
                    service: "prometheus".to_owned(),
                    engine: "prometheus".to_owned(),
                    waited: started.elapsed(),
                    reason,
                    log: log.display().to_string(),
                    tail: self.process.log_tail(20),
                })));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A remote writer to it (answered only by a Prometheus started [`Prometheus::receiving`]).
    pub fn writer(&self) -> RemoteWriter {
        RemoteWriter::new(&self.url)
    }

    /// Stops it (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(self) {
        self.process.stop(Duration::from_secs(10)).await;
    }
}
