//! The elastic supernet against independent computations.

mod common;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use common::*;
use ofa::nn::{ElasticDepthwise, Init, Mode, Supernet, extract};
use ofa::space::{Arch, Space, preset};

/// Plain-Rust depthwise convolution with zero padding `k / 2`.
fn naive_depthwise(
    x: &[f32],
    c: usize,
    h: usize,
    w: &[f32],
    k: usize,
    stride: usize,
) -> (Vec<f32>, usize) {
    let p = (k / 2) as isize;
    let out = (h + 2 * (k / 2) - k) / stride + 1;
    let mut y = vec![0f32; c * out * out];
    for ch in 0..c {
        for oy in 0..out {
            for ox in 0..out {
                let mut acc = 0f32;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * stride) as isize + ky as isize - p;
                        let ix = (ox * stride) as isize + kx as isize - p;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < h {
                            acc += x[(ch * h + iy as usize) * h + ix as usize]
                                * w[(ch * k + ky) * k + kx];
                        }
                    }
                }
                y[(ch * out + oy) * out + ox] = acc;
            }
        }
    }
    (y, out)
}

/// The centre `dst×dst` of a `src×src` kernel, row-major.
fn crop(w: &[f32], src: usize, dst: usize) -> Vec<f32> {
    let s = (src - dst) / 2;
    let mut v = Vec::with_capacity(dst * dst);
    for y in 0..dst {
        for x in 0..dst {
            v.push(w[(s + y) * src + s + x]);
        }
    }
    v
}

/// `w · Mᵀ`: new[i] = Σ_j w[j] · M[i][j] (the reference's `F.linear(w, M)`).
fn linear(w: &[f32], m: &[f32]) -> Vec<f32> {
    let n = w.len();
    (0..n)
        .map(|i| (0..n).map(|j| w[j] * m[i * n + j]).sum())
        .collect()
}

#[test]
fn elastic_kernel_equals_naive_conv_with_hand_transformed_kernel() {
    let device = Default::default();
    let (cmax, c, h) = (6, 4, 9);
    let mut dw = ElasticDepthwise::<B>::new(&mut Init::new(1), cmax, &[3, 5, 7], 1, &device);
    let m53 = random_vec(81, &mut rng(2));
    let m75 = random_vec(625, &mut rng(3));
    dw.transforms = vec![
        Param::from_tensor(Tensor::from_data(
            TensorData::new(m53.clone(), [9, 9]),
            &device,
        )),
        Param::from_tensor(Tensor::from_data(
            TensorData::new(m75.clone(), [25, 25]),
            &device,
        )),
    ];
    let w7 = to_vec(dw.weight.val());
    let xs = random_vec(2 * c * h * h, &mut rng(4));
    let x = Tensor::<B, 4>::from_data(TensorData::new(xs.clone(), [2, c, h, h]), &device);
    for stride in [1, 2] {
        dw.stride = stride;
        for k in [7, 5, 3] {
            // Hand-made kernels per channel.
            let mut kern = Vec::new();
            for ch in 0..c {
                let full = &w7[ch * 49..ch * 49 + 49];
                let k5 = linear(&crop(full, 7, 5), &m75);
                let kk = match k {
                    7 => full.to_vec(),
                    5 => k5,
                    _ => linear(&crop(&k5, 5, 3), &m53),
                };
                kern.extend(kk);
            }
            let got = to_vec(dw.forward(x.clone(), k));
            for n in 0..2 {
                let xn = &xs[n * c * h * h..(n + 1) * c * h * h];
                let (want, out) = naive_depthwise(xn, c, h, &kern, k, stride);
                let g = &got[n * c * out * out..(n + 1) * c * out * out];
                let err = g
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "k={k} stride={stride}: max error {err}");
            }
        }
    }
}

