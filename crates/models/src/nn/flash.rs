//! Shared-QKV attention of the MSSA head, `softmax(s W W^T) W` (4.2.20, AoT 4.3.2), on `[problems, n, dh]` tokens: the dense attention kernel (forms the `n x n` matrix) and the tiled flash-attention kernel (memory linear in `n`), each with its explicit backward.
//!
//! Tokens are `W = [problems, n, dh]` (problems = batch x heads), the same
//! `W` serves as query, key and value, and `s` is the logit scale (the
//! chapter's `dh^-1/2`). With `A = softmax_rows(s W W^T)` and `O = A W`,
//! for `G = dL/dO`:
//!
//! ```text
//! dA = G W^T,   dS = A * (dA - rowsum(dA * A)),   dW = A^T G + s (dS + dS^T) W
//! ```
//!
//! (the three terms are the value, query and key contributions). The tiled
//! path computes the same thing without the `n x n` matrix: see
//! `rate_core::kernels::attention_tiled` for the online-softmax recurrence and the
//! recomputing backward; the dense path is `rate_core::kernels::attention_dense`
//! with one head. [`forward`] / [`backward`] pick the dense path up to
//! [`DENSE_MAX_TOKENS`] tokens and the tiled path above.

use crate::{Kernels, Tensor};
use rate_core::kernels::{
    attention_dense, attention_dense_backward, attention_tiled, attention_tiled_backward, AttentionSpec,
    DenseAttentionSpec,
};

/// Largest token count [`forward`] sends to the dense path; above it the
/// `n x n` matrix is never formed. Small on purpose: on the CPU backend the
/// fused tiled kernel was faster than the dense path at every size measured
/// (about 4x at 256 tokens and 5x at 1024, 8 heads of 48, f32, one thread), so the dense path
/// only serves problems of at most one tile, where both are the same few ops.
pub const DENSE_MAX_TOKENS: usize = 64;
/// Query rows per tile of the tiled path.
pub const Q_TILE: usize = 128;
/// Key rows per tile of the tiled path.
pub const K_TILE: usize = 256;

/// What the dense backward needs.
#[derive(Clone, Debug)]
pub struct DenseCache<B: Kernels> {
    /// Tokens `W` `[problems, n, dh]`.
    pub w: Tensor<B>,
    /// Attention matrix `A = softmax(s W W^T)` `[problems, n, n]`.
    pub attn: Tensor<B>,
    /// Logit scale `s`.
    pub scale: f64,
}

/// What the tiled backward needs: `O(n dh)` values.
#[derive(Clone, Debug)]
pub struct TiledCache<B: Kernels> {
    /// Tokens `W` `[problems, n, dh]`.
    pub w: Tensor<B>,
    /// Output `O` `[problems, n, dh]`.
    pub out: Tensor<B>,
    /// Row log-sum-exp of `s W W^T`, `[problems, n]`.
    pub lse: Tensor<B>,
    /// Sizes, scale and tiling.
    pub spec: AttentionSpec,
}

/// The cache of [`forward`]: whichever path ran.
#[derive(Clone, Debug)]
pub enum AttentionCache<B: Kernels> {
    /// The dense path ran.
    Dense(DenseCache<B>),
    /// The tiled path ran.
    Tiled(TiledCache<B>),
}

fn check_tokens<B: Kernels>(w: &Tensor<B>, op: &str) {
    assert!(w.rank() == 3 && w.dim(1) > 0, "{op}: tokens {:?} are not [problems, n > 0, dh]", w.shape());
}

/// Dense path: `O = softmax(s W W^T) W`, forming the `n x n` matrix, on the
/// dense attention kernel ([`attention_dense()`], one head): with
/// `W' = sqrt(s) W` the kernel gives `A = softmax(W' W'^T)` and `A W'`, so
/// `O = A W' / sqrt(s)`. The scale must be positive.
pub fn dense_forward<B: Kernels>(w: &Tensor<B>, scale: f64) -> (Tensor<B>, DenseCache<B>) {
    check_tokens(w, "dense attention");
    assert!(scale > 0.0 && scale.is_finite(), "dense attention: scale {scale} must be positive");
    let (p, n) = (w.dim(0), w.dim(1));
    let spec = DenseAttentionSpec::for_tokens(w, 1);
    let root = scale.sqrt();
    let (attn, out) = attention_dense(&w.scale(root), spec);
    (out.scale(1.0 / root), DenseCache { w: w.clone(), attn: attn.reshape(&[p, n, n]), scale })
}

