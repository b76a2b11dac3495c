//! The training loop: optimiser and schedule formulas on hand-computed cases, convergence on a convex quadratic, weight-decay groups, clipping, the data pipeline with and without its prefetch thread, and bit-exact resume.
mod common;

use backend_cpu::CpuBackend;
use models::data::Dataset;
use models::nn::aot::AotConfig;
use models::nn::classifier::{Block, VisionConfig};
use models::nn::config::TostConfig;
use models::nn::crate_model::{CrateConfig, CrateLayer};
use models::nn::head::Pool;
use models::nn::{Grads, Module};
use models::train::checkpoint::{list_checkpoints, read_checkpoint, CHECKPOINTS_DIR};
use models::train::{
    clip_global_norm, global_norm, no_weight_decay, Augment, Hooks, Images, Loader, Normalisation, Optimizer,
    OptimizerConfig, Outcome, Schedule, Session, StepRecord, TrainOptions,
};
use models::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type B = CpuBackend<f64>;

/// One parameter tensor `w`.
struct Toy {
    w: Tensor<B>,
}

impl Module<B> for Toy {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        f(models::nn::join(prefix, "w"), &self.w);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        f(models::nn::join(prefix, "w"), &mut self.w);
    }
}

fn toy(v: &[f64]) -> Toy {
    Toy { w: Tensor::from_f64(&B::new(), v, &[v.len()]) }
}

fn grad(v: &[f64]) -> Grads<B> {
    let mut g = Grads::new();
    g.insert("w".to_string(), Tensor::from_f64(&B::new(), v, &[v.len()]));
    g
}

/// Steps `opt` with the gradients `gs` in turn at learning rate `lr` (every parameter decayed); the values after each.
fn trajectory(config: OptimizerConfig, p0: f64, gs: &[f64], lr: f64) -> Vec<f64> {
    let mut opt = Optimizer::<B>::new(config).unwrap();
    let mut m = toy(&[p0]);
    gs.iter()
        .map(|&g| {
            opt.step_with(&mut m, &grad(&[g]), lr, &|_, _| true).unwrap();
            m.w.to_f64_vec()[0]
        })
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} against {b:?}");
    }
}

