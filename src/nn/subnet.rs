//! Extraction: a subnet as a standalone static network of ordinary burn
//! layers (Conv2d, BatchNorm, Linear) with weights copied out of the
//! supernet — kernel transforms applied, channels sliced, BN statistics
//! copied — so that its output equals the supernet's for that arch.

use super::OfaBackend;
use super::layers::{BnRef, ElasticBn, ElasticConv, activate, dropout, h_sigmoid};
use super::supernet::{ConvBnAct, MbConv, Supernet};
use super::{Mode, backend};
use crate::space::{Activation, Arch, Space};
use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

/// One static inverted-residual block.
#[derive(Module, Debug)]
pub struct SubnetBlock<B: OfaBackend> {
    pub inverted_bottleneck: Option<Conv2d<B>>,
    pub inverted_bottleneck_bn: Option<BatchNorm<B>>,
    pub depth_conv: Conv2d<B>,
    pub depth_bn: BatchNorm<B>,
    pub se_reduce: Option<Conv2d<B>>,
    pub se_expand: Option<Conv2d<B>>,
    pub point_linear: Conv2d<B>,
    pub point_linear_bn: BatchNorm<B>,
    pub act: Activation,
    pub residual: bool,
}

/// A static subnet: the output of [`extract`].
#[derive(Module, Debug)]
pub struct Subnet<B: OfaBackend> {
    pub first_conv: Conv2d<B>,
    pub first_conv_bn: BatchNorm<B>,
    pub first_conv_act: Activation,
    /// The fixed first block, then the active elastic blocks.
    pub blocks: Vec<SubnetBlock<B>>,
    pub pre_pool: Option<Conv2d<B>>,
    pub pre_pool_bn: Option<BatchNorm<B>>,
    pub post_pool: Option<Conv2d<B>>,
    pub head_act: Activation,
    pub classifier: burn::nn::Linear<B>,
    pub dropout: f64,
    pub space: Space,
    pub arch: Arch,
}

pub(super) fn conv<B: OfaBackend>(
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    groups: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let [out, inp_g, k, _] = weight.dims();
    let mut c = Conv2dConfig::new([inp_g * groups, out], [k, k])
        .with_stride([stride; 2])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_groups(groups)
        .with_bias(bias.is_some())
        .init(device);
    c.weight = Param::from_tensor(owned(weight, device));
    c.bias = bias.map(|b| Param::from_tensor(owned(b, device)));
    c
}

/// A copy of `t` in its own contiguous buffer. Extraction slices the
/// supernet's tensors; kept as views, every forward pass would copy each
/// weight to a contiguous buffer again (the CPU kernels read contiguous
/// memory), and the subnet would keep the whole supernet's buffers alive.
fn owned<B: OfaBackend, const D: usize>(t: Tensor<B, D>, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(t.detach().into_data(), device)
}

fn bn<B: OfaBackend>(src: &ElasticBn<B>, channels: usize, device: &B::Device) -> BatchNorm<B> {
    let first = |t: Tensor<B, 1>| owned(t.slice([0..channels]), device);
    let mut b = BatchNormConfig::new(channels)
        .with_epsilon(src.eps)
        .with_momentum(src.momentum)
        .init(device);
    b.gamma = Param::from_tensor(first(src.gamma.val()));
    b.beta = Param::from_tensor(first(src.beta.val()));
    b.running_mean = RunningState::new(first(src.running_mean.value_sync()));
    b.running_var = RunningState::new(first(src.running_var.value_sync()));
    b
}

fn pointwise<B: OfaBackend>(
    src: &ElasticConv<B>,
    out: usize,
    inp: usize,
    device: &B::Device,
) -> Conv2d<B> {
    conv(
        src.active_weight(out, inp),
        src.active_bias(out),
        src.stride,
        1,
        device,
    )
}

