//! The operators the supernet spends its time in, as a backend extension
//! trait: dense (the stem), depthwise and pointwise convolution, training-mode batch norm,
//! per-channel affine and activations.
//!
//! Every method has a default built from burn's own tensor ops, so any burn
//! backend (CUDA, LibTorch, …) runs the supernet by declaring
//! `impl OfaBackend for ThatBackend {}`. Backends whose tensors live in host
//! memory use the fused kernels of [`super::cpu_kernels`] instead, and the autodiff
//! decorator gives each fused op a hand-written backward pass.

use super::cpu_kernels::{self, Nchw};
use crate::space::Activation;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive, backend::Backend};

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn unwrap<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn dims4<B: Backend>(t: &FloatTensor<B>) -> [usize; 4] {
    t.shape().dims::<4>()
}

fn nchw(d: [usize; 4]) -> Nchw {
    Nchw {
        n: d[0],
        c: d[1],
        h: d[2],
        w: d[3],
    }
}

fn per_sample<B: Backend>(v: Tensor<B, 1>, n: usize) -> Tensor<B, 4> {
    let c = v.dims()[0];
    v.unsqueeze::<2>().repeat_dim(0, n).reshape([n, c, 1, 1])
}

/// `(x − μ)·γ/√(σ² + ε) + β` per channel of `x: [N, C, H, W]`.
fn normalise<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 4> {
    let n = x.dims()[0];
    let scale = gamma / (var + eps).sqrt();
    let shift = beta - mean * scale.clone();
    x * per_sample(scale, n) + per_sample(shift, n)
}

/// `x̂ = (x − μ)/√(σ² + ε)` and the per-channel `1/√(σ² + ε)`.
fn standardised<B: Backend>(
    x: Tensor<B, 4>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>) {
    let n = x.dims()[0];
    let inv = (var + eps).sqrt().recip();
    ((x - per_sample(mean, n)) * per_sample(inv.clone(), n), inv)
}

/// BN's input gradient `k·(g − mean(g) − x̂·mean(g·x̂))`, `k = γ/σ`, from
/// the per-channel means (of the whole batch, for a sharded one).
fn bn_dx<B: Backend>(
    g: Tensor<B, 4>,
    xhat: Tensor<B, 4>,
    mean_g: Tensor<B, 1>,
    mean_gx: Tensor<B, 1>,
    k: Tensor<B, 1>,
) -> Tensor<B, 4> {
    let n = g.dims()[0];
    (g - per_sample(mean_g, n) - xhat * per_sample(mean_gx, n)) * per_sample(k, n)
}

/// The processes a sharded batch is spread over.
pub type Comm = std::sync::Arc<dyn crate::dist::Collective>;

/// `v` (per channel) and `count` summed across the processes of `comm`.
fn reduced<B: Backend>(v: Tensor<B, 1>, count: f64, comm: &Comm) -> (Vec<f64>, f64) {
    let mut buf: Vec<f64> = v
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f64::from)
        .collect();
    buf.push(count);
    comm.all_reduce_sum_f64(&mut buf);
    let m = buf.pop().expect("count");
    (buf, m)
}

fn host_tensor<B: Backend>(v: Vec<f64>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    Tensor::from_data(burn::tensor::TensorData::new(v, [n]), device)
}

/// Backend operations of the supernet. See the module documentation.
pub trait OfaBackend: Backend {
    /// What a latency table records as the backend.
    fn backend_label() -> String {
        Self::name(&Default::default())
    }

    /// Whether tensors live in host memory, so that inference of extracted
    /// subnets can run in the host engine (`nn::engine`).
    fn host_engine() -> bool {
        false
    }

    /// What a latency table records as the device: the CPU model, or the
    /// GPU's name.
    fn device_label(device: &Self::Device) -> String {
        format!("{device:?}")
    }

