//! End-to-end runs of the `rate` binary: the experiments write metrics.json and PNG plots, and errors exit with status 2 and one line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn rate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rate"))
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
    let st = rate()
        .args([
            "redunet",
            "gaussians",
            "--per-class",
            "100",
            "--test-per-class",
            "50",
            "--layers",
            "300",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
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
    let st = rate()
        .args([
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
        ])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
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
