//! ReduNets built from samples sharded across processes (the class Gram sums of 4.1.3-4.1.4, per frequency for the invariant network 4.1.20-4.1.22, all-reduced) equal the build on the union of the shards: random shards on a world of threads, and the fixtures; a bad shard stops every rank with one error naming it.
//!
//! The same checks run across real processes under `mpirun -n 2` in
//! `tests/mpi.rs` (the `mpi` feature).
use backend_cpu::CpuBackend;
use models::fixtures::{self, max_abs_diff};
use models::invariant::{InvariantConfig, InvariantReduNet};
use models::redunet::{Engine, LayerProgress, Record, ReduNet, ReduNetConfig, Trace};
use proptest::prelude::*;
use rate_core::testing::ThreadWorld;
use rate_core::{Collective, Tensor};

type B = CpuBackend<f64>;

/// Sharded and whole builds differ only by rounding (Gram route for every
/// class against the `m_j x m_j` route, sums in another order).
const TOL: f64 = 1e-10;

/// One shard: its rows (`m_s x d`, row-major) and labels.
#[derive(Clone, Debug)]
struct Shard {
    x: Vec<f64>,
    labels: Vec<usize>,
}

fn rates_vec(t: &Trace<B>) -> Vec<f64> {
    t.rates_true.iter().chain(&t.rates_code).flat_map(|r| [r.r, r.rc, r.delta_r]).collect()
}

/// Builds on the union of `shards` in one process and on a world of one
/// thread per shard, and checks operators, rates, outputs and `yhat`.
/// Returns what the ranks built: `ΔR` with the true labels per layer (rank
/// 0's, the same on every rank) and the outputs of every rank in rank order.
fn check_sharded_equals_whole(shards: &[Shard], d: usize, cfg: &ReduNetConfig) -> (Vec<f64>, Vec<f64>) {
    let be = B::new();
    let x_all: Vec<f64> = shards.iter().flat_map(|s| s.x.clone()).collect();
    let y_all: Vec<usize> = shards.iter().flat_map(|s| s.labels.clone()).collect();
    let whole = Tensor::from_f64(&be, &x_all, &[y_all.len(), d]);
    let (net, trace) = ReduNet::build(&whole, &y_all, cfg.clone()).expect("whole build");
    let out_whole = trace.output.to_vec();

    let runs = ThreadWorld::run(shards.len(), |w| {
        let s = &shards[w.rank()];
        let be = B::new();
        let z = Tensor::from_f64(&be, &s.x, &[s.labels.len(), d]);
        let (net, tr) = ReduNet::build_sharded(
            &z,
            &s.labels,
            cfg.clone(),
            &Record::default(),
            LayerProgress::default(),
            w,
        )
        .expect("sharded build");
        let ops: Vec<Vec<f64>> = net.layers().iter().map(|l| l.operators().to_vec()).collect();
        let yhat: Vec<Vec<u32>> = (0..tr.yhat_layers()).map(|l| tr.yhat(l).expect("yhat").to_vec()).collect();
        (ops, net.gamma().to_vec(), rates_vec(&tr), tr.output.to_vec(), yhat)
    });

    let mut at = 0;
    for (r, (ops, gamma, rates, out, yhat)) in runs.iter().enumerate() {
        assert_eq!(ops, &runs[0].0, "rank {r}: operators differ from rank 0's (must be bit-identical)");
        assert_eq!(rates, &runs[0].2, "rank {r}: rates differ from rank 0's");
        assert_eq!(ops.len(), net.depth(), "rank {r}: depth");
        for (l, (got, layer)) in ops.iter().zip(net.layers()).enumerate() {
            let err = max_abs_diff(got, &layer.operators().to_vec());
            assert!(err <= TOL, "rank {r} layer {l}: operators off by {err:e}");
        }
        assert!(max_abs_diff(gamma, net.gamma()) <= 1e-15, "rank {r}: gamma");
        let err = max_abs_diff(rates, &rates_vec(&trace));
        assert!(err <= TOL, "rank {r}: rates off by {err:e}");
        let m_s = shards[r].labels.len();
        let err = max_abs_diff(out, &out_whole[at * d..(at + m_s) * d]);
        assert!(err <= TOL, "rank {r}: output off by {err:e}");
        for (l, y) in yhat.iter().enumerate() {
            assert_eq!(y.as_slice(), &trace.yhat(l).expect("yhat")[at..at + m_s], "rank {r} layer {l}: yhat");
        }
        at += m_s;
    }
    let delta_r = runs[0].2.chunks(3).take(net.depth() + 1).map(|r| r[2]).collect();
    (delta_r, runs.into_iter().flat_map(|r| r.3).collect())
}

