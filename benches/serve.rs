//! Load on `lookalike serve` over loopback: searches by key and by image at concurrency 1, 4 and
//! 16, a fixed number of requests each, on keep-alive connections; throughput, p50/p99 latency,
//! errors, and the server's resident memory before and after (it must not grow with the number
//! of requests). The index is `../shared/datasets/clothing-small` when it is there, else the 13
//! test photos.
//!
//! `cargo bench --bench serve` (release build of the server and of this client; both share the
//! machine's cores, so the figures are of the pair, not of the server alone).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use testkit::bench::{images_in, percentile, publish};
use testkit::http::Connection;
use testkit::serve::{photo_folder, Server};

const BIN: &str = env!("CARGO_BIN_EXE_lookalike");

#[derive(Debug, Serialize)]
struct Run {
    kind: &'static str,
    concurrency: usize,
    requests: usize,
    errors: usize,
    seconds: f64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    items: u64,
    index: String,
    runs: Vec<Run>,
    rss_start_mib: f64,
    rss_first_rounds_mib: f64,
    rss_end_mib: f64,
}

/// One request: by key (GET) or by image (POST).
#[derive(Clone)]
enum Search {
    Key(Vec<String>),
    Image(Arc<Vec<Vec<u8>>>),
}

fn load(
    server: &Server,
    search: &Search,
    concurrency: usize,
    requests: usize,
) -> (Vec<f64>, usize, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = next.clone();
            let search = search.clone();
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut conn = Connection::open(addr).expect("connect");
                let mut latencies = Vec::new();
                let mut errors = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let t = Instant::now();
                    let r = match &search {
                        Search::Key(keys) => {
                            let key = &keys[i % keys.len()];
                            conn.send(
                                "GET",
                                &format!(
                                    "/items/{}/similar?k=10",
                                    lookalike::api::request::encode_key_path(key)
                                ),
                                &[],
                                &[],
                            )
                        }
                        Search::Image(images) => conn.send(
                            "POST",
                            "/search?k=10",
                            &[("content-type", "image/jpeg")],
                            &images[i % images.len()],
                        ),
                    };
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    match r {
                        Ok(r) if r.status == 200 => {}
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = Connection::open(addr).expect("reconnect");
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("client thread");
        all.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    (all, errors, secs)
}

fn main() {
    if testkit::encoder().is_none() {
        return;
    }
    let dir = testkit::tempdir();
    let shared = testkit::repo_root().join("../shared/datasets/clothing-small");
    let (photos, label) = if shared.is_dir() {
        (shared.clone(), "clothing-small (../shared)".to_string())
    } else {
        let p = dir.path().join("photos");
        photo_folder(&p);
        (p, "the 12 test photos (../shared is missing)".to_string())
    };
    let index = dir.path().join("index");
    let out = testkit::cli::run(
        Path::new(BIN),
        dir.path(),
        &[
            "index",
            photos.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(
        Path::new(BIN),
        dir.path(),
        &["--index", index.to_str().unwrap()],
    );
    let stats = testkit::http::get(server.addr, "/stats").json();
    let items = stats["items"].as_u64().unwrap();
    // Keys and query images: the indexed photos themselves, in a fixed order.
    let (keys, files): (Vec<String>, Vec<_>) = images_in(&photos).into_iter().unzip();
    let images: Arc<Vec<Vec<u8>>> = Arc::new(
        files
            .iter()
            .take(32)
            .map(|f| std::fs::read(f).unwrap())
            .collect(),
    );
    // Warm up (the encoder's first run, page cache).
    load(&server, &Search::Image(images.clone()), 1, 4);
    load(&server, &Search::Key(keys.clone()), 1, 20);
    let rss_start = server.rss_mib();
    let mut runs = Vec::new();
    for (kind, search, requests) in [
        ("key", Search::Key(keys.clone()), 2000),
        ("image", Search::Image(images.clone()), 200),
    ] {
        for concurrency in [1, 4, 16] {
            let before = server.rss_mib();
            let (lat, errors, secs) = load(&server, &search, concurrency, requests);
            let run = Run {
                kind,
                concurrency,
                requests,
                errors,
                seconds: secs,
                per_sec: requests as f64 / secs,
                p50_ms: percentile(&lat, 0.5),
                p99_ms: percentile(&lat, 0.99),
                rss_before_mib: before,
                rss_after_mib: server.rss_mib(),
            };
            println!(
                "{kind:>5} c={concurrency:<2} {requests} requests: {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  errors {errors}  rss {:.0} -> {:.0} MiB",
                run.per_sec, run.p50_ms, run.p99_ms, run.rss_before_mib, run.rss_after_mib
            );
            runs.push(run);
        }
    }
    // Second rounds, as long again: memory must stay where the first rounds left it.
    let rss_first = server.rss_mib();
    let (_, image_errors, _) = load(&server, &Search::Image(images.clone()), 16, 400);
    let rss_images = server.rss_mib();
    let (_, key_errors, _) = load(&server, &Search::Key(keys.clone()), 16, 4000);
    let rss_end = server.rss_mib();
    let errors = image_errors + key_errors;
    println!(
        "after 400 more searches by image and 4000 by key at c=16 ({errors} errors): rss {rss_first:.0} -> {rss_images:.0} -> {rss_end:.0} MiB"
    );
    let total_errors: usize = runs.iter().map(|r| r.errors).sum::<usize>() + errors;
    let mut body = format!(
        "Index: {label}, {items} items. One machine: the server and the client threads share its cores.\n\n\
         | search | concurrency | requests | req/s | p50 ms | p99 ms | errors | RSS before → after (MiB) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for r in &runs {
        body.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} → {:.0} |\n",
            r.kind,
            r.concurrency,
            r.requests,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.rss_before_mib,
            r.rss_after_mib
        ));
    }
    body.push_str(&format!(
        "\nResident memory after the warm-up: {rss_start:.0} MiB; after all of the above: {rss_first:.0} MiB; after 400 more searches by image and 4000 more by key at concurrency 16: {rss_images:.0} and {rss_end:.0} MiB. \
         Errors in all: {total_errors}. Not shown: API Gateway and Lambda (this is `lookalike serve` on loopback), a remote client's network, other machines' cores.\n"
    ));
    let report = Report {
        items,
        index: label,
        runs,
        rss_start_mib: rss_start,
        rss_first_rounds_mib: rss_first,
        rss_end_mib: rss_end,
    };
    publish(
        "serve",
        "lookalike serve under load",
        "cargo bench --bench serve",
        &report,
        &body,
    );
    let (status, _) = server.stop(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "serve did not stop cleanly"
    );
    assert_eq!(total_errors, 0, "requests failed under load");
}
