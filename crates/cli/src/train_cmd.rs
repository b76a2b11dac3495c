//! `rate crate|aot|tost train` and `eval`: CRATE (4.2.20), AoT (4.3.2) and TOST (4.3.15) trained by back-propagation on image data (Section 4.3, Figure 4.15) with [`models::train`], with progress, metrics, plots, checkpoints, resume and a clean stop on SIGINT/SIGTERM.
//!
//! A run directory holds `metrics.jsonl` (a line per logged step and per epoch), `checkpoints/step-N/`
//! (the last `--keep`), and at the end `model.safetensors` (loadable by `rate <model> forward`, the
//! normalisation in its metadata), `metrics.json` (the summary), `curves.png` and `layers.png`.

use crate::plot::{self, Panel, Series};
use crate::transformer_cmd::{read_config, Kind};
use crate::util::{progress, write_json, CliError, CliResult, Job};
use clap::Args;
use indicatif::ProgressBar;
use models::data::{self, Dataset};
use models::io::TensorFile;
use models::nn::aot::AotLayer;
use models::nn::classifier::{Block, Classifier, ModelConfig};
use models::nn::config::Meta;
use models::nn::crate_model::CrateLayer;
use models::nn::tost::TostLayer;
use models::train::checkpoint::{read_checkpoint, resolve_checkpoint, LoadedCheckpoint, CHECKPOINTS_DIR};
use models::train::{
    evaluate, EpochRecord, Hooks, Images, LayerStats, Normalisation, Outcome, Session, StepRecord,
    TrainOptions,
};
use rate_core::collective::agreed;
use rate_core::Kernels;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Options of `rate crate|aot|tost train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training data: `digits`, `mnist5k`, `fashion-mnist` (Debian package dataset-fashion-mnist) or a file
    /// (IDX, CIFAR-10 binary, CSV, safetensors with `X` [n, C, H, W] or [n, H, W] and `y`).
    #[arg(long)]
    pub data: String,
    /// Test data (default: `fashion-mnist-test` for `fashion-mnist`, else a stratified split of --data).
    #[arg(long)]
    pub test: Option<String>,
    /// Fraction of --data held out for testing when --test is not given.
    #[arg(long = "test-fraction", default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Train on this many images per class of the training split (a quick run).
    #[arg(long = "per-class")]
    pub per_class: Option<usize>,
    /// Model size: `fashion-mnist` (alias `mnist`: 28 px grey, patch 4, dim 128, depth 6, 4 heads),
    /// `digits` (8 px, patch 2, dim 64, depth 4, 4 heads), `cifar` (32 px RGB, patch 4, dim 192, depth 8,
    /// 6 heads); default: the one that fits the data's image size.
    #[arg(long, conflicts_with = "resume")]
    pub preset: Option<String>,
    /// JSON object of configuration keys (image_size, patch_size, channels, num_classes, dim, depth, heads,
    /// pool, ...) completing or overriding the preset.
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Epochs in all (with --resume: may extend the run).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per optimiser step [default: 128].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 1e-3 (adamw), 1e-4 (lion), 0.05 (sgd)].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimiser: adamw, lion or sgd (momentum 0.9, Nesterov) [default: adamw].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Linear warm-up, in epochs (fractions allowed) [default: 1].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Weight decay, not applied to biases, LayerNorm weights, class token, positions, TSSA temperature
    /// [default: 0.05 (adamw), 0.5 (lion), 5e-4 (sgd)].
    #[arg(long = "weight-decay")]
    pub weight_decay: Option<f64>,
    /// Label smoothing of the training loss [default: 0.1].
    #[arg(long = "label-smoothing")]
    pub label_smoothing: Option<f64>,
    /// Augmentation: `none`, `crop` (random crop, zero padding 2; `crop=P` for padding P), `flip`
    /// (horizontal), or both comma-separated; default `crop,flip` for Fashion-MNIST and CIFAR, `crop` for
    /// digits and other grey images.
    #[arg(long)]
    pub augment: Option<String>,
    /// Seed of the initialisation, the order and the augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Floor of the cosine learning-rate decay [default: 1e-5, at most --lr].
    #[arg(long = "min-lr")]
    pub min_lr: Option<f64>,
    /// Clip gradients to this global norm (0: off) [default: 1].
    #[arg(long = "clip-norm")]
    pub clip_norm: Option<f64>,
    /// Images per micro-batch on the CPU, run in parallel (0: the whole batch at once) [default: 8].
    #[arg(long = "micro-batch")]
    pub micro_batch: Option<usize>,
    /// Write a checkpoint every this many steps as well as at each epoch's end [default: 0, epoch ends only].
    #[arg(long = "checkpoint-every")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept [default: 2].
    #[arg(long)]
    pub keep: Option<usize>,
    /// Assemble batches on the training thread (no prefetch thread).
    #[arg(long = "no-prefetch")]
    pub no_prefetch: bool,
    /// Test images of the per-layer coding-rate and sparsity measurements [default: 64].
    #[arg(long = "measure-images")]
    pub measure_images: Option<usize>,
    /// Log a step to metrics.jsonl every this many steps [default: 20].
    #[arg(long = "log-every")]
    pub log_every: Option<u64>,
    /// Run directory (required unless --resume, which defaults to the checkpoint's run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a run: a checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// Options of `rate crate|aot|tost eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A run directory (its model.safetensors or newest checkpoint), a checkpoint directory, or a
    /// model.safetensors file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The data to evaluate on (names and files as `train --data`).
    #[arg(long)]
    pub data: String,
    /// Images per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Where eval.json and confusion.png go (default: the checkpoint's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The configuration keys of a preset.
