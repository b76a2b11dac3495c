//! `rate invariant rotation|translation`: the shift-invariant ReduNet (4.1.16-4.1.27) on polar-resampled and translated digits, with invariance measures and plots.

use crate::plot::pool_heatmap;
use crate::plot::{self, Series};
use crate::util::{dispatch, progress, write_json, BackendOpts, CliError, CliResult, Command, Job, StepArgs};
use clap::{Args, Subcommand};
use models::classify::{accuracy, knn_predict, NearestSubspace};
use models::data::{self, Dataset};
use models::invariant::{
    polar_resample, rotate_polar, Activation, Construction, Domain, InvariantConfig, InvariantReduNet,
    Lifting, PolarGrid,
};
use rate_core::circulant::{frequency_covariances, half_spectrum_weights};
use rate_core::{ComplexTensor, Kernels, Rates, Tensor};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `rate invariant rotation`.
#[derive(Args, Debug)]
pub struct RotationArgs {
    /// Image data: `mnist5k`, `digits`, `fashion-mnist`, or a file of square images.
    #[arg(long, default_value = "mnist5k")]
    pub data: String,
    /// Output directory (metrics.json and plots).
    #[arg(long)]
    pub out: PathBuf,
    /// Training images per class.
    #[arg(long = "train-per-class", default_value_t = 10)]
    pub train_per_class: usize,
    /// Test images per class.
    #[arg(long = "test-per-class", default_value_t = 10)]
    pub test_per_class: usize,
    /// Radii of the polar grid (channels).
    #[arg(long, default_value_t = 15)]
    pub radii: usize,
    /// Angles of the polar grid (signal length).
    #[arg(long, default_value_t = 200)]
    pub angles: usize,
    /// Number of random lifting kernels (output channels); 0 disables lifting.
    #[arg(long, default_value_t = 20)]
    pub kernels: usize,
    /// Length of each lifting kernel.
    #[arg(long = "kernel-size", default_value_t = 5)]
    pub kernel_size: usize,
    /// Soft-threshold the lifted signals with this lambda instead of ReLU.
    #[arg(long = "soft-threshold")]
    pub soft_threshold: Option<f64>,
    /// Number of layers.
    #[arg(long, default_value_t = 40)]
    pub layers: usize,
    #[command(flatten)]
    pub step: StepArgs,
    /// Number of test rotations (angle shifts of --rotation-step bins).
    #[arg(long, default_value_t = 20)]
    pub rotations: usize,
    /// Angle bins between consecutive test rotations.
    #[arg(long = "rotation-step", default_value_t = 10)]
    pub rotation_step: usize,
    /// Rank of each class subspace in the nearest-subspace classifier.
    #[arg(long, default_value_t = 5)]
    pub components: usize,
    /// Seed of the sampling and the lifting kernels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Test images whose rotated copies are pushed through every layer to measure the
    /// equivariance error (0: all); the accuracies use the features of every rotation of
    /// every test image, from one pass of the upright images with the shifts applied as phases.
    #[arg(long = "equivariance-samples", default_value_t = 10)]
    pub equivariance_samples: usize,
}

