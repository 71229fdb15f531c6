//! The training loop shared by all schedules.

use super::checkpoint::{self, Checkpoint, LoopState};
use super::config::TrainConfig;
use super::config::{GradientAggregation, IndependentNet, InplaceLoss, TeacherBn};
use super::eval::{
    EvalData, EvalResult, batch_tensors, evaluate, evaluate_subnet, reference_archs,
};
use super::loss::{ce_plus_kd, kd_only, read_loss};
use super::optim::Sgd;
use super::parallel::{all_reduce_gradients, broadcast_checkpoint};
use super::schedule::{Item, Kd, Phase, mix, phases, plan_step, step_resolution};
use crate::data::{
    Augment, BatchRequest, Dataset, Prefetcher, SplitKind, batch_seed, cap_indices_stratified,
    epoch_order, holdout,
};
use crate::dist::{local, slice_of};
use crate::nn::{
    Comm, Mode, OfaBackend, Shard, Subnet, Supernet, SupernetConfig, apply_permutations,
    save_subnet, save_supernet,
};
use crate::space::{Arch, Space};
use anyhow::Context;
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Progress of one optimizer step, for displays.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub total: u64,
    pub epoch: u64,
    pub step_in_epoch: u64,
    pub steps_per_epoch: u64,
    pub phase: String,
    /// Mean unscaled loss of the step's networks.
    pub loss: f64,
    pub lr: f64,
    /// ε of DϵpS subnets, when it applies.
    pub eps: Option<f64>,
    pub images_per_s: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epochs completed (fractional for a final partial epoch).
    pub epoch: f64,
    pub step: u64,
    pub phase: String,
    pub lr: f64,
    pub train_loss: f64,
    /// Training throughput: images through a network per second.
    pub images_per_s: f64,
    /// Images through a network so far (a step that trains 4 networks on
    /// a batch of 64 counts 256).
    #[serde(default)]
    pub images: u64,
    /// Training seconds so far (validation excluded).
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// Top-1/top-5/loss of the reference subnets after BN recalibration.
    pub val: BTreeMap<String, EvalResult>,
}

/// Hooks for progress display; the library never writes to the terminal.
pub trait TrainObserver {
    fn phase(&mut self, _phase: &Phase) {}
    fn step(&mut self, _report: &StepReport) {}
    fn eval(&mut self, _label: &str, _done: usize, _total: usize) {}
    fn epoch_end(&mut self, _metrics: &EpochMetrics) {}
    fn note(&mut self, _message: &str) {}
    /// Asked after every step; `true` checkpoints and stops the run (Ctrl-C).
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct NoObserver;
impl TrainObserver for NoObserver {}

/// What a finished run leaves.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// `supernet.safetensors`, or the `subnet/` folder of a static network.
    pub output: PathBuf,
    pub last: Option<EpochMetrics>,
    pub steps: u64,
    pub train_seconds: f64,
    pub images: u64,
    /// The run stopped on request before its last step (resumable).
    pub interrupted: bool,
}

/// Validation hold-out and (capped) training indices of a run.
pub fn split_indices(
    cfg: &TrainConfig,
    dataset: &Dataset,
) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let n = dataset.train.len();
    let (val, train) = holdout(n, cfg.val_size, cfg.seed)?;
    let train = if cfg.max_train_images > 0 && train.len() > cfg.max_train_images {
        cap_indices_stratified(&train, &dataset.train, cfg.max_train_images, cfg.seed)?
    } else {
        train
    };
    Ok((val, train))
}

/// The batches of steps `[from, to)`, built lazily in step order.
struct Requests {
    train: Arc<Vec<usize>>,
    cfg: TrainConfig,
    space: Space,
    fixed_resolution: Option<usize>,
    steps_per_epoch: u64,
    step: u64,
    end: u64,
    order: Option<(u64, Vec<usize>)>,
    /// This process's slice of every global batch (all of it for one
    /// process).
    slice: std::ops::Range<usize>,
}

impl Iterator for Requests {
    type Item = BatchRequest;
    fn next(&mut self) -> Option<BatchRequest> {
        if self.step >= self.end {
            return None;
        }
        let (epoch, pos) = (
            self.step / self.steps_per_epoch,
            self.step % self.steps_per_epoch,
        );
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = Some((epoch, epoch_order(&self.train, epoch, self.cfg.seed)));
        }
        let order = &self.order.as_ref().expect("set above").1;
        let bs = self.cfg.batch_size;
        let global = &order[pos as usize * bs..(pos as usize + 1) * bs];
        let indices = global[self.slice.clone()].to_vec();
        let resolution = self
            .fixed_resolution
            .unwrap_or_else(|| step_resolution(&self.space, self.cfg.seed, self.step));
        let req = BatchRequest {
            indices,
            resolution,
            augment: if self.cfg.augment {
                Augment::Train
            } else {
                Augment::None
            },
            seed: batch_seed(self.cfg.seed, epoch, self.step),
            first: self.slice.start,
        };
        self.step += 1;
        Some(req)
    }
}

