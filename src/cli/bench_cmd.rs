//! `ofa bench`: the measured numbers behind BENCHMARKS.md — a training
//! step (forward, backward, SGD update) of random subnets of a space, and
//! inference throughput — plus the layer list of the subnets used, so that
//! `bench/pytorch_reference.py` can time the same networks in PyTorch.

use super::print_json;
use crate::nn::TrainBackend;
use crate::nn::{Mode, SupernetConfig, extract};
use crate::space::{Arch, Space, layers};
use crate::train::{Sgd, SgdConfig, smoothed_cross_entropy};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use rand::SeedableRng;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time training steps of random subnets and of the largest one.
    Train(BenchArgs),
    /// Time inference of extracted subnets at several batch sizes.
    Infer(BenchArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "mbv3-32")]
    space: String,
    /// Input channels (1 for Fashion-MNIST, 3 for CIFAR).
    #[arg(long)]
    channels: Option<usize>,
    /// Batch sizes (training uses the first).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    batch: Vec<usize>,
    /// Timed steps (after one warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the subnets' layer lists (JSON) for the PyTorch reference.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Inference: also save each timed subnet as a subnet folder
    /// (`DIR/subnet-0`, …), so that `ofa export --onnx` can hand the very
    /// same networks to another runtime (bench/ort_compare.sh).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Inference: run the backend's own operators instead of the host
    /// engine (`nn::engine`), to compare the two in one run.
    #[arg(long)]
    no_engine: bool,
    /// Inference: print where the host engine's time went (seconds and
    /// multiply-adds per kind of step, over all timed runs).
    #[arg(long)]
    breakdown: bool,
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn archs(space: &Space, n: usize, seed: u64) -> Vec<Arch> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            Arch::sample(space, &mut rng).with_resolution(*space.resolutions.last().unwrap_or(&32))
        })
        .collect()
}

fn dump(
    path: &std::path::Path,
    space: &Space,
    label: &str,
    archs: &[Arch],
    batch: &[usize],
) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "space": space.name, "in_channels": space.in_channels, "classes": space.num_classes,
        "batch": batch, "label": label,
        "largest": layers(space, &Arch::max(space).with_resolution(archs.first().map(|a| a.r).unwrap_or(32))),
        "archs": archs.iter().map(|a| serde_json::json!({
            "arch": a.to_reference_json(), "resolution": a.r,
            "mflops": a.cost(space).mflops(), "layers": layers(space, a),
        })).collect::<Vec<_>>(),
    });
    crate::util::write_text_atomic(path, &serde_json::to_string_pretty(&v)?)
}

fn space_for(a: &BenchArgs) -> anyhow::Result<Space> {
    let mut s = Space::resolve(&a.space)?;
    if let Some(c) = a.channels {
        s.in_channels = c;
    }
    Ok(s)
}

pub fn bench<B: TrainBackend>(device: &B::Device, c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Train(a) => train::<B>(device, a),
        BenchCommand::Infer(a) => infer::<B>(device, a),
    }
}

fn train<B: TrainBackend>(device: &B::Device, a: BenchArgs) -> anyhow::Result<()> {
    let space = space_for(&a)?;
    let bs = a.batch[0];
    let mut net = SupernetConfig::new(space.clone())
        .with_seed(a.seed)
        .init::<B>(device);
    let mut sgd = Sgd::<B>::new(SgdConfig::default());
    let random = archs(&space, a.steps + 1, a.seed);
    let max = vec![Arch::max(&space); a.steps + 1];
    if let Some(p) = &a.dump {
        dump(p, &space, "train", &random[1..], &a.batch)?;
    }
    let r = random[0].r;
    let labels: Vec<i64> = (0..bs as i64)
        .map(|i| i % space.num_classes as i64)
        .collect();
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [bs]), device);
    let mut report = serde_json::Map::new();
    for (label, list) in [("random subnet", &random), ("largest subnet", &max)] {
        let mut times = Vec::new();
        for (i, arch) in list.iter().enumerate() {
            let x = Tensor::<B, 4>::random(
                [bs, space.in_channels, r, r],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let t = Instant::now();
            let logits = net.forward(x, arch, Mode::Train);
            let loss = smoothed_cross_entropy(logits, y.clone(), 0.1);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = sgd.step(net, 0.01, grads);
            let s = t.elapsed().as_secs_f64();
            if i > 0 {
                times.push(s);
            }
        }
        let m = median(times);
        let mflops = list[1..]
            .iter()
            .map(|a| a.cost(&space).mflops())
            .sum::<f64>()
            / (list.len() - 1) as f64;
        println!(
            "{label:<15} train step, batch {bs}, r {r}: {m:.3} s/step, {:.0} img/s ({mflops:.1} MFLOPs/img mean)",
            bs as f64 / m
        );
        report.insert(label.into(), serde_json::json!({"seconds_per_step": m, "images_per_s": bs as f64 / m, "mflops": mflops}));
    }
    if a.json {
        print_json(&report)?;
    }
    Ok(())
}

