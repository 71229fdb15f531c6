//! The host inference engine for static subnets: what `ofa bench infer`,
//! `ofa latency --measure` and the latency table time on a CPU backend.
//!
//! A subnet is compiled once into a [`Plan`]: every BN (stored statistics)
//! folded into its convolution's weights and bias, weights laid out for
//! the kernels below, SE and classifier weights transposed. Activations are
//! channels-last (`[N, H, W, C]`): a 1×1 convolution over the whole batch is
//! then one matrix product `[N·H·W, C_in] · [C_in, C_out]` (the bulk of a
//! MobileNet's work, and batch and pixels fill the same GEMM dimension), and
//! a depthwise tap is a contiguous vector of channels with no padded copy of
//! the input. Bias, activation and the residual add are applied to each
//! output tile while it is in cache; buffers live in a [`Workspace`] that is
//! reused from call to call, so a steady-state forward allocates nothing.
//!
//! The engine reads weights through `into_data`, so it can be built from a
//! subnet on any backend, but it runs on the host: [`Runner`] uses it when
//! the backend keeps tensors in host memory ([`OfaBackend::host_engine`])
//! and the backend's own operators otherwise.

use super::OfaBackend;
use super::subnet::{Subnet, SubnetBlock, bn_affine};
use super::team::{Par, with_team};
use crate::space::{Activation, Layer, conv_taps as taps};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Mutex;

/// `clamp(v / 6 + 1/2, 0, 1)`, the SE gate (`h_sigmoid`).
#[inline(always)]
fn h_sigmoid(v: f32) -> f32 {
    (v * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)
}

/// A dense k×k convolution (groups 1, padding k/2) with BN folded in:
/// `w` is `[k, k, C_in, C_out]`, `b` is `[C_out]`. A 1×1 one with stride 1
/// is a matrix product (also the classifier and the SE-free head convs).
#[derive(Clone, Debug)]
pub struct Dense {
    k: usize,
    s: usize,
    cin: usize,
    cout: usize,
    act: Option<Activation>,
    /// The weights as a `[k·k·C_in, C_out]` matrix in panels of [`PANEL`] output
    /// channels, `[⌈C_out/PANEL⌉, k·k·C_in, PANEL]`, zero beyond `C_out` —
    /// packed once here instead of by a GEMM on every call.
    panels: Vec<f32>,
    /// `b` zero-padded to whole panels.
    panel_bias: Vec<f32>,
    /// The GEMM's inner dimension, `k·k·C_in`.
    kdim: usize,
}

/// A depthwise k×k convolution (padding k/2) with BN folded in: `w` is
/// `[k·k, C]`, `b` is `[C]`.
#[derive(Clone, Debug)]
pub struct Depthwise {
    k: usize,
    s: usize,
    c: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    act: Activation,
}

/// Squeeze-and-excitation: `gate = h_sigmoid(W2 · relu(W1 · mean + b1) +
/// b2)`, `w1` `[C, S]`, `w2` `[S, C]`.
#[derive(Clone, Debug)]
pub struct Se {
    c: usize,
    s: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

/// An inverted-residual block.
#[derive(Clone, Debug)]
pub struct Block {
    expand: Option<Dense>,
    dw: Depthwise,
    se: Option<Se>,
    project: Dense,
    residual: bool,
}

/// One step of a plan.
#[derive(Clone, Debug)]
pub enum Op {
    Conv(Dense),
    Block(Block),
    /// Global average pooling to `[N, 1, 1, C]`.
    Pool,
}

/// `[N, H, W, C]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The output of a k×k convolution with padding k/2 and `c` channels.
    fn conv_out(&self, k: usize, s: usize, c: usize) -> Shape {
        Shape {
            n: self.n,
            h: crate::space::conv_out(self.h, k, s),
            w: crate::space::conv_out(self.w, k, s),
            c,
        }
    }
    fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// Reusable buffers of a plan's forward passes: grown on first use, never
/// shrunk, so a steady-state call allocates nothing.
#[derive(Debug, Default)]
pub struct Workspace {
    bufs: [Vec<f32>; 3],
    se: Vec<f32>,
    /// The patch matrix of a k×k dense convolution.
    cols: Vec<f32>,
    /// Per-task channel sums of a depthwise output ([`depthwise_summed`]).
    sums: Vec<f32>,
    /// Seconds per kind of step, when [`Runner::record_breakdown`] asked.
    breakdown: Option<Breakdown>,
}

/// Where a plan's forward passes spent their time (`ofa bench infer
/// --breakdown`): seconds and multiply-adds per kind of step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Breakdown {
    pub steps: std::collections::BTreeMap<&'static str, (f64, u64)>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A compiled static network (or a single layer of one).
#[derive(Clone, Debug)]
pub struct Plan {
    ops: Vec<Op>,
    in_channels: usize,
}

fn host<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data")
}

impl Dense {
    fn new(
        [k, s, cin, cout]: [usize; 4],
        w: Vec<f32>,
        b: Vec<f32>,
        act: Option<Activation>,
    ) -> Dense {
        assert_eq!(w.len(), k * k * cin * cout);
        assert_eq!(b.len(), cout);
        let kdim = k * k * cin;
        let panels = pack_panels(&w, kdim, cout);
        let mut panel_bias = b;
        panel_bias.resize(cout.div_ceil(PANEL) * PANEL, 0.0);
        Dense {
            k,
            s,
            cin,
            cout,
            act,
            panels,
            panel_bias,
            kdim,
        }
    }

    /// From `[C_out, C_in, k, k]` weights, an optional bias, and the per
    /// output channel affine of a BN with stored statistics.
    fn folded(
        w: &[f32],
        [cout, cin, k]: [usize; 3],
        s: usize,
        bias: Option<&[f32]>,
        affine: Option<(&[f32], &[f32])>,
        act: Option<Activation>,
    ) -> Dense {
        let mut out = vec![0f32; k * k * cin * cout];
        let mut b = vec![0f32; cout];
        for co in 0..cout {
            let (a, t) = affine.map_or((1.0, 0.0), |(a, t)| (a[co], t[co]));
            b[co] = t + bias.map_or(0.0, |v| v[co]) * a;
            for ci in 0..cin {
                for tap in 0..k * k {
                    out[(tap * cin + ci) * cout + co] = w[((co * cin) + ci) * k * k + tap] * a;
                }
            }
        }
        Dense::new([k, s, cin, cout], out, b, act)
    }

    fn from_conv<B: OfaBackend>(
        c: &Conv2d<B>,
        bn: Option<&BatchNorm<B>>,
        act: Option<Activation>,
    ) -> Dense {
        let [cout, cin, k, _] = c.weight.dims();
        let affine = bn.map(|bn| {
            let (a, t) = bn_affine(bn, cout);
            (host(a), host(t))
        });
        let bias = c.bias.as_ref().map(|b| host(b.val()));
        Dense::folded(
            &host(c.weight.val()),
            [cout, cin, k],
            c.stride[0],
            bias.as_deref(),
            affine.as_ref().map(|(a, t)| (a.as_slice(), t.as_slice())),
            act,
        )
    }

    fn out_shape(&self, x: Shape) -> Shape {
        x.conv_out(self.k, self.s, self.cout)
    }
}

impl Depthwise {
    fn from_conv<B: OfaBackend>(c: &Conv2d<B>, bn: &BatchNorm<B>, act: Activation) -> Depthwise {
        let [ch, _, k, _] = c.weight.dims();
        let (a, t) = bn_affine(bn, ch);
        let (a, t, w) = (host(a), host(t), host(c.weight.val()));
        let mut out = vec![0f32; k * k * ch];
        for cc in 0..ch {
            for tap in 0..k * k {
                out[tap * ch + cc] = w[cc * k * k + tap] * a[cc];
            }
        }
        Depthwise {
            k,
            s: c.stride[0],
            c: ch,
            w: out,
            b: t,
            act,
        }
    }

    fn out_shape(&self, x: Shape) -> Shape {
        x.conv_out(self.k, self.s, self.c)
    }
}

/// `[out, in, 1, 1]` weights and bias of a 1×1 convolution, transposed to
/// `[in, out]`.
fn transposed_1x1<B: OfaBackend>(c: &Conv2d<B>) -> (Vec<f32>, Vec<f32>, usize, usize) {
    let [out, inp, _, _] = c.weight.dims();
    let w = host(c.weight.val());
    let mut t = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    let b = c
        .bias
        .as_ref()
        .map_or_else(|| vec![0.0; out], |b| host(b.val()));
    (t, b, inp, out)
}

impl Block {
    fn from_subnet<B: OfaBackend>(b: &SubnetBlock<B>) -> Block {
        let expand = match (&b.inverted_bottleneck, &b.inverted_bottleneck_bn) {
            (Some(c), Some(bn)) => Some(Dense::from_conv(c, Some(bn), Some(b.act))),
            _ => None,
        };
        let se = match (&b.se_reduce, &b.se_expand) {
            (Some(r), Some(e)) => {
                let (w1, b1, c, s) = transposed_1x1(r);
                let (w2, b2, _, _) = transposed_1x1(e);
                Some(Se {
                    c,
                    s,
                    w1,
                    b1,
                    w2,
                    b2,
                })
            }
            _ => None,
        };
        Block {
            expand,
            dw: Depthwise::from_conv(&b.depth_conv, &b.depth_bn, b.act),
            se,
            project: Dense::from_conv(&b.point_linear, Some(&b.point_linear_bn), None),
            residual: b.residual,
        }
    }
}

impl Plan {
    /// Compiles an extracted subnet (its stored BN statistics folded in).
    pub fn from_subnet<B: OfaBackend>(net: &Subnet<B>) -> Plan {
        let mut ops = vec![Op::Conv(Dense::from_conv(
            &net.first_conv,
            Some(&net.first_conv_bn),
            Some(net.first_conv_act),
        ))];
        ops.extend(net.blocks.iter().map(|b| Op::Block(Block::from_subnet(b))));
        if let (Some(c), Some(bn)) = (&net.pre_pool, &net.pre_pool_bn) {
            ops.push(Op::Conv(Dense::from_conv(c, Some(bn), Some(net.head_act))));
        }
        ops.push(Op::Pool);
        if let Some(c) = &net.post_pool {
            ops.push(Op::Conv(Dense::from_conv(c, None, Some(net.head_act))));
        }
        // burn's Linear stores `[in, out]`: already the layout of a 1×1 conv here.
        let [inp, out] = net.classifier.weight.dims();
        let b = net
            .classifier
            .bias
            .as_ref()
            .map_or_else(|| vec![0.0; out], |b| host(b.val()));
        ops.push(Op::Conv(Dense::new(
            [1, 1, inp, out],
            host(net.classifier.weight.val()),
            b,
            None,
        )));
        Plan {
            ops,
            in_channels: net.space.in_channels,
        }
    }

