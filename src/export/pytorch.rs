//! Import of the public OFA PyTorch checkpoints (`{'state_dict': …}`, zip
//! or legacy pickle format) into a supernet file.
//!
//! Keys are those of `shared/reference/ofa_mbv3_w1.0_keys.txt`; older files
//! say `mobile_inverted_conv` where newer say `conv`. Since our weights are
//! named with the same keys, the mapping is the identity after that one
//! rename; `num_batches_tracked` counters are dropped.

use crate::nn::{HostTensor, OfaBackend, Supernet, SupernetConfig, TensorMap};
use crate::space::Space;
use anyhow::Context;
use std::path::Path;

/// What an import mapped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportReport {
    pub tensors: usize,
    pub renamed_legacy: usize,
    pub dropped_counters: usize,
    pub values: usize,
}

/// Reads a checkpoint into reference-keyed host tensors.
pub fn read_checkpoint(path: &Path) -> anyhow::Result<(TensorMap, ImportReport)> {
    use burn_store::pytorch::PytorchReader;
    let reader = PytorchReader::with_top_level_key(path, "state_dict")
        .or_else(|_| PytorchReader::new(path))
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read as a PyTorch checkpoint: {e}",
                path.display()
            )
        })?;
    let mut report = ImportReport::default();
    let mut map = TensorMap::new();
    for (key, snap) in reader.into_tensors() {
        // DataParallel checkpoints prefix every key with "module.".
        let key = key.strip_prefix("module.").unwrap_or(&key).to_string();
        if key.ends_with("num_batches_tracked") {
            report.dropped_counters += 1;
            continue;
        }
        let renamed = key.replace(".mobile_inverted_conv.", ".conv.");
        if renamed != key {
            report.renamed_legacy += 1;
        }
        let data = snap.to_data().map_err(|e| {
            anyhow::anyhow!("{}: tensor '{key}' cannot be read: {e:?}", path.display())
        })?;
        let shape = data.shape.to_vec();
        let values = data.convert::<f32>().into_vec::<f32>().map_err(|e| {
            anyhow::anyhow!("{}: tensor '{key}' is not numeric: {e:?}", path.display())
        })?;
        report.values += values.len();
        map.insert(
            renamed,
            HostTensor {
                shape,
                data: values,
            },
        );
    }
    report.tensors = map.len();
    Ok((map, report))
}

/// Builds a supernet of `space` from a checkpoint; a missing, extra or
/// mis-shaped tensor is an error naming the key.
pub fn import<B: OfaBackend>(
    path: &Path,
    space: &Space,
    device: &B::Device,
) -> anyhow::Result<(Supernet<B>, ImportReport)> {
    let (map, report) = read_checkpoint(path)?;
    let net = SupernetConfig::new(space.clone()).init::<B>(device);
    let net = net
        .load_tensor_map(&map)
        .with_context(|| format!("{}: does not fit space '{}'", path.display(), space.name))?;
    Ok((net, report))
}
