//! Bad input on the CPU backend: non-SPD and non-finite matrices, NaN features, empty axes and bad parameters give clear errors; shape mismatches panic naming the op and both shapes.

use backend_cpu::CpuBackend;
use rate_core::circulant::{
    circulant_coding_rate, circulant_compression_operators, circulant_compression_rate,
    circulant_expansion_operators,
};
use rate_core::{
    coding_rate, coding_rate_grad, compression_operators, compression_rate, compression_rate_grad,
    expansion_operator, rate_reduction, rate_reduction_grad, ComplexTensor, Error, FftNorm, Membership,
    Result, Tensor,
};

type Be = CpuBackend<f64>;

fn be() -> Be {
    CpuBackend::new()
}

fn t(b: &Be, data: &[f64], shape: &[usize]) -> Tensor<Be> {
    Tensor::from_f64(b, data, shape)
}

/// `n x n` SPD matrix `I + 0.1 * (i + j) / n`, entries all finite.
fn spd(n: usize) -> Vec<f64> {
    (0..n * n).map(|e| if e / n == e % n { 2.0 } else { 0.1 * ((e / n + e % n) as f64) / n as f64 }).collect()
}

fn features(m: usize, d: usize) -> Vec<f64> {
    (0..m * d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0).collect()
}

#[track_caller]
fn expect_non_finite<T: std::fmt::Debug>(what: &str, res: Result<T>, index: usize, op: &str) {
    match res {
        Err(e @ Error::NonFinite { index: i, .. }) if i == index => {
            let msg = e.to_string();
            assert!(msg.contains(op) && msg.contains("non-finite"), "{what}: unclear message: {msg}");
        }
        other => panic!("{what}: expected NonFinite at flat index {index}, got {other:?}"),
    }
}

