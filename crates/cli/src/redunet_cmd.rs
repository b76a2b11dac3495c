//! `rate redunet gaussians|fit|transform`: the vector ReduNet (4.1.13) on synthetic and real data, with metrics and plots.

use crate::invariant_cmd::{InvariantCmd, RotationArgs, TranslationArgs};
use crate::plot::{self, gram_heatmap, Series};
use crate::util::{
    dispatch, ensure_dir, gather_rows, progress, write_json, BackendOpts, CliError, CliResult, Command, Job,
    StepArgs,
};
use clap::{Args, Subcommand};
use models::classify::{accuracy, knn_predict, NearestSubspace};
use models::data::{self, Dataset};
use models::redunet::{gaussians, Depth, Engine, LayerProgress, Pca, Record, ReduNet, ReduNetConfig, Trace};
use rate_core::collective::agreed;
use rate_core::{Collective, Kernels, Rates, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Hyperparameters shared by the ReduNet commands.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Number of layers (the maximum when --min-gain is given).
    #[arg(long)]
    pub layers: Option<usize>,
    #[command(flatten)]
    pub step: StepArgs,
    /// Stop adding layers once the rate reduction gains less than this over --window layers.
    #[arg(long = "min-gain")]
    pub min_gain: Option<f64>,
    /// Window (in layers) of the --min-gain rule.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
}

impl NetArgs {
    fn config(&self, classes: usize, default_layers: usize) -> ReduNetConfig {
        let layers = self.layers.unwrap_or(default_layers);
        let mut c = ReduNetConfig::new(classes, layers);
        c.eta = self.step.eta;
        c.eps_sq = self.step.eps_sq;
        c.lambda = self.step.lambda;
        if let Some(min_gain) = self.min_gain {
            c.depth = Depth::Adaptive { max_layers: layers, window: self.window.min(layers), min_gain };
        }
        c
    }
}

/// The vector ReduNet commands.
#[derive(Subcommand, Debug)]
pub enum RedunetCmd {
    /// Reproduce Figure 4.5: Gaussians around the axes, built layer by layer.
    Gaussians(GaussiansArgs),
    /// Build a ReduNet on a data set (embedded name or file) and evaluate it.
    Fit(FitArgs),
    /// Apply a saved ReduNet to data; writes `Z` and `yhat` to a safetensors file.
    Transform(TransformArgs),
    /// Moved to `rate invariant rotation` (this name still runs it).
    #[command(hide = true)]
    Rotation(RotationArgs),
    /// Moved to `rate invariant translation` (this name still runs it).
    #[command(hide = true)]
    Translation(TranslationArgs),
}