#[test]
fn adamw_lion_and_sgd_follow_their_update_formulas() {
    // AdamW, p = 1, g = 0.5, lr 0.1, wd 0.1: m = 0.05, v = 2.5e-4, m^ = 0.5, v^ = 0.25,
    // p = 1 (1 - 0.01) - 0.1 * 0.5 / (0.5 + 1e-8) = 0.89 (to 1e-8)
    let adamw = OptimizerConfig { weight_decay: 0.1, ..OptimizerConfig::adamw(0.1) };
    close(&trajectory(adamw, 1.0, &[0.5], 0.1), &[0.89], 1e-8);
    // Lion, betas (0.9, 0.99), wd 0.1: u = sign(0.05) = 1, p = 0.99 - 0.1 = 0.89, m = 0.005;
    // then g = -1: u = sign(0.0045 - 0.1) = -1, p = 0.89 * 0.99 + 0.1 = 0.9811
    let lion = OptimizerConfig { weight_decay: 0.1, ..OptimizerConfig::lion(0.1) };
    close(&trajectory(lion, 1.0, &[0.5, -1.0], 0.1), &[0.89, 0.9811], 1e-12);
    // SGD Nesterov mu 0.9: buf = 0.5, p = 1 - 0.1 (0.5 + 0.45) = 0.905;
    // buf = 0.95, p = 0.905 - 0.1 (0.5 + 0.855) = 0.7695
    close(&trajectory(OptimizerConfig::sgd(0.1, 0.9, true), 1.0, &[0.5, 0.5], 0.1), &[0.905, 0.7695], 1e-12);
    // SGD heavy ball: p = 0.95, then buf = 0.95, p = 0.855
    close(&trajectory(OptimizerConfig::sgd(0.1, 0.9, false), 1.0, &[0.5, 0.5], 0.1), &[0.95, 0.855], 1e-12);
    // plain SGD with (coupled) weight decay 0.1: d = 0.5 + 0.1, p = 1 - 0.06
    let sgd_wd = OptimizerConfig { weight_decay: 0.1, ..OptimizerConfig::sgd(0.1, 0.0, false) };
    close(&trajectory(sgd_wd, 1.0, &[0.5], 0.1), &[0.94], 1e-12);
    // a parameter outside the decay group is not decayed: AdamW without the 0.99 factor
    let mut opt = Optimizer::<B>::new(adamw).unwrap();
    let mut m = toy(&[1.0]);
    opt.step_with(&mut m, &grad(&[0.5]), 0.1, &|_, _| false).unwrap();
    close(&m.w.to_f64_vec(), &[0.9], 1e-8);
    // invalid hyperparameters are refused by name
    let e = Optimizer::<B>::new(OptimizerConfig { momentum: 1.5, ..OptimizerConfig::sgd(0.1, 0.9, true) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("momentum 1.5"), "{e}");
}

#[test]
fn every_optimiser_decreases_a_convex_quadratic() {
    // f(w) = 1/2 sum_i a_i (w_i - c_i)^2, gradient a (w - c)
    let a = [1.0, 4.0, 0.5, 2.0];
    let c = [0.3, -1.0, 2.0, 0.7];
    let f = |w: &[f64]| 0.5 * w.iter().zip(&a).zip(&c).map(|((w, a), c)| a * (w - c) * (w - c)).sum::<f64>();
    for (config, lr) in [
        (OptimizerConfig { weight_decay: 0.0, ..OptimizerConfig::adamw(0.05) }, 0.05),
        (OptimizerConfig::lion(0.03), 0.03),
        (OptimizerConfig::sgd(0.05, 0.9, true), 0.05),
    ] {
        let mut opt = Optimizer::<B>::new(config).unwrap();
        let mut m = toy(&[0.0; 4]);
        let f0 = f(&m.w.to_f64_vec());
        let schedule = Schedule { lr, warmup_steps: 10, total_steps: 400, min_lr: 0.0 };
        for t in 0..400 {
            let w = m.w.to_f64_vec();
            let g: Vec<f64> = w.iter().zip(&a).zip(&c).map(|((w, a), c)| a * (w - c)).collect();
            opt.step_with(&mut m, &grad(&g), schedule.at(t), &|_, _| true).unwrap();
        }
        let f1 = f(&m.w.to_f64_vec());
        assert!(f1 < 1e-3 * f0, "{:?}: f from {f0} to {f1}", config.kind);
    }
}

#[test]
fn the_schedule_warms_up_linearly_then_decays_by_a_cosine_to_its_floor() {
    let s = Schedule { lr: 1.0, warmup_steps: 4, total_steps: 14, min_lr: 0.1 };
    close(&(0..4).map(|t| s.at(t)).collect::<Vec<_>>(), &[0.25, 0.5, 0.75, 1.0], 1e-15);
    assert_eq!(s.at(4), 1.0);
    // halfway through the decay: the mean of peak and floor
    assert!((s.at(9) - 0.55).abs() < 1e-15, "{}", s.at(9));
    // two steps into the ten of the decay: floor + (peak - floor) (1 + cos(0.2 pi)) / 2
    let q = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 0.2).cos());
    assert!((s.at(6) - q).abs() < 1e-15, "{} against {q}", s.at(6));
    assert_eq!(s.at(14), 0.1);
    assert_eq!(s.at(1000), 0.1);
    for t in 4..14 {
        assert!(s.at(t + 1) <= s.at(t), "not decreasing at {t}");
    }
    assert!(Schedule { lr: 0.0, ..s }.validate().is_err());
    assert!(Schedule { warmup_steps: 15, ..s }.validate().is_err());
}

fn vision(size: usize, patch: usize, channels: usize, classes: usize) -> VisionConfig {
    VisionConfig {
        image_size: size,
        patch_size: patch,
        channels,
        num_classes: classes,
        dim: 16,
        depth: 2,
        heads: 2,
        pool: Pool::Cls,
        layernorm_eps: 1e-5,
    }
}

