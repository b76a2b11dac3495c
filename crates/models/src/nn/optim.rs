//! The AdamW optimiser with PyTorch's semantics (decoupled weight decay, bias-corrected moments), stepping a [`Module`]'s parameters by name.
//!
//! For each parameter `p` with gradient `g`, at its step `t`:
//! `p <- p (1 - lr wd)`, `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
//! `p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`
//! (`torch.optim.AdamW`, `amsgrad = False`). Parameters without a gradient are
//! left alone, as PyTorch skips parameters whose `.grad` is `None`.

use super::{Grads, Module};
use crate::{Error, Kernels, Result, Tensor};
use std::collections::BTreeMap;

/// AdamW state and hyperparameters.
#[derive(Clone, Debug)]
pub struct AdamW<B: Kernels> {
    /// Learning rate.
    pub lr: f64,
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    state: BTreeMap<String, MomentState<B>>,
}

#[derive(Clone, Debug)]
struct MomentState<B: Kernels> {
    step: u64,
    m: Tensor<B>,
    v: Tensor<B>,
}

impl<B: Kernels> AdamW<B> {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn new(lr: f64) -> Self {
        AdamW { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01, state: BTreeMap::new() }
    }

    /// Checks the hyperparameters (`lr >= 0`, betas in `[0, 1)`, `eps >= 0`, `weight_decay >= 0`).
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let ok = self.lr >= 0.0
            && (0.0..1.0).contains(&b1)
            && (0.0..1.0).contains(&b2)
            && self.eps >= 0.0
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "AdamW: lr {} betas ({b1}, {b2}) eps {} weight_decay {} (need lr, eps, weight_decay >= 0 and betas in [0, 1))",
                self.lr, self.eps, self.weight_decay
            )))
        }
    }

    /// Number of steps taken for parameter `name` (0 before its first update).
    pub fn steps_of(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// One update of every parameter of `model` that has a gradient in `grads`.
    /// A gradient whose shape differs from its parameter is refused before anything changes.
    pub fn step<M: Module<B> + ?Sized>(&mut self, model: &mut M, grads: &Grads<B>) -> Result<()> {
        self.validate()?;
        let mut bad = None;
        model.visit("", &mut |name, p| {
            if let Some(g) = grads.get(&name) {
                if g.shape() != p.shape() && bad.is_none() {
                    bad = Some(format!(
                        "AdamW: gradient of `{name}` has shape {:?}, parameter {:?}",
                        g.shape(),
                        p.shape()
                    ));
                }
            }
        });
        if let Some(msg) = bad {
            return Err(Error::Config(msg));
        }
        let (b1, b2) = self.betas;
        let (lr, eps, wd) = (self.lr, self.eps, self.weight_decay);
        let state = &mut self.state;
        model.visit_mut("", &mut |name, p| {
            let Some(g) = grads.get(&name) else { return };
            let s = state.entry(name).or_insert_with(|| MomentState {
                step: 0,
                m: Tensor::zeros(p.backend(), p.shape()),
                v: Tensor::zeros(p.backend(), p.shape()),
            });
            s.step += 1;
            let t = s.step as i32;
            s.m = s.m.scale(b1).add(&g.scale(1.0 - b1));
            s.v = s.v.scale(b2).add(&g.square().scale(1.0 - b2));
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            let denom = s.v.sqrt().scale(1.0 / bc2.sqrt()).add_scalar(eps);
            let decayed = if wd != 0.0 { p.scale(1.0 - lr * wd) } else { p.clone() };
            *p = decayed.sub(&s.m.div(&denom).scale(lr / bc1));
        });
        Ok(())
    }
}
