//! SGD with Nesterov momentum (PyTorch semantics), weight decay on weights
//! only (no decay on BN parameters and biases, i.e. 1-D tensors), and the
//! cosine learning-rate schedule with linear warm-up.
//!
//! State is keyed by the parameters' reference names, so it can be saved
//! next to the weights, permuted by channel sorting, and restored exactly.

use crate::nn::{HostTensor, OfaBackend, Supernet, TensorMap};
use burn::module::{ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, backend::AutodiffBackend};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Optimizer hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 3e-5,
        }
    }
}

/// Momentum buffers by parameter name (flattened, inner backend).
pub struct Sgd<B: AutodiffBackend> {
    pub config: SgdConfig,
    buffers: HashMap<String, Tensor<B::InnerBackend, 1>>,
}

struct StepMapper<'a, B: AutodiffBackend> {
    lr: f64,
    config: &'a SgdConfig,
    names: &'a HashMap<ParamId, String>,
    grads: &'a mut GradientsParams,
    buffers: &'a mut HashMap<String, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let (Some(grad), Some(name)) = (
            self.grads.remove::<B::InnerBackend, D>(id),
            self.names.get(&id),
        ) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let p = tensor.inner();
        let mut d = grad;
        // Weight decay on weights only: BN affine parameters and biases are
        // the 1-D tensors.
        if D > 1 && self.config.weight_decay > 0.0 {
            d = d + p.clone() * self.config.weight_decay;
        }
        if self.config.momentum > 0.0 {
            let flat = d.clone().reshape([n]);
            let buf = match self.buffers.remove(name) {
                Some(b) => b * self.config.momentum + flat,
                None => flat,
            };
            d = if self.config.nesterov {
                d + buf.clone().reshape(shape) * self.config.momentum
            } else {
                buf.clone().reshape(shape)
            };
            self.buffers.insert(name.clone(), buf);
        }
        let mut updated = Tensor::from_inner(p - d * self.lr);
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

impl<B: AutodiffBackend> Sgd<B>
where
    B: OfaBackend,
    B::InnerBackend: OfaBackend,
{
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: HashMap::new(),
        }
    }

    /// One update of a supernet with learning rate `lr` from (accumulated)
    /// gradients. Parameters without a gradient are left untouched, as in
    /// PyTorch.
    pub fn step(&mut self, net: Supernet<B>, lr: f64, grads: GradientsParams) -> Supernet<B> {
        let names = net.param_names();
        self.step_module(net, lr, grads, &names)
    }

    /// One update of any module whose parameters are named by `names`.
    pub fn step_module<M: burn::module::Module<B>>(
        &mut self,
        module: M,
        lr: f64,
        mut grads: GradientsParams,
        names: &HashMap<ParamId, String>,
    ) -> M {
        let mut mapper = StepMapper::<B> {
            lr,
            config: &self.config,
            names,
            grads: &mut grads,
            buffers: &mut self.buffers,
        };
        module.map(&mut mapper)
    }

    /// Momentum buffers as host tensors shaped like their parameters.
    pub fn state(&self, net: &Supernet<B>) -> TensorMap {
        let shapes: HashMap<String, Vec<usize>> = net
            .to_tensor_map()
            .into_iter()
            .map(|(k, t)| (k, t.shape))
            .collect();
        self.buffers
            .iter()
            .map(|(k, b)| {
                let mut t = HostTensor::from_tensor(b.clone());
                t.shape = shapes.get(k).cloned().unwrap_or(t.shape);
                (k.clone(), t)
            })
            .collect()
    }

    /// Momentum buffers as flat host tensors (for networks whose
    /// parameters are never permuted).
    pub fn state_flat(&self) -> TensorMap {
        self.buffers
            .iter()
            .map(|(k, b)| (k.clone(), HostTensor::from_tensor(b.clone())))
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`].
    pub fn load_state(
        &mut self,
        state: &TensorMap,
        device: &burn::tensor::Device<B::InnerBackend>,
    ) {
        self.buffers = state
            .iter()
            .map(|(k, t)| {
                let flat = HostTensor {
                    shape: vec![t.data.len()],
                    data: t.data.clone(),
                };
                (k.clone(), flat.to_tensor::<B::InnerBackend, 1>(device))
            })
            .collect();
    }

    /// Drops all momentum (a new phase starts from rest, as a new job of
    /// the reference would).
    pub fn reset(&mut self) {
        self.buffers.clear();
    }
}

/// Cosine annealing from `base` to 0 over `total` steps, after a linear
/// warm-up from `warmup_start` over `warmup` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub base: f64,
    pub total: u64,
    pub warmup: u64,
    pub warmup_start: f64,
}

impl CosineSchedule {
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            let t = step as f64 / self.warmup as f64;
            return self.warmup_start + (self.base - self.warmup_start) * t;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f64 / span as f64).min(1.0);
        0.5 * self.base * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_with_warmup() {
        let s = CosineSchedule {
            base: 0.1,
            total: 110,
            warmup: 10,
            warmup_start: 0.0,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.05).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!((s.lr(60) - 0.05).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
    }
}
