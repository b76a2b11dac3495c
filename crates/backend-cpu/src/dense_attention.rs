//! Dense multi-head shared-QKV attention on head-interleaved tokens (the MSSA heads of 4.2.13 below the tiled size): per sequence and head, `S = W_h W_h^T`, the row softmax and `A W_h` while the `n x n` block is in the cache, forward and backward.
//!
//! The tokens arrive as the projection leaves them, `[batch, n, heads * dh]`;
//! head `h` is the strided `n x dh` view of columns `h dh .. (h + 1) dh`, so
//! no permutation is spent on splitting or merging the heads. Each
//! sequence is one task (one rayon task each when called from outside the
//! pool); its heads run in turn on the calling thread with faer's
//! sequential product.

use crate::host::clear_upper_simd_state;
use crate::nn::{softmax_backward_rows_in_place, softmax_rows_in_place};
use crate::pool::take_for_overwrite;
use crate::CpuElem;
use faer::{Accum, MatMut, MatRef, Par};
use rate_core::DenseAttentionSpec;
use rayon::prelude::*;

/// Head `h` of one sequence's tokens: the `n x dh` view with row stride `width`.
fn head<T>(seq: &[T], h: usize, n: usize, dh: usize, width: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice_with_stride(&seq[h * dh..], n, dh, width)
}

/// [`head`], writable. Built as the transpose of the column-major `dh x n`
/// view: faer 0.24.4's `MatMut::from_row_major_slice_with_stride_mut` swaps
/// the two strides (it returns the column-major view), which the unit test
/// below would catch.
fn head_mut<T>(seq: &mut [T], h: usize, n: usize, dh: usize, width: usize) -> MatMut<'_, T> {
    MatMut::from_column_major_slice_with_stride_mut(&mut seq[h * dh..], dh, n, width).transpose_mut()
}

fn mm<T: CpuElem>(dst: MatMut<'_, T>, accum: Accum, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>) {
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, T::one(), Par::Seq);
}

/// Whether the sequences run as rayon tasks: from outside the pool, when
/// there are several and the work is worth splitting.
fn in_parallel(s: &DenseAttentionSpec) -> bool {
    s.batch > 1
        && rayon::current_thread_index().is_none()
        && s.batch * s.heads * s.tokens * s.tokens * s.dim_head >= 1 << 18
}

/// `(attention [batch, heads, n, n], merged outputs [batch, n, heads * dh])`.
pub fn forward<T: CpuElem>(w: &[T], s: DenseAttentionSpec) -> (Vec<T>, Vec<T>) {
    let DenseAttentionSpec { batch, tokens: n, heads, dim_head: dh } = s;
    let width = heads * dh;
    if n == 0 || width == 0 {
        return (vec![T::zero(); batch * heads * n * n], vec![T::zero(); batch * n * width]);
    }
    // every element of both is written (Accum::Replace)
    let mut attn = take_for_overwrite(batch * heads * n * n);
    let mut out = take_for_overwrite(batch * n * width);
    let body = |(b, (a_seq, o_seq)): (usize, (&mut [T], &mut [T]))| {
        let w_seq = &w[b * n * width..(b + 1) * n * width];
        for (h, a) in a_seq.chunks_mut(n * n).enumerate() {
            let wh = head(w_seq, h, n, dh, width);
            mm(MatMut::from_row_major_slice_mut(a, n, n), Accum::Replace, wh, wh.transpose());
            clear_upper_simd_state();
            softmax_rows_in_place(a, n);
            mm(head_mut(o_seq, h, n, dh, width), Accum::Replace, MatRef::from_row_major_slice(a, n, n), wh);
        }
        clear_upper_simd_state();
    };
    let (a_len, o_len) = (heads * n * n, n * width);
    if in_parallel(&s) {
        attn.par_chunks_mut(a_len).zip(out.par_chunks_mut(o_len)).enumerate().for_each(body);
    } else {
        attn.chunks_mut(a_len).zip(out.chunks_mut(o_len)).enumerate().for_each(body);
    }
    (attn, out)
}