/// The names of `model`'s parameters that get no weight decay, and all names.
fn groups<M: Module<B>>(model: &M) -> (Vec<String>, Vec<(String, Vec<usize>)>) {
    let mut all = Vec::new();
    model.visit("", &mut |n, p| all.push((n, p.shape().to_vec())));
    let no: Vec<String> = all.iter().filter(|(n, s)| no_weight_decay(n, s)).map(|(n, _)| n.clone()).collect();
    (no, all)
}

fn check_groups<M: Module<B>>(model: &M, what: &str) {
    let (no, all) = groups(model);
    for (name, shape) in &all {
        let last = name.rsplit('.').next().unwrap_or(name);
        // biases, LayerNorm weights (the only rank-1 weights), class token, positions, TSSA temperature
        let expected = last == "bias"
            || name == "cls_token"
            || name == "pos_embedding"
            || last == "temp"
            || (last == "weight" && shape.len() == 1);
        assert_eq!(no.contains(name), expected, "{what}: `{name}` {shape:?}");
    }
    for name in ["cls_token", "pos_embedding", "mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.bias"] {
        assert!(no.iter().any(|n| n == name), "{what}: `{name}` must not be decayed");
    }
    for name in ["mlp_head.1.weight", "to_patch_embedding.2.weight"] {
        assert!(
            all.iter().any(|(n, _)| n == name) && !no.iter().any(|n| n == name),
            "{what}: `{name}` is decayed"
        );
    }
}

#[test]
fn weight_decay_groups_exclude_exactly_the_named_parameters() {
    let be = B::new();
    let v = vision(8, 4, 1, 3);
    let crate_model = models::nn::crate_model::Crate::<B>::new(
        &be,
        &CrateConfig { vision: v.clone(), ..CrateConfig::mnist_small() },
        0,
    )
    .unwrap();
    check_groups(&crate_model, "CRATE");
    let aot = models::nn::classifier::Classifier::<B, models::nn::aot::AotLayer<B>>::new(
        &be,
        &AotConfig { vision: v.clone(), ..AotConfig::cifar_small() },
        0,
    )
    .unwrap();
    check_groups(&aot, "AoT");
    let tost = models::nn::classifier::Classifier::<B, models::nn::tost::TostLayer<B>>::new(
        &be,
        &TostConfig { vision: v, ..TostConfig::cifar_small() },
        0,
    )
    .unwrap();
    check_groups(&tost, "TOST");
    let (no, _) = groups(&tost);
    assert!(no.iter().any(|n| n.ends_with(".temp")), "TOST has a temperature: {no:?}");
}

#[test]
fn clipping_bounds_the_global_norm() {
    let be = B::new();
    let mut g = Grads::new();
    g.insert("a".into(), Tensor::from_f64(&be, &[3.0, 4.0], &[2]));
    g.insert("b".into(), Tensor::from_f64(&be, &[12.0], &[1]));
    assert_eq!(global_norm(&g), 13.0);
    let mut small = g.clone();
    assert_eq!(clip_global_norm(&mut small, 20.0), 13.0);
    assert_eq!(small["a"].to_f64_vec(), vec![3.0, 4.0], "under the bound nothing changes");
    let before = clip_global_norm(&mut g, 1.0);
    assert_eq!(before, 13.0);
    let after = global_norm(&g);
    assert!(after <= 1.0 && after > 1.0 - 1e-6, "{after}");
    // directions kept
    let a = g["a"].to_f64_vec();
    assert!((a[0] / a[1] - 0.75).abs() < 1e-12);
}

/// `n` random `[channels, size, size]` images of `classes` classes (class c brighter in band c).
fn images_dataset(n: usize, channels: usize, size: usize, classes: usize, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = channels * size * size;
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let mut x = vec![0.0; n * d];
    for (i, &l) in labels.iter().enumerate() {
        for j in 0..d {
            let row = (j % (size * size)) / size;
            let bump = if row * classes / size == l { 0.6 } else { 0.0 };
            x[i * d + j] = rng.random_range(0.0..0.4) + bump;
        }
    }
    Dataset::new("synthetic", x, &[channels, size, size], labels, Some(classes)).unwrap()
}

