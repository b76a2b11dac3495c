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
            let names = ["cpu (f64, f32)"];
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
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("rate: error: {msg}");
        std::process::exit(2);
    }
}
