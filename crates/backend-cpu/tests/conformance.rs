//! The rate-core backend conformance suite on `CpuBackend` in f32 and f64 (tolerances 1e-4 and 1e-10): the primitives against plain f64 loops, every fused-kernel override against its reference body on `CpuBackend<f64>`.
use backend_cpu::CpuBackend;

rate_core::conformance_tests!(cpu_f32, CpuBackend::<f32>::new(), reference CpuBackend::<f64>::new());
rate_core::conformance_tests!(cpu_f64, CpuBackend::<f64>::new(), reference CpuBackend::<f64>::new());

// The form a GPU backend uses: an `Option` of a backend, every test skipped (and saying so) when it is `None`.
rate_core::conformance_tests!(unavailable_backend, optional None::<CpuBackend<f32>>, reference CpuBackend::<f64>::new());