fn config(k: usize, layers: usize) -> ReduNetConfig {
    let mut cfg = ReduNetConfig::new(k, layers);
    cfg.eps_sq = 0.5;
    cfg.eta = 0.5;
    cfg.lambda = 100.0;
    cfg.engine = Engine::Tensor;
    cfg
}

/// `k` classes in `d` dimensions with `sizes[j]` samples each, dealt to
/// `shards` shards by `owner` (class 0 never goes to the last shard).
fn dealt(d: usize, sizes: &[usize], shards: usize, seed: u64) -> Vec<Shard> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![Shard { x: Vec::new(), labels: Vec::new() }; shards];
    for (j, &mj) in sizes.iter().enumerate() {
        for _ in 0..mj {
            let mut owner = rng.random_range(0..shards);
            if j == 0 && owner == shards - 1 {
                owner = 0;
            }
            let s = &mut out[owner];
            for i in 0..d {
                let mean = if i == j { 1.0 } else { 0.0 };
                s.x.push(mean + 0.3 * (rng.random::<f64>() - 0.5));
            }
            s.labels.push(j);
        }
    }
    // every shard holds a sample: the last one takes one from the largest if empty
    if out[shards - 1].labels.is_empty() {
        let from = (0..shards - 1).max_by_key(|&s| out[s].labels.len()).unwrap_or(0);
        let y = out[from].labels.pop().expect("a sample");
        let len = out[from].x.len();
        let row: Vec<f64> = out[from].x.split_off(len - d);
        if y == 0 {
            // class 0 stays off the last shard: put it back and move another class's sample
            out[from].labels.push(y);
            out[from].x.extend(row);
            let i = out[from].labels.iter().position(|&l| l != 0).expect("a sample of another class");
            let y = out[from].labels.remove(i);
            let row: Vec<f64> = out[from].x.drain(i * d..(i + 1) * d).collect();
            out[shards - 1].labels.push(y);
            out[shards - 1].x.extend(row);
        } else {
            out[shards - 1].labels.push(y);
            out[shards - 1].x.extend(row);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Uneven random shards, small classes (fewer samples than `d`, the
    /// `m_j x m_j` route in one process) and class 0 missing from the last
    /// shard: the sharded build equals the whole one to 1e-10 in f64.
    #[test]
    fn sharded_build_equals_the_build_on_the_union(
        k in 2usize..4,
        extra in 0usize..6,
        sizes in proptest::collection::vec(2usize..25, 3),
        shards in 2usize..4,
        seed in 0u64..1000,
    ) {
        let d = k + extra;
        let sizes = &sizes[..k];
        let total: usize = sizes.iter().sum();
        prop_assume!(total - sizes[0] >= 1 && total >= shards);
        let parts = dealt(d, sizes, shards, seed);
        prop_assume!(parts.iter().all(|s| !s.labels.is_empty()));
        check_sharded_equals_whole(&parts, d, &config(k, 4));
    }
}

/// The authors' fixtures, split into two uneven shards (a third and two
/// thirds): the sharded build reproduces the fixture's operators, rates and
/// features as the whole build does.
#[test]
fn sharded_build_reproduces_the_fixtures() {
    for name in ["redunet_vector", "redunet_vector_soft"] {
        let f = fixtures::load(name).unwrap_or_else(|e| panic!("{e}"));
        let cfg = ReduNetConfig { engine: Engine::Tensor, ..f.redunet_config().expect("ReduNet metadata") };
        let x = f.get("X").expect("X");
        let y = f.labels("y").expect("y");
        let (m, d) = (x.shape[0], x.shape[1]);
        let cut = m / 3;
        let shards = [
            Shard { x: x.data[..cut * d].to_vec(), labels: y[..cut].to_vec() },
            Shard { x: x.data[cut * d..].to_vec(), labels: y[cut..].to_vec() },
        ];
        // against the whole build, then against the file itself
        let (delta_r, out) = check_sharded_equals_whole(&shards, d, &cfg);
        let rates = &f.get("delta_R_true").expect("delta_R_true").data;
        assert!(max_abs_diff(&delta_r, rates) <= TOL, "{name}: delta_R_true");
        let z_final = &f.get("Z_final").expect("Z_final").data;
        assert!(max_abs_diff(&out, z_final) <= TOL, "{name}: Z_final");
    }
}

/// A shard with another feature width, a label beyond the class count, a
/// non-finite value, or no samples: every rank returns the same error, which
/// names the bad rank (no rank waits forever for the others).
#[test]
fn a_bad_shard_stops_every_rank_with_one_error_naming_it() {
    let good = dealt(4, &[6, 6, 6], 2, 7);
    let cases: Vec<(&str, Box<dyn Fn(usize) -> (Vec<f64>, Vec<usize>, usize) + Sync>)> = vec![
        (
            "width",
            Box::new(|r| {
                let s = &good[r];
                if r == 1 {
                    let m = s.labels.len();
                    (s.x[..m * 3].to_vec(), s.labels.clone(), 3)
                } else {
                    (s.x.clone(), s.labels.clone(), 4)
                }
            }),
        ),
        (
            "label",
            Box::new(|r| {
                let mut s = good[r].clone();
                if r == 1 {
                    s.labels[0] = 7;
                }
                (s.x, s.labels, 4)
            }),
        ),
        (
            "nan",
            Box::new(|r| {
                let mut s = good[r].clone();
                if r == 1 {
                    s.x[2] = f64::NAN;
                }
                (s.x, s.labels, 4)
            }),
        ),
        (
            "empty",
            Box::new(|r| {
                if r == 1 {
                    (Vec::new(), Vec::new(), 4)
                } else {
                    (good[r].x.clone(), good[r].labels.clone(), 4)
                }
            }),
        ),
    ];
    for (what, shard) in &cases {
        let errs = ThreadWorld::run(2, |w| {
            let (x, labels, d) = shard(w.rank());
            let be = B::new();
            let z = Tensor::from_f64(&be, &x, &[labels.len(), d]);
            match ReduNet::build_sharded(
                &z,
                &labels,
                config(3, 2),
                &Record::default(),
                LayerProgress::default(),
                w,
            ) {
                Ok(_) => "built".to_string(),
                Err(e) => e.to_string(),
            }
        });
        assert_eq!(errs[0], errs[1], "{what}: ranks report different outcomes");
        assert!(errs[0].contains("rank 1"), "{what}: the error does not name rank 1: {}", errs[0]);
    }
    // a class missing from every shard is an error on every rank too
    let errs = ThreadWorld::run(2, |w| {
        let s = &good[w.rank()];
        let be = B::new();
        let z = Tensor::from_f64(&be, &s.x, &[s.labels.len(), 4]);
        ReduNet::build_sharded(&z, &s.labels, config(4, 2), &Record::default(), LayerProgress::default(), w)
            .err()
            .map(|e| e.to_string())
    });
    assert_eq!(errs[0], errs[1]);
    assert!(errs[0].as_deref().is_some_and(|e| e.contains("class 3 has no training samples")), "{errs:?}");
}

/// The invariant ReduNet (1-D and 2-D signals) from uneven shards with a
/// class missing from one: operators (packed, every layer), rates and
/// features equal the construction on the union to 1e-10 in f64, and the
/// operators are bit-identical on every rank.
#[test]
fn sharded_invariant_construction_equals_the_construction_on_the_union() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    for (dims, cuts) in [(vec![6usize], vec![3usize, 11]), (vec![3, 4], vec![5, 6])] {
        let mut rng = StdRng::seed_from_u64(dims.len() as u64);
        let (m, c, k) = (16usize, 3usize, 3usize);
        let per: usize = c * dims.iter().product::<usize>();
        let x: Vec<f64> = (0..m * per).map(|_| rng.random::<f64>() - 0.5).collect();
        // class 2 only in the first shard
        let labels: Vec<usize> = (0..m).map(|i| if i < 3 { 2 } else { i % 2 }).collect();
        let shape = |n: usize| [vec![n, c], dims.clone()].concat();
        let config = InvariantConfig { layers: 3, eta: 0.5, eps_sq: 0.5, lambda: 50.0, ..Default::default() };
        let be = B::new();
        let whole = InvariantReduNet::construct(&Tensor::from_f64(&be, &x, &shape(m)), &labels, k, &config)
            .expect("whole construction");
        let bounds = [0, cuts[0], cuts[1], m];
        let runs = ThreadWorld::run(3, |w| {
            let (lo, hi) = (bounds[w.rank()], bounds[w.rank() + 1]);
            let be = B::new();
            let xs = Tensor::from_f64(&be, &x[lo * per..hi * per], &shape(hi - lo));
            let out =
                InvariantReduNet::construct_sharded(&xs, &labels[lo..hi], k, &config, w).expect("sharded");
            let ops: Vec<Vec<f64>> = out.network.layers().iter().map(|l| l.packed().to_vec()).collect();
            let rates: Vec<f64> = out
                .record
                .rates_true
                .iter()
                .chain(&out.record.rates_code)
                .flat_map(|r| [r.r, r.rc, r.delta_r])
                .collect();
            (ops, rates, out.features.to_vec(), out.record.yhat.clone(), out.network.gamma().to_vec())
        });
        let want_rates: Vec<f64> = whole
            .record
            .rates_true
            .iter()
            .chain(&whole.record.rates_code)
            .flat_map(|r| [r.r, r.rc, r.delta_r])
            .collect();
        let feats = whole.features.to_vec();
        for (r, (ops, rates, f, yhat, gamma)) in runs.iter().enumerate() {
            let (lo, hi) = (bounds[r], bounds[r + 1]);
            assert_eq!(ops, &runs[0].0, "{dims:?} rank {r}: operators differ from rank 0's");
            for (l, (a, b)) in ops.iter().zip(whole.network.layers()).enumerate() {
                let err = max_abs_diff(a, &b.packed().to_vec());
                assert!(err <= TOL, "{dims:?} rank {r} layer {l}: operators off by {err:e}");
            }
            assert!(max_abs_diff(gamma, whole.network.gamma()) <= 1e-15);
            let err = max_abs_diff(rates, &want_rates);
            assert!(err <= TOL, "{dims:?} rank {r}: rates off by {err:e}");
            let err = max_abs_diff(f, &feats[lo * per..hi * per]);
            assert!(err <= TOL, "{dims:?} rank {r}: features off by {err:e}");
            for (l, y) in yhat.iter().enumerate() {
                assert_eq!(y.as_slice(), &whole.record.yhat[l][lo..hi], "{dims:?} rank {r} layer {l}: yhat");
            }
        }
        // a shard with another signal length: every rank stops, naming rank 1
        let errs = ThreadWorld::run(2, |w| {
            let be = B::new();
            let n = 4;
            let mut sh = shape(n);
            if w.rank() == 1 {
                *sh.last_mut().expect("a length") += 1;
            }
            let len: usize = sh.iter().product();
            let xs = Tensor::from_f64(&be, &x[..len], &sh);
            InvariantReduNet::construct_sharded(&xs, &labels[3..3 + n], 2, &config, w)
                .err()
                .map(|e| e.to_string())
        });
        assert_eq!(errs[0], errs[1]);
        assert!(errs[0].as_deref().is_some_and(|e| e.contains("rank 1 of 2")), "{errs:?}");
    }
}