/// Options of `rate invariant translation`.
#[derive(Args, Debug)]
pub struct TranslationArgs {
    /// Image data (`digits` by default; any square images).
    #[arg(long, default_value = "digits")]
    pub data: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Training images per class.
    #[arg(long = "train-per-class", default_value_t = 20)]
    pub train_per_class: usize,
    /// Test images per class.
    #[arg(long = "test-per-class", default_value_t = 10)]
    pub test_per_class: usize,
    /// Number of random 2-D lifting kernels; 0 disables lifting.
    #[arg(long, default_value_t = 8)]
    pub kernels: usize,
    /// Side of each square lifting kernel.
    #[arg(long = "kernel-size", default_value_t = 3)]
    pub kernel_size: usize,
    /// Number of layers.
    #[arg(long, default_value_t = 20)]
    pub layers: usize,
    #[command(flatten)]
    pub step: StepArgs,
    /// Rank of each class subspace in the nearest-subspace classifier.
    #[arg(long, default_value_t = 5)]
    pub components: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The shift- and rotation-invariant ReduNet experiments (4.1.16-4.1.27).
#[derive(Subcommand, Debug)]
pub enum InvariantCmd {
    /// The rotation-invariant MNIST experiment (Figures 4.10-4.11): polar digits, lifting, 1-D invariant ReduNet.
    Rotation(RotationArgs),
    /// The 2-D translation-invariant ReduNet on small images, evaluated on all cyclic translations.
    Translation(TranslationArgs),
}

impl Command for InvariantCmd {
    fn run(self, opts: BackendOpts) -> CliResult<serde_json::Value> {
        match self {
            InvariantCmd::Rotation(a) => dispatch(opts, RotationJob(a)),
            InvariantCmd::Translation(a) => dispatch(opts, TranslationJob(a)),
        }
    }
}

fn train_test(name: &str, n_train: usize, n_test: usize, seed: u64) -> CliResult<(Dataset, Dataset)> {
    let full = data::source(name)?;
    let s = full.sample_shape().to_vec();
    if s.len() != 2 || s[0] != s[1] {
        return Err(CliError::Usage(format!(
            "--data {name}: samples have shape {s:?}, expected square single-channel images"
        )));
    }
    let (a, b) = data::split(&full, 0.5, seed)?;
    Ok((a.take_per_class(n_train, seed)?, b.take_per_class(n_test, seed.wrapping_add(1))?))
}

/// The construction from `x` (`[m, C, ..]`) and its labels, on one
/// process or across the MPI job: each rank builds from its contiguous
/// block of samples ([`InvariantReduNet::construct_sharded`]) and the
/// training features are gathered to rank 0, which gets the construction
/// (its `record.yhat` is rank 0's block only); the other ranks get `None`.
fn construct_across_ranks<B: Kernels>(
    x: &Tensor<B>,
    labels: &[usize],
    k: usize,
    config: &InvariantConfig,
) -> CliResult<Option<Construction<B>>> {
    let comm = crate::util::world();
    if comm.size() == 1 {
        return Ok(Some(InvariantReduNet::construct(x, labels, k, config)?));
    }
    let m = x.dim(0);
    let rows = comm.share(m);
    let xs = x.narrow(0, rows.start, rows.len());
    let built = InvariantReduNet::construct_sharded(&xs, &labels[rows.clone()], k, config, &*comm)?;
    let mut shape = built.features.shape().to_vec();
    let per = built.features.numel() / rows.len().max(1);
    let all = crate::util::gather_rows(&*comm, built.features.to_f64_vec(), per)?;
    Ok(all.map(|f| {
        shape[0] = m;
        Construction { features: Tensor::from_f64(x.backend(), &f, &shape), ..built }
    }))
}

/// Rates of per-layer half spectra `[F, n, C]` (signal length `t`) with true labels.
fn spectral_rates<B: Kernels>(
    v: &ComplexTensor<B>,
    labels: &[usize],
    k: usize,
    eps_sq: f64,
    t: usize,
) -> CliResult<Rates> {
    let (n, c) = (v.shape()[1], v.shape()[2]);
    let w = half_spectrum_weights(t);
    let logdet = |s: &ComplexTensor<B>, a: f64| -> CliResult<f64> {
        let eye = Tensor::eye(s.re.backend(), c);
        let m = ComplexTensor::new(s.re.scale(a).add(&eye), s.im.scale(a));
        let ld = m.herm_logdet()?.to_f64_vec();
        Ok(ld.iter().zip(&w).map(|(l, w)| l * w).sum::<f64>() / (2.0 * t as f64))
    };
    let r = logdet(&frequency_covariances(v), c as f64 / (n as f64 * eps_sq))?;
    let mut rc = 0.0;
    for j in 0..k {
        let idx: Vec<usize> = (0..n).filter(|&i| labels[i] == j).collect();
        if idx.is_empty() {
            continue;
        }
        let vj = ComplexTensor::new(v.re.index_select(1, &idx), v.im.index_select(1, &idx));
        let mj = idx.len() as f64;
        rc += mj / n as f64 * logdet(&frequency_covariances(&vj), c as f64 / (mj * eps_sq))?;
    }
    Ok(Rates { r, rc, delta_r: r - rc })
}

/// `|cos|` between every pair of samples (each flattened), `n x n` row-major,
/// from one product of the unit rows on the backend (zero rows give 0).
fn abs_cosines<B: Kernels>(x: &Tensor<B>) -> Vec<f64> {
    let x = flat(x);
    let u = x.div(&x.norm_axis(1).clamp_min(1e-30));
    u.matmul_t(&u, false, true).to_f64_vec().into_iter().map(f64::abs).collect()
}

/// Mean |cosine| between samples of the same class and of different classes,
/// from the `|cos|` matrix `g` (`n x n`, see [`abs_cosines`]).
fn cosine_contrast(g: &[f64], labels: &[usize]) -> (f64, f64) {
    let n = labels.len();
    let (mut within, mut nw, mut across, mut na) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        for j in i + 1..n {
            let c = g[i * n + j];
            if labels[i] == labels[j] {
                within += c;
                nw += 1.0;
            } else {
                across += c;
                na += 1.0;
            }
        }
    }
    (within / nw.max(1.0), across / na.max(1.0))
}

