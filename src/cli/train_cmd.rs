//! `ofa train` and `ofa eval`.

use super::print_json;
use super::progress::{TrainProgress, interrupt_flag};
use crate::data::{Dataset, SplitKind};
use crate::nn::TrainBackend;
use crate::nn::load_supernet;
use crate::space::{Arch, Space};
use crate::train::{self, EvalData, Schedule, TrainConfig, Trainer, reference_epochs};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct TrainArgs {
    /// Search space: preset name or TOML file.
    #[arg(long, default_value = "mbv3-28-lite")]
    space: String,
    /// Dataset (see `ofa data check --help`).
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// ps, deps, sandwich or independent (default: deps, or the preset's).
    #[arg(long)]
    schedule: Option<Schedule>,
    /// Architecture of an `independent` run (JSON, either form; or max/min).
    #[arg(long)]
    arch: Option<String>,
    /// Total epochs over all phases.
    #[arg(long, conflicts_with = "budget")]
    epochs: Option<f64>,
    /// Fraction of the reference (ImageNet) epochs: ps 590, deps 270,
    /// sandwich 400, independent 180.
    #[arg(long)]
    budget: Option<f64>,
    /// Named training preset: `quick` (the README's main job) or `reference`.
    #[arg(long)]
    preset: Option<String>,
    /// TOML file with any subset of the training configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory (config, checkpoints, metrics, final supernet).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Cap on training images after the validation hold-out.
    #[arg(long)]
    max_train_images: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// Validation images held out of the training set.
    #[arg(long)]
    val_size: Option<usize>,
    /// No progress bars (one line per epoch).
    #[arg(long)]
    quiet: bool,
}

/// Loads the dataset and fits the space's input channels and classes to
/// it, saying so.
pub fn load_data_for(space: &mut Space, data: &str) -> anyhow::Result<Arc<Dataset>> {
    let name = space.name.clone();
    let (ds, adapted) = train::load_data_for(space, data)?;
    if adapted {
        eprintln!(
            "space '{name}' adapted to {}: {} input channel(s), {} classes",
            ds.name,
            ds.channels,
            ds.classes.len()
        );
    }
    Ok(ds)
}

pub use crate::train::{apply_preset, apply_toml};

fn resolve_config(a: &TrainArgs, space: &Space) -> anyhow::Result<TrainConfig> {
    let mut cfg = TrainConfig::new(a.schedule.unwrap_or(Schedule::Deps), space, &a.data);
    if let Some(p) = &a.preset {
        cfg = apply_preset(&cfg, p)?;
    }
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        cfg = apply_toml(&cfg, &text, &path.display().to_string())?;
    }
    // Explicit flags win over presets and files.
    if let Some(s) = a.schedule {
        cfg.schedule = s;
    }
    cfg.data = a.data.clone();
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.budget {
        cfg.epochs = b * reference_epochs(cfg.schedule, &cfg.ps);
    }
    if let Some(v) = a.max_train_images {
        cfg.max_train_images = v;
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    if let Some(v) = a.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = a.lr {
        cfg.lr = v;
    }
    if let Some(v) = a.val_size {
        cfg.val_size = v;
    }
    if let Some(arch) = &a.arch {
        cfg.arch = Some(Arch::parse_arg(arch, space)?.to_reference_json());
    }
    Ok(cfg)
}

