//! Models: the model card, the encoder that runs an ONNX model, the import of the default
//! EfficientNet-Lite weights (the torch checkpoint reader and the ONNX export) and the graph of a
//! fine-tuned model.

pub mod card;
pub mod encoder;
pub mod fine_tuned;
pub mod import;
pub mod onnx_export;
pub mod pip;
pub mod torch;

pub use card::{Layout, ModelCard, ModelRef, Normalize, Pooling, ResizeRule, CARD_FILE, ONNX_FILE};
