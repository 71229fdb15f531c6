//! Efficiency models (DESIGN §6): exact FLOPs and parameters, and a latency
//! lookup table measured on the machine where `ofa profile` runs — every
//! distinct layer configuration of the space timed on its own, summed per
//! subnet — checked against end-to-end timings of real extracted subnets.

use crate::nn::{LayerModule, OfaBackend, Subnet};
use crate::space::{Arch, Layer, Space, layers};
use anyhow::Context;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

/// Timing statistics of repeated runs, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub reps: usize,
}

impl Timing {
    fn from_samples(mut ms: Vec<f64>) -> Timing {
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        Timing {
            median_ms: q(0.5),
            p10_ms: q(0.1),
            p90_ms: q(0.9),
            reps: ms.len(),
        }
    }
}

/// How to time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileConfig {
    pub batch: usize,
    pub warmup: usize,
    pub reps: usize,
    /// KiB each worker thread writes before every timed run of a lone layer.
    /// Inside a whole network a layer's weights were last touched one forward
    /// pass earlier and have left the core's private caches; a layer timed in
    /// a tight loop would find them there and look faster than it is.
    /// 0 times with warm caches.
    #[serde(default)]
    pub evict_kib: usize,
}

impl ProfileConfig {
    /// The eviction that matched end-to-end timings best on a 2-core Xeon
    /// (BENCHMARKS.md): at batch 1 a layer's weights are most of what it
    /// reads, and timing them warm under-predicted by 10–20%; from batch 16
    /// the activations dominate and evicting over-predicted instead.
    pub fn default_evict_kib(batch: usize) -> usize {
        if batch <= 4 { 8192 } else { 0 }
    }

    /// [`ProfileConfig::default_evict_kib`] for our engine; none for ONNX
    /// Runtime, whose own spinning worker threads the eviction pass
    /// disturbs (on the 2-core Xeon any eviction, even 1 MiB, made its
    /// layers look 1.8× slower than inside a network; BENCHMARKS.md §8).
    pub fn default_evict_kib_for(runtime: &str, batch: usize) -> usize {
        if runtime == "onnxruntime" {
            0
        } else {
            ProfileConfig::default_evict_kib(batch)
        }
    }
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            batch: 1,
            warmup: 5,
            reps: 30,
            evict_kib: ProfileConfig::default_evict_kib(1),
        }
    }
}

/// Overwrites `kib` KiB of a per-thread buffer on every thread of the pool,
/// pushing earlier data out of the cores' private caches.
pub fn evict_private_caches(kib: usize) {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }
    if kib == 0 {
        return;
    }
    let words = kib * 1024 / 8;
    rayon::broadcast(|ctx| {
        BUF.with_borrow_mut(|b| {
            if b.len() != words {
                *b = vec![0; words];
            }
            let salt = ctx.index() as u64 + 1;
            // One write per cache line is enough to claim the line.
            for w in b.iter_mut().step_by(8) {
                *w = w.wrapping_add(salt);
            }
            std::hint::black_box(&b[0]);
        })
    });
}

/// LUT prediction against measurement on sampled subnets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LutValidation {
    pub subnets: usize,
    /// Mean and largest |predicted − measured| / measured, in percent.
    pub mean_abs_error_pct: f64,
    pub max_abs_error_pct: f64,
    /// Rank agreement of predicted and measured latencies.
    pub kendall_tau: f64,
    /// Mean of measured / predicted, and the spread of that ratio (standard
    /// deviation, percent of the mean). A shared machine's speed drifts
    /// between the profile and the check; the drift moves the mean ratio,
    /// while the spread is the table's error on the subnets' relative costs.
    #[serde(default)]
    pub scale: f64,
    #[serde(default)]
    pub scale_free_error_pct: f64,
    /// (reference arch JSON, predicted ms, measured ms).
    pub samples: Vec<(serde_json::Value, f64, f64)>,
    /// When the table adds per-layer terms: (mean |error| %, Kendall τ) of
    /// the same subnets predicted with the single factor instead.
    #[serde(default)]
    pub scale_only: Option<(f64, f64)>,
}

/// The two fits [`calibrate_and_validate`] chose between: the single factor, and
/// each one's leave-one-out mean |error| on the calibration subnets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationFits {
    pub scale_only: f64,
    pub loo_error_pct_scale_only: f64,
    /// `None` when too few subnets (or a singular system) allow no
    /// three-term fit.
    pub loo_error_pct_three_terms: Option<f64>,
}

/// Per-layer latencies of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    pub format: String,
    /// Where it was measured: CPU model and threads, backend.
    pub device: String,
    pub backend: String,
    pub threads: usize,
    /// What ran the layers: `ofa` (our engine) or `onnxruntime`; tables
    /// written before runtimes were recorded are ours.
    #[serde(default = "ofa_runtime")]
    pub runtime: String,
    #[serde(default)]
    pub runtime_version: String,
    /// Per-inference cost outside the layers, added once per subnet.
    #[serde(default)]
    pub base_ms: f64,
    /// Factor on the summed layer times, fitted on subnets timed end to
    /// end ([`calibrate_and_validate`]); 1 for an uncalibrated table.
    #[serde(default = "one")]
    pub scale: f64,
    /// Subnets the scale was fitted on (0: uncalibrated).
    #[serde(default)]
    pub calibration_subnets: usize,
    /// Milliseconds added per layer and per million elements a layer reads
    /// and writes at its boundary (input + output activations), fitted
    /// with the scale when that predicts held-out subnets better
    /// ([`calibrate_and_validate`]); 0 otherwise.
    #[serde(default)]
    pub per_layer_ms: f64,
    #[serde(default)]
    pub per_mega_element_ms: f64,
    /// Both candidate fits of the last calibration, for the record.
    #[serde(default)]
    pub calibration_fits: Option<CalibrationFits>,
    pub config: ProfileConfig,
    pub space: Space,
    pub entries: BTreeMap<String, Timing>,
    pub validation: Option<LutValidation>,
    /// The same check with every subnet at one resolution, by resolution.
    #[serde(default)]
    pub validation_at: BTreeMap<usize, LutValidation>,
}

