//! Execution of the `redis` actions.
//!
//! Errors name the resource (`menu_cache`), never its connection string.

use std::future::IntoFuture;
use std::time::Duration;

use futures_util::TryStreamExt;
use handoff_executor::{Context, StepError};
use mongodb::bson::{Bson, Document};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use crate::{Invalidate, Observe, Warm};

/// How long one Redis command may take (a pipeline of a thousand SETs included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest real time a hit ratio is measured over.
const MIN_REAL_WINDOW: Duration = Duration::from_secs(1);
/// Keys written per pipeline.
const WARM_BATCH: usize = 1000;

fn failed(what: &str, error: impl std::fmt::Display) -> StepError {
    StepError::Failed(format!("{what}: {error}"))
}

/// A Redis error without anything of the connection string (kind, server detail, I/O
/// cause).
fn safe(error: &redis::RedisError) -> String {
    let mut text = format!("{:?}", error.kind());
    if let Some(detail) = error.detail() {
        text.push_str(&format!(": {detail}"));
    }
    if let Some(io) = std::error::Error::source(error).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        text.push_str(&format!(" ({})", io.kind()));
    }
    text
}

/// A connection to a `redis` resource.
async fn connect(cx: &Context, cache: &handoff_plan::model::Id) -> Result<MultiplexedConnection, StepError> {
    let (_, endpoint, url) = cx.resource_endpoint(cache)?;
    let client = redis::Client::open(url).map_err(|e| {
        StepError::Refused(format!("endpoint `{endpoint}` (resource `{cache}`) is not a Redis URL: {}", safe(&e)))
    })?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    cx.cancellable(client.get_multiplexed_async_connection_with_config(&config))
        .await?
        .map_err(|e| failed(&format!("connecting to `{cache}`"), safe(&e)))
}

/// `redis.warm`: the most recently updated documents of a collection, as JSON under their
/// cache keys, with a TTL.
/// What `redis.warm` loaded.
#[derive(Debug, Serialize, Deserialize)]
pub struct WarmOutput {
    /// Keys written.
    pub warmed: u64,
    /// Documents without the key's field.
    pub skipped: u64,
    /// Their time to live.
    pub ttl_seconds: u64,
    /// The field the hottest documents were chosen by.
    pub order_by: String,
}

/// What `redis.invalidate` deleted.
#[derive(Debug, Serialize, Deserialize)]
pub struct InvalidateOutput {
    /// The pattern.
    pub pattern: String,
    /// Keys deleted.
    pub deleted: u64,
    /// SCAN round trips.
    pub scan_rounds: u64,
}

/// What `redis.observe` measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct ObserveOutput {
    /// Hits in the window.
    pub hits: u64,
    /// Misses in the window.
    pub misses: u64,
    /// Hits per hundred reads (none without reads).
    pub ratio_percent: Option<f64>,
    /// The window.
    pub window: String,
    /// Why there is no ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub(crate) async fn warm(p: &Warm, cx: &Context) -> Result<WarmOutput, StepError> {
    let (resource, endpoint, uri) = cx.resource_endpoint(&p.source)?;
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .map_err(|e| StepError::Refused(format!("endpoint `{endpoint}` (resource `{}`): {}", p.source, e.kind)))?;
    let database = match &resource.database {
        Some(name) => client.database(name),
        None => client
            .default_database()
            .ok_or_else(|| StepError::Refused(format!("resource `{}` names no database", p.source)))?,
    };
    let order_by = p.order_by.as_deref().unwrap_or("updated_at");
    let label = format!("{}.{}", p.source, p.collection);
    let mut cursor = cx
        .cancellable(
            database
                .collection::<Document>(&p.collection)
                .find(Document::new())
                .sort(mongodb::bson::doc! { order_by: -1 })
                .limit(i64::try_from(p.hot_keys).unwrap_or(i64::MAX))
                .into_future(),
        )
        .await?
        .map_err(|e| failed(&format!("reading {label}"), e))?;
    let mut connection = connect(cx, &p.cache).await?;
    let ttl = p.ttl.get().as_secs().max(1);
    let (mut warmed, mut skipped) = (0_u64, 0_u64);
    let mut batch = redis::pipe();
    let mut pending = 0;
    loop {
        let next = cx.cancellable(cursor.try_next()).await?.map_err(|e| failed(&format!("reading {label}"), e))?;
        if let Some(document) = &next {
            match key_of(&p.key, document) {
                Some(key) => {
                    let value = Bson::Document(document.clone()).into_relaxed_extjson().to_string();
                    batch.set_ex(key, value, ttl).ignore();
                    pending += 1;
                }
                None => skipped += 1,
            }
        }
        if pending == WARM_BATCH || (next.is_none() && pending > 0) {
            cx.cancellable(batch.exec_async(&mut connection))
                .await?
                .map_err(|e| failed(&format!("writing to `{}`", p.cache), e))?;
            warmed += pending as u64;
            cx.progress(&format!("{warmed} keys warmed"), Some(warmed as f64 / p.hot_keys.max(1) as f64));
            batch = redis::pipe();
            pending = 0;
        }
        if next.is_none() {
            break;
        }
    }
    Ok(WarmOutput { warmed, skipped, ttl_seconds: ttl, order_by: order_by.to_owned() })
}

