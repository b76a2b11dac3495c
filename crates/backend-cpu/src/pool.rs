//! Recycled host buffers (opt-in, [`recycle_buffers`]): a dropped buffer goes to its thread's pool and the next product of the same length writes into it, so that outputs of which every element is written are not zeroed first.
//!
//! A training step allocates the same shapes layer after layer and step
//! after step; zeroing each fresh product output (glibc's `calloc` on a
//! reused block is a `memset`) was about 5 % of a CRATE training step under
//! perf. Only kernels that overwrite every element of their output take a
//! recycled buffer ([`take_for_overwrite`]); its stale values are never read.
//! Each thread keeps at most the configured number of bytes; the oldest
//! buffers go first.

use crate::CpuElem;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes each thread may keep (0: recycling off, the default).
static LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Buffers shorter than this are freed as usual (small allocations are cheap).
const MIN_LEN: usize = 1 << 12;

/// Turns recycling on with at most `bytes_per_thread` kept per thread (0
/// turns it off); returns the previous limit. The `rate` binary's
/// transformer commands and the transformer benches call it; a library
/// never changes it by itself. Peak memory may grow by up to the limit per
/// thread that frees buffers.
pub fn recycle_buffers(bytes_per_thread: usize) -> usize {
    LIMIT.swap(bytes_per_thread, Ordering::Relaxed)
}

/// The limit the `rate` binary sets for model forward and gradient jobs and
/// the transformer benches use: 16 MiB per thread. On the CIFAR-size CRATE
/// training step (2-core VM, perf) zeroing fell from 5.3 % of the samples to
/// 0.9 % (4 MiB: 1.8 %, 32 MiB: 0.8 %) and the peak RSS rose from 164 to 213 MB.
pub const MODEL_STEP_BYTES: usize = 16 << 20;

fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// One thread's recycled buffers of one element type.
#[derive(Debug, Default)]
pub struct Pool<T> {
    free: Vec<Vec<T>>,
    bytes: usize,
}

impl<T> Pool<T> {
    fn size(v: &Vec<T>) -> usize {
        v.capacity() * std::mem::size_of::<T>()
    }

    /// Keeps `v`, dropping the oldest buffers until the pool fits `limit` bytes.
    fn put(&mut self, v: Vec<T>, limit: usize) {
        let size = Self::size(&v);
        if size > limit {
            return;
        }
        while self.bytes + size > limit && !self.free.is_empty() {
            let old = self.free.remove(0);
            self.bytes -= Self::size(&old);
        }
        self.bytes += size;
        self.free.push(v);
    }

    /// The most recently kept buffer of exactly `len` elements.
    fn take(&mut self, len: usize) -> Option<Vec<T>> {
        let i = self.free.iter().rposition(|v| v.len() == len)?;
        let v = self.free.remove(i);
        self.bytes -= Self::size(&v);
        Some(v)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A buffer of `len` elements for a kernel that writes every one of them:
/// a recycled buffer of that length (stale values) when recycling is on and
/// the thread has one, zeros otherwise.
pub fn take_for_overwrite<T: CpuElem>(len: usize) -> Vec<T> {
    if len >= MIN_LEN && limit() > 0 {
        if let Some(v) = T::with_pool(|p| p.take(len)).flatten() {
            return v;
        }
    }
    vec![T::zero(); len]
}

/// Bytes the calling thread keeps for reuse in precision `T`.
pub fn pooled_bytes<T: CpuElem>() -> usize {
    T::with_pool(|p| p.bytes()).unwrap_or(0)
}

/// The storage of a CPU buffer: a `Vec` that goes back to its thread's pool
/// when dropped, if recycling is on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostVec<T: CpuElem>(pub Vec<T>);

impl<T: CpuElem> std::ops::Deref for HostVec<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: CpuElem> Drop for HostVec<T> {
    fn drop(&mut self) {
        let limit = limit();
        if limit == 0 || self.0.len() < MIN_LEN {
            return;
        }
        let v = std::mem::take(&mut self.0);
        T::with_pool(|p| p.put(v, limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keeps_within_its_limit_and_hands_back_exact_lengths() {
        let mut p = Pool::<f32>::default();
        let b = |len: usize| -> Vec<f32> { vec![1.0; len] };
        p.put(b(1000), 10_000);
        p.put(b(1500), 10_000);
        assert_eq!(p.bytes(), 10_000);
        // a third buffer evicts the oldest one
        p.put(b(500), 10_000);
        assert_eq!(p.bytes(), 8_000);
        assert!(p.take(1000).is_none(), "the oldest buffer was evicted");
        assert_eq!(p.take(1500).map(|v| v.len()), Some(1500));
        assert!(p.take(1500).is_none());
        assert_eq!(p.bytes(), 2_000);
        // a buffer larger than the limit is not kept
        p.put(b(5000), 10_000);
        assert_eq!(p.bytes(), 2_000);
    }
}
