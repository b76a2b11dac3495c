//! rate-core: the `Backend` trait of primitives and the `Kernels` extension trait of fused kernels, tensors over them, and the coding rate, rate reduction and their gradients (4.1.1-4.1.5, 4.1.16-4.1.22).
//!
//! Everything numerical in the project is written against [`Backend`]; the
//! CPU (`backend-cpu`) and GPU (`backend-wgpu`) crates implement it, and the
//! `testing` feature provides the conformance suite every backend must pass.

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod circulant;
pub mod collective;
pub mod error;
pub mod kernels;
pub mod operators;
pub mod rate;
pub mod tensor;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{AxisView, Backend, BinaryOp, Element, FftNorm, MatmulSpec, ReduceOp, UnaryOp};
pub use collective::{Collective, Local};
pub use error::{Error, Result};
pub use kernels::{AttentionSpec, DenseAttentionSpec, Kernels, TokenStats, TokenStatsSpec};
pub use rate::{
    coding_rate, coding_rate_grad, compression_operators, compression_rate, compression_rate_grad,
    expansion_operator, rate_reduction, rate_reduction_grad, Membership, Rates,
};
pub use tensor::{ComplexTensor, Tensor};
