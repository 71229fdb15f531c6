//! Training: exact resume, gradient accumulation, sorting, BN recalibration.

mod common;

use common::*;
use ofa::data::synthetic;
use ofa::nn::{Mode, Supernet};
use ofa::space::{Arch, preset};
use ofa::train::{NoObserver, Schedule, TrainConfig, TrainObserver, train};
use std::sync::Arc;

fn tiny_setup(schedule: Schedule) -> (TrainConfig, ofa::space::Space, Arc<ofa::data::Dataset>) {
    let space = preset("tiny").unwrap();
    let ds = Arc::new(synthetic(10, 3, 16, 160, 40, 7).unwrap());
    let mut cfg = TrainConfig::new(schedule, &space, "synthetic");
    cfg.batch_size = 16;
    cfg.val_size = 32;
    cfg.epochs = 3.0;
    cfg.eval.calib_images = 32;
    cfg.eval.calib_batch = 16;
    cfg.eval.batch = 32;
    cfg.checkpoint_every = 1000;
    cfg.deps.eps_ramp_epochs = 0.5;
    (cfg, space, ds)
}

struct StopAt(u64, u64);
impl TrainObserver for StopAt {
    fn step(&mut self, r: &ofa::train::StepReport) {
        self.1 = r.step;
    }
    fn stop_requested(&mut self) -> bool {
        self.1 == self.0
    }
}

fn weights(run: &std::path::Path) -> ofa::nn::TensorMap {
    ofa::nn::read_safetensors(&run.join("supernet.safetensors"))
        .unwrap()
        .0
}

#[test]
fn resume_is_exact() {
    for schedule in [Schedule::Deps, Schedule::Ps] {
        let (cfg, space, ds) = tiny_setup(schedule);
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let dev = Default::default();
        let full = train::<AB>(&cfg, &space, ds.clone(), &a, false, &dev, &mut NoObserver).unwrap();
        assert!(!full.interrupted);
        let steps = full.steps;
        assert_eq!(steps, 24, "3 epochs of 8 steps");
        // Stop mid-epoch, in the middle of the run (past DϵpS's switch and
        // ps's teacher snapshot for a later stop).
        for stop in [5, 17] {
            let _ = std::fs::remove_dir_all(&b);
            let part = train::<AB>(
                &cfg,
                &space,
                ds.clone(),
                &b,
                false,
                &dev,
                &mut StopAt(stop, 0),
            )
            .unwrap();
            assert!(part.interrupted && part.steps == stop);
            let rest =
                train::<AB>(&cfg, &space, ds.clone(), &b, true, &dev, &mut NoObserver).unwrap();
            assert_eq!(rest.steps, steps);
            let (wa, wb) = (weights(&a), weights(&b));
            assert_eq!(wa.len(), wb.len());
            for (k, ta) in &wa {
                let tb = &wb[k];
                let diff = ta
                    .data
                    .iter()
                    .zip(&tb.data)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff <= 1e-6,
                    "{schedule} stop {stop}: {k} differs by {diff}"
                );
            }
            // Metrics are neither lost nor duplicated.
            let lines =
                |p: &std::path::Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
            assert_eq!(lines(&a).lines().count(), lines(&b).lines().count());
        }
    }
}

#[test]
fn a_second_run_into_the_same_folder_is_refused() {
    let (mut cfg, space, ds) = tiny_setup(Schedule::Sandwich);
    cfg.epochs = 0.25;
    let dir = tempfile::tempdir().unwrap();
    let dev = Default::default();
    train::<AB>(
        &cfg,
        &space,
        ds.clone(),
        dir.path(),
        false,
        &dev,
        &mut NoObserver,
    )
    .unwrap();
    let e = train::<AB>(&cfg, &space, ds, dir.path(), false, &dev, &mut NoObserver).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
}

#[test]
fn channel_sorting_keeps_the_full_network_and_orders_by_importance() {
    let space = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&space, 3);
    let max = Arch::max(&space);
    let x = random_tensor::<B, 4>([2, 3, max.r, max.r], 9);
    let before = net.forward(x.clone(), &max, Mode::Eval);
    let (sorted, _) = net.sort_channels(0);
    let after = sorted.forward(x, &max, Mode::Eval);
    let rel = max_abs_diff(before.clone(), after) / max_abs(before).max(1.0);
    assert!(rel <= 1e-5, "full network changed by {rel}");
    let map = sorted.to_tensor_map();
    for b in space.blocks() {
        let w = &map[&format!("blocks.{}.conv.point_linear.conv.conv.weight", b.index + 1)];
        let (out, mid) = (w.shape[0], w.shape[1]);
        let imp: Vec<f32> = (0..mid)
            .map(|i| (0..out).map(|o| w.data[o * mid + i].abs()).sum())
            .collect();
        assert!(
            imp.windows(2).all(|p| p[0] >= p[1]),
            "block {} not sorted: {imp:?}",
            b.index
        );
    }
}

