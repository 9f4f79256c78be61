//! The `mongo` actions: one type each, declaring, checking, describing and running a step.

use std::sync::Arc;

use handoff_executor::{Action, Context, Declaration, StepError, StepOutput};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site};

use crate::run::archive::{ArchiveOutput, DropOutput, RestoreOutput};
use crate::run::copy::CopyOutput;
use crate::run::sync::{StopOutput, SyncOutput};
use crate::run::verify::{ReconcileOutput, VerifyOutput};
use crate::run::{self, Clients};
use crate::{
    Archive, Copy, Drop, Reconcile, ReconcileDirection, Restore, Side, StopSync, Sync, Verify, VerifyMode,
    collection_of, describe, earlier_step, pair, side,
};

/// Metrics the sync actions emit.
const SYNC_METRICS: &[&str] = &["sync_lag_seconds", "sync_applied_ops_per_second", "sync_refused_documents"];
/// Metrics `mongo.verify` emits.
const VERIFY_METRICS: &[&str] = &["data_discrepancies", "data_consistency_percent", "documents_verified"];

/// What the actions of one run share: a client per endpoint, and the running syncs.
#[derive(Default)]
pub(crate) struct Shared {
    clients: Clients,
    syncs: run::sync::Syncs,
}

/// A side as the plan names it, for descriptions.
fn label(side: &Side) -> String {
    match &side.collection {
        Some(collection) => format!("`{}.{collection}`", side.resource),
        None => format!("`{}`", side.resource),
    }
}

/// `mongo.copy`.
pub struct CopyCollection(pub(crate) Arc<Shared>);

impl Action for CopyCollection {
    type Params = Copy;
    type Output = CopyOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Copy>("copy", "Initial copy in parallel _id ranges, resumable.", Effect::Change)
            .resumable()
            .emitting(&["documents_copied"]);

    fn check(&self, copy: &Copy, site: &Site<'_>) -> Vec<ParamIssue> {
        pair(site.plan, &copy.source, &copy.target)
    }

    fn describe(&self, copy: &Copy) -> String {
        let (source, target) = (label(&copy.source), label(&copy.target));
        format!(
            "copy {source} to {target} in parallel `_id` ranges (resumable), then its indexes, collation and validation rules"
        )
    }

    async fn execute(&self, copy: Copy, cx: &Context) -> Result<StepOutput<CopyOutput>, StepError> {
        run::copy::run(&copy, cx, &self.0.clients).await.map(StepOutput::new)
    }
}

/// `mongo.sync` (`StartSync<false>`) and `mongo.reverse_sync` (`StartSync<true>`): the
/// same work, declared apart for the rollback window.
pub struct StartSync<const REVERSE: bool>(pub(crate) Arc<Shared>);

impl<const REVERSE: bool> Action for StartSync<REVERSE> {
    type Params = Sync;
    type Output = SyncOutput;
    const DECLARATION: Declaration = if REVERSE {
        Declaration::new::<Sync>(
            "reverse_sync",
            "Sync the new owner back to the old one for the rollback window.",
            Effect::Change,
        )
    } else {
        Declaration::new::<Sync>("sync", "Continuous change-stream sync in the background.", Effect::Change)
    }
    .background()
    .emitting(SYNC_METRICS);

    fn check(&self, sync: &Sync, site: &Site<'_>) -> Vec<ParamIssue> {
        pair(site.plan, &sync.source, &sync.target)
    }

    fn describe(&self, sync: &Sync) -> String {
        let (source, target) = (label(&sync.source), label(&sync.target));
        format!("apply {source}'s change stream to {target} continuously, in the background")
    }

    async fn execute(&self, sync: Sync, cx: &Context) -> Result<StepOutput<SyncOutput>, StepError> {
        run::sync::start(&sync, cx, &self.0.clients, &self.0.syncs).await.map(StepOutput::new)
    }
}

/// `mongo.stop_sync`.
pub struct StopSyncing(pub(crate) Arc<Shared>);

impl Action for StopSyncing {
    type Params = StopSync;
    type Output = StopOutput;
    const DECLARATION: Declaration =
        Declaration::new::<StopSync>("stop_sync", "Stop a background sync, after draining it.", Effect::Change);

    fn check(&self, stop: &StopSync, site: &Site<'_>) -> Vec<ParamIssue> {
        earlier_step(site, "/sync", &stop.sync, &["sync", "reverse_sync"]).err().into_iter().collect()
    }

    fn describe(&self, stop: &StopSync) -> String {
        format!("stop the sync `{}`{}", stop.sync, if stop.drain { " after draining it" } else { "" })
    }

    async fn execute(&self, stop: StopSync, cx: &Context) -> Result<StepOutput<StopOutput>, StepError> {
        let output = run::sync::stop(&stop, cx, &self.0.syncs).await?;
        Ok(StepOutput::new(output).stopping(stop.sync.to_string()))
    }
}

/// `mongo.verify`.
pub struct VerifyCollections(pub(crate) Arc<Shared>);

impl Action for VerifyCollections {
    type Params = Verify;
    type Output = VerifyOutput;
    const DECLARATION: Declaration = Declaration::new::<Verify>(
        "verify",
        "Compare every document (or a sample) of two collections.",
        Effect::Observe,
    )
    .emitting(VERIFY_METRICS);

