//! What the registry answers for `handoff render`: a step described by its executor, and
//! the VirtualServices a plan's traffic steps apply. The CLI asks here, so it never names an
//! executor.

use std::path::Path;

use handoff_executor::Executors;
use handoff_plan::model::{Plan, Step};
use handoff_render::VirtualService;

use crate::Registry;

impl Registry {
    /// The executor's one-line description of what `step` does (empty when no executor of
    /// the registry runs it).
    pub fn describe_step(&self, step: &Step) -> String {
        let with = serde_json::Value::Object(step.with.clone());
        self.action(&step.uses).map(|a| a.describe(&with)).unwrap_or_default()
    }

    /// Who may confirm `step`, when it is a `gate.manual` step (its `approvers`; empty: the
    /// plan names nobody); empty for any other step.
    pub fn step_approvers(&self, step: &Step) -> Vec<String> {
        if step.uses.to_string() != "gate.manual" {
            return Vec::new();
        }
        let with = serde_json::Value::Object(step.with.clone());
        serde_json::from_value::<handoff_exec_generic::GateManual>(with).map(|g| g.approvers).unwrap_or_default()
    }

    /// The VirtualServices the plan's `traffic.shift` steps apply, one per weight, with
    /// their file names (`<phase>--<step>--<weight>.yaml`). `endpoint` looks up an
    /// environment's endpoint as written; `base` is the directory relative `file:` routes
    /// start from. Steps routed through a router URL are left out. The error names the
    /// step.
    pub fn virtual_services(
        &self,
        plan: &Plan,
        endpoint: &dyn Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Result<Vec<(String, VirtualService)>, String> {
        handoff_exec_traffic::virtual_services(plan, endpoint, base)
    }
}
