//! Data-parallel training: what the processes of one job exchange. One
//! all-reduce of the step's gradients, the whole run state broadcast from
//! rank 0 at start and on resume, and each rank's slice of the global batch.
//! Batch-norm statistics are summed across processes inside the forward
//! and backward passes ([`crate::nn::Mode::Sharded`]), so every rank keeps
//! identical running statistics and no separate averaging is needed.

use super::checkpoint::{Checkpoint, LoopState};
use crate::dist::Collective;
use crate::nn::{HostTensor, TensorMap};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The step's gradients summed over the ranks and divided by their
/// number: each rank back-propagated the mean loss of its slice, so this
/// is the gradient of the global batch's mean loss. One flat buffer, one
/// all-reduce; parameters in the module's visiting order, which is the
/// same in every process (burn's parameter ids are not).
pub fn all_reduce_gradients<B, M>(
    module: &M,
    mut grads: GradientsParams,
    comm: &dyn Collective,
) -> GradientsParams
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    if comm.size() == 1 {
        return grads;
    }
    struct Gather<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        flat: Vec<f32>,
        taken: Vec<(ParamId, Vec<usize>, burn::tensor::Device<B::InnerBackend>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(p.id) {
                self.taken.push((p.id, g.dims().to_vec(), g.device()));
                let data = g.into_data().convert::<f32>();
                self.flat
                    .extend_from_slice(data.as_slice::<f32>().expect("f32 gradient"));
            }
        }
    }
    let mut gather = Gather::<B> {
        grads: &mut grads,
        flat: Vec::new(),
        taken: Vec::new(),
    };
    module.visit(&mut gather);
    let (mut flat, taken) = (gather.flat, gather.taken);
    comm.all_reduce_sum(&mut flat);
    let scale = 1.0 / comm.size() as f32;
    let mut at = 0;
    for (id, dims, device) in taken {
        let len: usize = dims.iter().product();
        let values: Vec<f32> = flat[at..at + len].iter().map(|v| v * scale).collect();
        at += len;
        register::<B::InnerBackend>(&mut grads, id, values, dims, &device);
    }
    grads
}

/// Puts a gradient of any rank back (the rank is only known at run time).
fn register<B: burn::tensor::backend::Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    values: Vec<f32>,
    dims: Vec<usize>,
    device: &burn::tensor::Device<B>,
) {
    let data = TensorData::new(values, dims.clone());
    match dims.len() {
        1 => grads.register::<B, 1>(id, Tensor::from_data(data, device)),
        2 => grads.register::<B, 2>(id, Tensor::from_data(data, device)),
        3 => grads.register::<B, 3>(id, Tensor::from_data(data, device)),
        4 => grads.register::<B, 4>(id, Tensor::from_data(data, device)),
        d => panic!("a parameter of rank {d}: the networks have ranks 1 to 4"),
    }
}

/// The names and shapes of a checkpoint's tensors; their values follow in
/// one f32 buffer.
#[derive(Serialize, Deserialize)]
struct Header {
    state: LoopState,
    maps: Vec<Vec<(String, Vec<usize>)>>,
    teacher: bool,
}

/// Rank 0's checkpoint on every rank: rank 0 passes `Some`, the others
/// `None`. Two broadcasts: a JSON header, then every value.
pub fn broadcast_checkpoint(ck: Option<Checkpoint>, comm: &dyn Collective) -> Checkpoint {
    if comm.size() == 1 {
        return ck.expect("a single process holds its checkpoint");
    }
    let mut header = Vec::new();
    let mut flat = Vec::new();
    if let Some(ck) = &ck {
        let mut maps = vec![&ck.weights, &ck.momentum];
        maps.extend(ck.teacher.as_ref());
        let h = Header {
            state: ck.state.clone(),
            maps: maps
                .iter()
                .map(|m| {
                    m.iter()
                        .map(|(k, t)| (k.clone(), t.shape.clone()))
                        .collect()
                })
                .collect(),
            teacher: ck.teacher.is_some(),
        };
        header = serde_json::to_vec(&h).expect("a header serialises");
        for m in maps {
            for t in m.values() {
                flat.extend_from_slice(&t.data);
            }
        }
    }
    comm.broadcast_bytes(&mut header, 0);
    let h: Header = serde_json::from_slice(&header).expect("rank 0's header");
    let len: usize = h
        .maps
        .iter()
        .flatten()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    flat.resize(len, 0.0);
    comm.broadcast_f32(&mut flat, 0);
    if let Some(ck) = ck {
        return ck;
    }
    let mut at = 0;
    let mut maps: Vec<TensorMap> = h
        .maps
        .into_iter()
        .map(|m| {
            m.into_iter()
                .map(|(k, shape)| {
                    let n: usize = shape.iter().product();
                    let data = flat[at..at + n].to_vec();
                    at += n;
                    (k, HostTensor { shape, data })
                })
                .collect()
        })
        .collect();
    let teacher = h.teacher.then(|| maps.pop().expect("teacher map"));
    let momentum = maps.pop().expect("momentum map");
    let weights = maps.pop().expect("weights map");
    Checkpoint {
        state: h.state,
        weights,
        momentum,
        teacher,
    }
}
