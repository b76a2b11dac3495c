//! The fused ReduNet engine's layout: features on the host in blocks of `BLOCK` samples, feature-major inside a block, one group of whole blocks per class, and the lane-wise Gram matrices `Z_g^T Z_g` of the groups (the input of 4.1.3-4.1.4).

use super::BLOCK;
use rate_core::kernels::redunet::NORM_FLOOR;
use rate_core::Element;
use std::ops::Range;

/// Features on the host, in blocks of [`BLOCK`] samples, feature-major inside a block.
pub(super) struct Blocks<T> {
    pub(super) d: usize,
    /// `nblocks * d * BLOCK` values: block `b`, feature `c`, lane `i` at `(b d + c) BLOCK + i`.
    pub(super) data: Vec<T>,
    /// Slot (`block * BLOCK + lane`) of each sample, in input order.
    pub(super) slot_of: Vec<usize>,
    /// Block range of each group (class, or all samples).
    pub(super) groups: Vec<Range<usize>>,
    /// Group of each block.
    pub(super) group_of_block: Vec<usize>,
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

    pub(super) fn slots(&self) -> usize {
        self.data.len() / self.d
    }

    /// The features as `m x d` rows in input order.
    pub(super) fn rows(&self) -> Vec<T> {
        let d = self.d;
        let mut out = Vec::with_capacity(self.slot_of.len() * d);
        for &s in &self.slot_of {
            let (b, lane) = (s / BLOCK, s % BLOCK);
            out.extend((0..d).map(|c| self.data[(b * d + c) * BLOCK + lane]));
        }
        out
    }

    /// The same layout holding other values (a snapshot of `data`).
    pub(super) fn with_data(&self, data: Vec<T>) -> Self {
        Blocks {
            d: self.d,
            data,
            slot_of: self.slot_of.clone(),
            groups: Vec::new(),
            group_of_block: Vec::new(),
        }
    }

    /// Puts every sample on the unit sphere (norm clamped at [`NORM_FLOOR`]).
    pub(super) fn normalise(&mut self) {
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
    pub(super) fn group_grams(&self, grams: &mut [f64], lanes: &mut [T]) {
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
    pub(super) fn grams_by_label(&self, label_of_slot: &[u32], k: usize) -> Vec<f64> {
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
pub(super) fn gram_lanes<T: Element>(z: &[T], d: usize, lanes: &mut [T]) {
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
pub(super) fn add_lanes<T: Element>(lanes: &[T], d: usize, out: &mut [f64]) {
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
pub(super) fn lane_len(d: usize) -> usize {
    d * (d + 1) / 2 * BLOCK
}
