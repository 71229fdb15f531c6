//! Shipping subnets (DESIGN §6): standalone subnet folders (safetensors +
//! JSON architecture), ONNX export checked by an independent runtime,
//! import of the public OFA PyTorch checkpoints, and `.npy` batches for
//! `ofa predict`.

pub mod npy;
pub mod onnx;
#[cfg(feature = "onnxruntime")]
pub mod ort_runtime;
pub mod pytorch;
pub mod specialized;

pub use crate::nn::{load_subnet, save_subnet};

/// What times layers and subnets for a latency table: `ofa` (our engine on
/// backend `B`) or `onnxruntime` (the exported ONNX in ONNX Runtime, with as
/// many threads as ours; cargo feature `onnxruntime`).
pub fn timer<B: crate::nn::OfaBackend>(
    runtime: &str,
    ort_lib: Option<&std::path::Path>,
    device: &B::Device,
) -> anyhow::Result<Box<dyn crate::search::latency::LayerTimer>> {
    match runtime {
        "ofa" => Ok(Box::new(crate::search::latency::EngineTimer::<B> {
            device: device.clone(),
        })),
        "onnxruntime" => ort_timer::<B>(ort_lib, device),
        other => anyhow::bail!("unknown runtime '{other}' (ofa or onnxruntime)"),
    }
}

#[cfg(feature = "onnxruntime")]
fn ort_timer<B: crate::nn::OfaBackend>(
    ort_lib: Option<&std::path::Path>,
    device: &B::Device,
) -> anyhow::Result<Box<dyn crate::search::latency::LayerTimer>> {
    let runtime = ort_runtime::OrtRuntime::load(ort_lib, rayon::current_num_threads())?;
    Ok(Box::new(ort_runtime::OrtTimer::<B> {
        runtime,
        device: device.clone(),
        base_ms: 0.0,
    }))
}

#[cfg(not(feature = "onnxruntime"))]
fn ort_timer<B: crate::nn::OfaBackend>(
    _: Option<&std::path::Path>,
    _: &B::Device,
) -> anyhow::Result<Box<dyn crate::search::latency::LayerTimer>> {
    anyhow::bail!(
        "this ofa was built without ONNX Runtime support; rebuild with \
         `cargo build --release --features onnxruntime`"
    )
}

/// A deliverable: the subnet folder (`save_subnet`, with `extra` in its
/// arch.json) and its ONNX export `model.onnx`, checked in tract. Returns
/// the ONNX path and tract's relative logit difference; over 1e-4 is an
/// error.
pub fn ship<B: crate::nn::OfaBackend>(
    sub: &crate::nn::Subnet<B>,
    dir: &std::path::Path,
    extra: serde_json::Value,
    device: &B::Device,
) -> anyhow::Result<(std::path::PathBuf, f64)> {
    save_subnet(sub, dir, extra)?;
    let path = dir.join("model.onnx");
    onnx::export(sub, &path)?;
    let diff = onnx::check(sub, &path, device)?;
    if diff > 1e-4 {
        anyhow::bail!("{}: tract logits differ by {diff:.2e}", path.display());
    }
    Ok((path, diff))
}
