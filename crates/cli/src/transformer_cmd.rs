//! `rate crate|aot|tost forward`, `rate aot denoise` and `rate tost scaling`: the white-box transformers (CRATE 4.2.20, AoT 4.3.2, TOST 4.3.15) on checkpoints, the AoT denoising experiment (Definition 4.1, Theorem 4.3.2, Figure 4.16) and the TSSA/MSSA cost scaling.
//!
//! Denoising parameters (defaults) and why: `d = 128`, `K = 4` subspaces of
//! dimension `p = 32` (orthogonal, `K p = d`), `N/K = 50` tokens each (`N = 200`),
//! the theorem's thresholded softmax with `tau = 0.9`, step `eta = 0.1`, 8 layers.
//! `p = 32 >= 3.6 ln N` makes the theorem's interval for `tau`,
//! `(1/2, 1/(1 + N exp(-9p/32))] = (0.5, 0.976]`, non-empty and `tau = 0.9`
//! lies in it; `delta = 0.2` satisfies `delta <~ sqrt(ln N / p) = 0.41`,
//! `delta = 0.5` lies beyond it (the harder case of Figure 4.16b, where the
//! growth is slower). The update has no normalisation, so the signals grow as
//! `(1 + eta tau)^l` and eventually the heads that see only another block's
//! noise start to lock onto the growing signals of that block's tokens (then
//! the noise grows too and the SNR stalls); a small `eta` keeps the 8 layers
//! inside the regime of the theorem. The prediction is
//! `SNR^{l+1} = (1 + eta tau) SNR^l`: `ln SNR` linear in `l` with slope
//! `ln(1 + eta tau) = ln 1.09`; the command fits that line by least squares.
//!
//! Scaling: one TSSA layer and one MSSA layer (dim 384, 8 heads, batch 1),
//! a forward pass that keeps what backward needs, for `N = 256, 512, ...`;
//! MSSA runs dense up to 512 tokens and tiled (flash attention, `O(N)`
//! memory) above. Memory is the peak of heap bytes allocated during the call
//! above what was live before it, counted by the binary's global allocator
//! ([`crate::alloc_count`]), so it includes the cache and the output.

use crate::plot::{self, Series};
use crate::train_cmd::{EvalArgs, EvalJob, TrainArgs, TrainJob};
use crate::util::{
    dispatch, ensure_dir, progress, write_json, BackendOpts, CliError, CliResult, Command, Job,
};
use clap::{Args, Subcommand};
use models::io::{write_safetensors, OutArray, TensorFile};
use models::nn::aot::AotLayer;
use models::nn::classifier::{Block, Classifier, ModelConfig};
use models::nn::config::Meta;
use models::nn::crate_model::CrateLayer;
use models::nn::denoise::{self, fit_line, DenoiseConfig};
use models::nn::exec::{runs_on_host, CrateGradients, Execution};
use models::nn::loss::CrossEntropy;
use models::nn::mssa::{Mssa, Phi};
use models::nn::tost::TostLayer;
use models::nn::tssa::Tssa;
use models::train::Normalisation;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rate_core::{Kernels, Tensor};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `rate crate ...`.
#[derive(Subcommand, Debug)]
pub enum CrateCmd {
    /// Logits of a CRATE checkpoint on images (optionally the loss and every gradient).
    Forward(ForwardArgs),
    /// Train a CRATE classifier on image data (checkpoints, resume, metrics, curves.png, layers.png).
    Train(Box<TrainArgs>),
    /// Loss, accuracy, per-class accuracy and confusion matrix of a trained CRATE on a data set.
    Eval(EvalArgs),
}

/// `rate aot ...`.
#[derive(Subcommand, Debug)]
pub enum AotCmd {
    /// Logits of an AoT checkpoint on images (optionally the loss and every gradient).
    Forward(ForwardArgs),
    /// Train an AoT classifier on image data (checkpoints, resume, metrics, curves.png, layers.png).
    Train(Box<TrainArgs>),
    /// Loss, accuracy, per-class accuracy and confusion matrix of a trained AoT on a data set.
    Eval(EvalArgs),
    /// Figure 4.16: SNR per layer of the oracle attention-only layer on a mixture of noisy low-rank Gaussians.
    ///
    /// Defaults: d = 128, K = 4 orthogonal subspaces of dimension p = 32, 50
    /// tokens each, thresholded softmax tau = 0.9 (inside the theorem's interval
    /// (1/2, 1/(1 + N exp(-9p/32))] = (0.5, 0.976]), eta = 0.1, 8 layers, noise
    /// delta = 0.2 and 0.5. The theorem predicts SNR x (1 + eta tau) = 1.09 per
    /// layer; the fitted slope of ln SNR is reported beside it. Larger eta or
    /// more layers leave the theorem's regime: the unnormalised signals grow
    /// until the noise heads lock onto them and the SNR stalls.
    Denoise(DenoiseArgs),
}

