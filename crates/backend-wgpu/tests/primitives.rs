//! Every wgpu primitive against `CpuBackend<f64>` on seeded inputs, with f32 tolerances stated per test.
//!
//! Inputs are drawn in f64, rounded to f32, and the rounded values go to both
//! backends, so a difference measures the wgpu kernel alone. Without an
//! adapter each test prints "no wgpu adapter found: skipped" and passes,
//! unless `RATE_REQUIRE_GPU=1`, where it fails.

use backend_cpu::CpuBackend;
use backend_wgpu::WgpuBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rate_core::{AxisView, Backend, BinaryOp, Error, FftNorm, MatmulSpec, ReduceOp, UnaryOp};
use std::io::Write;
use std::sync::OnceLock;

fn gpu() -> Option<&'static WgpuBackend> {
    static GPU: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    GPU.get_or_init(|| match WgpuBackend::new() {
        Ok(b) => {
            eprintln!("wgpu tests run on {}", b.name());
            Some(b)
        }
        Err(e) => {
            if std::env::var("RATE_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("RATE_REQUIRE_GPU=1 but no wgpu adapter could be opened: {e}");
            }
            // Straight to stderr, past libtest's capture, so the skip is seen.
            let _ = writeln!(std::io::stderr(), "no wgpu adapter found: skipped ({e})");
            None
        }
    })
    .as_ref()
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(g) => g,
            None => {
                let _ = writeln!(std::io::stderr(), "no wgpu adapter found: skipped");
                return;
            }
        }
    };
}

fn cpu() -> CpuBackend<f64> {
    CpuBackend::<f64>::new()
}

/// `n` values uniform in `[lo, hi)`, rounded to f32 (returned in f64 and f32).
fn rand_vec(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> (Vec<f64>, Vec<f32>) {
    let v32: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi) as f32).collect();
    (v32.iter().map(|&x| x as f64).collect(), v32)
}

/// Asserts `|got - want| <= atol + rtol |want|` elementwise.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        if err.is_nan() || err > atol + rtol * w.abs() {
            panic!("{what}: element {i}: wgpu {g} vs f64 reference {w} (|diff| {err:.3e}, atol {atol:e}, rtol {rtol:e})");
        }
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `batch` well-conditioned SPD matrices `X X^T / n + I` of order `n`.
fn spd_batch(rng: &mut StdRng, batch: usize, n: usize) -> (Vec<f64>, Vec<f32>) {
    let mut out = Vec::with_capacity(batch * n * n);
    for _ in 0..batch {
        let (x, _) = rand_vec(rng, n * n, -1.0, 1.0);
        for i in 0..n {
            for j in 0..n {
                let mut s: f64 = (0..n).map(|q| x[i * n + q] * x[j * n + q]).sum::<f64>() / n as f64;
                if i == j {
                    s += 1.0;
                }
                out.push(s as f32);
            }
        }
    }
    (out.iter().map(|&x| x as f64).collect(), out)
}

#[test]
fn upload_download_full_len() {
    let g = gpu_or_skip!();
    let mut rng = StdRng::seed_from_u64(1);
    for n in [0usize, 1, 3, 1000, 70_001] {
        let (_, x) = rand_vec(&mut rng, n, -5.0, 5.0);
        let b = g.upload(&x);
        assert_eq!(g.len(&b), n);
        assert_eq!(g.download(&b), x, "roundtrip of {n} values");
        let f = g.full(n, 2.5);
        assert_eq!(g.len(&f), n);
        assert!(g.download(&f).iter().all(|&v| v == 2.5));
    }
    // Buffers freed into the pool and reused keep their own contents.
    let a = g.upload(&[1.0, 2.0, 3.0]);
    drop(g.upload(&[9.0; 3]));
    let c = g.full(3, 7.0);
    assert_eq!(g.download(&a), vec![1.0, 2.0, 3.0]);
    assert_eq!(g.download(&c), vec![7.0; 3]);
}

