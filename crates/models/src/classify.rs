//! Classifiers on learned features (used on ReduNet outputs, 4.1): nearest subspace (per-class top singular vectors, no centring) and k-nearest neighbours with cosine similarity.
//!
//! Layout: features are rows (`m x d`).
//!
//! * Nearest subspace: for class `j`, `U_j` holds the top `r` right singular
//!   vectors of the class's training rows `Z_j` (NOT centred), computed as the
//!   top eigenvectors of `Z_j^T Z_j`. A sample `z` goes to the class with the
//!   smallest residual `||z - U_j U_j^T z||` (the first class on ties).
//! * k-NN: rows are normalised (norm clamped at `1e-12`), similarity is the
//!   inner product, the `k` most similar training rows vote (most similar
//!   first on equal similarity, lower index first), and a tie in votes goes to
//!   the tied class whose neighbour is the nearest.

use crate::{Error, Result};
use rate_core::{Kernels, Tensor};

fn config(msg: String) -> Error {
    Error::Config(msg)
}

fn check_matrix<B: Kernels>(z: &Tensor<B>, op: &str, what: &str) -> Result<(usize, usize)> {
    if z.rank() != 2 || z.dim(0) == 0 || z.dim(1) == 0 {
        return Err(config(format!(
            "{op}: {what} has shape {:?}, expected a non-empty samples x features matrix",
            z.shape()
        )));
    }
    Ok((z.dim(0), z.dim(1)))
}

/// Nearest-subspace classifier: one `d x r` orthonormal basis per class.
#[derive(Clone, Debug)]
pub struct NearestSubspace<B: Kernels> {
    /// `U_j`, `d x r` each.
    bases: Vec<Tensor<B>>,
    dim: usize,
    components: usize,
}

impl<B: Kernels> NearestSubspace<B> {
    /// Fits `components` directions per class from training rows `z` and
    /// their labels (`0..num_classes`, every class present, `components` at
    /// most `d` and at most the class size).
    pub fn fit(z: &Tensor<B>, labels: &[usize], num_classes: usize, components: usize) -> Result<Self> {
        let op = "NearestSubspace::fit";
        let (m, d) = check_matrix(z, op, "training features")?;
        if labels.len() != m {
            return Err(config(format!("{op}: {} labels for {m} samples", labels.len())));
        }
        if components == 0 || components > d {
            return Err(config(format!(
                "{op}: components = {components} must be in 1..={d} (the dimension)"
            )));
        }
        let mut members = vec![Vec::new(); num_classes];
        for (i, &l) in labels.iter().enumerate() {
            if l >= num_classes {
                return Err(config(format!(
                    "{op}: labels[{i}] = {l} is not below num_classes = {num_classes}"
                )));
            }
            members[l].push(i);
        }
        let mut bases = Vec::with_capacity(num_classes);
        for (j, idx) in members.iter().enumerate() {
            if idx.is_empty() {
                return Err(config(format!("{op}: class {j} has no training samples")));
            }
            if components > idx.len() {
                return Err(config(format!(
                    "{op}: components = {components} exceeds the {} samples of class {j}",
                    idx.len()
                )));
            }
            let zj = z.index_select(0, idx);
            if idx.len() < d {
                // Fewer samples than dimensions: eigenvectors u_i of the small Gram
                // Z_j Z_j^T give the right singular vectors v_i = Z_j^T u_i / s_i.
                let (vals, vecs) = zj.matmul_t(&zj, false, true).sym_eigen()?;
                let top = vals.narrow(0, 0, components).to_f64_vec();
                if let Some(r) = top.iter().position(|&l| l.is_nan() || l <= 1e-12 * top[0].max(1e-300)) {
                    return Err(config(format!(
                        "{op}: class {j} spans only {r} directions, fewer than components = {components}"
                    )));
                }
                let inv_s: Vec<f64> = top.iter().map(|l| 1.0 / l.sqrt()).collect();
                let u = vecs.narrow(1, 0, components);
                let v = zj.matmul_t(&u, true, false).mul(&Tensor::from_f64(
                    z.backend(),
                    &inv_s,
                    &[1, components],
                ));
                bases.push(v);
            } else {
                let (_, vecs) = zj.matmul_t(&zj, true, false).sym_eigen()?;
                bases.push(vecs.narrow(1, 0, components));
            }
        }
        Ok(NearestSubspace { bases, dim: d, components })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.bases.len()
    }