fn rates_curve(r: &[Rates]) -> Vec<(f64, f64)> {
    r.iter().enumerate().map(|(l, r)| (l as f64, r.delta_r)).collect()
}

fn flat<B: Kernels>(x: &Tensor<B>) -> Tensor<B> {
    let n = x.dim(0);
    x.reshape(&[n, x.numel() / n])
}

/// Each sample flattened and scaled to unit norm (the authors normalise before classifying).
fn unit_rows<B: Kernels>(x: &Tensor<B>) -> Tensor<B> {
    let x = flat(x);
    let norms = x.square().sum_axis(1, true).sqrt().add_scalar(1e-300);
    x.div(&norms)
}

fn ns_accuracy<B: Kernels>(
    train: &Tensor<B>,
    ytr: &[usize],
    test: &Tensor<B>,
    yte: &[usize],
    k: usize,
    comps: usize,
) -> CliResult<(f64, Vec<usize>)> {
    let ns = NearestSubspace::fit(&unit_rows(train), ytr, k, comps)?;
    let pred = ns.predict(&unit_rows(test))?;
    Ok((accuracy(&pred, yte)?, pred))
}

/// Cosine k-nearest-neighbour accuracy (k = 5 as in the authors' evaluation, fewer if the training set is smaller).
fn knn_accuracy<B: Kernels>(
    train: &Tensor<B>,
    ytr: &[usize],
    test: &Tensor<B>,
    yte: &[usize],
) -> CliResult<f64> {
    let pred = knn_predict(&flat(train), ytr, &flat(test), 5.min(ytr.len()))?;
    Ok(accuracy(&pred, yte)?)
}

struct RotationJob(RotationArgs);

