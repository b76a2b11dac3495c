//! `CpuBackend`: the rate-core `Backend` and `Kernels` on the CPU in f32 and f64 (faer for matmul, Cholesky and eigen; rustfft; rayon), as a list of delegations to one file per concern.
//!
//! Buffers are `Arc<HostVec<T>>` (a `Vec` that can be recycled, see [`pool`]), so reshapes and clones are free.
//!
//! | file | what |
//! |---|---|
//! | `elem.rs` | the element types (f32, f64) and the buffer |
//! | `exp.rs` | the one hand-written `e^x` |
//! | `par.rs` | the parallel/sequential split of the loops |
//! | `elementwise.rs`, `layout.rs`, `reduce.rs` | elementwise, layout and reduction primitives |
//! | `linalg.rs`, `blocked.rs`, `hermitian.rs` | matmul, real SPD and complex Hermitian linear algebra |
//! | `fft.rs` | FFTs (rustfft plans) |
//! | `nn.rs`, `attention.rs`, `dense_attention.rs`, `token_stats.rs`, `invariant_step.rs`, `redunet/` | the fused kernels |
//! | `lanes.rs`, `pool.rs`, `host.rs` | eight-lane reductions, recycled buffers, SIMD and allocator state |
//!
//! Dense linear algebra goes to faer; batches of small matrices (the
//! per-class and per-frequency operators of ReduNet) are factored by a plain
//! Cholesky loop, one matrix per rayon task, where faer's per-call set-up
//! would dominate. Elementwise work runs in parallel above a size threshold.

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod attention;
mod blocked;
mod dense_attention;
mod elem;
mod elementwise;
mod exp;
mod fft;
mod hermitian;
mod host;
mod invariant_step;
mod lanes;
mod layout;
mod linalg;
mod nn;
mod par;
pub mod pool;
mod reduce;
mod redunet;
mod token_stats;

pub use elem::{Buf, CpuElem};
pub use exp::{exp_f32, fast_exp, FastExp};
pub use host::keep_freed_memory;
pub use pool::{recycle_buffers, HostVec};

use elem::buf;
use linalg::clear_after_factorisation;
use rate_core::kernels::{InvariantProductsSpec, InvariantStepSpec, Record, RedunetRun, RedunetSpec};
use rate_core::{
    AttentionSpec, AxisView, Backend, BinaryOp, DenseAttentionSpec, FftNorm, Kernels, MatmulSpec, ReduceOp,
    Result, TokenStats, TokenStatsSpec, UnaryOp,
};
use std::marker::PhantomData;
use std::sync::Arc;

/// The CPU backend in precision `T`.
#[derive(Clone, Debug)]
pub struct CpuBackend<T: CpuElem> {
    par: faer::Par,
    fft: Arc<fft::Plans<T>>,
    _t: PhantomData<T>,
}

impl<T: CpuElem> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: CpuElem> CpuBackend<T> {
    /// A backend using every thread of the global rayon pool.
    pub fn new() -> Self {
        CpuBackend { par: faer::Par::rayon(0), fft: Arc::new(fft::Plans::default()), _t: PhantomData }
    }

    /// A backend that runs faer's dense kernels on the calling thread only
    /// (batched and elementwise work still uses rayon's pool).
    pub fn sequential() -> Self {
        CpuBackend { par: faer::Par::Seq, fft: Arc::new(fft::Plans::default()), _t: PhantomData }
    }

    /// The same backend with faer's kernels on the calling thread.
    pub(crate) fn on_calling_thread(&self) -> Self {
        CpuBackend { par: faer::Par::Seq, fft: self.fft.clone(), _t: PhantomData }
    }

    /// Whether faer's dense kernels may use the pool (not [`Self::sequential`]).
    pub(crate) fn spreads(&self) -> bool {
        !matches!(self.par, faer::Par::Seq)
    }

    /// Parallelism handed to faer for one dense kernel of `flops` work.
    pub(crate) fn par_for(&self, flops: usize) -> faer::Par {
        if flops < 1 << 18 {
            faer::Par::Seq
        } else {
            self.par
        }
    }
}

impl<T: CpuElem> Backend for CpuBackend<T> {
    type Elem = T;
    type Buffer = Buf<T>;

    fn name(&self) -> String {
        format!("cpu-{}", T::NAME)
    }

    fn upload(&self, data: &[T]) -> Buf<T> {
        buf(data.to_vec())
    }

    fn download(&self, buf: &Buf<T>) -> Vec<T> {
        buf.to_vec()
    }

    fn full(&self, len: usize, value: T) -> Buf<T> {
        buf(vec![value; len])
    }

    fn len(&self, buf: &Buf<T>) -> usize {
        buf.len()
    }

