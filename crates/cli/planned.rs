//! A planned run: what `handoff plan --out` writes, `handoff approve` adds approvals to and
//! `handoff apply` runs. It holds what reviewers read (the plan's text and compiled graph,
//! its digest, the environment's endpoints as written, the executors' versions, where the
//! run stands) so that apply can refuse, with a diff, anything that changed since.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use handoff_engine::{Engine, Graph, Store};
use handoff_executor::DecisionKey;
use handoff_registry::Registry;

use crate::support::{Prepared, Target};
use serde::{Deserialize, Serialize};

/// The `format` of a planned run this release writes and reads.
pub(crate) const FORMAT: &str = "handoff.dev/planned-run/v1";

/// The key of the approval to apply a planned run at all (gates have their own keys).
pub(crate) const APPLY: &str = "apply";

/// A planned run, as written to its file (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Planned {
    /// Always [`FORMAT`].
    pub(crate) format: String,
    /// The plan file, as given to `handoff plan`.
    pub(crate) plan: PathBuf,
    /// The environment.
    pub(crate) env: String,
    /// What apply compares: the plan, its graph, endpoints, executors and position.
    #[serde(flatten)]
    pub(crate) reviewed: Reviewed,
    /// Every key a person can decide on in this plan, `apply` included.
    pub(crate) keys: Vec<String>,
    /// When it was planned (RFC 3339).
    pub(crate) planned_at: String,
    /// Approvals given so far, in order.
    #[serde(default)]
    pub(crate) approvals: Vec<Approval>,
}

/// What reviewers read and `handoff apply` finds unchanged, or refuses with a diff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reviewed {
    /// The compiled graph's digest (`sha256:` of the plan's canonical JSON).
    pub(crate) digest: String,
    /// The plan file's text.
    pub(crate) source: String,
    /// The compiled graph, as `handoff plan show` prints it.
    pub(crate) graph: String,
    /// The environment's endpoints, as written (`${VAR}` references unexpanded, so no secret).
    pub(crate) endpoints: BTreeMap<String, String>,
    /// The version of every executor the plan uses.
    pub(crate) executors: BTreeMap<String, String>,
    /// Where the plan's run stands in the environment.
    pub(crate) position: Position,
}

/// Where the plan's runs stand in an environment when it is planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Position {
    /// The latest run; none: there was none yet.
    pub(crate) run: Option<String>,
    /// It has finished (apply starts a new run, as it does without one).
    pub(crate) finished: bool,
    /// How many records its log holds.
    pub(crate) records: u64,
    /// The decision it waits for, when paused.
    pub(crate) paused: Option<String>,
}

/// One person's approval of a planned run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Approval {
    /// What is approved: `apply`, or a gate's key.
    pub(crate) key: String,
    /// Who.
    pub(crate) by: String,
    /// When (RFC 3339).
    pub(crate) at: String,
    /// The digest of the plan approved.
    pub(crate) digest: String,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) comment: Option<String>,
}

impl Position {
    /// Where the latest run in `store` stands.
    pub(crate) fn of(store: &dyn Store) -> anyhow::Result<Position> {
        let Some((state, _)) = Engine::status(store)? else {
            return Ok(Position { run: None, finished: false, records: 0, paused: None });
        };
        Ok(Position {
            run: Some(state.run.clone()),
            finished: state.finished.is_some(),
            records: state.next_seq.saturating_sub(1),
            paused: state.paused.filter(|_| state.finished.is_none()).map(|p| p.key),
        })
    }

    /// Whether apply starts a new run (rather than continuing the latest).
    pub(crate) fn starts_anew(&self) -> bool {
        self.run.is_none() || self.finished
    }

    /// In words, for people.
    pub(crate) fn describe(&self) -> String {
        match (&self.run, &self.paused) {
            (None, _) => "a new run starts".to_owned(),
            (Some(run), _) if self.finished => format!("run {run} has finished; a new run starts"),
            (Some(run), None) => format!("run {run} continues after record {}", self.records),
            (Some(run), Some(key)) => format!("run {run} continues after record {}, paused at `{key}`", self.records),
        }
    }
}

impl Reviewed {
    /// What `graph` (compiled from `source`) would do in `env` now, against `store`.
    pub(crate) fn now(
        graph: &Graph,
        source: String,
        env: &str,
        registry: &Registry,
        store: &dyn Store,
    ) -> anyhow::Result<Reviewed> {
        let environment = crate::support::environment(&graph.plan, env)?;
        let endpoints = environment.endpoints.iter().map(|(name, value)| (name.to_string(), value.clone())).collect();
        Ok(Reviewed {
            digest: graph.digest.clone(),
            source,
            graph: graph.text(),
            endpoints,
            executors: executor_versions(graph, registry),
            position: Position::of(store)?,
        })
    }

