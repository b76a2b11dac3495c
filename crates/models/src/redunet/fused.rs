//! Fused host engine of the ReduNet layer map (4.1.11-4.1.13): responses, soft memberships, update, normalisation and output covariances in one pass over blocks of samples.
//!
//! Samples are stored in blocks of [`BLOCK`]; inside a block, feature `c` of
//! its samples is one contiguous run, so every inner loop runs across the
//! samples of a block and vectorises. When labels are given each class gets
//! whole blocks, so the covariance `Z_j^T Z_j` of a class is a sum over a block
//! range; the last block of a class is padded with zero samples, which stay
//! zero through every layer and add nothing to any covariance. Per layer the
//! only work outside the pass is `k + 1` Cholesky factorisations of `d x d`
//! matrices, which give the next operators and the log-determinants of the
//! rates together.
//!
//! The loops are plain Rust written so that the compiler vectorises them; the
//! passes run under `pulp::Arch::dispatch`, which compiles them a second time
//! for AVX2 and picks that copy at run time where the CPU has it (IEEE
//! operations without contraction: the same values either way).

use super::{
    counts_of, rates_from_logdets, Layer, Record, ReduNet, ReduNetConfig, Scales, Trace, NORM_FLOOR,
};
use crate::Result;
use num_traits::Zero;
use rate_core::{Element, Kernels, Rates, Tensor};
use rayon::prelude::*;
use std::ops::Range;

/// Samples per block.
pub(super) const BLOCK: usize = 32;

/// `e^x` for `x <= 0`, branch-free so that loops over it vectorise.
///
/// Cody-Waite reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, then the Taylor
/// polynomial of degree 12 (truncation below `1.8e-16`) and `2^n` assembled in
/// the exponent bits. Below `-708` it returns 0 (the true value is under
/// `3.3e-308`, nothing beside the softmax's largest term, which is 1). NaN
/// propagates. Relative error within a few ulp of `f64::exp` (tested).
#[inline(always)]
pub(super) fn exp_nonpositive(x: f64) -> f64 {
    // Adding 1.5 * 2^52 rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // ln 2 split as in fdlibm: the high part has 32 significant bits, so n * LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const INV_FACT: [f64; 13] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
    ];
    let xc = if x < -708.0 { -708.0 } else { x };
    let kf = xc * std::f64::consts::LOG2_E + SHIFT;
    let n = kf - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Estrin's scheme: a short dependency chain, so that lanes overlap.
    let c = &INV_FACT;
    let (r2, q0, q1, q2, q3, q4, q5) = (
        r * r,
        c[0] + c[1] * r,
        c[2] + c[3] * r,
        c[4] + c[5] * r,
        c[6] + c[7] * r,
        c[8] + c[9] * r,
        c[10] + c[11] * r,
    );
    let r4 = r2 * r2;
    let (s0, s1, s2) = (q0 + q1 * r2, q2 + q3 * r2, q4 + q5 * r2 + c[12] * r4);
    let p = (s0 + s1 * r4) + s2 * (r4 * r4);
    let scale = f64::from_bits((kf.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(1023)) << 52);
    let y = p * scale;
    if x < -708.0 {
        0.0
    } else {
        y
    }
}

/// Features on the host, in blocks of [`BLOCK`] samples, feature-major inside a block.
pub(super) struct Blocks<T> {
    d: usize,
    /// `nblocks * d * BLOCK` values: block `b`, feature `c`, lane `i` at `(b d + c) BLOCK + i`.
    data: Vec<T>,
    /// Slot (`block * BLOCK + lane`) of each sample, in input order.
    slot_of: Vec<usize>,
    /// Block range of each group (class, or all samples).
    groups: Vec<Range<usize>>,
    /// Group of each block.
    group_of_block: Vec<usize>,
}

