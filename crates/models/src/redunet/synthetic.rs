//! Seeded data of the chapter's ReduNet example (Figure 4.5): isotropic Gaussians around the coordinate axes, projected onto the unit sphere.

use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rate_core::{Kernels, Tensor};

/// Labelled samples on the unit sphere, rows in random order.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussians {
    /// `samples x dim`, row-major, every row of unit norm.
    pub x: Vec<f64>,
    /// Class of each row.
    pub labels: Vec<usize>,
    /// Dimension of the samples.
    pub dim: usize,
}

impl Gaussians {
    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.labels.len()
    }

    /// The samples as a `samples x dim` tensor.
    pub fn tensor<B: Kernels>(&self, backend: &B) -> Tensor<B> {
        Tensor::from_f64(backend, &self.x, &[self.samples(), self.dim])
    }
}

/// `per_class` samples of each of `classes` Gaussians in `R^dim`: class `j`
/// has mean `e_j` (the `j`-th unit axis) and covariance `noise^2 I`; each
/// sample is divided by its norm (clamped at `1e-8`) and the rows are
/// shuffled. The same `seed` gives the same data.
pub fn gaussians(classes: usize, dim: usize, per_class: usize, noise: f64, seed: u64) -> Result<Gaussians> {
    if classes == 0 || per_class == 0 {
        return Err(Error::Config(format!(
            "gaussians: classes = {classes} and per_class = {per_class} must both be at least 1"
        )));
    }
    if classes > dim {
        return Err(Error::Config(format!(
            "gaussians: {classes} classes need at least as many dimensions (class j has mean e_j), got dim = {dim}"
        )));
    }
    let normal = Normal::new(0.0, noise).map_err(|_| {
        Error::Config(format!("gaussians: noise = {noise} must be a finite non-negative standard deviation"))
    })?;
    let mut rng = StdRng::seed_from_u64(seed);
    let m = classes * per_class;
    let mut rows = Vec::with_capacity(m);
    for j in 0..classes {
        for _ in 0..per_class {
            let mut v: Vec<f64> =
                (0..dim).map(|c| normal.sample(&mut rng) + if c == j { 1.0 } else { 0.0 }).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
            v.iter_mut().for_each(|x| *x /= n);
            rows.push((v, j));
        }
    }
    rows.shuffle(&mut rng);
    let labels = rows.iter().map(|r| r.1).collect();
    let x = rows.into_iter().flat_map(|r| r.0).collect();
    Ok(Gaussians { x, labels, dim })
}