/// Unary ops: rel 2e-6 (abs 1e-6); exp/log/sqrt/recip rel 1e-5.
#[test]
fn unary_ops() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(2);
    let (x64, x32) = rand_vec(&mut rng, 3001, -4.0, 4.0);
    let (p64, p32) = rand_vec(&mut rng, 3001, 0.01, 9.0);
    let ops = [
        (UnaryOp::Neg, false, 0.0),
        (UnaryOp::Exp, false, 1e-5),
        (UnaryOp::Log, true, 1e-5),
        (UnaryOp::Sqrt, true, 1e-5),
        (UnaryOp::Abs, false, 0.0),
        (UnaryOp::Square, false, 2e-6),
        (UnaryOp::Recip, true, 1e-5),
        (UnaryOp::Relu, false, 0.0),
        (UnaryOp::Step, false, 0.0),
        (UnaryOp::SoftThreshold(0.5), false, 2e-6),
        (UnaryOp::AddScalar(1.25), false, 2e-6),
        (UnaryOp::MulScalar(-0.75), false, 2e-6),
        (UnaryOp::ClampMin(0.3), false, 0.0),
        (UnaryOp::ClampMax(-0.2), false, 0.0),
        (UnaryOp::ReluShift(-0.3), false, 2e-6),
    ];
    for (op, positive, rtol) in ops {
        let (a64, a32) = if positive { (&p64, &p32) } else { (&x64, &x32) };
        let got = g.download(&g.unary(op, &g.upload(a32)));
        let want = c.download(&c.unary(op, &c.upload(a64)));
        assert_close(&format!("{op:?}"), &got, &want, 1e-6, rtol);
    }
    // Step is 0 at 0, as in PyTorch.
    let z = g.download(&g.unary(UnaryOp::Step, &g.upload(&[0.0, -0.0, 1e-30])));
    assert_eq!(z, vec![0.0, 0.0, 1.0]);
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Broadcasting binary ops, including a transposed (strided) operand: rel 1e-6, abs 1e-6.
#[test]
fn binary_broadcasting() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(3);
    let shape = [3usize, 4, 5];
    let (a64, a32) = rand_vec(&mut rng, 60, -2.0, 2.0);
    let (b64, b32) = rand_vec(&mut rng, 60, 0.5, 2.0);
    let (r64, r32) = rand_vec(&mut rng, 4, 0.5, 2.0);
    let cases: Vec<(&str, Vec<usize>, Vec<usize>, bool)> = vec![
        ("same shape", contiguous_strides(&shape), contiguous_strides(&shape), false),
        ("b broadcast over axes 0, 2", contiguous_strides(&shape), vec![0, 1, 0], true),
        ("a read transposed", vec![1, 3, 12], contiguous_strides(&shape), false),
        ("scalar b", contiguous_strides(&shape), vec![0, 0, 0], true),
    ];
    for op in rate_core::testing::BINARY_OPS {
        for (name, sa, sb, small_b) in &cases {
            let (bb64, bb32) = if *small_b { (&r64, &r32) } else { (&b64, &b32) };
            let got = g.download(&g.binary(op, &g.upload(&a32), sa, &g.upload(bb32), sb, &shape));
            let want = c.download(&c.binary(op, &c.upload(&a64), sa, &c.upload(bb64), sb, &shape));
            assert_close(&format!("{op:?} {name}"), &got, &want, 1e-6, 1e-6);
        }
    }
    // Rank 9 that merges down to fewer axes.
    let shape9 = [2usize, 1, 2, 1, 2, 1, 2, 1, 3];
    let st = contiguous_strides(&shape9);
    let (a64, a32) = rand_vec(&mut rng, 48, -1.0, 1.0);
    let got = g.download(&g.binary(BinaryOp::Add, &g.upload(&a32), &st, &g.upload(&a32), &st, &shape9));
    let want: Vec<f64> = a64.iter().map(|x| 2.0 * x).collect();
    assert_close("rank-9 add", &got, &want, 0.0, 1e-7);
}