#[test]
fn accumulated_gradients_equal_the_sum_of_individual_ones() {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::{Int, Tensor, TensorData};
    use ofa::train::{Item, Kd, step_gradients};
    let (cfg, space, _) = tiny_setup(Schedule::Sandwich);
    let net: Supernet<AB> = random_supernet(&space, 5);
    let r = 16;
    let mut rr = rng(3);
    let items: Vec<Item> = [
        (Arch::max(&space), 1.0),
        (Arch::min(&space), 0.5),
        (Arch::sample(&space, &mut rr), 2.0),
    ]
    .into_iter()
    .map(|(a, scale)| Item {
        arch: a.with_resolution(r),
        scale,
        kd: Kd::None,
    })
    .collect();
    let x = random_tensor::<AB, 4>([4, 3, r, r], 8);
    let y = Tensor::<AB, 1, Int>::from_data(
        TensorData::new(vec![1i64, 3, 5, 7], [4]),
        &Default::default(),
    );
    let (all, _) = step_gradients(&net, &items, x.clone(), y.clone(), None, &cfg).unwrap();
    let singles: Vec<_> = items
        .iter()
        .map(|i| {
            step_gradients(
                &net,
                std::slice::from_ref(i),
                x.clone(),
                y.clone(),
                None,
                &cfg,
            )
            .unwrap()
            .0
        })
        .collect();
    struct Check<'a> {
        all: &'a burn::optim::GradientsParams,
        singles: &'a [burn::optim::GradientsParams],
        checked: usize,
    }
    impl ModuleVisitor<AB> for Check<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<AB, D>>) {
            type I = burn::backend::Flex;
            let got = self.all.get::<I, D>(p.id);
            let parts: Vec<_> = self
                .singles
                .iter()
                .filter_map(|g| g.get::<I, D>(p.id))
                .collect();
            match got {
                None => assert!(parts.is_empty()),
                Some(g) => {
                    let sum = parts.into_iter().reduce(|a, b| a + b).expect("some part");
                    let scale = to_vec(sum.clone().abs().max())[0].max(1e-6);
                    let diff = to_vec((g - sum).abs().max())[0];
                    assert!(diff / scale <= 1e-5, "relative difference {}", diff / scale);
                    self.checked += 1;
                }
            }
        }
    }
    let mut c = Check {
        all: &all,
        singles: &singles,
        checked: 0,
    };
    burn::module::Module::visit(&net, &mut c);
    assert!(c.checked > 50, "only {} parameters checked", c.checked);
}

#[test]
fn bn_recalibration_matches_a_direct_computation() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    let space = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&space, 4);
    let arch = Arch::sample(&space, &mut rng(2));
    // Two batches of different sizes: the average is weighted by size.
    let b1 = random_tensor::<B, 4>([3, 3, arch.r, arch.r], 21);
    let b2 = random_tensor::<B, 4>([5, 3, arch.r, arch.r], 22);
    ofa::nn::calibrate_bn(&net, &arch, vec![b1.clone(), b2.clone()]).unwrap();
    // Direct: the stem convolution, then per-channel batch mean and biased
    // variance, averaged with weights 3 and 5.
    let w = net.first_conv.conv.weight.val();
    let stats = |x: burn::tensor::Tensor<B, 4>| {
        let y = to_vec(conv2d(
            x.clone(),
            w.clone(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        ));
        let [n, _, h, ww] = x.dims();
        let c = w.dims()[0];
        let plane = h * ww;
        (0..c)
            .map(|ch| {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|i| {
                        y[(i * c + ch) * plane..(i * c + ch + 1) * plane]
                            .iter()
                            .map(|v| *v as f64)
                    })
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|a| (a - m).powi(2)).sum::<f64>() / vals.len() as f64;
                (m, v)
            })
            .collect::<Vec<_>>()
    };
    let (s1, s2) = (stats(b1), stats(b2));
    let bn = net.first_conv.bn.as_ref().unwrap();
    let (rm, rv) = (
        to_vec(bn.running_mean.value_sync()),
        to_vec(bn.running_var.value_sync()),
    );
    for ch in 0..rm.len() {
        let m = (3.0 * s1[ch].0 + 5.0 * s2[ch].0) / 8.0;
        let v = (3.0 * s1[ch].1 + 5.0 * s2[ch].1) / 8.0;
        assert!(
            (rm[ch] as f64 - m).abs() < 1e-4 * (1.0 + m.abs()),
            "mean ch {ch}: {} vs {m}",
            rm[ch]
        );
        assert!(
            (rv[ch] as f64 - v).abs() < 1e-4 * (1.0 + v.abs()),
            "var ch {ch}: {} vs {v}",
            rv[ch]
        );
    }
}
