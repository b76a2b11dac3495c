//! Whole models on `WgpuBackend` against `CpuBackend<f64>`: the Figure 4.5 ReduNet (tensor engine), the invariant ReduNet on the public Fourier1D fixture, CRATE and TSSA forward and backward.
//!
//! Each test runs the same model, with the same parameters and inputs, on the
//! GPU (f32) and on the CPU in f64, and bounds the largest difference
//! norm-wise: `max |wgpu - cpu| <= tol * max(1, max |cpu|)`. The tolerances
//! are the constants below: 1e-5 for forward values, 1e-4 for gradients,
//! 60 to 200 times the largest errors measured on llvmpipe (1.6e-7 forward,
//! 5.1e-7 for gradients; every error is printed with `--nocapture`), to leave
//! room for other adapters' summation orders and fused multiply-adds.
//! Parameters that come from fixtures are rounded to f32 on the GPU and used
//! exactly in f64 on the CPU, so the bounds include that rounding. Without an
//! adapter every test says so and passes, unless `RATE_REQUIRE_GPU=1`.
mod common;

use backend_cpu::CpuBackend;
use backend_wgpu::WgpuBackend;
use common::{assert_rel, gpu};
use models::fixtures;
use models::invariant::{InvariantConfig, InvariantReduNet};
use models::nn::classifier::{Block, VisionConfig};
use models::nn::crate_model::{Crate, CrateConfig};
use models::nn::head::Pool;
use models::nn::loss::CrossEntropy;
use models::nn::tssa::Tssa;
use models::nn::{Grads, Module};
use models::redunet::{gaussians, Engine, ReduNet, ReduNetConfig};
use rate_core::{Backend, Tensor};

type C64 = CpuBackend<f64>;

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(g) => g,
            None => return,
        }
    };
}

/// ReduNet features, rates and the frozen network on new data (d = 3, about 40 layers of f32 round-off).
const REDUNET_TOL: f64 = 1e-5;
/// Invariant ReduNet: spectra, rates and output over the fixture's 5 layers.
const INVARIANT_TOL: f64 = 1e-5;
/// Forward values of CRATE and TSSA (logits, tokens, outputs, loss).
const FORWARD_TOL: f64 = 1e-5;
/// Gradients of CRATE and TSSA (every parameter and the input).
const GRAD_TOL: f64 = 1e-4;

fn rates_vec(rates: &[rate_core::Rates]) -> Vec<f64> {
    rates.iter().flat_map(|r| [r.r, r.rc, r.delta_r]).collect()
}

/// Figure 4.5 (3 Gaussians in R^3, sigma 0.1, eta 0.5, eps^2 0.1, lambda 500) with 100 samples a class and 40
/// layers, built by the generic tensor engine (`Engine::Tensor`: batched backend ops, no host kernel) on the GPU.
#[test]
fn redunet_figure_4_5_tensor_engine_matches_cpu_f64() {
    let g = gpu_or_skip!();
    let c = C64::new();
    let (k, d, layers) = (3, 3, 40);
    let train = gaussians(k, d, 100, 0.1, 11).expect("train");
    let test = gaussians(k, d, 50, 0.1, 12).expect("test");
    let mut cfg = ReduNetConfig::new(k, layers);
    cfg.engine = Engine::Tensor;
    let (net_g, tr_g) = ReduNet::build(&train.tensor(g), &train.labels, cfg.clone()).expect("build on wgpu");
    let (net_c, tr_c) = ReduNet::build(&train.tensor(&c), &train.labels, cfg.clone()).expect("build on cpu");
    assert_eq!(net_g.config().engine, Engine::Tensor, "the tensor engine ran on wgpu");
    assert_eq!(net_g.depth(), layers);
    // The per-layer operators E, C^j live on the GPU backend.
    assert!(net_g.layers()[0].operators().backend().name().starts_with("wgpu"));

    assert_rel("redunet: features", &tr_g.output.to_f64_vec(), &tr_c.output.to_f64_vec(), REDUNET_TOL);
    assert_rel("redunet: rates", &rates_vec(&tr_g.rates_true), &rates_vec(&tr_c.rates_true), REDUNET_TOL);
    for l in 0..layers {
        assert_eq!(tr_g.yhat(l), tr_c.yhat(l), "redunet: yhat of layer {l}");
    }
    let dr = &tr_g.rates_true;
    assert!(
        dr[layers].delta_r > dr[0].delta_r + 0.1,
        "delta_R rises on wgpu: {:?} -> {:?}",
        dr[0],
        dr[layers]
    );
    let zt_g = net_g.transform(&test.tensor(g)).expect("transform on wgpu");
    let zt_c = net_c.transform(&test.tensor(&c)).expect("transform on cpu");
    assert_rel("redunet: transform(test)", &zt_g.to_f64_vec(), &zt_c.to_f64_vec(), REDUNET_TOL);

    // The CPU's fused host engine computes the same map.
    cfg.engine = Engine::Fused;
    let (_, tr_f) = ReduNet::build(&train.tensor(&c), &train.labels, cfg).expect("fused build on cpu");
    assert_rel(
        "redunet: features vs cpu fused",
        &tr_g.output.to_f64_vec(),
        &tr_f.output.to_f64_vec(),
        REDUNET_TOL,
    );
}

