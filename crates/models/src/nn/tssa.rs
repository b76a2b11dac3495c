//! Token Statistics Self-Attention (TSSA, 4.3.14-4.3.15) as the ToST code builds it, and its causal (running-sum) variant with a streaming decoder: explicit forward and hand-derived backward, linear in the number of tokens.
//!
//! Per batch element, with `w = x Wqkv^T + b` split into heads as
//! contiguous chunks `w[h, n, c]` (the chapter's `U_k^T z_n`):
//!
//! ```text
//! a[h,n,c]  = w^2
//! what2     = a / max(||w[h,:,c]||, 1e-12)^2          column normalised over tokens
//! s[h,n]    = temp[h] sum_c what2                      per-token score (4.3.14, 1/(2 eta) = temp)
//! Pi[:,n]   = softmax over HEADS of s[:,n]             group membership
//! q[h,n]    = Pi / (sum_n Pi + 1e-8)                   pi_k / <pi_k, 1>
//! dots[h,c] = sum_n q a                                Pi-weighted second moment
//! out       = -w Pi / (1 + dots)                       -D(Z, pi_k | U_k) U_k^T Z diag(pi_k)
//! ```
//!
//! then the heads are concatenated and `to_out` (Linear with bias) applied
//! (the `U_k` of 4.3.15 and the step size are folded into it). Nothing of
//! size `n x n` is formed: every statistic is a sum over tokens.
//!
//! The causal variant (the authors' language model) replaces each sum over
//! tokens by a running sum over tokens `<= n`:
//! `what2 = a / max(cumsum_n a, 1e-12) + denom_bias[h,n]`,
//! `dots[h,n,c] = cumsum_n(Pi a) / (cumsum_n Pi + 1e-8)`,
//! so a decoder streams with `2 dh + 1` numbers of state per head.

use super::classifier::Block;
use super::config::TostConfig;
use super::measure::LayerMeasurement;
use super::{accumulate, join, Grads, Linear, Module};
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rate_core::kernels::split_heads;
use rate_core::kernels::token_stats::{block_diag, head_dot, head_weighted_sum};
use rate_core::kernels::{cumsum, token_stats};

/// Clamp of the column norm (`F.normalize`'s eps).
pub const NORM_EPS: f64 = 1e-12;
/// Added to the membership mass `sum_n Pi` before dividing.
pub const PI_EPS: f64 = 1e-8;
/// Clamp of the running squared column norm in the causal variant.
pub const CAUSAL_NORM_EPS: f64 = 1e-12;

/// The TSSA layer: `qkv` (dim -> dim), per-head temperature `temp`
/// (`[heads, 1]`) and `to_out.0` (dim -> dim, with bias).
#[derive(Clone, Debug)]
pub struct Tssa<B: Kernels> {
    /// Projection onto the heads' subspaces, `[dim, dim]` (+ optional bias).
    pub qkv: Linear<B>,
    /// Per-head temperature of the membership softmax, `[heads, 1]`.
    pub temp: Tensor<B>,
    /// Output projection, `[dim, dim]` with bias.
    pub to_out: Linear<B>,
    heads: usize,
}

/// What TSSA's backward ([`Block::backward`]) needs (all `O(n dim)`).
#[derive(Clone, Debug)]
pub struct TssaCache<B: Kernels> {
    x: Tensor<B>,
    /// `w` `[b, n, dim]`.
    w: Tensor<B>,
    /// `1 / max(||w[:,c]||, eps)^2` `[b, h, dh]`.
    inv_norm2: Tensor<B>,
    /// 1 where the column norm exceeds the clamp, `[b, h, dh]`.
    norm_mask: Tensor<B>,
    /// `sum_c what2` `[b, n, h]`.
    what2_sum: Tensor<B>,
    /// `Pi` `[b, n, h]`.
    pi: Tensor<B>,
    /// `sum_n Pi + 1e-8` `[b, 1, h]`.
    pi_mass: Tensor<B>,
    /// `1 / (1 + dots)` `[b, h, dh]`.
    r: Tensor<B>,
    /// `w Pi` `[b, n, dim]` (so that `to_out` sees `-w Pi r`).
    w_pi: Tensor<B>,
}

