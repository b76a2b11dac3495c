//! Criterion benches of the CPU backend's primitives: matmul (against faer called directly), SPD inverse, batched FFT, and the rates R and ΔR (4.1.1).
//!
//! Every input comes from a fixed seed and is built outside the timed loop.
//! Groups whose name contains `flop` count floating-point operations as
//! criterion "elements" (matmul: `2 n^3`; SPD inverse: the nominal `n^3` of a
//! Cholesky factorisation plus inversion), so `cargo xtask bench` reports them
//! in GFLOP/s. Run with `cargo xtask bench [filter]`, which also writes
//! BENCHMARKS.md.

use backend_cpu::CpuBackend;
use criterion::{BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rate_core::{coding_rate, rate_reduction, ComplexTensor, FftNorm, Membership, Tensor};
use std::hint::black_box;
use std::time::Duration;

/// `len` uniform values in `[-1, 1)` from `seed`.
fn uniform(seed: u64, len: usize) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Short measurement settings so the whole suite runs in minutes on two cores.
fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, secs: u64) {
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(secs));
}

const MATMUL_SIZES: [usize; 3] = [256, 512, 1024];

/// `n x n` times `n x n` through `Tensor::matmul` on the single-threaded backend
/// (`CpuBackend::sequential`: faer on the calling thread); for f32 each size is
/// followed by the same product computed by faer directly (column-major
/// `Mat`, `Par::Seq`), the baseline.
fn matmul_in<T: backend_cpu::CpuElem>(c: &mut Criterion, group_name: &str, with_faer_baseline: bool) {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, Mat, Par};
    let be = CpuBackend::<T>::sequential();
    let mut group = c.benchmark_group(group_name);
    configure(&mut group, 3);
    for n in MATMUL_SIZES {
        let (va, vb) = (uniform(1, n * n), uniform(2, n * n));
        let a = Tensor::from_f64(&be, &va, &[n, n]);
        let b = Tensor::from_f64(&be, &vb, &[n, n]);
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::new("ours_seq", n), &n, |bench, _| {
            bench.iter(|| black_box(a.matmul(&b)))
        });
        if with_faer_baseline {
            let fa = Mat::<T>::from_fn(n, n, |i, j| T::of(va[i * n + j]));
            let fb = Mat::<T>::from_fn(n, n, |i, j| T::of(vb[i * n + j]));
            let mut out = Mat::<T>::zeros(n, n);
            group.bench_with_input(BenchmarkId::new("baseline_faer_seq", n), &n, |bench, _| {
                bench.iter(|| {
                    matmul(out.as_mut(), Accum::Replace, fa.as_ref(), fb.as_ref(), T::of(1.0), Par::Seq);
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

fn bench_matmul(c: &mut Criterion) {
    matmul_in::<f32>(c, "matmul_f32_flop", true);
    matmul_in::<f64>(c, "matmul_f64_flop", false);
}

/// Inverse of the SPD matrix `X^T X / n + I` (`X` is `2n x n`) on the default (all threads) backend.
fn bench_spd_inverse(c: &mut Criterion) {
    let be = CpuBackend::<f64>::new();
    let mut group = c.benchmark_group("spd_inverse_f64_flop");
    configure(&mut group, 2);
    for n in [64usize, 128, 256, 512, 1024] {
        let x = Tensor::from_f64(&be, &uniform(3, 2 * n * n), &[2 * n, n]);
        let a = x.matmul_t(&x, true, false).scale(1.0 / n as f64).add(&Tensor::eye(&be, n));
        group.throughput(Throughput::Elements((n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::new("cpu", n), &n, |bench, _| {
            bench.iter(|| black_box(a.spd_inverse().expect("the bench matrix is SPD by construction")))
        });
    }
    group.finish();
}

/// Batched FFTs along the last axis: real (rfft) and complex, orthonormal scaling.
fn bench_fft(c: &mut Criterion) {
    let be = CpuBackend::<f64>::new();
    let mut group = c.benchmark_group("fft_f64");
    configure(&mut group, 2);
    let (signals, len) = (10_000usize, 200usize);
    let x = Tensor::from_f64(&be, &uniform(4, signals * len), &[signals, len]);
    group.throughput(Throughput::Elements((signals * len) as u64));
    group.bench_function(BenchmarkId::new("rfft_10000x", len), |bench| {
        bench.iter(|| black_box(x.rfft(1, FftNorm::Ortho)))
    });
    for len in [1024usize, 4096] {
        let signals = 1000usize;
        let re = Tensor::from_f64(&be, &uniform(5, signals * len), &[signals, len]);
        let im = Tensor::from_f64(&be, &uniform(6, signals * len), &[signals, len]);
        let z = ComplexTensor::new(re, im);
        group.throughput(Throughput::Elements((signals * len) as u64));
        group.bench_function(BenchmarkId::new("fft_1000x", len), |bench| {
            bench.iter(|| black_box(z.fft(1, false, FftNorm::Ortho)))
        });
    }
    group.finish();
}

/// Coding rate R and rate reduction ΔR (10 hard classes) of 10,000 samples in d = 256.
fn bench_rates_in<T: backend_cpu::CpuElem>(c: &mut Criterion, group_name: &str) {
    let be = CpuBackend::<T>::new();
    let (m, d, classes) = (10_000usize, 256usize, 10usize);
    let z = Tensor::from_f64(&be, &uniform(7, m * d), &[m, d]);
    let z = z.div(&z.norm_axis(1));
    let mut rng = StdRng::seed_from_u64(8);
    let labels: Vec<usize> = (0..m).map(|_| rng.random_range(0..classes)).collect();
    let pi = Membership::Hard { labels: &labels, classes };
    let eps_sq = 0.5;
    let mut group = c.benchmark_group(group_name);
    configure(&mut group, 3);
    group.throughput(Throughput::Elements(m as u64));
    group.bench_function(BenchmarkId::new("coding_rate", format!("{m}x{d}")), |bench| {
        bench.iter(|| black_box(coding_rate(&z, eps_sq).expect("finite features")))
    });
    group.bench_function(BenchmarkId::new("rate_reduction_10cls", format!("{m}x{d}")), |bench| {
        bench.iter(|| black_box(rate_reduction(&z, &pi, eps_sq).expect("finite features")))
    });
    group.finish();
}

fn bench_rates(c: &mut Criterion) {
    bench_rates_in::<f64>(c, "rates_f64");
    bench_rates_in::<f32>(c, "rates_f32");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_matmul(&mut c);
    bench_spd_inverse(&mut c);
    bench_fft(&mut c);
    bench_rates(&mut c);
    c.final_summary();
}
