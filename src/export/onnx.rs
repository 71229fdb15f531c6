//! ONNX export of an extracted subnet (opset 14), written with the ONNX
//! protobuf messages (tract-onnx's generated types, encoded with prost), and
//! a check that runs the file in tract — a runtime independent of ours.
//!
//! BN is folded into the preceding convolutions; h-swish is `HardSwish`,
//! the SE gate `HardSigmoid(1/6, 1/2)`, relu6 a `Clip(0, 6)`.

use crate::nn::{HostTensor, LayerModule, OfaBackend, Subnet, SubnetBlock};
use crate::space::Activation;
use anyhow::Context;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use prost::Message;
use std::path::Path;
use tract_onnx::pb;

const OPSET: i64 = 14;

struct Graph {
    nodes: Vec<pb::NodeProto>,
    init: Vec<pb::TensorProto>,
    n: usize,
}

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

impl Graph {
    fn fresh(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}_{}", self.n)
    }

    fn constant(&mut self, prefix: &str, t: &HostTensor) -> String {
        let name = self.fresh(prefix);
        self.init.push(pb::TensorProto {
            name: name.clone(),
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(pb::NodeProto {
            name: out.clone(),
            op_type: op.into(),
            input: inputs,
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Conv with optional BN folded in: `w' = w·γ/σ`, `b' = β − μ·γ/σ`.
    fn conv<B: OfaBackend>(
        &mut self,
        x: String,
        c: &Conv2d<B>,
        bn: Option<&BatchNorm<B>>,
    ) -> String {
        let mut w = HostTensor::from_tensor(c.weight.val());
        let out = w.shape[0];
        let mut b = match &c.bias {
            Some(b) => HostTensor::from_tensor(b.val()),
            None => HostTensor {
                shape: vec![out],
                data: vec![0.0; out],
            },
        };
        if let Some(bn) = bn {
            let g = HostTensor::from_tensor(bn.gamma.val()).data;
            let beta = HostTensor::from_tensor(bn.beta.val()).data;
            let mean = HostTensor::from_tensor(bn.running_mean.value_sync()).data;
            let var = HostTensor::from_tensor(bn.running_var.value_sync()).data;
            let per = w.data.len() / out;
            for o in 0..out {
                let s = g[o] / ((var[o] as f64 + bn.epsilon).sqrt() as f32);
                w.data[o * per..(o + 1) * per]
                    .iter_mut()
                    .for_each(|v| *v *= s);
                b.data[o] = beta[o] + (b.data[o] - mean[o]) * s;
            }
        }
        let k = w.shape[2] as i64;
        let p = k / 2;
        let wn = self.constant("w", &w);
        let bname = self.constant("b", &b);
        self.node(
            "Conv",
            vec![x, wn, bname],
            vec![
                attr_ints("kernel_shape", vec![k, k]),
                attr_ints("strides", vec![c.stride[0] as i64, c.stride[1] as i64]),
                attr_ints("pads", vec![p, p, p, p]),
                attr_i("group", c.groups as i64),
            ],
        )
    }

    fn act(&mut self, x: String, act: Activation) -> String {
        match act {
            Activation::Relu => self.node("Relu", vec![x], vec![]),
            Activation::HSwish => self.node("HardSwish", vec![x], vec![]),
            Activation::Relu6 => {
                let lo = self.constant(
                    "min",
                    &HostTensor {
                        shape: vec![],
                        data: vec![0.0],
                    },
                );
                let hi = self.constant(
                    "max",
                    &HostTensor {
                        shape: vec![],
                        data: vec![6.0],
                    },
                );
                self.node("Clip", vec![x, lo, hi], vec![])
            }
        }
    }
}

fn value_info(name: &str, dims: Vec<pb::tensor_shape_proto::Dimension>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dim(v: usize) -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(v as i64)),
        ..Default::default()
    }
}

fn batch_dim() -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        value: Some(pb::tensor_shape_proto::dimension::Value::DimParam(
            "batch".into(),
        )),
        ..Default::default()
    }
}

impl Graph {
    fn new() -> Self {
        Graph {
            nodes: vec![],
            init: vec![],
            n: 0,
        }
    }

    /// An inverted-residual block: expand, depthwise, SE, project, residual.
    fn block<B: OfaBackend>(&mut self, x: String, b: &SubnetBlock<B>) -> String {
        let input = x.clone();
        let mut h = x;
        if let (Some(c), Some(bn)) = (&b.inverted_bottleneck, &b.inverted_bottleneck_bn) {
            h = self.conv(h, c, Some(bn));
            h = self.act(h, b.act);
        }
        h = self.conv(h, &b.depth_conv, Some(&b.depth_bn));
        h = self.act(h, b.act);
        if let (Some(r), Some(e)) = (&b.se_reduce, &b.se_expand) {
            let y = self.node("GlobalAveragePool", vec![h.clone()], vec![]);
            let y = self.conv(y, r, None);
            let y = self.node("Relu", vec![y], vec![]);
            let y = self.conv(y, e, None);
            let y = self.node(
                "HardSigmoid",
                vec![y],
                vec![attr_f("alpha", 1.0 / 6.0), attr_f("beta", 0.5)],
            );
            h = self.node("Mul", vec![h, y], vec![]);
        }
        h = self.conv(h, &b.point_linear, Some(&b.point_linear_bn));
        if b.residual {
            self.node("Add", vec![h, input], vec![])
        } else {
            h
        }
    }

