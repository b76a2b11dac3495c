//! Criterion benches of the wgpu backend: matmul GFLOP/s, batched and large SPD inverses, batched FFTs, and whole models against `CpuBackend<f32>` in the same run (Figure 4.5 ReduNet build and transform, CRATE forward and forward+backward, invariant ReduNet construction); every group is named `wgpu <what> (<adapter> [<kind>])`, which `cargo xtask bench` reads to name the adapter.
//!
//! In the model groups the CPU row named `baseline cpu-f32 ...` is the
//! reference of the rows with the same parameter (`vs baseline` in
//! `BENCHMARKS.md`); every timed iteration copies its result back to the host,
//! so the GPU's work is waited for.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use backend_cpu::CpuBackend;
use backend_wgpu::WgpuBackend;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use models::invariant::{InvariantConfig, InvariantReduNet};
use models::nn::crate_model::{Crate, CrateConfig};
use models::nn::loss::CrossEntropy;
use models::redunet::{gaussians, Engine, Gaussians, ReduNet, ReduNetConfig};
use rate_core::{AxisView, Backend, FftNorm, Kernels, MatmulSpec, Tensor};
use std::time::Duration;

type Cpu = CpuBackend<f32>;

/// Layers of the Figure 4.5 ReduNet here: an iteration takes about 1 s on llvmpipe (the chapter's 2000, about a minute).
const REDUNET_LAYERS: usize = 50;
/// CRATE: `CrateConfig::mnist_small()` on batches of this many images.
const CRATE_BATCH: usize = 2;
/// Invariant ReduNet: `m` signals of `C` channels and length `T`, `k` classes, `L` layers.
const INVARIANT: (usize, usize, usize, usize, usize) = (50, 8, 64, 5, 5);

fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// `batch` SPD matrices `X X^T / n + I`.
fn spd(batch: usize, n: usize) -> Vec<f32> {
    let x = lcg(batch * n * n, 7);
    let mut out = vec![0f32; batch * n * n];
    for b in 0..batch {
        let o = b * n * n;
        for i in 0..n {
            for j in 0..n {
                let s: f32 = (0..n).map(|q| x[o + i * n + q] * x[o + j * n + q]).sum();
                out[o + i * n + j] = s / n as f32 + if i == j { 1.0 } else { 0.0 };
            }
        }
    }
    out
}

fn benches(c: &mut Criterion) {
    let g = match WgpuBackend::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no wgpu adapter found: benches skipped ({e})");
            return;
        }
    };
    let adapter = format!("{} [{}]", g.adapter_name(), g.adapter_kind());
    eprintln!("wgpu benches on {}", g.name());

    let mut grp = c.benchmark_group(format!("wgpu matmul_f32_flop ({adapter})"));
    grp.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for n in [256usize, 512, 1024] {
        let a = g.upload(&lcg(n * n, 1));
        let b = g.upload(&lcg(n * n, 2));
        let spec = MatmulSpec {
            batch: 1,
            m: n,
            k: n,
            n,
            trans_a: false,
            trans_b: false,
            a_batched: true,
            b_batched: true,
        };
        grp.throughput(Throughput::Elements((2 * n * n * n) as u64)); // "elements" = flops
        grp.bench_function(format!("{n}x{n}x{n} (flops)"), |bch| {
            bch.iter(|| {
                let c = g.matmul(&a, &b, spec);
                g.synchronize();
                c
            })
        });
    }
    grp.finish();

    let mut grp = c.benchmark_group(format!("wgpu spd_inverse_f32 ({adapter})"));
    grp.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for (batch, n) in [(2000usize, 20usize), (1, 512)] {
        let a = g.upload(&spd(batch, n));
        grp.bench_function(format!("{batch} x {n}x{n}"), |bch| {
            bch.iter(|| g.spd_inverse(&a, batch, n).expect("SPD input"))
        });
    }
    grp.finish();

    let mut grp = c.benchmark_group(format!("wgpu fft_f32 ({adapter})"));
    grp.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let (rows, len) = (10_000usize, 200usize);
    let x = g.upload(&lcg(rows * len, 3));
    let v = AxisView { outer: rows, len, inner: 1 };
    grp.bench_function(format!("rfft {rows} x {len} (Bluestein)"), |bch| {
        bch.iter(|| {
            let y = g.rfft(&x, v, FftNorm::Ortho);
            g.synchronize();
            y
        })
    });
    let (rows, len) = (1000usize, 1024usize);
    let re = g.upload(&lcg(rows * len, 4));
    let im = g.upload(&lcg(rows * len, 5));
    let v = AxisView { outer: rows, len, inner: 1 };
    grp.bench_function(format!("c2c {rows} x {len}"), |bch| {
        bch.iter(|| {
            let y = g.fft(&re, &im, v, false, FftNorm::Backward);
            g.synchronize();
            y
        })
    });
    grp.finish();

    model_benches(c, &g, &adapter);
}

/// A model group: 10 samples of equal iteration counts (`Flat`: a model's iteration takes seconds on llvmpipe).
fn model_group<'a>(c: &'a mut Criterion, name: String) -> BenchmarkGroup<'a, WallTime> {
    let mut grp = c.benchmark_group(name);
    grp.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    grp
}

