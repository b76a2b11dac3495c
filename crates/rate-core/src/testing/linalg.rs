//! Conformance checks of matmul and of the real SPD and complex Hermitian linear algebra, with residual checks against plain f64 references.

use super::reference::*;
use super::*;
use crate::{Backend, ComplexTensor, Error, Tensor};

// ====================================================================
// Checks: matmul
// ====================================================================

/// `matmul` with all four transpose combinations over small, odd and large
/// sizes (the large one reaches the blocked or parallel kernels).
pub fn check_matmul<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(13);
    for (m, k, n) in [(1usize, 1usize, 1usize), (3, 4, 5), (1, 7, 1), (7, 1, 6), (17, 33, 9), (65, 130, 66)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let sa = if ta { [k, m] } else { [m, k] };
            let sb = if tb { [n, k] } else { [k, n] };
            let (a, av) = random_input(b, &mut r, &sa, -1.0, 1.0);
            let (bb, bv) = random_input(b, &mut r, &sb, -1.0, 1.0);
            let out = a.matmul_t(&bb, ta, tb);
            assert_eq!(out.shape(), &[m, n]);
            let want = ref_matmul(&av, &bv, m, k, n, ta, tb);
            assert_close_scaled(
                &format!("matmul {m}x{k}x{n} trans_a={ta} trans_b={tb}"),
                &out.to_f64_vec(),
                &want,
                tol,
                (k as f64).max(1.0),
            );
        }
    }
}

/// Batched `matmul`: both operands batched (with two leading axes), and a 2-D
/// operand shared by the whole batch on either side, with every transpose.
pub fn check_matmul_batched<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(14);
    let (m, k, n) = (4usize, 6usize, 3usize);
    let lead = [2usize, 3];
    let batch: usize = lead.iter().product();
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let ma = if ta { [k, m] } else { [m, k] };
        let mb = if tb { [n, k] } else { [k, n] };
        let sa = [lead[0], lead[1], ma[0], ma[1]];
        let sb = [lead[0], lead[1], mb[0], mb[1]];
        let (a, av) = random_input(b, &mut r, &sa, -1.0, 1.0);
        let (bb, bv) = random_input(b, &mut r, &sb, -1.0, 1.0);
        let (a2, av2) = random_input(b, &mut r, &ma, -1.0, 1.0);
        let (b2, bv2) = random_input(b, &mut r, &mb, -1.0, 1.0);
        let what = format!("trans_a={ta} trans_b={tb}");
        // both batched
        let out = a.matmul_t(&bb, ta, tb);
        assert_eq!(out.shape(), &[lead[0], lead[1], m, n]);
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| {
                ref_matmul(&av[i * m * k..(i + 1) * m * k], &bv[i * k * n..(i + 1) * k * n], m, k, n, ta, tb)
            })
            .collect();
        assert_close_scaled(&format!("batched matmul {what}"), &out.to_f64_vec(), &want, tol, k as f64);
        // shared right operand
        let out = a.matmul_t(&b2, ta, tb);
        assert_eq!(out.shape(), &[lead[0], lead[1], m, n]);
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| ref_matmul(&av[i * m * k..(i + 1) * m * k], &bv2, m, k, n, ta, tb))
            .collect();
        assert_close_scaled(
            &format!("matmul, shared right operand, {what}"),
            &out.to_f64_vec(),
            &want,
            tol,
            k as f64,
        );
        // shared left operand
        let out = a2.matmul_t(&bb, ta, tb);
        assert_eq!(out.shape(), &[lead[0], lead[1], m, n]);
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| ref_matmul(&av2, &bv[i * k * n..(i + 1) * k * n], m, k, n, ta, tb))
            .collect();
        assert_close_scaled(
            &format!("matmul, shared left operand, {what}"),
            &out.to_f64_vec(),
            &want,
            tol,
            k as f64,
        );
    }
    // A large batch of small products (the per-class operators of ReduNet).
    let (a, av) = random_input(b, &mut r, &[200, 5, 5], -1.0, 1.0);
    let (x, xv) = random_input(b, &mut r, &[5, 8], -1.0, 1.0);
    let want: Vec<f64> =
        (0..200).flat_map(|i| ref_matmul(&av[i * 25..(i + 1) * 25], &xv, 5, 5, 8, false, false)).collect();
    assert_close_scaled("matmul of 200 x (5x5) by a shared 5x8", &a.matmul(&x).to_f64_vec(), &want, tol, 5.0);
}