    /// Depthwise `k×k` convolution, padding `k / 2`:
    /// `x: [N, C, H, W]`, `weight: [C, 1, k, k]` → `[N, C, H', W']`.
    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let c = dims4::<Self>(&x)[1];
        let k = dims4::<Self>(&weight)[2];
        Self::conv2d(
            x,
            weight,
            None,
            ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], c),
        )
    }

    /// Gradients of [`OfaBackend::depthwise_conv2d`] for `x` and `weight`.
    fn depthwise_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let c = dims4::<Self>(&x)[1];
        let k = dims4::<Self>(&weight)[2];
        let options = ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], c);
        let dx = Self::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        (dx, Self::conv2d_weight_backward(x, weight, grad, options))
    }

    /// Dense `k×k` convolution, padding `k / 2`, no bias (the stem):
    /// `x: [N, C_in, H, W]`, `weight: [C_out, C_in, k, k]` → `[N, C_out, H', W']`.
    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let k = dims4::<Self>(&weight)[2];
        Self::conv2d(
            x,
            weight,
            None,
            ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], 1),
        )
    }

    /// Gradients of [`OfaBackend::dense_conv2d`]: `(dx, dweight)`, `dx`
    /// only when `need_dx` (the stem's input is the image: nobody reads
    /// its gradient).
    fn dense_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
        need_dx: bool,
    ) -> (Option<FloatTensor<Self>>, FloatTensor<Self>) {
        let k = dims4::<Self>(&weight)[2];
        let options = ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], 1);
        let dx = need_dx.then(|| {
            Self::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone())
        });
        (dx, Self::conv2d_weight_backward(x, weight, grad, options))
    }

    /// 1×1 convolution, stride 1, no bias:
    /// `x: [N, C_in, H, W]`, `weight: [C_out, C_in, 1, 1]` → `[N, C_out, H, W]`.
    fn pointwise_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
    }

    /// Gradients of [`OfaBackend::pointwise_conv2d`] for `x` and `weight`.
    fn pointwise_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let dx = Self::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        (dx, Self::conv2d_weight_backward(x, weight, grad, options))
    }

    /// Batch normalisation with batch statistics: returns `y`, the batch
    /// mean and the biased batch variance (both `[C]`).
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = wrap::<Self, 4>(x);
        let [n, c, _, _] = x.dims();
        let mean = x.clone().mean_dims(&[0, 2, 3]).reshape([c]);
        // Two passes, E[(x − μ)²], not E[x²] − μ²: in f32 the difference of
        // two large, nearly equal numbers loses the variance of activations
        // with a large mean.
        let centred = x.clone() - per_sample(mean.clone(), n);
        let var = centred.square().mean_dims(&[0, 2, 3]).reshape([c]);
        let y = normalise(x, wrap(gamma), wrap(beta), mean.clone(), var.clone(), eps);
        (unwrap(y), unwrap(mean), unwrap(var))
    }

    /// Gradients of [`OfaBackend::batch_norm_train`] for `x`, `gamma`, `beta`.
    fn batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (x, g) = (wrap::<Self, 4>(x), wrap::<Self, 4>(grad));
        let [n, c, h, w] = x.dims();
        let m = (n * h * w) as f64;
        let (xhat, inv) = standardised(x, wrap(mean), wrap(var), eps);
        let dbeta = g.clone().sum_dims(&[0, 2, 3]).reshape([c]);
        let dgamma = (g.clone() * xhat.clone()).sum_dims(&[0, 2, 3]).reshape([c]);
        let k = wrap::<Self, 1>(gamma) * inv;
        let dx = bn_dx(g, xhat, dbeta.clone() / m, dgamma.clone() / m, k);
        (unwrap(dx), unwrap(dgamma), unwrap(dbeta))
    }

    /// [`OfaBackend::batch_norm_train`] on this process's slice of a batch
    /// spread over the processes of `comm`: mean and variance are those of
    /// the whole batch (per-channel sums added across processes).
    fn batch_norm_train_sharded(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        comm: &Comm,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = wrap::<Self, 4>(x);
        let [n, c, h, w] = x.dims();
        let device = x.device();
        let sum = x.clone().sum_dims(&[0, 2, 3]).reshape([c]);
        let (sum, m) = reduced(sum, (n * h * w) as f64, comm);
        let mean = host_tensor::<Self>(sum.iter().map(|s| s / m).collect(), &device);
        let centred = x.clone() - per_sample(mean.clone(), n);
        let sq = centred.square().sum_dims(&[0, 2, 3]).reshape([c]);
        let (sq, _) = reduced(sq, (n * h * w) as f64, comm);
        let var = host_tensor::<Self>(sq.iter().map(|s| s / m).collect(), &device);
        let y = normalise(x, wrap(gamma), wrap(beta), mean.clone(), var.clone(), eps);
        (unwrap(y), unwrap(mean), unwrap(var))
    }

    /// Gradients of [`OfaBackend::batch_norm_train_sharded`]: `Σdy` and
    /// `Σdy·x̂` are summed across processes (every input moved the whole
    /// batch's statistics); `dgamma`, `dbeta` are this slice's share.
    fn batch_norm_train_sharded_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
        comm: &Comm,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (x, g) = (wrap::<Self, 4>(x), wrap::<Self, 4>(grad));
        let [n, c, h, w] = x.dims();
        let device = x.device();
        let (xhat, inv) = standardised(x, wrap(mean), wrap(var), eps);
        let dbeta = g.clone().sum_dims(&[0, 2, 3]).reshape([c]);
        let dgamma = (g.clone() * xhat.clone()).sum_dims(&[0, 2, 3]).reshape([c]);
        let (sg, m) = reduced(dbeta.clone(), (n * h * w) as f64, comm);
        let (sgx, _) = reduced(dgamma.clone(), (n * h * w) as f64, comm);
        let mean_g = host_tensor::<Self>(sg.iter().map(|s| s / m).collect(), &device);
        let mean_gx = host_tensor::<Self>(sgx.iter().map(|s| s / m).collect(), &device);
        let k = wrap::<Self, 1>(gamma) * inv;
        let dx = bn_dx(g, xhat, mean_g, mean_gx, k);
        (unwrap(dx), unwrap(dgamma), unwrap(dbeta))
    }

    /// `x · scale[c] + shift[c]` for `x: [N, C, H, W]`.
    fn channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = wrap::<Self, 4>(x);
        let n = x.dims()[0];
        unwrap(x * per_sample(wrap(scale), n) + per_sample(wrap(shift), n))
    }

    /// Inference: [`OfaBackend::depthwise_conv2d`], then
    /// [`OfaBackend::channel_affine`] (a BN with stored statistics), then
    /// `act`; host backends do it in one pass over the output.
    fn depthwise_conv2d_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Option<Activation>,
    ) -> FloatTensor<Self> {
        maybe_activation::<Self>(
            Self::channel_affine(Self::depthwise_conv2d(x, weight, stride), scale, shift),
            act,
        )
    }

    /// Inference: [`OfaBackend::pointwise_conv2d`], then
    /// [`OfaBackend::channel_affine`], then `act`; fused on host backends.
    fn pointwise_conv2d_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Option<Activation>,
    ) -> FloatTensor<Self> {
        maybe_activation::<Self>(
            Self::channel_affine(Self::pointwise_conv2d(x, weight), scale, shift),
            act,
        )
    }

    /// An activation applied elementwise (any shape).
    fn activation(x: FloatTensor<Self>, act: Activation) -> FloatTensor<Self> {
        let shape = x.shape();
        let flat = wrap::<Self, 1>(Self::float_reshape(x, [shape.num_elements()].into()));
        let y = match act {
            Activation::Relu => burn::tensor::activation::relu(flat),
            Activation::Relu6 => flat.clamp(0.0, 6.0),
            Activation::HSwish => burn::tensor::activation::hard_swish(flat),
        };
        Self::float_reshape(unwrap(y), shape)
    }

    /// Gradient of [`OfaBackend::activation`] given its input.
    fn activation_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        act: Activation,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let n = shape.num_elements();
        let x = wrap::<Self, 1>(Self::float_reshape(x, [n].into()));
        let g = wrap::<Self, 1>(Self::float_reshape(grad, [n].into()));
        let d = match act {
            Activation::Relu => g.mask_fill(x.lower_equal_elem(0.0), 0.0),
            Activation::Relu6 => g
                .mask_fill(x.clone().lower_equal_elem(0.0), 0.0)
                .mask_fill(x.greater_equal_elem(6.0), 0.0),
            Activation::HSwish => {
                let slope = (x.clone() * 2.0 + 3.0) / 6.0;
                let slope = slope
                    .mask_fill(x.clone().lower_elem(-3.0), 0.0)
                    .mask_fill(x.greater_elem(3.0), 1.0);
                g * slope
            }
        };
        Self::float_reshape(unwrap(d), shape)
    }
}

