//! Elastic operators: layers that store their largest shape and run any
//! smaller one by using the first channels (and, for depthwise kernels, the
//! centre of the kernel after a learned transformation).

use super::backend::{self, OfaBackend};
use super::{BnStats, Mode, init::Init};
use crate::space::make_divisible;
use burn::module::{Module, Param, ParamId, RunningState};
use burn::tensor::activation::{hard_sigmoid, relu};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, backend::Backend};

pub use backend::activate;

/// `relu6(x + 3) / 6`, the gate of squeeze-excite.
pub fn h_sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    hard_sigmoid(x, 1.0 / 6.0, 0.5)
}

/// A convolution (not depthwise) that uses the first `out` output channels
/// and as many input channels as its input has.
#[derive(Module, Debug)]
pub struct ElasticConv<B: OfaBackend> {
    /// `[out_max, in_max, k, k]`
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
}

impl<B: OfaBackend> ElasticConv<B> {
    /// He (fan-out) initialisation, as the reference `he_fout`.
    pub fn new(
        init: &mut Init,
        in_ch: usize,
        out_ch: usize,
        k: usize,
        stride: usize,
        bias: bool,
        device: &B::Device,
    ) -> Self {
        let std = (2.0 / (k * k * out_ch) as f64).sqrt();
        ElasticConv {
            weight: Param::from_tensor(init.normal([out_ch, in_ch, k, k], std, device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([out_ch], device))),
            stride,
        }
    }

    pub fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    /// The weight slice used for `out` outputs and `inp` inputs.
    pub fn active_weight(&self, out: usize, inp: usize) -> Tensor<B, 4> {
        let [o, i, k, _] = self.weight.dims();
        if o == out && i == inp {
            self.weight.val()
        } else {
            self.weight.val().slice([0..out, 0..inp, 0..k, 0..k])
        }
    }

    pub fn active_bias(&self, out: usize) -> Option<Tensor<B, 1>> {
        self.bias.as_ref().map(|b| {
            if b.dims()[0] == out {
                b.val()
            } else {
                b.val().slice([0..out])
            }
        })
    }

    /// `x: [N, C_in, H, W]` → `[N, out, H', W']`.
    pub fn forward(&self, x: Tensor<B, 4>, out: usize) -> Tensor<B, 4> {
        let inp = x.dims()[1];
        let k = self.kernel();
        if self.bias.is_none() {
            let w = self.active_weight(out, inp);
            return if k == 1 && self.stride == 1 {
                backend::pointwise(x, w)
            } else {
                backend::dense(x, w, self.stride)
            };
        }
        conv2d(
            x,
            self.active_weight(out, inp),
            self.active_bias(out),
            ConvOptions::new([self.stride; 2], [k / 2; 2], [1, 1], 1),
        )
    }
}

/// Depthwise convolution stored at the largest kernel, with one learned
/// kernel transformation matrix per step down (7→5: 25×25, 5→3: 9×9),
/// shared by all channels and initialised to identity (DESIGN §4).
#[derive(Module, Debug)]
pub struct ElasticDepthwise<B: OfaBackend> {
    /// `[C_max, 1, K_max, K_max]`
    pub weight: Param<Tensor<B, 4>>,
    /// `transforms[i]` maps a `kernels[i+1]` kernel's centre to a
    /// `kernels[i]` kernel: shape `[kernels[i]², kernels[i]²]`.
    pub transforms: Vec<Param<Tensor<B, 2>>>,
    pub kernels: Vec<usize>,
    pub stride: usize,
}

impl<B: OfaBackend> ElasticDepthwise<B> {
    pub fn new(
        init: &mut Init,
        channels: usize,
        kernels: &[usize],
        stride: usize,
        device: &B::Device,
    ) -> Self {
        let kmax = *kernels.last().expect("at least one kernel size");
        let std = (2.0 / (kmax * kmax * channels) as f64).sqrt();
        let transforms = kernels[..kernels.len() - 1]
            .iter()
            .map(|&k| Param::from_tensor(Tensor::eye(k * k, device)))
            .collect();
        ElasticDepthwise {
            weight: Param::from_tensor(init.normal([channels, 1, kmax, kmax], std, device)),
            transforms,
            kernels: kernels.to_vec(),
            stride,
        }
    }