/// Layout ops are exact copies.
#[test]
fn permute_narrow_concat_index() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(4);
    let (x64, x32) = rand_vec(&mut rng, 2 * 3 * 4 * 5, -1.0, 1.0);
    let shape = [2usize, 3, 4, 5];
    for perm in [[0usize, 1, 2, 3], [3, 2, 1, 0], [0, 2, 1, 3], [1, 3, 0, 2]] {
        let got = g.download(&g.permute(&g.upload(&x32), &shape, &perm));
        let want = c.download(&c.permute(&c.upload(&x64), &shape, &perm));
        assert_close(&format!("permute {perm:?}"), &got, &want, 0.0, 0.0);
    }
    let v = AxisView { outer: 6, len: 4, inner: 5 };
    let got = g.download(&g.narrow(&g.upload(&x32), v, 1, 2));
    let want = c.download(&c.narrow(&c.upload(&x64), v, 1, 2));
    assert_close("narrow", &got, &want, 0.0, 0.0);

    let (y64, y32) = rand_vec(&mut rng, 6 * 3 * 5, -1.0, 1.0);
    let (gx, gy) = (g.upload(&x32), g.upload(&y32));
    let (cx, cy) = (c.upload(&x64), c.upload(&y64));
    let got = g.download(&g.concat(&[&gx, &gy, &gx], 6, &[4, 3, 4], 5));
    let want = c.download(&c.concat(&[&cx, &cy, &cx], 6, &[4, 3, 4], 5));
    assert_close("concat", &got, &want, 0.0, 0.0);

    let idx = [3usize, 0, 0, 2, 3, 1, 3];
    let got = g.download(&g.index_select(&gx, v, &idx));
    let want = c.download(&c.index_select(&cx, v, &idx));
    assert_close("index_select", &got, &want, 0.0, 0.0);

    // index_add: repeats and untouched slots; sums of up to 3 terms, rel 1e-6.
    let vs = AxisView { outer: 6, len: idx.len(), inner: 5 };
    let (s64, s32) = rand_vec(&mut rng, 6 * idx.len() * 5, -1.0, 1.0);
    let got = g.download(&g.index_add(&g.upload(&s32), vs, &idx, 6));
    let want = c.download(&c.index_add(&c.upload(&s64), vs, &idx, 6));
    assert_close("index_add", &got, &want, 1e-6, 1e-6);
}

/// Reductions: sums rel 1e-5 + abs 1e-5 sqrt(len); max/min/argmax exact.
#[test]
fn reductions_and_softmax() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(5);
    let views = [
        AxisView { outer: 1, len: 1, inner: 1 },
        AxisView { outer: 7, len: 13, inner: 1 },
        AxisView { outer: 1, len: 13, inner: 9 },
        AxisView { outer: 5, len: 11, inner: 6 },
        AxisView { outer: 3, len: 5000, inner: 1 }, // one workgroup per line
        AxisView { outer: 2, len: 300, inner: 3 },  // one workgroup per line, strided
        AxisView { outer: 5000, len: 3, inner: 2 },
    ];
    for v in views {
        let (x64, x32) = rand_vec(&mut rng, v.numel(), -3.0, 3.0);
        let (gx, cx) = (g.upload(&x32), c.upload(&x64));
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax] {
            let got = g.download(&g.reduce(op, &gx, v));
            let want = c.download(&c.reduce(op, &cx, v));
            let (atol, rtol) =
                if op == ReduceOp::Sum { (1e-5 * (v.len as f64).sqrt() * 3.0, 1e-5) } else { (0.0, 0.0) };
            assert_close(&format!("{op:?} {v:?}"), &got, &want, atol, rtol);
        }
        let got = g.download(&g.softmax(&gx, v));
        let want = c.download(&c.softmax(&cx, v));
        assert_close(&format!("softmax {v:?}"), &got, &want, 1e-7, 2e-5);
    }
    // argmax takes the first of equal maxima.
    let x = [1.0f32, 3.0, 3.0, 2.0];
    let got = g.download(&g.reduce(ReduceOp::ArgMax, &g.upload(&x), AxisView { outer: 1, len: 4, inner: 1 }));
    assert_eq!(got, vec![1.0]);
    let xl: Vec<f32> = (0..1000).map(|i| if i == 300 || i == 700 { 5.0 } else { 0.0 }).collect();
    let got =
        g.download(&g.reduce(ReduceOp::ArgMax, &g.upload(&xl), AxisView { outer: 1, len: 1000, inner: 1 }));
    assert_eq!(got, vec![300.0]);
}