#[track_caller]
fn expect_invalid<T: std::fmt::Debug>(what: &str, res: Result<T>, needle: &str) {
    match res {
        Err(e @ (Error::InvalidShape { .. } | Error::InvalidArgument { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{what}: message {msg:?} does not mention {needle:?}");
        }
        other => panic!("{what}: expected InvalidShape or InvalidArgument, got {other:?}"),
    }
}

// ---------- matrices that are not SPD or not finite ----------

#[test]
fn non_spd_matrix_gives_not_positive_definite_error_naming_op_and_matrix() {
    let b = be();
    for n in [2usize, 70] {
        // matrix 1 of the batch: the identity with its last diagonal entry -1.
        let mut data = spd(n);
        let mut bad = vec![0.0; n * n];
        for i in 0..n {
            bad[i * n + i] = if i == n - 1 { -1.0 } else { 1.0 };
        }
        data.extend(bad);
        let a = t(&b, &data, &[2, n, n]);
        let rhs = Tensor::full(&b, &[2, n, 1], 1.0);
        let results: [(&str, Result<()>); 4] = [
            ("cholesky", a.cholesky().map(|_| ())),
            ("spd_inverse", a.spd_inverse().map(|_| ())),
            ("spd_logdet", a.spd_logdet().map(|_| ())),
            ("spd_solve", a.spd_solve(&rhs).map(|_| ())),
        ];
        for (op, res) in results {
            match res {
                Err(e @ Error::NotPositiveDefinite { index: 1, .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(op) && msg.contains("matrix 1") && msg.contains("not positive definite"),
                        "{msg}"
                    );
                }
                other => panic!("{op} n={n}: expected NotPositiveDefinite for matrix 1, got {other:?}"),
            }
        }
    }
}

#[test]
fn cholesky_family_rejects_nan_and_infinity_instead_of_returning_nan() {
    let b = be();
    // A NaN on the diagonal, below it, or above it (a triangle the factorisation never reads), and +inf;
    // n = 3 uses the hand-written loop, n = 70 faer.
    for n in [3usize, 70] {
        for (pos, value) in [(0usize, f64::NAN), (n, f64::NAN), (1, f64::NAN), (n + 1, f64::INFINITY)] {
            let mut data = spd(n);
            data[pos] = value;
            let a = t(&b, &data, &[n, n]);
            let rhs = Tensor::full(&b, &[n, 2], 1.0);
            let what = format!("n={n}, {value} at {pos}");
            expect_non_finite(&format!("cholesky {what}"), a.cholesky(), pos, "cholesky");
            expect_non_finite(&format!("spd_inverse {what}"), a.spd_inverse(), pos, "spd_inverse");
            expect_non_finite(&format!("spd_logdet {what}"), a.spd_logdet(), pos, "spd_logdet");
            expect_non_finite(&format!("spd_solve {what}"), a.spd_solve(&rhs), pos, "spd_solve");
            expect_non_finite(&format!("sym_eigen {what}"), a.sym_eigen(), pos, "sym_eigen");
            // The same in the imaginary plane of a Hermitian matrix.
            let mut im = vec![0.0; n * n];
            im[pos] = value;
            let h = ComplexTensor::new(t(&b, &spd(n), &[n, n]), t(&b, &im, &[n, n]));
            let hr = ComplexTensor::new(Tensor::full(&b, &[n, 1], 1.0), Tensor::zeros(&b, &[n, 1]));
            expect_non_finite(&format!("herm_inverse {what}"), h.herm_inverse(), pos, "herm_inverse");
            expect_non_finite(&format!("herm_logdet {what}"), h.herm_logdet(), pos, "herm_logdet");
            expect_non_finite(&format!("herm_solve {what}"), h.herm_solve(&hr), pos, "herm_solve");
        }
    }
}

// ---------- rates ----------

#[test]
fn rates_reject_nan_features_with_non_finite_error() {
    let b = be();
    let (m, d) = (6, 3);
    let mut z = features(m, d);
    z[4] = f64::NAN;
    let z = t(&b, &z, &[m, d]);
    let labels = [0, 1, 0, 1, 1, 0];
    let hard = Membership::Hard { labels: &labels, classes: 2 };
    expect_non_finite("coding_rate", coding_rate(&z, 0.5), 4, "coding_rate");
    expect_non_finite("compression_rate", compression_rate(&z, &hard, 0.5), 4, "compression_rate");
    expect_non_finite("rate_reduction", rate_reduction(&z, &hard, 0.5), 4, "coding_rate");
    expect_non_finite("expansion_operator", expansion_operator(&z, 0.5), 4, "expansion_operator");
    expect_non_finite(
        "compression_operators",
        compression_operators(&z, &hard, 0.5),
        4,
        "compression_operators",
    );
    expect_non_finite("coding_rate_grad", coding_rate_grad(&z, 0.5), 4, "expansion_operator");
    expect_non_finite(
        "compression_rate_grad",
        compression_rate_grad(&z, &hard, 0.5),
        4,
        "compression_operators",
    );
    expect_non_finite("rate_reduction_grad", rate_reduction_grad(&z, &hard, 0.5), 4, "expansion_operator");
    // Signals m x C x T, +inf this time.
    let mut v = features(4, 6);
    v[7] = f64::INFINITY;
    let v = t(&b, &v, &[4, 2, 3]);
    let l4 = [0, 1, 1, 0];
    expect_non_finite("circulant_coding_rate", circulant_coding_rate(&v, 0.5), 7, "circulant_coding_rate");
    expect_non_finite(
        "circulant_compression_rate",
        circulant_compression_rate(&v, &l4, 2, 0.5),
        7,
        "circulant",
    );
    expect_non_finite(
        "circulant_expansion_operators",
        circulant_expansion_operators(&v, 0.5),
        7,
        "circulant",
    );
    expect_non_finite(
        "circulant_compression_operators",
        circulant_compression_operators(&v, &l4, 2, 0.5),
        7,
        "circulant",
    );
}

#[test]
fn rates_reject_nan_or_negative_soft_memberships() {
    let b = be();
    let z = t(&b, &features(4, 3), &[4, 3]);
    for (bad, shown) in [(f64::NAN, "NaN"), (-0.25, "-0.25")] {
        let mut p = vec![0.5; 8];
        p[5] = bad; // pi[1, 1]
        let p = t(&b, &p, &[2, 4]);
        let soft = Membership::Soft(&p);
        expect_invalid("compression_rate", compression_rate(&z, &soft, 0.5), &format!("pi[1, 1] = {shown}"));
        expect_invalid("compression_rate_grad", compression_rate_grad(&z, &soft, 0.5), "pi[1, 1]");
        expect_invalid("compression_operators", compression_operators(&z, &soft, 0.5), "non-negative");
    }
    // Wrong shape and no classes at all.
    let p = Tensor::full(&b, &[2, 5], 0.5);
    expect_invalid(
        "soft memberships 2 x 5 for 4 samples",
        compression_rate(&z, &Membership::Soft(&p), 0.5),
        "[2, 5]",
    );
    let p = Tensor::zeros(&b, &[0, 4]);
    expect_invalid(
        "soft memberships with no class",
        compression_rate(&z, &Membership::Soft(&p), 0.5),
        "[0, 4]",
    );
}

#[test]
fn rates_on_empty_or_malformed_features_are_errors() {
    let b = be();
    let none: [usize; 0] = [];
    for shape in [vec![0usize, 3], vec![3, 0], vec![6], vec![2, 3, 1]] {
        let n: usize = shape.iter().product();
        let z = t(&b, &vec![0.5; n], &shape);
        let shown = format!("{shape:?}");
        let labels = vec![0usize; shape[0]];
        let hard = Membership::Hard { labels: if shape.len() == 2 { &labels } else { &none }, classes: 1 };
        expect_invalid(&format!("coding_rate {shown}"), coding_rate(&z, 0.5), &shown);
        expect_invalid(&format!("compression_rate {shown}"), compression_rate(&z, &hard, 0.5), &shown);
        expect_invalid(&format!("rate_reduction {shown}"), rate_reduction(&z, &hard, 0.5), &shown);
        expect_invalid(&format!("expansion_operator {shown}"), expansion_operator(&z, 0.5), &shown);
        expect_invalid(&format!("coding_rate_grad {shown}"), coding_rate_grad(&z, 0.5), &shown);
        expect_invalid(
            &format!("compression_rate_grad {shown}"),
            compression_rate_grad(&z, &hard, 0.5),
            &shown,
        );
        expect_invalid(&format!("rate_reduction_grad {shown}"), rate_reduction_grad(&z, &hard, 0.5), &shown);
    }
    for shape in [vec![0usize, 2, 4], vec![3, 0, 4], vec![3, 2, 0], vec![3, 8]] {
        let n: usize = shape.iter().product();
        let v = t(&b, &vec![0.5; n], &shape);
        let shown = format!("{shape:?}");
        let labels = vec![0usize; shape[0]];
        expect_invalid(&format!("circulant_coding_rate {shown}"), circulant_coding_rate(&v, 0.5), &shown);
        expect_invalid(
            &format!("circulant_compression_rate {shown}"),
            circulant_compression_rate(&v, &labels, 1, 0.5),
            &shown,
        );
        expect_invalid(
            &format!("circulant_expansion_operators {shown}"),
            circulant_expansion_operators(&v, 0.5),
            &shown,
        );
    }
}

#[test]
fn rates_reject_bad_eps_sq() {
    let b = be();
    let z = t(&b, &features(4, 2), &[4, 2]);
    let v = t(&b, &features(4, 6), &[4, 2, 3]);
    for eps_sq in [0.0, -0.1, f64::NAN, f64::INFINITY, 1e-320] {
        expect_invalid(&format!("coding_rate eps_sq={eps_sq}"), coding_rate(&z, eps_sq), "eps_sq");
        expect_invalid(
            &format!("expansion_operator eps_sq={eps_sq}"),
            expansion_operator(&z, eps_sq),
            "eps_sq",
        );
        expect_invalid(
            &format!("circulant_coding_rate eps_sq={eps_sq}"),
            circulant_coding_rate(&v, eps_sq),
            "eps_sq",
        );
    }
}

#[test]
fn rates_reject_bad_labels() {
    let b = be();
    let z = t(&b, &features(4, 2), &[4, 2]);
    let v = t(&b, &features(4, 6), &[4, 2, 3]);
    let short = [0usize, 1, 0];
    let out_of_range = [0usize, 1, 2, 0];
    let cases: [(&[usize], usize, &str); 3] = [
        (&short, 2, "3 labels for 4 samples"),
        (&out_of_range, 2, "labels[2] = 2"),
        (&[0, 0, 0, 0], 0, "classes"),
    ];
    for (labels, classes, needle) in cases {
        let hard = Membership::Hard { labels, classes };
        expect_invalid(&format!("compression_rate {needle}"), compression_rate(&z, &hard, 0.5), needle);
        expect_invalid(
            &format!("compression_rate_grad {needle}"),
            compression_rate_grad(&z, &hard, 0.5),
            needle,
        );
        expect_invalid(
            &format!("circulant_compression_rate {needle}"),
            circulant_compression_rate(&v, labels, classes, 0.5),
            needle,
        );
        expect_invalid(
            &format!("circulant_compression_operators {needle}"),
            circulant_compression_operators(&v, labels, classes, 0.5),
            needle,
        );
    }
}

#[test]
fn empty_class_contributes_nothing_and_stays_finite() {
    let b = be();
    let z = t(&b, &features(4, 3), &[4, 3]);
    let labels = [0, 0, 2, 2]; // class 1 empty
    let hard = Membership::Hard { labels: &labels, classes: 3 };
    let rates = rate_reduction(&z, &hard, 0.5).expect("an empty class is valid");
    assert!(rates.r.is_finite() && rates.rc.is_finite());
    let g = rate_reduction_grad(&z, &hard, 0.5).expect("valid");
    assert!(g.to_f64_vec().iter().all(|x| x.is_finite()));
    let (ops, gam) = compression_operators(&z, &hard, 0.5).expect("valid");
    assert_eq!(gam[1], 0.0);
    assert_eq!(ops.narrow(0, 1, 1).max_abs(), 0.0);
}

// ---------- shape mismatches panic with the op and both shapes ----------

#[test]
#[should_panic(expected = "matmul: inner dimensions differ: [2, 3] @ [4, 5]")]
fn matmul_inner_mismatch_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 3]).matmul(&Tensor::zeros(&b, &[4, 5]));
}

