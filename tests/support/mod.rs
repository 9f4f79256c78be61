//! Helpers shared by the end-to-end tests: run the real `handoff` binary.

#![allow(dead_code, unreachable_pub)]

pub mod backend;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (tests run the binary from here so paths in output are relative).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `handoff ARGS` from the repository root, without color. A run that does not end
/// within a minute is a hang and fails the test (this is a guard, not a performance check).
pub fn handoff(args: &[&str]) -> Output {
    handoff_with(args, &[])
}

/// [`handoff`] with extra environment variables.
pub fn handoff_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    handoff_within(args, env, Duration::from_secs(60))
}

/// [`handoff_with`] for a command that may take up to `limit` (a simulation).
pub fn handoff_within(args: &[&str], env: &[(&str, &std::ffi::OsStr)], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(args)
        .current_dir(root())
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the handoff binary starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for handoff") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("handoff {args:?} hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
}

/// Exit code, stdout and stderr as one text, for snapshots.
pub fn transcript(output: &Output) -> String {
    let mut text = format!("exit: {}\n", output.status.code().map_or("signal".to_owned(), |c| c.to_string()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stdout.is_empty() {
        text.push_str("--- stdout\n");
        text.push_str(&stdout);
    }
    if !stderr.is_empty() {
        text.push_str("--- stderr\n");
        text.push_str(&stderr);
    }
    text
}
