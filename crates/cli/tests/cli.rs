//! End-to-end runs of the `rate` binary: the experiments write metrics.json and PNG plots, and errors exit with status 2 and one line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn rate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rate"))
}

/// Runs `rate ARGS OUT` and asserts that it succeeded (stderr in the message otherwise).
fn run_ok(args: &[&str], out: &Path) -> std::process::Output {
    let st = rate().args(args).arg(out).output().expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    st
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rate-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn is_png(p: &Path) -> bool {
    std::fs::read(p).map(|b| b.starts_with(&[0x89, b'P', b'N', b'G'])).unwrap_or(false)
}

fn metrics(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json written");
    serde_json::from_str(&text).expect("metrics.json is JSON")
}

#[test]
fn gaussians_separates_the_classes_into_orthogonal_directions() {
    let out = tmp("gaussians");
    run_ok(
        &["redunet", "gaussians", "--per-class", "100", "--test-per-class", "50", "--layers", "300", "--out"],
        &out,
    );
    let m = metrics(&out);
    assert!(m["test_accuracy"].as_f64().unwrap() >= 0.99, "{}", m["test_accuracy"]);
    let angles = m["class_angles_deg"].as_array().unwrap();
    for (i, row) in angles.iter().enumerate() {
        for (j, a) in row.as_array().unwrap().iter().enumerate() {
            if i != j {
                let a = a.as_f64().unwrap();
                assert!((a - 90.0).abs() < 3.0, "angle {i},{j} = {a}");
            }
        }
    }
    let dr = m["rates_true"]["delta_R"].as_array().unwrap();
    let (first, last) = (dr[0].as_f64().unwrap(), dr[dr.len() - 1].as_f64().unwrap());
    assert!(last > first + 0.1, "rate reduction did not rise: {first} -> {last}");
    assert!(m["timings"]["build_s"].as_f64().is_some());
    for p in ["rates.png", "features_before.png", "features_after.png", "gram_after.png"] {
        assert!(is_png(&out.join(p)), "{p} missing");
    }
}

#[test]
fn fit_then_transform_on_embedded_digits() {
    let out = tmp("fit");
    let st = rate()
        .args(["--json", "redunet", "fit", "--data", "digits", "--per-class", "30", "--layers", "5", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&st.stdout).expect("--json prints JSON");
    assert!(summary["nearest_subspace_features"].as_f64().unwrap() > 0.8);
    let m = metrics(&out);
    assert!(m["test_accuracy"]["nearest_subspace_raw"].as_f64().is_some());
    let z = out.join("z.safetensors");
    let st = rate()
        .args(["redunet", "transform", "--model"])
        .arg(&out)
        .args(["--data", "digits", "--out"])
        .arg(&z)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let f = models::io::TensorFile::read(&z).expect("readable");
    assert_eq!(f.get("Z").unwrap().shape, vec![1797, 64]);
    assert_eq!(f.get("yhat").unwrap().shape, vec![1797]);
}

#[test]
fn fit_with_pca_saves_the_projection_and_transform_applies_it() {
    let fit = |pca: &str, out: &std::path::Path| {
        rate()
            .args(["--json", "redunet", "fit", "--data", "digits", "--per-class", "30", "--layers", "4"])
            .args(["--pca", pca, "--out"])
            .arg(out)
            .output()
            .expect("runs")
    };
    let out = tmp("fit-pca");
    let st = fit("12", &out);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let m = metrics(&out);
    assert_eq!(m["features"], 12);
    assert_eq!(m["input_features"], 64);
    let ev = m["pca"]["explained_variance"].as_f64().unwrap();
    assert!(ev > 0.5 && ev < 1.0, "explained variance {ev}");
    assert!(m["test_accuracy"]["nearest_subspace_features"].as_f64().unwrap() > 0.7);
    assert!(m["peak_rss_bytes"].as_u64().is_some());
    assert!(out.join("pca.safetensors").exists());
    let z = out.join("z.safetensors");
    let st = rate()
        .args(["redunet", "transform", "--model"])
        .arg(&out)
        .args(["--data", "digits", "--out"])
        .arg(&z)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(models::io::TensorFile::read(&z).unwrap().get("Z").unwrap().shape, vec![1797, 12]);
    // more components than features is refused, naming the flag, and leaves no --out behind
    let bad = tmp("fit-pca-bad");
    let st = fit("65", &bad);
    assert!(!st.status.success());
    assert!(
        String::from_utf8_lossy(&st.stderr).contains("--pca 65"),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(!bad.exists());
}

#[test]
fn errors_exit_with_status_2_and_one_line_naming_the_problem() {
    let dir = tmp("errors");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("ragged.csv");
    std::fs::write(&bad, "1,2,0\n3,1\n").unwrap();
    let st =
        rate().args(["redunet", "fit", "--data"]).arg(&bad).arg("--out").arg(dir.join("o")).output().unwrap();
    assert_eq!(st.status.code(), Some(2));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("ragged.csv") && err.contains("line 2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let st = rate().args(["redunet", "gaussians", "--eta=-1", "--out"]).arg(dir.join("g")).output().unwrap();
    assert_eq!(st.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&st.stderr).contains("eta"));
    let st = rate()
        .args(["redunet", "transform", "--model"])
        .arg(dir.join("nothing"))
        .args(["--data", "digits", "--out"])
        .arg(dir.join("z.st"))
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2));
}

#[test]
fn rotation_features_are_equivariant_and_the_fast_shift_path_matches_layer_by_layer() {
    let out = tmp("rotation");
    run_ok(
        &[
            "redunet",
            "rotation",
            "--data",
            "digits",
            "--train-per-class",
            "4",
            "--test-per-class",
            "2",
            "--radii",
            "3",
            "--angles",
            "24",
            "--kernels",
            "4",
            "--kernel-size",
            "3",
            "--layers",
            "4",
            "--rotations",
            "6",
            "--rotation-step",
            "4",
            "--equivariance-samples",
            "0",
            "--out",
        ],
        &out,
    );
    let m = metrics(&out);
    let inv = &m["invariance"];
    assert_eq!(inv["equivariance_checked_images"].as_u64(), Some(20));
    assert!(inv["equivariance_error"].as_f64().unwrap() < 1e-9, "{inv}");
    assert!(inv["shifted_path_vs_layer_by_layer"].as_f64().unwrap() < 1e-9, "{inv}");
    let share = inv["consistent_prediction_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{share}");
    let acc = &m["test_accuracy"];
    for key in ["nearest_subspace_features", "upright_nearest_subspace_polar_input"] {
        let a = acc[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{key} = {a}");
    }
    assert_eq!(m["delta_R_train"].as_array().unwrap().len(), 5);
    assert_eq!(m["delta_R_test"].as_array().unwrap().len(), 5);
    for p in ["rates.png", "cosine_inputs.png", "cosine_features.png"] {
        assert!(is_png(&out.join(p)), "{p} missing");
    }
}

/// `--backend wgpu` with an adapter name that matches nothing: one line naming what was looked for, status 2.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_without_a_matching_adapter_is_one_line_and_status_2() {
    let dir = tmp("wgpu-none");
    let st = rate()
        .env("RATE_WGPU_ADAPTER", "no-such-adapter-xyz")
        .args(["--backend", "wgpu", "redunet", "gaussians", "--layers", "2", "--out"])
        .arg(&dir)
        .output()
        .expect("runs");
    assert_eq!(st.status.code(), Some(2));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("no-such-adapter-xyz") && err.contains("RATE_WGPU_ADAPTER"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Without the `wgpu` feature, `--backend wgpu` says that this build lacks it.
#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_flag_without_the_feature_says_the_build_lacks_it() {
    let st = rate()
        .args(["--backend", "wgpu", "redunet", "gaussians", "--out"])
        .arg(tmp("nofeat"))
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("no wgpu backend") && err.contains("`wgpu` feature"), "{err}");
}

/// `rate --backend wgpu redunet gaussians` runs on the GPU (the tensor engine) and agrees with the CPU run.
/// Without an adapter it says so and passes, unless `RATE_REQUIRE_GPU=1`.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backend_runs_the_gaussians_experiment_like_the_cpu() {
    let args =
        ["redunet", "gaussians", "--per-class", "60", "--test-per-class", "20", "--layers", "30", "--out"];
    let (gdir, cdir) = (tmp("wgpu-gauss"), tmp("cpu-gauss"));
    let st = rate().args(["--backend", "wgpu"]).args(args).arg(&gdir).output().expect("runs");
    let err = String::from_utf8_lossy(&st.stderr);
    if st.status.code() == Some(2) && err.contains("no wgpu adapter") {
        assert!(std::env::var("RATE_REQUIRE_GPU").map_or(true, |v| v != "1"), "RATE_REQUIRE_GPU=1: {err}");
        eprintln!("no wgpu adapter found: skipped ({err})");
        return;
    }
    assert!(st.status.success(), "{err}");
    assert!(err.contains("backend: wgpu"), "the run names the adapter: {err}");
    let st = rate().args(args).arg(&cdir).output().expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let (mg, mc) = (metrics(&gdir), metrics(&cdir));
    let dr = |m: &serde_json::Value| -> Vec<f64> {
        m["rates_true"]["delta_R"]
            .as_array()
            .expect("delta_R")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
    };
    let (dg, dc) = (dr(&mg), dr(&mc));
    assert_eq!(dg.len(), dc.len());
    for (l, (g, c)) in dg.iter().zip(&dc).enumerate() {
        assert!((g - c).abs() <= 1e-4 * c.abs().max(1.0), "delta_R of layer {l}: wgpu {g} vs cpu {c}");
    }
    assert_eq!(mg["test_accuracy"], mc["test_accuracy"]);
    assert!(is_png(&gdir.join("rates.png")));
}

