//! One ReduNet layer map (4.1.11-4.1.13) on one block of samples, fused: responses `[E; C_j] z`, soft memberships, the update, the normalisation and, in the training pass, the block's Gram lanes; compiled per instruction set through `pulp`.

use super::blocks::{add_lanes, gram_lanes, lane_len, Blocks};
use super::rows;
use super::BLOCK;
use crate::exp::fast_exp;
use rate_core::Element;
use rayon::prelude::*;

/// Per-block work space.
pub(super) struct Scratch<T> {
    /// Responses `[E; C_1; ...; C_k] z`, `(k+1) d` runs of `BLOCK`.
    resp: Vec<T>,
    /// `-lambda ||C_j z||`, then `exp` of it shifted, `k` runs.
    expo: Vec<f64>,
    /// `gamma_j pi_j(z)`, `k` runs.
    coef: Vec<T>,
    /// Lane accumulators of a covariance.
    lanes: Vec<T>,
    /// Per-lane work rows: squared norms, the largest exponent, the softmax sum, the compression term.
    norm2: [T; BLOCK],
    top: [f64; BLOCK],
    sum: [f64; BLOCK],
    clus: [T; BLOCK],
}

impl<T: Element> Scratch<T> {
    pub(super) fn new(d: usize, k: usize) -> Self {
        Scratch {
            resp: vec![T::zero(); (k + 1) * d * BLOCK],
            expo: vec![0.0; k * BLOCK],
            coef: vec![T::zero(); k * BLOCK],
            lanes: vec![T::zero(); lane_len(d)],
            norm2: [T::zero(); BLOCK],
            top: [0.0; BLOCK],
            sum: [0.0; BLOCK],
            clus: [T::zero(); BLOCK],
        }
    }
}

/// One layer's parameters in the element type.
pub(super) struct Kernel<'a, T> {
    pub(super) d: usize,
    pub(super) k: usize,
    /// `[E; C_1; ...; C_k]`, `(k+1) d x d` row-major.
    pub(super) w: &'a [T],
    pub(super) gamma: &'a [T],
    pub(super) eta: T,
    pub(super) lambda: f64,
    pub(super) floor: T,
}

