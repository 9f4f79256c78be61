//! The executor API.
//!
//! An executor is a named family of actions (`mongo.copy`, `traffic.shift`, ...). Each
//! action is one type implementing [`Action`]: its parameter type (whose JSON Schema
//! becomes part of the plan schema), its typed output, its [`Declaration`], the checks a
//! schema cannot express (references to resources, monotonic weights, ...), its
//! description, its execution with a [`Context`] (endpoints, clock, checkpoint, metrics
//! sink, cancellation) and its compensation when its phase rolls back. The registry and the
//! engine hold actions as [`DynAction`]s; a finished step's [`StepOutput`] carries, as
//! typed fields, what steers the engine (a background step's `stops`) and the report (a
//! comparison's [`Integrity`], a simulation's assumptions).
//!
//! Architecture invariant: this crate knows no concrete executor; the built-in ones are
//! listed in `handoff-registry` only.

use handoff_plan::model::Uses;

pub mod action;
pub mod clock;
pub mod context;
pub mod decision;
pub mod http;
pub mod output;
pub mod process;

pub use action::{Action, Declaration, DynAction, Typed};
pub use clock::{Clock, SystemClock, VirtualClock};
pub use context::{
    Analysis, Context, Decision, Endpoints, Hold, HostedReply, HostedStop, Lifecycle, LifecycleFeed, Masks, Policy,
    Recorder, Sink, expand_env, expand_value,
};
pub use decision::DecisionKey;
pub use output::{Integrity, StepOutput};

/// A boxed, sendable future (the executor trait stays object-safe).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// The step's wait is longer than the run's `--detach-over`: the run sleeps through it
    /// and the step runs again (see [`Context::wait`]) once `until` has passed.
    #[error("waiting until {until} (longer than the run's --detach-over)")]
    Sleeping {
        /// When the wait ends.
        until: jiff::Timestamp,
    },
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
pub struct Executor {
    name: &'static str,
    summary: &'static str,
    actions: Vec<Box<dyn DynAction>>,
}

impl Executor {
    /// An executor with no actions yet.
    pub fn new(name: &'static str, summary: &'static str) -> Executor {
        Executor { name, summary, actions: Vec::new() }
    }

    /// The same executor with one more built-in action.
    pub fn with<A: Action>(self, action: A) -> Executor {
        self.with_dyn(Box::new(Typed::new(action)))
    }

    /// The same executor with one more action behind a pointer (an out-of-process one).
    pub fn with_dyn(mut self, action: Box<dyn DynAction>) -> Executor {
        self.actions.push(action);
        self
    }

    /// Executor name, the part before the dot in `uses:`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One line on what the executor acts on.
    pub fn summary(&self) -> &'static str {
        self.summary
    }

    /// Its actions, in declaration order.
    pub fn actions(&self) -> impl Iterator<Item = &dyn DynAction> {
        self.actions.iter().map(|a| a.as_ref())
    }

    /// The action called `name`.
    pub fn action(&self, name: &str) -> Option<&dyn DynAction> {
        self.actions().find(|a| a.declaration().name == name)
    }

    /// Runs one step of the action `action` outside a plan run (benchmarks, an executor's
    /// own tests); refused when there is no such action.
    pub async fn run(&self, action: &str, with: &serde_json::Value, cx: &Context) -> Result<StepOutput, StepError> {
        match self.action(action) {
            Some(found) => found.execute(with, cx).await,
            None => Err(StepError::Refused(format!("{} has no action `{action}`", self.name))),
        }
    }

    /// Undoes one step of the action `action` outside a plan run; refused when there is
    /// no such action.
    pub async fn undo(
        &self,
        action: &str,
        with: &serde_json::Value,
        output: &StepOutput,
        cx: &Context,
    ) -> Result<Compensation, StepError> {
        match self.action(action) {
            Some(found) => found.compensate(with, output, cx).await,
            None => Err(StepError::Refused(format!("{} has no action `{action}`", self.name))),
        }
    }
}

/// A set of executors the engine can look up by name.
pub trait Executors: Send + Sync {
    /// The executor called `name`.
    fn find(&self, name: &str) -> Option<&Executor>;

    /// The action a step uses.
    fn action(&self, uses: &Uses) -> Option<&dyn DynAction> {
        self.find(&uses.executor)?.action(&uses.action)
    }
}