// ---- rate crate|aot|tost forward, rate aot denoise, rate tost scaling ----

mod transformers {
    use super::*;
    use backend_cpu::CpuBackend;
    use models::io::{write_safetensors, OutArray, TensorFile};
    use models::nn::aot::{Aot, AotConfig};
    use models::nn::classifier::VisionConfig;
    use models::nn::crate_model::{Crate, CrateConfig, CrateGradients};
    use models::nn::head::Pool;
    use models::nn::loss::CrossEntropy;
    use models::nn::mssa::Phi;
    use models::nn::tost::{Tost, TostConfig};
    use models::Tensor;
    use std::collections::BTreeMap;

    type B = CpuBackend<f64>;

    fn vision() -> VisionConfig {
        VisionConfig {
            image_size: 4,
            patch_size: 2,
            channels: 2,
            num_classes: 3,
            dim: 4,
            depth: 2,
            heads: 2,
            pool: Pool::Cls,
            layernorm_eps: 1e-5,
        }
    }

    fn images(dir: &Path) -> (PathBuf, PathBuf, Tensor<B>, Vec<usize>) {
        let data: Vec<f64> = (0..2 * 2 * 4 * 4).map(|i| ((i * 37) % 11) as f64 / 5.0 - 1.0).collect();
        let x = Tensor::from_f64(&B::new(), &data, &[2, 2, 4, 4]);
        let mut a = BTreeMap::new();
        a.insert("images".to_string(), OutArray::f64(&[2, 2, 4, 4], data));
        let input = dir.join("images.safetensors");
        write_safetensors(&input, &a, &BTreeMap::new()).unwrap();
        let mut l = BTreeMap::new();
        l.insert("labels".to_string(), OutArray::i64(&[2], &[2, 0]));
        let labels = dir.join("labels.safetensors");
        write_safetensors(&labels, &l, &BTreeMap::new()).unwrap();
        (input, labels, x, vec![2, 0])
    }

