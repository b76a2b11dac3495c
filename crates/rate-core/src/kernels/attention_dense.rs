//! Dense multi-head shared-QKV attention on head-interleaved tokens (MSSA of 4.2.20, AoT 4.3.2): `A_h = softmax_rows(W_h W_h^T)`, `O_h = A_h W_h`, and its backward, with the reference bodies of `Kernels::attention_dense*`.
//!
//! Tokens are `[batch, n, heads * dh]` with head `h` in columns
//! `h dh .. (h + 1) dh` (as a projection `x U^T` leaves them); any logit
//! scale is folded into `W` by the caller. With `G_h` the gradient of the
//! merged output in head `h`:
//!
//! ```text
//! dS = A * (G W^T - rowsum(A * G W^T))        (softmax backward)
//! dW = A^T G + dS^T W + dS W                  (value, key, query)
//! ```
//!
//! The reference bodies split the heads by a permutation and use batched
//! products; `backend-cpu` works on the interleaved layout in place.

use crate::backend::Backend;
use crate::tensor::Tensor;

/// Sizes of one dense multi-head attention call ([`super::attention_dense()`]) on
/// head-interleaved tokens `[batch, tokens, heads * dim_head]`: the columns
/// `h dim_head .. (h + 1) dim_head` of a row are the token in head `h`, as a
/// projection `x U^T` leaves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseAttentionSpec {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence `n`.
    pub tokens: usize,
    /// Heads `H`.
    pub heads: usize,
    /// Columns per head `dh`.
    pub dim_head: usize,
}

impl DenseAttentionSpec {
    /// Spec for `w` of shape `[batch, tokens, heads * dim_head]`; panics naming the shape otherwise.
    pub fn for_tokens<B: Backend>(w: &Tensor<B>, heads: usize) -> Self {
        assert!(
            w.rank() == 3 && heads > 0 && w.dim(2) % heads == 0,
            "attention_dense: tokens {:?} are not [batch, tokens, {heads} heads x dim_head]",
            w.shape()
        );
        DenseAttentionSpec { batch: w.dim(0), tokens: w.dim(1), heads, dim_head: w.dim(2) / heads }
    }

    /// `[batch, tokens, heads * dim_head]`.
    pub fn tokens_shape(&self) -> [usize; 3] {
        [self.batch, self.tokens, self.heads * self.dim_head]
    }

    /// `[batch, heads, tokens, tokens]`.
    pub fn attention_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.tokens, self.tokens]
    }
}

/// Head-interleaved tokens `[batch, rows, heads * dim_head]` as
/// `[batch, heads, rows, dim_head]` (one permutation).
pub fn split_heads<B: Backend>(w: &Tensor<B>, heads: usize) -> Tensor<B> {
    let s = DenseAttentionSpec::for_tokens(w, heads);
    w.reshape(&[s.batch, s.tokens, s.heads, s.dim_head]).permute(&[0, 2, 1, 3])
}

/// `[batch, heads, rows, dim_head]` back to head-interleaved
/// `[batch, rows, heads * dim_head]` (one permutation).
pub fn merge_heads<B: Backend>(x: &Tensor<B>) -> Tensor<B> {
    assert_eq!(x.rank(), 4, "merge_heads: {:?} is not [batch, heads, rows, dim_head]", x.shape());
    let (b, h, rows, dh) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    x.permute(&[0, 2, 1, 3]).reshape(&[b, rows, h * dh])
}

/// The dense attention built from tensor ops (the default body of
/// [`super::Kernels::attention_dense`]): heads split by a permutation, one batched
/// product for the scores, a row softmax, one batched product, heads merged.
pub fn dense_forward<B: Backend>(w: &Tensor<B>, spec: DenseAttentionSpec) -> (Tensor<B>, Tensor<B>) {
    let wh = split_heads(w, spec.heads);
    let attn = wh.matmul_t(&wh, false, true).softmax(-1);
    let out = merge_heads(&attn.matmul(&wh));
    (attn, out)
}

/// The dense backward built from tensor ops (the default body of
/// [`super::Kernels::attention_dense_backward`]): with `G` the output gradient of a
/// head, `dS = A * (G W^T - rowsum(A * G W^T))` and
/// `dW = A^T G + dS^T W + dS W` (`W` is query, key and value).
pub fn dense_backward<B: Backend>(
    w: &Tensor<B>,
    attn: &Tensor<B>,
    grad_out: &Tensor<B>,
    spec: DenseAttentionSpec,
) -> Tensor<B> {
    let wh = split_heads(w, spec.heads);
    let g = split_heads(grad_out, spec.heads);
    let ds = super::layer_norm::softmax_backward_reference(attn, &g.matmul_t(&wh, false, true));
    let gw = attn.matmul_t(&g, true, false).add(&ds.matmul_t(&wh, true, false)).add(&ds.matmul(&wh));
    merge_heads(&gw)
}
