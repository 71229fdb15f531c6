//! What a subnet costs: the constraint metrics (latency from a device's
//! lookup table, FLOPs, parameters), constraints on them, and their fast
//! evaluation for the search's inner loop.

use super::evolution::Candidate;
use super::latency::{FastCost, LatencyTable};
use crate::space::{Arch, Layer, Space};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An efficiency measure of a subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Milliseconds, from a latency lookup table.
    Latency,
    /// Multiply-adds, in millions.
    Flops,
    /// Parameters, in millions.
    Params,
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Latency => "latency",
            Metric::Flops => "flops",
            Metric::Params => "params",
        })
    }
}

impl Metric {
    pub fn unit(&self) -> &'static str {
        match self {
            Metric::Latency => "ms",
            Metric::Flops => "MFLOPs",
            Metric::Params => "M params",
        }
    }
}

/// `metric <= limit` (latency in ms, FLOPs and params in millions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    pub metric: Metric,
    pub limit: f64,
}

impl FromStr for Constraint {
    type Err = anyhow::Error;
    /// `latency<=4ms`, `latency<=800us`, `flops<=30M`, `flops<=1.2G`,
    /// `params<=500K`, `params<=1.5M` (a bare number is ms / millions).
    fn from_str(s: &str) -> anyhow::Result<Constraint> {
        let bad = || {
            anyhow::anyhow!(
                "constraint '{s}': expected METRIC<=VALUE, e.g. latency<=4ms, flops<=30M, params<=1.5M"
            )
        };
        let (name, value) = s.split_once("<=").ok_or_else(bad)?;
        let metric = match name.trim().to_ascii_lowercase().as_str() {
            "latency" | "lat" => Metric::Latency,
            "flops" | "macs" | "mflops" => Metric::Flops,
            "params" | "parameters" => Metric::Params,
            _ => return Err(bad()),
        };
        let v = value.trim().to_ascii_lowercase();
        let split = v
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
            .unwrap_or(v.len());
        let (num, unit) = v.split_at(split);
        let x: f64 = num.parse().map_err(|_| bad())?;
        let scale = match (metric, unit.trim()) {
            (Metric::Latency, "" | "ms") => 1.0,
            (Metric::Latency, "us" | "µs") => 1e-3,
            (Metric::Latency, "s") => 1e3,
            (Metric::Flops | Metric::Params, "" | "m" | "mflops") => 1.0,
            (Metric::Flops | Metric::Params, "k") => 1e-3,
            (Metric::Flops | Metric::Params, "g" | "gflops") => 1e3,
            _ => return Err(bad()),
        };
        if !(x > 0.0) {
            return Err(bad());
        }
        Ok(Constraint {
            metric,
            limit: x * scale,
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}<={}{}",
            self.metric,
            self.limit,
            match self.metric {
                Metric::Latency => "ms",
                _ => "M",
            }
        )
    }
}

/// Efficiency of subnets: FLOPs and params always, latency with a LUT.
pub struct Efficiency {
    flops: FastCost,
    params: FastCost,
    latency: Option<FastCost>,
}

impl Efficiency {
    pub fn new(space: &Space, lut: Option<&LatencyTable>) -> anyhow::Result<Efficiency> {
        let flops = FastCost::new(space, &|l: &Layer| Ok(l.cost().macs as f64 / 1e6))?;
        let params = FastCost::new(space, &|l: &Layer| Ok(l.cost().params as f64 / 1e6))?;
        let latency = match lut {
            Some(t) => {
                if t.space.blocks() != space.blocks() || t.space.resolutions != space.resolutions {
                    anyhow::bail!(
                        "the latency table was measured for space '{}', not '{}'",
                        t.space.name,
                        space.name
                    );
                }
                // What LatencyTable::predict computes, tabulated.
                let fast = FastCost::new(space, &|l: &Layer| t.layer_ms(l))?;
                Some(fast.plus(t.base_ms))
            }
            None => None,
        };
        Ok(Efficiency {
            flops,
            params,
            latency,
        })
    }

    /// One metric of a subnet (latency only with a table).
    pub fn value(&self, arch: &Arch, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Flops => Some(self.flops.cost(arch)),
            Metric::Params => Some(self.params.cost(arch)),
            Metric::Latency => self.latency.as_ref().map(|l| l.cost(arch)),
        }
    }

    pub fn has_latency(&self) -> bool {
        self.latency.is_some()
    }

    /// A subnet with its efficiency and a (predicted) accuracy.
    pub fn candidate(&self, arch: Arch, accuracy: f64) -> Candidate {
        let (f, p, l) = self.measure(&arch);
        Candidate {
            arch,
            accuracy,
            mflops: f,
            mparams: p,
            latency_ms: l,
        }
    }

    pub(crate) fn measure(&self, arch: &Arch) -> (f64, f64, Option<f64>) {
        (
            self.flops.cost(arch),
            self.params.cost(arch),
            self.latency.as_ref().map(|l| l.cost(arch)),
        )
    }

    /// Whether a subnet meets every constraint (latency only with a table).
    pub fn meets(&self, arch: &Arch, cs: &[Constraint]) -> bool {
        let (f, p, l) = self.measure(arch);
        cs.iter().all(|c| match c.metric {
            Metric::Flops => f <= c.limit,
            Metric::Params => p <= c.limit,
            Metric::Latency => l.is_some_and(|l| l <= c.limit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_with_units() {
        let c: Constraint = "latency<=4ms".parse().unwrap();
        assert_eq!((c.metric, c.limit), (Metric::Latency, 4.0));
        let c: Constraint = "latency<=800us".parse().unwrap();
        assert!((c.limit - 0.8).abs() < 1e-12);
        let c: Constraint = "flops<=1.2G".parse().unwrap();
        assert_eq!((c.metric, c.limit), (Metric::Flops, 1200.0));
        let c: Constraint = "params<=500K".parse().unwrap();
        assert!((c.limit - 0.5).abs() < 1e-12);
        assert!("speed<=3".parse::<Constraint>().is_err());
        assert!("flops<=abc".parse::<Constraint>().is_err());
    }

    /// The search's tabulated latency is the table's own prediction,
    /// per-call cost and calibrated scale included.
    #[test]
    fn search_latency_equals_the_table_prediction() {
        use crate::search::latency::{LatencyTable, ProfileConfig, Timing};
        use rand::SeedableRng;
        let s = crate::space::preset("tiny").unwrap();
        let entries = crate::search::latency::distinct_layers(&s)
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let t = Timing {
                    median_ms: 0.01 * (i % 7 + 1) as f64,
                    ..Timing::default()
                };
                (l.key(), t)
            })
            .collect();
        let lut = LatencyTable {
            format: "ofa-lut/1".into(),
            device: "test".into(),
            backend: "test".into(),
            threads: 1,
            runtime: "ofa".into(),
            runtime_version: String::new(),
            base_ms: 0.25,
            scale: 1.3,
            calibration_subnets: 5,
            per_layer_ms: 0.02,
            per_mega_element_ms: 0.7,
            calibration_fits: None,
            config: ProfileConfig::default(),
            space: s.clone(),
            entries,
            validation: None,
            validation_at: Default::default(),
        };
        let eff = Efficiency::new(&s, Some(&lut)).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let a = Arch::sample(&s, &mut rng);
            let want = lut.predict(&s, &a).unwrap();
            let got = eff.value(&a, Metric::Latency).unwrap();
            assert!((got - want).abs() < 1e-9, "{a}: {got} vs {want}");
        }
    }
}
