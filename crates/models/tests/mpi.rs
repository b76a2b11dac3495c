//! Under `mpirun -n 2` (the `mpi` feature): the ReduNet and the invariant ReduNet built from two shards across processes (class Gram sums of 4.1.3-4.1.4, per frequency for 4.1.20-4.1.22, all-reduced over MPI) equal the build on the union to 1e-10 in f64, with identical operators on both ranks; a bad shard stops both ranks with one error naming it.
//!
//! Run: `cargo test --release -p models --features mpi --test mpi --no-run`,
//! then `mpirun --allow-run-as-root --oversubscribe -n 2 <the test binary>`
//! (`.ci/run` does this). Started any other way it fails: it asserts a world
//! of exactly two processes, so a launcher mismatch cannot pass silently.
use backend_cpu::CpuBackend;
use models::fixtures::{self, max_abs_diff};
use models::invariant::InvariantReduNet;
use models::redunet::{Engine, LayerProgress, Record, ReduNet, ReduNetConfig};
use rate_core::collective::Mpi;
use rate_core::{Collective, Tensor};

type B = CpuBackend<f64>;

const TOL: f64 = 1e-10;

fn check(ok: bool, rank: usize, what: &str) {
    if !ok {
        eprintln!("rank {rank}: FAILED: {what}");
        std::process::exit(1);
    }
}

