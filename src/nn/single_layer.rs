//! One operator of a subnet built on its own with random weights: what the
//! latency lookup table times, layer by layer.

use super::Mode;
use super::OfaBackend;
use super::backend::{self, activate};
use super::subnet::{SubnetBlock, conv, conv_bn_act, conv_forward};
use crate::space::{Activation, Layer};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::Tensor;

/// One operator of a subnet, built on its own with random weights, to time
/// it (the latency lookup table).
#[derive(Debug)]
pub enum LayerModule<B: OfaBackend> {
    Conv(LayerConv<B>),
    Block(SubnetBlock<B>),
    Pool,
    Linear(burn::nn::Linear<B>),
}

/// Conv (+ BN) + activation.
#[derive(Debug)]
pub struct LayerConv<B: OfaBackend> {
    pub conv: Conv2d<B>,
    pub bn: Option<BatchNorm<B>>,
    pub act: Activation,
}

#[allow(clippy::too_many_arguments)]
fn random_conv<B: OfaBackend>(
    init: &mut super::Init,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    device: &B::Device,
) -> Conv2d<B> {
    let w = init.normal([cout, cin / groups, k, k], 0.1, device);
    let b = bias.then(|| Tensor::zeros([cout], device));
    conv(w, b, stride, groups, device)
}

fn fresh_bn<B: OfaBackend>(c: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(c).init(device)
}

impl<B: OfaBackend> LayerModule<B> {
    /// A module running `layer`, and the input shape it takes.
    pub fn new(layer: &Layer, device: &B::Device) -> (Self, [usize; 4]) {
        let mut init = super::Init::new(1);
        match *layer {
            Layer::Conv(c) => (
                LayerModule::Conv(LayerConv {
                    conv: random_conv(
                        &mut init, c.in_ch, c.out_ch, c.kernel, c.stride, 1, false, device,
                    ),
                    bn: c.bn.then(|| fresh_bn(c.out_ch, device)),
                    act: c.act,
                }),
                [1, c.in_ch, c.in_res, c.in_res],
            ),
            Layer::MbConv(b) => {
                let mid = b.mid;
                let mut conv = |cin, cout, k, stride, groups, bias| {
                    random_conv(&mut init, cin, cout, k, stride, groups, bias, device)
                };
                let block = SubnetBlock {
                    inverted_bottleneck: b.expand.then(|| conv(b.in_ch, mid, 1, 1, 1, false)),
                    inverted_bottleneck_bn: b.expand.then(|| fresh_bn(mid, device)),
                    depth_conv: conv(mid, mid, b.kernel, b.stride, mid, false),
                    depth_bn: fresh_bn(mid, device),
                    se_reduce: b.se_mid.map(|s| conv(mid, s, 1, 1, 1, true)),
                    se_expand: b.se_mid.map(|s| conv(s, mid, 1, 1, 1, true)),
                    point_linear: conv(mid, b.out_ch, 1, 1, 1, false),
                    point_linear_bn: fresh_bn(b.out_ch, device),
                    act: b.act,
                    residual: b.residual,
                };
                (LayerModule::Block(block), [1, b.in_ch, b.in_res, b.in_res])
            }
            Layer::Pool { in_res, ch } => (LayerModule::Pool, [1, ch, in_res, in_res]),
            Layer::Linear { in_f, out_f } => (
                LayerModule::Linear(burn::nn::LinearConfig::new(in_f, out_f).init(device)),
                [1, in_f, 1, 1],
            ),
        }
    }

    /// Runs the operator (inference mode) on `x` of the shape [`Self::new`]
    /// returned, with the batch size of `x`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            LayerModule::Conv(c) => match &c.bn {
                // As a subnet runs it.
                Some(bn) => conv_bn_act(&c.conv, bn, x, Some(c.act), Mode::Eval),
                None => activate(conv_forward(&c.conv, x), c.act),
            },
            LayerModule::Block(b) => b.forward(x, Mode::Eval),
            LayerModule::Pool => backend::global_avg_pool(x),
            LayerModule::Linear(l) => {
                let [n, c, _, _] = x.dims();
                let y = l.forward(x.reshape([n, c]));
                let o = y.dims()[1];
                y.reshape([n, o, 1, 1])
            }
        }
    }
}
