//! One shift-invariant ReduNet layer update (4.1.27, memberships by 4.1.10) on the CPU in three passes without temporaries: compressed norms and memberships per sample, the combination per frequency with partial feature norms, the normalisation.
//!
//! The op-by-op default body runs one tiny Gram product and one tiny
//! combination product per (frequency, sample) and writes several
//! temporaries of the size of the products; here every value of the products
//! is read twice and the new features written once.

use crate::host::clear_upper_simd_state;
use crate::lanes::{add_partials, lanes_dot};
use crate::CpuElem;
use faer::{Accum, MatMut, MatRef};
use rate_core::kernels::invariant::{InvariantProductsSpec, InvariantStepSpec, NORM_CLAMP};
use rayon::prelude::*;

/// `(v', pi)`: see [`rate_core::invariant_step`].
pub fn invariant_step<T: CpuElem>(
    v: &[T],
    y: &[T],
    weights: &[T],
    gamma: &[T],
    s: InvariantStepSpec,
) -> (Vec<T>, Vec<T>) {
    let InvariantStepSpec { freqs: f, n, classes: k, width, eta, lambda } = s;
    let g = k + 1;
    let block = g * width;
    let clamp = T::of(NORM_CLAMP);
    let (eta, lambda) = (T::of(eta), T::of(lambda));
    // pass 1: per sample, the compressed norms over the full spectrum and the memberships
    let mut pi = vec![T::zero(); n * k];
    pi.par_chunks_mut(k).enumerate().for_each(|(i, p)| {
        pulp::Arch::new().dispatch(SampleNorms { y, weights, i, n, width, p: &mut *p });
        let mut shift = T::neg_infinity();
        for x in p.iter_mut() {
            *x = -lambda * x.sqrt().max(clamp);
            shift = shift.max(*x);
        }
        let total = T::exp_shift_sum(p, shift);
        p.iter_mut().for_each(|x| *x /= total);
    });
    // the combination coefficients of each sample: eta for E, -eta gamma_j pi_j for C^j
    let mut coef = vec![T::zero(); n * g];
    for (c, p) in coef.chunks_exact_mut(g).zip(pi.chunks_exact(k)) {
        c[0] = eta;
        for ((cj, &pj), &gj) in c[1..].iter_mut().zip(p).zip(gamma) {
            *cj = -eta * gj * pj;
        }
    }
    // pass 2: u = v + sum_j coef_j y_j per frequency, with each sample's weighted ||u||^2
    let mut out = vec![T::zero(); f * n * width];
    let norms = out
        .par_chunks_mut(n * width)
        .enumerate()
        .map(|(fi, of)| {
            let mut part = vec![T::zero(); n];
            pulp::Arch::new().dispatch(Combine {
                v: &v[fi * n * width..(fi + 1) * n * width],
                y: &y[fi * n * block..(fi + 1) * n * block],
                coef: &coef,
                wf: weights[fi],
                width,
                out: of,
                part: &mut part,
            });
            part
        })
        .reduce(|| vec![T::zero(); n], add_partials);
    // pass 3: normalise every sample over the full spectrum
    let inv: Vec<T> = norms.iter().map(|&q| T::one() / q.sqrt().max(clamp)).collect();
    out.par_chunks_mut(n * width).for_each(|of| {
        for (o, &r) in of.chunks_exact_mut(width).zip(&inv) {
            o.iter_mut().for_each(|x| *x *= r);
        }
    });
    (out, pi)
}

/// Pass 1 of [`invariant_step`] for sample `i`: `p[j] = sum_f w_f ||y[f, i, 1 + j]||^2`,
/// compiled for the CPU's best instruction set by `pulp` (as the row kernels in `nn.rs`).
struct SampleNorms<'a, T> {
    y: &'a [T],
    weights: &'a [T],
    i: usize,
    n: usize,
    width: usize,
    p: &'a mut [T],
}

impl<T: CpuElem> pulp::WithSimd for SampleNorms<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let SampleNorms { y, weights, i, n, width, p } = self;
        let block = (p.len() + 1) * width;
        p.fill(T::zero());
        for (fi, &wf) in weights.iter().enumerate() {
            let yb = &y[(fi * n + i) * block..(fi * n + i + 1) * block];
            for (acc, row) in p.iter_mut().zip(yb[width..].chunks_exact(width)) {
                *acc += wf * lanes_dot(row, row);
            }
        }
    }
}

/// Pass 2 of [`invariant_step`] at one frequency: `u_i = v_i + sum_j coef[i, j] y[i, j]`
/// into `out` and `w_f ||u_i||^2` into `part`, compiled for the CPU's best
/// instruction set by `pulp`.
struct Combine<'a, T> {
    v: &'a [T],
    y: &'a [T],
    coef: &'a [T],
    wf: T,
    width: usize,
    out: &'a mut [T],
    part: &'a mut [T],
}

