//! Conformance checks of the memory, elementwise, layout and reduction primitives against plain f64 references.

use super::reference::*;
use super::*;
use crate::{AxisView, Backend, BinaryOp, Element, ReduceOp, Tensor, UnaryOp};

// ====================================================================
// Checks: memory and transfer
// ====================================================================

/// `upload` then `download` returns the values unchanged (after rounding to
/// the element type), `len` counts them, empty buffers work, and `name` is not empty.
pub fn check_upload_download<B: Backend>(b: &B) {
    assert!(!b.name().is_empty(), "name() is empty");
    let mut r = rng(1);
    for n in [0usize, 1, 7, 1000, 40_000] {
        let data = uniform(&mut r, n, -1e3, 1e3);
        let host: Vec<B::Elem> = data.iter().map(|&x| B::Elem::of(x)).collect();
        let buf = b.upload(&host);
        assert_eq!(b.len(&buf), n, "len() after upload of {n} values");
        let back = b.download(&buf);
        assert!(back == host, "download(upload(x)) != x for {n} values");
    }
    // Special values survive the round trip.
    let special: Vec<B::Elem> =
        [0.0, -0.0, 1e-30, -1e30, f64::INFINITY, f64::NEG_INFINITY].iter().map(|&x| B::Elem::of(x)).collect();
    let back = b.download(&b.upload(&special));
    assert!(back.iter().zip(&special).all(|(x, y)| x == y), "special values: {back:?} vs {special:?}");
    let back = b.download(&b.upload(&[B::Elem::nan()]));
    assert!(back.len() == 1 && back[0].is_nan(), "NaN does not survive upload/download: {back:?}");
}

/// `full(len, v)` holds `len` copies of `v`, including `len = 0`.
pub fn check_full<B: Backend>(b: &B) {
    for (n, v) in [(0usize, 1.0), (1, -2.5), (17, 0.0), (40_000, 3.25)] {
        let buf = b.full(n, B::Elem::of(v));
        assert_eq!(b.len(&buf), n, "len(full({n}))");
        let got: Vec<f64> = b.download(&buf).into_iter().map(|x| x.f64()).collect();
        assert!(got.iter().all(|&x| x == v), "full({n}, {v}) holds other values");
    }
    let t = Tensor::<B>::full(b, &[2, 3], 7.0);
    assert_eq!(t.to_f64_vec(), vec![7.0; 6]);
}

// ====================================================================
// Checks: elementwise
// ====================================================================

/// Every [`UnaryOp`] against its f64 definition, including the points where
/// ReLU, Step and the soft threshold switch (0 and ±lambda).
pub fn check_unary<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(2);
    let mut signed = uniform(&mut r, 200, -3.0, 3.0);
    signed.extend([0.0, 0.5, -0.5, 1.0, -1.0, 1e-3, -1e-3]);
    let positive = uniform(&mut r, 200, 0.05, 4.0);
    let ops: Vec<(UnaryOp, &Vec<f64>)> = vec![
        (UnaryOp::Neg, &signed),
        (UnaryOp::Exp, &signed),
        (UnaryOp::Log, &positive),
        (UnaryOp::Sqrt, &positive),
        (UnaryOp::Abs, &signed),
        (UnaryOp::Square, &signed),
        (UnaryOp::Recip, &positive),
        (UnaryOp::Relu, &signed),
        (UnaryOp::Step, &signed),
        (UnaryOp::SoftThreshold(0.5), &signed),
        (UnaryOp::SoftThreshold(0.0), &signed),
        (UnaryOp::AddScalar(-1.25), &signed),
        (UnaryOp::MulScalar(0.3), &signed),
        (UnaryOp::ClampMin(-0.5), &signed),
        (UnaryOp::ClampMax(0.5), &signed),
        (UnaryOp::ReluShift(-0.25), &signed),
        (UnaryOp::ReluShift(0.5), &signed),
    ];
    for (op, data) in ops {
        let (t, x) = input(b, data, &[data.len()]);
        let got = t.unary(op).to_f64_vec();
        let want: Vec<f64> = x.iter().map(|&v| ref_unary(op, v)).collect();
        assert_close(&format!("unary {op:?}"), &got, &want, tol);
    }
    // Large buffers (parallel paths) and empty ones.
    let (t, x) = random_input(b, &mut r, &[300, 200], -2.0, 2.0);
    let want: Vec<f64> = x.iter().map(|&v| ref_unary(UnaryOp::SoftThreshold(0.7), v)).collect();
    assert_close("unary SoftThreshold, 60000 elements", &t.soft_threshold(0.7).to_f64_vec(), &want, tol);
    assert_eq!(Tensor::<B>::zeros(b, &[0, 3]).exp().to_f64_vec(), Vec::<f64>::new());
}

