//! Reference engine of ReduNet (4.1.3-4.1.4 operators, 4.1.11-4.1.13 layer map) written only with batched backend `Tensor` ops.
//!
//! Each batch of samples goes through one matmul with the stacked operators
//! `[E; C_1; ...; C_k]`, then norms, a softmax over classes and a weighted sum
//! of the stacked responses. Covariances are summed over batches of samples;
//! classes with fewer samples than `d` take the `m_j x m_j` route (Woodbury
//! for the operator, Sylvester for the log-determinant).

use super::{rates_from_logdets, Layer, Record, ReduNet, ReduNetConfig, Scales, Trace, NORM_FLOOR};
use crate::Result;
use rate_core::rate::{logdet_i_plus_gram, scaled_regularised_inverse};
use rate_core::{Kernels, Rates, Tensor};

/// Rows divided by their norms (clamped at [`NORM_FLOOR`]).
fn normalise_rows<B: Kernels>(z: &Tensor<B>) -> Tensor<B> {
    z.div(&z.norm_axis(1).clamp_min(NORM_FLOOR))
}

/// What one class (or all samples) contributes: its covariance, or its rows when there are fewer than `d`.
enum ClassData<B: Kernels> {
    /// `Z_j^T Z_j`, `d x d`, summed over batches.
    Gram(Tensor<B>),
    /// `Z_j` itself, `m_j x d` with `m_j < d`.
    Rows(Tensor<B>),
}

impl<B: Kernels> ClassData<B> {
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
            ClassData::Gram(g) => {
                let eye = Tensor::eye(g.backend(), g.dim(0));
                Ok(g.scale(a).add(&eye).spd_logdet()?.scalar())
            }
            ClassData::Rows(r) => Ok(logdet_i_plus_gram(r, a)?),
        }
    }

    /// `a (I + a Z^T Z)^-1`.
    fn operator(&self, a: f64) -> Result<Tensor<B>> {
        match self {
            ClassData::Gram(g) => {
                let eye = Tensor::eye(g.backend(), g.dim(0));
                Ok(g.scale(a).add(&eye).spd_inverse()?.scale(a))
            }
            ClassData::Rows(r) => Ok(scaled_regularised_inverse(r, a)?),
        }
    }
}

/// The data of every class and of all samples together, for one feature matrix.
struct Stats<B: Kernels> {
    total: ClassData<B>,
    classes: Vec<ClassData<B>>,
}

impl<B: Kernels> Stats<B> {
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
    fn operators(&self, scales: &Scales) -> Result<Tensor<B>> {
        let mut parts = vec![self.total.operator(scales.alpha)?];
        for (c, &a) in self.classes.iter().zip(&scales.alpha_class) {
            parts.push(c.operator(a)?);
        }
        let refs: Vec<&Tensor<B>> = parts.iter().collect();
        Ok(Tensor::cat(&refs, 0))
    }

