//! Fused CPU kernels: tiled shared-QKV attention (the flash-attention forward and backward of `rate_core::attention`) and the cumulative sum.
//!
//! Attention runs one rayon task per (problem, query tile); each task keeps
//! its `q_tile x k_tile` logits, its running max / denominator and its output
//! rows, and calls faer's sequential matmul per tile. The backward
//! accumulates `dK + dV` of every key tile into a per-task `n x dh` buffer
//! (rayon fold) that is summed at the end, so no `n x n` buffer exists.

use crate::lanes::{add_partials, lanes_max};
use crate::CpuElem;
use faer::{Accum, MatMut, MatRef, Par};
use rate_core::{AttentionSpec, AxisView};
use rayon::prelude::*;

/// `dst (m x n) [+]= alpha lhs rhs` on the calling thread.
fn mm<T: CpuElem>(
    dst: &mut [T],
    m: usize,
    n: usize,
    accum: Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
) {
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(dst, m, n),
        accum,
        lhs,
        rhs,
        alpha,
        Par::Seq,
    );
    // the softmax that follows calls libm's exp on this thread: see `clear_upper_simd_state`
    crate::host::clear_upper_simd_state();
}

fn rows<T>(x: &[T], start: usize, count: usize, width: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(&x[start * width..(start + count) * width], count, width)
}

/// Forward: `(O, L)` for `spec.batch` problems of `n x dh` tokens.
pub fn forward<T: CpuElem>(w: &[T], spec: AttentionSpec) -> (Vec<T>, Vec<T>) {
    let AttentionSpec { batch, n, dh, scale, q_tile, k_tile } = spec;
    let mut out = vec![T::zero(); batch * n * dh];
    let mut lse = vec![T::zero(); batch * n];
    if batch * n * dh == 0 {
        return (out, lse);
    }
    let scale = T::of(scale);
    out.par_chunks_mut(n * dh).zip(lse.par_chunks_mut(n)).enumerate().for_each(|(b, (ob, lb))| {
        let wb = &w[b * n * dh..(b + 1) * n * dh];
        ob.par_chunks_mut(q_tile * dh)
            .zip(lb.par_chunks_mut(q_tile))
            .enumerate()
            .for_each(|(t, (acc, lt))| forward_tile(wb, n, dh, scale, t * q_tile, k_tile, acc, lt));
    });
    (out, lse)
}

/// One query tile: the online-softmax sweep over every key tile.
fn forward_tile<T: CpuElem>(
    wb: &[T],
    n: usize,
    dh: usize,
    scale: T,
    i0: usize,
    k_tile: usize,
    acc: &mut [T],
    lse: &mut [T],
) {
    let bq = lse.len();
    let q: Vec<T> = wb[i0 * dh..(i0 + bq) * dh].iter().map(|&x| x * scale).collect();
    let qm = MatRef::from_row_major_slice(&q, bq, dh);
    let mut m = vec![T::neg_infinity(); bq];
    let mut l = vec![T::zero(); bq];
    let mut s = vec![T::zero(); bq * k_tile.min(n)];
    for j0 in (0..n).step_by(k_tile) {
        let bk = k_tile.min(n - j0);
        let km = rows(wb, j0, bk, dh);
        let st = &mut s[..bq * bk];
        mm(st, bq, bk, Accum::Replace, qm, km.transpose(), T::one());
        for r in 0..bq {
            let row = &mut st[r * bk..(r + 1) * bk];
            let mx = lanes_max(row).max(m[r]);
            // exp(-inf - finite) = 0 on the first tile
            let corr = (m[r] - mx).exp();
            let sum = T::exp_shift_sum(row, mx);
            l[r] = l[r] * corr + sum;
            if corr != T::one() {
                acc[r * dh..(r + 1) * dh].iter_mut().for_each(|a| *a *= corr);
            }
            m[r] = mx;
        }
        mm(acc, bq, dh, Accum::Add, MatRef::from_row_major_slice(st, bq, bk), km, T::one());
    }
    for r in 0..bq {
        let inv = T::one() / l[r];
        acc[r * dh..(r + 1) * dh].iter_mut().for_each(|a| *a *= inv);
        lse[r] = m[r] + l[r].ln();
    }
}

