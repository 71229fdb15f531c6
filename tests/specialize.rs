//! Specialisation and shipping: predictor, ONNX, PyTorch import, the
//! accuracy table under kill -9, and `ofa predict`.

mod common;
#[path = "common/torch.rs"]
mod torch;

use common::*;
use ofa::export::{self, npy};
use ofa::nn::{Mode, Supernet, extract, save_supernet};
use ofa::search::{FitConfig, Table, fit};
use ofa::space::{Arch, Space, preset};
use std::path::Path;
use std::process::Command;

fn ofa_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ofa"))
}

#[test]
fn predictor_recovers_a_known_function() {
    let s = preset("tiny").unwrap();
    // Linear in the encoding: +1 point per active k=7 block, −0.5 per
    // active e=3 block, +2 points per resolution step.
    let truth = |a: &Arch| {
        let blocks = a.active_blocks(&s);
        let k7 = blocks.iter().filter(|b| b.1 == 7).count() as f64;
        let e3 = blocks.iter().filter(|b| b.2 == 3).count() as f64;
        let ri = s.resolutions.iter().position(|&r| r == a.r).unwrap() as f64;
        0.70 + 0.01 * k7 - 0.005 * e3 + 0.02 * ri
    };
    let mut r = rng(11);
    let data: Vec<(Arch, f64)> = (0..800)
        .map(|_| {
            let a = Arch::sample(&s, &mut r);
            let y = truth(&a);
            (a, y)
        })
        .collect();
    let cfg = FitConfig {
        epochs: 150,
        ..FitConfig::default()
    };
    let p = fit::<AB>(&s, &data, &cfg, &Default::default(), &mut |_, _| {}).unwrap();
    assert!(p.report.rows > 100);
    assert!(
        p.report.rmse_points < 0.5,
        "held-out RMSE {} points",
        p.report.rmse_points
    );
    assert!(
        p.report.kendall_tau > 0.9,
        "held-out τ {}",
        p.report.kendall_tau
    );
    // Saved and loaded, it predicts the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.safetensors");
    p.save(&path).unwrap();
    let q = ofa::search::Predictor::<B>::load(&path, &Default::default()).unwrap();
    let archs: Vec<Arch> = data.iter().take(20).map(|d| d.0.clone()).collect();
    assert_eq!(p.predict(&archs), q.predict(&archs));
}

#[test]
fn onnx_export_runs_in_tract_with_the_same_logits() {
    let s = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&s, 51);
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(52);
    let mut archs = vec![Arch::max(&s), Arch::min(&s)];
    archs.extend((0..3).map(|_| Arch::sample(&s, &mut r)));
    for (i, arch) in archs.iter().enumerate() {
        let sub = extract(&net, arch);
        let path = dir.path().join(format!("m{i}.onnx"));
        export::onnx::export(&sub, &path).unwrap();
        let n = 3;
        let x = random_tensor::<B, 4>([n, 3, arch.r, arch.r], 60 + i as u64);
        let input = npy::Array {
            shape: vec![n, 3, arch.r, arch.r],
            data: to_vec(x.clone()),
        };
        let ours = to_vec(sub.forward(x));
        let theirs = export::onnx::run_tract(&path, &input).unwrap();
        assert_eq!(theirs.shape, vec![n, 10]);
        let (diff, scale) = diff_and_scale(&ours, &theirs.data);
        assert!(
            diff / scale <= 1e-4,
            "arch {arch}: relative difference {}",
            diff / scale
        );
    }
}

fn import_space() -> Space {
    preset("tiny").unwrap()
}

