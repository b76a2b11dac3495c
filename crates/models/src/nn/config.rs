//! The configuration of the image classifiers (CRATE 4.2.20, AoT 4.3.2, TOST 4.3.15): the shared part (image, patches, dim, depth, heads, pooling), the per-model trait, and typed reading of string metadata (a checkpoint's or a JSON config's).

use super::head::Pool;
use super::layernorm::LAYERNORM_EPS;
use crate::io::TensorFile;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// String key-value configuration (a checkpoint's metadata or a JSON config)
/// with typed getters whose errors name the key and the source.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    /// The key-value pairs.
    pub map: &'a BTreeMap<String, String>,
    /// Where they came from (for errors).
    pub source: &'a str,
}

impl Meta<'_> {
    /// An error naming the source.
    pub fn err(&self, message: String) -> Error {
        Error::Format { path: self.source.to_string(), message }
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(format!("configuration key `{key}` is missing")))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                self.err(format!("configuration key `{key}` = {v:?} is not a non-negative integer"))
            }),
        }
    }

    /// An optional number with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| self.err(format!("configuration key `{key}` = {v:?} is not a number"))),
        }
    }

    /// An optional boolean (`true`/`false`) with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key).map(|s| s.trim()) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(self.err(format!("configuration key `{key}` = {v:?} is not true or false"))),
        }
    }

    /// An optional string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|s| s.trim())
    }
}

/// What every block-stack classifier shares: the image, the embedding and the head.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
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
    /// Pooling before the head.
    pub pool: Pool,
    /// LayerNorm epsilon.
    pub layernorm_eps: f64,
}

impl VisionConfig {
    /// The CIFAR-size setting of the benchmarks: 32 px RGB, patch 4, dim 192, depth 8, 6 heads, 10 classes.
    pub fn cifar_small() -> Self {
        VisionConfig {
            image_size: 32,
            patch_size: 4,
            channels: 3,
            num_classes: 10,
            dim: 192,
            depth: 8,
            heads: 6,
            pool: Pool::Cls,
            layernorm_eps: LAYERNORM_EPS,
        }
    }

