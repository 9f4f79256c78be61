//! Durable state: the append-only event log of every run and the lock, behind the
//! [`Store`] trait so a shared backend can follow the embedded one ([`DirStore`]).
//!
//! The lock is a lease with an epoch: every take-over issues a greater epoch, and every
//! append names the lease it is made under ([`Lease`]). An append is refused unless the
//! lock file names that same lease, checked under the same `flock` as the write, so a
//! holder that was stopped past its expiry can never write after another took over.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::Record;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another run holds the lock.
    #[error(
        "the plan is locked by {} (pid {} on {}, `{}`) since {}, heartbeat {}; it expires {}s after its last heartbeat. If that run is really gone, pass `--force-unlock {}` (or run `handoff lock break {}`)",
        .0.owner, .0.pid, .0.host, .0.command, .0.acquired_at, .0.heartbeat_at, .0.ttl_seconds, .0.id, .0.id
    )]
    Locked(Box<LockRecord>),
    /// `--force-unlock` or `lock break` named a lock that is not the current one.
    #[error("lock {given} is not the current lock; the current lock is {current}")]
    WrongLock {
        /// The id given.
        given: String,
        /// The id of the current lock (`none`, or `damaged`).
        current: String,
    },
    /// The lock file (or the epoch counter beside it) cannot be read as a lock.
    #[error(
        "the lock file {path} is damaged ({reason}); if no handoff process is running this plan in this environment, clear it with `handoff lock break --damaged --reason \"…\"`"
    )]
    DamagedLock {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An append (or a repair) made under a lease that is no longer the current lock.
    #[error(
        "lost the lock: this process holds lease {lease} (epoch {epoch}) but the lock is now {current}; nothing was written"
    )]
    Fenced {
        /// The appender's lease id.
        lease: String,
        /// The appender's epoch.
        epoch: u64,
        /// The current lock (`none`, `damaged`, or `<id> (epoch N)`).
        current: String,
    },
    /// A record of an event log (not a torn last line) cannot be read.
    #[error(
        "{path}: record {line} is corrupt ({message}); nothing was changed. Records 1 to {intact} are intact. To recover, inspect the file, then either keep the intact records (`head -n {intact} {path} > kept && mv kept {path}`; steps recorded after them may have run: settle them on resume) or move the run's directory out of `runs/` and start a new run"
    )]
    Corrupt {
        /// The log.
        path: PathBuf,
        /// 1-based line (record number).
        line: usize,
        /// Records before it, all readable.
        intact: usize,
        /// Parser message.
        message: String,
    },
    /// A file that must hold a JSON document (a run's `plan.json`) cannot be read as one.
    #[error("{path} is corrupt ({message}); nothing was changed")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A run's event log holds no complete record.
    #[error(
        "{path}: the event log is empty (the run was created but recorded nothing: a crash right after it was created, or the file was truncated); nothing of it is known to have run. Inspect it, then move the run's directory out of `runs/` to start a new run"
    )]
    EmptyLog {
        /// The log.
        path: PathBuf,
    },
    /// A shared store (a database) failed or returned what is not a store's document.
    #[error("state store {location}: {message}")]
    Backend {
        /// Where the store is, without credentials.
        location: String,
        /// What failed, without credentials.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// Who holds a plan's lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Lock id (for `--force-unlock` and `handoff lock break`).
    pub id: String,
    /// User that took it.
    pub owner: String,
    /// Host of the holding process.
    pub host: String,
    /// Pid of the holding process.
    pub pid: u32,
    /// Command line of the holder.
    pub command: String,
    /// When it was taken.
    pub acquired_at: Timestamp,
    /// Last heartbeat.
    pub heartbeat_at: Timestamp,
    /// Seconds after the last heartbeat when the lock expires.
    pub ttl_seconds: u64,
    /// The lease's epoch: greater than every epoch issued before it for this plan and
    /// environment (assigned by the store when the lock is taken).
    #[serde(default)]
    pub epoch: u64,
}

