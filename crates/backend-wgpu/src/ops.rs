//! Elementwise, layout and reduction primitives of the wgpu backend (dispatch set-up for elementwise/layout/reduce.wgsl).

use crate::ctx::{fbits, Buf, Ctx};
use crate::kernels as k;
use rate_core::{AxisView, BinaryOp, ReduceOp, UnaryOp};

/// Most axes a broadcast or permute kernel takes (after merging contiguous axes).
pub const MAX_RANK: usize = 8;

/// Drops unit axes and merges neighbours that are contiguous in every stride
/// list; returns the reduced shape and strides.
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    // Walk from the innermost axis outwards, then reverse.
    for ax in (0..shape.len()).rev() {
        if shape[ax] == 1 {
            continue;
        }
        let mergeable = match out_shape.last() {
            Some(&inner_size) => strides.iter().enumerate().all(|(s, st)| {
                let inner_stride = out_strides[s][out_strides[s].len() - 1];
                st[ax] == inner_stride * inner_size
            }),
            None => false,
        };
        if mergeable {
            if let Some(last) = out_shape.last_mut() {
                *last *= shape[ax];
            }
        } else {
            out_shape.push(shape[ax]);
            for (s, st) in strides.iter().enumerate() {
                out_strides[s].push(st[ax]);
            }
        }
    }
    out_shape.reverse();
    for s in &mut out_strides {
        s.reverse();
    }
    (out_shape, out_strides)
}

fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu backend: size {x} does not fit in 32 bits"))
}

fn unary_code(op: UnaryOp) -> (u32, f64) {
    match op {
        UnaryOp::Neg => (0, 0.0),
        UnaryOp::Exp => (1, 0.0),
        UnaryOp::Log => (2, 0.0),
        UnaryOp::Sqrt => (3, 0.0),
        UnaryOp::Abs => (4, 0.0),
        UnaryOp::Square => (5, 0.0),
        UnaryOp::Recip => (6, 0.0),
        UnaryOp::Relu => (7, 0.0),
        UnaryOp::Step => (8, 0.0),
        UnaryOp::SoftThreshold(c) => (9, c),
        UnaryOp::AddScalar(c) => (10, c),
        UnaryOp::MulScalar(c) => (11, c),
        UnaryOp::ClampMin(c) => (12, c),
        UnaryOp::ClampMax(c) => (13, c),
        UnaryOp::ReluShift(c) => (14, c),
    }
}

/// `len` copies of `value`.
pub fn full(ctx: &Ctx, len: usize, value: f32) -> Buf {
    let out = ctx.alloc(len);
    if len > 0 {
        let mut job = ctx.job();
        let (d1, d2) = (job.dummy(), job.dummy());
        job.dispatch_1d(&k::FILL, &[u(len), value.to_bits()], &[&d1, &d2, &out], len);
        job.submit();
    }
    out
}

/// `op(x)` elementwise.
pub fn unary(ctx: &Ctx, op: UnaryOp, x: &Buf) -> Buf {
    let n = x.len();
    let out = ctx.alloc(n);
    if n > 0 {
        let (code, c) = unary_code(op);
        let mut job = ctx.job();
        let d = job.dummy();
        job.dispatch_1d(&k::UNARY, &[u(n), code, fbits(c)], &[x, &d, &out], n);
        job.submit();
    }
    out
}

/// `op(a, b)` with broadcasting strides.
pub fn binary(ctx: &Ctx, op: BinaryOp, a: &Buf, sa: &[usize], b: &Buf, sb: &[usize], shape: &[usize]) -> Buf {
    let n: usize = shape.iter().product();
    let out = ctx.alloc(n);
    if n == 0 {
        return out;
    }
    let (shape, st) = coalesce(shape, &[sa, sb]);
    assert!(
        shape.len() <= MAX_RANK,
        "wgpu binary: {} axes after merging contiguous ones (shape {shape:?}); at most {MAX_RANK} are supported",
        shape.len()
    );
    let code = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Min => 5,
        BinaryOp::WherePositive => 6,
    };
    let mut p = vec![0u32; 28];
    p[0] = u(n);
    p[1] = code;
    p[2] = shape.len() as u32;
    for (i, &s) in shape.iter().enumerate() {
        p[4 + i] = u(s);
        p[12 + i] = u(st[0][i]);
        p[20 + i] = u(st[1][i]);
    }
    let mut job = ctx.job();
    job.dispatch_1d(&k::BINARY, &p, &[a, b, &out], n);
    job.submit();
    out
}

/// Output axis `i` is input axis `perm[i]`.
pub fn permute(ctx: &Ctx, x: &Buf, shape: &[usize], perm: &[usize]) -> Buf {
    let n: usize = shape.iter().product();
    let out = ctx.alloc(n);
    if n == 0 {
        return out;
    }
    let r = shape.len();
    let mut in_strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let (os, st) = coalesce(&out_shape, &[&src]);
    assert!(
        os.len() <= MAX_RANK,
        "wgpu permute: {} axes after merging (shape {shape:?}, perm {perm:?}); at most {MAX_RANK} are supported",
        os.len()
    );
    let mut p = vec![0u32; 20];
    p[0] = u(n);
    p[1] = os.len() as u32;
    for i in 0..os.len() {
        p[4 + i] = u(os[i]);
        p[12 + i] = u(st[0][i]);
    }
    let mut job = ctx.job();
    let d = job.dummy();
    job.dispatch_1d(&k::PERMUTE, &p, &[x, &d, &out], n);
    job.submit();
    out
}

