//! The `Kernels` extension trait: fused kernels of the models (LayerNorm rows, attention, token statistics, the invariant ReduNet step, shared factorisations), each with a reference body built from the `Backend` primitives.
//!
//! A backend opts in with one `impl Kernels for MyBackend {}` and gets every
//! reference body; it overrides the kernels it has made fast. The reference
//! bodies live in the family files beside this one and are what the
//! conformance suite (`rate_core::testing`, `check_kernel_*`) compares every
//! override with. A wrapper backend (one that delegates to another) must
//! forward each kernel explicitly, or it silently falls back to the
//! reference bodies.

use super::attention_dense::{self, DenseAttentionSpec};
use super::attention_tiled::{self, AttentionSpec};
use super::invariant::{self, InvariantProductsSpec, InvariantStepSpec};
use super::layer_norm::{layer_norm_backward_reference, layer_norm_reference, softmax_backward_reference};
use super::redunet::{build_reference, transform_reference, Record, RedunetRun, RedunetSpec};
use super::scan::cumsum_by_doubling;
use super::token_stats::{token_stats_reference, TokenStats, TokenStatsSpec};
use crate::backend::{AxisView, Backend, MatmulSpec};
use crate::tensor::Tensor;
use crate::Result;

/// Fused kernels on top of the [`Backend`] primitives, with reference bodies.
///
/// Every method takes and returns whole contiguous row-major buffers, like
/// the primitives; the shape-checked entry points over tensors are the free
/// functions of [`crate::kernels`].
pub trait Kernels: Backend {
    // ---- rows (kernels/layer_norm.rs) ----

