//! ReduNet's layers built forward and applied (4.1.11-4.1.13, Algorithm 4.1): the spec, what a run records, and the reference engine written only with batched tensor ops, the reference bodies of `Kernels::redunet_build` and `Kernels::redunet_transform`.
//!
//! Layout: features are rows (`Z` is `m x d`). The input rows are first put
//! on the unit sphere (norm clamped at [`NORM_FLOOR`]). Layer `l` is built
//! from its own input `Z^l` and the true labels: `E^l` and `C^l_j` from the
//! Gram matrices of `Z^l` and of its classes ([`crate::operators`]). The
//! layer map, for every sample `z` (labels never used):
//!
//! ```text
//! pi_j(z) = softmax_j(-lambda max(||C_j z||, 1e-8))            (4.1.11)
//! z      <- normalise(z + eta (E z - sum_j gamma_j pi_j(z) C_j z))   (4.1.12-4.1.13)
//! ```
//!
//! After the last layer every row is normalised once more. `yhat` is the
//! argmax of `pi` (first index on ties), recorded per layer.
//!
//! Rates recorded per layer: `rates_true[l]`, `R`, `R_c`, `ΔR` (4.1.1) of
//! `Z^l` (index 0 = normalised input) with the true labels; `rates_code[l]`,
//! what the reference code logs after layer `l`: the rates of the layer's
//! output with labels = that layer's `yhat`, `alpha_j` from the `yhat` class
//! sizes (empty classes skipped) and the training `gamma_j`.
//!
//! The reference engine sends each batch of samples through one matmul with
//! the stacked operators `[E; C_1; ...; C_k]`, then norms, a softmax over
//! classes and a weighted sum of the stacked responses; Gram matrices are
//! summed over batches. Classes with fewer samples than `d` take the
//! `m_j x m_j` route (Woodbury for the operator, Sylvester for the
//! log-determinant, [`crate::rate`]). `backend-cpu` overrides both kernels
//! with a fused host engine for small `d`.

use crate::backend::Backend;
use crate::operators::{rates_from_logdets, regularised_inverses, regularised_logdets, ClassScales};
use crate::rate::{logdet_i_plus_gram, scaled_regularised_inverse};
use crate::{Rates, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Floor of every norm (membership norms and normalisation), as in the reference code.
pub const NORM_FLOOR: f64 = 1e-8;

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
    pub fn stops(&self, rates_true: &[Rates]) -> bool {
        match *self {
            Depth::Fixed { .. } => false,
            Depth::Adaptive { window, min_gain, .. } => {
                let n = rates_true.len();
                n > window && rates_true[n - 1].delta_r - rates_true[n - 1 - window].delta_r < min_gain
            }
        }
    }

    /// Whether the rule needs the rates of every layer (to decide when to stop).
    pub fn needs_rates(&self) -> bool {
        matches!(self, Depth::Adaptive { .. })
    }
}

/// Layers whose features a run keeps (index 0 = the normalised input,
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

/// The constants of a ReduNet: class count, step, quantisation, membership
/// sharpness, batch of the reference engine and the depth rule.
#[derive(Clone, Debug, PartialEq)]
pub struct RedunetSpec {
    /// Number of classes `k`; labels are `0..k`, none empty.
    pub classes: usize,
    /// Step size `eta` (4.1.12).
    pub eta: f64,
    /// Quantisation `epsilon^2`.
    pub eps_sq: f64,
    /// Sharpness `lambda` of the soft membership (4.1.11).
    pub lambda: f64,
    /// Samples per batch of the reference engine.
    pub batch_size: usize,
    /// How many layers to build.
    pub depth: Depth,
}

