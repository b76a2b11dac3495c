//! Nearest-subspace and cosine k-NN classifiers: hand-checkable cases, tie rules and errors.
use backend_cpu::CpuBackend;
use models::classify::{accuracy, knn_predict, NearestSubspace};
use rate_core::Tensor;

type B = CpuBackend<f64>;

fn t(be: &B, rows: &[[f64; 3]]) -> Tensor<B> {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_f64(be, &flat, &[rows.len(), 3])
}

#[test]
fn nearest_subspace_picks_the_line_with_the_smallest_residual() {
    let be = B::new();
    // Class 0 on the x axis, class 1 on the y axis, class 2 on the line (0, 1, 1)/sqrt 2.
    let train = t(
        &be,
        &[
            [1.0, 0.0, 0.0],
            [-2.0, 0.0, 0.0],
            [0.0, 3.0, 0.0],
            [0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0],
            [0.0, 2.0, 2.0],
        ],
    );
    let labels = [0, 0, 1, 1, 2, 2];
    let ns = NearestSubspace::fit(&train, &labels, 3, 1).expect("fit");
    let test = t(&be, &[[5.0, 0.1, 0.0], [0.2, -4.0, 0.1], [0.0, 1.0, 1.1], [0.0, 0.0, 1.0]]);
    // Residuals: distance to each line; (0, 0, 1) is 1 from both axes but 1/sqrt 2 from line 2.
    let r = ns.residuals(&test).expect("residuals").to_vec();
    let want_last = [1.0, 1.0, 0.5f64.sqrt()];
    for j in 0..3 {
        assert!((r[9 + j] - want_last[j]).abs() < 1e-12, "residual {j}: {}", r[9 + j]);
    }
    assert!((r[0] - 0.1).abs() < 1e-12, "distance of (5, 0.1, 0) to the x axis");
    assert_eq!(ns.predict(&test).expect("predict"), vec![0, 1, 2, 2]);
    // Bases are orthonormal columns.
    let u = ns.basis(2).expect("class 2");
    let g = u.matmul_t(u, true, false).to_vec();
    assert!((g[0] - 1.0).abs() < 1e-12);
}

#[test]
fn nearest_subspace_does_not_centre() {
    let be = B::new();
    // Far from the origin along x, spread along y: the uncentred top direction is ~x
    // (a centred PCA would give y).
    let rows: Vec<[f64; 3]> = (0..20).map(|i| [5.0, (i as f64 - 9.5) * 0.1, 0.0]).collect();
    let ns = NearestSubspace::fit(&t(&be, &rows), &[0; 20], 1, 1).expect("fit");
    let u = ns.basis(0).expect("basis").to_vec();
    assert!(u[0].abs() > 0.99, "top direction {u:?} should be close to the x axis");
}

#[test]
fn nearest_subspace_errors_are_clear() {
    let be = B::new();
    let train = t(&be, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]);
    let msg = |r: Result<NearestSubspace<B>, models::Error>| r.expect_err("must fail").to_string();
    assert!(msg(NearestSubspace::fit(&train, &[0, 1, 1], 2, 4)).contains("components = 4"));
    assert!(msg(NearestSubspace::fit(&train, &[0, 1, 1], 2, 0)).contains("components = 0"));
    assert!(msg(NearestSubspace::fit(&train, &[0, 1, 1], 2, 2)).contains("exceeds the 1 samples of class 0"));
    assert!(msg(NearestSubspace::fit(&train, &[0, 2, 2], 3, 1)).contains("class 1 has no training samples"));
    assert!(msg(NearestSubspace::fit(&train, &[0, 5, 1], 2, 1)).contains("labels[1] = 5"));
    assert!(msg(NearestSubspace::fit(&train, &[0, 1], 2, 1)).contains("2 labels for 3 samples"));
    let ns = NearestSubspace::fit(&train, &[0, 1, 1], 2, 1).expect("fit");
    let wide = Tensor::from_f64(&be, &[1.0; 4], &[1, 4]);
    assert!(ns.predict(&wide).expect_err("dims").to_string().contains("4 columns"));
}

#[test]
fn knn_votes_by_cosine_and_breaks_ties_by_the_nearest() {
    let be = B::new();
    let train = t(
        &be,
        &[
            [1.0, 0.0, 0.0],  // 0: class 0
            [10.0, 1.0, 0.0], // 1: class 1, cosine with x ~ 0.995
            [5.0, 0.0, 1.0],  // 2: class 1, cosine ~ 0.981
            [0.0, 1.0, 0.0],  // 3: class 2
        ],
    );
    let labels = [0, 1, 1, 2];
    // A long vector along x: cosine ignores the length, so training row 0 is the nearest.
    let test = t(&be, &[[100.0, 0.0, 0.0]]);
    assert_eq!(knn_predict(&train, &labels, &test, 1).expect("k=1"), vec![0]);
    // k = 2: one vote each for classes 0 and 1 -> the nearest (class 0) wins the tie.
    assert_eq!(knn_predict(&train, &labels, &test, 2).expect("k=2"), vec![0]);
    // k = 3: two votes for class 1 beat the nearest neighbour's class.
    assert_eq!(knn_predict(&train, &labels, &test, 3).expect("k=3"), vec![1]);
    // Rows along y go to class 2.
    assert_eq!(knn_predict(&train, &labels, &t(&be, &[[0.0, 2.0, 0.1]]), 1).expect("y"), vec![2]);
}

#[test]
fn knn_errors_are_clear() {
    let be = B::new();
    let train = t(&be, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
    let test = t(&be, &[[1.0, 1.0, 0.0]]);
    let msg = |r: Result<Vec<usize>, models::Error>| r.expect_err("must fail").to_string();
    assert!(msg(knn_predict(&train, &[0, 1], &test, 0)).contains("k = 0"));
    assert!(msg(knn_predict(&train, &[0, 1], &test, 3)).contains("k = 3"));
    assert!(msg(knn_predict(&train, &[0], &test, 1)).contains("1 labels for 2"));
    let wide = Tensor::from_f64(&be, &[1.0; 4], &[1, 4]);
    assert!(msg(knn_predict(&train, &[0, 1], &wide, 1)).contains("4 columns"));
}

#[test]
fn accuracy_counts_matches() {
    assert_eq!(accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]).expect("acc"), 0.75);
    assert!(accuracy(&[0], &[0, 1]).is_err());
    assert!(accuracy(&[], &[]).is_err());
}
