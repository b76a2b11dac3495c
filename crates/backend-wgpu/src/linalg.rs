//! Linear algebra of the wgpu backend: tiled batched matmul, blocked SPD Cholesky with solves, inverses and log-determinants, complex Hermitian variants, and the host Jacobi fallback of `sym_eigen`.
//!
//! Cholesky runs right-looking by blocks: a diagonal block (one workgroup
//! per matrix, in global memory), the panel below it (one thread per row) and
//! the trailing update (16x16 tiles); orders up to 64 are one diagonal block,
//! and large batches of orders up to 32 take one matrix per thread.
//! A pivot that is not positive and finite is written to a status buffer that
//! the host reads back (a few bytes) to raise `NotPositiveDefinite`.

use crate::ctx::{Buf, Ctx, Job, MAX_GROUPS};
use crate::kernels as k;
use rate_core::{Error, MatmulSpec, Result};

fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu backend: size {x} does not fit in 32 bits"))
}

/// Batches of at least this many matrices of order at most [`THREAD_MAX_N`]
/// are factored one matrix per thread (no barriers) instead of one per workgroup.
const THREAD_MIN_BATCH: usize = 256;
/// See [`THREAD_MIN_BATCH`].
const THREAD_MAX_N: usize = 32;

/// Orders up to this are factored as a single diagonal block.
const ONE_BLOCK: usize = 64;
/// Block size of the blocked factorisation (the update kernel holds 32 columns).
const NB: usize = 32;

/// Batched `op(A) op(B)`.
pub fn matmul(ctx: &Ctx, a: &Buf, b: &Buf, s: MatmulSpec) -> Buf {
    let MatmulSpec { batch, m, k: kk, n, trans_a, trans_b, a_batched, b_batched } = s;
    // A batch of row-major A against one shared B is a single (batch * m) x k product:
    // the stacked rows of A are contiguous, and so are the results. One tall product
    // takes the 64x64 tiles where batch small blocks of m rows (m < 64) would each pad
    // a 16x16 tile grid, several times slower on the same work.
    if a_batched && !b_batched && !trans_a && batch > 1 && (batch * m).div_ceil(16) <= MAX_GROUPS {
        let folded = MatmulSpec { batch: 1, m: batch * m, a_batched: false, ..s };
        return matmul(ctx, a, b, folded);
    }
    let total = batch * m * n;
    if total == 0 {
        return ctx.alloc(0);
    }
    if kk == 0 {
        return crate::ops::full(ctx, total, 0.0);
    }
    let out = ctx.alloc(total);
    let sa = if a_batched { m * kk } else { 0 };
    let sb = if b_batched { kk * n } else { 0 };
    let mut job = ctx.job();
    if m < 16 && n < 16 {
        // Tiles would be mostly idle: one thread per output.
        let p = [u(m), u(kk), u(n), trans_a as u32, trans_b as u32, u(sa), u(sb), 0, u(batch)];
        job.dispatch_1d(&k::MM_THREAD, &p, &[a, b, &out], total);
        job.submit();
        return out;
    }
    let (kernel, tile) = if m >= 64 && n >= 64 { (&k::MM_LARGE, 64) } else { (&k::MM_SMALL, 16) };
    let mut off = 0;
    while off < batch {
        let chunk = (batch - off).min(MAX_GROUPS);
        let p = [u(m), u(kk), u(n), trans_a as u32, trans_b as u32, u(sa), u(sb), u(off), u(batch)];
        job.dispatch(kernel, &p, &[a, b, &out], [u(n.div_ceil(tile)), u(m.div_ceil(tile)), u(chunk)]);
        off += chunk;
    }
    job.submit();
    out
}

/// Records the in-place factorisation of a copy of `a`; returns the factor and
/// the status buffer (`2 * batch` words, zero where the matrix factored).
fn record_cholesky(job: &mut Job, a: &Buf, batch: usize, n: usize) -> (Buf, Buf) {
    let ctx = job.ctx;
    let l = ctx.alloc(batch * n * n);
    job.copy(a, &l, batch * n * n);
    let status = ctx.alloc(2 * batch);
    job.clear(&status, 2 * batch);
    let (dx, dout) = (job.dummy(), job.dummy());
    let bufs = [&l, &dx, &status, &dout];
    if n <= THREAD_MAX_N && batch >= THREAD_MIN_BATCH {
        job.dispatch_1d(&k::CHOL_THREAD, &[u(n), u(batch)], &bufs, batch);
        return (l, status);
    }
    if n <= ONE_BLOCK {
        job.dispatch_groups(&k::CHOL_DIAG, &[u(n), 0, u(n), u(batch)], &bufs, batch);
        return (l, status);
    }
    for kb in (0..n).step_by(NB) {
        let nb = NB.min(n - kb);
        job.dispatch_groups(&k::CHOL_DIAG, &[u(n), u(kb), u(nb), u(batch)], &bufs, batch);
        let rows = n - kb - nb;
        if rows == 0 {
            continue;
        }
        job.dispatch_1d(&k::CHOL_PANEL, &[u(n), u(kb), u(nb), u(batch)], &bufs, rows * batch);
        let tiles = u(rows.div_ceil(16));
        let mut off = 0;
        while off < batch {
            let chunk = (batch - off).min(MAX_GROUPS);
            job.dispatch(&k::CHOL_UPDATE, &[u(n), u(kb), u(nb), u(off)], &bufs, [tiles, tiles, u(chunk)]);
            off += chunk;
        }
    }
    (l, status)
}

