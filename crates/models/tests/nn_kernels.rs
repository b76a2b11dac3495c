//! The fused CPU kernels behind the CRATE layers and the invariant ReduNet equal their references: LayerNorm, softmax and dense multi-head attention (forward and backward) against the tensor-op default bodies, blocked matmuls and the vectorised elementwise paths against plain host loops, in f64 and f32.
mod common;

use backend_cpu::CpuBackend;
use common::{randn, rng};
use models::Tensor;
use proptest::prelude::*;
use rate_core::kernels::{
    self, attention_dense, attention_dense as dense, attention_dense_backward, invariant, layer_norm as rows,
    token_stats as stats, DenseAttentionSpec,
};

type B32 = CpuBackend<f32>;

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

fn to32(t: &Tensor<common::B>) -> Tensor<B32> {
    Tensor::from_f64(&B32::new(), &t.to_f64_vec(), t.shape())
}

fn check_layer_norm<B: models::Kernels>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    b: &Tensor<B>,
    g: &Tensor<B>,
    tol: f64,
) {
    let (y, m, r) = kernels::layer_norm(x, w, b, 1e-5);
    let (y0, m0, r0) = rows::layer_norm_reference(x, w, b, 1e-5);
    for (what, p, q) in [("y", &y, &y0), ("mean", &m, &m0), ("rstd", &r, &r0)] {
        assert_eq!(p.shape(), q.shape(), "{what}");
        let e = max_rel(&p.to_f64_vec(), &q.to_f64_vec());
        assert!(e < tol, "layer_norm {what}: {e:e}");
    }
    let (dx, dw, db) = kernels::layer_norm_backward(x, &m, &r, w, g);
    let (dx0, dw0, db0) = rows::layer_norm_backward_reference(x, &m, &r, w, g);
    for (what, p, q) in [("dx", &dx, &dx0), ("dweight", &dw, &dw0), ("dbias", &db, &db0)] {
        let e = max_rel(&p.to_f64_vec(), &q.reshape(p.shape()).to_f64_vec());
        assert!(e < tol * 10.0, "layer_norm_backward {what}: {e:e}");
    }
}

