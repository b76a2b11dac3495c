//! CRATE reproduces the authors' PyTorch reference in float64 (fixtures crate, crate_mssa_block, crate_ista_block):
//! forward to 1e-10 absolute, gradients to 1e-9 absolute + 1e-7 relative. Every shape and hyperparameter is read from the file.
use backend_cpu::CpuBackend;
use models::fixtures;
use models::io::TensorFile;
use models::nn::classifier::Block;
use models::nn::crate_model::{Crate, CrateConfig};
use models::nn::ista::Ista;
use models::nn::loss::CrossEntropy;
use models::nn::mssa::{has_to_out, Mssa};
use models::nn::{Grads, Linear};
use models::Tensor;

type B = CpuBackend<f64>;

const FORWARD_ABS: f64 = 1e-10;
const GRAD_ABS: f64 = 1e-9;
const GRAD_REL: f64 = 1e-7;

fn assert_forward(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, fixture has {}", got.len(), want.len());
    let err = fixtures::max_abs_diff(got, want);
    assert!(err <= FORWARD_ABS, "{what}: max abs error {err:e} > {FORWARD_ABS:e}");
}

fn assert_grad(what: &str, got: &Tensor<B>, f: &TensorFile, name: &str) {
    let want = f.get(name).unwrap();
    assert_eq!(got.shape(), want.shape.as_slice(), "{what}: shape differs from `{name}`");
    let got = got.to_f64_vec();
    for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
        let tol = GRAD_ABS + GRAD_REL * w.abs();
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs fixture {w} (tolerance {tol:e})");
    }
}

fn param(f: &TensorFile, name: &str) -> Tensor<B> {
    f.tensor(&B::new(), name).unwrap()
}

#[test]
fn parity_crate() {
    let be = B::new();
    let f = fixtures::load("crate").unwrap();
    let config = CrateConfig::from_checkpoint(&f).unwrap();
    // the parameters are exactly the tensors the fixture gives a gradient for (the input aside)
    let names: Vec<&str> =
        f.tensors.keys().filter_map(|k| k.strip_prefix("grad.")).filter(|n| *n != "input").collect();
    let model =
        Crate::from_state_dict(&be, &config, names.iter().map(|n| (*n, f.get(n).unwrap())), &f.path).unwrap();
    assert_eq!(model.layers.len(), models::nn::crate_model::layer_count(names.iter().copied()).unwrap());

    let input = f.tensor(&be, "input").unwrap();
    let labels = f.labels("labels").unwrap();
    let (logits, cache) = model.forward(&input).unwrap();
    assert_forward("logits", &logits.to_f64_vec(), &f.get("logits").unwrap().data);
    assert_forward(
        "logits (inference path)",
        &model.logits(&input).unwrap().to_f64_vec(),
        &f.get("logits").unwrap().data,
    );

    // tokens of the first image: Z^0 and the output of every layer
    let first = |t: &Tensor<B>| t.narrow(0, 0, 1).to_f64_vec();
    assert_forward("tokens.embed", &first(&cache.tokens[0]), &f.get("tokens.embed").unwrap().data);
    for i in 0..model.layers.len() {
        let name = format!("tokens.layer{i}");
        assert_forward(&name, &first(&cache.tokens[i + 1]), &f.get(&name).unwrap().data);
    }

    let ce = CrossEntropy::default();
    let (loss, ce_cache) = ce.forward(&logits, &labels).unwrap();
    let want_loss = f.get("loss").unwrap().data[0];
    assert!((loss - want_loss).abs() <= FORWARD_ABS, "loss {loss} vs fixture {want_loss}");

    let grads = model.backward(&cache, &ce.backward(&ce_cache, 1.0));
    assert_eq!(grads.params.len(), names.len(), "one gradient per parameter");
    for n in &names {
        let g = grads.params.get(*n).unwrap_or_else(|| panic!("no gradient for `{n}`"));
        assert_grad(n, g, &f, &format!("grad.{n}"));
    }
    assert_grad("input", &grads.input, &f, "grad.input");

    // the training path computes only the class token in the last layer: same loss and gradients
    let (loss2, grads2) = model.loss_and_gradients(&input, &labels, &ce).unwrap();
    assert!((loss2 - want_loss).abs() <= FORWARD_ABS, "training-path loss {loss2} vs fixture {want_loss}");
    assert_eq!(grads2.params.len(), names.len());
    for n in &names {
        assert_grad(&format!("{n} (training path)"), &grads2.params[*n], &f, &format!("grad.{n}"));
    }
    assert_grad("input (training path)", &grads2.input, &f, "grad.input");
}