/// What a run trains: the supernet (any subnet, chosen per step), or one
/// static network (`independent` with `independent_net = "static"`).
pub enum Network<B: AutodiffBackend + OfaBackend> {
    Supernet(Supernet<B>),
    Static(Subnet<B>),
}

/// Logits of one planned network; the mode carries BN and dropout
/// behaviour.
fn item_mode<'a, B: OfaBackend>(item: &Item) -> Mode<'a, B> {
    if item.dropout {
        Mode::Train
    } else {
        Mode::TrainNoDropout
    }
}

/// `mode` on this process's slice of a data-parallel batch, when there is
/// one.
fn sharded<'a, B: OfaBackend>(mode: &'a Mode<'a, B>, shard: Option<&'a Shard>) -> Mode<'a, B> {
    match shard {
        Some(s) => Mode::Sharded(mode, s),
        None => *mode,
    }
}

/// Loss of one planned network against its labels and distillation target.
fn item_loss<B: Backend>(
    item: &Item,
    logits: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
    teacher: Option<&Tensor<B, 2>>,
    in_place: Option<&Tensor<B, 2>>,
    cfg: &TrainConfig,
) -> Tensor<B, 1> {
    let ce = |t| {
        ce_plus_kd(
            logits.clone(),
            y.clone(),
            t,
            cfg.label_smoothing,
            cfg.kd_ratio,
        )
    };
    match (item.kd, in_place) {
        (Kd::None, _) => ce(None),
        (Kd::Teacher, _) => ce(teacher),
        (Kd::InPlace, Some(t)) => match cfg.inplace_loss {
            InplaceLoss::Kd => kd_only(logits.clone(), t, cfg.kd_temperature),
            InplaceLoss::CePlusKd => ce(Some(t)),
        },
        // The first network of a step has no in-place target yet.
        (Kd::InPlace, None) => ce(None),
    }
}

/// Gradients of one step: every planned network's loss (scaled by its ε)
/// back-propagated and summed, as the reference does before one optimizer
/// step, then combined per `cfg.gradient_aggregation`. Returns the
/// gradients and the mean unscaled loss.
pub fn step_gradients<B>(
    net: &Supernet<B>,
    items: &[Item],
    x: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    teacher: Option<&Supernet<B::InnerBackend>>,
    cfg: &TrainConfig,
) -> anyhow::Result<(GradientsParams, f64)>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let (grads, loss) = step_gradients_lazy(net, items, x, y, teacher, cfg, None);
    let loss = read_loss(loss, || {
        let archs: Vec<String> = items.iter().map(|i| i.arch.to_string()).collect();
        format!("subnets {}", archs.join("; "))
    })?;
    Ok((grads, loss))
}

/// [`step_gradients`] leaving the mean loss on the device: the training
/// loop reads it every few steps, not after every one (a read waits for
/// the device). With a `shard`, `x` and `y` are this process's slice of a
/// data-parallel batch.
fn step_gradients_lazy<B>(
    net: &Supernet<B>,
    items: &[Item],
    x: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    teacher: Option<&Supernet<B::InnerBackend>>,
    cfg: &TrainConfig,
    shard: Option<&Shard>,
) -> (GradientsParams, Tensor<B::InnerBackend, 1>)
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let teacher_logits = teacher_logits(items, x.clone(), teacher, cfg, shard);
    let (grads, loss) = accumulate(
        net,
        items,
        x,
        y,
        teacher_logits.as_ref(),
        cfg,
        &|n, x, it| n.forward(x, &it.arch, sharded(&item_mode(it), shard)),
    );
    let grads = match cfg.gradient_aggregation {
        GradientAggregation::Sum => grads,
        other => aggregate(net, items, grads, other),
    };
    (grads, loss)
}

/// The progressive-shrinking teacher's logits, for a step that distils
/// from it.
fn teacher_logits<B>(
    items: &[Item],
    x: Tensor<B, 4>,
    teacher: Option<&Supernet<B::InnerBackend>>,
    cfg: &TrainConfig,
    shard: Option<&Shard>,
) -> Option<Tensor<B, 2>>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let t = teacher.filter(|_| items.iter().any(|i| i.kd == Kd::Teacher))?;
    let max = Arch::max(&t.space).with_resolution(items[0].arch.r);
    let mode = match cfg.ps.teacher_bn {
        TeacherBn::Batch => Mode::Teacher,
        TeacherBn::Running => Mode::Eval,
    };
    let mode = sharded(&mode, shard);
    Some(Tensor::<B, 2>::from_inner(t.forward(x.inner(), &max, mode)))
}

