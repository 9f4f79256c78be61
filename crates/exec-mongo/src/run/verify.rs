//! `mongo.verify`: exact counts and a comparison of every document (or a sample).
//!
//! Full and hashed modes split the key space like the copy and, per range, join the two
//! sides by `_id` in memory (a digest per target document), so they need no common sort
//! order across servers and read each side exactly once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use handoff_executor::{Context, Integrity, StepError};
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::partition::{self, Range};
use super::{Clients, Coll, failed, to_json};
use crate::{Verify, VerifyMode};

/// How documents are compared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Canon {
    /// `{a, b}` equals `{b, a}`.
    pub(crate) ignore_field_order: bool,
    /// `int 5` equals `long 5` equals `double 5.0`.
    pub(crate) numeric_by_value: bool,
}

impl Canon {
    fn value(self, value: Bson) -> Bson {
        match value {
            Bson::Document(document) => Bson::Document(self.document(document)),
            Bson::Array(items) => Bson::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Bson::Int32(n) if self.numeric_by_value => Bson::Int64(i64::from(n)),
            Bson::Double(f) if self.numeric_by_value && f.fract() == 0.0 && f.abs() < 9.0e15 => Bson::Int64(f as i64),
            other => other,
        }
    }

    /// The canonical form of a document.
    pub(crate) fn document(self, document: Document) -> Document {
        let mut fields: Vec<(String, Bson)> = document.into_iter().map(|(k, v)| (k, self.value(v))).collect();
        if self.ignore_field_order {
            fields.sort_by(|a, b| a.0.cmp(&b.0));
        }
        fields.into_iter().collect()
    }

    fn digest(self, raw: &RawDocumentBuf) -> Result<[u8; 32], StepError> {
        if !self.ignore_field_order && !self.numeric_by_value {
            // Byte-for-byte comparison: no decoding needed.
            return Ok(Sha256::digest(raw.as_bytes()).into());
        }
        let document = raw.to_document().map_err(|e| StepError::Failed(format!("undecodable document: {e}")))?;
        let bytes = mongodb::bson::to_vec(&self.document(document)).unwrap_or_default();
        Ok(Sha256::digest(&bytes).into())
    }
}

/// The `_id` of a raw document and its key in the join.
fn id_of(raw: &RawDocumentBuf) -> (String, Bson) {
    let id = raw.get("_id").ok().flatten().and_then(|id| Bson::try_from(id.to_raw_bson()).ok()).unwrap_or(Bson::Null);
    (to_json(&id).to_string(), id)
}

/// What a comparison found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    compared: u64,
    matched: u64,
    pub(crate) missing: u64,
    pub(crate) extra: u64,
    pub(crate) different: u64,
    /// Ids of missing, extra and differing documents, up to the limit (fields are worked
    /// out for the examples at the end).
    missing_ids: Vec<Bson>,
    extra_ids: Vec<Bson>,
    different_ids: Vec<Bson>,
}

impl Findings {
    /// Keeps at most `limit` example ids of each kind.
    fn truncate(&mut self, limit: usize) {
        self.missing_ids.truncate(limit);
        self.extra_ids.truncate(limit);
        self.different_ids.truncate(limit);
    }

    fn merge(&mut self, other: Findings, limit: usize) {
        self.compared += other.compared;
        self.matched += other.matched;
        self.missing += other.missing;
        self.extra += other.extra;
        self.different += other.different;
        for (mine, theirs) in [
            (&mut self.missing_ids, other.missing_ids),
            (&mut self.extra_ids, other.extra_ids),
            (&mut self.different_ids, other.different_ids),
        ] {
            mine.extend(theirs.into_iter().take(limit.saturating_sub(mine.len())));
        }
    }
}

