//! LayerNorm over the last axis, as PyTorch's `nn.LayerNorm`: `y = (x - mean) / sqrt(var + eps) * weight + bias` (biased variance, eps 1e-5).

use super::{accumulate, join, Grads, Module};
use crate::{Backend, Tensor};

/// PyTorch's default LayerNorm epsilon.
pub const LAYERNORM_EPS: f64 = 1e-5;

/// Affine LayerNorm over the last axis.
#[derive(Clone, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale `gamma`, `[dim]`.
    pub weight: Tensor<B>,
    /// Shift `beta`, `[dim]`.
    pub bias: Tensor<B>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

/// What [`LayerNorm::backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct LayerNormCache<B: Backend> {
    /// Normalised input `(x - mean) * rstd`, shape of `x`.
    pub xhat: Tensor<B>,
    /// `1 / sqrt(var + eps)`, shape of `x` with the last axis 1.
    pub rstd: Tensor<B>,
}

impl<B: Backend> LayerNorm<B> {
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

    /// `(x - mean) / sqrt(var + eps) * weight + bias` over the last axis, with the cache for backward.
    pub fn forward(&self, x: &Tensor<B>) -> (Tensor<B>, LayerNormCache<B>) {
        self.check(x);
        let mean = x.mean_axis(-1, true);
        let centred = x.sub(&mean);
        let var = centred.square().mean_axis(-1, true);
        let rstd = var.add_scalar(self.eps).sqrt().recip();
        let xhat = centred.mul(&rstd);
        let y = xhat.mul(&self.weight).add(&self.bias);
        (y, LayerNormCache { xhat, rstd })
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
        let d = self.dim();
        let rows = grad_out.numel() / d.max(1);
        let g_rows = grad_out.reshape(&[rows, d]);
        let xhat_rows = cache.xhat.reshape(&[rows, d]);
        accumulate(grads, join(prefix, "weight"), g_rows.mul(&xhat_rows).sum_axis(0, false));
        accumulate(grads, join(prefix, "bias"), g_rows.sum_axis(0, false));
        let g = grad_out.mul(&self.weight);
        let mean_g = g.mean_axis(-1, true);
        let mean_gx = g.mul(&cache.xhat).mean_axis(-1, true);
        g.sub(&mean_g).sub(&cache.xhat.mul(&mean_gx)).mul(&cache.rstd)
    }
}

impl<B: Backend> Module<B> for LayerNorm<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        f(join(prefix, "weight"), &mut self.weight);
        f(join(prefix, "bias"), &mut self.bias);
    }
}