/// `rate tost ...`.
#[derive(Subcommand, Debug)]
pub enum TostCmd {
    /// Logits of a TOST checkpoint on images (optionally the loss and every gradient).
    Forward(ForwardArgs),
    /// Train a TOST classifier on image data (checkpoints, resume, metrics, curves.png, layers.png).
    Train(Box<TrainArgs>),
    /// Loss, accuracy, per-class accuracy and confusion matrix of a trained TOST on a data set.
    Eval(EvalArgs),
    /// Time and peak memory of one TSSA and one MSSA layer (dim 384, 8 heads) for N = 256 ... tokens.
    ///
    /// MSSA runs dense up to 512 tokens and tiled above (O(N) memory). Memory
    /// is the peak heap bytes allocated during the forward pass (which keeps
    /// what backward needs), counted by the binary's allocator.
    Scaling(ScalingArgs),
}

/// Options of `rate crate|aot|tost forward`.
#[derive(Args, Debug, Clone)]
pub struct ForwardArgs {
    /// The checkpoint: safetensors with the parameters under their PyTorch names.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON object of configuration keys (image_size, patch_size, channels, heads, ...), completing or
    /// overriding the checkpoint's metadata.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Images: safetensors with a tensor `images` (or a single tensor) of shape [batch, channels, H, W].
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors: `logits` [batch, classes]; with --with-grads also `loss` (a scalar),
    /// `grad.<parameter name>` for every parameter and `input_grad` (F64).
    #[arg(long)]
    pub out: PathBuf,
    /// Also compute the cross-entropy loss and the gradient of every parameter.
    #[arg(long = "with-grads", requires = "labels")]
    pub with_grads: bool,
    /// Labels: safetensors with a tensor `labels` (or a single tensor) of batch class indices.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Label smoothing of the cross-entropy.
    #[arg(long = "label-smoothing", default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Images per micro-batch on the CPU backend, run in parallel on the thread pool (0: the whole
    /// batch at once; default: 4 for the logits, 8 for the gradients, the fastest in the transformer
    /// bench). Logits, loss and gradients equal the whole-batch ones up to rounding; small micro-batches
    /// keep the activations in cache (CRATE 32 px, batch 128: 2.2x the whole-batch inference
    /// throughput, docs/performance.md). On wgpu the whole batch runs at once.
    #[arg(long = "micro-batch")]
    pub micro_batch: Option<usize>,
}

/// Micro-batch sizes when `--micro-batch` is not given: inference, gradients.
const DEFAULT_MICRO_BATCH: (usize, usize) = (4, 8);

impl ForwardArgs {
    /// How the batch is executed on backend `be` (see `--micro-batch`), for the
    /// logits or for the gradients.
    fn execution<B: Kernels>(&self, be: &B, gradients: bool) -> Execution {
        let default = if gradients { DEFAULT_MICRO_BATCH.1 } else { DEFAULT_MICRO_BATCH.0 };
        match self.micro_batch.unwrap_or(default) {
            0 => Execution { micro_batch: None, parallel: false },
            _ if !runs_on_host(&be.name()) => Execution { micro_batch: None, parallel: false },
            images => Execution::parallel_micro_batches(images),
        }
    }
}

