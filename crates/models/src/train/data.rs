//! The training data pipeline: images of a [`Dataset`] as `[batch, C, H, W]` mini-batches, seeded shuffling per epoch, random crop with zero padding and horizontal flip, per-channel normalisation, and the next batch assembled on another thread while the current step runs.
//!
//! Every random choice is a function of `(seed, epoch)` (the order) or `(seed, epoch, batch)` (the
//! augmentation), each drawn from its own `StdRng::seed_from_u64`, so a run resumed at batch `i` of
//! epoch `e` sees exactly the batches of the uninterrupted run, and the batches do not depend on
//! whether they were assembled on the prefetch thread or not.

use crate::data::Dataset;
use crate::nn::config::Meta;
use crate::{Error, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::mpsc::sync_channel;

/// Image augmentation of the training batches (torchvision order: crop, flip, then normalise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Augment {
    /// `RandomCrop(size, padding)`: zero padding on each side, then a crop at a uniform offset (0: off).
    pub crop_padding: usize,
    /// `RandomHorizontalFlip(0.5)`.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Augment = Augment { crop_padding: 0, hflip: false };

    /// Whether anything is drawn.
    pub fn is_active(&self) -> bool {
        self.crop_padding > 0 || self.hflip
    }
}

/// Per-channel normalisation `x <- (x - mean_c) / std_c`, from the training split.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalisation {
    /// Mean of each channel.
    pub mean: Vec<f64>,
    /// Standard deviation of each channel (population).
    pub std: Vec<f64>,
}

/// Metadata keys of the normalisation in a checkpoint.
pub const NORM_MEAN_KEY: &str = "normalize_mean";
/// Metadata key of the per-channel standard deviations.
pub const NORM_STD_KEY: &str = "normalize_std";

impl Normalisation {
    /// The identity on `channels` channels.
    pub fn identity(channels: usize) -> Self {
        Normalisation { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }

    /// The mean and population standard deviation of each channel over every image of `images`
    /// (accumulated in f64); a constant channel is refused (it cannot be scaled).
    pub fn of(images: &Images) -> Result<Self> {
        let (c, hw) = (images.channels, images.size * images.size);
        let mut sum = vec![0.0; c];
        let mut sq = vec![0.0; c];
        for i in 0..images.len() {
            let x = images.dataset.sample(i);
            for ch in 0..c {
                for &v in &x[ch * hw..(ch + 1) * hw] {
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (images.len() * hw) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std: Vec<f64> = sq.iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0).sqrt()).collect();
        if let Some(ch) = std.iter().position(|s| s.is_nan() || *s <= 1e-12) {
            return Err(Error::Format {
                path: images.dataset.source().to_string(),
                message: format!(
                    "channel {ch} is constant over the training images: it cannot be normalised"
                ),
            });
        }
        Ok(Normalisation { mean, std })
    }

    /// Normalises `[n, C, H, W]` images whose planes hold `hw = H W` pixels, in place.
    pub fn apply(&self, x: &mut [f64], hw: usize) {
        normalise(self, x, hw);
    }

    /// Writes the normalisation into checkpoint metadata (comma-separated, full precision).
    pub fn to_metadata(&self, m: &mut BTreeMap<String, String>) {
        let join = |v: &[f64]| v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(",");
        m.insert(NORM_MEAN_KEY.into(), join(&self.mean));
        m.insert(NORM_STD_KEY.into(), join(&self.std));
    }

    /// The normalisation of checkpoint metadata (`None` when absent), checked against `channels`.
    pub fn from_metadata(meta: &Meta, channels: usize) -> Result<Option<Self>> {
        let (Some(mean), Some(std)) = (meta.str(NORM_MEAN_KEY), meta.str(NORM_STD_KEY)) else {
            if meta.str(NORM_MEAN_KEY).is_some() || meta.str(NORM_STD_KEY).is_some() {
                return Err(
                    meta.err(format!("`{NORM_MEAN_KEY}` and `{NORM_STD_KEY}` must be given together"))
                );
            }
            return Ok(None);
        };
        let parse = |key: &str, s: &str| -> Result<Vec<f64>> {
            let v = s
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| meta.err(format!("`{key}` = {s:?} is not a comma-separated list of numbers")))?;
            if v.len() != channels || v.iter().any(|x| !x.is_finite()) {
                return Err(meta
                    .err(format!("`{key}` = {s:?} must hold {channels} finite numbers (one per channel)")));
            }
            Ok(v)
        };
        let n = Normalisation { mean: parse(NORM_MEAN_KEY, mean)?, std: parse(NORM_STD_KEY, std)? };
        if let Some(s) = n.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(meta.err(format!("`{NORM_STD_KEY}` holds {s}, not positive")));
        }
        Ok(Some(n))
    }
}

