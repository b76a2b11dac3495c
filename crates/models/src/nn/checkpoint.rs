//! Checkpoint plumbing shared by every model: state dicts in and out by PyTorch parameter name, and the image-batch check.

use super::Module;
use crate::io::{HostArray, OutArray};
use crate::{Error, Kernels, Result, Tensor};
use safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Copies the tensors of a state dict into `model`'s parameters, refusing a
/// missing, unknown, mis-shaped or non-float tensor by name.
pub fn load_parameters<'a, B: Kernels, M: Module<B>>(
    backend: &B,
    model: &mut M,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostArray)>,
    source: &str,
    what: &str,
) -> Result<()> {
    let fmt = |message: String| Error::Format { path: source.to_string(), message };
    let given: BTreeMap<&str, &HostArray> = tensors.into_iter().collect();
    let mut expected = BTreeSet::new();
    let mut err = None;
    model.visit_mut("", &mut |name, p| {
        if err.is_some() {
            return;
        }
        let Some(a) = given.get(name.as_str()) else {
            err = Some(fmt(format!("missing tensor `{name}` (shape {:?})", p.shape())));
            return;
        };
        if !matches!(a.dtype, Dtype::F32 | Dtype::F64) {
            err = Some(fmt(format!("tensor `{name}` has dtype {:?}, expected F32 or F64", a.dtype)));
            return;
        }
        if a.shape != p.shape() {
            err = Some(fmt(format!("tensor `{name}` has shape {:?}, expected {:?}", a.shape, p.shape())));
            return;
        }
        *p = Tensor::from_f64(backend, &a.data, &a.shape);
        expected.insert(name);
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(extra) = given.keys().find(|k| !expected.contains(**k)) {
        return Err(fmt(format!("unknown tensor `{extra}` (not a parameter of this {what} configuration)")));
    }
    Ok(())
}

/// Writes `model`'s parameters (PyTorch names) and `metadata` as safetensors,
/// atomically; `dtype` is F32 or F64 (`what` names the model in the error).
pub fn save_parameters<B: Kernels, M: Module<B>>(
    model: &M,
    path: impl AsRef<Path>,
    dtype: Dtype,
    metadata: &BTreeMap<String, String>,
    what: &str,
) -> Result<()> {
    if !matches!(dtype, Dtype::F32 | Dtype::F64) {
        return Err(Error::Config(format!("{what} checkpoints are F32 or F64, not {dtype:?}")));
    }
    let mut arrays = BTreeMap::new();
    model.visit("", &mut |name, p| {
        arrays.insert(name, OutArray { shape: p.shape().to_vec(), data: p.to_f64_vec(), dtype });
    });
    crate::io::write_safetensors(path, &arrays, metadata)
}

/// `model`'s parameters by PyTorch name.
pub fn state_dict<B: Kernels, M: Module<B>>(model: &M) -> BTreeMap<String, Tensor<B>> {
    let mut out = BTreeMap::new();
    model.visit("", &mut |name, p| {
        out.insert(name, p.clone());
    });
    out
}

/// Refuses anything but a non-empty `[batch, channels, size, size]` image batch.
pub fn check_images<B: Kernels>(images: &Tensor<B>, channels: usize, size: usize, what: &str) -> Result<()> {
    let s = images.shape();
    if s.len() != 4 || s[0] == 0 || s[1] != channels || s[2] != size || s[3] != size {
        return Err(Error::ImageShape { model: what.to_string(), shape: s.to_vec(), channels, size });
    }
    Ok(())
}
