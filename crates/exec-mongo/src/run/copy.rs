//! `mongo.copy`: the initial copy, in parallel `_id` ranges, resumable per range.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use handoff_executor::{Context, StepError};
use mongodb::IndexModel;
use mongodb::bson::RawDocumentBuf;
use mongodb::error::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::partition::{self, Range};
use super::{Clients, Coll, failed};
use crate::Copy;

/// Code of a duplicate-key error: the document is already there (an earlier attempt
/// copied it, or the sync wrote it); the copy is idempotent on overlap.
const DUPLICATE_KEY: i32 = 11000;

/// What a copy checkpoints: its plan and the ranges that are done.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    ranges: Vec<Range>,
    done: BTreeSet<usize>,
    copied: u64,
    /// Where a later `mongo.sync` starts: the source's change stream position taken
    /// before the first document was read.
    change_stream_start: Option<Value>,
}

/// Inserts a batch unordered; documents already present are not errors.
async fn write(target: &Coll, batch: Vec<RawDocumentBuf>) -> Result<u64, StepError> {
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

/// Runs `mongo.copy`.
pub(crate) async fn run(params: &Copy, cx: &Context, clients: &Clients) -> Result<Value, StepError> {
    let source = clients.resolve(cx, &params.source, &params.target).await?;
    let target = clients.resolve(cx, &params.target, &params.source).await?;
    let parallelism = params.parallelism.unwrap_or(4).max(1);
    let batch_size = params.batch_size.unwrap_or(1000).max(1) as usize;
    let resumed = cx.checkpoint.as_ref().and_then(|c| serde_json::from_value::<Progress>(c.clone()).ok());
    let progress = match resumed {
        Some(progress) => progress,
        None => {
            let change_stream_start = change_stream_start(&source, &target).await?;
            let ranges = partition::plan(&source, parallelism * 4).await?;
            let progress = Progress { ranges, change_stream_start, ..Progress::default() };
            cx.save_checkpoint(&serde_json::to_value(&progress).unwrap_or_default())
                .map_err(|e| failed("saving the copy plan", e))?;
            progress
        }
    };
    let indexes = if params.copy_indexes { copy_indexes(&source, &target).await? } else { 0 };
    let total: u64 = progress.ranges.iter().map(|r| r.documents).sum();
    let skipped = progress.done.len();
    let copied = AtomicU64::new(progress.copied);
    let state = Mutex::new(progress);
    let started = Instant::now();
    let last_report = Mutex::new(Instant::now());
    let pending: Vec<(usize, Range)> = {
        let state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.ranges.iter().cloned().enumerate().filter(|(i, _)| !state.done.contains(i)).collect()
    };
    let copy_range = |(index, range): (usize, Range)| {
        let (source, target, copied, state, last_report) = (&source, &target, &copied, &state, &last_report);
        async move {
            let what = || format!("reading {}", source.label);
            let mut cursor =
                source.raw.find(range.filter()?).batch_size(batch_size as u32).await.map_err(|e| failed(&what(), e))?;
            let mut batch = Vec::with_capacity(batch_size);
            loop {
                let next = tokio::select! {
                    next = cursor.try_next() => next.map_err(|e| failed(&what(), e))?,
                    () = cx.cancel.cancelled() => return Err(StepError::Cancelled),
                };
                let end = next.is_none();
                if let Some(document) = next {
                    batch.push(document);
                }
                if batch.len() >= batch_size || (end && !batch.is_empty()) {
                    let written = batch.len() as u64;
                    write(target, std::mem::take(&mut batch)).await?;
                    let now = copied.fetch_add(written, Ordering::Relaxed) + written;
                    if let Some(limit) = params.max_docs_per_second {
                        // Each of the parallel readers takes its share of the budget.
                        let share = limit as f64 / f64::from(parallelism);
                        cx.clock.sleep(Duration::from_secs_f64(written as f64 / share)).await;
                    }
                    let mut last = last_report.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if last.elapsed() >= Duration::from_secs(1) {
                        *last = Instant::now();
                        let rate = now as f64 / started.elapsed().as_secs_f64().max(1e-3);
                        let eta = total.saturating_sub(now) as f64 / rate.max(1.0);
                        cx.progress(
                            &format!("{now}/{total} documents, {rate:.0}/s, about {eta:.0}s left"),
                            Some(now as f64 / total.max(1) as f64),
                        );
                    }
                }
                if end {
                    break;
                }
            }
            let snapshot = {
                let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                state.done.insert(index);
                state.copied = copied.load(Ordering::Relaxed);
                serde_json::to_value(&*state).unwrap_or_default()
            };
            cx.save_checkpoint(&snapshot).map_err(|e| failed("saving copy progress", e))?;
            Ok::<(), StepError>(())
        }
    };
    futures_util::stream::iter(pending)
        .map(copy_range)
        .buffer_unordered(parallelism as usize)
        .try_collect::<()>()
        .await?;
    let copied = copied.load(Ordering::Relaxed);
    cx.emit("documents_copied", copied as f64);
    let state = state.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(json!({
        "source": source.label,
        "target": target.label,
        "documents_copied": copied,
        "ranges": state.ranges.len(),
        "ranges_resumed_as_done": skipped,
        "indexes": indexes,
        "change_stream_start": state.change_stream_start,
        "id_types": state.ranges.iter().map(|r| r.bson_type.clone()).collect::<BTreeSet<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
