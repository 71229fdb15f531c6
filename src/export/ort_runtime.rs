//! ONNX Runtime as the latency yardstick (cargo feature `onnxruntime`):
//! users deploy the exported ONNX with ONNX Runtime, so a latency table of
//! our own engine's layer times describes the wrong engine. Each layer
//! configuration is exported as a one-operator ONNX graph
//! ([`super::onnx::layer_to_onnx`]) and timed in ONNX Runtime's CPU
//! provider; whole subnets are exported and timed the same way.
//!
//! The library is loaded at run time (the `ort` crate's `load-dynamic`):
//! the `libonnxruntime.so` of the PyPI `onnxruntime` wheel
//! (`onnxruntime/capi/`), found through `--ort-lib`, `$ORT_DYLIB_PATH`, or
//! the `python3` on `PATH`.

use super::onnx::{identity_onnx, layer_to_onnx, to_onnx};
use crate::nn::{LayerModule, OfaBackend, SupernetConfig, extract};
use crate::search::latency::{LayerTimer, ProfileConfig, RuntimeInfo, Timing, time_interleaved};
use crate::space::{Arch, Layer, Space};
use ort::session::Session;
use ort::value::Tensor;
use prost::Message;
use std::path::{Path, PathBuf};

fn ort_err<T: std::fmt::Display>(e: T) -> anyhow::Error {
    anyhow::anyhow!("onnxruntime: {e}")
}

/// The `libonnxruntime.so` to load: `lib`, else `$ORT_DYLIB_PATH`, else the
/// one inside the `onnxruntime` Python package.
pub fn find_library(lib: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = lib {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(p.into());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))",
        ])
        .output();
    if let Ok(o) = out
        && o.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut libs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            if let Some(l) = libs.pop() {
                return Ok(l);
            }
        }
    }
    anyhow::bail!(
        "ONNX Runtime not found: install it (`python3 -m pip install onnxruntime`) or point \
         --ort-lib / $ORT_DYLIB_PATH at its libonnxruntime.so"
    )
}

/// A loaded ONNX Runtime with a thread count.
pub struct OrtRuntime {
    env: ort::environment::Environment,
    library: PathBuf,
    threads: usize,
}

impl OrtRuntime {
    /// Loads the library once per process (ONNX Runtime allows one).
    ///
    /// Every session shares one global intra-op pool of `threads` threads,
    /// as the one session of a deployed process has one pool: with a pool
    /// per session, the many sessions a latency table times side by side
    /// each keep threads spinning after their run, which then compete with
    /// the next session's run and made end-to-end timings erratic (a 176-px
    /// subnet timed slower than the 224-px largest one).
    pub fn load(lib: Option<&Path>, threads: usize) -> anyhow::Result<Self> {
        let library = find_library(lib)?;
        let threads = threads.max(1);
        let builder = ort::init_from(&library)
            .map_err(|e| anyhow::anyhow!("{}: cannot load ONNX Runtime: {e}", library.display()))?;
        // After init_from: creating the options calls into the library.
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_inter_threads(1))
            .map_err(ort_err)?;
        let env = builder
            .with_name("ofa")
            .with_global_thread_pool(pool)
            .build()
            .map_err(ort_err)?;
        Ok(OrtRuntime {
            env,
            library,
            threads,
        })
    }

    /// The library's version, from its file name (`libonnxruntime.so.1.32.0`).
    pub fn version(&self) -> String {
        self.library
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("libonnxruntime.so."))
            .unwrap_or("unknown")
            .to_string()
    }

    fn session(&self, model: &[u8]) -> anyhow::Result<Session> {
        // The thread counts are the environment's global pool's.
        Session::builder(&self.env)
            .map_err(ort_err)?
            .commit_from_memory(model)
            .map_err(ort_err)
    }

    /// Times models with inputs of the given shapes in interleaved rounds
    /// (random normal input), caches evicted before each run as for our
    /// own layers.
    fn time_models(
        &self,
        models: &[(Vec<u8>, [usize; 4])],
        cfg: &ProfileConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<Timing>> {
        let mut sessions = Vec::with_capacity(models.len());
        let mut inputs = Vec::with_capacity(models.len());
        for (bytes, shape) in models {
            sessions.push(self.session(bytes)?);
            let n: usize = shape.iter().product();
            let mut s = 0x9E3779B97F4A7C15u64;
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect();
            inputs.push(Tensor::from_array((*shape, data)).map_err(ort_err)?);
        }
        let mut failure = None;
        let timings = time_interleaved(
            models.len(),
            cfg,
            &mut |_| crate::search::latency::evict_private_caches(cfg.evict_kib),
            &mut |i| {
                // By reference: a copy of the input is no part of the layer.
                if let Err(e) = sessions[i].run(ort::inputs!["input" => &inputs[i]]) {
                    failure.get_or_insert_with(|| format!("{e}"));
                }
            },
            progress,
        );
        match failure {
            Some(e) => Err(anyhow::anyhow!("onnxruntime: {e}")),
            None => Ok(timings),
        }
    }
}

