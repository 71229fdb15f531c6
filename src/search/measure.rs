//! What the predictor promises, checked: the search's best candidates
//! re-ranked by measured validation accuracy, and simple baselines (the
//! smallest, the largest and the uniform subnets) measured the same way,
//! so that every scenario reports its gain over what a user would get
//! without a search.

use super::evolution::{Candidate, Efficiency, Measured, SearchResult};
use super::scenario::Scenario;
use crate::nn::{OfaBackend, Supernet};
use crate::space::{Arch, Space};
use crate::train::{EvalConfig, EvalData, EvalResult, evaluate};
use std::collections::HashMap;

/// Measures subnets of one supernet (BN recalibrated on the calibration
/// images, then evaluated), once each: results are cached by subnet.
pub struct Measurer<'a, B: OfaBackend> {
    net: &'a Supernet<B>,
    val: &'a EvalData,
    test: Option<&'a EvalData>,
    cfg: EvalConfig,
    device: B::Device,
    cache: HashMap<(Arch, bool), EvalResult>,
    /// Evaluations run (cache misses), for reports.
    pub evaluations: usize,
}

impl<'a, B: OfaBackend> Measurer<'a, B> {
    pub fn new(
        net: &'a Supernet<B>,
        val: &'a EvalData,
        test: Option<&'a EvalData>,
        cfg: EvalConfig,
        device: B::Device,
    ) -> Self {
        Measurer {
            net,
            val,
            test,
            cfg,
            device,
            cache: HashMap::new(),
            evaluations: 0,
        }
    }

    fn run(&mut self, arch: &Arch, test: bool) -> anyhow::Result<EvalResult> {
        // Skipped blocks do not change the network.
        let key = (arch.clone().canonical(&self.net.space), test);
        if let Some(r) = self.cache.get(&key) {
            return Ok(*r);
        }
        let data = match (test, self.test) {
            (false, _) => self.val,
            (true, Some(t)) => t,
            (true, None) => anyhow::bail!("no test split to measure on"),
        };
        let r = evaluate(
            self.net,
            arch,
            data,
            &self.cfg,
            &self.device,
            &mut |_, _| {},
        )?;
        self.evaluations += 1;
        self.cache.insert(key, r);
        Ok(r)
    }

    /// Takes validation results already measured the same way (the rows
    /// of an accuracy table built with this measurer's data and settings):
    /// they are not measured again.
    pub fn prefill(&mut self, rows: impl IntoIterator<Item = (Arch, EvalResult)>) {
        for (a, r) in rows {
            self.cache.insert((a.canonical(&self.net.space), false), r);
        }
    }

    /// Validation top-1 (and top-5, loss) of a subnet.
    pub fn val(&mut self, arch: &Arch) -> anyhow::Result<EvalResult> {
        self.run(arch, false)
    }

    /// Test-split result of a subnet (when a test split was given).
    pub fn test(&mut self, arch: &Arch) -> anyhow::Result<Option<EvalResult>> {
        if self.test.is_none() {
            return Ok(None);
        }
        self.run(arch, true).map(Some)
    }

    /// Sets the supernet's BN statistics for `arch` from the calibration
    /// images (as every measurement does), e.g. before extracting it.
    pub fn recalibrate(&self, arch: &Arch) -> anyhow::Result<()> {
        crate::train::recalibrate(self.net, arch, self.val, self.cfg.calib_batch, &self.device)
    }

    pub fn has_test(&self) -> bool {
        self.test.is_some()
    }
}

/// The `k` best predicted distinct subnets a search scored (all meet the
/// scenario's constraints).
pub fn top_candidates(result: &SearchResult, space: &Space, k: usize) -> Vec<Candidate> {
    let mut pool: Vec<&Candidate> = result.visited.iter().collect();
    pool.push(&result.best);
    pool.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
    let mut seen = std::collections::HashSet::new();
    pool.into_iter()
        .filter(|c| seen.insert(c.arch.clone().canonical(space)))
        .take(k)
        .cloned()
        .collect()
}

