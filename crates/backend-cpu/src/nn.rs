//! Fused row kernels of the transformer layers on the CPU: LayerNorm forward and backward, softmax along rows and its backward, one pass over each row, rows in parallel.

use crate::lanes::{add_into, lanes_dot, lanes_max, lanes_sum};
use crate::pool::take_for_overwrite;
use crate::CpuElem;
use rayon::prelude::*;

/// Rows handled by one rayon task (about 16K elements, at least one row).
fn rows_per_task(dim: usize) -> usize {
    (1 << 14) / dim.max(1) + 1
}

/// Whether a row kernel over `n` elements runs on the calling thread: when it
/// is small, or when the caller is itself a task of the pool (micro-batches
/// running in parallel), where splitting it further gains nothing. Every
/// row is computed by the same code either way, so the results are identical.
fn on_calling_thread(n: usize) -> bool {
    n < crate::par::PAR_THRESHOLD || rayon::current_thread_index().is_some()
}

/// One LayerNorm row into `yr`; returns `(mean, 1/std)`.
#[inline(always)]
fn layer_norm_row<T: CpuElem>(xr: &[T], yr: &mut [T], weight: &[T], bias: &[T], inv_d: T, eps: T) -> (T, T) {
    let mu = lanes_sum(xr) * inv_d;
    // centred values first (vectorised), then their squares summed
    yr.iter_mut().zip(xr).for_each(|(y, &x)| *y = x - mu);
    let rs = T::one() / (lanes_dot(yr, yr) * inv_d + eps).sqrt();
    yr.iter_mut().zip(weight.iter().zip(bias)).for_each(|(y, (&w, &b))| *y = *y * rs * w + b);
    (mu, rs)
}

/// LayerNorm of `rows x dim` (see `rate_core::layer_ops`): `(y, mean, rstd)`.
/// Rows are written straight into the output (a recycled buffer where
/// there is one, see [`crate::pool`]), one `pulp` dispatch per block of rows.
pub fn layer_norm<T: CpuElem>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    rows: usize,
    dim: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    if dim == 0 {
        return (Vec::new(), vec![T::zero(); rows], vec![T::zero(); rows]);
    }
    let inv_d = T::one() / T::of(dim as f64);
    let eps = T::of(eps);
    // every row of y is written
    let mut y = take_for_overwrite(rows * dim);
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    let block = |r0: usize, y: &mut [T], mean: &mut [T], rstd: &mut [T]| {
        let x = &x[r0 * dim..r0 * dim + y.len()];
        pulp::Arch::new().dispatch(LayerNormRows { x, y, mean, rstd, weight, bias, dim, inv_d, eps });
    };
    if on_calling_thread(rows * dim) {
        block(0, &mut y, &mut mean, &mut rstd);
        return (y, mean, rstd);
    }
    let per = rows_per_task(dim);
    y.par_chunks_mut(per * dim)
        .zip(mean.par_chunks_mut(per))
        .zip(rstd.par_chunks_mut(per))
        .enumerate()
        .for_each(|(task, ((yc, mc), rc))| block(task * per, yc, mc, rc));
    (y, mean, rstd)
}

/// One row of the LayerNorm backward into `dxr`, adding to `dw` and `db`
/// (`xhat` is scratch of the row's length).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_norm_backward_row<T: CpuElem>(
    (xr, gr): (&[T], &[T]),
    (mu, rs): (T, T),
    weight: &[T],
    inv_d: T,
    dxr: &mut [T],
    xhat: &mut [T],
    dw: &mut [T],
    db: &mut [T],
) {
    // dxr holds g = dL/dy * weight until the last loop
    xhat.iter_mut().zip(xr).for_each(|(h, &x)| *h = (x - mu) * rs);
    dxr.iter_mut().zip(gr.iter().zip(weight)).for_each(|(d, (&g, &w))| *d = g * w);
    dw.iter_mut().zip(gr.iter().zip(xhat.iter())).for_each(|(a, (&g, &h))| *a += g * h);
    db.iter_mut().zip(gr).for_each(|(a, &g)| *a += g);
    let m1 = lanes_sum(dxr) * inv_d;
    let m2 = lanes_dot(dxr, xhat) * inv_d;
    dxr.iter_mut().zip(xhat.iter()).for_each(|(d, &h)| *d = rs * (*d - m1 - h * m2));
}

