//! The training loop of CRATE (4.2.20), AoT (4.3.2) and TOST (4.3.15) by back-propagation (Section 4.3's "backward learning", Figure 4.15): optimisers, schedule, data pipeline, evaluation, checkpoints and resume, generic over the backend.
//!
//! [`Session`] holds a classifier, its optimiser and where the run is; [`Session::run`] trains epoch by
//! epoch, evaluates on the test split after each, measures the per-layer coding rate and sparsity at
//! initialisation and at a few epochs, logs `metrics.jsonl`, writes checkpoints (every
//! `checkpoint_every` steps and at each epoch's end) and stops cleanly when asked (a checkpoint first).
//! A run resumed from a checkpoint continues bit for bit: the parameters and optimiser state are stored
//! exactly, every random draw is a function of `(seed, epoch, batch)`, and the micro-batch gradients are
//! summed by a fixed tree.

pub mod checkpoint;
pub mod data;
pub mod optim;
pub mod schedule;

pub use checkpoint::{EpochRecord, LayerStats, TrainState};
pub use data::{Augment, HostBatch, Images, Loader, Normalisation};
pub use optim::{
    clip_global_norm, global_norm, no_weight_decay, AdamW, Optimizer, OptimizerConfig, OptimizerKind,
};
pub use schedule::Schedule;

use crate::nn::classifier::{Block, Classifier, ModelConfig};
use crate::nn::config::Meta;
use crate::nn::exec::{runs_on_host, Execution};
use crate::nn::loss::CrossEntropy;
use crate::nn::Module;
use crate::{Error, Kernels, Result, Tensor};
use checkpoint::{CheckpointData, EpochProgress, LoadedCheckpoint, ScheduleState, STATE_FORMAT};
use rate_core::backend::Element;
use rate_core::collective::{agreed, Collective, Local};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Everything a run is configured by (stored in `state.json`; a resumed run keeps them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Epochs in all.
    pub epochs: usize,
    /// Images per optimiser step.
    pub batch: usize,
    /// `adamw`, `lion` or `sgd`.
    pub optimizer: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay (not applied to [`no_weight_decay`] parameters).
    pub weight_decay: f64,
    /// `(beta1, beta2)` of AdamW and Lion.
    pub betas: (f64, f64),
    /// SGD momentum.
    pub momentum: f64,
    /// SGD with Nesterov momentum.
    pub nesterov: bool,
    /// Warm-up epochs (linear), may be fractional.
    pub warmup_epochs: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// Clip the gradients to this global norm (0: no clipping).
    pub clip_norm: f64,
    /// Label smoothing of the training loss.
    pub label_smoothing: f64,
    /// Random-crop zero padding (0: no crop).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub hflip: bool,
    /// Seed of the initialisation, the order and the augmentation.
    pub seed: u64,
    /// Images per evaluation batch.
    pub eval_batch: usize,
    /// Images per micro-batch, run in parallel on the CPU (0: the whole batch at once).
    pub micro_batch: usize,
    /// Assemble the next batch on a second thread.
    pub prefetch: bool,
    /// Log a step record every this many steps (0: none).
    pub log_every: u64,
    /// Write a checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep: usize,
    /// Test images the per-layer measurements use (0: none).
    pub measure_images: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch: 128,
            optimizer: "adamw".into(),
            lr: 1e-3,
            weight_decay: 0.05,
            betas: (0.9, 0.999),
            momentum: 0.9,
            nesterov: true,
            warmup_epochs: 1.0,
            min_lr: 1e-5,
            clip_norm: 1.0,
            label_smoothing: 0.1,
            crop_padding: 2,
            hflip: false,
            seed: 0,
            eval_batch: 500,
            micro_batch: 8,
            prefetch: true,
            log_every: 20,
            checkpoint_every: 0,
            keep: 2,
            measure_images: 64,
        }
    }
}