fn preset(name: &str) -> CliResult<BTreeMap<String, String>> {
    let keys: [(&str, &str); 8] = match name {
        "fashion-mnist" | "mnist" => [
            ("image_size", "28"),
            ("patch_size", "4"),
            ("channels", "1"),
            ("num_classes", "10"),
            ("dim", "128"),
            ("depth", "6"),
            ("heads", "4"),
            ("pool", "cls"),
        ],
        "digits" => [
            ("image_size", "8"),
            ("patch_size", "2"),
            ("channels", "1"),
            ("num_classes", "10"),
            ("dim", "64"),
            ("depth", "4"),
            ("heads", "4"),
            ("pool", "cls"),
        ],
        "cifar" => [
            ("image_size", "32"),
            ("patch_size", "4"),
            ("channels", "3"),
            ("num_classes", "10"),
            ("dim", "192"),
            ("depth", "8"),
            ("heads", "6"),
            ("pool", "cls"),
        ],
        other => {
            return Err(CliError::Usage(format!(
                "--preset {other:?} is not a preset (fashion-mnist, mnist, digits, cifar)"
            )))
        }
    };
    Ok(keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// `[channels, size]` of a data set's images, or an error naming the source and its shape.
fn geometry(ds: &Dataset, flag: &str, name: &str) -> CliResult<(usize, usize)> {
    match ds.sample_shape() {
        [h, w] if h == w => Ok((1, *h)),
        [c, h, w] if h == w => Ok((*c, *h)),
        s => Err(CliError::Usage(format!(
            "{flag} {name}: samples have shape {s:?}, not square images [H, W] or [C, H, W]"
        ))),
    }
}

/// The training and test splits of `train --data/--test`.
fn load_data(a: &TrainArgs, seed: u64) -> CliResult<(Dataset, Dataset)> {
    let full = data::source(&a.data)?;
    let test_name = a.test.clone().or_else(|| {
        matches!(a.data.as_str(), "fashion-mnist" | "fashion-mnist-train")
            .then(|| "fashion-mnist-test".to_string())
    });
    let (mut train, test) = match &test_name {
        Some(t) => (full, data::source(t)?),
        None => {
            if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
                return Err(CliError::Usage(format!(
                    "--test-fraction {} must lie in (0, 1) when --test is not given",
                    a.test_fraction
                )));
            }
            data::split(&full, a.test_fraction, seed)?
        }
    };
    if let Some(n) = a.per_class {
        train = train.take_per_class(n, seed)?;
    }
    if train.is_empty() {
        return Err(CliError::Usage(format!("--data {}: the training split is empty", a.data)));
    }
    if test.is_empty() {
        return Err(CliError::Usage(format!(
            "--test {}: the test split is empty",
            test_name.unwrap_or_default()
        )));
    }
    Ok((train, test))
}

/// The training options from the flags and the defaults of the optimiser.
fn options(a: &TrainArgs, grey_digits: bool) -> CliResult<TrainOptions> {
    let d = TrainOptions::default();
    let optimizer = a.optimizer.clone().unwrap_or(d.optimizer.clone());
    let (lr, wd) = match optimizer.as_str() {
        "adamw" => (1e-3, 0.05),
        "lion" => (1e-4, 0.5),
        "sgd" => (0.05, 5e-4),
        other => return Err(CliError::Usage(format!("--optimizer {other:?}: use adamw, lion or sgd"))),
    };
    let betas = if optimizer == "lion" { (0.9, 0.99) } else { d.betas };
    let (crop_padding, hflip) = parse_augment(a.augment.as_deref(), grey_digits)?;
    let lr = a.lr.unwrap_or(lr);
    let o = TrainOptions {
        epochs: a.epochs.unwrap_or(d.epochs),
        batch: a.batch.unwrap_or(d.batch),
        optimizer,
        lr,
        weight_decay: a.weight_decay.unwrap_or(wd),
        betas,
        warmup_epochs: a.warmup.unwrap_or(d.warmup_epochs),
        min_lr: a.min_lr.unwrap_or(d.min_lr).min(lr),
        clip_norm: a.clip_norm.unwrap_or(d.clip_norm),
        label_smoothing: a.label_smoothing.unwrap_or(d.label_smoothing),
        crop_padding,
        hflip,
        seed: a.seed.unwrap_or(d.seed),
        micro_batch: a.micro_batch.unwrap_or(d.micro_batch),
        prefetch: !a.no_prefetch,
        log_every: a.log_every.unwrap_or(d.log_every),
        checkpoint_every: a.checkpoint_every.unwrap_or(d.checkpoint_every),
        keep: a.keep.unwrap_or(d.keep),
        measure_images: a.measure_images.unwrap_or(d.measure_images),
        ..d
    };
    o.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(o)
}

/// `--augment`: `(crop padding, flip)`.
fn parse_augment(spec: Option<&str>, grey_digits: bool) -> CliResult<(usize, bool)> {
    let Some(spec) = spec.filter(|s| *s != "auto") else { return Ok((2, !grey_digits)) };
    if spec == "none" {
        return Ok((0, false));
    }
    let (mut crop, mut flip) = (0, false);
    for part in spec.split(',').map(str::trim) {
        match part.split_once('=') {
            None if part == "crop" => crop = 2,
            None if part == "flip" => flip = true,
            Some(("crop", p)) => {
                crop = p
                    .parse()
                    .map_err(|_| CliError::Usage(format!("--augment {spec:?}: crop={p} is not a padding")))?
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "--augment {spec:?}: `{part}` is not none, crop, crop=P or flip"
                )))
            }
        }
    }
    Ok((crop, flip))
}