    /// One layer of a subnet with random weights (what the latency table
    /// times), and the channels-last input shape it takes at batch `n`.
    pub fn for_layer(layer: &Layer, n: usize, seed: u64) -> (Plan, Shape) {
        let mut rng = Lcg(seed.wrapping_mul(2).wrapping_add(1));
        let mut dense = |cin: usize, cout: usize, k: usize, s: usize, a: Option<Activation>| {
            Dense::new(
                [k, s, cin, cout],
                rng.fill(k * k * cin * cout),
                rng.fill(cout),
                a,
            )
        };
        let (op, shape) = match *layer {
            Layer::Conv(c) => (
                Op::Conv(dense(c.in_ch, c.out_ch, c.kernel, c.stride, Some(c.act))),
                (c.in_res, c.in_ch),
            ),
            Layer::MbConv(b) => {
                let expand = b.expand.then(|| dense(b.in_ch, b.mid, 1, 1, Some(b.act)));
                let project = dense(b.mid, b.out_ch, 1, 1, None);
                let mut rng = Lcg(seed.wrapping_add(7));
                let dw = Depthwise {
                    k: b.kernel,
                    s: b.stride,
                    c: b.mid,
                    w: rng.fill(b.kernel * b.kernel * b.mid),
                    b: rng.fill(b.mid),
                    act: b.act,
                };
                let se = b.se_mid.map(|s| Se {
                    c: b.mid,
                    s,
                    w1: rng.fill(b.mid * s),
                    b1: rng.fill(s),
                    w2: rng.fill(s * b.mid),
                    b2: rng.fill(b.mid),
                });
                (
                    Op::Block(Block {
                        expand,
                        dw,
                        se,
                        project,
                        residual: b.residual,
                    }),
                    (b.in_res, b.in_ch),
                )
            }
            Layer::Pool { in_res, ch } => (Op::Pool, (in_res, ch)),
            Layer::Linear { in_f, out_f } => (Op::Conv(dense(in_f, out_f, 1, 1, None)), (1, in_f)),
        };
        let (r, c) = shape;
        (
            Plan {
                ops: vec![op],
                in_channels: c,
            },
            Shape { n, h: r, w: r, c },
        )
    }

    /// Logits `[N, classes]` of an NCHW input `[N, C, R, R]` (row-major).
    pub fn forward<'w>(
        &self,
        ws: &'w mut Workspace,
        x: &[f32],
        n: usize,
        r: usize,
        par: Par<'_>,
    ) -> &'w [f32] {
        let c = self.in_channels;
        assert_eq!(x.len(), n * c * r * r, "input of {n}×{c}×{r}×{r}");
        let shape = Shape { n, h: r, w: r, c };
        let dst = grow(&mut ws.bufs[0], shape.len());
        // NCHW → NHWC.
        for ni in 0..n {
            for ci in 0..c {
                let plane = &x[(ni * c + ci) * r * r..][..r * r];
                for (p, &v) in plane.iter().enumerate() {
                    dst[(ni * r * r + p) * c + ci] = v;
                }
            }
        }
        let (at, out) = self.run_from(ws, 0, shape, par);
        &ws.bufs[at][..out.len()]
    }

    /// Logits `[N, classes]` of an NCHW input `[N, C, R, R]`, the samples
    /// split into one group per thread, each group's whole forward pass on
    /// its own thread in its own workspace (`wss` grows to one per group).
    /// A batch's activations are N times one sample's: at 224 px they
    /// leave the caches between one layer and the next (batch 16 ran at
    /// fewer images/s than batch 1), while a group of one sample at a time
    /// keeps a layer's output in L2/L3 for the next, and the threads do not
    /// meet once per operator. One sample, one thread or a recorded
    /// breakdown: the whole batch in `wss[0]`, kernels parallel within.
    pub fn forward_samples(
        &self,
        wss: &mut Vec<Workspace>,
        x: &[f32],
        n: usize,
        r: usize,
    ) -> Vec<f32> {
        if wss.is_empty() {
            wss.push(Workspace::default());
        }
        let threads = rayon::current_num_threads().max(1);
        let groups = threads.min(n);
        if groups < 2 || wss[0].breakdown.is_some() {
            // One pass with every thread on its kernels: as one team, so
            // that its ~60 loops do not each wake the pool.
            let ws = &mut wss[0];
            return with_team(|par| self.forward(ws, x, n, r, par).to_vec());
        }
        wss.resize_with(wss.len().max(groups), Workspace::default);
        let per_sample = x.len() / n;
        let per = n.div_ceil(groups);
        let largest = self.largest_activation(Shape {
            n: 1,
            h: r,
            w: r,
            c: self.in_channels,
        });
        let pass = (PASS_BYTES / (4 * largest.max(1))).clamp(1, per);
        let outs: Vec<Vec<f32>> = wss[..groups]
            .par_iter_mut()
            .zip(x.par_chunks(per * per_sample))
            .map(|(ws, xg)| {
                let mut out = Vec::new();
                for xs in xg.chunks(pass * per_sample) {
                    let m = xs.len() / per_sample;
                    out.extend_from_slice(self.forward(ws, xs, m, r, Par::Pool));
                }
                out
            })
            .collect();
        outs.concat()
    }

    /// Values in the largest tensor a pass on `input` writes (expanded
    /// blocks' inner tensors included).
    fn largest_activation(&self, input: Shape) -> usize {
        let mut x = input;
        let mut most = x.len();
        for op in &self.ops {
            x = match op {
                Op::Conv(d) => d.out_shape(x),
                Op::Pool => Shape { h: 1, w: 1, ..x },
                Op::Block(b) => {
                    let e = b.expand.as_ref().map_or(x, |e| e.out_shape(x));
                    let d = b.dw.out_shape(e);
                    most = most.max(e.len()).max(d.len());
                    b.project.out_shape(d)
                }
            };
            most = most.max(x.len());
        }
        most
    }

    /// Runs the plan on the channels-last input already in `ws` (see
    /// [`Plan::load`]); returns the output shape.
    /// At batch 1 the kernels run on one team, as in
    /// [`Plan::forward_samples`] (so that a latency table's layers are
    /// timed as they run in a whole pass).
    pub fn run(&self, ws: &mut Workspace, shape: Shape) -> Shape {
        if shape.n == 1 {
            with_team(|par| self.run_from(ws, 0, shape, par).1)
        } else {
            self.run_from(ws, 0, shape, Par::Pool).1
        }
    }

    /// Puts a channels-last input of `shape` into `ws` for [`Plan::run`].
    pub fn load(ws: &mut Workspace, x: &[f32], shape: Shape) {
        grow(&mut ws.bufs[0], shape.len()).copy_from_slice(&x[..shape.len()]);
    }

    fn run_from(
        &self,
        ws: &mut Workspace,
        mut at: usize,
        mut shape: Shape,
        par: Par<'_>,
    ) -> (usize, Shape) {
        for op in &self.ops {
            (at, shape) = op.run(ws, at, shape, par);
        }
        (at, shape)
    }
}

/// Bytes of one layer's output that a thread's forward pass in
/// [`Plan::forward_samples`] aims to keep in cache (about a core's L2): it
/// takes as many samples per pass as fit (at least one), so that small
/// maps still batch their products (at 28 px, batch 16 ran faster per
/// image than batch 1) and large ones go one sample at a time.
const PASS_BYTES: usize = 1 << 20;

/// Splits the three workspace buffers into (the one at `at`, the other two).
fn split3(bufs: &mut [Vec<f32>; 3], at: usize) -> (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>) {
    let [a, b, c] = bufs;
    match at {
        0 => (a, b, c),
        1 => (b, c, a),
        _ => (c, a, b),
    }
}

impl Op {
    /// Reads `ws.bufs[at]`, returns where its output is.
    fn run(&self, ws: &mut Workspace, at: usize, x: Shape, par: Par<'_>) -> (usize, Shape) {
        let (src, t1, t2) = split3(&mut ws.bufs, at);
        let next1 = (at + 1) % 3;
        let timed = ws.breakdown.is_some();
        let mut steps: Vec<(&'static str, std::time::Instant, usize)> = Vec::new();
        let mut mark = |kind: &'static str, macs: usize| {
            if timed {
                steps.push((kind, std::time::Instant::now(), macs));
            }
        };
        let out = match self {
            Op::Conv(d) => {
                let o = d.out_shape(x);
                mark(
                    if d.k == 1 { "1x1 conv" } else { "kxk conv" },
                    o.rows() * d.kdim * d.cout,
                );
                dense(
                    &src[..x.len()],
                    x,
                    d,
                    None,
                    grow(t1, o.len()),
                    &mut ws.cols,
                    par,
                );
                (next1, o)
            }
            Op::Pool => {
                let o = Shape { h: 1, w: 1, ..x };
                mark("pool", 0);
                pool(&src[..x.len()], x, grow(t1, o.len()));
                (next1, o)
            }
            Op::Block(b) => {
                let input = &src[..x.len()];
                // expand → t1, depthwise → t2, project → t1 (the input
                // stays for the residual).
                let (expanded, e_shape) = match &b.expand {
                    Some(e) => {
                        let o = e.out_shape(x);
                        mark("1x1 conv", o.rows() * e.kdim * e.cout);
                        dense(input, x, e, None, grow(t1, o.len()), &mut ws.cols, par);
                        (true, o)
                    }
                    None => (false, x),
                };
                let e_out: &[f32] = if expanded {
                    &t1[..e_shape.len()]
                } else {
                    input
                };
                let d_shape = b.dw.out_shape(e_shape);
                let d_out = grow(t2, d_shape.len());
                // Stride 2 apart: its layers run at about half the rate of
                // stride 1 (each input column serves fewer taps).
                let kind = if b.dw.s == 1 {
                    "depthwise s1"
                } else {
                    "depthwise s2"
                };
                mark(kind, d_shape.len() * b.dw.k * b.dw.k);
                // One sample before an SE gate: the depthwise tasks also sum
                // the channels of the rows they wrote (while in L1), instead
                // of one serial pass over the map for the gate's means.
                let tasks = if b.se.is_some() && d_shape.n == 1 {
                    Some(depthwise_summed(
                        e_out,
                        e_shape,
                        &b.dw,
                        d_out,
                        &mut ws.sums,
                        par,
                    ))
                } else {
                    depthwise(e_out, e_shape, &b.dw, d_out, par);
                    None
                };
                if let Some(se) = &b.se {
                    mark("squeeze-excite", 0);
                    let sums = tasks.map(|t| &ws.sums[..t * d_shape.c]);
                    squeeze_excite(d_out, d_shape, se, sums, &mut ws.se, par);
                }
                let p_shape = b.project.out_shape(d_shape);
                let residual = (b.residual && p_shape == x).then_some(input);
                mark("1x1 conv", d_shape.rows() * b.project.kdim * b.project.cout);
                dense(
                    d_out,
                    d_shape,
                    &b.project,
                    residual,
                    grow(t1, p_shape.len()),
                    &mut ws.cols,
                    par,
                );
                (next1, p_shape)
            }
        };
        if let Some(br) = &mut ws.breakdown {
            let end = std::time::Instant::now();
            for (i, &(kind, t, macs)) in steps.iter().enumerate() {
                let until = steps.get(i + 1).map_or(end, |n| n.1);
                let e = br.steps.entry(kind).or_default();
                e.0 += until.duration_since(t).as_secs_f64();
                e.1 += macs as u64;
            }
        }
        out
    }
}

/// A small seeded generator for the random weights of a timed layer (their
/// values do not matter, only that they are finite and not all zero).
struct Lcg(u64);

impl Lcg {
    fn fill(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }
}

