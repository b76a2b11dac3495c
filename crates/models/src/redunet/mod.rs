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
//! * [`Engine::Tensor`] is the reference: every step is a batched `Tensor` op
//!   on the backend (one matmul `Z [E; C_1; ...; C_k]^T` per batch of samples,
//!   then norms, a softmax and a weighted sum over the stacked responses).
//!   Covariances `Z_j^T Z_j` are accumulated over batches of `batch_size`
//!   samples, so no intermediate grows with `m` beyond the features
//!   themselves. Where a class has fewer samples than `d` (`m_j < d`), `C_j`
//!   is formed through the `m_j x m_j` system (Woodbury, via
//!   [`rate_core::rate::scaled_regularised_inverse`]) and its log-determinant
//!   through Sylvester's identity; otherwise through the `d x d` covariance.
//!   The same holds for `E` when `m < d`.
//! * [`Engine::Fused`] downloads the features once, keeps them on the host in
//!   blocks of samples laid out feature-major, and runs each layer as ONE pass
//!   over the blocks: responses, memberships, update, normalisation and the
//!   per-class covariances of the output (for the next layer and the rates)
//!   are fused, with no allocation per layer. Its `d x d` systems
//!   (`(k+1)` Cholesky factorisations per layer, giving both the operators
//!   and the log-determinants) are always in the covariance form, which is
//!   the cheap one for the small `d` this engine is for. Operators go back to
//!   the backend as tensors once per layer. Tested equal to the reference.
//! * [`Engine::Auto`] picks the fused engine when `d <= FUSED_MAX_DIM`.
//!
//! Memory: the features, the operators (`(k+1) d^2` numbers a layer), the
//! per-layer `yhat` (4 bytes per sample and layer, when recorded) and any
//! feature snapshots asked for in [`Record::features`].

mod fused;
mod persist;
mod reference;
mod synthetic;

pub use persist::{manifest_path, FORMAT, FORMAT_VERSION};
pub use synthetic::{gaussians, Gaussians};

use crate::{Error, Result};
use rate_core::{Element, Kernels, Rates, Tensor};
use serde::{Deserialize, Serialize};

/// `lambda` of the soft membership when not set (the reference code's default).
pub const DEFAULT_LAMBDA: f64 = 500.0;
/// Floor of every norm (membership norms and normalisation), as in the reference code.
pub const NORM_FLOOR: f64 = 1e-8;
/// Largest feature dimension for which [`Engine::Auto`] picks the fused engine.
pub const FUSED_MAX_DIM: usize = 32;
/// Default number of samples per batch of the reference engine.
pub const DEFAULT_BATCH_SIZE: usize = 4096;

/// How many layers to build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Depth {
    /// Exactly `layers` layers.
    Fixed {
        /// Number of layers.
        layers: usize,
    },
    /// Stop after layer `l` once `ΔR(Z^l) - ΔR(Z^{l-window}) < min_gain`
    /// (true labels), or after `max_layers` layers.
    Adaptive {
        /// Upper bound on the number of layers.
        max_layers: usize,
        /// Number of layers the gain is measured over.
        window: usize,
        /// Smallest gain in `ΔR` over `window` layers that keeps building.
        min_gain: f64,
    },
}

impl Depth {
    /// The largest number of layers the rule can build.
    pub fn max_layers(&self) -> usize {
        match *self {
            Depth::Fixed { layers } => layers,
            Depth::Adaptive { max_layers, .. } => max_layers,
        }
    }

    /// Whether building stops after the layer whose output has rates
    /// `rates_true.last()` (`rates_true` holds the input and every output so far).
    fn stops(&self, rates_true: &[Rates]) -> bool {
        match *self {
            Depth::Fixed { .. } => false,
            Depth::Adaptive { window, min_gain, .. } => {
                let n = rates_true.len();
                n > window && rates_true[n - 1].delta_r - rates_true[n - 1 - window].delta_r < min_gain
            }
        }
    }
}

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

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, why: &str| {
            Err(Error::Config(format!("ReduNet: `{field}` = {value} {why}")))
        };
        if self.num_classes == 0 {
            return bad("num_classes", "0".into(), "must be at least 1");
        }
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return bad("eta", self.eta.to_string(), "must be positive and finite");
        }
        if !(self.eps_sq.is_finite() && self.eps_sq > 0.0) {
            return bad("eps_sq", self.eps_sq.to_string(), "must be positive and finite");
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad("lambda", self.lambda.to_string(), "must be non-negative and finite");
        }
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

/// Layers whose features a [`Trace`] keeps (index 0 = the normalised input,
/// `l` = the output of layer `l`, before the final normalisation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LayerSet {
    /// None.
    #[default]
    None,
    /// Every layer (memory grows with depth times samples).
    All,
    /// The listed indices (those beyond the built depth are ignored).
    Only(Vec<usize>),
}