impl<B: Kernels> TssaCache<B> {
    /// The projected tokens `w = x Wqkv^T (+ b)`, `[batch, tokens, dim]` (heads as contiguous chunks).
    pub fn projected(&self) -> &Tensor<B> {
        &self.w
    }

    /// The memberships `Pi`, `[batch, tokens, heads]` (each row sums to 1 over the heads).
    pub fn memberships(&self) -> &Tensor<B> {
        &self.pi
    }
}

fn check_params<B: Kernels>(
    qkv: &Linear<B>,
    temp: &Tensor<B>,
    to_out: &Linear<B>,
    heads: usize,
    extra: &str,
) -> Result<usize> {
    let dim = qkv.in_features();
    let bad = |m: String| Err(Error::Config(format!("{extra}: {m}")));
    if heads == 0 || dim == 0 || dim % heads != 0 {
        return bad(format!("dim {dim} is not a positive multiple of heads {heads}"));
    }
    if qkv.weight.shape() != [dim, dim] {
        return bad(format!("qkv.weight has shape {:?}, expected [{dim}, {dim}]", qkv.weight.shape()));
    }
    if let Some(b) = &qkv.bias {
        if b.shape() != [dim] {
            return bad(format!("qkv.bias has shape {:?}, expected [{dim}]", b.shape()));
        }
    }
    if temp.shape() != [heads, 1] {
        return bad(format!("temp has shape {:?}, expected [{heads}, 1]", temp.shape()));
    }
    if to_out.weight.shape() != [dim, dim] {
        return bad(format!(
            "to_out.0.weight has shape {:?}, expected [{dim}, {dim}]",
            to_out.weight.shape()
        ));
    }
    match &to_out.bias {
        Some(b) if b.shape() == [dim] => Ok(dim),
        Some(b) => bad(format!("to_out.0.bias has shape {:?}, expected [{dim}]", b.shape())),
        None => bad("to_out.0.bias is missing".into()),
    }
}

fn uniform<B: Kernels>(be: &B, shape: &[usize], bound: f64, rng: &mut impl Rng) -> Tensor<B> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_f64(be, &v, shape)
}

/// PyTorch's default `nn.Linear` initialisation: weight and bias uniform in
/// `+-1/sqrt(in)`.
fn init_linear<B: Kernels>(be: &B, dim: usize, bias: bool, rng: &mut impl Rng) -> Linear<B> {
    let bound = 1.0 / (dim as f64).sqrt();
    Linear {
        weight: uniform(be, &[dim, dim], bound, rng),
        bias: bias.then(|| uniform(be, &[dim], bound, rng)),
    }
}

/// Looks up the shared parameters by name.
fn named_params<B: Kernels>(
    get: &impl Fn(&str) -> Option<Tensor<B>>,
    what: &str,
) -> Result<(Linear<B>, Tensor<B>, Linear<B>)> {
    let need =
        |name: &str| get(name).ok_or_else(|| Error::Config(format!("{what}: parameter `{name}` is missing")));
    let qkv = Linear { weight: need("qkv.weight")?, bias: get("qkv.bias") };
    let to_out = Linear { weight: need("to_out.0.weight")?, bias: Some(need("to_out.0.bias")?) };
    Ok((qkv, need("temp")?, to_out))
}

fn check_input<B: Kernels>(x: &Tensor<B>, dim: usize, op: &str) {
    assert!(
        x.rank() == 3 && x.dim(2) == dim && x.dim(1) > 0,
        "{op}: input {:?} is not [batch, tokens > 0, {dim}]",
        x.shape()
    );
}

