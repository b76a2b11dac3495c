//! Every CRATE layer's hand-derived backward equals central finite differences (proptest, small random shapes, f64).
mod common;

use common::*;
use models::nn::classifier::Block;
use models::nn::embed::{
    add_cls_and_positions, add_cls_and_positions_backward, patchify, unpatchify, PatchEmbedding,
};
use models::nn::head::{ClassificationHead, Pool};
use models::nn::ista::Ista;
use models::nn::layernorm::LayerNorm;
use models::nn::loss::CrossEntropy;
use models::nn::mssa::Mssa;
use models::nn::{init, Grads, Linear};
use models::Tensor;
use proptest::prelude::*;

/// `L = sum(out * r)`: the upstream gradient is `r`.
fn weighted(out: &Tensor<B>, r: &Tensor<B>) -> f64 {
    out.mul(r).sum_all()
}

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cfg(12))]

    #[test]
    fn layernorm_backward_matches_finite_differences(seed in any::<u64>(), b in 1usize..3, n in 1usize..4, d in 1usize..6) {
        let mut g = rng(seed);
        let mut ln = LayerNorm::new(&be(), d);
        ln.weight = randn(&mut g, &[d], 1.0).add_scalar(1.0);
        ln.bias = randn(&mut g, &[d], 1.0);
        let x = randn(&mut g, &[b, n, d], 2.0);
        let r = randn(&mut g, &[b, n, d], 1.0);
        let (_, cache) = ln.forward(&x);
        let mut grads = Grads::new();
        let gx = ln.backward(&cache, &r, "", &mut grads);
        check_coords("x", &x, &gx, &|v| Some(weighted(&ln.forward(v).0, &r)));
        check_all_params(&ln, &grads, &|m| Some(weighted(&m.forward(&x).0, &r)));
    }

    #[test]
    fn linear_backward_matches_finite_differences(seed in any::<u64>(), rows in 1usize..5, i in 1usize..5, o in 1usize..5, bias in any::<bool>()) {
        let mut g = rng(seed);
        let mut lin: Linear<B> = init::linear(&be(), i, o, bias, &mut g);
        lin.weight = randn(&mut g, &[o, i], 1.0);
        let x = randn(&mut g, &[2, rows, i], 1.0);
        let r = randn(&mut g, &[2, rows, o], 1.0);
        let mut grads = Grads::new();
        let gx = lin.backward(&x, &r, "", &mut grads);
        check_coords("x", &x, &gx, &|v| Some(weighted(&lin.forward(v), &r)));
        check_all_params(&lin, &grads, &|m| Some(weighted(&m.forward(&x), &r)));
    }

    #[test]
    fn mssa_backward_matches_finite_differences(
        seed in any::<u64>(), b in 1usize..3, n in 1usize..5, heads in 1usize..4, dh in 1usize..4, dim in 1usize..6, q in 1usize..5,
    ) {
        let mut g = rng(seed);
        let mut m = Mssa::new(&be(), dim, heads, dh, &mut g);
        m.qkv.weight = randn(&mut g, &[heads * dh, dim], 0.8);
        let x = randn(&mut g, &[b, n, dim], 1.0);
        // the fast path (scale folded into the weights) equals the literal one
        let (full, _) = m.forward(&x);
        let reference = m.forward_reference(&x);
        prop_assert!(models::fixtures::max_abs_diff(&full.to_f64_vec(), &reference.to_f64_vec()) < 1e-12);
        // attending from the first q tokens only gives the first q rows
        let q = q.min(n);
        let (out, cache) = m.forward_queries(&x, q, &m.prepare());
        let first = full.narrow(1, 0, q).to_f64_vec();
        prop_assert!(models::fixtures::max_abs_diff(&out.to_f64_vec(), &first) < 1e-12);
        let r = randn(&mut g, out.shape(), 1.0);
        let mut grads = Grads::new();
        let gx = m.backward(&cache, &r, "", &mut grads, false);
        check_coords("x", &x, &gx, &|v| Some(weighted(&m.forward_queries(v, q, &m.prepare()).0, &r)));
        check_all_params(&m, &grads, &|mm| Some(weighted(&mm.forward_queries(&x, q, &mm.prepare()).0, &r)));
    }

    #[test]
    fn ista_backward_matches_finite_differences(seed in any::<u64>(), b in 1usize..3, n in 1usize..4, d in 1usize..6) {
        let mut g = rng(seed);
        let mut ista = Ista::new(&be(), d, &mut g);
        ista.step_size = 0.3;
        let x = randn(&mut g, &[b, n, d], 1.0);
        let r = randn(&mut g, &[b, n, d], 1.0);
        for literal in [false, true] {
            let run = |m: &Ista<B>, v: &Tensor<B>| if literal { m.forward_literal(v) } else { m.forward(v) };
            let (out, cache) = run(&ista, &x);
            let mask = zeros_of(&out);
            let mut grads = Grads::new();
            let gx = if literal {
                ista.backward_literal(&cache, &r, "", &mut grads)
            } else {
                ista.backward(&cache, &r, "", &mut grads)
            };
            // skip points across a ReLU kink
            let loss = |m: &Ista<B>, v: &Tensor<B>| {
                let o = run(m, v).0;
                (zeros_of(&o) == mask).then(|| weighted(&o, &r))
            };
            check_coords("x", &x, &gx, &|v| loss(&ista, v));
            check_all_params(&ista, &grads, &|m| loss(m, &x));
        }
    }

    #[test]
    fn ista_fused_equals_literal(seed in any::<u64>(), rows in 1usize..20, d in 1usize..12, eta in 0.01f64..0.5, lambda in 0.0f64..0.5) {
        let mut g = rng(seed);
        let mut ista = Ista::new(&be(), d, &mut g);
        ista.step_size = eta;
        ista.lambda = lambda;
        let x = randn(&mut g, &[rows, d], 1.0);
        let (fused, fc) = ista.forward(&x);
        let (literal, lc) = ista.forward_literal(&x);
        let (f, l) = (fused.to_f64_vec(), literal.to_f64_vec());
        for (a, b) in f.iter().zip(&l) {
            // equal up to rounding; an entry at the threshold may be 0 in one and tiny in the other
            prop_assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "fused {a} vs literal {b}");
        }
        let r = randn(&mut g, &[rows, d], 1.0);
        let (mut gf, mut gl) = (Grads::new(), Grads::new());
        let dxf = ista.backward(&fc, &r, "", &mut gf).to_f64_vec();
        let dxl = ista.backward_literal(&lc, &r, "", &mut gl).to_f64_vec();
        if zeros_of(&fused) == zeros_of(&literal) {
            for (a, b) in dxf.iter().zip(&dxl) {
                prop_assert!((a - b).abs() <= 1e-11 * (1.0 + a.abs()));
            }
            for (a, b) in gf["weight"].to_f64_vec().iter().zip(&gl["weight"].to_f64_vec()) {
                prop_assert!((a - b).abs() <= 1e-11 * (1.0 + a.abs()));
            }
        }
    }

    #[test]
    fn patch_embedding_backward_matches_finite_differences(
        seed in any::<u64>(), b in 1usize..3, c in 1usize..3, p in 1usize..3, gh in 1usize..3, gw in 1usize..3, dim in 1usize..5,
    ) {
        let mut g = rng(seed);
        let mut pe = PatchEmbedding::new(&be(), p, c, dim, &mut g);
        let pd = p * p * c;
        pe.norm_in.weight = randn(&mut g, &[pd], 0.3).add_scalar(1.0);
        pe.norm_in.bias = randn(&mut g, &[pd], 0.3);
        pe.norm_out.weight = randn(&mut g, &[dim], 0.3).add_scalar(1.0);
        pe.norm_out.bias = randn(&mut g, &[dim], 0.3);
        let img = randn(&mut g, &[b, c, gh * p, gw * p], 1.0);
        let (out, cache) = pe.forward(&img);
        prop_assert_eq!(out.shape(), &[b, gh * gw, dim]);
        let r = randn(&mut g, out.shape(), 1.0);
        let mut grads = Grads::new();
        let gi = pe.backward(&cache, &r, "", &mut grads);
        check_coords("image", &img, &gi, &|v| Some(weighted(&pe.forward(v).0, &r)));
        check_all_params(&pe, &grads, &|m| Some(weighted(&m.forward(&img).0, &r)));
    }

    #[test]
    fn cls_and_positions_backward_matches_finite_differences(seed in any::<u64>(), b in 1usize..3, n in 1usize..4, d in 1usize..4) {
        let mut g = rng(seed);
        let t = randn(&mut g, &[b, n, d], 1.0);
        let cls = randn(&mut g, &[1, 1, d], 1.0);
        let pos = randn(&mut g, &[1, n + 1, d], 1.0);
        let r = randn(&mut g, &[b, n + 1, d], 1.0);
        let (gt, gc, gp) = add_cls_and_positions_backward(&r);
        check_coords("tokens", &t, &gt, &|v| Some(weighted(&add_cls_and_positions(v, &cls, &pos), &r)));
        check_coords("cls", &cls, &gc, &|v| Some(weighted(&add_cls_and_positions(&t, v, &pos), &r)));
        check_coords("pos", &pos, &gp, &|v| Some(weighted(&add_cls_and_positions(&t, &cls, v), &r)));
    }

    #[test]
    fn head_and_cross_entropy_backward_match_finite_differences(
        seed in any::<u64>(), b in 1usize..4, n in 1usize..4, d in 1usize..5, classes in 1usize..5, smoothing in 0.0f64..0.5, mean in any::<bool>(),
    ) {
        let mut g = rng(seed);
        let mut head = ClassificationHead::new(&be(), d, classes, &mut g);
        head.norm.weight = randn(&mut g, &[d], 0.3).add_scalar(1.0);
        let pool = if mean { Pool::Mean } else { Pool::Cls };
        let tokens = randn(&mut g, &[b, n, d], 1.0);
        let labels: Vec<usize> = (0..b).map(|i| (seed as usize / 7 + i) % classes).collect();
        let ce = CrossEntropy::new(smoothing).unwrap();
        let loss = |h: &ClassificationHead<B>, t: &Tensor<B>| ce.forward(&h.forward(&pool.forward(t)).0, &labels).unwrap().0;
        let (logits, hc) = head.forward(&pool.forward(&tokens));
        let (_, cc) = ce.forward(&logits, &labels).unwrap();
        let g_logits = ce.backward(&cc, 1.0);
        check_coords("logits", &logits, &g_logits, &|v| Some(ce.forward(v, &labels).unwrap().0));
        let mut grads = Grads::new();
        let g_tokens = pool.backward(&head.backward(&hc, &g_logits, "", &mut grads), n);
        check_coords("tokens", &tokens, &g_tokens, &|v| Some(loss(&head, v)));
        check_all_params(&head, &grads, &|h| Some(loss(h, &tokens)));
    }
}

