//! Cyclic signal domains (1-D shifts, 2-D translations), their unitary DFTs and half spectra: the diagonalisation behind 4.1.19-4.1.22.
//!
//! A signal of the domain is `N` values (`N = T` for a line, `N = H W` for a
//! plane) indexed by the cyclic group `Z_T` or `Z_H x Z_W`. Every circulant
//! (block-circulant) operator of the group is diagonalised by the DFT, so the
//! invariant ReduNet works on the spectrum. Real signals have a
//! conjugate-symmetric spectrum `v(-f) = conj v(f)`; only the `F` frequencies
//! with a non-negative last index (`T/2 + 1`, or `H (W/2 + 1)`) are stored,
//! flattened row-major, and sums over the full spectrum weight each stored
//! frequency by the number of full-spectrum frequencies it stands for
//! ([`Domain::weights`]: 1 for self-conjugate ones, 2 for the others).

use crate::{Error, Result};
use rate_core::{ComplexTensor, FftNorm, Kernels, Tensor};

/// The cyclic group acting on the signals: shifts of a line or translations of a plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// 1-D signals of length `len` under cyclic shifts (`samples x channels x len`).
    Line {
        /// Signal length `T`.
        len: usize,
    },
    /// 2-D signals `height x width` under cyclic translations (`samples x channels x height x width`).
    Plane {
        /// Height `H`.
        height: usize,
        /// Width `W`.
        width: usize,
    },
}

impl Domain {
    /// Reads the domain from a signal tensor shape: `[m, C, T]` is a line,
    /// `[m, C, H, W]` a plane. Returns `(samples, channels, domain)`; every size must be positive.
    pub fn of_signals(what: &str, shape: &[usize]) -> Result<(usize, usize, Domain)> {
        let domain = match shape.len() {
            3 => Domain::Line { len: shape[2] },
            4 => Domain::Plane { height: shape[2], width: shape[3] },
            _ => {
                return Err(Error::Config(format!(
                    "{what}: signals must be samples x channels x length (rank 3) or samples x channels x height x width (rank 4), got shape {shape:?}"
                )))
            }
        };
        if let Some(ax) = shape.iter().position(|&s| s == 0) {
            return Err(Error::Config(format!(
                "{what}: signal shape {shape:?} has a zero length on axis {ax}; samples, channels and lengths must be positive"
            )));
        }
        Ok((shape[0], shape[1], domain))
    }

    /// The signal axes: `[T]` or `[H, W]`.
    pub fn dims(&self) -> Vec<usize> {
        match *self {
            Domain::Line { len } => vec![len],
            Domain::Plane { height, width } => vec![height, width],
        }
    }

    /// Number of axes of the domain (1 or 2).
    pub fn rank(&self) -> usize {
        match self {
            Domain::Line { .. } => 1,
            Domain::Plane { .. } => 2,
        }
    }

    /// Number of group elements = number of full-spectrum frequencies, `N`.
    pub fn size(&self) -> usize {
        self.dims().iter().product()
    }

    /// Number of stored (half-spectrum) frequencies, `F`.
    pub fn stored_frequencies(&self) -> usize {
        match *self {
            Domain::Line { len } => len / 2 + 1,
            Domain::Plane { height, width } => height * (width / 2 + 1),
        }
    }

    /// Length of the last axis of the half spectrum.
    fn half_last(&self) -> usize {
        match *self {
            Domain::Line { len } => len / 2 + 1,
            Domain::Plane { width, .. } => width / 2 + 1,
        }
    }

    /// Weight of each stored frequency in a sum over the full spectrum (length `F`).
    pub fn weights(&self) -> Vec<f64> {
        let (rows, last) = match *self {
            Domain::Line { len } => (1, len),
            Domain::Plane { height, width } => (height, width),
        };
        let half = rate_core::circulant::half_spectrum_weights(last);
        (0..rows).flat_map(|_| half.iter().copied()).collect()
    }

