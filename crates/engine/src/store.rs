//! Durable state: the append-only event log of every run and the lock, behind the
//! [`Store`] trait so a shared backend can follow the embedded one ([`DirStore`]).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
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
        "the plan is locked by {} (pid {} on {}, `{}`) since {}, heartbeat {}; it expires {}s after its last heartbeat. If that run is really gone, pass `--force-unlock {}`",
        .0.owner, .0.pid, .0.host, .0.command, .0.acquired_at, .0.heartbeat_at, .0.ttl_seconds, .0.id
    )]
    Locked(Box<LockRecord>),
    /// `--force-unlock` named a lock that is not the current one.
    #[error("--force-unlock {given}: the current lock is {current}")]
    WrongLock {
        /// The id given.
        given: String,
        /// The id of the current lock (or `none`).
        current: String,
    },
    /// A line of an event log is not a record.
    #[error("{path}:{line}: the event log is corrupt ({message}); it was not modified")]
    Corrupt {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Parser message.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// Who holds a plan's lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Lock id (for `--force-unlock`).
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
        }
    }

    /// Whether the holder is gone: its heartbeat expired, or it ran on this host and its
    /// process no longer exists.
    pub fn is_stale(&self, now: Timestamp) -> bool {
        let expired =
            now.duration_since(self.heartbeat_at).as_secs() > i64::try_from(self.ttl_seconds).unwrap_or(i64::MAX);
        expired || (self.host == hostname() && !pid_alive(self.pid))
    }
}

/// This machine's name.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// How a lock is requested.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// The record to install.
    pub record: LockRecord,
    /// Take over this lock even if it is live (`--force-unlock <id>`).
    pub force_unlock: Option<String>,
}

/// Where runs of one plan in one environment keep their state.
pub trait Store: Send + Sync {
    /// Where the store keeps its state, for messages.
    fn location(&self) -> String;
    /// Takes the lock; returns the lock that was taken over, if a stale one was.
    fn lock(&self, request: &LockRequest) -> Result<Option<LockRecord>, StoreError>;
    /// Refreshes the heartbeat; `false` when the lock is no longer ours.
    fn heartbeat(&self, id: &str) -> Result<bool, StoreError>;
    /// Releases the lock if it is ours.
    fn unlock(&self, id: &str) -> Result<(), StoreError>;
    /// The current lock record, if any.
    fn current_lock(&self) -> Result<Option<LockRecord>, StoreError>;
    /// Creates a run with the canonical plan it runs.
    fn create_run(&self, run: &str, plan: &Value) -> Result<(), StoreError>;
    /// The most recent run, if any.
    fn latest_run(&self) -> Result<Option<String>, StoreError>;
    /// The canonical plan a run started with.
    fn plan_of(&self, run: &str) -> Result<Value, StoreError>;
    /// Every record of a run, in order. A torn last line (a crash mid-write) is dropped.
    fn load(&self, run: &str) -> Result<Vec<Record>, StoreError>;
    /// Appends a record; returns once it is durable.
    fn append(&self, run: &str, record: &Record) -> Result<(), StoreError>;
}

/// The embedded store: a directory per plan and environment.
///
/// ```text
/// <state-dir>/<plan>/<env>/lock.json        the lock record
///                         /lock.guard       flock(2) around lock changes
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

    /// Runs `f` holding the guard lock, so lock changes are atomic between processes.
    fn guarded<T>(&self, f: impl FnOnce(&Path) -> Result<T, StoreError>) -> Result<T, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let guard_path = self.dir.join("lock.guard");
        let guard = File::create(&guard_path).map_err(io(&guard_path))?;
        guard.lock().map_err(io(&guard_path))?;
        let result = f(&self.dir.join("lock.json"));
        drop(guard);
        result
    }
}

