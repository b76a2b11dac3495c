//! FFT of the wgpu backend along any axis and any length: radix-2 (in workgroup memory up to 2048 points, Stockham passes beyond) and Bluestein's chirp-z for other lengths.
//!
//! `X_k = sum_t x_t e^{-2 pi i k t / n}`. Signals are gathered contiguous
//! (zero-padded, chirped), transformed, and scattered back with the scaling.
//! Bluestein: with `w_t = e^{-i pi t^2 / n}`, `X_k = w_k sum_t (x_t w_t) conj(w_{k-t})`,
//! a circular convolution of power-of-two length `m >= 2n - 1` whose kernel
//! spectrum is computed once per length on the host in f64 and cached.

use crate::ctx::{fbits, lock, Buf, Ctx, Job};
use crate::kernels as k;
use rate_core::{AxisView, FftNorm};
use std::f64::consts::PI;

fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu backend: size {x} does not fit in 32 bits"))
}

/// Largest transform done in workgroup memory (two 2048-float planes = 16 KiB).
const SHARED_MAX: usize = 2048;

/// In-place iterative radix-2 FFT on the host (f64), forward.
fn host_fft(re: &mut [f64], im: &mut [f64]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        for start in (0..n).step_by(len) {
            for q in 0..len / 2 {
                let ang = -2.0 * PI * q as f64 / len as f64;
                let (wr, wi) = (ang.cos(), ang.sin());
                let (a, b) = (start + q, start + q + len / 2);
                let xr = re[b] * wr - im[b] * wi;
                let xi = re[b] * wi + im[b] * wr;
                re[b] = re[a] - xr;
                im[b] = im[a] - xi;
                re[a] += xr;
                im[a] += xi;
            }
        }
        len <<= 1;
    }
}

/// `w_t = e^{-i pi t^2 / n}` with `t^2` reduced mod `2n` exactly.
fn chirp(n: usize, t: usize) -> (f64, f64) {
    let r = ((t as u128 * t as u128) % (2 * n as u128)) as f64;
    let ang = -PI * r / n as f64;
    (ang.cos(), ang.sin())
}

fn table(ctx: &Ctx, name: &'static str, n: usize, make: impl FnOnce() -> Vec<f32>) -> Buf {
    if let Some(b) = lock(&ctx.tables).get(&(name, n)) {
        return b.clone();
    }
    let b = ctx.upload_words(&make());
    lock(&ctx.tables).insert((name, n), b.clone());
    b
}

/// `e^{-2 pi i k / m}` for `k < m / 2`.
fn twiddles(ctx: &Ctx, m: usize) -> Buf {
    table(ctx, "twiddle", m, || {
        (0..(m / 2).max(1))
            .flat_map(|q| {
                let ang = -2.0 * PI * q as f64 / m as f64;
                [ang.cos() as f32, ang.sin() as f32]
            })
            .collect()
    })
}

fn chirp_table(ctx: &Ctx, n: usize) -> Buf {
    table(ctx, "chirp", n, || {
        (0..n)
            .flat_map(|t| {
                let (c, s) = chirp(n, t);
                [c as f32, s as f32]
            })
            .collect()
    })
}

/// Spectrum of the Bluestein kernel `conj(w)` (forward) or `w` (inverse), wrapped to length `m`.
fn kernel_spectrum(ctx: &Ctx, n: usize, m: usize, inverse: bool) -> Buf {
    let name = if inverse { "bluestein-inverse" } else { "bluestein-forward" };
    table(ctx, name, n, || {
        let (mut re, mut im) = (vec![0.0; m], vec![0.0; m]);
        for t in 0..n {
            let (c, s) = chirp(n, t);
            let s = if inverse { s } else { -s };
            re[t] = c;
            im[t] = s;
            if t > 0 {
                re[m - t] = c;
                im[m - t] = s;
            }
        }
        host_fft(&mut re, &mut im);
        re.iter().zip(&im).flat_map(|(&r, &i)| [r as f32, i as f32]).collect()
    })
}

/// Records a power-of-two transform of `signals` contiguous complex signals of
/// length `m` held in `work`; returns the buffer holding the result.
fn record_pow2(job: &mut Job, work: Buf, signals: usize, m: usize, inverse: bool) -> Buf {
    let ctx = job.ctx;
    if m <= 1 {
        return work;
    }
    let tw = twiddles(ctx, m);
    let logm = m.trailing_zeros() as usize;
    if m <= SHARED_MAX {
        // Several short signals share one workgroup.
        let per = SHARED_MAX / m;
        let d = job.dummy();
        let p = [u(m), u(logm), u(signals), inverse as u32, u(per)];
        job.dispatch_groups(&k::FFT_SHARED, &p, &[&tw, &work, &d], signals.div_ceil(per));
        return work;
    }
    let mut src = work;
    let mut dst = ctx.alloc(2 * signals * m);
    let mut ns = 1;
    while ns < m {
        job.dispatch_1d(
            &k::FFT_PASS,
            &[u(m), u(ns), u(signals), inverse as u32],
            &[&tw, &src, &dst],
            signals * m / 2,
        );
        std::mem::swap(&mut src, &mut dst);
        ns *= 2;
    }
    src
}