/// Σ of the items' scaled gradients and their mean unscaled loss (left on
/// the device).
fn accumulate<B, M>(
    net: &M,
    items: &[Item],
    x: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    teacher: Option<&Tensor<B, 2>>,
    cfg: &TrainConfig,
    forward: &dyn Fn(&M, Tensor<B, 4>, &Item) -> Tensor<B, 2>,
) -> (GradientsParams, Tensor<B::InnerBackend, 1>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut in_place: Option<Tensor<B, 2>> = None;
    let mut acc = GradientsAccumulator::<M>::new();
    let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
    for item in items {
        let logits = forward(net, x.clone(), item);
        let loss = item_loss(
            item,
            logits.clone(),
            y.clone(),
            teacher,
            in_place.as_ref(),
            cfg,
        );
        let value = loss.clone().inner();
        total = Some(match total {
            Some(t) => t + value,
            None => value,
        });
        if in_place.is_none() {
            in_place = Some(logits.detach());
        }
        let grads = (loss * item.scale).backward();
        acc.accumulate(net, GradientsParams::from_grads(grads, net));
    }
    let total = total.expect("a step trains at least one network") / items.len() as f64;
    (acc.grads(), total)
}

/// Steps between two reads of the training loss from the device (and
/// before every checkpoint and evaluation): a read waits for the device.
const LOSS_READ_EVERY: u64 = 10;

/// Step losses summed on the device since the last read.
struct PendingLoss<B: Backend> {
    sum: Option<Tensor<B, 1>>,
    steps: u64,
}

impl<B: Backend> Default for PendingLoss<B> {
    fn default() -> Self {
        PendingLoss {
            sum: None,
            steps: 0,
        }
    }
}

impl<B: Backend> PendingLoss<B> {
    fn add(&mut self, loss: Tensor<B, 1>) {
        self.sum = Some(match self.sum.take() {
            Some(s) => s + loss,
            None => loss,
        });
        self.steps += 1;
    }

    /// The summed loss and its number of steps; an error if it is not
    /// finite (naming the steps).
    fn read(&mut self, step: u64, phase: &str) -> anyhow::Result<(f64, u64)> {
        let steps = std::mem::take(&mut self.steps);
        let Some(sum) = self.sum.take() else {
            return Ok((0.0, 0));
        };
        let v = read_loss(sum, || {
            format!("steps {}..{step} (phase '{phase}')", step - steps)
        })?;
        Ok((v, steps))
    }
}

/// DepS's `avg` / `avg_sqrt` aggregation (`train_one_epoch_deps`): each
/// element of the summed gradient divided by `Σ_i w_i m_i` (or its root),
/// `m_i` = 1 where network `i` reads that weight.
fn aggregate<B>(
    net: &Supernet<B>,
    items: &[Item],
    mut grads: GradientsParams,
    how: GradientAggregation,
) -> GradientsParams
where
    B: AutodiffBackend + OfaBackend,
{
    use burn::module::{ModuleVisitor, Param};
    let regions: Vec<(f64, crate::nn::ActiveRegions)> = items
        .iter()
        .map(|i| (i.scale, net.active_regions(&i.arch)))
        .collect();
    struct V<'a, B: AutodiffBackend> {
        regions: &'a [(f64, crate::nn::ActiveRegions)],
        grads: &'a mut GradientsParams,
        how: GradientAggregation,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let Some(g) = self.grads.remove::<B::InnerBackend, D>(p.id) else {
                return;
            };
            let dims = p.dims();
            let mut weight = vec![0f32; dims.iter().product()];
            for (w, reg) in self.regions {
                if let Some(r) = reg.get(&p.id) {
                    add_box(&mut weight, &dims, r, *w as f32);
                }
            }
            let factor: Vec<f32> = weight
                .into_iter()
                .map(|s| match (s > 0.0, self.how) {
                    (false, _) => 1.0,
                    (true, GradientAggregation::AvgSqrt) => 1.0 / s.sqrt(),
                    (true, _) => 1.0 / s,
                })
                .collect();
            let f = Tensor::<B::InnerBackend, D>::from_data(
                burn::tensor::TensorData::new(factor, dims),
                &g.device(),
            );
            self.grads.register::<B::InnerBackend, D>(p.id, g * f);
        }
    }
    let mut v = V::<B> {
        regions: &regions,
        grads: &mut grads,
        how,
        _b: std::marker::PhantomData,
    };
    net.visit(&mut v);
    grads
}

