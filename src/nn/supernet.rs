//! The elastic supernet: every subnet of a [`Space`] runs by passing its
//! [`Arch`] to `forward`.

use super::OfaBackend;
use super::layers::{
    ElasticBn, ElasticConv, ElasticDepthwise, ElasticSe, Linear, activate, dropout,
};
use super::{Init, Mode, backend};
use crate::space::{Activation, Arch, BlockLayout, Space};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

/// Builds a [`Supernet`] for a space.
#[derive(Config, Debug)]
pub struct SupernetConfig {
    pub space: Space,
    /// Seed of the initial weights.
    #[config(default = 0)]
    pub seed: u64,
}

/// A convolution followed by batch normalisation.
#[derive(Module, Debug)]
pub struct ConvBn<B: OfaBackend> {
    pub conv: ElasticConv<B>,
    pub bn: ElasticBn<B>,
}

impl<B: OfaBackend> ConvBn<B> {
    /// `x: [N, C_in, H, W]` → `[N, out, H', W']`.
    pub fn forward(&self, x: Tensor<B, 4>, out: usize, mode: Mode<'_, B>) -> Tensor<B, 4> {
        self.forward_act(x, out, None, mode)
    }

    /// [`ConvBn::forward`] then `act`; with stored statistics (`Eval`) a 1×1
    /// convolution runs as one fused operation, as in extracted subnets.
    pub fn forward_act(
        &self,
        x: Tensor<B, 4>,
        out: usize,
        act: Option<Activation>,
        mode: Mode<'_, B>,
    ) -> Tensor<B, 4> {
        let c = &self.conv;
        if matches!(mode, Mode::Eval) && c.kernel() == 1 && c.stride == 1 && c.bias.is_none() {
            let inp = x.dims()[1];
            let (scale, shift) = self.bn.eval_affine(out);
            return backend::pointwise_affine(x, c.active_weight(out, inp), scale, shift, act);
        }
        let y = self.bn.forward(c.forward(x, out), mode);
        backend::activate_opt(y, act)
    }
}

/// Conv (+ BN) + activation: the first conv and the head's 1×1 layers.
#[derive(Module, Debug)]
pub struct ConvBnAct<B: OfaBackend> {
    pub conv: ElasticConv<B>,
    pub bn: Option<ElasticBn<B>>,
    pub act: Activation,
}

impl<B: OfaBackend> ConvBnAct<B> {
    pub fn out_channels(&self) -> usize {
        self.conv.weight.dims()[0]
    }

    /// `x: [N, C_in, H, W]` → `[N, C_out, H', W']`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 4> {
        let y = self.conv.forward(x, self.out_channels());
        let y = match &self.bn {
            Some(bn) => bn.forward(y, mode),
            None => y,
        };
        activate(y, self.act)
    }
}

/// Inverted residual block: 1×1 expand (absent when the expand ratio is 1)
/// → depthwise k×k → optional squeeze-excite → 1×1 project, plus the input
/// when shapes allow.
#[derive(Module, Debug)]
pub struct MbConv<B: OfaBackend> {
    pub inverted_bottleneck: Option<ConvBn<B>>,
    pub depth_conv: ElasticDepthwise<B>,
    pub depth_bn: ElasticBn<B>,
    pub se: Option<ElasticSe<B>>,
    pub point_linear: ConvBn<B>,
    pub act: Activation,
    pub residual: bool,
    pub out_ch: usize,
}

impl<B: OfaBackend> MbConv<B> {
    /// `x: [N, C_in, H, W]` → `[N, C_out, H/s, W/s]`, with a `k×k` depthwise
    /// kernel and `mid` middle channels (ignored without expand conv).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        k: usize,
        mid: usize,
        mode: Mode<'_, B>,
    ) -> Tensor<B, 4> {
        let h = match &self.inverted_bottleneck {
            Some(ib) => ib.forward_act(x.clone(), mid, Some(self.act), mode),
            None => x.clone(),
        };
        let h = if matches!(mode, Mode::Eval) {
            // Fused as in extracted subnets.
            let c = h.dims()[1];
            let (scale, shift) = self.depth_bn.eval_affine(c);
            let w = self.depth_conv.active_filter(c, k);
            backend::depthwise_affine(h, w, self.depth_conv.stride, scale, shift, Some(self.act))
        } else {
            activate(
                self.depth_bn.forward(self.depth_conv.forward(h, k), mode),
                self.act,
            )
        };
        let h = match &self.se {
            Some(se) => se.forward(h),
            None => h,
        };
        let h = self.point_linear.forward(h, self.out_ch, mode);
        if self.residual { h + x } else { h }
    }
}

/// The elastic supernet of a [`Space`].
#[derive(Module, Debug)]
pub struct Supernet<B: OfaBackend> {
    pub first_conv: ConvBnAct<B>,
    pub first_block: MbConv<B>,
    pub blocks: Vec<MbConv<B>>,
    pub pre_pool: Option<ConvBnAct<B>>,
    pub post_pool: Option<ConvBnAct<B>>,
    pub classifier: Linear<B>,
    pub space: Space,
    pub layout: Vec<BlockLayout>,
}