/// Reads the status words and turns the first failure into an error.
fn check(ctx: &Ctx, status: &Buf, batch: usize, n: usize, op: &'static str) -> Result<()> {
    let st = ctx.read_u32(status, 2 * batch);
    match (0..batch).find(|&b| st[2 * b] != 0) {
        None => Ok(()),
        Some(b) => Err(Error::NotPositiveDefinite {
            op,
            index: b,
            n,
            row: st[2 * b] as usize - 1,
            pivot: f32::from_bits(st[2 * b + 1]) as f64,
        }),
    }
}

/// Lower Cholesky factors with zero strict upper triangles.
pub fn cholesky(ctx: &Ctx, a: &Buf, batch: usize, n: usize) -> Result<Buf> {
    if batch * n == 0 {
        return Ok(ctx.alloc(0));
    }
    let mut job = ctx.job();
    let (l, status) = record_cholesky(&mut job, a, batch, n);
    let (dx, dout) = (job.dummy(), job.dummy());
    job.dispatch_1d(&k::ZERO_UPPER, &[u(batch * n * n), u(n)], &[&l, &dx, &status, &dout], batch * n * n);
    job.submit();
    check(ctx, &status, batch, n, "cholesky")?;
    Ok(l)
}

fn solve_with(
    ctx: &Ctx,
    a: &Buf,
    rhs: Option<&Buf>,
    batch: usize,
    n: usize,
    nrhs: usize,
    op: &'static str,
) -> Result<Buf> {
    if batch * n * nrhs == 0 {
        return Ok(ctx.alloc(batch * n * nrhs));
    }
    let mut job = ctx.job();
    let (l, status) = record_cholesky(&mut job, a, batch, n);
    let x = ctx.alloc(batch * n * nrhs);
    let dout = job.dummy();
    let bufs = [&l, &x, &status, &dout];
    match rhs {
        Some(b) => job.copy(b, &x, batch * n * nrhs),
        None => job.dispatch_1d(&k::EYE, &[u(batch * n * n), u(n)], &bufs, batch * n * n),
    }
    let p = [u(n), u(nrhs), u(batch), rhs.is_none() as u32];
    job.dispatch_1d(&k::TRI_SOLVE, &p, &bufs, batch * nrhs);
    job.submit();
    check(ctx, &status, batch, n, op)?;
    Ok(x)
}

/// Solves `A X = B` for SPD `A`.
pub fn spd_solve(ctx: &Ctx, a: &Buf, b: &Buf, batch: usize, n: usize, nrhs: usize) -> Result<Buf> {
    solve_with(ctx, a, Some(b), batch, n, nrhs, "spd_solve")
}

/// SPD inverses.
pub fn spd_inverse(ctx: &Ctx, a: &Buf, batch: usize, n: usize) -> Result<Buf> {
    solve_with(ctx, a, None, batch, n, n, "spd_inverse")
}

/// SPD log-determinants.
pub fn spd_logdet(ctx: &Ctx, a: &Buf, batch: usize, n: usize) -> Result<Buf> {
    if batch == 0 {
        return Ok(ctx.alloc(0));
    }
    if n == 0 {
        return Ok(crate::ops::full(ctx, batch, 0.0));
    }
    let mut job = ctx.job();
    let (l, status) = record_cholesky(&mut job, a, batch, n);
    let out = ctx.alloc(batch);
    let dx = job.dummy();
    job.dispatch_1d(&k::LOGDET, &[u(n), u(batch)], &[&l, &dx, &status, &out], batch);
    job.submit();
    check(ctx, &status, batch, n, "spd_logdet")?;
    Ok(out)
}

// ---------- complex Hermitian ----------

/// Records the factorisation of copies of `(re, im)`: factor planes and status.
fn record_herm(job: &mut Job, re: &Buf, im: &Buf, batch: usize, n: usize) -> (Buf, Buf, Buf) {
    let ctx = job.ctx;
    let lre = ctx.alloc(batch * n * n);
    let lim = ctx.alloc(batch * n * n);
    job.copy(re, &lre, batch * n * n);
    job.copy(im, &lim, batch * n * n);
    let status = ctx.alloc(2 * batch);
    job.clear(&status, 2 * batch);
    let (d1, d2, d3) = (job.dummy(), job.dummy(), job.dummy());
    let bufs = [&lre, &lim, &d1, &d2, &status, &d3];
    if n <= THREAD_MAX_N && batch >= THREAD_MIN_BATCH {
        job.dispatch_1d(&k::HERM_FACTOR_THREAD, &[u(n), u(batch)], &bufs, batch);
    } else {
        job.dispatch_groups(&k::HERM_FACTOR, &[u(n), u(batch)], &bufs, batch);
    }
    (lre, lim, status)
}