/// The fused token statistics equal the op-by-op reference, every output.
fn check_token_stats<B: models::Kernels>(w: &Tensor<B>, temp: &Tensor<B>, heads: usize, tol: f64) {
    let got = kernels::token_stats(w, temp, heads, 1e-12);
    let want = stats::token_stats_reference(w, temp, heads, 1e-12);
    let pairs = [
        ("col_sq", &got.col_sq, &want.col_sq),
        ("what2_sum", &got.what2_sum, &want.what2_sum),
        ("pi", &got.pi, &want.pi),
        ("pi_sum", &got.pi_sum, &want.pi_sum),
        ("pi_sq", &got.pi_sq, &want.pi_sq),
        ("w_pi", &got.w_pi, &want.w_pi),
    ];
    for (what, p, q) in pairs {
        assert_eq!(p.shape(), q.shape(), "token_stats {what}");
        let e = max_rel(&p.to_f64_vec(), &q.to_f64_vec());
        assert!(e < tol, "token_stats {what} {:?}: {e:e}", w.shape());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn fused_invariant_step_equals_reference(seed in any::<u64>(), f in 1usize..40, n in 1usize..50, k in 1usize..6, width in 1usize..30, eta in 0.05f64..1.0, lambda in 0.1f64..500.0) {
        let mut g = rng(seed);
        let v = randn(&mut g, &[f, n, width], 1.0);
        let y = randn(&mut g, &[f, n, k + 1, width], 1.0);
        let wv: Vec<f64> = (0..f).map(|i| if i == 0 { 1.0 } else { 2.0 }).collect();
        let weights = Tensor::from_f64(&common::be(), &wv, &[f]);
        let gamma = randn(&mut g, &[k], 1.0).abs();
        let (out, pi) = kernels::invariant_step(&v, &y, &weights, &gamma, eta, lambda);
        let (out0, pi0) = invariant::invariant_step_reference(&v, &y, &weights, &gamma, eta, lambda);
        prop_assert!(max_rel(&pi.to_f64_vec(), &pi0.to_f64_vec()) < 1e-12, "pi");
        prop_assert!(max_rel(&out.to_f64_vec(), &out0.to_f64_vec()) < 1e-12, "features");
        let (v, y, weights, gamma) = (to32(&v), to32(&y), to32(&weights), to32(&gamma));
        let (out, pi) = kernels::invariant_step(&v, &y, &weights, &gamma, eta, lambda);
        let (out0, pi0) = invariant::invariant_step_reference(&v, &y, &weights, &gamma, eta, lambda);
        // lambda up to 500 amplifies rounding of the norms in the softmax
        prop_assert!(max_rel(&pi.to_f64_vec(), &pi0.to_f64_vec()) < 2e-2, "pi f32");
        prop_assert!(max_rel(&out.to_f64_vec(), &out0.to_f64_vec()) < 2e-3, "features f32");
    }

    #[test]
    fn real_operand_kernel_equals_gather(seed in any::<u64>(), f in 1usize..30, g in 1usize..6, c in 1usize..12) {
        let mut gen = rng(seed);
        let p = randn(&mut gen, &[f, g, c, c], 1.0);
        let got = kernels::real_operand(&p);
        let want = invariant::real_operand_reference(&p);
        prop_assert_eq!(got.shape(), want.shape());
        prop_assert_eq!(got.to_f64_vec(), want.to_f64_vec());
        prop_assert_eq!(kernels::real_operand(&to32(&p)).to_f64_vec(), to32(&want).to_f64_vec());
    }

    /// The per-frequency unfolded products equal the default body (the whole
    /// real operand from the reference gather, then the batched product).
    #[test]
    fn invariant_products_kernel_equals_operand_product(seed in any::<u64>(), f in 1usize..20, n in 0usize..40, g in 1usize..6, c in 1usize..12) {
        let mut gen = rng(seed);
        let p = randn(&mut gen, &[f, g, c, c], 1.0);
        let v = randn(&mut gen, &[f, n, 2 * c], 1.0);
        let got = kernels::invariant_products(&v, &p);
        let want = v.matmul(&invariant::real_operand_reference(&p));
        prop_assert_eq!(got.shape(), &[f, n, 2 * g * c][..]);
        prop_assert!(max_rel(&got.to_f64_vec(), &want.to_f64_vec()) < 1e-13, "f64");
        let got32 = kernels::invariant_products(&to32(&v), &to32(&p));
        let want32 = to32(&v).matmul(&invariant::real_operand_reference(&to32(&p)));
        prop_assert!(max_rel(&got32.to_f64_vec(), &want32.to_f64_vec()) < 1e-5, "f32");
    }

    /// The dense multi-head attention kernel (heads read in place from the
    /// interleaved layout) equals the default body (heads split by a
    /// permutation, batched products), forward and backward; larger cases
    /// run the sequences as parallel tasks, small ones on the calling thread.
    #[test]
    fn dense_attention_kernel_equals_reference(seed in any::<u64>(), batch in 1usize..5, n in 1usize..80, heads in 1usize..5, dh in 1usize..20) {
        let mut gen = rng(seed);
        let w = randn(&mut gen, &[batch, n, heads * dh], 0.5);
        let g = randn(&mut gen, &[batch, n, heads * dh], 1.0);
        let spec = DenseAttentionSpec::for_tokens(&w, heads);
        let check = |w: &Tensor<_>, g: &Tensor<_>, tol: f64| -> Result<(), TestCaseError> {
            let (attn, out) = attention_dense(w, spec);
            let (attn0, out0) = dense::dense_forward(w, spec);
            prop_assert_eq!(attn.shape(), &[batch, heads, n, n][..]);
            prop_assert_eq!(out.shape(), w.shape());
            prop_assert!(max_rel(&attn.to_f64_vec(), &attn0.to_f64_vec()) < tol, "attention");
            prop_assert!(max_rel(&out.to_f64_vec(), &out0.to_f64_vec()) < tol, "output");
            let gw = attention_dense_backward(w, &attn, g, spec);
            let gw0 = dense::dense_backward(w, &attn0, g, spec);
            prop_assert!(max_rel(&gw.to_f64_vec(), &gw0.to_f64_vec()) < 10.0 * tol, "backward");
            Ok(())
        };
        check(&w, &g, 1e-13)?;
        let (w32, g32) = (to32(&w), to32(&g));
        let (attn, out) = attention_dense(&w32, spec);
        let (attn0, out0) = dense::dense_forward(&w32, spec);
        prop_assert!(max_rel(&attn.to_f64_vec(), &attn0.to_f64_vec()) < 1e-5, "attention f32");
        prop_assert!(max_rel(&out.to_f64_vec(), &out0.to_f64_vec()) < 1e-5, "output f32");
        let gw = attention_dense_backward(&w32, &attn, &g32, spec);
        let gw0 = dense::dense_backward(&w32, &attn0, &g32, spec);
        prop_assert!(max_rel(&gw.to_f64_vec(), &gw0.to_f64_vec()) < 1e-4, "backward f32");
    }

    #[test]
    fn fused_token_stats_equal_reference(seed in any::<u64>(), batch in 1usize..6, n in 1usize..400, heads in 1usize..6, dh in 1usize..20, zero_col in any::<bool>()) {
        let mut g = rng(seed);
        let mut w = randn(&mut g, &[batch, n, heads * dh], 1.0);
        if zero_col {
            // a column of zeros takes the norm clamp
            let mask: Vec<f64> = (0..heads * dh).map(|c| if c == 0 { 0.0 } else { 1.0 }).collect();
            w = w.mul(&Tensor::from_f64(&common::be(), &mask, &[heads * dh]));
        }
        let temp = randn(&mut g, &[heads, 1], 1.0);
        check_token_stats(&w, &temp, heads, 1e-12);
        check_token_stats(&to32(&w), &to32(&temp), heads, 1e-4);
    }

    #[test]
    fn fused_layer_norm_equals_reference(seed in any::<u64>(), rows in 1usize..300, d in 1usize..40) {
        let mut g = rng(seed);
        let x = randn(&mut g, &[rows, d], 3.0).add_scalar(1.0);
        let w = randn(&mut g, &[d], 1.0);
        let b = randn(&mut g, &[d], 1.0);
        let gy = randn(&mut g, &[rows, d], 1.0);
        check_layer_norm(&x, &w, &b, &gy, 1e-12);
        check_layer_norm(&to32(&x), &to32(&w), &to32(&b), &to32(&gy), 2e-4);
    }

    #[test]
    fn fused_softmax_and_backward_equal_reference(seed in any::<u64>(), rows in 1usize..200, len in 1usize..80, scale in 0.1f64..30.0) {
        let mut g = rng(seed);
        let z = randn(&mut g, &[rows, len], scale);
        let gy = randn(&mut g, &[rows, len], 1.0);
        // host reference in f64
        let host_softmax = |zv: &[f64]| {
            let mut want = vec![0.0; zv.len()];
            for (zr, wr) in zv.chunks(len).zip(want.chunks_mut(len)) {
                let mx = zr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = zr.iter().map(|v| (v - mx).exp()).sum();
                for (w, v) in wr.iter_mut().zip(zr) {
                    *w = (v - mx).exp() / s;
                }
            }
            want
        };
        let want = host_softmax(&z.to_f64_vec());
        let y = z.softmax(-1);
        prop_assert!(max_rel(&y.to_f64_vec(), &want) < 1e-14);
        // f32: against the f64 softmax of the f32-rounded inputs
        let z32 = to32(&z);
        let want32 = host_softmax(&z32.to_f64_vec());
        let y32 = z32.softmax(-1).to_f64_vec();
        let worst = y32.iter().zip(&want32).map(|(a, b)| (a - b).abs() / (b + 1e-30)).fold(0.0, f64::max);
        prop_assert!(y32.iter().zip(&want32).all(|(a, b)| (a - b).abs() <= 5e-6 * b + 1e-37), "f32 softmax: {worst:e}");
        let d = kernels::softmax_backward(&y, &gy);
        let d0 = rows::softmax_backward_reference(&y, &gy);
        prop_assert!(max_rel(&d.to_f64_vec(), &d0.to_f64_vec()) < 1e-13);
    }

    #[test]
    fn blocked_matmul_equals_host_product(seed in any::<u64>(), m in 100usize..1400, k in 100usize..300, n in 60usize..120, ta in any::<bool>(), tb in any::<bool>()) {
        let mut g = rng(seed);
        let a = randn(&mut g, &[m, k], 1.0);
        let b = randn(&mut g, &[k, n], 1.0);
        let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for l in 0..k {
                let x = av[i * k + l];
                for j in 0..n {
                    want[i * n + j] += x * bv[l * n + j];
                }
            }
        }
        // the same product through every transpose flag (operands stored transposed)
        let a_st = if ta { a.t() } else { a.clone() };
        let b_st = if tb { b.t() } else { b.clone() };
        let got = a_st.matmul_t(&b_st, ta, tb).to_f64_vec();
        prop_assert!(max_rel(&got, &want) < 1e-12);
        let got32 = to32(&a_st).matmul_t(&to32(&b_st), ta, tb).to_f64_vec();
        prop_assert!(max_rel(&got32, &want) < 1e-3);
    }
}

