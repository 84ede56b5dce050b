//! Connections over several targets, re-opening closed connections, and dead targets.

mod support;

use std::time::Duration;

use support::load::{read_report, run_generator, temp_report, Load};
use support::stub_servers::{start, Behavior};
use support::{free_port, serial};

/// Two targets and 50 connections: each target gets 30–70 % of the requests. The servers close
/// a connection after every 25th response, so the generator must re-open connections (each to a
/// new random pick) without turning those closes into errors.
#[test]
fn two_targets_share_fifty_connections() {
    let _serial = serial();
    let a = start(Behavior::CloseEvery(25));
    let b = start(Behavior::CloseEvery(25));
    let path = temp_report("two-targets.json");
    let targets = format!("{},{}", a.url(), b.url());
    let output = run_generator(
        &[
            "load",
            "--target",
            &targets,
            "--model",
            "closed",
            "--concurrency",
            "50",
            "--connections",
            "50",
            "--warmup",
            "0s",
            "--duration",
            "2s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert!(output.status.success(), "{output:?}");
    let report = read_report(&path);
    let s = &report.summary;
    assert_eq!(
        s.errors.total(),
        0,
        "re-opening after a close is not an error: {s:?}"
    );
    assert!(s.ok >= 500, "enough requests to judge the spread: {s:?}");
    let (to_a, to_b) = (a.request_count(), b.request_count());
    assert_eq!(to_a + to_b, s.requests, "every request reached a target");
    let share_a = to_a as f64 / (to_a + to_b) as f64;
    assert!(
        (0.3..=0.7).contains(&share_a),
        "target a got {to_a}, target b {to_b}"
    );
    assert_eq!(
        report.generator.targets,
        vec![a.url(), b.url()],
        "the report names both targets"
    );
}

/// `--disable-keepalive`: every request comes on a connection of its own, closed cleanly (no
/// errors), and the report says so. The same run with keep-alive uses its 4 connections.
#[test]
fn disable_keepalive_opens_a_connection_per_request() {
    let _serial = serial();
    let run = |keep_alive: bool| {
        let server = start(Behavior::Fast);
        let load = Load::closed(&server.url(), "/", 4).duration(Duration::from_secs(1));
        let load = if keep_alive {
            load
        } else {
            load.new_connection_per_request()
        };
        (load.run(), server)
    };
    let (report, server) = run(false);
    let s = &report.summary;
    assert_eq!(
        s.errors.total(),
        0,
        "a closed connection is not an error: {s:?}"
    );
    assert!(s.ok >= 100, "enough requests to judge: {s:?}");
    let (requests, connections) = (server.request_count(), server.connection_count());
    // A connection opened as the run stopped may carry no request: at most one per loop.
    assert!(
        (requests..=requests + 4).contains(&connections),
        "{requests} requests on {connections} connections"
    );
    assert!(!report.generator.keep_alive);

    let (report, server) = run(true);
    assert!(report.generator.keep_alive);
    assert!(report.summary.ok >= 100);
    assert_eq!(
        server.connection_count(),
        4,
        "4 loops, 4 kept-alive connections"
    );
}

/// Nothing listening: every attempt is a connect error, the run completes with exit 0 and the
/// report is written.
#[test]
fn unreachable_target_is_counted_and_reported() {
    let _serial = serial();
    let url = format!("http://127.0.0.1:{}", free_port());
    let path = temp_report("unreachable.json");
    let output = run_generator(
        &[
            "load",
            "--target",
            &url,
            "--rate",
            "50",
            "--warmup",
            "0s",
            "--duration",
            "1s",
            "--timeout",
            "1s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{output:?}");
    let report = read_report(&path);
    let s = &report.summary;
    assert_eq!(s.requests, 50, "{s:?}");
    assert_eq!(s.errors.connect, 50, "{s:?}");
    assert_eq!(s.ok, 0);
    assert_eq!(report.error_ratio(), 1.0);
    assert_eq!(s.latency_ms.p50, 0.0, "no response, no latency");
    let errors_in_timeline: u64 = report.timeline.iter().map(|t| t.errors).sum();
    assert_eq!(errors_in_timeline, 50);
}

/// The closed model against nothing: its loops fail as fast as the kernel refuses, yet the run
/// ends on time with every attempt counted.
#[test]
fn closed_loops_against_a_dead_target_end_on_time() {
    let _serial = serial();
    let url = format!("http://127.0.0.1:{}", free_port());
    let path = temp_report("closed-unreachable.json");
    let started = std::time::Instant::now();
    let output = run_generator(
        &[
            "load",
            "--target",
            &url,
            "--model",
            "closed",
            "--concurrency",
            "4",
            "--warmup",
            "0s",
            "--duration",
            "1s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let s = read_report(&path).summary;
    assert!(s.errors.connect > 0, "{s:?}");
    assert_eq!(s.errors.total(), s.requests, "{s:?}");
}

/// A live target and a dead one: the dead one's connections fail and are retried on new random
/// picks, the live one serves the rest, and both show in the report.
#[test]
fn a_dead_target_among_live_ones_costs_only_connect_errors() {
    let _serial = serial();
    let live = start(Behavior::Fast);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let path = temp_report("half-dead.json");
    let targets = format!("{},{dead}", live.url());
    let output = run_generator(
        &[
            "load",
            "--target",
            &targets,
            "--rate",
            "200",
            // Each of the 32 slots picks the dead target with probability 1/2 at least once
            // before settling on the live one: no connect error at all has odds of 2^-32.
            "--connections",
            "32",
            "--warmup",
            "0s",
            "--duration",
            "2s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{output:?}");
    let s = read_report(&path).summary;
    assert_eq!(s.requests + s.dropped, 400, "{s:?}");
    assert!(s.errors.connect > 0, "{s:?}");
    assert_eq!(s.errors.total(), s.errors.connect, "{s:?}");
    assert!(s.ok > 0 && s.ok == live.request_count(), "{s:?}");
}

/// A target that dies mid-run (a server that stops answering by closing every connection):
/// requests fail as errors and the report is still written.
#[test]
fn requests_after_a_target_dies_are_errors() {
    let _serial = serial();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // A server that accepts for 1 s, then closes its listener and every connection.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind the port");
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        listener.set_nonblocking(true).unwrap();
        let mut connections = Vec::new();
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let mut reader = stream.try_clone().unwrap();
                    connections.push(stream);
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buffer = [0u8; 4096];
                        while let Ok(n) = reader.read(&mut buffer) {
                            if n == 0
                                || reader
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        for connection in connections {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        // The listener drops here: new connections are refused.
    });
    let path = temp_report("dying.json");
    let output = run_generator(
        &[
            "load",
            "--target",
            &url,
            "--rate",
            "100",
            "--connections",
            "4",
            "--warmup",
            "0s",
            "--duration",
            "2s",
            "--timeout",
            "1s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{output:?}");
    let s = read_report(&path).summary;
    assert_eq!(s.requests + s.dropped, 200, "{s:?}");
    assert!(
        s.ok >= 50 && s.ok <= 150,
        "about the first second succeeds: {s:?}"
    );
    assert!(s.errors.total() >= 50, "the rest fail: {s:?}");
}

/// A server that never answers: every request is a timeout after `--timeout`, counted in the
/// window even when it ends after it.
#[test]
fn silent_server_gives_timeouts() {
    let _serial = serial();
    let server = start(Behavior::Silent);
    let path = temp_report("silent.json");
    let started = std::time::Instant::now();
    let output = run_generator(
        &[
            "load",
            "--target",
            &server.url(),
            "--rate",
            "20",
            "--concurrency",
            "100",
            "--warmup",
            "0s",
            "--duration",
            "1s",
            "--timeout",
            "300ms",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let s = read_report(&path).summary;
    assert_eq!((s.requests, s.errors.timeout), (20, 20), "{s:?}");
    assert_eq!(s.ok, 0);
}

/// Status classes: 404 counts as 4xx, 503 as 5xx, both with latency (they are responses).
#[test]
fn error_statuses_are_classified() {
    let _serial = serial();
    for (code, field) in [(404u16, "4xx"), (503, "5xx")] {
        let server = start(Behavior::Status(code));
        let path = temp_report(&format!("status-{code}.json"));
        let output = run_generator(
            &[
                "load",
                "--target",
                &server.url(),
                "--rate",
                "50",
                "--warmup",
                "0s",
                "--duration",
                "1s",
                "--report",
                path.to_str().unwrap(),
            ],
            Duration::from_secs(20),
        );
        assert!(output.status.success(), "{output:?}");
        let report = read_report(&path);
        let s = &report.summary;
        let count = if field == "4xx" {
            s.errors.status_4xx
        } else {
            s.errors.status_5xx
        };
        assert_eq!((s.requests, count, s.ok), (50, 50, 0), "{code}: {s:?}");
        assert_eq!(
            report.histogram().unwrap().len(),
            50,
            "responses have latency"
        );
        assert_eq!(s.throughput_rps, 0.0, "throughput counts ok responses only");
    }
}
