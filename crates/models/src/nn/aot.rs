//! The attention-only transformer, AoT (4.3.2, Figure 4.15): layers `Z^{l+1} = Z^l + MSSA(LN(Z^l))` (or `Z^l + MSSA(Z^l)` without the LayerNorm), no MLP and no ISTA, with the softmax or the theorem's thresholded softmax `phi = h(softmax(.))`, `h(x) = tau 1{x > tau}`.
//!
//! MSSA is CRATE's ([`super::mssa`]): one shared projection per head, scores
//! `W W^T / sqrt(dh)`, output Linear with bias (which absorbs the step size
//! `eta` of 4.3.2). Parameter names follow CRATE's `PreNorm` layout:
//! `transformer.layers.{i}.0.norm.{weight,bias}` (only with `prenorm`),
//! `transformer.layers.{i}.0.fn.qkv.weight`,
//! `transformer.layers.{i}.0.fn.to_out.0.{weight,bias}`. The model is
//! [`Aot`] = [`Classifier`] of [`AotLayer`]s; the configuration keys are
//! the shared ones plus `dim_head` (optional), `prenorm` (`true`/`false`),
//! `attention` (`softmax` or `threshold`) and `tau`.
//!
//! Backward: `dL/dZ = G + LN^T(MSSA^T(G))`. With the thresholded map the
//! attention matrix is piecewise constant in the scores, so only the value
//! path `A^T G` carries gradient (the derivative of `h` is zero almost
//! everywhere).

use super::classifier::{Block, Classifier};
use super::config::{Meta, ModelConfig, VisionConfig};
use super::layernorm::{LayerNorm, LayerNormCache};
use super::measure::LayerMeasurement;
use super::mssa::{Mssa, MssaCache, MssaWeights, Phi, TILED_ABOVE_TOKENS};
use super::prenorm::pad_tokens;
use super::{join, Grads, Module};
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use std::collections::BTreeMap;

/// The AoT classifier.
pub type Aot<B> = Classifier<B, AotLayer<B>>;

/// The hyperparameters of an AoT classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct AotConfig {
    /// Image, embedding and head.
    pub vision: VisionConfig,
    /// Dimension of each head `p`; `None` derives `dim / heads` (which must divide).
    pub dim_head: Option<usize>,
    /// LayerNorm before MSSA (the chapter uses it for language).
    pub prenorm: bool,
    /// The attention map.
    pub phi: Phi,
}

impl AotConfig {
    /// The benchmark size: 32 px RGB, patch 4, dim 192, depth 8, 6 heads, with LayerNorm and softmax.
    pub fn cifar_small() -> Self {
        AotConfig { vision: VisionConfig::cifar_small(), dim_head: None, prenorm: true, phi: Phi::Softmax }
    }

    /// Dimension of each head.
    pub fn head_dim(&self) -> usize {
        self.dim_head.unwrap_or(self.vision.dim / self.vision.heads.max(1))
    }
}

impl ModelConfig for AotConfig {
    const NAME: &'static str = "AoT";

    fn vision(&self) -> VisionConfig {
        self.vision.clone()
    }

    fn validate(&self) -> Result<()> {
        self.vision.validate(Self::NAME)?;
        let v = &self.vision;
        match self.dim_head {
            Some(0) => return Err(Error::Config("AoT: dim_head must be positive, got 0".into())),
            None if v.dim % v.heads != 0 => {
                return Err(Error::Config(format!(
                    "AoT: dim {} is not a multiple of heads {} (give dim_head explicitly otherwise)",
                    v.dim, v.heads
                )))
            }
            _ => {}
        }
        if let Phi::Threshold(tau) = self.phi {
            if !(tau > 0.0 && tau <= 1.0) {
                return Err(Error::Config(format!("AoT: threshold tau = {tau} is not in (0, 1]")));
            }
        }
        Ok(())
    }

    fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        self.vision.to_metadata(&mut m);
        m.insert("dim_head".into(), self.head_dim().to_string());
        m.insert("prenorm".into(), self.prenorm.to_string());
        match self.phi {
            Phi::Softmax => {
                m.insert("attention".into(), "softmax".into());
            }
            Phi::Threshold(tau) => {
                m.insert("attention".into(), "threshold".into());
                m.insert("tau".into(), tau.to_string());
            }
        }
        m
    }

    fn from_metadata(meta: &Meta) -> Result<Self> {
        let phi = match meta.str("attention") {
            None | Some("softmax") => Phi::Softmax,
            Some("threshold") => Phi::Threshold(meta.f64_or("tau", 0.9)?),
            Some(other) => {
                return Err(Error::Format {
                    path: meta.source.to_string(),
                    message: format!(
                        "configuration key `attention` = {other:?} is not 'softmax' or 'threshold'"
                    ),
                })
            }
        };
        let config = AotConfig {
            vision: VisionConfig::from_metadata(meta)?,
            dim_head: meta.opt_usize("dim_head")?,
            prenorm: meta.bool_or("prenorm", true)?,
            phi,
        };
        config.validate()?;
        Ok(config)
    }
}

