//! The shared run store: a [`Store`] in MongoDB, so that a run started on one host (a CI
//! runner, a laptop) is resumed from another, and so that a killed holder's lease expires
//! and is taken over there.
//!
//! Three collections, in the connection string's database (`handoff` when it names none):
//!
//! ```text
//! leases  {_id: "<plan>/<env>", epoch, lock: {id, owner, host, pid, command, acquired_at,
//!          heartbeat_at, ttl_seconds, epoch} | null, heads: {<run as hex>: N}}
//! runs    {_id: "<plan>/<env>/<run>", key: "<plan>/<env>", run, plan: "<canonical plan JSON>"}
//! events  {_id: {r: "<plan>/<env>/<run>", s: seq}, epoch, record: "<record JSON>"}
//! ```
//!
//! Fencing needs no transaction. An append writes its record at its position (the `_id`
//! index is unique on run and sequence number, so two writers never hold one position),
//! then commits it with one conditional update of the lease document: the update matches
//! only while the lock is still the appender's lease (id and epoch) and the run's head is
//! the position before. A single document's update is atomic, so a holder that lost its
//! lease (taken over, or broken) commits nothing, and readers see only committed records
//! (those up to the head). A record written but never committed is invisible, like a
//! torn last line; a later holder, with a greater epoch, overwrites it in place, and a
//! stale holder can never overwrite a record of a greater epoch.

mod jobs;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::TryStreamExt;
use handoff_engine::{Acquired, BreakTarget, Lease, LockRecord, LockRequest, Record, Store, StoreError};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Collection, Database};
use serde_json::Value;

pub use jobs::MongoJobs;

/// The database when the connection string names none.
const DEFAULT_DATABASE: &str = "handoff";

/// How long a command waits for a reachable server when the connection string sets no
/// `serverSelectionTimeoutMS`.
const SERVER_SELECTION: Duration = Duration::from_secs(10);

/// How often a lock request re-reads a lease document that changed under it.
const LOCK_ATTEMPTS: usize = 20;

/// Whether `url` names a database store (`mongodb://` or `mongodb+srv://`).
pub fn is_url(url: &str) -> bool {
    url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")
}

/// `url` without its credentials and options: scheme, hosts and database, the user
/// information replaced by `***`.
pub fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "<not a URL>".to_owned() };
    let rest = rest.split('?').next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let hosts = authority.rsplit_once('@').map_or(authority.to_owned(), |(_, hosts)| format!("***@{hosts}"));
    if path.is_empty() { format!("{scheme}://{hosts}") } else { format!("{scheme}://{hosts}/{path}") }
}

/// The store of one plan in one environment, in MongoDB.
pub struct MongoStore {
    inner: std::sync::Arc<Inner>,
    /// The store's own runtime: [`Store`] is synchronous and is called from the engine's
    /// async tasks, where no runtime may be blocked on; calls are spawned here and waited
    /// for on a channel.
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the async half of a call needs.
struct Inner {
    db: Database,
    /// `<plan>/<env>`: the lease document's id and the prefix of its runs.
    key: String,
    /// Where, for messages (no credentials).
    location: String,
    /// Text that must never appear in a message (the connection string, its user info).
    secrets: Vec<String>,
}

impl MongoStore {
    /// Connects to the store at `url` for `plan` in `env`. The URL never appears in an
    /// error with its credentials.
    pub fn connect(url: &str, plan: &str, env: &str) -> Result<MongoStore, StoreError> {
        let location = format!("{} [{plan}/{env}]", mask(url));
        let secrets = secrets_of(url);
        let fail = |message: String| StoreError::Backend { location: location.clone(), message };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("handoff-store")
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let owned = url.to_owned();
        let opened = wait(&runtime, async move {
            let mut options = ClientOptions::parse(&owned).await?;
            options.server_selection_timeout.get_or_insert(SERVER_SELECTION);
            options.app_name.get_or_insert_with(|| "handoff".to_owned());
            let database = options.default_database.clone().unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
            Ok::<_, mongodb::error::Error>(mongodb::Client::with_options(options)?.database(&database))
        });
        let opened = opened.ok_or_else(|| fail("the store's runtime stopped".to_owned()))?;
        let db = opened.map_err(|e| fail(scrub(&e.to_string(), &secrets)))?;
        let inner = Inner { db, key: format!("{plan}/{env}"), location, secrets };
        Ok(MongoStore { inner: std::sync::Arc::new(inner), runtime: Some(runtime) })
    }