impl<B: Kernels> Tssa<B> {
    /// Builds the layer from its parameters, checking every shape.
    pub fn new(qkv: Linear<B>, temp: Tensor<B>, to_out: Linear<B>, heads: usize) -> Result<Self> {
        check_params(&qkv, &temp, &to_out, heads, "TSSA")?;
        Ok(Tssa { qkv, temp, to_out, heads })
    }

    /// Builds the layer from parameters looked up by their PyTorch names
    /// (`qkv.weight`, optional `qkv.bias`, `temp`, `to_out.0.weight`, `to_out.0.bias`).
    pub fn from_named(heads: usize, get: impl Fn(&str) -> Option<Tensor<B>>) -> Result<Self> {
        let (qkv, temp, to_out) = named_params(&get, "TSSA")?;
        Self::new(qkv, temp, to_out, heads)
    }

    /// A freshly initialised layer as ToST builds it: PyTorch's default
    /// Linear initialisation and `temp = 1`.
    pub fn init(be: &B, dim: usize, heads: usize, qkv_bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let qkv = init_linear(be, dim, qkv_bias, rng);
        let to_out = init_linear(be, dim, true, rng);
        Self::new(qkv, Tensor::full(be, &[heads, 1], 1.0), to_out, heads)
    }

    /// Number of heads `K`.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.qkv.in_features()
    }

    /// Forward on `x = [batch, tokens, dim]`: the output and the cache.
    ///
    /// The column norms, memberships and `Pi`-weighted moments come from one
    /// backend kernel ([`token_stats`](mod@rate_core::kernels::token_stats): two passes
    /// over `w` on the CPU) and the factor `1 / (1 + dots)` is folded into the columns of
    /// `to_out.0.weight`, so that only `w`, `w Pi` and the output are
    /// `tokens x dim`; [`Self::forward_reference`] is the same map written
    /// step by step.
    pub fn forward(&self, x: &Tensor<B>) -> (Tensor<B>, TssaCache<B>) {
        let dim = self.dim();
        check_input(x, dim, "TSSA");
        let (b, h) = (x.dim(0), self.heads);
        let w = self.qkv.forward(x);
        // column norms over the tokens (clamped as F.normalize does), Pi and the
        // Pi-weighted second moments in one kernel
        let st = token_stats(&w, &self.temp, h, NORM_EPS);
        let norm = st.col_sq.sqrt();
        let norm_mask = norm.add_scalar(-NORM_EPS).step();
        let inv_norm2 = norm.clamp_min(NORM_EPS).square().recip();
        let pi_mass = st.pi_sum.add_scalar(PI_EPS);
        // dots[h,c] = sum_n Pi a / (sum_n Pi + eps)
        let dots = st.pi_sq.div(&pi_mass.reshape(&[b, h, 1]));
        let r = dots.add_scalar(1.0).recip();
        // y = -w Pi r; to_out(y) = (w Pi) (W_o diag(-r))^T + b_o
        let out = st.w_pi.matmul_t(&self.out_weight(&r), false, true).add(&self.out_bias());
        let cache = TssaCache {
            x: x.clone(),
            w,
            inv_norm2,
            norm_mask,
            what2_sum: st.what2_sum,
            pi: st.pi,
            pi_mass,
            r,
            w_pi: st.w_pi,
        };
        (out, cache)
    }

    /// `W_o diag(-r_b)` per batch element, `[b, dim, dim]`.
    fn out_weight(&self, r: &Tensor<B>) -> Tensor<B> {
        let (b, dim) = (r.dim(0), self.dim());
        self.to_out.weight.reshape(&[1, dim, dim]).mul(&r.neg().reshape(&[b, 1, dim]))
    }

    fn out_bias(&self) -> Tensor<B> {
        let dim = self.dim();
        match &self.to_out.bias {
            Some(bias) => bias.reshape(&[1, 1, dim]),
            None => Tensor::zeros(self.temp.backend(), &[1, 1, dim]),
        }
    }

    /// The forward written step by step as the ToST code does it (README D),
    /// with plain broadcasts: the reference the fast [`Self::forward`] is
    /// tested against.
    pub fn forward_reference(&self, x: &Tensor<B>) -> Tensor<B> {
        let dim = self.dim();
        check_input(x, dim, "TSSA");
        let (b, n, h) = (x.dim(0), x.dim(1), self.heads);
        let w = self.qkv.forward(x).reshape(&[b, n, h, dim / h]);
        let w_normed = w.div(&w.norm_axis(1).clamp_min(NORM_EPS));
        let s = w_normed.square().sum_axis(-1, false).mul(&self.temp.reshape(&[1, 1, h]));
        let pi = s.softmax(-1);
        let q = pi.div(&pi.sum_axis(1, true).add_scalar(PI_EPS));
        let dots = w.square().mul(&q.reshape(&[b, n, h, 1])).sum_axis(1, true);
        let attn = dots.add_scalar(1.0).recip();
        let y = w.mul(&pi.reshape(&[b, n, h, 1])).mul(&attn).neg();
        self.to_out.forward(&y.reshape(&[b, n, dim]))
    }
}

