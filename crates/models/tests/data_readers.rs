//! The data readers (IDX, CIFAR-10, CSV, safetensors) on small files written here, every error case, the embedded sets, `source`, and the seeded splits.
#![allow(clippy::unwrap_used)] // tests unwrap what they have just written
use backend_cpu::CpuBackend;
use models::data::{self, CsvOptions, Dataset, Header, LabelColumn};
use models::io::{write_safetensors, OutArray};
use models::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------- helpers ----------

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, unique to this process and call.
fn temp_dir(tag: &str) -> PathBuf {
    let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("models-data-readers-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, 3];
    for d in [n, rows, cols] {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    b.extend_from_slice(pixels);
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

/// Asserts a Format error whose path contains `path` and whose message contains every one of `parts`.
#[track_caller]
fn assert_format(result: models::Result<Dataset>, path: &str, parts: &[&str]) {
    match result {
        Err(Error::Format { path: p, message }) => {
            assert!(p.contains(path), "error path {p:?} does not name {path:?} (message: {message})");
            for part in parts {
                assert!(message.contains(part), "message {message:?} lacks {part:?}");
            }
        }
        Err(other) => panic!("expected a Format error about {path}, got {other}"),
        Ok(ds) => panic!("expected a Format error about {path}, got a data set of {} samples", ds.len()),
    }
}

// ---------- IDX ----------

/// Three 2x3 images with distinct pixels and labels 2, 0, 1.
fn small_idx() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..18u8).map(|i| i * 15).collect();
    (idx_images(3, 2, 3, &pixels), idx_labels(&[2, 0, 1]), pixels)
}

#[test]
fn idx_reads_raw_and_gzip() {
    let dir = temp_dir("idx");
    let (img, lab, pixels) = small_idx();
    for (gz, suffix) in [(false, ""), (true, ".gz")] {
        let (i, l) = if gz { (gzip(&img), gzip(&lab)) } else { (img.clone(), lab.clone()) };
        let ip = write(&dir, &format!("train-images-idx3-ubyte{suffix}"), &i);
        let lp = write(&dir, &format!("train-labels-idx1-ubyte{suffix}"), &l);
        let ds = data::read_idx(&ip, &lp).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.sample_shape(), &[2, 3]);
        assert_eq!(ds.num_features(), 6);
        assert_eq!(ds.labels(), &[2, 0, 1]);
        assert_eq!(ds.num_classes(), 3);
        let expected: Vec<f64> = pixels.iter().map(|&p| p as f64 / 255.0).collect();
        assert_eq!(ds.features(), expected.as_slice());
        assert_eq!(ds.sample(1), &expected[6..12]);
        // the resolver finds the labels by the usual naming
        let via_source = data::source(ip.to_str().unwrap()).unwrap();
        assert_eq!(via_source, ds);
    }
}

#[test]
fn idx_labels_path_follows_the_usual_naming() {
    let p = |s: &str| data::idx_labels_path(Path::new(s)).map(|p| p.display().to_string());
    assert_eq!(p("/d/train-images-idx3-ubyte.gz").as_deref(), Some("/d/train-labels-idx1-ubyte.gz"));
    assert_eq!(p("t10k-images-idx3-ubyte").as_deref(), Some("t10k-labels-idx1-ubyte"));
    assert_eq!(p("emnist-train-images.idx3-ubyte").as_deref(), Some("emnist-train-labels.idx1-ubyte"));
    assert_eq!(p("data_batch_1.bin"), None);
}