/// Matmul: abs 1e-5 sqrt(k) (entries of size ~1), over all transposes, shared operands and both tile kernels
/// (the last size: a batch of short A against one B, folded into one tall product).
#[test]
fn matmul_all_variants() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(6);
    let sizes = [
        (1usize, 1usize, 1usize, 1usize),
        (3, 5, 7, 4),
        (2, 17, 33, 19),
        (2, 70, 65, 130),
        (1, 128, 64, 96),
        (6, 50, 40, 70),
    ];
    for (batch, m, k, n) in sizes {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            for (a_batched, b_batched) in [(true, true), (false, true), (true, false)] {
                let spec = MatmulSpec { batch, m, k, n, trans_a, trans_b, a_batched, b_batched };
                let na = if a_batched { batch } else { 1 } * m * k;
                let nb = if b_batched { batch } else { 1 } * k * n;
                let (a64, a32) = rand_vec(&mut rng, na, -1.0, 1.0);
                let (b64, b32) = rand_vec(&mut rng, nb, -1.0, 1.0);
                let got = g.download(&g.matmul(&g.upload(&a32), &g.upload(&b32), spec));
                let want = c.download(&c.matmul(&c.upload(&a64), &c.upload(&b64), spec));
                assert_close(&format!("{spec:?}"), &got, &want, 1e-5 * (k as f64).sqrt(), 1e-5);
            }
        }
    }
    // k = 0 gives zeros.
    let spec = MatmulSpec {
        batch: 1,
        m: 2,
        k: 0,
        n: 3,
        trans_a: false,
        trans_b: false,
        a_batched: true,
        b_batched: true,
    };
    assert_eq!(g.download(&g.matmul(&g.upload(&[]), &g.upload(&[]), spec)), vec![0.0; 6]);
}

/// SPD family on `X X^T / n + I` (condition < ~5): factors, solves and inverses
/// abs 2e-5 sqrt(n), log-determinants rel 1e-5 + abs 1e-4.
#[test]
fn spd_cholesky_solve_inverse_logdet() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(7);
    // n <= 64: one workgroup per matrix (one thread per matrix for 300 x 12); n > 64: blocked (ragged last block for 100).
    for (batch, n, nrhs) in
        [(1usize, 1usize, 1usize), (5, 3, 2), (40, 20, 3), (3, 64, 5), (2, 100, 7), (1, 160, 1)]
    {
        let (a64, a32) = spd_batch(&mut rng, batch, n);
        let (b64, b32) = rand_vec(&mut rng, batch * n * nrhs, -1.0, 1.0);
        let (ga, ca) = (g.upload(&a32), c.upload(&a64));
        let tol = 2e-5 * (n as f64).sqrt();
        let what = format!("batch {batch} n {n}");
        let got = g.download(&g.cholesky(&ga, batch, n).expect("wgpu cholesky"));
        let want = c.download(&c.cholesky(&ca, batch, n).expect("cpu cholesky"));
        assert_close(&format!("cholesky {what}"), &got, &want, tol, 1e-5);
        let got = g.download(&g.spd_solve(&ga, &g.upload(&b32), batch, n, nrhs).expect("wgpu solve"));
        let want = c.download(&c.spd_solve(&ca, &c.upload(&b64), batch, n, nrhs).expect("cpu solve"));
        assert_close(&format!("spd_solve {what}"), &got, &want, tol, 1e-5);
        let got = g.download(&g.spd_inverse(&ga, batch, n).expect("wgpu inverse"));
        let want = c.download(&c.spd_inverse(&ca, batch, n).expect("cpu inverse"));
        assert_close(&format!("spd_inverse {what}"), &got, &want, tol, 1e-5);
        let got = g.download(&g.spd_logdet(&ga, batch, n).expect("wgpu logdet"));
        let want = c.download(&c.spd_logdet(&ca, batch, n).expect("cpu logdet"));
        assert_close(&format!("spd_logdet {what}"), &got, &want, 1e-4, 1e-5);
    }
}