impl<B: Kernels> Module<B> for Tssa<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.qkv.visit(&join(prefix, "qkv"), f);
        f(join(prefix, "temp"), &self.temp);
        self.to_out.visit(&join(prefix, "to_out.0"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.qkv.visit_mut(&join(prefix, "qkv"), f);
        f(join(prefix, "temp"), &mut self.temp);
        self.to_out.visit_mut(&join(prefix, "to_out.0"), f);
    }
}

/// Causal TSSA (the authors' `CausalSelfAttention_TSSA`): the statistics at
/// token `n` use tokens `<= n` only. Parameters as [`Tssa`] (under the same
/// names) plus an optional learned per-position score offset `denom_bias`
/// (`[heads, max_tokens, 1]`, zero-initialised in the authors' code), which
/// bounds the sequence length when present.
#[derive(Clone, Debug)]
pub struct CausalTssa<B: Kernels> {
    /// Projection onto the heads' subspaces, `[dim, dim]` (+ optional bias).
    pub qkv: Linear<B>,
    /// Per-head temperature, `[heads, 1]`.
    pub temp: Tensor<B>,
    /// Output projection, `[dim, dim]` with bias.
    pub to_out: Linear<B>,
    /// Per-head, per-position offset added to every `what2` entry, `[heads, max_tokens, 1]`.
    pub denom_bias: Option<Tensor<B>>,
    heads: usize,
}

/// What [`CausalTssa::backward`] needs (all `O(n dim)`).
#[derive(Clone, Debug)]
pub struct CausalTssaCache<B: Kernels> {
    x: Tensor<B>,
    /// `w` `[b, n, h, dh]`.
    w: Tensor<B>,
    /// `a = w^2`.
    a: Tensor<B>,
    /// `max(cumsum_n a, eps)`.
    den: Tensor<B>,
    /// 1 where the running sum exceeds the clamp.
    den_mask: Tensor<B>,
    /// `sum_c what2` (with the position offset) `[b, n, h]`.
    what2_sum: Tensor<B>,
    /// `Pi` `[b, n, h]`.
    pi: Tensor<B>,
    /// `cumsum_n Pi + 1e-8` `[b, n, h]`.
    pi_mass: Tensor<B>,
    /// `dots` `[b, n, h, dh]`.
    dots: Tensor<B>,
    /// `1 / (1 + dots)`.
    r: Tensor<B>,
    /// Merged head outputs `[b, n, dim]`.
    y: Tensor<B>,
}

/// Running statistics of a streamed causal TSSA: `2 dh + 1` numbers per
/// head and stream, whatever the number of tokens seen.
#[derive(Clone, Debug)]
pub struct CausalTssaState<B: Kernels> {
    /// `sum_m a[m]` `[streams, h, dh]`.
    sum_sq: Tensor<B>,
    /// `sum_m Pi[m] a[m]` `[streams, h, dh]`.
    sum_pi_sq: Tensor<B>,
    /// `sum_m Pi[m]` `[streams, h]`.
    sum_pi: Tensor<B>,
    /// Tokens seen so far.
    pos: usize,
}

