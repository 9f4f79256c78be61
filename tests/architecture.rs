//! The dependency rules of ARCHITECTURE.md, checked from `cargo metadata`: which workspace
//! crates may link service clients, and which may depend on executor crates.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Service clients, and the crates allowed to link them (ARCHITECTURE.md, "only the executor
/// crates, the sandbox, the simulator's application model and the shared run store").
const CLIENTS: &[&str] = &["mongodb", "rdkafka", "redis"];
const CLIENT_USERS: &[&str] = &[
    "handoff-exec-mongo",
    "handoff-exec-kafka",
    "handoff-exec-redis",
    "handoff-sandbox",
    "handoff-simulate",
    "handoff-store-mongo",
];

/// The only crate that may depend on executor crates (it lists the built-in ones).
const REGISTRY: &str = "handoff-registry";

/// Each workspace package's normal (non-dev, non-build) dependencies, by name.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let mut out = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let normal = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
        out.insert(package["name"].as_str().expect("a name").to_owned(), normal);
    }
    out
}

/// The violations of one rule: `(package, dependency)` pairs, as text.
fn check(rule: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut violations = Vec::new();
    for (package, deps) in dependencies() {
        violations.extend(deps.iter().filter(|d| rule(&package, d)).map(|d| format!("{package} → {d}")));
    }
    violations
}

#[test]
fn only_executors_the_sandbox_and_the_application_model_link_service_clients() {
    let violations = check(|package, dep| CLIENTS.contains(&dep) && !CLIENT_USERS.contains(&package));
    assert!(violations.is_empty(), "service clients linked where ARCHITECTURE.md forbids: {violations:?}");
}

#[test]
fn only_the_registry_depends_on_executor_crates() {
    let violations = check(|package, dep| dep.starts_with("handoff-exec-") && package != REGISTRY);
    assert!(violations.is_empty(), "executor crates depended on outside the registry: {violations:?}");
}

#[test]
fn the_rules_see_every_crate_of_the_workspace() {
    let packages = dependencies();
    let crates = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/crates")).expect("crates/").count();
    // Every directory under crates/ is a package (crates/cli is the root package's sources).
    assert_eq!(packages.len(), crates, "packages: {:?}", packages.keys().collect::<Vec<_>>());
    assert!(packages.contains_key(REGISTRY) && CLIENT_USERS.iter().all(|c| packages.contains_key(*c)));
}
