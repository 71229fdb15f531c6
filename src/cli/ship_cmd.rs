//! `ofa extract`, `ofa export`, `ofa finetune`, `ofa import`, `ofa predict`.

use super::print_json;
use super::progress::{TrainProgress, interrupt_flag};
use super::train_cmd::load_data_for;
use crate::export::{self, npy};
use crate::nn::TrainBackend;
use crate::nn::{extract, load_supernet, save_supernet};
use crate::space::{Arch, Space};
use crate::train::eval_data_of as eval_data;
use crate::train::evaluate_subnet;
use crate::train::finetune::{FinetuneConfig, finetune};
use crate::train::{EvalConfig, EvalData, split_indices};
use anyhow::Context;
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExtractArgs {
    #[arg(long)]
    supernet: PathBuf,
    /// `max`, `min`, or an architecture JSON file (either form, or a search
    /// result).
    #[arg(long)]
    arch: String,
    #[arg(long)]
    out: PathBuf,
    /// Dataset for BN recalibration (and --eval).
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Keep the supernet's BN statistics instead of recalibrating.
    #[arg(long)]
    no_calibrate: bool,
    #[arg(long, default_value_t = 2000)]
    calib_images: usize,
    /// Also evaluate the extracted subnet on the validation hold-out.
    #[arg(long)]
    eval: bool,
}

/// Recalibrates BN for `arch` on the supernet's training images.
pub fn extract_cmd<B: TrainBackend>(device: &B::Device, a: ExtractArgs) -> anyhow::Result<()> {
    let net = load_supernet::<B::InnerBackend>(&a.supernet, None, device)?;
    let arch = Arch::parse_arg(&a.arch, &net.space)?;
    let eval_cfg = EvalConfig {
        calib_images: a.calib_images,
        ..EvalConfig::default()
    };
    let data = if !a.no_calibrate || a.eval {
        Some(eval_data(&a.supernet, &net.space, &a.data, &eval_cfg)?)
    } else {
        None
    };
    if let (false, Some(d)) = (a.no_calibrate, &data) {
        crate::train::recalibrate(&net, &arch, d, eval_cfg.calib_batch, device)?;
    }
    let sub = extract(&net, &arch);
    let mut extra = serde_json::json!({
        "supernet": a.supernet.display().to_string(),
        "bn_recalibrated": !a.no_calibrate,
    });
    if let (true, Some(d)) = (a.eval, &data) {
        let r = evaluate_subnet(&sub, d, 200, device)?;
        println!(
            "validation top-1 {:.2}%, top-5 {:.2}% ({} images)",
            100.0 * r.top1,
            100.0 * r.top5,
            r.images
        );
        extra["validation"] = serde_json::to_value(r)?;
    }
    export::save_subnet(&sub, &a.out, extra)?;
    let c = arch.cost(&net.space);
    println!(
        "{}: {arch} ({:.2} MFLOPs, {:.3} M params)",
        a.out.display(),
        c.mflops(),
        c.mparams()
    );
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// Subnet folder written by `ofa extract` or `ofa finetune`.
    #[arg(long)]
    subnet: PathBuf,
    /// Write an ONNX model here.
    #[arg(long)]
    onnx: PathBuf,
    /// Run the ONNX file in tract and compare with our logits.
    #[arg(long)]
    check: bool,
}

pub use crate::export::onnx::check as check_onnx;