impl<B: Kernels> CausalTssaState<B> {
    /// Tokens pushed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<B: Kernels> CausalTssa<B> {
    /// Builds the layer from its parameters, checking every shape.
    pub fn new(
        qkv: Linear<B>,
        temp: Tensor<B>,
        to_out: Linear<B>,
        denom_bias: Option<Tensor<B>>,
        heads: usize,
    ) -> Result<Self> {
        check_params(&qkv, &temp, &to_out, heads, "causal TSSA")?;
        if let Some(d) = &denom_bias {
            if d.rank() != 3 || d.dim(0) != heads || d.dim(2) != 1 {
                return Err(Error::Config(format!(
                    "causal TSSA: denom_bias has shape {:?}, expected [{heads}, max_tokens, 1]",
                    d.shape()
                )));
            }
        }
        Ok(CausalTssa { qkv, temp, to_out, denom_bias, heads })
    }

    /// Builds the layer from parameters looked up by name (those of
    /// [`Tssa::from_named`] plus an optional `denom_bias`).
    pub fn from_named(heads: usize, get: impl Fn(&str) -> Option<Tensor<B>>) -> Result<Self> {
        let (qkv, temp, to_out) = named_params(&get, "causal TSSA")?;
        Self::new(qkv, temp, to_out, get("denom_bias"), heads)
    }

    /// A freshly initialised layer: default Linear initialisation, `temp = 1`,
    /// and a zero `denom_bias` for `max_tokens` positions when given.
    pub fn init(
        be: &B,
        dim: usize,
        heads: usize,
        qkv_bias: bool,
        max_tokens: Option<usize>,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let qkv = init_linear(be, dim, qkv_bias, rng);
        let to_out = init_linear(be, dim, true, rng);
        let bias = max_tokens.map(|t| Tensor::zeros(be, &[heads, t, 1]));
        Self::new(qkv, Tensor::full(be, &[heads, 1], 1.0), to_out, bias, heads)
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.qkv.in_features()
    }

    /// Longest sequence the layer accepts (bounded by `denom_bias`).
    pub fn max_tokens(&self) -> Option<usize> {
        self.denom_bias.as_ref().map(|d| d.dim(1))
    }

    fn check_len(&self, n: usize) -> Result<()> {
        match self.max_tokens() {
            Some(t) if n > t => {
                Err(Error::Config(format!("causal TSSA: {n} tokens exceed the {t} positions of denom_bias")))
            }
            _ => Ok(()),
        }
    }

    /// `dh * denom_bias[h, start .. start + n]` as `[1, n, h]` (zero if absent).
    fn position_offset(&self, start: usize, n: usize) -> Option<Tensor<B>> {
        let dh = (self.dim() / self.heads) as f64;
        self.denom_bias.as_ref().map(|d| {
            d.narrow(1, start, n).reshape(&[self.heads, n]).t().reshape(&[1, n, self.heads]).scale(dh)
        })
    }

    /// Whole-sequence forward on `x = [batch, tokens, dim]`; errors if the
    /// sequence is longer than `denom_bias`.
    pub fn forward(&self, x: &Tensor<B>) -> Result<(Tensor<B>, CausalTssaCache<B>)> {
        let dim = self.dim();
        check_input(x, dim, "causal TSSA");
        let (b, n, h) = (x.dim(0), x.dim(1), self.heads);
        self.check_len(n)?;
        let dh = dim / h;
        let w = self.qkv.forward(x).reshape(&[b, n, h, dh]);
        let a = w.square();
        let run = cumsum(&a, 1, false);
        let den_mask = run.add_scalar(-CAUSAL_NORM_EPS).step();
        let den = run.clamp_min(CAUSAL_NORM_EPS);
        let mut what2_sum = a.div(&den).sum_axis(-1, false);
        if let Some(off) = self.position_offset(0, n) {
            what2_sum = what2_sum.add(&off);
        }
        let pi = what2_sum.mul(&self.temp.reshape(&[1, 1, h])).softmax(-1);
        let pi_mass = cumsum(&pi, 1, false).add_scalar(PI_EPS);
        let pi4 = pi.reshape(&[b, n, h, 1]);
        let dots = cumsum(&a.mul(&pi4), 1, false).div(&pi_mass.reshape(&[b, n, h, 1]));
        let r = dots.add_scalar(1.0).recip();
        let y = w.mul(&pi4).mul(&r).neg().reshape(&[b, n, dim]);
        let out = self.to_out.forward(&y);
        let cache = CausalTssaCache { x: x.clone(), w, a, den, den_mask, what2_sum, pi, pi_mass, dots, r, y };
        Ok((out, cache))
    }

