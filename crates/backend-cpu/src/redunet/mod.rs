//! The fused host engine of ReduNet (4.1.11-4.1.13, Algorithm 4.1), `CpuBackend`'s override of `Kernels::redunet_build` and `Kernels::redunet_transform`: responses, soft memberships, update, normalisation and output Gram matrices in one pass over blocks of samples per layer.
//!
//! Samples are stored in blocks of [`BLOCK`] (`blocks.rs`); inside a block,
//! feature `c` of its samples is one contiguous run, so every inner loop
//! runs across the samples of a block and vectorises. When labels are given
//! each class gets whole blocks, so the Gram matrix `Z_j^T Z_j` of a class
//! is a sum over a block range; the last block of a class is padded with
//! zero samples, which stay zero through every layer and add nothing to any
//! Gram matrix. Per layer the only work outside the pass (`layer.rs`, its
//! fixed-dimension loops in `rows.rs`) is one batched factorisation of the
//! `k + 1` matrices of [`rate_core::operators`], which gives the next
//! operators and the log-determinants of the rates together.
//!
//! The loops are plain Rust written so that the compiler vectorises them; the
//! passes run under `pulp::Arch::dispatch`, which compiles them a second time
//! for AVX2 and picks that copy at run time where the CPU has it (IEEE
//! operations without contraction: the same values either way).

mod blocks;
mod layer;
mod rows;

use crate::elem::{buf, Buf, CpuElem};
use crate::linalg;
use crate::CpuBackend;
use blocks::{lane_len, Blocks};
use layer::{BlockOp, Kernel, Scratch};
use rate_core::kernels::redunet::{class_counts, Record, RedunetRun, RedunetSpec, NORM_FLOOR};
use rate_core::operators::{rates_from_logdets, regularised_logdet, shift_diagonals, ClassScales};
use rate_core::{Rates, Result};
use rayon::prelude::*;

/// Samples per block.
pub(crate) const BLOCK: usize = 32;

/// Operators and log-determinants of one set of class Gram matrices.
struct Factored {
    /// `[E; C_1; ...; C_k]` in f64.
    w: Vec<f64>,
    /// `logdet(I + alpha Z^T Z)`, then `logdet(I + alpha_j Z_j^T Z_j)`.
    logdets: Vec<f64>,
}

impl Factored {
    /// From the class Gram matrices `k x d x d` (true labels) and the scales
    /// `a = [alpha, alpha_1, .., alpha_k]` ([`ClassScales::stacked`]): the
    /// shift and the log-determinant correction of [`rate_core::operators`]
    /// around backend-cpu's one Cholesky, on the host (no tensor per layer).
    fn new(host: &CpuBackend<f64>, grams: &[f64], d: usize, a: &[f64]) -> Result<Self> {
        let k = a.len() - 1;
        let mut stacked = vec![0.0; (k + 1) * d * d];
        let (total, classes) = stacked.split_at_mut(d * d);
        classes.copy_from_slice(&grams[..k * d * d]);
        for g in grams.chunks_exact(d * d) {
            total.iter_mut().zip(g).for_each(|(t, v)| *t += v);
        }
        shift_diagonals(&mut stacked, a, d);
        let (w, lds) = linalg::spd_inverse_logdet(host, &stacked, k + 1, d)?;
        let logdets = lds.iter().zip(a).map(|(&l, &a)| regularised_logdet(l, a, d)).collect();
        Ok(Factored { w, logdets })
    }

    fn rates_true(&self, scales: &ClassScales) -> Rates {
        rates_from_logdets(
            self.logdets[0],
            scales.gamma.iter().copied().zip(self.logdets[1..].iter().copied()),
        )
    }
}

/// The reference code's logged rates when `yhat` differs from the labels:
/// Gram matrices by `yhat` class, `alpha_j` from the `yhat` class sizes
/// (empty classes skipped), training `gamma_j`.
fn code_rates<T: CpuElem>(
    host: &CpuBackend<f64>,
    blocks: &Blocks<T>,
    yhat_slot: &[u32],
    yhat: &[u32],
    logdet_total: f64,
    scales: &ClassScales,
    eps_sq: f64,
) -> Result<Rates> {
    let (d, k) = (blocks.d, scales.gamma.len());
    let by_yhat = ClassScales::new(&class_counts(yhat.iter().map(|&y| y as usize), k), d, eps_sq);
    let grams = blocks.grams_by_label(yhat_slot, k);
    let present: Vec<usize> = (0..k).filter(|&j| by_yhat.alpha_class[j] > 0.0).collect();
    let mut chosen: Vec<f64> =
        present.iter().flat_map(|&j| grams[j * d * d..(j + 1) * d * d].iter().copied()).collect();
    let a: Vec<f64> = present.iter().map(|&j| by_yhat.alpha_class[j]).collect();
    shift_diagonals(&mut chosen, &a, d);
    let lds = linalg::spd_logdet(host, &chosen, present.len(), d)?;
    let lds = lds.iter().zip(&a).map(|(&l, &a)| regularised_logdet(l, a, d));
    Ok(rates_from_logdets(logdet_total, present.iter().map(|&j| scales.gamma[j]).zip(lds)))
}

/// The features of `blocks` as row-major `m x d` buffer.
fn rows_buffer<T: CpuElem>(blocks: &Blocks<T>) -> Buf<T> {
    buf(blocks.rows())
}

