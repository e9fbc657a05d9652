//! The encoder on the default model (EfficientNet-Lite0). Needs the imported model: run through
//! `scripts/test.sh`, which imports it first; `LOOKALIKE_TEST_MODEL` points at another directory.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;

use image::ImageEncoder;
use lookalike::model::encoder::{EncodeError, Encoder, EncoderError};
use lookalike::model::{ModelCard, ONNX_FILE};
use lookalike::preprocess::{decode, preprocess, to_tensor, ImageError, Limits};

fn model_dir() -> PathBuf {
    match std::env::var_os("LOOKALIKE_TEST_MODEL") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".lookalike/model"),
    }
}

/// The shared encoder, or `None` (and a SKIPPED line) when the model has not been imported.
fn encoder() -> Option<&'static Encoder> {
    static ENC: OnceLock<Option<Encoder>> = OnceLock::new();
    let enc = ENC.get_or_init(|| {
        let dir = model_dir();
        if !dir.join(ONNX_FILE).is_file() {
            return None;
        }
        Some(Encoder::load(&dir).expect("the test model loads"))
    });
    if enc.is_none() {
        println!(
            "SKIPPED: no model at {} (run scripts/test.sh, which imports it)",
            model_dir().join(ONNX_FILE).display()
        );
    }
    enc.as_ref()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