    /// The `[channels, 1, k, k]` filter a `k×k` subnet uses: centre crops of
    /// the stored kernel, each step multiplied by its matrix (as the
    /// reference's `F.linear(w, M)`, i.e. `w · Mᵀ` per flattened row).
    pub fn active_filter(&self, channels: usize, k: usize) -> Tensor<B, 4> {
        let [cmax, _, kmax, _] = self.weight.dims();
        let mut w = if channels == cmax {
            self.weight.val()
        } else {
            self.weight
                .val()
                .slice([0..channels, 0..1, 0..kmax, 0..kmax])
        };
        let mut src = kmax;
        for i in (0..self.kernels.len() - 1).rev() {
            if src <= k {
                break;
            }
            let dst = self.kernels[i];
            let start = (src - dst) / 2;
            w = w
                .slice([0..channels, 0..1, start..start + dst, start..start + dst])
                .reshape([channels, dst * dst])
                .matmul(self.transforms[i].val().transpose())
                .reshape([channels, 1, dst, dst]);
            src = dst;
        }
        w
    }

    /// `x: [N, C, H, W]` → `[N, C, H', W']` with a `k×k` kernel.
    pub fn forward(&self, x: Tensor<B, 4>, k: usize) -> Tensor<B, 4> {
        let c = x.dims()[1];
        backend::depthwise(x, self.active_filter(c, k), self.stride)
    }
}

/// Batch normalisation over the first C channels (dynamic BN): training
/// statistics of the active slice update the active slice of the running
/// statistics.
#[derive(Module, Debug)]
pub struct ElasticBn<B: OfaBackend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    pub momentum: f64,
    pub eps: f64,
}

fn first<B: OfaBackend>(t: Tensor<B, 1>, c: usize) -> Tensor<B, 1> {
    if t.dims()[0] == c { t } else { t.slice([0..c]) }
}

/// One BN layer's tensors as a forward pass sees them: the elastic
/// supernet's BN ([`ElasticBn`], of which a narrower input uses the first
/// channels) and the static subnet's burn `BatchNorm` both run through
/// [`BnRef::forward`], so the two cannot drift apart.
pub(super) struct BnRef<'a, B: OfaBackend> {
    pub gamma: &'a Param<Tensor<B, 1>>,
    pub beta: &'a Param<Tensor<B, 1>>,
    pub running_mean: &'a RunningState<Tensor<B, 1>>,
    pub running_var: &'a RunningState<Tensor<B, 1>>,
    pub momentum: f64,
    pub eps: f64,
}

