//! Encoder benchmark: `cargo bench --bench encoder`.
//!
//! Measures, on the imported default model (`.lookalike/model`, or `LOOKALIKE_MODEL_DIR`):
//! model load + optimise time; encode time per image at batch 1 on one thread; images/s on all
//! cores (one batch-1 run per core); a batch of 8 as 8 parallel batch-1 runs and as a true
//! fixed-batch-8 plan; preprocessing of a 400x533 and a 4000x3000 JPEG; a per-op profile of one
//! image; and the same ONNX with onnxruntime (`tools/bench/ort_bench.py`, through `.venv`) on the
//! same preprocessed inputs. Writes `target/bench/encoder.json` and the figures part of the
//! encoder section of `BENCHMARKS.md`.
//!
//! Environment: `LOOKALIKE_BENCH_SECONDS` (default 3) per measurement; `LOOKALIKE_BENCH_NO_ORT=1`
//! skips onnxruntime; `LOOKALIKE_BENCH_NO_MD=1` leaves BENCHMARKS.md alone;
//! `LOOKALIKE_BENCH_RENDER=report.json` only rewrites the BENCHMARKS.md figures from a saved report;
//! `LOOKALIKE_BENCH_NODES=1` prints every node's time; `LOOKALIKE_BENCH_ROOT` and
//! `LOOKALIKE_BENCH_PYTHON` run a copied bench binary against another checkout / interpreter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::{ImageEncoder, RgbImage};
use lookalike::model::encoder::Encoder;
use lookalike::model::{Layout, ModelCard, ONNX_FILE};
use lookalike::preprocess::{decode, decode_scaled, needed_size, preprocess, to_tensor, Limits};
use rayon::prelude::*;
use serde_json::{json, Value};
use tract_onnx::prelude::*;

const FIGURES_BEGIN: &str =
    "<!-- encoder-figures:begin (written by `cargo bench --bench encoder`) -->";
const FIGURES_END: &str = "<!-- encoder-figures:end -->";

