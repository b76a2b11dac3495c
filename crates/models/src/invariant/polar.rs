//! Polar resampling of images for rotation invariance (the rotation-MNIST example, Figure 4.10): rotations about the centre become cyclic shifts along the angle axis.
//!
//! An image `H x W` is sampled on a polar grid about its centre
//! `((H - 1)/2, (W - 1)/2)` (row, column), at radii
//! `r_i = (i + 1) r_max / R` (`i = 0..R`) and angles
//! `gamma_a = 2 pi a / A` (`a = 0..A`), the point of radius `r` and angle
//! `gamma` being row `c_h + r sin gamma`, column `c_w + r cos gamma`. Values
//! come from bilinear interpolation of the four neighbouring pixels; pixels
//! outside the image count as zero. The result is a multichannel 1-D signal
//! `R x A` (radii are channels, angles are time). Rotating the image by
//! `2 pi s / A` shifts the polar sample cyclically by `s` angle steps
//! ([`rotate_polar`]); for quarter turns of a square image (`A` divisible by
//! 4) the bilinear samples agree exactly, e.g. NumPy's `rot90` is a shift by `-A/4`.

use crate::{Error, Result};
use rate_core::{Kernels, Tensor};

/// The polar sampling grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolarGrid {
    /// Number of radii `R` (output channels).
    pub radii: usize,
    /// Number of angles `A` (output length).
    pub angles: usize,
    /// Largest radius in pixels; `None` takes `(min(H, W) - 1) / 2`, the largest circle inside the image.
    pub max_radius: Option<f64>,
}

impl Default for PolarGrid {
    /// The chapter's rotation-MNIST grid: 15 radii, 200 angles.
    fn default() -> Self {
        PolarGrid { radii: 15, angles: 200, max_radius: None }
    }
}

/// Resamples images `[m, H, W]` (or `[m, C, H, W]`, giving `C R` channels,
/// radii fastest) on the polar grid: `[m, R, A]` (or `[m, C R, A]`).
pub fn polar_resample<B: Kernels>(images: &Tensor<B>, grid: &PolarGrid) -> Result<Tensor<B>> {
    let s = images.shape().to_vec();
    let (m, c, h, w) = match s.len() {
        3 => (s[0], 1, s[1], s[2]),
        4 => (s[0], s[1], s[2], s[3]),
        _ => {
            return Err(Error::Config(format!(
                "polar_resample: images must be samples x height x width or samples x channels x height x width, got shape {s:?}"
            )))
        }
    };
    if s.contains(&0) {
        return Err(Error::Config(format!("polar_resample: image shape {s:?} has a zero size")));
    }
    if grid.radii == 0 || grid.angles == 0 {
        return Err(Error::Config(format!(
            "polar_resample: the grid needs at least one radius and one angle, got {} radii and {} angles",
            grid.radii, grid.angles
        )));
    }
    let (ch, cw) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let rmax = grid.max_radius.unwrap_or((h.min(w) as f64 - 1.0) / 2.0);
    if !(rmax.is_finite() && rmax >= 0.0) {
        return Err(Error::Config(format!(
            "polar_resample: max_radius = {rmax} must be non-negative and finite"
        )));
    }
    images.check_finite("polar_resample: images")?;
    let points = grid.radii * grid.angles;
    // Four bilinear corners per point: gather index into H*W and weight.
    let mut idx = vec![vec![0usize; points]; 4];
    let mut wt = vec![vec![0.0f64; points]; 4];
    for i in 0..grid.radii {
        let r = rmax * (i + 1) as f64 / grid.radii as f64;
        for a in 0..grid.angles {
            let g = 2.0 * std::f64::consts::PI * a as f64 / grid.angles as f64;
            let (y, x) = (ch + r * g.sin(), cw + r * g.cos());
            let (y0, x0) = (y.floor(), x.floor());
            let (dy, dx) = (y - y0, x - x0);
            let p = i * grid.angles + a;
            let corners = [
                (y0, x0, (1.0 - dy) * (1.0 - dx)),
                (y0, x0 + 1.0, (1.0 - dy) * dx),
                (y0 + 1.0, x0, dy * (1.0 - dx)),
                (y0 + 1.0, x0 + 1.0, dy * dx),
            ];
            for (q, &(yy, xx, ww)) in corners.iter().enumerate() {
                if yy >= 0.0 && xx >= 0.0 && yy < h as f64 && xx < w as f64 && ww != 0.0 {
                    idx[q][p] = yy as usize * w + xx as usize;
                    wt[q][p] = ww;
                }
            }
        }
    }
    let flat = images.reshape(&[m * c, h * w]);
    let mut out: Option<Tensor<B>> = None;
    for q in 0..4 {
        let wq = Tensor::from_f64(images.backend(), &wt[q], &[1, points]);
        let term = flat.index_select(1, &idx[q]).mul(&wq);
        out = Some(match out {
            Some(o) => o.add(&term),
            None => term,
        });
    }
    let out = out.unwrap_or_else(|| Tensor::zeros(images.backend(), &[m * c, points]));
    Ok(out.reshape(&[m, c * grid.radii, grid.angles]))
}

/// Rotates polar samples `[.., A]` by `steps` angle steps (`2 pi steps / A`): a cyclic shift of the last axis, `out[a] = x[a - steps]`.
pub fn rotate_polar<B: Kernels>(x: &Tensor<B>, steps: isize) -> Result<Tensor<B>> {
    if x.rank() == 0 || x.dim(-1) == 0 {
        return Err(Error::Config(format!("rotate_polar: shape {:?} has no angle axis", x.shape())));
    }
    let a = x.dim(-1) as isize;
    if steps.rem_euclid(a) == 0 {
        return Ok(x.clone());
    }
    let idx: Vec<usize> = (0..a).map(|t| (t - steps).rem_euclid(a) as usize).collect();
    Ok(x.index_select(-1, &idx))
}