fn top1(logits: &[f32]) -> (usize, f32) {
    let p = softmax(logits);
    let (i, &best) = p
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    (i, best)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn classifies_the_fixtures() {
    let Some(enc) = encoder() else { return };
    let limits = Limits::default();
    assert_eq!(enc.dims(), 1280);
    assert!(!enc.model_id().is_empty());

    let (cat, p) = top1(&enc.logits(&fixture("chelsea.jpg"), &limits).unwrap());
    println!("chelsea.jpg: class {cat} p={p:.3}");
    assert!(
        [281, 282, 285].contains(&cat),
        "chelsea.jpg: class {cat} ({p:.3}), expected a cat (281/282/285)"
    );

    let logits = enc.logits(&fixture("coffee.jpg"), &limits).unwrap();
    assert_eq!(logits.len(), 1000);
    let (cls, p) = top1(&logits);
    println!("coffee.jpg: class {cls} p={p:.3}");
    assert_eq!(
        cls, 967,
        "coffee.jpg: class {cls} ({p:.3}), expected espresso (967)"
    );
    assert!(p > 0.9, "espresso with p = {p}");

    let (cls, p) = top1(&enc.logits(&fixture("rocket.jpg"), &limits).unwrap());
    println!("rocket.jpg: class {cls} p={p:.3}");
    assert!(
        [657, 744].contains(&cls),
        "rocket.jpg: class {cls} ({p:.3}), expected missile/projectile (657/744)"
    );
}

#[test]
fn embeddings_are_unit_norm_and_deterministic() {
    let Some(enc) = encoder() else { return };
    let limits = Limits::default();
    for name in ["chelsea.jpg", "coffee.jpg", "rocket.jpg"] {
        let bytes = fixture(name);
        let a = enc.encode_image(&bytes, &limits).unwrap();
        let b = enc.encode_image(&bytes, &limits).unwrap();
        assert_eq!(a.len(), 1280);
        assert_eq!(a, b, "{name}: same bytes, same embedding");
        let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{name}: norm {norm}");
        assert!(a.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn a_recompressed_copy_is_nearest_to_its_original() {
    let Some(enc) = encoder() else { return };
    let limits = Limits::default();
    let names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"];
    let originals: Vec<Vec<f32>> = names
        .iter()
        .map(|n| enc.encode_image(&fixture(n), &limits).unwrap())
        .collect();
    for (i, name) in names.iter().enumerate() {
        // Shrink to 60% and save as a low-quality JPEG.
        let img = decode(&fixture(name), &limits).unwrap();
        let (w, h) = img.dimensions();
        let small = image::imageops::resize(
            &img,
            w * 6 / 10,
            h * 6 / 10,
            image::imageops::FilterType::Triangle,
        );
        let mut copy = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut copy, 50)
            .write_image(
                small.as_raw(),
                small.width(),
                small.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        let e = enc.encode_image(&copy, &limits).unwrap();
        let own = cosine(&e, &originals[i]);
        let others: Vec<String> = (0..names.len())
            .filter(|j| *j != i)
            .map(|j| format!("{} {:.3}", names[j], cosine(&e, &originals[j])))
            .collect();
        println!(
            "{name}: copy vs original {own:.3}, vs {}",
            others.join(", ")
        );
        for (j, other) in originals.iter().enumerate().filter(|(j, _)| *j != i) {
            let c = cosine(&e, other);
            assert!(
                own > c,
                "{name}: copy vs original {own:.3} <= vs {} {c:.3}",
                names[j]
            );
        }
        assert!(own > 0.7, "{name}: copy vs original only {own:.3}");
    }
}

#[test]
fn encode_many_matches_encode_image() {
    let Some(enc) = encoder() else { return };
    let limits = Limits::default();
    let mut inputs: Vec<Vec<u8>> = ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "coffee.jpg"]
        .iter()
        .map(|n| fixture(n))
        .collect();
    inputs.insert(2, b"not an image at all".to_vec());
    inputs.insert(3, Vec::new());
    let many = enc.encode_many(&inputs, &limits);
    assert_eq!(many.len(), inputs.len());
    for (bytes, got) in inputs.iter().zip(&many) {
        match enc.encode_image(bytes, &limits) {
            Ok(want) => assert_eq!(got.as_ref().unwrap(), &want),
            Err(EncodeError::Image(want)) => {
                assert!(
                    matches!(got, Err(EncodeError::Image(e)) if *e == want),
                    "{got:?}"
                )
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(matches!(
        many[2],
        Err(EncodeError::Image(ImageError::UnsupportedFormat { .. }))
    ));
    assert!(matches!(
        many[3],
        Err(EncodeError::Image(ImageError::Empty))
    ));
}

#[test]
fn big_jpegs_take_the_scaled_path_without_changing_the_embedding() {
    let Some(enc) = encoder() else { return };
    let limits = Limits::default();
    let img = decode(&fixture("chelsea.jpg"), &limits).unwrap();
    let big = image::imageops::resize(
        &img,
        2000,
        2000 * img.height() / img.width(),
        image::imageops::FilterType::CatmullRom,
    );
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(big)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .unwrap();
    let scaled = enc
        .encode_tensor(&preprocess(&bytes, enc.card(), &limits).unwrap())
        .unwrap();
    let full = enc
        .encode_tensor(&to_tensor(&decode(&bytes, &limits).unwrap(), enc.card()).unwrap())
        .unwrap();
    let c = cosine(&scaled, &full);
    assert!(c > 0.97, "scaled vs full decode: cosine {c}");
}

#[test]
fn load_errors_are_typed() {
    let Some(enc) = encoder() else { return };
    let onnx = model_dir().join(ONNX_FILE);
    let card: ModelCard = enc.card().clone();

    let mut bad = card.clone();
    bad.output = "no_such_output".into();
    let err = Encoder::load_with_card(&onnx, bad).unwrap_err();
    assert!(
        matches!(err, EncoderError::OutputMissing { ref name, .. } if name == "no_such_output"),
        "{err}"
    );

    let mut bad = card.clone();
    bad.dims = 512;
    let err = Encoder::load_with_card(&onnx, bad).unwrap_err();
    assert!(
        matches!(err, EncoderError::DimsMismatch { expected: 512, .. }),
        "{err}"
    );

    let mut bad = card.clone();
    bad.input.name = "pixels".into();
    let err = Encoder::load_with_card(&onnx, bad).unwrap_err();
    assert!(matches!(err, EncoderError::InputMissing { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = Encoder::load_with_card(&dir.path().join(ONNX_FILE), card.clone()).unwrap_err();
    assert!(matches!(err, EncoderError::MissingFile(_)), "{err}");

    std::fs::write(dir.path().join(ONNX_FILE), b"this is not protobuf").unwrap();
    let err = Encoder::load_with_card(&dir.path().join(ONNX_FILE), card.clone()).unwrap_err();
    assert!(
        matches!(err, EncoderError::Load { ref path, .. } if path.ends_with(ONNX_FILE)),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );

    // A card whose model file is missing: named.
    card.save(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(ONNX_FILE)).unwrap();
    let err = Encoder::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, EncoderError::MissingFile(ref p) if p.ends_with(ONNX_FILE)),
        "{err}"
    );

    // Bad input length.
    let err = enc.encode_tensor(&[0.0; 10]).unwrap_err();
    assert!(
        matches!(err, EncoderError::BadInput { found: 10, .. }),
        "{err}"
    );
}

#[test]
fn the_encoder_is_shared_across_threads() {
    let Some(enc) = encoder() else { return };
    let limits = Limits::default();
    let bytes = fixture("coffee.jpg");
    let want = enc.encode_image(&bytes, &limits).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| enc.encode_image(&bytes, &limits).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), want);
        }
    });
}
