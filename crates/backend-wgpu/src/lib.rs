//! `WgpuBackend`: the rate-core `Backend` in f32 on any wgpu adapter (Vulkan, Metal, DX12), with WGSL compute shaders.
//!
//! Buffers live on the device in a size-bucketed pool; every operation
//! records its dispatches and submits them without waiting, so data comes
//! back to the host only in [`Backend::download`] (and as a few status words
//! after a Cholesky factorisation, to report a matrix that is not positive
//! definite as an error). Kernels: elementwise and broadcasting binary ops,
//! layout (permute, narrow, concat, index_select, index_add), reductions and
//! softmax, tiled batched matmul, blocked SPD Cholesky with solves, inverses
//! and log-determinants, complex Hermitian Cholesky, and FFTs of any length
//! (radix-2 and Bluestein). `sym_eigen` is the exception: it downloads the
//! matrices and runs cyclic Jacobi in f64 on the host (see [`jacobi_eigen`]).
//!
//! The adapter is the first of the best kind (discrete, integrated, virtual,
//! other, then software such as llvmpipe), or the first whose name contains
//! the value of `RATE_WGPU_ADAPTER`.
//!
//! Compiled only with the `gpu` feature (`cargo xtask test-gpu`); without it the crate is empty, so
//! the default workspace build and CI do not compile wgpu.

#![cfg(feature = "gpu")]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod ctx;
mod fft;
mod kernels;
mod linalg;
mod ops;

pub use ctx::Buf as WgpuBuffer;
pub use ctx::ADAPTER_ENV;
pub use linalg::jacobi_eigen;

use ctx::{Buf, Ctx};
use rate_core::{AxisView, Backend, BinaryOp, FftNorm, Kernels, MatmulSpec, ReduceOp, Result, UnaryOp};
use std::sync::Arc;

/// The wgpu backend (f32). Clones share the device.
#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBackend({})", self.name())
    }
}

impl WgpuBackend {
    /// Opens the best adapter, or the one named by `RATE_WGPU_ADAPTER` (a
    /// case-insensitive substring of the adapter name). Fails with
    /// `Error::Backend` when no adapter matches.
    pub fn new() -> Result<Self> {
        Ok(WgpuBackend { ctx: Arc::new(Ctx::open()?) })
    }

    /// Name of the adapter in use.
    pub fn adapter_name(&self) -> &str {
        &self.ctx.info.name
    }

    /// Kind of the adapter in use (discrete, integrated, CPU...).
    pub fn adapter_kind(&self) -> String {
        format!("{:?}", self.ctx.info.device_type)
    }

    /// Blocks until all submitted work has finished (for timing).
    pub fn synchronize(&self) {
        self.ctx.wait();
    }
}

impl Backend for WgpuBackend {
    type Elem = f32;
    type Buffer = Buf;

