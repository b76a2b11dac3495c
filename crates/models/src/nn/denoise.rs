//! The AoT denoising experiment (Definition 4.1, eq. (4.3.3), Theorem 4.3.2, Figure 4.16): tokens from a mixture of noisy low-rank Gaussians on K orthogonal p-dimensional subspaces of R^d, updated by the oracle MSSA step `Z + eta sum_k U_k U_k^T Z phi(Z^T U_k U_k^T Z)`, SNR of each block per layer.
//!
//! Sampling (Definition 4.1 with `p_k = p`, `N_k = N/K`, eq. (4.3.5)): a
//! random orthonormal `[U_1 .. U_K]` (`d x Kp`, QR of a Gaussian matrix by
//! Gram-Schmidt), and for token `i` of block `k`:
//! `z_i = U_k a_i + sum_{j != k} U_j e_{i,j}`, `a_i ~ N(0, I_p)`, `e_{i,j} ~ N(0, delta^2 I_p)`.
//!
//! The update is one [`AotLayer`] without LayerNorm whose MSSA carries the
//! oracle bases: with tokens as rows, `phi` applied column-wise to the
//! symmetric `Z^T U_k U_k^T Z` is `phi` applied row-wise to `W_k W_k^T`
//! (`W_k = Z U_k`), so the layer is `Z + eta sum_k phi(W_k W_k^T) W_k U_k^T`:
//! `qkv.weight = p^{1/4} [U_1 .. U_K]^T` cancels MSSA's score scale
//! `p^{-1/2}` (the theorem's scores are unscaled), `to_out.0.weight = eta p^{-1/4} [U_1 .. U_K]`
//! cancels the value rescaling of the fast path, bias zero.
//!
//! `SNR(Z_k) = ||U_k U_k^T Z_k||_F / ||(I - U_k U_k^T) Z_k||_F` (eq. (4.3.4)); the
//! theorem predicts `SNR^{l+1} = (1 + eta tau) SNR^l` with the thresholded
//! softmax, i.e. `log SNR` linear in the layer with slope `log(1 + eta tau)`.

use super::aot::AotLayer;
use super::mssa::{Mssa, Phi};
use super::Linear;
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// The experiment's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct DenoiseConfig {
    /// Ambient dimension `d`.
    pub dim: usize,
    /// Number of subspaces `K`.
    pub subspaces: usize,
    /// Dimension of each subspace `p` (`K p <= d`).
    pub subspace_dim: usize,
    /// Tokens per subspace `N / K`.
    pub tokens_per_subspace: usize,
    /// Noise level `delta`.
    pub delta: f64,
    /// Step size `eta`.
    pub eta: f64,
    /// The map `phi`: the theorem's thresholded softmax or the plain softmax.
    pub phi: Phi,
    /// Number of layers `L`.
    pub layers: usize,
    /// Seed of the bases and the tokens.
    pub seed: u64,
}

impl DenoiseConfig {
    /// Checks the constraints (orthogonal subspaces need `K p <= d`).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("denoise: {m}")));
        if self.subspaces == 0 || self.subspace_dim == 0 || self.tokens_per_subspace == 0 || self.dim == 0 {
            return bad("dim, subspaces, subspace_dim and tokens_per_subspace must be positive".into());
        }
        if self.subspaces * self.subspace_dim > self.dim {
            return bad(format!(
                "K p = {} x {} exceeds d = {}: the subspaces cannot be orthogonal",
                self.subspaces, self.subspace_dim, self.dim
            ));
        }
        if !(self.delta >= 0.0 && self.delta.is_finite() && self.eta.is_finite()) {
            return bad(format!("delta = {} and eta = {} must be finite, delta >= 0", self.delta, self.eta));
        }
        if let Phi::Threshold(tau) = self.phi {
            if !(tau > 0.0 && tau <= 1.0) {
                return bad(format!("tau = {tau} is not in (0, 1]"));
            }
        }
        Ok(())
    }

    /// The theorem's upper end of the admissible threshold, `1 / (1 + N exp(-9p/32))`.
    pub fn tau_upper(&self) -> f64 {
        let n = (self.subspaces * self.tokens_per_subspace) as f64;
        1.0 / (1.0 + n * (-9.0 * self.subspace_dim as f64 / 32.0).exp())
    }
}

/// What the experiment measured.
#[derive(Clone, Debug, PartialEq)]
pub struct DenoiseTrace {
    /// `snr[l][k]`: SNR of block `k` after `l` layers (`l = 0` the input).
    pub snr: Vec<Vec<f64>>,
}

