//! Backend conformance suite: one generic check per primitive, instantiated per backend by `conformance_tests!`.
//!
//! Every `check_*` function builds seeded pseudo-random inputs, runs one
//! [`Backend`] primitive (through [`Tensor`] or directly), and compares the
//! result with a plain-Rust f64 reference computed in this file by the
//! textbook algorithm: triple-loop matmul, the O(n^2) DFT, the
//! Cholesky–Banachiewicz loop (real and complex), cyclic Jacobi for
//! eigenvalues, max-subtracted softmax. References are computed from the
//! inputs rounded to the backend's element type on the host, so rounding the
//! inputs to f32 costs no accuracy, and a backend whose download is broken
//! cannot agree with them by accident.
//!
//! Tolerances depend on the element precision ([`tolerance`]):
//!
//! | element | tol |
//! |---|---|
//! | f64 | 1e-10 |
//! | f32 | 1e-4 |
//!
//! An output passes when every `|got - want| <= tol * max(1, max_i |want_i|)`,
//! a norm-wise relative error ([`assert_close`]); residual checks (`A X - B`,
//! `A V - V diag(l)`, `V^T V - I`) use the same bound with the scale of the
//! matrix. Matrices given to the solvers have condition numbers below about 10,
//! so the bounds hold with a wide margin in both precisions.
//!
//! Instantiate the suite once per backend (one `#[test]` per check):
//!
//! ```text
//! rate_core::conformance_tests!(cpu_f64, backend_cpu::CpuBackend::<f64>::new());
//! // A backend that may be unavailable (no GPU adapter): the expression is an
//! // Option, and every test prints why it is skipped when it is None.
//! rate_core::conformance_tests!(wgpu_f32, optional backend_wgpu::WgpuBackend::try_new().ok());
//! ```

use crate::{AxisView, Backend, BinaryOp, Element, Error, FftNorm, ReduceOp, Tensor, UnaryOp};
use num_traits::Float;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ====================================================================
// Tolerances, comparison and inputs
// ====================================================================

/// Tolerance of the suite for the element type of `B`: 1e-10 for f64, 1e-4
/// for f32 (see the module documentation for how it is applied).
pub fn tolerance<B: Backend>() -> f64 {
    if B::Elem::epsilon().f64() <= f64::EPSILON {
        1e-10
    } else {
        1e-4
    }
}

/// Panics unless `got` and `want` have the same length and every
/// `|got_i - want_i| <= tol * max(1, max_j |want_j|)` (NaN never passes).
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let scale = want.iter().fold(1.0f64, |s, w| s.max(w.abs()));
    assert_close_scaled(what, got, want, tol, scale);
}

/// Panics unless every `|got_i - want_i| <= tol * scale`.
pub fn assert_close_scaled(what: &str, got: &[f64], want: &[f64], tol: f64, scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= tol * scale,
            "{what}: element {i}: got {g}, expected {w} (|diff| {err:.3e} > tol {tol:.1e} x scale {scale:.3e})"
        );
    }
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// The values as the backend stores them: rounded to its element type on the host.
fn rounded<B: Backend>(data: &[f64]) -> Vec<f64> {
    data.iter().map(|&x| B::Elem::of(x).f64()).collect()
}

/// Uploads `data` with `shape`; returns the tensor and the rounded host values.
fn input<B: Backend>(b: &B, data: &[f64], shape: &[usize]) -> (Tensor<B>, Vec<f64>) {
    (Tensor::from_f64(b, data, shape), rounded::<B>(data))
}

/// A random tensor with entries uniform in `[lo, hi)` and its rounded host values.
fn random_input<B: Backend>(
    b: &B,
    r: &mut StdRng,
    shape: &[usize],
    lo: f64,
    hi: f64,
) -> (Tensor<B>, Vec<f64>) {
    let n = shape.iter().product();
    input(b, &uniform(r, n, lo, hi), shape)
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |s, v| s.max(v.abs()))
}

// ====================================================================
// Plain f64 references
// ====================================================================

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = flat % shape[a];
        flat /= shape[a];
    }
    idx
}

fn ref_permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st = contiguous_strides(shape);
    (0..x.len())
        .map(|o| {
            let j = unravel(o, &out_shape);
            x[perm.iter().zip(&j).map(|(&p, &i)| i * st[p]).sum::<usize>()]
        })
        .collect()
}

