//! The configuration of CRATE (4.2.20 as the reference `CRATE(...)` builds it): presets of Table 4.1 and the small benchmark sizes, validation, safetensors metadata, and the configuration of a checkpoint inferred from its tensors.

use super::config::{has_to_out, Meta, ModelConfig, PreNormConfig, VisionConfig};
use super::head::Pool;
use super::layernorm::LAYERNORM_EPS;
use crate::io::TensorFile;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// The hyperparameters of a CRATE classifier (the reference `CRATE(...)` arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct CrateConfig {
    /// Image, embedding, depth, heads, pooling (`cls` in the reference configs) and head.
    pub vision: VisionConfig,
    /// Dimension of each head `p`; `None` derives `dim / heads` (which must divide).
    pub dim_head: Option<usize>,
    /// ISTA step size `eta`.
    pub ista_step_size: f64,
    /// ISTA sparsity weight `lambda`.
    pub ista_lambda: f64,
}

impl CrateConfig {
    fn imagenet(dim: usize, depth: usize, heads: usize) -> Self {
        CrateConfig {
            vision: VisionConfig {
                image_size: 224,
                patch_size: 16,
                channels: 3,
                num_classes: 1000,
                dim,
                depth,
                heads,
                pool: Pool::Cls,
                layernorm_eps: LAYERNORM_EPS,
            },
            dim_head: None,
            ista_step_size: 0.1,
            ista_lambda: 0.1,
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
        CrateConfig { vision: VisionConfig::cifar_small(), ..Self::tiny() }
    }

    /// A small MNIST model: 28 px grey, patch 4 (50 tokens), dim 128, depth 6, 4 heads.
    pub fn mnist_small() -> Self {
        let vision = VisionConfig {
            image_size: 28,
            channels: 1,
            dim: 128,
            depth: 6,
            heads: 4,
            ..VisionConfig::cifar_small()
        };
        CrateConfig { vision, ..Self::tiny() }
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
        let v = &self.vision;
        v.validate("CRATE")?;
        match self.dim_head {
            Some(0) => return Err(Error::Config("CRATE: dim_head must be positive, got 0".into())),
            None if v.dim % v.heads != 0 => {
                return Err(Error::Config(format!(
                    "CRATE: dim {} is not a multiple of heads {} (dim_head = dim / heads is derived; give dim_head explicitly otherwise)",
                    v.dim, v.heads
                )))
            }
            _ => {}
        }
        for (name, x) in [("ista_step_size", self.ista_step_size), ("ista_lambda", self.ista_lambda)] {
            if !x.is_finite() {
                return Err(Error::Config(format!("CRATE: {name} = {x} is not finite")));
            }
        }
        Ok(())
    }

    /// Dimension of each head (explicit, or `dim / heads`).
    pub fn head_dim(&self) -> usize {
        self.dim_head.unwrap_or(self.vision.dim / self.vision.heads.max(1))
    }

    /// Patches per image `(image_size / patch_size)^2`.
    pub fn num_patches(&self) -> usize {
        self.vision.num_patches()
    }

    /// Tokens per image (patches + the class token).
    pub fn tokens(&self) -> usize {
        self.vision.tokens()
    }

    /// Length of a flattened patch `P P C`.
    pub fn patch_dim(&self) -> usize {
        self.vision.patch_size * self.vision.patch_size * self.vision.channels
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let v = &self.vision;
        let (d, pd, inner) = (v.dim, self.patch_dim(), v.heads * self.head_dim());
        let embed = 2 * pd + pd * d + d + 2 * d;
        let to_out = if has_to_out(d, v.heads, self.head_dim()) { inner * d + d } else { 0 };
        let layer = 2 * d + d * inner + to_out + 2 * d + d * d;
        let head = 2 * d + d * v.num_classes + v.num_classes;
        embed + self.tokens() * d + d + v.depth * layer + head
    }

    /// The hyperparameters as safetensors metadata (the fixture's key names).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        self.vision.to_metadata(&mut m);
        m.insert("dim_head".into(), self.head_dim().to_string());
        m.insert("ista_step_size".into(), self.ista_step_size.to_string());
        m.insert("ista_lambda".into(), self.ista_lambda.to_string());
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
        let vision = VisionConfig {
            image_size: file.meta_usize("image_size")?,
            patch_size: file.meta_usize("patch_size")?,
            channels: file.meta_usize("channels")?,
            num_classes,
            dim,
            depth,
            heads: file.meta_usize("heads")?,
            pool,
            layernorm_eps: opt_f64("layernorm_eps", LAYERNORM_EPS)?,
        };
        let config = CrateConfig {
            vision,
            dim_head: opt_usize("dim_head")?,
            ista_step_size: opt_f64("ista_step_size", 0.1)?,
            ista_lambda: opt_f64("ista_lambda", 0.1)?,
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
        self.vision.clone()
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
        let config = CrateConfig {
            vision: VisionConfig::from_metadata(meta)?,
            dim_head: meta.opt_usize("dim_head")?,
            ista_step_size: meta.f64_or("ista_step_size", 0.1)?,
            ista_lambda: meta.f64_or("ista_lambda", 0.1)?,
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
