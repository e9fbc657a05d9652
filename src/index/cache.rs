//! The local copy of an index's segments (the CLI's cache dir, a query Lambda's /tmp).
//! A segment file appears under its final name only after its sha256 matched the manifest:
//! downloads go to a temporary name first, so a half-written file is never opened.

use std::path::{Path, PathBuf};

use super::manifest::{is_segment_name, segment_key, Manifest, SegmentEntry};
use super::IndexError;
use crate::digest::sha256_file;
use crate::store::ObjectStore;
use crate::task;

/// How many times a segment whose download does not verify is fetched again.
const DOWNLOAD_ATTEMPTS: usize = 3;

/// A local folder of verified copies of an index's segments.
#[derive(Debug, Clone)]
pub struct SegmentCache {
    dir: PathBuf,
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
    /// A cache in `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, IndexError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| IndexError::Io(dir.display().to_string(), e))?;
        Ok(SegmentCache { dir })
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
                .prefix(".partial-")
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