    /// Runs `f` on the store's runtime and waits for its result.
    fn call<T, F>(&self, f: impl FnOnce(std::sync::Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else { return Err(self.inner.backend("the store is closed")) };
        wait(runtime, f(self.inner.clone())).unwrap_or_else(|| Err(self.inner.backend("the store's runtime stopped")))
    }
}

impl Drop for MongoStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside the engine's async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Spawns `future` on `runtime` and blocks this thread (never one of `runtime`'s) until it
/// ends; `None` if the runtime stopped first.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (send, receive) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = send.send(future.await);
    });
    receive.recv().ok()
}

/// The parts of a connection string that must not be shown: the whole string, its user
/// information, and its password.
fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = vec![url.to_owned()];
    let authority = url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or_default());
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        secrets.push(userinfo.to_owned());
        if let Some((_, password)) = userinfo.split_once(':').filter(|(_, p)| !p.is_empty()) {
            secrets.push(password.to_owned());
        }
    }
    secrets
}

/// `message` with every secret replaced by `***`.
fn scrub(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_owned(), |message, secret| message.replace(secret.as_str(), "***"))
}

/// A run id as a field name: hex, so that no `.` or `$` of an id reaches a field path.
fn head_field(run: &str) -> String {
    let hex: String = run.bytes().map(|b| format!("{b:02x}")).collect();
    format!("heads.{hex}")
}

/// The lease document as read.
struct LeaseDoc {
    /// The greatest epoch issued so far.
    epoch: i64,
    /// The lock, if held.
    lock: Option<LockRecord>,
    /// The document itself (for the conditions of an update).
    raw: Document,
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Inner {
    fn backend(&self, message: &str) -> StoreError {
        StoreError::Backend { location: self.location.clone(), message: scrub(message, &self.secrets) }
    }

    fn error(&self, error: mongodb::error::Error) -> StoreError {
        self.backend(&error.to_string())
    }

    fn leases(&self) -> Collection<Document> {
        self.db.collection("leases")
    }

    fn events(&self) -> Collection<Document> {
        self.db.collection("events")
    }

    fn runs(&self) -> Collection<Document> {
        self.db.collection("runs")
    }

    fn run_key(&self, run: &str) -> String {
        format!("{}/{run}", self.key)
    }

    fn damaged(&self, reason: String) -> StoreError {
        StoreError::DamagedLock { path: PathBuf::from(format!("{} leases/{}", self.location, self.key)), reason }
    }

    /// The lease document, `None` before the first lock.
    async fn read_lease(&self) -> Result<Option<LeaseDoc>, StoreError> {
        let Some(raw) = self.leases().find_one(doc! {"_id": &self.key}).await.map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        let epoch = match raw.get("epoch") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => i64::from(*n),
            other => return Err(self.damaged(format!("its epoch is {other:?}, not a number"))),
        };
        let lock = match raw.get("lock") {
            None | Some(Bson::Null) => None,
            Some(lock) => {
                Some(mongodb::bson::from_bson::<LockRecord>(lock.clone()).map_err(|e| self.damaged(e.to_string()))?)
            }
        };
        Ok(Some(LeaseDoc { epoch, lock, raw }))
    }

    /// The condition that the lock is still `lease`.
    fn held_by(&self, lease: &Lease) -> Document {
        doc! {"_id": &self.key, "lock.id": &lease.id, "lock.epoch": int(lease.epoch)}
    }

    /// The fencing error for `lease`, naming the lock as it is now.
    async fn fenced(&self, lease: &Lease) -> StoreError {
        let current = match self.read_lease().await {
            Ok(Some(LeaseDoc { lock: Some(record), .. })) => format!("{} (epoch {})", record.id, record.epoch),
            Ok(_) => "none".to_owned(),
            Err(StoreError::DamagedLock { .. }) => "damaged".to_owned(),
            Err(error) => return error,
        };
        StoreError::Fenced { lease: lease.id.clone(), epoch: lease.epoch, current }
    }