fn check_extraction(space: &Space, archs: &[Arch], batch: usize) {
    let net: Supernet<B> = random_supernet(space, 11);
    for (i, arch) in archs.iter().enumerate() {
        let x = random_tensor::<B, 4>([batch, space.in_channels, arch.r, arch.r], 100 + i as u64);
        let a = net.forward(x.clone(), arch, Mode::Eval);
        let sub = extract(&net, arch);
        let b = sub.forward(x);
        let scale = max_abs(a.clone()).max(1.0);
        let err = max_abs_diff(a, b) / scale;
        assert!(
            err <= 1e-5,
            "{} arch {arch}: relative max diff {err}",
            space.name
        );
    }
}

/// The host engine (BN folded, channels-last, fused epilogues) against the
/// supernet's own forward, for every preset kind: SE or not, h-swish or
/// ReLU, 1 and 3 input channels, batch 1 and 3 (at batch 3 the samples
/// run in groups per thread; at 128 px one sample per pass).
#[test]
fn engine_matches_supernet() {
    for (name, r, n) in [
        ("tiny", None, 3),
        ("mbv3-32", None, 1),
        ("mbv3-28-lite", None, 3),
        ("ofa-mbv3-w1.0", Some(128), 3),
    ] {
        let s = preset(name).unwrap();
        let net: Supernet<B> = random_supernet(&s, 12);
        let mut g = rng(8);
        let mut archs: Vec<Arch> = (0..4).map(|_| Arch::sample(&s, &mut g)).collect();
        archs.push(Arch::max(&s));
        archs.push(Arch::min(&s));
        for (i, arch) in archs.into_iter().enumerate() {
            let arch = match r {
                Some(r) => arch.with_resolution(r),
                None => arch,
            };
            let x = random_tensor::<B, 4>([n, s.in_channels, arch.r, arch.r], 200 + i as u64);
            let want = net.forward(x.clone(), &arch, Mode::Eval);
            let runner = ofa::nn::Runner::new(extract(&net, &arch));
            assert!(runner.uses_engine(), "the CPU backend runs the host engine");
            let got = runner.forward(x.clone());
            let host = runner.forward_host(&to_vec(x), n);
            let scale = max_abs(want.clone()).max(1.0);
            let err = max_abs_diff(want.clone(), got) / scale;
            assert!(err <= 1e-4, "{name} arch {arch}: relative max diff {err}");
            let w = to_vec(want);
            let err = w
                .iter()
                .zip(&host)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
                / scale;
            assert!(
                err <= 1e-4,
                "{name} arch {arch} (host input): relative max diff {err}"
            );
        }
    }
}

#[test]
fn extraction_matches_supernet_tiny_and_small_image() {
    for name in ["tiny", "mbv3-32"] {
        let s = preset(name).unwrap();
        let mut r = rng(5);
        let mut archs: Vec<Arch> = (0..18).map(|_| Arch::sample(&s, &mut r)).collect();
        archs.push(Arch::max(&s));
        archs.push(Arch::min(&s));
        check_extraction(&s, &archs, 2);
    }
}

#[test]
fn extraction_matches_supernet_ofa_mbv3() {
    let s = preset("ofa-mbv3-w1.0").unwrap();
    let mut r = rng(6);
    let archs: Vec<Arch> = (0..3)
        .map(|_| Arch::sample(&s, &mut r).with_resolution(128))
        .collect();
    check_extraction(&s, &archs, 1);
}

