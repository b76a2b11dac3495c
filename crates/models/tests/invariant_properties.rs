//! Properties of the invariant ReduNet: shift equivariance of every layer (1-D and 2-D), invariance of the construction, agreement with the dense block-circulant path and of the fast lifting with direct summation, polar rotations as shifts, and clear errors on bad input.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
use backend_cpu::CpuBackend;
use models::invariant::{
    construct_dense, polar_resample, rotate_polar, Activation, Domain, InvariantConfig, InvariantReduNet,
    Lifting, PolarGrid,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rate_core::{FftNorm, Tensor};

type B = CpuBackend<f64>;

fn random(be: &B, shape: &[usize], seed: u64) -> Tensor<B> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_f64(be, &data, shape)
}

/// Labels `0..k` cycling over `m` samples (every class present when `m >= k`).
fn labels(m: usize, k: usize) -> Vec<usize> {
    (0..m).map(|i| i % k).collect()
}

fn max_diff(a: &Tensor<B>, b: &Tensor<B>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.sub(b).max_abs()
}

fn config(layers: usize, lambda: f64) -> InvariantConfig {
    InvariantConfig { layers, eta: 0.5, eps_sq: 0.1, lambda, chunk: 3, keep_spectra: true }
}

/// Checks that shifting the input shifts the features after every layer, and
/// that pooled features (mean over the domain, spectrum modulus) do not move.
fn check_equivariance(x: &Tensor<B>, k: usize, shift: &[isize], lambda: f64) -> Result<(), TestCaseError> {
    let m = x.dim(0);
    let cfg = config(3, lambda);
    let net = InvariantReduNet::construct(x, &labels(m, k), k, &cfg).unwrap().network;
    let dom = net.domain();
    let test = random(x.backend(), x.shape(), 99);
    let a = net.transform_traced(&test).unwrap();
    let b = net.transform_traced(&dom.roll(&test, shift).unwrap()).unwrap();
    prop_assert_eq!(&a.yhat, &b.yhat);
    for (l, (sa, sb)) in a.spectra.iter().zip(&b.spectra).enumerate() {
        let za = dom.inverse(sa, FftNorm::Ortho); // [n, C, dims]
        let zb = dom.inverse(sb, FftNorm::Ortho);
        let d = max_diff(&dom.roll(&za, shift).unwrap(), &zb);
        prop_assert!(d < 1e-10, "layer {}: shifted features differ by {}", l, d);
        let n = za.dim(0) * za.dim(1);
        let pool = |z: &Tensor<B>| z.reshape(&[n, dom.size()]).mean_axis(1, false);
        let dp = max_diff(&pool(&za), &pool(&zb));
        prop_assert!(dp < 1e-10, "layer {}: mean-pooled features differ by {}", l, dp);
        let dm = max_diff(&sa.abs_sq(), &sb.abs_sq());
        prop_assert!(dm < 1e-10, "layer {}: |spectrum|^2 differs by {}", l, dm);
    }
    let d = max_diff(&dom.roll(&a.features, shift).unwrap(), &b.features);
    prop_assert!(d < 1e-10, "output: shifted features differ by {}", d);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn equivariance_1d(m in 4usize..7, c in 1usize..4, t in 3usize..12, s in -20isize..20, seed in 0u64..1000, soft in any::<bool>()) {
        let be = B::new();
        let x = random(&be, &[m, c, t], seed);
        check_equivariance(&x, 2, &[s], if soft { 5.0 } else { 500.0 })?;
    }

    #[test]
    fn equivariance_2d(m in 4usize..6, c in 1usize..3, h in 2usize..6, w in 2usize..6, sh in -7isize..7, sw in -7isize..7, seed in 0u64..1000) {
        let be = B::new();
        let x = random(&be, &[m, c, h, w], seed);
        check_equivariance(&x, 2, &[sh, sw], 5.0)?;
    }

    /// The operators depend on the training samples only up to a cyclic shift of each.
    #[test]
    fn construction_is_shift_invariant(m in 4usize..7, c in 1usize..4, t in 3usize..10, seed in 0u64..1000) {
        let be = B::new();
        let x = random(&be, &[m, c, t], seed);
        let dom = Domain::Line { len: t };
        let parts: Vec<Tensor<B>> = (0..m).map(|i| dom.roll(&x.narrow(0, i, 1), &[(i * 7 + seed as usize) as isize]).unwrap()).collect();
        let xs = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0);
        let y = labels(m, 2);
        let a = InvariantReduNet::construct(&x, &y, 2, &config(2, 5.0)).unwrap();
        let b = InvariantReduNet::construct(&xs, &y, 2, &config(2, 5.0)).unwrap();
        for l in 0..2 {
            let d = max_diff(a.network.layers()[l].packed(), b.network.layers()[l].packed());
            prop_assert!(d < 1e-10, "layer {}: operators differ by {}", l, d);
        }
        for (ra, rb) in a.record.rates_true.iter().zip(&b.record.rates_true) {
            prop_assert!((ra.delta_r - rb.delta_r).abs() < 1e-10);
        }
    }
}

