//! `loopscale`: run Experiments locally, run the Kubernetes operator, print the CRD.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loopscale::controller::server::OperatorArgs;
use loopscale::crd::crd_yaml;

/// Measure how event-loop and thread-pool concurrency models scale with processes and replicas.
#[derive(Parser)]
#[command(name = "loopscale", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes operator: reconcile Experiments until SIGTERM/SIGINT.
    Operator(OperatorArgs),
    /// Print the Experiment CustomResourceDefinition as YAML.
    Crd,
}

fn operator(args: OperatorArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(loopscale::controller::server::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Operator(args) => operator(args),
        Command::Crd => {
            print!("{}", crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
