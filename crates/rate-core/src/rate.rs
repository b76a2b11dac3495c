//! Coding rate R (4.2.2, first term of 4.1.1), compression R_c, rate reduction ΔR, and their gradient operators E and C^j (4.1.3-4.1.5) of a feature matrix, through the Gram-matrix family of `crate::operators`.
//!
//! Layout: `Z` is `m x d`, one sample per row (the chapter writes samples as
//! columns; every formula here is the chapter's with `Z` transposed).
//! `eps_sq` is epsilon squared, as in the reference code, so that
//! `alpha = d / (m eps_sq)` and `alpha_j = d / (tr(Pi_j) eps_sq)`.
//!
//! * `R(Z) = 1/2 logdet(I + alpha Z^T Z)`
//! * `R_c(Z, Pi) = sum_j tr(Pi_j)/(2m) logdet(I + alpha_j Z^T Pi_j Z)`
//! * `E = alpha (I + alpha Z^T Z)^-1`, `C^j = alpha_j (I + alpha_j Z^T Pi_j Z)^-1`
//! * `dR/dZ = Z E`, `dR_c/dZ = sum_j gamma_j Pi_j Z C^j` with `gamma_j = tr(Pi_j)/m`
//!
//! When a class has fewer samples than the dimension (`m_j < d`) the `d x d`
//! systems are replaced by `m_j x m_j` ones: Sylvester's identity for the
//! log-determinant and Woodbury's for the inverse,
//! `(I + a Z^T Z)^-1 = I - a Z^T (I + a Z Z^T)^-1 Z`.

use crate::backend::Backend;
use crate::operators::{regularised_inverses, regularised_logdets};
use crate::{Error, Result, Tensor};

/// How samples are assigned to classes.
#[derive(Clone, Debug)]
pub enum Membership<'a, B: Backend> {
    /// Hard labels `0..classes`, one per sample.
    Hard {
        /// Label of each sample.
        labels: &'a [usize],
        /// Number of classes `k`.
        classes: usize,
    },
    /// Soft memberships: `k x m`, column `i` the distribution of sample `i`
    /// over the classes (the diagonals of the chapter's `Pi_j`).
    Soft(&'a Tensor<B>),
}

impl<B: Backend> Membership<'_, B> {
    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            Membership::Hard { classes, .. } => *classes,
            Membership::Soft(p) => p.dim(0),
        }
    }

    fn check(&self, m: usize, op: &'static str) -> Result<()> {
        match self {
            Membership::Hard { labels, classes } => check_labels(labels, m, *classes, op),
            Membership::Soft(p) => {
                if p.rank() != 2 || p.dim(1) != m || p.dim(0) == 0 {
                    return Err(Error::InvalidShape {
                        op,
                        shape: p.shape().to_vec(),
                        reason: format!("soft membership must be classes x {m} with at least one class"),
                    });
                }
                // A negative or NaN weight would reach sqrt(pi) and come back as NaN.
                if let Some((i, v)) =
                    p.to_f64_vec().into_iter().enumerate().find(|(_, v)| !(*v >= 0.0 && v.is_finite()))
                {
                    return Err(Error::InvalidArgument {
                        op,
                        name: "memberships",
                        value: format!("pi[{}, {}] = {v}", i / m, i % m),
                        reason: "soft memberships must be finite and non-negative".into(),
                    });
                }
                Ok(())
            }
        }
    }
}

/// One class's share of the data: the weighted samples `sqrt(Pi_j) Z` and `tr(Pi_j)`.
struct ClassPart<B: Backend> {
    /// Rows scaled by `sqrt(pi_ij)` (hard: the class's rows).
    zw: Tensor<B>,
    /// `tr(Pi_j)`, the (soft) class size.
    size: f64,
}

fn class_parts<B: Backend>(z: &Tensor<B>, pi: &Membership<'_, B>) -> Vec<ClassPart<B>> {
    match pi {
        Membership::Hard { labels, classes } => (0..*classes)
            .map(|j| {
                let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == j).collect();
                ClassPart { zw: z.index_select(0, &idx), size: idx.len() as f64 }
            })
            .collect(),
        Membership::Soft(p) => (0..p.dim(0))
            .map(|j| {
                let w = p.narrow(0, j, 1).reshape(&[p.dim(1), 1]);
                let size = w.sum_all();
                ClassPart { zw: z.mul(&w.sqrt()), size }
            })
            .collect(),
    }
}

