//! Execution of the generic actions.

use std::process::Stdio;
use std::time::Duration;

use handoff_executor::http::{self, Request};
use handoff_executor::process::{Group, KILL_GRACE, Start};
use handoff_executor::{Context, StepError};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use handoff_executor::StepOutput;

use crate::{Answer, CommandOutput, Healthy, HttpHealth, HttpMethod, HttpRequest, Notified, NotifyWebhook, ShellRun};

/// Timeout of one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a command's output kept in its step output.
const OUTPUT_TAIL: usize = 2048;

/// Why a shell step is refused.
pub(crate) const SHELL_REFUSED: &str =
    "shell steps are refused unless the run allows them: review the commands, then pass `--allow-shell`";

/// Variables a command gets from handoff's environment when set; everything else it gets
/// is named in the step's `env:` (or is one of the `HANDOFF_*` variables of the step).
pub(crate) const BASE_ENVIRONMENT: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// The end of `text`, at most [`OUTPUT_TAIL`] bytes, cut at a character boundary; `text` is
/// masked before it is cut, so no part of a secret survives a cut.
fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].trim_end().to_owned()
}

/// The command, in its own process group that dies with handoff, with the explicit
/// environment of `run`.
fn command(command: &[String], run: &ShellRun, cx: &Context) -> Result<Group, StepError> {
    let Some((program, args)) = command.split_first() else {
        return Err(StepError::Refused("empty command".to_owned()));
    };
    let mut process = Group::command(program, args, Start { keep: false, grace: KILL_GRACE });
    process
        .current_dir(cx.policy.base_dir.join(run.workdir.as_deref().unwrap_or(".")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .envs(BASE_ENVIRONMENT.iter().filter_map(|name| Some((name, std::env::var_os(name)?))))
        .env("HANDOFF_RUN_ID", &cx.run_id)
        .env("HANDOFF_PHASE", &cx.phase)
        .env("HANDOFF_STEP", &cx.step)
        .envs(&run.env);
    Group::spawn(&mut process).map_err(|e| StepError::Failed(format!("cannot start `{program}`: {e}")))
}

/// Reads a stream to its end, in the background.
fn drain(stream: Option<impl AsyncRead + Unpin + Send + 'static>) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_end(&mut bytes).await;
        }
        bytes
    })
}

/// Runs `command` with the environment and working directory of `run`. When the run is
/// cancelled, every process of the command's group gets SIGTERM, then SIGKILL after
/// [`KILL_GRACE`], and the step reports cancelled once none is left; when the command
/// exits, what it left running in its group is stopped the same way.
pub(crate) async fn shell(
    command: &[String],
    run: &ShellRun,
    cx: &Context,
) -> Result<StepOutput<CommandOutput>, StepError> {
    // A simulation has no cluster, CI or cloud account to run commands against: the step is
    // reported as assumed, never silently passed.
    if cx.policy.simulation {
        let why = format!("`{}` (command not run)", command.join(" "));
        return Ok(StepOutput::new(CommandOutput::default()).assumed(why));
    }
    if !cx.policy.allow_shell {
        return Err(StepError::Refused(SHELL_REFUSED.to_owned()));
    }
    let program = &command[0];
    let mut group = self::command(command, run, cx)?;
    let (stdout, stderr) = (drain(group.stdout()), drain(group.stderr()));
    let status = tokio::select! {
        status = group.wait() => status,
        () = cx.cancel.cancelled() => {
            group.terminate(KILL_GRACE).await;
            return Err(StepError::Cancelled);
        }
    };
    group.terminate(KILL_GRACE).await;
    let status = status.map_err(|e| StepError::Failed(format!("`{program}` failed: {e}")))?;
    let text = |bytes: Result<Vec<u8>, _>| cx.mask(&String::from_utf8_lossy(&bytes.unwrap_or_default()));
    let (stdout, stderr) = (text(stdout.await), text(stderr.await));
    let code = status.code();
    let result = CommandOutput { exit: code, stdout: tail(&stdout), stderr: tail(&stderr) };
    if code == Some(run.expect_exit) {
        Ok(StepOutput::new(result))
    } else {
        let how = code.map_or_else(|| "was killed by a signal".to_owned(), |c| format!("exited with {c}"));
        let last = result.stderr.lines().last().map(|l| format!(": {l}")).unwrap_or_default();
        Err(StepError::Failed(format!("`{program}` {how}, expected {}{last}", run.expect_exit)))
    }
}

