//! ReduNet (4.1.13) reproduces every tensor of the redunet_vector fixtures (authors' NumPy code, float64), with both engines.
//!
//! Shapes come from the tensors and hyperparameters from the file's metadata,
//! so the same tests run on the hidden set (`RATE_FIXTURES`).
use backend_cpu::CpuBackend;
use models::fixtures::{self, max_abs_diff};
use models::redunet::{Engine, LayerSet, Record, ReduNet, ReduNetConfig};
use rate_core::Tensor;

type B = CpuBackend<f64>;

/// Forward values: the fixture README's suggested tolerance is 1e-10; rates
/// and operators are compared at the same level.
const TOL: f64 = 1e-10;

thread_local! {
    /// Largest error seen by `close` in this test (printed with `--nocapture`).
    static WORST: std::cell::Cell<(f64, &'static str)> = const { std::cell::Cell::new((0.0, "")) };
}

fn close(name: &str, engine: Engine, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{engine:?} {name}: {} values, fixture has {}", got.len(), want.len());
    let err = max_abs_diff(got, want);
    assert!(err <= TOL, "{engine:?} {name}: max abs error {err:e} > {TOL:e}");
    if err > WORST.get().0 {
        WORST.set((err, if name.starts_with('Z') { "features" } else { "rates/operators" }));
    }
}

fn labels_equal(name: &str, engine: Engine, got: &[u32], want: &[usize]) {
    let got: Vec<usize> = got.iter().map(|&y| y as usize).collect();
    assert_eq!(got, want, "{engine:?} {name}: labels differ");
}

fn check_fixture(name: &str) {
    let be = B::new();
    let f = fixtures::load(name).unwrap_or_else(|e| panic!("{e}"));
    let config = f.redunet_config().expect("ReduNet metadata");
    let (layers, k) = (config.depth.max_layers(), config.num_classes);
    let x = f.tensor::<B>(&be, "X").expect("X");
    let y = f.labels("y").expect("y");
    let x_test = f.tensor::<B>(&be, "X_test").expect("X_test");
    let (m, d) = (x.dim(0), x.dim(1));
    let n_test = x_test.dim(0);
    let zl = f.get("Z_layers").expect("Z_layers");
    assert_eq!(zl.shape, vec![layers + 1, m, d], "Z_layers shape against metadata `layers`");

    for engine in [Engine::Fused, Engine::Tensor] {
        let mut cfg = config.clone();
        cfg.engine = engine;
        let record = Record { rates: true, yhat: true, features: LayerSet::All };
        let (net, tr) = ReduNet::build_with(&x, &y, cfg, &record).expect("build");
        assert_eq!(net.depth(), layers);

        // Features at every layer, layer 5 and the final output.
        for l in 0..=layers {
            let got = tr.feature(l).expect("recorded layer").to_vec();
            close(&format!("Z_layers[{l}]"), engine, &got, &zl.data[l * m * d..(l + 1) * m * d]);
        }
        let z5 = f.get("Z_layer5").expect("Z_layer5");
        close("Z_layer5", engine, &tr.feature(5).expect("layer 5").to_vec(), &z5.data);
        close("Z_final", engine, &tr.output.to_vec(), &f.get("Z_final").expect("Z_final").data);

        // Rates with the true labels (L+1) and as the code logs them (L).
        let pick = |v: &[rate_core::Rates], which: usize| -> Vec<f64> {
            v.iter().map(|r| [r.r, r.rc, r.delta_r][which]).collect()
        };
        for (which, key) in ["R", "Rc", "delta_R"].iter().enumerate() {
            let t = format!("{key}_true");
            close(&t, engine, &pick(&tr.rates_true, which), &f.get(&t).expect("rates").data);
            let c = format!("{key}_code");
            close(&c, engine, &pick(&tr.rates_code, which), &f.get(&c).expect("rates").data);
        }

        // yhat inside every layer, exactly.
        let yh = f.labels("yhat_layers").expect("yhat_layers");
        assert_eq!(tr.yhat_layers(), layers);
        for l in 0..layers {
            labels_equal(
                &format!("yhat_layers[{l}]"),
                engine,
                tr.yhat(l).expect("yhat"),
                &yh[l * m..(l + 1) * m],
            );
        }

        // Operators and class weights.
        close("gam", engine, net.gamma(), &f.get("gam").expect("gam").data);
        close("E_layer0", engine, &net.layers()[0].expansion().to_vec(), &f.get("E_layer0").expect("E").data);
        close(
            "C_layer0",
            engine,
            &net.layers()[0].compression().to_vec(),
            &f.get("C_layer0").expect("C").data,
        );
        let el = f.get("E_layers").expect("E_layers");
        let cl = f.get("C_layers").expect("C_layers");
        assert_eq!(el.shape, vec![layers, d, d]);
        assert_eq!(cl.shape, vec![layers, k, d, d]);
        for (l, layer) in net.layers().iter().enumerate() {
            assert_eq!(layer.gamma(), net.gamma());
            close(
                &format!("E_layers[{l}]"),
                engine,
                &layer.expansion().to_vec(),
                &el.data[l * d * d..(l + 1) * d * d],
            );
            let ck = k * d * d;
            close(
                &format!("C_layers[{l}]"),
                engine,
                &layer.compression().to_vec(),
                &cl.data[l * ck..(l + 1) * ck],
            );
        }

        // Held-out data through the frozen layers (no labels).
        let rec = Record { rates: false, yhat: true, features: LayerSet::Only(vec![5]) };
        let te = net.transform_with(&x_test, &rec).expect("transform");
        close(
            "Z_test_layer5",
            engine,
            &te.feature(5).expect("layer 5").to_vec(),
            &f.get("Z_test_layer5").expect("t5").data,
        );
        close("Z_test_final", engine, &te.output.to_vec(), &f.get("Z_test_final").expect("tf").data);
        let out_only = net.transform(&x_test).expect("transform");
        assert_eq!(out_only.to_vec(), te.output.to_vec(), "{engine:?}: transform and transform_with differ");
        let yt = f.labels("yhat_test_layers").expect("yhat_test_layers");
        for l in 0..layers {
            labels_equal(
                &format!("yhat_test_layers[{l}]"),
                engine,
                te.yhat(l).expect("yhat"),
                &yt[l * n_test..(l + 1) * n_test],
            );
        }
        let (worst, what) = WORST.get();
        eprintln!("{name} {engine:?}: largest abs error {worst:e} ({what})");
        WORST.set((0.0, ""));
    }
}

#[test]
fn parity_redunet_vector() {
    check_fixture("redunet_vector");
}

#[test]
fn parity_redunet_vector_soft() {
    check_fixture("redunet_vector_soft");
}

/// The fused engine and the tensor reference agree on random data with
/// unequal classes, a class smaller than `d` (the Woodbury route of the
/// reference), soft memberships and several batches.
#[test]
fn fused_engine_equals_tensor_reference() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let be = B::new();
    let mut rng = StdRng::seed_from_u64(7);
    let (m, d, k) = (83, 6, 4);
    let labels: Vec<usize> = (0..m).map(|i| if i < 3 { 3 } else { i % 3 }).collect();
    let x: Vec<f64> = (0..m * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let x = Tensor::from_f64(&be, &x, &[m, d]);
    let record = Record { rates: true, yhat: true, features: LayerSet::All };
    let mut outs = Vec::new();
    for engine in [Engine::Fused, Engine::Tensor] {
        let mut cfg = ReduNetConfig::new(k, 12);
        cfg.lambda = 20.0;
        cfg.batch_size = 16;
        cfg.engine = engine;
        outs.push(ReduNet::build_with(&x, &labels, cfg, &record).expect("build"));
    }
    let (a, b) = (&outs[0], &outs[1]);
    for l in 0..=12 {
        let e = max_abs_diff(&a.1.feature(l).expect("f").to_vec(), &b.1.feature(l).expect("f").to_vec());
        assert!(e < 1e-12, "layer {l}: engines differ by {e:e}");
    }
    for (ra, rb) in
        a.1.rates_true.iter().zip(&b.1.rates_true).chain(a.1.rates_code.iter().zip(&b.1.rates_code))
    {
        assert!((ra.r - rb.r).abs() < 1e-12 && (ra.rc - rb.rc).abs() < 1e-12, "{ra:?} vs {rb:?}");
    }
    for l in 0..12 {
        assert_eq!(a.1.yhat(l), b.1.yhat(l), "yhat of layer {l}");
        let e = max_abs_diff(&a.0.layers()[l].operators().to_vec(), &b.0.layers()[l].operators().to_vec());
        assert!(e < 1e-12, "operators of layer {l} differ by {e:e}");
    }
    // And on new data through either engine.
    let t: Vec<f64> = (0..40 * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let t = Tensor::from_f64(&be, &t, &[40, d]);
    let mut net = a.0.clone();
    let fused = net.transform(&t).expect("fused").to_vec();
    net.set_engine(Engine::Tensor);
    let reference = net.transform(&t).expect("tensor").to_vec();
    assert!(max_abs_diff(&fused, &reference) < 1e-12);
}
