//! `ofa table`, `ofa predictor`, `ofa profile`, `ofa latency`, `ofa search`.

use super::train_cmd::{EvalFlags, load_data_for, run_config_near};
use super::{Cpu, CpuTrain, print_json};
use crate::data::SplitKind;
use crate::nn::{SupernetConfig, extract, load_supernet};
use crate::search::evolution::{ScenarioFile, parse_constraints, random_population};
use crate::search::plot::{Series, SeriesStyle, scatter};
use crate::search::table::{self, Table, TableMeta, file_digest};
use crate::search::{
    Candidate, Efficiency, EvoConfig, FitConfig, LatencyTable, LutValidation, Metric, Predictor,
    ProfileConfig, SearchResult, evolve, pareto_front,
};
use crate::space::{Arch, Space};
use crate::train::{self, EvalConfig, EvalData, Schedule, TrainConfig};
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Names of the extra budgets `--pareto` sweeps (not the user's scenarios).
const SWEEP_PREFIX: &str = "sweep-";

fn bar(len: usize, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TableCommand {
    #[command(subcommand)]
    sub: Option<TableSub>,
    #[command(flatten)]
    build: TableArgs,
}

#[derive(Subcommand)]
enum TableSub {
    /// Join shards built with --shard into one table.
    Merge {
        #[arg(long)]
        out: PathBuf,
        inputs: Vec<PathBuf>,
    },
    /// Write a table as CSV.
    Export {
        #[arg(long)]
        table: PathBuf,
        #[arg(long)]
        csv: PathBuf,
    },
    /// Summarise a table.
    Show {
        #[arg(long)]
        table: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct TableArgs {
    #[arg(long)]
    supernet: Option<PathBuf>,
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Sampled architectures.
    #[arg(long, default_value_t = 100)]
    subnets: usize,
    /// Resolutions to evaluate each architecture at (comma-separated;
    /// default: all of the space's).
    #[arg(long, value_delimiter = ',')]
    resolutions: Vec<usize>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Build only part `i/N` of the table (i from 0).
    #[arg(long)]
    shard: Option<String>,
    /// Seed of the architecture sampler.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    eval: EvalFlags,
    /// Also write the table as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

fn parse_shard(s: &Option<String>) -> anyhow::Result<(usize, usize)> {
    match s {
        None => Ok((0, 1)),
        Some(s) => {
            let (i, n) = s.split_once('/').context("--shard must be i/N, e.g. 0/4")?;
            let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
            if n == 0 || i >= n {
                anyhow::bail!("--shard {s}: need 0 <= i < N");
            }
            Ok((i, n))
        }
    }
}

/// The supernet's run configuration (hold-out), or defaults.
fn run_config(supernet: &Path, space: &Space, data: &str) -> TrainConfig {
    run_config_near(supernet).unwrap_or_else(|| TrainConfig::new(Schedule::Deps, space, data))
}

/// What a table of `supernet` is built from: its file digest, and the
/// validation hold-out of its training run.
pub fn table_meta(
    supernet: &Path,
    space: &Space,
    data: &str,
    eval: EvalConfig,
    arch_seed: u64,
    subnets: usize,
    resolutions: Vec<usize>,
) -> anyhow::Result<TableMeta> {
    let cfg = run_config(supernet, space, data);
    Ok(TableMeta {
        space: space.clone(),
        supernet_digest: file_digest(supernet)?,
        supernet: supernet.display().to_string(),
        data: data.to_string(),
        val_size: cfg.val_size,
        split_seed: cfg.seed,
        eval,
        arch_seed,
        subnets,
        resolutions,
    })
}

/// Validation data of a supernet: the hold-out of its training run.
pub fn eval_data(
    supernet: &Path,
    space: &Space,
    data: &str,
    eval: &EvalConfig,
) -> anyhow::Result<EvalData> {
    let mut ds_space = space.clone();
    let ds = load_data_for(&mut ds_space, data)?;
    if &ds_space != space {
        anyhow::bail!(
            "{}: the supernet expects {} channel(s) and {} classes; {} has {} and {}",
            supernet.display(),
            space.in_channels,
            space.num_classes,
            ds.name,
            ds.channels,
            ds.classes.len()
        );
    }
    let cfg = run_config(supernet, space, data);
    let (val, train_idx) = train::split_indices(&cfg, &ds)?;
    Ok(EvalData::new(
        ds,
        &train_idx,
        SplitKind::Train,
        val,
        eval,
        cfg.seed,
    ))
}

pub fn table(c: TableCommand) -> anyhow::Result<()> {
    match c.sub {
        Some(TableSub::Merge { out, inputs }) => {
            let refs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
            let n = table::merge(&out, &refs)?;
            println!(
                "merged {} input(s): {n} rows into {}",
                inputs.len(),
                out.display()
            );
            Ok(())
        }
        Some(TableSub::Export { table, csv }) => {
            Table::open(&table)?.export_csv(&csv)?;
            println!("{}", csv.display());
            Ok(())
        }
        Some(TableSub::Show { table, json }) => show_table(&table, json),
        None => build_table(c.build),
    }
}

fn show_table(path: &Path, json: bool) -> anyhow::Result<()> {
    let t = Table::open(path)?;
    let rows = t.rows()?;
    let top1: Vec<f64> = rows.iter().map(|r| r.result.top1).collect();
    let mean = top1.iter().sum::<f64>() / top1.len().max(1) as f64;
    let (lo, hi) = top1
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if json {
        return print_json(&serde_json::json!({
            "rows": rows.len(), "subnets": t.meta.subnets, "resolutions": t.meta.resolutions,
            "space": t.meta.space.name, "top1_mean": mean, "top1_min": lo, "top1_max": hi,
        }));
    }
    println!(
        "{}: {} rows ({} subnets × {:?}) of space {}; top-1 mean {:.2}%, range {:.2}–{:.2}%",
        path.display(),
        rows.len(),
        t.meta.subnets,
        t.meta.resolutions,
        t.meta.space.name,
        100.0 * mean,
        100.0 * lo,
        100.0 * hi
    );
    Ok(())
}

fn build_table(a: TableArgs) -> anyhow::Result<()> {
    let supernet = a.supernet.context("--supernet is required")?;
    let out = a.out.context("--out is required")?;
    let shard = parse_shard(&a.shard)?;
    let device = Default::default();
    let net = load_supernet::<Cpu>(&supernet, None, &device)?;
    let space = net.space.clone();
    let resolutions = if a.resolutions.is_empty() {
        space.resolutions.clone()
    } else {
        a.resolutions.clone()
    };
    for r in &resolutions {
        if !space.resolutions.contains(r) {
            anyhow::bail!(
                "--resolutions: {r} is not in the space's {:?}",
                space.resolutions
            );
        }
    }
    let eval = a.eval.config();
    let data = eval_data(&supernet, &space, &a.data, &eval)?;
    let meta = table_meta(
        &supernet,
        &space,
        &a.data,
        eval,
        a.seed,
        a.subnets,
        resolutions,
    )?;
    let mut t = Table::create_or_open(&out, meta)?;
    let stop = super::progress::interrupt_flag();
    let pb = bar(0, "table [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})");
    let added = table::build(
        &net,
        &mut t,
        &data,
        shard,
        &device,
        &mut |done, total, row| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            if let Some(r) = row {
                pb.set_message(format!(
                    "last: r{} top-1 {:.2}%",
                    r.arch.r,
                    100.0 * r.result.top1
                ));
            }
        },
        &|| stop.load(std::sync::atomic::Ordering::SeqCst),
    )?;
    pb.finish_and_clear();
    println!("{}: {} new rows, {} in all", out.display(), added, t.len()?);
    if let Some(csv) = a.csv {
        t.export_csv(&csv)?;
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum PredictorCommand {
    /// Fit the accuracy predictor on a table; report RMSE and Kendall τ on
    /// held-out architectures.
    Fit {
        #[arg(long)]
        table: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = FitConfig::default().epochs)]
        epochs: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a predictor on (another) table.
    Eval {
        #[arg(long)]
        predictor: PathBuf,
        #[arg(long)]
        table: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn table_pairs(path: &Path) -> anyhow::Result<(Space, Vec<(Arch, f64)>)> {
    let t = Table::open(path)?;
    let rows = t.rows()?;
    Ok((
        t.meta.space.clone(),
        rows.into_iter().map(|r| (r.arch, r.result.top1)).collect(),
    ))
}

pub fn predictor(c: PredictorCommand) -> anyhow::Result<()> {
    let device = Default::default();
    match c {
        PredictorCommand::Fit {
            table,
            out,
            epochs,
            seed,
            json,
        } => {
            let (space, pairs) = table_pairs(&table)?;
            let cfg = FitConfig {
                epochs,
                seed,
                ..FitConfig::default()
            };
            let pb = bar(epochs, "fit [{bar:30}] {pos}/{len} {msg}");
            let t = std::time::Instant::now();
            let p = crate::search::fit::<CpuTrain>(&space, &pairs, &cfg, &device, &mut |e, l| {
                pb.set_position(e as u64);
                pb.set_message(format!("mse {l:.2e}"));
            })?;
            pb.finish_and_clear();
            p.save(&out)?;
            if json {
                return print_json(
                    &serde_json::json!({"report": p.report, "train_rows": p.train_rows, "seconds": t.elapsed().as_secs_f64()}),
                );
            }
            println!(
                "predictor {}: {} training rows; held-out {} rows: RMSE {:.3} points, Kendall τ {:.3} ({:.1} s)",
                out.display(),
                p.train_rows,
                p.report.rows,
                p.report.rmse_points,
                p.report.kendall_tau,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        PredictorCommand::Eval {
            predictor,
            table,
            json,
        } => {
            let p = Predictor::<Cpu>::load(&predictor, &device)?;
            let (space, pairs) = table_pairs(&table)?;
            if space.blocks() != p.space.blocks() || space.resolutions != p.space.resolutions {
                anyhow::bail!(
                    "{}: the table's space '{}' is not the predictor's '{}'",
                    table.display(),
                    space.name,
                    p.space.name
                );
            }
            let r = p.evaluate(&pairs);
            if json {
                return print_json(&r);
            }
            println!(
                "{} rows: RMSE {:.3} points, Kendall τ {:.3}",
                r.rows, r.rmse_points, r.kendall_tau
            );
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct ProfileArgs {
    /// Space to profile (preset or TOML), or take it from --supernet.
    #[arg(long, default_value = "mbv3-28-lite")]
    space: String,
    #[arg(long)]
    supernet: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = ProfileConfig::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = ProfileConfig::default().warmup)]
    warmup: usize,
    #[arg(long, default_value_t = ProfileConfig::default().reps)]
    reps: usize,
    /// KiB written by each thread before every timed layer run, so that the
    /// layer's weights come from where they would inside a network (0: warm
    /// caches; default: 8192 up to batch 4, else 0).
    #[arg(long)]
    evict_kib: Option<usize>,
    /// Sampled subnets timed end to end to report the table's error.
    #[arg(long, default_value_t = 20)]
    validate: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn space_of(space: &str, supernet: &Option<PathBuf>) -> anyhow::Result<Space> {
    match supernet {
        Some(p) => Ok(load_supernet::<Cpu>(p, None, &Default::default())?.space),
        None => Space::resolve(space),
    }
}

/// Times sampled subnets end to end and compares with the table.
pub fn validate_lut(
    lut: &LatencyTable,
    space: &Space,
    n: usize,
    seed: u64,
) -> anyhow::Result<LutValidation> {
    let device = Default::default();
    let net = SupernetConfig::new(space.clone()).init::<Cpu>(&device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut archs = vec![Arch::max(space), Arch::min(space)];
    while archs.len() < n {
        archs.push(Arch::sample(space, &mut rng));
    }
    archs.truncate(n);
    let subnets: Vec<_> = archs.iter().map(|a| extract(&net, a)).collect();
    // End-to-end runs get more repetitions than single layers: they are the
    // yardstick, and a few of them cost little.
    let cfg = ProfileConfig {
        reps: lut.config.reps.max(50),
        ..lut.config.clone()
    };
    let timings = crate::search::latency::time_subnets(&subnets, &cfg, &device);
    let mut samples = Vec::new();
    for (a, t) in archs.iter().zip(&timings) {
        samples.push((a.to_reference_json(), lut.predict(space, a)?, t.median_ms));
    }
    let errs: Vec<f64> = samples
        .iter()
        .map(|(_, p, m)| 100.0 * (p - m).abs() / m)
        .collect();
    let preds: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let meas: Vec<f64> = samples.iter().map(|s| s.2).collect();
    let ratios: Vec<f64> = samples.iter().map(|(_, p, m)| m / p).collect();
    let n = ratios.len().max(1) as f64;
    let scale = ratios.iter().sum::<f64>() / n;
    let sd = (ratios.iter().map(|r| (r - scale).powi(2)).sum::<f64>() / n).sqrt();
    Ok(LutValidation {
        scale,
        scale_free_error_pct: 100.0 * sd / scale,
        subnets: samples.len(),
        mean_abs_error_pct: errs.iter().sum::<f64>() / errs.len().max(1) as f64,
        max_abs_error_pct: errs.iter().cloned().fold(0.0, f64::max),
        kendall_tau: crate::search::predictor::kendall_tau(&preds, &meas),
        samples,
    })
}

pub fn profile(a: ProfileArgs) -> anyhow::Result<()> {
    let space = space_of(&a.space, &a.supernet)?;
    let cfg = ProfileConfig {
        batch: a.batch,
        warmup: a.warmup,
        reps: a.reps,
        evict_kib: a
            .evict_kib
            .unwrap_or_else(|| ProfileConfig::default_evict_kib(a.batch)),
    };
    let device = Default::default();
    let pb = bar(
        0,
        "profile [{bar:30}] {pos}/{len} layers ({elapsed} < {eta})",
    );
    let t = std::time::Instant::now();
    let mut lut = LatencyTable::profile::<Cpu>(&space, &cfg, "flex (CPU)", &device, &mut |d, n| {
        pb.set_length(n as u64);
        pb.set_position(d as u64);
    });
    pb.finish_and_clear();
    let layers_s = t.elapsed().as_secs_f64();
    if a.validate > 0 {
        let v = validate_lut(&lut, &space, a.validate, a.seed)?;
        println!(
            "LUT vs measured on {} subnets: mean |error| {:.1}%, max {:.1}%, Kendall τ {:.3}; \
             measured/predicted {:.2} ± {:.1}%",
            v.subnets,
            v.mean_abs_error_pct,
            v.max_abs_error_pct,
            v.kendall_tau,
            v.scale,
            v.scale_free_error_pct
        );
        lut.validation = Some(v);
    }
    lut.save(&a.out)?;
    println!(
        "{}: {} layer configurations timed on {} ({} threads, batch {}) in {:.1} s",
        a.out.display(),
        lut.entries.len(),
        lut.device,
        lut.threads,
        cfg.batch,
        layers_s
    );
    Ok(())
}

#[derive(Args)]
pub struct LatencyArgs {
    /// `max`, `min`, or an architecture JSON file.
    #[arg(long)]
    arch: String,
    /// Predict from this lookup table.
    #[arg(long)]
    lut: Option<PathBuf>,
    /// Time the extracted subnet end to end instead.
    #[arg(long)]
    measure: bool,
    #[arg(long)]
    supernet: Option<PathBuf>,
    #[arg(long, default_value = "mbv3-28-lite")]
    space: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 50)]
    reps: usize,
    #[arg(long)]
    json: bool,
}

pub fn latency(a: LatencyArgs) -> anyhow::Result<()> {
    let lut = a.lut.as_ref().map(|p| LatencyTable::load(p)).transpose()?;
    let space = match (&lut, &a.supernet) {
        (Some(l), None) => l.space.clone(),
        _ => space_of(&a.space, &a.supernet)?,
    };
    let arch = Arch::parse_arg(&a.arch, &space)?;
    let predicted = lut.as_ref().map(|l| l.predict(&space, &arch)).transpose()?;
    let measured = if a.measure {
        let device = Default::default();
        let net = match &a.supernet {
            Some(p) => load_supernet::<Cpu>(p, None, &device)?,
            None => SupernetConfig::new(space.clone()).init::<Cpu>(&device),
        };
        let cfg = ProfileConfig {
            batch: a.batch,
            reps: a.reps,
            ..ProfileConfig::default()
        };
        Some(crate::search::latency::time_subnet(
            &extract(&net, &arch),
            &cfg,
            &device,
        ))
    } else {
        None
    };
    if predicted.is_none() && measured.is_none() {
        anyhow::bail!("give --lut LUT to predict and/or --measure to time");
    }
    if a.json {
        return print_json(
            &serde_json::json!({"arch": arch.to_reference_json(), "predicted_ms": predicted, "measured": measured}),
        );
    }
    println!("{arch}");
    if let Some(p) = predicted {
        println!("predicted (LUT): {p:.3} ms");
    }
    if let Some(m) = measured {
        println!(
            "measured: median {:.3} ms (p10 {:.3}, p90 {:.3}, {} runs, batch {})",
            m.median_ms, m.p10_ms, m.p90_ms, m.reps, a.batch
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct SearchArgs {
    #[arg(long)]
    predictor: PathBuf,
    /// Efficiency model for the --constraint scenario: flops, params or
    /// lut:FILE.
    #[arg(long, default_value = "flops")]
    efficiency: String,
    /// e.g. 'latency<=4ms', 'flops<=10M', 'params<=1M' (repeatable; one
    /// scenario).
    #[arg(long)]
    constraint: Vec<String>,
    /// TOML file of `[[scenario]]` tables (name, lut, constraints).
    #[arg(long)]
    scenarios: Option<PathBuf>,
    /// Output folder: one arch JSON per scenario and search.json.
    #[arg(long)]
    out: PathBuf,
    /// Also write the accuracy-vs-efficiency front and its plot.
    #[arg(long)]
    pareto: bool,
    #[arg(long, default_value_t = EvoConfig::default().population)]
    population: usize,
    #[arg(long, default_value_t = EvoConfig::default().generations)]
    generations: usize,
    #[arg(long, default_value_t = EvoConfig::default().parent_ratio)]
    parent_ratio: f64,
    #[arg(long, default_value_t = EvoConfig::default().mutation_ratio)]
    mutation_ratio: f64,
    #[arg(long, default_value_t = EvoConfig::default().mutate_prob)]
    mutate_prob: f64,
    #[arg(long, default_value_t = EvoConfig::default().resolution_mutate_prob)]
    resolution_mutate_prob: f64,
    /// Draws allowed to find one child that meets the constraints.
    #[arg(long, default_value_t = EvoConfig::default().max_tries)]
    max_tries: usize,
    /// With --pareto: extra budgets swept across the metric's range so the
    /// front spans it.
    #[arg(long, default_value_t = 8)]
    sweep: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs scenarios in parallel; returns results in the scenarios' order.
pub fn run_scenarios(
    predictor: &Predictor<Cpu>,
    scenarios: &[(String, Option<LatencyTable>, Vec<String>)],
    cfg: &EvoConfig,
) -> anyhow::Result<Vec<SearchResult>> {
    try_scenarios(predictor, scenarios, cfg)
        .into_iter()
        .collect()
}

/// Searches every scenario (in parallel); one that fails (for example a
/// budget no subnet can meet) does not stop the others.
pub fn try_scenarios(
    predictor: &Predictor<Cpu>,
    scenarios: &[(String, Option<LatencyTable>, Vec<String>)],
    cfg: &EvoConfig,
) -> Vec<anyhow::Result<SearchResult>> {
    let space = &predictor.space;
    scenarios
        .par_iter()
        .enumerate()
        .map(|(i, (name, lut, cs))| {
            let eff = Efficiency::new(space, lut.as_ref())?;
            let constraints = parse_constraints(name, cs)?;
            let c = EvoConfig {
                seed: cfg.seed.wrapping_add(i as u64),
                ..cfg.clone()
            };
            evolve(
                space,
                &eff,
                name,
                &constraints,
                &|a| predictor.predict(a),
                &c,
            )
        })
        .collect()
}

/// Budgets spread evenly between the smallest and the largest subnet on a
/// metric, to trace the whole Pareto front.
pub fn sweep_scenarios(
    space: &Space,
    metric: Metric,
    lut: Option<&LatencyTable>,
    n: usize,
) -> anyhow::Result<Vec<(String, Option<LatencyTable>, Vec<String>)>> {
    let eff = Efficiency::new(space, lut)?;
    let (lo, hi) = match (
        eff.value(&Arch::min(space), metric),
        eff.value(&Arch::max(space), metric),
    ) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => anyhow::bail!("no {metric} model for the Pareto sweep"),
    };
    let unit = if metric == Metric::Latency { "ms" } else { "M" };
    Ok((1..=n)
        .map(|i| {
            let b = lo + (hi - lo) * i as f64 / n as f64;
            (
                format!("{SWEEP_PREFIX}{metric}<={b:.4}{unit}"),
                lut.cloned(),
                vec![format!("{metric}<={b:.6}{unit}")],
            )
        })
        .collect())
}

/// File-name-safe version of a scenario name.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes one JSON per scenario and a summary.
pub fn write_results(out: &Path, space: &Space, results: &[SearchResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for r in results {
        let v = serde_json::json!({
            "scenario": r.scenario,
            "constraints": r.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "arch": r.best.arch.to_json(space),
            "reference": r.best.arch.to_reference_json(),
            "predicted_top1": r.best.accuracy,
            "mflops": r.best.mflops,
            "mparams": r.best.mparams,
            "latency_ms": r.best.latency_ms,
            "search_seconds": r.seconds,
        });
        crate::util::write_text_atomic(
            &out.join(format!("{}.json", slug(&r.scenario))),
            &serde_json::to_string_pretty(&v)?,
        )?;
    }
    crate::util::write_text_atomic(
        &out.join("search.json"),
        &serde_json::to_string_pretty(results)?,
    )
}

/// The Pareto front of all visited subnets, on `metric`, plotted over a
/// random sample of the space; returns written files.
pub fn write_pareto(
    out: &Path,
    predictor: &Predictor<Cpu>,
    results: &[SearchResult],
    metric: Metric,
    lut: Option<&LatencyTable>,
    measured: &[(String, f64, f64)],
) -> anyhow::Result<Vec<PathBuf>> {
    let space = &predictor.space;
    let eff = Efficiency::new(space, lut)?;
    let pool: Vec<&Candidate> = results
        .iter()
        .flat_map(|r| r.visited.iter())
        .filter(|c| c.value(metric).is_some())
        .collect();
    let pts: Vec<(f64, f64)> = pool
        .iter()
        .filter_map(|c| c.value(metric).map(|v| (v, c.accuracy)))
        .collect();
    let front = pareto_front(&pts);
    let front_pts: Vec<(f64, f64)> = front
        .iter()
        .map(|&i| (pts[i].0, 100.0 * pts[i].1))
        .collect();
    let sample = random_population(space, 1000, 99);
    let acc = predictor.predict(&sample);
    let bg: Vec<(f64, f64)> = sample
        .iter()
        .zip(&acc)
        .filter_map(|(a, y)| eff.value(a, metric).map(|v| (v, 100.0 * y)))
        .collect();
    let picks: Vec<(f64, f64)> = results
        .iter()
        .filter_map(|r| r.best.value(metric).map(|v| (v, 100.0 * r.best.accuracy)))
        .collect();
    // Sweep budgets only shape the front; labelling them would bury the
    // user's scenarios.
    // Scenarios that chose the same subnet share one label.
    let mut labels: Vec<(f64, f64, String)> = Vec::new();
    for r in results
        .iter()
        .filter(|r| !r.scenario.starts_with(SWEEP_PREFIX))
    {
        let Some(v) = r.best.value(metric) else {
            continue;
        };
        let y = 100.0 * r.best.accuracy;
        match labels.iter_mut().find(|(x0, y0, _)| *x0 == v && *y0 == y) {
            Some(l) => l.2 = format!("{}, {}", l.2, r.scenario),
            None => labels.push((v, y, r.scenario.clone())),
        }
    }
    let front_json: Vec<serde_json::Value> = front
        .iter()
        .map(|&i| {
            let c = pool[i];
            serde_json::json!({"arch": c.arch.to_reference_json(), "predicted_top1": c.accuracy, "mflops": c.mflops, "mparams": c.mparams, "latency_ms": c.latency_ms})
        })
        .collect();
    let stem = out.join(format!("pareto-{metric}"));
    crate::util::write_text_atomic(
        &stem.with_extension("json"),
        &serde_json::to_string_pretty(&front_json)?,
    )?;
    let mut series = vec![
        Series {
            name: "random subnets (predicted)",
            points: bg,
            style: SeriesStyle::Background,
        },
        Series {
            name: "Pareto front (predicted)",
            points: front_pts,
            style: SeriesStyle::Front,
        },
        Series {
            name: "chosen subnets (predicted)",
            points: picks,
            style: SeriesStyle::Picks,
        },
    ];
    let measured_pts: Vec<(f64, f64)> = measured.iter().map(|(_, x, y)| (*x, *y)).collect();
    if !measured_pts.is_empty() {
        series.push(Series {
            name: "chosen subnets (measured)",
            points: measured_pts,
            style: SeriesStyle::Measured,
        });
    }
    let x_label = format!("{} ({})", metric, metric.unit());
    let mut files = scatter(
        &stem,
        &format!("accuracy vs {metric}: {}", space.name),
        &x_label,
        &series,
        &labels,
    )?;
    files.insert(0, stem.with_extension("json"));
    Ok(files)
}

pub fn search(a: SearchArgs) -> anyhow::Result<()> {
    let device = Default::default();
    let predictor = Predictor::<Cpu>::load(&a.predictor, &device)?;
    let mut scenarios: Vec<(String, Option<LatencyTable>, Vec<String>)> = Vec::new();
    let main_lut = match a.efficiency.strip_prefix("lut:") {
        Some(p) => Some(LatencyTable::load(Path::new(p))?),
        None if ["flops", "params"].contains(&a.efficiency.as_str()) => None,
        None => anyhow::bail!(
            "--efficiency must be flops, params or lut:FILE, not '{}'",
            a.efficiency
        ),
    };
    if !a.constraint.is_empty() {
        scenarios.push((
            a.constraint.join(","),
            main_lut.clone(),
            a.constraint.clone(),
        ));
    }
    if let Some(f) = &a.scenarios {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?;
        let file: ScenarioFile = toml::from_str(&text)
            .with_context(|| format!("{}: not a scenarios file", f.display()))?;
        let base = f.parent().unwrap_or(Path::new("."));
        for s in file.scenario {
            let lut = match &s.lut {
                Some(p) => {
                    let path = base.join(p);
                    Some(
                        LatencyTable::load(&path)
                            .with_context(|| format!("scenario '{}'", s.name))?,
                    )
                }
                None => main_lut.clone(),
            };
            scenarios.push((s.name, lut, s.constraints));
        }
    }
    if scenarios.is_empty() {
        anyhow::bail!("nothing to search: give --constraint and/or --scenarios");
    }
    let cfg = EvoConfig {
        population: a.population,
        generations: a.generations,
        parent_ratio: a.parent_ratio,
        mutation_ratio: a.mutation_ratio,
        mutate_prob: a.mutate_prob,
        resolution_mutate_prob: a.resolution_mutate_prob,
        max_tries: a.max_tries,
        seed: a.seed,
    };
    let t = std::time::Instant::now();
    let (results, failed): (Vec<_>, Vec<_>) = try_scenarios(&predictor, &scenarios, &cfg)
        .into_iter()
        .partition(|r| r.is_ok());
    let results: Vec<SearchResult> = results.into_iter().map(|r| r.unwrap()).collect();
    let failed: Vec<String> = failed
        .into_iter()
        .map(|r| format!("{:#}", r.err().unwrap()))
        .collect();
    let total = t.elapsed().as_secs_f64();
    if results.is_empty() {
        anyhow::bail!("every scenario failed:\n  {}", failed.join("\n  "));
    }
    write_results(&a.out, &predictor.space, &results)?;
    for r in &results {
        println!(
            "{:<28} predicted top-1 {:.2}%  {:.2} MFLOPs  {:.3} M params{}  ({:.2} s)",
            r.scenario,
            100.0 * r.best.accuracy,
            r.best.mflops,
            r.best.mparams,
            r.best
                .latency_ms
                .map(|l| format!("  {l:.3} ms"))
                .unwrap_or_default(),
            r.seconds
        );
    }
    println!(
        "{} scenario(s) in {:.2} s; results in {}",
        results.len(),
        total,
        a.out.display()
    );
    if a.pareto {
        let metric = if main_lut.is_some() {
            Metric::Latency
        } else if a.efficiency == "params" {
            Metric::Params
        } else {
            Metric::Flops
        };
        let sweep = sweep_scenarios(&predictor.space, metric, main_lut.as_ref(), a.sweep)?;
        let evo = EvoConfig {
            generations: cfg.generations.min(100),
            ..cfg
        };
        let all: Vec<SearchResult> = results
            .iter()
            .cloned()
            .chain(run_scenarios(&predictor, &sweep, &evo)?)
            .collect();
        for f in write_pareto(&a.out, &predictor, &all, metric, main_lut.as_ref(), &[])? {
            println!("{}", f.display());
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} scenarios failed (the others' results are written):\n  {}",
            failed.len(),
            scenarios.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}
