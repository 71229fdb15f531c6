//! Training configuration: every knob of the four schedules, with the
//! reference defaults, serialisable as the run's `config.toml`.

use super::optim::SgdConfig;
use crate::space::{Arch, Choices, Space};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The training schedules of DESIGN §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Progressive shrinking (OFA).
    Ps,
    /// Delayed ε-shrinking.
    Deps,
    /// Sandwich rule with in-place distillation (BigNAS-style).
    Sandwich,
    /// One fixed architecture trained alone.
    Independent,
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ps" => Ok(Schedule::Ps),
            "deps" => Ok(Schedule::Deps),
            "sandwich" => Ok(Schedule::Sandwich),
            "independent" => Ok(Schedule::Independent),
            other => Err(format!(
                "unknown schedule '{other}' (ps, deps, sandwich, independent)"
            )),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Schedule::Ps => "ps",
            Schedule::Deps => "deps",
            Schedule::Sandwich => "sandwich",
            Schedule::Independent => "independent",
        })
    }
}

/// One phase of progressive shrinking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsPhase {
    pub name: String,
    /// Share of the total epochs (the reference's ImageNet epochs).
    pub weight: f64,
    pub lr: f64,
    pub subnets_per_step: usize,
    pub kernels: Vec<usize>,
    pub expands: Vec<usize>,
    pub depths: Vec<usize>,
    /// Sort channels before this phase, with this expand stage.
    pub sort_stage: Option<usize>,
    /// Distil from the full network trained in the first phase.
    pub distill: bool,
}

/// Which BN statistics the progressive-shrinking teacher runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherBn {
    /// Batch statistics, running ones untouched: the reference calls
    /// `teacher_model.train()` under `no_grad` (`train_one_epoch` in OFA's
    /// `progressive_shrinking.py`).
    Batch,
    /// The teacher's stored running statistics.
    Running,
}

/// Progressive-shrinking phases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsConfig {
    pub phases: Vec<PsPhase>,
    /// Missing in run files written before the option existed, which ran
    /// the teacher on running statistics.
    #[serde(default = "legacy::teacher_bn")]
    pub teacher_bn: TeacherBn,
}

fn largest(v: &[usize], n: usize) -> Vec<usize> {
    v[v.len().saturating_sub(n)..].to_vec()
}

impl PsConfig {
    /// The reference schedule (DESIGN §5) expressed in a space's choices:
    /// full net, elastic kernel, depth in two phases, expand in two phases.
    /// Weights are the reference ImageNet epochs (180 for the teacher).
    pub fn reference(space: &Space, full_lr: f64) -> Self {
        let (k, e, d) = (
            &space.kernel_choices,
            &space.expand_choices,
            &space.depth_choices,
        );
        let phase =
            |name: &str, weight, lr, n, kernels, expands, depths, sort_stage, distill| PsPhase {
                name: name.into(),
                weight,
                lr,
                subnets_per_step: n,
                kernels,
                expands,
                depths,
                sort_stage,
                distill,
            };
        PsConfig {
            phases: vec![
                phase(
                    "full",
                    180.0,
                    full_lr,
                    1,
                    largest(k, 1),
                    largest(e, 1),
                    largest(d, 1),
                    None,
                    false,
                ),
                phase(
                    "kernel",
                    120.0,
                    3e-2,
                    1,
                    k.clone(),
                    largest(e, 1),
                    largest(d, 1),
                    None,
                    true,
                ),
                phase(
                    "depth-1",
                    25.0,
                    2.5e-3,
                    2,
                    k.clone(),
                    largest(e, 1),
                    largest(d, 2),
                    None,
                    true,
                ),
                phase(
                    "depth-2",
                    120.0,
                    7.5e-3,
                    2,
                    k.clone(),
                    largest(e, 1),
                    d.clone(),
                    None,
                    true,
                ),
                phase(
                    "expand-1",
                    25.0,
                    2.5e-3,
                    4,
                    k.clone(),
                    largest(e, 2),
                    d.clone(),
                    Some(0),
                    true,
                ),
                phase(
                    "expand-2",
                    120.0,
                    7.5e-3,
                    4,
                    k.clone(),
                    e.clone(),
                    d.clone(),
                    Some(1),
                    true,
                ),
            ],
            teacher_bn: TeacherBn::Batch,
        }
    }

    pub fn total_weight(&self) -> f64 {
        self.phases.iter().map(|p| p.weight).sum()
    }
}

