//! The executor API.
//!
//! An executor is a named family of actions (`mongo.copy`, `traffic.shift`, ...). Each
//! action declares its parameter type; the type's JSON Schema becomes part of the plan
//! schema, and [`Executor::check`] adds the checks a schema cannot express (references to
//! resources, monotonic weights, ...).
//!
//! Architecture invariant: this crate knows no concrete executor; the built-in ones are
//! listed in `handoff-registry` only.

use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::{Effect, ParamsSchemaFn};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// What an executor declares about one of its actions.
#[derive(Clone, Copy)]
pub struct Action {
    /// Action name, the part after the dot in `uses:`.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// What running it does to the world.
    pub effect: Effect,
    /// Whether running it twice has the same effect as running it once.
    pub idempotent: bool,
    /// Metrics the action emits while it runs.
    pub emits: &'static [&'static str],
    /// JSON Schema of its `with:` parameters.
    pub params: ParamsSchemaFn,
}

impl Action {
    /// Declares an action whose `with:` parameters deserialize into `P`.
    pub const fn new<P: JsonSchema>(name: &'static str, summary: &'static str, effect: Effect) -> Action {
        Action { name, summary, effect, idempotent: true, emits: &[], params: schema_of::<P> }
    }

    /// The same action, declared not idempotent.
    pub const fn not_idempotent(self) -> Action {
        Action { idempotent: false, ..self }
    }

    /// The same action, declared to emit these metrics.
    pub const fn emitting(self, emits: &'static [&'static str]) -> Action {
        Action { emits, ..self }
    }
}

fn schema_of<P: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<P>()
}

/// An executor: a named family of actions.
pub trait Executor: Send + Sync {
    /// Executor name, the part before the dot in `uses:`.
    fn name(&self) -> &'static str;

    /// One line on what the executor acts on.
    fn summary(&self) -> &'static str;

    /// The actions it offers.
    fn actions(&self) -> &'static [Action];

    /// Checks a step's parameters beyond their schema (which has already passed), knowing
    /// where the step stands in its plan. Pointers in the returned issues are relative to
    /// the step's `with:`.
    fn check(&self, action: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue>;
}

/// Deserializes `with:` into an action's parameter type; a failure (which the schema
/// should already have caught) becomes one issue at the root of `with:`.
pub fn params<P: DeserializeOwned>(with: &serde_json::Value) -> Result<P, Vec<ParamIssue>> {
    P::deserialize(with).map_err(|e| vec![ParamIssue::invalid("", e.to_string())])
}
