//! The real `loopscale-workload serve` on a free loopback port, configured by env vars as in a
//! pod, with a guard that kills the supervisor and its workers when the test ends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::client::{self, Answer};
use super::metrics::{self, Samples};
use super::workload_command;

/// How long a server gets to report its address and become ready.
const STARTUP: Duration = Duration::from_secs(20);

/// Runs `serve` with `env` on `port` until it exits (for settings that must stop it at once).
pub fn serve_output(env: &[(&str, &str)], port: u16) -> Output {
    let mut command = workload_command("serve");
    command
        .env("LOOPSCALE_HOST", "127.0.0.1")
        .env("PORT", port.to_string());
    for (key, value) in env {
        command.env(key, value);
    }
    super::wait_bounded(command.spawn().expect("spawn serve"), STARTUP)
}

/// A running supervisor (and its workers); killed with them on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server with these env vars on 127.0.0.1 and a port of its choosing (`PORT=0`,
    /// read back from its log, so no other process can take the port in between), and waits
    /// until `/readyz` says every worker is up.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut command = workload_command("serve");
        command
            .env("LOOPSCALE_HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start loopscale-workload serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        let _ = addr_tx.send(addr.parse::<SocketAddr>().ok());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = addr_rx.recv_timeout(STARTUP).ok().flatten();
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server did not report its address; log:\n{}",
                log.lock().unwrap()
            );
        };
        let server = Server { child, addr, log };
        server.wait_ready(STARTUP);
        server
    }

    /// Base URL for the load generator's `--target`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request on a fresh connection (see [`client`]).
    pub fn get(&self, path: &str) -> Answer {
        client::get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The pod's one scrape, covering every worker.
    pub fn scrape(&self) -> Samples {
        metrics::scrape(self.addr)
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !matches!(
            client::get(self.addr, "/readyz"),
            Ok(Answer { status: 200, .. })
        ) {
            assert!(
                Instant::now() < deadline,
                "not ready within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Worker index → pid, read from /proc (children of the supervisor carrying the index env).
    pub fn worker_pids(&self) -> HashMap<usize, i32> {
        let mut out = HashMap::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the parenthesised command name: state, ppid, ...
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let ppid: i32 = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid != self.pid() {
                continue;
            }
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            for var in environ.split(|b| *b == 0) {
                if let Some(v) = var.strip_prefix(b"LOOPSCALE_WORKER_INDEX=") {
                    if let Ok(i) = String::from_utf8_lossy(v).parse() {
                        out.insert(i, pid);
                    }
                }
            }
        }
        out
    }

    /// Waits until worker `index` runs in a process other than `old_pid`.
    pub fn wait_restarted(&self, index: usize, old_pid: i32, within: Duration) {
        let deadline = Instant::now() + within;
        while self
            .worker_pids()
            .get(&index)
            .is_none_or(|pid| *pid == old_pid)
        {
            assert!(
                Instant::now() < deadline,
                "worker {index} not restarted within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the supervisor");
    }

    /// Waits for the supervisor to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in self.worker_pids().values() {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
