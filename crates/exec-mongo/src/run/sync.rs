//! `mongo.sync` and `mongo.reverse_sync`: apply a collection's change stream to another
//! collection continuously, in the background, until `mongo.stop_sync`.
//!
//! The sync starts from its checkpoint (a resumed run), else from the position an earlier
//! `mongo.copy` of the same source recorded in the target database (so nothing written
//! during the copy is missed), else from now. A sync a rollback starts never goes back to
//! a copy's position: recorded weeks earlier, it is gone from the oplog by then (or weeks of
//! changes would replay inside the rollback's budget); it starts now, and a
//! `mongo.reconcile` (with `delete_extra`) after it repairs what changed before. Every event is applied idempotently — an
//! insert, update or replace becomes a replace-with-upsert of the document's current
//! version, a delete a delete — so replaying events already applied is harmless. A
//! document the target refuses as a replacement (a top-level `$`-prefixed field) is written
//! by a pipeline update instead; a change the target refuses outright (a validator, say)
//! is reported when it happens (progress and `sync_refused_documents`), counted with its
//! `_id` for `mongo.stop_sync` and a reconcile, and the sync keeps going.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use handoff_executor::{Context, HostedStop, StepError};
use mongodb::bson::{Document, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::error::ErrorKind;
use mongodb::options::FullDocumentType;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use super::{Clients, Coll, failed, readable};
use crate::{StopSync, Sync};

/// Collection (in the target database) where `mongo.copy` leaves its change stream start.
pub(crate) const MARKERS: &str = "_handoff_sync";

/// Server error codes meaning the change stream's history is gone.
const HISTORY_LOST: [i32; 2] = [286, 280];

/// Lag reported when a sync has failed, so any lag criterion fails.
const FAILED_LAG: f64 = 1.0e9;

/// Example `_id`s of refused changes kept for `mongo.stop_sync`.
const REFUSED_EXAMPLES: usize = 10;

/// Counters of one sync.
#[derive(Debug, Default, Clone, Serialize)]
struct Stats {
    applied: u64,
    upserted: u64,
    deleted: u64,
    /// Changes the target refused (each reported when it happened).
    refused: u64,
    /// `_id`s of the first refused changes (canonical extended JSON).
    refused_ids: Vec<serde_json::Value>,
}

/// What starting a sync did.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncOutput {
    /// `resource.collection` whose changes are applied.
    pub source: String,
    /// `resource.collection` they are applied to.
    pub target: String,
    /// Where the change stream started: `its checkpoint`, `where the copy started`, or
    /// `now` (always, unless from its checkpoint, when a rollback started it).
    pub from: String,
    /// The sync goes on in the background.
    pub background: bool,
}

/// What stopping a sync did.
#[derive(Debug, Serialize, Deserialize)]
pub struct StopOutput {
    /// The sync was running in this process (else there was nothing to stop).
    pub was_running: bool,
    /// Every change made before the stop was applied first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
    /// Changes applied in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// Of which upserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upserted: Option<u64>,
    /// Of which deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// Changes the target refused (their documents differ until a `mongo.reconcile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// `_id`s of the first refused changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_examples: Vec<serde_json::Value>,
}

struct Running {
    /// `Some(drain)` asks the sync to stop (after catching up when `drain`).
    stop: watch::Sender<Option<bool>>,
    task: tokio::task::JoinHandle<Result<Stats, StepError>>,
}

/// The syncs running in this process, by step id.
#[derive(Default)]
pub(crate) struct Syncs(std::sync::Mutex<HashMap<String, Running>>);

/// Records where a copy's change stream started, for the sync that follows it.
pub(crate) async fn mark_copy_start(source: &Coll, target: &Coll, token: &ResumeToken) -> Result<(), StepError> {
    let markers = target.raw.clone_with_type::<Document>();
    let markers = markers.client().database(markers.namespace().db.as_str()).collection::<Document>(MARKERS);
    let token = mongodb::bson::to_bson(token).map_err(|e| failed("encoding the change stream position", e))?;
    markers
        .replace_one(doc! { "_id": &source.label }, doc! { "_id": &source.label, "change_stream_start": token })
        .upsert(true)
        .await
        .map_err(|e| failed(&format!("recording the copy's start in {}", target.label), e))?;
    Ok(())
}

