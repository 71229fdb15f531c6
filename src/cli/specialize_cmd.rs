//! `ofa table`, `ofa predictor`, `ofa profile`, `ofa latency`, `ofa search`, `ofa specialize`.

use super::print_json;
use super::train_cmd::EvalFlags;
use crate::nn::TrainBackend;
use crate::nn::load_supernet;
use crate::search::report::{write_pareto, write_results};
use crate::search::table::{self, Table, TableMeta};
use crate::search::{
    EvoConfig, FitConfig, LatencyTable, Measurer, Metric, Predictor, ProfileConfig, Scenario,
    SearchResult, load_scenarios, measure_baselines, rerank, search_all, search_each, sweep,
};
use crate::space::{Arch, Space};
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

fn bar(len: usize, template: &str) -> ProgressBar {
    super::progress::bar(len as u64, template)
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
    /// `uniform` (every choice uniform, as the reference), `spread` (a
    /// size per architecture, covering the cost range) or `mixed`
    /// (alternately).
    #[arg(long, default_value = "uniform")]
    sampling: crate::search::table::Sampling,
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

pub fn table<B: TrainBackend>(
    device: &B::Device,
    c: TableCommand,
    comm: &crate::nn::Comm,
) -> anyhow::Result<()> {
    if comm.size() > 1 && c.sub.is_some() {
        anyhow::bail!("table merge/export/show run as one process, not under mpirun");
    }
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
        None => build_table::<B>(device, c.build, comm),
    }
}

fn show_table(path: &Path, json: bool) -> anyhow::Result<()> {
    let t = Table::open(path)?;
    let rows = t.rows()?;
    let st = table::stats(&rows);
    if json {
        return print_json(&serde_json::json!({
            "rows": rows.len(), "subnets": t.meta.subnets, "resolutions": t.meta.resolutions,
            "space": t.meta.space.name, "stats": st,
        }));
    }
    println!(
        "{}: {} rows ({} subnets × {:?}) of space {}",
        path.display(),
        rows.len(),
        t.meta.subnets,
        t.meta.resolutions,
        t.meta.space.name,
    );
    println!(
        "top-1 mean {:.2}%, range {:.2}–{:.2}%, standard deviation {:.2} points",
        100.0 * st.top1_mean,
        100.0 * st.top1_min,
        100.0 * st.top1_max,
        100.0 * st.top1_sd
    );
    println!(
        "standard error of a row {:.2} points ({:.2} of the spread; below 0.33 ranks subnets), of a paired difference {:.2} points",
        100.0 * st.row_stderr,
        st.noise_ratio,
        100.0 * st.paired_stderr
    );
    Ok(())
}

