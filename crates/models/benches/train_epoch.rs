//! Whole training epochs of CRATE on the CPU in f32 (`models::train::Session::run`, as `rate crate train`): images per second over the epoch's training loop.
//!
//! What `metrics.json`'s `train_images_per_s` measures, on a fixed synthetic set of
//! `CRATE_EPOCH_IMAGES` (default 2,048) 28 px grey images in 10 classes with the `mnist` CRATE
//! configuration (patch 4, dim 128, depth 6, 4 heads: the `fashion-mnist` preset): the loader's
//! seeded shuffle, the batch gathered, cropped (padding 2), flipped and normalised on the prefetch
//! thread, forward and backward in parallel micro-batches of 8, global-norm clipping and AdamW with
//! weight-decay groups, batch 128. Each iteration is one fresh epoch-1 run (the model and the data are
//! built outside the time); the time is the run's own epoch seconds (each step from the end of the
//! previous one, loader waits included), so the epoch-end checkpoint and the evaluation (there is
//! no test split here) are not counted, as in `metrics.json`. Buffers are recycled and freed
//! memory kept as in the `rate` binary.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use backend_cpu::CpuBackend;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use models::data::Dataset;
use models::nn::crate_model::{CrateConfig, CrateLayer};
use models::train::{Images, NoHooks, Session, TrainOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

type Be = CpuBackend<f32>;

fn images() -> usize {
    std::env::var("CRATE_EPOCH_IMAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(2048)
}

fn bench_epoch(c: &mut Criterion) {
    common::allocator_as_in_model_jobs();
    let be = Be::new();
    let config = CrateConfig::mnist_small();
    let (n, size) = (images(), config.vision.image_size);
    let mut rng = StdRng::seed_from_u64(7);
    let pixels: Vec<f64> = (0..n * size * size).map(|_| rng.random_range(0.0..1.0)).collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let Ok(data) = Dataset::new("synthetic", pixels, &[size, size], labels, Some(10)) else {
        panic!("the synthetic data set is valid")
    };
    let Ok(train) = Images::new(&data, 1, size, 10, "training") else { panic!("the images fit the model") };
    let options = TrainOptions {
        epochs: 1,
        hflip: true,
        log_every: 0,
        keep: 1,
        measure_images: 0,
        ..TrainOptions::default()
    };
    let dir = std::env::temp_dir().join(format!("rate-bench-epoch-{}", std::process::id()));
    let mut group = c.benchmark_group("crate");
    group.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("train_epoch", "mnist"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_dir_all(&dir);
                let Ok(mut session) = Session::<Be, CrateLayer<Be>>::new(
                    &be,
                    &config,
                    options.clone(),
                    train,
                    None,
                    &dir,
                    "crate",
                    Vec::new(),
                ) else {
                    panic!("the bench session starts")
                };
                if session.run(&mut NoHooks).is_err() {
                    panic!("the bench epoch runs");
                }
                let seconds = session.state.history.last().map_or(f64::NAN, |r| r.train_seconds);
                total += Duration::from_secs_f64(seconds);
            }
            total
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_epoch);
criterion_main!(benches);