/// One AoT layer: `z + MSSA(LN(z))` or `z + MSSA(z)`.
#[derive(Clone, Debug)]
pub struct AotLayer<B: Kernels> {
    /// `{prefix}.0.norm`, if present.
    pub norm: Option<LayerNorm<B>>,
    /// `{prefix}.0.fn`.
    pub attn: Mssa<B>,
    /// The attention map.
    pub phi: Phi,
    /// Token count above which the softmax attention runs tiled (`usize::MAX`: never).
    pub tiled_above: usize,
}

/// What [`AotLayer::backward`] needs.
#[derive(Clone, Debug)]
pub struct AotLayerCache<B: Kernels> {
    /// Cache of the LayerNorm, if present.
    pub norm: Option<LayerNormCache<B>>,
    /// Cache of MSSA (projected tokens, attention maps).
    pub attn: MssaCache<B>,
}

impl<B: Kernels> AotLayer<B> {
    /// A layer with PyTorch's default initialisation.
    pub fn new(
        backend: &B,
        dim: usize,
        heads: usize,
        dim_head: usize,
        prenorm: bool,
        phi: Phi,
        rng: &mut StdRng,
    ) -> Self {
        AotLayer {
            norm: prenorm.then(|| LayerNorm::new(backend, dim)),
            attn: Mssa::new(backend, dim, heads, dim_head, rng),
            phi,
            tiled_above: TILED_ABOVE_TOKENS,
        }
    }

    /// `z + MSSA(LN(z))` for `[batch, tokens, dim]`, with the cache.
    pub fn forward(&self, z: &Tensor<B>) -> (Tensor<B>, AotLayerCache<B>) {
        self.forward_queries(z, z.dim(1), &self.attn.prepare())
    }

    /// The first `queries` output tokens (attention still reads every token), with the cache.
    pub fn forward_queries(
        &self,
        z: &Tensor<B>,
        queries: usize,
        weights: &MssaWeights<B>,
    ) -> (Tensor<B>, AotLayerCache<B>) {
        let (x, norm) = match &self.norm {
            Some(ln) => {
                let (x, c) = ln.forward(z);
                (x, Some(c))
            }
            None => (z.clone(), None),
        };
        let (a, attn) = self.attn.forward_phi(&x, queries, weights, self.phi, self.tiled_above);
        let z_q = if a.dim(1) == z.dim(1) { z.clone() } else { z.narrow(1, 0, a.dim(1)) };
        (z_q.add(&a), AotLayerCache { norm, attn })
    }

    /// Backward: adds `prefix.0.norm.*` and `prefix.0.fn.*` gradients and returns `dL/dz`.
    pub fn backward(
        &self,
        cache: &AotLayerCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let g_x = self.attn.backward(&cache.attn, grad_out, &join(prefix, "0.fn"), grads, false);
        let g_z = match (&self.norm, &cache.norm) {
            (Some(ln), Some(c)) => ln.backward(c, &g_x, &join(prefix, "0.norm"), grads),
            _ => g_x,
        };
        g_z.add(&pad_tokens(grad_out, g_z.dim(1)))
    }
}

impl<B: Kernels> Block<B> for AotLayer<B> {
    type Config = AotConfig;
    type Cache = AotLayerCache<B>;
    type Prepared = MssaWeights<B>;

    fn init(backend: &B, c: &AotConfig, rng: &mut StdRng) -> Result<Self> {
        let mut layer =
            AotLayer::new(backend, c.vision.dim, c.vision.heads, c.head_dim(), c.prenorm, c.phi, rng);
        if let Some(ln) = &mut layer.norm {
            ln.eps = c.vision.layernorm_eps;
        }
        Ok(layer)
    }

    fn prepare(&self) -> MssaWeights<B> {
        self.attn.prepare()
    }

    fn forward(
        &self,
        z: &Tensor<B>,
        queries: usize,
        weights: &MssaWeights<B>,
    ) -> (Tensor<B>, AotLayerCache<B>) {
        self.forward_queries(z, queries, weights)
    }

    fn backward(
        &self,
        cache: &AotLayerCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
        _micro_batch: bool,
    ) -> Tensor<B> {
        AotLayer::backward(self, cache, grad_out, prefix, grads)
    }

    fn measure(cache: &AotLayerCache<B>) -> Result<LayerMeasurement<B>> {
        LayerMeasurement::of(&cache.attn.head_tokens(), None, cache.attn.attn.clone())
    }
}

impl<B: Kernels> Module<B> for AotLayer<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        if let Some(ln) = &self.norm {
            ln.visit(&join(prefix, "0.norm"), f);
        }
        self.attn.visit(&join(prefix, "0.fn"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        if let Some(ln) = &mut self.norm {
            ln.visit_mut(&join(prefix, "0.norm"), f);
        }
        self.attn.visit_mut(&join(prefix, "0.fn"), f);
    }
}