pub fn train<B: TrainBackend>(
    device: &B::Device,
    a: TrainArgs,
    comm: &crate::nn::Comm,
) -> anyhow::Result<()> {
    let (cfg, space, ds) = if !comm.is_root() {
        // Rank 0's settings (it alone may see the run folder); the data
        // from this rank's own copy.
        let (cfg, space) = receive_settings(comm)?;
        let mut space = space;
        let ds = load_data_for(&mut space, &cfg.data)?;
        (cfg, space, ds)
    } else if a.resume && a.out.join("config.toml").exists() {
        let read = |name: &str| {
            let p = a.out.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
        };
        let cfg: TrainConfig =
            toml::from_str(&read("config.toml")?).context("config.toml of the run")?;
        let mut space = Space::from_toml(&read("space.toml")?).context("space.toml of the run")?;
        let ds = load_data_for(&mut space, &cfg.data)?;
        (cfg, space, ds)
    } else {
        let mut space = Space::resolve(&a.space)?;
        let ds = load_data_for(&mut space, &a.data)?;
        (resolve_config(&a, &space)?, space, ds)
    };
    if comm.is_root() && comm.size() > 1 {
        send_settings(&cfg, &space, comm)?;
    }
    let mut progress: Box<dyn train::TrainObserver> = if comm.is_root() {
        let ranks = match comm.size() {
            1 => String::new(),
            n => format!(" on {n} processes (batch {} each)", cfg.batch_size / n),
        };
        eprintln!(
            "training {} on {} with schedule {} for {} epochs into {}{ranks}",
            space.name,
            ds.name,
            cfg.schedule,
            cfg.epochs,
            a.out.display()
        );
        Box::new(TrainProgress::new(interrupt_flag(), a.quiet))
    } else {
        // Silent, but its interrupt flag still stops every rank.
        Box::new(StopOnly(interrupt_flag()))
    };
    let out = Trainer::<B>::open(
        &cfg,
        &space,
        ds,
        &a.out,
        a.resume,
        device,
        comm.clone(),
        progress.as_mut(),
    )?
    .run(progress.as_mut())?;
    if !comm.is_root() {
        return Ok(());
    }
    if out.interrupted {
        eprintln!(
            "interrupted after step {}; resume with: ofa train --out {} --resume",
            out.steps,
            a.out.display()
        );
        return Ok(());
    }
    eprintln!(
        "done: {} steps, {:.0} s training, {} images; network: {}",
        out.steps,
        out.train_seconds,
        out.images,
        out.output.display()
    );
    if let Some(s) = comm.stats() {
        eprintln!(
            "collective calls: {:.1} s ({:.0}% of training): gradients {:.2} MB per step, batch-norm statistics {} calls per step",
            s.seconds,
            100.0 * s.seconds / out.train_seconds.max(1e-9),
            s.gradient_bytes as f64 / out.steps.max(1) as f64 / 1e6,
            s.bn_calls / out.steps.max(1)
        );
        eprintln!("collective: {}", serde_json::to_string(&s)?);
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// Supernet file (safetensors written by `ofa train` or `ofa import`).
    #[arg(long, required_unless_present = "subnet", conflicts_with = "subnet")]
    supernet: Option<PathBuf>,
    /// A subnet folder instead (`ofa extract`, or an independent run's
    /// `subnet/`): evaluated with its stored BN statistics.
    #[arg(long)]
    subnet: Option<PathBuf>,
    /// `max`, `min`, or an architecture JSON file.
    #[arg(long, default_value = "max")]
    arch: String,
    /// Override the architecture's resolution.
    #[arg(long)]
    resolution: Option<usize>,
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// `val` (the hold-out of the training set) or `test`.
    #[arg(long, default_value = "val")]
    split: String,
    /// Hold-out size and seed (default: from the run's config.toml beside
    /// the supernet, else 5000 and 0).
    #[arg(long)]
    val_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    eval: EvalFlags,
    #[arg(long)]
    json: bool,
}

/// BN recalibration and evaluation settings shared by `eval` and `table`.
#[derive(Args)]
pub struct EvalFlags {
    /// Training images BN statistics are recalibrated on.
    #[arg(long, default_value_t = 2000)]
    calib_images: usize,
    #[arg(long, default_value_t = 200)]
    calib_batch: usize,
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Cap on evaluated validation images (0 = the whole split).
    #[arg(long, default_value_t = 0)]
    max_images: usize,
}

impl EvalFlags {
    pub fn config(&self) -> train::EvalConfig {
        train::EvalConfig {
            calib_images: self.calib_images,
            calib_batch: self.calib_batch,
            batch: self.batch,
            max_images: self.max_images,
        }
    }
}

pub use crate::train::run_config_near;

pub fn eval<B: TrainBackend>(device: &B::Device, a: EvalArgs) -> anyhow::Result<()> {
    let (net, sub, file) = match (&a.supernet, &a.subnet) {
        (Some(p), _) => (
            Some(load_supernet::<B::InnerBackend>(p, None, device)?),
            None,
            p.clone(),
        ),
        (None, Some(d)) => (
            None,
            Some(crate::nn::load_subnet::<B::InnerBackend>(d, device)?),
            d.join("subnet.safetensors"),
        ),
        (None, None) => anyhow::bail!("give --supernet or --subnet"),
    };
    let space = match (&net, &sub) {
        (Some(n), _) => n.space.clone(),
        (_, Some(s)) => s.space.clone(),
        _ => unreachable!("one of them is loaded"),
    };
    let mut data_space = space.clone();
    let ds = load_data_for(&mut data_space, &a.data)?;
    if data_space != space {
        anyhow::bail!(
            "{}: the network expects {} channel(s) and {} classes, dataset {} has {} and {}",
            file.display(),
            space.in_channels,
            space.num_classes,
            ds.name,
            ds.channels,
            ds.classes.len()
        );
    }
    let mut arch = match &sub {
        Some(s) => s.arch.clone(),
        None => Arch::parse_arg(&a.arch, &space)?,
    };
    if let Some(r) = a.resolution {
        arch.r = r;
        arch.validate(&space)?;
    }
    // A subnet folder sits in its run folder (`run/subnet/`), a supernet
    // file beside its run's config.
    let run_cfg = match &a.subnet {
        Some(d) => run_config_near(d),
        None => run_config_near(&file),
    };
    let mut cfg = run_cfg
        .clone()
        .unwrap_or_else(|| TrainConfig::new(Schedule::Deps, &space, &a.data));
    if let Some(v) = a.val_size {
        cfg.val_size = v;
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    let eval_cfg = a.eval.config();
    let (val, train_idx) = train::split_indices(&cfg, &ds)?;
    let (split, eval_idx) = match a.split.as_str() {
        "val" => (SplitKind::Train, val),
        "test" => (SplitKind::Test, (0..ds.test.len()).collect()),
        other => anyhow::bail!("unknown split '{other}' (val, test)"),
    };
    let data = EvalData::new(ds.clone(), &train_idx, split, eval_idx, &eval_cfg, cfg.seed);
    let pb = super::progress::bar(
        data.eval.len() as u64,
        "eval [{bar:30}] {pos}/{len} ({elapsed} < {eta})",
    );
    let t = std::time::Instant::now();
    let r = match (&net, &sub) {
        (Some(n), _) => train::evaluate(n, &arch, &data, &eval_cfg, device, &mut |d, _| {
            pb.set_position(d as u64)
        })?,
        (_, Some(s)) => train::evaluate_subnet(s, &data, eval_cfg.batch, device)?,
        _ => unreachable!("one of them is loaded"),
    };
    pb.finish_and_clear();
    let cost = arch.cost(&space);
    if a.json {
        return print_json(&serde_json::json!({
            "arch": arch.to_reference_json(), "split": a.split, "top1": r.top1, "top5": r.top5,
            "loss": r.loss, "images": r.images, "mflops": cost.mflops(), "mparams": cost.mparams(),
            "seconds": t.elapsed().as_secs_f64(),
        }));
    }
    println!("{arch}");
    println!(
        "{} split, {} images: top-1 {:.2}%, top-5 {:.2}%, loss {:.4} ({:.2} MFLOPs, {:.3} M params, {:.1} s)",
        a.split,
        r.images,
        100.0 * r.top1,
        100.0 * r.top5,
        r.loss,
        cost.mflops(),
        cost.mparams(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Rank 0's run settings (config and space, after the dataset filled in
/// the space) to the other ranks.
fn send_settings(cfg: &TrainConfig, space: &Space, comm: &crate::nn::Comm) -> anyhow::Result<()> {
    let mut buf = serde_json::to_vec(&(toml::to_string(cfg)?, space.to_toml()))?;
    comm.broadcast_bytes(&mut buf, 0);
    Ok(())
}

fn receive_settings(comm: &crate::nn::Comm) -> anyhow::Result<(TrainConfig, Space)> {
    let mut buf = Vec::new();
    comm.broadcast_bytes(&mut buf, 0);
    let (cfg, space): (String, String) = serde_json::from_slice(&buf)?;
    Ok((
        toml::from_str(&cfg).context("rank 0's training config")?,
        Space::from_toml(&space).context("rank 0's space")?,
    ))
}

/// The observer of ranks other than 0: prints nothing, reports a stop
/// request (Ctrl-C, SIGTERM) so that it reaches every rank.
struct StopOnly(Arc<std::sync::atomic::AtomicBool>);

impl train::TrainObserver for StopOnly {
    fn stop_requested(&mut self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