impl TrainOptions {
    /// Checks every option; the error names the option and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == 0 {
            return bad("epochs = 0: train for at least one epoch".into());
        }
        if self.batch == 0 {
            return bad("batch = 0: a batch needs at least one image".into());
        }
        if self.eval_batch == 0 {
            return bad("eval_batch = 0: an evaluation batch needs at least one image".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr = {}: the learning rate must be positive and finite", self.lr));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(format!("warmup = {} epochs: must be non-negative", self.warmup_epochs));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return bad(format!("clip_norm = {}: must be non-negative (0: off)", self.clip_norm));
        }
        CrossEntropy::new(self.label_smoothing)?;
        self.optimizer_config()?.validate()?;
        self.schedule(1)?;
        Ok(())
    }

    /// The optimiser these options describe (at the peak learning rate).
    pub fn optimizer_config(&self) -> Result<OptimizerConfig> {
        let kind = OptimizerKind::parse(&self.optimizer)?;
        Ok(OptimizerConfig {
            kind,
            lr: self.lr,
            betas: self.betas,
            eps: 1e-8,
            weight_decay: self.weight_decay,
            momentum: if kind == OptimizerKind::Sgd { self.momentum } else { 0.0 },
            nesterov: kind == OptimizerKind::Sgd && self.nesterov,
        })
    }

    /// The schedule for `batches_per_epoch` batches per epoch.
    pub fn schedule(&self, batches_per_epoch: usize) -> Result<Schedule> {
        let total = (self.epochs * batches_per_epoch) as u64;
        let warmup = ((self.warmup_epochs * batches_per_epoch as f64).round() as u64).min(total);
        let s = Schedule {
            lr: self.lr,
            warmup_steps: warmup,
            total_steps: total,
            min_lr: self.min_lr.min(self.lr),
        };
        s.validate()?;
        Ok(s)
    }

    /// The augmentation.
    pub fn augment(&self) -> Augment {
        Augment { crop_padding: self.crop_padding, hflip: self.hflip }
    }

    /// How a batch is executed on a backend named `backend_name` (micro-batches only on the CPU).
    pub fn execution(&self, backend_name: &str) -> Execution {
        if self.micro_batch == 0 || !runs_on_host(backend_name) {
            Execution { micro_batch: None, parallel: false }
        } else {
            Execution::parallel_micro_batches(self.micro_batch)
        }
    }

    /// The epochs (1-based) after which the per-layer measurements are taken: about every quarter, and the last.
    pub fn measure_epochs(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (1..=4).map(|q| (self.epochs * q).div_ceil(4)).collect();
        v.dedup();
        v
    }
}

/// One logged optimiser step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    /// 1-based step.
    pub step: u64,
    /// 1-based epoch.
    pub epoch: usize,
    /// Batch of the epoch (1-based) and batches per epoch.
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// The batch's mean training loss.
    pub loss: f64,
    /// The batch's training accuracy.
    pub accuracy: f64,
    /// Running accuracy over the epoch so far.
    pub running_accuracy: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training images per second over the epoch so far.
    pub images_per_s: f64,
    /// Wall seconds since the run started.
    pub wall_seconds: f64,
}

/// What the caller watches and controls while a run trains.
pub trait Hooks {
    /// After every optimiser step.
    fn on_step(&mut self, _record: &StepRecord) {}
    /// After every epoch (evaluated).
    fn on_epoch(&mut self, _record: &EpochRecord) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _dir: &Path) {}
    /// Checked after every step: stop after a checkpoint.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// No hooks.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// How [`Session::run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every epoch done; the final parameters are in the run directory's `model.safetensors`.
    Finished,
    /// Stopped on request after a step; the checkpoint to resume from.
    Stopped(PathBuf),
}

/// Test loss and accuracy of a classifier.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    /// Fraction classified right.
    pub accuracy: f64,
    /// Images.
    pub images: usize,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    /// Accuracy of each class (NaN for a class without images).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| row[c] as f64 / row.iter().sum::<usize>() as f64)
            .collect()
    }
}

/// The images `ids` of `images` normalised, as a backend tensor `[n, C, H, W]`.
fn upload<B: Kernels>(backend: &B, images: &Images, norm: &Normalisation, ids: &[usize]) -> Tensor<B> {
    let mut x = data::gather(images, ids);
    norm.apply(&mut x, images.size * images.size);
    Tensor::from_f64(backend, &x, &[ids.len(), images.channels, images.size, images.size])
}

