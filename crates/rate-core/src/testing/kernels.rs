//! Conformance checks of the fused kernels (`Kernels`, one check per method): the backend's kernel against its reference body run on a reference backend in f64, from the same inputs rounded to the backend's precision.
//!
//! On the CPU backend this tests each override against the reference body
//! built from primitives (which the primitive checks test against plain
//! loops); on a GPU backend, which keeps the reference bodies, it tests the
//! whole chain on the device against the CPU in f64. The factorisation
//! kernels are checked against plain f64 Cholesky loops instead.

use super::reference::*;
use super::*;
use crate::kernels::{self, AttentionSpec, DenseAttentionSpec, Kernels};
use crate::kernels::{
    attention_dense as dense, attention_tiled as tiled, invariant, layer_norm, redunet, scan, token_stats,
};
use crate::kernels::{Depth, LayerSet, Record, RedunetSpec};
use rand::rngs::StdRng;
use rand::Rng;

/// The backend under test and the reference backend, fed the same values.
struct Pair<'a, B, R> {
    b: &'a B,
    r: &'a R,
}

impl<B: Kernels, R: Kernels> Pair<'_, B, R> {
    /// `data` rounded to `B`'s precision, uploaded to both backends.
    fn input(&self, data: &[f64], shape: &[usize]) -> (Tensor<B>, Tensor<R>) {
        let x = rounded::<B>(data);
        (Tensor::from_f64(self.b, &x, shape), Tensor::from_f64(self.r, &x, shape))
    }

    /// Uniform values in `[lo, hi)` on both backends.
    fn random(&self, rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64) -> (Tensor<B>, Tensor<R>) {
        self.input(&uniform(rng, shape.iter().product(), lo, hi), shape)
    }

    /// A value computed on the reference backend, passed on to both (as the next input of a backward).
    fn pass_on(&self, t: &Tensor<R>) -> (Tensor<B>, Tensor<R>) {
        self.input(&t.to_f64_vec(), t.shape())
    }
}

/// Same shape, and every value within `tol` of the reference (norm-wise, see [`assert_close`]).
fn same<B: Kernels, R: Kernels>(what: &str, got: &Tensor<B>, want: &Tensor<R>, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_close(what, &got.to_f64_vec(), &want.to_f64_vec(), tol);
}

/// LayerNorm rows: `y`, `mean` and `rstd` against the reference body.
pub fn check_kernel_layer_norm<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(41));
    for (rows, dim) in [(1, 1), (37, 24), (5, 129)] {
        let (x, x0) = p.random(&mut rng, &[rows, dim], -2.0, 3.0);
        let (w, w0) = p.random(&mut rng, &[dim], 0.5, 1.5);
        let (bias, bias0) = p.random(&mut rng, &[dim], -1.0, 1.0);
        let got = kernels::layer_norm(&x, &w, &bias, 1e-5);
        let want = layer_norm::layer_norm_reference(&x0, &w0, &bias0, 1e-5);
        same(&format!("layer_norm y {rows}x{dim}"), &got.0, &want.0, tol);
        same(&format!("layer_norm mean {rows}x{dim}"), &got.1, &want.1, tol);
        same(&format!("layer_norm rstd {rows}x{dim}"), &got.2, &want.2, tol);
    }
}

/// LayerNorm backward: `dx`, `dweight` and `dbias` against the reference body.
pub fn check_kernel_layer_norm_backward<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(42));
    for (rows, dim) in [(1, 3), (37, 24), (5, 129)] {
        let (x, x0) = p.random(&mut rng, &[rows, dim], -2.0, 3.0);
        let (w, w0) = p.random(&mut rng, &[dim], 0.5, 1.5);
        let (g, g0) = p.random(&mut rng, &[rows, dim], -1.0, 1.0);
        let (_, mean, rstd) = layer_norm::layer_norm_reference(&x0, &w0, &Tensor::zeros(r, &[dim]), 1e-5);
        let ((m, m0), (s, s0)) = (p.pass_on(&mean), p.pass_on(&rstd));
        let got = kernels::layer_norm_backward(&x, &m, &s, &w, &g);
        let want = layer_norm::layer_norm_backward_reference(&x0, &m0, &s0, &w0, &g0);
        same(&format!("layer_norm_backward dx {rows}x{dim}"), &got.0, &want.0, tol);
        same(&format!("layer_norm_backward dweight {rows}x{dim}"), &got.1, &want.1, tol);
        same(&format!("layer_norm_backward dbias {rows}x{dim}"), &got.2, &want.2, tol);
    }
}

