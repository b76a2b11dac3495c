//! AoT and TOST: every new backward (AoT layer with and without LayerNorm, softmax and thresholded; TOST layer; whole models) against central finite differences, the tiled MSSA against the dense one, checkpoints, configuration refusals and measurements.
mod common;

use common::*;
use models::io::{write_safetensors, OutArray};
use models::nn::aot::{Aot, AotConfig, AotLayer};
use models::nn::classifier::{Block, ModelConfig, VisionConfig};
use models::nn::head::Pool;
use models::nn::loss::CrossEntropy;
use models::nn::mssa::{Mssa, Phi};
use models::nn::tost::{Tost, TostConfig, TostLayer};
use models::nn::Grads;
use models::Tensor;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn weighted(out: &Tensor<B>, r: &Tensor<B>) -> f64 {
    out.mul(r).sum_all()
}

/// The thresholded attention pattern of an AoT layer's cache (empty for the softmax).
fn pattern(layer: &AotLayer<B>, z: &Tensor<B>) -> Vec<bool> {
    match layer.phi {
        Phi::Softmax => vec![],
        Phi::Threshold(_) => zeros_of(layer.forward(z).1.attn.attn.as_ref().unwrap()),
    }
}

fn phi_of(threshold: bool) -> Phi {
    if threshold {
        Phi::Threshold(0.3)
    } else {
        Phi::Softmax
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn aot_layer_backward_matches_finite_differences(
        seed in any::<u64>(), b in 1usize..3, n in 1usize..5, heads in 1usize..3, dh in 1usize..4, dim in 2usize..5,
        prenorm in any::<bool>(), threshold in any::<bool>(),
    ) {
        let mut g = rng(seed);
        let mut layer = AotLayer::new(&be(), dim, heads, dh, prenorm, phi_of(threshold), &mut g);
        layer = perturbed(&layer, seed ^ 7);
        layer.attn.qkv.weight = randn(&mut g, &[heads * dh, dim], 1.5);
        let z = randn(&mut g, &[b, n, dim], 1.0);
        let (out, cache) = layer.forward(&z);
        let r = randn(&mut g, out.shape(), 1.0);
        let mut grads = Grads::new();
        let gz = layer.backward(&cache, &r, "", &mut grads);
        let base = pattern(&layer, &z);
        let loss = |l: &AotLayer<B>, x: &Tensor<B>| (pattern(l, x) == base).then(|| weighted(&l.forward(x).0, &r));
        check_coords("z", &z, &gz, &|v| loss(&layer, v));
        check_all_params(&layer, &grads, &|m| loss(m, &z));
    }

    #[test]
    fn tost_layer_backward_matches_finite_differences(
        seed in any::<u64>(), b in 1usize..3, n in 1usize..5, heads in 1usize..3, dh in 1usize..3, bias in any::<bool>(),
    ) {
        let dim = heads * dh;
        let config = TostConfig { vision: vision(1, dim, 1, heads, Pool::Cls), ista_step_size: 0.1, ista_lambda: 0.1, qkv_bias: bias };
        let mut g = rng(seed);
        let layer = perturbed(&TostLayer::<B>::init(&be(), &config, &mut g).unwrap(), seed ^ 3);
        let z = randn(&mut g, &[b, n, dim], 1.0);
        let (out, cache) = layer.forward(&z);
        let r = randn(&mut g, out.shape(), 1.0);
        let mut grads = Grads::new();
        let gz = layer.backward(&cache, &r, "", &mut grads);
        let mask = zeros_of(&out);
        let loss = |l: &TostLayer<B>, x: &Tensor<B>| {
            let o = l.forward(x).0;
            (zeros_of(&o) == mask).then(|| weighted(&o, &r))
        };
        check_coords("z", &z, &gz, &|v| loss(&layer, v));
        check_all_params(&layer, &grads, &|m| loss(m, &z));
    }
}

/// Checks a whole classifier's loss gradients: small parameters coordinate-wise,
/// larger ones and the input along random directions; `key` returns the
/// pattern (ReLU masks, thresholded attention) the loss must keep.
fn check_model<L: Block<B>>(
    model: &models::nn::classifier::Classifier<B, L>,
    images: &Tensor<B>,
    labels: &[usize],
    key: &dyn Fn(&models::nn::classifier::Classifier<B, L>, &Tensor<B>) -> Vec<bool>,
) {
    let ce = CrossEntropy::new(0.1).unwrap();
    let (_, grads) = model.loss_and_gradients(images, labels, &ce).unwrap();
    let base = key(model, images);
    let loss = |m: &models::nn::classifier::Classifier<B, L>, x: &Tensor<B>| {
        (key(m, x) == base).then(|| ce.forward(&m.logits(x).unwrap(), labels).unwrap().0)
    };
    let names = params(model);
    assert_eq!(grads.params.len(), names.len());
    let mut g = rng(99);
    for (name, p) in &names {
        let gp = &grads.params[name];
        if p.numel() <= 8 {
            check_coords(name, p, gp, &|v| loss(&with_param(model, name, v), images));
        } else {
            for _ in 0..2 {
                check_direction(name, p, gp, &mut g, &|v| loss(&with_param(model, name, v), images));
            }
        }
    }
    for _ in 0..2 {
        check_direction("input", images, &grads.input, &mut g, &|v| loss(model, v));
    }
}

#[test]
fn aot_model_backward_matches_finite_differences() {
    for (seed, prenorm, threshold, pool) in [
        (1u64, true, false, Pool::Cls),
        (2, false, false, Pool::Mean),
        (3, true, true, Pool::Cls),
        (4, false, true, Pool::Mean),
    ] {
        let config = AotConfig {
            vision: vision(2, 4, 2, 2, pool),
            dim_head: Some(3),
            prenorm,
            phi: phi_of(threshold),
        };
        let model = perturbed(&Aot::<B>::new(&be(), &config, seed).unwrap(), seed ^ 5);
        let images = randn(&mut rng(seed ^ 9), &[2, 2, 4, 4], 1.0);
        let key = |m: &Aot<B>, x: &Tensor<B>| {
            let (_, cache) = m.forward(x).unwrap();
            cache.layers.iter().flat_map(|l| l.attn.attn.as_ref().map(zeros_of).unwrap_or_default()).collect()
        };
        let key: &dyn Fn(&Aot<B>, &Tensor<B>) -> Vec<bool> =
            if threshold { &key } else { &|_: &Aot<B>, _: &Tensor<B>| Vec::new() };
        check_model(&model, &images, &[0, 2], key);
    }
}

#[test]
fn tost_model_backward_matches_finite_differences() {
    for (seed, pool, bias) in [(1u64, Pool::Cls, false), (2, Pool::Mean, true)] {
        let config = TostConfig {
            vision: vision(2, 4, 2, 2, pool),
            ista_step_size: 0.1,
            ista_lambda: 0.1,
            qkv_bias: bias,
        };
        let model = perturbed(&Tost::<B>::new(&be(), &config, seed).unwrap(), seed ^ 5);
        let images = randn(&mut rng(seed ^ 9), &[2, 2, 4, 4], 1.0);
        let key = |m: &Tost<B>, x: &Tensor<B>| {
            let (_, cache) = m.forward(x).unwrap();
            cache.layers.iter().flat_map(|l| zeros_of(&l.ista.out)).collect()
        };
        check_model(&model, &images, &[1, 2], &key);
    }
}

#[test]
fn tiled_mssa_matches_the_dense_path_forward_and_backward() {
    let mut g = rng(11);
    let (dim, heads, dh, n) = (8, 2, 4, 150);
    let mut m = Mssa::new(&be(), dim, heads, dh, &mut g);
    m.qkv.weight = randn(&mut g, &[heads * dh, dim], 0.7);
    let x = randn(&mut g, &[2, n, dim], 1.0);
    let w = m.prepare();
    let (dense, dc) = m.forward_phi(&x, n, &w, Phi::Softmax, usize::MAX);
    let (tiled, tc) = m.forward_phi(&x, n, &w, Phi::Softmax, 16);
    assert!(dc.attn.is_some() && dc.tiled.is_none());
    assert!(tc.attn.is_none() && tc.tiled.is_some(), "the tiled path ran");
    let diff = models::fixtures::max_abs_diff(&dense.to_f64_vec(), &tiled.to_f64_vec());
    assert!(diff < 1e-12, "forward differs by {diff}");
    let r = randn(&mut g, dense.shape(), 1.0);
    let (mut gd, mut gt) = (Grads::new(), Grads::new());
    let xd = m.backward(&dc, &r, "", &mut gd, false);
    let xt = m.backward(&tc, &r, "", &mut gt, false);
    let diff = models::fixtures::max_abs_diff(&xd.to_f64_vec(), &xt.to_f64_vec());
    assert!(diff < 1e-11, "input gradient differs by {diff}");
    for (name, t) in &gd {
        let diff = models::fixtures::max_abs_diff(&t.to_f64_vec(), &gt[name].to_f64_vec());
        assert!(diff < 1e-10, "{name} differs by {diff}");
    }
    // the default threshold sends long sequences to the tiled path
    let long = randn(&mut g, &[1, models::nn::mssa::TILED_ABOVE_TOKENS + 1, dim], 1.0);
    assert!(m.forward(&long).1.tiled.is_some());
}

#[test]
fn thresholded_attention_is_tau_on_entries_above_tau() {
    let mut g = rng(5);
    let layer = AotLayer::new(&be(), 4, 2, 2, false, Phi::Threshold(0.6), &mut g);
    let z = randn(&mut g, &[1, 6, 4], 3.0);
    let (_, cache) = layer.forward(&z);
    let a = cache.attn.attn.unwrap().to_f64_vec();
    assert!(a.iter().all(|&v| v == 0.0 || v == 0.6));
    // at most one entry a row can exceed tau > 1/2
    for row in a.chunks(6) {
        assert!(row.iter().filter(|&&v| v > 0.0).count() <= 1);
    }
}

fn roundtrip_and_refusals<L: Block<B>>(
    config: &L::Config,
    tag: &str,
    shaped: &str,
    shape: &[usize],
    expected: &str,
) {
    type C<L> = models::nn::classifier::Classifier<B, L>;
    let dir = std::env::temp_dir().join(format!("aot-tost-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = C::<L>::new(&be(), config, 7).unwrap();
    let images = randn(&mut rng(3), &[2, 2, 4, 4], 1.0);
    let want = model.logits(&images).unwrap().to_f64_vec();
    let path = dir.join("ok.safetensors");
    model.save(&path, safetensors::Dtype::F64).unwrap();
    let back = C::<L>::load(&be(), &path).unwrap();
    assert_eq!(&back.config, config);
    assert_eq!(back.logits(&images).unwrap().to_f64_vec(), want);

    let meta = config.to_metadata();
    let mut arrays = BTreeMap::new();
    for (name, t) in model.state_dict() {
        arrays.insert(name, OutArray::f64(t.shape(), t.to_f64_vec()));
    }
    let err = |arrays: &BTreeMap<String, OutArray>, meta: &BTreeMap<String, String>| {
        let p = dir.join("bad.safetensors");
        write_safetensors(&p, arrays, meta).unwrap();
        C::<L>::load(&be(), &p).unwrap_err().to_string()
    };
    let mut missing = arrays.clone();
    missing.remove("transformer.layers.1.0.fn.qkv.weight");
    let e = err(&missing, &meta);
    assert!(e.contains("missing tensor `transformer.layers.1.0.fn.qkv.weight`"), "{e}");
    let mut bad = arrays.clone();
    bad.insert(shaped.into(), OutArray::f64(shape, vec![0.0; shape.iter().product()]));
    let e = err(&bad, &meta);
    assert!(e.contains(&format!("`{shaped}` has shape {shape:?}, expected {expected}")), "{e}");
    let mut dtype = arrays.clone();
    dtype.insert("mlp_head.1.bias".into(), OutArray::i64(&[3], &[0, 0, 0]));
    let e = err(&dtype, &meta);
    assert!(e.contains("`mlp_head.1.bias` has dtype I64"), "{e}");
    let mut unknown = arrays.clone();
    unknown.insert("transformer.layers.0.0.fn.extra".into(), OutArray::f64(&[1], vec![0.0]));
    let e = err(&unknown, &meta);
    assert!(e.contains("unknown tensor `transformer.layers.0.0.fn.extra`"), "{e}");
    let mut no_heads = meta.clone();
    no_heads.remove("heads");
    let e = err(&arrays, &no_heads);
    assert!(e.contains("configuration key `heads` is missing"), "{e}");
    let mut bad_patch = meta.clone();
    bad_patch.insert("patch_size".into(), "3".into());
    let e = err(&arrays, &bad_patch);
    assert!(e.contains("image_size 4 is not a multiple of patch_size 3"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn aot_checkpoints_round_trip_and_bad_tensors_are_refused_by_name() {
    let config = AotConfig {
        vision: vision(2, 4, 2, 2, Pool::Cls),
        dim_head: Some(2),
        prenorm: true,
        phi: Phi::Threshold(0.7),
    };
    roundtrip_and_refusals::<AotLayer<B>>(
        &config,
        "aot",
        "transformer.layers.0.0.fn.qkv.weight",
        &[4, 3],
        "[4, 4]",
    );
}

#[test]
fn tost_checkpoints_round_trip_and_bad_tensors_are_refused_by_name() {
    let config = TostConfig {
        vision: vision(2, 4, 2, 2, Pool::Cls),
        ista_step_size: 0.1,
        ista_lambda: 0.1,
        qkv_bias: false,
    };
    roundtrip_and_refusals::<TostLayer<B>>(
        &config,
        "tost",
        "transformer.layers.1.0.fn.temp",
        &[3, 1],
        "[2, 1]",
    );
}

#[test]
fn configurations_that_do_not_divide_are_refused_at_construction() {
    let v = vision(3, 192, 2, 6, Pool::Cls);
    let aot = |vision: VisionConfig| AotConfig { vision, dim_head: None, prenorm: true, phi: Phi::Softmax };
    let tost =
        |vision: VisionConfig| TostConfig { vision, ista_step_size: 0.1, ista_lambda: 0.1, qkv_bias: false };
    let e = Aot::<B>::new(&be(), &aot(VisionConfig { heads: 5, ..v.clone() }), 0).unwrap_err().to_string();
    assert!(e.contains("dim 192 is not a multiple of heads 5"), "{e}");
    let e =
        Aot::<B>::new(&be(), &aot(VisionConfig { image_size: 7, ..v.clone() }), 0).unwrap_err().to_string();
    assert!(e.contains("image_size 7 is not a multiple of patch_size 2"), "{e}");
    let e = Aot::<B>::new(&be(), &AotConfig { phi: Phi::Threshold(1.5), ..aot(v.clone()) }, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tau = 1.5"), "{e}");
    let e = Tost::<B>::new(&be(), &tost(VisionConfig { heads: 5, ..v.clone() }), 0).unwrap_err().to_string();
    assert!(e.contains("TOST: dim 192 is not a multiple of heads 5"), "{e}");
    let e = Tost::<B>::new(&be(), &tost(VisionConfig { patch_size: 0, ..v }), 0).unwrap_err().to_string();
    assert!(e.contains("patch_size must be positive"), "{e}");
}

#[test]
fn measurements_have_the_reference_shapes() {
    let v = VisionConfig { image_size: 8, ..vision(3, 8, 2, 2, Pool::Cls) };
    let n = v.tokens();
    let aot = Aot::<B>::new(
        &be(),
        &AotConfig { vision: v.clone(), dim_head: None, prenorm: true, phi: Phi::Softmax },
        1,
    )
    .unwrap();
    let images = randn(&mut rng(2), &[3, 3, 8, 8], 1.0);
    let (_, cache) = aot.forward(&images).unwrap();
    let ms = aot.measure(&cache).unwrap();
    assert_eq!(ms.len(), 2);
    for m in &ms {
        assert_eq!(m.coding_rate_per_head.len(), 2);
        assert!((m.coding_rate - m.coding_rate_per_head.iter().sum::<f64>()).abs() < 1e-9);
        assert!(m.sparsity.is_none());
        let a = m.map.as_ref().unwrap();
        assert_eq!(a.shape(), &[3, 2, n, n]);
        assert!(a.sum_axis(-1, false).to_f64_vec().iter().all(|s| (s - 1.0).abs() < 1e-12));
    }
    let tost = Tost::<B>::new(
        &be(),
        &TostConfig { vision: v, ista_step_size: 0.1, ista_lambda: 0.1, qkv_bias: false },
        1,
    )
    .unwrap();
    let (_, cache) = tost.forward(&images).unwrap();
    for m in tost.measure(&cache).unwrap() {
        assert_eq!(m.coding_rate_per_head.len(), 2);
        let (s, _) = m.sparsity.unwrap();
        assert!((0.0..=1.0).contains(&s));
        let pi = m.map.unwrap();
        assert_eq!(pi.shape(), &[3, n, 2]);
        assert!(pi.sum_axis(-1, false).to_f64_vec().iter().all(|s| (s - 1.0).abs() < 1e-12));
    }
}

#[test]
fn micro_batches_give_the_whole_batch_results() {
    use models::nn::crate_model::Execution;
    let config = TostConfig {
        vision: vision(2, 4, 2, 2, Pool::Cls),
        ista_step_size: 0.1,
        ista_lambda: 0.1,
        qkv_bias: false,
    };
    let model = Tost::<B>::new(&be(), &config, 3).unwrap();
    let images = randn(&mut rng(4), &[5, 2, 4, 4], 1.0);
    let labels = [0, 1, 2, 0, 1];
    let ce = CrossEntropy::new(0.1).unwrap();
    let (l0, g0) = model.loss_and_gradients(&images, &labels, &ce).unwrap();
    let want = model.logits(&images).unwrap().to_f64_vec();
    for exec in [Execution::parallel_micro_batches(2), Execution { micro_batch: Some(3), parallel: false }] {
        let got = model.logits_with(&images, &exec).unwrap().to_f64_vec();
        assert!(models::fixtures::max_abs_diff(&got, &want) < 1e-12);
        let (l1, g1) = model.loss_and_gradients_with(&images, &labels, &ce, &exec).unwrap();
        assert!((l0 - l1).abs() < 1e-12);
        assert!(models::fixtures::max_abs_diff(&g0.input.to_f64_vec(), &g1.input.to_f64_vec()) < 1e-12);
        for (name, t) in &g0.params {
            assert!(
                models::fixtures::max_abs_diff(&t.to_f64_vec(), &g1.params[name].to_f64_vec()) < 1e-12,
                "{name}"
            );
        }
    }
}