    /// Backward of [`Self::forward`]: adds the gradients of every parameter
    /// (and of `denom_bias`, zero past the sequence) and returns `dL/dx`.
    pub fn backward(
        &self,
        cache: &CausalTssaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let CausalTssaCache { x, w, a, den, den_mask, what2_sum, pi, pi_mass, dots, r, y } = cache;
        let (b, n, h, dh) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
        assert_eq!(
            grad_out.shape(),
            x.shape(),
            "causal TSSA backward: gradient {:?} vs input {:?}",
            grad_out.shape(),
            x.shape()
        );
        let g = self.to_out.backward(y, grad_out, &join(prefix, "to_out.0"), grads).reshape(&[b, n, h, dh]);
        let pi4 = pi.reshape(&[b, n, h, 1]);
        let mass4 = pi_mass.reshape(&[b, n, h, 1]);
        // out = -w Pi r
        let g_r = g.mul(r);
        let mut dw = g_r.mul(&pi4).neg();
        let mut dpi = g_r.mul(w).sum_axis(-1, false).neg();
        let dr = g.mul(w).mul(&pi4).neg();
        // r = 1 / (1 + dots), dots = M / mass with M = cumsum(Pi a), mass = cumsum(Pi) + eps
        let ddots = dr.mul(&r.square()).neg();
        let dm = ddots.div(&mass4);
        let dmass = ddots.mul(dots).sum_axis(-1, false).div(pi_mass).neg();
        let dm_back = cumsum(&dm, 1, true);
        dpi = dpi.add(&a.mul(&dm_back).sum_axis(-1, false)).add(&cumsum(&dmass, 1, true));
        let mut da = dm_back.mul(&pi4);
        // Pi = softmax over heads of s
        let ds = pi.mul(&dpi.sub(&pi.mul(&dpi).sum_axis(-1, true)));
        // s = temp * (sum_c a / den + dh denom_bias)
        let dtemp = ds.mul(what2_sum).reshape(&[b * n, h]).sum_axis(0, false).reshape(&[h, 1]);
        accumulate(grads, join(prefix, "temp"), dtemp);
        let ds_t = ds.mul(&self.temp.reshape(&[1, 1, h]));
        if let Some(bias) = &self.denom_bias {
            let t = bias.dim(1);
            let dpos = ds_t.sum_axis(0, false).scale(dh as f64).t().reshape(&[h, n, 1]);
            let dpos = if t > n {
                Tensor::cat(&[&dpos, &Tensor::zeros(bias.backend(), &[h, t - n, 1])], 1)
            } else {
                dpos
            };
            accumulate(grads, join(prefix, "denom_bias"), dpos);
        }
        let dwhat2 = ds_t.reshape(&[b, n, h, 1]);
        // what2 = a / den, den = max(cumsum a, eps)
        da = da.add(&dwhat2.div(den));
        let dden = dwhat2.mul(a).div(&den.square()).neg().mul(den_mask);
        da = da.add(&cumsum(&dden, 1, true));
        dw = dw.add(&da.mul(w).scale(2.0));
        self.qkv.backward(x, &dw.reshape(&[b, n, h * dh]), &join(prefix, "qkv"), grads)
    }