/// How DϵpS scales the subnets' gradients after they join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpsSchedule {
    /// DepS (`adjust_beta_value` in `training/deps.py`): subnets join
    /// `smallnet_warmup` before the end of the full-model warm-up with a
    /// multiplier that makes their effective learning rate rise linearly
    /// from 0 to the full model's learning rate at the end of the warm-up;
    /// from then on the multiplier is constant.
    Deps,
    /// ε grows linearly from `eps_start` to 1 over `eps_ramp_epochs` from
    /// the end of the warm-up (this project's first form).
    Linear,
}

/// How the gradients of a step's networks are combined, per element
/// (DepS `--gradient_aggregation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientAggregation {
    /// `Σ_i w_i g_i` (the reference's default; OFA and BigNAS always sum).
    Sum,
    /// `Σ_i w_i g_i / Σ_i w_i m_i`, `m_i` = 1 where network `i` uses the
    /// weight.
    Avg,
    /// `Σ_i w_i g_i / √(Σ_i w_i m_i)`.
    AvgSqrt,
}

/// The loss of networks distilled in place from the step's full network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InplaceLoss {
    /// The KD term alone, `T² · KD_T` (DepS `--inplace_distillation`,
    /// BigNAS).
    #[serde(rename = "kd")]
    Kd,
    /// `CE + kd_ratio · KD` (OFA's subnet loss).
    #[serde(rename = "ce+kd")]
    CePlusKd,
}

/// Delayed ε-shrinking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepsConfig {
    /// Share of the epochs that ends the full-model warm-up (DepS
    /// `teacher_warmup`: 150 of 270 epochs in its README).
    pub full_model_fraction: f64,
    /// Networks per step after the switch: full + min + random ones.
    pub subnets_per_step: usize,
    #[serde(default = "legacy::eps_schedule")]
    pub eps_schedule: EpsSchedule,
    /// `deps` form: share of the epochs, before the end of the warm-up,
    /// at which the subnets join (DepS `smallnet_warmup`: 5 of 270).
    #[serde(default = "legacy::smallnet_warmup_fraction")]
    pub smallnet_warmup_fraction: f64,
    /// `deps` form: multipliers of the full, min and other subnets'
    /// gradients once the subnets are in (DepS `--max_multiplier`,
    /// `--min_multiplier`, `--other_multiplier`).
    #[serde(default = "legacy::one")]
    pub max_multiplier: f64,
    #[serde(default = "legacy::one")]
    pub min_multiplier: f64,
    #[serde(default = "legacy::one")]
    pub other_multiplier: f64,
    /// `linear` form: ε at the switch, and the epochs it takes to reach 1.
    pub eps_start: f64,
    pub eps_ramp_epochs: f64,
    /// Channel sorting when the subnets join (DepS `--reorganize_weights`).
    #[serde(default = "legacy::yes")]
    pub sort_channels: bool,
    /// Expand stage of that sort (the reference's `expand_ratio_stage`);
    /// DepS uses `len(expand_list) − 2` (`train_one_epoch_deps`), which
    /// [`TrainConfig::new`] fills in for the space.
    #[serde(default)]
    pub sort_stage: usize,
}

impl Default for DepsConfig {
    fn default() -> Self {
        DepsConfig {
            full_model_fraction: 150.0 / 270.0,
            subnets_per_step: 4,
            eps_schedule: EpsSchedule::Deps,
            smallnet_warmup_fraction: 5.0 / 270.0,
            max_multiplier: 1.0,
            min_multiplier: 1.0,
            other_multiplier: 1.0,
            eps_start: 1e-4,
            eps_ramp_epochs: 1.0,
            sort_channels: true,
            sort_stage: 1,
        }
    }
}

impl DepsConfig {
    /// DepS's defaults for a space: the sort stage depends on its expand
    /// choices.
    pub fn for_space(space: &Space) -> Self {
        DepsConfig {
            sort_stage: space.expand_choices.len().saturating_sub(2),
            ..DepsConfig::default()
        }
    }

    /// The expand stage of the channel sort, if any.
    pub fn sort_stage(&self) -> Option<usize> {
        self.sort_channels.then_some(self.sort_stage)
    }
}

