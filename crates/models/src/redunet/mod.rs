//! ReduNet (4.1.13, Algorithms 4.1-4.2, eqs 4.1.1-4.1.14): layers built forward from training features and labels by unrolled gradient ascent on the rate reduction, no back-propagation.
//!
//! Layout: features are rows (`Z` is `m x d`), as in the fixtures; the
//! chapter's formulas hold with `Z` transposed. `eps_sq` is epsilon squared,
//! as in the reference code.
//!
//! # Construction (Algorithm 4.1)
//!
//! The input rows are first put on the unit sphere (norm clamped below at
//! `1e-8`). Layer `l` is built from its own input `Z^l` and the TRUE labels:
//!
//! * `alpha = d/(m eps_sq)`, `alpha_j = d/(m_j eps_sq)`, `gamma_j = m_j/m`;
//! * `E^l = alpha (I + alpha Z^T Z)^-1` (4.1.3) and
//!   `C^l_j = alpha_j (I + alpha_j Z_j^T Z_j)^-1` (4.1.4), `Z_j` the rows of class `j`.
//!
//! # The layer map (4.1.11-4.1.13)
//!
//! For one sample `z` (training or not; labels are never used here):
//!
//! * `pi_j(z) = softmax_j(-lambda max(||C_j z||, 1e-8))` (the soft membership 4.1.11);
//! * `z <- normalise(z + eta (E z - sum_j gamma_j pi_j(z) C_j z))`.
//!
//! After the last layer every row is normalised once more. `yhat` is the
//! argmax of `pi` (first index on ties), recorded per layer.
//!
//! # Rates recorded per layer ([`Trace`])
//!
//! * `rates_true[l]`: `R`, `R_c`, `ΔR` (4.1.1) of `Z^l` (index 0 = normalised
//!   input, `l` = output of layer `l`) with the true labels and weights `gamma_j`.
//! * `rates_code[l]`: what the reference code logs after layer `l`: the rates
//!   of the layer's OUTPUT with labels = that layer's `yhat`, `alpha_j` from the
//!   `yhat` class sizes (empty classes skipped) and the TRAINING weights `gamma_j`.
//!
//! # Depth
//!
//! [`Depth::Fixed`] builds a given number of layers; [`Depth::Adaptive`] stops
//! as soon as `ΔR(Z^l) - ΔR(Z^{l - window}) < min_gain` (true labels), or at
//! `max_layers` (the chapter: "one can stop whenever adding new layers gives
//! diminishing returns").
//!
//! # Two engines, one map
//!
//! The construction and the transform are kernels of the backend
//! ([`rate_core::kernels::redunet_build`], [`rate_core::kernels::redunet_transform`]);
//! their reference bodies, written with batched `Tensor` ops, live in
//! `rate_core::kernels::redunet`.
//!
//! * [`Engine::Tensor`] runs the reference body on any backend: every step
//!   is a batched op (one matmul `Z [E; C_1; ...; C_k]^T` per batch of
//!   samples, then norms, a softmax and a weighted sum), Gram matrices summed
//!   over batches of `batch_size` samples, the `m_j x m_j` route where a class
//!   has fewer samples than `d`.
//! * [`Engine::Fused`] runs the backend's kernel: on `CpuBackend` the fused
//!   host engine of `backend-cpu` (features in blocks of samples laid out
//!   feature-major, each layer ONE pass: responses, memberships, update,
//!   normalisation and the output's class Gram matrices; tested equal to the
//!   reference), on other backends the reference body.
//! * [`Engine::Auto`] picks the backend's kernel when `d <= FUSED_MAX_DIM`.
//!
//! Both build `E` and `C^j` with the one family of [`rate_core::operators`].
//!
//! Memory: the features, the operators (`(k+1) d^2` numbers a layer), the
//! per-layer `yhat` (4 bytes per sample and layer, when recorded) and any
//! feature snapshots asked for in [`Record::features`].

mod pca;
mod persist;
mod synthetic;

pub use pca::Pca;

pub use persist::{manifest_path, FORMAT, FORMAT_VERSION};
pub use synthetic::{gaussians, Gaussians};

use crate::{Error, Result};
use rate_core::collective::{agreed, all_reduce_counts, Collective, Local};
use rate_core::kernels::redunet::{build_reference, build_sharded, transform_reference};
use rate_core::kernels::{redunet_build, redunet_transform, RedunetRun, RedunetSpec};
use rate_core::operators::ClassScales;
use rate_core::{Kernels, Rates, Tensor};
use serde::{Deserialize, Serialize};

pub use rate_core::kernels::redunet::{Depth, LayerProgress, LayerSet, Record, NORM_FLOOR};

