//! Plain f64 references of the conformance suite: triple-loop matmul, the O(n^2) DFT, Cholesky-Banachiewicz (real and complex), broadcasting by index arithmetic.

use super::*;
use crate::{AxisView, BinaryOp, FftNorm, UnaryOp};
use rand::rngs::StdRng;

// ====================================================================
// Plain f64 references
// ====================================================================

pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub(crate) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = flat % shape[a];
        flat /= shape[a];
    }
    idx
}

pub(crate) fn ref_permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st = contiguous_strides(shape);
    (0..x.len())
        .map(|o| {
            let j = unravel(o, &out_shape);
            x[perm.iter().zip(&j).map(|(&p, &i)| i * st[p]).sum::<usize>()]
        })
        .collect()
}

pub(crate) fn ref_unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Square => x * x,
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Step => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        UnaryOp::SoftThreshold(l) => x.signum() * (x.abs() - l).max(0.0),
        UnaryOp::AddScalar(c) => x + c,
        UnaryOp::MulScalar(c) => x * c,
        UnaryOp::ClampMin(c) => x.max(c),
        UnaryOp::ClampMax(c) => x.min(c),
        UnaryOp::ReluShift(c) => (x + c).max(0.0),
    }
}

pub(crate) fn ref_binary_scalar(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::WherePositive => {
            if b > 0.0 {
                a
            } else {
                0.0
            }
        }
    }
}

/// NumPy broadcasting of `a` (shape `sa`) with `b` (shape `sb`).
pub(crate) fn ref_broadcast(
    op: BinaryOp,
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let r = sa.len().max(sb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(sa), pad(sb));
    let out: Vec<usize> = (0..r).map(|i| if pa[i] == 1 { pb[i] } else { pa[i] }).collect();
    let (ta, tb) = (contiguous_strides(&pa), contiguous_strides(&pb));
    let n: usize = out.iter().product();
    let vals = (0..n)
        .map(|o| {
            let j = unravel(o, &out);
            let ia: usize = (0..r).map(|i| if pa[i] == 1 { 0 } else { j[i] * ta[i] }).sum();
            let ib: usize = (0..r).map(|i| if pb[i] == 1 { 0 } else { j[i] * tb[i] }).sum();
            ref_binary_scalar(op, a[ia], b[ib])
        })
        .collect();
    (vals, out)
}

/// `op(A) op(B)` with `A` stored `m x k` (or `k x m` when `ta`) and `B` stored `k x n` (or `n x k`).
pub(crate) fn ref_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for l in 0..k {
                let av = if ta { a[l * m + i] } else { a[i * k + l] };
                let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// Lower Cholesky factor of a symmetric `n x n` matrix, or `None` if a pivot is not positive.
pub(crate) fn ref_cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `L L^T X = B` (`B` is `n x nrhs`).
pub(crate) fn ref_chol_solve(l: &[f64], b: &[f64], n: usize, nrhs: usize) -> Vec<f64> {
    let mut x = b.to_vec();
    for c in 0..nrhs {
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l[i * n + k] * x[k * nrhs + c]).sum();
            x[i * nrhs + c] = (x[i * nrhs + c] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k * nrhs + c]).sum();
            x[i * nrhs + c] = (x[i * nrhs + c] - s) / l[i * n + i];
        }
    }
    x
}

pub(crate) fn identity(n: usize) -> Vec<f64> {
    let mut e = vec![0.0; n * n];
    for i in 0..n {
        e[i * n + i] = 1.0;
    }
    e
}

/// Minimal complex number for the Hermitian and Fourier references.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct C64 {
    pub(crate) re: f64,
    pub(crate) im: f64,
}