fn ref_unary(op: UnaryOp, x: f64) -> f64 {
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

fn ref_binary_scalar(op: BinaryOp, a: f64, b: f64) -> f64 {
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
fn ref_broadcast(op: BinaryOp, a: &[f64], sa: &[usize], b: &[f64], sb: &[usize]) -> (Vec<f64>, Vec<usize>) {
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
fn ref_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
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
fn ref_cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
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
fn ref_chol_solve(l: &[f64], b: &[f64], n: usize, nrhs: usize) -> Vec<f64> {
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

fn identity(n: usize) -> Vec<f64> {
    let mut e = vec![0.0; n * n];
    for i in 0..n {
        e[i * n + i] = 1.0;
    }
    e
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations, in decreasing order.
fn ref_sym_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| m[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // M <- J^T M J with the rotation in the (p, q) plane.
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
    ev.sort_by(|x, y| y.total_cmp(x));
    ev
}

/// Minimal complex number for the Hermitian and Fourier references.
#[derive(Clone, Copy, Debug, PartialEq)]
struct C64 {
    re: f64,
    im: f64,
}

impl C64 {
    const ZERO: C64 = C64 { re: 0.0, im: 0.0 };
    fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    fn conj(self) -> Self {
        C64::new(self.re, -self.im)
    }
    fn add(self, o: Self) -> Self {
        C64::new(self.re + o.re, self.im + o.im)
    }
    fn sub(self, o: Self) -> Self {
        C64::new(self.re - o.re, self.im - o.im)
    }
    fn mul(self, o: Self) -> Self {
        C64::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
    fn scale(self, s: f64) -> Self {
        C64::new(self.re * s, self.im * s)
    }
    fn cis(theta: f64) -> Self {
        C64::new(theta.cos(), theta.sin())
    }
}

fn to_c64(re: &[f64], im: &[f64]) -> Vec<C64> {
    re.iter().zip(im).map(|(&r, &i)| C64::new(r, i)).collect()
}

fn planes(z: &[C64]) -> (Vec<f64>, Vec<f64>) {
    (z.iter().map(|c| c.re).collect(), z.iter().map(|c| c.im).collect())
}

/// Lower Cholesky `A = L L^H` of a Hermitian matrix, or `None` if not positive definite.
fn ref_herm_cholesky(a: &[C64], n: usize) -> Option<Vec<C64>> {
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
fn ref_herm_solve(l: &[C64], b: &[C64], n: usize, nrhs: usize) -> Vec<C64> {
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

fn ref_cmatmul(a: &[C64], b: &[C64], m: usize, k: usize, n: usize) -> Vec<C64> {
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
fn ref_dft(x: &[C64], v: AxisView, inverse: bool, norm: FftNorm) -> Vec<C64> {
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
fn ref_irfft(x: &[C64], v: AxisView, n: usize, norm: FftNorm) -> Vec<f64> {
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
fn spd_batch(r: &mut StdRng, batch: usize, n: usize, shift: f64) -> Vec<f64> {
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
fn hpd_batch(r: &mut StdRng, batch: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
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
fn indefinite(n: usize) -> Vec<f64> {
    // Householder reflector Q = I - 2 u u^T / |u|^2 with u = (1, 2, .., n) keeps the spectrum {1, .., 1, -1}.
    let u: Vec<f64> = (1..=n).map(|i| i as f64).collect();
    let uu: f64 = u.iter().map(|x| x * x).sum();
    let q: Vec<f64> = (0..n * n).map(|i| identity(n)[i] - 2.0 * u[i / n] * u[i % n] / uu).collect();
    let mut d = identity(n);
    d[n * n - 1] = -1.0;
    let qd = ref_matmul(&q, &d, n, n, n, false, false);
    ref_matmul(&qd, &q, n, n, n, false, true)
}

fn shape_view(shape: &[usize], axis: usize) -> AxisView {
    AxisView {
        outer: shape[..axis].iter().product(),
        len: shape[axis],
        inner: shape[axis + 1..].iter().product(),
    }
}

// ====================================================================
// Checks: memory and transfer
// ====================================================================

/// `upload` then `download` returns the values unchanged (after rounding to
/// the element type), `len` counts them, empty buffers work, and `name` is not empty.
pub fn check_upload_download<B: Backend>(b: &B) {
    assert!(!b.name().is_empty(), "name() is empty");
    let mut r = rng(1);
    for n in [0usize, 1, 7, 1000, 40_000] {
        let data = uniform(&mut r, n, -1e3, 1e3);
        let host: Vec<B::Elem> = data.iter().map(|&x| B::Elem::of(x)).collect();
        let buf = b.upload(&host);
        assert_eq!(b.len(&buf), n, "len() after upload of {n} values");
        let back = b.download(&buf);
        assert!(back == host, "download(upload(x)) != x for {n} values");
    }
    // Special values survive the round trip.
    let special: Vec<B::Elem> =
        [0.0, -0.0, 1e-30, -1e30, f64::INFINITY, f64::NEG_INFINITY].iter().map(|&x| B::Elem::of(x)).collect();
    let back = b.download(&b.upload(&special));
    assert!(back.iter().zip(&special).all(|(x, y)| x == y), "special values: {back:?} vs {special:?}");
    let back = b.download(&b.upload(&[B::Elem::nan()]));
    assert!(back.len() == 1 && back[0].is_nan(), "NaN does not survive upload/download: {back:?}");
}

/// `full(len, v)` holds `len` copies of `v`, including `len = 0`.
pub fn check_full<B: Backend>(b: &B) {
    for (n, v) in [(0usize, 1.0), (1, -2.5), (17, 0.0), (40_000, 3.25)] {
        let buf = b.full(n, B::Elem::of(v));
        assert_eq!(b.len(&buf), n, "len(full({n}))");
        let got: Vec<f64> = b.download(&buf).into_iter().map(|x| x.f64()).collect();
        assert!(got.iter().all(|&x| x == v), "full({n}, {v}) holds other values");
    }
    let t = Tensor::<B>::full(b, &[2, 3], 7.0);
    assert_eq!(t.to_f64_vec(), vec![7.0; 6]);
}

// ====================================================================
// Checks: elementwise
// ====================================================================

/// Every [`UnaryOp`] against its f64 definition, including the points where
/// ReLU, Step and the soft threshold switch (0 and ±lambda).
pub fn check_unary<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(2);
    let mut signed = uniform(&mut r, 200, -3.0, 3.0);
    signed.extend([0.0, 0.5, -0.5, 1.0, -1.0, 1e-3, -1e-3]);
    let positive = uniform(&mut r, 200, 0.05, 4.0);
    let ops: Vec<(UnaryOp, &Vec<f64>)> = vec![
        (UnaryOp::Neg, &signed),
        (UnaryOp::Exp, &signed),
        (UnaryOp::Log, &positive),
        (UnaryOp::Sqrt, &positive),
        (UnaryOp::Abs, &signed),
        (UnaryOp::Square, &signed),
        (UnaryOp::Recip, &positive),
        (UnaryOp::Relu, &signed),
        (UnaryOp::Step, &signed),
        (UnaryOp::SoftThreshold(0.5), &signed),
        (UnaryOp::SoftThreshold(0.0), &signed),
        (UnaryOp::AddScalar(-1.25), &signed),
        (UnaryOp::MulScalar(0.3), &signed),
        (UnaryOp::ClampMin(-0.5), &signed),
        (UnaryOp::ClampMax(0.5), &signed),
        (UnaryOp::ReluShift(-0.25), &signed),
        (UnaryOp::ReluShift(0.5), &signed),
    ];
    for (op, data) in ops {
        let (t, x) = input(b, data, &[data.len()]);
        let got = t.unary(op).to_f64_vec();
        let want: Vec<f64> = x.iter().map(|&v| ref_unary(op, v)).collect();
        assert_close(&format!("unary {op:?}"), &got, &want, tol);
    }
    // Large buffers (parallel paths) and empty ones.
    let (t, x) = random_input(b, &mut r, &[300, 200], -2.0, 2.0);
    let want: Vec<f64> = x.iter().map(|&v| ref_unary(UnaryOp::SoftThreshold(0.7), v)).collect();
    assert_close("unary SoftThreshold, 60000 elements", &t.soft_threshold(0.7).to_f64_vec(), &want, tol);
    assert_eq!(Tensor::<B>::zeros(b, &[0, 3]).exp().to_f64_vec(), Vec::<f64>::new());
}

/// Every [`BinaryOp`], for conformance tests that loop over them.
pub const BINARY_OPS: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::WherePositive,
];

/// Every [`BinaryOp`] on equal shapes, small and large (parallel path).
pub fn check_binary<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(3);
    for shape in [vec![1usize], vec![5], vec![3, 4], vec![2, 3, 4], vec![256, 160]] {
        let (ta, a) = random_input(b, &mut r, &shape, -2.0, 2.0);
        // Denominators away from 0: |b| in [0.5, 2].
        let bd: Vec<f64> = uniform(&mut r, a.len(), 0.5, 2.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v } else { -v })
            .collect();
        let (tb, bv) = input(b, &bd, &shape);
        for op in BINARY_OPS {
            let got = ta.binary(op, &tb).to_f64_vec();
            let want: Vec<f64> = a.iter().zip(&bv).map(|(&x, &y)| ref_binary_scalar(op, x, y)).collect();
            assert_close(&format!("binary {op:?} on {shape:?}"), &got, &want, tol);
        }
    }
}

/// Every [`BinaryOp`] with NumPy broadcasting: either side broadcast, both
/// sides at once, rank-0 and rank-1 operands, and a large broadcast.
pub fn check_binary_broadcast<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(4);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 4], vec![3, 1]),
        (vec![2, 3, 4], vec![1, 4]),
        (vec![2, 3, 4], vec![2, 1, 4]),
        (vec![2, 3, 4], vec![4]),
        (vec![2, 3, 4], vec![]),
        (vec![4], vec![2, 3, 4]),
        (vec![3, 1], vec![1, 4]),
        (vec![2, 1, 1], vec![1, 3, 4]),
        (vec![1, 3, 1, 5], vec![2, 1, 4, 1]),
        (vec![300, 1], vec![1, 128]),
        (vec![0, 3], vec![1, 3]),
    ];
    for (sa, sb) in cases {
        let (ta, a) = random_input(b, &mut r, &sa, -2.0, 2.0);
        let nb: usize = sb.iter().product();
        let (tb, bv) = input(b, &uniform(&mut r, nb, 0.5, 2.0), &sb);
        for op in BINARY_OPS {
            let out = ta.binary(op, &tb);
            let (want, shape) = ref_broadcast(op, &a, &sa, &bv, &sb);
            assert_eq!(out.shape(), &shape[..], "binary {op:?}: {sa:?} with {sb:?}");
            assert_close(&format!("binary {op:?}: {sa:?} with {sb:?}"), &out.to_f64_vec(), &want, tol);
        }
    }
}

/// [`Backend::binary`] called directly with general (non-contiguous) strides:
/// `a` read transposed, `b` broadcast along rows.
pub fn check_binary_strided<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(5);
    let (rows, cols) = (5usize, 7usize);
    // a is stored cols x rows and read as its transpose.
    let a = rounded::<B>(&uniform(&mut r, rows * cols, -1.0, 1.0));
    let bv = rounded::<B>(&uniform(&mut r, cols, -1.0, 1.0));
    let ea: Vec<B::Elem> = a.iter().map(|&x| B::Elem::of(x)).collect();
    let eb: Vec<B::Elem> = bv.iter().map(|&x| B::Elem::of(x)).collect();
    let out = b.binary(BinaryOp::Sub, &b.upload(&ea), &[1, rows], &b.upload(&eb), &[0, 1], &[rows, cols]);
    let got: Vec<f64> = b.download(&out).into_iter().map(|x| x.f64()).collect();
    let want: Vec<f64> = (0..rows * cols).map(|o| a[(o % cols) * rows + o / cols] - bv[o % cols]).collect();
    assert_close("binary Sub with transposed strides", &got, &want, tol);
}

// ====================================================================
// Checks: layout
// ====================================================================

/// `permute` of rank 2 to 4 tensors against index arithmetic (exact).
pub fn check_permute<B: Backend>(b: &B) {
    let mut r = rng(6);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 5], vec![1, 0]),
        (vec![2, 3, 4], vec![2, 0, 1]),
        (vec![2, 3, 4], vec![1, 2, 0]),
        (vec![2, 3, 4], vec![0, 2, 1]),
        (vec![2, 3, 4, 5], vec![3, 1, 0, 2]),
        (vec![64, 48, 12], vec![2, 1, 0]),
        (vec![2, 0, 3], vec![2, 1, 0]),
    ];
    for (shape, perm) in cases {
        let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let out = t.permute(&perm);
        let want_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        assert_eq!(out.shape(), &want_shape[..], "permute {shape:?} by {perm:?}");
        assert_close(
            &format!("permute {shape:?} by {perm:?}"),
            &out.to_f64_vec(),
            &ref_permute(&x, &shape, &perm),
            0.0,
        );
    }
    // t() of a batch swaps the last two axes.
    let (t, x) = random_input(b, &mut r, &[3, 2, 5], -1.0, 1.0);
    assert_close("t() of [3, 2, 5]", &t.t().to_f64_vec(), &ref_permute(&x, &[3, 2, 5], &[0, 2, 1]), 0.0);
}

/// `narrow` along the first, a middle and the last axis, including a zero count (exact).
pub fn check_narrow<B: Backend>(b: &B) {
    let mut r = rng(7);
    let shape = [3usize, 6, 4];
    let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
    for (axis, start, count) in
        [(0usize, 1usize, 2usize), (1, 2, 3), (1, 0, 6), (2, 3, 1), (1, 4, 0), (0, 3, 0)]
    {
        let out = t.narrow(axis as isize, start, count);
        let mut ws = shape.to_vec();
        ws[axis] = count;
        assert_eq!(out.shape(), &ws[..]);
        let want: Vec<f64> = (0..ws.iter().product::<usize>())
            .map(|o| {
                let mut j = unravel(o, &ws);
                j[axis] += start;
                x[j.iter().zip(contiguous_strides(&shape)).map(|(a, s)| a * s).sum::<usize>()]
            })
            .collect();
        assert_close(&format!("narrow axis {axis} [{start}, +{count})"), &out.to_f64_vec(), &want, 0.0);
    }
}

/// `concat` of three parts of different lengths (one empty) along each axis (exact).
pub fn check_concat<B: Backend>(b: &B) {
    let mut r = rng(8);
    for axis in 0..3usize {
        let lens = [2usize, 0, 3];
        let mut parts = Vec::new();
        for &l in &lens {
            let mut s = vec![2usize, 3, 4];
            s[axis] = l;
            parts.push((random_input(b, &mut r, &s, -1.0, 1.0), s));
        }
        let refs: Vec<&Tensor<B>> = parts.iter().map(|((t, _), _)| t).collect();
        let out = Tensor::cat(&refs, axis as isize);
        let mut ws = vec![2usize, 3, 4];
        ws[axis] = lens.iter().sum();
        assert_eq!(out.shape(), &ws[..]);
        let want: Vec<f64> = (0..ws.iter().product::<usize>())
            .map(|o| {
                let mut j = unravel(o, &ws);
                let mut p = 0;
                while j[axis] >= lens[p] {
                    j[axis] -= lens[p];
                    p += 1;
                }
                let ((_, x), s) = &parts[p];
                x[j.iter().zip(contiguous_strides(s)).map(|(a, st)| a * st).sum::<usize>()]
            })
            .collect();
        assert_close(&format!("concat along axis {axis}"), &out.to_f64_vec(), &want, 0.0);
    }
}

/// `index_select` with repeated and unordered indices, and an empty index (exact).
pub fn check_index_select<B: Backend>(b: &B) {
    let mut r = rng(9);
    let shape = [3usize, 5, 4];
    let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
    for axis in 0..3usize {
        for index in [vec![2usize, 0, 2, 1], vec![], vec![shape[axis] - 1]] {
            let out = t.index_select(axis as isize, &index);
            let mut ws = shape.to_vec();
            ws[axis] = index.len();
            assert_eq!(out.shape(), &ws[..]);
            let want: Vec<f64> = (0..ws.iter().product::<usize>())
                .map(|o| {
                    let mut j = unravel(o, &ws);
                    j[axis] = index[j[axis]];
                    x[j.iter().zip(contiguous_strides(&shape)).map(|(a, s)| a * s).sum::<usize>()]
                })
                .collect();
            assert_close(&format!("index_select axis {axis} {index:?}"), &out.to_f64_vec(), &want, 0.0);
        }
    }
}

/// `index_add` accumulates repeated indices and leaves unselected entries zero.
pub fn check_index_add<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(10);
    for axis in 0..3usize {
        let index = vec![3usize, 0, 3, 1, 3];
        let len = 5;
        let mut shape = vec![2usize, 3, 4];
        shape[axis] = index.len();
        let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let out = t.index_add(axis as isize, &index, len);
        let mut ws = shape.clone();
        ws[axis] = len;
        assert_eq!(out.shape(), &ws[..]);
        let mut want = vec![0.0; ws.iter().product()];
        let wst = contiguous_strides(&ws);
        for (i, &v) in x.iter().enumerate() {
            let mut j = unravel(i, &shape);
            j[axis] = index[j[axis]];
            want[j.iter().zip(&wst).map(|(a, s)| a * s).sum::<usize>()] += v;
        }
        assert_close(&format!("index_add axis {axis}"), &out.to_f64_vec(), &want, tol);
    }
    // The adjoint identity <select(x), y> = <x, add(y)>.
    let (x, xv) = random_input(b, &mut r, &[6, 3], -1.0, 1.0);
    let idx = [5usize, 5, 0, 2];
    let (y, yv) = random_input(b, &mut r, &[4, 3], -1.0, 1.0);
    let lhs: f64 = x.index_select(0, &idx).to_f64_vec().iter().zip(&yv).map(|(a, b)| a * b).sum();
    let rhs: f64 = y.index_add(0, &idx, 6).to_f64_vec().iter().zip(&xv).map(|(a, b)| a * b).sum();
    assert_close("index_add is the adjoint of index_select", &[lhs], &[rhs], tol);
}

