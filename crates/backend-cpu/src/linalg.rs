//! Dense real linear algebra of the CPU backend: batched matmul (faer), Cholesky solves, inverses and log-determinants of SPD matrices (4.1.3-4.1.4), symmetric eigen-decomposition.
//!
//! Matrices up to [`SMALL`] are factored by the textbook Cholesky loop, one
//! matrix per rayon task; larger ones go to faer's blocked `Llt`.

use crate::blocked;
use crate::host::{clear_upper_simd_state, clear_upper_simd_state_everywhere};
use crate::{CpuBackend, CpuElem};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::{Accum, Mat, MatMut, MatRef, Side};
use rate_core::{Error, MatmulSpec, Result};
use rayon::prelude::*;

/// `f(i)` for every matrix `i` of a batch of `n x n` matrices, collected in
/// order: on rayon's pool, or on the calling thread when the whole batch is
/// below `2^15` multiply-adds, where handing tasks to the pool costs more
/// than the work (the `k + 1` operators of a small-dimensional ReduNet layer).
fn map_batch<R: Send, C: FromIterator<R> + FromParallelIterator<R>>(
    batch: usize,
    n: usize,
    f: impl Fn(usize) -> R + Sync + Send,
) -> C {
    if batch * n * n * n < 1 << 15 {
        (0..batch).map(f).collect()
    } else {
        (0..batch).into_par_iter().map(f).collect()
    }
}

/// Largest order factored by the plain loop instead of faer.
pub const SMALL: usize = 64;

/// After a Cholesky-based routine: faer ran (on any thread) only above the plain-loop size.
pub(crate) fn clear_after_factorisation(n: usize) {
    if n > SMALL {
        clear_upper_simd_state_everywhere();
    }
}

/// The product of `Backend::matmul`: batches by the blocked kernel, one
/// large product by the blocked kernel or faer across the pool, anything else
/// on the calling thread.
pub fn product<T: CpuElem>(be: &CpuBackend<T>, a: &[T], b: &[T], s: MatmulSpec) -> Vec<T> {
    // Inside a rayon task (callers running their own parallel work) every
    // product stays on the calling thread; faer's own parallel product is
    // used only from outside the pool, for large products that cannot be split.
    let may_spread = rayon::current_thread_index().is_none() && be.spreads();
    let flops = s.m * s.n * s.k;
    if s.batch > 1 {
        blocked::batched(a, b, s)
    } else if let Some(out) = may_spread.then(|| blocked::matmul(a, b, s)).flatten() {
        out
    } else if may_spread && flops >= 1 << 18 {
        let out = matmul(be, a, b, s);
        clear_upper_simd_state_everywhere();
        out
    } else {
        let out = matmul(&be.on_calling_thread(), a, b, s);
        clear_upper_simd_state();
        out
    }
}

pub fn matmul<T: CpuElem>(be: &CpuBackend<T>, a: &[T], b: &[T], s: MatmulSpec) -> Vec<T> {
    let MatmulSpec { batch, m, k, n, trans_a, trans_b, a_batched, b_batched } = s;
    if m * n == 0 || k == 0 {
        return vec![T::zero(); batch * m * n];
    }
    // every element is written (Accum::Replace)
    let mut out = crate::pool::take_for_overwrite(batch * m * n);
    let one_product = |bi: usize, dst: &mut [T], par: faer::Par| {
        let dst = MatMut::from_row_major_slice_mut(dst, m, n);
        let ao = if a_batched { bi * m * k } else { 0 };
        let bo = if b_batched { bi * k * n } else { 0 };
        let a = &a[ao..ao + m * k];
        let b = &b[bo..bo + k * n];
        let lhs = if trans_a {
            MatRef::from_row_major_slice(a, k, m).transpose()
        } else {
            MatRef::from_row_major_slice(a, m, k)
        };
        let rhs = if trans_b {
            MatRef::from_row_major_slice(b, n, k).transpose()
        } else {
            MatRef::from_row_major_slice(b, k, n)
        };
        faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, T::one(), par);
    };
    let flops = m * n * k;
    if batch > 1 && flops < 1 << 21 {
        out.par_chunks_mut(m * n).enumerate().for_each(|(bi, dst)| one_product(bi, dst, faer::Par::Seq));
    } else {
        let par = be.par_for(flops);
        out.chunks_mut(m * n).enumerate().for_each(|(bi, dst)| one_product(bi, dst, par));
    }
    out
}