/// A matrix of the batch that is not positive definite is an error naming it, for every SPD entry point and both paths.
#[test]
fn spd_not_positive_definite_is_an_error() {
    let g = gpu_or_skip!();
    let mut rng = StdRng::seed_from_u64(8);
    for (batch, n, bad, bad_row) in
        [(4usize, 6usize, 2usize, 3usize), (3, 90, 1, 70), (2, 5, 0, 0), (300, 4, 257, 2)]
    {
        let (_, mut a32) = spd_batch(&mut rng, batch, n);
        // Make the leading (bad_row + 1) block singular-negative: A[r][r] = -1 in matrix `bad` kills pivot r.
        let base = bad * n * n;
        for q in 0..n {
            a32[base + bad_row * n + q] = 0.0;
            a32[base + q * n + bad_row] = 0.0;
        }
        a32[base + bad_row * n + bad_row] = -1.0;
        let ga = g.upload(&a32);
        let b = g.upload(&vec![1.0; batch * n]);
        let results = [
            ("cholesky", g.cholesky(&ga, batch, n).map(|_| ())),
            ("spd_solve", g.spd_solve(&ga, &b, batch, n, 1).map(|_| ())),
            ("spd_inverse", g.spd_inverse(&ga, batch, n).map(|_| ())),
            ("spd_logdet", g.spd_logdet(&ga, batch, n).map(|_| ())),
        ];
        for (name, r) in results {
            match r {
                Err(Error::NotPositiveDefinite { op, index, n: nn, row, pivot }) => {
                    assert_eq!(op, name);
                    assert_eq!((index, nn, row), (bad, n, bad_row), "{name}");
                    assert!(pivot <= 0.0, "{name}: pivot {pivot}");
                }
                other => panic!("{name} batch {batch} n {n}: expected NotPositiveDefinite, got {other:?}"),
            }
        }
    }
    // NaN input is reported too, not returned as NaN.
    let nan = g.upload(&[f32::NAN, 0.0, 0.0, 1.0]);
    assert!(matches!(g.spd_inverse(&nan, 1, 2), Err(Error::NotPositiveDefinite { .. })));
}