async fn copy_start(source: &Coll, target: &Coll) -> Option<ResumeToken> {
    let markers = target.raw.clone_with_type::<Document>();
    let markers = markers.client().database(markers.namespace().db.as_str()).collection::<Document>(MARKERS);
    let marker = markers.find_one(doc! { "_id": &source.label }).await.ok().flatten()?;
    mongodb::bson::from_bson(marker.get("change_stream_start")?.clone()).ok()
}

fn lost_history(error: &mongodb::error::Error) -> bool {
    matches!(&*error.kind, ErrorKind::Command(e) if HISTORY_LOST.contains(&e.code))
}

fn history_message(source: &Coll) -> String {
    format!(
        "the change stream history of {} is gone (the oplog moved past the sync's position): run `mongo.copy` again, then start the sync anew (a new run, or a new step)",
        source.label
    )
}

/// A change the target refused for its document (a write error), as opposed to a failure of
/// the connection or the server.
fn refused(error: &mongodb::error::Error) -> bool {
    matches!(&*error.kind, ErrorKind::Write(mongodb::error::WriteFailure::WriteError(_)))
}

/// Applies one event to the target. A change the target refuses is reported, counted and
/// skipped; only a failure of the connection or the server ends the sync.
async fn apply(
    event: ChangeStreamEvent<Document>,
    target: &mongodb::Collection<Document>,
    cx: &Context,
    label: &str,
    stats: &mut Stats,
) -> Result<(), StepError> {
    let id = event.document_key.as_ref().and_then(|k| k.get("_id").cloned());
    let written = match (event.operation_type.clone(), &id) {
        (OperationType::Insert | OperationType::Update | OperationType::Replace, Some(id)) => {
            match event.full_document {
                Some(document) => super::upsert(target, id, document).await.map(|()| stats.upserted += 1),
                // Updated, then deleted before the lookup: the delete event follows.
                None => target.delete_one(doc! { "_id": id }).await.map(|_| stats.deleted += 1),
            }
        }
        (OperationType::Delete, Some(id)) => target.delete_one(doc! { "_id": id }).await.map(|_| stats.deleted += 1),
        (OperationType::Drop | OperationType::DropDatabase | OperationType::Rename | OperationType::Invalidate, _) => {
            return Err(StepError::Failed(format!(
                "the source collection was dropped or renamed ({:?}); the sync into {label} stopped",
                event.operation_type
            )));
        }
        _ => return Ok(()),
    };
    match written {
        Ok(()) => stats.applied += 1,
        Err(error) if refused(&error) => {
            let id = id.as_ref().map(super::to_json).unwrap_or_default();
            cx.progress(
                &format!("{label} refused the change of _id {id}, left for a reconcile: {}", readable(&error)),
                None,
            );
            stats.refused += 1;
            if stats.refused_ids.len() < REFUSED_EXAMPLES {
                stats.refused_ids.push(id);
            }
            cx.emit("sync_refused_documents", stats.refused as f64);
        }
        Err(error) => return Err(failed(&format!("applying a change to {label}"), error)),
    }
    Ok(())
}

/// When an event happened on the server (ms since the epoch).
fn event_ms(event: &ChangeStreamEvent<Document>) -> Option<i64> {
    event.wall_time.map(|t| t.timestamp_millis()).or_else(|| event.cluster_time.map(|t| i64::from(t.time) * 1000))
}

/// Seconds between an event and now.
fn lag_of(event: &ChangeStreamEvent<Document>) -> Option<f64> {
    let now = mongodb::bson::DateTime::now().timestamp_millis();
    Some(((now - event_ms(event)?) as f64 / 1000.0).max(0.0))
}

/// Empty reads in a row after which a drain ends even though the stream's position did
/// not reach the ask's cluster time (a server whose clock moves without writes).
const DRAIN_EMPTY_READS: u32 = 3;

