//! The accuracy predictor (DESIGN §6): an MLP on a one-hot encoding of the
//! architecture, trained on an accuracy table, used by the search instead
//! of evaluating subnets.

use crate::nn::{HostTensor, TensorMap, read_safetensors, write_safetensors};
use crate::space::{Arch, Space};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer, decay::WeightDecayConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// How an architecture becomes the predictor's input vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// One-hot resolution (by exact value) ⧺ per block one-hot kernel ⧺ per
    /// block one-hot expand ratio: ours, and the reference's
    /// `MobileNetArchEncoder` (`ofa/nas/accuracy_predictor/arch_encoder.py`).
    #[default]
    OneHot,
    /// The tutorial predictor's 128 values
    /// (`AccuracyPredictor.spec2feats` in `ofa/tutorial/accuracy_predictor.py`):
    /// per block one-hot kernel ⧺ per block one-hot expand ratio ⧺ one-hot
    /// resolution bin `(r − 112) // 16`; `resolutions` holds the bins' lower
    /// edges.
    OfaTutorial,
}

/// The encoding of a predictor; skipped blocks are all zeros in both
/// schemes. Choices are one-hot in ascending order (the tutorial builds its
/// maps from `set((3, 5, 7))`, which CPython iterates in that order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// Absent in files written before the tutorial scheme existed.
    #[serde(default)]
    pub scheme: Scheme,
    pub resolutions: Vec<usize>,
    pub kernels: Vec<usize>,
    pub expands: Vec<usize>,
    /// (stage, position in stage) of every elastic block.
    pub blocks: Vec<(usize, usize)>,
}

impl Encoding {
    pub fn new(space: &Space) -> Self {
        Encoding {
            scheme: Scheme::OneHot,
            resolutions: space.resolutions.clone(),
            kernels: space.kernel_choices.clone(),
            expands: space.expand_choices.clone(),
            blocks: space
                .blocks()
                .iter()
                .map(|b| (b.stage, b.depth_pos))
                .collect(),
        }
    }

    /// The tutorial predictor's encoding, for a space with its shape: 20
    /// elastic blocks (5 stages of up to 4), kernels 3/5/7, expand ratios
    /// 3/4/6, resolutions within the bins 112–239.
    pub fn ofa_tutorial(space: &Space) -> Result<Self, String> {
        let mut e = Encoding::new(space);
        e.scheme = Scheme::OfaTutorial;
        e.resolutions = (0..8).map(|i| 112 + 16 * i).collect();
        let fits = e.blocks.len() == 20
            && e.kernels == [3, 5, 7]
            && e.expands == [3, 4, 6]
            && space.resolutions.iter().all(|&r| (112..240).contains(&r));
        if !fits {
            return Err(format!(
                "space '{}' does not have the tutorial predictor's shape (20 elastic blocks, \
                 kernels [3, 5, 7], expand ratios [3, 4, 6], resolutions 112–239)",
                space.name
            ));
        }
        Ok(e)
    }

    pub fn dim(&self) -> usize {
        self.resolutions.len() + self.blocks.len() * (self.kernels.len() + self.expands.len())
    }

    /// Where the resolution, kernel and expand groups start.
    fn offsets(&self) -> (usize, usize, usize) {
        let (nb, nk) = (self.blocks.len(), self.kernels.len());
        match self.scheme {
            Scheme::OneHot => {
                let k0 = self.resolutions.len();
                (0, k0, k0 + nb * nk)
            }
            Scheme::OfaTutorial => {
                let e0 = nb * nk;
                (e0 + nb * self.expands.len(), 0, e0)
            }
        }
    }

    /// The one-hot slot of a resolution: its exact value, or the last bin
    /// edge at or below it.
    fn resolution_slot(&self, r: usize) -> Option<usize> {
        match self.scheme {
            Scheme::OneHot => self.resolutions.iter().position(|&x| x == r),
            Scheme::OfaTutorial => {
                let i = self.resolutions.iter().rposition(|&x| x <= r)?;
                (r < self.resolutions[i] + 16).then_some(i)
            }
        }
    }

    /// The feature vector of an architecture.
    pub fn encode(&self, arch: &Arch) -> Vec<f32> {
        let mut v = vec![0f32; self.dim()];
        let (r0, k0, e0) = self.offsets();
        if let Some(i) = self.resolution_slot(arch.r) {
            v[r0 + i] = 1.0;
        }
        let (nk, ne) = (self.kernels.len(), self.expands.len());
        for (b, &(stage, pos)) in self.blocks.iter().enumerate() {
            if pos >= arch.d[stage] {
                continue;
            }
            if let Some(i) = self.kernels.iter().position(|&k| k == arch.ks[b]) {
                v[k0 + b * nk + i] = 1.0;
            }
            if let Some(i) = self.expands.iter().position(|&e| e == arch.e[b]) {
                v[e0 + b * ne + i] = 1.0;
            }
        }
        v
    }
}