pub use crate::util::cpu_name;

fn ofa_runtime() -> String {
    "ofa".into()
}

fn one() -> f64 {
    1.0
}

/// What timed a latency table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub runtime: String,
    pub runtime_version: String,
    pub device: String,
    pub backend: String,
    pub threads: usize,
}

/// Something that times single layers and whole subnets: our own engine
/// ([`EngineTimer`]) or the runtime a model will be deployed with (ONNX
/// Runtime, `export::ort_runtime`, cargo feature `onnxruntime`).
pub trait LayerTimer {
    fn info(&self) -> RuntimeInfo;
    /// One timing per layer, each layer run on its own at `cfg.batch`.
    fn time_layers(
        &mut self,
        layers: &[Layer],
        cfg: &ProfileConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<Timing>>;
    /// The fixed cost of one inference call that [`LayerTimer::time_layers`]
    /// left out of every layer (a runtime's per-call overhead), counted once
    /// per subnet by [`LatencyTable::predict`].
    fn base_ms(&self) -> f64 {
        0.0
    }
    /// One end-to-end timing per subnet (weights do not matter for time).
    fn time_archs(
        &mut self,
        space: &Space,
        archs: &[Arch],
        cfg: &ProfileConfig,
    ) -> anyhow::Result<Vec<Timing>>;
}

/// Our own engine on backend `B`.
pub struct EngineTimer<B: OfaBackend> {
    pub device: B::Device,
}

impl<B: OfaBackend> LayerTimer for EngineTimer<B> {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            runtime: ofa_runtime(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            device: B::device_label(&self.device),
            backend: B::backend_label(),
            threads: rayon::current_num_threads(),
        }
    }

    fn time_layers(
        &mut self,
        layers: &[Layer],
        cfg: &ProfileConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<Timing>> {
        Ok(time_layers::<B>(layers, cfg, &self.device, progress))
    }

    fn time_archs(
        &mut self,
        space: &Space,
        archs: &[Arch],
        cfg: &ProfileConfig,
    ) -> anyhow::Result<Vec<Timing>> {
        let net = crate::nn::SupernetConfig::new(space.clone()).init::<B>(&self.device);
        let subnets: Vec<_> = archs.iter().map(|a| crate::nn::extract(&net, a)).collect();
        Ok(time_subnets(&subnets, cfg, &self.device))
    }
}

/// Every distinct layer any subnet of the space runs, over all resolutions.
pub fn distinct_layers(space: &Space) -> Vec<Layer> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for &r in &space.resolutions {
        for &k in &space.kernel_choices {
            for &e in &space.expand_choices {
                let mut a = Arch::max(space).with_resolution(r);
                a.ks.iter_mut().for_each(|x| *x = k);
                a.e.iter_mut().for_each(|x| *x = e);
                for l in layers(space, &a) {
                    if seen.insert(l.key()) {
                        out.push(l);
                    }
                }
            }
        }
    }
    out
}

