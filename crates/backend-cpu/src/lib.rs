//! `CpuBackend`: the rate-core `Backend` on the CPU in f32 and f64 (faer for matmul, Cholesky and eigen; rustfft; rayon).
//!
//! Buffers are `Arc<Vec<T>>`, so reshapes and clones are free. Dense linear
//! algebra goes to faer; batches of small matrices (the per-class and
//! per-frequency operators of ReduNet) are factored by a plain Cholesky
//! loop, one matrix per rayon task, where faer's per-call set-up would
//! dominate. Elementwise work runs in parallel above a size threshold.

mod fft;
mod linalg;

use rate_core::{AxisView, Backend, BinaryOp, Element, FftNorm, MatmulSpec, ReduceOp, Result, UnaryOp};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// Element types the CPU backend computes in (f32 and f64).
pub trait CpuElem: Element + faer::traits::RealField + rustfft::FftNum {}
impl CpuElem for f32 {}
impl CpuElem for f64 {}

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

    /// Parallelism handed to faer for one dense kernel of `flops` work.
    fn par_for(&self, flops: usize) -> faer::Par {
        if flops < 1 << 18 {
            faer::Par::Seq
        } else {
            self.par
        }
    }
}

/// Elementwise work above this many elements is split across rayon threads.
const PAR_THRESHOLD: usize = 1 << 15;

fn map_vec<T: Send + Sync + Copy, U: Send>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

#[inline]
fn unary_fn<T: CpuElem>(op: UnaryOp) -> impl Fn(T) -> T + Sync + Send {
    let zero = T::zero();
    let one = T::one();
    move |x: T| match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Square => x * x,
        UnaryOp::Recip => one / x,
        UnaryOp::Relu => {
            if x > zero {
                x
            } else {
                zero
            }
        }
        UnaryOp::Step => {
            if x > zero {
                one
            } else {
                zero
            }
        }
        UnaryOp::SoftThreshold(l) => {
            let l = T::of(l);
            if x > l {
                x - l
            } else if x < -l {
                x + l
            } else {
                zero
            }
        }
        UnaryOp::AddScalar(c) => x + T::of(c),
        UnaryOp::MulScalar(c) => x * T::of(c),
        UnaryOp::ClampMin(c) => {
            let c = T::of(c);
            if x < c {
                c
            } else {
                x
            }
        }
        UnaryOp::ClampMax(c) => {
            let c = T::of(c);
            if x > c {
                c
            } else {
                x
            }
        }
    }
}

#[inline]
fn binary_fn<T: CpuElem>(op: BinaryOp) -> impl Fn(T, T) -> T + Sync + Send + Copy {
    move |a: T, b: T| match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => {
            if a >= b || b.is_nan() {
                a
            } else {
                b
            }
        }
        BinaryOp::Min => {
            if a <= b || b.is_nan() {
                a
            } else {
                b
            }
        }
    }
}

/// Offsets of every output row (all axes but the last) in `a` and `b`.
fn row_offsets(shape: &[usize], sa: &[usize], sb: &[usize]) -> Vec<(usize, usize)> {
    let r = shape.len();
    let rows: usize = shape[..r - 1].iter().product();
    let mut out = Vec::with_capacity(rows);
    let mut idx = vec![0usize; r - 1];
    let (mut oa, mut ob) = (0usize, 0usize);
    for _ in 0..rows {
        out.push((oa, ob));
        // increment the multi-index
        let mut ax = r - 1;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            oa += sa[ax];
            ob += sb[ax];
            if idx[ax] < shape[ax] {
                break;
            }
            oa -= sa[ax] * shape[ax];
            ob -= sb[ax] * shape[ax];
            idx[ax] = 0;
        }
    }
    out
}

impl<T: CpuElem> Backend for CpuBackend<T> {
    type Elem = T;
    type Buffer = Arc<Vec<T>>;

    fn name(&self) -> String {
        format!("cpu-{}", T::NAME)
    }

    fn upload(&self, data: &[T]) -> Self::Buffer {
        Arc::new(data.to_vec())
    }

    fn download(&self, buf: &Self::Buffer) -> Vec<T> {
        buf.as_ref().clone()
    }

    fn full(&self, len: usize, value: T) -> Self::Buffer {
        Arc::new(vec![value; len])
    }

    fn len(&self, buf: &Self::Buffer) -> usize {
        buf.len()
    }

    fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Self::Buffer {
        Arc::new(map_vec(x, unary_fn::<T>(op)))
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &Self::Buffer,
        a_strides: &[usize],
        b: &Self::Buffer,
        b_strides: &[usize],
        out_shape: &[usize],
    ) -> Self::Buffer {
        let f = binary_fn::<T>(op);
        let n: usize = out_shape.iter().product();
        if n == 0 {
            return Arc::new(Vec::new());
        }
        let r = out_shape.len();
        let contiguous = |s: &[usize]| {
            let mut acc = 1;
            (0..r).rev().all(|i| {
                let ok = s[i] == acc || out_shape[i] == 1;
                acc *= out_shape[i];
                ok
            })
        };
        if r == 0 {
            return Arc::new(vec![f(a[0], b[0])]);
        }
        if contiguous(a_strides) && contiguous(b_strides) {
            let out: Vec<T> = if n >= PAR_THRESHOLD {
                a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
            } else {
                a.iter().zip(b.iter()).map(|(&x, &y)| f(x, y)).collect()
            };
            return Arc::new(out);
        }
        let inner = out_shape[r - 1];
        let (ia, ib) = (a_strides[r - 1], b_strides[r - 1]);
        let rows = row_offsets(out_shape, a_strides, b_strides);
        let mut out = vec![T::zero(); n];
        let body = |(row, chunk): (usize, &mut [T])| {
            let (oa, ob) = rows[row];
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = f(a[oa + j * ia], b[ob + j * ib]);
            }
        };
        if n >= PAR_THRESHOLD {
            out.par_chunks_mut(inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(inner).enumerate().for_each(body);
        }
        Arc::new(out)
    }

    fn permute(&self, x: &Self::Buffer, shape: &[usize], perm: &[usize]) -> Self::Buffer {
        let r = shape.len();
        let n: usize = shape.iter().product();
        if n == 0 {
            return Arc::new(Vec::new());
        }
        let mut in_strides = vec![1usize; r];
        for i in (0..r.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * shape[i + 1];
        }
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        // Gather with the output's last axis innermost; rows in parallel.
        let zeros = vec![0usize; r];
        let rows = row_offsets(&out_shape, &src_strides, &zeros);
        let inner = out_shape[r - 1];
        let is = src_strides[r - 1];
        let mut out = vec![T::zero(); n];
        let body = |(row, chunk): (usize, &mut [T])| {
            let base = rows[row].0;
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = x[base + j * is];
            }
        };
        if n >= PAR_THRESHOLD {
            out.par_chunks_mut(inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(inner).enumerate().for_each(body);
        }
        Arc::new(out)
    }

    fn narrow(&self, x: &Self::Buffer, v: AxisView, start: usize, count: usize) -> Self::Buffer {
        let mut out = Vec::with_capacity(v.outer * count * v.inner);
        for o in 0..v.outer {
            let base = (o * v.len + start) * v.inner;
            out.extend_from_slice(&x[base..base + count * v.inner]);
        }
        Arc::new(out)
    }

