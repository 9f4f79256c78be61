//! The `mongo` executor: moves a collection between two MongoDB-API servers and proves the
//! move — initial copy, continuous change-stream sync, full verification, reconciliation,
//! reverse sync for the rollback window, archive/restore, and a guarded drop.

use handoff_executor::Executor;
use handoff_plan::codes;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, Plan, ResourceKind, Step};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A collection on one of the plan's `mongodb` resources.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Side {
    /// The `mongodb` resource.
    pub resource: Id,
    /// Collection name; defaults to the other side's collection.
    #[serde(default)]
    pub collection: Option<String>,
}

/// `mongo.copy`: initial copy of a collection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Copy {
    /// Where documents come from (the current owner).
    pub source: Side,
    /// Where they go (the new owner).
    pub target: Side,
    /// Number of `_id` ranges copied in parallel.
    #[serde(default)]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: Option<u32>,
    /// Documents per unordered bulk write.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<u32>,
    /// Fewest documents in a range read in parallel with others (default 500000): a
    /// smaller range costs one more query than it saves. Ranges per `_id` type are at most
    /// `parallelism`; a copy resumes inside a range, so small ranges are never needed for
    /// checkpoints.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub range_size: Option<u64>,
    /// Copy the source's indexes and collection options: its collation (the target is
    /// created with it before the first document; an existing target must have it) and its
    /// validation rules (`validator`, `validationLevel`, `validationAction`, set after the
    /// last document, so documents the source let in are not refused). Other options
    /// (capped, time series, clustered) are not copied.
    #[serde(default = "yes")]
    pub copy_indexes: bool,
    /// Upper bound on documents written per second (no bound when absent).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_docs_per_second: Option<u64>,
}

fn yes() -> bool {
    true
}

/// `mongo.sync` and `mongo.reverse_sync`: apply the source's change stream to the target
/// continuously, in the background, until a `mongo.stop_sync` step stops it. It starts
/// where an earlier `mongo.copy` of the source started — except in a rollback, where it
/// starts from the present (follow it with a `mongo.reconcile` with `delete_extra`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// Whose changes are applied.
    pub source: Side,
    /// Where they are applied.
    pub target: Side,
    /// How often the resume token is checkpointed.
    #[serde(default)]
    pub checkpoint_every: Option<Duration>,
}

/// `mongo.stop_sync`: stop a background sync started by an earlier step.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopSync {
    /// Id of the `mongo.sync` or `mongo.reverse_sync` step to stop.
    pub sync: Id,
    /// Wait until the sync has applied every change made before this step.
    #[serde(default = "yes")]
    pub drain: bool,
}

/// How `mongo.verify` compares.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Every document, field by field.
    #[default]
    Full,
    /// Every document, by hash of its canonical form (less traffic, no field-level report).
    Hashed,
    /// `sample_size` random documents (the seed's check; misses rare corruption).
    Sample,
}

/// `mongo.verify`: compare two collections and emit consistency metrics.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// Reference side (the owner of truth).
    pub source: Side,
    /// Side checked against it.
    pub target: Side,
    /// What is compared.
    #[serde(default)]
    pub mode: VerifyMode,
    /// Documents sampled in `sample` mode.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub sample_size: Option<u64>,
    /// Field order does not matter (`{a, b}` equals `{b, a}`).
    #[serde(default = "yes")]
    pub ignore_field_order: bool,
    /// Numbers compare by value across types (an `int` equals the same `long`).
    #[serde(default)]
    pub numeric_by_value: bool,
    /// Count difference tolerated. Default 0: any missing document is a discrepancy.
    #[serde(default)]
    pub count_tolerance: u64,
    /// Example ids reported per kind of discrepancy.
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub max_examples: Option<u32>,
}

/// Which way `mongo.reconcile` repairs.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileDirection {
    /// Make the target equal the source.
    SourceToTarget,
    /// Make the source equal the target.
    TargetToSource,
}

/// `mongo.reconcile`: repair what `mongo.verify` finds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// One side.
    pub source: Side,
    /// The other side.
    pub target: Side,
    /// Which side is repaired.
    pub direction: ReconcileDirection,
    /// Also delete documents only the repaired side has.
    #[serde(default)]
    pub delete_extra: bool,
    /// Field order does not matter, as in the paired `mongo.verify`; with `false`, a
    /// document whose fields only differ in order is rewritten in the truth's order.
    #[serde(default = "yes")]
    pub ignore_field_order: bool,
    /// Numbers compare by value across types, as in the paired `mongo.verify`; with
    /// `false`, an `int` where the truth has a `long` is rewritten.
    #[serde(default)]
    pub numeric_by_value: bool,
}