/// Adds `w` to every element of the box `r` of a row-major `dims` array.
fn add_box(out: &mut [f32], dims: &[usize], r: &[std::ops::Range<usize>], w: f32) {
    fn rec(out: &mut [f32], dims: &[usize], r: &[std::ops::Range<usize>], base: usize, w: f32) {
        let stride: usize = dims[1..].iter().product();
        for i in r[0].clone() {
            let at = base + i * stride;
            if dims.len() == 1 {
                out[at] += w;
            } else {
                rec(out, &dims[1..], &r[1..], at, w);
            }
        }
    }
    if !dims.is_empty() {
        rec(out, dims, r, 0, w);
    }
}

fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    writeln!(f, "{line}")?;
    f.sync_data()?;
    Ok(())
}

/// Drops metrics lines written after the checkpoint a run resumes from.
fn truncate_metrics(path: &Path, step: u64) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<EpochMetrics>(l).is_ok_and(|m| m.step <= step))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::util::write_text_atomic(path, &out)
}

/// Trains a supernet of `space` on `dataset` into the run directory `run`
/// (or, for an `independent` run with a static network, that network).
/// With `resume`, continues from the newest checkpoint there. One process;
/// [`Trainer`] with a [`Collective`] for a data-parallel job.
pub fn train<B>(
    cfg: &TrainConfig,
    space: &Space,
    dataset: Arc<Dataset>,
    run: &Path,
    resume: bool,
    device: &B::Device,
    obs: &mut dyn TrainObserver,
) -> anyhow::Result<TrainOutcome>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    Trainer::<B>::open(cfg, space, dataset, run, resume, device, local(), obs)?.run(obs)
}

/// One training run as explicit steps: [`open`](Trainer::open) (run
/// folder, resume, the start state shared by every rank), then
/// [`step`](Trainer::step) until [`done`](Trainer::done) — each step trains,
/// and at an epoch end validates, and checkpoints when due — then
/// [`finish`](Trainer::finish) (the final network) or, on a stop request,
/// [`interrupt`](Trainer::interrupt). [`run`](Trainer::run) does all of it.
///
/// In a data-parallel job (`comm` of more than one rank) every rank runs
/// the same steps on its slice of each global batch; the ranks exchange
/// the gradients once per step and BN statistics inside the passes, so
/// they hold identical weights throughout. Rank 0 alone writes files and
/// validates.
pub struct Trainer<B: AutodiffBackend + OfaBackend>
where
    B::InnerBackend: OfaBackend,
{
    cfg: TrainConfig,
    space: Space,
    run: PathBuf,
    device: B::Device,
    comm: Comm,
    /// This rank's place in every global batch (`None` for one process).
    shard: Option<Shard>,
    plan: Vec<Phase>,
    total: u64,
    steps_per_epoch: u64,
    independent: Option<Arch>,
    /// `None` only while a step moves it through the optimizer.
    net: Option<Network<B>>,
    sgd: Sgd<B>,
    teacher: Option<Supernet<B::InnerBackend>>,
    state: LoopState,
    /// Validation data; rank 0 only.
    eval_data: Option<EvalData>,
    batches: Prefetcher,
    last: Option<EpochMetrics>,
    window: (Instant, u64),
    pending: PendingLoss<B::InnerBackend>,
    shown_loss: f64,
    metrics_path: PathBuf,
}

