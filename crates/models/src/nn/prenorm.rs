//! The pre-norm layer shared by CRATE (4.2.20) and TOST (4.3.15): `Z^{l+1/2} = Z^l + A(LN(Z^l))`, `Z^{l+1} = ISTA(LN(Z^{l+1/2}))`, where the attention `A` (a [`Block`]) is MSSA (CRATE) or TSSA (TOST), with its explicit backward and the authors' per-layer measurements.
//!
//! Parameter names follow the reference `PreNorm` layout: `{prefix}.0.norm.*`,
//! `{prefix}.0.fn.*` (the attention), `{prefix}.1.norm.*`, `{prefix}.1.fn.weight`
//! (ISTA's dictionary `D`). Backward, with `G = dL/dZ^{l+1}`:
//!
//! ```text
//! G_half = LN2^T(ISTA^T(G)),   dL/dZ^l = G_half + LN1^T(A^T(G_half))
//! ```
//!
//! Inside micro-batches the ISTA entry holds the gradient `dM` of the fused
//! matrix `M = I + eta (D - D^T D)` and [`Block::finish_gradients`] turns the
//! sum into `dD` once per step (`dD` is linear in `dM`).

use super::classifier::Block;
use super::config::{ModelConfig, PreNormConfig};
use super::ista::{Ista, IstaCache};
use super::layernorm::{LayerNorm, LayerNormCache};
use super::measure::{mean_std, zero_fraction_per_image, LayerMeasurement};
use super::{join, Grads, Module};
use crate::{Kernels, Result, Tensor};
use rand::rngs::StdRng;
use std::fmt::Debug;

/// One pre-norm layer: `u = z + A(LN1(z))`, `z' = ISTA(LN2(u))`.
#[derive(Clone, Debug)]
pub struct PreNormLayer<B: Kernels, A: Block<B>> {
    /// `{prefix}.0.norm`.
    pub norm1: LayerNorm<B>,
    /// `{prefix}.0.fn`.
    pub attn: A,
    /// `{prefix}.1.norm`.
    pub norm2: LayerNorm<B>,
    /// `{prefix}.1.fn`.
    pub ista: Ista<B>,
}

/// Weights derived from a layer's parameters for the fast path.
#[derive(Clone, Debug)]
pub struct LayerWeights<B: Kernels, A: Block<B>> {
    /// The attention's derived weights.
    pub attn: A::Prepared,
    /// The fused ISTA matrix `M = I + eta (D - D^T D)`.
    pub ista: Tensor<B>,
}

/// What [`PreNormLayer::backward`] needs (and what the measurements read).
#[derive(Clone, Debug)]
pub struct PreNormCache<B: Kernels, A: Block<B>> {
    /// Cache of the first LayerNorm.
    pub norm1: LayerNormCache<B>,
    /// Cache of the attention.
    pub attn: A::Cache,
    /// `Z^{l+1/2} = z + A(LN1(z))` (the query tokens).
    pub half: Tensor<B>,
    /// Cache of the second LayerNorm.
    pub norm2: LayerNormCache<B>,
    /// Cache of ISTA (its output is the layer output).
    pub ista: IstaCache<B>,
}

impl<B: Kernels, A: Block<B>> PreNormLayer<B, A>
where
    A::Config: PreNormConfig,
{
    /// `z -> ISTA(LN2(z + A(LN1(z))))` for `[batch, tokens, dim]`, with the cache.
    pub fn forward(&self, z: &Tensor<B>) -> (Tensor<B>, PreNormCache<B, A>) {
        self.forward_queries(z, z.dim(1), &self.prepare())
    }

    /// The weights the fast path derives from the parameters (the
    /// attention's, the fused ISTA matrix), formed once per step.
    pub fn prepare(&self) -> LayerWeights<B, A> {
        LayerWeights { attn: self.attn.prepare(), ista: self.ista.fused_matrix() }
    }

    /// The layer output of the first `queries` tokens where the attention can
    /// skip the others (attention still reads every token), with the cache;
    /// `weights` from [`Self::prepare`].
    pub fn forward_queries(
        &self,
        z: &Tensor<B>,
        queries: usize,
        weights: &LayerWeights<B, A>,
    ) -> (Tensor<B>, PreNormCache<B, A>) {
        let (a_in, norm1) = self.norm1.forward(z);
        let (a_out, attn) = self.attn.forward(&a_in, queries, &weights.attn);
        let q = a_out.dim(1);
        let z_q = if q == z.dim(1) { z.clone() } else { z.narrow(1, 0, q) };
        let half = z_q.add(&a_out);
        let (i_in, norm2) = self.norm2.forward(&half);
        let (out, ista) = self.ista.forward_fused(&i_in, &weights.ista);
        (out, PreNormCache { norm1, attn, half, norm2, ista })
    }

    /// Backward: adds the layer's parameter gradients under `prefix` and returns `dL/dz` (all tokens).
    pub fn backward(
        &self,
        cache: &PreNormCache<B, A>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        Block::backward(self, cache, grad_out, prefix, grads, false)
    }
}