/// Backward of [`dense_forward`]: `dL/dW` from `dL/dO` by the kernel's
/// backward at `W' = sqrt(s) W` (the two factors `sqrt(s)` of the chain rule cancel).
pub fn dense_backward<B: Kernels>(cache: &DenseCache<B>, grad_out: &Tensor<B>) -> Tensor<B> {
    let DenseCache { w, attn, scale } = cache;
    assert_eq!(
        grad_out.shape(),
        w.shape(),
        "dense attention backward: gradient {:?} vs tokens {:?}",
        grad_out.shape(),
        w.shape()
    );
    let (p, n) = (w.dim(0), w.dim(1));
    let spec = DenseAttentionSpec::for_tokens(w, 1);
    attention_dense_backward(&w.scale(scale.sqrt()), &attn.reshape(&[p, 1, n, n]), grad_out, spec)
}

/// Tiled forward with the default tiles.
pub fn tiled_forward<B: Kernels>(w: &Tensor<B>, scale: f64) -> (Tensor<B>, TiledCache<B>) {
    tiled_forward_with(w, scale, Q_TILE, K_TILE)
}

/// Tiled forward with `q_tile` query rows and `k_tile` key rows per tile
/// (any positive sizes; `n` need not be a multiple of them).
pub fn tiled_forward_with<B: Kernels>(
    w: &Tensor<B>,
    scale: f64,
    q_tile: usize,
    k_tile: usize,
) -> (Tensor<B>, TiledCache<B>) {
    check_tokens(w, "tiled attention");
    let spec = AttentionSpec::for_tokens(w, scale, q_tile, k_tile);
    let (out, lse) = attention_tiled(w, spec);
    (out.clone(), TiledCache { w: w.clone(), out, lse, spec })
}

/// Backward of [`tiled_forward`]: recomputes the tiles, `O(n dh)` memory.
pub fn tiled_backward<B: Kernels>(cache: &TiledCache<B>, grad_out: &Tensor<B>) -> Tensor<B> {
    attention_tiled_backward(&cache.w, &cache.out, &cache.lse, grad_out, cache.spec)
}

/// `softmax(s W W^T) W` for `W = [problems, n, dh]`, dense up to
/// [`DENSE_MAX_TOKENS`] tokens and tiled above, with the cache for [`backward`].
pub fn forward<B: Kernels>(w: &Tensor<B>, scale: f64) -> (Tensor<B>, AttentionCache<B>) {
    check_tokens(w, "attention");
    if w.dim(1) <= DENSE_MAX_TOKENS {
        let (o, c) = dense_forward(w, scale);
        (o, AttentionCache::Dense(c))
    } else {
        let (o, c) = tiled_forward(w, scale);
        (o, AttentionCache::Tiled(c))
    }
}

/// Backward of [`forward`]: `dL/dW` from `dL/dO`.
pub fn backward<B: Kernels>(cache: &AttentionCache<B>, grad_out: &Tensor<B>) -> Tensor<B> {
    match cache {
        AttentionCache::Dense(c) => dense_backward(c, grad_out),
        AttentionCache::Tiled(c) => tiled_backward(c, grad_out),
    }
}

/// Inference only: `softmax(s W W^T) W` by the same dispatch as [`forward`],
/// keeping no cache.
pub fn attention<B: Kernels>(w: &Tensor<B>, scale: f64) -> Tensor<B> {
    check_tokens(w, "attention");
    if w.dim(1) <= DENSE_MAX_TOKENS {
        dense_forward(w, scale).0
    } else {
        attention_tiled(w, AttentionSpec::for_tokens(w, scale, Q_TILE, K_TILE)).0
    }
}
