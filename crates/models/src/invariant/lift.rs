//! Lifting (4.1.21-4.1.26): multichannel circular convolution with fixed random Gaussian kernels, then a sparsifying ReLU or soft threshold (4.1.26), computed through the FFT.
//!
//! `K` kernels `w[k]` of shape `C x s` (1-D) or `C x s_h x s_w` (2-D) map a
//! signal `x` with `C` channels to `K` channels:
//!
//! `z[k](t) = tau( sum_c sum_u w[k, c, u] x[c, t + u] )`, indices cyclic,
//!
//! the authors' convention (`F.conv1d` / `F.conv2d` after circular padding at
//! the end: a cross-correlation whose kernels mix the input channels). For one
//! input channel this is the chapter's `k_k (*) x` (4.1.23) with the kernel
//! reversed, `k_k(t) = w[k, 0, -t]`. Both are shift-equivariant, which is
//! all the invariant ReduNet needs. In the frequency domain (unnormalised
//! DFT) `z^[k](f) = sum_c conj(w^[k, c](f)) x^[c](f)`: one complex product of
//! `n x C` by `C x K` per frequency.

use super::domain::Domain;
use crate::{Error, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rate_core::{ComplexTensor, FftNorm, Kernels, Tensor};

/// The entrywise nonlinearity `tau` after the convolutions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `sign(x) max(|x| - lambda, 0)`.
    SoftThreshold(f64),
    /// No nonlinearity (a linear lifting).
    Identity,
}

/// Fixed convolution kernels `[K, C, s..]` and the nonlinearity that follows.
#[derive(Clone, Debug)]
pub struct Lifting<B: Kernels> {
    kernels: Tensor<B>,
    activation: Activation,
}

impl<B: Kernels> Lifting<B> {
    /// `out_channels` kernels over `in_channels` channels of size `kernel_size`
    /// (one entry for 1-D, two for 2-D), with independent N(0, 1) entries drawn
    /// from `StdRng::seed_from_u64(seed)` in row-major order.
    pub fn random(
        backend: &B,
        out_channels: usize,
        in_channels: usize,
        kernel_size: &[usize],
        seed: u64,
        activation: Activation,
    ) -> Result<Self> {
        let mut shape = vec![out_channels, in_channels];
        shape.extend_from_slice(kernel_size);
        let n: usize = shape.iter().product();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Self::from_kernels(Tensor::from_f64(backend, &data, &shape), activation)
    }

    /// Lifting with given kernels `[K, C, s]` or `[K, C, s_h, s_w]`.
    pub fn from_kernels(kernels: Tensor<B>, activation: Activation) -> Result<Self> {
        let s = kernels.shape();
        if !(s.len() == 3 || s.len() == 4) || s.contains(&0) {
            return Err(Error::Config(format!(
                "lifting: kernels must be out_channels x in_channels x size (1-D) or x height x width (2-D) with positive sizes, got shape {s:?}"
            )));
        }
        if let Activation::SoftThreshold(l) = activation {
            if !(l.is_finite() && l >= 0.0) {
                return Err(Error::Config(format!(
                    "lifting: soft threshold lambda = {l} must be non-negative and finite"
                )));
            }
        }
        kernels.check_finite("lifting kernels")?;
        Ok(Lifting { kernels, activation })
    }

    /// The kernels `[K, C, s..]`.
    pub fn kernels(&self) -> &Tensor<B> {
        &self.kernels
    }

    /// Output channels `K`.
    pub fn out_channels(&self) -> usize {
        self.kernels.dim(0)
    }

    /// Input channels `C`.
    pub fn in_channels(&self) -> usize {
        self.kernels.dim(1)
    }