/// Complex Hermitian matrices `Z Z^H / n + I`: inverse/solve abs 2e-5 sqrt(n), logdet abs 1e-4.
#[test]
fn hermitian_inverse_solve_logdet() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(9);
    for (batch, n, nrhs) in [(1usize, 1usize, 1usize), (7, 4, 2), (30, 16, 3), (300, 5, 2), (2, 70, 2)] {
        let (zr, _) = rand_vec(&mut rng, batch * n * n, -1.0, 1.0);
        let (zi, _) = rand_vec(&mut rng, batch * n * n, -1.0, 1.0);
        let mut re = vec![0f32; batch * n * n];
        let mut im = vec![0f32; batch * n * n];
        for b in 0..batch {
            let o = b * n * n;
            for i in 0..n {
                for j in 0..n {
                    // (Z Z^H)_ij = sum_q z_iq conj(z_jq)
                    let (mut sr, mut si) = (0.0, 0.0);
                    for q in 0..n {
                        let (ar, ai) = (zr[o + i * n + q], zi[o + i * n + q]);
                        let (br, bi) = (zr[o + j * n + q], -zi[o + j * n + q]);
                        sr += ar * br - ai * bi;
                        si += ar * bi + ai * br;
                    }
                    re[o + i * n + j] = (sr / n as f64 + if i == j { 1.0 } else { 0.0 }) as f32;
                    im[o + i * n + j] = (si / n as f64) as f32;
                }
            }
        }
        let re64: Vec<f64> = re.iter().map(|&x| x as f64).collect();
        let im64: Vec<f64> = im.iter().map(|&x| x as f64).collect();
        let (gr, gi) = (g.upload(&re), g.upload(&im));
        let (cr, ci) = (c.upload(&re64), c.upload(&im64));
        let tol = 2e-5 * (n as f64).sqrt();
        let what = format!("batch {batch} n {n}");
        let (xr, xi) = g.herm_inverse(&gr, &gi, batch, n).expect("wgpu herm_inverse");
        let (wr, wi) = c.herm_inverse(&cr, &ci, batch, n).expect("cpu herm_inverse");
        assert_close(&format!("herm_inverse re {what}"), &g.download(&xr), &c.download(&wr), tol, 1e-5);
        assert_close(&format!("herm_inverse im {what}"), &g.download(&xi), &c.download(&wi), tol, 1e-5);
        let (br64, br32) = rand_vec(&mut rng, batch * n * nrhs, -1.0, 1.0);
        let (bi64, bi32) = rand_vec(&mut rng, batch * n * nrhs, -1.0, 1.0);
        let (xr, xi) = g
            .herm_solve((&gr, &gi), (&g.upload(&br32), &g.upload(&bi32)), batch, n, nrhs)
            .expect("wgpu herm_solve");
        let (wr, wi) = c
            .herm_solve((&cr, &ci), (&c.upload(&br64), &c.upload(&bi64)), batch, n, nrhs)
            .expect("cpu herm_solve");
        assert_close(&format!("herm_solve re {what}"), &g.download(&xr), &c.download(&wr), tol, 1e-5);
        assert_close(&format!("herm_solve im {what}"), &g.download(&xi), &c.download(&wi), tol, 1e-5);
        let got = g.download(&g.herm_logdet(&gr, &gi, batch, n).expect("wgpu herm_logdet"));
        let want = c.download(&c.herm_logdet(&cr, &ci, batch, n).expect("cpu herm_logdet"));
        assert_close(&format!("herm_logdet {what}"), &got, &want, 1e-4, 1e-5);
    }
    // Not positive definite: matrix 1 of 2 has a negative diagonal.
    let mut re = vec![0f32; 2 * 4];
    re[0] = 1.0;
    re[3] = 1.0;
    re[4] = 1.0;
    re[7] = -2.0;
    let im = vec![0f32; 8];
    match g.herm_logdet(&g.upload(&re), &g.upload(&im), 2, 2) {
        Err(Error::NotPositiveDefinite { op: "herm_logdet", index: 1, row: 1, .. }) => {}
        other => panic!("expected NotPositiveDefinite for matrix 1 row 1, got {other:?}"),
    }
}

/// sym_eigen (host Jacobi): eigenvalues abs 1e-5 max|lambda|, and `A v = lambda v` to 1e-5.
#[test]
fn sym_eigen_matches_the_reference() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(10);
    for (batch, n) in [(1usize, 1usize), (3, 5), (2, 24)] {
        let (x, _) = rand_vec(&mut rng, batch * n * n, -1.0, 1.0);
        let mut a32 = vec![0f32; batch * n * n];
        for b in 0..batch {
            for i in 0..n {
                for j in 0..n {
                    let o = b * n * n;
                    a32[o + i * n + j] = ((x[o + i * n + j] + x[o + j * n + i]) / 2.0) as f32;
                }
            }
        }
        let a64: Vec<f64> = a32.iter().map(|&v| v as f64).collect();
        let (gv, gu) = g.sym_eigen(&g.upload(&a32), batch, n).expect("wgpu sym_eigen");
        let (cv, _) = c.sym_eigen(&c.upload(&a64), batch, n).expect("cpu sym_eigen");
        let (vals, vecs) = (g.download(&gv), g.download(&gu));
        let want = c.download(&cv);
        assert_close(
            &format!("eigenvalues batch {batch} n {n}"),
            &vals,
            &want,
            1e-5 * max_abs(&want).max(1.0),
            0.0,
        );
        for b in 0..batch {
            for col in 0..n {
                for i in 0..n {
                    let av: f64 = (0..n)
                        .map(|q| a64[b * n * n + i * n + q] * vecs[b * n * n + q * n + col] as f64)
                        .sum();
                    let lv = vals[b * n + col] as f64 * vecs[b * n * n + i * n + col] as f64;
                    assert!(
                        (av - lv).abs() < 1e-5,
                        "A v != lambda v: matrix {b} vector {col} row {i}: {av} vs {lv}"
                    );
                }
            }
        }
    }
}

