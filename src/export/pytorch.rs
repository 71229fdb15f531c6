//! Import of the public OFA PyTorch checkpoints (`{'state_dict': …}`, zip
//! or legacy pickle format) into a supernet file, and of the released
//! accuracy predictors into a predictor file.
//!
//! Keys are those of `shared/reference/ofa_mbv3_w1.0_keys.txt`; older files
//! say `mobile_inverted_conv` where newer say `conv`. Since our weights are
//! named with the same keys, the mapping is the identity after that one
//! rename; `num_batches_tracked` counters are dropped.

use crate::nn::{HostTensor, OfaBackend, Supernet, SupernetConfig, TensorMap};
use crate::search::{Encoding, FitConfig, Mlp, Predictor, PredictorReport};
use crate::space::Space;
use anyhow::Context;
use burn::module::Param;
use burn::tensor::backend::Backend;
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

/// A row-major `[rows, cols]` matrix transposed (PyTorch's `Linear` stores
/// `[out, in]`, burn's `[in, out]`).
fn transposed(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut data = vec![0f32; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    HostTensor {
        shape: vec![cols, rows],
        data,
    }
}

/// One `Linear` of a predictor file: PyTorch weight `[out, in]`, bias.
struct LinearWeights<'a> {
    weight: &'a HostTensor,
    bias: Option<&'a HostTensor>,
}

/// Imports the reference's released accuracy predictor, in either form:
///
/// - the tutorial's (`ofa/tutorial/accuracy_predictor.py`, the released
///   `acc_predictor.pth`): a plain `nn.Sequential` of Linear·ReLU·…·Linear,
///   keys `0.weight … 6.bias`, on its own 128-value encoding
///   ([`Scheme::OfaTutorial`]);
/// - `ofa/nas/accuracy_predictor/acc_predictor.py`'s: `layers.{i}.0.*`
///   hidden layers, a bias-free `layers.{n}.weight`, `base_acc`, on the
///   arch encoder's one-hot encoding (ours, [`Scheme::OneHot`]) over the
///   space's resolutions.
///
/// Predictions are fractions, as both forms predict them.
pub fn import_predictor<B: Backend>(
    path: &Path,
    space: &Space,
    device: &B::Device,
) -> anyhow::Result<Predictor<B>> {
    let (map, _) = read_checkpoint(path)?;
    let err = |m: String| anyhow::anyhow!("{}: {m}", path.display());
    let (form, encoding, linears, base) = if map.contains_key("0.weight") {
        let mut idx: Vec<usize> = map
            .keys()
            .filter_map(|k| k.strip_suffix(".weight")?.parse().ok())
            .collect();
        idx.sort_unstable();
        let linears: Vec<LinearWeights> = idx
            .iter()
            .map(|i| LinearWeights {
                weight: &map[&format!("{i}.weight")],
                bias: map.get(&format!("{i}.bias")),
            })
            .collect();
        let enc = Encoding::ofa_tutorial(space).map_err(err)?;
        ("tutorial", enc, linears, 0.0)
    } else if map.contains_key("layers.0.0.weight") {
        let n = (0..)
            .take_while(|i| map.contains_key(&format!("layers.{i}.0.weight")))
            .count();
        let mut linears: Vec<LinearWeights> = (0..n)
            .map(|i| LinearWeights {
                weight: &map[&format!("layers.{i}.0.weight")],
                bias: map.get(&format!("layers.{i}.0.bias")),
            })
            .collect();
        let out = map
            .get(&format!("layers.{n}.weight"))
            .ok_or_else(|| err(format!("no output layer 'layers.{n}.weight'")))?;
        linears.push(LinearWeights {
            weight: out,
            bias: None,
        });
        let base = map
            .get("base_acc")
            .and_then(|t| t.data.first().copied())
            .ok_or_else(|| err("no 'base_acc'".into()))?;
        ("nas", Encoding::new(space), linears, base as f64)
    } else {
        return Err(err(
            "not an OFA accuracy predictor (expected keys '0.weight', … or 'layers.0.0.weight', …)"
                .into(),
        ));
    };
    if linears.len() < 2 || linears.iter().any(|l| l.weight.shape.len() != 2) {
        return Err(err("expected at least two 2-D Linear weights".into()));
    }
    let input = linears[0].weight.shape[1];
    if input != encoding.dim() {
        return Err(err(format!(
            "the predictor takes {input} inputs, but the {form} encoding of space '{}' has {}",
            space.name,
            encoding.dim()
        )));
    }
    let hidden = linears[0].weight.shape[0];
    let (last, hidden_layers) = linears.split_last().expect("two or more");
    let mut expect_in = input;
    for (i, l) in linears.iter().enumerate() {
        let want_out = if i + 1 == linears.len() { 1 } else { hidden };
        if l.weight.shape != [want_out, expect_in] {
            return Err(err(format!(
                "Linear {i} has shape {:?}, expected [{want_out}, {expect_in}] \
                 (hidden layers of equal width, one output)",
                l.weight.shape
            )));
        }
        if let Some(b) = l.bias
            && b.shape != [want_out]
        {
            return Err(err(format!("Linear {i}'s bias has shape {:?}", b.shape)));
        }
        expect_in = want_out;
    }
    let mut mlp = Mlp::<B>::new(input, hidden, hidden_layers.len(), base, device);
    let set = |dst: &mut burn::nn::Linear<B>, src: &LinearWeights| {
        dst.weight = Param::from_tensor(transposed(src.weight).to_tensor::<B, 2>(device));
        dst.bias = src
            .bias
            .map(|b| Param::from_tensor(b.to_tensor::<B, 1>(device)));
    };
    for (dst, src) in mlp.layers.iter_mut().zip(hidden_layers) {
        set(dst, src);
    }
    set(&mut mlp.out, last);
    Ok(Predictor {
        space: space.clone(),
        encoding,
        config: FitConfig {
            hidden,
            layers: hidden_layers.len(),
            ..FitConfig::default()
        },
        mlp,
        report: PredictorReport::default(),
        train_rows: 0,
        origin: Some(format!(
            "imported from {} (the reference's {form} predictor)",
            path.display()
        )),
    })
}