/// Training settings of the predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    pub hidden: usize,
    pub layers: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub batch: usize,
    /// Share of architectures held out for the report.
    pub test_fraction: f64,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            hidden: 400,
            layers: 3,
            lr: 1e-3,
            weight_decay: 1e-4,
            epochs: 300,
            batch: 128,
            test_fraction: 0.2,
            seed: 0,
        }
    }
}

/// `layers × (Linear(hidden) + ReLU) → Linear(1, no bias)`, plus a fixed
/// base accuracy: the reference's `AccuracyPredictor`
/// (`ofa/nas/accuracy_predictor/acc_predictor.py`), whose `base_acc` is the
/// mean of all the table's targets (`acc_dataset.py`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub layers: Vec<Linear<B>>,
    pub out: Linear<B>,
    pub base: f64,
}

impl<B: Backend> Mlp<B> {
    pub fn new(input: usize, hidden: usize, layers: usize, base: f64, device: &B::Device) -> Self {
        let mut dims = vec![input];
        dims.extend(std::iter::repeat_n(hidden, layers));
        Mlp {
            layers: dims
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            out: LinearConfig::new(*dims.last().unwrap_or(&input), 1)
                .with_bias(false)
                .init(device),
            base,
        }
    }

    /// `x: [N, D]` → predicted accuracies `[N]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let mut h = x;
        for l in &self.layers {
            h = relu(l.forward(h));
        }
        let n = h.dims()[0];
        self.out.forward(h).reshape([n]) + self.base
    }
}

/// Quality of a predictor on held-out architectures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictorReport {
    /// Root mean squared error, in accuracy points (percent).
    pub rmse_points: f64,
    /// Kendall rank correlation (τ-b).
    pub kendall_tau: f64,
    pub rows: usize,
}

/// A fitted predictor with its encoding.
pub struct Predictor<B: Backend> {
    pub space: Space,
    pub encoding: Encoding,
    pub config: FitConfig,
    pub mlp: Mlp<B>,
    pub report: PredictorReport,
    pub train_rows: usize,
    /// Where an imported predictor came from (None: fitted by `fit`).
    pub origin: Option<String>,
}

fn to_tensor<B: Backend>(rows: &[Vec<f32>], dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), dim]), device)
}

/// Kendall's τ-b between two sequences.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    let (mut conc, mut disc, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            match (da == 0.0, db == 0.0) {
                (true, true) => {}
                (true, false) => ties_a += 1,
                (false, true) => ties_b += 1,
                _ if (da > 0.0) == (db > 0.0) => conc += 1,
                _ => disc += 1,
            }
        }
    }
    let n1 = (conc + disc + ties_a) as f64;
    let n2 = (conc + disc + ties_b) as f64;
    if n1 == 0.0 || n2 == 0.0 {
        return 0.0;
    }
    (conc - disc) as f64 / (n1 * n2).sqrt()
}

