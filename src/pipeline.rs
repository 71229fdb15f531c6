//! The whole chain on one dataset with defaults (`ofa run`): train (DϵpS,
//! quick preset), accuracy table, predictor, latency table of this CPU,
//! search over latency and FLOPs budgets, re-ranking by measured accuracy,
//! simple baselines measured the same way, extraction, latency and ONNX
//! export checked in tract, and a Markdown report.
//!
//! Every stage leaves its artifact in the run folder and is skipped when
//! the artifact is already there, so an interrupted run continues.

use crate::export;
use crate::nn::{OfaBackend, Supernet, extract, load_supernet};
use crate::search::latency::time_subnets;
use crate::search::measure::{best_baseline, prefer_better_baseline};
use crate::search::report::{MeasuredPoint, write_pareto, write_results};
use crate::search::scenario::budgets_between;
use crate::search::table::{self, Sampling, Table, TableMeta, TableStats};
use crate::search::{
    EvoConfig, FitConfig, LatencyTable, Measurer, Metric, Predictor, ProfileConfig, SearchResult,
    measure_baselines, rerank, search_each, slug, sweep,
};
use crate::space::{Arch, Space};
use crate::train::{
    self, EvalConfig, EvalResult, Schedule, TrainConfig, TrainObserver, apply_preset, eval_data_of,
    load_data_for,
};
use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of a whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: String,
    pub space: String,
    pub out: PathBuf,
    /// Training epochs (default: the quick preset's).
    pub epochs: Option<f64>,
    /// Sampled architectures in the accuracy table (each at every
    /// resolution).
    pub table_subnets: usize,
    /// Validation images per table row (0: the whole hold-out).
    pub table_images: usize,
    /// How the table's architectures are drawn.
    pub table_sampling: Sampling,
    /// BN recalibration and evaluation of every measurement: table rows,
    /// re-ranked candidates, baselines and the returned subnets (the same
    /// calibration images for all, so predicted and measured stand on the
    /// same footing).
    pub measure: EvalConfig,
    /// Search generations per scenario.
    pub generations: usize,
    /// Candidates per scenario re-ranked by measured validation top-1.
    pub rerank: usize,
    /// Shares of the latency and FLOPs ranges (between the smallest and
    /// the largest subnet) the scenarios' budgets sit at.
    pub budget_shares: Vec<f64>,
}

impl RunConfig {
    pub fn new(out: PathBuf) -> Self {
        RunConfig {
            data: "fashion-mnist".into(),
            space: "mbv3-28-lite".into(),
            out,
            epochs: None,
            table_subnets: 45,
            table_images: 0,
            table_sampling: Sampling::Mixed,
            measure: EvalConfig {
                calib_images: 500,
                calib_batch: 250,
                batch: 250,
                max_images: 0,
            },
            generations: 500,
            rerank: 6,
            budget_shares: vec![0.3, 0.55, 0.8],
        }
    }

    fn table_eval(&self) -> EvalConfig {
        EvalConfig {
            max_images: self.table_images,
            ..self.measure.clone()
        }
    }
}

/// Progress of a run; the library never writes to the terminal.
pub trait RunObserver {
    fn stage(&mut self, _name: &str, _skipped: bool) {}
    fn stage_done(&mut self, _name: &str, _seconds: f64) {}
    fn progress(&mut self, _what: &str, _done: usize, _total: usize) {}
    fn note(&mut self, _message: &str) {}
    /// Receives training progress.
    fn trainer(&mut self) -> &mut dyn TrainObserver;
    /// Asked between table rows (training asks its own observer).
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// Time spent in one stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    pub skipped: bool,
}

/// One scenario's returned subnet, predicted and measured, with the best
/// baseline that meets the same budget.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Chosen {
    pub scenario: String,
    /// `measured` (the best re-ranked search candidate) or the baseline
    /// that measured better.
    pub chosen_from: String,
    pub arch: serde_json::Value,
    pub mflops: f64,
    pub mparams: f64,
    pub predicted_top1: f64,
    pub val: EvalResult,
    pub test: EvalResult,
    pub lut_ms: f64,
    pub measured_ms: f64,
    pub onnx: String,
    pub onnx_rel_diff: f64,
    pub subnet: String,
    pub baseline: Option<Baseline>,
}

/// The best simple subnet under a scenario's budget, measured the same way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub mflops: f64,
    pub lut_ms: Option<f64>,
    pub val: EvalResult,
    pub test: Option<EvalResult>,
}

