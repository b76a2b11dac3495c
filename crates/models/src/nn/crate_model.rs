//! CRATE, the coding-rate transformer (4.2.20 as the reference code builds it): patch embedding, then per layer `Z^{l+1/2} = Z^l + MSSA(LN(Z^l))`, `Z^{l+1} = ISTA(LN(Z^{l+1/2}))`, then LayerNorm + Linear on the class token.
//!
//! Parameters carry the reference PyTorch names (`to_patch_embedding.1.weight`,
//! `cls_token`, `pos_embedding`, `transformer.layers.{i}.0.norm.weight`,
//! `transformer.layers.{i}.0.fn.qkv.weight`, `transformer.layers.{i}.0.fn.to_out.0.weight`,
//! `transformer.layers.{i}.1.norm.weight`, `transformer.layers.{i}.1.fn.weight`,
//! `mlp_head.0.weight`, `mlp_head.1.weight`, ...), so the authors' checkpoints
//! load as they are. Per-layer measurements follow the authors' scripts
//! (`vis_utils/coding_rate.py`, `vis_utils/crate_hook.py`): the coding rate of
//! the projected tokens `U_k^T LN(z)` of each head, tokens L2-normalised,
//! `eps^2 = 0.01`; the fraction of exact zeros of each ISTA output.

use super::checkpoint::{check_images, load_parameters, save_parameters, state_dict};
use super::embed::{
    add_cls_and_positions, add_cls_and_positions_backward, PatchEmbedding, PatchEmbeddingCache,
};
use super::head::{ClassificationHead, HeadCache, Pool};
use super::ista::{Ista, IstaCache};
use super::layernorm::{LayerNorm, LayerNormCache, LAYERNORM_EPS};
use super::loss::CrossEntropy;
use super::mssa::{Mssa, MssaCache, MssaWeights};
use super::{accumulate, init, join, Grads, Module};
use crate::io::{HostArray, TensorFile};
use crate::{Error, Kernels, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

/// One CRATE layer: `u = z + MSSA(LN1(z))`, `z' = ISTA(LN2(u))`.
#[derive(Clone, Debug)]
pub struct CrateLayer<B: Kernels> {
    /// `{prefix}.0.norm`.
    pub norm1: LayerNorm<B>,
    /// `{prefix}.0.fn`.
    pub attn: Mssa<B>,
    /// `{prefix}.1.norm`.
    pub norm2: LayerNorm<B>,
    /// `{prefix}.1.fn`.
    pub ista: Ista<B>,
}

/// Weights derived from a layer's parameters for the fast path.
#[derive(Clone, Debug)]
pub struct LayerWeights<B: Kernels> {
    /// Scaled MSSA weights.
    pub attn: MssaWeights<B>,
    /// The fused ISTA matrix `M = I + eta (D - D^T D)`.
    pub ista: Tensor<B>,
}

/// Which gradient of the ISTA block a backward pass adds under its weight's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IstaGrad {
    /// `dL/dD`, the parameter's gradient.
    Dictionary,
    /// `dL/dM` of the fused matrix, turned into `dL/dD` after the micro-batches are summed.
    Fused,
}

/// What [`CrateLayer::backward`] needs (and what the measurements read).
#[derive(Clone, Debug)]
pub struct CrateLayerCache<B: Kernels> {
    /// Cache of the first LayerNorm.
    pub norm1: LayerNormCache<B>,
    /// Cache of MSSA (projected tokens, attention maps).
    pub attn: MssaCache<B>,
    /// `Z^{l+1/2} = z + MSSA(LN1(z))`.
    pub half: Tensor<B>,
    /// Cache of the second LayerNorm.
    pub norm2: LayerNormCache<B>,
    /// Cache of ISTA (its output is the layer output).
    pub ista: IstaCache<B>,
}

