//! Hostile-input benchmark: `cargo bench --bench hostile`.
//!
//! Peak memory (the child's maximum resident set, from `wait4`) and CPU time of the release
//! `lookalike` binary on inputs made to cost as much as possible for their size:
//! - `query` with a 10000x10000 16-bit RGBA PNG of one colour (3.8 MB here; 800 MB decoded), a
//!   7000x7000 one (392 MB decoded) and a 12000x8000 JPEG of one colour (96 megapixels);
//! - `index` of a folder holding those, and of 40 noise PNGs of 3000x3000 (27 MB each, 1 GB in
//!   all: the bytes a batch holds in flight).
//!
//! `LOOKALIKE_BENCH_BEFORE=/path/to/older/lookalike` runs an older binary on the same files in
//! the same run, for the comparison. Writes `target/bench/hostile.json` and the `hostile`
//! section of BENCHMARKS.md (`LOOKALIKE_BENCH_NO_MD=1` leaves it alone). Needs the imported
//! model (`.lookalike/model`) and `target/release/lookalike` (`cargo build --release`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};

/// Writes a `w` x `h` PNG of `depth` bits (8 or 16) per channel, RGBA when `alpha`, row by row
/// (never holding the decoded image): one colour, or noise.
fn write_png(path: &Path, w: u32, h: u32, depth: u8, alpha: bool, noise: bool) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(if alpha {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(if depth == 16 {
        png::BitDepth::Sixteen
    } else {
        png::BitDepth::Eight
    });
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header().unwrap();
    let row_len = w as usize * if alpha { 4 } else { 3 } * (depth as usize / 8);
    let mut stream = writer.stream_writer().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut row = vec![0x5Au8; row_len];
    for _ in 0..h {
        if noise {
            rng.fill(&mut row[..]);
        }
        stream.write_all(&row).unwrap();
    }
    stream.finish().unwrap();
}

fn write_jpeg(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 150]));
    img.save(path).unwrap();
}

/// What one child run cost.
struct Run {
    peak_mib: f64,
    cpu_s: f64,
    wall_s: f64,
    ok: bool,
    said: String,
}

/// Runs `bin args` in `dir`, returning its peak RSS and CPU time (from `wait4`).
fn run(bin: &Path, dir: &Path, args: &[&str], model: &Path) -> Run {
    let start = Instant::now();
    let child = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .env("LOOKALIKE_MODEL", model)
        .env_remove("LOOKALIKE_INDEX")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Read the output before reaping the child (it could fill a pipe).
    let out = child.wait_with_output_raw();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills `usage`.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let text = String::from_utf8_lossy(&out).to_string();
    let said = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect();
    Run {
        peak_mib: usage.ru_maxrss as f64 / 1024.0,
        cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime),
        wall_s: start.elapsed().as_secs_f64(),
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        said,
    }
}

/// Reads a child's stdout and stderr to the end without reaping it (so that `wait4` can).
trait RawOutput {
    fn wait_with_output_raw(self) -> Vec<u8>;
}