/// Set by SIGINT/SIGTERM: the run stops after its current step.
static STOP: AtomicBool = AtomicBool::new(false);
/// Signals received (a second one exits at once).
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("rate: error: interrupted twice, exiting without a checkpoint");
            std::process::exit(130);
        }
        STOP.store(true, Ordering::SeqCst);
    });
}

/// Progress bar and epoch lines of a run.
struct CliHooks {
    pb: ProgressBar,
    epochs: usize,
    /// Whether this process reports (rank 0 of an MPI job, or alone).
    reports: bool,
}

impl Hooks for CliHooks {
    fn on_step(&mut self, r: &StepRecord) {
        self.pb.set_position(r.step);
        self.pb.set_message(format!(
            "epoch {}/{} step {} loss {:.4} acc {:.3} {:.0} img/s",
            r.epoch, self.epochs, r.step, r.loss, r.running_accuracy, r.images_per_s
        ));
    }
    fn on_epoch(&mut self, r: &EpochRecord) {
        if !self.reports {
            return;
        }
        let test = match (r.test_loss, r.test_accuracy) {
            (Some(l), Some(a)) => format!(", test loss {l:.4} accuracy {a:.4}"),
            _ => String::new(),
        };
        self.pb.suspend(|| {
            eprintln!(
                "epoch {}/{}: train loss {:.4} accuracy {:.4}{test}, {:.0} img/s, {:.0} s{}",
                r.epoch,
                self.epochs,
                r.train_loss,
                r.train_accuracy,
                r.images_per_s,
                r.wall_seconds,
                if r.comm_seconds > 0.0 {
                    format!(" ({:.1} s in all-reduce)", r.comm_seconds)
                } else {
                    String::new()
                }
            )
        });
    }
    fn stop_requested(&self) -> bool {
        STOP.load(Ordering::SeqCst)
    }
}