#[test]
fn idx_rejects_every_malformed_header_and_size() {
    let (img, lab, _) = small_idx();
    let ok = |i: &[u8], l: &[u8]| data::idx_from_bytes(i, "imgs.idx3", l, "labs.idx1");
    assert!(ok(&img, &lab).is_ok());

    let mut bad = img.clone();
    bad[0] = 1;
    assert_format(ok(&bad, &lab), "imgs.idx3", &["magic", "0x01000803"]);
    let mut bad = img.clone();
    bad[2] = 0x07;
    assert_format(ok(&bad, &lab), "imgs.idx3", &["unknown dtype code 0x07"]);
    let mut bad = img.clone();
    bad[2] = 0x0D;
    assert_format(ok(&bad, &lab), "imgs.idx3", &["0x0d", "f32", "not supported"]);
    let mut bad = lab.clone();
    bad[2] = 0x0C;
    assert_format(ok(&img, &bad), "labs.idx1", &["0x0c", "not supported"]);
    // dimension counts
    let mut bad = img.clone();
    bad[3] = 1;
    assert_format(ok(&bad, &lab), "imgs.idx3", &["1 dimensions", "expected 2 to 4"]);
    let mut bad = lab.clone();
    bad[3] = 3;
    assert_format(ok(&img, &bad), "labs.idx1", &["3 dimensions", "expected 1"]);
    // truncated header, truncated data, trailing bytes
    assert_format(ok(&img[..3], &lab), "imgs.idx3", &["truncated", "3 bytes"]);
    assert_format(ok(&img[..10], &lab), "imgs.idx3", &["truncated", "needs 16"]);
    assert_format(ok(&img[..img.len() - 1], &lab), "imgs.idx3", &["truncated", "18 bytes", "only 17"]);
    assert_format(ok(&img, &lab[..lab.len() - 1]), "labs.idx1", &["truncated", "only 2"]);
    let mut long = img.clone();
    long.push(0);
    assert_format(ok(&long, &lab), "imgs.idx3", &["1 unexpected bytes"]);
    // label count differs from image count
    assert_format(ok(&img, &idx_labels(&[1, 2])), "labs.idx1", &["2 labels", "imgs.idx3", "3 images"]);
    // extreme declared sizes are refused before allocating
    let huge = idx_images(u32::MAX as usize, 60_000, 60_000, &[0; 16]);
    assert_format(ok(&huge, &lab), "imgs.idx3", &["truncated", "only 16"]);
    let mut overflow = vec![0, 0, 0x08, 4];
    for _ in 0..4 {
        overflow.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    assert_format(ok(&overflow, &lab), "imgs.idx3", &["overflows"]);
    // no samples
    assert_format(ok(&idx_images(0, 2, 3, &[]), &idx_labels(&[])), "imgs.idx3", &["no samples"]);
    // corrupt gzip: magic bytes, then a truncated stream
    let gz = gzip(&img);
    assert_format(ok(&gz[..gz.len() / 2], &lab), "imgs.idx3", &["gzip"]);
}

#[test]
fn idx_missing_file_is_an_io_error_naming_it() {
    let dir = temp_dir("idx-missing");
    let (img, _, _) = small_idx();
    let ip = write(&dir, "x-images-idx3-ubyte", &img);
    match data::read_idx(&ip, dir.join("nope")) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("nope")),
        other => panic!("expected an Io error, got {other:?}"),
    }
    // through the resolver: the labels file named by convention is missing
    assert_format(data::source(ip.to_str().unwrap()), "x-images-idx3-ubyte", &["labels file", "missing"]);
    let lp = write(&dir, "x-labels-idx1-ubyte", &idx_labels(&[0, 1, 2]));
    assert_format(data::source(lp.to_str().unwrap()), "x-labels-idx1-ubyte", &["images file"]);
}

// ---------- CIFAR-10 ----------

/// Two CIFAR-10 records: labels 3 and 9, pixel k of record r = (k + r) mod 256.
fn cifar_records(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (r, &l) in labels.iter().enumerate() {
        b.push(l);
        b.extend((0..3072).map(|k| ((k + r) % 256) as u8));
    }
    b
}