#[test]
fn import_reads_both_torch_formats() {
    let s = import_space();
    let net: Supernet<B> = random_supernet(&s, 61);
    let map = net.to_tensor_map();
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("ofa_zip.pth");
    torch::write_zip(&zip_path, &torch::entries(&map));
    // The legacy file also uses the old `mobile_inverted_conv` spelling.
    let mut legacy_entries = torch::entries(&map);
    for e in &mut legacy_entries {
        e.name = e.name.replace(
            ".conv.inverted_bottleneck",
            ".mobile_inverted_conv.inverted_bottleneck",
        );
    }
    let legacy_path = dir.path().join("ofa_legacy.pth");
    torch::write_legacy(&legacy_path, &legacy_entries);
    for (path, renamed) in [(&zip_path, false), (&legacy_path, true)] {
        let (imported, report) =
            export::pytorch::import::<B>(path, &s, &Default::default()).unwrap();
        assert_eq!(report.tensors, map.len(), "{}", path.display());
        assert!(report.dropped_counters > 0);
        assert_eq!(report.renamed_legacy > 0, renamed);
        assert_eq!(imported.to_tensor_map(), map, "{}", path.display());
    }
    // A wrong key and a wrong shape are errors naming the key.
    let mut bad = torch::entries(&map);
    let i = bad
        .iter()
        .position(|e| e.name == "blocks.2.conv.depth_conv.conv.7to5_matrix")
        .unwrap();
    bad[i].name = "blocks.2.conv.depth_conv.conv.7to5_matrx".into();
    let p = dir.path().join("bad_key.pth");
    torch::write_zip(&p, &bad);
    let e = format!(
        "{:#}",
        export::pytorch::import::<B>(&p, &s, &Default::default()).unwrap_err()
    );
    assert!(
        e.contains("blocks.2.conv.depth_conv.conv.7to5_matrix"),
        "{e}"
    );
    let mut bad = torch::entries(&map);
    let i = bad
        .iter()
        .position(|e| e.name == "classifier.linear.bias")
        .unwrap();
    bad[i].shape = vec![5];
    bad[i].values.truncate(5);
    let p = dir.path().join("bad_shape.pth");
    torch::write_zip(&p, &bad);
    let e = format!(
        "{:#}",
        export::pytorch::import::<B>(&p, &s, &Default::default()).unwrap_err()
    );
    assert!(
        e.contains("classifier.linear.bias") && e.contains("[5]"),
        "{e}"
    );
    std::fs::write(dir.path().join("junk.pth"), b"not a checkpoint").unwrap();
    let e = format!(
        "{:#}",
        export::pytorch::import::<B>(&dir.path().join("junk.pth"), &s, &Default::default())
            .unwrap_err()
    );
    assert!(e.contains("junk.pth"), "{e}");
}

/// Writes a small Fashion-MNIST-format dataset (raw IDX files).
fn write_idx_dataset(dir: &Path, train: usize, test: usize) {
    let mut r = rng(70);
    let images = |n: usize, r: &mut rand_chacha::ChaCha8Rng| {
        let mut v = vec![0, 0, 8, 3];
        for x in [n as u32, 28, 28] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend(
            random_vec(n * 784, r)
                .iter()
                .map(|x| ((x + 1.0) * 127.0) as u8),
        );
        v
    };
    let labels = |n: usize| {
        let mut v = vec![0, 0, 8, 1];
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v.extend((0..n).map(|i| (i % 10) as u8));
        v
    };
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte"), images(train, &mut r)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels(train)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), images(test, &mut r)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels(test)).unwrap();
}

fn gray_tiny() -> Space {
    let mut s = preset("tiny").unwrap();
    s.in_channels = 1;
    s
}

