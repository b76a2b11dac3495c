//! rate-core: the `Backend` trait, tensors over it, and the coding rate, rate reduction and their gradients (4.1.1-4.1.5, 4.1.16-4.1.22).
//!
//! Everything numerical in the project is written against [`Backend`]; the
//! CPU (`backend-cpu`) and GPU (`backend-wgpu`) crates implement it, and the
//! `testing` feature provides the conformance suite every backend must pass.

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod attention;
pub mod backend;
pub mod circulant;
pub mod error;
pub mod invariant_step;
pub mod layer_ops;
pub mod rate;
pub mod tensor;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token_stats;

pub use attention::{
    attention_dense, attention_dense_backward, attention_tiled, attention_tiled_backward, AttentionSpec,
    DenseAttentionSpec,
};
pub use backend::{AxisView, Backend, BinaryOp, Element, FftNorm, MatmulSpec, ReduceOp, UnaryOp};
pub use error::{Error, Result};
pub use rate::{
    coding_rate, coding_rate_grad, compression_operators, compression_rate, compression_rate_grad,
    expansion_operator, rate_reduction, rate_reduction_grad, Membership, Rates,
};
pub use tensor::{ComplexTensor, Tensor};
pub use token_stats::{token_stats, TokenStats, TokenStatsSpec};
