//! One operator of a subnet built on its own with random weights: what the
//! latency lookup table times, layer by layer.

use super::Mode;
use super::OfaBackend;
use super::backend::{self, activate};
use super::subnet::{SubnetBlock, bn_forward, conv, conv_forward};
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
            Layer::Conv {
                in_res,
                in_ch,
                out_ch,
                kernel,
                stride,
                bn,
                act,
            } => (
                LayerModule::Conv(LayerConv {
                    conv: random_conv(&mut init, in_ch, out_ch, kernel, stride, 1, false, device),
                    bn: bn.then(|| fresh_bn(out_ch, device)),
                    act,
                }),
                [1, in_ch, in_res, in_res],
            ),
            Layer::MbConv {
                in_res,
                in_ch,
                out_ch,
                mid,
                expand,
                kernel,
                stride,
                se_mid,
                act,
                residual,
            } => {
                let block = SubnetBlock {
                    inverted_bottleneck: expand
                        .then(|| random_conv(&mut init, in_ch, mid, 1, 1, 1, false, device)),
                    inverted_bottleneck_bn: expand.then(|| fresh_bn(mid, device)),
                    depth_conv: random_conv(
                        &mut init, mid, mid, kernel, stride, mid, false, device,
                    ),
                    depth_bn: fresh_bn(mid, device),
                    se_reduce: se_mid
                        .map(|s| random_conv(&mut init, mid, s, 1, 1, 1, true, device)),
                    se_expand: se_mid
                        .map(|s| random_conv(&mut init, s, mid, 1, 1, 1, true, device)),
                    point_linear: random_conv(&mut init, mid, out_ch, 1, 1, 1, false, device),
                    point_linear_bn: fresh_bn(out_ch, device),
                    act,
                    residual,
                };
                (LayerModule::Block(block), [1, in_ch, in_res, in_res])
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
            LayerModule::Conv(c) => {
                let y = conv_forward(&c.conv, x);
                let y = match &c.bn {
                    Some(bn) => bn_forward(bn, y, Mode::Eval),
                    None => y,
                };
                activate(y, c.act)
            }
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
