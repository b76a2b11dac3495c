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

/// The processes this `rate` runs among: [`rate_core::Local`] unless started
/// by an MPI launcher with the `mpi` feature built in ([`start_world`]).
static WORLD: std::sync::Mutex<Option<std::sync::Arc<dyn rate_core::Collective>>> =
    std::sync::Mutex::new(None);

/// Joins the MPI job when an MPI launcher started this process (more than
/// one process announced, see [`rate_core::collective::launcher_world_size`])
/// and the binary has the `mpi` feature; without the feature, such a start
/// is refused, so that `mpirun -n N` never runs N copies of the whole job.
pub fn start_world() -> CliResult<()> {
    let Some((var, n)) = rate_core::collective::launcher_world_size() else {
        return Ok(());
    };
    #[cfg(feature = "mpi")]
    {
        let _ = (var, n);
        let mpi = rate_core::collective::Mpi::init()?;
        *WORLD.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::new(mpi));
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    Err(CliError::Usage(format!(
        "started by an MPI launcher ({var}={n}), but this `rate` was built without the `mpi` feature, so the {n} \
         processes would each run the whole job; rebuild with `cargo build --release -p rate-cli --features mpi`, \
         or run `rate` without mpirun"
    )))
}

/// The processes of this job ([`rate_core::Local`] when alone).
pub fn world() -> std::sync::Arc<dyn rate_core::Collective> {
    WORLD
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| std::sync::Arc::new(rate_core::Local))
}

/// Leaves the MPI job (finalises MPI once the last handle from [`world`] is dropped).
pub fn end_world() {
    WORLD.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// Refuses a command that does not run sharded when this job has several processes.
pub fn single_process() -> CliResult<()> {
    let w = world();
    if w.size() > 1 {
        return Err(CliError::Usage(format!(
            "this subcommand does not run across MPI processes yet (this job has {}); run it without mpirun \
             (`rate redunet fit`, `rate crate|aot|tost train` and `rate invariant rotation|translation` do)",
            w.size()
        )));
    }
    Ok(())
}

impl CliError {
    /// Whether every process of a sharded job has this same error: a shared
    /// verdict ([`rate_core::Collective::agree`]), or a usage error (the
    /// arguments and the launch are the same on every process; the commands
    /// share the verdicts on what the processes read). Only rank 0 prints it.
    pub fn is_shared(&self) -> bool {
        matches!(
            self,
            CliError::Core(rate_core::Error::Collective { .. })
                | CliError::Models(models::Error::Core(rate_core::Error::Collective { .. }))
                | CliError::Usage(_)
        )
    }
}

/// Creates the output directory on rank 0 (the only writer); every process
/// learns whether it could.
pub fn ensure_dir_on_root(comm: &dyn rate_core::Collective, dir: &Path) -> CliResult<()> {
    rate_core::collective::agreed(comm, if comm.is_root() { ensure_dir(dir) } else { Ok(()) })
}

/// Every process's rows (`local`, row-major, `width` wide) concatenated in
/// rank order on rank 0 (`None` elsewhere): each process broadcasts its rows
/// in turn (the trait has no gather; the volume is the data once per process).
pub fn gather_rows(
    comm: &dyn rate_core::Collective,
    local: Vec<f64>,
    width: usize,
) -> CliResult<Option<Vec<f64>>> {
    if comm.size() == 1 {
        return Ok(Some(local));
    }
    let rows = comm.all_gather(&[(local.len() / width.max(1)) as f64])?;
    let mut all = Vec::new();
    let mut local = Some(local);
    for (q, &r) in rows.iter().enumerate() {
        let mut buf = match local.take_if(|_| q == comm.rank()) {
            Some(mine) => mine,
            None => vec![0.0; r as usize * width],
        };
        comm.broadcast(&mut buf, q)?;
        if comm.is_root() {
            all.extend(buf);
        }
    }
    Ok(comm.is_root().then_some(all))
}
