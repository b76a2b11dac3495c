//! One attention layer against the number of tokens (dim 384, 8 heads, batch 1, f32, CPU): TSSA (4.3.15) versus the MSSA layer (4.2.20) with dense and with tiled attention, forward and forward + backward.
//!
//! `cargo bench -p models --bench attention [-- FILTER]`. Freed memory is kept
//! for reuse as in the `rate` binary ([`backend_cpu::keep_freed_memory`]). Inputs and layers are
//! built from fixed seeds outside the timed loop. Peak memory is measured by
//! `examples/attention_memory.rs` (one process per point), not here.

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

mod common;

use backend_cpu::CpuBackend;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use models::nn::classifier::Block;
use models::nn::flash;
use models::nn::tssa::Tssa;
use models::nn::{init, Grads, Linear};
use models::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Duration;

type B = CpuBackend<f32>;

const DIM: usize = 384;
const HEADS: usize = 8;

/// The MSSA layer as CRATE builds it: shared projection without bias,
/// `softmax(s W W^T) W` per head, heads merged, `to_out` with bias.
struct Mssa {
    qkv: Linear<B>,
    to_out: Linear<B>,
}

impl Mssa {
    fn split(t: &Tensor<B>) -> Tensor<B> {
        let n = t.dim(1);
        t.reshape(&[1, n, HEADS, DIM / HEADS]).permute(&[0, 2, 1, 3]).reshape(&[HEADS, n, DIM / HEADS])
    }
    fn merge(t: &Tensor<B>) -> Tensor<B> {
        let n = t.dim(1);
        t.reshape(&[1, HEADS, n, DIM / HEADS]).permute(&[0, 2, 1, 3]).reshape(&[1, n, DIM])
    }
    fn forward(&self, x: &Tensor<B>, tiled: bool) -> Tensor<B> {
        let w = Self::split(&self.qkv.forward(x));
        let s = ((DIM / HEADS) as f64).powf(-0.5);
        let o = if tiled { flash::tiled_forward(&w, s).0 } else { flash::dense_forward(&w, s).0 };
        self.to_out.forward(&Self::merge(&o))
    }
    fn forward_backward(&self, x: &Tensor<B>, tiled: bool) -> Tensor<B> {
        let w = Self::split(&self.qkv.forward(x));
        let s = ((DIM / HEADS) as f64).powf(-0.5);
        let (o, cache) = if tiled {
            let (o, c) = flash::tiled_forward(&w, s);
            (o, flash::AttentionCache::Tiled(c))
        } else {
            let (o, c) = flash::dense_forward(&w, s);
            (o, flash::AttentionCache::Dense(c))
        };
        let y = Self::merge(&o);
        let out = self.to_out.forward(&y);
        let mut grads = Grads::new();
        let gy = self.to_out.backward(&y, &out, "to_out.0", &mut grads);
        let gw = flash::backward(&cache, &Self::split(&gy));
        self.qkv.backward(x, &Self::merge(&gw), "qkv", &mut grads)
    }
}

fn setup(n: usize) -> (Tensor<B>, Tssa<B>, Mssa) {
    let be = B::new();
    let mut rng = StdRng::seed_from_u64(2025);
    let x = init::uniform(&be, &[1, n, DIM], 1.0, &mut rng);
    let tssa = Tssa::init(&be, DIM, HEADS, false, &mut rng).expect("valid TSSA config");
    let mssa = Mssa {
        qkv: init::linear(&be, DIM, DIM, false, &mut rng),
        to_out: init::linear(&be, DIM, DIM, true, &mut rng),
    };
    (x, tssa, mssa)
}

fn bench_forward(c: &mut Criterion) {
    common::allocator_as_in_the_binary();
    let mut g = c.benchmark_group("attention_forward");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in (8..=15).map(|p| 1usize << p) {
        let (x, tssa, mssa) = setup(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("tssa", n), &n, |b, _| b.iter(|| tssa.forward(&x).0));
        if n <= 2048 {
            g.bench_with_input(BenchmarkId::new("mssa_dense", n), &n, |b, _| {
                b.iter(|| mssa.forward(&x, false))
            });
        }
        if n <= 8192 {
            g.bench_with_input(BenchmarkId::new("mssa_tiled", n), &n, |b, _| {
                b.iter(|| mssa.forward(&x, true))
            });
        }
    }
    g.finish();
}

fn bench_forward_backward(c: &mut Criterion) {
    common::allocator_as_in_the_binary();
    let mut g = c.benchmark_group("attention_forward_backward");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [1024, 4096, 16384] {
        let (x, tssa, mssa) = setup(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("tssa", n), &n, |b, _| {
            b.iter(|| {
                let (out, cache) = tssa.forward(&x);
                let mut grads = Grads::new();
                tssa.backward(&cache, &out, "", &mut grads, false)
            })
        });
        if n <= 1024 {
            g.bench_with_input(BenchmarkId::new("mssa_dense", n), &n, |b, _| {
                b.iter(|| mssa.forward_backward(&x, false))
            });
        }
        if n <= 4096 {
            g.bench_with_input(BenchmarkId::new("mssa_tiled", n), &n, |b, _| {
                b.iter(|| mssa.forward_backward(&x, true))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_forward, bench_forward_backward);
criterion_main!(benches);