/// Every [`BinaryOp`], for conformance tests that loop over them.
pub const BINARY_OPS: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::WherePositive,
];

/// Every [`BinaryOp`] on equal shapes, small and large (parallel path).
pub fn check_binary<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(3);
    for shape in [vec![1usize], vec![5], vec![3, 4], vec![2, 3, 4], vec![256, 160]] {
        let (ta, a) = random_input(b, &mut r, &shape, -2.0, 2.0);
        // Denominators away from 0: |b| in [0.5, 2].
        let bd: Vec<f64> = uniform(&mut r, a.len(), 0.5, 2.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v } else { -v })
            .collect();
        let (tb, bv) = input(b, &bd, &shape);
        for op in BINARY_OPS {
            let got = ta.binary(op, &tb).to_f64_vec();
            let want: Vec<f64> = a.iter().zip(&bv).map(|(&x, &y)| ref_binary_scalar(op, x, y)).collect();
            assert_close(&format!("binary {op:?} on {shape:?}"), &got, &want, tol);
        }
    }
}

/// Every [`BinaryOp`] with NumPy broadcasting: either side broadcast, both
/// sides at once, rank-0 and rank-1 operands, and a large broadcast.
pub fn check_binary_broadcast<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(4);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 4], vec![3, 1]),
        (vec![2, 3, 4], vec![1, 4]),
        (vec![2, 3, 4], vec![2, 1, 4]),
        (vec![2, 3, 4], vec![4]),
        (vec![2, 3, 4], vec![]),
        (vec![4], vec![2, 3, 4]),
        (vec![3, 1], vec![1, 4]),
        (vec![2, 1, 1], vec![1, 3, 4]),
        (vec![1, 3, 1, 5], vec![2, 1, 4, 1]),
        (vec![300, 1], vec![1, 128]),
        (vec![0, 3], vec![1, 3]),
    ];
    for (sa, sb) in cases {
        let (ta, a) = random_input(b, &mut r, &sa, -2.0, 2.0);
        let nb: usize = sb.iter().product();
        let (tb, bv) = input(b, &uniform(&mut r, nb, 0.5, 2.0), &sb);
        for op in BINARY_OPS {
            let out = ta.binary(op, &tb);
            let (want, shape) = ref_broadcast(op, &a, &sa, &bv, &sb);
            assert_eq!(out.shape(), &shape[..], "binary {op:?}: {sa:?} with {sb:?}");
            assert_close(&format!("binary {op:?}: {sa:?} with {sb:?}"), &out.to_f64_vec(), &want, tol);
        }
    }
}

