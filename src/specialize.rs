//! `ofa specialize`: from a trained supernet (ours, or a public one through
//! `ofa import`) and an accuracy predictor (fitted, or the reference's
//! released one) to a deployable subnet per latency budget of *this*
//! machine, in one call and without training: the machine's latency table
//! (profiled once and cached, or brought from the target device), every
//! scenario searched, each choice extracted (BN recalibrated when data is
//! given), timed end to end, exported to ONNX and checked in tract, and a
//! report.

use crate::export;
use crate::nn::{OfaBackend, Supernet, extract, load_supernet};
use crate::search::latency::{LayerTimer, LutValidation, TableCheck, calibrate_and_validate};
use crate::search::report::{MeasuredPoint, write_pareto, write_results};
use crate::search::{
    EvoConfig, LatencyTable, Measurer, Predictor, ProfileConfig, Scenario, SearchResult,
    load_scenarios, search_all, search_each, slug, sweep,
};
use crate::space::Space;
use crate::train::{EvalConfig, EvalResult};
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `ofa specialize` does.
#[derive(Clone, Debug)]
pub struct SpecializeConfig {
    pub supernet: PathBuf,
    pub predictor: PathBuf,
    /// Each constraint is its own scenario (`latency<=15ms`, `flops<=300M`).
    pub constraints: Vec<String>,
    /// More scenarios from a TOML file (`ofa search --scenarios` format).
    pub scenarios: Option<PathBuf>,
    /// A latency table brought from the target device; without it this
    /// machine's table is profiled (or taken from the cache).
    pub lut: Option<PathBuf>,
    /// Where profiled tables are cached (default: [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    pub profile: ProfileConfig,
    /// Sampled subnets timed end to end to report a new table's error.
    pub validate: usize,
    /// Other sampled subnets timed end to end to fit a new table's scale.
    pub calibrate: usize,
    /// Interleaved rounds in which the chosen subnets are timed end to end
    /// (their reported latency is the median).
    pub timing_reps: usize,
    /// What latency is measured in: `ofa` or `onnxruntime` (see
    /// [`export::timer`]); the table, its check and the chosen subnets'
    /// end-to-end times all use it.
    pub runtime: String,
    pub ort_lib: Option<PathBuf>,
    /// Dataset for BN recalibration and top-1 of each choice; without it the
    /// supernet's stored BN statistics are used and no accuracy is measured.
    pub data: Option<String>,
    pub eval: EvalConfig,
    pub evo: EvoConfig,
    pub out: PathBuf,
}

/// How the latency table was obtained.
#[derive(Clone, Debug, Serialize)]
pub struct LutSource {
    pub path: PathBuf,
    /// `brought` (`--lut`), `cached` or `profiled`.
    pub how: String,
    /// What timed it (`ofa` or `onnxruntime`) and its version.
    pub runtime: String,
    pub device: String,
    pub threads: usize,
    pub batch: usize,
    pub entries: usize,
    pub seconds: f64,
    /// How layer times were composed, if calibrated
    /// ([`LatencyTable::calibration_summary`]).
    pub calibration: Option<String>,
    pub validation: Option<LutValidation>,
}

/// One scenario's deliverable.
#[derive(Clone, Debug, Serialize)]
pub struct Specialized {
    pub scenario: String,
    pub arch: serde_json::Value,
    pub mflops: f64,
    pub predicted_top1: f64,
    pub lut_ms: Option<f64>,
    pub measured_ms: f64,
    pub val: Option<EvalResult>,
    pub subnet: PathBuf,
    pub onnx: PathBuf,
    pub onnx_rel_diff: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpecializeSummary {
    pub space: String,
    pub lut: LutSource,
    pub chosen: Vec<Specialized>,
    /// Scenarios that found no subnet, with the reason.
    pub failed: Vec<String>,
    pub search_seconds: f64,
    pub ship_seconds: f64,
    pub total_seconds: f64,
    pub report: PathBuf,
}

/// `$OFA_CACHE_DIR`, else `$XDG_CACHE_HOME/ofa`, else `~/.cache/ofa`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OFA_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("ofa");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/ofa"))
        .unwrap_or_else(|| PathBuf::from(".ofa-cache"))
}