/// Options of `rate redunet gaussians`.
#[derive(Args, Debug)]
pub struct GaussiansArgs {
    /// Output directory (metrics.json and PNG plots).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes (one Gaussian around each axis e_j).
    #[arg(long, default_value_t = 3)]
    pub classes: usize,
    /// Ambient dimension (at least the number of classes).
    #[arg(long, default_value_t = 3)]
    pub dim: usize,
    /// Training samples per class.
    #[arg(long = "per-class", default_value_t = 500)]
    pub per_class: usize,
    /// Test samples per class (drawn with seed + 1).
    #[arg(long = "test-per-class", default_value_t = 500)]
    pub test_per_class: usize,
    /// Standard deviation of the isotropic noise.
    #[arg(long, default_value_t = 0.1)]
    pub noise: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Options of `rate redunet fit`.
#[derive(Args, Debug)]
pub struct FitArgs {
    /// Training data: `digits`, `mnist5k`, `fashion-mnist`, or a file (IDX, CSV, safetensors X/y, CIFAR-10 .bin).
    #[arg(long)]
    pub data: String,
    /// Test data (same forms); without it a seeded stratified split of --data is used.
    #[arg(long)]
    pub test: Option<String>,
    /// Share of --data held out for testing when --test is not given.
    #[arg(long = "test-fraction", default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Use at most this many training samples per class (seeded).
    #[arg(long = "per-class")]
    pub per_class: Option<usize>,
    /// Seed of the split and subsampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rank of each class subspace in the nearest-subspace classifier.
    #[arg(long, default_value_t = 8)]
    pub components: usize,
    /// Neighbours of the cosine kNN classifier.
    #[arg(long, default_value_t = 5)]
    pub knn: usize,
    /// Project the (row-normalised) features onto their top K principal directions first;
    /// the projection is saved as pca.safetensors beside the model and `transform` applies it.
    #[arg(long)]
    pub pca: Option<usize>,
    /// Output directory (model, metrics.json, plots).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Options of `rate redunet transform`.
#[derive(Args, Debug)]
pub struct TransformArgs {
    /// Directory written by `rate redunet fit` (holds model.safetensors and model.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Data to transform (embedded name or file).
    #[arg(long)]
    pub data: String,
    /// Output safetensors file with `Z` (samples x features) and `yhat`.
    #[arg(long)]
    pub out: PathBuf,
}

impl Command for RedunetCmd {
    fn run(self, opts: BackendOpts) -> CliResult<serde_json::Value> {
        match self {
            RedunetCmd::Gaussians(a) => dispatch(opts, GaussiansJob(a)),
            RedunetCmd::Fit(a) => dispatch(opts, FitJob(a)),
            RedunetCmd::Transform(a) => dispatch(opts, TransformJob(a)),
            RedunetCmd::Rotation(a) => {
                eprintln!("note: `rate redunet rotation` is now `rate invariant rotation`");
                InvariantCmd::Rotation(a).run(opts)
            }
            RedunetCmd::Translation(a) => {
                eprintln!("note: `rate redunet translation` is now `rate invariant translation`");
                InvariantCmd::Translation(a).run(opts)
            }
        }
    }
}

fn rates_json(rates: &[Rates]) -> serde_json::Value {
    json!({
        "R": rates.iter().map(|r| r.r).collect::<Vec<_>>(),
        "Rc": rates.iter().map(|r| r.rc).collect::<Vec<_>>(),
        "delta_R": rates.iter().map(|r| r.delta_r).collect::<Vec<_>>(),
    })
}

/// Rows of `z` normalised to unit length (zero rows stay zero).
fn normalise_rows<B: Kernels>(z: &Tensor<B>) -> Tensor<B> {
    z.div(&z.norm_axis(1).clamp_min(1e-8))
}

/// Pairwise angles in degrees between the class mean directions of `z`.
pub fn class_angles(z: &[f64], d: usize, labels: &[usize], k: usize) -> Vec<Vec<f64>> {
    let mut means = vec![vec![0.0; d]; k];
    for (i, &l) in labels.iter().enumerate() {
        for c in 0..d {
            means[l][c] += z[i * d + c];
        }
    }
    for m in &mut means {
        let n = m.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        m.iter_mut().for_each(|x| *x /= n);
    }
    (0..k)
        .map(|a| {
            (0..k)
                .map(|b| {
                    let cos: f64 = (0..d).map(|c| means[a][c] * means[b][c]).sum();
                    cos.clamp(-1.0, 1.0).acos().to_degrees()
                })
                .collect()
        })
        .collect()
}

/// Projects rows onto the top two principal directions (centred), for scatter plots.
fn project_2d(z: &[f64], m: usize, d: usize) -> Vec<(f64, f64)> {
    if d == 1 {
        return (0..m).map(|i| (z[i], 0.0)).collect();
    }
    let mut mean = vec![0.0; d];
    for i in 0..m {
        for c in 0..d {
            mean[c] += z[i * d + c] / m as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for i in 0..m {
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] += (z[i * d + a] - mean[a]) * (z[i * d + b] - mean[b]);
            }
        }
    }
    let be = backend_cpu::CpuBackend::<f64>::new();
    let u = Tensor::from_f64(&be, &cov, &[d, d]).sym_eigen().map(|(_, v)| v.to_f64_vec()).ok();
    let u = u.unwrap_or_else(|| {
        let mut e = vec![0.0; d * d];
        (0..d).for_each(|i| e[i * d + i] = 1.0);
        e
    });
    (0..m)
        .map(|i| {
            let p = |col: usize| (0..d).map(|c| (z[i * d + c] - mean[c]) * u[c * d + col]).sum::<f64>();
            (p(0), p(1))
        })
        .collect()
}

/// `gram_before.png` and `gram_after.png`: `|Z^T Z|` of the input and of the
/// output features (`d` per sample), samples sorted by class.
fn gram_plots(
    out: &Path,
    before: &[f64],
    d_before: usize,
    after: &[f64],
    d: usize,
    labels: &[usize],
) -> CliResult<()> {
    let m = labels.len();
    for (name, title, z, d) in [
        ("gram_before.png", "|Z^T Z| of the input, sorted by class", before, d_before),
        ("gram_after.png", "|Z^T Z| of the output, sorted by class", after, d),
    ] {
        let (h, side) = gram_heatmap(z, m, d, labels, 300);
        plot::heatmap(&out.join(name), title, &h, side, 1.0)?;
    }
    Ok(())
}

fn rate_plot(path: &Path, title: &str, rates: &[Rates]) -> CliResult<()> {
    let pts =
        |f: fn(&Rates) -> f64| rates.iter().enumerate().map(|(l, r)| (l as f64, f(r))).collect::<Vec<_>>();
    plot::lines(
        path,
        title,
        "layer",
        "nats",
        &[
            Series { name: "R (expansion)", points: pts(|r| r.r), markers: false },
            Series { name: "Rc (compression)", points: pts(|r| r.rc), markers: false },
            Series { name: "delta R", points: pts(|r| r.delta_r), markers: false },
        ],
        false,
    )?;
    Ok(())
}

fn last_yhat<B: Kernels>(trace: &Trace<B>) -> Option<Vec<usize>> {
    let l = trace.yhat_layers();
    if l == 0 {
        return None;
    }
    trace.yhat(l - 1).map(|y| y.iter().map(|&v| v as usize).collect())
}

struct GaussiansJob(GaussiansArgs);

impl Job for GaussiansJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        if a.dim < a.classes {
            return Err(CliError::Usage(format!(
                "--dim {} must be at least --classes {} (class j is centred on axis e_j)",
                a.dim, a.classes
            )));
        }
        ensure_dir(&a.out)?;
        let train = gaussians(a.classes, a.dim, a.per_class, a.noise, a.seed)?;
        let test = gaussians(a.classes, a.dim, a.test_per_class, a.noise, a.seed.wrapping_add(1))?;
        let config = a.net.config(a.classes, 2000);
        let x = train.tensor(be);
        let t0 = Instant::now();
        let (net, trace) = ReduNet::build(&x, &train.labels, config)?;
        let build_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let test_trace = net.transform_with(
            &test.tensor(be),
            &Record { rates: false, yhat: true, features: Default::default() },
        )?;
        let transform_s = t1.elapsed().as_secs_f64();

