//! Trainable layers with explicit forward and hand-derived backward passes (no tape): Linear here, the attention and ISTA blocks in submodules.
//!
//! Conventions, shared by every layer:
//! * tokens are rows: activations are `[..., features]`, weights use PyTorch's
//!   `[out, in]` layout and parameter names, so a PyTorch `state_dict` loads as is;
//! * `forward` returns the output together with whatever `backward` needs (a
//!   cache struct), `backward` takes that cache and `dL/d(output)`, adds the
//!   parameter gradients into a [`Grads`] map under `prefix + name`, and returns
//!   `dL/d(input)`;
//! * [`Module::visit`] and [`Module::visit_mut`] walk the parameters by their
//!   PyTorch names (checkpoint loading, optimisers).

pub mod aot;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod crate_config;
pub mod exec;
pub mod flash;
pub mod measure;
pub mod prenorm;
pub mod tost;
pub mod tssa;

use crate::{Kernels, Tensor};
use std::collections::BTreeMap;

pub mod crate_model;
pub mod denoise;
pub mod embed;
pub mod head;
pub mod init;
pub mod ista;
pub mod layernorm;
pub mod loss;
pub mod mssa;

/// Parameter gradients by full parameter name.
pub type Grads<B> = BTreeMap<String, Tensor<B>>;

/// Adds `g` into `grads[name]`.
pub fn accumulate<B: Kernels>(grads: &mut Grads<B>, name: String, g: Tensor<B>) {
    match grads.get_mut(&name) {
        Some(acc) => *acc = acc.add(&g),
        None => {
            grads.insert(name, g);
        }
    }
}

/// A layer or model with named parameters.
pub trait Module<B: Kernels> {
    /// Calls `f(name, param)` for every parameter, names prefixed by `prefix`.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>));
    /// Calls `f(name, param)` for every parameter, mutably.
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>));
}

/// Joins a prefix and a name with a dot (no dot after an empty prefix).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `y = x W^T + b` over the last axis; `W` is `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear<B: Kernels> {
    /// `[out, in]`.
    pub weight: Tensor<B>,
    /// `[out]`, if present.
    pub bias: Option<Tensor<B>>,
}

impl<B: Kernels> Linear<B> {
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dim(1)
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dim(0)
    }

    fn rows(&self, x: &Tensor<B>) -> (Tensor<B>, Vec<usize>) {
        let k = self.in_features();
        assert_eq!(
            x.dim(-1),
            k,
            "Linear: input {:?} does not end in {k} features (weight {:?})",
            x.shape(),
            self.weight.shape()
        );
        let n = x.numel() / k.max(1);
        (x.reshape(&[n, k]), x.shape().to_vec())
    }

    /// `x W^T + b`; `x` is `[..., in]`.
    pub fn forward(&self, x: &Tensor<B>) -> Tensor<B> {
        let (x2, mut shape) = self.rows(x);
        let mut y = x2.matmul_t(&self.weight, false, true);
        if let Some(b) = &self.bias {
            y = y.add(&b.reshape(&[1, self.out_features()]));
        }
        *shape.last_mut().expect("rank >= 1") = self.out_features();
        y.reshape(&shape)
    }

    /// Backward of [`Self::forward`] at input `x`: adds `prefix.weight` and
    /// `prefix.bias` gradients and returns `dL/dx`.
    pub fn backward(
        &self,
        x: &Tensor<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let (x2, shape) = self.rows(x);
        let o = self.out_features();
        let g2 = grad_out.reshape(&[x2.dim(0), o]);
        // dW = g^T x, db = sum_rows g, dx = g W
        accumulate(grads, join(prefix, "weight"), g2.matmul_t(&x2, true, false));
        if self.bias.is_some() {
            accumulate(grads, join(prefix, "bias"), g2.sum_axis(0, false));
        }
        g2.matmul(&self.weight).reshape(&shape)
    }
}

impl<B: Kernels> Module<B> for Linear<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        f(join(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}
