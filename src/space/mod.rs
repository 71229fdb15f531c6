//! The search space as plain data: what a supernet can become.
//!
//! A [`Space`] is a serializable description (TOML/JSON) of an elastic
//! MobileNet-style network: a fixed first conv and first block, elastic stages of
//! MBConv blocks, and a head. Nothing here touches tensors, so search,
//! counting, FLOPs and prediction run without a network in memory.

mod arch;
mod cost;
mod presets;

pub use arch::{Arch, ArchError, BlockChoice, Choices, StageChoice};
pub use cost::{ConvLayer, Cost, Layer, MbConvLayer, layers};
pub use presets::{PRESET_NAMES, preset};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Non-linearities used by the spaces of the reference implementation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Relu6,
    #[serde(alias = "hswish", alias = "h-swish")]
    HSwish,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::HSwish => "h_swish",
        })
    }
}

/// The first convolution (conv + BN + activation).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirstConvSpec {
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub act: Activation,
}

/// The fixed (non-elastic) first MBConv block, expand ratio 1.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirstBlockSpec {
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub act: Activation,
    #[serde(default)]
    pub se: bool,
}

/// One elastic stage: up to `max_depth` MBConv blocks of the same width.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub width: usize,
    pub stride: usize,
    pub act: Activation,
    #[serde(default)]
    pub se: bool,
    pub max_depth: usize,
    /// A stage whose depth is fixed at `max_depth` (the ProxylessNAS last
    /// stage) still has elastic kernel and expand ratio.
    #[serde(default = "yes")]
    pub elastic_depth: bool,
}

fn yes() -> bool {
    true
}

/// Layers after the last stage.
///
/// `pre_pool`: 1×1 conv + BN + act before global pooling (MobileNetV3's
/// `final_expand_layer`, ProxylessNAS's `feature_mix_layer`).
/// `post_pool`: 1×1 conv without BN + act after pooling (MobileNetV3's
/// `feature_mix_layer`). Then dropout and the linear classifier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    pub pre_pool: Option<usize>,
    pub post_pool: Option<usize>,
    pub act: Activation,
}

/// An elastic search space. Widths are base widths: the effective width is
/// `make_divisible(width * width_mult, channel_divisor)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Space {
    pub name: String,
    pub in_channels: usize,
    pub num_classes: usize,
    pub width_mult: f64,
    #[serde(default = "default_divisor")]
    pub channel_divisor: usize,
    pub resolutions: Vec<usize>,
    pub kernel_choices: Vec<usize>,
    pub expand_choices: Vec<usize>,
    pub depth_choices: Vec<usize>,
    pub bn_momentum: f64,
    pub bn_eps: f64,
    pub dropout: f64,
    /// The reference's `first_conv` (`stem` in files written before the
    /// rename).
    #[serde(alias = "stem")]
    pub first_conv: FirstConvSpec,
    pub first_block: FirstBlockSpec,
    pub stages: Vec<StageSpec>,
    pub head: HeadSpec,
}

fn default_divisor() -> usize {
    8
}

/// Everything a supernet needs to know about one elastic block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// Index among the elastic blocks (0-based; the reference calls it
    /// `blocks.{index + 1}`).
    pub index: usize,
    pub stage: usize,
    /// Position within its stage; blocks with `depth_pos >= d` are skipped.
    pub depth_pos: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    pub stride: usize,
    pub act: Activation,
    pub se: bool,
    pub residual: bool,
    /// Middle width at the largest expand ratio (the stored width).
    pub max_mid: usize,
}

/// The reference `make_divisible`: round to the nearest multiple of
/// `divisor`, never below `divisor`, never more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// Output size of a convolution with "same" padding `k / 2`.
pub fn conv_out(res: usize, kernel: usize, stride: usize) -> usize {
    (res + 2 * (kernel / 2) - kernel) / stride + 1
}

/// Taps `t0..t1` of `0..k` that read inside an input side of length `len`
/// (`o·s + t − p` in `0..len`, not the zero padding) for output
/// coordinate `o` of a convolution with stride `s` and padding `p`.
#[inline(always)]
pub fn conv_taps(o: usize, s: usize, p: usize, k: usize, len: usize) -> (usize, usize) {
    let start = (o * s) as isize - p as isize;
    let t0 = (-start).max(0) as usize;
    let t1 = ((len as isize - start).min(k as isize)).max(0) as usize;
    (t0, t1.max(t0))
}

/// A space definition that cannot describe a network.
#[derive(Debug, thiserror::Error)]
#[error("search space '{space}': {problem}")]
pub struct SpaceError {
    pub space: String,
    pub problem: String,
}