// ====================================================================
// Checks: reductions and softmax
// ====================================================================

fn ref_reduce(op: ReduceOp, x: &[f64], v: AxisView) -> Vec<f64> {
    let AxisView { outer, len, inner } = v;
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let vals = (0..len).map(|l| x[(o * len + l) * inner + j]);
            out.push(match op {
                ReduceOp::Sum => vals.sum(),
                ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                ReduceOp::Min => vals.fold(f64::INFINITY, f64::min),
                ReduceOp::ArgMax => {
                    let mut best = (0usize, f64::NEG_INFINITY);
                    for (l, val) in vals.enumerate() {
                        if val > best.1 {
                            best = (l, val);
                        }
                    }
                    best.0 as f64
                }
            });
        }
    }
    out
}

/// `reduce` with Sum, Max, Min and ArgMax along every axis; ArgMax returns the
/// first maximum on ties (the data has many ties); a sum over an empty axis is zero.
pub fn check_reduce<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(11);
    let shape = [3usize, 5, 4];
    let (t, x) = random_input(b, &mut r, &shape, -3.0, 3.0);
    // Integers 0..4: ties everywhere.
    let ties: Vec<f64> = (0..60).map(|_| r.random_range(0..4) as f64).collect();
    let (tt, xt) = input(b, &ties, &shape);
    for axis in 0..3usize {
        let v = shape_view(&shape, axis);
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax] {
            for (tensor, data, what) in [(&t, &x, "random"), (&tt, &xt, "ties")] {
                let got: Vec<f64> =
                    b.download(&b.reduce(op, tensor.buffer(), v)).into_iter().map(|e| e.f64()).collect();
                let want = ref_reduce(op, data, v);
                let tol = if op == ReduceOp::ArgMax { 0.0 } else { tol };
                assert_close(&format!("reduce {op:?} axis {axis} ({what})"), &got, &want, tol);
            }
        }
    }
    // Through the tensor API, keepdim and a large reduction.
    let (big, bx) = random_input(b, &mut r, &[50, 1000], -1.0, 1.0);
    let s = big.sum_axis(1, true);
    assert_eq!(s.shape(), &[50, 1]);
    assert_close(
        "sum_axis of [50, 1000]",
        &s.to_f64_vec(),
        &ref_reduce(ReduceOp::Sum, &bx, shape_view(&[50, 1000], 1)),
        tol,
    );
    assert_eq!(
        big.argmax_axis(1).into_iter().map(|i| i as f64).collect::<Vec<_>>(),
        ref_reduce(ReduceOp::ArgMax, &bx, shape_view(&[50, 1000], 1))
    );
    let empty = Tensor::<B>::zeros(b, &[2, 0, 3]).sum_axis(1, false);
    assert_eq!(empty.shape(), &[2, 3]);
    assert_eq!(empty.to_f64_vec(), vec![0.0; 6], "sum over an empty axis");
}

