//! Reading a data file's bytes, gunzipping it when it starts with the gzip magic bytes (1f 8b), with a size cap.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The largest decompressed size accepted from one gzip file (4 GiB): a
/// corrupted or malicious stream cannot make a reader allocate more.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// The two magic bytes that open every gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An error about the content of `path`.
pub(crate) fn format_err(path: &str, message: impl Into<String>) -> Error {
    Error::Format { path: path.to_string(), message: message.into() }
}

/// Whether `bytes` starts with the gzip magic bytes.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[..2] == GZIP_MAGIC
}

/// Reads a whole file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
}

/// Returns `bytes` itself, or its decompressed content if it is gzip;
/// `path` only labels errors.
pub fn maybe_gunzip<'a>(bytes: &'a [u8], path: &str) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    decoder
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format_err(path, format!("corrupt or truncated gzip stream: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(format_err(
            path,
            format!("gzip stream decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"),
        ));
    }
    Ok(std::borrow::Cow::Owned(out))
}