fn read_lock(path: &Path) -> Result<Option<LockRecord>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            line: 1,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
    }
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp).map_err(io(&temp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&temp))?;
    fs::rename(&temp, path).map_err(io(path))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Store for DirStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn lock(&self, request: &LockRequest) -> Result<Option<LockRecord>, StoreError> {
        self.guarded(|path| {
            let current = read_lock(path)?;
            if let Some(given) = &request.force_unlock {
                let current_id = current.as_ref().map_or("none", |c| c.id.as_str());
                if current_id != given {
                    return Err(StoreError::WrongLock { given: given.clone(), current: current_id.to_owned() });
                }
            } else if let Some(current) = &current
                && !current.is_stale(Timestamp::now())
            {
                return Err(StoreError::Locked(Box::new(current.clone())));
            }
            write_atomic(path, &serde_json::to_vec_pretty(&request.record).unwrap_or_default())?;
            Ok(current)
        })
    }

    fn heartbeat(&self, id: &str) -> Result<bool, StoreError> {
        self.guarded(|path| match read_lock(path)? {
            Some(mut record) if record.id == id => {
                record.heartbeat_at = Timestamp::now();
                write_atomic(path, &serde_json::to_vec_pretty(&record).unwrap_or_default())?;
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    fn unlock(&self, id: &str) -> Result<(), StoreError> {
        self.guarded(|path| match read_lock(path)? {
            Some(record) if record.id == id => fs::remove_file(path).map_err(io(path)),
            _ => Ok(()),
        })
    }

    fn current_lock(&self) -> Result<Option<LockRecord>, StoreError> {
        read_lock(&self.dir.join("lock.json"))
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
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path, line: 1, message: e.to_string() })
    }

    fn load(&self, run: &str) -> Result<Vec<Record>, StoreError> {
        let path = self.run_dir(run).join("events.jsonl");
        let file = File::open(&path).map_err(io(&path))?;
        let mut records = Vec::new();
        let mut good_bytes = 0u64;
        let mut lines = BufReader::new(file).split(b'\n').peekable();
        let mut number = 0;
        while let Some(line) = lines.next() {
            number += 1;
            let line = line.map_err(io(&path))?;
            let last = lines.peek().is_none();
            match serde_json::from_slice::<Record>(&line) {
                Ok(record) => {
                    records.push(record);
                    good_bytes += line.len() as u64 + 1;
                }
                // A crash while appending leaves at most one torn line, at the end.
                Err(_) if last => {
                    let file = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                    file.set_len(good_bytes).and_then(|()| file.sync_all()).map_err(io(&path))?;
                }
                Err(e) => return Err(StoreError::Corrupt { path, line: number, message: e.to_string() }),
            }
        }
        Ok(records)
    }

    fn append(&self, run: &str, record: &Record) -> Result<(), StoreError> {
        let path = self.run_dir(run).join("events.jsonl");
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.as_ref().is_none_or(|(r, _)| r != run) {
            let mut file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
            file.seek(std::io::SeekFrom::End(0)).map_err(io(&path))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn record(seq: u64) -> Record {
        Record { seq, at: Timestamp::UNIX_EPOCH, event: Event::PhaseStarted { phase: format!("p{seq}") } }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_corrupt_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), "plan", "env");
        store.create_run("r1", &Value::Null).unwrap();
        store.append("r1", &record(1)).unwrap();
        store.append("r1", &record(2)).unwrap();
        let path = store.run_dir("r1").join("events.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"at\":\"19").unwrap();
        assert_eq!(store.load("r1").unwrap(), vec![record(1), record(2)]);
        // The torn tail is gone, so appending goes on cleanly.
        let store = DirStore::new(dir.path(), "plan", "env");
        store.append("r1", &record(3)).unwrap();
        assert_eq!(store.load("r1").unwrap().len(), 3);

        let text = fs::read_to_string(&path).unwrap().replacen("\"seq\":2", "\"seq\":", 1);
        fs::write(&path, text).unwrap();
        let error = store.load("r1").unwrap_err().to_string();
        assert!(error.contains("events.jsonl:2: the event log is corrupt"), "{error}");
    }

    #[test]
    fn a_live_lock_is_refused_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), "plan", "env");
        let mine = LockRecord::for_this_process("test", Duration::from_secs(60));
        assert_eq!(store.lock(&LockRequest { record: mine.clone(), force_unlock: None }).unwrap(), None);
        let other = LockRecord { id: "other".to_owned(), ..mine.clone() };
        let refused = store.lock(&LockRequest { record: other.clone(), force_unlock: None }).unwrap_err();
        assert!(matches!(refused, StoreError::Locked(ref held) if held.id == mine.id), "{refused}");
        let wrong = store.lock(&LockRequest { record: other.clone(), force_unlock: Some("nope".to_owned()) });
        assert!(matches!(wrong, Err(StoreError::WrongLock { .. })));
        let forced = store.lock(&LockRequest { record: other.clone(), force_unlock: Some(mine.id.clone()) }).unwrap();
        assert_eq!(forced.map(|r| r.id), Some(mine.id.clone()));
        assert!(!store.heartbeat(&mine.id).unwrap(), "the forced-out holder learns it lost the lock");

        // A holder on another host is stale only once its heartbeat expired.
        let remote = LockRecord { id: "remote".to_owned(), host: "elsewhere".to_owned(), ..mine.clone() };
        store.lock(&LockRequest { record: remote.clone(), force_unlock: Some("other".to_owned()) }).unwrap();
        assert!(matches!(
            store.lock(&LockRequest { record: mine.clone(), force_unlock: None }),
            Err(StoreError::Locked(_))
        ));
        let expired = LockRecord {
            id: "expired".to_owned(),
            heartbeat_at: Timestamp::now() - jiff::SignedDuration::from_secs(61),
            ..remote
        };
        store.lock(&LockRequest { record: expired, force_unlock: Some("remote".to_owned()) }).unwrap();
        let taken = store.lock(&LockRequest { record: mine.clone(), force_unlock: None }).unwrap();
        assert_eq!(taken.map(|r| r.id), Some("expired".to_owned()));

        // A holder on this host whose process is gone is stale at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LockRecord { id: "dead".to_owned(), pid, ..mine.clone() };
        store.lock(&LockRequest { record: dead, force_unlock: Some(mine.id.clone()) }).unwrap();
        let taken = store.lock(&LockRequest { record: mine.clone(), force_unlock: None }).unwrap();
        assert_eq!(taken.map(|r| r.id), Some("dead".to_owned()));
        store.unlock(&mine.id).unwrap();
        assert_eq!(store.current_lock().unwrap(), None);
    }
}
