//! Complex Hermitian linear algebra of the CPU backend (the per-frequency operators of the invariant ReduNet, 4.1.20-4.1.22): Cholesky `A = L L^H`, solves, inverses and log-determinants, small inverses eight at a time across SIMD lanes.

use crate::linalg::{check_finite, not_pd};
use crate::CpuElem;
use num_complex::Complex;
use rate_core::Result;
use rayon::prelude::*;

fn to_complex<T: CpuElem>(re: &[T], im: &[T]) -> Vec<Complex<T>> {
    re.iter().zip(im).map(|(&r, &i)| Complex::new(r, i)).collect()
}

fn split<T: CpuElem>(z: &[Complex<T>]) -> (Vec<T>, Vec<T>) {
    (z.iter().map(|c| c.re).collect(), z.iter().map(|c| c.im).collect())
}

/// In-place lower Cholesky `A = L L^H` of one Hermitian matrix (the lower triangle is read).
fn herm_chol<T: CpuElem>(l: &mut [Complex<T>], n: usize) -> std::result::Result<(), (usize, f64)> {
    for j in 0..n {
        let mut d = l[j * n + j].re;
        for k in 0..j {
            d -= l[j * n + k].norm_sqr();
        }
        if d.is_nan() || d <= T::zero() {
            return Err((j, d.f64()));
        }
        let d = d.sqrt();
        l[j * n + j] = Complex::new(d, T::zero());
        let inv = T::one() / d;
        for i in j + 1..n {
            let mut s = l[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k].conj();
            }
            l[i * n + j] = s * inv;
        }
        for i in 0..j {
            l[i * n + j] = Complex::new(T::zero(), T::zero());
        }
    }
    Ok(())
}

/// Solves `L L^H X = B` in place.
fn herm_chol_solve<T: CpuElem>(l: &[Complex<T>], x: &mut [Complex<T>], n: usize, nrhs: usize) {
    for i in 0..n {
        for k in 0..i {
            let lik = l[i * n + k];
            for c in 0..nrhs {
                x[i * nrhs + c] -= lik * x[k * nrhs + c];
            }
        }
        let inv = T::one() / l[i * n + i].re;
        for c in 0..nrhs {
            x[i * nrhs + c] *= inv;
        }
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let lki = l[k * n + i].conj();
            for c in 0..nrhs {
                x[i * nrhs + c] -= lki * x[k * nrhs + c];
            }
        }
        let inv = T::one() / l[i * n + i].re;
        for c in 0..nrhs {
            x[i * nrhs + c] *= inv;
        }
    }
}

fn herm_factor<T: CpuElem>(
    re: &[T],
    im: &[T],
    bi: usize,
    n: usize,
    op: &'static str,
) -> Result<Vec<Complex<T>>> {
    let r = bi * n * n..(bi + 1) * n * n;
    check_finite(&re[r.clone()], bi, op)?;
    check_finite(&im[r.clone()], bi, op)?;
    let mut l = to_complex(&re[r.clone()], &im[r]);
    herm_chol(&mut l, n).map_err(|(row, p)| not_pd(op, bi, n, row, p))?;
    Ok(l)
}

/// `o += (ar + i ai) (br + i bi)` elementwise over equal-length slices (split planes).
#[inline(always)]
fn caxpy<T: CpuElem>(or: &mut [T], oi: &mut [T], ar: T, ai: T, br: &[T], bi: &[T]) {
    let n = or.len();
    let (oi, br, bi) = (&mut oi[..n], &br[..n], &bi[..n]);
    for q in 0..n {
        or[q] += ar * br[q] - ai * bi[q];
        oi[q] += ar * bi[q] + ai * br[q];
    }
}

