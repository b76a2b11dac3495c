//! CRATE, the coding-rate transformer (4.2.20 as the reference code builds it): patch embedding, then per layer `Z^{l+1/2} = Z^l + MSSA(LN(Z^l))`, `Z^{l+1} = ISTA(LN(Z^{l+1/2}))`, then LayerNorm + Linear on the class token.
//!
//! Parameters carry the reference PyTorch names (`to_patch_embedding.1.weight`,
//! `cls_token`, `pos_embedding`, `transformer.layers.{i}.0.norm.weight`,
//! `transformer.layers.{i}.0.fn.qkv.weight`, `transformer.layers.{i}.0.fn.to_out.0.weight`,
//! `transformer.layers.{i}.1.norm.weight`, `transformer.layers.{i}.1.fn.weight`,
//! `mlp_head.0.weight`, `mlp_head.1.weight`, ...), so the authors' checkpoints
//! load as they are. The model is the shared classifier of [`super::classifier`] with
//! the pre-norm layer of [`super::prenorm`]; this file holds CRATE's configuration
//! and its attention, MSSA, as the layer's [`Attention`]. Per-layer measurements follow the authors' scripts
//! (`vis_utils/coding_rate.py`, `vis_utils/crate_hook.py`): the coding rate of
//! the projected tokens `U_k^T LN(z)` of each head, tokens L2-normalised,
//! `eps^2 = 0.01`; the fraction of exact zeros of each ISTA output.

use super::classifier::{Classifier, ClassifierCache};
use super::config::{Meta, ModelConfig, VisionConfig};
use super::head::Pool;
use super::layernorm::LAYERNORM_EPS;
use super::mssa::{Mssa, MssaCache, MssaWeights};
use super::prenorm::{Attention, PreNormCache, PreNormConfig, PreNormLayer};
use super::Grads;
use crate::io::TensorFile;
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};

pub use super::exec::{CrateGradients, Execution};
pub use super::measure::{head_coding_rates, zero_fraction_per_image, LayerMeasurement, MEASURE_EPS_SQ};

/// The CRATE image classifier: the shared [`Classifier`] of [`CrateLayer`]s.
pub type Crate<B> = Classifier<B, CrateLayer<B>>;

/// One CRATE layer: `u = z + MSSA(LN1(z))`, `z' = ISTA(LN2(u))` (the shared pre-norm layer with MSSA).
pub type CrateLayer<B> = PreNormLayer<B, Mssa<B>>;

/// What a CRATE forward pass keeps for backward and the measurements.
pub type CrateCache<B> = ClassifierCache<B, CrateLayer<B>>;

/// What [`CrateLayer`]'s backward needs.
pub type CrateLayerCache<B> = PreNormCache<B, Mssa<B>>;

/// The hyperparameters of a CRATE classifier (the reference `CRATE(...)` arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct CrateConfig {
    /// Side of the square input images.
    pub image_size: usize,
    /// Side of the square patches (must divide `image_size`).
    pub patch_size: usize,
    /// Image channels.
    pub channels: usize,
    /// Number of classes of the head.
    pub num_classes: usize,
    /// Token dimension `d`.
    pub dim: usize,
    /// Number of layers `L`.
    pub depth: usize,
    /// Number of heads (subspaces) `K`.
    pub heads: usize,
    /// Dimension of each head `p`; `None` derives `dim / heads` (which must divide).
    pub dim_head: Option<usize>,
    /// Pooling before the head (`cls` in the reference configs).
    pub pool: Pool,
    /// ISTA step size `eta`.
    pub ista_step_size: f64,
    /// ISTA sparsity weight `lambda`.
    pub ista_lambda: f64,
    /// LayerNorm epsilon.
    pub layernorm_eps: f64,
}

impl CrateConfig {
    fn imagenet(dim: usize, depth: usize, heads: usize) -> Self {
        CrateConfig {
            image_size: 224,
            patch_size: 16,
            channels: 3,
            num_classes: 1000,
            dim,
            depth,
            heads,
            dim_head: None,
            pool: Pool::Cls,
            ista_step_size: 0.1,
            ista_lambda: 0.1,
            layernorm_eps: LAYERNORM_EPS,
        }
    }

