//! The one image classifier of CRATE (4.2.20), AoT (4.3.2) and TOST (4.3.15): patch embedding, class token and learned positions, `Z^{l+1} = f_l(Z^l)` for `L` blocks, LayerNorm + Linear head on the pooled tokens, with one execution path (micro-batches, gradients, measurements) for all three.
//!
//! The block `f_l` is a [`Block`]: CRATE's and TOST's pre-norm layer
//! ([`super::prenorm::PreNormLayer`] with MSSA or TSSA) or an AoT layer.
//! Parameters carry the reference PyTorch names
//! (`to_patch_embedding.{1,2,3}.*`, `cls_token`, `pos_embedding`,
//! `transformer.layers.{i}.*`, `mlp_head.{0,1}.*`), so checkpoints are
//! safetensors state dicts whose metadata carries the configuration.
//! Loading refuses a missing, unknown, mis-shaped or non-float tensor by
//! name, and a configuration that does not divide at construction.
//!
//! With `Pool::Cls` the head reads the class token only, so the last block
//! computes only that token where its attention can ([`Classifier::logits`],
//! [`Classifier::forward_for_loss`]): the same logits and gradients for less work.

use super::checkpoint::{check_images, load_parameters, save_parameters, state_dict};
pub use super::config::{Meta, ModelConfig, VisionConfig};
use super::embed::{
    add_cls_and_positions, add_cls_and_positions_backward, PatchEmbedding, PatchEmbeddingCache,
};
use super::exec::{correct_count, CrateGradients, Execution};
use super::head::{ClassificationHead, HeadCache, Pool};
use super::loss::CrossEntropy;
pub use super::measure::LayerMeasurement;

/// The per-layer measurements of a block (the same for every model).
pub type BlockMeasurement<B> = LayerMeasurement<B>;
use super::{accumulate, init, join, Grads, Module};
use crate::io::{HostArray, TensorFile};
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;

/// One block `Z -> f(Z)` of a classifier, with explicit forward and backward.
pub trait Block<B: Kernels>: Module<B> + Clone + Debug + Send + Sync + Sized {
    /// The model configuration it is built from.
    type Config: ModelConfig;
    /// What the backward pass and the measurements need.
    type Cache: Clone + Debug + Send + Sync;
    /// Weights derived from the parameters once per step (shared by the micro-batches).
    type Prepared: Clone + Debug + Send + Sync;
    /// A freshly initialised block (PyTorch's default initialisation, seeded).
    fn init(backend: &B, config: &Self::Config, rng: &mut StdRng) -> Result<Self>;
    /// The derived weights of [`Self::forward`].
    fn prepare(&self) -> Self::Prepared;
    /// `f(z)` for `z = [batch, tokens, dim]`: the first `queries` output tokens
    /// where the block can skip the others, else every token; with the cache.
    fn forward(&self, z: &Tensor<B>, queries: usize, prepared: &Self::Prepared) -> (Tensor<B>, Self::Cache);
    /// Adds the parameter gradients under `prefix` and returns `dL/dz` (every
    /// token). Inside micro-batches (`micro_batch`) a block may add a cheaper
    /// gradient that [`Self::finish_gradients`] turns into the parameter's.
    fn backward(
        &self,
        cache: &Self::Cache,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
        micro_batch: bool,
    ) -> Tensor<B>;
    /// Turns the gradients summed over micro-batches into the parameters' (no-op by default).
    fn finish_gradients(&self, _prefix: &str, _grads: &mut Grads<B>) {}
    /// The per-layer measurements of a forward pass.
    fn measure(cache: &Self::Cache) -> Result<LayerMeasurement<B>>;
}

/// The result of [`Classifier::train_step_with`].
#[derive(Clone, Debug)]
pub struct StepOutput<B: Kernels> {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Images whose logits' argmax is their label.
    pub correct: usize,
    /// Gradients of the mean loss.
    pub gradients: CrateGradients<B>,
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
    /// Tokens `Z^0` (after class token and positions) and the output `Z^{l+1}` of every layer
    /// (of the last layer only the class token after [`Classifier::forward_for_loss`] with `Pool::Cls`,
    /// where the block can skip the other tokens).
    pub tokens: Vec<Tensor<B>>,
    /// Per-layer caches.
    pub layers: Vec<L::Cache>,
    /// Cache of the head.
    pub head: HeadCache<B>,
}