fn fft_tol(n: usize, scale: f64) -> f64 {
    // f32 rounding grows like log2(n); Bluestein adds two more transforms of length ~4n.
    2e-6 * ((n as f64).log2() + 4.0) * scale
}

/// Complex FFT along inner/outer axes, forward and inverse, both norms, radix-2 (shared and Stockham) and Bluestein lengths.
#[test]
fn complex_fft() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(11);
    for len in [1usize, 2, 3, 5, 8, 12, 64, 200, 1000, 4096] {
        for (outer, inner) in [(3usize, 1usize), (2, 3)] {
            let v = AxisView { outer, len, inner };
            let (re64, re32) = rand_vec(&mut rng, v.numel(), -1.0, 1.0);
            let (im64, im32) = rand_vec(&mut rng, v.numel(), -1.0, 1.0);
            let (gr, gi) = (g.upload(&re32), g.upload(&im32));
            let (cr, ci) = (c.upload(&re64), c.upload(&im64));
            for inverse in [false, true] {
                for norm in [FftNorm::Backward, FftNorm::Ortho] {
                    let (yr, yi) = g.fft(&gr, &gi, v, inverse, norm);
                    let (wr, wi) = c.fft(&cr, &ci, v, inverse, norm);
                    let (wr, wi) = (c.download(&wr), c.download(&wi));
                    let scale = max_abs(&wr).max(max_abs(&wi)).max(1.0);
                    let tol = fft_tol(len, scale);
                    let what =
                        format!("fft len {len} outer {outer} inner {inner} inverse {inverse} {norm:?}");
                    assert_close(&format!("{what} re"), &g.download(&yr), &wr, tol, 0.0);
                    assert_close(&format!("{what} im"), &g.download(&yi), &wi, tol, 0.0);
                }
            }
        }
    }
}

/// rfft / irfft for even and odd lengths, both norms, and irfft(rfft(x)) = x.
#[test]
fn real_fft_and_inverse() {
    let g = gpu_or_skip!();
    let c = cpu();
    let mut rng = StdRng::seed_from_u64(12);
    for n in [1usize, 2, 7, 16, 30, 200, 1024, 3000] {
        for (outer, inner) in [(4usize, 1usize), (2, 3)] {
            let v = AxisView { outer, len: n, inner };
            let (x64, x32) = rand_vec(&mut rng, v.numel(), -1.0, 1.0);
            let (gx, cx) = (g.upload(&x32), c.upload(&x64));
            for norm in [FftNorm::Backward, FftNorm::Ortho] {
                let what = format!("n {n} outer {outer} inner {inner} {norm:?}");
                let (yr, yi) = g.rfft(&gx, v, norm);
                let (wr, wi) = c.rfft(&cx, v, norm);
                let (wr64, wi64) = (c.download(&wr), c.download(&wi));
                let tol = fft_tol(n, max_abs(&wr64).max(max_abs(&wi64)).max(1.0));
                assert_close(&format!("rfft {what} re"), &g.download(&yr), &wr64, tol, 0.0);
                assert_close(&format!("rfft {what} im"), &g.download(&yi), &wi64, tol, 0.0);
                // irfft of the reference half spectrum (rounded to f32), against the CPU irfft of the same input.
                let h = n / 2 + 1;
                let hv = AxisView { outer, len: h, inner };
                let sr32: Vec<f32> = wr64.iter().map(|&x| x as f32).collect();
                let si32: Vec<f32> = wi64.iter().map(|&x| x as f32).collect();
                let sr: Vec<f64> = sr32.iter().map(|&x| x as f64).collect();
                let si: Vec<f64> = si32.iter().map(|&x| x as f64).collect();
                let got = g.download(&g.irfft(&g.upload(&sr32), &g.upload(&si32), hv, n, norm));
                let want = c.download(&c.irfft(&c.upload(&sr), &c.upload(&si), hv, n, norm));
                assert_close(&format!("irfft {what}"), &got, &want, fft_tol(n, 1.0) * 2.0, 0.0);
                let back = g.download(&g.irfft(&yr, &yi, hv, n, norm));
                let back_want: Vec<f64> = match norm {
                    FftNorm::Backward | FftNorm::Ortho => x64.clone(),
                };
                assert_close(&format!("irfft(rfft) {what}"), &back, &back_want, fft_tol(n, 1.0) * 2.0, 0.0);
            }
        }
    }
}

