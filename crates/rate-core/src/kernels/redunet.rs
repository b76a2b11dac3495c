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
use crate::collective::{all_reduce_counts, all_reduce_tensors, Collective, Local};
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
    /// Told after each layer (a progress bar); nothing by default.
    pub progress: LayerProgress,
}

/// A hook called after each layer of a build or a transform with
/// `(layers done, layers in all)`; the engines call it from the thread that
/// drives the layers. Two hooks always compare equal: it is not part of what
/// a network computes.
#[derive(Clone, Default)]
pub struct LayerProgress(Option<std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>>);

impl LayerProgress {
    /// A hook calling `f(done, total)`.
    pub fn new(f: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        LayerProgress(Some(std::sync::Arc::new(f)))
    }

    /// Tells the hook, if any, that `done` of `total` layers are finished.
    pub fn report(&self, done: usize, total: usize) {
        if let Some(f) = &self.0 {
            f(done, total);
        }
    }
}

impl std::fmt::Debug for LayerProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "LayerProgress(hook)" } else { "LayerProgress(none)" })
    }
}

impl PartialEq for LayerProgress {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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
    /// `Z_j^T Z_j`, `d x d`, summed over chunks.
    Gram(Tensor<B>),
    /// `Z_j` itself, `m_j x d` with `m_j < d`.
    Rows(Tensor<B>),
}

impl<B: Backend> ClassData<B> {
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

/// Class statistics accumulated chunk by chunk: a running Gram matrix for a
/// class of at least `d` samples, its rows (fewer than `d`, so small)
/// otherwise. Over several processes every class takes the Gram route (a
/// sum over processes), the sizes being the totals of all processes.
struct StatsAcc<'c, B: Backend> {
    d: usize,
    /// Classes (and the whole set) of fewer samples than this keep their rows: `d` alone, 0 sharded.
    rows_below: usize,
    comm: &'c dyn Collective,
    sizes: Vec<usize>,
    grams: Vec<Option<Tensor<B>>>,
    rows: Vec<Vec<Tensor<B>>>,
    /// A 0-row matrix for a class with no samples (`yhat` classes).
    empty: Option<Tensor<B>>,
}

impl<'c, B: Backend> StatsAcc<'c, B> {
    /// For classes of `sizes[j]` samples each (over all processes of `comm`), features of width `d`.
    fn new(sizes: Vec<usize>, d: usize, comm: &'c dyn Collective) -> Self {
        let k = sizes.len();
        let rows_below = if comm.size() == 1 { d } else { 0 };
        StatsAcc { d, rows_below, comm, sizes, grams: vec![None; k], rows: vec![Vec::new(); k], empty: None }
    }

    /// Adds rows `z` (`r x d`) of class `j`.
    fn add(&mut self, j: usize, z: &Tensor<B>) {
        if self.empty.is_none() {
            self.empty = Some(z.index_select(0, &[]));
        }
        if z.dim(0) == 0 {
            return;
        }
        if self.sizes[j] < self.rows_below {
            self.rows[j].push(z.clone());
        } else {
            let g = z.matmul_t(z, true, false);
            self.grams[j] = Some(match self.grams[j].take() {
                Some(acc) => acc.add(&g),
                None => g,
            });
        }
    }

    /// The statistics of the classes and of all samples (`m x d` in all),
    /// the Gram matrices summed over the processes (one collective call).
    fn finish(self, be: &B) -> Result<Stats<B>> {
        let StatsAcc { d, rows_below, comm, sizes, grams, rows, empty } = self;
        let m: usize = sizes.iter().sum();
        let grams = if comm.size() == 1 {
            grams
        } else {
            let local: Vec<Tensor<B>> =
                grams.into_iter().map(|g| g.unwrap_or_else(|| Tensor::zeros(be, &[d, d]))).collect();
            all_reduce_tensors(&local, comm)?.into_iter().map(Some).collect()
        };
        let cat = |parts: &[Tensor<B>]| match parts.len() {
            0 => empty.clone().unwrap_or_else(|| Tensor::zeros(be, &[0, d])),
            1 => parts[0].clone(),
            _ => Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0),
        };
        let classes: Vec<ClassData<B>> = sizes
            .iter()
            .zip(grams.into_iter().zip(&rows))
            .map(|(&mj, (g, r))| {
                if mj < rows_below {
                    ClassData::Rows(cat(r))
                } else {
                    ClassData::Gram(g.unwrap_or_else(|| Tensor::zeros(be, &[d, d])))
                }
            })
            .collect();
        let total = if m < rows_below {
            let all: Vec<Tensor<B>> = rows.into_iter().flatten().collect();
            ClassData::Rows(cat(&all))
        } else {
            let mut g = Tensor::zeros(be, &[d, d]);
            for c in &classes {
                g = g.add(&c.gram());
            }
            ClassData::Gram(g)
        };
        Ok(Stats { total, classes })
    }
}