impl LockRecord {
    /// A new record for this process.
    pub fn for_this_process(command: &str, ttl: Duration) -> LockRecord {
        let now = Timestamp::now();
        let pid = std::process::id();
        LockRecord {
            id: format!("{}-{pid}-{}", hostname(), now.as_nanosecond() % 1_000_000_000),
            owner: std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()),
            host: hostname(),
            pid,
            command: command.to_owned(),
            acquired_at: now,
            heartbeat_at: now,
            ttl_seconds: ttl.as_secs().max(1),
            epoch: 0,
        }
    }

    /// When the lock expires unless its holder heartbeats again.
    pub fn expires_at(&self) -> Timestamp {
        let ttl = i64::try_from(self.ttl_seconds).unwrap_or(i64::MAX);
        self.heartbeat_at.checked_add(jiff::SignedDuration::from_secs(ttl)).unwrap_or(Timestamp::MAX)
    }

    /// Whether the holder is gone: its heartbeat expired, or it ran on this host and its
    /// process no longer exists.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        now > self.expires_at() || (self.host == hostname() && !pid_alive(self.pid))
    }

    /// Whether the holder is gone now.
    pub fn is_stale_now(&self) -> bool {
        self.is_stale(Timestamp::now())
    }

    /// The lease this record grants.
    pub fn lease(&self) -> Lease {
        Lease { id: self.id.clone(), epoch: self.epoch }
    }
}

/// What a holder appends under: its lock's id and epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// The lock id.
    pub id: String,
    /// The lock's epoch.
    pub epoch: u64,
}

/// This process's host identity: `HANDOFF_HOST` when set and not empty (a pod, or a CI
/// runner, whose machine name says nothing stable), else the machine's name.
pub fn hostname() -> String {
    if let Some(host) = std::env::var("HANDOFF_HOST").ok().filter(|h| !h.is_empty()) {
        return host;
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

/// Whether a process with this pid exists on this host.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// How a lock is requested.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// The record to install (its epoch is assigned by the store).
    pub record: LockRecord,
    /// Take over this lock even if it is live (`--force-unlock <id>`).
    pub force_unlock: Option<String>,
}

impl LockRequest {
    /// Whether this request may replace `current`: a free lock, a stale one, or the one
    /// `force_unlock` names ([`StoreError::WrongLock`] for another; [`StoreError::Locked`]
    /// while a holder is live). Every store decides a take-over by this rule.
    pub fn admits(&self, current: Option<&LockRecord>) -> Result<(), StoreError> {
        if let Some(given) = &self.force_unlock {
            let current_id = current.map_or("none", |c| c.id.as_str());
            if current_id != given {
                return Err(StoreError::WrongLock { given: given.clone(), current: current_id.to_owned() });
            }
        } else if let Some(current) = current
            && !current.is_stale(Timestamp::now())
        {
            return Err(StoreError::Locked(Box::new(current.clone())));
        }
        Ok(())
    }
}

/// A lock taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    /// What to append under.
    pub lease: Lease,
    /// The stale (or forced) lock that was taken over, if any.
    pub previous: Option<LockRecord>,
}

/// Which lock `handoff lock break` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakTarget {
    /// The lock with this id (refused if the current lock is another).
    Id(String),
    /// A lock file that cannot be read (refused if it can).
    Damaged,
}

/// The lock as found: free, held, or a file that cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub enum LockState {
    /// No lock.
    Free,
    /// Held by this record.
    Held(LockRecord),
    /// The lock file is damaged: the message says where and how to clear it.
    Damaged(String),
}

impl LockState {
    /// The lock of `store` as found.
    pub fn of(store: &dyn Store) -> Result<LockState, StoreError> {
        match store.current_lock() {
            Ok(Some(record)) => Ok(LockState::Held(record)),
            Ok(None) => Ok(LockState::Free),
            Err(error @ StoreError::DamagedLock { .. }) => Ok(LockState::Damaged(error.to_string())),
            Err(error) => Err(error),
        }
    }
}