        let (m, d) = (train.samples(), a.dim);
        let z = trace.output.to_f64_vec();
        let train_pred = last_yhat(&trace).unwrap_or_default();
        let test_pred = last_yhat(&test_trace).unwrap_or_default();
        let train_acc = accuracy(&train_pred, &train.labels)?;
        let test_acc = accuracy(&test_pred, &test.labels)?;
        let ns = NearestSubspace::fit(&trace.output, &train.labels, a.classes, 1)?;
        let test_acc_ns = accuracy(&ns.predict(&test_trace.output)?, &test.labels)?;
        let angles = class_angles(&z, d, &train.labels, a.classes);
        let angles_in = class_angles(&train.x, d, &train.labels, a.classes);
        let off_diag: Vec<f64> = (0..a.classes)
            .flat_map(|i| (0..a.classes).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| angles[i][j])
            .collect();

        rate_plot(&a.out.join("rates.png"), "Rate reduction per layer (Figure 4.5)", &trace.rates_true)?;
        let labels = &train.labels;
        plot::scatter(
            &a.out.join("features_before.png"),
            "Input features (PCA projection)",
            &project_2d(&train.x, m, d),
            labels,
        )?;
        plot::scatter(
            &a.out.join("features_after.png"),
            "Output features (PCA projection)",
            &project_2d(&z, m, d),
            labels,
        )?;
        gram_plots(&a.out, &train.x, d, &z, d, labels)?;

