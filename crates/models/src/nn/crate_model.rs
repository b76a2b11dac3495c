//! CRATE, the coding-rate transformer (4.2.20 as the reference code builds it): patch embedding, then per layer `Z^{l+1/2} = Z^l + MSSA(LN(Z^l))`, `Z^{l+1} = ISTA(LN(Z^{l+1/2}))`, then LayerNorm + Linear on the class token.
//!
//! Parameters carry the reference PyTorch names (`to_patch_embedding.1.weight`,
//! `cls_token`, `pos_embedding`, `transformer.layers.{i}.0.norm.weight`,
//! `transformer.layers.{i}.0.fn.qkv.weight`, `transformer.layers.{i}.0.fn.to_out.0.weight`,
//! `transformer.layers.{i}.1.norm.weight`, `transformer.layers.{i}.1.fn.weight`,
//! `mlp_head.0.weight`, `mlp_head.1.weight`, ...), so the authors' checkpoints
//! load as they are. The model is the shared classifier of [`super::classifier`] with
//! the pre-norm layer of [`super::prenorm`] and MSSA ([`super::mssa`]) as its
//! attention; the configuration is in [`super::crate_config`]. Per-layer measurements follow the authors' scripts
//! (`vis_utils/coding_rate.py`, `vis_utils/crate_hook.py`): the coding rate of
//! the projected tokens `U_k^T LN(z)` of each head, tokens L2-normalised,
//! `eps^2 = 0.01`; the fraction of exact zeros of each ISTA output.

use super::classifier::{Classifier, ClassifierCache};
use super::mssa::Mssa;
use super::prenorm::{PreNormCache, PreNormLayer};

pub use super::crate_config::{layer_count, CrateConfig};
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
