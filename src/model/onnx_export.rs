//! Builds an ONNX graph for EfficientNet-Lite from a PyTorch state dict (the naming of the
//! `efficientnet_pytorch` family: `_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`).
//!
//! Lite variants have no squeeze-excitation, use ReLU6 and TF "same" padding. BatchNorm
//! (eps 1e-3) is folded into the convolutions. The block layout (how many blocks per stage, their
//! channels, kernels and expansion) is read from the weight shapes; only the stride of each stage's
//! first block comes from the EfficientNet-B0 table, and the kernel sizes are checked against it.
//!
//! Graph: `input` `[N,3,H,W]` (normalised) -> ... -> `embedding` `[N,C]` (global average pool
//! of the head) and `logits` `[N,classes]` (the `_fc` layer).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

use super::torch::Tensor;

/// Name of the graph's input (`[N, 3, H, W]`, normalised).
pub const INPUT: &str = "input";
/// Name of the embedding output (`[N, C]`, the head pooled).
pub const EMBEDDING: &str = "embedding";
/// Name of the ImageNet logits output (`[N, classes]`).
pub const LOGITS: &str = "logits";
const OPSET: i64 = 13;
const IR_VERSION: i64 = 7;
const BN_EPS: f64 = 1e-3;
/// EfficientNet-B0 stages: stride of the first block and kernel size.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];
const STAGE_KERNELS: [usize; 7] = [3, 3, 5, 3, 5, 5, 3];
const RELU6_MIN: &str = "relu6.min";
const RELU6_MAX: &str = "relu6.max";

/// Why a state dict could not be turned into an EfficientNet-Lite graph.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A tensor the graph needs is not in the checkpoint.
    #[error("checkpoint has no tensor {0}")]
    MissingTensor(String),
    /// A convolution weight that is not 4-d.
    #[error("{name}: expected a 4-d convolution weight, found shape {shape:?}")]
    NotConv {
        /// The weight's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The weights' layout is not the EfficientNet-Lite design (the message says where).
    #[error("{0}")]
    Architecture(String),
    /// A BatchNorm or bias vector of the wrong length.
    #[error("{name} has shape {shape:?}, expected [{expected}]")]
    Shape {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The channels it should have.
        expected: usize,
    },
    /// A BatchNorm whose folded scale is not finite.
    #[error("{bn}: non-finite BatchNorm scale for channel {channel}")]
    NonFiniteScale {
        /// The BatchNorm's name.
        bn: String,
        /// The channel.
        channel: usize,
    },
    /// Tensors the graph does not use: the checkpoint is of another network.
    #[error("checkpoint has tensors this EfficientNet-Lite graph does not use: {0:?}")]
    UnusedTensors(Vec<String>),
}

type Result<T> = std::result::Result<T, ExportError>;

/// Returns an [`ExportError::Architecture`] with the message unless `cond` holds.
macro_rules! ensure_arch {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(ExportError::Architecture(format!($($msg)+)));
        }
    };
}

/// One MBConv block as read from the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Position in the network (`_blocks.<index>.*`).
    pub index: usize,
    /// Stage, from 0.
    pub stage: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Channels after the 1x1 expansion (equal to `in_channels` when there is none).
    pub mid_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    /// Whether the block starts with a 1x1 expansion.
    pub has_expand: bool,
}

impl Block {
    /// Whether the block adds its input to its output (same shape in and out).
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }
}

/// Summary of a network read from a state dict.
#[derive(Debug, Clone)]
pub struct Architecture {
    /// Output channels of the stem convolution.
    pub stem_channels: usize,
    /// The MBConv blocks, in order.
    pub blocks: Vec<Block>,
    /// Output channels of the head convolution: the embedding's dimensions.
    pub head_channels: usize,
    /// Classes of the `_fc` classifier.
    pub classes: usize,
}

impl Architecture {
    /// Number of blocks per stage.
    pub fn repeats(&self) -> Vec<usize> {
        let mut r = vec![0; STAGE_STRIDES.len()];
        for b in &self.blocks {
            r[b.stage] += 1;
        }
        r
    }