    /// Runs `rate <model> forward --with-grads [extra]` and checks logits, loss and every gradient against
    /// the library (computed on the whole batch at once).
    fn check_forward(
        model: &str,
        ckpt: &Path,
        config: Option<&Path>,
        extra: &[&str],
        dir: &Path,
        want: &dyn Fn(&Tensor<B>, &[usize]) -> (Tensor<B>, f64, CrateGradients<B>),
    ) {
        let (input, labels, x, y) = images(dir);
        let out = dir.join(format!("{model}-out.safetensors"));
        let mut cmd = rate();
        cmd.args([model, "forward", "--checkpoint"])
            .arg(ckpt)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--with-grads").arg("--labels").arg(&labels).args(extra);
        let st = cmd.output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        let f = TensorFile::read(&out).unwrap();
        let (logits, loss, grads) = want(&x, &y);
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs()))
        };
        assert!(close(&f.get("logits").unwrap().data, &logits.to_f64_vec()), "{model} logits");
        assert!((f.get("loss").unwrap().data[0] - loss).abs() < 1e-12, "{model} loss");
        assert!(close(&f.get("input_grad").unwrap().data, &grads.input.to_f64_vec()));
        let names: Vec<&String> = f.tensors.keys().filter(|k| k.starts_with("grad.")).collect();
        assert_eq!(names.len(), grads.params.len(), "{model}: one grad.<name> per parameter");
        for (name, g) in &grads.params {
            let got =
                f.get(&format!("grad.{name}")).unwrap_or_else(|_| panic!("{model}: grad.{name} missing"));
            assert_eq!(got.shape, g.shape());
            assert!(close(&got.data, &g.to_f64_vec()), "{model}: grad.{name}");
        }
    }

    #[test]
    fn forward_with_grads_matches_the_library_for_every_model() {
        let dir = tmp("forward");
        std::fs::create_dir_all(&dir).unwrap();
        let be = B::new();
        let ce = CrossEntropy::new(0.0).unwrap();

        let aot = Aot::<B>::new(
            &be,
            &AotConfig { vision: vision(), dim_head: None, prenorm: true, phi: Phi::Softmax },
            3,
        )
        .unwrap();
        let p = dir.join("aot.safetensors");
        aot.save(&p, safetensors::Dtype::F64).unwrap();
        check_forward("aot", &p, None, &[], &dir, &|x, y| {
            let (l, g) = aot.loss_and_gradients(x, y, &ce).unwrap();
            (aot.logits(x).unwrap(), l, g)
        });

        let tost = Tost::<B>::new(
            &be,
            &TostConfig { vision: vision(), ista_step_size: 0.1, ista_lambda: 0.1, qkv_bias: false },
            4,
        )
        .unwrap();
        let p = dir.join("tost.safetensors");
        tost.save(&p, safetensors::Dtype::F64).unwrap();
        // two micro-batches of one image, run in parallel, against the whole batch
        check_forward("tost", &p, None, &["--micro-batch", "1"], &dir, &|x, y| {
            let (l, g) = tost.loss_and_gradients(x, y, &ce).unwrap();
            (tost.logits(x).unwrap(), l, g)
        });

        // CRATE: a bare state dict (no metadata) completed by a JSON config
        let vision = VisionConfig {
            image_size: 4,
            patch_size: 2,
            channels: 2,
            num_classes: 3,
            dim: 4,
            depth: 2,
            heads: 2,
            ..VisionConfig::cifar_small()
        };
        let cfg = CrateConfig { vision, ..CrateConfig::tiny() };
        let cr = Crate::<B>::new(&be, &cfg, 5).unwrap();
        let mut arrays = BTreeMap::new();
        for (name, t) in cr.state_dict() {
            arrays.insert(name, OutArray::f32(t.shape(), t.to_f64_vec()));
        }
        let p = dir.join("crate.safetensors");
        write_safetensors(&p, &arrays, &BTreeMap::new()).unwrap();
        let json = dir.join("crate.json");
        std::fs::write(&json, r#"{"image_size": 4, "patch_size": 2, "channels": 2, "heads": 2}"#).unwrap();
        // the f32 checkpoint rounds the parameters: compare with the rounded model
        let rounded = Crate::<B>::from_state_dict(
            &be,
            &cfg,
            TensorFile::read(&p).unwrap().tensors.iter().map(|(k, v)| (k.as_str(), v)),
            "x",
        )
        .unwrap();
        check_forward("crate", &p, Some(&json), &["--micro-batch", "1"], &dir, &|x, y| {
            let (l, g) = rounded.loss_and_gradients(x, y, &ce).unwrap();
            (rounded.logits(x).unwrap(), l, g)
        });

        // errors: one line, status 2, naming the tensor / the shape / the key
        let (input, _, _, _) = images(&dir);
        let mut bad = arrays.clone();
        bad.remove("transformer.layers.1.0.fn.qkv.weight");
        let badp = dir.join("bad.safetensors");
        write_safetensors(&badp, &bad, &BTreeMap::new()).unwrap();
        let run = |ckpt: &Path, input: &Path, config: Option<&Path>| {
            let mut c = rate();
            c.args(["crate", "forward", "--checkpoint"])
                .arg(ckpt)
                .arg("--input")
                .arg(input)
                .arg("--out")
                .arg(dir.join("x.safetensors"));
            if let Some(j) = config {
                c.arg("--config").arg(j);
            }
            let o = c.output().unwrap();
            assert_eq!(o.status.code(), Some(2));
            let e = String::from_utf8_lossy(&o.stderr).to_string();
            assert_eq!(e.trim_end().lines().count(), 1, "{e}");
            e
        };
        let e = run(&badp, &input, Some(&json));
        assert!(e.contains("missing tensor `transformer.layers.1.0.fn.qkv.weight`"), "{e}");
        let e = run(&p, &input, None);
        assert!(e.contains("image_size"), "{e}");
        let mut small = BTreeMap::new();
        small.insert("images".to_string(), OutArray::f64(&[1, 2, 6, 6], vec![0.0; 72]));
        let smallp = dir.join("small.safetensors");
        write_safetensors(&smallp, &small, &BTreeMap::new()).unwrap();
        let e = run(&p, &smallp, Some(&json));
        assert!(e.contains("small.safetensors") && e.contains("[1, 2, 6, 6]"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn denoise_snr_rises_layer_by_layer() {
        let out = tmp("denoise");
        run_ok(
            &[
                "aot",
                "denoise",
                "--dim",
                "64",
                "--subspaces",
                "2",
                "--subspace-dim",
                "32",
                "--tokens-per-subspace",
                "20",
                "--layers",
                "4",
                "--out",
            ],
            &out,
        );
        let m = metrics(&out);
        let runs = m["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for r in runs {
            let snr: Vec<f64> =
                r["snr_per_layer"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(snr.len(), 5);
            assert!(snr.windows(2).all(|w| w[1] > w[0]), "SNR does not rise: {snr:?}");
        }
        // delta = 0.2 is inside the theorem's regime: the rate is 1 + eta tau = 1.09
        let rate02 = runs[0]["fitted_rate_per_layer"].as_f64().unwrap();
        assert!((rate02 - 1.09).abs() < 0.01, "{rate02}");
        assert!(is_png(&out.join("snr.png")));
        std::fs::remove_dir_all(&out).ok();
    }

    #[test]
    fn scaling_writes_the_table_and_tssa_grows_linearly() {
        let out = tmp("scaling");
        run_ok(
            &[
                "tost",
                "scaling",
                "--min-tokens",
                "64",
                "--max-tokens",
                "256",
                "--tssa-max-tokens",
                "1024",
                "--dim",
                "32",
                "--heads",
                "4",
                "--out",
            ],
            &out,
        );
        let m = metrics(&out);
        assert_eq!(m["rows"].as_array().unwrap().len(), 5 + 3);
        let slope = |k: &str| m["loglog_slope"][k].as_f64().unwrap();
        assert!((slope("tssa_memory") - 1.0).abs() < 0.15, "TSSA memory slope {}", slope("tssa_memory"));
        assert!(slope("tssa_time") < 1.6, "TSSA time slope {}", slope("tssa_time"));
        assert!(slope("mssa_memory") > 1.6, "dense MSSA memory slope {}", slope("mssa_memory"));
        for p in ["scaling_time.png", "scaling_memory.png"] {
            assert!(is_png(&out.join(p)), "{p}");
        }
        std::fs::remove_dir_all(&out).ok();
    }
}

/// `rate crate|aot|tost train` and `eval` on the embedded digits: metrics, plots, checkpoints, resume, signals, bad input.
mod train {
    use super::{is_png, rate, tmp};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    fn json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("file written")).expect("JSON")
    }

    /// A short digits run: 100 images a class, 2 epochs, small batches.
    fn quick(model: &str, out: &Path, extra: &[&str]) -> std::process::Output {
        rate()
            .args(["--precision", "f32", model, "train", "--data", "digits", "--per-class", "30"])
            .args(["--batch", "32", "--measure-images", "8", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .expect("runs")
    }

    fn assert_one_line_error(st: &std::process::Output, needles: &[&str]) {
        assert_eq!(st.status.code(), Some(2), "{}", String::from_utf8_lossy(&st.stderr));
        let err = String::from_utf8_lossy(&st.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "`{n}` not in: {err}");
        }
    }

    #[test]
    fn every_model_trains_evaluates_and_writes_its_outputs() {
        for model in ["crate", "aot", "tost"] {
            let out = tmp(&format!("train-{model}"));
            let st = quick(
                model,
                &out,
                &["--epochs", "3", "--lr", "3e-3", "--warmup", "0.3", "--augment", "none"],
            );
            assert!(st.status.success(), "{model}: {}", String::from_utf8_lossy(&st.stderr));
            let m = json(&out.join("metrics.json"));
            assert_eq!(m["epochs"], 3, "{model}");
            let h = m["history"].as_array().unwrap();
            let loss = |i: usize| h[i]["train_loss"].as_f64().unwrap();
            assert!(loss(2) < loss(0), "{model}: the training loss falls: {} -> {}", loss(0), loss(2));
            assert!(m["train_images_per_s"].as_f64().unwrap() > 0.0);
            assert!(m["parameters"].as_u64().unwrap() > 1000);
            let layers = &m["layers"]["final"]["coding_rate"];
            assert_eq!(layers.as_array().map(|a| a.len()), Some(4), "{model}: a coding rate per layer");
            let sparsity = &m["compress_and_sparsify"]["ista_sparsity_after_training"];
            assert_eq!(sparsity[0].is_null(), model == "aot", "{model}: ISTA sparsity {sparsity}");
            for f in ["curves.png", "layers.png"] {
                assert!(is_png(&out.join(f)), "{model}: {f}");
            }
            let steps = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            let epochs = steps.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).count();
            assert_eq!(epochs, 3, "{model}");
            // eval of the run directory
            let st = rate()
                .args(["--precision", "f32", model, "eval", "--checkpoint"])
                .arg(&out)
                .args(["--data", "digits", "--json"])
                .output()
                .unwrap();
            assert!(st.status.success(), "{model} eval: {}", String::from_utf8_lossy(&st.stderr));
            let e: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
            assert_eq!(e["images"], 1797);
            assert_eq!(e["per_class_accuracy"].as_array().map(|a| a.len()), Some(10));
            assert!(is_png(Path::new(e["confusion_png"].as_str().unwrap())));
            // the final model is a checkpoint `forward` reads (normalisation applied from its metadata)
            let _ = std::fs::remove_dir_all(&out);
        }
    }

    #[test]
    fn bad_input_is_one_line_status_2_and_leaves_nothing_behind() {
        let dir = tmp("train-bad");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("run");
        // images that do not fit the config
        let st = quick("crate", &out, &["--preset", "fashion-mnist"]);
        assert_one_line_error(&st, &["digits", "[8, 8]", "[1, 28, 28]"]);
        assert!(!out.exists(), "nothing written");
        // zero learning rate and batch
        assert_one_line_error(&quick("crate", &out, &["--epochs", "1", "--lr", "0"]), &["lr = 0"]);
        let st = rate()
            .args(["crate", "train", "--data", "digits", "--batch", "0", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert_one_line_error(&st, &["batch = 0"]);
        assert!(!out.exists());
        // NaN images: a safetensors file with X and y
        let x: Vec<f64> = (0..4 * 64).map(|i| if i == 70 { f64::NAN } else { 0.5 }).collect();
        let mut arrays = std::collections::BTreeMap::new();
        arrays.insert("X".to_string(), models::io::OutArray::f64(&[4, 8, 8], x));
        arrays.insert("y".to_string(), models::io::OutArray::f64(&[4], vec![0.0, 1.0, 2.0, 3.0]));
        let nan = dir.join("nan.safetensors");
        models::io::write_safetensors(&nan, &arrays, &Default::default()).unwrap();
        let st = rate()
            .args(["crate", "train", "--data"])
            .arg(&nan)
            .arg("--test")
            .arg(&nan)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_one_line_error(&st, &["nan.safetensors", "not finite", "sample 1"]);
        assert!(!out.exists());
        // an existing run is not overwritten
        let run = dir.join("done");
        assert!(quick("crate", &run, &["--epochs", "1"]).status.success());
        let before = std::fs::read(run.join("model.safetensors")).unwrap();
        assert_one_line_error(&quick("crate", &run, &[]), &["already holds a training run", "--resume"]);
        assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), before);
        // --resume from another model
        let st = rate()
            .args(["aot", "train", "--data", "digits", "--per-class", "30", "--resume"])
            .arg(&run)
            .output()
            .unwrap();
        assert_one_line_error(&st, &["state.json", "`model`"]);
        // `forward` on NaN images refuses them instead of writing NaN logits
        let imgs: Vec<f64> = (0..2 * 64).map(|i| if i == 3 { f64::NAN } else { 0.1 }).collect();
        let mut arrays = std::collections::BTreeMap::new();
        arrays.insert("images".to_string(), models::io::OutArray::f64(&[2, 1, 8, 8], imgs));
        let nan_images = dir.join("nan_images.safetensors");
        models::io::write_safetensors(&nan_images, &arrays, &Default::default()).unwrap();
        let logits = dir.join("logits.safetensors");
        let st = rate()
            .args(["crate", "forward", "--checkpoint"])
            .arg(run.join("model.safetensors"))
            .arg("--input")
            .arg(&nan_images)
            .arg("--out")
            .arg(&logits)
            .output()
            .unwrap();
        assert_one_line_error(&st, &["nan_images.safetensors", "non-finite", "image 0"]);
        assert!(!logits.exists());
        // forward on finite images works with the trained checkpoint
        let ok: Vec<f64> = (0..2 * 64).map(|i| (i % 7) as f64 / 7.0).collect();
        arrays.insert("images".to_string(), models::io::OutArray::f64(&[2, 1, 8, 8], ok));
        models::io::write_safetensors(&nan_images, &arrays, &Default::default()).unwrap();
        let st = rate()
            .args(["crate", "forward", "--checkpoint"])
            .arg(run.join("model.safetensors"))
            .arg("--input")
            .arg(&nan_images)
            .arg("--out")
            .arg(&logits)
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        // `redunet fit` on a file it refuses leaves no --out directory
        let ragged = dir.join("ragged.csv");
        std::fs::write(&ragged, "1,2,0\n3,1\n").unwrap();
        let fit_out = dir.join("fit");
        let st = rate()
            .args(["redunet", "fit", "--data"])
            .arg(&ragged)
            .arg("--out")
            .arg(&fit_out)
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(2));
        assert!(!fit_out.exists(), "no empty --out left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Starts a long digits run that checkpoints every step.
    fn long_run(out: &Path) -> Child {
        rate()
            .args([
                "--precision",
                "f32",
                "crate",
                "train",
                "--data",
                "digits",
                "--epochs",
                "200",
                "--batch",
                "16",
            ])
            .args(["--checkpoint-every", "1", "--keep", "3", "--measure-images", "0", "--out"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts")
    }

    fn wait_for_checkpoints(out: &Path, n: usize) {
        let t0 = Instant::now();
        while models::train::checkpoint::list_checkpoints(&out.join("checkpoints")).unwrap().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn sigint_writes_a_checkpoint_that_resumes() {
        let out = tmp("train-sigint");
        let child = long_run(&out);
        wait_for_checkpoints(&out, 2);
        let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let done = child.wait_with_output().unwrap();
        assert_eq!(done.status.code(), Some(2));
        let err = String::from_utf8_lossy(&done.stderr);
        assert!(err.contains("interrupted after step") && err.contains("--resume"), "{err}");
        let newest = models::train::checkpoint::resolve_checkpoint(&out).unwrap();
        let state = models::train::checkpoint::read_checkpoint(&newest).unwrap().state;
        // resume to the end of the current epoch + 1 more: finishes
        let st = rate()
            .args(["--precision", "f32", "crate", "train", "--data", "digits", "--resume"])
            .arg(&out)
            .args(["--epochs", &(state.epoch + 1).to_string()])
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        let m = super::metrics(&out);
        assert_eq!(m["epochs"].as_u64(), Some(state.epoch as u64 + 1));
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn sigkill_while_checkpointing_leaves_the_previous_checkpoint_loadable() {
        let out = tmp("train-sigkill");
        for delay_ms in [0u64, 7, 23] {
            let _ = std::fs::remove_dir_all(&out);
            let mut child = long_run(&out);
            wait_for_checkpoints(&out, 1);
            std::thread::sleep(Duration::from_millis(delay_ms));
            child.kill().unwrap(); // SIGKILL, at any point of a checkpoint write
            child.wait().unwrap();
            let newest = models::train::checkpoint::resolve_checkpoint(&out).unwrap();
            let ck = models::train::checkpoint::read_checkpoint(&newest)
                .expect("the newest complete checkpoint reads");
            let be = backend_cpu::CpuBackend::<f32>::new();
            models::nn::crate_model::Crate::<backend_cpu::CpuBackend<f32>>::load(
                &be,
                newest.join("model.safetensors"),
            )
            .expect("its model loads");
            assert!(ck.state.step >= 1);
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A binary built without the `mpi` feature refuses to run when an MPI
/// launcher says it started several processes (each would run the whole job).
#[cfg(not(feature = "mpi"))]
#[test]
fn a_binary_without_mpi_refuses_a_multi_process_launch() {
    let out = tmp("mpi-refused");
    for (var, val) in [("OMPI_COMM_WORLD_SIZE", "2"), ("PMI_SIZE", "4")] {
        let st = rate()
            .env(var, val)
            .args(["redunet", "fit", "--data", "digits", "--layers", "2", "--out"])
            .arg(&out)
            .output()
            .expect("runs");
        assert_eq!(st.status.code(), Some(2), "{var}={val}");
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(err.contains(&format!("{var}={val}")) && err.contains("--features mpi"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!out.exists(), "{var}: the refused run made its output directory");
    }
    // a launcher that started one process is no MPI job: the run goes ahead
    let st = rate()
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .args(["redunet", "fit", "--data", "digits", "--layers", "2", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let _ = std::fs::remove_dir_all(&out);
}