/// `matmul` with an empty inner dimension gives zeros; empty outer dimensions give empty results.
pub fn check_matmul_empty<B: Backend>(b: &B) {
    let a = Tensor::<B>::zeros(b, &[3, 0]);
    let c = Tensor::<B>::zeros(b, &[0, 4]);
    let out = a.matmul(&c);
    assert_eq!(out.shape(), &[3, 4]);
    assert_eq!(out.to_f64_vec(), vec![0.0; 12], "matmul with k = 0");
    let out = Tensor::<B>::zeros(b, &[0, 5]).matmul(&Tensor::zeros(b, &[5, 2]));
    assert_eq!(out.shape(), &[0, 2]);
    assert!(out.to_f64_vec().is_empty());
    let out = Tensor::<B>::zeros(b, &[2, 5]).matmul_t(&Tensor::zeros(b, &[0, 5]), false, true);
    assert_eq!(out.shape(), &[2, 0]);
}

// ====================================================================
// Checks: real SPD linear algebra
// ====================================================================

/// Matrix sizes for the solver checks: tiny, small, and one above the CPU
/// backend's hand-written-loop threshold (64), so both of its paths are tested.
pub(crate) const SPD_SIZES: [(usize, usize); 4] = [(1, 1), (3, 4), (2, 9), (1, 70)];

/// `cholesky`: the factor matches the reference (it is unique), its strict
/// upper triangle is zero, and `L L^T` reproduces the input.
pub fn check_cholesky<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(15);
    for (batch, n) in SPD_SIZES {
        let (a, av) = input(b, &spd_batch(&mut r, batch, n, 0.5), &[batch, n, n]);
        let l = a.cholesky().unwrap_or_else(|e| panic!("cholesky of SPD {batch}x{n}x{n}: {e}"));
        assert_eq!(l.shape(), &[batch, n, n]);
        let lv = l.to_f64_vec();
        for i in 0..batch {
            let li = &lv[i * n * n..(i + 1) * n * n];
            let want = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n)
                .expect("reference Cholesky of an SPD matrix");
            assert_close(&format!("cholesky factor, matrix {i} of {batch}x{n}x{n}"), li, &want, tol);
            for row in 0..n {
                for col in row + 1..n {
                    assert_eq!(li[row * n + col], 0.0, "cholesky: upper entry ({row}, {col}) not zero");
                }
            }
        }
        let llt = l.matmul_t(&l, false, true).to_f64_vec();
        assert_close(&format!("L L^T = A for {batch}x{n}x{n}"), &llt, &av, tol);
    }
}

/// `spd_solve` matches the reference solution and its residual `A X - B` is small.
pub fn check_spd_solve<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(16);
    for (batch, n) in SPD_SIZES {
        for nrhs in [1usize, 3, n + 2] {
            let (a, av) = input(b, &spd_batch(&mut r, batch, n, 0.5), &[batch, n, n]);
            let (rhs, bv) = random_input(b, &mut r, &[batch, n, nrhs], -1.0, 1.0);
            let x = a.spd_solve(&rhs).unwrap_or_else(|e| panic!("spd_solve {batch}x{n}x{n}: {e}"));
            assert_eq!(x.shape(), &[batch, n, nrhs]);
            let want: Vec<f64> = (0..batch)
                .flat_map(|i| {
                    let l = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n).expect("SPD");
                    ref_chol_solve(&l, &bv[i * n * nrhs..(i + 1) * n * nrhs], n, nrhs)
                })
                .collect();
            assert_close(&format!("spd_solve {batch}x{n}x{n}, {nrhs} rhs"), &x.to_f64_vec(), &want, tol);
            assert_close(
                &format!("spd_solve residual {batch}x{n}x{n}"),
                &a.matmul(&x).to_f64_vec(),
                &bv,
                tol,
            );
        }
    }
    // A 2-D system with a shared-free single matrix.
    let (a, av) = input(b, &spd_batch(&mut r, 1, 5, 0.5), &[5, 5]);
    let (rhs, bv) = random_input(b, &mut r, &[5, 2], -1.0, 1.0);
    let l = ref_cholesky(&av, 5).expect("SPD");
    assert_close(
        "spd_solve of a 2-D system",
        &a.spd_solve(&rhs).expect("SPD").to_f64_vec(),
        &ref_chol_solve(&l, &bv, 5, 2),
        tol,
    );
}