    /// Empty running statistics for `streams` independent sequences.
    pub fn start(&self, streams: usize) -> CausalTssaState<B> {
        let be = self.temp.backend();
        let (h, dh) = (self.heads, self.dim() / self.heads);
        CausalTssaState {
            sum_sq: Tensor::zeros(be, &[streams, h, dh]),
            sum_pi_sq: Tensor::zeros(be, &[streams, h, dh]),
            sum_pi: Tensor::zeros(be, &[streams, h]),
            pos: 0,
        }
    }

    /// Pushes one token per stream (`x = [streams, dim]`) and returns its
    /// output `[streams, dim]`, equal to the whole-sequence output at this
    /// position. Errors past the length of `denom_bias`.
    pub fn step(&self, state: &mut CausalTssaState<B>, x: &Tensor<B>) -> Result<Tensor<B>> {
        let (dim, h) = (self.dim(), self.heads);
        let streams = state.sum_pi.dim(0);
        assert_eq!(
            x.shape(),
            [streams, dim],
            "causal TSSA step: token {:?} is not [{streams}, {dim}]",
            x.shape()
        );
        self.check_len(state.pos + 1)?;
        let dh = dim / h;
        let w = self.qkv.forward(x).reshape(&[streams, h, dh]);
        let a = w.square();
        state.sum_sq = state.sum_sq.add(&a);
        let mut what2_sum = a.div(&state.sum_sq.clamp_min(CAUSAL_NORM_EPS)).sum_axis(-1, false);
        if let Some(off) = self.position_offset(state.pos, 1) {
            what2_sum = what2_sum.add(&off.reshape(&[1, h]));
        }
        let pi = what2_sum.mul(&self.temp.reshape(&[1, h])).softmax(-1);
        let pi3 = pi.reshape(&[streams, h, 1]);
        state.sum_pi = state.sum_pi.add(&pi);
        state.sum_pi_sq = state.sum_pi_sq.add(&a.mul(&pi3));
        let dots = state.sum_pi_sq.div(&state.sum_pi.add_scalar(PI_EPS).reshape(&[streams, h, 1]));
        let y = w.mul(&pi3).div(&dots.add_scalar(1.0)).neg().reshape(&[streams, dim]);
        state.pos += 1;
        Ok(self.to_out.forward(&y))
    }
}

impl<B: Kernels> Module<B> for CausalTssa<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.qkv.visit(&join(prefix, "qkv"), f);
        f(join(prefix, "temp"), &self.temp);
        if let Some(d) = &self.denom_bias {
            f(join(prefix, "denom_bias"), d);
        }
        self.to_out.visit(&join(prefix, "to_out.0"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.qkv.visit_mut(&join(prefix, "qkv"), f);
        f(join(prefix, "temp"), &mut self.temp);
        if let Some(d) = &mut self.denom_bias {
            f(join(prefix, "denom_bias"), d);
        }
        self.to_out.visit_mut(&join(prefix, "to_out.0"), f);
    }
}

/// TSSA as a block: the attention of TOST's pre-norm layer. Every output token
/// depends on statistics over all tokens, so it computes every token
/// whatever the number of queries asked for.
impl<B: Kernels> Block<B> for Tssa<B> {
    type Config = TostConfig;
    type Cache = TssaCache<B>;
    type Prepared = ();

    fn init(backend: &B, c: &TostConfig, rng: &mut StdRng) -> Result<Self> {
        Tssa::init(backend, c.vision.dim, c.vision.heads, c.qkv_bias, rng)
    }

    fn prepare(&self) {}

    fn forward(&self, x: &Tensor<B>, _queries: usize, _prepared: &()) -> (Tensor<B>, TssaCache<B>) {
        Tssa::forward(self, x)
    }