    /// For every full-spectrum frequency (row-major over [`Self::dims`]): the
    /// stored frequency it is read from and whether it is that one's conjugate.
    pub fn full_spectrum_map(&self) -> Vec<(usize, bool)> {
        match *self {
            Domain::Line { len } => {
                let f = len / 2 + 1;
                (0..len).map(|t| if t < f { (t, false) } else { (len - t, true) }).collect()
            }
            Domain::Plane { height, width } => {
                let wf = width / 2 + 1;
                let mut out = Vec::with_capacity(height * width);
                for h in 0..height {
                    for w in 0..width {
                        out.push(if w < wf {
                            (h * wf + w, false)
                        } else {
                            (((height - h) % height) * wf + (width - w), true)
                        });
                    }
                }
                out
            }
        }
    }

    /// Stored frequency indices `(k_h, k_w)` of each stored frequency (`k_h = 0` on a line).
    fn stored_indices(&self) -> Vec<(usize, usize)> {
        let wf = self.half_last();
        (0..self.stored_frequencies()).map(|f| (f / wf, f % wf)).collect()
    }

    fn check_shift(&self, shift: &[isize]) -> Result<()> {
        if shift.len() != self.rank() {
            return Err(Error::Config(format!(
                "a shift of a {}-D domain needs {} amounts, got {shift:?}",
                self.rank(),
                self.rank()
            )));
        }
        Ok(())
    }

    /// Phase `theta(f) = 2 pi (k . s / dims)` of the cyclic shift `s` at every
    /// stored frequency: `roll(x, s)` has spectrum `e^{-i theta(f)} v(f)`.
    pub fn shift_phases(&self, shift: &[isize]) -> Result<Vec<f64>> {
        self.check_shift(shift)?;
        let dims = self.dims();
        let tau = 2.0 * std::f64::consts::PI;
        Ok(self
            .stored_indices()
            .into_iter()
            .map(|(kh, kw)| match *self {
                Domain::Line { len } => {
                    tau * ((kw as i128 * shift[0] as i128).rem_euclid(len as i128)) as f64 / len as f64
                }
                Domain::Plane { .. } => {
                    let (h, w) = (dims[0] as i128, dims[1] as i128);
                    let a = (kh as i128 * shift[0] as i128).rem_euclid(h) as f64 / h as f64;
                    let b = (kw as i128 * shift[1] as i128).rem_euclid(w) as f64 / w as f64;
                    tau * (a + b)
                }
            })
            .collect())
    }

    /// For each position of the flattened domain, the flattened position that
    /// [`Self::roll`] by `shift` reads: `roll(x, s)[t] = x[index[t]]`.
    pub fn roll_index(&self, shift: &[isize]) -> Result<Vec<usize>> {
        self.check_shift(shift)?;
        let wrap = |t: usize, s: isize, n: usize| (t as isize - s).rem_euclid(n as isize) as usize;
        Ok(match *self {
            Domain::Line { len } => (0..len).map(|t| wrap(t, shift[0], len)).collect(),
            Domain::Plane { height, width } => (0..height * width)
                .map(|p| wrap(p / width, shift[0], height) * width + wrap(p % width, shift[1], width))
                .collect(),
        })
    }

    /// Cyclically shifts signals `[.., dims]` by `shift` (one amount per domain axis):
    /// `out[t] = x[t - s]`, NumPy's `roll`.
    pub fn roll<B: Kernels>(&self, x: &Tensor<B>, shift: &[isize]) -> Result<Tensor<B>> {
        let index = self.roll_index(shift)?;
        let dims = self.dims();
        let r = x.rank();
        if r < dims.len() || x.shape()[r - dims.len()..] != dims[..] {
            return Err(Error::Config(format!(
                "roll: signal shape {:?} does not end with the domain {:?}",
                x.shape(),
                dims
            )));
        }
        // one gather over the flattened domain axes
        let lead = x.shape()[..r - dims.len()].iter().product::<usize>();
        Ok(x.reshape(&[lead, self.size()]).index_select(1, &index).reshape(x.shape()))
    }

