//! Execution of `traffic.shift`: apply each weight of the schedule, hold it for its soak,
//! checkpoint after each; compensation puts back what was there before.

use std::process::Stdio;
use std::time::Duration;

use handoff_executor::http::Request;
use handoff_executor::{Compensation, Context, StepError};
use handoff_plan::model::Id;
use handoff_render::{Origin, Templates, VirtualService};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::route::{self, Target};
use crate::{Backend, Shift};

/// How long a router or kubectl call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where this step's route lives, refused when the run may not touch it.
fn target(shift: &Shift, cx: &Context) -> Result<Target, StepError> {
    let (_, name, value) = cx.resource_endpoint(&shift.route)?;
    let target = Target::parse(value, &cx.policy.base_dir)
        .map_err(|e| StepError::Refused(format!("route `{}` (endpoint `{name}`): {e}", shift.route)))?;
    let router = matches!(target, Target::Router(_));
    if cx.policy.simulation && !router {
        return Err(StepError::Refused(format!(
            "a simulation never touches a cluster or a GitOps checkout: point endpoint `{name}` at the simulator's router"
        )));
    }
    if matches!(shift.backend, Backend::Simulated) && !router {
        return Err(StepError::Refused(format!(
            "`backend: simulated` drives a router: endpoint `{name}` must be an http(s) URL"
        )));
    }
    Ok(target)
}

/// What `traffic.shift` applied.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShiftOutput {
    /// The route.
    pub route: Id,
    /// The service traffic moved to.
    pub to: Id,
    /// Weights applied by this attempt, in order.
    pub weights: Vec<u8>,
    /// The last weight of the schedule.
    pub weight: Option<u8>,
    /// The route as it was before the shift (the live object, the file's text, or the
    /// router's VirtualService value), which compensation puts back.
    pub previous: Value,
}

/// Runs a shift from the checkpointed weight step on.
pub(crate) async fn shift(shift: &Shift, cx: &Context, templates: &Templates) -> Result<ShiftOutput, StepError> {
    let target = target(shift, cx)?;
    let checkpoint = cx.checkpoint.as_ref();
    let start = checkpoint.and_then(|c| c.get("next")).and_then(Value::as_u64).unwrap_or(0) as usize;
    let previous = match checkpoint.and_then(|c| c.get("previous")) {
        Some(previous) => previous.clone(),
        None => {
            let mut previous = read(&target, cx).await?;
            if let Some(document) = previous.get("document") {
                previous["weight"] = json!(route::weight_in(document, shift.direction, &mesh(shift, cx, &target)?.to));
            }
            previous
        }
    };
    let mut applied = Vec::new();
    for (i, step) in shift.schedule.steps.iter().enumerate().skip(start) {
        apply(shift, step.weight, &target, cx, templates).await?;
        applied.push(step.weight);
        cx.save_checkpoint(&json!({"next": i + 1, "previous": previous}))
            .map_err(|e| StepError::Failed(format!("checkpoint not saved: {e}")))?;
        cx.emit("traffic_weight", f64::from(step.weight));
        let total = shift.schedule.steps.len();
        cx.progress(
            &format!(
                "{}% of {} to `{}`, holding {}",
                step.weight,
                route::direction_name(shift.direction),
                shift.to,
                step.soak
            ),
            Some((i + 1) as f64 / total as f64),
        );
        cx.hold(&format!("{}%", step.weight), step.soak.get()).await?;
    }
    Ok(ShiftOutput {
        route: shift.route.clone(),
        to: shift.to.clone(),
        weights: applied,
        weight: shift.schedule.steps.last().map(|s| s.weight),
        previous,
    })
}

