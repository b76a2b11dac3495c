//! Saving and loading a built ReduNet: the operators `E^l`, `C^l_j` and `gamma` (4.1.13) in a safetensors file, the configuration in a JSON manifest beside it, both with a checked format version.
//!
//! `net.safetensors` holds `E_layers` (`L x d x d`), `C_layers`
//! (`L x k x d x d`) in the precision computed (f32 or f64) and `gam` (`k`) in f64
//! (the fixture names), written one layer at a time, with the
//! format, version and sizes repeated in its metadata; `net.json` (same stem)
//! holds the format, version, sizes and the [`ReduNetConfig`]. Loading checks
//! both versions, every shape against the manifest, and that every value is
//! finite and every `gamma_j` positive with sum 1.

use super::{Layer, ReduNet, ReduNetConfig};
use crate::io::{write_atomic, write_safetensors_streamed, StreamedTensor, TensorFile};
use crate::{Error, Result};
use rate_core::{Kernels, Tensor};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Format name in the manifest and the safetensors metadata.
pub const FORMAT: &str = "redunet-vector";
/// Version of the on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The JSON manifest saved beside the operators.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    format_version: u32,
    dim: usize,
    num_classes: usize,
    layers: usize,
    /// File name of the operators, relative to the manifest.
    operators: String,
    config: ReduNetConfig,
}

/// The manifest path of an operators file: the same path with extension `json`.
pub fn manifest_path(operators: &Path) -> PathBuf {
    operators.with_extension("json")
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format { path: path.display().to_string(), message: message.into() }
}

impl<B: Kernels> ReduNet<B> {
    /// Writes the operators to `path` (safetensors) and the manifest to
    /// [`manifest_path`]`(path)`, each atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (l, d, k) = (self.depth(), self.dim, self.num_classes());
        // In the precision the operators were computed in (f32 or f64), and one
        // layer at a time: a full-size model (30 layers of 11 matrices of 784 x 784)
        // is never held a second time, as values or as bytes.
        let dtype = if std::mem::size_of::<B::Elem>() <= 4 { Dtype::F32 } else { Dtype::F64 };
        let tensors = [
            StreamedTensor { name: "C_layers".into(), dtype, shape: vec![l, k, d, d] },
            StreamedTensor { name: "E_layers".into(), dtype, shape: vec![l, d, d] },
            StreamedTensor { name: "gam".into(), dtype: Dtype::F64, shape: vec![k] },
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        meta.insert("dim".to_string(), d.to_string());
        meta.insert("num_classes".to_string(), k.to_string());
        meta.insert("layers".to_string(), l.to_string());
        write_safetensors_streamed(path, &tensors, &meta, |i, sink| match i {
            0 => self.layers.iter().try_for_each(|layer| sink(&layer.compression().to_f64_vec())),
            1 => self.layers.iter().try_for_each(|layer| sink(&layer.expansion().to_f64_vec())),
            _ => sink(&self.gamma),
        })?;
        let manifest = Manifest {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            dim: d,
            num_classes: k,
            layers: l,
            operators: path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
            config: self.config.clone(),
        };
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::Config(format!("cannot serialise the ReduNet manifest: {e}")))?;
        write_atomic(manifest_path(path), json.as_bytes())
    }

    /// Reads a network saved by [`Self::save`] onto `backend`, refusing
    /// files of another format or version, of inconsistent shapes, or with
    /// non-finite values.
    pub fn load(backend: &B, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mpath = manifest_path(path);
        let text = std::fs::read_to_string(&mpath)
            .map_err(|e| Error::Io { path: mpath.display().to_string(), source: e })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| format_err(&mpath, format!("not a ReduNet manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(format_err(&mpath, format!("format {:?}, expected {FORMAT:?}", manifest.format)));
        }
        if manifest.format_version != FORMAT_VERSION {
            return Err(format_err(
                &mpath,
                format!(
                    "format_version {} is not supported (this build reads version {FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        manifest.config.validate().map_err(|e| format_err(&mpath, e.to_string()))?;
        let (l, d, k) = (manifest.layers, manifest.dim, manifest.num_classes);
        if k != manifest.config.num_classes {
            return Err(format_err(
                &mpath,
                format!("num_classes = {k} but config.num_classes = {}", manifest.config.num_classes),
            ));
        }
        if d == 0 || l == 0 {
            return Err(format_err(&mpath, format!("dim = {d}, layers = {l}: both must be at least 1")));
        }

        let file = TensorFile::read(path)?;
        let meta_version = file.meta("format_version")?;
        if meta_version.trim() != FORMAT_VERSION.to_string() {
            return Err(format_err(
                path,
                format!("metadata format_version {meta_version:?} is not supported (this build reads {FORMAT_VERSION})"),
            ));
        }
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f64>> {
            let a = file.get(name)?;
            if a.shape != shape {
                return Err(format_err(
                    path,
                    format!("tensor `{name}` has shape {:?}, the manifest implies {shape:?}", a.shape),
                ));
            }
            if let Some(i) = a.data.iter().position(|x| !x.is_finite()) {
                return Err(format_err(
                    path,
                    format!("tensor `{name}`: non-finite value {} at flat index {i}", a.data[i]),
                ));
            }
            Ok(a.data.clone())
        };
        let e = get("E_layers", &[l, d, d])?;
        let c = get("C_layers", &[l, k, d, d])?;
        let gamma = get("gam", &[k])?;
        if gamma.iter().any(|&g| g <= 0.0) || (gamma.iter().sum::<f64>() - 1.0).abs() > 1e-9 {
            return Err(format_err(path, format!("`gam` = {gamma:?} must be positive and sum to 1")));
        }
        let layers = (0..l)
            .map(|i| {
                let w: Vec<f64> = e[i * d * d..(i + 1) * d * d]
                    .iter()
                    .chain(&c[i * k * d * d..(i + 1) * k * d * d])
                    .copied()
                    .collect();
                Layer::new(Tensor::from_f64(backend, &w, &[(k + 1) * d, d]), &gamma, d, k)
            })
            .collect();
        Ok(ReduNet { backend: backend.clone(), config: manifest.config, dim: d, gamma, layers })
    }
}
