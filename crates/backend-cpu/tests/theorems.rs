//! Property tests (f64, CPU) of the chapter's claims: rate gradients (4.1.3-4.1.5), Neumann series (Exercise 4.2), the variational bound (Theorem 4.2, Corollary 4.3.13), the circulant propositions (4.1.18, 4.1.27) and rate-reduction identities (Exercise 4.1).
//!
//! Each test is named after what it proves; the doc comment cites the
//! chapter's label. Inputs are drawn by proptest with a fixed seed, so a run is
//! reproducible; structured inputs (orthonormal bases, subspaces, signals) are
//! built from a proptest-drawn seed with `StdRng`. Layout as in rate-core:
//! samples are rows (`Z` is `m x d`), the chapter's `Z` transposed.
//!
//! Tolerances: identities 1e-10 relative to `max(1, |value|)`; finite
//! differences (step 1e-5, error O(h^2) + O(eps/h)) 1e-6 relative.

use backend_cpu::CpuBackend;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rate_core::circulant::{
    circulant_coding_rate, circulant_compression_operators, circulant_compression_rate,
    circulant_expansion_operators,
};
use rate_core::rate::logdet_i_plus_gram;
use rate_core::{
    coding_rate, coding_rate_grad, compression_rate, compression_rate_grad, rate_reduction,
    rate_reduction_grad, Membership, Tensor,
};
use std::f64::consts::PI;

type Be = CpuBackend<f64>;

fn be() -> Be {
    CpuBackend::new()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x00C0_FFEE_4A7E),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn t(b: &Be, data: &[f64], shape: &[usize]) -> Tensor<Be> {
    Tensor::from_f64(b, data, shape)
}

/// Fails unless every `|got - want| <= rtol * max(1, max |want|)`.
/// `dR_c/dZ` (4.1.4, memberships held fixed) at `z` (`m x d`) against the central differences of `R_c`.
fn check_compression_gradient(
    b: &Be,
    z: &[f64],
    (m, d): (usize, usize),
    pi: &Membership<'_, Be>,
    eps_sq: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    let g = compression_rate_grad(&t(b, z, &[m, d]), pi, eps_sq).expect("valid input").to_f64_vec();
    let fd = central_differences(
        |x| compression_rate(&t(b, x, &[m, d]), pi, eps_sq).expect("valid input"),
        z,
        FD_STEP,
    );
    check_close(what, &g, &fd, FD_RTOL)
}

fn check_close(what: &str, got: &[f64], want: &[f64], rtol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: lengths differ", what);
    let scale = want.iter().fold(1.0f64, |s, w| s.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (g - w).abs() <= rtol * scale,
            "{}: element {}: {} vs {} (|diff| {:.3e}, allowed {:.1e})",
            what,
            i,
            g,
            w,
            (g - w).abs(),
            rtol * scale
        );
    }
    Ok(())
}

/// Central differences of `f` at `x`, one coordinate at a time.
fn central_differences(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let mut xp = x.to_vec();
            xp[i] += h;
            let mut xm = x.to_vec();
            xm[i] -= h;
            (f(&xp) - f(&xm)) / (2.0 * h)
        })
        .collect()
}