/// Fails unless `eps_sq` is positive and finite, with a finite reciprocal.
pub(crate) fn check_eps_sq(eps_sq: f64, op: &'static str) -> Result<()> {
    if !(eps_sq > 0.0 && eps_sq.is_finite() && (1.0 / eps_sq).is_finite()) {
        return Err(Error::InvalidArgument {
            op,
            name: "eps_sq",
            value: eps_sq.to_string(),
            reason: "must be positive and finite, with a finite reciprocal".into(),
        });
    }
    Ok(())
}

/// Fails unless there is a class, one label per sample and every label below the class count.
pub(crate) fn check_labels(labels: &[usize], m: usize, classes: usize, op: &'static str) -> Result<()> {
    if classes == 0 {
        return Err(Error::InvalidArgument {
            op,
            name: "classes",
            value: "0".into(),
            reason: "there must be at least one class".into(),
        });
    }
    if labels.len() != m {
        return Err(Error::InvalidShape {
            op,
            shape: vec![labels.len()],
            reason: format!("{} labels for {m} samples", labels.len()),
        });
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
        return Err(Error::InvalidArgument {
            op,
            name: "labels",
            value: format!("labels[{i}] = {l}"),
            reason: format!("must be below the class count {classes}"),
        });
    }
    Ok(())
}

fn check_z<B: Backend>(z: &Tensor<B>, eps_sq: f64, op: &'static str) -> Result<(usize, usize)> {
    if z.rank() != 2 || z.dim(0) == 0 || z.dim(1) == 0 {
        return Err(Error::InvalidShape {
            op,
            shape: z.shape().to_vec(),
            reason: "features must be a non-empty samples x features matrix".into(),
        });
    }
    check_eps_sq(eps_sq, op)?;
    z.check_finite(op)?;
    Ok((z.dim(0), z.dim(1)))
}

/// `logdet(I + a W^T W)` for `W` of shape `n x d`, through the smaller of the
/// `d x d` and `n x n` Gram matrices (Sylvester's determinant identity).
pub fn logdet_i_plus_gram<B: Backend>(w: &Tensor<B>, a: f64) -> Result<f64> {
    let (n, d) = (w.dim(0), w.dim(1));
    if n == 0 {
        return Ok(0.0);
    }
    let gram = if n < d { w.matmul_t(w, false, true) } else { w.matmul_t(w, true, false) };
    let k = n.min(d);
    Ok(regularised_logdets(&gram.reshape(&[1, k, k]), &[a])?[0])
}

/// `a (I + a W^T W)^-1` (`d x d`) for `W` of shape `n x d`: directly when
/// `n >= d`, by Woodbury through an `n x n` solve when `n < d`.
pub fn scaled_regularised_inverse<B: Backend>(w: &Tensor<B>, a: f64) -> Result<Tensor<B>> {
    let (n, d) = (w.dim(0), w.dim(1));
    if n >= d {
        let gram = w.matmul_t(w, true, false).reshape(&[1, d, d]);
        return Ok(regularised_inverses(&gram, &[a])?.0.reshape(&[d, d]));
    }
    let eye_d = Tensor::eye(w.backend(), d);
    if n == 0 {
        return Ok(eye_d.scale(a));
    }
    // a (I - a W^T (I + a W W^T)^-1 W)
    let small = w.matmul_t(w, false, true).scale(a).add(&Tensor::eye(w.backend(), n));
    let x = small.spd_solve(w)?; // n x d
    let corr = w.matmul_t(&x, true, false).scale(a);
    Ok(eye_d.sub(&corr).scale(a))
}

/// Coding rate `R(Z, eps) = 1/2 logdet(I + d/(m eps^2) Z^T Z)` (4.2.2), in nats.
pub fn coding_rate<B: Backend>(z: &Tensor<B>, eps_sq: f64) -> Result<f64> {
    let (m, d) = check_z(z, eps_sq, "coding_rate")?;
    let alpha = d as f64 / (m as f64 * eps_sq);
    Ok(0.5 * logdet_i_plus_gram(z, alpha)?)
}

/// Compression `R_c(Z, Pi, eps) = sum_j tr(Pi_j)/(2m) logdet(I + d/(tr(Pi_j) eps^2) Z^T Pi_j Z)`
/// (second term of 4.1.1). Empty classes contribute nothing.
pub fn compression_rate<B: Backend>(z: &Tensor<B>, pi: &Membership<'_, B>, eps_sq: f64) -> Result<f64> {
    let (m, d) = check_z(z, eps_sq, "compression_rate")?;
    pi.check(m, "compression_rate")?;
    let mut rc = 0.0;
    for part in class_parts(z, pi) {
        if part.size <= 0.0 {
            continue;
        }
        let aj = d as f64 / (part.size * eps_sq);
        rc += part.size / (2.0 * m as f64) * logdet_i_plus_gram(&part.zw, aj)?;
    }
    Ok(rc)
}