/// Backward: `dW = dQ + dK + dV` for `spec.batch` problems.
pub fn backward<T: CpuElem>(w: &[T], out: &[T], lse: &[T], g: &[T], spec: AttentionSpec) -> Vec<T> {
    let AttentionSpec { batch, n, dh, scale, q_tile, k_tile } = spec;
    let mut dw = vec![T::zero(); batch * n * dh];
    if batch * n * dh == 0 {
        return dw;
    }
    let scale = T::of(scale);
    dw.par_chunks_mut(n * dh).enumerate().for_each(|(b, dwb)| {
        let (wb, gb) = (&w[b * n * dh..(b + 1) * n * dh], &g[b * n * dh..(b + 1) * n * dh]);
        let ob = &out[b * n * dh..(b + 1) * n * dh];
        let lb = &lse[b * n..(b + 1) * n];
        // D_i = rowsum(dO_i * O_i)
        let d: Vec<T> = (0..n)
            .map(|i| {
                gb[i * dh..(i + 1) * dh]
                    .iter()
                    .zip(&ob[i * dh..(i + 1) * dh])
                    .fold(T::zero(), |a, (&x, &y)| a + x * y)
            })
            .collect();
        let tiles = n.div_ceil(q_tile);
        let total = (0..tiles)
            .into_par_iter()
            .fold(
                || vec![T::zero(); n * dh],
                |mut acc, t| {
                    backward_tile(
                        wb,
                        gb,
                        lb,
                        &d,
                        n,
                        dh,
                        scale,
                        t * q_tile,
                        q_tile.min(n - t * q_tile),
                        k_tile,
                        &mut acc,
                    );
                    acc
                },
            )
            .reduce_with(add_partials);
        if let Some(total) = total {
            dwb.copy_from_slice(&total);
        }
    });
    dw
}

/// One query tile of the backward: adds `dQ_i` to rows `i` and the tile's
/// share of `dK_j + dV_j` to rows `j` of `acc`.
fn backward_tile<T: CpuElem>(
    wb: &[T],
    gb: &[T],
    lb: &[T],
    d: &[T],
    n: usize,
    dh: usize,
    scale: T,
    i0: usize,
    bq: usize,
    k_tile: usize,
    acc: &mut [T],
) {
    let qm = rows(wb, i0, bq, dh);
    let gm = rows(gb, i0, bq, dh);
    let kt = k_tile.min(n);
    let mut p = vec![T::zero(); bq * kt];
    let mut ds = vec![T::zero(); bq * kt];
    let mut dq = vec![T::zero(); bq * dh];
    for j0 in (0..n).step_by(k_tile) {
        let bk = k_tile.min(n - j0);
        let km = rows(wb, j0, bk, dh);
        let (pt, dst) = (&mut p[..bq * bk], &mut ds[..bq * bk]);
        // P_ij = exp(s Q_i K_j^T - L_i)
        mm(pt, bq, bk, Accum::Replace, qm, km.transpose(), scale);
        for r in 0..bq {
            T::exp_shift_sum(&mut pt[r * bk..(r + 1) * bk], lb[i0 + r]);
        }
        // dS_ij = P_ij (dO_i V_j^T - D_i)
        mm(dst, bq, bk, Accum::Replace, gm, km.transpose(), T::one());
        for r in 0..bq {
            let di = d[i0 + r];
            let (pr, sr) = (&pt[r * bk..(r + 1) * bk], &mut dst[r * bk..(r + 1) * bk]);
            sr.iter_mut().zip(pr).for_each(|(s, &pv)| *s = pv * (*s - di));
        }
        let pm = MatRef::from_row_major_slice(pt, bq, bk);
        let dsm = MatRef::from_row_major_slice(dst, bq, bk);
        // dQ_i += s dS_ij K_j
        mm(&mut dq, bq, dh, Accum::Add, dsm, km, scale);
        // dK_j += s dS_ij^T Q_i ; dV_j += P_ij^T dO_i
        let accj = &mut acc[j0 * dh..(j0 + bk) * dh];
        mm(accj, bk, dh, Accum::Add, dsm.transpose(), qm, scale);
        mm(accj, bk, dh, Accum::Add, pm.transpose(), gm, T::one());
    }
    acc[i0 * dh..(i0 + bq) * dh].iter_mut().zip(&dq).for_each(|(a, &x)| *a += x);
}

/// Inclusive cumulative sum along the axis of `v` (backwards when `reverse`).
pub fn cumsum<T: CpuElem>(x: &[T], v: AxisView, reverse: bool) -> Vec<T> {
    let AxisView { outer, len, inner } = v;
    let mut out = x.to_vec();
    if out.is_empty() {
        return out;
    }
    let body = |blk: &mut [T]| {
        let order: Box<dyn Iterator<Item = usize>> =
            if reverse { Box::new((0..len.saturating_sub(1)).rev()) } else { Box::new(1..len) };
        for l in order {
            let prev = if reverse { l + 1 } else { l - 1 };
            for j in 0..inner {
                blk[l * inner + j] += blk[prev * inner + j];
            }
        }
    };
    if x.len() >= 1 << 15 && outer > 1 {
        out.par_chunks_mut(len * inner).for_each(body);
    } else {
        out.chunks_mut(len * inner).for_each(body);
    }
    out
}