/// `spd_inverse` matches the reference inverse, is symmetric, and `A A^-1 = I`.
pub fn check_spd_inverse<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(17);
    for (batch, n) in SPD_SIZES {
        let (a, av) = input(b, &spd_batch(&mut r, batch, n, 0.5), &[batch, n, n]);
        let inv = a.spd_inverse().unwrap_or_else(|e| panic!("spd_inverse {batch}x{n}x{n}: {e}"));
        let iv = inv.to_f64_vec();
        let want: Vec<f64> = (0..batch)
            .flat_map(|i| {
                let l = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n).expect("SPD");
                ref_chol_solve(&l, &identity(n), n, n)
            })
            .collect();
        assert_close(&format!("spd_inverse {batch}x{n}x{n}"), &iv, &want, tol);
        let ident: Vec<f64> = (0..batch).flat_map(|_| identity(n)).collect();
        assert_close(&format!("A A^-1 = I for {batch}x{n}x{n}"), &a.matmul(&inv).to_f64_vec(), &ident, tol);
        assert_close(&format!("spd_inverse symmetric {batch}x{n}x{n}"), &inv.t().to_f64_vec(), &iv, tol);
    }
}

/// `spd_logdet` equals `2 sum log L_ii` of the reference factor; its shape is the batch shape.
pub fn check_spd_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(18);
    for (batch, n) in SPD_SIZES {
        for shift in [0.5, 3.0] {
            let (a, av) = input(b, &spd_batch(&mut r, batch, n, shift), &[batch, n, n]);
            let ld = a.spd_logdet().unwrap_or_else(|e| panic!("spd_logdet {batch}x{n}x{n}: {e}"));
            assert_eq!(ld.shape(), &[batch]);
            let want: Vec<f64> = (0..batch)
                .map(|i| {
                    let l = ref_cholesky(&av[i * n * n..(i + 1) * n * n], n).expect("SPD");
                    2.0 * (0..n).map(|j| l[j * n + j].ln()).sum::<f64>()
                })
                .collect();
            assert_close(&format!("spd_logdet {batch}x{n}x{n} shift {shift}"), &ld.to_f64_vec(), &want, tol);
        }
    }
    // A 2-D input gives a rank-0 result; diag(2, 3, 4) has log det log 24.
    let d = Tensor::<B>::from_f64(b, &[2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0], &[3, 3]);
    let ld = d.spd_logdet().expect("diagonal SPD");
    assert_eq!(ld.shape(), &[] as &[usize]);
    assert_close("spd_logdet of diag(2, 3, 4)", &[ld.scalar()], &[24f64.ln()], tol);
}

pub(crate) fn expect_not_pd<T: std::fmt::Debug>(what: &str, res: crate::Result<T>, index: usize) {
    match res {
        Err(Error::NotPositiveDefinite { index: i, .. }) if i == index => {}
        other => panic!("{what}: expected NotPositiveDefinite for matrix {index}, got {other:?}"),
    }
}

/// Every SPD routine returns [`Error::NotPositiveDefinite`] naming the failing
/// matrix of the batch, for an indefinite matrix (small and large) and for a
/// zero matrix; the message says "not positive definite".
pub fn check_spd_not_positive_definite<B: Backend>(b: &B) {
    let mut r = rng(19);
    for n in [1usize, 4, 70] {
        let good = spd_batch(&mut r, 2, n, 0.5);
        let mut data = good[..n * n].to_vec();
        data.extend(indefinite(n));
        data.extend(&good[n * n..]);
        let a = Tensor::<B>::from_f64(b, &data, &[3, n, n]);
        let rhs = Tensor::<B>::full(b, &[3, n, 2], 1.0);
        expect_not_pd(&format!("cholesky n={n}"), a.cholesky(), 1);
        expect_not_pd(&format!("spd_inverse n={n}"), a.spd_inverse(), 1);
        expect_not_pd(&format!("spd_logdet n={n}"), a.spd_logdet(), 1);
        expect_not_pd(&format!("spd_solve n={n}"), a.spd_solve(&rhs), 1);
        let zero = Tensor::<B>::zeros(b, &[n, n]);
        expect_not_pd(&format!("spd_inverse of zeros n={n}"), zero.spd_inverse(), 0);
        let msg = a.spd_logdet().map(|_| ()).expect_err("indefinite matrix").to_string();
        assert!(
            msg.contains("not positive definite") && msg.contains("spd_logdet"),
            "unclear message: {msg}"
        );
    }
}

