//! Shared-QKV self-attention `softmax(s W W^T) W` (the MSSA head of 4.2.20 / 4.3.2) computed in tiles with the online softmax of flash attention, and the generic bodies of `Kernels::attention_tiled*`.
//!
//! For one head, with `W` the `n x dh` projected tokens (query = key = value)
//! and `s` the scale, the output is `O = softmax_rows(s W W^T) W`. The tiled
//! forward never forms the `n x n` matrix: for a tile of query rows `i` it
//! walks the key tiles `j`, keeping per row the running maximum `m_i`, the
//! running denominator `l_i` and the unnormalised output `acc_i`:
//!
//! ```text
//! S_ij   = s Q_i K_j^T
//! m_new  = max(m_i, rowmax S_ij)
//! P_ij   = exp(S_ij - m_new)
//! l_i    = l_i exp(m_i - m_new) + rowsum P_ij
//! acc_i  = acc_i exp(m_i - m_new) + P_ij V_j
//! ```
//!
//! and ends with `O_i = acc_i / l_i` and the row log-sum-exp
//! `L_i = m_i + ln l_i`. The backward recomputes `P_ij = exp(S_ij - L_i)`
//! tile by tile; with `D_i = rowsum(dO_i * O_i)` and `dS_ij = P_ij (dO_i V_j^T - D_i)`:
//!
//! ```text
//! dQ_i = s sum_j dS_ij K_j,   dK_j = s sum_i dS_ij^T Q_i,   dV_j = sum_i P_ij^T dO_i
//! ```
//!
//! and since `Q = K = V = W`, `dW = dQ + dK + dV`. Memory is `O(n dh)` plus
//! one `q_tile x k_tile` tile per head (per thread on the CPU backend).
//!
//! The functions [`tiled_forward`] and [`tiled_backward`] here are built from
//! tensor ops only (narrow, batched matmul, reductions, exp): they are the
//! reference bodies of [`super::Kernels::attention_tiled`] and its backward,
//! which `backend-cpu` overrides with a fused kernel.

use crate::backend::{Backend, BinaryOp};
use crate::tensor::Tensor;

/// Sizes and tiling of one tiled attention call on `[batch, n, dh]` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Independent attention problems (batch x heads).
    pub batch: usize,
    /// Tokens per problem.
    pub n: usize,
    /// Features per token (head dimension).
    pub dh: usize,
    /// The logit scale `s` (the chapter's `dh^-1/2`).
    pub scale: f64,
    /// Query rows per tile.
    pub q_tile: usize,
    /// Key rows per tile.
    pub k_tile: usize,
}

impl AttentionSpec {
    /// Spec for `w` of shape `[batch, n, dh]`; panics naming the shape otherwise.
    pub fn for_tokens<B: Backend>(w: &Tensor<B>, scale: f64, q_tile: usize, k_tile: usize) -> Self {
        assert_eq!(w.rank(), 3, "attention: tokens {:?} are not [batch, n, dh]", w.shape());
        assert!(q_tile > 0 && k_tile > 0, "attention: tiles {q_tile} x {k_tile} must be positive");
        assert!(w.dim(1) > 0, "attention: tokens {:?} hold no token", w.shape());
        AttentionSpec { batch: w.dim(0), n: w.dim(1), dh: w.dim(2), scale, q_tile, k_tile }
    }
}

fn starts(n: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(tile).map(move |s| (s, tile.min(n - s)))
}

