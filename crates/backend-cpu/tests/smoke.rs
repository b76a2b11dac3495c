//! Smoke checks of the CPU backend against hand-computed values.
use backend_cpu::CpuBackend;
use rate_core::{FftNorm, Tensor};

#[test]
fn matmul_transposes_and_batch() {
    let b = CpuBackend::<f64>::new();
    let a = Tensor::from_f64(&b, &[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let c = a.matmul_t(&a, false, true);
    assert_eq!(c.to_vec(), vec![14., 32., 32., 77.]);
    let d = a.matmul_t(&a, true, false);
    assert_eq!(d.shape(), &[3, 3]);
    assert_eq!(d.to_vec()[0], 17.);
    let ab = Tensor::cat(&[&a.reshape(&[1, 2, 3]), &a.scale(2.0).reshape(&[1, 2, 3])], 0);
    let e = ab.matmul_t(&a, false, true);
    assert_eq!(e.to_vec(), vec![14., 32., 32., 77., 28., 64., 64., 154.]);
}

#[test]
fn fft_roundtrip_odd_length() {
    let b = CpuBackend::<f64>::new();
    let x: Vec<f64> = (0..2 * 7 * 3).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
    let t = Tensor::from_f64(&b, &x, &[2, 7, 3]);
    let s = t.rfft(1, FftNorm::Ortho);
    assert_eq!(s.shape(), &[2, 4, 3]);
    let back = s.irfft(1, 7, FftNorm::Ortho);
    let err = back.sub(&t).max_abs();
    assert!(err < 1e-12, "{err}");
    // DC bin = sum / sqrt(7)
    let dc = s.re.to_f64_vec()[0];
    let sum: f64 = (0..7).map(|l| x[l * 3]).sum();
    assert!((dc - sum / 7f64.sqrt()).abs() < 1e-12);
}

#[test]
fn spd_inverse_and_logdet() {
    let b = CpuBackend::<f64>::new();
    let a = Tensor::from_f64(&b, &[4., 2., 2., 3.], &[2, 2]);
    let inv = a.spd_inverse().unwrap();
    let prod = a.matmul(&inv).sub(&Tensor::eye(&b, 2)).max_abs();
    assert!(prod < 1e-14);
    assert!((a.spd_logdet().unwrap().scalar() - 8f64.ln()).abs() < 1e-14);
    let bad = Tensor::from_f64(&b, &[1., 2., 2., 1.], &[2, 2]);
    let e = bad.spd_inverse().unwrap_err().to_string();
    assert!(e.contains("not positive definite"), "{e}");
}