#[test]
fn vectorised_elementwise_paths_equal_scalar_definitions() {
    let mut g = rng(9);
    let x = randn(&mut g, &[70_000], 2.0); // above the parallel threshold
    let xv = x.to_f64_vec();
    let checks: Vec<(&str, Tensor<common::B>, Box<dyn Fn(f64) -> f64>)> = vec![
        ("relu", x.relu(), Box::new(|v: f64| v.max(0.0))),
        ("step", x.step(), Box::new(|v: f64| if v > 0.0 { 1.0 } else { 0.0 })),
        ("neg", x.neg(), Box::new(|v: f64| -v)),
        ("square", x.square(), Box::new(|v: f64| v * v)),
        ("recip", x.recip(), Box::new(|v: f64| 1.0 / v)),
        ("add_scalar", x.add_scalar(0.3), Box::new(|v: f64| v + 0.3)),
        ("scale", x.scale(-1.5), Box::new(|v: f64| v * -1.5)),
        ("sqrt", x.abs().sqrt(), Box::new(|v: f64| v.abs().sqrt())),
    ];
    for (name, got, f) in checks {
        let want: Vec<f64> = xv.iter().map(|&v| f(v)).collect();
        assert_eq!(got.to_f64_vec(), want, "{name}");
    }
    let y = randn(&mut g, &[70_000], 1.0);
    let yv = y.to_f64_vec();
    for (name, got, f) in [
        ("add", x.add(&y), (|a, b| a + b) as fn(f64, f64) -> f64),
        ("sub", x.sub(&y), |a, b| a - b),
        ("mul", x.mul(&y), |a, b| a * b),
        ("div", x.div(&y), |a, b| a / b),
        ("max", x.binary(rate_core::BinaryOp::Max, &y), |a: f64, b: f64| a.max(b)),
    ] {
        let want: Vec<f64> = xv.iter().zip(&yv).map(|(&a, &b)| f(a, b)).collect();
        assert_eq!(got.to_f64_vec(), want, "{name}");
    }
    // a bias row broadcast over the leading axes
    let m = x.reshape(&[50, 1400]);
    let bias = randn(&mut g, &[1400], 1.0);
    let bv = bias.to_f64_vec();
    let want: Vec<f64> = xv.iter().enumerate().map(|(i, &v)| v + bv[i % 1400]).collect();
    assert_eq!(m.add(&bias).to_f64_vec(), want);
    assert_eq!(m.reshape(&[5, 10, 1400]).sub(&bias.reshape(&[1, 1400])).to_f64_vec(), {
        let w: Vec<f64> = xv.iter().enumerate().map(|(i, &v)| v - bv[i % 1400]).collect();
        w
    });
    // a per-row column does not take the bias path
    let col = randn(&mut g, &[50, 1], 1.0);
    let cv = col.to_f64_vec();
    let want: Vec<f64> = xv.iter().enumerate().map(|(i, &v)| v * cv[i / 1400]).collect();
    assert_eq!(m.mul(&col).to_f64_vec(), want);
}

#[test]
fn permute_with_contiguous_rows_equals_gather() {
    let mut g = rng(4);
    let x = randn(&mut g, &[3, 5, 4, 6], 1.0);
    let xv = x.to_f64_vec();
    let p = x.permute(&[0, 2, 1, 3]).to_f64_vec();
    for a in 0..3 {
        for b in 0..4 {
            for c in 0..5 {
                for d in 0..6 {
                    assert_eq!(p[((a * 4 + b) * 5 + c) * 6 + d], xv[((a * 5 + c) * 4 + b) * 6 + d]);
                }
            }
        }
    }
}
