//! models: ReduNet (4.1.13), the shift-invariant ReduNet (4.1.16-4.1.27), CRATE (4.2.20), AoT (4.3.2) and TOST (4.3.15), generic over the rate-core `Backend`.
//!
//! Every layer is written out: forward constructions for ReduNet, and an
//! explicit forward plus a hand-derived backward for the transformer layers.

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod classify;
pub mod data;
pub mod fixtures;
pub mod invariant;
pub mod io;
pub mod nn;
pub mod redunet;
pub mod train;

pub use rate_core::{Backend, Error as CoreError, Kernels, Tensor};

/// Errors of the models crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A numerical failure from rate-core or a backend.
    #[error(transparent)]
    Core(#[from] rate_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but its content is wrong.
    #[error("{path}: {message}")]
    Format {
        /// The file (or data source).
        path: String,
        /// What is wrong, naming the field, shape or value.
        message: String,
    },
    /// A configuration or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Images that do not fit the model they are given to.
    #[error("{model}: images have shape {shape:?}, expected [batch >= 1, {channels}, {size}, {size}]")]
    ImageShape {
        /// The model (`CRATE`, `AoT`, `TOST`).
        model: String,
        /// The shape given.
        shape: Vec<usize>,
        /// The channels the model takes.
        channels: usize,
        /// The image side the model takes.
        size: usize,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