    /// Output channels per stage.
    pub fn stage_channels(&self) -> Vec<usize> {
        let mut c = vec![0; STAGE_STRIDES.len()];
        for b in &self.blocks {
            c[b.stage] = b.out_channels;
        }
        c
    }
}

fn get<'a>(w: &'a BTreeMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    w.get(name)
        .ok_or_else(|| ExportError::MissingTensor(name.to_string()))
}

fn conv_shape(w: &BTreeMap<String, Tensor>, name: &str) -> Result<[usize; 4]> {
    let t = get(w, name)?;
    <[usize; 4]>::try_from(t.shape.as_slice()).map_err(|_| ExportError::NotConv {
        name: name.to_string(),
        shape: t.shape.clone(),
    })
}

/// Reads the block layout from the weight shapes and checks it against the EfficientNet-Lite design.
pub fn architecture(w: &BTreeMap<String, Tensor>) -> Result<Architecture> {
    let [stem_channels, stem_in, ..] = conv_shape(w, "_conv_stem.weight")?;
    ensure_arch!(
        stem_in == 3,
        "stem takes {stem_in} channels, expected 3 (RGB)"
    );
    let mut blocks = Vec::new();
    let mut channels = stem_channels;
    let mut stage: Option<usize> = None;
    for index in 0.. {
        let pre = format!("_blocks.{index}.");
        if !w.contains_key(&format!("{pre}_depthwise_conv.weight")) {
            break;
        }
        let has_expand = w.contains_key(&format!("{pre}_expand_conv.weight"));
        let mut mid = channels;
        if has_expand {
            let [o, i, kh, kw] = conv_shape(w, &format!("{pre}_expand_conv.weight"))?;
            ensure_arch!(
                i == channels && kh == 1 && kw == 1,
                "block {index}: expand conv [{o},{i},{kh},{kw}] after {channels} channels"
            );
            mid = o;
        }
        let [dc, dg, k, kw] = conv_shape(w, &format!("{pre}_depthwise_conv.weight"))?;
        ensure_arch!(
            dc == mid && dg == 1 && k == kw,
            "block {index}: depthwise conv [{dc},{dg},{k},{kw}] on {mid} channels"
        );
        let [out, pi, ph, pw] = conv_shape(w, &format!("{pre}_project_conv.weight"))?;
        ensure_arch!(
            pi == mid && ph == 1 && pw == 1,
            "block {index}: project conv [{out},{pi},{ph},{pw}] on {mid} channels"
        );
        ensure_arch!(
            !w.contains_key(&format!("{pre}_se_reduce.weight")),
            "block {index} has squeeze-excitation: this is a full EfficientNet, not EfficientNet-Lite"
        );
        // A stage starts with a block that changes the channel count (each stage widens).
        let first = index == 0 || channels != out;
        let s = match (stage, first) {
            (None, _) => 0,
            (Some(s), true) => s + 1,
            (Some(s), false) => s,
        };
        ensure_arch!(
            s < STAGE_STRIDES.len(),
            "block {index} starts stage {}, expected {} stages",
            s + 1,
            STAGE_STRIDES.len()
        );
        ensure_arch!(
            k == STAGE_KERNELS[s],
            "block {index} (stage {}) has a {k}x{k} kernel, EfficientNet-Lite uses {}",
            s + 1,
            STAGE_KERNELS[s]
        );
        stage = Some(s);
        let stride = if first { STAGE_STRIDES[s] } else { 1 };
        blocks.push(Block {
            index,
            stage: s,
            in_channels: channels,
            mid_channels: mid,
            out_channels: out,
            kernel: k,
            stride,
            has_expand,
        });
        channels = out;
    }
    ensure_arch!(
        stage == Some(STAGE_STRIDES.len() - 1),
        "found {} stages of blocks, EfficientNet-Lite has {}",
        stage.map_or(0, |s| s + 1),
        STAGE_STRIDES.len()
    );
    let [head_channels, hi, hk, hk2] = conv_shape(w, "_conv_head.weight")?;
    ensure_arch!(
        hi == channels && hk == 1 && hk2 == 1,
        "head conv [{head_channels},{hi},{hk},{hk2}] after {channels} channels"
    );
    let fc = get(w, "_fc.weight")?;
    ensure_arch!(
        fc.shape.len() == 2 && fc.shape[1] == head_channels,
        "_fc.weight has shape {:?}",
        fc.shape
    );
    let classes = fc.shape[0];
    ensure_arch!(
        get(w, "_fc.bias")?.shape == [classes],
        "_fc.bias does not match _fc.weight"
    );
    Ok(Architecture {
        stem_channels,
        blocks,
        head_channels,
        classes,
    })
}

