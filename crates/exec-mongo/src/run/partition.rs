//! Splitting a collection into `_id` ranges that together hold every document, whatever
//! the types of its `_id`s.
//!
//! MongoDB compares values of different BSON types by a fixed type order, but query
//! operators bracket by type: `{_id: {$gte: 5}}` never matches a string `_id`. So the key
//! space is split by `_id` type first (`$type`), then into ranges with bounds of that type;
//! the first and last range of each type are open.

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};

use super::{Coll, failed, from_json, to_json};
use handoff_executor::StepError;

/// One range: documents whose `_id` has type `bson_type` and lies in `[lo, hi)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Range {
    /// `$type` alias of the `_id`s (`objectId`, `string`, `int`, …).
    pub(crate) bson_type: String,
    /// Inclusive lower bound (canonical extended JSON); open when absent.
    pub(crate) lo: Option<serde_json::Value>,
    /// Exclusive upper bound; open when absent.
    pub(crate) hi: Option<serde_json::Value>,
    /// Documents in the range when it was planned.
    pub(crate) documents: u64,
}

impl Range {
    /// The query filter selecting the range.
    pub(crate) fn filter(&self) -> Result<Document, StepError> {
        let mut condition = doc! { "$type": &self.bson_type };
        if let Some(lo) = &self.lo {
            condition.insert("$gte", from_json(lo)?);
        }
        if let Some(hi) = &self.hi {
            condition.insert("$lt", from_json(hi)?);
        }
        Ok(doc! { "_id": condition })
    }
}

/// The `_id` types of a collection and how many documents have each.
pub(crate) async fn types(coll: &Coll) -> Result<Vec<(String, u64)>, StepError> {
    let what = || format!("listing the _id types of {}", coll.label);
    let pipeline = [doc! { "$group": { "_id": { "$type": "$_id" }, "n": { "$sum": 1 } } }];
    let mut cursor =
        coll.raw.clone_with_type::<Document>().aggregate(pipeline).await.map_err(|e| failed(&what(), e))?;
    let mut types = Vec::new();
    while let Some(row) = cursor.try_next().await.map_err(|e| failed(&what(), e))? {
        let name = row.get_str("_id").map_err(|e| failed(&what(), e))?.to_owned();
        let count = match row.get("n") {
            Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or_default(),
            Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or_default(),
            Some(Bson::Double(n)) => *n as u64,
            _ => 0,
        };
        types.push((name, count));
    }
    types.sort();
    Ok(types)
}

/// Splits a collection into about `parts` ranges of similar size.
pub(crate) async fn plan(coll: &Coll, parts: u32) -> Result<Vec<Range>, StepError> {
    let types = types(coll).await?;
    let total: u64 = types.iter().map(|(_, n)| n).sum::<u64>().max(1);
    let mut ranges = Vec::new();
    for (bson_type, count) in types {
        let pieces = ((u64::from(parts) * count).div_ceil(total)).clamp(1, count.max(1));
        let step = count / pieces;
        let mut bounds = Vec::new();
        for piece in 1..pieces {
            let what = || format!("splitting {} into ranges", coll.label);
            let found = coll
                .raw
                .clone_with_type::<Document>()
                .find_one(doc! { "_id": { "$type": &bson_type } })
                .sort(doc! { "_id": 1 })
                .skip(piece * step)
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| failed(&what(), e))?;
            if let Some(id) = found.and_then(|d| d.get("_id").cloned()) {
                bounds.push(to_json(&id));
            }
        }
        bounds.dedup();
        let mut lo = None;
        for (index, hi) in bounds.iter().cloned().map(Some).chain([None]).enumerate() {
            let documents = if index + 1 < pieces as usize { step } else { count - step * (pieces - 1) };
            ranges.push(Range { bson_type: bson_type.clone(), lo: lo.clone(), hi: hi.clone(), documents });
            lo = hi;
        }
    }
    Ok(ranges)
}
