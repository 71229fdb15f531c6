//! Shipping subnets (DESIGN §6): standalone subnet folders (safetensors +
//! JSON architecture), ONNX export checked by an independent runtime,
//! import of the public OFA PyTorch checkpoints, and `.npy` batches for
//! `ofa predict`.

pub mod npy;
pub mod onnx;
pub mod pytorch;

use crate::nn::{OfaBackend, Subnet, read_safetensors, write_safetensors};
use crate::space::{Arch, Space};
use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;

const SUBNET_FORMAT: &str = "ofa-subnet/1";

/// Writes a subnet folder: `subnet.safetensors` (weights under the
/// reference's static-network keys, space and arch in its metadata) and
/// `arch.json` (both architecture forms, FLOPs, parameters).
pub fn save_subnet<B: OfaBackend>(
    net: &Subnet<B>,
    dir: &Path,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let meta = HashMap::from([
        ("format".to_string(), SUBNET_FORMAT.to_string()),
        ("space".to_string(), serde_json::to_string(&net.space)?),
        ("arch".to_string(), serde_json::to_string(&net.arch)?),
    ]);
    write_safetensors(&dir.join("subnet.safetensors"), &net.to_tensor_map(), meta)?;
    let cost = net.arch.cost(&net.space);
    let mut info = serde_json::json!({
        "space": net.space.name,
        "arch": net.arch.to_json(&net.space),
        "reference": net.arch.to_reference_json(),
        "mflops": cost.mflops(),
        "mparams": cost.mparams(),
    });
    if let (Some(obj), serde_json::Value::Object(e)) = (info.as_object_mut(), extra) {
        obj.extend(e);
    }
    crate::util::write_text_atomic(
        &dir.join("arch.json"),
        &serde_json::to_string_pretty(&info)?,
    )
}

/// Loads a subnet folder written by [`save_subnet`].
pub fn load_subnet<B: OfaBackend>(dir: &Path, device: &B::Device) -> anyhow::Result<Subnet<B>> {
    let path = dir.join("subnet.safetensors");
    if !path.exists() {
        anyhow::bail!(
            "{}: not a subnet folder (no subnet.safetensors)",
            dir.display()
        );
    }
    let (map, meta) = read_safetensors(&path)?;
    if meta.get("format").map(String::as_str) != Some(SUBNET_FORMAT) {
        anyhow::bail!("{}: not an ofa subnet file", path.display());
    }
    let space: Space = serde_json::from_str(meta.get("space").map(String::as_str).unwrap_or(""))
        .with_context(|| format!("{}: bad space metadata", path.display()))?;
    let arch: Arch = serde_json::from_str(meta.get("arch").map(String::as_str).unwrap_or(""))
        .with_context(|| format!("{}: bad arch metadata", path.display()))?;
    arch.validate(&space)
        .with_context(|| format!("{}", path.display()))?;
    Subnet::from_tensor_map(&space, &arch, &map, device)
        .with_context(|| format!("{}", path.display()))
}
