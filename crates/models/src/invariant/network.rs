//! The shift-invariant ReduNet in the frequency domain (4.1.20-4.1.22 with the layer 4.1.13): per-frequency `E(t)`, `C^j(t)` and the update, FFT once on entry and once on exit.
//!
//! Features are kept as half spectra `v(f) in C^C` at the `F` stored
//! frequencies, packed for real arithmetic as `[F, samples, 2C]` (real parts,
//! then imaginary parts). A layer built from features `V` with true labels is
//!
//! * `S(f) = sum_i v_i(f) v_i(f)^H`, `S_j(f)` over class `j` only (`C x C`, Hermitian);
//! * `E(f) = alpha (I + alpha S(f))^-1`, `C^j(f) = alpha_j (I + alpha_j S_j(f))^-1`,
//!   `alpha = C / (m eps^2)`, `alpha_j = C / (m_j eps^2)` (batched complex Cholesky);
//! * `gamma_j = m_j / m`;
//!
//! and maps every sample `v` (training or test) to
//!
//! * `pi_j = softmax_j(-lambda max(||C^j v||, 1e-8))`, norms over the full spectrum;
//! * `v <- normalise(v + eta (E v - sum_j gamma_j pi_j C^j v))`.
//!
//! The `k + 1` operators of a layer are applied in one real batched product
//! per frequency: `[Re v, Im v] (n x 2C)` times
//! `[[Re A^T, Im A^T], [-Im A^T, Re A^T]]` stacked over the operators
//! (`2C x 2(k+1)C`). Operators are stored Hermitian-packed: `C^2` reals per
//! operator and frequency (upper triangle of the real part, strict lower
//! triangle of the imaginary part), and unpacked one frequency at a time
//! inside the products (never stored unpacked).

use super::domain::Domain;
use crate::{Error, Result};
use rate_core::collective::{agreed, all_reduce_counts, all_reduce_tensors, Collective, Local};
use rate_core::kernels::invariant::pack_operators;
use rate_core::kernels::{invariant_products, invariant_step};
use rate_core::operators::frequency_regularised_inverses;
use rate_core::{ComplexTensor, FftNorm, Kernels, Rates, Tensor};

/// Hyperparameters of the invariant ReduNet, validated by [`InvariantConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct InvariantConfig {
    /// Number of layers `L`.
    pub layers: usize,
    /// Step size `eta`.
    pub eta: f64,
    /// `eps^2` (the reference code's `eps`).
    pub eps_sq: f64,
    /// Softmax sharpness `lambda` of the membership estimate.
    pub lambda: f64,
    /// Most samples pushed through a layer at once; the samples are split into
    /// equal chunks of at most this many. It bounds the working memory: a
    /// chunk's products take `F x chunk x 2(k+1)C` values, and each chunk
    /// unfolds the layer's operators once (`docs/performance.md` has the
    /// measurements behind the default of 25).
    pub chunk: usize,
    /// Keep the frequency-domain features of every layer in the records (for inspection and parity checks).
    pub keep_spectra: bool,
}

impl Default for InvariantConfig {
    /// The chapter's rotation-MNIST settings: 40 layers, `eta = 0.5`, `eps^2 = 0.1`, `lambda = 500`.
    fn default() -> Self {
        InvariantConfig { layers: 40, eta: 0.5, eps_sq: 0.1, lambda: 500.0, chunk: 25, keep_spectra: false }
    }
}