/// Inverse of one Hermitian positive definite matrix (row-major, split planes)
/// as `A^-1 = L^-H L^-1`: right-looking Cholesky, triangular inverse and the
/// product, every inner loop an axpy over a contiguous row (`2 n^3 / 3`
/// complex multiply-adds, vectorisable). Writes the full matrix into `xr, xi`
/// and returns `log det A = 2 sum_j ln L_jj`.
fn herm_inverse_one<T: CpuElem>(
    a_re: &[T],
    a_im: &[T],
    n: usize,
    xr: &mut [T],
    xi: &mut [T],
) -> std::result::Result<T, (usize, f64)> {
    let z = T::zero();
    // Lower Cholesky factor L (A = L L^H), built in place from the lower triangle.
    let mut lr = a_re.to_vec();
    let mut li = a_im.to_vec();
    let (mut cr, mut ci) = (vec![z; n], vec![z; n]);
    for j in 0..n {
        let d = lr[j * n + j];
        if d.is_nan() || d <= z {
            return Err((j, d.f64()));
        }
        let d = d.sqrt();
        let inv = T::one() / d;
        lr[j * n + j] = d;
        li[j * n + j] = z;
        for i in j + 1..n {
            lr[i * n + j] *= inv;
            li[i * n + j] *= inv;
            cr[i] = lr[i * n + j];
            ci[i] = -li[i * n + j];
        }
        // A[i][k] -= L[i][j] conj(L[k][j]) for j < k <= i
        for i in j + 1..n {
            let (ar, ai) = (-cr[i], ci[i]);
            let (or, oi) = (&mut lr[i * n + j + 1..i * n + i + 1], &mut li[i * n + j + 1..i * n + i + 1]);
            caxpy(or, oi, ar, ai, &cr[j + 1..=i], &ci[j + 1..=i]);
        }
    }
    // M = L^-1 (lower), row by row: M[i][..i] = -(sum_k<i L[i][k] M[k][..=k]) / L[i][i].
    let mut mr = vec![z; n * n];
    let mut mi = vec![z; n * n];
    for i in 0..n {
        let inv = T::one() / lr[i * n + i];
        let (head_r, tail_r) = mr.split_at_mut(i * n);
        let (head_i, tail_i) = mi.split_at_mut(i * n);
        let (acc_r, acc_i) = (&mut tail_r[..n], &mut tail_i[..n]);
        for k in 0..i {
            let (ar, ai) = (lr[i * n + k], li[i * n + k]);
            caxpy(
                &mut acc_r[..=k],
                &mut acc_i[..=k],
                ar,
                ai,
                &head_r[k * n..=k * n + k],
                &head_i[k * n..=k * n + k],
            );
        }
        for q in 0..i {
            acc_r[q] = -acc_r[q] * inv;
            acc_i[q] = -acc_i[q] * inv;
        }
        acc_r[i] = inv;
    }
    // X = M^H M: X[p][..=k] += conj(M[k][p]) M[k][..=k] for p <= k.
    xr.iter_mut().for_each(|x| *x = z);
    xi.iter_mut().for_each(|x| *x = z);
    for k in 0..n {
        let (rr, ri) = (&mr[k * n..=k * n + k], &mi[k * n..=k * n + k]);
        for p in 0..=k {
            let (ar, ai) = (rr[p], -ri[p]);
            caxpy(&mut xr[p * n..=p * n + k], &mut xi[p * n..=p * n + k], ar, ai, rr, ri);
        }
    }
    let half = (0..n).fold(z, |s, j| s + lr[j * n + j].ln());
    Ok(half + half)
}

pub fn herm_inverse<T: CpuElem>(re: &[T], im: &[T], batch: usize, n: usize) -> Result<(Vec<T>, Vec<T>)> {
    herm_inverse_logdet(re, im, batch, n, "herm_inverse").map(|(xr, xi, _)| (xr, xi))
}

/// Matrices that [`herm_inverse_lanes`] inverts together, one per SIMD lane
/// (eight f32 fill an AVX2 register, eight f64 two).
const LANES: usize = 8;

/// Orders up to which [`herm_inverse_logdet`] inverts matrices eight at a time,
/// lane by lane (above it, one matrix per task: its rows are long enough to vectorise).
const LANE_MAX_N: usize = 48;

/// One entry of eight matrices.
type Lane<T> = [T; LANES];

/// `o += a b` over rows of lane entries (complex, split planes): the inner loop
/// of [`herm_inverse_lanes`], one SIMD operation per entry for all eight matrices.
#[inline(always)]
fn lane_caxpy<T: CpuElem>(
    or: &mut [Lane<T>],
    oi: &mut [Lane<T>],
    (ar, ai): (Lane<T>, Lane<T>),
    br: &[Lane<T>],
    bi: &[Lane<T>],
) {
    for (((o_r, o_i), b_r), b_i) in or.iter_mut().zip(oi.iter_mut()).zip(br).zip(bi) {
        let (r0, i0) = (*o_r, *o_i);
        *o_r = std::array::from_fn(|l| r0[l] + (ar[l] * b_r[l] - ai[l] * b_i[l]));
        *o_i = std::array::from_fn(|l| i0[l] + (ar[l] * b_i[l] + ai[l] * b_r[l]));
    }
}

#[inline(always)]
fn lane_map<T: CpuElem>(a: Lane<T>, f: impl Fn(T) -> T) -> Lane<T> {
    std::array::from_fn(|l| f(a[l]))
}

