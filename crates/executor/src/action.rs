//! An action: the unit of the executor API.
//!
//! A built-in action is one type implementing [`Action`]: its parameter type (the JSON
//! Schema of `with:`), its typed output, its [`Declaration`], its checks, its description,
//! its execution and its compensation. [`Typed`] adapts it to the object-safe
//! [`DynAction`] the registry and the engine hold; out-of-process plugins implement
//! [`DynAction`] directly.

use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::{Effect, ParamsSchema};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_json::Value;

use crate::output::StepOutput;
use crate::{BoxFuture, Compensation, Context, Policy, StepError};

/// What an action declares about itself.
#[derive(Clone, Copy)]
pub struct Declaration {
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
    /// later step's output lists it in [`StepOutput::stops`].
    pub background: bool,
    /// Metrics the action emits while it runs.
    pub emits: &'static [&'static str],
    /// What its compensation does when its phase rolls back, when it undoes the step itself
    /// (`None`: the default compensation, see [`Declaration::on_rollback`]).
    pub undone_by: Option<&'static str>,
    /// JSON Schema of its `with:` parameters.
    pub params: ParamsSchema,
}

impl Declaration {
    /// Declares an action whose parameter schema is given as JSON (out-of-process
    /// executors).
    pub const fn declared(
        name: &'static str,
        summary: &'static str,
        effect: Effect,
        params: &'static serde_json::Value,
    ) -> Declaration {
        Declaration::with_schema(name, summary, effect, ParamsSchema::Json(params))
    }

    const fn with_schema(
        name: &'static str,
        summary: &'static str,
        effect: Effect,
        params: ParamsSchema,
    ) -> Declaration {
        Declaration {
            name,
            summary,
            effect,
            idempotent: true,
            resumable: false,
            background: false,
            emits: &[],
            undone_by: None,
            params,
        }
    }

    /// Declares an action whose `with:` parameters deserialize into `P`.
    pub const fn new<P: JsonSchema>(name: &'static str, summary: &'static str, effect: Effect) -> Declaration {
        Declaration::with_schema(name, summary, effect, ParamsSchema::Typed(schema_of::<P>))
    }

    /// The same action, declared to keep working in the background after it finished
    /// (and to resume from its checkpoints).
    pub const fn background(self) -> Declaration {
        Declaration { background: true, resumable: true, ..self }
    }

    /// The same action, declared to resume from its checkpoints.
    pub const fn resumable(self) -> Declaration {
        Declaration { resumable: true, ..self }
    }

    /// The same action, declared not idempotent.
    pub const fn not_idempotent(self) -> Declaration {
        Declaration { idempotent: false, ..self }
    }

    /// The same action, declared to emit these metrics.
    pub const fn emitting(self, emits: &'static [&'static str]) -> Declaration {
        Declaration { emits, ..self }
    }

    /// The same action, declared to undo its own effect when its phase rolls back (its
    /// [`Action::compensate`]), in words for the docs.
    pub const fn undone_by(self, what: &'static str) -> Declaration {
        Declaration { undone_by: Some(what), ..self }
    }

    /// What happens to a completed step of this action when its phase rolls back, in words.
    pub fn on_rollback(&self) -> &'static str {
        match (self.undone_by, self.default_compensation(), self.background) {
            (Some(what), _, _) => what,
            (None, Compensation::NotNeeded, _) => "nothing to undo (it only observes)",
            (None, _, true) => {
                "left to the phase's rollback steps; while running in the background it keeps running until a step stops it"
            }
            (None, _, false) => "left to the phase's rollback steps",
        }
    }

    /// What undoing a completed step does when the action says nothing: an observation
    /// needs no undoing, anything else is left to the phase's rollback steps.
    pub fn default_compensation(&self) -> Compensation {
        match self.effect {
            Effect::Observe => Compensation::NotNeeded,
            _ => Compensation::LeftToRollback,
        }
    }
}

fn schema_of<P: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<P>()
}

/// One action, as a type. Implement it, then list the type once in its executor's
/// constructor ([`crate::Executor::with`]).
pub trait Action: Send + Sync + 'static {
    /// The `with:` parameters (their JSON Schema is part of the plan schema).
    type Params: DeserializeOwned + JsonSchema + Send + Sync;
    /// What a finished step returns (kept in the run's log, handed back to
    /// [`Action::compensate`]); a struct, serialized as the log record's fields.
    type Output: Serialize + DeserializeOwned + Send;

    /// Name, effect, idempotency, background work, emitted metrics.
    const DECLARATION: Declaration;

    /// Checks the parameters beyond their schema (which has already passed), knowing where
    /// the step stands in its plan. Pointers in the returned issues are relative to the
    /// step's `with:`.
    fn check(&self, params: &Self::Params, site: &Site<'_>) -> Vec<ParamIssue> {
        let _ = (params, site);
        Vec::new()
    }

    /// What running the step would do, in one line, for dry runs and `handoff plan show`.
    fn describe(&self, params: &Self::Params) -> String;

    /// How long the step takes by design (a soak, a canary's holds), known before it runs,
    /// for the calendar lint (H345); `None` when its length depends on the work it does.
    fn planned_duration(&self, params: &Self::Params) -> Option<std::time::Duration> {
        let _ = params;
        None
    }

    /// Refuses the step before the run starts when the run's policy does not allow it
    /// (the reason says how to allow it).
    fn preflight(&self, policy: &Policy) -> Result<(), String> {
        let _ = policy;
        Ok(())
    }

    /// Runs one step.
    fn execute(
        &self,
        params: Self::Params,
        cx: &Context,
    ) -> impl Future<Output = Result<StepOutput<Self::Output>, StepError>> + Send;

    /// Undoes a completed step whose phase rolls back; `output` is what
    /// [`Action::execute`] returned.
    fn compensate(
        &self,
        params: Self::Params,
        output: Self::Output,
        cx: &Context,
    ) -> impl Future<Output = Result<Compensation, StepError>> + Send {
        let _ = (params, output, cx);
        let compensation = Self::DECLARATION.default_compensation();
        async move { Ok(compensation) }
    }
}

