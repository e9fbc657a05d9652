//! A fine-tuned encoder as one ONNX graph: the base model's graph, cut at its embedding, followed
//! by the trained feature layer with an L2-normalised output (the new embedding) and the
//! category classifier (an extra output that search does not need but `model info` and checks can
//! use). Everything of the base model that the new outputs do not need (its ImageNet classifier)
//! is removed.
//!
//! ```text
//! input -> backbone -> <base embedding> -> Flatten -> LpNormalization = unit
//! unit -> Gemm(W, b) -> LpNormalization = features [N, dims] -> MatMul(C) = category_logits
//! ```
//! With a discriminant part (see `train::discriminant`), the feature layer's output is one half
//! of the embedding and the discriminant's the other, each unit-length and weighted so that the
//! whole is unit-length again:
//! ```text
//! unit -> Gemm(W, b) -> LpNormalization = head -> MatMul(C) = category_logits
//! head -> Mul(a) ---------------------------------------+
//! unit -> Gemm(P, c) -> LpNormalization -> Mul(b) ------+-> Concat = features [N, dims + k]
//! ```
//! The first normalisation reproduces what the base card's `l2_normalize` did to the embeddings
//! the layer was trained on. The ops are all in the ONNX default domain since opset 9-13, so the
//! graph keeps the base model's opset.

use std::collections::HashSet;

use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

use super::card::{ModelCard, Pooling};
use super::onnx_export::{attr_int, float_tensor, node, value_info};

/// Name of the fine-tuned model's embedding output.
pub const FEATURES: &str = "features";
/// Name of the fine-tuned model's category-logits output.
pub const CATEGORY_LOGITS: &str = "category_logits";
const PREFIX: &str = "lookalike.head";

/// Why the fine-tuned graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FineTuneError {
    /// The feature layer has no outputs.
    #[error("the feature layer has no outputs")]
    EmptyLayer,
    /// The feature layer's weights do not match the base embedding and its bias.
    #[error("feature layer weights have {found} values, expected {rows} x {cols}")]
    LayerWeights {
        /// Values given.
        found: usize,
        /// Base embedding dimensions.
        rows: usize,
        /// Feature layer dimensions.
        cols: usize,
    },
    /// The classifier does not match the feature layer and the labels.
    #[error("classifier has {found} values, expected {rows} x {cols}")]
    Classifier {
        /// Values given.
        found: usize,
        /// Feature layer dimensions.
        rows: usize,
        /// Categories.
        cols: usize,
    },
    /// The discriminant's weights do not match the base embedding and its bias.
    #[error("discriminant weights have {found} values, expected {rows} x {cols}")]
    DiscriminantWeights {
        /// Values given.
        found: usize,
        /// Base embedding dimensions.
        rows: usize,
        /// Discriminant directions.
        cols: usize,
    },
    /// The discriminant's weight is not a positive number.
    #[error("the discriminant weight must be positive, not {0}")]
    DiscriminantWeight(f32),
    /// The base model's output is not its embedding vector (lookalike pools it).
    #[error("base model {id} pools its output in lookalike ({pooling:?}); fine-tuning needs a model whose output {output:?} is already the embedding vector")]
    PooledBase {
        /// The base model's id.
        id: String,
        /// Its pooling.
        pooling: Pooling,
        /// Its output's name.
        output: String,
    },
    /// The base model is not an ONNX model.
    #[error("the base model is not valid ONNX: {0}")]
    Decode(#[source] prost::DecodeError),
    /// The base ONNX model has no graph.
    #[error("the base ONNX model has no graph")]
    NoGraph,
    /// The base graph lacks the output its card names.
    #[error("the base ONNX graph has no value named {0:?} (the card's output)")]
    NoOutput(String),
    /// The base graph already uses a name the fine-tuned outputs need.
    #[error("the base ONNX graph already has a value named {0:?}")]
    NameTaken(&'static str),
    /// The base model is fine-tuned already.
    #[error("the base ONNX graph already has values named {PREFIX}* (is it fine-tuned already? train from its base)")]
    FineTunedBase,
}

/// The trained layers, as plain row-major matrices.
#[derive(Debug, Clone, Copy)]
pub struct FeatureLayer<'a> {
    /// `input × dims`: features = normalize(normalize(embedding) · weights + bias).
    pub weights: &'a [f32],
    /// `dims`: the feature layer's bias.
    pub bias: &'a [f32],
    /// `dims × classes`: category logits = features · classifier.
    pub classifier: &'a [f32],
    /// The categories, in the classifier's order.
    pub labels: &'a [String],
    /// Discriminant directions exported beside the feature layer, if any.
    pub discriminant: Option<DiscriminantLayer<'a>>,
}