/// Implements [`OfaBackend`] with the fused host kernels for a backend whose
/// tensors live in host memory.
macro_rules! host_backend {
    ($ty:ty, $view:path, $make:path) => {
        impl OfaBackend for $ty {
            fn backend_label() -> String {
                "flex (CPU, fused kernels)".into()
            }

            fn host_engine() -> bool {
                true
            }

            fn device_label(_: &Self::Device) -> String {
                crate::util::cpu_name()
            }

            fn depthwise_conv2d(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                stride: usize,
            ) -> FloatTensor<Self> {
                let (d, k) = (nchw(dims4::<Self>(&x)), dims4::<Self>(&weight)[2]);
                let (y, od) =
                    cpu_kernels::depthwise_forward(&$view(&x), d, &$view(&weight), k, stride);
                $make(y, &[od.n, od.c, od.h, od.w])
            }

            fn depthwise_conv2d_backward(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                grad: FloatTensor<Self>,
                stride: usize,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                let (d, od) = (nchw(dims4::<Self>(&x)), nchw(dims4::<Self>(&grad)));
                let wd = dims4::<Self>(&weight);
                let (dx, dw) = cpu_kernels::depthwise_backward(
                    &$view(&x),
                    d,
                    &$view(&weight),
                    wd[2],
                    stride,
                    &$view(&grad),
                    od,
                );
                ($make(dx, &[d.n, d.c, d.h, d.w]), $make(dw, &wd))
            }

            fn dense_conv2d(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                stride: usize,
            ) -> FloatTensor<Self> {
                let (d, wd) = (nchw(dims4::<Self>(&x)), dims4::<Self>(&weight));
                let (y, od) =
                    cpu_kernels::conv_forward(&$view(&x), d, &$view(&weight), wd[0], wd[2], stride);
                $make(y, &[od.n, od.c, od.h, od.w])
            }

            fn dense_conv2d_backward(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                grad: FloatTensor<Self>,
                stride: usize,
                need_dx: bool,
            ) -> (Option<FloatTensor<Self>>, FloatTensor<Self>) {
                let (d, od) = (nchw(dims4::<Self>(&x)), nchw(dims4::<Self>(&grad)));
                let wd = dims4::<Self>(&weight);
                let (dx, dw) = cpu_kernels::conv_backward(
                    &$view(&x),
                    d,
                    &$view(&weight),
                    wd[2],
                    stride,
                    &$view(&grad),
                    od,
                    need_dx,
                );
                (
                    dx.map(|dx| $make(dx, &[d.n, d.c, d.h, d.w])),
                    $make(dw, &wd),
                )
            }

            fn pointwise_conv2d(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                let d = nchw(dims4::<Self>(&x));
                let cout = dims4::<Self>(&weight)[0];
                let y = cpu_kernels::pointwise_forward(&$view(&x), d, &$view(&weight), cout);
                $make(y, &[d.n, cout, d.h, d.w])
            }

            fn pointwise_conv2d_backward(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                grad: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                let d = nchw(dims4::<Self>(&x));
                let wd = dims4::<Self>(&weight);
                let (dx, dw) = cpu_kernels::pointwise_backward(
                    &$view(&x),
                    d,
                    &$view(&weight),
                    wd[0],
                    &$view(&grad),
                );
                ($make(dx, &[d.n, d.c, d.h, d.w]), $make(dw, &wd))
            }

            fn batch_norm_train(
                x: FloatTensor<Self>,
                gamma: FloatTensor<Self>,
                beta: FloatTensor<Self>,
                eps: f64,
            ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
                let d = nchw(dims4::<Self>(&x));
                let (y, mean, var) = cpu_kernels::batch_norm_forward(
                    &$view(&x),
                    d,
                    &$view(&gamma),
                    &$view(&beta),
                    eps,
                );
                (
                    $make(y, &[d.n, d.c, d.h, d.w]),
                    $make(mean, &[d.c]),
                    $make(var, &[d.c]),
                )
            }

            fn batch_norm_train_backward(
                x: FloatTensor<Self>,
                gamma: FloatTensor<Self>,
                mean: FloatTensor<Self>,
                var: FloatTensor<Self>,
                eps: f64,
                grad: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
                let d = nchw(dims4::<Self>(&x));
                let (dx, dg, db) = cpu_kernels::batch_norm_backward(
                    &$view(&x),
                    d,
                    &$view(&gamma),
                    &$view(&mean),
                    &$view(&var),
                    eps,
                    &$view(&grad),
                );
                (
                    $make(dx, &[d.n, d.c, d.h, d.w]),
                    $make(dg, &[d.c]),
                    $make(db, &[d.c]),
                )
            }

            fn batch_norm_train_sharded(
                x: FloatTensor<Self>,
                gamma: FloatTensor<Self>,
                beta: FloatTensor<Self>,
                eps: f64,
                comm: &Comm,
            ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
                let d = nchw(dims4::<Self>(&x));
                let (y, mean, var) = cpu_kernels::batch_norm_forward_reduced(
                    &$view(&x),
                    d,
                    &$view(&gamma),
                    &$view(&beta),
                    eps,
                    &|buf| comm.all_reduce_sum_f64(buf),
                );
                (
                    $make(y, &[d.n, d.c, d.h, d.w]),
                    $make(mean, &[d.c]),
                    $make(var, &[d.c]),
                )
            }

            fn batch_norm_train_sharded_backward(
                x: FloatTensor<Self>,
                gamma: FloatTensor<Self>,
                mean: FloatTensor<Self>,
                var: FloatTensor<Self>,
                eps: f64,
                grad: FloatTensor<Self>,
                comm: &Comm,
            ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
                let d = nchw(dims4::<Self>(&x));
                let (dx, dg, db) = cpu_kernels::batch_norm_backward_reduced(
                    &$view(&x),
                    d,
                    &$view(&gamma),
                    &$view(&mean),
                    &$view(&var),
                    eps,
                    &$view(&grad),
                    &|buf| comm.all_reduce_sum_f64(buf),
                );
                (
                    $make(dx, &[d.n, d.c, d.h, d.w]),
                    $make(dg, &[d.c]),
                    $make(db, &[d.c]),
                )
            }

            fn channel_affine(
                x: FloatTensor<Self>,
                scale: FloatTensor<Self>,
                shift: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                let d = nchw(dims4::<Self>(&x));
                let y = cpu_kernels::channel_affine(&$view(&x), d, &$view(&scale), &$view(&shift));
                $make(y, &[d.n, d.c, d.h, d.w])
            }

            fn depthwise_conv2d_affine(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                stride: usize,
                scale: FloatTensor<Self>,
                shift: FloatTensor<Self>,
                act: Option<Activation>,
            ) -> FloatTensor<Self> {
                let (d, k) = (nchw(dims4::<Self>(&x)), dims4::<Self>(&weight)[2]);
                let (scale, shift) = ($view(&scale), $view(&shift));
                let e = cpu_kernels::Epilogue {
                    scale: &scale,
                    shift: &shift,
                    act,
                };
                let (y, od) = cpu_kernels::depthwise_forward_with(
                    &$view(&x),
                    d,
                    &$view(&weight),
                    k,
                    stride,
                    Some(e),
                );
                $make(y, &[od.n, od.c, od.h, od.w])
            }

            fn pointwise_conv2d_affine(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                scale: FloatTensor<Self>,
                shift: FloatTensor<Self>,
                act: Option<Activation>,
            ) -> FloatTensor<Self> {
                let d = nchw(dims4::<Self>(&x));
                let cout = dims4::<Self>(&weight)[0];
                let (scale, shift) = ($view(&scale), $view(&shift));
                let e = cpu_kernels::Epilogue {
                    scale: &scale,
                    shift: &shift,
                    act,
                };
                let y =
                    cpu_kernels::pointwise_forward_with(&$view(&x), d, &$view(&weight), cout, e);
                $make(y, &[d.n, cout, d.h, d.w])
            }

            fn activation(x: FloatTensor<Self>, act: Activation) -> FloatTensor<Self> {
                let y = cpu_kernels::activation_forward(&$view(&x), act);
                $make(y, x.shape().as_slice())
            }

            fn activation_backward(
                x: FloatTensor<Self>,
                grad: FloatTensor<Self>,
                act: Activation,
            ) -> FloatTensor<Self> {
                let dx = cpu_kernels::activation_backward(&$view(&x), &$view(&grad), act);
                $make(dx, x.shape().as_slice())
            }
        }
    };
}