async fn compare_range<'a>(
    source: &'a Coll,
    target: &'a Coll,
    range: &Range,
    canon: Canon,
    limit: usize,
    cx: &'a Context,
) -> Result<Findings, StepError> {
    let filter = range.filter(None)?;
    // Both sides are read at once; each document becomes (key, id, digest).
    let read = |coll: &'a Coll| {
        let filter = filter.clone();
        async move {
            let what = || format!("reading {}", coll.label);
            let mut cursor = coll.raw.find(filter).batch_size(1000).await.map_err(|e| failed(&what(), e))?;
            let mut rows = Vec::new();
            while let Some(raw) = cursor.try_next().await.map_err(|e| failed(&what(), e))? {
                let (key, id) = id_of(&raw);
                rows.push((key, id, canon.digest(&raw)?));
                if cx.cancel.is_cancelled() {
                    return Err(StepError::Cancelled);
                }
            }
            Ok::<_, StepError>(rows)
        }
    };
    let (ours, theirs) = tokio::join!(read(source), read(target));
    let mut theirs: HashMap<String, (Bson, [u8; 32])> = theirs?.into_iter().map(|(k, id, d)| (k, (id, d))).collect();
    let mut findings = Findings::default();
    for (key, id, digest) in ours? {
        findings.compared += 1;
        match theirs.remove(&key) {
            None => {
                findings.missing += 1;
                if findings.missing_ids.len() < limit {
                    findings.missing_ids.push(id);
                }
            }
            Some((_, theirs)) if theirs == digest => findings.matched += 1,
            Some(_) => {
                findings.different += 1;
                if findings.different_ids.len() < limit {
                    findings.different_ids.push(id);
                }
            }
        }
    }
    findings.extra = theirs.len() as u64;
    findings.extra_ids = theirs.into_values().take(limit).map(|(id, _)| id).collect();
    Ok(findings)
}