/// Up to eight Hermitian positive definite matrices of one order, inverted
/// together (see [`herm_inverse_lanes`]), compiled for the CPU's best
/// instruction set by `pulp`.
struct LaneInverse<'a, T> {
    a_re: &'a [T],
    a_im: &'a [T],
    n: usize,
    xr: &'a mut [T],
    xi: &'a mut [T],
    ld: &'a mut [T],
}

impl<T: CpuElem> pulp::WithSimd for LaneInverse<'_, T> {
    type Output = std::result::Result<(), (usize, usize, f64)>;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        herm_inverse_lanes(self)
    }
}

/// The algorithm of [`herm_inverse_one`] (Cholesky, triangular inverse, `M^H M`)
/// on up to eight matrices at once: entry `e` of matrix `l` sits in lane `l`
/// of entry `e`, so every scalar step of the algorithm is one vector
/// operation whatever the order (a 20 x 20 matrix's rows are too short to
/// vectorise one matrix at a time). Unused lanes hold the identity. `M^H M`
/// is built on its lower triangle and mirrored (exactly Hermitian). On a
/// non-positive pivot returns `(matrix, row, pivot)`.
#[inline(always)]
fn herm_inverse_lanes<T: CpuElem>(k: LaneInverse<'_, T>) -> std::result::Result<(), (usize, usize, f64)> {
    let LaneInverse { a_re, a_im, n, xr, xi, ld } = k;
    let nn = n * n;
    let count = ld.len();
    let (z, one) = (T::zero(), T::one());
    let zero: Lane<T> = [z; LANES];
    let (mut lr, mut li) = (vec![zero; nn], vec![zero; nn]);
    for l in 0..LANES {
        if l < count {
            let (sr, si) = (&a_re[l * nn..(l + 1) * nn], &a_im[l * nn..(l + 1) * nn]);
            for (e, (&r, &i)) in sr.iter().zip(si).enumerate() {
                lr[e][l] = r;
                li[e][l] = i;
            }
        } else {
            (0..n).for_each(|d| lr[d * n + d][l] = one);
        }
    }
    // Lower Cholesky factor in place: A[i][q] -= L[i][j] conj(L[q][j]) for j < q <= i.
    let (mut cr, mut ci) = (vec![zero; n], vec![zero; n]);
    for j in 0..n {
        let d = lr[j * n + j];
        if let Some(l) = (0..LANES).find(|&l| d[l].is_nan() || d[l] <= z) {
            return Err((l, j, d[l].f64()));
        }
        let s = lane_map(d, |x| x.sqrt());
        let inv = lane_map(s, |x| one / x);
        lr[j * n + j] = s;
        li[j * n + j] = zero;
        for i in j + 1..n {
            for l in 0..LANES {
                lr[i * n + j][l] *= inv[l];
                li[i * n + j][l] *= inv[l];
            }
            cr[i] = lr[i * n + j];
            ci[i] = lane_map(li[i * n + j], |x| -x);
        }
        for i in j + 1..n {
            let a = (lane_map(cr[i], |x| -x), ci[i]);
            let row = i * n + j + 1..i * n + i + 1;
            lane_caxpy(&mut lr[row.clone()], &mut li[row], a, &cr[j + 1..=i], &ci[j + 1..=i]);
        }
    }
    // M = L^-1 (lower), row by row: M[i][..i] = -(sum_k<i L[i][k] M[k][..=k]) / L[i][i].
    let (mut mr, mut mi) = (vec![zero; nn], vec![zero; nn]);
    for i in 0..n {
        let inv = lane_map(lr[i * n + i], |x| one / x);
        let (head_r, tail_r) = mr.split_at_mut(i * n);
        let (head_i, tail_i) = mi.split_at_mut(i * n);
        for kk in 0..i {
            let a = (lr[i * n + kk], li[i * n + kk]);
            let src = kk * n..kk * n + kk + 1;
            lane_caxpy(&mut tail_r[..=kk], &mut tail_i[..=kk], a, &head_r[src.clone()], &head_i[src]);
        }
        for q in 0..i {
            for l in 0..LANES {
                tail_r[q][l] = -tail_r[q][l] * inv[l];
                tail_i[q][l] = -tail_i[q][l] * inv[l];
            }
        }
        tail_r[i] = inv;
    }
    // X = M^H M on the lower triangle: X[p][..=p] += conj(M[k][p]) M[k][..=p] for p <= k.
    let (mut yr, mut yi) = (vec![zero; nn], vec![zero; nn]);
    for kk in 0..n {
        let (rr, ri) = (&mr[kk * n..=kk * n + kk], &mi[kk * n..=kk * n + kk]);
        for p in 0..=kk {
            let a = (rr[p], lane_map(ri[p], |x| -x));
            let dst = p * n..p * n + p + 1;
            lane_caxpy(&mut yr[dst.clone()], &mut yi[dst], a, &rr[..=p], &ri[..=p]);
        }
    }
    for l in 0..count {
        let (or, oi) = (&mut xr[l * nn..(l + 1) * nn], &mut xi[l * nn..(l + 1) * nn]);
        for p in 0..n {
            for q in 0..=p {
                let (re, im) = (yr[p * n + q][l], yi[p * n + q][l]);
                or[p * n + q] = re;
                oi[p * n + q] = im;
                or[q * n + p] = re;
                oi[q * n + p] = -im;
            }
        }
        let half = (0..n).fold(z, |s, j| s + lr[j * n + j][l].ln());
        ld[l] = half + half;
    }
    Ok(())
}