/// Loss, accuracy and confusion matrix of `model` on `images` (normalised by `norm`), in batches of `batch`,
/// without gradients.
pub fn evaluate<B: Kernels, L: Block<B>>(
    model: &Classifier<B, L>,
    images: &Images,
    norm: &Normalisation,
    batch: usize,
    exec: &Execution,
) -> Result<Evaluation> {
    evaluate_shared(model, images, norm, batch, exec, &Local)
}

/// [`evaluate`] with the images shared by the processes of `comm`
/// ([`Collective::share`]): the loss sums and confusion counts are summed
/// over the processes, so every process returns the whole split's figures.
pub fn evaluate_shared<B: Kernels, L: Block<B>>(
    model: &Classifier<B, L>,
    images: &Images,
    norm: &Normalisation,
    batch: usize,
    exec: &Execution,
    comm: &dyn Collective,
) -> Result<Evaluation> {
    let classes = model.config.vision().num_classes;
    let be = model.cls_token.backend();
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut loss_sum = 0.0;
    let ce = CrossEntropy::default();
    let n = images.len();
    let ids: Vec<usize> = comm.share(n).collect();
    for chunk in ids.chunks(batch.max(1)) {
        let x = upload(be, images, norm, chunk);
        let labels: Vec<usize> = chunk.iter().map(|&i| images.dataset.labels()[i]).collect();
        let logits = model.logits_with(&x, exec)?;
        let (loss, _) = ce.forward(&logits, &labels)?;
        loss_sum += loss * chunk.len() as f64;
        for (p, &l) in logits.argmax_axis(1).iter().zip(&labels) {
            confusion[l][*p] += 1;
        }
    }
    if comm.size() > 1 {
        let mut buf = vec![loss_sum];
        buf.extend(confusion.iter().flatten().map(|&c| c as f64));
        comm.all_reduce_sum(&mut buf)?;
        loss_sum = buf[0];
        for (c, &v) in confusion.iter_mut().flatten().zip(&buf[1..]) {
            *c = v as usize;
        }
    }
    let right: usize = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(Evaluation { loss: loss_sum / n as f64, accuracy: right as f64 / n as f64, images: n, confusion })
}

/// The sum over the processes of `comm` of the gradients of each share of a
/// batch weighted by the share's fraction `weight` (so the result is the
/// gradient of the whole batch's mean loss), with the loss (weighted the
/// same), the images classified right and whether any process was asked to
/// stop, in one all-reduce. Returns `(loss, correct, stop)`.
fn all_reduce_step<B: Kernels>(
    grads: &mut crate::nn::Grads<B>,
    loss: f64,
    correct: usize,
    stop: bool,
    weight: f64,
    comm: &dyn Collective,
) -> Result<(f64, usize, bool)> {
    let total: usize = grads.values().map(|g| g.numel()).sum();
    let mut buf = Vec::with_capacity(total + 3);
    for g in grads.values() {
        buf.extend(g.to_f64_vec().into_iter().map(|v| v * weight));
    }
    buf.extend([loss * weight, correct as f64, if stop { 1.0 } else { 0.0 }]);
    comm.all_reduce_sum(&mut buf)?;
    let mut at = 0;
    for g in grads.values_mut() {
        let k = g.numel();
        *g = Tensor::from_f64(g.backend(), &buf[at..at + k], g.shape());
        at += k;
    }
    Ok((buf[total], buf[total + 1].round() as usize, buf[total + 2] > 0.0))
}