/// Softmax backward over rows against the reference body.
pub fn check_kernel_softmax_backward<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(43));
    for (rows, len) in [(1, 1), (9, 17), (3, 300)] {
        let y0 = Tensor::from_f64(r, &uniform(&mut rng, rows * len, -3.0, 3.0), &[rows, len]).softmax(-1);
        let (y, y0) = p.pass_on(&y0);
        let (g, g0) = p.random(&mut rng, &[rows, len], -1.0, 1.0);
        let got = kernels::softmax_backward(&y, &g);
        same(
            &format!("softmax_backward {rows}x{len}"),
            &got,
            &layer_norm::softmax_backward_reference(&y0, &g0),
            tol,
        );
    }
}

/// Cumulative sums along the first, a middle and the last axis, both directions.
pub fn check_kernel_cumsum<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(44));
    let (x, x0) = p.random(&mut rng, &[3, 13, 5], -1.0, 1.0);
    for axis in [0usize, 1, 2] {
        for reverse in [false, true] {
            let got = kernels::cumsum(&x, axis as isize, reverse);
            let v = shape_view(x0.shape(), axis);
            let want = scan::cumsum_by_doubling(&x0.reshape(&[v.outer, v.len, v.inner]), reverse);
            same(&format!("cumsum axis {axis} reverse {reverse}"), &got, &want.reshape(x0.shape()), tol);
        }
    }
}

/// Tile sizes that divide the token count, do not, and exceed it.
const TILED: [(usize, usize, usize, usize, usize); 3] =
    [(2, 16, 4, 8, 8), (3, 37, 8, 8, 16), (1, 5, 3, 64, 64)];

/// Tiled attention: output and row log-sum-exp against the reference body.
pub fn check_kernel_attention_tiled<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(45));
    for (batch, n, dh, q_tile, k_tile) in TILED {
        let spec = AttentionSpec { batch, n, dh, scale: 0.4, q_tile, k_tile };
        let (w, w0) = p.random(&mut rng, &[batch, n, dh], -1.0, 1.0);
        let (o, l) = kernels::attention_tiled(&w, spec);
        let (o0, l0) = tiled::tiled_forward(&w0, spec);
        same(&format!("attention_tiled output {spec:?}"), &o, &o0, tol);
        same(&format!("attention_tiled lse {spec:?}"), &l, &l0, tol);
    }
}

/// Tiled attention backward against the reference body.
pub fn check_kernel_attention_tiled_backward<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(46));
    for (batch, n, dh, q_tile, k_tile) in TILED {
        let spec = AttentionSpec { batch, n, dh, scale: 0.4, q_tile, k_tile };
        let (w, w0) = p.random(&mut rng, &[batch, n, dh], -1.0, 1.0);
        let (o0, l0) = tiled::tiled_forward(&w0, spec);
        let ((o, o0), (l, l0)) = (p.pass_on(&o0), p.pass_on(&l0));
        let (g, g0) = p.random(&mut rng, &[batch, n, dh], -1.0, 1.0);
        let got = kernels::attention_tiled_backward(&w, &o, &l, &g, spec);
        let want = tiled::tiled_backward(&w0, &o0, &l0, &g0, spec);
        same(&format!("attention_tiled_backward {spec:?}"), &got, &want, tol);
    }
}

const DENSE: [DenseAttentionSpec; 3] = [
    DenseAttentionSpec { batch: 1, tokens: 1, heads: 1, dim_head: 3 },
    DenseAttentionSpec { batch: 2, tokens: 11, heads: 3, dim_head: 4 },
    DenseAttentionSpec { batch: 3, tokens: 17, heads: 2, dim_head: 8 },
];

/// Dense multi-head attention: attention maps and merged outputs against the reference body.
pub fn check_kernel_attention_dense<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(47));
    for spec in DENSE {
        let (w, w0) = p.random(&mut rng, &spec.tokens_shape(), -1.0, 1.0);
        let (a, o) = kernels::attention_dense(&w, spec);
        let (a0, o0) = dense::dense_forward(&w0, spec);
        same(&format!("attention_dense attention {spec:?}"), &a, &a0, tol);
        same(&format!("attention_dense output {spec:?}"), &o, &o0, tol);
    }
}

/// Dense multi-head attention backward against the reference body.
pub fn check_kernel_attention_dense_backward<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(48));
    for spec in DENSE {
        let (w, w0) = p.random(&mut rng, &spec.tokens_shape(), -1.0, 1.0);
        let (a, a0) = p.pass_on(&dense::dense_forward(&w0, spec).0);
        let (g, g0) = p.random(&mut rng, &spec.tokens_shape(), -1.0, 1.0);
        let got = kernels::attention_dense_backward(&w, &a, &g, spec);
        let want = dense::dense_backward(&w0, &a0, &g0, spec);
        same(&format!("attention_dense_backward {spec:?}"), &got, &want, tol);
    }
}

