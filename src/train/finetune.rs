//! Fine-tuning an extracted subnet, optionally distilling from the full
//! network of its supernet.

use super::eval::batch_tensors;
use super::loss::{ce_plus_kd, read_loss};
use super::optim::{CosineSchedule, Sgd, SgdConfig};
use super::trainer::{StepReport, TrainObserver};
use crate::data::{Augment, BatchRequest, Dataset, Prefetcher, SplitKind, batch_seed, epoch_order};
use crate::nn::{Mode, OfaBackend, Subnet, Supernet};
use crate::space::Arch;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Fine-tuning settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub epochs: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_epochs: f64,
    pub label_smoothing: f64,
    pub kd_ratio: f64,
    pub augment: bool,
    pub seed: u64,
    pub sgd: SgdConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: 1.0,
            batch_size: 64,
            lr: 0.01,
            warmup_epochs: 0.0,
            label_smoothing: 0.1,
            kd_ratio: 1.0,
            augment: true,
            seed: 0,
            sgd: SgdConfig::default(),
        }
    }
}

/// Fine-tunes `net` on `train` images of `dataset`; with a teacher, the loss
/// adds `kd_ratio ·` soft cross-entropy to the teacher's full network.
/// Returns the tuned subnet (inference backend).
#[allow(clippy::too_many_arguments)]
pub fn finetune<B>(
    net: Subnet<B>,
    teacher: Option<&Supernet<B::InnerBackend>>,
    dataset: Arc<Dataset>,
    train: &[usize],
    cfg: &FinetuneConfig,
    device: &B::Device,
    obs: &mut dyn TrainObserver,
) -> anyhow::Result<Subnet<B::InnerBackend>>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let spe = (train.len() / cfg.batch_size).max(1) as u64;
    let total = ((cfg.epochs * spe as f64).round() as u64).max(1);
    let lr = CosineSchedule {
        base: cfg.lr,
        total,
        warmup: (cfg.warmup_epochs * spe as f64) as u64,
        warmup_start: cfg.lr * 0.01,
    };
    let arch = net.arch.clone();
    let max = teacher.map(|t| Arch::max(&t.space).with_resolution(arch.r));
    let train = Arc::new(train.to_vec());
    let requests: Vec<BatchRequest> = (0..total)
        .map(|step| {
            let (epoch, pos) = (step / spe, (step % spe) as usize);
            let order = epoch_order(&train, epoch, cfg.seed);
            BatchRequest {
                indices: order[pos * cfg.batch_size..(pos + 1) * cfg.batch_size].to_vec(),
                resolution: arch.r,
                augment: if cfg.augment {
                    Augment::Train
                } else {
                    Augment::None
                },
                seed: batch_seed(cfg.seed, epoch, step),
                first: 0,
            }
        })
        .collect();
    let mut sgd = Sgd::<B>::new(cfg.sgd.clone());
    let names = crate::nn::param_names_in_order::<B, _>(&net);
    let mut net = net;
    let t0 = std::time::Instant::now();
    for (step, batch) in Prefetcher::new(dataset, SplitKind::Train, requests).enumerate() {
        let batch = batch?;
        let (x, y) = batch_tensors::<B>(&batch, device);
        let soft = match (teacher, &max) {
            (Some(t), Some(m)) => Some(Tensor::<B, 2>::from_inner(t.forward(
                x.clone().inner(),
                m,
                Mode::Eval,
            ))),
            _ => None,
        };
        <B as burn::tensor::backend::Backend>::seed(
            device,
            super::schedule::mix(cfg.seed, step as u64, 7),
        );
        let logits = net.forward_mode(x, Mode::Train);
        let loss = ce_plus_kd(logits, y, soft.as_ref(), cfg.label_smoothing, cfg.kd_ratio);
        let value = read_loss(loss.clone(), || format!("fine-tuning step {step}"))?;
        let rate = lr.lr(step as u64);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = sgd.step_module(net, rate, grads, &names);
        let step = step as u64 + 1;
        obs.step(&StepReport {
            step,
            total,
            epoch: (step - 1) / spe,
            step_in_epoch: (step - 1) % spe + 1,
            steps_per_epoch: spe,
            phase: "fine-tune".into(),
            loss: value,
            lr: rate,
            eps: None,
            images_per_s: (step * cfg.batch_size as u64) as f64
                / t0.elapsed().as_secs_f64().max(1e-9),
        });
    }
    Ok(net.valid())
}