    /// CRATE-T of Table 4.1 (ImageNet, 224 px, patch 16): dim 384, depth 12, 6 heads; 6.09M parameters.
    pub fn tiny() -> Self {
        Self::imagenet(384, 12, 6)
    }

    /// CRATE-S of Table 4.1: dim 576, depth 12, 12 heads; 13.12M parameters.
    pub fn small() -> Self {
        Self::imagenet(576, 12, 12)
    }

    /// CRATE-B of Table 4.1: dim 768, depth 12, 12 heads; 22.80M parameters.
    pub fn base() -> Self {
        Self::imagenet(768, 12, 12)
    }

    /// CRATE-L of Table 4.1: dim 1024, depth 24, 16 heads; 77.64M parameters.
    pub fn large() -> Self {
        Self::imagenet(1024, 24, 16)
    }

    /// A small CIFAR-10 model: 32 px RGB, patch 4 (65 tokens), dim 192, depth 8, 6 heads.
    pub fn cifar_small() -> Self {
        CrateConfig {
            image_size: 32,
            patch_size: 4,
            channels: 3,
            num_classes: 10,
            dim: 192,
            depth: 8,
            heads: 6,
            ..Self::tiny()
        }
    }

    /// A small MNIST model: 28 px grey, patch 4 (50 tokens), dim 128, depth 6, 4 heads.
    pub fn mnist_small() -> Self {
        CrateConfig {
            image_size: 28,
            patch_size: 4,
            channels: 1,
            num_classes: 10,
            dim: 128,
            depth: 6,
            heads: 4,
            ..Self::tiny()
        }
    }

