//! The local-directory store: one file per object under a root directory.
//!
//! Layout and guarantees:
//! - An object with key `a/b/c.jpg` is the file `<root>/a/b/c.jpg`. Keys are checked lexically with
//!   [`validate_key`] (no absolute paths, no `.`/`..`/empty components, no backslashes), so a key can
//!   never name a path outside the root. Symlinks *inside* the root are followed: they were put there
//!   by whoever owns the directory.
//! - The store keeps its own files in `<root>/.lookalike-store/` (a lock file and a `tmp/` directory
//!   for writes in progress), made on the first write: a store that is only read (a folder of images
//!   to index, possibly read-only) is left untouched. That name is reserved: keys whose first
//!   component is `.lookalike-store` are rejected and `list` never shows it.
//! - ETag = lowercase hex SHA-256 of the content, computed from the bytes every time it is needed
//!   (head, get, list, the compare of `put_if_match`). It is therefore correct for files that were
//!   written or edited by other programs, and it can never repeat for different content (unlike
//!   size/mtime/inode tags, which an in-place edit in the same timestamp tick or a reused inode can
//!   fool). The price is reading each file to hash it (about 1 GB/s per core).
//! - Every write goes to a temp file in `tmp/` (same filesystem), is fsync-ed, and is renamed into
//!   place, so readers see the old or the new content, never a torn file. A file handle that a reader
//!   opened keeps the old inode, so `get` hashes and returns one consistent version.
//! - Mutations (`put`, `put_if_absent`, `put_if_match`, `delete`) take an exclusive `flock` on
//!   `.lookalike-store/lock` for the check-and-rename step only (the temp file is written before
//!   the lock is taken). The lock file is opened anew for every operation, so the lock excludes
//!   other threads, other `LocalStore` instances and other processes alike (flock locks belong to the
//!   open file description). This gives S3's compare-and-swap semantics: of N concurrent
//!   `put_if_match` calls with the same etag exactly one succeeds, and an unconditional put cannot
//!   slip between another writer's compare and its rename. Reads take no lock.
//! - All filesystem work runs on tokio's blocking pool, never on the async workers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use rayon::prelude::*;

use crate::digest::{copy_hashing, hash_reader, sha256_hex};
use crate::task;

use super::{validate_key, GetResult, Object, ObjectMeta, ObjectStore, StoreError, StoreResult};

/// Name of the directory (directly under the root) that holds the store's own files.
pub const RESERVED_DIR: &str = ".lookalike-store";
const LOCK_FILE: &str = "lock";
const TMP_DIR: &str = "tmp";
const TMP_PREFIX: &str = "put-";
/// Temp files older than this are leftovers of a crashed writer and are removed on open.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// A store in a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    lock_path: PathBuf,
    tmp_dir: PathBuf,
    /// Set once stale temp files have been swept (on the first write).
    cleaned: OnceLock<()>,
}

impl LocalStore {
    /// Open (and create if missing) a store rooted at `root`.
    pub fn new(root: impl AsRef<Path>) -> StoreResult<Self> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
        let root = fs::canonicalize(root).map_err(|e| io_err(root, e))?;
        if !root.is_dir() {
            return Err(StoreError::InvalidLocation(
                root.display().to_string(),
                "not a directory".into(),
            ));
        }
        let own = root.join(RESERVED_DIR);
        Ok(Self {
            inner: Arc::new(Inner {
                lock_path: own.join(LOCK_FILE),
                tmp_dir: own.join(TMP_DIR),
                root,
                cleaned: OnceLock::new(),
            }),
        })
    }

    /// The (canonical, absolute) root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file that holds the object `key` (whether or not it exists).
    pub fn path_of(&self, key: &str) -> StoreResult<PathBuf> {
        self.inner.path_of(key)
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        task::blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("local store task failed: {e}")))?
    }
}

impl Inner {
    fn path_of(&self, key: &str) -> StoreResult<PathBuf> {
        validate_key(key)?;
        if key.split('/').next() == Some(RESERVED_DIR) {
            return Err(StoreError::InvalidKey(
                key.into(),
                "reserved for the store's own files",
            ));
        }
        Ok(self.root.join(key))
    }

