//! Supervisor and worker processes on real sockets: balancing, restarts, draining on SIGTERM,
//! readiness, bad parameters, many idle connections, and a promtool-checked scrape. Traffic
//! comes from the project's load generator; per-worker figures come from the pod's one scrape.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::load::{assert_all_ok, Load};
use support::metrics::{promtool_check, Samples};
use support::serial;
use support::serve::Server;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const WORKERS: [&str; 4] = ["0", "1", "2", "3"];

/// Open file descriptors of each worker process (not the supervisor's), from one scrape, less
/// the scrape's own connection on the worker that answered it.
fn worker_fds(server: &Server) -> BTreeMap<String, f64> {
    let answer = server.get("/metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut fds = Samples::parse(&answer.body).sum_by("process_open_fds", "worker", &[]);
    fds.remove("supervisor");
    let answered_by = answer.header("x-loopscale-worker").expect("worker header");
    *fds.get_mut(answered_by)
        .expect("the answering worker's fds") -= 1.0;
    fds
}

/// Connections each worker took between two [`worker_fds`] counts.
fn connections_per_worker(
    before: &BTreeMap<String, f64>,
    during: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    during
        .iter()
        .map(|(worker, fds)| {
            let held = fds - before.get(worker).copied().unwrap_or(f64::NAN);
            (worker.clone(), held)
        })
        .collect()
}

#[test]
fn round_robin_spreads_100_connections_evenly_over_4_workers() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_PROCESSES", "4"),
    ]);
    let before = worker_fds(&server);
    // 100 loops on 100 keep-alive connections; /io keeps every connection open and busy
    // without loading the CPU, so all 100 are held when the workers are counted.
    let load = Load::closed(&server.url(), "/io?ms=100", 100)
        .duration(ms(1500))
        .start();
    std::thread::sleep(ms(700));
    let during = worker_fds(&server);
    let r = load.report();
    let connections = connections_per_worker(&before, &during);
    let requests = server.scrape().sum_by(
        "loopscale_http_requests_total",
        "worker",
        &[("route", "/io")],
    );
    println!("connections per worker: {connections:?}; /io requests per worker: {requests:?}");
    assert_all_ok(&r);
    assert_eq!(
        connections.keys().collect::<Vec<_>>(),
        WORKERS.iter().collect::<Vec<_>>()
    );
    for (worker, n) in &connections {
        // ±10% of 25.
        assert!(
            (23.0..=27.0).contains(n),
            "worker {worker} holds {n} of 100 connections"
        );
    }
    // Each connection carries the same share of a closed-model run, so requests spread alike;
    // and the pod's one scrape saw every request the generator sent.
    let total: f64 = requests.values().sum();
    assert_eq!(total, r.summary.requests as f64, "{requests:?}");
    for worker in WORKERS {
        let share = requests.get(worker).copied().unwrap_or(0.0) / total;
        assert!(
            (0.225..=0.275).contains(&share),
            "worker {worker}: {requests:?}"
        );
    }
}

/// Polls `/readyz` for `within`; true if it said 503 (a worker missing) at some point.
fn saw_not_ready(server: &Server, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if matches!(support::client::get(server.addr, "/readyz"), Ok(a) if a.status == 503) {
            return true;
        }
        std::thread::sleep(ms(5));
    }
    false
}

