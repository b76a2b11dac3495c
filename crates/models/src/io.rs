//! Reading and writing safetensors files (named host arrays plus string metadata), with atomic writes.
//!
//! [`TensorFile`] holds arrays on the host as f64 (or i64 for integer
//! tensors) so that one reader serves fixtures, checkpoints and data files in
//! any float width; [`write_atomic`] writes through a temporary file and a
//! rename, so an interrupted run never leaves a half-written output.

use crate::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// One array read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct HostArray {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, converted to f64 (integers too).
    pub data: Vec<f64>,
    /// The dtype stored in the file.
    pub dtype: Dtype,
}

impl HostArray {
    /// Values as i64 (integers are exact; floats must be integral).
    pub fn to_i64(&self) -> Vec<i64> {
        self.data.iter().map(|&x| x as i64).collect()
    }
}

/// A safetensors file loaded into host memory.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Where it came from (for error messages).
    pub path: String,
    /// Arrays by name.
    pub tensors: BTreeMap<String, HostArray>,
    /// String metadata of the header.
    pub metadata: BTreeMap<String, String>,
}

fn format_err(path: &str, message: impl Into<String>) -> Error {
    Error::Format { path: path.to_string(), message: message.into() }
}

impl TensorFile {
    /// Reads and validates a file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let bytes = std::fs::read(p).map_err(|e| Error::Io { path: p.display().to_string(), source: e })?;
        Self::from_bytes(&bytes, &p.display().to_string())
    }

    /// Parses the bytes of a file; `path` only labels errors.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| format_err(path, format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format_err(path, format!("bad safetensors header: {e}")))?;
        let metadata: BTreeMap<String, String> =
            meta.metadata().clone().unwrap_or_default().into_iter().collect();
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F64 => {
                    raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
                }
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64)
                    .collect(),
                Dtype::I64 => raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                    .collect(),
                Dtype::I32 => raw
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64)
                    .collect(),
                Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
                other => {
                    return Err(format_err(path, format!("tensor `{name}`: unsupported dtype {other:?}")))
                }
            };
            tensors
                .insert(name.clone(), HostArray { shape: view.shape().to_vec(), data, dtype: view.dtype() });
        }
        Ok(TensorFile { path: path.to_string(), tensors, metadata })
    }

    /// The array called `name`, or an error naming the file and the tensor.
    pub fn get(&self, name: &str) -> Result<&HostArray> {
        self.tensors.get(name).ok_or_else(|| format_err(&self.path, format!("missing tensor `{name}`")))
    }

    /// The array called `name`, checked to have `rank` axes.
    pub fn get_rank(&self, name: &str, rank: usize) -> Result<&HostArray> {
        let a = self.get(name)?;
        if a.shape.len() != rank {
            return Err(format_err(
                &self.path,
                format!("tensor `{name}` has shape {:?}, expected {rank} axes", a.shape),
            ));
        }
        Ok(a)
    }

    /// A metadata value, or an error naming the key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(|s| s.as_str())
            .ok_or_else(|| format_err(&self.path, format!("missing metadata key `{key}`")))
    }

    /// A metadata value parsed as f64.
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        let s = self.meta(key)?;
        s.trim()
            .parse()
            .map_err(|_| format_err(&self.path, format!("metadata `{key}` = {s:?} is not a number")))
    }

    /// A metadata value parsed as usize.
    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        let s = self.meta(key)?;
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format_err(&self.path, format!("metadata `{key}` = {s:?} is not an integer")))?;
        if v < 0.0 || v.fract() != 0.0 {
            return Err(format_err(
                &self.path,
                format!("metadata `{key}` = {s:?} is not a non-negative integer"),
            ));
        }
        Ok(v as usize)
    }
}

/// An array to write: f64 values stored as `dtype` (F64, F32 or I64).
#[derive(Clone, Debug)]
pub struct OutArray {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f64>,
    /// Stored dtype.
    pub dtype: Dtype,
}

impl OutArray {
    /// An f64 array.
    pub fn f64(shape: &[usize], data: Vec<f64>) -> Self {
        OutArray { shape: shape.to_vec(), data, dtype: Dtype::F64 }
    }
    /// An f32 array.
    pub fn f32(shape: &[usize], data: Vec<f64>) -> Self {
        OutArray { shape: shape.to_vec(), data, dtype: Dtype::F32 }
    }
    /// An i64 array.
    pub fn i64(shape: &[usize], data: &[i64]) -> Self {
        OutArray { shape: shape.to_vec(), data: data.iter().map(|&x| x as f64).collect(), dtype: Dtype::I64 }
    }
}