/// Grids beyond 65535 workgroups in one dimension (2-D grids and batch chunking).
#[test]
fn large_grids() {
    let g = gpu_or_skip!();
    let c = cpu();
    // 1-D kernel over more than 65535 * 256 threads.
    let n = 65535 * 256 + 1000;
    let v = g.download(&g.full(n, 1.5));
    assert_eq!(v.len(), n);
    assert!(v[n - 1000..].iter().all(|&x| x == 1.5) && v[0] == 1.5);
    drop(v);
    // Matmul batch above the z-dimension limit.
    let mut rng = StdRng::seed_from_u64(14);
    let batch = 65535 + 100;
    let spec = MatmulSpec {
        batch,
        m: 2,
        k: 3,
        n: 2,
        trans_a: false,
        trans_b: true,
        a_batched: true,
        b_batched: false,
    };
    let (a64, a32) = rand_vec(&mut rng, batch * 6, -1.0, 1.0);
    let (b64, b32) = rand_vec(&mut rng, 6, -1.0, 1.0);
    let got = g.download(&g.matmul(&g.upload(&a32), &g.upload(&b32), spec));
    let want = c.download(&c.matmul(&c.upload(&a64), &c.upload(&b64), spec));
    assert_close("matmul batch 65635", &got, &want, 1e-6, 1e-6);
    // One workgroup per signal for more than 65535 signals.
    let v = AxisView { outer: 70_000, len: 8, inner: 1 };
    let (x64, x32) = rand_vec(&mut rng, v.numel(), -1.0, 1.0);
    let (yr, yi) = g.rfft(&g.upload(&x32), v, FftNorm::Backward);
    let (wr, wi) = c.rfft(&c.upload(&x64), v, FftNorm::Backward);
    assert_close("rfft 70000 x 8 re", &g.download(&yr), &c.download(&wr), 1e-5, 0.0);
    assert_close("rfft 70000 x 8 im", &g.download(&yi), &c.download(&wi), 1e-5, 0.0);
}

/// A chain of operations with no read-back in between (buffers freed and reused
/// from the pool along the way): rows of `S^-1 S` sum to 1 within 1e-4.
#[test]
fn chained_ops_without_readback() {
    let g = gpu_or_skip!();
    let mut rng = StdRng::seed_from_u64(13);
    let (_, a32) = rand_vec(&mut rng, 30 * 20, -1.0, 1.0);
    let spec = MatmulSpec {
        batch: 1,
        m: 20,
        k: 30,
        n: 20,
        trans_a: true,
        trans_b: false,
        a_batched: true,
        b_batched: true,
    };
    // S = A^T A / 30 + I; then inverse, then S^-1 S = I, then row sums.
    let run = || {
        let a = g.upload(&a32);
        let s = g.matmul(&a, &a, spec);
        let s = g.unary(UnaryOp::MulScalar(1.0 / 30.0), &s);
        let eye: Vec<f32> = (0..400).map(|i| if i % 21 == 0 { 1.0 } else { 0.0 }).collect();
        let s = g.binary(BinaryOp::Add, &s, &[20, 1], &g.upload(&eye), &[20, 1], &[20, 20]);
        let inv = g.spd_inverse(&s, 1, 20).expect("inverse");
        let spec2 = MatmulSpec { k: 20, trans_a: false, ..spec };
        let p = g.matmul(&inv, &s, spec2);
        g.download(&g.reduce(ReduceOp::Sum, &p, AxisView { outer: 20, len: 20, inner: 1 }))
    };
    let got = run();
    assert_close("rows of S^-1 S", &got, &[1.0; 20], 1e-4, 0.0);
}
