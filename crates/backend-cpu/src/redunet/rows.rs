//! The loops of the fixed-dimension layer map (`Kernel::block_small`, 4.1.11-4.1.13), one per function: slices passed as arguments do not alias, which lets the compiler vectorise each loop.

use super::BLOCK;
use crate::exp::fast_exp;
use rate_core::Element;

/// `y = sum_c w[c] z_c` over the `D` feature rows of `z`.
#[inline(always)]
pub(super) fn combine<T: Element, const D: usize>(y: &mut [T], w: &[T], z: &[T]) {
    let (y, w, z) = (&mut y[..BLOCK], &w[..D], &z[..D * BLOCK]);
    for i in 0..BLOCK {
        let mut a = w[0] * z[i];
        for c in 1..D {
            a = a + w[c] * z[c * BLOCK + i];
        }
        y[i] = a;
    }
}

/// `s = -lambda max(||y||, floor)` over the `D` rows of `ys`, and the running maximum `top`.
#[inline(always)]
pub(super) fn exponent<T: Element, const D: usize>(
    s: &mut [f64],
    top: &mut [f64; BLOCK],
    ys: &[T],
    lambda: f64,
    floor: T,
) {
    let (s, ys) = (&mut s[..BLOCK], &ys[..D * BLOCK]);
    for i in 0..BLOCK {
        let mut n2 = ys[i] * ys[i];
        for r in 1..D {
            n2 = n2 + ys[r * BLOCK + i] * ys[r * BLOCK + i];
        }
        let n = n2.sqrt();
        let v = -lambda * (if n > floor { n } else { floor }).f64();
        s[i] = v;
        top[i] = if v > top[i] { v } else { top[i] };
    }
}

/// `e = exp(e - top)`, added into `sum`.
#[inline(always)]
pub(super) fn exp_shifted(e: &mut [f64], sum: &mut [f64; BLOCK], top: &[f64; BLOCK]) {
    let e = &mut e[..BLOCK];
    for i in 0..BLOCK {
        let v = fast_exp(e[i] - top[i]);
        e[i] = v;
        sum[i] += v;
    }
}

/// Keeps the first class with the largest `e` in `yhat`.
#[inline(always)]
pub(super) fn argmax_step(best: &mut [f64; BLOCK], yhat: &mut [u32], e: &[f64], j: u32) {
    let (yhat, e) = (&mut yhat[..BLOCK], &e[..BLOCK]);
    for i in 0..BLOCK {
        let better = e[i] > best[i];
        best[i] = if better { e[i] } else { best[i] };
        yhat[i] = if better { j } else { yhat[i] };
    }
}

#[inline(always)]
pub(super) fn reciprocal(x: &mut [f64; BLOCK]) {
    for v in x.iter_mut() {
        *v = 1.0 / *v;
    }
}

/// `cf = gamma_j e / sum` (with `inv = 1 / sum`).
#[inline(always)]
pub(super) fn coefficient<T: Element>(cf: &mut [T], e: &[f64], inv: &[f64; BLOCK], g: T) {
    let (cf, e) = (&mut cf[..BLOCK], &e[..BLOCK]);
    for i in 0..BLOCK {
        cf[i] = g * T::of(e[i] * inv[i]);
    }
}

#[inline(always)]
pub(super) fn product<T: Element>(out: &mut [T; BLOCK], a: &[T], b: &[T]) {
    let (a, b) = (&a[..BLOCK], &b[..BLOCK]);
    for i in 0..BLOCK {
        out[i] = a[i] * b[i];
    }
}

#[inline(always)]
pub(super) fn add_product<T: Element>(out: &mut [T; BLOCK], a: &[T], b: &[T]) {
    let (a, b) = (&a[..BLOCK], &b[..BLOCK]);
    for i in 0..BLOCK {
        out[i] = out[i] + a[i] * b[i];
    }
}

/// `u = z_c + eta ((E z)_c - clus)`, with `we` row `c` of `E`.
#[inline(always)]
pub(super) fn update<T: Element, const D: usize>(
    u: &mut [T],
    we: &[T],
    z: &[T],
    c: usize,
    clus: &[T; BLOCK],
    eta: T,
) {
    let (u, we, z) = (&mut u[..BLOCK], &we[..D], &z[..D * BLOCK]);
    for i in 0..BLOCK {
        let mut ez = we[0] * z[i];
        for a in 1..D {
            ez = ez + we[a] * z[a * BLOCK + i];
        }
        u[i] = z[c * BLOCK + i] + eta * (ez - clus[i]);
    }
}

/// `z = u / max(||u||, floor)`.
#[inline(always)]
pub(super) fn normalise<T: Element, const D: usize>(z: &mut [T], u: &[T], inv: &mut [T; BLOCK], floor: T) {
    let (z, u) = (&mut z[..D * BLOCK], &u[..D * BLOCK]);
    for i in 0..BLOCK {
        let mut s = u[i] * u[i];
        for c in 1..D {
            s = s + u[c * BLOCK + i] * u[c * BLOCK + i];
        }
        let n = s.sqrt();
        inv[i] = T::one() / if n > floor { n } else { floor };
    }
    for c in 0..D {
        for i in 0..BLOCK {
            z[c * BLOCK + i] = u[c * BLOCK + i] * inv[i];
        }
    }
}