impl<T: Element> Kernel<'_, T> {
    /// Applies the layer map to the `BLOCK` samples of `z` in place; writes
    /// the argmax membership of each lane into `yhat` when given.
    #[inline(always)]
    pub(super) fn block(&self, z: &mut [T], sc: &mut Scratch<T>, yhat: Option<&mut [u32]>) {
        match self.d {
            1 => self.block_small::<1>(z, sc, yhat),
            2 => self.block_small::<2>(z, sc, yhat),
            3 => self.block_small::<3>(z, sc, yhat),
            4 => self.block_small::<4>(z, sc, yhat),
            5 => self.block_small::<5>(z, sc, yhat),
            6 => self.block_small::<6>(z, sc, yhat),
            7 => self.block_small::<7>(z, sc, yhat),
            8 => self.block_small::<8>(z, sc, yhat),
            _ => self.block_any(z, sc, yhat),
        }
    }

    /// [`Self::block_any`] with the dimension known at compile time, so that
    /// the sums over features unroll and each response row is written once.
    /// Same operations in the same order, so the same values.
    #[inline(always)]
    fn block_small<const D: usize>(&self, z: &mut [T], sc: &mut Scratch<T>, yhat: Option<&mut [u32]>) {
        let k = self.k;
        let (floor, lambda, eta) = (self.floor, self.lambda, self.eta);
        let z = &mut z[..D * BLOCK];
        let w = &self.w[..(k + 1) * D * D];
        // C_j z, its norm and the exponent -lambda max(||C_j z||, floor) (4.1.11).
        sc.top.fill(f64::NEG_INFINITY);
        for j in 0..k {
            let ys = &mut sc.resp[j * D * BLOCK..(j + 1) * D * BLOCK];
            for (r, y) in ys.chunks_exact_mut(BLOCK).enumerate() {
                rows::combine::<T, D>(y, &w[((j + 1) * D + r) * D..], z);
            }
            rows::exponent::<T, D>(&mut sc.expo[j * BLOCK..], &mut sc.top, ys, lambda, floor);
        }
        sc.sum.fill(0.0);
        for e in sc.expo[..k * BLOCK].chunks_exact_mut(BLOCK) {
            rows::exp_shifted(e, &mut sc.sum, &sc.top);
        }
        if let Some(yhat) = yhat {
            sc.top.fill(f64::NEG_INFINITY);
            for (j, e) in sc.expo[..k * BLOCK].chunks_exact(BLOCK).enumerate() {
                rows::argmax_step(&mut sc.top, yhat, e, j as u32);
            }
        }
        rows::reciprocal(&mut sc.sum);
        for (j, (cf, e)) in
            sc.coef.chunks_exact_mut(BLOCK).zip(sc.expo.chunks_exact(BLOCK)).take(k).enumerate()
        {
            rows::coefficient(cf, e, &sc.sum, self.gamma[j]);
        }
        // sum_j gamma_j pi_j C_j z, E z, the update (4.1.12) and the normalisation.
        let (resp, u) = sc.resp.split_at_mut(k * D * BLOCK);
        for c in 0..D {
            rows::product(&mut sc.clus, &sc.coef, &resp[c * BLOCK..]);
            for j in 1..k {
                rows::add_product(&mut sc.clus, &sc.coef[j * BLOCK..], &resp[(j * D + c) * BLOCK..]);
            }
            rows::update::<T, D>(&mut u[c * BLOCK..], &w[c * D..], z, c, &sc.clus, eta);
        }
        rows::normalise::<T, D>(z, u, &mut sc.norm2, floor);
    }

    /// The layer map for any dimension: every loop runs over the lanes of one
    /// row of the scratch space, so it vectorises.
    #[inline(always)]
    pub(super) fn block_any(&self, z: &mut [T], sc: &mut Scratch<T>, yhat: Option<&mut [u32]>) {
        let (d, k) = (self.d, self.k);
        let z = &mut z[..d * BLOCK];
        // Responses E z and C_j z: one (k+1)d x d product per sample.
        for r in 0..(k + 1) * d {
            let wr = &self.w[r * d..(r + 1) * d];
            let y = &mut sc.resp[r * BLOCK..(r + 1) * BLOCK];
            let (w0, z0) = (wr[0], &z[..BLOCK]);
            for i in 0..BLOCK {
                y[i] = w0 * z0[i];
            }
            for c in 1..d {
                let (w, zc) = (wr[c], &z[c * BLOCK..(c + 1) * BLOCK]);
                for i in 0..BLOCK {
                    y[i] = y[i] + w * zc[i];
                }
            }
        }
        // Soft membership (4.1.11): softmax_j(-lambda max(||C_j z||, floor)), max-subtracted.
        let top = &mut sc.top;
        top.fill(f64::NEG_INFINITY);
        for j in 0..k {
            let n2 = &mut sc.norm2;
            let first = (j + 1) * d;
            let y = &sc.resp[first * BLOCK..(first + 1) * BLOCK];
            for i in 0..BLOCK {
                n2[i] = y[i] * y[i];
            }
            for c in 1..d {
                let y = &sc.resp[(first + c) * BLOCK..(first + c + 1) * BLOCK];
                for i in 0..BLOCK {
                    n2[i] = n2[i] + y[i] * y[i];
                }
            }
            let s = &mut sc.expo[j * BLOCK..(j + 1) * BLOCK];
            for i in 0..BLOCK {
                let n = n2[i].sqrt();
                let n = if n > self.floor { n } else { self.floor };
                let v = -self.lambda * n.f64();
                s[i] = v;
                top[i] = if v > top[i] { v } else { top[i] };
            }
        }
        let sum = &mut sc.sum;
        sum.fill(0.0);
        for j in 0..k {
            let e = &mut sc.expo[j * BLOCK..(j + 1) * BLOCK];
            for i in 0..BLOCK {
                let v = fast_exp(e[i] - top[i]);
                e[i] = v;
                sum[i] += v;
            }
        }
        if let Some(yhat) = yhat {
            // First index of the largest membership (ties to the lower class).
            let best = &mut sc.top;
            best.fill(f64::NEG_INFINITY);
            let yhat = &mut yhat[..BLOCK];
            for j in 0..k {
                let e = &sc.expo[j * BLOCK..(j + 1) * BLOCK];
                for i in 0..BLOCK {
                    let better = e[i] > best[i];
                    best[i] = if better { e[i] } else { best[i] };
                    yhat[i] = if better { j as u32 } else { yhat[i] };
                }
            }
        }
        for v in sum.iter_mut() {
            *v = 1.0 / *v;
        }
        for j in 0..k {
            let g = self.gamma[j];
            let e = &sc.expo[j * BLOCK..(j + 1) * BLOCK];
            let cf = &mut sc.coef[j * BLOCK..(j + 1) * BLOCK];
            for i in 0..BLOCK {
                cf[i] = g * T::of(e[i] * sum[i]);
            }
        }
        // Update z + eta (E z - sum_j gamma_j pi_j C_j z) (4.1.12), then normalise.
        let n2 = &mut sc.norm2;
        n2.fill(T::zero());
        for c in 0..d {
            let clus = &mut sc.clus;
            let (cf, y) = (&sc.coef[..BLOCK], &sc.resp[(d + c) * BLOCK..(d + c + 1) * BLOCK]);
            for i in 0..BLOCK {
                clus[i] = cf[i] * y[i];
            }
            for j in 1..k {
                let row = (j + 1) * d + c;
                let y = &sc.resp[row * BLOCK..(row + 1) * BLOCK];
                let cf = &sc.coef[j * BLOCK..(j + 1) * BLOCK];
                for i in 0..BLOCK {
                    clus[i] = clus[i] + cf[i] * y[i];
                }
            }
            let ye = &sc.resp[c * BLOCK..(c + 1) * BLOCK];
            let zc = &mut z[c * BLOCK..(c + 1) * BLOCK];
            for i in 0..BLOCK {
                let u = zc[i] + self.eta * (ye[i] - clus[i]);
                zc[i] = u;
                n2[i] = n2[i] + u * u;
            }
        }
        for v in n2.iter_mut() {
            let n = v.sqrt();
            *v = T::one() / if n > self.floor { n } else { self.floor };
        }
        for c in 0..d {
            let zc = &mut z[c * BLOCK..(c + 1) * BLOCK];
            for i in 0..BLOCK {
                zc[i] = zc[i] * n2[i];
            }
        }
    }

    /// One layer over all blocks (training pass): the per-slot `yhat` and
    /// the per-group covariances of the output (`groups x d x d`, into `grams`).
    ///
    /// Blocks are processed in chunks of [`CHUNK_BLOCKS`], in parallel; the
    /// covariance of each chunk is summed on its own and the chunks are added
    /// in order, so the result does not depend on the number of threads.
    pub(super) fn build_pass(&self, blocks: &mut Blocks<T>, yhat_slot: &mut [u32], grams: &mut [f64]) {
        let (d, k) = (self.d, self.k);
        let ngroups = blocks.groups.len();
        let group_of = &blocks.group_of_block;
        let arch = pulp::Arch::new();
        let chunk_partials: Vec<Vec<f64>> = blocks
            .data
            .par_chunks_mut(CHUNK_BLOCKS * d * BLOCK)
            .zip(yhat_slot.par_chunks_mut(CHUNK_BLOCKS * BLOCK))
            .enumerate()
            .map_init(
                || Scratch::new(d, k),
                |sc, (ci, (data, yhat))| {
                    let mut out = vec![0.0; ngroups * d * d];
                    let b0 = ci * CHUNK_BLOCKS;
                    let mut current = group_of[b0];
                    sc.lanes.fill(T::zero());
                    for (bi, z) in data.chunks_exact_mut(d * BLOCK).enumerate() {
                        let g = group_of[b0 + bi];
                        if g != current {
                            add_lanes(&sc.lanes, d, &mut out[current * d * d..(current + 1) * d * d]);
                            sc.lanes.fill(T::zero());
                            current = g;
                        }
                        let yhat = Some(&mut yhat[bi * BLOCK..(bi + 1) * BLOCK]);
                        arch.dispatch(BlockOp { kernel: self, z, sc, yhat, gram: true });
                    }
                    add_lanes(&sc.lanes, d, &mut out[current * d * d..(current + 1) * d * d]);
                    out
                },
            )
            .collect();
        grams.fill(0.0);
        for part in &chunk_partials {
            for (g, p) in grams.iter_mut().zip(part) {
                *g += p;
            }
        }
    }
}