/// Puts back this shift's own routes as they were before it. When the object holds other
/// steps' routes too, only this step's part is replaced (theirs stay); otherwise the object
/// (or file, or router) is put back as it was, exactly.
pub(crate) async fn undo(
    shift: &Shift,
    output: &ShiftOutput,
    cx: &Context,
    templates: &Templates,
) -> Result<Compensation, StepError> {
    let target = target(shift, cx)?;
    let previous = &output.previous;
    let document = previous.get("document");
    let live = read(&target, cx).await?;
    match (&target, document) {
        (_, _) if shared_with_others(shift, &live) => {
            let current = route::routes_of(live.get("document").unwrap_or(&Value::Null));
            let before = route::routes_of(document.unwrap_or(&Value::Null));
            let service = route::restored(shift, &target, &current, &before, &mesh(shift, cx, &target)?, origin(cx));
            put(&target, &service, templates, cx).await?;
        }
        (Target::Router(url), Some(body)) => router_put(url, body.clone(), cx).await?,
        (Target::Cluster { context, .. }, Some(document)) => {
            kubectl(
                context,
                &["apply", "-f", "-"],
                Some(&serde_json::to_string(&clean(document)).unwrap_or_default()),
                cx,
            )
            .await?;
        }
        (Target::File(path), Some(_)) => {
            let text = previous.get("text").and_then(Value::as_str).unwrap_or_default();
            write_file(path, text)?;
        }
        (Target::File(path), None) => {
            std::fs::remove_file(path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(|e| StepError::Failed(format!("cannot remove {}: {e}", path.display())))?;
            return Ok(Compensation::Undone(format!("removed {} (there was none before)", path.display())));
        }
        (Target::Cluster { .. } | Target::Router(_), None) => apply(shift, 0, &target, cx, templates).await?,
    }
    Ok(Compensation::Undone(format!(
        "route `{}` back to its previous weights ({}% of {} to `{}`)",
        shift.route,
        previous.get("weight").and_then(Value::as_u64).unwrap_or(0),
        route::direction_name(shift.direction),
        shift.to
    )))
}

/// Whether the live object (as [`read`] returns it) holds another direction's routes.
fn shared_with_others(shift: &Shift, live: &Value) -> bool {
    let own = route::direction_name(shift.direction);
    route::routes_of(live.get("document").unwrap_or(&Value::Null))
        .iter()
        .any(|r| r.name != "rest" && r.name != own && r.name != format!("{own}-by-header"))
}

/// Sends `weight` percent of the shift's requests to `to`; the other steps' routes in the
/// live object stay as they are.
async fn apply(
    shift: &Shift,
    weight: u8,
    target: &Target,
    cx: &Context,
    templates: &Templates,
) -> Result<(), StepError> {
    let current = route::routes_of(read(target, cx).await?.get("document").unwrap_or(&Value::Null));
    let service = route::virtual_service(shift, weight, target, &current, &mesh(shift, cx, target)?, origin(cx));
    put(target, &service, templates, cx).await
}

/// Writes a VirtualService rendered from the template to its file, applies it to its
/// cluster, or hands the value itself to a router.
async fn put(target: &Target, service: &VirtualService, templates: &Templates, cx: &Context) -> Result<(), StepError> {
    let rendered = || templates.virtual_service(service).map_err(|e| StepError::Failed(e.to_string()));
    match target {
        Target::File(path) => write_file(path, &rendered()?),
        Target::Cluster { context, .. } => {
            kubectl(context, &["apply", "-f", "-"], Some(&rendered()?), cx).await.map(drop)
        }
        Target::Router(url) => {
            let value = serde_json::to_value(service).map_err(|e| StepError::Failed(e.to_string()))?;
            router_put(url, value, cx).await
        }
    }
}

fn origin(cx: &Context) -> Origin {
    Origin { plan: cx.plan.clone(), phase: cx.phase.clone(), step: cx.step.clone() }
}

/// The route's facts for a shift: hosts of the services' endpoints in a VirtualService,
/// service ids in the simulator's router (whose stand-in services share one address).
fn mesh(shift: &Shift, cx: &Context, target: &Target) -> Result<route::Mesh, StepError> {
    let endpoint = |name: &str| cx.endpoints.get(name).map(str::to_owned);
    let host = |service: &Id| match target {
        Target::Router(_) => Ok(service.0.clone()),
        _ => route::service_host(&cx.resources, &endpoint, service),
    };
    route::mesh(&cx.resources, &host, shift).map_err(StepError::Refused)
}

/// What the route holds now: `{"document"}` (and `"text"` for a file), or null when there
/// is nothing yet.
async fn read(target: &Target, cx: &Context) -> Result<Value, StepError> {
    let (document, text) = match target {
        Target::Router(url) => {
            let response = cx
                .cancellable(Request::get(url, CALL_TIMEOUT).send())
                .await?
                .map_err(|e| StepError::Failed(e.to_string()))?;
            match response.status {
                404 => return Ok(Value::Null),
                200..=299 => (response.json.unwrap_or(Value::Null), None),
                status => return Err(StepError::Failed(format!("router answered {status}: {}", response.excerpt))),
            }
        }
        Target::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let document: Value = serde_saphyr::from_str(&text)
                    .map_err(|e| StepError::Failed(format!("{} is not YAML: {e}", path.display())))?;
                (document, Some(text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Value::Null),
            Err(e) => return Err(StepError::Failed(format!("cannot read {}: {e}", path.display()))),
        },
        Target::Cluster { context, namespace, name } => {
            let out = kubectl(
                context,
                &["get", "virtualservice", name, "-n", namespace, "-o", "json", "--ignore-not-found"],
                None,
                cx,
            )
            .await?;
            if out.trim().is_empty() {
                return Ok(Value::Null);
            }
            let document = serde_json::from_str(&out)
                .map_err(|e| StepError::Failed(format!("kubectl get virtualservice {name}: not JSON: {e}")))?;
            (document, None)
        }
    };
    let mut out = json!({"document": document});
    if let Some(text) = text {
        out["text"] = Value::String(text);
    }
    Ok(out)
}

/// A cluster object without the fields the server owns, fit for `kubectl apply`.
fn clean(document: &Value) -> Value {
    let mut document = document.clone();
    if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
        for owned in ["resourceVersion", "uid", "generation", "creationTimestamp", "managedFields"] {
            metadata.remove(owned);
        }
    }
    if let Some(object) = document.as_object_mut() {
        object.remove("status");
    }
    document
}

