//! `traffic.shift` against a VirtualService file in a GitOps checkout and against the
//! simulator's router (its real HTTP service). The kubectl path is tested through the
//! binary (tests/traffic.rs, with a stand-in kubectl on PATH).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use handoff_executor::{Compensation, Context, Endpoints, Policy, Recorder, StepError, VirtualClock};
use handoff_plan::model::{Id, Resource};
use serde_json::{Value, json};

fn context(route: &str, dir: &Path, checkpoint: Option<Value>, simulation: bool) -> (Context, Arc<Recorder>) {
    let endpoints = BTreeMap::from([
        ("route".to_owned(), route.to_owned()),
        ("old".to_owned(), "http://restaurant-service.restaurant.svc:8080".to_owned()),
        ("new".to_owned(), "http://menu-service.menu.svc:8080/api".to_owned()),
    ]);
    let resource = |kind: &str, endpoint: &str| -> Resource {
        serde_json::from_value(json!({"kind": kind, "endpoint": endpoint})).unwrap()
    };
    let mut route = resource("mesh", "route");
    route.host = Some(Id("restaurant".to_owned()));
    route.directions = serde_json::from_value(json!({
        "reads": {"methods": ["GET", "HEAD"], "uri_prefixes": ["/menu"]},
        "writes": {"methods": ["POST", "PUT", "PATCH", "DELETE"], "uri_prefixes": ["/menu"]},
    }))
    .unwrap();
    let resources = BTreeMap::from([
        (Id("reads".to_owned()), route),
        (Id("restaurant".to_owned()), resource("service", "old")),
        (Id("menu".to_owned()), resource("service", "new")),
    ]);
    let reports = Arc::new(Recorder::default());
    let mut cx = Context::detached("p3-canary", Endpoints::new(endpoints), resources, checkpoint, reports.clone());
    cx.plan = "menu".to_owned();
    cx.phase = "switch-reads".to_owned();
    cx.clock = Arc::new(VirtualClock::new());
    cx.policy = Arc::new(Policy { simulation, base_dir: dir.to_owned(), ..Policy::default() });
    (cx, reports)
}

fn canary() -> Value {
    json!({
        "route": "reads", "from": "restaurant", "to": "menu",
        "schedule": {
            "header_route": {"header": "x-canary", "value": "true"},
            "steps": [{"weight": 10, "soak": "1d"}, {"weight": 25, "soak": "1d"}, {"weight": 50, "soak": "1d"}],
        },
    })
}