#[test]
fn parity_crate_mssa_block() {
    let be = B::new();
    let f = fixtures::load("crate_mssa_block").unwrap();
    let heads = f.meta_usize("heads").unwrap();
    let dim_head = f.meta_usize("dim_head").unwrap();
    let qkv = param(&f, "qkv.weight");
    let dim = qkv.dim(1);
    assert_eq!(qkv.dim(0), heads * dim_head, "qkv.weight is [heads * dim_head, dim]");
    let has_out = f.tensors.contains_key("to_out.0.weight");
    assert_eq!(has_out, has_to_out(dim, heads, dim_head), "to_out presence follows the reference rule");
    let to_out = has_out
        .then(|| Linear { weight: param(&f, "to_out.0.weight"), bias: Some(param(&f, "to_out.0.bias")) });
    let mssa = Mssa { qkv: Linear { weight: qkv, bias: None }, to_out, heads, dim_head };
    if let Ok(scale) = f.meta_f64("scale") {
        assert!((mssa.scale() - scale).abs() < 1e-15, "scale {} vs metadata {scale}", mssa.scale());
    }

    let x = f.tensor(&be, "input").unwrap();
    let (out, cache) = mssa.forward(&x);
    assert_forward("output", &out.to_f64_vec(), &f.get("output").unwrap().data);
    let loss = 0.5 * out.square().sum_all();
    let want_loss = f.get("loss").unwrap().data[0];
    assert!((loss - want_loss).abs() <= FORWARD_ABS * want_loss.abs().max(1.0), "loss {loss} vs {want_loss}");

    let mut grads = Grads::new();
    let gx = mssa.backward(&cache, &out, "", &mut grads, false);
    assert_grad("input", &gx, &f, "grad.input");
    let mut n = 0;
    for name in f.tensors.keys().filter_map(|k| k.strip_prefix("grad.")).filter(|n| *n != "input") {
        assert_grad(
            name,
            grads.get(name).unwrap_or_else(|| panic!("no gradient for `{name}`")),
            &f,
            &format!("grad.{name}"),
        );
        n += 1;
    }
    assert_eq!(n, grads.len(), "gradients {:?}", grads.keys().collect::<Vec<_>>());
}

#[test]
fn parity_crate_ista_block() {
    let be = B::new();
    let f = fixtures::load("crate_ista_block").unwrap();
    let ista = Ista {
        weight: param(&f, "weight"),
        step_size: f.meta_f64("step_size").unwrap(),
        lambda: f.meta_f64("lambd").unwrap(),
    };
    let x = f.tensor(&be, "input").unwrap();
    let want_loss = f.get("loss").unwrap().data[0];
    for literal in [false, true] {
        let what = if literal { "literal" } else { "fused" };
        let (out, cache) = if literal { ista.forward_literal(&x) } else { ista.forward(&x) };
        assert_forward(&format!("{what} output"), &out.to_f64_vec(), &f.get("output").unwrap().data);
        let loss = 0.5 * out.square().sum_all();
        assert!(
            (loss - want_loss).abs() <= FORWARD_ABS * want_loss.abs().max(1.0),
            "{what} loss {loss} vs {want_loss}"
        );
        let mut grads = Grads::new();
        let gx = if literal {
            ista.backward_literal(&cache, &out, "", &mut grads)
        } else {
            ista.backward(&cache, &out, "", &mut grads)
        };
        assert_grad(&format!("{what} input"), &gx, &f, "grad.input");
        assert_grad(&format!("{what} weight"), &grads["weight"], &f, "grad.weight");
        assert_eq!(grads.len(), 1);
    }
}