        let metrics = json!({
            "experiment": "redunet_gaussians",
            "backend": be.name(),
            "config": {
                "classes": a.classes, "dim": a.dim, "per_class": a.per_class, "test_per_class": a.test_per_class,
                "noise": a.noise, "seed": a.seed, "layers": net.depth(), "eta": a.net.step.eta,
                "eps_sq": a.net.step.eps_sq, "lambda": a.net.step.lambda,
            },
            "layers_built": net.depth(),
            "rates_true": rates_json(&trace.rates_true),
            "rates_code": rates_json(&trace.rates_code),
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "test_accuracy_nearest_subspace": test_acc_ns,
            "class_angles_deg": angles,
            "class_angles_input_deg": angles_in,
            "timings": { "build_s": build_s, "transform_s": transform_s },
        });
        write_json(&a.out.join("metrics.json"), &metrics)?;
        let min_angle = off_diag.iter().cloned().fold(f64::INFINITY, f64::min);
        let max_angle = off_diag.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        Ok(json!({
            "out": a.out.display().to_string(),
            "layers": net.depth(),
            "delta_R_first": trace.rates_true.first().map(|r| r.delta_r),
            "delta_R_last": trace.rates_true.last().map(|r| r.delta_r),
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "class_angle_min_deg": min_angle,
            "class_angle_max_deg": max_angle,
            "build_s": build_s,
            "transform_s": transform_s,
        }))
    }
}

/// Loads `--data`/`--test` as (train, test) with the split rule of `fit`.
fn load_split(a: &FitArgs) -> CliResult<(Dataset, Dataset)> {
    let full = data::source(&a.data)?;
    let (mut train, test) = match &a.test {
        Some(t) => {
            let test = data::source(t)?;
            if test.num_features() != full.num_features() {
                return Err(CliError::Usage(format!(
                    "--test {t} has {} features per sample but --data {} has {}",
                    test.num_features(),
                    a.data,
                    full.num_features()
                )));
            }
            (full, test)
        }
        None => data::split(&full, a.test_fraction, a.seed)?,
    };
    if let Some(n) = a.per_class {
        train = train.take_per_class(n, a.seed)?;
    }
    Ok((train, test))
}

struct FitJob(FitArgs);

impl Job for FitJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        let comm = crate::util::world();
        let (train, test) = agreed(&*comm, load_split(&a))?;
        let out = a.out.clone();
        if comm.is_root() {
            crate::util::removing_new_dir_on_error(&out, || fit(be, a, train, test, &*comm))
        } else {
            fit(be, a, train, test, &*comm)
        }
    }
}

/// Largest number of samples the Gram heat maps of `fit` use (evenly spaced in class order).
const GRAM_PLOT_SAMPLES: usize = 1200;

/// Rows for the Gram heat maps: all of them up to [`GRAM_PLOT_SAMPLES`], else
/// evenly spaced ones of the class-sorted order (every class keeps its share).
fn gram_sample(labels: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| (labels[i], i));
    let m = order.len();
    if m <= GRAM_PLOT_SAMPLES {
        return order;
    }
    (0..GRAM_PLOT_SAMPLES).map(|s| order[s * m / GRAM_PLOT_SAMPLES]).collect()
}

/// A progress hook for a ReduNet build or transform that moves `pb`.
fn layer_hook(pb: &indicatif::ProgressBar) -> LayerProgress {
    let pb = pb.clone();
    LayerProgress::new(move |done, _| pb.set_position(done as u64))
}

