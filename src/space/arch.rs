//! One sub-network of a space: per-block kernel size and expand ratio,
//! per-stage depth, and the input resolution.

use super::{BlockLayout, Space};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fmt;

/// An architecture. `ks` and `e` have one entry per elastic block of the
/// space (skipped blocks included, as in the reference), `d` one per stage.
///
/// Values of skipped blocks carry no meaning; [`Arch::canonical`] sets them
/// to the smallest choices so that equal subnets compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    pub ks: Vec<usize>,
    pub e: Vec<usize>,
    pub d: Vec<usize>,
    pub r: usize,
}

/// Serialised in the reference form `{"ks", "e", "d", "r"}`; reading it back
/// checks only the shape, [`Arch::from_json`] validates against a space.
impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Reference<'a> {
            ks: &'a [usize],
            e: &'a [usize],
            d: &'a [usize],
            r: usize,
        }
        Reference {
            ks: &self.ks,
            e: &self.e,
            d: &self.d,
            r: self.r,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Reference {
            ks: Vec<usize>,
            e: Vec<usize>,
            d: Vec<usize>,
            r: usize,
        }
        let r = Reference::deserialize(d)?;
        Ok(Arch {
            ks: r.ks,
            e: r.e,
            d: r.d,
            r: r.r,
        })
    }
}

/// Why an architecture does not belong to a space.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArchError {
    #[error("arch field '{field}' has {got} entries, space '{space}' needs {expected}")]
    Length {
        field: &'static str,
        got: usize,
        expected: usize,
        space: String,
    },
    #[error(
        "arch field '{field}' = {value} is not allowed in space '{space}'; allowed: {allowed:?}"
    )]
    Value {
        field: String,
        value: usize,
        allowed: Vec<usize>,
        space: String,
    },
    #[error("arch was made for space '{arch_space}', not '{space}'")]
    WrongSpace { arch_space: String, space: String },
    #[error("not an architecture: {0}")]
    Format(String),
}

/// A subset of a space's choices to sample from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choices {
    pub kernels: Vec<usize>,
    pub expands: Vec<usize>,
    pub depths: Vec<usize>,
    pub resolutions: Vec<usize>,
}

impl Choices {
    pub fn all(space: &Space) -> Self {
        Choices {
            kernels: space.kernel_choices.clone(),
            expands: space.expand_choices.clone(),
            depths: space.depth_choices.clone(),
            resolutions: space.resolutions.clone(),
        }
    }
}

/// Readable JSON form of one block (active blocks only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockChoice {
    pub k: usize,
    pub e: usize,
}

/// Readable JSON form of one stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageChoice {
    pub depth: usize,
    pub blocks: Vec<BlockChoice>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadableArch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    space: Option<String>,
    resolution: usize,
    stages: Vec<StageChoice>,
}

impl Arch {
    /// The largest subnet: largest kernel, expand ratio, depth and resolution.
    pub fn max(space: &Space) -> Arch {
        let n = space.num_blocks();
        Arch {
            ks: vec![space.max_kernel(); n],
            e: vec![space.max_expand(); n],
            d: space.stages.iter().map(|s| s.max_depth).collect(),
            r: *space.resolutions.last().expect("validated"),
        }
    }

    /// The smallest subnet.
    pub fn min(space: &Space) -> Arch {
        let n = space.num_blocks();
        Arch {
            ks: vec![space.kernel_choices[0]; n],
            e: vec![space.expand_choices[0]; n],
            d: (0..space.stages.len())
                .map(|s| space.stage_depths(s)[0])
                .collect(),
            r: space.resolutions[0],
        }
        .canonical(space)
    }

    /// Uniform sampling as in the reference: every block's k and e, every
    /// stage's d and the resolution drawn independently; skipped blocks
    /// canonical.
    pub fn sample<R: Rng + ?Sized>(space: &Space, rng: &mut R) -> Arch {
        Self::sample_from(space, &Choices::all(space), rng)
    }

    /// Like [`Arch::sample`], with the values drawn for skipped blocks kept
    /// (the reference search's `random_sample`): the same draws, so the
    /// same subnet as `sample` with the same RNG state.
    pub fn sample_all<R: Rng + ?Sized>(space: &Space, rng: &mut R) -> Arch {
        Self::draw(space, &Choices::all(space), rng)
    }