/// A raw pointer that may cross threads: the tasks that use it write
/// disjoint tiles of one output.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `f(t, chunk)` for the consecutive chunks of `chunk` values of `y` (the
/// last one shorter), as the tasks of one loop on `par`.
fn for_each_chunk(par: Par<'_>, y: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let (len, chunk) = (y.len(), chunk.max(1));
    let out = Out(y.as_mut_ptr());
    par.for_each(len.div_ceil(chunk), |t| {
        let out = out;
        let start = t * chunk;
        // SAFETY: task `t` alone gets `start..start + n`, inside `y`, which
        // stays borrowed until every task has run.
        let rows =
            unsafe { std::slice::from_raw_parts_mut(out.0.add(start), chunk.min(len - start)) };
        f(t, rows)
    });
}

/// Multiply-adds below which a product runs on one thread: waking a second
/// one costs more than it saves (measured on `mbv3-28-lite` at batch 1).
const SMALL_GEMM_MACS: usize = 1 << 18;

/// A dense convolution, channels-last: `y = act(conv(x) + b) [+ residual]`;
/// a 1×1 stride-1 one is a GEMM on `x` itself, a k×k one a GEMM on its
/// patch matrix (built in `cols`).
fn dense(
    x: &[f32],
    xs: Shape,
    d: &Dense,
    residual: Option<&[f32]>,
    y: &mut [f32],
    cols: &mut Vec<f32>,
    par: Par<'_>,
) {
    if d.k == 1 && d.s == 1 {
        pointwise(x, xs.rows(), d, residual, y, par);
    } else {
        assert!(residual.is_none(), "a residual after a k×k dense conv");
        let o = d.out_shape(xs);
        #[cfg(target_arch = "x86_64")]
        if d.cin <= 4 && d.cout <= PANEL && std::arch::is_x86_feature_detected!("avx512f") {
            assert!(x.len() >= xs.len() && y.len() >= o.len());
            let per = rows_per_task(o.rows() / o.w.max(1), o.w * d.kdim * d.cout);
            for_each_chunk(par, &mut y[..o.len()], o.w * d.cout * per, |t, rows| {
                for (i, row) in rows.chunks_mut(o.w * d.cout).enumerate() {
                    let g = t * per + i;
                    // SAFETY: AVX-512F is there; the sizes are checked above.
                    unsafe { stem_row_avx512(x, xs, d, g / o.h, g % o.h, row) };
                }
            });
            return;
        }
        let m = grow(cols, o.rows() * d.kdim);
        im2col(x, xs, d, m, par);
        pointwise(m, o.rows(), d, None, y, par);
    }
}

/// The patch matrix `[N·H'·W', k·k·C_in]` of a k×k convolution (padding
/// k/2), zeros for taps outside the input: the stem's 3 input channels
/// make its direct form a chain of tiny vectors, its GEMM form the
/// register-blocked kernel.
fn im2col(x: &[f32], xs: Shape, d: &Dense, m: &mut [f32], par: Par<'_>) {
    let o = d.out_shape(xs);
    let row_len = o.w * d.kdim;
    let per = rows_per_task(o.n * o.h, row_len);
    let m = &mut m[..o.rows() * d.kdim];
    for_each_chunk(par, m, row_len * per, |t, rows| {
        for (i, row) in rows.chunks_mut(row_len).enumerate() {
            let g = t * per + i;
            // The stem's 1 or 3 channels as constants: a copy of a
            // runtime length that small is a library call per tap.
            match d.cin {
                1 => im2col_row::<1>(x, xs, d, g / o.h, g % o.h, row),
                3 => im2col_row::<3>(x, xs, d, g / o.h, g % o.h, row),
                _ => im2col_row::<0>(x, xs, d, g / o.h, g % o.h, row),
            }
        }
    });
}

/// One output row's patches; `C` is the channel count when known at
/// compile time (0: `d.cin`).
#[inline(always)]
fn im2col_row<const C: usize>(
    x: &[f32],
    xs: Shape,
    d: &Dense,
    ni: usize,
    oy: usize,
    row: &mut [f32],
) {
    let (k, s, p) = (d.k, d.s, d.k / 2);
    let cin = if C == 0 { d.cin } else { C };
    for (ox, patch) in row.chunks_exact_mut(d.kdim).enumerate() {
        for ky in 0..k {
            let iy = (oy * s + ky) as isize - p as isize;
            for kx in 0..k {
                let ix = (ox * s + kx) as isize - p as isize;
                let dst = &mut patch[(ky * k + kx) * cin..][..cin];
                if iy < 0 || ix < 0 || iy >= xs.h as isize || ix >= xs.w as isize {
                    dst.iter_mut().for_each(|v| *v = 0.0);
                } else {
                    let at = ((ni * xs.h + iy as usize) * xs.w + ix as usize) * cin;
                    let src = &x[at..at + cin];
                    for i in 0..cin {
                        dst[i] = src[i];
                    }
                }
            }
        }
    }
}

/// One output row of a k×k convolution of a few input channels (the stem:
/// 3, or 1) and at most 16 output channels, straight from the
/// channels-last input: 8 pixels × 16 channels in AVX-512 registers, each
/// input value broadcast onto a tap's weight vector, taps outside the input
/// skipped. Through a patch matrix (1.35 MB at 224 px, written, then read
/// by the GEMM) the stem took twice ONNX Runtime's time.
///
/// # Safety
/// A CPU with AVX-512F; `x` holds the input of shape `xs`, `row` one
/// output row of `d` for sample `ni` (`d.cout ≤ 16`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stem_row_avx512(x: &[f32], xs: Shape, d: &Dense, ni: usize, oy: usize, row: &mut [f32]) {
    use std::arch::x86_64::*;
    let (k, s, p, cin, cout) = (d.k, d.s, d.k / 2, d.cin, d.cout);
    debug_assert!(cout <= PANEL && ni < xs.n && xs.c == cin);
    let ow = row.len() / cout;
    let (ky0, ky1) = taps(oy, s, p, k, xs.h);
    let mask: __mmask16 = if cout == PANEL {
        0xffff
    } else {
        (1u16 << cout) - 1
    };
    // SAFETY (all loads and stores): the caller's contract; the bias and
    // the one weight panel `[k·k·C_in, 16]` are padded to 16 channels, and
    // every tap read is inside the input.
    unsafe {
        let bias = _mm512_loadu_ps(d.panel_bias.as_ptr());
        let wp = d.panels.as_ptr();
        let mut ox = 0;
        while ox < ow {
            let n = 8.min(ow - ox);
            let mut acc = [bias; 8];
            for ky in ky0..ky1 {
                let xrow = x.as_ptr().add((ni * xs.h + oy * s + ky - p) * xs.w * cin);
                for kx in 0..k {
                    for ci in 0..cin {
                        let w = _mm512_loadu_ps(wp.add(((ky * k + kx) * cin + ci) * PANEL));
                        for (t, a) in acc.iter_mut().enumerate() {
                            let ix = ((ox + t) * s + kx) as isize - p as isize;
                            if t < n && ix >= 0 && (ix as usize) < xs.w {
                                let v = _mm512_set1_ps(*xrow.add(ix as usize * cin + ci));
                                *a = _mm512_fmadd_ps(v, w, *a);
                            }
                        }
                    }
                }
            }
            for (t, a) in acc.iter().enumerate().take(n) {
                let v = act512(*a, d.act);
                _mm512_mask_storeu_ps(row.as_mut_ptr().add((ox + t) * cout), mask, v);
            }
            ox += 8;
        }
    }
}

/// The activation `a` of 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn act512(v: std::arch::x86_64::__m512, a: Option<Activation>) -> std::arch::x86_64::__m512 {
    match a {
        None => act512_n::<0>(v),
        Some(Activation::Relu) => act512_n::<1>(v),
        Some(Activation::Relu6) => act512_n::<2>(v),
        Some(Activation::HSwish) => act512_n::<3>(v),
    }
}

/// [`act_n`] on 16 lanes: the activation numbered `A` (a constant of the
/// GEMM tile, see [`gemm_tile_impl`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn act512_n<const A: u8>(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
    match A {
        0 => v,
        1 => _mm512_max_ps(v, zero),
        2 => _mm512_min_ps(_mm512_max_ps(v, zero), six),
        _ => {
            let g = _mm512_min_ps(
                _mm512_max_ps(_mm512_add_ps(v, _mm512_set1_ps(3.0)), zero),
                six,
            );
            _mm512_mul_ps(_mm512_mul_ps(v, g), _mm512_set1_ps(1.0 / 6.0))
        }
    }
}

/// Output channels per packed weight panel (one AVX-512 register).
const PANEL: usize = 16;

/// `w` (`[C_in, C_out]`) as `[⌈C_out/PANEL⌉, C_in, PANEL]`, zero-padded.
fn pack_panels(w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let np = cout.div_ceil(PANEL);
    let mut out = vec![0f32; np * cin * PANEL];
    for pi in 0..np {
        for ci in 0..cin {
            for l in 0..PANEL.min(cout - pi * PANEL) {
                out[(pi * cin + ci) * PANEL + l] = w[ci * cout + pi * PANEL + l];
            }
        }
    }
    out
}

/// `y[rows, C_out] = epilogue(x[rows, K] · w[K, C_out])` (K = `kdim`) on the
/// packed panels, split into one tile per thread — by rows when there are
/// many, by panels of output channels when there are few (a 7×7 map at
/// batch 1 has 49 rows) — each multiplied and finished on its thread.
fn pointwise(
    x: &[f32],
    rows: usize,
    d: &Dense,
    residual: Option<&[f32]>,
    y: &mut [f32],
    par: Par<'_>,
) {
    let (cin, cout) = (d.kdim, d.cout);
    let np = cout.div_ceil(PANEL);
    let threads = par.threads();
    let macs = rows * cin * cout;
    // (first row, end row, first panel, end panel)
    let tiles: Vec<(usize, usize, usize, usize)> = if threads == 1 || macs < SMALL_GEMM_MACS {
        vec![(0, rows, 0, np)]
    } else if rows >= 32 * threads || np < 2 * threads {
        let step = rows.div_ceil(threads);
        (0..rows)
            .step_by(step)
            .map(|r| (r, (r + step).min(rows), 0, np))
            .collect()
    } else {
        let step = np.div_ceil(threads);
        (0..np)
            .step_by(step)
            .map(|p| (0, rows, p, (p + step).min(np)))
            .collect()
    };
    assert!(y.len() >= rows * cout && x.len() >= rows * cin);
    assert_eq!(d.panels.len(), np * cin * PANEL, "packed 1×1 weights");
    if let Some(r) = residual {
        assert!(r.len() >= rows * cout);
    }
    let out = Out(y.as_mut_ptr());
    let run = |&(r0, r1, p0, p1): &(usize, usize, usize, usize)| {
        let out = out;
        // SAFETY: the tiles are disjoint, and within `y`, `x` and the
        // panels (checked above).
        unsafe { gemm_tile(x, d, residual, out, (r0, r1), (p0, p1)) };
    };
    par.for_each(tiles.len(), |i| run(&tiles[i]));
}

