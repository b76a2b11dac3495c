//! Fused kernels of the models as an extension trait of `Backend` (`Kernels`), one file per kernel family with its spec, its equation and its reference body built from primitives.
//!
//! | file | kernels | equation |
//! |---|---|---|
//! | `layer_norm.rs` | `layer_norm`, `layer_norm_backward`, `softmax_backward` | LayerNorm rows of CRATE/TOST (4.2.20) |
//! | `scan.rs` | `cumsum` | running sums of causal TSSA (4.3.15) |
//! | `attention_tiled.rs` | `attention_tiled`, `attention_tiled_backward` | MSSA / AoT head `softmax(s W W^T) W` (4.2.20, 4.3.2), online softmax |
//! | `attention_dense.rs` | `attention_dense`, `attention_dense_backward` | the same, dense, heads interleaved |
//! | `token_stats.rs` | `token_stats` | TSSA memberships and second moments (4.3.14-4.3.15) |
//! | `invariant.rs` | `invariant_step`, `real_operand`, `invariant_products` | invariant ReduNet layer per frequency (4.1.27) |
//! | `redunet.rs` | `redunet_build`, `redunet_transform` | ReduNet built forward and applied (4.1.11-4.1.13, Algorithm 4.1) |
//!
//! `ext.rs` holds the trait (every method has its reference body) and
//! `entry.rs` the shape-checked entry points over tensors, re-exported here.
//! The family files depend only on the primitives (`Backend`, `Tensor`, and
//! `operators`/`rate` for ReduNet's engine, which run on primitives too), so
//! the modules form no import circle: `entry` -> `ext` -> families ->
//! (`operators`, `rate`) -> tensor -> backend.
//!
//! To add a kernel: write its spec and reference body in its family file,
//! add the method (whose default body calls the reference) to [`Kernels`] and
//! its entry point to `entry.rs`, list its check in `rate_core::testing`'s
//! conformance suite, then override it in the backends that have a faster way.

pub mod attention_dense;
pub mod attention_tiled;
mod entry;
mod ext;
pub mod invariant;
pub mod layer_norm;
pub mod redunet;
pub mod scan;
pub mod token_stats;

pub use attention_dense::{merge_heads, split_heads, DenseAttentionSpec};
pub use attention_tiled::AttentionSpec;
pub use entry::{
    attention_dense, attention_dense_backward, attention_tiled, attention_tiled_backward, cumsum,
    invariant_products, invariant_step, layer_norm, layer_norm_backward, real_operand, redunet_build,
    redunet_transform, softmax_backward, token_stats,
};
pub use ext::Kernels;
pub use invariant::{InvariantProductsSpec, InvariantStepSpec};
pub use redunet::{Depth, LayerSet, Record, RedunetRun, RedunetSpec};
pub use token_stats::{TokenStats, TokenStatsSpec};
