//! Exact multiply-adds (as the reference counter counts them: convolutions
//! and linear layers only) and parameter counts, from the arch alone.
//!
//! The same per-layer list keys the latency lookup table: each [`Layer`] is
//! one operator a device runs, described by its shapes.

use super::{Activation, Arch, Space, conv_out};
use serde::{Deserialize, Serialize};

/// One operator of a subnet with the shapes it runs at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Layer {
    Conv(ConvLayer),
    MbConv(MbConvLayer),
    /// Global average pooling.
    Pool {
        in_res: usize,
        ch: usize,
    },
    /// Linear classifier (after dropout).
    Linear {
        in_f: usize,
        out_f: usize,
    },
}

/// Conv k×k (+ BN) + activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvLayer {
    pub in_res: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub stride: usize,
    pub bn: bool,
    pub act: Activation,
}

/// Inverted-residual block. `mid == in_ch` without an expand conv
/// (`expand == false`, the first block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MbConvLayer {
    pub in_res: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    pub mid: usize,
    pub expand: bool,
    pub kernel: usize,
    pub stride: usize,
    pub se_mid: Option<usize>,
    pub act: Activation,
    pub residual: bool,
}

/// Multiply-adds and parameters of a subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub macs: u64,
    pub params: u64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            macs: self.macs + o.macs,
            params: self.params + o.params,
        }
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), |a, b| a + b)
    }
}

impl Cost {
    pub fn mflops(&self) -> f64 {
        self.macs as f64 / 1e6
    }
    pub fn mparams(&self) -> f64 {
        self.params as f64 / 1e6
    }
}

fn conv_cost(out_res: usize, cin: usize, cout: usize, k: usize, groups: usize) -> Cost {
    Cost {
        macs: (out_res * out_res * cout * (cin / groups) * k * k) as u64,
        params: (cout * (cin / groups) * k * k) as u64,
    }
}

fn bn(ch: usize) -> Cost {
    Cost {
        macs: 0,
        params: 2 * ch as u64,
    }
}

impl ConvLayer {
    pub fn out_res(&self) -> usize {
        conv_out(self.in_res, self.kernel, self.stride)
    }

    pub fn cost(&self) -> Cost {
        let c = conv_cost(self.out_res(), self.in_ch, self.out_ch, self.kernel, 1);
        if self.bn { c + bn(self.out_ch) } else { c }
    }

    fn key(&self) -> String {
        let ConvLayer {
            in_res,
            in_ch,
            out_ch,
            kernel,
            stride,
            bn,
            act,
        } = self;
        let bn = if *bn { "bn" } else { "nobn" };
        format!("conv:r{in_res}:i{in_ch}:o{out_ch}:k{kernel}:s{stride}:{bn}:{act}")
    }
}

impl MbConvLayer {
    pub fn out_res(&self) -> usize {
        conv_out(self.in_res, self.kernel, self.stride)
    }

    pub fn cost(&self) -> Cost {
        let (mid, out) = (self.mid, self.out_res());
        let mut c = Cost::default();
        if self.expand {
            c = c + conv_cost(self.in_res, self.in_ch, mid, 1, 1) + bn(mid);
        }
        c = c + conv_cost(out, mid, mid, self.kernel, mid) + bn(mid);
        if let Some(se) = self.se_mid {
            let bias = Cost {
                macs: 0,
                params: (se + mid) as u64,
            };
            c = c + conv_cost(1, mid, se, 1, 1) + conv_cost(1, se, mid, 1, 1) + bias;
        }
        c + conv_cost(out, mid, self.out_ch, 1, 1) + bn(self.out_ch)
    }

    fn key(&self) -> String {
        let MbConvLayer {
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
        } = self;
        format!(
            "mbconv:r{in_res}:i{in_ch}:o{out_ch}:m{mid}:{}:k{kernel}:s{stride}:se{}:{act}:{}",
            if *expand { "x" } else { "nox" },
            se_mid.unwrap_or(0),
            if *residual { "res" } else { "nores" }
        )
    }
}

impl Layer {
    /// Spatial size of this operator's output.
    pub fn out_res(&self) -> usize {
        match self {
            Layer::Conv(c) => c.out_res(),
            Layer::MbConv(b) => b.out_res(),
            Layer::Pool { .. } | Layer::Linear { .. } => 1,
        }
    }

    pub fn cost(&self) -> Cost {
        match *self {
            Layer::Conv(c) => c.cost(),
            Layer::MbConv(b) => b.cost(),
            Layer::Pool { .. } => Cost::default(),
            Layer::Linear { in_f, out_f } => Cost {
                macs: (in_f * out_f) as u64,
                params: (in_f * out_f + out_f) as u64,
            },
        }
    }

