//! Timing accuracy of the real generator binary against loopback test servers: a fixed delay
//! is reported as such, a stall shows up in the open model's percentiles (coordinated
//! omission), and the open model holds its rate. Serialized: they measure time.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::load::{assert_all_ok, read_report, run_generator, temp_report, Load};
use support::serial;
use support::stub_servers::{start, Behavior, TestServer};

fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "exit {:?}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Plain blocking clients sending to the server while the generator runs: the latency this
/// machine delivers for that server at that moment (loopback transit and thread wake-ups on top
/// of the delay), without any generator machinery. `open`: four threads, each with its own
/// connection, sending at fixed intended times (together 100 req/s, like the open-model run) and
/// measuring from them, so a late wake-up counts as it does for the generator; otherwise one
/// thread sending each request when the previous one ends.
struct ReferenceClient {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Duration>>>,
}

impl ReferenceClient {
    fn start(addr: std::net::SocketAddr, open: bool) -> ReferenceClient {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now() + Duration::from_millis(5);
        let clients: u32 = if open { 4 } else { 1 };
        let threads = (0..clients)
            .map(|k| {
                let flag = stop.clone();
                std::thread::spawn(move || {
                    let mut stream = std::net::TcpStream::connect(addr).expect("reference connect");
                    stream.set_nodelay(true).unwrap();
                    let mut latencies = Vec::new();
                    let mut buffer = [0u8; 1024];
                    let mut i = 0u32;
                    while !flag.load(Ordering::Relaxed) {
                        let origin = if open {
                            // Thread k sends at 10 ms × (4i + k): every 40 ms, interleaved.
                            let intended = start + Duration::from_millis(10) * (4 * i + k);
                            i += 1;
                            let now = Instant::now();
                            if intended > now {
                                std::thread::sleep(intended - now);
                            }
                            intended
                        } else {
                            Instant::now()
                        };
                        stream
                            .write_all(b"GET / HTTP/1.1\r\nhost: reference\r\n\r\n")
                            .unwrap();
                        // The whole response (40 bytes) arrives in one segment on loopback.
                        let n = stream.read(&mut buffer).unwrap();
                        assert!(n > 0 && buffer[..n].ends_with(b"ok"), "reference response");
                        latencies.push(origin.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        ReferenceClient { stop, threads }
    }

    /// Stops and returns the median latency in milliseconds.
    fn p50_ms(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies: Vec<Duration> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("reference client"))
            .collect();
        latencies.sort();
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0
    }
}

/// One run against the 20 ms server; Ok when its p50 is within 2 % of the delay, or the reason
/// it is not.
fn delay_attempt(server: &TestServer, model: &str, attempt: u32) -> Result<(), String> {
    let path = temp_report(&format!("delay-{model}-{attempt}.json"));
    let reference = ReferenceClient::start(server.addr, model == "open");
    let output = run_generator(
        &[
            "load",
            "--target",
            &server.url(),
            "--model",
            model,
            "--rate",
            "100",
            // Closed: 4 loops. Open: room for bursts, so nothing is dropped.
            "--concurrency",
            if model == "closed" { "4" } else { "100" },
            "--connections",
            "4",
            "--warmup",
            "300ms",
            "--duration",
            "1s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let reference_p50 = reference.p50_ms();
    assert_success(&output);
    let s = read_report(&path).summary;
    // Structural checks hold on every attempt, however noisy the machine.
    assert_eq!(s.errors.total(), 0, "{model}: {s:?}");
    let p50 = s.latency_ms.p50;
    assert!(p50 >= 19.9, "{model}: faster than the delay: {s:?}");
    match model {
        // 4 loops × 1 s / 20 ms = 200 at most.
        "closed" => assert!((100..=205).contains(&s.ok), "closed: {s:?}"),
        // 100 req/s × 1 s, all started.
        _ => assert_eq!((s.requests, s.dropped), (100, 0), "open: {s:?}"),
    }
    let tolerance = 0.02 * 20.0;
    let within_delay = (p50 - 20.0).abs() <= tolerance;
    // When other work on the machine delays every wake-up, even the bare clients see more than
    // 2 % over the delay; then the generator must add no more than 2 % of the delay to what
    // they see at the same time (and the machine must not be absurdly slow).
    let within_reference = p50 - reference_p50 <= tolerance && p50 <= 22.0;
    if within_delay || within_reference {
        Ok(())
    } else {
        Err(format!(
            "{model}: p50 {p50} ms, bare {model} client p50 {reference_p50:.3} ms: {s:?}"
        ))
    }
}

/// The reported p50 is within 2 % of a fixed 20 ms server delay, in both models. Scheduling
/// noise on a shared machine only ever adds latency (and in the open model a stalled generator
/// is, rightly, latency too), so each model gets up to eight short attempts and one must pass; a generator that mismeasures (a millisecond timer, time taken at the wrong
/// point) is off in every attempt.
#[test]
fn p50_matches_a_fixed_20ms_delay_in_both_models() {
    let _serial = serial();
    let server = start(Behavior::Delay(Duration::from_millis(20)));
    for model in ["closed", "open"] {
        let mut failures = Vec::new();
        for attempt in 1..=8 {
            match delay_attempt(&server, model, attempt) {
                Ok(()) => break,
                Err(why) => failures.push(why),
            }
        }
        assert!(
            failures.len() < 8,
            "p50 not within 2% of 20 ms in 8 attempts:\n{}",
            failures.join("\n")
        );
        if !failures.is_empty() {
            eprintln!("{model}: passed after noisy attempts: {failures:?}");
        }
    }
}

#[test]
fn a_stall_shows_in_open_model_percentiles() {
    let _serial = serial();
    // At 200 req/s the 400th request arrives about 2 s in; the server then stalls for 500 ms.
    let server = start(Behavior::StallOnce {
        after: 400,
        stall: Duration::from_millis(500),
    });
    let path = temp_report("stall.json");
    let output = run_generator(
        &[
            "load",
            "--target",
            &server.url(),
            "--model",
            "open",
            "--rate",
            "200",
            // Two connections: a generator that measured from the actual send (not the intended
            // start) would see only the two requests caught on them as slow, well under 1 %.
            "--connections",
            "2",
            "--concurrency",
            "1000",
            "--warmup",
            "0s",
            "--duration",
            "5s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_success(&output);
    let report = read_report(&path);
    let s = &report.summary;
    assert_eq!(s.requests, 1000, "{s:?}");
    assert_eq!((s.errors.total(), s.dropped), (0, 0), "{s:?}");
    assert!(
        s.latency_ms.p99 >= 400.0,
        "p99 {} ms hides the 500 ms stall: {s:?}",
        s.latency_ms.p99
    );
    assert!(
        s.latency_ms.max >= 450.0 && s.latency_ms.max < 1500.0,
        "max {} ms: {s:?}",
        s.latency_ms.max
    );
    assert!(
        s.latency_ms.p50 < 50.0,
        "only the stall is slow, p50 {} ms: {s:?}",
        s.latency_ms.p50
    );
}

#[test]
fn open_model_holds_500_per_second() {
    let _serial = serial();
    let server = start(Behavior::Fast);
    let path = temp_report("rate.json");
    let output = run_generator(
        &[
            "load",
            "--target",
            &server.url(),
            "--rate",
            "500",
            "--connections",
            "16",
            "--warmup",
            "0s",
            "--duration",
            "5s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_success(&output);
    let report = read_report(&path);
    let s = &report.summary;
    assert_eq!((s.errors.total(), s.dropped), (0, 0), "{s:?}");
    assert!(
        (s.throughput_rps - 500.0).abs() <= 0.02 * 500.0,
        "reported {} req/s: {s:?}",
        s.throughput_rps
    );
    // What the server saw: arrivals spread over the 5 s at 500 req/s, not bunched.
    let arrivals = server.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len() as u64, s.requests);
    let first = arrivals[0];
    let span = arrivals.last().unwrap().duration_since(first).as_secs_f64();
    let achieved = (arrivals.len() - 1) as f64 / span;
    assert!(
        (achieved - 500.0).abs() <= 0.02 * 500.0,
        "server saw {achieved:.1} req/s over {span:.3} s"
    );
    let mut per_second = [0u32; 5];
    for arrival in &arrivals {
        let second = (arrival.duration_since(first).as_secs() as usize).min(4);
        per_second[second] += 1;
    }
    for count in per_second {
        assert!(
            (375..=625).contains(&count),
            "uneven seconds at the server: {per_second:?}"
        );
    }
}

/// The closed model counts latency from the request's first byte written: with four loops on
/// one connection, each request waits for the three before it (~60 ms), and that wait is the
/// generator's own queue, not the server's latency (wrk has no such case; see "Models" in
/// `workload/LOAD.md`). Measured from when the loop decided to send, p50 would be ~80 ms.
#[test]
fn closed_model_latency_excludes_the_wait_for_a_connection() {
    let _serial = serial();
    let server = start(Behavior::Delay(Duration::from_millis(20)));
    let report = Load::closed(&server.url(), "/", 4)
        .connections(1)
        .duration(Duration::from_secs(1))
        .run();
    assert_all_ok(&report);
    let s = &report.summary;
    assert!(
        s.requests <= 55,
        "one connection at 20 ms per request carries at most ~50 per second: {s:?}"
    );
    assert!(
        s.latency_ms.p50 >= 19.5 && s.latency_ms.p50 < 30.0,
        "p50 {} ms: the server's 20 ms, without the wait for the connection: {s:?}",
        s.latency_ms.p50
    );
}