/// Discriminant directions exported beside the feature layer.
#[derive(Debug, Clone, Copy)]
pub struct DiscriminantLayer<'a> {
    /// `input × k`: part = normalize(normalize(embedding) · weights + bias).
    pub weights: &'a [f32],
    /// `k`: the directions' bias.
    pub bias: &'a [f32],
    /// The part's weight relative to the feature layer's (see `train::discriminant::concat`).
    pub weight: f32,
}

impl FeatureLayer<'_> {
    /// The feature layer's dimensions.
    pub fn dims(&self) -> usize {
        self.bias.len()
    }

    /// The embedding's dimensions.
    pub fn embedding_dims(&self) -> usize {
        self.dims() + self.discriminant.map_or(0, |d| d.bias.len())
    }
}

/// The factors the two unit-length parts of an embedding are scaled by so that the
/// discriminant part weighs `weight` times the feature layer's and the whole has unit length.
pub fn part_scales(weight: f32) -> (f32, f32) {
    let norm = (1.0 + weight * weight).sqrt();
    (1.0 / norm, weight / norm)
}

/// The base graph followed by `layer`. `base` is the card that describes `base_onnx`.
pub fn extend(
    base_onnx: &[u8],
    base: &ModelCard,
    layer: &FeatureLayer,
) -> Result<Vec<u8>, FineTuneError> {
    let dims = layer.dims();
    let classes = layer.labels.len();
    if dims == 0 {
        return Err(FineTuneError::EmptyLayer);
    }
    if layer.weights.len() != base.dims * dims {
        return Err(FineTuneError::LayerWeights {
            found: layer.weights.len(),
            rows: base.dims,
            cols: dims,
        });
    }
    if layer.classifier.len() != dims * classes {
        return Err(FineTuneError::Classifier {
            found: layer.classifier.len(),
            rows: dims,
            cols: classes,
        });
    }
    if let Some(d) = &layer.discriminant {
        if d.bias.is_empty() || d.weights.len() != base.dims * d.bias.len() {
            return Err(FineTuneError::DiscriminantWeights {
                found: d.weights.len(),
                rows: base.dims,
                cols: d.bias.len(),
            });
        }
        if !(d.weight.is_finite() && d.weight > 0.0) {
            return Err(FineTuneError::DiscriminantWeight(d.weight));
        }
    }
    if base.pooling != Pooling::None {
        return Err(FineTuneError::PooledBase {
            id: base.id.clone(),
            pooling: base.pooling,
            output: base.output.clone(),
        });
    }
    let mut model = ModelProto::decode(base_onnx).map_err(FineTuneError::Decode)?;
    let graph = model.graph.as_mut().ok_or(FineTuneError::NoGraph)?;
    let produced: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.input.iter().map(|i| i.name.as_str()))
        .collect();
    if !produced.contains(base.output.as_str()) {
        return Err(FineTuneError::NoOutput(base.output.clone()));
    }
    for name in [FEATURES, CATEGORY_LOGITS] {
        if produced.contains(name) {
            return Err(FineTuneError::NameTaken(name));
        }
    }
    if produced.iter().any(|n| n.starts_with(PREFIX)) {
        return Err(FineTuneError::FineTunedBase);
    }

    let v = |s: &str| format!("{PREFIX}/{s}");
    let l2 = || vec![attr_int("axis", 1), attr_int("p", 2)];
    let (flat, unit, w, b, linear, c) = (
        v("flat"),
        v("unit"),
        v("weights"),
        v("bias"),
        v("linear"),
        v("classifier"),
    );
    let head = if layer.discriminant.is_some() {
        v("head")
    } else {
        FEATURES.to_string()
    };
    graph.node.extend([
        node("Flatten", &[&base.output], &flat, vec![attr_int("axis", 1)]),
        node("LpNormalization", &[&flat], &unit, l2()),
        node("Gemm", &[&unit, &w, &b], &linear, vec![]),
        node("LpNormalization", &[&linear], &head, l2()),
        node("MatMul", &[&head, &c], CATEGORY_LOGITS, vec![]),
    ]);
    graph.initializer.extend([
        float_tensor(&w, &[base.dims, dims], layer.weights),
        float_tensor(&b, &[dims], layer.bias),
        float_tensor(&c, &[dims, classes], layer.classifier),
    ]);
    if let Some(d) = &layer.discriminant {
        let k = d.bias.len();
        let (sa, sb) = part_scales(d.weight);
        let [dw, db, dlin, dunit, ha, hs, da, ds] = [
            "discriminant_weights",
            "discriminant_bias",
            "discriminant_linear",
            "discriminant",
            "head_scale",
            "head_scaled",
            "discriminant_scale",
            "discriminant_scaled",
        ]
        .map(v);
        graph.node.extend([
            node("Gemm", &[&unit, &dw, &db], &dlin, vec![]),
            node("LpNormalization", &[&dlin], &dunit, l2()),
            node("Mul", &[&head, &ha], &hs, vec![]),
            node("Mul", &[&dunit, &da], &ds, vec![]),
            node("Concat", &[&hs, &ds], FEATURES, vec![attr_int("axis", 1)]),
        ]);
        graph.initializer.extend([
            float_tensor(&dw, &[base.dims, k], d.weights),
            float_tensor(&db, &[k], d.bias),
            float_tensor(&ha, &[1], &[sa]),
            float_tensor(&da, &[1], &[sb]),
        ]);
    }
    graph.output = vec![
        value_info(FEATURES, &[None, Some(layer.embedding_dims())]),
        value_info(CATEGORY_LOGITS, &[None, Some(classes)]),
    ];
    prune(graph);
    model.metadata_props.push(StringStringEntryProto {
        key: "lookalike.base_model".into(),
        value: base.id.clone(),
    });
    Ok(model.encode_to_vec())
}

/// Removes nodes, initializers and value infos that no graph output depends on (nodes are in
/// topological order, as ONNX requires, so one backward pass finds them all).
fn prune(graph: &mut tract_onnx::pb::GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.into_iter();
    graph.node.retain(|_| k.next().unwrap_or(true));
    graph.initializer.retain(|t| needed.contains(&t.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
}

/// The card of a fine-tuned model: the base card's input handling, the new output and dims, the
/// categories, and the base model appended to the lineage.
pub fn card(
    base: &ModelCard,
    id: String,
    dims: usize,
    labels: &[String],
    source: String,
) -> ModelCard {
    let mut lineage = base.lineage.clone();
    lineage.push(base.id.clone());
    ModelCard {
        id,
        input: base.input.clone(),
        resize: base.resize,
        normalize: base.normalize.clone(),
        output: FEATURES.into(),
        dims,
        pooling: Pooling::None,
        l2_normalize: true,
        logits: Some(CATEGORY_LOGITS.into()),
        source,
        license: base.license.clone(),
        lineage,
        labels: labels.to_vec(),
    }
}
