//! PNG plots for the experiments (line curves, 2-D scatter by class, heat maps), drawn with plotters and a bundled DejaVu Sans font.
//!
//! The font is compiled into the binary so plots render on a machine with no
//! system fonts.

use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is a compile-time constant known to parse; a failure only loses text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A plotting failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot draw plot: {message}")]
pub struct PlotError {
    /// The output file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError { path: path.display().to_string(), message: e.to_string() }
}

/// Distinct colours for series and classes.
pub fn palette(i: usize) -> RGBColor {
    const P: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

/// One named curve.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
    /// Draw markers instead of a line.
    pub markers: bool,
}

fn range(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if log {
        return (lo / 1.5, hi * 1.5);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// A short tick label: scientific notation for very large or small values, else
/// at most three decimals without trailing zeros.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".into()
        } else {
            s.to_string()
        }
    }
}

/// Line (or marker) plot of several series, optionally log-log.
pub fn lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series<'_>],
    loglog: bool,
) -> Result<(), PlotError> {
    register_font();
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    draw_lines(&root, path, &Panel { title, xlabel, ylabel, series, loglog })?;
    root.present().map_err(|e| err(path, e))
}

/// One chart of a [`panels`] figure.
pub struct Panel<'a> {
    /// Caption.
    pub title: &'a str,
    /// x-axis label.
    pub xlabel: &'a str,
    /// y-axis label.
    pub ylabel: &'a str,
    /// The curves.
    pub series: &'a [Series<'a>],
    /// Log-log axes.
    pub loglog: bool,
}

/// Several line charts side by side, `cols` to a row, in one PNG.
pub fn panels(path: &Path, panels: &[Panel<'_>], cols: usize) -> Result<(), PlotError> {
    register_font();
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(path, (620 * cols as u32, 460 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_lines(area, path, panel)?;
    }
    root.present().map_err(|e| err(path, e))
}

fn draw_lines(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    path: &Path,
    panel: &Panel<'_>,
) -> Result<(), PlotError> {
    let Panel { title, xlabel, ylabel, series, loglog } = *panel;
    let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), loglog);
    let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), loglog);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xlabel)
                .y_desc(ylabel)
                .label_style(("sans-serif", 14))
                .x_labels(8)
                .y_labels(8)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .draw()
                .map_err(|e| err(path, e))?;
            for (i, s) in series.iter().enumerate() {
                let c = palette(i);
                let pts = s.points.iter().copied().filter(|(x, y)| !loglog || (*x > 0.0 && *y > 0.0));
                if s.markers {
                    chart
                        .draw_series(pts.map(|p| Circle::new(p, 4, c.filled())))
                        .map_err(|e| err(path, e))?
                        .label(s.name)
                        .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
                } else {
                    chart
                        .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                        .map_err(|e| err(path, e))?
                        .label(s.name)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(path, e))?;
        }};
    }
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 22)).margin(15).x_label_area_size(45).y_label_area_size(70);
    if loglog {
        draw!(builder
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(|e| err(path, e))?);
    } else {
        draw!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| err(path, e))?);
    }
    Ok(())
}