#[test]
fn table_survives_kill_and_resumes_with_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fmnist");
    write_idx_dataset(&data, 400, 40);
    let s = gray_tiny();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    save_supernet(
        &random_supernet::<B>(&s, 71),
        &run.join("supernet.safetensors"),
    )
    .unwrap();
    let mut cfg = ofa::train::TrainConfig::new(ofa::train::Schedule::Deps, &s, "x");
    cfg.val_size = 100;
    std::fs::write(run.join("config.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let table = dir.path().join("t.sqlite");
    let args = |t: &Path| {
        let mut c = ofa_bin();
        c.args(["table", "--supernet"])
            .arg(run.join("supernet.safetensors"));
        c.arg("--data")
            .arg(format!("fashion-mnist:{}", data.display()));
        c.args([
            "--subnets",
            "40",
            "--resolutions",
            "12,16,20",
            "--calib-images",
            "100",
            "--calib-batch",
            "50",
        ]);
        c.args(["--max-images", "100", "--batch", "50", "--out"])
            .arg(t);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let total = 40 * 3;
    let mut child = args(&table).spawn().unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let n = Table::open(&table).and_then(|t| t.len()).unwrap_or(0);
        if n >= 5 {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "table builder made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = Table::open(&table).unwrap().len().unwrap();
    assert!(partial < total, "the builder finished before it was killed");
    let status = args(&table).status().unwrap();
    assert!(status.success());
    let rows = Table::open(&table).unwrap().rows().unwrap();
    assert_eq!(rows.len(), total);
    let mut keys: Vec<(usize, usize)> = rows.iter().map(|r| (r.index, r.arch.r)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "a row is missing or repeated");
    // A different supernet cannot resume into this table.
    save_supernet(
        &random_supernet::<B>(&s, 72),
        &run.join("supernet.safetensors"),
    )
    .unwrap();
    let out = args(&table)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different supernet"));
}

#[test]
fn predict_cli_writes_the_subnet_logits() {
    let dir = tempfile::tempdir().unwrap();
    let s = gray_tiny();
    let net: Supernet<B> = random_supernet(&s, 81);
    let arch = Arch::sample(&s, &mut rng(82));
    let sub = extract(&net, &arch);
    let sub_dir = dir.path().join("sub");
    export::save_subnet(&sub, &sub_dir, serde_json::json!({})).unwrap();
    let x = random_tensor::<B, 4>([2, 1, arch.r, arch.r], 83);
    let input = dir.path().join("x.npy");
    npy::write(
        &input,
        &npy::Array {
            shape: vec![2, 1, arch.r, arch.r],
            data: to_vec(x.clone()),
        },
    )
    .unwrap();
    let output = dir.path().join("y.npy");
    let st = ofa_bin()
        .args(["predict", "--subnet"])
        .arg(&sub_dir)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .unwrap();
    assert!(st.success());
    let y = npy::read(&output).unwrap();
    assert_eq!(y.shape, vec![2, 10]);
    let want = to_vec(net.forward(x, &arch, Mode::Eval));
    let diff = y
        .data
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-5 * want.iter().fold(1f32, |m, v| m.max(v.abs())),
        "{diff}"
    );
    // A wrong channel count is a clear error.
    npy::write(
        &input,
        &npy::Array {
            shape: vec![1, 3, arch.r, arch.r],
            data: vec![0.0; 3 * arch.r * arch.r],
        },
    )
    .unwrap();
    let out = ofa_bin()
        .args(["predict", "--subnet"])
        .arg(&sub_dir)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected [N, 1, R, R]"));
}

/// Re-ranking returns the best *measured* of the K best predicted
/// candidates, and records them all; baselines meet the same budget and
/// the best of them is also measured on the test split.
#[test]
fn rerank_returns_the_best_measured_candidate_and_baselines_meet_the_budget() {
    use ofa::search::measure::{best_baseline, top_candidates};
    use ofa::search::{
        Efficiency, EvoConfig, Measurer, Scenario, evolve, measure_baselines, rerank,
    };
    use ofa::train::{EvalConfig, EvalData, evaluate};
    use std::sync::Arc;
    let s = preset("tiny").unwrap();
    let net: Supernet<B> = random_supernet(&s, 31);
    let ds = Arc::new(ofa::data::synthetic(10, 3, 20, 120, 60, 3).unwrap());
    let cfg = EvalConfig {
        calib_images: 40,
        calib_batch: 20,
        batch: 30,
        max_images: 0,
    };
    let train: Vec<usize> = (0..80).collect();
    let val = EvalData::new(
        ds.clone(),
        &train,
        ofa::data::SplitKind::Train,
        (80..120).collect(),
        &cfg,
        0,
    );
    let test = val.with_test_split();
    let eff = Efficiency::new(&s, None).unwrap();
    let max_flops = Arch::max(&s).cost(&s).mflops();
    let sc = Scenario::new("f", None, &[format!("flops<={}M", 0.5 * max_flops)]).unwrap();
    // A predictor that prefers more FLOPs: its ranking is not the measured one.
    let predict = |a: &[Arch]| -> Vec<f64> { a.iter().map(|x| x.cost(&s).mflops()).collect() };
    let evo = EvoConfig {
        generations: 10,
        population: 30,
        ..EvoConfig::default()
    };
    let mut r = evolve(&s, &eff, "f", &sc.constraints, &predict, &evo).unwrap();
    let k = 5;
    let top = top_candidates(&r, &s, k);
    assert_eq!(top.len(), k);
    let mut m = Measurer::new(&net, &val, Some(&test), cfg.clone(), Default::default());
    rerank(&mut r, k, &mut m).unwrap();
    assert_eq!(r.reranked.len(), k);
    // Measured independently: recalibrate and evaluate each candidate again.
    let measured: Vec<f64> = top
        .iter()
        .map(|c| {
            evaluate(
                &net,
                &c.arch,
                &val,
                &cfg,
                &Default::default(),
                &mut |_, _| {},
            )
            .unwrap()
            .top1
        })
        .collect();
    let best = measured.iter().cloned().fold(f64::MIN, f64::max);
    let got = r
        .reranked
        .iter()
        .find(|x| x.candidate.arch == r.best.arch)
        .unwrap();
    assert_eq!(got.val.top1, best);
    for (x, want) in r.reranked.iter().zip(&measured) {
        assert_eq!(x.val.top1, *want);
        assert!(x.candidate.accuracy.is_finite());
    }
    measure_baselines(&mut r, &sc, &predict, &mut m).unwrap();
    assert!(r.baselines.iter().any(|b| b.name == "smallest"));
    for b in &r.baselines {
        assert!(sc.admits(&eff, &b.candidate.arch), "{} over budget", b.name);
    }
    let bb = best_baseline(&r).unwrap();
    assert!(bb.test.is_some());
    assert!(r.baselines.iter().all(|b| b.val.top1 <= bb.val.top1));
}

/// The reference's released predictor forms, imported, predict what the
/// reference's own code predicts for the same architectures
/// (tests/data/*_predictor.json, written by tests/data/make_predictor_fixtures.py
/// with `AccuracyPredictor.predict_accuracy` of ofa/tutorial and
/// `AccuracyPredictor.predict_acc` of ofa/nas), after a save and a load.
#[test]
fn imported_reference_predictors_predict_what_the_reference_predicts() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let space = preset("ofa-mbv3-w1.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for form in ["tutorial", "nas"] {
        let p = export::pytorch::import_predictor::<B>(
            &data.join(format!("{form}_predictor.pth")),
            &space,
            &Default::default(),
        )
        .unwrap();
        let path = dir.path().join(format!("{form}.safetensors"));
        p.save(&path).unwrap();
        let p = ofa::search::Predictor::<B>::load(&path, &Default::default()).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(data.join(format!("{form}_predictor.json"))).unwrap(),
        )
        .unwrap();
        let archs: Vec<Arch> = want["archs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| Arch::from_json(a, &space).unwrap())
            .collect();
        let got = p.predict(&archs);
        for (g, w) in got.iter().zip(want["predicted"].as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            assert!((g - w).abs() <= 1e-5, "{form}: {g} vs the reference's {w}");
        }
    }
    // A space of another shape is refused with the file's name.
    let e = export::pytorch::import_predictor::<B>(
        &data.join("tutorial_predictor.pth"),
        &preset("mbv3-28-lite").unwrap(),
        &Default::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("tutorial_predictor.pth"), "{e}");
}

/// A released specialized network (net.config written by the reference's
/// `get_active_subnet(...).config` for a known `set_active_subnet` arch,
/// tests/data/specialized_w1.0.*; bench/specialized_check.sh compares the
/// logits with the reference's) becomes a subnet folder: the architecture
/// read back from net.config is the reference's, and every tensor of `init`
/// lands where it belongs.
#[test]
fn a_specialized_network_folder_imports_as_a_subnet() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let space = preset("ofa-mbv3-w1.0").unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("specialized_w1.0.arch.json")).unwrap(),
    )
    .unwrap();
    let want = Arch::from_json(&want, &space).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        data.join("specialized_w1.0.net.config"),
        dir.path().join("net.config"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("run.config"),
        format!("{{\"image_size\": {}}}", want.r),
    )
    .unwrap();
    let weights =
        ofa::nn::Subnet::<B>::init(&space, &want, 11, &Default::default()).to_tensor_map();
    torch::write_zip(&dir.path().join("init"), &torch::entries(&weights));
    let net =
        export::specialized::import_specialized::<B>(dir.path(), None, None, &Default::default())
            .unwrap();
    assert_eq!(net.space.name, "ofa-mbv3-w1.0");
    assert_eq!((net.arch.d.clone(), net.arch.r), (want.d.clone(), want.r));
    let active = |a: &Arch| -> Vec<(usize, usize, usize)> {
        a.active_blocks(&space)
            .into_iter()
            .map(|(b, k, e)| (b.index, k, e))
            .collect()
    };
    assert_eq!(active(&net.arch), active(&want));
    assert_eq!(net.to_tensor_map(), weights);
    // A space the widths do not fit is refused, naming net.config.
    let e = export::specialized::import_specialized::<B>(
        dir.path(),
        Some(&preset("ofa-mbv3-w1.2").unwrap()),
        None,
        &Default::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("net.config"), "{e}");
}

