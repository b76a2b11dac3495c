//! Set-up shared by the model benches: the process allocator as the `rate` binary configures it.

/// Keeps freed memory for reuse as the `rate` binary does
/// ([`backend_cpu::keep_freed_memory`]) unless `RATE_BENCH_DEFAULT_MALLOC` is
/// set (then glibc's defaults are measured). Idempotent: every bench function
/// calls it, so a filtered run configures the allocator the same way.
pub fn allocator_as_in_the_binary() {
    if std::env::var_os("RATE_BENCH_DEFAULT_MALLOC").is_none() {
        backend_cpu::keep_freed_memory();
    }
}

/// [`allocator_as_in_the_binary`] and, as `rate crate|aot|tost forward` do,
/// recycled product buffers ([`backend_cpu::pool::MODEL_STEP_BYTES`]) unless
/// `RATE_BENCH_NO_RECYCLE` is set.
#[allow(dead_code)] // not every bench binary runs model steps
pub fn allocator_as_in_model_jobs() {
    allocator_as_in_the_binary();
    if std::env::var_os("RATE_BENCH_NO_RECYCLE").is_none() {
        backend_cpu::recycle_buffers(backend_cpu::pool::MODEL_STEP_BYTES);
    }
}
