//! `CpuBackend`: the rate-core `Backend` on the CPU in f32 and f64 (faer for matmul, Cholesky and eigen; rustfft; rayon).
//!
//! Buffers are `Arc<HostVec<T>>` (a `Vec` that can be recycled, see [`pool`]), so reshapes and clones are free. Dense linear
//! algebra goes to faer; batches of small matrices (the per-class and
//! per-frequency operators of ReduNet) are factored by a plain Cholesky
//! loop, one matrix per rayon task, where faer's per-call set-up would
//! dominate. Elementwise work runs in parallel above a size threshold.

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod attention;
mod blocked;
mod dense_attention;
mod fft;
mod invariant_step;
mod lanes;
mod linalg;
mod nn;
pub mod pool;
mod token_stats;

use rate_core::{
    AttentionSpec, AxisView, Backend, BinaryOp, DenseAttentionSpec, Element, FftNorm, MatmulSpec, ReduceOp,
    Result, UnaryOp,
};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

pub use pool::{recycle_buffers, HostVec};

/// A CPU buffer: shared, so reshapes and clones are free.
pub type Buf<T> = Arc<HostVec<T>>;

fn buf<T: CpuElem>(v: Vec<T>) -> Buf<T> {
    Arc::new(HostVec(v))
}

/// Element types the CPU backend computes in (f32 and f64).
pub trait CpuElem: Element + faer::traits::RealField + rustfft::FftNum {
    /// Runs `f` on the calling thread's pool of recycled buffers of this
    /// type ([`pool`]); `None` where there is none (the default, or while
    /// the thread shuts down).
    fn with_pool<R>(f: impl FnOnce(&mut pool::Pool<Self>) -> R) -> Option<R> {
        drop(f);
        None
    }

    /// `e^x` of the row kernels: the correctly rounded `exp`, and in f32 the
    /// branch-free [`exp_f32`] so that row loops over it vectorise.
    #[inline(always)]
    fn row_exp(x: Self) -> Self {
        x.exp()
    }

    /// Replaces each `x` of `row` by `exp(x - shift)` and returns their sum
    /// (the inner loop of the attention softmax).
    fn exp_shift_sum(row: &mut [Self], shift: Self) -> Self {
        let mut sum = Self::zero();
        for x in row.iter_mut() {
            *x = (*x - shift).exp();
            sum += *x;
        }
        sum
    }
}

thread_local! {
    static POOL_F32: std::cell::RefCell<pool::Pool<f32>> = std::cell::RefCell::default();
    static POOL_F64: std::cell::RefCell<pool::Pool<f64>> = std::cell::RefCell::default();
}

impl CpuElem for f32 {
    fn with_pool<R>(f: impl FnOnce(&mut pool::Pool<f32>) -> R) -> Option<R> {
        POOL_F32.try_with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p))).ok().flatten()
    }

    #[inline(always)]
    fn row_exp(x: f32) -> f32 {
        exp_f32(x)
    }

    fn exp_shift_sum(row: &mut [f32], shift: f32) -> f32 {
        // eight independent lanes so that the loop and its sum vectorise
        let mut lanes = [0.0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for (x, s) in c.iter_mut().zip(lanes.iter_mut()) {
                *x = exp_f32(*x - shift);
                *s += *x;
            }
        }
        let mut sum = 0.0f32;
        for x in chunks.into_remainder() {
            *x = exp_f32(*x - shift);
            sum += *x;
        }
        sum + lanes.iter().sum::<f32>()
    }
}
impl CpuElem for f64 {
    fn with_pool<R>(f: impl FnOnce(&mut pool::Pool<f64>) -> R) -> Option<R> {
        POOL_F64.try_with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p))).ok().flatten()
    }
}