/// `rate crate|aot|tost train`.
pub struct TrainJob {
    /// Which model.
    pub kind: Kind,
    /// The options.
    pub args: TrainArgs,
}

impl Job for TrainJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        match self.kind {
            Kind::Crate => train::<B, CrateLayer<B>>(be, self.kind, &self.args),
            Kind::Aot => train::<B, AotLayer<B>>(be, self.kind, &self.args),
            Kind::Tost => train::<B, TostLayer<B>>(be, self.kind, &self.args),
        }
    }
}

/// Whether a data source is a digit set (no flips by default).
fn is_digits(name: &str) -> bool {
    matches!(name, "digits" | "mnist5k" | "mnist_5k")
        || name.to_lowercase().contains("mnist") && !name.contains("fashion")
}

fn train<B: Kernels, L: Block<B>>(be: &B, kind: Kind, a: &TrainArgs) -> CliResult<serde_json::Value> {
    let started = Instant::now();
    let name = kind.name();
    let comm = crate::util::world();
    // every process checks the arguments, the checkpoint and the data; the first failure stops them all
    let (resumed, train_ds, test_ds, out, channels, size) = agreed(&*comm, load_phase(a))?;
    let made = session_phase::<B, L>(be, name, a, &resumed, (&train_ds, &test_ds), &out, (channels, size));
    let mut session = agreed(&*comm, made)?;
    agreed(&*comm, session.set_collective(comm.clone()).map_err(CliError::from))?;
    let total = session.state.schedule.total_steps;
    let pb = progress(if comm.is_root() { total } else { 0 }, name);
    pb.set_position(session.state.step);
    let mut hooks = CliHooks { pb, epochs: session.options.epochs, reports: comm.is_root() };
    install_signal_handler();
    let outcome = session.run(&mut hooks);
    hooks.pb.finish_and_clear();
    match outcome? {
        Outcome::Stopped(dir) => Err(CliError::Usage(format!(
            "interrupted after step {} (epoch {}, batch {}): checkpoint {}; resume with `rate {name} train --resume {} --data {}`",
            session.state.step,
            session.state.epoch + 1,
            session.state.position,
            dir.display(),
            dir.display(),
            a.data
        ))),
        Outcome::Finished if comm.is_root() => finish(&session, a, started),
        Outcome::Finished => Ok(json!({ "rank": comm.rank(), "ranks": comm.size() })),
    }
}

