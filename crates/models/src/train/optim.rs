//! The optimisers of the training loop with PyTorch's update rules (AdamW, Lion, SGD with momentum and Nesterov), stepping a [`Module`]'s parameters by name, with weight-decay groups and clipping by global norm.
//!
//! For each parameter `p` with gradient `g` at its step `t` (learning rate `lr`, weight decay `wd`):
//! * AdamW (`torch.optim.AdamW`): `p <- p (1 - lr wd)`, `m <- b1 m + (1 - b1) g`,
//!   `v <- b2 v + (1 - b2) g^2`, `p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`;
//! * Lion (Chen et al. 2023, the CRATE authors' ImageNet recipe): `u = sign(b1 m + (1 - b1) g)`,
//!   `p <- p (1 - lr wd) - lr u`, `m <- b2 m + (1 - b2) g`;
//! * SGD (`torch.optim.SGD`, dampening 0): `d = g + wd p`, `buf <- d` at `t = 1` else
//!   `buf <- mu buf + d`; `p <- p - lr (d + mu buf)` with Nesterov, else `p <- p - lr buf`.
//!
//! Parameters without a gradient are left alone, as PyTorch skips parameters whose `.grad` is `None`.
//! [`no_weight_decay`] names the parameters that get no decay (the usual ViT groups).

use crate::nn::exec::{map_ordered, runs_on_host};
use crate::nn::{Grads, Module};
use crate::{Error, Kernels, Result, Tensor};
use std::collections::BTreeMap;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay.
    AdamW,
    /// Sign momentum (EvoLved Sign Momentum).
    Lion,
    /// Stochastic gradient descent with (optionally Nesterov) momentum.
    Sgd,
}

impl OptimizerKind {
    /// `adamw`, `lion` or `sgd`.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Lion => "lion",
            OptimizerKind::Sgd => "sgd",
        }
    }

    /// The kind named `adamw`, `lion` or `sgd`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "adamw" => Ok(OptimizerKind::AdamW),
            "lion" => Ok(OptimizerKind::Lion),
            "sgd" => Ok(OptimizerKind::Sgd),
            other => Err(Error::Config(format!("unknown optimizer {other:?} (adamw, lion, sgd)"))),
        }
    }
}

/// An optimiser's hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Learning rate of [`Optimizer::step`] (the training loop passes its schedule's instead).
    pub lr: f64,
    /// `(beta1, beta2)` of AdamW and Lion.
    pub betas: (f64, f64),
    /// Added to AdamW's denominator.
    pub eps: f64,
    /// Weight decay: decoupled for AdamW and Lion, added to the gradient for SGD.
    pub weight_decay: f64,
    /// SGD momentum `mu` (0: plain SGD).
    pub momentum: f64,
    /// SGD with Nesterov momentum.
    pub nesterov: bool,
}

impl OptimizerConfig {
    /// PyTorch's AdamW defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            momentum: 0.0,
            nesterov: false,
        }
    }

    /// Lion's defaults: betas (0.9, 0.99), weight decay 0.
    pub fn lion(lr: f64) -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Lion,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
            ..Self::adamw(lr)
        }
    }

    /// SGD with momentum `momentum` (Nesterov if asked), no weight decay.
    pub fn sgd(lr: f64, momentum: f64, nesterov: bool) -> Self {
        OptimizerConfig { kind: OptimizerKind::Sgd, weight_decay: 0.0, momentum, nesterov, ..Self::adamw(lr) }
    }

    /// The defaults of `kind` at learning rate `lr` (SGD: momentum 0.9, Nesterov).
    pub fn of_kind(kind: OptimizerKind, lr: f64) -> Self {
        match kind {
            OptimizerKind::AdamW => Self::adamw(lr),
            OptimizerKind::Lion => Self::lion(lr),
            OptimizerKind::Sgd => Self::sgd(lr, 0.9, true),
        }
    }

    /// Checks the hyperparameters: finite, `lr, eps, weight_decay >= 0`, betas and momentum in `[0, 1)`,
    /// Nesterov only with momentum.
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let finite =
            [self.lr, b1, b2, self.eps, self.weight_decay, self.momentum].iter().all(|v| v.is_finite());
        let ok = finite
            && self.lr >= 0.0
            && (0.0..1.0).contains(&b1)
            && (0.0..1.0).contains(&b2)
            && self.eps >= 0.0
            && self.weight_decay >= 0.0
            && (0.0..1.0).contains(&self.momentum)
            && (!self.nesterov || self.momentum > 0.0);
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "{}: lr {} betas ({b1}, {b2}) eps {} weight_decay {} momentum {} nesterov {} (need lr, eps, \
                 weight_decay >= 0, betas and momentum in [0, 1), Nesterov only with momentum > 0)",
                self.kind.name(),
                self.lr,
                self.eps,
                self.weight_decay,
                self.momentum,
                self.nesterov
            )))
        }
    }

    /// The hyperparameters as string metadata (`optimizer`, `betas`, ...).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("optimizer".into(), self.kind.name().into());
        m.insert("lr".into(), self.lr.to_string());
        m.insert("beta1".into(), self.betas.0.to_string());
        m.insert("beta2".into(), self.betas.1.to_string());
        m.insert("eps".into(), self.eps.to_string());
        m.insert("weight_decay".into(), self.weight_decay.to_string());
        m.insert("momentum".into(), self.momentum.to_string());
        m.insert("nesterov".into(), self.nesterov.to_string());
        m
    }
}