impl<B: Kernels, L: Block<B>> Classifier<B, L> {
    /// A model with PyTorch's default initialisation, seeded: Linear `U(±1/sqrt(in))`,
    /// LayerNorm ones/zeros, `cls_token` and `pos_embedding` `N(0, 1)`, the blocks' own.
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
    /// (PyTorch names). Every parameter must be present with its exact shape
    /// and a float dtype (F32 or F64); a missing, unknown, mis-shaped or
    /// wrongly typed tensor is refused with its name. `source` labels errors.
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

    /// Loads a checkpoint: configuration from [`ModelConfig::from_file`]
    /// (its metadata, completed or overridden by `overrides`, e.g. a JSON
    /// config), then the parameters (every tensor must be a parameter).
    pub fn load_with(
        backend: &B,
        path: impl AsRef<Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut file = TensorFile::read(path)?;
        let config = L::Config::from_file(&mut file, overrides)?;
        Self::from_state_dict(backend, &config, file.tensors.iter().map(|(k, v)| (k.as_str(), v)), &file.path)
    }

    /// Loads a checkpoint written by [`Self::save`] (or converted from the reference code).
    pub fn load(backend: &B, path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(backend, path, &BTreeMap::new())
    }

    /// Writes the parameters (PyTorch names) and the configuration (metadata)
    /// as safetensors, atomically; `dtype` is F32 or F64.
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

    /// `Z^0`: the embedded patches with the class token and the positions.
    fn embed(&self, images: &Tensor<B>) -> (Tensor<B>, PatchEmbeddingCache<B>) {
        let (patches, cache) = self.embedding.forward(images);
        (add_cls_and_positions(&patches, &self.cls_token, &self.pos_embedding), cache)
    }

    /// How many tokens of the last layer the head reads: 1 under `Pool::Cls`.
    fn last_layer_queries(&self) -> usize {
        let c = self.config.vision();
        match c.pool {
            Pool::Cls => 1,
            Pool::Mean => c.tokens(),
        }
    }

    /// The derived weights of every layer, formed once per step.
    pub fn prepare(&self) -> Vec<L::Prepared> {
        self.layers.iter().map(|l| l.prepare()).collect()
    }

    /// Logits `[batch, classes]` of `[batch, C, H, W]` images, keeping nothing for backward
    /// (the last layer computes only the tokens the head reads).
    pub fn logits(&self, images: &Tensor<B>) -> Result<Tensor<B>> {
        self.logits_prepared(images, &self.prepare())
    }

    fn logits_prepared(&self, images: &Tensor<B>, weights: &[L::Prepared]) -> Result<Tensor<B>> {
        self.check_images(images)?;
        let (mut z, _) = self.embed(images);
        let depth = self.layers.len();
        for (i, (layer, w)) in self.layers.iter().zip(weights).enumerate() {
            let q = if i + 1 == depth { self.last_layer_queries() } else { z.dim(1) };
            z = layer.forward(&z, q, w).0;
        }
        Ok(self.head.forward(&self.config.vision().pool.forward(&z)).0)
    }

    /// Logits with the cache for [`Self::backward`] and [`Self::measure`]: every token of every layer.
    pub fn forward(&self, images: &Tensor<B>) -> Result<(Tensor<B>, ClassifierCache<B, L>)> {
        self.run(images, self.config.vision().tokens(), &self.prepare())
    }

    /// Logits with the cache for [`Self::backward`], the last layer computing
    /// only the tokens the head reads (the class token under `Pool::Cls`):
    /// the same logits and gradients as [`Self::forward`] for less work.
    pub fn forward_for_loss(&self, images: &Tensor<B>) -> Result<(Tensor<B>, ClassifierCache<B, L>)> {
        self.run(images, self.last_layer_queries(), &self.prepare())
    }

    fn run(
        &self,
        images: &Tensor<B>,
        last_queries: usize,
        weights: &[L::Prepared],
    ) -> Result<(Tensor<B>, ClassifierCache<B, L>)> {
        self.check_images(images)?;
        let (z0, embedding) = self.embed(images);
        let mut tokens = vec![z0];
        let mut layers = Vec::with_capacity(self.layers.len());
        let depth = self.layers.len();
        for (i, (layer, w)) in self.layers.iter().zip(weights).enumerate() {
            let z = tokens.last().expect("Z^0 is present");
            let q = if i + 1 == depth { last_queries } else { z.dim(1) };
            let (z, cache) = layer.forward(z, q, w);
            tokens.push(z);
            layers.push(cache);
        }
        let pooled = self.config.vision().pool.forward(tokens.last().expect("Z^0 is present"));
        let (logits, head) = self.head.forward(&pooled);
        Ok((logits, ClassifierCache { embedding, tokens, layers, head }))
    }