/// What a finished run reports (also written as `run.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub stages: Vec<StageTime>,
    pub chosen: Vec<Chosen>,
    pub table: TableStats,
    pub measurements: usize,
    pub total_seconds: f64,
    pub report: PathBuf,
}

struct Stages<'a> {
    times: Vec<StageTime>,
    obs: &'a mut dyn RunObserver,
}

impl Stages<'_> {
    fn run<T>(
        &mut self,
        name: &str,
        done: bool,
        f: impl FnOnce(&mut dyn RunObserver) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        self.obs.stage(name, done);
        if done {
            self.times.push(StageTime {
                stage: name.into(),
                seconds: 0.0,
                skipped: true,
            });
            return Ok(None);
        }
        let t = Instant::now();
        let r = f(self.obs).with_context(|| format!("stage '{name}'"))?;
        let s = t.elapsed().as_secs_f64();
        self.obs.stage_done(name, s);
        self.times.push(StageTime {
            stage: name.into(),
            seconds: s,
            skipped: false,
        });
        Ok(Some(r))
    }
}

/// Runs (or continues) the whole chain in `cfg.out`; training on `B`,
/// everything else on its inference backend.
pub fn run<B>(
    cfg: &RunConfig,
    device: &B::Device,
    obs: &mut dyn RunObserver,
) -> anyhow::Result<RunSummary>
where
    B: AutodiffBackend + OfaBackend,
    B::InnerBackend: OfaBackend,
{
    let total = Instant::now();
    let out = &cfg.out;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut st = Stages { times: vec![], obs };
    let train_dir = out.join("train");
    let supernet = train_dir.join("supernet.safetensors");

    // 1. Train.
    st.run("train", supernet.exists(), |obs| {
        let mut space = Space::resolve(&cfg.space)?;
        let (ds, _) = load_data_for(&mut space, &cfg.data)?;
        let base = TrainConfig::new(Schedule::Deps, &space, &cfg.data);
        let mut tc = apply_preset(&base, "quick")?;
        if let Some(e) = cfg.epochs {
            tc.epochs = e;
        }
        let resume = train_dir.join("config.toml").exists();
        let o = train::train::<B>(&tc, &space, ds, &train_dir, resume, device, obs.trainer())?;
        if o.interrupted {
            anyhow::bail!("interrupted; run the same command again to continue");
        }
        Ok(())
    })?;
    let net = load_supernet::<B::InnerBackend>(&supernet, None, device)?;
    let space = net.space.clone();

    // 2. Accuracy table (resumable row by row).
    let table_path = out.join("table.sqlite");
    let table_done = Table::open(&table_path)
        .and_then(|t| Ok(t.len()? >= cfg.table_subnets * space.resolutions.len()))
        .unwrap_or(false);
    st.run("accuracy table", table_done, |obs| {
        let eval = cfg.table_eval();
        let data = eval_data_of(&supernet, &space, &cfg.data, &eval)?;
        let meta = TableMeta::for_supernet(
            &supernet,
            &space,
            &cfg.data,
            eval,
            1,
            cfg.table_sampling,
            cfg.table_subnets,
            space.resolutions.clone(),
        )?;
        let mut t = Table::create_or_open(&table_path, meta)?;
        let stopped = std::cell::Cell::new(false);
        let obs_cell = std::cell::RefCell::new(obs);
        table::build(
            &net,
            &mut t,
            &data,
            (0, 1),
            device,
            &mut |d, n, _| obs_cell.borrow_mut().progress("table", d, n),
            &|| {
                let s = obs_cell.borrow_mut().stop_requested();
                stopped.set(s);
                s
            },
        )?;
        if stopped.get() {
            anyhow::bail!("interrupted; run the same command again to continue");
        }
        t.export_csv(&out.join("table.csv"))
    })?;
    let table_stats = table::stats(&Table::open(&table_path)?.rows()?);

    // 3. Predictor.
    let pred_path = out.join("predictor.safetensors");
    st.run("predictor", pred_path.exists(), |obs| {
        let t = Table::open(&table_path)?;
        let pairs: Vec<(Arch, f64)> = t
            .rows()?
            .into_iter()
            .map(|r| (r.arch, r.result.top1))
            .collect();
        let p = crate::search::fit::<B>(
            &space,
            &pairs,
            &FitConfig::default(),
            device,
            &mut |_, _| {},
        )?;
        obs.note(&format!(
            "predictor: held-out {} rows, RMSE {:.2} points, Kendall τ {:.3}",
            p.report.rows, p.report.rmse_points, p.report.kendall_tau
        ));
        p.save(&pred_path)
    })?;
    let predictor = Predictor::<B::InnerBackend>::load(&pred_path, device)?;

    // 4. Latency table of this CPU.
    let lut_path = out.join("cpu.lut.json");
    st.run("latency table", lut_path.exists(), |obs| {
        let pc = ProfileConfig::default();
        let mut lut = LatencyTable::profile::<B::InnerBackend>(&space, &pc, device, &mut |d, n| {
            obs.progress("latency table", d, n)
        });
        // Calibrated on 10 subnets timed end to end and checked on 12
        // others in the same call, as `ofa profile` does: summed layer
        // times alone over-predicted the host engine's whole passes 2×
        // at 28 px (per-layer eviction and start-up that a network pays once).
        let mut timer = crate::search::latency::EngineTimer::<B::InnerBackend> {
            device: device.clone(),
        };
        let check = crate::search::latency::TableCheck {
            calibrate: 10,
            validate: 12,
            seed: 0,
            at: Vec::new(),
        };
        crate::search::latency::calibrate_and_validate(&mut lut, &space, &check, &mut timer)?;
        if let Some(v) = &lut.validation {
            obs.note(&format!(
                "LUT: {} layers, calibrated on {} subnets; vs measured on {} others: mean |error| \
                 {:.1}%, max {:.1}%; measured/predicted {:.2} ± {:.1}%",
                lut.entries.len(),
                lut.calibration_subnets,
                v.subnets,
                v.mean_abs_error_pct,
                v.max_abs_error_pct,
                v.scale,
                v.scale_free_error_pct
            ));
        }
        lut.save(&lut_path)
    })?;
    let lut = LatencyTable::load(&lut_path)?;

    // 5. Search latency and FLOPs budgets.
    let mut scenarios = budgets_between(
        "cpu-latency",
        &space,
        Metric::Latency,
        Some(&lut),
        &cfg.budget_shares,
    )?;
    scenarios.extend(budgets_between(
        "flops",
        &space,
        Metric::Flops,
        Some(&lut),
        &cfg.budget_shares,
    )?);
    let evo = EvoConfig {
        generations: cfg.generations,
        ..EvoConfig::default()
    };
    let mut results: Vec<SearchResult> = st
        .run("search", false, |obs| {
            let r = search_each(&predictor, &scenarios, &evo)?;
            for x in &r {
                obs.note(&format!(
                    "  {:<24} predicted {:.2}% in {:.2} s",
                    x.scenario,
                    100.0 * x.best.accuracy,
                    x.seconds
                ));
            }
            Ok(r)
        })?
        .expect("not skipped");

    // 6. Re-rank by measurement; measure the baselines the same way.
    let val = eval_data_of(&supernet, &space, &cfg.data, &cfg.measure)?;
    let test = val.with_test_split();
    let mut m = Measurer::new(&net, &val, Some(&test), cfg.measure.clone(), device.clone());
    // Table rows were measured on the same images with the same settings
    // (the uniform subnets among them are the baselines).
    let table = Table::open(&table_path)?;
    if table.meta.eval == cfg.measure {
        m.prefill(table.rows()?.into_iter().map(|r| (r.arch, r.result)));
    }
    st.run("re-rank and baselines", false, |obs| {
        let n = results.len();
        for (i, (r, s)) in results.iter_mut().zip(&scenarios).enumerate() {
            rerank(r, cfg.rerank, &mut m)?;
            measure_baselines(r, s, &|a| predictor.predict(a), &mut m)?;
            prefer_better_baseline(r);
            obs.progress("measure", i + 1, n);
        }
        Ok(())
    })?;
    let search_dir = out.join("search");
    write_results(&search_dir, &space, &results)?;

    // 7. Extract, measure test, time, export.
    let chosen = st
        .run("extract, measure, export", false, |_| {
            extract_and_ship(&net, &results, &mut m, out, device)
        })?
        .expect("not skipped");

    // 8. Plots and report.
    let point =
        |c: &Chosen, x: f64| -> MeasuredPoint { (c.scenario.clone(), x, 100.0 * c.val.top1) };
    let measured_lat: Vec<MeasuredPoint> = chosen.iter().map(|c| point(c, c.lut_ms)).collect();
    let measured_flops: Vec<MeasuredPoint> = chosen.iter().map(|c| point(c, c.mflops)).collect();
    let sweep_evo = EvoConfig {
        generations: cfg.generations.min(100),
        ..EvoConfig::default()
    };
    let mut all = results.clone();
    for metric in [Metric::Latency, Metric::Flops] {
        all.extend(search_each(
            &predictor,
            &sweep(&space, metric, Some(&lut), 8)?,
            &sweep_evo,
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
    let report = out.join("report.md");
    let summary = RunSummary {
        stages: st.times,
        chosen,
        table: table_stats,
        measurements: m.evaluations,
        total_seconds: total.elapsed().as_secs_f64(),
        report: report.clone(),
    };
    write_report(&report, cfg, &space, &predictor, &lut, &summary, &plots)?;
    crate::util::write_text_atomic(
        &out.join("run.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// Extracts every scenario's subnet (BN recalibrated), measures it on the
/// test split, times the extracted subnets together, exports and checks
/// ONNX.
fn extract_and_ship<B: OfaBackend>(
    net: &Supernet<B>,
    results: &[SearchResult],
    m: &mut Measurer<'_, B>,
    out: &Path,
    device: &B::Device,
) -> anyhow::Result<Vec<Chosen>> {
    let mut subs = Vec::new();
    let mut measured = Vec::new();
    for r in results {
        let arch = &r.best.arch;
        let val = m.val(arch)?;
        let test = m.test(arch)?.expect("a test split");
        // Measurements are cached: recalibrate for this arch (the same
        // images, so the same statistics) before extracting.
        m.recalibrate(arch)?;
        subs.push(extract(net, arch));
        measured.push((val, test));
    }
    // All chosen subnets timed together, in interleaved rounds, so that
    // they are compared under the same conditions.
    let timing_cfg = ProfileConfig {
        reps: 50,
        ..ProfileConfig::default()
    };
    let timings = time_subnets(&subs, &timing_cfg, device);
    let mut chosen = Vec::new();
    for (((r, sub), timing), (val, test)) in results.iter().zip(&subs).zip(&timings).zip(measured) {
        let dir = out.join("subnets").join(slug(&r.scenario));
        let extra = serde_json::json!({"scenario": r.scenario, "validation": val, "test": test, "latency": timing});
        let (onnx, diff) = export::ship(sub, &dir, extra, device)?;
        let baseline = best_baseline(r).map(|b| Baseline {
            name: b.name.clone(),
            mflops: b.candidate.mflops,
            lut_ms: b.candidate.latency_ms,
            val: b.val,
            test: b.test,
        });
        chosen.push(Chosen {
            scenario: r.scenario.clone(),
            chosen_from: r.chosen_from.clone(),
            arch: r.best.arch.to_reference_json(),
            mflops: r.best.mflops,
            mparams: r.best.mparams,
            predicted_top1: r.best.accuracy,
            val,
            test,
            lut_ms: r.best.latency_ms.unwrap_or(f64::NAN),
            measured_ms: timing.median_ms,
            onnx: onnx.display().to_string(),
            onnx_rel_diff: diff,
            subnet: dir.display().to_string(),
            baseline,
        });
    }
    Ok(chosen)
}

fn rel(from: &Path, to: &Path) -> String {
    to.strip_prefix(from).unwrap_or(to).display().to_string()
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn write_report<B: burn::tensor::backend::Backend>(
    path: &Path,
    cfg: &RunConfig,
    space: &Space,
    predictor: &Predictor<B>,
    lut: &LatencyTable,
    sum: &RunSummary,
    plots: &[PathBuf],
) -> anyhow::Result<()> {
    let out = &cfg.out;
    let mut s = String::new();
    s.push_str(&format!("# ofa run: {} on {}\n\n", space.name, cfg.data));
    if let Some(m) = std::fs::read_to_string(out.join("train/metrics.jsonl"))
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .and_then(|l| serde_json::from_str::<crate::train::EpochMetrics>(&l).ok())
    {
        s.push_str("## Supernet\n\n");
        s.push_str(&format!(
            "Trained with DϵpS for {:.2} epochs ({:.0} s, {:.0} images/s). Validation top-1 after BN recalibration: {}.\n\n",
            m.epoch,
            m.train_seconds,
            m.images_per_s,
            m.val
                .iter()
                .map(|(k, v)| format!("{k} {}", pct(v.top1)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let t = &sum.table;
    s.push_str("## Accuracy table, predictor and latency table\n\n");
    s.push_str(&format!(
        "Accuracy table: {} rows, every row on the same {} validation images after BN recalibration on the same {} training images. Top-1 {}–{} (standard deviation {:.2} points); standard error of a row {:.2} points = {:.2} of the spread (below 0.33: rows rank subnets); of a paired difference between two rows {:.2} points.\n\n",
        t.rows,
        if cfg.table_images == 0 { "hold-out".to_string() } else { cfg.table_images.to_string() },
        cfg.measure.calib_images,
        pct(t.top1_min),
        pct(t.top1_max),
        100.0 * t.top1_sd,
        100.0 * t.row_stderr,
        t.noise_ratio,
        100.0 * t.paired_stderr,
    ));
    s.push_str(&format!(
        "Accuracy predictor: {} training rows; on {} held-out rows RMSE {:.2} points, Kendall τ {:.3}.\n\n",
        predictor.train_rows, predictor.report.rows, predictor.report.rmse_points, predictor.report.kendall_tau
    ));
    if let Some(v) = &lut.validation {
        s.push_str(&format!(
            "Latency table of `{}` ({} threads, batch {}): {} layer configurations{}; against end-to-end timing of {} other subnets, mean |error| {:.1}%, max {:.1}%, Kendall τ {:.3}; measured/predicted {:.2} ± {:.1}%.\n\n",
            lut.device, lut.threads, lut.config.batch, lut.entries.len(),
            lut.calibration_summary().map(|c| format!(", {c}")).unwrap_or_default(),
            v.subnets, v.mean_abs_error_pct, v.max_abs_error_pct, v.kendall_tau, v.scale, v.scale_free_error_pct
        ));
    }
    s.push_str(&format!(
        "## Scenarios\n\nEach scenario's {} best predicted subnets were measured (validation, BN recalibrated) and the best measured one is returned (\"from\": `measured`), unless a baseline measured better (then that baseline is returned and named). Baselines: the smallest subnet and the uniform subnets (one k, e, d, r everywhere) that meet the budget and are not dominated by another that does, measured the same way; the best of them by validation is also measured on the test split.\n\n",
        cfg.rerank
    ));
    s.push_str("| scenario | from | MFLOPs | predicted | val top-1 | test top-1 | best baseline | its val / test | gain (test) | LUT ms | measured ms | ONNX Δ |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &sum.chosen {
        let (bname, bacc, gain) = match &c.baseline {
            Some(b) => (
                b.name.clone(),
                format!(
                    "{} / {}",
                    pct(b.val.top1),
                    b.test.map(|t| pct(t.top1)).unwrap_or_default()
                ),
                b.test
                    .map(|t| format!("{:+.2}", 100.0 * (c.test.top1 - t.top1)))
                    .unwrap_or_default(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        s.push_str(&format!(
            "| {} | {} | {:.2} | {} | {} ± {:.2} | {} | {} | {} | {} | {:.3} | {:.3} | {:.1e} |\n",
            c.scenario,
            c.chosen_from,
            c.mflops,
            pct(c.predicted_top1),
            pct(c.val.top1),
            100.0 * c.val.stderr(),
            pct(c.test.top1),
            bname,
            bacc,
            gain,
            c.lut_ms,
            c.measured_ms,
            c.onnx_rel_diff
        ));
    }
    s.push_str("\nPlots (grey: 1000 random subnets, predicted; blue: the predicted Pareto front; red triangles: returned subnets as predicted; green: the same as measured on validation; orange crosses: baselines as measured):\n\n");
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
        (
            "search results (re-ranked candidates, baselines)",
            "search/",
        ),
        ("subnets (safetensors, arch.json, model.onnx)", "subnets/"),
    ] {
        s.push_str(&format!("- {what}: `{p}`\n"));
    }
    s.push_str(&format!(
        "\n## Time per stage\n\n{} subnets measured for re-ranking, baselines and the returned subnets.\n\n| stage | seconds | share |\n|---|---|---|\n",
        sum.measurements
    ));
    for t in &sum.stages {
        s.push_str(&format!(
            "| {}{} | {:.1} | {:.0}% |\n",
            t.stage,
            if t.skipped { " (skipped)" } else { "" },
            t.seconds,
            100.0 * t.seconds / sum.total_seconds.max(1e-9)
        ));
    }
    s.push_str(&format!("| total | {:.1} | 100% |\n", sum.total_seconds));
    crate::util::write_text_atomic(path, &s)
}
