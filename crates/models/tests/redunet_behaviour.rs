//! ReduNet beyond the fixtures: the chapter's Figure 4.5 outcome (orthogonal classes, test accuracy), f32 against f64, depth from the objective, configuration errors, and save/load with corrupt files refused.
use backend_cpu::CpuBackend;
use models::classify::{accuracy, knn_predict, NearestSubspace};
use models::fixtures::max_abs_diff;
use models::io::{write_safetensors, OutArray};
use models::redunet::{gaussians, manifest_path, Depth, Engine, Record, ReduNet, ReduNetConfig};
use rate_core::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

type B64 = CpuBackend<f64>;
type B32 = CpuBackend<f32>;

/// Unit-norm mean direction of each class's rows.
fn class_directions(z: &[f64], labels: &[usize], k: usize, d: usize) -> Vec<Vec<f64>> {
    let mut mean = vec![vec![0.0; d]; k];
    for (i, &l) in labels.iter().enumerate() {
        for c in 0..d {
            mean[l][c] += z[i * d + c];
        }
    }
    for v in &mut mean {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }
    mean
}

/// The chapter's example (Figure 4.5) with fewer samples and layers (the
/// chapter: "a couple of hundred layers is sufficient"): 3 Gaussians in R^3,
/// sigma 0.1, eta 0.5, eps_sq 0.1, lambda 500.
#[test]
fn figure_4_5_classes_become_orthogonal_and_separable() {
    let be = B64::new();
    let (k, d, layers) = (3, 3, 300);
    let train = gaussians(k, d, 150, 0.1, 11).expect("train");
    let test = gaussians(k, d, 100, 0.1, 12).expect("test");
    let (net, trace) =
        ReduNet::build(&train.tensor(&be), &train.labels, ReduNetConfig::new(k, layers)).expect("build");

    // The rate reduction rises to its value for k orthogonal lines (each class
    // collapsed to one direction): sum_j 1/2 log(1 + alpha m_j) - gamma_j 1/2 log(1 + alpha_j m_j).
    let dr: Vec<f64> = trace.rates_true.iter().map(|r| r.delta_r).collect();
    assert_eq!(dr.len(), layers + 1);
    let (m, mj, eps_sq) = (450.0, 150.0, 0.1);
    let (alpha, alpha_j) = (d as f64 / (m * eps_sq), d as f64 / (mj * eps_sq));
    let ideal = 3.0 * (0.5 * (1.0 + alpha * mj).ln() - mj / m * 0.5 * (1.0 + alpha_j * mj).ln());
    assert!(dr[0] < ideal - 0.1, "input already at the optimum? {} vs {ideal}", dr[0]);
    assert!((dr[layers] - ideal).abs() < 5e-3, "delta_R from {} to {}, optimum {ideal}", dr[0], dr[layers]);

    // Classes collapse to directions ~90 degrees apart, on training and test data.
    let z_test = net.transform(&test.tensor(&be)).expect("transform");
    for (name, z, labels) in
        [("train", trace.output.to_vec(), &train.labels), ("test", z_test.to_vec(), &test.labels)]
    {
        let dirs = class_directions(&z, labels, k, d);
        for a in 0..k {
            for b in a + 1..k {
                let cos: f64 = (0..d).map(|c| dirs[a][c] * dirs[b][c]).sum();
                let deg = cos.clamp(-1.0, 1.0).acos().to_degrees();
                assert!((deg - 90.0).abs() < 3.0, "{name}: classes {a} and {b} at {deg:.2} degrees");
            }
        }
    }

    // New samples are classified from the features alone.
    let ns = NearestSubspace::fit(&trace.output, &train.labels, k, 1).expect("fit");
    let acc_ns = accuracy(&ns.predict(&z_test).expect("predict"), &test.labels).expect("acc");
    let acc_knn =
        accuracy(&knn_predict(&trace.output, &train.labels, &z_test, 5).expect("knn"), &test.labels)
            .expect("acc");
    assert!(acc_ns >= 0.99, "nearest-subspace test accuracy {acc_ns}");
    assert!(acc_knn >= 0.99, "kNN test accuracy {acc_knn}");
}

