//! Query function benchmarks (issue: query Lambda). Prints figures, writes
//! `target/bench/query.json` and the query section of BENCHMARKS.md.
//! Run: `cargo bench -p lookalike-query --bench query` (release build).
//!
//! 1. Warm queries through the real handler (API Gateway events, base64 640x480 JPEGs) over a
//!    100k-item index: p50/p99 end to end, and the stages (decode, preprocess, encode, search +
//!    merge) measured one by one on the same images.
//! 2. Cold start: a new process (this binary, re-run as a child) does the function's init
//!    (`lookalike_query::init`: model, S3 client, snapshot sync from moto) and answers one query;
//!    process start to answer, for 10k and 100k items.
//! 3. A warm container after a new 10-item segment: what the next request downloads, how long.
//! 4. onnxruntime's one-thread encode of the same query images (same ONNX, same preprocessed
//!    tensors, in this run), and the ratios of the handler's end-to-end p50 and of tract's encode
//!    to it.
//! 5. Init alone: a new process runs `lookalike_query::init` (model load, S3 client) against an
//!    empty index; process start to init done.
//! 6. The function binaries' sizes as `cargo build --release` left them in the target folder
//!    (stripped, LTO; the release profile in Cargo.toml), unzipped and gzip-compressed.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use lookalike::api::{QueryService, ServiceConfig};
use lookalike::index::segment::BuildParams;
use lookalike::index::writer;
use lookalike::model::encoder::Encoder;
use lookalike::preprocess::{self, Limits};
use lookalike::store::{DynStore, LocalStore, S3Store};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use testkit::bench::{dataset_images, percentile, publish, record, repo_root, synth_between};

