//! Benchmarks of the invariant ReduNet on the rotation-MNIST workload (4.1.27 example: 100 training signals of 20 lifted channels x 200 angles, 10 classes, 40 layers; 100 test signals x 20 rotations), in f64 and f32, plus a one-layer scaling sweep of the FFT and dense paths.
//!
//! The data are random with the workload's shapes (seeded): polar-like signals
//! `[100, 15, 200]`, lifted by 20 Gaussian kernels of length 5 and a ReLU.
//! The process first prints one-shot figures (wall time, peak resident memory
//! read from `/proc/self/status` after resetting it, operator bytes), then
//! runs the criterion groups. `INVARIANT_BENCH_REPORT_ONLY=1` stops after the
//! figures; `INVARIANT_BENCH_NO_REPORT=1` skips them; `INVARIANT_BENCH_SKIP_BRUTE=1`
//! skips the slow transform of all 2000 rotated copies; `INVARIANT_BENCH_PRECISION=f32` (or `f64`) reports one precision in a fresh process. The whole-process peak of the construction alone is the `invariant_memory` example's. Freed memory is kept for reuse as in the
//! `rate` binary ([`backend_cpu::keep_freed_memory`]; `RATE_BENCH_DEFAULT_MALLOC=1` to opt out).

mod common;

use backend_cpu::{CpuBackend, CpuElem};
use criterion::{BenchmarkId, Criterion};
use models::invariant::{construct_dense, Activation, Domain, InvariantConfig, InvariantReduNet, Lifting};
use rand::{Rng, SeedableRng};
use rate_core::{Backend, Kernels, Tensor};
use std::hint::black_box;
use std::time::{Duration, Instant};

const TRAIN_PER_CLASS: usize = 10;
const CLASSES: usize = 10;
const RADII: usize = 15;
const CHANNELS: usize = 20;
const ANGLES: usize = 200;
const KERNEL: usize = 5;
const LAYERS: usize = 40;
const TEST: usize = 100;
const ROTATIONS: usize = 20;

fn uniform<B: Kernels>(be: &B, shape: &[usize], seed: u64) -> Tensor<B> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    Tensor::from_f64(be, &v, shape)
}

struct Workload<B: Kernels> {
    train: Tensor<B>,
    labels: Vec<usize>,
    test: Tensor<B>,
    shifts: Vec<Vec<isize>>,
}

fn workload<B: Kernels>(be: &B) -> Workload<B> {
    let m = TRAIN_PER_CLASS * CLASSES;
    let lift = Lifting::random(be, CHANNELS, RADII, &[KERNEL], 0, Activation::Relu).expect("lifting kernels");
    let train = lift.apply(&uniform(be, &[m, RADII, ANGLES], 1)).expect("lift train");
    let test = lift.apply(&uniform(be, &[TEST, RADII, ANGLES], 2)).expect("lift test");
    let labels = (0..m).map(|i| i % CLASSES).collect();
    let stride = (ANGLES / ROTATIONS) as isize;
    let shifts = (0..ROTATIONS as isize).map(|r| vec![r * stride]).collect();
    Workload { train, labels, test, shifts }
}

fn config() -> InvariantConfig {
    InvariantConfig { layers: LAYERS, ..Default::default() }
}

/// Resets the peak resident set size of this process (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Fields of `/proc/self/status` in MB (NaN where missing), in the order asked.
fn status_mb<const N: usize>(keys: [&str; N]) -> [f64; N] {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    keys.map(|k| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    })
}

/// `(current, peak)` resident set size in MB.
fn rss_mb() -> (f64, f64) {
    let [rss, hwm] = status_mb(["VmRSS:", "VmHWM:"]);
    (rss, hwm)
}

/// `(anonymous, file-backed)` resident memory in MB (the binary's own pages are file-backed).
fn rss_split_mb() -> (f64, f64) {
    let [anon, file] = status_mb(["RssAnon:", "RssFile:"]);
    (anon, file)
}

/// CPU seconds (user + system, all threads) this process has used.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        s.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / 100.0
}