impl RawOutput for std::process::Child {
    fn wait_with_output_raw(mut self) -> Vec<u8> {
        use std::io::Read;
        let mut err = self.stderr.take().unwrap();
        let t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let mut out = Vec::new();
        let _ = self.stdout.take().unwrap().read_to_end(&mut out);
        out.extend(t.join().unwrap());
        std::mem::forget(self); // reaped by wait4
        out
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var_os("LOOKALIKE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".lookalike/model"));
    let now = root.join("target/release/lookalike");
    if !model.join("encoder.onnx").exists() || !now.exists() {
        eprintln!(
            "SKIPPED: needs {} and {} (lookalike model import, cargo build --release)",
            model.display(),
            now.display()
        );
        return;
    }
    let mut bins = vec![("this build", now)];
    if let Some(before) = std::env::var_os("LOOKALIKE_BENCH_BEFORE") {
        bins.insert(0, ("before", PathBuf::from(before)));
    }

    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    std::fs::create_dir_all(files.join("hostile")).unwrap();
    std::fs::create_dir_all(files.join("big")).unwrap();
    let t = Instant::now();
    let huge = files.join("hostile/huge16.png");
    write_png(&huge, 10_000, 10_000, 16, true, false);
    let mid = files.join("hostile/mid16.png");
    write_png(&mid, 7_000, 7_000, 16, true, false);
    let jpeg = files.join("hostile/wide.jpg");
    write_jpeg(&jpeg, 12_000, 8_000);
    for i in 0..40 {
        write_png(
            &files.join(format!("big/noise-{i:02}.png")),
            3_000,
            3_000,
            8,
            false,
            true,
        );
    }
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let big_bytes: u64 = (0..40)
        .map(|i| size(&files.join(format!("big/noise-{i:02}.png"))))
        .sum();
    println!(
        "inputs made in {:.0} s: huge16.png {} KB, mid16.png {} KB, wide.jpg {} KB, 40 noise PNGs {} MB",
        t.elapsed().as_secs_f64(),
        size(&huge) / 1024,
        size(&mid) / 1024,
        size(&jpeg) / 1024,
        big_bytes >> 20
    );

    // An index to query (one ordinary image), per binary.
    let fixture = root.join("tests/fixtures/chelsea.jpg");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "query huge16.png (10000x10000 16-bit RGBA)",
            vec!["query".into(), huge.display().to_string()],
        ),
        (
            "query mid16.png (7000x7000 16-bit RGBA)",
            vec!["query".into(), mid.display().to_string()],
        ),
        (
            "query wide.jpg (12000x8000 JPEG)",
            vec!["query".into(), jpeg.display().to_string()],
        ),
        (
            "index the 3 hostile images",
            vec![
                "index".into(),
                files.join("hostile").display().to_string(),
                "--index".into(),
                "hostile-index".into(),
            ],
        ),
        (
            "index 40 noise PNGs (1 GB)",
            vec![
                "index".into(),
                files.join("big").display().to_string(),
                "--index".into(),
                "big-index".into(),
            ],
        ),
    ];
    let mut rows = Vec::new();
    let mut report = Vec::new();
    for (label, bin) in &bins {
        let dir = work.path().join(label.replace(' ', "-"));
        std::fs::create_dir_all(dir.join("seed/cats")).unwrap();
        std::fs::copy(&fixture, dir.join("seed/cats/chelsea.jpg")).unwrap();
        let seed = run(bin, &dir, &["index", "seed"], &model);
        assert!(
            seed.ok,
            "{label}: cannot build the query index: {}",
            seed.said
        );
        for (case, args) in &cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = run(bin, &dir, &args, &model);
            println!(
                "{label:>10} | {case:<44} | peak {:>7.0} MiB | cpu {:>6.2} s | wall {:>6.2} s | {} | {}",
                r.peak_mib,
                r.cpu_s,
                r.wall_s,
                if r.ok { "ok" } else { "refused" },
                r.said
            );
            rows.push(format!(
                "| {label} | {case} | {:.0} | {:.2} | {} |",
                r.peak_mib,
                r.cpu_s,
                if r.ok { "ok" } else { "error (refused)" }
            ));
            report.push(
                json!({"binary": label, "case": case, "peak_mib": r.peak_mib,
                               "cpu_s": r.cpu_s, "wall_s": r.wall_s, "ok": r.ok, "said": r.said}),
            );
        }
    }
    let body = format!(
        "Peak resident memory and CPU time of one `lookalike` process (release, this machine: {} \
         cores), from `wait4`. `index` runs the same `Ingester` as the ingest function (one batch, \
         one commit), so its peak is what one ingest invocation of these objects holds; the query \
         runs the query path's decode limits. \"before\" is the build before the bounds (chunks \
         of 64 whole objects, reads without a cap, 1 GiB decoder allocations, the query with \
         ingest's limits), on the same files in the same run.\n\n\
         | binary | run | peak MiB | CPU s | result |\n| --- | --- | --- | --- | --- |\n{}\n\n\
         What it does not show: the Lambda's memory also holds the runtime and the S3 client's \
         buffers (moto is not S3); x86_64 here is not Graviton.",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows.join("\n")
    );
    testkit::bench::publish(
        "hostile",
        "Hostile inputs: memory and CPU",
        "LOOKALIKE_BENCH_BEFORE=<older lookalike> cargo bench --bench hostile",
        &Value::Array(report),
        &body,
    );
}