/// [`Backend::binary`] called directly with general (non-contiguous) strides:
/// `a` read transposed, `b` broadcast along rows.
pub fn check_binary_strided<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(5);
    let (rows, cols) = (5usize, 7usize);
    // a is stored cols x rows and read as its transpose.
    let a = rounded::<B>(&uniform(&mut r, rows * cols, -1.0, 1.0));
    let bv = rounded::<B>(&uniform(&mut r, cols, -1.0, 1.0));
    let ea: Vec<B::Elem> = a.iter().map(|&x| B::Elem::of(x)).collect();
    let eb: Vec<B::Elem> = bv.iter().map(|&x| B::Elem::of(x)).collect();
    let out = b.binary(BinaryOp::Sub, &b.upload(&ea), &[1, rows], &b.upload(&eb), &[0, 1], &[rows, cols]);
    let got: Vec<f64> = b.download(&out).into_iter().map(|x| x.f64()).collect();
    let want: Vec<f64> = (0..rows * cols).map(|o| a[(o % cols) * rows + o / cols] - bv[o % cols]).collect();
    assert_close("binary Sub with transposed strides", &got, &want, tol);
}

// ====================================================================
// Checks: layout
// ====================================================================

/// `permute` of rank 2 to 4 tensors against index arithmetic (exact).
pub fn check_permute<B: Backend>(b: &B) {
    let mut r = rng(6);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 5], vec![1, 0]),
        (vec![2, 3, 4], vec![2, 0, 1]),
        (vec![2, 3, 4], vec![1, 2, 0]),
        (vec![2, 3, 4], vec![0, 2, 1]),
        (vec![2, 3, 4, 5], vec![3, 1, 0, 2]),
        (vec![64, 48, 12], vec![2, 1, 0]),
        (vec![2, 0, 3], vec![2, 1, 0]),
    ];
    for (shape, perm) in cases {
        let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let out = t.permute(&perm);
        let want_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        assert_eq!(out.shape(), &want_shape[..], "permute {shape:?} by {perm:?}");
        assert_close(
            &format!("permute {shape:?} by {perm:?}"),
            &out.to_f64_vec(),
            &ref_permute(&x, &shape, &perm),
            0.0,
        );
    }
    // t() of a batch swaps the last two axes.
    let (t, x) = random_input(b, &mut r, &[3, 2, 5], -1.0, 1.0);
    assert_close("t() of [3, 2, 5]", &t.t().to_f64_vec(), &ref_permute(&x, &[3, 2, 5], &[0, 2, 1]), 0.0);
}

/// `narrow` along the first, a middle and the last axis, including a zero count (exact).
pub fn check_narrow<B: Backend>(b: &B) {
    let mut r = rng(7);
    let shape = [3usize, 6, 4];
    let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
    for (axis, start, count) in
        [(0usize, 1usize, 2usize), (1, 2, 3), (1, 0, 6), (2, 3, 1), (1, 4, 0), (0, 3, 0)]
    {
        let out = t.narrow(axis as isize, start, count);
        let mut ws = shape.to_vec();
        ws[axis] = count;
        assert_eq!(out.shape(), &ws[..]);
        let want: Vec<f64> = (0..ws.iter().product::<usize>())
            .map(|o| {
                let mut j = unravel(o, &ws);
                j[axis] += start;
                x[j.iter().zip(contiguous_strides(&shape)).map(|(a, s)| a * s).sum::<usize>()]
            })
            .collect();
        assert_close(&format!("narrow axis {axis} [{start}, +{count})"), &out.to_f64_vec(), &want, 0.0);
    }
}

/// `concat` of three parts of different lengths (one empty) along each axis (exact).
pub fn check_concat<B: Backend>(b: &B) {
    let mut r = rng(8);
    for axis in 0..3usize {
        let lens = [2usize, 0, 3];
        let mut parts = Vec::new();
        for &l in &lens {
            let mut s = vec![2usize, 3, 4];
            s[axis] = l;
            parts.push((random_input(b, &mut r, &s, -1.0, 1.0), s));
        }
        let refs: Vec<&Tensor<B>> = parts.iter().map(|((t, _), _)| t).collect();
        let out = Tensor::cat(&refs, axis as isize);
        let mut ws = vec![2usize, 3, 4];
        ws[axis] = lens.iter().sum();
        assert_eq!(out.shape(), &ws[..]);
        let want: Vec<f64> = (0..ws.iter().product::<usize>())
            .map(|o| {
                let mut j = unravel(o, &ws);
                let mut p = 0;
                while j[axis] >= lens[p] {
                    j[axis] -= lens[p];
                    p += 1;
                }
                let ((_, x), s) = &parts[p];
                x[j.iter().zip(contiguous_strides(s)).map(|(a, st)| a * st).sum::<usize>()]
            })
            .collect();
        assert_close(&format!("concat along axis {axis}"), &out.to_f64_vec(), &want, 0.0);
    }
}

