//! `mongo.archive`, `mongo.restore` and the guarded `mongo.drop`.
//!
//! An archive is a directory: `<collection>.bson.gz` (the documents as a BSON stream, the
//! format of `mongodump`, gzip-compressed) and `manifest.json` (counts, the SHA-256 of the
//! stream, an order-independent digest of the content, the indexes). Archiving restores the
//! archive into a scratch collection and compares it with the original, document by
//! document, before it reports success; a drop needs such an archive of exactly the
//! collection's current content.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures_util::TryStreamExt;
use handoff_executor::{Context, StepError};
use mongodb::IndexModel;
use mongodb::bson::{RawDocumentBuf, doc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::verify::{Canon, compare_all};
use super::{Clients, Coll, failed};
use crate::{Archive, Drop, Restore};

/// What `manifest.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    source: String,
    collection: String,
    documents: u64,
    /// SHA-256 of the uncompressed BSON stream.
    sha256: String,
    /// XOR of the SHA-256 of every document: equal iff the same documents, in any order.
    content: String,
    indexes: Vec<Value>,
    created_at: String,
}

/// What `mongo.archive` wrote.
#[derive(Debug, Serialize, Deserialize)]
pub struct ArchiveOutput {
    /// The archive's directory.
    pub path: PathBuf,
    /// `resource.collection` archived.
    pub source: String,
    /// Documents archived.
    pub documents: u64,
    /// SHA-256 of the archive's uncompressed BSON stream.
    pub sha256: String,
    /// Order-independent digest of the archived documents.
    pub content: String,
    /// A restore into a scratch collection matched the source.
    pub verified: bool,
}

/// What `mongo.restore` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreOutput {
    /// The archive's directory.
    pub path: PathBuf,
    /// `resource.collection` restored into.
    pub target: String,
    /// Documents restored.
    pub restored: u64,
    /// Documents in the target afterwards.
    pub documents_now: u64,
}

/// What `mongo.drop` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct DropOutput {
    /// `resource.collection` dropped.
    pub dropped: String,
    /// Documents it held.
    pub documents: u64,
    /// The archive that holds them.
    pub archive: PathBuf,
    /// An earlier attempt had dropped it already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_dropped: bool,
}

/// Lowercase hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    let what = format!("{what} {}", path.display());
    move |e| StepError::Failed(format!("{what}: {e}"))
}

fn directory(cx: &Context, path: &str) -> PathBuf {
    cx.policy.base_dir.join(path)
}

fn data_file(dir: &Path, collection: &str) -> PathBuf {
    dir.join(format!("{collection}.bson.gz"))
}

/// The order-independent digest of a collection's content.
async fn content_digest(coll: &Coll) -> Result<(String, u64), StepError> {
    let what = || format!("reading {}", coll.label);
    let mut cursor = coll.raw.find(doc! {}).batch_size(1000).await.map_err(|e| failed(&what(), e))?;
    let (mut digest, mut count) = ([0u8; 32], 0);
    while let Some(raw) = cursor.try_next().await.map_err(|e| failed(&what(), e))? {
        let one: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
        digest.iter_mut().zip(one).for_each(|(d, o)| *d ^= o);
        count += 1;
    }
    Ok((hex(&digest), count))
}

fn collection_name(coll: &Coll) -> String {
    coll.raw.name().to_owned()
}

