//! Supervisor and worker processes on real sockets: balancing, restarts, draining on SIGTERM,
//! readiness, bad parameters, many idle connections, and a promtool-checked scrape.

mod serve_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serve_support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn round_robin_spreads_100_connections_evenly_over_4_workers() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_PROCESSES", "4"),
    ]);
    let counts = runtime().block_on(async {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for _ in 0..100 {
            let answer = get_once(server.addr, "/hello").await.unwrap();
            assert_eq!(answer.0, 200);
            *counts.entry(worker_of(&answer)).or_default() += 1;
        }
        counts
    });
    println!("connections per worker: {counts:?}");
    assert_eq!(counts.len(), 4, "{counts:?}");
    for (w, n) in &counts {
        // ±10% of 25.
        assert!((23..=27).contains(n), "worker {w} got {n} of 100");
    }
}

#[test]
fn a_killed_worker_is_restarted_counted_and_the_others_keep_serving() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_PROCESSES", "4"),
    ]);
    let rt = runtime();
    let (victim, mut survivors) = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..4 {
            let mut c = Conn::open(server.addr).await.unwrap();
            let w = worker_of(&c.get("/hello").await.unwrap());
            conns.push((w, c));
        }
        let seen: HashSet<usize> = conns.iter().map(|(w, _)| *w).collect();
        assert_eq!(seen.len(), 4, "round-robin gave 4 connections to {seen:?}");
        let (victim, _) = conns.remove(0);
        (victim, conns)
    });
    let before = server.worker_pids();
    let victim_pid = before[&victim];

    // Keep the other workers busy while the victim dies.
    let traffic = rt.spawn(async move {
        let mut failures = Vec::new();
        let mut ok = 0;
        for _ in 0..40 {
            for (w, c) in survivors.iter_mut() {
                match c.get("/hello").await {
                    Ok((status, headers, body)) if status == 200 => {
                        assert_eq!(worker_of(&(status, headers, body)), *w);
                        ok += 1;
                    }
                    other => failures.push(format!("worker {w}: {other:?}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (ok, failures)
    });
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_pid), Signal::SIGKILL).unwrap();
    // The pod is not ready while a worker is missing (restart waits at least 100 ms).
    let addr = server.addr;
    let saw_not_ready = rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok((status, _, _)) = get_once(addr, "/readyz").await {
                if status == 503 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    });
    assert!(
        saw_not_ready,
        "/readyz never said 503 while worker {victim} was dead"
    );
    let (ok, failures) = rt.block_on(traffic).unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ok, 40 * 3);

    // A new process takes the victim's place and the pod is ready again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match server.worker_pids().get(&victim) {
            Some(&pid) if pid != victim_pid => break,
            _ => assert!(Instant::now() < deadline, "worker {victim} not restarted"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.wait_ready(Duration::from_secs(15));
    rt.block_on(async {
        let (_, _, scrape) = get_once(server.addr, "/metrics").await.unwrap();
        let label = format!("worker=\"{victim}\"");
        assert_eq!(
            metric_sum(&scrape, "loopscale_worker_restarts_total", &[&label]),
            1.0,
            "{scrape}"
        );
        assert_eq!(
            metric_sum(&scrape, "loopscale_worker_restarts_total", &[]),
            1.0
        );
        // New connections reach all four workers again.
        let mut seen = HashSet::new();
        for _ in 0..8 {
            seen.insert(worker_of(&get_once(server.addr, "/hello").await.unwrap()));
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    });
}

#[test]
fn sigterm_lets_100_in_flight_requests_finish_then_exits_0() {
    let _serial = serial();
    let mut server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_PROCESSES", "2"),
    ]);
    let addr = server.addr;
    let rt = runtime();
    let requests: Vec<_> = (0..100)
        .map(|_| rt.spawn(async move { get_once(addr, "/io?ms=500").await }))
        .collect();
    // Wait until all 100 are inside the workers (the scrape itself is the 101st).
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_millis(450);
        loop {
            let (_, _, scrape) = get_once(addr, "/metrics").await.unwrap();
            let in_flight = metric_sum(&scrape, "loopscale_http_requests_in_flight", &[]);
            if in_flight >= 101.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {in_flight} in flight; cannot test draining"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    server.signal(Signal::SIGTERM);
    let statuses: Vec<_> = rt.block_on(async {
        let mut out = Vec::new();
        for r in requests {
            out.push(r.await.unwrap().map(|a| a.0));
        }
        out
    });
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok(s) if *s == 200))
        .count();
    assert_eq!(ok, 100, "{statuses:?}");
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
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..20 {
            assert_eq!(get_once(server.addr, "/hello").await.unwrap().0, 200);
        }
        let (status, _, scrape) = get_once(server.addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        for w in ["0", "1", "supervisor"] {
            let label = format!("worker=\"{w}\"");
            assert!(
                scrape
                    .lines()
                    .any(|l| l.starts_with("process_cpu_seconds_total") && l.contains(&label)),
                "no process metrics of worker {w}"
            );
        }
        assert_eq!(
            metric_sum(
                &scrape,
                "loopscale_http_requests_total",
                &["route=\"/hello\""]
            ),
            20.0
        );
    });
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[&1]), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.worker_pids().get(&1).is_none_or(|p| *p == pids[&1]) {
        assert!(Instant::now() < deadline, "worker 1 not restarted");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.wait_ready(Duration::from_secs(15));
    rt.block_on(async {
        assert_eq!(get_once(server.addr, "/hello").await.unwrap().0, 200);
    });
}