/// A data set seen as square images `[C, size, size]` (a `[H, W]` sample is one channel).
#[derive(Clone, Copy, Debug)]
pub struct Images<'a> {
    /// The samples and labels.
    pub dataset: &'a Dataset,
    /// Channels `C`.
    pub channels: usize,
    /// Side `H = W`.
    pub size: usize,
}

impl<'a> Images<'a> {
    /// Checks that `dataset` holds non-empty, finite `[channels, size, size]` images (or `[size, size]` with one
    /// channel) with labels below `num_classes`; the error names the data source and what differs.
    pub fn new(
        dataset: &'a Dataset,
        channels: usize,
        size: usize,
        num_classes: usize,
        what: &str,
    ) -> Result<Self> {
        let fmt = |message: String| Error::Format { path: dataset.source().to_string(), message };
        if dataset.is_empty() {
            return Err(fmt(format!("the {what} split is empty")));
        }
        let shape = dataset.sample_shape();
        let fits = match shape {
            [h, w] => channels == 1 && *h == size && *w == size,
            [c, h, w] => *c == channels && *h == size && *w == size,
            _ => false,
        };
        if !fits {
            return Err(fmt(format!(
                "{what} images have shape {shape:?}; the model takes [{channels}, {size}, {size}] \
                 (channels, image_size) — choose a preset or --config that fits the data"
            )));
        }
        if dataset.num_classes() > num_classes {
            return Err(fmt(format!(
                "{what} labels reach class {} but the model has {num_classes} classes (num_classes)",
                dataset.num_classes() - 1
            )));
        }
        if let Some(i) = dataset.features().iter().position(|v| !v.is_finite()) {
            let d = dataset.num_features();
            return Err(fmt(format!(
                "{what} image {} holds a non-finite value ({}) at pixel {}",
                i / d,
                dataset.features()[i],
                i % d
            )));
        }
        Ok(Images { dataset, channels, size })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.dataset.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.dataset.is_empty()
    }

    /// Values per image.
    pub fn pixels(&self) -> usize {
        self.channels * self.size * self.size
    }
}

/// A mini-batch on the host: `[batch, C, H, W]` values and the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// Row-major `[batch, C, H, W]`.
    pub images: Vec<f64>,
    /// One label per image.
    pub labels: Vec<usize>,
}

impl HostBatch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// How the training batches are drawn.
#[derive(Clone, Debug)]
pub struct Loader<'a> {
    /// The images.
    pub images: Images<'a>,
    /// Images per batch (the last batch of an epoch may be smaller).
    pub batch: usize,
    /// Seed of the order and the augmentation.
    pub seed: u64,
    /// Augmentation.
    pub augment: Augment,
    /// Normalisation applied after augmentation.
    pub norm: Normalisation,
}