/// `sym_eigen` by residuals, as faer tests its decompositions, independent of
/// any eigen-solver: eigenvalues decreasing, `A V = V diag(l)` and
/// `V^T V = I` (together they make `l` the spectrum of `A`), and, where the
/// spectrum is known by construction (`Q diag(3, 3, 1, -2) Q^T`, a diagonal
/// matrix), the eigenvalues themselves.
pub fn check_sym_eigen<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(20);
    let mut cases: Vec<(usize, usize, Vec<f64>, Option<Vec<f64>>)> = Vec::new();
    for (batch, n) in [(1usize, 1usize), (3, 5), (1, 16), (1, 70)] {
        let mut data = Vec::new();
        for _ in 0..batch {
            let x = uniform(&mut r, n * n, -1.0, 1.0);
            data.extend((0..n * n).map(|i| x[i] + x[(i % n) * n + i / n]));
        }
        cases.push((batch, n, data, None));
    }
    // Repeated eigenvalue: Q diag(3, 3, 1, -2) Q^T with a Householder Q.
    let n = 4;
    let u = [1.0, -2.0, 0.5, 1.5];
    let uu: f64 = u.iter().map(|x| x * x).sum();
    let q: Vec<f64> = (0..16).map(|i| identity(n)[i] - 2.0 * u[i / n] * u[i % n] / uu).collect();
    let mut dq = q.clone();
    for (i, v) in dq.iter_mut().enumerate() {
        *v *= [3.0, 3.0, 1.0, -2.0][i % n];
    }
    cases.push((1, n, ref_matmul(&dq, &q, n, n, n, false, true), Some(vec![3.0, 3.0, 1.0, -2.0])));
    cases.push((1, 3, vec![2.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0], Some(vec![5.0, 2.0, -1.0])));
    for (batch, n, data, known) in cases {
        let (a, av) = input(b, &data, &[batch, n, n]);
        let (vals, vecs) = a.sym_eigen().unwrap_or_else(|e| panic!("sym_eigen {batch}x{n}x{n}: {e}"));
        assert_eq!(vals.shape(), &[batch, n]);
        assert_eq!(vecs.shape(), &[batch, n, n]);
        let (lv, vv) = (vals.to_f64_vec(), vecs.to_f64_vec());
        for i in 0..batch {
            let ai = &av[i * n * n..(i + 1) * n * n];
            let li = &lv[i * n..(i + 1) * n];
            let vi = &vv[i * n * n..(i + 1) * n * n];
            // |lambda| <= ||A||_F, so the Frobenius norm bounds the scale of every residual
            let scale = ai.iter().map(|x| x * x).sum::<f64>().sqrt().max(1.0);
            let what = format!("sym_eigen matrix {i} of {batch}x{n}x{n}");
            assert!(li.windows(2).all(|w| w[0] >= w[1]), "{what}: eigenvalues not decreasing: {li:?}");
            if let Some(want) = &known {
                assert_close_scaled(&format!("{what}: eigenvalues"), li, want, tol, scale);
            }
            let av_ = ref_matmul(ai, vi, n, n, n, false, false);
            let vl: Vec<f64> = (0..n * n).map(|e| vi[e] * li[e % n]).collect();
            assert_close_scaled(&format!("{what}: A V = V diag(l)"), &av_, &vl, tol, scale);
            let vtv = ref_matmul(vi, vi, n, n, n, true, false);
            assert_close_scaled(&format!("{what}: V^T V = I"), &vtv, &identity(n), tol, 1.0);
        }
    }
}

// ====================================================================
// Checks: complex Hermitian linear algebra
// ====================================================================

/// `batch` random Hermitian positive definite `n x n` matrices on the backend,
/// and their values as the backend holds them (rounded to its precision).
pub(crate) fn hpd_input<B: Backend>(
    b: &B,
    r: &mut rand::rngs::StdRng,
    batch: usize,
    n: usize,
) -> (crate::ComplexTensor<B>, Vec<C64>) {
    let (re, im) = hpd_batch(r, batch, n);
    let (re, im) = (rounded::<B>(&re), rounded::<B>(&im));
    let a = crate::ComplexTensor::new(
        Tensor::from_f64(b, &re, &[batch, n, n]),
        Tensor::from_f64(b, &im, &[batch, n, n]),
    );
    (a, to_c64(&re, &im))
}