/// Scatter of 2-D points coloured by class label.
pub fn scatter(path: &Path, title: &str, points: &[(f64, f64)], labels: &[usize]) -> Result<(), PlotError> {
    register_font();
    let root = BitMapBackend::new(path, (700, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (x0, x1) = range(points.iter().map(|p| p.0), false);
    let (y0, y1) = range(points.iter().map(|p| p.1), false);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(path, e))?;
    chart.configure_mesh().label_style(("sans-serif", 13)).draw().map_err(|e| err(path, e))?;
    chart
        .draw_series(
            points.iter().zip(labels).map(|(&p, &l)| Circle::new(p, 3, palette(l).mix(0.7).filled())),
        )
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// Heat map of an `n x n` row-major matrix of values in `[0, vmax]` (white to dark blue).
pub fn heatmap(path: &Path, title: &str, values: &[f64], n: usize, vmax: f64) -> Result<(), PlotError> {
    register_font();
    if values.len() != n * n {
        return Err(err(path, format!("heat map needs {n}x{n} values, got {}", values.len())));
    }
    let side = 700u32;
    let root = BitMapBackend::new(path, (side, side + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .build_cartesian_2d(0..n, 0..n)
        .map_err(|e| err(path, e))?;
    let vmax = if vmax > 0.0 { vmax } else { 1.0 };
    chart
        .draw_series((0..n).flat_map(|i| {
            (0..n).map(move |j| {
                let v = (values[i * n + j] / vmax).clamp(0.0, 1.0);
                let shade = |a: f64, b: f64| (a + (b - a) * v) as u8;
                let c = RGBColor(shade(255.0, 8.0), shade(255.0, 48.0), shade(255.0, 107.0));
                // row i drawn from the top
                Rectangle::new([(j, n - 1 - i), (j + 1, n - i)], c.filled())
            })
        }))
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// `|Z Z^T|` with samples sorted by class, average-pooled to at most `max_side` cells a side.
pub fn gram_heatmap(z: &[f64], m: usize, d: usize, labels: &[usize], max_side: usize) -> (Vec<f64>, usize) {
    let mut g = vec![0.0; m * m];
    for i in 0..m {
        for j in 0..m {
            g[i * m + j] = (0..d).map(|c| z[i * d + c] * z[j * d + c]).sum::<f64>().abs();
        }
    }
    pool_heatmap(&g, labels, max_side)
}

/// A non-negative `m x m` matrix `g` (`m = labels.len()`) with rows and columns
/// sorted by class, average-pooled to at most `max_side` cells a side.
pub fn pool_heatmap(g: &[f64], labels: &[usize], max_side: usize) -> (Vec<f64>, usize) {
    let m = labels.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by_key(|&i| (labels[i], i));
    let side = m.min(max_side).max(1);
    let mut out = vec![0.0; side * side];
    let mut cnt = vec![0.0; side * side];
    for (a, &i) in order.iter().enumerate() {
        let ba = a * side / m;
        for (b, &j) in order.iter().enumerate() {
            let bb = b * side / m;
            out[ba * side + bb] += g[i * m + j];
            cnt[ba * side + bb] += 1.0;
        }
    }
    for (o, c) in out.iter_mut().zip(&cnt) {
        if *c > 0.0 {
            *o /= c;
        }
    }
    (out, side)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rate-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d.join(name)
    }

    fn is_png(p: &Path) -> bool {
        std::fs::read(p).map(|b| b.len() > 1000 && b.starts_with(&[0x89, b'P', b'N', b'G'])).unwrap_or(false)
    }

    #[test]
    fn draws_every_kind_of_plot_as_png() {
        let p = tmp("lines.png");
        let s = Series {
            name: "curve",
            points: (1..50).map(|i| (i as f64, (i as f64).ln())).collect(),
            markers: false,
        };
        let m = Series { name: "pts", points: vec![(2.0, 1.0), (10.0, 2.0)], markers: true };
        lines(&p, "a title", "x", "y", &[s, m], false).expect("lines");
        assert!(is_png(&p));
        let s = Series {
            name: "loglog",
            points: (1..50).map(|i| (i as f64, (i * i) as f64)).collect(),
            markers: false,
        };
        lines(&tmp("loglog.png"), "log", "n", "t", &[s], true).expect("loglog");
        let q = tmp("scatter.png");
        scatter(&q, "scatter", &[(0.0, 0.0), (1.0, 1.0), (0.5, -1.0)], &[0, 1, 2]).expect("scatter");
        assert!(is_png(&q));
        let h = tmp("heat.png");
        heatmap(&h, "heat", &[1.0, 0.5, 0.0, 1.0], 2, 1.0).expect("heat");
        assert!(is_png(&h));
        assert!(heatmap(&h, "bad", &[1.0], 2, 1.0).is_err());
    }
}
