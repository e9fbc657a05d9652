//! A fine-tuned encoder as one ONNX graph: the base model's graph, cut at its embedding, followed
//! by the trained feature layer with an L2-normalised output (the new embedding) and the
//! category classifier (an extra output that search does not need but `model info` and checks can
//! use). Everything of the base model that the new outputs do not need (its ImageNet classifier)
//! is removed.
//!
//! ```text
//! input -> backbone -> <base embedding> -> Flatten -> LpNormalization -> Gemm(W, b)
//!       -> LpNormalization = features [N, dims] -> MatMul(C) = category_logits [N, classes]
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
}

impl FeatureLayer<'_> {
    pub fn dims(&self) -> usize {
        self.bias.len()
    }
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
    graph.node.extend([
        node("Flatten", &[&base.output], &flat, vec![attr_int("axis", 1)]),
        node("LpNormalization", &[&flat], &unit, l2()),
        node("Gemm", &[&unit, &w, &b], &linear, vec![]),
        node("LpNormalization", &[&linear], FEATURES, l2()),
        node("MatMul", &[FEATURES, &c], CATEGORY_LOGITS, vec![]),
    ]);
    graph.initializer.extend([
        float_tensor(&w, &[base.dims, dims], layer.weights),
        float_tensor(&b, &[dims], layer.bias),
        float_tensor(&c, &[dims, classes], layer.classifier),
    ]);
    graph.output = vec![
        value_info(FEATURES, &[None, Some(dims)]),
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