/// TSSA token statistics: all six outputs against the reference body.
pub fn check_kernel_token_stats<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(49));
    for (batch, n, heads, dh) in [(1, 1, 1, 1), (2, 19, 3, 5), (1, 64, 4, 8)] {
        let (w, w0) = p.random(&mut rng, &[batch, n, heads * dh], -1.0, 1.0);
        let (t, t0) = p.random(&mut rng, &[heads], 0.5, 2.0);
        let got = kernels::token_stats(&w, &t, heads, 1e-12);
        let want = token_stats::token_stats_reference(&w0, &t0, heads, 1e-12);
        let what = |f: &str| format!("token_stats {f} [{batch}, {n}, {heads} x {dh}]");
        same(&what("col_sq"), &got.col_sq, &want.col_sq, tol);
        same(&what("what2_sum"), &got.what2_sum, &want.what2_sum, tol);
        same(&what("pi"), &got.pi, &want.pi, tol);
        same(&what("pi_sum"), &got.pi_sum, &want.pi_sum, tol);
        same(&what("pi_sq"), &got.pi_sq, &want.pi_sq, tol);
        same(&what("w_pi"), &got.w_pi, &want.w_pi, tol);
    }
}

/// The invariant ReduNet update: new features and memberships against the reference body.
pub fn check_kernel_invariant_step<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(50));
    // (frequencies, samples, classes, width); weights 1 at the ends, 2 between, as a half spectrum has them
    for (f, n, k, width) in [(1, 1, 1, 2), (5, 7, 3, 8), (3, 40, 2, 6)] {
        let (v, v0) = p.random(&mut rng, &[f, n, width], -1.0, 1.0);
        let (y, y0) = p.random(&mut rng, &[f, n, k + 1, width], -1.0, 1.0);
        let wts: Vec<f64> = (0..f).map(|i| if i == 0 || i + 1 == f { 1.0 } else { 2.0 }).collect();
        let (wt, wt0) = p.input(&wts, &[f]);
        let (gamma, gamma0) = p.random(&mut rng, &[k], 0.1, 1.0);
        let got = kernels::invariant_step(&v, &y, &wt, &gamma, 0.5, 5.0);
        let want = invariant::invariant_step_reference(&v0, &y0, &wt0, &gamma0, 0.5, 5.0);
        same(&format!("invariant_step features F={f} n={n} k={k}"), &got.0, &want.0, tol);
        same(&format!("invariant_step memberships F={f} n={n} k={k}"), &got.1, &want.1, tol);
    }
}

/// The real operand of Hermitian-packed operators against the reference gather.
pub fn check_kernel_real_operand<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(51));
    for (f, g, c) in [(1, 1, 1), (3, 2, 4), (2, 4, 5)] {
        let (packed, packed0) = p.random(&mut rng, &[f, g, c, c], -1.0, 1.0);
        let got = kernels::real_operand(&packed);
        same(
            &format!("real_operand [{f}, {g}, {c}, {c}]"),
            &got,
            &invariant::real_operand_reference(&packed0),
            tol,
        );
    }
}

/// The invariant layer's products against `v` times the reference real operand.
pub fn check_kernel_invariant_products<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(52));
    for (f, n, g, c) in [(1, 1, 1, 1), (3, 6, 2, 4), (4, 33, 3, 5)] {
        let (v, v0) = p.random(&mut rng, &[f, n, 2 * c], -1.0, 1.0);
        let (packed, packed0) = p.random(&mut rng, &[f, g, c, c], -1.0, 1.0);
        let got = kernels::invariant_products(&v, &packed);
        let want = v0.matmul(&invariant::real_operand_reference(&packed0));
        same(&format!("invariant_products F={f} n={n} g={g} C={c}"), &got, &want, tol);
    }
}

