use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// loopscale's data plane: the emulated server and the load generator.
#[derive(Parser)]
#[command(name = "loopscale-workload", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the emulated workload (configured by LOOPSCALE_* environment variables).
    Serve,
    /// Generate HTTP load against one or more targets and write a mergeable report.
    Load(loopscale_workload::load::LoadArgs),
    /// Merge load reports exactly (histograms, not averaged percentiles) and print the summary.
    Merge {
        /// Report files written by `load --report`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => loopscale_workload::serve::main(),
        Command::Load(args) => loopscale_workload::load::main(args),
        Command::Merge { reports } => {
            eprintln!("merge of {} reports: not implemented yet", reports.len());
            ExitCode::from(1)
        }
    }
}
