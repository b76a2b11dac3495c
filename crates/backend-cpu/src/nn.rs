//! Fused row kernels of the transformer layers on the CPU: LayerNorm forward and backward, softmax along rows and its backward, one pass over each row, rows in parallel.

use crate::lanes::{lanes_dot, lanes_max, lanes_sum};
use crate::{exp_f32, CpuElem};
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
                yr.iter_mut().zip(xr).for_each(|(y, &x)| *y = x - mu);
                let rs = T::one() / (lanes_dot(yr, yr) * inv_d + eps).sqrt();
                yr.iter_mut().zip(weight.iter().zip(bias)).for_each(|(y, (&w, &b))| *y = *y * rs * w + b);
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
                xhat.iter_mut().zip(xr).for_each(|(h, &x)| *h = (x - mu) * rs);
                dxr.iter_mut().zip(gr.iter().zip(weight)).for_each(|(d, (&g, &w))| *d = g * w);
                dw.iter_mut().zip(gr.iter().zip(&xhat)).for_each(|(a, (&g, &h))| *a += g * h);
                db.iter_mut().zip(gr).for_each(|(a, &g)| *a += g);
                let m1 = lanes_sum(dxr) * inv_d;
                let m2 = lanes_dot(dxr, &xhat) * inv_d;
                dxr.iter_mut().zip(&xhat).for_each(|(d, &h)| *d = rs * (*d - m1 - h * m2));
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![T::zero(); dim];
    let mut db = vec![T::zero(); dim];
    for (pw, pb) in partials {
        dw.iter_mut().zip(&pw).for_each(|(a, &p)| *a += p);
        db.iter_mut().zip(&pb).for_each(|(a, &p)| *a += p);
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
            row.iter_mut().zip(yr.iter().zip(gr)).for_each(|(o, (&y, &g))| *o = y * (g - dot));
        }
    });
    out
}
