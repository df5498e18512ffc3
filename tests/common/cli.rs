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