pub fn export_cmd<B: TrainBackend>(device: &B::Device, a: ExportArgs) -> anyhow::Result<()> {
    let net = export::load_subnet::<B::InnerBackend>(&a.subnet, device)?;
    export::onnx::export(&net, &a.onnx)?;
    println!(
        "{}: ONNX opset 14, input [batch, {}, {r}, {r}]",
        a.onnx.display(),
        net.space.in_channels,
        r = net.arch.r
    );
    if a.check {
        let rel = check_onnx(&net, &a.onnx, device)?;
        println!("tract runs it: max |Δlogit| / max |logit| = {rel:.2e}");
        if rel > 1e-4 {
            anyhow::bail!(
                "{}: ONNX logits differ from ours by {rel:.2e} (relative)",
                a.onnx.display()
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct FinetuneArgs {
    #[arg(long)]
    subnet: PathBuf,
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    #[arg(long, default_value_t = FinetuneConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Distil from this supernet's full network.
    #[arg(long)]
    kd_from: Option<PathBuf>,
    #[arg(long)]
    no_augment: bool,
    /// Output subnet folder (default: overwrite --subnet).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validation hold-out (must match the supernet's training run).
    #[arg(long, default_value_t = 5000)]
    val_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    quiet: bool,
}

pub fn finetune_cmd<B: TrainBackend>(device: &B::Device, a: FinetuneArgs) -> anyhow::Result<()> {
    let sub = export::load_subnet::<B>(&a.subnet, device)?;
    let mut space: Space = sub.space.clone();
    let ds = load_data_for(&mut space, &a.data)?;
    if space != sub.space {
        anyhow::bail!(
            "{}: subnet and dataset {} disagree on channels or classes",
            a.subnet.display(),
            ds.name
        );
    }
    let teacher = match &a.kd_from {
        Some(p) => {
            let t = load_supernet::<B::InnerBackend>(p, None, device)?;
            if t.space.blocks() != space.blocks() {
                anyhow::bail!("{}: supernet of another space", p.display());
            }
            Some(t)
        }
        None => None,
    };
    let mut tc = crate::train::TrainConfig::new(crate::train::Schedule::Deps, &space, &a.data);
    tc.val_size = a.val_size;
    tc.seed = a.seed;
    let (val, train) = split_indices(&tc, &ds)?;
    let data = EvalData::new(
        ds.clone(),
        &train,
        crate::data::SplitKind::Train,
        val,
        &EvalConfig::default(),
        a.seed,
    );
    let before = evaluate_subnet(
        &burn::module::AutodiffModule::valid(&sub),
        &data,
        200,
        device,
    )?;
    let cfg = FinetuneConfig {
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        augment: !a.no_augment,
        seed: a.seed,
        kd_ratio: if teacher.is_some() { 1.0 } else { 0.0 },
        ..FinetuneConfig::default()
    };
    let mut progress = TrainProgress::new(interrupt_flag(), a.quiet);
    let tuned = finetune::<B>(
        sub,
        teacher.as_ref(),
        ds,
        &train,
        &cfg,
        device,
        &mut progress,
    )?;
    let after = evaluate_subnet(&tuned, &data, 200, device)?;
    let out = a.out.unwrap_or(a.subnet.clone());
    export::save_subnet(
        &tuned,
        &out,
        serde_json::json!({"finetune": {"config": cfg, "before": before, "after": after}}),
    )?;
    println!(
        "fine-tuned {} epochs: validation top-1 {:.2}% → {:.2}%; saved {}",
        a.epochs,
        100.0 * before.top1,
        100.0 * after.top1,
        out.display()
    );
    Ok(())
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_pytorch", "predictor", "specialized"])))]
pub struct ImportArgs {
    /// A public OFA supernet checkpoint (`.pth`, zip or legacy format).
    #[arg(long)]
    from_pytorch: Option<PathBuf>,
    /// The reference's released accuracy predictor instead: the tutorial's
    /// `acc_predictor.pth` or an `ofa/nas/accuracy_predictor` checkpoint.
    /// `--out` is then a predictor file for `ofa search`.
    #[arg(long)]
    predictor: Option<PathBuf>,
    /// One of the reference's released specialized networks instead: a
    /// folder with `net.config`, `run.config` and `init` (as
    /// `ofa_specialized()` downloads them). `--out` is then a subnet folder.
    #[arg(long)]
    specialized: Option<PathBuf>,
    /// With --specialized: the input resolution, instead of run.config's
    /// `image_size`.
    #[arg(long, requires = "specialized")]
    resolution: Option<usize>,
    /// ofa-mbv3-w1.0, ofa-mbv3-w1.2, ofa-proxyless-w1.3 (or a TOML file);
    /// with --specialized, by default the one whose widths fit.
    #[arg(long, required_unless_present = "specialized")]
    space: Option<String>,
    /// Classifier outputs (default: the space's, 1000).
    #[arg(long)]
    classes: Option<usize>,
    #[arg(long)]
    out: PathBuf,
}

pub fn import_cmd<B: TrainBackend>(device: &B::Device, a: ImportArgs) -> anyhow::Result<()> {
    let space = match &a.space {
        Some(s) => {
            let mut space = Space::resolve(s)?;
            if let Some(c) = a.classes {
                space.num_classes = c;
            }
            Some(space)
        }
        None => None,
    };
    if let Some(dir) = &a.specialized {
        let net = export::specialized::import_specialized::<B::InnerBackend>(
            dir,
            space.as_ref(),
            a.resolution,
            device,
        )?;
        let extra = serde_json::json!({"imported_from": dir.display().to_string()});
        crate::nn::save_subnet(&net, &a.out, extra)?;
        let cost = net.arch.cost(&net.space);
        println!(
            "{}: {} of space '{}' ({:.1} MFLOPs, {:.2} M params) written to {}",
            dir.display(),
            net.arch,
            net.space.name,
            cost.mflops(),
            cost.mparams(),
            a.out.display()
        );
        return Ok(());
    }
    let space = space.expect("clap requires --space without --specialized");
    let Some(from) = &a.from_pytorch else {
        let path = a.predictor.as_ref().expect("clap requires one source");
        let p = export::pytorch::import_predictor::<B::InnerBackend>(path, &space, device)?;
        p.save(&a.out)?;
        println!(
            "{}: predictor with {} hidden layers of {}, {:?} encoding ({} inputs), written to {}",
            path.display(),
            p.config.layers,
            p.config.hidden,
            p.encoding.scheme,
            p.encoding.dim(),
            a.out.display()
        );
        return Ok(());
    };
    let (net, report) = export::pytorch::import::<B::InnerBackend>(from, &space, device)?;
    save_supernet(&net, &a.out)?;
    println!(
        "{}: {} tensors mapped ({} values); {} legacy 'mobile_inverted_conv' keys renamed, {} BN counters dropped",
        from.display(),
        report.tensors,
        report.values,
        report.renamed_legacy,
        report.dropped_counters
    );
    println!(
        "supernet of space '{}' written to {}",
        space.name,
        a.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long, conflicts_with = "subnet")]
    supernet: Option<PathBuf>,
    /// With --supernet: the subnet to run (default max).
    #[arg(long, default_value = "max")]
    arch: String,
    /// An extracted subnet folder.
    #[arg(long)]
    subnet: Option<PathBuf>,
    /// float32 NCHW batch (.npy).
    #[arg(long)]
    input: PathBuf,
    /// Logits (.npy).
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn predict_cmd<B: TrainBackend>(device: &B::Device, a: PredictArgs) -> anyhow::Result<()> {
    let x = npy::read(&a.input)?;
    let check = |channels: usize| -> anyhow::Result<[usize; 4]> {
        match x.shape.as_slice() {
            &[n, c, h, w] if c == channels && h == w && n > 0 => Ok([n, c, h, w]),
            s => anyhow::bail!(
                "{}: shape {s:?}, expected [N, {channels}, R, R]",
                a.input.display()
            ),
        }
    };
    let logits = match (&a.supernet, &a.subnet) {
        (Some(p), None) => {
            let net = load_supernet::<B::InnerBackend>(p, None, device)?;
            let arch = Arch::parse_arg(&a.arch, &net.space)?;
            let shape = check(net.space.in_channels)?;
            let t = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(x.data.clone(), shape),
                device,
            );
            net.forward(t, &arch, crate::nn::Mode::Eval)
        }
        (None, Some(d)) => {
            let net = export::load_subnet::<B::InnerBackend>(d, device)?;
            let shape = check(net.space.in_channels)?;
            let t = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(x.data.clone(), shape),
                device,
            );
            net.forward(t)
        }
        _ => anyhow::bail!("give --supernet FILE [--arch ARCH] or --subnet DIR"),
    };
    let dims = logits.dims();
    let data = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .context("logits")?;
    npy::write(
        &a.output,
        &npy::Array {
            shape: dims.to_vec(),
            data,
        },
    )?;
    if a.json {
        return print_json(
            &serde_json::json!({"output": a.output.display().to_string(), "shape": dims}),
        );
    }
    println!("{}: logits {:?}", a.output.display(), dims);
    Ok(())
}