    /// Rates with weights `gamma_j` and `alpha_j` given per class (classes
    /// with no samples skipped).
    fn rates(&self, alpha: f64, alpha_class: &[f64], gamma: &[f64], counts: &[usize]) -> Result<Rates> {
        let ld = self.total.logdet(alpha)?;
        let mut parts = Vec::new();
        for j in 0..self.classes.len() {
            if counts[j] > 0 {
                parts.push((gamma[j], self.classes[j].logdet(alpha_class[j])?));
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

/// One layer map on all rows, in batches: the output and, when asked for, the
/// argmax memberships as a tensor of indices left on the device (`m`).
fn apply<B: Kernels>(
    z: &Tensor<B>,
    w: &Tensor<B>,
    gamma: &Tensor<B>,
    eta: f64,
    lambda: f64,
    batch: usize,
    want_yhat: bool,
) -> (Tensor<B>, Option<Tensor<B>>) {
    let m = z.dim(0);
    if m <= batch {
        return apply_rows(z, w, gamma, eta, lambda, want_yhat);
    }
    let mut outs = Vec::new();
    let mut picks = Vec::new();
    for start in (0..m).step_by(batch) {
        let (o, y) = apply_rows(&z.narrow(0, start, batch.min(m - start)), w, gamma, eta, lambda, want_yhat);
        outs.push(o);
        picks.extend(y);
    }
    let refs: Vec<&Tensor<B>> = outs.iter().collect();
    let yhat = (!picks.is_empty()).then(|| Tensor::cat(&picks.iter().collect::<Vec<_>>(), 0));
    (Tensor::cat(&refs, 0), yhat)
}

/// Downloads the per-layer index tensors of [`apply`] in one transfer, as `u32`.
fn download_picks<B: Kernels>(picks: &[Tensor<B>]) -> Vec<u32> {
    Tensor::indices_to_host(picks).into_iter().map(|y| y as u32).collect()
}

fn apply_rows<B: Kernels>(
    z: &Tensor<B>,
    w: &Tensor<B>,
    gamma: &Tensor<B>,
    eta: f64,
    lambda: f64,
    want_yhat: bool,
) -> (Tensor<B>, Option<Tensor<B>>) {
    let (b, d) = (z.dim(0), z.dim(1));
    let k = gamma.dim(1);
    // [E z; C_1 z; ...; C_k z] for every row: b x (k+1) x d
    let resp = z.matmul_t(w, false, true).reshape(&[b, k + 1, d]);
    let expd = resp.narrow(1, 0, 1).reshape(&[b, d]);
    let comp = resp.narrow(1, 1, k);
    // pi = softmax_j(-lambda max(||C_j z||, floor))  (4.1.11)
    let pi = comp.norm_axis(2).reshape(&[b, k]).clamp_min(NORM_FLOOR).scale(-lambda).softmax(1);
    let yhat = want_yhat.then(|| pi.argmax_indices(1));
    // sigma = sum_j gamma_j pi_j C_j z
    let coef = pi.mul(gamma).reshape(&[b, k, 1]);
    let clus = comp.mul(&coef).sum_axis(1, false);
    let out = z.add(&expd.sub(&clus).scale(eta));
    (normalise_rows(&out), yhat)
}

/// Builds the layers with the reference engine (see [`super::ReduNet::build_with`]).
pub(super) fn build<B: Kernels>(
    z: &Tensor<B>,
    labels: &[usize],
    cfg: &ReduNetConfig,
    record: &Record,
    scales: &Scales,
) -> Result<(Vec<Layer<B>>, Trace<B>)> {
    let be = z.backend();
    let (m, d) = (z.dim(0), z.dim(1));
    let k = cfg.num_classes;
    let batch = cfg.batch_size;
    let members = members_of(labels.iter().copied(), k);
    let counts: Vec<usize> = members.iter().map(|v| v.len()).collect();
    let gamma_t = Tensor::from_f64(be, &scales.gamma, &[1, k]);
    let want_rates = record.rates || matches!(cfg.depth, super::Depth::Adaptive { .. });
    let want_yhat = record.yhat || want_rates;

    let mut zl = normalise_rows(z);
    let mut stats = Stats::new(&zl, &members, batch);
    let mut rates_true = Vec::new();
    let mut rates_code = Vec::new();
    let mut yhat_all: Vec<u32> = Vec::new();
    // Without rates nothing needs the memberships inside the loop: they stay on
    // the device and come back in one download after it.
    let mut picks = Vec::new();
    let mut features = Vec::new();
    if want_rates {
        rates_true.push(stats.rates(scales.alpha, &scales.alpha_class, &scales.gamma, &counts)?);
    }
    if record.features.contains(0) {
        features.push((0, zl.clone()));
    }
    let mut layers = Vec::new();
    for l in 0..cfg.depth.max_layers() {
        let w = stats.operators(scales)?;
        let (out, yhat) = apply(&zl, &w, &gamma_t, cfg.eta, cfg.lambda, batch, want_yhat);
        layers.push(Layer::from_tensor(w, &scales.gamma, d, k));
        let next = Stats::new(&out, &members, batch);
        if want_rates {
            // The rates are host scalars anyway; the code's rates need yhat's members here.
            let yhat = Tensor::indices_to_host(yhat.as_slice());
            if record.yhat {
                yhat_all.extend(yhat.iter().map(|&y| y as u32));
            }
            let rt = next.rates(scales.alpha, &scales.alpha_class, &scales.gamma, &counts)?;
            rates_true.push(rt);
            rates_code.push(if yhat.as_slice() == labels {
                rt
            } else {
                let yhat_members = members_of(yhat.iter().copied(), k);
                let yhat_counts: Vec<usize> = yhat_members.iter().map(|v| v.len()).collect();
                let alpha_class: Vec<f64> = yhat_counts
                    .iter()
                    .map(|&c| if c == 0 { 0.0 } else { d as f64 / (c as f64 * cfg.eps_sq) })
                    .collect();
                Stats::new(&out, &yhat_members, batch).rates(
                    scales.alpha,
                    &alpha_class,
                    &scales.gamma,
                    &yhat_counts,
                )?
            });
        } else if let Some(y) = yhat {
            picks.push(y);
        }
        if record.features.contains(l + 1) {
            features.push((l + 1, out.clone()));
        }
        zl = out;
        stats = next;
        if want_rates && cfg.depth.stops(&rates_true) {
            break;
        }
    }
    if !record.rates {
        rates_true.clear();
        rates_code.clear();
    }
    yhat_all.extend(download_picks(&picks));
    let trace =
        Trace { output: normalise_rows(&zl), rates_true, rates_code, features, yhat: yhat_all, samples: m };
    Ok((layers, trace))
}

/// Applies a built network with the reference engine (see [`super::ReduNet::transform_with`]).
pub(super) fn transform<B: Kernels>(net: &ReduNet<B>, z: &Tensor<B>, record: &Record) -> Result<Trace<B>> {
    let m = z.dim(0);
    let gamma_t = Tensor::from_f64(z.backend(), net.gamma(), &[1, net.num_classes()]);
    let cfg = net.config();
    let mut zl = normalise_rows(z);
    let mut picks = Vec::new();
    let mut features = Vec::new();
    if record.features.contains(0) {
        features.push((0, zl.clone()));
    }
    for (l, layer) in net.layers().iter().enumerate() {
        let (out, yhat) =
            apply(&zl, layer.operators(), &gamma_t, cfg.eta, cfg.lambda, cfg.batch_size, record.yhat);
        picks.extend(yhat);
        if record.features.contains(l + 1) {
            features.push((l + 1, out.clone()));
        }
        zl = out;
    }
    Ok(Trace {
        output: normalise_rows(&zl),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features,
        yhat: download_picks(&picks),
        samples: m,
    })
}
