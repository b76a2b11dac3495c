//! Image classifiers built from a stack of token blocks, shared by the attention-only transformer (AoT, 4.3.2) and TOST (4.3.15): patch embedding, class token and learned positions, `Z^{l+1} = f_l(Z^l)` for `L` blocks, LayerNorm + Linear head on the pooled tokens.
//!
//! The block `f_l` is a [`Block`] (an AoT layer or a TOST layer); the rest is
//! the CRATE model's machinery with the same PyTorch parameter names
//! (`to_patch_embedding.{1,2,3}.*`, `cls_token`, `pos_embedding`,
//! `transformer.layers.{i}.*`, `mlp_head.{0,1}.*`), so checkpoints are
//! safetensors state dicts whose metadata carries the configuration.
//! Loading refuses a missing, unknown, mis-shaped or non-float tensor by
//! name, and a configuration that does not divide at construction.

use super::checkpoint::{check_images, load_parameters, save_parameters, state_dict};
use super::crate_model::{mean_std, CrateGradients, Execution};
use super::embed::{
    add_cls_and_positions, add_cls_and_positions_backward, PatchEmbedding, PatchEmbeddingCache,
};
use super::head::{ClassificationHead, HeadCache, Pool};
use super::layernorm::LAYERNORM_EPS;
use super::loss::CrossEntropy;
use super::{accumulate, init, join, Grads, Module};
use crate::io::{HostArray, TensorFile};
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;

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
    fn err(&self, message: String) -> Error {
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
    /// The shared part.
    fn vision(&self) -> &VisionConfig;
    /// Checks every constraint (called at construction).
    fn validate(&self) -> Result<()>;
    /// The configuration as string metadata.
    fn to_metadata(&self) -> BTreeMap<String, String>;
    /// The configuration from string metadata, validated.
    fn from_metadata(meta: &Meta) -> Result<Self>;
}

/// One block `Z -> f(Z)` of a classifier, with explicit forward and backward.
pub trait Block<B: Kernels>: Module<B> + Clone + Debug + Send + Sync + Sized {
    /// The model configuration it is built from.
    type Config: ModelConfig;
    /// What the backward pass and the measurements need.
    type Cache: Clone + Debug + Send + Sync;
    /// A freshly initialised block (PyTorch's default initialisation, seeded).
    fn init(backend: &B, config: &Self::Config, rng: &mut StdRng) -> Result<Self>;
    /// `f(z)` for `z = [batch, tokens, dim]`, with the cache.
    fn forward(&self, z: &Tensor<B>) -> (Tensor<B>, Self::Cache);
    /// Adds the parameter gradients under `prefix` and returns `dL/dz`.
    fn backward(
        &self,
        cache: &Self::Cache,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B>;
    /// The per-layer measurements of a forward pass.
    fn measure(cache: &Self::Cache) -> Result<BlockMeasurement<B>>;
}

/// Per-layer measurements of AoT and TOST (as CRATE's [`super::crate_model::LayerMeasurement`]).
#[derive(Clone, Debug)]
pub struct BlockMeasurement<B: Kernels> {
    /// Coding rate of each head's projected tokens (L2-normalised, `eps^2 = 0.01`), mean over the batch.
    pub coding_rate_per_head: Vec<f64>,
    /// Sum over heads of the coding rate, mean over the batch.
    pub coding_rate: f64,
    /// Sample standard deviation over the batch of the summed coding rate.
    pub coding_rate_std: f64,
    /// Fraction of exact zeros of the ISTA output (TOST), mean and population std over the batch.
    pub sparsity: Option<(f64, f64)>,
    /// MSSA: attention maps `[batch, heads, tokens, tokens]` (`None` when the
    /// tiled kernel ran); TSSA: memberships `Pi` `[batch, tokens, heads]`.
    pub map: Option<Tensor<B>>,
}

/// Coding-rate summary of `[batch][head]` rates: per-head means, mean and std of the sums.
pub(crate) fn summarize_rates(rates: &[Vec<f64>]) -> (Vec<f64>, f64, f64) {
    let heads = rates.first().map_or(0, |r| r.len());
    let b = rates.len().max(1) as f64;
    let per_head = (0..heads).map(|h| rates.iter().map(|r| r[h]).sum::<f64>() / b).collect();
    let totals: Vec<f64> = rates.iter().map(|r| r.iter().sum()).collect();
    let (mean, std) = mean_std(&totals, true);
    (per_head, mean, std)
}

/// A classifier: embedding, class token, positions, blocks, head.
#[derive(Clone, Debug)]
pub struct Classifier<B: Kernels, L: Block<B>> {
    /// The validated configuration.
    pub config: L::Config,
    /// `to_patch_embedding`.
    pub embedding: PatchEmbedding<B>,
    /// `cls_token`, `[1, 1, dim]`.
    pub cls_token: Tensor<B>,
    /// `pos_embedding`, `[1, tokens, dim]`.
    pub pos_embedding: Tensor<B>,
    /// `transformer.layers`.
    pub layers: Vec<L>,
    /// `mlp_head`.
    pub head: ClassificationHead<B>,
}

/// Everything backward and the measurements need from a forward pass.
#[derive(Clone, Debug)]
pub struct ClassifierCache<B: Kernels, L: Block<B>> {
    /// Cache of the patch embedding.
    pub embedding: PatchEmbeddingCache<B>,
    /// `Z^0` and the output of every layer.
    pub tokens: Vec<Tensor<B>>,
    /// Per-layer caches.
    pub layers: Vec<L::Cache>,
    /// Cache of the head.
    pub head: HeadCache<B>,
}

impl<B: Kernels, L: Block<B>> Classifier<B, L> {
    /// A model with PyTorch's default initialisation, seeded (`cls_token`, `pos_embedding` `N(0, 1)`).
    pub fn new(backend: &B, config: &L::Config, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = config.vision();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut embedding = PatchEmbedding::new(backend, c.patch_size, c.channels, c.dim, &mut rng);
        let pos_embedding = init::standard_normal(backend, &[1, c.tokens(), c.dim], &mut rng);
        let cls_token = init::standard_normal(backend, &[1, 1, c.dim], &mut rng);
        let layers = (0..c.depth).map(|_| L::init(backend, config, &mut rng)).collect::<Result<Vec<_>>>()?;
        let mut head = ClassificationHead::new(backend, c.dim, c.num_classes, &mut rng);
        embedding.norm_in.eps = c.layernorm_eps;
        embedding.norm_out.eps = c.layernorm_eps;
        head.norm.eps = c.layernorm_eps;
        Ok(Classifier { config: config.clone(), embedding, cls_token, pos_embedding, layers, head })
    }