fn ref_softmax(x: &[f64], v: AxisView) -> Vec<f64> {
    let AxisView { outer, len, inner } = v;
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for j in 0..inner {
            let at = |l: usize| (o * len + l) * inner + j;
            let mx = (0..len).map(|l| x[at(l)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..len).map(|l| (x[at(l)] - mx).exp()).sum();
            for l in 0..len {
                out[at(l)] = (x[at(l)] - mx).exp() / s;
            }
        }
    }
    out
}

/// `softmax` along every axis, on inputs offset by ±500 (which overflow `exp`
/// without the max subtraction, in f32) and on a large tensor.
pub fn check_softmax<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(12);
    let shape = [3usize, 5, 4];
    for offset in [0.0, 500.0, -500.0] {
        let data: Vec<f64> = uniform(&mut r, 60, -4.0, 4.0).into_iter().map(|v| v + offset).collect();
        let (t, x) = input(b, &data, &shape);
        for axis in 0..3usize {
            let got = t.softmax(axis as isize).to_f64_vec();
            let want = ref_softmax(&x, shape_view(&shape, axis));
            assert_close(&format!("softmax axis {axis} offset {offset}"), &got, &want, tol);
        }
    }
    let (t, x) = random_input(b, &mut r, &[64, 600], -10.0, 10.0);
    assert_close(
        "softmax of [64, 600]",
        &t.softmax(1).to_f64_vec(),
        &ref_softmax(&x, shape_view(&[64, 600], 1)),
        tol,
    );
    let (t, x) = random_input(b, &mut r, &[1, 1], -1.0, 1.0);
    assert_eq!(x.len(), 1);
    assert_close("softmax of one element", &t.softmax(1).to_f64_vec(), &[1.0], tol);
}

// ====================================================================
// Checks: matmul
// ====================================================================

/// `matmul` with all four transpose combinations over small, odd and large
/// sizes (the large one reaches the blocked or parallel kernels).
pub fn check_matmul<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(13);
    for (m, k, n) in [(1usize, 1usize, 1usize), (3, 4, 5), (1, 7, 1), (7, 1, 6), (17, 33, 9), (65, 130, 66)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let sa = if ta { [k, m] } else { [m, k] };
            let sb = if tb { [n, k] } else { [k, n] };
            let (a, av) = random_input(b, &mut r, &sa, -1.0, 1.0);
            let (bb, bv) = random_input(b, &mut r, &sb, -1.0, 1.0);
            let out = a.matmul_t(&bb, ta, tb);
            assert_eq!(out.shape(), &[m, n]);
            let want = ref_matmul(&av, &bv, m, k, n, ta, tb);
            assert_close_scaled(
                &format!("matmul {m}x{k}x{n} trans_a={ta} trans_b={tb}"),
                &out.to_f64_vec(),
                &want,
                tol,
                (k as f64).max(1.0),
            );
        }
    }
}

