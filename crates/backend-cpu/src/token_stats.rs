//! TSSA's token statistics (4.3.14-4.3.15) on the CPU in two passes over the tokens: column sums of squares, then per token the head scores, the membership softmax over heads, `w Pi` and the `Pi`-weighted moments, rows in parallel.
//!
//! The op-by-op default body writes `w^2` and reads it four times; here `w`
//! is read twice and `w Pi` written once, and the sums over tokens are
//! per-chunk partials added at the end (so the rounding differs from the
//! reference by a few ulps, not more).

use crate::lanes::{add_into, add_partials, lanes_sq_dot};
use crate::CpuElem;
use rate_core::kernels::{TokenStats, TokenStatsSpec};
use rayon::prelude::*;

/// Tokens per task, at least (smaller problems run on the calling thread).
const MIN_ROWS: usize = 64;

/// Per-chunk partial sums of the second pass: `sum_n Pi` and `sum_n Pi w^2`.
struct Partial<T> {
    pi_sum: Vec<T>,
    pi_sq: Vec<T>,
}

impl<T: CpuElem> Partial<T> {
    fn zeros(h: usize, dim: usize) -> Self {
        Partial { pi_sum: vec![T::zero(); h], pi_sq: vec![T::zero(); dim] }
    }
    fn add(mut self, o: Partial<T>) -> Self {
        add_into(&mut self.pi_sum, &o.pi_sum);
        add_into(&mut self.pi_sq, &o.pi_sq);
        self
    }
}

/// The second pass over the rows of `w` (`rows x dim`): writes `what2_sum`,
/// `pi` (`rows x h`) and `w_pi` (`rows x dim`), returns the partial sums.
#[allow(clippy::too_many_arguments)]
fn rows_pass<T: CpuElem>(
    w: &[T],
    inv_norm2: &[T],
    temp: &[T],
    h: usize,
    dh: usize,
    what2: &mut [T],
    pi: &mut [T],
    w_pi: &mut [T],
) -> Partial<T> {
    let dim = h * dh;
    let mut part = Partial::zeros(h, dim);
    let rows = w.chunks_exact(dim).zip(w_pi.chunks_exact_mut(dim));
    let heads = what2.chunks_exact_mut(h).zip(pi.chunks_exact_mut(h));
    for ((wr, wp), (s_row, p_row)) in rows.zip(heads) {
        let mut shift = T::neg_infinity();
        for k in 0..h {
            let s = lanes_sq_dot(&wr[k * dh..(k + 1) * dh], &inv_norm2[k * dh..(k + 1) * dh]);
            s_row[k] = s;
            p_row[k] = temp[k] * s;
            shift = shift.max(p_row[k]);
        }
        let total = T::exp_shift_sum(p_row, shift);
        for k in 0..h {
            let p = p_row[k] / total;
            p_row[k] = p;
            part.pi_sum[k] += p;
            let range = k * dh..(k + 1) * dh;
            for ((o, acc), &x) in
                wp[range.clone()].iter_mut().zip(&mut part.pi_sq[range.clone()]).zip(&wr[range])
            {
                *o = x * p;
                *acc += *o * x;
            }
        }
    }
    part
}

/// The statistics of one sequence `w` (`n x dim`) into its slices of the
/// outputs; rows split into chunks on rayon when `parallel`.
fn one_sequence<T: CpuElem>(
    w: &[T],
    temp: &[T],
    s: &TokenStatsSpec,
    parallel: bool,
    out: TokenStats<&mut [T]>,
) {
    let (n, h, dh) = (s.n, s.heads, s.dh);
    let dim = h * dh;
    // one chunk (one task) unless parallel
    let chunk = if parallel { n.div_ceil(4 * rayon::current_num_threads()).max(MIN_ROWS) } else { n };
    // pass 1: sum_n w^2 per column
    let sums = w
        .par_chunks(chunk * dim)
        .map(|rows| {
            let mut acc = vec![T::zero(); dim];
            for r in rows.chunks_exact(dim) {
                acc.iter_mut().zip(r).for_each(|(a, &x)| *a += x * x);
            }
            acc
        })
        .reduce(|| vec![T::zero(); dim], add_partials);
    out.col_sq.copy_from_slice(&sums);
    let eps = T::of(s.norm_eps);
    let inv_norm2: Vec<T> = sums
        .iter()
        .map(|&q| {
            let norm = q.sqrt().max(eps);
            T::one() / (norm * norm)
        })
        .collect();
    // pass 2: scores, memberships, w Pi and the weighted moments
    let part = w
        .par_chunks(chunk * dim)
        .zip(out.what2_sum.par_chunks_mut(chunk * h))
        .zip(out.pi.par_chunks_mut(chunk * h))
        .zip(out.w_pi.par_chunks_mut(chunk * dim))
        .map(|(((wc, sc), pc), oc)| rows_pass(wc, &inv_norm2, temp, h, dh, sc, pc, oc))
        .reduce(|| Partial::zeros(h, dim), Partial::add);
    out.pi_sum.copy_from_slice(&part.pi_sum);
    out.pi_sq.copy_from_slice(&part.pi_sq);
}

/// The statistics of `spec.batch` sequences `w` (`batch x n x heads*dh`):
/// sequences in parallel when there are many short ones, the rows of each
/// sequence in parallel otherwise (never from inside a rayon task).
pub fn token_stats<T: CpuElem>(w: &[T], temp: &[T], s: TokenStatsSpec) -> TokenStats<Vec<T>> {
    let TokenStatsSpec { batch: b, n, heads: h, dh, .. } = s;
    let dim = h * dh;
    let mut out = TokenStats {
        col_sq: vec![T::zero(); b * dim],
        what2_sum: vec![T::zero(); b * n * h],
        pi: vec![T::zero(); b * n * h],
        pi_sum: vec![T::zero(); b * h],
        pi_sq: vec![T::zero(); b * dim],
        w_pi: vec![T::zero(); b * n * dim],
    };
    let in_task = rayon::current_thread_index().is_some();
    let threads = rayon::current_num_threads();
    let by_sequence = !in_task && b >= 2 * threads && n * dim * b >= 1 << 16;
    let rows_parallel = !in_task && !by_sequence && n >= 2 * MIN_ROWS;
    let TokenStats { col_sq, what2_sum, pi, pi_sum, pi_sq, w_pi } = &mut out;
    w.par_chunks(n * dim)
        .zip(col_sq.par_chunks_mut(dim))
        .zip(what2_sum.par_chunks_mut(n * h))
        .zip(pi.par_chunks_mut(n * h))
        .zip(pi_sum.par_chunks_mut(h))
        .zip(pi_sq.par_chunks_mut(dim))
        .zip(w_pi.par_chunks_mut(n * dim))
        // all sequences in one task unless by_sequence
        .with_min_len(if by_sequence { 1 } else { b.max(1) })
        .for_each(|((((((wb, col_sq), what2_sum), pi), pi_sum), pi_sq), w_pi)| {
            let out = TokenStats { col_sq, what2_sum, pi, pi_sum, pi_sq, w_pi };
            one_sequence(wb, temp, &s, rows_parallel, out)
        });
    out
}