#[test]
fn cifar_reads_records_as_rgb_planes() {
    let dir = temp_dir("cifar");
    let bytes = cifar_records(&[3, 9]);
    for (name, content) in [("data_batch_1.bin", bytes.clone()), ("data_batch_2.bin.gz", gzip(&bytes))] {
        let p = write(&dir, name, &content);
        let ds = data::read_cifar10(&p).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.sample_shape(), &[3, 32, 32]);
        assert_eq!(ds.labels(), &[3, 9]);
        assert_eq!(ds.num_classes(), 10);
        // R plane first, then G (offset 1024), then B (offset 2048), row-major 32 x 32
        let s1 = ds.sample(1);
        assert_eq!(s1[0], 1.0 / 255.0);
        assert_eq!(s1[1024 + 32 + 2], ((1024 + 32 + 2 + 1) % 256) as f64 / 255.0);
        let be = CpuBackend::<f64>::new();
        let t = ds.to_tensor_shaped(&be);
        assert_eq!(t.shape(), &[2, 3, 32, 32]);
        assert_eq!(t.to_f64_vec(), ds.features());
        assert_eq!(data::source(p.to_str().unwrap()).unwrap(), ds);
    }
    let both =
        data::read_cifar10_batches(&[dir.join("data_batch_1.bin"), dir.join("data_batch_2.bin.gz")]).unwrap();
    assert_eq!(both.len(), 4);
    assert_eq!(both.labels(), &[3, 9, 3, 9]);
}

#[test]
fn cifar_rejects_bad_lengths_and_labels() {
    let bytes = cifar_records(&[3, 9]);
    assert_format(data::cifar10_from_bytes(&bytes[..3073 + 100], "b.bin"), "b.bin", &["3173 bytes", "3073"]);
    assert_format(data::cifar10_from_bytes(&[], "b.bin"), "b.bin", &["empty"]);
    let mut bad = bytes.clone();
    bad[3073] = 10;
    assert_format(data::cifar10_from_bytes(&bad, "b.bin"), "b.bin", &["record 1", "label 10"]);
}

// ---------- CSV ----------

#[test]
fn csv_reads_headers_label_columns_delimiters_and_gzip() {
    let dir = temp_dir("csv");
    let text = "a,label,b\n0.5,1,2\r\n\n1.5, 0 ,-3e2\n";
    let p = write(&dir, "named.csv", text.as_bytes());
    let opts = CsvOptions { label: LabelColumn::Name("label".into()), ..CsvOptions::default() };
    let ds = data::read_csv(&p, &opts).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.features(), &[0.5, 2.0, 1.5, -300.0]);
    assert_eq!(ds.labels(), &[1, 0]);
    assert_eq!(ds.num_classes(), 2);
    // the same by index; header detected automatically
    let by_index = CsvOptions { label: LabelColumn::Index(1), ..CsvOptions::default() };
    assert_eq!(data::read_csv(&p, &by_index).unwrap(), ds);
    // no header, label last, gzip, semicolons and quotes, declared shape and classes
    let text = "\"1\";2;3;4;5\n6;7;8;9;2\n";
    let p = write(&dir, "semi.csv.gz", &gzip(text.as_bytes()));
    let opts = CsvOptions {
        delimiter: ';',
        num_classes: Some(7),
        sample_shape: Some(vec![2, 2]),
        ..CsvOptions::default()
    };
    let ds = data::read_csv(&p, &opts).unwrap();
    assert_eq!(ds.features(), &[1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0]);
    assert_eq!(ds.labels(), &[5, 2]);
    assert_eq!(ds.sample_shape(), &[2, 2]);
    assert_eq!(ds.num_classes(), 7);
    // `source` reads *.csv.gz with the defaults
    let p = write(&dir, "plain.csv.gz", &gzip(b"1,2,0\n3,4,1\n"));
    let ds = data::source(p.to_str().unwrap()).unwrap();
    assert_eq!((ds.len(), ds.num_features(), ds.labels()), (2, 2, &[0usize, 1][..]));
}

