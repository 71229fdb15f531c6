//! Checkpoints of a training run: the weights, the optimizer state, the
//! teacher (progressive shrinking) and the loop position. Written to a
//! temporary folder and renamed, so a checkpoint either exists whole or not
//! at all; a kill at any moment loses at most the steps since the last one.

use crate::nn::{TensorMap, read_safetensors, write_safetensors};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the loop stands. Randomness is a function of (seed, step), so the
/// step is the whole RNG state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Steps completed.
    pub step: u64,
    /// Index of the last phase whose start actions (sorting, teacher
    /// snapshot, optimizer reset) have run.
    pub phase_started: Option<usize>,
    /// Images processed (every network of a step counts its batch).
    pub images: u64,
    /// Wall-clock seconds of training so far, across resumes.
    pub seconds: f64,
    /// Running sums of the current epoch's loss.
    pub epoch_loss_sum: f64,
    pub epoch_loss_steps: u64,
}

/// Everything needed to continue a run.
pub struct Checkpoint {
    pub state: LoopState,
    pub weights: TensorMap,
    pub momentum: TensorMap,
    pub teacher: Option<TensorMap>,
}

fn folder(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes `ckpt` as `checkpoints/step-NNNNNNNN`, keeping the newest `keep`.
pub fn save(run: &Path, ckpt: &Checkpoint, keep: usize) -> anyhow::Result<PathBuf> {
    let dir = folder(run);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let name = format!("step-{:08}", ckpt.state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    write_safetensors(
        &tmp.join("weights.safetensors"),
        &ckpt.weights,
        HashMap::new(),
    )?;
    write_safetensors(
        &tmp.join("momentum.safetensors"),
        &ckpt.momentum,
        HashMap::new(),
    )?;
    if let Some(t) = &ckpt.teacher {
        write_safetensors(&tmp.join("teacher.safetensors"), t, HashMap::new())?;
    }
    crate::util::write_text_atomic(
        &tmp.join("state.json"),
        &serde_json::to_string_pretty(&ckpt.state)?,
    )?;
    let fin = dir.join(&name);
    let _ = std::fs::remove_dir_all(&fin);
    std::fs::rename(&tmp, &fin)
        .with_context(|| format!("{}: cannot rename checkpoint", fin.display()))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    let mut all = list(run)?;
    while all.len() > keep {
        let old = all.remove(0);
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(fin)
}

/// Complete checkpoints, oldest first.
pub fn list(run: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = folder(run);
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").exists()
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Reads a checkpoint folder.
pub fn load(path: &Path) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path.join("state.json"))
        .with_context(|| format!("{}: cannot read state.json", path.display()))?;
    let state: LoopState = serde_json::from_str(&text)
        .with_context(|| format!("{}: corrupt state.json", path.display()))?;
    let weights = read_safetensors(&path.join("weights.safetensors"))?.0;
    let momentum = read_safetensors(&path.join("momentum.safetensors"))?.0;
    let teacher_path = path.join("teacher.safetensors");
    let teacher = if teacher_path.exists() {
        Some(read_safetensors(&teacher_path)?.0)
    } else {
        None
    };
    Ok(Checkpoint {
        state,
        weights,
        momentum,
        teacher,
    })
}