/// Per-parameter state: the step count and the moments (AdamW: `m`, `v`; Lion: `m`; SGD: the momentum buffer).
#[derive(Clone, Debug)]
struct ParamState<B: Kernels> {
    step: u64,
    m: Option<Tensor<B>>,
    v: Option<Tensor<B>>,
}

/// An optimiser: hyperparameters and per-parameter state by PyTorch name.
#[derive(Clone, Debug)]
pub struct Optimizer<B: Kernels> {
    /// The hyperparameters.
    pub config: OptimizerConfig,
    state: BTreeMap<String, ParamState<B>>,
}

/// PyTorch's AdamW at learning rate `lr` (defaults of [`OptimizerConfig::adamw`]), decaying every parameter.
pub type AdamW<B> = Optimizer<B>;

/// Whether the parameter `name` of shape `shape` gets no weight decay: every tensor of rank 1 or less
/// (biases, LayerNorm weights), the class token, the positional embedding and the TSSA temperature
/// (`temp`); only the weight matrices (Linear, the patch projection, MSSA/TSSA projections, ISTA's
/// dictionary) are decayed, as in the CRATE and ToST training scripts (timm's groups).
pub fn no_weight_decay(name: &str, shape: &[usize]) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    shape.len() <= 1 || matches!(last, "bias" | "cls_token" | "pos_embedding" | "temp")
}