/// `rate redunet fit` once the data are read.
///
/// Memory: the training features are uploaded once (in class order, so that
/// the build's chunks are slices of them and its output needs no reordering)
/// and the data set's own copy is dropped; the build keeps one more copy of
/// the features and the operators; the raw baselines run before the build,
/// the feature baselines after the model is saved and dropped.
///
/// Across MPI processes (`comm`, several ranks) every process has read the
/// data; process `r` keeps the `r`-th contiguous block of the class-sorted
/// training rows and of the test rows, the PCA and the build sum their
/// statistics over the processes, rank 0 computes the raw baselines, writes
/// the model and, with the features gathered to it, evaluates and writes
/// the metrics and plots.
fn fit<B: Kernels>(
    be: &B,
    a: FitArgs,
    train: Dataset,
    test: Dataset,
    comm: &dyn Collective,
) -> CliResult<serde_json::Value> {
    {
        let (rank, size, root) = (comm.rank(), comm.size(), comm.is_root());
        crate::util::ensure_dir_on_root(comm, &a.out)?;
        let t_all = Instant::now();
        let k = train.num_classes().max(test.num_classes());
        let (m, n, d_in) = (train.len(), test.len(), train.num_features());
        let labels_in = train.labels().to_vec();
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by_key(|&i| (labels_in[i], i));
        let train_labels: Vec<usize> = order.iter().map(|&i| labels_in[i]).collect();
        // this process's training rows (of the class-sorted order) and test rows
        let (rows, test_rows) = (comm.share(m), comm.share(n));
        let test_labels = test.labels().to_vec();
        // rank 0 holds every row until the raw baselines are done
        let (raw, raw_test) = (train.to_tensor(be), test.to_tensor(be));
        drop((train, test));
        let (x_all, xt_all) = if root {
            (Some(normalise_rows(&raw.index_select(0, &order))), Some(normalise_rows(&raw_test)))
        } else {
            (None, None)
        };
        let (x, xt) = match (&x_all, &xt_all) {
            (Some(x), Some(xt)) if size == 1 => (x.clone(), xt.clone()),
            _ => {
                let idx: Vec<usize> = test_rows.clone().collect();
                (
                    normalise_rows(&raw.index_select(0, &order[rows.clone()])),
                    normalise_rows(&raw_test.index_select(0, &idx)),
                )
            }
        };
        drop((raw, raw_test));

        // the raw baselines, on the input features (rank 0)
        let comps_raw = a.components.min(d_in);
        let (mut acc_raw, mut knn_raw, mut gram_in) = (0.0, 0.0, Vec::new());
        let gram_rows = gram_sample(&train_labels);
        if let (Some(xa), Some(xta)) = (x_all, xt_all) {
            let ns_raw = NearestSubspace::fit(&xa, &train_labels, k, comps_raw)?;
            acc_raw = accuracy(&ns_raw.predict(&xta)?, &test_labels)?;
            drop(ns_raw);
            knn_raw = accuracy(&knn_predict(&xa, &train_labels, &xta, a.knn)?, &test_labels)?;
            gram_in = xa.index_select(0, &gram_rows).to_f64_vec();
        }

        let t_pca = Instant::now();
        let (x, xt, pca) = match a.pca {
            Some(kp) => {
                let p = Pca::fit_sharded(&x, kp, comm)?;
                let (xp, xtp) = (p.apply(&x)?, p.apply(&xt)?);
                (xp, xtp, Some(p))
            }
            None => (x, xt, None),
        };
        let pca_s = t_pca.elapsed().as_secs_f64();
        let d = x.dim(1);
        let config = a.net.config(k, 30);
        let layers = config.depth.max_layers();
        let model_bytes = (layers * (k + 1) * d * d * std::mem::size_of::<B::Elem>()) as f64;
        if model_bytes > 1e9 && root {
            eprintln!(
                "note: the model will hold {:.1} GB of operators ({layers} layers of {} matrices of {d} x {d}); \
                 --pca K or --layers L makes it smaller",
                model_bytes / 1e9,
                k + 1
            );
        }
        let mut peak_ranks: Vec<u64> = Vec::new();
        let t0 = Instant::now();
        let pb = progress(layers as u64, "build");
        let hook = if root { layer_hook(&pb) } else { LayerProgress::default() };
        let (net, trace) =
            ReduNet::build_sharded(&x, &train_labels[rows.clone()], config, &Record::default(), hook, comm)?;
        pb.finish_and_clear();
        let build_s = t0.elapsed().as_secs_f64();
        drop(x);
        let t1 = Instant::now();
        let pb = progress(net.depth() as u64, "test");
        let test_trace = agreed(
            comm,
            net.transform_observed(
                &xt,
                &Record { rates: false, yhat: true, features: Default::default() },
                layer_hook(&pb),
            )
            .map_err(CliError::from),
        )?;
        pb.finish_and_clear();
        let transform_s = t1.elapsed().as_secs_f64();
        let saved = if root {
            net.save(a.out.join("model.safetensors"))
                .and_then(|()| pca.as_ref().map_or(Ok(()), |p| p.save(a.out.join("pca.safetensors"))))
                .map_err(CliError::from)
        } else {
            Ok(())
        };
        agreed(comm, saved)?;
        let (depth, dim, net_config) = (net.depth(), net.dim(), net.config().clone());
        drop(net);

        // the features of every shard on rank 0 (one process: as they are)
        let t_gather = Instant::now();
        let comm_before = comm.comm_seconds();
        let (train_out, test_out, test_yhat) = if size == 1 {
            (trace.output.clone(), test_trace.output.clone(), last_yhat(&test_trace))
        } else {
            let tr = gather_rows(comm, trace.output.to_f64_vec(), dim)?;
            let te = gather_rows(comm, test_trace.output.to_f64_vec(), dim)?;
            let yh: Vec<f64> = last_yhat(&test_trace).unwrap_or_default().iter().map(|&y| y as f64).collect();
            let yh = gather_rows(comm, yh, 1)?;
            let rss = comm.all_gather(&[models::io::peak_rss_bytes().unwrap_or(0) as f64])?;
            let Some(((tr, te), yh)) = tr.zip(te).zip(yh) else {
                // ranks other than 0 are done: rank 0 evaluates and reports
                return Ok(
                    json!({ "rank": rank, "ranks": size, "train_rows": rows.len(), "test_rows": test_rows.len() }),
                );
            };
            peak_ranks = rss.iter().map(|&b| b as u64).collect();
            let yh = (depth > 0).then(|| yh.into_iter().map(|y| y as usize).collect());
            (Tensor::from_f64(be, &tr, &[m, dim]), Tensor::from_f64(be, &te, &[n, dim]), yh)
        };
        let gather_s = t_gather.elapsed().as_secs_f64();
        let comm_gather_s = comm.comm_seconds() - comm_before;

        let t2 = Instant::now();
        let comps = a.components.min(dim);
        let ns = NearestSubspace::fit(&train_out, &train_labels, k, comps)?;
        let acc_feat = accuracy(&ns.predict(&test_out)?, &test_labels)?;
        drop(ns);
        let knn_feat = accuracy(&knn_predict(&train_out, &train_labels, &test_out, a.knn)?, &test_labels)?;
        let memb = test_yhat.map(|p| accuracy(&p, &test_labels)).transpose()?;
        let evaluate_s = t2.elapsed().as_secs_f64();

        rate_plot(
            &a.out.join("rates.png"),
            &format!("Rate reduction per layer ({})", a.data),
            &trace.rates_true,
        )?;
        let gram_out = train_out.index_select(0, &gram_rows).to_f64_vec();
        let sample_labels: Vec<usize> = gram_rows.iter().map(|&i| train_labels[i]).collect();
        gram_plots(&a.out, &gram_in, d_in, &gram_out, dim, &sample_labels)?;
        let peak = models::io::peak_rss_bytes();
        if size == 1 {
            peak_ranks = peak.into_iter().collect();
        }

        let metrics = json!({
            "experiment": "redunet_fit",
            "backend": be.name(),
            "data": a.data, "test": a.test, "train_samples": m, "test_samples": n,
            "input_features": d_in,
            "features": dim, "classes": k, "layers_built": depth,
            "pca": pca.as_ref().map(|p| json!({
                "components": p.output_dim(), "explained_variance": p.explained_variance(),
            })),
            "config": net_config,
            "rates_true": rates_json(&trace.rates_true),
            "rates_code": rates_json(&trace.rates_code),
            "test_accuracy": {
                "nearest_subspace_raw": acc_raw,
                "nearest_subspace_features": acc_feat,
                "knn_cosine_raw": knn_raw,
                "knn_cosine_features": knn_feat,
                "membership_last_layer": memb,
                "components": comps, "components_raw": comps_raw, "knn_k": a.knn,
            },
            "timings": {
                "pca_s": pca_s, "build_s": build_s, "transform_s": transform_s, "evaluate_s": evaluate_s,
                "total_s": t_all.elapsed().as_secs_f64(),
            },
            "peak_rss_bytes": peak,
            "gram_plot_samples": gram_rows.len(),
            "mpi": {
                "ranks": size,
                "comm_s": comm.comm_seconds(),
                "comm_gather_s": comm_gather_s,
                "gather_s": gather_s,
                "peak_rss_bytes_per_rank": peak_ranks,
            },
        });
        write_json(&a.out.join("metrics.json"), &metrics)?;
        Ok(json!({
            "out": a.out.display().to_string(),
            "layers": depth,
            "nearest_subspace_raw": acc_raw,
            "nearest_subspace_features": acc_feat,
            "knn_cosine_raw": knn_raw,
            "knn_cosine_features": knn_feat,
            "build_s": build_s,
            "total_s": t_all.elapsed().as_secs_f64(),
            "peak_rss_mb": peak.map(|b| b as f64 / 1e6),
            "ranks": size,
            "comm_s": comm.comm_seconds(),
        }))
    }
}

