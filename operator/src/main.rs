use clap::Parser;

/// Measure how event-loop and thread-pool concurrency models scale.
#[derive(Parser)]
#[command(name = "loopscale", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("loopscale {}", env!("CARGO_PKG_VERSION"));
}
