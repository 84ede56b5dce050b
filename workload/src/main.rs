use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loopscale_workload::report::{merge, Report};

/// mimalloc instead of glibc's malloc: the load generator allocates and frees a few small
/// objects per request (hyper's request and response heads, channels), and the server as many
/// per response; see the profile section of `workload/LOAD.md` for what it saves.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Load(Box<loopscale_workload::load::LoadArgs>),
    /// Merge load reports exactly (histograms, not averaged percentiles) and print the summary.
    Merge {
        /// Report files written by `load --report` (`-` reads one report from stdin).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Print the merged report as JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => loopscale_workload::serve::main(),
        Command::Load(args) => loopscale_workload::load::main(*args),
        Command::Merge { reports, json } => merge_command(&reports, json),
    }
}

/// Reads the reports, merges them and prints the summary (or the merged JSON).
/// Exit 0 on success, 1 when a report cannot be read or the reports do not merge.
fn merge_command(paths: &[PathBuf], json: bool) -> ExitCode {
    let mut reports = Vec::with_capacity(paths.len());
    for path in paths {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
        } else {
            std::fs::read_to_string(path)
        };
        let parsed = text
            .map_err(|e| e.to_string())
            .and_then(|t| Report::from_json(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(report) => reports.push(report),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    match merge(&reports) {
        Ok(merged) if json => {
            println!("{}", merged.to_json());
            ExitCode::SUCCESS
        }
        Ok(merged) => {
            print!("{}", merged.render_summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