impl<B: Kernels> CrateLayer<B> {
    /// `z -> ISTA(LN2(z + MSSA(LN1(z))))` for `[batch, tokens, dim]`, with the cache.
    pub fn forward(&self, z: &Tensor<B>) -> (Tensor<B>, CrateLayerCache<B>) {
        self.forward_queries(z, z.dim(1), &self.prepare())
    }

    /// The weights the fast path derives from the parameters (scaled MSSA
    /// weights, the fused ISTA matrix), formed once per step.
    pub fn prepare(&self) -> LayerWeights<B> {
        LayerWeights { attn: self.attn.prepare(), ista: self.ista.fused_matrix() }
    }

    /// The layer output of the first `queries` tokens only (`[batch, queries, dim]`;
    /// attention still reads every token), with the cache; `weights` from [`Self::prepare`].
    pub fn forward_queries(
        &self,
        z: &Tensor<B>,
        queries: usize,
        weights: &LayerWeights<B>,
    ) -> (Tensor<B>, CrateLayerCache<B>) {
        let (a_in, norm1) = self.norm1.forward(z);
        let (a_out, attn) = self.attn.forward_queries(&a_in, queries, &weights.attn);
        let z_q = if queries == z.dim(1) { z.clone() } else { z.narrow(1, 0, queries) };
        let half = z_q.add(&a_out);
        let (i_in, norm2) = self.norm2.forward(&half);
        let (out, ista) = self.ista.forward_fused(&i_in, &weights.ista);
        (out, CrateLayerCache { norm1, attn, half, norm2, ista })
    }

    /// Backward: adds the layer's parameter gradients under `prefix` and returns `dL/dz` (all tokens).
    pub fn backward(
        &self,
        cache: &CrateLayerCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        self.backward_with(cache, grad_out, prefix, grads, IstaGrad::Dictionary)
    }

    /// [`Self::backward`], with the ISTA entry (`prefix.1.fn.weight`) holding
    /// `dD` or, under [`IstaGrad::Fused`], the gradient `dM` of the fused
    /// matrix (see [`Ista::backward_fused`]).
    fn backward_with(
        &self,
        cache: &CrateLayerCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
        ista: IstaGrad,
    ) -> Tensor<B> {
        let ista_prefix = join(prefix, "1.fn");
        let g_i = match ista {
            IstaGrad::Dictionary => self.ista.backward(&cache.ista, grad_out, &ista_prefix, grads),
            IstaGrad::Fused => self.ista.backward_fused(&cache.ista, grad_out, &ista_prefix, grads),
        };
        let g_half = self.norm2.backward(&cache.norm2, &g_i, &join(prefix, "1.norm"), grads);
        let g_a = self.attn.backward(&cache.attn, &g_half, &join(prefix, "0.fn"), grads);
        let g_z = self.norm1.backward(&cache.norm1, &g_a, &join(prefix, "0.norm"), grads);
        let (b, n, d) = (g_z.dim(0), g_z.dim(1), g_z.dim(2));
        let q = cache.attn.queries;
        if q == n {
            g_z.add(&g_half)
        } else {
            g_z.add(&Tensor::cat(&[&g_half, &Tensor::zeros(g_z.backend(), &[b, n - q, d])], 1))
        }
    }
}

impl<B: Kernels> Module<B> for CrateLayer<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.norm1.visit(&join(prefix, "0.norm"), f);
        self.attn.visit(&join(prefix, "0.fn"), f);
        self.norm2.visit(&join(prefix, "1.norm"), f);
        self.ista.visit(&join(prefix, "1.fn"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.norm1.visit_mut(&join(prefix, "0.norm"), f);
        self.attn.visit_mut(&join(prefix, "0.fn"), f);
        self.norm2.visit_mut(&join(prefix, "1.norm"), f);
        self.ista.visit_mut(&join(prefix, "1.fn"), f);
    }
}

