//! The model card (`model.json`): everything needed to turn an image into the tensor an ONNX
//! encoder expects, and to read the embedding back out of it.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const CARD_FILE: &str = "model.json";
pub const ONNX_FILE: &str = "encoder.onnx";

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// ONNX input name.
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ResizeRule {
    /// Resize the shorter side to `size / crop_fraction` (keeping aspect), then centre-crop `size`.
    ShorterSideCenterCrop { crop_fraction: f32 },
    /// Stretch to the input size, ignoring aspect ratio.
    Stretch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    None,
    Mean,
}

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("cannot read model card {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("invalid model card {0}: {1}")]
    Parse(String, #[source] serde_json::Error),
    #[error("invalid model card {0}: {1}")]
    Invalid(String, String),
}

impl ModelCard {
    pub fn load(dir: &Path) -> Result<Self, CardError> {
        let path = dir.join(CARD_FILE);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| CardError::Io(shown.clone(), e))?;
        let card: ModelCard =
            serde_json::from_str(&text).map_err(|e| CardError::Parse(shown.clone(), e))?;
        card.validate().map_err(|m| CardError::Invalid(shown, m))?;
        Ok(card)
    }

    pub fn save(&self, dir: &Path) -> Result<(), CardError> {
        let path = dir.join(CARD_FILE);
        let text = serde_json::to_string_pretty(self).expect("card serialises");
        std::fs::write(&path, text + "\n").map_err(|e| CardError::Io(path.display().to_string(), e))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("empty id".into());
        }
        if !(8..=4096).contains(&self.input.width) || !(8..=4096).contains(&self.input.height) {
            return Err(format!(
                "input size {}x{} out of range",
                self.input.width, self.input.height
            ));
        }
        if self.dims == 0 || self.dims > 65536 {
            return Err(format!("dims {} out of range", self.dims));
        }
        if self
            .normalize
            .std
            .iter()
            .any(|s| !s.is_finite() || *s == 0.0)
        {
            return Err("normalize.std must be finite and non-zero".into());
        }
        if let ResizeRule::ShorterSideCenterCrop { crop_fraction } = self.resize {
            if !(crop_fraction > 0.0 && crop_fraction <= 1.0) {
                return Err(format!("crop_fraction {crop_fraction} must be in (0, 1]"));
            }
        }
        Ok(())
    }
}
