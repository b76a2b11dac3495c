//! Property tests of TSSA (f64, small shapes): the hand-derived backward of the full and causal layers equals central finite differences, and the causal layer streamed token by token equals its whole-sequence forward.
#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
use backend_cpu::CpuBackend;
use models::nn::classifier::Block;
use models::nn::tssa::{CausalTssa, Tssa};
use models::nn::{Grads, Linear, Module};
use models::Tensor;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

type B = CpuBackend<f64>;

fn normal(be: &B, shape: &[usize], sd: f64, mean: f64, rng: &mut StdRng) -> Tensor<B> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| mean + sd * rng.sample::<f64, _>(StandardNormal)).collect();
    Tensor::from_f64(be, &v, shape)
}

fn linear(be: &B, dim: usize, bias: bool, rng: &mut StdRng) -> Linear<B> {
    let sd = 1.0 / (dim as f64).sqrt();
    Linear {
        weight: normal(be, &[dim, dim], sd, 0.0, rng),
        bias: bias.then(|| normal(be, &[dim], 0.3, 0.0, rng)),
    }
}

/// Central differences of `loss` against every parameter of `m` and every
/// entry of `x`, compared with the analytic `grads` and `dx`.
fn check_fd<M: Module<B>>(
    m: &mut M,
    x: &Tensor<B>,
    loss: &dyn Fn(&M, &Tensor<B>) -> f64,
    grads: &Grads<B>,
    dx: &Tensor<B>,
) -> Result<(), TestCaseError> {
    let h = 1e-6;
    let tol = |an: f64| 1e-6 + 1e-5 * an.abs();
    // parameters
    let mut names = vec![];
    m.visit("", &mut |n, _| names.push(n));
    for name in &names {
        let an = grads
            .get(name)
            .map(|g| g.to_f64_vec())
            .ok_or_else(|| TestCaseError::fail(format!("no grad {name}")))?;
        for i in 0..an.len() {
            let at = |delta: f64, m: &mut M| {
                m.visit_mut("", &mut |n, t| {
                    if &n == name {
                        let mut v = t.to_f64_vec();
                        v[i] += delta;
                        *t = Tensor::from_f64(t.backend(), &v, t.shape());
                    }
                });
            };
            at(h, m);
            let lp = loss(m, x);
            at(-2.0 * h, m);
            let lm = loss(m, x);
            at(h, m);
            let fd = (lp - lm) / (2.0 * h);
            prop_assert!((fd - an[i]).abs() <= tol(an[i]), "{name}[{i}]: fd {fd} vs analytic {}", an[i]);
        }
    }
    // input
    let an = dx.to_f64_vec();
    let xv = x.to_f64_vec();
    for i in 0..xv.len() {
        let mut v = xv.clone();
        v[i] += h;
        let lp = loss(m, &Tensor::from_f64(x.backend(), &v, x.shape()));
        v[i] -= 2.0 * h;
        let lm = loss(m, &Tensor::from_f64(x.backend(), &v, x.shape()));
        let fd = (lp - lm) / (2.0 * h);
        prop_assert!((fd - an[i]).abs() <= tol(an[i]), "input[{i}]: fd {fd} vs analytic {}", an[i]);
    }
    Ok(())
}