struct TransformJob(TransformArgs);

impl Job for TransformJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        let mut net = ReduNet::load(be, a.model.join("model.safetensors"))?;
        // the engine saved with the model is a choice of the machine that built it: here the backend's
        // kernel runs (the fused engine on the CPU for small d, the tensor ops on the device on wgpu)
        net.set_engine(Engine::Auto);
        let ds = data::source(&a.data)?;
        let pca_path = a.model.join("pca.safetensors");
        let pca = if pca_path.exists() { Some(Pca::load(be, &pca_path)?) } else { None };
        let expects = pca.as_ref().map_or(net.dim(), |p| p.input_dim());
        if ds.num_features() != expects {
            return Err(CliError::Usage(format!(
                "--data {} has {} features per sample but the model in {} expects {}",
                a.data,
                ds.num_features(),
                a.model.display(),
                expects
            )));
        }
        let x = normalise_rows(&ds.to_tensor(be));
        let x = match &pca {
            Some(p) => p.apply(&x)?,
            None => x,
        };
        let trace =
            net.transform_with(&x, &Record { rates: false, yhat: true, features: Default::default() })?;
        let yhat: Vec<i64> = last_yhat(&trace).unwrap_or_default().into_iter().map(|v| v as i64).collect();
        let mut arrays = std::collections::BTreeMap::new();
        arrays.insert(
            "Z".to_string(),
            models::io::OutArray::f64(&[ds.len(), net.dim()], trace.output.to_f64_vec()),
        );
        arrays.insert("yhat".to_string(), models::io::OutArray::i64(&[yhat.len()], &yhat));
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("model".to_string(), a.model.display().to_string());
        meta.insert("data".to_string(), a.data.clone());
        models::io::write_safetensors(&a.out, &arrays, &meta)?;
        let acc = accuracy(&yhat.iter().map(|&v| v as usize).collect::<Vec<_>>(), ds.labels()).ok();
        Ok(json!({ "out": a.out.display().to_string(), "samples": ds.len(), "membership_accuracy": acc }))
    }
}
