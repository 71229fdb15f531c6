//! `ofa run`: the whole chain on one dataset with defaults — train (DϵpS,
//! quick preset), accuracy table, predictor, latency table of this CPU,
//! search over latency and FLOPs budgets, extraction with measured accuracy
//! and latency, ONNX export checked in tract, and a Markdown report.
//! Every stage leaves its artifact in the run folder and is skipped when the
//! artifact is already there, so an interrupted run continues.

use super::progress::{TrainProgress, interrupt_flag};
use super::ship_cmd::{calibrate_for, check_onnx};
use super::specialize_cmd::{
    eval_data, run_scenarios, slug, sweep_scenarios, table_meta, validate_lut, write_pareto,
    write_results,
};
use super::train_cmd::load_data_for;
use super::{Cpu, CpuTrain};
use crate::export;
use crate::nn::{extract, load_supernet};
use crate::search::table::{self, Table};
use crate::search::{
    EvoConfig, FitConfig, LatencyTable, Metric, Predictor, ProfileConfig, SearchResult,
};
use crate::space::{Arch, Space};
use crate::train::evaluate_subnet;
use crate::train::{EvalConfig, TrainConfig};
use anyhow::Context;
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    #[arg(long, default_value = "mbv3-28-lite")]
    space: String,
    #[arg(long, default_value = "runs/main")]
    out: PathBuf,
    /// Training epochs (default: the quick preset's).
    #[arg(long)]
    epochs: Option<f64>,
    /// Subnets in the accuracy table (each at every resolution).
    #[arg(long, default_value_t = 80)]
    table_subnets: usize,
    /// Validation images per table row.
    #[arg(long, default_value_t = 1000)]
    table_images: usize,
    /// Calibration images per table row.
    #[arg(long, default_value_t = 500)]
    table_calib: usize,
    /// Search generations per scenario.
    #[arg(long, default_value_t = 500)]
    generations: usize,
    #[arg(long)]
    quiet: bool,
}

#[derive(Serialize)]
struct StageTime {
    stage: String,
    seconds: f64,
    skipped: bool,
}

#[derive(Serialize)]
struct Chosen {
    scenario: String,
    arch: serde_json::Value,
    mflops: f64,
    mparams: f64,
    predicted_top1: f64,
    measured_top1: f64,
    measured_test_top1: f64,
    lut_ms: f64,
    measured_ms: f64,
    onnx: String,
    onnx_rel_diff: f64,
    subnet: String,
}

struct Stages {
    times: Vec<StageTime>,
}

impl Stages {
    fn run<T>(
        &mut self,
        name: &str,
        done: bool,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        if done {
            eprintln!("[{name}] already done, skipped");
            self.times.push(StageTime {
                stage: name.into(),
                seconds: 0.0,
                skipped: true,
            });
            return Ok(None);
        }
        eprintln!("[{name}]");
        let t = Instant::now();
        let r = f().with_context(|| format!("stage '{name}'"))?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("[{name}] {s:.1} s");
        self.times.push(StageTime {
            stage: name.into(),
            seconds: s,
            skipped: false,
        });
        Ok(Some(r))
    }
}