impl<B: Kernels> Optimizer<B> {
    /// An optimiser with no state; the configuration is checked.
    pub fn new(config: OptimizerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Optimizer { config, state: BTreeMap::new() })
    }

    /// PyTorch's AdamW at learning rate `lr` with its defaults.
    pub fn adamw(lr: f64) -> Self {
        Optimizer { config: OptimizerConfig::adamw(lr), state: BTreeMap::new() }
    }

    /// Number of steps taken for parameter `name` (0 before its first update).
    pub fn steps_of(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// One update at the configured learning rate of every parameter that has a gradient, all decayed
    /// (PyTorch's `Optimizer(model.parameters())`).
    pub fn step<M: Module<B> + ?Sized>(&mut self, model: &mut M, grads: &Grads<B>) -> Result<()> {
        let lr = self.config.lr;
        self.step_with(model, grads, lr, &|_, _| true)
    }

    /// One update at learning rate `lr`; `decays(name, shape)` says which parameters get weight decay.
    /// A gradient whose shape differs from its parameter is refused before anything changes.
    pub fn step_with<M: Module<B> + ?Sized>(
        &mut self,
        model: &mut M,
        grads: &Grads<B>,
        lr: f64,
        decays: &dyn Fn(&str, &[usize]) -> bool,
    ) -> Result<()> {
        OptimizerConfig { lr, ..self.config }.validate()?;
        let mut bad = None;
        model.visit("", &mut |name, p| {
            if let Some(g) = grads.get(&name) {
                if g.shape() != p.shape() && bad.is_none() {
                    bad = Some(format!(
                        "{}: gradient of `{name}` has shape {:?}, parameter {:?}",
                        self.config.kind.name(),
                        g.shape(),
                        p.shape()
                    ));
                }
            }
        });
        if let Some(msg) = bad {
            return Err(Error::Config(msg));
        }
        let c = self.config;
        let state = &mut self.state;
        let wd_of = |name: &str, p: &Tensor<B>| if decays(name, p.shape()) { c.weight_decay } else { 0.0 };
        let step = |name: &str, wd: f64, s: &mut ParamState<B>, p: &Tensor<B>| {
            s.step += 1;
            update(&c, lr, wd, s, p, &grads[name])
        };
        if !on_host(grads) {
            // on a device the updates are queued in order, each parameter replaced in place
            model.visit_mut("", &mut |name, p| {
                if grads.contains_key(&name) {
                    let s = state.entry(name.clone()).or_insert(ParamState { step: 0, m: None, v: None });
                    *p = step(&name, wd_of(&name, p), s, p);
                }
            });
            return Ok(());
        }
        // On the host the parameters are moved out (an empty host buffer in their place), updated
        // independently on rayon's pool (each update is a chain of small elementwise ops) and moved back:
        // the same values in any order.
        let mut jobs = Vec::new();
        model.visit_mut("", &mut |name, p| {
            if grads.contains_key(&name) {
                let s = state.remove(&name).unwrap_or(ParamState { step: 0, m: None, v: None });
                let wd = wd_of(&name, p);
                let placeholder = Tensor::zeros(p.backend(), &[0]);
                jobs.push((name, wd, std::mem::replace(p, placeholder), s));
            }
        });
        let done = map_ordered(jobs, true, |(name, wd, p, mut s)| {
            let new = step(&name, wd, &mut s, &p);
            (name, new, s)
        });
        let mut updated = BTreeMap::new();
        for (name, p, s) in done {
            state.insert(name.clone(), s);
            updated.insert(name, p);
        }
        model.visit_mut("", &mut |name, p| {
            if let Some(new) = updated.remove(&name) {
                *p = new;
            }
        });
        Ok(())
    }

    /// The moments as named tensors: `m.<name>` and `v.<name>` where present (the step counts are [`Self::steps`]).
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor<B>> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.state {
            if let Some(m) = &s.m {
                out.insert(format!("m.{name}"), m.clone());
            }
            if let Some(v) = &s.v {
                out.insert(format!("v.{name}"), v.clone());
            }
        }
        out
    }

    /// Per-parameter step counts, by name.
    pub fn steps(&self) -> BTreeMap<String, u64> {
        self.state.iter().map(|(k, s)| (k.clone(), s.step)).collect()
    }

    /// Restores the state written by [`Self::state_tensors`] and [`Self::steps`]: every tensor must name a
    /// parameter of `model` with its shape, every moment must have its step count;
    /// anything else is refused with the tensor's name (`source` labels the error).
    pub fn load_state<M: Module<B> + ?Sized>(
        &mut self,
        backend: &B,
        model: &M,
        tensors: &BTreeMap<String, (Vec<usize>, Vec<f64>)>,
        steps: &BTreeMap<String, u64>,
        source: &str,
    ) -> Result<()> {
        let fmt = |message: String| Error::Format { path: source.to_string(), message };
        let mut shapes = BTreeMap::new();
        model.visit("", &mut |name, p| {
            shapes.insert(name, p.shape().to_vec());
        });
        let mut state: BTreeMap<String, ParamState<B>> = BTreeMap::new();
        for (name, &step) in steps {
            if !shapes.contains_key(name) {
                return Err(fmt(format!(
                    "optimizer step of `{name}`, which is not a parameter of this model"
                )));
            }
            state.insert(name.clone(), ParamState { step, m: None, v: None });
        }
        for (key, (shape, data)) in tensors {
            let (kind, name) = key.split_once('.').ok_or_else(|| fmt(format!("unknown tensor `{key}`")))?;
            let Some(expected) = shapes.get(name) else {
                return Err(fmt(format!("tensor `{key}`: `{name}` is not a parameter of this model")));
            };
            if shape != expected {
                return Err(fmt(format!("tensor `{key}` has shape {shape:?}, the parameter {expected:?}")));
            }
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(fmt(format!("tensor `{key}` holds a non-finite value at flat index {i}")));
            }
            let t = Some(Tensor::from_f64(backend, data, shape));
            let s = state.entry(name.to_string()).or_insert(ParamState { step: 0, m: None, v: None });
            match kind {
                "m" => s.m = t,
                "v" => s.v = t,
                other => return Err(fmt(format!("tensor `{key}`: unknown state `{other}` (m, v)"))),
            }
        }
        if let Some((name, _)) = state.iter().find(|(_, s)| s.step == 0) {
            return Err(fmt(format!("the state of `{name}` has no step count")));
        }
        let needs_v = self.config.kind == OptimizerKind::AdamW;
        if let Some((name, _)) = state.iter().find(|(_, s)| {
            let needs_m = self.config.kind != OptimizerKind::Sgd || self.config.momentum > 0.0;
            (needs_m && s.m.is_none()) || (needs_v && s.v.is_none())
        }) {
            return Err(fmt(format!(
                "the {} state of `{name}` lacks a moment (written by another optimizer?)",
                self.config.kind.name()
            )));
        }
        self.state = state;
        Ok(())
    }
}

