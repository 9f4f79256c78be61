//! Out-of-process executors.
//!
//! Any executable `handoff-executor-<name>` on `PATH` is an executor called `<name>`. handoff
//! starts it once per request, writes one JSON line to its stdin and closes it, then reads
//! JSON lines from its stdout until a final message. The protocol is documented in
//! `docs/plugins.md`; `examples/plugins/handoff-executor-flags` is a complete plugin in
//! Python.
//!
//! Architecture invariant: a plugin is only ever reached through this crate's [`Plugin`],
//! whose actions are `DynAction`s in an `Executor` like the built-in ones.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use std::sync::Arc;

use handoff_executor::{
    BoxFuture, Compensation, Context, Declaration, DynAction, Executor, Policy, StepError, StepOutput,
};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Version of the protocol this release speaks.
pub const PROTOCOL: u32 = 1;

/// Prefix of plugin executables.
pub const PREFIX: &str = "handoff-executor-";

/// How long `describe` and `validate` may take.
const QUICK: Duration = Duration::from_secs(10);

/// Errors finding or describing plugins.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The program could not be run.
    #[error("{path}: cannot run: {source}")]
    Spawn {
        /// The program.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It did not answer in time.
    #[error("{path}: no answer to `{request}` within {}s", QUICK.as_secs())]
    Timeout {
        /// The program.
        path: PathBuf,
        /// The request.
        request: String,
    },
    /// Its answer is not what the protocol says.
    #[error("{path}: bad answer to `{request}`: {message}")]
    Protocol {
        /// The program.
        path: PathBuf,
        /// The request.
        request: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    r#type: String,
    name: String,
    summary: String,
    actions: Vec<ActionDescription>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionDescription {
    name: String,
    summary: String,
    effect: String,
    #[serde(default = "yes")]
    idempotent: bool,
    #[serde(default)]
    resumable: bool,
    #[serde(default)]
    emits: Vec<String>,
    params: Value,
}

fn yes() -> bool {
    true
}

/// One message from a running plugin.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    Progress {
        message: String,
        #[serde(default)]
        fraction: Option<f64>,
    },
    Metric {
        name: String,
        value: f64,
    },
    Checkpoint {
        data: Value,
    },
    Done {
        #[serde(default)]
        output: Value,
        #[serde(default)]
        compensation: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    Failed {
        message: String,
        #[serde(default = "yes")]
        retryable: bool,
    },
    NeedsDecision {
        prompt: String,
    },
}

/// An out-of-process executor, as it described itself.
pub struct Plugin {
    path: PathBuf,
    name: &'static str,
    summary: &'static str,
    actions: Vec<Declaration>,
}

/// One action of a plugin: every request goes to the plugin's program.
struct PluginAction {
    plugin: Arc<Plugin>,
    declaration: Declaration,
}

/// Leaks a string: plugin descriptions live as long as the process, like built-in ones.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// Runs `path` with one request line; returns its stdout lines (for quick requests).
fn ask(path: &Path, request: &Value) -> Result<Vec<String>, PluginError> {
    let name = request["request"].as_str().unwrap_or_default().to_owned();
    let mut child = std::process::Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PluginError::Spawn { path: path.to_owned(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading gets a broken pipe; its answer tells.
        let _ = writeln!(stdin, "{request}");
    }
    let stdout = child.stdout.take();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> =
            stdout.map(|s| BufReader::new(s).lines().map_while(Result::ok).collect()).unwrap_or_default();
        let _ = send.send(lines);
    });
    let lines = receive.recv_timeout(QUICK);
    let _ = child.kill();
    let _ = child.wait();
    lines.map_err(|_| PluginError::Timeout { path: path.to_owned(), request: name })
}

fn effect(name: &str) -> Option<Effect> {
    Some(match name {
        "observe" => Effect::Observe,
        "change" => Effect::Change,
        "backup" => Effect::Backup,
        "destroy" => Effect::Destroy,
        _ => return None,
    })
}