/// The ReduNet of the ReduNet kernel checks: 3 classes of 20 samples in R^4, 5 layers,
/// `lambda = 5` (soft memberships), batches of 16 in the reference engine.
fn redunet_problem(rng: &mut StdRng) -> (Vec<f64>, Vec<usize>, RedunetSpec, Record) {
    let (m, d, k) = (60, 4, 3);
    let labels: Vec<usize> = (0..m).map(|i| i % k).collect();
    // class j concentrated around the axis j, so that the memberships mean something
    let z: Vec<f64> = (0..m * d)
        .map(|i| {
            let (s, c) = (i / d, i % d);
            let centre = if c == labels[s] { 1.0 } else { 0.0 };
            centre + rng.random_range(-0.4..0.4)
        })
        .collect();
    let spec = RedunetSpec {
        classes: k,
        eta: 0.5,
        eps_sq: 0.1,
        lambda: 5.0,
        batch_size: 16,
        depth: Depth::Fixed { layers: 5 },
        progress: Default::default(),
    };
    let record = Record { rates: true, yhat: true, features: LayerSet::Only(vec![0, 2]) };
    (z, labels, spec, record)
}

/// `yhat` equal everywhere in f64; in f32, where a near-tie may round the
/// other way, at least 97 % of the entries.
fn same_yhat<B: Kernels>(what: &str, got: &[u32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: yhat length");
    let agree = got.iter().zip(want).filter(|(a, b)| a == b).count();
    let need = if tolerance::<B>() < 1e-6 { want.len() } else { want.len() * 97 / 100 };
    assert!(agree >= need, "{what}: yhat agrees on {agree} of {} entries", want.len());
}

fn same_rates(what: &str, got: &[crate::Rates], want: &[crate::Rates], tol: f64) {
    let flat = |r: &[crate::Rates]| r.iter().flat_map(|x| [x.r, x.rc, x.delta_r]).collect::<Vec<f64>>();
    assert_close(what, &flat(got), &flat(want), tol);
}

/// The ReduNet construction kernel: output, operators of every layer, rates,
/// snapshots and `yhat` against the reference engine.
pub fn check_kernel_redunet_build<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(54));
    let (z, labels, spec, record) = redunet_problem(&mut rng);
    let (zb, zr) = p.input(&z, &[labels.len(), 4]);
    let got =
        kernels::redunet_build(&zb, &labels, &spec, &record).unwrap_or_else(|e| panic!("redunet_build: {e}"));
    let want = redunet::build_reference(&zr, &labels, &spec, &record).expect("reference build");
    same("redunet_build output", &got.output, &want.output, tol);
    assert_eq!(got.operators.len(), want.operators.len(), "redunet_build: layers built");
    for (l, (g, w)) in got.operators.iter().zip(&want.operators).enumerate() {
        same(&format!("redunet_build operators of layer {l}"), g, w, tol);
    }
    assert_eq!(got.features.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 2], "redunet_build snapshots");
    for ((l, g), (_, w)) in got.features.iter().zip(&want.features) {
        same(&format!("redunet_build snapshot {l}"), g, w, tol);
    }
    same_rates("redunet_build rates_true", &got.rates_true, &want.rates_true, tol);
    same_yhat::<B>("redunet_build", &got.yhat, &want.yhat);
    if got.yhat == want.yhat {
        same_rates("redunet_build rates_code", &got.rates_code, &want.rates_code, tol);
    }
}

/// The ReduNet transform kernel on held-out samples with operators built by
/// the reference engine: output, snapshots and `yhat`.
pub fn check_kernel_redunet_transform<B: Kernels, R: Kernels>(b: &B, r: &R) {
    let (p, tol, mut rng) = (Pair { b, r }, tolerance::<B>(), rng(55));
    let (z, labels, spec, record) = redunet_problem(&mut rng);
    let built =
        redunet::build_reference(&Tensor::from_f64(r, &z, &[labels.len(), 4]), &labels, &spec, &record)
            .expect("reference build");
    let (ops, ops0): (Vec<Tensor<B>>, Vec<Tensor<R>>) = built.operators.iter().map(|w| p.pass_on(w)).unzip();
    let gamma = vec![1.0 / 3.0; 3];
    let (held_out, _, _, _) = redunet_problem(&mut rng);
    let (zb, zr) = p.input(&held_out, &[labels.len(), 4]);
    let got = kernels::redunet_transform(&zb, &ops, &gamma, &spec, &record)
        .unwrap_or_else(|e| panic!("redunet_transform: {e}"));
    let want = redunet::transform_reference(&zr, &ops0, &gamma, &spec, &record).expect("reference transform");
    same("redunet_transform output", &got.output, &want.output, tol);
    for ((l, g), (_, w)) in got.features.iter().zip(&want.features) {
        same(&format!("redunet_transform snapshot {l}"), g, w, tol);
    }
    assert_eq!(got.features.len(), 2, "redunet_transform snapshots");
    same_yhat::<B>("redunet_transform", &got.yhat, &want.yhat);
}