/// Batched `matmul`: both operands batched (with two leading axes), and a 2-D
/// operand shared by the whole batch on either side, with every transpose.
pub fn check_matmul_batched<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(14);
    let (m, k, n) = (4usize, 6usize, 3usize);
    let lead = [2usize, 3];
    let batch: usize = lead.iter().product();
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let ma = if ta { [k, m] } else { [m, k] };
        let mb = if tb { [n, k] } else { [k, n] };
        let sa = [lead[0], lead[1], ma[0], ma[1]];
        let sb = [lead[0], lead[1], mb[0], mb[1]];
        let (a, av) = random_input(b, &mut r, &sa, -1.0, 1.0);
        let (bb, bv) = random_input(b, &mut r, &sb, -1.0, 1.0);
        let (a2, av2) = random_input(b, &mut r, &ma, -1.0, 1.0);
        let (b2, bv2) = random_input(b, &mut r, &mb, -1.0, 1.0);
        let what = format!("trans_a={ta} trans_b={tb}");
        // both batched
        let out = a.matmul_t(&bb, ta, tb);
        assert_eq!(out.shape(), &[lead[0], lead[1], m, n]);
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| {
                ref_matmul(&av[i * m * k..(i + 1) * m * k], &bv[i * k * n..(i + 1) * k * n], m, k, n, ta, tb)
            })
            .collect();
        assert_close_scaled(&format!("batched matmul {what}"), &out.to_f64_vec(), &want, tol, k as f64);
        // shared right operand
        let out = a.matmul_t(&b2, ta, tb);
        assert_eq!(out.shape(), &[lead[0], lead[1], m, n]);
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| ref_matmul(&av[i * m * k..(i + 1) * m * k], &bv2, m, k, n, ta, tb))
            .collect();
        assert_close_scaled(
            &format!("matmul, shared right operand, {what}"),
            &out.to_f64_vec(),
            &want,
            tol,
            k as f64,
        );
        // shared left operand
        let out = a2.matmul_t(&bb, ta, tb);
        assert_eq!(out.shape(), &[lead[0], lead[1], m, n]);
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| ref_matmul(&av2, &bv[i * k * n..(i + 1) * k * n], m, k, n, ta, tb))
            .collect();
        assert_close_scaled(
            &format!("matmul, shared left operand, {what}"),
            &out.to_f64_vec(),
            &want,
            tol,
            k as f64,
        );
    }
    // A large batch of small products (the per-class operators of ReduNet).
    let (a, av) = random_input(b, &mut r, &[200, 5, 5], -1.0, 1.0);
    let (x, xv) = random_input(b, &mut r, &[5, 8], -1.0, 1.0);
    let want: Vec<f64> =
        (0..200).flat_map(|i| ref_matmul(&av[i * 25..(i + 1) * 25], &xv, 5, 5, 8, false, false)).collect();
    assert_close_scaled("matmul of 200 x (5x5) by a shared 5x8", &a.matmul(&x).to_f64_vec(), &want, tol, 5.0);
}

/// `matmul` with an empty inner dimension gives zeros; empty outer dimensions give empty results.
pub fn check_matmul_empty<B: Backend>(b: &B) {
    let a = Tensor::<B>::zeros(b, &[3, 0]);
    let c = Tensor::<B>::zeros(b, &[0, 4]);
    let out = a.matmul(&c);
    assert_eq!(out.shape(), &[3, 4]);
    assert_eq!(out.to_f64_vec(), vec![0.0; 12], "matmul with k = 0");
    let out = Tensor::<B>::zeros(b, &[0, 5]).matmul(&Tensor::zeros(b, &[5, 2]));
    assert_eq!(out.shape(), &[0, 2]);
    assert!(out.to_f64_vec().is_empty());
    let out = Tensor::<B>::zeros(b, &[2, 5]).matmul_t(&Tensor::zeros(b, &[0, 5]), false, true);
    assert_eq!(out.shape(), &[2, 0]);
}

// ====================================================================
// Checks: real SPD linear algebra
// ====================================================================

/// Matrix sizes for the solver checks: tiny, small, and one above the CPU
/// backend's hand-written-loop threshold (64), so both of its paths are tested.
const SPD_SIZES: [(usize, usize); 4] = [(1, 1), (3, 4), (2, 9), (1, 70)];

/// `cholesky`: the factor matches the reference (it is unique), its strict
/// upper triangle is zero, and `L L^T` reproduces the input.
pub fn check_cholesky<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(15);
    for (batch, n) in SPD_SIZES {
        let (a, av) = input(b, &spd_batch(&mut r, batch, n, 0.5), &[batch, n, n]);
        let l = a.cholesky().unwrap_or_else(|e| panic!("cholesky of SPD {batch}x{n}x{n}: {e}"));
        assert_eq!(l.shape(), &[batch, n, n]);
        let lv = l.to_f64_vec();
        for i in 0..batch {
            let li = &lv[i * n * n..(i + 1) * n * n];
            let want = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n)
                .expect("reference Cholesky of an SPD matrix");
            assert_close(&format!("cholesky factor, matrix {i} of {batch}x{n}x{n}"), li, &want, tol);
            for row in 0..n {
                for col in row + 1..n {
                    assert_eq!(li[row * n + col], 0.0, "cholesky: upper entry ({row}, {col}) not zero");
                }
            }
        }
        let llt = l.matmul_t(&l, false, true).to_f64_vec();
        assert_close(&format!("L L^T = A for {batch}x{n}x{n}"), &llt, &av, tol);
    }
}

/// `spd_solve` matches the reference solution and its residual `A X - B` is small.
pub fn check_spd_solve<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(16);
    for (batch, n) in SPD_SIZES {
        for nrhs in [1usize, 3, n + 2] {
            let (a, av) = input(b, &spd_batch(&mut r, batch, n, 0.5), &[batch, n, n]);
            let (rhs, bv) = random_input(b, &mut r, &[batch, n, nrhs], -1.0, 1.0);
            let x = a.spd_solve(&rhs).unwrap_or_else(|e| panic!("spd_solve {batch}x{n}x{n}: {e}"));
            assert_eq!(x.shape(), &[batch, n, nrhs]);
            let want: Vec<f64> = (0..batch)
                .flat_map(|i| {
                    let l = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n).expect("SPD");
                    ref_chol_solve(&l, &bv[i * n * nrhs..(i + 1) * n * nrhs], n, nrhs)
                })
                .collect();
            assert_close(&format!("spd_solve {batch}x{n}x{n}, {nrhs} rhs"), &x.to_f64_vec(), &want, tol);
            assert_close(
                &format!("spd_solve residual {batch}x{n}x{n}"),
                &a.matmul(&x).to_f64_vec(),
                &bv,
                tol,
            );
        }
    }
    // A 2-D system with a shared-free single matrix.
    let (a, av) = input(b, &spd_batch(&mut r, 1, 5, 0.5), &[5, 5]);
    let (rhs, bv) = random_input(b, &mut r, &[5, 2], -1.0, 1.0);
    let l = ref_cholesky(&av, 5).expect("SPD");
    assert_close(
        "spd_solve of a 2-D system",
        &a.spd_solve(&rhs).expect("SPD").to_f64_vec(),
        &ref_chol_solve(&l, &bv, 5, 2),
        tol,
    );
}

/// `spd_inverse` matches the reference inverse, is symmetric, and `A A^-1 = I`.
pub fn check_spd_inverse<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(17);
    for (batch, n) in SPD_SIZES {
        let (a, av) = input(b, &spd_batch(&mut r, batch, n, 0.5), &[batch, n, n]);
        let inv = a.spd_inverse().unwrap_or_else(|e| panic!("spd_inverse {batch}x{n}x{n}: {e}"));
        let iv = inv.to_f64_vec();
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| {
                let l = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n).expect("SPD");
                ref_chol_solve(&l, &identity(n), n, n)
            })
            .collect();
        assert_close(&format!("spd_inverse {batch}x{n}x{n}"), &iv, &want, tol);
        let ident: Vec<f64> = (0..batch).flat_map(|_| identity(n)).collect();
        assert_close(&format!("A A^-1 = I for {batch}x{n}x{n}"), &a.matmul(&inv).to_f64_vec(), &ident, tol);
        assert_close(&format!("spd_inverse symmetric {batch}x{n}x{n}"), &inv.t().to_f64_vec(), &iv, tol);
    }
}