/// The first part of `train`'s setup, the same on every process: the arguments, the checkpoint to resume
/// (read first, so a bad `--resume` fails before the data are read), the data, the run directory.
fn load_phase(
    a: &TrainArgs,
) -> CliResult<(Option<LoadedCheckpoint>, Dataset, Dataset, PathBuf, usize, usize)> {
    if a.resume.is_some() {
        let given = [
            ("--batch", a.batch.is_some()),
            ("--lr", a.lr.is_some()),
            ("--optimizer", a.optimizer.is_some()),
            ("--warmup", a.warmup.is_some()),
            ("--weight-decay", a.weight_decay.is_some()),
            ("--label-smoothing", a.label_smoothing.is_some()),
            ("--augment", a.augment.is_some()),
            ("--seed", a.seed.is_some()),
            ("--min-lr", a.min_lr.is_some()),
            ("--clip-norm", a.clip_norm.is_some()),
            ("--micro-batch", a.micro_batch.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|g| g.1) {
            return Err(CliError::Usage(format!(
                "{flag} with --resume: a resumed run keeps the options of its checkpoint (only --epochs, --out, \
                 --checkpoint-every and --keep may change); start a new run to change {flag}"
            )));
        }
    }
    // the checkpoint first, so a bad --resume fails before the data are read
    let resumed = match &a.resume {
        Some(p) => Some(read_checkpoint(&resolve_checkpoint(p)?)?),
        None => None,
    };
    let seed = match &resumed {
        Some(ck) => ck.state.seed,
        None => a.seed.unwrap_or(0),
    };
    let (train_ds, test_ds) = load_data(a, seed)?;
    let (channels, size) = geometry(&train_ds, "--data", &a.data)?;
    let out = match (&a.out, &resumed) {
        (Some(o), _) => o.clone(),
        (None, Some(ck)) => run_dir_of(&ck.dir),
        (None, None) => return Err(CliError::Usage("--out DIR is required (the run directory)".into())),
    };
    if resumed.is_none() && out.join(CHECKPOINTS_DIR).exists() {
        return Err(CliError::Usage(format!(
            "--out {}: already holds a training run (checkpoints/); continue it with --resume {} or choose another --out",
            out.display(),
            out.display()
        )));
    }
    Ok((resumed, train_ds, test_ds, out, channels, size))
}

/// The second part: the session (resumed, or new from the preset or config), checked against the data.
fn session_phase<'d, B: Kernels, L: Block<B>>(
    be: &B,
    name: &str,
    a: &TrainArgs,
    resumed: &Option<LoadedCheckpoint>,
    (train_ds, test_ds): (&'d Dataset, &'d Dataset),
    out: &Path,
    (channels, size): (usize, usize),
) -> CliResult<Session<'d, B, L>> {
    let out = out.to_path_buf();
    Ok(match resumed {
        Some(ck) => {
            let cfg = {
                let mut f = ck.model.clone();
                L::Config::from_file(&mut f, &BTreeMap::new())?
            };
            let v = cfg.vision();
            let train = Images::new(train_ds, v.channels, v.image_size, v.num_classes, "training")?;
            let test = Images::new(test_ds, v.channels, v.image_size, v.num_classes, "test")?;
            let mut s = Session::resume(be, ck, train, Some(test), &out, name, a.epochs)?;
            if let Some(c) = a.checkpoint_every {
                s.options.checkpoint_every = c;
            }
            if let Some(k) = a.keep {
                s.options.keep = k;
            }
            s
        }
        None => {
            let mut keys = match (&a.preset, &a.config) {
                (Some(p), _) => preset(p)?,
                (None, _) => preset(match (channels, size) {
                    (1, 8) => "digits",
                    (3, 32) => "cifar",
                    _ => "fashion-mnist",
                })?,
            };
            if let Some(path) = &a.config {
                keys.extend(read_config(path)?);
            }
            let source = a.config.as_ref().map_or("--preset".to_string(), |p| p.display().to_string());
            let config = L::Config::from_metadata(&Meta { map: &keys, source: &source })?;
            let v = config.vision();
            let train = Images::new(train_ds, v.channels, v.image_size, v.num_classes, "training")?;
            let test = Images::new(test_ds, v.channels, v.image_size, v.num_classes, "test")?;
            let opts = options(a, is_digits(&a.data))?;
            Session::new(be, &config, opts, train, Some(test), &out, name, std::env::args().collect())?
        }
    })
}

/// The run directory of a checkpoint directory (`RUN/checkpoints/step-N`).
fn run_dir_of(ck: &Path) -> PathBuf {
    match ck.parent() {
        Some(p) if p.file_name().is_some_and(|n| n == CHECKPOINTS_DIR) => {
            p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
        }
        _ => ck.to_path_buf(),
    }
}