/// The invariant ReduNet on the public fixture `redunet_fourier1d` (24 signals, 4 channels, 16 samples,
/// 5 layers): every layer's spectra, the rates, the output and the frozen network on the training signals.
#[test]
fn invariant_redunet_fourier1d_fixture_matches_cpu_f64() {
    let g = gpu_or_skip!();
    let c = C64::new();
    let f = fixtures::load("redunet_fourier1d").expect("fixture");
    let config = InvariantConfig {
        layers: f.meta_usize("layers").expect("layers"),
        eta: f.meta_f64("eta").expect("eta"),
        eps_sq: f.meta_f64("eps_sq").expect("eps_sq"),
        lambda: f.meta_f64("lmbda").expect("lmbda"),
        keep_spectra: true,
        ..Default::default()
    };
    let classes = f.meta_usize("num_classes").expect("num_classes");
    let y = f.labels("y").expect("y");
    let xg = f.tensor(g, "V").expect("V");
    let xc = f.tensor(&c, "V").expect("V");
    let og = InvariantReduNet::construct(&xg, &y, classes, &config).expect("construct on wgpu");
    let oc = InvariantReduNet::construct(&xc, &y, classes, &config).expect("construct on cpu");

    for (l, (sg, sc)) in og.record.spectra.iter().zip(&oc.record.spectra).enumerate() {
        let ((gr, gi), (cr, ci)) = (sg.to_f64_vecs(), sc.to_f64_vecs());
        assert_rel(&format!("invariant: spectrum {l} (re)"), &gr, &cr, INVARIANT_TOL);
        assert_rel(&format!("invariant: spectrum {l} (im)"), &gi, &ci, INVARIANT_TOL);
    }
    assert_eq!(og.record.spectra.len(), config.layers + 1);
    assert_rel(
        "invariant: rates (true labels)",
        &rates_vec(&og.record.rates_true),
        &rates_vec(&oc.record.rates_true),
        INVARIANT_TOL,
    );
    assert_rel(
        "invariant: rates (as logged)",
        &rates_vec(&og.record.rates_code),
        &rates_vec(&oc.record.rates_code),
        INVARIANT_TOL,
    );
    assert_eq!(og.record.yhat, oc.record.yhat, "invariant: memberships");
    let zg = og.features.to_f64_vec();
    assert_rel("invariant: output", &zg, &oc.features.to_f64_vec(), INVARIANT_TOL);
    assert_rel(
        "invariant: output vs fixture Z_final",
        &zg,
        &f.get("Z_final").expect("Z_final").data,
        INVARIANT_TOL,
    );
    let again = og.network.transform(&xg).expect("transform on wgpu");
    assert_rel(
        "invariant: transform(V)",
        &again.features.to_f64_vec(),
        &oc.features.to_f64_vec(),
        INVARIANT_TOL,
    );
}

/// Compares every gradient (parameters by name, then the input).
fn assert_grads<G: Backend>(what: &str, got: &Grads<G>, want: &Grads<C64>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the same parameters get gradients"
    );
    for (name, w) in want {
        assert_eq!(got[name].shape(), w.shape(), "{what}: grad {name} shape");
        assert_rel(&format!("{what}: grad {name}"), &got[name].to_f64_vec(), &w.to_f64_vec(), GRAD_TOL);
    }
}

/// One CRATE forward (logits, tokens of every layer, loss) and backward (every parameter, the input) on both backends.
fn check_crate(
    what: &str,
    mg: &Crate<WgpuBackend>,
    mc: &Crate<C64>,
    xg: &Tensor<WgpuBackend>,
    xc: &Tensor<C64>,
    labels: &[usize],
) {
    let (lg, cg) = mg.forward(xg).expect("forward on wgpu");
    let (lc, cc) = mc.forward(xc).expect("forward on cpu");
    assert_rel(&format!("{what}: logits"), &lg.to_f64_vec(), &lc.to_f64_vec(), FORWARD_TOL);
    assert_rel(
        &format!("{what}: logits (inference path)"),
        &mg.logits(xg).expect("logits").to_f64_vec(),
        &lc.to_f64_vec(),
        FORWARD_TOL,
    );
    for (i, (tg, tc)) in cg.tokens.iter().zip(&cc.tokens).enumerate() {
        assert_rel(&format!("{what}: tokens Z^{i}"), &tg.to_f64_vec(), &tc.to_f64_vec(), FORWARD_TOL);
    }
    let ce = CrossEntropy::default();
    let (loss_g, ceg) = ce.forward(&lg, labels).expect("loss on wgpu");
    let (loss_c, cec) = ce.forward(&lc, labels).expect("loss on cpu");
    assert_rel(&format!("{what}: loss"), &[loss_g], &[loss_c], FORWARD_TOL);
    let gg = mg.backward(&cg, &ce.backward(&ceg, 1.0));
    let gc = mc.backward(&cc, &ce.backward(&cec, 1.0));
    assert_grads(what, &gg.params, &gc.params);
    assert_rel(&format!("{what}: grad input"), &gg.input.to_f64_vec(), &gc.input.to_f64_vec(), GRAD_TOL);
}

