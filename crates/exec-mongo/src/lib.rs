//! The `mongo` executor: moves a collection between two MongoDB-API servers and proves the
//! move — initial copy, continuous change-stream sync, full verification, reconciliation,
//! reverse sync for the rollback window, archive/restore, and a guarded drop.

use handoff_executor::{Action, BoxFuture, Call, Context, Executor, StepError, params};
use handoff_plan::Effect;
use handoff_plan::codes;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, Plan, ResourceKind, Step};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

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
    /// Copy the source's indexes and collection options.
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
/// continuously, in the background, until a `mongo.stop_sync` step stops it.
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
#[derive(Debug, Deserialize, JsonSchema)]
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
}

/// `mongo.archive`: dump a collection to a compressed archive with a manifest.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// The collection archived.
    pub source: Side,
    /// Archive path (a directory receives `<collection>.archive.zst` and `manifest.json`).
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

/// Metrics the sync actions emit.
const SYNC_METRICS: &[&str] = &["sync_lag_seconds", "sync_applied_ops_per_second"];
/// Metrics `mongo.verify` emits.
const VERIFY_METRICS: &[&str] = &["data_discrepancies", "data_consistency_percent", "documents_verified"];

mod run;

/// The `mongo` executor. It keeps one client per endpoint for the whole run.
#[derive(Default)]
pub struct Mongo {
    clients: run::Clients,
    syncs: run::sync::Syncs,
}

