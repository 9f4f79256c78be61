//! `mongo.copy`: the initial copy, in parallel `_id` ranges, resumable per range.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use handoff_executor::{Context, StepError};
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};
use mongodb::error::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::partition::{self, Range};
use super::{Clients, Coll, failed};
use crate::Copy;

/// Code of a duplicate-key error: the document is already there (an earlier attempt
/// copied it, or the sync wrote it); the copy is idempotent on overlap.
const DUPLICATE_KEY: i32 = 11000;

/// How often a range's position is checkpointed: work redone after a kill is at most
/// about this much writing per range.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// What a copy checkpoints: its plan and the ranges that are done.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    ranges: Vec<Range>,
    done: BTreeSet<usize>,
    /// Per unfinished range: the `_id` up to which (in `_id` order) everything is written.
    #[serde(default)]
    positions: std::collections::BTreeMap<usize, Value>,
    copied: u64,
    /// Where a later `mongo.sync` starts: the source's change stream position taken
    /// before the first document was read.
    change_stream_start: Option<Value>,
}

/// What `mongo.copy` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct CopyOutput {
    /// `resource.collection` copied from.
    pub source: String,
    /// `resource.collection` copied to.
    pub target: String,
    /// Documents written in all (by this and earlier attempts).
    pub documents_copied: u64,
    /// `_id` ranges the copy was split into.
    pub ranges: usize,
    /// Ranges a resumed copy found done already.
    pub ranges_resumed_as_done: usize,
    /// Ranges a resumed copy continued inside.
    pub ranges_resumed_inside: usize,
    /// Secondary indexes copied.
    pub indexes: usize,
    /// Collection options copied (`collation`, `validator`, `validationLevel`,
    /// `validationAction`: those the source has).
    pub collection_options: Vec<String>,
    /// The source's change stream position before the first read (where a sync starts).
    pub change_stream_start: Option<Value>,
    /// BSON types of the `_id`s met.
    pub id_types: BTreeSet<String>,
    /// Seconds this attempt took.
    pub seconds: f64,
}

/// Inserts a batch unordered; documents already present are not errors.
pub(crate) async fn write(target: &Coll, batch: Vec<RawDocumentBuf>) -> Result<u64, StepError> {
    let size = batch.len() as u64;
    match target.raw.insert_many(batch).ordered(false).await {
        Ok(_) => Ok(size),
        Err(error) => match *error.kind {
            ErrorKind::InsertMany(ref failure)
                if failure.write_concern_error.is_none()
                    && failure.write_errors.iter().flatten().all(|e| e.code == DUPLICATE_KEY) =>
            {
                Ok(size - failure.write_errors.as_ref().map_or(0, |e| e.len() as u64))
            }
            _ => Err(failed(&format!("writing to {}", target.label), error)),
        },
    }
}

/// The source's change stream position now, recorded in the target database, so a sync
/// started later misses nothing written during the copy.
async fn change_stream_start(source: &Coll, target: &Coll) -> Result<Option<Value>, StepError> {
    let stream =
        source.raw.watch().await.map_err(|e| failed(&format!("opening the change stream of {}", source.label), e))?;
    let Some(token) = stream.resume_token() else { return Ok(None) };
    super::sync::mark_copy_start(source, target, &token).await?;
    Ok(serde_json::to_value(token).ok())
}

async fn copy_indexes(source: &Coll, target: &Coll) -> Result<usize, StepError> {
    let what = || format!("copying the indexes of {} to {}", source.label, target.label);
    let indexes: Vec<IndexModel> = source
        .raw
        .list_indexes()
        .await
        .map_err(|e| failed(&what(), e))?
        .try_collect()
        .await
        .map_err(|e| failed(&what(), e))?;
    let models: Vec<IndexModel> =
        indexes.into_iter().filter(|m| m.options.as_ref().and_then(|o| o.name.as_deref()) != Some("_id_")).collect();
    let count = models.len();
    if count > 0 {
        target.raw.create_indexes(models).await.map_err(|e| failed(&what(), e))?;
    }
    Ok(count)
}