#[test]
fn every_route_answers_bad_parameters_with_400_and_a_one_line_reason() {
    let _serial = serial();
    for mode in ["event-loop", "thread-pool"] {
        let server = Server::start(&[("LOOPSCALE_MODE", mode)]);
        runtime().block_on(async {
            let mut conn = Conn::open(server.addr).await.unwrap();
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
            for (path, needle) in &cases {
                let (status, _, body) = conn.get(path).await.unwrap();
                assert_eq!(status, 400, "{mode} {path}: {body}");
                assert!(body.contains(needle), "{mode} {path}: {body:?}");
                assert!(
                    body.ends_with('\n') && body.trim_end().lines().count() == 1,
                    "{mode} {path}: {body:?}"
                );
            }
            for path in ["/nope", "/hello/extra", "/cpu/", "/"] {
                let (status, _, body) = conn.get(path).await.unwrap();
                assert_eq!(status, 404, "{mode} {path}");
                assert!(body.contains("no route"), "{body}");
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
                assert_eq!(conn.get(path).await.unwrap().0, 200, "{mode} {path}");
            }
        });
    }
}

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
    runtime().block_on(async {
        let mut idle = Vec::with_capacity(10_000);
        for i in 0..10_000 {
            match tokio::net::TcpStream::connect(server.addr).await {
                Ok(s) => idle.push(s),
                Err(e) => panic!("connection {i} failed: {e}"),
            }
        }
        // All of them reach the worker (RR passes each fd), and it still answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, scrape) =
                tokio::time::timeout(Duration::from_secs(10), get_once(server.addr, "/metrics"))
                    .await
                    .expect("answers while 10,000 connections are open")
                    .unwrap();
            assert_eq!(status, 200);
            let fds = metric_sum(&scrape, "process_open_fds", &["worker=\"0\""]);
            if fds >= 10_000.0 {
                break;
            }
            assert!(Instant::now() < deadline, "worker holds only {fds} fds");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, _, body) =
            tokio::time::timeout(Duration::from_secs(10), get_once(server.addr, "/hello"))
                .await
                .expect("/hello answers")
                .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "Hello, World!\n");
        drop(idle);
    });
}

#[test]
fn a_real_scrape_passes_promtool_and_has_every_metric_of_the_design() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "thread-pool"),
        ("LOOPSCALE_PROCESSES", "2"),
        ("LOOPSCALE_REQUEST_OVERHEAD_US", "100"),
    ]);
    let scrape = runtime().block_on(async {
        for path in [
            "/hello",
            "/cpu?ms=2",
            "/cpu-inline?ms=1",
            "/cpu?ms=x",
            "/nope",
        ] {
            get_once(server.addr, path).await.unwrap();
        }
        let (status, headers, scrape) = get_once(server.addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(headers[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        scrape
    });
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
            scrape.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{name} must have exactly one TYPE line"
        );
    }
    assert!(
        metric_sum(
            &scrape,
            "loopscale_gil_wait_seconds_count",
            &["thread=\"loop\""]
        ) >= 3.0
    );
    assert_eq!(
        metric_sum(&scrape, "loopscale_http_requests_total", &["code=\"400\""]),
        1.0
    );
    assert_eq!(
        metric_sum(&scrape, "loopscale_http_requests_total", &["code=\"404\""]),
        1.0
    );

    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
