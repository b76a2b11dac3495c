//! `Tensor` and `ComplexTensor`: shaped, row-major views over a backend's buffers, with the shape checks every op needs.
//!
//! Shape mismatches are programming errors and panic with a message that
//! names the op and both shapes; data-dependent failures (not positive
//! definite) are `Result`s.

use crate::backend::{AxisView, Backend, BinaryOp, Element, FftNorm, MatmulSpec, ReduceOp, UnaryOp};
use crate::{Error, Result};
use num_traits::{Float, One, Zero};
use std::fmt;

mod complex;
pub use complex::ComplexTensor;

/// A dense row-major tensor living on backend `B`.
#[derive(Clone)]
pub struct Tensor<B: Backend> {
    buf: B::Buffer,
    shape: Vec<usize>,
    backend: B,
}

impl<B: Backend> fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}>{:?}", self.backend.name(), self.shape)
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![0; shape.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i];
    }
    s
}

impl<B: Backend> Tensor<B> {
    // ---------- construction and transfer ----------

    /// Wraps a buffer with a shape (its length must match).
    pub fn from_buffer(backend: &B, buf: B::Buffer, shape: &[usize]) -> Self {
        let n = backend.len(&buf);
        assert_eq!(
            n,
            numel(shape),
            "Tensor::from_buffer: buffer of {n} elements cannot have shape {shape:?}"
        );
        Tensor { buf, shape: shape.to_vec(), backend: backend.clone() }
    }

    /// Uploads host data of the given shape.
    pub fn from_slice(backend: &B, data: &[B::Elem], shape: &[usize]) -> Self {
        assert_eq!(
            data.len(),
            numel(shape),
            "Tensor::from_slice: {} values cannot have shape {shape:?}",
            data.len()
        );
        Tensor { buf: backend.upload(data), shape: shape.to_vec(), backend: backend.clone() }
    }

    /// Uploads f64 host data, converting to the backend's element type.
    pub fn from_f64(backend: &B, data: &[f64], shape: &[usize]) -> Self {
        let v: Vec<B::Elem> = data.iter().map(|&x| B::Elem::of(x)).collect();
        Self::from_slice(backend, &v, shape)
    }

