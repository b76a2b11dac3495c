//! LayerNorm over the last axis, as PyTorch's `nn.LayerNorm`: `y = (x - mean) / sqrt(var + eps) * weight + bias` (biased variance, eps 1e-5).

use super::{accumulate, join, Grads, Module};
use crate::{Kernels, Tensor};
use rate_core::kernels;

/// PyTorch's default LayerNorm epsilon.
pub const LAYERNORM_EPS: f64 = 1e-5;

/// Affine LayerNorm over the last axis.
#[derive(Clone, Debug)]
pub struct LayerNorm<B: Kernels> {
    /// Scale `gamma`, `[dim]`.
    pub weight: Tensor<B>,
    /// Shift `beta`, `[dim]`.
    pub bias: Tensor<B>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// What [`LayerNorm::backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct LayerNormCache<B: Kernels> {
    /// The input.
    pub x: Tensor<B>,
    /// Mean of each row, shape of `x` without its last axis.
    pub mean: Tensor<B>,
    /// `1 / sqrt(var + eps)` of each row.
    pub rstd: Tensor<B>,
}

impl<B: Kernels> LayerNorm<B> {
    /// PyTorch's initialisation: weight ones, bias zeros, eps 1e-5.
    pub fn new(backend: &B, dim: usize) -> Self {
        LayerNorm {
            weight: Tensor::full(backend, &[dim], 1.0),
            bias: Tensor::zeros(backend, &[dim]),
            eps: LAYERNORM_EPS,
        }
    }

    /// Normalised size (the last axis of the input).
    pub fn dim(&self) -> usize {
        self.weight.dim(0)
    }

    fn check(&self, x: &Tensor<B>) {
        assert_eq!(
            x.dim(-1),
            self.dim(),
            "LayerNorm: input {:?} does not end in {} features",
            x.shape(),
            self.dim()
        );
    }

    /// `(x - mean) / sqrt(var + eps) * weight + bias` over the last axis, with the cache for backward
    /// (one fused backend kernel, [`rate_core::kernels::layer_norm()`]).
    pub fn forward(&self, x: &Tensor<B>) -> (Tensor<B>, LayerNormCache<B>) {
        self.check(x);
        let (y, mean, rstd) = kernels::layer_norm(x, &self.weight, &self.bias, self.eps);
        (y, LayerNormCache { x: x.clone(), mean, rstd })
    }

    /// Backward of [`Self::forward`]: adds `prefix.weight` and `prefix.bias`
    /// gradients and returns `dL/dx`:
    /// `dx = rstd (g - mean(g) - xhat mean(g xhat))` with `g = dL/dy * weight`.
    pub fn backward(
        &self,
        cache: &LayerNormCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let (dx, dw, db) =
            kernels::layer_norm_backward(&cache.x, &cache.mean, &cache.rstd, &self.weight, grad_out);
        accumulate(grads, join(prefix, "weight"), dw);
        accumulate(grads, join(prefix, "bias"), db);
        dx
    }
}

impl<B: Kernels> Module<B> for LayerNorm<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        f(join(prefix, "weight"), &mut self.weight);
        f(join(prefix, "bias"), &mut self.bias);
    }
}
