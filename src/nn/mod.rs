//! The elastic supernet on burn: elastic operators, the supernet for the
//! MobileNetV3 and ProxylessNAS spaces, channel sorting, BN recalibration,
//! extraction of static subnets, and weight files with reference key names.
//!
//! All code is generic over `B: Backend`; which backend runs is chosen by
//! the caller (CLI), never here.

mod backend;
mod calib;
pub(crate) mod cpu_kernels;
pub mod engine;
mod init;
pub mod keys;
mod layers;
mod single_layer;
mod sort;
mod state;
mod subnet;
mod supernet;
pub(crate) mod team;

pub use backend::{Comm, OfaBackend};
pub use calib::{CalibrationError, calibrate_bn};
pub use engine::{Plan, Runner, Workspace};
pub use init::Init;
pub use layers::{
    ElasticBn, ElasticConv, ElasticDepthwise, ElasticSe, Linear, activate, dropout, h_sigmoid,
};
pub use single_layer::{LayerConv, LayerModule};
pub use sort::{BlockPermutation, apply_permutations, channel_permutations};
pub use state::{
    HostTensor, StateError, TensorMap, load_subnet, load_supernet, read_safetensors, save_subnet,
    save_supernet, write_safetensors,
};
pub use subnet::{Subnet, SubnetBlock, extract, param_names_in_order};
pub use supernet::{ActiveRegions, ConvBn, ConvBnAct, MbConv, Supernet, SupernetConfig};

use burn::module::ParamId;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use std::collections::HashMap;
use std::sync::Mutex;

/// A backend that trains the supernet: autodiff over an [`OfaBackend`],
/// itself an [`OfaBackend`] (the fused ops' backward passes). Inference runs
/// on its `InnerBackend`.
pub trait TrainBackend: AutodiffBackend<InnerBackend: OfaBackend> + OfaBackend {}

impl<T> TrainBackend for T
where
    T: AutodiffBackend + OfaBackend,
    T::InnerBackend: OfaBackend,
{
}

/// How batch normalisation (and dropout) behave in one forward pass. Passed
/// explicitly to every forward: the network holds no hidden mode.
#[derive(Debug)]
pub enum Mode<'a, B: OfaBackend> {
    /// Batch statistics; running statistics of the active channels are
    /// updated; dropout on.
    Train,
    /// As `Train` without dropout: DϵpS and BigNAS train the non-max subnets
    /// this way (`forward(x, max=False)` in DepS's `ofa_mbv3.py`).
    TrainNoDropout,
    /// Batch statistics, running statistics untouched, dropout on: the
    /// progressive-shrinking teacher, which the reference runs in training
    /// mode under `no_grad` (`train_one_epoch` in OFA's
    /// `progressive_shrinking.py`).
    Teacher,
    /// Stored running statistics; dropout off.
    Eval,
    /// Batch statistics recorded into the collector (BN recalibration);
    /// running statistics untouched; dropout off.
    Calibrate(&'a BnStats<B>),
    /// The inner mode on this process's slice of a data-parallel batch: BN
    /// normalises with the whole global batch's statistics (sums added
    /// across processes, forward and backward) and dropout draws the global
    /// batch's masks and keeps this slice's rows, so each process computes
    /// exactly its rows of the single-process step.
    Sharded(&'a Mode<'a, B>, &'a Shard),
}

/// Where this process's samples sit in a data-parallel step's global batch.
#[derive(Clone, Debug)]
pub struct Shard {
    pub comm: Comm,
    /// Position of this process's first sample in the global batch.
    pub offset: usize,
    /// Samples in the global batch.
    pub global: usize,
}

impl<B: OfaBackend> Mode<'_, B> {
    /// Whether dropout is applied.
    pub fn dropout(&self) -> bool {
        match self {
            Mode::Sharded(inner, _) => inner.dropout(),
            m => matches!(m, Mode::Train | Mode::Teacher),
        }
    }
}

// Manual impls: a derive would require `B: Copy`.
impl<B: OfaBackend> Clone for Mode<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: OfaBackend> Copy for Mode<'_, B> {}

/// Per-layer sums of batch means and biased variances, weighted by batch
/// size, keyed by the BN layer's weight parameter (an id that stays with
/// the layer through loading and optimizer steps).
#[derive(Debug, Default)]
pub struct BnStats<B: OfaBackend> {
    inner: Mutex<HashMap<ParamId, (Tensor<B, 1>, Tensor<B, 1>, usize)>>,
}

impl<B: OfaBackend> BnStats<B> {
    pub fn new() -> Self {
        BnStats {
            inner: Mutex::new(HashMap::new()),
        }
    }

    /// The averaged mean and variance recorded for a layer, if any.
    pub fn averaged(&self, layer: ParamId) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
        let map = self.inner.lock().expect("BN statistics lock");
        map.get(&layer).map(|(m, v, n)| {
            let n = *n as f64;
            (m.clone() / n, v.clone() / n)
        })
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("BN statistics lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