    fn concat(&self, parts: &[&Self::Buffer], outer: usize, lens: &[usize], inner: usize) -> Self::Buffer {
        let total: usize = lens.iter().sum();
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for (p, &l) in parts.iter().zip(lens) {
                out.extend_from_slice(&p[o * l * inner..(o + 1) * l * inner]);
            }
        }
        Arc::new(out)
    }

    fn index_select(&self, x: &Self::Buffer, v: AxisView, index: &[usize]) -> Self::Buffer {
        let mut out = Vec::with_capacity(v.outer * index.len() * v.inner);
        if v.inner == 1 {
            // plain gather: one element per index
            for o in 0..v.outer {
                let row = &x[o * v.len..(o + 1) * v.len];
                out.extend(index.iter().map(|&i| row[i]));
            }
            return Arc::new(out);
        }
        for o in 0..v.outer {
            for &i in index {
                let base = (o * v.len + i) * v.inner;
                out.extend_from_slice(&x[base..base + v.inner]);
            }
        }
        Arc::new(out)
    }

    fn index_add(&self, x: &Self::Buffer, v: AxisView, index: &[usize], len: usize) -> Self::Buffer {
        let mut out = vec![T::zero(); v.outer * len * v.inner];
        for o in 0..v.outer {
            for (k, &i) in index.iter().enumerate() {
                let src = (o * v.len + k) * v.inner;
                let dst = (o * len + i) * v.inner;
                for j in 0..v.inner {
                    out[dst + j] = out[dst + j] + x[src + j];
                }
            }
        }
        Arc::new(out)
    }

    fn reduce(&self, op: ReduceOp, x: &Self::Buffer, v: AxisView) -> Self::Buffer {
        let AxisView { outer, len, inner } = v;
        let mut out = vec![T::zero(); outer * inner];
        let body = |(o, dst): (usize, &mut [T])| {
            let block = &x[o * len * inner..(o + 1) * len * inner];
            match op {
                ReduceOp::Sum => {
                    for l in 0..len {
                        let row = &block[l * inner..(l + 1) * inner];
                        for (d, &s) in dst.iter_mut().zip(row) {
                            *d = *d + s;
                        }
                    }
                }
                ReduceOp::Max | ReduceOp::Min | ReduceOp::ArgMax => {
                    for j in 0..inner {
                        let mut best = block[j];
                        let mut arg = 0usize;
                        for l in 1..len {
                            let val = block[l * inner + j];
                            let better = match op {
                                ReduceOp::Min => val < best,
                                _ => val > best,
                            };
                            if better || (val.is_nan() && !best.is_nan()) {
                                best = val;
                                arg = l;
                            }
                        }
                        dst[j] = if op == ReduceOp::ArgMax { T::of(arg as f64) } else { best };
                    }
                }
            }
        };
        if inner == 0 {
            return Arc::new(out);
        }
        if outer * len * inner >= PAR_THRESHOLD && outer > 1 {
            out.par_chunks_mut(inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(inner).enumerate().for_each(body);
        }
        Arc::new(out)
    }

    fn softmax(&self, x: &Self::Buffer, v: AxisView) -> Self::Buffer {
        let AxisView { outer, len, inner } = v;
        let mut out = vec![T::zero(); x.len()];
        if out.is_empty() {
            return Arc::new(out);
        }
        let body = |(o, dst): (usize, &mut [T])| {
            let src = &x[o * len * inner..(o + 1) * len * inner];
            for j in 0..inner {
                let mut mx = T::neg_infinity();
                for l in 0..len {
                    mx = mx.max(src[l * inner + j]);
                }
                let mut s = T::zero();
                for l in 0..len {
                    let e = (src[l * inner + j] - mx).exp();
                    dst[l * inner + j] = e;
                    s = s + e;
                }
                let r = T::one() / s;
                for l in 0..len {
                    dst[l * inner + j] = dst[l * inner + j] * r;
                }
            }
        };
        if x.len() >= PAR_THRESHOLD && outer > 1 {
            out.par_chunks_mut(len * inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(len * inner).enumerate().for_each(body);
        }
        Arc::new(out)
    }

    fn matmul(&self, a: &Self::Buffer, b: &Self::Buffer, s: MatmulSpec) -> Self::Buffer {
        Arc::new(linalg::matmul(self, a, b, s))
    }

    fn cholesky(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer> {
        linalg::cholesky_batch(a, batch, n, "cholesky").map(Arc::new)
    }

    fn spd_solve(
        &self,
        a: &Self::Buffer,
        b: &Self::Buffer,
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<Self::Buffer> {
        linalg::spd_solve(self, a, b, batch, n, nrhs).map(Arc::new)
    }

    fn spd_inverse(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer> {
        linalg::spd_inverse(self, a, batch, n).map(Arc::new)
    }

    fn spd_logdet(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer> {
        linalg::spd_logdet(a, batch, n).map(Arc::new)
    }

    fn sym_eigen(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<(Self::Buffer, Self::Buffer)> {
        linalg::sym_eigen(a, batch, n).map(|(v, u)| (Arc::new(v), Arc::new(u)))
    }

    fn herm_inverse(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)> {
        linalg::herm_inverse(re, im, batch, n).map(|(r, i)| (Arc::new(r), Arc::new(i)))
    }

    fn herm_logdet(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<Self::Buffer> {
        linalg::herm_logdet(re, im, batch, n).map(Arc::new)
    }

    fn herm_solve(
        &self,
        a: (&Self::Buffer, &Self::Buffer),
        b: (&Self::Buffer, &Self::Buffer),
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)> {
        linalg::herm_solve((a.0, a.1), (b.0, b.1), batch, n, nrhs).map(|(r, i)| (Arc::new(r), Arc::new(i)))
    }

    fn fft(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        v: AxisView,
        inverse: bool,
        norm: FftNorm,
    ) -> (Self::Buffer, Self::Buffer) {
        let (r, i) = self.fft.c2c(re, im, v, inverse, norm);
        (Arc::new(r), Arc::new(i))
    }

    fn rfft(&self, x: &Self::Buffer, v: AxisView, norm: FftNorm) -> (Self::Buffer, Self::Buffer) {
        let (r, i) = self.fft.r2c(x, v, norm);
        (Arc::new(r), Arc::new(i))
    }

    fn irfft(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        v: AxisView,
        n: usize,
        norm: FftNorm,
    ) -> Self::Buffer {
        Arc::new(self.fft.c2r(re, im, v, n, norm))
    }
}
