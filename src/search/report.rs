//! Search outputs: one architecture file per scenario, `search.json`, and
//! the accuracy-vs-efficiency fronts with their plots.

use super::evolution::{
    Candidate, Efficiency, Metric, SearchResult, pareto_front, random_population,
};
use super::latency::LatencyTable;
use super::measure::{best_baseline, measured_best};
use super::plot::{Series, SeriesStyle, scatter};
use super::predictor::Predictor;
use super::scenario::slug;
use crate::space::Space;
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};

/// A scenario's outcome for files and reports: the returned subnet,
/// predicted and measured, and its gain over the best baseline.
pub fn summary(r: &SearchResult, space: &Space) -> serde_json::Value {
    let measured = measured_best(r);
    let base = best_baseline(r);
    serde_json::json!({
        "scenario": r.scenario,
        "chosen_from": r.chosen_from,
        "constraints": r.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "arch": r.best.arch.to_json(space),
        "reference": r.best.arch.to_reference_json(),
        "predicted_top1": r.best.accuracy,
        "measured_val_top1": measured.map(|m| m.val.top1),
        "measured_val_stderr": measured.map(|m| m.val.stderr()),
        "mflops": r.best.mflops,
        "mparams": r.best.mparams,
        "latency_ms": r.best.latency_ms,
        "search_seconds": r.seconds,
        "best_baseline": base.map(|b| serde_json::json!({
            "name": b.name, "val_top1": b.val.top1, "test_top1": b.test.map(|t| t.top1),
            "mflops": b.candidate.mflops, "latency_ms": b.candidate.latency_ms,
        })),
        "reranked": r.reranked.iter().map(|m| serde_json::json!({
            "reference": m.candidate.arch.to_reference_json(),
            "predicted_top1": m.candidate.accuracy, "val_top1": m.val.top1,
            "val_stderr": m.val.stderr(), "mflops": m.candidate.mflops,
            "latency_ms": m.candidate.latency_ms,
        })).collect::<Vec<_>>(),
    })
}

/// Writes one JSON per scenario and `search.json` (every result with its
/// re-ranked candidates and measured baselines).
pub fn write_results(out: &Path, space: &Space, results: &[SearchResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for r in results {
        crate::util::write_text_atomic(
            &out.join(format!("{}.json", slug(&r.scenario))),
            &serde_json::to_string_pretty(&summary(r, space))?,
        )?;
    }
    crate::util::write_text_atomic(
        &out.join("search.json"),
        &serde_json::to_string_pretty(results)?,
    )
}

/// A measured point of a plot: (label, efficiency, top-1 %).
pub type MeasuredPoint = (String, f64, f64);

/// The Pareto front of all visited subnets on `metric`, plotted over a
/// random sample of the space, with the chosen subnets (predicted and, if
/// given, measured) and the measured baselines; returns the written files.
pub fn write_pareto<B: Backend>(
    out: &Path,
    predictor: &Predictor<B>,
    results: &[SearchResult],
    metric: Metric,
    lut: Option<&LatencyTable>,
    measured: &[MeasuredPoint],
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
    let user: Vec<&SearchResult> = results
        .iter()
        .filter(|r| !r.scenario.starts_with(super::scenario::SWEEP_PREFIX))
        .collect();
    let picks: Vec<(f64, f64)> = user
        .iter()
        .filter_map(|r| r.best.value(metric).map(|v| (v, 100.0 * r.best.accuracy)))
        .collect();
    // Scenarios that chose the same subnet share one label; sweep budgets
    // only shape the front.
    let mut labels: Vec<(f64, f64, String)> = Vec::new();
    for r in &user {
        let Some(v) = r.best.value(metric) else {
            continue;
        };
        let y = 100.0 * r.best.accuracy;
        match labels.iter_mut().find(|(x0, y0, _)| *x0 == v && *y0 == y) {
            Some(l) => l.2 = format!("{}, {}", l.2, r.scenario),
            None => labels.push((v, y, r.scenario.clone())),
        }
    }
    let mut baselines: Vec<(f64, f64)> = user
        .iter()
        .flat_map(|r| r.baselines.iter())
        .filter_map(|b| b.candidate.value(metric).map(|v| (v, 100.0 * b.val.top1)))
        .collect();
    baselines.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    baselines.dedup();
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
            name: "chosen subnets (measured, val)",
            points: measured_pts,
            style: SeriesStyle::Measured,
        });
    }
    if !baselines.is_empty() {
        series.push(Series {
            name: "baselines (measured, val)",
            points: baselines,
            style: SeriesStyle::Baselines,
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
