//! Named training presets and partial TOML configurations applied on top
//! of a [`TrainConfig`].

use super::config::{TrainConfig, reference_epochs};
use anyhow::Context;

/// Deep-merges `over` into `base` (tables recursively, other values replaced).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Applies a partial TOML configuration on top of `cfg`; unknown keys are
/// errors naming the file.
pub fn apply_toml(cfg: &TrainConfig, text: &str, source: &str) -> anyhow::Result<TrainConfig> {
    let mut base = toml::Value::try_from(cfg)?;
    let over: toml::Value =
        toml::from_str(text).with_context(|| format!("{source}: not valid TOML"))?;
    merge(&mut base, over);
    base.try_into::<TrainConfig>()
        .with_context(|| format!("{source}: not a training configuration"))
}

/// The `quick` preset: DϵpS sized to train in about ten minutes on a
/// 2-core CPU (see BENCHMARKS.md).
const QUICK: &str = r#"
schedule = "deps"
epochs = 2.0
batch_size = 64
lr = 0.1
warmup_epochs = 0.05
augment = false
[deps]
full_model_fraction = 0.6
subnets_per_step = 4
[eval]
calib_images = 1000
max_images = 2500
"#;

fn preset_toml(name: &str) -> anyhow::Result<&'static str> {
    match name {
        "quick" => Ok(QUICK),
        "reference" => Ok("batch_size = 64\nlr = 0.1\n"),
        other => anyhow::bail!("unknown training preset '{other}' (quick, reference)"),
    }
}

/// A named training preset applied on top of `cfg`.
pub fn apply_preset(cfg: &TrainConfig, name: &str) -> anyhow::Result<TrainConfig> {
    let mut out = apply_toml(cfg, preset_toml(name)?, &format!("preset '{name}'"))?;
    if name == "reference" {
        out.epochs = reference_epochs(out.schedule, &out.ps);
    }
    Ok(out)
}