const CHILD: &str = "LOOKALIKE_BENCH_COLD_START_EVENT";

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// A 640x480 JPEG (quality 90) of a photo.
fn jpeg_640x480(bytes: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    let img = image::imageops::resize(&img, 640, 480, image::imageops::FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out.into_inner()
}

/// An API Gateway HTTP API event: POST /search?k=10 with a base64 JPEG body.
fn search_event(jpeg: &[u8]) -> Value {
    let path = repo_root().join("events/http-search-image.json");
    let mut ev: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    ev["rawQueryString"] = json!("k=10");
    ev["body"] = json!(base64::engine::general_purpose::STANDARD.encode(jpeg));
    ev
}

/// The child process of the cold-start measurement: the function's init, then one answer (none
/// when `event_file` is empty: the init-only measurement).
async fn cold_start_child(event_file: &str) {
    let t = Instant::now();
    let config = lookalike_query::config::Config::from_env().unwrap();
    let (service, init) = lookalike_query::init(&config).await.unwrap();
    if event_file.is_empty() {
        println!(
            "{}",
            json!({"init": init, "in_process_ms": ms(t.elapsed())})
        );
        return;
    }
    let event: Value = serde_json::from_str(&std::fs::read_to_string(event_file).unwrap()).unwrap();
    let q = Instant::now();
    let response = lookalike_query::handle(&service, event).await;
    let first_query_ms = ms(q.elapsed());
    println!(
        "{}",
        json!({"init": init, "first_query_ms": first_query_ms, "status": response.status_code,
               "in_process_ms": ms(t.elapsed())})
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if let Ok(event_file) = std::env::var(CHILD) {
        return cold_start_child(&event_file).await;
    }
    let Some((_, model_dir)) = testkit::bench::dataset_and_model() else {
        return;
    };
    let Some(server) = testkit::moto::MotoServer::start_or_skip() else {
        return;
    };
    let cores = testkit::bench::cores();
    let encoder = Arc::new(Encoder::load(&model_dir).unwrap());
    let model = encoder.model_ref();
    let limits = Limits::default();
    let photos = dataset_images();
    // Real embeddings to spread the synthetic items around, and 50 query images.
    let vectors: Vec<Vec<f32>> = photos
        .iter()
        .step_by(3)
        .map(|(_, p)| {
            encoder
                .encode_image(&std::fs::read(p).unwrap(), &limits)
                .unwrap()
        })
        .collect();
    let queries: Vec<Vec<u8>> = photos
        .iter()
        .skip(1)
        .step_by(12)
        .map(|(_, p)| jpeg_640x480(&std::fs::read(p).unwrap()))
        .collect();
    let items_of = |n: usize| {
        let mut rng = StdRng::seed_from_u64(n as u64);
        (0..n)
            .map(|i| {
                (
                    record(&format!("synthetic/{i}.jpg")),
                    synth_between(&vectors, &mut rng),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut report = serde_json::Map::new();
    let mut md = String::new();

    // 1. Warm queries over 100k items (a local store: this measures the query, not S3).
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    testkit::bench::build_index_in(
        store.clone(),
        &dir.path().join("build"),
        &model,
        items_of(100_000),
        1,
    )
    .await;
    let service = QueryService::new(
        store,
        dir.path().join("cache"),
        encoder.clone(),
        ServiceConfig::default(),
    );
    let snapshot = service.snapshot().await.unwrap();
    assert_eq!(snapshot.live_items(), 100_000);
    let events: Vec<Value> = queries.iter().map(|q| search_event(q)).collect();
    for ev in events.iter().take(5) {
        lookalike_query::handle(&service, ev.clone()).await; // warm-up
    }
    let mut e2e = Vec::new();
    for round in 0..4 {
        for ev in &events {
            let t = Instant::now();
            let r = lookalike_query::handle(&service, ev.clone()).await;
            e2e.push(ms(t.elapsed()));
            assert_eq!(r.status_code, 200, "round {round}: {:?}", r.body);
        }
    }
    let (mut dec, mut pre, mut enc, mut search) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let card = encoder.card().clone();
    let mut tensors = Vec::new();
    for q in &queries {
        let t = Instant::now();
        let img =
            preprocess::decode_scaled(q, &limits, Some(preprocess::needed_size(&card))).unwrap();
        dec.push(ms(t.elapsed()));
        let t = Instant::now();
        let tensor = preprocess::to_tensor(&img, &card).unwrap();
        pre.push(ms(t.elapsed()));
        let t = Instant::now();
        let v = encoder.encode_tensor(&tensor).unwrap();
        enc.push(ms(t.elapsed()));
        tensors.push(tensor);
        let t = Instant::now();
        snapshot.search(&v, 10, None, None).unwrap();
        search.push(ms(t.elapsed()));
    }
    let rows = [
        (
            "end to end (handler: base64, route, decode, encode, search, JSON)",
            p50_p99(e2e.clone()),
        ),
        ("decode (JPEG, DCT-scaled)", p50_p99(dec)),
        ("preprocess (resize, crop, normalise)", p50_p99(pre)),
        ("encode (EfficientNet-Lite0, 1 thread)", p50_p99(enc)),
        ("search + merge (k = 10)", p50_p99(search)),
    ];
    md += &format!(
        "Warm queries through the query handler: API Gateway events with 640x480 JPEGs (base64, 50 clothing-small \
         photos x 4), k = 10, over an index of 100,000 items (1280-d, one segment), release build, {cores} cores. \
         The stages are measured one by one on the same images.\n\n| stage | p50 ms | p99 ms |\n| --- | --- | --- |\n"
    );
    for (name, (p50, p99)) in &rows {
        println!("{name}: p50 {p50:.1} ms, p99 {p99:.1} ms");
        md += &format!("| {name} | {p50:.1} | {p99:.1} |\n");
    }
    let (p50, _) = rows[0].1;
    let (enc_p50, _) = rows[3].1;
    md += &format!("\nEnd-to-end p50 **{p50:.1} ms**.\n\n");
    // 4. onnxruntime on the same preprocessed query images, in this run.
    let onnx = model_dir.join(lookalike::model::ONNX_FILE);
    match testkit::ort::run(&repo_root(), &onnx, &card, &tensors, 1, 2.0) {
        Ok(o) => {
            let ort_ms = o["single_thread_ms_per_image"].as_f64().unwrap_or(f64::NAN);
            let (e2e_x, enc_x) = (p50 / ort_ms, enc_p50 / ort_ms);
            println!("onnxruntime one-thread encode: {ort_ms:.1} ms; end to end / ORT {e2e_x:.2}x, tract encode / ORT {enc_x:.2}x");
            md += &format!(
                "onnxruntime {} on the same ONNX and the same 50 preprocessed query images, one thread, in this run: \
                 **{ort_ms:.1} ms** per image. End-to-end p50 / onnxruntime encode: **{e2e_x:.2}x** (target ≤ 2x); \
                 tract encode / onnxruntime: **{enc_x:.2}x** (target ≤ 1.5x).\n\n",
                o["onnxruntime"].as_str().unwrap_or("?")
            );
            report.insert(
                "onnxruntime".into(),
                json!({"version": o["onnxruntime"], "single_thread_ms_per_image": ort_ms,
                       "end_to_end_over_ort": e2e_x, "encode_over_ort": enc_x}),
            );
        }
        Err(e) => {
            println!("onnxruntime: skipped ({e})");
            md += &format!("onnxruntime: skipped ({e}).\n\n");
        }
    }
    report.insert(
        "warm".into(),
        rows.iter()
            .map(|(n, (a, b))| json!({"stage": n, "p50_ms": a, "p99_ms": b}))
            .collect::<Vec<_>>()
            .into(),
    );
    drop(snapshot);
    drop(service);
    drop(dir);

    // 2. Cold start: a new process syncs the snapshot from moto and answers.
    let client = server.client();
    let event_dir = tempfile::tempdir().unwrap();
    let event_file = event_dir.path().join("event.json");
    std::fs::write(&event_file, search_event(&queries[0]).to_string()).unwrap();
    md += "Cold start: a new process runs the query function's init (`lookalike_query::init`: create the S3 \
           client, then load the model while the snapshot syncs from a local moto S3 into an empty cache and \
           opens) and answers one query. Process start to answer (the model load and the sync overlap):\n\n\
           | items | segment MB | total ms | model load ms | snapshot sync ms | first query ms |\n| --- | --- | --- | --- | --- | --- |\n";
    let mut cold = Vec::new();
    let mut md_new_segment = String::new();
    for n in [10_000usize, 100_000] {
        let bucket = testkit::moto::unique_bucket("bench-cold");
        server.create_bucket(&bucket).await;
        let store: DynStore = Arc::new(S3Store::new(client.clone(), &bucket, "index"));
        let build = tempfile::tempdir().unwrap();
        let index =
            testkit::bench::build_index_in(store, build.path(), &model, items_of(n), 1).await;
        let mb = index.snapshot().manifest.total_bytes() as f64 / 1e6;
        drop(index);
        let cache = tempfile::tempdir().unwrap();
        let (child, total) = run_child(&server, &event_file, &bucket, &model_dir, cache.path());
        assert_eq!(child["status"], 200);
        let (model_ms, sync_ms, first) = (
            child["init"]["model_ms"].as_f64().unwrap(),
            child["init"]["snapshot_ms"].as_f64().unwrap(),
            child["first_query_ms"].as_f64().unwrap(),
        );
        println!("cold start, {n} items ({mb:.0} MB): {total:.0} ms (model {model_ms:.0}, sync {sync_ms:.0}, first query {first:.0})");
        md += &format!(
            "| {n} | {mb:.0} | {total:.0} | {model_ms:.0} | {sync_ms:.0} | {first:.0} |\n"
        );
        cold.push(
            json!({"items": n, "segment_mb": mb, "total_ms": total, "model_ms": model_ms,
                         "sync_ms": sync_ms, "first_query_ms": first}),
        );

        // 3. (once, on the 10k index) A warm container after a new small segment.
        if n == 10_000 {
            let cache = tempfile::tempdir().unwrap();
            let store: DynStore = Arc::new(S3Store::new(client.clone(), &bucket, "index"));
            let config = ServiceConfig {
                check_interval: std::time::Duration::ZERO,
                ..ServiceConfig::default()
            };
            let service = QueryService::new(store.clone(), cache.path(), encoder.clone(), config);
            service.snapshot().await.unwrap();
            let writer_dir = tempfile::tempdir().unwrap();
            let index = lookalike::index::Index::open(store, writer_dir.path(), None)
                .await
                .unwrap();
            let small: Vec<_> = items_of(10)
                .into_iter()
                .enumerate()
                .map(|(i, (mut r, v))| {
                    r.key = format!("new/{i}.jpg");
                    (r, v)
                })
                .collect();
            writer::append(&index, &model, small, &[], BuildParams::default())
                .await
                .unwrap();
            let before = dir_bytes(cache.path());
            let t = Instant::now();
            let snap = service.snapshot().await.unwrap();
            let refresh = ms(t.elapsed());
            let downloaded = dir_bytes(cache.path()) - before;
            assert_eq!(snap.segment_count(), 2);
            println!("warm container, new 10-item segment: refresh {refresh:.1} ms, {downloaded} bytes downloaded");
            report.insert(
                "new_segment_refresh".into(),
                json!({"ms": refresh, "downloaded_bytes": downloaded}),
            );
            md_new_segment = format!(
                "\nA warm container after a new 10-item segment was committed to the 10k index: the next request's \
                 manifest check and sync took **{refresh:.1} ms** and downloaded **{downloaded} bytes** (the new \
                 segment only; the 10k segment stayed in place).\n"
            );
        }
    }
    md += &md_new_segment;
    report.insert("cold_start".into(), cold.into());

    // 5. Init alone (model load + S3 client; the index is empty), from process start.
    let bucket = testkit::moto::unique_bucket("bench-init");
    server.create_bucket(&bucket).await;
    let mut inits = Vec::new();
    let mut in_process = Vec::new();
    let mut model_load = Vec::new();
    for _ in 0..7 {
        let cache = tempfile::tempdir().unwrap();
        let (child, total) = run_child(&server, Path::new(""), &bucket, &model_dir, cache.path());
        inits.push(total);
        in_process.push(child["in_process_ms"].as_f64().unwrap());
        model_load.push(child["init"]["model_ms"].as_f64().unwrap());
    }
    let cold_first = inits[0];
    let (init_p50, _) = p50_p99(inits);
    let (in_p50, _) = p50_p99(in_process);
    let (model_p50, _) = p50_p99(model_load);
    println!("init (empty index), process start to init done: p50 {init_p50:.0} ms over 7 processes (first {cold_first:.0}); in process {in_p50:.0} ms, model load {model_p50:.0} ms");
    md += &format!(
        "\nInit alone (`lookalike_query::init` against an empty index: model load and S3 client), from process \
         start to init done, median of 7 new processes: **{init_p50:.0} ms** (the first {cold_first:.0} ms; \
         {in_p50:.0} ms of it inside `main`, the model load {model_p50:.0} ms). Target ≤ 250 ms.\n"
    );
    report.insert(
        "init".into(),
        json!({"process_start_to_init_ms_p50": init_p50, "first_ms": cold_first,
               "in_process_ms_p50": in_p50, "model_load_ms_p50": model_p50}),
    );

    // 6. The function binaries, as the last `cargo build --release` left them.
    let (binaries, md_binaries) = binary_sizes();
    md += &md_binaries;
    report.insert("binaries".into(), binaries);

    publish(
        "query",
        "Query Lambda",
        "cargo bench -p lookalike-query --bench query",
        &report,
        &md,
    );
}

/// Runs this binary as the cold-start child (`event_file` empty: init only) against the index
/// `s3://bucket/index` on the moto server; returns the child's JSON line and the wall time from
/// spawning it to its exit, in ms.
fn run_child(
    server: &testkit::moto::MotoServer,
    event_file: &Path,
    bucket: &str,
    model_dir: &Path,
    cache: &Path,
) -> (Value, f64) {
    let t = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, event_file)
        .env("LOOKALIKE_INDEX", format!("s3://{bucket}/index"))
        .env("LOOKALIKE_MODEL", model_dir)
        .env("LOOKALIKE_CACHE_DIR", cache)
        .env("RUST_LOG", "warn")
        .envs(server.env_vars())
        .output()
        .unwrap();
    let total = ms(t.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .unwrap(),
    )
    .unwrap();
    (child, total)
}

/// Sizes of the three function binaries in the release target folder (next to this bench's own
/// `deps` folder): unzipped, and gzip -6 as an estimate of the zip that Lambda receives.
fn binary_sizes() -> (Value, String) {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let mut rows = Vec::new();
    let mut md = String::from(
        "\nFunction binaries (`cargo build --release -p lookalike-query -p lookalike-ingest -p lookalike-compact`: \
         the release profile strips them and builds with fat LTO and one codegen unit), on this machine's \
         target; target ≤ 30 MB each:\n\n| binary | MB | gzip MB | built |\n| --- | --- | --- | --- |\n",
    );
    for name in ["lookalike-query", "lookalike-ingest", "lookalike-compact"] {
        let path = release.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            md += &format!("| {name} | not built | | |\n");
            continue;
        };
        // `cargo bench` links the functions with the bench profile into the same folder: a
        // binary that still carries symbols or debug info is that build, not what is deployed.
        if let Some(section) = unstripped_section(&path) {
            println!("{name}: not a release build (it has {section}): run the release build first");
            md += &format!("| {name} | not a release build (has {section}) | | |\n");
            rows.push(json!({"binary": name, "bytes": meta.len(), "not_release": section}));
            continue;
        }
        let gz = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -6 -c '{}' | wc -c", path.display()))
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        let built = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .map(|age| format!("{:.1} h before this run", age.as_secs_f64() / 3600.0))
            .unwrap_or_default();
        let mb = meta.len() as f64 / 1e6;
        let gz_mb = gz.map(|g| g as f64 / 1e6);
        println!(
            "{name}: {mb:.1} MB (gzip {:.1} MB)",
            gz_mb.unwrap_or(f64::NAN)
        );
        md += &format!(
            "| {name} | {mb:.1} | {} | {built} |\n",
            gz_mb.map(|g| format!("{g:.1}")).unwrap_or_default()
        );
        rows.push(json!({"binary": name, "bytes": meta.len(), "gzip_bytes": gz}));
    }
    (rows.into(), md)
}

/// The first section of an ELF64 little-endian file that a stripped release build lacks
/// (`.symtab`, `.debug_info` or `.debug_line`), or None if it has neither (or is not such a file).
fn unstripped_section(path: &Path) -> Option<String> {
    let elf = std::fs::read(path).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?) as usize);
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18)?;
    (0..shnum).find_map(|i| {
        let start = names + u32_at(header(i))?;
        let len = elf.get(start..)?.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&elf[start..start + len]).ok()?;
        matches!(name, ".symtab" | ".debug_info" | ".debug_line").then(|| name.to_string())
    })
}

/// Bytes of the segment files in a cache folder.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lmdb"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}
