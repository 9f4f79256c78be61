//! The handoff plan language.
//!
//! - [`model`]: the typed plan (`apiVersion: handoff.dev/v1alpha1`, `kind: MigrationPlan`).
//! - [`source`]: loading YAML safely, with a source position for every value.
//! - [`schema`]: the JSON Schema, generated from the types.
//! - [`check`]: tiered validation — YAML, then schema, then semantic lints — that collects
//!   every problem as a [`Diagnostic`] with a stable [`codes::Code`].
//!
//! Architecture invariant: this crate does no network or process I/O and knows no concrete
//! executor; executors reach it through the [`Catalog`] trait.

pub mod check;
pub mod codes;
pub mod diagnostic;
pub mod escape;
pub mod lint;
pub mod model;
pub mod promql;
pub mod redact;
pub mod schema;
pub mod simulation;
pub mod source;
pub mod units;

pub use check::{Checker, Report, Summary};
pub use diagnostic::{Diagnostic, Severity, Span};

/// Generates the JSON Schema of an action's `with:` parameters into a shared generator.
pub type ParamsSchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// The JSON Schema of an action's `with:` parameters.
#[derive(Debug, Clone, Copy)]
pub enum ParamsSchema {
    /// Generated from a Rust type (built-in executors).
    Typed(ParamsSchemaFn),
    /// Declared as JSON by an out-of-process executor.
    Json(&'static serde_json::Value),
}

/// What running an action does to the world; lints use it to find points of no return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads or measures only.
    Observe,
    /// Changes state in a way a rollback can undo.
    Change,
    /// Takes a verified, restorable backup.
    Backup,
    /// Destroys data; cannot be undone except by restoring a backup.
    Destroy,
}

/// What the lints need to know about an action.
#[derive(Debug, Clone, Copy)]
pub struct ActionFacts {
    /// What running it does.
    pub effect: Effect,
    /// Metrics it emits.
    pub emits: &'static [&'static str],
}

/// The executors known to a validation run.
pub trait Catalog {
    /// Names of every executor.
    fn executors(&self) -> Vec<&'static str>;

    /// Names of an executor's actions, or `None` when there is no such executor.
    fn actions(&self, executor: &str) -> Option<Vec<&'static str>>;

    /// Facts about an action, or `None` when it does not exist.
    fn facts(&self, uses: &model::Uses) -> Option<ActionFacts>;

    /// How long a step takes by design (a soak, a canary's holds), known offline; `None`
    /// when its length depends on the work it does, or the action is unknown.
    fn planned_duration(&self, uses: &model::Uses, with: &serde_json::Value) -> Option<std::time::Duration>;

    /// Checks a step's parameters beyond their schema; pointers are relative to `with:`.
    fn check_params(
        &self,
        uses: &model::Uses,
        with: &serde_json::Value,
        site: &lint::Site<'_>,
    ) -> Vec<lint::ParamIssue>;

    /// Every action's parameter schema, for [`schema::generate`].
    fn schemas(&self) -> Vec<schema::ActionSchema>;
}