host_backend!(burn::backend::Flex, flex_io::view, flex_io::make);

/// burn's NdArray backend on the generic path (every default method): how
/// the test suite runs the code a GPU backend runs.
#[cfg(feature = "ndarray")]
impl OfaBackend for burn::backend::NdArray {}

/// Zero-copy access to the CPU backend's tensors.
mod flex_io {
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;
    use std::borrow::Cow;

    pub fn view(t: &FlexTensor) -> Cow<'_, [f32]> {
        match t.as_slice::<f32>() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(
                t.to_contiguous()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("f32 data"),
            ),
        }
    }

    pub fn make(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
    }
}

/// The backward pass of a fused op: its saved state and the output
/// gradient give the gradients of its `N` inputs. One type for every fused
/// op; what differs is the function.
struct Fused<B: Backend, S, const N: usize>(fn(S, FloatTensor<B>) -> [FloatTensor<B>; N]);

impl<B: Backend, S, const N: usize> std::fmt::Debug for Fused<B, S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fused<{N}>")
    }
}

impl<B, S, const N: usize> Backward<B, N> for Fused<B, S, N>
where
    B: OfaBackend,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    type State = S;

    fn backward(self, ops: Ops<S, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ids = ops.parents.map(|p| p.map(|n| n.id));
        for (id, g) in ids.into_iter().zip((self.0)(ops.state, grad)) {
            if let Some(id) = id {
                grads.register::<B>(id, g);
            }
        }
    }
}