/// `[batch, q, dim]` gradients of the first `q` tokens as `[batch, n, dim]` (zeros after them).
pub(crate) fn pad_tokens<B: Kernels>(g: &Tensor<B>, n: usize) -> Tensor<B> {
    let (b, q, d) = (g.dim(0), g.dim(1), g.dim(2));
    if q == n {
        g.clone()
    } else {
        Tensor::cat(&[g, &Tensor::zeros(g.backend(), &[b, n - q, d])], 1)
    }
}

impl<B: Kernels, A: Block<B>> Block<B> for PreNormLayer<B, A>
where
    A::Config: PreNormConfig,
{
    type Config = A::Config;
    type Cache = PreNormCache<B, A>;
    type Prepared = LayerWeights<B, A>;

    fn init(backend: &B, c: &A::Config, rng: &mut StdRng) -> Result<Self> {
        let v = c.vision();
        let mut layer = PreNormLayer {
            norm1: LayerNorm::new(backend, v.dim),
            attn: A::init(backend, c, rng)?,
            norm2: LayerNorm::new(backend, v.dim),
            ista: Ista::new(backend, v.dim, rng),
        };
        layer.norm1.eps = v.layernorm_eps;
        layer.norm2.eps = v.layernorm_eps;
        layer.ista.step_size = c.ista_step_size();
        layer.ista.lambda = c.ista_lambda();
        Ok(layer)
    }

    fn prepare(&self) -> LayerWeights<B, A> {
        PreNormLayer::prepare(self)
    }

    fn forward(
        &self,
        z: &Tensor<B>,
        queries: usize,
        weights: &LayerWeights<B, A>,
    ) -> (Tensor<B>, PreNormCache<B, A>) {
        self.forward_queries(z, queries, weights)
    }

    /// The ISTA entry (`prefix.1.fn.weight`) holds `dD` or, inside
    /// micro-batches, the gradient `dM` of the fused matrix (see
    /// [`Ista::backward_fused`]), turned into `dD` by [`Self::finish_gradients`].
    fn backward(
        &self,
        cache: &PreNormCache<B, A>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
        micro_batch: bool,
    ) -> Tensor<B> {
        let ista_prefix = join(prefix, "1.fn");
        let g_i = if micro_batch {
            self.ista.backward_fused(&cache.ista, grad_out, &ista_prefix, grads)
        } else {
            self.ista.backward(&cache.ista, grad_out, &ista_prefix, grads)
        };
        let g_half = self.norm2.backward(&cache.norm2, &g_i, &join(prefix, "1.norm"), grads);
        let g_a = self.attn.backward(&cache.attn, &g_half, &join(prefix, "0.fn"), grads, false);
        let g_z = self.norm1.backward(&cache.norm1, &g_a, &join(prefix, "0.norm"), grads);
        g_z.add(&pad_tokens(&g_half, g_z.dim(1)))
    }

    fn finish_gradients(&self, prefix: &str, grads: &mut Grads<B>) {
        if let Some(g) = grads.get_mut(&join(prefix, "1.fn.weight")) {
            *g = self.ista.weight_grad_from_fused(g);
        }
    }

    fn measure(cache: &PreNormCache<B, A>) -> Result<LayerMeasurement<B>> {
        let mut m = A::measure(&cache.attn)?;
        m.sparsity = Some(mean_std(&zero_fraction_per_image(&cache.ista.out), false));
        Ok(m)
    }
}

impl<B: Kernels, A: Block<B>> Module<B> for PreNormLayer<B, A> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.norm1.visit(&join(prefix, "0.norm"), f);
        self.attn.visit(&join(prefix, "0.fn"), f);
        self.norm2.visit(&join(prefix, "1.norm"), f);
        self.ista.visit(&join(prefix, "1.fn"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.norm1.visit_mut(&join(prefix, "0.norm"), f);
        self.attn.visit_mut(&join(prefix, "0.fn"), f);
        self.norm2.visit_mut(&join(prefix, "1.norm"), f);
        self.ista.visit_mut(&join(prefix, "1.fn"), f);
    }
}