/// Which network an `independent` run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndependentNet {
    /// The static network of the architecture (what `extract` produces),
    /// freshly initialised: no kernel transformation matrices, initial
    /// weights scaled for its own shapes.
    Static,
    /// The supernet restricted to the architecture (this project's first
    /// form: k < 7 kernels are transformed crops of 7×7 weights).
    Supernet,
}

/// Defaults for fields that run files written by earlier versions lack:
/// what those versions did, so that resuming such a run continues it
/// unchanged.
mod legacy {
    use super::*;
    pub fn teacher_bn() -> TeacherBn {
        TeacherBn::Running
    }
    pub fn eps_schedule() -> EpsSchedule {
        EpsSchedule::Linear
    }
    pub fn smallnet_warmup_fraction() -> f64 {
        0.0
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn inplace_loss() -> InplaceLoss {
        InplaceLoss::CePlusKd
    }
    pub fn aggregation() -> GradientAggregation {
        GradientAggregation::Sum
    }
    pub fn independent() -> IndependentNet {
        IndependentNet::Supernet
    }
}

/// Sandwich rule: max + min + random subnets each step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandwichConfig {
    pub random_subnets: usize,
}

impl Default for SandwichConfig {
    fn default() -> Self {
        SandwichConfig { random_subnets: 2 }
    }
}

/// Validation during training and in `ofa eval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Training images used to recalibrate BN before each evaluation.
    pub calib_images: usize,
    pub calib_batch: usize,
    pub batch: usize,
    /// Cap on validation images per evaluation (0 = all).
    pub max_images: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            calib_images: 2000,
            calib_batch: 200,
            batch: 200,
            max_images: 0,
        }
    }
}

/// Everything a training run needs besides the space and the data; written
/// to the run directory with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub schedule: Schedule,
    pub data: String,
    pub seed: u64,
    /// Total epochs over all phases (fractions allowed).
    pub epochs: f64,
    pub batch_size: usize,
    /// Validation images held out of the training set.
    pub val_size: usize,
    /// Cap on training images after the hold-out (0 = all).
    pub max_train_images: usize,
    /// Learning rate of the full network (deps, sandwich, independent,
    /// and the first ps phase).
    pub lr: f64,
    pub warmup_epochs: f64,
    pub label_smoothing: f64,
    /// Weight of the KD term in `CE + kd_ratio · KD` (the progressive-
    /// shrinking teacher, and in-place KD with `inplace_loss = "ce+kd"`).
    pub kd_ratio: f64,
    /// Loss of the subnets distilled in place (DϵpS, sandwich).
    #[serde(default = "legacy::inplace_loss")]
    pub inplace_loss: InplaceLoss,
    /// Temperature T of the KD-only loss.
    #[serde(default = "legacy::one")]
    pub kd_temperature: f64,
    /// Dropout in the non-max subnets of DϵpS and sandwich steps (DepS and
    /// BigNAS run them without: `forward(x, max=False)`).
    #[serde(default = "legacy::yes")]
    pub subnet_dropout: bool,
    /// How the gradients of a step's networks are combined.
    #[serde(default = "legacy::aggregation")]
    pub gradient_aggregation: GradientAggregation,
    /// What an `independent` run trains.
    #[serde(default = "legacy::independent")]
    pub independent_net: IndependentNet,
    /// Random crop and flip of training images (off: resize only).
    pub augment: bool,
    /// Checkpoint every this many steps (and at every epoch end).
    pub checkpoint_every: u64,
    pub sgd: SgdConfig,
    pub deps: DepsConfig,
    pub sandwich: SandwichConfig,
    pub ps: PsConfig,
    pub eval: EvalConfig,
    /// The architecture of an `independent` run, in reference JSON form.
    pub arch: Option<serde_json::Value>,
}

/// Reference total epochs per schedule, for `--budget`.
pub fn reference_epochs(schedule: Schedule, ps: &PsConfig) -> f64 {
    match schedule {
        Schedule::Ps => ps.total_weight(),
        Schedule::Deps => 270.0,
        Schedule::Sandwich => 400.0,
        Schedule::Independent => 180.0,
    }
}

