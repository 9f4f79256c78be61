//! Execution of the `mongo` actions against real servers.
//!
//! Errors name resources and collections as the plan does (`restaurant_db.menu_items`),
//! never the connection string, which may hold a password.

use std::collections::HashMap;
use std::time::Duration;

use handoff_executor::{Context, StepError};
use mongodb::bson::{Bson, RawDocumentBuf};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use tokio::sync::Mutex;

use crate::Side;

pub(crate) mod archive;
pub(crate) mod copy;
pub(crate) mod partition;
pub(crate) mod sync;
pub(crate) mod verify;

/// Connections, one client per endpoint, shared by every step of a run.
#[derive(Default)]
pub(crate) struct Clients(Mutex<HashMap<String, Client>>);

/// A collection a step acts on.
pub(crate) struct Coll {
    /// The collection, read and written as raw BSON (no decoding on the copy path).
    pub(crate) raw: Collection<RawDocumentBuf>,
    /// `resource.collection`, for messages.
    pub(crate) label: String,
}

/// A failed call, with what it was doing. A MongoDB error is told by what the server said
/// ([`readable`]), not by the driver's dump of the reply (a hex blob).
pub(crate) fn failed<E: std::fmt::Display + 'static>(what: &str, error: E) -> StepError {
    let any: &dyn std::any::Any = &error;
    let cause = any.downcast_ref::<mongodb::error::Error>().map_or_else(|| error.to_string(), readable);
    StepError::Failed(format!("{what}: {cause}"))
}

/// What a MongoDB error says: the server's message, code and code name for a command or
/// write error, the driver's text for anything else (never the raw reply).
pub(crate) fn readable(error: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    let server = |name: &str, code: i32, message: &str| match name {
        "" => format!("{message} (code {code})"),
        name => format!("{message} ({name}, code {code})"),
    };
    match &*error.kind {
        ErrorKind::Command(e) => server(&e.code_name, e.code, &e.message),
        ErrorKind::Write(WriteFailure::WriteError(e)) => {
            server(e.code_name.as_deref().unwrap_or(""), e.code, &e.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => server(&e.code_name, e.code, &e.message),
        ErrorKind::InsertMany(e) => {
            let writes = e.write_errors.iter().flatten();
            let mut parts: Vec<String> = writes.map(|w| server("", w.code, &w.message)).take(3).collect();
            parts.extend(e.write_concern_error.iter().map(|w| server(&w.code_name, w.code, &w.message)));
            if parts.is_empty() { error.kind.to_string() } else { parts.join("; ") }
        }
        kind => kind.to_string(),
    }
}

/// Server error code of a replacement document the server refuses (a top-level
/// `$`-prefixed field, refused in a replacement since MongoDB 5.0).
const DOLLAR_PREFIXED_FIELD: i32 = 52;

/// Writes a document's current version: a replace-with-upsert, or, when the server refuses
/// the document as a replacement (a top-level `$`-prefixed field), a pipeline update that
/// takes the whole document as data (`$replaceWith` of its `$literal`).
pub(crate) async fn upsert(
    target: &Collection<mongodb::bson::Document>,
    id: &Bson,
    document: mongodb::bson::Document,
) -> Result<(), mongodb::error::Error> {
    use mongodb::bson::doc;
    use mongodb::error::{ErrorKind, WriteFailure};
    match target.replace_one(doc! { "_id": id }, &document).upsert(true).await {
        Err(e) if matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DOLLAR_PREFIXED_FIELD) =>
        {
            let pipeline = vec![doc! { "$replaceWith": { "$literal": document } }];
            target.update_one(doc! { "_id": id }, pipeline).upsert(true).await.map(drop)
        }
        other => other.map(drop),
    }
}

impl Clients {
    async fn client(&self, endpoint: &str, uri: &str) -> Result<Client, StepError> {
        let mut clients = self.0.lock().await;
        if let Some(client) = clients.get(uri) {
            return Ok(client.clone());
        }
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            StepError::Refused(format!("endpoint `{endpoint}` is not a MongoDB connection string: {}", e.kind))
        })?;
        options.app_name = Some("handoff".to_owned());
        options.server_selection_timeout = Some(Duration::from_secs(15));
        // A server busy with a migration's scans answers heartbeats late; do not drop its
        // connections (and the copy in flight) for that.
        options.connect_timeout = Some(Duration::from_secs(30));
        let client = Client::with_options(options).map_err(|e| failed(&format!("endpoint `{endpoint}`"), e))?;
        clients.insert(uri.to_owned(), client.clone());
        Ok(client)
    }

    /// The collection a side names: its resource's endpoint and database, and its own
    /// collection (or the other side's, or the resource's only one).
    pub(crate) async fn resolve(&self, cx: &Context, side: &Side, other: &Side) -> Result<Coll, StepError> {
        let (resource, endpoint, uri) = cx.resource_endpoint(&side.resource)?;
        let client = self.client(endpoint, uri).await?;
        let database = match &resource.database {
            Some(name) => client.database(name),
            None => client.default_database().ok_or_else(|| {
                StepError::Refused(format!("resource `{}` names no database, and its endpoint has none", side.resource))
            })?,
        };
        let only = match resource.collections.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        };
        let name = side.collection.clone().or_else(|| other.collection.clone()).or(only).ok_or_else(|| {
            StepError::Refused(format!("say which collection of `{}` (`collection:`)", side.resource))
        })?;
        Ok(Coll { raw: database.collection(&name), label: format!("{}.{name}", side.resource) })
    }
}

/// A BSON value as canonical extended JSON (for checkpoints and reports).
pub(crate) fn to_json(value: &Bson) -> serde_json::Value {
    value.clone().into_canonical_extjson()
}

/// A value from canonical extended JSON.
pub(crate) fn from_json(value: &serde_json::Value) -> Result<Bson, StepError> {
    Bson::try_from(value.clone()).map_err(|e| StepError::Refused(format!("unreadable checkpoint value {value}: {e}")))
}