impl C64 {
    pub(crate) const ZERO: C64 = C64 { re: 0.0, im: 0.0 };
    pub(crate) fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    pub(crate) fn conj(self) -> Self {
        C64::new(self.re, -self.im)
    }
    pub(crate) fn add(self, o: Self) -> Self {
        C64::new(self.re + o.re, self.im + o.im)
    }
    pub(crate) fn sub(self, o: Self) -> Self {
        C64::new(self.re - o.re, self.im - o.im)
    }
    pub(crate) fn mul(self, o: Self) -> Self {
        C64::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
    pub(crate) fn scale(self, s: f64) -> Self {
        C64::new(self.re * s, self.im * s)
    }
    pub(crate) fn cis(theta: f64) -> Self {
        C64::new(theta.cos(), theta.sin())
    }
}

pub(crate) fn to_c64(re: &[f64], im: &[f64]) -> Vec<C64> {
    re.iter().zip(im).map(|(&r, &i)| C64::new(r, i)).collect()
}

pub(crate) fn planes(z: &[C64]) -> (Vec<f64>, Vec<f64>) {
    (z.iter().map(|c| c.re).collect(), z.iter().map(|c| c.im).collect())
}

/// Lower Cholesky `A = L L^H` of a Hermitian matrix, or `None` if not positive definite.
pub(crate) fn ref_herm_cholesky(a: &[C64], n: usize) -> Option<Vec<C64>> {
    let mut l = vec![C64::ZERO; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s = s.sub(l[i * n + k].mul(l[j * n + k].conj()));
            }
            if i == j {
                if s.re.is_nan() || s.re <= 0.0 {
                    return None;
                }
                l[i * n + i] = C64::new(s.re.sqrt(), 0.0);
            } else {
                l[i * n + j] = s.scale(1.0 / l[j * n + j].re);
            }
        }
    }
    Some(l)
}

/// Solves `L L^H X = B` (`B` is `n x nrhs`).
pub(crate) fn ref_herm_solve(l: &[C64], b: &[C64], n: usize, nrhs: usize) -> Vec<C64> {
    let mut x = b.to_vec();
    for c in 0..nrhs {
        for i in 0..n {
            let mut s = x[i * nrhs + c];
            for k in 0..i {
                s = s.sub(l[i * n + k].mul(x[k * nrhs + c]));
            }
            x[i * nrhs + c] = s.scale(1.0 / l[i * n + i].re);
        }
        for i in (0..n).rev() {
            let mut s = x[i * nrhs + c];
            for k in i + 1..n {
                s = s.sub(l[k * n + i].conj().mul(x[k * nrhs + c]));
            }
            x[i * nrhs + c] = s.scale(1.0 / l[i * n + i].re);
        }
    }
    x
}