/// The repository root (`LOOKALIKE_BENCH_ROOT` runs a copied bench binary against another checkout).
fn root() -> PathBuf {
    std::env::var_os("LOOKALIKE_BENCH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn secs() -> f64 {
    std::env::var("LOOKALIKE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time of the calling thread, in ms: insensitive to the thread being descheduled on a busy
/// machine (the figures next to the wall-clock ones).
fn thread_cpu_ms() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: plain libc call writing into a local struct of the C layout (64-bit Linux).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.sec as f64 * 1e3 + ts.nsec as f64 / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs `f` repeatedly for about `seconds` (at least `min_runs` times) after `warm` warm-up runs;
/// returns the per-run times in ms.
fn time_runs(seconds: f64, warm: usize, min_runs: usize, mut f: impl FnMut(usize)) -> Vec<f64> {
    for i in 0..warm {
        f(i);
    }
    let start = Instant::now();
    let mut times = Vec::new();
    let mut i = 0;
    while start.elapsed().as_secs_f64() < seconds || times.len() < min_runs {
        let t = Instant::now();
        f(i);
        times.push(ms(t.elapsed()));
        i += 1;
    }
    times
}

type Plan = Arc<TypedSimplePlan>;

struct Built {
    plan: Plan,
    parse_ms: f64,
    typed_ms: f64,
    optimize_ms: f64,
    plan_ms: f64,
}

/// The encoder's plan, rebuilt here (same steps as `Encoder::load`) so the bench can vary the
/// batch size and profile nodes.
fn build_plan(onnx: &Path, card: &ModelCard, batch: usize) -> Result<Built> {
    build_plan_with(onnx, card, batch, ENCODER_TRANSFORMS)
}

/// What `Encoder::load` does between `into_typed` and `into_optimized`.
const ENCODER_TRANSFORMS: &[&str] = &["declutter", "conv_nhwc"];

/// [`build_plan`] with tract model transforms (e.g. `conv_nhwc`) applied after decluttering.
fn build_plan_with(
    onnx: &Path,
    card: &ModelCard,
    batch: usize,
    transforms: &[&str],
) -> Result<Built> {
    let t0 = Instant::now();
    let mut model = tract_onnx::onnx().model_for_path(onnx)?;
    let parse_ms = ms(t0.elapsed());
    let (w, h) = (card.input.width as usize, card.input.height as usize);
    let shape = match card.input.layout {
        Layout::Nchw => [batch, 3, h, w],
        Layout::Nhwc => [batch, h, w, 3],
    };
    model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?;
    model.select_outputs_by_name([card.output.as_str()])?;
    let t1 = Instant::now();
    let mut typed = model.into_typed()?;
    {
        for name in transforms {
            if *name == "declutter" {
                typed.declutter()?;
                continue;
            }
            let t = tract_onnx::tract_core::transform::get_transform(name)?
                .with_context(|| format!("no tract transform {name}"))?;
            t.transform(&mut typed)?;
        }
    }
    let typed_ms = ms(t1.elapsed());
    let t2 = Instant::now();
    let opt = typed.into_optimized()?;
    let optimize_ms = ms(t2.elapsed());
    let t3 = Instant::now();
    let plan = opt.into_runnable()?;
    let plan_ms = ms(t3.elapsed());
    Ok(Built {
        plan,
        parse_ms,
        typed_ms,
        optimize_ms,
        plan_ms,
    })
}

fn input_tensor(card: &ModelCard, batch: usize, data: &[f32]) -> Result<Tensor> {
    let (w, h) = (card.input.width as usize, card.input.height as usize);
    let shape = match card.input.layout {
        Layout::Nchw => [batch, 3, h, w],
        Layout::Nhwc => [batch, h, w, 3],
    };
    Tensor::from_shape(&shape, data)
}

/// Per op type: (op, ms per run, nodes); per node: (node, ms per run); ms per whole run.
type Profile = (Vec<(String, f64, usize)>, Vec<(String, f64)>, f64);

/// Time per op type (and per node) over `runs` single-thread runs of one image.
fn profile(plan: &Plan, input: &Tensor, runs: usize) -> Result<Profile> {
    let mut by_op: HashMap<String, (f64, usize)> = HashMap::new();
    let mut by_node: HashMap<String, f64> = HashMap::new();
    let mut state = tract_onnx::tract_core::plan::SimpleState::new(plan)?;
    let mut total = 0.0;
    for run in 0..runs + 1 {
        let t_run = Instant::now();
        state.run_plan_with_eval(
            tvec![input.clone().into()],
            |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                let dt = ms(t.elapsed());
                if run > 0 {
                    let e = by_op.entry(node.op.name().to_string()).or_default();
                    e.0 += dt;
                    e.1 += 1;
                    *by_node
                        .entry(format!("{} ({})", node.name, node.op.name()))
                        .or_default() += dt;
                }
                r
            },
        )?;
        if run > 0 {
            total += ms(t_run.elapsed());
        }
    }
    let n = runs as f64;
    let mut ops: Vec<(String, f64, usize)> = by_op
        .into_iter()
        .map(|(k, (t, c))| (k, t / n, c / runs))
        .collect();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut nodes: Vec<(String, f64)> = by_node.into_iter().map(|(k, t)| (k, t / n)).collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
    nodes.truncate(10);
    Ok((ops, nodes, total / n))
}

/// Every node of one single-thread run: time, op, output shape and op info (investigation aid,
/// `LOOKALIKE_BENCH_NODES=1`).
fn dump_nodes(plan: &Plan, input: &Tensor) -> Result<()> {
    let mut state = tract_onnx::tract_core::plan::SimpleState::new(plan)?;
    let mut times: HashMap<usize, f64> = HashMap::new();
    for _ in 0..5 {
        state.run_plan_with_eval(
            tvec![input.clone().into()],
            |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                *times.entry(node.id).or_default() += ms(t.elapsed()) / 5.0;
                r
            },
        )?;
    }
    let model = plan.model();
    for id in model.eval_order()? {
        let node = model.node(id);
        let t = times.get(&id).copied().unwrap_or(0.0);
        if t < 0.05 {
            continue;
        }
        let shape = model
            .outlet_fact(OutletId::new(id, 0))
            .map(|f| format!("{:?}", f.shape))
            .unwrap_or_default();
        let info = node.op.info().unwrap_or_default().join("; ");
        println!(
            "    {t:6.2} ms  {:<16} {:<24} {:<40} {}",
            node.op.name(),
            shape,
            node.name,
            info.chars().take(120).collect::<String>()
        );
    }
    Ok(())
}

fn jpeg_bytes(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("jpeg encode");
    out
}

/// Sample photos: the fixtures, then clothing photos when the shared data set is there.
fn sample_photos() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in ["chelsea.jpg", "coffee.jpg", "rocket.jpg"] {
        if let Ok(b) = std::fs::read(root().join("tests/fixtures").join(name)) {
            out.push((name.to_string(), b));
        }
    }
    let clothing = Path::new("/work/shared/datasets/clothing-small");
    if let Ok(cats) = std::fs::read_dir(clothing) {
        let mut cats: Vec<PathBuf> = cats
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        cats.sort();
        for cat in cats {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&cat)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "jpg"))
                .take(2)
            {
                if let Ok(b) = std::fs::read(f) {
                    out.push((f.display().to_string(), b));
                }
            }
        }
    }
    out
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    // Re-render the BENCHMARKS.md figures from a saved report (e.g. one measured on another machine).
    if let Some(path) = std::env::var_os("LOOKALIKE_BENCH_RENDER") {
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        write_markdown(&report)?;
        println!(
            "updated BENCHMARKS.md (encoder section) from {}",
            Path::new(&path).display()
        );
        return Ok(());
    }
    let dir = std::env::var_os("LOOKALIKE_MODEL_DIR")
        .or_else(|| std::env::var_os("LOOKALIKE_TEST_MODEL"))
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".lookalike/model"));
    let onnx = dir.join(ONNX_FILE);
    if !onnx.is_file() {
        println!("SKIPPED: no model at {} (import it first: scripts/test.sh or `lookalike model import`)", onnx.display());
        return Ok(());
    }
    let seconds = secs();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let limits = Limits::default();
    let mut report = serde_json::Map::new();
    println!(
        "encoder benchmark: {} ({} cores, {cores} threads used for 'all cores')",
        cpu_name(),
        cores
    );

    // 1. Load + optimise.
    let mut loads = Vec::new();
    let mut load_cpu = Vec::new();
    let mut enc = None;
    for _ in 0..7 {
        let (t, c) = (Instant::now(), thread_cpu_ms());
        let e = Encoder::load(&dir)?;
        loads.push(ms(t.elapsed()));
        load_cpu.push(thread_cpu_ms() - c);
        enc = Some(e);
    }
    let load_cpu_ms = median(load_cpu);
    let enc = enc.expect("loaded");
    let card = enc.card().clone();
    let built = build_plan(&onnx, &card, 1)?;
    let load_ms = median(loads.clone());
    println!(
        "load + optimise: median {load_ms:.1} ms, min {:.1} ms, thread CPU {load_cpu_ms:.1} ms (parse {:.1}, to typed {:.1}, optimise {:.1}, plan {:.1})",
        loads.iter().cloned().fold(f64::MAX, f64::min),
        built.parse_ms,
        built.typed_ms,
        built.optimize_ms,
        built.plan_ms
    );
    report.insert(
        "load".into(),
        json!({"median_ms": load_ms, "runs_ms": loads, "thread_cpu_ms": load_cpu_ms, "parse_ms": built.parse_ms, "typed_ms": built.typed_ms,
               "optimize_ms": built.optimize_ms, "plan_ms": built.plan_ms}),
    );

    // Inputs.
    let photos = sample_photos();
    let tensors: Vec<Vec<f32>> = photos
        .iter()
        .map(|(_, b)| preprocess(b, &card, &limits))
        .collect::<Result<_, _>>()?;
    println!("inputs: {} photos", tensors.len());

    // 2. One thread, batch 1.
    let mut cpu = Vec::new();
    let times = time_runs(seconds, 3, 10, |i| {
        let c = thread_cpu_ms();
        enc.encode_tensor(&tensors[i % tensors.len()])
            .expect("encode");
        cpu.push(thread_cpu_ms() - c);
    });
    let st_ms = median(times.clone());
    let st_cpu_ms = median(cpu);
    let st_min = times.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "tract, 1 thread, batch 1: {st_ms:.2} ms/image (min {st_min:.2}, thread CPU {st_cpu_ms:.2}, {} runs) = {:.1} images/s",
        times.len(),
        1e3 / st_ms
    );

    // 3. All cores, one batch-1 run per core.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
    let (all_ips, batch8_ms) = pool.install(|| {
        let work: Vec<&Vec<f32>> = (0..cores * 4)
            .map(|i| &tensors[i % tensors.len()])
            .collect();
        work.par_iter().with_max_len(1).for_each(|t| {
            enc.encode_tensor(t).expect("encode");
        });
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed().as_secs_f64() < seconds {
            work.par_iter().with_max_len(1).for_each(|t| {
                enc.encode_tensor(t).expect("encode");
            });
            n += work.len();
        }
        let ips = n as f64 / start.elapsed().as_secs_f64();
        // 4a. A batch of 8 as 8 parallel batch-1 runs.
        let eight: Vec<&Vec<f32>> = (0..8).map(|i| &tensors[i % tensors.len()]).collect();
        let b8 = time_runs(seconds, 1, 5, |_| {
            eight.par_iter().with_max_len(1).for_each(|t| {
                enc.encode_tensor(t).expect("encode");
            });
        });
        (ips, median(b8))
    });
    println!("tract, all {cores} cores, batch 1 per core: {all_ips:.1} images/s");
    println!("tract, batch of 8 as 8 parallel batch-1 runs ({cores} cores): {batch8_ms:.1} ms/batch = {:.2} ms/image", batch8_ms / 8.0);

    // 4b. A true fixed-batch-8 plan, one thread.
    let b8 = build_plan(&onnx, &card, 8)?;
    let data8: Vec<f32> = (0..8)
        .flat_map(|i| tensors[i % tensors.len()].iter().copied())
        .collect();
    let t8 = input_tensor(&card, 8, &data8)?;
    let fixed8 = time_runs(seconds, 1, 3, |_| {
        b8.plan.run(tvec![t8.clone().into()]).expect("batch 8");
    });
    let fixed8_ms = median(fixed8);
    println!(
        "tract, fixed batch-8 plan, 1 thread: {fixed8_ms:.1} ms/batch = {:.2} ms/image",
        fixed8_ms / 8.0
    );
    report.insert(
        "tract".into(),
        json!({"version": "0.23.9", "single_thread_ms_per_image": st_ms, "single_thread_ms_min": st_min, "single_thread_cpu_ms": st_cpu_ms,
               "single_thread_images_per_s": 1e3 / st_ms, "all_cores_images_per_s": all_ips, "cores": cores,
               "batch8_parallel_batch1_ms": batch8_ms, "batch8_fixed_plan_single_thread_ms": fixed8_ms}),
    );

    // 5. Preprocessing.
    let base = photos
        .iter()
        .find_map(|(_, b)| {
            decode(b, &limits)
                .ok()
                .filter(|i| i.dimensions() == (400, 533))
        })
        .or_else(|| photos.first().and_then(|(_, b)| decode(b, &limits).ok()))
        .context("no photo to preprocess")?;
    let small = if base.dimensions() == (400, 533) {
        base.clone()
    } else {
        image::imageops::resize(&base, 400, 533, image::imageops::FilterType::CatmullRom)
    };
    let small_jpeg = jpeg_bytes(&small, 90);
    let big = image::imageops::resize(&small, 4000, 3000, image::imageops::FilterType::Triangle);
    let big_jpeg = jpeg_bytes(&big, 90);
    drop(big);
    let pre = |bytes: &[u8]| {
        median(time_runs(seconds / 2.0, 2, 5, |_| {
            drop(preprocess(bytes, &card, &limits).expect("pre"))
        }))
    };
    let small_pre = pre(&small_jpeg);
    let big_pre = pre(&big_jpeg);
    let big_decode_full = median(time_runs(seconds / 2.0, 1, 5, |_| {
        drop(decode(&big_jpeg, &limits).expect("decode"))
    }));
    let big_decode_scaled = median(time_runs(seconds / 2.0, 1, 5, |_| {
        drop(decode_scaled(&big_jpeg, &limits, Some(needed_size(&card))).expect("decode"))
    }));
    let big_full_pre = median(time_runs(seconds / 2.0, 1, 5, |_| {
        drop(to_tensor(&decode(&big_jpeg, &limits).expect("decode"), &card).expect("tensor"))
    }));
    let small_decode = median(time_runs(seconds / 2.0, 2, 5, |_| {
        drop(decode(&small_jpeg, &limits).expect("decode"))
    }));
    println!(
        "preprocess 400x533 JPEG ({} KiB): {small_pre:.2} ms (decode {small_decode:.2} ms)",
        small_jpeg.len() / 1024
    );
    println!(
        "preprocess 4000x3000 JPEG ({} KiB): {big_pre:.1} ms with DCT-scaled decode ({big_decode_scaled:.1} ms decode), \
         {big_full_pre:.1} ms with a full decode ({big_decode_full:.1} ms decode)",
        big_jpeg.len() / 1024
    );
    report.insert(
        "preprocess".into(),
        json!({"jpeg_400x533_ms": small_pre, "jpeg_400x533_decode_ms": small_decode,
               "jpeg_4000x3000_ms": big_pre, "jpeg_4000x3000_decode_scaled_ms": big_decode_scaled,
               "jpeg_4000x3000_full_decode_ms": big_decode_full, "jpeg_4000x3000_with_full_decode_ms": big_full_pre}),
    );

    // 6. Profile: where one image's time goes.
    let one = input_tensor(&card, 1, &tensors[0])?;
    let (ops, nodes, prof_total) = profile(&built.plan, &one, 20)?;
    let op_sum: f64 = ops.iter().map(|o| o.1).sum();
    println!("profile (1 thread, 1 image, {prof_total:.2} ms/run incl. overhead):");
    for (op, t, n) in ops.iter().take(8) {
        println!(
            "  {op:<28} {t:7.2} ms  {:5.1}%  ({n} nodes)",
            100.0 * t / op_sum
        );
    }
    if std::env::var_os("LOOKALIKE_BENCH_NODES").is_some() {
        dump_nodes(&built.plan, &one)?;
    }
    println!("  slowest nodes:");
    for (node, t) in nodes.iter().take(5) {
        println!("    {node:<60} {t:6.2} ms");
    }
    report.insert(
        "profile".into(),
        json!({"ms_per_run": prof_total,
               "ops": ops.iter().map(|(o, t, n)| json!({"op": o, "ms": t, "share": t / op_sum, "nodes": n})).collect::<Vec<_>>(),
               "slowest_nodes": nodes.iter().map(|(n, t)| json!({"node": n, "ms": t})).collect::<Vec<_>>()}),
    );

    // 6b. Variants of the plan (tract transforms), one thread, interleaved with the encoder's plan so a
    // busy machine affects both alike.
    let mut variants = Vec::new();
    for (label, transforms) in [("tract default layout (no conv_nhwc)", &[][..])] {
        match build_plan_with(&onnx, &card, 1, transforms) {
            Ok(v) => {
                let (mut base_t, mut var_t) = (Vec::new(), Vec::new());
                for round in 0..6 {
                    let x = input_tensor(&card, 1, &tensors[round % tensors.len()])?;
                    base_t.extend(time_runs(seconds / 6.0, 1, 3, |_| {
                        drop(built.plan.run(tvec![x.clone().into()]).expect("run"))
                    }));
                    var_t.extend(time_runs(seconds / 6.0, 1, 3, |_| {
                        drop(v.plan.run(tvec![x.clone().into()]).expect("run"))
                    }));
                }
                let (b, t) = (median(base_t), median(var_t));
                let (vops, _, _) = profile(&v.plan, &one, 10)?;
                let top: Vec<String> = vops
                    .iter()
                    .take(3)
                    .map(|(o, t, _)| format!("{o} {t:.1} ms"))
                    .collect();
                let y = v.plan.run(tvec![one.clone().into()])?;
                let y0 = built.plan.run(tvec![one.clone().into()])?;
                let (y, y0) = (
                    y[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
                    y0[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
                );
                let maxdiff = y
                    .iter()
                    .zip(&y0)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                println!(
                    "variant {label}: {t:.2} ms/image vs {b:.2} for the encoder's plan (1 thread; top ops: {}); build {:.0} ms; max |diff| vs the encoder's plan {maxdiff:.2e}",
                    top.join(", "),
                    v.parse_ms + v.typed_ms + v.optimize_ms + v.plan_ms
                );
                variants.push(json!({"variant": label, "ms_per_image": t, "encoder_plan_ms_per_image": b, "max_abs_diff": maxdiff,
                    "build_ms": v.parse_ms + v.typed_ms + v.optimize_ms + v.plan_ms,
                    "ops": vops.iter().take(5).map(|(o, t, n)| json!({"op": o, "ms": t, "nodes": n})).collect::<Vec<_>>()}));
            }
            Err(e) => println!("variant {label}: failed ({e:#})"),
        }
    }
    report.insert("variants".into(), json!(variants));

    // 7. onnxruntime on the same inputs.
    let ort = if std::env::var_os("LOOKALIKE_BENCH_NO_ORT").is_some() {
        None
    } else {
        match testkit::ort::run(&root(), &onnx, &card, &tensors, cores, seconds) {
            Ok(v) => Some(v),
            Err(e) => {
                println!("onnxruntime: skipped ({e:#})");
                None
            }
        }
    };
    if let Some(o) = &ort {
        let ort_ms = o["single_thread_ms_per_image"].as_f64().unwrap_or(f64::NAN);
        let ort_ips = o["all_cores_best_images_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let first: Vec<f32> = o["first_output"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_f64())
                    .map(|v| v as f32)
                    .collect()
            })
            .unwrap_or_default();
        let ours = enc.encode_tensor(&tensors[0])?;
        let agree = cosine(&first, &ours);
        println!(
            "onnxruntime {}: 1 thread {ort_ms:.2} ms/image; all cores best {ort_ips:.1} images/s \
             (intra-op b1 {:.1}, intra-op b8 {:.1}, thread per core {:.1}); output cosine vs tract {agree:.6}",
            o["onnxruntime"].as_str().unwrap_or("?"),
            o["all_cores_intra_op_batch1_images_per_s"].as_f64().unwrap_or(f64::NAN),
            o["all_cores_intra_op_batch8_images_per_s"].as_f64().unwrap_or(f64::NAN),
            o["all_cores_thread_per_core_images_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        let ort_cpu = o["single_thread_cpu_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "ratio tract/ORT: 1 thread {:.2}x (ms/image; {:.2}x in thread CPU time: {st_cpu_ms:.2} vs {ort_cpu:.2} ms); all cores {:.2}x (ORT images/s over tract's)",
            st_ms / ort_ms,
            st_cpu_ms / ort_cpu,
            ort_ips / all_ips
        );
        let mut o = o.clone();
        if let Some(m) = o.as_object_mut() {
            m.remove("first_output");
            m.insert("output_cosine_vs_tract".into(), json!(agree));
        }
        report.insert("onnxruntime".into(), o);
        report.insert(
            "ratios".into(),
            json!({"single_thread_tract_over_ort_ms": st_ms / ort_ms, "single_thread_tract_over_ort_cpu_ms": st_cpu_ms / ort_cpu, "all_cores_ort_over_tract_images_per_s": ort_ips / all_ips, "target": 1.5}),
        );
    }

    let command = "cargo bench --bench encoder";
    report.insert("command".into(), json!(command));
    report.insert("cpu".into(), json!(cpu_name()));
    report.insert("cores".into(), json!(cores));
    report.insert("model".into(), json!(card.id));
    report.insert("seconds_per_measurement".into(), json!(seconds));
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let report = Value::Object(report);
    std::fs::write(
        out_dir.join("encoder.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    println!("wrote {}", out_dir.join("encoder.json").display());

    if std::env::var_os("LOOKALIKE_BENCH_NO_MD").is_none() {
        write_markdown(&report)?;
        println!("updated BENCHMARKS.md (encoder section)");
    }
    Ok(())
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn figures_markdown(r: &Value) -> String {
    let cores = r["cores"].as_u64().unwrap_or(1);
    let has_ort = r.get("onnxruntime").is_some();
    let ort = |p: &str, digits: usize| {
        if has_ort {
            format!("{:.*}", digits, f(r, &["onnxruntime", p]))
        } else {
            "–".into()
        }
    };
    let ratio = |p: &str| {
        if has_ort {
            format!("{:.2}x", f(r, &["ratios", p]))
        } else {
            "–".into()
        }
    };
    let mut s = format!(
        "Measured with `LOOKALIKE_BENCH_SECONDS={} {}` (release) on {} ({cores} cores), model `{}`; \
         raw figures in `target/bench/encoder.json`.\n\n",
        r["seconds_per_measurement"],
        r["command"].as_str().unwrap_or(""),
        r["cpu"].as_str().unwrap_or("?"),
        r["model"].as_str().unwrap_or("?"),
    );
    s += &format!(
        "- Load + optimise (tract): **{:.0} ms** median of 7 loads in one process, the first (cold) {:.0} ms \
         (one build: parse {:.0}, to typed + declutter + conv_nhwc {:.0}, optimise {:.0}, plan {:.1}).\n",
        f(r, &["load", "median_ms"]),
        r["load"]["runs_ms"].get(0).and_then(Value::as_f64).unwrap_or(f64::NAN),
        f(r, &["load", "parse_ms"]),
        f(r, &["load", "typed_ms"]),
        f(r, &["load", "optimize_ms"]),
        f(r, &["load", "plan_ms"]),
    );
    s += &format!(
        "- Preprocess (decode + resize + normalise) a 400x533 JPEG: **{:.2} ms** (decode {:.2}); a 4000x3000 JPEG: \
         **{:.1} ms** with the DCT-scaled decode (decode alone {:.1}) vs {:.1} ms with a full decode (decode alone {:.1}).\n\n",
        f(r, &["preprocess", "jpeg_400x533_ms"]),
        f(r, &["preprocess", "jpeg_400x533_decode_ms"]),
        f(r, &["preprocess", "jpeg_4000x3000_ms"]),
        f(r, &["preprocess", "jpeg_4000x3000_decode_scaled_ms"]),
        f(r, &["preprocess", "jpeg_4000x3000_with_full_decode_ms"]),
        f(r, &["preprocess", "jpeg_4000x3000_full_decode_ms"]),
    );
    s += "| encode (preprocessed input) | tract 0.23.9 | onnxruntime | tract / ORT |\n|---|---|---|---|\n";
    s += &format!(
        "| 1 thread, batch 1, ms/image (median) | {:.2} | {} | {} |\n",
        f(r, &["tract", "single_thread_ms_per_image"]),
        ort("single_thread_ms_per_image", 2),
        ratio("single_thread_tract_over_ort_ms"),
    );
    s += &format!(
        "| 1 thread, thread CPU ms/image | {:.2} | {} | {} |\n",
        f(r, &["tract", "single_thread_cpu_ms"]),
        ort("single_thread_cpu_ms", 2),
        ratio("single_thread_tract_over_ort_cpu_ms"),
    );
    s += &format!(
        "| all {cores} cores, images/s | {:.1} (batch 1, one run per core) | {} (best of: intra-op batch 1 {}, batch 8 {}, \
         one 1-thread session per core {}) | {} |\n",
        f(r, &["tract", "all_cores_images_per_s"]),
        ort("all_cores_best_images_per_s", 1),
        ort("all_cores_intra_op_batch1_images_per_s", 0),
        ort("all_cores_intra_op_batch8_images_per_s", 0),
        ort("all_cores_thread_per_core_images_per_s", 0),
        ratio("all_cores_ort_over_tract_images_per_s"),
    );
    s += &format!(
        "| batch of 8, ms/image | {:.2} as 8 parallel batch-1 runs; {:.2} as a fixed batch-8 plan on 1 thread | | |\n\n",
        f(r, &["tract", "batch8_parallel_batch1_ms"]) / 8.0,
        f(r, &["tract", "batch8_fixed_plan_single_thread_ms"]) / 8.0,
    );
    if has_ort {
        s += &format!(
            "tract and onnxruntime outputs agree (cosine {:.6} on the first input). Target: tract within 1.5x of onnxruntime.\n\n",
            f(r, &["onnxruntime", "output_cosine_vs_tract"])
        );
    }
    if let Some(vs) = r["variants"].as_array() {
        for v in vs {
            s += &format!(
                "Variant *{}*: {:.2} ms/image vs {:.2} for the encoder's plan (1 thread, measured interleaved).\n\n",
                v["variant"].as_str().unwrap_or("?"),
                v["ms_per_image"].as_f64().unwrap_or(f64::NAN),
                v["encoder_plan_ms_per_image"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    s += &format!(
        "Profile of one image on one thread ({:.2} ms/run), time by tract op:\n\n| op | ms | share | nodes |\n|---|---|---|---|\n",
        f(r, &["profile", "ms_per_run"])
    );
    for o in r["profile"]["ops"].as_array().into_iter().flatten().take(6) {
        s += &format!(
            "| {} | {:.2} | {:.1}% | {} |\n",
            o["op"].as_str().unwrap_or("?"),
            o["ms"].as_f64().unwrap_or(0.0),
            100.0 * o["share"].as_f64().unwrap_or(0.0),
            o["nodes"]
        );
    }
    s
}

fn write_markdown(r: &Value) -> Result<()> {
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let figures = format!("{FIGURES_BEGIN}\n{}{FIGURES_END}", figures_markdown(r));
    let (begin, end) = ("<!-- encoder:begin -->", "<!-- encoder:end -->");
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => {
            let section = &text[b + begin.len()..e];
            let section = match (section.find(FIGURES_BEGIN), section.find(FIGURES_END)) {
                (Some(fb), Some(fe)) if fb < fe => {
                    format!(
                        "{}{figures}{}",
                        &section[..fb],
                        &section[fe + FIGURES_END.len()..]
                    )
                }
                _ => format!("{}\n{figures}\n", section.trim_end()),
            };
            format!(
                "{}{begin}{section}{end}{}",
                &text[..b],
                &text[e + end.len()..]
            )
        }
        _ => format!(
            "{}\n## Encoder\n{begin}\n{figures}\n{end}\n",
            text.trim_end()
        ),
    };
    std::fs::write(&path, new)?;
    Ok(())
}