fn rmse(pred: &[f64], truth: &[f64]) -> f64 {
    let n = pred.len().max(1) as f64;
    (pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

impl<B: Backend> Predictor<B> {
    /// Predicted top-1 accuracy (fraction) of each architecture.
    pub fn predict(&self, archs: &[Arch]) -> Vec<f64> {
        if archs.is_empty() {
            return vec![];
        }
        let device = self.mlp.out.weight.device();
        let x: Vec<Vec<f32>> = archs.iter().map(|a| self.encoding.encode(a)).collect();
        let y = self
            .mlp
            .forward(to_tensor::<B>(&x, self.encoding.dim(), &device));
        y.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .expect("f64")
    }

    /// Evaluates on (architecture, accuracy) pairs.
    pub fn evaluate(&self, data: &[(Arch, f64)]) -> PredictorReport {
        let archs: Vec<Arch> = data.iter().map(|d| d.0.clone()).collect();
        let truth: Vec<f64> = data.iter().map(|d| d.1).collect();
        let pred = self.predict(&archs);
        PredictorReport {
            rmse_points: 100.0 * rmse(&pred, &truth),
            kendall_tau: kendall_tau(&pred, &truth),
            rows: data.len(),
        }
    }

    /// Saves weights and metadata (space, encoding, config, report).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut map = TensorMap::new();
        for (i, l) in self
            .mlp
            .layers
            .iter()
            .chain(std::iter::once(&self.mlp.out))
            .enumerate()
        {
            map.insert(
                format!("layers.{i}.weight"),
                HostTensor::from_tensor(l.weight.val()),
            );
            if let Some(b) = &l.bias {
                map.insert(format!("layers.{i}.bias"), HostTensor::from_tensor(b.val()));
            }
        }
        let mut meta = HashMap::from([
            ("format".to_string(), "ofa-predictor/1".to_string()),
            ("space".to_string(), serde_json::to_string(&self.space)?),
            (
                "encoding".to_string(),
                serde_json::to_string(&self.encoding)?,
            ),
            ("config".to_string(), serde_json::to_string(&self.config)?),
            ("report".to_string(), serde_json::to_string(&self.report)?),
            ("base".to_string(), self.mlp.base.to_string()),
            ("train_rows".to_string(), self.train_rows.to_string()),
        ]);
        if let Some(o) = &self.origin {
            meta.insert("origin".to_string(), o.clone());
        }
        Ok(write_safetensors(path, &map, meta)?)
    }

    /// Loads a predictor written by [`Predictor::save`].
    pub fn load(path: &Path, device: &B::Device) -> anyhow::Result<Self> {
        let (map, meta) = read_safetensors(path)?;
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: not a predictor file (no '{k}' metadata)",
                    path.display()
                )
            })
        };
        if get("format")? != "ofa-predictor/1" {
            anyhow::bail!("{}: not a predictor file", path.display());
        }
        let space: Space = serde_json::from_str(get("space")?)?;
        let encoding: Encoding = serde_json::from_str(get("encoding")?)?;
        let config: FitConfig = serde_json::from_str(get("config")?)?;
        let report: PredictorReport = serde_json::from_str(get("report")?)?;
        let base: f64 = get("base")?.parse()?;
        let train_rows = get("train_rows")?.parse()?;
        let mut mlp = Mlp::<B>::new(encoding.dim(), config.hidden, config.layers, base, device);
        let n = mlp.layers.len();
        let set = |l: &mut Linear<B>, i: usize| -> anyhow::Result<()> {
            let w = map
                .get(&format!("layers.{i}.weight"))
                .ok_or_else(|| anyhow::anyhow!("{}: missing layers.{i}.weight", path.display()))?;
            if w.shape != l.weight.dims() {
                anyhow::bail!(
                    "{}: layers.{i}.weight has shape {:?}, expected {:?}",
                    path.display(),
                    w.shape,
                    l.weight.dims()
                );
            }
            l.weight = Param::from_tensor(w.to_tensor::<B, 2>(device));
            if let Some(b) = map.get(&format!("layers.{i}.bias")) {
                l.bias = Some(Param::from_tensor(b.to_tensor::<B, 1>(device)));
            }
            Ok(())
        };
        for i in 0..n {
            set(&mut mlp.layers[i], i)?;
        }
        set(&mut mlp.out, n)?;
        Ok(Predictor {
            space,
            encoding,
            config,
            mlp,
            report,
            train_rows,
            origin: meta.get("origin").cloned(),
        })
    }
}

/// Splits pairs into (train, test) by architecture, so that the same
/// subnet at two resolutions never sits on both sides.
pub fn split_by_arch(
    data: &[(Arch, f64)],
    test_fraction: f64,
    seed: u64,
) -> (Vec<(Arch, f64)>, Vec<(Arch, f64)>) {
    use rand::seq::SliceRandom;
    let key = |a: &Arch| {
        let mut b = a.clone();
        b.r = 0;
        b
    };
    let mut archs: Vec<Arch> = data.iter().map(|d| key(&d.0)).collect();
    archs.sort();
    archs.dedup();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    archs.shuffle(&mut rng);
    let n_test = ((archs.len() as f64) * test_fraction).round() as usize;
    let test: std::collections::HashSet<Arch> = archs.into_iter().take(n_test).collect();
    data.iter()
        .cloned()
        .partition(|d| !test.contains(&key(&d.0)))
}