    /// A tensor filled with `value`.
    pub fn full(backend: &B, shape: &[usize], value: f64) -> Self {
        Tensor {
            buf: backend.full(numel(shape), B::Elem::of(value)),
            shape: shape.to_vec(),
            backend: backend.clone(),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(backend: &B, shape: &[usize]) -> Self {
        Self::full(backend, shape, 0.0)
    }

    /// The identity matrix of order `n`.
    pub fn eye(backend: &B, n: usize) -> Self {
        let mut v = vec![B::Elem::zero(); n * n];
        for i in 0..n {
            v[i * n + i] = B::Elem::one();
        }
        Self::from_slice(backend, &v, &[n, n])
    }

    /// Downloads the data to the host.
    pub fn to_vec(&self) -> Vec<B::Elem> {
        self.backend.download(&self.buf)
    }

    /// Downloads the data to the host as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.to_vec().into_iter().map(|x| x.f64()).collect()
    }

    /// The single value of a one-element tensor, as f64.
    pub fn scalar(&self) -> f64 {
        assert_eq!(numel(&self.shape), 1, "Tensor::scalar: shape {:?} has not one element", self.shape);
        self.to_vec()[0].f64()
    }

    /// The backend this tensor lives on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Size of axis `i` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> usize {
        self.shape[self.axis(axis, "dim")]
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub(crate) fn axis(&self, axis: isize, op: &str) -> usize {
        let r = self.shape.len() as isize;
        let a = if axis < 0 { axis + r } else { axis };
        assert!(a >= 0 && a < r, "{op}: axis {axis} out of range for shape {:?}", self.shape);
        a as usize
    }

    pub(crate) fn view(&self, axis: usize) -> AxisView {
        AxisView {
            outer: numel(&self.shape[..axis]),
            len: self.shape[axis],
            inner: numel(&self.shape[axis + 1..]),
        }
    }

    fn with(&self, buf: B::Buffer, shape: Vec<usize>) -> Self {
        Tensor { buf, shape, backend: self.backend.clone() }
    }

    // ---------- checks ----------

    /// Fails with [`Error::NonFinite`] if any value is NaN or infinite.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        for (i, x) in self.to_vec().into_iter().enumerate() {
            if !x.is_finite() {
                return Err(Error::NonFinite { what: what.to_string(), index: i, value: x.f64() });
            }
        }
        Ok(())
    }

    // ---------- shape ----------

    /// Same data, new shape (same number of elements).
    pub fn reshape(&self, shape: &[usize]) -> Self {
        assert_eq!(numel(shape), self.numel(), "reshape: cannot view shape {:?} as {shape:?}", self.shape);
        self.with(self.buf.clone(), shape.to_vec())
    }

    /// Permutes the axes: output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Self {
        assert_eq!(perm.len(), self.rank(), "permute: {perm:?} for shape {:?}", self.shape);
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            assert!(p < perm.len() && !seen[p], "permute: {perm:?} is not a permutation");
            seen[p] = true;
        }
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return self.clone();
        }
        self.with(self.backend.permute(&self.buf, &self.shape, perm), shape)
    }

    /// Swaps the last two axes.
    pub fn t(&self) -> Self {
        let r = self.rank();
        assert!(r >= 2, "t: shape {:?} has fewer than two axes", self.shape);
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        self.permute(&perm)
    }

    /// `count` entries from `start` along `axis`.
    pub fn narrow(&self, axis: isize, start: usize, count: usize) -> Self {
        let a = self.axis(axis, "narrow");
        assert!(
            start + count <= self.shape[a],
            "narrow: [{start}, {}) out of range for axis {a} of shape {:?}",
            start + count,
            self.shape
        );
        let mut shape = self.shape.clone();
        shape[a] = count;
        self.with(self.backend.narrow(&self.buf, self.view(a), start, count), shape)
    }

    /// Concatenates tensors along `axis`; all other sizes must agree.
    pub fn cat(parts: &[&Tensor<B>], axis: isize) -> Self {
        assert!(!parts.is_empty(), "cat: no tensors");
        let first = parts[0];
        let a = first.axis(axis, "cat");
        for p in parts {
            assert!(
                p.rank() == first.rank()
                    && p.shape[..a] == first.shape[..a]
                    && p.shape[a + 1..] == first.shape[a + 1..],
                "cat: shape {:?} does not match {:?} along axis {a}",
                p.shape,
                first.shape
            );
        }
        let lens: Vec<usize> = parts.iter().map(|p| p.shape[a]).collect();
        let bufs: Vec<&B::Buffer> = parts.iter().map(|p| &p.buf).collect();
        let v = first.view(a);
        let mut shape = first.shape.clone();
        shape[a] = lens.iter().sum();
        first.with(first.backend.concat(&bufs, v.outer, &lens, v.inner), shape)
    }

    /// Selects entries `index` along `axis`.
    pub fn index_select(&self, axis: isize, index: &[usize]) -> Self {
        let a = self.axis(axis, "index_select");
        if let Some(&bad) = index.iter().find(|&&i| i >= self.shape[a]) {
            panic!("index_select: index {bad} out of range for axis {a} of shape {:?}", self.shape);
        }
        let mut shape = self.shape.clone();
        shape[a] = index.len();
        self.with(self.backend.index_select(&self.buf, self.view(a), index), shape)
    }

    /// Scatter-adds along `axis` into `len` entries (adjoint of `index_select`).
    pub fn index_add(&self, axis: isize, index: &[usize], len: usize) -> Self {
        let a = self.axis(axis, "index_add");
        assert_eq!(
            index.len(),
            self.shape[a],
            "index_add: {} indices for axis {a} of {:?}",
            index.len(),
            self.shape
        );
        if let Some(&bad) = index.iter().find(|&&i| i >= len) {
            panic!("index_add: index {bad} out of range for length {len}");
        }
        let mut shape = self.shape.clone();
        shape[a] = len;
        self.with(self.backend.index_add(&self.buf, self.view(a), index, len), shape)
    }

    // ---------- elementwise ----------

    /// Applies a unary op.
    pub fn unary(&self, op: UnaryOp) -> Self {
        self.with(self.backend.unary(op, &self.buf), self.shape.clone())
    }

    /// Applies a binary op with NumPy broadcasting.
    pub fn binary(&self, op: BinaryOp, other: &Tensor<B>) -> Self {
        if self.shape == other.shape {
            let s = contiguous_strides(&self.shape);
            return self.with(
                self.backend.binary(op, &self.buf, &s, &other.buf, &s, &self.shape),
                self.shape.clone(),
            );
        }
        let r = self.rank().max(other.rank());
        let pad = |s: &[usize]| {
            let mut v = vec![1; r - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (sa, sb) = (pad(&self.shape), pad(&other.shape));
        let mut out = vec![0; r];
        for i in 0..r {
            out[i] = if sa[i] == sb[i] || sb[i] == 1 {
                sa[i]
            } else if sa[i] == 1 {
                sb[i]
            } else {
                panic!("{op:?}: shapes {:?} and {:?} do not broadcast", self.shape, other.shape)
            };
        }
        let stride = |s: &[usize]| {
            let c = contiguous_strides(s);
            (0..r).map(|i| if s[i] == 1 { 0 } else { c[i] }).collect::<Vec<_>>()
        };
        let (ta, tb) = (stride(&sa), stride(&sb));
        self.with(self.backend.binary(op, &self.buf, &ta, &other.buf, &tb, &out), out)
    }

    /// `self + other` (broadcasting).
    pub fn add(&self, other: &Tensor<B>) -> Self {
        self.binary(BinaryOp::Add, other)
    }
    /// `self - other` (broadcasting).
    pub fn sub(&self, other: &Tensor<B>) -> Self {
        self.binary(BinaryOp::Sub, other)
    }
    /// `self * other` elementwise (broadcasting).
    pub fn mul(&self, other: &Tensor<B>) -> Self {
        self.binary(BinaryOp::Mul, other)
    }
    /// `self / other` elementwise (broadcasting).
    pub fn div(&self, other: &Tensor<B>) -> Self {
        self.binary(BinaryOp::Div, other)
    }
    /// `c * self`.
    pub fn scale(&self, c: f64) -> Self {
        self.unary(UnaryOp::MulScalar(c))
    }
    /// `self + c`.
    pub fn add_scalar(&self, c: f64) -> Self {
        self.unary(UnaryOp::AddScalar(c))
    }
    /// `-self`.
    pub fn neg(&self) -> Self {
        self.unary(UnaryOp::Neg)
    }
    /// `e^self`.
    pub fn exp(&self) -> Self {
        self.unary(UnaryOp::Exp)
    }
    /// `ln self`.
    pub fn log(&self) -> Self {
        self.unary(UnaryOp::Log)
    }
    /// `sqrt self`.
    pub fn sqrt(&self) -> Self {
        self.unary(UnaryOp::Sqrt)
    }
    /// `self^2`.
    pub fn square(&self) -> Self {
        self.unary(UnaryOp::Square)
    }
    /// `|self|`.
    pub fn abs(&self) -> Self {
        self.unary(UnaryOp::Abs)
    }
    /// `1 / self`.
    pub fn recip(&self) -> Self {
        self.unary(UnaryOp::Recip)
    }
    /// `max(self, 0)`.
    pub fn relu(&self) -> Self {
        self.unary(UnaryOp::Relu)
    }
    /// `1[self > 0]`.
    pub fn step(&self) -> Self {
        self.unary(UnaryOp::Step)
    }
    /// `sign(x) max(|x| - lambda, 0)`, the proximal operator of `lambda |x|`.
    pub fn soft_threshold(&self, lambda: f64) -> Self {
        self.unary(UnaryOp::SoftThreshold(lambda))
    }
    /// `max(self + c, 0)` in one pass (`add_scalar(c).relu()`).
    pub fn relu_shift(&self, c: f64) -> Self {
        self.unary(UnaryOp::ReluShift(c))
    }
    /// `self` where `mask > 0`, else 0, broadcasting (`self * mask.step()` in one pass).
    pub fn where_positive(&self, mask: &Tensor<B>) -> Self {
        self.binary(BinaryOp::WherePositive, mask)
    }
    /// `max(self, c)`.
    pub fn clamp_min(&self, c: f64) -> Self {
        self.unary(UnaryOp::ClampMin(c))
    }
    /// `self + c * other`, a fused-looking axpy built from primitives.
    pub fn add_scaled(&self, other: &Tensor<B>, c: f64) -> Self {
        self.add(&other.scale(c))
    }

    // ---------- reductions ----------

    fn reduce(&self, op: ReduceOp, axis: isize, keepdim: bool) -> Self {
        let a = self.axis(axis, "reduce");
        assert!(
            self.shape[a] > 0 || op == ReduceOp::Sum,
            "{op:?}: axis {a} of shape {:?} is empty",
            self.shape
        );
        let mut shape = self.shape.clone();
        if keepdim {
            shape[a] = 1;
        } else {
            shape.remove(a);
        }
        self.with(self.backend.reduce(op, &self.buf, self.view(a)), shape)
    }

    /// Sum along `axis`.
    pub fn sum_axis(&self, axis: isize, keepdim: bool) -> Self {
        self.reduce(ReduceOp::Sum, axis, keepdim)
    }
    /// Mean along `axis`.
    pub fn mean_axis(&self, axis: isize, keepdim: bool) -> Self {
        let n = self.dim(axis);
        assert!(n > 0, "mean_axis: axis {axis} of shape {:?} is empty", self.shape);
        self.sum_axis(axis, keepdim).scale(1.0 / n as f64)
    }
    /// Maximum along `axis`.
    pub fn max_axis(&self, axis: isize, keepdim: bool) -> Self {
        self.reduce(ReduceOp::Max, axis, keepdim)
    }
    /// Minimum along `axis`.
    pub fn min_axis(&self, axis: isize, keepdim: bool) -> Self {
        self.reduce(ReduceOp::Min, axis, keepdim)
    }
    /// Index of the maximum along `axis` (downloaded).
    pub fn argmax_axis(&self, axis: isize) -> Vec<usize> {
        Self::indices_to_host(std::slice::from_ref(&self.argmax_indices(axis)))
    }
    /// Index of the maximum along `axis` (first on ties), kept on the device as
    /// element values, so that a loop can collect them and download once with
    /// [`Tensor::indices_to_host`].
    pub fn argmax_indices(&self, axis: isize) -> Self {
        self.reduce(ReduceOp::ArgMax, axis, false)
    }
    /// Downloads index tensors made by [`Tensor::argmax_indices`] in one transfer:
    /// their entries in order (each row-major). Empty for no tensors.
    pub fn indices_to_host(parts: &[Self]) -> Vec<usize> {
        let values = match parts {
            [] => return Vec::new(),
            [one] => one.to_vec(),
            many => {
                let flat: Vec<Self> = many.iter().map(|t| t.reshape(&[t.numel()])).collect();
                Self::cat(&flat.iter().collect::<Vec<_>>(), 0).to_vec()
            }
        };
        values.into_iter().map(|x| x.f64() as usize).collect()
    }
    /// Sum of all elements.
    pub fn sum_all(&self) -> f64 {
        self.reshape(&[self.numel()]).sum_axis(0, false).scalar()
    }
    /// Euclidean (Frobenius) norm of all elements.
    pub fn norm(&self) -> f64 {
        self.square().sum_all().sqrt()
    }
    /// Largest absolute value.
    pub fn max_abs(&self) -> f64 {
        if self.numel() == 0 {
            return 0.0;
        }
        self.abs().reshape(&[self.numel()]).max_axis(0, false).scalar()
    }
    /// Softmax along `axis`.
    pub fn softmax(&self, axis: isize) -> Self {
        let a = self.axis(axis, "softmax");
        self.with(self.backend.softmax(&self.buf, self.view(a)), self.shape.clone())
    }
    /// Euclidean norm of each row vector along `axis` (keeps the axis with size 1).
    pub fn norm_axis(&self, axis: isize) -> Self {
        self.square().sum_axis(axis, true).sqrt()
    }

    // ---------- linear algebra ----------

    fn batch_dims(&self, op: &str) -> (usize, usize, usize) {
        assert!(self.rank() >= 2, "{op}: shape {:?} is not a matrix", self.shape);
        let r = self.rank();
        (numel(&self.shape[..r - 2]), self.shape[r - 2], self.shape[r - 1])
    }

    /// `op(self) @ op(other)` over the last two axes, batched over the leading
    /// ones; a 2-D operand is shared by the whole batch.
    pub fn matmul_t(&self, other: &Tensor<B>, trans_a: bool, trans_b: bool) -> Self {
        let (ba, ra, ca) = self.batch_dims("matmul");
        let (bb, rb, cb) = other.batch_dims("matmul");
        let (m, ka) = if trans_a { (ca, ra) } else { (ra, ca) };
        let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
        assert_eq!(
            ka,
            kb,
            "matmul: inner dimensions differ: {:?}{} @ {:?}{}",
            self.shape,
            if trans_a { "^T" } else { "" },
            other.shape,
            if trans_b { "^T" } else { "" }
        );
        let lead: Vec<usize>;
        let batch;
        if self.rank() > 2 && other.rank() > 2 {
            assert_eq!(
                self.shape[..self.rank() - 2],
                other.shape[..other.rank() - 2],
                "matmul: batch dimensions differ: {:?} @ {:?}",
                self.shape,
                other.shape
            );
            lead = self.shape[..self.rank() - 2].to_vec();
            batch = ba;
        } else if self.rank() > 2 {
            lead = self.shape[..self.rank() - 2].to_vec();
            batch = ba;
        } else {
            lead = other.shape[..other.rank() - 2].to_vec();
            batch = bb;
        }
        let spec = MatmulSpec {
            batch,
            m,
            k: ka,
            n,
            trans_a,
            trans_b,
            a_batched: self.rank() > 2,
            b_batched: other.rank() > 2,
        };
        let mut shape = lead;
        shape.extend([m, n]);
        self.with(self.backend.matmul(&self.buf, &other.buf, spec), shape)
    }

    /// `self @ other`.
    pub fn matmul(&self, other: &Tensor<B>) -> Self {
        self.matmul_t(other, false, false)
    }

    /// `(batch, n)` of a batch of square matrices `[.., n, n]`; panics naming `op` otherwise.
    pub(crate) fn square_batch(&self, op: &str) -> (usize, usize) {
        let (b, r, c) = self.batch_dims(op);
        assert_eq!(r, c, "{op}: matrices of shape {:?} are not square", self.shape);
        (b, r)
    }

    /// Lower Cholesky factor(s) of SPD matrices.
    pub fn cholesky(&self) -> Result<Self> {
        let (b, n) = self.square_batch("cholesky");
        Ok(self.with(self.backend.cholesky(&self.buf, b, n)?, self.shape.clone()))
    }

    /// Inverse(s) of SPD matrices by Cholesky.
    pub fn spd_inverse(&self) -> Result<Self> {
        let (b, n) = self.square_batch("spd_inverse");
        Ok(self.with(self.backend.spd_inverse(&self.buf, b, n)?, self.shape.clone()))
    }

    /// `log det` of SPD matrices by Cholesky; shape is the batch shape.
    pub fn spd_logdet(&self) -> Result<Self> {
        let (b, n) = self.square_batch("spd_logdet");
        let r = self.rank();
        Ok(self.with(self.backend.spd_logdet(&self.buf, b, n)?, self.shape[..r - 2].to_vec()))
    }

    /// Inverses and `log det` of SPD matrices `[.., n, n]` from one
    /// factorisation each; the log-determinants have the batch shape.
    pub fn spd_inverse_logdet(&self) -> Result<(Self, Self)> {
        let (b, n) = self.square_batch("spd_inverse_logdet");
        let r = self.rank();
        let (inv, ld) = self.backend.spd_inverse_logdet(&self.buf, b, n)?;
        Ok((self.with(inv, self.shape.clone()), self.with(ld, self.shape[..r - 2].to_vec())))
    }

    /// Solves `self X = rhs` for SPD `self`.
    pub fn spd_solve(&self, rhs: &Tensor<B>) -> Result<Self> {
        let (b, n) = self.square_batch("spd_solve");
        let (bb, rn, nrhs) = rhs.batch_dims("spd_solve");
        assert!(
            bb == b && rn == n,
            "spd_solve: system {:?} and right-hand side {:?} do not match",
            self.shape,
            rhs.shape
        );
        Ok(self.with(self.backend.spd_solve(&self.buf, &rhs.buf, b, n, nrhs)?, rhs.shape.clone()))
    }

    /// Eigenvalues (decreasing) and eigenvectors (columns) of symmetric matrices.
    pub fn sym_eigen(&self) -> Result<(Self, Self)> {
        let (b, n) = self.square_batch("sym_eigen");
        let r = self.rank();
        let (vals, vecs) = self.backend.sym_eigen(&self.buf, b, n)?;
        let mut vs = self.shape[..r - 2].to_vec();
        vs.push(n);
        Ok((self.with(vals, vs), self.with(vecs, self.shape.clone())))
    }

    // ---------- Fourier ----------

    /// Real-to-complex DFT along `axis`, keeping `len/2 + 1` frequencies.
    pub fn rfft(&self, axis: isize, norm: FftNorm) -> ComplexTensor<B> {
        let a = self.axis(axis, "rfft");
        assert!(self.shape[a] > 0, "rfft: axis {a} of shape {:?} is empty", self.shape);
        let (re, im) = self.backend.rfft(&self.buf, self.view(a), norm);
        let mut shape = self.shape.clone();
        shape[a] = self.shape[a] / 2 + 1;
        ComplexTensor { re: self.with(re, shape.clone()), im: self.with(im, shape) }
    }

    /// Promotes to a complex tensor with zero imaginary part.
    pub fn to_complex(&self) -> ComplexTensor<B> {
        ComplexTensor { re: self.clone(), im: Tensor::zeros(&self.backend, &self.shape) }
    }
}
