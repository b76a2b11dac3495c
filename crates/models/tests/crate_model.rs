//! The whole CRATE model: backward against finite differences, configuration checks, checkpoints, measurements and AdamW.
mod common;

use common::*;
use models::io::{write_safetensors, OutArray, TensorFile};
use models::nn::crate_model::{head_coding_rates, Crate, CrateConfig, MEASURE_EPS_SQ};
use models::nn::head::Pool;
use models::nn::loss::CrossEntropy;
use models::nn::Module;
use models::train::AdamW;
use models::Tensor;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn tiny(
    channels: usize,
    dim: usize,
    depth: usize,
    heads: usize,
    dim_head: Option<usize>,
    pool: Pool,
) -> CrateConfig {
    let vision = vision(channels, dim, depth, heads, pool);
    CrateConfig { vision, dim_head, ..CrateConfig::tiny() }
}

/// `config` on `image_size` images cut into `patch_size` patches.
fn sized(image_size: usize, patch_size: usize, mut config: CrateConfig) -> CrateConfig {
    config.vision.image_size = image_size;
    config.vision.patch_size = patch_size;
    config
}

fn ista_masks(cache: &models::nn::crate_model::CrateCache<B>) -> Vec<Vec<bool>> {
    cache.layers.iter().map(|l| zeros_of(&l.ista.out)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn crate_backward_matches_finite_differences(
        seed in any::<u64>(), batch in 1usize..3, channels in 1usize..3, heads in 1usize..3, dh in 1usize..4, depth in 1usize..3,
        dim in 2usize..5, mean in any::<bool>(), smoothing in 0.0f64..0.3,
    ) {
        let pool = if mean { Pool::Mean } else { Pool::Cls };
        let config = tiny(channels, dim, depth, heads, Some(dh), pool);
        let model = perturbed(&Crate::new(&be(), &config, seed).unwrap(), seed ^ 1);
        let mut g = rng(seed ^ 2);
        let images = randn(&mut g, &[batch, channels, 4, 4], 1.0);
        let labels: Vec<usize> = (0..batch).map(|i| (i + seed as usize) % 3).collect();
        let ce = CrossEntropy::new(smoothing).unwrap();
        let (_, cache) = model.forward(&images).unwrap();
        let masks = ista_masks(&cache);
        let (_, grads) = model.loss_and_gradients(&images, &labels, &ce).unwrap();
        // the loss where the ReLU masks of every ISTA block are those of the base point
        let loss = |m: &Crate<B>, x: &Tensor<B>| {
            let (logits, c) = m.forward(x).unwrap();
            (ista_masks(&c) == masks).then(|| ce.forward(&logits, &labels).unwrap().0)
        };
        let names = params(&model);
        prop_assert_eq!(grads.params.len(), names.len());
        for (name, p) in &names {
            let gp = &grads.params[name];
            if p.numel() <= 8 {
                check_coords(name, p, gp, &|v| loss(&with_param(&model, name, v), &images));
            } else {
                for _ in 0..2 {
                    check_direction(name, p, gp, &mut g, &|v| loss(&with_param(&model, name, v), &images));
                }
            }
        }
        for _ in 0..2 {
            check_direction("input", &images, &grads.input, &mut g, &|v| loss(&model, v));
        }
    }
}

#[test]
fn table_4_1_presets_have_the_published_parameter_counts() {
    // Table 4.1: CRATE-T 6.09M, CRATE-S 13.12M, CRATE-B 22.80M, CRATE-L 77.64M
    for (config, millions) in [
        (CrateConfig::tiny(), 6.09),
        (CrateConfig::small(), 13.12),
        (CrateConfig::base(), 22.80),
        (CrateConfig::large(), 77.64),
    ] {
        config.validate().unwrap();
        let n = config.parameter_count() as f64 / 1e6;
        assert!((n - millions).abs() < 0.005, "{config:?}: {n}M parameters, table says {millions}M");
    }
    for name in ["tiny", "small", "base", "large", "cifar-small", "mnist-small"] {
        CrateConfig::preset(name).unwrap().validate().unwrap();
    }
    assert!(CrateConfig::preset("huge").is_err());
}

#[test]
fn parameter_count_matches_the_built_model() {
    for config in [
        CrateConfig::mnist_small(),
        tiny(2, 4, 2, 2, Some(3), Pool::Cls),
        tiny(1, 4, 1, 1, None, Pool::Mean), // one full head: no to_out
    ] {
        let model = Crate::new(&be(), &config, 1).unwrap();
        let mut n = 0;
        model.visit("", &mut |_, p| n += p.numel());
        assert_eq!(n, config.parameter_count(), "{config:?}");
    }
}

#[test]
fn bad_configurations_are_refused_with_the_field() {
    let base = CrateConfig::cifar_small();
    let with = |f: fn(&mut CrateConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(CrateConfig, &str)> = vec![
        (with(|c| c.vision.image_size = 30), "image_size 30 is not a multiple of patch_size 4"),
        (with(|c| c.vision.heads = 5), "dim 192 is not a multiple of heads 5"),
        (with(|c| c.vision.dim = 0), "dim must be positive"),
        (with(|c| c.vision.patch_size = 0), "patch_size must be positive"),
        (with(|c| c.vision.heads = 0), "heads must be positive"),
        (with(|c| c.dim_head = Some(0)), "dim_head must be positive"),
        (with(|c| c.vision.layernorm_eps = 0.0), "layernorm_eps"),
        (with(|c| c.ista_lambda = f64::NAN), "ista_lambda"),
    ];
    for (config, msg) in cases {
        let e = Crate::<B>::new(&be(), &config, 0).unwrap_err().to_string();
        assert!(e.contains(msg), "{e:?} should mention {msg:?}");
    }
    // an explicit dim_head lifts the divisibility requirement, as in the reference constructor
    Crate::<B>::new(&be(), &tiny(1, 6, 1, 5, Some(16), Pool::Cls), 0).unwrap();
}

#[test]
fn images_of_the_wrong_shape_are_refused() {
    let model = Crate::<B>::new(&be(), &tiny(2, 4, 1, 2, None, Pool::Cls), 0).unwrap();
    for shape in [[1, 1, 4, 4], [1, 2, 4, 6], [0, 2, 4, 4]] {
        let x = Tensor::zeros(&be(), &shape);
        let e = model.forward(&x).unwrap_err().to_string();
        assert!(e.contains("images have shape"), "{e}");
    }
}

fn checkpoint_arrays(model: &Crate<B>) -> BTreeMap<String, OutArray> {
    let mut arrays = BTreeMap::new();
    for (name, t) in model.state_dict() {
        arrays.insert(name, OutArray::f64(t.shape(), t.to_f64_vec()));
    }
    arrays
}

fn load_err(
    dir: &std::path::Path,
    arrays: &BTreeMap<String, OutArray>,
    meta: &BTreeMap<String, String>,
) -> String {
    let path = dir.join("bad.safetensors");
    write_safetensors(&path, arrays, meta).unwrap();
    Crate::<B>::load(&be(), &path).unwrap_err().to_string()
}

#[test]
fn checkpoints_round_trip_and_bad_tensors_are_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("crate-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = tiny(2, 4, 2, 2, None, Pool::Cls);
    let model = Crate::<B>::new(&be(), &config, 7).unwrap();
    let images = randn(&mut rng(3), &[2, 2, 4, 4], 1.0);
    let want = model.logits(&images).unwrap().to_f64_vec();

    let path = dir.join("ok.safetensors");
    model.save(&path, safetensors::Dtype::F64).unwrap();
    let back = Crate::<B>::load(&be(), &path).unwrap();
    assert_eq!(back.config, CrateConfig { dim_head: Some(2), ..config.clone() });
    assert_eq!(back.logits(&images).unwrap().to_f64_vec(), want);
    // an f32 checkpoint loads too (rounded)
    model.save(&path, safetensors::Dtype::F32).unwrap();
    let back32 = Crate::<B>::load(&be(), &path).unwrap();
    let got = back32.logits(&images).unwrap().to_f64_vec();
    assert!(models::fixtures::max_abs_diff(&got, &want) < 1e-4);

    let meta = config.to_metadata();
    let arrays = checkpoint_arrays(&model);

    let mut missing = arrays.clone();
    missing.remove("transformer.layers.1.1.fn.weight");
    let e = load_err(&dir, &missing, &meta);
    assert!(e.contains("missing tensor `transformer.layers.1.1.fn.weight`"), "{e}");

    let mut shape = arrays.clone();
    shape.insert("transformer.layers.0.0.fn.qkv.weight".into(), OutArray::f64(&[4, 3], vec![0.0; 12]));
    let e = load_err(&dir, &shape, &meta);
    assert!(e.contains("`transformer.layers.0.0.fn.qkv.weight` has shape [4, 3], expected [4, 4]"), "{e}");

    let mut dtype = arrays.clone();
    dtype.insert("mlp_head.1.bias".into(), OutArray::i64(&[3], &[0, 0, 0]));
    let e = load_err(&dir, &dtype, &meta);
    assert!(e.contains("`mlp_head.1.bias` has dtype I64"), "{e}");

    let mut unknown = arrays.clone();
    unknown.insert("transformer.layers.0.0.fn.to_qkv.bias".into(), OutArray::f64(&[4], vec![0.0; 4]));
    let e = load_err(&dir, &unknown, &meta);
    assert!(e.contains("unknown tensor `transformer.layers.0.0.fn.to_qkv.bias`"), "{e}");

    let mut no_heads = meta.clone();
    no_heads.remove("heads");
    let e = load_err(&dir, &arrays, &no_heads);
    assert!(e.contains("missing metadata key `heads`"), "{e}");

    let mut wrong_depth = meta.clone();
    wrong_depth.insert("depth".into(), "3".into());
    let e = load_err(&dir, &arrays, &wrong_depth);
    assert!(e.contains("metadata `depth` = 3 but the tensors give 2"), "{e}");

    let mut bad_patch = meta.clone();
    bad_patch.insert("patch_size".into(), "3".into());
    let e = load_err(&dir, &arrays, &bad_patch);
    assert!(e.contains("image_size 4 is not a multiple of patch_size 3"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_fixture_checkpoint_is_refused_as_a_whole_because_it_holds_non_parameters() {
    // crate.safetensors holds gradients and data besides the parameters: a strict load names one of them
    let path = models::fixtures::fixture_dir().join("crate.safetensors");
    let e = Crate::<B>::load(&be(), &path).unwrap_err().to_string();
    assert!(e.contains("unknown tensor `"), "{e}");
    let f = TensorFile::read(&path).unwrap();
    let c = CrateConfig::from_checkpoint(&f).unwrap();
    let v = &c.vision;
    assert_eq!((v.dim, v.depth, v.heads, c.head_dim(), v.num_classes), (64, 2, 4, 16, 10));
}

#[test]
fn measurements_follow_the_reference_definitions() {
    let config = sized(8, 2, tiny(3, 8, 2, 2, None, Pool::Cls));
    let model = perturbed(&Crate::<B>::new(&be(), &config, 11).unwrap(), 12);
    let images = randn(&mut rng(13), &[3, 3, 8, 8], 1.0);
    let (_, cache) = model.forward(&images).unwrap();
    let m = model.measure(&cache).unwrap();
    assert_eq!(m.len(), 2);
    let (n, heads, p) = (config.tokens(), config.vision.heads, config.head_dim());
    for (l, lm) in m.iter().enumerate() {
        // sparsity: exact zeros of the ISTA output (= the layer output)
        let out = cache.tokens[l + 1].to_f64_vec();
        let per = n * config.vision.dim;
        let fr: Vec<f64> =
            out.chunks(per).map(|c| c.iter().filter(|&&x| x == 0.0).count() as f64 / per as f64).collect();
        let mean = fr.iter().sum::<f64>() / 3.0;
        let (sparsity, _) = lm.sparsity.expect("CRATE layers measure their ISTA output");
        assert!((sparsity - mean).abs() < 1e-15);
        // coding rate: the authors' formula on the n x n Gram of unit tokens, summed over heads
        let w = cache.layers[l].attn.head_tokens().to_f64_vec();
        let mut totals = [0.0; 3];
        for b in 0..3 {
            for h in 0..heads {
                let mut z: Vec<f64> = w[(b * heads + h) * n * p..(b * heads + h + 1) * n * p].to_vec();
                for row in z.chunks_mut(p) {
                    let nr = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                    row.iter_mut().for_each(|x| *x /= nr);
                }
                let zt = Tensor::from_f64(&be(), &z, &[n, p]);
                let gram = zt.matmul_t(&zt, false, true).scale(p as f64 / (n as f64 * MEASURE_EPS_SQ));
                let r = 0.5 * gram.add(&Tensor::eye(&be(), n)).spd_logdet().unwrap().scalar();
                totals[b] += r;
            }
        }
        let mean_rate = totals.iter().sum::<f64>() / 3.0;
        assert!((lm.coding_rate - mean_rate).abs() < 1e-10, "{} vs {mean_rate}", lm.coding_rate);
        let sd = (totals.iter().map(|t| (t - mean_rate).powi(2)).sum::<f64>() / 2.0).sqrt();
        assert!((lm.coding_rate_std - sd).abs() < 1e-10);
        assert!((lm.coding_rate_per_head.iter().sum::<f64>() - mean_rate).abs() < 1e-10);
        // attention maps: [batch, heads, n, n], rows sum to one
        let attention = lm.map.as_ref().unwrap();
        assert_eq!(attention.shape(), &[3, heads, n, n]);
        let rows = attention.sum_axis(-1, false).to_f64_vec();
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-12));
    }
    // unit-norm tokens of a single head spanning the identity: rate of orthonormal rows is known
    let eye = Tensor::eye(&be(), 4).reshape(&[1, 1, 4, 4]).scale(3.0);
    let r = head_coding_rates(&eye, MEASURE_EPS_SQ).unwrap()[0][0];
    assert!((r - 0.5 * 4.0 * (1.0 + 1.0 / MEASURE_EPS_SQ).ln()).abs() < 1e-12, "{r}");
}

#[test]
fn adamw_step_matches_pytorch_update_rule() {
    let config = tiny(1, 4, 1, 2, None, Pool::Cls);
    let mut model = Crate::<B>::new(&be(), &config, 3).unwrap();
    let images = randn(&mut rng(4), &[2, 1, 4, 4], 1.0);
    let labels = [0, 2];
    let ce = CrossEntropy::default();
    let mut opt = AdamW::adamw(1e-2);
    opt.config.weight_decay = 0.05;
    // host reference of torch.optim.AdamW for every parameter
    let mut reference: BTreeMap<String, (Vec<f64>, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (name, p) in params(&model) {
        let n = p.numel();
        reference.insert(name, (p.to_f64_vec(), vec![0.0; n], vec![0.0; n]));
    }
    let mut losses = Vec::new();
    for t in 1..=4 {
        let (loss, grads) = model.loss_and_gradients(&images, &labels, &ce).unwrap();
        losses.push(loss);
        for (name, (p, m, v)) in reference.iter_mut() {
            let g = grads.params[name].to_f64_vec();
            let (b1, b2): (f64, f64) = (0.9, 0.999);
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            for i in 0..p.len() {
                p[i] *= 1.0 - 1e-2 * 0.05;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= 1e-2 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        opt.step(&mut model, &grads.params).unwrap();
        for (name, p) in params(&model) {
            let err = models::fixtures::max_abs_diff(&p.to_f64_vec(), &reference[&name].0);
            assert!(err < 1e-14, "step {t} `{name}`: {err}");
            assert_eq!(opt.steps_of(&name), t as u64);
        }
    }
    assert!(losses[3] < losses[0], "training on one batch lowers its loss: {losses:?}");
    // a gradient of the wrong shape is refused before anything changes
    let mut bad = models::nn::Grads::new();
    bad.insert("cls_token".to_string(), Tensor::zeros(&be(), &[3]));
    let e = opt.step(&mut model, &bad).unwrap_err().to_string();
    assert!(e.contains("`cls_token`"), "{e}");
}

#[test]
fn micro_batches_give_the_whole_batch_results() {
    use models::nn::crate_model::Execution;
    let config = sized(8, 4, tiny(2, 8, 2, 2, None, Pool::Cls));
    let model = perturbed(&Crate::<B>::new(&be(), &config, 21).unwrap(), 22);
    let images = randn(&mut rng(23), &[7, 2, 8, 8], 1.0);
    let labels = [0, 1, 2, 0, 1, 2, 1];
    let ce = CrossEntropy::new(0.1).unwrap();
    let want_logits = model.logits(&images).unwrap().to_f64_vec();
    // the full forward (every token of the last layer) gives the same logits as the pruned one
    let full = model.forward(&images).unwrap().0.to_f64_vec();
    assert!(models::fixtures::max_abs_diff(&full, &want_logits) < 1e-13);
    let (want_loss, want) = model.loss_and_gradients(&images, &labels, &ce).unwrap();
    for exec in [
        Execution::default(),
        Execution::parallel_micro_batches(2),
        Execution::parallel_micro_batches(3),
        Execution { micro_batch: Some(4), parallel: false },
        Execution::parallel_micro_batches(100),
    ] {
        let l = model.logits_with(&images, &exec).unwrap().to_f64_vec();
        assert!(models::fixtures::max_abs_diff(&l, &want_logits) < 1e-13, "{exec:?}");
        let (loss, g) = model.loss_and_gradients_with(&images, &labels, &ce, &exec).unwrap();
        assert!((loss - want_loss).abs() < 1e-13, "{exec:?}: {loss} vs {want_loss}");
        assert_eq!(g.params.len(), want.params.len());
        for (name, t) in &want.params {
            let e = models::fixtures::max_abs_diff(&g.params[name].to_f64_vec(), &t.to_f64_vec());
            assert!(e < 1e-13, "{exec:?} `{name}`: {e}");
        }
        assert!(models::fixtures::max_abs_diff(&g.input.to_f64_vec(), &want.input.to_f64_vec()) < 1e-13);
    }
    let e = model
        .loss_and_gradients_with(&images, &labels[..3], &ce, &Execution::parallel_micro_batches(2))
        .unwrap_err();
    assert!(e.to_string().contains("3 labels for a batch of 7 images"), "{e}");
}
