//! Shared pieces of the workload's integration tests, `serve_*` and `load_*` alike: the real
//! binary in either role ([`serve::Server`], [`load::Load`]), a minimal client for single
//! requests ([`client`]), `/metrics` scrapes read into samples ([`metrics::Samples`]), the
//! loopback stub servers the generator's own tests aim at ([`stub_servers`]), and the lock that
//! keeps timing tests apart ([`serial`]).
#![allow(dead_code)] // each test binary uses a different subset

pub mod client;
pub mod load;
pub mod metrics;
pub mod serve;
pub mod stub_servers;

use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

/// Timing tests take this lock so they never steal CPU from each other. It also moves the test
/// process (and so the servers and generators it starts) into its own scheduler autogroup at
/// nice -20 once, so that other builds on a shared 2-core machine do not starve what is
/// measured: with autogroups on, CPU is split evenly between sessions whatever their thread
/// count, and a starved server measures the machine, not the model. Needs root
/// (CAP_SYS_NICE); without it, or on a quiet machine (CI), nothing changes.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static CLAIM: std::sync::Once = std::sync::Once::new();
    CLAIM.call_once(|| {
        if nix::unistd::setsid().is_ok() {
            let _ = std::fs::write("/proc/self/autogroup", "-20");
        }
    });
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loopback port with nothing listening a moment ago (bound, then released): for a server to
/// take, or for a target that refuses connections.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// The `loopscale-workload` binary under test; `LOOPSCALE_TEST_WORKLOAD_BIN` points the tests at
/// another build (e.g. release).
pub fn workload_binary() -> String {
    std::env::var("LOOPSCALE_TEST_WORKLOAD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_loopscale-workload").to_string())
}

/// `loopscale-workload <role>` with piped output and none of the caller's `LOOPSCALE_*` or `PORT`
/// variables, so a developer's shell cannot change what a test runs.
pub fn workload_command(role: &str) -> Command {
    let mut command = Command::new(workload_binary());
    command.arg(role);
    for (key, _) in std::env::vars() {
        if key.starts_with("LOOPSCALE_") || key == "PORT" {
            command.env_remove(key);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a child and collects its output, with a time bound: past it the child is killed
/// and the test fails. Output is read while waiting, so a child writing more than a pipe holds
/// cannot stall.
pub fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(limit) {
        Ok(output) => output.expect("collect the child's output"),
        Err(_) => {
            // Not reaped yet (the waiting thread reaps it), so the pid is still this child's.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let stderr = done_rx
                .recv()
                .ok()
                .and_then(Result::ok)
                .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
                .unwrap_or_default();
            panic!("child process did not finish within {limit:?}; stderr:\n{stderr}");
        }
    }
}
