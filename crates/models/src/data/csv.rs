//! CSV reader: one sample per line, numeric feature columns and one integer label column, optional header, raw or gzip.
//!
//! Fields are split on the delimiter and trimmed; a field wholly wrapped in
//! double quotes loses them (quoted delimiters are not supported). Blank
//! lines are skipped. Lines and columns in error messages count from 1.

use super::bytes::{format_err, maybe_gunzip, read_file};
use super::{Dataset, MAX_CLASSES};
use crate::{Error, Result};
use std::path::Path;

/// Which column holds the labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column (the default).
    #[default]
    Last,
    /// The column at this 0-based index.
    Index(usize),
    /// The column with this header name (needs a header line).
    Name(String),
}

/// Whether the first non-blank line is a header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Header {
    /// A header if none of its fields parses as a number (the default); a
    /// header is required when the label column is chosen by name.
    #[default]
    Auto,
    /// The first line is a header.
    Present,
    /// Every line is data.
    Absent,
}

/// How to read a CSV file.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvOptions {
    /// The label column.
    pub label: LabelColumn,
    /// Header handling.
    pub header: Header,
    /// Field delimiter (`,` by default).
    pub delimiter: char,
    /// Declared number of classes: a label `>= num_classes` is an error.
    /// `None`: the largest label + 1.
    pub num_classes: Option<usize>,
    /// Shape of one sample (its product must be the number of feature
    /// columns); `None`: `[features]`.
    pub sample_shape: Option<Vec<usize>>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            label: LabelColumn::Last,
            header: Header::Auto,
            delimiter: ',',
            num_classes: None,
            sample_shape: None,
        }
    }
}

/// One field, trimmed and unquoted.
fn clean(field: &str) -> &str {
    let f = field.trim();
    if f.len() >= 2 && f.starts_with('"') && f.ends_with('"') {
        f[1..f.len() - 1].trim()
    } else {
        f
    }
}

/// Parses a field as f64, with a fast exact path for short unsigned integers
/// (the grey levels that fill image CSVs).
fn parse_number(field: &str) -> Option<f64> {
    let b = field.as_bytes();
    if !b.is_empty() && b.len() <= 15 && b.iter().all(u8::is_ascii_digit) {
        return Some(b.iter().fold(0u64, |acc, &d| acc * 10 + (d - b'0') as u64) as f64);
    }
    field.parse().ok()
}

/// A short rendering of a field for messages (at most 40 characters).
fn show(field: &str) -> String {
    if field.chars().count() > 40 {
        format!("{}...", field.chars().take(40).collect::<String>())
    } else {
        field.to_string()
    }
}

/// Parses CSV text (gzip or raw) into a data set; `path` only labels errors.
pub fn csv_from_bytes(bytes: &[u8], path: &str, options: &CsvOptions) -> Result<Dataset> {
    let bytes = maybe_gunzip(bytes, path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        format_err(path, format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to()))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let delim = options.delimiter;
    if let (LabelColumn::Name(name), Header::Absent) = (&options.label, options.header) {
        return Err(Error::Config(format!(
            "CSV {path}: label column `{name}` is chosen by name, but the header is declared absent"
        )));
    }
    if options.num_classes == Some(0) {
        return Err(Error::Config(format!("CSV {path}: num_classes must be at least 1")));
    }

    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((first_no, first)) = lines.next() else {
        return Err(format_err(path, "empty CSV file: no lines"));
    };
    let first_fields: Vec<&str> = first.split(delim).map(clean).collect();
    let ncols = first_fields.len();
    let has_header = match options.header {
        Header::Present => true,
        Header::Absent => false,
        Header::Auto => {
            matches!(options.label, LabelColumn::Name(_))
                || first_fields.iter().all(|f| f.parse::<f64>().is_err())
        }
    };
    if ncols < 2 {
        return Err(format_err(
            path,
            format!(
                "line {first_no}: {ncols} column, a CSV data file needs feature columns and a label column"
            ),
        ));
    }
    let label_col = match &options.label {
        LabelColumn::Last => ncols - 1,
        LabelColumn::Index(i) if *i < ncols => *i,
        LabelColumn::Index(i) => {
            return Err(format_err(
                path,
                format!("label column index {i} is out of range: line {first_no} has {ncols} columns"),
            ))
        }
        LabelColumn::Name(name) => first_fields.iter().position(|f| f == name).ok_or_else(|| {
            format_err(
                path,
                format!(
                    "no column named `{name}` in the header (line {first_no}): {}",
                    first_fields.iter().map(|f| show(f)).collect::<Vec<_>>().join(", ")
                ),
            )
        })?,
    };
    let nfeat = ncols - 1;
    let sample_shape = match &options.sample_shape {
        None => vec![nfeat],
        Some(s) if s.iter().product::<usize>() == nfeat && !s.is_empty() => s.clone(),
        Some(s) => {
            return Err(format_err(
                path,
                format!("sample shape {s:?} does not hold the {nfeat} feature columns"),
            ))
        }
    };
    let col_name = |c: usize| -> String {
        if has_header {
            format!(" (`{}`)", show(first_fields[c]))
        } else {
            String::new()
        }
    };

    let mut features = Vec::new();
    let mut labels = Vec::new();
    let data_lines: Box<dyn Iterator<Item = (usize, &str)>> =
        if has_header { Box::new(lines) } else { Box::new(std::iter::once((first_no, first)).chain(lines)) };
    for (line_no, line) in data_lines {
        let start = features.len();
        let mut nfields = 0;
        let mut label = 0usize;
        for (c, raw) in line.split(delim).enumerate() {
            nfields += 1;
            if nfields > ncols {
                break;
            }
            let field = clean(raw);
            let column = c + 1;
            let value = parse_number(field).ok_or_else(|| {
                format_err(
                    path,
                    format!(
                        "line {line_no}, column {column}{}: `{}` is not a number",
                        col_name(c),
                        show(field)
                    ),
                )
            })?;
            if c == label_col {
                if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0) {
                    return Err(format_err(
                        path,
                        format!(
                            "line {line_no}, column {column}{} (label): `{}` is not a non-negative integer",
                            col_name(c),
                            show(field)
                        ),
                    ));
                }
                let limit = options.num_classes.unwrap_or(MAX_CLASSES);
                if value >= limit as f64 {
                    let why = match options.num_classes {
                        Some(k) => format!("out of range for {k} declared classes"),
                        None => format!("too large (at most {MAX_CLASSES} classes are supported)"),
                    };
                    return Err(format_err(
                        path,
                        format!(
                            "line {line_no}, column {column}{} (label): label {value} is {why}",
                            col_name(c)
                        ),
                    ));
                }
                label = value as usize;
            } else {
                if !value.is_finite() {
                    return Err(format_err(
                        path,
                        format!(
                            "line {line_no}, column {column}{}: value `{}` is not finite",
                            col_name(c),
                            show(field)
                        ),
                    ));
                }
                features.push(value);
            }
        }
        if nfields != ncols {
            let got = if nfields > ncols { format!("more than {ncols}") } else { nfields.to_string() };
            features.truncate(start);
            return Err(format_err(
                path,
                format!("line {line_no}: {got} fields, expected {ncols} (as on line {first_no})"),
            ));
        }
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(format_err(path, "CSV file holds a header but no data rows"));
    }
    Dataset::new(path, features, &sample_shape, labels, options.num_classes)
}

/// Reads a CSV file (raw or gzip).
pub fn read_csv(path: impl AsRef<Path>, options: &CsvOptions) -> Result<Dataset> {
    let p = path.as_ref();
    csv_from_bytes(&read_file(p)?, &p.display().to_string(), options)
}