    /// A subnet whose choices lean towards the small or the large end by
    /// `size` ∈ [0, 1]: each block's k and e and each stage's d is the
    /// i-th of its n choices with the binomial probability
    /// `C(n−1, i) · size^i · (1 − size)^(n−1−i)`; the resolution is uniform.
    /// With `size` itself uniform, subnets spread over the whole cost range
    /// instead of clustering around the middle as uniform draws do.
    pub fn sample_sized<R: Rng + ?Sized>(space: &Space, size: f64, rng: &mut R) -> Arch {
        let size = size.clamp(0.0, 1.0);
        let pick = |rng: &mut R, v: &[usize]| -> usize {
            // Index ~ Binomial(n − 1, size).
            let i = (1..v.len()).filter(|_| rng.random::<f64>() < size).count();
            v[i]
        };
        let n = space.num_blocks();
        let ks = (0..n).map(|_| pick(rng, &space.kernel_choices)).collect();
        let e = (0..n).map(|_| pick(rng, &space.expand_choices)).collect();
        let d = (0..space.stages.len())
            .map(|s| {
                if space.stages[s].elastic_depth {
                    pick(rng, &space.stage_depths(s))
                } else {
                    space.stages[s].max_depth
                }
            })
            .collect();
        let r = space.resolutions[rng.random_range(0..space.resolutions.len())];
        Arch { ks, e, d, r }.canonical(space)
    }

    /// Uniform sampling restricted to some choices (a progressive-shrinking
    /// phase). Fixed-depth stages keep their depth.
    pub fn sample_from<R: Rng + ?Sized>(space: &Space, choices: &Choices, rng: &mut R) -> Arch {
        Self::draw(space, choices, rng).canonical(space)
    }

    fn draw<R: Rng + ?Sized>(space: &Space, choices: &Choices, rng: &mut R) -> Arch {
        let n = space.num_blocks();
        let pick = |rng: &mut R, v: &[usize]| v[rng.random_range(0..v.len())];
        let ks = (0..n).map(|_| pick(rng, &choices.kernels)).collect();
        let e = (0..n).map(|_| pick(rng, &choices.expands)).collect();
        let d = (0..space.stages.len())
            .map(|s| {
                if space.stages[s].elastic_depth {
                    pick(rng, &choices.depths)
                } else {
                    space.stages[s].max_depth
                }
            })
            .collect();
        let r = pick(rng, &choices.resolutions);
        Arch { ks, e, d, r }
    }

    /// The same subnet with skipped blocks set to the smallest choices.
    pub fn canonical(mut self, space: &Space) -> Arch {
        for b in space.blocks() {
            if b.stage < self.d.len() && b.depth_pos >= self.d[b.stage] && b.index < self.ks.len() {
                self.ks[b.index] = space.kernel_choices[0];
                self.e[b.index] = space.expand_choices[0];
            }
        }
        self
    }

    pub fn with_resolution(mut self, r: usize) -> Arch {
        self.r = r;
        self
    }

    /// Whether a block takes part in this subnet.
    pub fn is_active(&self, block: &BlockLayout) -> bool {
        block.depth_pos < self.d[block.stage]
    }

    /// The active blocks with their kernel size and expand ratio.
    pub fn active_blocks(&self, space: &Space) -> Vec<(BlockLayout, usize, usize)> {
        space
            .blocks()
            .into_iter()
            .filter(|b| self.is_active(b))
            .map(|b| {
                let (k, e) = (self.ks[b.index], self.e[b.index]);
                (b, k, e)
            })
            .collect()
    }

