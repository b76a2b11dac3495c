//! Whole-process peak memory of building the rotation-MNIST invariant ReduNet (4.1.27 example: 100 training signals of 20 lifted channels x 200 angles, 10 classes, 40 layers) in f32, the figure compared with the authors' 1.0 GB.
//!
//! ```text
//! cargo run --release -p models --example invariant_memory
//! ```
//!
//! The process does only this: seeded random polar-like signals
//! `[100, 15, 200]`, lifted by 20 Gaussian kernels of length 5 and a ReLU
//! (the bench's workload), then the construction. It prints the construction's
//! wall time, the operators' size and the process's peak resident set
//! (`VmHWM` of `/proc/self/status`, never reset: binary, data and
//! construction together), with glibc's default allocator settings.

use backend_cpu::CpuBackend;
use models::invariant::{Activation, InvariantConfig, InvariantReduNet, Lifting};
use models::{Kernels, Tensor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn uniform<B: Kernels>(be: &B, shape: &[usize], seed: u64) -> Tensor<B> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    Tensor::from_f64(be, &v, shape)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let be = CpuBackend::<f32>::new();
    let lift = Lifting::random(&be, 20, 15, &[5], 0, Activation::Relu)?;
    let train = lift.apply(&uniform(&be, &[100, 15, 200], 1))?;
    let labels: Vec<usize> = (0..100).map(|i| i % 10).collect();
    let t = Instant::now();
    let built = InvariantReduNet::construct(&train, &labels, 10, &InvariantConfig::default())?;
    let s = t.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: unavailable");
    println!(
        "construct (m = 100, C = 20, T = 200, k = 10, L = 40, f32): {s:.3} s, operators {:.1} MB ({:.3} MB a layer)",
        built.network.operator_bytes() as f64 / 1e6,
        built.network.operator_bytes_per_layer() as f64 / 1e6
    );
    println!(
        "process peak (binary, data and construction): {}",
        hwm.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
