//! Elementwise ops on both sides of the size where the CPU backend splits streaming work across threads: every path of `Backend::unary` and `Backend::binary` (contiguous, bias row, broadcast column, broadcast leading axis) equals the host loop exactly.
use backend_cpu::CpuBackend;
use rate_core::Tensor;

type Be = CpuBackend<f64>;

fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f64 / 1001.0 - 1.0).collect()
}

/// `[rows, cols]` with `rows * cols` below and above 2^20 elements.
const SHAPES: [(usize, usize); 3] = [(37, 129), (1031, 1021), (2049, 513)];

#[test]
fn unary_ops_equal_the_host_loop_at_every_size() {
    let be = Be::new();
    for (rows, cols) in SHAPES {
        let x = values(rows * cols, 1);
        let t = Tensor::from_f64(&be, &x, &[rows, cols]);
        let cases: [(&str, Tensor<Be>, fn(f64) -> f64); 4] = [
            ("relu", t.relu(), |v| v.max(0.0)),
            ("step", t.step(), |v| if v > 0.0 { 1.0 } else { 0.0 }),
            ("add_scalar", t.add_scalar(0.25), |v| v + 0.25),
            ("scale", t.scale(-3.0), |v| v * -3.0),
        ];
        for (name, got, f) in cases {
            let want: Vec<f64> = x.iter().map(|&v| f(v)).collect();
            assert_eq!(got.shape(), &[rows, cols], "{name} at {rows}x{cols}: shape");
            assert!(got.to_f64_vec() == want, "{name} at {rows}x{cols} differs from the host loop");
        }
    }
}

#[test]
fn binary_ops_equal_the_host_loop_for_every_broadcast_at_every_size() {
    let be = Be::new();
    for (rows, cols) in SHAPES {
        let a = values(rows * cols, 2);
        let b = values(rows * cols, 3);
        let row = values(cols, 4);
        let col = values(rows, 5);
        let ta = Tensor::from_f64(&be, &a, &[rows, cols]);
        let at = |i: usize, j: usize| a[i * cols + j];
        let check = |name: &str, got: Tensor<Be>, want: &dyn Fn(usize, usize) -> f64| {
            assert_eq!(got.shape(), &[rows, cols], "{name} at {rows}x{cols}: shape");
            let got = got.to_f64_vec();
            for i in 0..rows {
                for j in 0..cols {
                    let w = want(i, j);
                    assert!(
                        got[i * cols + j] == w,
                        "{name} at {rows}x{cols} [{i},{j}]: {} vs {w}",
                        got[i * cols + j]
                    );
                }
            }
        };
        check("a - b", ta.sub(&Tensor::from_f64(&be, &b, &[rows, cols])), &|i, j| at(i, j) - b[i * cols + j]);
        check("a + row", ta.add(&Tensor::from_f64(&be, &row, &[cols])), &|i, j| at(i, j) + row[j]);
        check("a * column", ta.mul(&Tensor::from_f64(&be, &col, &[rows, 1])), &|i, j| at(i, j) * col[i]);
        check("column - a", Tensor::from_f64(&be, &col, &[rows, 1]).sub(&ta), &|i, j| col[i] - at(i, j));
        check("row / (a + 3)", Tensor::from_f64(&be, &row, &[1, cols]).div(&ta.add_scalar(3.0)), &|i, j| {
            row[j] / (at(i, j) + 3.0)
        });
        // a leading axis broadcast inside a 3-D shape: [2, 1, cols] against [2, rows/2, cols]
        let half = rows / 2;
        let t3 = Tensor::from_f64(&be, &a[..2 * half * cols], &[2, half, cols]);
        let lead = values(2 * cols, 6);
        let got = t3.mul(&Tensor::from_f64(&be, &lead, &[2, 1, cols])).to_f64_vec();
        for (k, g) in got.iter().enumerate() {
            let (s, j) = (k / (half * cols), k % cols);
            assert!(*g == a[k] * lead[s * cols + j], "[2,{half},{cols}] * [2,1,{cols}] at {k}");
        }
    }
}

/// LayerNorm (forward and backward) and the row softmax (forward and
/// backward) give bitwise the same results when called from a pool task,
/// where they run row by row on the calling thread, as when called from
/// outside, where large inputs are split across the pool.
#[test]
fn row_kernels_are_identical_nested_in_the_pool_and_outside() {
    use rate_core::kernels::{layer_norm, layer_norm_backward, softmax_backward};
    for precision in ["f32", "f64"] {
        for (rows, dim) in [(3, 5), (300, 128), (700, 65)] {
            let run =
                |be: &dyn Fn(&[f64], &[usize]) -> Vec<Vec<f64>>| be(&values(rows * dim, 7), &[rows, dim]);
            fn kernels<B: rate_core::Kernels>(be: &B, x: &[f64], shape: &[usize]) -> Vec<Vec<f64>> {
                let d = shape[1];
                let x = Tensor::from_f64(be, x, shape);
                let g = Tensor::from_f64(be, &values(x.numel(), 8), shape);
                let w = Tensor::from_f64(be, &values(d, 9), &[d]);
                let b = Tensor::from_f64(be, &values(d, 10), &[d]);
                let (y, mean, rstd) = layer_norm(&x, &w, &b, 1e-5);
                let (dx, dw, db) = layer_norm_backward(&x, &mean, &rstd, &w, &g);
                let s = x.scale(3.0).softmax(-1);
                let ds = softmax_backward(&s, &g);
                [y, mean, rstd, dx, dw, db, s, ds].iter().map(|t| t.to_f64_vec()).collect()
            }
            let f32_be = CpuBackend::<f32>::new();
            let f64_be = CpuBackend::<f64>::new();
            let compute = |x: &[f64], shape: &[usize]| match precision {
                "f32" => kernels(&f32_be, x, shape),
                _ => kernels(&f64_be, x, shape),
            };
            let outside = run(&compute);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool");
            let nested = pool.install(|| run(&compute));
            assert_eq!(outside.len(), nested.len());
            for (k, (a, b)) in outside.iter().zip(&nested).enumerate() {
                assert!(a == b, "{precision} {rows}x{dim}: output {k} differs between the two paths");
            }
        }
    }
}