impl<B> Trainer<B>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    /// Prepares the run: checks, the run folder (rank 0), the network fresh
    /// or from the newest checkpoint (with `resume`), and on every rank the
    /// state rank 0 holds.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        cfg: &TrainConfig,
        space: &Space,
        dataset: Arc<Dataset>,
        run: &Path,
        resume: bool,
        device: &B::Device,
        comm: Comm,
        obs: &mut dyn TrainObserver,
    ) -> anyhow::Result<Self> {
        cfg.validate(space)?;
        if dataset.channels != space.in_channels || dataset.classes.len() != space.num_classes {
            anyhow::bail!(
                "dataset {} has {} channel(s) and {} classes, but space '{}' expects {} and {}",
                dataset.name,
                dataset.channels,
                dataset.classes.len(),
                space.name,
                space.in_channels,
                space.num_classes
            );
        }
        let ranks = comm.size();
        if cfg.batch_size % ranks != 0 {
            anyhow::bail!(
                "batch size {} is the global batch and must split evenly over the job's {ranks} processes",
                cfg.batch_size
            );
        }
        let (val, train_idx) = split_indices(cfg, &dataset)?;
        let steps_per_epoch = (train_idx.len() / cfg.batch_size).max(1) as u64;
        if train_idx.len() < cfg.batch_size {
            anyhow::bail!(
                "only {} training images for batch size {}",
                train_idx.len(),
                cfg.batch_size
            );
        }
        let plan = phases(cfg, steps_per_epoch);
        let total = plan.last().map(|p| p.end()).unwrap_or(0);
        let independent = match cfg.schedule {
            super::Schedule::Independent => Some(cfg.independent_arch(space)?),
            _ => None,
        };
        let static_arch = independent
            .clone()
            .filter(|_| cfg.independent_net == IndependentNet::Static);
        let metrics_path = run.join("metrics.jsonl");

        let mut net: Network<B> = match &static_arch {
            Some(a) => Network::Static(Subnet::init(space, a, cfg.seed, device)),
            None => Network::Supernet(
                SupernetConfig::new(space.clone())
                    .with_seed(cfg.seed)
                    .init(device),
            ),
        };
        let mut sgd = Sgd::<B>::new(cfg.sgd.clone());
        // Rank 0 prepares the folder and the start state; every rank then
        // loads that state, so all start from the same weights whatever
        // their file systems hold.
        let (start, source) = if comm.is_root() {
            let (ck, source) = prepare_run(
                cfg,
                space,
                run,
                resume,
                &net,
                &sgd,
                &metrics_path,
                total,
                obs,
            )?;
            (Some(ck), source)
        } else {
            (None, None)
        };
        let ck = broadcast_checkpoint(start, &*comm);
        // A single process starting fresh already holds these weights.
        if ranks > 1 || source.is_some() {
            let from = source.unwrap_or_else(|| run.join("checkpoints"));
            net = load_network(net, space, &ck.weights, device).map_err(|e| {
                anyhow::anyhow!(
                    "{}: weights do not fit space '{}': {e}",
                    from.display(),
                    space.name
                )
            })?;
        }
        sgd.load_state(&ck.momentum, device);
        let teacher = match &ck.teacher {
            Some(t) => {
                let skeleton: Supernet<B::InnerBackend> =
                    SupernetConfig::new(space.clone()).init(device);
                Some(skeleton.load_tensor_map(t)?)
            }
            None => None,
        };
        let state = ck.state;

        let shard = (ranks > 1).then(|| {
            let slice = slice_of(cfg.batch_size, comm.rank(), ranks);
            Shard {
                comm: comm.clone(),
                offset: slice.start,
                global: cfg.batch_size,
            }
        });
        let train_idx = Arc::new(train_idx);
        let eval_data = comm.is_root().then(|| {
            EvalData::new(
                dataset.clone(),
                &train_idx,
                SplitKind::Train,
                val,
                &cfg.eval,
                cfg.seed,
            )
        });
        let requests = Requests {
            train: train_idx.clone(),
            cfg: cfg.clone(),
            space: space.clone(),
            fixed_resolution: independent.as_ref().map(|a| a.r),
            steps_per_epoch,
            step: state.step,
            end: total,
            order: None,
            slice: slice_of(cfg.batch_size, comm.rank(), ranks),
        };
        Ok(Trainer {
            cfg: cfg.clone(),
            space: space.clone(),
            run: run.to_path_buf(),
            device: device.clone(),
            comm,
            shard,
            plan,
            total,
            steps_per_epoch,
            independent,
            net: Some(net),
            sgd,
            teacher,
            state,
            eval_data,
            batches: Prefetcher::new(dataset, SplitKind::Train, requests),
            last: None,
            window: (Instant::now(), 0),
            pending: PendingLoss::default(),
            shown_loss: f64::NAN,
            metrics_path,
        })
    }

    /// Every step, epoch-end validation and checkpoint, then the final
    /// network; a stop request on any rank checkpoints and stops all.
    pub fn run(mut self, obs: &mut dyn TrainObserver) -> anyhow::Result<TrainOutcome> {
        while !self.done() {
            self.step(obs)?;
            if self.stop_requested(obs) {
                return self.interrupt(obs);
            }
        }
        self.finish()
    }

    /// Whether every planned step has run.
    pub fn done(&self) -> bool {
        self.state.step >= self.total
    }

    /// Steps completed.
    pub fn steps(&self) -> u64 {
        self.state.step
    }

    /// Whether any rank's observer asks to stop (one collective call, so
    /// every rank stops after the same step).
    pub fn stop_requested(&mut self, obs: &mut dyn TrainObserver) -> bool {
        let local = !self.done() && obs.stop_requested();
        self.comm.any(local)
    }

    /// One optimizer step: the phase's start actions if it begins here, the
    /// batch, every planned network's gradients, their all-reduce, the
    /// update; then, when due, validation (epoch end) and a checkpoint.
    pub fn step(&mut self, obs: &mut dyn TrainObserver) -> anyhow::Result<()> {
        let pi = self
            .plan
            .iter()
            .position(|p| self.state.step < p.end())
            .context("no step left: the run is done")?;
        let phase = self.plan[pi].clone();
        let mut net = self
            .net
            .take()
            .expect("the network is in place between steps");
        if self.state.phase_started.is_none_or(|s| s < pi) {
            net = begin_phase(
                net,
                &phase,
                &mut self.sgd,
                &mut self.teacher,
                &self.device,
                obs,
            );
            self.state.phase_started = Some(pi);
        }

        let t0 = Instant::now();
        let batch = self.batches.next().context("data loader ended early")??;
        let (x, y) = batch_tensors::<B>(&batch, &self.device);
        let items = plan_step(
            &self.cfg,
            &self.space,
            &phase,
            self.state.step,
            self.steps_per_epoch,
            self.independent.as_ref(),
        );
        <B as Backend>::seed(&self.device, mix(self.cfg.seed, self.state.step, 2));
        let lr = phase.lr_at(self.state.step);
        let (cfg, shard, comm) = (&self.cfg, self.shard.as_ref(), &*self.comm);
        let (next, loss) = match net {
            Network::Supernet(n) => {
                let (grads, l) =
                    step_gradients_lazy(&n, &items, x, y, self.teacher.as_ref(), cfg, shard);
                let grads = all_reduce_gradients(&n, grads, comm);
                (Network::Supernet(self.sgd.step(n, lr, grads)), l)
            }
            Network::Static(n) => {
                let (grads, l) = accumulate(&n, &items, x, y, None, cfg, &|n, x, it| {
                    n.forward_mode(x, sharded(&item_mode(it), shard))
                });
                let grads = all_reduce_gradients(&n, grads, comm);
                let names = crate::nn::param_names_in_order(&n);
                (
                    Network::Static(self.sgd.step_module(n, lr, grads, &names)),
                    l,
                )
            }
        };
        self.net = Some(next);
        self.pending.add(loss);
        self.state.step += 1;
        let step = self.state.step;
        // Images of the global batch: the same count on every rank.
        let imgs = (self.cfg.batch_size * items.len()) as u64;
        self.state.images += imgs;
        self.window.1 += imgs;
        let epoch_end = step % self.steps_per_epoch == 0 || step == self.total;
        let due = epoch_end || step % self.cfg.checkpoint_every == 0;
        if due || step % LOSS_READ_EVERY == 0 {
            self.read_loss(&phase.name)?;
        }
        self.state.seconds += t0.elapsed().as_secs_f64();
        let rate = self.window.1 as f64 / self.window.0.elapsed().as_secs_f64().max(1e-9);
        if self.window.0.elapsed().as_secs_f64() > 30.0 {
            self.window = (Instant::now(), 0);
        }
        let eps = items
            .iter()
            .find(|i| i.kd == Kd::InPlace)
            .map(|i| i.scale)
            .filter(|_| self.cfg.schedule == super::Schedule::Deps);
        obs.step(&StepReport {
            step,
            total: self.total,
            epoch: (step - 1) / self.steps_per_epoch,
            step_in_epoch: (step - 1) % self.steps_per_epoch + 1,
            steps_per_epoch: self.steps_per_epoch,
            phase: phase.name.clone(),
            loss: self.shown_loss,
            lr,
            eps,
            images_per_s: rate,
        });
        if epoch_end {
            self.end_epoch(&phase.name, lr, obs)?;
        }
        if due {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Adds the losses summed on the device since the last read (the mean
    /// over the ranks: each holds its slice's mean) to the epoch's sums.
    fn read_loss(&mut self, phase: &str) -> anyhow::Result<()> {
        let (sum, steps) = self.pending.read(self.state.step, phase)?;
        let mut v = [sum];
        self.comm.all_reduce_sum_f64(&mut v);
        let sum = v[0] / self.comm.size() as f64;
        self.state.epoch_loss_sum += sum;
        self.state.epoch_loss_steps += steps;
        if steps > 0 {
            self.shown_loss = sum / steps as f64;
        }
        Ok(())
    }

    /// Validation and the metrics line (rank 0), and the epoch's sums reset.
    fn end_epoch(
        &mut self,
        phase: &str,
        lr: f64,
        obs: &mut dyn TrainObserver,
    ) -> anyhow::Result<()> {
        if let Some(data) = &self.eval_data {
            let t_eval = Instant::now();
            let net = self.net.as_ref().expect("network in place");
            let val = validate(
                net,
                &self.space,
                self.independent.as_ref(),
                data,
                &self.cfg,
                &self.device,
                obs,
            )?;
            let s = &self.state;
            let m = EpochMetrics {
                epoch: s.step as f64 / self.steps_per_epoch as f64,
                step: s.step,
                phase: phase.to_string(),
                lr,
                train_loss: s.epoch_loss_sum / s.epoch_loss_steps.max(1) as f64,
                images_per_s: s.images as f64 / s.seconds.max(1e-9),
                images: s.images,
                train_seconds: s.seconds,
                eval_seconds: t_eval.elapsed().as_secs_f64(),
                val,
            };
            append_line(&self.metrics_path, &serde_json::to_string(&m)?)?;
            obs.epoch_end(&m);
            self.last = Some(m);
        }
        self.state.epoch_loss_sum = 0.0;
        self.state.epoch_loss_steps = 0;
        Ok(())
    }

    /// Writes a checkpoint of the current state (rank 0; the others hold
    /// the same state).
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        if !self.comm.is_root() {
            return Ok(());
        }
        let net = self.net.as_ref().expect("network in place");
        save_checkpoint(
            &self.run,
            net,
            &self.sgd,
            self.teacher.as_ref(),
            &self.state,
        )
    }

    /// Stops before the last step: the pending loss counted, a checkpoint
    /// written, an outcome that says the run can be resumed.
    pub fn interrupt(mut self, obs: &mut dyn TrainObserver) -> anyhow::Result<TrainOutcome> {
        let phase = self.current_phase_name();
        self.read_loss(&phase)?;
        self.checkpoint()?;
        obs.note(&format!(
            "stopped at step {}/{}; continue with --resume",
            self.state.step, self.total
        ));
        let net = self.net.as_ref().expect("network in place");
        Ok(TrainOutcome {
            output: output_path(&self.run, net),
            last: self.last,
            steps: self.state.step,
            train_seconds: self.state.seconds,
            images: self.state.images,
            interrupted: true,
        })
    }

    fn current_phase_name(&self) -> String {
        let step = self.state.step.saturating_sub(1);
        self.plan
            .iter()
            .find(|p| step < p.end())
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    /// The trained network written (rank 0) as `supernet.safetensors` or
    /// the `subnet/` folder.
    pub fn finish(self) -> anyhow::Result<TrainOutcome> {
        let Trainer {
            batches,
            net,
            run,
            comm,
            cfg,
            metrics_path,
            mut last,
            state,
            ..
        } = self;
        drop(batches);
        let net = net.expect("network in place");
        let path = output_path(&run, &net);
        if comm.is_root() {
            match &net {
                Network::Supernet(n) => save_supernet(&n.valid(), &path)?,
                Network::Static(n) => save_subnet(
                    &n.valid(),
                    &path,
                    serde_json::json!({"trained": "independent", "epochs": cfg.epochs}),
                )?,
            }
            if last.is_none() {
                last = read_last_metrics(&metrics_path);
            }
        }
        // The others return once the file exists.
        comm.barrier();
        Ok(TrainOutcome {
            output: path,
            last,
            steps: state.step,
            train_seconds: state.seconds,
            images: state.images,
            interrupted: false,
        })
    }
}

/// Rank 0's start: refuses a folder that holds a run unless resuming,
/// writes the run's config and space, and returns the state to start from
/// (the newest checkpoint with `resume`, and its folder; else the fresh
/// network).
#[allow(clippy::too_many_arguments)]
fn prepare_run<B>(
    cfg: &TrainConfig,
    space: &Space,
    run: &Path,
    resume: bool,
    fresh: &Network<B>,
    sgd: &Sgd<B>,
    metrics_path: &Path,
    total: u64,
    obs: &mut dyn TrainObserver,
) -> anyhow::Result<(Checkpoint, Option<PathBuf>)>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    std::fs::create_dir_all(run)
        .with_context(|| format!("{}: cannot create run directory", run.display()))?;
    let existing = checkpoint::list(run)?;
    if !resume && (!existing.is_empty() || metrics_path.exists()) {
        anyhow::bail!(
            "{}: already holds a run (checkpoints or metrics); pass --resume to continue it or choose another --out",
            run.display()
        );
    }
    crate::util::write_text_atomic(&run.join("config.toml"), &toml::to_string_pretty(cfg)?)?;
    crate::util::write_text_atomic(&run.join("space.toml"), &space.to_toml())?;
    if let Some(latest) = existing.last().filter(|_| resume) {
        let ck = checkpoint::load(latest)?;
        truncate_metrics(metrics_path, ck.state.step)?;
        obs.note(&format!(
            "resuming from {} (step {}/{total})",
            latest.display(),
            ck.state.step
        ));
        return Ok((ck, Some(latest.clone())));
    }
    if resume {
        obs.note("no checkpoint found: starting from scratch");
    }
    let (weights, momentum) = match fresh {
        Network::Supernet(n) => (n.to_tensor_map(), sgd.state(n)),
        Network::Static(n) => (n.to_tensor_map(), sgd.state_flat()),
    };
    let ck = Checkpoint {
        state: LoopState::default(),
        weights,
        momentum,
        teacher: None,
    };
    Ok((ck, None))
}

/// `net`'s shape with the weights of `weights`.
fn load_network<B>(
    net: Network<B>,
    space: &Space,
    weights: &crate::nn::TensorMap,
    device: &B::Device,
) -> Result<Network<B>, crate::nn::StateError>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    Ok(match net {
        Network::Supernet(n) => Network::Supernet(n.load_tensor_map(weights)?),
        Network::Static(n) => {
            Network::Static(Subnet::from_tensor_map(space, &n.arch, weights, device)?)
        }
    })
}

