//! The executor API.
//!
//! An executor is a named family of actions (`mongo.copy`, `traffic.shift`, ...). Each
//! action declares its parameter type; the type's JSON Schema becomes part of the plan
//! schema, and [`Executor::check`] adds the checks a schema cannot express (references to
//! resources, monotonic weights, ...).
//!
//! To run, the engine hands an executor a [`Call`] and a [`Context`] (endpoints, clock,
//! checkpoint, metrics sink, cancellation); [`Executor::compensate`] undoes a completed
//! step when its phase rolls back.
//!
//! Architecture invariant: this crate knows no concrete executor; the built-in ones are
//! listed in `handoff-registry` only.

use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::{Effect, ParamsSchema};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod clock;
pub mod context;
pub mod decision;
pub mod http;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use context::{Context, Decision, Endpoints, Lifecycle, LifecycleFeed, Policy, Recorder, Sink, expand_env};
pub use decision::DecisionKey;

/// A boxed, sendable future (the executor trait stays object-safe).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// Whether an interrupted run continues from its last checkpoint instead of starting
    /// over.
    pub resumable: bool,
    /// Whether the step keeps working in the background after it finished (a continuous
    /// sync): the engine starts it again, from its checkpoint, when a run resumes, until a
    /// later step's output names it under `stops`.
    pub background: bool,
    /// Metrics the action emits while it runs.
    pub emits: &'static [&'static str],
    /// JSON Schema of its `with:` parameters.
    pub params: ParamsSchema,
}

impl Action {
    /// Declares an action whose parameter schema is given as JSON (out-of-process
    /// executors).
    pub const fn declared(
        name: &'static str,
        summary: &'static str,
        effect: Effect,
        params: &'static serde_json::Value,
    ) -> Action {
        Action::with_schema(name, summary, effect, ParamsSchema::Json(params))
    }

    const fn with_schema(name: &'static str, summary: &'static str, effect: Effect, params: ParamsSchema) -> Action {
        Action { name, summary, effect, idempotent: true, resumable: false, background: false, emits: &[], params }
    }

    /// Declares an action whose `with:` parameters deserialize into `P`.
    pub const fn new<P: JsonSchema>(name: &'static str, summary: &'static str, effect: Effect) -> Action {
        Action::with_schema(name, summary, effect, ParamsSchema::Typed(schema_of::<P>))
    }

    /// The same action, declared to keep working in the background after it finished
    /// (and to resume from its checkpoints).
    pub const fn background(self) -> Action {
        Action { background: true, resumable: true, ..self }
    }

    /// The same action, declared to resume from its checkpoints.
    pub const fn resumable(self) -> Action {
        Action { resumable: true, ..self }
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

/// One step as the engine hands it to its executor.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The action (after the dot in `uses:`).
    pub action: &'a str,
    /// The step's `with:` parameters, already validated against the action's schema.
    pub with: &'a Value,
}

impl Call<'_> {
    /// The step's parameters as the action's type; refused (the schema should have caught
    /// it) when they do not fit.
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, StepError> {
        P::deserialize(self.with)
            .map_err(|e| StepError::Refused(format!("invalid parameters of `{}`: {e}", self.action)))
    }
}

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The step failed; its retry policy decides whether it runs again.
    #[error("{0}")]
    Failed(String),
    /// The step cannot run as configured; retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// The step waits for a person's decision (`handoff approve <key>`).
    #[error("waiting for a person: {prompt} (decide with `handoff approve … {key}`)")]
    NeedsDecision {
        /// Decision key.
        key: String,
        /// What the person is asked.
        prompt: String,
    },
    /// The run was cancelled while the step ran.
    #[error("cancelled")]
    Cancelled,
}

/// What undoing a completed step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compensation {
    /// The step changed nothing that needs undoing.
    NotNeeded,
    /// The step's effect was undone.
    Undone(String),
    /// The step cannot be undone by itself; the phase's rollback steps must cover it.
    LeftToRollback,
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

    /// Whether this release can execute `action` (the engine refuses a plan with a step it
    /// cannot execute before running anything).
    fn executes(&self, action: &str) -> bool {
        let _ = action;
        false
    }

    /// Refuses a step before the run starts when the run's policy does not allow it (the
    /// reason says how to allow it).
    fn preflight(&self, action: &str, policy: &Policy) -> Result<(), String> {
        let _ = (action, policy);
        Ok(())
    }

    /// What running the step would do, in one line, for dry runs and `handoff plan show`.
    fn describe(&self, call: Call<'_>) -> String {
        self.actions().iter().find(|a| a.name == call.action).map(|a| a.summary.to_owned()).unwrap_or_default()
    }

    /// Runs one step; returns its output (kept in the run's log and handed to
    /// [`Executor::compensate`]).
    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<Value, StepError>> {
        let _ = cx;
        let message = format!("{}.{} cannot execute in this release", self.name(), call.action);
        Box::pin(async move { Err(StepError::Refused(message)) })
    }

    /// Undoes a completed step whose phase rolls back. `output` is what
    /// [`Executor::execute`] returned.
    fn compensate<'a>(
        &'a self,
        call: Call<'a>,
        output: &'a Value,
        cx: &'a Context,
    ) -> BoxFuture<'a, Result<Compensation, StepError>> {
        let _ = (output, cx);
        let effect = self.actions().iter().find(|a| a.name == call.action).map(|a| a.effect);
        let compensation = match effect {
            Some(Effect::Observe) => Compensation::NotNeeded,
            _ => Compensation::LeftToRollback,
        };
        Box::pin(async move { Ok(compensation) })
    }
}

/// Deserializes `with:` into an action's parameter type; a failure (which the schema
/// should already have caught) becomes one issue at the root of `with:`.
pub fn params<P: DeserializeOwned>(with: &serde_json::Value) -> Result<P, Vec<ParamIssue>> {
    P::deserialize(with).map_err(|e| vec![ParamIssue::invalid("", e.to_string())])
}

/// A set of executors the engine can look up by name.
pub trait Executors: Send + Sync {
    /// The executor called `name`.
    fn find(&self, name: &str) -> Option<&dyn Executor>;
}