/// Options of `rate aot denoise`.
#[derive(Args, Debug, Clone)]
pub struct DenoiseArgs {
    /// Output directory (metrics.json, snr.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Ambient dimension d.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Number of subspaces K.
    #[arg(long, default_value_t = 4)]
    pub subspaces: usize,
    /// Dimension p of each subspace (K p <= d).
    #[arg(long = "subspace-dim", default_value_t = 32)]
    pub subspace_dim: usize,
    /// Tokens per subspace (N / K).
    #[arg(long = "tokens-per-subspace", default_value_t = 50)]
    pub tokens_per_subspace: usize,
    /// Noise levels delta (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.2, 0.5])]
    pub deltas: Vec<f64>,
    /// Step size eta.
    #[arg(long, default_value_t = 0.1)]
    pub eta: f64,
    /// Threshold tau of the theorem's phi = tau 1{softmax > tau}.
    #[arg(long, default_value_t = 0.9)]
    pub tau: f64,
    /// Use the plain softmax instead of the thresholded one.
    #[arg(long)]
    pub softmax: bool,
    /// Number of layers L.
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    /// Seed of the bases and the tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Options of `rate tost scaling`.
#[derive(Args, Debug, Clone)]
pub struct ScalingArgs {
    /// Output directory (metrics.json, scaling_time.png, scaling_memory.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Smallest token count (doubled up to the largest).
    #[arg(long = "min-tokens", default_value_t = 256)]
    pub min_tokens: usize,
    /// Largest token count of both layers.
    #[arg(long = "max-tokens", default_value_t = 16384)]
    pub max_tokens: usize,
    /// Largest token count of TSSA (it goes further than MSSA); defaults to 4 x --max-tokens.
    #[arg(long = "tssa-max-tokens")]
    pub tssa_max_tokens: Option<usize>,
    /// Token dimension.
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Heads.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Timed runs per size (the minimum is reported; TSSA always runs at least five times).
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
}

/// Which model a `forward` command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// CRATE.
    Crate,
    /// The attention-only transformer.
    Aot,
    /// The token-statistics transformer.
    Tost,
}

impl Kind {
    /// `crate`, `aot` or `tost`: the command and the `model` field of checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Crate => "crate",
            Kind::Aot => "aot",
            Kind::Tost => "tost",
        }
    }
}

impl Command for CrateCmd {
    fn run(self, opts: BackendOpts) -> CliResult<serde_json::Value> {
        match self {
            CrateCmd::Forward(a) => forward(opts, Kind::Crate, a),
            CrateCmd::Train(a) => train(opts, Kind::Crate, *a),
            CrateCmd::Eval(a) => dispatch(opts, EvalJob { kind: Kind::Crate, args: a }),
        }
    }
}

impl Command for AotCmd {
    fn run(self, opts: BackendOpts) -> CliResult<serde_json::Value> {
        match self {
            AotCmd::Forward(a) => forward(opts, Kind::Aot, a),
            AotCmd::Train(a) => train(opts, Kind::Aot, *a),
            AotCmd::Eval(a) => dispatch(opts, EvalJob { kind: Kind::Aot, args: a }),
            AotCmd::Denoise(a) => dispatch(opts, DenoiseJob(a)),
        }
    }
}

impl Command for TostCmd {
    fn run(self, opts: BackendOpts) -> CliResult<serde_json::Value> {
        match self {
            TostCmd::Forward(a) => forward(opts, Kind::Tost, a),
            TostCmd::Train(a) => train(opts, Kind::Tost, *a),
            TostCmd::Eval(a) => dispatch(opts, EvalJob { kind: Kind::Tost, args: a }),
            TostCmd::Scaling(a) => dispatch(opts, ScalingJob(a)),
        }
    }
}

/// `rate crate|aot|tost forward`, with recycled product buffers on the CPU
/// ([`backend_cpu::pool`]; the scaling and denoising jobs measure memory and keep the default).
fn forward(opts: BackendOpts, kind: Kind, args: ForwardArgs) -> CliResult<serde_json::Value> {
    backend_cpu::recycle_buffers(backend_cpu::pool::MODEL_STEP_BYTES);
    dispatch(opts, ForwardJob { kind, args })
}

/// `rate crate|aot|tost train`, with recycled product buffers on the CPU as `forward` (the training step
/// allocates the same shapes step after step; results are unchanged, only the zeroing of fresh outputs goes).
fn train(opts: BackendOpts, kind: Kind, args: TrainArgs) -> CliResult<serde_json::Value> {
    backend_cpu::recycle_buffers(backend_cpu::pool::MODEL_STEP_BYTES);
    dispatch(opts, TrainJob { kind, args })
}