#[test]
fn batches_are_the_same_with_and_without_the_prefetch_thread_and_from_any_start() {
    let ds = images_dataset(23, 2, 6, 3, 1);
    let images = Images::new(&ds, 2, 6, 3, "training").unwrap();
    let norm = Normalisation::of(&images).unwrap();
    let loader = Loader {
        images,
        batch: 5,
        seed: 7,
        augment: Augment { crop_padding: 2, hflip: true },
        norm: norm.clone(),
    };
    assert_eq!(loader.batches_per_epoch(), 5);
    let collect = |epoch: usize, start: usize, prefetch: bool| {
        let mut out = Vec::new();
        loader
            .for_each_batch(epoch, start, prefetch, |i, b| {
                out.push((i, b));
                Ok(true)
            })
            .unwrap();
        out
    };
    let plain = collect(1, 0, false);
    let prefetched = collect(1, 0, true);
    assert_eq!(plain, prefetched);
    assert_eq!(plain.iter().map(|(_, b)| b.len()).collect::<Vec<_>>(), vec![5, 5, 5, 5, 3]);
    // every image once per epoch
    let mut labels: Vec<usize> = plain.iter().flat_map(|(_, b)| b.labels.clone()).collect();
    labels.sort();
    let mut expected = ds.labels().to_vec();
    expected.sort();
    assert_eq!(labels, expected);
    // resuming at batch 2 sees the same batches
    assert_eq!(collect(1, 2, true), plain[2..].to_vec());
    // another epoch: another order; augmentation changes the pixels
    assert_ne!(collect(2, 0, false)[0].1, plain[0].1);
    let still = Loader { augment: Augment::NONE, ..loader.clone() };
    let order = still.order(1);
    let b = still.batch(1, 0, &order);
    let mut raw = models::train::data::gather(&images, &order[..5]);
    norm.apply(&mut raw, 36);
    assert_eq!(b.images, raw, "without augmentation a batch is the normalised images in order");
    // normalised training data have mean 0 and deviation 1 per channel
    let mut all = models::train::data::gather(&images, &(0..23).collect::<Vec<_>>());
    norm.apply(&mut all, 36);
    for ch in 0..2 {
        let v: Vec<f64> =
            all.chunks(36).enumerate().filter(|(k, _)| k % 2 == ch).flat_map(|(_, c)| c.to_vec()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "channel {ch}: {mean} {var}");
    }
}

#[test]
fn images_that_do_not_fit_or_hold_nan_are_refused_by_name() {
    let ds = images_dataset(6, 1, 8, 3, 2);
    let e = Images::new(&ds, 1, 28, 3, "training").unwrap_err().to_string();
    assert!(e.contains("[1, 8, 8]") && e.contains("[1, 28, 28]"), "{e}");
    let e = Images::new(&ds, 1, 8, 2, "training").unwrap_err().to_string();
    assert!(e.contains("2 classes"), "{e}");
    let mut x = ds.features().to_vec();
    x[70] = f64::NAN;
    let bad = Dataset::new("bad.safetensors", x, &[1, 8, 8], ds.labels().to_vec(), Some(3)).unwrap();
    let e = Images::new(&bad, 1, 8, 3, "training").unwrap_err().to_string();
    assert!(e.contains("bad.safetensors") && e.contains("image 1") && e.contains("NaN"), "{e}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rate-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn options(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch: 8,
        lr: 3e-3,
        warmup_epochs: 0.5,
        micro_batch: 3,
        log_every: 1,
        measure_images: 6,
        eval_batch: 7,
        keep: 10,
        ..TrainOptions::default()
    }
}

fn crate_config() -> CrateConfig {
    CrateConfig { vision: vision(8, 4, 1, 3), ..CrateConfig::mnist_small() }
}