fn main() {
    let comm = Mpi::init().unwrap_or_else(|e| panic!("MPI init: {e}"));
    let rank = comm.rank();
    check(comm.size() == 2, rank, &format!("world size is {}, this test needs `mpirun -n 2`", comm.size()));
    let be = B::new();

    // 1. the fixtures, split unevenly (a third on rank 0, the rest on rank 1)
    for name in ["redunet_vector", "redunet_vector_soft"] {
        let f = fixtures::load(name).unwrap_or_else(|e| panic!("{e}"));
        let cfg = ReduNetConfig { engine: Engine::Tensor, ..f.redunet_config().expect("ReduNet metadata") };
        let x = f.get("X").expect("X");
        let y = f.labels("y").expect("y");
        let (m, d) = (x.shape[0], x.shape[1]);
        let cut = m / 3;
        let (lo, hi) = if rank == 0 { (0, cut) } else { (cut, m) };
        let z = Tensor::from_f64(&be, &x.data[lo * d..hi * d], &[hi - lo, d]);
        let (net, tr) = ReduNet::build_sharded(
            &z,
            &y[lo..hi],
            cfg.clone(),
            &Record::default(),
            LayerProgress::default(),
            &comm,
        )
        .expect("sharded build");
        // the whole build in this process
        let whole = Tensor::from_f64(&be, &x.data, &[m, d]);
        let (net1, tr1) = ReduNet::build(&whole, &y, cfg).expect("whole build");
        check(net.depth() == net1.depth(), rank, &format!("{name}: depth"));
        for (l, (a, b)) in net.layers().iter().zip(net1.layers()).enumerate() {
            let (a, b) = (a.operators().to_vec(), b.operators().to_vec());
            let err = max_abs_diff(&a, &b);
            check(err <= TOL, rank, &format!("{name}: layer {l} operators off by {err:e}"));
            // bit-identical on both ranks: rank 0's copy broadcast and compared exactly
            let mut root = a.clone();
            comm.broadcast(&mut root, 0).expect("broadcast");
            check(root == a, rank, &format!("{name}: layer {l} operators differ from rank 0's"));
        }
        let dr: Vec<f64> = tr.rates_true.iter().chain(&tr.rates_code).map(|r| r.delta_r).collect();
        let dr1: Vec<f64> = tr1.rates_true.iter().chain(&tr1.rates_code).map(|r| r.delta_r).collect();
        check(max_abs_diff(&dr, &dr1) <= TOL, rank, &format!("{name}: rates"));
        let want = &f.get("delta_R_true").expect("delta_R_true").data;
        check(
            max_abs_diff(&dr[..want.len()], want) <= TOL,
            rank,
            &format!("{name}: delta_R_true against the fixture"),
        );
        let out1 = tr1.output.to_vec();
        let err = max_abs_diff(&tr.output.to_vec(), &out1[lo * d..hi * d]);
        check(err <= TOL, rank, &format!("{name}: features off by {err:e}"));
        let zf = &f.get("Z_final").expect("Z_final").data;
        check(
            max_abs_diff(&tr.output.to_vec(), &zf[lo * d..hi * d]) <= TOL,
            rank,
            &format!("{name}: Z_final"),
        );
        eprintln!("rank {rank}: {name}: sharded build equals the whole build and the fixture");
    }

    // 1b. the invariant ReduNet on the 1-D fixture, split at a third
    for name in ["redunet_fourier1d", "redunet_fourier1d_soft"] {
        let f = fixtures::load(name).unwrap_or_else(|e| panic!("{e}"));
        let config = f.invariant_config().expect("invariant ReduNet metadata");
        let classes = f.meta_usize("num_classes").expect("num_classes");
        let v = f.get_rank("V", 3).expect("V");
        let y = f.labels("y").expect("y");
        let (m, per) = (v.shape[0], v.shape[1] * v.shape[2]);
        let cut = m / 3;
        let (lo, hi) = if rank == 0 { (0, cut) } else { (cut, m) };
        let xs = Tensor::from_f64(&be, &v.data[lo * per..hi * per], &[hi - lo, v.shape[1], v.shape[2]]);
        let out =
            InvariantReduNet::construct_sharded(&xs, &y[lo..hi], classes, &config, &comm).expect("sharded");
        let whole =
            InvariantReduNet::construct(&Tensor::from_f64(&be, &v.data, &v.shape), &y, classes, &config)
                .expect("whole");
        for (l, (a, b)) in out.network.layers().iter().zip(whole.network.layers()).enumerate() {
            let (a, b) = (a.packed().to_vec(), b.packed().to_vec());
            check(max_abs_diff(&a, &b) <= TOL, rank, &format!("{name}: layer {l} operators"));
            let mut root = a.clone();
            comm.broadcast(&mut root, 0).expect("broadcast");
            check(root == a, rank, &format!("{name}: layer {l} operators differ from rank 0's"));
        }
        let dr = |r: &[rate_core::Rates]| r.iter().map(|r| r.delta_r).collect::<Vec<f64>>();
        check(
            max_abs_diff(&dr(&out.record.rates_true), &dr(&whole.record.rates_true)) <= TOL,
            rank,
            &format!("{name}: rates"),
        );
        let err = max_abs_diff(&out.features.to_vec(), &whole.features.to_vec()[lo * per..hi * per]);
        check(err <= TOL, rank, &format!("{name}: features off by {err:e}"));
        eprintln!("rank {rank}: {name}: sharded invariant construction equals the whole one");
    }

    // 2. rank 1's shard has another feature width: both ranks stop with one error naming rank 1
    let d = if rank == 1 { 3 } else { 4 };
    let labels: Vec<usize> = (0..9).map(|i| i % 3).collect();
    let xs: Vec<f64> = (0..9 * d).map(|i| ((i * 7 % 11) as f64) / 11.0 + 0.1).collect();
    let z = Tensor::from_f64(&be, &xs, &[9, d]);
    let mut cfg = ReduNetConfig::new(3, 2);
    cfg.engine = Engine::Tensor;
    let err =
        ReduNet::build_sharded(&z, &labels, cfg.clone(), &Record::default(), LayerProgress::default(), &comm)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    check(err.contains("rank 1 of 2"), rank, &format!("width mismatch: error {err:?} does not name rank 1"));

    // 3. a label beyond the class count on rank 1
    let z = Tensor::from_f64(&be, &xs[..9 * 3], &[9, 3]);
    let mut bad = labels.clone();
    if rank == 1 {
        bad[4] = 5;
    }
    let err = ReduNet::build_sharded(&z, &bad, cfg, &Record::default(), LayerProgress::default(), &comm)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    check(err.contains("rank 1 of 2") && err.contains("labels[4] = 5"), rank, &format!("bad label: {err:?}"));
    comm.barrier().expect("barrier");
    eprintln!("rank {rank}: all MPI checks passed ({:.3} s in collectives)", comm.comm_seconds());
}