#[test]
fn csv_errors_name_the_file_line_and_column() {
    let read = |text: &str, opts: &CsvOptions| data::csv_from_bytes(text.as_bytes(), "t.csv", opts);
    let d = CsvOptions::default();
    assert_format(read("1,2,0\n3,4\n", &d), "t.csv", &["line 2", "2 fields", "expected 3"]);
    assert_format(read("1,2,0\n3,4,1,5\n", &d), "t.csv", &["line 2", "more than 3 fields"]);
    assert_format(read("1,2,0\n3,x4,1\n", &d), "t.csv", &["line 2, column 2", "`x4` is not a number"]);
    assert_format(read("a,b,y\n1,2,0\n3,4,x\n", &d), "t.csv", &["line 3, column 3 (`y`)", "`x`"]);
    assert_format(read("1,2,0\n3,NaN,1\n", &d), "t.csv", &["line 2, column 2", "not finite"]);
    assert_format(read("1,2,0\n\n3,4,1\ninf,4,1\n", &d), "t.csv", &["line 4, column 1", "not finite"]);
    assert_format(read("1,2,0\n3,1e999,1\n", &d), "t.csv", &["line 2, column 2", "not finite"]);
    assert_format(
        read("1,2,-1\n", &d),
        "t.csv",
        &["line 1, column 3", "label", "not a non-negative integer"],
    );
    assert_format(
        read("1,2,1.5\n", &d),
        "t.csv",
        &["line 1, column 3", "`1.5`", "not a non-negative integer"],
    );
    assert_format(read("1,2,nan\n", &d), "t.csv", &["line 1, column 3", "not a non-negative integer"]);
    assert_format(read("1,2,1e300\n", &d), "t.csv", &["line 1, column 3", "too large"]);
    let k3 = CsvOptions { num_classes: Some(3), ..CsvOptions::default() };
    assert_format(
        read("1,2,0\n3,4,3\n", &k3),
        "t.csv",
        &["line 2, column 3", "label 3", "3 declared classes"],
    );
    let named = CsvOptions { label: LabelColumn::Name("target".into()), ..CsvOptions::default() };
    assert_format(read("a,b,y\n1,2,0\n", &named), "t.csv", &["no column named `target`", "a, b, y"]);
    let idx = CsvOptions { label: LabelColumn::Index(5), ..CsvOptions::default() };
    assert_format(read("1,2,0\n", &idx), "t.csv", &["label column index 5", "3 columns"]);
    assert_format(read("", &d), "t.csv", &["empty"]);
    assert_format(read("\n \n", &d), "t.csv", &["empty"]);
    assert_format(read("a,b,y\n", &d), "t.csv", &["no data rows"]);
    assert_format(read("1\n2\n", &d), "t.csv", &["line 1", "1 column"]);
    // a mixed first line is data unless a header is declared
    assert_format(read("0,1,label\n1,2,0\n", &d), "t.csv", &["line 1, column 3", "`label`"]);
    let hdr = CsvOptions { header: Header::Present, ..CsvOptions::default() };
    assert_eq!(read("0,1,label\n1,2,0\n", &hdr).unwrap().len(), 1);
    let shape = CsvOptions { sample_shape: Some(vec![3]), ..CsvOptions::default() };
    assert_format(read("1,2,0\n", &shape), "t.csv", &["sample shape [3]", "2 feature columns"]);
    assert_format(
        data::csv_from_bytes(&[b'1', b',', 0xff, b'\n'], "t.csv", &d),
        "t.csv",
        &["not UTF-8", "offset 2"],
    );
    let no_header = CsvOptions { label: LabelColumn::Name("y".into()), header: Header::Absent, ..d.clone() };
    assert!(matches!(read("1,2,0\n", &no_header), Err(Error::Config(_))));
}

// ---------- safetensors ----------

fn write_st(dir: &Path, name: &str, arrays: Vec<(&str, OutArray)>, meta: &[(&str, &str)]) -> PathBuf {
    let p = dir.join(name);
    let arrays: BTreeMap<String, OutArray> = arrays.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let meta: BTreeMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    write_safetensors(&p, &arrays, &meta).unwrap();
    p
}