/// The collection options a copy carries over: the collation when the target is created
/// (before the first document), the validation rules after the last (the source's
/// `moderate` level or `warn` action may hold documents its validator refuses).
const CREATE_OPTIONS: [&str; 1] = ["collation"];
/// See [`CREATE_OPTIONS`].
const VALIDATION_OPTIONS: [&str; 3] = ["validator", "validationLevel", "validationAction"];

/// The database a collection lives in.
fn database(coll: &Coll) -> mongodb::Database {
    coll.raw.client().database(coll.raw.namespace().db.as_str())
}

/// A collection's options as `listCollections` reports them; `None` when it does not exist.
async fn options_of(coll: &Coll) -> Result<Option<Document>, StepError> {
    let name = coll.raw.namespace().coll;
    let command = doc! { "listCollections": 1, "filter": { "name": &name } };
    let reply = database(coll)
        .run_command(command)
        .await
        .map_err(|e| failed(&format!("reading the options of {}", coll.label), e))?;
    let first = reply.get_document("cursor").and_then(|c| c.get_array("firstBatch")).ok().and_then(|b| b.first());
    Ok(first.and_then(Bson::as_document).map(|spec| spec.get_document("options").cloned().unwrap_or_default()))
}

/// The options named in `keys` that `options` has, in the order of `keys`.
fn pick(options: &Document, keys: &[&str]) -> Document {
    keys.iter().filter_map(|&key| Some((key.to_owned(), options.get(key)?.clone()))).collect()
}

/// Creates the target with the source's collation before anything is written to it; a
/// target that exists already must have the same collation (it cannot be changed).
/// Returns the options carried over.
async fn create_like(source: &Coll, target: &Coll) -> Result<(Document, Vec<String>), StepError> {
    let options = options_of(source).await?.unwrap_or_default();
    let wanted = pick(&options, &CREATE_OPTIONS);
    match options_of(target).await? {
        None => {
            let mut create = doc! { "create": target.raw.namespace().coll };
            create.extend(wanted.clone());
            database(target).run_command(create).await.map_err(|e| failed(&format!("creating {}", target.label), e))?;
        }
        Some(existing) if existing.get("collation") != wanted.get("collation") => {
            return Err(StepError::Refused(format!(
                "{} exists with another collation than {} ({} there, {} here): drop it, or create it with the source's collation",
                target.label,
                source.label,
                existing.get("collation").map_or("none".to_owned(), ToString::to_string),
                wanted.get("collation").map_or("none".to_owned(), ToString::to_string),
            )));
        }
        Some(_) => {}
    }
    Ok((options, wanted.keys().cloned().collect()))
}

/// Gives the target the source's validation rules (`collMod`), after the copy.
async fn copy_validation(source_options: &Document, target: &Coll) -> Result<Vec<String>, StepError> {
    let rules = pick(source_options, &VALIDATION_OPTIONS);
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let mut command = doc! { "collMod": target.raw.namespace().coll };
    command.extend(rules.clone());
    database(target)
        .run_command(command)
        .await
        .map_err(|e| failed(&format!("setting the validation rules of {}", target.label), e))?;
    Ok(rules.keys().cloned().collect())
}

/// What the ranges of one copy share.
struct Shared<'a> {
    source: &'a Coll,
    target: &'a Coll,
    cx: &'a Context,
    params: &'a Copy,
    copied: &'a AtomicU64,
    state: &'a Mutex<Progress>,
    started: Instant,
    total: u64,
    batch_size: usize,
    parallelism: u32,
}

/// A batch with its place in the range.
struct Batch {
    seq: u64,
    documents: Vec<RawDocumentBuf>,
    /// `_id` of its last document (extended JSON).
    last: Value,
}

