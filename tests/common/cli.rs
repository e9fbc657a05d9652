//! Running the `lookalike` binary in the integration tests of the root package.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `lookalike args...` in `dir` with the test model and no index or cache from the
/// environment.
pub fn lookalike(dir: &Path, args: &[&str]) -> Output {
    // Cargo sets this for the root package's integration tests only (the function crates share
    // these helpers but never run the CLI).
    let Some(bin) = option_env!("CARGO_BIN_EXE_lookalike") else {
        panic!("the lookalike binary is only built for the root package's tests");
    };
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .env_remove("LOOKALIKE_INDEX")
        .env_remove("LOOKALIKE_CACHE")
        .env("LOOKALIKE_MODEL", super::model_dir())
        .output()
        .unwrap()
}

/// Asserts that the command succeeded; returns its stdout.
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts that the command failed; returns its stderr.
pub fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
