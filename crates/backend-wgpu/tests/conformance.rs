//! The rate-core backend conformance suite on `WgpuBackend` (f32 tolerance 1e-4, norm-wise relative): primitives against the suite's f64 references, every fused kernel against its reference body on `CpuBackend<f64>`; skipped without an adapter unless `RATE_REQUIRE_GPU=1`.
mod common;

rate_core::conformance_tests!(wgpu_f32, optional common::gpu_clone(), reference backend_cpu::CpuBackend::<f64>::new());