impl TrainConfig {
    /// Defaults for a schedule on a space.
    pub fn new(schedule: Schedule, space: &Space, data: &str) -> Self {
        let lr = 0.05;
        TrainConfig {
            schedule,
            data: data.to_string(),
            seed: 0,
            epochs: 4.0,
            batch_size: 64,
            val_size: 5000,
            max_train_images: 0,
            lr,
            warmup_epochs: 0.25,
            label_smoothing: 0.1,
            kd_ratio: 1.0,
            inplace_loss: InplaceLoss::Kd,
            kd_temperature: 1.0,
            subnet_dropout: false,
            gradient_aggregation: GradientAggregation::Sum,
            independent_net: IndependentNet::Static,
            augment: true,
            checkpoint_every: 200,
            sgd: SgdConfig::default(),
            deps: DepsConfig::for_space(space),
            sandwich: SandwichConfig::default(),
            ps: PsConfig::reference(space, lr),
            eval: EvalConfig::default(),
            arch: None,
        }
    }

    /// The fixed architecture of an independent run.
    pub fn independent_arch(&self, space: &Space) -> anyhow::Result<Arch> {
        let v = self.arch.as_ref().ok_or_else(|| {
            anyhow::anyhow!("schedule 'independent' needs an architecture (--arch)")
        })?;
        Ok(Arch::from_json(v, space)?)
    }

    /// Checks values a run cannot start with; the message names the field.
    pub fn validate(&self, space: &Space) -> anyhow::Result<()> {
        let bad = |field: &str, why: &str| Err(anyhow::anyhow!("config field '{field}': {why}"));
        if !(self.epochs > 0.0) {
            return bad("epochs", "must be positive");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be positive");
        }
        if !(self.lr > 0.0) {
            return bad("lr", "must be positive");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing", "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.deps.full_model_fraction) {
            return bad("deps.full_model_fraction", "must be in [0, 1]");
        }
        if self.deps.subnets_per_step < 2 {
            return bad("deps.subnets_per_step", "must be at least 2 (full + min)");
        }
        if !(self.deps.eps_start > 0.0 && self.deps.eps_start <= 1.0) {
            return bad("deps.eps_start", "must be in (0, 1]");
        }
        if !(0.0..=self.deps.full_model_fraction).contains(&self.deps.smallnet_warmup_fraction) {
            return bad(
                "deps.smallnet_warmup_fraction",
                "must be in [0, deps.full_model_fraction]",
            );
        }
        for (field, v) in [
            ("deps.max_multiplier", self.deps.max_multiplier),
            ("deps.min_multiplier", self.deps.min_multiplier),
            ("deps.other_multiplier", self.deps.other_multiplier),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(field, "must be a finite number ≥ 0");
            }
        }
        if self.deps.sort_channels && self.deps.sort_stage >= space.expand_choices.len() {
            return bad(
                "deps.sort_stage",
                &format!(
                    "must be below {} (the number of expand choices)",
                    space.expand_choices.len()
                ),
            );
        }
        if !(self.kd_temperature > 0.0 && self.kd_temperature.is_finite()) {
            return bad("kd_temperature", "must be positive");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "must be positive");
        }
        if self.eval.calib_batch == 0 || self.eval.batch == 0 {
            return bad("eval", "batch sizes must be positive");
        }
        if self.schedule == Schedule::Ps {
            if self.ps.phases.is_empty() {
                return bad("ps.phases", "no phases");
            }
            for (i, p) in self.ps.phases.iter().enumerate() {
                let check = |name: &str, v: &[usize], allowed: &[usize]| {
                    if v.is_empty() || v.iter().any(|x| !allowed.contains(x)) {
                        Err(anyhow::anyhow!(
                            "config field 'ps.phases[{i}].{name}' = {v:?}: must be a non-empty subset of {allowed:?}"
                        ))
                    } else {
                        Ok(())
                    }
                };
                check("kernels", &p.kernels, &space.kernel_choices)?;
                check("expands", &p.expands, &space.expand_choices)?;
                check("depths", &p.depths, &space.depth_choices)?;
                if p.subnets_per_step == 0 || !(p.weight >= 0.0) || !(p.lr > 0.0) {
                    return bad(
                        &format!("ps.phases[{i}]"),
                        "subnets_per_step, weight and lr must be positive",
                    );
                }
            }
        }
        if self.schedule == Schedule::Independent {
            self.independent_arch(space)?;
        }
        Ok(())
    }

    /// The choices a ps phase samples from (all resolutions).
    pub fn phase_choices(&self, phase: &PsPhase, space: &Space) -> Choices {
        Choices {
            kernels: phase.kernels.clone(),
            expands: phase.expands.clone(),
            depths: phase.depths.clone(),
            resolutions: space.resolutions.clone(),
        }
    }
}
