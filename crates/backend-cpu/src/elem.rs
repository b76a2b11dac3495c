//! The element types of the CPU backend (f32, f64) and its buffer: what each precision does differently (its pool of recycled buffers, its row `exp`).

use crate::exp::exp_f32;
use crate::pool::HostVec;
use rate_core::Element;
use std::sync::Arc;

/// A CPU buffer: shared, so reshapes and clones are free.
pub type Buf<T> = Arc<HostVec<T>>;

pub(crate) fn buf<T: CpuElem>(v: Vec<T>) -> Buf<T> {
    Arc::new(HostVec(v))
}

/// Element types the CPU backend computes in (f32 and f64).
pub trait CpuElem: Element + faer::traits::RealField + rustfft::FftNum {
    /// Runs `f` on the calling thread's pool of recycled buffers of this
    /// type ([`crate::pool`]); `None` where there is none (the default, or while
    /// the thread shuts down).
    fn with_pool<R>(f: impl FnOnce(&mut crate::pool::Pool<Self>) -> R) -> Option<R> {
        drop(f);
        None
    }

    /// `e^x` of the row kernels: the correctly rounded `exp`, and in f32 the
    /// branch-free [`crate::exp_f32`] so that row loops over it vectorise.
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
    static POOL_F32: std::cell::RefCell<crate::pool::Pool<f32>> = std::cell::RefCell::default();
    static POOL_F64: std::cell::RefCell<crate::pool::Pool<f64>> = std::cell::RefCell::default();
}

impl CpuElem for f32 {
    fn with_pool<R>(f: impl FnOnce(&mut crate::pool::Pool<f32>) -> R) -> Option<R> {
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
    fn with_pool<R>(f: impl FnOnce(&mut crate::pool::Pool<f64>) -> R) -> Option<R> {
        POOL_F64.try_with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p))).ok().flatten()
    }
}