/// The CRATE image classifier.
#[derive(Clone, Debug)]
pub struct Crate<B: Kernels> {
    /// The validated configuration.
    pub config: CrateConfig,
    /// `to_patch_embedding`.
    pub embedding: PatchEmbedding<B>,
    /// `cls_token`, `[1, 1, dim]`.
    pub cls_token: Tensor<B>,
    /// `pos_embedding`, `[1, tokens, dim]`.
    pub pos_embedding: Tensor<B>,
    /// `transformer.layers`.
    pub layers: Vec<CrateLayer<B>>,
    /// `mlp_head`.
    pub head: ClassificationHead<B>,
}

/// Everything the backward pass and the measurements need from a forward pass.
#[derive(Clone, Debug)]
pub struct CrateCache<B: Kernels> {
    /// Cache of the patch embedding.
    pub embedding: PatchEmbeddingCache<B>,
    /// Tokens `Z^0` (after class token and positions) and the output `Z^{l+1}` of every layer
    /// (of the last layer only the class token after [`Crate::forward_for_loss`] with `Pool::Cls`).
    pub tokens: Vec<Tensor<B>>,
    /// Per-layer caches.
    pub layers: Vec<CrateLayerCache<B>>,
    /// Cache of the head.
    pub head: HeadCache<B>,
}

/// Gradients of a loss with respect to every parameter (by PyTorch name) and to the input images.
#[derive(Clone, Debug)]
pub struct CrateGradients<B: Kernels> {
    /// `dL/dθ` for every parameter name.
    pub params: Grads<B>,
    /// `dL/d(images)`, `[batch, C, H, W]`.
    pub input: Tensor<B>,
}

/// Per-layer measurements (the authors' `crate_hook.py` quantities).
#[derive(Clone, Debug)]
pub struct LayerMeasurement<B: Kernels> {
    /// Coding rate of each head's projected tokens, mean over the batch (`heads` values).
    pub coding_rate_per_head: Vec<f64>,
    /// Sum over heads of the coding rate, mean over the batch (the authors' `R^c(Z^l)`).
    pub coding_rate: f64,
    /// Sample standard deviation over the batch of the summed coding rate.
    pub coding_rate_std: f64,
    /// Fraction of exact zeros of the ISTA output, mean over the batch.
    pub sparsity: f64,
    /// Population standard deviation over the batch of the per-image sparsity.
    pub sparsity_std: f64,
    /// Attention maps `[batch, heads, tokens, tokens]` (rows: queries); `None`
    /// when the tiled attention ran (long sequences: the map was never formed).
    pub attention: Option<Tensor<B>>,
}

/// How a batch is executed: at once, or split into micro-batches (gradients
/// summed over them, which is the same gradient), optionally run in parallel.
///
/// On a CPU, parallel micro-batches of a few images keep every thread on its
/// own small working set (cache-resident activations, no synchronisation
/// inside an op); on a GPU the whole batch at once is the right choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Execution {
    /// Images per micro-batch (`None`: the whole batch at once).
    pub micro_batch: Option<usize>,
    /// Run the micro-batches in parallel on the rayon pool.
    pub parallel: bool,
}

impl Execution {
    /// Parallel micro-batches of `images` images (a good CPU setting is 4 to 16).
    pub fn parallel_micro_batches(images: usize) -> Self {
        Execution { micro_batch: Some(images.max(1)), parallel: true }
    }

    /// `[start, len)` ranges of the micro-batches of a batch of `batch` images.
    pub(crate) fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        let mb = self.micro_batch.unwrap_or(batch).max(1);
        (0..batch.div_ceil(mb)).map(|i| (i * mb, mb.min(batch - i * mb))).collect()
    }

    /// `run(start, len)` over the micro-batches of a batch of `batch` images,
    /// results in batch order, on the rayon pool when [`Self::parallel`].
    pub(crate) fn map<T: Send>(
        &self,
        batch: usize,
        run: impl Fn(usize, usize) -> Result<T> + Sync + Send,
    ) -> Result<Vec<T>> {
        let ranges = self.ranges(batch);
        let f = |&(start, len): &(usize, usize)| run(start, len);
        if self.parallel {
            ranges.par_iter().map(f).collect()
        } else {
            ranges.iter().map(f).collect()
        }
    }
}

