//! Dense reference path of the invariant ReduNet: the vector ReduNet layer (4.1.13) on the circulant families circ(z) of 4.1.20-4.1.22, with explicit `(C N) x (C N)` operators, for checking the frequency-domain path on small signals.
//!
//! Each sample `z` (`C` channels over a cyclic domain of `N` points) brings
//! the `N` columns of its circulant family `circ(z)`, all its cyclic shifts,
//! scaled by `1/sqrt(N)` so that a family weighs as much as one sample. With
//! `W = [circ(z_1), .., circ(z_m)] / sqrt(N)` (`d = C N` rows, `m N` columns),
//! the vector ReduNet's `alpha = d / (m N eps^2) = C / (m eps^2)` is the
//! frequency path's, and
//!
//! * `E = alpha (I + alpha W W^T)^-1`, `C^j = alpha_j (I + alpha_j W_j W_j^T)^-1`,
//! * `R = (1/N) 1/2 logdet(I + alpha W W^T)` (the rate per shift),
//!
//! are block-circulant; the DFT block-diagonalises them into the
//! per-frequency `C x C` matrices of [`super::InvariantReduNet`]. Cost is
//! `O((C N)^3)` per layer: use only for small `C N`.

use super::domain::Domain;
use super::network::{normalise_signals, InvariantConfig};
use crate::{Error, Result};
use rate_core::{Kernels, Rates, Tensor};

/// What the dense construction produces.
#[derive(Clone, Debug)]
pub struct DenseConstruction<B: Kernels> {
    /// Per layer, the operators `[k+1, C N, C N]` (index 0 is `E`, then `C^1..C^k`).
    pub operators: Vec<Tensor<B>>,
    /// Features entering layer `0..L` and leaving the last, `[m, C, dims..]` (`L + 1` entries).
    pub features: Vec<Tensor<B>>,
    /// Rates of `features[l]` with the true labels (`L + 1` entries).
    pub rates_true: Vec<Rates>,
    /// `argmax_j pi_j` inside each layer (`L x m`).
    pub yhat: Vec<Vec<usize>>,
    /// `gamma_j = m_j / m`.
    pub gamma: Vec<f64>,
}

/// Gather indices building the circulant family: entry `[p, g]` is the position `p - g`.
fn family_index(domain: &Domain) -> Vec<usize> {
    let dims = domain.dims();
    let n = domain.size();
    let coords = |p: usize| -> (usize, usize) {
        match dims.len() {
            1 => (0, p),
            _ => (p / dims[1], p % dims[1]),
        }
    };
    let (h, w) = if dims.len() == 1 { (1, dims[0]) } else { (dims[0], dims[1]) };
    let mut idx = Vec::with_capacity(n * n);
    for p in 0..n {
        let (ph, pw) = coords(p);
        for g in 0..n {
            let (gh, gw) = coords(g);
            idx.push(((ph + h - gh) % h) * w + (pw + w - gw) % w);
        }
    }
    idx
}

/// Builds the invariant ReduNet with explicit dense operators (see the module docs).
///
/// Same inputs and conventions as [`super::InvariantReduNet::construct`]
/// (the `chunk` and `keep_spectra` fields are ignored).
pub fn construct_dense<B: Kernels>(
    x: &Tensor<B>,
    labels: &[usize],
    classes: usize,
    config: &InvariantConfig,
) -> Result<DenseConstruction<B>> {
    config.validate()?;
    let (m, c, domain) = Domain::of_signals("dense invariant ReduNet", x.shape())?;
    if labels.len() != m || labels.iter().any(|&l| l >= classes) {
        return Err(Error::Config(format!(
            "dense invariant ReduNet: need {m} labels below {classes}, got {} labels",
            labels.len()
        )));
    }
    let mut groups = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        groups[l].push(i);
    }
    if let Some(j) = groups.iter().position(|g| g.is_empty()) {
        return Err(Error::Config(format!("dense invariant ReduNet: class {j} has no training samples")));
    }
    let n = domain.size();
    let d = c * n;
    let be = x.backend();
    let idx = family_index(&domain);
    let eye = Tensor::eye(be, d);
    let alpha = |mj: usize| c as f64 / (mj as f64 * config.eps_sq);
    let gamma: Vec<f64> = groups.iter().map(|g| g.len() as f64 / m as f64).collect();
    let gamma_row = Tensor::from_f64(be, &gamma, &[1, classes]);

    let mut z = normalise_signals(x).reshape(&[m, d]);
    let mut out = DenseConstruction {
        operators: Vec::new(),
        features: Vec::new(),
        rates_true: Vec::new(),
        yhat: Vec::new(),
        gamma,
    };
    let mut shape = vec![m, c];
    shape.extend(domain.dims());
    for layer in 0..=config.layers {
        out.features.push(z.reshape(&shape));
        // W = [circ(z_1) .. circ(z_m)] / sqrt(N): rows (c, p), columns (i, g).
        let fam = z.reshape(&[m, c, n]).index_select(2, &idx).reshape(&[m, d, n]);
        let wall = fam.permute(&[1, 0, 2]).reshape(&[d, m * n]).scale(1.0 / (n as f64).sqrt());
        let mut mats = Vec::with_capacity(classes + 1);
        let mut alphas = Vec::with_capacity(classes + 1);
        let a = alpha(m);
        mats.push(eye.add(&wall.matmul_t(&wall, false, true).scale(a)));
        alphas.push(a);
        for g in &groups {
            let wj = fam.index_select(0, g).permute(&[1, 0, 2]).reshape(&[d, g.len() * n]);
            let wj = wj.scale(1.0 / (n as f64).sqrt());
            let aj = alpha(g.len());
            mats.push(eye.add(&wj.matmul_t(&wj, false, true).scale(aj)));
            alphas.push(aj);
        }
        let mats: Vec<Tensor<B>> = mats.iter().map(|t| t.reshape(&[1, d, d])).collect();
        let stack = Tensor::cat(&mats.iter().collect::<Vec<_>>(), 0);
        let ld = stack.spd_logdet()?.to_f64_vec();
        let r = 0.5 * ld[0] / n as f64;
        let rc: f64 =
            groups.iter().zip(&ld[1..]).map(|(g, l)| g.len() as f64 / m as f64 * 0.5 * l / n as f64).sum();
        out.rates_true.push(Rates { r, rc, delta_r: r - rc });
        if layer == config.layers {
            break;
        }
        let ops = stack.spd_inverse()?.mul(&Tensor::from_f64(be, &alphas, &[classes + 1, 1, 1]));
        // A_j z for every operator (all symmetric): [m, k+1, d]
        let y = z.matmul(&ops).reshape(&[classes + 1, m, d]).permute(&[1, 0, 2]);
        let norms = y.narrow(1, 1, classes).norm_axis(2).reshape(&[m, classes]).clamp_min(1e-8);
        let pi = norms.scale(-config.lambda).softmax(1);
        out.yhat.push(pi.argmax_axis(1));
        let coef =
            Tensor::cat(&[&Tensor::full(be, &[m, 1], config.eta), &pi.mul(&gamma_row).scale(-config.eta)], 1);
        let delta = y.mul(&coef.reshape(&[m, classes + 1, 1])).sum_axis(1, false);
        z = normalise_signals(&z.add(&delta));
        out.operators.push(ops);
    }
    Ok(out)
}
