//! `rate` under `mpirun -n 2` (the `mpi` feature): `redunet fit` (class Gram sums of 4.1.3-4.1.4 all-reduced), `crate train` (gradient sums) and the invariant experiments (per-frequency sums of 4.1.20-4.1.22) give the single-process run's rates, models and accuracies; other subcommands refuse to run sharded.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rate-mpi-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-n", &n.to_string(), env!("CARGO_BIN_EXE_rate")]);
    c
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json"))
        .expect("JSON")
}

/// Runs `rate ARGS DIR` alone into `TAG-one` and under `mpirun -n 2` into
/// `TAG-two`, asserting that both succeed; returns the two directories and
/// the output of the two-rank run.
fn one_and_two(args: &[&str], tag: &str) -> (PathBuf, PathBuf, std::process::Output) {
    let (one, two) = (tmp(&format!("{tag}-one")), tmp(&format!("{tag}-two")));
    let st = Command::new(env!("CARGO_BIN_EXE_rate")).args(args).arg(&one).output().expect("rate runs");
    assert!(st.status.success(), "{tag}, one process: {}", String::from_utf8_lossy(&st.stderr));
    let st = mpirun(2).args(args).arg(&two).output().expect("mpirun runs (apt-get install openmpi-bin)");
    assert!(st.status.success(), "{tag}, two ranks: {}", String::from_utf8_lossy(&st.stderr));
    (one, two, st)
}

/// Asserts that `a` and `b` hold as many numbers and differ by at most `tol`.
fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert!(!a.is_empty() && a.len() == b.len(), "{what}: {} against {} numbers", a.len(), b.len());
    let err = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(err <= tol, "{what}: one process and two ranks differ by {err:e}");
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Number(n) => vec![n.as_f64().expect("f64")],
        serde_json::Value::Array(a) => a.iter().flat_map(numbers).collect(),
        serde_json::Value::Object(o) => o.values().flat_map(numbers).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn two_ranks_fit_the_same_redunet_as_one_process() {
    let args = ["--json", "redunet", "fit", "--data", "digits", "--layers", "8", "--pca", "24", "--out"];
    let (one, two, st) = one_and_two(&args, "fit");
    // one summary, from rank 0
    assert_eq!(String::from_utf8_lossy(&st.stdout).lines().count(), 1);
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(b["mpi"]["ranks"], 2, "the job did not run on two ranks");
    assert_eq!(a["mpi"]["ranks"], 1);
    for key in ["rates_true", "rates_code", "test_accuracy"] {
        assert_close(key, &numbers(&a[key]), &numbers(&b[key]), 1e-9);
    }
    // the models and projections rank 0 wrote agree with one process's: every array to rounding
    for file in ["model.safetensors", "pca.safetensors"] {
        let read = |d: &Path| models::io::TensorFile::read(d.join(file)).expect("written by rank 0").tensors;
        let (x, y) = (read(&one), read(&two));
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{file}: arrays");
        for (name, t) in &x {
            assert_eq!(t.shape, y[name].shape, "{file} {name}: shape");
            assert_close(&format!("{file} {name}"), &t.data, &y[name].data, 1e-9);
        }
    }
    for d in [&one, &two] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_subcommand_that_does_not_shard_refuses_under_mpirun() {
    let out = tmp("gaussians");
    let st = mpirun(2).args(["redunet", "gaussians", "--out"]).arg(&out).output().expect("mpirun runs");
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(err.matches("rate: error").count(), 1, "one error line, from rank 0: {err}");
    assert!(err.contains("does not run across MPI processes"), "{err}");
    assert!(!out.exists());
}

#[test]
fn two_ranks_train_crate_as_one_process_and_resume_only_with_two() {
    let args = [
        "--json",
        "crate",
        "train",
        "--data",
        "digits",
        "--per-class",
        "30",
        "--batch",
        "32",
        "--epochs",
        "2",
        "--measure-images",
        "8",
        "--augment",
        "none",
        "--out",
    ];
    let (one, two, st) = one_and_two(&args, "train");
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(err.matches("epoch 2/2").count(), 1, "rank 0 alone reports: {err}");
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!((a["ranks"].as_u64(), b["ranks"].as_u64()), (Some(1), Some(2)));
    // f64: the gradient sums of two halves against one whole batch differ by rounding only
    for key in ["final_test_accuracy", "final_test_loss", "final_train_loss"] {
        let (x, y) = (a[key].as_f64().expect(key), b[key].as_f64().expect(key));
        assert!((x - y).abs() <= 1e-9, "{key}: one process {x}, two ranks {y}");
    }
    assert!(b["comm_seconds"].as_f64().expect("comm_seconds") > 0.0);
    // a checkpoint of two ranks is not resumed by one process
    let st = Command::new(env!("CARGO_BIN_EXE_rate"))
        .args(["crate", "train", "--data", "digits", "--per-class", "30", "--epochs", "3", "--resume"])
        .arg(&two)
        .output()
        .expect("rate runs");
    assert_eq!(st.status.code(), Some(2));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("trained by 2 process"), "{err}");
    for d in [&one, &two] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn two_ranks_run_the_invariant_experiments_as_one_process() {
    for exp in ["rotation", "translation"] {
        let (one, two, _) = one_and_two(&["--json", "invariant", exp, "--out"], exp);
        let (a, b) = (metrics(&one), metrics(&two));
        for key in ["delta_R_train", "test_accuracy"] {
            assert_close(&format!("{exp} {key}"), &numbers(&a[key]), &numbers(&b[key]), 1e-9);
        }
        for d in [&one, &two] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
