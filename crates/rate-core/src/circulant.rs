//! Shift-invariant coding rates and operators computed per frequency (4.1.16-4.1.22, 4.1.27), never forming a circulant matrix.
//!
//! Signals are `m x C x T` (samples, channels, time). With the unitary DFT
//! `v(t) = F z` along time, the block-circulant covariance of all cyclic
//! shifts is block-diagonal in frequency, with blocks
//! `S(t) = sum_i v_i(t) v_i(t)^H` (`C x C`, Hermitian). Following the
//! reference code, `alpha = C / (m eps^2)` and
//!
//! * `R = 1/(2T) sum_t logdet(I + alpha S(t))`
//!   `  = (1/T) 1/2 logdet(I_{CT} + alpha/T sum_i circ(z_i) circ(z_i)^T)`,
//! * `E(t) = alpha (I + alpha S(t))^-1`, `C^j(t) = alpha_j (I + alpha_j S_j(t))^-1`.
//!
//! A real signal's spectrum is conjugate-symmetric, `S(T - t) = conj S(t)`, so
//! only the `T/2 + 1` non-negative frequencies are built; sums over all
//! frequencies weight the others twice ([`half_spectrum_weights`]).

use crate::backend::Backend;
use crate::operators::frequency_regularised_inverses;
use crate::rate::{check_eps_sq, check_labels};
use crate::{ComplexTensor, Error, FftNorm, Result, Tensor};

/// Weight of each of the `T/2 + 1` stored frequencies in a sum over all `T`.
pub fn half_spectrum_weights(t: usize) -> Vec<f64> {
    let f = t / 2 + 1;
    (0..f).map(|k| if k == 0 || (t % 2 == 0 && k == t / 2) { 1.0 } else { 2.0 }).collect()
}

fn check_signals<B: Backend>(v: &Tensor<B>, eps_sq: f64, op: &'static str) -> Result<(usize, usize, usize)> {
    if v.rank() != 3 || v.numel() == 0 {
        return Err(Error::InvalidShape {
            op,
            shape: v.shape().to_vec(),
            reason: "signals must be a non-empty samples x channels x length tensor".into(),
        });
    }
    check_eps_sq(eps_sq, op)?;
    v.check_finite(op)?;
    Ok((v.dim(0), v.dim(1), v.dim(2)))
}

/// Half spectrum of real signals `m x C x T`, laid out per frequency:
/// `F x m x C` with `F = T/2 + 1` (unitary DFT).
pub fn spectra<B: Backend>(v: &Tensor<B>) -> ComplexTensor<B> {
    v.rfft(2, FftNorm::Ortho).permute(&[2, 0, 1])
}

/// Per-frequency covariances `S(t) = V(t)^T conj(V(t))` (`F x C x C`) of
/// spectra laid out `F x m x C`.
pub fn frequency_covariances<B: Backend>(vf: &ComplexTensor<B>) -> ComplexTensor<B> {
    // V^H V = conj(S)
    vf.matmul_h(vf, true, false).conj()
}

/// `sum_t w_t logdet(I + a S(t))` over the stored frequencies.
fn weighted_logdet<B: Backend>(s: &ComplexTensor<B>, a: f64, t: usize) -> Result<f64> {
    let (f, c) = (s.shape()[0], s.shape()[1]);
    let (_, ld) = frequency_regularised_inverses(&s.reshape(&[f, 1, c, c]), &[a])?;
    Ok(ld.to_f64_vec().iter().zip(half_spectrum_weights(t)).map(|(l, w)| l * w).sum())
}

/// Shift-invariant coding rate `1/(2T) sum_t logdet(I + C/(m eps^2) S(t))` of `m x C x T` signals.
pub fn circulant_coding_rate<B: Backend>(v: &Tensor<B>, eps_sq: f64) -> Result<f64> {
    let (m, c, t) = check_signals(v, eps_sq, "circulant_coding_rate")?;
    let s = frequency_covariances(&spectra(v));
    let a = c as f64 / (m as f64 * eps_sq);
    Ok(weighted_logdet(&s, a, t)? / (2.0 * t as f64))
}

fn class_index(labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut idx = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        idx[l].push(i);
    }
    idx
}

/// Shift-invariant compression `sum_j (m_j/m) 1/(2T) sum_t logdet(I + C/(m_j eps^2) S_j(t))`.
pub fn circulant_compression_rate<B: Backend>(
    v: &Tensor<B>,
    labels: &[usize],
    classes: usize,
    eps_sq: f64,
) -> Result<f64> {
    let (m, c, t) = check_signals(v, eps_sq, "circulant_compression_rate")?;
    check_labels(labels, m, classes, "circulant_compression_rate")?;
    let vf = spectra(v);
    let mut rc = 0.0;
    for idx in class_index(labels, classes) {
        if idx.is_empty() {
            continue;
        }
        let mj = idx.len() as f64;
        let s = frequency_covariances(&ComplexTensor::new(
            vf.re.index_select(1, &idx),
            vf.im.index_select(1, &idx),
        ));
        rc += mj / m as f64 * weighted_logdet(&s, c as f64 / (mj * eps_sq), t)? / (2.0 * t as f64);
    }
    Ok(rc)
}

/// `a (I + a S(t))^-1` for every stored frequency, `F x C x C`.
pub fn regularised_inverses<B: Backend>(s: &ComplexTensor<B>, a: f64) -> Result<ComplexTensor<B>> {
    let (f, c) = (s.shape()[0], s.shape()[1]);
    let (inv, _) = frequency_regularised_inverses(&s.reshape(&[f, 1, c, c]), &[a])?;
    Ok(inv.reshape(&[f, c, c]))
}

/// Per-frequency expansion operators `E(t) = alpha (I + alpha S(t))^-1`, `F x C x C`.
pub fn circulant_expansion_operators<B: Backend>(v: &Tensor<B>, eps_sq: f64) -> Result<ComplexTensor<B>> {
    let (m, c, _) = check_signals(v, eps_sq, "circulant_expansion_operators")?;
    regularised_inverses(&frequency_covariances(&spectra(v)), c as f64 / (m as f64 * eps_sq))
}

/// Per-frequency compression operators `C^j(t)`, `k x F x C x C` (zero for an empty class).
pub fn circulant_compression_operators<B: Backend>(
    v: &Tensor<B>,
    labels: &[usize],
    classes: usize,
    eps_sq: f64,
) -> Result<ComplexTensor<B>> {
    let (m, c, t) = check_signals(v, eps_sq, "circulant_compression_operators")?;
    check_labels(labels, m, classes, "circulant_compression_operators")?;
    let f = t / 2 + 1;
    let vf = spectra(v);
    let mut re = Vec::new();
    let mut im = Vec::new();
    for idx in class_index(labels, classes) {
        let op = if idx.is_empty() {
            let z = Tensor::zeros(v.backend(), &[f, c, c]);
            ComplexTensor::new(z.clone(), z)
        } else {
            let s = frequency_covariances(&ComplexTensor::new(
                vf.re.index_select(1, &idx),
                vf.im.index_select(1, &idx),
            ));
            regularised_inverses(&s, c as f64 / (idx.len() as f64 * eps_sq))?
        };
        re.push(op.re.reshape(&[1, f, c, c]));
        im.push(op.im.reshape(&[1, f, c, c]));
    }
    let re: Vec<&Tensor<B>> = re.iter().collect();
    let im: Vec<&Tensor<B>> = im.iter().collect();
    Ok(ComplexTensor::new(Tensor::cat(&re, 0), Tensor::cat(&im, 0)))
}
