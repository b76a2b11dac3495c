//! IDX readers (MNIST, Fashion-MNIST, KMNIST): `idx3-ubyte` images and `idx1-ubyte` labels, raw or gzip; pixels scaled by 1/255 to [0, 1].
//!
//! The IDX format: two zero bytes, a dtype code (0x08 = unsigned byte), the
//! number of dimensions, then each dimension as a big-endian u32, then the
//! values in row-major order. Every declared size is checked against the
//! bytes actually present before anything is allocated.

use super::bytes::{format_err, maybe_gunzip, read_file};
use super::Dataset;
use crate::Result;
use std::path::{Path, PathBuf};

/// The name of an IDX dtype code, or `None` if the code is not one of the six defined.
fn dtype_name(code: u8) -> Option<&'static str> {
    match code {
        0x08 => Some("unsigned byte"),
        0x09 => Some("signed byte"),
        0x0B => Some("i16"),
        0x0C => Some("i32"),
        0x0D => Some("f32"),
        0x0E => Some("f64"),
        _ => None,
    }
}

/// Parses an IDX header of unsigned bytes with `min_dims..=max_dims`
/// dimensions; returns the dimensions and the payload, whose length is
/// checked to equal their product.
fn parse_ubyte_idx<'a>(
    bytes: &'a [u8],
    path: &str,
    what: &str,
    min_dims: usize,
    max_dims: usize,
) -> Result<(Vec<usize>, &'a [u8])> {
    if bytes.len() < 4 {
        return Err(format_err(
            path,
            format!("truncated IDX {what} file: {} bytes, the header alone needs 4", bytes.len()),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_err(
            path,
            format!("bad IDX magic number 0x{magic:08x}: an IDX file starts with two zero bytes"),
        ));
    }
    let code = bytes[2];
    match dtype_name(code) {
        None => {
            return Err(format_err(
                path,
                format!("bad IDX magic number 0x{magic:08x}: unknown dtype code 0x{code:02x}"),
            ))
        }
        Some(name) if code != 0x08 => {
            return Err(format_err(
                path,
                format!(
                "IDX dtype code 0x{code:02x} ({name}) is not supported: {what} must be unsigned bytes (0x08)"
            ),
            ))
        }
        Some(_) => {}
    }
    let ndims = bytes[3] as usize;
    if ndims < min_dims || ndims > max_dims {
        let expected =
            if min_dims == max_dims { format!("{min_dims}") } else { format!("{min_dims} to {max_dims}") };
        return Err(format_err(
            path,
            format!("IDX {what} file has {ndims} dimensions (magic 0x{magic:08x}), expected {expected}"),
        ));
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(format_err(
            path,
            format!(
                "truncated IDX {what} file: {} bytes, the header of {ndims} dimensions needs {header_len}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let declared = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        format_err(path, format!("IDX {what} file declares dimensions {dims:?}, whose product overflows"))
    })?;
    let payload = &bytes[header_len..];
    if payload.len() < declared {
        return Err(format_err(
            path,
            format!(
                "truncated IDX {what} file: dimensions {dims:?} declare {declared} bytes of data but only {} follow the header",
                payload.len()
            ),
        ));
    }
    if payload.len() > declared {
        return Err(format_err(
            path,
            format!(
                "IDX {what} file has {} unexpected bytes after the {declared} bytes declared by dimensions {dims:?}",
                payload.len() - declared
            ),
        ));
    }
    if dims[0] == 0 {
        return Err(format_err(path, format!("IDX {what} file holds no samples (dimensions {dims:?})")));
    }
    if dims[1..].contains(&0) {
        return Err(format_err(path, format!("IDX {what} file has an empty sample shape {:?}", &dims[1..])));
    }
    Ok((dims, payload))
}

/// Parses IDX images (gzip or raw) into pixels scaled to [0, 1] (value / 255)
/// and the dimensions `[samples, ...sample_shape]` (2 to 4 dimensions,
/// e.g. `[60000, 28, 28]`); `path` only labels errors.
pub fn parse_idx_images(bytes: &[u8], path: &str) -> Result<(Vec<f64>, Vec<usize>)> {
    let bytes = maybe_gunzip(bytes, path)?;
    let (dims, payload) = parse_ubyte_idx(&bytes, path, "images", 2, 4)?;
    let pixels = payload.iter().map(|&b| b as f64 / 255.0).collect();
    Ok((pixels, dims))
}

/// Parses IDX labels (gzip or raw; one dimension of unsigned bytes); `path` only labels errors.
pub fn parse_idx_labels(bytes: &[u8], path: &str) -> Result<Vec<usize>> {
    let bytes = maybe_gunzip(bytes, path)?;
    let (_, payload) = parse_ubyte_idx(&bytes, path, "labels", 1, 1)?;
    Ok(payload.iter().map(|&b| b as usize).collect())
}

/// Builds a data set from the bytes of an IDX images file and an IDX labels
/// file (each gzip or raw). The number of classes is the largest label + 1
/// (declare it with [`Dataset::with_num_classes`]).
pub fn idx_from_bytes(images: &[u8], images_path: &str, labels: &[u8], labels_path: &str) -> Result<Dataset> {
    let (pixels, dims) = parse_idx_images(images, images_path)?;
    let labels = parse_idx_labels(labels, labels_path)?;
    if labels.len() != dims[0] {
        return Err(format_err(
            labels_path,
            format!("{} labels, but the images file {images_path} holds {} images", labels.len(), dims[0]),
        ));
    }
    Dataset::new(images_path, pixels, &dims[1..], labels, None)
}

/// Reads an IDX images file and its labels file (each gzip or raw).
pub fn read_idx(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Dataset> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let image_bytes = read_file(images)?;
    let label_bytes = read_file(labels)?;
    idx_from_bytes(&image_bytes, &images.display().to_string(), &label_bytes, &labels.display().to_string())
}

/// The labels file that goes with an IDX images file by the usual naming
/// (`train-images-idx3-ubyte[.gz]` -> `train-labels-idx1-ubyte[.gz]`, `t10k`
/// likewise, `*-images.idx3-ubyte` -> `*-labels.idx1-ubyte`); `None` if the
/// file name does not follow it.
pub fn idx_labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    if !name.contains("idx3") || !name.contains("images") {
        return None;
    }
    let labels = name.replacen("images", "labels", 1).replacen("idx3", "idx1", 1);
    Some(images.with_file_name(labels))
}
