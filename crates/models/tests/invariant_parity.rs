//! The frequency-domain invariant ReduNet reproduces the authors' Fourier1D fixtures (ryanchankh/redunet_paper, float64/complex128): every layer's spectra, E and C^j of layer 0 over all frequencies, rates, memberships and the output.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
use backend_cpu::CpuBackend;
use models::fixtures::{self, max_abs_diff};
use models::invariant::{InvariantConfig, InvariantReduNet};
use models::io::TensorFile;
use rate_core::{ComplexTensor, Tensor};

type B = CpuBackend<f64>;

/// Forward values: 1e-10 absolute (fixtures README, "Observed tolerances").
const TOL: f64 = 1e-10;

fn close(file: &TensorFile, what: &str, got: &[f64], want: &[f64]) {
    let d = max_abs_diff(got, want);
    eprintln!("{}: {what}: max abs diff {d:e}", file.path);
    assert!(d <= TOL, "{}: {what} differs by {d:e} (tolerance {TOL:e})", file.path);
}

fn full_planes(v: &ComplexTensor<B>, perm: &[usize]) -> (Vec<f64>, Vec<f64>) {
    v.permute(perm).to_f64_vecs()
}

fn check_fourier1d(name: &str) {
    let be = B::new();
    let f = fixtures::load(name).unwrap_or_else(|e| panic!("{e}"));
    let config = InvariantConfig { keep_spectra: true, ..f.invariant_config().unwrap() };
    let layers = config.layers;
    let classes = f.meta_usize("num_classes").unwrap();
    let v = f.get_rank("V", 3).unwrap();
    let (m, c, t) = (v.shape[0], v.shape[1], v.shape[2]);
    let y = f.labels("y").unwrap();
    let vre = f.get_rank("Vfreq_layers_real", 4).unwrap();
    let vim = f.get_rank("Vfreq_layers_imag", 4).unwrap();
    assert_eq!(vre.shape, vec![layers + 1, m, c, t], "{}: Vfreq_layers_real shape", f.path);
    assert_eq!(vim.shape, vre.shape, "{}: Vfreq_layers_imag shape", f.path);

    let x = Tensor::from_f64(&be, &v.data, &v.shape);
    let out = InvariantReduNet::construct(&x, &y, classes, &config).unwrap();
    let net = &out.network;
    let dom = net.domain();
    let rec = &out.record;

    close(&f, "gam", net.gamma(), &f.get("gam").unwrap().data);

    // Features of every layer over all T frequencies (the other half by conjugate symmetry).
    assert_eq!(rec.spectra.len(), layers + 1);
    let per = m * c * t;
    for (l, s) in rec.spectra.iter().enumerate() {
        let (re, im) = full_planes(&dom.full_spectrum(s, 0), &[1, 2, 0]);
        close(&f, &format!("Vfreq_layers_real[{l}]"), &re, &vre.data[l * per..(l + 1) * per]);
        close(&f, &format!("Vfreq_layers_imag[{l}]"), &im, &vim.data[l * per..(l + 1) * per]);
    }

    // E(t) and C^j(t) of layer 0, indexed [row, col, freq] (and [j, row, col, freq]).
    let (er, ei) = full_planes(&dom.full_spectrum(&net.expansion_operator(0).unwrap(), 0), &[1, 2, 0]);
    close(&f, "E_layer0_real", &er, &f.get("E_layer0_real").unwrap().data);
    close(&f, "E_layer0_imag", &ei, &f.get("E_layer0_imag").unwrap().data);
    let (cr, ci) = full_planes(&dom.full_spectrum(&net.compression_operators(0).unwrap(), 1), &[0, 2, 3, 1]);
    close(&f, "C_layer0_real", &cr, &f.get("C_layer0_real").unwrap().data);
    close(&f, "C_layer0_imag", &ci, &f.get("C_layer0_imag").unwrap().data);

    // Rates with the true labels (L + 1) and as the code logs them (L).
    let pick =
        |rs: &[rate_core::Rates], g: fn(&rate_core::Rates) -> f64| rs.iter().map(g).collect::<Vec<f64>>();
    for (key, got) in [
        ("R_true", pick(&rec.rates_true, |r| r.r)),
        ("Rc_true", pick(&rec.rates_true, |r| r.rc)),
        ("delta_R_true", pick(&rec.rates_true, |r| r.delta_r)),
        ("R_code", pick(&rec.rates_code, |r| r.r)),
        ("Rc_code", pick(&rec.rates_code, |r| r.rc)),
        ("delta_R_code", pick(&rec.rates_code, |r| r.delta_r)),
    ] {
        close(&f, key, &got, &f.get(key).unwrap().data);
    }

    // Memberships: exact.
    let yh = f.get_rank("yhat_layers", 2).unwrap();
    assert_eq!(yh.shape, vec![layers, m]);
    let got: Vec<f64> = rec.yhat.iter().flatten().map(|&v| v as f64).collect();
    assert_eq!(got, yh.data, "{}: yhat_layers", f.path);

    // Output in the time domain.
    let z = f.get_rank("Z_final", 3).unwrap();
    assert_eq!(out.features.shape(), &z.shape[..]);
    close(&f, "Z_final", &out.features.to_f64_vec(), &z.data);

    // The frozen network maps the training signals to the same output.
    let again = net.transform(&x).unwrap();
    close(&f, "transform(V) vs Z_final", &again.features.to_f64_vec(), &z.data);
    assert_eq!(again.yhat, rec.yhat);
}

#[test]
fn parity_redunet_fourier1d() {
    check_fourier1d("redunet_fourier1d");
}

#[test]
fn parity_redunet_fourier1d_soft() {
    check_fourier1d("redunet_fourier1d_soft");
}