impl<B: OfaBackend> BnRef<'_, B> {
    /// With stored statistics BN is `x · scale + shift` per channel:
    /// `scale = γ / √(var + ε)`, `shift = β − mean · scale`, for the first
    /// `c` channels.
    pub fn eval_affine(&self, c: usize) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let (gamma, beta) = (first(self.gamma.val(), c), first(self.beta.val(), c));
        let mean = first(self.running_mean.value_sync(), c);
        let var = first(self.running_var.value_sync(), c);
        let scale = gamma / (var + self.eps).sqrt();
        let shift = beta - mean * scale.clone();
        (scale, shift)
    }

    /// `x: [N, C, H, W]` → same shape. Running statistics in `Eval`; batch
    /// statistics otherwise, updating the running ones in training and
    /// recording them (by the layer's weight id) in `Calibrate`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let (gamma, beta) = (first(self.gamma.val(), c), first(self.beta.val(), c));
        match mode {
            Mode::Eval => {
                let (scale, shift) = self.eval_affine(c);
                backend::channel_affine(x, scale, shift)
            }
            Mode::Train | Mode::TrainNoDropout => {
                let (y, mean, var) = backend::batch_norm_train(x, gamma, beta, self.eps);
                self.update_running(mean.detach(), var.detach(), n * h * w);
                y
            }
            Mode::Teacher => backend::batch_norm_train(x, gamma, beta, self.eps).0,
            Mode::Sharded(inner, shard) => match inner {
                Mode::Train | Mode::TrainNoDropout | Mode::Teacher => {
                    let (y, mean, var) =
                        backend::batch_norm_train_sharded(x, gamma, beta, self.eps, &shard.comm);
                    if !matches!(inner, Mode::Teacher) {
                        self.update_running(mean.detach(), var.detach(), shard.global * h * w);
                    }
                    y
                }
                // Running statistics, or this process's own calibration.
                other => self.forward(x, *other),
            },
            Mode::Calibrate(stats) => {
                let (y, mean, var) = backend::batch_norm_train(x, gamma, beta, self.eps);
                stats.record(self.gamma.id, mean, var, n);
                y
            }
        }
    }

    /// Momentum update of the first `c` running statistics; like PyTorch,
    /// the running variance uses the unbiased batch variance.
    fn update_running(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>, count: usize) {
        let c = mean.dims()[0];
        let m = self.momentum;
        let unbias = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        for (state, batch) in [(self.running_mean, mean), (self.running_var, var * unbias)] {
            let full = state.value_sync();
            let old = first(full.clone(), c);
            let new = old * (1.0 - m) + batch * m;
            let updated = if full.dims()[0] == c {
                new
            } else {
                full.slice_assign([0..c], new)
            };
            state.update(updated);
        }
    }
}

impl<B: OfaBackend> ElasticBn<B> {
    pub fn new(channels: usize, momentum: f64, eps: f64, device: &B::Device) -> Self {
        ElasticBn {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum,
            eps,
        }
    }

    pub fn channels(&self) -> usize {
        self.gamma.dims()[0]
    }

    /// `x: [N, C, H, W]` → same shape, on the first `C` channels.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode<'_, B>) -> Tensor<B, 4> {
        self.as_ref().forward(x, mode)
    }

    /// [`BnRef::eval_affine`] of the first `c` channels.
    pub fn eval_affine(&self, c: usize) -> (Tensor<B, 1>, Tensor<B, 1>) {
        self.as_ref().eval_affine(c)
    }

    fn as_ref(&self) -> BnRef<'_, B> {
        BnRef {
            gamma: &self.gamma,
            beta: &self.beta,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            momentum: self.momentum,
            eps: self.eps,
        }
    }

    /// Overwrites the first `c` running statistics (BN recalibration).
    pub fn set_running(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
        let c = mean.dims()[0];
        for (state, value) in [(&self.running_mean, mean), (&self.running_var, var)] {
            let full = state.value_sync();
            let updated = if full.dims()[0] == c {
                value
            } else {
                full.slice_assign([0..c], value)
            };
            state.update(updated);
            let _ = state.value_sync();
        }
    }
}

/// Squeeze-and-excite over the first C channels: global pool, 1×1 reduce
/// (bias) → relu → 1×1 expand (bias) → h-sigmoid, times the input. The
/// hidden width follows the active width: `make_divisible(C / 4, divisor)`.
#[derive(Module, Debug)]
pub struct ElasticSe<B: OfaBackend> {
    /// `[S_max, C_max, 1, 1]`
    pub reduce_weight: Param<Tensor<B, 4>>,
    pub reduce_bias: Param<Tensor<B, 1>>,
    /// `[C_max, S_max, 1, 1]`
    pub expand_weight: Param<Tensor<B, 4>>,
    pub expand_bias: Param<Tensor<B, 1>>,
    pub divisor: usize,
}