/// Where runs of one plan in one environment keep their state.
pub trait Store: Send + Sync {
    /// Where the store keeps its state, for messages.
    fn location(&self) -> String;
    /// Takes the lock with a new epoch; says which stale lock was taken over, if one was.
    fn lock(&self, request: &LockRequest) -> Result<Acquired, StoreError>;
    /// Refreshes the heartbeat; `false` when the lock is no longer this lease.
    fn heartbeat(&self, lease: &Lease) -> Result<bool, StoreError>;
    /// Releases the lock if it is this lease.
    fn unlock(&self, lease: &Lease) -> Result<(), StoreError>;
    /// The current lock record, if any ([`StoreError::DamagedLock`] when unreadable).
    fn current_lock(&self) -> Result<Option<LockRecord>, StoreError>;
    /// Removes the lock `target` names; returns the record removed (`None` for a damaged
    /// file).
    fn break_lock(&self, target: &BreakTarget) -> Result<Option<LockRecord>, StoreError>;
    /// Creates a run with the canonical plan it runs.
    fn create_run(&self, run: &str, plan: &Value) -> Result<(), StoreError>;
    /// The most recent run, if any.
    fn latest_run(&self) -> Result<Option<String>, StoreError>;
    /// The canonical plan a run started with.
    fn plan_of(&self, run: &str) -> Result<Value, StoreError>;
    /// Every record of a run, in order, never writing. A torn last line (one without its
    /// final newline: a crash mid-write) is left out; any other unreadable record is
    /// [`StoreError::Corrupt`], a log without a complete record [`StoreError::EmptyLog`].
    fn load(&self, run: &str) -> Result<Vec<Record>, StoreError>;
    /// Cuts a torn last line off the log, under `lease`; returns how much it cut (bytes of
    /// a file, or uncommitted documents of a database).
    fn repair(&self, run: &str, lease: &Lease) -> Result<u64, StoreError>;
    /// Appends a record under `lease`; refused ([`StoreError::Fenced`]) unless the lock is
    /// still that lease. Returns once the record is durable.
    fn append(&self, run: &str, lease: &Lease, record: &Record) -> Result<(), StoreError>;
}

/// The embedded store: a directory per plan and environment.
///
/// ```text
/// <state-dir>/<plan>/<env>/lock.json        the lock record (with its epoch)
///                         /lock.epoch       the greatest epoch issued so far
///                         /lock.guard       flock(2) around lock changes and appends
///                         /runs/<run>/plan.json    canonical plan
///                         /runs/<run>/events.jsonl one record per line, fsync'd
/// ```
pub struct DirStore {
    dir: PathBuf,
    open: Mutex<Option<(String, File)>>,
}

impl DirStore {
    /// The store of `plan` in `env` under `state_dir`.
    pub fn new(state_dir: &Path, plan: &str, env: &str) -> DirStore {
        DirStore { dir: state_dir.join(plan).join(env), open: Mutex::new(None) }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn run_dir(&self, run: &str) -> PathBuf {
        self.dir.join("runs").join(run)
    }

    fn log_path(&self, run: &str) -> PathBuf {
        self.run_dir(run).join("events.jsonl")
    }

    fn epoch_path(&self) -> PathBuf {
        self.dir.join("lock.epoch")
    }

    /// Runs `f` holding the guard lock, so lock changes and appends are atomic between
    /// processes.
    fn guarded<T>(&self, f: impl FnOnce(&Path) -> Result<T, StoreError>) -> Result<T, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let guard_path = self.dir.join("lock.guard");
        // Opened without truncating: a guard that changed would make every fsync commit it.
        let guard = OpenOptions::new().write(true).create(true).truncate(false).open(&guard_path);
        let guard = guard.map_err(io(&guard_path))?;
        guard.lock().map_err(io(&guard_path))?;
        let result = f(&self.dir.join("lock.json"));
        drop(guard);
        result
    }

