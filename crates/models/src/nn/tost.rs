//! The token-statistics transformer, TOST (4.3.15): CRATE's pre-norm layer with TSSA in place of MSSA, `Z^{l+1/2} = Z^l + TSSA(LN(Z^l))`, `Z^{l+1} = ISTA(LN(Z^{l+1/2}))`; linear in the number of tokens.
//!
//! TSSA is [`super::tssa::Tssa`] as the ToST code builds it (`qkv`, per-head
//! `temp`, `to_out.0`). The authors' vision model (`tost_vision/tost.py`) is
//! an XCiT-style network (convolutional patch embedding with BatchNorm,
//! Fourier positions, layer-scale `gamma`s, GELU MLPs and class-attention
//! blocks); this model keeps the white-box CRATE structure of the design
//! notes instead and swaps only the attention, so the parameter names are
//! CRATE's with the TSSA ones under the attention:
//! `transformer.layers.{i}.0.norm.*`, `transformer.layers.{i}.0.fn.qkv.weight`
//! (`qkv.bias` with `qkv_bias`), `transformer.layers.{i}.0.fn.temp`,
//! `transformer.layers.{i}.0.fn.to_out.0.{weight,bias}`,
//! `transformer.layers.{i}.1.norm.*`, `transformer.layers.{i}.1.fn.weight` (ISTA's `D`).
//! Configuration keys: the shared ones plus `ista_step_size`, `ista_lambda`, `qkv_bias`.

use super::classifier::Classifier;
use super::prenorm::{PreNormCache, PreNormLayer};
use super::tssa::Tssa;

pub use super::config::TostConfig;

/// The TOST classifier.
pub type Tost<B> = Classifier<B, TostLayer<B>>;

/// One TOST layer: `u = z + TSSA(LN1(z))`, `z' = ISTA(LN2(u))` (the shared pre-norm layer with TSSA).
pub type TostLayer<B> = PreNormLayer<B, Tssa<B>>;

/// What [`TostLayer`]'s backward needs (all `O(tokens dim)`).
pub type TostLayerCache<B> = PreNormCache<B, Tssa<B>>;