/// What a build or a transform produced; `T` is a tensor, or a backend
/// buffer inside the kernels.
#[derive(Clone, Debug)]
pub struct RedunetRun<T> {
    /// Output features after the final normalisation, `m x d`, rows in input order.
    pub output: T,
    /// The operators `[E; C_1; ...; C_k]` (`(k+1) d x d`) of every layer built (build only).
    pub operators: Vec<T>,
    /// Rates of `Z^0 .. Z^L` with the true labels (build with rates; else empty).
    pub rates_true: Vec<Rates>,
    /// Rates the reference code logs after each layer (build with rates; else empty).
    pub rates_code: Vec<Rates>,
    /// Recorded feature snapshots `(index, m x d)`, in increasing index order.
    pub features: Vec<(usize, T)>,
    /// `yhat` of every layer (`layers x m`, input order), when recorded.
    pub yhat: Vec<u32>,
}

impl<T> RedunetRun<T> {
    /// The same run with `f` applied to every tensor or buffer.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> RedunetRun<U> {
        RedunetRun {
            output: f(self.output),
            operators: self.operators.into_iter().map(&mut f).collect(),
            rates_true: self.rates_true,
            rates_code: self.rates_code,
            features: self.features.into_iter().map(|(l, t)| (l, f(t))).collect(),
            yhat: self.yhat,
        }
    }
}

/// Sample counts per class of `labels` (`k` classes).
pub fn class_counts(labels: impl IntoIterator<Item = usize>, k: usize) -> Vec<usize> {
    let mut c = vec![0usize; k];
    for l in labels {
        c[l] += 1;
    }
    c
}

/// Rows divided by their norms (clamped at [`NORM_FLOOR`]).
fn normalise_rows<B: Backend>(z: &Tensor<B>) -> Tensor<B> {
    z.div(&z.norm_axis(1).clamp_min(NORM_FLOOR))
}

/// What one class (or all samples) contributes: its Gram matrix, or its rows when there are fewer than `d`.
enum ClassData<B: Backend> {
    /// `Z_j^T Z_j`, `d x d`, summed over batches.
    Gram(Tensor<B>),
    /// `Z_j` itself, `m_j x d` with `m_j < d`.
    Rows(Tensor<B>),
}

impl<B: Backend> ClassData<B> {
    fn new(z: &Tensor<B>, members: &[usize], batch: usize) -> Self {
        let d = z.dim(1);
        if members.len() < d {
            return ClassData::Rows(z.index_select(0, members));
        }
        let mut gram: Option<Tensor<B>> = None;
        for chunk in members.chunks(batch) {
            let zb = if chunk.len() == z.dim(0) { z.clone() } else { z.index_select(0, chunk) };
            let g = zb.matmul_t(&zb, true, false);
            gram = Some(match gram {
                Some(acc) => acc.add(&g),
                None => g,
            });
        }
        ClassData::Gram(gram.unwrap_or_else(|| Tensor::zeros(z.backend(), &[d, d])))
    }

    fn gram(&self) -> Tensor<B> {
        match self {
            ClassData::Gram(g) => g.clone(),
            ClassData::Rows(r) => r.matmul_t(r, true, false),
        }
    }

    /// `logdet(I + a Z^T Z)`.
    fn logdet(&self, a: f64) -> Result<f64> {
        match self {
            ClassData::Gram(g) => Ok(regularised_logdets(&g.reshape(&[1, g.dim(0), g.dim(0)]), &[a])?[0]),
            ClassData::Rows(r) => logdet_i_plus_gram(r, a),
        }
    }

    /// `a (I + a Z^T Z)^-1`.
    fn operator(&self, a: f64) -> Result<Tensor<B>> {
        match self {
            ClassData::Gram(g) => {
                let d = g.dim(0);
                Ok(regularised_inverses(&g.reshape(&[1, d, d]), &[a])?.0.reshape(&[d, d]))
            }
            ClassData::Rows(r) => scaled_regularised_inverse(r, a),
        }
    }
}

/// The data of every class and of all samples together, for one feature matrix.
struct Stats<B: Backend> {
    total: ClassData<B>,
    classes: Vec<ClassData<B>>,
}

impl<B: Backend> Stats<B> {
    fn new(z: &Tensor<B>, members: &[Vec<usize>], batch: usize) -> Self {
        let classes: Vec<ClassData<B>> = members.iter().map(|mj| ClassData::new(z, mj, batch)).collect();
        let (m, d) = (z.dim(0), z.dim(1));
        let total = if m < d {
            ClassData::Rows(z.clone())
        } else {
            let mut g = Tensor::zeros(z.backend(), &[d, d]);
            for c in &classes {
                g = g.add(&c.gram());
            }
            ClassData::Gram(g)
        };
        Stats { total, classes }
    }

