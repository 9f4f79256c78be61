//! Generic executors: `shell`, `http`, `wait`, `gate` and `notify`.
//!
//! They act on nothing a plan declares as a resource, so their checks are about the
//! parameters themselves. Execution is in [`run`].

use std::collections::BTreeMap;

use handoff_executor::{Action, Compensation, Context, Declaration, Executor, Policy, StepError, StepOutput};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod run;

/// `shell.run`: run a command.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellRun {
    /// Program and arguments; run directly, without a shell, unless `program` is a shell.
    /// `${ENV_VAR}` references are expanded by handoff, like in every parameter (a shell's own
    /// variables are written `$name`); expanded values are masked in what the command prints.
    /// The command runs in its own process group, stopped (SIGTERM, then SIGKILL after 5 s)
    /// when it exits, when the run is cancelled, or when handoff dies.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// The command's environment (values may be `${ENV_VAR}` references). The command gets
    /// these, `HANDOFF_RUN_ID`, `HANDOFF_PHASE` and `HANDOFF_STEP`, and from handoff's own
    /// environment only `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LC_ALL`, `TZ` and `TMPDIR`.
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

/// What a command printed and how it exited (the tail of each stream, secrets masked).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CommandOutput {
    /// Exit code (`None` when killed by a signal, or not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
    /// The end of its standard output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// The end of its standard error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// An HTTP answer that met its expectations.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// JSON body, when it was JSON.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// An endpoint that became healthy.
#[derive(Debug, Serialize, Deserialize)]
pub struct Healthy {
    /// Status code of the healthy answer.
    pub status: u16,
    /// Polls it took.
    pub polls: u32,
}

/// A soak that ran its course.
#[derive(Debug, Serialize, Deserialize)]
pub struct Waited {
    /// How long, as the plan wrote it.
    pub waited: String,
}

/// A person's approval.
#[derive(Debug, Serialize, Deserialize)]
pub struct Approved {
    /// Who approved.
    pub approved_by: String,
}

/// A message told (or, in a simulation, kept for the report).
#[derive(Debug, Serialize, Deserialize)]
pub struct Notified {
    /// The message as sent.
    pub text: String,
    /// Whether it was posted.
    pub sent: bool,
}

/// What the `shell` executor does, with the environment its commands get.
const SHELL_SUMMARY: &str = "Runs commands (refused unless the plan run allows shell steps). Each command runs in its \
own process group, stopped (SIGTERM, then SIGKILL after 5 s) when it exits, when the run is interrupted, or when \
handoff dies. Its environment is explicit: its `env:`, `HANDOFF_RUN_ID`, `HANDOFF_PHASE`, `HANDOFF_STEP`, and from \
handoff's own only `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR`. What it prints is kept \
(its last 2 KiB) with every expanded `${VAR}` value masked.";

/// The generic executors.
pub fn executors() -> Vec<Executor> {
    vec![
        Executor::new("shell", SHELL_SUMMARY).with(RunCommand),
        Executor::new("http", "Calls HTTP endpoints: one request, or polling until healthy.")
            .with(SendRequest)
            .with(PollHealth),
        Executor::new("wait", "Waits, with the phase's criteria and alerts watched.").with(Soak),
        Executor::new("gate", "Stops until a person approves.").with(ManualGate),
        Executor::new("notify", "Tells people what happened (Slack-compatible webhooks).").with(PostWebhook),
    ]
}

/// `shell.run`.
pub struct RunCommand;

impl Action for RunCommand {
    type Params = ShellRun;
    type Output = CommandOutput;
    const DECLARATION: Declaration =
        Declaration::new::<ShellRun>("run", "Run a command and check its exit code.", Effect::Change)
            .not_idempotent()
            .undone_by("runs its `undo:` command (left to the rollback steps without one)");

    fn check(&self, run: &ShellRun, _: &Site<'_>) -> Vec<ParamIssue> {
        if run.command.first().is_some_and(|p| p.trim().is_empty()) {
            vec![ParamIssue::invalid("/command/0", "the program name is empty")]
        } else {
            Vec::new()
        }
    }

    fn describe(&self, run: &ShellRun) -> String {
        let env: String = run.env.iter().map(|(k, v)| format!("{k}={} ", shell_word(v))).collect();
        let dir = run.workdir.as_ref().map(|d| format!(" in {}", shell_word(d))).unwrap_or_default();
        let undo = run.undo.as_ref().map(|u| format!("; undo: `{env}{}`", shell_words(u))).unwrap_or_default();
        format!("run `{env}{}`{dir}, expect exit {}{undo}", shell_words(&run.command), run.expect_exit)
    }