/// One tile of [`pointwise`], with the register blocking of the CPU it
/// runs on: `MR` rows × 2 panels where two remain, else `MR1` rows × 1.
///
/// # Safety
/// As [`gemm_tile_impl`].
#[multiversion::multiversion(targets = "simd")]
unsafe fn gemm_tile(
    x: &[f32],
    d: &Dense,
    residual: Option<&[f32]>,
    y: Out,
    rows: (usize, usize),
    panels: (usize, usize),
) {
    use multiversion::target::target_cfg_f;
    // SAFETY: forwarded.
    unsafe {
        if target_cfg_f!(all(target_feature = "avx512f", target_feature = "fma")) {
            // 32 vector registers: 12 × 2 accumulators.
            gemm_tile_impl::<12, 12, true, true>(x, d, residual, y, rows, panels)
        } else if target_cfg_f!(all(target_feature = "avx2", target_feature = "fma")) {
            // 16 registers of 8 lanes: 3 × 2 × 2 and 6 × 2 accumulators.
            gemm_tile_impl::<3, 6, true, false>(x, d, residual, y, rows, panels)
        } else {
            gemm_tile_impl::<2, 4, false, false>(x, d, residual, y, rows, panels)
        }
    }
}

/// `MR` × 2-panel and `MR1` × 1-panel register tiles, fused multiply-adds
/// where `F`, the multi-row tiles in AVX-512 intrinsics where `Z`
/// ([`micro512`]; only where the CPU has AVX-512F).
///
/// # Safety
/// `x` holds `rows.1` rows of `C_in`, `y` (and `residual`) `rows.1` rows of
/// `C_out`, `panels.1 ≤ ⌈C_out/PANEL⌉`, and no other thread touches this
/// tile of `y`.
#[inline(always)]
unsafe fn gemm_tile_impl<const MR: usize, const MR1: usize, const F: bool, const Z: bool>(
    x: &[f32],
    d: &Dense,
    residual: Option<&[f32]>,
    y: Out,
    rows: (usize, usize),
    panels: (usize, usize),
) {
    // The activation as a constant of the kernel: a runtime match inside
    // the register tile made the compiler keep the tile in memory.
    // SAFETY (all arms): forwarded.
    unsafe {
        match d.act {
            None => gemm_tile_act::<MR, MR1, F, 0, Z>(x, d, residual, y, rows, panels),
            Some(Activation::Relu) => {
                gemm_tile_act::<MR, MR1, F, 1, Z>(x, d, residual, y, rows, panels)
            }
            Some(Activation::Relu6) => {
                gemm_tile_act::<MR, MR1, F, 2, Z>(x, d, residual, y, rows, panels)
            }
            Some(Activation::HSwish) => {
                gemm_tile_act::<MR, MR1, F, 3, Z>(x, d, residual, y, rows, panels)
            }
        }
    }
}

/// [`micro`] in AVX-512 registers (`M` rows × `P` panels of 16 output
/// channels, `M·P ≤ 24` accumulators), written with intrinsics: as arrays
/// of floats the tile was zeroed through the stack (a `memset` and 24
/// reloads per tile, whose store-forwarding stall was the hottest
/// instruction of the GEMM at K = 16–24, `perf annotate`). The tile
/// starts from the bias instead of zero.
///
/// # Safety
/// As [`gemm_tile_impl`], for these rows and panels, on a CPU with
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro512<const M: usize, const P: usize, const A: u8>(
    x: &[f32],
    d: &Dense,
    residual: Option<&[f32]>,
    y: Out,
    r: usize,
    p: usize,
) {
    use std::arch::x86_64::*;
    let (kd, cout) = (d.kdim, d.cout);
    // SAFETY (all loads and stores): rows r..r + M < rows, panels
    // p..p + P < ⌈C_out/PANEL⌉ (the caller's contract); the bias and the
    // panels are padded to whole panels; partial panels store masked.
    unsafe {
        let mut bias = [_mm512_setzero_ps(); P];
        for (q, b) in bias.iter_mut().enumerate() {
            *b = _mm512_loadu_ps(d.panel_bias.as_ptr().add((p + q) * PANEL));
        }
        let mut acc = [bias; M];
        let xp = x.as_ptr().add(r * kd);
        let wp = d.panels.as_ptr().add(p * kd * PANEL);
        for kk in 0..kd {
            let mut w = [_mm512_setzero_ps(); P];
            for (q, wq) in w.iter_mut().enumerate() {
                *wq = _mm512_loadu_ps(wp.add((q * kd + kk) * PANEL));
            }
            for (m, am) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(m * kd + kk));
                for (aq, wq) in am.iter_mut().zip(&w) {
                    *aq = _mm512_fmadd_ps(xv, *wq, *aq);
                }
            }
        }
        for (m, am) in acc.iter().enumerate() {
            for (q, &aq) in am.iter().enumerate() {
                let c0 = (p + q) * PANEL;
                let n = PANEL.min(cout - c0);
                let mask: __mmask16 = if n == PANEL { 0xffff } else { (1u16 << n) - 1 };
                let at = (r + m) * cout + c0;
                let mut v = act512_n::<A>(aq);
                if let Some(res) = residual {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(at)));
                }
                _mm512_mask_storeu_ps(y.0.add(at), mask, v);
            }
        }
    }
}

/// The activation numbered `A` (0: none, 1: ReLU, 2: ReLU6, 3: h-swish).
#[inline(always)]
fn act_n<const A: u8>(v: f32) -> f32 {
    match A {
        0 => v,
        1 => v.max(0.0),
        2 => v.max(0.0).min(6.0),
        _ => v * (v + 3.0).max(0.0).min(6.0) * (1.0 / 6.0),
    }
}

/// # Safety
/// As [`gemm_tile_impl`].
#[inline(always)]
unsafe fn gemm_tile_act<
    const MR: usize,
    const MR1: usize,
    const F: bool,
    const A: u8,
    const Z: bool,
>(
    x: &[f32],
    d: &Dense,
    residual: Option<&[f32]>,
    y: Out,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    // Rows per block: the block's inputs stay in L2 while every panel
    // passes over them.
    let rb = 8 * MR;
    let mut b0 = r0;
    while b0 < r1 {
        let b1 = (b0 + rb).min(r1);
        let mut p = p0;
        while p < p1 {
            // SAFETY (all calls): the caller's contract.
            if p + 2 <= p1 {
                let mut r = b0;
                while r + MR <= b1 {
                    unsafe { micro::<MR, 2, F, A, Z>(x, d, residual, y, r, p) };
                    r += MR;
                }
                unsafe { rest::<2, F, A, Z>(x, d, residual, y, (r, b1), p) };
                p += 2;
            } else {
                let mut r = b0;
                while r + MR1 <= b1 {
                    unsafe { micro::<MR1, 1, F, A, Z>(x, d, residual, y, r, p) };
                    r += MR1;
                }
                unsafe { rest::<1, F, A, Z>(x, d, residual, y, (r, b1), p) };
                p += 1;
            }
        }
        b0 = b1;
    }
}

/// The rows left after the full register tiles, in tiles of 4, 2 and 1.
///
/// # Safety
/// As [`gemm_tile_impl`], for these rows and panels.
#[inline(always)]
unsafe fn rest<const P: usize, const F: bool, const A: u8, const Z: bool>(
    x: &[f32],
    d: &Dense,
    residual: Option<&[f32]>,
    y: Out,
    (mut r, end): (usize, usize),
    p: usize,
) {
    // SAFETY (all calls): the caller's contract.
    while r + 4 <= end {
        unsafe { micro::<4, P, F, A, Z>(x, d, residual, y, r, p) };
        r += 4;
    }
    if r + 2 <= end {
        unsafe { micro::<2, P, F, A, Z>(x, d, residual, y, r, p) };
        r += 2;
    }
    if r < end {
        unsafe { micro::<1, P, F, A, Z>(x, d, residual, y, r, p) };
    }
}

/// Rows `r..r + M` × panels `p..p + P` of a 1×1 convolution: `M·P`
/// vectors of [`PANEL`] accumulators in registers over all of `C_in`, then
/// bias, activation and residual on the way out.
///
/// # Safety
/// As [`gemm_tile_impl`], for these rows and panels.
#[inline(always)]
unsafe fn micro<const M: usize, const P: usize, const F: bool, const A: u8, const Z: bool>(
    x: &[f32],
    d: &Dense,
    residual: Option<&[f32]>,
    y: Out,
    r: usize,
    p: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if Z && M > 1 {
        // SAFETY: forwarded; `Z` only where AVX-512F is (gemm_tile).
        unsafe { micro512::<M, P, A>(x, d, residual, y, r, p) };
        return;
    }
    let (kd, cout) = (d.kdim, d.cout);
    let mut acc = [[[0f32; PANEL]; P]; M];
    let xp = x.as_ptr();
    let wp = d.panels.as_ptr();
    // A single row has only P chains of dependent additions: split K over
    // four partial sums (a GEMV, e.g. the classifier at batch 1).
    let split = if M == 1 { kd / 4 * 4 } else { 0 };
    if M == 1 && split > 0 {
        let mut part = [[[0f32; PANEL]; P]; 4];
        for k4 in (0..split).step_by(4) {
            for (j, pj) in part.iter_mut().enumerate() {
                let kk = k4 + j;
                // SAFETY: row r < rows, kk < K, panel p + q < ⌈C_out/PANEL⌉.
                let xv = unsafe { *xp.add(r * kd + kk) };
                for (q, aq) in pj.iter_mut().enumerate() {
                    let wq = unsafe {
                        (wp.add(((p + q) * kd + kk) * PANEL) as *const [f32; PANEL])
                            .read_unaligned()
                    };
                    for l in 0..PANEL {
                        aq[l] = madd::<F>(xv, wq[l], aq[l]);
                    }
                }
            }
        }
        for q in 0..P {
            for l in 0..PANEL {
                acc[0][q][l] = (part[0][q][l] + part[1][q][l]) + (part[2][q][l] + part[3][q][l]);
            }
        }
    }
    for kk in split..kd {
        let mut w = [[0f32; PANEL]; P];
        for (q, wq) in w.iter_mut().enumerate() {
            // SAFETY: panel p + q < ⌈C_out/PANEL⌉, kk < K.
            *wq = unsafe {
                (wp.add(((p + q) * kd + kk) * PANEL) as *const [f32; PANEL]).read_unaligned()
            };
        }
        for (m, am) in acc.iter_mut().enumerate() {
            // SAFETY: row r + m < rows, kk < K.
            let xv = unsafe { *xp.add((r + m) * kd + kk) };
            for (aq, wq) in am.iter_mut().zip(&w) {
                for l in 0..PANEL {
                    aq[l] = madd::<F>(xv, wq[l], aq[l]);
                }
            }
        }
    }
    for (m, am) in acc.iter().enumerate() {
        for (q, aq) in am.iter().enumerate() {
            let c0 = (p + q) * PANEL;
            let n = PANEL.min(cout - c0);
            let at = (r + m) * cout + c0;
            let bias: &[f32; PANEL] = d.panel_bias[c0..c0 + PANEL].try_into().expect("panel");
            let mut v = [0f32; PANEL];
            for l in 0..PANEL {
                v[l] = act_n::<A>(aq[l] + bias[l]);
            }
            if n == PANEL {
                if let Some(res) = residual {
                    let rv: &[f32; PANEL] = res[at..at + PANEL].try_into().expect("panel");
                    for l in 0..PANEL {
                        v[l] += rv[l];
                    }
                }
                // SAFETY: this tile's row r + m, columns c0..c0 + PANEL.
                unsafe { (y.0.add(at) as *mut [f32; PANEL]).write_unaligned(v) };
            } else {
                for (l, &vl) in v.iter().enumerate().take(n) {
                    let r = residual.map_or(0.0, |res| res[at + l]);
                    // SAFETY: this tile's row r + m, column c0 + l < C_out.
                    unsafe { *y.0.add(at + l) = vl + r };
                }
            }
        }
    }
}

