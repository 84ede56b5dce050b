//! `loopscale-workload load`: the open/closed-model HTTP load generator.
//!
//! - [`args`]: flags, env vars and their validation into a plan;
//! - [`schedule`]: the open model's intended start times; [`timer`]: a sub-millisecond sleep;
//! - [`jobs`]: the queue of due requests between the timer or loops and the connections;
//! - [`connection`]: one HTTP/1.1 keep-alive connection per worker, over several targets;
//!   [`wire_clock`]: when its request and response crossed the socket;
//! - [`outcome`]: how a request ended;
//! - [`recorder`]: the measured window's histogram, counts and timeline;
//! - [`metrics`]: live Prometheus metrics; [`progress`]: the terminal line;
//! - [`run`]: drives a run and produces the [`crate::report::Report`].

pub mod args;
pub mod connection;
pub mod jobs;
pub mod metrics;
pub mod outcome;
pub mod progress;
pub mod publish;
pub mod recorder;
pub mod run;
pub mod schedule;
pub mod timer;
pub mod wire_clock;

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

pub use args::LoadArgs;

use metrics::LoadMetrics;
use progress::Progress;

/// Exit code for bad input (as clap uses for its own errors).
const EXIT_BAD_INPUT: u8 = 2;

/// Where the JSON report goes.
enum ReportSink {
    None,
    Stdout,
    File(File),
}

/// Entry point of the `load` role. Exit 0 when the run completed (even with request errors),
/// 2 on bad input, 1 when the report cannot be produced.
pub fn main(args: LoadArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(e) => return bad_input(&e.to_string()),
    };
    // Open the report file before the run, so a bad path fails now rather than after it.
    let mut sink = match &args.report {
        None => ReportSink::None,
        Some(path) if path.as_os_str() == "-" => ReportSink::Stdout,
        Some(path) => match File::create(path) {
            Ok(file) => ReportSink::File(file),
            Err(e) => {
                return bad_input(&format!(
                    "invalid value for --report: cannot create {}: {e}",
                    path.display()
                ))
            }
        },
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let metrics = Arc::new(LoadMetrics::new());
        if let Some(addr) = args.metrics_addr {
            match metrics::bind(addr).await {
                Ok(listener) => {
                    if let Ok(local) = listener.local_addr() {
                        eprintln!("metrics on http://{local}/metrics");
                    }
                    tokio::spawn(metrics::serve(listener, metrics.clone()));
                }
                Err(e) => {
                    return Err(format!(
                        "invalid value for --metrics-addr: cannot listen on {addr}: {e}"
                    ))
                }
            }
        }
        let progress = Progress::for_stderr(plan.warmup + plan.duration);
        let report = run::run(&plan, metrics, progress)
            .await
            .map_err(|e| format!("cannot build the report: {e}"));
        Ok::<_, String>(report)
    });
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => return bad_input(&e),
    };
    if let Some(name) = &args.publish_configmap {
        // Kubernetes: hand the report to the operator (see `publish`); a failure exits 1 so the
        // Job's bounded retry runs the generator again.
        let published = runtime.block_on(publish::publish_from_env(name, &report.to_json()));
        if let Err(e) = published {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Pending connection tasks must not keep the process alive.
    runtime.shutdown_background();

    let json = report.to_json();
    let written = match &mut sink {
        ReportSink::None => {
            print!("{}", report.render_summary());
            Ok(())
        }
        ReportSink::Stdout => {
            eprint!("{}", report.render_summary());
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}").and_then(|_| out.flush())
        }
        ReportSink::File(file) => {
            print!("{}", report.render_summary());
            writeln!(file, "{json}").and_then(|_| file.sync_all())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad_input(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_BAD_INPUT)
}