    /// Checks every field against the space; the error names the field and
    /// lists what is allowed.
    pub fn validate(&self, space: &Space) -> Result<(), ArchError> {
        let n = space.num_blocks();
        let length = |field, got, expected| {
            if got == expected {
                Ok(())
            } else {
                Err(ArchError::Length {
                    field,
                    got,
                    expected,
                    space: space.name.clone(),
                })
            }
        };
        length("ks", self.ks.len(), n)?;
        length("e", self.e.len(), n)?;
        length("d", self.d.len(), space.stages.len())?;
        let check = |field: String, value: usize, allowed: &[usize]| {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(ArchError::Value {
                    field,
                    value,
                    allowed: allowed.to_vec(),
                    space: space.name.clone(),
                })
            }
        };
        for (s, &d) in self.d.iter().enumerate() {
            check(format!("d[{s}]"), d, &space.stage_depths(s))?;
        }
        for b in space.blocks().iter().filter(|b| self.is_active(b)) {
            check(
                format!("ks[{}]", b.index),
                self.ks[b.index],
                &space.kernel_choices,
            )?;
            check(
                format!("e[{}]", b.index),
                self.e[b.index],
                &space.expand_choices,
            )?;
        }
        check("r".into(), self.r, &space.resolutions)
    }

    /// Readable JSON: `{"space", "resolution", "stages": [{"depth", "blocks": [{"k","e"}]}]}`.
    pub fn to_json(&self, space: &Space) -> Value {
        let blocks = space.blocks();
        let stages: Vec<StageChoice> = (0..space.stages.len())
            .map(|s| StageChoice {
                depth: self.d[s],
                blocks: blocks
                    .iter()
                    .filter(|b| b.stage == s && self.is_active(b))
                    .map(|b| BlockChoice {
                        k: self.ks[b.index],
                        e: self.e[b.index],
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_value(ReadableArch {
            space: Some(space.name.clone()),
            resolution: self.r,
            stages,
        })
        .expect("arch serializes")
    }

    /// The reference form `{"ks": [..], "e": [..], "d": [..], "r": R}`.
    pub fn to_reference_json(&self) -> Value {
        json!({ "ks": self.ks, "e": self.e, "d": self.d, "r": self.r })
    }

    /// Reads either JSON form, validates it against `space`.
    pub fn from_json(value: &Value, space: &Space) -> Result<Arch, ArchError> {
        let arch = if value.get("ks").is_some() {
            Self::from_reference(value, space)?
        } else if value.get("stages").is_some() {
            Self::from_readable(value, space)?
        } else {
            return Err(ArchError::Format(
                "expected {\"ks\",\"e\",\"d\",\"r\"} or {\"resolution\",\"stages\"}".into(),
            ));
        };
        arch.validate(space)?;
        Ok(arch.canonical(space))
    }

    fn from_reference(value: &Value, space: &Space) -> Result<Arch, ArchError> {
        let ints = |field: &str| -> Result<Vec<usize>, ArchError> {
            let v = value
                .get(field)
                .ok_or_else(|| ArchError::Format(format!("missing field '{field}'")))?;
            match v {
                Value::Array(items) => items.iter().map(|x| as_usize(x, field)).collect(),
                other => Ok(vec![as_usize(other, field)?]),
            }
        };
        let ks = ints("ks")?;
        let e = ints("e")?;
        let mut d = ints("d")?;
        let r = match value.get("r") {
            Some(Value::Array(items)) if items.len() == 1 => as_usize(&items[0], "r")?,
            Some(v) => as_usize(v, "r")?,
            None => return Err(ArchError::Format("missing field 'r'".into())),
        };
        // The reference clamps fixed-depth stages (ProxylessNAS' last) and
        // some tools omit them from `d`.
        let elastic = space.stages.iter().filter(|s| s.elastic_depth).count();
        if d.len() == elastic && elastic < space.stages.len() {
            let mut it = d.into_iter();
            d = space
                .stages
                .iter()
                .map(|s| {
                    if s.elastic_depth {
                        it.next().unwrap_or(0)
                    } else {
                        s.max_depth
                    }
                })
                .collect();
        } else if d.len() == space.stages.len() {
            for (s, st) in space.stages.iter().enumerate() {
                if !st.elastic_depth {
                    d[s] = st.max_depth;
                }
            }
        }
        Ok(Arch { ks, e, d, r })
    }

    fn from_readable(value: &Value, space: &Space) -> Result<Arch, ArchError> {
        let ra: ReadableArch =
            serde_json::from_value(value.clone()).map_err(|e| ArchError::Format(e.to_string()))?;
        if let Some(name) = &ra.space
            && name != &space.name
        {
            return Err(ArchError::WrongSpace {
                arch_space: name.clone(),
                space: space.name.clone(),
            });
        }
        if ra.stages.len() != space.stages.len() {
            return Err(ArchError::Length {
                field: "stages",
                got: ra.stages.len(),
                expected: space.stages.len(),
                space: space.name.clone(),
            });
        }
        let mut arch = Arch::min(space);
        arch.r = ra.resolution;
        let mut first = 0;
        for (s, st) in ra.stages.iter().enumerate() {
            if st.blocks.len() != st.depth {
                return Err(ArchError::Format(format!(
                    "stage {s}: depth {} but {} blocks listed",
                    st.depth,
                    st.blocks.len()
                )));
            }
            if st.depth > space.stages[s].max_depth {
                return Err(ArchError::Value {
                    field: format!("stages[{s}].depth"),
                    value: st.depth,
                    allowed: space.stage_depths(s),
                    space: space.name.clone(),
                });
            }
            arch.d[s] = st.depth;
            for (i, b) in st.blocks.iter().enumerate() {
                arch.ks[first + i] = b.k;
                arch.e[first + i] = b.e;
            }
            first += space.stages[s].max_depth;
        }
        Ok(arch)
    }

    /// Resolves a CLI argument: `max`, `min`, or a JSON file in either form.
    pub fn parse_arg(arg: &str, space: &Space) -> anyhow::Result<Arch> {
        match arg {
            "max" => Ok(Arch::max(space)),
            "min" => Ok(Arch::min(space)),
            path => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{path}: cannot read architecture: {e}"))?;
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{path}: not JSON: {e}"))?;
                // An arch file written by `ofa search` wraps the arch.
                let value = value.get("arch").cloned().unwrap_or(value);
                Arch::from_json(&value, space).map_err(|e| anyhow::anyhow!("{path}: {e}"))
            }
        }
    }
}

fn as_usize(v: &Value, field: &str) -> Result<usize, ArchError> {
    v.as_u64()
        .map(|x| x as usize)
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as usize)
        })
        .ok_or_else(|| {
            ArchError::Format(format!(
                "field '{field}': {v} is not a non-negative integer"
            ))
        })
}