impl<T: Element> Blocks<T> {
    /// Lays out `m x d` row-major `x`; with labels, one group of whole blocks per class.
    pub(super) fn new(x: &[T], m: usize, d: usize, labels: Option<(&[usize], usize)>) -> Self {
        let members: Vec<Vec<usize>> = match labels {
            Some((y, k)) => {
                let mut v = vec![Vec::new(); k];
                for (i, &l) in y.iter().enumerate() {
                    v[l].push(i);
                }
                v
            }
            None => vec![(0..m).collect()],
        };
        let mut slot_of = vec![0usize; m];
        let mut groups = Vec::with_capacity(members.len());
        let mut nblocks = 0;
        for group in &members {
            for (p, &i) in group.iter().enumerate() {
                slot_of[i] = nblocks * BLOCK + p;
            }
            let nb = group.len().div_ceil(BLOCK);
            groups.push(nblocks..nblocks + nb);
            nblocks += nb;
        }
        let mut data = vec![T::zero(); nblocks * d * BLOCK];
        for (i, &s) in slot_of.iter().enumerate() {
            let (b, lane) = (s / BLOCK, s % BLOCK);
            for c in 0..d {
                data[(b * d + c) * BLOCK + lane] = x[i * d + c];
            }
        }
        let mut group_of_block = vec![0; nblocks];
        for (g, r) in groups.iter().enumerate() {
            group_of_block[r.clone()].fill(g);
        }
        Blocks { d, data, slot_of, groups, group_of_block }
    }

    fn slots(&self) -> usize {
        self.data.len() / self.d
    }

    /// The features as `m x d` rows in input order.
    fn rows(&self) -> Vec<T> {
        let d = self.d;
        let mut out = Vec::with_capacity(self.slot_of.len() * d);
        for &s in &self.slot_of {
            let (b, lane) = (s / BLOCK, s % BLOCK);
            out.extend((0..d).map(|c| self.data[(b * d + c) * BLOCK + lane]));
        }
        out
    }

    fn tensor<B: Kernels<Elem = T>>(&self, backend: &B) -> Tensor<B> {
        Tensor::from_slice(backend, &self.rows(), &[self.slot_of.len(), self.d])
    }

    /// Puts every sample on the unit sphere (norm clamped at [`NORM_FLOOR`]).
    fn normalise(&mut self) {
        let d = self.d;
        let floor = T::of(NORM_FLOOR);
        for z in self.data.chunks_exact_mut(d * BLOCK) {
            let mut n2 = [T::zero(); BLOCK];
            for c in 0..d {
                let zc = &z[c * BLOCK..(c + 1) * BLOCK];
                for i in 0..BLOCK {
                    n2[i] = n2[i] + zc[i] * zc[i];
                }
            }
            for v in n2.iter_mut() {
                let n = v.sqrt();
                *v = if n > floor { n } else { floor };
            }
            for c in 0..d {
                let zc = &mut z[c * BLOCK..(c + 1) * BLOCK];
                for i in 0..BLOCK {
                    zc[i] = zc[i] / n2[i];
                }
            }
        }
    }

    /// Covariance `Z_g^T Z_g` of every group, `groups x d x d` into `grams`.
    fn group_grams(&self, grams: &mut [f64], lanes: &mut [T]) {
        let d = self.d;
        for (g, range) in self.groups.iter().enumerate() {
            lanes.fill(T::zero());
            for b in range.clone() {
                gram_lanes(&self.data[b * d * BLOCK..(b + 1) * d * BLOCK], d, lanes);
            }
            reduce_lanes(lanes, d, &mut grams[g * d * d..(g + 1) * d * d]);
        }
    }

    /// Covariances by a per-slot label (the `yhat` classes), `k x d x d`.
    fn grams_by_label(&self, label_of_slot: &[u32], k: usize) -> Vec<f64> {
        let d = self.d;
        let mut g = vec![0.0; k * d * d];
        let mut z = vec![0.0; d];
        for (s, &l) in label_of_slot.iter().enumerate() {
            let (b, lane) = (s / BLOCK, s % BLOCK);
            for c in 0..d {
                z[c] = self.data[(b * d + c) * BLOCK + lane].f64();
            }
            let gj = &mut g[l as usize * d * d..(l as usize + 1) * d * d];
            for a in 0..d {
                for c in 0..d {
                    gj[a * d + c] += z[a] * z[c];
                }
            }
        }
        g
    }
}

/// Adds the lane-wise products `z_a z_b` (`a <= b`) of one block into `lanes`.
#[inline(always)]
fn gram_lanes<T: Element>(z: &[T], d: usize, lanes: &mut [T]) {
    let mut p = 0;
    for a in 0..d {
        let za = &z[a * BLOCK..(a + 1) * BLOCK];
        for b in a..d {
            let zb = &z[b * BLOCK..(b + 1) * BLOCK];
            let acc = &mut lanes[p * BLOCK..(p + 1) * BLOCK];
            for i in 0..BLOCK {
                acc[i] = acc[i] + za[i] * zb[i];
            }
            p += 1;
        }
    }
}