/// `ofa specialize` end to end on a tiny supernet with two latency budgets
/// taken from its own latency table: both choices meet their budgets in the
/// table, their subnet folders load with the chosen architectures, their
/// ONNX exports check in tract (specialize refuses otherwise); a profiled
/// table is cached and reused by the next call.
#[test]
fn specialize_meets_every_budget_and_caches_the_table() {
    use ofa::search::{EvoConfig, LatencyTable, ProfileConfig};
    use ofa::specialize::{SpecializeConfig, specialize};
    let s = preset("tiny").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net: Supernet<B> = random_supernet(&s, 4);
    let supernet = dir.path().join("supernet.safetensors");
    save_supernet(&net, &supernet).unwrap();
    let mut r = rng(5);
    let pairs: Vec<(Arch, f64)> = (0..60)
        .map(|_| {
            let a = Arch::sample(&s, &mut r);
            let y = 0.5 + 0.001 * a.cost(&s).mflops();
            (a, y)
        })
        .collect();
    let fit_cfg = FitConfig {
        epochs: 5,
        hidden: 32,
        ..FitConfig::default()
    };
    let p = fit::<AB>(&s, &pairs, &fit_cfg, &Default::default(), &mut |_, _| {}).unwrap();
    let predictor = dir.path().join("pred.safetensors");
    p.save(&predictor).unwrap();
    let profile = ProfileConfig {
        warmup: 0,
        reps: 2,
        evict_kib: 0,
        ..ProfileConfig::default()
    };
    let lut = LatencyTable::profile::<B>(&s, &profile, &Default::default(), &mut |_, _| {});
    let lut_path = dir.path().join("lut.json");
    lut.save(&lut_path).unwrap();
    let (lo, hi) = (
        lut.predict(&s, &Arch::min(&s)).unwrap(),
        lut.predict(&s, &Arch::max(&s)).unwrap(),
    );
    let budgets = [lo + 0.3 * (hi - lo), lo + 0.7 * (hi - lo)];
    let mut cfg = SpecializeConfig {
        supernet,
        predictor,
        constraints: budgets
            .iter()
            .map(|b| format!("latency<={:.6}ms", b))
            .collect(),
        scenarios: None,
        lut: Some(lut_path),
        cache_dir: Some(dir.path().join("cache")),
        profile,
        validate: 0,
        calibrate: 2,
        timing_reps: 10,
        runtime: "ofa".into(),
        ort_lib: None,
        data: None,
        eval: Default::default(),
        evo: EvoConfig {
            generations: 5,
            ..EvoConfig::default()
        },
        out: dir.path().join("out"),
    };
    let out = specialize::<B>(&cfg, &Default::default(), &mut |_, _, _| {}).unwrap();
    assert_eq!(out.lut.how, "brought");
    assert_eq!(out.chosen.len(), 2);
    for (c, b) in out.chosen.iter().zip(budgets) {
        let lat = c.lut_ms.unwrap();
        assert!(lat <= b + 1e-6, "{}: {lat} ms over {b} ms", c.scenario);
        let sub = ofa::nn::load_subnet::<B>(&c.subnet, &Default::default()).unwrap();
        assert_eq!(sub.arch.to_reference_json(), c.arch);
        assert!(c.onnx.exists() && c.onnx_rel_diff <= 1e-4);
    }
    assert!(out.report.exists());
    cfg.lut = None;
    let first = specialize::<B>(&cfg, &Default::default(), &mut |_, _, _| {}).unwrap();
    let second = specialize::<B>(&cfg, &Default::default(), &mut |_, _, _| {}).unwrap();
    assert_eq!(
        (first.lut.how.as_str(), second.lut.how.as_str()),
        ("profiled", "cached")
    );
    assert_eq!(first.lut.path, second.lut.path);
}