impl Execution {
    /// The mean loss of a batch of `labels.len()` images and its exact gradients from its
    /// micro-batches: `forward(start, len)` runs one micro-batch, `backward` takes its cache and
    /// `dL/d(logits)`. Each micro-batch's mean loss weighs `len / batch` in the batch mean; losses
    /// and parameter gradients are summed, input gradients stacked in batch order.
    pub(crate) fn loss_and_gradients<B: Kernels, C: Send>(
        &self,
        labels: &[usize],
        loss: &CrossEntropy,
        forward: impl Fn(usize, usize) -> Result<(Tensor<B>, C)> + Sync + Send,
        backward: impl Fn(&C, &Tensor<B>) -> CrateGradients<B> + Sync + Send,
    ) -> Result<(f64, CrateGradients<B>)> {
        let batch = labels.len();
        let parts = self.map(batch, |start, len| {
            let (logits, cache) = forward(start, len)?;
            let (value, ce) = loss.forward(&logits, &labels[start..start + len])?;
            let w = len as f64 / batch as f64;
            let g = backward(&cache, &loss.backward(&ce, w));
            Ok((value * w, g.params, g.input))
        })?;
        let total = parts.iter().map(|p| p.0).sum();
        let mut inputs = Vec::with_capacity(parts.len());
        let mut sums = Vec::with_capacity(parts.len());
        for (_, g, input) in parts {
            sums.push(g);
            inputs.push(input);
        }
        let params = self.sum_gradients(sums);
        let input = Tensor::cat(&inputs.iter().collect::<Vec<_>>(), 0);
        Ok((total, CrateGradients { params, input }))
    }

    /// The sum of the micro-batches' gradient maps by a fixed pairwise tree
    /// (`((g0 + g1) + (g2 + g3)) + ..`): the same order whatever the thread
    /// count, and each level's pairs on the rayon pool when [`Self::parallel`].
    fn sum_gradients<B: Kernels>(&self, mut level: Vec<Grads<B>>) -> Grads<B> {
        let add = |pair: &mut [Grads<B>]| -> Grads<B> {
            let mut acc = std::mem::take(&mut pair[0]);
            for other in pair[1..].iter_mut() {
                for (name, t) in std::mem::take(other) {
                    accumulate(&mut acc, name, t);
                }
            }
            acc
        };
        while level.len() > 1 {
            level = if self.parallel {
                level.par_chunks_mut(2).map(add).collect()
            } else {
                level.chunks_mut(2).map(add).collect()
            };
        }
        level.pop().unwrap_or_default()
    }
}

/// `eps^2` of the authors' per-head coding-rate measurement (`CodingRate(eps=0.01)`).
pub const MEASURE_EPS_SQ: f64 = 0.01;

impl<B: Kernels> Crate<B> {
    /// A model with PyTorch's default initialisation, seeded: Linear `U(±1/sqrt(in))`,
    /// LayerNorm ones/zeros, `cls_token` and `pos_embedding` `N(0, 1)`, ISTA `D` Kaiming-uniform.
    pub fn new(backend: &B, config: &CrateConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = config;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut embedding = PatchEmbedding::new(backend, c.patch_size, c.channels, c.dim, &mut rng);
        let pos_embedding = init::standard_normal(backend, &[1, c.tokens(), c.dim], &mut rng);
        let cls_token = init::standard_normal(backend, &[1, 1, c.dim], &mut rng);
        let mut layers = Vec::with_capacity(c.depth);
        for _ in 0..c.depth {
            let mut layer = CrateLayer {
                norm1: LayerNorm::new(backend, c.dim),
                attn: Mssa::new(backend, c.dim, c.heads, c.head_dim(), &mut rng),
                norm2: LayerNorm::new(backend, c.dim),
                ista: Ista::new(backend, c.dim, &mut rng),
            };
            layer.ista.step_size = c.ista_step_size;
            layer.ista.lambda = c.ista_lambda;
            layer.norm1.eps = c.layernorm_eps;
            layer.norm2.eps = c.layernorm_eps;
            layers.push(layer);
        }
        let mut head = ClassificationHead::new(backend, c.dim, c.num_classes, &mut rng);
        embedding.norm_in.eps = c.layernorm_eps;
        embedding.norm_out.eps = c.layernorm_eps;
        head.norm.eps = c.layernorm_eps;
        Ok(Crate { config: c.clone(), embedding, cls_token, pos_embedding, layers, head })
    }