/// `herm_inverse` matches the reference inverse and `A A^-1 = I`.
pub fn check_herm_inverse<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(21);
    for (batch, n) in SPD_SIZES {
        let (a, ac) = hpd_input(b, &mut r, batch, n);
        let inv = a.herm_inverse().unwrap_or_else(|e| panic!("herm_inverse {batch}x{n}x{n}: {e}"));
        let (ir, ii) = inv.to_f64_vecs();
        let mut want = Vec::new();
        let mut prod = Vec::new();
        for i in 0..batch {
            let ai = &ac[i * n * n..(i + 1) * n * n];
            let l = ref_herm_cholesky(ai, n).expect("HPD");
            let eye: Vec<C64> = identity(n).into_iter().map(|v| C64::new(v, 0.0)).collect();
            want.extend(ref_herm_solve(&l, &eye, n, n));
            prod.extend(ref_cmatmul(
                ai,
                &to_c64(&ir[i * n * n..(i + 1) * n * n], &ii[i * n * n..(i + 1) * n * n]),
                n,
                n,
                n,
            ));
        }
        let (wr, wi) = planes(&want);
        assert_close(&format!("herm_inverse re {batch}x{n}x{n}"), &ir, &wr, tol);
        assert_close(&format!("herm_inverse im {batch}x{n}x{n}"), &ii, &wi, tol);
        let (pr, pi) = planes(&prod);
        let ident: Vec<f64> = (0..batch).flat_map(|_| identity(n)).collect();
        assert_close(&format!("A A^-1 = I (re) {batch}x{n}x{n}"), &pr, &ident, tol);
        assert_close_scaled(&format!("A A^-1 = I (im) {batch}x{n}x{n}"), &pi, &vec![0.0; pi.len()], tol, 1.0);
    }
}

/// `herm_solve` matches the reference solution for several right-hand sides.
pub fn check_herm_solve<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(22);
    for (batch, n) in SPD_SIZES {
        for nrhs in [1usize, 3] {
            let (a, ac) = hpd_input(b, &mut r, batch, n);
            let (br, bi) = (
                rounded::<B>(&uniform(&mut r, batch * n * nrhs, -1.0, 1.0)),
                rounded::<B>(&uniform(&mut r, batch * n * nrhs, -1.0, 1.0)),
            );
            let rhs = crate::ComplexTensor::new(
                Tensor::from_f64(b, &br, &[batch, n, nrhs]),
                Tensor::from_f64(b, &bi, &[batch, n, nrhs]),
            );
            let x = a.herm_solve(&rhs).unwrap_or_else(|e| panic!("herm_solve {batch}x{n}x{n}: {e}"));
            assert_eq!(x.shape(), &[batch, n, nrhs]);
            let bc = to_c64(&br, &bi);
            let want: Vec<C64> = (0..batch)
                .flat_map(|i| {
                    let l = ref_herm_cholesky(&ac[i * n * n..(i + 1) * n * n], n).expect("HPD");
                    ref_herm_solve(&l, &bc[i * n * nrhs..(i + 1) * n * nrhs], n, nrhs)
                })
                .collect();
            let (wr, wi) = planes(&want);
            let (xr, xi) = x.to_f64_vecs();
            assert_close(&format!("herm_solve re {batch}x{n}x{n}, {nrhs} rhs"), &xr, &wr, tol);
            assert_close(&format!("herm_solve im {batch}x{n}x{n}, {nrhs} rhs"), &xi, &wi, tol);
        }
    }
}

/// `herm_logdet` equals `2 sum log L_ii` of the reference complex factor.
pub fn check_herm_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(23);
    for (batch, n) in SPD_SIZES {
        let (a, ac) = hpd_input(b, &mut r, batch, n);
        let ld = a.herm_logdet().unwrap_or_else(|e| panic!("herm_logdet {batch}x{n}x{n}: {e}"));
        assert_eq!(ld.shape(), &[batch]);
        let want: Vec<f64> = (0..batch)
            .map(|i| {
                let l = ref_herm_cholesky(&ac[i * n * n..(i + 1) * n * n], n).expect("HPD");
                2.0 * (0..n).map(|j| l[j * n + j].re.ln()).sum::<f64>()
            })
            .collect();
        assert_close(&format!("herm_logdet {batch}x{n}x{n}"), &ld.to_f64_vec(), &want, tol);
    }
}

