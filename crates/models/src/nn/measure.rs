//! The per-layer measurements of the white-box transformers that users expect (4.2.20's "compress and sparsify"), as the authors' scripts take them: the coding rate of each head's projected tokens (tokens L2-normalised, `eps^2 = 0.01`, `vis_utils/coding_rate.py`) and the fraction of exact zeros of the ISTA output (`vis_utils/crate_hook.py`).

use crate::{Kernels, Result, Tensor};

/// `eps^2` of the authors' per-head coding-rate measurement (`CodingRate(eps=0.01)`).
pub const MEASURE_EPS_SQ: f64 = 0.01;

/// Per-layer measurements of CRATE, AoT and TOST.
#[derive(Clone, Debug)]
pub struct LayerMeasurement<B: Kernels> {
    /// Coding rate of each head's projected tokens (L2-normalised, `eps^2 = 0.01`), mean over the batch.
    pub coding_rate_per_head: Vec<f64>,
    /// Sum over heads of the coding rate, mean over the batch (the authors' `R^c(Z^l)`).
    pub coding_rate: f64,
    /// Sample standard deviation over the batch of the summed coding rate.
    pub coding_rate_std: f64,
    /// Fraction of exact zeros of the ISTA output (CRATE, TOST): mean and
    /// population standard deviation over the batch; `None` without ISTA (AoT).
    pub sparsity: Option<(f64, f64)>,
    /// MSSA: attention maps `[batch, heads, tokens, tokens]` (rows: queries;
    /// `None` when the tiled kernel ran and the map was never formed); TSSA:
    /// memberships `Pi` `[batch, tokens, heads]`.
    pub map: Option<Tensor<B>>,
}

impl<B: Kernels> LayerMeasurement<B> {
    /// The measurements of one layer from its heads' tokens
    /// (`[batch, heads, tokens, dim_head]`), its ISTA output if any and its map.
    pub fn of(head_tokens: &Tensor<B>, ista_out: Option<&Tensor<B>>, map: Option<Tensor<B>>) -> Result<Self> {
        let rates = head_coding_rates(head_tokens, MEASURE_EPS_SQ)?;
        let heads = rates.first().map_or(0, |r| r.len());
        let b = rates.len().max(1) as f64;
        let coding_rate_per_head = (0..heads).map(|h| rates.iter().map(|r| r[h]).sum::<f64>() / b).collect();
        let totals: Vec<f64> = rates.iter().map(|r| r.iter().sum()).collect();
        let (coding_rate, coding_rate_std) = mean_std(&totals, true);
        let sparsity = ista_out.map(|out| mean_std(&zero_fraction_per_image(out), false));
        Ok(LayerMeasurement { coding_rate_per_head, coding_rate, coding_rate_std, sparsity, map })
    }
}

/// Coding rates `[batch][head]` of `[batch, heads, tokens, dim_head]` projected
/// tokens, each token scaled to unit norm first (norms clamped at 1e-12), with
/// `R = 1/2 logdet(I + p/(N eps^2) W^T W)` by [`rate_core::coding_rate`].
pub fn head_coding_rates<B: Kernels>(w: &Tensor<B>, eps_sq: f64) -> Result<Vec<Vec<f64>>> {
    let (b, h, n, p) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    let unit = w.div(&w.norm_axis(-1).clamp_min(1e-12)).reshape(&[b * h, n, p]);
    let mut out = vec![vec![0.0; h]; b];
    for (bi, row) in out.iter_mut().enumerate() {
        for (hi, r) in row.iter_mut().enumerate() {
            let z = unit.narrow(0, bi * h + hi, 1).reshape(&[n, p]);
            *r = rate_core::coding_rate(&z, eps_sq)?;
        }
    }
    Ok(out)
}

/// Fraction of exact zeros of each image's `[tokens, dim]` block of a `[batch, tokens, dim]` tensor.
pub fn zero_fraction_per_image<B: Kernels>(x: &Tensor<B>) -> Vec<f64> {
    let b = x.dim(0);
    let per = x.numel() / b.max(1);
    let v = x.to_f64_vec();
    v.chunks(per.max(1)).map(|c| c.iter().filter(|&&e| e == 0.0).count() as f64 / per as f64).collect()
}

/// Mean and standard deviation (sample when `unbiased`, else population; NaN for one sample unbiased).
pub fn mean_std(v: &[f64], unbiased: bool) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let dof = if unbiased { n - 1.0 } else { n };
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / dof;
    (mean, if dof > 0.0 { var.sqrt() } else { f64::NAN })
}