/// The new value of parameter `p` (state `s`, already at its new step) for gradient `g`.
fn update<B: Kernels>(
    c: &OptimizerConfig,
    lr: f64,
    wd: f64,
    s: &mut ParamState<B>,
    p: &Tensor<B>,
    g: &Tensor<B>,
) -> Tensor<B> {
    let (b1, b2) = c.betas;
    let zeros = || Tensor::zeros(p.backend(), p.shape());
    match c.kind {
        OptimizerKind::AdamW => {
            let t = s.step as i32;
            let m = s.m.take().unwrap_or_else(zeros).scale(b1).add(&g.scale(1.0 - b1));
            let v = s.v.take().unwrap_or_else(zeros).scale(b2).add(&g.square().scale(1.0 - b2));
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            let denom = v.sqrt().scale(1.0 / bc2.sqrt()).add_scalar(c.eps);
            let decayed = if wd != 0.0 { p.scale(1.0 - lr * wd) } else { p.clone() };
            let out = decayed.sub(&m.div(&denom).scale(lr / bc1));
            s.m = Some(m);
            s.v = Some(v);
            out
        }
        OptimizerKind::Lion => {
            let m = s.m.take().unwrap_or_else(zeros);
            let mix = m.scale(b1).add(&g.scale(1.0 - b1));
            let sign = mix.step().sub(&mix.neg().step());
            let decayed = if wd != 0.0 { p.scale(1.0 - lr * wd) } else { p.clone() };
            s.m = Some(m.scale(b2).add(&g.scale(1.0 - b2)));
            decayed.sub(&sign.scale(lr))
        }
        OptimizerKind::Sgd => {
            let d = if wd != 0.0 { g.add(&p.scale(wd)) } else { g.clone() };
            if c.momentum == 0.0 {
                return p.sub(&d.scale(lr));
            }
            let buf = match s.m.take() {
                Some(buf) => buf.scale(c.momentum).add(&d),
                None => d.clone(),
            };
            let dir = if c.nesterov { d.add(&buf.scale(c.momentum)) } else { buf.clone() };
            s.m = Some(buf);
            p.sub(&dir.scale(lr))
        }
    }
}

/// The global Euclidean norm of all gradients, `sqrt(sum_p ||g_p||^2)`, accumulated in f64 in name order.
pub fn global_norm<B: Kernels>(grads: &Grads<B>) -> f64 {
    // per-tensor sums on rayon's pool on the host, added in name order either way
    let parts = map_ordered(grads.values().collect(), on_host(grads), |g| g.square().sum_all());
    parts.iter().sum::<f64>().sqrt()
}

/// Whether the tensors of `grads` live on a host backend ([`runs_on_host`]).
fn on_host<B: Kernels>(grads: &Grads<B>) -> bool {
    grads.values().next().is_some_and(|g| runs_on_host(&g.backend().name()))
}

/// Clips the gradients to global norm `max_norm` as `torch.nn.utils.clip_grad_norm_` does (every gradient
/// scaled by `max_norm / (norm + 1e-6)` when that is below 1); returns the norm before clipping.
pub fn clip_global_norm<B: Kernels>(grads: &mut Grads<B>, max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let scaled = map_ordered(grads.values().collect(), on_host(grads), |g| g.scale(coef));
        for (g, s) in grads.values_mut().zip(scaled) {
            *g = s;
        }
    }
    norm
}