fn check_dense(x: &Tensor<B>, k: usize, lambda: f64) {
    let m = x.dim(0);
    let y = labels(m, k);
    let cfg = config(3, lambda);
    let fast = InvariantReduNet::construct(x, &y, k, &cfg).unwrap();
    let dense = construct_dense(x, &y, k, &cfg).unwrap();
    let net = &fast.network;
    let dom = net.domain();
    assert_eq!(fast.record.yhat, dense.yhat, "{:?}", x.shape());
    for (l, (s, zd)) in fast.record.spectra.iter().zip(&dense.features).enumerate() {
        let zf = dom.inverse(s, FftNorm::Ortho);
        let d = max_diff(&zf, zd);
        assert!(d < 1e-10, "{:?} layer {l}: features differ from the dense path by {d}", x.shape());
    }
    for (l, (a, b)) in fast.record.rates_true.iter().zip(&dense.rates_true).enumerate() {
        assert!(
            (a.r - b.r).abs() < 1e-10 && (a.rc - b.rc).abs() < 1e-10,
            "{:?} layer {l}: rates {a:?} vs {b:?}",
            x.shape()
        );
    }
    let d = max_diff(&fast.features, dense.features.last().unwrap());
    assert!(d < 1e-10, "output differs from the dense path by {d}");
    // Proposition (multichannel convolution): the first column of block (c, c') of the dense
    // operator is the kernel e[c, c'] obtained from the per-frequency matrices.
    let c = net.channels();
    let n = dom.size();
    for l in 0..3 {
        let kern = net.convolution_kernels(l).unwrap().reshape(&[k + 1, c, c, n]);
        // dense[j, (a, p), (b, 0)] for all a, p, b
        let dj = dense.operators[l].reshape(&[k + 1, c, n, c, n]).narrow(4, 0, 1).reshape(&[k + 1, c, n, c]);
        let d = max_diff(&kern, &dj.permute(&[0, 1, 3, 2]));
        assert!(d < 1e-10, "{:?} layer {l}: kernels differ from the dense operators by {d}", x.shape());
    }
}

#[test]
fn frequency_path_matches_dense_1d_even_odd_and_2d() {
    let be = B::new();
    check_dense(&random(&be, &[6, 3, 8], 1), 2, 500.0);
    check_dense(&random(&be, &[6, 3, 7], 2), 3, 5.0);
    check_dense(&random(&be, &[5, 2, 1], 3), 2, 5.0);
    check_dense(&random(&be, &[6, 2, 3, 4], 4), 2, 5.0);
    check_dense(&random(&be, &[6, 2, 3, 3], 5), 2, 500.0);
}

/// A cyclic shift is a phase per stored frequency (Domain::shift_phases), and
/// Domain::roll (one gather by Domain::roll_index) is NumPy's roll, in 1-D and 2-D.
#[test]
fn shift_phases_and_roll_index_describe_roll() {
    let be = B::new();
    for (shape, shift) in [(vec![2, 3, 9], vec![4isize]), (vec![2, 3, 4, 5], vec![1, -7])] {
        let x = random(&be, &shape, 21);
        let (_, _, dom) = Domain::of_signals("x", &shape).unwrap();
        let rolled = dom.roll(&x, &shift).unwrap();
        // roll(x, s) has spectrum e^{-i theta} v
        let (v, w) = (dom.forward(&x, FftNorm::Ortho), dom.forward(&rolled, FftNorm::Ortho));
        let theta = dom.shift_phases(&shift).unwrap();
        let f = theta.len();
        let cos = Tensor::from_f64(&be, &theta.iter().map(|t| t.cos()).collect::<Vec<_>>(), &[f, 1, 1]);
        let sin = Tensor::from_f64(&be, &theta.iter().map(|t| t.sin()).collect::<Vec<_>>(), &[f, 1, 1]);
        assert!(max_diff(&w.re, &v.re.mul(&cos).add(&v.im.mul(&sin))) < 1e-12, "{shape:?}: real part");
        assert!(max_diff(&w.im, &v.im.mul(&cos).sub(&v.re.mul(&sin))) < 1e-12, "{shape:?}: imaginary part");
        // roll as its definition out[.., t] = x[.., t - s] (per axis, cyclic), on the host
        let dims = dom.dims();
        let (p, lead) = (dom.size(), shape[0] * shape[1]);
        let (xv, rv) = (x.to_f64_vec(), rolled.to_f64_vec());
        let wrap = |t: usize, s: isize, n: usize| (t as isize - s).rem_euclid(n as isize) as usize;
        for l in 0..lead {
            for t in 0..p {
                let src = match dims[..] {
                    [_] => wrap(t, shift[0], p),
                    [h, w] => wrap(t / w, shift[0], h) * w + wrap(t % w, shift[1], w),
                    _ => unreachable!("1-D and 2-D domains only"),
                };
                assert_eq!(rv[l * p + t], xv[l * p + src], "{shape:?}: roll at {t}");
            }
        }
    }
}