    /// Checks `x` against the kernels and returns its domain.
    fn check(&self, x: &Tensor<B>) -> Result<Domain> {
        let (_, c, domain) = Domain::of_signals("lifting", x.shape())?;
        let ks = &self.kernels.shape()[2..];
        let dims = domain.dims();
        if ks.len() != dims.len() {
            return Err(Error::Config(format!(
                "lifting: {}-D kernels {:?} cannot lift {}-D signals of shape {:?}",
                ks.len(),
                self.kernels.shape(),
                dims.len(),
                x.shape()
            )));
        }
        if c != self.in_channels() {
            return Err(Error::Config(format!(
                "lifting: signals of shape {:?} have {c} channels, the kernels {:?} expect {}",
                x.shape(),
                self.kernels.shape(),
                self.in_channels()
            )));
        }
        if let Some(a) = (0..dims.len()).find(|&a| ks[a] > dims[a]) {
            return Err(Error::Config(format!(
                "lifting: kernel size {:?} is longer than the signal {:?} on axis {a}",
                ks, dims
            )));
        }
        x.check_finite("lifting input")?;
        Ok(domain)
    }

    fn activate(&self, z: Tensor<B>) -> Tensor<B> {
        match self.activation {
            Activation::Relu => z.relu(),
            Activation::SoftThreshold(l) => z.soft_threshold(l),
            Activation::Identity => z,
        }
    }

    /// Kernels zero-padded to the signal domain, `[K, C, dims..]`.
    fn padded_kernels(&self, domain: &Domain) -> Tensor<B> {
        let (kk, c) = (self.out_channels(), self.in_channels());
        let ks = &self.kernels.shape()[2..];
        let dims = domain.dims();
        let (kh, kw, h, w) =
            if dims.len() == 1 { (1, ks[0], 1, dims[0]) } else { (ks[0], ks[1], dims[0], dims[1]) };
        let mut idx = Vec::with_capacity(h * w);
        let mut mask = Vec::with_capacity(h * w);
        for a in 0..h {
            for b in 0..w {
                let inside = a < kh && b < kw;
                idx.push(if inside { a * kw + b } else { 0 });
                mask.push(if inside { 1.0 } else { 0.0 });
            }
        }
        let flat = self.kernels.reshape(&[kk, c, kh * kw]);
        let mask = Tensor::from_f64(flat.backend(), &mask, &[1, 1, h * w]);
        let mut shape = vec![kk, c];
        shape.extend(dims);
        flat.index_select(2, &idx).mul(&mask).reshape(&shape)
    }

    /// Lifts signals `[m, C, dims..]` to `[m, K, dims..]` through the FFT.
    pub fn apply(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let domain = self.check(x)?;
        let xs = domain.forward(x, FftNorm::Backward); // [F, m, C]
        let ws = domain.forward(&self.padded_kernels(&domain), FftNorm::Backward); // [F, K, C]
                                                                                   // z^(f) = x^(f) conj(w^(f))^T: [F, m, K]
        let zs: ComplexTensor<B> = xs.matmul_h(&ws, false, true);
        Ok(self.activate(domain.inverse(&zs, FftNorm::Backward)))
    }

    /// The same lifting by direct summation over the kernel taps (the naive reference of [`Self::apply`]).
    pub fn apply_direct(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let domain = self.check(x)?;
        let ks = self.kernels.shape()[2..].to_vec();
        let (kk, c) = (self.out_channels(), self.in_channels());
        let taps: Vec<Vec<usize>> = match ks.len() {
            1 => (0..ks[0]).map(|u| vec![u]).collect(),
            _ => (0..ks[0]).flat_map(|a| (0..ks[1]).map(move |b| vec![a, b])).collect(),
        };
        let flat = self.kernels.reshape(&[kk, c, taps.len()]);
        let m = x.dim(0);
        let n = domain.size();
        let mut acc: Option<Tensor<B>> = None;
        for (ti, tap) in taps.iter().enumerate() {
            // x[c, t + u] = roll(x, -u)[c, t]
            let shift: Vec<isize> = tap.iter().map(|&u| -(u as isize)).collect();
            let xs = domain.roll(x, &shift)?.reshape(&[m, c, n]);
            let w = flat.narrow(2, ti, 1).reshape(&[kk, c]);
            let term = w.matmul(&xs); // [m, K, N]
            acc = Some(match acc {
                Some(a) => a.add(&term),
                None => term,
            });
        }
        let mut shape = vec![m, kk];
        shape.extend(domain.dims());
        let z = acc.map(|a| a.reshape(&shape)).unwrap_or_else(|| Tensor::zeros(x.backend(), &shape));
        Ok(self.activate(z))
    }
}
