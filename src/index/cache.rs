//! The local copy of an index's segments (the CLI's cache dir, a query Lambda's /tmp).
//! A segment file appears under its final name only after its sha256 matched the manifest:
//! downloads go to a temporary name first, so a half-written file is never opened.
//!
//! Work files (`.partial-<pid>-…` downloads, `.build-<pid>-…` segment builds) carry the id of
//! the process that made them: a cache opened by a new process removes those of processes that
//! are gone (a Lambda killed at its timeout, a CLI run interrupted). Before downloading, a sync
//! checks that the disk (and the optional budget) can hold what it fetches.

use std::path::{Path, PathBuf};

use super::manifest::{is_segment_name, segment_key, Manifest, SegmentEntry};
use super::IndexError;
use crate::digest::sha256_file;
use crate::store::ObjectStore;
use crate::task;

/// How many times a segment whose download does not verify is fetched again.
const DOWNLOAD_ATTEMPTS: usize = 3;
/// Room a sync leaves free on the disk besides the segments it downloads (LMDB readers, logs).
const DISK_MARGIN: u64 = 16 << 20;
/// The kinds of work files in a cache folder.
const WORK_KINDS: [&str; 2] = ["partial", "build"];

/// A local folder of verified copies of an index's segments.
#[derive(Debug, Clone)]
pub struct SegmentCache {
    dir: PathBuf,
    /// At most this many bytes of segment files (none: only the disk limits).
    budget: Option<u64>,
}

/// The name prefix of this process's work files of `kind` (`"partial"`, `"build"`).
pub fn work_prefix(kind: &str) -> String {
    format!(".{kind}-{}-", std::process::id())
}

/// Whether process `pid` still runs (it may be another process that reused the id: then its
/// files are kept, which is only a delay).
fn is_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Bytes available to this process on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the struct for a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Segments downloaded by this sync.
    pub downloaded: Vec<String>,
    /// Their bytes.
    pub downloaded_bytes: u64,
    /// Segments removed (no longer listed).
    pub removed: Vec<String>,
}

