//! The ISTA sparsification block (4.2.15 as the reference code builds it): `Z' = ReLU(Z + eta (Z D - Z D^T D) - eta lambda)`, tokens as rows, no residual.
//!
//! With tokens as rows and `D` the `[dim, dim]` dictionary (`fn.weight`),
//! the reference code computes `x D^T D` and `x D` (`F.linear` with `D` and
//! `D^T`). The step is affine in `x`, so the fast path fuses it into one
//! matrix per layer:
//!
//! `ISTA(x) = ReLU(x M - eta lambda)`, `M = I + eta (D - D^T D)`,
//!
//! one `[rows, dim] x [dim, dim]` product instead of three. Its backward, with
//! `G = dL/dy * 1[y > 0]` (PyTorch's ReLU gradient is 0 at 0):
//! `dx = G M^T`, `dM = x^T G`, and through `M(D)`:
//! `dD = eta (dM - D (dM + dM^T))`.
//! The literal three-product form stays as the reference ([`Ista::forward_literal`],
//! [`Ista::backward_literal`]).

use super::{accumulate, init, join, Grads, Module};
use crate::{Kernels, Tensor};
use rand::rngs::StdRng;

/// The ISTA block (the authors' `FeedForward` module).
#[derive(Clone, Debug)]
pub struct Ista<B: Kernels> {
    /// Dictionary `D`, `[dim, dim]` (`weight`).
    pub weight: Tensor<B>,
    /// Step size `eta` (0.1 in the reference code).
    pub step_size: f64,
    /// Sparsity weight `lambda` (0.1 in the reference code).
    pub lambda: f64,
}

/// What the backward passes need from a forward pass.
#[derive(Clone, Debug)]
pub struct IstaCache<B: Kernels> {
    /// Input `[..., dim]`.
    pub x: Tensor<B>,
    /// Output `[..., dim]` (its support is the ReLU mask).
    pub out: Tensor<B>,
    /// The fused matrix `M = I + eta (D - D^T D)` (fast path only).
    pub fused: Option<Tensor<B>>,
}

impl<B: Kernels> Ista<B> {
    /// A block with the reference initialisation (`kaiming_uniform_` of `D`), eta = lambda = 0.1.
    pub fn new(backend: &B, dim: usize, rng: &mut StdRng) -> Self {
        Ista { weight: init::kaiming_uniform(backend, dim, dim, rng), step_size: 0.1, lambda: 0.1 }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.weight.dim(0)
    }

    fn rows(&self, x: &Tensor<B>) -> Tensor<B> {
        let d = self.dim();
        assert_eq!(x.dim(-1), d, "Ista: input {:?} does not end in {d} features", x.shape());
        x.reshape(&[x.numel() / d.max(1), d])
    }

    /// The fused matrix `M = I + eta (D - D^T D)`.
    pub fn fused_matrix(&self) -> Tensor<B> {
        let d = &self.weight;
        let dtd = d.matmul_t(d, true, false);
        Tensor::eye(d.backend(), self.dim()).add(&d.sub(&dtd).scale(self.step_size))
    }

    /// Fast path: `ReLU(x M - eta lambda)`.
    pub fn forward(&self, x: &Tensor<B>) -> (Tensor<B>, IstaCache<B>) {
        self.forward_fused(x, &self.fused_matrix())
    }

    /// Fast path with `M` already formed by [`Self::fused_matrix`] (once per
    /// step when a batch runs as several micro-batches).
    pub fn forward_fused(&self, x: &Tensor<B>, m: &Tensor<B>) -> (Tensor<B>, IstaCache<B>) {
        let m = m.clone();
        let out = self.rows(x).matmul(&m).relu_shift(-self.step_size * self.lambda).reshape(x.shape());
        (out.clone(), IstaCache { x: x.clone(), out, fused: Some(m) })
    }

    /// Reference path, as written in the authors' code:
    /// `ReLU(x + eta (x D - (x D^T) D) - eta lambda)`.
    pub fn forward_literal(&self, x: &Tensor<B>) -> (Tensor<B>, IstaCache<B>) {
        let x2 = self.rows(x);
        let d = &self.weight;
        let dtdx = x2.matmul_t(d, false, true).matmul(d);
        let dtx = x2.matmul(d);
        let update = dtx.sub(&dtdx).scale(self.step_size).add_scalar(-self.step_size * self.lambda);
        let out = x2.add(&update).relu().reshape(x.shape());
        (out.clone(), IstaCache { x: x.clone(), out, fused: None })
    }

    /// `dL/d(pre-activation)`: the output gradient where the output is positive.
    fn masked(&self, cache: &IstaCache<B>, grad_out: &Tensor<B>) -> Tensor<B> {
        self.rows(&grad_out.where_positive(&cache.out))
    }

    /// Backward of the fast path: adds `prefix.weight` and returns `dL/dx`.
    pub fn backward(
        &self,
        cache: &IstaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let mut local = Grads::new();
        let dx = self.backward_fused(cache, grad_out, "", &mut local);
        for (name, dm) in local {
            accumulate(grads, join(prefix, &name), self.weight_grad_from_fused(&dm));
        }
        dx
    }

    /// Backward of the fast path that adds the gradient of the fused matrix,
    /// `dM = x^T G`, under `prefix.weight` instead of `dD`; returns `dL/dx`.
    /// `dD` is linear in `dM`, so the `dM` of several micro-batches may be
    /// summed first and turned into `dD` once by [`Self::weight_grad_from_fused`].
    pub fn backward_fused(
        &self,
        cache: &IstaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let g = self.masked(cache, grad_out);
        let m = match &cache.fused {
            Some(m) => m.clone(),
            None => self.fused_matrix(),
        };
        let x2 = self.rows(&cache.x);
        accumulate(grads, join(prefix, "weight"), x2.matmul_t(&g, true, false));
        g.matmul_t(&m, false, true).reshape(cache.x.shape())
    }

    /// `dD = eta (dM - D (dM + dM^T))` from the gradient `dM` of the fused matrix.
    pub fn weight_grad_from_fused(&self, dm: &Tensor<B>) -> Tensor<B> {
        let sym = dm.add(&dm.t());
        dm.sub(&self.weight.matmul(&sym)).scale(self.step_size)
    }

    /// Backward of the literal form, term by term:
    /// `dx = G + eta (G D^T - G D^T D)`,
    /// `dD = eta (x^T G - (x D^T)^T G - (G D^T)^T x)`.
    pub fn backward_literal(
        &self,
        cache: &IstaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let g = self.masked(cache, grad_out);
        let x2 = self.rows(&cache.x);
        let d = &self.weight;
        let eta = self.step_size;
        let x1 = x2.matmul_t(d, false, true); // x D^T
        let gdt = g.matmul_t(d, false, true); // G D^T
        let dd = x2
            .matmul_t(&g, true, false)
            .sub(&x1.matmul_t(&g, true, false))
            .sub(&gdt.matmul_t(&x2, true, false))
            .scale(eta);
        accumulate(grads, join(prefix, "weight"), dd);
        let dx = g.add(&gdt.sub(&gdt.matmul(d)).scale(eta));
        dx.reshape(cache.x.shape())
    }
}

impl<B: Kernels> Module<B> for Ista<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        f(join(prefix, "weight"), &self.weight);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        f(join(prefix, "weight"), &mut self.weight);
    }
}