#[test]
fn safetensors_reads_x_and_y() {
    let dir = temp_dir("st");
    let x: Vec<f64> = (0..24).map(|i| i as f64 * 0.25 - 1.0).collect();
    let p = write_st(
        &dir,
        "d.safetensors",
        vec![("X", OutArray::f64(&[4, 2, 3], x.clone())), ("y", OutArray::i64(&[4], &[0, 2, 1, 2]))],
        &[],
    );
    let ds = data::read_safetensors(&p).unwrap();
    assert_eq!(ds.sample_shape(), &[2, 3]);
    assert_eq!(ds.features(), x.as_slice());
    assert_eq!(ds.labels(), &[0, 2, 1, 2]);
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(data::source(p.to_str().unwrap()).unwrap(), ds);
    let be = CpuBackend::<f64>::new();
    assert_eq!(ds.to_tensor(&be).shape(), &[4, 6]);
    assert_eq!(ds.to_tensor_shaped(&be).shape(), &[4, 2, 3]);
    // float labels that are integers, an [m, 1] label column, declared classes
    let p = write_st(
        &dir,
        "f.safetensors",
        vec![
            ("X", OutArray::f32(&[2, 2], vec![1.0, 2.0, 3.0, 4.0])),
            ("y", OutArray::f64(&[2, 1], vec![1.0, 0.0])),
        ],
        &[("num_classes", "5")],
    );
    let ds = data::read_safetensors(&p).unwrap();
    assert_eq!((ds.labels(), ds.num_classes()), (&[1usize, 0][..], 5));
}