/// Builds the layers with the fused engine (see `Kernels::redunet_build`).
/// Called on a worker of rayon's pool (`rayon::scope`), so that the parallel
/// pass of each layer is forked from inside the pool (no hand-off to the
/// pool and back per layer).
pub(crate) fn build<T: CpuElem>(
    z: &[T],
    (m, d): (usize, usize),
    labels: &[usize],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Buf<T>>> {
    let k = spec.classes;
    let host = CpuBackend::<f64>::sequential();
    let scales = ClassScales::new(&class_counts(labels.iter().copied(), k), d, spec.eps_sq);
    let mut blocks = Blocks::new(&z[..m * d], m, d, Some((labels, k)));
    blocks.normalise();
    let gamma: Vec<T> = scales.gamma.iter().map(|&g| T::of(g)).collect();
    let want_rates = record.rates || spec.depth.needs_rates();
    let mut yhat_slot = vec![0u32; blocks.slots()];
    let mut grams = vec![0.0; k * d * d];
    blocks.group_grams(&mut grams, &mut vec![T::zero(); lane_len(d)]);
    let stacked_scales = scales.stacked();
    let mut fac = Factored::new(&host, &grams, d, &stacked_scales)?;

    let mut run = RedunetRun {
        output: buf(Vec::new()),
        operators: Vec::new(),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features: Vec::new(),
        yhat: Vec::new(),
    };
    if want_rates {
        run.rates_true.push(fac.rates_true(&scales));
    }
    if record.features.contains(0) {
        run.features.push((0, rows_buffer(&blocks)));
    }
    for l in 0..spec.depth.max_layers() {
        let w: Vec<T> = fac.w.iter().map(|&x| T::of(x)).collect();
        let kernel = Kernel {
            d,
            k,
            w: &w,
            gamma: &gamma,
            eta: T::of(spec.eta),
            lambda: spec.lambda,
            floor: T::of(NORM_FLOOR),
        };
        kernel.build_pass(&mut blocks, &mut yhat_slot, &mut grams);
        run.operators.push(buf(w));
        let next = Factored::new(&host, &grams, d, &stacked_scales)?;
        if record.yhat || want_rates {
            let yhat: Vec<u32> = blocks.slot_of.iter().map(|&s| yhat_slot[s]).collect();
            if want_rates {
                let rt = next.rates_true(&scales);
                run.rates_true.push(rt);
                let agree = yhat.iter().zip(labels).all(|(&a, &b)| a as usize == b);
                run.rates_code.push(if agree {
                    rt
                } else {
                    code_rates(&host, &blocks, &yhat_slot, &yhat, next.logdets[0], &scales, spec.eps_sq)?
                });
            }
            if record.yhat {
                run.yhat.extend_from_slice(&yhat);
            }
        }
        if record.features.contains(l + 1) {
            run.features.push((l + 1, rows_buffer(&blocks)));
        }
        fac = next;
        spec.progress.report(l + 1, spec.depth.max_layers());
        if want_rates && spec.depth.stops(&run.rates_true) {
            break;
        }
    }
    blocks.normalise();
    if !record.rates {
        run.rates_true.clear();
        run.rates_code.clear();
    }
    run.output = rows_buffer(&blocks);
    Ok(run)
}

/// What one chunk of samples recorded on its way through every layer.
struct ChunkRecord<T> {
    /// `yhat` per layer, `layers x chunk slots`.
    yhat: Vec<u32>,
    /// Snapshots of the chunk's block data, one per recorded index.
    snapshots: Vec<Vec<T>>,
}

/// Applies built layers with the fused engine (see `Kernels::redunet_transform`).
///
/// Samples are independent at test time, so each chunk of blocks runs
/// through all the layers on its own thread; the results do not depend on
/// the chunking.
pub(crate) fn transform<T: CpuElem>(
    z: &[T],
    (m, d): (usize, usize),
    operators: &[Buf<T>],
    gamma: &[f64],
    spec: &RedunetSpec,
    record: &Record,
) -> Result<RedunetRun<Buf<T>>> {
    let k = spec.classes;
    let mut blocks = Blocks::new(&z[..m * d], m, d, None);
    blocks.normalise();
    let gamma: Vec<T> = gamma.iter().map(|&g| T::of(g)).collect();
    let nlayers = operators.len();
    let recorded: Vec<usize> = (0..=nlayers).filter(|&l| record.features.contains(l)).collect();
    let nblocks = blocks.slots() / BLOCK;
    let chunk_blocks = nblocks.div_ceil(4 * rayon::current_num_threads()).max(1);
    let eta = T::of(spec.eta);
    let arch = pulp::Arch::new();
    let chunks: Vec<ChunkRecord<T>> = blocks
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
                for (l, w) in operators.iter().enumerate() {
                    let kernel = Kernel {
                        d,
                        k,
                        w: &w[..],
                        gamma: &gamma,
                        eta,
                        lambda: spec.lambda,
                        floor: T::of(NORM_FLOOR),
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
        let data: Vec<T> = chunks.iter().flat_map(|c| c.snapshots[r].iter().copied()).collect();
        features.push((l, rows_buffer(&blocks.with_data(data))));
    }
    blocks.normalise();
    spec.progress.report(nlayers, nlayers);
    Ok(RedunetRun {
        output: rows_buffer(&blocks),
        operators: Vec::new(),
        rates_true: Vec::new(),
        rates_code: Vec::new(),
        features,
        yhat: yhat_all,
    })
}