/// A JSON config file as string key-value pairs (numbers and booleans printed).
pub(crate) fn read_config(path: &Path) -> CliResult<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Models(models::Error::Io { path: path.display().to_string(), source: e }))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not valid JSON: {e}", path.display())))?;
    let obj = value
        .as_object()
        .ok_or_else(|| CliError::Usage(format!("{}: the config must be a JSON object", path.display())))?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                return Err(CliError::Usage(format!(
                    "{}: config key `{k}` = {other} is not a string, number or boolean",
                    path.display()
                )))
            }
        };
        out.insert(k.clone(), s);
    }
    Ok(out)
}

/// The tensor `name` of a file, or its only tensor.
fn named_or_single<'a>(file: &'a TensorFile, name: &str, flag: &str) -> CliResult<&'a models::io::HostArray> {
    if let Some(a) = file.tensors.get(name) {
        return Ok(a);
    }
    if file.tensors.len() == 1 {
        if let Some(a) = file.tensors.values().next() {
            return Ok(a);
        }
    }
    Err(CliError::Usage(format!(
        "{flag} {}: no tensor `{name}` (found {:?}; a file with a single tensor is read whatever its name)",
        file.path,
        file.tensors.keys().collect::<Vec<_>>()
    )))
}

fn read_labels(path: &Path, batch: usize) -> CliResult<Vec<usize>> {
    let file = TensorFile::read(path)?;
    let a = named_or_single(&file, "labels", "--labels")?;
    if a.data.len() != batch {
        return Err(CliError::Usage(format!(
            "--labels {}: {} labels (shape {:?}) for a batch of {batch} images",
            file.path,
            a.data.len(),
            a.shape
        )));
    }
    a.data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v >= 0.0 && v.fract() == 0.0 && v.is_finite() {
                Ok(v as usize)
            } else {
                Err(CliError::Usage(format!(
                    "--labels {}: labels[{i}] = {v} is not a class index",
                    file.path
                )))
            }
        })
        .collect()
}

/// The `forward` commands of the three models.
pub struct ForwardJob {
    /// Which model.
    pub kind: Kind,
    /// The options.
    pub args: ForwardArgs,
}

type ForwardResult<B> = (Tensor<B>, Option<(f64, CrateGradients<B>)>, BTreeMap<String, String>);

/// The logits, and with labels the loss and every gradient, of the checkpoint of one model. Images are
/// normalised as the checkpoint's metadata says (`normalize_mean`/`normalize_std`, written by `train`),
/// and the input gradient is then taken with respect to the images as given.
fn classifier_forward<B: Kernels, L: Block<B>>(
    be: &B,
    a: &ForwardArgs,
    overrides: &BTreeMap<String, String>,
    x: &models::io::HostArray,
    labels: Option<&[usize]>,
    ce: &CrossEntropy,
) -> CliResult<ForwardResult<B>> {
    let mut file = TensorFile::read(&a.checkpoint)?;
    let config = L::Config::from_file(&mut file, overrides)?;
    let model = Classifier::<B, L>::from_state_dict(
        be,
        &config,
        file.tensors.iter().map(|(k, v)| (k.as_str(), v)),
        &file.path,
    )?;
    let channels = config.vision().channels;
    let norm = Normalisation::from_metadata(&Meta { map: &file.metadata, source: &file.path }, channels)?;
    let images = match &norm {
        Some(n) if x.shape.len() == 4 && x.shape[1] == channels => {
            let mut data = x.data.clone();
            n.apply(&mut data, x.shape[2] * x.shape[3]);
            Tensor::from_f64(be, &data, &x.shape)
        }
        _ => Tensor::from_f64(be, &x.data, &x.shape),
    };
    let logits = model.logits_with(&images, &a.execution(be, false))?;
    let exec = a.execution(be, true);
    let mut grads = labels.map(|l| model.loss_and_gradients_with(&images, l, ce, &exec)).transpose()?;
    if let (Some(n), Some((_, g))) = (&norm, grads.as_mut()) {
        let inv: Vec<f64> = n.std.iter().map(|s| 1.0 / s).collect();
        g.input = g.input.mul(&Tensor::from_f64(be, &inv, &[1, channels, 1, 1]));
    }
    let mut meta = model.config.to_metadata();
    if let Some(n) = &norm {
        n.to_metadata(&mut meta);
    }
    Ok((logits, grads, meta))
}