    /// Flatten, then a linear layer (burn's `[in, out]` weight is what Gemm
    /// with `transB = 0` takes).
    fn linear<B: OfaBackend>(&mut self, x: String, l: &burn::nn::Linear<B>) -> String {
        let x = self.node("Flatten", vec![x], vec![attr_i("axis", 1)]);
        let w = HostTensor::from_tensor(l.weight.val());
        let out = w.shape[1];
        let bias = match &l.bias {
            Some(b) => HostTensor::from_tensor(b.val()),
            None => HostTensor {
                shape: vec![out],
                data: vec![0.0; out],
            },
        };
        let w = self.constant("fc_w", &w);
        let b = self.constant("fc_b", &bias);
        self.node("Gemm", vec![x, w, b], vec![])
    }

    /// The model: the last node's output renamed `output_name`.
    fn model(
        mut self,
        name: String,
        input: Vec<pb::tensor_shape_proto::Dimension>,
        output_name: &str,
        output: Option<Vec<pb::tensor_shape_proto::Dimension>>,
    ) -> pb::ModelProto {
        if let Some(last) = self.nodes.last_mut() {
            last.output = vec![output_name.into()];
        }
        let mut out = value_info(output_name, output.clone().unwrap_or_default());
        if output.is_none()
            && let Some(pb::type_proto::Value::TensorType(t)) =
                out.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
        pb::ModelProto {
            ir_version: 8,
            producer_name: "ofa".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            graph: Some(pb::GraphProto {
                name,
                node: self.nodes,
                initializer: self.init,
                input: vec![value_info("input", input)],
                output: vec![out],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The ONNX model of a subnet (input `input` `[batch, C, R, R]`, output
/// `logits` `[batch, classes]`).
pub fn to_onnx<B: OfaBackend>(net: &Subnet<B>) -> pb::ModelProto {
    let mut g = Graph::new();
    let mut x = g.conv("input".into(), &net.first_conv, Some(&net.first_conv_bn));
    x = g.act(x, net.first_conv_act);
    for b in &net.blocks {
        x = g.block(x, b);
    }
    if let (Some(c), Some(bn)) = (&net.pre_pool, &net.pre_pool_bn) {
        x = g.conv(x, c, Some(bn));
        x = g.act(x, net.head_act);
    }
    x = g.node("GlobalAveragePool", vec![x], vec![]);
    if let Some(c) = &net.post_pool {
        x = g.conv(x, c, None);
        x = g.act(x, net.head_act);
    }
    let _ = g.linear(x, &net.classifier);
    let r = net.arch.r;
    g.model(
        format!("ofa-{}", net.space.name),
        vec![batch_dim(), dim(net.space.in_channels), dim(r), dim(r)],
        "logits",
        Some(vec![batch_dim(), dim(net.space.num_classes)]),
    )
}

/// A graph that only copies its `[1, 1, 1, 1]` input: what one call of a
/// runtime costs with no work in it.
pub fn identity_onnx() -> pb::ModelProto {
    let mut g = Graph::new();
    let _ = g.node("Identity", vec!["input".into()], vec![]);
    g.model("ofa-empty".into(), vec![dim(1); 4], "output", None)
}

/// One operator of a latency table (`nn::LayerModule`) as an ONNX model with
/// a fixed input shape (input `input`, output `output`), to time it in
/// another runtime exactly as it runs inside an exported subnet.
pub fn layer_to_onnx<B: OfaBackend>(m: &LayerModule<B>, input: [usize; 4]) -> pb::ModelProto {
    let mut g = Graph::new();
    let x = "input".to_string();
    let _ = match m {
        LayerModule::Conv(c) => {
            let y = g.conv(x, &c.conv, c.bn.as_ref());
            g.act(y, c.act)
        }
        LayerModule::Block(b) => g.block(x, b),
        LayerModule::Pool => g.node("GlobalAveragePool", vec![x], vec![]),
        LayerModule::Linear(l) => g.linear(x, l),
    };
    g.model(
        "ofa-layer".into(),
        input.iter().map(|&d| dim(d)).collect(),
        "output",
        None,
    )
}

/// Writes the ONNX file of a subnet.
pub fn export<B: OfaBackend>(net: &Subnet<B>, path: &Path) -> anyhow::Result<()> {
    crate::util::write_atomic(path, &to_onnx(net).encode_to_vec())
}

/// Runs an ONNX file in tract on `input` (`[N, C, R, R]`) and returns the
/// logits `[N, classes]`.
pub fn run_tract(path: &Path, input: &super::npy::Array) -> anyhow::Result<super::npy::Array> {
    use tract_onnx::prelude::*;
    let shape: Vec<usize> = input.shape.clone();
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .with_context(|| format!("{}: tract cannot read it", path.display()))?
        .with_input_fact(0, f32::fact(&shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let t = Tensor::from_shape(&shape, &input.data)?;
    let out = model.run(tvec!(t.into()))?;
    let view = out[0].to_plain_array_view::<f32>()?;
    Ok(super::npy::Array {
        shape: view.shape().to_vec(),
        data: view.iter().copied().collect(),
    })
}

/// Logits of a subnet and of its ONNX export on the same random batch;
/// returns the largest difference relative to the logit scale.
pub fn check<B: OfaBackend>(
    net: &Subnet<B>,
    path: &Path,
    device: &B::Device,
) -> anyhow::Result<f64> {
    let (c, r) = (net.space.in_channels, net.arch.r);
    let n = 4;
    let input = crate::export::npy::Array {
        shape: vec![n, c, r, r],
        data: (0..n * c * r * r)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect(),
    };
    let x = burn::tensor::Tensor::<B, 4>::from_data(
        burn::tensor::TensorData::new(input.data.clone(), [n, c, r, r]),
        device,
    );
    let ours = net
        .forward(x)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32");
    let theirs = run_tract(path, &input)?;
    if theirs.data.len() != ours.len() {
        anyhow::bail!(
            "{}: tract produced shape {:?}",
            path.display(),
            theirs.shape
        );
    }
    let scale = ours.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&theirs.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    Ok((diff / scale) as f64)
}
