//! The `Backend` trait: the primitives (matmul, Cholesky solves and inverses, FFT, elementwise ops, reductions, layout) every model is built from; the fused kernels are the `Kernels` extension trait (`crate::kernels`).
//!
//! A backend owns opaque buffers of one element type, laid out row-major and
//! contiguous. Shapes live in [`crate::Tensor`]; a primitive receives only the
//! sizes it needs (for axis ops the `[outer, len, inner]` view of the tensor
//! around the axis). Host memory is reached only through [`Backend::upload`]
//! and [`Backend::download`], so a buffer may live on a GPU.

use crate::Result;
use std::fmt::{Debug, Display};

/// Floating-point element type of a backend (f32 or f64).
pub trait Element:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + std::iter::Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Converts to f64.
    fn f64(self) -> f64;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Element for f64 {
    const NAME: &'static str = "f64";
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn f64(self) -> f64 {
        self
    }
}

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// sqrt x
    Sqrt,
    /// |x|
    Abs,
    /// x^2
    Square,
    /// 1/x
    Recip,
    /// max(x, 0)
    Relu,
    /// 1 if x > 0 else 0 (the derivative of ReLU, 0 at 0 as in PyTorch)
    Step,
    /// sign(x) max(|x| - lambda, 0)
    SoftThreshold(f64),
    /// x + c
    AddScalar(f64),
    /// c x
    MulScalar(f64),
    /// max(x, c)
    ClampMin(f64),
    /// min(x, c)
    ClampMax(f64),
    /// max(x + c, 0): the ReLU of `x + c` in one pass (the ISTA step's
    /// `ReLU(. - eta lambda)`); the same rounding as `AddScalar(c)` then `Relu`.
    ReluShift(f64),
}

/// Elementwise binary operations (with broadcasting handled by the tensor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// `a` where `b > 0`, else 0: a gradient masked by a ReLU output in one
    /// pass (`a * step(b)` for finite `a`).
    WherePositive,
}

/// Reductions along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Index of the maximum (first one on ties), as an element value.
    ArgMax,
}

/// Scaling convention of a discrete Fourier transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FftNorm {
    /// Forward unscaled, inverse scaled by 1/n (NumPy's "backward").
    Backward,
    /// Both directions scaled by 1/sqrt(n) (NumPy's "ortho"): unitary.
    Ortho,
}

/// Sizes of a tensor seen around one axis: `outer` blocks of `len` x `inner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisView {
    /// Product of the sizes before the axis.
    pub outer: usize,
    /// Size of the axis.
    pub len: usize,
    /// Product of the sizes after the axis.
    pub inner: usize,
}

impl AxisView {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.outer * self.len * self.inner
    }
}

/// Sizes of a batched matmul: `batch` products of an `m x k` by a `k x n`
/// matrix (after the optional transposes). `a_batched`/`b_batched` false means
/// that one matrix is shared by every product of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    /// Number of products.
    pub batch: usize,
    /// Rows of op(A) and of the result.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of op(B) and of the result.
    pub n: usize,
    /// A is stored `k x m` and used transposed.
    pub trans_a: bool,
    /// B is stored `n x k` and used transposed.
    pub trans_b: bool,
    /// A has one matrix per batch entry.
    pub a_batched: bool,
    /// B has one matrix per batch entry.
    pub b_batched: bool,
}

