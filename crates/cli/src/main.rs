//! The `rate` command: every experiment and job of the rate-reduction networks (ReduNet, invariant ReduNet, CRATE, AoT, TOST).

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod alloc_count;
mod invariant_cmd;
mod plot;
mod redunet_cmd;
mod transformer_cmd;
mod util;

use clap::{Parser, Subcommand};
use util::{BackendOpts, CliResult};

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
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the backends compiled into this binary.
    Backends,
    /// ReduNet: networks built forward, layer by layer, from the rate reduction.
    #[command(subcommand)]
    Redunet(redunet_cmd::RedunetCmd),
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

fn run(cli: Cli) -> CliResult<()> {
    match cli.command {
        Command::Backends => {
            let mut names = vec!["cpu (f64, f32)"];
            if cfg!(feature = "wgpu") {
                names.push("wgpu (f32)");
            }
            if cli.json {
                println!("{}", serde_json::json!({ "backends": names }));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            Ok(())
        }
        Command::Redunet(cmd) => redunet_cmd::run(cmd, cli.backend, cli.json),
        Command::Crate(cmd) => transformer_cmd::run_crate(cmd, cli.backend, cli.json),
        Command::Aot(cmd) => transformer_cmd::run_aot(cmd, cli.backend, cli.json),
        Command::Tost(cmd) => transformer_cmd::run_tost(cmd, cli.backend, cli.json),
    }
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
    if let Err(e) = run(cli) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("rate: error: {msg}");
        std::process::exit(2);
    }
}