impl Plugin {
    /// Asks the program at `path` to describe itself.
    pub fn describe(path: &Path) -> Result<Plugin, PluginError> {
        let protocol =
            |message: String| PluginError::Protocol { path: path.to_owned(), request: "describe".to_owned(), message };
        let lines = ask(path, &json!({ "protocol": PROTOCOL, "request": "describe" }))?;
        let line = lines.iter().rev().find(|l| !l.trim().is_empty()).ok_or_else(|| protocol("no output".to_owned()))?;
        let description: Description = serde_json::from_str(line).map_err(|e| protocol(e.to_string()))?;
        let expected =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(PREFIX)).unwrap_or_default();
        if description.r#type != "describe" || description.name != expected {
            return Err(protocol(format!(
                "expected {{\"type\": \"describe\", \"name\": \"{expected}\", …}}, got type `{}` name `{}`",
                description.r#type, description.name
            )));
        }
        let mut actions = Vec::new();
        for action in description.actions {
            let effect = effect(&action.effect).ok_or_else(|| {
                protocol(format!(
                    "action `{}`: effect `{}` is not observe, change, backup or destroy",
                    action.name, action.effect
                ))
            })?;
            let params: &'static Value = Box::leak(Box::new(action.params));
            let mut declared = Declaration::declared(leak(action.name), leak(action.summary), effect, params);
            if !action.idempotent {
                declared = declared.not_idempotent();
            }
            if action.resumable {
                declared = declared.resumable();
            }
            let emits: Vec<&'static str> = action.emits.into_iter().map(leak).collect();
            declared = declared.emitting(Box::leak(emits.into_boxed_slice()));
            actions.push(declared);
        }
        Ok(Plugin { path: path.to_owned(), name: leak(description.name), summary: leak(description.summary), actions })
    }

    /// Every `handoff-executor-*` program in the directories of `path` (a `PATH`-style
    /// list), described; the first of a name wins. Programs that fail to describe
    /// themselves are returned as errors beside the plugins that work.
    pub fn discover(path: &std::ffi::OsStr) -> (Vec<Plugin>, Vec<PluginError>) {
        let mut seen = std::collections::BTreeSet::new();
        let (mut plugins, mut errors) = (Vec::new(), Vec::new());
        for dir in std::env::split_paths(path) {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(PREFIX) && n.len() > PREFIX.len())
                })
                .filter(|p| is_executable(p))
                .collect();
            found.sort();
            for program in found {
                let name = program.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                if !seen.insert(name) {
                    continue;
                }
                match Plugin::describe(&program) {
                    Ok(plugin) => plugins.push(plugin),
                    Err(error) => errors.push(error),
                }
            }
        }
        (plugins, errors)
    }

    /// Where the program is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The executor whose actions run this program.
    pub fn executor(self) -> Executor {
        let plugin = Arc::new(self);
        let mut executor = Executor::new(plugin.name, plugin.summary);
        for declaration in &plugin.actions {
            executor = executor.with_dyn(Box::new(PluginAction { plugin: plugin.clone(), declaration: *declaration }));
        }
        executor
    }

    /// Runs a request that streams messages; returns the final one.
    async fn stream(&self, request: Value, cx: &Context) -> Result<Message, StepError> {
        let failed = |message: String| StepError::Failed(format!("{}: {message}", self.path.display()));
        let mut child = tokio::process::Command::new(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot run: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let mut line = request.to_string();
            line.push('\n');
            let _ = stdin.write_all(line.as_bytes()).await;
        }
        let stderr = child.stderr.take().map(|s| {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(s).lines();
                let mut tail = std::collections::VecDeque::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "handoff::plugin", "{line}");
                    if tail.len() == 5 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Vec::from(tail).join("\n")
            })
        });
        let Some(stdout) = child.stdout.take() else { return Err(failed("no stdout".to_owned())) };
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let last = loop {
            let line = tokio::select! {
                line = lines.next_line() => line.map_err(|e| failed(e.to_string()))?,
                () = cx.cancel.cancelled() => {
                    let _ = child.kill().await;
                    return Err(StepError::Cancelled);
                }
            };
            let Some(line) = line else { break None };
            if line.trim().is_empty() {
                continue;
            }
            let message: Message =
                serde_json::from_str(&line).map_err(|e| failed(format!("not a protocol message ({e}): {line}")))?;
            match message {
                Message::Progress { message, fraction } => cx.progress(&message, fraction),
                Message::Metric { name, value } => cx.emit(&name, value),
                Message::Checkpoint { data } => cx.save_checkpoint(&data).map_err(|e| failed(e.to_string()))?,
                final_message => break Some(final_message),
            }
        };
        // After its final message a plugin has a few seconds to exit (and to close stderr).
        let status = match tokio::time::timeout(QUICK, child.wait()).await {
            Ok(status) => status.map_err(|e| failed(e.to_string()))?,
            Err(_) => {
                let _ = child.kill().await;
                child.wait().await.map_err(|e| failed(e.to_string()))?
            }
        };
        let stderr = match stderr {
            Some(task) => tokio::time::timeout(QUICK, task).await.ok().and_then(Result::ok).unwrap_or_default(),
            None => String::new(),
        };
        last.ok_or_else(|| failed(format!("exited ({status}) without a final message; stderr: {stderr}")))
    }

    fn request(&self, kind: &str, action: &str, with: &Value, cx: &Context) -> Value {
        json!({
            "protocol": PROTOCOL,
            "request": kind,
            "action": action,
            "with": with,
            "context": {
                "plan": cx.plan,
                "run": cx.run_id,
                "phase": cx.phase,
                "step": cx.step,
                "attempt": cx.attempt,
                "rolling_back": cx.rolling_back,
                "simulation": cx.policy.simulation,
                "base_dir": cx.policy.base_dir,
                "checkpoint": cx.checkpoint,
                "endpoints": cx.endpoints.names().map(|n| (n.to_owned(), Value::from(cx.endpoints.get(n)))).collect::<serde_json::Map<_, _>>(),
            }
        })
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl DynAction for PluginAction {
    fn declaration(&self) -> &Declaration {
        &self.declaration
    }

    fn describe(&self, _: &Value) -> String {
        self.declaration.summary.to_owned()
    }

    fn preflight(&self, _: &Policy) -> Result<(), String> {
        Ok(())
    }

    fn check(&self, with: &Value, _: &Site<'_>) -> Vec<ParamIssue> {
        let (path, action) = (&self.plugin.path, self.declaration.name);
        let request = json!({ "protocol": PROTOCOL, "request": "validate", "action": action, "with": with });
        let answer = ask(path, &request).and_then(|lines| {
            let line = lines.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
            #[derive(Deserialize)]
            struct Issue {
                #[serde(default)]
                pointer: String,
                message: String,
            }
            #[derive(Deserialize)]
            struct Validated {
                issues: Vec<Issue>,
            }
            serde_json::from_str::<Validated>(&line)
                .map_err(|e| PluginError::Protocol {
                    path: path.clone(),
                    request: "validate".to_owned(),
                    message: e.to_string(),
                })
                .map(|v| v.issues.into_iter().map(|i| ParamIssue::invalid(i.pointer, i.message)).collect())
        });
        answer.unwrap_or_else(|error| {
            vec![ParamIssue::invalid("", format!("the plugin could not check this step: {error}"))]
        })
    }

    fn execute<'a>(&'a self, with: &'a Value, cx: &'a Context) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(async move {
            let with = expanded(with)?;
            let request = self.plugin.request("execute", self.declaration.name, &with, cx);
            match self.plugin.stream(request, cx).await? {
                Message::Done { output, .. } => Ok(StepOutput::from_json(output)),
                Message::Failed { message, retryable: true } => Err(StepError::Failed(message)),
                Message::Failed { message, retryable: false } => Err(StepError::Refused(message)),
                Message::NeedsDecision { prompt } => Err(StepError::NeedsDecision { key: cx.decision_key(), prompt }),
                other => Err(StepError::Failed(format!("unexpected final message {other:?}"))),
            }
        })
    }

    fn compensate<'a>(
        &'a self,
        with: &'a Value,
        output: &'a StepOutput,
        cx: &'a Context,
    ) -> BoxFuture<'a, Result<Compensation, StepError>> {
        Box::pin(async move {
            let with = expanded(with)?;
            let mut request = self.plugin.request("compensate", self.declaration.name, &with, cx);
            request["output"] = serde_json::to_value(output).unwrap_or_default();
            match self.plugin.stream(request, cx).await? {
                Message::Done { compensation, message, .. } => Ok(match compensation.as_deref() {
                    Some("not_needed") => Compensation::NotNeeded,
                    Some("left_to_rollback") => Compensation::LeftToRollback,
                    _ => Compensation::Undone(message.unwrap_or_else(|| "undone by the plugin".to_owned())),
                }),
                Message::Failed { message, .. } => Err(StepError::Failed(message)),
                other => Err(StepError::Failed(format!("unexpected final message {other:?}"))),
            }
        })
    }
}

/// A step's `with:` with every `${VAR}` expanded, as for built-in actions (an unset one
/// refuses the step, naming it).
fn expanded(with: &Value) -> Result<Value, StepError> {
    handoff_executor::expand_value(with, &mut handoff_executor::Masks::default())
        .map_err(|e| StepError::Refused(e.to_string()))
}