/// `dL/dW` `[batch, n, heads * dh]`: per head, with `G` the output gradient,
/// `dS = A * (G W^T - rowsum(A * G W^T))` in an `n x n` scratch, then
/// `dW = A^T G + dS^T W + dS W = A^T G + (dS + dS^T) W` accumulated in
/// place: the key and query terms share one product (`W` is both).
pub fn backward<T: CpuElem>(w: &[T], attn: &[T], grad: &[T], s: DenseAttentionSpec) -> Vec<T> {
    let DenseAttentionSpec { batch, tokens: n, heads, dim_head: dh } = s;
    let width = heads * dh;
    if n == 0 || width == 0 {
        return vec![T::zero(); batch * n * width];
    }
    // every element is written (Accum::Replace, then Accum::Add)
    let mut gw = take_for_overwrite(batch * n * width);
    let body = |ds: &mut Vec<T>, (b, gw_seq): (usize, &mut [T])| {
        let seq = b * n * width..(b + 1) * n * width;
        let (w_seq, g_seq) = (&w[seq.clone()], &grad[seq]);
        for h in 0..heads {
            let a = &attn[(b * heads + h) * n * n..(b * heads + h + 1) * n * n];
            let (wh, gh) = (head(w_seq, h, n, dh, width), head(g_seq, h, n, dh, width));
            mm(MatMut::from_row_major_slice_mut(ds, n, n), Accum::Replace, gh, wh.transpose());
            clear_upper_simd_state();
            softmax_backward_rows_in_place(a, ds, n);
            symmetrise(ds, n);
            let a = MatRef::from_row_major_slice(a, n, n);
            let dsm = MatRef::from_row_major_slice(ds, n, n);
            mm(head_mut(gw_seq, h, n, dh, width), Accum::Replace, a.transpose(), gh);
            mm(head_mut(gw_seq, h, n, dh, width), Accum::Add, dsm, wh);
        }
        clear_upper_simd_state();
    };
    if in_parallel(&s) {
        gw.par_chunks_mut(n * width).enumerate().for_each_init(|| vec![T::zero(); n * n], body);
    } else {
        let mut ds = vec![T::zero(); n * n];
        gw.chunks_mut(n * width).enumerate().for_each(|item| body(&mut ds, item));
    }
    gw
}

/// `x <- x + x^T` of an `n x n` row-major matrix, in place.
fn symmetrise<T: CpuElem>(x: &mut [T], n: usize) {
    for i in 0..n {
        for j in 0..i {
            let s = x[i * n + j] + x[j * n + i];
            x[i * n + j] = s;
            x[j * n + i] = s;
        }
        x[i * n + i] = x[i * n + i] + x[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain loops: scores, row softmax, product, per sequence and head.
    fn reference(w: &[f64], s: DenseAttentionSpec) -> (Vec<f64>, Vec<f64>) {
        let DenseAttentionSpec { batch, tokens: n, heads, dim_head: dh } = s;
        let width = heads * dh;
        let mut attn = vec![0.0; batch * heads * n * n];
        let mut out = vec![0.0; batch * n * width];
        for b in 0..batch {
            for h in 0..heads {
                let at = |t: usize, j: usize| w[(b * n + t) * width + h * dh + j];
                let a = &mut attn[(b * heads + h) * n * n..(b * heads + h + 1) * n * n];
                for i in 0..n {
                    let row: Vec<f64> = (0..n).map(|k| (0..dh).map(|j| at(i, j) * at(k, j)).sum()).collect();
                    let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = row.iter().map(|v| (v - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for k in 0..n {
                        a[i * n + k] = e[k] / sum;
                    }
                    for j in 0..dh {
                        out[(b * n + i) * width + h * dh + j] = (0..n).map(|k| a[i * n + k] * at(k, j)).sum();
                    }
                }
            }
        }
        (attn, out)
    }

    #[test]
    fn forward_equals_plain_loops() {
        for (batch, n, heads, dh) in [(1, 3, 1, 2), (2, 5, 2, 3), (2, 77, 2, 7), (3, 20, 3, 4)] {
            let s = DenseAttentionSpec { batch, tokens: n, heads, dim_head: dh };
            let w: Vec<f64> =
                (0..batch * n * heads * dh).map(|i| ((i * 37 % 101) as f64 / 101.0) - 0.5).collect();
            let (a, o) = forward(&w, s);
            let (a0, o0) = reference(&w, s);
            let da = a.iter().zip(&a0).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            let dout = o.iter().zip(&o0).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(da < 1e-13 && dout < 1e-13, "{s:?}: attention {da:e}, output {dout:e}");
        }
    }
}