impl InvariantConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: String, why: &str| {
            Err(Error::Config(format!("invariant ReduNet: `{name}` = {value} {why}")))
        };
        if self.layers == 0 {
            return bad("layers", "0".into(), "must be at least 1");
        }
        crate::redunet::check_step("invariant ReduNet", self.eta, self.eps_sq, self.lambda)?;
        if self.chunk == 0 {
            return bad("chunk", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}

/// One layer: the Hermitian-packed operators `E(f), C^1(f), .., C^k(f)`.
#[derive(Clone, Debug)]
pub struct InvariantLayer<B: Kernels> {
    /// `[F, k+1, C, C]`: entry `[f, j, a, b]` is `Re A_j(f)[a][b]` for `a <= b`
    /// and `Im A_j(f)[a][b]` for `a > b`; `A_0 = E`, `A_j = C^j`.
    packed: Tensor<B>,
}

impl<B: Kernels> InvariantLayer<B> {
    /// The packed operators `[F, k+1, C, C]` (see the type's docs).
    pub fn packed(&self) -> &Tensor<B> {
        &self.packed
    }

    /// Bytes the stored operators take.
    pub fn bytes(&self) -> usize {
        self.packed.numel() * std::mem::size_of::<B::Elem>()
    }
}

/// What the construction records per layer.
#[derive(Clone, Debug)]
pub struct ConstructionRecord<B: Kernels> {
    /// Rates of the features entering layer `0..L` and leaving the last
    /// (`L + 1` entries) with the true labels and `w_j = m_j / m`.
    pub rates_true: Vec<Rates>,
    /// Rates the reference code logs after layer `l` (`L` entries): the layer
    /// output with the layer's predicted labels `yhat` and `w_j` their class fractions.
    pub rates_code: Vec<Rates>,
    /// `argmax_j pi_j` of each training sample inside each layer (`L x m`).
    pub yhat: Vec<Vec<usize>>,
    /// With [`InvariantConfig::keep_spectra`]: the half spectra `[F, m, C]`
    /// entering layer `0..L` and leaving the last (`L + 1` entries).
    pub spectra: Vec<ComplexTensor<B>>,
}

/// The result of [`InvariantReduNet::construct`].
#[derive(Clone, Debug)]
pub struct Construction<B: Kernels> {
    /// The network.
    pub network: InvariantReduNet<B>,
    /// Training features after the last layer, in the signal domain, unit norm.
    pub features: Tensor<B>,
    /// Per-layer rates, memberships and (optionally) spectra.
    pub record: ConstructionRecord<B>,
}

/// The result of [`InvariantReduNet::transform`].
#[derive(Clone, Debug)]
pub struct Transformed<B: Kernels> {
    /// Features after the last layer, in the signal domain, unit norm.
    pub features: Tensor<B>,
    /// `argmax_j pi_j` of each sample inside each layer (`L x n`).
    pub yhat: Vec<Vec<usize>>,
    /// From [`InvariantReduNet::transform_traced`]: half spectra `[F, n, C]` entering each layer and leaving the last.
    pub spectra: Vec<ComplexTensor<B>>,
}

/// A constructed shift-invariant ReduNet (1-D shifts or 2-D translations).
#[derive(Clone, Debug)]
pub struct InvariantReduNet<B: Kernels> {
    domain: Domain,
    channels: usize,
    classes: usize,
    config: InvariantConfig,
    gamma: Vec<f64>,
    layers: Vec<InvariantLayer<B>>,
    /// Frequency weights `[F, 1]`.
    weights: Tensor<B>,
    /// `gamma` as a `[1, k]` row.
    gamma_row: Tensor<B>,
}

/// Per-sample Euclidean normalisation of signals `[m, ..]`, clamped below at 1e-8.
pub(crate) fn normalise_signals<B: Kernels>(x: &Tensor<B>) -> Tensor<B> {
    let m = x.dim(0);
    let flat = x.reshape(&[m, x.numel() / m.max(1)]);
    flat.div(&flat.norm_axis(1).clamp_min(1e-8)).reshape(x.shape())
}

/// That every class has a training sample (`sizes`: samples per class, over all processes).
fn no_empty_group(sizes: &[usize]) -> Result<()> {
    if let Some(j) = sizes.iter().position(|&g| g == 0) {
        return Err(Error::Config(format!(
            "invariant ReduNet: class {j} has no training samples (C^{j} = alpha_j (I + alpha_j S_j)^-1 needs m_j > 0)"
        )));
    }
    Ok(())
}

/// The samples of each class, checking one label per sample, each below `classes`.
fn group_labels(labels: &[usize], m: usize, classes: usize) -> Result<Vec<Vec<usize>>> {
    if classes == 0 {
        return Err(Error::Config("invariant ReduNet: `classes` must be at least 1".into()));
    }
    if labels.len() != m {
        return Err(Error::Config(format!("invariant ReduNet: {} labels for {m} samples", labels.len())));
    }
    let mut groups = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        if l >= classes {
            return Err(Error::Config(format!(
                "invariant ReduNet: labels[{i}] = {l} is not below the class count {classes}"
            )));
        }
        groups[l].push(i);
    }
    Ok(groups)
}

