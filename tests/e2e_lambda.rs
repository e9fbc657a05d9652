//! End to end without Docker: the three function binaries run as real Lambda processes under
//! cargo-lambda's Runtime API emulator (`cargo lambda watch --only-lambda-apis`, from PyPI into
//! `.venv`), against a moto S3, and are invoked with the `events/` files through
//! `cargo lambda invoke`: upload → ingest events → a scheduled compaction → the query events
//! find the image.
//!
//! The binaries are `target/debug/lookalike-ingest`, `lookalike-query` and `lookalike-compact` (built by
//! `cargo test --workspace`), or those in `$LOOKALIKE_E2E_BIN_DIR/<name>/bootstrap` (what
//! `cargo lambda build` writes), run through `$LOOKALIKE_E2E_RUNNER` if set (e.g.
//! `qemu-aarch64-static -L /usr/aarch64-linux-gnu` for the arm64 build). With
//! `$LOOKALIKE_E2E_RESULTS` set, the query answers are written there as JSON (to compare
//! builds: scripts/test-arm64.sh). Skipped (SKIPPED line) without cargo-lambda, the binaries or
//! the model, unless `LOOKALIKE_REQUIRE_E2E=1` (scripts/test.sh sets it).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::lambda::{delete_object, event, put_object};
use testkit::moto::{unique_bucket, MotoServer};

const INGEST: &str = "lookalike-ingest";
const QUERY: &str = "lookalike-query";
const COMPACT: &str = "lookalike-compact";

fn required() -> bool {
    std::env::var("LOOKALIKE_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    if required() {
        panic!("{why}, but LOOKALIKE_REQUIRE_E2E=1");
    }
    println!("SKIPPED: {why}; run scripts/test.sh");
}

fn cargo_lambda() -> Option<PathBuf> {
    let p = testkit::repo_root().join(".venv/bin/cargo-lambda");
    p.exists().then_some(p)
}

/// The function binary `name`.
fn binary(name: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("LOOKALIKE_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name).join("bootstrap"),
        // target/debug/deps/e2e_lambda-<hash> → target/debug/<name>
        None => std::env::current_exe().ok()?.parent()?.parent()?.join(name),
    };
    path.exists().then_some(path)
}

fn free_port() -> u16 {
    testkit::moto::free_port().unwrap()
}

/// A child process killed (with its process group) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, name: &'static str, log: &Path) -> Proc {
    let out = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null());
    Proc(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}")),
    )
}

struct Emulator {
    cargo_lambda: PathBuf,
    port: u16,
    log: PathBuf,
    _procs: Vec<Proc>,
}

