//! Server processes: each runs in its own process group under the supervisor of
//! [`handoff_executor::process`], holding a lifeline from handoff: when handoff exits for
//! any reason — even SIGKILL — the group is stopped, so nothing outlives its owner.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff_executor::process::{Group, Start};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

pub(crate) use handoff_executor::process::start_time;

/// Time the lifeline's watcher gives a server between SIGTERM and SIGKILL.
const LIFELINE_GRACE: Duration = Duration::from_secs(3);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    /// Run without a lifeline: the server outlives handoff (`--keep`).
    pub(crate) keep: bool,
}

/// A running server process group.
#[derive(Debug)]
pub(crate) struct Process {
    group: Group,
    log: PathBuf,
}

impl Process {
    /// Starts `launch` in `dir`, appending its output to `log`.
    pub(crate) fn spawn(launch: &Launch, dir: &Path, log: &Path) -> std::io::Result<Process> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let start = Start { keep: launch.keep, grace: LIFELINE_GRACE };
        let mut command = Group::command(&launch.program, &launch.args, start);
        command.envs(launch.env.iter().map(|(k, v)| (k, v))).current_dir(dir).stdout(out).stderr(err);
        Ok(Process { group: Group::spawn(&mut command)?, log: log.to_owned() })
    }

    /// The process group id (recorded so that a later run can reap it).
    pub(crate) fn pgid(&self) -> i32 {
        self.group.pgid()
    }

    /// `Some(status)` once the server has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.group.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Freezes every process of the group (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn pause(&self) -> std::io::Result<()> {
        self.group.signal(Signal::SIGSTOP)
    }

    /// Thaws a paused group (SIGCONT).
    pub(crate) fn resume(&self) -> std::io::Result<()> {
        self.group.signal(Signal::SIGCONT)
    }

    /// Stops the server: SIGTERM to its group (the supervisor waits for a clean exit), then
    /// SIGKILL after `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) {
        self.group.terminate(grace).await;
    }

    /// Lets the server run on after this handle is gone (kept sandboxes).
    pub(crate) fn detach(self) {
        self.group.detach();
    }

    /// The last `lines` lines of the server's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// Kills a process group left behind by an earlier run, if its leader is still the
/// process that was recorded (`started`, see [`start_time`]): process ids are reused
/// (`pid_max` can be as low as 32,768), and a stale id may name someone else's process.
pub(crate) fn kill_group(pgid: i32, started: u64) {
    if start_time(pgid) == Some(started) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Whether the process `pid` exists and, when its start time was recorded, is still the
/// same process.
pub(crate) fn alive(pid: i32, started: Option<u64>) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
        && started.is_none_or(|started| start_time(pid).is_none_or(|now| now == started))
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