    fn unary(&self, op: UnaryOp, x: &Buf<T>) -> Buf<T> {
        elementwise::unary(op, x)
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &Buf<T>,
        sa: &[usize],
        b: &Buf<T>,
        sb: &[usize],
        shape: &[usize],
    ) -> Buf<T> {
        elementwise::binary(op, a, sa, b, sb, shape)
    }

    fn permute(&self, x: &Buf<T>, shape: &[usize], perm: &[usize]) -> Buf<T> {
        layout::permute(x, shape, perm)
    }

    fn narrow(&self, x: &Buf<T>, v: AxisView, start: usize, count: usize) -> Buf<T> {
        layout::narrow(x, v, start, count)
    }

    fn concat(&self, parts: &[&Buf<T>], outer: usize, lens: &[usize], inner: usize) -> Buf<T> {
        layout::concat(parts, outer, lens, inner)
    }

    fn index_select(&self, x: &Buf<T>, v: AxisView, index: &[usize]) -> Buf<T> {
        layout::index_select(x, v, index)
    }

    fn index_add(&self, x: &Buf<T>, v: AxisView, index: &[usize], len: usize) -> Buf<T> {
        layout::index_add(x, v, index, len)
    }

    fn reduce(&self, op: ReduceOp, x: &Buf<T>, v: AxisView) -> Buf<T> {
        reduce::reduce(op, x, v)
    }

    fn softmax(&self, x: &Buf<T>, v: AxisView) -> Buf<T> {
        reduce::softmax(x, v)
    }

    fn matmul(&self, a: &Buf<T>, b: &Buf<T>, s: MatmulSpec) -> Buf<T> {
        buf(linalg::product(self, a, b, s))
    }

    fn cholesky(&self, a: &Buf<T>, batch: usize, n: usize) -> Result<Buf<T>> {
        let out = linalg::cholesky_batch(self, a, batch, n, "cholesky");
        clear_after_factorisation(n);
        out.map(buf)
    }

    fn spd_solve(&self, a: &Buf<T>, b: &Buf<T>, batch: usize, n: usize, nrhs: usize) -> Result<Buf<T>> {
        let out = linalg::spd_solve(self, a, b, batch, n, nrhs).map(buf);
        clear_after_factorisation(n);
        out
    }

    fn spd_inverse(&self, a: &Buf<T>, batch: usize, n: usize) -> Result<Buf<T>> {
        let out = linalg::spd_inverse(self, a, batch, n).map(buf);
        clear_after_factorisation(n);
        out
    }

    fn spd_logdet(&self, a: &Buf<T>, batch: usize, n: usize) -> Result<Buf<T>> {
        let out = linalg::spd_logdet(self, a, batch, n).map(buf);
        clear_after_factorisation(n);
        out
    }

    fn sym_eigen(&self, a: &Buf<T>, batch: usize, n: usize) -> Result<(Buf<T>, Buf<T>)> {
        let out = linalg::sym_eigen(a, batch, n).map(|(v, u)| (buf(v), buf(u)));
        host::clear_upper_simd_state_everywhere();
        out
    }

    fn herm_inverse(&self, re: &Buf<T>, im: &Buf<T>, batch: usize, n: usize) -> Result<(Buf<T>, Buf<T>)> {
        hermitian::herm_inverse(re, im, batch, n).map(|(r, i)| (buf(r), buf(i)))
    }

    fn herm_logdet(&self, re: &Buf<T>, im: &Buf<T>, batch: usize, n: usize) -> Result<Buf<T>> {
        hermitian::herm_logdet(re, im, batch, n).map(buf)
    }

    fn spd_inverse_logdet(&self, a: &Buf<T>, batch: usize, n: usize) -> Result<(Buf<T>, Buf<T>)> {
        let out = linalg::spd_inverse_logdet(self, a, batch, n).map(|(i, l)| (buf(i), buf(l)));
        clear_after_factorisation(n);
        out
    }

    fn herm_inverse_logdet(
        &self,
        re: &Buf<T>,
        im: &Buf<T>,
        batch: usize,
        n: usize,
    ) -> Result<(Buf<T>, Buf<T>, Buf<T>)> {
        hermitian::herm_inverse_logdet(re, im, batch, n, "herm_inverse_logdet")
            .map(|(r, i, l)| (buf(r), buf(i), buf(l)))
    }

