//! Token statistics of TSSA (4.3.14-4.3.15) as one fused kernel (`Kernels::token_stats`): column norms over the tokens, memberships `Pi` by a softmax over heads and the `Pi`-weighted second moments, with a default body built here from tensor ops.
//!
//! For projected tokens `w[b, n, k dh + c]` (head `k`, coordinate `c`),
//! per-head temperatures `temp[k]` and the norm clamp `eps`:
//!
//! ```text
//! col_sq[b,k,c]    = sum_n w^2
//! what2_sum[b,n,k] = sum_c w^2 / max(sqrt(col_sq), eps)^2
//! pi[b,n,:]        = softmax over k of temp[k] what2_sum[b,n,k]
//! pi_sum[b,0,k]    = sum_n pi
//! pi_sq[b,k,c]     = sum_n pi[b,n,k] w^2
//! w_pi[b,n,k dh+c] = w pi[b,n,k]
//! ```
//!
//! Every statistic is a sum over tokens, so a backend can compute them all in
//! two passes over `w` (one for the column norms, one for the rest) without
//! writing `w^2`; the default body below writes them op by op and is the
//! reference such kernels are tested against.

use crate::backend::Backend;
use crate::tensor::Tensor;

/// Shape of a token-statistics problem: `w` is `[batch, n, heads * dh]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenStatsSpec {
    /// Independent sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub n: usize,
    /// Heads `K`.
    pub heads: usize,
    /// Coordinates per head.
    pub dh: usize,
    /// Clamp of the column norm (`F.normalize`'s eps).
    pub norm_eps: f64,
}

/// The statistics of [`super::token_stats()`] (shapes in the module documentation);
/// `T` is a tensor, or a backend buffer inside [`super::Kernels::token_stats`].
#[derive(Clone, Debug)]
pub struct TokenStats<T> {
    /// `sum_n w^2`, `[batch, heads, dh]`.
    pub col_sq: T,
    /// `sum_c w^2 / max(||w[:, c]||, eps)^2`, `[batch, n, heads]`.
    pub what2_sum: T,
    /// Memberships `Pi`, `[batch, n, heads]`, each row summing to one.
    pub pi: T,
    /// `sum_n Pi`, `[batch, 1, heads]`.
    pub pi_sum: T,
    /// `sum_n Pi w^2`, `[batch, heads, dh]`.
    pub pi_sq: T,
    /// `w Pi` (each head's coordinates times its membership), `[batch, n, heads * dh]`.
    pub w_pi: T,
}

impl<T> TokenStats<T> {
    /// The same statistics with `f` applied to each (in field order).
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> TokenStats<U> {
        TokenStats {
            col_sq: f(self.col_sq),
            what2_sum: f(self.what2_sum),
            pi: f(self.pi),
            pi_sum: f(self.pi_sum),
            pi_sq: f(self.pi_sq),
            w_pi: f(self.w_pi),
        }
    }
}

pub(crate) fn spec_of<B: Backend>(
    w: &Tensor<B>,
    temp: &Tensor<B>,
    heads: usize,
    norm_eps: f64,
) -> TokenStatsSpec {
    assert!(
        w.rank() == 3 && heads > 0 && w.dim(2) % heads == 0 && w.dim(2) > 0 && w.dim(1) > 0,
        "token_stats: tokens {:?} are not [batch, tokens > 0, heads {heads} x dh > 0]",
        w.shape()
    );
    assert_eq!(temp.numel(), heads, "token_stats: temperatures {:?} for {heads} heads", temp.shape());
    TokenStatsSpec { batch: w.dim(0), n: w.dim(1), heads, dh: w.dim(2) / heads, norm_eps }
}

pub(crate) fn shapes(s: &TokenStatsSpec) -> TokenStats<Vec<usize>> {
    let TokenStatsSpec { batch: b, n, heads: h, dh, .. } = *s;
    TokenStats {
        col_sq: vec![b, h, dh],
        what2_sum: vec![b, n, h],
        pi: vec![b, n, h],
        pi_sum: vec![b, 1, h],
        pi_sq: vec![b, h, dh],
        w_pi: vec![b, n, h * dh],
    }
}

/// The default body of [`super::Kernels::token_stats`]: the statistics op by op
/// (per-head sums as thin matmuls against block-diagonal matrices).
pub fn token_stats_reference<B: Backend>(
    w: &Tensor<B>,
    temp: &Tensor<B>,
    heads: usize,
    norm_eps: f64,
) -> TokenStats<Tensor<B>> {
    let TokenStatsSpec { batch: b, n, heads: h, dh, .. } = spec_of(w, temp, heads, norm_eps);
    let a = w.square();
    let col_sq = a.sum_axis(1, true).reshape(&[b, h, dh]);
    let inv_norm2 = col_sq.sqrt().clamp_min(norm_eps).square().recip();
    let what2_sum = head_dot(&a, &inv_norm2);
    let pi = what2_sum.mul(&temp.reshape(&[1, 1, h])).softmax(-1);
    let pi_sum = pi.sum_axis(1, true);
    let pi_sq = head_weighted_sum(&pi, &a);
    let w_pi = w.reshape(&[b, n, h, dh]).mul(&pi.reshape(&[b, n, h, 1])).reshape(&[b, n, h * dh]);
    TokenStats { col_sq, what2_sum, pi, pi_sum, pi_sq, w_pi }
}

/// The block-diagonal `[b, h dh, h]` matrix whose column `k` holds `v[b, k, :]`
/// in the rows of head `k`.
pub fn block_diag<B: Backend>(v: &Tensor<B>) -> Tensor<B> {
    let (b, h, dh) = (v.dim(0), v.dim(1), v.dim(2));
    let eye = Tensor::eye(v.backend(), h).reshape(&[1, h, 1, h]);
    v.reshape(&[b, h, dh, 1]).mul(&eye).reshape(&[b, h * dh, h])
}

/// `out[b, n, k] = sum_c x[b, n, k dh + c] v[b, k, c]`: per-head dot products
/// of the tokens `x` (`[b, n, h dh]`) with `v` (`[b, h, dh]`).
pub fn head_dot<B: Backend>(x: &Tensor<B>, v: &Tensor<B>) -> Tensor<B> {
    x.matmul(&block_diag(v))
}

/// `out[b, k, c] = sum_n u[b, n, k] x[b, n, k dh + c]`: per-head weighted sums
/// over the tokens (the diagonal blocks of `u^T x`).
pub fn head_weighted_sum<B: Backend>(u: &Tensor<B>, x: &Tensor<B>) -> Tensor<B> {
    let (b, h) = (u.dim(0), u.dim(2));
    let dh = x.dim(2) / h;
    let eye = Tensor::eye(u.backend(), h).reshape(&[1, h, h, 1]);
    u.matmul_t(x, true, false).reshape(&[b, h, h, dh]).mul(&eye).sum_axis(2, false)
}
