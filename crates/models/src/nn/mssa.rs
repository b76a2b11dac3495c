//! Multi-head subspace self-attention, MSSA (4.2.12-4.2.13 as the reference code builds it): one shared projection `W = x U` split into heads, `softmax(W W^T / sqrt(dh)) W` per head, heads merged by an output Linear.
//!
//! The attention map is the softmax (CRATE) or the AoT theorem's thresholded
//! softmax ([`Phi`]). Above [`TILED_ABOVE_TOKENS`] tokens the softmax path runs
//! the tiled flash-attention kernel (`O(n)` memory, forward and backward).
//!
//! The dense path is the reference: the `[batch, heads, tokens, tokens]`
//! attention matrix is formed explicitly (batched over batch and heads), so
//! it can be exported and serves as the check of any tiled kernel.
//!
//! Forward, per head `h` (columns `h dh .. (h+1) dh` of the projection):
//! `W_h = x U_h^T`, `S_h = W_h W_h^T dh^-1/2`, `A_h = softmax_rows(S_h)`,
//! `O_h = A_h W_h`; `y = [O_1 .. O_H] Wo^T + bo` (`to_out`, present unless
//! `heads == 1 && dim_head == dim`). [`Mssa::forward_reference`] computes
//! exactly this.
//!
//! The fast path folds the scale into the weights: with `c = dh^-1/4`,
//! `W' = x (c U)^T` gives `S = W' W'^T` and `O = A W' / c`, and the `1/c`
//! goes into the output weight, `y = (A W') (Wo / c)^T + bo`; no pass over
//! the activations is spent on scaling. It can also attend from the first
//! `q` tokens only (queries) to all tokens (keys and values), which is all
//! the last layer of a class-token classifier needs.
//!
//! Backward, with `G = dL/d(A W')`: `dA = G W'^T`, `dS = A * (dA - rowsum(dA * A))`,
//! `dW' = A^T G + dS^T Q + [dS W'; 0]` (`Q` the query rows of `W'`, the last
//! term landing on the query rows), then `dU = c dW'^T x`, `dWo = d(Wo/c) / c`.

use super::classifier::Block;
pub use super::config::has_to_out;
use super::crate_config::CrateConfig;
use super::flash::{self, TiledCache};
use super::measure::LayerMeasurement;
use super::{accumulate, init, join, Grads, Linear, Module};
use crate::{Kernels, Result, Tensor};
use rand::rngs::StdRng;
use rate_core::kernels::{self, attention_dense, attention_dense_backward, DenseAttentionSpec};
use rate_core::kernels::{merge_heads, split_heads};

/// The MSSA block (the authors' `Attention` module).
#[derive(Clone, Debug)]
pub struct Mssa<B: Kernels> {
    /// Shared projection `U^T`, `[heads * dim_head, dim]`, no bias (`qkv`).
    pub qkv: Linear<B>,
    /// Output projection `[dim, heads * dim_head]` with bias (`to_out.0`), if present.
    pub to_out: Option<Linear<B>>,
    /// Number of heads `K`.
    pub heads: usize,
    /// Dimension of each head's subspace `p`.
    pub dim_head: usize,
}

/// What MSSA's backward ([`Block::backward`]) needs from the forward pass; also the source of the attention maps.
#[derive(Clone, Debug)]
pub struct MssaCache<B: Kernels> {
    /// Input `[batch, tokens, dim]`.
    pub x: Tensor<B>,
    /// Projected tokens, scaled: `W' = dh^-1/4 x U^T`, head-interleaved
    /// `[batch, tokens, heads * dim_head]` as the projection leaves them
    /// ([`Self::head_tokens`] splits them).
    pub proj: Tensor<B>,
    /// Number of heads the projection holds.
    pub heads: usize,
    /// Attention `phi(W W^T / sqrt(dh))` of the query rows, `[batch, heads, queries, tokens]`;
    /// `None` when the tiled path ran (the `n x n` matrix was never formed).
    pub attn: Option<Tensor<B>>,
    /// The tiled path's cache (`O(n dh)`), when it ran.
    pub tiled: Option<TiledCache<B>>,
    /// The attention map `phi` that ran.
    pub phi: Phi,
    /// Merged scaled head outputs `A W'`, `[batch, queries, heads * dim_head]` (input of `to_out`).
    pub merged: Tensor<B>,
    /// Number of query rows (the first tokens).
    pub queries: usize,
    /// The scaled weights the forward pass used.
    pub weights: MssaWeights<B>,
}

/// The map `phi` applied to the scores `W W^T / sqrt(dh)` of each head (4.3.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phi {
    /// Row softmax (CRATE, the trained AoT).
    Softmax,
    /// The theorem's thresholded softmax `h(softmax(x))` with `h(a) = tau 1{a > tau}`
    /// (Theorem 4.3.2's `phi`); its derivative is zero almost everywhere, so
    /// only the value path carries gradient.
    Threshold(f64),
}