impl Job for RotationJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        let comm = crate::util::world();
        crate::util::ensure_dir_on_root(&*comm, &a.out)?;
        if a.rotations == 0 {
            return Err(CliError::Usage("--rotations must be at least 1".into()));
        }
        let pb = progress(4, "rotation");
        let (train, test) = train_test(&a.data, a.train_per_class, a.test_per_class, a.seed)?;
        let k = train.num_classes();
        let grid = PolarGrid { radii: a.radii, angles: a.angles, max_radius: None };
        let ptrain = polar_resample(&train.to_tensor_shaped(be), &grid)?;
        let ptest = polar_resample(&test.to_tensor_shaped(be), &grid)?;
        let lifting = if a.kernels > 0 {
            let act = a.soft_threshold.map(Activation::SoftThreshold).unwrap_or(Activation::Relu);
            Some(Lifting::random(be, a.kernels, a.radii, &[a.kernel_size], a.seed, act)?)
        } else {
            None
        };
        let lift = |x: &Tensor<B>| -> CliResult<Tensor<B>> {
            Ok(match &lifting {
                Some(l) => l.apply(x)?,
                None => x.clone(),
            })
        };
        let ltrain = lift(&ptrain)?;
        let config = InvariantConfig {
            layers: a.layers,
            eta: a.step.eta,
            eps_sq: a.step.eps_sq,
            lambda: a.step.lambda,
            ..Default::default()
        };
        let t0 = Instant::now();
        let Some(built) = construct_across_ranks(&ltrain, train.labels(), k, &config)? else {
            // ranks other than 0 are done: rank 0 evaluates and reports
            return Ok(serde_json::json!({ "rank": comm.rank(), "ranks": comm.size() }));
        };
        let build_s = t0.elapsed().as_secs_f64();
        pb.inc(1);

        // Every test image under every rotation: sample-major, rotation s at index i * R + s.
        let n = test.len();
        let shifts: Vec<isize> = (0..a.rotations).map(|s| (s * a.rotation_step) as isize).collect();
        let rotated: Vec<Tensor<B>> =
            shifts.iter().map(|&s| rotate_polar(&ptest, s)).collect::<Result<_, _>>()?;
        let refs: Vec<&Tensor<B>> = rotated.iter().collect();
        let (c_in, t) = (ptest.dim(1), ptest.dim(2));
        let paug = Tensor::cat(&refs, 1).reshape(&[n * a.rotations, c_in, t]);
        let yaug: Vec<usize> =
            test.labels().iter().flat_map(|&y| std::iter::repeat_n(y, a.rotations)).collect();
        let laug = lift(&paug)?;
        // Lifting is a circular convolution along the angle, so lift(rotate(x)) = rotate(lift(x)) and the
        // features of every rotation come from one pass of the upright images (transform_shifted).
        let lbase = lift(&ptest)?;
        let t1 = Instant::now();
        let out = built.network.transform_traced(&lbase)?;
        let shift_list: Vec<Vec<isize>> = shifts.iter().map(|&s| vec![s]).collect();
        let feats = built.network.transform_shifted(&lbase, &shift_list)?;
        let transform_s = t1.elapsed().as_secs_f64();
        let c_out = feats.dim(2);
        let feats = feats.reshape(&[n * a.rotations, c_out, t]);
        let base = out.features.clone();
        pb.inc(1);

        // Equivariance, checked the hard way: the rotated copies of the first test images go through
        // every layer, and their features are compared with the rotated features of the upright image.
        let m = if a.equivariance_samples == 0 { n } else { a.equivariance_samples.min(n) };
        let t2 = Instant::now();
        let brute = built.network.transform(&laug.narrow(0, 0, m * a.rotations))?.features;
        let brute_s = t2.elapsed().as_secs_f64();
        let per = brute.reshape(&[m, a.rotations, c_out, t]);
        let base_m = base.narrow(0, 0, m);
        let mut equivariance_error: f64 = 0.0;
        for (si, &s) in shifts.iter().enumerate() {
            let f = per.narrow(1, si, 1).reshape(&[m, c_out, t]);
            equivariance_error = equivariance_error.max(f.sub(&rotate_polar(&base_m, s)?).max_abs());
        }
        let shifted_path_error = brute.sub(&feats.narrow(0, 0, m * a.rotations)).max_abs();

        // Classifiers: raw polar, lifted, ReduNet features (all rotated test images).
        let comps = a.components.min(a.train_per_class);
        let (acc_polar, _) = ns_accuracy(&ptrain, train.labels(), &paug, &yaug, k, comps)?;
        let (acc_lifted, _) = ns_accuracy(&ltrain, train.labels(), &laug, &yaug, k, comps)?;
        let (acc_feat, pred) = ns_accuracy(&built.features, train.labels(), &feats, &yaug, k, comps)?;
        // The authors' test protocol: the unrotated test images.
        let tlabels = test.labels();
        let (acc_polar_upright, _) = ns_accuracy(&ptrain, train.labels(), &ptest, tlabels, k, comps)?;
        let (acc_lifted_upright, _) = ns_accuracy(&ltrain, train.labels(), &lbase, tlabels, k, comps)?;
        let (acc_feat_upright, _) = ns_accuracy(&built.features, train.labels(), &base, tlabels, k, comps)?;
        let knn = json!({
            "polar_input": knn_accuracy(&ptrain, train.labels(), &paug, &yaug)?,
            "lifted_input": knn_accuracy(&ltrain, train.labels(), &laug, &yaug)?,
            "features": knn_accuracy(&built.features, train.labels(), &feats, &yaug)?,
            "polar_input_upright": knn_accuracy(&ptrain, train.labels(), &ptest, tlabels)?,
            "lifted_input_upright": knn_accuracy(&ltrain, train.labels(), &lbase, tlabels)?,
            "features_upright": knn_accuracy(&built.features, train.labels(), &base, tlabels)?,
        });
        let consistent = (0..n)
            .filter(|&i| {
                pred[i * a.rotations..(i + 1) * a.rotations].iter().all(|&p| p == pred[i * a.rotations])
            })
            .count();
        pb.inc(1);

        // Cosine block structure (Figure 4.11): all pairs from one product each.
        let g_in = abs_cosines(&paug);
        let g_f = abs_cosines(&feats);
        let (win_in, across_in) = cosine_contrast(&g_in, &yaug);
        let (win_f, across_f) = cosine_contrast(&g_f, &yaug);
        let (h, side) = pool_heatmap(&g_in, &yaug, 400);
        plot::heatmap(
            &a.out.join("cosine_inputs.png"),
            "|cos| of rotated test inputs (sorted by class)",
            &h,
            side,
            1.0,
        )?;
        let (h, side) = pool_heatmap(&g_f, &yaug, 400);
        plot::heatmap(
            &a.out.join("cosine_features.png"),
            "|cos| of their ReduNet features (sorted by class)",
            &h,
            side,
            1.0,
        )?;

        let rep: Vec<usize> = (0..n).flat_map(|i| std::iter::repeat_n(i, a.rotations)).collect();
        let test_rates: Vec<Rates> =
            // A rotation multiplies each frequency by a phase, which cancels in the per-frequency
            // covariances: the rotated test set's rates are those of the upright spectra, each sample
            // counted once per rotation.
            out.spectra
                .iter()
                .map(|v| {
                    let v = ComplexTensor::new(v.re.index_select(1, &rep), v.im.index_select(1, &rep));
                    spectral_rates(&v, &yaug, k, a.step.eps_sq, t)
                })
                .collect::<CliResult<_>>()?;
        plot::lines(
            &a.out.join("rates.png"),
            "Rate reduction per layer (rotation-invariant ReduNet)",
            "layer",
            "delta R (nats)",
            &[
                Series { name: "train", points: rates_curve(&built.record.rates_true), markers: false },
                Series { name: "test (all rotations)", points: rates_curve(&test_rates), markers: false },
            ],
            false,
        )?;
        let delta = |r: &[Rates]| r.iter().map(|x| x.delta_r).collect::<Vec<_>>();
        let metrics = json!({
            "experiment": "redunet_rotation",
            "backend": be.name(),
            "config": {
                "data": a.data, "train_per_class": a.train_per_class, "test_per_class": a.test_per_class,
                "radii": a.radii, "angles": a.angles, "kernels": a.kernels, "kernel_size": a.kernel_size,
                "activation": match a.soft_threshold { Some(l) => format!("soft_threshold({l})"), None => "relu".into() },
                "layers": a.layers, "eta": a.step.eta, "eps_sq": a.step.eps_sq, "lambda": a.step.lambda,
                "rotations": a.rotations, "rotation_step": a.rotation_step, "components": comps, "seed": a.seed,
            },
            "delta_R_train": delta(&built.record.rates_true),
            "delta_R_test": delta(&test_rates),
            "R_train": built.record.rates_true.iter().map(|r| r.r).collect::<Vec<_>>(),
            "Rc_train": built.record.rates_true.iter().map(|r| r.rc).collect::<Vec<_>>(),
            "test_accuracy": {
                "nearest_subspace_polar_input": acc_polar,
                "nearest_subspace_lifted_input": acc_lifted,
                "nearest_subspace_features": acc_feat,
                "upright_nearest_subspace_polar_input": acc_polar_upright,
                "upright_nearest_subspace_lifted_input": acc_lifted_upright,
                "upright_nearest_subspace_features": acc_feat_upright,
                "knn_cosine_5": knn,
            },
            "invariance": {
                "equivariance_error": equivariance_error,
                "equivariance_checked_images": m,
                "shifted_path_vs_layer_by_layer": shifted_path_error,
                "consistent_prediction_share": consistent as f64 / n as f64,
                "cosine_within_class_input": win_in, "cosine_across_class_input": across_in,
                "cosine_within_class_features": win_f, "cosine_across_class_features": across_f,
                "cosine_contrast_input": win_in - across_in,
                "cosine_contrast_features": win_f - across_f,
            },
            "operator_bytes_per_layer": built.network.operator_bytes_per_layer(),
            "timings": { "build_s": build_s, "transform_s": transform_s, "equivariance_check_s": brute_s },
        });
        write_json(&a.out.join("metrics.json"), &metrics)?;
        pb.finish_and_clear();
        Ok(json!({
            "out": a.out.display().to_string(),
            "test_accuracy_features": acc_feat,
            "test_accuracy_polar_input": acc_polar,
            "test_accuracy_lifted_input": acc_lifted,
            "upright_test_accuracy_features": acc_feat_upright,
            "upright_test_accuracy_polar_input": acc_polar_upright,
            "equivariance_error": equivariance_error,
            "consistent_prediction_share": consistent as f64 / n as f64,
            "cosine_contrast_input": win_in - across_in,
            "cosine_contrast_features": win_f - across_f,
            "build_s": build_s,
            "transform_s": transform_s,
        }))
    }
}

