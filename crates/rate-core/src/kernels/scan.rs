//! Inclusive cumulative sums along an axis (the running sums of causal TSSA, 4.3.15), with the reference body of `Kernels::cumsum`.
//!
//! `y_t = sum_{s <= t} x_s` (or `sum_{s >= t}` when reversed), computed by
//! recursive doubling: `ceil(log2 len)` passes of shifted adds, each a
//! primitive op, so any backend has it; `backend-cpu` runs one sequential
//! pass per column instead.

use crate::backend::Backend;
use crate::tensor::Tensor;

/// Inclusive cumulative sum of a `[outer, len, inner]` buffer along the
/// middle axis by recursive doubling (Hillis-Steele: `ceil(log2 len)` shifted
/// adds), the reference body of [`super::Kernels::cumsum`].
pub fn cumsum_by_doubling<B: Backend>(x: &Tensor<B>, reverse: bool) -> Tensor<B> {
    let (outer, len, inner) = (x.dim(0), x.dim(1), x.dim(2));
    let be = x.backend();
    let mut acc = x.clone();
    let mut k = 1;
    while k < len {
        let zeros = Tensor::zeros(be, &[outer, k, inner]);
        let shifted = if reverse {
            Tensor::cat(&[&acc.narrow(1, k, len - k), &zeros], 1)
        } else {
            Tensor::cat(&[&zeros, &acc.narrow(1, 0, len - k)], 1)
        };
        acc = acc.add(&shifted);
        k *= 2;
    }
    acc
}
