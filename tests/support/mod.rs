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

/// `handoff ARGS` run as a person runs it: stdout and stderr on a terminal (a
/// pseudo-terminal of `cols` × `rows`), seen through a terminal emulator.
pub struct Terminal {
    child: std::process::Child,
    /// What the terminal shows, fed by a reader of the pseudo-terminal.
    screen: std::sync::Arc<std::sync::Mutex<vt100::Parser>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    /// Starts `handoff ARGS` from the repository root, with `env`.
    pub fn start(args: &[&str], env: &[(&str, &std::ffi::OsStr)], cols: u16, rows: u16) -> Terminal {
        let size = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(&size, None).expect("a pseudo-terminal");
        let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
        command
            .args(args)
            .current_dir(root())
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .env("NO_COLOR", "1")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .stdout(Stdio::from(pty.slave.try_clone().expect("the terminal's fd")))
            .stderr(Stdio::from(pty.slave));
        let child = command.spawn().expect("the handoff binary starts");
        // The terminal's last writer is the child: reading ends when it exits.
        drop(command);
        let screen = std::sync::Arc::new(std::sync::Mutex::new(vt100::Parser::new(nonzero(rows), nonzero(cols), 0)));
        let shown = std::sync::Arc::clone(&screen);
        let mut master = std::fs::File::from(pty.master);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Linux answers EIO once no process holds the terminal open.
            while let Ok(n @ 1..) = master.read(&mut buffer) {
                shown.lock().unwrap().process(&buffer[..n]);
            }
        });
        Terminal { child, screen, reader: Some(reader) }
    }

    /// The text on the screen now, row by row (a row filled to the edge is not joined to
    /// the next), trailing blanks left out.
    pub fn contents(&self) -> String {
        let parser = self.screen.lock().unwrap();
        let (_, cols) = parser.screen().size();
        let rows: Vec<String> = parser.screen().rows(0, cols.get()).map(|row| row.trim_end().to_owned()).collect();
        rows.join("\n").trim_end().to_owned()
    }

    /// Waits until the screen shows `text` (a minute at most: a hang fails the test).
    pub fn wait_for(&self, text: &str) {
        let started = Instant::now();
        while !self.contents().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the screen never showed {text:?}:\n{}",
                self.contents()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit (a minute at most) and everything written; the exit code and the
    /// final screen.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for handoff") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("handoff hung under a terminal:\n{}", self.contents());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the terminal's reader");
        }
        (status.code(), self.contents())
    }
}

impl Drop for Terminal {
    /// A test that failed midway leaves no `handoff` behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A terminal's size in one dimension, which cannot be 0.
fn nonzero(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).expect("a terminal is at least one cell wide and high")
}