    /// `[E; C_1; ...; C_k]`, `(k+1) d x d`.
    fn operators(&self, scales: &ClassScales) -> Result<Tensor<B>> {
        let mut parts = vec![self.total.operator(scales.alpha)?];
        for (c, &a) in self.classes.iter().zip(&scales.alpha_class) {
            parts.push(c.operator(a)?);
        }
        let refs: Vec<&Tensor<B>> = parts.iter().collect();
        Ok(Tensor::cat(&refs, 0))
    }

    /// Rates with `alpha_j` from `scales` and the weights `gamma` (classes
    /// with no samples skipped).
    fn rates(&self, scales: &ClassScales, gamma: &[f64]) -> Result<Rates> {
        let ld = self.total.logdet(scales.alpha)?;
        let mut parts = Vec::new();
        for (j, c) in self.classes.iter().enumerate() {
            if scales.alpha_class[j] > 0.0 {
                parts.push((gamma[j], c.logdet(scales.alpha_class[j])?));
            }
        }
        Ok(rates_from_logdets(ld, parts))
    }
}

fn members_of(labels: impl Iterator<Item = usize>, k: usize) -> Vec<Vec<usize>> {
    let mut v = vec![Vec::new(); k];
    for (i, l) in labels.enumerate() {
        v[l].push(i);
    }
    v
}

/// One layer map on all rows, in batches of `spec.batch_size`: the output
/// and, when asked for, the argmax memberships as a tensor of indices left on
/// the device (`m`).
fn apply<B: Backend>(
    z: &Tensor<B>,
    w: &Tensor<B>,
    gamma: &Tensor<B>,
    spec: &RedunetSpec,
    want_yhat: bool,
) -> (Tensor<B>, Option<Tensor<B>>) {
    let (m, d, k) = (z.dim(0), z.dim(1), gamma.dim(1));
    let rows = |z: &Tensor<B>| {
        let b = z.dim(0);
        // [E z; C_1 z; ...; C_k z] for every row: b x (k+1) x d
        let resp = z.matmul_t(w, false, true).reshape(&[b, k + 1, d]);
        let expd = resp.narrow(1, 0, 1).reshape(&[b, d]);
        let comp = resp.narrow(1, 1, k);
        // pi = softmax_j(-lambda max(||C_j z||, floor))  (4.1.11)
        let pi = comp.norm_axis(2).reshape(&[b, k]).clamp_min(NORM_FLOOR).scale(-spec.lambda).softmax(1);
        let yhat = want_yhat.then(|| pi.argmax_indices(1));
        // sigma = sum_j gamma_j pi_j C_j z
        let coef = pi.mul(gamma).reshape(&[b, k, 1]);
        let clus = comp.mul(&coef).sum_axis(1, false);
        let out = z.add(&expd.sub(&clus).scale(spec.eta));
        (normalise_rows(&out), yhat)
    };
    let batch = spec.batch_size;
    if m <= batch {
        return rows(z);
    }
    let (mut outs, mut picks) = (Vec::new(), Vec::new());
    for start in (0..m).step_by(batch) {
        let (o, y) = rows(&z.narrow(0, start, batch.min(m - start)));
        outs.push(o);
        picks.extend(y);
    }
    let yhat = (!picks.is_empty()).then(|| Tensor::cat(&picks.iter().collect::<Vec<_>>(), 0));
    (Tensor::cat(&outs.iter().collect::<Vec<_>>(), 0), yhat)
}

/// Downloads the per-layer index tensors of [`apply`] in one transfer, as `u32`.
fn download_picks<B: Backend>(picks: &[Tensor<B>]) -> Vec<u32> {
    Tensor::indices_to_host(picks).into_iter().map(|y| y as u32).collect()
}

