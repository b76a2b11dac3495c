//! Shared helpers of the wgpu integration tests: one backend per test binary, skipped (or, with `RATE_REQUIRE_GPU=1`, failed) without an adapter.
#![allow(dead_code)]

use backend_wgpu::WgpuBackend;
use rate_core::Backend;
use std::io::Write;
use std::sync::OnceLock;

/// The environment variable that turns "no adapter: skipped" into a failure (set by CI and `cargo xtask test-gpu`).
pub const REQUIRE_ENV: &str = "RATE_REQUIRE_GPU";

/// The backend shared by every test of this binary, or `None` (said on stderr) when no adapter opens.
///
/// # Panics
/// When no adapter opens and `RATE_REQUIRE_GPU=1`.
pub fn gpu() -> Option<&'static WgpuBackend> {
    static GPU: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    GPU.get_or_init(|| match WgpuBackend::new() {
        Ok(b) => {
            let _ = writeln!(std::io::stderr(), "wgpu tests run on {}", b.name());
            Some(b)
        }
        Err(e) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_ENV}=1 but no wgpu adapter could be opened: {e}");
            }
            // Straight to stderr, past libtest's capture, so the skip is seen.
            let _ = writeln!(std::io::stderr(), "no wgpu adapter found: skipped ({e})");
            None
        }
    })
    .as_ref()
}

/// A clone of the shared backend (clones share the device), for `conformance_tests!(name, optional ...)`.
pub fn gpu_clone() -> Option<WgpuBackend> {
    gpu().cloned()
}

/// Largest `|got - want|`.
pub fn max_abs_diff(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length {} vs reference {}", got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| if (g - w).is_nan() { f64::NAN } else { m.max((g - w).abs()) })
}

/// Largest `|w|` (at least 1): the scale of a norm-wise relative error.
pub fn scale(want: &[f64]) -> f64 {
    want.iter().fold(1.0f64, |m, w| m.max(w.abs()))
}

/// Panics unless `max |got - want| <= tol * max(1, max |want|)` (norm-wise relative; NaN fails), printing the error.
#[track_caller]
pub fn assert_rel(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let d = max_abs_diff(got, want);
    let s = scale(want);
    eprintln!(
        "{what}: max |wgpu - cpu f64| = {d:.3e} (scale {s:.3e}, relative {:.3e}, tol {tol:.0e})",
        d / s
    );
    assert!(d <= tol * s, "{what}: wgpu differs from CpuBackend<f64> by {d:.3e} > {tol:.0e} x scale {s:.3e}");
}
