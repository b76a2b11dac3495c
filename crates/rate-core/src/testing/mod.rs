//! Backend conformance suite: one generic check per primitive and per fused kernel, instantiated per backend by `conformance_tests!`.
//!
//! Every primitive check (`primitives.rs`, `linalg.rs`, `fourier.rs`) builds
//! seeded pseudo-random inputs, runs one [`Backend`] primitive (through
//! [`Tensor`] or directly), and compares the result with a plain-Rust f64
//! reference computed in `reference.rs` by the textbook algorithm: triple-loop matmul, the O(n^2) DFT, the
//! Cholesky–Banachiewicz loop (real and complex), max-subtracted softmax;
//! the eigen-decomposition by its residuals `A V - V diag(l)` and `V^T V - I`. References are computed from the
//! inputs rounded to the backend's element type on the host, so rounding the
//! inputs to f32 costs no accuracy, and a backend whose download is broken
//! cannot agree with them by accident.
//!
//! Every kernel check (`kernels.rs`, `check_kernel_*`, one per method of
//! [`Kernels`](crate::Kernels)) runs the backend's kernel and its reference
//! body (built from primitives) on a reference backend in f64 from the same
//! rounded inputs: on the CPU backend that tests each override, on a GPU
//! backend the device against the CPU.
//!
//! Tolerances depend on the element precision ([`tolerance`]):
//!
//! | element | tol |
//! |---|---|
//! | f64 | 1e-10 |
//! | f32 | 1e-4 |
//!
//! An output passes when every `|got - want| <= tol * max(1, max_i |want_i|)`,
//! a norm-wise relative error ([`assert_close`]); residual checks (`A X - B`,
//! `A V - V diag(l)`, `V^T V - I`) use the same bound with the scale of the
//! matrix. Matrices given to the solvers have condition numbers below about 10,
//! so the bounds hold with a wide margin in both precisions.
//!
//! Instantiate the suite once per backend (one `#[test]` per check):
//!
//! ```text
//! rate_core::conformance_tests!(cpu_f64, backend_cpu::CpuBackend::<f64>::new(), reference backend_cpu::CpuBackend::<f64>::new());
//! // A backend that may be unavailable (no GPU adapter): the expression is an
//! // Option, and every test prints why it is skipped when it is None.
//! rate_core::conformance_tests!(wgpu_f32, optional backend_wgpu::WgpuBackend::new().ok(), reference backend_cpu::CpuBackend::<f64>::new());
//! ```

mod fourier;
mod kernels;
mod linalg;
mod primitives;
mod reference;
mod world;

pub use world::ThreadWorld;

pub use fourier::*;
pub use kernels::*;
pub use linalg::*;
pub use primitives::*;

use crate::{Backend, Element, Tensor};
use num_traits::Float;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ====================================================================
// Tolerances, comparison and inputs
// ====================================================================

/// Tolerance of the suite for the element type of `B`: 1e-10 for f64, 1e-4
/// for f32 (see the module documentation for how it is applied).
pub fn tolerance<B: Backend>() -> f64 {
    if B::Elem::epsilon().f64() <= f64::EPSILON {
        1e-10
    } else {
        1e-4
    }
}

/// Panics unless `got` and `want` have the same length and every
/// `|got_i - want_i| <= tol * max(1, max_j |want_j|)` (NaN never passes).
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let scale = want.iter().fold(1.0f64, |s, w| s.max(w.abs()));
    assert_close_scaled(what, got, want, tol, scale);
}

/// Panics unless every `|got_i - want_i| <= tol * scale`.
pub fn assert_close_scaled(what: &str, got: &[f64], want: &[f64], tol: f64, scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= tol * scale,
            "{what}: element {i}: got {g}, expected {w} (|diff| {err:.3e} > tol {tol:.1e} x scale {scale:.3e})"
        );
    }
}

pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub(crate) fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// The values as the backend stores them: rounded to its element type on the host.
pub(crate) fn rounded<B: Backend>(data: &[f64]) -> Vec<f64> {
    data.iter().map(|&x| B::Elem::of(x).f64()).collect()
}

