//! Inverse and log-determinant of positive definite matrices from one factorisation (the operators and rates of 4.1.3-4.1.4 and 4.1.20-4.1.22), with the reference bodies of `Kernels::spd_inverse_logdet` and `Kernels::herm_inverse_logdet`.
//!
//! For `A = L L^H` (Cholesky), `log det A = 2 sum_i ln L_ii` and
//! `A^-1 = L^-H L^-1`: both come from the same `L`. The reference bodies
//! call the two primitives (two factorisations); a backend shares one.

use crate::backend::Backend;
use crate::tensor::{ComplexTensor, Tensor};
use crate::Result;

/// The reference body of [`super::Kernels::spd_inverse_logdet`]: the inverses
/// and the log-determinants of a batch of SPD matrices `[.., n, n]`, by two
/// primitives.
pub fn spd_inverse_logdet_reference<B: Backend>(a: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
    Ok((a.spd_inverse()?, a.spd_logdet()?))
}

/// The reference body of [`super::Kernels::herm_inverse_logdet`]: the
/// inverses and the (real) log-determinants of a batch of Hermitian positive
/// definite matrices, by two primitives.
pub fn herm_inverse_logdet_reference<B: Backend>(
    a: &ComplexTensor<B>,
) -> Result<(ComplexTensor<B>, Tensor<B>)> {
    Ok((a.herm_inverse()?, a.herm_logdet()?))
}
