//! Documents generated from a dataset's declared shape (`simulation.dataset`): the same
//! documents for the same seed.

use std::collections::BTreeMap;

use handoff_plan::simulation::{Dataset, Generator};
use mongodb::bson::{Bson, Document};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Filler words of generated text.
const WORDS: &[&str] = &[
    "slow",
    "cooked",
    "served",
    "with",
    "seasonal",
    "vegetables",
    "and",
    "a",
    "choice",
    "of",
    "sauce",
    "fresh",
    "house",
    "made",
    "light",
    "rich",
    "crisp",
    "warm",
    "daily",
    "local",
    "smoked",
    "grilled",
    "classic",
    "extra",
];

/// The `_id` of document `n` of `dataset`.
pub fn id(dataset: &Dataset, n: u64) -> String {
    format!("{}{n:0width$}", dataset.ids.prefix, width = usize::from(dataset.ids.width))
}

/// Every document of `dataset`, in order, generated from `seed` (and the collection's name,
/// so two datasets of one seed differ).
pub fn documents(dataset: &Dataset, seed: u64) -> impl Iterator<Item = Document> + '_ {
    let salt = dataset
        .collection
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut rng = SmallRng::seed_from_u64(seed ^ salt);
    (0..dataset.documents).map(move |n| {
        let mut document = Document::new();
        document.insert("_id", id(dataset, n));
        fields(&dataset.document, n, &mut rng, &mut document);
        document
    })
}

/// The generated fields of `shape` for document `n`, added to `out` in order.
fn fields(shape: &BTreeMap<String, Generator>, n: u64, rng: &mut SmallRng, out: &mut Document) {
    for (name, generator) in shape {
        if let Some(value) = value(generator, n, rng) {
            out.insert(name.clone(), value);
        }
    }
}

/// A value of `generator` for document `n`; `None` when an optional field is left out.
fn value(generator: &Generator, n: u64, rng: &mut SmallRng) -> Option<Bson> {
    Some(match generator {
        Generator::Const(value) => json(value),
        Generator::Template(text) => Bson::String(template(text, n)),
        Generator::Choice(values) if values.is_empty() => Bson::Null,
        Generator::Choice(values) => json(&values[rng.random_range(0..values.len())]),
        Generator::Int { min, max } => int(rng.random_range(*min.min(max)..=*max.max(min))),
        Generator::Decimal { min, max, places } => {
            let scale = 10_f64.powi(i32::from(*places));
            let value = if max > min { rng.random_range(*min..=*max) } else { *min };
            Bson::Double((value * scale).round() / scale)
        }
        Generator::Date { from, days } => {
            let midnight = from.0.to_datetime(jiff::civil::Time::midnight());
            let start = jiff::tz::Offset::UTC.to_timestamp(midnight).map_or(0, |t| t.as_millisecond());
            let offset = rng.random_range(0..=i64::from(*days) * 86_400_000);
            Bson::DateTime(mongodb::bson::DateTime::from_millis(start + offset))
        }
        Generator::Text { min, max } => {
            let count = rng.random_range(*min.min(max)..=*max.max(min));
            let words: Vec<&str> = (0..count).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
            Bson::String(words.join(" "))
        }
        Generator::Document(shape) => {
            let mut document = Document::new();
            fields(shape, n, rng, &mut document);
            Bson::Document(document)
        }
        Generator::Array { of, min, max } => {
            let count = rng.random_range(*min.min(max)..=*max.max(min));
            Bson::Array((0..count).filter_map(|_| value(of, n, rng)).collect())
        }
        Generator::Optional { percent, of } => {
            return if rng.random::<f64>() * 100.0 < *percent { value(of, n, rng) } else { None };
        }
    })
}

/// A whole number: 32-bit when it fits.
fn int(value: i64) -> Bson {
    i32::try_from(value).map_or(Bson::Int64(value), Bson::Int32)
}

/// A YAML value as BSON (whole numbers 32-bit when they fit).
fn json(value: &serde_json::Value) -> Bson {
    match value {
        serde_json::Value::Number(number) if number.is_i64() => int(number.as_i64().unwrap_or_default()),
        other => mongodb::bson::to_bson(other).unwrap_or(Bson::Null),
    }
}

/// `text` with `{n}` replaced by `n` and `{n % M}` by `n` modulo `M`; other braces stay.
fn template(text: &str, n: u64) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner: String = after[..close].chars().filter(|c| !c.is_whitespace()).collect();
        let modulo = inner.strip_prefix("n%").and_then(|m| m.parse::<u64>().ok()).filter(|m| *m > 0);
        match (inner.as_str(), modulo) {
            ("n", _) => out.push_str(&n.to_string()),
            (_, Some(m)) => out.push_str(&(n % m).to_string()),
            _ => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(yaml: &str) -> Dataset {
        let (_, document) = handoff_plan::source::load(yaml.as_bytes()).unwrap();
        serde_json::from_value(document.value).unwrap()
    }

    /// Each generator, and the same seed giving the same documents.
    #[test]
    fn documents_follow_their_shape_and_their_seed() {
        let shape = dataset(
            "{resource: db, collection: orders, documents: 50, ids: {prefix: order-, width: 4}, document: {
               customer: {template: 'customer-{n % 7}'}, total: {decimal: {min: 1, max: 99, places: 2}},
               status: {choice: [open, paid]}, items: {array: {min: 1, max: 3, of: {document: {sku: {int: {min: 1, max: 9}}}}}},
               placed: {date: {from: 2024-02-01, days: 10}}, note: {optional: {percent: 50, of: {text: {min: 1, max: 2}}}},
               big: {int: {min: 5000000000, max: 5000000000}}, tag: {const: x}}}",
        );
        let first: Vec<Document> = documents(&shape, 7).collect();
        assert_eq!(first, documents(&shape, 7).collect::<Vec<_>>());
        assert_ne!(first, documents(&shape, 8).collect::<Vec<_>>());
        let d = &first[9];
        assert_eq!((d.get_str("_id").unwrap(), d.get_str("customer").unwrap()), ("order-0009", "customer-2"));
        assert!(["open", "paid"].contains(&d.get_str("status").unwrap()));
        assert!((1.0..=99.0).contains(&d.get_f64("total").unwrap()));
        assert_eq!((d.get_i64("big").unwrap(), d.get_str("tag").unwrap()), (5_000_000_000, "x"));
        let items = d.get_array("items").unwrap();
        assert!(
            (1..=3).contains(&items.len()) && items.iter().all(|i| i.as_document().unwrap().get_i32("sku").is_ok())
        );
        let placed = d.get_datetime("placed").unwrap().timestamp_millis();
        assert!((1_706_745_600_000..=1_706_745_600_000 + 10 * 86_400_000).contains(&placed));
        let with_note = first.iter().filter(|d| d.contains_key("note")).count();
        assert!((5..45).contains(&with_note), "{with_note} of 50 have the optional field");
    }

    #[test]
    fn templates_replace_the_number_and_its_remainder() {
        assert_eq!(template("a-{n}-{ n % 4 }-{x}-{", 10), "a-10-2-{x}-{");
    }
}
