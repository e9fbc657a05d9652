//! Frozen-backbone embeddings of training images, and of augmented views of them, cached on disk
//! by the image's content hash so that a second `lookalike train` (other settings, other seed)
//! encodes nothing again.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};

use crate::model::encoder::{EncodeError, Encoder};
use crate::preprocess::{self, Limits};

/// View 0: the image as search preprocesses it. View 1: mirrored. Views 2 and up: a random crop
/// of 40-100% of the area (aspect 3:4 to 4:3), mirrored half of the time. A view is a pure
/// function of the image's content and its number, so cached views stay valid.
pub const PLAIN: u32 = 0;

/// Bumped when the views change meaning (invalidates cached views).
const VIEWS_VERSION: u32 = 1;

/// The augmented view `v` of a decoded image whose content hash is `hash`.
pub fn view(img: &RgbImage, v: u32, hash: &[u8; 32]) -> RgbImage {
    match v {
        PLAIN => img.clone(),
        1 => image::imageops::flip_horizontal(img),
        _ => {
            let mut seed = [0u8; 32];
            seed.copy_from_slice(hash);
            seed[..4]
                .iter_mut()
                .zip(v.to_le_bytes())
                .for_each(|(s, b)| *s ^= b);
            let mut rng = rand::rngs::StdRng::from_seed(seed);
            let (w, h) = img.dimensions();
            let area = rng.random_range(0.4f64..=1.0) * f64::from(w) * f64::from(h);
            let aspect = rng
                .random_range((3f64 / 4.0).ln()..=(4f64 / 3.0).ln())
                .exp();
            let cw = ((area * aspect).sqrt().round() as u32).clamp(1, w);
            let ch = ((area / aspect).sqrt().round() as u32).clamp(1, h);
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            let crop = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
            if rng.random::<bool>() {
                image::imageops::flip_horizontal(&crop)
            } else {
                crop
            }
        }
    }
}

/// Embeddings on disk: `<dir>/<model id>/<sha256 of the image>-v<views version>-<view>.f32`
/// (little-endian values).
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    /// A cache for the embeddings of model `model_id` under `root`.
    pub fn new(root: &Path, model_id: &str) -> std::io::Result<Self> {
        let safe: String = model_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = root.join(safe);
        std::fs::create_dir_all(&dir)?;
        Ok(FeatureCache { dir })
    }

    fn path(&self, hash: &[u8; 32], v: u32) -> PathBuf {
        self.dir
            .join(format!("{}-v{VIEWS_VERSION}-{v}.f32", hex::encode(hash)))
    }

    /// The cached embedding of view `v` of the image hashed `hash`, if one of `dims` values is
    /// there.
    pub fn get(&self, hash: &[u8; 32], v: u32, dims: usize) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(hash, v)).ok()?;
        (bytes.len() == dims * 4).then(|| {
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }

    /// Stores an embedding (written to a temporary name, then renamed: never half a file).
    pub fn put(&self, hash: &[u8; 32], v: u32, values: &[f32]) -> std::io::Result<()> {
        let path = self.path(hash, v);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }
}

/// The backbone embeddings of views `0..views` of one image, and how many were computed (not
/// found in the cache).
pub fn embed_views(
    encoder: &Encoder,
    bytes: &[u8],
    views: u32,
    limits: &Limits,
    cache: Option<&FeatureCache>,
) -> Result<(Vec<Vec<f32>>, usize), EncodeError> {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let dims = encoder.dims();
    let mut out = Vec::with_capacity(views as usize);
    let mut decoded: Option<RgbImage> = None;
    let mut computed = 0;
    for v in 0..views.max(1) {
        if let Some(hit) = cache.and_then(|c| c.get(&hash, v, dims)) {
            out.push(hit);
            continue;
        }
        if decoded.is_none() {
            let card = encoder.card();
            decoded = Some(preprocess::decode_scaled(
                bytes,
                limits,
                Some(preprocess::needed_size(card)),
            )?);
        }
        let img = decoded.as_ref().expect("decoded above");
        let tensor = preprocess::to_tensor(&view(img, v, &hash), encoder.card())?;
        let embedding = encoder.encode_tensor(&tensor)?;
        if let Some(c) = cache {
            if let Err(e) = c.put(&hash, v, &embedding) {
                tracing::warn!(error = %e, "cannot cache an embedding");
            }
        }
        computed += 1;
        out.push(embedding);
    }
    Ok((out, computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        })
    }

    #[test]
    fn views_are_deterministic_and_within_the_image() {
        let img = gradient(120, 90);
        let hash = [3u8; 32];
        assert_eq!(view(&img, PLAIN, &hash), img);
        let flipped = view(&img, 1, &hash);
        assert_eq!(flipped.get_pixel(0, 5), img.get_pixel(119, 5));
        for v in 2..10 {
            let a = view(&img, v, &hash);
            assert_eq!(a, view(&img, v, &hash), "view {v} is not deterministic");
            let (w, h) = a.dimensions();
            assert!(
                w <= 120 && h <= 90 && w * h >= 120 * 90 * 3 / 10,
                "view {v}: {w}x{h}"
            );
        }
        assert_ne!(view(&img, 2, &hash), view(&img, 3, &hash));
        assert_ne!(view(&img, 2, &hash), view(&img, 2, &[4u8; 32]));
    }

    #[test]
    fn cache_round_trips_and_ignores_wrong_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path(), "model/with odd:chars").unwrap();
        let hash = [9u8; 32];
        assert_eq!(cache.get(&hash, 0, 3), None);
        cache.put(&hash, 0, &[1.0, -2.5, 3.25]).unwrap();
        assert_eq!(cache.get(&hash, 0, 3), Some(vec![1.0, -2.5, 3.25]));
        assert_eq!(cache.get(&hash, 0, 4), None);
        assert_eq!(cache.get(&hash, 1, 3), None);
    }
}
