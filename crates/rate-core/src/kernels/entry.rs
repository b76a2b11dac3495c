//! Shape-checked entry points of the fused kernels over tensors: each checks its operands, calls the backend's [`Kernels`] method and wraps the buffers it returns (equations in the family files beside this one).

use super::attention_dense::DenseAttentionSpec;
use super::attention_tiled::AttentionSpec;
use super::ext::Kernels;
use super::invariant::{self, InvariantProductsSpec};
use super::layer_norm::{row_stats_shape, rows_of};
use super::redunet::{Record, RedunetRun, RedunetSpec};
use super::token_stats::{self, TokenStats};
use crate::tensor::Tensor;
use crate::Result;

// ---- rows ----

/// LayerNorm over the last axis of `x` with affine `weight` and `bias` (`[d]`):
/// `(y, mean, rstd)`, the statistics with the shape of `x` minus its last axis.
pub fn layer_norm<B: Kernels>(
    x: &Tensor<B>,
    weight: &Tensor<B>,
    bias: &Tensor<B>,
    eps: f64,
) -> (Tensor<B>, Tensor<B>, Tensor<B>) {
    let (rows, d) = rows_of(x, "layer_norm");
    assert!(
        weight.shape() == [d] && bias.shape() == [d],
        "layer_norm: input {:?}, weight {:?} and bias {:?} do not match",
        x.shape(),
        weight.shape(),
        bias.shape()
    );
    let be = x.backend();
    let (y, mean, rstd) = be.layer_norm(x.buffer(), weight.buffer(), bias.buffer(), rows, d, eps);
    let s = row_stats_shape(x);
    (
        Tensor::from_buffer(be, y, x.shape()),
        Tensor::from_buffer(be, mean, &s),
        Tensor::from_buffer(be, rstd, &s),
    )
}

/// Backward of [`layer_norm`] at input `x` (with its `mean` and `rstd`):
/// `(dL/dx, dL/dweight, dL/dbias)` from `grad = dL/dy`.
pub fn layer_norm_backward<B: Kernels>(
    x: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
    weight: &Tensor<B>,
    grad: &Tensor<B>,
) -> (Tensor<B>, Tensor<B>, Tensor<B>) {
    let (rows, d) = rows_of(x, "layer_norm_backward");
    assert!(
        grad.shape() == x.shape() && weight.shape() == [d] && mean.numel() == rows && rstd.numel() == rows,
        "layer_norm_backward: input {:?}, gradient {:?}, weight {:?}, mean {:?} and rstd {:?} do not match",
        x.shape(),
        grad.shape(),
        weight.shape(),
        mean.shape(),
        rstd.shape()
    );
    let be = x.backend();
    let (dx, dw, db) = be.layer_norm_backward(
        x.buffer(),
        mean.buffer(),
        rstd.buffer(),
        weight.buffer(),
        grad.buffer(),
        rows,
        d,
    );
    (
        Tensor::from_buffer(be, dx, x.shape()),
        Tensor::from_buffer(be, dw, &[d]),
        Tensor::from_buffer(be, db, &[d]),
    )
}

/// Backward of a softmax along the last axis: `y * (grad - rowsum(grad * y))`.
pub fn softmax_backward<B: Kernels>(y: &Tensor<B>, grad: &Tensor<B>) -> Tensor<B> {
    assert_eq!(
        y.shape(),
        grad.shape(),
        "softmax_backward: output {:?} and gradient {:?} differ",
        y.shape(),
        grad.shape()
    );
    let (rows, len) = rows_of(y, "softmax_backward");
    let be = y.backend();
    Tensor::from_buffer(be, be.softmax_backward(y.buffer(), grad.buffer(), rows, len), y.shape())
}

// ---- scans ----

/// Inclusive cumulative sum along `axis` (from the last entry backwards when `reverse`).
pub fn cumsum<B: Kernels>(x: &Tensor<B>, axis: isize, reverse: bool) -> Tensor<B> {
    let a = x.axis(axis, "cumsum");
    let be = x.backend();
    Tensor::from_buffer(be, be.cumsum(x.buffer(), x.view(a), reverse), x.shape())
}

// ---- attention ----

/// Tiled attention on the backend: `(O [batch, n, dh], L [batch, n])`, where
/// `L` is the row log-sum-exp of `s W W^T` that [`attention_tiled_backward`] needs.
pub fn attention_tiled<B: Kernels>(w: &Tensor<B>, spec: AttentionSpec) -> (Tensor<B>, Tensor<B>) {
    check(w, "tokens", &[spec.batch, spec.n, spec.dh]);
    let be = w.backend();
    let (o, l) = be.attention_tiled(w.buffer(), spec);
    (
        Tensor::from_buffer(be, o, &[spec.batch, spec.n, spec.dh]),
        Tensor::from_buffer(be, l, &[spec.batch, spec.n]),
    )
}