    /// Backward: adds the gradients of `qkv.weight`, `qkv.bias`, `temp`,
    /// `to_out.0.weight` and `to_out.0.bias` (under `prefix`) and returns `dL/dx`.
    fn backward(
        &self,
        cache: &TssaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
        _micro_batch: bool,
    ) -> Tensor<B> {
        let TssaCache { x, w, inv_norm2, norm_mask, what2_sum, pi, pi_mass, r, w_pi } = cache;
        let (b, n, dim) = (w.dim(0), w.dim(1), w.dim(2));
        let a = &w.square();
        let (h, dh) = (self.heads, dim / self.heads);
        assert_eq!(
            grad_out.shape(),
            x.shape(),
            "TSSA backward: gradient {:?} vs input {:?}",
            grad_out.shape(),
            x.shape()
        );
        // out = w_pi W_r^T + b_o with W_r = W_o diag(-r)
        let out_prefix = join(prefix, "to_out.0");
        if self.to_out.bias.is_some() {
            accumulate(grads, join(&out_prefix, "bias"), grad_out.reshape(&[b * n, dim]).sum_axis(0, false));
        }
        let d_wr = grad_out.matmul_t(w_pi, true, false);
        accumulate(
            grads,
            join(&out_prefix, "weight"),
            d_wr.mul(&r.neg().reshape(&[b, 1, dim])).sum_axis(0, false),
        );
        let dr = d_wr
            .mul(&self.to_out.weight.reshape(&[1, dim, dim]))
            .sum_axis(1, false)
            .neg()
            .reshape(&[b, h, dh]);
        let g_wpi = grad_out.matmul(&self.out_weight(r));
        // w_pi = w Pi
        let pi4 = pi.reshape(&[b, n, h, 1]);
        let dw_direct = g_wpi.reshape(&[b, n, h, dh]).mul(&pi4).reshape(&[b, n, dim]);
        let mut dpi = g_wpi.mul(w).reshape(&[b, n, h, dh]).sum_axis(-1, false);
        // r = 1 / (1 + dots), dots = sum_n q a
        let ddots = dr.mul(&r.square()).neg();
        let q = pi.div(pi_mass);
        let dq = head_dot(a, &ddots);
        // q = Pi / pi_mass, pi_mass = sum_n Pi + eps
        let dmass = dq.mul(&q).sum_axis(1, true).div(pi_mass).neg();
        dpi = dpi.add(&dq.div(pi_mass)).add(&dmass);
        // Pi = softmax over heads of s
        let ds = pi.mul(&dpi.sub(&pi.mul(&dpi).sum_axis(-1, true)));
        // s = temp * what2_sum
        let dtemp = ds.mul(what2_sum).reshape(&[b * n, h]).sum_axis(0, false).reshape(&[h, 1]);
        accumulate(grads, join(prefix, "temp"), dtemp);
        let dwhat2 = ds.mul(&self.temp.reshape(&[1, 1, h]));
        // what2_sum = sum_c a inv_norm2, inv_norm2 = 1 / sum_n a where the norm is not clamped
        let dinv = head_weighted_sum(&dwhat2, a);
        let dnorm2 = dinv.mul(&inv_norm2.square()).mul(norm_mask).neg();
        // da = q ddots + dwhat2 inv_norm2 + dnorm2 (broadcast over tokens), times 2 for a = w^2
        let coef = Tensor::cat(
            &[q.clone(), dwhat2, Tensor::full(w.backend(), &[b, n, 1], 1.0)].iter().collect::<Vec<_>>(),
            -1,
        );
        let rows = Tensor::cat(
            &[block_diag(&ddots).t(), block_diag(inv_norm2).t(), dnorm2.reshape(&[b, 1, dim])]
                .iter()
                .collect::<Vec<_>>(),
            1,
        );
        let da2 = coef.matmul(&rows.scale(2.0));
        let dw = dw_direct.add(&da2.mul(w));
        self.qkv.backward(x, &dw, &join(prefix, "qkv"), grads)
    }

    fn measure(cache: &TssaCache<B>) -> Result<LayerMeasurement<B>> {
        let heads = split_heads(cache.projected(), cache.memberships().dim(2));
        LayerMeasurement::of(&heads, None, Some(cache.memberships().clone()))
    }
}