/// Runs `f` once: its result, wall seconds, CPU seconds and the peak RSS (MB) while it ran.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64, f64) {
    reset_peak();
    let c = cpu_seconds();
    let t = Instant::now();
    let out = f();
    let s = t.elapsed().as_secs_f64();
    (out, s, cpu_seconds() - c, rss_mb().1)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn report<T: CpuElem>() {
    let be = CpuBackend::<T>::new();
    let w = workload(&be);
    let (_, rss0) = rss_mb();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("--- invariant ReduNet, {} ({threads} hardware threads) ---", be.name());
    let (anon, file) = rss_split_mb();
    println!("baseline RSS after data set-up: {rss0:.1} MB ({anon:.1} MB anonymous, {file:.1} MB file-backed: the binary)");
    println!("load average: {}", load_average());
    let (lifted, s, _, _) = timed(|| {
        let lift = Lifting::random(&be, CHANNELS, RADII, &[KERNEL], 0, Activation::Relu).expect("lift");
        lift.apply(&uniform(&be, &[TRAIN_PER_CLASS * CLASSES, RADII, ANGLES], 1)).expect("lift")
    });
    println!("lifting 100 x 15 x 200 -> 100 x 20 x 200: {s:.4} s");
    drop(lifted);
    let (built, s, cpu, peak) =
        timed(|| InvariantReduNet::construct(&w.train, &w.labels, CLASSES, &config()).expect("construct"));
    let net = built.network;
    println!(
        "construct (m = 100, C = 20, T = 200, k = 10, L = 40): wall {s:.3} s, cpu {cpu:.2} s, peak RSS {peak:.1} MB, operators {:.3} MB/layer ({:.1} MB total)",
        net.operator_bytes_per_layer() as f64 / 1e6,
        net.operator_bytes() as f64 / 1e6
    );
    let r = built.record.rates_true;
    println!("  delta R: layer 0 {:.4} -> layer 40 {:.4}", r[0].delta_r, r[LAYERS].delta_r);
    let (out, s, cpu, peak) = timed(|| net.transform_shifted(&w.test, &w.shifts).expect("transform_shifted"));
    println!(
        "transform 100 test x 20 rotations (equivariant: one pass, then the shifts of the output): wall {s:.3} s, cpu {cpu:.2} s, peak RSS {peak:.1} MB"
    );
    drop(out);
    if std::env::var_os("INVARIANT_BENCH_SKIP_BRUTE").is_some() {
        return;
    }
    // The same features by pushing all 2000 rotated copies through the layers.
    let dom = net.domain();
    let copies: Vec<Tensor<CpuBackend<T>>> =
        w.shifts.iter().map(|s| dom.roll(&w.test, s).expect("roll")).collect();
    let rotated = Tensor::cat(&copies.iter().collect::<Vec<_>>(), 0);
    drop(copies);
    let (out, s, cpu, peak) = timed(|| net.transform(&rotated).expect("transform"));
    println!(
        "transform 2000 rotated copies through all layers (brute force): wall {s:.3} s, cpu {cpu:.2} s, peak RSS {peak:.1} MB"
    );
    drop(out);
}

fn bench_workload<T: CpuElem>(c: &mut Criterion) {
    let be = CpuBackend::<T>::new();
    let w = workload(&be);
    let name = be.name();
    let mut g = c.benchmark_group(format!("invariant_mnist_{name}"));
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    g.bench_function("construct_40_layers", |b| {
        b.iter(|| {
            black_box(
                InvariantReduNet::construct(&w.train, &w.labels, CLASSES, &config()).expect("construct"),
            )
        })
    });
    let net =
        InvariantReduNet::construct(&w.train, &w.labels, CLASSES, &config()).expect("construct").network;
    g.bench_function("transform_100x20_rotations", |b| {
        b.iter(|| black_box(net.transform_shifted(&w.test, &w.shifts).expect("transform")))
    });
    g.bench_function("transform_100", |b| b.iter(|| black_box(net.transform(&w.test).expect("transform"))));
    g.finish();
}

/// One layer (construction = operators + update of the training signals) over growing lengths.
fn bench_sweep(c: &mut Criterion) {
    let be = CpuBackend::<f64>::new();
    let (m, ch, k) = (20, 4, 2);
    let labels: Vec<usize> = (0..m).map(|i| i % k).collect();
    let cfg = InvariantConfig { layers: 1, ..Default::default() };
    let mut g = c.benchmark_group("invariant_one_layer_sweep_cpu-f64");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for t in [64usize, 128, 256, 512, 1024, 2048, 4096] {
        let x = uniform(&be, &[m, ch, t], t as u64);
        g.bench_with_input(BenchmarkId::new("fft", t), &x, |b, x| {
            b.iter(|| black_box(InvariantReduNet::construct(x, &labels, k, &cfg).expect("construct")))
        });
        if ch * t <= 1024 {
            g.bench_with_input(BenchmarkId::new("dense", t), &x, |b, x| {
                b.iter(|| black_box(construct_dense(x, &labels, k, &cfg).expect("dense")))
            });
        }
    }
    g.finish();
    let _ = Domain::Line { len: 1 };
}

fn main() {
    common::allocator_as_in_the_binary();
    if std::env::var_os("INVARIANT_BENCH_NO_REPORT").is_none() {
        // `INVARIANT_BENCH_PRECISION=f32|f64` reports one precision only (a fresh process: its peak
        // resident set is not inflated by the other precision's freed memory).
        let only = std::env::var("INVARIANT_BENCH_PRECISION").unwrap_or_default();
        if only != "f32" {
            report::<f64>();
        }
        if only != "f64" {
            report::<f32>();
        }
        if std::env::var_os("INVARIANT_BENCH_REPORT_ONLY").is_some() {
            return;
        }
    }
    let mut c = Criterion::default().configure_from_args();
    bench_workload::<f64>(&mut c);
    bench_workload::<f32>(&mut c);
    bench_sweep(&mut c);
    c.final_summary();
}