/// `mongo.archive`.
pub(crate) async fn archive(params: &Archive, cx: &Context, clients: &Clients) -> Result<ArchiveOutput, StepError> {
    let source = clients.resolve(cx, &params.source, &params.source).await?;
    let dir = directory(cx, &params.path);
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let name = collection_name(&source);
    let data = data_file(&dir, &name);
    let temp = data.with_extension("gz.tmp");
    let file = std::fs::File::create(&temp).map_err(io("creating", &temp))?;
    let mut gzip = GzEncoder::new(BufWriter::new(file), Compression::fast());
    let (mut stream_hash, mut content, mut documents) = (Sha256::new(), [0u8; 32], 0u64);
    let what = || format!("reading {}", source.label);
    let mut cursor = source.raw.find(doc! {}).batch_size(1000).await.map_err(|e| failed(&what(), e))?;
    while let Some(raw) = cursor.try_next().await.map_err(|e| failed(&what(), e))? {
        let bytes = raw.as_bytes();
        stream_hash.update(bytes);
        let one: [u8; 32] = Sha256::digest(bytes).into();
        content.iter_mut().zip(one).for_each(|(d, o)| *d ^= o);
        gzip.write_all(bytes).map_err(io("writing", &temp))?;
        documents += 1;
        if cx.cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
    }
    let writer = gzip.finish().map_err(io("writing", &temp))?;
    let file = writer.into_inner().map_err(|e| io("writing", &temp)(e.into_error()))?;
    file.sync_all().map_err(io("syncing", &temp))?;
    std::fs::rename(&temp, &data).map_err(io("renaming", &temp))?;
    let indexes: Vec<IndexModel> = source
        .raw
        .list_indexes()
        .await
        .map_err(|e| failed(&format!("listing the indexes of {}", source.label), e))?
        .try_collect()
        .await
        .map_err(|e| failed(&format!("listing the indexes of {}", source.label), e))?;
    let manifest = Manifest {
        source: source.label.clone(),
        collection: name.clone(),
        documents,
        sha256: hex(&stream_hash.finalize()),
        content: hex(&content),
        indexes: indexes.iter().filter_map(|i| serde_json::to_value(i).ok()).collect(),
        created_at: jiff_now(),
    };
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap_or_default())
        .map_err(io("writing", &manifest_path))?;
    let mut verified = false;
    if params.verify_restore {
        // Restore into a scratch collection beside the original and compare everything.
        let scratch_name = format!("{name}_handoff_restore_check");
        let scratch = Coll {
            raw: source.raw.client().database(source.raw.namespace().db.as_str()).collection(&scratch_name),
            label: format!("{}_handoff_restore_check", source.label),
        };
        scratch.raw.drop().await.map_err(|e| failed(&format!("clearing {}", scratch.label), e))?;
        load(&dir, &manifest, &scratch).await?;
        let findings =
            compare_all(&source, &scratch, Canon { ignore_field_order: false, numeric_by_value: false }, 5, cx).await;
        scratch.raw.drop().await.map_err(|e| failed(&format!("dropping {}", scratch.label), e))?;
        let findings = findings?;
        if findings.missing + findings.extra + findings.different > 0 {
            return Err(StepError::Failed(format!(
                "the archive of {} did not restore identically ({} missing, {} extra, {} different); it is not a usable backup",
                source.label, findings.missing, findings.extra, findings.different
            )));
        }
        verified = true;
    }
    Ok(ArchiveOutput {
        path: dir,
        source: source.label,
        documents,
        sha256: manifest.sha256,
        content: manifest.content,
        verified,
    })
}

fn jiff_now() -> String {
    mongodb::bson::DateTime::now().try_to_rfc3339_string().unwrap_or_default()
}

/// Reads an archive back into `target`, checking its hash and count on the way.
async fn load(dir: &Path, manifest: &Manifest, target: &Coll) -> Result<u64, StepError> {
    let data = data_file(dir, &manifest.collection);
    let file = std::fs::File::open(&data).map_err(io("opening", &data))?;
    let mut reader = BufReader::new(GzDecoder::new(file));
    let (mut hash, mut count, mut batch) = (Sha256::new(), 0u64, Vec::with_capacity(1000));
    loop {
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io("reading", &data)(e)),
        }
        let size = u32::from_le_bytes(length) as usize;
        if !(5..=16 * 1024 * 1024 + 16 * 1024).contains(&size) {
            return Err(StepError::Failed(format!("{} is corrupt: a document of {size} bytes", data.display())));
        }
        let mut bytes = length.to_vec();
        bytes.resize(size, 0);
        reader.read_exact(&mut bytes[4..]).map_err(io("reading", &data))?;
        hash.update(&bytes);
        let document = RawDocumentBuf::from_bytes(bytes)
            .map_err(|e| StepError::Failed(format!("{} is corrupt: {e}", data.display())))?;
        batch.push(document);
        count += 1;
        if batch.len() == 1000 {
            // Documents already there (a restore run again after a crash) are not errors.
            super::copy::write(target, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        super::copy::write(target, batch).await?;
    }
    if hex(&hash.finalize()) != manifest.sha256 || count != manifest.documents {
        return Err(StepError::Failed(format!(
            "{} does not match its manifest ({count} documents read, {} expected, or a different SHA-256)",
            data.display(),
            manifest.documents
        )));
    }
    let indexes: Vec<IndexModel> = manifest
        .indexes
        .iter()
        .filter_map(|i| serde_json::from_value::<IndexModel>(i.clone()).ok())
        .filter(|m| m.options.as_ref().and_then(|o| o.name.as_deref()) != Some("_id_"))
        .collect();
    if !indexes.is_empty() {
        target
            .raw
            .create_indexes(indexes)
            .await
            .map_err(|e| failed(&format!("creating indexes on {}", target.label), e))?;
    }
    Ok(count)
}

