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
    let tiny = preset("tiny").unwrap();
    // A space with one kernel size has no transformation matrices; its
    // depthwise weights must be permuted all the same.
    let mut one_kernel = tiny.clone();
    one_kernel.kernel_choices = vec![3];
    for space in [tiny, one_kernel] {
        sorting_keeps_the_full_network(&space);
    }
}

fn sorting_keeps_the_full_network(space: &ofa::space::Space) {
    let space = space.clone();
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
        dropout: true,
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
    // Direct: the first convolution, then per-channel batch mean and biased
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

/// The progressive-shrinking teacher runs on batch statistics (the
/// reference's `teacher_model.train()` under `no_grad`) and leaves its
/// running statistics alone.
#[test]
fn the_teacher_uses_batch_statistics_and_leaves_running_ones_untouched() {
    let space = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&space, 11);
    let max = Arch::max(&space);
    let x = random_tensor::<B, 4>([6, 3, max.r, max.r], 12);
    let before = net.to_tensor_map();
    let teacher = net.forward(x.clone(), &max, Mode::Teacher);
    let after = net.to_tensor_map();
    for (k, t) in &before {
        assert_eq!(t.data, after[k].data, "{k} changed");
    }
    // Independent computation: set every BN's running statistics to this
    // batch's (recalibration on exactly x), then run on stored statistics.
    let stored = net.forward(x.clone(), &max, Mode::Eval);
    ofa::nn::calibrate_bn(&net, &max, vec![x.clone()]).unwrap();
    let batch_stats = net.forward(x, &max, Mode::Eval);
    let scale = max_abs(batch_stats.clone()).max(1.0);
    assert!(max_abs_diff(teacher.clone(), batch_stats) / scale < 1e-4);
    assert!(
        max_abs_diff(teacher, stored) / scale > 1e-3,
        "the stored statistics were used"
    );
}

/// DepS's `avg` aggregation divides each element of the summed gradient
/// by the summed weights of the networks that read it.
#[test]
fn avg_aggregation_divides_by_the_weights_of_the_networks_that_use_a_weight() {
    use burn::tensor::{Int, Tensor, TensorData};
    use ofa::train::{GradientAggregation, Item, Kd, step_gradients};
    let (mut cfg, space, _) = tiny_setup(Schedule::Sandwich);
    let net: Supernet<AB> = random_supernet(&space, 5);
    let r = 16;
    let items: Vec<Item> = [(Arch::max(&space), 1.0), (Arch::min(&space), 0.5)]
        .into_iter()
        .map(|(a, scale)| Item {
            arch: a.with_resolution(r),
            scale,
            kd: Kd::None,
            dropout: false,
        })
        .collect();
    let x = random_tensor::<AB, 4>([4, 3, r, r], 8);
    let y = Tensor::<AB, 1, Int>::from_data(
        TensorData::new(vec![1i64, 3, 5, 7], [4]),
        &Default::default(),
    );
    let grads = |cfg: &TrainConfig, items: &[Item]| {
        step_gradients(&net, items, x.clone(), y.clone(), None, cfg)
            .unwrap()
            .0
    };
    let g_max = grads(&cfg, &items[..1]);
    let g_min = grads(&cfg, &items[1..]);
    cfg.gradient_aggregation = GradientAggregation::Avg;
    let avg = grads(&cfg, &items);
    cfg.gradient_aggregation = GradientAggregation::AvgSqrt;
    let avg_sqrt = grads(&cfg, &items);
    // Block 1's project conv `[out, mid_max, 1, 1]`: the min subnet reads
    // its first `middle_width(in, 3)` input columns (worked out from the
    // space, not from the network).
    let b = &space.blocks()[0];
    let mid_min = space.middle_width(b.in_ch, space.expand_choices[0]);
    let w = &net.blocks[0].point_linear.conv.weight;
    let [out, mid_max, _, _] = w.dims();
    assert!(mid_min < mid_max);
    type I = burn::backend::Flex;
    let v = |g: &burn::optim::GradientsParams| to_vec(g.get::<I, 4>(w.id).unwrap());
    let (gm, gn, ga, gs) = (v(&g_max), v(&g_min), v(&avg), v(&avg_sqrt));
    let mut checked = 0;
    for o in 0..out {
        for c in 0..mid_max {
            let i = o * mid_max + c;
            let (want_avg, want_sqrt) = if c < mid_min {
                // Both networks: (g_max + 0.5 g_min) / 1.5 and / √1.5.
                let sum = gm[i] + gn[i];
                (sum / 1.5, sum / 1.5f32.sqrt())
            } else {
                (gm[i], gm[i])
            };
            let tol = 1e-5 * (1.0 + want_avg.abs());
            assert!((ga[i] - want_avg).abs() < tol, "avg [{o},{c}]");
            assert!((gs[i] - want_sqrt).abs() < tol, "avg_sqrt [{o},{c}]");
            checked += 1;
        }
    }
    assert!(checked > 100);
}

/// An independent run trains the static network of its architecture,
/// freshly initialised: what `extract` produces, without transformation
/// matrices, with as many parameters as `ofa flops` counts.
#[test]
fn independent_runs_train_the_static_network() {
    let (mut cfg, space, ds) = tiny_setup(Schedule::Independent);
    cfg.epochs = 1.0;
    let mut arch = Arch::sample(&space, &mut rng(21));
    arch.r = 16;
    arch.ks[0] = 3;
    cfg.arch = Some(arch.to_reference_json());
    let fresh = ofa::nn::Subnet::<B>::init(&space, &arch, 0, &Default::default());
    let map = fresh.to_tensor_map();
    assert!(
        map.keys().all(|k| !k.contains("matrix")),
        "{:?}",
        map.keys()
    );
    // Parameters as PyTorch counts them: BN running statistics are buffers.
    let params: usize = map
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, t)| t.data.len())
        .sum();
    assert_eq!(params as u64, arch.cost(&space).params);
    // Fresh He (fan-out) weights for its own shape: a 3×3 depthwise kernel
    // of C channels has std √(2 / (9 C)), not the 7×7 supernet's.
    let dw = &fresh.blocks[1].depth_conv.weight;
    let [c, _, k, _] = dw.dims();
    assert_eq!(k, 3);
    let vals = to_vec(dw.val());
    let sd = (vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32).sqrt();
    let want = (2.0 / (9.0 * c as f32)).sqrt();
    assert!((sd / want - 1.0).abs() < 0.25, "std {sd} vs {want}");
    let dir = tempfile::tempdir().unwrap();
    let out = train::<AB>(
        &cfg,
        &space,
        ds,
        dir.path(),
        false,
        &Default::default(),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(out.output, dir.path().join("subnet"));
    let trained = ofa::nn::load_subnet::<B>(&out.output, &Default::default()).unwrap();
    assert_eq!(trained.arch, arch);
    assert!(out.last.unwrap().val.contains_key("arch"));
}