    /// Directions kept per class.
    pub fn components(&self) -> usize {
        self.components
    }

    /// The basis `U_j` of class `j` (`d x r`, orthonormal columns), if `j` is a class.
    pub fn basis(&self, j: usize) -> Option<&Tensor<B>> {
        self.bases.get(j)
    }

    /// Residuals `||z - U_j U_j^T z||`, `n x k`.
    pub fn residuals(&self, z: &Tensor<B>) -> Result<Tensor<B>> {
        let op = "NearestSubspace::residuals";
        let (n, d) = check_matrix(z, op, "features")?;
        if d != self.dim {
            return Err(config(format!(
                "{op}: features have {d} columns, the classifier was fitted on {}",
                self.dim
            )));
        }
        let cols: Vec<Tensor<B>> =
            self.bases.iter().map(|u| z.sub(&z.matmul(u).matmul_t(u, false, true)).norm_axis(1)).collect();
        let refs: Vec<&Tensor<B>> = cols.iter().collect();
        Ok(Tensor::cat(&refs, 1).reshape(&[n, self.bases.len()]))
    }

    /// The class with the smallest residual for every row (first class on ties).
    pub fn predict(&self, z: &Tensor<B>) -> Result<Vec<usize>> {
        Ok(self.residuals(z)?.neg().argmax_axis(1))
    }
}

/// Rows divided by their norms (clamped at `1e-12`).
fn unit_rows<B: Kernels>(z: &Tensor<B>) -> Tensor<B> {
    z.div(&z.norm_axis(1).clamp_min(1e-12))
}

/// k-nearest-neighbour labels of the rows of `test` among the rows of `train`
/// by cosine similarity (see the module docs for the vote and its ties).
pub fn knn_predict<B: Kernels>(
    train: &Tensor<B>,
    train_labels: &[usize],
    test: &Tensor<B>,
    k: usize,
) -> Result<Vec<usize>> {
    let op = "knn_predict";
    let (m, d) = check_matrix(train, op, "training features")?;
    let (n, dt) = check_matrix(test, op, "test features")?;
    if dt != d {
        return Err(config(format!("{op}: test features have {dt} columns, training features {d}")));
    }
    if train_labels.len() != m {
        return Err(config(format!("{op}: {} labels for {m} training samples", train_labels.len())));
    }
    if k == 0 || k > m {
        return Err(config(format!("{op}: k = {k} must be in 1..={m} (the training samples)")));
    }
    let classes = train_labels.iter().max().map_or(0, |&c| c + 1);
    let train_u = unit_rows(train);
    let test_u = unit_rows(test);
    // Similarities in batches of test rows, so that no block exceeds ~4M entries.
    let batch = (4 << 20) / m.max(1);
    let batch = batch.max(1);
    let mut pred = Vec::with_capacity(n);
    let mut order: Vec<usize> = Vec::with_capacity(m);
    let mut votes = vec![0usize; classes];
    for start in (0..n).step_by(batch) {
        let count = batch.min(n - start);
        let sim = test_u.narrow(0, start, count).matmul_t(&train_u, false, true).to_f64_vec();
        for row in sim.chunks_exact(m) {
            order.clear();
            order.extend(0..m);
            let by_sim = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            if k < m {
                order.select_nth_unstable_by(k - 1, by_sim);
            }
            let nearest = &mut order[..k];
            nearest.sort_unstable_by(by_sim);
            votes.fill(0);
            for &i in nearest.iter() {
                votes[train_labels[i]] += 1;
            }
            let top = votes.iter().copied().max().unwrap_or(0);
            let winner = nearest.iter().map(|&i| train_labels[i]).find(|&c| votes[c] == top).unwrap_or(0);
            pred.push(winner);
        }
    }
    Ok(pred)
}

/// Fraction of equal entries.
pub fn accuracy(pred: &[usize], truth: &[usize]) -> Result<f64> {
    if pred.len() != truth.len() || pred.is_empty() {
        return Err(config(format!(
            "accuracy: {} predictions for {} labels (both must be equal and non-zero)",
            pred.len(),
            truth.len()
        )));
    }
    Ok(pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / pred.len() as f64)
}