struct TranslationJob(TranslationArgs);

impl Job for TranslationJob {
    type Output = serde_json::Value;
    fn run<B: Kernels>(self, be: &B) -> CliResult<serde_json::Value> {
        let a = self.0;
        let comm = crate::util::world();
        crate::util::ensure_dir_on_root(&*comm, &a.out)?;
        let (train, test) = train_test(&a.data, a.train_per_class, a.test_per_class, a.seed)?;
        let k = train.num_classes();
        let s = train.sample_shape().to_vec();
        let (h, w) = (s[0], s[1]);
        let img = |d: &Dataset| d.to_tensor_shaped(be).reshape(&[d.len(), 1, h, w]);
        let lifting = if a.kernels > 0 {
            Some(Lifting::random(
                be,
                a.kernels,
                1,
                &[a.kernel_size, a.kernel_size],
                a.seed,
                Activation::Relu,
            )?)
        } else {
            None
        };
        let lift = |x: &Tensor<B>| -> CliResult<Tensor<B>> {
            Ok(match &lifting {
                Some(l) => l.apply(x)?,
                None => x.clone(),
            })
        };
        let xtr = lift(&img(&train))?;
        let config = InvariantConfig {
            layers: a.layers,
            eta: a.step.eta,
            eps_sq: a.step.eps_sq,
            lambda: a.step.lambda,
            ..Default::default()
        };
        let t0 = Instant::now();
        let Some(built) = construct_across_ranks(&xtr, train.labels(), k, &config)? else {
            // ranks other than 0 are done: rank 0 evaluates and reports
            return Ok(serde_json::json!({ "rank": comm.rank(), "ranks": comm.size() }));
        };
        let build_s = t0.elapsed().as_secs_f64();
        // All h*w cyclic translations of every test image.
        let domain = Domain::of_signals("translation", xtr.shape())?.2;
        let xte_img = img(&test);
        let shifts: Vec<Vec<isize>> =
            (0..h).flat_map(|i| (0..w).map(move |j| vec![i as isize, j as isize])).collect();
        let moved: Vec<Tensor<B>> =
            shifts.iter().map(|sh| domain.roll(&xte_img, sh)).collect::<Result<_, _>>()?;
        let refs: Vec<&Tensor<B>> = moved.iter().collect();
        let n = test.len();
        let aug_img = Tensor::cat(&refs, 1).reshape(&[n * shifts.len(), 1, h, w]);
        let yaug: Vec<usize> =
            test.labels().iter().flat_map(|&y| std::iter::repeat_n(y, shifts.len())).collect();
        let xaug = lift(&aug_img)?;
        let t1 = Instant::now();
        let feats = built.network.transform(&xaug)?.features;
        let transform_s = t1.elapsed().as_secs_f64();
        let comps = a.components.min(a.train_per_class);
        let (acc_raw, _) = ns_accuracy(&img(&train), train.labels(), &aug_img, &yaug, k, comps)?;
        let (acc_feat, pred) = ns_accuracy(&built.features, train.labels(), &feats, &yaug, k, comps)?;
        let sn = shifts.len();
        let consistent =
            (0..n).filter(|&i| pred[i * sn..(i + 1) * sn].iter().all(|&p| p == pred[i * sn])).count();
        plot::lines(
            &a.out.join("rates.png"),
            "Rate reduction per layer (translation-invariant ReduNet)",
            "layer",
            "delta R (nats)",
            &[Series { name: "train", points: rates_curve(&built.record.rates_true), markers: false }],
            false,
        )?;
        let metrics = json!({
            "experiment": "redunet_translation",
            "backend": be.name(),
            "config": { "data": a.data, "train_per_class": a.train_per_class, "test_per_class": a.test_per_class,
                "kernels": a.kernels, "kernel_size": a.kernel_size, "layers": a.layers, "eta": a.step.eta,
                "eps_sq": a.step.eps_sq, "lambda": a.step.lambda, "components": comps, "seed": a.seed },
            "delta_R_train": built.record.rates_true.iter().map(|r| r.delta_r).collect::<Vec<_>>(),
            "test_accuracy": { "nearest_subspace_raw": acc_raw, "nearest_subspace_features": acc_feat },
            "translations": sn,
            "consistent_prediction_share": consistent as f64 / n as f64,
            "operator_bytes_per_layer": built.network.operator_bytes_per_layer(),
            "timings": { "build_s": build_s, "transform_s": transform_s },
        });
        write_json(&a.out.join("metrics.json"), &metrics)?;
        Ok(json!({ "out": a.out.display().to_string(), "test_accuracy_raw": acc_raw,
            "test_accuracy_features": acc_feat, "consistent_prediction_share": consistent as f64 / n as f64,
            "build_s": build_s }))
    }
}

