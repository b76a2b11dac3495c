//! The one home of the operators E and C^j (4.1.3-4.1.4, per frequency 4.1.20-4.1.22) and of the log-determinants of the rates (4.1.1): built from class Gram matrices by every engine (the rate functions, both ReduNet engines, the invariant ReduNet).
//!
//! For a Gram matrix `G = Z^T Z` (`d x d`; per frequency the Hermitian
//! `S(t) = sum_i v_i(t) v_i(t)^H`, `C x C`) and a scale `a > 0`:
//!
//! ```text
//! M        = G + I / a
//! M^-1     = a (I + a G)^-1          (E with a = alpha, C^j with a = alpha_j)
//! logdet(I + a G) = logdet M + d ln a
//! ```
//!
//! so one Cholesky factorisation of `M` gives the operator and the
//! log-determinant together ([`Tensor::spd_inverse_logdet`],
//! [`ComplexTensor::herm_inverse_logdet`]). The scales follow the reference
//! code: `alpha = w / (m eps^2)`, `alpha_j = w / (m_j eps^2)`,
//! `gamma_j = m_j / m`, with `w` the feature dimension `d` (vector ReduNet) or
//! the channel count `C` (invariant ReduNet), and `eps^2` the reference code's `eps`.

use crate::backend::Backend;
use crate::{ComplexTensor, Rates, Result, Tensor};

/// The constants of one set of operators: `alpha`, `alpha_j` and `gamma_j`
/// from the class sizes `m_j` (an empty class gets `alpha_j = gamma_j = 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassScales {
    /// `alpha = w / (m eps^2)`.
    pub alpha: f64,
    /// `alpha_j = w / (m_j eps^2)`, 0 for an empty class.
    pub alpha_class: Vec<f64>,
    /// `gamma_j = m_j / m`.
    pub gamma: Vec<f64>,
}

impl ClassScales {
    /// The scales of classes of sizes `counts` (at least one sample in all),
    /// features of width `width` (`d`, or `C` channels per frequency) and
    /// quantisation `eps_sq`.
    pub fn new(counts: &[usize], width: usize, eps_sq: f64) -> Self {
        let m: usize = counts.iter().sum();
        let w = width as f64;
        let per = |c: usize| if c == 0 { 0.0 } else { w / (c as f64 * eps_sq) };
        ClassScales {
            alpha: w / (m.max(1) as f64 * eps_sq),
            alpha_class: counts.iter().map(|&c| per(c)).collect(),
            gamma: counts.iter().map(|&c| c as f64 / m.max(1) as f64).collect(),
        }
    }

    /// `[alpha, alpha_1, .., alpha_k]`: the scales of `[E; C^1; ..; C^k]`.
    pub fn stacked(&self) -> Vec<f64> {
        std::iter::once(self.alpha).chain(self.alpha_class.iter().copied()).collect()
    }
}

/// `a_i (I + a_i G_i)^-1` (`[g, d, d]`) and `logdet(I + a_i G_i)` (`g`
/// values) for Gram matrices `grams` (`[g, d, d]`, symmetric positive
/// semi-definite) and scales `scales` (`g` values, each positive).
pub fn regularised_inverses<B: Backend>(grams: &Tensor<B>, scales: &[f64]) -> Result<(Tensor<B>, Vec<f64>)> {
    let (g, d) = (grams.dim(0), grams.dim(-1));
    assert!(
        grams.rank() == 3 && grams.dim(1) == d && scales.len() == g,
        "regularised_inverses: Gram matrices {:?} and {} scales",
        grams.shape(),
        scales.len()
    );
    let (inv, ld) = grams.add(&diagonal_shift(grams.backend(), scales, d)).spd_inverse_logdet()?;
    let ld = ld.to_f64_vec().iter().zip(scales).map(|(&l, &a)| regularised_logdet(l, a, d)).collect();
    Ok((inv, ld))
}

