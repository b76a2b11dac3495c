//! The error type of rate-core and its `Result` alias.

/// Errors raised by backends and by the rate functions.
///
/// Shape mismatches are programming errors and panic with a message naming the
/// op and the shapes; the variants here are failures a caller can meet with
/// valid code and bad data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Cholesky factorisation met a non-positive pivot.
    #[error("{op}: matrix {index} of the batch (size {n}x{n}) is not positive definite (pivot {pivot} at row {row})")]
    NotPositiveDefinite {
        /// The operation that factored the matrix.
        op: &'static str,
        /// Index of the failing matrix inside the batch.
        index: usize,
        /// Matrix order.
        n: usize,
        /// Row at which the factorisation failed.
        row: usize,
        /// The offending pivot value.
        pivot: f64,
    },
    /// An input held NaN or an infinity.
    #[error("{what}: non-finite value {value} at flat index {index}")]
    NonFinite {
        /// What was being checked.
        what: String,
        /// Flat index of the first non-finite value.
        index: usize,
        /// The value itself.
        value: f64,
    },
    /// An input had a shape the operation cannot take.
    #[error("{op}: invalid shape {shape:?}: {reason}")]
    InvalidShape {
        /// The operation.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
        /// Why it is not accepted.
        reason: String,
    },
    /// A parameter value is out of its domain.
    #[error("{op}: invalid argument `{name}` = {value}: {reason}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// Parameter name.
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// Why it is not accepted.
        reason: String,
    },
    /// The backend failed (device lost, shader error, no adapter).
    #[error("backend {backend}: {message}")]
    Backend {
        /// Backend name.
        backend: String,
        /// What went wrong.
        message: String,
    },
    /// A process of a sharded run failed; every process reports the same (see `collective`).
    #[error("rank {rank} of {size}: {message}")]
    Collective {
        /// The failing process.
        rank: usize,
        /// Number of processes.
        size: usize,
        /// Its error.
        message: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
