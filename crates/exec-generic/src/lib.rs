//! Generic executors: `shell`, `http`, `wait`, `gate` and `notify`.
//!
//! They act on nothing a plan declares as a resource, so their checks are about the
//! parameters themselves. Execution is in [`run`].

use std::collections::BTreeMap;

use handoff_executor::{Action, BoxFuture, Call, Compensation, Context, Executor, Policy, StepError, params};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

mod run;

/// `shell.run`: run a command.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellRun {
    /// Program and arguments; run directly, without a shell, unless `program` is a shell.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Extra environment variables (values may be `${ENV_VAR}` references).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the plan file.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Exit code that means success.
    #[serde(default)]
    pub expect_exit: i32,
    /// Command that undoes this one when the phase rolls back (run the same way).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub undo: Option<Vec<String>>,
}

/// `http.request`: send one HTTP request and check the answer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// HTTP method.
    #[serde(default = "get")]
    pub method: HttpMethod,
    /// URL (may contain `${ENV_VAR}` references).
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Status code that means success.
    #[serde(default = "ok")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: u16,
    /// JSON pointer → expected value in the response body.
    #[serde(default)]
    pub expect_json: BTreeMap<String, serde_json::Value>,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

fn get() -> HttpMethod {
    HttpMethod::Get
}

fn ok() -> u16 {
    200
}

/// `http.health`: poll a URL until it answers as expected.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHealth {
    /// URL to poll.
    pub url: String,
    /// Status code that means healthy.
    #[serde(default = "ok")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: u16,
    /// JSON pointer → expected value in the response body.
    #[serde(default)]
    pub expect_json: BTreeMap<String, serde_json::Value>,
    /// Time between polls.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Give up when not healthy within this time.
    pub within: Duration,
}

/// `wait.soak`: hold for a while with criteria and alerts watched.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitSoak {
    /// How long.
    pub duration: Duration,
}

/// `gate.manual`: wait for a person's approval or confirmation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateManual {
    /// What the person confirms.
    pub prompt: String,
    /// Who may confirm; anyone with access when empty.
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// `notify.webhook`: post a Slack-compatible message.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyWebhook {
    /// Webhook URL, as a `${ENV_VAR}` reference (webhook URLs are secrets).
    pub url: String,
    /// Message text; `{{ plan }}`, `{{ phase }}` and `{{ status }}` are filled in.
    pub message: String,
}

/// The generic executors.
pub fn executors() -> Vec<Box<dyn Executor>> {
    vec![Box::new(Shell), Box::new(Http), Box::new(Wait), Box::new(Gate), Box::new(Notify)]
}

struct Shell;
struct Http;
struct Wait;
struct Gate;
struct Notify;

impl Executor for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }
    fn summary(&self) -> &'static str {
        "Runs commands (refused unless the plan run allows shell steps)."
    }
    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] =
            &[Action::new::<ShellRun>("run", "Run a command and check its exit code.", Effect::Change)
                .not_idempotent()];
        ACTIONS
    }
    fn check(&self, _: &str, with: &serde_json::Value, _: &Site<'_>) -> Vec<ParamIssue> {
        match params::<ShellRun>(with) {
            Ok(run) if run.command.first().is_some_and(|p| p.trim().is_empty()) => {
                vec![ParamIssue::invalid("/command/0", "the program name is empty")]
            }
            Ok(_) => Vec::new(),
            Err(issues) => issues,
        }
    }
    fn executes(&self, _: &str) -> bool {
        true
    }
    fn describe(&self, call: Call<'_>) -> String {
        match call.params::<ShellRun>() {
            Ok(run) => {
                let undo = run.undo.map(|u| format!("; undo: `{}`", u.join(" "))).unwrap_or_default();
                format!("run `{}`, expect exit {}{undo}", run.command.join(" "), run.expect_exit)
            }
            Err(e) => e.to_string(),
        }
    }
    fn preflight(&self, _: &str, policy: &Policy) -> Result<(), String> {
        if policy.allow_shell || policy.simulation { Ok(()) } else { Err(run::SHELL_REFUSED.to_owned()) }
    }
    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            let run = call.params::<ShellRun>()?;
            run::shell(&run.command, &run, cx).await
        })
    }
    fn compensate<'a>(
        &'a self,
        call: Call<'a>,
        _: &'a serde_json::Value,
        cx: &'a Context,
    ) -> BoxFuture<'a, Result<Compensation, StepError>> {
        Box::pin(async move {
            let run = call.params::<ShellRun>()?;
            match &run.undo {
                Some(undo) => {
                    run::shell(undo, &run, cx).await?;
                    Ok(Compensation::Undone(format!("ran `{}`", undo.join(" "))))
                }
                None => Ok(Compensation::LeftToRollback),
            }
        })
    }
}