/// A drained stop in progress.
struct Drain {
    /// The source's cluster time when the stop was asked: every change acknowledged before
    /// the ask is at or before it. `None` when the server did not say.
    to: Option<Timestamp>,
    /// Empty reads since the ask.
    empty_reads: u32,
}

impl Drain {
    /// Whether the sync has applied everything written before the ask, given the last read
    /// (`caught_up`: it was empty) and the stream's position after it. An empty read alone
    /// does not prove it: a server may acknowledge a write a moment before its change
    /// stream shows it (a drain cut 3 deletes short that way), so the position must reach
    /// the ask's cluster time, on a busy source (an event after it) as on an idle one (the
    /// post-batch resume token). Only when the position is unknown, or stays short for
    /// [`DRAIN_EMPTY_READS`] empty reads, does an empty read end it.
    fn done(&mut self, caught_up: bool, position: Option<Timestamp>) -> bool {
        if let (Some(to), Some(at)) = (self.to, position)
            && at >= to
        {
            return true;
        }
        if !caught_up {
            return false;
        }
        self.empty_reads += 1;
        self.to.is_none() || position.is_none() || self.empty_reads >= DRAIN_EMPTY_READS
    }
}

/// The source server's cluster time now, from the reply to a `ping` (`None` when it does
/// not answer within 5 s: the stream's own reads then tell whether the source is gone).
async fn cluster_time(source: &Coll) -> Option<Timestamp> {
    let db = source.raw.client().database(source.raw.namespace().db.as_str());
    let reply = tokio::time::timeout(Duration::from_secs(5), db.run_command(doc! { "ping": 1 })).await.ok()?.ok()?;
    reply
        .get_timestamp("operationTime")
        .ok()
        .or_else(|| reply.get_document("$clusterTime").ok()?.get_timestamp("clusterTime").ok())
}

/// The cluster time a resume token stands for. mongod's tokens are KeyString bytes in hex
/// that start with the timestamp (type byte 130, then seconds and increment, big-endian);
/// SecantusDB's are a BSON document in hex with the timestamp in `t`.
fn token_time(token: &ResumeToken) -> Option<Timestamp> {
    let token = mongodb::bson::to_document(token).ok()?;
    let hex = token.get_str("_data").ok()?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    if let Ok(inner) = Document::from_reader(bytes.as_slice()) {
        return inner.get_timestamp("t").ok();
    }
    match bytes.as_slice() {
        [130, time @ ..] if time.len() >= 8 => Some(Timestamp {
            time: u32::from_be_bytes(time[..4].try_into().ok()?),
            increment: u32::from_be_bytes(time[4..8].try_into().ok()?),
        }),
        _ => None,
    }
}

