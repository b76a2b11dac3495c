//! The update of one shift-invariant ReduNet layer in the frequency domain (4.1.27 with the membership estimate of 4.1.10): memberships from the compressed norms and the normalised new features, from each sample's products with `E` and the `C^j` at every stored frequency, as fused kernels (`Kernels::invariant_step`, `Kernels::invariant_products`) with reference bodies built here from tensor ops.
//!
//! With `y[f, i, 0, :] = E(f) v[f, i]` and `y[f, i, j, :] = C^j(f) v[f, i]`
//! (real and imaginary parts side by side, `width` values), frequency
//! weights `w_f` (1 or 2: the implied conjugate half) and class weights
//! `gamma_j`:
//!
//! ```text
//! sq[i, j]  = sum_f w_f ||y[f, i, j, :]||^2                 (j = 1..k)
//! pi[i, :]  = softmax_j(-lambda max(sqrt(sq[i, j]), 1e-8))
//! u[f, i]   = v[f, i] + eta y[f, i, 0] - eta sum_j gamma_j pi[i, j] y[f, i, j]
//! v'[f, i]  = u[f, i] / max(sqrt(sum_f w_f ||u[f, i]||^2), 1e-8)
//! ```
//!
//! The products come from the real operand `[F, 2C, 2(k+1)C]` of the layer's
//! Hermitian-packed operators ([`real_operand_reference`], the kernel `Kernels::real_operand`):
//! a packed `C x C` matrix `P` holds `Re A` on and above the diagonal and
//! `Im A` below it, and the operand's block `(part, j, part')` holds
//! `[[Re A_j, -Im A_j], [Im A_j, Re A_j]]` (rows: real, imaginary part of the input).

use crate::backend::Backend;
use crate::tensor::{ComplexTensor, Tensor};

/// Clamp of the norms (compressed norms and the feature norm).
pub const NORM_CLAMP: f64 = 1e-8;

/// Shape and constants of one update: `v` is `[freqs, n, width]`, `y` is
/// `[freqs, n, classes + 1, width]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvariantStepSpec {
    /// Stored frequencies `F`.
    pub freqs: usize,
    /// Samples.
    pub n: usize,
    /// Classes `k`.
    pub classes: usize,
    /// Values per sample and frequency (`2C`: real and imaginary parts).
    pub width: usize,
    /// Step size `eta`.
    pub eta: f64,
    /// Softmax sharpness `lambda`.
    pub lambda: f64,
}

/// The spec of one step from the shapes of the features `[F, n, width]`, the
/// products `[F, n, k+1, width]`, the frequency weights `[F]` and the class
/// weights `[k]` (all of them checked).
pub(crate) fn spec_of(shapes: [&[usize]; 4], eta: f64, lambda: f64) -> InvariantStepSpec {
    let [v, y, weights, gamma] = shapes;
    assert!(v.len() == 3, "invariant_step: features {v:?} are not [F, n, width]");
    let (f, n, width) = (v[0], v[1], v[2]);
    let k: usize = gamma.iter().product();
    assert!(
        k > 0 && y == [f, n, k + 1, width] && weights.iter().product::<usize>() == f,
        "invariant_step: features {v:?}, products {y:?}, frequency weights {weights:?} and class weights {gamma:?} do not match"
    );
    InvariantStepSpec { freqs: f, n, classes: k, width, eta, lambda }
}

/// The default body of [`super::Kernels::invariant_step`] (tensor ops; also the
/// reference of fused kernels).
pub fn invariant_step_reference<B: Backend>(
    v: &Tensor<B>,
    y: &Tensor<B>,
    weights: &Tensor<B>,
    gamma: &Tensor<B>,
    eta: f64,
    lambda: f64,
) -> (Tensor<B>, Tensor<B>) {
    let InvariantStepSpec { freqs: f, n, classes: k, width, .. } =
        spec_of([v.shape(), y.shape(), weights.shape(), gamma.shape()], eta, lambda);
    let g = k + 1;
    let be = v.backend();
    let weights = weights.reshape(&[f, 1]);
    let y = y.reshape(&[f * n, g, width]);
    // ||A_j v||^2 over the full spectrum, [n, g]: diagonals of the per-(f, i) Gram matrices
    let diag: Vec<usize> = (0..g).map(|j| j * g + j).collect();
    let gram = y.matmul_t(&y, false, true).reshape(&[f, n, g * g]).index_select(2, &diag);
    let sq = gram.mul(&weights.reshape(&[f, 1, 1])).sum_axis(0, false);
    let norms = sq.narrow(1, 1, k).sqrt().clamp_min(NORM_CLAMP);
    let pi = norms.scale(-lambda).softmax(1);
    // v + eta E v - eta sum_j gamma_j pi_j C^j v, as a (1 x g)(g x width) product per (f, i)
    let coef =
        Tensor::cat(&[&Tensor::full(be, &[n, 1], eta), &pi.mul(&gamma.reshape(&[1, k])).scale(-eta)], 1);
    let coef = coef.reshape(&[1, n * g]).index_select(0, &vec![0; f]).reshape(&[f * n, 1, g]);
    let u = v.add(&coef.matmul(&y).reshape(&[f, n, width]));
    let norm = u.square().sum_axis(2, false).mul(&weights).sum_axis(0, false).sqrt();
    (u.div(&norm.clamp_min(NORM_CLAMP).reshape(&[1, n, 1])), pi)
}

