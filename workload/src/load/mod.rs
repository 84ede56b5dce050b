//! `loopscale-workload load`: the open/closed-model HTTP load generator.

use std::process::ExitCode;

/// Flags of the `load` role.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

/// Entry point of the `load` role.
pub fn main(_args: LoadArgs) -> ExitCode {
    eprintln!("loopscale-workload load: not implemented yet");
    ExitCode::from(1)
}