#[test]
fn a_killed_worker_is_restarted_counted_and_the_others_keep_serving() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_PROCESSES", "4"),
    ]);
    let victim = 0;
    let victim_pid = server.worker_pids()[&victim];
    let before = worker_fds(&server);
    // 8 connections, 2 per worker; /io?ms=20 keeps a request in flight on each almost always.
    let load = Load::closed(&server.url(), "/io?ms=20", 8)
        .duration(ms(3000))
        .start();
    std::thread::sleep(ms(500));
    let on_victim = connections_per_worker(&before, &worker_fds(&server))[&victim.to_string()];
    assert!(on_victim >= 1.0, "the victim holds {on_victim} connections");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_pid), Signal::SIGKILL).unwrap();
    // The pod is not ready while a worker is missing (restart waits at least 100 ms).
    assert!(
        saw_not_ready(&server, ms(2000)),
        "/readyz never said 503 while worker {victim} was dead"
    );
    server.wait_restarted(victim, victim_pid, Duration::from_secs(15));
    server.wait_ready(Duration::from_secs(15));
    let r = load.report();
    let e = &r.summary.errors;
    println!(
        "kill -9 of worker {victim} ({on_victim} connections): {} ok, errors {e:?}; per second {:?}",
        r.summary.ok,
        r.timeline.iter().map(|s| s.completed).collect::<Vec<_>>()
    );
    // Only the requests in flight on the victim's connections may fail, each as a broken
    // connection (`io`); the generator re-opens those connections on the live workers. Anything
    // else (a refused connect, a timeout, a 5xx) is a failure on the other workers.
    assert_eq!(
        (e.connect, e.timeout, e.status_4xx, e.status_5xx),
        (0, 0, 0, 0),
        "{r:?}"
    );
    assert!(e.io as f64 <= on_victim, "{} io errors: {r:?}", e.io);
    // Service went on through every second of the window.
    let seconds = &r.timeline[..r.window_secs.floor() as usize];
    let best = seconds.iter().map(|s| s.completed).max().unwrap_or(0);
    assert!(
        best > 0 && seconds.iter().all(|s| s.completed * 3 >= best),
        "throughput dropped while a worker was down: {seconds:?}"
    );

    let scrape = server.scrape();
    let victim_label = victim.to_string();
    let restarts = |labels: &[(&str, &str)]| scrape.sum("loopscale_worker_restarts_total", labels);
    assert_eq!(
        restarts(&[("worker", &victim_label)]),
        1.0,
        "{}",
        scrape.text()
    );
    assert_eq!(restarts(&[]), 1.0);
    // New connections reach all four workers again, the restarted one included.
    let hello = Load::closed(&server.url(), "/hello", 8)
        .duration(ms(500))
        .run();
    assert_eq!(hello.summary.errors.total(), 0, "{hello:?}");
    let served = server.scrape().sum_by(
        "loopscale_http_requests_total",
        "worker",
        &[("route", "/hello")],
    );
    for worker in WORKERS {
        assert!(served.get(worker).is_some_and(|n| *n > 0.0), "{served:?}");
    }
}

#[test]
fn sigterm_lets_100_in_flight_requests_finish_then_exits_0() {
    let _serial = serial();
    let mut server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_PROCESSES", "2"),
    ]);
    let addr = server.addr;
    // 100 loops whose window (400 ms) ends before their first 500 ms request does: exactly 100
    // requests, all in flight at once.
    let load = Load::closed(&server.url(), "/io?ms=500", 100)
        .duration(ms(400))
        .start();
    // Wait until all 100 are inside the workers (the scrape itself is the 101st).
    let deadline = Instant::now() + ms(2000);
    loop {
        let in_flight = server
            .scrape()
            .sum("loopscale_http_requests_in_flight", &[]);
        if in_flight >= 101.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {in_flight} in flight; cannot test draining"
        );
        std::thread::sleep(ms(20));
    }
    server.signal(Signal::SIGTERM);
    let r = load.report();
    println!("drained: {:?}", r.summary);
    assert_eq!((r.summary.requests, r.summary.ok), (100, 100), "{r:?}");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("supervisor exits after draining");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn shared_socket_workers_serve_readiness_and_one_scrape_covers_all_and_restarts_work() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "thread-pool"),
        ("LOOPSCALE_PROCESSES", "2"),
    ]);
    let r = Load::closed(&server.url(), "/hello", 4)
        .duration(ms(500))
        .run();
    assert_all_ok(&r);
    let scrape = server.scrape();
    let cpu = scrape.sum_by("process_cpu_seconds_total", "worker", &[]);
    for worker in ["0", "1", "supervisor"] {
        assert!(
            cpu.contains_key(worker),
            "no process metrics of worker {worker}: {cpu:?}"
        );
    }
    // No warm-up: the generator counted every request it sent, and the one scrape must too.
    assert_eq!(
        scrape.sum("loopscale_http_requests_total", &[("route", "/hello")]),
        r.summary.requests as f64
    );

    let pids = server.worker_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[&1]), Signal::SIGKILL).unwrap();
    server.wait_restarted(1, pids[&1], Duration::from_secs(15));
    server.wait_ready(Duration::from_secs(15));
    assert_eq!(server.get("/hello").status, 200);
}

