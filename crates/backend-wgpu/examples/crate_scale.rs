//! Timing harness: CRATE (`mnist_small`) forward and forward+backward on the wgpu adapter at batch 1, 2, 4, 8,
//! in total and per backend primitive (each primitive is waited for, so the per-primitive times add up to a
//! little more than the unwrapped run).
//!
//! `cargo run -p backend-wgpu --release --example crate_scale -- [backward] [prims] [batch sizes...]`

use backend_wgpu::{WgpuBackend, WgpuBuffer};
use models::nn::crate_model::{Crate, CrateConfig};
use models::nn::loss::CrossEntropy;
use rate_core::{
    AxisView, Backend, BinaryOp, FftNorm, Kernels, MatmulSpec, ReduceOp, Result, Tensor, UnaryOp,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

type Stats = Arc<Mutex<BTreeMap<String, (usize, f64)>>>;

/// `WgpuBackend` with every primitive waited for and timed under a key.
#[derive(Clone, Debug)]
struct Timed {
    g: WgpuBackend,
    stats: Stats,
}

impl Timed {
    fn time<T>(&self, key: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
        self.g.synchronize();
        let t = Instant::now();
        let r = f();
        self.g.synchronize();
        let dt = t.elapsed().as_secs_f64();
        let mut s = self.stats.lock().expect("stats");
        let e = s.entry(key()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += dt;
        r
    }
}

impl Backend for Timed {
    type Elem = f32;
    type Buffer = WgpuBuffer;
    fn name(&self) -> String {
        self.g.name()
    }
    fn upload(&self, data: &[f32]) -> WgpuBuffer {
        self.time(|| "upload".into(), || self.g.upload(data))
    }
    fn download(&self, buf: &WgpuBuffer) -> Vec<f32> {
        self.time(|| "download".into(), || self.g.download(buf))
    }
    fn full(&self, len: usize, value: f32) -> WgpuBuffer {
        self.time(|| "full".into(), || self.g.full(len, value))
    }
    fn len(&self, buf: &WgpuBuffer) -> usize {
        buf.len()
    }
    fn unary(&self, op: UnaryOp, x: &WgpuBuffer) -> WgpuBuffer {
        self.time(|| "unary".into(), || self.g.unary(op, x))
    }
    fn binary(
        &self,
        op: BinaryOp,
        a: &WgpuBuffer,
        sa: &[usize],
        b: &WgpuBuffer,
        sb: &[usize],
        s: &[usize],
    ) -> WgpuBuffer {
        self.time(|| format!("binary rank {}", s.len()), || self.g.binary(op, a, sa, b, sb, s))
    }
    fn permute(&self, x: &WgpuBuffer, shape: &[usize], perm: &[usize]) -> WgpuBuffer {
        self.time(|| "permute".into(), || self.g.permute(x, shape, perm))
    }
    fn narrow(&self, x: &WgpuBuffer, v: AxisView, start: usize, count: usize) -> WgpuBuffer {
        self.time(|| "narrow".into(), || self.g.narrow(x, v, start, count))
    }
    fn concat(&self, parts: &[&WgpuBuffer], outer: usize, lens: &[usize], inner: usize) -> WgpuBuffer {
        self.time(|| "concat".into(), || self.g.concat(parts, outer, lens, inner))
    }
    fn index_select(&self, x: &WgpuBuffer, v: AxisView, index: &[usize]) -> WgpuBuffer {
        self.time(|| "index_select".into(), || self.g.index_select(x, v, index))
    }
    fn index_add(&self, x: &WgpuBuffer, v: AxisView, index: &[usize], len: usize) -> WgpuBuffer {
        self.time(|| "index_add".into(), || self.g.index_add(x, v, index, len))
    }
    fn reduce(&self, op: ReduceOp, x: &WgpuBuffer, v: AxisView) -> WgpuBuffer {
        self.time(|| format!("reduce len {}", v.len), || self.g.reduce(op, x, v))
    }
    fn softmax(&self, x: &WgpuBuffer, v: AxisView) -> WgpuBuffer {
        self.time(|| format!("softmax len {}", v.len), || self.g.softmax(x, v))
    }
    fn matmul(&self, a: &WgpuBuffer, b: &WgpuBuffer, s: MatmulSpec) -> WgpuBuffer {
        self.time(
            || {
                format!(
                    "matmul m{} k{} n{} ta{} tb{} ab{} bb{}",
                    s.m, s.k, s.n, s.trans_a as u8, s.trans_b as u8, s.a_batched as u8, s.b_batched as u8
                )
            },
            || self.g.matmul(a, b, s),
        )
    }
    fn cholesky(&self, a: &WgpuBuffer, batch: usize, n: usize) -> Result<WgpuBuffer> {
        self.time(|| "cholesky".into(), || self.g.cholesky(a, batch, n))
    }
    fn spd_solve(
        &self,
        a: &WgpuBuffer,
        b: &WgpuBuffer,
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<WgpuBuffer> {
        self.time(|| "spd_solve".into(), || self.g.spd_solve(a, b, batch, n, nrhs))
    }
    fn spd_inverse(&self, a: &WgpuBuffer, batch: usize, n: usize) -> Result<WgpuBuffer> {
        self.time(|| "spd_inverse".into(), || self.g.spd_inverse(a, batch, n))
    }
    fn spd_logdet(&self, a: &WgpuBuffer, batch: usize, n: usize) -> Result<WgpuBuffer> {
        self.time(|| "spd_logdet".into(), || self.g.spd_logdet(a, batch, n))
    }
    fn spd_inverse_logdet(&self, a: &WgpuBuffer, batch: usize, n: usize) -> Result<(WgpuBuffer, WgpuBuffer)> {
        self.time(|| "spd_inverse_logdet".into(), || self.g.spd_inverse_logdet(a, batch, n))
    }
    fn sym_eigen(&self, a: &WgpuBuffer, batch: usize, n: usize) -> Result<(WgpuBuffer, WgpuBuffer)> {
        self.time(|| "sym_eigen".into(), || self.g.sym_eigen(a, batch, n))
    }
    fn herm_inverse(
        &self,
        re: &WgpuBuffer,
        im: &WgpuBuffer,
        batch: usize,
        n: usize,
    ) -> Result<(WgpuBuffer, WgpuBuffer)> {
        self.time(|| "herm_inverse".into(), || self.g.herm_inverse(re, im, batch, n))
    }
    fn herm_logdet(&self, re: &WgpuBuffer, im: &WgpuBuffer, batch: usize, n: usize) -> Result<WgpuBuffer> {
        self.time(|| "herm_logdet".into(), || self.g.herm_logdet(re, im, batch, n))
    }
    fn herm_inverse_logdet(
        &self,
        re: &WgpuBuffer,
        im: &WgpuBuffer,
        batch: usize,
        n: usize,
    ) -> Result<(WgpuBuffer, WgpuBuffer, WgpuBuffer)> {
        self.time(|| "herm_inverse_logdet".into(), || self.g.herm_inverse_logdet(re, im, batch, n))
    }
    fn herm_solve(
        &self,
        a: (&WgpuBuffer, &WgpuBuffer),
        b: (&WgpuBuffer, &WgpuBuffer),
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<(WgpuBuffer, WgpuBuffer)> {
        self.time(|| "herm_solve".into(), || self.g.herm_solve(a, b, batch, n, nrhs))
    }
    fn fft(
        &self,
        re: &WgpuBuffer,
        im: &WgpuBuffer,
        v: AxisView,
        inverse: bool,
        norm: FftNorm,
    ) -> (WgpuBuffer, WgpuBuffer) {
        self.time(|| "fft".into(), || self.g.fft(re, im, v, inverse, norm))
    }
    fn rfft(&self, x: &WgpuBuffer, v: AxisView, norm: FftNorm) -> (WgpuBuffer, WgpuBuffer) {
        self.time(|| "rfft".into(), || self.g.rfft(x, v, norm))
    }
    fn irfft(&self, re: &WgpuBuffer, im: &WgpuBuffer, v: AxisView, n: usize, norm: FftNorm) -> WgpuBuffer {
        self.time(|| "irfft".into(), || self.g.irfft(re, im, v, n, norm))
    }
}

/// The reference bodies, like `WgpuBackend` itself (which overrides no kernel), so that every primitive they call is timed.
impl Kernels for Timed {}

fn lcg(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn run<B: Kernels>(be: &B, batch: usize, backward: bool) -> f64 {
    let config = CrateConfig::mnist_small();
    let model = Crate::new(be, &config, 0).expect("config");
    let shape = [batch, config.vision.channels, config.vision.image_size, config.vision.image_size];
    let images = Tensor::from_f64(be, &lcg(shape.iter().product(), 11), &shape);
    let labels: Vec<usize> = (0..batch).map(|i| i % config.vision.num_classes).collect();
    let ce = CrossEntropy::default();
    let step = || {
        if backward {
            let (_, g) = model.loss_and_gradients(&images, &labels, &ce).expect("loss");
            g.input.to_f64_vec().len()
        } else {
            model.logits(&images).expect("logits").to_f64_vec().len()
        }
    };
    let t = Instant::now();
    step(); // warm-up (pipelines, pool)
    let cold = t.elapsed().as_secs_f64();
    if std::env::var_os("CRATE_SCALE_COLD").is_some() {
        println!("  batch {batch}: first step {cold:.3} s");
    }
    let reps = 2;
    let t = Instant::now();
    for _ in 0..reps {
        step();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backward = args.iter().any(|a| a == "backward");
    let prims = args.iter().any(|a| a == "prims");
    let batches: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let batches = if batches.is_empty() { vec![1, 2, 4, 8] } else { batches };
    let g = WgpuBackend::new().expect("adapter");
    println!("{} ({})", g.name(), if backward { "forward+backward" } else { "forward" });
    for &b in &batches {
        let s = run(&g, b, backward);
        println!("batch {b}: {s:.3} s ({:.3} s per image)", s / b as f64);
    }
    if prims {
        let mut all: Vec<BTreeMap<String, (usize, f64)>> = Vec::new();
        for &b in &batches {
            let t = Timed { g: g.clone(), stats: Stats::default() };
            run(&t, b, backward);
            let st = t.stats.lock().expect("stats").clone();
            all.push(st);
        }
        let mut keys: Vec<&String> = all.iter().flat_map(|m| m.keys()).collect();
        keys.sort();
        keys.dedup();
        // 3 runs per batch (warm-up + 2): report per run.
        print!("{:<48}", "primitive (calls/run)");
        for &b in &batches {
            print!(" {:>10}", format!("b{b} ms"));
        }
        println!();
        let mut rows: Vec<(f64, String)> = Vec::new();
        for k in keys {
            let mut line = String::new();
            let calls = all[0].get(k).map_or(0, |e| e.0 / 3);
            line.push_str(&format!("{:<48}", format!("{k} ({calls})")));
            for m in &all {
                let ms = m.get(k).map_or(0.0, |e| e.1 / 3.0 * 1e3);
                line.push_str(&format!(" {ms:>10.1}"));
            }
            let last = all.last().and_then(|m| m.get(k)).map_or(0.0, |e| e.1);
            rows.push((last, line));
        }
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, l) in rows {
            println!("{l}");
        }
    }
}