impl SupernetConfig {
    /// Builds the supernet with seeded He (fan-out) initialisation, BN
    /// weight 1 / bias 0, identity kernel transforms.
    pub fn init<B: OfaBackend>(&self, device: &B::Device) -> Supernet<B> {
        let s = &self.space;
        let mut init = Init::new(self.seed);
        let bn = |ch: usize| ElasticBn::new(ch, s.bn_momentum, s.bn_eps, device);
        let first_w = s.first_conv_width();
        let first_conv = ConvBnAct {
            conv: ElasticConv::new(
                &mut init,
                s.in_channels,
                first_w,
                s.first_conv.kernel,
                s.first_conv.stride,
                false,
                device,
            ),
            bn: Some(bn(first_w)),
            act: s.first_conv.act,
        };
        let fb = &s.first_block;
        let fb_out = s.first_block_width();
        let first_block = MbConv {
            inverted_bottleneck: None,
            depth_conv: ElasticDepthwise::new(&mut init, first_w, &[fb.kernel], fb.stride, device),
            depth_bn: bn(first_w),
            se: fb
                .se
                .then(|| ElasticSe::new(&mut init, first_w, s.channel_divisor, device)),
            point_linear: ConvBn {
                conv: ElasticConv::new(&mut init, first_w, fb_out, 1, 1, false, device),
                bn: bn(fb_out),
            },
            act: fb.act,
            residual: s.first_block_residual(),
            out_ch: fb_out,
        };
        let layout = s.blocks();
        let blocks = layout
            .iter()
            .map(|b| MbConv {
                inverted_bottleneck: Some(ConvBn {
                    conv: ElasticConv::new(&mut init, b.in_ch, b.max_mid, 1, 1, false, device),
                    bn: bn(b.max_mid),
                }),
                depth_conv: ElasticDepthwise::new(
                    &mut init,
                    b.max_mid,
                    &s.kernel_choices,
                    b.stride,
                    device,
                ),
                depth_bn: bn(b.max_mid),
                se: b
                    .se
                    .then(|| ElasticSe::new(&mut init, b.max_mid, s.channel_divisor, device)),
                point_linear: ConvBn {
                    conv: ElasticConv::new(&mut init, b.max_mid, b.out_ch, 1, 1, false, device),
                    bn: bn(b.out_ch),
                },
                act: b.act,
                residual: b.residual,
                out_ch: b.out_ch,
            })
            .collect();
        let mut ch = s.last_stage_width();
        let pre_pool = s.pre_pool_width().map(|w| {
            let layer = ConvBnAct {
                conv: ElasticConv::new(&mut init, ch, w, 1, 1, false, device),
                bn: Some(bn(w)),
                act: s.head.act,
            };
            ch = w;
            layer
        });
        let post_pool = s.post_pool_width().map(|w| {
            let layer = ConvBnAct {
                conv: ElasticConv::new(&mut init, ch, w, 1, 1, false, device),
                bn: None,
                act: s.head.act,
            };
            ch = w;
            layer
        });
        let classifier = Linear::new(&mut init, ch, s.num_classes, device);
        Supernet {
            first_conv,
            first_block,
            blocks,
            pre_pool,
            post_pool,
            classifier,
            space: s.clone(),
            layout,
        }
    }
}

impl<B: OfaBackend> Supernet<B> {
    /// Runs subnet `arch` on `x: [N, C_in, R, R]` → logits `[N, classes]`.
    ///
    /// The input is used at whatever size it has; resizing batches to
    /// `arch.r` is the data pipeline's job. `arch` must be valid for the
    /// space (callers validate user input with [`Arch::validate`]).
    pub fn forward(&self, x: Tensor<B, 4>, arch: &Arch, mode: Mode<'_, B>) -> Tensor<B, 2> {
        let features = self.features(x, arch, mode);
        self.classify(features, mode)
    }

    /// Everything before global pooling: `[N, C_in, R, R]` → `[N, C, r, r]`.
    pub fn features(&self, x: Tensor<B, 4>, arch: &Arch, mode: Mode<'_, B>) -> Tensor<B, 4> {
        debug_assert!(arch.validate(&self.space).is_ok(), "invalid arch {arch}");
        let mut x = self.first_conv.forward(x, mode);
        let first_w = self.first_conv.out_channels();
        x = self
            .first_block
            .forward(x, self.space.first_block.kernel, first_w, mode);
        for (b, block) in self.layout.iter().zip(&self.blocks) {
            if arch.is_active(b) {
                let mid = self.space.middle_width(b.in_ch, arch.e[b.index]);
                x = block.forward(x, arch.ks[b.index], mid, mode);
            }
        }
        match &self.pre_pool {
            Some(layer) => layer.forward(x, mode),
            None => x,
        }
    }

