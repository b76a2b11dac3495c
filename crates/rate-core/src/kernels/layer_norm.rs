//! Row kernels of the transformer layers (4.2.20): LayerNorm forward and backward, and the backward of a softmax, with the reference bodies of `Kernels::layer_norm*` and `Kernels::softmax_backward` built from tensor ops.
//!
//! LayerNorm of a row `x` of `d` values (biased variance, as PyTorch):
//! `mean = sum(x)/d`, `rstd = 1/sqrt(sum((x - mean)^2)/d + eps)`,
//! `xhat = (x - mean) rstd`, `y = xhat * weight + bias`. Its backward, with
//! `g = dL/dy * weight`: `dx = rstd (g - mean(g) - xhat mean(g xhat))`,
//! `dweight = sum_rows dL/dy * xhat`, `dbias = sum_rows dL/dy`.
//!
//! Softmax backward along the last axis, for `y = softmax(z)`:
//! `dL/dz = y * (dL/dy - rowsum(dL/dy * y))`.

use crate::backend::Backend;
use crate::tensor::Tensor;

pub(crate) fn rows_of<B: Backend>(x: &Tensor<B>, op: &str) -> (usize, usize) {
    assert!(x.rank() >= 1, "{op}: a scalar has no last axis");
    let d = x.dim(-1);
    (x.numel() / d.max(1), d)
}

pub(crate) fn row_stats_shape<B: Backend>(x: &Tensor<B>) -> Vec<usize> {
    x.shape()[..x.rank() - 1].to_vec()
}

/// The default body of [`super::Kernels::layer_norm`] (tensor ops; also the reference of fused kernels).
pub fn layer_norm_reference<B: Backend>(
    x: &Tensor<B>,
    weight: &Tensor<B>,
    bias: &Tensor<B>,
    eps: f64,
) -> (Tensor<B>, Tensor<B>, Tensor<B>) {
    let mean = x.mean_axis(-1, true);
    let centred = x.sub(&mean);
    let rstd = centred.square().mean_axis(-1, true).add_scalar(eps).sqrt().recip();
    let y = centred.mul(&rstd).mul(weight).add(bias);
    let s = row_stats_shape(x);
    (y, mean.reshape(&s), rstd.reshape(&s))
}

/// The default body of [`super::Kernels::layer_norm_backward`] (tensor ops).
pub fn layer_norm_backward_reference<B: Backend>(
    x: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
    weight: &Tensor<B>,
    grad: &Tensor<B>,
) -> (Tensor<B>, Tensor<B>, Tensor<B>) {
    let (rows, d) = rows_of(x, "layer_norm_backward");
    let x = x.reshape(&[rows, d]);
    let grad = grad.reshape(&[rows, d]);
    let rstd = rstd.reshape(&[rows, 1]);
    let xhat = x.sub(&mean.reshape(&[rows, 1])).mul(&rstd);
    let dw = grad.mul(&xhat).sum_axis(0, false);
    let db = grad.sum_axis(0, false);
    let g = grad.mul(weight);
    let mean_g = g.mean_axis(-1, true);
    let mean_gx = g.mul(&xhat).mean_axis(-1, true);
    (g.sub(&mean_g).sub(&xhat.mul(&mean_gx)).mul(&rstd), dw, db)
}

/// The default body of [`super::Kernels::softmax_backward`] (tensor ops).
pub fn softmax_backward_reference<B: Backend>(y: &Tensor<B>, grad: &Tensor<B>) -> Tensor<B> {
    let dot = grad.mul(y).sum_axis(-1, true);
    y.mul(&grad.sub(&dot))
}
