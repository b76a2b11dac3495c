//! Multi-head subspace self-attention, MSSA (4.2.12-4.2.13 as the reference code builds it): one shared projection `W = x U` split into heads, `softmax(W W^T / sqrt(dh)) W` per head, heads merged by an output Linear.
//!
//! This is the dense reference: the `[batch, heads, tokens, tokens]`
//! attention matrix is formed explicitly (batched over batch and heads), so
//! it can be exported and serves as the check of any tiled kernel.
//!
//! Forward, per head `h` (columns `h dh .. (h+1) dh` of the projection):
//! `W_h = x U_h^T`, `S_h = W_h W_h^T dh^-1/2`, `A_h = softmax_rows(S_h)`,
//! `O_h = A_h W_h`; `y = [O_1 .. O_H] Wo^T + bo` (`to_out`, present unless
//! `heads == 1 && dim_head == dim`).
//!
//! Backward: with `G_h = dL/dO_h`: `dA_h = G_h W_h^T`, `dW_h = A_h^T G_h +
//! (dS_h + dS_h^T) W_h dh^-1/2` where `dS_h = A_h * (dA_h - rowsum(dA_h * A_h))`.

use super::{init, join, Grads, Linear, Module};
use crate::{Backend, Tensor};
use rand::rngs::StdRng;

/// The MSSA block (the authors' `Attention` module).
#[derive(Clone, Debug)]
pub struct Mssa<B: Backend> {
    /// Shared projection `U^T`, `[heads * dim_head, dim]`, no bias (`qkv`).
    pub qkv: Linear<B>,
    /// Output projection `[dim, heads * dim_head]` with bias (`to_out.0`), if present.
    pub to_out: Option<Linear<B>>,
    /// Number of heads `K`.
    pub heads: usize,
    /// Dimension of each head's subspace `p`.
    pub dim_head: usize,
}

/// What [`Mssa::backward`] needs from the forward pass; also the source of the attention maps.
#[derive(Clone, Debug)]
pub struct MssaCache<B: Backend> {
    /// Input `[batch, tokens, dim]`.
    pub x: Tensor<B>,
    /// Projected tokens per head `W = x U`, `[batch, heads, tokens, dim_head]`.
    pub w: Tensor<B>,
    /// Attention `softmax(W W^T / sqrt(dh))`, `[batch, heads, tokens, tokens]`.
    pub attn: Tensor<B>,
    /// Merged head outputs `[batch, tokens, heads * dim_head]` (input of `to_out`).
    pub merged: Tensor<B>,
}

impl<B: Backend> Mssa<B> {
    /// A block with PyTorch's default initialisation (seeded).
    pub fn new(backend: &B, dim: usize, heads: usize, dim_head: usize, rng: &mut StdRng) -> Self {
        let inner = heads * dim_head;
        let qkv = init::linear(backend, dim, inner, false, rng);
        let to_out = has_to_out(dim, heads, dim_head).then(|| init::linear(backend, inner, dim, true, rng));
        Mssa { qkv, to_out, heads, dim_head }
    }

    /// The attention scale `dim_head^-1/2`.
    pub fn scale(&self) -> f64 {
        (self.dim_head as f64).powf(-0.5)
    }

    fn dims(&self, x: &Tensor<B>) -> (usize, usize) {
        assert_eq!(x.rank(), 3, "Mssa: input {:?} is not [batch, tokens, dim]", x.shape());
        (x.dim(0), x.dim(1))
    }

    /// Projects `x` and splits the heads: `[batch, heads, tokens, dim_head]`.
    pub fn project(&self, x: &Tensor<B>) -> Tensor<B> {
        let (b, n) = self.dims(x);
        self.qkv.forward(x).reshape(&[b, n, self.heads, self.dim_head]).permute(&[0, 2, 1, 3])
    }

    /// `MSSA(x)` for `x` of shape `[batch, tokens, dim]`, with the cache for backward.
    pub fn forward(&self, x: &Tensor<B>) -> (Tensor<B>, MssaCache<B>) {
        let (b, n) = self.dims(x);
        let w = self.project(x);
        let attn = w.scale(self.scale()).matmul_t(&w, false, true).softmax(-1);
        let merged = attn.matmul(&w).permute(&[0, 2, 1, 3]).reshape(&[b, n, self.heads * self.dim_head]);
        let y = match &self.to_out {
            Some(l) => l.forward(&merged),
            None => merged.clone(),
        };
        (y, MssaCache { x: x.clone(), w, attn, merged })
    }

    /// Backward of [`Self::forward`]: adds `prefix.qkv.weight` and
    /// `prefix.to_out.0.{weight,bias}` gradients and returns `dL/dx`.
    pub fn backward(
        &self,
        cache: &MssaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let (b, n) = self.dims(&cache.x);
        let (h, dh) = (self.heads, self.dim_head);
        let g_merged = match &self.to_out {
            Some(l) => l.backward(&cache.merged, grad_out, &join(prefix, "to_out.0"), grads),
            None => grad_out.clone(),
        };
        let g_o = g_merged.reshape(&[b, n, h, dh]).permute(&[0, 2, 1, 3]);
        let (w, attn) = (&cache.w, &cache.attn);
        let g_attn = g_o.matmul_t(w, false, true);
        let g_scores = softmax_backward(attn, &g_attn).scale(self.scale());
        let g_w =
            attn.matmul_t(&g_o, true, false).add(&g_scores.matmul(w)).add(&g_scores.matmul_t(w, true, false));
        let g_proj = g_w.permute(&[0, 2, 1, 3]).reshape(&[b, n, h * dh]);
        self.qkv.backward(&cache.x, &g_proj, &join(prefix, "qkv"), grads)
    }
}

/// Whether the reference code adds the output Linear: `not (heads == 1 and dim_head == dim)`.
pub fn has_to_out(dim: usize, heads: usize, dim_head: usize) -> bool {
    !(heads == 1 && dim_head == dim)
}

/// Backward of a softmax along the last axis: `A * (dA - rowsum(dA * A))`.
pub fn softmax_backward<B: Backend>(attn: &Tensor<B>, grad_attn: &Tensor<B>) -> Tensor<B> {
    let dot = grad_attn.mul(attn).sum_axis(-1, true);
    attn.mul(&grad_attn.sub(&dot))
}

impl<B: Backend> Module<B> for Mssa<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.qkv.visit(&join(prefix, "qkv"), f);
        if let Some(l) = &self.to_out {
            l.visit(&join(prefix, "to_out.0"), f);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.qkv.visit_mut(&join(prefix, "qkv"), f);
        if let Some(l) = &mut self.to_out {
            l.visit_mut(&join(prefix, "to_out.0"), f);
        }
    }
}