/// Sums the lanes into a symmetric `d x d` matrix.
fn reduce_lanes<T: Element>(lanes: &[T], d: usize, out: &mut [f64]) {
    let mut p = 0;
    for a in 0..d {
        for b in a..d {
            let s: f64 = lanes[p * BLOCK..(p + 1) * BLOCK].iter().map(|x| x.f64()).sum();
            out[a * d + b] = s;
            out[b * d + a] = s;
            p += 1;
        }
    }
}

/// Adds the lane sums into a symmetric `d x d` matrix.
fn add_lanes<T: Element>(lanes: &[T], d: usize, out: &mut [f64]) {
    let mut p = 0;
    for a in 0..d {
        for b in a..d {
            let s: f64 = lanes[p * BLOCK..(p + 1) * BLOCK].iter().map(|x| x.f64()).sum();
            out[a * d + b] += s;
            if a != b {
                out[b * d + a] += s;
            }
            p += 1;
        }
    }
}

/// Number of lane accumulators of a `d x d` covariance.
fn lane_len(d: usize) -> usize {
    d * (d + 1) / 2 * BLOCK
}

/// Per-block work space.
struct Scratch<T> {
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
    fn new(d: usize, k: usize) -> Self {
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
struct Kernel<'a, T> {
    d: usize,
    k: usize,
    /// `[E; C_1; ...; C_k]`, `(k+1) d x d` row-major.
    w: &'a [T],
    gamma: &'a [T],
    eta: T,
    lambda: f64,
    floor: T,
}

impl<T: Element> Kernel<'_, T> {
    /// Applies the layer map to the `BLOCK` samples of `z` in place; writes
    /// the argmax membership of each lane into `yhat` when given.
    #[inline(always)]
    fn block(&self, z: &mut [T], sc: &mut Scratch<T>, yhat: Option<&mut [u32]>) {
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
    fn block_any(&self, z: &mut [T], sc: &mut Scratch<T>, yhat: Option<&mut [u32]>) {
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
                let v = exp_nonpositive(e[i] - top[i]);
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
    fn build_pass(&self, blocks: &mut Blocks<T>, yhat_slot: &mut [u32], grams: &mut [f64]) {
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

/// The loops of [`Kernel::block_small`], one per function: slices passed as
/// arguments do not alias, which lets the compiler vectorise each loop.
mod rows {
    use super::{exp_nonpositive, BLOCK};
    use rate_core::Element;

    /// `y = sum_c w[c] z_c` over the `D` feature rows of `z`.
    #[inline(always)]
    pub(super) fn combine<T: Element, const D: usize>(y: &mut [T], w: &[T], z: &[T]) {
        let (y, w, z) = (&mut y[..BLOCK], &w[..D], &z[..D * BLOCK]);
        for i in 0..BLOCK {
            let mut a = w[0] * z[i];
            for c in 1..D {
                a = a + w[c] * z[c * BLOCK + i];
            }
            y[i] = a;
        }
    }

    /// `s = -lambda max(||y||, floor)` over the `D` rows of `ys`, and the running maximum `top`.
    #[inline(always)]
    pub(super) fn exponent<T: Element, const D: usize>(
        s: &mut [f64],
        top: &mut [f64; BLOCK],
        ys: &[T],
        lambda: f64,
        floor: T,
    ) {
        let (s, ys) = (&mut s[..BLOCK], &ys[..D * BLOCK]);
        for i in 0..BLOCK {
            let mut n2 = ys[i] * ys[i];
            for r in 1..D {
                n2 = n2 + ys[r * BLOCK + i] * ys[r * BLOCK + i];
            }
            let n = n2.sqrt();
            let v = -lambda * (if n > floor { n } else { floor }).f64();
            s[i] = v;
            top[i] = if v > top[i] { v } else { top[i] };
        }
    }

    /// `e = exp(e - top)`, added into `sum`.
    #[inline(always)]
    pub(super) fn exp_shifted(e: &mut [f64], sum: &mut [f64; BLOCK], top: &[f64; BLOCK]) {
        let e = &mut e[..BLOCK];
        for i in 0..BLOCK {
            let v = exp_nonpositive(e[i] - top[i]);
            e[i] = v;
            sum[i] += v;
        }
    }

    /// Keeps the first class with the largest `e` in `yhat`.
    #[inline(always)]
    pub(super) fn argmax_step(best: &mut [f64; BLOCK], yhat: &mut [u32], e: &[f64], j: u32) {
        let (yhat, e) = (&mut yhat[..BLOCK], &e[..BLOCK]);
        for i in 0..BLOCK {
            let better = e[i] > best[i];
            best[i] = if better { e[i] } else { best[i] };
            yhat[i] = if better { j } else { yhat[i] };
        }
    }

    #[inline(always)]
    pub(super) fn reciprocal(x: &mut [f64; BLOCK]) {
        for v in x.iter_mut() {
            *v = 1.0 / *v;
        }
    }

    /// `cf = gamma_j e / sum` (with `inv = 1 / sum`).
    #[inline(always)]
    pub(super) fn coefficient<T: Element>(cf: &mut [T], e: &[f64], inv: &[f64; BLOCK], g: T) {
        let (cf, e) = (&mut cf[..BLOCK], &e[..BLOCK]);
        for i in 0..BLOCK {
            cf[i] = g * T::of(e[i] * inv[i]);
        }
    }

    #[inline(always)]
    pub(super) fn product<T: Element>(out: &mut [T; BLOCK], a: &[T], b: &[T]) {
        let (a, b) = (&a[..BLOCK], &b[..BLOCK]);
        for i in 0..BLOCK {
            out[i] = a[i] * b[i];
        }
    }

    #[inline(always)]
    pub(super) fn add_product<T: Element>(out: &mut [T; BLOCK], a: &[T], b: &[T]) {
        let (a, b) = (&a[..BLOCK], &b[..BLOCK]);
        for i in 0..BLOCK {
            out[i] = out[i] + a[i] * b[i];
        }
    }

    /// `u = z_c + eta ((E z)_c - clus)`, with `we` row `c` of `E`.
    #[inline(always)]
    pub(super) fn update<T: Element, const D: usize>(
        u: &mut [T],
        we: &[T],
        z: &[T],
        c: usize,
        clus: &[T; BLOCK],
        eta: T,
    ) {
        let (u, we, z) = (&mut u[..BLOCK], &we[..D], &z[..D * BLOCK]);
        for i in 0..BLOCK {
            let mut ez = we[0] * z[i];
            for a in 1..D {
                ez = ez + we[a] * z[a * BLOCK + i];
            }
            u[i] = z[c * BLOCK + i] + eta * (ez - clus[i]);
        }
    }

    /// `z = u / max(||u||, floor)`.
    #[inline(always)]
    pub(super) fn normalise<T: Element, const D: usize>(
        z: &mut [T],
        u: &[T],
        inv: &mut [T; BLOCK],
        floor: T,
    ) {
        let (z, u) = (&mut z[..D * BLOCK], &u[..D * BLOCK]);
        for i in 0..BLOCK {
            let mut s = u[i] * u[i];
            for c in 1..D {
                s = s + u[c * BLOCK + i] * u[c * BLOCK + i];
            }
            let n = s.sqrt();
            inv[i] = T::one() / if n > floor { n } else { floor };
        }
        for c in 0..D {
            for i in 0..BLOCK {
                z[c * BLOCK + i] = u[c * BLOCK + i] * inv[i];
            }
        }
    }
}

/// One block through one layer, plus its covariance lanes when `gram`: the
/// unit handed to `pulp`, whose body (all `#[inline(always)]`) is compiled
/// once per instruction set and chosen at run time.
struct BlockOp<'a, 'k, T> {
    kernel: &'a Kernel<'k, T>,
    z: &'a mut [T],
    sc: &'a mut Scratch<T>,
    yhat: Option<&'a mut [u32]>,
    gram: bool,
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
const CHUNK_BLOCKS: usize = 8;

/// In place: `a` (SPD `n x n`, row-major) becomes its inverse; returns `log det a`.
/// `index` names the matrix in an error.
pub(super) fn spd_inverse_logdet(a: &mut [f64], n: usize, index: usize) -> Result<f64> {
    let mut l = a.to_vec();
    let mut logdet = 0.0;
    for j in 0..n {
        let mut dj = l[j * n + j];
        for p in 0..j {
            dj -= l[j * n + p] * l[j * n + p];
        }
        if !(dj > 0.0 && dj.is_finite()) {
            return Err(rate_core::Error::NotPositiveDefinite {
                op: "ReduNet layer operators",
                index,
                n,
                row: j,
                pivot: dj,
            }
            .into());
        }
        let djs = dj.sqrt();
        l[j * n + j] = djs;
        logdet += 2.0 * djs.ln();
        for i in j + 1..n {
            let mut s = l[i * n + j];
            for p in 0..j {
                s -= l[i * n + p] * l[j * n + p];
            }
            l[i * n + j] = s / djs;
        }
    }
    // Column `col` of the inverse: L y = e_col, then L^T x = y.
    let mut y = vec![0.0; n];
    for col in 0..n {
        for i in 0..n {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for p in 0..i {
                s -= l[i * n + p] * y[p];
            }
            y[i] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = y[i];
            for p in i + 1..n {
                s -= l[p * n + i] * a[p * n + col];
            }
            a[i * n + col] = s / l[i * n + i];
        }
    }
    Ok(logdet)
}

/// Operators and log-determinants of one set of class covariances.
struct Factored {
    /// `[E; C_1; ...; C_k]` in f64.
    w: Vec<f64>,
    /// `logdet(I + alpha Z^T Z)`.
    logdet_total: f64,
    /// `logdet(I + alpha_j Z_j^T Z_j)`.
    logdet_class: Vec<f64>,
}

impl Factored {
    /// From the class covariances `k x d x d` (true labels).
    fn new(grams: &[f64], d: usize, scales: &Scales) -> Result<Self> {
        let k = scales.gamma.len();
        let mut total = vec![0.0; d * d];
        for j in 0..k {
            for (t, g) in total.iter_mut().zip(&grams[j * d * d..(j + 1) * d * d]) {
                *t += g;
            }
        }
        let mut w = vec![0.0; (k + 1) * d * d];
        let mut logdets = vec![0.0; k + 1];
        for idx in 0..=k {
            let (a, g) = if idx == 0 {
                (scales.alpha, &total[..])
            } else {
                (scales.alpha_class[idx - 1], &grams[(idx - 1) * d * d..idx * d * d])
            };
            let m = &mut w[idx * d * d..(idx + 1) * d * d];
            for (i, (mv, gv)) in m.iter_mut().zip(g).enumerate() {
                *mv = a * gv + if i % (d + 1) == 0 { 1.0 } else { 0.0 };
            }
            logdets[idx] = spd_inverse_logdet(m, d, idx)?;
            m.iter_mut().for_each(|v| *v *= a);
        }
        Ok(Factored { w, logdet_total: logdets[0], logdet_class: logdets[1..].to_vec() })
    }

    fn rates_true(&self, scales: &Scales) -> Rates {
        rates_from_logdets(
            self.logdet_total,
            scales.gamma.iter().copied().zip(self.logdet_class.iter().copied()),
        )
    }
}

/// The reference code's logged rates when `yhat` differs from the labels:
/// covariances by `yhat` class, `alpha_j` from the `yhat` class sizes, training `gamma_j`.
fn code_rates<T: Element>(
    blocks: &Blocks<T>,
    yhat_slot: &[u32],
    yhat: &[u32],
    logdet_total: f64,
    scales: &Scales,
    eps_sq: f64,
) -> Result<Rates> {
    let (d, k) = (blocks.d, scales.gamma.len());
    let counts = counts_of(yhat, k);
    let grams = blocks.grams_by_label(yhat_slot, k);
    let mut parts = Vec::with_capacity(k);
    for j in 0..k {
        if counts[j] == 0 {
            continue;
        }
        let a = d as f64 / (counts[j] as f64 * eps_sq);
        let mut m: Vec<f64> = grams[j * d * d..(j + 1) * d * d]
            .iter()
            .enumerate()
            .map(|(i, g)| a * g + if i % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        parts.push((scales.gamma[j], spd_inverse_logdet(&mut m, d, j + 1)?));
    }
    Ok(rates_from_logdets(logdet_total, parts))
}

/// Builds the layers with the fused engine (see [`super::ReduNet::build_with`]).
///
/// The whole loop runs on a worker of rayon's pool, so that the parallel
/// pass of each layer is forked from inside the pool (no hand-off to the
/// pool and back per layer).
pub(super) fn build<B: Kernels>(
    z: &Tensor<B>,
    labels: &[usize],
    cfg: &ReduNetConfig,
    record: &Record,
    scales: &Scales,
) -> Result<(Vec<Layer<B>>, Trace<B>)> {
    rayon::scope(|_| build_in_pool(z, labels, cfg, record, scales))
}

fn build_in_pool<B: Kernels>(
    z: &Tensor<B>,
    labels: &[usize],
    cfg: &ReduNetConfig,
    record: &Record,
    scales: &Scales,
) -> Result<(Vec<Layer<B>>, Trace<B>)> {
    let be = z.backend();
    let (m, d) = (z.dim(0), z.dim(1));
    let k = cfg.num_classes;
    let mut blocks = Blocks::new(&z.to_vec(), m, d, Some((labels, k)));
    blocks.normalise();
    let gamma: Vec<B::Elem> = scales.gamma.iter().map(|&g| B::Elem::of(g)).collect();
    let want_rates = record.rates || matches!(cfg.depth, super::Depth::Adaptive { .. });
    let mut yhat_slot = vec![0u32; blocks.slots()];
    let mut grams = vec![0.0; k * d * d];
    blocks.group_grams(&mut grams, &mut vec![B::Elem::zero(); lane_len(d)]);
    let mut fac = Factored::new(&grams, d, scales)?;

    let mut rates_true = Vec::new();
    let mut rates_code = Vec::new();
    let mut yhat_all = Vec::new();
    let mut features = Vec::new();
    if want_rates {
        rates_true.push(fac.rates_true(scales));
    }
    if record.features.contains(0) {
        features.push((0, blocks.tensor(be)));
    }
    let mut layers = Vec::new();
    for l in 0..cfg.depth.max_layers() {
        let w: Vec<B::Elem> = fac.w.iter().map(|&x| B::Elem::of(x)).collect();
        let kernel = Kernel {
            d,
            k,
            w: &w,
            gamma: &gamma,
            eta: B::Elem::of(cfg.eta),
            lambda: cfg.lambda,
            floor: B::Elem::of(NORM_FLOOR),
        };
        kernel.build_pass(&mut blocks, &mut yhat_slot, &mut grams);
        layers.push(Layer::from_host(be, w, &scales.gamma, d, k));
        let next = Factored::new(&grams, d, scales)?;
        if record.yhat || want_rates {
            let yhat: Vec<u32> = blocks.slot_of.iter().map(|&s| yhat_slot[s]).collect();
            if want_rates {
                let rt = next.rates_true(scales);
                rates_true.push(rt);
                let agree = yhat.iter().zip(labels).all(|(&a, &b)| a as usize == b);
                rates_code.push(if agree {
                    rt
                } else {
                    code_rates(&blocks, &yhat_slot, &yhat, next.logdet_total, scales, cfg.eps_sq)?
                });
            }
            if record.yhat {
                yhat_all.extend_from_slice(&yhat);
            }
        }
        if record.features.contains(l + 1) {
            features.push((l + 1, blocks.tensor(be)));
        }
        fac = next;
        if want_rates && cfg.depth.stops(&rates_true) {
            break;
        }
    }
    blocks.normalise();
    if !record.rates {
        rates_true.clear();
        rates_code.clear();
    }
    let trace =
        Trace { output: blocks.tensor(be), rates_true, rates_code, features, yhat: yhat_all, samples: m };
    Ok((layers, trace))
}

/// What one chunk of samples recorded on its way through every layer.
struct ChunkRecord<T> {
    /// `yhat` per layer, `layers x chunk slots`.
    yhat: Vec<u32>,
    /// Snapshots of the chunk's block data, one per recorded index.
    snapshots: Vec<Vec<T>>,
}

/// Applies a built network with the fused engine (see [`super::ReduNet::transform_with`]).
///
/// Samples are independent at test time, so each chunk of blocks runs
/// through all the layers on its own thread; the results do not depend on
/// the chunking.
pub(super) fn transform<B: Kernels>(net: &ReduNet<B>, z: &Tensor<B>, record: &Record) -> Result<Trace<B>> {
    let be = z.backend();
    let (m, d) = (z.dim(0), z.dim(1));
    let k = net.num_classes();
    let mut blocks = Blocks::new(&z.to_vec(), m, d, None);
    blocks.normalise();
    let gamma = net.gamma_elem();
    let nlayers = net.depth();
    let recorded: Vec<usize> = (0..=nlayers).filter(|&l| record.features.contains(l)).collect();
    let nblocks = blocks.slots() / BLOCK;
    let chunk_blocks = nblocks.div_ceil(4 * rayon::current_num_threads()).max(1);
    let eta = B::Elem::of(net.config.eta);
    let arch = pulp::Arch::new();
    let chunks: Vec<ChunkRecord<B::Elem>> = blocks
        .data
        .par_chunks_mut(chunk_blocks * d * BLOCK)
        .map_init(
            || Scratch::new(d, k),
            |sc, data| {
                let slots = data.len() / d;
                let mut rec = ChunkRecord {
                    yhat: vec![0u32; if record.yhat { nlayers * slots } else { 0 }],
                    snapshots: Vec::new(),
                };
                if recorded.first() == Some(&0) {
                    rec.snapshots.push(data.to_vec());
                }
                for (l, layer) in net.layers().iter().enumerate() {
                    let kernel = Kernel {
                        d,
                        k,
                        w: &layer.host,
                        gamma: &gamma,
                        eta,
                        lambda: net.config.lambda,
                        floor: B::Elem::of(NORM_FLOOR),
                    };
                    for (bi, z) in data.chunks_exact_mut(d * BLOCK).enumerate() {
                        let yhat = if record.yhat {
                            let at = l * slots + bi * BLOCK;
                            Some(&mut rec.yhat[at..at + BLOCK])
                        } else {
                            None
                        };
                        arch.dispatch(BlockOp { kernel: &kernel, z, sc, yhat, gram: false });
                    }
                    if recorded.contains(&(l + 1)) {
                        rec.snapshots.push(data.to_vec());
                    }
                }
                rec
            },
        )
        .collect();

    // Reassemble per layer in slot order, then in input order.
    let mut yhat_all = Vec::new();
    if record.yhat {
        let mut slot_yhat = vec![0u32; blocks.slots()];
        for l in 0..nlayers {
            let mut at = 0;
            for c in &chunks {
                let slots = c.yhat.len() / nlayers;
                slot_yhat[at..at + slots].copy_from_slice(&c.yhat[l * slots..(l + 1) * slots]);
                at += slots;
            }
            yhat_all.extend(blocks.slot_of.iter().map(|&s| slot_yhat[s]));
        }
    }
    let mut features = Vec::new();
    for (r, &l) in recorded.iter().enumerate() {
        let data: Vec<B::Elem> = chunks.iter().flat_map(|c| c.snapshots[r].iter().copied()).collect();
        let snap = Blocks {
            d,
            data,
            slot_of: blocks.slot_of.clone(),
            groups: Vec::new(),
            group_of_block: Vec::new(),
        };
        features.push((l, snap.tensor(be)));
    }
    blocks.normalise();
    Ok(Trace {
        output: blocks.tensor(be),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features,
        yhat: yhat_all,
        samples: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -708.0 * (i as f64 / n as f64).powi(3);
            let (a, b) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4.0 * f64::EPSILON, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-800.0), 0.0);
        assert!(exp_nonpositive(f64::NAN).is_nan());
    }

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

    #[test]
    fn small_spd_inverse_and_logdet() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]]: det = 4 (15 - 1) - 2 (6 - 0) = 44.
        let a = [4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let mut inv = a.to_vec();
        let ld = spd_inverse_logdet(&mut inv, 3, 0).expect("SPD");
        assert!((ld - 44f64.ln()).abs() < 1e-14);
        for i in 0..3 {
            for j in 0..3 {
                let s: f64 = (0..3).map(|p| a[i * 3 + p] * inv[p * 3 + j]).sum();
                assert!((s - if i == j { 1.0 } else { 0.0 }).abs() < 1e-14);
            }
        }
        let mut bad = [1.0, 2.0, 2.0, 1.0];
        assert!(spd_inverse_logdet(&mut bad, 2, 7).is_err());
    }
}