impl Space {
    /// Parses a space from TOML text (the `ofa space show` format).
    pub fn from_toml(text: &str) -> Result<Space, SpaceError> {
        let space: Space = toml::from_str(text).map_err(|e| SpaceError {
            space: "<toml>".into(),
            problem: e.to_string(),
        })?;
        space.validate()?;
        Ok(space)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Space always serializes to TOML")
    }

    /// Resolves a space argument: a preset name, or a path to a TOML file.
    pub fn resolve(arg: &str) -> anyhow::Result<Space> {
        if let Some(space) = preset(arg) {
            return Ok(space);
        }
        let path = std::path::Path::new(arg);
        if !path.exists() {
            anyhow::bail!(
                "unknown search space '{arg}': not a preset ({}) and no such file",
                PRESET_NAMES.join(", ")
            );
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let space: Space = if arg.ends_with(".json") {
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a space definition: {e}", path.display()))?
        } else {
            toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a space definition: {e}", path.display()))?
        };
        space
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(space)
    }

    fn err(&self, problem: impl Into<String>) -> SpaceError {
        SpaceError {
            space: self.name.clone(),
            problem: problem.into(),
        }
    }

    /// Checks that the definition describes a buildable network.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let nonempty_sorted = |name: &str, v: &[usize]| -> Result<(), SpaceError> {
            if v.is_empty() {
                return Err(self.err(format!("{name} is empty")));
            }
            if v.contains(&0) {
                return Err(self.err(format!("{name} contains 0")));
            }
            if v.windows(2).any(|w| w[0] >= w[1]) {
                return Err(self.err(format!("{name} must be strictly increasing, got {v:?}")));
            }
            Ok(())
        };
        nonempty_sorted("resolutions", &self.resolutions)?;
        nonempty_sorted("kernel_choices", &self.kernel_choices)?;
        nonempty_sorted("expand_choices", &self.expand_choices)?;
        nonempty_sorted("depth_choices", &self.depth_choices)?;
        if let Some(k) = self.kernel_choices.iter().find(|k| *k % 2 == 0) {
            return Err(self.err(format!(
                "kernel size {k} is even; only odd kernels are supported"
            )));
        }
        if self.in_channels == 0 || self.num_classes == 0 {
            return Err(self.err("in_channels and num_classes must be positive"));
        }
        if !(self.width_mult > 0.0) {
            return Err(self.err("width_mult must be positive"));
        }
        if self.channel_divisor == 0 {
            return Err(self.err("channel_divisor must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(self.err("dropout must be in [0, 1)"));
        }
        if self.stages.is_empty() {
            return Err(self.err("no stages"));
        }
        let max_depth_choice = *self.depth_choices.last().unwrap_or(&0);
        for (i, st) in self.stages.iter().enumerate() {
            if st.max_depth == 0 || st.stride == 0 || st.width == 0 {
                return Err(self.err(format!(
                    "stage {i}: width, stride and max_depth must be positive"
                )));
            }
            if st.elastic_depth && st.max_depth != max_depth_choice {
                return Err(self.err(format!(
                    "stage {i}: max_depth {} differs from the largest depth choice {max_depth_choice}",
                    st.max_depth
                )));
            }
        }
        for (what, k, s) in [
            ("first_conv", self.first_conv.kernel, self.first_conv.stride),
            (
                "first_block",
                self.first_block.kernel,
                self.first_block.stride,
            ),
        ] {
            if k % 2 == 0 || k == 0 || s == 0 {
                return Err(self.err(format!("{what}: kernel must be odd and stride positive")));
            }
        }
        Ok(())
    }

    fn width(&self, base: usize) -> usize {
        make_divisible(base as f64 * self.width_mult, self.channel_divisor)
    }

    pub fn first_conv_width(&self) -> usize {
        self.width(self.first_conv.width)
    }

    pub fn first_block_width(&self) -> usize {
        self.width(self.first_block.width)
    }

    /// The first block adds its input when shapes allow (MobileNetV3: 16→16).
    pub fn first_block_residual(&self) -> bool {
        self.first_block.stride == 1 && self.first_conv_width() == self.first_block_width()
    }

    pub fn stage_width(&self, stage: usize) -> usize {
        self.width(self.stages[stage].width)
    }

    /// Output width of the last stage (input of the head).
    pub fn last_stage_width(&self) -> usize {
        self.stage_width(self.stages.len() - 1)
    }

    pub fn pre_pool_width(&self) -> Option<usize> {
        self.head.pre_pool.map(|w| self.width(w))
    }

    pub fn post_pool_width(&self) -> Option<usize> {
        self.head.post_pool.map(|w| self.width(w))
    }

    /// Middle width of a block for a given expand ratio (reference formula).
    pub fn middle_width(&self, in_ch: usize, expand: usize) -> usize {
        make_divisible((in_ch * expand) as f64, self.channel_divisor)
    }

    /// Squeeze-excite hidden width for `channels` active middle channels.
    pub fn se_width(&self, channels: usize) -> usize {
        make_divisible((channels / 4) as f64, self.channel_divisor)
    }

    pub fn max_kernel(&self) -> usize {
        *self.kernel_choices.last().expect("validated")
    }

    pub fn max_expand(&self) -> usize {
        *self.expand_choices.last().expect("validated")
    }

    pub fn num_blocks(&self) -> usize {
        self.stages.iter().map(|s| s.max_depth).sum()
    }

    /// The elastic blocks in order, with their derived shapes.
    pub fn blocks(&self) -> Vec<BlockLayout> {
        let mut out = Vec::with_capacity(self.num_blocks());
        let mut in_ch = self.first_block_width();
        for (si, st) in self.stages.iter().enumerate() {
            let width = self.stage_width(si);
            for pos in 0..st.max_depth {
                let stride = if pos == 0 { st.stride } else { 1 };
                out.push(BlockLayout {
                    index: out.len(),
                    stage: si,
                    depth_pos: pos,
                    in_ch,
                    out_ch: width,
                    stride,
                    act: st.act,
                    se: st.se,
                    residual: stride == 1 && in_ch == width,
                    max_mid: self.middle_width(in_ch, self.max_expand()),
                });
                in_ch = width;
            }
        }
        out
    }

    /// Depth choices available to a stage.
    pub fn stage_depths(&self, stage: usize) -> Vec<usize> {
        let st = &self.stages[stage];
        if st.elastic_depth {
            self.depth_choices.clone()
        } else {
            vec![st.max_depth]
        }
    }

    /// Number of distinct subnets at one resolution: for every stage, the
    /// sum over its depths d of (|K|·|E|)^d.
    pub fn count_per_resolution(&self) -> u128 {
        let per_block = (self.kernel_choices.len() * self.expand_choices.len()) as u128;
        (0..self.stages.len())
            .map(|s| {
                self.stage_depths(s)
                    .iter()
                    .map(|&d| per_block.pow(d as u32))
                    .sum::<u128>()
            })
            .product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_reference_values() {
        assert_eq!(make_divisible(16.0 * 1.2, 8), 24);
        assert_eq!(make_divisible(112.0 * 1.2, 8), 136);
        assert_eq!(make_divisible(960.0 * 1.2, 8), 1152);
        assert_eq!(make_divisible(36.0, 8), 40);
        assert_eq!(make_divisible(60.0, 8), 64);
        assert_eq!(make_divisible(3.0, 8), 8);
        assert_eq!(make_divisible(41.6, 8), 40);
    }

    #[test]
    fn conv_out_same_padding() {
        assert_eq!(conv_out(224, 3, 2), 112);
        assert_eq!(conv_out(7, 3, 2), 4);
        assert_eq!(conv_out(28, 7, 1), 28);
    }

    #[test]
    fn space_round_trips_through_toml() {
        for name in PRESET_NAMES {
            let s = preset(name).unwrap();
            let back = Space::from_toml(&s.to_toml()).unwrap();
            assert_eq!(s, back, "{name}");
        }
    }

    #[test]
    fn invalid_space_names_the_problem() {
        let mut s = preset("tiny").unwrap();
        s.kernel_choices = vec![3, 4];
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("even"), "{e}");
        let mut s = preset("tiny").unwrap();
        s.depth_choices = vec![3, 2];
        assert!(s.validate().unwrap_err().to_string().contains("increasing"));
    }

    #[test]
    fn mbv3_block_layout_matches_reference_keys() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let b = s.blocks();
        assert_eq!(b.len(), 20);
        assert_eq!((b[0].in_ch, b[0].max_mid, b[0].out_ch), (16, 96, 24));
        assert_eq!((b[1].in_ch, b[1].max_mid), (24, 144));
        assert!(!b[0].residual && b[1].residual);
        assert_eq!(s.se_width(144), 40);
        let s = preset("ofa-mbv3-w1.2").unwrap();
        assert_eq!(s.first_conv_width(), 24);
        assert_eq!(s.blocks()[4].max_mid, 192);
    }

    #[test]
    fn counts_subnets() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        assert_eq!(s.count_per_resolution(), 7371u128.pow(5));
        let p = preset("ofa-proxyless-w1.3").unwrap();
        assert_eq!(p.count_per_resolution(), 7371u128.pow(5) * 9);
    }
}