#[test]
fn safetensors_errors_name_the_tensor() {
    let dir = temp_dir("st-bad");
    let x = || OutArray::f64(&[3, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let y = || OutArray::i64(&[3], &[0, 1, 1]);
    let case = |name: &str, arrays: Vec<(&str, OutArray)>, meta: &[(&str, &str)]| {
        data::read_safetensors(write_st(&dir, name, arrays, meta))
    };
    assert_format(case("a.safetensors", vec![("y", y())], &[]), "a.safetensors", &["missing tensor `X`"]);
    assert_format(case("b.safetensors", vec![("X", x())], &[]), "b.safetensors", &["missing tensor `y`"]);
    assert_format(
        case("c.safetensors", vec![("X", x()), ("y", OutArray::i64(&[2], &[0, 1]))], &[]),
        "c.safetensors",
        &["`y` has shape [2]", "expected [3]"],
    );
    assert_format(
        case(
            "d.safetensors",
            vec![("X", OutArray::f64(&[3, 2], vec![0.0, 1.0, f64::NAN, 3.0, 4.0, 5.0])), ("y", y())],
            &[],
        ),
        "d.safetensors",
        &["`X`", "NaN", "sample 1, feature 0", "not finite"],
    );
    assert_format(
        case(
            "e.safetensors",
            vec![("X", OutArray::f64(&[3, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, f64::INFINITY])), ("y", y())],
            &[],
        ),
        "e.safetensors",
        &["sample 2, feature 1", "not finite"],
    );
    assert_format(
        case("f.safetensors", vec![("X", x()), ("y", OutArray::i64(&[3], &[0, -1, 1]))], &[]),
        "f.safetensors",
        &["label -1 at sample 1", "not a non-negative integer"],
    );
    assert_format(
        case("g.safetensors", vec![("X", x()), ("y", OutArray::f64(&[3], vec![0.0, 1.0, 0.5]))], &[]),
        "g.safetensors",
        &["label 0.5 at sample 2"],
    );
    assert_format(
        case("h.safetensors", vec![("X", x()), ("y", y())], &[("num_classes", "1")]),
        "h.safetensors",
        &["label 1 at sample 1", "1 declared classes"],
    );
    assert_format(
        case("i.safetensors", vec![("X", OutArray::f64(&[3], vec![0.0; 3])), ("y", y())], &[]),
        "i.safetensors",
        &["`X` has shape [3]"],
    );
    let p = write(&dir, "j.safetensors", b"definitely not safetensors");
    assert_format(data::read_safetensors(&p), "j.safetensors", &["safetensors"]);
}

// ---------- Dataset, declared classes, tensors ----------

#[test]
fn declared_num_classes_rejects_labels_out_of_range() {
    let ds = Dataset::new("mem", vec![0.0; 6], &[2], vec![0, 4, 1], None).unwrap();
    assert_eq!(ds.num_classes(), 5);
    assert_eq!(ds.class_counts(), vec![1, 1, 0, 0, 1]);
    assert_format(ds.clone().with_num_classes(4), "mem", &["label 4 of sample 1", "4 classes"]);
    assert_eq!(ds.clone().with_num_classes(10).unwrap().num_classes(), 10);
    assert_format(Dataset::new("mem", vec![0.0; 5], &[2], vec![0, 1, 2], None), "mem", &["5 feature values"]);
    assert_format(Dataset::new("mem", vec![0.0; 6], &[2], vec![0, 1, 2], Some(2)), "mem", &["label 2"]);
    let img = ds.clone().with_sample_shape(&[1, 2]).unwrap();
    assert_eq!(img.sample_shape(), &[1, 2]);
    assert_format(ds.with_sample_shape(&[3]), "mem", &["[3]"]);
}

#[test]
fn to_tensor_uploads_samples_as_rows() {
    let be = CpuBackend::<f64>::new();
    let ds = Dataset::new("mem", (0..12).map(|i| i as f64).collect(), &[2, 3], vec![0, 1], None).unwrap();
    let t = ds.to_tensor(&be);
    assert_eq!(t.shape(), &[2, 6]);
    assert_eq!(t.to_f64_vec(), ds.features());
    let t = ds.to_tensor_shaped(&CpuBackend::<f32>::new());
    assert_eq!(t.shape(), &[2, 2, 3]);
    assert_eq!(t.to_f64_vec()[7], 7.0);
}

// ---------- embedded and installed sets, the resolver ----------

#[test]
fn embedded_digits_have_the_documented_shape() {
    let ds = data::digits().unwrap();
    assert_eq!(ds.len(), 1797);
    assert_eq!(ds.num_features(), 64);
    assert_eq!(ds.sample_shape(), &[8, 8]);
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(ds.class_counts(), vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    // first row of the file: 0,0,5,13,9,1,0,0,... label 0
    assert_eq!(&ds.sample(0)[..4], &[0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0]);
    assert_eq!(ds.labels()[0], 0);
    let max = ds.features().iter().cloned().fold(f64::MIN, f64::max);
    let min = ds.features().iter().cloned().fold(f64::MAX, f64::min);
    assert_eq!((min, max), (0.0, 1.0));
    assert_eq!(data::source("digits").unwrap(), ds);
}

#[test]
fn embedded_mnist5k_has_the_documented_shape() {
    let ds = data::mnist5k().unwrap();
    assert_eq!(ds.len(), 5000);
    assert_eq!(ds.num_features(), 784);
    assert_eq!(ds.sample_shape(), &[28, 28]);
    assert_eq!(ds.class_counts(), vec![500; 10]);
    let max = ds.features().iter().cloned().fold(f64::MIN, f64::max);
    let min = ds.features().iter().cloned().fold(f64::MAX, f64::min);
    assert_eq!((min, max), (0.0, 1.0));
    // a digit has ink: the mean grey level of MNIST is about 0.13
    let mean = ds.features().iter().sum::<f64>() / ds.features().len() as f64;
    assert!((0.08..0.2).contains(&mean), "mean grey level {mean}");
    assert_eq!(data::source("mnist5k").unwrap().len(), 5000);
}

#[test]
fn fashion_mnist_loads_when_installed_and_says_how_to_install_otherwise() {
    let missing = data::fashion_mnist_in(Path::new("/nonexistent/fashion"), false);
    match missing {
        Err(e @ Error::Io { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("apt-get install -y dataset-fashion-mnist"), "{msg}");
            assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    let dir = data::fashion_mnist_dir();
    if dir.join("t10k-images-idx3-ubyte.gz").is_file() || dir.join("t10k-images-idx3-ubyte").is_file() {
        let test = data::source("fashion-mnist-test").unwrap();
        assert_eq!(test.len(), 10_000);
        assert_eq!(test.sample_shape(), &[28, 28]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
        let train = data::fashion_mnist().unwrap();
        assert_eq!(train.len(), 60_000);
        assert_eq!(train.class_counts(), vec![6000; 10]);
    } else {
        eprintln!("Fashion-MNIST not installed in {}; only the error path was checked", dir.display());
    }
}

#[test]
fn source_resolves_names_and_sniffs_unnamed_files() {
    match data::source("no-such-set") {
        Err(e @ Error::Io { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no-such-set") && msg.contains("digits, mnist5k, fashion-mnist"), "{msg}");
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    let dir = temp_dir("sniff");
    let p = write(&dir, "table", b"1,2,0\n3,4,1\n");
    assert_eq!(data::source(p.to_str().unwrap()).unwrap().len(), 2);
    let st = write_st(
        &dir,
        "tensors.st",
        vec![("X", OutArray::f64(&[1, 2], vec![1.0, 2.0])), ("y", OutArray::i64(&[1], &[3]))],
        &[],
    );
    let p = dir.join("tensors");
    std::fs::rename(st, &p).unwrap();
    let ds = data::source(p.to_str().unwrap()).unwrap();
    assert_eq!((ds.len(), ds.labels()), (1, &[3usize][..]));
    let p = write(&dir, "blob", &[0xff, 0xfe, 0x00, 0x80]);
    assert_format(data::source(p.to_str().unwrap()), "blob", &["cannot tell the data format"]);
}

// ---------- splits ----------

/// 50 samples whose single feature is their index; labels i mod 3 (17, 17, 16 per class).
fn indexed() -> Dataset {
    Dataset::new("mem", (0..50).map(|i| i as f64).collect(), &[1], (0..50).map(|i| i % 3).collect(), None)
        .unwrap()
}

fn ids(ds: &Dataset) -> BTreeSet<usize> {
    ds.features().iter().map(|&x| x as usize).collect()
}

#[test]
fn split_is_deterministic_stratified_and_disjoint() {
    let ds = indexed();
    let (train, test) = data::split(&ds, 0.3, 42).unwrap();
    let (train2, test2) = data::split(&ds, 0.3, 42).unwrap();
    assert_eq!((&train, &test), (&train2, &test2));
    let (_, test3) = data::split(&ds, 0.3, 43).unwrap();
    assert_ne!(ids(&test), ids(&test3), "another seed should draw another test set");
    let (a, b) = (ids(&train), ids(&test));
    assert!(a.is_disjoint(&b));
    assert_eq!(a.len() + b.len(), 50);
    assert_eq!(a.union(&b).count(), 50);
    // stratified: round(n_c * 0.3) of each class in the test set
    assert_eq!(test.class_counts(), vec![5, 5, 5]);
    assert_eq!(train.class_counts(), vec![12, 12, 11]);
    assert_eq!(test.num_classes(), 3);
    // labels still belong to their samples, and the original order is kept
    for s in [&train, &test] {
        for (x, &l) in s.features().iter().zip(s.labels()) {
            assert_eq!(*x as usize % 3, l);
        }
        assert!(s.features().windows(2).all(|w| w[0] < w[1]));
    }
    let (all, none) = data::split(&ds, 0.0, 1).unwrap();
    assert_eq!((all.len(), none.len()), (50, 0));
    assert!(matches!(data::split(&ds, 1.5, 1), Err(Error::Config(_))));
    assert!(matches!(data::split(&ds, f64::NAN, 1), Err(Error::Config(_))));
    // on real data
    let digits = data::digits().unwrap();
    let (train, test) = data::split(&digits, 0.25, 0).unwrap();
    assert_eq!(train.len() + test.len(), 1797);
    let expected: Vec<usize> =
        digits.class_counts().iter().map(|&n| (n as f64 * 0.25).round() as usize).collect();
    assert_eq!(test.class_counts(), expected);
}

#[test]
fn take_per_class_is_deterministic_and_balanced() {
    let ds = indexed();
    let a = ds.take_per_class(4, 7).unwrap();
    assert_eq!(a, data::take_per_class(&ds, 4, 7).unwrap());
    assert_eq!(a.class_counts(), vec![4, 4, 4]);
    assert_eq!(ids(&a).len(), 12, "samples are drawn without replacement");
    assert_ne!(ids(&a), ids(&ds.take_per_class(4, 8).unwrap()));
    assert!(matches!(ds.take_per_class(17, 0), Err(Error::Config(m)) if m.contains("class 2 has 16")));
    let ten = data::mnist5k().unwrap().take_per_class(10, 3).unwrap();
    assert_eq!(ten.len(), 100);
    assert_eq!(ten.class_counts(), vec![10; 10]);
    let shuffled = ten.shuffled(1);
    assert_eq!(shuffled.class_counts(), vec![10; 10]);
    assert_ne!(shuffled.labels(), ten.labels());
}
