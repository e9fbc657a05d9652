//! [`TrainOptions`]: everything `train` can be told besides where the images, the base model and
//! the output are, with its defaults and the checks made before any image is read.

use std::path::{Path, PathBuf};

use crate::preprocess::Limits;

use super::discriminant;
use super::error::TrainError;
use super::head::HeadConfig;

/// Everything `train` can be told besides where the images, the base model and the output are.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The feature layer, the classifier and their training loop.
    pub head: HeadConfig,
    /// Fraction of each category (after the test part) used for early stopping.
    pub val_split: f64,
    /// Fraction of each category held out entirely, to measure the result on unseen images.
    pub test_split: f64,
    /// Seed of the split (the head's initialisation and shuffling use `head.seed`).
    pub seed: u64,
    /// Views of each training image: 1 is the image alone; 2 adds its mirror image; more add
    /// random crops (see [`super::features::view`]).
    pub views: u32,
    /// Limits on the images decoded.
    pub limits: Limits,
    /// Where backbone embeddings are cached (none: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Name part of the new model id (default: the image folder's name).
    pub name: Option<String>,
    /// Weight of the discriminant directions next to the trained feature layer in the embedding
    /// (0: the feature layer alone). They take (categories - 1) of `head.dims`.
    pub discriminant_weight: f32,
    /// Shrinkage of the discriminant's within-category covariance.
    pub shrinkage: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            head: HeadConfig::default(),
            val_split: 0.2,
            test_split: 0.0,
            seed: 42,
            views: 4,
            limits: Limits::default(),
            cache_dir: None,
            name: None,
            discriminant_weight: 1.5,
            shrinkage: discriminant::DEFAULT_SHRINKAGE,
        }
    }
}

impl TrainOptions {
    /// Views per training image (at least 1).
    pub(super) fn views(&self) -> u32 {
        self.views.max(1)
    }

    /// The checks that need only the options: the output is not the base model's folder and
    /// the discriminant weight is 0 or more.
    pub(super) fn check(&self, base_dir: &Path, out: &Path) -> Result<(), TrainError> {
        if same_dir(base_dir, out) {
            return Err(TrainError::OutIsBase(out.to_path_buf()));
        }
        if !(self.discriminant_weight.is_finite() && self.discriminant_weight >= 0.0) {
            return Err(TrainError::BadDiscriminantWeight(self.discriminant_weight));
        }
        Ok(())
    }

    /// The check that needs the number of categories: the discriminant directions (at most
    /// `classes - 1`) leave the feature layer at least one of the dimensions.
    pub(super) fn check_dims(&self, classes: usize) -> Result<(), TrainError> {
        if self.discriminant_weight > 0.0 && self.head.dims < classes {
            return Err(TrainError::NoRoomForFeatureLayer {
                dims: self.head.dims,
                directions: classes - 1,
                categories: classes,
            });
        }
        Ok(())
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