/// Output rows (of one sample) per parallel task of the spatial kernels.
fn rows_per_task(total_rows: usize, work_per_row: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // At least ~64k multiply-adds per task, at most ~4 tasks per thread.
    let by_work = (1usize << 16).div_ceil(work_per_row.max(1));
    by_work.max(total_rows.div_ceil(4 * threads)).max(1)
}

/// `v ← act(v)` with the match outside the loop (so that each arm
/// vectorises). `max`/`min` rather than `clamp`: `clamp`'s compare-and-
/// select lowered to lane-by-lane code on an accumulator tile, spilling it
/// through the stack.
#[inline(always)]
fn activate_row(v: &mut [f32], a: Activation) {
    match a {
        Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Relu6 => v.iter_mut().for_each(|x| *x = x.max(0.0).min(6.0)),
        Activation::HSwish => v
            .iter_mut()
            .for_each(|x| *x = *x * (*x + 3.0).max(0.0).min(6.0) * (1.0 / 6.0)),
    }
}

/// `acc += Σ_i px[i] · w[i, ..]` (`w` is `[px.len(), acc.len()]`).
#[multiversion::multiversion(targets = "simd")]
fn axpy_rows(acc: &mut [f32], px: &[f32], w: &[f32]) {
    let n = acc.len();
    for (i, &v) in px.iter().enumerate() {
        let wr = &w[i * n..][..n];
        acc.iter_mut().zip(wr).for_each(|(a, w)| *a += v * w);
    }
}

/// Channels processed in registers together by the depthwise kernel (one
/// AVX-512 register, two AVX2 ones); a remainder of 8 (channel counts are
/// multiples of 8 in these spaces) or fewer takes a narrower block.
const LANES: usize = 16;

/// Depthwise convolution, channels-last, with the folded bias and the
/// activation: blocks of output channels accumulated in registers over the
/// taps inside the input (no padded copy of it: at batch 16 the copy cost
/// more than the bounds arithmetic it saves).
fn depthwise(x: &[f32], xs: Shape, d: &Depthwise, y: &mut [f32], par: Par<'_>) {
    let o = d.out_shape(xs);
    let c = d.c;
    let row_len = o.w * c;
    let per = rows_per_task(o.n * o.h, row_len * d.k * d.k);
    for_each_chunk(par, &mut y[..o.len()], row_len * per, |t, rows| {
        // The task's rows, split where a sample ends.
        let (mut g, mut rest) = (t * per, rows);
        while !rest.is_empty() {
            let n = (o.h - g % o.h).min(rest.len() / row_len);
            let (now, after) = rest.split_at_mut(n * row_len);
            depthwise_rows(x, xs, d, g / o.h, g % o.h, now, None);
            (g, rest) = (g + n, after);
        }
    });
}

/// [`depthwise`] of one sample that also leaves in `sums` the per-task sums
/// of each output channel, `[tasks, C]` (their sum over tasks is the
/// channel's sum over the map), each task's rows summed right after it
/// wrote them; returns the task count.
fn depthwise_summed(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    y: &mut [f32],
    sums: &mut Vec<f32>,
    par: Par<'_>,
) -> usize {
    let o = d.out_shape(xs);
    let c = d.c;
    assert!(o.n == 1 && c > 0 && x.len() >= xs.len());
    let row_len = o.w * c;
    let per = rows_per_task(o.h, row_len * d.k * d.k);
    let tasks = o.h.div_ceil(per);
    let at = Out(grow(sums, tasks * c).as_mut_ptr());
    for_each_chunk(par, &mut y[..o.len()], row_len * per, |t, rows| {
        let at = at;
        // SAFETY: task `t` (< tasks) alone writes row `t` of the sums.
        let acc = unsafe { std::slice::from_raw_parts_mut(at.0.add(t * c), c) };
        acc.fill(0.0);
        depthwise_rows(x, xs, d, 0, t * per, rows, Some(acc));
    });
    tasks
}

/// `acc[c] += Σ_p row[p, c]` over a channels-last run of pixels.
#[multiversion::multiversion(targets = "simd")]
fn add_pixels(acc: &mut [f32], row: &[f32]) {
    for px in row.chunks_exact(acc.len()) {
        acc.iter_mut().zip(px).for_each(|(a, v)| *a += v);
    }
}

/// Output pixels accumulated together by the depthwise kernel: one chain
/// of additions per pixel would wait on the previous addition's latency
/// at every tap; [`DW_TILE`] independent chains keep the vector units busy.
const DW_TILE: usize = 4;

/// Where one output row's channel block reads: the sample's first value of
/// the block, the output row and its taps `ky0..ky1` inside the input.
#[derive(Clone, Copy)]
struct RowAt {
    base: usize,
    oy: usize,
    ky0: usize,
    ky1: usize,
    c0: usize,
}

impl RowAt {
    /// Output row `oy` of sample `ni`, channels from `c0`, for the input
    /// shape `xs` of `d`.
    fn new(xs: Shape, d: &Depthwise, ni: usize, oy: usize, c0: usize) -> RowAt {
        let (ky0, ky1) = taps(oy, d.s, d.k / 2, d.k, xs.h);
        RowAt {
            base: ni * xs.h * xs.w * d.c + c0,
            oy,
            ky0,
            ky1,
            c0,
        }
    }
}

/// `W` consecutive values of `v` from `at`.
///
/// # Safety
/// `at + W <= v.len()`.
#[inline(always)]
unsafe fn load<const W: usize>(v: &[f32], at: usize) -> [f32; W] {
    debug_assert!(at + W <= v.len());
    // SAFETY: in bounds per the caller's contract; unaligned read of f32s.
    unsafe { (v.as_ptr().add(at) as *const [f32; W]).read_unaligned() }
}

/// `a · b + c`, one fused instruction where the CPU has FMA (`F`), else
/// a multiply and an add (a fused call without hardware FMA is a slow
/// library routine).
#[inline(always)]
fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// The pixels of an output row whose taps all lie inside the input:
/// `lo..hi` (ox·s − p ≥ 0 and ox·s − p + k − 1 ≤ w − 1), and `hi` cut down
/// to whole [`DW_TILE`]s.
fn interior(xs: Shape, d: &Depthwise, ow: usize) -> (usize, usize) {
    let (k, s, p) = (d.k, d.s, d.k / 2);
    if !matches!(k, 3 | 5 | 7) {
        // No tile kernel for other sizes: every pixel takes the per-pixel
        // path (exact, slower).
        return (0, 0);
    }
    let lo = p.div_ceil(s).min(ow);
    let hi = if xs.w + p >= k {
        ((xs.w + p - k) / s + 1).min(ow)
    } else {
        0
    }
    .max(lo);
    (lo, lo + (hi - lo) / DW_TILE * DW_TILE)
}

/// Channels `c0..c0 + W` of the interior pixels of one output row,
/// [`DW_TILE`] pixels at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_block<const W: usize, const F: bool>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    ni: usize,
    oy: usize,
    c0: usize,
    (lo, hi): (usize, usize),
    row: &mut [f32],
) {
    let at = RowAt::new(xs, d, ni, oy, c0);
    let mut ox = lo;
    while ox + DW_TILE <= hi {
        // SAFETY: interior pixels have all k taps inside the input, and
        // depthwise_row_impl checked the sizes.
        unsafe { dw_tile::<W, F>(x, xs, d, at, ox, row) };
        ox += DW_TILE;
    }
}

/// [`dw_tile_k`] for the kernel size of `d`.
///
/// # Safety
/// As [`dw_tile_k`].
#[inline(always)]
unsafe fn dw_tile<const W: usize, const F: bool>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    at: RowAt,
    ox: usize,
    row: &mut [f32],
) {
    // SAFETY: forwarded.
    unsafe {
        match d.k {
            3 => dw_tile_k::<W, F, 3, DW_TILE>(x, xs, d, at, ox, row),
            5 => dw_tile_k::<W, F, 5, DW_TILE>(x, xs, d, at, ox, row),
            7 => dw_tile_k::<W, F, 7, DW_TILE>(x, xs, d, at, ox, row),
            k => unreachable!("interior() is empty for kernel size {k}"),
        }
    }
}

