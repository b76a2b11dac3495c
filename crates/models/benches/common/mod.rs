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
