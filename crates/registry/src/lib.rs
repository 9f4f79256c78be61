//! The built-in executors, listed once.
//!
//! Everything that enumerates executors — validation, the plan schema, `handoff executors`,
//! `docs/executors.md` — reads [`Registry::builtin`].
//!
//! Architecture invariant: adding an executor means adding one line to
//! [`Registry::builtin`]; nothing else lists executors.

use handoff_executor::{Executor, Executors};
use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::model::Uses;
use handoff_plan::schema::ActionSchema;
use handoff_plan::{ActionFacts, Catalog};

mod artifacts;
mod docs;

pub use docs::{executors_markdown, lints_markdown};

/// A set of executors.
pub struct Registry {
    executors: Vec<Executor>,
}

impl Registry {
    /// The executors built into handoff.
    pub fn builtin() -> Registry {
        let mut executors = handoff_exec_generic::executors();
        executors.push(handoff_exec_mongo::executor());
        executors.push(handoff_exec_kafka::executor());
        executors.push(handoff_exec_redis::executor());
        executors.push(handoff_exec_traffic::executor());
        Registry { executors }
    }

    /// The same registry with one more executor (an out-of-process plugin, or a test
    /// executor in the engine's own tests). A built-in executor of the same name wins.
    pub fn with(mut self, executor: Executor) -> Registry {
        if self.find(executor.name()).is_none() {
            self.executors.push(executor);
        }
        self
    }

    /// The executors, in registration order.
    pub fn executors(&self) -> impl Iterator<Item = &Executor> {
        self.executors.iter()
    }

    fn find(&self, name: &str) -> Option<&Executor> {
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
    fn find(&self, name: &str) -> Option<&Executor> {
        Registry::find(self, name)
    }
}

impl Catalog for Registry {
    fn executors(&self) -> Vec<&'static str> {
        self.executors().map(|e| e.name()).collect()
    }

    fn actions(&self, executor: &str) -> Option<Vec<&'static str>> {
        self.find(executor).map(|e| e.actions().map(|a| a.declaration().name).collect())
    }

    fn facts(&self, uses: &Uses) -> Option<ActionFacts> {
        let declared = self.action(uses)?.declaration();
        Some(ActionFacts { effect: declared.effect, emits: declared.emits })
    }

    fn planned_duration(&self, uses: &Uses, with: &serde_json::Value) -> Option<std::time::Duration> {
        self.action(uses)?.planned_duration(with)
    }

    fn check_params(&self, uses: &Uses, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        self.action(uses).map(|a| a.check(with, site)).unwrap_or_default()
    }

    fn schemas(&self) -> Vec<ActionSchema> {
        self.executors()
            .flat_map(|e| {
                e.actions()
                    .map(|a| a.declaration())
                    .map(move |a| ActionSchema { uses: Uses::new(e.name(), a.name).to_string(), params: a.params })
            })
            .collect()
    }
}
