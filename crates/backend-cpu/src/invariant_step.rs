//! One shift-invariant ReduNet layer update (4.1.27, memberships by 4.1.10) on the CPU in three passes without temporaries: compressed norms and memberships per sample, the combination per frequency with partial feature norms, the normalisation.
//!
//! The op-by-op default body runs one tiny Gram product and one tiny
//! combination product per (frequency, sample) and writes several
//! temporaries of the size of the products; here every value of the products
//! is read twice and the new features written once.

use crate::lanes::{add_partials, lanes_dot};
use crate::CpuElem;
use rate_core::invariant_step::{InvariantStepSpec, NORM_CLAMP};
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
        p.fill(T::zero());
        for (fi, &wf) in weights.iter().enumerate() {
            let yb = &y[(fi * n + i) * block..(fi * n + i + 1) * block];
            for (acc, row) in p.iter_mut().zip(yb[width..].chunks_exact(width)) {
                *acc += wf * lanes_dot(row, row);
            }
        }
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
            for (i, (o, p)) in of.chunks_exact_mut(width).zip(part.iter_mut()).enumerate() {
                let row = (fi * n + i) * width;
                o.copy_from_slice(&v[row..row + width]);
                let yb = &y[(fi * n + i) * block..(fi * n + i + 1) * block];
                for (&cj, yj) in coef[i * g..(i + 1) * g].iter().zip(yb.chunks_exact(width)) {
                    o.iter_mut().zip(yj).for_each(|(a, &b)| *a += cj * b);
                }
                *p = weights[fi] * lanes_dot(o, o);
            }
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

/// The real operand `[F, 2C, 2gC]` of packed operators `[F, g, C, C]`
/// (see [`rate_core::invariant_step`]), frequencies in parallel, every entry
/// read straight from its triangle.
pub fn real_operand<T: CpuElem>(packed: &[T], f: usize, g: usize, c: usize) -> Vec<T> {
    let cols = 2 * g * c;
    let mut out = vec![T::zero(); f * 2 * c * cols];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(2 * c * cols).zip(packed.par_chunks(g * c * c)).for_each(|(o, p)| {
        for (row, orow) in o.chunks_exact_mut(cols).enumerate() {
            let (imag_in, r) = (row >= c, row % c);
            for (j, blk) in orow.chunks_exact_mut(2 * c).enumerate() {
                let pj = &p[j * c * c..(j + 1) * c * c];
                let (re_out, im_out) = blk.split_at_mut(c);
                for oc in 0..c {
                    let re = pj[r.min(oc) * c + r.max(oc)];
                    // Im A[r][oc]: stored below the diagonal, antisymmetric
                    let im = match r.cmp(&oc) {
                        std::cmp::Ordering::Greater => pj[r * c + oc],
                        std::cmp::Ordering::Less => -pj[oc * c + r],
                        std::cmp::Ordering::Equal => T::zero(),
                    };
                    // row (real part of the input): [Re, -Im]; (imaginary part): [Im, Re]
                    if imag_in {
                        re_out[oc] = im;
                        im_out[oc] = re;
                    } else {
                        re_out[oc] = re;
                        im_out[oc] = -im;
                    }
                }
            }
        }
    });
    out
}