/// [`herm_inverse`] with the log-determinants `2 sum_j ln L_jj` of the same factorisations.
pub fn herm_inverse_logdet<T: CpuElem>(
    re: &[T],
    im: &[T],
    batch: usize,
    n: usize,
    op: &'static str,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let mut xr = vec![T::zero(); batch * n * n];
    let mut xi = vec![T::zero(); batch * n * n];
    let mut ld = vec![T::zero(); batch];
    if n == 0 {
        return Ok((xr, xi, ld));
    }
    if n <= LANE_MAX_N && batch > 1 {
        let nn = n * n;
        let group = LANES * nn;
        xr.par_chunks_mut(group)
            .zip(xi.par_chunks_mut(group))
            .zip(ld.par_chunks_mut(LANES))
            .enumerate()
            .try_for_each(|(g, ((or, oi), l))| {
                let first = g * LANES;
                let r = first * nn..(first + l.len()) * nn;
                for (j, (mr, mi)) in
                    re[r.clone()].chunks_exact(nn).zip(im[r.clone()].chunks_exact(nn)).enumerate()
                {
                    check_finite(mr, first + j, op)?;
                    check_finite(mi, first + j, op)?;
                }
                let kernel = LaneInverse { a_re: &re[r.clone()], a_im: &im[r], n, xr: or, xi: oi, ld: l };
                pulp::Arch::new()
                    .dispatch(kernel)
                    .map_err(|(lane, row, p)| not_pd(op, first + lane, n, row, p))
            })?;
        return Ok((xr, xi, ld));
    }
    xr.par_chunks_mut(n * n).zip(xi.par_chunks_mut(n * n)).zip(ld.par_iter_mut()).enumerate().try_for_each(
        |(bi, ((or, oi), l))| {
            let r = bi * n * n..(bi + 1) * n * n;
            check_finite(&re[r.clone()], bi, op)?;
            check_finite(&im[r.clone()], bi, op)?;
            *l = herm_inverse_one(&re[r.clone()], &im[r], n, or, oi)
                .map_err(|(row, p)| not_pd(op, bi, n, row, p))?;
            Ok(())
        },
    )?;
    Ok((xr, xi, ld))
}

/// The textbook version of [`herm_inverse`] (Cholesky, then `n` solves against
/// the identity), kept as the reference the fast kernel is tested against.
#[cfg(test)]
pub fn herm_inverse_by_solves<T: CpuElem>(
    re: &[T],
    im: &[T],
    batch: usize,
    n: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let parts: Result<Vec<Vec<Complex<T>>>> = (0..batch)
        .into_par_iter()
        .map(|bi| {
            let l = herm_factor(re, im, bi, n, "herm_inverse")?;
            let mut x = vec![Complex::new(T::zero(), T::zero()); n * n];
            for i in 0..n {
                x[i * n + i] = Complex::new(T::one(), T::zero());
            }
            herm_chol_solve(&l, &mut x, n, n);
            Ok(x)
        })
        .collect();
    Ok(split(&parts?.concat()))
}

pub fn herm_logdet<T: CpuElem>(re: &[T], im: &[T], batch: usize, n: usize) -> Result<Vec<T>> {
    (0..batch)
        .into_par_iter()
        .map(|bi| {
            let l = herm_factor(re, im, bi, n, "herm_logdet")?;
            let two = T::one() + T::one();
            Ok((0..n).map(|i| l[i * n + i].re.ln()).fold(T::zero(), |s, x| s + x) * two)
        })
        .collect()
}