    fn check(&self, verify: &Verify, site: &Site<'_>) -> Vec<ParamIssue> {
        let mut issues = pair(site.plan, &verify.source, &verify.target);
        if matches!(verify.mode, VerifyMode::Sample) && verify.sample_size.is_none() {
            issues.push(ParamIssue::invalid("/mode", "`mode: sample` needs `sample_size`"));
        }
        issues
    }

    fn describe(&self, verify: &Verify) -> String {
        let (source, target) = (label(&verify.source), label(&verify.target));
        match verify.mode {
            VerifyMode::Sample => format!(
                "compare a random sample of {} documents of {source} with {target}",
                verify.sample_size.unwrap_or(1000)
            ),
            VerifyMode::Hashed => {
                format!("compare every document of {source} with {target} by hash, plus exact counts")
            }
            VerifyMode::Full => {
                format!("compare every document of {source} with {target}, field by field, plus exact counts")
            }
        }
    }

    async fn execute(&self, verify: Verify, cx: &Context) -> Result<StepOutput<VerifyOutput>, StepError> {
        let output = run::verify::run(&verify, cx, &self.0.clients).await?;
        let integrity = output.integrity();
        Ok(StepOutput::new(output).with_integrity(integrity))
    }
}

/// `mongo.reconcile`.
pub struct ReconcileCollections(pub(crate) Arc<Shared>);

impl Action for ReconcileCollections {
    type Params = Reconcile;
    type Output = ReconcileOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Reconcile>("reconcile", "Repair the differences verify finds.", Effect::Change)
            .emitting(&["documents_reconciled"]);

    fn check(&self, reconcile: &Reconcile, site: &Site<'_>) -> Vec<ParamIssue> {
        pair(site.plan, &reconcile.source, &reconcile.target)
    }

    fn describe(&self, reconcile: &Reconcile) -> String {
        let (source, target) = (label(&reconcile.source), label(&reconcile.target));
        match reconcile.direction {
            ReconcileDirection::TargetToSource => format!("repair {source} from {target}"),
            ReconcileDirection::SourceToTarget => format!("repair {target} from {source}"),
        }
    }

    async fn execute(&self, reconcile: Reconcile, cx: &Context) -> Result<StepOutput<ReconcileOutput>, StepError> {
        run::verify::reconcile(&reconcile, cx, &self.0.clients).await.map(StepOutput::new)
    }
}

/// `mongo.archive`.
pub struct ArchiveCollection(pub(crate) Arc<Shared>);

impl Action for ArchiveCollection {
    type Params = Archive;
    type Output = ArchiveOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Archive>("archive", "Dump a collection to a verified, compressed archive.", Effect::Backup);

    fn check(&self, archive: &Archive, site: &Site<'_>) -> Vec<ParamIssue> {
        side(site.plan, "/source", &archive.source).into_iter().collect()
    }

    fn describe(&self, archive: &Archive) -> String {
        format!(
            "archive {} to `{}` (compressed, with a manifest, restore-verified)",
            label(&archive.source),
            archive.path
        )
    }

    async fn execute(&self, archive: Archive, cx: &Context) -> Result<StepOutput<ArchiveOutput>, StepError> {
        run::archive::archive(&archive, cx, &self.0.clients).await.map(StepOutput::new)
    }
}

/// `mongo.restore`.
pub struct RestoreArchive(pub(crate) Arc<Shared>);

impl Action for RestoreArchive {
    type Params = Restore;
    type Output = RestoreOutput;
    const DECLARATION: Declaration = Declaration::new::<Restore>("restore", "Restore an archive.", Effect::Change);

    fn check(&self, restore: &Restore, site: &Site<'_>) -> Vec<ParamIssue> {
        side(site.plan, "/target", &restore.target).into_iter().collect()
    }

    fn describe(&self, restore: &Restore) -> String {
        format!("restore the archive `{}` into {}", restore.path, label(&restore.target))
    }

    async fn execute(&self, restore: Restore, cx: &Context) -> Result<StepOutput<RestoreOutput>, StepError> {
        run::archive::restore(&restore, cx, &self.0.clients).await.map(StepOutput::new)
    }
}

/// `mongo.drop`.
pub struct DropCollection(pub(crate) Arc<Shared>);

impl Action for DropCollection {
    type Params = Drop;
    type Output = DropOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Drop>("drop", "Drop a collection that has a verified archive.", Effect::Destroy);

    fn check(&self, drop: &Drop, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let mut issues: Vec<ParamIssue> = side(plan, "/target", &drop.target).into_iter().collect();
        let step = match earlier_step(site, "/archive", &drop.archive, &["archive"]) {
            Ok(step) => step,
            Err(issue) => {
                issues.push(issue);
                return issues;
            }
        };
        let archived = serde_json::from_value::<Archive>(serde_json::Value::Object(step.with.clone())).ok();
        if let Some(archive) = archived.filter(|a| collection_of(plan, &a.source) != collection_of(plan, &drop.target))
        {
            issues.push(ParamIssue::invalid(
                "/archive",
                format!(
                    "step `{}` archives {}, not {}, the collection this step drops",
                    drop.archive,
                    describe(plan, &archive.source),
                    describe(plan, &drop.target)
                ),
            ));
        }
        issues
    }

    fn describe(&self, drop: &Drop) -> String {
        format!("drop {}, archived by step `{}`", label(&drop.target), drop.archive)
    }

    async fn execute(&self, drop: Drop, cx: &Context) -> Result<StepOutput<DropOutput>, StepError> {
        run::archive::drop(&drop, cx, &self.0.clients).await.map(StepOutput::new)
    }
}