/// Compares every document of the two collections, range by range, in parallel.
pub(crate) async fn compare_all(
    source: &Coll,
    target: &Coll,
    canon: Canon,
    limit: usize,
    cx: &Context,
) -> Result<Findings, StepError> {
    let mut ranges = partition::plan(source, 4, partition::MIN_RANGE_DOCUMENTS, false).await?;
    // Types only the target has hold extra documents: check those wholesale (a single
    // range over everything already covers them).
    if ranges.iter().all(|r| !r.bson_type.is_empty()) {
        for (bson_type, documents) in partition::types(target).await? {
            if !ranges.iter().any(|r| r.bson_type == bson_type) {
                ranges.push(Range { bson_type, lo: None, hi: None, documents });
            }
        }
    }
    let total = Mutex::new(Findings::default());
    futures_util::stream::iter(ranges)
        .map(|range| {
            let total = &total;
            async move {
                let found = compare_range(source, target, &range, canon, limit, cx).await?;
                total.lock().unwrap_or_else(std::sync::PoisonError::into_inner).merge(found, limit);
                Ok::<(), StepError>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<()>()
        .await?;
    Ok(total.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// `mongo.reconcile`: makes one side equal the other under the comparison settings of its
/// paired `mongo.verify` — copies missing and differing documents from the side of truth
/// (in the truth's field order and numeric types), and deletes the repaired side's extra documents when
/// asked. Idempotent: a second run finds nothing to do.
pub(crate) async fn reconcile(
    params: &crate::Reconcile,
    cx: &Context,
    clients: &Clients,
) -> Result<ReconcileOutput, StepError> {
    let (truth_side, repaired_side) = match params.direction {
        crate::ReconcileDirection::SourceToTarget => (&params.source, &params.target),
        crate::ReconcileDirection::TargetToSource => (&params.target, &params.source),
    };
    let truth = clients.resolve(cx, truth_side, repaired_side).await?;
    let repaired = clients.resolve(cx, repaired_side, truth_side).await?;
    // The paired verify's settings: every difference it reports is one repaired here.
    let canon = Canon { ignore_field_order: params.ignore_field_order, numeric_by_value: params.numeric_by_value };
    let findings = compare_all(&truth, &repaired, canon, usize::MAX, cx).await?;
    let mut copied = 0u64;
    let stale: Vec<Bson> = findings.missing_ids.iter().chain(&findings.different_ids).cloned().collect();
    let documents = repaired.raw.clone_with_type::<Document>();
    for chunk in stale.chunks(500) {
        let what = || format!("repairing {} from {}", repaired.label, truth.label);
        let mut cursor = truth
            .raw
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": chunk.to_vec() } })
            .await
            .map_err(|e| failed(&what(), e))?;
        while let Some(document) = cursor.try_next().await.map_err(|e| failed(&what(), e))? {
            let id = document.get("_id").cloned().unwrap_or(Bson::Null);
            super::upsert(&documents, &id, document).await.map_err(|e| failed(&what(), e))?;
            copied += 1;
        }
    }
    let mut deleted = 0;
    if params.delete_extra && !findings.extra_ids.is_empty() {
        for chunk in findings.extra_ids.chunks(500) {
            let result = documents
                .delete_many(doc! { "_id": { "$in": chunk.to_vec() } })
                .await
                .map_err(|e| failed(&format!("deleting extra documents of {}", repaired.label), e))?;
            deleted += result.deleted_count;
        }
    }
    cx.emit("documents_reconciled", (copied + deleted) as f64);
    Ok(ReconcileOutput {
        from: truth.label,
        repaired: repaired.label,
        missing: findings.missing,
        different: findings.different,
        extra: findings.extra,
        copied,
        deleted,
        extra_left: if params.delete_extra { 0 } else { findings.extra },
    })
}

/// Top-level fields that differ between the two sides' versions of a document.
async fn differing_fields(source: &Coll, target: &Coll, id: &Bson, canon: Canon) -> Value {
    let fetch = |coll: &Coll| {
        let coll = coll.raw.clone_with_type::<Document>();
        let id = id.clone();
        async move { coll.find_one(doc! { "_id": id }).await.ok().flatten().map(|d| canon.document(d)) }
    };
    let (Some(ours), Some(theirs)) = (fetch(source).await, fetch(target).await) else {
        return json!({ "_id": to_json(id), "fields": "changed while verifying" });
    };
    let mut fields: Vec<&String> = ours.keys().filter(|k| ours.get(*k) != theirs.get(*k)).collect();
    fields.extend(theirs.keys().filter(|k| !ours.contains_key(*k)));
    let order_only = fields.is_empty();
    json!({
        "_id": to_json(id),
        "fields": if order_only { json!("field order") } else { json!(fields) },
    })
}

async fn count(coll: &Coll) -> Result<u64, StepError> {
    coll.raw.count_documents(doc! {}).await.map_err(|e| failed(&format!("counting {}", coll.label), e))
}

/// Differences rechecked before they count (more are counted as found).
const RECHECK_LIMIT: usize = 10_000;
/// Waits before each recheck: a change in flight (the sync, a dual write) lands within
/// them; a real difference stays.
const RECHECK_WAITS: [Duration; 3] = [Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(3)];

/// Checks the differences found (by a full comparison or a sample) again, by id, after
/// short waits: a document written while the comparison ran (on a live collection, with a sync or dual writes applying
/// it) is not a discrepancy unless it stays different.
async fn recheck(
    findings: &mut Findings,
    source: &Coll,
    target: &Coll,
    canon: Canon,
    cx: &Context,
) -> Result<(), StepError> {
    for wait in RECHECK_WAITS {
        let tracked: Vec<Bson> =
            findings.missing_ids.iter().chain(&findings.extra_ids).chain(&findings.different_ids).cloned().collect();
        if tracked.is_empty() {
            return Ok(());
        }
        cx.cancellable(tokio::time::sleep(wait)).await?;
        let fetch = |coll: &Coll| {
            let coll = coll.raw.clone();
            let ids = tracked.clone();
            async move {
                let mut out = HashMap::new();
                for chunk in ids.chunks(500) {
                    let mut cursor = coll.find(doc! { "_id": { "$in": chunk.to_vec() } }).await?;
                    while let Some(raw) = cursor.try_next().await? {
                        let (key, _) = id_of(&raw);
                        out.insert(key, raw);
                    }
                }
                Ok::<_, mongodb::error::Error>(out)
            }
        };
        let (ours, theirs) = tokio::try_join!(fetch(source), fetch(target))
            .map_err(|e| failed(&format!("rechecking {} against {}", source.label, target.label), e))?;
        let before = (findings.missing_ids.len(), findings.extra_ids.len(), findings.different_ids.len());
        let (mut missing, mut extra, mut different) = (Vec::new(), Vec::new(), Vec::new());
        for id in tracked {
            let key = to_json(&id).to_string();
            match (ours.get(&key), theirs.get(&key)) {
                (Some(_), None) => missing.push(id),
                (None, Some(_)) => extra.push(id),
                (Some(a), Some(b)) if canon.digest(a)? != canon.digest(b)? => different.push(id),
                _ => findings.matched += 1,
            }
        }
        findings.missing = findings.missing - before.0 as u64 + missing.len() as u64;
        findings.extra = findings.extra - before.1 as u64 + extra.len() as u64;
        findings.different = findings.different - before.2 as u64 + different.len() as u64;
        (findings.missing_ids, findings.extra_ids, findings.different_ids) = (missing, extra, different);
    }
    Ok(())
}

/// What `mongo.verify` found.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyOutput {
    /// The reference side, `resource.collection`.
    pub source: String,
    /// The side checked against it.
    pub target: String,
    /// `full`, `hashed` or `sample`.
    pub mode: String,
    /// Documents on the source side.
    pub source_count: u64,
    /// Documents on the target side.
    pub target_count: u64,
    /// Documents compared.
    pub compared: u64,
    /// Of which equal on both sides.
    pub matched: u64,
    /// Only on the source side.
    pub missing: u64,
    /// Only on the target side.
    pub extra: u64,
    /// On both sides, not equal.
    pub different: u64,
    /// Missing, extra and different (in sample mode, the count gap beyond the tolerance).
    pub discrepancies: u64,
    /// Matched documents per hundred.
    pub consistency_percent: f64,
    /// Example ids of each kind (with the differing fields, in full mode).
    pub examples: Examples,
}

impl VerifyOutput {
    /// What the comparison found, for the report's data-integrity checks.
    pub fn integrity(&self) -> Integrity {
        Integrity {
            source: self.source.clone(),
            target: self.target.clone(),
            compared: self.compared,
            discrepancies: self.discrepancies,
        }
    }
}

/// Example discrepancies, as canonical extended JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Examples {
    /// `_id`s only on the source side.
    pub missing: Vec<Value>,
    /// `_id`s only on the target side.
    pub extra: Vec<Value>,
    /// `_id`s on both sides that differ, with the fields that differ.
    pub different: Vec<Value>,
}

/// What `mongo.reconcile` repaired.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReconcileOutput {
    /// The side taken as the truth.
    pub from: String,
    /// The side repaired.
    pub repaired: String,
    /// Documents the repaired side lacked.
    pub missing: u64,
    /// Documents that differed.
    pub different: u64,
    /// Documents only the repaired side had.
    pub extra: u64,
    /// Documents written.
    pub copied: u64,
    /// Documents deleted.
    pub deleted: u64,
    /// Extra documents left in place (without `delete_extra`).
    pub extra_left: u64,
}

/// Runs `mongo.verify`.
pub(crate) async fn run(params: &Verify, cx: &Context, clients: &Clients) -> Result<VerifyOutput, StepError> {
    let source = clients.resolve(cx, &params.source, &params.target).await?;
    let target = clients.resolve(cx, &params.target, &params.source).await?;
    let canon = Canon { ignore_field_order: params.ignore_field_order, numeric_by_value: params.numeric_by_value };
    let limit = params.max_examples.unwrap_or(10) as usize;
    let tracked = limit.max(RECHECK_LIMIT);
    let mut findings = match params.mode {
        VerifyMode::Full | VerifyMode::Hashed => compare_all(&source, &target, canon, tracked, cx).await?,
        VerifyMode::Sample => sample(&source, &target, params.sample_size.unwrap_or(1000), canon, tracked).await?,
    };
    recheck(&mut findings, &source, &target, canon, cx).await?;
    findings.truncate(limit);
    // A full comparison reads every document of both sides: the exact counts come with it.
    let (source_count, target_count) = match params.mode {
        VerifyMode::Sample => (count(&source).await?, count(&target).await?),
        _ => (findings.compared, findings.matched + findings.different + findings.extra),
    };
    let examples_of_differences = if matches!(params.mode, VerifyMode::Hashed) {
        findings.different_ids.iter().map(|id| json!({ "_id": to_json(id) })).collect::<Vec<_>>()
    } else {
        let mut out = Vec::new();
        for id in &findings.different_ids {
            out.push(differing_fields(&source, &target, id, canon).await);
        }
        out
    };
    let count_gap = source_count.abs_diff(target_count);
    let discrepancies = match params.mode {
        VerifyMode::Sample => findings.missing + findings.different + count_gap.saturating_sub(params.count_tolerance),
        _ => findings.missing + findings.extra + findings.different,
    };
    let basis = match params.mode {
        VerifyMode::Sample => findings.compared,
        _ => source_count.max(target_count),
    };
    let consistency = if basis == 0 { 100.0 } else { 100.0 * findings.matched as f64 / basis as f64 };
    cx.emit("data_discrepancies", discrepancies as f64);
    cx.emit("data_consistency_percent", consistency);
    cx.emit("documents_verified", findings.compared as f64);
    Ok(VerifyOutput {
        source: source.label,
        target: target.label,
        mode: format!("{:?}", params.mode).to_lowercase(),
        source_count,
        target_count,
        compared: findings.compared,
        matched: findings.matched,
        missing: findings.missing,
        extra: findings.extra,
        different: findings.different,
        discrepancies,
        consistency_percent: consistency,
        examples: Examples {
            missing: findings.missing_ids.iter().map(to_json).collect(),
            extra: findings.extra_ids.iter().map(to_json).collect(),
            different: examples_of_differences,
        },
    })
}

/// The seed's check, batched: `size` random source documents looked up in the target,
/// 100 per round trip.
async fn sample(source: &Coll, target: &Coll, size: u64, canon: Canon, limit: usize) -> Result<Findings, StepError> {
    let what = || format!("sampling {}", source.label);
    let pipeline = [doc! { "$sample": { "size": i64::try_from(size).unwrap_or(i64::MAX) } }];
    let picked: Vec<RawDocumentBuf> = source
        .raw
        .aggregate(pipeline)
        .with_type::<RawDocumentBuf>()
        .await
        .map_err(|e| failed(&what(), e))?
        .try_collect()
        .await
        .map_err(|e| failed(&what(), e))?;
    let mut findings = Findings::default();
    for chunk in picked.chunks(100) {
        let ids: Vec<Bson> = chunk.iter().map(|d| id_of(d).1).collect();
        let lookup = || format!("looking up samples in {}", target.label);
        let found: Vec<RawDocumentBuf> = target
            .raw
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(|e| failed(&lookup(), e))?
            .try_collect()
            .await
            .map_err(|e| failed(&lookup(), e))?;
        let mut theirs: HashMap<String, [u8; 32]> = HashMap::new();
        for raw in &found {
            theirs.insert(id_of(raw).0, canon.digest(raw)?);
        }
        for raw in chunk {
            findings.compared += 1;
            let (key, id) = id_of(raw);
            match theirs.get(&key) {
                None => {
                    findings.missing += 1;
                    if findings.missing_ids.len() < limit {
                        findings.missing_ids.push(id);
                    }
                }
                Some(digest) if *digest == canon.digest(raw)? => findings.matched += 1,
                Some(_) => {
                    findings.different += 1;
                    if findings.different_ids.len() < limit {
                        findings.different_ids.push(id);
                    }
                }
            }
        }
    }
    Ok(findings)
}
