//! Tiled (flash) shared-QKV attention equals the dense reference `softmax(s W W^T) W` forward and backward, for the CPU kernel and the generic tensor-op default body, with token counts that are not multiples of the tiles; the dense backward equals finite differences.
#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
use backend_cpu::{exp_f32, CpuBackend};
use models::nn::flash::{self, AttentionCache, DENSE_MAX_TOKENS};
use models::Tensor;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rate_core::kernels::attention_tiled::{tiled_backward, tiled_forward};
use rate_core::AttentionSpec;

type B = CpuBackend<f64>;

fn normal(be: &B, shape: &[usize], sd: f64, rng: &mut StdRng) -> Tensor<B> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| sd * rng.sample::<f64, _>(StandardNormal)).collect();
    Tensor::from_f64(be, &v, shape)
}

fn max_diff(a: &Tensor<B>, b: &Tensor<B>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.sub(b).max_abs()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tiled_equals_dense_forward_and_backward(
        seed in any::<u64>(), problems in 1usize..4, n in 1usize..40, dh in 1usize..9,
        q_tile in 1usize..10, k_tile in 1usize..10, sd in 0.3f64..3.0,
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let w = normal(&be, &[problems, n, dh], sd, &mut rng);
        let g = normal(&be, &[problems, n, dh], 1.0, &mut rng);
        let scale = (dh as f64).powf(-0.5);
        let (dense, dc) = flash::dense_forward(&w, scale);
        let dense_grad = flash::dense_backward(&dc, &g);
        let tol = 1e-11 * (1.0 + dense_grad.max_abs());

        // the CPU kernel
        let (tiled, tc) = flash::tiled_forward_with(&w, scale, q_tile, k_tile);
        prop_assert!(max_diff(&tiled, &dense) < 1e-12, "forward differs by {}", max_diff(&tiled, &dense));
        let tiled_grad = flash::tiled_backward(&tc, &g);
        prop_assert!(max_diff(&tiled_grad, &dense_grad) < tol, "backward differs by {}", max_diff(&tiled_grad, &dense_grad));
        // the row log-sum-exp it keeps
        let lse = w.matmul_t(&w, false, true).scale(scale).exp().sum_axis(-1, false).log();
        prop_assert!(max_diff(&tc.lse, &lse) < 1e-11);

        // the generic default body, from tensor ops
        let spec = AttentionSpec::for_tokens(&w, scale, q_tile, k_tile);
        let (generic, generic_lse) = tiled_forward(&w, spec);
        prop_assert!(max_diff(&generic, &dense) < 1e-12);
        let generic_grad = tiled_backward(&w, &generic, &generic_lse, &g, spec);
        prop_assert!(max_diff(&generic_grad, &dense_grad) < tol, "generic backward differs by {}", max_diff(&generic_grad, &dense_grad));
    }

    #[test]
    fn dense_backward_matches_finite_differences(
        seed in any::<u64>(), problems in 1usize..3, n in 1usize..6, dh in 1usize..4, scale in 0.2f64..1.5,
    ) {
        let be = B::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let w = normal(&be, &[problems, n, dh], 1.0, &mut rng);
        let r = normal(&be, &[problems, n, dh], 1.0, &mut rng);
        let (_, cache) = flash::dense_forward(&w, scale);
        let an = flash::dense_backward(&cache, &r).to_f64_vec();
        let loss = |v: &[f64]| flash::dense_forward(&Tensor::from_f64(&be, v, w.shape()), scale).0.mul(&r).sum_all();
        let wv = w.to_f64_vec();
        let h = 1e-6;
        for i in 0..wv.len() {
            let mut v = wv.clone();
            v[i] += h;
            let lp = loss(&v);
            v[i] -= 2.0 * h;
            let lm = loss(&v);
            let fd = (lp - lm) / (2.0 * h);
            prop_assert!((fd - an[i]).abs() <= 1e-6 + 1e-5 * an[i].abs(), "w[{i}]: fd {fd} vs analytic {}", an[i]);
        }
    }
}

#[test]
fn dispatch_is_dense_up_to_the_threshold_and_tiled_above() {
    let be = B::new();
    let mut rng = StdRng::seed_from_u64(11);
    for n in [DENSE_MAX_TOKENS, DENSE_MAX_TOKENS + 37] {
        let w = normal(&be, &[2, n, 4], 1.0, &mut rng);
        let g = normal(&be, &[2, n, 4], 1.0, &mut rng);
        let (out, cache) = flash::forward(&w, 0.5);
        assert_eq!(matches!(cache, AttentionCache::Tiled(_)), n > DENSE_MAX_TOKENS);
        let (dense, dc) = flash::dense_forward(&w, 0.5);
        assert!(max_diff(&out, &dense) < 1e-12);
        assert!(max_diff(&flash::attention(&w, 0.5), &dense) < 1e-12);
        assert!(max_diff(&flash::backward(&cache, &g), &flash::dense_backward(&dc, &g)) < 1e-10);
    }
}

#[test]
fn tiled_f32_is_within_f32_tolerance_of_dense_f64() {
    let be64 = B::new();
    let be32 = CpuBackend::<f32>::new();
    let mut rng = StdRng::seed_from_u64(12);
    let (p, n, dh) = (3, 300, 16);
    let w = normal(&be64, &[p, n, dh], 1.0, &mut rng);
    let g = normal(&be64, &[p, n, dh], 1.0, &mut rng);
    let scale = 0.25;
    let (dense, dc) = flash::dense_forward(&w, scale);
    let dense_grad = flash::dense_backward(&dc, &g);
    let w32 = Tensor::<CpuBackend<f32>>::from_f64(&be32, &w.to_f64_vec(), w.shape());
    let g32 = Tensor::<CpuBackend<f32>>::from_f64(&be32, &g.to_f64_vec(), g.shape());
    let (out, cache) = flash::tiled_forward_with(&w32, scale, 64, 128);
    let grad = flash::tiled_backward(&cache, &g32);
    let d = |a: Vec<f64>, b: Vec<f64>| a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(d(out.to_f64_vec(), dense.to_f64_vec()) < 1e-4);
    assert!(d(grad.to_f64_vec(), dense_grad.to_f64_vec()) < 1e-4 * (1.0 + dense_grad.max_abs()));
}

#[test]
fn fast_f32_exp_is_accurate() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f64 / 200_000.0;
        let got = exp_f32(x as f32) as f64;
        let want = (x as f32 as f64).exp();
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 5e-7, "relative error {worst}");
    let tiny = exp_f32(f32::NEG_INFINITY);
    assert!(tiny > 0.0 && tiny < 1.2e-38, "exp(-inf) = {tiny}");
    assert!(exp_f32(f32::INFINITY).is_finite());
}