    /// One attempt to take the lock: `None` when the document changed since it was read.
    async fn try_lock(&self, request: &LockRequest) -> Result<Option<Acquired>, StoreError> {
        let found = self.read_lease().await?;
        let current = found.as_ref().and_then(|f| f.lock.clone());
        request.admits(current.as_ref())?;
        let issued = found.as_ref().map_or(0, |f| f.epoch).max(current.as_ref().map_or(0, |c| int(c.epoch)));
        let epoch = u64::try_from(issued).unwrap_or(0).saturating_add(1);
        let record = LockRecord { epoch, ..request.record.clone() };
        let lock = mongodb::bson::to_bson(&record).map_err(|e| self.backend(&e.to_string()))?;
        let changed = match &found {
            None => {
                let new = doc! {"_id": &self.key, "epoch": int(epoch), "lock": lock, "heads": {}};
                match self.leases().insert_one(new).await {
                    Ok(_) => true,
                    Err(error) if duplicate(&error) => false,
                    Err(error) => return Err(self.error(error)),
                }
            }
            Some(found) => {
                // Unchanged since read: the same epoch and the same lock (or none).
                let filter = doc! {"_id": &self.key, "epoch": found.epoch, "lock": found.raw.get("lock").cloned().unwrap_or(Bson::Null)};
                let update = doc! {"$set": {"epoch": int(epoch), "lock": lock}};
                let result = self.leases().update_one(filter, update).await.map_err(|e| self.error(e))?;
                result.matched_count == 1
            }
        };
        Ok(changed.then(|| Acquired { lease: record.lease(), previous: current }))
    }

    async fn lock(&self, request: LockRequest) -> Result<Acquired, StoreError> {
        for _ in 0..LOCK_ATTEMPTS {
            if let Some(acquired) = self.try_lock(&request).await? {
                return Ok(acquired);
            }
        }
        Err(self.backend("the lease document kept changing while the lock was taken; try again"))
    }

    async fn heartbeat(&self, lease: Lease) -> Result<bool, StoreError> {
        let now = mongodb::bson::to_bson(&jiff::Timestamp::now()).map_err(|e| self.backend(&e.to_string()))?;
        let update = doc! {"$set": {"lock.heartbeat_at": now}};
        let result = self.leases().update_one(self.held_by(&lease), update).await.map_err(|e| self.error(e))?;
        Ok(result.matched_count == 1)
    }