fn depthwise_backward<B: OfaBackend>(
    (x, w, stride): (FloatTensor<B>, FloatTensor<B>, usize),
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 2] {
    let (dx, dw) = B::depthwise_conv2d_backward(x, w, grad, stride);
    [dx, dw]
}

/// The backward pass of [`OfaBackend::dense_conv2d`]: unlike [`Fused`], it
/// asks for the input's gradient only when the input is tracked.
#[derive(Debug)]
struct DenseConvBackward;

impl<B: OfaBackend> Backward<B, 2> for DenseConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [px, pw] = ops.parents;
        let (x, w, stride) = ops.state;
        let (dx, dw) = B::dense_conv2d_backward(x, w, grad, stride, px.is_some());
        if let (Some(p), Some(dx)) = (px, dx) {
            grads.register::<B>(p.id, dx);
        }
        if let Some(p) = pw {
            grads.register::<B>(p.id, dw);
        }
    }
}

fn pointwise_backward<B: OfaBackend>(
    (x, w): (FloatTensor<B>, FloatTensor<B>),
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 2] {
    let (dx, dw) = B::pointwise_conv2d_backward(x, w, grad);
    [dx, dw]
}

/// What a training-mode BN's backward needs: `x`, `gamma`, the batch
/// statistics, `eps`, and the processes of a sharded batch (if it is one).
type BnState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
    Option<Comm>,
);

