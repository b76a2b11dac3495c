//! Time and peak memory of one attention layer against the number of tokens: TSSA (4.3.15) versus the MSSA layer (4.2.20) with dense or tiled attention, f32 on the CPU, one fresh process per point.
//!
//! ```text
//! cargo run --release -p models --example attention_memory            # the sweep
//! cargo run --release -p models --example attention_memory -- tssa 16384 [--backward]
//! ```
//!
//! Each point runs in a child process so that its peak resident set
//! (`VmHWM` of `/proc/self/status`) belongs to that point alone. The layer is
//! dim 384, 8 heads (dh 48), batch 1, as in the ToST paper's comparison.
//! Printed per point: seconds per call (best and median of up to 7
//! repetitions within 20 s), CPU seconds per call (all threads; robust on a
//! shared machine), the peak resident set, and the peak minus the resident
//! set measured just before the first call (input, parameters and the
//! program itself excluded). `RAYON_NUM_THREADS` sets the thread count.

use backend_cpu::CpuBackend;
use models::nn::classifier::Block;
use models::nn::flash;
use models::nn::tssa::Tssa;
use models::nn::{init, Grads, Linear};
use models::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::process::Command;
use std::time::Instant;

type B = CpuBackend<f32>;

const DIM: usize = 384;
const HEADS: usize = 8;

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system, all threads) used by this process so far.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the parenthesised command name; utime and stime are the 12th and 13th
    let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// The MSSA layer: shared projection (no bias), attention per head, merge, `to_out`.
struct Mssa {
    qkv: Linear<B>,
    to_out: Linear<B>,
    tiled: bool,
}

impl Mssa {
    fn heads(&self, x: &Tensor<B>) -> Tensor<B> {
        let (b, n) = (x.dim(0), x.dim(1));
        let dh = DIM / HEADS;
        self.qkv.forward(x).reshape(&[b, n, HEADS, dh]).permute(&[0, 2, 1, 3]).reshape(&[b * HEADS, n, dh])
    }
    fn merge(&self, o: &Tensor<B>, b: usize) -> Tensor<B> {
        let (n, dh) = (o.dim(1), o.dim(2));
        o.reshape(&[b, HEADS, n, dh]).permute(&[0, 2, 1, 3]).reshape(&[b, n, DIM])
    }
    fn scale() -> f64 {
        ((DIM / HEADS) as f64).powf(-0.5)
    }
    fn forward(&self, x: &Tensor<B>) -> Tensor<B> {
        let w = self.heads(x);
        let o = if self.tiled {
            flash::tiled_forward(&w, Self::scale()).0
        } else {
            w.matmul_t(&w, false, true).scale(Self::scale()).softmax(-1).matmul(&w)
        };
        self.to_out.forward(&self.merge(&o, x.dim(0)))
    }
    fn train_step(&self, x: &Tensor<B>) -> Tensor<B> {
        let w = self.heads(x);
        let (o, cache) = if self.tiled {
            let (o, c) = flash::tiled_forward(&w, Self::scale());
            (o, flash::AttentionCache::Tiled(c))
        } else {
            let (o, c) = flash::dense_forward(&w, Self::scale());
            (o, flash::AttentionCache::Dense(c))
        };
        let y = self.merge(&o, x.dim(0));
        let out = self.to_out.forward(&y);
        let mut grads = Grads::new();
        let gy = self.to_out.backward(&y, &out, "to_out.0", &mut grads);
        let gw = flash::backward(&cache, &self.heads_of_grad(&gy));
        self.qkv.backward(x, &self.merge(&gw, x.dim(0)), "qkv", &mut grads)
    }
    fn heads_of_grad(&self, g: &Tensor<B>) -> Tensor<B> {
        let (b, n) = (g.dim(0), g.dim(1));
        g.reshape(&[b, n, HEADS, DIM / HEADS]).permute(&[0, 2, 1, 3]).reshape(&[b * HEADS, n, DIM / HEADS])
    }
}

fn point(kind: &str, n: usize, backward: bool) -> Result<(), String> {
    let be = B::new();
    let mut rng = StdRng::seed_from_u64(2025);
    let x = init::uniform(&be, &[1, n, DIM], 1.0, &mut rng);
    let run: Box<dyn Fn() -> Tensor<B>> = match kind {
        "tssa" => {
            let layer = Tssa::init(&be, DIM, HEADS, false, &mut rng).map_err(|e| e.to_string())?;
            let x = x.clone();
            if backward {
                Box::new(move || {
                    let (out, cache) = layer.forward(&x);
                    let mut grads = Grads::new();
                    layer.backward(&cache, &out, "", &mut grads, false)
                })
            } else {
                Box::new(move || layer.forward(&x).0)
            }
        }
        "mssa-dense" | "mssa-tiled" => {
            let m = Mssa {
                qkv: init::linear(&be, DIM, DIM, false, &mut rng),
                to_out: init::linear(&be, DIM, DIM, true, &mut rng),
                tiled: kind == "mssa-tiled",
            };
            let x = x.clone();
            if backward {
                Box::new(move || m.train_step(&x))
            } else {
                Box::new(move || m.forward(&x))
            }
        }
        other => return Err(format!("unknown kind `{other}` (tssa, mssa-dense, mssa-tiled)")),
    };
    let base_kb = status_kb("VmRSS:");
    let mut times = vec![];
    let budget = 20.0;
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    while times.len() < 7 && (times.is_empty() || start.elapsed().as_secs_f64() < budget) {
        let t = Instant::now();
        let out = run();
        std::hint::black_box(out.numel());
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu_per_rep = (cpu_seconds() - cpu0) / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let peak_kb = status_kb("VmHWM:");
    println!(
        "{kind} n={n} backward={backward} reps={} best_s={:.4} median_s={:.4} cpu_s_per_rep={:.3} peak_mb={:.1} peak_over_base_mb={:.1}",
        times.len(),
        times[0],
        times[times.len() / 2],
        cpu_per_rep,
        peak_kb as f64 / 1024.0,
        peak_kb.saturating_sub(base_kb) as f64 / 1024.0
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() >= 2 {
        let n = match args[1].parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("tokens `{}` is not a positive integer", args[1]);
                std::process::exit(2);
            }
        };
        if let Err(e) = point(&args[0], n, args.iter().any(|a| a == "--backward")) {
            eprintln!("{e}");
            std::process::exit(2);
        }
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find this program: {e}");
            std::process::exit(1);
        }
    };
    let ns = |max: usize| (8..=15).map(|p| 1usize << p).filter(move |&n| n <= max);
    let mut plan: Vec<(&str, usize, bool)> = vec![];
    plan.extend(ns(32768).map(|n| ("tssa", n, false)));
    plan.extend(ns(4096).map(|n| ("mssa-dense", n, false)));
    plan.extend(ns(32768).map(|n| ("mssa-tiled", n, false)));
    plan.extend([("tssa", 16384, true), ("mssa-tiled", 4096, true), ("mssa-dense", 4096, true)]);
    for (kind, n, bw) in plan {
        let mut cmd = Command::new(&exe);
        cmd.arg(kind).arg(n.to_string());
        if bw {
            cmd.arg("--backward");
        }
        match cmd.output() {
            Ok(o) => print!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("{kind} {n}: {e}"),
        }
    }
}