fn read_manifest(dir: &Path) -> Result<Manifest, StepError> {
    let path = dir.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StepError::Failed(format!("{}: not an archive manifest: {e}", path.display())))
}

/// `mongo.restore`.
pub(crate) async fn restore(params: &Restore, cx: &Context, clients: &Clients) -> Result<RestoreOutput, StepError> {
    let target = clients.resolve(cx, &params.target, &params.target).await?;
    let dir = directory(cx, &params.path);
    let manifest = read_manifest(&dir)?;
    let restored = load(&dir, &manifest, &target).await?;
    let (_, count) = content_digest(&target).await?;
    Ok(RestoreOutput { path: dir, target: target.label, restored, documents_now: count })
}

/// `mongo.drop`: only with a verified archive of exactly the collection's current content,
/// and (outside simulation) a person's confirmation.
pub(crate) async fn drop(params: &Drop, cx: &Context, clients: &Clients) -> Result<DropOutput, StepError> {
    let target = clients.resolve(cx, &params.target, &params.target).await?;
    let archive = cx
        .output_of::<ArchiveOutput>(params.archive.as_str())
        .ok_or_else(|| {
            StepError::Refused(format!(
                "step `{}` has not archived anything in this run; refusing to drop {}",
                params.archive, target.label
            ))
        })?
        .map_err(|e| StepError::Refused(format!("step `{}` is not an archive: {e}", params.archive)))?
        .detail;
    if !archive.verified {
        return Err(StepError::Refused(format!(
            "the archive of step `{}` was not verified by a restore; refusing to drop",
            params.archive
        )));
    }
    let dir = archive.path;
    let manifest = read_manifest(&dir)?;
    if manifest.sha256 != archive.sha256 {
        return Err(StepError::Refused(format!(
            "{} changed since step `{}` wrote it; refusing to drop",
            dir.display(),
            params.archive
        )));
    }
    let (content, count) = content_digest(&target).await?;
    let database = target.raw.client().database(target.raw.namespace().db.as_str());
    let exists = database
        .list_collection_names()
        .await
        .map_err(|e| failed(&format!("listing the collections of {}", target.label), e))?
        .contains(&collection_name(&target));
    if !exists {
        // Dropped already (the step ran before a crash): nothing left to do.
        return Ok(DropOutput { dropped: target.label, documents: 0, archive: dir, already_dropped: true });
    }
    if content != manifest.content {
        return Err(StepError::Refused(format!(
            "{} changed since it was archived ({count} documents now, {} archived): archive it again before dropping",
            target.label, manifest.documents
        )));
    }
    if !cx.policy.simulation {
        match cx.decision() {
            Some(decision) if decision.approved => {}
            Some(decision) => {
                return Err(StepError::Failed(format!("{} declined dropping {}", decision.by, target.label)));
            }
            None => {
                return Err(StepError::NeedsDecision {
                    key: cx.decision_key(),
                    prompt: format!(
                        "drop {} for good? Its archive at {} is verified ({count} documents)",
                        target.label,
                        dir.display()
                    ),
                });
            }
        }
    }
    target.raw.drop().await.map_err(|e| failed(&format!("dropping {}", target.label), e))?;
    Ok(DropOutput { dropped: target.label, documents: count, archive: dir, already_dropped: false })
}