/// Gradient of every parameter, as host vectors keyed by reference name.
fn grads_by_name(
    net: &Supernet<AB>,
    arch: &Arch,
    seed: u64,
) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::backend::AutodiffBackend;
    let x = random_tensor::<AB, 4>([2, net.space.in_channels, arch.r, arch.r], seed);
    let loss = net.forward(x, arch, Mode::Train).powi_scalar(2).mean();
    let grads = loss.backward();
    // Pair each param id with its value to find its reference name by value.
    struct Collect<'a> {
        grads: &'a <AB as AutodiffBackend>::Gradients,
        out: Vec<(Vec<f32>, Vec<usize>, Option<Vec<f32>>)>,
    }
    impl ModuleVisitor<AB> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AB, D>>) {
            let v = p.val();
            let g = v.grad(self.grads).map(to_vec);
            self.out.push((to_vec(v.clone()), v.dims().to_vec(), g));
        }
    }
    let mut c = Collect {
        grads: &grads,
        out: vec![],
    };
    burn::module::Module::visit(net, &mut c);
    let map = net.to_tensor_map();
    let mut out = std::collections::BTreeMap::new();
    for (name, t) in map {
        if name.contains("running_") {
            continue;
        }
        let found = c.out.iter().find(|(v, s, _)| *s == t.shape && *v == t.data);
        let (_, shape, g) = found.unwrap_or_else(|| panic!("no param for {name}"));
        let g = g.clone().unwrap_or_else(|| vec![0.0; t.data.len()]);
        out.insert(name, (shape.clone(), g));
    }
    out
}

#[test]
fn gradients_flow_only_to_the_active_subnet() {
    let s = preset("tiny").unwrap();
    let net: Supernet<AB> = random_supernet(&s, 21);
    let mut arch = Arch::max(&s).with_resolution(12);
    arch.d = vec![2, 1, 3];
    arch.ks = vec![3, 5, 7, 5, 7, 7, 7, 3, 5];
    arch.e = vec![3, 4, 6, 6, 6, 6, 4, 6, 3];
    let arch = arch.canonical(&s);
    let g = grads_by_name(&net, &arch, 3);
    let nz = |v: &[f32]| v.iter().any(|x| *x != 0.0);
    for b in s.blocks() {
        let p = format!("blocks.{}.conv", b.index + 1);
        let (wshape, w) = &g[&format!("{p}.depth_conv.conv.conv.weight")];
        let ib = &g[&format!("{p}.inverted_bottleneck.conv.conv.weight")].1;
        let m75 = &g[&format!("{p}.depth_conv.conv.7to5_matrix")].1;
        let m53 = &g[&format!("{p}.depth_conv.conv.5to3_matrix")].1;
        if !arch.is_active(&b) {
            assert!(
                !nz(w) && !nz(ib) && !nz(m75) && !nz(m53),
                "skipped block {} got gradient",
                b.index
            );
            continue;
        }
        let (k, mid) = (arch.ks[b.index], s.middle_width(b.in_ch, arch.e[b.index]));
        let kmax = wshape[2];
        // The first transform reads the centre 5×5 of the 7×7 kernel, so a
        // 3×3 subnet trains that whole centre; a 7×7 one the full kernel.
        let reach = if k == kmax { kmax } else { 5 };
        let lo = (kmax - reach) / 2;
        for ch in 0..wshape[0] {
            for y in 0..kmax {
                for x in 0..kmax {
                    let v = w[(ch * kmax + y) * kmax + x];
                    let inside =
                        ch < mid && (lo..lo + reach).contains(&y) && (lo..lo + reach).contains(&x);
                    if !inside {
                        assert_eq!(
                            v, 0.0,
                            "block {} ch {ch} ({y},{x}) outside k{k}/mid{mid}",
                            b.index
                        );
                    }
                }
            }
        }
        let c0 = (kmax - k) / 2;
        for ch in 0..mid {
            let centre: Vec<f32> = (c0..c0 + k)
                .flat_map(|y| (c0..c0 + k).map(move |x| (y, x)))
                .map(|(y, x)| w[(ch * kmax + y) * kmax + x])
                .collect();
            assert!(
                nz(&centre),
                "block {} channel {ch}: active kernel got no gradient",
                b.index
            );
        }
        let cin = b.in_ch;
        assert!(ib[..mid * cin].iter().any(|x| *x != 0.0));
        assert!(
            ib[mid * cin..].iter().all(|x| *x == 0.0),
            "block {} inactive expand rows got gradient",
            b.index
        );
        assert_eq!(nz(m75), k < 7, "block {} 7to5 matrix used iff k<7", b.index);
        assert_eq!(nz(m53), k < 5, "block {} 5to3 matrix used iff k<5", b.index);
        let bn = &g[&format!("{p}.depth_conv.bn.bn.weight")].1;
        assert!(bn[mid..].iter().all(|x| *x == 0.0) && nz(&bn[..mid]));
    }
}