/// Serialises arrays and metadata to safetensors bytes.
pub fn to_bytes(arrays: &BTreeMap<String, OutArray>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, a) in arrays {
        let n: usize = a.shape.iter().product();
        if n != a.data.len() {
            return Err(Error::Config(format!(
                "tensor `{name}`: {} values for shape {:?}",
                a.data.len(),
                a.shape
            )));
        }
        let bytes: Vec<u8> = match a.dtype {
            Dtype::F64 => a.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F32 => a.data.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
            Dtype::I64 => a.data.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
            other => return Err(Error::Config(format!("tensor `{name}`: cannot write dtype {other:?}"))),
        };
        raw.push((name.clone(), a.dtype, a.shape.clone(), bytes));
    }
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &raw {
        let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::Config(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), v));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    safetensors::serialize(views, if meta.is_empty() { None } else { Some(meta) })
        .map_err(|e| Error::Config(format!("cannot serialise safetensors: {e}")))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically from `fill`, which writes the content into a
/// buffered temporary file beside it; the file is `fsync`ed and renamed into
/// place, or removed if anything fails. `fill`'s I/O errors name the file.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    write_atomic_try(path, |w| fill(w).map_err(Ok))
}

/// [`write_atomic_with`] whose `fill` may also fail with a library error
/// (`Err(Err(e))`) besides an I/O error (`Err(Ok(e))`).
fn write_atomic_try(
    path: impl AsRef<Path>,
    fill: impl FnOnce(
        &mut std::io::BufWriter<std::fs::File>,
    ) -> std::result::Result<(), std::result::Result<std::io::Error, Error>>,
) -> Result<()> {
    let p = path.as_ref();
    let io = |e: std::io::Error| Error::Io { path: p.display().to_string(), source: e };
    if let Some(dir) = p.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
    }
    let name = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = p.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let tio = |e: std::io::Error| Error::Io { path: tmp.display().to_string(), source: e };
    let written = (|| -> Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(tio)?);
        fill(&mut w).map_err(|e| e.map_or_else(|e| e, tio))?;
        let f = w.into_inner().map_err(|e| tio(e.into_error()))?;
        f.sync_all().map_err(tio)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, p).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// The peak resident memory of this process so far, in bytes (Linux's
/// `VmHWM` of `/proc/self/status`; `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writes a safetensors file atomically.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    arrays: &BTreeMap<String, OutArray>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    write_atomic(path, &to_bytes(arrays, metadata)?)
}

/// One tensor of [`write_safetensors_streamed`]: its name, stored dtype (F32 or F64) and shape.
#[derive(Clone, Debug)]
pub struct StreamedTensor {
    /// Name in the file.
    pub name: String,
    /// Stored dtype: `Dtype::F32` or `Dtype::F64`.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Writes a safetensors file atomically without holding its data in memory:
/// the header from `tensors` (in that order), then `fill(i, sink)` for each
/// tensor `i` in turn, which must push exactly its element count of values
/// (f64, stored as the tensor's dtype) through `sink`, in as many calls as it
/// likes. Used for files larger than what should be held twice (a ReduNet's
/// operators: `L (k+1) d^2` numbers). The temporary file is removed if
/// anything fails.
pub fn write_safetensors_streamed(
    path: impl AsRef<Path>,
    tensors: &[StreamedTensor],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &mut dyn FnMut(&[f64]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    let p = path.as_ref();
    let width = |t: &StreamedTensor| match t.dtype {
        Dtype::F32 => Ok(4usize),
        Dtype::F64 => Ok(8),
        other => Err(Error::Config(format!("tensor `{}`: cannot stream dtype {other:?}", t.name))),
    };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    }
    let mut offset = 0usize;
    for t in tensors {
        let bytes = t.shape.iter().product::<usize>() * width(t)?;
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": if t.dtype == Dtype::F32 { "F32" } else { "F64" },
                "shape": t.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    write_atomic_try(p, |w| {
        w.write_all(&(text.len() as u64).to_le_bytes()).map_err(Ok)?;
        w.write_all(&text).map_err(Ok)?;
        let mut bytes = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let want = t.shape.iter().product::<usize>();
            let mut written = 0usize;
            let mut sink = |vals: &[f64]| -> Result<()> {
                bytes.clear();
                match t.dtype {
                    Dtype::F32 => bytes.extend(vals.iter().flat_map(|&x| (x as f32).to_le_bytes())),
                    _ => bytes.extend(vals.iter().flat_map(|x| x.to_le_bytes())),
                }
                written += vals.len();
                w.write_all(&bytes).map_err(|e| Error::Io { path: p.display().to_string(), source: e })
            };
            fill(i, &mut sink).map_err(Err)?;
            if written != want {
                return Err(Err(Error::Config(format!(
                    "tensor `{}`: {written} values written for shape {:?}",
                    t.name, t.shape
                ))));
            }
        }
        Ok(())
    })
}
