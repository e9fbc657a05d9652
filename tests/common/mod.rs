//! Shared helpers for the integration tests (`mod common;` in a test file).

#![allow(dead_code)]

pub mod moto;

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

/// Path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

mod setup;
#[allow(unused_imports)]
pub use setup::{encoder, model_dir, s3_store};