/// Re-ranks a search's `k` best predicted candidates by measured
/// validation top-1 and makes the best measured one the result; every
/// candidate's prediction and measurement is kept in `reranked`.
pub fn rerank<B: OfaBackend>(
    result: &mut SearchResult,
    k: usize,
    m: &mut Measurer<'_, B>,
) -> anyhow::Result<()> {
    if k == 0 {
        return Ok(());
    }
    let mut out = Vec::new();
    for c in top_candidates(result, &m.net.space, k) {
        let val = m.val(&c.arch)?;
        out.push(Measured {
            name: String::new(),
            candidate: c,
            val,
            test: None,
        });
    }
    // Ties go to the better prediction (the earlier one).
    let best = out
        .iter()
        .enumerate()
        .max_by(|(i, a), (j, b)| a.val.top1.total_cmp(&b.val.top1).then(j.cmp(i)))
        .map(|(i, _)| i)
        .expect("at least the search's best");
    result.best = out[best].candidate.clone();
    result.reranked = out;
    result.chosen_from = "measured".into();
    Ok(())
}

/// Returns a measured baseline instead of the re-ranked choice when it
/// measured better on validation: the user never gets a subnet that a
/// simple choice under the same budget beats on the data it was chosen on.
/// `chosen_from` says which happened.
pub fn prefer_better_baseline(result: &mut SearchResult) {
    let Some(b) = best_baseline(result).cloned() else {
        return;
    };
    let chosen = result
        .reranked
        .iter()
        .find(|m| m.candidate.arch == result.best.arch)
        .map(|m| m.val.top1);
    if chosen.is_some_and(|v| b.val.top1 > v) {
        result.best = b.candidate.clone();
        result.chosen_from = b.name.clone();
    }
}

/// Every uniform subnet of a space: all blocks one kernel and expand
/// ratio, all elastic stages one depth, one resolution. Named
/// `uniform-k{k}-e{e}-d{d}-r{r}`; the smallest and largest are named so.
pub fn uniform_subnets(space: &Space) -> Vec<(String, Arch)> {
    let mut out = Vec::new();
    let (min, max) = (Arch::min(space), Arch::max(space));
    for &r in &space.resolutions {
        for &k in &space.kernel_choices {
            for &e in &space.expand_choices {
                for &d in &space.depth_choices {
                    let mut a = Arch::max(space).with_resolution(r);
                    a.ks.iter_mut().for_each(|x| *x = k);
                    a.e.iter_mut().for_each(|x| *x = e);
                    for (s, st) in space.stages.iter().enumerate() {
                        if st.elastic_depth {
                            a.d[s] = d.min(st.max_depth);
                        }
                    }
                    let a = a.canonical(space);
                    let name = if a == min {
                        "smallest".to_string()
                    } else if a == max.clone().canonical(space) {
                        "largest".to_string()
                    } else {
                        format!("uniform-k{k}-e{e}-d{d}-r{r}")
                    };
                    out.push((name, a));
                }
            }
        }
    }
    out
}

/// The uniform subnets a scenario admits that no other admitted uniform
/// subnet dominates (at least as large in k, e, d and r, larger in one),
/// plus the smallest: the candidates for the best simple choice under the
/// budget. (A dominated subnet uses a subset of a larger one's weights;
/// measuring only the frontier keeps the cost of the comparison low.)
pub fn baseline_frontier(
    space: &Space,
    scenario: &Scenario,
    eff: &Efficiency,
) -> Vec<(String, Arch)> {
    let feasible: Vec<(String, Arch)> = uniform_subnets(space)
        .into_iter()
        .filter(|(_, a)| scenario.admits(eff, a))
        .collect();
    let dims = |a: &Arch| [a.ks[0], a.e[0], a.d.iter().copied().max().unwrap_or(0), a.r];
    let dominated = |a: &Arch| {
        feasible.iter().any(|(_, b)| {
            let (x, y) = (dims(a), dims(b));
            x != y && x.iter().zip(&y).all(|(p, q)| p <= q)
        })
    };
    feasible
        .iter()
        .filter(|(n, a)| n == "smallest" || !dominated(a))
        .cloned()
        .collect()
}