    /// LayerNorm of `rows` contiguous rows of `dim` values with affine
    /// `weight` and `bias` (`dim` each), biased variance: `(y, mean, rstd)`,
    /// the statistics one value per row.
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: &Self::Buffer,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> (Self::Buffer, Self::Buffer, Self::Buffer) {
        let t = |b: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, b.clone(), s);
        let (y, m, r) = layer_norm_reference(&t(x, &[rows, dim]), &t(weight, &[dim]), &t(bias, &[dim]), eps);
        (y.buffer().clone(), m.buffer().clone(), r.buffer().clone())
    }

    /// Backward of [`Self::layer_norm`] from the input, its row statistics,
    /// the weight and `dL/dy`: `(dL/dx, dL/dweight, dL/dbias)`.
    fn layer_norm_backward(
        &self,
        x: &Self::Buffer,
        mean: &Self::Buffer,
        rstd: &Self::Buffer,
        weight: &Self::Buffer,
        grad: &Self::Buffer,
        rows: usize,
        dim: usize,
    ) -> (Self::Buffer, Self::Buffer, Self::Buffer) {
        let t = |b: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, b.clone(), s);
        let (dx, dw, db) = layer_norm_backward_reference(
            &t(x, &[rows, dim]),
            &t(mean, &[rows]),
            &t(rstd, &[rows]),
            &t(weight, &[dim]),
            &t(grad, &[rows, dim]),
        );
        (dx.buffer().clone(), dw.buffer().clone(), db.buffer().clone())
    }

    /// Backward of a softmax over `rows` contiguous rows of `len` values:
    /// `y * (grad - rowsum(grad * y))` for the softmax output `y`.
    fn softmax_backward(
        &self,
        y: &Self::Buffer,
        grad: &Self::Buffer,
        rows: usize,
        len: usize,
    ) -> Self::Buffer {
        let t = |b: &Self::Buffer| Tensor::from_buffer(self, b.clone(), &[rows, len]);
        softmax_backward_reference(&t(y), &t(grad)).buffer().clone()
    }

    // ---- scans (kernels/scan.rs) ----

    /// Inclusive cumulative sum along the axis of `view`, from the last entry
    /// backwards when `reverse`.
    fn cumsum(&self, x: &Self::Buffer, view: AxisView, reverse: bool) -> Self::Buffer {
        let t = Tensor::from_buffer(self, x.clone(), &[view.outer, view.len, view.inner]);
        cumsum_by_doubling(&t, reverse).buffer().clone()
    }

    // ---- attention (kernels/attention_tiled.rs, kernels/attention_dense.rs) ----

    /// Tiled shared-QKV attention `softmax(s W W^T) W` of `spec.batch`
    /// problems `W` (`n x dh`): the output and the row log-sum-exp of the
    /// logits (`batch x n`), never forming an `n x n` matrix.
    fn attention_tiled(&self, w: &Self::Buffer, spec: AttentionSpec) -> (Self::Buffer, Self::Buffer) {
        let t = Tensor::from_buffer(self, w.clone(), &[spec.batch, spec.n, spec.dh]);
        let (o, l) = attention_tiled::tiled_forward(&t, spec);
        (o.buffer().clone(), l.buffer().clone())
    }

    /// Backward of [`Self::attention_tiled`]: `dL/dW` (`batch x n x dh`) from
    /// the tokens, the output, the row log-sum-exp and `dL/d(output)`.
    fn attention_tiled_backward(
        &self,
        w: &Self::Buffer,
        out: &Self::Buffer,
        lse: &Self::Buffer,
        grad_out: &Self::Buffer,
        spec: AttentionSpec,
    ) -> Self::Buffer {
        let shape = [spec.batch, spec.n, spec.dh];
        let t = |b: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, b.clone(), s);
        attention_tiled::tiled_backward(
            &t(w, &shape),
            &t(out, &shape),
            &t(lse, &[spec.batch, spec.n]),
            &t(grad_out, &shape),
            spec,
        )
        .buffer()
        .clone()
    }

    /// Dense shared-QKV attention of every head of head-interleaved tokens
    /// `w` (`batch x n x heads*dh`): the attention `softmax_rows(W_h W_h^T)`
    /// (`batch x heads x n x n`) and the merged outputs `A_h W_h`
    /// (`batch x n x heads*dh`).
    fn attention_dense(&self, w: &Self::Buffer, spec: DenseAttentionSpec) -> (Self::Buffer, Self::Buffer) {
        let t = Tensor::from_buffer(self, w.clone(), &spec.tokens_shape());
        let (a, o) = attention_dense::dense_forward(&t, spec);
        (a.buffer().clone(), o.buffer().clone())
    }

    /// Backward of [`Self::attention_dense`]: `dL/dW` (`batch x n x heads*dh`)
    /// from the tokens, the attention and `dL/d(merged output)`.
    fn attention_dense_backward(
        &self,
        w: &Self::Buffer,
        attn: &Self::Buffer,
        grad_out: &Self::Buffer,
        spec: DenseAttentionSpec,
    ) -> Self::Buffer {
        let t = |x: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, x.clone(), s);
        attention_dense::dense_backward(
            &t(w, &spec.tokens_shape()),
            &t(attn, &spec.attention_shape()),
            &t(grad_out, &spec.tokens_shape()),
            spec,
        )
        .buffer()
        .clone()
    }

    // ---- token statistics (kernels/token_stats.rs) ----

    /// TSSA's token statistics of `w` (`batch x n x heads*dh`) with per-head
    /// temperatures `temp` (`heads` values).
    fn token_stats(
        &self,
        w: &Self::Buffer,
        temp: &Self::Buffer,
        spec: TokenStatsSpec,
    ) -> TokenStats<Self::Buffer> {
        let TokenStatsSpec { batch, n, heads, dh, norm_eps } = spec;
        let w = Tensor::from_buffer(self, w.clone(), &[batch, n, heads * dh]);
        let temp = Tensor::from_buffer(self, temp.clone(), &[heads]);
        token_stats_reference(&w, &temp, heads, norm_eps).map(|t| t.buffer().clone())
    }

    // ---- the invariant ReduNet layer (kernels/invariant.rs) ----

    /// The update of one shift-invariant ReduNet layer from the features `v`
    /// (`F x n x width`), their products `y` with `E` and the `C^j`
    /// (`F x n x (k+1) x width`), the frequency weights (`F`) and the class
    /// weights (`k`): `(v', pi [n x k])`.
    fn invariant_step(
        &self,
        v: &Self::Buffer,
        y: &Self::Buffer,
        weights: &Self::Buffer,
        gamma: &Self::Buffer,
        spec: InvariantStepSpec,
    ) -> (Self::Buffer, Self::Buffer) {
        let InvariantStepSpec { freqs: f, n, classes: k, width, eta, lambda } = spec;
        let t = |b: &Self::Buffer, s: &[usize]| Tensor::from_buffer(self, b.clone(), s);
        let (out, pi) = invariant::invariant_step_reference(
            &t(v, &[f, n, width]),
            &t(y, &[f, n, k + 1, width]),
            &t(weights, &[f]),
            &t(gamma, &[k]),
            eta,
            lambda,
        );
        (out.buffer().clone(), pi.buffer().clone())
    }

    /// The real operand `F x 2C x 2gC` of `F x g` Hermitian-packed `C x C`
    /// operators. The reference body is one gather.
    fn real_operand(&self, packed: &Self::Buffer, f: usize, g: usize, c: usize) -> Self::Buffer {
        let p = Tensor::from_buffer(self, packed.clone(), &[f, g, c, c]);
        invariant::real_operand_reference(&p).buffer().clone()
    }

    /// The products `y = v W` of one shift-invariant ReduNet layer: features
    /// `v` (`F x n x 2C`, packed half spectra) times the real operand `W`
    /// (`F x 2C x 2gC`) of `F x g` Hermitian-packed operators, `F x n x 2gC`.
    /// The reference body unfolds `W` ([`Self::real_operand`]) and
    /// multiplies; a backend may unfold it one frequency at a time so that it
    /// is never stored whole.
    fn invariant_products(
        &self,
        v: &Self::Buffer,
        packed: &Self::Buffer,
        spec: InvariantProductsSpec,
    ) -> Self::Buffer {
        let InvariantProductsSpec { freqs: f, n, ops: g, channels: c } = spec;
        let w = self.real_operand(packed, f, g, c);
        let s = MatmulSpec {
            batch: f,
            m: n,
            k: 2 * c,
            n: 2 * g * c,
            trans_a: false,
            trans_b: false,
            a_batched: true,
            b_batched: true,
        };
        self.matmul(v, &w, s)
    }

    // ---- ReduNet built forward and applied (kernels/redunet.rs) ----

    /// Builds a ReduNet from training features `z` (`samples x dim`) and
    /// their labels (every class present): the normalised output, the
    /// operators of every layer and what `record` asks for.
    fn redunet_build(
        &self,
        z: &Self::Buffer,
        samples: usize,
        dim: usize,
        labels: &[usize],
        spec: &RedunetSpec,
        record: &Record,
    ) -> Result<RedunetRun<Self::Buffer>> {
        let z = Tensor::from_buffer(self, z.clone(), &[samples, dim]);
        Ok(build_reference(&z, labels, spec, record)?.map(|t| t.buffer().clone()))
    }

    /// Applies the layers with `operators` (`(k+1) dim x dim` each) and class
    /// weights `gamma` to features `z` (`samples x dim`).
    fn redunet_transform(
        &self,
        z: &Self::Buffer,
        samples: usize,
        dim: usize,
        operators: &[Self::Buffer],
        gamma: &[f64],
        spec: &RedunetSpec,
        record: &Record,
    ) -> Result<RedunetRun<Self::Buffer>> {
        let z = Tensor::from_buffer(self, z.clone(), &[samples, dim]);
        let g = (spec.classes + 1) * dim;
        let ops: Vec<Tensor<Self>> =
            operators.iter().map(|w| Tensor::from_buffer(self, w.clone(), &[g, dim])).collect();
        Ok(transform_reference(&z, &ops, gamma, spec, record)?.map(|t| t.buffer().clone()))
    }
}