impl DenoiseTrace {
    /// Mean over the blocks of the SNR per layer.
    pub fn mean_snr(&self) -> Vec<f64> {
        self.snr.iter().map(|r| r.iter().sum::<f64>() / r.len().max(1) as f64).collect()
    }
}

/// Least-squares line `y = a + b x`: `(a, b)`.
pub fn fit_line(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len().min(y.len()) as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

fn gaussian(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

/// `d x m` matrix (row-major) with orthonormal columns: Gram-Schmidt (twice) on a Gaussian matrix.
pub fn orthonormal_columns(d: usize, m: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = Vec::with_capacity(m);
    while cols.len() < m {
        let mut v: Vec<f64> = (0..d).map(|_| gaussian(rng)).collect();
        for _ in 0..2 {
            for c in &cols {
                let dot: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-8 {
            cols.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut out = vec![0.0; d * m];
    for (j, c) in cols.iter().enumerate() {
        for (i, &x) in c.iter().enumerate() {
            out[i * m + j] = x;
        }
    }
    out
}

/// The oracle bases `[U_1 .. U_K]` (`[d, K p]`) and tokens `[1, N, d]`
/// (block `k` = tokens `k N/K .. (k+1) N/K`) of Definition 4.1.
pub fn sample<B: Kernels>(backend: &B, c: &DenoiseConfig) -> Result<(Tensor<B>, Tensor<B>)> {
    c.validate()?;
    let (d, k, p, m) = (c.dim, c.subspaces, c.subspace_dim, c.tokens_per_subspace);
    let mut rng = StdRng::seed_from_u64(c.seed);
    let u = orthonormal_columns(d, k * p, &mut rng);
    // coefficients in the basis [U_1 .. U_K]: block k's own coordinates N(0, 1), the others N(0, delta^2)
    let mut coef = vec![0.0; k * m * k * p];
    for blk in 0..k {
        for t in 0..m {
            let row = (blk * m + t) * k * p;
            for j in 0..k * p {
                let s = if j / p == blk { 1.0 } else { c.delta };
                coef[row + j] = s * gaussian(&mut rng);
            }
        }
    }
    let u = Tensor::from_f64(backend, &u, &[d, k * p]);
    let z = Tensor::from_f64(backend, &coef, &[k * m, k * p]).matmul_t(&u, false, true);
    Ok((u, z.reshape(&[1, k * m, d])))
}

/// The AoT layer of eq. (4.3.3) with the oracle bases `u = [U_1 .. U_K]`.
pub fn oracle_layer<B: Kernels>(u: &Tensor<B>, c: &DenoiseConfig) -> AotLayer<B> {
    let p = c.subspace_dim as f64;
    let attn = Mssa {
        qkv: Linear { weight: u.t().scale(p.powf(0.25)), bias: None },
        to_out: Some(Linear {
            weight: u.scale(c.eta * p.powf(-0.25)),
            bias: Some(Tensor::zeros(u.backend(), &[c.dim])),
        }),
        heads: c.subspaces,
        dim_head: c.subspace_dim,
    };
    AotLayer { norm: None, attn, phi: c.phi, tiled_above: super::mssa::TILED_ABOVE_TOKENS }
}

/// `SNR(Z_k)` of every block of `z` (`[1, N, d]`).
pub fn snr<B: Kernels>(z: &Tensor<B>, u: &Tensor<B>, c: &DenoiseConfig) -> Vec<f64> {
    let (k, p, m) = (c.subspaces, c.subspace_dim, c.tokens_per_subspace);
    let z2 = z.reshape(&[k * m, c.dim]);
    (0..k)
        .map(|blk| {
            let zk = z2.narrow(0, blk * m, m);
            let uk = u.narrow(1, blk * p, p);
            let signal = zk.matmul(&uk).matmul_t(&uk, false, true);
            signal.norm() / zk.sub(&signal).norm()
        })
        .collect()
}

/// Runs the experiment: SNR of every block at the input and after each layer;
/// `on_layer` is called after each layer (progress).
pub fn run<B: Kernels>(
    backend: &B,
    c: &DenoiseConfig,
    mut on_layer: impl FnMut(usize),
) -> Result<DenoiseTrace> {
    let (u, mut z) = sample(backend, c)?;
    let layer = oracle_layer(&u, c);
    let mut out = vec![snr(&z, &u, c)];
    for l in 0..c.layers {
        z = layer.forward(&z).0;
        out.push(snr(&z, &u, c));
        on_layer(l + 1);
    }
    Ok(DenoiseTrace { snr: out })
}