    /// A model with the given configuration and the parameters of a state dict
    /// (PyTorch names). Every parameter must be present with its exact shape
    /// and a float dtype (F32 or F64); a missing, unknown, mis-shaped or
    /// wrongly typed tensor is refused with its name. `source` labels errors.
    pub fn from_state_dict<'a>(
        backend: &B,
        config: &CrateConfig,
        tensors: impl IntoIterator<Item = (&'a str, &'a HostArray)>,
        source: &str,
    ) -> Result<Self> {
        let mut model = Crate::new(backend, config, 0)?;
        load_parameters(backend, &mut model, tensors, source, "CRATE")?;
        Ok(model)
    }

    /// Loads a checkpoint written by [`Self::save`] or converted from the
    /// reference code: configuration from [`CrateConfig::from_checkpoint`],
    /// parameters by [`Self::from_state_dict`] (every tensor must be a parameter).
    pub fn load(backend: &B, path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let config = CrateConfig::from_checkpoint(&file)?;
        Self::from_state_dict(backend, &config, file.tensors.iter().map(|(k, v)| (k.as_str(), v)), &file.path)
    }

    /// Writes the parameters (PyTorch names) and the configuration (metadata)
    /// as safetensors, atomically; `dtype` is F32 or F64.
    pub fn save(&self, path: impl AsRef<Path>, dtype: Dtype) -> Result<()> {
        save_parameters(self, path, dtype, &self.config.to_metadata(), "CRATE")
    }

    /// The parameters by PyTorch name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor<B>> {
        state_dict(self)
    }

    fn check_images(&self, images: &Tensor<B>) -> Result<()> {
        check_images(images, self.config.channels, self.config.image_size, "CRATE")
    }

    /// `Z^0`: the embedded patches with the class token and the positions.
    fn embed(&self, images: &Tensor<B>) -> (Tensor<B>, PatchEmbeddingCache<B>) {
        let (patches, cache) = self.embedding.forward(images);
        (add_cls_and_positions(&patches, &self.cls_token, &self.pos_embedding), cache)
    }

    /// How many tokens of the last layer the head reads: 1 under `Pool::Cls`.
    fn last_layer_queries(&self) -> usize {
        match self.config.pool {
            Pool::Cls => 1,
            Pool::Mean => self.config.tokens(),
        }
    }

    /// The derived weights of every layer (see [`CrateLayer::prepare`]).
    pub fn prepare(&self) -> Vec<LayerWeights<B>> {
        self.layers.iter().map(|l| l.prepare()).collect()
    }

    /// Logits `[batch, classes]` of `[batch, C, H, W]` images, keeping nothing for backward
    /// (the last layer computes only the tokens the head reads).
    pub fn logits(&self, images: &Tensor<B>) -> Result<Tensor<B>> {
        self.logits_prepared(images, &self.prepare())
    }

    fn logits_prepared(&self, images: &Tensor<B>, weights: &[LayerWeights<B>]) -> Result<Tensor<B>> {
        self.check_images(images)?;
        let (mut z, _) = self.embed(images);
        let depth = self.layers.len();
        for (i, (layer, w)) in self.layers.iter().zip(weights).enumerate() {
            let q = if i + 1 == depth { self.last_layer_queries() } else { z.dim(1) };
            z = layer.forward_queries(&z, q, w).0;
        }
        Ok(self.head.forward(&self.config.pool.forward(&z)).0)
    }

    /// Logits with the cache for [`Self::backward`] and [`Self::measure`]: every token of every layer.
    pub fn forward(&self, images: &Tensor<B>) -> Result<(Tensor<B>, CrateCache<B>)> {
        self.run(images, self.config.tokens(), &self.prepare())
    }

    /// Logits with the cache for [`Self::backward`], the last layer computing
    /// only the tokens the head reads (the class token under `Pool::Cls`):
    /// the same logits and gradients as [`Self::forward`] for less work.
    pub fn forward_for_loss(&self, images: &Tensor<B>) -> Result<(Tensor<B>, CrateCache<B>)> {
        self.run(images, self.last_layer_queries(), &self.prepare())
    }

    fn run(
        &self,
        images: &Tensor<B>,
        last_queries: usize,
        weights: &[LayerWeights<B>],
    ) -> Result<(Tensor<B>, CrateCache<B>)> {
        self.check_images(images)?;
        let (z0, embedding) = self.embed(images);
        let mut tokens = vec![z0];
        let mut layers = Vec::with_capacity(self.layers.len());
        let depth = self.layers.len();
        for (i, (layer, w)) in self.layers.iter().zip(weights).enumerate() {
            let z = tokens.last().expect("Z^0 is present");
            let q = if i + 1 == depth { last_queries } else { z.dim(1) };
            let (z, cache) = layer.forward_queries(z, q, w);
            tokens.push(z);
            layers.push(cache);
        }
        let pooled = self.config.pool.forward(tokens.last().expect("Z^0 is present"));
        let (logits, head) = self.head.forward(&pooled);
        Ok((logits, CrateCache { embedding, tokens, layers, head }))
    }

    /// Backward from `dL/d(logits)`: the gradient of every parameter (PyTorch
    /// names) and of the input images.
    pub fn backward(&self, cache: &CrateCache<B>, grad_logits: &Tensor<B>) -> CrateGradients<B> {
        self.backward_with(cache, grad_logits, IstaGrad::Dictionary)
    }

    fn backward_with(
        &self,
        cache: &CrateCache<B>,
        grad_logits: &Tensor<B>,
        ista: IstaGrad,
    ) -> CrateGradients<B> {
        let mut grads = Grads::new();
        let g_pooled = self.head.backward(&cache.head, grad_logits, "mlp_head", &mut grads);
        let last_tokens = cache.tokens.last().map_or(self.config.tokens(), |t| t.dim(1));
        let mut g = self.config.pool.backward(&g_pooled, last_tokens);
        for (i, (layer, lc)) in self.layers.iter().zip(&cache.layers).enumerate().rev() {
            g = layer.backward_with(lc, &g, &format!("transformer.layers.{i}"), &mut grads, ista);
        }
        let (g_patches, g_cls, g_pos) = add_cls_and_positions_backward(&g);
        accumulate(&mut grads, "cls_token".into(), g_cls);
        accumulate(&mut grads, "pos_embedding".into(), g_pos);
        let input = self.embedding.backward(&cache.embedding, &g_patches, "to_patch_embedding", &mut grads);
        CrateGradients { params: grads, input }
    }

    /// The loss of a batch and its gradients (one forward, [`Self::forward_for_loss`], and one backward).
    pub fn loss_and_gradients(
        &self,
        images: &Tensor<B>,
        labels: &[usize],
        loss: &CrossEntropy,
    ) -> Result<(f64, CrateGradients<B>)> {
        let (logits, cache) = self.forward_for_loss(images)?;
        let (value, ce) = loss.forward(&logits, labels)?;
        let grads = self.backward(&cache, &loss.backward(&ce, 1.0));
        Ok((value, grads))
    }

    /// [`Self::logits`] executed as `exec` says (same values up to rounding).
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
        self.check_images(images)?;
        let batch = images.dim(0);
        if labels.len() != batch {
            return Err(Error::Config(format!("{} labels for a batch of {batch} images", labels.len())));
        }
        let ranges = exec.ranges(batch);
        if ranges.len() == 1 {
            return self.loss_and_gradients(images, labels, loss);
        }
        let weights = self.prepare();
        // each micro-batch adds dL/dM of the fused ISTA matrices; dL/dD (linear in it) once at the end
        let (value, mut grads) = exec.loss_and_gradients(
            labels,
            loss,
            |start, len| self.run(&images.narrow(0, start, len), self.last_layer_queries(), &weights),
            |cache, g| self.backward_with(cache, g, IstaGrad::Fused),
        )?;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(g) = grads.params.get_mut(&format!("transformer.layers.{i}.1.fn.weight")) {
                *g = layer.ista.weight_grad_from_fused(g);
            }
        }
        Ok((value, grads))
    }

    /// Per-layer coding rate (per head, tokens L2-normalised, `eps^2 = 0.01`),
    /// ISTA sparsity and attention maps of a forward pass, as the authors measure them.
    pub fn measure(&self, cache: &CrateCache<B>) -> Result<Vec<LayerMeasurement<B>>> {
        cache.layers.iter().map(measure_layer).collect()
    }
}

