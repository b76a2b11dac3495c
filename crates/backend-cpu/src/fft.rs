//! Batched FFT along any axis and any length on rustfft, with plans cached per length and direction.
//!
//! `X_k = sum_t x_t e^{-2 pi i k t / n}`; rustfft handles every length
//! (mixed radix, Rader, Bluestein). Signals are gathered contiguous, transformed
//! in parallel chunks, and scattered back.

use crate::CpuElem;
use num_complex::Complex;
use rate_core::{AxisView, FftNorm};
use rayon::prelude::*;
use rustfft::{Fft, FftPlanner};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Plan<T> = Arc<dyn Fft<T>>;
/// The planner and the plans it made, by (length, inverse).
type PlanCache<T> = (FftPlanner<T>, HashMap<(usize, bool), Plan<T>>);

/// Cached FFT plans.
pub struct Plans<T: CpuElem> {
    planner: Mutex<PlanCache<T>>,
}

impl<T: CpuElem> Default for Plans<T> {
    fn default() -> Self {
        Plans { planner: Mutex::new((FftPlanner::new(), HashMap::new())) }
    }
}

impl<T: CpuElem> std::fmt::Debug for Plans<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plans")
    }
}

fn scale<T: CpuElem>(n: usize, inverse: bool, norm: FftNorm) -> Option<T> {
    match (norm, inverse) {
        (FftNorm::Ortho, _) => Some(T::of(1.0 / (n as f64).sqrt())),
        (FftNorm::Backward, true) => Some(T::of(1.0 / n as f64)),
        (FftNorm::Backward, false) => None,
    }
}

impl<T: CpuElem> Plans<T> {
    fn plan(&self, n: usize, inverse: bool) -> Plan<T> {
        // A poisoned lock only means another thread panicked mid-planning; the cache is still valid.
        let mut guard = self.planner.lock().unwrap_or_else(|e| e.into_inner());
        let (planner, cache) = &mut *guard;
        cache
            .entry((n, inverse))
            .or_insert_with(
                || {
                    if inverse {
                        planner.plan_fft_inverse(n)
                    } else {
                        planner.plan_fft_forward(n)
                    }
                },
            )
            .clone()
    }

    /// Runs the transform over `count` contiguous signals of length `n`.
    fn run(&self, data: &mut [Complex<T>], n: usize, inverse: bool, norm: FftNorm) {
        if n == 0 || data.is_empty() {
            return;
        }
        let plan = self.plan(n, inverse);
        let s = scale::<T>(n, inverse, norm);
        let signals = data.len() / n;
        let per_chunk = ((1 << 14) / n).max(1);
        let work = |chunk: &mut [Complex<T>]| {
            let mut scratch = vec![Complex::new(T::zero(), T::zero()); plan.get_inplace_scratch_len()];
            plan.process_with_scratch(chunk, &mut scratch);
            if let Some(s) = s {
                for c in chunk.iter_mut() {
                    *c *= s;
                }
            }
        };
        if signals > per_chunk {
            data.par_chunks_mut(per_chunk * n).for_each(work);
        } else {
            work(data);
        }
    }

    /// Gathers the signals of `v` (read through `get`) contiguous: signal `o * inner + j`.
    fn gather(v: AxisView, n_out: usize, get: impl Fn(usize) -> Complex<T> + Sync) -> Vec<Complex<T>> {
        let AxisView { outer, len, inner } = v;
        let mut buf = vec![Complex::new(T::zero(), T::zero()); outer * inner * n_out];
        buf.par_chunks_mut(n_out.max(1)).enumerate().for_each(|(s, sig)| {
            let (o, j) = (s / inner.max(1), s % inner.max(1));
            for l in 0..len.min(n_out) {
                sig[l] = get((o * len + l) * inner + j);
            }
        });
        buf
    }

    /// Scatters contiguous signals of length `n` (keeping the first `keep`) back to `[outer, keep, inner]`.
    fn scatter(buf: &[Complex<T>], outer: usize, n: usize, keep: usize, inner: usize) -> (Vec<T>, Vec<T>) {
        let mut re = vec![T::zero(); outer * keep * inner];
        let mut im = vec![T::zero(); outer * keep * inner];
        for o in 0..outer {
            for j in 0..inner {
                let sig = &buf[(o * inner + j) * n..];
                for l in 0..keep {
                    let idx = (o * keep + l) * inner + j;
                    re[idx] = sig[l].re;
                    im[idx] = sig[l].im;
                }
            }
        }
        (re, im)
    }

    /// Complex-to-complex transform along the axis.
    pub fn c2c(&self, re: &[T], im: &[T], v: AxisView, inverse: bool, norm: FftNorm) -> (Vec<T>, Vec<T>) {
        let mut buf = Self::gather(v, v.len, |i| Complex::new(re[i], im[i]));
        self.run(&mut buf, v.len, inverse, norm);
        Self::scatter(&buf, v.outer, v.len, v.len, v.inner)
    }

    /// Real-to-complex transform: the `len/2 + 1` non-negative frequencies.
    pub fn r2c(&self, x: &[T], v: AxisView, norm: FftNorm) -> (Vec<T>, Vec<T>) {
        let mut buf = Self::gather(v, v.len, |i| Complex::new(x[i], T::zero()));
        self.run(&mut buf, v.len, false, norm);
        Self::scatter(&buf, v.outer, v.len, v.len / 2 + 1, v.inner)
    }

    /// Complex-to-real inverse of [`Self::r2c`]: `v.len` is the half-spectrum length, `n` the signal length.
    pub fn c2r(&self, re: &[T], im: &[T], v: AxisView, n: usize, norm: FftNorm) -> Vec<T> {
        let AxisView { outer, len, inner } = v;
        let mut buf = vec![Complex::new(T::zero(), T::zero()); outer * inner * n];
        buf.par_chunks_mut(n.max(1)).enumerate().for_each(|(s, sig)| {
            let (o, j) = (s / inner.max(1), s % inner.max(1));
            for k in 0..len.min(n) {
                let idx = (o * len + k) * inner + j;
                sig[k] = Complex::new(re[idx], im[idx]);
            }
            // Hermitian extension: X_{n-k} = conj(X_k).
            for k in 1..n.div_ceil(2) {
                sig[n - k] = sig[k].conj();
            }
            // The imaginary parts of the self-conjugate bins do not belong to a real signal.
            sig[0].im = T::zero();
            if n % 2 == 0 && n > 0 {
                sig[n / 2].im = T::zero();
            }
        });
        self.run(&mut buf, n, true, norm);
        let (out, _) = Self::scatter(&buf, outer, n, n, inner);
        out
    }
}