fn infer<B: TrainBackend>(device: &B::Device, a: BenchArgs) -> anyhow::Result<()> {
    let space = space_for(&a)?;
    let net = SupernetConfig::new(space.clone())
        .with_seed(a.seed)
        .init::<B::InnerBackend>(device);
    let random = archs(&space, 4, a.seed);
    if let Some(p) = &a.dump {
        dump(p, &space, "infer", &random, &a.batch)?;
    }
    let subnets: Vec<_> = random.iter().map(|arch| extract(&net, arch)).collect();
    if let Some(dir) = &a.save {
        for (i, sub) in subnets.iter().enumerate() {
            crate::nn::save_subnet(sub, &dir.join(format!("subnet-{i}")), serde_json::json!({}))?;
        }
    }
    let runners: Vec<_> = subnets
        .iter()
        .map(|sub| crate::nn::Runner::new(sub.clone()))
        .collect();
    let engine = !a.no_engine && runners.iter().all(|r| r.uses_engine());
    let mut report = serde_json::Map::new();
    report.insert(
        "engine".into(),
        serde_json::json!(if engine { "host" } else { "backend" }),
    );
    // rates[subnet][batch index], images per second.
    let mut rates = vec![Vec::new(); subnets.len()];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    for (bi, &bs) in a.batch.iter().enumerate() {
        for (run, r) in runners.iter().zip(&mut rates) {
            let sub = run.subnet();
            let arch = &sub.arch;
            let len = bs * space.in_channels * arch.r * arch.r;
            let host: Vec<f32> = (0..len)
                .map(|_| rand::RngExt::random::<f32>(&mut rng) * 2.0 - 1.0)
                .collect();
            let x = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(host.clone(), [bs, space.in_channels, arch.r, arch.r]),
                device,
            );
            let once = || {
                if engine {
                    std::hint::black_box(run.forward_host(&host, bs));
                } else {
                    let _ = sub.forward(x.clone()).into_data();
                }
            };
            once();
            if a.breakdown {
                run.record_breakdown();
            }
            let reps = a.steps.max(1) * if bs == 1 { 10 } else { 1 };
            let t = Instant::now();
            for _ in 0..reps {
                once();
            }
            r.push((reps * bs) as f64 / t.elapsed().as_secs_f64());
            if let Some(b) = run.breakdown().filter(|_| a.breakdown) {
                let total: f64 = b.steps.values().map(|v| v.0).sum();
                let parts: Vec<String> = b
                    .steps
                    .iter()
                    .map(|(k, (t, m))| {
                        let g = if *t > 0.0 { *m as f64 / t / 1e9 } else { 0.0 };
                        format!("{k} {:.0}% ({g:.1} GMAC/s)", 100.0 * t / total)
                    })
                    .collect();
                println!(
                    "  {:.1} MFLOPs, batch {bs}: {}",
                    arch.cost(&space).mflops(),
                    parts.join(", ")
                );
            }
        }
        let m = median(rates.iter().map(|r| r[bi]).collect());
        println!(
            "inference, batch {bs:>3}: {m:.0} img/s (median over {} random subnets, {} engine)",
            random.len(),
            if engine { "host" } else { "backend" }
        );
        report.insert(
            format!("batch_{bs}"),
            serde_json::json!({"images_per_s": m}),
        );
    }
    let per_subnet: Vec<serde_json::Value> = subnets
        .iter()
        .zip(&rates)
        .enumerate()
        .map(|(i, (sub, r))| {
            let mut o = serde_json::json!({
                "name": format!("subnet-{i}"),
                "arch": sub.arch.to_json(&space),
                "mflops": sub.arch.cost(&space).mflops(),
            });
            for (bs, rate) in a.batch.iter().zip(r) {
                o[format!("batch_{bs}")] = serde_json::json!({"images_per_s": rate});
            }
            o
        })
        .collect();
    report.insert("subnets".into(), serde_json::Value::Array(per_subnet));
    if a.json {
        print_json(&report)?;
    }
    Ok(())
}