/// The cache key of a document: `{field}` (or `{a.b}`) replaced by the field's value.
/// `None` when a field is missing.
fn key_of(template: &str, document: &Document) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 24);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}')? + start;
        out.push_str(&rest[..start]);
        let mut value = document.get(rest[start + 1..end].split('.').next()?)?;
        for part in rest[start + 1..end].split('.').skip(1) {
            value = value.as_document()?.get(part)?;
        }
        match value {
            Bson::String(text) => out.push_str(text),
            Bson::ObjectId(id) => out.push_str(&id.to_hex()),
            Bson::Int32(n) => out.push_str(&n.to_string()),
            Bson::Int64(n) => out.push_str(&n.to_string()),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `redis.invalidate`: deletes matching keys with SCAN and UNLINK, a batch at a time, so
/// the server never blocks on one big command.
pub(crate) async fn invalidate(p: &Invalidate, cx: &Context) -> Result<InvalidateOutput, StepError> {
    let mut connection = connect(cx, &p.cache).await?;
    let count = p.batch.unwrap_or(1000);
    let (mut cursor, mut deleted, mut rounds) = (0_u64, 0_u64, 0_u64);
    loop {
        let (next, keys): (u64, Vec<String>) = cx
            .cancellable(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&p.pattern)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut connection),
            )
            .await?
            .map_err(|e| failed(&format!("scanning `{}`", p.cache), e))?;
        rounds += 1;
        if !keys.is_empty() {
            let removed: u64 = cx
                .cancellable(redis::cmd("UNLINK").arg(&keys).query_async(&mut connection))
                .await?
                .map_err(|e| failed(&format!("unlinking keys of `{}`", p.cache), e))?;
            deleted += removed;
            cx.progress(&format!("{deleted} keys matching `{}` deleted", p.pattern), None);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(InvalidateOutput { pattern: p.pattern.clone(), deleted, scan_rounds: rounds })
}

/// The server's keyspace hit and miss counters.
async fn counters(connection: &mut MultiplexedConnection, cx: &Context, cache: &str) -> Result<(u64, u64), StepError> {
    let info: String = cx
        .cancellable(redis::cmd("INFO").arg("stats").query_async(connection))
        .await?
        .map_err(|e| failed(&format!("INFO stats of `{cache}`"), e))?;
    let field = |name: &str| {
        info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
    };
    match (field("keyspace_hits"), field("keyspace_misses")) {
        (Some(hits), Some(misses)) => Ok((hits, misses)),
        _ => Err(StepError::Failed(format!("`{cache}` reports no keyspace_hits/keyspace_misses in INFO stats"))),
    }
}

/// `redis.observe`: the hit ratio over one window, from the server's own counters.
pub(crate) async fn observe(p: &Observe, cx: &Context) -> Result<ObserveOutput, StepError> {
    let mut connection = connect(cx, &p.cache).await?;
    let cache = p.cache.to_string();
    let before = counters(&mut connection, cx, &cache).await?;
    let started = std::time::Instant::now();
    cx.cancellable(cx.clock.sleep(p.window.get())).await?;
    // A window compressed by a simulation's clock still spans enough real reads.
    if let Some(rest) = MIN_REAL_WINDOW.checked_sub(started.elapsed()) {
        cx.cancellable(tokio::time::sleep(rest)).await?;
    }
    let after = counters(&mut connection, cx, &cache).await?;
    // Counters that went down were reset (a restart, CONFIG RESETSTAT): count from zero.
    let (hits, misses) =
        if after.0 < before.0 || after.1 < before.1 { after } else { (after.0 - before.0, after.1 - before.1) };
    let reads = hits + misses;
    if reads == 0 {
        let note = Some("no reads in the window".to_owned());
        return Ok(ObserveOutput { hits: 0, misses: 0, ratio_percent: None, window: p.window.to_string(), note });
    }
    let ratio = 100.0 * hits as f64 / reads as f64;
    cx.emit("cache_hit_ratio", ratio);
    Ok(ObserveOutput { hits, misses, ratio_percent: Some(ratio), window: p.window.to_string(), note: None })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{doc, oid::ObjectId};

    use super::*;

    #[test]
    fn keys_take_fields_and_nested_fields() {
        let id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let document = doc! {"_id": id, "restaurant": {"id": 42}, "slug": "pizza"};
        assert_eq!(key_of("menu:item:{_id}", &document).as_deref(), Some("menu:item:65a1b2c3d4e5f60718293a4b"));
        assert_eq!(key_of("menu:{restaurant.id}:{slug}", &document).as_deref(), Some("menu:42:pizza"));
        assert_eq!(key_of("menu:{missing}", &document), None);
        assert_eq!(key_of("menu:all", &document).as_deref(), Some("menu:all"));
    }
}
