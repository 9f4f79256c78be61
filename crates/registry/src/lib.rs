//! The built-in executors, listed once.
//!
//! Everything that enumerates executors — validation, the plan schema, `handoff executors`,
//! `docs/executors.md` — reads [`Registry::builtin`].
//!
//! Architecture invariant: adding an executor means adding one line to
//! [`Registry::builtin`]; nothing else lists executors.

use handoff_executor::{Executor, Executors};
use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::schema::ActionSchema;
use handoff_plan::{ActionFacts, Catalog};

mod artifacts;
mod docs;

pub use docs::{executors_markdown, lints_markdown};

/// A set of executors.
pub struct Registry {
    executors: Vec<Box<dyn Executor>>,
}

impl Registry {
    /// The executors built into handoff.
    pub fn builtin() -> Registry {
        let mut executors = handoff_exec_generic::executors();
        executors.push(Box::new(handoff_exec_mongo::Mongo::default()));
        executors.push(Box::new(handoff_exec_kafka::Kafka));
        executors.push(Box::new(handoff_exec_redis::Redis));
        executors.push(Box::new(handoff_exec_traffic::Traffic::default()));
        Registry { executors }
    }

    /// The same registry with one more executor (an out-of-process plugin, or a test
    /// executor in the engine's own tests). A built-in executor of the same name wins.
    pub fn with(mut self, executor: Box<dyn Executor>) -> Registry {
        if self.find(executor.name()).is_none() {
            self.executors.push(executor);
        }
        self
    }

    /// The executors, in registration order.
    pub fn executors(&self) -> impl Iterator<Item = &dyn Executor> {
        self.executors.iter().map(|e| e.as_ref())
    }

    fn find(&self, name: &str) -> Option<&dyn Executor> {
        self.executors().find(|e| e.name() == name)
    }

    /// The plan's JSON Schema with every action's parameters, pretty-printed with a final
    /// newline (the form committed as `schemas/plan.schema.json`).
    pub fn schema_text(&self) -> String {
        let schema = handoff_plan::schema::generate(&self.schemas());
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    }
}

impl Executors for Registry {
    fn find(&self, name: &str) -> Option<&dyn Executor> {
        Registry::find(self, name)
    }
}

impl Catalog for Registry {
    fn executors(&self) -> Vec<&'static str> {
        self.executors().map(|e| e.name()).collect()
    }

    fn actions(&self, executor: &str) -> Option<Vec<&'static str>> {
        self.find(executor).map(|e| e.actions().iter().map(|a| a.name).collect())
    }

    fn facts(&self, executor: &str, action: &str) -> Option<ActionFacts> {
        let action = self.find(executor)?.actions().iter().find(|a| a.name == action)?;
        Some(ActionFacts { effect: action.effect, emits: action.emits })
    }

    fn check_params(&self, executor: &str, action: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        self.find(executor).map(|e| e.check(action, with, site)).unwrap_or_default()
    }

    fn schemas(&self) -> Vec<ActionSchema> {
        self.executors()
            .flat_map(|e| {
                e.actions()
                    .iter()
                    .map(move |a| ActionSchema { uses: format!("{}.{}", e.name(), a.name), params: a.params })
            })
            .collect()
    }
}
