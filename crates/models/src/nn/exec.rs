//! How a classifier's batch is executed (4.2.20, 4.3.2, 4.3.15 trained by back-propagation): at once or in micro-batches on rayon's pool, with the exact batch gradient summed over the micro-batches by a fixed tree.

use super::loss::CrossEntropy;
use super::{accumulate, Grads};
use crate::{Kernels, Result, Tensor};
use rayon::prelude::*;

/// Gradients of a loss with respect to every parameter (by PyTorch name) and to the input images.
#[derive(Clone, Debug)]
pub struct CrateGradients<B: Kernels> {
    /// `dL/dθ` for every parameter name.
    pub params: Grads<B>,
    /// `dL/d(images)`, `[batch, C, H, W]`.
    pub input: Tensor<B>,
}

/// How a batch is executed: at once, or split into micro-batches (gradients
/// summed over them, which is the same gradient), optionally run in parallel.
///
/// On a CPU, parallel micro-batches of a few images keep every thread on its
/// own small working set (cache-resident activations, no synchronisation
/// inside an op); on a GPU the whole batch at once is the right choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Execution {
    /// Images per micro-batch (`None`: the whole batch at once).
    pub micro_batch: Option<usize>,
    /// Run the micro-batches in parallel on the rayon pool.
    pub parallel: bool,
}

impl Execution {
    /// Parallel micro-batches of `images` images (a good CPU setting is 4 to 16).
    pub fn parallel_micro_batches(images: usize) -> Self {
        Execution { micro_batch: Some(images.max(1)), parallel: true }
    }

    /// `[start, len)` ranges of the micro-batches of a batch of `batch` images.
    pub(crate) fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        let mb = self.micro_batch.unwrap_or(batch).max(1);
        (0..batch.div_ceil(mb)).map(|i| (i * mb, mb.min(batch - i * mb))).collect()
    }

    /// `run(start, len)` over the micro-batches of a batch of `batch` images,
    /// results in batch order, on the rayon pool when [`Self::parallel`].
    pub(crate) fn map<T: Send>(
        &self,
        batch: usize,
        run: impl Fn(usize, usize) -> Result<T> + Sync + Send,
    ) -> Result<Vec<T>> {
        let ranges = self.ranges(batch);
        let f = |&(start, len): &(usize, usize)| run(start, len);
        if self.parallel {
            ranges.par_iter().map(f).collect()
        } else {
            ranges.iter().map(f).collect()
        }
    }
}

impl Execution {
    /// The mean loss of a batch of `labels.len()` images and its exact gradients from its
    /// micro-batches: `forward(start, len)` runs one micro-batch, `backward` takes its cache and
    /// `dL/d(logits)`. Each micro-batch's mean loss weighs `len / batch` in the batch mean; losses
    /// and parameter gradients are summed, input gradients stacked in batch order. Also returns how many
    /// images the logits classify right (argmax, first on ties).
    pub(crate) fn loss_and_gradients<B: Kernels, C: Send>(
        &self,
        labels: &[usize],
        loss: &CrossEntropy,
        forward: impl Fn(usize, usize) -> Result<(Tensor<B>, C)> + Sync + Send,
        backward: impl Fn(&C, &Tensor<B>) -> CrateGradients<B> + Sync + Send,
    ) -> Result<(f64, usize, CrateGradients<B>)> {
        let batch = labels.len();
        let parts = self.map(batch, |start, len| {
            let (logits, cache) = forward(start, len)?;
            let part = &labels[start..start + len];
            let (value, ce) = loss.forward(&logits, part)?;
            let correct = correct_count(&logits, part);
            let w = len as f64 / batch as f64;
            let g = backward(&cache, &loss.backward(&ce, w));
            Ok((value * w, correct, g.params, g.input))
        })?;
        let total = parts.iter().map(|p| p.0).sum();
        let correct = parts.iter().map(|p| p.1).sum();
        let mut inputs = Vec::with_capacity(parts.len());
        let mut sums = Vec::with_capacity(parts.len());
        for (_, _, g, input) in parts {
            sums.push(g);
            inputs.push(input);
        }
        let params = self.sum_gradients(sums);
        let input = Tensor::cat(&inputs.iter().collect::<Vec<_>>(), 0);
        Ok((total, correct, CrateGradients { params, input }))
    }

    /// The sum of the micro-batches' gradient maps by a fixed pairwise tree
    /// (`((g0 + g1) + (g2 + g3)) + ..`): the same order whatever the thread
    /// count, and each level's pairs on the rayon pool when [`Self::parallel`].
    fn sum_gradients<B: Kernels>(&self, mut level: Vec<Grads<B>>) -> Grads<B> {
        let add = |pair: &mut [Grads<B>]| -> Grads<B> {
            let mut acc = std::mem::take(&mut pair[0]);
            for other in pair[1..].iter_mut() {
                for (name, t) in std::mem::take(other) {
                    accumulate(&mut acc, name, t);
                }
            }
            acc
        };
        while level.len() > 1 {
            level = if self.parallel {
                level.par_chunks_mut(2).map(add).collect()
            } else {
                level.chunks_mut(2).map(add).collect()
            };
        }
        level.pop().unwrap_or_default()
    }
}

/// Whether a backend named `backend_name` computes on the host, where independent work (micro-batches,
/// per-parameter optimiser updates) goes to rayon's pool; on a device the work is queued in order instead.
pub fn runs_on_host(backend_name: &str) -> bool {
    backend_name.starts_with("cpu")
}

/// `f` over `items` in order, on rayon's pool when `pool` (same results, each item independent).
pub(crate) fn map_ordered<T: Send, R: Send>(
    items: Vec<T>,
    pool: bool,
    f: impl Fn(T) -> R + Sync + Send,
) -> Vec<R> {
    if pool {
        items.into_par_iter().map(f).collect()
    } else {
        items.into_iter().map(f).collect()
    }
}

/// How many rows of `[batch, classes]` logits have their largest entry (first on ties) at the label.
pub fn correct_count<B: Kernels>(logits: &Tensor<B>, labels: &[usize]) -> usize {
    logits.argmax_axis(1).iter().zip(labels).filter(|(p, l)| p == l).count()
}
