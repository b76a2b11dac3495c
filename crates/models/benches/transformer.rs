//! CRATE, AoT and TOST throughput on the CPU in f32: inference (logits) and one training step (forward, backward, AdamW), images per second.
//!
//! CRATE at two sizes, batch 128 (override with `CRATE_BENCH_BATCH`):
//! * `cifar`: 32 px RGB, patch 4 (65 tokens), dim 192, depth 8, 6 heads;
//! * `mnist`: 28 px grey, patch 4 (50 tokens), dim 128, depth 6, 4 heads;
//!
//! and AoT (LayerNorm + MSSA layers, softmax) and TOST (TSSA + ISTA layers)
//! at the `cifar` size.
//!
//! Seeds are fixed and the inputs are built outside the timed loop. Freed memory is kept for reuse
//! as in the `rate` binary ([`backend_cpu::keep_freed_memory`]; `RATE_BENCH_DEFAULT_MALLOC=1` to opt out),
//! and product outputs are written into recycled buffers as in `rate crate|aot|tost forward`
//! ([`backend_cpu::recycle_buffers`]; `RATE_BENCH_NO_RECYCLE=1` to opt out).
//! Every model runs as parallel micro-batches (`Execution::parallel_micro_batches`;
//! same results up to rounding) of 4 images for inference and 8 for a training
//! step, what `rate crate|aot|tost forward` does by default on the CPU; set
//! `CRATE_BENCH_MICRO=<images>` for one size for both, 0 for the whole batch at once.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use backend_cpu::CpuBackend;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use models::nn::aot::{AotConfig, AotLayer};
use models::nn::classifier::{Block, Classifier, ModelConfig};
use models::nn::crate_model::{Crate, CrateConfig, Execution};
use models::nn::loss::CrossEntropy;
use models::nn::tost::{TostConfig, TostLayer};
use models::train::AdamW;
use models::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

type Be = CpuBackend<f32>;

fn batch() -> usize {
    std::env::var("CRATE_BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(128)
}

/// Execution of inference (`training == false`) or of a training step.
fn execution(training: bool) -> Execution {
    let default = if training { 8 } else { 4 };
    match std::env::var("CRATE_BENCH_MICRO").ok().and_then(|s| s.parse().ok()).unwrap_or(default) {
        0 => Execution { micro_batch: None, parallel: false },
        images => Execution::parallel_micro_batches(images),
    }
}

fn inputs(be: &Be, channels: usize, size: usize, classes: usize, batch: usize) -> (Tensor<Be>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(42);
    let n = batch * channels * size * size;
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let images = Tensor::from_f64(be, &data, &[batch, channels, size, size]);
    let labels = (0..batch).map(|_| rng.random_range(0..classes)).collect();
    (images, labels)
}

fn bench_crate(c: &mut Criterion) {
    common::allocator_as_in_model_jobs();
    let be = Be::new();
    let batch = batch();
    let (exec, train_exec) = (execution(false), execution(true));
    let mut group = c.benchmark_group("crate");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(batch as u64));
    for (name, config) in [("cifar", CrateConfig::cifar_small()), ("mnist", CrateConfig::mnist_small())] {
        let Ok(model) = Crate::<Be>::new(&be, &config, 0) else { panic!("bench config {name} is valid") };
        let (images, labels) =
            inputs(&be, config.vision.channels, config.vision.image_size, config.vision.num_classes, batch);
        group.bench_function(BenchmarkId::new("inference", name), |b| {
            b.iter(|| model.logits_with(&images, &exec).map(|l| l.numel()).unwrap_or(0))
        });
        let ce = CrossEntropy::default();
        let mut train = model.clone();
        let mut opt = AdamW::adamw(1e-4);
        group.bench_function(BenchmarkId::new("train_step", name), |b| {
            b.iter(|| {
                let Ok((loss, grads)) = train.loss_and_gradients_with(&images, &labels, &ce, &train_exec)
                else {
                    return f64::NAN;
                };
                if opt.step(&mut train, &grads.params).is_err() {
                    return f64::NAN;
                }
                loss
            })
        });
    }
    group.finish();
}

fn bench_classifier<L: Block<Be>>(c: &mut Criterion, group_name: &str, config: &L::Config) {
    let be = Be::new();
    let batch = batch();
    let (exec, train_exec) = (execution(false), execution(true));
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(batch as u64));
    let Ok(model) = Classifier::<Be, L>::new(&be, config, 0) else {
        panic!("bench config {group_name} is valid")
    };
    let v = config.vision();
    let (images, labels) = inputs(&be, v.channels, v.image_size, v.num_classes, batch);
    group.bench_function(BenchmarkId::new("inference", "cifar"), |b| {
        b.iter(|| model.logits_with(&images, &exec).map(|l| l.numel()).unwrap_or(0))
    });
    let ce = CrossEntropy::default();
    let mut train = model.clone();
    let mut opt = AdamW::adamw(1e-4);
    group.bench_function(BenchmarkId::new("train_step", "cifar"), |b| {
        b.iter(|| {
            let Ok((loss, grads)) = train.loss_and_gradients_with(&images, &labels, &ce, &train_exec) else {
                return f64::NAN;
            };
            if opt.step(&mut train, &grads.params).is_err() {
                return f64::NAN;
            }
            loss
        })
    });
    group.finish();
}

fn bench_aot(c: &mut Criterion) {
    common::allocator_as_in_model_jobs();
    bench_classifier::<AotLayer<Be>>(c, "aot", &AotConfig::cifar_small());
}

fn bench_tost(c: &mut Criterion) {
    common::allocator_as_in_model_jobs();
    bench_classifier::<TostLayer<Be>>(c, "tost", &TostConfig::cifar_small());
}

criterion_group!(benches, bench_crate, bench_aot, bench_tost);
criterion_main!(benches);