fn block<B: OfaBackend>(
    src: &MbConv<B>,
    in_ch: usize,
    k: usize,
    mid: usize,
    device: &B::Device,
) -> SubnetBlock<B> {
    let (inverted_bottleneck, inverted_bottleneck_bn) = match &src.inverted_bottleneck {
        Some(ib) => (
            Some(pointwise(&ib.conv, mid, in_ch, device)),
            Some(bn(&ib.bn, mid, device)),
        ),
        None => (None, None),
    };
    let filter = src.depth_conv.active_filter(mid, k);
    let (se_reduce, se_expand) = match &src.se {
        Some(se) => {
            let s = se.hidden(mid);
            let w = |t: Tensor<B, 4>, a: usize, b: usize| t.slice([0..a, 0..b, 0..1, 0..1]);
            let reduce = conv(
                w(se.reduce_weight.val(), s, mid),
                Some(se.reduce_bias.val().slice([0..s])),
                1,
                1,
                device,
            );
            let expand = conv(
                w(se.expand_weight.val(), mid, s),
                Some(se.expand_bias.val().slice([0..mid])),
                1,
                1,
                device,
            );
            (Some(reduce), Some(expand))
        }
        None => (None, None),
    };
    SubnetBlock {
        inverted_bottleneck,
        inverted_bottleneck_bn,
        depth_conv: conv(filter, None, src.depth_conv.stride, mid, device),
        depth_bn: bn(&src.depth_bn, mid, device),
        se_reduce,
        se_expand,
        point_linear: pointwise(&src.point_linear.conv, src.out_ch, mid, device),
        point_linear_bn: bn(&src.point_linear.bn, src.out_ch, device),
        act: src.act,
        residual: src.residual,
    }
}

fn head<B: OfaBackend>(l: &ConvBnAct<B>, device: &B::Device) -> (Conv2d<B>, Option<BatchNorm<B>>) {
    let [out, inp, _, _] = l.conv.weight.dims();
    (
        pointwise(&l.conv, out, inp, device),
        l.bn.as_ref().map(|b| bn(b, out, device)),
    )
}

/// Builds the static subnet of `arch` (which must be valid for the space).
pub fn extract<B: OfaBackend>(net: &Supernet<B>, arch: &Arch) -> Subnet<B> {
    let device = &net.classifier.weight.device();
    let s = &net.space;
    let first_w = net.first_conv.out_channels();
    let (first_conv, first_conv_bn) = head(&net.first_conv, device);
    let mut blocks = vec![block(
        &net.first_block,
        first_w,
        s.first_block.kernel,
        first_w,
        device,
    )];
    for (b, src) in net.layout.iter().zip(&net.blocks) {
        if arch.is_active(b) {
            let mid = s.middle_width(b.in_ch, arch.e[b.index]);
            blocks.push(block(src, b.in_ch, arch.ks[b.index], mid, device));
        }
    }
    let (pre_pool, pre_pool_bn) = match &net.pre_pool {
        Some(l) => {
            let (c, b) = head(l, device);
            (Some(c), b)
        }
        None => (None, None),
    };
    let post_pool = net.post_pool.as_ref().map(|l| head(l, device).0);
    let [classes, in_f] = net.classifier.weight.dims();
    let mut classifier = burn::nn::LinearConfig::new(in_f, classes).init(device);
    classifier.weight = Param::from_tensor(owned(net.classifier.weight.val().transpose(), device));
    classifier.bias = Some(Param::from_tensor(owned(net.classifier.bias.val(), device)));
    Subnet {
        first_conv,
        first_conv_bn: first_conv_bn.expect("the first conv has BN"),
        first_conv_act: s.first_conv.act,
        blocks,
        pre_pool,
        pre_pool_bn,
        post_pool,
        head_act: s.head.act,
        classifier,
        dropout: s.dropout,
        space: s.clone(),
        arch: arch.clone(),
    }
}

