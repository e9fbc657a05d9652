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

use anyhow::{bail, ensure, Context, Result};
use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

use super::card::{ModelCard, Pooling};
use super::onnx_export::{attr_int, float_tensor, node, value_info};

pub const FEATURES: &str = "features";
pub const CATEGORY_LOGITS: &str = "category_logits";
const PREFIX: &str = "lookalike.head";

/// The trained layers, as plain row-major matrices.
#[derive(Debug, Clone, Copy)]
pub struct FeatureLayer<'a> {
    /// `input × dims`: features = normalize(normalize(embedding) · weights + bias).
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    /// `dims × classes`: category logits = features · classifier.
    pub classifier: &'a [f32],
    pub labels: &'a [String],
    pub discriminant: Option<DiscriminantLayer<'a>>,
}

/// Discriminant directions exported beside the feature layer.
#[derive(Debug, Clone, Copy)]
pub struct DiscriminantLayer<'a> {
    /// `input × k`: part = normalize(normalize(embedding) · weights + bias).
    pub weights: &'a [f32],
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
pub fn extend(base_onnx: &[u8], base: &ModelCard, layer: &FeatureLayer) -> Result<Vec<u8>> {
    let dims = layer.dims();
    let classes = layer.labels.len();
    ensure!(dims > 0, "the feature layer has no outputs");
    ensure!(
        layer.weights.len() == base.dims * dims,
        "feature layer weights have {} values, expected {} x {dims}",
        layer.weights.len(),
        base.dims
    );
    ensure!(
        layer.classifier.len() == dims * classes,
        "classifier has {} values, expected {dims} x {classes}",
        layer.classifier.len()
    );
    if let Some(d) = &layer.discriminant {
        ensure!(
            !d.bias.is_empty() && d.weights.len() == base.dims * d.bias.len(),
            "discriminant weights have {} values, expected {} x {}",
            d.weights.len(),
            base.dims,
            d.bias.len()
        );
        ensure!(
            d.weight.is_finite() && d.weight > 0.0,
            "the discriminant weight must be positive, not {}",
            d.weight
        );
    }
    if base.pooling != Pooling::None {
        bail!(
            "base model {} pools its output in lookalike ({:?}); fine-tuning needs a model whose output {:?} is already the embedding vector",
            base.id,
            base.pooling,
            base.output
        );
    }
    let mut model = ModelProto::decode(base_onnx).context("the base model is not valid ONNX")?;
    let graph = model
        .graph
        .as_mut()
        .context("the base ONNX model has no graph")?;
    let produced: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.input.iter().map(|i| i.name.as_str()))
        .collect();
    ensure!(
        produced.contains(base.output.as_str()),
        "the base ONNX graph has no value named {:?} (the card's output)",
        base.output
    );
    for name in [FEATURES, CATEGORY_LOGITS] {
        ensure!(
            !produced.contains(name),
            "the base ONNX graph already has a value named {name:?}"
        );
    }
    ensure!(
        !produced.iter().any(|n| n.starts_with(PREFIX)),
        "the base ONNX graph already has values named {PREFIX}* (is it fine-tuned already? train from its base)"
    );

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