/// Whether every value falls from one layer to the next.
fn falls(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[1] < w[0])
}

fn layer_summary(layers: &[LayerStats]) -> serde_json::Value {
    let rates: Vec<f64> = layers.iter().map(|l| l.coding_rate).collect();
    let sparsity: Vec<Option<f64>> = layers.iter().map(|l| l.sparsity).collect();
    json!({
        "coding_rate": rates,
        "coding_rate_per_head": layers.iter().map(|l| l.coding_rate_per_head.clone()).collect::<Vec<_>>(),
        "sparsity": sparsity,
        "coding_rate_falls_with_depth": falls(&rates),
        "coding_rate_first_to_last": [rates.first(), rates.last()],
    })
}

/// metrics.json, curves.png and layers.png of a finished run.
fn finish<B: Kernels, L: Block<B>>(
    s: &Session<'_, B, L>,
    a: &TrainArgs,
    started: Instant,
) -> CliResult<serde_json::Value> {
    let h = &s.state.history;
    let best = h.iter().filter_map(|r| r.test_accuracy.map(|t| (r.epoch, t))).fold(
        None,
        |acc: Option<(usize, f64)>, x| match acc {
            Some(b) if b.1 >= x.1 => Some(b),
            _ => Some(x),
        },
    );
    let last = h.last();
    let (images, seconds) =
        h.iter().fold((0.0, 0.0), |(i, t), r| (i + r.images_per_s * r.train_seconds, t + r.train_seconds));
    let throughput = images / f64::max(seconds, 1e-9);
    let by_epoch: Vec<serde_json::Value> = h
        .iter()
        .filter_map(|r| r.layers.as_ref().map(|l| json!({ "epoch": r.epoch, "layers": layer_summary(l) })))
        .collect();
    let initial = s.state.initial_layers.as_ref().map(|l| layer_summary(l));
    let final_layers = h.iter().rev().find_map(|r| r.layers.as_ref()).map(|l| layer_summary(l));
    let sparsity_of = |v: &Option<serde_json::Value>| {
        v.as_ref().map(|x| x["sparsity"].clone()).unwrap_or(serde_json::Value::Null)
    };
    let metrics = json!({
        "model": s.state.model,
        "parameters": s.model.parameter_count(),
        "config": s.model.config.to_metadata(),
        "normalisation": { "mean": s.norm.mean, "std": s.norm.std },
        "options": s.options,
        "data": a.data,
        "test": a.test,
        "train_images": s.state.train_images,
        "test_images": s.test_images().map(|t| t.len()),
        "backend": s.state.backend,
        "threads": rayon::current_num_threads(),
        "ranks": s.state.ranks,
        "comm_seconds": h.iter().map(|r| r.comm_seconds).sum::<f64>(),
        "comm_seconds_note": "seconds of the training loops in the gradient all-reduce over the MPI processes (waiting for the slowest included); 0 in one process",
        "epochs": h.len(),
        "steps": s.state.step,
        "best_test_accuracy": best.map(|b| b.1),
        "best_epoch": best.map(|b| b.0),
        "final_test_accuracy": last.and_then(|r| r.test_accuracy),
        "final_test_loss": last.and_then(|r| r.test_loss),
        "final_train_loss": last.map(|r| r.train_loss),
        "total_seconds": s.state.wall_seconds,
        "train_seconds": seconds,
        "train_images_per_s": throughput,
        "train_images_per_s_note": "training images over the wall seconds of every epoch's training loop, each step timed from the end of the previous one (waiting for the loader's batch assembly, augmentation and normalisation, forward, backward, clipping, optimiser); evaluation, layer measurements and checkpoints excluded",
        "layers": {
            "initial": initial,
            "final": final_layers,
            "by_epoch": by_epoch,
            "measured_on": format!("the first {} test images", s.options.measure_images),
        },
        "compress_and_sparsify": {
            "coding_rate_falls_with_depth_at_init": initial.as_ref().map(|v| v["coding_rate_falls_with_depth"].clone()),
            "coding_rate_falls_with_depth_after_training": final_layers.as_ref().map(|v| v["coding_rate_falls_with_depth"].clone()),
            "ista_sparsity_at_init": sparsity_of(&initial),
            "ista_sparsity_after_training": sparsity_of(&final_layers),
        },
        "history": h,
        "command_line": s.state.command_line,
        "session_seconds": started.elapsed().as_secs_f64(),
    });
    write_json(&s.out.join("metrics.json"), &metrics)?;
    plot_curves(&s.out.join("curves.png"), h, s)?;
    plot_layers(&s.out.join("layers.png"), s)?;
    Ok(json!({
        "out": s.out.display().to_string(),
        "model": s.state.model,
        "parameters": s.model.parameter_count(),
        "epochs": h.len(),
        "final_test_accuracy": metrics["final_test_accuracy"],
        "best_test_accuracy": metrics["best_test_accuracy"],
        "train_images_per_s": throughput,
        "total_seconds": s.state.wall_seconds,
    }))
}

