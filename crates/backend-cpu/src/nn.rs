//! Fused row kernels of the transformer layers on the CPU: LayerNorm forward and backward, softmax along rows and its backward, one pass over each row, rows in parallel.

use crate::CpuElem;
use rayon::prelude::*;
use std::any::Any;

/// Rows handled by one rayon task (about 16K elements, at least one row).
fn rows_per_task(dim: usize) -> usize {
    (1 << 14) / dim.max(1) + 1
}

/// LayerNorm of `rows x dim` (see `rate_core::layer_ops`): `(y, mean, rstd)`.
pub fn layer_norm<T: CpuElem>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    rows: usize,
    dim: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut y = vec![T::zero(); rows * dim];
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    if dim == 0 {
        return (y, mean, rstd);
    }
    let per = rows_per_task(dim);
    let inv_d = T::one() / T::of(dim as f64);
    let eps = T::of(eps);
    y.par_chunks_mut(per * dim)
        .zip(mean.par_chunks_mut(per))
        .zip(rstd.par_chunks_mut(per))
        .enumerate()
        .for_each(|(task, ((yc, mc), rc))| {
            let r0 = task * per;
            for (i, yr) in yc.chunks_mut(dim).enumerate() {
                let xr = &x[(r0 + i) * dim..(r0 + i + 1) * dim];
                let mu = lanes_sum(xr) * inv_d;
                // centred values first (vectorised), then their squares summed
                for j in 0..dim {
                    yr[j] = xr[j] - mu;
                }
                let rs = T::one() / (lanes_dot(yr, yr) * inv_d + eps).sqrt();
                for j in 0..dim {
                    yr[j] = yr[j] * rs * weight[j] + bias[j];
                }
                mc[i] = mu;
                rc[i] = rs;
            }
        });
    (y, mean, rstd)
}

/// Backward of [`layer_norm`]: `(dx, dweight, dbias)`.
pub fn layer_norm_backward<T: CpuElem>(
    x: &[T],
    mean: &[T],
    rstd: &[T],
    weight: &[T],
    grad: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = vec![T::zero(); rows * dim];
    if dim == 0 || rows == 0 {
        return (dx, vec![T::zero(); dim], vec![T::zero(); dim]);
    }
    let per = rows_per_task(dim);
    let inv_d = T::one() / T::of(dim as f64);
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(per * dim)
        .enumerate()
        .map(|(task, dxc)| {
            let mut dw = vec![T::zero(); dim];
            let mut db = vec![T::zero(); dim];
            let mut xhat = vec![T::zero(); dim];
            let r0 = task * per;
            for (i, dxr) in dxc.chunks_mut(dim).enumerate() {
                let r = r0 + i;
                let xr = &x[r * dim..(r + 1) * dim];
                let gr = &grad[r * dim..(r + 1) * dim];
                let (mu, rs) = (mean[r], rstd[r]);
                // dxr holds g = dL/dy * weight until the last loop
                for j in 0..dim {
                    xhat[j] = (xr[j] - mu) * rs;
                    dxr[j] = gr[j] * weight[j];
                    dw[j] += gr[j] * xhat[j];
                    db[j] += gr[j];
                }
                let m1 = lanes_sum(dxr) * inv_d;
                let m2 = lanes_dot(dxr, &xhat) * inv_d;
                for j in 0..dim {
                    dxr[j] = rs * (dxr[j] - m1 - xhat[j] * m2);
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![T::zero(); dim];
    let mut db = vec![T::zero(); dim];
    for (pw, pb) in partials {
        for j in 0..dim {
            dw[j] += pw[j];
            db[j] += pb[j];
        }
    }
    (dx, dw, db)
}

/// Softmax of each contiguous row of `len` values (max-subtracted). In f32
/// the exponential is the branch-free [`exp_f32`] so that the row loop
/// vectorises; f64 uses the correctly rounded `exp`.
pub fn softmax_rows<T: CpuElem>(x: &[T], len: usize) -> Vec<T> {
    let mut out = x.to_vec();
    if len == 0 {
        return out;
    }
    let per = rows_per_task(len);
    if let Some(o) = (&mut out as &mut dyn Any).downcast_mut::<Vec<f32>>() {
        o.par_chunks_mut(per * len).for_each(|c| c.chunks_mut(len).for_each(|r| softmax_row(r, exp_f32)));
    } else {
        out.par_chunks_mut(per * len).for_each(|c| c.chunks_mut(len).for_each(|r| softmax_row(r, T::exp)));
    }
    out
}

fn softmax_row<T: CpuElem>(row: &mut [T], exp: impl Fn(T) -> T) {
    let mx = lanes_max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - mx));
    let r = T::one() / lanes_sum(row);
    row.iter_mut().for_each(|v| *v *= r);
}

/// Maximum of a row with eight independent accumulators (vectorisable).
fn lanes_max<T: CpuElem>(row: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        if let Ok(c) = <&[T; 8]>::try_from(c) {
            for j in 0..8 {
                acc[j] = acc[j].max(c[j]);
            }
        }
    }
    chunks.remainder().iter().fold(acc.iter().fold(T::neg_infinity(), |m, &v| m.max(v)), |m, &v| m.max(v))
}

/// Sum of a row with eight independent accumulators (vectorisable).
fn lanes_sum<T: CpuElem>(row: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        if let Ok(c) = <&[T; 8]>::try_from(c) {
            for j in 0..8 {
                acc[j] += c[j];
            }
        }
    }
    chunks.remainder().iter().fold(acc.iter().fold(T::zero(), |s, &v| s + v), |s, &v| s + v)
}

/// Dot product of two rows with eight independent accumulators (vectorisable).
fn lanes_dot<T: CpuElem>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        if let (Ok(x), Ok(y)) = (<&[T; 8]>::try_from(x), <&[T; 8]>::try_from(y)) {
            for j in 0..8 {
                acc[j] += x[j] * y[j];
            }
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::zero(), |s, (&x, &y)| s + x * y);
    acc.iter().fold(T::zero(), |s, &v| s + v) + tail
}

/// `e^x` in f32 by range reduction `x = k ln 2 + r`, `|r| <= ln 2 / 2`, and a
/// degree-6 Taylor polynomial of `e^r` (relative error below 2.5e-7);
/// branch-free and without float-to-int conversions, so loops over it
/// vectorise. Arguments are clamped to `[-87.3, 88]` (below: the smallest
/// normal number instead of 0).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: in [2^23, 2^24) the spacing is 1, so t = ROUND + k holds the
    // integer k (|k| <= 127) in its low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
}

/// Backward of a row softmax: `y * (g - rowsum(g * y))`.
pub fn softmax_backward<T: CpuElem>(y: &[T], grad: &[T], len: usize) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    if len == 0 {
        return out;
    }
    let per = rows_per_task(len);
    out.par_chunks_mut(per * len).enumerate().for_each(|(task, chunk)| {
        let base = task * per * len;
        for (i, row) in chunk.chunks_mut(len).enumerate() {
            let o = base + i * len;
            let (yr, gr) = (&y[o..o + len], &grad[o..o + len]);
            let dot = lanes_dot(yr, gr);
            for j in 0..len {
                row[j] = yr[j] * (gr[j] - dot);
            }
        }
    });
    out
}