#[test]
#[should_panic(expected = "matmul: inner dimensions differ: [2, 3]^T @ [2, 5]^T")]
fn matmul_transposed_mismatch_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 3]).matmul_t(&Tensor::zeros(&b, &[2, 5]), true, true);
}

#[test]
#[should_panic(expected = "matmul: batch dimensions differ: [2, 3, 4] @ [3, 4, 5]")]
fn matmul_batch_mismatch_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 3, 4]).matmul(&Tensor::zeros(&b, &[3, 4, 5]));
}

#[test]
#[should_panic(expected = "Add: shapes [2, 3] and [4] do not broadcast")]
fn add_without_broadcast_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 3]).add(&Tensor::zeros(&b, &[4]));
}

#[test]
#[should_panic(expected = "Mul: shapes [3, 1, 2] and [4, 3] do not broadcast")]
fn mul_without_broadcast_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::zeros(&b, &[3, 1, 2]).mul(&Tensor::zeros(&b, &[4, 3]));
}

#[test]
#[should_panic(expected = "spd_solve: system [3, 3] and right-hand side [4, 1] do not match")]
fn spd_solve_mismatch_panics_naming_both_shapes() {
    let b = be();
    let _ = t(&b, &spd(3), &[3, 3]).spd_solve(&Tensor::zeros(&b, &[4, 1]));
}

