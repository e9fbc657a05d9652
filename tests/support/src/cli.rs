//! Running the `lookalike` binary in the integration tests of the root package.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `lookalike args...` in `dir` (a `&Path`; `args` a `&[&str]`) with the test model and no
/// index or cache from the environment: [`run`] on the binary Cargo built for the calling test
/// (only the root package's integration tests have one).
/// A third argument (`&[(&str, String)]`) adds environment variables (e.g. moto's).
#[macro_export]
macro_rules! lookalike {
    ($dir:expr, $args:expr $(,)?) => {
        $crate::lookalike!($dir, $args, &[])
    };
    ($dir:expr, $args:expr, $env:expr $(,)?) => {
        $crate::cli::run(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_lookalike")),
            $dir,
            $args,
            $env,
        )
    };
}

/// Runs `bin args...` in `dir` with the test model, no index or cache from the environment,
/// and the variables `env`.
pub fn run(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .env_remove("LOOKALIKE_INDEX")
        .env_remove("LOOKALIKE_CACHE")
        .env("LOOKALIKE_MODEL", crate::model_dir())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
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