    /// Take the store-wide exclusive lock; released when the returned file is dropped.
    fn lock(&self) -> StoreResult<File> {
        if let Some(own) = self.lock_path.parent() {
            fs::create_dir_all(own).map_err(|e| io_err(own, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.lock_path)
            .map_err(|e| io_err(&self.lock_path, e))?;
        file.lock().map_err(|e| io_err(&self.lock_path, e))?;
        Ok(file)
    }

    /// Write `body` to a fresh, fsync-ed temp file in the store's tmp dir.
    fn write_temp(&self, body: &[u8]) -> StoreResult<tempfile::NamedTempFile> {
        // The store's own directory is made on the first write only, so that reading a folder
        // (say, of images to index) leaves it untouched and works on read-only folders.
        fs::create_dir_all(&self.tmp_dir).map_err(|e| io_err(&self.tmp_dir, e))?;
        self.cleaned
            .get_or_init(|| remove_stale_temp_files(&self.tmp_dir));
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.tmp_dir)
            .map_err(|e| io_err(&self.tmp_dir, e))?;
        tmp.write_all(body).map_err(|e| io_err(tmp.path(), e))?;
        tmp.as_file()
            .sync_data()
            .map_err(|e| io_err(tmp.path(), e))?;
        Ok(tmp)
    }

    /// Rename the temp file onto `dest` (creating parent directories). Call with the lock held.
    fn install(&self, tmp: tempfile::NamedTempFile, dest: &Path) -> StoreResult<()> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        tmp.persist(dest).map_err(|e| io_err(dest, e.error))?;
        Ok(())
    }

