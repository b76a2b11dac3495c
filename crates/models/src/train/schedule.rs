//! The learning-rate schedule of the training loop, per optimiser step: linear warm-up, then cosine decay to a floor.
//!
//! For step `s = 0, 1, ...` (the learning rate of the `s + 1`-th update), base rate `lr`, `W` warm-up
//! steps, `T` steps in all and floor `f`:
//! `lr_s = lr (s + 1) / W` for `s < W`, then `lr_s = f + (lr - f) (1 + cos(pi (s - W) / (T - W))) / 2`
//! (timm's `CosineLRScheduler` per step with `warmup_lr_init = 0`, `lr_min = f`); after `T` steps, `f`.

use crate::{Error, Result};

/// Warm-up then cosine decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate, reached at the end of the warm-up.
    pub lr: f64,
    /// Linear warm-up steps `W` (0: none).
    pub warmup_steps: u64,
    /// Total steps `T` of the run.
    pub total_steps: u64,
    /// The floor `f` of the cosine decay.
    pub min_lr: f64,
}

impl Schedule {
    /// Checks `0 <= min_lr <= lr`, both finite, `lr > 0`, and `warmup_steps <= total_steps`, `total_steps > 0`.
    pub fn validate(&self) -> Result<()> {
        let ok = self.lr.is_finite()
            && self.lr > 0.0
            && self.min_lr.is_finite()
            && (0.0..=self.lr).contains(&self.min_lr)
            && self.total_steps > 0
            && self.warmup_steps <= self.total_steps;
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "learning-rate schedule: lr {} (must be positive), floor {} (in [0, lr]), warm-up {} of {} \
                 steps (at most the total, which must be positive)",
                self.lr, self.min_lr, self.warmup_steps, self.total_steps
            )))
        }
    }

    /// The learning rate of step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 || step >= self.total_steps {
            return self.min_lr;
        }
        let progress = (step - self.warmup_steps) as f64 / span as f64;
        self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