impl Executor for Mongo {
    fn name(&self) -> &'static str {
        "mongo"
    }

    fn summary(&self) -> &'static str {
        "Moves and verifies MongoDB collections between two servers."
    }

    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] = &[
            Action::new::<Copy>("copy", "Initial copy in parallel _id ranges, resumable.", Effect::Change)
                .resumable()
                .emitting(&["documents_copied"]),
            Action::new::<Sync>("sync", "Continuous change-stream sync in the background.", Effect::Change)
                .background()
                .emitting(SYNC_METRICS),
            Action::new::<StopSync>("stop_sync", "Stop a background sync, after draining it.", Effect::Change),
            Action::new::<Verify>(
                "verify",
                "Compare every document (or a sample) of two collections.",
                Effect::Observe,
            )
            .emitting(VERIFY_METRICS),
            Action::new::<Reconcile>("reconcile", "Repair the differences verify finds.", Effect::Change)
                .emitting(&["documents_reconciled"]),
            Action::new::<Sync>(
                "reverse_sync",
                "Sync the new owner back to the old one for the rollback window.",
                Effect::Change,
            )
            .background()
            .emitting(SYNC_METRICS),
            Action::new::<Archive>("archive", "Dump a collection to a verified, compressed archive.", Effect::Backup),
            Action::new::<Restore>("restore", "Restore an archive.", Effect::Change),
            Action::new::<Drop>("drop", "Drop a collection that has a verified archive.", Effect::Destroy),
        ];
        ACTIONS
    }

    fn executes(&self, _: &str) -> bool {
        true
    }

    fn describe(&self, call: Call<'_>) -> String {
        fn side(with: &serde_json::Value, key: &str) -> String {
            let side = with.get(key).unwrap_or(&serde_json::Value::Null);
            let resource = side.get("resource").and_then(serde_json::Value::as_str).unwrap_or("?");
            match side.get("collection").and_then(serde_json::Value::as_str) {
                Some(collection) => format!("`{resource}.{collection}`"),
                None => format!("`{resource}`"),
            }
        }
        let with = call.with;
        let text = |key: &str| with.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let (source, target) = (side(with, "source"), side(with, "target"));
        match call.action {
            "copy" => format!("copy {source} to {target} in parallel `_id` ranges (resumable), then its indexes"),
            "sync" | "reverse_sync" => {
                format!("apply {source}'s change stream to {target} continuously, in the background")
            }
            "stop_sync" => format!(
                "stop the sync `{}`{}",
                text("sync"),
                if with.get("drain") == Some(&false.into()) { "" } else { " after draining it" }
            ),
            "verify" => match text("mode").as_str() {
                "sample" => format!("compare a random sample of {source} with {target}"),
                "hashed" => format!("compare every document of {source} with {target} by hash, plus exact counts"),
                _ => format!("compare every document of {source} with {target}, field by field, plus exact counts"),
            },
            "reconcile" if text("direction") == "target_to_source" => format!("repair {source} from {target}"),
            "reconcile" => format!("repair {target} from {source}"),
            "archive" => {
                format!("archive {source} to `{}` (compressed, with a manifest, restore-verified)", text("path"))
            }
            "restore" => format!("restore the archive `{}` into {target}", text("path")),
            "drop" => format!("drop {target}, archived by step `{}`", text("archive")),
            other => format!("mongo.{other}"),
        }
    }

    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            match call.action {
                "copy" => run::copy::run(&call.params::<Copy>()?, cx, &self.clients).await,
                "verify" => run::verify::run(&call.params::<Verify>()?, cx, &self.clients).await,
                "reconcile" => run::verify::reconcile(&call.params::<Reconcile>()?, cx, &self.clients).await,
                "sync" | "reverse_sync" => {
                    run::sync::start(&call.params::<Sync>()?, cx, &self.clients, &self.syncs).await
                }
                "stop_sync" => run::sync::stop(&call.params::<StopSync>()?, cx, &self.syncs).await,
                "archive" => run::archive::archive(&call.params::<Archive>()?, cx, &self.clients).await,
                "restore" => run::archive::restore(&call.params::<Restore>()?, cx, &self.clients).await,
                "drop" => run::archive::drop(&call.params::<Drop>()?, cx, &self.clients).await,
                other => Err(StepError::Refused(format!("mongo has no action `{other}`"))),
            }
        })
    }

    fn check(&self, action: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        match action {
            "copy" => match params::<Copy>(with) {
                Ok(p) => pair(plan, &p.source, &p.target),
                Err(e) => e,
            },
            "sync" | "reverse_sync" => match params::<Sync>(with) {
                Ok(p) => pair(plan, &p.source, &p.target),
                Err(e) => e,
            },
            "reconcile" => match params::<Reconcile>(with) {
                Ok(p) => pair(plan, &p.source, &p.target),
                Err(e) => e,
            },
            "verify" => match params::<Verify>(with) {
                Ok(p) => {
                    let mut issues = pair(plan, &p.source, &p.target);
                    if matches!(p.mode, VerifyMode::Sample) && p.sample_size.is_none() {
                        issues.push(ParamIssue::invalid("/mode", "`mode: sample` needs `sample_size`"));
                    }
                    issues
                }
                Err(e) => e,
            },
            "archive" => match params::<Archive>(with) {
                Ok(p) => side(plan, "/source", &p.source).into_iter().collect(),
                Err(e) => e,
            },
            "restore" => match params::<Restore>(with) {
                Ok(p) => side(plan, "/target", &p.target).into_iter().collect(),
                Err(e) => e,
            },
            "stop_sync" => match params::<StopSync>(with) {
                Ok(p) => earlier_step(site, "/sync", &p.sync, &["sync", "reverse_sync"]).err().into_iter().collect(),
                Err(e) => e,
            },
            "drop" => match params::<Drop>(with) {
                Ok(p) => {
                    let mut issues: Vec<ParamIssue> = side(plan, "/target", &p.target).into_iter().collect();
                    match earlier_step(site, "/archive", &p.archive, &["archive"]) {
                        Err(issue) => issues.push(issue),
                        Ok(step) => {
                            let archived = params::<Archive>(&serde_json::Value::Object(step.with.clone())).ok();
                            if let Some(archive) =
                                archived.filter(|a| collection_of(plan, &a.source) != collection_of(plan, &p.target))
                            {
                                issues.push(ParamIssue::invalid(
                                    "/archive",
                                    format!(
                                        "step `{}` archives {}, not {}, the collection this step drops",
                                        p.archive,
                                        describe(plan, &archive.source),
                                        describe(plan, &p.target)
                                    ),
                                ));
                            }
                        }
                    }
                    issues
                }
                Err(e) => e,
            },
            _ => Vec::new(),
        }
    }
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
    if !step.uses.strip_prefix("mongo.").is_some_and(|a| actions.contains(&a)) {
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
