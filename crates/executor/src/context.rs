//! What a running step can reach: endpoints, the clock, its checkpoint, the metrics sink,
//! decisions made by people, and cancellation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// Where a running step reports to; implemented by the engine, which makes every report
/// durable before it counts.
pub trait Sink: Send + Sync {
    /// Persists a checkpoint of the step; a resumed step starts from the last one.
    fn checkpoint(&self, phase: &str, step: &str, data: &Value) -> std::io::Result<()>;

    /// Records a metric value the step measured.
    fn metric(&self, phase: &str, step: &str, name: &str, value: f64);

    /// Reports progress (`fraction` in 0..=1 when known).
    fn progress(&self, phase: &str, step: &str, message: &str, fraction: Option<f64>);

    /// What a person decided about `key` (`<phase>/<step>` for a step), if anything.
    fn decision(&self, key: &str) -> Option<Decision>;

    /// The output of an earlier step of the run that finished (`step` is its id).
    fn output(&self, step: &str) -> Option<crate::StepOutput> {
        let _ = step;
        None
    }

    /// The run's lifecycle (phases started, passed, failed, rolled back; the run paused,
    /// interrupted or finished), from the start of this process's part of the run, for a
    /// step that publishes it. `None` when the sink has no lifecycle.
    fn lifecycle(&self) -> Option<LifecycleFeed> {
        None
    }

    /// Asks the host of the background step `step` (a `handoff worker`, when the run hands
    /// its background steps to one) to stop it by running `stop` there, and resolves to that
    /// action's output as the host reports it. `None` when no host holds the step (it is
    /// not hosted, or its host never started it).
    fn stop_hosted(&self, step: &str, stop: &HostedStop) -> Option<HostedReply> {
        let _ = (step, stop);
        None
    }
}

/// The action a host runs to stop a background step it holds (`mongo.stop_sync` with its
/// `with:`), as the stopping step names it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostedStop {
    /// The stopping action (`executor.action`).
    pub uses: String,
    /// Its parameters.
    pub with: Value,
}

/// The output of a host's stop, once the host acknowledged it; an error names what failed.
pub type HostedReply = std::pin::Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// A change in a run's life.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lifecycle {
    /// Sequence number of the record in the run's log (unique within the run).
    pub seq: u64,
    /// When, on the run's clock.
    pub at: jiff::Timestamp,
    /// What happened: `run_started`, `run_resumed`, `phase_started`, `phase_passed`,
    /// `phase_failed`, `phase_rolled_back`, `run_paused`, `run_interrupted`,
    /// `run_finished`.
    pub event: &'static str,
    /// The phase, for phase events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Event details (a failure's reason, a rollback's duration and budget, a status).
    pub detail: Value,
}

/// A subscription to a run's lifecycle.
pub struct LifecycleFeed {
    /// Events that happened before the subscription (in this process), in order.
    pub history: Vec<Lifecycle>,
    /// Events from now on; closed when the run stops in this process.
    pub events: tokio::sync::broadcast::Receiver<Lifecycle>,
    /// Dropped by the subscriber once it has handled the last event: the engine waits
    /// for that (a bounded time) before it returns, so nothing is lost at exit.
    pub done: tokio::sync::mpsc::Sender<()>,
}

/// A person's decision on an approval or confirmation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Approved (true) or rejected (false).
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The digest of the plan the person approved (`handoff approve` of a planned run,
    /// `handoff plan --out`), when the decision was given for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What the run allows and where it runs.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `shell.run` steps may run (the plan run was started with `--allow-shell`).
    pub allow_shell: bool,
    /// The run is a simulation against a sandbox.
    pub simulation: bool,
    /// Directory of the plan file; relative paths in parameters start here.
    pub base_dir: PathBuf,
}

/// Named endpoints of the environment a run targets. Values may hold secrets: they are
/// never logged, and errors name the endpoint, not its value.
#[derive(Clone, Default)]
pub struct Endpoints(BTreeMap<String, String>);

impl Endpoints {
    /// Endpoints with their final (resolved) values.
    pub fn new(values: BTreeMap<String, String>) -> Endpoints {
        Endpoints(values)
    }

