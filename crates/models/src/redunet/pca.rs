//! Principal components of the training features, the optional first step before a ReduNet (`rate redunet fit --pca K`): the top right singular vectors of the centred data, from the eigen-decomposition of its `d x d` Gram matrix.
//!
//! `fit` accumulates `sum_i (x_i - mu)(x_i - mu)^T` over chunks of rows (no
//! copy of the data), takes the `K` eigenvectors of the largest eigenvalues
//! (the right singular vectors of the centred data), and `apply` maps rows to
//! `(x - mu) V_K`. Saved beside a model as `pca.safetensors` (`mean`,
//! `components`), which `rate redunet transform` applies before the network.

use crate::io::{write_safetensors, OutArray, TensorFile};
use crate::{Error, Result};
use rate_core::collective::{agreed, all_reduce_counts, all_reduce_tensor, Collective, Local};
use rate_core::{Kernels, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Rows per chunk of [`Pca::fit`] and [`Pca::apply`].
const CHUNK: usize = 4096;

/// A fitted projection onto the top `K` principal directions.
#[derive(Clone, Debug)]
pub struct Pca<B: Kernels> {
    /// The training mean, `1 x d`.
    mean: Tensor<B>,
    /// The directions, `d x K`, orthonormal columns by decreasing variance.
    components: Tensor<B>,
    /// Share of the total variance the `K` directions keep.
    explained: f64,
}

impl<B: Kernels> Pca<B> {
    /// The top `k` directions of the rows of `x` (`m x d`, `1 <= k <= d`, `m >= 2`).
    pub fn fit(x: &Tensor<B>, k: usize) -> Result<Self> {
        Self::fit_sharded(x, k, &Local)
    }

    /// [`Self::fit`] of the union of the shards of the processes of `comm`
    /// (each passes its own rows): the sum of the rows and the centred Gram
    /// matrix are summed over the processes, and rank 0's directions are
    /// broadcast, so that every process projects with the same bits. The
    /// shards are checked first and a bad one stops every process with one
    /// error naming its rank.
    pub fn fit_sharded(x: &Tensor<B>, k: usize, comm: &dyn Collective) -> Result<Self> {
        let be = x.backend();
        let local = if x.rank() != 2 || x.dim(1) == 0 {
            Err(Error::Config(format!(
                "PCA: features have shape {:?}, expected samples x features with at least 1 feature",
                x.shape()
            )))
        } else if k == 0 || k > x.dim(1) {
            Err(Error::Config(format!("--pca {k}: must be in 1..={} (the feature dimension)", x.dim(1))))
        } else {
            x.check_finite("PCA").map_err(Error::from)
        };
        agreed(comm, local)?;
        let (m_local, d) = (x.dim(0), x.dim(1));
        comm.same_everywhere("PCA: features of width", &[d as f64])?;
        let m = all_reduce_counts(&[m_local], comm)?[0] as f64;
        if m < 2.0 {
            return Err(Error::Config(format!(
                "PCA: {m} sample(s) in all (features of shape {:?} here), at least 2 needed",
                x.shape()
            )));
        }
        let mean = if comm.size() == 1 {
            x.mean_axis(0, true)
        } else {
            all_reduce_tensor(&x.sum_axis(0, true), comm)?.scale(1.0 / m)
        };
        let mut gram = Tensor::zeros(be, &[d, d]);
        for start in (0..m_local).step_by(CHUNK) {
            let c = x.narrow(0, start, CHUNK.min(m_local - start)).sub(&mean);
            gram = gram.add(&c.matmul_t(&c, true, false));
        }
        let gram = all_reduce_tensor(&gram, comm)?;
        let (vals, vecs) = gram.sym_eigen()?;
        let vals = vals.to_f64_vec();
        let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
        let kept: f64 = vals[..k].iter().map(|v| v.max(0.0)).sum();
        let mut explained = [if total > 0.0 { kept / total } else { 0.0 }];
        let mut components = vecs.narrow(1, 0, k);
        if comm.size() > 1 {
            let mut host = components.to_f64_vec();
            comm.broadcast(&mut host, 0)?;
            comm.broadcast(&mut explained, 0)?;
            components = Tensor::from_f64(be, &host, &[d, k]);
        }
        Ok(Pca { mean, components, explained: explained[0] })
    }

    /// Rows `x` (`n x d`) projected: `(x - mu) V_K`, `n x K`.
    pub fn apply(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let d = self.mean.dim(1);
        if x.rank() != 2 || x.dim(1) != d || x.dim(0) == 0 {
            return Err(Error::Config(format!(
                "PCA: features have shape {:?}, the projection was fitted on {d} features",
                x.shape()
            )));
        }
        let n = x.dim(0);
        let parts: Vec<Tensor<B>> = (0..n)
            .step_by(CHUNK)
            .map(|s| x.narrow(0, s, CHUNK.min(n - s)).sub(&self.mean).matmul(&self.components))
            .collect();
        Ok(if parts.len() == 1 {
            parts[0].clone()
        } else {
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
        })
    }

    /// Input dimension `d`.
    pub fn input_dim(&self) -> usize {
        self.mean.dim(1)
    }

    /// Output dimension `K`.
    pub fn output_dim(&self) -> usize {
        self.components.dim(1)
    }

    /// Share of the training variance kept.
    pub fn explained_variance(&self) -> f64 {
        self.explained
    }

    /// The directions, `d x K`.
    pub fn components(&self) -> &Tensor<B> {
        &self.components
    }

    /// Writes `mean` and `components` (f64) to a safetensors file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let (d, k) = (self.input_dim(), self.output_dim());
        let mut arrays = BTreeMap::new();
        arrays.insert("mean".to_string(), OutArray::f64(&[d], self.mean.to_f64_vec()));
        arrays.insert("components".to_string(), OutArray::f64(&[d, k], self.components.to_f64_vec()));
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "redunet-pca".to_string());
        meta.insert("explained_variance".to_string(), self.explained.to_string());
        write_safetensors(path, &arrays, &meta)
    }

    /// Reads a projection written by [`Self::save`].
    pub fn load(backend: &B, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |m: String| Error::Format { path: path.display().to_string(), message: m };
        let file = TensorFile::read(path)?;
        let mean = file.get_rank("mean", 1)?;
        let comps = file.get_rank("components", 2)?;
        let (d, k) = (comps.shape[0], comps.shape[1]);
        if mean.shape[0] != d || k == 0 || k > d {
            return Err(bad(format!(
                "`mean` has shape {:?} and `components` {:?}: expected [d] and [d, K] with 1 <= K <= d",
                mean.shape, comps.shape
            )));
        }
        if let Some(i) = mean.data.iter().chain(&comps.data).position(|v| !v.is_finite()) {
            return Err(bad(format!("non-finite value at flat index {i} of `mean` then `components`")));
        }
        let explained = file.meta_f64("explained_variance").unwrap_or(f64::NAN);
        Ok(Pca {
            mean: Tensor::from_f64(backend, &mean.data, &[1, d]),
            components: Tensor::from_f64(backend, &comps.data, &[d, k]),
            explained,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_cpu::CpuBackend;

    /// Data on a 2-dimensional plane in 5 dimensions: two components keep
    /// all the variance, project back exactly, and the projection round-trips a file.
    #[test]
    fn recovers_a_plane_and_round_trips() {
        let be = CpuBackend::<f64>::new();
        let (m, d) = (50, 5);
        let mut x = vec![0.0; m * d];
        for i in 0..m {
            let (a, b) = ((i as f64 * 0.37).sin(), (i as f64 * 0.11).cos() * 2.0);
            x[i * d..(i + 1) * d].copy_from_slice(&[1.0 + a, b, a - b, 3.0, 0.5 * a]);
        }
        let t = Tensor::from_f64(&be, &x, &[m, d]);
        let p = Pca::fit(&t, 2).unwrap();
        assert!((p.explained_variance() - 1.0).abs() < 1e-12, "{}", p.explained_variance());
        let y = p.apply(&t).unwrap();
        let back = y.matmul_t(p.components(), false, true).add(&t.mean_axis(0, true)).to_f64_vec();
        for (u, v) in back.iter().zip(&x) {
            assert!((u - v).abs() < 1e-10, "{u} vs {v}");
        }
        let dir = std::env::temp_dir().join(format!("pca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        p.save(dir.join("pca.safetensors")).unwrap();
        let q = Pca::load(&be, dir.join("pca.safetensors")).unwrap();
        assert_eq!(q.apply(&t).unwrap().to_f64_vec(), y.to_f64_vec());
        assert!(Pca::fit(&t, 6).is_err());
        assert!(Pca::fit(&t, 0).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