/// The data of every class and of all samples together, for one feature matrix.
struct Stats<B: Backend> {
    total: ClassData<B>,
    classes: Vec<ClassData<B>>,
}

impl<B: Backend> Stats<B> {
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

/// Elements of the largest response block `rows x (k+1) d` the reference
/// engine makes (32 MiB in f32): the chunk of rows is `batch_size` or fewer,
/// so that the working set stays bounded whatever `d` and `k`.
pub const WORK_ELEMENTS: usize = 1 << 23;

/// Rows per chunk: `spec.batch_size`, capped so that a chunk's responses
/// (`rows x (k+1) d`) hold at most [`WORK_ELEMENTS`] numbers, and at least 64.
pub fn chunk_rows(spec: &RedunetSpec, d: usize) -> usize {
    let per_row = (spec.classes + 1) * d.max(1);
    spec.batch_size.min((WORK_ELEMENTS / per_row).max(64)).max(1)
}

/// The features of a run held as chunks of rows, so that no step copies a
/// matrix the size of `Z`: a layer replaces the chunks one at a time.
///
/// In a build every chunk lies inside one class (classes in label order,
/// each class's samples in input order), so that a class's Gram matrix is a
/// sum over its own chunks; in a transform the chunks follow the input order.
struct Chunks<B: Backend> {
    /// The rows, `r_c x d` each.
    data: Vec<Tensor<B>>,
    /// The input index of every row, chunk after chunk.
    positions: Vec<usize>,
    /// The class of each chunk (0 for all in a transform).
    class: Vec<usize>,
    /// Width `d` of the rows.
    dim: usize,
}

impl<B: Backend> Chunks<B> {
    /// The rows of `z` in `groups` (each cut into chunks of at most `rows`),
    /// normalised onto the sphere.
    fn gather(z: &Tensor<B>, groups: &[Vec<usize>], rows: usize) -> Self {
        let (mut data, mut positions, mut class) = (Vec::new(), Vec::new(), Vec::new());
        for (j, members) in groups.iter().enumerate() {
            for part in members.chunks(rows) {
                let contiguous = part.windows(2).all(|w| w[1] == w[0] + 1);
                let zb = if contiguous { z.narrow(0, part[0], part.len()) } else { z.index_select(0, part) };
                data.push(normalise_rows(&zb));
                positions.extend_from_slice(part);
                class.push(j);
            }
        }
        Chunks { data, positions, class, dim: z.dim(1) }
    }

    /// Whether the rows are in input order.
    fn in_input_order(&self) -> bool {
        self.positions.iter().enumerate().all(|(i, &p)| i == p)
    }

    /// The rows as one `m x d` matrix in input order (`f` applied per chunk first).
    fn assemble(&self, f: impl Fn(&Tensor<B>) -> Tensor<B>) -> Tensor<B> {
        let parts: Vec<Tensor<B>> = self.data.iter().map(f).collect();
        let all = if parts.len() == 1 {
            parts[0].clone()
        } else {
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
        };
        if self.in_input_order() {
            all
        } else {
            let mut at = vec![0; self.positions.len()];
            for (row, &p) in self.positions.iter().enumerate() {
                at[p] = row;
            }
            all.index_select(0, &at)
        }
    }

    /// `yhat` in input order from the per-chunk memberships of one layer (chunk order).
    fn to_input_order(&self, yhat: &[usize]) -> Vec<usize> {
        let mut out = vec![0; yhat.len()];
        for (&y, &p) in yhat.iter().zip(&self.positions) {
            out[p] = y;
        }
        out
    }