/// A cached table is reused only for the same space, device, thread count
/// and timing settings.
fn cache_path<B: OfaBackend>(
    dir: &Path,
    space: &Space,
    runtime: &str,
    cfg: &ProfileConfig,
    device: &B::Device,
) -> PathBuf {
    let name = format!(
        "{}-{runtime}-{}-t{}-b{}-w{}-r{}-e{}",
        space.name,
        B::device_label(device),
        rayon::current_num_threads(),
        cfg.batch,
        cfg.warmup,
        cfg.reps,
        cfg.evict_kib
    );
    dir.join(format!("{}.lut.json", slug(&name)))
}

fn latency_table<B: OfaBackend>(
    cfg: &SpecializeConfig,
    space: &Space,
    timer: &mut dyn LayerTimer,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<(LatencyTable, LutSource)> {
    let t = Instant::now();
    let source = |lut: &LatencyTable, path: PathBuf, how: &str, t: Instant| LutSource {
        path,
        how: how.into(),
        runtime: format!("{} {}", lut.runtime, lut.runtime_version),
        device: lut.device.clone(),
        threads: lut.threads,
        batch: lut.config.batch,
        entries: lut.entries.len(),
        seconds: t.elapsed().as_secs_f64(),
        calibration: lut.calibration_summary(),
        validation: lut.validation.clone(),
    };
    if let Some(p) = &cfg.lut {
        let lut = LatencyTable::load(p)?;
        if &lut.space != space {
            anyhow::bail!(
                "{}: a latency table of space '{}', the supernet's is '{}'",
                p.display(),
                lut.space.name,
                space.name
            );
        }
        if lut.runtime != cfg.runtime {
            anyhow::bail!(
                "{}: a table timed in {}, but latency is measured in {} here \
                 (pass --runtime {} to use it)",
                p.display(),
                lut.runtime,
                cfg.runtime,
                lut.runtime
            );
        }
        let s = source(&lut, p.clone(), "brought", t);
        return Ok((lut, s));
    }
    let dir = cfg.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let path = cache_path::<B>(&dir, space, &cfg.runtime, &cfg.profile, device);
    if path.exists() {
        // A cache file that does not load (truncated, older format) is
        // profiled again rather than trusted.
        if let Ok(lut) = LatencyTable::load(&path)
            && &lut.space == space
            && lut.runtime == cfg.runtime
        {
            let s = source(&lut, path, "cached", t);
            return Ok((lut, s));
        }
    }
    let mut lut = LatencyTable::profile_with(space, &cfg.profile, timer, progress)?;
    let check = TableCheck {
        calibrate: cfg.calibrate,
        validate: cfg.validate,
        seed: 0,
        at: Vec::new(),
    };
    calibrate_and_validate(&mut lut, space, &check, timer)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    lut.save(&path)?;
    let s = source(&lut, path, "profiled", t);
    Ok((lut, s))
}

fn scenarios(cfg: &SpecializeConfig, lut: &LatencyTable) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for c in &cfg.constraints {
        out.push(Scenario::new(
            c,
            Some(lut.clone()),
            std::slice::from_ref(c),
        )?);
    }
    if let Some(f) = &cfg.scenarios {
        out.extend(load_scenarios(f, Some(lut))?);
    }
    if out.is_empty() {
        anyhow::bail!("nothing to specialize for: give --constraint and/or --scenarios");
    }
    Ok(out)
}

