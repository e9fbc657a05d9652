//! Sample photos for the demo when `../shared/datasets/clothing-small` is not there: the photos
//! that ship inside a PyPI package (scikit-image's `skimage/data`: CC0 / public domain), fetched
//! with `pip download` and extracted into a folder.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model::import::{wheels_with_prefix, FileError};
use crate::model::pip::{pip_download, PipError};

/// The package whose sample photos the demo uses, and the folder inside its wheel.
pub const PACKAGE: &str = "scikit-image";
const DATA_DIR: &str = "skimage/data/";
const EXTENSIONS: &[&str] = &[".png", ".jpg", ".jpeg", ".gif"];
/// Tiny test patterns are not photos; anything this small is skipped.
const MIN_BYTES: u64 = 10_000;

/// Why the sample photos could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// pip could not fetch the package.
    #[error(transparent)]
    Pip(#[from] PipError),
    /// pip ran but left no wheel of the package in the cache.
    #[error("pip did not leave a {PACKAGE} wheel in {}", .0.display())]
    NoWheel(PathBuf),
    /// The wheel could not be read as a zip archive.
    #[error("reading {}: {source}", wheel.display())]
    Wheel {
        /// The wheel.
        wheel: PathBuf,
        /// What the zip reader said.
        #[source]
        source: zip::result::ZipError,
    },
    /// The wheel holds no photos where they should be.
    #[error("{} holds no sample photos under {DATA_DIR}", .0.display())]
    NoPhotos(PathBuf),
}

/// Make sure `dest/<package>/` holds the package's sample photos; returns that folder.
pub fn sample_photos(
    dest: &Path,
    cache_dir: &Path,
    pip: Option<&Path>,
) -> Result<PathBuf, SamplesError> {
    let out = dest.join(PACKAGE);
    if out.is_dir()
        && std::fs::read_dir(&out)
            .map_err(FileError::doing(format!("listing {}", out.display())))?
            .next()
            .is_some()
    {
        return Ok(out);
    }
    let wheel = match find_wheel(cache_dir)? {
        Some(w) => w,
        None => {
            pip_download(PACKAGE, cache_dir, pip)?;
            find_wheel(cache_dir)?.ok_or_else(|| SamplesError::NoWheel(cache_dir.to_path_buf()))?
        }
    };
    let zip_err = |source| SamplesError::Wheel {
        wheel: wheel.clone(),
        source,
    };
    let file = std::fs::File::open(&wheel)
        .map_err(FileError::doing(format!("opening {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(file).map_err(zip_err)?;
    std::fs::create_dir_all(dest)
        .map_err(FileError::doing(format!("creating {}", dest.display())))?;
    let tmp = tempfile::tempdir_in(dest).map_err(FileError::doing(format!(
        "creating a temporary folder in {}",
        dest.display()
    )))?;
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zip_err)?;
        let name = entry.name().to_string();
        let Some(base) = name.strip_prefix(DATA_DIR) else {
            continue;
        };
        let lower = base.to_ascii_lowercase();
        if base.contains('/')
            || !EXTENSIONS.iter().any(|e| lower.ends_with(e))
            || entry.size() < MIN_BYTES
        {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(FileError::doing(format!("extracting {name}")))?;
        let path = tmp.path().join(base);
        std::fs::write(&path, bytes)
            .map_err(FileError::doing(format!("writing {}", path.display())))?;
        n += 1;
    }
    if n == 0 {
        return Err(SamplesError::NoPhotos(wheel));
    }
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .map_err(FileError::doing(format!("removing {}", out.display())))?;
    }
    std::fs::rename(tmp.keep(), &out)
        .map_err(FileError::doing(format!("renaming into {}", out.display())))?;
    Ok(out)
}

/// The last (by name) wheel of the package in `cache_dir`, if any.
fn find_wheel(cache_dir: &Path) -> Result<Option<PathBuf>, FileError> {
    if !cache_dir.is_dir() {
        return Ok(None);
    }
    let prefix = PACKAGE.replace('-', "_") + "-";
    Ok(wheels_with_prefix(cache_dir, &prefix)?.pop())
}
