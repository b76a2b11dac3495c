//! Seeded parameter initialisers that follow PyTorch's defaults (uniform `±1/sqrt(fan_in)` for Linear, Kaiming-uniform, standard normal).

use crate::{Kernels, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A tensor of independent `U(-bound, bound)` entries (zeros when `bound` is 0).
pub fn uniform<B: Kernels>(backend: &B, shape: &[usize], bound: f64, rng: &mut StdRng) -> Tensor<B> {
    let n: usize = shape.iter().product();
    let data: Vec<f64> =
        (0..n).map(|_| if bound > 0.0 { rng.random_range(-bound..bound) } else { 0.0 }).collect();
    Tensor::from_f64(backend, &data, shape)
}

/// A tensor of independent `N(0, 1)` entries (`torch.randn`).
pub fn standard_normal<B: Kernels>(backend: &B, shape: &[usize], rng: &mut StdRng) -> Tensor<B> {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_f64(backend, &data, shape)
}

/// `nn.Linear`'s default initialisation: weight and bias `U(-1/sqrt(in), 1/sqrt(in))`.
pub fn linear<B: Kernels>(
    backend: &B,
    in_features: usize,
    out_features: usize,
    bias: bool,
    rng: &mut StdRng,
) -> super::Linear<B> {
    let bound = 1.0 / (in_features.max(1) as f64).sqrt();
    let weight = uniform(backend, &[out_features, in_features], bound, rng);
    let bias = bias.then(|| uniform(backend, &[out_features], bound, rng));
    super::Linear { weight, bias }
}

/// `init.kaiming_uniform_` with its defaults (a = 0, fan_in, leaky_relu gain sqrt(2)):
/// `U(-sqrt(6/fan_in), sqrt(6/fan_in))` for a `[out, in]` matrix.
pub fn kaiming_uniform<B: Kernels>(
    backend: &B,
    out_features: usize,
    in_features: usize,
    rng: &mut StdRng,
) -> Tensor<B> {
    let bound = (6.0 / in_features.max(1) as f64).sqrt();
    uniform(backend, &[out_features, in_features], bound, rng)
}
