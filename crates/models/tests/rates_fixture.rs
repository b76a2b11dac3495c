//! The rate functions of rate-core reproduce the rates logged in the ReduNet fixtures (authors' code, float64).
use backend_cpu::CpuBackend;
use models::fixtures;
use rate_core::{circulant, rate_reduction, Membership};

#[test]
fn vector_rates_match_fixture_at_every_layer() {
    let be = CpuBackend::<f64>::new();
    for name in ["redunet_vector", "redunet_vector_soft"] {
        let f = fixtures::load(name).unwrap();
        let eps = f.meta_f64("eps_sq").unwrap();
        let y = f.labels("y").unwrap();
        let k = y.iter().max().unwrap() + 1;
        let zl = f.get("Z_layers").unwrap();
        let (l1, m, d) = (zl.shape[0], zl.shape[1], zl.shape[2]);
        let (r, rc, dr) =
            (f.get("R_true").unwrap(), f.get("Rc_true").unwrap(), f.get("delta_R_true").unwrap());
        for l in 0..l1 {
            let z = rate_core::Tensor::from_f64(&be, &zl.data[l * m * d..(l + 1) * m * d], &[m, d]);
            let rates = rate_reduction(&z, &Membership::Hard { labels: &y, classes: k }, eps).unwrap();
            assert!((rates.r - r.data[l]).abs() < 1e-10, "{name} layer {l}: R {} vs {}", rates.r, r.data[l]);
            assert!(
                (rates.rc - rc.data[l]).abs() < 1e-10,
                "{name} layer {l}: Rc {} vs {}",
                rates.rc,
                rc.data[l]
            );
            assert!((rates.delta_r - dr.data[l]).abs() < 1e-10);
        }
    }
}

#[test]
fn circulant_rates_match_fixture_input() {
    let be = CpuBackend::<f64>::new();
    let f = fixtures::load("redunet_fourier1d").unwrap();
    let eps = f.meta_f64("eps_sq").unwrap();
    let y = f.labels("y").unwrap();
    let k = y.iter().max().unwrap() + 1;
    let v = f.get("V").unwrap();
    let (m, c, t) = (v.shape[0], v.shape[1], v.shape[2]);
    // normalise each sample over all C x T entries, as the reference code does before layer 0
    let mut data = v.data.clone();
    for i in 0..m {
        let s = &mut data[i * c * t..(i + 1) * c * t];
        let n = s.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
        s.iter_mut().for_each(|x| *x /= n);
    }
    let z = rate_core::Tensor::from_f64(&be, &data, &[m, c, t]);
    let r = circulant::circulant_coding_rate(&z, eps).unwrap();
    let rc = circulant::circulant_compression_rate(&z, &y, k, eps).unwrap();
    let (rt, rct) = (f.get("R_true").unwrap().data[0], f.get("Rc_true").unwrap().data[0]);
    assert!((r - rt).abs() < 1e-10, "R {r} vs {rt}");
    assert!((rc - rct).abs() < 1e-10, "Rc {rc} vs {rct}");
}