/// The background loop: apply, checkpoint, report, until stopped.
async fn apply_loop(
    mut stream: ChangeStream<ChangeStreamEvent<Document>>,
    source: Coll,
    target: Coll,
    cx: Context,
    every: Duration,
    mut stop: watch::Receiver<Option<bool>>,
) -> Result<Stats, StepError> {
    let target_docs = target.raw.clone_with_type::<Document>();
    let mut stats = Stats::default();
    let mut lag = 0.0;
    let mut last_report = Instant::now();
    let mut applied_at_report = 0;
    let checkpoint = |stream: &ChangeStream<ChangeStreamEvent<Document>>, stats: &Stats| {
        let token = stream.resume_token().and_then(|t| serde_json::to_value(t).ok());
        cx.save_checkpoint(&json!({ "resume_token": token, "applied": stats.applied }))
    };
    let mut drain: Option<Drain> = None;
    let result = loop {
        let asked = *stop.borrow_and_update();
        if asked == Some(true) && drain.is_none() {
            drain = Some(Drain { to: cluster_time(&source).await, empty_reads: 0 });
        }
        let (caught_up, position) = match stream.next_if_any().await {
            Ok(Some(event)) => {
                lag = lag_of(&event).unwrap_or(lag);
                let position = event.cluster_time;
                if let Err(error) = apply(event, &target_docs, &cx, &target.label, &mut stats).await {
                    break Err(error);
                }
                (false, position)
            }
            Ok(None) => {
                lag = 0.0;
                (true, stream.resume_token().as_ref().and_then(token_time))
            }
            Err(error) if lost_history(&error) => break Err(StepError::Failed(history_message(&source))),
            Err(error) => break Err(failed(&format!("reading the change stream of {}", source.label), error)),
        };
        if last_report.elapsed() >= every {
            let rate = (stats.applied - applied_at_report) as f64 / last_report.elapsed().as_secs_f64();
            (last_report, applied_at_report) = (Instant::now(), stats.applied);
            cx.emit("sync_lag_seconds", lag);
            cx.emit("sync_applied_ops_per_second", rate);
            if let Err(error) = checkpoint(&stream, &stats) {
                break Err(failed("saving the sync position", error));
            }
        }
        let drained = drain.as_mut().is_some_and(|drain| drain.done(caught_up, position));
        match asked {
            Some(false) => break Ok(()),
            Some(true) if drained => break Ok(()),
            _ if cx.cancel.is_cancelled() => break Ok(()),
            _ => {}
        }
    };
    match result {
        Ok(()) => {
            cx.emit("sync_lag_seconds", lag);
            checkpoint(&stream, &stats).map_err(|e| failed("saving the sync position", e))?;
            Ok(stats)
        }
        Err(error) => {
            cx.emit("sync_lag_seconds", FAILED_LAG);
            cx.progress(&format!("sync stopped: {error}"), None);
            Err(error)
        }
    }
}

/// Starts `mongo.sync` (or `mongo.reverse_sync`): opens the change stream, then applies it
/// in the background.
pub(crate) async fn start(
    params: &Sync,
    cx: &Context,
    clients: &Clients,
    syncs: &Syncs,
) -> Result<SyncOutput, StepError> {
    let source = clients.resolve(cx, &params.source, &params.target).await?;
    let target = clients.resolve(cx, &params.target, &params.source).await?;
    let checkpointed = cx
        .checkpoint
        .as_ref()
        .and_then(|c| c.get("resume_token"))
        .and_then(|t| serde_json::from_value::<ResumeToken>(t.clone()).ok());
    let (token, from) = match checkpointed {
        Some(token) => (Some(token), "its checkpoint"),
        None if cx.rolling_back => (None, "now"),
        None => match copy_start(&source, &target).await {
            Some(token) => (Some(token), "where the copy started"),
            None => (None, "now"),
        },
    };
    let stream = source
        .raw
        .clone_with_type::<Document>()
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .resume_after(token)
        .await
        .map_err(|e| {
            if lost_history(&e) {
                StepError::Failed(history_message(&source))
            } else {
                failed(&format!("opening the change stream of {}", source.label), e)
            }
        })?;
    let every =
        params.checkpoint_every.as_ref().map_or(Duration::from_secs(5), |d| d.get()).max(Duration::from_millis(100));
    let (stop, stop_rx) = watch::channel(None);
    let labels = (source.label.clone(), target.label.clone());
    let task = tokio::spawn(apply_loop(stream, source, target, cx.clone(), every, stop_rx));
    let previous = syncs
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(cx.step.clone(), Running { stop, task });
    if let Some(previous) = previous {
        previous.task.abort();
    }
    Ok(SyncOutput { source: labels.0, target: labels.1, from: from.to_owned(), background: true })
}

/// `mongo.stop_sync`: stops a running sync, draining it first when asked.
pub(crate) async fn stop(params: &StopSync, cx: &Context, syncs: &Syncs) -> Result<StopOutput, StepError> {
    let id = params.sync.to_string();
    let running = syncs.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
    let Some(running) = running else { return stop_hosted(params, cx).await };
    let _ = running.stop.send(Some(params.drain));
    let stats = tokio::select! {
        joined = running.task => joined.map_err(|e| StepError::Failed(format!("the sync `{id}` crashed: {e}")))??,
        () = cx.cancel.cancelled() => return Err(StepError::Cancelled),
    };
    Ok(StopOutput {
        was_running: true,
        drained: Some(params.drain),
        applied: Some(stats.applied),
        upserted: Some(stats.upserted),
        deleted: Some(stats.deleted),
        refused: Some(stats.refused),
        refused_examples: stats.refused_ids,
    })
}

