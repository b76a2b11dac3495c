//! Patch embedding of CRATE's pre-processing map f^pre: image -> patches ((p1 P + p2) C + c order) -> LayerNorm -> Linear -> LayerNorm, then the class token and learned positions.
//!
//! Patches are read row by row over the grid (top-left first), each
//! flattened with the channel fastest, as `Rearrange('b c (h p1) (w p2) ->
//! b (h w) (p1 p2 c)')` in the reference code. The names follow the
//! reference `nn.Sequential`: `to_patch_embedding.1` (LayerNorm over the
//! patch), `.2` (Linear), `.3` (LayerNorm over `dim`).

use super::layernorm::{LayerNorm, LayerNormCache};
use super::{init, join, Grads, Linear, Module};
use crate::{Kernels, Tensor};
use rand::rngs::StdRng;

/// Cuts `[batch, channels, H, W]` images into `[batch, (H/P)(W/P), P P C]` patch rows.
pub fn patchify<B: Kernels>(images: &Tensor<B>, patch: usize) -> Tensor<B> {
    let s = images.shape();
    assert!(
        s.len() == 4 && patch > 0 && s[2] % patch == 0 && s[3] % patch == 0,
        "patchify: images {s:?} are not [batch, channels, H, W] with H, W multiples of {patch}"
    );
    let (b, c, gh, gw) = (s[0], s[1], s[2] / patch, s[3] / patch);
    images.reshape(&[b, c, gh, patch, gw, patch]).permute(&[0, 2, 4, 3, 5, 1]).reshape(&[
        b,
        gh * gw,
        patch * patch * c,
    ])
}

/// Inverse of [`patchify`] (and its adjoint): `[batch, n, P P C]` back to `[batch, C, H, W]`.
pub fn unpatchify<B: Kernels>(
    patches: &Tensor<B>,
    channels: usize,
    height: usize,
    width: usize,
) -> Tensor<B> {
    let s = patches.shape();
    let b = s[0];
    let p = ((s[2] / channels.max(1)) as f64).sqrt().round() as usize;
    assert!(
        s.len() == 3 && p > 0 && p * p * channels == s[2] && (height / p) * (width / p) == s[1],
        "unpatchify: patches {s:?} do not tile {channels} x {height} x {width} images"
    );
    patches
        .reshape(&[b, height / p, width / p, p, p, channels])
        .permute(&[0, 5, 1, 3, 2, 4])
        .reshape(&[b, channels, height, width])
}

/// `to_patch_embedding`: patches, LayerNorm(P P C), Linear(P P C -> dim), LayerNorm(dim).
#[derive(Clone, Debug)]
pub struct PatchEmbedding<B: Kernels> {
    /// Patch side `P`.
    pub patch_size: usize,
    /// Image channels `C`.
    pub channels: usize,
    /// `to_patch_embedding.1`: LayerNorm over the flattened patch.
    pub norm_in: LayerNorm<B>,
    /// `to_patch_embedding.2`: Linear(P P C -> dim).
    pub linear: Linear<B>,
    /// `to_patch_embedding.3`: LayerNorm over `dim`.
    pub norm_out: LayerNorm<B>,
}

/// What [`PatchEmbedding::backward`] needs.
#[derive(Clone, Debug)]
pub struct PatchEmbeddingCache<B: Kernels> {
    /// Image height and width.
    pub image_hw: (usize, usize),
    /// Input of the Linear (the normalised patches).
    pub normed_patches: Tensor<B>,
    /// Cache of `norm_in`.
    pub norm_in: LayerNormCache<B>,
    /// Cache of `norm_out`.
    pub norm_out: LayerNormCache<B>,
}

impl<B: Kernels> PatchEmbedding<B> {
    /// PyTorch's default initialisation (seeded).
    pub fn new(backend: &B, patch_size: usize, channels: usize, dim: usize, rng: &mut StdRng) -> Self {
        let patch_dim = patch_size * patch_size * channels;
        PatchEmbedding {
            patch_size,
            channels,
            norm_in: LayerNorm::new(backend, patch_dim),
            linear: init::linear(backend, patch_dim, dim, true, rng),
            norm_out: LayerNorm::new(backend, dim),
        }
    }

    /// `[batch, C, H, W]` images to `[batch, patches, dim]` tokens, with the cache.
    pub fn forward(&self, images: &Tensor<B>) -> (Tensor<B>, PatchEmbeddingCache<B>) {
        assert!(
            images.rank() == 4 && images.dim(1) == self.channels,
            "PatchEmbedding: images {:?} are not [batch, {}, H, W]",
            images.shape(),
            self.channels
        );
        let patches = patchify(images, self.patch_size);
        let (normed_patches, norm_in) = self.norm_in.forward(&patches);
        let (tokens, norm_out) = self.norm_out.forward(&self.linear.forward(&normed_patches));
        let image_hw = (images.dim(2), images.dim(3));
        (tokens, PatchEmbeddingCache { image_hw, normed_patches, norm_in, norm_out })
    }

    /// Backward: adds the three sub-layers' gradients and returns `dL/d(images)`.
    pub fn backward(
        &self,
        cache: &PatchEmbeddingCache<B>,
        grad_out: &Tensor<B>,
        prefix: &str,
        grads: &mut Grads<B>,
    ) -> Tensor<B> {
        let g = self.norm_out.backward(&cache.norm_out, grad_out, &join(prefix, "3"), grads);
        let g = self.linear.backward(&cache.normed_patches, &g, &join(prefix, "2"), grads);
        let g = self.norm_in.backward(&cache.norm_in, &g, &join(prefix, "1"), grads);
        unpatchify(&g, self.channels, cache.image_hw.0, cache.image_hw.1)
    }
}

impl<B: Kernels> Module<B> for PatchEmbedding<B> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor<B>)) {
        self.norm_in.visit(&join(prefix, "1"), f);
        self.linear.visit(&join(prefix, "2"), f);
        self.norm_out.visit(&join(prefix, "3"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Tensor<B>)) {
        self.norm_in.visit_mut(&join(prefix, "1"), f);
        self.linear.visit_mut(&join(prefix, "2"), f);
        self.norm_out.visit_mut(&join(prefix, "3"), f);
    }
}

/// Prepends the class token to `[batch, n, dim]` tokens and adds the positions:
/// `z = [cls; tokens] + pos`, with `cls` `[1, 1, dim]` and `pos` `[1, n + 1, dim]`.
pub fn add_cls_and_positions<B: Kernels>(tokens: &Tensor<B>, cls: &Tensor<B>, pos: &Tensor<B>) -> Tensor<B> {
    let (b, n, d) = (tokens.dim(0), tokens.dim(1), tokens.dim(2));
    assert!(
        cls.shape() == [1, 1, d] && pos.shape() == [1, n + 1, d],
        "add_cls_and_positions: tokens {:?}, cls {:?} and positions {:?} do not fit",
        tokens.shape(),
        cls.shape(),
        pos.shape()
    );
    let cls_rows = cls.index_select(0, &vec![0; b]);
    Tensor::cat(&[&cls_rows, tokens], 1).add(pos)
}

/// Backward of [`add_cls_and_positions`]: `(dL/dtokens, dL/dcls, dL/dpos)`.
pub fn add_cls_and_positions_backward<B: Kernels>(grad: &Tensor<B>) -> (Tensor<B>, Tensor<B>, Tensor<B>) {
    let n1 = grad.dim(1);
    let g_pos = grad.sum_axis(0, true);
    let g_cls = g_pos.narrow(1, 0, 1);
    (grad.narrow(1, 1, n1 - 1), g_cls, g_pos)
}
