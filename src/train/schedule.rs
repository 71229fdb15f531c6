//! From a [`TrainConfig`] to concrete steps: the phases of a run (with step
//! counts and learning-rate schedules), and for every step the networks to
//! train, their gradient scale (ε) and where their distillation targets
//! come from. Everything depends only on (config, seed, step), so a resumed
//! or data-parallel run makes the same choices.

use super::config::{EpsSchedule, Schedule, TrainConfig};
use super::optim::CosineSchedule;
use crate::space::{Arch, Space};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What happens at the start of a phase and which networks its steps train.
#[derive(Clone, Debug, PartialEq)]
pub enum PhaseKind {
    /// Progressive-shrinking phase `index` of `config.ps.phases`.
    Ps {
        index: usize,
    },
    /// DϵpS full-model warm-up.
    DepsWarmup,
    /// DϵpS shrinking: subnets train from global step `start`; the
    /// full-model warm-up ends at `switch` (≥ `start`), where their
    /// multiplier reaches its final value.
    DepsShrink {
        start: u64,
        switch: u64,
    },
    Sandwich,
    Independent,
}

/// One phase of a run: steps `[start, start + steps)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: String,
    pub kind: PhaseKind,
    pub start: u64,
    pub steps: u64,
    pub lr: CosineSchedule,
    /// Step the learning-rate schedule counts from.
    pub lr_origin: u64,
    /// Channel sorting at the phase start, with this expand stage.
    pub sort_stage: Option<usize>,
    /// Momentum is reset at the phase start (a new job in the reference).
    pub reset_optimizer: bool,
    /// Snapshot the network as the distillation teacher at the phase start.
    pub snapshot_teacher: bool,
}

impl Phase {
    pub fn end(&self) -> u64 {
        self.start + self.steps
    }
    pub fn lr_at(&self, step: u64) -> f64 {
        self.lr.lr(step - self.lr_origin)
    }
}

fn steps_of(epochs: f64, steps_per_epoch: u64) -> u64 {
    (epochs * steps_per_epoch as f64).round().max(0.0) as u64
}

/// The phases of a run with `steps_per_epoch` optimizer steps per epoch.
pub fn phases(cfg: &TrainConfig, steps_per_epoch: u64) -> Vec<Phase> {
    let total = steps_of(cfg.epochs, steps_per_epoch).max(1);
    let warmup = steps_of(cfg.warmup_epochs, steps_per_epoch).min(total / 2);
    let cosine = |base: f64, steps: u64, warmup: u64| CosineSchedule {
        base,
        total: steps,
        warmup,
        warmup_start: base * 0.01,
    };
    let plain = |name: &str, kind: PhaseKind| Phase {
        name: name.into(),
        kind,
        start: 0,
        steps: total,
        lr: cosine(cfg.lr, total, warmup),
        lr_origin: 0,
        sort_stage: None,
        reset_optimizer: false,
        snapshot_teacher: false,
    };
    match cfg.schedule {
        Schedule::Sandwich => vec![plain("sandwich", PhaseKind::Sandwich)],
        Schedule::Independent => vec![plain("independent", PhaseKind::Independent)],
        Schedule::Deps => {
            let switch =
                steps_of(cfg.epochs * cfg.deps.full_model_fraction, steps_per_epoch).min(total);
            // Both epoch counts scale with the budget, so the subnets join
            // at the same share of any run.
            let lead = match cfg.deps.eps_schedule {
                EpsSchedule::Deps => steps_of(
                    cfg.epochs * cfg.deps.smallnet_warmup_fraction,
                    steps_per_epoch,
                ),
                EpsSchedule::Linear => 0,
            };
            let start = switch.saturating_sub(lead);
            let mut warm = plain("full-model warm-up", PhaseKind::DepsWarmup);
            warm.steps = start;
            let mut shrink = plain("ε-shrinking", PhaseKind::DepsShrink { start, switch });
            shrink.start = start;
            shrink.steps = total - start;
            shrink.sort_stage = cfg.deps.sort_stage();
            vec![warm, shrink]
                .into_iter()
                .filter(|p| p.steps > 0)
                .collect()
        }
        Schedule::Ps => {
            let weight = cfg.ps.total_weight();
            let mut start = 0;
            let mut out = Vec::new();
            let n = cfg.ps.phases.len();
            for (i, p) in cfg.ps.phases.iter().enumerate() {
                // The last phase takes the rounding remainder.
                let steps = if i + 1 == n {
                    total.saturating_sub(start)
                } else {
                    ((p.weight / weight) * total as f64).round() as u64
                };
                let steps = steps.min(total - start);
                out.push(Phase {
                    name: p.name.clone(),
                    kind: PhaseKind::Ps { index: i },
                    start,
                    steps,
                    lr: cosine(p.lr, steps, if i == 0 { warmup.min(steps / 2) } else { 0 }),
                    lr_origin: start,
                    sort_stage: p.sort_stage,
                    reset_optimizer: i > 0,
                    snapshot_teacher: p.distill && !cfg.ps.phases[..i].iter().any(|q| q.distill),
                });
                start += steps;
            }
            out.into_iter().filter(|p| p.steps > 0).collect()
        }
    }
}