#[test]
fn supernet_file_round_trips_and_rejects_other_spaces() {
    let s = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&s, 31);
    let dir = std::env::temp_dir().join(format!("ofa-nn-{}", std::process::id()));
    let path = dir.join("net.safetensors");
    ofa::nn::save_supernet(&net, &path).unwrap();
    let back: Supernet<B> = ofa::nn::load_supernet(&path, Some(&s), &Default::default()).unwrap();
    let arch = Arch::sample(&s, &mut rng(1));
    let x = random_tensor::<B, 4>([2, 3, arch.r, arch.r], 5);
    assert_eq!(
        max_abs_diff(
            net.forward(x.clone(), &arch, Mode::Eval),
            back.forward(x, &arch, Mode::Eval)
        ),
        0.0
    );
    let other = preset("mbv3-32").unwrap();
    let e = ofa::nn::load_supernet::<B>(&path, Some(&other), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("net.safetensors") && e.contains("does not match"),
        "{e}"
    );
    std::fs::write(&path, b"garbage").unwrap();
    let e = ofa::nn::load_supernet::<B>(&path, None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("net.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tensor_map_errors_name_the_key() {
    let s = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&s, 1);
    let mut map = net.to_tensor_map();
    map.remove("blocks.3.conv.depth_conv.conv.7to5_matrix");
    let e = net.clone().load_tensor_map(&map).unwrap_err().to_string();
    assert!(
        e.contains("blocks.3.conv.depth_conv.conv.7to5_matrix"),
        "{e}"
    );
    let mut map = net.to_tensor_map();
    map.get_mut("classifier.linear.bias").unwrap().shape = vec![11];
    let e = net.clone().load_tensor_map(&map).unwrap_err().to_string();
    assert!(
        e.contains("classifier.linear.bias") && e.contains("[11]"),
        "{e}"
    );
    let mut map = net.to_tensor_map();
    let extra = map["classifier.linear.bias"].clone();
    map.insert("blocks.99.conv.x".into(), extra);
    let e = net.load_tensor_map(&map).unwrap_err().to_string();
    assert!(e.contains("blocks.99.conv.x"), "{e}");
}

#[test]
fn keys_match_the_reference_checkpoint() {
    let s = preset("ofa-mbv3-w1.0").unwrap();
    let net = ofa::nn::SupernetConfig::new(s).init::<B>(&Default::default());
    let ours: Vec<(String, Vec<usize>)> = net
        .to_tensor_map()
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect();
    let reference = include_str!("data/ofa_mbv3_w1.0_keys.txt");
    let mut want: Vec<(String, Vec<usize>)> = reference
        .lines()
        .filter(|l| !l.contains("num_batches_tracked"))
        .map(|l| {
            let (k, shape) = l.split_once(' ').unwrap();
            let dims = shape.trim_matches(|c| c == '[' || c == ']');
            let dims = dims
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse().unwrap())
                .collect();
            (k.to_string(), dims)
        })
        .collect();
    want.sort();
    assert_eq!(ours.len(), want.len());
    for (a, b) in ours.iter().zip(&want) {
        assert_eq!(a, b);
    }
}