fn dot(a: &Tensor<B>, b: &Tensor<B>) -> f64 {
    a.mul(b).sum_all()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn tssa_backward_matches_finite_differences(
        seed in any::<u64>(), batch in 1usize..3, n in 1usize..6, heads in 1usize..4, dh in 1usize..4, bias in any::<bool>(),
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let dim = heads * dh;
        let mut layer = Tssa::new(
            linear(&be, dim, bias, &mut rng), normal(&be, &[heads, 1], 0.5, 1.0, &mut rng), linear(&be, dim, true, &mut rng), heads,
        ).unwrap();
        let x = normal(&be, &[batch, n, dim], 1.0, 0.0, &mut rng);
        let r = normal(&be, &[batch, n, dim], 1.0, 0.0, &mut rng);
        // L = sum(out * R)
        let (_, cache) = layer.forward(&x);
        let mut grads = Grads::new();
        let dx = layer.backward(&cache, &r, "", &mut grads, false);
        let loss = |m: &Tssa<B>, x: &Tensor<B>| dot(&m.forward(x).0, &r);
        check_fd(&mut layer, &x, &loss, &grads, &dx)?;
    }

    #[test]
    fn tssa_forward_equals_step_by_step_reference(
        seed in any::<u64>(), batch in 1usize..3, n in 1usize..30, heads in 1usize..5, dh in 1usize..6, bias in any::<bool>(),
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let dim = heads * dh;
        let layer = Tssa::new(
            linear(&be, dim, bias, &mut rng), normal(&be, &[heads, 1], 0.5, 1.0, &mut rng), linear(&be, dim, true, &mut rng), heads,
        ).unwrap();
        let x = normal(&be, &[batch, n, dim], 1.0, 0.0, &mut rng);
        let d = layer.forward(&x).0.sub(&layer.forward_reference(&x)).max_abs();
        prop_assert!(d < 1e-12, "fast forward differs from the reference by {d}");
    }

    #[test]
    fn causal_tssa_backward_matches_finite_differences(
        seed in any::<u64>(), batch in 1usize..3, n in 1usize..6, extra in 0usize..3, heads in 1usize..4, dh in 1usize..4,
        bias in any::<bool>(), with_pos in any::<bool>(),
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let dim = heads * dh;
        let pos = with_pos.then(|| normal(&be, &[heads, n + extra, 1], 0.3, 0.0, &mut rng));
        let mut layer = CausalTssa::new(
            linear(&be, dim, bias, &mut rng), normal(&be, &[heads, 1], 0.5, 1.0, &mut rng), linear(&be, dim, true, &mut rng),
            pos, heads,
        ).unwrap();
        let x = normal(&be, &[batch, n, dim], 1.0, 0.0, &mut rng);
        let r = normal(&be, &[batch, n, dim], 1.0, 0.0, &mut rng);
        let (_, cache) = layer.forward(&x).unwrap();
        let mut grads = Grads::new();
        let dx = layer.backward(&cache, &r, "", &mut grads);
        let loss = |m: &CausalTssa<B>, x: &Tensor<B>| dot(&m.forward(x).unwrap().0, &r);
        check_fd(&mut layer, &x, &loss, &grads, &dx)?;
    }

    #[test]
    fn causal_tssa_streamed_equals_whole_sequence(
        seed in any::<u64>(), batch in 1usize..3, n in 1usize..12, heads in 1usize..4, dh in 1usize..5, with_pos in any::<bool>(),
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let dim = heads * dh;
        let pos = with_pos.then(|| normal(&be, &[heads, n, 1], 0.3, 0.0, &mut rng));
        let layer = CausalTssa::new(
            linear(&be, dim, true, &mut rng), normal(&be, &[heads, 1], 0.5, 1.0, &mut rng), linear(&be, dim, true, &mut rng),
            pos, heads,
        ).unwrap();
        let x = normal(&be, &[batch, n, dim], 1.0, 0.0, &mut rng);
        let (whole, _) = layer.forward(&x).unwrap();
        let mut state = layer.start(batch);
        for t in 0..n {
            let tok = x.narrow(1, t, 1).reshape(&[batch, dim]);
            let got = layer.step(&mut state, &tok).unwrap().to_f64_vec();
            let want = whole.narrow(1, t, 1).to_f64_vec();
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            prop_assert!(d < 1e-12, "token {t}: streamed differs by {d}");
        }
        prop_assert_eq!(state.position(), n);
        // the state does not grow with the sequence: with denom_bias the length is bounded
        if layer.max_tokens().is_some() {
            prop_assert!(layer.step(&mut state, &x.narrow(1, 0, 1).reshape(&[batch, dim])).is_err());
        }
    }

    #[test]
    fn cumsum_default_body_matches_cpu_scan(
        seed in any::<u64>(), outer in 1usize..4, len in 1usize..40, inner in 1usize..5, reverse in any::<bool>(),
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let x = normal(&be, &[outer, len, inner], 1.0, 0.0, &mut rng);
        let fast = rate_core::kernels::cumsum(&x, 1, reverse).to_f64_vec();
        let generic = rate_core::kernels::scan::cumsum_by_doubling(&x, reverse).to_f64_vec();
        let xv = x.to_f64_vec();
        for o in 0..outer {
            for j in 0..inner {
                let mut acc = 0.0;
                let ls: Vec<usize> = if reverse { (0..len).rev().collect() } else { (0..len).collect() };
                for l in ls {
                    let i = (o * len + l) * inner + j;
                    acc += xv[i];
                    prop_assert!((fast[i] - acc).abs() < 1e-12 && (generic[i] - acc).abs() < 1e-12);
                }
            }
        }
    }
}

#[test]
fn causal_tssa_rejects_sequences_longer_than_denom_bias() {
    let be = B::new();
    let mut rng = StdRng::seed_from_u64(7);
    let layer = CausalTssa::init(&be, 8, 2, true, Some(4), &mut rng).unwrap();
    let x = Tensor::zeros(&be, &[1, 5, 8]);
    assert!(layer.forward(&x).is_err());
}

#[test]
fn tssa_rejects_bad_shapes() {
    let be = B::new();
    let mut rng = StdRng::seed_from_u64(8);
    assert!(Tssa::init(&be, 10, 3, true, &mut rng).is_err());
    let ok = Tssa::init(&be, 12, 3, true, &mut rng).unwrap();
    let bad_temp = Tssa::new(ok.qkv.clone(), Tensor::zeros(&be, &[2, 1]), ok.to_out.clone(), 3);
    let msg = bad_temp.unwrap_err().to_string();
    assert!(msg.contains("temp") && msg.contains("[2, 1]"), "{msg}");
}
