//! Shared pieces of the `serve` integration tests: start the real binary on a free loopback port,
//! talk HTTP/1.1 to it with hyper, run bounded closed-loop load, read its metrics.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Heavy tests take this lock so they never steal CPU from each other. It also moves the test
/// process (and so the servers it starts) into its own scheduler autogroup at nice -20 once, so
/// that other builds on a shared 2-core machine do not starve the measured server: with
/// autogroups on, CPU is split evenly between sessions whatever their thread count, and a
/// starved server measures the machine, not the model. Needs root (CAP_SYS_NICE); without it,
/// or on a quiet machine (CI), nothing changes.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static CLAIM: std::sync::Once = std::sync::Once::new();
    CLAIM.call_once(|| {
        if nix::unistd::setsid().is_ok() {
            let _ = std::fs::write("/proc/self/autogroup", "-20");
        }
    });
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running `loopscale-workload serve` supervisor (and its workers).
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server with these env vars on 127.0.0.1 and a free port, and waits until
    /// `/readyz` says every worker is up.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopscale-workload"));
        cmd.arg("serve");
        for (k, _) in std::env::vars() {
            if k.starts_with("LOOPSCALE_") || k == "PORT" {
                cmd.env_remove(k);
            }
        }
        cmd.env("LOOPSCALE_HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loopscale-workload serve");
        let stderr = child.stderr.take().unwrap();
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
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "server did not report its address; log:\n{}",
                    log.lock().unwrap()
                )
            });
        let server = Server { child, addr, log };
        server.wait_ready(Duration::from_secs(20));
        server
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        loop {
            let ok = rt.block_on(async {
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), get_once(self.addr, "/readyz"))
                        .await,
                    Ok(Ok((StatusCode::OK, _, _)))
                )
            });
            if ok {
                return;
            }
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

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
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
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

/// A response: status, headers, body.
pub type Answer = (StatusCode, HeaderMap, String);

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<Answer> {
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let req = Request::get(path)
            .header(http::header::HOST, "loopscale.test")
            .body(Empty::new())
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }

    /// Like [`Conn::get`], also returning how long the exchange took.
    pub async fn timed_get(&mut self, path: &str) -> std::io::Result<(Answer, Duration)> {
        let start = Instant::now();
        let a = self.get(path).await?;
        Ok((a, start.elapsed()))
    }
}

/// One request on a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    Conn::open(addr).await?.get(path).await
}

/// The worker that answered.
pub fn worker_of(answer: &Answer) -> usize {
    answer
        .1
        .get("x-loopscale-worker")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-loopscale-worker header")
}

/// What a closed-loop run measured.
#[derive(Debug)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx]
}

/// Closed-loop load: `concurrency` connections, each sending `per_connection` requests back to
/// back. Bounded in count, and each request in time (30 s).
pub async fn closed_loop(
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    per_connection: usize,
) -> LoadResult {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let path = path.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut failed = 0;
                let Ok(mut conn) = Conn::open(addr).await else {
                    return (lat, per_connection);
                };
                for _ in 0..per_connection {
                    match tokio::time::timeout(Duration::from_secs(30), conn.timed_get(&path)).await
                    {
                        Ok(Ok(((StatusCode::OK, _, _), d))) => lat.push(d),
                        _ => failed += 1,
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut result = LoadResult {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (lat, failed) = t.await.unwrap();
        result.ok += lat.len();
        result.failed += failed;
        result.latencies.extend(lat);
    }
    result.elapsed = start.elapsed();
    result
}

/// Sum of a metric's samples whose line contains every given label fragment.
pub fn metric_sum(scrape: &str, name: &str, label_fragments: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| label_fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Median latency of `n` `/hello` probes on one prepared connection, spaced `gap` apart.
pub async fn probe_hello(conn: &mut Conn, n: usize, gap: Duration) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..n {
        let ((status, _, _), d) = conn.timed_get("/hello").await.expect("probe answered");
        assert_eq!(status, StatusCode::OK);
        samples.push(d);
        tokio::time::sleep(gap).await;
    }
    percentile(&samples, 50.0)
}