/// Measures a scenario's baselines on validation, and the best of them
/// (by validation top-1) on the test split too.
pub fn measure_baselines<B: OfaBackend>(
    result: &mut SearchResult,
    scenario: &Scenario,
    predict: &dyn Fn(&[Arch]) -> Vec<f64>,
    m: &mut Measurer<'_, B>,
) -> anyhow::Result<()> {
    let space = m.net.space.clone();
    let eff = Efficiency::new(&space, scenario.lut.as_ref())?;
    let frontier = baseline_frontier(&space, scenario, &eff);
    let archs: Vec<Arch> = frontier.iter().map(|(_, a)| a.clone()).collect();
    let predicted = predict(&archs);
    let mut out = Vec::new();
    for ((name, arch), p) in frontier.into_iter().zip(predicted) {
        let val = m.val(&arch)?;
        out.push(Measured {
            name,
            candidate: eff.candidate(arch, p),
            val,
            test: None,
        });
    }
    if let Some(best) = out
        .iter_mut()
        .max_by(|a, b| a.val.top1.total_cmp(&b.val.top1))
    {
        best.test = m.test(&best.candidate.arch)?;
    }
    result.baselines = out;
    Ok(())
}

/// The measurement of the returned subnet (a re-ranked candidate or a
/// baseline), if it was measured.
pub fn measured_best(result: &SearchResult) -> Option<&Measured> {
    result
        .reranked
        .iter()
        .chain(&result.baselines)
        .find(|m| m.candidate.arch == result.best.arch)
}

/// The baseline with the best validation top-1, if any.
pub fn best_baseline(result: &SearchResult) -> Option<&Measured> {
    result
        .baselines
        .iter()
        .max_by(|a, b| a.val.top1.total_cmp(&b.val.top1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::evolution::{Constraint, Metric};
    use crate::space::preset;

    #[test]
    fn uniform_subnets_cover_the_grid_and_name_the_extremes() {
        let s = preset("tiny").unwrap();
        let u = uniform_subnets(&s);
        assert_eq!(u.len(), 3 * 3 * 3 * 3);
        let names: Vec<&str> = u.iter().map(|x| x.0.as_str()).collect();
        assert!(names.contains(&"smallest") && names.contains(&"largest"));
        assert!(names.contains(&"uniform-k5-e4-d2-r16"));
    }

    #[test]
    fn the_frontier_keeps_only_undominated_feasible_subnets() {
        let s = preset("tiny").unwrap();
        let eff = Efficiency::new(&s, None).unwrap();
        let mid = eff.value(&Arch::max(&s), Metric::Flops).unwrap() * 0.4;
        let sc = Scenario {
            name: "f".into(),
            lut: None,
            constraints: vec![Constraint {
                metric: Metric::Flops,
                limit: mid,
            }],
        };
        let f = baseline_frontier(&s, &sc, &eff);
        assert!(f.iter().any(|(n, _)| n == "smallest"));
        assert!(f.iter().all(|(_, a)| sc.admits(&eff, a)));
        // No member dominates another (apart from the smallest).
        let key = |a: &Arch| [a.ks[0], a.e[0], a.d[0], a.r];
        for (n, a) in &f {
            for (_, b) in &f {
                let (x, y) = (key(a), key(b));
                if n != "smallest" && x != y {
                    assert!(!x.iter().zip(&y).all(|(p, q)| p <= q), "{x:?} ≤ {y:?}");
                }
            }
        }
        // Every feasible uniform subnet is dominated by (or is) a member.
        for (_, a) in uniform_subnets(&s)
            .iter()
            .filter(|(_, a)| sc.admits(&eff, a))
        {
            assert!(
                f.iter()
                    .any(|(_, b)| key(a).iter().zip(&key(b)).all(|(p, q)| p <= q))
            );
        }
    }
}