impl LayerSet {
    /// Whether index `l` is in the set.
    pub fn contains(&self, l: usize) -> bool {
        match self {
            LayerSet::None => false,
            LayerSet::All => true,
            LayerSet::Only(v) => v.contains(&l),
        }
    }
}

/// What a build or a transform records besides its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Per-layer rates (build only).
    pub rates: bool,
    /// Per-layer predicted labels `yhat`.
    pub yhat: bool,
    /// Feature snapshots.
    pub features: LayerSet,
}

impl Default for Record {
    /// Rates and `yhat`, no feature snapshots.
    fn default() -> Self {
        Record { rates: true, yhat: true, features: LayerSet::None }
    }
}

impl Record {
    /// Nothing but the output.
    pub fn output_only() -> Self {
        Record { rates: false, yhat: false, features: LayerSet::None }
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
    host: Vec<B::Elem>,
    gamma: Vec<f64>,
    dim: usize,
    classes: usize,
}

impl<B: Kernels> Layer<B> {
    fn from_host(backend: &B, host: Vec<B::Elem>, gamma: &[f64], dim: usize, classes: usize) -> Self {
        let operators = Tensor::from_slice(backend, &host, &[(classes + 1) * dim, dim]);
        Layer { operators, host, gamma: gamma.to_vec(), dim, classes }
    }

    fn from_tensor(operators: Tensor<B>, gamma: &[f64], dim: usize, classes: usize) -> Self {
        let host = operators.to_vec();
        Layer { operators, host, gamma: gamma.to_vec(), dim, classes }
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

/// Per-class sample counts, checking every label and that no class is empty.
fn class_counts(labels: &[usize], m: usize, k: usize) -> Result<Vec<usize>> {
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
    if let Some(j) = counts.iter().position(|&c| c == 0) {
        return Err(Error::Config(format!(
            "ReduNet::build: class {j} has no training samples (num_classes = {k}); \
             its compression operator would be undefined"
        )));
    }
    Ok(counts)
}

/// Constants of one build: `alpha`, `alpha_j`, `gamma_j`.
#[derive(Clone, Debug)]
struct Scales {
    alpha: f64,
    alpha_class: Vec<f64>,
    gamma: Vec<f64>,
}

impl Scales {
    fn new(counts: &[usize], dim: usize, eps_sq: f64) -> Self {
        let m: usize = counts.iter().sum();
        let d = dim as f64;
        Scales {
            alpha: d / (m as f64 * eps_sq),
            alpha_class: counts.iter().map(|&c| d / (c as f64 * eps_sq)).collect(),
            gamma: counts.iter().map(|&c| c as f64 / m as f64).collect(),
        }
    }
}

/// `R`, `R_c` from `logdet(I + alpha Z^T Z)` and `(w_j, logdet_j)` per non-empty class.
fn rates_from_logdets(logdet_total: f64, classes: impl IntoIterator<Item = (f64, f64)>) -> Rates {
    let r = 0.5 * logdet_total;
    let rc: f64 = classes.into_iter().map(|(w, ld)| w * 0.5 * ld).sum();
    Rates { r, rc, delta_r: r - rc }
}

/// Sample counts per predicted class.
fn counts_of(labels: &[u32], k: usize) -> Vec<usize> {
    let mut c = vec![0usize; k];
    for &l in labels {
        c[l as usize] += 1;
    }
    c
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
        config.validate()?;
        let (m, d) = check_features(z, "ReduNet::build", None)?;
        let counts = class_counts(labels, m, config.num_classes)?;
        let scales = Scales::new(&counts, d, config.eps_sq);
        let (layers, trace) = match config.engine.resolve(d) {
            Engine::Tensor => reference::build(z, labels, &config, record, &scales)?,
            _ => fused::build(z, labels, &config, record, &scales)?,
        };
        let net = ReduNet { backend: z.backend().clone(), config, dim: d, gamma: scales.gamma, layers };
        Ok((net, trace))
    }

    /// Applies the network to new features (`n x d`): soft memberships only, no labels.
    pub fn transform(&self, z: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(self.transform_with(z, &Record::output_only())?.output)
    }

    /// Applies the network, recording `yhat` and features as `record` asks
    /// (`record.rates` is ignored: there are no labels).
    pub fn transform_with(&self, z: &Tensor<B>, record: &Record) -> Result<Trace<B>> {
        check_features(z, "ReduNet::transform", Some(self.dim))?;
        match self.config.engine.resolve(self.dim) {
            Engine::Tensor => reference::transform(self, z, record),
            _ => fused::transform(self, z, record),
        }
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

    /// The class weights in the backend's element type.
    fn gamma_elem(&self) -> Vec<B::Elem> {
        self.gamma.iter().map(|&g| B::Elem::of(g)).collect()
    }
}