/// `T` interior pixels from `ox` for a kernel size `K` known at compile
/// time: the tap loops unroll, the row's `K` weight vectors stay in
/// registers, and at stride 1 each input vector is loaded once for the
/// `K` taps and pixels that share it (a sliding window of `T + K − 1`
/// vectors instead of `T · K` loads). The portable form of
/// [`dw_tile_avx512`], which every channel block takes where AVX-512 is.
///
/// # Safety
/// `x` holds the input of shape `xs`, `row` one output row of `d`, and the
/// pixels `ox..ox + DW_TILE` are interior (all `K` taps inside the input).
#[inline(always)]
unsafe fn dw_tile_k<const W: usize, const F: bool, const K: usize, const T: usize>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    at: RowAt,
    ox: usize,
    row: &mut [f32],
) {
    // The window's longest length, 8 + 7 − 1.
    const WIN: usize = 14;
    const { assert!(T + K - 1 <= WIN) };
    let (s, p, c) = (d.s, K / 2, d.c);
    // SAFETY (all loads): the caller's contract; `w` is `[K·K, C]`.
    let bias: [f32; W] = unsafe { load(&d.b, at.c0) };
    let mut acc = [bias; T];
    for ky in at.ky0..at.ky1 {
        let xrow = at.base + (at.oy * s + ky - p) * xs.w * c;
        let wrow = ky * K * c + at.c0;
        let mut wv = [[0f32; W]; K];
        for (kx, w) in wv.iter_mut().enumerate() {
            *w = unsafe { load(&d.w, wrow + kx * c) };
        }
        if s == 1 {
            let mut win = [[0f32; W]; WIN];
            for (j, v) in win.iter_mut().enumerate().take(T + K - 1) {
                *v = unsafe { load(x, xrow + (ox + j - p) * c) };
            }
            for (kx, w) in wv.iter().enumerate() {
                for (t, a) in acc.iter_mut().enumerate() {
                    for l in 0..W {
                        a[l] = madd::<F>(win[t + kx][l], w[l], a[l]);
                    }
                }
            }
        } else {
            for (kx, w) in wv.iter().enumerate() {
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv: [f32; W] = unsafe { load(x, xrow + ((ox + t) * s + kx - p) * c) };
                    for l in 0..W {
                        a[l] = madd::<F>(xv[l], w[l], a[l]);
                    }
                }
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        row[(ox + t) * c + at.c0..][..W].copy_from_slice(a);
    }
}

/// [`dw_tile_k`] for 16 channels (the lanes of `mask` with `M`) and `T`
/// pixels in AVX-512 registers, stride `S`: `T` accumulators, the row's
/// `K` weight vectors, and each input vector loaded once for every pixel of
/// the tile that reads it — a window of `(T − 1)·S + K` columns per tap row
/// (at stride 2 and k = 7 that is 21 loads for 56 multiply-adds, against
/// one load per multiply-add before). With `EDGE` the tile may reach over
/// the left or right border (or past the row's end, for a map narrower
/// than the tile): the columns outside the input are skipped (a border
/// pixel alone, 4 blocks of channels at 2 loads per multiply-add, was
/// ~30% of the depthwise time at 224 px, `perf annotate`). With `M` the
/// loads and stores are masked: the last block of a channel count that is
/// not a multiple of 16 (72, 120 in the MobileNetV3 spaces) takes the same
/// tile, no narrower path.
///
/// # Safety
/// As [`dw_tile_k`] (without `EDGE`: interior pixels), on a CPU with
/// AVX-512F; pixel `t` of the tile (output pixel `ox + t`) is stored at
/// `out + t·ostride`, 16 values (those of `mask` with `M`), which must be
/// writable; without `M` all 16 channels from `at.c0` exist, with `M`
/// those of `mask`. The tile stores the activated values; with `sums`
/// `(acc, from, to)` it also adds pixels `from..to` of them to the 16
/// values (those of `mask`) at `acc`.
///
/// Inlined into [`dw_rows_ks`], whose AVX-512 target the intrinsics
/// then compile for: as a call of its own (a `target_feature` function
/// cannot be forced inline) the argument passing cost a store-forwarding
/// stall per tile, ~19% of a k = 3 layer's time (`perf annotate`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_tile_avx512<
    const K: usize,
    const S: usize,
    const T: usize,
    const EDGE: bool,
    const M: bool,
>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    at: RowAt,
    ox: usize,
    mask: u16,
    (out, ostride): (*mut f32, usize),
    sums: Option<(*mut f32, usize, usize)>,
) {
    use std::arch::x86_64::*;
    const { assert!(T >= 1 && T <= 8 && S >= 1) };
    let (p, c) = (K / 2, d.c);
    debug_assert!(if M {
        at.c0 + mask.count_ones() as usize <= c
    } else {
        at.c0 + LANES <= c
    });
    // SAFETY (all loads and stores): the caller's contract — the taps
    // read are inside the input, `w` `[K·K, C]`, `b` `[C]`, `out` the
    // tile's pixels; masked lanes are neither read nor written (AVX-512
    // masked accesses do not fault on them).
    unsafe {
        let ld = |ptr: *const f32| {
            if M {
                _mm512_maskz_loadu_ps(mask, ptr)
            } else {
                _mm512_loadu_ps(ptr)
            }
        };
        let bias = ld(d.b.as_ptr().add(at.c0));
        let mut acc = [bias; T];
        for ky in at.ky0..at.ky1 {
            let xrow = x.as_ptr().add(at.base + (at.oy * S + ky - p) * xs.w * c);
            let wrow = d.w.as_ptr().add(ky * K * c + at.c0);
            let mut wv = [_mm512_setzero_ps(); K];
            for (kx, w) in wv.iter_mut().enumerate() {
                *w = ld(wrow.add(kx * c));
            }
            // Column J of the window is tap J − S·t of pixel t, unrolled by
            // the macro (up to the longest window, 7·2 + 7 at T = 8, S = 2,
            // K = 7; the conditions fold away): as loops, LLVM left the
            // stride-2 windows rolled, with the accumulators and weights
            // indexed in memory.
            seq_macro::seq!(J in 0..21 {
                if J < (T - 1) * S + K {
                    let ix = (ox * S + J) as isize - p as isize;
                    if !EDGE || (ix >= 0 && (ix as usize) < xs.w) {
                        let v = ld(xrow.offset(ix * c as isize));
                        seq_macro::seq!(U in 0..8 {
                            if U < T && J >= S * U && J - S * U < K {
                                acc[U] = _mm512_fmadd_ps(v, wv[J - S * U], acc[U]);
                            }
                        });
                    }
                }
            });
        }
        let mut sum = _mm512_setzero_ps();
        let (from, to) = sums.map_or((0, 0), |(_, f, t)| (f, t));
        for (t, a) in acc.iter().enumerate() {
            let v = act512(*a, Some(d.act));
            let o = out.add(t * ostride);
            if M {
                _mm512_mask_storeu_ps(o, mask, v);
            } else {
                _mm512_storeu_ps(o, v);
            }
            if t >= from && t < to {
                sum = _mm512_add_ps(sum, v);
            }
        }
        if let Some((acc, _, _)) = sums {
            let now = _mm512_maskz_loadu_ps(mask, acc);
            _mm512_mask_storeu_ps(acc, mask, _mm512_add_ps(now, sum));
        }
    }
}

/// One pixel `ox` (taps `kx0..kx1`), channels `at.c0..at.c0 + B·W`: `B`
/// blocks of `W` lanes, `B` independent chains — a border pixel has no
/// neighbours to tile with (at 7×7 and k = 7 every pixel is one).
///
/// # Safety
/// `x` holds the input of shape `xs`, `row` one output row of `d`, and the
/// taps `kx0..kx1` (and `at.ky0..at.ky1`) lie inside the input.
#[inline(always)]
unsafe fn dw_pixel<const W: usize, const B: usize, const F: bool>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    at: RowAt,
    ox: usize,
    (kx0, kx1): (usize, usize),
    row: &mut [f32],
) {
    let (k, s, p, c) = (d.k, d.s, d.k / 2, d.c);
    let mut acc = [[0f32; W]; B];
    for (b, a) in acc.iter_mut().enumerate() {
        // SAFETY (all loads): the caller's contract.
        *a = unsafe { load(&d.b, at.c0 + b * W) };
    }
    for ky in at.ky0..at.ky1 {
        let xrow = at.base + (at.oy * s + ky - p) * xs.w * c;
        let wrow = ky * k * c + at.c0;
        for kx in kx0..kx1 {
            let ix = ox * s + kx - p;
            for (b, a) in acc.iter_mut().enumerate() {
                let wv: [f32; W] = unsafe { load(&d.w, wrow + kx * c + b * W) };
                let xv: [f32; W] = unsafe { load(x, xrow + ix * c + b * W) };
                for l in 0..W {
                    a[l] = madd::<F>(xv[l], wv[l], a[l]);
                }
            }
        }
    }
    for (b, a) in acc.iter().enumerate() {
        row[ox * c + at.c0 + b * W..][..W].copy_from_slice(a);
    }
}

/// Every channel of the border pixel `ox`, four blocks at a time.
#[inline(always)]
fn dw_border_pixel<const F: bool>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    ni: usize,
    oy: usize,
    ox: usize,
    row: &mut [f32],
) {
    let (k, s, p, c) = (d.k, d.s, d.k / 2, d.c);
    let kx = taps(ox, s, p, k, xs.w);
    let at = |c0: usize| RowAt::new(xs, d, ni, oy, c0);
    let mut c0 = 0;
    // SAFETY: `taps` keeps every tap inside the input; depthwise_row
    // checked the sizes.
    unsafe {
        while c0 + 4 * LANES <= c {
            dw_pixel::<LANES, 4, F>(x, xs, d, at(c0), ox, kx, row);
            c0 += 4 * LANES;
        }
        while c0 + LANES <= c {
            dw_pixel::<LANES, 1, F>(x, xs, d, at(c0), ox, kx, row);
            c0 += LANES;
        }
        if c0 + 8 <= c {
            dw_pixel::<8, 1, F>(x, xs, d, at(c0), ox, kx, row);
            c0 += 8;
        }
        while c0 < c {
            dw_pixel::<1, 1, F>(x, xs, d, at(c0), ox, kx, row);
            c0 += 1;
        }
    }
}

#[inline(always)]
fn depthwise_row_impl<const F: bool>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    ni: usize,
    oy: usize,
    row: &mut [f32],
) {
    let c = d.c;
    // What the unchecked loads rely on.
    assert!(ni < xs.n && xs.c == c && x.len() >= xs.len() && row.len() % c.max(1) == 0);
    assert!(d.w.len() == d.k * d.k * c && d.b.len() == c);
    let ow = row.len() / c.max(1);
    let (lo, hi) = interior(xs, d, ow);
    let mut c0 = 0;
    while c0 + LANES <= c {
        dw_block::<LANES, F>(x, xs, d, ni, oy, c0, (lo, hi), row);
        c0 += LANES;
    }
    if c0 + 8 <= c {
        dw_block::<8, F>(x, xs, d, ni, oy, c0, (lo, hi), row);
        c0 += 8;
    }
    while c0 < c {
        dw_block::<1, F>(x, xs, d, ni, oy, c0, (lo, hi), row);
        c0 += 1;
    }
    for ox in (0..lo).chain(hi..ow) {
        dw_border_pixel::<F>(x, xs, d, ni, oy, ox, row);
    }
    activate_row(row, d.act);
}