/// The analytic gradient of a scalar loss through a whole subnet (fused
/// kernels, slicing, kernel transforms, BN in training mode, SE, residuals)
/// against central finite differences.
#[test]
fn subnet_gradients_match_finite_differences() {
    use burn::module::Param;
    use ofa::nn::TensorMap;
    // ReLU's kink at 0 sits under many activations and makes finite
    // differences of early weights unreliable; h-swish bends only at ±3.
    let mut s = preset("tiny").unwrap();
    s.first_block.act = ofa::space::Activation::HSwish;
    for st in &mut s.stages {
        st.act = ofa::space::Activation::HSwish;
    }
    let mut arch = Arch::max(&s).with_resolution(12);
    arch.d = vec![2, 1, 2];
    arch.ks = vec![3, 5, 7, 7, 3, 3, 5, 3, 3];
    arch.e = vec![4, 6, 3, 3, 3, 3, 6, 4, 3];
    let arch = arch.canonical(&s);
    let base: Supernet<AB> = random_supernet(&s, 41);
    let x = random_tensor::<AB, 4>([4, 3, 12, 12], 42);
    let weights = random_tensor::<AB, 2>([4, 10], 43);
    let loss_of = |net: &Supernet<AB>| -> burn::tensor::Tensor<AB, 1> {
        (net.forward(x.clone(), &arch, Mode::Train) * weights.clone()).sum()
    };
    let grads = loss_of(&base).backward();
    let names = base.param_names();
    let mut analytic = std::collections::HashMap::new();
    struct G<'a> {
        g: &'a <AB as burn::tensor::backend::AutodiffBackend>::Gradients,
        names: &'a std::collections::HashMap<burn::module::ParamId, String>,
        out: &'a mut std::collections::HashMap<String, Vec<f32>>,
    }
    impl burn::module::ModuleVisitor<AB> for G<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<AB, D>>) {
            if let (Some(g), Some(n)) = (p.val().grad(self.g), self.names.get(&p.id)) {
                self.out.insert(n.clone(), to_vec(g));
            }
        }
    }
    burn::module::Module::visit(
        &base,
        &mut G {
            g: &grads,
            names: &names,
            out: &mut analytic,
        },
    );
    let map: TensorMap = base.to_tensor_map();
    let probes = [
        ("first_conv.conv.weight", 5),
        ("blocks.0.conv.depth_conv.conv.weight", 7),
        ("blocks.1.conv.inverted_bottleneck.conv.conv.weight", 20),
        ("blocks.1.conv.depth_conv.conv.conv.weight", 24),
        ("blocks.2.conv.depth_conv.conv.7to5_matrix", 3),
        ("blocks.1.conv.depth_conv.conv.5to3_matrix", 10),
        ("blocks.1.conv.depth_conv.bn.bn.weight", 2),
        ("blocks.4.conv.depth_conv.se.fc.reduce.weight", 6),
        ("blocks.4.conv.depth_conv.se.fc.expand.bias", 3),
        ("blocks.7.conv.point_linear.conv.conv.weight", 11),
        ("final_expand_layer.bn.bias", 4),
        ("feature_mix_layer.conv.weight", 9),
        ("classifier.linear.weight", 13),
    ];
    let loss_with = |key: &str, i: usize, delta: f32| -> f64 {
        let mut m = map.clone();
        m.get_mut(key).unwrap().data[i] += delta;
        let net = base.clone().load_tensor_map(&m).unwrap();
        to_vec(loss_of(&net))[0] as f64
    };
    // Batch norm over 4 images makes the loss strongly curved in early
    // weights: a small step, and a tolerance with an absolute floor.
    for (key, i) in probes {
        let h = 1e-3f32;
        let fd = (loss_with(key, i, h) - loss_with(key, i, -h)) / (2.0 * h as f64);
        let an = analytic[key][i] as f64;
        let tol = 0.1 * fd.abs().max(an.abs()) + 0.01;
        assert!(
            (fd - an).abs() <= tol,
            "{key}[{i}]: finite difference {fd} vs analytic {an}"
        );
    }
}
