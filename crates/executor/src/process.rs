//! Process groups that die with handoff: what a step runs (`shell.run`) and what the
//! sandbox serves.
//!
//! Each program runs in its own process group under a small `sh` supervisor that holds a
//! "lifeline" pipe from handoff. When handoff exits for any reason — even SIGKILL — the
//! pipe closes and a watcher in the group sends SIGTERM to the whole group, then SIGKILL
//! after the grace period, so no process of the group (grandchildren included) outlives
//! its owner.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// How long a step's processes get between SIGTERM and SIGKILL, when a run is cancelled or
/// handoff dies.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// The supervisor (`$1`: lifeline or not, `$2`: grace in seconds, then the program and its
/// arguments): runs the program with stdin closed, ignores SIGTERM and SIGINT itself (the
/// program in its group gets them), and exits with the program's status once its watcher is
/// gone too. With a lifeline (fd 3, a copy of its stdin), a watcher waits for end of file,
/// then — ignoring SIGTERM from then on — sends SIGTERM to the whole group and SIGKILL after
/// the grace. The watcher starts before the supervisor's own trap, so that it never
/// inherits the trap and always dies of the supervisor's SIGTERM before it fired.
const SUPERVISOR: &str = r#"lifeline=$1
grace=$2
shift 2
exec 3<&0
"$@" </dev/null 3<&- &
server=$!
watcher=
if [ -n "$lifeline" ]; then
  ( read -r _ <&3; trap '' TERM INT; kill -TERM 0; sleep "$grace"; kill -KILL 0 ) &
  watcher=$!
fi
trap : TERM INT
exec 3<&-
wait "$server"
status=$?
while kill -0 "$server" 2>/dev/null; do
  wait "$server"
  status=$?
done
if [ -n "$watcher" ]; then
  kill "$watcher" 2>/dev/null
  wait "$watcher"
fi
exit "$status"
"#;

/// A program running in its own process group under the supervisor.
#[derive(Debug)]
pub struct Group {
    child: Child,
    pgid: Pid,
    /// Closing this makes the watcher stop the group; held as long as the group may run.
    _lifeline: Option<ChildStdin>,
}

/// How to start a [`Group`].
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Keep the group alive after handoff exits (no lifeline).
    pub keep: bool,
    /// Time between the watcher's SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Group {
    /// A command that runs `program` with `args` under the supervisor; the caller adds
    /// the environment, working directory, stdout and stderr, then calls [`Group::spawn`].
    pub fn command(
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        start: Start,
    ) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("handoff-supervisor")
            .arg(if start.keep { "" } else { "1" })
            .arg(start.grace.as_secs().max(1).to_string())
            .arg(program)
            .args(args)
            .stdin(if start.keep { Stdio::null() } else { Stdio::piped() })
            .process_group(0)
            .kill_on_drop(!start.keep);
        command
    }

    /// Starts a command made by [`Group::command`].
    pub fn spawn(command: &mut Command) -> std::io::Result<Group> {
        let mut child = command.spawn()?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("the process exited at once"))?;
        let lifeline = child.stdin.take();
        let pgid = Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?);
        Ok(Group { child, pgid, _lifeline: lifeline })
    }

    /// The process group id.
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// The program's standard output, when piped (once).
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The program's standard error, when piped (once).
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the program (the supervisor) to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// `Some(status)` once the supervisor has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        killpg(self.pgid, signal).map_err(std::io::Error::from)
    }

    /// Stops every process of the group: SIGTERM, then SIGKILL after `grace`; returns once
    /// no process of the group is left (or, should one outlive SIGKILL — stuck in the
    /// kernel —, after another `grace`).
    pub async fn terminate(&mut self, grace: Duration) {
        let _ = killpg(self.pgid, Signal::SIGCONT);
        let _ = killpg(self.pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.gone()).await.is_err() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = tokio::time::timeout(grace, self.gone()).await;
        }
    }

    /// Waits until no live process is left in the group (the supervisor reaped).
    async fn gone(&mut self) {
        let mut pause = Duration::from_millis(1);
        loop {
            let _ = self.child.try_wait();
            if group_gone(self.pgid.as_raw()) {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Lets the group run on after this handle is gone (kept sandboxes).
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Stopped or not, nothing of the group survives its handle.
        let _ = killpg(self.pgid, Signal::SIGCONT);
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

/// Whether no live process (zombies aside) is left in the process group `pgid`.
pub fn group_gone(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None).is_err() {
        return true;
    }
    // Zombies count for kill(2) until their parent (maybe an init that never reaps) does.
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    !entries.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some(after) = stat.rfind(')').map(|end| &stat[end + 1..]) else { return false };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && state != Some("Z")
    })
}

/// The live processes (zombies aside) started for a step of run `run`: whatever carries
/// `HANDOFF_RUN_ID=<run>` in its environment, as every step process does. Only this host's
/// processes, and only those `/proc` lets this user read.
pub fn processes_of_run(run: &str) -> Vec<i32> {
    let wanted = format!("HANDOFF_RUN_ID={run}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let dir = Path::new("/proc").join(pid.to_string());
            let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
            let alive = !std::fs::read_to_string(dir.join("stat")).unwrap_or_default().contains(") Z ");
            alive && environ.split(|b| *b == 0).any(|var| var == wanted.as_bytes())
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// When a process started (clock ticks since boot, `/proc/<pid>/stat` field 22): with the
/// pid, it names one process for good. `None` where `/proc` does not tell.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}