    /// DFT of real signals `[a, b, dims..]` over the domain axes, stored
    /// half spectrum laid out per frequency: `[F, a, b]`.
    pub fn forward<B: Kernels>(&self, x: &Tensor<B>, norm: FftNorm) -> ComplexTensor<B> {
        let s = x.shape();
        assert!(
            s.len() == 2 + self.rank() && s[2..] == self.dims()[..],
            "Domain::forward: shape {s:?} is not [a, b, {:?}]",
            self.dims()
        );
        let (a, b) = (s[0], s[1]);
        match *self {
            Domain::Line { .. } => x.rfft(2, norm).permute(&[2, 0, 1]),
            Domain::Plane { height, width } => {
                let v = x.rfft(3, norm).fft(2, false, norm);
                v.permute(&[2, 3, 0, 1]).reshape(&[height * (width / 2 + 1), a, b])
            }
        }
    }

    /// Inverse of [`Self::forward`]: a half spectrum `[F, a, b]` of real signals back to `[a, b, dims..]`.
    pub fn inverse<B: Kernels>(&self, v: &ComplexTensor<B>, norm: FftNorm) -> Tensor<B> {
        let s = v.shape();
        assert!(
            s.len() == 3 && s[0] == self.stored_frequencies(),
            "Domain::inverse: shape {s:?} is not [{}, a, b]",
            self.stored_frequencies()
        );
        let (a, b) = (s[1], s[2]);
        match *self {
            Domain::Line { len } => v.permute(&[1, 2, 0]).irfft(2, len, norm),
            Domain::Plane { height, width } => {
                let wf = width / 2 + 1;
                let p = v.reshape(&[height, wf, a, b]).permute(&[2, 3, 0, 1]);
                p.fft(2, true, norm).irfft(3, width, norm)
            }
        }
    }

    /// Extends a stored half spectrum `[.., F, ..]` (frequency on `axis`) to
    /// the full spectrum `[.., N, ..]` by conjugate symmetry, full frequencies
    /// flattened row-major over [`Self::dims`].
    pub fn full_spectrum<B: Kernels>(&self, v: &ComplexTensor<B>, axis: usize) -> ComplexTensor<B> {
        assert_eq!(
            v.shape()[axis],
            self.stored_frequencies(),
            "Domain::full_spectrum: axis {axis} of {:?} is not the {} stored frequencies",
            v.shape(),
            self.stored_frequencies()
        );
        let map = self.full_spectrum_map();
        let idx: Vec<usize> = map.iter().map(|&(i, _)| i).collect();
        let sign: Vec<f64> = map.iter().map(|&(_, c)| if c { -1.0 } else { 1.0 }).collect();
        let mut sshape = vec![1; v.shape().len()];
        sshape[axis] = sign.len();
        let sign = Tensor::from_f64(v.re.backend(), &sign, &sshape);
        ComplexTensor::new(
            v.re.index_select(axis as isize, &idx),
            v.im.index_select(axis as isize, &idx).mul(&sign),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_count_every_full_frequency_once() {
        for d in [
            Domain::Line { len: 7 },
            Domain::Line { len: 8 },
            Domain::Plane { height: 3, width: 5 },
            Domain::Plane { height: 4, width: 6 },
        ] {
            let w = d.weights();
            assert_eq!(w.len(), d.stored_frequencies());
            assert_eq!(w.iter().sum::<f64>() as usize, d.size(), "{d:?}");
            let map = d.full_spectrum_map();
            let mut count = vec![0.0; d.stored_frequencies()];
            for (i, _) in map {
                count[i] += 1.0;
            }
            assert_eq!(count, w, "{d:?}");
        }
    }
}