/// A new CRATE run of [`crate_config`] and [`options`]`(epochs)` into `out`.
fn crate_session<'d>(
    out: &Path,
    epochs: usize,
    train: Images<'d>,
    test: Option<Images<'d>>,
) -> Session<'d, B, CrateLayer<B>> {
    Session::new(&B::new(), &crate_config(), options(epochs), train, test, out, "crate", vec![]).unwrap()
}

/// The per-step losses of a run's metrics.jsonl.
fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn params<M: Module<B>>(m: &M) -> BTreeMap<String, Vec<f64>> {
    let mut out = BTreeMap::new();
    m.visit("", &mut |n, p| {
        out.insert(n, p.to_f64_vec());
    });
    out
}

/// Stops after step `at`.
struct StopAt(u64, u64);
impl Hooks for StopAt {
    fn on_step(&mut self, r: &StepRecord) {
        self.1 = r.step;
    }
    fn stop_requested(&self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn a_resumed_run_continues_bit_for_bit() {
    let be = B::new();
    let train_ds = images_dataset(36, 1, 8, 3, 3);
    let test_ds = images_dataset(12, 1, 8, 3, 4);
    let train = Images::new(&train_ds, 1, 8, 3, "training").unwrap();
    let test = Images::new(&test_ds, 1, 8, 3, "test").unwrap();
    let session = |out: &Path, epochs: usize| crate_session(out, epochs, train, Some(test));
    // uninterrupted: 2 epochs of 5 steps
    let full_dir = tmp("full");
    let mut full = session(&full_dir, 2);
    assert_eq!(full.run(&mut models::train::NoHooks).unwrap(), Outcome::Finished);
    let reference = step_losses(&full_dir);
    assert_eq!(reference.len(), 10);
    // the same 2-epoch run stopped after its first epoch, resumed to 2
    let a_dir = tmp("epoch");
    let mut first = session(&a_dir, 2);
    let out = first.run(&mut StopAt(5, 0)).unwrap();
    assert!(matches!(out, Outcome::Stopped(_)), "{out:?}");
    let ck =
        read_checkpoint(list_checkpoints(&a_dir.join(CHECKPOINTS_DIR)).unwrap().last().unwrap()).unwrap();
    assert_eq!((ck.state.epoch, ck.state.position, ck.state.step), (1, 0, 5));
    let mut resumed =
        Session::<B, CrateLayer<B>>::resume(&be, &ck, train, Some(test), &a_dir, "crate", None).unwrap();
    assert_eq!(resumed.run(&mut models::train::NoHooks).unwrap(), Outcome::Finished);
    assert_eq!(step_losses(&a_dir), reference, "per-step losses after an epoch-end resume");
    assert_eq!(params(&resumed.model), params(&full.model), "final parameters after an epoch-end resume");
    let strip = |h: &[models::train::EpochRecord]| -> Vec<(f64, f64, Option<f64>)> {
        h.iter().map(|r| (r.train_loss, r.train_accuracy, r.test_accuracy)).collect()
    };
    assert_eq!(strip(&resumed.state.history), strip(&full.state.history));
    // stopped in the middle of an epoch (after step 7), resumed
    let b_dir = tmp("mid");
    let mut second = session(&b_dir, 2);
    let out = second.run(&mut StopAt(7, 0)).unwrap();
    let Outcome::Stopped(dir) = out else { panic!("stopped: {out:?}") };
    let ck = read_checkpoint(&dir).unwrap();
    assert_eq!((ck.state.epoch, ck.state.position, ck.state.step), (1, 2, 7));
    let mut resumed =
        Session::<B, CrateLayer<B>>::resume(&be, &ck, train, Some(test), &b_dir, "crate", None).unwrap();
    assert_eq!(resumed.run(&mut models::train::NoHooks).unwrap(), Outcome::Finished);
    assert_eq!(step_losses(&b_dir), reference, "per-step losses after a mid-epoch resume");
    assert_eq!(params(&resumed.model), params(&full.model), "final parameters after a mid-epoch resume");
    assert_eq!(strip(&resumed.state.history), strip(&full.state.history));
    // the final model file loads and carries the normalisation
    let file = models::io::TensorFile::read(full_dir.join("model.safetensors")).unwrap();
    assert!(file.metadata.contains_key(models::train::data::NORM_MEAN_KEY));
    let loaded = models::nn::crate_model::Crate::<B>::load(&be, full_dir.join("model.safetensors")).unwrap();
    assert_eq!(params(&loaded), params(&full.model));
    for d in [full_dir, a_dir, b_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_checkpoint_of_another_model_or_other_data_is_refused_by_file_and_field() {
    let be = B::new();
    let train_ds = images_dataset(16, 1, 8, 3, 5);
    let train = Images::new(&train_ds, 1, 8, 3, "training").unwrap();
    let dir = tmp("refuse");
    let mut s = crate_session(&dir, 1, train, None);
    s.run(&mut models::train::NoHooks).unwrap();
    let ck_dir = list_checkpoints(&dir.join(CHECKPOINTS_DIR)).unwrap().pop().unwrap();
    let ck = read_checkpoint(&ck_dir).unwrap();
    // another model
    let e = Session::<B, models::nn::tost::TostLayer<B>>::resume(&be, &ck, train, None, &dir, "tost", None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("state.json") && e.contains("`model`"), "{e}");
    // other data
    let other_ds = images_dataset(20, 1, 8, 3, 6);
    let other = Images::new(&other_ds, 1, 8, 3, "training").unwrap();
    let e = Session::<B, CrateLayer<B>>::resume(&be, &ck, other, None, &dir, "crate", None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("train_images"), "{e}");
    // other class count: a model with 3 classes on 4-class data
    let four = images_dataset(16, 1, 8, 4, 5);
    let four_images = Images::new(&four, 1, 8, 4, "training").unwrap();
    let e = Session::<B, CrateLayer<B>>::resume(&be, &ck, four_images, None, &dir, "crate", None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("num_classes"), "{e}");
    // a truncated model file
    let model = ck_dir.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_checkpoint(&ck_dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // a corrupt state
    std::fs::write(ck_dir.join("state.json"), b"{\"format\": 3").unwrap();
    let e = read_checkpoint(&ck_dir).unwrap_err().to_string();
    assert!(e.contains("state.json"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_diverging_run_stops_with_the_step_and_keeps_its_last_checkpoint() {
    let be = B::new();
    let train_ds = images_dataset(16, 1, 8, 3, 8);
    let train = Images::new(&train_ds, 1, 8, 3, "training").unwrap();
    let dir = tmp("diverge");
    let mut o = options(3);
    o.clip_norm = 0.0;
    let mut s = Session::<B, CrateLayer<B>>::new(&be, &crate_config(), o, train, None, &dir, "crate", vec![])
        .unwrap();
    // one epoch, then poison a parameter so the next loss is not finite
    s.options.epochs = 1;
    s.run(&mut models::train::NoHooks).unwrap();
    s.options.epochs = 3;
    s.model.cls_token = Tensor::full(&be, s.model.cls_token.shape(), f64::INFINITY);
    let e = s.run(&mut models::train::NoHooks).unwrap_err().to_string();
    assert!(e.contains("diverged at step 3") && e.contains("epoch 2"), "{e}");
    let cks = list_checkpoints(&dir.join(CHECKPOINTS_DIR)).unwrap();
    assert!(cks.last().unwrap().ends_with("step-000000002"), "{cks:?}");
    read_checkpoint(cks.last().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn block_types_train_through_one_loop() {
    // CRATE, AoT and TOST run through the same session and lower their loss on separable data.
    fn run<L: Block<B>>(config: &L::Config, name: &str) {
        let be = B::new();
        let train_ds = images_dataset(24, 1, 8, 3, 9);
        let train = Images::new(&train_ds, 1, 8, 3, "training").unwrap();
        let dir = tmp(name);
        let mut s = Session::<B, L>::new(&be, config, options(3), train, None, &dir, name, vec![]).unwrap();
        s.run(&mut models::train::NoHooks).unwrap();
        let h = &s.state.history;
        assert!(h[2].train_loss < h[0].train_loss, "{name}: {h:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
    let v = vision(8, 4, 1, 3);
    run::<CrateLayer<B>>(&crate_config(), "crate");
    run::<models::nn::aot::AotLayer<B>>(&AotConfig { vision: v.clone(), ..AotConfig::cifar_small() }, "aot");
    run::<models::nn::tost::TostLayer<B>>(&TostConfig { vision: v, ..TostConfig::cifar_small() }, "tost");
}

/// Two processes (a world of threads) training CRATE data-parallel, each on
/// its half of every batch with the gradients summed: both end with
/// bit-identical parameters, equal to one process on whole batches (f64,
/// 1e-9: the sums run in another order), with the same per-step losses and
/// test accuracy; rank 0 alone writes the run directory; the checkpoint
/// records 2 ranks and one process may not resume it.
#[test]
fn two_ranks_train_the_parameters_of_one_process() {
    use rate_core::testing::ThreadWorld;
    use std::sync::Arc;
    let train_ds = images_dataset(36, 1, 8, 3, 3);
    let test_ds = images_dataset(12, 1, 8, 3, 4);
    let train = Images::new(&train_ds, 1, 8, 3, "training").unwrap();
    let test = Images::new(&test_ds, 1, 8, 3, "test").unwrap();
    let session = |out: &Path| crate_session(out, 2, train, Some(test));
    let one_dir = tmp("dp-one");
    let mut one = session(&one_dir);
    assert_eq!(one.run(&mut models::train::NoHooks).unwrap(), Outcome::Finished);
    let dirs = [tmp("dp-rank0"), tmp("dp-rank1")];
    let worlds: Vec<Arc<ThreadWorld>> = ThreadWorld::new(2).into_iter().map(Arc::new).collect();
    let runs: Vec<(BTreeMap<String, Vec<f64>>, Vec<Option<f64>>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = worlds
            .iter()
            .zip(&dirs)
            .map(|(w, dir)| {
                let w = w.clone();
                s.spawn(move || {
                    let mut sn = session(dir);
                    sn.set_collective(w).unwrap();
                    assert_eq!(sn.run(&mut models::train::NoHooks).unwrap(), Outcome::Finished);
                    let acc = sn.state.history.iter().map(|r| r.test_accuracy).collect();
                    let comm: f64 = sn.state.history.iter().map(|r| r.comm_seconds).sum();
                    (params(&sn.model), acc, comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(runs[0].0, runs[1].0, "the two ranks hold different parameters");
    let want = params(&one.model);
    for (name, v) in &runs[0].0 {
        let err = v.iter().zip(&want[name]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err <= 1e-9, "{name}: two ranks and one process differ by {err:e}");
    }
    let acc_one: Vec<Option<f64>> = one.state.history.iter().map(|r| r.test_accuracy).collect();
    assert_eq!(runs[0].1, acc_one);
    assert_eq!(runs[1].1, acc_one, "rank 1's evaluation is the whole split's");
    assert!(runs[0].2 > 0.0, "communication time is recorded");
    let (a, b) = (step_losses(&one_dir), step_losses(&dirs[0]));
    assert_eq!(a.len(), b.len());
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!((la - lb).abs() <= 1e-10, "step {sa}: loss {la} against {lb}");
    }
    assert!(!dirs[1].exists(), "rank 1 wrote into its run directory");
    let ck =
        read_checkpoint(list_checkpoints(&dirs[0].join(CHECKPOINTS_DIR)).unwrap().first().unwrap()).unwrap();
    assert_eq!(ck.state.ranks, 2);
    let mut alone =
        Session::<B, CrateLayer<B>>::resume(&B::new(), &ck, train, Some(test), &dirs[0], "crate", None)
            .unwrap();
    let err = alone.run(&mut models::train::NoHooks).unwrap_err().to_string();
    assert!(err.contains("trained by 2 process"), "{err}");
    for d in [one_dir, dirs[0].clone(), dirs[1].clone()] {
        let _ = std::fs::remove_dir_all(d);
    }
}
