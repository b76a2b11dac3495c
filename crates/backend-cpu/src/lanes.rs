//! Row reductions in eight independent accumulators (sum, maximum, dot product, `x^2`-weighted sum), so that their loops vectorise, and the sum of per-task partials: the inner loops of the fused CPU kernels.

use crate::CpuElem;

/// `step` over the pairs `(a_i, b_i)` in eight independent accumulators
/// started at `init` (lane `j` takes `i = j mod 8`), the remainder folded
/// from `init`, then the lanes folded into it by `join`.
#[inline(always)]
fn fold8<T: CpuElem>(a: &[T], b: &[T], init: T, step: impl Fn(T, T, T) -> T, join: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        if let (Ok(x), Ok(y)) = (<&[T; 8]>::try_from(x), <&[T; 8]>::try_from(y)) {
            for j in 0..8 {
                acc[j] = step(acc[j], x[j], y[j]);
            }
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(init, |s, (&x, &y)| step(s, x, y));
    acc.iter().fold(tail, |s, &v| join(s, v))
}

/// Maximum of a row with eight independent accumulators (vectorisable).
#[inline(always)]
pub fn lanes_max<T: CpuElem>(row: &[T]) -> T {
    fold8(row, row, T::neg_infinity(), |m, x, _| m.max(x), |m, v| m.max(v))
}

/// Sum of a row with eight independent accumulators (vectorisable).
#[inline(always)]
pub fn lanes_sum<T: CpuElem>(row: &[T]) -> T {
    fold8(row, row, T::zero(), |s, x, _| s + x, |s, v| s + v)
}

/// Dot product of two rows with eight independent accumulators (vectorisable).
#[inline(always)]
pub fn lanes_dot<T: CpuElem>(a: &[T], b: &[T]) -> T {
    fold8(a, b, T::zero(), |s, x, y| s + x * y, |s, v| s + v)
}

/// `sum_i x_i^2 y_i` of two rows with eight independent accumulators (vectorisable).
#[inline(always)]
pub fn lanes_sq_dot<T: CpuElem>(x: &[T], y: &[T]) -> T {
    fold8(x, y, T::zero(), |s, u, v| s + u * u * v, |s, v| s + v)
}

/// `acc += part` elementwise: one per-task partial added into the total.
#[inline(always)]
pub fn add_into<T: CpuElem>(acc: &mut [T], part: &[T]) {
    acc.iter_mut().zip(part).for_each(|(a, &p)| *a += p);
}

/// `a + b` of two per-task partials, in `a`: the operation of a rayon `reduce`.
pub fn add_partials<T: CpuElem>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    add_into(&mut a, &b);
    a
}
