//! Small HTTP servers on loopback with a chosen behaviour (fast, delayed, stalling, closing,
//! failing, silent): targets for the load generator's own tests.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use axum::Router;

/// What a server does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// Answer at once.
    Fast,
    /// Answer after a fixed delay. Served by a thread per connection that sleeps with the OS
    /// timer and writes the response itself: the fewest hops, so the delay the client sees is
    /// the delay (tokio's timer rounds sleeps up to the next millisecond, 2–5 % of 20 ms).
    Delay(Duration),
    /// Answer at once, except that when the `after`-th request arrives the server stalls for
    /// `stall`: every request until then waits for the stall to end (a GC pause, a blocked loop).
    StallOnce { after: u64, stall: Duration },
    /// Answer at once and close the connection after every `every`-th response.
    CloseEvery(u64),
    /// Answer at once with this status.
    Status(u16),
    /// Accept connections and never answer.
    Silent,
}

/// A running test server; stops when the process ends (servers live on their own runtime).
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// Connections accepted (axum-served behaviours only; 0 for `Delay` and `Silent`).
    pub connections: Arc<AtomicU64>,
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

struct ServerState {
    behavior: Behavior,
    requests: Arc<AtomicU64>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stall_until: Mutex<Option<tokio::time::Instant>>,
}

/// Starts a server on 127.0.0.1 with a free port: a plain threaded server for `Delay`, axum on
/// a dedicated 2-thread runtime for the others.
pub fn start(behavior: Behavior) -> TestServer {
    if let Behavior::Delay(delay) = behavior {
        return start_delay_server(delay);
    }
    if let Behavior::Silent = behavior {
        return start_silent_server();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let state = Arc::new(ServerState {
        behavior,
        requests: requests.clone(),
        arrivals: arrivals.clone(),
        stall_until: Mutex::new(None),
    });
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .expect("listener")
                .tap_io(move |_| {
                    accepted.fetch_add(1, Ordering::SeqCst);
                });
            let app = Router::new().fallback(move || handle(state.clone()));
            axum::serve(listener, app).await.expect("test server");
        })
    });
    TestServer {
        addr,
        requests,
        connections,
        arrivals,
    }
}

async fn handle(state: Arc<ServerState>) -> axum::response::Response {
    let arrived = Instant::now();
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    state.arrivals.lock().unwrap().push(arrived);
    match state.behavior {
        Behavior::Fast => "ok".into_response(),
        Behavior::Delay(_) => unreachable!("served by start_delay_server"),
        Behavior::Silent => unreachable!("served by start_silent_server"),
        Behavior::Status(code) => axum::http::StatusCode::from_u16(code)
            .expect("valid status")
            .into_response(),
        Behavior::StallOnce { after, stall } => {
            let until = {
                let mut stall_until = state.stall_until.lock().unwrap();
                if n == after {
                    *stall_until = Some(tokio::time::Instant::now() + stall);
                }
                *stall_until
            };
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            "ok".into_response()
        }
        Behavior::CloseEvery(every) => {
            let mut response = "ok".into_response();
            if n.is_multiple_of(every) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// A minimal HTTP/1.1 keep-alive server: one thread per connection; for each request (the
/// generator sends GETs without a body, one at a time) it sleeps `delay` and answers.
fn start_delay_server(delay: Duration) -> TestServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let (count, times) = (requests.clone(), arrivals.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (count, times) = (count.clone(), times.clone());
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut pending = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buffer[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let arrived = Instant::now();
                        count.fetch_add(1, Ordering::SeqCst);
                        times.lock().unwrap().push(arrived);
                        std::thread::sleep(delay.saturating_sub(arrived.elapsed()));
                        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(response).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        requests,
        connections: Arc::new(AtomicU64::new(0)),
        arrivals,
    }
}

/// Accepts connections (counting them as requests) and never answers; holds them for 60 s.
fn start_silent_server() -> TestServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        listener.set_nonblocking(true).expect("nonblocking");
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    held.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    TestServer {
        addr,
        requests,
        connections: Arc::new(AtomicU64::new(0)),
        arrivals: Arc::new(Mutex::new(Vec::new())),
    }
}