/// Where a network's distillation target comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kd {
    None,
    /// The frozen teacher (progressive shrinking).
    Teacher,
    /// The detached output of the first network of the same step.
    InPlace,
}

/// One network trained in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub arch: Arch,
    /// Multiplies the loss (and so the gradient): ε for DϵpS subnets.
    pub scale: f64,
    pub kd: Kd,
    /// Dropout before the classifier (off for DϵpS and sandwich subnets
    /// unless `subnet_dropout`).
    pub dropout: bool,
}

/// A 64-bit mix of (seed, step, stream) (splitmix64 finaliser).
pub fn mix(seed: u64, step: u64, stream: u64) -> u64 {
    crate::util::splitmix64(
        seed.wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03)),
    )
}

/// Input resolution of a step: drawn from the space's list, the same for
/// every network in the step and every worker.
pub fn step_resolution(space: &Space, seed: u64, step: u64) -> usize {
    let r = &space.resolutions;
    r[(mix(seed, step, 0) % r.len() as u64) as usize]
}

/// The gradient multiplier ε (DepS's β) of a DϵpS subnet at global step
/// `step` of a shrinking phase that started at `start` and reaches its
/// final multiplier `m` at `switch`.
///
/// `deps` form (`adjust_beta_value` in DepS's `training/deps.py`): before
/// the switch, the subnet's effective learning rate `ε · lr(step)` rises
/// linearly to `m · lr(switch)`, reaching it at the switch; from then on
/// ε = `m`. `linear` form: ε grows from `eps_start` at the switch to 1
/// over `eps_ramp_epochs`.
pub fn epsilon(
    cfg: &TrainConfig,
    phase: &Phase,
    (start, switch): (u64, u64),
    step: u64,
    m: f64,
    steps_per_epoch: u64,
) -> f64 {
    match cfg.deps.eps_schedule {
        EpsSchedule::Deps => {
            if step >= switch {
                return m;
            }
            let lead = (switch - start).max(1);
            let t = (step + 1 - start) as f64 / lead as f64;
            let (target, now) = (phase.lr_at(switch), phase.lr_at(step));
            if now > 0.0 { t * m * target / now } else { m }
        }
        EpsSchedule::Linear => {
            let ramp = steps_of(cfg.deps.eps_ramp_epochs, steps_per_epoch).max(1);
            let t = ((step.saturating_sub(switch)) as f64 / ramp as f64).min(1.0);
            cfg.deps.eps_start + (1.0 - cfg.deps.eps_start) * t
        }
    }
}