/// The reference body of [`super::Kernels::redunet_build`]: builds the layers from
/// training features `z` (`m x d`) and their labels, recording what `record`
/// asks for (the rates always when the depth rule needs them).
pub fn build_reference<B: Backend>(
    z: &Tensor<B>,
    labels: &[usize],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Tensor<B>>> {
    let be = z.backend();
    let (d, k, batch) = (z.dim(1), spec.classes, spec.batch_size);
    let members = members_of(labels.iter().copied(), k);
    let scales = ClassScales::new(&class_counts(labels.iter().copied(), k), d, spec.eps_sq);
    let gamma_t = Tensor::from_f64(be, &scales.gamma, &[1, k]);
    let want_rates = record.rates || spec.depth.needs_rates();
    let want_yhat = record.yhat || want_rates;

    let mut zl = normalise_rows(z);
    let mut stats = Stats::new(&zl, &members, batch);
    let mut run = RedunetRun {
        output: zl.clone(),
        operators: Vec::new(),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features: Vec::new(),
        yhat: Vec::new(),
    };
    // Without rates nothing needs the memberships inside the loop: they stay on
    // the device and come back in one download after it.
    let mut picks = Vec::new();
    if want_rates {
        run.rates_true.push(stats.rates(&scales, &scales.gamma)?);
    }
    if record.features.contains(0) {
        run.features.push((0, zl.clone()));
    }
    for l in 0..spec.depth.max_layers() {
        let w = stats.operators(&scales)?;
        let (out, yhat) = apply(&zl, &w, &gamma_t, spec, want_yhat);
        run.operators.push(w);
        let next = Stats::new(&out, &members, batch);
        if want_rates {
            // The rates are host scalars anyway; the code's rates need yhat's members here.
            let yhat = Tensor::indices_to_host(yhat.as_slice());
            if record.yhat {
                run.yhat.extend(yhat.iter().map(|&y| y as u32));
            }
            let rt = next.rates(&scales, &scales.gamma)?;
            run.rates_true.push(rt);
            run.rates_code.push(if yhat.as_slice() == labels {
                rt
            } else {
                let yhat_members = members_of(yhat.iter().copied(), k);
                let yhat_scales = ClassScales::new(&class_counts(yhat.iter().copied(), k), d, spec.eps_sq);
                let code = ClassScales { alpha: scales.alpha, ..yhat_scales };
                Stats::new(&out, &yhat_members, batch).rates(&code, &scales.gamma)?
            });
        } else if let Some(y) = yhat {
            picks.push(y);
        }
        if record.features.contains(l + 1) {
            run.features.push((l + 1, out.clone()));
        }
        zl = out;
        stats = next;
        if want_rates && spec.depth.stops(&run.rates_true) {
            break;
        }
    }
    if !record.rates {
        run.rates_true.clear();
        run.rates_code.clear();
    }
    run.yhat.extend(download_picks(&picks));
    run.output = normalise_rows(&zl);
    Ok(run)
}

/// The reference body of [`super::Kernels::redunet_transform`]: applies the layers
/// with `operators` (`(k+1) d x d` each) and class weights `gamma` to new
/// features `z`, recording `yhat` and features as `record` asks
/// (`record.rates` is ignored: there are no labels).
pub fn transform_reference<B: Backend>(
    z: &Tensor<B>,
    operators: &[Tensor<B>],
    gamma: &[f64],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Tensor<B>>> {
    let gamma_t = Tensor::from_f64(z.backend(), gamma, &[1, gamma.len()]);
    let mut zl = normalise_rows(z);
    let mut picks = Vec::new();
    let mut features = Vec::new();
    if record.features.contains(0) {
        features.push((0, zl.clone()));
    }
    for (l, w) in operators.iter().enumerate() {
        let (out, yhat) = apply(&zl, w, &gamma_t, spec, record.yhat);
        picks.extend(yhat);
        if record.features.contains(l + 1) {
            features.push((l + 1, out.clone()));
        }
        zl = out;
    }
    Ok(RedunetRun {
        output: normalise_rows(&zl),
        operators: Vec::new(),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features,
        yhat: download_picks(&picks),
    })
}