/// The one-operator ONNX graphs a latency table times in another runtime
/// compute what our layers compute: every distinct layer of a space,
/// exported alone, runs in tract (an independent runtime) to our output.
#[test]
fn single_layer_onnx_graphs_compute_what_our_layers_compute() {
    use prost::Message;
    let s = preset("tiny").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let layers = ofa::search::latency::distinct_layers(&s);
    assert!(layers.len() > 20);
    for (i, l) in layers.iter().enumerate() {
        let (module, mut shape) = ofa::nn::LayerModule::<B>::new(l, &dev);
        shape[0] = 2;
        let path = dir.path().join(format!("l{i}.onnx"));
        let model = export::onnx::layer_to_onnx(&module, shape);
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        let x = random_tensor::<B, 4>(shape, 70 + i as u64);
        let input = npy::Array {
            shape: shape.to_vec(),
            data: to_vec(x.clone()),
        };
        let ours = to_vec(module.forward(x));
        let theirs = export::onnx::run_tract(&path, &input).unwrap();
        assert_eq!(ours.len(), theirs.data.len(), "{}", l.key());
        let (diff, scale) = diff_and_scale(&ours, &theirs.data);
        assert!(
            diff / scale <= 1e-4,
            "{}: relative difference {}",
            l.key(),
            diff / scale
        );
    }
}