/// `mongo.archive`: dump a collection to a compressed archive with a manifest.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// The collection archived.
    pub source: Side,
    /// Archive path: a directory that receives `<collection>.bson.gz` (the documents as a
    /// gzip'd BSON stream, the format of `mongodump`) and `manifest.json`.
    pub path: String,
    /// Restore the archive into a scratch collection and compare, proving it restorable.
    #[serde(default = "yes")]
    pub verify_restore: bool,
}

/// `mongo.restore`: restore an archive made by `mongo.archive`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    /// Archive path given to `mongo.archive`.
    pub path: String,
    /// Where to restore.
    pub target: Side,
}

/// `mongo.drop`: drop a collection — only with a verified archive taken after its last write.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drop {
    /// The collection dropped.
    pub target: Side,
    /// Id of the `mongo.archive` step whose archive must be verified and newer than the
    /// collection's last write.
    pub archive: Id,
}

mod actions;
mod run;

pub use actions::{
    ArchiveCollection, CopyCollection, DropCollection, ReconcileCollections, RestoreArchive, StartSync, StopSyncing,
    VerifyCollections,
};
pub use run::archive::{ArchiveOutput, DropOutput, RestoreOutput};
pub use run::copy::CopyOutput;
pub use run::sync::{StopOutput, SyncOutput};
pub use run::verify::{Examples, ReconcileOutput, VerifyOutput};

/// The `mongo` executor. Its actions share one client per endpoint and the running syncs
/// for the whole run.
pub fn executor() -> Executor {
    let shared = std::sync::Arc::new(actions::Shared::default());
    Executor::new("mongo", "Moves and verifies MongoDB collections between two servers.")
        .with(CopyCollection(shared.clone()))
        .with(StartSync::<false>(shared.clone()))
        .with(StopSyncing(shared.clone()))
        .with(VerifyCollections(shared.clone()))
        .with(ReconcileCollections(shared.clone()))
        .with(StartSync::<true>(shared.clone()))
        .with(ArchiveCollection(shared.clone()))
        .with(RestoreArchive(shared.clone()))
        .with(DropCollection(shared))
}

/// Checks a `mongodb` resource reference.
fn side(plan: &Plan, pointer: &str, side: &Side) -> Option<ParamIssue> {
    resource_ref(plan, &format!("{pointer}/resource"), &side.resource, &[ResourceKind::Mongodb])
}

fn pair(plan: &Plan, source: &Side, target: &Side) -> Vec<ParamIssue> {
    side(plan, "/source", source).into_iter().chain(side(plan, "/target", target)).collect()
}

/// The resource and collection a side names (the resource's only collection by default).
fn collection_of<'a>(plan: &'a Plan, side: &'a Side) -> (&'a Id, Option<&'a str>) {
    let default = plan.resources.get(&side.resource).and_then(|r| match r.collections.as_slice() {
        [only] => Some(only.as_str()),
        _ => None,
    });
    (&side.resource, side.collection.as_deref().or(default))
}

fn describe(plan: &Plan, side: &Side) -> String {
    match collection_of(plan, side) {
        (resource, Some(collection)) => format!("`{resource}.{collection}`"),
        (resource, None) => format!("`{resource}`"),
    }
}

/// The step `id`, which must use one of `mongo.<actions>` and run before this one.
fn earlier_step<'a>(site: &Site<'a>, pointer: &str, id: &Id, actions: &[&str]) -> Result<&'a Step, ParamIssue> {
    let wanted = || actions.iter().map(|a| format!("`mongo.{a}`")).collect::<Vec<_>>().join(" or ");
    let Some((_, step)) = site.plan.all_steps().find(|(_, step)| &step.id == id) else {
        return Err(ParamIssue::new(codes::UNDEFINED_PHASE, pointer, format!("no step has the id `{id}`")));
    };
    if !(step.uses.executor == "mongo" && actions.contains(&step.uses.action.as_str())) {
        return Err(ParamIssue::invalid(pointer, format!("step `{id}` uses `{}`, not {}", step.uses, wanted())));
    }
    if !site.steps_before().any(|s| &s.id == id) {
        return Err(ParamIssue::invalid(
            pointer,
            format!("step `{id}` does not run before this step (it must come earlier, outside any rollback)"),
        ));
    }
    Ok(step)
}
