//! Evaluation of one subnet: BN recalibration on a fixed subset of training
//! images, then top-1/top-5 and loss on a validation split (DESIGN §6).
//! Training-time validation, `ofa eval` and the accuracy table share it.

use super::config::EvalConfig;
use crate::data::{
    Augment, Batch, BatchRequest, Dataset, Prefetcher, SplitKind, cap_indices, make_batch,
};
use crate::nn::{OfaBackend, Subnet, Supernet, calibrate_bn};
use crate::space::{Arch, Space};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Images `[N, C, R, R]` and labels `[N]` of a batch.
pub fn batch_tensors<B: Backend>(
    b: &Batch,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let x = Tensor::from_data(
        TensorData::new(
            b.images.clone(),
            [b.batch_size, b.channels, b.resolution, b.resolution],
        ),
        device,
    );
    let y = Tensor::from_data(TensorData::new(b.labels.clone(), [b.batch_size]), device);
    (x, y)
}

/// Which images an evaluation uses.
#[derive(Clone)]
pub struct EvalData {
    pub dataset: Arc<Dataset>,
    /// Training-split images for BN recalibration.
    pub calib: Vec<usize>,
    /// Split and images to evaluate on.
    pub split: SplitKind,
    pub eval: Vec<usize>,
}

impl EvalData {
    /// Calibration images: a fixed subset of `train` (never the held-out
    /// ones); evaluation images: `eval`, capped by `cfg.max_images`.
    pub fn new(
        dataset: Arc<Dataset>,
        train: &[usize],
        split: SplitKind,
        eval: Vec<usize>,
        cfg: &EvalConfig,
        seed: u64,
    ) -> Self {
        let eval = if cfg.max_images > 0 {
            cap_indices(&eval, cfg.max_images, seed ^ 0xE7A1)
        } else {
            eval
        };
        EvalData {
            dataset,
            calib: cap_indices(train, cfg.calib_images, seed ^ 0xCA1B),
            split,
            eval,
        }
    }
}

/// Accuracy and loss of one subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub images: usize,
}

impl EvalResult {
    /// Standard error of `top1` as an estimate from `images` images
    /// (binomial): `√(p (1 − p) / n)`.
    pub fn stderr(&self) -> f64 {
        let n = self.images.max(1) as f64;
        (self.top1 * (1.0 - self.top1) / n).sqrt()
    }
}

/// Standard error of the difference in top-1 of two evaluations on the
/// same images (paired, McNemar): `√(b + c − (b − c)² / n) / n`, with `b`
/// and `c` the images only one of them gets right.
pub fn paired_stderr(a: &[bool], b: &[bool]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    let (mut only_a, mut only_b) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (true, false) => only_a += 1.0,
            (false, true) => only_b += 1.0,
            _ => {}
        }
    }
    let n = n as f64;
    ((only_a + only_b - (only_a - only_b).powi(2) / n).max(0.0)).sqrt() / n
}

/// Top-1/top-5 hits and summed cross-entropy of a logits batch; `hits`
/// receives each row's top-1 correctness.
pub(crate) fn score(
    logits: &[f32],
    labels: &[i64],
    classes: usize,
    hits: &mut Vec<bool>,
) -> (usize, usize, f64) {
    let (mut t1, mut t5, mut loss) = (0, 0, 0.0);
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let target = row[y as usize];
        let better = row.iter().filter(|&&v| v > target).count();
        t1 += (better < 1) as usize;
        t5 += (better < 5) as usize;
        hits.push(better < 1);
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - target as f64;
    }
    (t1, t5, loss)
}

/// Recalibrates the BN statistics of `arch` on the calibration images of
/// `data`, at the arch's resolution, in batches of `batch`.
///
/// Folder (ImageNet-style) images go through the training transform, as the
/// reference's `set_running_statistics` feeds them (a random sub-train
/// loader: random-resized crop and flip), with fixed seeds so every
/// recalibration of a run sees the same crops; in-memory images keep the
/// evaluation transform.
pub fn recalibrate<B: OfaBackend>(
    net: &Supernet<B>,
    arch: &Arch,
    data: &EvalData,
    batch: usize,
    device: &B::Device,
) -> anyhow::Result<()> {
    let reference = data.dataset.transforms == crate::data::FolderTransforms::Reference;
    let augment = if data.dataset.is_in_memory() || !reference {
        Augment::None
    } else {
        Augment::Train
    };
    let mut batches = Vec::new();
    for (i, chunk) in data.calib.chunks(batch.max(1)).enumerate() {
        let b = make_batch(
            &data.dataset,
            &data.dataset.train,
            chunk,
            arch.r,
            augment,
            i as u64,
        )?;
        batches.push(batch_tensors::<B>(&b, device).0);
    }
    calibrate_bn(net, arch, batches)?;
    Ok(())
}