/// FNV-1a over the bits of every parameter, in name order.
fn parameter_hash(arrays: &BTreeMap<String, crate::io::OutArray>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, a) in arrays {
        for b in name.bytes().chain(a.data.iter().flat_map(|v| v.to_bits().to_le_bytes())) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Stops the run when the processes of `comm` hold different parameters
/// after `epoch` (every process's hash compared with rank 0's).
fn check_same_parameters(
    arrays: &BTreeMap<String, crate::io::OutArray>,
    comm: &dyn Collective,
    epoch: usize,
) -> Result<()> {
    let h = parameter_hash(arrays);
    // two 32-bit halves, exact in f64
    comm.same_everywhere(
        &format!("after epoch {epoch} the processes diverged, so the run stops: parameter hash (two halves)"),
        &[(h >> 32) as f64, (h & 0xffff_ffff) as f64],
    )?;
    Ok(())
}

/// The per-layer measurements (coding rate per head, ISTA sparsity) of `model` on the first `n` images.
pub fn measure_layers<B: Kernels, L: Block<B>>(
    model: &Classifier<B, L>,
    images: &Images,
    norm: &Normalisation,
    n: usize,
) -> Result<Vec<LayerStats>> {
    let ids: Vec<usize> = (0..n.min(images.len())).collect();
    let x = upload(model.cls_token.backend(), images, norm, &ids);
    let (_, cache) = model.forward(&x)?;
    Ok(model
        .measure(&cache)?
        .into_iter()
        .map(|m| LayerStats {
            coding_rate: m.coding_rate,
            coding_rate_per_head: m.coding_rate_per_head,
            sparsity: m.sparsity.map(|s| s.0),
        })
        .collect())
}

/// A training run: the model, its optimiser, the data and where the run is.
pub struct Session<'d, B: Kernels, L: Block<B>> {
    /// The classifier being trained.
    pub model: Classifier<B, L>,
    /// Its optimiser.
    pub optimizer: Optimizer<B>,
    /// The options.
    pub options: TrainOptions,
    /// Where the run is.
    pub state: TrainState,
    /// The training split's normalisation.
    pub norm: Normalisation,
    /// The run directory (checkpoints, metrics, final model).
    pub out: PathBuf,
    train: Images<'d>,
    test: Option<Images<'d>>,
    schedule: Schedule,
    model_name: String,
    comm: Arc<dyn Collective>,
}

/// Versions recorded in `state.json`.
fn versions() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("rate".into(), env!("CARGO_PKG_VERSION").into());
    v.insert("state_format".into(), STATE_FORMAT.into());
    v
}

impl<'d, B: Kernels, L: Block<B>> Session<'d, B, L> {
    /// A fresh run of a new model (initialised with `options.seed`) on `train` (normalised by its own
    /// per-channel statistics), evaluated on `test`; `model_name` is `crate`, `aot` or `tost`.
    pub fn new(
        backend: &B,
        config: &L::Config,
        options: TrainOptions,
        train: Images<'d>,
        test: Option<Images<'d>>,
        out: &Path,
        model_name: &str,
        command_line: Vec<String>,
    ) -> Result<Self> {
        options.validate()?;
        let model = Classifier::<B, L>::new(backend, config, options.seed)?;
        let norm = Normalisation::of(&train)?;
        let optimizer = Optimizer::new(options.optimizer_config()?)?;
        let batches = train.len().div_ceil(options.batch);
        let schedule = options.schedule(batches)?;
        let state = TrainState {
            format: STATE_FORMAT.into(),
            model: model_name.into(),
            epoch: 0,
            position: 0,
            step: 0,
            seed: options.seed,
            schedule: ScheduleState {
                lr: schedule.lr,
                warmup_steps: schedule.warmup_steps,
                total_steps: schedule.total_steps,
                min_lr: schedule.min_lr,
            },
            options: serde_json::to_value(&options).map_err(|e| Error::Config(e.to_string()))?,
            command_line,
            versions: versions(),
            backend: backend.name(),
            train_images: train.len(),
            history: Vec::new(),
            initial_layers: None,
            progress: EpochProgress::default(),
            wall_seconds: 0.0,
            ranks: 1,
        };
        Ok(Session {
            model,
            optimizer,
            options,
            state,
            norm,
            out: out.to_path_buf(),
            train,
            test,
            schedule,
            model_name: model_name.into(),
            comm: Arc::new(Local),
        })
    }

