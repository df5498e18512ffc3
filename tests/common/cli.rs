//! Running the `weir` binary from a test.

use std::path::Path;
use std::process::{Command, Output};

/// `weir <args>` in `cwd`, with warnings-only logs, waited for.
pub fn weir(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(cwd)
        .env("WEIR_LOG", "warn")
        .output()
        .expect("run weir")
}

/// What a run wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `weir <args>` in `cwd`, with warnings-only logs, started and not waited for (its stdout
/// and stderr are captured for [`wait_within`]).
pub fn spawn_weir(args: &[&str], cwd: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(cwd)
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start weir")
}

/// What `child` wrote and how it ended, if it ended within `limit`; a child still running
/// then is SIGKILLed (so a hang fails the test instead of stalling it) and `None` returned.
pub fn wait_within(child: std::process::Child, limit: std::time::Duration) -> Option<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("wait for weir")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv();
            None
        }
    }
}

/// [`weir`] with the environment variables `vars` set (and, for each `(name, None)`, unset).
pub fn weir_with_env(args: &[&str], cwd: &Path, vars: &[(&str, Option<&str>)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).current_dir(cwd).env("WEIR_LOG", "warn");
    for (name, value) in vars {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    cmd.output().expect("run weir")
}