/// `spd_logdet` equals `2 sum log L_ii` of the reference factor; its shape is the batch shape.
pub fn check_spd_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(18);
    for (batch, n) in SPD_SIZES {
        for shift in [0.5, 3.0] {
            let (a, av) = input(b, &spd_batch(&mut r, batch, n, shift), &[batch, n, n]);
            let ld = a.spd_logdet().unwrap_or_else(|e| panic!("spd_logdet {batch}x{n}x{n}: {e}"));
            assert_eq!(ld.shape(), &[batch]);
            let want: Vec<f64> = (0..batch)
                .map(|i| {
                    let l = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n).expect("SPD");
                    2.0 * (0..n).map(|j| l[j * n + j].ln()).sum::<f64>()
                })
                .collect();
            assert_close(&format!("spd_logdet {batch}x{n}x{n} shift {shift}"), &ld.to_f64_vec(), &want, tol);
        }
    }
    // A 2-D input gives a rank-0 result; diag(2, 3, 4) has log det log 24.
    let d = Tensor::<B>::from_f64(b, &[2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0], &[3, 3]);
    let ld = d.spd_logdet().expect("diagonal SPD");
    assert_eq!(ld.shape(), &[] as &[usize]);
    assert_close("spd_logdet of diag(2, 3, 4)", &[ld.scalar()], &[24f64.ln()], tol);
}

fn expect_not_pd<T: std::fmt::Debug>(what: &str, res: crate::Result<T>, index: usize) {
    match res {
        Err(Error::NotPositiveDefinite { index: i, .. }) if i == index => {}
        other => panic!("{what}: expected NotPositiveDefinite for matrix {index}, got {other:?}"),
    }
}

/// Every SPD routine returns [`Error::NotPositiveDefinite`] naming the failing
/// matrix of the batch, for an indefinite matrix (small and large) and for a
/// zero matrix; the message says "not positive definite".
pub fn check_spd_not_positive_definite<B: Backend>(b: &B) {
    let mut r = rng(19);
    for n in [1usize, 4, 70] {
        let good = spd_batch(&mut r, 2, n, 0.5);
        let mut data = good[..n * n].to_vec();
        data.extend(indefinite(n));
        data.extend(&good[n * n..]);
        let a = Tensor::<B>::from_f64(b, &data, &[3, n, n]);
        let rhs = Tensor::<B>::full(b, &[3, n, 2], 1.0);
        expect_not_pd(&format!("cholesky n={n}"), a.cholesky(), 1);
        expect_not_pd(&format!("spd_inverse n={n}"), a.spd_inverse(), 1);
        expect_not_pd(&format!("spd_logdet n={n}"), a.spd_logdet(), 1);
        expect_not_pd(&format!("spd_solve n={n}"), a.spd_solve(&rhs), 1);
        let zero = Tensor::<B>::zeros(b, &[n, n]);
        expect_not_pd(&format!("spd_inverse of zeros n={n}"), zero.spd_inverse(), 0);
        let msg = a.spd_logdet().map(|_| ()).expect_err("indefinite matrix").to_string();
        assert!(
            msg.contains("not positive definite") && msg.contains("spd_logdet"),
            "unclear message: {msg}"
        );
    }
}

/// `sym_eigen`: `A V = V diag(l)`, `V^T V = I`, eigenvalues in decreasing
/// order and equal to the Jacobi reference; covers a repeated eigenvalue, a
/// diagonal matrix, order 1 and a batch.
pub fn check_sym_eigen<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(20);
    let mut cases: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for (batch, n) in [(1usize, 1usize), (3, 5), (1, 16), (1, 70)] {
        let mut data = Vec::new();
        for _ in 0..batch {
            let x = uniform(&mut r, n * n, -1.0, 1.0);
            data.extend((0..n * n).map(|i| x[i] + x[(i % n) * n + i / n]));
        }
        cases.push((batch, n, data));
    }
    // Repeated eigenvalue: Q diag(3, 3, 1, -2) Q^T with a Householder Q.
    let n = 4;
    let u = [1.0, -2.0, 0.5, 1.5];
    let uu: f64 = u.iter().map(|x| x * x).sum();
    let q: Vec<f64> = (0..16).map(|i| identity(n)[i] - 2.0 * u[i / n] * u[i % n] / uu).collect();
    let mut dq = q.clone();
    for (i, v) in dq.iter_mut().enumerate() {
        *v *= [3.0, 3.0, 1.0, -2.0][i % n];
    }
    cases.push((1, n, ref_matmul(&dq, &q, n, n, n, false, true)));
    cases.push((1, 3, vec![2.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0]));
    for (batch, n, data) in cases {
        let (a, av) = input(b, &data, &[batch, n, n]);
        let (vals, vecs) = a.sym_eigen().unwrap_or_else(|e| panic!("sym_eigen {batch}x{n}x{n}: {e}"));
        assert_eq!(vals.shape(), &[batch, n]);
        assert_eq!(vecs.shape(), &[batch, n, n]);
        let (lv, vv) = (vals.to_f64_vec(), vecs.to_f64_vec());
        for i in 0..batch {
            let ai = &av[i * n * n..(i + 1) * n * n];
            let li = &lv[i * n..(i + 1) * n];
            let vi = &vv[i * n * n..(i + 1) * n * n];
            let want = ref_sym_eigenvalues(ai, n);
            let scale = max_abs(&want).max(1.0);
            let what = format!("sym_eigen matrix {i} of {batch}x{n}x{n}");
            assert!(li.windows(2).all(|w| w[0] >= w[1]), "{what}: eigenvalues not decreasing: {li:?}");
            assert_close_scaled(&format!("{what}: eigenvalues"), li, &want, tol, scale);
            let av_ = ref_matmul(ai, vi, n, n, n, false, false);
            let vl: Vec<f64> = (0..n * n).map(|e| vi[e] * li[e % n]).collect();
            assert_close_scaled(&format!("{what}: A V = V diag(l)"), &av_, &vl, tol, scale);
            let vtv = ref_matmul(vi, vi, n, n, n, true, false);
            assert_close_scaled(&format!("{what}: V^T V = I"), &vtv, &identity(n), tol, 1.0);
        }
    }
}

// ====================================================================
// Checks: complex Hermitian linear algebra
// ====================================================================

