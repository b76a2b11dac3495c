//! Conformance checks of the Fourier transforms against the O(n^2) DFT.

use super::reference::*;
use super::*;
use crate::{Backend, FftNorm};

// ====================================================================
// Checks: Fourier transforms
// ====================================================================

/// Lengths for the FFT checks: 1, 2, powers of two, odd composites and primes (5, 7, 17, 31).
pub(crate) const FFT_LENGTHS: [usize; 11] = [1, 2, 5, 7, 8, 9, 12, 15, 16, 17, 31];

/// Complex `fft` along a middle axis against the O(n^2) DFT, forward and
/// inverse, both norms; the round trip returns the input; Parseval holds for Ortho.
pub fn check_fft<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(25);
    for n in FFT_LENGTHS {
        let shape = [2usize, n, 3];
        let v = shape_view(&shape, 1);
        let (re, xr) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let (im, xi) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let x = crate::ComplexTensor::new(re, im);
        let xc = to_c64(&xr, &xi);
        for norm in [FftNorm::Backward, FftNorm::Ortho] {
            for inverse in [false, true] {
                let out = x.fft(1, inverse, norm);
                let (gr, gi) = out.to_f64_vecs();
                let (wr, wi) = planes(&ref_dft(&xc, v, inverse, norm));
                let what = format!("fft n={n} inverse={inverse} {norm:?}");
                let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
                assert_close_scaled(&format!("{what} (re)"), &gr, &wr, tol, scale);
                assert_close_scaled(&format!("{what} (im)"), &gi, &wi, tol, scale);
            }
            let back = x.fft(1, false, norm).fft(1, true, norm);
            let (br, bi) = back.to_f64_vecs();
            assert_close(&format!("ifft(fft(x)) n={n} {norm:?} (re)"), &br, &xr, tol);
            assert_close(&format!("ifft(fft(x)) n={n} {norm:?} (im)"), &bi, &xi, tol);
        }
        let e_in: f64 = xr.iter().chain(&xi).map(|v| v * v).sum();
        let e_out = x.fft(1, false, FftNorm::Ortho).abs_sq().sum_all();
        assert_close(&format!("Parseval n={n}"), &[e_out], &[e_in], tol);
    }
    // First and last axis, and many signals (parallel path).
    for (shape, axis) in [(vec![6usize, 4], 0usize), (vec![3, 2, 10], 2), (vec![512, 24], 1)] {
        let v = shape_view(&shape, axis);
        let (re, xr) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let (im, xi) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let out = crate::ComplexTensor::new(re, im).fft(axis as isize, false, FftNorm::Backward);
        let (gr, gi) = out.to_f64_vecs();
        let (wr, wi) = planes(&ref_dft(&to_c64(&xr, &xi), v, false, FftNorm::Backward));
        let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
        assert_close_scaled(&format!("fft {shape:?} axis {axis} (re)"), &gr, &wr, tol, scale);
        assert_close_scaled(&format!("fft {shape:?} axis {axis} (im)"), &gi, &wi, tol, scale);
    }
}

/// `rfft` along a middle axis equals the first `n/2 + 1` bins of the DFT, for even and odd `n`, both norms.
pub fn check_rfft<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(26);
    for n in FFT_LENGTHS {
        let shape = [2usize, n, 3];
        let (x, xv) = random_input(b, &mut r, &shape, -1.0, 1.0);
        for norm in [FftNorm::Backward, FftNorm::Ortho] {
            let out = x.rfft(1, norm);
            let h = n / 2 + 1;
            assert_eq!(out.shape(), &[2, h, 3], "rfft n={n}");
            let full = ref_dft(
                &xv.iter().map(|&v| C64::new(v, 0.0)).collect::<Vec<_>>(),
                shape_view(&shape, 1),
                false,
                norm,
            );
            // Keep bins 0..h of each signal.
            let mut wr = Vec::new();
            let mut wi = Vec::new();
            for o in 0..2 {
                for k in 0..h {
                    for j in 0..3 {
                        let c = full[(o * n + k) * 3 + j];
                        wr.push(c.re);
                        wi.push(c.im);
                    }
                }
            }
            let (gr, gi) = out.to_f64_vecs();
            let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
            assert_close_scaled(&format!("rfft n={n} {norm:?} (re)"), &gr, &wr, tol, scale);
            assert_close_scaled(&format!("rfft n={n} {norm:?} (im)"), &gi, &wi, tol, scale);
        }
    }
}

/// `irfft` inverts `rfft` for even and odd `n` and both norms, and on an
/// arbitrary half spectrum equals NumPy's `irfft` (the Hermitian extension,
/// with the imaginary parts of bins 0 and `n/2` ignored).
pub fn check_irfft<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(27);
    for n in FFT_LENGTHS {
        let shape = [2usize, n, 3];
        let (x, xv) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let h = n / 2 + 1;
        for norm in [FftNorm::Backward, FftNorm::Ortho] {
            let back = x.rfft(1, norm).irfft(1, n, norm);
            assert_eq!(back.shape(), &shape);
            assert_close(&format!("irfft(rfft(x)) n={n} {norm:?}"), &back.to_f64_vec(), &xv, tol);
            let hs = [2usize, h, 3];
            let (re, sr) = random_input(b, &mut r, &hs, -1.0, 1.0);
            let (im, si) = random_input(b, &mut r, &hs, -1.0, 1.0);
            let out = crate::ComplexTensor::new(re, im).irfft(1, n, norm);
            let want = ref_irfft(&to_c64(&sr, &si), shape_view(&hs, 1), n, norm);
            assert_close(
                &format!("irfft of an arbitrary half spectrum n={n} {norm:?}"),
                &out.to_f64_vec(),
                &want,
                tol,
            );
        }
    }
}
