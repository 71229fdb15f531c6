//! Import of the released specialized networks: a folder as
//! `ofa_specialized()` in the reference's `ofa/model_zoo.py` loads it —
//! `net.config` (the static `MobileNetV3` / `ProxylessNASNets` config),
//! `run.config` (its `image_size`) and `init` (`{'state_dict': …}`) —
//! becomes an extracted-subnet folder of the OFA space it was taken from,
//! so `ofa predict`, `ofa latency --measure`, `ofa finetune` and `ofa export
//! --onnx` work on it.
//!
//! The static network's tensor names are our subnet's (nn/keys.rs), so the
//! weights load through the same walk as our own subnet files; what this
//! module adds is reading the architecture back out of `net.config`.

use super::pytorch::read_checkpoint;
use crate::nn::{OfaBackend, Subnet};
use crate::space::{Arch, Space};
use serde_json::Value;
use std::path::Path;

/// One block of `net.config` as the architecture sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BlockConfig {
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    expand: usize,
    mid: Option<usize>,
}

fn field(v: &Value, key: &str) -> Option<usize> {
    v.get(key)?.as_u64().map(|x| x as usize)
}

fn block_config(i: usize, b: &Value) -> Result<BlockConfig, String> {
    // A ResidualBlock wraps the MBConvLayer as `conv` (older files say
    // `mobile_inverted_conv`).
    let c = b
        .get("conv")
        .or_else(|| b.get("mobile_inverted_conv"))
        .ok_or_else(|| format!("block {i} has no 'conv' layer"))?;
    let get = |k: &str| field(c, k).ok_or_else(|| format!("block {i}: no integer '{k}'"));
    Ok(BlockConfig {
        in_ch: get("in_channels")?,
        out_ch: get("out_channels")?,
        kernel: get("kernel_size")?,
        expand: get("expand_ratio")?,
        mid: field(c, "mid_channels"),
    })
}

/// The spaces a network family can come from (`net.config`'s `name`).
fn candidate_spaces(name: &str) -> Result<Vec<Space>, String> {
    let names: &[&str] = match name {
        "MobileNetV3" => &["ofa-mbv3-w1.0", "ofa-mbv3-w1.2"],
        "ProxylessNASNets" => &["ofa-proxyless-w1.3"],
        other => {
            return Err(format!(
                "network '{other}' is not a MobileNetV3 or ProxylessNASNets"
            ));
        }
    };
    names
        .iter()
        .map(|n| crate::space::preset(n).ok_or_else(|| format!("no preset {n}")))
        .collect()
}

/// The architecture of `blocks` (`net.config`'s list, the fixed first block
/// included) within `space`, at resolution `r`: blocks go to the stages in
/// order by their output width; hidden blocks get the smallest choices.
fn arch_in(space: &Space, blocks: &[BlockConfig], r: usize) -> Result<Arch, String> {
    let (first, rest) = blocks.split_first().ok_or("no blocks")?;
    if first.out_ch != space.first_block_width() {
        return Err(format!(
            "first block has {} outputs, space '{}' has {}",
            first.out_ch,
            space.name,
            space.first_block_width()
        ));
    }
    let layout = space.blocks();
    let mut arch = Arch::min(space).with_resolution(r);
    arch.d = vec![0; space.stages.len()];
    let mut stage = 0;
    for (i, b) in rest.iter().enumerate() {
        while stage < space.stages.len()
            && (space.stage_width(stage) != b.out_ch
                || arch.d[stage] == space.stages[stage].max_depth)
        {
            stage += 1;
        }
        if stage == space.stages.len() {
            return Err(format!(
                "block {} ({} → {} channels) fits no stage of space '{}'",
                i + 1,
                b.in_ch,
                b.out_ch,
                space.name
            ));
        }
        let slot = layout
            .iter()
            .find(|l| l.stage == stage && l.depth_pos == arch.d[stage])
            .expect("a stage has max_depth blocks");
        if let Some(mid) = b.mid
            && mid != space.middle_width(slot.in_ch, b.expand)
        {
            return Err(format!(
                "block {}: {mid} middle channels, space '{}' has {} for expand ratio {}",
                i + 1,
                space.name,
                space.middle_width(slot.in_ch, b.expand),
                b.expand
            ));
        }
        arch.ks[slot.index] = b.kernel;
        arch.e[slot.index] = b.expand;
        arch.d[stage] += 1;
    }
    arch.validate(space).map_err(|e| e.to_string())?;
    Ok(arch)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))
}

/// Reads a specialized-network folder. `space` picks the OFA space (by
/// default the one of its family whose widths fit), `resolution` overrides
/// `run.config`'s `image_size`.
pub fn import_specialized<B: OfaBackend>(
    dir: &Path,
    space: Option<&Space>,
    resolution: Option<usize>,
    device: &B::Device,
) -> anyhow::Result<Subnet<B>> {
    let config_path = dir.join("net.config");
    let config = read_json(&config_path)?;
    let err = |m: String| anyhow::anyhow!("{}: {m}", config_path.display());
    let name = config["name"].as_str().unwrap_or("");
    let blocks: Vec<BlockConfig> = config["blocks"]
        .as_array()
        .ok_or_else(|| err("no 'blocks' list".into()))?
        .iter()
        .enumerate()
        .map(|(i, b)| block_config(i, b))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let r = match resolution {
        Some(r) => r,
        None => {
            let run = dir.join("run.config");
            let v = read_json(&run)?;
            let size = &v["image_size"];
            size.as_u64()
                .or_else(|| size.as_array()?.last()?.as_u64())
                .ok_or_else(|| anyhow::anyhow!("{}: no 'image_size'", run.display()))?
                as usize
        }
    };
    let spaces = match space {
        Some(s) => vec![s.clone()],
        None => candidate_spaces(name).map_err(err)?,
    };
    let mut problems = Vec::new();
    let found = spaces.iter().find_map(|s| match arch_in(s, &blocks, r) {
        Ok(a) => Some((s, a)),
        Err(e) => {
            problems.push(format!("{}: {e}", s.name));
            None
        }
    });
    let (space, arch) =
        found.ok_or_else(|| err(format!("fits no space ({})", problems.join("; "))))?;
    let init = dir.join("init");
    let (map, _) = read_checkpoint(&init)?;
    Subnet::from_tensor_map(space, &arch, &map, device).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not fit {arch} of space '{}': {e}",
            init.display(),
            space.name
        )
    })
}