/// The destinations and weights of the route named `name`.
fn weighted(file: &Path, name: &str) -> Vec<(String, u64)> {
    let vs: Value = serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let http = vs["spec"]["http"].as_array().unwrap();
    http.iter().find(|r| r["name"] == name).unwrap()["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["destination"]["host"].as_str().unwrap().to_owned(), d["weight"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn gitops_file_walks_the_schedule_and_compensation_removes_what_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let (cx, reports) = context("file:gitops/menu/reads.yaml", dir.path(), None, false);
    let traffic = handoff_exec_traffic::executor();
    let with = canary();
    let output = traffic.run("shift", &with, &cx).await.unwrap();
    let file = dir.path().join("gitops/menu/reads.yaml");
    assert_eq!(
        weighted(&file, "reads"),
        [("restaurant-service.restaurant.svc".to_owned(), 50), ("menu-service.menu.svc".to_owned(), 50)]
    );
    let vs: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(vs["metadata"]["name"], "reads");
    // The route claims the host of its `host:` service; only reads are weighted, the header
    // route comes first and is limited to reads too, everything else keeps its host.
    assert_eq!(vs["spec"]["hosts"], json!(["restaurant-service.restaurant.svc"]));
    let names: Vec<&str> = vs["spec"]["http"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["reads-by-header", "reads", "rest"]);
    assert_eq!(
        vs["spec"]["http"][0]["match"],
        json!([{"method": {"regex": "GET|HEAD"}, "uri": {"prefix": "/menu"}, "headers": {"x-canary": {"exact": "true"}}}])
    );
    assert_eq!(vs["spec"]["http"][0]["route"][0]["destination"]["host"], "menu-service.menu.svc");
    assert_eq!(weighted(&file, "rest"), [("restaurant-service.restaurant.svc".to_owned(), 100)]);
    // One checkpoint per weight, the last weight emitted, virtual time spent soaking.
    let checkpoints = reports.checkpoints.lock().unwrap().clone();
    assert_eq!(checkpoints.iter().map(|c| c["next"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(reports.metrics.lock().unwrap()["traffic_weight"], 50.0);
    assert_eq!(output.detail["weights"], json!([10, 25, 50]));
    assert_eq!(output.detail["previous"], Value::Null);

    let undone = traffic.undo("shift", &with, &output, &cx).await.unwrap();
    assert!(matches!(undone, Compensation::Undone(_)), "{undone:?}");
    assert!(!file.exists(), "there was no VirtualService before the shift");
}

#[tokio::test]
async fn compensation_restores_the_previous_file_exactly_and_resume_skips_applied_weights() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reads.yaml");
    let before = "# hand-written\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reads}\nspec:\n  hosts: [menu-api]\n  http:\n    - route:\n        - destination: {host: restaurant-service.restaurant.svc}\n          weight: 95\n        - destination: {host: menu-service.menu.svc}\n          weight: 5\n";
    std::fs::write(&file, before).unwrap();
    let traffic = handoff_exec_traffic::executor();
    let with = canary();
    let (cx, _) = context("file:reads.yaml", dir.path(), None, false);
    let output = traffic.run("shift", &with, &cx).await.unwrap();
    assert_eq!(output.detail["previous"]["weight"], 5);

    // A resumed step continues at the checkpointed weight.
    let checkpoint = json!({"next": 2, "previous": output.detail["previous"]});
    let (cx, reports) = context("file:reads.yaml", dir.path(), Some(checkpoint), false);
    let resumed = traffic.run("shift", &with, &cx).await.unwrap();
    assert_eq!(resumed.detail["weights"], json!([50]));
    assert_eq!(reports.checkpoints.lock().unwrap().len(), 1);

    let undone = traffic.undo("shift", &with, &resumed, &cx).await.unwrap();
    assert_eq!(
        undone,
        Compensation::Undone("route `reads` back to its previous weights (5% of reads to `menu`)".to_owned())
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

#[tokio::test]
async fn steps_routing_one_host_share_one_object_and_compensation_restores_only_its_own_part() {
    let dir = tempfile::tempdir().unwrap();
    let (cx, _) = context("file:routing.yaml", dir.path(), None, false);
    let file = dir.path().join("routing.yaml");
    let traffic = handoff_exec_traffic::executor();
    traffic.run("shift", &canary(), &cx).await.unwrap();
    let before_writes = std::fs::read_to_string(&file).unwrap();
    let writes = json!({
        "route": "reads", "from": "restaurant", "to": "menu", "direction": "writes",
        "schedule": {"steps": [{"weight": 100, "soak": "1h"}]},
    });
    let output = traffic.run("shift", &writes, &cx).await.unwrap();
    let vs: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let names: Vec<&str> = vs["spec"]["http"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["reads-by-header", "reads", "writes", "rest"]);
    assert_eq!(vs["spec"]["http"][2]["match"][0]["method"]["regex"], "POST|PUT|PATCH|DELETE");
    assert_eq!(weighted(&file, "writes")[1], ("menu-service.menu.svc".to_owned(), 100));
    // The read canary's weights are untouched by the write cutover.
    assert_eq!(weighted(&file, "reads")[1], ("menu-service.menu.svc".to_owned(), 50));

    traffic.undo("shift", &writes, &output, &cx).await.unwrap();
    let after: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let before: Value = serde_saphyr::from_str(&before_writes).unwrap();
    assert_eq!(after["spec"], before["spec"], "only the writes part is gone");
}

#[tokio::test]
async fn a_simulation_never_touches_a_cluster_or_a_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let traffic = handoff_exec_traffic::executor();
    let with = canary();
    for route in ["kubernetes://prod/menu/virtualservices/r", "file:reads.yaml"] {
        let (cx, _) = context(route, dir.path(), None, true);
        let error = traffic.run("shift", &with, &cx).await.unwrap_err();
        assert!(matches!(&error, StepError::Refused(m) if m.contains("simulator's router")), "{error}");
    }
    assert!(!dir.path().join("reads.yaml").exists());
}

/// Where the router sends a read and a write to `restaurant`, for a roll.
fn routed(standin: &handoff_simulate::standin::StandIn, method: &str, roll: f64) -> Option<String> {
    let headers = BTreeMap::new();
    let request = handoff_simulate::router::Request { method, uri: "/menu/items/1", headers: &headers };
    standin.state.lock().unwrap().route("restaurant", &request, roll).map(|r| r.host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_backend_hands_the_router_the_virtual_service_and_compensation_restores_it() {
    let standin = handoff_simulate::standin::StandIn::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let route = format!("{}/routes/restaurant", standin.url);
    let traffic = handoff_exec_traffic::executor();
    let mut with = canary();
    with["backend"] = json!("simulated");
    let (cx, reports) = context(&route, dir.path(), None, true);
    // Before the shift, an earlier canary sent 5% of reads to `menu`.
    let mut earlier = canary();
    earlier["schedule"]["steps"] = json!([{"weight": 5, "soak": "1d"}]);
    traffic.run("shift", &earlier, &cx).await.unwrap();
    let output = traffic.run("shift", &with, &cx).await.unwrap();
    // The router holds the VirtualService a cluster would get, its hosts service ids: reads
    // split 50/50, writes go on to `restaurant` (`rest`).
    let body = handoff_executor::http::Request::get(&route, std::time::Duration::from_secs(5)).send().await.unwrap();
    let names: Vec<&str> =
        body.json.as_ref().unwrap()["http"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["reads-by-header", "reads", "rest"]);
    assert_eq!(
        (routed(&standin, "GET", 0.49), routed(&standin, "GET", 0.5)),
        (Some("restaurant".into()), Some("menu".into()))
    );
    assert_eq!(routed(&standin, "PUT", 0.99).as_deref(), Some("restaurant"));
    assert_eq!(output.detail["previous"]["weight"], 5);
    assert_eq!(reports.checkpoints.lock().unwrap().len(), 4);
    traffic.undo("shift", &with, &output, &cx).await.unwrap();
    assert_eq!(
        (routed(&standin, "GET", 0.94), routed(&standin, "GET", 0.95)),
        (Some("restaurant".into()), Some("menu".into()))
    );
}