impl<T: CpuElem> pulp::WithSimd for Combine<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Combine { v, y, coef, wf, width, out, part } = self;
        let g = coef.len() / part.len().max(1);
        let block = g * width;
        for (i, ((o, p), vi)) in
            out.chunks_exact_mut(width).zip(part.iter_mut()).zip(v.chunks_exact(width)).enumerate()
        {
            o.copy_from_slice(vi);
            for (&cj, yj) in
                coef[i * g..(i + 1) * g].iter().zip(y[i * block..(i + 1) * block].chunks_exact(width))
            {
                o.iter_mut().zip(yj).for_each(|(a, &b)| *a += cj * b);
            }
            *p = wf * lanes_dot(o, o);
        }
    }
}

/// The real operand `[F, 2C, 2gC]` of packed operators `[F, g, C, C]`
/// (see [`rate_core::invariant_step`]), frequencies in parallel (see [`unfold_operand`]).
pub fn real_operand<T: CpuElem>(packed: &[T], f: usize, g: usize, c: usize) -> Vec<T> {
    let cols = 2 * g * c;
    let mut out = vec![T::zero(); f * 2 * c * cols];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(2 * c * cols)
        .zip(packed.par_chunks(g * c * c))
        .for_each_init(|| vec![T::zero(); c], |col, (o, p)| unfold_operand(p, c, col, o));
    out
}

/// The products `[F, n, 2gC]` of features `[F, n, 2C]` with the real operand
/// of packed operators `[F, g, C, C]` (see [`rate_core::invariant_step::invariant_products`]):
/// frequencies in parallel, each unfolding its `2C x 2gC` operand into
/// per-task scratch (never the whole `[F, 2C, 2gC]`) for one sequential faer product.
pub fn invariant_products<T: CpuElem>(v: &[T], packed: &[T], spec: InvariantProductsSpec) -> Vec<T> {
    let InvariantProductsSpec { freqs: f, n, ops: g, channels: c } = spec;
    let (width, cols) = (2 * c, 2 * g * c);
    let mut out = vec![T::zero(); f * n * cols];
    if out.is_empty() || c == 0 {
        return out;
    }
    out.par_chunks_mut(n * cols)
        .zip(v.par_chunks(n * width))
        .zip(packed.par_chunks(g * c * c))
        .for_each_init(
            || (vec![T::zero(); c], vec![T::zero(); width * cols]),
            |(col, w), ((o, vf), p)| {
                unfold_operand(p, c, col, w);
                let dst = MatMut::from_row_major_slice_mut(o, n, cols);
                let lhs = MatRef::from_row_major_slice(vf, n, width);
                let rhs = MatRef::from_row_major_slice(w, width, cols);
                faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, T::one(), faer::Par::Seq);
                clear_upper_simd_state();
            },
        );
    out
}

/// One frequency's real operand `[2C, 2gC]` into `o` from its `g` packed
/// operators `p` (`[g, C, C]`), row by row: row `r` of `A` is the packed row
/// `r` (`Re` from the diagonal on, `Im` before it) completed by column `r`
/// (`Re A[r][q] = Re A[q][r]` for `q < r`, `Im A[r][q] = -Im A[q][r]` for
/// `q > r`), gathered once into `col`.
fn unfold_operand<T: CpuElem>(p: &[T], c: usize, col: &mut [T], o: &mut [T]) {
    let cols = o.len() / (2 * c);
    let (top, bottom) = o.split_at_mut(c * cols);
    for (j, pj) in p.chunks_exact(c * c).enumerate() {
        for r in 0..c {
            col.iter_mut().zip(pj[r..].iter().step_by(c)).for_each(|(d, &x)| *d = x);
            let row = &pj[r * c..(r + 1) * c];
            let span = r * cols + j * 2 * c..r * cols + (j + 1) * 2 * c;
            // row r (real part of the input): [Re, -Im]; row c + r (imaginary part): [Im, Re]
            let (t_re, t_im) = top[span.clone()].split_at_mut(c);
            let (b_im, b_re) = bottom[span].split_at_mut(c);
            // q < r: Re from the column, Im from the row
            for q in 0..r {
                let (re, im) = (col[q], row[q]);
                t_re[q] = re;
                t_im[q] = -im;
                b_im[q] = im;
                b_re[q] = re;
            }
            t_re[r] = row[r];
            t_im[r] = T::zero();
            b_im[r] = T::zero();
            b_re[r] = row[r];
            // q > r: Re from the row, Im = -(column)
            for q in r + 1..c {
                let (re, im) = (row[q], -col[q]);
                t_re[q] = re;
                t_im[q] = -im;
                b_im[q] = im;
                b_re[q] = re;
            }
        }
    }
}