/// Trains a predictor on (architecture, top-1) pairs; reports on a
/// held-out share of the architectures. `progress(epoch, loss)`.
pub fn fit<B: AutodiffBackend>(
    space: &Space,
    data: &[(Arch, f64)],
    config: &FitConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, f64),
) -> anyhow::Result<Predictor<B::InnerBackend>> {
    if data.len() < 2 {
        anyhow::bail!(
            "an accuracy table needs at least 2 rows to fit a predictor, got {}",
            data.len()
        );
    }
    let (train, test) = split_by_arch(data, config.test_fraction, config.seed);
    let train = if train.is_empty() {
        data.to_vec()
    } else {
        train
    };
    let encoding = Encoding::new(space);
    let dim = encoding.dim();
    let base = data.iter().map(|d| d.1).sum::<f64>() / data.len() as f64;
    B::seed(device, config.seed);
    let mut mlp = Mlp::<B>::new(dim, config.hidden, config.layers, base, device);
    let mut optim = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay as f32)))
        .init::<B, Mlp<B>>();
    let x: Vec<Vec<f32>> = train.iter().map(|d| encoding.encode(&d.0)).collect();
    let y: Vec<f32> = train.iter().map(|d| d.1 as f32).collect();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ 0x5EED);
    for epoch in 0..config.epochs {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for chunk in order.chunks(config.batch.max(1)) {
            let xb: Vec<Vec<f32>> = chunk.iter().map(|&i| x[i].clone()).collect();
            let yb: Vec<f32> = chunk.iter().map(|&i| y[i]).collect();
            let pred = mlp.forward(to_tensor::<B>(&xb, dim, device));
            let target = Tensor::<B, 1>::from_data(TensorData::new(yb, [chunk.len()]), device);
            let loss = (pred - target).square().mean();
            sum += loss
                .clone()
                .into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .expect("f64")[0]
                * chunk.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &mlp);
            mlp = optim.step(config.lr, mlp, grads);
        }
        progress(epoch + 1, sum / train.len() as f64);
    }
    let mut p = Predictor {
        space: space.clone(),
        encoding,
        config: config.clone(),
        mlp: mlp.valid(),
        report: PredictorReport::default(),
        train_rows: train.len(),
        origin: None,
    };
    p.report = p.evaluate(if test.is_empty() { &train } else { &test });
    Ok(p)
}

#[cfg(test)]
mod tests {
    /// Hand-worked `spec2feats` (ofa/tutorial/accuracy_predictor.py): every
    /// stage at depth 2 keeps blocks 0, 1, 4, 5, …; kernel 5 is slot 1 of
    /// its block's three, expand 6 slot 2 of the next 60, and r = 172 is
    /// bin (172 − 112) // 16 = 3 of the last 8.
    #[test]
    fn tutorial_encoding_by_hand() {
        let s = crate::space::preset("ofa-mbv3-w1.0").unwrap();
        let e = Encoding::ofa_tutorial(&s).unwrap();
        assert_eq!(e.dim(), 128);
        let arch = Arch {
            ks: vec![5; 20],
            e: vec![6; 20],
            d: vec![2; 5],
            r: 172,
        };
        let v = e.encode(&arch);
        let mut want = vec![0f32; 128];
        for stage in 0..5 {
            for b in [4 * stage, 4 * stage + 1] {
                want[3 * b + 1] = 1.0;
                want[60 + 3 * b + 2] = 1.0;
            }
        }
        want[120 + 3] = 1.0;
        assert_eq!(v, want);
        assert!(Encoding::ofa_tutorial(&crate::space::preset("mbv3-28-lite").unwrap()).is_err());
    }

    use super::*;
    use crate::space::preset;

    #[test]
    fn encodes_a_known_arch() {
        let s = preset("tiny").unwrap();
        let e = Encoding::new(&s);
        assert_eq!(e.dim(), 3 + 9 * 3 + 9 * 3);
        let mut a = Arch::min(&s);
        a.r = 16;
        a.d = vec![1, 2, 1];
        a.ks = vec![7, 3, 3, 5, 3, 3, 3, 3, 3];
        a.e = vec![6, 3, 3, 4, 6, 3, 3, 3, 3];
        let a = a.canonical(&s);
        let v = e.encode(&a);
        let ones: Vec<usize> = v
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == 1.0)
            .map(|(i, _)| i)
            .collect();
        // r=16 → 1; block 0 k7 → 3+2; block 3 k5 → 3+9+1; block 4 k3 → 3+12;
        // block 6 k3 → 3+18; e: base 30: block 0 e6 → 32, block 3 e4 → 40,
        // block 4 e6 → 44, block 6 e3 → 48. Blocks 1, 2, 5, 7, 8 skipped.
        assert_eq!(ones, vec![1, 5, 13, 15, 21, 32, 40, 44, 48]);
    }

    #[test]
    fn kendall_tau_of_known_orders() {
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        let t = kendall_tau(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((t - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn output_layer_has_no_bias_and_base_is_the_mean_of_all_targets() {
        type AB = burn::backend::Autodiff<burn::backend::Flex>;
        let s = preset("tiny").unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let data: Vec<(Arch, f64)> = (0..20)
            .map(|i| (Arch::sample(&s, &mut rng), 0.5 + 0.01 * i as f64))
            .collect();
        let cfg = FitConfig {
            epochs: 2,
            ..FitConfig::default()
        };
        let p = fit::<AB>(&s, &data, &cfg, &Default::default(), &mut |_, _| {}).unwrap();
        assert!(p.mlp.out.bias.is_none());
        // (0.50 + … + 0.69) / 20, the held-out rows included.
        assert!((p.mlp.base - 0.595).abs() < 1e-12, "{}", p.mlp.base);
        assert!(p.train_rows < data.len());
    }
}