/// CRATE with the public fixture's parameters and images (`crate`: 32x32x3, patch 8, dim 64, 4 heads, 2 layers, batch 3).
#[test]
fn crate_fixture_forward_backward_matches_cpu_f64() {
    let g = gpu_or_skip!();
    let c = C64::new();
    let f = fixtures::load("crate").expect("fixture");
    let config = CrateConfig::from_checkpoint(&f).expect("config");
    let names: Vec<&str> =
        f.tensors.keys().filter_map(|k| k.strip_prefix("grad.")).filter(|n| *n != "input").collect();
    let params = || names.iter().map(|n| (*n, f.get(n).expect("parameter")));
    let mg = Crate::from_state_dict(g, &config, params(), &f.path).expect("model on wgpu");
    let mc = Crate::from_state_dict(&c, &config, params(), &f.path).expect("model on cpu");
    let labels = f.labels("labels").expect("labels");
    check_crate(
        "crate fixture",
        &mg,
        &mc,
        &f.tensor(g, "input").expect("input"),
        &f.tensor(&c, "input").expect("input"),
        &labels,
    );
}

/// A tiny CRATE built by `Crate::new` (8x8 images, patch 4, dim 12, 3 heads, 2 layers, mean pooling), its
/// parameters rounded to f32 and copied to the CPU model so that both compute from the same values.
#[test]
fn crate_tiny_mean_pool_forward_backward_matches_cpu_f64() {
    let g = gpu_or_skip!();
    let c = C64::new();
    let vision = VisionConfig {
        image_size: 8,
        patch_size: 4,
        channels: 2,
        num_classes: 4,
        dim: 12,
        depth: 2,
        heads: 3,
        pool: Pool::Mean,
        ..VisionConfig::cifar_small()
    };
    let config = CrateConfig { vision, dim_head: None, ..CrateConfig::tiny() };
    let mg = Crate::new(g, &config, 7).expect("model on wgpu");
    let mut mc = Crate::new(&c, &config, 7).expect("model on cpu");
    let on_gpu = mg.state_dict();
    mc.visit_mut("", &mut |name, p| *p = Tensor::from_f64(&c, &on_gpu[&name].to_f64_vec(), p.shape()));
    let n = 3 * config.vision.channels * config.vision.image_size * config.vision.image_size;
    let x: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 / 50.0 - 1.0) as f32 as f64).collect();
    let shape = [3, config.vision.channels, config.vision.image_size, config.vision.image_size];
    check_crate(
        "crate tiny",
        &mg,
        &mc,
        &Tensor::from_f64(g, &x, &shape),
        &Tensor::from_f64(&c, &x, &shape),
        &[0, 3, 1],
    );
}

/// TSSA (ToST's attention) with the public fixture `tost_tssa` (batch 2, 50 tokens, dim 64, 4 heads): output,
/// the fast forward against its step-by-step reference, and the gradient of every parameter and of the input
/// for the loss `0.5 sum(out^2)`.
#[test]
fn tssa_fixture_forward_backward_matches_cpu_f64() {
    let g = gpu_or_skip!();
    let c = C64::new();
    let f = fixtures::load("tost_tssa").expect("fixture");
    let heads = f.meta_usize("heads").expect("heads");
    let lg = Tssa::from_named(heads, |name| f.tensor(g, name).ok()).expect("layer on wgpu");
    let lc = Tssa::from_named(heads, |name| f.tensor(&c, name).ok()).expect("layer on cpu");
    let xg = f.tensor(g, "input").expect("input");
    let xc = f.tensor(&c, "input").expect("input");
    let (og, cg) = lg.forward(&xg);
    let (oc, cc) = lc.forward(&xc);
    assert_rel("tssa: output", &og.to_f64_vec(), &oc.to_f64_vec(), FORWARD_TOL);
    assert_rel(
        "tssa: output vs fixture",
        &og.to_f64_vec(),
        &f.get("output").expect("output").data,
        FORWARD_TOL,
    );
    assert_rel(
        "tssa: forward_reference",
        &lg.forward_reference(&xg).to_f64_vec(),
        &oc.to_f64_vec(),
        FORWARD_TOL,
    );
    let (mut grads_g, mut grads_c) = (Grads::new(), Grads::new());
    let dx_g = lg.backward(&cg, &og, "", &mut grads_g, false);
    let dx_c = lc.backward(&cc, &oc, "", &mut grads_c, false);
    assert_grads("tssa", &grads_g, &grads_c);
    assert_rel("tssa: grad input", &dx_g.to_f64_vec(), &dx_c.to_f64_vec(), GRAD_TOL);
}