/// Token count above which [`Mssa::forward`] (softmax, all queries) runs the
/// tiled flash-attention kernel of [`super::flash`] instead of forming the
/// `n x n` matrix: the memory then grows as `O(n)`.
pub const TILED_ABOVE_TOKENS: usize = 512;

/// The weights of the fast path: `c U` and `Wo / c` with `c = dh^-1/4`
/// (formed once per step by [`Mssa::prepare`]).
#[derive(Clone, Debug)]
pub struct MssaWeights<B: Kernels> {
    /// `c U`, `[heads * dim_head, dim]`.
    pub qkv: Tensor<B>,
    /// `Wo / c` with the bias, if `to_out` is present.
    pub to_out: Option<Linear<B>>,
}

impl<B: Kernels> Mssa<B> {
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
        self.dims(x); // asserts the shape, naming it
        split_heads(&self.qkv.forward(x), self.heads)
    }

    /// `dh^-1/4`: the attention scale split over the two factors of `W W^T`.
    fn weight_scale(&self) -> f64 {
        self.scale().sqrt()
    }

    /// `MSSA(x)` for `x` of shape `[batch, tokens, dim]`, with the cache for backward.
    pub fn forward(&self, x: &Tensor<B>) -> (Tensor<B>, MssaCache<B>) {
        let n = self.dims(x).1;
        self.forward_queries(x, n, &self.prepare())
    }

    /// The scaled weights of the fast path.
    pub fn prepare(&self) -> MssaWeights<B> {
        let c = self.weight_scale();
        MssaWeights {
            qkv: self.qkv.weight.scale(c),
            to_out: self
                .to_out
                .as_ref()
                .map(|l| Linear { weight: l.weight.scale(1.0 / c), bias: l.bias.clone() }),
        }
    }

    /// MSSA output of the first `queries` tokens only (`[batch, queries, dim]`),
    /// attending to all tokens, with the cache for [`Self::backward`];
    /// `weights` from [`Self::prepare`].
    pub fn forward_queries(
        &self,
        x: &Tensor<B>,
        queries: usize,
        weights: &MssaWeights<B>,
    ) -> (Tensor<B>, MssaCache<B>) {
        self.forward_phi(x, queries, weights, Phi::Softmax, TILED_ABOVE_TOKENS)
    }

    /// [`Self::forward_queries`] with the attention map `phi`, running the
    /// tiled kernel when `phi` is the softmax, every token is a query and the
    /// token count exceeds `tiled_above` (`usize::MAX`: always dense).
    pub fn forward_phi(
        &self,
        x: &Tensor<B>,
        queries: usize,
        weights: &MssaWeights<B>,
        phi: Phi,
        tiled_above: usize,
    ) -> (Tensor<B>, MssaCache<B>) {
        let (b, n) = self.dims(x);
        assert!(queries >= 1 && queries <= n, "Mssa: {queries} queries for {n} tokens");
        let (h, dh) = (self.heads, self.dim_head);
        let proj = x.matmul_t(&weights.qkv, false, true);
        let (merged, attn, tiled) = if phi == Phi::Softmax && queries == n && n > tiled_above {
            let (o, c) = flash::tiled_forward(&split_heads(&proj, h).reshape(&[b * h, n, dh]), 1.0);
            (merge_heads(&o.reshape(&[b, h, n, dh])), None, Some(c))
        } else if phi == Phi::Softmax && queries == n {
            // every head on the interleaved layout, no permutation (the fast path)
            let (attn, merged) = attention_dense(&proj, DenseAttentionSpec::for_tokens(&proj, h));
            (merged, Some(attn), None)
        } else {
            let w = split_heads(&proj, h);
            let q = if queries == n { w.clone() } else { w.narrow(2, 0, queries) };
            let mut attn = q.matmul_t(&w, false, true).softmax(-1);
            if let Phi::Threshold(tau) = phi {
                attn = attn.add_scalar(-tau).step().scale(tau);
            }
            (merge_heads(&attn.matmul(&w)), Some(attn), None)
        };
        let y = match &weights.to_out {
            Some(l) => l.forward(&merged),
            None => merged.scale(1.0 / self.weight_scale()),
        };
        (
            y,
            MssaCache {
                x: x.clone(),
                proj,
                heads: h,
                attn,
                tiled,
                phi,
                merged,
                queries,
                weights: weights.clone(),
            },
        )
    }

    /// The literal forward, `softmax(W W^T / sqrt(dh)) W` with `W = x U`
    /// split into heads and merged by `to_out`: the reference of [`Self::forward`].
    pub fn forward_reference(&self, x: &Tensor<B>) -> Tensor<B> {
        let w = self.project(x);
        let attn = w.matmul_t(&w, false, true).scale(self.scale()).softmax(-1);
        let merged = merge_heads(&attn.matmul(&w));
        match &self.to_out {
            Some(l) => l.forward(&merged),
            None => merged,
        }
    }
}

