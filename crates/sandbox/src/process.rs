//! Server processes: each runs in its own process group under a small `sh` supervisor that
//! holds a "lifeline" pipe from handoff. When handoff exits for any reason — even SIGKILL —
//! the pipe closes and the supervisor stops the server, so nothing outlives its owner.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStdin, Command};

/// The supervisor: runs the server with stdin closed, forwards SIGTERM to it and waits for
/// its clean exit, stops it when the lifeline (fd 3, a copy of the supervisor's stdin)
/// reaches end of file, and exits with the server's status.
const SUPERVISOR: &str = r#"exec 3<&0
"$@" </dev/null &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT
watcher=
if [ -z "$HANDOFF_KEEP" ]; then
  ( trap - TERM INT; read -r _ <&3; kill -TERM "$server" 2>/dev/null; sleep 3; kill -KILL "$server" 2>/dev/null ) &
  watcher=$!
fi
wait "$server"
status=$?
while kill -0 "$server" 2>/dev/null; do
  wait "$server"
  status=$?
done
[ -n "$watcher" ] && kill "$watcher" 2>/dev/null
exit "$status"
"#;

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
    child: Child,
    pgid: Pid,
    log: PathBuf,
    /// Closing this stops the server; held until the process is stopped.
    _lifeline: Option<ChildStdin>,
}

impl Process {
    /// Starts `launch` in `dir`, appending its output to `log`.
    pub(crate) fn spawn(launch: &Launch, dir: &Path, log: &Path) -> std::io::Result<Process> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("handoff-supervisor")
            .arg(&launch.program)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env("HANDOFF_KEEP", if launch.keep { "1" } else { "" })
            .current_dir(dir)
            .stdin(if launch.keep { Stdio::null() } else { Stdio::piped() })
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(!launch.keep)
            .spawn()?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("the server exited at once"))?;
        let lifeline = child.stdin.take();
        let pgid = Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?);
        Ok(Process { child, pgid, log: log.to_owned(), _lifeline: lifeline })
    }

    /// The process group id (recorded so that a later run can reap it).
    pub(crate) fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// `Some(status)` once the server has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Freezes every process of the group (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn pause(&self) -> std::io::Result<()> {
        killpg(self.pgid, Signal::SIGSTOP).map_err(std::io::Error::from)
    }

    /// Thaws a paused group (SIGCONT).
    pub(crate) fn resume(&self) -> std::io::Result<()> {
        killpg(self.pgid, Signal::SIGCONT).map_err(std::io::Error::from)
    }

    /// Stops the server: SIGTERM through the supervisor (which waits for a clean exit), then
    /// SIGKILL to the whole group after `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) {
        let _ = killpg(self.pgid, Signal::SIGCONT);
        let _ = nix::sys::signal::kill(self.pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        // The supervisor may have exited before stragglers of its group.
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }

    /// Lets the server run on after this handle is gone (kept sandboxes).
    pub(crate) fn detach(self) {
        std::mem::forget(self);
    }

    /// The last `lines` lines of the server's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Stopped or not, nothing of the group survives its handle.
        let _ = killpg(self.pgid, Signal::SIGCONT);
        let _ = killpg(self.pgid, Signal::SIGKILL);
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

/// When a process started (clock ticks since boot, `/proc/<pid>/stat` field 22): with the
/// pid, it names one process for good. `None` where `/proc` does not tell.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
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