/// `herm_inverse` matches the reference inverse and `A A^-1 = I`.
pub fn check_herm_inverse<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(21);
    for (batch, n) in SPD_SIZES {
        let (re, im) = hpd_batch(&mut r, batch, n);
        let (re, im) = (rounded::<B>(&re), rounded::<B>(&im));
        let a = crate::ComplexTensor::new(
            Tensor::from_f64(b, &re, &[batch, n, n]),
            Tensor::from_f64(b, &im, &[batch, n, n]),
        );
        let inv = a.herm_inverse().unwrap_or_else(|e| panic!("herm_inverse {batch}x{n}x{n}: {e}"));
        let (ir, ii) = inv.to_f64_vecs();
        let ac = to_c64(&re, &im);
        let mut want = Vec::new();
        let mut prod = Vec::new();
        for i in 0..batch {
            let ai = &ac[i * n * n..(i + 1) * n * n];
            let l = ref_herm_cholesky(ai, n).expect("HPD");
            let eye: Vec<C64> = identity(n).into_iter().map(|v| C64::new(v, 0.0)).collect();
            want.extend(ref_herm_solve(&l, &eye, n, n));
            prod.extend(ref_cmatmul(
                ai,
                &to_c64(&ir[i * n * n..(i + 1) * n * n], &ii[i * n * n..(i + 1) * n * n]),
                n,
                n,
                n,
            ));
        }
        let (wr, wi) = planes(&want);
        assert_close(&format!("herm_inverse re {batch}x{n}x{n}"), &ir, &wr, tol);
        assert_close(&format!("herm_inverse im {batch}x{n}x{n}"), &ii, &wi, tol);
        let (pr, pi) = planes(&prod);
        let ident: Vec<f64> = (0..batch).flat_map(|_| identity(n)).collect();
        assert_close(&format!("A A^-1 = I (re) {batch}x{n}x{n}"), &pr, &ident, tol);
        assert_close_scaled(&format!("A A^-1 = I (im) {batch}x{n}x{n}"), &pi, &vec![0.0; pi.len()], tol, 1.0);
    }
}

/// `herm_solve` matches the reference solution for several right-hand sides.
pub fn check_herm_solve<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(22);
    for (batch, n) in SPD_SIZES {
        for nrhs in [1usize, 3] {
            let (re, im) = hpd_batch(&mut r, batch, n);
            let (re, im) = (rounded::<B>(&re), rounded::<B>(&im));
            let (br, bi) = (
                rounded::<B>(&uniform(&mut r, batch * n * nrhs, -1.0, 1.0)),
                rounded::<B>(&uniform(&mut r, batch * n * nrhs, -1.0, 1.0)),
            );
            let a = crate::ComplexTensor::new(
                Tensor::from_f64(b, &re, &[batch, n, n]),
                Tensor::from_f64(b, &im, &[batch, n, n]),
            );
            let rhs = crate::ComplexTensor::new(
                Tensor::from_f64(b, &br, &[batch, n, nrhs]),
                Tensor::from_f64(b, &bi, &[batch, n, nrhs]),
            );
            let x = a.herm_solve(&rhs).unwrap_or_else(|e| panic!("herm_solve {batch}x{n}x{n}: {e}"));
            assert_eq!(x.shape(), &[batch, n, nrhs]);
            let (ac, bc) = (to_c64(&re, &im), to_c64(&br, &bi));
            let want: Vec<C64> = (0..batch)
                .flat_map(|i| {
                    let l = ref_herm_cholesky(&ac[i * n * n..(i + 1) * n * n], n).expect("HPD");
                    ref_herm_solve(&l, &bc[i * n * nrhs..(i + 1) * n * nrhs], n, nrhs)
                })
                .collect();
            let (wr, wi) = planes(&want);
            let (xr, xi) = x.to_f64_vecs();
            assert_close(&format!("herm_solve re {batch}x{n}x{n}, {nrhs} rhs"), &xr, &wr, tol);
            assert_close(&format!("herm_solve im {batch}x{n}x{n}, {nrhs} rhs"), &xi, &wi, tol);
        }
    }
}

/// `herm_inverse_logdet` equals `herm_inverse` and `herm_logdet` of the same matrices.
pub fn check_herm_inverse_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(29);
    for (batch, n) in SPD_SIZES {
        let (re, im) = hpd_batch(&mut r, batch, n);
        let a = crate::ComplexTensor::new(
            Tensor::from_f64(b, &re, &[batch, n, n]),
            Tensor::from_f64(b, &im, &[batch, n, n]),
        );
        let what = format!("herm_inverse_logdet {batch}x{n}x{n}");
        let (inv, ld) = a.herm_inverse_logdet().unwrap_or_else(|e| panic!("{what}: {e}"));
        let inv0 = a.herm_inverse().unwrap_or_else(|e| panic!("{what}: {e}"));
        let ld0 = a.herm_logdet().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(inv.shape(), inv0.shape(), "{what}");
        assert_eq!(ld.shape(), &[batch], "{what}");
        let scale = max_abs(&inv0.re.to_f64_vec()).max(max_abs(&inv0.im.to_f64_vec())).max(1.0);
        assert_close_scaled(&format!("{what} re"), &inv.re.to_f64_vec(), &inv0.re.to_f64_vec(), tol, scale);
        assert_close_scaled(&format!("{what} im"), &inv.im.to_f64_vec(), &inv0.im.to_f64_vec(), tol, scale);
        assert_close(&format!("{what} logdet"), &ld.to_f64_vec(), &ld0.to_f64_vec(), tol);
    }
    let bad = crate::ComplexTensor::new(
        Tensor::from_f64(b, &[1.0, 0.0, 0.0, -1.0], &[1, 2, 2]),
        Tensor::zeros(b, &[1, 2, 2]),
    );
    assert!(bad.herm_inverse_logdet().is_err(), "herm_inverse_logdet of an indefinite matrix must fail");
}

/// `herm_logdet` equals `2 sum log L_ii` of the reference complex factor.
pub fn check_herm_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(23);
    for (batch, n) in SPD_SIZES {
        let (re, im) = hpd_batch(&mut r, batch, n);
        let (re, im) = (rounded::<B>(&re), rounded::<B>(&im));
        let a = crate::ComplexTensor::new(
            Tensor::from_f64(b, &re, &[batch, n, n]),
            Tensor::from_f64(b, &im, &[batch, n, n]),
        );
        let ld = a.herm_logdet().unwrap_or_else(|e| panic!("herm_logdet {batch}x{n}x{n}: {e}"));
        assert_eq!(ld.shape(), &[batch]);
        let ac = to_c64(&re, &im);
        let want: Vec<f64> = (0..batch)
            .map(|i| {
                let l = ref_herm_cholesky(&ac[i * n * n..(i + 1) * n * n], n).expect("HPD");
                2.0 * (0..n).map(|j| l[j * n + j].re.ln()).sum::<f64>()
            })
            .collect();
        assert_close(&format!("herm_logdet {batch}x{n}x{n}"), &ld.to_f64_vec(), &want, tol);
    }
}

/// The Hermitian routines return [`Error::NotPositiveDefinite`] naming the failing matrix.
pub fn check_herm_not_positive_definite<B: Backend>(b: &B) {
    let mut r = rng(24);
    for n in [1usize, 4, 70] {
        let (mut re, mut im) = hpd_batch(&mut r, 2, n);
        // Matrix 1: an indefinite real symmetric matrix (a Hermitian one with zero imaginary part).
        re.splice(n * n..n * n, indefinite(n));
        im.splice(n * n..n * n, vec![0.0; n * n]);
        let a = crate::ComplexTensor::new(
            Tensor::<B>::from_f64(b, &re, &[3, n, n]),
            Tensor::from_f64(b, &im, &[3, n, n]),
        );
        let rhs =
            crate::ComplexTensor::new(Tensor::<B>::full(b, &[3, n, 1], 1.0), Tensor::zeros(b, &[3, n, 1]));
        expect_not_pd(&format!("herm_inverse n={n}"), a.herm_inverse(), 1);
        expect_not_pd(&format!("herm_logdet n={n}"), a.herm_logdet(), 1);
        expect_not_pd(&format!("herm_solve n={n}"), a.herm_solve(&rhs), 1);
    }
}