/// `e^x` in f32 by range reduction `x = k ln 2 + r`, `|r| <= ln 2 / 2`, and a
/// degree-6 Taylor polynomial for `e^r` (relative error below 5e-7 on the
/// whole range); arguments below -87.3 give about the smallest normal number
/// instead of 0, above 88 the value at 88. Branch-free and integer-cast-free,
/// so that loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer k held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from the bits: (k + 127) << 23, k = bits(shifted) - bits(ROUND)
    let two_k = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    p * two_k
}

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
    fn on_calling_thread(&self) -> Self {
        CpuBackend { par: faer::Par::Seq, fft: self.fft.clone(), _t: PhantomData }
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

/// Clears the upper halves of the AVX registers of the calling thread (`vzeroupper`).
///
/// faer's AVX kernels can return with those halves dirty. Until they are
/// cleared, every call from this (SSE-compiled) crate into the system libm
/// (`expf`, `exp`, `log`, ...) on that thread pays an SSE/AVX state-transition
/// penalty: on the project's AMD EPYC machines `exp` over a buffer ran about
/// 100x slower after a matmul than before it.
#[allow(unsafe_code)]
pub(crate) fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is available (checked above), and vzeroupper only zeroes bits
            // 128..255 of the vector registers, which SSE-compiled code never holds values in.
            unsafe { std::arch::x86_64::_mm256_zeroupper() }
        }
    }
}

/// Makes the process allocator keep freed memory for reuse (glibc on Linux;
/// elsewhere it does nothing and returns `false`): blocks up to 32 MiB come
/// from the heap instead of fresh `mmap`s, and the heap top is never returned
/// to the system.
///
/// The layers allocate their `tokens x dim` temporaries anew on every call.
/// By default glibc maps such blocks fresh (or trims them off the heap top)
/// and the kernel faults in and zeroes every page again: a fifth of the time
/// of a TSSA layer at 16,384 tokens under perf. The `rate` binary and the
/// benches call this once at start-up; a library never changes it by itself.
/// Peak usage is unchanged (freed blocks are reused, not added to).
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets two integer tuning parameters of glibc's
        // allocator; it takes the allocator's lock and is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// [`clear_upper_simd_state`] on the calling thread and on every rayon worker
/// (after faer ran in parallel).
pub(crate) fn clear_upper_simd_state_everywhere() {
    clear_upper_simd_state();
    rayon::broadcast(|_| clear_upper_simd_state());
}

/// After a Cholesky-based routine: faer ran (on any thread) only above the plain-loop size.
fn clear_after_factorisation(n: usize) {
    if n > linalg::SMALL {
        clear_upper_simd_state_everywhere();
    }
}

/// Elementwise work above this many elements is split across rayon threads.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;

fn map_vec<T: Send + Sync + Copy, U: Send>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

/// Block of elements per rayon task in the elementwise loops below.
const BLOCK: usize = 1 << 14;

/// Memory-bound elementwise work (one load or two and a store per element)
/// stays on the calling thread below this many elements: waking the pool
/// costs more than it saves until the operands are far larger than the
/// caches (relu of 409,600 f32: 80 us on one thread, 150-230 us split in two,
/// on the 2-core machine of `docs/performance.md`).
const STREAM_PAR_THRESHOLD: usize = 1 << 20;

/// `f` over `x` for the cheap, memory-bound ops: one monomorphised loop per
/// op writing the output once (collecting a slice iterator vectorises; a copy
/// updated in place would write every element twice).
fn map_unary<T: Copy + Send + Sync>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    if x.len() >= STREAM_PAR_THRESHOLD {
        x.par_iter().with_min_len(BLOCK).map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

/// `f(a, b)` elementwise over equal-length slices, like [`map_unary`].
fn zip_map<T: Copy + Send + Sync>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    if a.len() >= STREAM_PAR_THRESHOLD {
        a.par_iter().zip(b.par_iter()).with_min_len(BLOCK).map(|(&x, &y)| f(x, y)).collect()
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
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
        UnaryOp::ReluShift(c) => (x + T::of(c)).max(zero),
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
        BinaryOp::WherePositive => {
            if b > T::zero() {
                a
            } else {
                T::zero()
            }
        }
    }
}