    fn preflight(&self, policy: &Policy) -> Result<(), String> {
        if policy.allow_shell || policy.simulation { Ok(()) } else { Err(run::SHELL_REFUSED.to_owned()) }
    }

    async fn execute(&self, run: ShellRun, cx: &Context) -> Result<StepOutput<CommandOutput>, StepError> {
        run::shell(&run.command, &run, cx).await
    }

    async fn compensate(&self, run: ShellRun, _: CommandOutput, cx: &Context) -> Result<Compensation, StepError> {
        match &run.undo {
            Some(undo) => {
                run::shell(undo, &run, cx).await?;
                Ok(Compensation::Undone(format!("ran `{}`", undo.join(" "))))
            }
            None => Ok(Compensation::LeftToRollback),
        }
    }
}

/// `http.request`.
pub struct SendRequest;

impl Action for SendRequest {
    type Params = HttpRequest;
    type Output = Answer;
    const DECLARATION: Declaration =
        Declaration::new::<HttpRequest>("request", "Send a request; check status and JSON fields.", Effect::Change)
            .not_idempotent();

    fn check(&self, request: &HttpRequest, _: &Site<'_>) -> Vec<ParamIssue> {
        http_issues(&request.url, &request.expect_json)
    }

    fn describe(&self, request: &HttpRequest) -> String {
        let body = request.body.as_ref().map(|b| format!(" with body `{b}`")).unwrap_or_default();
        let headers = if request.headers.is_empty() {
            String::new()
        } else {
            format!(" (headers: {})", request.headers.keys().cloned().collect::<Vec<_>>().join(", "))
        };
        format!(
            "{} {}{body}{headers}, expect status {}{}",
            run::method(request.method),
            request.url,
            request.expect_status,
            expectations(&request.expect_json)
        )
    }

    async fn execute(&self, request: HttpRequest, cx: &Context) -> Result<StepOutput<Answer>, StepError> {
        run::http_request(&request, cx).await.map(StepOutput::new)
    }
}

/// `http.health`.
pub struct PollHealth;

impl Action for PollHealth {
    type Params = HttpHealth;
    type Output = Healthy;
    const DECLARATION: Declaration =
        Declaration::new::<HttpHealth>("health", "Poll until the endpoint answers as expected.", Effect::Observe);

    fn check(&self, health: &HttpHealth, _: &Site<'_>) -> Vec<ParamIssue> {
        http_issues(&health.url, &health.expect_json)
    }

    fn describe(&self, health: &HttpHealth) -> String {
        let every = health.interval.as_ref().map(|i| format!(", every {i}")).unwrap_or_default();
        format!(
            "poll {} until status {}{} (within {}{every})",
            health.url,
            health.expect_status,
            expectations(&health.expect_json),
            health.within
        )
    }

    async fn execute(&self, health: HttpHealth, cx: &Context) -> Result<StepOutput<Healthy>, StepError> {
        run::http_health(&health, cx).await.map(StepOutput::new)
    }
}

/// ` and <pointer> = <value>` for each expected JSON value.
fn expectations(expect_json: &BTreeMap<String, serde_json::Value>) -> String {
    expect_json.iter().map(|(pointer, value)| format!(" and `{pointer}` = `{value}`")).collect()
}

/// Arguments as one line a POSIX shell reads back as the same arguments.
fn shell_words(args: &[String]) -> String {
    args.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ")
}

/// One argument quoted for a POSIX shell. handoff expands `${NAME}` itself; an argument that
/// holds one is double-quoted with every other `$`, `` ` ``, `"` and `\` escaped, so the
/// shell expands exactly those references from the same environment.
fn shell_word(arg: &str) -> String {
    if !arg.contains("${") {
        return shlex::try_quote(arg).map_or_else(|_| format!("{arg:?}"), |q| q.into_owned());
    }
    let mut out = String::from("\"");
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek() == Some(&'{') => out.push('$'),
            '$' | '`' | '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A URL must be `http(s)://…` or a `${ENV_VAR}` reference; expectations are JSON pointers.
fn http_issues(url: &str, expect_json: &BTreeMap<String, serde_json::Value>) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("${")) {
        issues
            .push(ParamIssue::invalid("/url", format!("`{url}` is not an http(s) URL or a `${{ENV_VAR}}` reference")));
    }
    for pointer in expect_json.keys() {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            issues.push(ParamIssue::invalid(
                format!("/expect_json/{pointer}"),
                format!("`{pointer}` is not a JSON pointer; write `/{pointer}`"),
            ));
        }
    }
    issues
}

