//! The encoder: an ONNX image model run with tract, described by its [`ModelCard`].
//!
//! The model is loaded, its input fixed to one image (`[1, 3, H, W]` or `[1, H, W, 3]`), optimised
//! once and turned into a plan shared by all threads; every call runs its own state. Batch 1 is
//! deliberate: with tract a symbolic batch dimension is about 5x slower, and fixed batches larger
//! than one are slower per image than batch 1, so throughput comes from running images in
//! parallel ([`Encoder::encode_many`], one image per core).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use tract_onnx::prelude::*;

use crate::model::card::{CardError, Layout, ModelCard, ModelRef, Pooling, CARD_FILE, ONNX_FILE};
use crate::preprocess::{self, ImageError, Limits};

/// tract's error (an `anyhow::Error`, which is not a `std::error::Error`) boxed so that it can be
/// a source.
pub type TractSource = Box<dyn std::error::Error + Send + Sync>;

/// `e` and its sources on one line, as anyhow's `{:#}` shows tract's error.
fn chain(e: &TractSource) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// The model card or the ONNX file is not there.
    #[error("model file {0} is missing")]
    MissingFile(PathBuf),
    /// The model card could not be read or is invalid.
    #[error(transparent)]
    Card(#[from] CardError),
    /// tract could not load, type or optimise the ONNX model.
    #[error("cannot load ONNX model {path}: {}", chain(source))]
    Load {
        /// The ONNX file.
        path: PathBuf,
        /// tract's error.
        #[source]
        source: TractSource,
    },
    /// The ONNX model has no input of the card's name.
    #[error("ONNX model {path} has no input named {name:?} (inputs: {found:?})")]
    InputMissing {
        /// The ONNX file.
        path: PathBuf,
        /// The card's input name.
        name: String,
        /// The model's inputs.
        found: Vec<String>,
    },
    /// The ONNX model has no output (or node) of a name the card gives.
    #[error("ONNX model {path} has no output named {name:?}")]
    OutputMissing {
        /// The ONNX file.
        path: PathBuf,
        /// The card's output name.
        name: String,
    },
    /// The embedding output's shape does not give the card's dimensions.
    #[error("output {name:?} of {path} gives {found} dims per image (shape {shape}), the model card says {expected}")]
    DimsMismatch {
        /// The ONNX file.
        path: PathBuf,
        /// The embedding output's name.
        name: String,
        /// The card's dimensions.
        expected: usize,
        /// The dimensions per image the output gives (`?` when it cannot be told).
        found: String,
        /// The output's shape.
        shape: String,
    },
    /// A preprocessed tensor of the wrong size.
    #[error("input tensor has {found} values, the model takes {expected}")]
    BadInput {
        /// Values the model takes.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// Logits were asked of a model whose card names none.
    #[error("the model card names no logits output")]
    NoLogits,
    /// Running the model failed.
    #[error("inference failed: {}", chain(.0))]
    Run(#[source] TractSource),
}

/// Why an image could not be encoded: the image's fault (a 4xx) or the model's (a 5xx).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The image could not be decoded or is outside the limits.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] EncoderError),
}

type Plan = Arc<TypedSimplePlan>;

/// A loaded, optimised encoder. Cheap to share: `Arc<Encoder>` across threads, or clone it (the
/// plan is reference-counted).
#[derive(Clone)]
pub struct Encoder {
    card: ModelCard,
    plan: Plan,
    /// Shape of the input tensor, batch axis (1) included.
    input_shape: [usize; 4],
    /// How to read the embedding out of output 0.
    reduce: Reduce,
    /// Logits are output 1 when the card names them.
    has_logits: bool,
    dir: PathBuf,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("model", &self.card.id)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The embedding output's layout, as checked at load time.
#[derive(Debug, Clone, Copy)]
enum Reduce {
    /// Already a vector of `dims` values per image.
    Flat,
    /// Mean over `count` positions; values at `i * stride_pos + c * stride_ch`.
    Mean {
        count: usize,
        stride_pos: usize,
        stride_ch: usize,
    },
}

fn tract_msg(e: impl std::fmt::Display + std::fmt::Debug) -> String {
    // `{:#}` prints anyhow's whole context chain on one line.
    format!("{e:#}")
}

/// A failed run, tract's error kept as the source.
fn run_err(e: TractError) -> EncoderError {
    EncoderError::Run(e.into())
}

fn f32_slice(t: &TValue) -> Result<&[f32], EncoderError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(run_err)
}

impl Encoder {
    /// Loads `dir/encoder.onnx` described by `dir/model.json`.
    pub fn load(dir: &Path) -> Result<Encoder, EncoderError> {
        let card_path = dir.join(CARD_FILE);
        if !card_path.is_file() {
            return Err(EncoderError::MissingFile(card_path));
        }
        let card = ModelCard::load(dir)?;
        Self::load_with_card(&dir.join(ONNX_FILE), card)
    }

    /// Loads an ONNX file with a card given separately.
    pub fn load_with_card(onnx: &Path, card: ModelCard) -> Result<Encoder, EncoderError> {
        let t0 = Instant::now();
        if !onnx.is_file() {
            return Err(EncoderError::MissingFile(onnx.to_path_buf()));
        }
        card.validate()
            .map_err(|m| CardError::Invalid(onnx.display().to_string(), m))?;
        let path = onnx.to_path_buf();
        let load_err = |e: TractError| EncoderError::Load {
            path: path.clone(),
            source: e.into(),
        };

        let mut model = tract_onnx::onnx().model_for_path(onnx).map_err(load_err)?;
        let t_parse = t0.elapsed();

        // The card's input, fixed to one image.
        let inputs: Vec<String> = model
            .input_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let Some(input_ix) = inputs.iter().position(|n| *n == card.input.name) else {
            return Err(EncoderError::InputMissing {
                path,
                name: card.input.name.clone(),
                found: inputs,
            });
        };
        if inputs.len() != 1 {
            // Keep only the image input; anything else would need values we do not have.
            let outlet = model.input_outlets().map_err(load_err)?[input_ix];
            model.set_input_outlets(&[outlet]).map_err(load_err)?;
        }
        let (w, h) = (card.input.width as usize, card.input.height as usize);
        let input_shape = match card.input.layout {
            Layout::Nchw => [1, 3, h, w],
            Layout::Nhwc => [1, h, w, 3],
        };
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), input_shape))
            .map_err(load_err)?;

        // Outputs: the embedding, then the logits if the card names them.
        let mut outputs = vec![card.output.clone()];
        if let Some(l) = &card.logits {
            outputs.push(l.clone());
        }
        for name in &outputs {
            let found = model.find_outlet_label(name).is_some()
                || model.nodes().iter().any(|n| n.name == *name);
            if !found {
                return Err(EncoderError::OutputMissing {
                    path,
                    name: name.clone(),
                });
            }
        }
        model.select_outputs_by_name(&outputs).map_err(load_err)?;

        let mut typed = model.into_typed().map_err(load_err)?;
        typed.declutter().map_err(load_err)?;
        let t_typed = t0.elapsed();
        let typed = channels_last(typed).into_optimized().map_err(load_err)?;
        let t_opt = t0.elapsed();

        // Check the embedding's shape against the card.
        let fact = typed.output_fact(0).map_err(load_err)?;
        let shape: Vec<usize> = fact
            .shape
            .as_concrete()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let dims_err = |found: String| EncoderError::DimsMismatch {
            path: path.clone(),
            name: card.output.clone(),
            expected: card.dims,
            found,
            shape: format!("{:?}", fact.shape),
        };
        if shape.is_empty() || shape[0] != 1 {
            return Err(dims_err("?".into()));
        }
        let reduce = match (card.pooling, shape.len()) {
            (Pooling::None, _) => {
                let per_image: usize = shape[1..].iter().product();
                if per_image != card.dims {
                    return Err(dims_err(per_image.to_string()));
                }
                Reduce::Flat
            }
            (Pooling::Mean, 2) => {
                if shape[1] != card.dims {
                    return Err(dims_err(shape[1].to_string()));
                }
                Reduce::Flat
            }
            // [1, positions, C]
            (Pooling::Mean, 3) => {
                if shape[2] != card.dims {
                    return Err(dims_err(shape[2].to_string()));
                }
                Reduce::Mean {
                    count: shape[1],
                    stride_pos: shape[2],
                    stride_ch: 1,
                }
            }
            // Feature maps, laid out like the input.
            (Pooling::Mean, 4) => {
                let (c, positions, stride_pos, stride_ch) = match card.input.layout {
                    Layout::Nchw => (shape[1], shape[2] * shape[3], 1, shape[2] * shape[3]),
                    Layout::Nhwc => (shape[3], shape[1] * shape[2], shape[3], 1),
                };
                if c != card.dims {
                    return Err(dims_err(c.to_string()));
                }
                Reduce::Mean {
                    count: positions,
                    stride_pos,
                    stride_ch,
                }
            }
            (Pooling::Mean, _) => return Err(dims_err("?".into())),
        };

        let plan = typed.into_runnable().map_err(load_err)?;
        let total = t0.elapsed();
        tracing::info!(
            model = %card.id,
            path = %onnx.display(),
            parse_ms = t_parse.as_secs_f64() * 1e3,
            typed_ms = (t_typed - t_parse).as_secs_f64() * 1e3,
            optimize_ms = (t_opt - t_typed).as_secs_f64() * 1e3,
            total_ms = total.as_secs_f64() * 1e3,
            "encoder loaded"
        );
        Ok(Encoder {
            has_logits: card.logits.is_some(),
            dir: onnx.parent().map(Path::to_path_buf).unwrap_or_default(),
            card,
            plan,
            input_shape,
            reduce,
        })
    }

    /// The model card.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The model's id (from its card).
    pub fn model_id(&self) -> &str {
        &self.card.id
    }

    /// What an index built with this encoder records: the model id and the dims.
    pub fn model_ref(&self) -> ModelRef {
        self.card.model_ref()
    }

    /// Embedding dimensions.
    pub fn dims(&self) -> usize {
        self.card.dims
    }

    /// Number of f32 values of one image's input tensor.
    pub fn input_len(&self) -> usize {
        preprocess::tensor_len(&self.card)
    }

    /// Runs the model on one preprocessed image; returns the raw outputs.
    fn run(&self, tensor: &[f32]) -> Result<TVec<TValue>, EncoderError> {
        if tensor.len() != self.input_len() {
            return Err(EncoderError::BadInput {
                expected: self.input_len(),
                found: tensor.len(),
            });
        }
        let input = Tensor::from_shape(&self.input_shape, tensor).map_err(run_err)?;
        self.plan.run(tvec![input.into()]).map_err(run_err)
    }

    fn embedding_from(&self, out: &TValue) -> Result<Vec<f32>, EncoderError> {
        let view = f32_slice(out)?;
        let dims = self.card.dims;
        let mut v = match self.reduce {
            Reduce::Flat => view
                .get(..dims)
                .ok_or_else(|| EncoderError::Run("short output".into()))?
                .to_vec(),
            Reduce::Mean {
                count,
                stride_pos,
                stride_ch,
            } => {
                let mut acc = vec![0f32; dims];
                for (c, a) in acc.iter_mut().enumerate() {
                    let mut s = 0f32;
                    for p in 0..count {
                        s += view
                            .get(p * stride_pos + c * stride_ch)
                            .copied()
                            .unwrap_or(0.0);
                    }
                    *a = s / count.max(1) as f32;
                }
                acc
            }
        };
        if self.card.l2_normalize {
            l2_normalize(&mut v);
        }
        Ok(v)
    }

    /// The embedding of one preprocessed image (see [`preprocess::preprocess`]), pooled and
    /// L2-normalised as the card says.
    pub fn encode_tensor(&self, tensor: &[f32]) -> Result<Vec<f32>, EncoderError> {
        let out = self.run(tensor)?;
        self.embedding_from(&out[0])
    }

    /// The embedding and, when the card names them, the logits of one preprocessed image.
    pub fn encode_tensor_with_logits(
        &self,
        tensor: &[f32],
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), EncoderError> {
        let out = self.run(tensor)?;
        let emb = self.embedding_from(&out[0])?;
        let logits = if self.has_logits {
            Some(f32_slice(&out[1])?.to_vec())
        } else {
            None
        };
        Ok((emb, logits))
    }

    /// The raw logits (no softmax) of one preprocessed image.
    pub fn logits_tensor(&self, tensor: &[f32]) -> Result<Vec<f32>, EncoderError> {
        if !self.has_logits {
            return Err(EncoderError::NoLogits);
        }
        self.encode_tensor_with_logits(tensor)?
            .1
            .ok_or(EncoderError::NoLogits)
    }

    /// The raw logits (no softmax) of one encoded image.
    pub fn logits(&self, bytes: &[u8], limits: &Limits) -> Result<Vec<f32>, EncodeError> {
        if !self.has_logits {
            return Err(EncoderError::NoLogits.into());
        }
        let tensor = preprocess::preprocess(bytes, &self.card, limits)?;
        Ok(self.logits_tensor(&tensor)?)
    }

    /// The embedding of one encoded image (JPEG, PNG, WebP, GIF, BMP).
    pub fn encode_image(&self, bytes: &[u8], limits: &Limits) -> Result<Vec<f32>, EncodeError> {
        let tensor = preprocess::preprocess(bytes, &self.card, limits)?;
        Ok(self.encode_tensor(&tensor)?)
    }

    /// Embeddings of many encoded images, in order, computed in parallel on rayon's pool (one image
    /// per core at a time). Each image succeeds or fails on its own.
    pub fn encode_many<B: AsRef<[u8]> + Sync>(
        &self,
        images: &[B],
        limits: &Limits,
    ) -> Vec<Result<Vec<f32>, EncodeError>> {
        images
            .par_iter()
            .with_max_len(1)
            .map(|b| self.encode_image(b.as_ref(), limits))
            .collect()
    }
}

