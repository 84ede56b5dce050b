//! `loopscale`: run Experiments locally, validate them, render reports, print the CRD.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loopscale::crd::{crd_yaml, Experiment};
use loopscale::local::find_workload_bin;
use loopscale::planner::plan;
use loopscale::render;
use loopscale::run::{run, RunEnd, RunOptions};
use loopscale::validation::{validate_documents, ValidationError};

/// Exit code for bad input (an invalid Experiment, an unreadable file).
const EXIT_INVALID: u8 = 2;
/// Exit code of an interrupted run (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Measure how event-loop and thread-pool concurrency models scale with processes and replicas.
#[derive(Parser)]
#[command(name = "loopscale", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an Experiment (the YAML you would `kubectl apply`) with local processes as pods.
    Run {
        /// Experiment manifest.
        file: PathBuf,
        /// Directory for results.json, report.html, logs and generator reports
        /// (default: loopscale-results/<experiment name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Serve the result metrics for Prometheus here while running, e.g. 127.0.0.1:9464.
        #[arg(long, env = "LOOPSCALE_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// The loopscale-workload binary (default: next to loopscale, then PATH).
        #[arg(long, env = "LOOPSCALE_WORKLOAD_BIN")]
        workload_bin: Option<PathBuf>,
        /// Where the reference servers are, for `implementation: reference` (default:
        /// workload/reference, relative to the current directory; install them with
        /// workload/reference/install).
        #[arg(long, env = "LOOPSCALE_REFERENCE_DIR", value_name = "DIR")]
        reference_dir: Option<PathBuf>,
        /// Keep Prometheus file_sd targets of the run's processes (itself with --metrics-addr,
        /// workload replicas, load generators) in this JSON file, e.g.
        /// deploy/local/targets/loopscale.json for deploy/local/prometheus.yml.
        #[arg(long, value_name = "FILE")]
        prometheus_sd: Option<PathBuf>,
        /// With --metrics-addr: keep serving the metrics this long after the last step, so
        /// Prometheus scrapes the final results (Ctrl-C skips the wait).
        #[arg(long, default_value = "5s", value_parser = parse_linger, value_name = "DUR")]
        metrics_linger: std::time::Duration,
    },
    /// Check an Experiment manifest by the CRD's schema and CEL rules; exit 2 when invalid.
    Validate {
        /// Experiment manifest.
        file: PathBuf,
    },
    /// Print the comparison table of a results.json (or `kubectl get experiment -o json`).
    Report {
        /// results.json written by `loopscale run`.
        file: PathBuf,
        /// Also write the HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Print the Experiment CustomResourceDefinition as YAML.
    Crd,
    /// Run the Kubernetes operator: reconcile Experiments until SIGTERM/SIGINT.
    Operator(loopscale::controller::server::OperatorArgs),
}

/// Read and validate every Experiment in `file`; on any violation print them all (naming the
/// fields) and return exit code 2.
fn load_manifests(file: &Path) -> Result<Vec<Experiment>, ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", file.display());
        ExitCode::from(EXIT_INVALID)
    })?;
    let documents = validate_documents(&text).map_err(|e| {
        eprintln!("error: {}: {e}", file.display());
        ExitCode::from(EXIT_INVALID)
    })?;
    let many = documents.len() > 1;
    let mut experiments = Vec::new();
    let mut invalid = false;
    for (i, document) in documents.into_iter().enumerate() {
        let which = if many {
            format!(" (document {})", i + 1)
        } else {
            String::new()
        };
        match document {
            Ok(e) => experiments.push(e),
            Err(ValidationError::Invalid(violations)) => {
                invalid = true;
                eprintln!(
                    "error: {}{which} is not a valid Experiment:",
                    file.display()
                );
                for v in violations {
                    eprintln!("  {v}");
                }
            }
            Err(other) => {
                invalid = true;
                eprintln!("error: {}{which}: {other}", file.display());
            }
        }
    }
    if invalid {
        return Err(ExitCode::from(EXIT_INVALID));
    }
    Ok(experiments)
}

/// `loopscale operator`: logs to stderr, a two-thread runtime, the controller and its HTTP server.
fn operator(args: loopscale::controller::server::OperatorArgs) -> ExitCode {
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
        Command::Validate { file } => match load_manifests(&file) {
            Ok(experiments) => {
                for exp in experiments {
                    println!(
                        "{}: valid Experiment {:?}, {} steps",
                        file.display(),
                        exp.metadata.name.as_deref().unwrap_or(""),
                        plan(&exp.spec).len()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Report { file, html } => report(&file, html.as_deref()),
        Command::Run {
            file,
            out,
            metrics_addr,
            workload_bin,
            reference_dir,
            prometheus_sd,
            metrics_linger,
        } => {
            let experiments = match load_manifests(&file) {
                Ok(e) => e,
                Err(code) => return code,
            };
            let workload_bin = match find_workload_bin(workload_bin) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
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
            let many = experiments.len() > 1;
            let mut code = ExitCode::SUCCESS;
            // Several Experiments in one file run one after the other, each in its own directory.
            for experiment in experiments {
                let name = experiment.metadata.name.clone().unwrap_or_default();
                let out_dir = match (&out, many) {
                    (Some(dir), false) => dir.clone(),
                    (Some(dir), true) => dir.join(&name),
                    (None, _) => PathBuf::from("loopscale-results").join(&name),
                };
                let options = RunOptions {
                    workload_bin: workload_bin.clone(),
                    reference_dir: reference_dir.clone(),
                    out_dir: out_dir.clone(),
                    metrics_addr,
                    prometheus_sd: prometheus_sd.clone(),
                    metrics_linger,
                };
                match runtime.block_on(run(experiment, options)) {
                    Ok((experiment, end)) => {
                        println!("experiment {name}:");
                        print!("{}", render::table(&experiment));
                        println!(
                            "results: {}\nreport:  {}",
                            out_dir.join("results.json").display(),
                            out_dir.join("report.html").display()
                        );
                        match end {
                            RunEnd::Succeeded => {}
                            RunEnd::Failed => code = ExitCode::FAILURE,
                            RunEnd::Interrupted => return ExitCode::from(EXIT_INTERRUPTED),
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            code
        }
    }
}

fn parse_linger(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 0s, 5s, 1m)"))
}

fn report(file: &Path, html: Option<&Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // JSON is YAML, so one parser reads both results.json and `kubectl get -o yaml` output.
    let experiment: Experiment = match serde_yaml::from_str(&text) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "error: {} is not an Experiment with results: {e}",
                file.display()
            );
            return ExitCode::from(EXIT_INVALID);
        }
    };
    print!("{}", render::table(&experiment));
    if let Some(path) = html {
        if let Err(e) = std::fs::write(path, render::html(&experiment)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("report: {}", path.display());
    }
    ExitCode::SUCCESS
}