    /// The text apply compares: the digest, position, endpoints and executors, then the
    /// plan's source and its compiled graph.
    pub(crate) fn text(&self) -> String {
        let mut text = format!("digest: {}\nposition: {}\n", self.digest, self.position.describe());
        for (name, value) in &self.endpoints {
            text.push_str(&format!("endpoint {name}: {value}\n"));
        }
        for (name, version) in &self.executors {
            text.push_str(&format!("executor {name}: {version}\n"));
        }
        for (title, body) in [("plan", &self.source), ("graph", &self.graph)] {
            text.push_str(&format!("--- {title}\n{body}"));
            if !body.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }
}

/// The version of every executor the graph's steps use: a built-in one is this build of
/// handoff; a plugin is named by the digest of what it declares (its actions, their
/// effects and parameter schemas), so a plugin that changed what it does shows as changed.
fn executor_versions(graph: &Graph, registry: &Registry) -> BTreeMap<String, String> {
    let builtin: Vec<&str> = Registry::builtin().executors().map(|e| e.name()).collect();
    let mut versions = BTreeMap::new();
    for (_, step) in graph.steps() {
        let name = step.uses.executor.as_str();
        let Some(executor) = registry.executors().find(|e| e.name() == name) else { continue };
        let version = if builtin.contains(&name) {
            format!("built in, handoff {}", env!("CARGO_PKG_VERSION"))
        } else {
            let actions: Vec<serde_json::Value> = executor.actions().map(|a| declared(a.declaration())).collect();
            format!("plugin {}", handoff_engine::graph::digest(&serde_json::Value::Array(actions)))
        };
        versions.insert(name.to_owned(), version);
    }
    versions
}

/// What a plugin's action declares, as JSON.
fn declared(declaration: &handoff_executor::Declaration) -> serde_json::Value {
    let params = match &declaration.params {
        handoff_plan::ParamsSchema::Json(value) => (*value).clone(),
        handoff_plan::ParamsSchema::Typed(_) => serde_json::Value::Null,
    };
    serde_json::json!({
        "name": declaration.name, "summary": declaration.summary, "effect": declaration.effect,
        "idempotent": declaration.idempotent, "resumable": declaration.resumable,
        "background": declaration.background, "emits": declaration.emits, "params": params,
    })
}

impl Planned {
    /// A planned run of `graph` (compiled from the plan file `plan`, whose text is `source`)
    /// in `env`.
    pub(crate) fn new(plan: &Path, env: &str, reviewed: Reviewed, graph: &Graph) -> Planned {
        let mut keys = vec![APPLY.to_owned()];
        keys.extend(graph.decision_keys().iter().map(DecisionKey::to_string));
        Planned {
            format: FORMAT.to_owned(),
            plan: plan.to_path_buf(),
            env: env.to_owned(),
            reviewed,
            keys,
            planned_at: jiff::Timestamp::now().to_string(),
            approvals: Vec::new(),
        }
    }

    /// Reads a planned run; `None` when the file is not one (a plan, say).
    pub(crate) fn read(path: &Path) -> anyhow::Result<Option<Planned>> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(planned) = serde_json::from_slice::<Planned>(&bytes) else { return Ok(None) };
        if planned.format != FORMAT {
            anyhow::bail!(
                "{}: a planned run of format `{}`; this handoff reads `{FORMAT}`",
                path.display(),
                planned.format
            );
        }
        Ok(Some(planned))
    }

    /// Writes it to `path` (replacing the file atomically).
    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut file =
            tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write {}", path.display()))?;
        serde_json::to_writer_pretty(&mut file, self)?;
        file.write_all(b"\n")?;
        file.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The decision keys approved by default: `apply`, and the gate the run waits at.
    pub(crate) fn default_keys(&self) -> Vec<String> {
        let waiting = self.reviewed.position.paused.iter().filter(|key| key.contains("/approval-"));
        std::iter::once(APPLY.to_owned()).chain(waiting.cloned()).collect()
    }
}

/// The target's plan loaded and compiled (see [`Prepared::load`]), with the text it was
/// compiled from: read before and after, and refused if it changed in between. `None` when
/// the plan is invalid (its diagnostics are written to `out`).
pub(crate) fn load(
    target: &Target,
    registry: &Registry,
    out: &mut dyn Write,
) -> anyhow::Result<Option<(Prepared, String)>> {
    let before = crate::validate::read(&target.plan)?;
    let Some(prepared) = Prepared::load(target, registry, out)? else { return Ok(None) };
    if crate::validate::read(&target.plan)? != before {
        anyhow::bail!("{} changed while it was read; try again", target.plan.display());
    }
    let source = String::from_utf8(before).with_context(|| format!("{} is not UTF-8", target.plan.display()))?;
    Ok(Some((prepared, source)))
}

/// A unified diff from `before` (labelled `old`) to `after` (labelled `new`), or `None`
/// when they are equal.
pub(crate) fn diff(before: &str, after: &str, old: &str, new: &str) -> Option<String> {
    if before == after {
        return None;
    }
    let diff = similar::TextDiff::from_lines(before, after);
    Some(diff.unified_diff().context_radius(2).header(old, new).to_string())
}