/// Single requests with the minimal client, not the generator: the test reads each 400's
/// one-line reason, which a load report does not carry.
#[test]
fn every_route_answers_bad_parameters_with_400_and_a_one_line_reason() {
    let _serial = serial();
    let mut cases: Vec<(String, &str)> = Vec::new();
    for route in ["/io", "/cpu", "/cpu-inline", "/offload"] {
        for (query, needle) in [
            ("", "missing"),
            ("?ms=", "number"),
            ("?ms=-1", "negative"),
            ("?ms=abc", "number"),
            ("?ms=NaN", "number"),
            ("?ms=60001", "at most"),
            ("?ms=1&ms=2", "bad query"),
            ("?other=1", "missing"),
        ] {
            cases.push((format!("{route}{query}"), needle));
        }
    }
    for (query, needle) in [
        ("?cpu_ms=1", "io_ms"),
        ("?io_ms=1", "cpu_ms"),
        ("?io_ms=-1&cpu_ms=1", "negative"),
        ("?io_ms=1&cpu_ms=x", "number"),
        ("?io_ms=60001&cpu_ms=0", "at most"),
        ("?io_ms=30000&cpu_ms=30001", "io_ms` + `cpu_ms"),
    ] {
        cases.push((format!("/mixed{query}"), needle));
    }
    for mode in ["event-loop", "thread-pool"] {
        let server = Server::start(&[("LOOPSCALE_MODE", mode)]);
        for (path, needle) in &cases {
            let answer = server.get(path);
            let body = &answer.body;
            assert_eq!(answer.status, 400, "{mode} {path}: {body}");
            assert!(body.contains(needle), "{mode} {path}: {body:?}");
            assert!(
                body.ends_with('\n') && body.trim_end().lines().count() == 1,
                "{mode} {path}: {body:?}"
            );
        }
        for path in ["/nope", "/hello/extra", "/cpu/", "/"] {
            let answer = server.get(path);
            assert_eq!(answer.status, 404, "{mode} {path}");
            assert!(answer.body.contains("no route"), "{}", answer.body);
        }
        for path in [
            "/hello",
            "/io?ms=0",
            "/cpu?ms=1",
            "/cpu-inline?ms=0.5",
            "/mixed?io_ms=1&cpu_ms=1",
            "/offload?ms=1",
            "/healthz",
            "/readyz",
        ] {
            assert_eq!(server.get(path).status, 200, "{mode} {path}");
        }
    }
}

/// Raw sockets, not the generator: these connections must stay idle, never send a request.
#[test]
fn ten_thousand_idle_connections_do_not_stop_it_serving() {
    let _serial = serial();
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 10_500,
        "this machine's hard open-files limit ({hard}) is too low for the test"
    );
    let server = Server::start(&[("LOOPSCALE_MODE", "event-loop")]);
    let mut idle = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        match std::net::TcpStream::connect(server.addr) {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connection {i} failed: {e}"),
        }
    }
    // All of them reach the worker (RR passes each fd), and it still answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fds = server.scrape().sum("process_open_fds", &[("worker", "0")]);
        if fds >= 10_000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "worker holds only {fds} fds");
        std::thread::sleep(ms(200));
    }
    let hello = server.get("/hello");
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, "Hello, World!\n")
    );
    drop(idle);
}

/// A handful of exact requests with the minimal client (the test counts each status), then the
/// scrape through promtool.
#[test]
fn a_real_scrape_passes_promtool_and_has_every_metric_of_the_design() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "thread-pool"),
        ("LOOPSCALE_PROCESSES", "2"),
        ("LOOPSCALE_REQUEST_OVERHEAD_US", "100"),
    ]);
    for path in [
        "/hello",
        "/cpu?ms=2",
        "/cpu-inline?ms=1",
        "/cpu?ms=x",
        "/nope",
    ] {
        server.get(path);
    }
    let answer = server.get("/metrics");
    assert_eq!(answer.status, 200);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = answer.body;
    for name in [
        "loopscale_http_requests_total",
        "loopscale_http_request_duration_seconds",
        "loopscale_http_requests_in_flight",
        "loopscale_eventloop_lag_seconds",
        "loopscale_threadpool_busy_threads",
        "loopscale_threadpool_queue_depth",
        "loopscale_gil_wait_seconds",
        "loopscale_worker_restarts_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{name} must have exactly one TYPE line"
        );
    }
    let scrape = Samples::parse(&text);
    assert!(scrape.sum("loopscale_gil_wait_seconds_count", &[("thread", "loop")]) >= 3.0);
    let with_code = |code| scrape.sum("loopscale_http_requests_total", &[("code", code)]);
    assert_eq!(with_code("400"), 1.0);
    assert_eq!(with_code("404"), 1.0);
    if let Err(why) = promtool_check(&text) {
        panic!("promtool: {why}\n{text}");
    }
}