// ====================================================================
// Checks: Fourier transforms
// ====================================================================

/// Lengths for the FFT checks: 1, 2, powers of two, odd composites and primes (5, 7, 17, 31).
const FFT_LENGTHS: [usize; 11] = [1, 2, 5, 7, 8, 9, 12, 15, 16, 17, 31];

/// Complex `fft` along a middle axis against the O(n^2) DFT, forward and
/// inverse, both norms; the round trip returns the input; Parseval holds for Ortho.
pub fn check_fft<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(25);
    for n in FFT_LENGTHS {
        let shape = [2usize, n, 3];
        let v = shape_view(&shape, 1);
        let (re, xr) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let (im, xi) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let x = crate::ComplexTensor::new(re, im);
        let xc = to_c64(&xr, &xi);
        for norm in [FftNorm::Backward, FftNorm::Ortho] {
            for inverse in [false, true] {
                let out = x.fft(1, inverse, norm);
                let (gr, gi) = out.to_f64_vecs();
                let (wr, wi) = planes(&ref_dft(&xc, v, inverse, norm));
                let what = format!("fft n={n} inverse={inverse} {norm:?}");
                let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
                assert_close_scaled(&format!("{what} (re)"), &gr, &wr, tol, scale);
                assert_close_scaled(&format!("{what} (im)"), &gi, &wi, tol, scale);
            }
            let back = x.fft(1, false, norm).fft(1, true, norm);
            let (br, bi) = back.to_f64_vecs();
            assert_close(&format!("ifft(fft(x)) n={n} {norm:?} (re)"), &br, &xr, tol);
            assert_close(&format!("ifft(fft(x)) n={n} {norm:?} (im)"), &bi, &xi, tol);
        }
        let e_in: f64 = xr.iter().chain(&xi).map(|v| v * v).sum();
        let e_out = x.fft(1, false, FftNorm::Ortho).abs_sq().sum_all();
        assert_close(&format!("Parseval n={n}"), &[e_out], &[e_in], tol);
    }
    // First and last axis, and many signals (parallel path).
    for (shape, axis) in [(vec![6usize, 4], 0usize), (vec![3, 2, 10], 2), (vec![512, 24], 1)] {
        let v = shape_view(&shape, axis);
        let (re, xr) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let (im, xi) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let out = crate::ComplexTensor::new(re, im).fft(axis as isize, false, FftNorm::Backward);
        let (gr, gi) = out.to_f64_vecs();
        let (wr, wi) = planes(&ref_dft(&to_c64(&xr, &xi), v, false, FftNorm::Backward));
        let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
        assert_close_scaled(&format!("fft {shape:?} axis {axis} (re)"), &gr, &wr, tol, scale);
        assert_close_scaled(&format!("fft {shape:?} axis {axis} (im)"), &gi, &wi, tol, scale);
    }
}

/// `rfft` along a middle axis equals the first `n/2 + 1` bins of the DFT, for even and odd `n`, both norms.
pub fn check_rfft<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(26);
    for n in FFT_LENGTHS {
        let shape = [2usize, n, 3];
        let (x, xv) = random_input(b, &mut r, &shape, -1.0, 1.0);
        for norm in [FftNorm::Backward, FftNorm::Ortho] {
            let out = x.rfft(1, norm);
            let h = n / 2 + 1;
            assert_eq!(out.shape(), &[2, h, 3], "rfft n={n}");
            let full = ref_dft(
                &xv.iter().map(|&v| C64::new(v, 0.0)).collect::<Vec<_>>(),
                shape_view(&shape, 1),
                false,
                norm,
            );
            // Keep bins 0..h of each signal.
            let mut wr = Vec::new();
            let mut wi = Vec::new();
            for o in 0..2 {
                for k in 0..h {
                    for j in 0..3 {
                        let c = full[(o * n + k) * 3 + j];
                        wr.push(c.re);
                        wi.push(c.im);
                    }
                }
            }
            let (gr, gi) = out.to_f64_vecs();
            let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
            assert_close_scaled(&format!("rfft n={n} {norm:?} (re)"), &gr, &wr, tol, scale);
            assert_close_scaled(&format!("rfft n={n} {norm:?} (im)"), &gi, &wi, tol, scale);
        }
    }
}

/// `irfft` inverts `rfft` for even and odd `n` and both norms, and on an
/// arbitrary half spectrum equals NumPy's `irfft` (the Hermitian extension,
/// with the imaginary parts of bins 0 and `n/2` ignored).
pub fn check_irfft<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(27);
    for n in FFT_LENGTHS {
        let shape = [2usize, n, 3];
        let (x, xv) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let h = n / 2 + 1;
        for norm in [FftNorm::Backward, FftNorm::Ortho] {
            let back = x.rfft(1, norm).irfft(1, n, norm);
            assert_eq!(back.shape(), &shape);
            assert_close(&format!("irfft(rfft(x)) n={n} {norm:?}"), &back.to_f64_vec(), &xv, tol);
            let hs = [2usize, h, 3];
            let (re, sr) = random_input(b, &mut r, &hs, -1.0, 1.0);
            let (im, si) = random_input(b, &mut r, &hs, -1.0, 1.0);
            let out = crate::ComplexTensor::new(re, im).irfft(1, n, norm);
            let want = ref_irfft(&to_c64(&sr, &si), shape_view(&hs, 1), n, norm);
            assert_close(
                &format!("irfft of an arbitrary half spectrum n={n} {norm:?}"),
                &out.to_f64_vec(),
                &want,
                tol,
            );
        }
    }
}

// ====================================================================
// The macro
// ====================================================================

/// Expands to a module `$name` with one `#[test]` per check of
/// [`crate::testing`], each running on a fresh `$backend`.
///
/// `conformance_tests!(name, expr)` takes a backend expression;
/// `conformance_tests!(name, optional expr)` takes an `Option<backend>` and
/// every test prints why it is skipped when it is `None` (no GPU adapter).
/// Names in `expr` resolve in the invoking module.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, optional $backend:expr) => {
        $crate::conformance_tests!(@module $name, optional $backend);
    };
    ($name:ident, $backend:expr) => {
        $crate::conformance_tests!(@module $name, required $backend);
    };
    (@module $name:ident, $mode:ident $backend:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@tests $mode $backend;
                check_upload_download, check_full, check_unary, check_binary, check_binary_broadcast,
                check_binary_strided, check_permute, check_narrow, check_concat, check_index_select,
                check_index_add, check_reduce, check_softmax, check_matmul, check_matmul_batched,
                check_matmul_empty, check_cholesky, check_spd_solve, check_spd_inverse, check_spd_logdet,
                check_spd_not_positive_definite, check_sym_eigen, check_herm_inverse, check_herm_solve,
                check_herm_logdet, check_herm_inverse_logdet, check_herm_not_positive_definite, check_fft, check_rfft, check_irfft);
        }
    };
    (@tests required $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let backend = $backend;
                $crate::testing::$check(&backend);
            }
        )*
    };
    (@tests optional $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                match $backend {
                    ::core::option::Option::Some(backend) => $crate::testing::$check(&backend),
                    ::core::option::Option::None => {
                        eprintln!("{}: skipped, backend not available", stringify!($check));
                    }
                }
            }
        )*
    };
}