impl SegmentCache {
    /// A cache in `dir` (created when missing). Work files left by processes that are gone
    /// are removed.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, IndexError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| IndexError::Io(dir.display().to_string(), e))?;
        let cache = SegmentCache { dir, budget: None };
        let removed = cache.remove_leftovers();
        if !removed.is_empty() {
            tracing::info!(dir = %cache.dir.display(), ?removed, "removed work files of processes that are gone");
        }
        Ok(cache)
    }

    /// The same cache holding at most `bytes` of segment files.
    pub fn with_budget(mut self, bytes: Option<u64>) -> Self {
        self.budget = bytes;
        self
    }

    /// Remove the work files of processes that no longer run; returns their names.
    fn remove_leftovers(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = WORK_KINDS.iter().find_map(|kind| {
                let rest = name.strip_prefix(&format!(".{kind}-"))?;
                rest.split('-').next()?.parse::<u32>().ok()
            });
            // Ours at start-up cannot be in use yet: a new process that got a dead one's id.
            let stale = pid.is_some_and(|p| p == std::process::id() || !is_alive(p));
            if stale {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                removed.push(name);
            }
        }
        removed
    }

    /// An error unless the disk (and the budget) can take `needed` more bytes of segments.
    fn check_space(&self, manifest: &Manifest, needed: u64) -> Result<(), IndexError> {
        let shown = || self.dir.display().to_string();
        let free = free_bytes(&self.dir).map_err(|e| IndexError::Io(shown(), e))?;
        let disk_ok = needed.saturating_add(DISK_MARGIN) <= free;
        let (budget_free, budget) = match self.budget {
            Some(b) => {
                let held: u64 = manifest
                    .segments
                    .iter()
                    .filter_map(|s| file_len(&self.path_of(&s.name)))
                    .sum();
                (b.saturating_sub(held), format!(" (budget {b} bytes)"))
            }
            None => (u64::MAX, String::new()),
        };
        if disk_ok && needed <= budget_free {
            return Ok(());
        }
        let (free, budget) = if needed > budget_free {
            (budget_free, budget)
        } else {
            (free, String::new())
        };
        Err(IndexError::NoSpace {
            dir: shown(),
            needed,
            free,
            budget,
        })
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where segment `name` is (or would be) cached.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Make every segment of `manifest` present and verified locally; remove the ones it no longer
    /// lists. Open segments keep working after their file is removed (the mapping stays valid).
    pub async fn sync(
        &self,
        store: &dyn ObjectStore,
        manifest: &Manifest,
    ) -> Result<SyncReport, IndexError> {
        let mut report = SyncReport::default();
        let needed: u64 = manifest
            .segments
            .iter()
            .filter(|e| file_len(&self.path_of(&e.name)) != Some(e.bytes))
            .map(|e| e.bytes)
            .sum();
        if needed > 0 {
            self.check_space(manifest, needed)?;
        }
        for entry in &manifest.segments {
            let path = self.path_of(&entry.name);
            if file_len(&path) == Some(entry.bytes) {
                continue;
            }
            self.download(store, entry).await?;
            report.downloaded.push(entry.name.clone());
            report.downloaded_bytes += entry.bytes;
        }
        report.removed = self.remove_unlisted(manifest)?;
        Ok(report)
    }

    async fn download(
        &self,
        store: &dyn ObjectStore,
        entry: &SegmentEntry,
    ) -> Result<(), IndexError> {
        let dest = self.path_of(&entry.name);
        let mut last = String::new();
        for _ in 0..DOWNLOAD_ATTEMPTS {
            let tmp = tempfile::Builder::new()
                .prefix(&work_prefix("partial"))
                .tempfile_in(&self.dir)
                .map_err(|e| IndexError::Io(self.dir.display().to_string(), e))?
                .into_temp_path();
            store.download_to(&segment_key(&entry.name), &tmp).await?;
            let tmp_path = tmp.to_path_buf();
            let digest = task::blocking(move || sha256_file(&tmp_path))
                .await?
                .map_err(|e| IndexError::Io(dest.display().to_string(), e))?;
            if digest == entry.sha256 {
                tmp.persist(&dest)
                    .map_err(|e| IndexError::Io(dest.display().to_string(), e.error))?;
                return Ok(());
            }
            last = format!("sha256 {digest}, manifest says {}", entry.sha256);
            tracing::warn!(segment = %entry.name, %last, "segment download did not verify; fetching again");
        }
        Err(IndexError::Corrupt(entry.name.clone(), last))
    }

    fn remove_unlisted(&self, manifest: &Manifest) -> Result<Vec<String>, IndexError> {
        let listed: std::collections::HashSet<&str> =
            manifest.segments.iter().map(|s| s.name.as_str()).collect();
        let mut removed = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| IndexError::Io(self.dir.display().to_string(), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let seg_name = name.strip_suffix("-lock").unwrap_or(&name);
            if is_segment_name(seg_name) && !listed.contains(seg_name) {
                let _ = std::fs::remove_file(entry.path());
                if seg_name == name {
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_files_of_processes_that_are_gone_are_removed_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // A pid far above any pid_max: no such process.
        let dead = 0x3fff_fff0u32;
        let names = [
            format!(".partial-{me}-aaaa"),
            format!(".partial-{dead}-bbbb"),
            format!(".build-{dead}-cccc"),
            ".partial-1-dddd".to_string(), // init: alive
            "0000000000001-00000000000000aa.lmdb".to_string(),
            ".partial-notapid".to_string(),
        ];
        for n in &names[..2] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(&names[2])).unwrap();
        std::fs::write(dir.path().join(&names[2]).join("build.lmdb"), b"x").unwrap();
        for n in &names[3..] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        SegmentCache::new(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = names[3..].to_vec();
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn the_free_space_of_a_real_folder_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}
