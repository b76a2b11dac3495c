//! Shift-invariant ReduNet (4.1.16-4.1.27): per-frequency operators for 1-D shifts and 2-D translations, lifting, polar resampling, and a dense reference path.
//!
//! * [`domain`]: the cyclic groups, their unitary DFTs and half spectra.
//! * [`network`]: [`InvariantReduNet`], built and applied in the frequency
//!   domain (FFT once on entry, once on exit; batched Cholesky per frequency).
//! * [`lift`]: random-kernel multichannel circular convolution and a sparsifying
//!   nonlinearity (4.1.26).
//! * [`polar`]: polar resampling, so that image rotations become cyclic shifts.
//! * [`dense`]: the same network with explicit `(C N) x (C N)` block-circulant
//!   operators, to check the frequency path on small signals.

pub mod dense;
pub mod domain;
pub mod lift;
pub mod network;
pub mod polar;

pub use dense::{construct_dense, DenseConstruction};
pub use domain::Domain;
pub use lift::{Activation, Lifting};
pub use network::{
    Construction, ConstructionRecord, InvariantConfig, InvariantLayer, InvariantReduNet, Transformed,
};
pub use polar::{polar_resample, rotate_polar, PolarGrid};