#[test]
#[should_panic(expected = "herm_solve: system [2, 2] and right-hand side [3, 1] do not match")]
fn herm_solve_mismatch_panics_naming_both_shapes() {
    let b = be();
    let a = ComplexTensor::new(t(&b, &spd(2), &[2, 2]), Tensor::zeros(&b, &[2, 2]));
    let r = ComplexTensor::new(Tensor::zeros(&b, &[3, 1]), Tensor::zeros(&b, &[3, 1]));
    let _ = a.herm_solve(&r);
}

#[test]
#[should_panic(expected = "spd_inverse: matrices of shape [2, 3] are not square")]
fn spd_inverse_of_non_square_panics_naming_the_shape() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 3]).spd_inverse();
}

#[test]
#[should_panic(expected = "cat: shape [2, 4] does not match [2, 3] along axis 0")]
fn cat_mismatch_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::cat(&[&Tensor::zeros(&b, &[2, 3]), &Tensor::zeros(&b, &[2, 4])], 0);
}

#[test]
#[should_panic(expected = "Tensor::from_slice: 5 values cannot have shape [2, 3]")]
fn from_slice_with_wrong_length_panics_naming_both() {
    let b = be();
    let _ = Tensor::from_f64(&b, &[1.0; 5], &[2, 3]);
}

#[test]
#[should_panic(expected = "reshape: cannot view shape [2, 3] as [4, 2]")]
fn reshape_to_other_size_panics_naming_both_shapes() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 3]).reshape(&[4, 2]);
}

#[test]
#[should_panic(expected = "ComplexTensor::new: planes [2, 2] and [2, 3] differ")]
fn complex_planes_mismatch_panics_naming_both_shapes() {
    let b = be();
    let _ = ComplexTensor::new(Tensor::zeros(&b, &[2, 2]), Tensor::zeros(&b, &[2, 3]));
}

#[test]
#[should_panic(expected = "irfft: half spectrum of length 5 cannot give a signal of length 7")]
fn irfft_with_wrong_length_panics_naming_both_lengths() {
    let b = be();
    let s = Tensor::zeros(&b, &[2, 8]).rfft(1, FftNorm::Ortho);
    let _ = s.irfft(1, 7, FftNorm::Ortho);
}

#[test]
#[should_panic(expected = "index_add: 2 indices for axis 0 of [3, 2]")]
fn index_add_with_wrong_index_count_panics_naming_the_shape() {
    let b = be();
    let _ = Tensor::zeros(&b, &[3, 2]).index_add(0, &[0, 1], 4);
}

#[test]
#[should_panic(expected = "mean_axis: axis 1 of shape [2, 0] is empty")]
fn mean_over_an_empty_axis_panics_instead_of_returning_nan() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 0]).mean_axis(1, false);
}

#[test]
#[should_panic(expected = "narrow: [2, 5) out of range for axis 1 of shape [2, 4]")]
fn narrow_out_of_range_panics_naming_the_shape() {
    let b = be();
    let _ = Tensor::zeros(&b, &[2, 4]).narrow(1, 2, 3);
}