/// `(start, len)` of the fewest equal chunks (sizes differing by at most
/// one) of `n` samples with at most `most` in each.
fn chunks(n: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = n.div_ceil(most.max(1)).max(1);
    (0..count).map(move |i| (i * n / count, (i + 1) * n / count - i * n / count))
}

/// Splits packed features `[F, n, 2C]` into the complex half spectrum `[F, n, C]`.
pub(crate) fn unpack_features<B: Kernels>(v: &Tensor<B>) -> ComplexTensor<B> {
    let c = v.dim(2) / 2;
    ComplexTensor::new(v.narrow(2, 0, c), v.narrow(2, c, c))
}

/// Packs a complex half spectrum `[F, n, C]` as `[F, n, 2C]`.
pub(crate) fn pack_features<B: Kernels>(v: &ComplexTensor<B>) -> Tensor<B> {
    Tensor::cat(&[&v.re, &v.im], 2)
}

impl<B: Kernels> InvariantReduNet<B> {
    fn empty(backend: &B, domain: Domain, channels: usize, classes: usize, config: InvariantConfig) -> Self {
        let w = domain.weights();
        InvariantReduNet {
            domain,
            channels,
            classes,
            config,
            gamma: Vec::new(),
            layers: Vec::new(),
            weights: Tensor::from_f64(backend, &w, &[w.len(), 1]),
            gamma_row: Tensor::zeros(backend, &[1, classes]),
        }
    }

    /// Builds the network layer by layer from training signals `x`
    /// (`[m, C, T]` or `[m, C, H, W]`) with their true labels `0..classes`.
    ///
    /// Samples are normalised, transformed once to the half spectrum, pushed
    /// through `config.layers` layers (each built from the features entering
    /// it), and transformed back once. Every class needs a sample.
    pub fn construct(
        x: &Tensor<B>,
        labels: &[usize],
        classes: usize,
        config: &InvariantConfig,
    ) -> Result<Construction<B>> {
        Self::construct_sharded(x, labels, classes, config, &Local)
    }