/// An action behind a pointer: what the registry and the engine hold.
pub trait DynAction: Send + Sync {
    /// What the action declares.
    fn declaration(&self) -> &Declaration;

    /// Checks a step's `with:` beyond its schema (see [`Action::check`]).
    fn check(&self, with: &Value, site: &Site<'_>) -> Vec<ParamIssue>;

    /// One line on what the step would do.
    fn describe(&self, with: &Value) -> String;

    /// How long the step takes by design (see [`Action::planned_duration`]); `None` when
    /// the action does not say (an out-of-process plugin never does).
    fn planned_duration(&self, with: &Value) -> Option<std::time::Duration> {
        let _ = with;
        None
    }

    /// Refuses the step up front under the run's policy.
    fn preflight(&self, policy: &Policy) -> Result<(), String>;

    /// Runs one step.
    fn execute<'a>(&'a self, with: &'a Value, cx: &'a Context) -> BoxFuture<'a, Result<StepOutput, StepError>>;

    /// Undoes a completed step.
    fn compensate<'a>(
        &'a self,
        with: &'a Value,
        output: &'a StepOutput,
        cx: &'a Context,
    ) -> BoxFuture<'a, Result<Compensation, StepError>>;
}

/// The adapter from a typed [`Action`] to [`DynAction`].
pub struct Typed<A: Action> {
    action: A,
    declaration: Declaration,
}

impl<A: Action> Typed<A> {
    /// Wraps an action.
    pub fn new(action: A) -> Typed<A> {
        Typed { action, declaration: A::DECLARATION }
    }

    /// The step's parameters as written (`${VAR}`s unexpanded), for descriptions; refused
    /// (the schema should have caught it) when they do not fit.
    fn params(&self, with: &Value) -> Result<A::Params, StepError> {
        A::Params::deserialize(with)
            .map_err(|e| StepError::Refused(format!("invalid parameters of `{}`: {e}", self.declaration.name)))
    }

    /// The step's parameters to run with: every `${VAR}` in every string expanded (an unset
    /// one refused, naming it), and the step's context masking the values substituted.
    fn expanded(&self, with: &Value, cx: &Context) -> Result<(A::Params, Context), StepError> {
        let mut cx = cx.clone();
        let with = crate::expand_value(with, &mut cx.masks).map_err(|e| StepError::Refused(e.to_string()))?;
        Ok((self.params(&with)?, cx))
    }
}

/// An error whose message is masked like the step's output.
fn masked(error: StepError, cx: &Context) -> StepError {
    match error {
        StepError::Failed(message) => StepError::Failed(cx.mask(&message)),
        StepError::Refused(message) => StepError::Refused(cx.mask(&message)),
        StepError::NeedsDecision { key, prompt } => StepError::NeedsDecision { key, prompt: cx.mask(&prompt) },
        StepError::Cancelled => StepError::Cancelled,
    }
}

impl<A: Action> DynAction for Typed<A> {
    fn declaration(&self) -> &Declaration {
        &self.declaration
    }

    fn check(&self, with: &Value, site: &Site<'_>) -> Vec<ParamIssue> {
        match A::Params::deserialize(with) {
            Ok(params) => self.action.check(&params, site),
            Err(error) => vec![ParamIssue::invalid("", error.to_string())],
        }
    }

    fn describe(&self, with: &Value) -> String {
        self.params(with).map_or_else(|e| e.to_string(), |params| self.action.describe(&params))
    }

    fn planned_duration(&self, with: &Value) -> Option<std::time::Duration> {
        self.params(with).ok().and_then(|params| self.action.planned_duration(&params))
    }

    fn preflight(&self, policy: &Policy) -> Result<(), String> {
        self.action.preflight(policy)
    }

    fn execute<'a>(&'a self, with: &'a Value, cx: &'a Context) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(async move {
            let (params, cx) = self.expanded(with, cx)?;
            self.action.execute(params, &cx).await.map_err(|e| masked(e, &cx))?.erase()
        })
    }

    fn compensate<'a>(
        &'a self,
        with: &'a Value,
        output: &'a StepOutput,
        cx: &'a Context,
    ) -> BoxFuture<'a, Result<Compensation, StepError>> {
        Box::pin(async move {
            let (params, cx) = self.expanded(with, cx)?;
            let output = output.typed::<A::Output>().map_err(|e| {
                StepError::Refused(format!("the recorded output of `{}` is not its own: {e}", self.declaration.name))
            })?;
            match self.action.compensate(params, output.detail, &cx).await {
                Ok(Compensation::Undone(what)) => Ok(Compensation::Undone(cx.mask(&what))),
                Ok(other) => Ok(other),
                Err(error) => Err(masked(error, &cx)),
            }
        })
    }
}