/// Uploads `data` with `shape`; returns the tensor and the rounded host values.
pub(crate) fn input<B: Backend>(b: &B, data: &[f64], shape: &[usize]) -> (Tensor<B>, Vec<f64>) {
    (Tensor::from_f64(b, data, shape), rounded::<B>(data))
}

/// A random tensor with entries uniform in `[lo, hi)` and its rounded host values.
pub(crate) fn random_input<B: Backend>(
    b: &B,
    r: &mut StdRng,
    shape: &[usize],
    lo: f64,
    hi: f64,
) -> (Tensor<B>, Vec<f64>) {
    let n = shape.iter().product();
    input(b, &uniform(r, n, lo, hi), shape)
}

pub(crate) fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |s, v| s.max(v.abs()))
}

// ====================================================================
// The macro
// ====================================================================

/// Instantiates the conformance suite for one backend: a module `name` with
/// one `#[test]` per check. `conformance_tests!(name, expr, reference ref)`
/// runs the primitive checks on `expr` and the kernel checks of
/// [`Kernels`](crate::Kernels) on `expr` against their reference bodies on
/// `ref` (an f64 backend); `conformance_tests!(name, optional expr, reference ref)`
/// takes an `Option<backend>` and every test prints why it is skipped when it
/// is `None` (no GPU adapter). Names in the expressions resolve in the invoking module.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, optional $backend:expr, reference $reference:expr) => {
        $crate::conformance_tests!(@module $name, optional $backend, $reference);
    };
    ($name:ident, $backend:expr, reference $reference:expr) => {
        $crate::conformance_tests!(@module $name, required $backend, $reference);
    };
    (@module $name:ident, $mode:ident $backend:expr, $reference:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@tests $mode $backend;
                check_upload_download, check_full, check_unary, check_binary, check_binary_broadcast,
                check_binary_strided, check_permute, check_narrow, check_concat, check_index_select,
                check_index_add, check_reduce, check_softmax, check_matmul, check_matmul_batched,
                check_matmul_empty, check_cholesky, check_spd_solve, check_spd_inverse, check_spd_logdet,
                check_spd_not_positive_definite, check_sym_eigen, check_herm_inverse, check_herm_solve,
                check_herm_logdet, check_herm_not_positive_definite, check_kernel_spd_inverse_logdet,
                check_herm_inverse_logdet, check_fft, check_rfft, check_irfft);
            // every method of the `Kernels` extension trait
            $crate::conformance_tests!(@kernels $mode $backend, $reference;
                check_kernel_layer_norm, check_kernel_layer_norm_backward, check_kernel_softmax_backward,
                check_kernel_cumsum, check_kernel_attention_tiled, check_kernel_attention_tiled_backward,
                check_kernel_attention_dense, check_kernel_attention_dense_backward, check_kernel_token_stats,
                check_kernel_invariant_step, check_kernel_real_operand, check_kernel_invariant_products,
                check_kernel_redunet_build, check_kernel_redunet_transform);
        }
    };
    (@tests required $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let backend = $backend;
                $crate::testing::$check(&backend);
            }
        )*
    };
    (@tests optional $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                match $backend {
                    ::core::option::Option::Some(backend) => $crate::testing::$check(&backend),
                    ::core::option::Option::None => {
                        eprintln!("{}: skipped, backend not available", stringify!($check));
                    }
                }
            }
        )*
    };
    (@kernels required $backend:expr, $reference:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let backend = $backend;
                $crate::testing::$check(&backend, &$reference);
            }
        )*
    };
    (@kernels optional $backend:expr, $reference:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                match $backend {
                    ::core::option::Option::Some(backend) => $crate::testing::$check(&backend, &$reference),
                    ::core::option::Option::None => {
                        eprintln!("{}: skipped, backend not available", stringify!($check));
                    }
                }
            }
        )*
    };
}
