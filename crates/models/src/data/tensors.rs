//! safetensors data files: a tensor `X` (samples x features, or samples x channels x ...) and a tensor `y` of integer labels.
//!
//! An optional metadata key `num_classes` declares the number of classes.

use super::bytes::{format_err, read_file};
use super::{Dataset, MAX_CLASSES};
use crate::io::TensorFile;
use crate::Result;
use std::path::Path;

/// Builds a data set from a parsed safetensors file holding `X` and `y`.
pub fn dataset_from_tensor_file(mut file: TensorFile) -> Result<Dataset> {
    let path = file.path.clone();
    let path = path.as_str();
    let x = file.get("X")?;
    let y = file.get("y")?;
    if x.shape.len() < 2 {
        return Err(format_err(
            path,
            format!("tensor `X` has shape {:?}, expected samples x features (2 or more axes)", x.shape),
        ));
    }
    let m = x.shape[0];
    let y_ok = match y.shape.as_slice() {
        [n] => *n == m,
        [n, 1] => *n == m,
        _ => false,
    };
    if !y_ok {
        return Err(format_err(
            path,
            format!(
                "tensor `y` has shape {:?}, expected [{m}] (one label per row of `X`, shape {:?})",
                y.shape, x.shape
            ),
        ));
    }
    if m == 0 {
        return Err(format_err(path, format!("tensor `X` has shape {:?}: no samples", x.shape)));
    }
    if x.shape[1..].contains(&0) {
        return Err(format_err(path, format!("tensor `X` has shape {:?}: empty samples", x.shape)));
    }
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        let d = x.data.len() / m;
        return Err(format_err(
            path,
            format!("tensor `X`: value {} at sample {}, feature {} is not finite", x.data[i], i / d, i % d),
        ));
    }
    let num_classes = if file.metadata.contains_key("num_classes") {
        let k = file.meta_usize("num_classes")?;
        if k == 0 || k > MAX_CLASSES {
            return Err(format_err(path, format!("metadata num_classes = {k} is not in 1..={MAX_CLASSES}")));
        }
        Some(k)
    } else {
        None
    };
    let limit = num_classes.unwrap_or(MAX_CLASSES);
    let mut labels = Vec::with_capacity(m);
    for (i, &v) in y.data.iter().enumerate() {
        if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
            return Err(format_err(
                path,
                format!("tensor `y`: label {v} at sample {i} is not a non-negative integer"),
            ));
        }
        if v >= limit as f64 {
            let why = match num_classes {
                Some(k) => format!("out of range for {k} declared classes"),
                None => format!("too large (at most {MAX_CLASSES} classes are supported)"),
            };
            return Err(format_err(path, format!("tensor `y`: label {v} at sample {i} is {why}")));
        }
        labels.push(v as usize);
    }
    let sample_shape = x.shape[1..].to_vec();
    let features = file.tensors.remove("X").map(|a| a.data).unwrap_or_default();
    Dataset::new(path, features, &sample_shape, labels, num_classes)
}

/// Parses the bytes of a safetensors data file; `path` only labels errors.
pub fn safetensors_from_bytes(bytes: &[u8], path: &str) -> Result<Dataset> {
    dataset_from_tensor_file(TensorFile::from_bytes(bytes, path)?)
}

/// Reads a safetensors data file holding `X` and `y`.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Dataset> {
    let p = path.as_ref();
    safetensors_from_bytes(&read_file(p)?, &p.display().to_string())
}