/// The length of the trailing block when `strides` read one contiguous block
/// repeated along the leading axes (zero strides there), e.g. a bias row.
fn repeated_block(strides: &[usize], shape: &[usize]) -> Option<usize> {
    let r = shape.len();
    let mut k = r;
    let mut acc = 1;
    while k > 0 && (strides[k - 1] == acc || shape[k - 1] == 1) {
        acc *= shape[k - 1];
        k -= 1;
    }
    let leading_broadcast = (0..k).all(|i| strides[i] == 0 || shape[i] == 1);
    (k > 0 && k < r && acc > 0 && leading_broadcast).then_some(acc)
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

/// Elementwise `f(a, b)` over `out_shape` with broadcasting strides (the body
/// of `Backend::binary`); rows whose inner stride is 1 or 0 run as slice loops.
fn binary_with<T: CpuElem>(
    f: impl Fn(T, T) -> T + Sync + Send + Copy,
    a: &Buf<T>,
    a_strides: &[usize],
    b: &Buf<T>,
    b_strides: &[usize],
    out_shape: &[usize],
) -> Buf<T> {
    let n: usize = out_shape.iter().product();
    if n == 0 {
        return buf(Vec::new());
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
        return buf(vec![f(a[0], b[0])]);
    }
    if let Some(period) = repeated_block(b_strides, out_shape).filter(|_| contiguous(a_strides)) {
        // b is one contiguous block repeated along the leading axes (a bias row)
        let b = &b[..period];
        if n < STREAM_PAR_THRESHOLD {
            let mut out = Vec::with_capacity(n);
            for row in a[..n].chunks(period) {
                out.extend(row.iter().zip(b).map(|(&x, &y)| f(x, y)));
            }
            return buf(out);
        }
        let mut out = a[..n].to_vec();
        out.par_chunks_mut(period).for_each(|o| o.iter_mut().zip(b).for_each(|(x, &y)| *x = f(*x, y)));
        return buf(out);
    }
    if contiguous(a_strides) && contiguous(b_strides) {
        return buf(zip_map(&a[..n], &b[..n], f));
    }
    let inner = out_shape[r - 1];
    let (ia, ib) = (a_strides[r - 1], b_strides[r - 1]);
    let rows = row_offsets(out_shape, a_strides, b_strides);
    let mut out = vec![T::zero(); n];
    let body = |(row, chunk): (usize, &mut [T])| {
        let (oa, ob) = rows[row];
        match (ia, ib) {
            (1, 1) => {
                let (ra, rb) = (&a[oa..oa + inner], &b[ob..ob + inner]);
                chunk.iter_mut().zip(ra.iter().zip(rb)).for_each(|(o, (&x, &y))| *o = f(x, y));
            }
            (1, 0) => {
                let y = b[ob];
                chunk.iter_mut().zip(&a[oa..oa + inner]).for_each(|(o, &x)| *o = f(x, y));
            }
            (0, 1) => {
                let x = a[oa];
                chunk.iter_mut().zip(&b[ob..ob + inner]).for_each(|(o, &y)| *o = f(x, y));
            }
            _ => {
                for (j, o) in chunk.iter_mut().enumerate() {
                    *o = f(a[oa + j * ia], b[ob + j * ib]);
                }
            }
        }
    };
    if n >= STREAM_PAR_THRESHOLD {
        out.par_chunks_mut(inner).enumerate().for_each(body);
    } else {
        out.chunks_mut(inner).enumerate().for_each(body);
    }
    buf(out)
}

impl<T: CpuElem> Backend for CpuBackend<T> {
    type Elem = T;
    type Buffer = Buf<T>;

    fn name(&self) -> String {
        format!("cpu-{}", T::NAME)
    }

    fn upload(&self, data: &[T]) -> Self::Buffer {
        buf(data.to_vec())
    }

    fn download(&self, buf: &Self::Buffer) -> Vec<T> {
        buf.to_vec()
    }

    fn full(&self, len: usize, value: T) -> Self::Buffer {
        buf(vec![value; len])
    }

    fn len(&self, buf: &Self::Buffer) -> usize {
        buf.len()
    }

    fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Self::Buffer {
        let (zero, one) = (T::zero(), T::one());
        buf(match op {
            UnaryOp::Relu => map_unary(x, |v| v.max(zero)),
            UnaryOp::Step => map_unary(x, |v| if v > zero { one } else { zero }),
            UnaryOp::Neg => map_unary(x, |v| -v),
            UnaryOp::Square => map_unary(x, |v| v * v),
            UnaryOp::Sqrt => map_unary(x, |v| v.sqrt()),
            UnaryOp::Recip => map_unary(x, |v| one / v),
            UnaryOp::AddScalar(c) => {
                let c = T::of(c);
                map_unary(x, move |v| v + c)
            }
            UnaryOp::MulScalar(c) => {
                let c = T::of(c);
                map_unary(x, move |v| v * c)
            }
            UnaryOp::ReluShift(c) => {
                let c = T::of(c);
                map_unary(x, move |v| (v + c).max(zero))
            }
            _ => map_vec(x, unary_fn::<T>(op)),
        })
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
        // one monomorphised body per op, so the inner loops carry no match and vectorise
        match op {
            BinaryOp::Add => binary_with(|x: T, y: T| x + y, a, a_strides, b, b_strides, out_shape),
            BinaryOp::Sub => binary_with(|x: T, y: T| x - y, a, a_strides, b, b_strides, out_shape),
            BinaryOp::Mul => binary_with(|x: T, y: T| x * y, a, a_strides, b, b_strides, out_shape),
            BinaryOp::Div => binary_with(|x: T, y: T| x / y, a, a_strides, b, b_strides, out_shape),
            BinaryOp::WherePositive => binary_with(
                |x: T, y: T| if y > T::zero() { x } else { T::zero() },
                a,
                a_strides,
                b,
                b_strides,
                out_shape,
            ),
            BinaryOp::Max | BinaryOp::Min => {
                binary_with(binary_fn::<T>(op), a, a_strides, b, b_strides, out_shape)
            }
        }
    }

    fn permute(&self, x: &Self::Buffer, shape: &[usize], perm: &[usize]) -> Self::Buffer {
        let r = shape.len();
        let n: usize = shape.iter().product();
        if n == 0 {
            return buf(Vec::new());
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
        // every element is written (a gather)
        let mut out = pool::take_for_overwrite(n);
        let body = |(row, chunk): (usize, &mut [T])| {
            let base = rows[row].0;
            if is == 1 {
                chunk.copy_from_slice(&x[base..base + inner]);
                return;
            }
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = x[base + j * is];
            }
        };
        if n >= STREAM_PAR_THRESHOLD {
            out.par_chunks_mut(inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(inner).enumerate().for_each(body);
        }
        buf(out)
    }

    fn narrow(&self, x: &Self::Buffer, v: AxisView, start: usize, count: usize) -> Self::Buffer {
        let mut out = Vec::with_capacity(v.outer * count * v.inner);
        for o in 0..v.outer {
            let base = (o * v.len + start) * v.inner;
            out.extend_from_slice(&x[base..base + count * v.inner]);
        }
        buf(out)
    }

    fn concat(&self, parts: &[&Self::Buffer], outer: usize, lens: &[usize], inner: usize) -> Self::Buffer {
        let total: usize = lens.iter().sum();
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for (p, &l) in parts.iter().zip(lens) {
                out.extend_from_slice(&p[o * l * inner..(o + 1) * l * inner]);
            }
        }
        buf(out)
    }

    fn index_select(&self, x: &Self::Buffer, v: AxisView, index: &[usize]) -> Self::Buffer {
        let mut out = Vec::with_capacity(v.outer * index.len() * v.inner);
        if v.inner == 1 {
            // plain gather: one element per index
            for o in 0..v.outer {
                let row = &x[o * v.len..(o + 1) * v.len];
                out.extend(index.iter().map(|&i| row[i]));
            }
            return buf(out);
        }
        for o in 0..v.outer {
            for &i in index {
                let base = (o * v.len + i) * v.inner;
                out.extend_from_slice(&x[base..base + v.inner]);
            }
        }
        buf(out)
    }

    fn index_add(&self, x: &Self::Buffer, v: AxisView, index: &[usize], len: usize) -> Self::Buffer {
        let mut out = vec![T::zero(); v.outer * len * v.inner];
        for o in 0..v.outer {
            for (k, &i) in index.iter().enumerate() {
                let src = (o * v.len + k) * v.inner;
                let dst = (o * len + i) * v.inner;
                for j in 0..v.inner {
                    out[dst + j] += x[src + j];
                }
            }
        }
        buf(out)
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
                            *d += s;
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
            return buf(out);
        }
        if outer * len * inner >= PAR_THRESHOLD && outer > 1 {
            out.par_chunks_mut(inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(inner).enumerate().for_each(body);
        }
        buf(out)
    }

    fn softmax(&self, x: &Self::Buffer, v: AxisView) -> Self::Buffer {
        if v.inner == 1 {
            return buf(nn::softmax_rows(x, v.len));
        }
        let AxisView { outer, len, inner } = v;
        let mut out = vec![T::zero(); x.len()];
        if out.is_empty() {
            return buf(out);
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
                    s += e;
                }
                let r = T::one() / s;
                for l in 0..len {
                    dst[l * inner + j] *= r;
                }
            }
        };
        if x.len() >= PAR_THRESHOLD && outer > 1 {
            out.par_chunks_mut(len * inner).enumerate().for_each(body);
        } else {
            out.chunks_mut(len * inner).enumerate().for_each(body);
        }
        buf(out)
    }

    fn matmul(&self, a: &Self::Buffer, b: &Self::Buffer, s: MatmulSpec) -> Self::Buffer {
        // Inside a rayon task (callers running their own parallel work) every
        // product stays on the calling thread; faer's own parallel product is
        // used only from outside the pool, for large products that cannot be split.
        let may_spread = rayon::current_thread_index().is_none() && !matches!(self.par, faer::Par::Seq);
        let flops = s.m * s.n * s.k;
        let out = if s.batch > 1 {
            blocked::batched(a, b, s)
        } else if let Some(out) = may_spread.then(|| blocked::matmul(a, b, s)).flatten() {
            out
        } else if may_spread && flops >= 1 << 18 {
            let out = linalg::matmul(self, a, b, s);
            clear_upper_simd_state_everywhere();
            out
        } else {
            let out = linalg::matmul(&self.on_calling_thread(), a, b, s);
            clear_upper_simd_state();
            out
        };
        buf(out)
    }

    fn cholesky(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer> {
        let out = linalg::cholesky_batch(self, a, batch, n, "cholesky");
        clear_after_factorisation(n);
        out.map(buf)
    }

    fn spd_solve(
        &self,
        a: &Self::Buffer,
        b: &Self::Buffer,
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<Self::Buffer> {
        let out = linalg::spd_solve(self, a, b, batch, n, nrhs).map(buf);
        clear_after_factorisation(n);
        out
    }

    fn spd_inverse(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer> {
        let out = linalg::spd_inverse(self, a, batch, n).map(buf);
        clear_after_factorisation(n);
        out
    }

    fn spd_logdet(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<Self::Buffer> {
        let out = linalg::spd_logdet(self, a, batch, n).map(buf);
        clear_after_factorisation(n);
        out
    }

    fn sym_eigen(&self, a: &Self::Buffer, batch: usize, n: usize) -> Result<(Self::Buffer, Self::Buffer)> {
        let out = linalg::sym_eigen(a, batch, n).map(|(v, u)| (buf(v), buf(u)));
        clear_upper_simd_state_everywhere();
        out
    }

    fn herm_inverse(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)> {
        linalg::herm_inverse(re, im, batch, n).map(|(r, i)| (buf(r), buf(i)))
    }

    fn herm_inverse_logdet(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<(Self::Buffer, Self::Buffer, Self::Buffer)> {
        linalg::herm_inverse_logdet(re, im, batch, n, "herm_inverse_logdet")
            .map(|(r, i, l)| (buf(r), buf(i), buf(l)))
    }

    fn herm_logdet(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        batch: usize,
        n: usize,
    ) -> Result<Self::Buffer> {
        linalg::herm_logdet(re, im, batch, n).map(buf)
    }

    fn herm_solve(
        &self,
        a: (&Self::Buffer, &Self::Buffer),
        b: (&Self::Buffer, &Self::Buffer),
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<(Self::Buffer, Self::Buffer)> {
        linalg::herm_solve((a.0, a.1), (b.0, b.1), batch, n, nrhs).map(|(r, i)| (buf(r), buf(i)))
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
        (buf(r), buf(i))
    }

    fn rfft(&self, x: &Self::Buffer, v: AxisView, norm: FftNorm) -> (Self::Buffer, Self::Buffer) {
        let (r, i) = self.fft.r2c(x, v, norm);
        (buf(r), buf(i))
    }

    fn irfft(
        &self,
        re: &Self::Buffer,
        im: &Self::Buffer,
        v: AxisView,
        n: usize,
        norm: FftNorm,
    ) -> Self::Buffer {
        buf(self.fft.c2r(re, im, v, n, norm))
    }

    fn layer_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: &Self::Buffer,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> (Self::Buffer, Self::Buffer, Self::Buffer) {
        let (y, m, r) = nn::layer_norm(x, weight, bias, rows, dim, eps);
        (buf(y), buf(m), buf(r))
    }

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
        let (dx, dw, db) = nn::layer_norm_backward(x, mean, rstd, weight, grad, rows, dim);
        (buf(dx), buf(dw), buf(db))
    }

    fn softmax_backward(
        &self,
        y: &Self::Buffer,
        grad: &Self::Buffer,
        _rows: usize,
        len: usize,
    ) -> Self::Buffer {
        buf(nn::softmax_backward(y, grad, len))
    }

    fn cumsum(&self, x: &Self::Buffer, v: AxisView, reverse: bool) -> Self::Buffer {
        buf(attention::cumsum(x, v, reverse))
    }

    fn attention_tiled(&self, w: &Self::Buffer, spec: AttentionSpec) -> (Self::Buffer, Self::Buffer) {
        let (o, l) = attention::forward(w, spec);
        (buf(o), buf(l))
    }

    fn attention_tiled_backward(
        &self,
        w: &Self::Buffer,
        out: &Self::Buffer,
        lse: &Self::Buffer,
        grad_out: &Self::Buffer,
        spec: AttentionSpec,
    ) -> Self::Buffer {
        buf(attention::backward(w, out, lse, grad_out, spec))
    }

    fn attention_dense(&self, w: &Self::Buffer, spec: DenseAttentionSpec) -> (Self::Buffer, Self::Buffer) {
        let (a, o) = dense_attention::forward(w, spec);
        (buf(a), buf(o))
    }

    fn attention_dense_backward(
        &self,
        w: &Self::Buffer,
        attn: &Self::Buffer,
        grad_out: &Self::Buffer,
        spec: DenseAttentionSpec,
    ) -> Self::Buffer {
        buf(dense_attention::backward(w, attn, grad_out, spec))
    }

    fn token_stats(
        &self,
        w: &Self::Buffer,
        temp: &Self::Buffer,
        spec: rate_core::TokenStatsSpec,
    ) -> rate_core::TokenStats<Self::Buffer> {
        token_stats::token_stats(w, temp, spec).map(buf)
    }

    fn invariant_step(
        &self,
        v: &Self::Buffer,
        y: &Self::Buffer,
        weights: &Self::Buffer,
        gamma: &Self::Buffer,
        spec: rate_core::invariant_step::InvariantStepSpec,
    ) -> (Self::Buffer, Self::Buffer) {
        let (out, pi) = invariant_step::invariant_step(v, y, weights, gamma, spec);
        (buf(out), buf(pi))
    }

    fn real_operand(&self, packed: &Self::Buffer, f: usize, g: usize, c: usize) -> Self::Buffer {
        buf(invariant_step::real_operand(packed, f, g, c))
    }

    fn invariant_products(
        &self,
        v: &Self::Buffer,
        packed: &Self::Buffer,
        spec: rate_core::invariant_step::InvariantProductsSpec,
    ) -> Self::Buffer {
        buf(invariant_step::invariant_products(v, packed, spec))
    }
}