/// Coding rates `[batch][head]` of `[batch, heads, tokens, dim_head]` projected
/// tokens, each token scaled to unit norm first (norms clamped at 1e-12), with
/// `R = 1/2 logdet(I + p/(N eps^2) W^T W)` by [`rate_core::coding_rate`].
pub fn head_coding_rates<B: Kernels>(w: &Tensor<B>, eps_sq: f64) -> Result<Vec<Vec<f64>>> {
    let (b, h, n, p) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    let unit = w.div(&w.norm_axis(-1).clamp_min(1e-12)).reshape(&[b * h, n, p]);
    let mut out = vec![vec![0.0; h]; b];
    for (bi, row) in out.iter_mut().enumerate() {
        for (hi, r) in row.iter_mut().enumerate() {
            let z = unit.narrow(0, bi * h + hi, 1).reshape(&[n, p]);
            *r = rate_core::coding_rate(&z, eps_sq)?;
        }
    }
    Ok(out)
}

/// Fraction of exact zeros of each image's `[tokens, dim]` block of a `[batch, tokens, dim]` tensor.
pub fn zero_fraction_per_image<B: Kernels>(x: &Tensor<B>) -> Vec<f64> {
    let b = x.dim(0);
    let per = x.numel() / b.max(1);
    let v = x.to_f64_vec();
    v.chunks(per.max(1)).map(|c| c.iter().filter(|&&e| e == 0.0).count() as f64 / per as f64).collect()
}

pub(crate) fn mean_std(v: &[f64], unbiased: bool) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let dof = if unbiased { n - 1.0 } else { n };
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / dof;
    (mean, if dof > 0.0 { var.sqrt() } else { f64::NAN })
}

fn measure_layer<B: Kernels>(lc: &CrateLayerCache<B>) -> Result<LayerMeasurement<B>> {
    let rates = head_coding_rates(&lc.attn.head_tokens(), MEASURE_EPS_SQ)?;
    let heads = lc.attn.heads;
    let b = rates.len() as f64;
    let coding_rate_per_head = (0..heads).map(|h| rates.iter().map(|r| r[h]).sum::<f64>() / b).collect();
    let totals: Vec<f64> = rates.iter().map(|r| r.iter().sum()).collect();
    let (coding_rate, coding_rate_std) = mean_std(&totals, true);
    let (sparsity, sparsity_std) = mean_std(&zero_fraction_per_image(&lc.ista.out), false);
    Ok(LayerMeasurement {
        coding_rate_per_head,
        coding_rate,
        coding_rate_std,
        sparsity,
        sparsity_std,
        attention: lc.attn.attn.clone(),
    })
}

impl<B: Kernels> Module<B> for Crate<B> {
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
