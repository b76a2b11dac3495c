//! Cross-entropy of logits against class labels, averaged over the batch, with optional label smoothing (PyTorch's `F.cross_entropy` semantics).
//!
//! With `q = (1 - s) onehot(y) + s / C` (label smoothing `s`, `C` classes):
//! `loss = -(1/B) sum_i sum_c q_ic log softmax(x_i)_c` and
//! `dloss/dx = (softmax(x) - q) / B`.

use crate::{Error, Kernels, Result, Tensor};

/// Cross-entropy loss (mean over the batch).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    /// Label smoothing `s` in `[0, 1]` (0: plain cross-entropy).
    pub label_smoothing: f64,
}

/// What [`CrossEntropy::backward`] needs.
#[derive(Clone, Debug)]
pub struct CrossEntropyCache<B: Kernels> {
    /// `softmax(logits)`, `[batch, classes]`.
    pub probs: Tensor<B>,
    /// Smoothed targets `q`, `[batch, classes]`.
    pub targets: Tensor<B>,
}

impl CrossEntropy {
    /// Plain cross-entropy, or with label smoothing `s` (refused outside `[0, 1]`).
    pub fn new(label_smoothing: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::Config(format!("label_smoothing = {label_smoothing} is not in [0, 1]")));
        }
        Ok(CrossEntropy { label_smoothing })
    }

    /// The mean loss of `[batch, classes]` logits against `labels`, with the cache.
    /// Refuses a label count that differs from the batch or a label out of range.
    pub fn forward<B: Kernels>(
        &self,
        logits: &Tensor<B>,
        labels: &[usize],
    ) -> Result<(f64, CrossEntropyCache<B>)> {
        if logits.rank() != 2 || logits.dim(0) != labels.len() || logits.dim(1) == 0 {
            return Err(Error::Config(format!(
                "cross_entropy: logits {:?} and {} labels do not match (expected [batch = {}, classes])",
                logits.shape(),
                labels.len(),
                labels.len()
            )));
        }
        let (b, c) = (logits.dim(0), logits.dim(1));
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= c) {
            return Err(Error::Config(format!(
                "cross_entropy: labels[{i}] = {l} is not below the class count {c}"
            )));
        }
        let s = self.label_smoothing;
        let mut q = vec![s / c as f64; b * c];
        for (i, &l) in labels.iter().enumerate() {
            q[i * c + l] += 1.0 - s;
        }
        let targets = Tensor::from_f64(logits.backend(), &q, &[b, c]);
        // log softmax = x - max - log sum exp(x - max)
        let shifted = logits.sub(&logits.max_axis(1, true));
        let log_probs = shifted.sub(&shifted.exp().sum_axis(1, true).log());
        let loss = -log_probs.mul(&targets).sum_all() / b as f64;
        Ok((loss, CrossEntropyCache { probs: log_probs.exp(), targets }))
    }

    /// `dL/d(logits)` for an upstream `dL/d(loss)` (1 for the loss itself).
    pub fn backward<B: Kernels>(&self, cache: &CrossEntropyCache<B>, grad_loss: f64) -> Tensor<B> {
        let b = cache.probs.dim(0) as f64;
        cache.probs.sub(&cache.targets).scale(grad_loss / b)
    }
}