    /// Raises the epoch counter to at least `floor`, plus `step`, durably; returns it.
    /// A take-over asks for the epoch after every one issued (`step` 1); a break keeps the
    /// broken lock's epoch issued (`step` 0), so no later lease reuses it.
    fn raise_epoch(&self, floor: u64, step: u64) -> Result<u64, StoreError> {
        let path = self.epoch_path();
        let epoch = read_epoch(&path)?.max(floor).saturating_add(step);
        write_atomic(&path, epoch.to_string().as_bytes())?;
        Ok(epoch)
    }

    /// Removes the lock file and the epoch counter where they cannot be read; refused when
    /// neither is damaged.
    fn break_damaged(&self, path: &Path) -> Result<Option<LockRecord>, StoreError> {
        let epoch = self.epoch_path();
        let epoch_damaged = matches!(read_epoch(&epoch), Err(StoreError::DamagedLock { .. }));
        let current = match read_lock(path) {
            Err(StoreError::DamagedLock { .. }) => None,
            Ok(record) if epoch_damaged => record.map(|r| r.id),
            Ok(record) => {
                let current = record.map_or_else(|| "none".to_owned(), |r| r.id);
                return Err(StoreError::WrongLock { given: "--damaged".to_owned(), current });
            }
            Err(error) => return Err(error),
        };
        if epoch_damaged {
            remove(&epoch)?;
        }
        if current.is_none() && path.exists() {
            remove(path)?;
        }
        Ok(None)
    }

    /// Writes one line at the end of a run's log and makes it durable.
    fn write_line(&self, run: &str, record: &Record) -> Result<(), StoreError> {
        let path = self.log_path(run);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.as_ref().is_none_or(|(r, _)| r != run) {
            let file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
            *open = Some((run.to_owned(), file));
        }
        let Some((_, file)) = open.as_mut() else { unreachable!("opened above") };
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        let before = file.metadata().map_err(io(&path))?.len();
        file.write_all(&line).and_then(|()| file.sync_data()).map_err(|error| {
            // Never leave half a record in the middle of the log: cut it off again.
            let _ = file.set_len(before);
            StoreError::Io { path: path.clone(), source: error }
        })
    }
}

fn read_lock(path: &Path) -> Result<Option<LockRecord>, StoreError> {
    let damaged = |reason: String| StoreError::DamagedLock { path: path.to_owned(), reason };
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Err(damaged("the file is empty".to_owned())),
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| damaged(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
    }
}

fn read_epoch(path: &Path) -> Result<u64, StoreError> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| StoreError::DamagedLock {
            path: path.to_owned(),
            reason: format!("not an epoch number: {:?}", text.chars().take(40).collect::<String>()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
    }
}

/// The current lock, if it is `lease`; else why not, as [`StoreError::Fenced`].
fn check_lease(path: &Path, lease: &Lease) -> Result<LockRecord, StoreError> {
    let fenced = |current: String| StoreError::Fenced { lease: lease.id.clone(), epoch: lease.epoch, current };
    match read_lock(path) {
        Ok(Some(record)) if record.lease() == *lease => Ok(record),
        Ok(Some(record)) => Err(fenced(format!("{} (epoch {})", record.id, record.epoch))),
        Ok(None) => Err(fenced("none".to_owned())),
        Err(StoreError::DamagedLock { .. }) => Err(fenced("damaged".to_owned())),
        Err(error) => Err(error),
    }
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = File::create(&temp).map_err(io(&temp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&temp))?;
    fs::rename(&temp, path).map_err(io(path))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn remove(path: &Path) -> Result<(), StoreError> {
    fs::remove_file(path).map_err(io(path))?;
    sync_dir(path)
}

/// The records of a log's bytes. Only the text after the last newline can be torn; it is
/// left out. Every complete line must be the record of its position.
fn parse_log(path: &Path, bytes: &[u8]) -> Result<Vec<Record>, StoreError> {
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(&[][..], |end| &bytes[..=end]);
    let mut records = Vec::new();
    for (index, line) in complete.split_inclusive(|b| *b == b'\n').enumerate() {
        let corrupt =
            |message: String| StoreError::Corrupt { path: path.to_owned(), line: index + 1, intact: index, message };
        let record: Record = serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| corrupt(e.to_string()))?;
        if record.seq != index as u64 + 1 {
            return Err(corrupt(format!("its sequence number is {}, not {}", record.seq, index + 1)));
        }
        records.push(record);
    }
    if records.is_empty() {
        return Err(StoreError::EmptyLog { path: path.to_owned() });
    }
    Ok(records)
}

