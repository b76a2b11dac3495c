//! TSSA reproduces the ToST fixture (RobinWu218/ToST tost_vision/tost.py, class AttentionTSSA, float64): output, loss and the gradient of every parameter and of the input.
#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
use backend_cpu::CpuBackend;
use models::fixtures::{self, max_abs_diff};
use models::nn::classifier::Block;
use models::nn::tssa::{Tssa, NORM_EPS, PI_EPS};
use models::nn::{Grads, Module};

/// Largest violation of `|got - want| <= abs + rel |want|` (<= 0 means within tolerance).
fn excess(got: &[f64], want: &[f64], abs: f64, rel: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(g, w)| (g - w).abs() - (abs + rel * w.abs())).fold(f64::NEG_INFINITY, f64::max)
}

#[test]
fn parity_tost_tssa() {
    let be = CpuBackend::<f64>::new();
    let f = fixtures::load("tost_tssa").unwrap();
    let heads = f.meta_usize("heads").unwrap();
    // the constants of the reference code, recorded in the metadata
    assert_eq!(f.meta_f64("normalize_eps").unwrap(), NORM_EPS);
    assert_eq!(f.meta_f64("pi_denominator_eps").unwrap(), PI_EPS);
    let layer = Tssa::from_named(heads, |name| f.tensor(&be, name).ok()).unwrap();
    let has_bias = f.meta("qkv_bias").unwrap() == "True";
    assert_eq!(layer.qkv.bias.is_some(), has_bias, "qkv.bias presence vs metadata qkv_bias");

    let x = f.tensor(&be, "input").unwrap();
    let (out, cache) = layer.forward(&x);
    let want = f.get("output").unwrap();
    assert_eq!(out.shape(), want.shape.as_slice());
    let d = max_abs_diff(&out.to_f64_vec(), &want.data);
    eprintln!("output: max abs diff {d:.2e}");
    assert!(d < 1e-10, "output differs by {d}");

    let loss = 0.5 * out.square().sum_all();
    let want_loss = f.get("loss").unwrap().data[0];
    assert!((loss - want_loss).abs() < 1e-10 * want_loss.abs().max(1.0), "loss {loss} vs {want_loss}");

    // dL/d(out) = out for L = 0.5 sum(out^2)
    let mut grads = Grads::new();
    let dx = layer.backward(&cache, &out, "", &mut grads, false);
    let mut names = vec![];
    layer.visit("", &mut |name, _| names.push(name));
    assert_eq!(names.len(), 4 + usize::from(has_bias));
    for name in names.iter().map(String::as_str).chain(["input"]) {
        let want = f.get(&format!("grad.{name}")).unwrap();
        let got = if name == "input" { dx.clone() } else { grads[name].clone() };
        assert_eq!(got.shape(), want.shape.as_slice(), "grad.{name} shape");
        let e = excess(&got.to_f64_vec(), &want.data, 1e-9, 1e-7);
        eprintln!("grad.{name}: max abs diff {:.2e}", max_abs_diff(&got.to_f64_vec(), &want.data));
        assert!(e <= 0.0, "grad.{name} exceeds the tolerance by {e}");
    }
    // every gradient in the file was compared
    let in_file = f.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(in_file, names.len() + 1);
}
