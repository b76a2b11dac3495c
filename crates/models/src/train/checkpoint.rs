//! Training checkpoints, one directory each (`model.safetensors`, `optimizer.safetensors`, `state.json`), written durably and atomically, kept to the last few, and read back with every mismatch refused by file and field.
//!
//! A checkpoint is assembled in a hidden directory beside its final place; each file is written to a
//! temporary file, `fsync`ed and renamed, the directory `fsync`ed, then renamed to `step-NNNNNNNNN` and the
//! parent `fsync`ed. A process killed at any moment leaves either the complete new checkpoint or none
//! (the previous ones untouched); leftovers of an interrupted write start with `.` and are removed by the
//! next write.

use crate::io::{HostArray, OutArray, TensorFile};
use crate::{Error, Result};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `state.json`'s `format`.
pub const STATE_FORMAT: &str = "rate-train-state/1";
/// The subdirectory of a run holding its checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source: e }
}

/// Writes `bytes` to `path` durably: a temporary file beside it, `fsync`, rename, `fsync` of the directory.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `fsync` of a directory (its entries' renames reach the disk).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

/// The per-layer measurements kept in the history (4.2.20's compression and sparsity).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Sum over heads of the coding rate of the heads' tokens (mean over the measured images).
    pub coding_rate: f64,
    /// Coding rate of each head's tokens.
    pub coding_rate_per_head: Vec<f64>,
    /// Fraction of exact zeros of the ISTA output (CRATE, TOST), `None` for AoT.
    pub sparsity: Option<f64>,
}

/// What one epoch gave.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimiser steps done at its end.
    pub step: u64,
    /// Mean training loss over its batches.
    pub train_loss: f64,
    /// Training accuracy (augmented batches, model changing).
    pub train_accuracy: f64,
    /// Test loss (no label smoothing), if a test split was given.
    pub test_loss: Option<f64>,
    /// Test accuracy.
    pub test_accuracy: Option<f64>,
    /// Learning rate of its last step.
    pub lr: f64,
    /// Training images per second over the epoch (data pipeline included, evaluation excluded).
    pub images_per_s: f64,
    /// Seconds of training steps in the epoch.
    pub train_seconds: f64,
    /// Wall seconds since the run started, at its end.
    pub wall_seconds: f64,
    /// Per-layer measurements after this epoch, when taken.
    pub layers: Option<Vec<LayerStats>>,
    /// Seconds of the epoch's training loop spent in collective calls (the
    /// gradient all-reduce, waiting included; 0 in one process).
    #[serde(default)]
    pub comm_seconds: f64,
}

/// Running sums of the epoch in progress (so a resumed epoch reports the same means).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Sum of the batch losses weighted by batch size.
    pub loss_sum: f64,
    /// Images classified right.
    pub correct: usize,
    /// Images seen.
    pub seen: usize,
    /// Wall seconds of the epoch's training loop so far (each step from the end of the previous one, loader
    /// waits included; evaluation and checkpoints excluded).
    pub seconds: f64,
}

/// `state.json`: where the run is and how it was started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`].
    pub format: String,
    /// `crate`, `aot` or `tost`.
    pub model: String,
    /// Epochs completed (0-based index of the epoch in progress).
    pub epoch: usize,
    /// Batches of epoch `epoch` done (0 at an epoch's end).
    pub position: usize,
    /// Optimiser steps done.
    pub step: u64,
    /// The random state: every draw is a function of `(seed, epoch)` (order) or `(seed, epoch, batch)`
    /// (augmentation), so `seed`, `epoch` and `position` are the whole generator state.
    pub seed: u64,
    /// The learning-rate schedule.
    pub schedule: ScheduleState,
    /// The training options.
    pub options: serde_json::Value,
    /// The command line that started the run.
    pub command_line: Vec<String>,
    /// Versions of the software.
    pub versions: BTreeMap<String, String>,
    /// The backend that trained.
    pub backend: String,
    /// Number of training images (a resumed run must see the same data).
    pub train_images: usize,
    /// The epochs so far.
    pub history: Vec<EpochRecord>,
    /// Per-layer measurements at initialisation.
    pub initial_layers: Option<Vec<LayerStats>>,
    /// The epoch in progress.
    pub progress: EpochProgress,
    /// Wall seconds of the run so far (all sessions).
    pub wall_seconds: f64,
    /// Processes that trained it, each on its share of every batch (1 without MPI);
    /// a resumed run must have as many.
    #[serde(default = "one_rank")]
    pub ranks: usize,
}

fn one_rank() -> usize {
    1
}

/// The schedule in `state.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Total steps.
    pub total_steps: u64,
    /// Floor.
    pub min_lr: f64,
}