/// Hermitian operators `[F, g, C, C]` (both planes) packed as `[F, g, C, C]`
/// reals: `Re A` on and above the diagonal, `Im A` below it (the layout
/// [`real_operand_reference`] unpacks).
pub fn pack_operators<B: Backend>(ops: &ComplexTensor<B>) -> Tensor<B> {
    let s = ops.re.shape();
    assert!(
        s.len() == 4 && s[2] == s[3] && ops.im.shape() == s,
        "pack_operators: operators {:?} / {:?} are not [F, g, C, C]",
        s,
        ops.im.shape()
    );
    let (f, g, c) = (s[0], s[1], s[2]);
    let both = Tensor::cat(&[&ops.re.reshape(&[f, g, c * c]), &ops.im.reshape(&[f, g, c * c])], 2);
    // from [Re A, Im A] (2 C C): row <= column from the real plane, else the imaginary one
    let plan: Vec<usize> = (0..c * c).map(|i| if i / c <= i % c { i } else { c * c + i }).collect();
    both.index_select(2, &plan).reshape(&[f, g, c, c])
}

/// Shapes of [`super::Kernels::invariant_products`]: `freqs` stored frequencies,
/// `n` samples, `ops` operators (`k + 1`) of `channels x channels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvariantProductsSpec {
    /// Stored frequencies `F`.
    pub freqs: usize,
    /// Samples `n`.
    pub n: usize,
    /// Operators per frequency `g = k + 1` (`E`, then the `C^j`).
    pub ops: usize,
    /// Channels `C`.
    pub channels: usize,
}

/// The default body of [`super::Kernels::real_operand`]: one gather from
/// `[P, -P, 0]` so that the signs come with the indices.
pub fn real_operand_reference<B: Backend>(packed: &Tensor<B>) -> Tensor<B> {
    let (f, g, c) = (packed.dim(0), packed.dim(1), packed.dim(2));
    let p = packed.reshape(&[f, g * c * c]);
    let src = Tensor::cat(&[&p, &p.neg(), &Tensor::zeros(p.backend(), &[f, 1])], 1);
    src.index_select(1, &unpack_plan(g, c)).reshape(&[f, 2 * c, 2 * g * c])
}

/// Gather indices from `[P, -P, 0]` (packed `[k+1, C, C]` flattened, its
/// negation, a zero) to the real operand `[2C, 2(k+1)C]`: row `(part, r)`,
/// column `(j, part', c)` (part 0 real, 1 imaginary).
fn unpack_plan(ops: usize, c: usize) -> Vec<usize> {
    let cols = 2 * ops * c;
    let mut idx = Vec::with_capacity(2 * c * cols);
    // Im A[r][col] from the packed strict lower triangle.
    let im = |base: usize, r: usize, col: usize| -> (usize, f64) {
        match r.cmp(&col) {
            std::cmp::Ordering::Greater => (base + r * c + col, 1.0),
            std::cmp::Ordering::Less => (base + col * c + r, -1.0),
            std::cmp::Ordering::Equal => (base, 0.0),
        }
    };
    for row in 0..2 * c {
        let (rb, r) = (row / c, row % c);
        for col in 0..cols {
            let (j, cb, oc) = (col / (2 * c), (col / c) % 2, col % c);
            let base = j * c * c;
            let (i, s) = match (rb, cb) {
                (0, 0) | (1, 1) => (base + r.min(oc) * c + r.max(oc), 1.0),
                (0, _) => {
                    let (i, s) = im(base, r, oc);
                    (i, -s)
                }
                _ => im(base, r, oc),
            };
            let len = ops * c * c;
            idx.push(if s > 0.0 {
                i
            } else if s < 0.0 {
                len + i
            } else {
                2 * len
            });
        }
    }
    idx
}