    /// Checks the shared constraints; `model` names the model in the error.
    pub fn validate(&self, model: &str) -> Result<()> {
        for (name, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("channels", self.channels),
            ("num_classes", self.num_classes),
            ("dim", self.dim),
            ("heads", self.heads),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{model}: {name} must be positive, got 0")));
            }
        }
        if self.image_size % self.patch_size != 0 {
            return Err(Error::Config(format!(
                "{model}: image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if !(self.layernorm_eps > 0.0 && self.layernorm_eps.is_finite()) {
            return Err(Error::Config(format!(
                "{model}: layernorm_eps = {} must be positive",
                self.layernorm_eps
            )));
        }
        Ok(())
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        let g = self.image_size / self.patch_size.max(1);
        g * g
    }

    /// Tokens per image (patches + the class token).
    pub fn tokens(&self) -> usize {
        self.num_patches() + 1
    }

    /// The shared keys as metadata.
    pub fn to_metadata(&self, m: &mut BTreeMap<String, String>) {
        for (k, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("channels", self.channels),
            ("num_classes", self.num_classes),
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        m.insert("pool".into(), self.pool.name().into());
        m.insert("layernorm_eps".into(), self.layernorm_eps.to_string());
    }

    /// The shared keys from metadata (`pool` defaults to `cls`, `layernorm_eps` to 1e-5).
    pub fn from_metadata(meta: &Meta) -> Result<Self> {
        let pool = match meta.str("pool") {
            None => Pool::Cls,
            Some(s) => Pool::parse(s).ok_or_else(|| {
                meta.err(format!("configuration key `pool` = {s:?} is not 'cls' or 'mean'"))
            })?,
        };
        Ok(VisionConfig {
            image_size: meta.usize("image_size")?,
            patch_size: meta.usize("patch_size")?,
            channels: meta.usize("channels")?,
            num_classes: meta.usize("num_classes")?,
            dim: meta.usize("dim")?,
            depth: meta.usize("depth")?,
            heads: meta.usize("heads")?,
            pool,
            layernorm_eps: meta.f64_or("layernorm_eps", LAYERNORM_EPS)?,
        })
    }
}

/// The configuration of a block-stack classifier.
pub trait ModelConfig: Clone + Debug + PartialEq + Send + Sync {
    /// The model's name in errors (`AoT`, `TOST`).
    const NAME: &'static str;
    /// The shared part: image, embedding, depth, heads and head.
    fn vision(&self) -> VisionConfig;
    /// Checks every constraint (called at construction).
    fn validate(&self) -> Result<()>;
    /// The configuration as string metadata.
    fn to_metadata(&self) -> BTreeMap<String, String>;
    /// The configuration from string metadata, validated.
    fn from_metadata(meta: &Meta) -> Result<Self>;
    /// The configuration of a checkpoint: its metadata, completed or
    /// overridden by `overrides` (a JSON config, merged into the file's
    /// metadata), validated.
    fn from_file(file: &mut TensorFile, overrides: &BTreeMap<String, String>) -> Result<Self> {
        file.metadata.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self::from_metadata(&Meta { map: &file.metadata, source: &file.path })
    }
}

/// Whether MSSA of `heads` heads of `dim_head` on `dim`-dimensional tokens
/// has its output Linear, as the reference code decides it:
/// `not (heads == 1 and dim_head == dim)` (configurations count its
/// parameters; `Mssa::new` builds it).
pub fn has_to_out(dim: usize, heads: usize, dim_head: usize) -> bool {
    !(heads == 1 && dim_head == dim)
}

/// The settings a pre-norm layer reads from its model's configuration.
pub trait PreNormConfig: ModelConfig {
    /// ISTA step size `eta`.
    fn ista_step_size(&self) -> f64;
    /// ISTA sparsity weight `lambda`.
    fn ista_lambda(&self) -> f64;
}

/// The hyperparameters of a TOST classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct TostConfig {
    /// Image, embedding and head.
    pub vision: VisionConfig,
    /// ISTA step size `eta`.
    pub ista_step_size: f64,
    /// ISTA sparsity weight `lambda`.
    pub ista_lambda: f64,
    /// Bias on the TSSA projection (`qkv_bias`, off in the ToST defaults).
    pub qkv_bias: bool,
}

impl TostConfig {
    /// The benchmark size: 32 px RGB, patch 4, dim 192, depth 8, 6 heads.
    pub fn cifar_small() -> Self {
        TostConfig {
            vision: VisionConfig::cifar_small(),
            ista_step_size: 0.1,
            ista_lambda: 0.1,
            qkv_bias: false,
        }
    }
}

impl ModelConfig for TostConfig {
    const NAME: &'static str = "TOST";

    fn vision(&self) -> VisionConfig {
        self.vision.clone()
    }

    fn validate(&self) -> Result<()> {
        self.vision.validate(Self::NAME)?;
        if self.vision.dim % self.vision.heads != 0 {
            return Err(Error::Config(format!(
                "TOST: dim {} is not a multiple of heads {}",
                self.vision.dim, self.vision.heads
            )));
        }
        for (name, v) in [("ista_step_size", self.ista_step_size), ("ista_lambda", self.ista_lambda)] {
            if !v.is_finite() {
                return Err(Error::Config(format!("TOST: {name} = {v} is not finite")));
            }
        }
        Ok(())
    }

    fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        self.vision.to_metadata(&mut m);
        m.insert("ista_step_size".into(), self.ista_step_size.to_string());
        m.insert("ista_lambda".into(), self.ista_lambda.to_string());
        m.insert("qkv_bias".into(), self.qkv_bias.to_string());
        m
    }

    fn from_metadata(meta: &Meta) -> Result<Self> {
        let config = TostConfig {
            vision: VisionConfig::from_metadata(meta)?,
            ista_step_size: meta.f64_or("ista_step_size", 0.1)?,
            ista_lambda: meta.f64_or("ista_lambda", 0.1)?,
            qkv_bias: meta.bool_or("qkv_bias", false)?,
        };
        config.validate()?;
        Ok(config)
    }
}

impl PreNormConfig for TostConfig {
    fn ista_step_size(&self) -> f64 {
        self.ista_step_size
    }

    fn ista_lambda(&self) -> f64 {
        self.ista_lambda
    }
}