/// Input signals of a transform.
pub enum Input<'a> {
    /// Complex planes.
    Complex(&'a Buf, &'a Buf),
    /// A real plane.
    Real(&'a Buf),
    /// The half spectrum of a real signal (planes), to be extended Hermitian.
    Half(&'a Buf, &'a Buf),
}

/// Scale of a transform of length `n`.
fn scale(n: usize, inverse: bool, norm: FftNorm) -> f64 {
    match (norm, inverse) {
        (FftNorm::Ortho, _) => 1.0 / (n as f64).sqrt(),
        (FftNorm::Backward, true) => 1.0 / n as f64,
        (FftNorm::Backward, false) => 1.0,
    }
}

/// Transforms the signals of length `n` of `input` (seen as `[outer, len_in, inner]`)
/// and keeps the first `keep` outputs of each: real plane and, if `want_im`, imaginary plane.
pub fn transform(
    ctx: &Ctx,
    input: Input,
    v: AxisView,
    n: usize,
    inverse: bool,
    norm: FftNorm,
    keep: usize,
    want_im: bool,
) -> (Buf, Buf) {
    let signals = v.outer * v.inner;
    let out_len = signals * keep;
    let out_re = ctx.alloc(out_len);
    let out_im = ctx.alloc(if want_im { out_len } else { 0 });
    if out_len == 0 {
        return (out_re, out_im);
    }
    if n == 0 {
        // An empty signal has an all-zero spectrum.
        return (crate::ops::full(ctx, out_len, 0.0), crate::ops::full(ctx, out_im.len(), 0.0));
    }
    let mut job = ctx.job();
    let dummy_in = job.dummy();
    let (in_re, in_im, mode) = match input {
        Input::Complex(r, i) => (r, i, 0),
        Input::Real(r) => (r, &dummy_in, 1),
        Input::Half(r, i) => (r, i, 2),
    };
    let pow2 = n.is_power_of_two();
    let m = if pow2 { n } else { (2 * n - 1).next_power_of_two() };
    let chirp_mode = match (pow2, inverse) {
        (true, _) => 0u32,
        (false, false) => 1,
        (false, true) => 2,
    };
    let tab = if pow2 { job.dummy() } else { chirp_table(ctx, n) };
    let work = ctx.alloc(2 * signals * m);
    let (d5, d6) = (job.dummy(), job.dummy());
    let p = [u(v.outer), u(v.len), u(v.inner), u(n), u(m), mode, chirp_mode];
    job.dispatch_1d(&k::GATHER, &p, &[in_re, in_im, &tab, &work, &d5, &d6], signals * m);
    let res = if pow2 {
        record_pow2(&mut job, work, signals, m, inverse)
    } else {
        let spec = kernel_spectrum(ctx, n, m, inverse);
        let a = record_pow2(&mut job, work, signals, m, false);
        let (d1, d2, d5, d6) = (job.dummy(), job.dummy(), job.dummy(), job.dummy());
        let p = [u(signals), u(m), fbits(1.0 / m as f64)];
        job.dispatch_1d(&k::MUL_SPECTRUM, &p, &[&d1, &d2, &spec, &a, &d5, &d6], signals * m);
        record_pow2(&mut job, a, signals, m, true)
    };
    let d1 = job.dummy();
    let d2 = job.dummy();
    let im_slot = if want_im { out_im.clone() } else { job.dummy() };
    let p =
        [u(v.outer), u(keep), u(v.inner), u(m), chirp_mode, fbits(scale(n, inverse, norm)), want_im as u32];
    job.dispatch_1d(&k::SCATTER, &p, &[&d1, &d2, &tab, &res, &out_re, &im_slot], out_len);
    job.submit();
    (out_re, out_im)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_fft_matches_the_dft() {
        let n = 16;
        let x: Vec<(f64, f64)> = (0..n).map(|t| ((t as f64 * 0.7).sin(), (t as f64 * 0.3).cos())).collect();
        let (mut re, mut im): (Vec<f64>, Vec<f64>) = x.iter().copied().unzip();
        host_fft(&mut re, &mut im);
        for kk in 0..n {
            let (mut sr, mut si) = (0.0, 0.0);
            for (t, &(a, b)) in x.iter().enumerate() {
                let ang = -2.0 * PI * (kk * t) as f64 / n as f64;
                sr += a * ang.cos() - b * ang.sin();
                si += a * ang.sin() + b * ang.cos();
            }
            assert!((sr - re[kk]).abs() < 1e-12 && (si - im[kk]).abs() < 1e-12);
        }
    }

    #[test]
    fn chirp_reduces_the_square_exactly() {
        let n = 7;
        for t in 0..50 {
            let (c, s) = chirp(n, t);
            let ang = -PI * (t * t) as f64 / n as f64;
            assert!((c - ang.cos()).abs() < 1e-9 && (s - ang.sin()).abs() < 1e-9);
        }
    }
}