/// An ONNX model built from a checkpoint.
pub struct Exported {
    /// The ONNX model.
    pub model: ModelProto,
    /// The network it was built from.
    pub arch: Architecture,
}

impl Exported {
    /// The model as an ONNX file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.encode_to_vec()
    }
}

/// Builds the ONNX model. `input_size` is the square input resolution recorded in the input shape
/// (the graph itself works at any size thanks to SAME_UPPER padding and global pooling).
pub fn export(
    w: &BTreeMap<String, Tensor>,
    input_size: usize,
    name: &str,
    doc: &str,
) -> Result<Exported> {
    let arch = architecture(w)?;
    let mut g = Builder {
        w,
        nodes: Vec::new(),
        inits: Vec::new(),
        used: BTreeSet::new(),
    };
    g.scalar(RELU6_MIN, 0.0);
    g.scalar(RELU6_MAX, 6.0);

    let mut x = g.conv_bn(INPUT, "_conv_stem", "_bn0", 2, 1, true)?;
    for b in &arch.blocks {
        let pre = format!("_blocks.{}.", b.index);
        let input = x.clone();
        if b.has_expand {
            x = g.conv_bn(
                &x,
                &format!("{pre}_expand_conv"),
                &format!("{pre}_bn0"),
                1,
                1,
                true,
            )?;
        }
        x = g.conv_bn(
            &x,
            &format!("{pre}_depthwise_conv"),
            &format!("{pre}_bn1"),
            b.stride,
            b.mid_channels,
            true,
        )?;
        x = g.conv_bn(
            &x,
            &format!("{pre}_project_conv"),
            &format!("{pre}_bn2"),
            1,
            1,
            false,
        )?;
        if b.residual() {
            let out = format!("{pre}add");
            g.node("Add", &[&input, &x], &out, vec![]);
            x = out;
        }
    }
    x = g.conv_bn(&x, "_conv_head", "_bn1", 1, 1, true)?;
    g.node("GlobalAveragePool", &[&x], "pool", vec![]);
    g.node("Flatten", &["pool"], EMBEDDING, vec![attr_int("axis", 1)]);
    g.init(
        "_fc.weight",
        get(w, "_fc.weight")?.shape.clone(),
        get(w, "_fc.weight")?.data.clone(),
    );
    g.init(
        "_fc.bias",
        vec![arch.classes],
        get(w, "_fc.bias")?.data.clone(),
    );
    g.used
        .extend(["_fc.weight".to_string(), "_fc.bias".to_string()]);
    g.node(
        "Gemm",
        &[EMBEDDING, "_fc.weight", "_fc.bias"],
        LOGITS,
        vec![attr_int("transB", 1)],
    );

    let unused: Vec<String> = w
        .keys()
        .filter(|k| !g.used.contains(*k) && !k.ends_with(".num_batches_tracked"))
        .cloned()
        .collect();
    if !unused.is_empty() {
        return Err(ExportError::UnusedTensors(unused));
    }

    let graph = GraphProto {
        name: name.to_string(),
        node: g.nodes,
        initializer: g.inits,
        input: vec![value_info(
            INPUT,
            &[None, Some(3), Some(input_size), Some(input_size)],
        )],
        output: vec![
            value_info(EMBEDDING, &[None, Some(arch.head_channels)]),
            value_info(LOGITS, &[None, Some(arch.classes)]),
        ],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "lookalike".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.to_string(),
        graph: Some(graph),
        metadata_props: vec![StringStringEntryProto {
            key: "source".into(),
            value: doc.to_string(),
        }],
        ..Default::default()
    };
    Ok(Exported { model, arch })
}