#[cfg(test)]
mod tests {
    use super::{abs_cosines, cosine_contrast};
    use crate::plot::{gram_heatmap, pool_heatmap};
    use backend_cpu::CpuBackend;
    use rate_core::Tensor;

    /// The product-based `|cos|` matrix and the class contrast equal a direct
    /// pairwise computation (a zero sample included), and pooling the matrix
    /// gives the heatmap of the direct `|Z Z^T|` of the unit rows.
    #[test]
    fn cosines_from_one_product_equal_pairwise_loops() {
        let be = CpuBackend::<f64>::new();
        let (n, d) = (9, 6);
        let mut v: Vec<f64> = (0..n * d).map(|i| ((i * 37 + 11) % 17) as f64 - 8.0).collect();
        v[3 * d..4 * d].iter_mut().for_each(|x| *x = 0.0);
        let labels = [0, 1, 2, 0, 1, 2, 0, 1, 1];
        let g = abs_cosines(&Tensor::from_f64(&be, &v, &[n, 2, d / 2]));
        let norm = |i: usize| v[i * d..(i + 1) * d].iter().map(|x| x * x).sum::<f64>().sqrt();
        let (mut within, mut nw, mut across, mut na) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..d).map(|c| v[i * d + c] * v[j * d + c]).sum();
                let want =
                    if norm(i) == 0.0 || norm(j) == 0.0 { 0.0 } else { dot.abs() / (norm(i) * norm(j)) };
                assert!((g[i * n + j] - want).abs() < 1e-12, "({i}, {j}): {} vs {want}", g[i * n + j]);
                if j > i {
                    if labels[i] == labels[j] {
                        within += want;
                        nw += 1.0;
                    } else {
                        across += want;
                        na += 1.0;
                    }
                }
            }
        }
        let (w, a) = cosine_contrast(&g, &labels);
        assert!((w - within / nw).abs() < 1e-12 && (a - across / na).abs() < 1e-12, "{w} {a}");
        let unit: Vec<f64> =
            (0..n * d).map(|e| if norm(e / d) == 0.0 { 0.0 } else { v[e] / norm(e / d) }).collect();
        let (h0, s0) = gram_heatmap(&unit, n, d, &labels, 4);
        let (h, s) = pool_heatmap(&g, &labels, 4);
        assert_eq!(s, s0);
        assert!(h.iter().zip(&h0).all(|(x, y)| (x - y).abs() < 1e-12), "{h:?} vs {h0:?}");
    }
}