/// `count` entries from `start` along the axis.
pub fn narrow(ctx: &Ctx, x: &Buf, v: AxisView, start: usize, count: usize) -> Buf {
    let n = v.outer * count * v.inner;
    let out = ctx.alloc(n);
    if n > 0 {
        let row = count * v.inner;
        let mut job = ctx.job();
        let d = job.dummy();
        let p = [u(n), u(row), u(v.len * v.inner), u(start * v.inner), u(row), 0];
        job.dispatch_1d(&k::COPY_ROWS, &p, &[x, &d, &out], n);
        job.submit();
    }
    out
}

/// Concatenation along an axis.
pub fn concat(ctx: &Ctx, parts: &[&Buf], outer: usize, lens: &[usize], inner: usize) -> Buf {
    let total: usize = lens.iter().sum();
    let out = ctx.alloc(outer * total * inner);
    let mut job = ctx.job();
    let mut off = 0;
    for (part, &l) in parts.iter().zip(lens) {
        let n = outer * l * inner;
        if n > 0 {
            let d = job.dummy();
            let p = [u(n), u(l * inner), u(l * inner), 0, u(total * inner), u(off * inner)];
            job.dispatch_1d(&k::COPY_ROWS, &p, &[part, &d, &out], n);
        }
        off += l;
    }
    job.submit();
    out
}

/// Entries `index` along the axis.
pub fn index_select(ctx: &Ctx, x: &Buf, v: AxisView, index: &[usize]) -> Buf {
    let n = v.outer * index.len() * v.inner;
    let out = ctx.alloc(n);
    if n > 0 {
        let idx: Vec<u32> = index.iter().map(|&i| u(i)).collect();
        let ib = ctx.upload_words(&idx);
        let mut job = ctx.job();
        let p = [u(n), u(index.len()), u(v.len), u(v.inner)];
        job.dispatch_1d(&k::INDEX_SELECT, &p, &[x, &ib, &out], n);
        job.submit();
    }
    out
}

/// `out[.., index[i], ..] += x[.., i, ..]` into zeros of `len` entries along the axis.
pub fn index_add(ctx: &Ctx, x: &Buf, v: AxisView, index: &[usize], len: usize) -> Buf {
    let n = v.outer * len * v.inner;
    if n == 0 {
        return ctx.alloc(0);
    }
    // Inverse index (CSR): the source slots of each output slot, in increasing order.
    let mut counts = vec![0u32; len + 1];
    for &i in index {
        counts[i + 1] += 1;
    }
    for r in 0..len {
        counts[r + 1] += counts[r];
    }
    let mut table = counts.clone();
    table.resize(len + 1 + index.len(), 0);
    let mut fill = counts;
    for (src, &i) in index.iter().enumerate() {
        table[len + 1 + fill[i] as usize] = u(src);
        fill[i] += 1;
    }
    let ib = ctx.upload_words(&table);
    let out = ctx.alloc(n);
    let mut job = ctx.job();
    let p = [u(n), u(len), u(v.len), u(v.inner)];
    job.dispatch_1d(&k::INDEX_ADD, &p, &[x, &ib, &out], n);
    job.submit();
    out
}

/// One workgroup per line when lines are few and long, else one thread per line.
fn per_group(v: AxisView) -> bool {
    v.outer * v.inner < 4096 && v.len >= 256
}

/// Reduction along the axis.
pub fn reduce(ctx: &Ctx, op: ReduceOp, x: &Buf, v: AxisView) -> Buf {
    let lines = v.outer * v.inner;
    let out = ctx.alloc(lines);
    if lines == 0 {
        return out;
    }
    if v.len == 0 {
        assert!(op == ReduceOp::Sum, "wgpu reduce: {op:?} over an empty axis (view {v:?})");
        return full(ctx, lines, 0.0);
    }
    let code = match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
        ReduceOp::ArgMax => 3,
    };
    let p = [u(v.outer), u(v.len), u(v.inner), code];
    let mut job = ctx.job();
    if per_group(v) {
        job.dispatch_groups(&k::REDUCE_GROUP, &p, &[x, &out], lines);
    } else {
        job.dispatch_1d(&k::REDUCE_THREAD, &p, &[x, &out], lines);
    }
    job.submit();
    out
}

/// Softmax along the axis.
pub fn softmax(ctx: &Ctx, x: &Buf, v: AxisView) -> Buf {
    let out = ctx.alloc(v.numel());
    let lines = v.outer * v.inner;
    if v.numel() == 0 {
        return out;
    }
    let p = [u(v.outer), u(v.len), u(v.inner)];
    let mut job = ctx.job();
    if per_group(v) {
        job.dispatch_groups(&k::SOFTMAX_GROUP, &p, &[x, &out], lines);
    } else {
        job.dispatch_1d(&k::SOFTMAX_THREAD, &p, &[x, &out], lines);
    }
    job.submit();
    out
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesce_merges_contiguous_axes_and_keeps_broadcast_ones() {
        // [2, 3, 4] contiguous with a row vector broadcast over the first two axes.
        let (s, st) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]);
        assert_eq!(s, vec![6, 4]);
        assert_eq!(st, vec![vec![4, 1], vec![0, 1]]);
        let (s, st) = coalesce(&[2, 1, 5], &[&[5, 5, 1], &[5, 5, 1]]);
        assert_eq!(s, vec![10]);
        assert_eq!(st, vec![vec![1], vec![1]]);
        let (s, _) = coalesce(&[1, 1], &[&[1, 1]]);
        assert!(s.is_empty());
    }
}
