//! Shared plumbing of the `rate` command: the error type, backend dispatch, progress bars and atomic JSON output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;

/// A failure of a `rate` command: printed as one line, exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the models crate (data, files, numerics).
    #[error(transparent)]
    Models(#[from] models::Error),
    /// From rate-core.
    #[error(transparent)]
    Core(#[from] rate_core::Error),
    /// Drawing a plot.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// A bad argument or combination.
    #[error("{0}")]
    Usage(String),
}

/// `Result` with [`CliError`].
pub type CliResult<T> = Result<T, CliError>;

/// Which backend computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// faer + rustfft + rayon on the CPU.
    Cpu,
    /// WGSL compute shaders through wgpu (f32; needs the `wgpu` feature).
    Wgpu,
}

/// Floating-point precision of the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// Double precision (reference results).
    F64,
    /// Single precision (faster, about 1e-5 relative).
    F32,
}

/// Backend options shared by every computing command.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct BackendOpts {
    /// Backend that computes.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu, global = true)]
    pub backend: BackendKind,
    /// Precision on the CPU backend (wgpu is always f32).
    #[arg(long, value_enum, default_value_t = Precision::F64, global = true)]
    pub precision: Precision,
}

/// The constants every ReduNet layer shares (4.1.11-4.1.13), the same flags in every ReduNet command.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct StepArgs {
    /// Step size eta of each layer's gradient step (4.1.12).
    #[arg(long, default_value_t = 0.5)]
    pub eta: f64,
    /// Quantisation epsilon^2 of the coding rate.
    #[arg(long = "eps-sq", default_value_t = 0.1)]
    pub eps_sq: f64,
    /// Sharpness lambda of the soft class membership (4.1.11).
    #[arg(long, default_value_t = 500.0)]
    pub lambda: f64,
}

/// A `rate` subcommand: runs on the backend the options name and returns its
/// summary, which `main` prints once (JSON or `key: value` lines).
pub trait Command {
    /// Runs the command.
    fn run(self, opts: BackendOpts) -> CliResult<serde_json::Value>;
}

/// A job that runs on any backend: the one place where the generic parameter is chosen.
pub trait Job {
    /// What the job returns.
    type Output;
    /// Runs on backend `B`.
    fn run<B: rate_core::Kernels>(self, backend: &B) -> CliResult<Self::Output>;
}

/// Runs `job` on the backend the options name.
pub fn dispatch<J: Job>(opts: BackendOpts, job: J) -> CliResult<J::Output> {
    use backend_cpu::CpuBackend;
    match (opts.backend, opts.precision) {
        (BackendKind::Cpu, Precision::F64) => job.run(&CpuBackend::<f64>::new()),
        (BackendKind::Cpu, Precision::F32) => job.run(&CpuBackend::<f32>::new()),
        (BackendKind::Wgpu, _) => run_wgpu(job),
    }
}

/// Runs `job` on the wgpu backend (f32; `--precision` does not apply): the adapter is the best one found,
/// or the one `RATE_WGPU_ADAPTER` names. No adapter is an error that says what was looked for.
#[cfg(feature = "wgpu")]
fn run_wgpu<J: Job>(job: J) -> CliResult<J::Output> {
    let backend = backend_wgpu::WgpuBackend::new()?;
    eprintln!("backend: {}", rate_core::Backend::name(&backend));
    job.run(&backend)
}

/// Without the `wgpu` feature: an error that says this build lacks the backend.
#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: Job>(_job: J) -> CliResult<J::Output> {
    Err(CliError::Usage(
        "this build of `rate` has no wgpu backend (built without the `wgpu` feature of rate-cli); \
         rebuild with `cargo build --release -p rate-cli --features wgpu`, or use --backend cpu"
            .into(),
    ))
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Writes a JSON value to `path` atomically (pretty-printed).
pub fn write_json(path: &Path, value: &serde_json::Value) -> CliResult<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Usage(format!("cannot encode JSON: {e}")))?;
    models::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Creates the output directory, with an error naming it.
pub fn ensure_dir(dir: &Path) -> CliResult<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Models(models::Error::Io { path: dir.display().to_string(), source: e }))
}

/// Runs `f`, which creates the output directory `dir`; when `f` fails and `dir` did not exist before, removes
/// what is left of it if it is empty, so a failed command leaves no empty output behind.
pub fn removing_new_dir_on_error<T>(dir: &Path, f: impl FnOnce() -> CliResult<T>) -> CliResult<T> {
    let existed = dir.exists();
    let result = f();
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir(dir);
    }
    result
}