#[test]
fn f32_agrees_with_f64() {
    let (k, d, layers) = (3, 3, 30);
    let data = gaussians(k, d, 60, 0.1, 5).expect("data");
    let test = gaussians(k, d, 20, 0.1, 6).expect("test");
    let mut outs = Vec::new();
    for engine in [Engine::Fused, Engine::Tensor] {
        let mut cfg = ReduNetConfig::new(k, layers);
        cfg.engine = engine;
        cfg.lambda = 5.0; // soft memberships, so that the softmax really matters
        let (n64, t64) = ReduNet::build(&data.tensor(&B64::new()), &data.labels, cfg.clone()).expect("f64");
        let (n32, t32) = ReduNet::build(&data.tensor(&B32::new()), &data.labels, cfg).expect("f32");
        let e = max_abs_diff(&t64.output.to_f64_vec(), &t32.output.to_f64_vec());
        assert!(e < 1e-4, "{engine:?}: f32 output differs from f64 by {e:e}");
        for (a, b) in t64.rates_true.iter().zip(&t32.rates_true) {
            assert!((a.delta_r - b.delta_r).abs() < 1e-4 * a.delta_r.abs().max(1.0), "{a:?} vs {b:?}");
        }
        let y64 = n64.transform(&test.tensor(&B64::new())).expect("t64").to_f64_vec();
        let y32 = n32.transform(&test.tensor(&B32::new())).expect("t32").to_f64_vec();
        let e = max_abs_diff(&y64, &y32);
        assert!(e < 1e-4, "{engine:?}: f32 transform differs from f64 by {e:e}");
        outs.push(t32.output.to_f64_vec());
    }
    // And the two f32 engines agree with each other.
    assert!(max_abs_diff(&outs[0], &outs[1]) < 1e-4);
}

#[test]
fn adaptive_depth_stops_when_the_gain_is_small() {
    let be = B64::new();
    let data = gaussians(3, 3, 40, 0.1, 3).expect("data");
    let x = data.tensor(&be);
    let mut cfg = ReduNetConfig::new(3, 1);
    cfg.depth = Depth::Adaptive { max_layers: 400, window: 10, min_gain: 1e-3 };
    let (net, trace) = ReduNet::build(&x, &data.labels, cfg.clone()).expect("build");
    let l = net.depth();
    assert!((10..400).contains(&l), "stopped after {l} layers");
    let dr: Vec<f64> = trace.rates_true.iter().map(|r| r.delta_r).collect();
    assert_eq!(dr.len(), l + 1);
    assert!(dr[l] - dr[l - 10] < 1e-3, "stopped although the gain was {}", dr[l] - dr[l - 10]);
    for j in 10..l {
        assert!(dr[j] - dr[j - 10] >= 1e-3, "should have stopped after layer {j}");
    }
    // Without rates recorded the rule still applies, and the trace stays empty.
    let (net2, trace2) =
        ReduNet::build_with(&x, &data.labels, cfg.clone(), &Record::output_only()).expect("build");
    assert_eq!(net2.depth(), l);
    assert!(trace2.rates_true.is_empty() && trace2.yhat_layers() == 0);
    // A gain that is never reached runs to max_layers.
    cfg.depth = Depth::Adaptive { max_layers: 25, window: 5, min_gain: -1e9 };
    assert_eq!(ReduNet::build(&x, &data.labels, cfg).expect("build").0.depth(), 25);
}