    /// A preset by name: `tiny`, `small`, `base`, `large` (Table 4.1), `cifar-small`, `mnist-small`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" | "crate-t" => Ok(Self::tiny()),
            "small" | "crate-s" => Ok(Self::small()),
            "base" | "crate-b" => Ok(Self::base()),
            "large" | "crate-l" => Ok(Self::large()),
            "cifar-small" => Ok(Self::cifar_small()),
            "mnist-small" => Ok(Self::mnist_small()),
            other => Err(Error::Config(format!(
                "unknown CRATE preset {other:?} (tiny, small, base, large, cifar-small, mnist-small)"
            ))),
        }
    }

    /// Checks every constraint; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("channels", self.channels),
            ("num_classes", self.num_classes),
            ("dim", self.dim),
            ("heads", self.heads),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!("CRATE: {name} must be positive, got 0")));
            }
        }
        if self.image_size % self.patch_size != 0 {
            return Err(Error::Config(format!(
                "CRATE: image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        match self.dim_head {
            Some(0) => return Err(Error::Config("CRATE: dim_head must be positive, got 0".into())),
            None if self.dim % self.heads != 0 => {
                return Err(Error::Config(format!(
                    "CRATE: dim {} is not a multiple of heads {} (dim_head = dim / heads is derived; give dim_head explicitly otherwise)",
                    self.dim, self.heads
                )))
            }
            _ => {}
        }
        for (name, v) in [("ista_step_size", self.ista_step_size), ("ista_lambda", self.ista_lambda)] {
            if !v.is_finite() {
                return Err(Error::Config(format!("CRATE: {name} = {v} is not finite")));
            }
        }
        if !(self.layernorm_eps > 0.0 && self.layernorm_eps.is_finite()) {
            return Err(Error::Config(format!(
                "CRATE: layernorm_eps = {} must be positive",
                self.layernorm_eps
            )));
        }
        Ok(())
    }

    /// Dimension of each head (explicit, or `dim / heads`).
    pub fn head_dim(&self) -> usize {
        self.dim_head.unwrap_or(self.dim / self.heads.max(1))
    }

    /// Patches per image `(image_size / patch_size)^2`.
    pub fn num_patches(&self) -> usize {
        let g = self.image_size / self.patch_size.max(1);
        g * g
    }

    /// Tokens per image (patches + the class token).
    pub fn tokens(&self) -> usize {
        self.num_patches() + 1
    }

    /// Length of a flattened patch `P P C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.channels
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let (d, pd, inner) = (self.dim, self.patch_dim(), self.heads * self.head_dim());
        let embed = 2 * pd + pd * d + d + 2 * d;
        let to_out = if super::mssa::has_to_out(d, self.heads, self.head_dim()) { inner * d + d } else { 0 };
        let layer = 2 * d + d * inner + to_out + 2 * d + d * d;
        let head = 2 * d + d * self.num_classes + self.num_classes;
        embed + self.tokens() * d + d + self.depth * layer + head
    }

    /// The hyperparameters as safetensors metadata (the fixture's key names).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("channels", self.channels),
            ("num_classes", self.num_classes),
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("dim_head", self.head_dim()),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        m.insert("pool".into(), self.pool.name().into());
        m.insert("ista_step_size".into(), self.ista_step_size.to_string());
        m.insert("ista_lambda".into(), self.ista_lambda.to_string());
        m.insert("layernorm_eps".into(), self.layernorm_eps.to_string());
        m
    }

    /// The configuration of a checkpoint: `image_size`, `patch_size`,
    /// `channels` and `heads` from its metadata (`dim_head`, `pool`,
    /// `ista_step_size`, `ista_lambda`, `layernorm_eps` optional); `dim`,
    /// `num_classes` and `depth` from its tensors (`cls_token`, `mlp_head.1.weight`
    /// and the `transformer.layers.{i}` indices), checked against the
    /// metadata where it states them too.
    pub fn from_checkpoint(file: &TensorFile) -> Result<Self> {
        let fmt = |message: String| Error::Format { path: file.path.clone(), message };
        let cls = file.get("cls_token")?;
        let dim = match cls.shape.as_slice() {
            [1, 1, d] => *d,
            s => return Err(fmt(format!("tensor `cls_token` has shape {s:?}, expected [1, 1, dim]"))),
        };
        let num_classes = match file.get("mlp_head.1.weight")?.shape.as_slice() {
            [c, d] if *d == dim => *c,
            s => {
                return Err(fmt(format!(
                    "tensor `mlp_head.1.weight` has shape {s:?}, expected [classes, {dim}]"
                )))
            }
        };
        let depth = layer_count(file.tensors.keys().map(|s| s.as_str())).map_err(fmt)?;
        let opt_usize = |key: &str| -> Result<Option<usize>> {
            if file.metadata.contains_key(key) {
                file.meta_usize(key).map(Some)
            } else {
                Ok(None)
            }
        };
        let opt_f64 = |key: &str, default: f64| -> Result<f64> {
            if file.metadata.contains_key(key) {
                file.meta_f64(key)
            } else {
                Ok(default)
            }
        };
        for (key, found) in [("dim", dim), ("num_classes", num_classes), ("depth", depth)] {
            if let Some(stated) = opt_usize(key)? {
                if stated != found {
                    return Err(fmt(format!("metadata `{key}` = {stated} but the tensors give {found}")));
                }
            }
        }
        let pool = match file.metadata.get("pool") {
            None => Pool::Cls,
            Some(s) => Pool::parse(s)
                .ok_or_else(|| fmt(format!("metadata `pool` = {s:?} is not 'cls' or 'mean'")))?,
        };
        let config = CrateConfig {
            image_size: file.meta_usize("image_size")?,
            patch_size: file.meta_usize("patch_size")?,
            channels: file.meta_usize("channels")?,
            num_classes,
            dim,
            depth,
            heads: file.meta_usize("heads")?,
            dim_head: opt_usize("dim_head")?,
            pool,
            ista_step_size: opt_f64("ista_step_size", 0.1)?,
            ista_lambda: opt_f64("ista_lambda", 0.1)?,
            layernorm_eps: opt_f64("layernorm_eps", LAYERNORM_EPS)?,
        };
        config.validate().map_err(|e| fmt(e.to_string()))?;
        Ok(config)
    }
}