/// `index_select` with repeated and unordered indices, and an empty index (exact).
pub fn check_index_select<B: Backend>(b: &B) {
    let mut r = rng(9);
    let shape = [3usize, 5, 4];
    let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
    for axis in 0..3usize {
        for index in [vec![2usize, 0, 2, 1], vec![], vec![shape[axis] - 1]] {
            let out = t.index_select(axis as isize, &index);
            let mut ws = shape.to_vec();
            ws[axis] = index.len();
            assert_eq!(out.shape(), &ws[..]);
            let want: Vec<f64> = (0..ws.iter().product::<usize>())
                .map(|o| {
                    let mut j = unravel(o, &ws);
                    j[axis] = index[j[axis]];
                    x[j.iter().zip(contiguous_strides(&shape)).map(|(a, s)| a * s).sum::<usize>()]
                })
                .collect();
            assert_close(&format!("index_select axis {axis} {index:?}"), &out.to_f64_vec(), &want, 0.0);
        }
    }
}

/// `index_add` accumulates repeated indices and leaves unselected entries zero.
pub fn check_index_add<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(10);
    for axis in 0..3usize {
        let index = vec![3usize, 0, 3, 1, 3];
        let len = 5;
        let mut shape = vec![2usize, 3, 4];
        shape[axis] = index.len();
        let (t, x) = random_input(b, &mut r, &shape, -1.0, 1.0);
        let out = t.index_add(axis as isize, &index, len);
        let mut ws = shape.clone();
        ws[axis] = len;
        assert_eq!(out.shape(), &ws[..]);
        let mut want = vec![0.0; ws.iter().product()];
        let wst = contiguous_strides(&ws);
        for (i, &v) in x.iter().enumerate() {
            let mut j = unravel(i, &shape);
            j[axis] = index[j[axis]];
            want[j.iter().zip(&wst).map(|(a, s)| a * s).sum::<usize>()] += v;
        }
        assert_close(&format!("index_add axis {axis}"), &out.to_f64_vec(), &want, tol);
    }
    // The adjoint identity <select(x), y> = <x, add(y)>.
    let (x, xv) = random_input(b, &mut r, &[6, 3], -1.0, 1.0);
    let idx = [5usize, 5, 0, 2];
    let (y, yv) = random_input(b, &mut r, &[4, 3], -1.0, 1.0);
    let lhs: f64 = x.index_select(0, &idx).to_f64_vec().iter().zip(&yv).map(|(a, b)| a * b).sum();
    let rhs: f64 = y.index_add(0, &idx, 6).to_f64_vec().iter().zip(&xv).map(|(a, b)| a * b).sum();
    assert_close("index_add is the adjoint of index_select", &[lhs], &[rhs], tol);
}

// ====================================================================
// Checks: reductions and softmax
// ====================================================================

fn ref_reduce(op: ReduceOp, x: &[f64], v: AxisView) -> Vec<f64> {
    let AxisView { outer, len, inner } = v;
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let vals = (0..len).map(|l| x[(o * len + l) * inner + j]);
            out.push(match op {
                ReduceOp::Sum => vals.sum(),
                ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                ReduceOp::Min => vals.fold(f64::INFINITY, f64::min),
                ReduceOp::ArgMax => {
                    let mut best = (0usize, f64::NEG_INFINITY);
                    for (l, val) in vals.enumerate() {
                        if val > best.1 {
                            best = (l, val);
                        }
                    }
                    best.0 as f64
                }
            });
        }
    }
    out
}