/// Every channel and pixel of the output rows `oy0..` of sample `ni` that
/// `rows` holds (whole rows), activated: blocks of 16 channels (the last
/// one masked), each block over all the rows before the next block (the
/// block's `k` input rows then stay in L1 from one output row to the
/// next). Each row goes in tiles of 8 pixels — the last tile
/// ends at the row's end, overlapping the one before (its pixels are
/// written twice with the same values) — or, for a row narrower than 8,
/// one tile of 7 (the 7×7 maps at 224 px) or of 8 reaching past the row's
/// end, whose extra pixels are not stored. With `sums` (`[C]`), adds the
/// rows' per-channel sums to it.
///
/// One function per kernel size `K` and stride `S`, with its tiles
/// inlined. (All six pairs' tiles in one function, once unrolled, ran the
/// stride-1 layers at 27 instead of 34 GMAC/s; split, at 43–50, and
/// stride 2 at 23–25 instead of 16.)
///
/// # Safety
/// A CPU with AVX-512F; `x`, `xs`, `d`, `ni`, `rows`, `sums` as
/// [`depthwise_rows`] checks them, `rows` whole output rows from `oy0`,
/// `d.k == K`, `d.s == S`, `sums` at least `C` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dw_rows_ks<const K: usize, const S: usize>(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    ni: usize,
    oy0: usize,
    rows: &mut [f32],
    mut sums: Option<&mut [f32]>,
) {
    let (k, s, p, c) = (K, S, K / 2, d.c);
    let ow = d.out_shape(xs).w;
    debug_assert!(d.k == K && d.s == S);
    let row_len = ow * c;
    // One tile: its width, border and mask as constants too (the loops
    // unroll).
    macro_rules! tile {
        ($t:literal, $edge:literal, $m:literal, $at:expr, $o:expr, $mask:expr, $out:expr, $sum:expr) => {
            dw_tile_avx512::<K, S, $t, $edge, $m>(x, xs, d, $at, $o, $mask, $out, $sum)
        };
    }
    // A row of 1–6 pixels: an 8-pixel tile into this scratch, copied back
    // for the pixels that exist.
    let mut short = [0f32; 8 * LANES];
    // Bands of a few rows, each block over the band's rows: a task's
    // whole range (224 rows at batch 16) block by block read the input
    // again from L3 for every block (0.92× at 224 px, batch 16).
    const BAND: usize = 4;
    for (bi, band) in rows.chunks_mut(BAND * row_len).enumerate() {
        for c0 in (0..c).step_by(LANES) {
            let lanes = (c - c0).min(LANES);
            let mask = ((1u32 << lanes) - 1) as u16;
            let masked = lanes < LANES;
            let acc = sums.as_deref_mut().map(|v| v[c0..].as_mut_ptr());
            for (r, row) in band.chunks_exact_mut(row_len).enumerate() {
                let at = RowAt::new(xs, d, ni, oy0 + bi * BAND + r, c0);
                // Where the tile at pixel `o` stores.
                macro_rules! px {
                    ($o:expr) => {
                        (row.as_mut_ptr().add($o * c + c0), c)
                    };
                }
                // SAFETY (the tiles): the caller's contract; tiles not inside
                // skip the columns outside the input, masked ones the channels
                // past `c`; each tile's pixels lie in `row` (or `short`).
                unsafe {
                    if ow == 7 {
                        let sum = acc.map(|a| (a, 0, 7));
                        match masked {
                            false => tile!(7, true, false, at, 0, mask, px!(0), sum),
                            true => tile!(7, true, true, at, 0, mask, px!(0), sum),
                        }
                        continue;
                    }
                    if ow < 8 {
                        let to = (short.as_mut_ptr(), LANES);
                        let sum = acc.map(|a| (a, 0, ow));
                        match masked {
                            false => tile!(8, true, false, at, 0, mask, to, sum),
                            true => tile!(8, true, true, at, 0, mask, to, sum),
                        }
                        for (t, v) in short.chunks_exact(LANES).take(ow).enumerate() {
                            row[t * c + c0..][..lanes].copy_from_slice(&v[..lanes]);
                        }
                        continue;
                    }
                    let mut ox = 0;
                    loop {
                        let o = ox.min(ow - 8);
                        let inside = o * s >= p && (o + 7) * s + k - p <= xs.w;
                        // The last tile's pixels before `ox` were summed by
                        // the tile before.
                        let sum = acc.map(|a| (a, ox - o, 8));
                        match (inside, masked) {
                            (true, false) => tile!(8, false, false, at, o, mask, px!(o), sum),
                            (false, false) => tile!(8, true, false, at, o, mask, px!(o), sum),
                            (true, true) => tile!(8, false, true, at, o, mask, px!(o), sum),
                            (false, true) => tile!(8, true, true, at, o, mask, px!(o), sum),
                        }
                        if o + 8 == ow {
                            break;
                        }
                        ox += 8;
                    }
                }
            }
        }
    }
}

/// Output rows `oy0..` of sample `ni` (`rows`, whole output rows),
/// activated; with `sums` (`[C]`), their per-channel sums added to it.
#[multiversion::multiversion(targets = "simd")]
fn depthwise_rows(
    x: &[f32],
    xs: Shape,
    d: &Depthwise,
    ni: usize,
    oy0: usize,
    rows: &mut [f32],
    sums: Option<&mut [f32]>,
) {
    use multiversion::target::target_cfg_f;
    let ow = d.out_shape(xs).w;
    let c = d.c;
    // What the unchecked loads and stores rely on.
    assert!(ni < xs.n && xs.c == c && x.len() >= xs.len());
    assert!(d.w.len() == d.k * d.k * c && d.b.len() == c);
    assert!(rows.len() % (ow * c).max(1) == 0);
    assert!(oy0 + rows.len() / (ow * c).max(1) <= d.out_shape(xs).h);
    assert!(sums.as_ref().is_none_or(|v| v.len() >= c));
    #[cfg(target_arch = "x86_64")]
    if target_cfg_f!(all(target_feature = "avx512f", target_feature = "fma"))
        && c > 0
        && ow > 0
        && matches!(d.k, 3 | 5 | 7)
        && matches!(d.s, 1 | 2)
    {
        // SAFETY: AVX-512F is there; the sizes are checked above.
        unsafe {
            match (d.k, d.s) {
                (3, 1) => dw_rows_ks::<3, 1>(x, xs, d, ni, oy0, rows, sums),
                (5, 1) => dw_rows_ks::<5, 1>(x, xs, d, ni, oy0, rows, sums),
                (7, 1) => dw_rows_ks::<7, 1>(x, xs, d, ni, oy0, rows, sums),
                (3, _) => dw_rows_ks::<3, 2>(x, xs, d, ni, oy0, rows, sums),
                (5, _) => dw_rows_ks::<5, 2>(x, xs, d, ni, oy0, rows, sums),
                _ => dw_rows_ks::<7, 2>(x, xs, d, ni, oy0, rows, sums),
            }
        }
        return;
    }
    let mut sums = sums;
    for (r, row) in rows.chunks_exact_mut((ow * c).max(1)).enumerate() {
        if target_cfg_f!(target_feature = "fma") {
            depthwise_row_impl::<true>(x, xs, d, ni, oy0 + r, row)
        } else {
            depthwise_row_impl::<false>(x, xs, d, ni, oy0 + r, row)
        }
        if let Some(acc) = sums.as_deref_mut() {
            add_pixels(&mut acc[..c], row);
        }
    }
}

/// Per-sample channel means of a channels-last map, into `out` `[N, C]`
/// (one thread: splitting one sample's pooling cost more in wake-ups
/// than it saved, measured at batch 1).
fn channel_means(x: &[f32], xs: Shape, out: &mut [f32]) {
    let (plane, c) = (xs.h * xs.w, xs.c);
    for (ni, o) in out[..xs.n * c].chunks_mut(c.max(1)).enumerate() {
        channel_mean(&x[ni * plane * c..][..plane * c], o);
    }
}

/// Means over the pixels of one channels-last sample, `out` `[C]`.
#[multiversion::multiversion(targets = "simd")]
fn channel_mean(sample: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    let c = out.len().max(1);
    for px in sample.chunks_exact(c) {
        out.iter_mut().zip(px).for_each(|(a, v)| *a += v);
    }
    let inv = 1.0 / (sample.len() / c).max(1) as f32;
    out.iter_mut().for_each(|v| *v *= inv);
}

/// `x[p, c] *= g[c]` over a run of pixels.
#[multiversion::multiversion(targets = "simd")]
fn scale_pixels(x: &mut [f32], g: &[f32]) {
    for px in x.chunks_exact_mut(g.len()) {
        px.iter_mut().zip(g).for_each(|(v, g)| *v *= g);
    }
}

/// Global average pooling: `[N, H, W, C]` → `[N, C]`.
fn pool(x: &[f32], xs: Shape, y: &mut [f32]) {
    channel_means(x, xs, y);
}

/// Scales each sample's channels by its SE gate, in place.
/// `sums`: one sample's per-task channel sums `[tasks, C]` from
/// [`depthwise_summed`], or none (the means are computed here).
fn squeeze_excite(
    x: &mut [f32],
    xs: Shape,
    se: &Se,
    sums: Option<&[f32]>,
    scratch: &mut Vec<f32>,
    par: Par<'_>,
) {
    let (c, s) = (se.c, se.s);
    let buf = grow(scratch, xs.n * (2 * c + s));
    let (means, rest) = buf.split_at_mut(xs.n * c);
    let (hidden, gates) = rest.split_at_mut(xs.n * s);
    match sums {
        Some(sums) => {
            assert!(xs.n == 1 && sums.len() % c.max(1) == 0);
            let inv = 1.0 / (xs.h * xs.w).max(1) as f32;
            means[..c].fill(0.0);
            for row in sums.chunks_exact(c) {
                add_pixels(&mut means[..c], row);
            }
            means[..c].iter_mut().for_each(|v| *v *= inv);
        }
        None => channel_means(x, xs, means),
    }
    for ni in 0..xs.n {
        let m = &means[ni * c..][..c];
        let h = &mut hidden[ni * s..][..s];
        h.copy_from_slice(&se.b1);
        axpy_rows(h, m, &se.w1);
        h.iter_mut().for_each(|v| *v = v.max(0.0));
        let g = &mut gates[ni * c..][..c];
        g.copy_from_slice(&se.b2);
        axpy_rows(g, h, &se.w2);
        g.iter_mut().for_each(|v| *v = h_sigmoid(*v));
    }
    let plane = xs.h * xs.w;
    let gates = &*gates;
    let per = rows_per_task(xs.n * plane, c);
    for_each_chunk(par, &mut x[..xs.len()], per * c, |t, chunk| {
        // A chunk may straddle samples: scale each sample's part by its gates.
        let mut p0 = t * per;
        let mut rest = chunk;
        while !rest.is_empty() {
            let ni = p0 / plane;
            let take = ((ni + 1) * plane - p0).min(rest.len() / c);
            let (now, later) = rest.split_at_mut(take * c);
            scale_pixels(now, &gates[ni * c..][..c]);
            rest = later;
            p0 += take;
        }
    });
}

/// An extracted subnet run by the fastest engine its backend allows: the
/// compiled [`Plan`] on host backends, the backend's own operators
/// otherwise. Same logits either way (up to rounding).
pub struct Runner<B: OfaBackend> {
    net: Subnet<B>,
    /// The plan and its workspaces (one per sample group).
    plan: Option<(Plan, Mutex<Vec<Workspace>>)>,
}

impl<B: OfaBackend> Runner<B> {
    pub fn new(net: Subnet<B>) -> Self {
        let plan = B::host_engine().then(|| (Plan::from_subnet(&net), Mutex::default()));
        Runner { net, plan }
    }

    /// Whether the host engine runs it (else the backend's operators).
    pub fn uses_engine(&self) -> bool {
        self.plan.is_some()
    }

    pub fn subnet(&self) -> &Subnet<B> {
        &self.net
    }

