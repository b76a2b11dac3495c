//! Row reductions in eight independent accumulators (sum, maximum, dot product, `x^2`-weighted sum), so that their loops vectorise: the inner loops of the fused CPU kernels.

use crate::CpuElem;

/// Maximum of a row with eight independent accumulators (vectorisable).
#[inline(always)]
pub fn lanes_max<T: CpuElem>(row: &[T]) -> T {
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
#[inline(always)]
pub fn lanes_sum<T: CpuElem>(row: &[T]) -> T {
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
#[inline(always)]
pub fn lanes_dot<T: CpuElem>(a: &[T], b: &[T]) -> T {
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

/// `sum_i x_i^2 y_i` of two rows with eight independent accumulators (vectorisable).
#[inline(always)]
pub fn lanes_sq_dot<T: CpuElem>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (mut cx, mut cy) = (x.chunks_exact(8), y.chunks_exact(8));
    for (a, b) in (&mut cx).zip(&mut cy) {
        for ((s, &u), &v) in acc.iter_mut().zip(a).zip(b) {
            *s += u * u * v;
        }
    }
    let tail = cx.remainder().iter().zip(cy.remainder()).fold(T::zero(), |s, (&u, &v)| s + u * u * v);
    acc.iter().fold(T::zero(), |s, &v| s + v) + tail
}