/// `logdet(I + a_i G_i)` alone (`g` values), for Gram matrices `[g, n, n]`.
pub fn regularised_logdets<B: Backend>(grams: &Tensor<B>, scales: &[f64]) -> Result<Vec<f64>> {
    let n = grams.dim(-1);
    let ld = grams.add(&diagonal_shift(grams.backend(), scales, n)).spd_logdet()?;
    Ok(ld.to_f64_vec().iter().zip(scales).map(|(&l, &a)| regularised_logdet(l, a, n)).collect())
}

/// [`regularised_inverses`] per frequency: Hermitian Gram matrices `grams`
/// (`[F, g, C, C]`, `g` groups at each of `F` frequencies) and one scale per
/// group; returns the operators (`[F, g, C, C]`) and `logdet(I + a_g S_g(t))`
/// (`[F, g]`).
pub fn frequency_regularised_inverses<B: Backend>(
    grams: &ComplexTensor<B>,
    scales: &[f64],
) -> Result<(ComplexTensor<B>, Tensor<B>)> {
    let s = grams.shape().to_vec();
    assert!(
        s.len() == 4 && s[2] == s[3] && s[1] == scales.len(),
        "frequency_regularised_inverses: Gram matrices {s:?} and {} scales",
        scales.len()
    );
    let (g, c) = (s[1], s[2]);
    let be = grams.re.backend();
    let shift = diagonal_shift(be, scales, c).reshape(&[1, g, c, c]);
    let (inv, ld) = ComplexTensor::new(grams.re.add(&shift), grams.im.clone()).herm_inverse_logdet()?;
    let ln_a: Vec<f64> = scales.iter().map(|&a| regularised_logdet(0.0, a, c)).collect();
    Ok((inv, ld.add(&Tensor::from_f64(be, &ln_a, &[1, g]))))
}

/// `M_i = G_i + I / a_i` in place, for `g = scales.len()` row-major `n x n`
/// matrices held on the host (`grams`, `g n^2` values; each scale positive
/// and finite). The tensor functions above shift the same way; a host
/// engine factors the result with its own Cholesky and corrects the
/// log-determinants by [`regularised_logdet`].
pub fn shift_diagonals(grams: &mut [f64], scales: &[f64], n: usize) {
    assert_eq!(
        grams.len(),
        scales.len() * n * n,
        "shift_diagonals: {} values for {} scales",
        grams.len(),
        scales.len()
    );
    for (i, a) in scales.iter().enumerate() {
        assert!(*a > 0.0 && a.is_finite(), "regularised_inverses: scale {i} is {a}, not positive and finite");
        for r in 0..n {
            grams[(i * n + r) * n + r] += 1.0 / a;
        }
    }
}

/// `logdet(I + a G) = logdet M + n ln a`, from the log-determinant of the
/// shifted `n x n` matrix `M = G + I / a`.
pub fn regularised_logdet(logdet_shifted: f64, scale: f64, n: usize) -> f64 {
    logdet_shifted + n as f64 * scale.ln()
}

/// `[g, n, n]` with `1 / a_i` on the diagonal of matrix `i`.
fn diagonal_shift<B: Backend>(be: &B, scales: &[f64], n: usize) -> Tensor<B> {
    let mut shift = vec![0.0; scales.len() * n * n];
    shift_diagonals(&mut shift, scales, n);
    Tensor::from_f64(be, &shift, &[scales.len(), n, n])
}

/// The rates from log-determinants: `R = logdet(I + alpha Z^T Z) / 2` and
/// `R_c = sum_j w_j logdet(I + alpha_j Z_j^T Z_j) / 2` over the pairs
/// `(w_j, logdet_j)` of the classes counted (4.1.1).
pub fn rates_from_logdets(logdet_total: f64, classes: impl IntoIterator<Item = (f64, f64)>) -> Rates {
    let r = 0.5 * logdet_total;
    let rc: f64 = classes.into_iter().map(|(w, ld)| w * 0.5 * ld).sum();
    Rates { r, rc, delta_r: r - rc }
}