/// Backward of [`attention_tiled`]: `dL/dW` from the tokens, the output `O`,
/// the row log-sum-exp `L` and `dL/dO`.
pub fn attention_tiled_backward<B: Kernels>(
    w: &Tensor<B>,
    out: &Tensor<B>,
    lse: &Tensor<B>,
    grad_out: &Tensor<B>,
    spec: AttentionSpec,
) -> Tensor<B> {
    let shape = [spec.batch, spec.n, spec.dh];
    check(w, "tokens", &shape);
    check(out, "output", &shape);
    check(grad_out, "output gradient", &shape);
    check(lse, "log-sum-exp", &[spec.batch, spec.n]);
    let be = w.backend();
    let g = be.attention_tiled_backward(w.buffer(), out.buffer(), lse.buffer(), grad_out.buffer(), spec);
    Tensor::from_buffer(be, g, &shape)
}

fn check<B: Kernels>(t: &Tensor<B>, what: &str, shape: &[usize]) {
    assert_eq!(t.shape(), shape, "attention_tiled: {what} {:?} do not match the spec {shape:?}", t.shape());
}

/// Dense shared-QKV attention of every head on the backend:
/// `A_h = softmax_rows(W_h W_h^T)` (`[batch, heads, n, n]`, kept for the
/// backward and for attention maps) and the merged outputs `A_h W_h`
/// (`[batch, n, heads * dim_head]`, head-interleaved like `w`). Any scale
/// is folded into `w` by the caller.
pub fn attention_dense<B: Kernels>(w: &Tensor<B>, spec: DenseAttentionSpec) -> (Tensor<B>, Tensor<B>) {
    check_dense(w, "tokens", &spec.tokens_shape());
    let be = w.backend();
    let (a, o) = be.attention_dense(w.buffer(), spec);
    (Tensor::from_buffer(be, a, &spec.attention_shape()), Tensor::from_buffer(be, o, &spec.tokens_shape()))
}

/// Backward of [`attention_dense`]: `dL/dW` (`[batch, n, heads * dim_head]`)
/// from the tokens, the attention and `dL/d(merged output)`.
pub fn attention_dense_backward<B: Kernels>(
    w: &Tensor<B>,
    attn: &Tensor<B>,
    grad_out: &Tensor<B>,
    spec: DenseAttentionSpec,
) -> Tensor<B> {
    check_dense(w, "tokens", &spec.tokens_shape());
    check_dense(attn, "attention", &spec.attention_shape());
    check_dense(grad_out, "output gradient", &spec.tokens_shape());
    let be = w.backend();
    let g = be.attention_dense_backward(w.buffer(), attn.buffer(), grad_out.buffer(), spec);
    Tensor::from_buffer(be, g, &spec.tokens_shape())
}

fn check_dense<B: Kernels>(t: &Tensor<B>, what: &str, shape: &[usize]) {
    assert_eq!(t.shape(), shape, "attention_dense: {what} {:?} do not match the spec {shape:?}", t.shape());
}

// ---- token statistics ----

/// The token statistics of `w` (`[batch, n, heads * dh]`) with per-head
/// temperatures `temp` (`heads` values) on the backend's kernel.
pub fn token_stats<B: Kernels>(
    w: &Tensor<B>,
    temp: &Tensor<B>,
    heads: usize,
    norm_eps: f64,
) -> TokenStats<Tensor<B>> {
    let spec = token_stats::spec_of(w, temp, heads, norm_eps);
    let be = w.backend();
    let out = be.token_stats(w.buffer(), temp.buffer(), spec);
    let s = token_stats::shapes(&spec);
    TokenStats {
        col_sq: Tensor::from_buffer(be, out.col_sq, &s.col_sq),
        what2_sum: Tensor::from_buffer(be, out.what2_sum, &s.what2_sum),
        pi: Tensor::from_buffer(be, out.pi, &s.pi),
        pi_sum: Tensor::from_buffer(be, out.pi_sum, &s.pi_sum),
        pi_sq: Tensor::from_buffer(be, out.pi_sq, &s.pi_sq),
        w_pi: Tensor::from_buffer(be, out.w_pi, &s.w_pi),
    }
}

// ---- the invariant ReduNet layer ----

/// The update on the backend's kernel: `(v' [F, n, width], pi [n, k])` from
/// the features `v`, the products `y`, the frequency weights (`F` values)
/// and the class weights `gamma` (`k` values).
pub fn invariant_step<B: Kernels>(
    v: &Tensor<B>,
    y: &Tensor<B>,
    weights: &Tensor<B>,
    gamma: &Tensor<B>,
    eta: f64,
    lambda: f64,
) -> (Tensor<B>, Tensor<B>) {
    let spec = invariant::spec_of([v.shape(), y.shape(), weights.shape(), gamma.shape()], eta, lambda);
    let be = v.backend();
    let (out, pi) = be.invariant_step(v.buffer(), y.buffer(), weights.buffer(), gamma.buffer(), spec);
    (Tensor::from_buffer(be, out, v.shape()), Tensor::from_buffer(be, pi, &[spec.n, spec.classes]))
}