/// Deserializes a call's parameters (already schema-checked; a failure is a bug in the
/// plan's schema, reported as a refusal).
impl Executor for Http {
    fn name(&self) -> &'static str {
        "http"
    }
    fn summary(&self) -> &'static str {
        "Calls HTTP endpoints: one request, or polling until healthy."
    }
    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] = &[
            Action::new::<HttpRequest>("request", "Send a request; check status and JSON fields.", Effect::Change)
                .not_idempotent(),
            Action::new::<HttpHealth>("health", "Poll until the endpoint answers as expected.", Effect::Observe),
        ];
        ACTIONS
    }
    fn check(&self, action: &str, with: &serde_json::Value, _: &Site<'_>) -> Vec<ParamIssue> {
        let (url, pointers) = match action {
            "request" => match params::<HttpRequest>(with) {
                Ok(p) => (p.url, p.expect_json.into_keys().collect::<Vec<_>>()),
                Err(issues) => return issues,
            },
            _ => match params::<HttpHealth>(with) {
                Ok(p) => (p.url, p.expect_json.into_keys().collect()),
                Err(issues) => return issues,
            },
        };
        let mut issues = url_issues("/url", &url);
        for pointer in pointers {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                issues.push(ParamIssue::invalid(
                    format!("/expect_json/{pointer}"),
                    format!("`{pointer}` is not a JSON pointer; write `/{pointer}`"),
                ));
            }
        }
        issues
    }
    fn executes(&self, _: &str) -> bool {
        true
    }
    fn describe(&self, call: Call<'_>) -> String {
        match call.action {
            "request" => call.params::<HttpRequest>().map_or_else(
                |e| e.to_string(),
                |r| format!("{} {}, expect status {}", run::method(r.method), r.url, r.expect_status),
            ),
            _ => call.params::<HttpHealth>().map_or_else(
                |e| e.to_string(),
                |h| format!("poll {} until status {} (within {})", h.url, h.expect_status, h.within),
            ),
        }
    }
    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            match call.action {
                "request" => run::http_request(&call.params::<HttpRequest>()?, cx).await,
                _ => run::http_health(&call.params::<HttpHealth>()?, cx).await,
            }
        })
    }
}

/// A URL must be `http(s)://…` or a `${ENV_VAR}` reference.
fn url_issues(pointer: &str, url: &str) -> Vec<ParamIssue> {
    if url.starts_with("http://") || url.starts_with("https://") || url.starts_with("${") {
        Vec::new()
    } else {
        vec![ParamIssue::invalid(pointer, format!("`{url}` is not an http(s) URL or a `${{ENV_VAR}}` reference"))]
    }
}

impl Executor for Wait {
    fn name(&self) -> &'static str {
        "wait"
    }
    fn summary(&self) -> &'static str {
        "Waits, with the phase's criteria and alerts watched."
    }
    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] = &[Action::new::<WaitSoak>("soak", "Hold for a duration.", Effect::Observe)];
        ACTIONS
    }
    fn check(&self, _: &str, with: &serde_json::Value, _: &Site<'_>) -> Vec<ParamIssue> {
        params::<WaitSoak>(with).err().unwrap_or_default()
    }
    fn executes(&self, _: &str) -> bool {
        true
    }
    fn describe(&self, call: Call<'_>) -> String {
        call.params::<WaitSoak>().map_or_else(|e| e.to_string(), |w| format!("wait {}", w.duration))
    }
    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            let soak = call.params::<WaitSoak>()?;
            cx.cancellable(cx.clock.sleep(soak.duration.get())).await?;
            Ok(serde_json::json!({ "waited": soak.duration.as_str() }))
        })
    }
}

impl Executor for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    fn summary(&self) -> &'static str {
        "Stops until a person approves."
    }
    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] =
            &[Action::new::<GateManual>("manual", "Wait for a person to confirm.", Effect::Observe)];
        ACTIONS
    }
    fn check(&self, _: &str, with: &serde_json::Value, _: &Site<'_>) -> Vec<ParamIssue> {
        params::<GateManual>(with).err().unwrap_or_default()
    }
    fn executes(&self, _: &str) -> bool {
        true
    }
    fn describe(&self, call: Call<'_>) -> String {
        call.params::<GateManual>().map_or_else(|e| e.to_string(), |g| format!("ask a person: {}", g.prompt))
    }
    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            let gate = call.params::<GateManual>()?;
            match cx.decision() {
                Some(decision) if decision.approved => Ok(serde_json::json!({ "approved_by": decision.by })),
                Some(decision) => Err(StepError::Failed(format!(
                    "rejected by {}{}",
                    decision.by,
                    decision.comment.map(|c| format!(": {c}")).unwrap_or_default()
                ))),
                None => Err(StepError::NeedsDecision { key: cx.decision_key(), prompt: gate.prompt }),
            }
        })
    }
}

impl Executor for Notify {
    fn name(&self) -> &'static str {
        "notify"
    }
    fn summary(&self) -> &'static str {
        "Tells people what happened (Slack-compatible webhooks)."
    }
    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] =
            &[Action::new::<NotifyWebhook>("webhook", "Post a message to a webhook.", Effect::Observe)
                .not_idempotent()];
        ACTIONS
    }
    fn check(&self, _: &str, with: &serde_json::Value, _: &Site<'_>) -> Vec<ParamIssue> {
        match params::<NotifyWebhook>(with) {
            Ok(p) if !p.url.starts_with("${") => vec![ParamIssue::new(
                handoff_plan::codes::LITERAL_CREDENTIAL,
                "/url",
                "webhook URLs carry their secret in the path; use a `${ENV_VAR}` reference",
            )],
            Ok(_) => Vec::new(),
            Err(issues) => issues,
        }
    }
    fn executes(&self, _: &str) -> bool {
        true
    }
    fn describe(&self, call: Call<'_>) -> String {
        call.params::<NotifyWebhook>()
            .map_or_else(|e| e.to_string(), |n| format!("post \"{}\" to {}", n.message, n.url))
    }
    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move { run::notify(&call.params::<NotifyWebhook>()?, cx).await })
    }
}
