//! Locating and loading the parity fixtures (safetensors from the authors' reference code, float64).
//!
//! The directory is `$RATE_FIXTURES` when set, else the repository's own
//! `fixtures/`. Under `RATE_FIXTURES` a missing file is an error, never a skip.

use crate::invariant::InvariantConfig;
use crate::io::TensorFile;
use crate::redunet::ReduNetConfig;
use crate::{Error, Kernels, Result, Tensor};
use std::path::PathBuf;

/// The fixture directory: `$RATE_FIXTURES` or `<repo>/fixtures`.
pub fn fixture_dir() -> PathBuf {
    match std::env::var_os("RATE_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

/// Loads `<fixture_dir>/<name>.safetensors`.
pub fn load(name: &str) -> Result<TensorFile> {
    let path = fixture_dir().join(format!("{name}.safetensors"));
    if !path.exists() {
        return Err(Error::Format {
            path: path.display().to_string(),
            message: "fixture file not found (RATE_FIXTURES names the fixture directory)".into(),
        });
    }
    TensorFile::read(path)
}

impl TensorFile {
    /// The ReduNet of a `redunet_vector*` fixture: `num_classes`, `layers`,
    /// `eta`, `eps_sq` and `lmbda` (or `lambda`) from the metadata, the other
    /// settings the defaults.
    pub fn redunet_config(&self) -> Result<ReduNetConfig> {
        let mut c = ReduNetConfig::new(self.meta_usize("num_classes")?, self.meta_usize("layers")?);
        c.eta = self.meta_f64("eta")?;
        c.eps_sq = self.meta_f64("eps_sq")?;
        c.lambda = self.lambda()?;
        Ok(c)
    }

    /// The invariant ReduNet of a `redunet_fourier*` fixture: `layers`,
    /// `eta`, `eps_sq` and `lmbda` (or `lambda`) from the metadata, the other
    /// settings the defaults.
    pub fn invariant_config(&self) -> Result<InvariantConfig> {
        Ok(InvariantConfig {
            layers: self.meta_usize("layers")?,
            eta: self.meta_f64("eta")?,
            eps_sq: self.meta_f64("eps_sq")?,
            lambda: self.lambda()?,
            ..Default::default()
        })
    }

    /// The membership sharpness: metadata `lmbda` (the reference code's name) or `lambda`.
    fn lambda(&self) -> Result<f64> {
        self.meta_f64("lmbda").or_else(|_| self.meta_f64("lambda"))
    }

    /// The array `name` uploaded as a tensor of its own shape.
    pub fn tensor<B: Kernels>(&self, backend: &B, name: &str) -> Result<Tensor<B>> {
        let a = self.get(name)?;
        Ok(Tensor::from_f64(backend, &a.data, &a.shape))
    }

    /// The array `name` as non-negative integer labels.
    pub fn labels(&self, name: &str) -> Result<Vec<usize>> {
        let a = self.get(name)?;
        a.data
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x >= 0.0 && x.fract() == 0.0 {
                    Ok(x as usize)
                } else {
                    Err(Error::Format {
                        path: self.path.clone(),
                        message: format!("`{name}`[{i}] = {x} is not a label"),
                    })
                }
            })
            .collect()
    }
}

/// Largest absolute difference between two equal-length slices (panics on a length mismatch).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths {} and {} differ", a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