/// Backward of [`layer_norm`]: `(dx, dweight, dbias)`. The weight and bias
/// gradients are summed per task of [`rows_per_task`] rows, then over the
/// tasks in order, on either path; each task is one `pulp` dispatch and
/// writes its rows of `dx` in place.
pub fn layer_norm_backward<T: CpuElem>(
    x: &[T],
    mean: &[T],
    rstd: &[T],
    weight: &[T],
    grad: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    if dim == 0 || rows == 0 {
        return (vec![T::zero(); rows * dim], vec![T::zero(); dim], vec![T::zero(); dim]);
    }
    let per = rows_per_task(dim);
    let inv_d = T::one() / T::of(dim as f64);
    // every row of dx is written
    let mut dx = take_for_overwrite(rows * dim);
    let task = |(t, dxc): (usize, &mut [T])| -> (Vec<T>, Vec<T>) {
        let (r0, r1) = (t * per, t * per + dxc.len() / dim);
        let (mut pw, mut pb, mut xhat) = (vec![T::zero(); dim], vec![T::zero(); dim], vec![T::zero(); dim]);
        pulp::Arch::new().dispatch(LayerNormBackwardRows {
            x: &x[r0 * dim..r1 * dim],
            grad: &grad[r0 * dim..r1 * dim],
            stats: (&mean[r0..r1], &rstd[r0..r1]),
            weight,
            dim,
            inv_d,
            dx: dxc,
            xhat: &mut xhat,
            dw: &mut pw,
            db: &mut pb,
        });
        (pw, pb)
    };
    let partials: Vec<(Vec<T>, Vec<T>)> = if on_calling_thread(rows * dim) {
        dx.chunks_mut(per * dim).enumerate().map(task).collect()
    } else {
        dx.par_chunks_mut(per * dim).enumerate().map(task).collect()
    };
    let mut dw = vec![T::zero(); dim];
    let mut db = vec![T::zero(); dim];
    for (pw, pb) in partials {
        add_into(&mut dw, &pw);
        add_into(&mut db, &pb);
    }
    (dx, dw, db)
}

/// Softmax of each contiguous row of `len` values (max-subtracted), the
/// exponential by [`CpuElem::row_exp`]. Blocks of [`rows_per_task`] rows are
/// copied into the (recycled) output and normalised there while in the cache.
pub fn softmax_rows<T: CpuElem>(x: &[T], len: usize) -> Vec<T> {
    if len == 0 {
        return x.to_vec();
    }
    let per = rows_per_task(len) * len;
    // every element is written (copied, then normalised in place)
    let mut out = take_for_overwrite(x.len());
    let task = |(t, c): (usize, &mut [T])| {
        c.copy_from_slice(&x[t * per..t * per + c.len()]);
        softmax_rows_in_place(c, len);
    };
    if on_calling_thread(x.len()) {
        out.chunks_mut(per).enumerate().for_each(task);
    } else {
        out.par_chunks_mut(per).enumerate().for_each(task);
    }
    out
}

/// One row softmax in place (max-subtracted); the body of every softmax kernel.
#[inline(always)]
fn softmax_row_body<T: CpuElem>(row: &mut [T]) {
    let mx = lanes_max(row);
    map8(row, |v| T::row_exp(v - mx));
    let r = T::one() / lanes_sum(row);
    map8(row, |v| v * r);
}

/// `v <- f(v)` over a row in blocks of eight, written as plain loops (no
/// `for_each`, which may stay an out-of-line `Iterator::fold` compiled for
/// baseline x86-64) so that they are compiled inside the caller's `pulp`
/// SIMD context.
#[inline(always)]
fn map8<T: CpuElem>(row: &mut [T], f: impl Fn(T) -> T) {
    let mut blocks = row.chunks_exact_mut(8);
    for b in &mut blocks {
        if let Ok(b) = <&mut [T; 8]>::try_from(b) {
            for v in b.iter_mut() {
                *v = f(*v);
            }
        }
    }
    for v in blocks.into_remainder() {
        *v = f(*v);
    }
}

/// The row softmax of every row (of `len` values) of `x`, in place.
pub(crate) fn softmax_rows_in_place<T: CpuElem>(x: &mut [T], len: usize) {
    pulp::Arch::new().dispatch(SoftmaxRows { x, len });
}