    async fn unlock(&self, lease: Lease) -> Result<(), StoreError> {
        let update = doc! {"$set": {"lock": Bson::Null}};
        self.leases().update_one(self.held_by(&lease), update).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn break_lock(&self, target: BreakTarget) -> Result<Option<LockRecord>, StoreError> {
        let wrong =
            |given: &str, current: &str| StoreError::WrongLock { given: given.to_owned(), current: current.to_owned() };
        let found = match self.read_lease().await {
            Err(StoreError::DamagedLock { .. }) if target == BreakTarget::Damaged => {
                let update = doc! {"$set": {"lock": Bson::Null, "epoch": self.readable_epoch().await?}};
                self.leases().update_one(doc! {"_id": &self.key}, update).await.map_err(|e| self.error(e))?;
                return Ok(None);
            }
            Err(StoreError::DamagedLock { .. }) => "damaged".to_owned(),
            Err(error) => return Err(error),
            Ok(found) => found.and_then(|f| f.lock).map_or_else(|| "none".to_owned(), |l| l.id),
        };
        let BreakTarget::Id(id) = target else { return Err(wrong("--damaged", &found)) };
        let filter = doc! {"_id": &self.key, "lock.id": &id};
        let update = doc! {"$set": {"lock": Bson::Null}};
        let before = self.leases().find_one_and_update(filter, update).return_document(ReturnDocument::Before).await;
        let before = before.map_err(|e| self.error(e))?;
        let Some(lock) = before.and_then(|d| d.get("lock").cloned()) else { return Err(wrong(&id, &found)) };
        mongodb::bson::from_bson::<LockRecord>(lock).map(Some).map_err(|e| self.damaged(e.to_string()))
    }

    /// The epoch counter if it is a number, else 0 (a damaged counter starts over, as the
    /// directory store's does).
    async fn readable_epoch(&self) -> Result<i64, StoreError> {
        let raw = self.leases().find_one(doc! {"_id": &self.key}).await.map_err(|e| self.error(e))?;
        Ok(raw.and_then(|d| d.get_i64("epoch").ok()).unwrap_or(0))
    }

    /// How many records of `run` are committed.
    async fn head(&self, run: &str) -> Result<i64, StoreError> {
        let raw = self.leases().find_one(doc! {"_id": &self.key}).await.map_err(|e| self.error(e))?;
        let field = head_field(run);
        let hex = field.trim_start_matches("heads.");
        Ok(raw.and_then(|d| d.get_document("heads").ok()?.get_i64(hex).ok()).unwrap_or(0))
    }

    async fn create_run(&self, run: String, plan: Value) -> Result<(), StoreError> {
        let document = doc! {"_id": self.run_key(&run), "key": &self.key, "run": &run, "plan": plan.to_string()};
        self.runs().insert_one(document).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn latest_run(&self) -> Result<Option<String>, StoreError> {
        let found = self.runs().find_one(doc! {"key": &self.key}).sort(doc! {"run": -1}).await;
        Ok(found.map_err(|e| self.error(e))?.and_then(|d| d.get_str("run").ok().map(str::to_owned)))
    }

    async fn plan_of(&self, run: String) -> Result<Value, StoreError> {
        let found = self.runs().find_one(doc! {"_id": self.run_key(&run)}).await.map_err(|e| self.error(e))?;
        let text = found.as_ref().and_then(|d| d.get_str("plan").ok());
        let text = text.ok_or_else(|| self.backend(&format!("run {run} has no plan")))?;
        serde_json::from_str(text).map_err(|e| self.backend(&format!("the plan of run {run} is corrupt ({e})")))
    }

    /// The committed records of `run`: positions 1 to the head, each present and the
    /// record of its position.
    async fn load(&self, run: String) -> Result<Vec<Record>, StoreError> {
        let head = self.head(&run).await?;
        if head == 0 {
            return Err(StoreError::EmptyLog {
                path: PathBuf::from(format!("{} events/{}", self.location, self.run_key(&run))),
            });
        }
        let filter = doc! {"_id.r": self.run_key(&run), "_id.s": {"$lte": head}};
        let cursor = self.events().find(filter).sort(doc! {"_id.s": 1}).await.map_err(|e| self.error(e))?;
        let documents: Vec<Document> = cursor.try_collect().await.map_err(|e| self.error(e))?;
        let mut records = Vec::with_capacity(documents.len());
        for (index, document) in documents.iter().enumerate() {
            let expected = index as u64 + 1;
            let record = document.get_str("record").ok().and_then(|t| serde_json::from_str::<Record>(t).ok());
            match record {
                Some(record) if record.seq == expected => records.push(record),
                _ => return Err(self.corrupt(&run, expected)),
            }
        }
        if records.len() as i64 != head {
            return Err(self.corrupt(&run, records.len() as u64 + 1));
        }
        Ok(records)
    }

    fn corrupt(&self, run: &str, seq: u64) -> StoreError {
        self.backend(&format!(
            "record {seq} of run {run} is missing or corrupt; records 1 to {} are intact; nothing was changed",
            seq - 1
        ))
    }

    async fn repair(&self, run: String, lease: Lease) -> Result<u64, StoreError> {
        if self.leases().find_one(self.held_by(&lease)).await.map_err(|e| self.error(e))?.is_none() {
            return Err(self.fenced(&lease).await);
        }
        let head = self.head(&run).await?;
        let filter = doc! {"_id.r": self.run_key(&run), "_id.s": {"$gt": head}};
        let deleted = self.events().delete_many(filter).await.map_err(|e| self.error(e))?;
        Ok(deleted.deleted_count)
    }

    /// Writes the record at its position (over an uncommitted one of an epoch not greater
    /// than this lease's), then commits it on the lease document.
    async fn append(&self, run: String, lease: Lease, record: Record) -> Result<(), StoreError> {
        let text = serde_json::to_string(&record).map_err(|e| self.backend(&e.to_string()))?;
        let id = doc! {"r": self.run_key(&run), "s": int(record.seq)};
        let document = doc! {"_id": id.clone(), "epoch": int(lease.epoch), "record": text};
        match self.events().insert_one(document.clone()).await {
            Ok(_) => {}
            Err(error) if duplicate(&error) => {
                let filter = doc! {"_id": id, "epoch": {"$lte": int(lease.epoch)}};
                let replaced = self.events().replace_one(filter, document).await.map_err(|e| self.error(e))?;
                if replaced.matched_count == 0 {
                    return Err(self.fenced(&lease).await);
                }
            }
            Err(error) => return Err(self.error(error)),
        }
        self.commit(&run, &lease, record.seq).await
    }

    /// Moves the run's head from `seq - 1` to `seq`, only while the lock is `lease`.
    async fn commit(&self, run: &str, lease: &Lease, seq: u64) -> Result<(), StoreError> {
        let field = head_field(run);
        let mut filter = self.held_by(lease);
        let before = if seq <= 1 {
            doc! {"$exists": false}
        } else {
            doc! {"$eq": int(seq - 1)}
        };
        filter.insert(field.clone(), before);
        let update = doc! {"$set": {field: int(seq)}};
        let result = self.leases().update_one(filter, update).await.map_err(|e| self.error(e))?;
        if result.matched_count == 1 {
            return Ok(());
        }
        match self.fenced(lease).await {
            StoreError::Fenced { current, .. } if current == format!("{} (epoch {})", lease.id, lease.epoch) => {
                let head = self.head(run).await?;
                Err(self.backend(&format!("position {seq} of run {run} is taken: the log holds {head} records")))
            }
            error => Err(error),
        }
    }
}

/// Whether `error` is a duplicate key (code 11000).
fn duplicate(error: &mongodb::error::Error) -> bool {
    matches!(
        error.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
    )
}

impl Store for MongoStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn lock(&self, request: &LockRequest) -> Result<Acquired, StoreError> {
        let request = request.clone();
        self.call(|inner| async move { inner.lock(request).await })
    }

    fn heartbeat(&self, lease: &Lease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.call(|inner| async move { inner.heartbeat(lease).await })
    }

    fn unlock(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.call(|inner| async move { inner.unlock(lease).await })
    }

    fn current_lock(&self) -> Result<Option<LockRecord>, StoreError> {
        self.call(|inner| async move { Ok(inner.read_lease().await?.and_then(|found| found.lock)) })
    }

    fn break_lock(&self, target: &BreakTarget) -> Result<Option<LockRecord>, StoreError> {
        let target = target.clone();
        self.call(|inner| async move { inner.break_lock(target).await })
    }

    fn create_run(&self, run: &str, plan: &Value) -> Result<(), StoreError> {
        let (run, plan) = (run.to_owned(), plan.clone());
        self.call(|inner| async move { inner.create_run(run, plan).await })
    }

    fn latest_run(&self) -> Result<Option<String>, StoreError> {
        self.call(|inner| async move { inner.latest_run().await })
    }

    fn plan_of(&self, run: &str) -> Result<Value, StoreError> {
        let run = run.to_owned();
        self.call(|inner| async move { inner.plan_of(run).await })
    }

    fn load(&self, run: &str) -> Result<Vec<Record>, StoreError> {
        let run = run.to_owned();
        self.call(|inner| async move { inner.load(run).await })
    }

    fn repair(&self, run: &str, lease: &Lease) -> Result<u64, StoreError> {
        let (run, lease) = (run.to_owned(), lease.clone());
        self.call(|inner| async move { inner.repair(run, lease).await })
    }

    fn append(&self, run: &str, lease: &Lease, record: &Record) -> Result<(), StoreError> {
        let (run, lease, record) = (run.to_owned(), lease.clone(), record.clone());
        self.call(|inner| async move { inner.append(run, lease, record).await })
    }
}
