//! Matrix products scheduled on rayon with one sequential faer product per task: batches of products, and large products with one shared right operand split into blocks (`A B` by row blocks of `A`, `A^T B` by blocks of the inner dimension, partial products summed).
//!
//! The transformer layers multiply thousands of token rows by a small
//! weight (`[8320, 192] x [192, 192]` in the CIFAR CRATE at batch 128).
//! faer's own parallel product synchronises its threads with spinning
//! barriers between panels; independent row blocks need no synchronisation
//! and keep every thread busy even when the machine is shared.

use crate::host::clear_upper_simd_state;
use crate::lanes::add_into;
use crate::pool::take_for_overwrite;
use crate::CpuElem;
use faer::{Accum, MatMut, MatRef};
use rate_core::MatmulSpec;
use rayon::prelude::*;

/// Rows (or inner indices) of one block, at least.
const MIN_BLOCK: usize = 64;

/// Rows of one block of a tall product, about: blocks of 512 rows keep a
/// block of `A` and of the result in the L2 cache for the usual widths
/// (`[16384, 384] x [384, 384]` in f32: 108 GFLOP/s in 8 blocks, 122-129 in 16-64).
const TARGET_ROWS: usize = 512;

/// `dst = op(A) op(B)` for one `m x k` by `k x n` product on the calling thread.
fn product<T: CpuElem>(
    dst: &mut [T],
    a: &[T],
    b: &[T],
    m: usize,
    k: usize,
    n: usize,
    s: &MatmulSpec,
    accum: Accum,
) {
    let dst = MatMut::from_row_major_slice_mut(dst, m, n);
    let lhs = if s.trans_a {
        MatRef::from_row_major_slice(a, k, m).transpose()
    } else {
        MatRef::from_row_major_slice(a, m, k)
    };
    let rhs = if s.trans_b {
        MatRef::from_row_major_slice(b, n, k).transpose()
    } else {
        MatRef::from_row_major_slice(b, k, n)
    };
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, T::one(), faer::Par::Seq);
}

/// `batch` products (see [`MatmulSpec`]), one sequential faer product per
/// rayon task; every task leaves its thread's AVX state clean.
pub fn batched<T: CpuElem>(a: &[T], b: &[T], s: MatmulSpec) -> Vec<T> {
    let MatmulSpec { batch, m, k, n, a_batched, b_batched, .. } = s;
    if m * n == 0 || k == 0 {
        return vec![T::zero(); batch * m * n];
    }
    // every element is written (Accum::Replace)
    let mut out = take_for_overwrite(batch * m * n);
    let body = |(bi, dst): (usize, &mut [T])| {
        let a_blk = if a_batched { &a[bi * m * k..(bi + 1) * m * k] } else { &a[..m * k] };
        let b_blk = if b_batched { &b[bi * k * n..(bi + 1) * k * n] } else { &b[..k * n] };
        product(dst, a_blk, b_blk, m, k, n, &s, Accum::Replace);
        clear_upper_simd_state();
    };
    if batch > 1 && batch * m * n * k >= 1 << 18 {
        out.par_chunks_mut(m * n).enumerate().for_each(body);
    } else {
        out.chunks_mut(m * n).enumerate().for_each(body);
    }
    out
}

/// The product split into blocks when it is one large product with a shared
/// right operand (`batch == 1`) and at least two threads; `None` otherwise.
pub fn matmul<T: CpuElem>(a: &[T], b: &[T], s: MatmulSpec) -> Option<Vec<T>> {
    let threads = rayon::current_num_threads();
    let MatmulSpec { batch, m, k, n, trans_a, trans_b, .. } = s;
    if batch != 1 || threads < 2 || m * n * k < 1 << 21 || m * n == 0 || k == 0 {
        return None;
    }
    if !trans_a {
        // row blocks of A (rows of A are contiguous), each writing its rows of the result
        if m < 2 * MIN_BLOCK {
            return None;
        }
        let blocks = (m / TARGET_ROWS).max(4 * threads).min(m / MIN_BLOCK);
        let rows = m.div_ceil(blocks);
        let mut out = take_for_overwrite(m * n);
        out.par_chunks_mut(rows * n).enumerate().for_each(|(i, dst)| {
            let mb = dst.len() / n;
            let a_blk = &a[i * rows * k..(i * rows + mb) * k];
            product(dst, a_blk, b, mb, k, n, &s, Accum::Replace);
            clear_upper_simd_state();
        });
        return Some(out);
    }
    // A^T B with A stored k x m: blocks of the inner dimension are row blocks of
    // both operands when B is not transposed; the partial m x n products are summed
    if trans_b || k < 2 * MIN_BLOCK {
        return None;
    }
    let blocks = (2 * threads).min(k / MIN_BLOCK);
    let len = k.div_ceil(blocks);
    let partials: Vec<Vec<T>> = (0..blocks)
        .into_par_iter()
        .filter_map(|i| {
            let (k0, k1) = (i * len, ((i + 1) * len).min(k));
            (k0 < k1).then(|| {
                let mut part = vec![T::zero(); m * n];
                product(&mut part, &a[k0 * m..k1 * m], &b[k0 * n..k1 * n], m, k1 - k0, n, &s, Accum::Replace);
                clear_upper_simd_state();
                part
            })
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut out = parts.next()?;
    for p in parts {
        add_into(&mut out, &p);
    }
    Some(out)
}