/// Stops a sync that a host (a `handoff worker`) runs, by running this same action there;
/// its output is what the host reports. Nothing was running when no host holds it.
async fn stop_hosted(params: &StopSync, cx: &Context) -> Result<StopOutput, StepError> {
    let id = params.sync.to_string();
    let with = serde_json::to_value(params).map_err(|e| failed("encoding the stop request", e))?;
    let stop = HostedStop { uses: "mongo.stop_sync".to_owned(), with };
    let Some(reply) = cx.sink.stop_hosted(&id, &stop) else {
        return Ok(StopOutput {
            was_running: false,
            drained: None,
            applied: None,
            upserted: None,
            deleted: None,
            refused: None,
            refused_examples: Vec::new(),
        });
    };
    let reported = cx.cancellable(reply).await?.map_err(|e| StepError::Failed(format!("the host of `{id}`: {e}")))?;
    serde_json::from_value(reported).map_err(|e| failed(&format!("reading the host's report on `{id}`"), e))
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{Bson, Timestamp, doc};

    use super::super::archive::hex;
    use super::{DRAIN_EMPTY_READS, Drain, token_time};

    fn token(data: String) -> mongodb::change_stream::event::ResumeToken {
        mongodb::bson::from_bson(Bson::Document(doc! { "_data": data })).unwrap()
    }

    #[test]
    fn tokens_of_both_servers_name_their_cluster_time() {
        let at = Timestamp { time: 1_666_276_012, increment: 2 };
        // mongod: KeyString, the timestamp first, then the rest of the event's key.
        let key = [at.time.to_be_bytes(), at.increment.to_be_bytes()].concat();
        let mongod = format!("82{}2B022C0100296E5A1004", hex(&key));
        assert_eq!(token_time(&token(mongod)), Some(at));
        // SecantusDB: a BSON document with the timestamp in `t`.
        let inner = doc! { "s": 7_i64, "t": at, "n": "restaurant.menu_items", "k": { "_id": 1 } };
        assert_eq!(token_time(&token(hex(&mongodb::bson::to_vec(&inner).unwrap()))), Some(at));
        assert_eq!(token_time(&token("zz".to_owned())), None);
        assert_eq!(token_time(&token("01".to_owned())), None);
    }

    #[test]
    fn a_drain_ends_where_the_ask_was_not_at_the_first_empty_read() {
        let (before, ask, after) = (
            Timestamp { time: 9, increment: 1 },
            Timestamp { time: 10, increment: 3 },
            Timestamp { time: 10, increment: 4 },
        );
        let check = |to: Option<Timestamp>, reads: &[(bool, Option<Timestamp>)], expect: &[bool]| {
            let mut drain = Drain { to, empty_reads: 0 };
            let done: Vec<bool> = reads.iter().map(|&(empty, at)| drain.done(empty, at)).collect();
            assert_eq!(done, expect, "to {to:?}, reads {reads:?}");
        };
        // An empty read short of the ask is not the end; reaching it is, by event or token.
        check(Some(ask), &[(true, Some(before)), (false, Some(ask))], &[false, true]);
        check(Some(ask), &[(false, Some(before)), (true, Some(after))], &[false, true]);
        // Events before the ask never end it, however many.
        check(Some(ask), &[(false, Some(before)); 5], &[false; 5]);
        // A clock that moved without writes: enough empty reads end it.
        let short = [(true, Some(before)); DRAIN_EMPTY_READS as usize];
        let mut expect = [false; DRAIN_EMPTY_READS as usize];
        expect[DRAIN_EMPTY_READS as usize - 1] = true;
        check(Some(ask), &short, &expect);
        // Nothing to compare with: an empty read ends it, as before.
        check(None, &[(false, None), (true, Some(before))], &[false, true]);
        check(Some(ask), &[(true, None)], &[true]);
    }
}