/// Solves `A X = B` for Hermitian positive definite `A` (`rhs = Some(B)`), or
/// inverts `A` (`rhs = None`, `nrhs = n`); `op` names the call in errors.
pub fn herm_solve_with(
    ctx: &Ctx,
    a: (&Buf, &Buf),
    rhs: Option<(&Buf, &Buf)>,
    batch: usize,
    n: usize,
    nrhs: usize,
    op: &'static str,
) -> Result<(Buf, Buf)> {
    let len = batch * n * nrhs;
    if len == 0 {
        return Ok((ctx.alloc(len), ctx.alloc(len)));
    }
    let mut job = ctx.job();
    let (lre, lim, status) = record_herm(&mut job, a.0, a.1, batch, n);
    let (xre, xim) = (ctx.alloc(len), ctx.alloc(len));
    let dout = job.dummy();
    let bufs = [&lre, &lim, &xre, &xim, &status, &dout];
    match rhs {
        Some((br, bi)) => {
            job.copy(br, &xre, len);
            job.copy(bi, &xim, len);
        }
        None => job.dispatch_1d(&k::HERM_EYE, &[u(batch * n * n), u(n)], &bufs, batch * n * n),
    }
    let p = [u(n), u(nrhs), u(batch), rhs.is_none() as u32];
    job.dispatch_1d(&k::HERM_SOLVE, &p, &bufs, batch * nrhs);
    job.submit();
    check(ctx, &status, batch, n, op)?;
    Ok((xre, xim))
}

/// Hermitian positive definite inverses.
pub fn herm_inverse(ctx: &Ctx, re: &Buf, im: &Buf, batch: usize, n: usize) -> Result<(Buf, Buf)> {
    herm_solve_with(ctx, (re, im), None, batch, n, n, "herm_inverse")
}

/// Hermitian log-determinants (real).
pub fn herm_logdet(ctx: &Ctx, re: &Buf, im: &Buf, batch: usize, n: usize) -> Result<Buf> {
    if batch == 0 {
        return Ok(ctx.alloc(0));
    }
    if n == 0 {
        return Ok(crate::ops::full(ctx, batch, 0.0));
    }
    let mut job = ctx.job();
    let (lre, lim, status) = record_herm(&mut job, re, im, batch, n);
    let out = ctx.alloc(batch);
    let (d1, d2) = (job.dummy(), job.dummy());
    job.dispatch_1d(&k::HERM_LOGDET, &[u(n), u(batch)], &[&lre, &lim, &d1, &d2, &status, &out], batch);
    job.submit();
    check(ctx, &status, batch, n, "herm_logdet")?;
    Ok(out)
}

// ---------- symmetric eigen-decomposition (host) ----------

/// Eigenvalues (decreasing) and eigenvectors (columns) of one symmetric
/// row-major matrix by cyclic Jacobi rotations in f64.
pub fn jacobi_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    // Symmetrise from the lower triangle, as the CPU backend reads it.
    for i in 0..n {
        for j in 0..i {
            m[j * n + i] = m[i * n + j];
        }
    }
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * norm || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- J^T A J on rows/columns p, q.
                for r in 0..n {
                    let (arp, arq) = (m[r * n + p], m[r * n + q]);
                    m[r * n + p] = c * arp - s * arq;
                    m[r * n + q] = s * arp + c * arq;
                }
                for r in 0..n {
                    let (apr, aqr) = (m[p * n + r], m[q * n + r]);
                    m[p * n + r] = c * apr - s * aqr;
                    m[q * n + r] = s * apr + c * aqr;
                }
                for r in 0..n {
                    let (vrp, vrq) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * vrp - s * vrq;
                    v[r * n + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let vals = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (c, &i) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + c] = v[r * n + i];
        }
    }
    (vals, vecs)
}

/// `sym_eigen` on the host: downloads, runs [`jacobi_eigen`] in f64 per matrix, uploads.
pub fn sym_eigen(ctx: &Ctx, a: &Buf, batch: usize, n: usize) -> Result<(Buf, Buf)> {
    let host = ctx.read_f32(a, batch * n * n);
    if let Some(i) = host.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("sym_eigen: matrix {} (order {n})", i / (n * n).max(1)),
            index: i,
            value: host[i] as f64,
        });
    }
    let mut vals = Vec::with_capacity(batch * n);
    let mut vecs = Vec::with_capacity(batch * n * n);
    for b in 0..batch {
        let m: Vec<f64> = host[b * n * n..(b + 1) * n * n].iter().map(|&x| x as f64).collect();
        let (w, v) = jacobi_eigen(&m, n);
        vals.extend(w.into_iter().map(|x| x as f32));
        vecs.extend(v.into_iter().map(|x| x as f32));
    }
    Ok((ctx.upload_words(&vals), ctx.upload_words(&vecs)))
}
