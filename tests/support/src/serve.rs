//! `lookalike serve` as a child process on a free loopback port, for the tests and the load
//! benchmark, and a small index of real photos to serve.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `lookalike serve`; stopped (SIGTERM, then killed) when dropped.
pub struct Server {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: PathBuf,
}

impl Server {
    /// Start `bin serve --addr 127.0.0.1:0 args...` in `dir`; waits for the line that names
    /// the address (at most 60 s). Its log goes to `dir/serve-<port>.log`.
    pub fn start(bin: &Path, dir: &Path, args: &[&str]) -> Server {
        let log = dir.join(format!("serve-{}.log", std::process::id()));
        let mut child = Command::new(bin)
            .current_dir(dir)
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("LOOKALIKE_INDEX")
            .env_remove("LOOKALIKE_CACHE")
            .env("LOOKALIKE_MODEL", crate::model_dir())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("http://").nth(1) {
                    let addr = rest.split('/').next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("an address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "lookalike serve did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Server {
            child: Some(child),
            addr,
            stderr: log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Resident memory in MiB (`VmRSS`).
    pub fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// Send SIGTERM and wait (at most `timeout`) for it to exit; its exit status and log.
    pub fn stop(mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A folder of 12 real photos in 3 categories (`animals`, `drinks`, `vehicles`): each of the
/// three test photos and three variants of it (mirrored, cropped, greyscale), so that every
/// photo has near neighbours of its own category. Returns the keys.
pub fn photo_folder(dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for (category, name) in [
        ("animals", "chelsea"),
        ("drinks", "coffee"),
        ("vehicles", "rocket"),
    ] {
        let folder = dir.join(category);
        std::fs::create_dir_all(&folder).expect("folder");
        let original = image::open(crate::fixture(&format!("{name}.jpg"))).expect("fixture");
        let (w, h) = (original.width(), original.height());
        let variants = [
            ("", original.clone()),
            ("-mirrored", original.fliph()),
            (
                "-cropped",
                original.crop_imm(w / 8, h / 8, w * 3 / 4, h * 3 / 4),
            ),
            (
                "-grey",
                image::DynamicImage::ImageLuma8(original.to_luma8()),
            ),
        ];
        for (suffix, img) in variants {
            let file = format!("{name}{suffix}.jpg");
            img.to_rgb8()
                .save(folder.join(&file))
                .expect("save a variant");
            keys.push(format!("{category}/{file}"));
        }
    }
    keys
}