impl fmt::Display for Arch {
    /// Compact one-line form, e.g. `r28 d[2,3] ks[3,5,..] e[3,6,..]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "r{} d[{}] ks[{}] e[{}]",
            self.r,
            join(&self.d),
            join(&self.ks),
            join(&self.e)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::preset;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sampling_is_seeded_and_valid() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let a = Arch::sample(&s, &mut ChaCha8Rng::seed_from_u64(7));
        let b = Arch::sample(&s, &mut ChaCha8Rng::seed_from_u64(7));
        let c = Arch::sample(&s, &mut ChaCha8Rng::seed_from_u64(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        a.validate(&s).unwrap();
        Arch::max(&s).validate(&s).unwrap();
        Arch::min(&s).validate(&s).unwrap();
    }

    #[test]
    fn both_json_forms_round_trip() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let a = Arch::sample(&s, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(Arch::from_json(&a.to_json(&s), &s).unwrap(), a);
        assert_eq!(Arch::from_json(&a.to_reference_json(), &s).unwrap(), a);
    }

    #[test]
    fn reference_form_is_accepted() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let text = format!(
            "{{\"ks\": {:?}, \"e\": {:?}, \"d\": [4,4,4,4,4], \"r\": [224]}}",
            vec![7; 20],
            vec![6; 20]
        );
        let a = Arch::from_json(&serde_json::from_str(&text).unwrap(), &s).unwrap();
        assert_eq!(a, Arch::max(&s));
    }

    #[test]
    fn errors_name_the_field_and_choices() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let mut a = Arch::max(&s);
        a.ks[4] = 9;
        let e = a.validate(&s).unwrap_err().to_string();
        assert!(e.contains("ks[4]") && e.contains("[3, 5, 7]"), "{e}");
        let mut a = Arch::max(&s);
        a.d.pop();
        assert!(
            a.validate(&s)
                .unwrap_err()
                .to_string()
                .contains("'d' has 4")
        );
        let mut a = Arch::max(&s);
        a.r = 100;
        assert!(
            a.validate(&s)
                .unwrap_err()
                .to_string()
                .contains("'r' = 100")
        );
        let t = preset("tiny").unwrap();
        let e = Arch::from_json(&Arch::max(&t).to_json(&t), &s).unwrap_err();
        assert!(matches!(e, ArchError::WrongSpace { .. }), "{e}");
    }

    #[test]
    fn proxyless_reference_depths_accept_five_or_six() {
        let s = preset("ofa-proxyless-w1.3").unwrap();
        let n = s.num_blocks();
        assert_eq!(n, 21);
        for d in [json!([4, 4, 4, 4, 4]), json!([4, 4, 4, 4, 4, 4])] {
            let v = json!({"ks": vec![7; n], "e": vec![6; n], "d": d, "r": 224});
            assert_eq!(Arch::from_json(&v, &s).unwrap(), Arch::max(&s));
        }
    }

    #[test]
    fn canonical_ignores_skipped_blocks() {
        let s = preset("tiny").unwrap();
        let mut a = Arch::max(&s);
        a.d = vec![1, 1, 1];
        let mut b = a.clone();
        b.ks[1] = 3;
        b.e[2] = 4;
        assert_ne!(a, b);
        assert_eq!(a.canonical(&s), b.canonical(&s));
    }

    #[test]
    fn sized_samples_reach_both_ends_and_spread_the_cost_range() {
        use rand::{RngExt, SeedableRng};
        let s = crate::space::preset("mbv3-28-lite").unwrap();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut a0 = Arch::sample_sized(&s, 0.0, &mut r);
        a0.r = s.resolutions[0];
        assert_eq!(a0, Arch::min(&s));
        let mut a1 = Arch::sample_sized(&s, 1.0, &mut r);
        a1.r = *s.resolutions.last().unwrap();
        assert_eq!(a1, Arch::max(&s));
        let sd = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let fixed = |mut a: Arch| {
            a.r = 28;
            a.cost(&s).mflops()
        };
        let uniform: Vec<f64> = (0..400).map(|_| fixed(Arch::sample(&s, &mut r))).collect();
        let spread: Vec<f64> = (0..400)
            .map(|_| {
                let size = r.random::<f64>();
                fixed(Arch::sample_sized(&s, size, &mut r))
            })
            .collect();
        assert!(
            sd(&spread) > 1.5 * sd(&uniform),
            "{} vs {}",
            sd(&spread),
            sd(&uniform)
        );
    }
}