impl<B: OfaBackend> Subnet<B> {
    /// The static network of `arch`, freshly initialised the way the
    /// reference initialises a static network (`init_models(net,
    /// "he_fout")` in OFA's `utils/my_modules.py`): every convolution
    /// N(0, 2 / (k·k·out)) for its own shape, biases 0, BN weight 1 and
    /// bias 0, the classifier U(±1/√in). It has no kernel transformation
    /// matrices: a k×k kernel is a k×k tensor.
    pub fn init(space: &Space, arch: &Arch, seed: u64, device: &B::Device) -> Self {
        let skeleton = super::SupernetConfig::new(space.clone()).init::<B>(device);
        let mut net = extract(&skeleton, arch);
        let mut init = super::Init::new(seed);
        let mut fresh_conv = |c: &mut Conv2d<B>| {
            let [out, inp, k, kw] = c.weight.dims();
            let std = (2.0 / (k * kw * out) as f64).sqrt();
            c.weight = Param::from_tensor(init.normal([out, inp, k, kw], std, device));
            if let Some(b) = &c.bias {
                c.bias = Some(Param::from_tensor(Tensor::zeros(b.dims(), device)));
            }
        };
        let fresh_bn = |b: &mut BatchNorm<B>| {
            let c = b.gamma.dims()[0];
            b.gamma = Param::from_tensor(Tensor::ones([c], device));
            b.beta = Param::from_tensor(Tensor::zeros([c], device));
            b.running_mean = RunningState::new(Tensor::zeros([c], device));
            b.running_var = RunningState::new(Tensor::ones([c], device));
        };
        fresh_conv(&mut net.first_conv);
        fresh_bn(&mut net.first_conv_bn);
        for b in &mut net.blocks {
            for c in [
                &mut b.inverted_bottleneck,
                &mut b.se_reduce,
                &mut b.se_expand,
            ]
            .into_iter()
            .flatten()
            {
                fresh_conv(c);
            }
            fresh_conv(&mut b.depth_conv);
            fresh_conv(&mut b.point_linear);
            for n in [&mut b.inverted_bottleneck_bn].into_iter().flatten() {
                fresh_bn(n);
            }
            fresh_bn(&mut b.depth_bn);
            fresh_bn(&mut b.point_linear_bn);
        }
        for c in [&mut net.pre_pool, &mut net.post_pool]
            .into_iter()
            .flatten()
        {
            fresh_conv(c);
        }
        if let Some(n) = &mut net.pre_pool_bn {
            fresh_bn(n);
        }
        // burn's Linear stores [in, out].
        let [inp, out] = net.classifier.weight.dims();
        let bound = 1.0 / (inp as f64).sqrt();
        net.classifier.weight = Param::from_tensor(init.uniform([inp, out], bound, device));
        net.classifier.bias = Some(Param::from_tensor(Tensor::zeros([out], device)));
        net
    }
}

/// A burn `Conv2d` run with the fused kernels where they apply.
pub(super) fn conv_forward<B: OfaBackend>(c: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [out, in_g, k, _] = c.weight.dims();
    let cin = x.dims()[1];
    if c.groups == cin && in_g == 1 && out == cin && c.bias.is_none() {
        return backend::depthwise(x, c.weight.val(), c.stride[0]);
    }
    if k == 1 && c.stride == [1, 1] && c.groups == 1 && c.bias.is_none() {
        return backend::pointwise(x, c.weight.val());
    }
    c.forward(x)
}

/// A burn `BatchNorm` with an explicit mode (burn's own picks its mode from
/// the backend), through the same code as the supernet's BN.
pub(super) fn bn_forward<B: OfaBackend>(
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    mode: Mode<'_, B>,
) -> Tensor<B, 4> {
    bn_ref(bn).forward(x, mode)
}

/// Inference BN of `bn` as a per-channel affine (first `c` channels).
pub(super) fn bn_affine<B: OfaBackend>(
    bn: &BatchNorm<B>,
    c: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    bn_ref(bn).eval_affine(c)
}

fn bn_ref<B: OfaBackend>(bn: &BatchNorm<B>) -> BnRef<'_, B> {
    BnRef {
        gamma: &bn.gamma,
        beta: &bn.beta,
        running_mean: &bn.running_mean,
        running_var: &bn.running_var,
        momentum: bn.momentum,
        eps: bn.epsilon,
    }
}