/// Where a finished run leaves its network: `supernet.safetensors`, or the
/// subnet folder `subnet/` of a static network.
fn output_path<B: AutodiffBackend + OfaBackend>(run: &Path, net: &Network<B>) -> PathBuf {
    match net {
        Network::Supernet(_) => run.join("supernet.safetensors"),
        Network::Static(_) => run.join("subnet"),
    }
}

/// The start actions of a phase: optimizer reset, teacher snapshot,
/// channel sorting (the last two only for supernets).
fn begin_phase<B>(
    net: Network<B>,
    phase: &Phase,
    sgd: &mut Sgd<B>,
    teacher: &mut Option<Supernet<B::InnerBackend>>,
    device: &B::Device,
    obs: &mut dyn TrainObserver,
) -> Network<B>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    obs.phase(phase);
    if phase.reset_optimizer {
        sgd.reset();
    }
    let Network::Supernet(mut n) = net else {
        return net;
    };
    if phase.snapshot_teacher {
        *teacher = Some(n.valid());
        obs.note(&format!(
            "phase '{}': the network trained so far is the teacher",
            phase.name
        ));
    }
    if let Some(stage) = phase.sort_stage {
        let (sorted, perms) = n.sort_channels(stage);
        n = sorted;
        let mut m = sgd.state(&n);
        apply_permutations(&mut m, &perms);
        sgd.load_state(&m, device);
        obs.note(&format!(
            "phase '{}': channels sorted by importance (stage {stage})",
            phase.name
        ));
    }
    Network::Supernet(n)
}

