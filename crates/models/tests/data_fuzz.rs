//! Fuzzing every data reader with random bytes, truncated prefixes and byte flips of valid files: each returns Err or a valid data set, never panics.
#![allow(clippy::unwrap_used)] // tests unwrap what they have just written
use models::data::{self, CsvOptions, Dataset, Header, LabelColumn};
use models::io::{to_bytes, OutArray};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_images() -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, 3, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2];
    b.extend((0..24u8).map(|i| i.wrapping_mul(37)));
    b
}

fn idx_labels() -> Vec<u8> {
    vec![0, 0, 0x08, 1, 0, 0, 0, 4, 1, 0, 3, 2]
}

fn cifar() -> Vec<u8> {
    let mut b = Vec::new();
    for (r, l) in [7u8, 2].iter().enumerate() {
        b.push(*l);
        b.extend((0..3072).map(|k| ((k * 7 + r) % 256) as u8));
    }
    b
}

fn csv() -> Vec<u8> {
    b"f0,f1,f2,label\n0.5,1,2,1\n-1e-3,4,5.25,0\n7,8,9,2\n".to_vec()
}

fn safetensors() -> Vec<u8> {
    let mut arrays = BTreeMap::new();
    arrays.insert("X".to_string(), OutArray::f64(&[3, 2, 2], (0..12).map(|i| i as f64 / 7.0).collect()));
    arrays.insert("y".to_string(), OutArray::i64(&[3], &[2, 0, 1]));
    to_bytes(&arrays, &BTreeMap::new()).unwrap()
}

/// A data set that a reader returned must be internally consistent.
fn check(result: models::Result<Dataset>) {
    if let Ok(ds) = result {
        assert_eq!(ds.features().len(), ds.len() * ds.num_features());
        assert!(!ds.sample_shape().is_empty());
        assert!(ds.labels().iter().all(|&l| l < ds.num_classes()));
        assert!(ds.features().iter().all(|x| x.is_finite()));
        assert_eq!(ds.class_counts().iter().sum::<usize>(), ds.len());
    }
}

/// Feeds `bytes` to every byte-level reader.
fn every_reader(bytes: &[u8]) {
    let (images, labels) = (idx_images(), idx_labels());
    check(data::idx_from_bytes(bytes, "fuzz-images", &labels, "labels"));
    check(data::idx_from_bytes(&images, "images", bytes, "fuzz-labels"));
    let _ = data::parse_idx_images(bytes, "fuzz");
    let _ = data::parse_idx_labels(bytes, "fuzz");
    check(data::cifar10_from_bytes(bytes, "fuzz.bin"));
    check(data::csv_from_bytes(bytes, "fuzz.csv", &CsvOptions::default()));
    let named = CsvOptions { label: LabelColumn::Name("label".into()), ..CsvOptions::default() };
    check(data::csv_from_bytes(bytes, "fuzz.csv", &named));
    let declared = CsvOptions {
        header: Header::Absent,
        label: LabelColumn::Index(0),
        num_classes: Some(3),
        ..CsvOptions::default()
    };
    check(data::csv_from_bytes(bytes, "fuzz.csv", &declared));
    check(data::safetensors_from_bytes(bytes, "fuzz.safetensors"));
}

/// The valid files, raw and gzip.
fn valid_files() -> Vec<Vec<u8>> {
    let raw = vec![idx_images(), idx_labels(), cifar(), csv(), safetensors()];
    let gz: Vec<Vec<u8>> = raw.iter().map(|b| gzip(b)).collect();
    raw.into_iter().chain(gz).collect()
}

static FILE_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn temp_dir() -> PathBuf {
    let n = FILE_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("models-data-fuzz-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_valid_files_are_valid() {
    let labels = idx_labels();
    assert_eq!(data::idx_from_bytes(&idx_images(), "i", &labels, "l").unwrap().len(), 4);
    assert_eq!(data::idx_from_bytes(&gzip(&idx_images()), "i", &gzip(&labels), "l").unwrap().len(), 4);
    assert_eq!(data::cifar10_from_bytes(&gzip(&cifar()), "c").unwrap().len(), 2);
    assert_eq!(data::csv_from_bytes(&csv(), "c", &CsvOptions::default()).unwrap().len(), 3);
    assert_eq!(data::safetensors_from_bytes(&safetensors(), "s").unwrap().len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        every_reader(&bytes);
    }

    #[test]
    fn random_bytes_behind_each_magic_never_panic(
        which in 0usize..4,
        tail in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = match which {
            0 => vec![0x1f, 0x8b],
            1 => vec![0, 0, 0x08, 3],
            2 => vec![0, 0, 0x08, 1],
            _ => vec![tail.len() as u8, 0, 0, 0, 0, 0, 0, 0, b'{'],
        };
        bytes.extend_from_slice(&tail);
        every_reader(&bytes);
        every_reader(&gzip(&bytes));
    }

    #[test]
    fn truncated_prefixes_of_valid_files_never_panic(file in 0usize..10, cut in 0.0f64..1.0) {
        let bytes = &valid_files()[file];
        let n = (bytes.len() as f64 * cut) as usize;
        every_reader(&bytes[..n]);
        // a strict prefix of a binary file is always rejected by its own reader
        match file {
            0 | 5 => prop_assert!(data::idx_from_bytes(&bytes[..n], "i", &idx_labels(), "l").is_err()),
            1 | 6 => prop_assert!(data::idx_from_bytes(&idx_images(), "i", &bytes[..n], "l").is_err()),
            4 | 9 => prop_assert!(data::safetensors_from_bytes(&bytes[..n], "s").is_err()),
            2 | 7 => prop_assert!(data::cifar10_from_bytes(&bytes[..n], "c").is_err()),
            _ => {}
        }
    }

    #[test]
    fn byte_flips_of_valid_files_never_panic(
        file in 0usize..10,
        flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 1..6),
    ) {
        let mut bytes = valid_files()[file].clone();
        for (at, value) in flips {
            let i = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
            bytes[i] = value;
        }
        every_reader(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The path resolver, through files with each recognised kind of name.
    #[test]
    fn source_on_random_files_never_panics(
        name in 0usize..7,
        file in 0usize..10,
        cut in 0.0f64..1.0,
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = temp_dir();
        let names = [
            "x.csv", "x.csv.gz", "x.safetensors", "train-images-idx3-ubyte", "data_batch_1.bin", "unnamed",
            "t10k-images-idx3-ubyte.gz",
        ];
        let valid = &valid_files()[file];
        let mut bytes = valid[..(valid.len() as f64 * cut) as usize].to_vec();
        bytes.extend_from_slice(&noise);
        let path = dir.join(names[name]);
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), &noise).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), idx_labels()).unwrap();
        check(data::source(path.to_str().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
