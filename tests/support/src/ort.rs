//! onnxruntime as the benchmarks' reference encoder: `tools/bench/ort_bench.py` through the
//! project's `.venv`, timing the same ONNX on the same preprocessed inputs as the Rust side, in
//! the same run (the encoder and the query benchmarks).

use std::path::{Path, PathBuf};
use std::process::Command;

use lookalike::model::{Layout, ModelCard};
use serde_json::Value;

/// A Python with onnxruntime and numpy: `LOOKALIKE_BENCH_PYTHON`, else `root/.venv/bin/python`,
/// else a `python3` that imports both.
pub fn python(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOOKALIKE_BENCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = root.join(".venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    let ok = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| PathBuf::from("python3"))
}

/// Time `onnx` with onnxruntime on `tensors` (each one preprocessed image, as the card's input
/// takes it): one thread at batch 1, then `cores` threads, about `seconds` per measurement.
/// Returns the script's JSON report (`single_thread_ms_per_image`, `first_output`, ...).
pub fn run(
    root: &Path,
    onnx: &Path,
    card: &ModelCard,
    tensors: &[Vec<f32>],
    cores: usize,
    seconds: f64,
) -> Result<Value, String> {
    let Some(py) = python(root) else {
        return Err("no Python with onnxruntime (run scripts/bootstrap-venv.sh)".into());
    };
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let inputs = dir.join(format!("ort_inputs_{}.f32", std::process::id()));
    let bytes: Vec<u8> = tensors
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&inputs, bytes).map_err(|e| format!("{}: {e}", inputs.display()))?;
    let (w, h) = (card.input.width, card.input.height);
    let shape = match card.input.layout {
        Layout::Nchw => format!("3,{h},{w}"),
        Layout::Nhwc => format!("{h},{w},3"),
    };
    let out = Command::new(&py)
        .arg(root.join("tools/bench/ort_bench.py"))
        .arg("--model")
        .arg(onnx)
        .arg("--inputs")
        .arg(&inputs)
        .args(["--shape", &shape])
        .args(["--input-name", &card.input.name])
        .args(["--output-name", &card.output])
        .args(["--threads", &cores.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .output();
    let _ = std::fs::remove_file(&inputs);
    let out = out.map_err(|e| format!("running {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "ort_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("no JSON from ort_bench.py")?;
    serde_json::from_str(line).map_err(|e| format!("ort_bench.py's JSON: {e}"))
}