struct Builder<'a> {
    w: &'a BTreeMap<String, Tensor>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    used: BTreeSet<String>,
}

impl<'a> Builder<'a> {
    fn init(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.inits.push(float_tensor(name, &shape, &data));
    }

    fn scalar(&mut self, name: &str, v: f32) {
        self.init(name, vec![], vec![v]);
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(node(op, inputs, output, attribute));
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<&'a [f32]> {
        let t = get(self.w, name)?;
        if t.shape != [len] {
            return Err(ExportError::Shape {
                name: name.to_string(),
                shape: t.shape.clone(),
                expected: len,
            });
        }
        self.used.insert(name.to_string());
        Ok(&t.data)
    }

    /// Convolution `conv` followed by BatchNorm `bn` (folded), optionally ReLU6. Returns the output name.
    fn conv_bn(
        &mut self,
        x: &str,
        conv: &str,
        bn: &str,
        stride: usize,
        group: usize,
        relu6: bool,
    ) -> Result<String> {
        let wname = format!("{conv}.weight");
        let weight = get(self.w, &wname)?;
        let [o, _, kh, kw] = conv_shape(self.w, &wname)?;
        self.used.insert(wname);
        let gamma = self.vector(&format!("{bn}.weight"), o)?;
        let beta = self.vector(&format!("{bn}.bias"), o)?;
        let mean = self.vector(&format!("{bn}.running_mean"), o)?;
        let var = self.vector(&format!("{bn}.running_var"), o)?;
        let conv_bias = match self.w.get(&format!("{conv}.bias")) {
            Some(_) => Some(self.vector(&format!("{conv}.bias"), o)?),
            None => None,
        };
        let per_out = weight.data.len() / o;
        let mut folded = Vec::with_capacity(weight.data.len());
        let mut bias = Vec::with_capacity(o);
        for c in 0..o {
            let scale = f64::from(gamma[c]) / (f64::from(var[c]) + BN_EPS).sqrt();
            if !scale.is_finite() {
                return Err(ExportError::NonFiniteScale {
                    bn: bn.to_string(),
                    channel: c,
                });
            }
            folded.extend(
                weight.data[c * per_out..(c + 1) * per_out]
                    .iter()
                    .map(|&v| (f64::from(v) * scale) as f32),
            );
            let b0 = conv_bias.map_or(0.0, |b| f64::from(b[c]));
            bias.push((f64::from(beta[c]) + (b0 - f64::from(mean[c])) * scale) as f32);
        }
        let (wf, bf) = (
            format!("{conv}.weight_folded"),
            format!("{conv}.bias_folded"),
        );
        self.init(&wf, weight.shape.clone(), folded);
        self.init(&bf, vec![o], bias);
        let mut attrs = vec![
            attr_ints("kernel_shape", &[kh, kw]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", group as i64),
        ];
        if kh == 1 && kw == 1 {
            attrs.push(attr_ints("pads", &[0, 0, 0, 0]));
        } else {
            attrs.push(AttributeProto {
                name: "auto_pad".into(),
                r#type: AttributeType::String as i32,
                s: b"SAME_UPPER".to_vec(),
                ..Default::default()
            });
        }
        let out = if relu6 {
            format!("{conv}.conv")
        } else {
            conv.to_string()
        };
        self.node("Conv", &[x, &wf, &bf], &out, attrs);
        if !relu6 {
            return Ok(out);
        }
        self.node("Clip", &[&out, RELU6_MIN, RELU6_MAX], conv, vec![]);
        Ok(conv.to_string())
    }
}

/// A node with one output, named after it.
pub(crate) fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: output.to_string(),
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// A float initializer.
pub(crate) fn float_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An integer attribute.
pub(crate) fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

/// A float tensor value info; `None` dimensions are the symbolic batch size `N`.
pub(crate) fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(*n as i64),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
