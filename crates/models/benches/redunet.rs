//! ReduNet on the chapter's Figure 4.5 workload: 3 Gaussians in R^3, 500 samples a class, 2000 layers, eta 0.5, eps_sq 0.1, lambda 500.
//!
//! Construction records the per-layer rates (true labels and the reference
//! code's) and `yhat`; the transform pushes 1500 held-out samples through
//! the 2000 layers. Data are generated once, outside the timed loops, with
//! fixed seeds. Before the timings the process prints its peak resident
//! memory after one f64 build and transform (Linux `VmHWM`).
//!
//! `cargo bench -p models --bench redunet` (add `-- fused` etc. to filter).
#![allow(missing_docs)] // criterion's macros generate undocumented items
use backend_cpu::{CpuBackend, CpuElem};
use criterion::{criterion_group, Criterion};
use models::redunet::{gaussians, Engine, Gaussians, Record, ReduNet, ReduNetConfig};
use rate_core::Backend;
use std::hint::black_box;

const LAYERS: usize = 2000;

fn data() -> (Gaussians, Gaussians) {
    let train = gaussians(3, 3, 500, 0.1, 1).expect("train data");
    let test = gaussians(3, 3, 500, 0.1, 2).expect("test data");
    (train, test)
}

fn config(engine: Engine, layers: usize) -> ReduNetConfig {
    let mut cfg = ReduNetConfig::new(3, layers);
    cfg.engine = engine;
    cfg
}

fn bench_precision<T: CpuElem>(c: &mut Criterion, engine: Engine, layers: usize) {
    let be = CpuBackend::<T>::new();
    let (train, test) = data();
    let x = train.tensor(&be);
    let xt = test.tensor(&be);
    let tag = format!("{:?}_{}_{layers}_layers", engine, be.name()).to_lowercase();
    let mut group = c.benchmark_group("redunet_fig4_5");
    group.sample_size(10);
    group.bench_function(format!("build_{tag}"), |b| {
        b.iter(|| {
            let (net, trace) =
                ReduNet::build_with(&x, &train.labels, config(engine, layers), &Record::default())
                    .expect("build");
            black_box((net.depth(), trace.rates_true.len()))
        })
    });
    let (net, _) = ReduNet::build_with(&x, &train.labels, config(engine, layers), &Record::output_only())
        .expect("build");
    group.bench_function(format!("transform_{tag}"), |b| {
        b.iter(|| black_box(net.transform(&xt).expect("transform")))
    });
    group.finish();
}

fn peak_rss_kib() -> Option<u64> {
    models::io::peak_rss_bytes().map(|b| b / 1024)
}

fn memory_report() {
    let be = CpuBackend::<f64>::new();
    let before = peak_rss_kib();
    let (train, test) = data();
    let (net, trace) = ReduNet::build_with(
        &train.tensor(&be),
        &train.labels,
        config(Engine::Auto, LAYERS),
        &Record::default(),
    )
    .expect("build");
    let out = net.transform(&test.tensor(&be)).expect("transform");
    let last = trace.rates_true.last().map(|r| r.delta_r).unwrap_or(f64::NAN);
    eprintln!(
        "fig4.5 f64: {} layers, final delta_R {last:.4}, output {:?}; peak RSS before {:?} KiB, after build+transform {:?} KiB",
        net.depth(),
        out.shape(),
        before,
        peak_rss_kib()
    );
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `REDUNET_CPU_TIMES=<runs>`: wall and CPU seconds per fused build and
/// transform (f64, f32), for a loaded machine where wall time is not the cost.
fn cpu_times(runs: usize) {
    fn one<T: CpuElem>(runs: usize) {
        let be = CpuBackend::<T>::new();
        let (train, test) = data();
        let (x, xt) = (train.tensor(&be), test.tensor(&be));
        let mut net = None;
        let (w0, c0) = (std::time::Instant::now(), cpu_seconds());
        for _ in 0..runs {
            net = Some(ReduNet::build(&x, &train.labels, config(Engine::Fused, LAYERS)).expect("build").0);
        }
        let (wb, cb) = (w0.elapsed().as_secs_f64() / runs as f64, cpu_seconds());
        let net = net.expect("built");
        let w1 = std::time::Instant::now();
        for _ in 0..runs {
            black_box(net.transform(&xt).expect("transform"));
        }
        let (wt, ct) = (w1.elapsed().as_secs_f64() / runs as f64, cpu_seconds());
        let per = |a: Option<f64>, b: Option<f64>| b.zip(a).map(|(b, a)| (b - a) / runs as f64);
        eprintln!(
            "{}: build wall {wb:.4} s cpu {:?} s | transform wall {wt:.4} s cpu {:?} s (per run, {runs} runs)",
            be.name(),
            per(c0, cb),
            per(cb, ct)
        );
    }
    /// Shortest wall time of many short runs (100 layers), times 20: on a
    /// loaded machine the fastest run is the one least disturbed.
    fn short<T: CpuElem>(runs: usize) {
        let be = CpuBackend::<T>::new();
        let (train, test) = data();
        let (x, xt) = (train.tensor(&be), test.tensor(&be));
        let (mut best_build, mut best_transform) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..runs {
            let t = std::time::Instant::now();
            let net = ReduNet::build(&x, &train.labels, config(Engine::Fused, LAYERS / 20)).expect("build").0;
            best_build = best_build.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            black_box(net.transform(&xt).expect("transform"));
            best_transform = best_transform.min(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "{}: fastest of {runs} runs of {} layers, x20: build {:.4} s, transform {:.4} s",
            be.name(),
            LAYERS / 20,
            best_build * 20.0,
            best_transform * 20.0
        );
    }
    one::<f64>(runs);
    one::<f32>(runs);
    short::<f64>(20 * runs);
    short::<f32>(20 * runs);
}

fn benches(c: &mut Criterion) {
    bench_precision::<f64>(c, Engine::Fused, LAYERS);
    bench_precision::<f32>(c, Engine::Fused, LAYERS);
    bench_precision::<f64>(c, Engine::Tensor, LAYERS);
}

criterion_group!(redunet, benches);

fn main() {
    if let Some(runs) = std::env::var("REDUNET_CPU_TIMES").ok().and_then(|v| v.parse().ok()) {
        cpu_times(runs);
        return;
    }
    memory_report();
    redunet();
    Criterion::default().configure_from_args().final_summary();
}