    /// A model with the given configuration and the parameters of a state dict
    /// (every parameter present with its exact shape and a float dtype, nothing else).
    pub fn from_state_dict<'a>(
        backend: &B,
        config: &L::Config,
        tensors: impl IntoIterator<Item = (&'a str, &'a HostArray)>,
        source: &str,
    ) -> Result<Self> {
        let mut model = Self::new(backend, config, 0)?;
        load_parameters(backend, &mut model, tensors, source, L::Config::NAME)?;
        Ok(model)
    }

    /// Loads a checkpoint: configuration from its metadata, overridden by
    /// `overrides` (e.g. a JSON config), then the parameters.
    pub fn load_with(
        backend: &B,
        path: impl AsRef<Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let mut map = file.metadata.clone();
        map.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        let config = L::Config::from_metadata(&Meta { map: &map, source: &file.path })?;
        Self::from_state_dict(backend, &config, file.tensors.iter().map(|(k, v)| (k.as_str(), v)), &file.path)
    }

    /// Loads a checkpoint written by [`Self::save`].
    pub fn load(backend: &B, path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(backend, path, &BTreeMap::new())
    }

    /// Writes the parameters and the configuration (metadata) as safetensors, atomically.
    pub fn save(&self, path: impl AsRef<Path>, dtype: Dtype) -> Result<()> {
        save_parameters(self, path, dtype, &self.config.to_metadata(), L::Config::NAME)
    }