/// `wait.soak`.
pub struct Soak;

impl Action for Soak {
    type Params = WaitSoak;
    type Output = Waited;
    const DECLARATION: Declaration = Declaration::new::<WaitSoak>("soak", "Hold for a duration.", Effect::Observe);

    fn describe(&self, soak: &WaitSoak) -> String {
        format!("wait {}", soak.duration)
    }

    fn planned_duration(&self, soak: &WaitSoak) -> Option<std::time::Duration> {
        Some(soak.duration.get())
    }

    async fn execute(&self, soak: WaitSoak, cx: &Context) -> Result<StepOutput<Waited>, StepError> {
        cx.cancellable(cx.clock.sleep(soak.duration.get())).await?;
        Ok(StepOutput::new(Waited { waited: soak.duration.as_str().to_owned() }))
    }
}

/// `gate.manual`.
pub struct ManualGate;

impl Action for ManualGate {
    type Params = GateManual;
    type Output = Approved;
    const DECLARATION: Declaration =
        Declaration::new::<GateManual>("manual", "Wait for a person to confirm.", Effect::Observe);

    fn describe(&self, gate: &GateManual) -> String {
        format!("ask a person: {}", gate.prompt)
    }

    async fn execute(&self, gate: GateManual, cx: &Context) -> Result<StepOutput<Approved>, StepError> {
        match cx.decision() {
            Some(decision) if decision.approved => Ok(StepOutput::new(Approved { approved_by: decision.by })),
            Some(decision) => Err(StepError::Failed(format!(
                "rejected by {}{}",
                decision.by,
                decision.comment.map(|c| format!(": {c}")).unwrap_or_default()
            ))),
            None => Err(StepError::NeedsDecision { key: cx.decision_key(), prompt: gate.prompt }),
        }
    }
}

/// `notify.webhook`.
pub struct PostWebhook;

impl Action for PostWebhook {
    type Params = NotifyWebhook;
    type Output = Notified;
    const DECLARATION: Declaration =
        Declaration::new::<NotifyWebhook>("webhook", "Post a message to a webhook.", Effect::Observe).not_idempotent();

    fn check(&self, webhook: &NotifyWebhook, _: &Site<'_>) -> Vec<ParamIssue> {
        if webhook.url.starts_with("${") {
            return Vec::new();
        }
        vec![ParamIssue::new(
            handoff_plan::codes::LITERAL_CREDENTIAL,
            "/url",
            "webhook URLs carry their secret in the path; use a `${ENV_VAR}` reference",
        )]
    }

    fn describe(&self, webhook: &NotifyWebhook) -> String {
        format!("post \"{}\" to {}", webhook.message, webhook.url)
    }

    async fn execute(&self, webhook: NotifyWebhook, cx: &Context) -> Result<StepOutput<Notified>, StepError> {
        run::notify(&webhook, cx).await.map(StepOutput::new)
    }
}

#[cfg(test)]
mod tests {
    /// A real `sh` reads the quoted line back as the same arguments, with handoff's `${NAME}`
    /// references expanded as handoff would.
    #[test]
    fn shell_words_read_back_as_the_same_arguments() {
        let args: Vec<String> =
            ["kubectl", "a b.yaml", "echo $HOME; ls", "it's", "--uri=${URI}/x", "${URI}$B`x`\\\"", "*", "-", ""]
                .iter()
                .map(|a| (*a).to_owned())
                .collect();
        let line = super::shell_words(&args);
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {line}"))
            .env("URI", "mongodb://h/db")
            .env("B", "not expanded")
            .output()
            .unwrap();
        let read: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect();
        let expected: Vec<String> = args.iter().map(|a| a.replace("${URI}", "mongodb://h/db")).collect();
        assert_eq!(read, expected, "{line}");
    }

    #[test]
    fn the_documented_environment_is_the_one_commands_get() {
        let handoff = ["HANDOFF_RUN_ID", "HANDOFF_PHASE", "HANDOFF_STEP"];
        for name in crate::run::BASE_ENVIRONMENT.iter().chain(&handoff) {
            assert!(crate::SHELL_SUMMARY.contains(&format!("`{name}`")), "{name} is not documented");
        }
    }
}