    /// A stable text key for lookup tables, e.g.
    /// `mbconv:r14:i40:o40:m120:k5:s1:se32:h_swish:res`.
    pub fn key(&self) -> String {
        match self {
            Layer::Conv(c) => c.key(),
            Layer::MbConv(b) => b.key(),
            Layer::Pool { in_res, ch } => format!("pool:r{in_res}:c{ch}"),
            Layer::Linear { in_f, out_f } => format!("linear:i{in_f}:o{out_f}"),
        }
    }
}

/// The operators of a subnet in execution order.
pub fn layers(space: &Space, arch: &Arch) -> Vec<Layer> {
    let mut out = Vec::new();
    let mut res = arch.r;
    let first_conv = Layer::Conv(ConvLayer {
        in_res: res,
        in_ch: space.in_channels,
        out_ch: space.first_conv_width(),
        kernel: space.first_conv.kernel,
        stride: space.first_conv.stride,
        bn: true,
        act: space.first_conv.act,
    });
    res = first_conv.out_res();
    out.push(first_conv);
    let fb = &space.first_block;
    let fb_in = space.first_conv_width();
    let first = Layer::MbConv(MbConvLayer {
        in_res: res,
        in_ch: fb_in,
        out_ch: space.first_block_width(),
        mid: fb_in,
        expand: false,
        kernel: fb.kernel,
        stride: fb.stride,
        se_mid: fb.se.then(|| space.se_width(fb_in)),
        act: fb.act,
        residual: space.first_block_residual(),
    });
    res = first.out_res();
    out.push(first);
    for (b, k, e) in arch.active_blocks(space) {
        let mid = space.middle_width(b.in_ch, e);
        let layer = Layer::MbConv(MbConvLayer {
            in_res: res,
            in_ch: b.in_ch,
            out_ch: b.out_ch,
            mid,
            expand: true,
            kernel: k,
            stride: b.stride,
            se_mid: b.se.then(|| space.se_width(mid)),
            act: b.act,
            residual: b.residual,
        });
        res = layer.out_res();
        out.push(layer);
    }
    let mut ch = space.last_stage_width();
    if let Some(w) = space.pre_pool_width() {
        out.push(Layer::Conv(ConvLayer {
            in_res: res,
            in_ch: ch,
            out_ch: w,
            kernel: 1,
            stride: 1,
            bn: true,
            act: space.head.act,
        }));
        ch = w;
    }
    out.push(Layer::Pool { in_res: res, ch });
    if let Some(w) = space.post_pool_width() {
        out.push(Layer::Conv(ConvLayer {
            in_res: 1,
            in_ch: ch,
            out_ch: w,
            kernel: 1,
            stride: 1,
            bn: false,
            act: space.head.act,
        }));
        ch = w;
    }
    out.push(Layer::Linear {
        in_f: ch,
        out_f: space.num_classes,
    });
    out
}

impl Arch {
    /// Multiply-adds and parameters of this subnet.
    pub fn cost(&self, space: &Space) -> Cost {
        layers(space, self).iter().map(Layer::cost).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::preset;

    fn check(space: &str, arch: Arch, r: usize, mflops: f64, mparams: Option<f64>) {
        let s = preset(space).unwrap();
        let c = arch.with_resolution(r).cost(&s);
        let rel = (c.mflops() - mflops).abs() / mflops;
        assert!(
            rel < 0.005,
            "{space} r{r}: {} MFLOPs vs reference {mflops}",
            c.mflops()
        );
        if let Some(p) = mparams {
            let rel = (c.mparams() - p).abs() / p;
            assert!(
                rel < 0.005,
                "{space}: {} M params vs reference {p}",
                c.mparams()
            );
        }
    }

    #[test]
    fn reference_counter_figures_mbv3_w10() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        check("ofa-mbv3-w1.0", Arch::max(&s), 224, 566.17, Some(7.6648));
        check("ofa-mbv3-w1.0", Arch::min(&s), 128, 41.48, Some(3.4108));
        check("ofa-mbv3-w1.0", Arch::min(&s), 224, 121.28, None);
    }

    #[test]
    fn reference_counter_figures_mbv3_w12() {
        let s = preset("ofa-mbv3-w1.2").unwrap();
        check("ofa-mbv3-w1.2", Arch::max(&s), 224, 843.10, Some(10.7016));
        check("ofa-mbv3-w1.2", Arch::min(&s), 128, 65.54, Some(4.6025));
    }

    #[test]
    fn reference_counter_figures_proxyless_w13() {
        let s = preset("ofa-proxyless-w1.3").unwrap();
        check(
            "ofa-proxyless-w1.3",
            Arch::max(&s),
            224,
            1004.91,
            Some(7.9421),
        );
        check(
            "ofa-proxyless-w1.3",
            Arch::min(&s),
            128,
            87.82,
            Some(3.7188),
        );
    }

    #[test]
    fn layer_keys_are_distinct_per_shape() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let l = layers(&s, &Arch::max(&s));
        assert_eq!(l.len(), 2 + 20 + 4);
        assert_ne!(l[2].key(), l[3].key());
    }
}
