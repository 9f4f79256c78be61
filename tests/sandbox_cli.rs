//! `handoff sandbox`: endpoints that real clients can use, and nothing left running after
//! SIGTERM or even SIGKILL of the CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Starts `handoff sandbox up --format json EXTRA…` and returns it with its endpoint report.
fn sandbox_up(extra: &[&str]) -> (Child, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["sandbox", "up", "--format", "json"])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let report: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, report)
}

/// Sends SIGTERM and checks that handoff exits 0.
fn terminate(mut child: Child) {
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success(), "handoff exits 0 after SIGTERM");
}

/// Every (proxy and server) port of the report.
fn ports(report: &serde_json::Value) -> Vec<u16> {
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| [e["port"].as_u64().unwrap(), e["server_port"].as_u64().unwrap()])
        .map(|p| u16::try_from(p).unwrap())
        .collect()
}

/// `PING` over a raw connection, as `redis-cli` would send it.
fn redis_ping(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Waits (at most 30 s: MongoDB servers take a few seconds to shut down cleanly) until no
/// port is open.
fn assert_ports_close(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in ports {
        while TcpStream::connect(("127.0.0.1", *port)).is_ok() {
            assert!(Instant::now() < deadline, "port {port} is still open");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn redis_port(report: &serde_json::Value) -> u16 {
    let cache = report["endpoints"].as_array().unwrap().iter().find(|e| e["kind"] == "redis").unwrap();
    u16::try_from(cache["port"].as_u64().unwrap()).unwrap()
}

#[test]
fn sigterm_stops_every_server_and_removes_the_sandbox() {
    let (child, report) = sandbox_up(&[]);
    let kinds: Vec<&str> =
        report["endpoints"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mongodb", "mongodb", "kafka", "redis"]);
    assert_eq!(redis_ping(redis_port(&report)), "+PONG\r\n");
    terminate(child);
    assert_ports_close(&ports(&report));
    assert!(!std::path::Path::new(report["dir"].as_str().unwrap()).exists(), "the sandbox directory is removed");
}

#[test]
fn sigkill_of_the_cli_leaves_nothing_running() {
    let (mut child, report) = sandbox_up(&[]);
    assert_eq!(redis_ping(redis_port(&report)), "+PONG\r\n");
    child.kill().unwrap();
    child.wait().unwrap();
    // The lifeline pipe closed with the process: every server stops by itself.
    assert_ports_close(&ports(&report));
}

#[test]
fn doctor_reports_engines_and_providers() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_handoff")).args(["sandbox", "doctor", "--format", "json"]).output().unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let services: Vec<&str> =
        report["engines"].as_array().unwrap().iter().map(|e| e["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["mongodb", "kafka", "redis", "prometheus"]);
    let providers: Vec<&str> =
        report["providers"].as_array().unwrap().iter().map(|p| p["provider"].as_str().unwrap()).collect();
    assert_eq!(providers, ["local", "external", "docker"]);
}

#[test]
fn a_plan_decides_which_services_start() {
    let (child, report) = sandbox_up(&["--plan", "plans/menu-service.yaml"]);
    terminate(child);
    let names: Vec<&str> =
        report["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"restaurant_db") && names.contains(&"menu_db"), "{names:?}");
    let urls: Vec<&str> = report["endpoints"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap()).collect();
    assert!(urls.iter().any(|u| u.contains("/restaurant-service?")), "the resource's database is in its URL: {urls:?}");
    assert_ports_close(&ports(&report));
}

#[test]
fn a_missing_engine_that_cannot_be_provisioned_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["sandbox", "up"])
        .env("HANDOFF_CACHE_DIR", cache.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error: the sandbox did not start"), "{stderr}");
    assert!(stderr.contains("caused by: cannot provision secantusdb: python3 is not on PATH"), "{stderr}");
    assert!(stderr.contains("fix: install Python 3"), "{stderr}");
}