pub fn herm_solve<T: CpuElem>(
    a: (&[T], &[T]),
    b: (&[T], &[T]),
    batch: usize,
    n: usize,
    nrhs: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let parts: Result<Vec<Vec<Complex<T>>>> = (0..batch)
        .into_par_iter()
        .map(|bi| {
            let l = herm_factor(a.0, a.1, bi, n, "herm_solve")?;
            let r = bi * n * nrhs..(bi + 1) * n * nrhs;
            let mut x = to_complex(&b.0[r.clone()], &b.1[r]);
            herm_chol_solve(&l, &mut x, n, nrhs);
            Ok(x)
        })
        .collect();
    Ok(split(&parts?.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_herm_inverse_matches_solves_and_inverts() {
        // Random Hermitian positive definite matrices of several orders.
        for n in [1usize, 2, 3, 7, 20] {
            let batch = 3;
            let (re, im) = random_hpd::<f64>(batch, n, 12345 + n as u64);
            let (fr, fi) = herm_inverse(&re, &im, batch, n).unwrap();
            let (sr, si) = herm_inverse_by_solves(&re, &im, batch, n).unwrap();
            let d =
                fr.iter().zip(&sr).chain(fi.iter().zip(&si)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(d < 1e-13 * n as f64, "n = {n}: {d}");
            // exactly Hermitian
            for b in 0..batch {
                for i in 0..n {
                    for j in 0..n {
                        let (p, q) = (b * n * n + i * n + j, b * n * n + j * n + i);
                        assert_eq!(fr[p], fr[q]);
                        assert_eq!(fi[p], -fi[q]);
                    }
                }
            }
        }
        let bad = herm_inverse(&[1.0f64, 2.0, 2.0, 1.0], &[0.0; 4], 1, 2);
        assert!(bad.is_err());
    }

    /// `batch` random Hermitian positive definite `n x n` matrices `G G^H + n I` (split planes).
    fn random_hpd<T: CpuElem>(batch: usize, n: usize, seed: u64) -> (Vec<T>, Vec<T>) {
        let mut s = seed;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let (mut re, mut im) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let g: Vec<(f64, f64)> = (0..n * n).map(|_| (rnd(), rnd())).collect();
            for i in 0..n {
                for j in 0..n {
                    let (mut sr, mut si) = (0.0, 0.0);
                    for k in 0..n {
                        let ((ar, ai), (br, bi)) = (g[i * n + k], g[j * n + k]);
                        sr += ar * br + ai * bi;
                        si += ai * br - ar * bi;
                    }
                    re.push(T::of(sr + if i == j { n as f64 } else { 0.0 }));
                    im.push(T::of(si));
                }
            }
        }
        (re, im)
    }

    /// The eight-lane path (several groups, the last one partial) gives the
    /// one-matrix kernel's inverses and log-determinants, in f64 and f32, and
    /// names the right matrix of a later group when it is not positive definite.
    #[test]
    fn lane_inverses_match_one_matrix_kernel() {
        fn check<T: CpuElem>(tol: f64) {
            for (n, batch) in [(1usize, 5usize), (3, 9), (20, 19), (LANE_MAX_N, 10)] {
                let (re, im) = random_hpd::<T>(batch, n, 7 + n as u64);
                let (xr, xi, ld) = herm_inverse_logdet(&re, &im, batch, n, "t").unwrap();
                let nn = n * n;
                for b in 0..batch {
                    let (mut or, mut oi) = (vec![T::zero(); nn], vec![T::zero(); nn]);
                    let r = b * nn..(b + 1) * nn;
                    let l = herm_inverse_one(&re[r.clone()], &im[r.clone()], n, &mut or, &mut oi).unwrap();
                    let scale = or.iter().map(|x| x.f64().abs()).fold(0.0, f64::max);
                    let d = or
                        .iter()
                        .zip(&xr[r.clone()])
                        .chain(oi.iter().zip(&xi[r]))
                        .map(|(a, b)| (a.f64() - b.f64()).abs())
                        .fold(0.0, f64::max);
                    assert!(d <= tol * scale, "n = {n}, matrix {b}: {d} (scale {scale})");
                    assert!((l.f64() - ld[b].f64()).abs() <= tol * l.f64().abs().max(1.0), "log-det of {b}");
                }
            }
            // matrix 11 (second group) has a negative pivot in row 1
            let (mut re, im) = random_hpd::<T>(13, 4, 3);
            re[11 * 16 + 5] = T::of(-1.0);
            match herm_inverse_logdet(&re, &im, 13, 4, "t") {
                Err(rate_core::Error::NotPositiveDefinite { index: 11, n: 4, .. }) => {}
                other => panic!("expected matrix 11 not positive definite, got {other:?}"),
            }
        }
        check::<f64>(1e-12);
        check::<f32>(1e-4);
    }
}