/// Parameters, optimiser state and training state of one checkpoint, on the host.
#[derive(Clone, Debug)]
pub struct CheckpointData {
    /// `model.safetensors`: parameters by PyTorch name.
    pub model: BTreeMap<String, OutArray>,
    /// Its metadata: the model configuration and the normalisation.
    pub model_metadata: BTreeMap<String, String>,
    /// `optimizer.safetensors`: `m.<name>`, `v.<name>`.
    pub optimizer: BTreeMap<String, OutArray>,
    /// Its metadata: the hyperparameters and `steps` (JSON of the per-parameter step counts).
    pub optimizer_metadata: BTreeMap<String, String>,
    /// `state.json`.
    pub state: TrainState,
}

/// The directory name of the checkpoint after `step` steps.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Writes a checkpoint into `run_dir/checkpoints/step-N` durably and atomically, then removes all but the
/// newest `keep` checkpoints (at least this one). Returns its directory.
pub fn write_checkpoint(run_dir: &Path, data: &CheckpointData, keep: usize) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
    remove_leftovers(&root);
    let name = checkpoint_name(data.state.step);
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    let done = root.join(&name);
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        let model = crate::io::to_bytes(&data.model, &data.model_metadata)?;
        write_durable(&tmp.join("model.safetensors"), &model)?;
        let opt = crate::io::to_bytes(&data.optimizer, &data.optimizer_metadata)?;
        write_durable(&tmp.join("optimizer.safetensors"), &opt)?;
        let state = serde_json::to_vec_pretty(&data.state)
            .map_err(|e| Error::Config(format!("cannot encode the training state: {e}")))?;
        write_durable(&tmp.join("state.json"), &state)?;
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(|e| io_err(&done, e))?;
        }
        std::fs::rename(&tmp, &done).map_err(|e| io_err(&done, e))?;
        sync_dir(&root)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result.map(|_| done);
    }
    let all = list_checkpoints(&root)?;
    for old in all.iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(done)
}

/// Removes the hidden leftovers of interrupted writes of another process (not of this one).
fn remove_leftovers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mine = format!(".tmp{}", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && name.contains(".tmp") && !name.ends_with(&mine) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The complete checkpoints under `root` (directories `step-N` holding a `state.json`), oldest first.
pub fn list_checkpoints(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(root, e)),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("step-") && e.path().join("state.json").is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The checkpoint `--resume` names: a checkpoint directory itself, or a run directory whose newest
/// complete checkpoint is taken.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint directory"),
        ));
    }
    list_checkpoints(&path.join(CHECKPOINTS_DIR))?.pop().ok_or_else(|| Error::Format {
        path: path.display().to_string(),
        message: format!(
            "neither a checkpoint (no state.json) nor a run directory with checkpoints (nothing complete in {}/)",
            CHECKPOINTS_DIR
        ),
    })
}

/// A checkpoint read back: the two tensor files and the state, each checked for its format.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// `model.safetensors`.
    pub model: TensorFile,
    /// `optimizer.safetensors`'s tensors (shape, values).
    pub optimizer: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    /// The per-parameter step counts.
    pub steps: BTreeMap<String, u64>,
    /// The optimizer's metadata.
    pub optimizer_metadata: BTreeMap<String, String>,
    /// `state.json`.
    pub state: TrainState,
}

/// Reads a checkpoint directory; a missing, truncated or corrupt file is refused with its path and what is
/// wrong.
pub fn read_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path).map_err(|e| io_err(&state_path, e))?;
    let state: TrainState = serde_json::from_slice(&text).map_err(|e| Error::Format {
        path: state_path.display().to_string(),
        message: format!("not a training state: {e}"),
    })?;
    if state.format != STATE_FORMAT {
        return Err(Error::Format {
            path: state_path.display().to_string(),
            message: format!("field `format` = {:?}, expected {STATE_FORMAT:?}", state.format),
        });
    }
    let model = TensorFile::read(dir.join("model.safetensors"))?;
    let opt = TensorFile::read(dir.join("optimizer.safetensors"))?;
    let opt_path = opt.path.clone();
    let steps: BTreeMap<String, u64> = match opt.metadata.get("steps") {
        Some(s) => serde_json::from_str(s).map_err(|e| Error::Format {
            path: opt_path.clone(),
            message: format!("metadata `steps` is not a map of step counts: {e}"),
        })?,
        None => return Err(Error::Format { path: opt_path, message: "metadata `steps` is missing".into() }),
    };
    let optimizer = opt
        .tensors
        .iter()
        .map(|(k, a): (&String, &HostArray)| (k.clone(), (a.shape.clone(), a.data.clone())))
        .collect();
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        model,
        optimizer,
        steps,
        optimizer_metadata: opt.metadata,
        state,
    })
}

/// The dtype parameters are stored in for a backend element named `elem` (`f32` or `f64`): exact either way.
pub fn dtype_of(elem: &str) -> Dtype {
    if elem == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}