    /// The parameters by PyTorch name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor<B>> {
        state_dict(self)
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| n += p.numel());
        n
    }

    fn check_images(&self, images: &Tensor<B>) -> Result<()> {
        let c = self.config.vision();
        check_images(images, c.channels, c.image_size, L::Config::NAME)
    }

    /// Logits `[batch, classes]` of `[batch, C, H, W]` images.
    pub fn logits(&self, images: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(self.forward(images)?.0)
    }

    /// Logits with the cache for [`Self::backward`] and [`Self::measure`].
    pub fn forward(&self, images: &Tensor<B>) -> Result<(Tensor<B>, ClassifierCache<B, L>)> {
        self.check_images(images)?;
        let (patches, embedding) = self.embedding.forward(images);
        let mut tokens = vec![add_cls_and_positions(&patches, &self.cls_token, &self.pos_embedding)];
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (z, cache) = layer.forward(tokens.last().expect("Z^0 is present"));
            tokens.push(z);
            layers.push(cache);
        }
        let pooled = self.config.vision().pool.forward(tokens.last().expect("Z^0 is present"));
        let (logits, head) = self.head.forward(&pooled);
        Ok((logits, ClassifierCache { embedding, tokens, layers, head }))
    }

    /// Backward from `dL/d(logits)`: every parameter's gradient (PyTorch names) and the images'.
    pub fn backward(&self, cache: &ClassifierCache<B, L>, grad_logits: &Tensor<B>) -> CrateGradients<B> {
        let mut grads = Grads::new();
        let g_pooled = self.head.backward(&cache.head, grad_logits, "mlp_head", &mut grads);
        let n = cache.tokens.last().map_or(self.config.vision().tokens(), |t| t.dim(1));
        let mut g = self.config.vision().pool.backward(&g_pooled, n);
        for (i, (layer, lc)) in self.layers.iter().zip(&cache.layers).enumerate().rev() {
            g = layer.backward(lc, &g, &format!("transformer.layers.{i}"), &mut grads);
        }
        let (g_patches, g_cls, g_pos) = add_cls_and_positions_backward(&g);
        accumulate(&mut grads, "cls_token".into(), g_cls);
        accumulate(&mut grads, "pos_embedding".into(), g_pos);
        let input = self.embedding.backward(&cache.embedding, &g_patches, "to_patch_embedding", &mut grads);
        CrateGradients { params: grads, input }
    }

    /// The mean loss of a batch and its gradients (one forward, one backward).
    pub fn loss_and_gradients(
        &self,
        images: &Tensor<B>,
        labels: &[usize],
        loss: &CrossEntropy,
    ) -> Result<(f64, CrateGradients<B>)> {
        let (logits, cache) = self.forward(images)?;
        let (value, ce) = loss.forward(&logits, labels)?;
        Ok((value, self.backward(&cache, &loss.backward(&ce, 1.0))))
    }

    /// [`Self::logits`] executed as `exec` says (micro-batches, optionally in parallel; same values up to rounding).
    pub fn logits_with(&self, images: &Tensor<B>, exec: &Execution) -> Result<Tensor<B>> {
        self.check_images(images)?;
        let ranges = exec.ranges(images.dim(0));
        if ranges.len() == 1 {
            return self.logits(images);
        }
        let parts = exec.map(images.dim(0), |start, len| self.logits(&images.narrow(0, start, len)))?;
        Ok(Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0))
    }

    /// [`Self::loss_and_gradients`] executed as `exec` says: the mean loss over
    /// the whole batch and its exact gradients, summed over the micro-batches.
    pub fn loss_and_gradients_with(
        &self,
        images: &Tensor<B>,
        labels: &[usize],
        loss: &CrossEntropy,
        exec: &Execution,
    ) -> Result<(f64, CrateGradients<B>)> {
        self.check_images(images)?;
        let batch = images.dim(0);
        if labels.len() != batch {
            return Err(Error::Config(format!("{} labels for a batch of {batch} images", labels.len())));
        }
        let ranges = exec.ranges(batch);
        if ranges.len() == 1 {
            return self.loss_and_gradients(images, labels, loss);
        }
        exec.loss_and_gradients(
            labels,
            loss,
            |start, len| self.forward(&images.narrow(0, start, len)),
            |cache, g| self.backward(cache, g),
        )
    }

    /// Per-layer measurements of a forward pass.
    pub fn measure(&self, cache: &ClassifierCache<B, L>) -> Result<Vec<BlockMeasurement<B>>> {
        cache.layers.iter().map(L::measure).collect()
    }
}

impl<B: Kernels, L: Block<B>> Module<B> for Classifier<B, L> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.embedding.visit(&join(prefix, "to_patch_embedding"), f);
        f(join(prefix, "pos_embedding"), &self.pos_embedding);
        f(join(prefix, "cls_token"), &self.cls_token);
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit(&join(prefix, &format!("transformer.layers.{i}")), f);
        }
        self.head.visit(&join(prefix, "mlp_head"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.embedding.visit_mut(&join(prefix, "to_patch_embedding"), f);
        f(join(prefix, "pos_embedding"), &mut self.pos_embedding);
        f(join(prefix, "cls_token"), &mut self.cls_token);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_mut(&join(prefix, &format!("transformer.layers.{i}")), f);
        }
        self.head.visit_mut(&join(prefix, "mlp_head"), f);
    }
}