async fn router_put(url: &str, body: Value, cx: &Context) -> Result<(), StepError> {
    let request = Request { method: "PUT".to_owned(), body: Some(body), ..Request::get(url, CALL_TIMEOUT) };
    let response = cx.cancellable(request.send()).await?.map_err(|e| StepError::Failed(e.to_string()))?;
    if !(200..300).contains(&response.status) {
        return Err(StepError::Failed(format!("router answered {}: {}", response.status, response.excerpt)));
    }
    Ok(())
}

/// Replaces a file atomically (a GitOps controller never sees half a document).
fn write_file(path: &std::path::Path, text: &str) -> Result<(), StepError> {
    let fail = |e: std::io::Error| StepError::Failed(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let temporary = path.with_extension("yaml.handoff-tmp");
    std::fs::write(&temporary, text).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// Runs kubectl against `context`; returns its stdout.
async fn kubectl(context: &str, args: &[&str], input: Option<&str>, cx: &Context) -> Result<String, StepError> {
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--context")
        .arg(context)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            StepError::Refused(format!(
                "cannot run kubectl ({e}); install it, or point the route at a GitOps file (`file:<path>`)"
            ))
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(|e| StepError::Failed(format!("kubectl stdin: {e}")))?;
    }
    let output = cx
        .cancellable(tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output()))
        .await?
        .map_err(|_| StepError::Failed(format!("kubectl {} took over {CALL_TIMEOUT:?}", args.join(" "))))?
        .map_err(|e| StepError::Failed(format!("kubectl: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(StepError::Failed(format!("kubectl {} failed: {}", args[0], stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