    fn herm_solve(
        &self,
        a: (&Buf<T>, &Buf<T>),
        b: (&Buf<T>, &Buf<T>),
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<(Buf<T>, Buf<T>)> {
        hermitian::herm_solve((a.0, a.1), (b.0, b.1), batch, n, nrhs).map(|(r, i)| (buf(r), buf(i)))
    }

    fn fft(&self, re: &Buf<T>, im: &Buf<T>, v: AxisView, inverse: bool, norm: FftNorm) -> (Buf<T>, Buf<T>) {
        let (r, i) = self.fft.c2c(re, im, v, inverse, norm);
        (buf(r), buf(i))
    }

    fn rfft(&self, x: &Buf<T>, v: AxisView, norm: FftNorm) -> (Buf<T>, Buf<T>) {
        let (r, i) = self.fft.r2c(x, v, norm);
        (buf(r), buf(i))
    }

    fn irfft(&self, re: &Buf<T>, im: &Buf<T>, v: AxisView, n: usize, norm: FftNorm) -> Buf<T> {
        buf(self.fft.c2r(re, im, v, n, norm))
    }
}

/// Every kernel overridden by a fused CPU kernel (tested against the
/// reference bodies by `rate_core::testing`'s `check_kernel_*`).
impl<T: CpuElem> Kernels for CpuBackend<T> {
    fn layer_norm(
        &self,
        x: &Buf<T>,
        weight: &Buf<T>,
        bias: &Buf<T>,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> (Buf<T>, Buf<T>, Buf<T>) {
        let (y, m, r) = nn::layer_norm(x, weight, bias, rows, dim, eps);
        (buf(y), buf(m), buf(r))
    }

    fn layer_norm_backward(
        &self,
        x: &Buf<T>,
        mean: &Buf<T>,
        rstd: &Buf<T>,
        weight: &Buf<T>,
        grad: &Buf<T>,
        rows: usize,
        dim: usize,
    ) -> (Buf<T>, Buf<T>, Buf<T>) {
        let (dx, dw, db) = nn::layer_norm_backward(x, mean, rstd, weight, grad, rows, dim);
        (buf(dx), buf(dw), buf(db))
    }

    fn softmax_backward(&self, y: &Buf<T>, grad: &Buf<T>, _rows: usize, len: usize) -> Buf<T> {
        buf(nn::softmax_backward(y, grad, len))
    }

    fn cumsum(&self, x: &Buf<T>, v: AxisView, reverse: bool) -> Buf<T> {
        buf(attention::cumsum(x, v, reverse))
    }

    fn attention_tiled(&self, w: &Buf<T>, spec: AttentionSpec) -> (Buf<T>, Buf<T>) {
        let (o, l) = attention::forward(w, spec);
        (buf(o), buf(l))
    }

    fn attention_tiled_backward(
        &self,
        w: &Buf<T>,
        out: &Buf<T>,
        lse: &Buf<T>,
        grad_out: &Buf<T>,
        spec: AttentionSpec,
    ) -> Buf<T> {
        buf(attention::backward(w, out, lse, grad_out, spec))
    }

    fn attention_dense(&self, w: &Buf<T>, spec: DenseAttentionSpec) -> (Buf<T>, Buf<T>) {
        let (a, o) = dense_attention::forward(w, spec);
        (buf(a), buf(o))
    }

    fn attention_dense_backward(
        &self,
        w: &Buf<T>,
        attn: &Buf<T>,
        grad_out: &Buf<T>,
        spec: DenseAttentionSpec,
    ) -> Buf<T> {
        buf(dense_attention::backward(w, attn, grad_out, spec))
    }

    fn token_stats(&self, w: &Buf<T>, temp: &Buf<T>, spec: TokenStatsSpec) -> TokenStats<Buf<T>> {
        token_stats::token_stats(w, temp, spec).map(buf)
    }

    fn invariant_step(
        &self,
        v: &Buf<T>,
        y: &Buf<T>,
        weights: &Buf<T>,
        gamma: &Buf<T>,
        spec: InvariantStepSpec,
    ) -> (Buf<T>, Buf<T>) {
        let (out, pi) = invariant_step::invariant_step(v, y, weights, gamma, spec);
        (buf(out), buf(pi))
    }

    fn real_operand(&self, packed: &Buf<T>, f: usize, g: usize, c: usize) -> Buf<T> {
        buf(invariant_step::real_operand(packed, f, g, c))
    }

    fn invariant_products(&self, v: &Buf<T>, packed: &Buf<T>, spec: InvariantProductsSpec) -> Buf<T> {
        buf(invariant_step::invariant_products(v, packed, spec))
    }

    fn redunet_build(
        &self,
        z: &Buf<T>,
        samples: usize,
        dim: usize,
        labels: &[usize],
        spec: &RedunetSpec,
        record: &Record,
    ) -> Result<RedunetRun<Buf<T>>> {
        // the whole loop on a worker of the pool: each layer's parallel pass forks from inside it
        rayon::scope(|_| redunet::build(z, (samples, dim), labels, spec, record))
    }

    fn redunet_transform(
        &self,
        z: &Buf<T>,
        samples: usize,
        dim: usize,
        operators: &[Buf<T>],
        gamma: &[f64],
        spec: &RedunetSpec,
        record: &Record,
    ) -> Result<RedunetRun<Buf<T>>> {
        redunet::transform(z, (samples, dim), operators, gamma, spec, record)
    }
}
