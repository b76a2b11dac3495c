//! The `rate` command: every experiment and job of the rate-reduction networks (ReduNet, invariant ReduNet, CRATE, AoT, TOST).

#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod invariant_cmd;
mod plot;
mod redunet_cmd;
mod util;

use clap::{Parser, Subcommand};
use util::{BackendOpts, CliResult};

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
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("rate: error: {msg}");
        std::process::exit(2);
    }
}