/// `reduce` with Sum, Max, Min and ArgMax along every axis; ArgMax returns the
/// first maximum on ties (the data has many ties); a sum over an empty axis is zero.
pub fn check_reduce<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(11);
    let shape = [3usize, 5, 4];
    let (t, x) = random_input(b, &mut r, &shape, -3.0, 3.0);
    // Integers 0..4: ties everywhere.
    let ties: Vec<f64> = (0..60).map(|_| r.random_range(0..4) as f64).collect();
    let (tt, xt) = input(b, &ties, &shape);
    for axis in 0..3usize {
        let v = shape_view(&shape, axis);
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax] {
            for (tensor, data, what) in [(&t, &x, "random"), (&tt, &xt, "ties")] {
                let got: Vec<f64> =
                    b.download(&b.reduce(op, tensor.buffer(), v)).into_iter().map(|e| e.f64()).collect();
                let want = ref_reduce(op, data, v);
                let tol = if op == ReduceOp::ArgMax { 0.0 } else { tol };
                assert_close(&format!("reduce {op:?} axis {axis} ({what})"), &got, &want, tol);
            }
        }
    }
    // Through the tensor API, keepdim and a large reduction.
    let (big, bx) = random_input(b, &mut r, &[50, 1000], -1.0, 1.0);
    let s = big.sum_axis(1, true);
    assert_eq!(s.shape(), &[50, 1]);
    assert_close(
        "sum_axis of [50, 1000]",
        &s.to_f64_vec(),
        &ref_reduce(ReduceOp::Sum, &bx, shape_view(&[50, 1000], 1)),
        tol,
    );
    assert_eq!(
        big.argmax_axis(1).into_iter().map(|i| i as f64).collect::<Vec<_>>(),
        ref_reduce(ReduceOp::ArgMax, &bx, shape_view(&[50, 1000], 1))
    );
    let empty = Tensor::<B>::zeros(b, &[2, 0, 3]).sum_axis(1, false);
    assert_eq!(empty.shape(), &[2, 3]);
    assert_eq!(empty.to_f64_vec(), vec![0.0; 6], "sum over an empty axis");
}

fn ref_softmax(x: &[f64], v: AxisView) -> Vec<f64> {
    let AxisView { outer, len, inner } = v;
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for j in 0..inner {
            let at = |l: usize| (o * len + l) * inner + j;
            let mx = (0..len).map(|l| x[at(l)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..len).map(|l| (x[at(l)] - mx).exp()).sum();
            for l in 0..len {
                out[at(l)] = (x[at(l)] - mx).exp() / s;
            }
        }
    }
    out
}

/// `softmax` along every axis, on inputs offset by ±500 (which overflow `exp`
/// without the max subtraction, in f32) and on a large tensor.
pub fn check_softmax<B: Backend>(b: &B) {
    let tol = tolerance::<B>();
    let mut r = rng(12);
    let shape = [3usize, 5, 4];
    for offset in [0.0, 500.0, -500.0] {
        let data: Vec<f64> = uniform(&mut r, 60, -4.0, 4.0).into_iter().map(|v| v + offset).collect();
        let (t, x) = input(b, &data, &shape);
        for axis in 0..3usize {
            let got = t.softmax(axis as isize).to_f64_vec();
            let want = ref_softmax(&x, shape_view(&shape, axis));
            assert_close(&format!("softmax axis {axis} offset {offset}"), &got, &want, tol);
        }
    }
    let (t, x) = random_input(b, &mut r, &[64, 600], -10.0, 10.0);
    assert_close(
        "softmax of [64, 600]",
        &t.softmax(1).to_f64_vec(),
        &ref_softmax(&x, shape_view(&[64, 600], 1)),
        tol,
    );
    let (t, x) = random_input(b, &mut r, &[1, 1], -1.0, 1.0);
    assert_eq!(x.len(), 1);
    assert_close("softmax of one element", &t.softmax(1).to_f64_vec(), &[1.0], tol);
}