/// The Hermitian routines return [`Error::NotPositiveDefinite`] naming the failing matrix.
pub fn check_herm_not_positive_definite<B: Backend>(b: &B) {
    let mut r = rng(24);
    for n in [1usize, 4, 70] {
        let (mut re, mut im) = hpd_batch(&mut r, 2, n);
        // Matrix 1: an indefinite real symmetric matrix (a Hermitian one with zero imaginary part).
        re.splice(n * n..n * n, indefinite(n));
        im.splice(n * n..n * n, vec![0.0; n * n]);
        let a = crate::ComplexTensor::new(
            Tensor::<B>::from_f64(b, &re, &[3, n, n]),
            Tensor::from_f64(b, &im, &[3, n, n]),
        );
        let rhs =
            crate::ComplexTensor::new(Tensor::<B>::full(b, &[3, n, 1], 1.0), Tensor::zeros(b, &[3, n, 1]));
        expect_not_pd(&format!("herm_inverse n={n}"), a.herm_inverse(), 1);
        expect_not_pd(&format!("herm_logdet n={n}"), a.herm_logdet(), 1);
        expect_not_pd(&format!("herm_solve n={n}"), a.herm_solve(&rhs), 1);
    }
}

/// The primitive `spd_inverse_logdet` (the name is kept from when it was a
/// kernel): SPD inverse and log-determinant from one factorisation against the plain
/// Cholesky loop (`L^-T L^-1` by solves, `2 sum ln L_ii`); an indefinite
/// matrix is refused naming its index.
pub fn check_kernel_spd_inverse_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(53);
    for (batch, n) in SPD_SIZES {
        let a = rounded::<B>(&spd_batch(&mut r, batch, n, 0.5));
        let t = Tensor::from_f64(b, &a, &[batch, n, n]);
        let what = format!("spd_inverse_logdet {batch}x{n}x{n}");
        let (inv, ld) = t.spd_inverse_logdet().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((inv.shape(), ld.shape()), (t.shape(), &[batch][..]), "{what}");
        let (mut want_inv, mut want_ld) = (Vec::new(), Vec::new());
        for i in 0..batch {
            let l = ref_cholesky(&a[i * n * n..(i + 1) * n * n], n).expect("SPD");
            want_inv.extend(ref_chol_solve(&l, &identity(n), n, n));
            want_ld.push(2.0 * (0..n).map(|j| l[j * n + j].ln()).sum::<f64>());
        }
        assert_close(&format!("{what} inverse"), &inv.to_f64_vec(), &want_inv, tol);
        assert_close(&format!("{what} logdet"), &ld.to_f64_vec(), &want_ld, tol);
    }
    for n in [1usize, 4, 70] {
        let mut a = spd_batch(&mut r, 3, n, 0.5);
        a.splice(n * n..2 * n * n, indefinite(n));
        let t = Tensor::<B>::from_f64(b, &a, &[3, n, n]);
        expect_not_pd(&format!("spd_inverse_logdet n={n}"), t.spd_inverse_logdet(), 1);
    }
}

/// The primitive `herm_inverse_logdet` equals `herm_inverse` and `herm_logdet` of the same matrices.
pub fn check_herm_inverse_logdet<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(29);
    for (batch, n) in SPD_SIZES {
        let (a, _) = hpd_input(b, &mut r, batch, n);
        let what = format!("herm_inverse_logdet {batch}x{n}x{n}");
        let (inv, ld) = a.herm_inverse_logdet().unwrap_or_else(|e| panic!("{what}: {e}"));
        let inv0 = a.herm_inverse().unwrap_or_else(|e| panic!("{what}: {e}"));
        let ld0 = a.herm_logdet().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(inv.shape(), inv0.shape(), "{what}");
        assert_eq!(ld.shape(), &[batch], "{what}");
        let scale = max_abs(&inv0.re.to_f64_vec()).max(max_abs(&inv0.im.to_f64_vec())).max(1.0);
        assert_close_scaled(&format!("{what} re"), &inv.re.to_f64_vec(), &inv0.re.to_f64_vec(), tol, scale);
        assert_close_scaled(&format!("{what} im"), &inv.im.to_f64_vec(), &inv0.im.to_f64_vec(), tol, scale);
        assert_close(&format!("{what} logdet"), &ld.to_f64_vec(), &ld0.to_f64_vec(), tol);
    }
    let bad = ComplexTensor::new(
        Tensor::from_f64(b, &[1.0, 0.0, 0.0, -1.0], &[1, 2, 2]),
        Tensor::zeros(b, &[1, 2, 2]),
    );
    assert!(bad.herm_inverse_logdet().is_err(), "herm_inverse_logdet of an indefinite matrix must fail");
}
