//! The model card (`model.json`): everything needed to turn an image into the tensor an ONNX
//! encoder expects, and to read the embedding back out of it.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::preprocess::{InputSpec, Layout, Normalize, ResizeRule, TensorSpec};

/// The model card's file name in a model folder.
pub const CARD_FILE: &str = "model.json";
/// The ONNX graph's file name in a model folder.
pub const ONNX_FILE: &str = "encoder.onnx";

/// What an index records of the model that built it: vectors from another model are not comparable,
/// so an index refuses a model whose id or dimensions differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The model card's id.
    pub id: String,
    /// Embedding dimensions.
    pub dims: usize,
}

/// A model folder's `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Stable identifier recorded in every index built with this model, e.g.
    /// `efficientnet-lite0-imagenet-57934424`. Indexes refuse a model with another id.
    pub id: String,
    /// Input tensor geometry.
    pub input: InputSpec,
    /// How an arbitrary image is brought to `input.width` x `input.height`.
    pub resize: ResizeRule,
    /// Per-channel normalisation applied to 0..=255 pixel values: `(x - mean) / std`.
    pub normalize: Normalize,
    /// Name of the ONNX output holding the embedding.
    pub output: String,
    /// Embedding dimensions.
    pub dims: usize,
    /// Pooling applied to the output if it is not already a vector (`none` or `mean` over spatial axes).
    #[serde(default)]
    pub pooling: Pooling,
    /// L2-normalise embeddings (always true for cosine search).
    #[serde(default = "yes")]
    pub l2_normalize: bool,
    /// Optional: name of a logits output (classification head), used by checks and `model classify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<String>,
    /// Where the weights came from.
    #[serde(default)]
    pub source: String,
    /// The weights' license.
    #[serde(default)]
    pub license: String,
    /// Ids of the models this one was derived from (fine-tuning), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<String>,
    /// Names of the classes of the logits output, in order (a fine-tuned model's categories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

fn yes() -> bool {
    true
}

/// How a spatial output becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The output is the vector already.
    #[default]
    None,
    /// Mean over the spatial axes.
    Mean,
}

/// A model card that cannot be read, parsed or used.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The file cannot be read or written.
    #[error("cannot read model card {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The file is not a model card.
    #[error("invalid model card {0}: {1}")]
    Parse(String, #[source] serde_json::Error),
    /// The card's values are unusable.
    #[error("invalid model card {0}: {1}")]
    Invalid(String, #[source] InvalidCard),
}

/// What makes a model card unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidCard {
    /// The id is empty.
    #[error("empty id")]
    EmptyId,
    /// A side of the input is outside 8..=4096 pixels.
    #[error("input size {width}x{height} out of range")]
    InputSize {
        /// Input width.
        width: u32,
        /// Input height.
        height: u32,
    },
    /// The embedding size is 0 or over 65536.
    #[error("dims {0} out of range")]
    Dims(usize),
    /// A normalisation divisor is 0 or not finite.
    #[error("normalize.std must be finite and non-zero")]
    Std,
    /// The centre crop's fraction is outside (0, 1].
    #[error("crop_fraction {0} must be in (0, 1]")]
    CropFraction(f32),
}

impl TensorSpec for ModelCard {
    fn input(&self) -> &InputSpec {
        &self.input
    }
    fn resize(&self) -> ResizeRule {
        self.resize
    }
    fn normalize(&self) -> &Normalize {
        &self.normalize
    }
}

impl ModelCard {
    /// What an index built with this model records: its id and dimensions.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            id: self.id.clone(),
            dims: self.dims,
        }
    }

    /// Reads and checks `dir/model.json`.
    pub fn load(dir: &Path) -> Result<Self, CardError> {
        let path = dir.join(CARD_FILE);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| CardError::Io(shown.clone(), e))?;
        let card: ModelCard =
            serde_json::from_str(&text).map_err(|e| CardError::Parse(shown.clone(), e))?;
        card.validate().map_err(|m| CardError::Invalid(shown, m))?;
        Ok(card)
    }

    /// Writes `dir/model.json`.
    pub fn save(&self, dir: &Path) -> Result<(), CardError> {
        let path = dir.join(CARD_FILE);
        let text = serde_json::to_string_pretty(self).expect("card serialises");
        std::fs::write(&path, text + "\n").map_err(|e| CardError::Io(path.display().to_string(), e))
    }

    /// Checks that the values can be used.
    pub fn validate(&self) -> Result<(), InvalidCard> {
        if self.id.trim().is_empty() {
            return Err(InvalidCard::EmptyId);
        }
        if !(8..=4096).contains(&self.input.width) || !(8..=4096).contains(&self.input.height) {
            return Err(InvalidCard::InputSize {
                width: self.input.width,
                height: self.input.height,
            });
        }
        if self.dims == 0 || self.dims > 65536 {
            return Err(InvalidCard::Dims(self.dims));
        }
        if self
            .normalize
            .std
            .iter()
            .any(|s| !s.is_finite() || *s == 0.0)
        {
            return Err(InvalidCard::Std);
        }
        if let ResizeRule::ShorterSideCenterCrop { crop_fraction } = self.resize {
            if !(crop_fraction > 0.0 && crop_fraction <= 1.0) {
                return Err(InvalidCard::CropFraction(crop_fraction));
            }
        }
        Ok(())
    }
}
