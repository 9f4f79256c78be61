//! `traffic.shift` with kubectl, through the binary: a stand-in `kubectl` first on PATH
//! logs its arguments and stdin and answers `get` with a live object (no cluster exists
//! here). The phase fails after the shift; its rollback must apply the live object back.

mod support;

use serde_json::{Value, json};
use support::{handoff_with, transcript};

#[test]
fn kubectl_applies_each_weight_to_the_named_context_and_rollback_restores_the_live_object() {
    let dir = tempfile::tempdir().unwrap();
    let live = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "menu-read-routing", "namespace": "menu", "resourceVersion": "812", "uid": "u-1"},
        "spec": {"hosts": ["menu-api"], "http": [{"route": [
            {"destination": {"host": "restaurant-service.restaurant.svc"}, "weight": 100}]}]},
        "status": {},
    });
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(dir.path().join("live.json"), live.to_string()).unwrap();
    let log = dir.path().join("kubectl.log");
    let script = format!(
        "#!/bin/sh\necho \"ARGS $*\" >> {log}\ncase \" $* \" in\n  *\" get \"*) cat {live} ;;\n  *\" apply \"*) cat >> {log}; echo >> {log}; echo configured ;;\nesac\n",
        log = log.display(),
        live = dir.path().join("live.json").display(),
    );
    std::fs::write(bin.join("kubectl"), script).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(bin.join("kubectl")).status().unwrap();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path = std::env::join_paths(paths).unwrap();
    let state = dir.path().join("state");

    let output = handoff_with(
        &[
            "run",
            "tests/fixtures/run/traffic-kubectl.yaml",
            "--env",
            "local",
            "--allow-shell",
            "--clock",
            "virtual",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[("PATH", &path)],
    );
    assert_eq!(output.status.code(), Some(3), "{}", transcript(&output));

    let log = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = log.lines().filter(|l| l.starts_with("ARGS")).collect();
    // The live object is read before every apply (other steps' routes in it are kept) and
    // before the compensation.
    let get = "ARGS --context prod-eu get virtualservice menu-read-routing -n menu -o json --ignore-not-found";
    let apply = "ARGS --context prod-eu apply -f -";
    assert_eq!(calls, [get, get, apply, get, apply, get, apply]);
    let applied: Vec<&str> = log.split("ARGS").filter(|c| c.contains(" apply ")).collect();
    for (document, weight) in applied[..2].iter().zip([10, 100]) {
        let yaml = document.split_once('\n').unwrap().1;
        let vs: Value = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(vs["metadata"]["namespace"], "menu");
        assert_eq!(vs["spec"]["hosts"], json!(["restaurant-service.restaurant.svc"]));
        assert_eq!(vs["spec"]["http"][1]["name"], "reads");
        assert_eq!(vs["spec"]["http"][1]["match"][0]["method"]["regex"], "GET|HEAD");
        assert_eq!(vs["spec"]["http"][1]["route"][1]["weight"], weight, "{yaml}");
    }
    // The rollback applies the object as it was, without the fields the server owns.
    let restored: Value = serde_json::from_str(applied[2].lines().nth(1).unwrap()).unwrap();
    assert_eq!(restored["spec"], live["spec"]);
    assert!(restored["metadata"].get("resourceVersion").is_none() && restored.get("status").is_none());
}