/// The softmax backward `g <- y * (g - rowsum(g * y))` of every row (of
/// `len` values), in place: `y` the softmax output, `g` its gradient.
pub(crate) fn softmax_backward_rows_in_place<T: CpuElem>(y: &[T], g: &mut [T], len: usize) {
    pulp::Arch::new().dispatch(SoftmaxBackwardRows { y, g, len });
}

/// The block kernels below are handed to `pulp`, which compiles their bodies
/// (every function they call is `#[inline(always)]`) once per instruction set
/// and picks one at run time: AVX2 + FMA where present, so that the
/// eight-lane loops run one instruction per eight f32 instead of baseline
/// SSE2's two. The arithmetic is the same on every path (no contraction into
/// FMA), so are the results. One dispatch serves a block of rows.
struct SoftmaxRows<'a, T> {
    x: &'a mut [T],
    len: usize,
}

impl<T: CpuElem> pulp::WithSimd for SoftmaxRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        // a `for` loop, not `for_each`: the latter stayed an out-of-line `Iterator::fold` compiled for
        // baseline x86-64 (SSE), with the whole row body in it (13 % of a CRATE training epoch under perf)
        for row in self.x.chunks_mut(self.len) {
            softmax_row_body(row);
        }
    }
}

/// See [`softmax_backward_rows_in_place`].
struct SoftmaxBackwardRows<'a, T> {
    y: &'a [T],
    g: &'a mut [T],
    len: usize,
}

impl<T: CpuElem> pulp::WithSimd for SoftmaxBackwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (yr, gr) in self.y.chunks(self.len).zip(self.g.chunks_mut(self.len)) {
            let dot = lanes_dot(yr, gr);
            for (g, &y) in gr.iter_mut().zip(yr) {
                *g = y * (*g - dot);
            }
        }
    }
}

/// A block of rows of [`layer_norm`]: the arguments of [`layer_norm_row`] for each row.
struct LayerNormRows<'a, T> {
    x: &'a [T],
    y: &'a mut [T],
    mean: &'a mut [T],
    rstd: &'a mut [T],
    weight: &'a [T],
    bias: &'a [T],
    dim: usize,
    inv_d: T,
    eps: T,
}

impl<T: CpuElem> pulp::WithSimd for LayerNormRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let k = self;
        let rows = k.x.chunks_exact(k.dim).zip(k.y.chunks_exact_mut(k.dim));
        for ((xr, yr), (m, r)) in rows.zip(k.mean.iter_mut().zip(k.rstd.iter_mut())) {
            (*m, *r) = layer_norm_row(xr, yr, k.weight, k.bias, k.inv_d, k.eps);
        }
    }
}

/// A block of rows of [`layer_norm_backward`], adding to the block's `dw` and `db`.
struct LayerNormBackwardRows<'a, T> {
    x: &'a [T],
    grad: &'a [T],
    stats: (&'a [T], &'a [T]),
    weight: &'a [T],
    dim: usize,
    inv_d: T,
    dx: &'a mut [T],
    xhat: &'a mut [T],
    dw: &'a mut [T],
    db: &'a mut [T],
}

impl<T: CpuElem> pulp::WithSimd for LayerNormBackwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let k = self;
        let d = k.dim;
        for (r, dxr) in k.dx.chunks_exact_mut(d).enumerate() {
            let rows = (&k.x[r * d..(r + 1) * d], &k.grad[r * d..(r + 1) * d]);
            let stats = (k.stats.0[r], k.stats.1[r]);
            layer_norm_backward_row(rows, stats, k.weight, k.inv_d, dxr, k.xhat, k.dw, k.db);
        }
    }
}

/// Backward of a row softmax: `y * (g - rowsum(g * y))`, blocks of
/// [`rows_per_task`] rows of the gradient copied into the (recycled) output
/// and updated there.
pub fn softmax_backward<T: CpuElem>(y: &[T], grad: &[T], len: usize) -> Vec<T> {
    if len == 0 {
        return vec![T::zero(); y.len()];
    }
    let per = rows_per_task(len) * len;
    // every element is written (copied, then updated in place)
    let mut out = take_for_overwrite(y.len());
    let task = |(t, c): (usize, &mut [T])| {
        let rows = t * per..t * per + c.len();
        c.copy_from_slice(&grad[rows.clone()]);
        softmax_backward_rows_in_place(&y[rows], c, len);
    };
    if on_calling_thread(y.len()) {
        out.chunks_mut(per).enumerate().for_each(task);
    } else {
        out.par_chunks_mut(per).enumerate().for_each(task);
    }
    out
}