impl<B: OfaBackend> ElasticSe<B> {
    pub fn new(init: &mut Init, channels: usize, divisor: usize, device: &B::Device) -> Self {
        let s = make_divisible((channels / 4) as f64, divisor);
        ElasticSe {
            reduce_weight: Param::from_tensor(init.normal(
                [s, channels, 1, 1],
                (2.0 / s as f64).sqrt(),
                device,
            )),
            reduce_bias: Param::from_tensor(Tensor::zeros([s], device)),
            expand_weight: Param::from_tensor(init.normal(
                [channels, s, 1, 1],
                (2.0 / channels as f64).sqrt(),
                device,
            )),
            expand_bias: Param::from_tensor(Tensor::zeros([channels], device)),
            divisor,
        }
    }

    pub fn hidden(&self, channels: usize) -> usize {
        make_divisible((channels / 4) as f64, self.divisor)
    }

    /// `x: [N, C, H, W]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, _, _] = x.dims();
        let s = self.hidden(c);
        let [smax, cmax, _, _] = self.reduce_weight.dims();
        let crop = |w: Tensor<B, 4>, a: usize, b: usize, amax: usize, bmax: usize| {
            let w = if a == amax && b == bmax {
                w
            } else {
                w.slice([0..a, 0..b, 0..1, 0..1])
            };
            w.reshape([a, b])
        };
        let reduce_w = crop(self.reduce_weight.val(), s, c, smax, cmax);
        let expand_w = crop(self.expand_weight.val(), c, s, cmax, smax);
        let y = backend::global_avg_pool(x.clone()).reshape([n, c]);
        let y = relu(y.matmul(reduce_w.transpose()) + first(self.reduce_bias.val(), s).unsqueeze());
        let y = h_sigmoid(
            y.matmul(expand_w.transpose()) + first(self.expand_bias.val(), c).unsqueeze(),
        );
        x * y.reshape([n, c, 1, 1])
    }
}

/// Fully connected layer stored as the reference does: weight `[out, in]`.
#[derive(Module, Debug)]
pub struct Linear<B: OfaBackend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: OfaBackend> Linear<B> {
    /// The reference's default: U(−1/√in, 1/√in) weights, zero bias.
    pub fn new(init: &mut Init, in_f: usize, out_f: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (in_f as f64).sqrt();
        Linear {
            weight: Param::from_tensor(init.uniform([out_f, in_f], bound, device)),
            bias: Param::from_tensor(Tensor::zeros([out_f], device)),
        }
    }

    /// `x: [N, in]` → `[N, out]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze()
    }
}

/// Inverted dropout: in training, zero each activation with probability `p`
/// and scale the rest by `1 / (1 − p)`.
pub fn dropout<B: OfaBackend, const D: usize>(
    x: Tensor<B, D>,
    p: f64,
    mode: Mode<'_, B>,
) -> Tensor<B, D> {
    if p <= 0.0 || !mode.dropout() {
        return x;
    }
    let keep = match mode {
        // The global batch's mask, drawn as a single process draws it; this
        // slice's rows of it.
        Mode::Sharded(_, shard) => {
            let mut dims = x.dims();
            let n = dims[0];
            dims[0] = shard.global;
            Tensor::<B, D>::random(dims, Distribution::Bernoulli(1.0 - p), &x.device()).narrow(
                0,
                shard.offset,
                n,
            )
        }
        _ => x.random_like(Distribution::Bernoulli(1.0 - p)),
    };
    x * keep / (1.0 - p)
}

/// Accumulates per-layer batch statistics for BN recalibration.
impl<B: OfaBackend> BnStats<B> {
    pub fn record(&self, layer: ParamId, mean: Tensor<B, 1>, var: Tensor<B, 1>, batch: usize) {
        let mut map = self.inner.lock().expect("BN statistics lock");
        let w = batch as f64;
        match map.get_mut(&layer) {
            Some(acc) => {
                acc.0 = acc.0.clone() + mean * w;
                acc.1 = acc.1.clone() + var * w;
                acc.2 += batch;
            }
            None => {
                map.insert(layer, (mean * w, var * w, batch));
            }
        }
    }
}