/// Removes the lock at `path` if its id is `id`.
fn break_by_id(path: &Path, id: &str) -> Result<Option<LockRecord>, StoreError> {
    let wrong = |current: &str| StoreError::WrongLock { given: id.to_owned(), current: current.to_owned() };
    match read_lock(path) {
        Ok(Some(record)) if record.id == id => remove(path).map(|()| Some(record)),
        Ok(Some(record)) => Err(wrong(&record.id)),
        Ok(None) => Err(wrong("none")),
        Err(StoreError::DamagedLock { .. }) => Err(wrong("damaged")),
        Err(error) => Err(error),
    }
}

impl Store for DirStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn lock(&self, request: &LockRequest) -> Result<Acquired, StoreError> {
        self.guarded(|path| {
            let current = read_lock(path)?;
            request.admits(current.as_ref())?;
            let epoch = self.raise_epoch(current.as_ref().map_or(0, |c| c.epoch), 1)?;
            let record = LockRecord { epoch, ..request.record.clone() };
            write_atomic(path, &serde_json::to_vec_pretty(&record).unwrap_or_default())?;
            Ok(Acquired { lease: record.lease(), previous: current })
        })
    }

    fn heartbeat(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.guarded(|path| match check_lease(path, lease) {
            Ok(mut record) => {
                record.heartbeat_at = Timestamp::now();
                write_atomic(path, &serde_json::to_vec_pretty(&record).unwrap_or_default())?;
                Ok(true)
            }
            Err(StoreError::Fenced { .. }) => Ok(false),
            Err(error) => Err(error),
        })
    }

    fn unlock(&self, lease: &Lease) -> Result<(), StoreError> {
        self.guarded(|path| match check_lease(path, lease) {
            Ok(_) => remove(path),
            Err(StoreError::Fenced { .. }) => Ok(()),
            Err(error) => Err(error),
        })
    }

    fn current_lock(&self) -> Result<Option<LockRecord>, StoreError> {
        read_lock(&self.dir.join("lock.json"))
    }

    fn break_lock(&self, target: &BreakTarget) -> Result<Option<LockRecord>, StoreError> {
        self.guarded(|path| match target {
            BreakTarget::Id(id) => {
                let removed = break_by_id(path, id)?;
                self.raise_epoch(removed.as_ref().map_or(0, |r| r.epoch), 0)?;
                Ok(removed)
            }
            BreakTarget::Damaged => self.break_damaged(path),
        })
    }

    fn create_run(&self, run: &str, plan: &Value) -> Result<(), StoreError> {
        let dir = self.run_dir(run);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_atomic(&dir.join("plan.json"), &serde_json::to_vec_pretty(plan).unwrap_or_default())?;
        let events = dir.join("events.jsonl");
        File::create(&events).map_err(io(&events))?;
        sync_dir(&events)?;
        sync_dir(&dir)
    }

    fn latest_run(&self) -> Result<Option<String>, StoreError> {
        let runs = self.dir.join("runs");
        let entries = match fs::read_dir(&runs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path: runs, source: e }),
        };
        // Run ids start with a UTC timestamp, so the greatest is the latest.
        Ok(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).max())
    }

    fn plan_of(&self, run: &str) -> Result<Value, StoreError> {
        let path = self.run_dir(run).join("plan.json");
        let bytes = fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptFile { path, message: e.to_string() })
    }

    fn load(&self, run: &str) -> Result<Vec<Record>, StoreError> {
        let path = self.log_path(run);
        let bytes = fs::read(&path).map_err(io(&path))?;
        parse_log(&path, &bytes)
    }

    fn repair(&self, run: &str, lease: &Lease) -> Result<u64, StoreError> {
        self.guarded(|lock| {
            check_lease(lock, lease)?;
            let path = self.log_path(run);
            let bytes = fs::read(&path).map_err(io(&path))?;
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
            if keep == bytes.len() {
                return Ok(0);
            }
            let file = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
            file.set_len(keep as u64).and_then(|()| file.sync_all()).map_err(io(&path))?;
            Ok((bytes.len() - keep) as u64)
        })
    }

    fn append(&self, run: &str, lease: &Lease, record: &Record) -> Result<(), StoreError> {
        self.guarded(|lock| {
            check_lease(lock, lease)?;
            self.write_line(run, record)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn record(seq: u64) -> Record {
        Record { seq, at: Timestamp::UNIX_EPOCH, event: Event::PhaseStarted { phase: format!("p{seq}") } }
    }

    fn take(store: &DirStore, record: &LockRecord, force_unlock: Option<&str>) -> Result<Acquired, StoreError> {
        store.lock(&LockRequest { record: record.clone(), force_unlock: force_unlock.map(str::to_owned) })
    }

    #[test]
    fn only_a_line_without_its_newline_is_torn_and_only_a_repair_cuts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), "plan", "env");
        let lease = take(&store, &LockRecord::for_this_process("test", Duration::from_secs(60)), None).unwrap().lease;
        store.create_run("r1", &Value::Null).unwrap();
        assert!(matches!(store.load("r1"), Err(StoreError::EmptyLog { .. })));
        store.append("r1", &lease, &record(1)).unwrap();
        store.append("r1", &lease, &record(2)).unwrap();
        let path = store.log_path("r1");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"at\":\"19").unwrap();
        let before = fs::read(&path).unwrap();
        assert_eq!(store.load("r1").unwrap(), vec![record(1), record(2)]);
        assert_eq!(fs::read(&path).unwrap(), before, "loading never writes");
        assert_eq!(store.repair("r1", &lease).unwrap(), 17);
        let store = DirStore::new(dir.path(), "plan", "env");
        store.append("r1", &lease, &record(3)).unwrap();
        assert_eq!(store.load("r1").unwrap().len(), 3);

        // A complete last line that is not a record is corrupt, not torn.
        fs::write(&path, format!("{}garbage\n", String::from_utf8_lossy(&before[..before.len() - 17]))).unwrap();
        let error = store.load("r1").unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { line: 3, intact: 2, .. }), "{error}");
        assert!(error.to_string().contains("head -n 2"), "{error}");
        // So is a record out of sequence (a second writer).
        let text = fs::read_to_string(&path).unwrap().replace("garbage\n", "");
        let duplicate = text.lines().nth(1).unwrap().to_owned();
        fs::write(&path, format!("{text}{duplicate}\n")).unwrap();
        assert!(matches!(store.load("r1"), Err(StoreError::Corrupt { line: 3, .. })));
    }

    #[test]
    fn appends_are_fenced_by_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), "plan", "env");
        store.create_run("r1", &Value::Null).unwrap();
        let mine = LockRecord::for_this_process("test", Duration::from_secs(60));
        let first = take(&store, &mine, None).unwrap().lease;
        store.append("r1", &first, &record(1)).unwrap();
        let other = LockRecord { id: "other".to_owned(), ..mine.clone() };
        let second = take(&store, &other, Some(&mine.id)).unwrap().lease;
        assert!(second.epoch > first.epoch);
        let refused = store.append("r1", &first, &record(2)).unwrap_err();
        assert!(matches!(refused, StoreError::Fenced { ref current, .. } if current.starts_with("other")), "{refused}");
        assert!(!store.heartbeat(&first).unwrap());
        store.unlock(&first).unwrap();
        assert_eq!(store.current_lock().unwrap().map(|r| r.id), Some("other".to_owned()));
        store.append("r1", &second, &record(2)).unwrap();
        // A lease whose lock was released (or broken) appends nothing; epochs keep growing.
        store.unlock(&second).unwrap();
        assert!(matches!(store.append("r1", &second, &record(3)), Err(StoreError::Fenced { .. })));
        assert!(take(&store, &mine, None).unwrap().lease.epoch > second.epoch);
        assert_eq!(store.load("r1").unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_lock_is_reported_and_only_broken_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), "plan", "env");
        let mine = LockRecord::for_this_process("test", Duration::from_secs(60));
        for damage in ["", "{\"id\":"] {
            fs::create_dir_all(store.dir()).unwrap();
            fs::write(store.dir().join("lock.json"), damage).unwrap();
            let error = take(&store, &mine, None).unwrap_err();
            assert!(matches!(error, StoreError::DamagedLock { .. }), "{error}");
            assert!(error.to_string().contains("lock.json"), "{error}");
            assert!(matches!(store.current_lock(), Err(StoreError::DamagedLock { .. })));
            let wrong = store.break_lock(&BreakTarget::Id("x".to_owned())).unwrap_err();
            assert!(matches!(wrong, StoreError::WrongLock { ref current, .. } if current == "damaged"));
            assert_eq!(store.break_lock(&BreakTarget::Damaged).unwrap(), None);
            assert_eq!(store.current_lock().unwrap(), None);
        }
        let lease = take(&store, &mine, None).unwrap().lease;
        assert!(matches!(store.break_lock(&BreakTarget::Damaged), Err(StoreError::WrongLock { .. })));
        let broken = store.break_lock(&BreakTarget::Id(mine.id.clone())).unwrap();
        assert_eq!(broken.map(|r| r.lease()), Some(lease));
        fs::write(store.epoch_path(), "seven").unwrap();
        assert!(matches!(take(&store, &mine, None), Err(StoreError::DamagedLock { .. })));
        store.break_lock(&BreakTarget::Damaged).unwrap();
        take(&store, &mine, None).unwrap();
    }

    #[test]
    fn a_live_lock_is_refused_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), "plan", "env");
        let mine = LockRecord::for_this_process("test", Duration::from_secs(60));
        assert_eq!(take(&store, &mine, None).unwrap().previous, None);
        let other = LockRecord { id: "other".to_owned(), ..mine.clone() };
        let refused = take(&store, &other, None).unwrap_err();
        assert!(matches!(refused, StoreError::Locked(ref held) if held.id == mine.id), "{refused}");
        assert!(matches!(take(&store, &other, Some("nope")), Err(StoreError::WrongLock { .. })));
        let forced = take(&store, &other, Some(&mine.id)).unwrap();
        assert_eq!(forced.previous.map(|r| r.id), Some(mine.id.clone()));

        // A holder on another host is stale only once its heartbeat expired.
        let remote = LockRecord { id: "remote".to_owned(), host: "elsewhere".to_owned(), ..mine.clone() };
        take(&store, &remote, Some("other")).unwrap();
        assert!(matches!(take(&store, &mine, None), Err(StoreError::Locked(_))));
        let expired = LockRecord {
            id: "expired".to_owned(),
            heartbeat_at: Timestamp::now() - jiff::SignedDuration::from_secs(61),
            ..remote
        };
        take(&store, &expired, Some("remote")).unwrap();
        let taken = take(&store, &mine, None).unwrap();
        assert_eq!(taken.previous.map(|r| r.id), Some("expired".to_owned()));

        // A holder on this host whose process is gone is stale at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LockRecord { id: "dead".to_owned(), pid, ..mine.clone() };
        take(&store, &dead, Some(&mine.id)).unwrap();
        let taken = take(&store, &mine, None).unwrap();
        assert_eq!(taken.previous.map(|r| r.id), Some("dead".to_owned()));
        store.unlock(&taken.lease).unwrap();
        assert_eq!(store.current_lock().unwrap(), None);
    }
}