/// Milliseconds of `reps` runs of `f` after `warmup` untimed ones; `before`
/// runs, untimed, ahead of every timed run.
fn sample_ms<F: FnMut(), P: FnMut()>(
    warmup: usize,
    reps: usize,
    mut before: P,
    mut f: F,
) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..reps.max(1))
        .map(|_| {
            before();
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// Rounds over which repetitions are spread: a slow spell of a shared
/// machine then lands on a few samples of many items instead of all samples
/// of one, and the medians shrug it off.
const ROUNDS: usize = 5;

/// Times `n` items in interleaved rounds: `cfg.reps` samples each (at least
/// one per round), `before(i)` untimed ahead of every timed `run(i)`.
pub fn time_interleaved(
    n: usize,
    cfg: &ProfileConfig,
    before: &mut dyn FnMut(usize),
    run: &mut dyn FnMut(usize),
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<Timing> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
    let per_round = cfg.reps.max(1).div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        for (i, s) in samples.iter_mut().enumerate() {
            let warmup = if round == 0 { cfg.warmup } else { 1 };
            s.extend(sample_ms(warmup, per_round, || before(i), || run(i)));
            progress(round * n + i + 1, ROUNDS * n);
        }
    }
    samples.into_iter().map(Timing::from_samples).collect()
}

/// Times layers on their own, each one's weights evicted from the private
/// caches before each run (`cfg.evict_kib`) and its input freshly touched,
/// as the previous layer would have left it.
pub fn time_layers<B: OfaBackend>(
    layers: &[Layer],
    cfg: &ProfileConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<Timing> {
    if B::host_engine() {
        return time_layers_host(layers, cfg, progress);
    }
    let (modules, inputs): (Vec<_>, Vec<_>) = layers
        .iter()
        .map(|l| {
            let (module, mut shape) = LayerModule::<B>::new(l, device);
            shape[0] = cfg.batch;
            let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
            (module, x)
        })
        .unzip();
    time_interleaved(
        layers.len(),
        cfg,
        &mut |i| {
            evict_private_caches(cfg.evict_kib);
            let _ = std::hint::black_box(inputs[i].clone().into_data());
        },
        &mut |i| {
            let y = modules[i].forward(inputs[i].clone());
            let _ = B::sync(device);
            drop(y);
        },
        progress,
    )
}

/// [`time_layers`] in the host engine, as extracted subnets run there:
/// each layer a one-step plan, all sharing one workspace (as the layers of
/// one subnet do), the input copied in — and so freshly touched — before
/// each timed run.
fn time_layers_host(
    layers: &[Layer],
    cfg: &ProfileConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<Timing> {
    use crate::nn::{Plan, Workspace};
    let plans: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (plan, shape) = Plan::for_layer(l, cfg.batch, 1);
            let x: Vec<f32> = (0..shape.len())
                .map(|j| (((i * 31 + j * 17) % 101) as f32 - 50.0) / 50.0)
                .collect();
            (plan, shape, x)
        })
        .collect();
    // Which layer's input the workspace holds (a plan's one step reads it
    // and leaves it in place); warm-up runs come without `before`.
    let ws = std::cell::RefCell::new((Workspace::default(), None::<usize>));
    let load = |i: usize| {
        let (_, shape, x) = &plans[i];
        let mut w = ws.borrow_mut();
        Plan::load(&mut w.0, x, *shape);
        w.1 = Some(i);
    };
    time_interleaved(
        layers.len(),
        cfg,
        &mut |i| {
            evict_private_caches(cfg.evict_kib);
            load(i);
        },
        &mut |i| {
            if ws.borrow().1 != Some(i) {
                load(i);
            }
            let (plan, shape, _) = &plans[i];
            std::hint::black_box(plan.run(&mut ws.borrow_mut().0, *shape));
        },
        progress,
    )
}

/// Times one layer on its own (see [`time_layers`]).
pub fn time_layer<B: OfaBackend>(layer: &Layer, cfg: &ProfileConfig, device: &B::Device) -> Timing {
    time_layers::<B>(std::slice::from_ref(layer), cfg, device, &mut |_, _| {}).remove(0)
}

/// Times a whole extracted subnet at its resolution.
pub fn time_subnet<B: OfaBackend>(
    net: &Subnet<B>,
    cfg: &ProfileConfig,
    device: &B::Device,
) -> Timing {
    time_subnets(std::slice::from_ref(net), cfg, device).remove(0)
}

/// Times several subnets in interleaved rounds, so that they are compared
/// under the same conditions.
pub fn time_subnets<B: OfaBackend>(
    nets: &[Subnet<B>],
    cfg: &ProfileConfig,
    device: &B::Device,
) -> Vec<Timing> {
    if B::host_engine() {
        // As `ofa bench infer` and a deployed subnet run them: the host
        // engine, on host inputs.
        let runners: Vec<_> = nets
            .iter()
            .map(|n| crate::nn::Runner::new(n.clone()))
            .collect();
        let inputs: Vec<Vec<f32>> = nets
            .iter()
            .map(|net| {
                let len = cfg.batch * net.space.in_channels * net.arch.r * net.arch.r;
                (0..len)
                    .map(|j| ((j * 37 % 97) as f32 - 48.0) / 48.0)
                    .collect()
            })
            .collect();
        return time_interleaved(
            nets.len(),
            cfg,
            &mut |_| {},
            &mut |i| {
                std::hint::black_box(runners[i].forward_host(&inputs[i], cfg.batch));
            },
            &mut |_, _| {},
        );
    }
    let inputs: Vec<Tensor<B, 4>> = nets
        .iter()
        .map(|net| {
            let r = net.arch.r;
            Tensor::random(
                [cfg.batch, net.space.in_channels, r, r],
                Distribution::Normal(0.0, 1.0),
                device,
            )
        })
        .collect();
    time_interleaved(
        nets.len(),
        cfg,
        &mut |_| {},
        &mut |i| {
            let y = nets[i].forward(inputs[i].clone());
            let _ = B::sync(device);
            drop(y);
        },
        &mut |_, _| {},
    )
}

impl LatencyTable {
    /// Times every distinct layer of `space` in our engine on backend `B`.
    /// `progress(done, total)`.
    pub fn profile<B: OfaBackend>(
        space: &Space,
        cfg: &ProfileConfig,
        device: &B::Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> LatencyTable {
        let mut timer = EngineTimer::<B> {
            device: device.clone(),
        };
        LatencyTable::profile_with(space, cfg, &mut timer, progress)
            .expect("our engine's timings do not fail")
    }

    /// Times every distinct layer of `space` with `timer`.
    pub fn profile_with(
        space: &Space,
        cfg: &ProfileConfig,
        timer: &mut dyn LayerTimer,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<LatencyTable> {
        let ls = distinct_layers(space);
        let timings = timer.time_layers(&ls, cfg, progress)?;
        let entries: BTreeMap<String, Timing> = ls.iter().map(|l| l.key()).zip(timings).collect();
        let info = timer.info();
        Ok(LatencyTable {
            format: "ofa-lut/1".into(),
            device: info.device,
            backend: info.backend,
            threads: info.threads,
            runtime: info.runtime,
            runtime_version: info.runtime_version,
            base_ms: timer.base_ms(),
            scale: 1.0,
            calibration_subnets: 0,
            per_layer_ms: 0.0,
            per_mega_element_ms: 0.0,
            calibration_fits: None,
            config: cfg.clone(),
            space: space.clone(),
            entries,
            validation: None,
            validation_at: BTreeMap::new(),
        })
    }

    /// Predicted latency of a subnet: the runtime's per-call cost once plus
    /// each layer's [`LatencyTable::layer_ms`].
    pub fn predict(&self, space: &Space, arch: &Arch) -> anyhow::Result<f64> {
        let layers: f64 = layers(space, arch)
            .iter()
            .map(|l| self.layer_ms(l))
            .sum::<anyhow::Result<f64>>()?;
        Ok(self.base_ms + layers)
    }

    /// How the table composes layer times into a subnet's latency, in words
    /// (for reports); `None` for an uncalibrated table.
    pub fn calibration_summary(&self) -> Option<String> {
        if self.calibration_subnets == 0 {
            return None;
        }
        let terms = if self.per_layer_ms != 0.0 || self.per_mega_element_ms != 0.0 {
            format!(
                " plus {:+.4} ms per layer and {:+.3} ms per million boundary elements",
                self.per_layer_ms, self.per_mega_element_ms
            )
        } else {
            String::new()
        };
        Some(format!(
            "layer times scaled by {:.3}{terms}, fitted on {} other subnets timed end to end",
            self.scale, self.calibration_subnets
        ))
    }

    /// What one layer adds to a subnet's latency: its median times the
    /// calibrated scale, plus the fitted per-layer and per-element terms.
    pub fn layer_ms(&self, l: &Layer) -> anyhow::Result<f64> {
        let t = self.median_ms(l)?;
        Ok(self.scale * t
            + self.per_layer_ms
            + self.per_mega_element_ms * boundary_mega_elements(l, self.config.batch))
    }

    fn median_ms(&self, l: &Layer) -> anyhow::Result<f64> {
        self.entries
            .get(&l.key())
            .map(|t| t.median_ms)
            .ok_or_else(|| anyhow::anyhow!("layer '{}' is not in the latency table", l.key()))
    }

    /// (Σ medians, layers, Σ boundary elements in millions) of a subnet:
    /// the three terms [`calibrate_and_validate`] fits.
    fn composition_terms(&self, space: &Space, arch: &Arch) -> anyhow::Result<[f64; 3]> {
        let mut terms = [0.0; 3];
        for l in layers(space, arch) {
            terms[0] += self.median_ms(&l)?;
            terms[1] += 1.0;
            terms[2] += boundary_mega_elements(&l, self.config.batch);
        }
        Ok(terms)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::util::write_text_atomic(path, &serde_json::to_string_pretty(self)?)
    }

    pub fn load(path: &Path) -> anyhow::Result<LatencyTable> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let t: LatencyTable = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a latency table", path.display()))?;
        if t.format != "ofa-lut/1" {
            anyhow::bail!(
                "{}: unknown latency table format '{}'",
                path.display(),
                t.format
            );
        }
        Ok(t)
    }
}

/// A per-subnet cost computed in O(blocks): for every resolution, the
/// fixed layers' cost and every block position's cost for each (k, e).
/// FLOPs, parameters and LUT latency all become one of these, so the
/// search never formats a layer key in its inner loop.
#[derive(Clone, Debug)]
pub struct FastCost {
    kernels: Vec<usize>,
    expands: Vec<usize>,
    /// By resolution: (fixed cost, [block][k·|E| + e] cost).
    table: HashMap<usize, (f64, Vec<Vec<f64>>)>,
    /// (stage, position) of each block.
    blocks: Vec<(usize, usize)>,
}

impl FastCost {
    /// Tabulates `cost(layer)` over the space.
    pub fn new(
        space: &Space,
        cost: &dyn Fn(&Layer) -> anyhow::Result<f64>,
    ) -> anyhow::Result<FastCost> {
        let blocks: Vec<(usize, usize)> = space
            .blocks()
            .iter()
            .map(|b| (b.stage, b.depth_pos))
            .collect();
        let n = blocks.len();
        let mut table = HashMap::new();
        for &r in &space.resolutions {
            let mut fixed = 0.0;
            let mut per_block =
                vec![vec![0.0; space.kernel_choices.len() * space.expand_choices.len()]; n];
            for (ki, &k) in space.kernel_choices.iter().enumerate() {
                for (ei, &e) in space.expand_choices.iter().enumerate() {
                    let mut a = Arch::max(space).with_resolution(r);
                    a.ks.iter_mut().for_each(|x| *x = k);
                    a.e.iter_mut().for_each(|x| *x = e);
                    let ls = layers(space, &a);
                    // layers(): first conv, first block, n elastic blocks, head.
                    for (b, l) in ls[2..2 + n].iter().enumerate() {
                        per_block[b][ki * space.expand_choices.len() + ei] = cost(l)?;
                    }
                    if ki == 0 && ei == 0 {
                        fixed = ls[..2]
                            .iter()
                            .chain(&ls[2 + n..])
                            .map(cost)
                            .sum::<anyhow::Result<f64>>()?;
                    }
                }
            }
            table.insert(r, (fixed, per_block));
        }
        Ok(FastCost {
            kernels: space.kernel_choices.clone(),
            expands: space.expand_choices.clone(),
            table,
            blocks,
        })
    }

    /// The same costs plus `c` per subnet (a latency table's per-call cost).
    pub fn plus(mut self, c: f64) -> Self {
        for (fixed, _) in self.table.values_mut() {
            *fixed += c;
        }
        self
    }

    /// The cost of a (valid) subnet.
    pub fn cost(&self, arch: &Arch) -> f64 {
        let (fixed, per_block) = &self.table[&arch.r];
        let mut c = *fixed;
        for (b, &(stage, pos)) in self.blocks.iter().enumerate() {
            if pos < arch.d[stage] {
                let ki = self
                    .kernels
                    .iter()
                    .position(|&k| k == arch.ks[b])
                    .unwrap_or(0);
                let ei = self
                    .expands
                    .iter()
                    .position(|&e| e == arch.e[b])
                    .unwrap_or(0);
                c += per_block[b][ki * self.expands.len() + ei];
            }
        }
        c
    }
}

/// Times `n` subnets end to end in our engine (the largest, the smallest
/// and seeded random ones; timing does not depend on the weights) and
/// compares them with the table's predictions.
pub fn validate<B: OfaBackend>(
    lut: &LatencyTable,
    space: &Space,
    n: usize,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<LutValidation> {
    let mut timer = EngineTimer::<B> {
        device: device.clone(),
    };
    validate_with(lut, space, n, seed, None, &mut timer)
}

/// [`validate`] with any timer (the one that built the table), with every
/// subnet at `resolution` when one is given.
pub fn validate_with(
    lut: &LatencyTable,
    space: &Space,
    n: usize,
    seed: u64,
    resolution: Option<usize>,
    timer: &mut dyn LayerTimer,
) -> anyhow::Result<LutValidation> {
    let archs = validation_archs(space, n, seed, resolution)?;
    let timings = timer.time_archs(space, &archs, &end_to_end_config(lut))?;
    validation_from(lut, space, &archs, &timings)
}

/// End-to-end runs get more repetitions than single layers: they are the
/// yardstick, and a few of them cost little.
fn end_to_end_config(lut: &LatencyTable) -> ProfileConfig {
    ProfileConfig {
        reps: lut.config.reps.max(50),
        ..lut.config.clone()
    }
}

/// The check subnets: the largest, the smallest and seeded draws, `n` in
/// all; at one resolution (what the table must rank when a deployment
/// fixes the input size) the same draws with `r` set.
fn validation_archs(
    space: &Space,
    n: usize,
    seed: u64,
    resolution: Option<usize>,
) -> anyhow::Result<Vec<Arch>> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut archs = vec![Arch::max(space), Arch::min(space)];
    while archs.len() < n {
        archs.push(Arch::sample(space, &mut rng));
    }
    archs.truncate(n);
    if let Some(r) = resolution {
        anyhow::ensure!(
            space.resolutions.contains(&r),
            "resolution {r} is not one of the space's ({:?})",
            space.resolutions
        );
        archs = archs.into_iter().map(|a| a.with_resolution(r)).collect();
    }
    Ok(archs)
}

/// The table's predictions for `archs` against their measured `timings`.
fn validation_from(
    lut: &LatencyTable,
    space: &Space,
    archs: &[Arch],
    timings: &[Timing],
) -> anyhow::Result<LutValidation> {
    let mut samples = Vec::new();
    for (a, t) in archs.iter().zip(timings) {
        samples.push((a.to_reference_json(), lut.predict(space, a)?, t.median_ms));
    }
    let errs: Vec<f64> = samples
        .iter()
        .map(|(_, p, m)| 100.0 * (p - m).abs() / m)
        .collect();
    let preds: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let meas: Vec<f64> = samples.iter().map(|s| s.2).collect();
    let ratios: Vec<f64> = samples.iter().map(|(_, p, m)| m / p).collect();
    let k = ratios.len().max(1) as f64;
    let scale = ratios.iter().sum::<f64>() / k;
    let sd = (ratios.iter().map(|r| (r - scale).powi(2)).sum::<f64>() / k).sqrt();
    let scale_only = match lut.calibration_fits {
        Some(f) if lut.per_layer_ms != 0.0 || lut.per_mega_element_ms != 0.0 => {
            let mut alt = Vec::with_capacity(archs.len());
            for a in archs {
                alt.push(lut.base_ms + f.scale_only * lut.composition_terms(space, a)?[0]);
            }
            let err = alt
                .iter()
                .zip(&meas)
                .map(|(p, m)| 100.0 * (p - m).abs() / m)
                .sum::<f64>()
                / k;
            Some((err, super::predictor::kendall_tau(&alt, &meas)))
        }
        _ => None,
    };
    Ok(LutValidation {
        scale_only,
        scale,
        scale_free_error_pct: 100.0 * sd / scale,
        subnets: samples.len(),
        mean_abs_error_pct: errs.iter().sum::<f64>() / errs.len().max(1) as f64,
        max_abs_error_pct: errs.iter().cloned().fold(0.0, f64::max),
        kendall_tau: super::predictor::kendall_tau(&preds, &meas),
        samples,
    })
}

/// Millions of elements a layer reads and writes at its boundary (its input
/// and output activations) at batch `batch`.
fn boundary_mega_elements(l: &Layer, batch: usize) -> f64 {
    let (input, output) = match l {
        Layer::Conv(c) => (
            c.in_res * c.in_res * c.in_ch,
            c.out_res() * c.out_res() * c.out_ch,
        ),
        Layer::MbConv(b) => (
            b.in_res * b.in_res * b.in_ch,
            b.out_res() * b.out_res() * b.out_ch,
        ),
        Layer::Pool { in_res, ch } => (in_res * in_res * ch, *ch),
        Layer::Linear { in_f, out_f } => (*in_f, *out_f),
    };
    (batch * (input + output)) as f64 / 1e6
}

/// How summed layer times become end-to-end latency, fitted on subnets
/// timed end to end: `y = scale·Σt` (one factor), or `y = scale·Σt +
/// per_layer·layers + per_element·Σelements` (with `y` the measured time
/// less the per-call cost). Layers timed alone miss what a whole network
/// adds or saves between them: the factor takes out what is proportional
/// to the work; the two other terms what each layer boundary costs or saves
/// (a lone layer's graph converts its input and output between layouts,
/// allocates its output and wakes the thread pool, which inside a network
/// happens once or never — ONNX Runtime's NCHWc reorders are the large
/// case). Returns `[scale, per_layer_ms, per_mega_element_ms]`.
fn fit_composition(terms: &[[f64; 3]], y: &[f64], full: bool) -> Option<[f64; 3]> {
    if !full {
        let ratios: Vec<f64> = terms
            .iter()
            .zip(y)
            .filter(|(t, _)| t[0] > 0.0)
            .map(|(t, y)| y / t[0])
            .collect();
        return (!ratios.is_empty())
            .then(|| [ratios.iter().sum::<f64>() / ratios.len() as f64, 0.0, 0.0]);
    }
    if terms.len() < 4 {
        return None;
    }
    // Least squares on relative errors: each row divided by its y, so small
    // and large subnets count alike (the targets are relative errors).
    let mut ata = [[0.0f64; 3]; 3];
    let mut atb = [0.0f64; 3];
    for (t, &y) in terms.iter().zip(y) {
        if y <= 0.0 {
            continue;
        }
        let row = [t[0] / y, t[1] / y, t[2] / y];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += row[i] * row[j];
            }
            atb[i] += row[i];
        }
    }
    let x = solve3(ata, atb)?;
    (x[0] > 0.0 && x.iter().all(|v| v.is_finite())).then_some(x)
}