/// Recalibrates BN for `arch` on `data.calib`, then evaluates on
/// `data.eval`. `progress(done, total)` reports evaluated images.
pub fn evaluate<B: OfaBackend>(
    net: &Supernet<B>,
    arch: &Arch,
    data: &EvalData,
    cfg: &EvalConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<EvalResult> {
    Ok(evaluate_with_hits(net, arch, data, cfg, device, progress)?.0)
}

/// [`evaluate`], also returning each evaluated image's top-1 correctness
/// (in `data.eval` order), for paired comparisons.
pub fn evaluate_with_hits<B: OfaBackend>(
    net: &Supernet<B>,
    arch: &Arch,
    data: &EvalData,
    cfg: &EvalConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<(EvalResult, Vec<bool>)> {
    if !data.calib.is_empty() {
        recalibrate(net, arch, data, cfg.calib_batch, device)?;
    }
    // The recalibrated subnet as it will be deployed: extracted (BN
    // statistics copied) and, on CPU backends, run by the host engine —
    // the same outputs as the supernet's Eval pass up to rounding
    // (tests/nn.rs), at the engine's speed.
    let run = crate::nn::Runner::new(crate::nn::extract(net, arch));
    let r = measure(
        data,
        arch.r,
        cfg.batch,
        net.space.num_classes,
        device,
        progress,
        &|x| run.forward(x),
    )?;
    if !r.0.loss.is_finite() {
        anyhow::bail!("evaluation of {arch} produced a non-finite loss");
    }
    Ok(r)
}

/// Evaluates a static subnet with its stored BN statistics.
pub fn evaluate_subnet<B: OfaBackend>(
    net: &Subnet<B>,
    data: &EvalData,
    batch: usize,
    device: &B::Device,
) -> anyhow::Result<EvalResult> {
    // The host engine on CPU backends, as the subnet is deployed.
    let run = crate::nn::Runner::new(net.clone());
    Ok(measure(
        data,
        net.arch.r,
        batch,
        net.space.num_classes,
        device,
        &mut |_, _| {},
        &|x| run.forward(x),
    )?
    .0)
}

/// Top-1/top-5/loss of `forward` on `data.eval` at resolution `r`.
fn measure<B: OfaBackend>(
    data: &EvalData,
    r: usize,
    batch: usize,
    classes: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
    forward: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 2>,
) -> anyhow::Result<(EvalResult, Vec<bool>)> {
    let requests: Vec<BatchRequest> = data
        .eval
        .chunks(batch.max(1))
        .map(|c| BatchRequest {
            indices: c.to_vec(),
            resolution: r,
            augment: Augment::None,
            seed: 0,
            first: 0,
        })
        .collect();
    let (mut t1, mut t5, mut loss, mut n) = (0, 0, 0.0, 0);
    let mut hits = Vec::with_capacity(data.eval.len());
    for batch in Prefetcher::new(data.dataset.clone(), data.split, requests) {
        let batch = batch?;
        let (x, _) = batch_tensors::<B>(&batch, device);
        let host = forward(x)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 logits");
        let (a, b, l) = score(&host, &batch.labels, classes, &mut hits);
        t1 += a;
        t5 += b;
        loss += l;
        n += batch.batch_size;
        progress(n, data.eval.len());
    }
    if n == 0 {
        anyhow::bail!("no images to evaluate on");
    }
    Ok((
        EvalResult {
            top1: t1 as f64 / n as f64,
            top5: t5 as f64 / n as f64,
            loss: loss / n as f64,
            images: n,
        },
        hits,
    ))
}

/// The subnets validated during training: the largest, the smallest, one
/// with every middle choice, and one fixed random subnet.
pub fn reference_archs(space: &Space) -> Vec<(String, Arch)> {
    let mid = |v: &[usize]| v[v.len() / 2];
    let mut middle = Arch::max(space);
    middle
        .ks
        .iter_mut()
        .for_each(|k| *k = mid(&space.kernel_choices));
    middle
        .e
        .iter_mut()
        .for_each(|e| *e = mid(&space.expand_choices));
    for (s, d) in middle.d.iter_mut().enumerate() {
        *d = mid(&space.stage_depths(s));
    }
    middle.r = mid(&space.resolutions);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20_191_026);
    let random = Arch::sample(space, &mut rng).with_resolution(mid(&space.resolutions));
    vec![
        ("max".into(), Arch::max(space)),
        ("min".into(), Arch::min(space)),
        ("mid".into(), middle.canonical(space)),
        ("random".into(), random),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_counts_ranks_and_loss() {
        // Two rows of 6 classes; label ranks 1st and 6th.
        let logits = [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut hits = vec![];
        let (t1, t5, loss) = score(&logits, &[0, 0], 6, &mut hits);
        assert_eq!((t1, t5), (1, 1 - 0));
        assert_eq!(hits, [true, false]);
        let row1: f64 = [5.0f64, 1.0, 0.0, 0.0, 0.0, 0.0]
            .iter()
            .map(|v| v.exp())
            .sum::<f64>()
            .ln()
            - 5.0;
        let row2: f64 = [0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0]
            .iter()
            .map(|v| v.exp())
            .sum::<f64>()
            .ln();
        assert!((loss - (row1 + row2)).abs() < 1e-9);
    }

    #[test]
    fn paired_stderr_of_a_hand_worked_case() {
        // 10 images: both right on 6, only a on 3, only b on 1, both wrong 0.
        let a = [true, true, true, true, true, true, true, true, true, false];
        let b = [
            true, true, true, true, true, true, false, false, false, true,
        ];
        // b + c = 4, (b − c)² / n = 0.4: √3.6 / 10.
        assert!((paired_stderr(&a, &b) - 3.6f64.sqrt() / 10.0).abs() < 1e-12);
        assert_eq!(paired_stderr(&a, &a), 0.0);
        let r = EvalResult {
            top1: 0.9,
            images: 100,
            ..Default::default()
        };
        assert!((r.stderr() - 0.03).abs() < 1e-12);
    }
}
