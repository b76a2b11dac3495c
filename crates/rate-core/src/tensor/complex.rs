//! `ComplexTensor`: a complex tensor as two real planes, with the products, DFTs and Hermitian inverses and solves that the per-frequency operators (4.1.20-4.1.22) are built from.

use super::Tensor;
use crate::backend::{Backend, FftNorm};
use crate::Result;

/// A complex tensor stored as two real planes of the same shape.
#[derive(Clone, Debug)]
pub struct ComplexTensor<B: Backend> {
    /// Real part.
    pub re: Tensor<B>,
    /// Imaginary part.
    pub im: Tensor<B>,
}

impl<B: Backend> ComplexTensor<B> {
    /// Pairs two real tensors of one shape.
    pub fn new(re: Tensor<B>, im: Tensor<B>) -> Self {
        assert_eq!(
            re.shape(),
            im.shape(),
            "ComplexTensor::new: planes {:?} and {:?} differ",
            re.shape(),
            im.shape()
        );
        ComplexTensor { re, im }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.re.shape()
    }

    /// Same data, new shape.
    pub fn reshape(&self, shape: &[usize]) -> Self {
        ComplexTensor { re: self.re.reshape(shape), im: self.im.reshape(shape) }
    }

    /// Permutes the axes of both planes.
    pub fn permute(&self, perm: &[usize]) -> Self {
        ComplexTensor { re: self.re.permute(perm), im: self.im.permute(perm) }
    }

    /// Complex conjugate.
    pub fn conj(&self) -> Self {
        ComplexTensor { re: self.re.clone(), im: self.im.neg() }
    }

    /// Conjugate transpose of the last two axes.
    pub fn h(&self) -> Self {
        ComplexTensor { re: self.re.t(), im: self.im.t().neg() }
    }

    /// `self + other`.
    pub fn add(&self, other: &Self) -> Self {
        ComplexTensor { re: self.re.add(&other.re), im: self.im.add(&other.im) }
    }

    /// `self - other`.
    pub fn sub(&self, other: &Self) -> Self {
        ComplexTensor { re: self.re.sub(&other.re), im: self.im.sub(&other.im) }
    }

    /// Multiplies by a real tensor (broadcasting).
    pub fn mul_real(&self, r: &Tensor<B>) -> Self {
        ComplexTensor { re: self.re.mul(r), im: self.im.mul(r) }
    }

    /// Multiplies by a real scalar.
    pub fn scale(&self, c: f64) -> Self {
        ComplexTensor { re: self.re.scale(c), im: self.im.scale(c) }
    }

    /// `|z|^2` elementwise.
    pub fn abs_sq(&self) -> Tensor<B> {
        self.re.square().add(&self.im.square())
    }

    /// Batched complex product `op(self) @ op(other)`, where the op is the
    /// conjugate transpose when the flag is set (three real products, Gauss).
    pub fn matmul_h(&self, other: &Self, herm_a: bool, herm_b: bool) -> Self {
        // (a + ib)(c + id) with a, b possibly conjugated: conj flips the sign of the imaginary part.
        let sa = if herm_a { -1.0 } else { 1.0 };
        let sb = if herm_b { -1.0 } else { 1.0 };
        let ac = self.re.matmul_t(&other.re, herm_a, herm_b);
        let bd = self.im.matmul_t(&other.im, herm_a, herm_b);
        let ad = self.re.matmul_t(&other.im, herm_a, herm_b);
        let bc = self.im.matmul_t(&other.re, herm_a, herm_b);
        // re = ac - (sa b)(sb d) ; im = a (sb d) + (sa b) c
        let re = ac.sub(&bd.scale(sa * sb));
        let im = ad.scale(sb).add(&bc.scale(sa));
        ComplexTensor { re, im }
    }

    /// `self @ other`.
    pub fn matmul(&self, other: &Self) -> Self {
        self.matmul_h(other, false, false)
    }