/// Tolerance of the training-loop comparison: per-step losses and the parameters after the steps, norm-wise
/// relative. SGD with momentum keeps the update linear in the gradients, so the f32 round-off of the GPU
/// (about 1e-7 per forward value, 1e-6 per gradient) stays that size; AdamW would turn the sign of a
/// near-zero gradient into a full `lr` step.
const TRAIN_TOL: f64 = 1e-4;

#[test]
fn the_training_loop_trains_on_wgpu_like_the_cpu() {
    use models::data::Dataset;
    use models::nn::crate_model::CrateLayer;
    use models::train::{Images, NoHooks, Session, TrainOptions};
    let gpu = gpu_or_skip!();
    // 40 images 1x8x8 of 4 classes (class c brighter in rows 2c, 2c+1)
    let labels: Vec<usize> = (0..40).map(|i| i % 4).collect();
    let x: Vec<f64> = (0..40 * 64)
        .map(|k| {
            let (i, j) = (k / 64, k % 64);
            let bump = if (j / 8) / 2 == labels[i] { 0.7 } else { 0.0 };
            ((k * 7919) % 101) as f64 / 250.0 + bump
        })
        .collect();
    let ds = Dataset::new("synthetic", x, &[1, 8, 8], labels, Some(4)).unwrap();
    let images = Images::new(&ds, 1, 8, 4, "training").unwrap();
    let vision = VisionConfig {
        image_size: 8,
        patch_size: 4,
        channels: 1,
        num_classes: 4,
        dim: 16,
        depth: 2,
        heads: 2,
        pool: Pool::Cls,
        layernorm_eps: 1e-5,
    };
    let config = CrateConfig { vision, ..CrateConfig::mnist_small() };
    let options = TrainOptions {
        epochs: 1,
        batch: 10,
        optimizer: "sgd".into(),
        lr: 0.05,
        weight_decay: 5e-4,
        warmup_epochs: 0.5,
        log_every: 1,
        measure_images: 0,
        ..TrainOptions::default()
    };
    let run = |out: &std::path::Path| -> (Vec<f64>, Vec<f64>) {
        let losses = |dir: &std::path::Path| -> Vec<f64> {
            std::fs::read_to_string(dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["kind"] == "step")
                .map(|v| v["loss"].as_f64().unwrap())
                .collect()
        };
        let params = |m: &dyn Fn(&mut dyn FnMut(String, Vec<f64>))| {
            let mut v = Vec::new();
            m(&mut |_, p| v.extend(p));
            v
        };
        let _ = std::fs::remove_dir_all(out);
        let (l, p) = if out.ends_with("gpu") {
            let mut s = Session::<WgpuBackend, CrateLayer<WgpuBackend>>::new(
                gpu,
                &config,
                options.clone(),
                images,
                None,
                out,
                "crate",
                vec![],
            )
            .unwrap();
            s.run(&mut NoHooks).unwrap();
            (losses(out), params(&|f| s.model.visit("", &mut |n, t| f(n, t.to_f64_vec()))))
        } else {
            let cpu = C64::new();
            let mut s = Session::<C64, CrateLayer<C64>>::new(
                &cpu,
                &config,
                options.clone(),
                images,
                None,
                out,
                "crate",
                vec![],
            )
            .unwrap();
            s.run(&mut NoHooks).unwrap();
            (losses(out), params(&|f| s.model.visit("", &mut |n, t| f(n, t.to_f64_vec()))))
        };
        let _ = std::fs::remove_dir_all(out);
        (l, p)
    };
    let base = std::env::temp_dir().join(format!("rate-wgpu-train-{}", std::process::id()));
    let (gpu_losses, gpu_params) = run(&base.join("gpu"));
    let (cpu_losses, cpu_params) = run(&base.join("cpu"));
    assert_eq!(gpu_losses.len(), 4);
    assert_rel("training losses, 4 SGD steps", &gpu_losses, &cpu_losses, TRAIN_TOL);
    assert_rel("parameters after 4 SGD steps", &gpu_params, &cpu_params, TRAIN_TOL);
    let _ = std::fs::remove_dir_all(base);
}