    /// One layer on every chunk, in place: the memberships per chunk when
    /// `want_yhat`; each output chunk is handed to `each` (its class and rows)
    /// while it is fresh.
    fn layer(
        &mut self,
        w: &Tensor<B>,
        gamma: &Tensor<B>,
        spec: &RedunetSpec,
        want_yhat: bool,
        mut each: impl FnMut(usize, &Tensor<B>),
    ) -> Vec<Tensor<B>> {
        let mut picks = Vec::new();
        for (c, chunk) in self.data.iter_mut().enumerate() {
            let (out, yhat) = apply(chunk, w, gamma, spec, want_yhat);
            each(self.class[c], &out);
            *chunk = out;
            picks.extend(yhat);
        }
        picks
    }
}

/// One layer map on a chunk of rows (all at once: the caller bounds the
/// chunk): the output and, when asked for, the argmax memberships as a
/// tensor of indices left on the device.
fn apply<B: Backend>(
    z: &Tensor<B>,
    w: &Tensor<B>,
    gamma: &Tensor<B>,
    spec: &RedunetSpec,
    want_yhat: bool,
) -> (Tensor<B>, Option<Tensor<B>>) {
    let (b, d, k) = (z.dim(0), z.dim(1), gamma.dim(1));
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
}

/// The reference body of [`super::Kernels::redunet_build`]: builds the layers from
/// training features `z` (`m x d`) and their labels, recording what `record`
/// asks for (the rates always when the depth rule needs them).
///
/// Memory: `z` itself, one copy of the features (as [`chunk_rows`]-row
/// chunks, replaced one at a time by each layer), the operators, and the
/// working set of one chunk; nothing else grows with the sample count but
/// what `record` asks for.
pub fn build_reference<B: Backend>(
    z: &Tensor<B>,
    labels: &[usize],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Tensor<B>>> {
    build_sharded(z, labels, spec, record, &Local)
}

/// [`build_reference`] on one shard of the samples: each process of `comm`
/// passes its own rows `z` and labels; the class Gram matrices and counts
/// are summed over the processes (one all-reduce of `k d^2` values a layer,
/// [`Collective::all_reduce_sum`]), so every process builds the same
/// operators and records the same rates, those of the union of the shards.
/// The output, `yhat` and features are this process's rows. A class may be
/// missing from a shard; every process must pass the same `spec` and width
/// `d`, and no class may be empty in the union (checked by the caller).
/// With one process every class of fewer than `d` samples takes the
/// `m_j x m_j` route; sharded every class takes the Gram route (the same
/// operators up to rounding).
pub fn build_sharded<B: Backend>(
    z: &Tensor<B>,
    labels: &[usize],
    spec: &RedunetSpec,
    record: &Record,
    comm: &dyn Collective,
) -> Result<RedunetRun<Tensor<B>>> {
    let be = z.backend();
    let (d, k) = (z.dim(1), spec.classes);
    let members = members_of(labels.iter().copied(), k);
    let counts = all_reduce_counts(&class_counts(labels.iter().copied(), k), comm)?;
    let scales = ClassScales::new(&counts, d, spec.eps_sq);
    let gamma_t = Tensor::from_f64(be, &scales.gamma, &[1, k]);
    let want_rates = record.rates || spec.depth.needs_rates();
    let want_yhat = record.yhat || want_rates;
    let max_layers = spec.depth.max_layers();

    let mut zl = Chunks::gather(z, &members, chunk_rows(spec, d));
    let mut acc = StatsAcc::new(counts.clone(), d, comm);
    for (c, chunk) in zl.data.iter().enumerate() {
        acc.add(zl.class[c], chunk);
    }
    let mut stats = acc.finish(be)?;
    let mut run = RedunetRun {
        output: z.clone(),
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
        run.features.push((0, zl.assemble(|t| t.clone())));
    }
    for l in 0..max_layers {
        let w = stats.operators(&scales)?;
        let mut next = StatsAcc::new(counts.clone(), d, comm);
        let layer_picks = zl.layer(&w, &gamma_t, spec, want_yhat, |j, out| next.add(j, out));
        run.operators.push(w);
        let next = next.finish(be)?;
        if want_rates {
            // The rates are host scalars anyway; the code's rates need yhat's members here.
            let yhat = zl.to_input_order(&Tensor::indices_to_host(&layer_picks));
            if record.yhat {
                run.yhat.extend(yhat.iter().map(|&y| y as u32));
            }
            let rt = next.rates(&scales, &scales.gamma)?;
            run.rates_true.push(rt);
            let wrong = yhat.iter().zip(labels).filter(|(a, b)| a != b).count();
            run.rates_code.push(if all_reduce_counts(&[wrong], comm)?[0] == 0 {
                rt
            } else {
                code_rates(&zl, &yhat, &scales, spec.eps_sq, be, comm)?
            });
        } else {
            picks.push(layer_picks);
        }
        if record.features.contains(l + 1) {
            run.features.push((l + 1, zl.assemble(|t| t.clone())));
        }
        stats = next;
        spec.progress.report(l + 1, max_layers);
        if want_rates && spec.depth.stops(&run.rates_true) {
            break;
        }
    }
    if !record.rates {
        run.rates_true.clear();
        run.rates_code.clear();
    }
    if record.yhat && !want_rates {
        let all = Tensor::indices_to_host(&picks.concat());
        for layer in all.chunks(labels.len().max(1)) {
            run.yhat.extend(zl.to_input_order(layer).into_iter().map(|y| y as u32));
        }
    }
    run.output = zl.assemble(normalise_rows);
    Ok(run)
}

/// The rates the reference code logs when `yhat` (input order) differs from
/// the labels: Gram matrices by `yhat` class, `alpha_j` from the `yhat` class
/// sizes (empty classes skipped), the training `gamma_j`.
fn code_rates<B: Backend>(
    zl: &Chunks<B>,
    yhat: &[usize],
    scales: &ClassScales,
    eps_sq: f64,
    be: &B,
    comm: &dyn Collective,
) -> Result<Rates> {
    let (k, d) = (scales.gamma.len(), zl.dim);
    let yhat_counts = all_reduce_counts(&class_counts(yhat.iter().copied(), k), comm)?;
    let yhat_scales = ClassScales::new(&yhat_counts, d, eps_sq);
    let code = ClassScales { alpha: scales.alpha, ..yhat_scales };
    let mut acc = StatsAcc::new(yhat_counts, d, comm);
    let mut at = 0;
    for chunk in &zl.data {
        let r = chunk.dim(0);
        let mut by_class = vec![Vec::new(); k];
        for (row, &p) in zl.positions[at..at + r].iter().enumerate() {
            by_class[yhat[p]].push(row);
        }
        for (j, rows) in by_class.iter().enumerate() {
            if rows.len() == r {
                acc.add(j, chunk);
            } else if !rows.is_empty() {
                acc.add(j, &chunk.index_select(0, rows));
            }
        }
        at += r;
    }
    acc.finish(be)?.rates(&code, &scales.gamma)
}

/// The reference body of [`super::Kernels::redunet_transform`]: applies the layers
/// with `operators` (`(k+1) d x d` each) and class weights `gamma` to new
/// features `z`, recording `yhat` and features as `record` asks
/// (`record.rates` is ignored: there are no labels). Memory as
/// [`build_reference`]: `z`, one chunked copy of the features and one
/// chunk's working set.
pub fn transform_reference<B: Backend>(
    z: &Tensor<B>,
    operators: &[Tensor<B>],
    gamma: &[f64],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Tensor<B>>> {
    let gamma_t = Tensor::from_f64(z.backend(), gamma, &[1, gamma.len()]);
    let all: Vec<usize> = (0..z.dim(0)).collect();
    let mut zl = Chunks::gather(z, &[all], chunk_rows(spec, z.dim(1)));
    let mut picks = Vec::new();
    let mut features = Vec::new();
    if record.features.contains(0) {
        features.push((0, zl.assemble(|t| t.clone())));
    }
    for (l, w) in operators.iter().enumerate() {
        picks.extend(zl.layer(w, &gamma_t, spec, record.yhat, |_, _| {}));
        if record.features.contains(l + 1) {
            features.push((l + 1, zl.assemble(|t| t.clone())));
        }
        spec.progress.report(l + 1, operators.len());
    }
    Ok(RedunetRun {
        output: zl.assemble(normalise_rows),
        operators: Vec::new(),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features,
        yhat: Tensor::indices_to_host(&picks).into_iter().map(|y| y as u32).collect(),
    })
}
