//! Crash points: a real `lookalike index` and `lookalike compact --all` killed with SIGKILL at
//! many points of their run, with the index in a folder and in S3 (moto). After every kill the
//! index opens, holds whole commits only, never fewer items than before the kill; a later run
//! finishes the work, and `gc` then removes only files no manifest lists. Needs the imported
//! model (scripts/test.sh imports it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lookalike::store::{ObjectStore, S3Store};
use serde_json::Value;
use testkit::moto::MotoServer;

const IMAGES: u64 = 30;
const BATCH: u64 = 5;

/// Where the indexes live: folders beside the photos, or a bucket of a moto server.
enum Target {
    Folder,
    S3 {
        moto: &'static MotoServer,
        bucket: String,
    },
}

impl Target {
    /// The `--index` of index `name`.
    fn location(&self, name: &str) -> String {
        match self {
            Target::Folder => name.to_string(),
            Target::S3 { bucket, .. } => format!("s3://{bucket}/{name}"),
        }
    }

    /// Object `key` of index `name`, if it exists.
    fn read(&self, dir: &Path, name: &str, key: &str) -> Option<Vec<u8>> {
        match self {
            Target::Folder => std::fs::read(dir.join(name).join(key)).ok(),
            Target::S3 { moto, bucket } => {
                let store = S3Store::new(moto.client(), bucket, name);
                block_on(lookalike::store::get_object(&store, key))
                    .ok()
                    .map(|o| o.bytes.to_vec())
            }
        }
    }

    /// The number of objects under `segments/` of index `name`.
    fn segment_objects(&self, dir: &Path, name: &str) -> usize {
        match self {
            Target::Folder => std::fs::read_dir(dir.join(name).join("segments"))
                .map(|d| d.count())
                .unwrap_or(0),
            Target::S3 { moto, bucket } => {
                let store = S3Store::new(moto.client(), bucket, name);
                block_on(store.list("segments/")).unwrap().len()
            }
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn lookalike(dir: &Path, target: &Target) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lookalike"));
    c.current_dir(dir)
        .env_remove("LOOKALIKE_INDEX")
        .env_remove("LOOKALIKE_CACHE")
        .env("LOOKALIKE_MODEL", testkit::model_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Target::S3 { moto, .. } = target {
        c.envs(moto.env_vars());
    }
    c
}

/// Runs `args` to the end; panics unless it succeeds.
fn finish(dir: &Path, target: &Target, args: &[&str]) {
    let status = lookalike(dir, target).args(args).status().unwrap();
    assert!(status.success(), "lookalike {args:?} failed");
}

/// Starts `args` and kills it (SIGKILL) after `after`; whether it was still running then.
fn kill_after(dir: &Path, target: &Target, args: &[&str], after: Duration) -> bool {
    let mut child = lookalike(dir, target).args(args).spawn().unwrap();
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
fn stats(dir: &Path, target: &Target, when: &str) -> Value {
    let out = lookalike(dir, target)
        .args([
            "stats",
            "--json",
            "--index",
            &target.location("idx"),
            "--cache",
            "cache",
        ])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{when}: the index does not open");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Segment files in the index folder, and the segments its manifest lists.
fn segment_files(dir: &Path, target: &Target) -> (usize, usize) {
    let files = target.segment_objects(dir, "idx");
    let manifest: Value =
        serde_json::from_slice(&target.read(dir, "idx", "manifest.json").unwrap()).unwrap();
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
fn killed_runs_on_a_folder_index_lose_nothing_and_leave_only_garbage() {
    if testkit::encoder().is_none() {
        return;
    }
    crash_points(&Target::Folder);
}

#[test]
fn killed_runs_on_an_s3_index_lose_nothing_and_leave_only_garbage() {
    if testkit::encoder().is_none() {
        return;
    }
    let Some(moto) = MotoServer::shared() else {
        return;
    };
    let bucket = testkit::moto::unique_bucket("crash");
    block_on(moto.create_bucket(&bucket));
    crash_points(&Target::S3 { moto, bucket });
}

fn crash_points(target: &Target) {
    let dir = testkit::tempdir();
    let dir = dir.path();
    let (idx, reference) = (target.location("idx"), target.location("ref"));
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
        &idx,
        "--cache",
        "cache",
        "--batch-size",
        &batch,
    ];
    // How long an uninterrupted run takes (into another index), to spread the kill points.
    let t = Instant::now();
    finish(
        dir,
        target,
        &[
            "index",
            "photos",
            "--index",
            &reference,
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
        // A restarted run only indexes what is not committed yet, so it is shorter than the
        // reference: the kill point is a fraction (1/4, 1/2, 3/4 in turn) of the reference time
        // scaled by the share still to index, which stays inside the run (its fixed start-up
        // cost is part of the reference time and is not scaled away).
        let left = (IMAGES - before) as f64 / IMAGES as f64;
        let at = full.mul_f64(left.max(0.1) * [0.25, 0.5, 0.75][p % 3]);
        killed += kill_after(dir, target, &index, at) as usize;
        if target.read(dir, "idx", "manifest.json").is_none() {
            continue; // killed before the first commit
        }
        let items = stats(dir, target, &format!("index killed at {at:?}"))["items"]
            .as_u64()
            .unwrap();
        assert_eq!(items % BATCH, 0, "a commit is whole: {items} items");
        assert!(
            items >= before,
            "{items} items after a kill, {before} before"
        );
        before = items;
    }
    finish(dir, target, &index);
    assert_eq!(stats(dir, target, "index finished")["items"], IMAGES);
    no_leftovers(dir);

    // Compaction of the segments the runs left, killed the same way.
    let compact = ["compact", "--all", "--index", &idx, "--cache", "cache"];
    let t = Instant::now();
    finish(
        dir,
        target,
        &[
            "compact",
            "--all",
            "--index",
            &reference,
            "--cache",
            "ref-cache",
        ],
    );
    let full = t.elapsed();
    let points = 6;
    for p in 1..=points {
        let at = full.mul_f64(p as f64 / (points + 1) as f64);
        killed += kill_after(dir, target, &compact, at) as usize;
        assert_eq!(
            stats(dir, target, &format!("compact killed at {at:?}"))["items"],
            IMAGES
        );
    }
    finish(dir, target, &compact);
    assert_eq!(stats(dir, target, "compacted")["segments"], 1);

    // gc with no grace: only files no manifest lists go; the index still answers.
    let (files, listed) = segment_files(dir, target);
    assert!(files >= listed);
    finish(
        dir,
        target,
        &[
            "gc",
            "--index",
            &idx,
            "--cache",
            "cache",
            "--grace-secs",
            "0",
            "--orphan-grace-secs",
            "0",
        ],
    );
    assert_eq!(segment_files(dir, target), (listed, listed));
    assert_eq!(stats(dir, target, "after gc")["items"], IMAGES);
    no_leftovers(dir);
    assert!(
        killed >= 8,
        "only {killed} of 16 kills hit a running process"
    );
    let on = match target {
        Target::Folder => "a folder index",
        Target::S3 { .. } => "an S3 index (moto)",
    };
    println!(
        "crash points on {on}: {killed} of 16 SIGKILLs hit a running process (10 index, 6 compact); \
         {files} segment files before gc, {listed} listed after; nothing lost"
    );
}