#[test]
fn transform_shifted_matches_transforming_rolled_inputs() {
    let be = B::new();
    for (shape, shifts) in [
        (vec![6, 2, 9], vec![vec![0], vec![1], vec![-4], vec![13]]),
        (vec![6, 2, 4, 5], vec![vec![0, 0], vec![1, -2], vec![3, 7]]),
    ] {
        let x = random(&be, &shape, 7);
        let net = InvariantReduNet::construct(&x, &labels(6, 2), 2, &config(4, 5.0)).unwrap().network;
        let dom = net.domain();
        let test = random(&be, &shape, 8);
        let all = net.transform_shifted(&test, &shifts).unwrap();
        let n = shape[0];
        for (si, s) in shifts.iter().enumerate() {
            let want = net.transform(&dom.roll(&test, s).unwrap()).unwrap().features;
            let mut sshape = vec![n, 1];
            sshape.extend(&shape[1..]);
            let got = all.narrow(1, si, 1).reshape(&shape);
            let d = max_diff(&got, &want);
            assert!(d < 1e-10, "{shape:?} shift {s:?}: {d}");
        }
    }
}

#[test]
fn chunking_does_not_change_the_result() {
    let be = B::new();
    let x = random(&be, &[7, 2, 6], 11);
    let y = labels(7, 3);
    let whole = InvariantReduNet::construct(
        &x,
        &y,
        3,
        &InvariantConfig { layers: 3, lambda: 5.0, ..Default::default() },
    )
    .unwrap();
    let parts = InvariantReduNet::construct(
        &x,
        &y,
        3,
        &InvariantConfig { layers: 3, lambda: 5.0, chunk: 2, ..Default::default() },
    )
    .unwrap();
    assert!(max_diff(&whole.features, &parts.features) < 1e-14);
    assert_eq!(whole.record.yhat, parts.record.yhat);
    // the transform in equal chunks (7 samples at most 2 or 3 at a time: 2+2+2+1 is
    // split as 1+2+2+2, 3+3+1 as 2+2+3) gives the same features as in one piece
    let test = random(&be, &[7, 2, 6], 12);
    let want = whole.network.transform(&test).unwrap();
    for most in [2, 3] {
        let net = InvariantReduNet::construct(
            &x,
            &y,
            3,
            &InvariantConfig { layers: 3, lambda: 5.0, chunk: most, ..Default::default() },
        )
        .unwrap()
        .network;
        let got = net.transform(&test).unwrap();
        assert!(max_diff(&got.features, &want.features) < 1e-14, "chunks of at most {most}");
        assert_eq!(got.yhat, want.yhat, "chunks of at most {most}");
    }
}

#[test]
fn f32_agrees_with_f64() {
    let be = B::new();
    let b32 = CpuBackend::<f32>::new();
    let x = random(&be, &[8, 3, 10], 21);
    let y = labels(8, 2);
    let cfg = InvariantConfig { layers: 4, lambda: 5.0, ..Default::default() };
    let a = InvariantReduNet::construct(&x, &y, 2, &cfg).unwrap();
    let x32 = Tensor::from_f64(&b32, &x.to_f64_vec(), x.shape());
    let b = InvariantReduNet::construct(&x32, &y, 2, &cfg).unwrap();
    let d = a
        .features
        .to_f64_vec()
        .iter()
        .zip(b.features.to_f64_vec())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-4, "f32 vs f64: {d}");
    assert_eq!(b.network.operator_bytes_per_layer() * 2, a.network.operator_bytes_per_layer());
    assert_eq!(a.network.operator_bytes(), 4 * a.network.operator_bytes_per_layer());
    // (k+1) F C^2 elements: 3 * 6 * 9 * 8 bytes
    assert_eq!(a.network.operator_bytes_per_layer(), 3 * 6 * 9 * 8);
}

