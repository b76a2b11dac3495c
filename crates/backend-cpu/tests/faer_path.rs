//! Residual checks of the faer-backed SPD kernels (order above `linalg::SMALL` = 64) on the parallel and the sequential backend.
use backend_cpu::CpuBackend;
use rate_core::Tensor;

/// `X^T X / m + I` for a deterministic `m x n` matrix `X` (SPD, condition ~ 10).
fn spd(be: &CpuBackend<f64>, n: usize) -> Tensor<CpuBackend<f64>> {
    let m = 2 * n;
    let x: Vec<f64> = (0..m * n).map(|i| ((i * 7919 + 13) % 997) as f64 / 997.0 - 0.5).collect();
    let x = Tensor::from_f64(be, &x, &[m, n]);
    x.matmul_t(&x, true, false).scale(1.0 / m as f64).add(&Tensor::eye(be, n))
}

fn check_backend(be: &CpuBackend<f64>) {
    let n = 150;
    let a = spd(be, n);
    let tol = 1e3 * n as f64 * f64::EPSILON;

    let inv = a.spd_inverse().expect("SPD by construction");
    let residual = a.matmul(&inv).sub(&Tensor::eye(be, n)).max_abs();
    assert!(residual < tol, "A A^-1 - I: {residual:e} > {tol:e}");
    assert_eq!(inv.sub(&inv.t()).max_abs(), 0.0, "the inverse must be exactly symmetric");

    let l = a.cholesky().expect("SPD by construction");
    let lv = l.to_vec();
    assert!((0..n).all(|i| (i + 1..n).all(|j| lv[i * n + j] == 0.0)), "L must be lower triangular");
    let reconstruction = l.matmul_t(&l, false, true).sub(&a).max_abs();
    assert!(reconstruction < tol, "L L^T - A: {reconstruction:e}");

    let b = Tensor::from_f64(be, &(0..n * 3).map(|i| (i % 11) as f64 - 5.0).collect::<Vec<_>>(), &[n, 3]);
    let x = a.spd_solve(&b).expect("SPD by construction");
    let solve_residual = a.matmul(&x).sub(&b).max_abs();
    assert!(solve_residual < tol * 10.0, "A X - B: {solve_residual:e}");

    let logdet = a.spd_logdet().expect("SPD by construction").scalar();
    let (eigenvalues, _) = a.sym_eigen().expect("symmetric");
    let from_eigen: f64 = eigenvalues.to_vec().iter().map(|v| v.ln()).sum();
    assert!((logdet - from_eigen).abs() < tol, "logdet {logdet} vs sum ln eigenvalues {from_eigen}");

    // Indefinite with a positive diagonal (the [[1, 2], [2, 1]] block has eigenvalue -1),
    // so faer's own pivot check must catch it; and a negative diagonal entry.
    let mut indefinite = vec![0.0; n * n];
    (0..n).for_each(|i| indefinite[i * n + i] = 1.0);
    indefinite[1] = 2.0;
    indefinite[n] = 2.0;
    let bad = Tensor::from_f64(be, &indefinite, &[n, n]);
    for err in [bad.spd_inverse().map(|_| ()), bad.spd_solve(&b).map(|_| ()), bad.cholesky().map(|_| ())] {
        let err = err.expect_err("indefinite").to_string();
        assert!(err.contains("not positive definite"), "{err}");
    }
    let negative = a.sub(&Tensor::eye(be, n).scale(1e3));
    let err = negative.spd_logdet().expect_err("negative diagonal").to_string();
    assert!(err.contains("spd_logdet") && err.contains("not positive definite"), "{err}");
}

#[test]
fn faer_spd_kernels_parallel_backend() {
    check_backend(&CpuBackend::<f64>::new());
}

#[test]
fn faer_spd_kernels_sequential_backend() {
    check_backend(&CpuBackend::<f64>::sequential());
}

#[test]
fn sequential_and_parallel_backends_agree() {
    let (p, s) = (CpuBackend::<f64>::new(), CpuBackend::<f64>::sequential());
    let (ip, is) = (spd(&p, 200).spd_inverse().expect("SPD"), spd(&s, 200).spd_inverse().expect("SPD"));
    let diff = ip.to_vec().iter().zip(is.to_vec()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-12, "{diff:e}");
}
