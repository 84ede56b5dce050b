//! `loopscale-workload serve`: the emulated Express (event-loop) / FastAPI (thread-pool) server.
//!
//! The process started by the user (or the container runtime) is the supervisor; it re-executes
//! this binary once per worker with the internal `LOOPSCALE_WORKER_INDEX` set. See
//! `workload/README.md` for settings, routes, limits, metrics and the model.

pub mod after_callback;
pub mod config;
pub mod control;
pub mod cpu;
pub mod fdpass;
pub mod gil;
pub mod metrics;
pub mod pool;
pub mod ready_order;
pub mod routes;
pub mod supervisor;
pub mod worker;
pub mod working_set;

use std::process::ExitCode;

use crate::serve::config::Config;

/// Entry point of the `serve` role; all settings come from `LOOPSCALE_*` environment variables.
/// Bad settings exit with code 2 before anything is bound or started.
pub fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loopscale-workload serve: {e}");
            return ExitCode::from(2);
        }
    };
    let worker = match std::env::var(worker::WORKER_INDEX_ENV) {
        Err(_) => None,
        Ok(v) => match v.parse::<usize>() {
            Ok(i) if i < config.processes => Some(i),
            _ => {
                eprintln!(
                    "loopscale-workload serve: {}={v:?} is internal and must be a worker index below LOOPSCALE_PROCESSES",
                    worker::WORKER_INDEX_ENV
                );
                return ExitCode::from(2);
            }
        },
    };
    init_tracing();
    raise_open_files_limit();
    match worker {
        Some(i) => worker::run(config, i),
        None => supervisor::run(config),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Idle keep-alive connections each hold an fd: lift the soft limit to the hard one so thousands
/// of clients do not exhaust the default 1024.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-files limit: {e}"),
    }
}