/// Reads a range in `_id` order, after `after` when resuming, into `batches`.
async fn read_range(
    range: &Range,
    after: Option<&Value>,
    shared: &Shared<'_>,
    batches: tokio::sync::mpsc::Sender<Batch>,
) -> Result<(), StepError> {
    let what = || format!("reading {}", shared.source.label);
    let mut cursor = shared
        .source
        .raw
        .find(range.filter(after)?)
        .sort(mongodb::bson::doc! { "_id": 1 })
        .batch_size(shared.batch_size as u32)
        .await
        .map_err(|e| failed(&what(), e))?;
    let mut documents = Vec::with_capacity(shared.batch_size);
    let mut seq = 0;
    loop {
        let next = tokio::select! {
            next = cursor.try_next() => next.map_err(|e| failed(&what(), e))?,
            () = shared.cx.cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let end = next.is_none();
        documents.extend(next);
        if (documents.len() >= shared.batch_size || end) && !documents.is_empty() {
            let last = documents.last().map_or(Value::Null, id_json);
            let batch = Batch { seq, documents: std::mem::take(&mut documents), last };
            seq += 1;
            if batches.send(batch).await.is_err() {
                return Ok(());
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// The `_id` of a raw document as extended JSON.
fn id_json(document: &RawDocumentBuf) -> Value {
    document
        .get("_id")
        .ok()
        .flatten()
        .and_then(|id| mongodb::bson::Bson::try_from(id.to_raw_bson()).ok())
        .map_or(Value::Null, |id| super::to_json(&id))
}

/// Batches written out of order, and the prefix of the range written in full.
#[derive(Default)]
struct Written {
    next: u64,
    pending: std::collections::BTreeMap<u64, Value>,
    last_saved: Option<Instant>,
}

/// Writes one batch, advances the range's position, reports progress and checkpoints
/// (at most every [`CHECKPOINT_EVERY`]).
async fn write_batch(
    index: usize,
    batch: Batch,
    written: &Mutex<Written>,
    shared: &Shared<'_>,
) -> Result<(), StepError> {
    let count = batch.documents.len() as u64;
    write(shared.target, batch.documents).await?;
    let now = shared.copied.fetch_add(count, Ordering::Relaxed) + count;
    if let Some(limit) = shared.params.max_docs_per_second {
        // Each of the parallel writers takes its share of the budget.
        let share = limit as f64 / f64::from(shared.parallelism);
        shared.cx.clock.sleep(Duration::from_secs_f64(count as f64 / share)).await;
    }
    let snapshot = {
        let mut written = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        written.pending.insert(batch.seq, batch.last);
        let mut position = None;
        loop {
            let next = written.next;
            let Some(last) = written.pending.remove(&next) else { break };
            written.next += 1;
            position = Some(last);
        }
        let due = written.last_saved.is_none_or(|at| at.elapsed() >= CHECKPOINT_EVERY);
        match position.filter(|_| due) {
            Some(position) => {
                written.last_saved = Some(Instant::now());
                let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                state.positions.insert(index, position);
                state.copied = now;
                Some(serde_json::to_value(&*state).unwrap_or_default())
            }
            None => None,
        }
    };
    if let Some(snapshot) = snapshot {
        shared.cx.save_checkpoint(&snapshot).map_err(|e| failed("saving copy progress", e))?;
        let rate = now as f64 / shared.started.elapsed().as_secs_f64().max(1e-3);
        // Documents inserted since the ranges were counted make the total grow, never the
        // progress pass it.
        let total = shared.total.max(now);
        let eta = total.saturating_sub(now) as f64 / rate.max(1.0);
        shared.cx.progress(
            &format!("{now}/{total} documents, {rate:.0}/s, about {eta:.0}s left"),
            Some(now as f64 / total.max(1) as f64),
        );
    }
    Ok(())
}

/// Copies one range: read in `_id` order while `parallelism` earlier batches are written;
/// its position is checkpointed as batches complete, and the range as done at the end.
async fn copy_range(index: usize, range: Range, shared: &Shared<'_>) -> Result<(), StepError> {
    let after = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).positions.get(&index).cloned();
    let (send, receive) = tokio::sync::mpsc::channel(shared.parallelism as usize);
    let batches =
        futures_util::stream::unfold(receive, |mut receive| async move { receive.recv().await.map(|b| (b, receive)) });
    let written = Mutex::new(Written::default());
    let writes = batches
        .map(|batch| write_batch(index, batch, &written, shared))
        .buffer_unordered(shared.parallelism as usize)
        .try_collect::<()>();
    let (read, wrote) = tokio::join!(read_range(&range, after.as_ref(), shared, send), writes);
    read.and(wrote)?;
    let snapshot = {
        let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.done.insert(index);
        state.positions.remove(&index);
        state.copied = shared.copied.load(Ordering::Relaxed);
        serde_json::to_value(&*state).unwrap_or_default()
    };
    shared.cx.save_checkpoint(&snapshot).map_err(|e| failed("saving copy progress", e))
}

/// A fresh copy's plan: the change stream position first, then the ranges; checkpointed.
async fn plan(params: &Copy, source: &Coll, target: &Coll, cx: &Context) -> Result<Progress, StepError> {
    let change_stream_start = change_stream_start(source, target).await?;
    let min_size = params.range_size.unwrap_or(partition::MIN_RANGE_DOCUMENTS);
    let parallelism = params.parallelism.unwrap_or(4).max(1);
    let ranges = partition::plan(source, parallelism, min_size, true).await?;
    let progress = Progress { ranges, change_stream_start, ..Progress::default() };
    cx.save_checkpoint(&serde_json::to_value(&progress).unwrap_or_default())
        .map_err(|e| failed("saving the copy plan", e))?;
    Ok(progress)
}

/// Runs `mongo.copy`.
pub(crate) async fn run(params: &Copy, cx: &Context, clients: &Clients) -> Result<CopyOutput, StepError> {
    let source = clients.resolve(cx, &params.source, &params.target).await?;
    let target = clients.resolve(cx, &params.target, &params.source).await?;
    let parallelism = params.parallelism.unwrap_or(4).max(1);
    let batch_size = params.batch_size.unwrap_or(1000).max(1) as usize;
    let (source_options, mut collection_options) =
        if params.copy_indexes { create_like(&source, &target).await? } else { Default::default() };
    let resumed = cx.checkpoint.as_ref().and_then(|c| serde_json::from_value::<Progress>(c.clone()).ok());
    let progress = match resumed {
        Some(progress) => progress,
        None => plan(params, &source, &target, cx).await?,
    };
    let total: u64 = progress.ranges.iter().map(|r| r.documents).sum();
    let skipped = progress.done.len();
    let resumed_inside = progress.positions.len();
    let copied = AtomicU64::new(progress.copied);
    let state = Mutex::new(progress);
    let started = Instant::now();
    let pending: Vec<(usize, Range)> = {
        let state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.ranges.iter().cloned().enumerate().filter(|(i, _)| !state.done.contains(i)).collect()
    };
    let shared = Shared {
        source: &source,
        target: &target,
        cx,
        params,
        copied: &copied,
        state: &state,
        started,
        total,
        batch_size,
        parallelism,
    };
    let shared = &shared;
    futures_util::stream::iter(pending)
        .map(|(index, range)| copy_range(index, range, shared))
        .buffer_unordered(parallelism as usize)
        .try_collect::<()>()
        .await?;
    // Secondary indexes come last: a unique one built first would turn a clash into a
    // duplicate-key error that the copy takes for "already copied", and skip a document.
    let indexes = if params.copy_indexes { copy_indexes(&source, &target).await? } else { 0 };
    if params.copy_indexes {
        collection_options.extend(copy_validation(&source_options, &target).await?);
    }
    let copied = copied.load(Ordering::Relaxed);
    cx.emit("documents_copied", copied as f64);
    let state = state.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(CopyOutput {
        source: source.label,
        target: target.label,
        documents_copied: copied,
        ranges: state.ranges.len(),
        ranges_resumed_as_done: skipped,
        ranges_resumed_inside: resumed_inside,
        indexes,
        collection_options,
        change_stream_start: state.change_stream_start,
        id_types: state.ranges.iter().filter(|r| !r.bson_type.is_empty()).map(|r| r.bson_type.clone()).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