/// The real operand `[F, 2C, 2gC]` of Hermitian-packed operators
/// `[F, g, C, C]` on the backend's kernel.
pub fn real_operand<B: Kernels>(packed: &Tensor<B>) -> Tensor<B> {
    assert!(
        packed.rank() == 4 && packed.dim(2) == packed.dim(3),
        "real_operand: packed operators {:?} are not [F, g, C, C]",
        packed.shape()
    );
    let (f, g, c) = (packed.dim(0), packed.dim(1), packed.dim(2));
    let be = packed.backend();
    Tensor::from_buffer(be, be.real_operand(packed.buffer(), f, g, c), &[f, 2 * c, 2 * g * c])
}

/// The products `[F, n, 2gC]` of features `v` (`[F, n, 2C]`) with the real
/// operand of Hermitian-packed operators `packed` (`[F, g, C, C]`): row
/// `(f, i)` holds `[Re | Im]` of `A_0(f) v_i(f), .., A_{g-1}(f) v_i(f)`
/// (`v.matmul(&real_operand(packed))`, on the backend's kernel).
pub fn invariant_products<B: Kernels>(v: &Tensor<B>, packed: &Tensor<B>) -> Tensor<B> {
    assert!(
        packed.rank() == 4 && packed.dim(2) == packed.dim(3),
        "invariant_products: packed operators {:?} are not [F, g, C, C]",
        packed.shape()
    );
    let (f, g, c) = (packed.dim(0), packed.dim(1), packed.dim(2));
    assert!(
        v.rank() == 3 && v.dim(0) == f && v.dim(2) == 2 * c,
        "invariant_products: features {:?} are not [{f}, n, {}]",
        v.shape(),
        2 * c
    );
    let n = v.dim(1);
    let be = v.backend();
    let spec = InvariantProductsSpec { freqs: f, n, ops: g, channels: c };
    Tensor::from_buffer(be, be.invariant_products(v.buffer(), packed.buffer(), spec), &[f, n, 2 * g * c])
}

// ---- ReduNet ----

/// Builds a ReduNet from training features `z` (`m x d`, finite) and labels
/// (`m` values below `spec.classes`, every class present) on the backend's
/// kernel: output and snapshots `m x d`, operators `(k+1) d x d` per layer.
pub fn redunet_build<B: Kernels>(
    z: &Tensor<B>,
    labels: &[usize],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Tensor<B>>> {
    assert!(
        z.rank() == 2 && labels.len() == z.dim(0) && labels.iter().all(|&l| l < spec.classes),
        "redunet_build: features {:?} with {} labels for {} classes",
        z.shape(),
        labels.len(),
        spec.classes
    );
    let (m, d) = (z.dim(0), z.dim(1));
    let run = z.backend().redunet_build(z.buffer(), m, d, labels, spec, record)?;
    Ok(wrap_run(z.backend(), run, m, d, spec.classes))
}

/// Applies ReduNet layers (`operators`, `(k+1) d x d` each, and the class
/// weights `gamma`) to features `z` (`m x d`, finite) on the backend's kernel.
pub fn redunet_transform<B: Kernels>(
    z: &Tensor<B>,
    operators: &[Tensor<B>],
    gamma: &[f64],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Tensor<B>>> {
    let (m, d) = (z.dim(0), z.dim(1));
    let g = (spec.classes + 1) * d;
    assert!(
        z.rank() == 2 && gamma.len() == spec.classes && operators.iter().all(|w| w.shape() == [g, d]),
        "redunet_transform: features {:?}, {} class weights and operators {:?} for {} classes",
        z.shape(),
        gamma.len(),
        operators.first().map(|w| w.shape().to_vec()),
        spec.classes
    );
    let bufs: Vec<B::Buffer> = operators.iter().map(|w| w.buffer().clone()).collect();
    let run = z.backend().redunet_transform(z.buffer(), m, d, &bufs, gamma, spec, record)?;
    Ok(wrap_run(z.backend(), run, m, d, spec.classes))
}

/// The buffers of a run as tensors: features `m x d`, operators `(k+1) d x d`.
fn wrap_run<B: Kernels>(
    be: &B,
    run: RedunetRun<B::Buffer>,
    m: usize,
    d: usize,
    k: usize,
) -> RedunetRun<Tensor<B>> {
    let RedunetRun { output, operators, rates_true, rates_code, features, yhat } = run;
    RedunetRun {
        output: Tensor::from_buffer(be, output, &[m, d]),
        operators: operators.into_iter().map(|w| Tensor::from_buffer(be, w, &[(k + 1) * d, d])).collect(),
        rates_true,
        rates_code,
        features: features.into_iter().map(|(l, t)| (l, Tensor::from_buffer(be, t, &[m, d]))).collect(),
        yhat,
    }
}