/// The tiled forward built from tensor ops (the default body of
/// `Kernels::attention_tiled`); all `batch` problems advance together.
pub fn tiled_forward<B: Backend>(w: &Tensor<B>, spec: AttentionSpec) -> (Tensor<B>, Tensor<B>) {
    let be = w.backend();
    let AttentionSpec { batch, n, dh, scale, q_tile, k_tile } = spec;
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for (i0, bq) in starts(n, q_tile) {
        let q = w.narrow(1, i0, bq).scale(scale);
        let mut m = Tensor::full(be, &[batch, bq, 1], f64::NEG_INFINITY);
        let mut l = Tensor::zeros(be, &[batch, bq, 1]);
        let mut acc = Tensor::zeros(be, &[batch, bq, dh]);
        for (j0, bk) in starts(n, k_tile) {
            let k = w.narrow(1, j0, bk);
            let s = q.matmul_t(&k, false, true);
            let m_new = m.binary(BinaryOp::Max, &s.max_axis(-1, true));
            // exp(-inf - finite) = 0 on the first tile
            let corr = m.sub(&m_new).exp();
            let p = s.sub(&m_new).exp();
            l = l.mul(&corr).add(&p.sum_axis(-1, true));
            acc = acc.mul(&corr).add(&p.matmul(&k));
            m = m_new;
        }
        outs.push(acc.div(&l));
        lses.push(m.add(&l.log()).reshape(&[batch, bq]));
    }
    let outs: Vec<&Tensor<B>> = outs.iter().collect();
    let lses: Vec<&Tensor<B>> = lses.iter().collect();
    (Tensor::cat(&outs, 1), Tensor::cat(&lses, 1))
}

/// The tiled backward built from tensor ops (the default body of
/// `Kernels::attention_tiled_backward`): one sweep over query tiles for `dQ`,
/// one over key tiles for `dK + dV`, each recomputing `P` and `dS` per tile.
pub fn tiled_backward<B: Backend>(
    w: &Tensor<B>,
    out: &Tensor<B>,
    lse: &Tensor<B>,
    grad_out: &Tensor<B>,
    spec: AttentionSpec,
) -> Tensor<B> {
    let AttentionSpec { batch, n, scale, q_tile, k_tile, .. } = spec;
    // D_i = rowsum(dO_i * O_i)
    let d = grad_out.mul(out).sum_axis(-1, true);
    let lse = lse.reshape(&[batch, n, 1]);
    let tile = |i0: usize, bq: usize, j0: usize, bk: usize| {
        let qi = w.narrow(1, i0, bq);
        let kj = w.narrow(1, j0, bk);
        let p = qi.matmul_t(&kj, false, true).scale(scale).sub(&lse.narrow(1, i0, bq)).exp();
        let dp = grad_out.narrow(1, i0, bq).matmul_t(&kj, false, true);
        let ds = p.mul(&dp.sub(&d.narrow(1, i0, bq)));
        (qi, kj, p, ds)
    };
    let mut dq = Vec::new();
    for (i0, bq) in starts(n, q_tile) {
        let mut acc: Option<Tensor<B>> = None;
        for (j0, bk) in starts(n, k_tile) {
            let (_, kj, _, ds) = tile(i0, bq, j0, bk);
            let c = ds.matmul(&kj);
            acc = Some(match acc {
                Some(a) => a.add(&c),
                None => c,
            });
        }
        dq.push(acc.expect("n > 0").scale(scale));
    }
    let mut dkv = Vec::new();
    for (j0, bk) in starts(n, k_tile) {
        let mut acc_k: Option<Tensor<B>> = None;
        let mut acc_v: Option<Tensor<B>> = None;
        for (i0, bq) in starts(n, q_tile) {
            let (qi, _, p, ds) = tile(i0, bq, j0, bk);
            let ck = ds.matmul_t(&qi, true, false);
            let cv = p.matmul_t(&grad_out.narrow(1, i0, bq), true, false);
            acc_k = Some(match acc_k {
                Some(a) => a.add(&ck),
                None => ck,
            });
            acc_v = Some(match acc_v {
                Some(a) => a.add(&cv),
                None => cv,
            });
        }
        dkv.push(acc_k.expect("n > 0").scale(scale).add(&acc_v.expect("n > 0")));
    }
    let dq: Vec<&Tensor<B>> = dq.iter().collect();
    let dkv: Vec<&Tensor<B>> = dkv.iter().collect();
    Tensor::cat(&dq, 1).add(&Tensor::cat(&dkv, 1))
}