    /// Trains data-parallel over the processes of `comm`: every process
    /// holds the whole model and the same batches (the loader is seeded),
    /// computes the gradients of its share of each batch (a contiguous block,
    /// shares differing by at most one image), and the gradients, weighted by
    /// share, are summed over the processes in one all-reduce per step, so
    /// that every process applies the same optimiser step to the same
    /// parameters. The loss, accuracy and stop requests are summed in the
    /// same call; the test split is evaluated in shares too. Rank 0 alone
    /// writes the metrics, checkpoints and the final model. After each epoch
    /// a hash of the parameters is compared across processes and a mismatch
    /// stops the run. A resumed run must have as many processes as the run
    /// it continues. The backward pass is one call, so the reduce cannot
    /// start before it ends (no overlap of communication with computation).
    pub fn set_collective(&mut self, comm: Arc<dyn Collective>) -> Result<()> {
        if self.state.step == 0 {
            self.state.ranks = comm.size();
        }
        self.comm = comm;
        self.check_ranks()
    }

    /// That this job has as many processes as the run it continues.
    fn check_ranks(&self) -> Result<()> {
        if self.state.ranks != self.comm.size() {
            return Err(Error::Config(format!(
                "the checkpoint was trained by {} process(es) (state.json `ranks`); resume it with as many \
                 (this job has {})",
                self.state.ranks,
                self.comm.size()
            )));
        }
        Ok(())
    }

    /// Continues the run of checkpoint `ck` (see [`checkpoint::read_checkpoint`]) into `out`: the model, the
    /// optimiser state, the options and the position are the checkpoint's, `epochs` may be raised. Refused,
    /// naming the file and the field: another model, other shapes or class count, other training data.
    pub fn resume(
        backend: &B,
        ck: &LoadedCheckpoint,
        train: Images<'d>,
        test: Option<Images<'d>>,
        out: &Path,
        model_name: &str,
        epochs: Option<usize>,
    ) -> Result<Self> {
        let state_path = ck.dir.join("state.json").display().to_string();
        let fmt = |path: &str, message: String| Error::Format { path: path.to_string(), message };
        if ck.state.model != model_name {
            return Err(fmt(
                &state_path,
                format!("field `model` = {:?}: this checkpoint is not a {model_name} run", ck.state.model),
            ));
        }
        if ck.state.train_images != train.len() {
            return Err(fmt(
                &state_path,
                format!(
                    "field `train_images` = {}, but the training data has {} images (resume with the same --data)",
                    ck.state.train_images,
                    train.len()
                ),
            ));
        }
        let mut options: TrainOptions = serde_json::from_value(ck.state.options.clone())
            .map_err(|e| fmt(&state_path, format!("field `options`: {e}")))?;
        if let Some(e) = epochs {
            options.epochs = e;
        }
        options.validate()?;
        let mut file = ck.model.clone();
        let config = L::Config::from_file(&mut file, &BTreeMap::new())?;
        let vision = config.vision();
        if vision.channels != train.channels || vision.image_size != train.size {
            return Err(fmt(
                &ck.model.path,
                format!(
                    "fields `channels` = {}, `image_size` = {}: the data are [{}, {}, {}] images",
                    vision.channels, vision.image_size, train.channels, train.size, train.size
                ),
            ));
        }
        if vision.num_classes < train.dataset.num_classes() {
            return Err(fmt(
                &ck.model.path,
                format!(
                    "field `num_classes` = {}: the data have {} classes",
                    vision.num_classes,
                    train.dataset.num_classes()
                ),
            ));
        }
        let model = Classifier::<B, L>::from_state_dict(
            backend,
            &config,
            ck.model.tensors.iter().map(|(k, v)| (k.as_str(), v)),
            &ck.model.path,
        )?;
        let meta = Meta { map: &ck.model.metadata, source: &ck.model.path };
        let norm = Normalisation::from_metadata(&meta, vision.channels)?.ok_or_else(|| {
            fmt(
                &ck.model.path,
                format!("metadata `{}` is missing (not a training checkpoint)", data::NORM_MEAN_KEY),
            )
        })?;
        let opt_path = ck.dir.join("optimizer.safetensors").display().to_string();
        let kind = ck.optimizer_metadata.get("optimizer").map(String::as_str).unwrap_or("");
        if kind != options.optimizer {
            return Err(fmt(
                &opt_path,
                format!("metadata `optimizer` = {kind:?}, but the run's options say {:?}", options.optimizer),
            ));
        }
        let mut optimizer = Optimizer::new(options.optimizer_config()?)?;
        optimizer.load_state(backend, &model, &ck.optimizer, &ck.steps, &opt_path)?;
        let batches = train.len().div_ceil(options.batch);
        let schedule = options.schedule(batches)?;
        let mut state = ck.state.clone();
        if ck.state.position > batches || ck.state.epoch > options.epochs {
            return Err(fmt(
                &state_path,
                format!(
                    "fields `epoch` = {}, `position` = {} do not fit this run",
                    ck.state.epoch, ck.state.position
                ),
            ));
        }
        state.options = serde_json::to_value(&options).map_err(|e| Error::Config(e.to_string()))?;
        state.schedule = ScheduleState {
            lr: schedule.lr,
            warmup_steps: schedule.warmup_steps,
            total_steps: schedule.total_steps,
            min_lr: schedule.min_lr,
        };
        Ok(Session {
            model,
            optimizer,
            options,
            state,
            norm,
            out: out.to_path_buf(),
            train,
            test,
            schedule,
            model_name: model_name.into(),
            comm: Arc::new(Local),
        })
    }