/// SplitMix64 finaliser: decorrelates the seeds of the per-epoch and per-batch generators.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<'a> Loader<'a> {
    /// Batches per epoch (the last one may be partial).
    pub fn batches_per_epoch(&self) -> usize {
        self.images.len().div_ceil(self.batch.max(1))
    }

    /// The order of epoch `epoch` (0-based): a permutation of the images by `StdRng(mix(seed, epoch))`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.images.len()).collect();
        let mut rng = StdRng::seed_from_u64(mix(self.seed ^ mix(epoch as u64)));
        order.shuffle(&mut rng);
        order
    }

    /// Batch `index` of epoch `epoch` whose order is `order`: gathered, augmented, normalised.
    pub fn batch(&self, epoch: usize, index: usize, order: &[usize]) -> HostBatch {
        let start = index * self.batch;
        let ids = &order[start.min(order.len())..(start + self.batch).min(order.len())];
        let mut rng = StdRng::seed_from_u64(mix(mix(self.seed ^ mix(epoch as u64)) ^ (index as u64 + 1)));
        let mut images = gather(&self.images, ids);
        if self.augment.is_active() {
            let per = self.images.pixels();
            for img in images.chunks_mut(per) {
                augment(img, self.images.channels, self.images.size, &self.augment, &mut rng);
            }
        }
        normalise(&self.norm, &mut images, self.images.size * self.images.size);
        HostBatch { images, labels: ids.iter().map(|&i| self.images.dataset.labels()[i]).collect() }
    }

    /// Runs `step(index, batch)` for the batches `start..` of epoch `epoch` in order, the next batch assembled on
    /// a second thread while `step` runs when `prefetch` is set. `step` returns `Ok(false)` to stop early.
    pub fn for_each_batch(
        &self,
        epoch: usize,
        start: usize,
        prefetch: bool,
        mut step: impl FnMut(usize, HostBatch) -> Result<bool>,
    ) -> Result<()> {
        let order = self.order(epoch);
        let n = self.batches_per_epoch();
        if !prefetch {
            for i in start..n {
                if !step(i, self.batch(epoch, i, &order))? {
                    break;
                }
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<(usize, HostBatch)>(1);
            let order = &order;
            scope.spawn(move || {
                for i in start..n {
                    if tx.send((i, self.batch(epoch, i, order))).is_err() {
                        break;
                    }
                }
            });
            for (i, b) in rx.iter() {
                if !step(i, b)? {
                    break;
                }
            }
            Ok(())
        })
    }
}

/// The images `ids` of `images`, row-major `[ids.len(), C, H, W]`.
pub fn gather(images: &Images, ids: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(ids.len() * images.pixels());
    for &i in ids {
        out.extend_from_slice(images.dataset.sample(i));
    }
    out
}

/// Normalises `[n, C, H, W]` values whose planes hold `hw` pixels.
pub fn normalise(norm: &Normalisation, x: &mut [f64], hw: usize) {
    let c = norm.mean.len();
    if c == 0 || hw == 0 {
        return;
    }
    for (k, plane) in x.chunks_mut(hw).enumerate() {
        let ch = k % c;
        let (m, s) = (norm.mean[ch], norm.std[ch]);
        for v in plane {
            *v = (*v - m) / s;
        }
    }
}

/// Augments one `[C, size, size]` image in place: a crop at a uniform offset in `[0, 2p]^2` of the image padded
/// by `p` zeros, then a horizontal flip with probability 1/2 (each only when switched on).
pub fn augment(img: &mut [f64], channels: usize, size: usize, a: &Augment, rng: &mut StdRng) {
    let p = a.crop_padding;
    if p > 0 {
        let dy = rng.random_range(0..=2 * p) as isize - p as isize;
        let dx = rng.random_range(0..=2 * p) as isize - p as isize;
        if dx != 0 || dy != 0 {
            let src = img.to_vec();
            let s = size as isize;
            for ch in 0..channels {
                let plane = &src[ch * size * size..(ch + 1) * size * size];
                for y in 0..s {
                    for x in 0..s {
                        let (sy, sx) = (y + dy, x + dx);
                        let v = if (0..s).contains(&sy) && (0..s).contains(&sx) {
                            plane[(sy * s + sx) as usize]
                        } else {
                            0.0
                        };
                        img[ch * size * size + (y * s + x) as usize] = v;
                    }
                }
            }
        }
    }
    if a.hflip && rng.random_bool(0.5) {
        for row in img.chunks_mut(size) {
            row.reverse();
        }
    }
}
