//! The rate-core backend conformance suite on `WgpuBackend` (f32 tolerance 1e-4, norm-wise relative, against the suite's f64 references); skipped without an adapter unless `RATE_REQUIRE_GPU=1`.
mod common;

rate_core::conformance_tests!(wgpu_f32, optional common::gpu_clone());