impl Emulator {
    /// The Runtime API emulator on a free loopback port (it compiles nothing: it only reads the
    /// workspace manifest for the function names).
    fn start(cargo_lambda: PathBuf, log: &Path) -> Emulator {
        let port = free_port();
        let mut cmd = Command::new(&cargo_lambda);
        cmd.args(["lambda", "watch", "--only-lambda-apis"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string())
            .arg("--manifest-path")
            .arg(testkit::repo_root().join("Cargo.toml"))
            .args(["--timeout", "300"]);
        let mut proc = spawn(cmd, "emulator", log);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = proc.0.try_wait() {
                panic!(
                    "the emulator exited ({status}):\n{}",
                    std::fs::read_to_string(log.join("emulator.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Emulator {
            cargo_lambda,
            port,
            log: log.to_path_buf(),
            _procs: vec![proc],
        }
    }

    /// Run the binary of function `name` against the emulator, with `env`.
    fn run_function(&mut self, name: &'static str, bin: &Path, env: &[(String, String)]) {
        let runner = std::env::var("LOOKALIKE_E2E_RUNNER").unwrap_or_default();
        let mut words = runner.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{}/.rt/{name}", self.port),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let proc = spawn(cmd, name, &self.log);
        self._procs.insert(0, proc); // functions stop before the emulator
    }

    /// `cargo lambda invoke <name> --data-file <event>`: the function's response.
    fn invoke(&self, name: &str, event: &Value) -> Value {
        let file = self.log.join(format!("event-{}.json", free_port()));
        std::fs::write(&file, event.to_string()).unwrap();
        let out = Command::new(&self.cargo_lambda)
            .args(["lambda", "invoke", name, "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &self.port.to_string()])
            .arg("--data-file")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "invoke {name} failed: {}\nfunction log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log.join(format!("{name}.log"))).unwrap_or_default()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Invoke the query function with an HTTP API event: (status, parsed JSON body).
    fn http(&self, event: &Value) -> (i64, Value) {
        let r = self.invoke(QUERY, event);
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap();
        (r["statusCode"].as_i64().unwrap(), body)
    }
}

fn keys(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {body}"))
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn upload_ingest_event_then_query_events_find_the_image() {
    let Some(cl) = cargo_lambda() else {
        return skip("cargo-lambda is not in .venv");
    };
    let (Some(ingest_bin), Some(query_bin), Some(compact_bin)) =
        (binary(INGEST), binary(QUERY), binary(COMPACT))
    else {
        return skip("the function binaries are not built (cargo test --workspace builds them)");
    };
    let model = testkit::model_dir();
    if !model.join("encoder.onnx").exists() {
        return skip("the model is not imported");
    }
    let Some(moto) = MotoServer::shared() else {
        return;
    };
    let bucket = unique_bucket("e2e");
    testkit::block_on(moto.create_bucket(&bucket));
    let client = moto.client();
    let fixture = |n: &str| std::fs::read(testkit::fixture(n)).unwrap();
    testkit::block_on(async {
        // The keys the events/ files name (the put event's key is URL-encoded).
        put_object(
            &client,
            &bucket,
            "catalog/cats/chelsea the cat.jpg",
            fixture("chelsea.jpg"),
            &[("photographer", "unknown")],
        )
        .await;
        put_object(
            &client,
            &bucket,
            "catalog/drinks/coffee.jpg",
            fixture("coffee.jpg"),
            &[],
        )
        .await;
        put_object(
            &client,
            &bucket,
            "catalog/space/rocket.jpg",
            fixture("rocket.jpg"),
            &[],
        )
        .await;
    });

    let log = testkit::tempdir();
    let cache = testkit::tempdir();
    let mut env: Vec<(String, String)> = moto
        .env_vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("LOOKALIKE_INDEX".into(), format!("s3://{bucket}/index")));
    env.push(("LOOKALIKE_MODEL".into(), model.display().to_string()));
    env.push(("LOOKALIKE_CHECK_INTERVAL_SECS".into(), "0".into()));
    env.push(("RUST_LOG".into(), "info".into()));
    let mut emu = Emulator::start(cl, log.path());
    let mut ingest_env = env.clone();
    ingest_env.push((
        "LOOKALIKE_CACHE_DIR".into(),
        cache.path().join("ingest").display().to_string(),
    ));
    let mut query_env = env.clone();
    query_env.push((
        "LOOKALIKE_CACHE_DIR".into(),
        cache.path().join("query").display().to_string(),
    ));
    let mut compact_env = env;
    compact_env.extend([
        (
            "LOOKALIKE_CACHE_DIR".to_string(),
            cache.path().join("compact").display().to_string(),
        ),
        ("LOOKALIKE_COMPACT_FANOUT".into(), "2".into()),
        ("LOOKALIKE_GC_GRACE_SECS".into(), "0".into()),
    ]);
    emu.run_function(INGEST, &ingest_bin, &ingest_env);
    emu.run_function(QUERY, &query_bin, &query_env);
    emu.run_function(COMPACT, &compact_bin, &compact_env);

    // Before anything is indexed: an empty index answers.
    let (status, stats) = emu.http(&event("http-stats.json", &bucket));
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["items"], 0);

    // S3 → ingest, directly and through SQS (the batch also deletes chelsea, which still
    // exists: that stale delete is skipped), and the configuration test event.
    let r = emu.invoke(INGEST, &event("s3-put.json", &bucket));
    assert_eq!(r["indexed"], 1, "{r}");
    let r = emu.invoke(INGEST, &event("sqs-s3-batch.json", &bucket));
    assert_eq!(r, json!({"batchItemFailures": []}));
    let r = emu.invoke(INGEST, &event("sqs-s3-test-event.json", &bucket));
    assert_eq!(r, json!({"batchItemFailures": []}));
    let (_, stats) = emu.http(&event("http-stats.json", &bucket));
    assert_eq!(stats["segments"], 2, "{stats}");

    // The schedule's event: the two segments are merged into one, the replaced ones collected
    // (no grace period here); a second run has nothing to do.
    let r = emu.invoke(COMPACT, &event("schedule.json", &bucket));
    assert_eq!(r["compactions"], 1, "{r}");
    assert_eq!(r["segments_after"], 1, "{r}");
    assert_eq!(r["removed"], 2, "{r}");
    let r = emu.invoke(COMPACT, &event("schedule.json", &bucket));
    assert_eq!(r["compactions"], 0, "{r}");

    // The query events find the images.
    let (status, stats) = emu.http(&event("http-stats.json", &bucket));
    assert_eq!(status, 200);
    assert_eq!(stats["items"], 3, "{stats}");
    assert_eq!(stats["segments"], 1, "{stats}");
    let (status, by_image) = emu.http(&event("http-search-image.json", &bucket));
    assert_eq!(status, 200, "{by_image}");
    assert_eq!(keys(&by_image)[0], "catalog/cats/chelsea the cat.jpg");
    assert_eq!(
        by_image["results"][0]["metadata"]["photographer"],
        "unknown"
    );
    assert!(by_image["results"][0]["url"]
        .as_str()
        .unwrap()
        .contains("X-Amz-Signature"));
    let (status, by_key) = emu.http(&event("http-search-key.json", &bucket));
    assert_eq!(status, 200, "{by_key}");
    assert_eq!(keys(&by_key).len(), 2);
    let (status, similar) = emu.http(&event("http-similar.json", &bucket));
    assert_eq!(status, 200, "{similar}");
    assert_eq!(keys(&similar).len(), 2);
    // A metadata filter (no cats), and the near-duplicates of a photo that has none here.
    let (status, filtered) = emu.http(&event("http-search-filter.json", &bucket));
    assert_eq!(status, 200, "{filtered}");
    assert_eq!(keys(&filtered), ["catalog/space/rocket.jpg"]);
    let (status, dups) = emu.http(&event("http-duplicates.json", &bucket));
    assert_eq!(status, 200, "{dups}");
    assert_eq!(keys(&dups).len(), 0, "{dups}");
    assert_eq!(dups["truncated"], false, "{dups}");
    let (status, bad) = emu.http(&event("http-bad-request.json", &bucket));
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "invalid_base64");

    if let Some(path) = std::env::var_os("LOOKALIKE_E2E_RESULTS") {
        let results = json!({"by_image": by_image["results"], "by_key": by_key["results"], "similar": similar["results"]});
        std::fs::write(path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    }

    // Delete the object, then the delete event: gone from the answers.
    testkit::block_on(delete_object(
        &client,
        &bucket,
        "catalog/cats/chelsea the cat.jpg",
    ));
    let r = emu.invoke(INGEST, &event("s3-delete.json", &bucket));
    assert_eq!(r["deleted"], 1, "{r}");
    let (_, stats) = emu.http(&event("http-stats.json", &bucket));
    assert_eq!(stats["items"], 2, "{stats}");
    let (_, by_image) = emu.http(&event("http-search-image.json", &bucket));
    assert!(!keys(&by_image).contains(&"catalog/cats/chelsea the cat.jpg".to_string()));
}

/// `events/env.json` (for `sam local invoke --env-vars`) names every function of the template
/// and the variables they read.
#[test]
fn env_json_matches_the_template() {
    let env = event("env.json", "lookalike-images");
    let template = std::fs::read_to_string(testkit::repo_root().join("template.yaml")).unwrap();
    for function in ["IngestFunction", "QueryFunction", "CompactFunction"] {
        assert!(
            template.contains(&format!("\n  {function}:\n")),
            "{function} is not in template.yaml"
        );
        let vars = env[function]
            .as_object()
            .unwrap_or_else(|| panic!("{function} missing"));
        for var in ["LOOKALIKE_INDEX", "LOOKALIKE_MODEL", "AWS_ENDPOINT_URL"] {
            assert!(vars.contains_key(var), "{function}.{var}");
        }
        assert!(vars["LOOKALIKE_INDEX"]
            .as_str()
            .unwrap()
            .starts_with("s3://lookalike-images/"));
    }
}

/// Every route of the API description that the query function answers has an API Gateway route
/// in `template.yaml` (`/items/...` through `GET /items/{proxy+}`); `/images/{key}` is only
/// `lookalike serve`'s.
#[test]
fn every_documented_route_is_in_the_template() {
    let template = std::fs::read_to_string(testkit::repo_root().join("template.yaml")).unwrap();
    let api: serde_json::Value = serde_json::from_str(lookalike::api::OPENAPI).unwrap();
    for (path, ops) in api["paths"].as_object().unwrap() {
        if path.starts_with("/images/") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let route = if path.starts_with("/items/") {
                "/items/{proxy+}"
            } else {
                path.as_str()
            };
            let key = format!("RouteKey: {} {route}\n", method.to_uppercase());
            assert!(
                template.contains(&key),
                "{method} {path}: no {key:?} in template.yaml"
            );
        }
    }
}

/// The functions' architecture is the template's `Architecture` parameter (arm64 by default,
/// x86_64 allowed), and the model layer, which is data only, serves both.
#[test]
fn the_architecture_is_a_template_parameter() {
    let template = std::fs::read_to_string(testkit::repo_root().join("template.yaml")).unwrap();
    let parameter = template
        .split("\n  Architecture:\n")
        .nth(1)
        .expect("no Architecture parameter in template.yaml");
    let parameter = &parameter[..parameter.find("\n  ExistingImagesBucket:").unwrap()];
    assert!(parameter.contains("Default: arm64"), "{parameter}");
    assert!(
        parameter.contains("AllowedValues: [arm64, x86_64]"),
        "{parameter}"
    );
    assert!(template.contains("    Architectures: [!Ref Architecture]\n"));
    assert!(!template.contains("Architectures: [arm64]"));
    assert!(template.contains("CompatibleArchitectures: [arm64, x86_64]\n"));
}
