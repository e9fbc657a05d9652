//! Shared set-up of the index and ingest tests: S3 stores on the shared moto server, the model.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use lookalike::model::encoder::Encoder;
use lookalike::store::{DynStore, S3Store};

use crate::moto::{unique_bucket, MotoServer};

/// A store on a fresh bucket (under prefix `idx`) of the moto server shared by this test binary;
/// `None` (after a SKIPPED line) when moto is not installed.
pub async fn s3_store(name: &str) -> Option<DynStore> {
    let server = MotoServer::shared()?;
    let bucket = unique_bucket(name);
    server.create_bucket(&bucket).await;
    Some(Arc::new(S3Store::new(server.client(), bucket, "idx")))
}

/// Directory of the imported default model: `$LOOKALIKE_TEST_MODEL` or `.lookalike/model`.
pub fn model_dir() -> PathBuf {
    std::env::var_os("LOOKALIKE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join(".lookalike/model"))
}

/// The default encoder, loaded once per test binary; `None` (after a SKIPPED line) when the
/// model has not been imported (scripts/test.sh imports it before running the tests).
pub fn encoder() -> Option<Arc<Encoder>> {
    static ENCODER: OnceLock<Option<Arc<Encoder>>> = OnceLock::new();
    let e = ENCODER.get_or_init(|| {
        let dir = model_dir();
        if !dir.join("encoder.onnx").exists() {
            return None;
        }
        Some(Arc::new(Encoder::load(&dir).unwrap_or_else(|e| {
            panic!("cannot load {}: {e}", dir.display())
        })))
    });
    if e.is_none() {
        println!(
            "SKIPPED: no model in {}; run scripts/test.sh (it imports the model)",
            model_dir().display()
        );
    }
    e.clone()
}