pub(crate) fn not_pd(op: &'static str, index: usize, n: usize, row: usize, pivot: f64) -> Error {
    Error::NotPositiveDefinite { op, index, n, row, pivot }
}

/// Fails with [`Error::NonFinite`] if matrix `index` of a batch holds NaN or an
/// infinity: a factorisation reads one triangle only, so it would otherwise
/// ignore such a value or carry it into the result.
pub(crate) fn check_finite<T: CpuElem>(a: &[T], index: usize, op: &'static str) -> Result<()> {
    match a.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::NonFinite {
            what: format!("{op}: matrix {index} of the batch"),
            index: i,
            value: a[i].f64(),
        }),
        None => Ok(()),
    }
}

/// In-place lower Cholesky of one row-major `n x n` matrix; zeroes the upper triangle.
fn chol_small<T: CpuElem>(l: &mut [T], n: usize) -> std::result::Result<(), (usize, f64)> {
    for j in 0..n {
        let mut d = l[j * n + j];
        for k in 0..j {
            d -= l[j * n + k] * l[j * n + k];
        }
        if d.is_nan() || d <= T::zero() {
            return Err((j, d.f64()));
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        let inv = T::one() / d;
        for i in j + 1..n {
            let mut s = l[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = s * inv;
        }
        for i in 0..j {
            l[i * n + j] = T::zero();
        }
    }
    Ok(())
}

/// Lower Cholesky factor of one matrix, small loop or faer.
fn chol_one<T: CpuElem>(
    be: &CpuBackend<T>,
    a: &[T],
    n: usize,
    index: usize,
    op: &'static str,
) -> Result<Vec<T>> {
    if n <= SMALL {
        check_finite(a, index, op)?;
        let mut l = a.to_vec();
        chol_small(&mut l, n).map_err(|(row, p)| not_pd(op, index, n, row, p))?;
        return Ok(l);
    }
    let (l, _) = faer_llt(be, a, n, index, op)?;
    let mut out = vec![T::zero(); n * n];
    MatMut::from_row_major_slice_mut(&mut out, n, n).copy_from(&l);
    Ok(out)
}

/// faer's blocked Cholesky of one row-major SPD matrix: the lower factor `L`
/// (upper triangle zero) and the parallelism it was computed with, which is
/// the backend's (`CpuBackend::sequential` keeps it on the calling thread;
/// faer's high-level `Llt` would use its global rayon setting instead).
fn faer_llt<T: CpuElem>(
    be: &CpuBackend<T>,
    a: &[T],
    n: usize,
    index: usize,
    op: &'static str,
) -> Result<(Mat<T>, faer::Par)> {
    // faer reports NaN pivots as success in some paths: check the input first.
    check_finite(a, index, op)?;
    if let Some(i) = (0..n).find(|&i| a[i * n + i].is_nan() || a[i * n + i] <= T::zero()) {
        return Err(not_pd(op, index, n, i, a[i * n + i].f64()));
    }
    let par = be.par_for(n * n * n);
    let mut l = Mat::<T>::zeros(n, n);
    l.copy_from_triangular_lower(MatRef::from_row_major_slice(a, n, n));
    let mut mem = MemBuffer::new(llt::factor::cholesky_in_place_scratch::<T>(n, par, Default::default()));
    llt::factor::cholesky_in_place(
        l.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|e| {
        let llt::factor::LltError::NonPositivePivot { index: row } = e;
        not_pd(op, index, n, row, f64::NAN)
    })?;
    for j in 1..n {
        for i in 0..j {
            l[(i, j)] = T::zero();
        }
    }
    if let Some(i) = (0..n).find(|&i| !l[(i, i)].is_finite()) {
        return Err(not_pd(op, index, n, i, l[(i, i)].f64()));
    }
    Ok((l, par))
}

pub fn cholesky_batch<T: CpuElem>(
    be: &CpuBackend<T>,
    a: &[T],
    batch: usize,
    n: usize,
    op: &'static str,
) -> Result<Vec<T>> {
    let parts: Result<Vec<Vec<T>>> =
        map_batch(batch, n, |b| chol_one(be, &a[b * n * n..(b + 1) * n * n], n, b, op));
    Ok(parts?.concat())
}

/// Solves `L L^T X = B` in place for one system (`B` is `n x nrhs`, row-major).
fn chol_solve_small<T: CpuElem>(l: &[T], x: &mut [T], n: usize, nrhs: usize) {
    // forward: L Y = B
    for i in 0..n {
        for k in 0..i {
            let lik = l[i * n + k];
            for c in 0..nrhs {
                x[i * nrhs + c] -= lik * x[k * nrhs + c];
            }
        }
        let inv = T::one() / l[i * n + i];
        for c in 0..nrhs {
            x[i * nrhs + c] *= inv;
        }
    }
    // backward: L^T X = Y
    for i in (0..n).rev() {
        for k in i + 1..n {
            let lki = l[k * n + i];
            for c in 0..nrhs {
                x[i * nrhs + c] -= lki * x[k * nrhs + c];
            }
        }
        let inv = T::one() / l[i * n + i];
        for c in 0..nrhs {
            x[i * nrhs + c] *= inv;
        }
    }
}

pub fn spd_solve<T: CpuElem>(
    be: &CpuBackend<T>,
    a: &[T],
    b: &[T],
    batch: usize,
    n: usize,
    nrhs: usize,
) -> Result<Vec<T>> {
    let parts: Result<Vec<Vec<T>>> = map_batch(batch, n, |bi| {
        let am = &a[bi * n * n..(bi + 1) * n * n];
        let bm = &b[bi * n * nrhs..(bi + 1) * n * nrhs];
        if n <= SMALL {
            let l = chol_one(be, am, n, bi, "spd_solve")?;
            let mut x = bm.to_vec();
            chol_solve_small(&l, &mut x, n, nrhs);
            Ok(x)
        } else {
            let (l, par) = faer_llt(be, am, n, bi, "spd_solve")?;
            let mut x = vec![T::zero(); n * nrhs];
            let mut xm = MatMut::from_row_major_slice_mut(&mut x, n, nrhs);
            xm.copy_from(MatRef::from_row_major_slice(bm, n, nrhs));
            let mut mem = MemBuffer::new(llt::solve::solve_in_place_scratch::<T>(n, nrhs, par));
            llt::solve::solve_in_place_with_conj(
                l.as_ref(),
                faer::Conj::No,
                xm,
                par,
                MemStack::new(&mut mem),
            );
            Ok(x)
        }
    });
    Ok(parts?.concat())
}

/// The inverse (written into `x`, `n x n`) and `log det` of one SPD matrix
/// from one factorisation.
fn inverse_logdet_into<T: CpuElem>(
    be: &CpuBackend<T>,
    am: &[T],
    x: &mut [T],
    n: usize,
    bi: usize,
    op: &'static str,
) -> Result<T> {
    let two = T::one() + T::one();
    if n <= SMALL {
        let l = chol_one(be, am, n, bi, op)?;
        x.fill(T::zero());
        for i in 0..n {
            x[i * n + i] = T::one();
        }
        chol_solve_small(&l, x, n, n);
        Ok((0..n).map(|i| l[i * n + i].ln()).fold(T::zero(), |s, v| s + v) * two)
    } else {
        let (l, par) = faer_llt(be, am, n, bi, op)?;
        // faer writes the lower triangle of A^-1 = L^-T L^-1; mirror it.
        let mut inv = Mat::<T>::zeros(n, n);
        let mut mem = MemBuffer::new(llt::inverse::inverse_scratch::<T>(n, par));
        llt::inverse::inverse(inv.as_mut(), l.as_ref(), par, MemStack::new(&mut mem));
        for i in 0..n {
            for j in 0..=i {
                x[i * n + j] = inv[(i, j)];
                x[j * n + i] = inv[(i, j)];
            }
        }
        Ok((0..n).map(|i| l[(i, i)].ln()).fold(T::zero(), |s, v| s + v) * two)
    }
}

/// Inverses and log-determinants of a batch of SPD matrices, one
/// factorisation each, written straight into the two outputs: on rayon's
/// pool, or on the calling thread below `2^15` multiply-adds (as
/// [`map_batch`]).
fn inverse_batch<T: CpuElem>(
    be: &CpuBackend<T>,
    a: &[T],
    batch: usize,
    n: usize,
    op: &'static str,
) -> Result<(Vec<T>, Vec<T>)> {
    let mut inv = vec![T::zero(); batch * n * n];
    let mut lds = vec![T::zero(); batch];
    if n == 0 {
        return Ok((inv, lds));
    }
    let one = |(bi, (x, ld)): (usize, (&mut [T], &mut T))| -> Result<()> {
        *ld = inverse_logdet_into(be, &a[bi * n * n..(bi + 1) * n * n], x, n, bi, op)?;
        Ok(())
    };
    if batch * n * n * n < 1 << 15 {
        inv.chunks_exact_mut(n * n).zip(lds.iter_mut()).enumerate().try_for_each(one)?;
    } else {
        inv.par_chunks_exact_mut(n * n).zip(lds.par_iter_mut()).enumerate().try_for_each(one)?;
    }
    Ok((inv, lds))
}

pub fn spd_inverse<T: CpuElem>(be: &CpuBackend<T>, a: &[T], batch: usize, n: usize) -> Result<Vec<T>> {
    Ok(inverse_batch(be, a, batch, n, "spd_inverse")?.0)
}

/// Inverses and log-determinants of a batch of SPD matrices, one factorisation each.
pub fn spd_inverse_logdet<T: CpuElem>(
    be: &CpuBackend<T>,
    a: &[T],
    batch: usize,
    n: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    inverse_batch(be, a, batch, n, "spd_inverse_logdet")
}

pub fn spd_logdet<T: CpuElem>(be: &CpuBackend<T>, a: &[T], batch: usize, n: usize) -> Result<Vec<T>> {
    let l = cholesky_batch(be, a, batch, n, "spd_logdet")?;
    Ok((0..batch)
        .map(|b| {
            let lb = &l[b * n * n..];
            let two = T::one() + T::one();
            (0..n).map(|i| lb[i * n + i].ln()).fold(T::zero(), |s, x| s + x) * two
        })
        .collect())
}

pub fn sym_eigen<T: CpuElem>(a: &[T], batch: usize, n: usize) -> Result<(Vec<T>, Vec<T>)> {
    let parts: Result<Vec<(Vec<T>, Vec<T>)>> = map_batch(batch, n, |bi| {
        let am = MatRef::from_row_major_slice(&a[bi * n * n..(bi + 1) * n * n], n, n);
        if let Some(i) = (0..n * n).find(|&i| !a[bi * n * n + i].is_finite()) {
            return Err(Error::NonFinite {
                what: format!("sym_eigen: matrix {bi}"),
                index: i,
                value: a[bi * n * n + i].f64(),
            });
        }
        let evd = am.self_adjoint_eigen(Side::Lower).map_err(|e| Error::Backend {
            backend: "cpu".into(),
            message: format!(
                "sym_eigen: matrix {bi} of order {n}: eigen-decomposition did not converge ({e:?})"
            ),
        })?;
        let s = evd.S().column_vector();
        let u = evd.U();
        // faer sorts increasing; we return decreasing.
        let vals: Vec<T> = (0..n).rev().map(|i| s[i]).collect();
        let mut vecs = vec![T::zero(); n * n];
        for r in 0..n {
            for c in 0..n {
                vecs[r * n + c] = u[(r, n - 1 - c)];
            }
        }
        Ok((vals, vecs))
    });
    let parts = parts?;
    let vals = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
    let vecs = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
    Ok((vals, vecs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_spd_inverse_and_logdet() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]]: det = 4 (15 - 1) - 2 (6 - 0) = 44.
        let a = [4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let be = CpuBackend::<f64>::sequential();
        let (inv, ld) = spd_inverse_logdet(&be, &a, 1, 3).expect("SPD");
        assert!((ld[0] - 44f64.ln()).abs() < 1e-14);
        for i in 0..3 {
            for j in 0..3 {
                let s: f64 = (0..3).map(|p| a[i * 3 + p] * inv[p * 3 + j]).sum();
                assert!((s - if i == j { 1.0 } else { 0.0 }).abs() < 1e-14);
            }
        }
        let bad = [1.0, 2.0, 2.0, 1.0];
        assert!(spd_inverse_logdet(&be, &bad, 1, 2).is_err());
    }
}
