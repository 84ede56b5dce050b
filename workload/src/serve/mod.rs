//! `loopscale-workload serve`: the emulated Express (event-loop) / FastAPI (thread-pool) server.

use std::process::ExitCode;

/// Entry point of the `serve` role; all settings come from `LOOPSCALE_*` environment variables.
pub fn main() -> ExitCode {
    eprintln!("loopscale-workload serve: not implemented yet");
    ExitCode::from(1)
}