    /// Open an existing object file; `None` when there is no such object (missing, a directory, or
    /// a path through a non-directory).
    fn open_object(&self, path: &Path) -> StoreResult<Option<File>> {
        match File::open(path) {
            Ok(f) => {
                let md = f.metadata().map_err(|e| io_err(path, e))?;
                Ok(md.is_file().then_some(f))
            }
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_err(path, e)),
        }
    }

    fn head(&self, key: &str, path: &Path) -> StoreResult<Option<ObjectMeta>> {
        let Some(mut file) = self.open_object(path)? else {
            return Ok(None);
        };
        let (size, etag) = hash_reader(&mut file, None).map_err(|e| io_err(path, e))?;
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size,
            etag,
            metadata: Default::default(),
        }))
    }

    /// Remove now-empty directories between `path`'s parent and the root (best effort; safe
    /// because writers create directories and rename under the same lock).
    fn prune_empty_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        // Only walk the deepest directory that the prefix pins down.
        let start = match prefix.rsplit_once('/') {
            Some((dir, _)) => {
                if dir.is_empty()
                    || dir.starts_with('/')
                    || dir
                        .split('/')
                        .any(|c| c.is_empty() || c == "." || c == "..")
                {
                    return Err(StoreError::InvalidKey(
                        prefix.into(),
                        "list prefix with an empty, '.' or '..' path component",
                    ));
                }
                self.root.join(dir)
            }
            None => self.root.clone(),
        };
        if !start.is_dir() {
            return Ok(Vec::new());
        }
        let reserved = self.root.join(RESERVED_DIR);
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let walk = walkdir::WalkDir::new(&start)
            .follow_links(true)
            .into_iter()
            .filter_entry(|e| e.path() != reserved);
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.loop_ancestor().is_some() => {
                    tracing::warn!(error = %e, "local store list: skipping a symlink loop");
                    continue;
                }
                Err(e) => {
                    if e.io_error().is_some_and(is_missing) {
                        continue; // deleted while we walked
                    }
                    let at = e.path().unwrap_or(&start).to_path_buf();
                    return Err(io_err(&at, e.into()));
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&self.root) else {
                continue;
            };
            let Some(key) = rel_to_key(rel) else {
                tracing::warn!(path = %entry.path().display(), "local store list: skipping a file whose name is not a valid key");
                continue;
            };
            if key.starts_with(prefix) && validate_key(&key).is_ok() {
                found.push((key, entry.into_path()));
            }
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let metas: Vec<Option<ObjectMeta>> = found
            .into_par_iter()
            .map(|(key, path)| self.head(&key, &path)) // None: deleted since the walk
            .collect::<StoreResult<_>>()?;
        Ok(metas.into_iter().flatten().collect())
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        self.inner.root.display().to_string()
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<GetResult> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let if_none_match = if_none_match.map(normalize_etag);
        self.blocking(move |inner| {
            let Some(mut file) = inner.open_object(&path)? else {
                return Err(StoreError::NotFound(key));
            };
            let mut buf =
                Vec::with_capacity(file.metadata().map(|m| m.len() as usize).unwrap_or(0));
            let (size, etag) =
                hash_reader(&mut file, Some(&mut buf)).map_err(|e| io_err(&path, e))?;
            if if_none_match.as_deref() == Some(etag.as_str()) {
                return Ok(GetResult::NotModified);
            }
            Ok(GetResult::Found(Object {
                bytes: Bytes::from(buf),
                meta: ObjectMeta {
                    key,
                    size,
                    etag,
                    metadata: Default::default(),
                },
            }))
        })
        .await
    }

    async fn get_capped(&self, key: &str, max_bytes: u64) -> StoreResult<Object> {
        let path = self.path_of(key)?;
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(StoreError::NotFound(key.to_string())),
            Err(e) if is_missing(&e) => return Err(StoreError::NotFound(key.to_string())),
            Err(e) => return Err(io_err(&path, e)),
        };
        super::check_cap(key, size, max_bytes)?;
        let object = super::get_object(self, key).await?;
        // It may have grown since the size was read.
        super::check_cap(key, object.bytes.len() as u64, max_bytes)?;
        Ok(object)
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<String> {
        let path = self.path_of(key)?;
        self.blocking(move |inner| {
            let etag = sha256_hex(&body);
            let tmp = inner.write_temp(&body)?;
            let _lock = inner.lock()?;
            inner.install(tmp, &path)?;
            Ok(etag)
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<String> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |inner| {
            let etag = sha256_hex(&body);
            let tmp = inner.write_temp(&body)?;
            let _lock = inner.lock()?;
            if inner.open_object(&path)?.is_some() {
                return Err(StoreError::PreconditionFailed(key));
            }
            inner.install(tmp, &path)?;
            Ok(etag)
        })
        .await
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> StoreResult<String> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let expected = normalize_etag(etag);
        self.blocking(move |inner| {
            let new_etag = sha256_hex(&body);
            let tmp = inner.write_temp(&body)?;
            let _lock = inner.lock()?;
            let Some(mut current) = inner.open_object(&path)? else {
                return Err(StoreError::PreconditionFailed(key));
            };
            let (_, current_etag) =
                hash_reader(&mut current, None).map_err(|e| io_err(&path, e))?;
            if current_etag != expected {
                return Err(StoreError::PreconditionFailed(key));
            }
            drop(current);
            inner.install(tmp, &path)?;
            Ok(new_etag)
        })
        .await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |inner| inner.head(&key, &path)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path_of(key)?;
        self.blocking(move |inner| {
            // Deleting a missing object is a no-op that needs no lock (nor the store's own dir).
            if inner.open_object(&path)?.is_none() {
                return Ok(());
            }
            let _lock = inner.lock()?;
            if inner.open_object(&path)?.is_none() {
                return Ok(());
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if is_missing(&e) => return Ok(()),
                Err(e) => return Err(io_err(&path, e)),
            }
            inner.prune_empty_parents(&path);
            Ok(())
        })
        .await
    }

    async fn download_to(&self, key: &str, dest: &Path) -> StoreResult<ObjectMeta> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let dest = dest.to_path_buf();
        self.blocking(move |inner| {
            let Some(mut src) = inner.open_object(&path)? else {
                return Err(StoreError::NotFound(key));
            };
            let mut out = File::create(&dest).map_err(|e| io_err(&dest, e))?;
            match copy_hashing(&mut src, &mut out) {
                Ok((size, etag)) => Ok(ObjectMeta {
                    key,
                    size,
                    etag,
                    metadata: Default::default(),
                }),
                Err(e) => {
                    drop(out);
                    let _ = fs::remove_file(&dest);
                    Err(io_err(&dest, e))
                }
            }
        })
        .await
    }
}

/// Accept etags as S3 prints them (`"abc"`, `W/"abc"`) as well as bare.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// `a/b/c` relative path -> `"a/b/c"`; `None` for names that are not UTF-8.
fn rel_to_key(rel: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_str()?),
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn io_err(path: &Path, e: io::Error) -> StoreError {
    StoreError::Io(path.display().to_string(), e)
}

fn remove_stale_temp_files(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if is_ours && old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalised() {
        assert_eq!(normalize_etag("\"ABC\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
    }

    #[test]
    fn reserved_dir_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        assert!(matches!(
            store.path_of(".lookalike-store/lock"),
            Err(StoreError::InvalidKey(..))
        ));
        assert!(store.path_of("a/.lookalike-store").is_ok());
    }

    #[test]
    fn rel_paths_become_keys() {
        assert_eq!(
            rel_to_key(Path::new("a/b/c.jpg")).as_deref(),
            Some("a/b/c.jpg")
        );
    }
}