/// One block through one layer, plus its covariance lanes when `gram`: the
/// unit handed to `pulp`, whose body (all `#[inline(always)]`) is compiled
/// once per instruction set and chosen at run time.
pub(super) struct BlockOp<'a, 'k, T> {
    pub(super) kernel: &'a Kernel<'k, T>,
    pub(super) z: &'a mut [T],
    pub(super) sc: &'a mut Scratch<T>,
    pub(super) yhat: Option<&'a mut [u32]>,
    pub(super) gram: bool,
}

impl<T: Element> pulp::WithSimd for BlockOp<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.kernel.block(self.z, self.sc, self.yhat);
        if self.gram {
            gram_lanes(self.z, self.kernel.d, &mut self.sc.lanes);
        }
    }
}

/// Blocks per chunk of the training pass (the unit of parallel work and of
/// the covariance partial sums).
pub(super) const CHUNK_BLOCKS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use rate_core::kernels::redunet::NORM_FLOOR;

    /// The compile-time-dimension kernel gives the same values as the general one.
    #[test]
    fn small_kernel_equals_general_kernel() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(3);
        for (d, k) in [(1, 2), (3, 3), (5, 4), (8, 2)] {
            let w: Vec<f64> = (0..(k + 1) * d * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let gamma: Vec<f64> = (0..k).map(|j| (j + 1) as f64 / 10.0).collect();
            let kernel = Kernel { d, k, w: &w, gamma: &gamma, eta: 0.5, lambda: 7.0, floor: NORM_FLOOR };
            let z0: Vec<f64> = (0..d * BLOCK).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (mut za, mut zb) = (z0.clone(), z0);
            let (mut ya, mut yb) = ([0u32; BLOCK], [0u32; BLOCK]);
            let mut sc = Scratch::new(d, k);
            kernel.block(&mut za, &mut sc, Some(&mut ya));
            kernel.block_any(&mut zb, &mut sc, Some(&mut yb));
            assert_eq!(za, zb, "d = {d}, k = {k}");
            assert_eq!(ya, yb, "d = {d}, k = {k}");
            assert!(d == 1 || ya.iter().any(|&y| y != ya[0]), "memberships should vary");
        }
    }
}