#[test]
fn invalid_configurations_and_inputs_are_refused() {
    let be = B64::new();
    let data = gaussians(3, 3, 10, 0.1, 1).expect("data");
    let x = data.tensor(&be);
    let err = |cfg: ReduNetConfig| ReduNet::build(&x, &data.labels, cfg).expect_err("must fail").to_string();
    let base = ReduNetConfig::new(3, 5);
    assert!(err(ReduNetConfig { eta: 0.0, ..base.clone() }).contains("`eta` = 0"));
    assert!(err(ReduNetConfig { eps_sq: -1.0, ..base.clone() }).contains("`eps_sq` = -1"));
    assert!(err(ReduNetConfig { lambda: f64::NAN, ..base.clone() }).contains("`lambda` = NaN"));
    assert!(err(ReduNetConfig { num_classes: 0, ..base.clone() }).contains("`num_classes` = 0"));
    assert!(err(ReduNetConfig { batch_size: 0, ..base.clone() }).contains("`batch_size` = 0"));
    assert!(err(ReduNetConfig::new(3, 0)).contains("`depth.layers` = 0"));
    let adaptive = Depth::Adaptive { max_layers: 5, window: 6, min_gain: 0.0 };
    assert!(err(ReduNetConfig { depth: adaptive, ..base.clone() }).contains("`depth.window` = 6"));
    // Labels: a class with no samples, a label out of range, a length mismatch.
    assert!(err(ReduNetConfig { num_classes: 4, ..base.clone() }).contains("class 3 has no training samples"));
    assert!(err(ReduNetConfig { num_classes: 2, ..base.clone() }).contains("is not below num_classes = 2"));
    let short = ReduNet::build(&x, &data.labels[1..], base.clone()).expect_err("labels").to_string();
    assert!(short.contains("29 labels for 30 samples"), "{short}");
    // Non-finite features.
    let mut bad = data.x.clone();
    bad[4] = f64::INFINITY;
    let bad = Tensor::from_f64(&be, &bad, &[30, 3]);
    assert!(ReduNet::build(&bad, &data.labels, base.clone()).is_err());
    // Applying to the wrong dimension.
    let (net, _) = ReduNet::build(&x, &data.labels, base).expect("build");
    let wide = Tensor::from_f64(&be, &[1.0; 8], &[2, 4]);
    assert!(net.transform(&wide).expect_err("dims").to_string().contains("built for 3 features"));
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redunet_tests_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn save_load_roundtrip_and_corrupt_files() {
    let be = B64::new();
    let data = gaussians(3, 3, 30, 0.1, 9).expect("data");
    let test = gaussians(3, 3, 10, 0.1, 10).expect("test");
    let mut cfg = ReduNetConfig::new(3, 15);
    cfg.lambda = 50.0;
    let (net, _) = ReduNet::build(&data.tensor(&be), &data.labels, cfg).expect("build");
    let path = temp_path("net.safetensors");
    net.save(&path).expect("save");
    let back = ReduNet::<B64>::load(&be, &path).expect("load");
    assert_eq!(back.config(), net.config());
    assert_eq!(back.gamma(), net.gamma());
    assert_eq!(back.depth(), net.depth());
    for (a, b) in net.layers().iter().zip(back.layers()) {
        assert_eq!(a.operators().to_vec(), b.operators().to_vec());
    }
    let xt = test.tensor(&be);
    assert_eq!(net.transform(&xt).expect("t").to_vec(), back.transform(&xt).expect("t").to_vec());
    // Loading into f32 works too (values rounded once).
    let b32 = ReduNet::<B32>::load(&B32::new(), &path).expect("load f32");
    let e = max_abs_diff(
        &b32.transform(&test.tensor(&B32::new())).expect("t").to_f64_vec(),
        &net.transform(&xt).expect("t").to_vec(),
    );
    assert!(e < 1e-4);

    // Truncated operators file.
    let bytes = std::fs::read(&path).expect("read");
    let trunc = temp_path("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() - 100]).expect("write");
    std::fs::copy(manifest_path(&path), manifest_path(&trunc)).expect("copy");
    let e = ReduNet::<B64>::load(&be, &trunc).expect_err("truncated").to_string();
    assert!(e.contains("trunc.safetensors") && e.contains("not a valid safetensors file"), "{e}");

    // Wrong shape: one layer fewer than the manifest says.
    let shape = temp_path("shape.safetensors");
    let (l, d, k) = (net.depth(), 3, 3);
    let mut arrays = BTreeMap::new();
    arrays.insert("E_layers".to_string(), OutArray::f64(&[l - 1, d, d], vec![0.1; (l - 1) * d * d]));
    arrays.insert("C_layers".to_string(), OutArray::f64(&[l, k, d, d], vec![0.1; l * k * d * d]));
    arrays.insert("gam".to_string(), OutArray::f64(&[k], vec![1.0 / 3.0; 3]));
    let meta: BTreeMap<String, String> = [("format_version".to_string(), "1".to_string())].into();
    write_safetensors(&shape, &arrays, &meta).expect("write");
    std::fs::copy(manifest_path(&path), manifest_path(&shape)).expect("copy");
    let e = ReduNet::<B64>::load(&be, &shape).expect_err("shape").to_string();
    assert!(e.contains("`E_layers` has shape [14, 3, 3]") && e.contains("[15, 3, 3]"), "{e}");

    // Wrong version in the manifest.
    let version = temp_path("version.safetensors");
    std::fs::copy(&path, &version).expect("copy");
    let text = std::fs::read_to_string(manifest_path(&path)).expect("manifest");
    assert!(text.contains("\"format_version\": 1"));
    std::fs::write(manifest_path(&version), text.replace("\"format_version\": 1", "\"format_version\": 2"))
        .expect("write");
    let e = ReduNet::<B64>::load(&be, &version).expect_err("version").to_string();
    assert!(e.contains("format_version 2 is not supported"), "{e}");

    // A manifest that is not JSON, and a missing manifest.
    std::fs::write(manifest_path(&version), "{ not json").expect("write");
    assert!(ReduNet::<B64>::load(&be, &version)
        .expect_err("json")
        .to_string()
        .contains("not a ReduNet manifest"));
    std::fs::remove_file(manifest_path(&version)).expect("rm");
    assert!(ReduNet::<B64>::load(&be, &version).expect_err("missing").to_string().contains("version.json"));
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

/// The fused engine sums covariances over fixed chunks of samples, so the
/// network does not depend on how many threads ran it.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let data = gaussians(3, 3, 200, 0.1, 21).expect("data");
    let test = gaussians(3, 3, 50, 0.1, 22).expect("test");
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        pool.install(|| {
            let be = B64::new();
            let (net, trace) =
                ReduNet::build(&data.tensor(&be), &data.labels, ReduNetConfig::new(3, 40)).expect("build");
            let out = net.transform(&test.tensor(&be)).expect("transform").to_vec();
            (trace.output.to_vec(), trace.rates_true, out)
        })
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
}

/// Largest entrywise difference relative to the largest magnitude.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-300f64, |s, v| s.max(v.abs()));
    max_abs_diff(a, b) / scale
}

fn rates_flat(r: &[rate_core::Rates]) -> Vec<f64> {
    r.iter().flat_map(|x| [x.r, x.rc, x.delta_r]).collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Issue 17: the reference engine streams the samples in chunks (every chunk
    /// inside one class). Neither the chunk size nor the input order changes the
    /// operators, the rates (true and as logged), `yhat` or the features beyond
    /// rounding, whether classes have more samples than dimensions (Gram route)
    /// or fewer (rows route), and with memberships that disagree with the labels.
    #[test]
    fn chunk_size_and_sample_order_change_nothing_beyond_rounding(
        seed in 0u64..10_000,
        k in 2usize..4,
        extra in 0usize..5,
        per_class in 3usize..14,
        batch in 1usize..40,
    ) {
        let be = B64::new();
        let d = k + extra;
        let data = gaussians(k, d, per_class, 0.35, seed).expect("data");
        let test = gaussians(k, d, 7, 0.35, seed + 1).expect("test");
        let mut cfg = ReduNetConfig::new(k, 6);
        cfg.engine = Engine::Tensor;
        cfg.lambda = 10.0;
        cfg.batch_size = 1 << 20;
        let x = data.tensor(&be);
        let record = Record { rates: true, yhat: true, features: models::redunet::LayerSet::Only(vec![0, 3]) };
        let (whole, tw) = ReduNet::build_with(&x, &data.labels, cfg.clone(), &record).expect("whole");
        cfg.batch_size = batch;
        let (chunked, tc) = ReduNet::build_with(&x, &data.labels, cfg.clone(), &record).expect("chunked");
        let tol = 1e-9;
        proptest::prop_assert!(rel_diff(&tc.output.to_vec(), &tw.output.to_vec()) < tol);
        for (a, b) in chunked.layers().iter().zip(whole.layers()) {
            proptest::prop_assert!(rel_diff(&a.operators().to_vec(), &b.operators().to_vec()) < tol);
        }
        proptest::prop_assert!(rel_diff(&rates_flat(&tc.rates_true), &rates_flat(&tw.rates_true)) < tol);
        proptest::prop_assert!(rel_diff(&rates_flat(&tc.rates_code), &rates_flat(&tw.rates_code)) < tol);
        for l in 0..tw.yhat_layers() {
            proptest::prop_assert_eq!(tc.yhat(l), tw.yhat(l));
        }
        for l in [0, 3] {
            let (a, b) = (tc.feature(l).expect("snapshot"), tw.feature(l).expect("snapshot"));
            proptest::prop_assert!(rel_diff(&a.to_vec(), &b.to_vec()) < tol);
        }
        // the transform chunks the same way
        let xt = test.tensor(&be);
        let (ya, yb) = (chunked.transform(&xt).expect("t"), whole.transform(&xt).expect("t"));
        proptest::prop_assert!(rel_diff(&ya.to_vec(), &yb.to_vec()) < tol);

        // reversed sample order: the same network, the output rows reversed
        let rev: Vec<usize> = (0..data.labels.len()).rev().collect();
        let labels_rev: Vec<usize> = rev.iter().map(|&i| data.labels[i]).collect();
        let (net_rev, tr) =
            ReduNet::build_with(&x.index_select(0, &rev), &labels_rev, cfg, &record).expect("reversed");
        proptest::prop_assert!(
            rel_diff(&tr.output.index_select(0, &rev).to_vec(), &tw.output.to_vec()) < tol
        );
        for (a, b) in net_rev.layers().iter().zip(whole.layers()) {
            proptest::prop_assert!(rel_diff(&a.operators().to_vec(), &b.operators().to_vec()) < tol);
        }
        let yr = tr.yhat(2).expect("yhat");
        let back: Vec<u32> = rev.iter().map(|&i| yr[i]).collect();
        proptest::prop_assert_eq!(Some(back.as_slice()), tw.yhat(2));
    }
}

/// Issue 17: a model built in f32 is saved in f32 (half the bytes of f64), one
/// layer at a time, and loads back to the same operators and outputs.
#[test]
fn f32_models_are_saved_in_f32_and_load_back_exactly() {
    let be = B32::new();
    let data = gaussians(3, 5, 20, 0.2, 4).expect("data");
    let mut cfg = ReduNetConfig::new(3, 4);
    cfg.engine = Engine::Tensor;
    let (net, _) = ReduNet::build(&data.tensor(&be), &data.labels, cfg).expect("build");
    let path = temp_path("net32.safetensors");
    net.save(&path).expect("save");
    let file = models::io::TensorFile::read(&path).expect("read");
    for name in ["E_layers", "C_layers"] {
        assert_eq!(format!("{:?}", file.get(name).expect(name).dtype), "F32", "{name}");
    }
    assert_eq!(format!("{:?}", file.get("gam").expect("gam").dtype), "F64");
    let bytes = std::fs::metadata(&path).expect("size").len() as usize;
    assert!(bytes < 4 * 4 * 5 * 5 * 4 + 2048, "{bytes} bytes for 4 x 4 matrices of 5 x 5 in f32");
    let back = ReduNet::<B32>::load(&be, &path).expect("load");
    for (a, b) in net.layers().iter().zip(back.layers()) {
        assert_eq!(a.operators().to_vec(), b.operators().to_vec());
    }
    let xt = data.tensor(&be);
    assert_eq!(net.transform(&xt).expect("t").to_vec(), back.transform(&xt).expect("t").to_vec());
}