    /// The resolved value of an endpoint.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Endpoint names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A `${NAME}` reference to an unset environment variable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable `{0}` is not set; export it before running (its value is never printed)")]
pub struct UnsetVariable(pub String);

/// Replaces every `${NAME}` in `text` with the value of the environment variable `NAME`.
///
/// The result may hold secrets; callers keep the template for messages.
pub fn expand_env(text: &str) -> Result<String, UnsetVariable> {
    expand_with(text, |name| std::env::var(name).ok())
}

/// A `${NAME}` in a step's parameter that cannot be expanded.
#[derive(Debug, thiserror::Error)]
#[error("parameter `{pointer}`: {unset}")]
pub struct UnsetParameter {
    /// JSON pointer of the parameter, relative to `with:`.
    pub pointer: String,
    /// The variable that is not set.
    pub unset: UnsetVariable,
}

/// Shortest expanded value that is masked: shorter values (`1`, `on`) would mangle output
/// without protecting anything.
const SHORTEST_MASKED: usize = 4;

/// Expands every `${NAME}` in every string of `value` (a step's `with:`) from the process
/// environment — the one rule for built-in actions' parameters. Each value substituted is
/// added to `masks`, so that it is masked wherever the step prints it.
pub fn expand_value(value: &Value, masks: &mut Masks) -> Result<Value, UnsetParameter> {
    expand_at(value, &mut String::new(), masks)
}

fn expand_at(value: &Value, pointer: &mut String, masks: &mut Masks) -> Result<Value, UnsetParameter> {
    Ok(match value {
        Value::String(text) if text.contains("${") => {
            let lookup = |name: &str| {
                let found = std::env::var(name).ok();
                if let Some(found) = &found {
                    masks.add(found, &format!("${{{name}}}"));
                }
                found
            };
            let expanded = expand_with(text, lookup);
            Value::String(expanded.map_err(|unset| UnsetParameter { pointer: pointer.clone(), unset })?)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| expand_child(item, pointer, &i.to_string(), masks))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), expand_child(item, pointer, key, masks)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn expand_child(item: &Value, pointer: &mut String, key: &str, masks: &mut Masks) -> Result<Value, UnsetParameter> {
    let len = pointer.len();
    pointer.push('/');
    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
    let expanded = expand_at(item, pointer, masks);
    pointer.truncate(len);
    expanded
}

/// Values a step must never print (expanded `${VAR}`s), each with what replaces it.
#[derive(Debug, Clone, Default)]
pub struct Masks(Vec<(String, String)>);

impl Masks {
    /// Adds a value to mask as `replacement`.
    pub fn add(&mut self, value: &str, replacement: &str) {
        if value.len() >= SHORTEST_MASKED {
            self.0.push((value.to_owned(), replacement.to_owned()));
        }
    }

    /// `text` with every masked value replaced (longest first, so that a value containing
    /// another is masked whole).
    pub fn mask(&self, text: &str) -> String {
        let mut masks: Vec<&(String, String)> = self.0.iter().collect();
        masks.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
        masks.iter().fold(text.to_owned(), |text, (value, replacement)| text.replace(value.as_str(), replacement))
    }

    /// Every masked value of `other` too.
    pub fn extend(&mut self, other: &Masks) {
        self.0.extend(other.0.iter().cloned());
    }
}

/// [`expand_env`] with a custom variable lookup.
pub fn expand_with(text: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, UnsetVariable> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else { break };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        out.push_str(&lookup(name).ok_or_else(|| UnsetVariable(name.to_owned()))?);
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Everything a running step can reach.
#[derive(Clone)]
pub struct Context {
    /// Name of the plan (`metadata.name`).
    pub plan: String,
    /// Id of the run.
    pub run_id: String,
    /// Phase of the step.
    pub phase: String,
    /// Id of the step.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The step runs as part of its phase's rollback.
    pub rolling_back: bool,
    /// The run's clock (virtual in simulation).
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the run stops (Ctrl-C, a failed sibling, a rollback).
    pub cancel: CancellationToken,
    /// The step's last checkpoint, when it is resumed.
    pub checkpoint: Option<Value>,
    /// The environment's endpoints.
    pub endpoints: Arc<Endpoints>,
    /// The plan's resources (what a step's `resource:` names).
    pub resources: Arc<BTreeMap<handoff_plan::model::Id, handoff_plan::model::Resource>>,
    /// What the run allows.
    pub policy: Arc<Policy>,
    /// Where reports go.
    pub sink: Arc<dyn Sink>,
    /// Values the step must never print (the `${VAR}`s expanded in its parameters).
    pub masks: Masks,
    /// Where the step's holds are judged (its step analysis); `None`: a hold only waits.
    pub analysis: Option<Analysis>,
}

/// A request to hold a step for a while with its step analysis judged over the hold.
#[derive(Debug)]
pub struct Hold {
    /// What is held (`25%`: a weight of a traffic shift), as events and reports name it.
    pub at: String,
    /// How long to hold at least.
    pub duration: std::time::Duration,
    /// Where the verdict goes: `Ok` to go on, else why the step stops here.
    pub reply: tokio::sync::oneshot::Sender<Result<(), crate::StepError>>,
}

/// The engine's end of a step's holds: [`Context::hold`] sends each hold here and waits
/// for its verdict.
#[derive(Debug, Clone)]
pub struct Analysis(pub tokio::sync::mpsc::UnboundedSender<Hold>);

impl Context {
    /// Persists a checkpoint; returns only once it is durable.
    pub fn save_checkpoint(&self, data: &Value) -> std::io::Result<()> {
        self.sink.checkpoint(&self.phase, &self.step, data)
    }

    /// Records a metric value.
    pub fn emit(&self, name: &str, value: f64) {
        self.sink.metric(&self.phase, &self.step, name, value);
    }

    /// Reports progress (masked like the step's output).
    pub fn progress(&self, message: &str, fraction: Option<f64>) {
        self.sink.progress(&self.phase, &self.step, &self.mask(message), fraction);
    }

    /// What a person decided about this step, if anything.
    pub fn decision(&self) -> Option<Decision> {
        self.sink.decision(&format!("{}/{}", self.phase, self.step))
    }

    /// The output of an earlier, finished step of the run, read as its action's output
    /// type `T`; `None` when the step has not finished, an error when its output is not a
    /// `T` (the step is not the action the caller expects).
    pub fn output_of<T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
    ) -> Option<Result<crate::StepOutput<T>, serde_json::Error>> {
        self.sink.output(step).map(|output| output.typed())
    }

    /// A resource of the plan with the name and resolved value of its endpoint; refused
    /// (naming the resource and endpoint, never the value) when any is missing.
    pub fn resource_endpoint(
        &self,
        id: &handoff_plan::model::Id,
    ) -> Result<(&handoff_plan::model::Resource, &str, &str), crate::StepError> {
        let refused = |message: String| crate::StepError::Refused(message);
        let resource = self.resources.get(id).ok_or_else(|| refused(format!("no resource `{id}` in the plan")))?;
        let name =
            resource.endpoint.as_ref().ok_or_else(|| refused(format!("resource `{id}` names no endpoint")))?.as_str();
        let value = self
            .endpoints
            .get(name)
            .ok_or_else(|| refused(format!("the environment has no endpoint `{name}` (for resource `{id}`)")))?;
        Ok((resource, name, value))
    }

    /// Holds the step at `at` for `duration` (e.g. a traffic weight for its soak) with its
    /// step analysis judged over the hold: `Ok` to go on; an error stops the step (a failed
    /// verdict fails it, an inconclusive one asks a person). Without analysis, it waits.
    pub async fn hold(&self, at: &str, duration: std::time::Duration) -> Result<(), crate::StepError> {
        let Some(Analysis(engine)) = &self.analysis else {
            return self.cancellable(self.clock.sleep(duration)).await;
        };
        let (reply, verdict) = tokio::sync::oneshot::channel();
        let gone = || crate::StepError::Failed("the run's analysis stopped".to_owned());
        engine.send(Hold { at: at.to_owned(), duration, reply }).map_err(|_| gone())?;
        self.cancellable(verdict).await?.map_err(|_| gone())?
    }

    /// Awaits `work` unless the run is cancelled first.
    pub async fn cancellable<T>(&self, work: impl Future<Output = T>) -> Result<T, crate::StepError> {
        tokio::select! {
            value = work => Ok(value),
            () = self.cancel.cancelled() => Err(crate::StepError::Cancelled),
        }
    }

    /// `text` with every value the step must not print masked (see [`Masks`]).
    pub fn mask(&self, text: &str) -> String {
        self.masks.mask(text)
    }

    /// The key people use to decide about this step (`handoff approve … <key>`).
    pub fn decision_key(&self) -> String {
        format!("{}/{}", self.phase, self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_and_names_the_missing_one() {
        let lookup = |name: &str| (name == "USER").then(|| "ada".to_owned());
        assert_eq!(expand_with("mongodb://${USER}@h/${USER}", lookup).unwrap(), "mongodb://ada@h/ada");
        assert_eq!(expand_with("no refs ${", lookup).unwrap(), "no refs ${");
        assert_eq!(expand_with("${PASS}", lookup).unwrap_err().0, "PASS");
    }

    #[test]
    fn parameters_expand_everywhere_and_their_values_are_masked() {
        let (name, value) = ("PATH", std::env::var("PATH").expect("tests run with a PATH"));
        let with =
            serde_json::json!({"path": format!("${{{name}}}/x"), "list": [1, {"deep": format!("a ${{{name}}}")}]});
        let mut masks = Masks::default();
        let expanded = expand_value(&with, &mut masks).unwrap();
        assert_eq!(expanded["path"], format!("{value}/x"));
        assert_eq!(expanded["list"][1]["deep"], format!("a {value}"));
        assert_eq!(masks.mask(&format!("said {value}!")), format!("said ${{{name}}}!"));
        let unset =
            expand_value(&serde_json::json!({"a/b": ["${HANDOFF_SURELY_UNSET_1234}"]}), &mut masks).unwrap_err();
        assert_eq!(unset.to_string().split(':').next(), Some("parameter `/a~1b/0`"));
        assert_eq!(unset.unset.0, "HANDOFF_SURELY_UNSET_1234");
    }

    #[test]
    fn masks_replace_the_longest_value_first_and_skip_short_ones() {
        let mut masks = Masks::default();
        masks.add("abc", "${SHORT}");
        masks.add("secret", "${A}");
        masks.add("secret-and-more", "${B}");
        assert_eq!(masks.mask("abc secret secret-and-more"), "abc ${A} ${B}");
    }
}

/// A sink that keeps everything in memory: for running a step outside a plan run (tools,
/// benchmarks, an executor's own tests).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every checkpoint saved, in order.
    pub checkpoints: std::sync::Mutex<Vec<Value>>,
    /// The latest value of every metric emitted.
    pub metrics: std::sync::Mutex<BTreeMap<String, f64>>,
    /// Outputs of earlier steps, by step id, as a run would hold them.
    pub outputs: std::sync::Mutex<BTreeMap<String, crate::StepOutput>>,
}

impl Sink for Recorder {
    fn checkpoint(&self, _: &str, _: &str, data: &Value) -> std::io::Result<()> {
        self.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(data.clone());
        Ok(())
    }

    fn metric(&self, _: &str, _: &str, name: &str, value: f64) {
        self.metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned(), value);
    }

    fn progress(&self, _: &str, _: &str, _: &str, _: Option<f64>) {}

    fn decision(&self, _: &str) -> Option<Decision> {
        None
    }

    fn output(&self, step: &str) -> Option<crate::StepOutput> {
        self.outputs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(step).cloned()
    }
}

impl Context {
    /// A context for running one step outside a plan run: wall-clock time, nothing
    /// allowed beyond the defaults, reports to `sink`.
    pub fn detached(
        step: &str,
        endpoints: Endpoints,
        resources: BTreeMap<handoff_plan::model::Id, handoff_plan::model::Resource>,
        checkpoint: Option<Value>,
        sink: Arc<dyn Sink>,
    ) -> Context {
        Context {
            plan: "detached".to_owned(),
            run_id: "detached".to_owned(),
            phase: "detached".to_owned(),
            step: step.to_owned(),
            attempt: 1,
            rolling_back: false,
            clock: Arc::new(crate::SystemClock),
            cancel: CancellationToken::new(),
            checkpoint,
            endpoints: Arc::new(endpoints),
            resources: Arc::new(resources),
            policy: Arc::new(Policy::default()),
            sink,
            masks: Masks::default(),
            analysis: None,
        }
    }
}