impl Job for ForwardJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = &self.args;
        let overrides = match &a.config {
            Some(p) => read_config(p)?,
            None => BTreeMap::new(),
        };
        let input = TensorFile::read(&a.input)?;
        let x = named_or_single(&input, "images", "--input")?;
        if x.shape.len() != 4 {
            return Err(CliError::Usage(format!(
                "--input {}: images have shape {:?}, expected [batch, channels, H, W]",
                input.path, x.shape
            )));
        }
        if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
            let per = x.shape[1..].iter().product::<usize>().max(1);
            return Err(CliError::Usage(format!(
                "--input {}: image {} holds a non-finite value ({}) at flat index {i}",
                input.path,
                i / per,
                x.data[i]
            )));
        }
        let labels = match (&a.labels, a.with_grads) {
            (Some(p), true) => Some(read_labels(p, x.shape[0])?),
            _ => None,
        };
        let ce = CrossEntropy::new(a.label_smoothing)?;
        let lab = labels.as_deref();
        let with_input = |e: CliError| match e {
            CliError::Models(e @ models::Error::ImageShape { .. }) => {
                CliError::Usage(format!("--input {}: {e}", input.path))
            }
            other => other,
        };
        let (logits, grads, mut meta) = match self.kind {
            Kind::Crate => classifier_forward::<B, CrateLayer<B>>(be, a, &overrides, x, lab, &ce),
            Kind::Aot => classifier_forward::<B, AotLayer<B>>(be, a, &overrides, x, lab, &ce),
            Kind::Tost => classifier_forward::<B, TostLayer<B>>(be, a, &overrides, x, lab, &ce),
        }
        .map_err(with_input)?;
        let model = self.kind.name();
        meta.insert("model".into(), model.into());
        let mut arrays = BTreeMap::new();
        arrays.insert("logits".to_string(), OutArray::f64(logits.shape(), logits.to_f64_vec()));
        let mut summary = json!({
            "model": model,
            "batch": logits.dim(0),
            "classes": logits.dim(1),
            "out": a.out.display().to_string(),
        });
        if let Some((loss, g)) = grads {
            arrays.insert("loss".to_string(), OutArray::f64(&[], vec![loss]));
            for (name, t) in &g.params {
                arrays.insert(format!("grad.{name}"), OutArray::f64(t.shape(), t.to_f64_vec()));
            }
            arrays.insert("input_grad".to_string(), OutArray::f64(g.input.shape(), g.input.to_f64_vec()));
            summary["loss"] = json!(loss);
            summary["gradients"] = json!(g.params.len());
        }
        write_safetensors(&a.out, &arrays, &meta)?;
        Ok(summary)
    }
}

/// `rate aot denoise`.
pub struct DenoiseJob(pub DenoiseArgs);

