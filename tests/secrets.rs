//! A canary secret passed through every path a secret can take into a step — a shell
//! step's `env:`, a command argument, an HTTP header and URL echoed back by the server — is
//! found in none of handoff's outputs: stdout and stderr (text and JSON logs, debug traces),
//! the state directory's files, `status` (text and JSON), and the rendered runbook.

mod support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::{handoff, handoff_with, transcript};

/// The canary: long enough to be masked, unlike anything else in the outputs.
const CANARY: &str = "canary-7f3a9c-sekret";

/// An HTTP server that answers every request with its path and headers as JSON.
struct Echo {
    child: Child,
    url: String,
}

const ECHO: &str = r#"
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl Echo {
    fn start() -> Echo {
        let mut child = Command::new("python3")
            .args(["-u", "-c", ECHO])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Echo { child, url: format!("http://127.0.0.1:{}", line.trim()) }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plan that hands the canary to a shell step's environment, a command argument, an HTTP
/// request's header and URL (echoed back), then fails a phase on an echoed answer so that
/// errors carry it too.
const PLAN: &str = r#"apiVersion: handoff.dev/v1alpha1
kind: MigrationPlan
metadata: {name: secrets}
environments: {local: {endpoints: {}}}
phases:
  - id: one
    name: One
    steps:
      - id: env
        uses: shell.run
        with:
          command: [sh, -c, 'echo "token $TOKEN"; echo "token $TOKEN" >&2; env']
          env: {TOKEN: "${CANARY}"}
      - id: argument
        uses: shell.run
        with:
          command: [sh, -c, 'echo "argument $1"; echo "argument $1" >&2', sh, "${CANARY}"]
      - id: echo
        uses: http.request
        with:
          url: "${ECHO_URL}/echo?token=${CANARY}"
          headers: {Authorization: "Bearer ${CANARY}"}
    criteria:
      - {id: ok, description: ok, confirm: {prompt: "ok?"}}
    rollback: {max_duration: 1m, steps: []}
  - id: two
    name: Two
    steps:
      - id: refused
        uses: http.request
        with:
          url: "${ECHO_URL}/again?token=${CANARY}"
          headers: {X-Api-Key: "${CANARY}"}
          expect_status: 201
      - id: failing
        uses: shell.run
        with:
          command: [sh, -c, 'echo "failing with $TOKEN" >&2; exit 4']
          env: {TOKEN: "${CANARY}"}
    rollback: {max_duration: 1m, steps: []}
"#;

/// Every file under `dir`, as text.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            out.push((path.display().to_string(), text));
        }
    }
    out
}

#[test]
fn a_canary_secret_reaches_no_output() {
    let echo = Echo::start();
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("secrets.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let (plan, state) = (plan.to_str().unwrap(), work.path().join("state"));
    let target = ["--env", "local", "--state-dir", state.to_str().unwrap()];
    let env =
        [("CANARY", OsStr::new(CANARY)), ("ECHO_URL", OsStr::new(&echo.url)), ("HANDOFF_LOG", OsStr::new("debug"))];
    let mut outputs = Vec::new();
    for extra in [&["--log-format", "json"][..], &[][..]] {
        let args = [&["run", plan][..], &target, &["--allow-shell"], extra].concat();
        let run = handoff_with(&args, &env);
        let text = transcript(&run);
        assert!(text.contains("token ${CANARY}") && text.contains("argument ${CANARY}"), "the steps ran: {text}");
        outputs.push((format!("run {extra:?}"), text));
        let _ = std::fs::remove_dir_all(&state);
    }
    let args = [&["run", plan][..], &target, &["--allow-shell", "--log-format", "json"]].concat();
    assert_eq!(handoff_with(&args, &env).status.code(), Some(4), "paused on the confirmation");
    let approve = [&["approve", plan, "one/ok"][..], &target].concat();
    outputs.push(("approve".to_owned(), transcript(&handoff_with(&approve, &env))));
    let resume = [&["resume", plan][..], &target, &["--allow-shell"]].concat();
    let resumed = handoff_with(&resume, &env);
    assert_eq!(resumed.status.code(), Some(3), "phase two failed and rolled back: {}", transcript(&resumed));
    outputs.push(("resume".to_owned(), transcript(&resumed)));
    for extra in [&["--format", "json"][..], &[][..]] {
        let status = [&["status", plan][..], &target, extra].concat();
        outputs.push((format!("status {extra:?}"), transcript(&handoff_with(&status, &env))));
    }
    let out = work.path().join("rendered");
    let render = handoff(&["render", plan, "--out", out.to_str().unwrap()]);
    assert_eq!(render.status.code(), Some(0), "{}", transcript(&render));
    outputs.extend(files(&out));
    let state_files = files(&state);
    let kept = state_files.iter().any(|(_, text)| text.contains(r#""authorization":"***""#));
    assert!(kept, "the echo was kept, masked: {state_files:?}");
    outputs.extend(state_files);
    for (what, text) in &outputs {
        assert!(!text.contains(CANARY), "{what} holds the canary:\n{text}");
        assert!(!text.contains("7f3a9c"), "{what} holds part of the canary:\n{text}");
    }
}