    /// [`Self::construct`] from one shard of the training signals: every
    /// process of `comm` passes its own samples (uneven shards, a class
    /// missing from a shard: fine). The per-frequency class covariances
    /// `S_j(f)` (`[F, k+1, C, C]` complex, reduced as reals: real parts, then
    /// imaginary parts) and the class counts are summed over the processes,
    /// so every process builds the same layers and records the same rates,
    /// those of the union of the shards; the features and `yhat` are this
    /// shard's. A bad shard (shape, labels, values) stops every process with
    /// one error naming its rank.
    pub fn construct_sharded(
        x: &Tensor<B>,
        labels: &[usize],
        classes: usize,
        config: &InvariantConfig,
        comm: &dyn Collective,
    ) -> Result<Construction<B>> {
        let what = "invariant ReduNet construct";
        // this shard's checks; that no class is empty is checked on the counts of all shards below
        let local =
            config.validate().and_then(|()| Domain::of_signals(what, x.shape())).and_then(|(m, c, d)| {
                let groups = group_labels(labels, m, classes)?;
                x.check_finite("invariant ReduNet construct: input")?;
                Ok((c, d, groups))
            });
        let (c, domain, groups) = agreed(comm, local)?;
        // [channels, length or height, width or 0]: the same length on every process
        let mut signal = [0.0; 3];
        for (v, &n) in signal.iter_mut().zip(&x.shape()[1..]) {
            *v = n as f64;
        }
        comm.same_everywhere(&format!("{what}: signals of [channels, lengths] ="), &signal)?;
        let sizes = all_reduce_counts(&groups.iter().map(Vec::len).collect::<Vec<_>>(), comm)?;
        no_empty_group(&sizes)?;
        let m: usize = sizes.iter().sum();
        let mut net = Self::empty(x.backend(), domain, c, classes, config.clone());
        net.gamma = sizes.iter().map(|&g| g as f64 / m as f64).collect();
        net.gamma_row = Tensor::from_f64(x.backend(), &net.gamma, &[1, classes]);

        let mut v = net.signals_to_spectra(x);
        let mut record = ConstructionRecord {
            rates_true: Vec::with_capacity(config.layers + 1),
            rates_code: Vec::with_capacity(config.layers),
            yhat: Vec::with_capacity(config.layers),
            spectra: Vec::new(),
        };
        // Rc of the layer output with predicted labels, when they differ from the true ones.
        let mut rc_predicted: Vec<Option<f64>> = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            if config.keep_spectra {
                record.spectra.push(unpack_features(&v));
            }
            let (layer, rates) = net.build_layer(&v, &groups, comm)?;
            record.rates_true.push(rates);
            net.layers.push(layer);
            let (next, yhat) = net.apply_chunked(&net.layers[net.layers.len() - 1], &v);
            v = next;
            let wrong = yhat.iter().zip(labels).filter(|(a, b)| a != b).count();
            rc_predicted.push(if all_reduce_counts(&[wrong], comm)?[0] == 0 {
                None
            } else {
                let mut pg = vec![Vec::new(); classes];
                for (i, &l) in yhat.iter().enumerate() {
                    pg[l].push(i);
                }
                Some(net.rates_of(&v, &pg, comm)?.rc)
            });
            record.yhat.push(yhat);
        }
        if config.keep_spectra {
            record.spectra.push(unpack_features(&v));
        }
        record.rates_true.push(net.rates_of(&v, &groups, comm)?);
        for (l, rc) in rc_predicted.into_iter().enumerate() {
            let t = record.rates_true[l + 1];
            let rc = rc.unwrap_or(t.rc);
            record.rates_code.push(Rates { r: t.r, rc, delta_r: t.r - rc });
        }
        let features = net.spectra_to_signals(&v);
        Ok(Construction { network: net, features, record })
    }

    /// Normalised signals to packed half spectra `[F, m, 2C]` (unitary DFT).
    fn signals_to_spectra(&self, x: &Tensor<B>) -> Tensor<B> {
        pack_features(&self.domain.forward(&normalise_signals(x), FftNorm::Ortho))
    }

    /// Packed half spectra back to unit-norm signals `[m, C, dims]`.
    fn spectra_to_signals(&self, v: &Tensor<B>) -> Tensor<B> {
        normalise_signals(&self.domain.inverse(&unpack_features(v), FftNorm::Ortho))
    }

    /// The covariances `S_g(f)` of all samples (`g = 0`) and of each class
    /// group, stacked `[F, 1 + groups, C, C]`. The classes partition the
    /// samples, so `S = sum_j S_j`.
    fn covariances(&self, v: &Tensor<B>, groups: &[&[usize]]) -> ComplexTensor<B> {
        let (c, f, m) = (self.channels, v.dim(0), v.dim(1));
        let k = groups.len();
        // S_j = sum_i v_i v_i^H with Re S_j = Vr^T Vr + Vi^T Vi = U^T U for U = [Vr; Vi] (the
        // group's real parts stacked over its imaginary parts) and Im S_j = X - X^T for
        // X = Vi^T Vr. A packed sample [vr | vi] is two rows of C, so every U comes from one
        // gather of rows; all groups go into one batched product, a smaller group padded
        // with a zero sample (index m), which adds nothing.
        let rows = groups.iter().map(|g| g.len()).max().unwrap_or(0);
        let src = if groups.iter().all(|g| g.len() == rows) {
            v.reshape(&[f, 2 * m, c])
        } else {
            Tensor::cat(&[v, &Tensor::zeros(v.backend(), &[f, 1, 2 * c])], 1).reshape(&[f, 2 * (m + 1), c])
        };
        let padded =
            |g: &[usize]| g.iter().copied().chain(std::iter::repeat_n(m, rows - g.len())).collect::<Vec<_>>();
        let idx: Vec<usize> = groups
            .iter()
            .flat_map(|g| {
                let g = padded(g);
                let re: Vec<usize> = g.iter().map(|&i| 2 * i).collect();
                re.into_iter().chain(g.into_iter().map(|i| 2 * i + 1))
            })
            .collect();
        let u = src.index_select(1, &idx).reshape(&[f * k, 2 * rows, c]);
        let re_k = u.matmul_t(&u, true, false).reshape(&[f, k, c, c]);
        let x = u.narrow(1, rows, rows).matmul_t(&u.narrow(1, 0, rows), true, false);
        let im_k = x.sub(&x.t()).reshape(&[f, k, c, c]);
        // the classes partition the samples: S = sum_j S_j
        let (re_all, im_all) = (re_k.sum_axis(1, true), im_k.sum_axis(1, true));
        let re = Tensor::cat(&[&re_all, &re_k], 1);
        let im = Tensor::cat(&[&im_all, &im_k], 1);
        ComplexTensor::new(re, im)
    }

    fn alpha(&self, samples: usize) -> f64 {
        self.channels as f64 / (samples as f64 * self.config.eps_sq)
    }

    /// `sum_f w_f logdet(I + a_g S_g(f))` for each group, from the
    /// per-frequency log-determinants (`[F, groups]`).
    fn weighted_logdets(&self, logdets: &Tensor<B>) -> Vec<f64> {
        logdets.mul(&self.weights).sum_axis(0, false).to_f64_vec()
    }

    /// Rates from the weighted log-determinants of (all, class 1, .., class k).
    fn rates_from(&self, ld: &[f64], sizes: &[usize], m: usize) -> Rates {
        let scale = 1.0 / (2.0 * self.domain.size() as f64);
        let r = ld[0] * scale;
        let rc = sizes.iter().zip(&ld[1..]).map(|(&mj, l)| mj as f64 / m as f64 * l * scale).sum::<f64>();
        Rates { r, rc, delta_r: r - rc }
    }

    /// The covariances of all samples and of the non-empty class groups
    /// (`[F, 1 + groups, C, C]`), their `alpha`s and sizes, and the sample
    /// count, summed over the processes of `comm` (a group is empty when it
    /// is empty on every process).
    fn statistics(
        &self,
        v: &Tensor<B>,
        groups: &[Vec<usize>],
        comm: &dyn Collective,
    ) -> Result<(ComplexTensor<B>, Vec<f64>, Vec<usize>, usize)> {
        let (cov, sizes, m) = if comm.size() == 1 {
            let nonempty: Vec<&[usize]> =
                groups.iter().filter(|g| !g.is_empty()).map(|g| g.as_slice()).collect();
            let sizes = nonempty.iter().map(|g| g.len()).collect();
            (self.covariances(v, &nonempty), sizes, v.dim(1))
        } else {
            // every class (empty here or not) so that the stacks agree across processes; the classes empty
            // on every process are dropped after the sum
            let all = all_reduce_counts(&groups.iter().map(Vec::len).collect::<Vec<_>>(), comm)?;
            let slices: Vec<&[usize]> = groups.iter().map(|g| g.as_slice()).collect();
            let local = self.covariances(v, &slices);
            let summed = all_reduce_tensors(&[local.re, local.im], comm)?;
            let keep: Vec<usize> =
                std::iter::once(0).chain((0..all.len()).filter(|&j| all[j] > 0).map(|j| j + 1)).collect();
            let cov = ComplexTensor::new(summed[0].index_select(1, &keep), summed[1].index_select(1, &keep));
            let m = all.iter().sum();
            (cov, all.into_iter().filter(|&s| s > 0).collect::<Vec<_>>(), m)
        };
        let mut alphas = vec![self.alpha(m)];
        alphas.extend(sizes.iter().map(|&s| self.alpha(s)));
        Ok((cov, alphas, sizes, m))
    }

    /// Rates of packed features with the given class groups (empty classes contribute nothing).
    fn rates_of(&self, v: &Tensor<B>, groups: &[Vec<usize>], comm: &dyn Collective) -> Result<Rates> {
        let (cov, alphas, sizes, m) = self.statistics(v, groups, comm)?;
        let (_, logdets) = frequency_regularised_inverses(&cov, &alphas)?;
        let ld = self.weighted_logdets(&logdets);
        Ok(self.rates_from(&ld, &sizes, m))
    }

    /// Builds one layer's operators from the features entering it, with the
    /// rates of those features (every class is non-empty here).
    fn build_layer(
        &self,
        v: &Tensor<B>,
        groups: &[Vec<usize>],
        comm: &dyn Collective,
    ) -> Result<(InvariantLayer<B>, Rates)> {
        let (cov, alphas, sizes, m) = self.statistics(v, groups, comm)?;
        // [F, k+1, C, C]: E and C^j, and the rates from the same factorisations
        let (inv, logdets) = frequency_regularised_inverses(&cov, &alphas)?;
        let ld = self.weighted_logdets(&logdets);
        let rates = self.rates_from(&ld, &sizes, m);
        let packed = pack_operators(&inv);
        Ok((InvariantLayer { packed }, rates))
    }

    /// The layer's operators as `[F, k+1, C, C]`.
    fn operands(&self, layer: &InvariantLayer<B>) -> Tensor<B> {
        let f = self.domain.stored_frequencies();
        let (c, g) = (self.channels, self.classes + 1);
        layer.packed.reshape(&[f, g, c, c])
    }

    /// One layer on packed features `[F, n, 2C]`: the new features and `pi`
    /// (`[n, k]`): the products with the layer's operators
    /// ([`rate_core::kernels::invariant::invariant_products`], unfolded per
    /// frequency), then the memberships and the update in one backend kernel
    /// ([`rate_core::invariant_step`]).
    fn apply(&self, layer: &InvariantLayer<B>, v: &Tensor<B>) -> (Tensor<B>, Tensor<B>) {
        let (f, n, c2) = (v.dim(0), v.dim(1), v.dim(2));
        let g = self.classes + 1;
        // [Re | Im] of (E v, C^1 v, .., C^k v) at every frequency, one row per (f, i, j).
        let y = invariant_products(v, &self.operands(layer)).reshape(&[f, n, g, c2]);
        invariant_step(v, &y, &self.weights, &self.gamma_row, self.config.eta, self.config.lambda)
    }

    /// [`Self::apply`] over chunks of samples; returns the features and `yhat`.
    fn apply_chunked(&self, layer: &InvariantLayer<B>, v: &Tensor<B>) -> (Tensor<B>, Vec<usize>) {
        let n = v.dim(1);
        let chunk = self.config.chunk;
        if n <= chunk {
            let (out, pi) = self.apply(layer, v);
            return (out, pi.argmax_axis(1));
        }
        let mut parts = Vec::new();
        let mut yhat = Vec::with_capacity(n);
        for (start, len) in chunks(n, chunk) {
            let (out, pi) = self.apply(layer, &v.narrow(1, start, len));
            yhat.extend(pi.argmax_axis(1));
            parts.push(out);
        }
        let parts: Vec<&Tensor<B>> = parts.iter().collect();
        (Tensor::cat(&parts, 1), yhat)
    }

    fn check_input(&self, what: &str, x: &Tensor<B>) -> Result<usize> {
        let (m, c, domain) = Domain::of_signals(what, x.shape())?;
        if c != self.channels || domain != self.domain {
            return Err(Error::Config(format!(
                "{what}: signals of shape {:?} do not match the network ({} channels over {:?})",
                x.shape(),
                self.channels,
                self.domain.dims()
            )));
        }
        x.check_finite(what)?;
        Ok(m)
    }

    /// Pushes packed spectra through every layer, in chunks of samples.
    fn run_layers(&self, v: Tensor<B>, keep: bool) -> (Tensor<B>, Vec<Vec<usize>>, Vec<ComplexTensor<B>>) {
        let n = v.dim(1);
        let chunk = self.config.chunk;
        let mut parts: Vec<Tensor<B>> =
            if n <= chunk { vec![v] } else { chunks(n, chunk).map(|(s, len)| v.narrow(1, s, len)).collect() };
        let join = |parts: &[Tensor<B>]| {
            if parts.len() == 1 {
                parts[0].clone()
            } else {
                Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)
            }
        };
        let mut spectra = Vec::new();
        // Memberships stay on the device (one index tensor per layer and chunk)
        // and come back in one download after the loop: no read-back between layers.
        let mut picks = Vec::with_capacity(self.layers.len() * parts.len());
        for layer in &self.layers {
            if keep {
                spectra.push(unpack_features(&join(&parts)));
            }
            for p in parts.iter_mut() {
                let (out, pi) = self.apply(layer, p);
                picks.push(pi.argmax_indices(1));
                *p = out;
            }
        }
        let v = join(&parts);
        if keep {
            spectra.push(unpack_features(&v));
        }
        let yhat = Tensor::indices_to_host(&picks).chunks(n.max(1)).map(<[usize]>::to_vec).collect();
        (v, yhat, spectra)
    }

    /// Maps signals (same channels and domain as the training ones) through the frozen layers.
    pub fn transform(&self, x: &Tensor<B>) -> Result<Transformed<B>> {
        self.check_input("invariant ReduNet transform", x)?;
        let (v, yhat, _) = self.run_layers(self.signals_to_spectra(x), false);
        Ok(Transformed { features: self.spectra_to_signals(&v), yhat, spectra: Vec::new() })
    }

    /// [`Self::transform`] keeping the half spectra `[F, n, C]` entering every layer and leaving the last.
    pub fn transform_traced(&self, x: &Tensor<B>) -> Result<Transformed<B>> {
        self.check_input("invariant ReduNet transform", x)?;
        let (v, yhat, spectra) = self.run_layers(self.signals_to_spectra(x), true);
        Ok(Transformed { features: self.spectra_to_signals(&v), yhat, spectra })
    }

    /// Features of every cyclic shift of every sample, `[n, S, C, dims..]`:
    /// entry `[i, s]` equals the features of `roll(x_i, shifts[s])`.
    ///
    /// The network is shift-equivariant (every operator is block-circulant
    /// and the memberships depend on shift-invariant norms), so the samples
    /// go through the layers once and each shift is a cyclic shift of the
    /// output features (one gather for all shifts): `S` times less work than
    /// transforming the shifted copies (the test suite checks the two agree).
    pub fn transform_shifted(&self, x: &Tensor<B>, shifts: &[Vec<isize>]) -> Result<Tensor<B>> {
        let n = self.check_input("invariant ReduNet transform_shifted", x)?;
        if shifts.is_empty() {
            return Err(Error::Config("invariant ReduNet transform_shifted: no shifts given".into()));
        }
        let (c, p, ns) = (self.channels, self.domain.size(), shifts.len());
        // out[i, s, ch, t] = features[i, ch, roll_s(t)]: one gather along the flattened [C P]
        let mut index = Vec::with_capacity(ns * c * p);
        for s in shifts {
            let roll = self.domain.roll_index(s)?;
            for ch in 0..c {
                index.extend(roll.iter().map(|&t| ch * p + t));
            }
        }
        let (v, _, _) = self.run_layers(self.signals_to_spectra(x), false);
        // a shift keeps the norm, so the normalised features are shifted as they are
        let rolled = self.spectra_to_signals(&v).reshape(&[n, c * p]).index_select(1, &index);
        let mut shape = vec![n, ns, c];
        shape.extend(self.domain.dims());
        Ok(rolled.reshape(&shape))
    }

    /// The signal domain.
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// Channels `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Classes `k`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Class weights `gamma_j = m_j / m` of the training labels.
    pub fn gamma(&self) -> &[f64] {
        &self.gamma
    }

    /// The hyperparameters.
    pub fn config(&self) -> &InvariantConfig {
        &self.config
    }

    /// The layers.
    pub fn layers(&self) -> &[InvariantLayer<B>] {
        &self.layers
    }

    /// Bytes of stored operators per layer: `(k+1) F C^2` elements.
    pub fn operator_bytes_per_layer(&self) -> usize {
        (self.classes + 1)
            * self.domain.stored_frequencies()
            * self.channels
            * self.channels
            * std::mem::size_of::<B::Elem>()
    }

    /// Bytes of all stored operators.
    pub fn operator_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }

    fn layer(&self, l: usize) -> Result<&InvariantLayer<B>> {
        self.layers.get(l).ok_or_else(|| {
            Error::Config(format!("invariant ReduNet: layer {l} out of range ({} layers)", self.layers.len()))
        })
    }

    /// All operators of layer `l` at the stored frequencies, `[k+1, F, C, C]`
    /// (index 0 is `E(f)`, index `j` is `C^j(f)`), unpacked.
    pub fn operators(&self, l: usize) -> Result<ComplexTensor<B>> {
        let layer = self.layer(l)?;
        let (c, g, f) = (self.channels, self.classes + 1, self.domain.stored_frequencies());
        let mut ri = Vec::with_capacity(c * c);
        let mut ii = Vec::with_capacity(c * c);
        let mut is = Vec::with_capacity(c * c);
        for a in 0..c {
            for b in 0..c {
                ri.push(a.min(b) * c + a.max(b));
                let (i, s) = match a.cmp(&b) {
                    std::cmp::Ordering::Greater => (a * c + b, 1.0),
                    std::cmp::Ordering::Less => (b * c + a, -1.0),
                    std::cmp::Ordering::Equal => (0, 0.0),
                };
                ii.push(i);
                is.push(s);
            }
        }
        let p = layer.packed.reshape(&[f, g, c * c]);
        let sign = Tensor::from_f64(p.backend(), &is, &[1, 1, c * c]);
        let re = p.index_select(2, &ri).reshape(&[f, g, c, c]).permute(&[1, 0, 2, 3]);
        let im = p.index_select(2, &ii).mul(&sign).reshape(&[f, g, c, c]).permute(&[1, 0, 2, 3]);
        Ok(ComplexTensor::new(re, im))
    }

    /// `E(f)` of layer `l` at the stored frequencies, `[F, C, C]`.
    pub fn expansion_operator(&self, l: usize) -> Result<ComplexTensor<B>> {
        let ops = self.operators(l)?;
        let (f, c) = (self.domain.stored_frequencies(), self.channels);
        Ok(ComplexTensor::new(ops.re.narrow(0, 0, 1), ops.im.narrow(0, 0, 1)).reshape(&[f, c, c]))
    }

    /// `C^j(f)` of layer `l` at the stored frequencies, `[k, F, C, C]`.
    pub fn compression_operators(&self, l: usize) -> Result<ComplexTensor<B>> {
        let ops = self.operators(l)?;
        let k = self.classes;
        Ok(ComplexTensor::new(ops.re.narrow(0, 1, k), ops.im.narrow(0, 1, k)))
    }

    /// The multichannel convolution kernels of layer `l` (Proposition of
    /// 4.1.22): `[k+1, C, C, dims..]`, entry `[j, c, c']` the first column of
    /// the circulant block `(c, c')` of the dense operator `A_j`, so that
    /// `(A_j z)[c] = sum_c' kernel[j, c, c'] (*) z[c']` (circular convolution).
    pub fn convolution_kernels(&self, l: usize) -> Result<Tensor<B>> {
        let ops = self.operators(l)?; // [g, F, C, C]
        let (c, g, f) = (self.channels, self.classes + 1, self.domain.stored_frequencies());
        let per_freq = ops.permute(&[1, 0, 2, 3]).reshape(&[f, g * c, c]);
        let k = self.domain.inverse(&per_freq, FftNorm::Backward);
        let mut shape = vec![g, c, c];
        shape.extend(self.domain.dims());
        Ok(k.reshape(&shape))
    }
}

#[cfg(test)]
mod tests {
    use super::chunks;

    /// The chunks cover `0..n` in order, hold at most `most` samples each and
    /// differ in size by at most one.
    #[test]
    fn chunks_partition_the_samples_evenly() {
        for n in 0..60 {
            for most in 1..25 {
                let c: Vec<(usize, usize)> = chunks(n, most).collect();
                let mut next = 0;
                for &(start, len) in &c {
                    assert_eq!(start, next, "n {n} most {most}: {c:?}");
                    assert!(len <= most, "n {n} most {most}: {c:?}");
                    next += len;
                }
                assert_eq!(next, n, "n {n} most {most}: {c:?}");
                let (lo, hi) = (c.iter().map(|x| x.1).min(), c.iter().map(|x| x.1).max());
                assert!(hi.zip(lo).is_none_or(|(h, l)| h - l <= 1), "n {n} most {most}: {c:?}");
                assert_eq!(c.len(), n.div_ceil(most).max(1), "n {n} most {most}");
            }
        }
    }
}