/// The primitive operations a backend provides; every method is required.
///
/// The fused kernels of the models are the extension trait
/// [`crate::kernels::Kernels`], whose methods all have reference bodies built
/// from these.
///
/// Every method takes and returns whole contiguous row-major buffers. Sizes
/// are checked by [`crate::Tensor`] before a call reaches the backend, so a
/// backend may assume they are consistent. Fallible methods return
/// [`crate::Error`] for data-dependent failures (a matrix that is not positive
/// definite, a lost device).
pub trait Backend: Clone + Debug + Send + Sync + 'static {
    /// Element type.
    type Elem: Element;
    /// Opaque storage of `len` elements, on the host or on a device.
    type Buffer: Clone + Send + Sync;

    /// Human-readable name, e.g. `cpu-f64` or `wgpu-f32 (llvmpipe)`.
    fn name(&self) -> String;

    // ---- memory and transfer ----

    /// Copies host data into a new buffer.
    fn upload(&self, data: &[Self::Elem]) -> Self::Buffer;
    /// Copies a buffer back to the host.
    fn download(&self, buf: &Self::Buffer) -> Vec<Self::Elem>;
    /// A buffer of `len` copies of `value`.
    fn full(&self, len: usize, value: Self::Elem) -> Self::Buffer;
    /// Number of elements in a buffer.
    fn len(&self, buf: &Self::Buffer) -> usize;

    // ---- elementwise ----

    /// `op(x)` elementwise.
    fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Self::Buffer;
    /// `op(a, b)` elementwise over `out_shape`, where `a_strides`/`b_strides`
    /// give the element stride of each output axis in `a`/`b` (0 where
    /// broadcast).
    fn binary(
        &self,
        op: BinaryOp,
        a: &Self::Buffer,
        a_strides: &[usize],
        b: &Self::Buffer,
        b_strides: &[usize],
        out_shape: &[usize],
    ) -> Self::Buffer;

    // ---- layout ----

    /// Permutes the axes: output axis `i` is input axis `perm[i]`.
    fn permute(&self, x: &Self::Buffer, shape: &[usize], perm: &[usize]) -> Self::Buffer;
    /// Takes `count` entries starting at `start` along the axis of `view`.
    fn narrow(&self, x: &Self::Buffer, view: AxisView, start: usize, count: usize) -> Self::Buffer;
    /// Concatenates along an axis: part `i` has `lens[i]` entries along it,
    /// and all parts share `outer` and `inner`.
    fn concat(&self, parts: &[&Self::Buffer], outer: usize, lens: &[usize], inner: usize) -> Self::Buffer;
    /// Selects entries `index` along the axis of `view` (repeats allowed).
    fn index_select(&self, x: &Self::Buffer, view: AxisView, index: &[usize]) -> Self::Buffer;
    /// Adds the selected slices back: the inverse scatter of [`Self::index_select`],
    /// `out[.., index[i], ..] += x[.., i, ..]` into a zero buffer with `len` entries along the axis.
    fn index_add(&self, x: &Self::Buffer, view: AxisView, index: &[usize], len: usize) -> Self::Buffer;

    // ---- reductions ----

    /// Reduces along the axis of `view`; the result has `outer * inner` elements.
    fn reduce(&self, op: ReduceOp, x: &Self::Buffer, view: AxisView) -> Self::Buffer;
    /// Softmax along the axis of `view` (max-subtracted).
    fn softmax(&self, x: &Self::Buffer, view: AxisView) -> Self::Buffer;

    // ---- linear algebra ----

    /// Batched matrix product, see [`MatmulSpec`]; the result is `batch x m x n`.
    fn matmul(&self, a: &Self::Buffer, b: &Self::Buffer, spec: MatmulSpec) -> Self::Buffer;
    /// Lower Cholesky factors `L` (with `A = L L^T`) of `batch` SPD `n x n`
    /// matrices; the strict upper triangle of each result is zero.
    fn cholesky(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer>;
    /// Solves `A X = B` for `batch` SPD `A` (`n x n`) and `B` (`n x nrhs`).
    fn spd_solve(
        &self,
        a: &Self::Buffer,
        b: &Self::Buffer,
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<Self::Buffer>;
    /// Inverses of `batch` SPD `n x n` matrices, by Cholesky.
    fn spd_inverse(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer>;
    /// `log det A` of `batch` SPD `n x n` matrices, by Cholesky.
    fn spd_logdet(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer>;
    /// Inverses and `log det` of `batch` SPD `n x n` matrices from one
    /// Cholesky factorisation each (`A = L L^T`: `log det A = 2 sum_i ln L_ii`,
    /// `A^-1 = L^-T L^-1`): `(inverses, logdets)`. The operators and rates of
    /// 4.1.3-4.1.4 come from it; a backend without a shared factorisation
    /// may return `spd_inverse` and `spd_logdet`.
    fn spd_inverse_logdet(
        &self,
        a: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)>;
    /// Eigen-decomposition of `batch` symmetric `n x n` matrices: eigenvalues
    /// in decreasing order (`batch x n`) and eigenvectors as columns
    /// (`batch x n x n`, column `i` belongs to eigenvalue `i`).
    fn sym_eigen(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<(Self::Buffer, Self::Buffer)>;

    /// Inverses of `batch` Hermitian positive definite `n x n` complex
    /// matrices given as real and imaginary planes, by complex Cholesky.
    fn herm_inverse(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)>;
    /// `log det A` (real) of `batch` Hermitian positive definite matrices.
    fn herm_logdet(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<Self::Buffer>;
    /// Inverses and (real) `log det` of `batch` Hermitian positive definite
    /// `n x n` matrices from one factorisation each: `(re, im, logdet)`
    /// (the per-frequency operators and rates of 4.1.20-4.1.22).
    fn herm_inverse_logdet(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer, Self::Buffer)>;
    /// Solves `A X = B` for `batch` Hermitian positive definite `A` (`n x n`)
    /// and complex `B` (`n x nrhs`).
    fn herm_solve(
        &self,
        a: (&Self::Buffer, &Self::Buffer),
        b: (&Self::Buffer, &Self::Buffer),
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)>;

    // ---- Fourier transforms (any length) ----

    /// Complex DFT along the axis of `view`: `X_k = sum_t x_t e^{-2 pi i k t / n}`
    /// (forward) or its inverse, with the given scaling.
    fn fft(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        view: AxisView,
        inverse: bool,
        norm: FftNorm,
    ) -> (Self::Buffer, Self::Buffer);
    /// Real-to-complex DFT along the axis: the `len / 2 + 1` non-negative
    /// frequencies of the conjugate-symmetric spectrum.
    fn rfft(&self, x: &Self::Buffer, view: AxisView, norm: FftNorm) -> (Self::Buffer, Self::Buffer);
    /// Inverse of [`Self::rfft`]: `view.len` is the half-spectrum length and
    /// `n` the signal length (`n / 2 + 1 == view.len`). As in NumPy, the
    /// spectrum is extended by `X_{n-k} = conj X_k`, and the imaginary parts of
    /// bins 0 and `n / 2` (even `n`), which no real signal has, are ignored.
    fn irfft(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        view: AxisView,
        n: usize,
        norm: FftNorm,
    ) -> Self::Buffer;
}