    fn name(&self) -> String {
        format!("wgpu-f32 ({}, {:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn upload(&self, data: &[f32]) -> Buf {
        self.ctx.upload_words(data)
    }

    fn download(&self, buf: &Buf) -> Vec<f32> {
        self.ctx.read_f32(buf, buf.len())
    }

    fn full(&self, len: usize, value: f32) -> Buf {
        ops::full(&self.ctx, len, value)
    }

    fn len(&self, buf: &Buf) -> usize {
        buf.len()
    }

    fn unary(&self, op: UnaryOp, x: &Buf) -> Buf {
        ops::unary(&self.ctx, op, x)
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &Buf,
        a_strides: &[usize],
        b: &Buf,
        b_strides: &[usize],
        out_shape: &[usize],
    ) -> Buf {
        ops::binary(&self.ctx, op, a, a_strides, b, b_strides, out_shape)
    }

    fn permute(&self, x: &Buf, shape: &[usize], perm: &[usize]) -> Buf {
        ops::permute(&self.ctx, x, shape, perm)
    }

    fn narrow(&self, x: &Buf, view: AxisView, start: usize, count: usize) -> Buf {
        ops::narrow(&self.ctx, x, view, start, count)
    }

    fn concat(&self, parts: &[&Buf], outer: usize, lens: &[usize], inner: usize) -> Buf {
        ops::concat(&self.ctx, parts, outer, lens, inner)
    }

    fn index_select(&self, x: &Buf, view: AxisView, index: &[usize]) -> Buf {
        ops::index_select(&self.ctx, x, view, index)
    }

    fn index_add(&self, x: &Buf, view: AxisView, index: &[usize], len: usize) -> Buf {
        ops::index_add(&self.ctx, x, view, index, len)
    }

    fn reduce(&self, op: ReduceOp, x: &Buf, view: AxisView) -> Buf {
        ops::reduce(&self.ctx, op, x, view)
    }

    fn softmax(&self, x: &Buf, view: AxisView) -> Buf {
        ops::softmax(&self.ctx, x, view)
    }

    fn matmul(&self, a: &Buf, b: &Buf, spec: MatmulSpec) -> Buf {
        linalg::matmul(&self.ctx, a, b, spec)
    }

    fn cholesky(&self, a: &Buf, batch: usize, n: usize) -> Result<Buf> {
        linalg::cholesky(&self.ctx, a, batch, n)
    }

    fn spd_solve(&self, a: &Buf, b: &Buf, batch: usize, n: usize, nrhs: usize) -> Result<Buf> {
        linalg::spd_solve(&self.ctx, a, b, batch, n, nrhs)
    }

    fn spd_inverse(&self, a: &Buf, batch: usize, n: usize) -> Result<Buf> {
        linalg::spd_inverse(&self.ctx, a, batch, n)
    }

    fn spd_logdet(&self, a: &Buf, batch: usize, n: usize) -> Result<Buf> {
        linalg::spd_logdet(&self.ctx, a, batch, n)
    }

    /// The two shaders `spd_inverse` and `spd_logdet` (two factorisations).
    fn spd_inverse_logdet(&self, a: &Buf, batch: usize, n: usize) -> Result<(Buf, Buf)> {
        Ok((self.spd_inverse(a, batch, n)?, self.spd_logdet(a, batch, n)?))
    }

    /// Runs on the host: downloads, cyclic Jacobi in f64, uploads.
    fn sym_eigen(&self, a: &Buf, batch: usize, n: usize) -> Result<(Buf, Buf)> {
        linalg::sym_eigen(&self.ctx, a, batch, n)
    }

    fn herm_inverse(&self, re: &Buf, im: &Buf, batch: usize, n: usize) -> Result<(Buf, Buf)> {
        linalg::herm_inverse(&self.ctx, re, im, batch, n)
    }

    fn herm_logdet(&self, re: &Buf, im: &Buf, batch: usize, n: usize) -> Result<Buf> {
        linalg::herm_logdet(&self.ctx, re, im, batch, n)
    }

    /// The two shaders `herm_inverse` and `herm_logdet` (two factorisations).
    fn herm_inverse_logdet(&self, re: &Buf, im: &Buf, batch: usize, n: usize) -> Result<(Buf, Buf, Buf)> {
        let (ir, ii) = self.herm_inverse(re, im, batch, n)?;
        Ok((ir, ii, self.herm_logdet(re, im, batch, n)?))
    }

    fn herm_solve(
        &self,
        a: (&Buf, &Buf),
        b: (&Buf, &Buf),
        batch: usize,
        n: usize,
        nrhs: usize,
    ) -> Result<(Buf, Buf)> {
        linalg::herm_solve_with(&self.ctx, a, Some(b), batch, n, nrhs, "herm_solve")
    }

    fn fft(&self, re: &Buf, im: &Buf, view: AxisView, inverse: bool, norm: FftNorm) -> (Buf, Buf) {
        fft::transform(&self.ctx, fft::Input::Complex(re, im), view, view.len, inverse, norm, view.len, true)
    }

    fn rfft(&self, x: &Buf, view: AxisView, norm: FftNorm) -> (Buf, Buf) {
        fft::transform(&self.ctx, fft::Input::Real(x), view, view.len, false, norm, view.len / 2 + 1, true)
    }

    fn irfft(&self, re: &Buf, im: &Buf, view: AxisView, n: usize, norm: FftNorm) -> Buf {
        fft::transform(&self.ctx, fft::Input::Half(re, im), view, n, true, norm, n, false).0
    }
}

/// The fused kernels keep their reference bodies (built from the WGSL
/// primitives above), tested against the CPU in f64 by the conformance suite.
impl Kernels for WgpuBackend {}