fn batch_norm_backward<B: OfaBackend>(
    (x, gamma, mean, var, eps, comm): BnState<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let (dx, dgamma, dbeta) = match &comm {
        None => B::batch_norm_train_backward(x, gamma, mean, var, eps, grad),
        Some(c) => B::batch_norm_train_sharded_backward(x, gamma, mean, var, eps, grad, c),
    };
    [dx, dgamma, dbeta]
}

/// A training-mode BN on the autodiff backend, sharded over `comm`'s
/// processes when given: the inner backend's forward, recorded with its
/// hand-written backward.
fn tracked_batch_norm<B: OfaBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    eps: f64,
    comm: Option<&Comm>,
) -> (
    FloatTensor<Autodiff<B, C>>,
    FloatTensor<Autodiff<B, C>>,
    FloatTensor<Autodiff<B, C>>,
) {
    let (xp, gp) = (x.primitive.clone(), gamma.primitive.clone());
    let (y, mean, var) = match comm {
        None => B::batch_norm_train(xp, gp, beta.primitive, eps),
        Some(c) => B::batch_norm_train_sharded(xp, gp, beta.primitive, eps, c),
    };
    let stats = (
        Autodiff::<B, C>::from_inner(mean.clone()),
        Autodiff::<B, C>::from_inner(var.clone()),
    );
    let y = match Fused::<B, _, 3>(batch_norm_backward::<B>)
        .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (x.primitive, gamma.primitive, mean, var, eps, comm.cloned()),
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (y, stats.0, stats.1)
}

fn activation_backward<B: OfaBackend>(
    (x, act): (FloatTensor<B>, Activation),
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 1] {
    [B::activation_backward(x, grad, act)]
}