    /// `x: [N, C, R, R]` → logits `[N, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match &self.plan {
            Some((plan, ws)) => {
                let [n, _, r, _] = x.dims();
                let device = x.device();
                let data = host(x);
                let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
                let logits = plan.forward_samples(&mut ws, &data, n, r);
                let classes = logits.len() / n.max(1);
                Tensor::from_data(TensorData::new(logits, [n, classes]), &device)
            }
            None => self.net.forward(x),
        }
    }

    /// Records a [`Breakdown`] of the host engine's passes from now on.
    pub fn record_breakdown(&self) {
        if let Some((_, ws)) = &self.plan {
            let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
            if ws.is_empty() {
                ws.push(Workspace::default());
            }
            ws[0].breakdown = Some(Breakdown::default());
        }
    }

    /// What [`Runner::record_breakdown`] recorded.
    pub fn breakdown(&self) -> Option<Breakdown> {
        let (_, ws) = self.plan.as_ref()?;
        let ws = ws.lock().unwrap_or_else(|e| e.into_inner());
        ws.first()?.breakdown.clone()
    }

    /// Logits of a host input `[N, C, R, R]` (timing: no tensor conversion).
    pub fn forward_host(&self, x: &[f32], n: usize) -> Vec<f32> {
        let r = self.net.arch.r;
        match &self.plan {
            Some((plan, ws)) => {
                let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
                plan.forward_samples(&mut ws, x, n, r)
            }
            None => {
                let c = self.net.space.in_channels;
                let device = self.net.classifier.weight.device();
                let t =
                    Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), [n, c, r, r]), &device);
                host(self.net.forward(t))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, r: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| r.random::<f32>() * 2.0 - 1.0).collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "{what}: element {i}: {x} vs {y}"
            );
        }
    }

    /// Channels-last value at (n, y, x, c) of a zero-padded input.
    fn at(x: &[f32], s: Shape, n: usize, y: isize, xx: isize, c: usize) -> f32 {
        if y < 0 || xx < 0 || y >= s.h as isize || xx >= s.w as isize {
            return 0.0;
        }
        x[((n * s.h + y as usize) * s.w + xx as usize) * s.c + c]
    }

    fn act_opt(v: f32, a: Option<Activation>) -> f32 {
        match a {
            None => v,
            Some(Activation::Relu) => v.max(0.0),
            Some(Activation::Relu6) => v.min(6.0).max(0.0),
            Some(Activation::HSwish) => v * ((v + 3.0).min(6.0).max(0.0)) / 6.0,
        }
    }

    const ACTS: [Option<Activation>; 4] = [
        None,
        Some(Activation::Relu),
        Some(Activation::Relu6),
        Some(Activation::HSwish),
    ];

    /// The kernels on a pool of `threads`, their loops as rayon loops or
    /// (`team`) on a spinning team: with more than one thread, every way
    /// of splitting the work (rows, output channels, tasks) is exercised.
    fn on_threads<T: Send>(threads: usize, team: bool, f: impl FnOnce(Par<'_>) -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| if team { with_team(f) } else { f(Par::Pool) })
    }

    #[test]
    fn depthwise_matches_naive_convolution() {
        let mut r = ChaCha8Rng::seed_from_u64(3);
        for case in 0..80 {
            let c = r.random_range(1..=40);
            // Up to 24 wide: two 8-pixel tiles of interior at k = 7.
            let (h, w) = (r.random_range(1..=13), r.random_range(1..=24));
            let k = [3, 5, 7][case % 3];
            let s = [1, 2][(case / 3) % 2];
            let n = [1, 3][(case / 6) % 2];
            let a = [Activation::Relu, Activation::Relu6, Activation::HSwish][case % 3];
            let xs = Shape { n, h, w, c };
            let x = random(xs.len(), &mut r);
            let d = Depthwise {
                k,
                s,
                c,
                w: random(k * k * c, &mut r),
                b: random(c, &mut r),
                act: a,
            };
            let o = d.out_shape(xs);
            let mut y = vec![f32::NAN; o.len()];
            on_threads(1 + case % 3, case % 2 == 0, |par| {
                depthwise(&x, xs, &d, &mut y, par)
            });
            if n == 1 {
                // The summing form: the same output, and per-task sums
                // that add up to each channel's sum over the map.
                let mut y2 = vec![f32::NAN; o.len()];
                let mut sums = vec![f32::NAN; 7];
                let tasks = on_threads(1 + case % 3, case % 2 == 1, |par| {
                    depthwise_summed(&x, xs, &d, &mut y2, &mut sums, par)
                });
                assert_eq!(y, y2, "case {case}: summing depthwise");
                let got: Vec<f32> = (0..c)
                    .map(|cc| (0..tasks).map(|t| sums[t * c + cc]).sum())
                    .collect();
                let want: Vec<f32> = (0..c)
                    .map(|cc| y.iter().skip(cc).step_by(c).sum())
                    .collect();
                close(&got, &want, &format!("case {case}: channel sums"));
            }
            let p = (k / 2) as isize;
            let mut want = vec![0f32; o.len()];
            for ni in 0..n {
                for oy in 0..o.h {
                    for ox in 0..o.w {
                        for cc in 0..c {
                            let mut v = d.b[cc];
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - p;
                                    let ix = (ox * s + kx) as isize - p;
                                    v += at(&x, xs, ni, iy, ix, cc) * d.w[(ky * k + kx) * c + cc];
                                }
                            }
                            want[((ni * o.h + oy) * o.w + ox) * c + cc] = act_opt(v, Some(a));
                        }
                    }
                }
            }
            close(&y, &want, &format!("depthwise {xs:?} k{k} s{s}"));
            // The portable kernels, which CPUs without AVX-512 take (with
            // and without FMA), row by row.
            for fused in [false, true] {
                let mut y3 = vec![f32::NAN; o.len()];
                for (g, row) in y3.chunks_mut(o.w * c).enumerate() {
                    if fused {
                        depthwise_row_impl::<true>(&x, xs, &d, g / o.h, g % o.h, row);
                    } else {
                        depthwise_row_impl::<false>(&x, xs, &d, g / o.h, g % o.h, row);
                    }
                }
                close(
                    &y3,
                    &want,
                    &format!("portable depthwise {xs:?} k{k} s{s} fma {fused}"),
                );
            }
        }
    }

    #[test]
    fn dense_conv_matches_naive_convolution() {
        let mut r = ChaCha8Rng::seed_from_u64(4);
        for case in 0..48 {
            let (cin, cout) = (r.random_range(1..=5), r.random_range(1..=40));
            // Up to 20 wide: the direct stem kernel's 8-pixel tiles.
            let (h, w) = (r.random_range(1..=11), r.random_range(1..=20));
            let k = [1, 3, 5, 7][case % 4];
            let s = [1, 2][(case / 4) % 2];
            let n = [1, 3][(case / 8) % 2];
            let xs = Shape { n, h, w, c: cin };
            let x = random(xs.len(), &mut r);
            let (wt, bias) = (random(k * k * cin * cout, &mut r), random(cout, &mut r));
            let d = Dense::new([k, s, cin, cout], wt.clone(), bias.clone(), ACTS[case % 4]);
            let o = d.out_shape(xs);
            let mut y = vec![f32::NAN; o.len()];
            on_threads(1 + case % 2, case % 4 < 2, |par| {
                dense(&x, xs, &d, None, &mut y, &mut Vec::new(), par)
            });
            let p = (k / 2) as isize;
            let mut want = vec![0f32; o.len()];
            for ni in 0..n {
                for oy in 0..o.h {
                    for ox in 0..o.w {
                        for co in 0..cout {
                            let mut v = bias[co];
                            for ky in 0..k {
                                for kx in 0..k {
                                    for ci in 0..cin {
                                        let iy = (oy * s + ky) as isize - p;
                                        let ix = (ox * s + kx) as isize - p;
                                        v += at(&x, xs, ni, iy, ix, ci)
                                            * wt[((ky * k + kx) * cin + ci) * cout + co];
                                    }
                                }
                            }
                            want[((ni * o.h + oy) * o.w + ox) * cout + co] = act_opt(v, d.act);
                        }
                    }
                }
            }
            close(&y, &want, &format!("dense {xs:?} → {cout} k{k} s{s}"));
        }
    }

    #[test]
    fn pointwise_tiles_match_naive_product_with_residual() {
        let mut r = ChaCha8Rng::seed_from_u64(5);
        // (rows, cin, cout): one tile (small), row tiles, channel tiles
        // (few rows, many outputs, not a multiple of the 16-channel step).
        for (case, &(rows, cin, cout)) in [
            (7, 5, 9),
            (600, 40, 24),
            (997, 17, 33),
            (49, 96, 1000),
            (13, 200, 203),
            (1, 1280, 1000),
        ]
        .iter()
        .enumerate()
        {
            let x = random(rows * cin, &mut r);
            let res = random(rows * cout, &mut r);
            let (wt, bias) = (random(cin * cout, &mut r), random(cout, &mut r));
            let d = Dense::new([1, 1, cin, cout], wt.clone(), bias.clone(), ACTS[case % 4]);
            for residual in [false, true] {
                for threads in [1, 2, 3] {
                    let mut y = vec![f32::NAN; rows * cout];
                    on_threads(threads, residual, |par| {
                        pointwise(&x, rows, &d, residual.then_some(&res[..]), &mut y, par)
                    });
                    let mut want = vec![0f32; rows * cout];
                    for i in 0..rows {
                        for o in 0..cout {
                            let v: f32 = (0..cin).map(|c| x[i * cin + c] * wt[c * cout + o]).sum();
                            let v = act_opt(v + bias[o], d.act);
                            want[i * cout + o] = v + if residual { res[i * cout + o] } else { 0.0 };
                        }
                    }
                    close(
                        &y,
                        &want,
                        &format!("pointwise {rows}×{cin}→{cout}, {threads} threads"),
                    );
                }
            }
        }
    }

    #[test]
    fn squeeze_excite_matches_hand_computation() {
        let mut r = ChaCha8Rng::seed_from_u64(6);
        let (n, h, w, c, s) = (2, 3, 5, 20, 6);
        let xs = Shape { n, h, w, c };
        let x = random(xs.len(), &mut r);
        let se = Se {
            c,
            s,
            w1: random(c * s, &mut r),
            b1: random(s, &mut r),
            w2: random(s * c, &mut r),
            b2: random(c, &mut r),
        };
        let mut y = x.clone();
        on_threads(2, true, |par| {
            squeeze_excite(&mut y, xs, &se, None, &mut Vec::new(), par)
        });
        for ni in 0..n {
            let mean: Vec<f32> = (0..c)
                .map(|cc| {
                    (0..h * w)
                        .map(|p| x[(ni * h * w + p) * c + cc])
                        .sum::<f32>()
                        / (h * w) as f32
                })
                .collect();
            let hidden: Vec<f32> = (0..s)
                .map(|j| {
                    (se.b1[j] + (0..c).map(|cc| mean[cc] * se.w1[cc * s + j]).sum::<f32>()).max(0.0)
                })
                .collect();
            for cc in 0..c {
                let z = se.b2[cc] + (0..s).map(|j| hidden[j] * se.w2[j * c + cc]).sum::<f32>();
                let g = (z + 3.0).min(6.0).max(0.0) / 6.0;
                for p in 0..h * w {
                    let i = (ni * h * w + p) * c + cc;
                    assert!((y[i] - x[i] * g).abs() <= 1e-5, "sample {ni} channel {cc}");
                }
            }
        }
    }

    #[test]
    fn workspace_is_reused_across_calls() {
        let mut r = ChaCha8Rng::seed_from_u64(7);
        let layer = Layer::MbConv(crate::space::MbConvLayer {
            in_res: 9,
            in_ch: 8,
            out_ch: 8,
            mid: 24,
            expand: true,
            kernel: 5,
            stride: 1,
            se_mid: Some(8),
            act: Activation::HSwish,
            residual: true,
        });
        let (plan, shape) = Plan::for_layer(&layer, 2, 1);
        let x = random(shape.len(), &mut r);
        let mut ws = Workspace::default();
        Plan::load(&mut ws, &x, shape);
        let o1 = plan.run(&mut ws, shape);
        let first: Vec<f32> = ws.bufs[1][..o1.len()].to_vec();
        let ptrs: Vec<*const f32> = ws.bufs.iter().map(|b| b.as_ptr()).collect();
        let o2 = plan.run(&mut ws, shape);
        assert_eq!(o1, o2);
        assert_eq!(
            first,
            ws.bufs[1][..o2.len()].to_vec(),
            "same input, same output"
        );
        let again: Vec<*const f32> = ws.bufs.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(ptrs, again, "no buffer reallocated");
    }
}