    /// Pooling, post-pool layer, dropout and classifier:
    /// `[N, C, r, r]` → `[N, classes]`.
    pub fn classify(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 2> {
        let mut x = super::backend::global_avg_pool(x);
        if let Some(layer) = &self.post_pool {
            x = layer.forward(x, mode);
        }
        let [n, c, _, _] = x.dims();
        let x = dropout(x.reshape([n, c]), self.space.dropout, mode);
        self.classifier.forward(x)
    }
}

/// The part of each parameter a subnet uses: per axis, the index range
/// (a box). Parameters the subnet does not use are absent.
pub type ActiveRegions = std::collections::HashMap<burn::module::ParamId, Vec<Range<usize>>>;

use std::ops::Range;

fn whole<B: OfaBackend, const D: usize>(
    p: &burn::module::Param<Tensor<B, D>>,
    out: &mut ActiveRegions,
) {
    out.insert(p.id, p.dims().iter().map(|&n| 0..n).collect());
}

impl<B: OfaBackend> ElasticBn<B> {
    fn regions(&self, c: usize, out: &mut ActiveRegions) {
        out.insert(self.gamma.id, vec![0..c]);
        out.insert(self.beta.id, vec![0..c]);
    }
}

impl<B: OfaBackend> ElasticConv<B> {
    fn regions(&self, o: usize, i: usize, out: &mut ActiveRegions) {
        let k = self.kernel();
        out.insert(self.weight.id, vec![0..o, 0..i, 0..k, 0..k]);
        if let Some(b) = &self.bias {
            out.insert(b.id, vec![0..o]);
        }
    }
}

impl<B: OfaBackend> ElasticDepthwise<B> {
    /// A `k×k` subnet reads the centre of the stored kernel that the first
    /// transformation crops (all of it for the largest kernel), and every
    /// transformation matrix on the way down to `k`.
    fn regions(&self, c: usize, k: usize, out: &mut ActiveRegions) {
        let n = self.kernels.len();
        let kmax = self.kernels[n - 1];
        let read = if k >= kmax { kmax } else { self.kernels[n - 2] };
        let s = (kmax - read) / 2;
        out.insert(self.weight.id, vec![0..c, 0..1, s..s + read, s..s + read]);
        for i in (0..n - 1).rev() {
            if self.kernels[i + 1] <= k {
                break;
            }
            whole(&self.transforms[i], out);
        }
    }
}

impl<B: OfaBackend> ConvBnAct<B> {
    fn regions(&self, out: &mut ActiveRegions) {
        whole(&self.conv.weight, out);
        if let Some(b) = &self.conv.bias {
            whole(b, out);
        }
        if let Some(bn) = &self.bn {
            bn.regions(bn.channels(), out);
        }
    }
}

impl<B: OfaBackend> MbConv<B> {
    fn regions(&self, in_ch: usize, k: usize, mid: usize, out: &mut ActiveRegions) {
        let mid = if self.inverted_bottleneck.is_some() {
            mid
        } else {
            in_ch
        };
        if let Some(ib) = &self.inverted_bottleneck {
            ib.conv.regions(mid, in_ch, out);
            ib.bn.regions(mid, out);
        }
        self.depth_conv.regions(mid, k, out);
        self.depth_bn.regions(mid, out);
        if let Some(se) = &self.se {
            let s = se.hidden(mid);
            out.insert(se.reduce_weight.id, vec![0..s, 0..mid, 0..1, 0..1]);
            out.insert(se.reduce_bias.id, vec![0..s]);
            out.insert(se.expand_weight.id, vec![0..mid, 0..s, 0..1, 0..1]);
            out.insert(se.expand_bias.id, vec![0..mid]);
        }
        self.point_linear.conv.regions(self.out_ch, mid, out);
        self.point_linear
            .bn
            .regions(self.point_linear.bn.channels(), out);
    }
}

impl<B: OfaBackend> Supernet<B> {
    /// Which part of every trainable parameter subnet `arch` uses (DepS's
    /// `get_active_subnet_mask`, with kernel crops and transformation
    /// matrices included): the weights its forward reads.
    pub fn active_regions(&self, arch: &Arch) -> ActiveRegions {
        let mut out = ActiveRegions::new();
        self.first_conv.regions(&mut out);
        let first_w = self.first_conv.out_channels();
        self.first_block
            .regions(first_w, self.space.first_block.kernel, first_w, &mut out);
        for (b, block) in self.layout.iter().zip(&self.blocks) {
            if arch.is_active(b) {
                let mid = self.space.middle_width(b.in_ch, arch.e[b.index]);
                block.regions(b.in_ch, arch.ks[b.index], mid, &mut out);
            }
        }
        for l in self.pre_pool.iter().chain(&self.post_pool) {
            l.regions(&mut out);
        }
        whole(&self.classifier.weight, &mut out);
        whole(&self.classifier.bias, &mut out);
        out
    }
}
