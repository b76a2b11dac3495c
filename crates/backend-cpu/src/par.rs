//! When the CPU kernels split work across rayon's pool: the size thresholds, and the one helper that runs a body over the chunks of an output in parallel or on the calling thread.

use rayon::prelude::*;

/// Elementwise work above this many elements is split across rayon threads.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;

/// Block of elements per rayon task in the streaming elementwise loops.
pub(crate) const BLOCK: usize = 1 << 14;

/// Memory-bound elementwise work (one load or two and a store per element)
/// stays on the calling thread below this many elements: waking the pool
/// costs more than it saves until the operands are far larger than the
/// caches (relu of 409,600 f32: 80 us on one thread, 150-230 us split in two,
/// on the 2-core machine of `docs/performance.md`).
pub(crate) const STREAM_PAR_THRESHOLD: usize = 1 << 20;

/// Runs `body((index, chunk))` over the consecutive `chunk`-sized chunks of
/// `out`: one rayon task per chunk when `parallel`, in order on the calling
/// thread otherwise. The body sees the same chunks either way, so results
/// do not depend on the choice.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    body: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    if parallel {
        out.par_chunks_mut(chunk).enumerate().for_each(body);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(body);
    }
}