    /// Backward from `dL/d(logits)`: the gradient of every parameter (PyTorch
    /// names) and of the input images.
    pub fn backward(&self, cache: &ClassifierCache<B, L>, grad_logits: &Tensor<B>) -> CrateGradients<B> {
        self.backward_with(cache, grad_logits, false)
    }

    fn backward_with(
        &self,
        cache: &ClassifierCache<B, L>,
        grad_logits: &Tensor<B>,
        micro_batch: bool,
    ) -> CrateGradients<B> {
        let mut grads = Grads::new();
        let g_pooled = self.head.backward(&cache.head, grad_logits, "mlp_head", &mut grads);
        let last_tokens = cache.tokens.last().map_or(self.config.vision().tokens(), |t| t.dim(1));
        let mut g = self.config.vision().pool.backward(&g_pooled, last_tokens);
        for (i, (layer, lc)) in self.layers.iter().zip(&cache.layers).enumerate().rev() {
            g = layer.backward(lc, &g, &layer_prefix(i), &mut grads, micro_batch);
        }
        let (g_patches, g_cls, g_pos) = add_cls_and_positions_backward(&g);
        accumulate(&mut grads, "cls_token".into(), g_cls);
        accumulate(&mut grads, "pos_embedding".into(), g_pos);
        let input = self.embedding.backward(&cache.embedding, &g_patches, "to_patch_embedding", &mut grads);
        CrateGradients { params: grads, input }
    }

    /// The mean loss of a batch and its gradients (one forward, [`Self::forward_for_loss`], and one backward).
    pub fn loss_and_gradients(
        &self,
        images: &Tensor<B>,
        labels: &[usize],
        loss: &CrossEntropy,
    ) -> Result<(f64, CrateGradients<B>)> {
        let (logits, cache) = self.forward_for_loss(images)?;
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
        let weights = self.prepare();
        let parts = exec
            .map(images.dim(0), |start, len| self.logits_prepared(&images.narrow(0, start, len), &weights))?;
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
        self.train_step_with(images, labels, loss, exec).map(|s| (s.loss, s.gradients))
    }

    /// What a training step needs from a batch, executed as `exec` says: the mean loss, how many images the
    /// logits classify right, and the exact gradients.
    pub fn train_step_with(
        &self,
        images: &Tensor<B>,
        labels: &[usize],
        loss: &CrossEntropy,
        exec: &Execution,
    ) -> Result<StepOutput<B>> {
        self.check_images(images)?;
        let batch = images.dim(0);
        if labels.len() != batch {
            return Err(Error::Config(format!("{} labels for a batch of {batch} images", labels.len())));
        }
        let ranges = exec.ranges(batch);
        if ranges.len() == 1 {
            let (logits, cache) = self.forward_for_loss(images)?;
            let (value, ce) = loss.forward(&logits, labels)?;
            let correct = correct_count(&logits, labels);
            let gradients = self.backward(&cache, &loss.backward(&ce, 1.0));
            return Ok(StepOutput { loss: value, correct, gradients });
        }
        let weights = self.prepare();
        let (value, correct, mut grads) = exec.loss_and_gradients(
            labels,
            loss,
            |start, len| self.run(&images.narrow(0, start, len), self.last_layer_queries(), &weights),
            |cache, g| self.backward_with(cache, g, true),
        )?;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.finish_gradients(&layer_prefix(i), &mut grads.params);
        }
        Ok(StepOutput { loss: value, correct, gradients: grads })
    }

    /// Per-layer measurements of a forward pass (coding rate per head,
    /// sparsity of the ISTA output, attention maps or memberships), as the authors take them.
    pub fn measure(&self, cache: &ClassifierCache<B, L>) -> Result<Vec<LayerMeasurement<B>>> {
        cache.layers.iter().map(L::measure).collect()
    }
}

/// `transformer.layers.{i}`.
fn layer_prefix(i: usize) -> String {
    format!("transformer.layers.{i}")
}

impl<B: Kernels, L: Block<B>> Module<B> for Classifier<B, L> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.embedding.visit(&join(prefix, "to_patch_embedding"), f);
        f(join(prefix, "pos_embedding"), &self.pos_embedding);
        f(join(prefix, "cls_token"), &self.cls_token);
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit(&join(prefix, &layer_prefix(i)), f);
        }
        self.head.visit(&join(prefix, "mlp_head"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.embedding.visit_mut(&join(prefix, "to_patch_embedding"), f);
        f(join(prefix, "pos_embedding"), &mut self.pos_embedding);
        f(join(prefix, "cls_token"), &mut self.cls_token);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_mut(&join(prefix, &layer_prefix(i)), f);
        }
        self.head.visit_mut(&join(prefix, "mlp_head"), f);
    }
}