fn plot_curves<B: Kernels, L: Block<B>>(
    path: &Path,
    h: &[EpochRecord],
    s: &Session<'_, B, L>,
) -> CliResult<()> {
    let pts = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        h.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
    };
    let loss = [
        Series { name: "train (smoothed targets)", points: pts(&|r| Some(r.train_loss)), markers: false },
        Series { name: "test", points: pts(&|r| r.test_loss), markers: false },
    ];
    let acc = [
        Series { name: "train (augmented)", points: pts(&|r| Some(r.train_accuracy)), markers: false },
        Series { name: "test", points: pts(&|r| r.test_accuracy), markers: false },
    ];
    let steps_per_epoch = s.loader().batches_per_epoch().max(1) as f64;
    let sched = s.state.schedule;
    let schedule = models::train::Schedule {
        lr: sched.lr,
        warmup_steps: sched.warmup_steps,
        total_steps: sched.total_steps,
        min_lr: sched.min_lr,
    };
    let n = 200u64.min(sched.total_steps.max(1));
    let lr_pts: Vec<(f64, f64)> = (0..=n)
        .map(|i| {
            let step = i * sched.total_steps.saturating_sub(1) / n.max(1);
            ((step + 1) as f64 / steps_per_epoch, schedule.at(step))
        })
        .collect();
    let lr = [Series { name: "learning rate", points: lr_pts, markers: false }];
    plot::panels(
        path,
        &[
            Panel { title: "loss", xlabel: "epoch", ylabel: "cross-entropy", series: &loss, loglog: false },
            Panel { title: "accuracy", xlabel: "epoch", ylabel: "accuracy", series: &acc, loglog: false },
            Panel { title: "learning rate", xlabel: "epoch", ylabel: "lr", series: &lr, loglog: false },
        ],
        3,
    )?;
    Ok(())
}

fn plot_layers<B: Kernels, L: Block<B>>(path: &Path, s: &Session<'_, B, L>) -> CliResult<()> {
    let mut snapshots: Vec<(String, &Vec<LayerStats>)> = Vec::new();
    if let Some(l) = &s.state.initial_layers {
        snapshots.push(("initialisation".into(), l));
    }
    for r in &s.state.history {
        if let Some(l) = &r.layers {
            snapshots.push((format!("epoch {}", r.epoch), l));
        }
    }
    if snapshots.is_empty() {
        return Ok(());
    }
    let rate: Vec<Series> = snapshots
        .iter()
        .map(|(n, l)| Series {
            name: n,
            points: l.iter().enumerate().map(|(i, x)| ((i + 1) as f64, x.coding_rate)).collect(),
            markers: false,
        })
        .collect();
    let sparse: Vec<Series> = snapshots
        .iter()
        .filter(|(_, l)| l.iter().all(|x| x.sparsity.is_some()))
        .map(|(n, l)| Series {
            name: n,
            points: l
                .iter()
                .enumerate()
                .filter_map(|(i, x)| x.sparsity.map(|v| ((i + 1) as f64, v)))
                .collect(),
            markers: false,
        })
        .collect();
    let mut panels = vec![Panel {
        title: "coding rate of the tokens (sum over heads)",
        xlabel: "layer",
        ylabel: "R^c",
        series: &rate,
        loglog: false,
    }];
    if !sparse.is_empty() {
        panels.push(Panel {
            title: "ISTA output: fraction of zeros",
            xlabel: "layer",
            ylabel: "sparsity",
            series: &sparse,
            loglog: false,
        });
    }
    plot::panels(path, &panels, 2)?;
    Ok(())
}