impl Job for DenoiseJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        if a.deltas.is_empty() {
            return Err(CliError::Usage("--deltas needs at least one noise level".into()));
        }
        ensure_dir(&a.out)?;
        let phi = if a.softmax { Phi::Softmax } else { Phi::Threshold(a.tau) };
        let pb = progress((a.layers * a.deltas.len()) as u64, "denoise");
        let mut runs = Vec::new();
        let mut series_pts = Vec::new();
        let t0 = Instant::now();
        for &delta in &a.deltas {
            let c = DenoiseConfig {
                dim: a.dim,
                subspaces: a.subspaces,
                subspace_dim: a.subspace_dim,
                tokens_per_subspace: a.tokens_per_subspace,
                delta,
                eta: a.eta,
                phi,
                layers: a.layers,
                seed: a.seed,
            };
            let trace = denoise::run(be, &c, |_| pb.inc(1))?;
            let snr = trace.mean_snr();
            let layers: Vec<f64> = (0..snr.len()).map(|l| l as f64).collect();
            let ln: Vec<f64> = snr.iter().map(|s| s.ln()).collect();
            let (intercept, slope) = fit_line(&layers, &ln);
            runs.push(json!({
                "delta": delta,
                "snr_per_layer": snr,
                "snr_per_layer_per_subspace": trace.snr,
                "fit_ln_snr": { "intercept": intercept, "slope": slope },
                "fitted_rate_per_layer": slope.exp(),
                "mean_ratio_per_layer": (snr[snr.len() - 1] / snr[0]).powf(1.0 / (snr.len() - 1).max(1) as f64),
            }));
            series_pts.push((delta, layers, ln, intercept, slope));
        }
        pb.finish_and_clear();
        let run_s = t0.elapsed().as_secs_f64();
        let names: Vec<(String, String)> =
            series_pts.iter().map(|s| (format!("delta = {}", s.0), format!("fit delta = {}", s.0))).collect();
        let mut series = Vec::new();
        for ((_, layers, ln, a0, b), (n1, n2)) in series_pts.iter().zip(&names) {
            series.push(Series {
                name: n1,
                points: layers.iter().copied().zip(ln.iter().copied()).collect(),
                markers: true,
            });
            series.push(Series {
                name: n2,
                points: layers.iter().map(|&l| (l, a0 + b * l)).collect(),
                markers: false,
            });
        }
        plot::lines(
            &a.out.join("snr.png"),
            "AoT denoising: ln SNR per layer",
            "layer",
            "ln SNR",
            &series,
            false,
        )?;
        let n = a.subspaces * a.tokens_per_subspace;
        let tau_upper = 1.0 / (1.0 + n as f64 * (-9.0 * a.subspace_dim as f64 / 32.0).exp());
        let predicted = match phi {
            Phi::Threshold(tau) => json!(1.0 + a.eta * tau),
            Phi::Softmax => serde_json::Value::Null,
        };
        let metrics = json!({
            "experiment": "aot_denoise",
            "dim": a.dim,
            "subspaces": a.subspaces,
            "subspace_dim": a.subspace_dim,
            "tokens": n,
            "eta": a.eta,
            "phi": if a.softmax { "softmax".to_string() } else { format!("threshold tau = {}", a.tau) },
            "tau_interval_upper": tau_upper,
            "layers": a.layers,
            "seed": a.seed,
            "predicted_rate_per_layer": predicted,
            "runs": runs,
            "timings": { "run_s": run_s },
        });
        write_json(&a.out.join("metrics.json"), &metrics)?;
        Ok(json!({
            "out": a.out.display().to_string(),
            "predicted_rate_per_layer": predicted,
            "fitted_rate_per_layer": metrics["runs"].as_array().map(|r| r.iter().map(|x| x["fitted_rate_per_layer"].clone()).collect::<Vec<_>>()),
        }))
    }
}

/// `rate tost scaling`.
pub struct ScalingJob(pub ScalingArgs);

/// The least time and the least peak of `repeats` runs (one-time allocations of
/// the thread pool and the matmul workspaces fall on the first run).
fn measure<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, usize) {
    let mut best = f64::INFINITY;
    let mut peak = usize::MAX;
    for _ in 0..repeats.max(1) {
        let base = crate::alloc_count::reset_peak();
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed().as_secs_f64());
        peak = peak.min(crate::alloc_count::peak().saturating_sub(base));
        drop(out);
    }
    (best, peak)
}

fn loglog_slope(rows: &[(usize, f64)]) -> Option<f64> {
    if rows.len() < 2 {
        return None;
    }
    let x: Vec<f64> = rows.iter().map(|r| (r.0 as f64).ln()).collect();
    let y: Vec<f64> = rows.iter().map(|r| r.1.max(1e-12).ln()).collect();
    Some(fit_line(&x, &y).1)
}