/// Budgets spread over the range of a metric between the smallest and the
/// largest subnet.
fn budgets(lo: f64, hi: f64) -> Vec<f64> {
    [0.3, 0.55, 0.8]
        .iter()
        .map(|f| lo + f * (hi - lo))
        .collect()
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let mut st = Stages { times: vec![] };
    let device = Default::default();
    let train_dir = a.out.join("train");
    let supernet = train_dir.join("supernet.safetensors");

    // 1. Train.
    st.run("train", supernet.exists(), || {
        let mut space = Space::resolve(&a.space)?;
        let ds = load_data_for(&mut space, &a.data)?;
        let base = TrainConfig::new(crate::train::Schedule::Deps, &space, &a.data);
        let mut cfg = super::train_cmd::apply_preset(&base, "quick")?;
        if let Some(e) = a.epochs {
            cfg.epochs = e;
        }
        let resume = train_dir.join("config.toml").exists();
        let mut progress = TrainProgress::new(interrupt_flag(), a.quiet);
        let out = crate::train::train::<CpuTrain>(
            &cfg,
            &space,
            ds,
            &train_dir,
            resume,
            &device,
            &mut progress,
        )?;
        if out.interrupted {
            anyhow::bail!("interrupted; run the same command again to continue");
        }
        Ok(())
    })?;
    let net = load_supernet::<Cpu>(&supernet, None, &device)?;
    let space = net.space.clone();

    // 2. Accuracy table (resumable row by row).
    let table_path = a.out.join("table.sqlite");
    let eval_cfg = EvalConfig {
        calib_images: a.table_calib,
        calib_batch: 250,
        batch: 250,
        max_images: a.table_images,
    };
    let table_done = Table::open(&table_path)
        .and_then(|t| Ok(t.len()? >= a.table_subnets * space.resolutions.len()))
        .unwrap_or(false);
    st.run("accuracy table", table_done, || {
        let data = eval_data(&supernet, &space, &a.data, &eval_cfg)?;
        let meta = table_meta(
            &supernet,
            &space,
            &a.data,
            eval_cfg.clone(),
            1,
            a.table_subnets,
            space.resolutions.clone(),
        )?;
        let mut t = Table::create_or_open(&table_path, meta)?;
        let stop = interrupt_flag();
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "table [{bar:30}] {pos}/{len} ({elapsed} < {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        table::build(
            &net,
            &mut t,
            &data,
            (0, 1),
            &device,
            &mut |d, n, _| {
                pb.set_length(n as u64);
                pb.set_position(d as u64);
            },
            &|| stop.load(std::sync::atomic::Ordering::SeqCst),
        )?;
        pb.finish_and_clear();
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("interrupted; run the same command again to continue");
        }
        t.export_csv(&a.out.join("table.csv"))
    })?;

    // 3. Predictor.
    let pred_path = a.out.join("predictor.safetensors");
    st.run("predictor", pred_path.exists(), || {
        let t = Table::open(&table_path)?;
        let pairs: Vec<(Arch, f64)> = t
            .rows()?
            .into_iter()
            .map(|r| (r.arch, r.result.top1))
            .collect();
        let p = crate::search::fit::<CpuTrain>(
            &space,
            &pairs,
            &FitConfig::default(),
            &device,
            &mut |_, _| {},
        )?;
        eprintln!(
            "predictor: held-out {} rows, RMSE {:.2} points, Kendall τ {:.3}",
            p.report.rows, p.report.rmse_points, p.report.kendall_tau
        );
        p.save(&pred_path)
    })?;
    let predictor = Predictor::<Cpu>::load(&pred_path, &device)?;

    // 4. Latency table of this CPU.
    let lut_path = a.out.join("cpu.lut.json");
    st.run("latency table", lut_path.exists(), || {
        let cfg = ProfileConfig::default();
        let mut lut =
            LatencyTable::profile::<Cpu>(&space, &cfg, "flex (CPU)", &device, &mut |_, _| {});
        let v = validate_lut(&lut, &space, 12, 0)?;
        eprintln!(
            "LUT: {} layers; vs measured on {} subnets: mean |error| {:.1}%, max {:.1}%; \
             measured/predicted {:.2} ± {:.1}%",
            lut.entries.len(),
            v.subnets,
            v.mean_abs_error_pct,
            v.max_abs_error_pct,
            v.scale,
            v.scale_free_error_pct
        );
        lut.validation = Some(v);
        lut.save(&lut_path)
    })?;
    let lut = LatencyTable::load(&lut_path)?;

    // 5. Search: latency and FLOPs budgets.
    let (l_lo, l_hi) = (
        lut.predict(&space, &Arch::min(&space))?,
        lut.predict(&space, &Arch::max(&space))?,
    );
    let (f_lo, f_hi) = (
        Arch::min(&space).cost(&space).mflops(),
        Arch::max(&space).cost(&space).mflops(),
    );
    let mut scenarios = Vec::new();
    for b in budgets(l_lo, l_hi) {
        scenarios.push((
            format!("cpu-latency<={b:.2}ms"),
            Some(lut.clone()),
            vec![format!("latency<={b:.4}ms")],
        ));
    }
    for b in budgets(f_lo, f_hi) {
        scenarios.push((
            format!("flops<={b:.1}M"),
            Some(lut.clone()),
            vec![format!("flops<={b:.4}M")],
        ));
    }
    let search_dir = a.out.join("search");
    let mut results: Vec<SearchResult> = Vec::new();
    st.run("search", false, || {
        let cfg = EvoConfig {
            generations: a.generations,
            ..EvoConfig::default()
        };
        results = run_scenarios(&predictor, &scenarios, &cfg)?;
        write_results(&search_dir, &space, &results)?;
        for r in &results {
            eprintln!(
                "  {:<24} predicted {:.2}% in {:.2} s",
                r.scenario,
                100.0 * r.best.accuracy,
                r.seconds
            );
        }
        Ok(())
    })?;

    // 6–7. Extract, measure, export.
    let mut chosen: Vec<Chosen> = Vec::new();
    st.run("extract, measure, export", false, || {
        let val = eval_data(&supernet, &space, &a.data, &EvalConfig::default())?;
        let test = {
            let mut d = val.clone();
            d.split = crate::data::SplitKind::Test;
            d.eval = (0..d.dataset.test.len()).collect();
            d
        };
        let mut subs = Vec::new();
        for r in &results {
            calibrate_for(&net, &r.best.arch, &val, 200)?;
            subs.push(extract(&net, &r.best.arch));
        }
        // All chosen subnets timed together, in interleaved rounds, so that
        // they are compared under the same conditions.
        let timing_cfg = ProfileConfig {
            reps: 50,
            ..ProfileConfig::default()
        };
        let timings = crate::search::latency::time_subnets(&subs, &timing_cfg, &device);
        for ((r, sub), timing) in results.iter().zip(&subs).zip(&timings) {
            let arch = &r.best.arch;
            let m_val = evaluate_subnet(sub, &val, 250, &device)?;
            let m_test = evaluate_subnet(sub, &test, 250, &device)?;
            let dir = a.out.join("subnets").join(slug(&r.scenario));
            export::save_subnet(
                sub,
                &dir,
                serde_json::json!({"scenario": r.scenario, "validation": m_val, "test": m_test, "latency": timing}),
            )?;
            let onnx = dir.join("model.onnx");
            export::onnx::export(sub, &onnx)?;
            let diff = check_onnx(sub, &onnx, &device)?;
            if diff > 1e-4 {
                anyhow::bail!("{}: tract logits differ by {diff:.2e}", onnx.display());
            }
            chosen.push(Chosen {
                scenario: r.scenario.clone(),
                arch: arch.to_reference_json(),
                mflops: r.best.mflops,
                mparams: r.best.mparams,
                predicted_top1: r.best.accuracy,
                measured_top1: m_val.top1,
                measured_test_top1: m_test.top1,
                lut_ms: r.best.latency_ms.unwrap_or(f64::NAN),
                measured_ms: timing.median_ms,
                onnx: onnx.display().to_string(),
                onnx_rel_diff: diff,
                subnet: dir.display().to_string(),
            });
        }
        Ok(())
    })?;

    // 8. Plots and report.
    let measured_lat: Vec<(String, f64, f64)> = chosen
        .iter()
        .map(|c| (c.scenario.clone(), c.measured_ms, 100.0 * c.measured_top1))
        .collect();
    let measured_flops: Vec<(String, f64, f64)> = chosen
        .iter()
        .map(|c| (c.scenario.clone(), c.mflops, 100.0 * c.measured_top1))
        .collect();
    let evo = EvoConfig {
        generations: a.generations.min(100),
        ..EvoConfig::default()
    };
    let mut all = results.clone();
    for m in [Metric::Latency, Metric::Flops] {
        all.extend(run_scenarios(
            &predictor,
            &sweep_scenarios(&space, m, Some(&lut), 8)?,
            &evo,
        )?);
    }
    let mut plots = write_pareto(
        &search_dir,
        &predictor,
        &all,
        Metric::Latency,
        Some(&lut),
        &measured_lat,
    )?;
    plots.extend(write_pareto(
        &search_dir,
        &predictor,
        &all,
        Metric::Flops,
        Some(&lut),
        &measured_flops,
    )?);
    let report = a.out.join("report.md");
    write_report(
        &report,
        &a,
        &space,
        &predictor,
        &lut,
        &chosen,
        &st.times,
        &plots,
        total.elapsed().as_secs_f64(),
    )?;
    crate::util::write_text_atomic(
        &a.out.join("run.json"),
        &serde_json::to_string_pretty(
            &serde_json::json!({"stages": st.times, "chosen": chosen, "total_seconds": total.elapsed().as_secs_f64()}),
        )?,
    )?;
    eprintln!(
        "done in {:.0} s; report: {}",
        total.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(())
}

