//! Deployment scenarios: a name, the device's latency table (when latency
//! is constrained) and budgets; searched many at a time, in parallel.

use super::evolution::{Constraint, Efficiency, EvoConfig, Metric, SearchResult, evolve};
use super::latency::LatencyTable;
use super::predictor::Predictor;
use crate::space::{Arch, Space};
use anyhow::Context;
use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::Deserialize;
use std::path::Path;

/// Names of the extra budgets a Pareto sweep adds (not the user's
/// scenarios).
pub const SWEEP_PREFIX: &str = "sweep-";

/// One deployment scenario, ready to search.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    /// Latency table of the device, if any.
    pub lut: Option<LatencyTable>,
    pub constraints: Vec<Constraint>,
}

impl Scenario {
    /// Parses constraint strings (`latency<=4ms`, `flops<=30M`, …), naming
    /// the scenario on error.
    pub fn new(
        name: &str,
        lut: Option<LatencyTable>,
        constraints: &[String],
    ) -> anyhow::Result<Self> {
        let constraints = constraints
            .iter()
            .map(|c| {
                c.parse::<Constraint>()
                    .with_context(|| format!("scenario '{name}'"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Scenario {
            name: name.to_string(),
            lut,
            constraints,
        })
    }

    /// Whether a subnet meets every constraint.
    pub fn admits(&self, eff: &Efficiency, arch: &Arch) -> bool {
        eff.meets(arch, &self.constraints)
    }

    pub fn is_sweep(&self) -> bool {
        self.name.starts_with(SWEEP_PREFIX)
    }
}

/// One `[[scenario]]` table of a scenarios file; `lut` is a path relative
/// to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioEntry {
    name: String,
    #[serde(default)]
    lut: Option<String>,
    constraints: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    scenario: Vec<ScenarioEntry>,
}

/// Reads a TOML file of `[[scenario]]` tables (name, lut, constraints);
/// scenarios without a `lut` get `default_lut`.
pub fn load_scenarios(
    path: &Path,
    default_lut: Option<&LatencyTable>,
) -> anyhow::Result<Vec<Scenario>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let file: ScenarioFile = toml::from_str(&text)
        .with_context(|| format!("{}: not a scenarios file", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.scenario
        .into_iter()
        .map(|s| {
            let lut = match &s.lut {
                Some(p) => Some(
                    LatencyTable::load(&base.join(p))
                        .with_context(|| format!("scenario '{}'", s.name))?,
                ),
                None => default_lut.cloned(),
            };
            Scenario::new(&s.name, lut, &s.constraints)
        })
        .collect()
}

/// Searches every scenario in parallel; results in the scenarios' order.
/// One that fails (a budget no subnet can meet) does not stop the others.
pub fn search_all<B: Backend>(
    predictor: &Predictor<B>,
    scenarios: &[Scenario],
    cfg: &EvoConfig,
) -> Vec<anyhow::Result<SearchResult>>
where
    Predictor<B>: Sync,
{
    let space = &predictor.space;
    scenarios
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let eff = Efficiency::new(space, s.lut.as_ref())?;
            let c = EvoConfig {
                seed: cfg.seed.wrapping_add(i as u64),
                ..cfg.clone()
            };
            evolve(
                space,
                &eff,
                &s.name,
                &s.constraints,
                &|a| predictor.predict(a),
                &c,
            )
        })
        .collect()
}

/// [`search_all`] where every scenario must succeed.
pub fn search_each<B: Backend>(
    predictor: &Predictor<B>,
    scenarios: &[Scenario],
    cfg: &EvoConfig,
) -> anyhow::Result<Vec<SearchResult>>
where
    Predictor<B>: Sync,
{
    search_all(predictor, scenarios, cfg).into_iter().collect()
}

/// Budgets spread evenly between the smallest and the largest subnet on a
/// metric, to trace the whole Pareto front.
pub fn sweep(
    space: &Space,
    metric: Metric,
    lut: Option<&LatencyTable>,
    n: usize,
) -> anyhow::Result<Vec<Scenario>> {
    let eff = Efficiency::new(space, lut)?;
    let (lo, hi) = match (
        eff.value(&Arch::min(space), metric),
        eff.value(&Arch::max(space), metric),
    ) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => anyhow::bail!("no {metric} model for the Pareto sweep"),
    };
    (1..=n)
        .map(|i| {
            let b = lo + (hi - lo) * i as f64 / n as f64;
            Ok(Scenario {
                name: format!("{SWEEP_PREFIX}{metric}<={b:.4}{}", short_unit(metric)),
                lut: lut.cloned(),
                constraints: vec![Constraint { metric, limit: b }],
            })
        })
        .collect()
}

fn short_unit(m: Metric) -> &'static str {
    if m == Metric::Latency { "ms" } else { "M" }
}

/// Budgets at fixed shares of a metric's range between the smallest and
/// the largest subnet (`ofa run`'s scenarios).
pub fn budgets_between(
    name: &str,
    space: &Space,
    metric: Metric,
    lut: Option<&LatencyTable>,
    shares: &[f64],
) -> anyhow::Result<Vec<Scenario>> {
    let eff = Efficiency::new(space, lut)?;
    let (Some(lo), Some(hi)) = (
        eff.value(&Arch::min(space), metric),
        eff.value(&Arch::max(space), metric),
    ) else {
        anyhow::bail!("no {metric} model for the budgets");
    };
    Ok(shares
        .iter()
        .map(|f| {
            let b = lo + f * (hi - lo);
            let label = match metric {
                Metric::Latency => format!("{name}<={b:.2}ms"),
                _ => format!("{name}<={b:.1}M"),
            };
            Scenario {
                name: label,
                lut: lut.cloned(),
                constraints: vec![Constraint { metric, limit: b }],
            }
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