/// Runs the whole specialization. `progress(stage, done, total)` reports
/// the latency table's profiling (stage `profile`).
pub fn specialize<B: OfaBackend>(
    cfg: &SpecializeConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> anyhow::Result<SpecializeSummary> {
    let total = Instant::now();
    let predictor = Predictor::<B>::load(&cfg.predictor, device)?;
    let net: Supernet<B> = load_supernet(&cfg.supernet, Some(&predictor.space), device)
        .with_context(|| {
            format!(
                "{}: the predictor is for space '{}'",
                cfg.predictor.display(),
                predictor.space.name
            )
        })?;
    let space = net.space.clone();
    let mut timer = export::timer::<B>(&cfg.runtime, cfg.ort_lib.as_deref(), device)?;
    let (lut, lut_source) =
        latency_table::<B>(cfg, &space, timer.as_mut(), device, &mut |d, n| {
            progress("profile", d, n)
        })?;
    let scenarios = scenarios(cfg, &lut)?;
    let t = Instant::now();
    let mut results: Vec<SearchResult> = Vec::new();
    let mut failed = Vec::new();
    for (s, r) in scenarios
        .iter()
        .zip(search_all(&predictor, &scenarios, &cfg.evo))
    {
        match r {
            Ok(r) => results.push(r),
            Err(e) => failed.push(format!("{}: {e:#}", s.name)),
        }
    }
    let search_seconds = t.elapsed().as_secs_f64();
    if results.is_empty() {
        anyhow::bail!("every scenario failed:\n  {}", failed.join("\n  "));
    }
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("{}: cannot create", cfg.out.display()))?;
    write_results(&cfg.out.join("search"), &space, &results)?;
    let t = Instant::now();
    let chosen = ship(cfg, &net, &results, timer.as_mut(), device)?;
    let ship_seconds = t.elapsed().as_secs_f64();
    let evo = EvoConfig {
        generations: cfg.evo.generations.min(100),
        ..cfg.evo.clone()
    };
    let measured: Vec<MeasuredPoint> = chosen
        .iter()
        .filter_map(|c| Some((c.scenario.clone(), c.lut_ms?, 100.0 * c.predicted_top1)))
        .collect();
    let mut all = results.clone();
    all.extend(search_each(
        &predictor,
        &sweep(&space, crate::search::Metric::Latency, Some(&lut), 8)?,
        &evo,
    )?);
    let plots = write_pareto(
        &cfg.out,
        &predictor,
        &all,
        crate::search::Metric::Latency,
        Some(&lut),
        &measured,
    )?;
    let report = cfg.out.join("report.md");
    let summary = SpecializeSummary {
        space: space.name.clone(),
        lut: lut_source,
        chosen,
        failed,
        search_seconds,
        ship_seconds,
        total_seconds: total.elapsed().as_secs_f64(),
        report: report.clone(),
    };
    crate::util::write_text_atomic(&report, &report_text(cfg, &summary, &plots))?;
    crate::util::write_text_atomic(
        &cfg.out.join("specialize.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// Extracts every scenario's subnet (recalibrated and measured when data
/// is given), times them together, exports and checks ONNX.
fn ship<B: OfaBackend>(
    cfg: &SpecializeConfig,
    net: &Supernet<B>,
    results: &[SearchResult],
    timer: &mut dyn LayerTimer,
    device: &B::Device,
) -> anyhow::Result<Vec<Specialized>> {
    let val_data = match &cfg.data {
        Some(d) => Some(crate::train::eval_data_of(
            &cfg.supernet,
            &net.space,
            d,
            &cfg.eval,
        )?),
        None => None,
    };
    let mut measurer = val_data
        .as_ref()
        .map(|v| Measurer::new(net, v, None, cfg.eval.clone(), device.clone()));
    let mut subs = Vec::new();
    let mut vals = Vec::new();
    for r in results {
        let arch = &r.best.arch;
        let val = match &mut measurer {
            Some(m) => {
                let v = m.val(arch)?;
                // Measurements are cached: recalibrate for this arch (the
                // same images, so the same statistics) before extracting.
                m.recalibrate(arch)?;
                Some(v)
            }
            None => None,
        };
        subs.push(extract(net, arch));
        vals.push(val);
    }
    // All chosen subnets timed together, in interleaved rounds, in the
    // table's runtime.
    let timing = ProfileConfig {
        reps: cfg.timing_reps.max(1),
        ..cfg.profile.clone()
    };
    let archs: Vec<_> = results.iter().map(|r| r.best.arch.clone()).collect();
    let timings = timer.time_archs(&net.space, &archs, &timing)?;
    // Nothing is timed any more: the subnets are written, exported and
    // checked in tract side by side (tract's optimisation of each graph is
    // single-threaded).
    use rayon::prelude::*;
    let shipped: Vec<anyhow::Result<(PathBuf, f64)>> = results
        .par_iter()
        .zip(subs.par_iter())
        .zip(timings.par_iter().zip(vals.par_iter()))
        .map(|((r, sub), (t, val))| {
            let dir = cfg.out.join("subnets").join(slug(&r.scenario));
            let extra =
                serde_json::json!({"scenario": r.scenario, "validation": val, "latency": t});
            export::ship(sub, &dir, extra, device)
        })
        .collect();
    let mut out = Vec::new();
    for (((r, t), val), shipped) in results.iter().zip(&timings).zip(vals).zip(shipped) {
        let dir = cfg.out.join("subnets").join(slug(&r.scenario));
        let (onnx, diff) = shipped?;
        out.push(Specialized {
            scenario: r.scenario.clone(),
            arch: r.best.arch.to_reference_json(),
            mflops: r.best.mflops,
            predicted_top1: r.best.accuracy,
            lut_ms: r.best.latency_ms,
            measured_ms: t.median_ms,
            val,
            subnet: dir,
            onnx,
            onnx_rel_diff: diff,
        });
    }
    Ok(out)
}

fn report_text(cfg: &SpecializeConfig, s: &SpecializeSummary, plots: &[PathBuf]) -> String {
    let rel = |p: &Path| p.strip_prefix(&cfg.out).unwrap_or(p).display().to_string();
    let mut t = format!(
        "# ofa specialize: {} ({})\n\n",
        s.space,
        cfg.supernet.display()
    );
    let l = &s.lut;
    t.push_str(&format!(
        "Latency table: {} ({}; {} layer configurations timed in {} on {}, {} threads, batch {}, {:.1} s).\n",
        l.path.display(),
        l.how,
        l.entries,
        l.runtime,
        l.device,
        l.threads,
        l.batch,
        l.seconds
    ));
    if let Some(c) = &l.calibration {
        t.push_str(&format!("Calibration: {c}.\n"));
    }
    if let Some(v) = &l.validation {
        t.push_str(&format!(
            "Its error against {} sampled subnets timed end to end: mean |error| {:.1}%, max {:.1}%, \
             Kendall τ {:.3} (measured/predicted {:.2}).\n",
            v.subnets, v.mean_abs_error_pct, v.max_abs_error_pct, v.kendall_tau, v.scale
        ));
    }
    t.push_str(&format!(
        "\nPredictor: {}. BN statistics: {}.\n\n",
        cfg.predictor.display(),
        match &cfg.data {
            Some(d) => format!("recalibrated on {} images of {d}", cfg.eval.calib_images),
            None => "the supernet's stored ones (no --data)".into(),
        }
    ));
    t.push_str(
        "| scenario | MFLOPs | predicted top-1 | measured top-1 | table ms | measured ms | subnet |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for c in &s.chosen {
        t.push_str(&format!(
            "| {} | {:.1} | {:.2}% | {} | {} | {:.2} | {} |\n",
            c.scenario,
            c.mflops,
            100.0 * c.predicted_top1,
            c.val
                .map(|v| format!("{:.2}% ± {:.2}", 100.0 * v.top1, 100.0 * v.stderr()))
                .unwrap_or_else(|| "–".into()),
            c.lut_ms
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "–".into()),
            c.measured_ms,
            rel(&c.subnet)
        ));
    }
    for f in &s.failed {
        t.push_str(&format!("\nNo subnet: {f}\n"));
    }
    t.push_str(&format!(
        "\nSearch {:.1} s, extraction, timing and ONNX {:.1} s, total {:.1} s.\n",
        s.search_seconds, s.ship_seconds, s.total_seconds
    ));
    for p in plots {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "svg" || ext == "png" {
            t.push_str(&format!("\n![{0}]({0})\n", rel(p)));
        } else {
            t.push_str(&format!("\nPareto points: [{0}]({0})\n", rel(p)));
        }
    }
    t
}
