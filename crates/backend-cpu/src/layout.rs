//! Layout primitives of the CPU backend: permute (a gather with the output's last axis innermost), narrow, concat, index_select and its inverse scatter index_add.

use crate::elem::{buf, Buf, CpuElem};
use crate::par::{for_each_chunk, STREAM_PAR_THRESHOLD};
use crate::pool;
use rate_core::AxisView;

/// Offsets of every output row (all axes but the last) in `a` and `b`.
pub(crate) fn row_offsets(shape: &[usize], sa: &[usize], sb: &[usize]) -> Vec<(usize, usize)> {
    let r = shape.len();
    let rows: usize = shape[..r - 1].iter().product();
    let mut out = Vec::with_capacity(rows);
    let mut idx = vec![0usize; r - 1];
    let (mut oa, mut ob) = (0usize, 0usize);
    for _ in 0..rows {
        out.push((oa, ob));
        // increment the multi-index
        let mut ax = r - 1;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            oa += sa[ax];
            ob += sb[ax];
            if idx[ax] < shape[ax] {
                break;
            }
            oa -= sa[ax] * shape[ax];
            ob -= sb[ax] * shape[ax];
            idx[ax] = 0;
        }
    }
    out
}

pub(crate) fn permute<T: CpuElem>(x: &Buf<T>, shape: &[usize], perm: &[usize]) -> Buf<T> {
    let r = shape.len();
    let n: usize = shape.iter().product();
    if n == 0 {
        return buf(Vec::new());
    }
    let mut in_strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    // Gather with the output's last axis innermost; rows in parallel.
    let zeros = vec![0usize; r];
    let rows = row_offsets(&out_shape, &src_strides, &zeros);
    let inner = out_shape[r - 1];
    let is = src_strides[r - 1];
    // every element is written (a gather)
    let mut out = pool::take_for_overwrite(n);
    let body = |(row, chunk): (usize, &mut [T])| {
        let base = rows[row].0;
        if is == 1 {
            chunk.copy_from_slice(&x[base..base + inner]);
            return;
        }
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = x[base + j * is];
        }
    };
    for_each_chunk(&mut out, inner, n >= STREAM_PAR_THRESHOLD, body);
    buf(out)
}

pub(crate) fn narrow<T: CpuElem>(x: &Buf<T>, v: AxisView, start: usize, count: usize) -> Buf<T> {
    let mut out = Vec::with_capacity(v.outer * count * v.inner);
    for o in 0..v.outer {
        let base = (o * v.len + start) * v.inner;
        out.extend_from_slice(&x[base..base + count * v.inner]);
    }
    buf(out)
}

pub(crate) fn concat<T: CpuElem>(parts: &[&Buf<T>], outer: usize, lens: &[usize], inner: usize) -> Buf<T> {
    let total: usize = lens.iter().sum();
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, &l) in parts.iter().zip(lens) {
            out.extend_from_slice(&p[o * l * inner..(o + 1) * l * inner]);
        }
    }
    buf(out)
}

pub(crate) fn index_select<T: CpuElem>(x: &Buf<T>, v: AxisView, index: &[usize]) -> Buf<T> {
    let mut out = Vec::with_capacity(v.outer * index.len() * v.inner);
    if v.inner == 1 {
        // plain gather: one element per index
        for o in 0..v.outer {
            let row = &x[o * v.len..(o + 1) * v.len];
            out.extend(index.iter().map(|&i| row[i]));
        }
        return buf(out);
    }
    for o in 0..v.outer {
        for &i in index {
            let base = (o * v.len + i) * v.inner;
            out.extend_from_slice(&x[base..base + v.inner]);
        }
    }
    buf(out)
}

pub(crate) fn index_add<T: CpuElem>(x: &Buf<T>, v: AxisView, index: &[usize], len: usize) -> Buf<T> {
    let mut out = vec![T::zero(); v.outer * len * v.inner];
    for o in 0..v.outer {
        for (k, &i) in index.iter().enumerate() {
            let src = (o * v.len + k) * v.inner;
            let dst = (o * len + i) * v.inner;
            for j in 0..v.inner {
                out[dst + j] += x[src + j];
            }
        }
    }
    buf(out)
}