pub(crate) fn ref_cmatmul(a: &[C64], b: &[C64], m: usize, k: usize, n: usize) -> Vec<C64> {
    let mut c = vec![C64::ZERO; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = C64::ZERO;
            for l in 0..k {
                s = s.add(a[i * k + l].mul(b[l * n + j]));
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// The O(n^2) DFT along the axis of `v`: `X_k = s sum_t x_t e^{∓2 pi i k t / n}`
/// (minus sign forward), `s` = 1 forward / `1/n` inverse (Backward) or `1/sqrt(n)` (Ortho).
pub(crate) fn ref_dft(x: &[C64], v: AxisView, inverse: bool, norm: FftNorm) -> Vec<C64> {
    let AxisView { outer, len: n, inner } = v;
    let sign = if inverse { 1.0 } else { -1.0 };
    let s = match (norm, inverse) {
        (FftNorm::Ortho, _) => 1.0 / (n as f64).sqrt(),
        (FftNorm::Backward, true) => 1.0 / n as f64,
        (FftNorm::Backward, false) => 1.0,
    };
    let mut out = vec![C64::ZERO; x.len()];
    for o in 0..outer {
        for j in 0..inner {
            for k in 0..n {
                let mut acc = C64::ZERO;
                for t in 0..n {
                    let w = C64::cis(sign * 2.0 * std::f64::consts::PI * ((k * t) % n) as f64 / n as f64);
                    acc = acc.add(x[(o * n + t) * inner + j].mul(w));
                }
                out[(o * n + k) * inner + j] = acc.scale(s);
            }
        }
    }
    out
}

/// NumPy's `irfft`: the real signal of length `n` whose spectrum is the
/// Hermitian extension of the half spectrum `x` (`n/2 + 1` entries along the
/// axis of `v`); the imaginary parts of bins 0 and `n/2` (even `n`) drop out.
pub(crate) fn ref_irfft(x: &[C64], v: AxisView, n: usize, norm: FftNorm) -> Vec<f64> {
    let AxisView { outer, len: h, inner } = v;
    let s = match norm {
        FftNorm::Ortho => 1.0 / (n as f64).sqrt(),
        FftNorm::Backward => 1.0 / n as f64,
    };
    let mut out = vec![0.0; outer * n * inner];
    for o in 0..outer {
        for j in 0..inner {
            let bin = |k: usize| x[(o * h + k) * inner + j];
            for t in 0..n {
                let mut acc = bin(0).re;
                for k in 1..n.div_ceil(2) {
                    let w = C64::cis(2.0 * std::f64::consts::PI * ((k * t) % n) as f64 / n as f64);
                    acc += 2.0 * bin(k).mul(w).re;
                }
                if n % 2 == 0 {
                    acc += bin(n / 2).re * if t % 2 == 0 { 1.0 } else { -1.0 };
                }
                out[(o * n + t) * inner + j] = acc * s;
            }
        }
    }
    out
}

/// `batch` random SPD `n x n` matrices `B B^T / n + shift I` (condition number below about 10 for `shift = 0.5`).
pub(crate) fn spd_batch(r: &mut StdRng, batch: usize, n: usize, shift: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(batch * n * n);
    for _ in 0..batch {
        let b = uniform(r, n * n, -1.0, 1.0);
        let mut a = ref_matmul(&b, &b, n, n, n, false, true);
        for (i, v) in a.iter_mut().enumerate() {
            *v /= n as f64;
            if i % (n + 1) == 0 {
                *v += shift;
            }
        }
        out.extend(a);
    }
    out
}

/// `batch` random Hermitian positive definite `n x n` matrices `B B^H / n + 0.5 I` as two planes.
pub(crate) fn hpd_batch(r: &mut StdRng, batch: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut re = Vec::new();
    let mut im = Vec::new();
    for _ in 0..batch {
        let b = to_c64(&uniform(r, n * n, -1.0, 1.0), &uniform(r, n * n, -1.0, 1.0));
        let bh: Vec<C64> = (0..n * n).map(|i| b[(i % n) * n + i / n].conj()).collect();
        let mut a = ref_cmatmul(&b, &bh, n, n, n);
        for (i, v) in a.iter_mut().enumerate() {
            *v = v.scale(1.0 / n as f64);
            if i % (n + 1) == 0 {
                *v = C64::new(v.re + 0.5, 0.0);
            }
        }
        let (r_, i_) = planes(&a);
        re.extend(r_);
        im.extend(i_);
    }
    (re, im)
}

/// A symmetric matrix that is not positive definite: `Q diag(1, .., 1, -1) Q^T` spread over every entry.
pub(crate) fn indefinite(n: usize) -> Vec<f64> {
    // Householder reflector Q = I - 2 u u^T / |u|^2 with u = (1, 2, .., n) keeps the spectrum {1, .., 1, -1}.
    let u: Vec<f64> = (1..=n).map(|i| i as f64).collect();
    let uu: f64 = u.iter().map(|x| x * x).sum();
    let q: Vec<f64> = (0..n * n).map(|i| identity(n)[i] - 2.0 * u[i / n] * u[i % n] / uu).collect();
    let mut d = identity(n);
    d[n * n - 1] = -1.0;
    let qd = ref_matmul(&q, &d, n, n, n, false, false);
    ref_matmul(&qd, &q, n, n, n, false, true)
}

pub(crate) fn shape_view(shape: &[usize], axis: usize) -> AxisView {
    AxisView {
        outer: shape[..axis].iter().product(),
        len: shape[axis],
        inner: shape[axis + 1..].iter().product(),
    }
}