/// Figure 4.5 ReduNet on `be`: build (rates recorded) and transform of the held-out samples.
fn redunet_rows<B: Kernels>(
    grp: &mut BenchmarkGroup<'_, WallTime>,
    be: &B,
    who: &str,
    engine: Engine,
    (train, test): (&Gaussians, &Gaussians),
) {
    let mut cfg = ReduNetConfig::new(3, REDUNET_LAYERS);
    cfg.engine = engine;
    let (x, xt) = (train.tensor(be), test.tensor(be));
    grp.bench_function(BenchmarkId::new(who, format!("build {REDUNET_LAYERS} layers")), |bch| {
        bch.iter(|| {
            let (_, trace) = ReduNet::build(&x, &train.labels, cfg.clone()).expect("build");
            (trace.rates_true.last().map(|r| r.delta_r), trace.output.to_f64_vec())
        })
    });
    let (net, _) = ReduNet::build(&x, &train.labels, cfg.clone()).expect("build");
    let n = test.labels.len();
    grp.bench_function(BenchmarkId::new(who, format!("transform {n} x {REDUNET_LAYERS} layers")), |bch| {
        bch.iter(|| net.transform(&xt).expect("transform").to_f64_vec())
    });
}

/// CRATE (`mnist_small`, batch [`CRATE_BATCH`]) on `be`: logits, and loss with every gradient (cross-entropy).
fn crate_rows<B: Kernels>(grp: &mut BenchmarkGroup<'_, WallTime>, be: &B, who: &str) {
    let config = CrateConfig::mnist_small();
    let model = Crate::new(be, &config, 0).expect("mnist_small is a valid config");
    let shape = [CRATE_BATCH, config.vision.channels, config.vision.image_size, config.vision.image_size];
    let pixels: Vec<f64> = lcg(shape.iter().product(), 11).into_iter().map(f64::from).collect();
    let images = Tensor::from_f64(be, &pixels, &shape);
    let labels: Vec<usize> = (0..CRATE_BATCH).map(|i| i % config.vision.num_classes).collect();
    let ce = CrossEntropy::default();
    let what = format!("mnist_small batch {CRATE_BATCH}");
    grp.bench_function(BenchmarkId::new(who, format!("{what} forward")), |bch| {
        bch.iter(|| model.logits(&images).expect("logits").to_f64_vec())
    });
    grp.bench_function(BenchmarkId::new(who, format!("{what} forward+backward")), |bch| {
        bch.iter(|| {
            let (loss, grads) = model.loss_and_gradients(&images, &labels, &ce).expect("loss and gradients");
            (loss, grads.input.to_f64_vec())
        })
    });
}

/// Invariant ReduNet construction on `be` (random 1-D signals, see [`INVARIANT`]).
fn invariant_rows<B: Kernels>(grp: &mut BenchmarkGroup<'_, WallTime>, be: &B, who: &str) {
    let (m, ch, t, classes, layers) = INVARIANT;
    let signals: Vec<f64> = lcg(m * ch * t, 12).into_iter().map(f64::from).collect();
    let x = Tensor::from_f64(be, &signals, &[m, ch, t]);
    let labels: Vec<usize> = (0..m).map(|i| i % classes).collect();
    let config = InvariantConfig { layers, ..Default::default() };
    let id = format!("construct {m} x {ch} x {t}, {classes} classes, {layers} layers");
    grp.bench_function(BenchmarkId::new(who, id), |bch| {
        bch.iter(|| {
            let built = InvariantReduNet::construct(&x, &labels, classes, &config).expect("construct");
            built.features.to_f64_vec()
        })
    });
}

/// Whole models on the adapter and, as the baseline, on `CpuBackend<f32>` with the same algorithm.
fn model_benches(c: &mut Criterion, g: &WgpuBackend, adapter: &str) {
    let cpu = Cpu::new();

    let train = gaussians(3, 3, 500, 0.1, 1).expect("train data");
    let test = gaussians(3, 3, 500, 0.1, 2).expect("test data");
    let data = (&train, &test);
    let mut grp = model_group(c, format!("wgpu redunet_fig4_5 ({adapter})"));
    redunet_rows(&mut grp, &cpu, "baseline cpu-f32 tensor", Engine::Tensor, data);
    redunet_rows(&mut grp, &cpu, "cpu-f32 fused", Engine::Fused, data);
    redunet_rows(&mut grp, g, "wgpu tensor", Engine::Tensor, data);
    grp.finish();

    let mut grp = model_group(c, format!("wgpu crate ({adapter})"));
    grp.throughput(Throughput::Elements(CRATE_BATCH as u64)); // images
    crate_rows(&mut grp, &cpu, "baseline cpu-f32");
    crate_rows(&mut grp, g, "wgpu");
    grp.finish();

    let mut grp = model_group(c, format!("wgpu invariant ({adapter})"));
    invariant_rows(&mut grp, &cpu, "baseline cpu-f32");
    invariant_rows(&mut grp, g, "wgpu");
    grp.finish();
}

criterion_group!(wgpu_benches, benches);
criterion_main!(wgpu_benches);