/// `lambda` of the soft membership when not set (the reference code's default).
pub const DEFAULT_LAMBDA: f64 = 500.0;
/// Largest feature dimension for which [`Engine::Auto`] picks the fused engine.
pub const FUSED_MAX_DIM: usize = 32;
/// Default number of samples per batch of the reference engine.
pub const DEFAULT_BATCH_SIZE: usize = 4096;

/// Which implementation of the layer map runs (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Fused for `d <= FUSED_MAX_DIM`, the tensor reference otherwise.
    #[default]
    Auto,
    /// The fused host kernel.
    Fused,
    /// The reference: batched backend tensor ops.
    Tensor,
}

impl Engine {
    fn resolve(self, dim: usize) -> Engine {
        match self {
            Engine::Auto if dim <= FUSED_MAX_DIM => Engine::Fused,
            Engine::Auto => Engine::Tensor,
            e => e,
        }
    }
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

/// Hyperparameters of a ReduNet, validated by [`ReduNetConfig::validate`]
/// (called by every constructor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduNetConfig {
    /// Number of classes `k`; labels are `0..k`.
    pub num_classes: usize,
    /// Number of layers, or the rule that chooses it.
    pub depth: Depth,
    /// Step size `eta` of the gradient ascent (4.1.12).
    pub eta: f64,
    /// Quantisation `epsilon^2` of the coding rate.
    pub eps_sq: f64,
    /// Sharpness `lambda` of the soft membership (4.1.11).
    pub lambda: f64,
    /// Samples per batch in the reference engine (covariances and layer map).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Which implementation runs.
    #[serde(default)]
    pub engine: Engine,
}

/// Checks the constants every ReduNet layer shares (4.1.11-4.1.13): `eta`
/// and `eps_sq` positive and finite, `lambda` non-negative and finite;
/// `model` names the network in the error.
pub(crate) fn check_step(model: &str, eta: f64, eps_sq: f64, lambda: f64) -> Result<()> {
    let bad = |field: &str, value: f64, why: &str| {
        Err(Error::Config(format!("{model}: `{field}` = {value} {why}")))
    };
    if !(eta.is_finite() && eta > 0.0) {
        return bad("eta", eta, "must be positive and finite");
    }
    if !(eps_sq.is_finite() && eps_sq > 0.0) {
        return bad("eps_sq", eps_sq, "must be positive and finite");
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return bad("lambda", lambda, "must be non-negative and finite");
    }
    Ok(())
}

impl ReduNetConfig {
    /// `layers` layers for `num_classes` classes with the chapter's settings:
    /// `eta = 0.5`, `eps_sq = 0.1`, `lambda = 500`.
    pub fn new(num_classes: usize, layers: usize) -> Self {
        ReduNetConfig {
            num_classes,
            depth: Depth::Fixed { layers },
            eta: 0.5,
            eps_sq: 0.1,
            lambda: DEFAULT_LAMBDA,
            batch_size: DEFAULT_BATCH_SIZE,
            engine: Engine::Auto,
        }
    }

