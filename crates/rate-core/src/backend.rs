//! The `Backend` trait: the few primitives (matmul, Cholesky solves, FFT, softmax, thresholds) every model is built from.
//!
//! A backend owns opaque buffers of one element type, laid out row-major and
//! contiguous. Shapes live in [`crate::Tensor`]; a primitive receives only the
//! sizes it needs (for axis ops the `[outer, len, inner]` view of the tensor
//! around the axis). Host memory is reached only through [`Backend::upload`]
//! and [`Backend::download`], so a buffer may live on a GPU.

use crate::attention::AttentionSpec;
use crate::tensor::Tensor;
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

/// The primitive operations a backend provides.
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

    // ---- composite kernels of the transformer layers, with default bodies from the primitives ----

    /// LayerNorm of `rows` contiguous rows of `dim` values with affine
    /// `weight` and `bias` (`dim` each), biased variance: `(y, mean, rstd)`,
    /// the statistics one value per row (see [`crate::layer_ops`]).
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: &Self::Buffer,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> (Self::Buffer, Self::Buffer, Self::Buffer) {
        let t = |b: &Self::Buffer, s: &[usize]| crate::Tensor::from_buffer(self, b.clone(), s);
        let (y, m, r) = crate::layer_ops::layer_norm_reference(
            &t(x, &[rows, dim]),
            &t(weight, &[dim]),
            &t(bias, &[dim]),
            eps,
        );
        (y.buffer().clone(), m.buffer().clone(), r.buffer().clone())
    }

    /// Backward of [`Self::layer_norm`] from the input, its row statistics,
    /// the weight and `dL/dy`: `(dL/dx, dL/dweight, dL/dbias)`.
    fn layer_norm_backward(
        &self,
        x: &Self::Buffer,
        mean: &Self::Buffer,
        rstd: &Self::Buffer,
        weight: &Self::Buffer,
        grad: &Self::Buffer,
        rows: usize,
        dim: usize,
    ) -> (Self::Buffer, Self::Buffer, Self::Buffer) {
        let t = |b: &Self::Buffer, s: &[usize]| crate::Tensor::from_buffer(self, b.clone(), s);
        let (dx, dw, db) = crate::layer_ops::layer_norm_backward_reference(
            &t(x, &[rows, dim]),
            &t(mean, &[rows]),
            &t(rstd, &[rows]),
            &t(weight, &[dim]),
            &t(grad, &[rows, dim]),
        );
        (dx.buffer().clone(), dw.buffer().clone(), db.buffer().clone())
    }

    /// Backward of a softmax over `rows` contiguous rows of `len` values:
    /// `y * (grad - rowsum(grad * y))` for the softmax output `y`.
    fn softmax_backward(
        &self,
        y: &Self::Buffer,
        grad: &Self::Buffer,
        rows: usize,
        len: usize,
    ) -> Self::Buffer {
        let t = |b: &Self::Buffer| crate::Tensor::from_buffer(self, b.clone(), &[rows, len]);
        crate::layer_ops::softmax_backward_reference(&t(y), &t(grad)).buffer().clone()
    }

    // ---- composite kernels with default bodies (a backend may override them for speed) ----

    /// Inclusive cumulative sum along the axis of `view`, from the last entry
    /// backwards when `reverse`. The default adds shifted copies
    /// (`ceil(log2 len)` passes).
    fn cumsum(&self, x: &Self::Buffer, view: AxisView, reverse: bool) -> Self::Buffer {
        let t = Tensor::from_buffer(self, x.clone(), &[view.outer, view.len, view.inner]);
        crate::attention::cumsum_by_doubling(&t, reverse).buffer().clone()
    }

    /// Tiled shared-QKV attention `softmax(s W W^T) W` of `spec.batch`
    /// problems `W` (`n x dh`): the output and the row log-sum-exp of the
    /// logits (`batch x n`), never forming an `n x n` matrix (see
    /// [`crate::attention`]).
    fn attention_tiled(&self, w: &Self::Buffer, spec: AttentionSpec) -> (Self::Buffer, Self::Buffer) {
        let t = Tensor::from_buffer(self, w.clone(), &[spec.batch, spec.n, spec.dh]);
        let (o, l) = crate::attention::tiled_forward(&t, spec);
        (o.buffer().clone(), l.buffer().clone())
    }

    /// Backward of [`Self::attention_tiled`]: `dL/dW` (`batch x n x dh`) from
    /// the tokens, the output, the row log-sum-exp and `dL/d(output)`.
    fn attention_tiled_backward(
        &self,
        w: &Self::Buffer,
        out: &Self::Buffer,
        lse: &Self::Buffer,
        grad_out: &Self::Buffer,
        spec: AttentionSpec,
    ) -> Self::Buffer {
        let shape = [spec.batch, spec.n, spec.dh];
        let t = |b: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, b.clone(), s);
        crate::attention::tiled_backward(
            &t(w, &shape),
            &t(out, &shape),
            &t(lse, &[spec.batch, spec.n]),
            &t(grad_out, &shape),
            spec,
        )
        .buffer()
        .clone()
    }

    /// Dense shared-QKV attention of every head of head-interleaved tokens
    /// `w` (`batch x n x heads*dh`): the attention `softmax_rows(W_h W_h^T)`
    /// (`batch x heads x n x n`) and the merged outputs `A_h W_h`
    /// (`batch x n x heads*dh`), see [`crate::attention::attention_dense`].
    /// The default body splits the heads by a permutation and multiplies; a
    /// backend may work on the interleaved layout in place.
    fn attention_dense(
        &self,
        w: &Self::Buffer,
        spec: crate::attention::DenseAttentionSpec,
    ) -> (Self::Buffer, Self::Buffer) {
        let [b, n, width] = [spec.batch, spec.tokens, spec.heads * spec.dim_head];
        let t = Tensor::from_buffer(self, w.clone(), &[b, n, width]);
        let (a, o) = crate::attention::dense_forward(&t, spec);
        (a.buffer().clone(), o.buffer().clone())
    }

    /// Backward of [`Self::attention_dense`]: `dL/dW` (`batch x n x heads*dh`)
    /// from the tokens, the attention and `dL/d(merged output)`.
    fn attention_dense_backward(
        &self,
        w: &Self::Buffer,
        attn: &Self::Buffer,
        grad_out: &Self::Buffer,
        spec: crate::attention::DenseAttentionSpec,
    ) -> Self::Buffer {
        let [b, h, n, width] = [spec.batch, spec.heads, spec.tokens, spec.heads * spec.dim_head];
        let t = |x: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, x.clone(), s);
        crate::attention::dense_backward(
            &t(w, &[b, n, width]),
            &t(attn, &[b, h, n, n]),
            &t(grad_out, &[b, n, width]),
            spec,
        )
        .buffer()
        .clone()
    }

    /// TSSA's token statistics of `w` (`batch x n x heads*dh`) with per-head
    /// temperatures `temp` (`heads` values), see [`crate::token_stats`](mod@crate::token_stats). The
    /// default body computes them op by op.
    fn token_stats(
        &self,
        w: &Self::Buffer,
        temp: &Self::Buffer,
        spec: crate::token_stats::TokenStatsSpec,
    ) -> crate::token_stats::TokenStats<Self::Buffer> {
        let crate::token_stats::TokenStatsSpec { batch, n, heads, dh, norm_eps } = spec;
        let w = Tensor::from_buffer(self, w.clone(), &[batch, n, heads * dh]);
        let temp = Tensor::from_buffer(self, temp.clone(), &[heads]);
        crate::token_stats::token_stats_reference(&w, &temp, heads, norm_eps).map(|t| t.buffer().clone())
    }

    /// The update of one shift-invariant ReduNet layer from the features `v`
    /// (`F x n x width`), their products `y` with `E` and the `C^j`
    /// (`F x n x (k+1) x width`), the frequency weights (`F`) and the class
    /// weights (`k`): `(v', pi [n x k])`, see [`crate::invariant_step`]. The
    /// default body computes it op by op.
    fn invariant_step(
        &self,
        v: &Self::Buffer,
        y: &Self::Buffer,
        weights: &Self::Buffer,
        gamma: &Self::Buffer,
        spec: crate::invariant_step::InvariantStepSpec,
    ) -> (Self::Buffer, Self::Buffer) {
        let crate::invariant_step::InvariantStepSpec { freqs: f, n, classes: k, width, eta, lambda } = spec;
        let t = |b: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, b.clone(), s);
        let (out, pi) = crate::invariant_step::invariant_step_reference(
            &t(v, &[f, n, width]),
            &t(y, &[f, n, k + 1, width]),
            &t(weights, &[f]),
            &t(gamma, &[k]),
            eta,
            lambda,
        );
        (out.buffer().clone(), pi.buffer().clone())
    }

    /// The real operand `F x 2C x 2gC` of `F x g` Hermitian-packed `C x C`
    /// operators, see [`crate::invariant_step::real_operand`]. The default
    /// body is one gather.
    fn real_operand(&self, packed: &Self::Buffer, f: usize, g: usize, c: usize) -> Self::Buffer {
        let p = Tensor::from_buffer(self, packed.clone(), &[f, g, c, c]);
        crate::invariant_step::real_operand_reference(&p).buffer().clone()
    }

    /// The products `y = v W` of one shift-invariant ReduNet layer: features
    /// `v` (`F x n x 2C`, packed half spectra) times the real operand `W`
    /// (`F x 2C x 2gC`) of `F x g` Hermitian-packed operators, `F x n x 2gC`,
    /// see [`crate::invariant_step::invariant_products`]. The default body
    /// unfolds `W` ([`Self::real_operand`]) and multiplies; a backend may
    /// unfold it one frequency at a time so that it is never stored whole.
    fn invariant_products(
        &self,
        v: &Self::Buffer,
        packed: &Self::Buffer,
        spec: crate::invariant_step::InvariantProductsSpec,
    ) -> Self::Buffer {
        let crate::invariant_step::InvariantProductsSpec { freqs: f, n, ops: g, channels: c } = spec;
        let w = self.real_operand(packed, f, g, c);
        let s = MatmulSpec {
            batch: f,
            m: n,
            k: 2 * c,
            n: 2 * g * c,
            trans_a: false,
            trans_b: false,
            a_batched: true,
            b_batched: true,
        };
        self.matmul(v, &w, s)
    }

    /// [`Self::herm_inverse`] and [`Self::herm_logdet`] of the same matrices:
    /// `(re, im, logdet)`. The default body factors twice; a backend may
    /// share one factorisation.
    #[allow(clippy::type_complexity)]
    fn herm_inverse_logdet(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer, Self::Buffer)> {
        let (r, i) = self.herm_inverse(re, im, batch, n)?;
        Ok((r, i, self.herm_logdet(re, im, batch, n)?))
    }
}
