//! Temporary profiling driver (not committed).
use backend_cpu::CpuBackend;
use models::nn::crate_model::{Crate, CrateConfig};
use models::nn::loss::CrossEntropy;
use models::Tensor;
use std::time::Instant;
fn main() {
    let be = CpuBackend::<f32>::new();
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let train = args.get(3).map(|s| s == "train").unwrap_or(false);
    let mb: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
    let exec = if mb > 0 {
        models::nn::crate_model::Execution::parallel_micro_batches(mb)
    } else {
        Default::default()
    };
    let config = CrateConfig::cifar_small();
    let model = Crate::<CpuBackend<f32>>::new(&be, &config, 0).unwrap();
    let n = batch * 3 * 32 * 32;
    let data: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0).collect();
    let images = Tensor::from_f64(&be, &data, &[batch, 3, 32, 32]);
    let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    let ce = CrossEntropy::default();
    if args.get(3).map(|s| s == "probe").unwrap_or(false) {
        let xs: Vec<f32> = (0..811200).map(|i| ((i % 1000) as f32) / 200.0 - 2.5).collect();
        let xt = Tensor::from_slice(&be, &xs, &[811200]);
        for _ in 0..2 {
            let t = Instant::now();
            let e = xt.exp();
            println!("fresh exp {:.4}s {}", t.elapsed().as_secs_f64(), e.numel());
        }
        let t = Instant::now();
        let e: Vec<f32> = xs.iter().map(|v| v.exp()).collect();
        println!("plain exp {:.4}s {}", t.elapsed().as_secs_f64(), e.iter().sum::<f32>());
        let mt = Tensor::from_slice(&be, &xs[..90000], &[300, 300]);
        let m = mt.matmul(&mt);
        println!("mm {}", m.numel());
        for _ in 0..2 {
            let t = Instant::now();
            let e = xt.exp();
            println!("after-mm exp {:.4}s {}", t.elapsed().as_secs_f64(), e.numel());
        }
        let t = Instant::now();
        let e: Vec<f32> = xs.iter().map(|v| v.exp()).collect();
        println!("after-mm plain exp {:.4}s {}", t.elapsed().as_secs_f64(), e.iter().sum::<f32>());
        let (z0, _) = {
            let (p, c) = model.embedding.forward(&images);
            (models::nn::embed::add_cls_and_positions(&p, &model.cls_token, &model.pos_embedding), c)
        };
        let l = &model.layers[0];
        let (a_in, _) = l.norm1.forward(&z0);
        let w = l.attn.project(&a_in);
        let t = Instant::now();
        let s = w.scale(l.attn.scale()).matmul_t(&w, false, true);
        println!(
            "dots {:?} {:.4}s max {} min {}",
            s.shape(),
            t.elapsed().as_secs_f64(),
            s.max_abs(),
            s.min_axis(-1, false).min_axis(-1, false).min_axis(-1, false).min_axis(-1, false).scalar()
        );
        let sv = s.to_vec();
        let nden = sv.iter().filter(|v| v.is_subnormal()).count();
        let nzero = sv.iter().filter(|v| **v == 0.0).count();
        println!("subnormal {nden} zero {nzero}");
        let t = Instant::now();
        let e: Vec<f32> = sv.iter().map(|v| v.exp()).collect();
        println!("plain exp of dots {:.4}s {}", t.elapsed().as_secs_f64(), e.iter().sum::<f32>());
        let s2 = Tensor::from_slice(&be, &sv, s.shape());
        let mut best = (1e9f64, 1e9f64, 1e9f64);
        for _ in 0..20 {
            let t = Instant::now();
            let e = s2.exp();
            best.0 = best.0.min(t.elapsed().as_secs_f64());
            std::hint::black_box(e);
            let t = Instant::now();
            let e: Vec<f32> = sv.iter().map(|v| v.exp()).collect();
            best.1 = best.1.min(t.elapsed().as_secs_f64());
            std::hint::black_box(e);
            let t = Instant::now();
            let e = s2.scale(2.0);
            best.2 = best.2.min(t.elapsed().as_secs_f64());
            std::hint::black_box(e);
        }
        println!("min of 20: tensor exp {:.4} plain exp {:.4} tensor scale {:.4}", best.0, best.1, best.2);
        let t = Instant::now();
        let e = s2.exp();
        println!("tensor exp of copied dots {:.4}s {}", t.elapsed().as_secs_f64(), e.numel());
        for _ in 0..3 {
            let t = Instant::now();
            let a = s.softmax(-1);
            println!("softmax {:.4}s", t.elapsed().as_secs_f64());
            let t = Instant::now();
            let e = s.exp();
            println!("exp {:.4}s {}", t.elapsed().as_secs_f64(), a.numel() + e.numel());
        }
        return;
    }
    for _ in 0..iters {
        let t = Instant::now();
        if train {
            let _ = model.loss_and_gradients_with(&images, &labels, &ce, &exec).unwrap();
        } else {
            let _ = model.logits_with(&images, &exec).unwrap();
        }
        let dt = t.elapsed().as_secs_f64();
        println!("{:.3} s  {:.1} img/s", dt, batch as f64 / dt);
    }
}

#[allow(dead_code)]
fn softmax_probe() {}