/// Validation at an epoch end: the reference subnets of a supernet (BN
/// recalibrated), or the one architecture of an independent run.
fn validate<B>(
    net: &Network<B>,
    space: &Space,
    independent: Option<&Arch>,
    data: &EvalData,
    cfg: &TrainConfig,
    device: &B::Device,
    obs: &mut dyn TrainObserver,
) -> anyhow::Result<BTreeMap<String, EvalResult>>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let mut val = BTreeMap::new();
    match (net, independent) {
        (Network::Static(n), _) => {
            obs.eval("arch", 0, data.eval.len());
            val.insert(
                "arch".into(),
                evaluate_subnet(&n.valid(), data, cfg.eval.batch, device)?,
            );
        }
        (Network::Supernet(n), Some(a)) => {
            let r = evaluate(&n.valid(), a, data, &cfg.eval, device, &mut |d, t| {
                obs.eval("arch", d, t)
            })?;
            val.insert("arch".into(), r);
        }
        (Network::Supernet(n), None) => {
            let inner = n.valid();
            for (label, arch) in reference_archs(space) {
                let r = evaluate(&inner, &arch, data, &cfg.eval, device, &mut |d, t| {
                    obs.eval(&label, d, t)
                })?;
                val.insert(label, r);
            }
        }
    }
    Ok(val)
}

fn read_last_metrics(path: &Path) -> Option<EpochMetrics> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn save_checkpoint<B>(
    run: &Path,
    net: &Network<B>,
    sgd: &Sgd<B>,
    teacher: Option<&Supernet<B::InnerBackend>>,
    state: &LoopState,
) -> anyhow::Result<()>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let (weights, momentum) = match net {
        Network::Supernet(n) => (n.to_tensor_map(), sgd.state(n)),
        Network::Static(n) => (n.to_tensor_map(), sgd.state_flat()),
    };
    let ck = Checkpoint {
        state: state.clone(),
        weights,
        momentum,
        teacher: teacher.map(|t| t.to_tensor_map()),
    };
    checkpoint::save(run, &ck, 2)?;
    Ok(())
}
