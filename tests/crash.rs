//! Crash points: a real `lookalike index` and `lookalike compact --all` killed with SIGKILL at
//! many points of their run. After every kill the index opens, holds whole commits only, never
//! fewer items than before the kill; a later run finishes the work, and `gc` then removes only
//! files no manifest lists. Needs the imported model (scripts/test.sh imports it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const IMAGES: u64 = 30;
const BATCH: u64 = 5;

fn lookalike(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lookalike"));
    c.current_dir(dir)
        .env_remove("LOOKALIKE_INDEX")
        .env_remove("LOOKALIKE_CACHE")
        .env("LOOKALIKE_MODEL", testkit::model_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Runs `args` to the end; panics unless it succeeds.
fn finish(dir: &Path, args: &[&str]) {
    let status = lookalike(dir).args(args).status().unwrap();
    assert!(status.success(), "lookalike {args:?} failed");
}

/// Starts `args` and kills it (SIGKILL) after `after`; whether it was still running then.
fn kill_after(dir: &Path, args: &[&str], after: Duration) -> bool {
    let mut child = lookalike(dir).args(args).spawn().unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    true
}

/// `stats --json` of the index: it must open.
fn stats(dir: &Path, when: &str) -> Value {
    let out = lookalike(dir)
        .args(["stats", "--json", "--index", "idx", "--cache", "cache"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{when}: the index does not open");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Segment files in the index folder, and the segments its manifest lists.
fn segment_files(dir: &Path) -> (usize, usize) {
    let files = std::fs::read_dir(dir.join("idx/segments"))
        .map(|d| d.count())
        .unwrap_or(0);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("idx/manifest.json")).unwrap()).unwrap();
    (files, manifest["segments"].as_array().unwrap().len())
}

/// No work file of a killed process is left once a new process has opened the cache.
fn no_leftovers(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".build-") || n.starts_with(".partial-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn killed_index_and_compact_runs_lose_nothing_and_leave_only_garbage() {
    if testkit::encoder().is_none() {
        return;
    }
    let dir = testkit::tempdir();
    let dir = dir.path();
    for i in 0..IMAGES {
        let folder = dir.join(format!("photos/c{}", i % 3));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join(format!("{i:02}.jpg")),
            testkit::synthetic_jpeg(i),
        )
        .unwrap();
    }
    let batch = BATCH.to_string();
    let index = [
        "index",
        "photos",
        "--index",
        "idx",
        "--cache",
        "cache",
        "--batch-size",
        &batch,
    ];
    // How long an uninterrupted run takes (into another index), to spread the kill points.
    let t = Instant::now();
    finish(
        dir,
        &[
            "index",
            "photos",
            "--index",
            "ref",
            "--cache",
            "ref-cache",
            "--batch-size",
            &batch,
        ],
    );
    let full = t.elapsed();

    let mut killed = 0;
    let mut before = 0;
    let points = 10;
    for p in 1..=points {
        let at = full.mul_f64(p as f64 / (points + 1) as f64);
        killed += kill_after(dir, &index, at) as usize;
        if !dir.join("idx/manifest.json").exists() {
            continue; // killed before the first commit
        }
        let items = stats(dir, &format!("index killed at {at:?}"))["items"]
            .as_u64()
            .unwrap();
        assert_eq!(items % BATCH, 0, "a commit is whole: {items} items");
        assert!(
            items >= before,
            "{items} items after a kill, {before} before"
        );
        before = items;
    }
    finish(dir, &index);
    assert_eq!(stats(dir, "index finished")["items"], IMAGES);
    no_leftovers(dir);

    // Compaction of the segments the runs left, killed the same way.
    let compact = ["compact", "--all", "--index", "idx", "--cache", "cache"];
    let t = Instant::now();
    finish(
        dir,
        &["compact", "--all", "--index", "ref", "--cache", "ref-cache"],
    );
    let full = t.elapsed();
    let points = 6;
    for p in 1..=points {
        let at = full.mul_f64(p as f64 / (points + 1) as f64);
        killed += kill_after(dir, &compact, at) as usize;
        assert_eq!(
            stats(dir, &format!("compact killed at {at:?}"))["items"],
            IMAGES
        );
    }
    finish(dir, &compact);
    assert_eq!(stats(dir, "compacted")["segments"], 1);

    // gc with no grace: only files no manifest lists go; the index still answers.
    let (files, listed) = segment_files(dir);
    assert!(files >= listed);
    finish(
        dir,
        &[
            "gc",
            "--index",
            "idx",
            "--cache",
            "cache",
            "--grace-secs",
            "0",
            "--orphan-grace-secs",
            "0",
        ],
    );
    assert_eq!(segment_files(dir), (listed, listed));
    assert_eq!(stats(dir, "after gc")["items"], IMAGES);
    no_leftovers(dir);
    assert!(
        killed >= 8,
        "only {killed} of 16 kills hit a running process"
    );
    println!(
        "crash points: {killed} of 16 SIGKILLs hit a running process (10 index, 6 compact); \
         {files} segment files before gc, {listed} listed after; nothing lost"
    );
}