/// The networks one step trains.
pub fn plan_step(
    cfg: &TrainConfig,
    space: &Space,
    phase: &Phase,
    step: u64,
    steps_per_epoch: u64,
    independent: Option<&Arch>,
) -> Vec<Item> {
    if let Some(a) = independent {
        return vec![Item {
            arch: a.clone(),
            scale: 1.0,
            kd: Kd::None,
            dropout: true,
        }];
    }
    let r = step_resolution(space, cfg.seed, step);
    let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, step, 1));
    let max = |scale: f64| Item {
        arch: Arch::max(space).with_resolution(r),
        scale,
        kd: Kd::None,
        dropout: true,
    };
    let sub = |arch: Arch, scale: f64| Item {
        arch: arch.with_resolution(r),
        scale,
        kd: Kd::InPlace,
        dropout: cfg.subnet_dropout,
    };
    match &phase.kind {
        PhaseKind::DepsWarmup | PhaseKind::Independent => vec![max(1.0)],
        PhaseKind::DepsShrink { start, switch } => {
            let d = &cfg.deps;
            let eps = |m: f64| epsilon(cfg, phase, (*start, *switch), step, m, steps_per_epoch);
            let max_scale = match d.eps_schedule {
                EpsSchedule::Deps => d.max_multiplier,
                EpsSchedule::Linear => 1.0,
            };
            let (min_m, other_m) = match d.eps_schedule {
                EpsSchedule::Deps => (d.min_multiplier, d.other_multiplier),
                EpsSchedule::Linear => (1.0, 1.0),
            };
            let mut items = vec![max(max_scale), sub(Arch::min(space), eps(min_m))];
            for _ in 2..d.subnets_per_step {
                items.push(sub(Arch::sample(space, &mut rng), eps(other_m)));
            }
            items
        }
        PhaseKind::Sandwich => {
            let mut items = vec![max(1.0), sub(Arch::min(space), 1.0)];
            for _ in 0..cfg.sandwich.random_subnets {
                items.push(sub(Arch::sample(space, &mut rng), 1.0));
            }
            items
        }
        PhaseKind::Ps { index } => {
            let p = &cfg.ps.phases[*index];
            let choices = cfg.phase_choices(p, space);
            (0..p.subnets_per_step)
                .map(|_| Item {
                    arch: Arch::sample_from(space, &choices, &mut rng).with_resolution(r),
                    scale: 1.0,
                    kd: if p.distill { Kd::Teacher } else { Kd::None },
                    // OFA samples every subnet through the same forward,
                    // dropout included.
                    dropout: true,
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::preset;

    fn cfg(schedule: Schedule) -> (TrainConfig, Space) {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        (TrainConfig::new(schedule, &s, "fashion-mnist"), s)
    }

    #[test]
    fn linear_epsilon_ramps_from_the_switch() {
        let (mut c, _) = cfg(Schedule::Deps);
        c.deps.eps_schedule = EpsSchedule::Linear;
        c.deps.eps_start = 1e-4;
        c.deps.eps_ramp_epochs = 2.0;
        c.epochs = 12.0;
        c.deps.full_model_fraction = 0.5;
        let spe = 50;
        let ph = phases(&c, spe);
        assert_eq!(
            ph[1].kind,
            PhaseKind::DepsShrink {
                start: 300,
                switch: 300
            }
        );
        let e = |step| epsilon(&c, &ph[1], (300, 300), step, 1.0, spe);
        assert_eq!(e(300), 1e-4);
        assert!((e(350) - (1e-4 + (1.0 - 1e-4) * 0.5)).abs() < 1e-12);
        assert_eq!(e(400), 1.0);
        assert_eq!(e(10_000), 1.0);
    }

    /// A 10-epoch toy run, one step per epoch: warm-up ends at epoch 5,
    /// subnets join 2 epochs earlier; lr = 0.05 (1 + cos(π s / 10)).
    #[test]
    fn deps_multiplier_sequence_of_a_toy_schedule() {
        let (mut c, s) = cfg(Schedule::Deps);
        c.epochs = 10.0;
        c.lr = 0.1;
        c.warmup_epochs = 0.0;
        c.deps.full_model_fraction = 0.5;
        c.deps.smallnet_warmup_fraction = 0.2;
        c.deps.min_multiplier = 1.0;
        c.deps.other_multiplier = 1.0;
        let ph = phases(&c, 1);
        assert_eq!((ph[0].steps, ph[1].start), (3, 3));
        assert_eq!(
            ph[1].kind,
            PhaseKind::DepsShrink {
                start: 3,
                switch: 5
            }
        );
        // Hand-computed: β(3) = ½ · lr(5)/lr(3), β(4) = lr(5)/lr(4), then 1.
        // lr(3) = 0.05(1 + cos 0.3π) = 0.0793893, lr(4) = 0.0654508,
        // lr(5) = 0.05.
        let want = [0.314_904, 0.763_932, 1.0, 1.0, 1.0, 1.0, 1.0];
        for (i, w) in want.iter().enumerate() {
            let step = 3 + i as u64;
            let items = plan_step(&c, &s, &ph[1], step, 1, None);
            assert_eq!(items.len(), 4);
            assert_eq!(items[0].scale, 1.0, "the full net is not scaled");
            for it in &items[1..] {
                assert!(
                    (it.scale - w).abs() < 1e-5,
                    "step {step}: {} vs {w}",
                    it.scale
                );
                assert!(!it.dropout, "subnets skip dropout");
            }
        }
        // The subnets' effective learning rate at step 3 is half the
        // full model's at the switch.
        assert!((0.314_904 * ph[1].lr_at(3) - 0.5 * ph[1].lr_at(5)).abs() < 1e-6);
        // Multipliers other than 1 scale the final value.
        c.deps.min_multiplier = 0.5;
        let items = plan_step(&c, &s, &ph[1], 7, 1, None);
        assert_eq!(items[1].scale, 0.5);
        assert_eq!(items[2].scale, 1.0);
    }

    #[test]
    fn deps_phases_and_steps() {
        let (mut c, s) = cfg(Schedule::Deps);
        c.epochs = 10.0;
        c.deps.full_model_fraction = 0.5;
        c.deps.smallnet_warmup_fraction = 0.1;
        let ph = phases(&c, 100);
        assert_eq!(ph.len(), 2);
        assert_eq!(
            (ph[0].start, ph[0].steps, ph[1].start, ph[1].steps),
            (0, 400, 400, 600)
        );
        // DepS sorts at stage len(expand) − 2 = 1 for e ∈ {3, 4, 6}.
        assert_eq!(ph[1].sort_stage, Some(1));
        // One cosine schedule over the whole run.
        assert_eq!(ph[0].lr_at(399), ph[1].lr_at(399));
        let warm = plan_step(&c, &s, &ph[0], 10, 100, None);
        assert_eq!(warm.len(), 1);
        assert_eq!(warm[0].arch.ks, Arch::max(&s).ks);
        let shrink = plan_step(&c, &s, &ph[1], 500, 100, None);
        assert_eq!(shrink.len(), 4);
        assert_eq!((shrink[0].kd, shrink[0].scale), (Kd::None, 1.0));
        assert_eq!(shrink[1].arch.ks, Arch::min(&s).ks);
        assert!(
            shrink[1..]
                .iter()
                .all(|i| i.kd == Kd::InPlace && i.scale == 1.0)
        );
        // Every network of a step runs at the same resolution.
        assert!(shrink.iter().all(|i| i.arch.r == shrink[0].arch.r));
        // Same step ⇒ same plan.
        assert_eq!(shrink, plan_step(&c, &s, &ph[1], 500, 100, None));
    }

    #[test]
    fn ps_phase_table_samples_only_the_phase_choices() {
        let (mut c, s) = cfg(Schedule::Ps);
        c.epochs = 5.9;
        let ph = phases(&c, 100);
        let names: Vec<&str> = ph.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "full", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"
            ]
        );
        assert_eq!(ph.iter().map(|p| p.steps).sum::<u64>(), 590);
        assert_eq!(ph[0].steps, 180);
        assert!(ph[1].snapshot_teacher && !ph[2].snapshot_teacher);
        assert_eq!((ph[4].sort_stage, ph[5].sort_stage), (Some(0), Some(1)));
        let expect: [(&[usize], &[usize], &[usize], usize); 6] = [
            (&[7], &[6], &[4], 1),
            (&[3, 5, 7], &[6], &[4], 1),
            (&[3, 5, 7], &[6], &[3, 4], 2),
            (&[3, 5, 7], &[6], &[2, 3, 4], 2),
            (&[3, 5, 7], &[4, 6], &[2, 3, 4], 4),
            (&[3, 5, 7], &[3, 4, 6], &[2, 3, 4], 4),
        ];
        for (p, (ks, es, ds, n)) in ph.iter().zip(expect) {
            let mut seen = (vec![], vec![], vec![]);
            for step in p.start..p.start + 30 {
                let items = plan_step(&c, &s, p, step, 100, None);
                assert_eq!(items.len(), n, "{}", p.name);
                for it in items {
                    for b in it.arch.active_blocks(&s) {
                        seen.0.push(b.1);
                        seen.1.push(b.2);
                    }
                    seen.2.extend(it.arch.d.clone());
                    assert_eq!(
                        it.kd,
                        if p.name == "full" {
                            Kd::None
                        } else {
                            Kd::Teacher
                        }
                    );
                }
            }
            for (v, allowed, what) in [
                (&mut seen.0, ks, "k"),
                (&mut seen.1, es, "e"),
                (&mut seen.2, ds, "d"),
            ] {
                v.sort();
                v.dedup();
                assert_eq!(v.as_slice(), allowed, "{} {what}", p.name);
            }
        }
    }
}