impl<B: OfaBackend, C: CheckpointStrategy> OfaBackend for Autodiff<B, C> {
    fn host_engine() -> bool {
        B::host_engine()
    }

    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let out = B::depthwise_conv2d(x.primitive.clone(), weight.primitive.clone(), stride);
        match Fused::<B, _, 2>(depthwise_backward::<B>)
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, stride), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn dense_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let out = B::dense_conv2d(x.primitive.clone(), weight.primitive.clone(), stride);
        match DenseConvBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, stride), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn pointwise_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::pointwise_conv2d(x.primitive.clone(), weight.primitive.clone());
        match Fused::<B, _, 2>(pointwise_backward::<B>)
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        tracked_batch_norm::<B, C>(x, gamma, beta, eps, None)
    }

    fn batch_norm_train_sharded(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        comm: &Comm,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        tracked_batch_norm::<B, C>(x, gamma, beta, eps, Some(comm))
    }

    fn activation(x: FloatTensor<Self>, act: Activation) -> FloatTensor<Self> {
        let out = B::activation(x.primitive.clone(), act);
        match Fused::<B, _, 1>(activation_backward::<B>)
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, act), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// [`depthwise`] then `· scale[c] + shift[c]` then `act` (inference).
pub fn depthwise_affine<B: OfaBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: usize,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
    act: Option<Activation>,
) -> Tensor<B, 4> {
    wrap(B::depthwise_conv2d_affine(
        unwrap(x),
        unwrap(weight),
        stride,
        unwrap(scale),
        unwrap(shift),
        act,
    ))
}

/// [`pointwise`] then `· scale[c] + shift[c]` then `act` (inference).
pub fn pointwise_affine<B: OfaBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
    act: Option<Activation>,
) -> Tensor<B, 4> {
    wrap(B::pointwise_conv2d_affine(
        unwrap(x),
        unwrap(weight),
        unwrap(scale),
        unwrap(shift),
        act,
    ))
}

/// `x: [N, C, H, W]`, `weight: [C, 1, k, k]` → `[N, C, H', W']` (padding `k / 2`).
pub fn depthwise<B: OfaBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: usize,
) -> Tensor<B, 4> {
    wrap(B::depthwise_conv2d(unwrap(x), unwrap(weight), stride))
}

/// `x: [N, C_in, H, W]`, `weight: [C_out, C_in, k, k]` → `[N, C_out, H', W']`
/// (padding `k / 2`, no bias).
pub fn dense<B: OfaBackend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    wrap(B::dense_conv2d(unwrap(x), unwrap(weight), stride))
}

/// `x: [N, C_in, H, W]`, `weight: [C_out, C_in, 1, 1]` → `[N, C_out, H, W]`.
pub fn pointwise<B: OfaBackend>(x: Tensor<B, 4>, weight: Tensor<B, 4>) -> Tensor<B, 4> {
    wrap(B::pointwise_conv2d(unwrap(x), unwrap(weight)))
}

/// Training-mode batch norm: `(y, batch mean, biased batch variance)`.
pub fn batch_norm_train<B: OfaBackend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let (y, m, v) = B::batch_norm_train(unwrap(x), unwrap(gamma), unwrap(beta), eps);
    (wrap(y), wrap(m), wrap(v))
}

/// [`batch_norm_train`] on this process's slice of a batch spread over
/// `comm`'s processes: the statistics of the whole batch.
pub fn batch_norm_train_sharded<B: OfaBackend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
    comm: &Comm,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let (y, m, v) = B::batch_norm_train_sharded(unwrap(x), unwrap(gamma), unwrap(beta), eps, comm);
    (wrap(y), wrap(m), wrap(v))
}

/// `x · scale[c] + shift[c]` for `x: [N, C, H, W]`.
pub fn channel_affine<B: OfaBackend>(
    x: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
) -> Tensor<B, 4> {
    wrap(B::channel_affine(unwrap(x), unwrap(scale), unwrap(shift)))
}

/// One of the space's activations, elementwise.
pub fn activate<B: OfaBackend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    wrap(B::activation(unwrap(x), act))
}

/// [`activate`] when there is an activation (`None`: a linear layer).
pub fn activate_opt<B: OfaBackend, const D: usize>(
    x: Tensor<B, D>,
    act: Option<Activation>,
) -> Tensor<B, D> {
    wrap(maybe_activation::<B>(unwrap(x), act))
}

fn maybe_activation<B: OfaBackend>(y: FloatTensor<B>, act: Option<Activation>) -> FloatTensor<B> {
    match act {
        Some(a) => B::activation(y, a),
        None => y,
    }
}

/// Global average pooling `[N, C, H, W]` → `[N, C, 1, 1]`, as one mean over
/// a flattened last axis: its backward is then a per-row broadcast, which
/// the CPU backend does with its fast kernel (two means over H and W would
/// need a strided one).
pub fn global_avg_pool<B: burn::tensor::backend::Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c, 1, 1])
}
