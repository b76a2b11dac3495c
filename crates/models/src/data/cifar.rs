//! CIFAR-10 binary batches: records of 1 label byte (0..9) then 3072 bytes (R, G, B planes of 32x32); pixels scaled by 1/255 to [0, 1].

use super::bytes::{format_err, maybe_gunzip, read_file};
use super::Dataset;
use crate::Result;
use std::path::Path;

/// Bytes of one CIFAR-10 image: 3 channels of 32 x 32.
pub const CIFAR10_IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one CIFAR-10 record: the label byte and the image.
pub const CIFAR10_RECORD_BYTES: usize = 1 + CIFAR10_IMAGE_BYTES;
/// Number of CIFAR-10 classes.
pub const CIFAR10_CLASSES: usize = 10;

/// Parses one CIFAR-10 binary batch (gzip or raw) into a data set of
/// samples shaped `[3, 32, 32]`; `path` only labels errors.
pub fn cifar10_from_bytes(bytes: &[u8], path: &str) -> Result<Dataset> {
    let bytes = maybe_gunzip(bytes, path)?;
    if bytes.is_empty() {
        return Err(format_err(path, "empty CIFAR-10 batch: no records"));
    }
    if bytes.len() % CIFAR10_RECORD_BYTES != 0 {
        return Err(format_err(
            path,
            format!(
                "CIFAR-10 batch of {} bytes is not a whole number of {CIFAR10_RECORD_BYTES}-byte records \
                 ({} records and {} bytes left over)",
                bytes.len(),
                bytes.len() / CIFAR10_RECORD_BYTES,
                bytes.len() % CIFAR10_RECORD_BYTES
            ),
        ));
    }
    let records = bytes.len() / CIFAR10_RECORD_BYTES;
    let mut labels = Vec::with_capacity(records);
    let mut pixels = Vec::with_capacity(records * CIFAR10_IMAGE_BYTES);
    for (i, record) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
        let label = record[0] as usize;
        if label >= CIFAR10_CLASSES {
            return Err(format_err(
                path,
                format!(
                    "record {i} (byte offset {}): label {label} is out of range 0..{}",
                    i * CIFAR10_RECORD_BYTES,
                    CIFAR10_CLASSES - 1
                ),
            ));
        }
        labels.push(label);
        pixels.extend(record[1..].iter().map(|&b| b as f64 / 255.0));
    }
    Dataset::new(path, pixels, &[3, 32, 32], labels, Some(CIFAR10_CLASSES))
}

/// Reads one CIFAR-10 binary batch (e.g. `data_batch_1.bin`).
pub fn read_cifar10(path: impl AsRef<Path>) -> Result<Dataset> {
    let p = path.as_ref();
    cifar10_from_bytes(&read_file(p)?, &p.display().to_string())
}

/// Reads several CIFAR-10 batches (e.g. the five training batches) into one data set.
pub fn read_cifar10_batches<P: AsRef<Path>>(paths: &[P]) -> Result<Dataset> {
    let mut parts = Vec::with_capacity(paths.len());
    for p in paths {
        parts.push(read_cifar10(p)?);
    }
    Dataset::concat(&parts)
}