impl<B: Kernels> MssaCache<B> {
    /// The scaled projected tokens per head, `[batch, heads, tokens, dim_head]`.
    pub fn head_tokens(&self) -> Tensor<B> {
        split_heads(&self.proj, self.heads)
    }
}

impl<B: Kernels> Module<B> for Mssa<B> {
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

/// MSSA as a block: the attention of CRATE's pre-norm layer (its backward is also AoT's).
impl<B: Kernels> Block<B> for Mssa<B> {
    type Config = CrateConfig;
    type Cache = MssaCache<B>;
    type Prepared = MssaWeights<B>;

    fn init(backend: &B, c: &CrateConfig, rng: &mut StdRng) -> Result<Self> {
        Ok(Mssa::new(backend, c.vision.dim, c.vision.heads, c.head_dim(), rng))
    }

    fn prepare(&self) -> MssaWeights<B> {
        Mssa::prepare(self)
    }

    fn forward(&self, x: &Tensor<B>, queries: usize, prepared: &MssaWeights<B>) -> (Tensor<B>, MssaCache<B>) {
        self.forward_queries(x, queries, prepared)
    }

    /// Backward of [`Self::forward`] or [`Self::forward_queries`] (`grad_out`
    /// has the output's shape): adds `prefix.qkv.weight` and
    /// `prefix.to_out.0.{weight,bias}` gradients and returns `dL/dx` for all tokens.
    fn backward(
        &self,
        cache: &MssaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
        _micro_batch: bool,
    ) -> Tensor<B> {
        let (b, n) = self.dims(&cache.x);
        let (h, dh, nq) = (self.heads, self.dim_head, cache.queries);
        let c = self.weight_scale();
        let g_merged = match &cache.weights.to_out {
            Some(scaled) => {
                let mut local = Grads::new();
                let g = scaled.backward(&cache.merged, grad_out, "", &mut local);
                for (name, g_param) in local {
                    let g_param = if name == "weight" { g_param.scale(1.0 / c) } else { g_param };
                    accumulate(grads, join(&join(prefix, "to_out.0"), &name), g_param);
                }
                g
            }
            None => grad_out.scale(1.0 / c),
        };
        let g_proj = match (&cache.tiled, &cache.attn, cache.phi) {
            (Some(tc), _, _) => merge_heads(
                &flash::tiled_backward(tc, &split_heads(&g_merged, h).reshape(&[b * h, n, dh]))
                    .reshape(&[b, h, n, dh]),
            ),
            // h(softmax) is piecewise constant: only the value path
            (None, Some(attn), Phi::Threshold(_)) => {
                merge_heads(&attn.matmul_t(&split_heads(&g_merged, h), true, false))
            }
            (None, Some(attn), Phi::Softmax) if nq == n => attention_dense_backward(
                &cache.proj,
                attn,
                &g_merged,
                DenseAttentionSpec::for_tokens(&cache.proj, h),
            ),
            (None, Some(attn), Phi::Softmax) => {
                let (w, g_o) = (split_heads(&cache.proj, h), split_heads(&g_merged, h));
                let q = w.narrow(2, 0, nq);
                let g_scores = kernels::softmax_backward(attn, &g_o.matmul_t(&w, false, true));
                // keys and values: all rows of W'
                let g_w = attn.matmul_t(&g_o, true, false).add(&g_scores.matmul_t(&q, true, false));
                // queries: the first nq rows of W'
                let pad = Tensor::zeros(w.backend(), &[b, h, n - nq, dh]);
                merge_heads(&g_w.add(&Tensor::cat(&[&g_scores.matmul(&w), &pad], 2)))
            }
            (None, None, _) => unreachable!("Mssa: a dense cache always holds the attention matrix"),
        };
        // W' = x (c U)^T
        let scaled_qkv = Linear { weight: cache.weights.qkv.clone(), bias: None };
        let mut local = Grads::new();
        let gx = scaled_qkv.backward(&cache.x, &g_proj, "", &mut local);
        for (name, g_param) in local {
            accumulate(grads, join(&join(prefix, "qkv"), &name), g_param.scale(c));
        }
        gx
    }

    fn measure(cache: &MssaCache<B>) -> Result<LayerMeasurement<B>> {
        LayerMeasurement::of(&cache.head_tokens(), None, cache.attn.clone())
    }
}