#[test]
fn mssa_without_output_projection_when_one_full_head() {
    let mut g = rng(5);
    let m = Mssa::new(&be(), 4, 1, 4, &mut g);
    assert!(m.to_out.is_none());
    let x = randn(&mut g, &[2, 3, 4], 1.0);
    let (out, cache) = m.forward(&x);
    let r = randn(&mut g, out.shape(), 1.0);
    let mut grads = Grads::new();
    let gx = m.backward(&cache, &r, "", &mut grads, false);
    check_coords("x", &x, &gx, &|v| Some(weighted(&m.forward(v).0, &r)));
    check_all_params(&m, &grads, &|mm| Some(weighted(&mm.forward(&x).0, &r)));
}

#[test]
fn patchify_uses_the_reference_flatten_order() {
    // value = 1000 b + 100 c + 10 y + x: patch (gy, gx), inner (p1, p2), channel c lands at (p1 P + p2) C + c
    let (b, c, h, w, p) = (2, 3, 4, 6, 2);
    let mut v = vec![0.0; b * c * h * w];
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    v[((bi * c + ci) * h + y) * w + x] = (1000 * bi + 100 * ci + 10 * y + x) as f64;
                }
            }
        }
    }
    let img = Tensor::from_f64(&be(), &v, &[b, c, h, w]);
    let patches = patchify(&img, p);
    assert_eq!(patches.shape(), &[b, (h / p) * (w / p), p * p * c]);
    let pv = patches.to_f64_vec();
    let (gw, pd) = (w / p, p * p * c);
    for bi in 0..b {
        for gy in 0..h / p {
            for gx in 0..gw {
                for p1 in 0..p {
                    for p2 in 0..p {
                        for ci in 0..c {
                            let got = pv[(bi * (h / p) * gw + gy * gw + gx) * pd + (p1 * p + p2) * c + ci];
                            let want = (1000 * bi + 100 * ci + 10 * (gy * p + p1) + gx * p + p2) as f64;
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(unpatchify(&patches, c, h, w).to_f64_vec(), v);
}

#[test]
fn cross_entropy_refuses_bad_labels_and_smoothing() {
    let logits = Tensor::from_f64(&be(), &[0.0; 6], &[2, 3]);
    let ce = CrossEntropy::default();
    let e = ce.forward(&logits, &[0, 3]).unwrap_err().to_string();
    assert!(e.contains("labels[1] = 3"), "{e}");
    let e = ce.forward(&logits, &[0]).unwrap_err().to_string();
    assert!(e.contains("1 labels"), "{e}");
    assert!(CrossEntropy::new(1.5).is_err());
    assert!(CrossEntropy::new(-0.1).is_err());
    // uniform logits: loss ln 3 with or without smoothing
    let (l, _) = CrossEntropy::new(0.2).unwrap().forward(&logits, &[0, 2]).unwrap();
    assert!((l - 3f64.ln()).abs() < 1e-14);
}

#[test]
fn cross_entropy_with_label_smoothing_matches_pytorch_formula() {
    // PyTorch: (1 - s) * nll + s * mean_c(-log p_c), averaged over the batch
    let x = [1.0, -2.0, 0.5, 3.0, 0.0, -1.0];
    let logits = Tensor::from_f64(&be(), &x, &[2, 3]);
    let labels = [2, 0];
    let s = 0.1;
    let mut want = 0.0;
    for i in 0..2 {
        let row = &x[i * 3..i * 3 + 3];
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
        want += (1.0 - s) * -logp[labels[i]] + s * -logp.iter().sum::<f64>() / 3.0;
    }
    want /= 2.0;
    let (got, _) = CrossEntropy::new(s).unwrap().forward(&logits, &labels).unwrap();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
}