/// Our layers and subnets, exported and timed in ONNX Runtime. `B` builds
/// the networks that are exported (their weights do not matter for time).
pub struct OrtTimer<B: OfaBackend> {
    pub runtime: OrtRuntime,
    pub device: B::Device,
    /// The per-call cost measured by the last [`LayerTimer::time_layers`].
    pub base_ms: f64,
}

impl<B: OfaBackend> LayerTimer for OrtTimer<B> {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            runtime: "onnxruntime".into(),
            runtime_version: self.runtime.version(),
            device: crate::util::cpu_name(),
            backend: "onnxruntime-cpu".into(),
            threads: self.runtime.threads,
        }
    }

    fn base_ms(&self) -> f64 {
        self.base_ms
    }

    /// Every `Session::run` pays a fixed cost (argument checks, output
    /// allocation, thread-pool wake-up) that a whole network pays once, not
    /// once per layer: it is measured on a one-element `Identity` graph and
    /// taken out of every layer's times, and the table counts it once per
    /// subnet (`base_ms`).
    fn time_layers(
        &mut self,
        layers: &[Layer],
        cfg: &ProfileConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<Timing>> {
        let empty = [(identity_onnx().encode_to_vec(), [1, 1, 1, 1])];
        let base = self.runtime.time_models(&empty, cfg, &mut |_, _| {})?[0].median_ms;
        let models: Vec<(Vec<u8>, [usize; 4])> = layers
            .iter()
            .map(|l| {
                let (module, mut shape) = LayerModule::<B>::new(l, &self.device);
                shape[0] = cfg.batch;
                (layer_to_onnx(&module, shape).encode_to_vec(), shape)
            })
            .collect();
        let timings = self.runtime.time_models(&models, cfg, progress)?;
        self.base_ms = base;
        let less = |x: f64| (x - base).max(0.0);
        Ok(timings
            .into_iter()
            .map(|t| Timing {
                median_ms: less(t.median_ms),
                p10_ms: less(t.p10_ms),
                p90_ms: less(t.p90_ms),
                reps: t.reps,
            })
            .collect())
    }

    fn time_archs(
        &mut self,
        space: &Space,
        archs: &[Arch],
        cfg: &ProfileConfig,
    ) -> anyhow::Result<Vec<Timing>> {
        let net = SupernetConfig::new(space.clone()).init::<B>(&self.device);
        let models: Vec<(Vec<u8>, [usize; 4])> = archs
            .iter()
            .map(|a| {
                let sub = extract(&net, a);
                let shape = [cfg.batch, space.in_channels, a.r, a.r];
                (to_onnx(&sub).encode_to_vec(), shape)
            })
            .collect();
        self.runtime.time_models(&models, cfg, &mut |_, _| {})
    }
}