impl Job for ScalingJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        if a.min_tokens == 0 || a.max_tokens < a.min_tokens {
            return Err(CliError::Usage(format!(
                "--min-tokens {} and --max-tokens {} must satisfy 0 < min <= max",
                a.min_tokens, a.max_tokens
            )));
        }
        if a.heads == 0 || a.dim % a.heads != 0 {
            return Err(CliError::Usage(format!(
                "--dim {} is not a positive multiple of --heads {}",
                a.dim, a.heads
            )));
        }
        ensure_dir(&a.out)?;
        let tssa_max = a.tssa_max_tokens.unwrap_or(a.max_tokens * 4).max(a.max_tokens);
        let mut rng = StdRng::seed_from_u64(0);
        let tssa = Tssa::init(be, a.dim, a.heads, false, &mut rng)?;
        let mssa = Mssa::new(be, a.dim, a.heads, a.dim / a.heads, &mut rng);
        let sizes = |max: usize| {
            let mut v = vec![a.min_tokens];
            while let Some(&last) = v.last() {
                if last * 2 > max {
                    break;
                }
                v.push(last * 2);
            }
            v
        };
        let (ts, ms) = (sizes(tssa_max), sizes(a.max_tokens));
        let pb = progress((ts.len() + ms.len()) as u64, "scaling");
        // warm-up (thread pool, first-touch) outside the timings
        let tokens_of = |n: usize| {
            let v: Vec<f64> = (0..n * a.dim).map(|i| ((i * 7919) % 1013) as f64 / 1013.0 - 0.5).collect();
            Tensor::from_f64(be, &v, &[1, n, a.dim])
        };
        let warm = tokens_of(a.min_tokens);
        let _ = (tssa.forward(&warm), mssa.forward(&warm));
        let mut rows = Vec::new();
        let (mut t_time, mut t_mem, mut m_time, mut m_mem) = (vec![], vec![], vec![], vec![]);
        for &n in &ts {
            let x = tokens_of(n);
            let (s, bytes) = measure(a.repeats.max(5), || tssa.forward(&x));
            t_time.push((n, s));
            t_mem.push((n, bytes as f64));
            rows.push(
                json!({ "layer": "tssa", "tokens": n, "time_s": s, "peak_bytes": bytes, "path": "linear" }),
            );
            pb.inc(1);
        }
        for &n in &ms {
            let x = tokens_of(n);
            let (s, bytes) = measure(a.repeats, || mssa.forward(&x));
            m_time.push((n, s));
            m_mem.push((n, bytes as f64));
            let path = if n > models::nn::mssa::TILED_ABOVE_TOKENS { "tiled" } else { "dense" };
            rows.push(
                json!({ "layer": "mssa", "tokens": n, "time_s": s, "peak_bytes": bytes, "path": path }),
            );
            pb.inc(1);
        }
        pb.finish_and_clear();
        let tiled = |r: &[(usize, f64)]| -> Vec<(usize, f64)> {
            r.iter().copied().filter(|&(n, _)| n > models::nn::mssa::TILED_ABOVE_TOKENS).collect()
        };
        let speedup = m_time.last().and_then(|&(n, ms_t)| {
            t_time
                .iter()
                .find(|r| r.0 == n)
                .map(|&(_, ts_t)| json!({ "tokens": n, "mssa_over_tssa": ms_t / ts_t }))
        });
        let to_pts = |r: &[(usize, f64)]| r.iter().map(|&(n, v)| (n as f64, v)).collect::<Vec<_>>();
        plot::lines(
            &a.out.join("scaling_time.png"),
            &format!("one layer, dim {}, {} heads: time", a.dim, a.heads),
            "tokens N",
            "seconds",
            &[
                Series { name: "TSSA", points: to_pts(&t_time), markers: false },
                Series { name: "MSSA (tiled above 512)", points: to_pts(&m_time), markers: false },
            ],
            true,
        )?;
        plot::lines(
            &a.out.join("scaling_memory.png"),
            &format!("one layer, dim {}, {} heads: peak heap bytes", a.dim, a.heads),
            "tokens N",
            "bytes",
            &[
                Series { name: "TSSA", points: to_pts(&t_mem), markers: false },
                Series { name: "MSSA (tiled above 512)", points: to_pts(&m_mem), markers: false },
            ],
            true,
        )?;
        let metrics = json!({
            "experiment": "tost_scaling",
            "dim": a.dim,
            "heads": a.heads,
            "batch": 1,
            "memory": "peak heap bytes allocated during the forward pass above the bytes live before it (counting global allocator); includes the output and the cache kept for backward",
            "mssa_tiled_above_tokens": models::nn::mssa::TILED_ABOVE_TOKENS,
            "rows": rows,
            "loglog_slope": {
                "tssa_time": loglog_slope(&t_time),
                "tssa_memory": loglog_slope(&t_mem),
                "mssa_time": loglog_slope(&m_time),
                "mssa_memory": loglog_slope(&m_mem),
                "mssa_tiled_time": loglog_slope(&tiled(&m_time)),
                "mssa_tiled_memory": loglog_slope(&tiled(&m_mem)),
            },
            "speedup_at_largest_common_n": speedup,
        });
        write_json(&a.out.join("metrics.json"), &metrics)?;
        Ok(json!({
            "out": a.out.display().to_string(),
            "loglog_slope": metrics["loglog_slope"].clone(),
            "speedup_at_largest_common_n": metrics["speedup_at_largest_common_n"].clone(),
        }))
    }
}
