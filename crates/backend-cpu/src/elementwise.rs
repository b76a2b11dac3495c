//! Elementwise unary and broadcasting binary ops of the CPU backend: one monomorphised loop per op, on the calling thread or split across rayon by size.

use crate::elem::{buf, Buf, CpuElem};
use crate::layout::row_offsets;
use crate::par::{for_each_chunk, BLOCK, PAR_THRESHOLD, STREAM_PAR_THRESHOLD};
use rate_core::{BinaryOp, UnaryOp};
use rayon::prelude::*;

fn map_vec<T: Send + Sync + Copy, U: Send>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

/// `f` over `x` for the cheap, memory-bound ops: one monomorphised loop per
/// op writing the output once (collecting a slice iterator vectorises; a copy
/// updated in place would write every element twice).
fn map_unary<T: Copy + Send + Sync>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    if x.len() >= STREAM_PAR_THRESHOLD {
        x.par_iter().with_min_len(BLOCK).map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

/// `f(a, b)` elementwise over equal-length slices, like [`map_unary`].
fn zip_map<T: Copy + Send + Sync>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    if a.len() >= STREAM_PAR_THRESHOLD {
        a.par_iter().zip(b.par_iter()).with_min_len(BLOCK).map(|(&x, &y)| f(x, y)).collect()
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

/// The length of the trailing block when `strides` read one contiguous block
/// repeated along the leading axes (zero strides there), e.g. a bias row.
fn repeated_block(strides: &[usize], shape: &[usize]) -> Option<usize> {
    let r = shape.len();
    let mut k = r;
    let mut acc = 1;
    while k > 0 && (strides[k - 1] == acc || shape[k - 1] == 1) {
        acc *= shape[k - 1];
        k -= 1;
    }
    let leading_broadcast = (0..k).all(|i| strides[i] == 0 || shape[i] == 1);
    (k > 0 && k < r && acc > 0 && leading_broadcast).then_some(acc)
}

/// Elementwise `f(a, b)` over `out_shape` with broadcasting strides (the body
/// of `Backend::binary`); rows whose inner stride is 1 or 0 run as slice loops.
fn binary_with<T: CpuElem>(
    f: impl Fn(T, T) -> T + Sync + Send + Copy,
    (a, a_strides): (&Buf<T>, &[usize]),
    (b, b_strides): (&Buf<T>, &[usize]),
    out_shape: &[usize],
) -> Buf<T> {
    let n: usize = out_shape.iter().product();
    if n == 0 {
        return buf(Vec::new());
    }
    let r = out_shape.len();
    let contiguous = |s: &[usize]| {
        let mut acc = 1;
        (0..r).rev().all(|i| {
            let ok = s[i] == acc || out_shape[i] == 1;
            acc *= out_shape[i];
            ok
        })
    };
    if r == 0 {
        return buf(vec![f(a[0], b[0])]);
    }
    if let Some(period) = repeated_block(b_strides, out_shape).filter(|_| contiguous(a_strides)) {
        // b is one contiguous block repeated along the leading axes (a bias row)
        let b = &b[..period];
        if n < STREAM_PAR_THRESHOLD {
            let mut out = Vec::with_capacity(n);
            for row in a[..n].chunks(period) {
                out.extend(row.iter().zip(b).map(|(&x, &y)| f(x, y)));
            }
            return buf(out);
        }
        let mut out = a[..n].to_vec();
        out.par_chunks_mut(period).for_each(|o| o.iter_mut().zip(b).for_each(|(x, &y)| *x = f(*x, y)));
        return buf(out);
    }
    if contiguous(a_strides) && contiguous(b_strides) {
        return buf(zip_map(&a[..n], &b[..n], f));
    }
    let inner = out_shape[r - 1];
    let (ia, ib) = (a_strides[r - 1], b_strides[r - 1]);
    let rows = row_offsets(out_shape, a_strides, b_strides);
    let mut out = vec![T::zero(); n];
    let body = |(row, chunk): (usize, &mut [T])| {
        let (oa, ob) = rows[row];
        match (ia, ib) {
            (1, 1) => {
                let (ra, rb) = (&a[oa..oa + inner], &b[ob..ob + inner]);
                chunk.iter_mut().zip(ra.iter().zip(rb)).for_each(|(o, (&x, &y))| *o = f(x, y));
            }
            (1, 0) => {
                let y = b[ob];
                chunk.iter_mut().zip(&a[oa..oa + inner]).for_each(|(o, &x)| *o = f(x, y));
            }
            (0, 1) => {
                let x = a[oa];
                chunk.iter_mut().zip(&b[ob..ob + inner]).for_each(|(o, &y)| *o = f(x, y));
            }
            _ => {
                for (j, o) in chunk.iter_mut().enumerate() {
                    *o = f(a[oa + j * ia], b[ob + j * ib]);
                }
            }
        }
    };
    for_each_chunk(&mut out, inner, n >= STREAM_PAR_THRESHOLD, body);
    buf(out)
}

/// `op(x)` elementwise (the body of `Backend::unary`).
pub(crate) fn unary<T: CpuElem>(op: UnaryOp, x: &Buf<T>) -> Buf<T> {
    let (zero, one) = (T::zero(), T::one());
    buf(match op {
        UnaryOp::Relu => map_unary(x, |v| v.max(zero)),
        UnaryOp::Step => map_unary(x, |v| if v > zero { one } else { zero }),
        UnaryOp::Neg => map_unary(x, |v| -v),
        UnaryOp::Square => map_unary(x, |v| v * v),
        UnaryOp::Sqrt => map_unary(x, |v| v.sqrt()),
        UnaryOp::Recip => map_unary(x, |v| one / v),
        UnaryOp::AddScalar(c) => {
            let c = T::of(c);
            map_unary(x, move |v| v + c)
        }
        UnaryOp::MulScalar(c) => {
            let c = T::of(c);
            map_unary(x, move |v| v * c)
        }
        UnaryOp::ReluShift(c) => {
            let c = T::of(c);
            map_unary(x, move |v| (v + c).max(zero))
        }
        // the costlier ops go parallel from a smaller size
        UnaryOp::Exp => map_vec(x, |v| v.exp()),
        UnaryOp::Log => map_vec(x, |v| v.ln()),
        UnaryOp::Abs => map_vec(x, |v| v.abs()),
        UnaryOp::SoftThreshold(l) => {
            let l = T::of(l);
            map_vec(x, move |v| {
                if v > l {
                    v - l
                } else if v < -l {
                    v + l
                } else {
                    zero
                }
            })
        }
        UnaryOp::ClampMin(c) => {
            let c = T::of(c);
            map_vec(x, move |v| if v < c { c } else { v })
        }
        UnaryOp::ClampMax(c) => {
            let c = T::of(c);
            map_vec(x, move |v| if v > c { c } else { v })
        }
    })
}

/// `op(a, b)` with broadcasting strides (the body of `Backend::binary`).
pub(crate) fn binary<T: CpuElem>(
    op: BinaryOp,
    a: &Buf<T>,
    a_strides: &[usize],
    b: &Buf<T>,
    b_strides: &[usize],
    out_shape: &[usize],
) -> Buf<T> {
    // one monomorphised body per op, so the inner loops carry no match and vectorise
    match op {
        BinaryOp::Add => binary_with(|x: T, y: T| x + y, (a, a_strides), (b, b_strides), out_shape),
        BinaryOp::Sub => binary_with(|x: T, y: T| x - y, (a, a_strides), (b, b_strides), out_shape),
        BinaryOp::Mul => binary_with(|x: T, y: T| x * y, (a, a_strides), (b, b_strides), out_shape),
        BinaryOp::Div => binary_with(|x: T, y: T| x / y, (a, a_strides), (b, b_strides), out_shape),
        BinaryOp::WherePositive => binary_with(
            |x: T, y: T| if y > T::zero() { x } else { T::zero() },
            (a, a_strides),
            (b, b_strides),
            out_shape,
        ),
        // NaN in `b` keeps `a`, as in the reference
        BinaryOp::Max => binary_with(
            |x: T, y: T| if x >= y || y.is_nan() { x } else { y },
            (a, a_strides),
            (b, b_strides),
            out_shape,
        ),
        BinaryOp::Min => binary_with(
            |x: T, y: T| if x <= y || y.is_nan() { x } else { y },
            (a, a_strides),
            (b, b_strides),
            out_shape,
        ),
    }
}
