//! Splitting a collection into `_id` ranges that together hold every document, whatever
//! the types of its `_id`s.
//!
//! MongoDB compares values of different BSON types by a fixed type order, but query
//! operators bracket by type: `{_id: {$gte: 5}}` never matches a string `_id`. So the key
//! space is split by `_id` type first (`$type`), then into ranges with bounds of that type;
//! the first and last range of each type are open.
//!
//! Some values no range operator matches: a NaN `_id` (double or Decimal128) sorts before
//! every number, yet neither `$lt` nor `$gte` matches it. So the first range of a type is
//! "not at or above its upper bound" (`$not: {$gte: hi}`), which holds them; and a resume
//! after such a value continues with the ordered ones (`$gte: -Infinity`), since `$gt: NaN`
//! matches nothing.

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};

use super::{Coll, failed, from_json, to_json};
use handoff_executor::StepError;

/// One range: documents whose `_id` has type `bson_type` and lies in `[lo, hi)`, or the
/// whole collection when `bson_type` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Range {
    /// `$type` alias of the `_id`s (`objectId`, `string`, `int`, …); empty for all.
    pub(crate) bson_type: String,
    /// Inclusive lower bound (canonical extended JSON); open when absent.
    pub(crate) lo: Option<serde_json::Value>,
    /// Exclusive upper bound; open when absent.
    pub(crate) hi: Option<serde_json::Value>,
    /// Documents in the range when it was planned.
    pub(crate) documents: u64,
}

impl Range {
    /// The query filter selecting the range, or its part after `after` (exclusive).
    pub(crate) fn filter(&self, after: Option<&serde_json::Value>) -> Result<Document, StepError> {
        if self.bson_type.is_empty() {
            return Ok(doc! {});
        }
        let mut condition = doc! { "$type": &self.bson_type };
        let after = after.map(from_json).transpose()?;
        match (&after, &self.lo) {
            (Some(after), _) if unordered(after) => {
                condition.insert("$gte", lowest(after));
            }
            (Some(after), _) => {
                condition.insert("$gt", after.clone());
            }
            (None, Some(lo)) => {
                condition.insert("$gte", from_json(lo)?);
            }
            (None, None) => {}
        }
        match (&self.hi, after.is_none() && self.lo.is_none()) {
            // The first range also holds what no range operator matches (NaN).
            (Some(hi), true) => {
                condition.insert("$not", doc! { "$gte": from_json(hi)? });
            }
            (Some(hi), false) => {
                condition.insert("$lt", from_json(hi)?);
            }
            (None, _) => {}
        }
        Ok(doc! { "_id": condition })
    }
}

/// A value that sorts among its type but that no range operator matches: NaN.
fn unordered(value: &Bson) -> bool {
    match value {
        Bson::Double(f) => f.is_nan(),
        Bson::Decimal128(d) => d.to_string().contains("NaN"),
        _ => false,
    }
}

/// The lowest ordered value of an unordered value's type: `-Infinity`.
fn lowest(value: &Bson) -> Bson {
    match value {
        Bson::Decimal128(_) => "-Infinity".parse().map_or(Bson::Double(f64::NEG_INFINITY), Bson::Decimal128),
        _ => Bson::Double(f64::NEG_INFINITY),
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

/// Fewest documents worth a range of their own: below this, another range costs more (one
/// more query, and on servers without a usable `_id` index one more scan) than it saves.
/// A copy resumes within a range, so ranges are for parallel reads, not for checkpoints.
pub(crate) const MIN_RANGE_DOCUMENTS: u64 = 500_000;

/// Splits a collection into at most `parts` ranges per `_id` type, of similar size and
/// none smaller than `min_size`. The bounds of a type come from one pass over its `_id`s in
/// order (an index-only scan on MongoDB), not from a query per bound.
///
/// With `typed: false`, a collection too small to split is one range over every type (no
/// need to know its _id types); a copy asks for typed ranges, which it can resume inside.
pub(crate) async fn plan(coll: &Coll, parts: u32, min_size: u64, typed: bool) -> Result<Vec<Range>, StepError> {
    if !typed {
        let estimate =
            coll.raw.estimated_document_count().await.map_err(|e| failed(&format!("counting {}", coll.label), e))?;
        if estimate < min_size {
            return Ok(vec![Range { bson_type: String::new(), lo: None, hi: None, documents: estimate }]);
        }
    }
    let mut ranges = Vec::new();
    for (bson_type, count) in types(coll).await? {
        let pieces = u64::from(parts).min(count.div_ceil(min_size.max(1))).max(1);
        if pieces == 1 {
            ranges.push(Range { bson_type, lo: None, hi: None, documents: count });
            continue;
        }
        let step = count / pieces;
        let what = || format!("splitting {} into ranges", coll.label);
        let mut ids = coll
            .raw
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$type": &bson_type } })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .batch_size(10_000)
            .await
            .map_err(|e| failed(&what(), e))?;
        let mut bounds = Vec::new();
        let mut seen = 0u64;
        while let Some(row) = ids.try_next().await.map_err(|e| failed(&what(), e))? {
            if seen > 0
                && seen.is_multiple_of(step)
                && (bounds.len() as u64) < pieces - 1
                && let Some(id) = row.get("_id")
            {
                bounds.push((to_json(id), seen));
            }
            seen += 1;
        }
        let mut lo: Option<(serde_json::Value, u64)> = None;
        for hi in bounds.into_iter().map(Some).chain([None]) {
            let start = lo.as_ref().map_or(0, |(_, at)| *at);
            let end = hi.as_ref().map_or(seen, |(_, at)| *at);
            ranges.push(Range {
                bson_type: bson_type.clone(),
                lo: lo.as_ref().map(|(id, _)| id.clone()),
                hi: hi.as_ref().map(|(id, _)| id.clone()),
                documents: end - start,
            });
            lo = hi;
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{Bson, doc};
    use serde_json::json;

    use super::Range;

    fn range(lo: Option<f64>, hi: Option<f64>) -> Range {
        let bound = |v: Option<f64>| v.map(|v| Bson::Double(v).into_canonical_extjson());
        Range { bson_type: "double".to_owned(), lo: bound(lo), hi: bound(hi), documents: 0 }
    }

    #[test]
    fn the_first_range_holds_what_no_range_operator_matches() {
        let nan = Bson::Double(f64::NAN).into_canonical_extjson();
        let first = range(None, Some(5.0));
        assert_eq!(first.filter(None).unwrap(), doc! {"_id": {"$type": "double", "$not": {"$gte": 5.0}}});
        // Resumed after the NaN (sorted first): the ordered values, not `$gt: NaN` (nothing).
        assert_eq!(
            first.filter(Some(&nan)).unwrap(),
            doc! {"_id": {"$type": "double", "$gte": f64::NEG_INFINITY, "$lt": 5.0}}
        );
        assert_eq!(
            first.filter(Some(&json!({"$numberDouble": "1.5"}))).unwrap(),
            doc! {"_id": {"$type": "double", "$gt": 1.5, "$lt": 5.0}}
        );
        assert_eq!(range(Some(5.0), None).filter(None).unwrap(), doc! {"_id": {"$type": "double", "$gte": 5.0}});
        let decimal_nan = Bson::Decimal128("NaN".parse().unwrap()).into_canonical_extjson();
        let whole = Range { bson_type: "decimal".to_owned(), lo: None, hi: None, documents: 0 };
        let resumed = whole.filter(Some(&decimal_nan)).unwrap();
        assert_eq!(resumed.get_document("_id").unwrap().get("$gte").unwrap().to_string(), "-Infinity");
    }
}
