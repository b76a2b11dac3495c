//! The `rate` command: every experiment and job of the rate-reduction networks (ReduNet, invariant ReduNet, CRATE, AoT, TOST).

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod alloc_count;
mod invariant_cmd;
mod plot;
mod redunet_cmd;
mod train_cmd;
mod transformer_cmd;
mod util;

use clap::{Parser, Subcommand};
use util::{BackendOpts, CliResult, Command};

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

/// White-box deep networks from the coding-rate reduction (MCR^2).
///
/// Every layer is one step of an optimisation of the rate reduction. Errors
/// print one line and exit with status 2.
#[derive(Parser, Debug)]
#[command(name = "rate", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    backend: BackendOpts,
    /// Print the result summary as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Subcommands,
}

#[derive(Subcommand, Debug)]
enum Subcommands {
    /// Print the backends compiled into this binary.
    Backends,
    /// ReduNet: networks built forward, layer by layer, from the rate reduction.
    #[command(subcommand)]
    Redunet(redunet_cmd::RedunetCmd),
    /// The shift- and rotation-invariant ReduNet computed per frequency (4.1.16-4.1.27).
    #[command(subcommand)]
    Invariant(invariant_cmd::InvariantCmd),
    /// CRATE (4.2.20): forward and gradients of a checkpoint.
    #[command(subcommand)]
    Crate(transformer_cmd::CrateCmd),
    /// The attention-only transformer (4.3.2): forward, and the denoising experiment of Figure 4.16.
    #[command(subcommand)]
    Aot(transformer_cmd::AotCmd),
    /// TOST (4.3.15): forward, and the TSSA/MSSA time and memory scaling.
    #[command(subcommand)]
    Tost(transformer_cmd::TostCmd),
}

/// `rate backends`.
struct Backends;

impl Command for Backends {
    fn run(self, _opts: BackendOpts) -> CliResult<serde_json::Value> {
        let mut names = vec!["cpu (f64, f32)"];
        if cfg!(feature = "wgpu") {
            names.push("wgpu (f32)");
        }
        Ok(serde_json::json!({ "backends": names }))
    }
}

/// Runs the subcommand and prints its summary once: JSON with `--json`, else one `key: value` line each.
fn run(cli: Cli) -> CliResult<()> {
    let sharded = matches!(
        &cli.command,
        Subcommands::Backends
            | Subcommands::Redunet(redunet_cmd::RedunetCmd::Fit(_))
            | Subcommands::Crate(transformer_cmd::CrateCmd::Train(_))
            | Subcommands::Aot(transformer_cmd::AotCmd::Train(_))
            | Subcommands::Tost(transformer_cmd::TostCmd::Train(_))
            | Subcommands::Invariant(invariant_cmd::InvariantCmd::Rotation(_))
            | Subcommands::Invariant(invariant_cmd::InvariantCmd::Translation(_))
            | Subcommands::Redunet(redunet_cmd::RedunetCmd::Rotation(_))
            | Subcommands::Redunet(redunet_cmd::RedunetCmd::Translation(_))
    );
    if !sharded {
        util::single_process()?;
    }
    let summary = match cli.command {
        Subcommands::Backends => Backends.run(cli.backend),
        Subcommands::Redunet(cmd) => cmd.run(cli.backend),
        Subcommands::Invariant(cmd) => cmd.run(cli.backend),
        Subcommands::Crate(cmd) => cmd.run(cli.backend),
        Subcommands::Aot(cmd) => cmd.run(cli.backend),
        Subcommands::Tost(cmd) => cmd.run(cli.backend),
    }?;
    if util::world().rank() > 0 {
        // rank 0 reports for the whole job
    } else if cli.json {
        println!("{summary}");
    } else if let Some(obj) = summary.as_object() {
        for (k, v) in obj {
            println!("{k}: {v}");
        }
    }
    Ok(())
}

fn main() {
    // Mesa's implicit Vulkan layer VK_LAYER_MESA_device_select asks libwayland for a display and, on a machine
    // without one, prints "error: XDG_RUNTIME_DIR is invalid..." to stderr, which would break the one-line
    // errors. The layer only reorders adapters, and `WgpuBackend` picks its own (RATE_WGPU_ADAPTER), so it is
    // switched off unless the user set the variable. Set here, before any other thread exists.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    // reuse freed temporaries instead of faulting in fresh pages (glibc)
    backend_cpu::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = util::start_world() {
        eprintln!("rate: error: {}", e.to_string().replace('\n', " "));
        std::process::exit(2);
    }
    let result = run(cli);
    let world = util::world();
    let (rank, size) = (world.rank(), world.size());
    drop(world);
    let Err(e) = result else {
        util::end_world();
        return;
    };
    let msg = e.to_string().replace('\n', " ");
    if size == 1 {
        eprintln!("rate: error: {msg}");
    } else if e.is_shared() {
        // every rank has this error: rank 0 prints it once, then all leave MPI together (MPI_Finalize waits
        // for every rank), so no rank exits, and has the launcher kill the job, before rank 0 has printed
        if rank == 0 {
            eprintln!("rate: error: {msg}");
        }
        util::end_world();
    } else {
        // this rank alone failed: the others may be waiting inside a collective call, so it leaves without
        // finalising and the launcher stops the job
        eprintln!("rate: error (rank {rank} of {size}): {msg}");
    }
    std::process::exit(2);
}