/// Number of layers named `transformer.layers.{i}.*`; the indices must be `0..depth`.
pub fn layer_count<'a>(names: impl Iterator<Item = &'a str>) -> std::result::Result<usize, String> {
    let mut idx = BTreeSet::new();
    for name in names {
        if let Some(rest) = name.strip_prefix("transformer.layers.") {
            let i = rest.split('.').next().unwrap_or("");
            let i: usize =
                i.parse().map_err(|_| format!("tensor `{name}`: layer index {i:?} is not a number"))?;
            idx.insert(i);
        }
    }
    let depth = idx.len();
    if let Some(&last) = idx.iter().next_back() {
        if last + 1 != depth {
            return Err(format!("layer indices {idx:?} are not 0..{depth}"));
        }
    }
    Ok(depth)
}

impl ModelConfig for CrateConfig {
    const NAME: &'static str = "CRATE";

    fn vision(&self) -> VisionConfig {
        VisionConfig {
            image_size: self.image_size,
            patch_size: self.patch_size,
            channels: self.channels,
            num_classes: self.num_classes,
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            pool: self.pool,
            layernorm_eps: self.layernorm_eps,
        }
    }

    fn validate(&self) -> Result<()> {
        CrateConfig::validate(self)
    }

    fn to_metadata(&self) -> BTreeMap<String, String> {
        CrateConfig::to_metadata(self)
    }

    /// The keys [`CrateConfig::to_metadata`] writes (`dim_head`, `pool`,
    /// `ista_step_size`, `ista_lambda`, `layernorm_eps` optional).
    fn from_metadata(meta: &Meta) -> Result<Self> {
        let v = VisionConfig::from_metadata(meta)?;
        let config = CrateConfig {
            image_size: v.image_size,
            patch_size: v.patch_size,
            channels: v.channels,
            num_classes: v.num_classes,
            dim: v.dim,
            depth: v.depth,
            heads: v.heads,
            dim_head: meta.opt_usize("dim_head")?,
            pool: v.pool,
            ista_step_size: meta.f64_or("ista_step_size", 0.1)?,
            ista_lambda: meta.f64_or("ista_lambda", 0.1)?,
            layernorm_eps: v.layernorm_eps,
        };
        config.validate()?;
        Ok(config)
    }

    /// [`CrateConfig::from_checkpoint`] after `overrides` completed or replaced the metadata.
    fn from_file(file: &mut TensorFile, overrides: &BTreeMap<String, String>) -> Result<Self> {
        file.metadata.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        CrateConfig::from_checkpoint(file)
    }
}

impl PreNormConfig for CrateConfig {
    fn ista_step_size(&self) -> f64 {
        self.ista_step_size
    }

    fn ista_lambda(&self) -> f64 {
        self.ista_lambda
    }
}

/// MSSA as the attention of CRATE's pre-norm layer.
impl<B: Kernels> Attention<B> for Mssa<B> {
    type Config = CrateConfig;
    type Cache = MssaCache<B>;
    type Prepared = MssaWeights<B>;

    fn init(backend: &B, c: &CrateConfig, rng: &mut StdRng) -> Result<Self> {
        Ok(Mssa::new(backend, c.dim, c.heads, c.head_dim(), rng))
    }

    fn prepare(&self) -> MssaWeights<B> {
        Mssa::prepare(self)
    }

    fn forward(&self, x: &Tensor<B>, queries: usize, prepared: &MssaWeights<B>) -> (Tensor<B>, MssaCache<B>) {
        self.forward_queries(x, queries, prepared)
    }

    fn backward(
        &self,
        cache: &MssaCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        Mssa::backward(self, cache, grad_out, prefix, grads)
    }

    fn head_tokens(cache: &MssaCache<B>) -> Tensor<B> {
        cache.head_tokens()
    }

    fn map(cache: &MssaCache<B>) -> Option<Tensor<B>> {
        cache.attn.clone()
    }
}