    /// The constants the ReduNet kernels take.
    pub fn spec(&self) -> RedunetSpec {
        RedunetSpec {
            classes: self.num_classes,
            eta: self.eta,
            eps_sq: self.eps_sq,
            lambda: self.lambda,
            batch_size: self.batch_size,
            depth: self.depth.clone(),
            progress: Default::default(),
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, why: &str| {
            Err(Error::Config(format!("ReduNet: `{field}` = {value} {why}")))
        };
        if self.num_classes == 0 {
            return bad("num_classes", "0".into(), "must be at least 1");
        }
        check_step("ReduNet", self.eta, self.eps_sq, self.lambda)?;
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "must be at least 1");
        }
        match self.depth {
            Depth::Fixed { layers: 0 } => bad("depth.layers", "0".into(), "must be at least 1"),
            Depth::Adaptive { max_layers, window, min_gain } => {
                if max_layers == 0 {
                    bad("depth.max_layers", "0".into(), "must be at least 1")
                } else if window == 0 || window > max_layers {
                    bad(
                        "depth.window",
                        window.to_string(),
                        &format!("must be in 1..={max_layers} (max_layers)"),
                    )
                } else if !min_gain.is_finite() {
                    bad("depth.min_gain", min_gain.to_string(), "must be finite")
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// What a build or a transform produced.
#[derive(Clone, Debug)]
pub struct Trace<B: Kernels> {
    /// Output features after the final normalisation, `m x d`, rows in input order.
    pub output: Tensor<B>,
    /// Rates of `Z^0 .. Z^L` with the true labels (build with rates; else empty).
    pub rates_true: Vec<Rates>,
    /// Rates the reference code logs after each layer (build with rates; else empty).
    pub rates_code: Vec<Rates>,
    /// Recorded feature snapshots `(index, m x d)`, in increasing index order.
    pub features: Vec<(usize, Tensor<B>)>,
    yhat: Vec<u32>,
    samples: usize,
}

impl<B: Kernels> Trace<B> {
    fn from_run(run: RedunetRun<Tensor<B>>, samples: usize) -> Self {
        let RedunetRun { output, rates_true, rates_code, features, yhat, .. } = run;
        Trace { output, rates_true, rates_code, features, yhat, samples }
    }

    /// Number of layers with a recorded `yhat`.
    pub fn yhat_layers(&self) -> usize {
        self.yhat.len().checked_div(self.samples).unwrap_or(0)
    }

    /// `yhat` inside layer `layer` (0-based), one label per sample in input order.
    pub fn yhat(&self, layer: usize) -> Option<&[u32]> {
        if layer < self.yhat_layers() {
            Some(&self.yhat[layer * self.samples..(layer + 1) * self.samples])
        } else {
            None
        }
    }

    /// The recorded snapshot at index `l`, if any.
    pub fn feature(&self, l: usize) -> Option<&Tensor<B>> {
        self.features.iter().find(|(i, _)| *i == l).map(|(_, t)| t)
    }
}

/// One layer: the stacked operators `[E; C_1; ...; C_k]` and the class weights.
#[derive(Clone, Debug)]
pub struct Layer<B: Kernels> {
    operators: Tensor<B>,
    gamma: Vec<f64>,
    dim: usize,
    classes: usize,
}

impl<B: Kernels> Layer<B> {
    fn new(operators: Tensor<B>, gamma: &[f64], dim: usize, classes: usize) -> Self {
        Layer { operators, gamma: gamma.to_vec(), dim, classes }
    }

    /// `[E; C_1; ...; C_k]`, `(k+1) d x d`: `E` in rows `0..d`, `C_j` in rows `(j+1) d..(j+2) d`.
    pub fn operators(&self) -> &Tensor<B> {
        &self.operators
    }

    /// The expansion operator `E` (4.1.3), `d x d`.
    pub fn expansion(&self) -> Tensor<B> {
        self.operators.narrow(0, 0, self.dim)
    }

    /// The compression operators `C_j` (4.1.4), `k x d x d`.
    pub fn compression(&self) -> Tensor<B> {
        self.operators.narrow(0, self.dim, self.classes * self.dim).reshape(&[
            self.classes,
            self.dim,
            self.dim,
        ])
    }

    /// The class weights `gamma_j = m_j / m` (true training labels).
    pub fn gamma(&self) -> &[f64] {
        &self.gamma
    }
}

/// A built ReduNet: its configuration and layers.
#[derive(Clone, Debug)]
pub struct ReduNet<B: Kernels> {
    backend: B,
    config: ReduNetConfig,
    dim: usize,
    gamma: Vec<f64>,
    layers: Vec<Layer<B>>,
}

/// The checked shape `(m, d)` of a feature matrix.
fn check_features<B: Kernels>(z: &Tensor<B>, op: &str, dim: Option<usize>) -> Result<(usize, usize)> {
    if z.rank() != 2 || z.dim(0) == 0 || z.dim(1) == 0 {
        return Err(Error::Config(format!(
            "{op}: features have shape {:?}, expected a non-empty samples x features matrix",
            z.shape()
        )));
    }
    if let Some(d) = dim {
        if z.dim(1) != d {
            return Err(Error::Config(format!(
                "{op}: features have shape {:?}, but the network was built for {d} features",
                z.shape()
            )));
        }
    }
    z.check_finite(op)?;
    Ok((z.dim(0), z.dim(1)))
}

/// That every class has a sample (of the counts `counts`).
fn no_empty_class(counts: &[usize]) -> Result<()> {
    if let Some(j) = counts.iter().position(|&c| c == 0) {
        return Err(Error::Config(format!(
            "ReduNet::build: class {j} has no training samples (num_classes = {}); \
             its compression operator would be undefined",
            counts.len()
        )));
    }
    Ok(())
}

/// Per-class sample counts, checking that there is one label per sample and every label is below `k`.
fn label_counts(labels: &[usize], m: usize, k: usize) -> Result<Vec<usize>> {
    if labels.len() != m {
        return Err(Error::Config(format!("ReduNet::build: {} labels for {m} samples", labels.len())));
    }
    let mut counts = vec![0usize; k];
    for (i, &l) in labels.iter().enumerate() {
        if l >= k {
            return Err(Error::Config(format!(
                "ReduNet::build: labels[{i}] = {l} is not below num_classes = {k}"
            )));
        }
        counts[l] += 1;
    }
    Ok(counts)
}

impl<B: Kernels> ReduNet<B> {
    /// Builds the network from training features `z` (`m x d`) and true labels,
    /// recording rates and `yhat` per layer ([`Record::default`]).
    pub fn build(z: &Tensor<B>, labels: &[usize], config: ReduNetConfig) -> Result<(Self, Trace<B>)> {
        Self::build_with(z, labels, config, &Record::default())
    }

    /// Builds the network, recording what `record` asks for.
    pub fn build_with(
        z: &Tensor<B>,
        labels: &[usize],
        config: ReduNetConfig,
        record: &Record,
    ) -> Result<(Self, Trace<B>)> {
        Self::build_observed(z, labels, config, record, LayerProgress::default())
    }

    /// [`Self::build_with`], telling `progress` after each layer (a progress bar).
    pub fn build_observed(
        z: &Tensor<B>,
        labels: &[usize],
        config: ReduNetConfig,
        record: &Record,
        progress: LayerProgress,
    ) -> Result<(Self, Trace<B>)> {
        Self::build_sharded(z, labels, config, record, progress, &Local)
    }

    /// Builds the network from one shard of the training samples: every
    /// process of `comm` passes its own rows and labels (uneven shards, a
    /// class missing from a shard: fine), and every process ends with the
    /// same network, the one [`Self::build_observed`] builds on the union of
    /// the shards (up to rounding: sharded, every class takes the Gram
    /// route). The trace's rates are those of the union; its output and
    /// `yhat` are this shard's. Over several processes the reference engine
    /// runs (the class Gram matrices summed over processes once a layer);
    /// with one process ([`Self::build_observed`]) the configured engine.
    ///
    /// Every process checks its shard (shape, finite values, labels) and the
    /// verdicts are shared first, so that a bad shard stops every process
    /// with the same error naming its rank, and no process waits forever.
    pub fn build_sharded(
        z: &Tensor<B>,
        labels: &[usize],
        config: ReduNetConfig,
        record: &Record,
        progress: LayerProgress,
        comm: &dyn Collective,
    ) -> Result<(Self, Trace<B>)> {
        let local = config
            .validate()
            .and_then(|()| check_features(z, "ReduNet::build", None))
            .and_then(|(m, _)| label_counts(labels, m, config.num_classes));
        let counts = agreed(comm, local)?;
        let (m, d) = (z.dim(0), z.dim(1));
        comm.same_everywhere("ReduNet::build: features of width", &[d as f64])?;
        let counts = all_reduce_counts(&counts, comm)?;
        no_empty_class(&counts)?;
        let gamma = ClassScales::new(&counts, d, config.eps_sq).gamma;
        let spec = RedunetSpec { progress, ..config.spec() };
        let run = match config.engine.resolve(d) {
            _ if comm.size() > 1 => build_sharded(z, labels, &spec, record, comm)?,
            Engine::Tensor => build_reference(z, labels, &spec, record)?,
            _ => redunet_build(z, labels, &spec, record)?,
        };
        let k = config.num_classes;
        let layers = run.operators.iter().map(|w| Layer::new(w.clone(), &gamma, d, k)).collect();
        let net = ReduNet { backend: z.backend().clone(), config, dim: d, gamma, layers };
        Ok((net, Trace::from_run(run, m)))
    }

    /// Applies the network to new features (`n x d`): soft memberships only, no labels.
    pub fn transform(&self, z: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(self.transform_with(z, &Record::output_only())?.output)
    }

    /// Applies the network, recording `yhat` and features as `record` asks
    /// (`record.rates` is ignored: there are no labels).
    pub fn transform_with(&self, z: &Tensor<B>, record: &Record) -> Result<Trace<B>> {
        self.transform_observed(z, record, LayerProgress::default())
    }

    /// [`Self::transform_with`], telling `progress` after each layer where the engine
    /// runs layer by layer (the reference engine; the fused CPU engine runs each
    /// chunk of samples through every layer and tells it once at the end).
    pub fn transform_observed(
        &self,
        z: &Tensor<B>,
        record: &Record,
        progress: LayerProgress,
    ) -> Result<Trace<B>> {
        let (m, _) = check_features(z, "ReduNet::transform", Some(self.dim))?;
        let spec = RedunetSpec { progress, ..self.config.spec() };
        let operators: Vec<Tensor<B>> = self.layers.iter().map(|l| l.operators.clone()).collect();
        let run = match self.config.engine.resolve(self.dim) {
            Engine::Tensor => transform_reference(z, &operators, &self.gamma, &spec, record)?,
            _ => redunet_transform(z, &operators, &self.gamma, &spec, record)?,
        };
        Ok(Trace::from_run(run, m))
    }

    /// Chooses the engine used by later calls to [`Self::transform`].
    pub fn set_engine(&mut self, engine: Engine) {
        self.config.engine = engine;
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ReduNetConfig {
        &self.config
    }

    /// The backend its operators live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Feature dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of classes `k`.
    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    /// Number of layers built.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[Layer<B>] {
        &self.layers
    }

    /// Class weights `gamma_j = m_j / m` of the training labels.
    pub fn gamma(&self) -> &[f64] {
        &self.gamma
    }
}