fn build_table<B: TrainBackend>(
    device: &B::Device,
    a: TableArgs,
    comm: &crate::nn::Comm,
) -> anyhow::Result<()> {
    let supernet = a.supernet.context("--supernet is required")?;
    let out = a.out.context("--out is required")?;
    let shard = parse_shard(&a.shard)?;
    let net = load_supernet::<B::InnerBackend>(&supernet, None, device)?;
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
    let data = crate::train::eval_data_of(&supernet, &space, &a.data, &eval)?;
    let meta = TableMeta::for_supernet(
        &supernet,
        &space,
        &a.data,
        eval,
        a.seed,
        a.sampling,
        a.subnets,
        resolutions,
    )?;
    // Rank 0 alone holds the file; the other ranks evaluate rows for it.
    let mut t = if comm.is_root() {
        Some(Table::create_or_open(&out, meta)?)
    } else {
        None
    };
    let stop = super::progress::interrupt_flag();
    let pb = if comm.is_root() {
        bar(0, "table [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let added = table::build_shared(
        &net,
        t.as_mut(),
        &data,
        shard,
        device,
        &**comm,
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
    let Some(t) = t else { return Ok(()) };
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
    /// Predicted top-1 (a fraction, as predictors predict it) of one
    /// architecture.
    Predict {
        #[arg(long)]
        predictor: PathBuf,
        /// `max`, `min`, or an architecture JSON file (either form, or a
        /// search result).
        #[arg(long)]
        arch: String,
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

pub fn predictor<B: TrainBackend>(device: &B::Device, c: PredictorCommand) -> anyhow::Result<()> {
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
            let p = crate::search::fit::<B>(&space, &pairs, &cfg, device, &mut |e, l| {
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
            let p = Predictor::<B::InnerBackend>::load(&predictor, device)?;
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
        PredictorCommand::Predict {
            predictor,
            arch,
            json,
        } => {
            let p = Predictor::<B::InnerBackend>::load(&predictor, device)?;
            let arch = Arch::parse_arg(&arch, &p.space)?;
            let top1 = p.predict(std::slice::from_ref(&arch))[0];
            if json {
                return print_json(&serde_json::json!({
                    "arch": arch.to_reference_json(), "predicted_top1": top1,
                    "space": p.space.name, "origin": p.origin,
                }));
            }
            println!("{arch}\npredicted top-1 {top1:.6} ({:.2}%)", 100.0 * top1);
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
    /// Also check the table on the --validate subnets with all of them at
    /// each of these resolutions (comma-separated), one report each.
    #[arg(long, value_delimiter = ',')]
    validate_at: Vec<usize>,
    /// Seeded random subnets timed end to end to fit the table's scale
    /// (other draws than --validate's; 0 keeps the plain layer sums).
    #[arg(long, default_value_t = 10)]
    calibrate: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What times the layers: `ofa` (this engine) or `onnxruntime` (each
    /// layer exported to ONNX and timed in ONNX Runtime, the runtime an
    /// exported subnet is deployed with; needs the `onnxruntime` feature).
    #[arg(long, default_value = "ofa")]
    runtime: String,
    /// libonnxruntime.so (default: $ORT_DYLIB_PATH, else the one of the
    /// `onnxruntime` Python package).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

fn space_of<B: TrainBackend>(
    device: &B::Device,
    space: &str,
    supernet: &Option<PathBuf>,
) -> anyhow::Result<Space> {
    match supernet {
        Some(p) => Ok(load_supernet::<B::InnerBackend>(p, None, device)?.space),
        None => Space::resolve(space),
    }
}

pub fn profile<B: TrainBackend>(device: &B::Device, a: ProfileArgs) -> anyhow::Result<()> {
    let space = space_of::<B>(device, &a.space, &a.supernet)?;
    let cfg = ProfileConfig {
        batch: a.batch,
        warmup: a.warmup,
        reps: a.reps,
        evict_kib: a
            .evict_kib
            .unwrap_or_else(|| ProfileConfig::default_evict_kib_for(&a.runtime, a.batch)),
    };
    let pb = bar(
        0,
        "profile [{bar:30}] {pos}/{len} layers ({elapsed} < {eta})",
    );
    let mut timer =
        crate::export::timer::<B::InnerBackend>(&a.runtime, a.ort_lib.as_deref(), device)?;
    let t = std::time::Instant::now();
    let mut lut = LatencyTable::profile_with(&space, &cfg, timer.as_mut(), &mut |d, n| {
        pb.set_length(n as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    let layers_s = t.elapsed().as_secs_f64();
    let check = crate::search::latency::TableCheck {
        calibrate: a.calibrate,
        validate: a.validate,
        seed: a.seed,
        at: a.validate_at.clone(),
    };
    crate::search::latency::calibrate_and_validate(&mut lut, &space, &check, timer.as_mut())?;
    if let Some(c) = lut.calibration_summary() {
        println!("{c}");
    }
    let checks = lut.validation.iter().map(|v| (None, v));
    for (r, v) in checks.chain(lut.validation_at.iter().map(|(r, v)| (Some(*r), v))) {
        let at = r.map(|r| format!(" at {r} px")).unwrap_or_default();
        println!(
            "LUT vs measured on {} subnets{at}: mean |error| {:.1}%, max {:.1}%, Kendall τ {:.3}; \
             measured/predicted {:.2} ± {:.1}%",
            v.subnets,
            v.mean_abs_error_pct,
            v.max_abs_error_pct,
            v.kendall_tau,
            v.scale,
            v.scale_free_error_pct
        );
        if let Some((err, tau)) = v.scale_only {
            println!("  with the scale alone: mean |error| {err:.1}%, Kendall τ {tau:.3}");
        }
    }
    lut.save(&a.out)?;
    println!(
        "{}: {} layer configurations timed in {} on {} ({} threads, batch {}) in {:.1} s",
        a.out.display(),
        lut.entries.len(),
        lut.runtime,
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
    /// With --measure: `ofa` (this engine) or `onnxruntime` (the exported
    /// subnet in ONNX Runtime; needs the `onnxruntime` feature).
    #[arg(long, default_value = "ofa")]
    runtime: String,
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

pub fn latency<B: TrainBackend>(device: &B::Device, a: LatencyArgs) -> anyhow::Result<()> {
    let lut = a.lut.as_ref().map(|p| LatencyTable::load(p)).transpose()?;
    let space = match (&lut, &a.supernet) {
        (Some(l), None) => l.space.clone(),
        _ => space_of::<B>(device, &a.space, &a.supernet)?,
    };
    let arch = Arch::parse_arg(&a.arch, &space)?;
    let predicted = lut.as_ref().map(|l| l.predict(&space, &arch)).transpose()?;
    let measured = if a.measure {
        // Timing does not depend on the weights: the timer extracts the
        // subnet from a freshly built supernet of the space.
        let cfg = ProfileConfig {
            batch: a.batch,
            reps: a.reps,
            ..ProfileConfig::default()
        };
        let mut timer =
            crate::export::timer::<B::InnerBackend>(&a.runtime, a.ort_lib.as_deref(), device)?;
        Some(timer.time_archs(&space, std::slice::from_ref(&arch), &cfg)?[0])
    } else {
        None
    };
    if predicted.is_none() && measured.is_none() {
        anyhow::bail!("give --lut LUT to predict and/or --measure to time");
    }
    if a.json {
        return print_json(
            &serde_json::json!({"arch": arch.to_reference_json(), "predicted_ms": predicted, "measured": measured, "runtime": a.runtime}),
        );
    }
    println!("{arch}");
    if let Some(p) = predicted {
        println!("predicted (LUT): {p:.3} ms");
    }
    if let Some(m) = measured {
        println!(
            "measured in {}: median {:.3} ms (p10 {:.3}, p90 {:.3}, {} runs, batch {})",
            a.runtime, m.median_ms, m.p10_ms, m.p90_ms, m.reps, a.batch
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
    /// The predictor's supernet: re-rank candidates and measure baselines
    /// on its validation hold-out (BN recalibrated).
    #[arg(long)]
    supernet: Option<PathBuf>,
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Best predicted candidates per scenario re-ranked by measured
    /// validation top-1 (0: return the best predicted).
    #[arg(long, default_value_t = 8)]
    rerank: usize,
    /// Also measure the simple baselines each scenario admits (smallest,
    /// largest, uniform subnets).
    #[arg(long)]
    baselines: bool,
    /// Measure the best baseline on the test split too.
    #[arg(long)]
    test: bool,
    #[command(flatten)]
    eval: EvalFlags,
}

pub fn search<B: TrainBackend>(device: &B::Device, a: SearchArgs) -> anyhow::Result<()> {
    let predictor = Predictor::<B::InnerBackend>::load(&a.predictor, device)?;
    let main_lut = match a.efficiency.strip_prefix("lut:") {
        Some(p) => Some(LatencyTable::load(Path::new(p))?),
        None if ["flops", "params"].contains(&a.efficiency.as_str()) => None,
        None => anyhow::bail!(
            "--efficiency must be flops, params or lut:FILE, not '{}'",
            a.efficiency
        ),
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    if !a.constraint.is_empty() {
        scenarios.push(Scenario::new(
            &a.constraint.join(","),
            main_lut.clone(),
            &a.constraint,
        )?);
    }
    if let Some(f) = &a.scenarios {
        scenarios.extend(load_scenarios(f, main_lut.as_ref())?);
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
    let mut results = Vec::new();
    let mut failed = Vec::new();
    let mut searched = Vec::new();
    for (s, r) in scenarios
        .iter()
        .zip(search_all(&predictor, &scenarios, &cfg))
    {
        match r {
            Ok(r) => {
                results.push(r);
                searched.push(s);
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    let total = t.elapsed().as_secs_f64();
    if results.is_empty() {
        anyhow::bail!("every scenario failed:\n  {}", failed.join("\n  "));
    }
    match &a.supernet {
        Some(supernet) => {
            let net = load_supernet::<B::InnerBackend>(supernet, Some(&predictor.space), device)
                .with_context(|| "--supernet must be the predictor's supernet".to_string())?;
            let eval = a.eval.config();
            let val = crate::train::eval_data_of(supernet, &net.space, &a.data, &eval)?;
            let test = val.with_test_split();
            let mut m = Measurer::new(&net, &val, a.test.then_some(&test), eval, device.clone());
            let pb = bar(
                results.len(),
                "measure [{bar:30}] {pos}/{len} scenarios ({elapsed})",
            );
            for (r, s) in results.iter_mut().zip(&searched) {
                rerank(r, a.rerank, &mut m)?;
                if a.baselines {
                    measure_baselines(r, s, &|x| predictor.predict(x), &mut m)?;
                    crate::search::measure::prefer_better_baseline(r);
                }
                pb.inc(1);
            }
            pb.finish_and_clear();
            println!("{} subnets measured", m.evaluations);
        }
        None if a.rerank > 0 => {
            println!(
                "(no --supernet: returning the best predicted subnets, not re-ranked by measurement)"
            )
        }
        None => {}
    }
    write_results(&a.out, &predictor.space, &results)?;
    for r in &results {
        let measured = crate::search::measure::measured_best(r)
            .map(|m| {
                format!(
                    "  measured {:.2}% ± {:.2}",
                    100.0 * m.val.top1,
                    100.0 * m.val.stderr()
                )
            })
            .unwrap_or_default();
        let base = crate::search::measure::best_baseline(r)
            .map(|b| format!("  best baseline {} {:.2}%", b.name, 100.0 * b.val.top1))
            .unwrap_or_default();
        println!(
            "{:<28} predicted top-1 {:.2}%{measured}{base}  {:.2} MFLOPs  {:.3} M params{}  ({:.2} s)",
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
        "{} scenario(s) searched in {:.2} s; results in {}",
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
        let evo = EvoConfig {
            generations: cfg.generations.min(100),
            ..cfg
        };
        let extra = search_each(
            &predictor,
            &sweep(&predictor.space, metric, main_lut.as_ref(), a.sweep)?,
            &evo,
        )?;
        let all: Vec<SearchResult> = results.iter().cloned().chain(extra).collect();
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

#[derive(Args)]
pub struct SpecializeArgs {
    /// Supernet file (`ofa train`, or `ofa import --from-pytorch`).
    #[arg(long)]
    supernet: PathBuf,
    /// Predictor file (`ofa predictor fit`, or `ofa import --predictor`).
    #[arg(long)]
    predictor: PathBuf,
    /// A scenario; repeat for several (`latency<=15ms`, `flops<=300M`).
    #[arg(long)]
    constraint: Vec<String>,
    /// More scenarios from a TOML file (as `ofa search --scenarios`).
    #[arg(long)]
    scenarios: Option<PathBuf>,
    /// A latency table brought from the target device, instead of
    /// profiling this machine.
    #[arg(long)]
    lut: Option<PathBuf>,
    /// Where this machine's profiled tables are cached (default
    /// $OFA_CACHE_DIR, else $XDG_CACHE_HOME/ofa, else ~/.cache/ofa).
    #[arg(long)]
    lut_cache: Option<PathBuf>,
    /// Batch size latency is profiled and timed at.
    #[arg(long, default_value_t = 1)]
    latency_batch: usize,
    /// Timed runs per layer configuration when profiling.
    #[arg(long, default_value_t = 30)]
    latency_reps: usize,
    /// Sampled subnets timed end to end to report a new table's error.
    #[arg(long, default_value_t = 20)]
    validate: usize,
    /// Subnets timed end to end to fit a new table's scale (other draws
    /// than --validate's; 0 keeps the plain layer sums).
    #[arg(long, default_value_t = 10)]
    calibrate: usize,
    /// Interleaved rounds in which the chosen subnets are timed end to end
    /// (median reported).
    #[arg(long, default_value_t = 10)]
    timing_reps: usize,
    /// What latency is measured in: `ofa` (this engine) or `onnxruntime`
    /// (the runtime the exported subnets are deployed with; needs the
    /// `onnxruntime` feature).
    #[arg(long, default_value = "ofa")]
    runtime: String,
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Dataset (e.g. `folder:DIR` for ImageNet) to recalibrate BN on and
    /// measure each choice's top-1; without it, stored BN statistics.
    #[arg(long)]
    data: Option<String>,
    #[command(flatten)]
    eval: EvalFlags,
    #[arg(long, default_value_t = EvoConfig::default().generations)]
    generations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn specialize_cmd<B: TrainBackend>(
    device: &B::Device,
    a: SpecializeArgs,
) -> anyhow::Result<()> {
    let cfg = crate::specialize::SpecializeConfig {
        supernet: a.supernet,
        predictor: a.predictor,
        constraints: a.constraint,
        scenarios: a.scenarios,
        lut: a.lut,
        cache_dir: a.lut_cache,
        profile: ProfileConfig {
            batch: a.latency_batch,
            reps: a.latency_reps,
            evict_kib: ProfileConfig::default_evict_kib_for(&a.runtime, a.latency_batch),
            ..ProfileConfig::default()
        },
        validate: a.validate,
        calibrate: a.calibrate,
        timing_reps: a.timing_reps,
        runtime: a.runtime,
        ort_lib: a.ort_lib,
        data: a.data,
        eval: a.eval.config(),
        evo: EvoConfig {
            generations: a.generations,
            seed: a.seed,
            ..EvoConfig::default()
        },
        out: a.out,
    };
    let pb = bar(0, "{msg} [{bar:30}] {pos}/{len} ({elapsed} < {eta})");
    let s = crate::specialize::specialize::<B::InnerBackend>(&cfg, device, &mut |stage, d, n| {
        pb.set_message(stage.to_string());
        pb.set_length(n as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&s);
    }
    println!(
        "latency table {} ({}, {} layer configurations, {:.1} s)",
        s.lut.path.display(),
        s.lut.how,
        s.lut.entries,
        s.lut.seconds
    );
    for c in &s.chosen {
        println!(
            "{:<24} predicted {:.2}%{}  {:.1} MFLOPs  table {}  measured {:.2} ms  {}",
            c.scenario,
            100.0 * c.predicted_top1,
            c.val
                .map(|v| format!("  measured {:.2}%", 100.0 * v.top1))
                .unwrap_or_default(),
            c.mflops,
            c.lut_ms
                .map(|x| format!("{x:.2} ms"))
                .unwrap_or_else(|| "–".into()),
            c.measured_ms,
            c.subnet.display()
        );
    }
    for f in &s.failed {
        println!("no subnet: {f}");
    }
    println!(
        "search {:.1} s, ship {:.1} s, total {:.1} s; report {}",
        s.search_seconds,
        s.ship_seconds,
        s.total_seconds,
        s.report.display()
    );
    Ok(())
}