/// `rate crate|aot|tost eval`.
pub struct EvalJob {
    /// Which model.
    pub kind: Kind,
    /// The options.
    pub args: EvalArgs,
}

impl Job for EvalJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        match self.kind {
            Kind::Crate => eval::<B, CrateLayer<B>>(be, self.kind, &self.args),
            Kind::Aot => eval::<B, AotLayer<B>>(be, self.kind, &self.args),
            Kind::Tost => eval::<B, TostLayer<B>>(be, self.kind, &self.args),
        }
    }
}

/// The model file `eval --checkpoint` names.
fn model_file(path: &Path) -> CliResult<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("model.safetensors").is_file() {
        return Ok(path.join("model.safetensors"));
    }
    Ok(resolve_checkpoint(path)?.join("model.safetensors"))
}

fn eval<B: Kernels, L: Block<B>>(be: &B, kind: Kind, a: &EvalArgs) -> CliResult<serde_json::Value> {
    if a.batch == 0 {
        return Err(CliError::Usage("--batch 0: an evaluation batch needs at least one image".into()));
    }
    let path = model_file(&a.checkpoint)?;
    let mut file = TensorFile::read(&path)?;
    if let Some(m) = file.metadata.get("model") {
        if m != kind.name() {
            return Err(CliError::Usage(format!(
                "--checkpoint {}: metadata `model` = {m:?}, not a {} model",
                path.display(),
                kind.name()
            )));
        }
    }
    let config = L::Config::from_file(&mut file, &BTreeMap::new())?;
    let model = Classifier::<B, L>::from_state_dict(
        be,
        &config,
        file.tensors.iter().map(|(k, v)| (k.as_str(), v)),
        &file.path,
    )?;
    let v = config.vision();
    let meta = Meta { map: &file.metadata, source: &file.path };
    let norm = Normalisation::from_metadata(&meta, v.channels)?;
    let normalised = norm.is_some();
    let norm = norm.unwrap_or_else(|| Normalisation::identity(v.channels));
    let ds = data::source(&a.data)?;
    let images = Images::new(&ds, v.channels, v.image_size, v.num_classes, "evaluation")?;
    let exec = TrainOptions::default().execution(&be.name());
    let e = evaluate(&model, &images, &norm, a.batch, &exec)?;
    let out = a.out.clone().unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    let per_class = e.per_class_accuracy();
    let n = e.confusion.len();
    let mut rows = Vec::with_capacity(n * n);
    for row in &e.confusion {
        let total = row.iter().sum::<usize>().max(1) as f64;
        rows.extend(row.iter().map(|&c| c as f64 / total));
    }
    let tag = Path::new(&a.data).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let png = out.join(format!("confusion-{tag}.png"));
    let summary = json!({
        "model": kind.name(),
        "checkpoint": path.display().to_string(),
        "data": a.data,
        "images": e.images,
        "loss": e.loss,
        "accuracy": e.accuracy,
        "per_class_accuracy": per_class,
        "confusion": e.confusion,
        "normalised": normalised,
        "confusion_png": png.display().to_string(),
    });
    crate::util::ensure_dir(&out)?;
    write_json(&out.join(format!("eval-{tag}.json")), &summary)?;
    plot::heatmap(
        &png,
        &format!("{} on {}: confusion (rows: true class)", kind.name(), a.data),
        &rows,
        n,
        1.0,
    )?;
    Ok(json!({
        "accuracy": e.accuracy,
        "loss": e.loss,
        "images": e.images,
        "per_class_accuracy": per_class,
        "confusion_png": png.display().to_string(),
    }))
}
