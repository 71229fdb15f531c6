//! The data a trained network is evaluated on: the dataset fitted to a
//! space, the training run's configuration found beside its output, and the
//! validation hold-out of that run.

use super::config::EvalConfig;
use super::config::{Schedule, TrainConfig};
use super::eval::EvalData;
use super::trainer::split_indices;
use crate::data::{Dataset, DatasetSpec, SplitKind, load};
use crate::space::Space;
use std::path::Path;
use std::sync::Arc;

/// Loads a dataset and fits the space's input channels and classes to it;
/// returns whether the space had to change.
pub fn load_data_for(space: &mut Space, data: &str) -> anyhow::Result<(Arc<Dataset>, bool)> {
    let spec: DatasetSpec = data.parse()?;
    let ds = load(&spec)?;
    let adapted = space.in_channels != ds.channels || space.num_classes != ds.classes.len();
    if adapted {
        space.in_channels = ds.channels;
        space.num_classes = ds.classes.len();
    }
    Ok((Arc::new(ds), adapted))
}

/// The training configuration saved in the run folder that holds `output`
/// (`run/supernet.safetensors` or `run/subnet/`), if any.
pub fn run_config_near(output: &Path) -> Option<TrainConfig> {
    let dir = output.parent()?;
    toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).ok()?).ok()
}

/// The run configuration of a trained network, or the defaults (hold-out
/// 5 000 images, seed 0) when it was not trained here.
pub fn run_config_or_default(output: &Path, space: &Space, data: &str) -> TrainConfig {
    run_config_near(output).unwrap_or_else(|| TrainConfig::new(Schedule::Deps, space, data))
}

/// Validation data of a trained network: the hold-out of its training run
/// on `data`, calibration images from that run's training images.
pub fn eval_data_of(
    output: &Path,
    space: &Space,
    data: &str,
    eval: &EvalConfig,
) -> anyhow::Result<EvalData> {
    let mut ds_space = space.clone();
    let (ds, _) = load_data_for(&mut ds_space, data)?;
    if &ds_space != space {
        anyhow::bail!(
            "{}: the network expects {} channel(s) and {} classes; {} has {} and {}",
            output.display(),
            space.in_channels,
            space.num_classes,
            ds.name,
            ds.channels,
            ds.classes.len()
        );
    }
    let cfg = run_config_or_default(output, space, data);
    let (val, train_idx) = split_indices(&cfg, &ds)?;
    Ok(EvalData::new(
        ds,
        &train_idx,
        SplitKind::Train,
        val,
        eval,
        cfg.seed,
    ))
}

impl EvalData {
    /// The same calibration images, evaluated on the whole test split.
    pub fn with_test_split(&self) -> EvalData {
        let mut d = self.clone();
        d.split = SplitKind::Test;
        d.eval = (0..d.dataset.test.len()).collect();
        d
    }
}