fn uniform(r: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// A random `n x n` orthogonal matrix: the eigenvectors of a random symmetric matrix.
fn orthogonal(b: &Be, r: &mut StdRng, n: usize) -> Vec<f64> {
    let x = t(b, &uniform(r, n * n, -1.0, 1.0), &[n, n]);
    let (_, v) = x.add(&x.t()).sym_eigen().expect("a symmetric matrix has an eigen-decomposition");
    v.to_f64_vec()
}

/// Columns `from..to` of a row-major `rows x cols` matrix.
fn columns(a: &[f64], rows: usize, cols: usize, from: usize, to: usize) -> Vec<f64> {
    (0..rows).flat_map(|i| a[i * cols + from..i * cols + to].iter().copied()).collect()
}

/// Spectral norm `||A||_2 = sqrt(lambda_max(A^T A))`.
fn spectral_norm(a: &Tensor<Be>) -> f64 {
    let (vals, _) = a.matmul_t(a, true, false).sym_eigen().expect("A^T A is symmetric");
    vals.to_f64_vec()[0].max(0.0).sqrt()
}

/// Soft memberships `k x m` with positive entries whose columns sum to one.
fn normalise_columns(p: &[f64], k: usize, m: usize) -> Vec<f64> {
    let mut out = p.to_vec();
    for i in 0..m {
        let s: f64 = (0..k).map(|j| p[j * m + i]).sum();
        for j in 0..k {
            out[j * m + i] /= s;
        }
    }
    out
}

/// Features `m x d` in [-1, 1], `k` classes and hard labels.
fn features_with_labels() -> impl Strategy<Value = (usize, usize, Vec<f64>, usize, Vec<usize>)> {
    (1usize..9, 1usize..6, 1usize..4)
        .prop_flat_map(|(m, d, k)| (Just(m), Just(d), vec(-1.0f64..1.0, m * d), Just(k), vec(0..k, m)))
}

/// Features `m x d` in [-1, 1] and soft memberships `k x m` (columns sum to one).
fn features_with_soft() -> impl Strategy<Value = (usize, usize, Vec<f64>, usize, Vec<f64>)> {
    (1usize..9, 1usize..6, 1usize..4).prop_flat_map(|(m, d, k)| {
        (Just(m), Just(d), vec(-1.0f64..1.0, m * d), Just(k), vec(0.05f64..1.0, k * m))
            .prop_map(|(m, d, z, k, p)| (m, d, z, k, normalise_columns(&p, k, m)))
    })
}

// ====================================================================
// Gradients of R and R_c (4.1.3-4.1.5)
// ====================================================================

const FD_STEP: f64 = 1e-5;
const FD_RTOL: f64 = 1e-6;

proptest! {
    #![proptest_config(config(32))]

    /// 4.1.3: `dR/dZ = Z E` with `E = alpha (I + alpha Z^T Z)^-1` equals the
    /// central differences of `R`, on both sides of `m = d` (Woodbury path when `m < d`).
    #[test]
    fn coding_rate_gradient_equals_central_differences(
        (m, d, z) in (1usize..9, 1usize..7).prop_flat_map(|(m, d)| (Just(m), Just(d), vec(-1.0f64..1.0, m * d))),
        eps_sq in 0.1f64..2.0,
    ) {
        let b = be();
        let g = coding_rate_grad(&t(&b, &z, &[m, d]), eps_sq).expect("valid input").to_f64_vec();
        let fd = central_differences(|x| coding_rate(&t(&b, x, &[m, d]), eps_sq).expect("valid input"), &z, FD_STEP);
        check_close("dR/dZ", &g, &fd, FD_RTOL)?;
    }

    /// 4.1.4 with hard labels: `dR_c/dZ = sum_j gamma_j Pi_j Z C^j` equals the
    /// central differences of `R_c` (classes may be empty or smaller than `d`).
    #[test]
    fn compression_rate_gradient_hard_equals_central_differences(
        (m, d, z, k, labels) in features_with_labels(),
        eps_sq in 0.1f64..2.0,
    ) {
        let pi = Membership::Hard { labels: &labels, classes: k };
        check_compression_gradient(&be(), &z, (m, d), &pi, eps_sq, "dRc/dZ (hard)")?;
    }

    /// 4.1.4 with soft memberships (held fixed): the gradient equals the central differences of `R_c`.
    #[test]
    fn compression_rate_gradient_soft_equals_central_differences(
        (m, d, z, k, p) in features_with_soft(),
        eps_sq in 0.1f64..2.0,
    ) {
        let b = be();
        let pt = t(&b, &p, &[k, m]);
        check_compression_gradient(&b, &z, (m, d), &Membership::Soft(&pt), eps_sq, "dRc/dZ (soft)")?;
    }

    /// 4.1.5: `dΔR/dZ = Z E - sum_j gamma_j Pi_j Z C^j` equals the central differences of `ΔR`.
    #[test]
    fn rate_reduction_gradient_equals_central_differences(
        (m, d, z, k, labels) in features_with_labels(),
        eps_sq in 0.1f64..2.0,
    ) {
        let b = be();
        let pi = Membership::Hard { labels: &labels, classes: k };
        let g = rate_reduction_grad(&t(&b, &z, &[m, d]), &pi, eps_sq).expect("valid input").to_f64_vec();
        let fd = central_differences(
            |x| rate_reduction(&t(&b, x, &[m, d]), &pi, eps_sq).expect("valid input").delta_r,
            &z,
            FD_STEP,
        );
        check_close("dΔR/dZ", &g, &fd, FD_RTOL)?;
    }

    /// Exercise 4.1.1: for `R = 1/2 logdet(X)`, `X = I + alpha Z Z^T` (chapter
    /// layout), `∇²R[D, D] = alpha tr(X^-1 D D^T) - alpha^2/2 tr(X^-1 S X^-1 S)`,
    /// `S = Z D^T + D Z^T`, equals the central difference of `<∇R(Z + tD), D>`.
    /// (The exercise writes `R = logdet(X)` without the 1/2; its gradient
    /// `alpha X^-1 Z` and this Hessian are those of `R = 1/2 logdet(X)`.)
    #[test]
    fn coding_rate_hessian_matches_exercise_formula(
        (m, d, z, dir) in (1usize..8, 1usize..6)
            .prop_flat_map(|(m, d)| (Just(m), Just(d), vec(-1.0f64..1.0, m * d), vec(-1.0f64..1.0, m * d))),
        eps_sq in 0.1f64..2.0,
    ) {
        let b = be();
        let (zt, dt) = (t(&b, &z, &[m, d]), t(&b, &dir, &[m, d]));
        let alpha = d as f64 / (m as f64 * eps_sq);
        // Row layout: X = I + alpha Z^T Z, S = Z^T D + D^T Z (both d x d).
        let xi = zt.matmul_t(&zt, true, false).scale(alpha).add(&Tensor::eye(&b, d)).spd_inverse().expect("SPD");
        let ztd = zt.matmul_t(&dt, true, false);
        let s = ztd.add(&ztd.t());
        let tr = |a: &Tensor<Be>| (0..d).map(|i| a.to_f64_vec()[i * d + i]).sum::<f64>();
        let xs = xi.matmul(&s);
        let hess = alpha * tr(&xi.matmul(&dt.matmul_t(&dt, true, false))) - alpha * alpha / 2.0 * tr(&xs.matmul(&xs));
        let g = |step: f64| {
            let zs = zt.add_scaled(&dt, step);
            coding_rate_grad(&zs, eps_sq).expect("valid input").mul(&dt).sum_all()
        };
        let fd = (g(FD_STEP) - g(-FD_STEP)) / (2.0 * FD_STEP);
        check_close("Hessian quadratic form", &[hess], &[fd], FD_RTOL)?;
    }
}

// ====================================================================
// Neumann series (Exercise 4.2, used in eq:gd_rc_neumann)
// ====================================================================

proptest! {
    #![proptest_config(config(32))]

    /// Exercise 4.2: for `||A|| < 1` the partial sums `S_K = sum_{k=0}^K (-A)^k`
    /// converge to `(I + A)^-1`, and `S_K = sum_{k=0}^K A^k` to `(I - A)^-1`,
    /// with `||inverse - S_K|| <= ||A||^{K+1} / (1 - ||A||)` (spectral norm).
    /// (The exercise prints the sum from `k = 1`; it must start at `k = 0`.)
    #[test]
    fn neumann_partial_sums_converge_with_geometric_bound(
        (n, a) in (1usize..7).prop_flat_map(|n| (Just(n), vec(-1.0f64..1.0, n * n))),
        target in 0.05f64..0.9,
    ) {
        let b = be();
        let a0 = t(&b, &a, &[n, n]);
        let n0 = spectral_norm(&a0);
        prop_assume!(n0 > 1e-3);
        let a = a0.scale(target / n0);
        let rho = spectral_norm(&a);
        let eye = Tensor::eye(&b, n);
        for sign in [1.0, -1.0] {
            // (I + sign A)^-1 = ((I + sign A)^T (I + sign A))^-1 (I + sign A)^T
            let m = eye.add(&a.scale(sign));
            let inv = m.matmul_t(&m, true, false).spd_inverse().expect("SPD for ||A|| < 1").matmul_t(&m, false, true);
            let step = a.scale(-sign);
            let (mut term, mut sum) = (eye.clone(), eye.clone());
            for k in 0..25 {
                let err = spectral_norm(&inv.sub(&sum));
                let bound = rho.powi(k + 1) / (1.0 - rho);
                prop_assert!(
                    err <= bound * (1.0 + 1e-9) + 1e-12,
                    "sign {}: K = {}: error {:.3e} above the bound {:.3e} (||A|| = {})", sign, k, err, bound, rho
                );
                term = term.matmul(&step);
                sum = sum.add(&term);
            }
        }
    }

    /// eq:gd_rc_neumann: the first-order approximation `(I + M)^-1 ≈ I - M`
    /// with `M = alpha W^T W`, `W = U^T Z`, has error at most
    /// `||M||^2 / (1 - ||M||)`, so the approximated gradient term
    /// `W (I - M)` is within `||W|| ||M||^2 / (1 - ||M||)` of `W (I + M)^-1`.
    #[test]
    fn first_order_neumann_approximation_error_is_quadratic(
        (p, nt, w) in (1usize..6, 1usize..8).prop_flat_map(|(p, nt)| (Just(p), Just(nt), vec(-1.0f64..1.0, p * nt))),
        target in 0.01f64..0.95,
    ) {
        let b = be();
        let w = t(&b, &w, &[p, nt]);
        let g = w.matmul_t(&w, true, false);
        let gn = spectral_norm(&g);
        prop_assume!(gn > 1e-6);
        let m = g.scale(target / gn);
        let rho = spectral_norm(&m);
        let eye = Tensor::eye(&b, nt);
        let exact = m.add(&eye).spd_inverse().expect("SPD");
        let first_order = eye.sub(&m);
        let err = spectral_norm(&exact.sub(&first_order));
        let bound = rho * rho / (1.0 - rho);
        prop_assert!(err <= bound * (1.0 + 1e-9) + 1e-12, "(I + M)^-1 vs I - M: {:.3e} > {:.3e}", err, bound);
        let gerr = spectral_norm(&w.matmul(&exact).sub(&w.matmul(&first_order)));
        let gbound = spectral_norm(&w) * bound;
        prop_assert!(gerr <= gbound * (1.0 + 1e-9) + 1e-12, "gradient term: {:.3e} > {:.3e}", gerr, gbound);
    }
}

// ====================================================================
// Variational bound (Theorem 4.2 = thm:var_concave, eq:U_bound) and its corollary
// ====================================================================

/// Concave, non-decreasing functions with `f(0) = 0`: `log(1 + 3x)` and
/// `x/(1+x)` (strictly concave), `sqrt(x)` (infinite slope at 0), `min(x, 1)` (not strictly concave).
type Concave = (&'static str, fn(f64) -> f64);
const CONCAVE: [Concave; 4] = [
    ("log(1 + 3x)", |x| (3.0 * x).ln_1p()),
    ("sqrt(x)", f64::sqrt),
    ("x / (1 + x)", |x| x / (1.0 + x)),
    ("min(x, 1)", |x| x.min(1.0)),
];

/// How much `sum_i f(x_i)` over `n` terms can move when every `x_i >= 0`
/// moves by at most `delta`: a concave non-decreasing `f` has
/// `f(x + delta) - f(x) <= f(delta) - f(0)`, so `n f(delta)`, plus a relative 1e-12.
fn slack(f: fn(f64) -> f64, n: usize, delta: f64, value: f64) -> f64 {
    n as f64 * f(delta) + 1e-12 * (1.0 + value.abs())
}

/// Eigenvalues (decreasing, clamped at 0) and eigenvectors of a PSD `n x n` matrix.
fn psd_eigen(m: &Tensor<Be>) -> (Vec<f64>, Vec<f64>) {
    let (vals, vecs) = m.sym_eigen().expect("symmetric");
    (vals.to_f64_vec().into_iter().map(|v| v.max(0.0)).collect(), vecs.to_f64_vec())
}

/// Diagonal of `U^T M U` (clamped at 0) for `U` of shape `n x p`.
fn rotated_diagonal(b: &Be, m: &Tensor<Be>, u: &[f64], n: usize, p: usize) -> Vec<f64> {
    let u = t(b, u, &[n, p]);
    let r = u.matmul_t(&m.matmul(&u), true, false).to_f64_vec();
    (0..p).map(|i| r[i * p + i].max(0.0)).collect()
}

proptest! {
    #![proptest_config(config(48))]

    /// Theorem 4.2 (eq:U_bound): for every concave non-decreasing `f` with
    /// `f(0) = 0`, every PSD `M` (of any rank) and every orthogonal `U`,
    /// `sum_i f(lambda_i(M)) <= sum_i f((U^T M U)_ii)`.
    #[test]
    fn variational_bound_holds_for_every_orthogonal_matrix(
        (d, rank) in (1usize..8).prop_flat_map(|d| (Just(d), 1..=d)),
        scale in 0.01f64..20.0,
        seed in any::<u64>(),
    ) {
        let b = be();
        let mut r = StdRng::seed_from_u64(seed);
        let a = t(&b, &uniform(&mut r, d * rank, -1.0, 1.0), &[d, rank]);
        let m = a.matmul_t(&a, false, true).scale(scale);
        let (lambda, _) = psd_eigen(&m);
        let u = orthogonal(&b, &mut r, d);
        let diag = rotated_diagonal(&b, &m, &u, d, d);
        let delta = 1e-12 * lambda[0].max(1.0);
        for (name, f) in CONCAVE {
            let lhs: f64 = lambda.iter().map(|&l| f(l)).sum();
            let rhs: f64 = diag.iter().map(|&x| f(x)).sum();
            prop_assert!(lhs <= rhs + slack(f, d, delta, lhs), "f = {}: F(M) = {} > {}", name, lhs, rhs);
        }
    }

    /// Theorem 4.2, equality case: the bound is attained by any `U` that
    /// diagonalises `M` (its eigenvectors, in any order and with any signs).
    #[test]
    fn variational_bound_is_tight_when_u_diagonalises(
        (d, rank) in (1usize..8).prop_flat_map(|d| (Just(d), 1..=d)),
        scale in 0.01f64..20.0,
        seed in any::<u64>(),
    ) {
        let b = be();
        let mut r = StdRng::seed_from_u64(seed);
        let a = t(&b, &uniform(&mut r, d * rank, -1.0, 1.0), &[d, rank]);
        let m = a.matmul_t(&a, false, true).scale(scale);
        let (lambda, v) = psd_eigen(&m);
        // Permute the columns and flip some signs: still a diagonalising basis.
        let mut perm: Vec<usize> = (0..d).collect();
        perm.shuffle(&mut r);
        let signs: Vec<f64> = (0..d).map(|_| if r.random_bool(0.5) { 1.0 } else { -1.0 }).collect();
        let vp: Vec<f64> = (0..d * d).map(|e| v[(e / d) * d + perm[e % d]] * signs[e % d]).collect();
        let delta = 1e-12 * lambda[0].max(1.0);
        for u in [&v, &vp] {
            let diag = rotated_diagonal(&b, &m, u, d, d);
            for (name, f) in CONCAVE {
                let lhs: f64 = lambda.iter().map(|&l| f(l)).sum();
                let rhs: f64 = diag.iter().map(|&x| f(x)).sum();
                prop_assert!((lhs - rhs).abs() <= 2.0 * slack(f, d, delta, lhs), "f = {}: {} vs {}", name, lhs, rhs);
            }
        }
    }

    /// Corollary 4.3.13 (cor:var_concave_logdet): with
    /// `R_{c,f}(Z, Pi) = 1/2 sum_k (N_k/N) F(Z Diag(pi_k) Z^T / N_k)` (eq:mcr_c_gen)
    /// and `R^var_{c,f}(Z, Pi | U) = 1/2 sum_k (N_k/N) sum_{i<=p} f((U_k^T Z Diag(pi_k) Z^T U_k)_ii / N_k)`
    /// (eq:var_comp), `R_{c,f} <= R^var_{c,f}` for all `U_k in O(d, p)` whose
    /// image contains the image of `Z Diag(pi_k) Z^T`, with equality when each
    /// `U_k` diagonalises it. `N_k = <pi_k, 1>`, `N` the number of tokens.
    #[test]
    fn low_rank_variational_bound_holds_and_is_tight(
        (d, p) in (2usize..8).prop_flat_map(|d| (Just(d), 1..=d)),
        groups in 1usize..4,
        seed in any::<u64>(),
    ) {
        let b = be();
        let mut r = StdRng::seed_from_u64(seed);
        // Each group k: tokens in span(O_k[:, ..r_k]), r_k <= p; U_k = O_k[:, ..p] Q_k with Q_k in O(p).
        let mut rows: Vec<f64> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        let mut weights: Vec<f64> = Vec::new();
        let mut bases: Vec<Vec<f64>> = Vec::new();
        for k in 0..groups {
            let o = orthogonal(&b, &mut r, d);
            let rk = r.random_range(1..=p);
            let basis = columns(&o, d, d, 0, rk);
            for _ in 0..r.random_range(1..6usize) {
                let c = uniform(&mut r, rk, -1.0, 1.0);
                rows.extend((0..d).map(|i| (0..rk).map(|j| basis[i * rk + j] * c[j]).sum::<f64>()));
                owner.push(k);
                weights.push(r.random_range(0.1..1.0));
            }
            let q = orthogonal(&b, &mut r, p);
            let u = t(&b, &columns(&o, d, d, 0, p), &[d, p]).matmul(&t(&b, &q, &[p, p]));
            bases.push(u.to_f64_vec());
        }
        let n = owner.len();
        let z = t(&b, &rows, &[n, d]);
        for (name, f) in CONCAVE {
            let (mut rcf, mut rvar, mut rvar_opt, mut tol) = (0.0, 0.0, 0.0, 0.0);
            for (k, u) in bases.iter().enumerate() {
                let pik: Vec<f64> = (0..n).map(|i| if owner[i] == k { weights[i] } else { 0.0 }).collect();
                let nk: f64 = pik.iter().sum();
                // M_k = Z^T Diag(pi_k) Z / N_k (row layout), d x d, rank <= r_k <= p.
                let mk = z.mul(&t(&b, &pik, &[n, 1])).matmul_t(&z, true, false).scale(1.0 / nk);
                let (lambda, v) = psd_eigen(&mk);
                let w = 0.5 * nk / n as f64;
                rcf += w * lambda.iter().map(|&l| f(l)).sum::<f64>();
                rvar += w * rotated_diagonal(&b, &mk, u, d, p).iter().map(|&x| f(x)).sum::<f64>();
                let top = columns(&v, d, d, 0, p);
                rvar_opt += w * rotated_diagonal(&b, &mk, &top, d, p).iter().map(|&x| f(x)).sum::<f64>();
                tol += w * 2.0 * slack(f, d, 1e-12 * lambda[0].max(1.0), 0.0);
            }
            let tol = tol + 1e-12 * (1.0 + rcf.abs());
            prop_assert!(rcf <= rvar + tol, "f = {}: R_cf = {} > R_var = {}", name, rcf, rvar);
            prop_assert!((rcf - rvar_opt).abs() <= tol, "f = {}: R_cf = {} but tight R_var = {}", name, rcf, rvar_opt);
        }
    }
}

// ====================================================================
// Circulant propositions (prop:circular-conv-1 = 4.1.18, prop:multichannel-circular-conv-1 = 4.1.27)
// ====================================================================

/// `circ(z)` of one channel (`T x T`): column `j` is `z` cyclically shifted by `j`,
/// `circ(z)[i][j] = z[(i - j) mod T]`, so `circ(z) x = z ⊛ x`.
fn circ(z: &[f64]) -> Vec<f64> {
    let n = z.len();
    (0..n * n).map(|e| z[(e / n + n - e % n) % n]).collect()
}

/// The dense `(C T) x (C T)` matrix `sum_{i in samples} circ(zbar_i) circ(zbar_i)^T`
/// of signals `m x C x T`, where `circ(zbar)` stacks `circ(z[c])` over the channels (eqn:W-multichannel).
fn dense_covariance(v: &[f64], c: usize, tt: usize, samples: &[usize]) -> Vec<f64> {
    let ct = c * tt;
    let mut sigma = vec![0.0; ct * ct];
    for &i in samples {
        let blocks: Vec<Vec<f64>> =
            (0..c).map(|ch| circ(&v[(i * c + ch) * tt..(i * c + ch + 1) * tt])).collect();
        for c1 in 0..c {
            for c2 in 0..c {
                for r1 in 0..tt {
                    for r2 in 0..tt {
                        let s: f64 =
                            (0..tt).map(|col| blocks[c1][r1 * tt + col] * blocks[c2][r2 * tt + col]).sum();
                        sigma[(c1 * tt + r1) * ct + c2 * tt + r2] += s;
                    }
                }
            }
        }
    }
    sigma
}

/// The dense operator `a (I + a/T Sigma)^-1` (`(C T) x (C T)`), the block-circulant
/// form of `E(t) = a (I + a S(t))^-1` in the normalisation of rate-core's circulant module.
fn dense_operator(b: &Be, sigma: &[f64], ct: usize, tt: usize, a: f64) -> Vec<f64> {
    let s = t(b, sigma, &[ct, ct]).scale(a / tt as f64).add(&Tensor::eye(b, ct));
    s.spd_inverse().expect("I + PSD is SPD").scale(a).to_f64_vec()
}

/// Class index lists of hard labels.
fn class_members(labels: &[usize], k: usize) -> Vec<Vec<usize>> {
    (0..k).map(|j| (0..labels.len()).filter(|&i| labels[i] == j).collect()).collect()
}

/// Signals `m x C x T` in [-1, 1] with hard labels over `k` classes.
fn signals_with_labels() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>, usize, Vec<usize>)> {
    (1usize..6, 1usize..4, 1usize..10, 1usize..3).prop_flat_map(|(m, c, tt, k)| {
        (Just(m), Just(c), Just(tt), vec(-1.0f64..1.0, m * c * tt), Just(k), vec(0..k, m))
    })
}

/// The dense operators to test: `E` with `alpha = C/(m eps^2)` from every sample,
/// and `C^j` with `alpha_j = C/(m_j eps^2)` from each non-empty class `j`.
fn dense_operators(
    m: usize,
    c: usize,
    labels: &[usize],
    k: usize,
    eps_sq: f64,
) -> Vec<(String, Vec<usize>, f64)> {
    let mut ops = vec![("E".to_string(), (0..m).collect::<Vec<_>>(), c as f64 / (m as f64 * eps_sq))];
    for (j, idx) in class_members(labels, k).into_iter().enumerate() {
        if !idx.is_empty() {
            let a = c as f64 / (idx.len() as f64 * eps_sq);
            ops.push((format!("C^{j}"), idx, a));
        }
    }
    ops
}

proptest! {
    #![proptest_config(config(32))]

    /// Proposition 4.1.27 (and 4.1.18 for C = 1): the operator
    /// `a (I + a/T sum_i circ(zbar_i) circ(zbar_i)^T)^-1` built densely from all
    /// cyclic shifts is block circulant (every `T x T` block is circulant), and
    /// applying it to `vec(xbar)` is the multichannel circular convolution
    /// `(ebar ⊛ xbar)[c] = sum_c' ebar[c, c'] ⊛ xbar[c']`, with `ebar[c, c']` the
    /// first column of block `(c, c')`. Checked for `E` and every `C^j`.
    #[test]
    fn dense_invariant_operators_are_block_circulant_convolutions(
        (m, c, tt, v, k, labels) in signals_with_labels(),
        x in vec(-1.0f64..1.0, 27),
        eps_sq in 0.05f64..2.0,
    ) {
        let b = be();
        let ct = c * tt;
        let x = &x[..ct]; // ct <= 3 * 9
        for (name, idx, a) in dense_operators(m, c, &labels, k, eps_sq) {
            let e = dense_operator(&b, &dense_covariance(&v, c, tt, &idx), ct, tt, a);
            let scale = e.iter().fold(1.0f64, |s, x| s.max(x.abs()));
            for r1 in 0..ct {
                for r2 in 0..ct {
                    let (c1, i1, c2, i2) = (r1 / tt, r1 % tt, r2 / tt, r2 % tt);
                    let shifted = e[(c1 * tt + (i1 + 1) % tt) * ct + c2 * tt + (i2 + 1) % tt];
                    prop_assert!(
                        (e[r1 * ct + r2] - shifted).abs() <= 1e-10 * scale,
                        "{}: block ({}, {}) is not circulant at ({}, {})", name, c1, c2, i1, i2
                    );
                }
            }
            let applied = t(&b, &e, &[ct, ct]).matmul(&t(&b, x, &[ct, 1])).to_f64_vec();
            let conv: Vec<f64> = (0..ct)
                .map(|row| {
                    let (c1, i) = (row / tt, row % tt);
                    (0..c)
                        .map(|c2| {
                            (0..tt).map(|j| e[(c1 * tt + j) * ct + c2 * tt] * x[c2 * tt + (i + tt - j) % tt]).sum::<f64>()
                        })
                        .sum()
                })
                .collect();
            check_close(&format!("{name} vec(x) vs ebar ⊛ x"), &applied, &conv, 1e-10)?;
        }
    }

    /// Remark on 4.1.27 and rate-core's circulant module: the unitary DFT
    /// block-diagonalises the dense operator, `F Ebar_{c,c'} F^H = diag_t E(t)[c, c']`,
    /// and the per-frequency `C x C` inverses computed through the FFT
    /// (`circulant_expansion_operators`, `circulant_compression_operators`)
    /// equal those diagonals, for even and odd `T`; the frequencies above
    /// `T/2` that are not stored are the conjugates `E(T - t) = conj E(t)`.
    #[test]
    fn frequency_domain_operators_equal_dense_inverse(
        (m, c, tt, v, k, labels) in signals_with_labels(),
        eps_sq in 0.05f64..2.0,
    ) {
        let b = be();
        let ct = c * tt;
        let f = tt / 2 + 1;
        let vt = t(&b, &v, &[m, c, tt]);
        let e_lib = circulant_expansion_operators(&vt, eps_sq).expect("valid signals");
        let c_lib = circulant_compression_operators(&vt, &labels, k, eps_sq).expect("valid signals");
        let (er, ei) = e_lib.to_f64_vecs();
        let (cr, ci) = c_lib.to_f64_vecs();
        for (name, idx, a) in dense_operators(m, c, &labels, k, eps_sq) {
            let (lr, li): (&[f64], &[f64]) = if name == "E" {
                (&er, &ei)
            } else {
                let j: usize = name[2..].parse().expect("class index");
                (&cr[j * f * c * c..(j + 1) * f * c * c], &ci[j * f * c * c..(j + 1) * f * c * c])
            };
            let e = dense_operator(&b, &dense_covariance(&v, c, tt, &idx), ct, tt, a);
            let scale = e.iter().fold(1.0f64, |s, x| s.max(x.abs()));
            // Unitary DFT F[t][s] = e^{-2 pi i t s / T} / sqrt(T).
            let w = |p: usize, q: usize| {
                let th = -2.0 * PI * ((p * q) % tt) as f64 / tt as f64;
                (th.cos() / (tt as f64).sqrt(), th.sin() / (tt as f64).sqrt())
            };
            for c1 in 0..c {
                for c2 in 0..c {
                    for t1 in 0..tt {
                        for t2 in 0..tt {
                            // (F B F^H)[t1][t2] = sum_{s1, s2} F[t1][s1] B[s1][s2] conj(F[t2][s2])
                            let (mut re, mut im) = (0.0, 0.0);
                            for s1 in 0..tt {
                                for s2 in 0..tt {
                                    let bv = e[(c1 * tt + s1) * ct + c2 * tt + s2];
                                    let (ar, ai) = w(t1, s1);
                                    let (br, bi) = w(t2, s2);
                                    // (ar + i ai) * bv * (br - i bi)
                                    re += bv * (ar * br + ai * bi);
                                    im += bv * (ai * br - ar * bi);
                                }
                            }
                            let (want_re, want_im) = if t1 != t2 {
                                (0.0, 0.0)
                            } else if t1 < f {
                                (lr[(t1 * c + c1) * c + c2], li[(t1 * c + c1) * c + c2])
                            } else {
                                let tc = tt - t1;
                                (lr[(tc * c + c1) * c + c2], -li[(tc * c + c1) * c + c2])
                            };
                            prop_assert!(
                                (re - want_re).abs() <= 1e-10 * scale && (im - want_im).abs() <= 1e-10 * scale,
                                "{}: T = {}, block ({}, {}), frequencies ({}, {}): dense {} + {}i vs {} + {}i",
                                name, tt, c1, c2, t1, t2, re, im, want_re, want_im
                            );
                        }
                    }
                }
            }
        }
    }

    /// The identity in the documentation of rate-core's circulant module:
    /// `circulant_coding_rate = 1/(2T) sum_t logdet(I + alpha S(t))
    ///  = (1/T) 1/2 logdet(I_{CT} + alpha/T sum_i circ(zbar_i) circ(zbar_i)^T)`
    /// with `alpha = C/(m eps^2)`, and likewise
    /// `circulant_compression_rate = sum_j (m_j/m) (1/T) 1/2 logdet(I + alpha_j/T Sigma_j)`.
    #[test]
    fn circulant_rates_equal_dense_logdet(
        (m, c, tt, v, k, labels) in signals_with_labels(),
        eps_sq in 0.05f64..2.0,
    ) {
        let b = be();
        let ct = c * tt;
        let vt = t(&b, &v, &[m, c, tt]);
        let half_logdet = |idx: &[usize], a: f64| {
            let s = t(&b, &dense_covariance(&v, c, tt, idx), &[ct, ct]).scale(a / tt as f64).add(&Tensor::eye(&b, ct));
            0.5 * s.spd_logdet().expect("SPD").scalar() / tt as f64
        };
        let all: Vec<usize> = (0..m).collect();
        let r_dense = half_logdet(&all, c as f64 / (m as f64 * eps_sq));
        let r_lib = circulant_coding_rate(&vt, eps_sq).expect("valid signals");
        check_close("circulant R", &[r_lib], &[r_dense], 1e-10)?;
        let rc_dense: f64 = class_members(&labels, k)
            .iter()
            .filter(|idx| !idx.is_empty())
            .map(|idx| idx.len() as f64 / m as f64 * half_logdet(idx, c as f64 / (idx.len() as f64 * eps_sq)))
            .sum();
        let rc_lib = circulant_compression_rate(&vt, &labels, k, eps_sq).expect("valid signals");
        check_close("circulant Rc", &[rc_lib], &[rc_dense], 1e-10)?;
    }

    /// Shift invariance: cyclically shifting any sample in time leaves the
    /// circulant rates unchanged (every shift is already in `circ(zbar_i)`).
    #[test]
    fn circulant_rates_are_invariant_to_cyclic_shifts(
        (m, c, tt, v, k, labels) in signals_with_labels(),
        shifts in vec(0usize..10, 6),
        eps_sq in 0.05f64..2.0,
    ) {
        let b = be();
        let mut w = v.clone();
        for i in 0..m {
            for ch in 0..c {
                for s in 0..tt {
                    w[(i * c + ch) * tt + (s + shifts[i]) % tt] = v[(i * c + ch) * tt + s];
                }
            }
        }
        let (vt, wt) = (t(&b, &v, &[m, c, tt]), t(&b, &w, &[m, c, tt]));
        let r = [circulant_coding_rate(&vt, eps_sq).expect("valid"), circulant_compression_rate(&vt, &labels, k, eps_sq).expect("valid")];
        let rs = [circulant_coding_rate(&wt, eps_sq).expect("valid"), circulant_compression_rate(&wt, &labels, k, eps_sq).expect("valid")];
        check_close("circulant rates after cyclic shifts", &rs, &r, 1e-10)?;
    }
}

// ====================================================================
// Rate reduction: invariance, sign, and orthogonal subspaces (Exercise 4.1)
// ====================================================================

proptest! {
    #![proptest_config(config(48))]

    /// `R`, `R_c` and `ΔR` (4.1.1) are invariant to an orthogonal transform of
    /// the features, `Z -> Z Q` (rows are samples), for hard and soft memberships.
    #[test]
    fn rate_reduction_is_invariant_to_orthogonal_feature_transforms(
        (m, d, z, k, labels) in features_with_labels(),
        soft in vec(0.05f64..1.0, 24),
        eps_sq in 0.05f64..2.0,
        seed in any::<u64>(),
    ) {
        let b = be();
        let mut r = StdRng::seed_from_u64(seed);
        let q = t(&b, &orthogonal(&b, &mut r, d), &[d, d]);
        let zt = t(&b, &z, &[m, d]);
        let zq = zt.matmul(&q);
        let p = t(&b, &normalise_columns(&soft[..k * m], k, m), &[k, m]);
        for pi in [Membership::Hard { labels: &labels, classes: k }, Membership::Soft(&p)] {
            let a = rate_reduction(&zt, &pi, eps_sq).expect("valid input");
            let bq = rate_reduction(&zq, &pi, eps_sq).expect("valid input");
            check_close("R, Rc, ΔR under Z -> Z Q", &[bq.r, bq.rc, bq.delta_r], &[a.r, a.rc, a.delta_r], 1e-10)?;
        }
    }

    /// `ΔR >= 0` whenever the memberships partition the samples (hard labels,
    /// or soft columns summing to one): `R_c = 1/2 sum_j gamma_j logdet(I + alpha Z^T Pi_j Z / gamma_j)`
    /// and `logdet` is concave, so `R_c <= 1/2 logdet(I + alpha Z^T Z) = R` (Jensen).
    #[test]
    fn rate_reduction_is_non_negative(
        (m, d, z, k, labels) in features_with_labels(),
        soft in vec(0.05f64..1.0, 24),
        eps_sq in 0.05f64..2.0,
    ) {
        let b = be();
        let zt = t(&b, &z, &[m, d]);
        let p = t(&b, &normalise_columns(&soft[..k * m], k, m), &[k, m]);
        for pi in [Membership::Hard { labels: &labels, classes: k }, Membership::Soft(&p)] {
            let rates = rate_reduction(&zt, &pi, eps_sq).expect("valid input");
            prop_assert!(rates.delta_r >= -1e-12 * (1.0 + rates.r), "ΔR = {} < 0 ({:?})", rates.delta_r, rates);
        }
    }

    /// Exercise 4.1.2, inequality: with one `alpha` for all,
    /// `logdet(I + alpha Z Z^T) <= sum_k logdet(I + alpha Z_k Z_k^T)`.
    #[test]
    fn coding_rate_is_subadditive_over_classes(
        (m, d, z, k, labels) in features_with_labels(),
        alpha in 0.05f64..20.0,
    ) {
        let b = be();
        let zt = t(&b, &z, &[m, d]);
        let whole = logdet_i_plus_gram(&zt, alpha).expect("SPD");
        let parts: f64 = class_members(&labels, k)
            .iter()
            .map(|idx| logdet_i_plus_gram(&zt.index_select(0, idx), alpha).expect("SPD"))
            .sum();
        prop_assert!(whole <= parts + 1e-10 * (1.0 + parts.abs()), "logdet of the whole {} > sum over classes {}", whole, parts);
    }

    /// Exercise 4.1.2, equality: when the classes lie in mutually orthogonal
    /// subspaces (`Z_k^T Z_l = 0`, chapter layout), `R(Z) = sum_k R_alpha(Z_k)`
    /// and the rate reduction has the closed form, with `s_{k,i}` the singular
    /// values of `Z_k`, `alpha = d/(m eps^2)`, `alpha_k = d/(m_k eps^2)` (= `m alpha / m_k`):
    /// `ΔR = sum_k sum_i [1/2 log(1 + alpha s_{k,i}^2) - m_k/(2m) log(1 + alpha_k s_{k,i}^2)]`.
    #[test]
    fn rate_reduction_matches_closed_form_on_orthogonal_subspaces(
        d in 2usize..9,
        classes in 1usize..5,
        eps_sq in 0.05f64..2.0,
        seed in any::<u64>(),
    ) {
        let b = be();
        let mut r = StdRng::seed_from_u64(seed);
        let o = orthogonal(&b, &mut r, d);
        let mut first = 0;
        let mut rows: Vec<(usize, Vec<f64>)> = Vec::new();
        let mut spectra: Vec<(usize, Vec<f64>)> = Vec::new();
        for k in 0..classes {
            if first == d {
                break;
            }
            let rk = r.random_range(1..=(d - first).min(3));
            let mk = rk + r.random_range(0..3usize);
            let p = columns(&o, d, d, first, first + rk); // d x rk, orthonormal, disjoint across classes
            first += rk;
            let q = columns(&orthogonal(&b, &mut r, mk), mk, mk, 0, rk); // mk x rk, orthonormal
            let s = uniform(&mut r, rk, 0.1, 2.0);
            // Rows of class k: Q diag(s) P^T (mk x d).
            for i in 0..mk {
                let row: Vec<f64> = (0..d).map(|col| (0..rk).map(|j| q[i * rk + j] * s[j] * p[col * rk + j]).sum()).collect();
                rows.push((k, row));
            }
            spectra.push((mk, s));
        }
        rows.shuffle(&mut r);
        let m = rows.len();
        let k = spectra.len();
        let labels: Vec<usize> = rows.iter().map(|(l, _)| *l).collect();
        let data: Vec<f64> = rows.iter().flat_map(|(_, row)| row.iter().copied()).collect();
        let zt = t(&b, &data, &[m, d]);
        let alpha = d as f64 / (m as f64 * eps_sq);
        let mut r_closed = 0.0;
        let mut rc_closed = 0.0;
        for (mk, s) in &spectra {
            let ak = d as f64 / (*mk as f64 * eps_sq);
            r_closed += s.iter().map(|x| 0.5 * (alpha * x * x).ln_1p()).sum::<f64>();
            rc_closed += *mk as f64 / (2.0 * m as f64) * s.iter().map(|x| (ak * x * x).ln_1p()).sum::<f64>();
        }
        let rates = rate_reduction(&zt, &Membership::Hard { labels: &labels, classes: k }, eps_sq).expect("valid input");
        check_close("R, Rc, ΔR vs closed form", &[rates.r, rates.rc, rates.delta_r], &[r_closed, rc_closed, r_closed - rc_closed], 1e-10)?;
        // R(Z) = sum_k R_alpha(Z_k) (equality in 4.1.2).
        let parts: f64 = class_members(&labels, k)
            .iter()
            .map(|idx| 0.5 * logdet_i_plus_gram(&zt.index_select(0, idx), alpha).expect("SPD"))
            .sum();
        check_close("R(Z) = sum_k R(Z_k)", &[rates.r], &[parts], 1e-10)?;
    }
}