/// With the `onnxruntime` feature and a findable libonnxruntime.so
/// (`pip install onnxruntime`): a table timed in ONNX Runtime records its
/// runtime and per-call cost, and predicts whole subnets timed there too.
#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_tables_record_their_runtime() {
    use ofa::search::{LatencyTable, ProfileConfig};
    if ofa::export::ort_runtime::find_library(None).is_err() {
        eprintln!("skipped: no libonnxruntime.so (python3 -m pip install onnxruntime)");
        return;
    }
    let s = preset("tiny").unwrap();
    let dev = Default::default();
    let mut timer = ofa::export::timer::<B>("onnxruntime", None, &dev).unwrap();
    let cfg = ProfileConfig {
        warmup: 1,
        reps: 3,
        evict_kib: 0,
        ..ProfileConfig::default()
    };
    let lut = LatencyTable::profile_with(&s, &cfg, timer.as_mut(), &mut |_, _| {}).unwrap();
    assert_eq!(lut.runtime, "onnxruntime");
    assert!(lut.base_ms > 0.0 && lut.entries.values().all(|t| t.median_ms.is_finite()));
    let v = ofa::search::latency::validate_with(&lut, &s, 4, 0, timer.as_mut()).unwrap();
    assert!(v.samples.iter().all(|(_, p, m)| *p > 0.0 && *m > 0.0));
}

/// Largest |ours − theirs| and the scale it is relative to (the largest
/// |ours|, at least 1).
fn diff_and_scale(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    let scale = ours.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (diff, scale)
}