pub(crate) fn method(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
    }
}

/// Checks one answer against the expected status and JSON fields.
fn judge(response: &http::Response, status: u16, expect: &std::collections::BTreeMap<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    if response.status != status {
        problems.push(format!("status {} (expected {status}): {}", response.status, response.excerpt));
    }
    problems.extend(http::mismatches(response.json.as_ref(), expect.clone()));
    problems
}

pub(crate) async fn http_request(request: &HttpRequest, cx: &Context) -> Result<Answer, StepError> {
    let send = Request {
        method: method(request.method).to_owned(),
        url: request.url.clone(),
        headers: request.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        body: request.body.clone(),
        timeout: HTTP_TIMEOUT,
    };
    let response = cx.cancellable(send.send()).await?.map_err(|e| StepError::Failed(e.to_string()))?;
    let problems = judge(&response, request.expect_status, &request.expect_json);
    if problems.is_empty() {
        // The body is kept in the run's log: values expanded into the request are masked.
        let body = response.json.map(|json| {
            let text = cx.mask(&json.to_string());
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        });
        Ok(Answer { status: response.status, body })
    } else {
        Err(StepError::Failed(format!("{} {}: {}", method(request.method), request.url, problems.join("; "))))
    }
}

pub(crate) async fn http_health(health: &HttpHealth, cx: &Context) -> Result<Healthy, StepError> {
    let interval = health.interval.as_ref().map_or(Duration::from_secs(5), |i| i.get());
    let started = cx.clock.now();
    let mut polls = 0u32;
    loop {
        polls += 1;
        let last = match cx.cancellable(Request::get(&health.url, HTTP_TIMEOUT).send()).await? {
            Ok(response) => {
                let problems = judge(&response, health.expect_status, &health.expect_json);
                if problems.is_empty() {
                    return Ok(Healthy { status: response.status, polls });
                }
                problems.join("; ")
            }
            Err(error) => error.to_string(),
        };
        let waited = cx.clock.now().duration_since(started).unsigned_abs();
        if waited >= health.within.get() {
            return Err(StepError::Failed(format!(
                "{} not healthy within {} ({polls} polls); last: {last}",
                health.url, health.within
            )));
        }
        cx.progress(&format!("not healthy yet: {last}"), None);
        cx.cancellable(cx.clock.sleep(interval)).await?;
    }
}

pub(crate) async fn notify(webhook: &NotifyWebhook, cx: &Context) -> Result<Notified, StepError> {
    let status = if cx.rolling_back { "rolling back" } else { "in progress" };
    let text = webhook
        .message
        .replace("{{ plan }}", &cx.plan)
        .replace("{{ phase }}", &cx.phase)
        .replace("{{ status }}", status);
    if cx.policy.simulation {
        // A simulation tells nobody: the message is kept in the report instead.
        return Ok(Notified { text, sent: false });
    }
    let send = Request {
        method: "POST".to_owned(),
        url: webhook.url.clone(),
        headers: Vec::new(),
        body: Some(json!({ "text": text })),
        timeout: HTTP_TIMEOUT,
    };
    let response = cx.cancellable(send.send()).await?.map_err(|e| StepError::Failed(e.to_string()))?;
    if (200..300).contains(&response.status) {
        Ok(Notified { text, sent: true })
    } else {
        Err(StepError::Failed(format!("webhook {} answered {}: {}", webhook.url, response.status, response.excerpt)))
    }
}