/// Runs the convolutions channel-last (tract's `conv_nhwc` transform) when the model is NCHW.
///
/// tract 0.23.9 runs an NCHW depthwise convolution through a per-channel loop (its x86_64 SIMD
/// kernel only covers stride 1); channel-last, the channels are the contiguous inner loop. On
/// EfficientNet-Lite0 this cut the depthwise convolutions from 19 to 7.5 ms and the whole model
/// from 44 to 34 ms per image on one thread (see BENCHMARKS.md), with identical outputs. The
/// layout moves it inserts between convolutions cancel out in the following declutter pass. If
/// the transform fails the model is used as it was.
fn channels_last(model: TypedModel) -> TypedModel {
    let transform = match tract_onnx::tract_core::transform::get_transform("conv_nhwc") {
        Ok(Some(t)) => t,
        _ => return model,
    };
    let mut nhwc = model.clone();
    match transform.transform(&mut nhwc) {
        Ok(()) => nhwc,
        Err(e) => {
            tracing::warn!(error = %tract_msg(e), "conv_nhwc transform failed; running the convolutions as loaded");
            model
        }
    }
}

/// Scales `v` to unit length (leaves an all-zero vector alone).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Encoder>();
    }

    #[test]
    fn l2() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn tract_errors_are_sources_and_show_their_chain() {
        let e = TractError::msg("bad shape").context("running node 3");
        let shown = format!("inference failed: {e:#}");
        let err = run_err(e);
        assert_eq!(err.to_string(), shown);
        let source = std::error::Error::source(&err).expect("a source");
        assert_eq!(source.to_string(), "running node 3");
        assert_eq!(
            source.source().map(|s| s.to_string()).as_deref(),
            Some("bad shape")
        );
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join("lookalike-encoder-missing");
        let err = Encoder::load(&dir).unwrap_err();
        assert!(
            matches!(err, EncoderError::MissingFile(ref p) if p.ends_with(CARD_FILE)),
            "{err}"
        );
    }
}