/// `A·x = b` for a 3×3 system by Gaussian elimination with partial
/// pivoting; `None` when (nearly) singular.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    let norm = a.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    for col in 0..3 {
        let p = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[p][col].abs() <= 1e-12 * norm.max(f64::MIN_POSITIVE) {
            return None;
        }
        a.swap(col, p);
        b.swap(col, p);
        for r in col + 1..3 {
            let f = a[r][col] / a[col][col];
            for c in col..3 {
                a[r][c] -= f * a[col][c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for r in (0..3).rev() {
        let s: f64 = (r + 1..3).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// Mean |relative error| of a fit when each subnet is predicted by the fit
/// on the others (leave-one-out); infinite when a fit fails.
fn loo_error(terms: &[[f64; 3]], y: &[f64], full: bool) -> f64 {
    let mut total = 0.0;
    for i in 0..terms.len() {
        let (t, yy): (Vec<[f64; 3]>, Vec<f64>) = terms
            .iter()
            .zip(y)
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (t, y))| (*t, *y))
            .unzip();
        let Some(x) = fit_composition(&t, &yy, full) else {
            return f64::INFINITY;
        };
        let p: f64 = (0..3).map(|k| x[k] * terms[i][k]).sum();
        total += (p - y[i]).abs() / y[i].max(f64::MIN_POSITIVE);
    }
    total / terms.len().max(1) as f64
}

/// What [`calibrate_and_validate`] times: `calibrate` seeded random
/// subnets to fit the table on, `validate` other subnets to check it on
/// ([`validate_with`]'s draws), and the same check subnets again at each
/// resolution of `at`.
#[derive(Clone, Debug, Default)]
pub struct TableCheck {
    pub calibrate: usize,
    pub validate: usize,
    pub seed: u64,
    pub at: Vec<usize>,
}

/// Fits how the table's layer times compose ([`fit_composition`]) on the
/// calibration subnets and checks the result on the validation subnets,
/// both timed end to end with `timer` in one interleaved call, so that the
/// fit and its check see the machine in the same state (ONNX Runtime on the
/// 2-core VM ran 15–25% faster or slower from one call to the next; timed
/// apart, that drift showed up as table error). The three-term fit
/// is kept only when, predicting each calibration subnet from a fit on the
/// others, it errs at most 0.8 times as much as the single factor does;
/// otherwise the table gets the factor alone. Calibration draws use
/// `seed + 1`, so they are other subnets than the check's. Sets the table's
/// coefficients, `validation` and `validation_at`.
pub fn calibrate_and_validate(
    lut: &mut LatencyTable,
    space: &Space,
    check: &TableCheck,
    timer: &mut dyn LayerTimer,
) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(check.seed.wrapping_add(1));
    let mut archs: Vec<Arch> = (0..check.calibrate)
        .map(|_| Arch::sample(space, &mut rng))
        .collect();
    let cal = archs.len();
    if check.validate > 0 {
        archs.extend(validation_archs(space, check.validate, check.seed, None)?);
    }
    if !archs.is_empty() {
        let timings = timer.time_archs(space, &archs, &end_to_end_config(lut))?;
        if cal > 0 {
            fit_table(lut, space, &archs[..cal], &timings[..cal])?;
        }
        if check.validate > 0 {
            lut.validation = Some(validation_from(lut, space, &archs[cal..], &timings[cal..])?);
        }
    }
    // Each fixed-resolution check in a call of its own: interleaving more
    // than a few dozen whole networks made our engine's timings noisier
    // (the same subnet measured 47 and 62 ms in one 70-network call).
    if check.validate > 0 {
        for &r in &check.at {
            let v = validate_with(lut, space, check.validate, check.seed, Some(r), timer)?;
            lut.validation_at.insert(r, v);
        }
    }
    Ok(())
}

/// Sets the table's composition coefficients from calibration subnets and
/// their end-to-end timings.
fn fit_table(
    lut: &mut LatencyTable,
    space: &Space,
    archs: &[Arch],
    timings: &[Timing],
) -> anyhow::Result<()> {
    let mut terms = Vec::with_capacity(archs.len());
    let mut y = Vec::with_capacity(archs.len());
    for (a, t) in archs.iter().zip(timings) {
        terms.push(lut.composition_terms(space, a)?);
        y.push((t.median_ms - lut.base_ms).max(1e-9));
    }
    let (loo_full, loo_scale) = (loo_error(&terms, &y, true), loo_error(&terms, &y, false));
    // Two more coefficients must earn their place: a clear gain, not a tie
    // (on 16 subnets of our engine a 1% better leave-one-out fit was worse
    // on the held-out ones).
    let full = loo_full < 0.8 * loo_scale;
    if let Some(x) = fit_composition(&terms, &y, full) {
        [lut.scale, lut.per_layer_ms, lut.per_mega_element_ms] = x;
        lut.calibration_subnets = terms.len();
        lut.calibration_fits = fit_composition(&terms, &y, false).map(|s| CalibrationFits {
            scale_only: s[0],
            loo_error_pct_scale_only: 100.0 * loo_scale,
            loo_error_pct_three_terms: loo_full.is_finite().then_some(100.0 * loo_full),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::preset;
    use rand::SeedableRng;

    #[test]
    fn fast_cost_equals_layer_sums() {
        let s = preset("ofa-mbv3-w1.0").unwrap();
        let flops = FastCost::new(&s, &|l: &Layer| Ok(l.cost().macs as f64)).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for _ in 0..50 {
            let a = Arch::sample(&s, &mut rng);
            assert_eq!(flops.cost(&a), a.cost(&s).macs as f64, "{a}");
        }
    }

    /// Subnets whose times follow `y = 0.8·Σt + 0.05·layers + 0.3·M`
    /// exactly: the three-term fit recovers the coefficients and
    /// leave-one-out prefers it; with `y = 1.3·Σt` the factor alone is as
    /// good and the fit returns it.
    #[test]
    fn composition_fit_recovers_known_coefficients() {
        let terms: Vec<[f64; 3]> = (0..8)
            .map(|i| {
                let i = i as f64;
                [
                    2.0 + i * 0.7,
                    20.0 + (i * 3.0) % 7.0,
                    1.0 + (i * i) % 5.0 * 0.4,
                ]
            })
            .collect();
        let y: Vec<f64> = terms
            .iter()
            .map(|t| 0.8 * t[0] + 0.05 * t[1] + 0.3 * t[2])
            .collect();
        let x = fit_composition(&terms, &y, true).unwrap();
        for (got, want) in x.iter().zip([0.8, 0.05, 0.3]) {
            assert!((got - want).abs() < 1e-9, "{x:?}");
        }
        assert!(loo_error(&terms, &y, true) < 1e-9);
        assert!(loo_error(&terms, &y, false) > 1e-3);
        let y: Vec<f64> = terms.iter().map(|t| 1.3 * t[0]).collect();
        let x = fit_composition(&terms, &y, false).unwrap();
        assert!((x[0] - 1.3).abs() < 1e-12 && x[1] == 0.0 && x[2] == 0.0);
        // Too few subnets, or a singular system, give no three-term fit.
        assert!(fit_composition(&terms[..3], &y[..3], true).is_none());
        assert!(fit_composition(&vec![[1.0, 2.0, 3.0]; 5], &[1.0; 5], true).is_none());
    }

    /// The corrected table's prediction is the per-call cost plus, per
    /// layer, scale·t + per_layer + per_element·elements, computed by hand
    /// for the tiny space's smallest subnet.
    #[test]
    fn layer_ms_adds_the_fitted_terms() {
        let s = preset("tiny").unwrap();
        let a = Arch::min(&s);
        let ls = layers(&s, &a);
        // Every layer of the space gets a time (the search tabulates them
        // all); the smallest subnet's layers get 0.1, 0.2, ….
        let mut entries: BTreeMap<String, Timing> = distinct_layers(&s)
            .iter()
            .map(|l| (l.key(), Timing::default()))
            .collect();
        for (i, l) in ls.iter().enumerate() {
            entries.get_mut(&l.key()).unwrap().median_ms = 0.1 * (i + 1) as f64;
        }
        let lut = LatencyTable {
            format: "ofa-lut/1".into(),
            device: String::new(),
            backend: String::new(),
            threads: 1,
            runtime: "ofa".into(),
            runtime_version: String::new(),
            base_ms: 0.5,
            scale: 2.0,
            calibration_subnets: 5,
            per_layer_ms: 0.01,
            per_mega_element_ms: 3.0,
            calibration_fits: None,
            config: ProfileConfig {
                batch: 2,
                ..ProfileConfig::default()
            },
            space: s.clone(),
            entries,
            validation: None,
            validation_at: BTreeMap::new(),
        };
        let mut want = 0.5;
        for (i, l) in ls.iter().enumerate() {
            let (input, output) = match l {
                Layer::Conv(c) => (c.in_res.pow(2) * c.in_ch, c.out_res().pow(2) * c.out_ch),
                Layer::MbConv(b) => (b.in_res.pow(2) * b.in_ch, b.out_res().pow(2) * b.out_ch),
                Layer::Pool { in_res, ch } => (in_res * in_res * ch, *ch),
                Layer::Linear { in_f, out_f } => (*in_f, *out_f),
            };
            want += 2.0 * 0.1 * (i + 1) as f64 + 0.01 + 3.0 * (2 * (input + output)) as f64 / 1e6;
        }
        assert!((lut.predict(&s, &a).unwrap() - want).abs() < 1e-12);
        let fast = crate::search::efficiency::Efficiency::new(&s, Some(&lut)).unwrap();
        let got = fast
            .value(&a, crate::search::efficiency::Metric::Latency)
            .unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }

    /// A timer whose subnets take exactly `0.7·Σt + 0.02·layers +
    /// 0.5·M + base` ms (and whose layers take their index in ms): the
    /// check recovers the three coefficients, predicts its validation
    /// subnets without error, and times the `at` sets at their resolution.
    #[test]
    fn calibrate_and_validate_recovers_an_exact_composition() {
        struct Exact {
            table: Option<LatencyTable>,
            resolutions_seen: Vec<usize>,
        }
        impl LayerTimer for Exact {
            fn info(&self) -> RuntimeInfo {
                RuntimeInfo {
                    runtime: "exact".into(),
                    runtime_version: String::new(),
                    device: String::new(),
                    backend: String::new(),
                    threads: 1,
                }
            }
            fn time_layers(
                &mut self,
                layers: &[Layer],
                _: &ProfileConfig,
                _: &mut dyn FnMut(usize, usize),
            ) -> anyhow::Result<Vec<Timing>> {
                Ok((0..layers.len())
                    .map(|i| Timing {
                        median_ms: 0.01 * (1 + i % 13) as f64,
                        ..Timing::default()
                    })
                    .collect())
            }
            fn base_ms(&self) -> f64 {
                0.3
            }
            fn time_archs(
                &mut self,
                space: &Space,
                archs: &[Arch],
                _: &ProfileConfig,
            ) -> anyhow::Result<Vec<Timing>> {
                let t = self.table.as_ref().unwrap();
                archs
                    .iter()
                    .map(|a| {
                        self.resolutions_seen.push(a.r);
                        let [sum, n, m] = t.composition_terms(space, a)?;
                        Ok(Timing {
                            median_ms: 0.3 + 0.7 * sum + 0.02 * n + 0.5 * m,
                            ..Timing::default()
                        })
                    })
                    .collect()
            }
        }
        let s = preset("tiny").unwrap();
        let mut timer = Exact {
            table: None,
            resolutions_seen: Vec::new(),
        };
        let cfg = ProfileConfig::default();
        let mut lut = LatencyTable::profile_with(&s, &cfg, &mut timer, &mut |_, _| {}).unwrap();
        timer.table = Some(lut.clone());
        let r = *s.resolutions.last().unwrap();
        let check = TableCheck {
            calibrate: 12,
            validate: 6,
            seed: 3,
            at: vec![r],
        };
        calibrate_and_validate(&mut lut, &s, &check, &mut timer).unwrap();
        assert_eq!(lut.calibration_subnets, 12);
        for (got, want) in [lut.scale, lut.per_layer_ms, lut.per_mega_element_ms]
            .iter()
            .zip([0.7, 0.02, 0.5])
        {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let v = lut.validation.as_ref().unwrap();
        assert_eq!(v.subnets, 6);
        assert!(v.mean_abs_error_pct < 1e-6, "{}", v.mean_abs_error_pct);
        let at = &lut.validation_at[&r];
        assert!(at.mean_abs_error_pct < 1e-6);
        // 12 calibration and 6 validation subnets, then 6 at `r`.
        assert_eq!(timer.resolutions_seen.len(), 24);
        assert!(timer.resolutions_seen[18..].iter().all(|&x| x == r));
        // A resolution outside the space is an error, not a silent pass.
        let bad = TableCheck {
            at: vec![r + 1],
            ..check
        };
        assert!(calibrate_and_validate(&mut lut, &s, &bad, &mut timer).is_err());
    }

    #[test]
    fn distinct_layers_cover_every_subnet() {
        let s = preset("tiny").unwrap();
        let keys: std::collections::HashSet<String> =
            distinct_layers(&s).iter().map(|l| l.key()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let a = Arch::sample(&s, &mut rng);
            for l in layers(&s, &a) {
                assert!(keys.contains(&l.key()), "{} missing", l.key());
            }
        }
    }

    #[test]
    fn interleaved_timing_keeps_every_sample() {
        type B = burn::backend::Flex;
        let s = preset("tiny").unwrap();
        let device = Default::default();
        let net = crate::nn::SupernetConfig::new(s.clone()).init::<B>(&device);
        let (small, big) = (Arch::min(&s), Arch::max(&s));
        let subs = vec![
            crate::nn::extract(&net, &small),
            crate::nn::extract(&net, &big),
        ];
        let cfg = ProfileConfig {
            warmup: 1,
            reps: 10,
            ..ProfileConfig::default()
        };
        let t = time_subnets(&subs, &cfg, &device);
        assert_eq!(t.len(), 2);
        for x in &t {
            assert_eq!(x.reps, 10);
            assert!(x.p10_ms <= x.median_ms && x.median_ms <= x.p90_ms);
        }
        // Timing a lone layer with and without eviction both give finite times.
        let l = &layers(&s, &big)[2];
        for evict_kib in [0, 256] {
            let c = ProfileConfig {
                evict_kib,
                ..cfg.clone()
            };
            assert!(time_layer::<B>(l, &c, &device).median_ms.is_finite());
        }
    }
}