/// The three rates of one feature matrix.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    /// Expansion `R`.
    pub r: f64,
    /// Compression `R_c`.
    pub rc: f64,
    /// Rate reduction `ΔR = R - R_c`.
    pub delta_r: f64,
}

/// Rate reduction `ΔR = R - R_c` (4.1.1) with its two terms.
pub fn rate_reduction<B: Backend>(z: &Tensor<B>, pi: &Membership<'_, B>, eps_sq: f64) -> Result<Rates> {
    let r = coding_rate(z, eps_sq)?;
    let rc = compression_rate(z, pi, eps_sq)?;
    Ok(Rates { r, rc, delta_r: r - rc })
}

/// Expansion operator `E = alpha (I + alpha Z^T Z)^-1` (4.1.3), `d x d`.
pub fn expansion_operator<B: Backend>(z: &Tensor<B>, eps_sq: f64) -> Result<Tensor<B>> {
    let (m, d) = check_z(z, eps_sq, "expansion_operator")?;
    scaled_regularised_inverse(z, d as f64 / (m as f64 * eps_sq))
}

/// Compression operators `C^j = alpha_j (I + alpha_j Z^T Pi_j Z)^-1` (4.1.4),
/// stacked `k x d x d`, and the class weights `gamma_j = tr(Pi_j)/m`.
/// An empty class gets `C^j = 0` and `gamma_j = 0`.
pub fn compression_operators<B: Backend>(
    z: &Tensor<B>,
    pi: &Membership<'_, B>,
    eps_sq: f64,
) -> Result<(Tensor<B>, Vec<f64>)> {
    let (m, d) = check_z(z, eps_sq, "compression_operators")?;
    pi.check(m, "compression_operators")?;
    let mut ops = Vec::new();
    let mut gammas = Vec::new();
    for part in class_parts(z, pi) {
        if part.size <= 0.0 {
            ops.push(Tensor::zeros(z.backend(), &[1, d, d]));
            gammas.push(0.0);
            continue;
        }
        let aj = d as f64 / (part.size * eps_sq);
        ops.push(scaled_regularised_inverse(&part.zw, aj)?.reshape(&[1, d, d]));
        gammas.push(part.size / m as f64);
    }
    let refs: Vec<&Tensor<B>> = ops.iter().collect();
    Ok((Tensor::cat(&refs, 0), gammas))
}

/// Gradient of `R` with respect to `Z` (4.1.3): `Z E`, `m x d`.
pub fn coding_rate_grad<B: Backend>(z: &Tensor<B>, eps_sq: f64) -> Result<Tensor<B>> {
    Ok(z.matmul(&expansion_operator(z, eps_sq)?))
}

/// Gradient of `R_c` with respect to `Z`, memberships held fixed (4.1.4):
/// `sum_j gamma_j Pi_j Z C^j`, `m x d`.
pub fn compression_rate_grad<B: Backend>(
    z: &Tensor<B>,
    pi: &Membership<'_, B>,
    eps_sq: f64,
) -> Result<Tensor<B>> {
    // The operators validate the input before its shape is read.
    let (c, gam) = compression_operators(z, pi, eps_sq)?;
    let (m, d) = (z.dim(0), z.dim(1));
    let mut g = Tensor::zeros(z.backend(), &[m, d]);
    for (j, &gj) in gam.iter().enumerate() {
        if gj == 0.0 {
            continue;
        }
        let cj = c.narrow(0, j, 1).reshape(&[d, d]);
        let zc = z.matmul(&cj);
        let weighted = match pi {
            Membership::Hard { labels, .. } => {
                let w: Vec<f64> = labels.iter().map(|&l| if l == j { 1.0 } else { 0.0 }).collect();
                zc.mul(&Tensor::from_f64(z.backend(), &w, &[m, 1]))
            }
            Membership::Soft(p) => zc.mul(&p.narrow(0, j, 1).reshape(&[m, 1])),
        };
        g = g.add_scaled(&weighted, gj);
    }
    Ok(g)
}

/// Gradient of `ΔR = R - R_c` with respect to `Z` (4.1.5), memberships fixed.
pub fn rate_reduction_grad<B: Backend>(
    z: &Tensor<B>,
    pi: &Membership<'_, B>,
    eps_sq: f64,
) -> Result<Tensor<B>> {
    Ok(coding_rate_grad(z, eps_sq)?.sub(&compression_rate_grad(z, pi, eps_sq)?))
}