fn rel(from: &Path, to: &Path) -> String {
    to.strip_prefix(from).unwrap_or(to).display().to_string()
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    path: &Path,
    a: &RunArgs,
    space: &Space,
    predictor: &Predictor<Cpu>,
    lut: &LatencyTable,
    chosen: &[Chosen],
    times: &[StageTime],
    plots: &[PathBuf],
    seconds: f64,
) -> anyhow::Result<()> {
    let out = &a.out;
    let mut s = String::new();
    s.push_str(&format!("# ofa run: {} on {}\n\n", space.name, a.data));
    if let Some(m) = std::fs::read_to_string(out.join("train/metrics.jsonl"))
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .and_then(|l| serde_json::from_str::<crate::train::EpochMetrics>(&l).ok())
    {
        s.push_str("## Supernet\n\n");
        s.push_str(&format!(
            "Trained with DϵpS for {:.2} epochs ({:.0} s). Validation top-1 after BN recalibration: {}.\n\n",
            m.epoch,
            m.train_seconds,
            m.val
                .iter()
                .map(|(k, v)| format!("{k} {:.2}%", 100.0 * v.top1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push_str("## Predictor and latency table\n\n");
    s.push_str(&format!(
        "Accuracy predictor: {} training rows; on {} held-out rows RMSE {:.2} points, Kendall τ {:.3}.\n\n",
        predictor.train_rows, predictor.report.rows, predictor.report.rmse_points, predictor.report.kendall_tau
    ));
    if let Some(v) = &lut.validation {
        s.push_str(&format!(
            "Latency table of `{}` ({} threads, batch {}): {} layer configurations; against end-to-end timing of {} subnets, mean |error| {:.1}%, max {:.1}%, Kendall τ {:.3}; measured/predicted {:.2} ± {:.1}% (the ratio moves with the shared machine's speed between profile and check; the spread is the error on relative costs, which is what the search compares).\n\n",
            lut.device, lut.threads, lut.config.batch, lut.entries.len(), v.subnets, v.mean_abs_error_pct, v.max_abs_error_pct, v.kendall_tau, v.scale, v.scale_free_error_pct
        ));
    }
    s.push_str("## Scenarios\n\n");
    s.push_str("| scenario | MFLOPs | M params | predicted top-1 | measured val top-1 | test top-1 | LUT ms | measured ms | ONNX Δ |\n|---|---|---|---|---|---|---|---|---|\n");
    for c in chosen {
        s.push_str(&format!(
            "| {} | {:.2} | {:.3} | {:.2}% | {:.2}% | {:.2}% | {:.3} | {:.3} | {:.1e} |\n",
            c.scenario,
            c.mflops,
            c.mparams,
            100.0 * c.predicted_top1,
            100.0 * c.measured_top1,
            100.0 * c.measured_test_top1,
            c.lut_ms,
            c.measured_ms,
            c.onnx_rel_diff
        ));
    }
    s.push_str("\nPlots (grey: 1000 random subnets, predicted; blue: the predicted Pareto front; red triangles: chosen subnets as predicted; green: the same subnets as measured):\n\n");
    for p in plots
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "svg"))
    {
        s.push_str(&format!("![{}]({})\n\n", rel(out, p), rel(out, p)));
    }
    s.push_str("## Artifacts\n\n");
    for (what, p) in [
        ("supernet", "train/supernet.safetensors"),
        ("training metrics", "train/metrics.jsonl"),
        ("accuracy table (SQLite, CSV)", "table.sqlite, table.csv"),
        ("predictor", "predictor.safetensors"),
        ("latency table", "cpu.lut.json"),
        ("search results", "search/"),
        ("subnets (safetensors, arch.json, model.onnx)", "subnets/"),
    ] {
        s.push_str(&format!("- {what}: `{p}`\n"));
    }
    s.push_str("\n## Time per stage\n\n| stage | seconds | share |\n|---|---|---|\n");
    for t in times {
        s.push_str(&format!(
            "| {}{} | {:.1} | {:.0}% |\n",
            t.stage,
            if t.skipped { " (skipped)" } else { "" },
            t.seconds,
            100.0 * t.seconds / seconds.max(1e-9)
        ));
    }
    s.push_str(&format!("| total | {seconds:.1} | 100% |\n"));
    crate::util::write_text_atomic(path, &s)
}
