//! Helpers shared by the tests and benchmarks of every crate of the workspace (a dev-dependency,
//! `testkit`): fixtures and temporary folders, the imported model, S3 on a local moto server.
//!
//! - [`moto`]: a local moto S3 server per test binary.
//! - [`setup`]: the default encoder and S3 stores on the shared server.
//! - [`cli`]: running the `lookalike` binary ([`lookalike!`]) and checking how it ended.
//! - [`lambda`]: the `events/` files as templates, and a bucket set up for the Lambda tests.
//! - [`faults`]: a store that injects faults into a real one.
//! - [`http`]: a minimal HTTP/1.1 client; [`serve`]: `lookalike serve` as a child process;
//!   [`webdriver`]: a headless Chromium driven over WebDriver.
//! - [`format1`]: indexes in the first format, as older builds wrote them.
//! - [`ort`]: onnxruntime as the benchmarks' reference encoder.
//! - [`bench`](mod@bench): the benchmarks' photo set, synthetic embeddings, indexes, BENCHMARKS.md.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod faults;
pub mod format1;
pub mod hostile;
pub mod http;
pub mod lambda;
pub mod moto;
pub mod ort;
pub mod serve;
pub mod setup;
pub mod variants;
pub mod webdriver;

use std::future::Future;

/// A multi-threaded tokio runtime with 2 workers (the test machines have 2 cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Run a future to completion on a fresh multi-threaded runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

/// A temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lookalike-test-")
        .tempdir()
        .expect("temp dir")
}

/// The repository's root.
pub fn repo_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .unwrap_or(here)
        .to_path_buf()
}

/// Path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A distinct, decodable 96x96 JPEG: random coloured blocks from `seed`.
pub fn synthetic_jpeg(seed: u64) -> Vec<u8> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let colours: Vec<[u8; 3]> = (0..16)
        .map(|_| [rng.random(), rng.random(), rng.random()])
        .collect();
    let img = image::RgbImage::from_fn(96, 96, |x, y| {
        image::Rgb(colours[((y / 24) * 4 + x / 24) as usize])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

pub use setup::{encoder, model_dir, s3_store};