#[test]
fn lifting_fft_matches_direct_summation() {
    let be = B::new();
    for (shape, ks, act) in [
        (vec![3, 2, 11], vec![4], Activation::Relu),
        (vec![2, 3, 8], vec![8], Activation::SoftThreshold(0.3)),
        (vec![2, 1, 5, 6], vec![3, 2], Activation::Identity),
        (vec![2, 2, 4, 4], vec![4, 4], Activation::Relu),
    ] {
        let x = random(&be, &shape, 5);
        let lift = Lifting::random(&be, 5, shape[1], &ks, 42, act).unwrap();
        let fast = lift.apply(&x).unwrap();
        let slow = lift.apply_direct(&x).unwrap();
        let mut want = shape.clone();
        want[1] = 5;
        assert_eq!(fast.shape(), &want[..]);
        let d = max_diff(&fast, &slow);
        assert!(d < 1e-12, "{shape:?} {ks:?}: {d}");
        // shift-equivariant
        let dom = Domain::of_signals("test", &shape).unwrap().2;
        let s: Vec<isize> = (0..dom.rank()).map(|a| a as isize + 2).collect();
        let d = max_diff(&lift.apply(&dom.roll(&x, &s).unwrap()).unwrap(), &dom.roll(&fast, &s).unwrap());
        assert!(d < 1e-12, "lifting not equivariant: {d}");
    }
    // The seed fixes the kernels.
    let a = Lifting::random(&be, 3, 2, &[5], 7, Activation::Relu).unwrap();
    let b = Lifting::random(&be, 3, 2, &[5], 7, Activation::Relu).unwrap();
    assert_eq!(a.kernels().to_vec(), b.kernels().to_vec());
    // For one input channel, the lifting is the chapter's convolution with the reversed kernel:
    // z(t) = sum_u w[u] x[t + u].
    let x = Tensor::from_f64(&be, &[1.0, 2.0, 3.0, 4.0, 5.0], &[1, 1, 5]);
    let w = Tensor::from_f64(&be, &[1.0, -1.0], &[1, 1, 2]);
    let z = Lifting::from_kernels(w, Activation::Identity).unwrap().apply(&x).unwrap().to_f64_vec();
    let want = [-1.0, -1.0, -1.0, -1.0, 4.0];
    assert!(z.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{z:?}");
}

#[test]
fn polar_quarter_turn_is_a_cyclic_shift() {
    let be = B::new();
    let n = 9;
    let img = random(&be, &[2, n, n], 3);
    // NumPy rot90: new[i][j] = old[j][n-1-i]
    let v = img.to_f64_vec();
    let mut r = vec![0.0; v.len()];
    for s in 0..2 {
        for i in 0..n {
            for j in 0..n {
                r[s * n * n + i * n + j] = v[s * n * n + j * n + (n - 1 - i)];
            }
        }
    }
    let rot = Tensor::from_f64(&be, &r, &[2, n, n]);
    let grid = PolarGrid { radii: 4, angles: 24, max_radius: None };
    let p = polar_resample(&img, &grid).unwrap();
    assert_eq!(p.shape(), &[2, 4, 24]);
    let q = polar_resample(&rot, &grid).unwrap();
    let d = max_diff(&rotate_polar(&p, -6).unwrap(), &q);
    assert!(d < 1e-12, "rot90 vs polar shift by -A/4: {d}");
    assert!(max_diff(&rotate_polar(&p, 24).unwrap(), &p) == 0.0);
    // A constant image samples to the constant (inside the image).
    let ones = Tensor::full(&be, &[1, n, n], 1.0);
    let pc = polar_resample(&ones, &grid).unwrap();
    assert!(pc.sub(&Tensor::full(&be, &[1, 4, 24], 1.0)).max_abs() < 1e-12);
    // Channels of a 4-D input are stacked radii-fastest.
    let four = polar_resample(&img.reshape(&[1, 2, n, n]), &grid).unwrap();
    assert_eq!(four.shape(), &[1, 8, 24]);
    assert!(max_diff(&four.reshape(&[2, 4, 24]), &p) == 0.0);
}

fn err_text<T: std::fmt::Debug>(r: models::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let be = B::new();
    let x = random(&be, &[4, 2, 6], 1);
    let y = labels(4, 2);
    let cfg = InvariantConfig { layers: 2, ..Default::default() };
    let e = err_text(InvariantReduNet::construct(&random(&be, &[4, 12], 1), &y, 2, &cfg));
    assert!(e.contains("rank 3") && e.contains("[4, 12]"), "{e}");
    let e = err_text(InvariantReduNet::construct(&random(&be, &[4, 2, 6, 1, 1], 1), &y, 2, &cfg));
    assert!(e.contains("[4, 2, 6, 1, 1]"), "{e}");
    let e = err_text(InvariantReduNet::construct(&x, &[0, 0, 0, 0], 2, &cfg));
    assert!(e.contains("class 1 has no training samples"), "{e}");
    let e = err_text(InvariantReduNet::construct(&x, &[0, 1, 2, 0], 2, &cfg));
    assert!(e.contains("labels[2] = 2"), "{e}");
    let e = err_text(InvariantReduNet::construct(&x, &[0, 1], 2, &cfg));
    assert!(e.contains("2 labels for 4 samples"), "{e}");
    let e = err_text(InvariantReduNet::construct(&Tensor::zeros(&be, &[4, 2, 0]), &y, 2, &cfg));
    assert!(e.contains("zero length"), "{e}");
    let e = err_text(InvariantReduNet::construct(&Tensor::zeros(&be, &[4, 0, 5]), &y, 2, &cfg));
    assert!(e.contains("zero length"), "{e}");
    for (bad, field) in [
        (InvariantConfig { layers: 0, ..cfg.clone() }, "layers"),
        (InvariantConfig { eta: f64::NAN, ..cfg.clone() }, "eta"),
        (InvariantConfig { eps_sq: 0.0, ..cfg.clone() }, "eps_sq"),
        (InvariantConfig { lambda: -1.0, ..cfg.clone() }, "lambda"),
        (InvariantConfig { chunk: 0, ..cfg.clone() }, "chunk"),
    ] {
        let e = err_text(InvariantReduNet::construct(&x, &y, 2, &bad));
        assert!(e.contains(&format!("`{field}`")), "{e}");
    }
    let mut nan = x.to_f64_vec();
    nan[5] = f64::NAN;
    let e = err_text(InvariantReduNet::construct(&Tensor::from_f64(&be, &nan, &[4, 2, 6]), &y, 2, &cfg));
    assert!(e.contains("non-finite"), "{e}");
    // transform with other channels or length
    let net = InvariantReduNet::construct(&x, &y, 2, &cfg).unwrap().network;
    let e = err_text(net.transform(&random(&be, &[3, 3, 6], 1)));
    assert!(e.contains("do not match"), "{e}");
    let e = err_text(net.transform(&random(&be, &[3, 2, 7], 1)));
    assert!(e.contains("do not match"), "{e}");
    let e = err_text(net.transform_shifted(&x, &[vec![1, 2]]));
    assert!(e.contains("needs 1 amounts"), "{e}");
    let e = err_text(net.operators(5));
    assert!(e.contains("layer 5 out of range"), "{e}");
    // lifting
    let e = err_text(Lifting::random(&be, 4, 2, &[7], 0, Activation::Relu).unwrap().apply(&x));
    assert!(e.contains("longer than the signal"), "{e}");
    let e = err_text(Lifting::random(&be, 4, 3, &[3], 0, Activation::Relu).unwrap().apply(&x));
    assert!(e.contains("3 channels") || e.contains("expect 3"), "{e}");
    let e = err_text(Lifting::random(&be, 4, 2, &[3, 3], 0, Activation::Relu).unwrap().apply(&x));
    assert!(e.contains("2-D kernels"), "{e}");
    let e = err_text(Lifting::random(&be, 4, 2, &[0], 0, Activation::Relu));
    assert!(e.contains("positive sizes"), "{e}");
    let e = err_text(Lifting::random(&be, 4, 2, &[3], 0, Activation::SoftThreshold(-1.0)));
    assert!(e.contains("soft threshold"), "{e}");
    // polar
    let e = err_text(polar_resample(&x.reshape(&[48]), &PolarGrid::default()));
    assert!(e.contains("[48]"), "{e}");
    let e = err_text(polar_resample(&x, &PolarGrid { radii: 0, ..Default::default() }));
    assert!(e.contains("at least one radius"), "{e}");
    // dense path
    let e = err_text(construct_dense(&x, &[1, 1, 1, 1], 2, &cfg));
    assert!(e.contains("class 0 has no training samples"), "{e}");
}