/// Convolution, BN, then `act` (none for a linear projection). With stored
/// statistics (`Eval`, inference) and a depthwise or pointwise convolution,
/// one fused operation that applies BN and the activation as the
/// convolution's output is written; otherwise the three in turn.
pub(super) fn conv_bn_act<B: OfaBackend>(
    c: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    act: Option<Activation>,
    mode: Mode<'_, B>,
) -> Tensor<B, 4> {
    if matches!(mode, Mode::Eval) {
        let [out, in_g, k, _] = c.weight.dims();
        let cin = x.dims()[1];
        if c.groups == cin && in_g == 1 && out == cin && c.bias.is_none() {
            let (scale, shift) = bn_ref(bn).eval_affine(out);
            return backend::depthwise_affine(x, c.weight.val(), c.stride[0], scale, shift, act);
        }
        if k == 1 && c.stride == [1, 1] && c.groups == 1 && c.bias.is_none() {
            let (scale, shift) = bn_ref(bn).eval_affine(out);
            return backend::pointwise_affine(x, c.weight.val(), scale, shift, act);
        }
    }
    let y = bn_forward(bn, conv_forward(c, x), mode);
    backend::activate_opt(y, act)
}

impl<B: OfaBackend> SubnetBlock<B> {
    /// `x: [N, C_in, H, W]` → `[N, C_out, H/s, W/s]`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 4> {
        let mut h = x.clone();
        if let (Some(c), Some(b)) = (&self.inverted_bottleneck, &self.inverted_bottleneck_bn) {
            h = conv_bn_act(c, b, h, Some(self.act), mode);
        }
        h = conv_bn_act(&self.depth_conv, &self.depth_bn, h, Some(self.act), mode);
        if let (Some(r), Some(e)) = (&self.se_reduce, &self.se_expand) {
            let y = backend::global_avg_pool(h.clone());
            let y = h_sigmoid(e.forward(relu(r.forward(y))));
            h = h * y;
        }
        let h = conv_bn_act(&self.point_linear, &self.point_linear_bn, h, None, mode);
        if self.residual { h + x } else { h }
    }
}

impl<B: OfaBackend> Subnet<B> {
    /// `x: [N, C_in, R, R]` → logits `[N, classes]` with stored BN
    /// statistics (inference).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_mode(x, Mode::Eval)
    }

    /// Forward with an explicit BN mode; dropout in `Train`.
    pub fn forward_mode(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 2> {
        self.classify(self.features(x, mode), mode)
    }

    /// Everything before global pooling.
    pub fn features(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 4> {
        let mut x = conv_bn_act(
            &self.first_conv,
            &self.first_conv_bn,
            x,
            Some(self.first_conv_act),
            mode,
        );
        for b in &self.blocks {
            x = b.forward(x, mode);
        }
        if let (Some(c), Some(b)) = (&self.pre_pool, &self.pre_pool_bn) {
            x = conv_bn_act(c, b, x, Some(self.head_act), mode);
        }
        x
    }

    /// Pooling, post-pool 1×1 conv, dropout (in `Train`) and classifier.
    pub fn classify(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 2> {
        let mut x = super::backend::global_avg_pool(x);
        if let Some(c) = &self.post_pool {
            x = activate(c.forward(x), self.head_act);
        }
        let [n, c, _, _] = x.dims();
        self.classifier
            .forward(dropout(x.reshape([n, c]), self.dropout, mode))
    }
}

/// Names a module's parameters by visiting order (`p0`, `p1`, …): stable
/// for one structure, which is all optimizer state of a static network
/// needs.
pub fn param_names_in_order<B: burn::tensor::backend::Backend, M: Module<B>>(
    m: &M,
) -> std::collections::HashMap<burn::module::ParamId, String> {
    struct V(std::collections::HashMap<burn::module::ParamId, String>);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let n = self.0.len();
            self.0.insert(p.id, format!("p{n}"));
        }
    }
    let mut v = V(Default::default());
    m.visit(&mut v);
    v.0
}