    /// The model's checkpoint metadata: configuration, normalisation and the model name.
    pub fn model_metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.model.config.to_metadata();
        self.norm.to_metadata(&mut m);
        m.insert("model".into(), self.model_name.clone());
        m
    }

    /// Writes the final (or current) parameters to `path` atomically, with the normalisation in the metadata.
    pub fn save_model(&self, path: &Path) -> Result<()> {
        let bytes = crate::io::to_bytes(&self.model_arrays(), &self.model_metadata())?;
        checkpoint::write_durable(path, &bytes)
    }

    fn model_arrays(&self) -> BTreeMap<String, crate::io::OutArray> {
        let dtype = checkpoint::dtype_of(<B::Elem as Element>::NAME);
        let mut arrays = BTreeMap::new();
        self.model.visit("", &mut |name, p| {
            arrays
                .insert(name, crate::io::OutArray { shape: p.shape().to_vec(), data: p.to_f64_vec(), dtype });
        });
        arrays
    }

    /// Writes a checkpoint of the current state; returns its directory.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        if !self.comm.is_root() {
            // rank 0 writes; the others name the same directory
            return Ok(self
                .out
                .join(checkpoint::CHECKPOINTS_DIR)
                .join(checkpoint::checkpoint_name(self.state.step)));
        }
        let dtype = checkpoint::dtype_of(<B::Elem as Element>::NAME);
        let optimizer = self
            .optimizer
            .state_tensors()
            .into_iter()
            .map(|(k, t)| (k, crate::io::OutArray { shape: t.shape().to_vec(), data: t.to_f64_vec(), dtype }))
            .collect();
        let mut optimizer_metadata = self.optimizer.config.to_metadata();
        let steps =
            serde_json::to_string(&self.optimizer.steps()).map_err(|e| Error::Config(e.to_string()))?;
        optimizer_metadata.insert("steps".into(), steps);
        let data = CheckpointData {
            model: self.model_arrays(),
            model_metadata: self.model_metadata(),
            optimizer,
            optimizer_metadata,
            state: self.state.clone(),
        };
        checkpoint::write_checkpoint(&self.out, &data, self.options.keep)
    }

    /// The loader of the training batches.
    pub fn loader(&self) -> Loader<'d> {
        Loader {
            images: self.train,
            batch: self.options.batch,
            seed: self.options.seed,
            augment: self.options.augment(),
            norm: self.norm.clone(),
        }
    }

    /// The images the per-layer measurements use (the test split, else the training split).
    fn measure_set(&self) -> Images<'d> {
        self.test.unwrap_or(self.train)
    }

    /// Trains until the last epoch or until `hooks` asks to stop (a checkpoint is written first).
    /// A non-finite loss or gradient stops the run with an error naming the step; the last checkpoint stays.
    pub fn run(&mut self, hooks: &mut dyn Hooks) -> Result<Outcome> {
        self.check_ranks()?;
        let comm = self.comm.clone();
        let (ranks, root) = (comm.size(), comm.is_root());
        let metrics_path = self.out.join("metrics.jsonl");
        // rank 0 writes the run directory; every process learns whether it could
        let opened =
            agreed(
                &*comm,
                if root {
                    std::fs::create_dir_all(&self.out)
                        .map_err(|e| Error::Io { path: self.out.display().to_string(), source: e })
                        .and_then(|()| truncate_metrics(&metrics_path, self.state.step))
                        .and_then(|()| {
                            std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(
                                |e| Error::Io { path: metrics_path.display().to_string(), source: e },
                            )
                        })
                        .map(Some)
                } else {
                    Ok(None)
                },
            );
        let mut log = opened?;
        let log_err = |e: std::io::Error| Error::Io { path: metrics_path.display().to_string(), source: e };
        let session_start = Instant::now();
        let wall_before = self.state.wall_seconds;
        let wall = |start: &Instant| wall_before + start.elapsed().as_secs_f64();
        let be = self.model.cls_token.backend().clone();
        let exec = self.options.execution(&be.name());
        let ce = CrossEntropy::new(self.options.label_smoothing)?;
        let loader = self.loader();
        let batches = loader.batches_per_epoch();
        if root
            && self.state.initial_layers.is_none()
            && self.state.step == 0
            && self.options.measure_images > 0
        {
            self.state.initial_layers = Some(measure_layers(
                &self.model,
                &self.measure_set(),
                &self.norm,
                self.options.measure_images,
            )?);
        }
        let size = self.train.size;
        let channels = self.train.channels;
        while self.state.epoch < self.options.epochs {
            let epoch = self.state.epoch;
            let mut stop = None;
            let mut failure = None;
            // A step's seconds run from the end of the previous step (or the start of the epoch's loop), so
            // the wait for the loader's batch (gather, augmentation, normalisation) counts as training time.
            let mut t0 = Instant::now();
            let comm_at_start = comm.comm_seconds();
            loader.for_each_batch(epoch, self.state.position, self.options.prefetch, |i, hb| {
                let n = hb.len();
                let step = self.state.step + 1;
                // this process's share of the batch: rows lo..hi
                let std::ops::Range { start: lo, end: hi } = comm.share(n);
                if hi == lo {
                    return Err(Error::Config(format!(
                        "step {step}: a batch of {n} images cannot be shared by {ranks} processes; \
                         use --batch of at least {ranks} (and a training set whose last batch has as many)"
                    )));
                }
                let per = channels * size * size;
                let x =
                    Tensor::from_f64(&be, &hb.images[lo * per..hi * per], &[hi - lo, channels, size, size]);
                let mut out = self.model.train_step_with(&x, &hb.labels[lo..hi], &ce, &exec)?;
                let mut stop_everywhere = None;
                if ranks > 1 {
                    let stop = hooks.stop_requested();
                    let (loss, correct, stop) = all_reduce_step(
                        &mut out.gradients.params,
                        out.loss,
                        out.correct,
                        stop,
                        (hi - lo) as f64 / n as f64,
                        &*comm,
                    )?;
                    out.loss = loss;
                    out.correct = correct;
                    stop_everywhere = Some(stop);
                }
                let mut grads = out.gradients.params;
                let norm = if self.options.clip_norm > 0.0 {
                    clip_global_norm(&mut grads, self.options.clip_norm)
                } else {
                    global_norm(&grads)
                };
                if !out.loss.is_finite() || !norm.is_finite() {
                    failure = Some(format!(
                        "training diverged at step {step} (epoch {}, batch {}): loss {}, gradient norm {}; \
                         the parameters were not updated",
                        epoch + 1,
                        i + 1,
                        out.loss,
                        norm
                    ));
                    return Ok(false);
                }
                let lr = self.schedule.at(self.state.step);
                self.optimizer
                    .step_with(&mut self.model, &grads, lr, &|name, shape| !no_weight_decay(name, shape))?;
                self.state.step = step;
                self.state.position = i + 1;
                let p = &mut self.state.progress;
                p.loss_sum += out.loss * n as f64;
                p.correct += out.correct;
                p.seen += n;
                p.seconds += t0.elapsed().as_secs_f64();
                t0 = Instant::now();
                let record = StepRecord {
                    step,
                    epoch: epoch + 1,
                    batch: i + 1,
                    batches,
                    loss: out.loss,
                    accuracy: out.correct as f64 / n as f64,
                    running_accuracy: p.correct as f64 / p.seen.max(1) as f64,
                    lr,
                    grad_norm: norm,
                    images_per_s: p.seen as f64 / p.seconds.max(1e-9),
                    wall_seconds: wall(&session_start),
                };
                if let Some(log) =
                    log.as_mut().filter(|_| self.options.log_every > 0 && step % self.options.log_every == 0)
                {
                    let mut line = serde_json::to_value(&record).map_err(|e| Error::Config(e.to_string()))?;
                    line["kind"] = "step".into();
                    writeln!(log, "{line}").map_err(log_err)?;
                }
                hooks.on_step(&record);
                let due = self.options.checkpoint_every > 0 && step % self.options.checkpoint_every == 0;
                let stopping = stop_everywhere.unwrap_or_else(|| hooks.stop_requested());
                if (due || stopping) && i + 1 < batches {
                    self.state.wall_seconds = wall(&session_start);
                    let dir = self.checkpoint()?;
                    hooks.on_checkpoint(&dir);
                    if stopping {
                        stop = Some(dir);
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if let Some(message) = failure {
                return Err(Error::Config(message));
            }
            if let Some(dir) = stop {
                return Ok(Outcome::Stopped(dir));
            }
            // the epoch is complete
            let comm_seconds = comm.comm_seconds() - comm_at_start;
            let p = std::mem::take(&mut self.state.progress);
            let eval = match &self.test {
                Some(t) => {
                    Some(evaluate_shared(&self.model, t, &self.norm, self.options.eval_batch, &exec, &*comm)?)
                }
                None => None,
            };
            if ranks > 1 {
                check_same_parameters(&self.model_arrays(), &*comm, epoch + 1)?;
            }
            let e1 = epoch + 1;
            let layers =
                if root && self.options.measure_images > 0 && self.options.measure_epochs().contains(&e1) {
                    Some(measure_layers(
                        &self.model,
                        &self.measure_set(),
                        &self.norm,
                        self.options.measure_images,
                    )?)
                } else {
                    None
                };
            let record = EpochRecord {
                epoch: e1,
                step: self.state.step,
                train_loss: p.loss_sum / p.seen.max(1) as f64,
                train_accuracy: p.correct as f64 / p.seen.max(1) as f64,
                test_loss: eval.as_ref().map(|e| e.loss),
                test_accuracy: eval.as_ref().map(|e| e.accuracy),
                lr: self.schedule.at(self.state.step.saturating_sub(1)),
                images_per_s: p.seen as f64 / p.seconds.max(1e-9),
                train_seconds: p.seconds,
                wall_seconds: wall(&session_start),
                layers,
                comm_seconds,
            };
            if let Some(log) = log.as_mut() {
                let mut line = serde_json::to_value(&record).map_err(|e| Error::Config(e.to_string()))?;
                line["kind"] = "epoch".into();
                writeln!(log, "{line}").map_err(log_err)?;
                log.flush().map_err(log_err)?;
            }
            self.state.history.push(record.clone());
            self.state.epoch = e1;
            self.state.position = 0;
            self.state.wall_seconds = wall(&session_start);
            let dir = self.checkpoint()?;
            hooks.on_checkpoint(&dir);
            hooks.on_epoch(&record);
            if hooks.stop_requested() && self.state.epoch < self.options.epochs {
                return Ok(Outcome::Stopped(dir));
            }
        }
        if root {
            self.save_model(&self.out.join("model.safetensors"))?;
        }
        Ok(Outcome::Finished)
    }

    /// The test split, if any.
    pub fn test_images(&self) -> Option<Images<'d>> {
        self.test
    }
}

/// Keeps the lines of `metrics.jsonl` up to step `step` (a resumed run rewrites what came after its checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io { path: path.display().to_string(), source: e }),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    checkpoint::write_durable(path, out.as_bytes())
}