    /// Complex DFT along `axis`.
    pub fn fft(&self, axis: isize, inverse: bool, norm: FftNorm) -> Self {
        let a = self.re.axis(axis, "fft");
        let v = self.re.view(a);
        let (re, im) = self.re.backend.fft(&self.re.buf, &self.im.buf, v, inverse, norm);
        let s = self.re.shape.clone();
        ComplexTensor { re: self.re.with(re, s.clone()), im: self.re.with(im, s) }
    }

    /// Inverse of [`Tensor::rfft`]: `n` is the signal length along `axis`.
    pub fn irfft(&self, axis: isize, n: usize, norm: FftNorm) -> Tensor<B> {
        let a = self.re.axis(axis, "irfft");
        assert_eq!(
            n / 2 + 1,
            self.re.shape[a],
            "irfft: half spectrum of length {} cannot give a signal of length {n}",
            self.re.shape[a]
        );
        let v = self.re.view(a);
        let out = self.re.backend.irfft(&self.re.buf, &self.im.buf, v, n, norm);
        let mut s = self.re.shape.clone();
        s[a] = n;
        self.re.with(out, s)
    }

    pub(crate) fn square_batch(&self, op: &str) -> (usize, usize) {
        self.re.square_batch(op)
    }

    /// Inverses of Hermitian positive definite matrices.
    pub fn herm_inverse(&self) -> Result<Self> {
        let (b, n) = self.square_batch("herm_inverse");
        let (re, im) = self.re.backend.herm_inverse(&self.re.buf, &self.im.buf, b, n)?;
        let s = self.re.shape.clone();
        Ok(ComplexTensor { re: self.re.with(re, s.clone()), im: self.re.with(im, s) })
    }

    /// `log det` of Hermitian positive definite matrices (real).
    pub fn herm_logdet(&self) -> Result<Tensor<B>> {
        let (b, n) = self.square_batch("herm_logdet");
        let r = self.re.rank();
        let out = self.re.backend.herm_logdet(&self.re.buf, &self.im.buf, b, n)?;
        Ok(self.re.with(out, self.re.shape[..r - 2].to_vec()))
    }

    /// Inverses and (real) `log det` of Hermitian positive definite matrices
    /// `[.., n, n]` from one factorisation each.
    pub fn herm_inverse_logdet(&self) -> Result<(Self, Tensor<B>)> {
        let (b, n) = self.square_batch("herm_inverse_logdet");
        let r = self.re.rank();
        let (re, im, ld) = self.re.backend.herm_inverse_logdet(&self.re.buf, &self.im.buf, b, n)?;
        let s = self.re.shape.clone();
        Ok((
            ComplexTensor { re: self.re.with(re, s.clone()), im: self.re.with(im, s) },
            self.re.with(ld, self.re.shape[..r - 2].to_vec()),
        ))
    }

    /// Solves `self X = rhs` for Hermitian positive definite `self`.
    pub fn herm_solve(&self, rhs: &Self) -> Result<Self> {
        let (b, n) = self.square_batch("herm_solve");
        let (bb, rn, nrhs) = rhs.re.batch_dims("herm_solve");
        assert!(
            bb == b && rn == n,
            "herm_solve: system {:?} and right-hand side {:?} do not match",
            self.shape(),
            rhs.shape()
        );
        let (re, im) = self.re.backend.herm_solve(
            (&self.re.buf, &self.im.buf),
            (&rhs.re.buf, &rhs.im.buf),
            b,
            n,
            nrhs,
        )?;
        let s = rhs.shape().to_vec();
        Ok(ComplexTensor { re: self.re.with(re, s.clone()), im: self.re.with(im, s) })
    }

    /// Downloads as `(re, im)` f64 vectors.
    pub fn to_f64_vecs(&self) -> (Vec<f64>, Vec<f64>) {
        (self.re.to_f64_vec(), self.im.to_f64_vec())
    }
}
