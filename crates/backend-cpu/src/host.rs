//! Thread and process state around the kernels: the AVX upper halves that faer leaves dirty, and the allocator setting that keeps freed memory for reuse.

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
