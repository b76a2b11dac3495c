//! Shared helpers of the layer tests: seeded random tensors and central finite differences.
#![allow(dead_code)]

use backend_cpu::CpuBackend;
use models::nn::classifier::VisionConfig;
use models::nn::head::Pool;
use models::nn::{Grads, Module};
use models::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

pub type B = CpuBackend<f64>;

pub fn be() -> B {
    B::new()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `N(0, scale^2)` entries.
pub fn randn(rng: &mut StdRng, shape: &[usize], scale: f64) -> Tensor<B> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| scale * Distribution::<f64>::sample(&StandardNormal, rng)).collect();
    Tensor::from_f64(&be(), &v, shape)
}

/// Step of the central differences.
pub const H: f64 = 1e-6;

/// `|fd - analytic| <= ABS + REL max(|fd|, |analytic|)`.
pub const ABS: f64 = 1e-7;
pub const REL: f64 = 1e-5;

pub fn close(fd: f64, an: f64) -> bool {
    (fd - an).abs() <= ABS + REL * fd.abs().max(an.abs())
}

/// Compares `analytic` (the gradient at `base`) with central differences of
/// `f` coordinate by coordinate. `f` returns `None` where the point is across
/// a kink of the function (ReLU mask changed): that coordinate is skipped.
/// Returns the number of coordinates checked.
pub fn check_coords(
    what: &str,
    base: &Tensor<B>,
    analytic: &Tensor<B>,
    f: &dyn Fn(&Tensor<B>) -> Option<f64>,
) -> usize {
    assert_eq!(base.shape(), analytic.shape(), "{what}: gradient shape");
    let x = base.to_f64_vec();
    let g = analytic.to_f64_vec();
    let mut checked = 0;
    for i in 0..x.len() {
        let mut p = x.clone();
        p[i] += H;
        let mut m = x.clone();
        m[i] -= H;
        let (Some(fp), Some(fm)) =
            (f(&Tensor::from_f64(&be(), &p, base.shape())), f(&Tensor::from_f64(&be(), &m, base.shape())))
        else {
            continue;
        };
        let fd = (fp - fm) / (2.0 * H);
        assert!(close(fd, g[i]), "{what}[{i}]: finite difference {fd} vs backward {}", g[i]);
        checked += 1;
    }
    checked
}

/// Compares the directional derivative along a random direction `v` with `<analytic, v>`.
pub fn check_direction(
    what: &str,
    base: &Tensor<B>,
    analytic: &Tensor<B>,
    rng: &mut StdRng,
    f: &dyn Fn(&Tensor<B>) -> Option<f64>,
) -> bool {
    assert_eq!(base.shape(), analytic.shape(), "{what}: gradient shape");
    let v = randn(rng, base.shape(), 1.0);
    let an = analytic.mul(&v).sum_all();
    let (Some(fp), Some(fm)) = (f(&base.add(&v.scale(H))), f(&base.sub(&v.scale(H)))) else {
        return false;
    };
    let fd = (fp - fm) / (2.0 * H);
    assert!(close(fd, an), "{what}: directional finite difference {fd} vs backward {an}");
    true
}

/// A copy of `model` with parameter `name` replaced.
pub fn with_param<M: Module<B> + Clone>(model: &M, name: &str, value: &Tensor<B>) -> M {
    let mut m = model.clone();
    let mut found = false;
    m.visit_mut("", &mut |n, p| {
        if n == name {
            *p = value.clone();
            found = true;
        }
    });
    assert!(found, "no parameter `{name}`");
    m
}

/// The parameters of a module by name.
pub fn params<M: Module<B>>(model: &M) -> Vec<(String, Tensor<B>)> {
    let mut out = Vec::new();
    model.visit("", &mut |n, p| out.push((n, p.clone())));
    out
}

/// Checks every parameter of `model` coordinate-wise: `loss(model')` against `grads`.
pub fn check_all_params<M: Module<B> + Clone>(model: &M, grads: &Grads<B>, loss: &dyn Fn(&M) -> Option<f64>) {
    for (name, p) in params(model) {
        let g = grads.get(&name).unwrap_or_else(|| panic!("no gradient for `{name}`"));
        check_coords(&name, &p, g, &|v| loss(&with_param(model, &name, v)));
    }
    assert_eq!(grads.len(), params(model).len(), "gradient names {:?}", grads.keys().collect::<Vec<_>>());
}

/// The zero pattern of a tensor (the ReLU mask).
pub fn zeros_of(t: &Tensor<B>) -> Vec<bool> {
    t.to_f64_vec().iter().map(|&x| x == 0.0).collect()
}

/// A tiny classifier setting: 4 px images of `channels` channels in 2 px patches, 3 classes.
pub fn vision(channels: usize, dim: usize, depth: usize, heads: usize, pool: Pool) -> VisionConfig {
    VisionConfig {
        image_size: 4,
        patch_size: 2,
        channels,
        num_classes: 3,
        dim,
        depth,
        heads,
        pool,
        layernorm_eps: 1e-5,
    }
}

/// `model` with Gaussian noise (std 0.2) added to every parameter, so that
/// LayerNorm affine terms and biases matter.
pub fn perturbed<M: Module<B> + Clone>(model: &M, seed: u64) -> M {
    let mut g = rng(seed);
    let mut m = model.clone();
    m.visit_mut("", &mut |_, p| *p = p.add(&randn(&mut g, p.shape(), 0.2)));
    m
}
