//! Criterion benches of the wgpu backend: matmul GFLOP/s, batched and large SPD inverses, batched FFTs (every group is named `wgpu <what> (<adapter> [<kind>])`, which `cargo xtask bench` reads to name the adapter).
#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use backend_wgpu::WgpuBackend;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rate_core::{AxisView, Backend, FftNorm, MatmulSpec};
use std::time::Duration;

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
}

criterion_group!(wgpu_benches, benches);
criterion_main!(wgpu_benches);
