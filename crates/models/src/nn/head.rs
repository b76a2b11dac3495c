//! The classification head of CRATE: pool the final tokens (the class token, or their mean), then LayerNorm and Linear(dim -> classes) (`mlp_head.0`, `mlp_head.1`).

use super::layernorm::{LayerNorm, LayerNormCache};
use super::{init, join, Grads, Linear, Module};
use crate::{Kernels, Tensor};
use rand::rngs::StdRng;

/// How the final tokens are reduced to one feature vector per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Token 0, the class token (`pool = 'cls'`).
    Cls,
    /// Mean over all tokens (`pool = 'mean'`).
    Mean,
}

impl Pool {
    /// The reference code's name: `"cls"` or `"mean"`.
    pub fn name(self) -> &'static str {
        match self {
            Pool::Cls => "cls",
            Pool::Mean => "mean",
        }
    }

    /// Parses `"cls"` or `"mean"`.
    pub fn parse(s: &str) -> Option<Pool> {
        match s.trim().trim_matches('\'').trim_matches('"') {
            "cls" => Some(Pool::Cls),
            "mean" => Some(Pool::Mean),
            _ => None,
        }
    }

    /// `[batch, tokens, dim]` to `[batch, dim]`.
    pub fn forward<B: Kernels>(self, tokens: &Tensor<B>) -> Tensor<B> {
        let (b, d) = (tokens.dim(0), tokens.dim(2));
        match self {
            Pool::Cls => tokens.narrow(1, 0, 1).reshape(&[b, d]),
            Pool::Mean => tokens.mean_axis(1, false),
        }
    }

    /// Adjoint of [`Self::forward`] for `n` tokens: `[batch, dim]` to `[batch, n, dim]`.
    pub fn backward<B: Kernels>(self, grad: &Tensor<B>, n: usize) -> Tensor<B> {
        let (b, d) = (grad.dim(0), grad.dim(1));
        let g = grad.reshape(&[b, 1, d]);
        match self {
            Pool::Cls => {
                if n == 1 {
                    g
                } else {
                    Tensor::cat(&[&g, &Tensor::zeros(grad.backend(), &[b, n - 1, d])], 1)
                }
            }
            Pool::Mean => g.scale(1.0 / n as f64).index_select(1, &vec![0; n]),
        }
    }
}

/// `mlp_head`: LayerNorm(dim) then Linear(dim -> classes) on the pooled features.
#[derive(Clone, Debug)]
pub struct ClassificationHead<B: Kernels> {
    /// `mlp_head.0`.
    pub norm: LayerNorm<B>,
    /// `mlp_head.1`.
    pub linear: Linear<B>,
}

/// What [`ClassificationHead::backward`] needs.
#[derive(Clone, Debug)]
pub struct HeadCache<B: Kernels> {
    /// Cache of the LayerNorm.
    pub norm: LayerNormCache<B>,
    /// Input of the Linear.
    pub normed: Tensor<B>,
}

impl<B: Kernels> ClassificationHead<B> {
    /// PyTorch's default initialisation (seeded).
    pub fn new(backend: &B, dim: usize, classes: usize, rng: &mut StdRng) -> Self {
        ClassificationHead {
            norm: LayerNorm::new(backend, dim),
            linear: init::linear(backend, dim, classes, true, rng),
        }
    }

    /// `[batch, dim]` features to `[batch, classes]` logits.
    pub fn forward(&self, features: &Tensor<B>) -> (Tensor<B>, HeadCache<B>) {
        let (normed, norm) = self.norm.forward(features);
        (self.linear.forward(&normed), HeadCache { norm, normed })
    }

    /// Backward: adds `prefix.0.*` and `prefix.1.*` and returns `dL/d(features)`.
    pub fn backward(
        &self,
        cache: &HeadCache<B>,
        grad_logits: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let g = self.linear.backward(&cache.normed, grad_logits, &join(prefix, "1"), grads);
        self.norm.backward(&cache.norm, &g, &join(prefix, "0"), grads)
    }
}

impl<B: Kernels> Module<B> for ClassificationHead<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.norm.visit(&join(prefix, "0"), f);
        self.linear.visit(&join(prefix, "1"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.norm.visit_mut(&join(prefix, "0"), f);
        self.linear.visit_mut(&join(prefix, "1"), f);
    }
}
