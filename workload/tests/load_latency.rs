//! Timing accuracy of the real generator binary against loopback test servers: a fixed delay
//! is reported as such, a stall shows up in the open model's percentiles (coordinated
//! omission), and the open model holds its rate. Serialized: they measure time.

mod test_servers;

use std::time::Duration;

use test_servers::{read_report, run_generator, serial, start, temp_report, Behavior};

fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "exit {:?}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One run against the 20 ms server; returns the summary when its p50 is within 2 % of the
/// delay, or the reason it is not.
fn delay_attempt(
    url: &str,
    model: &str,
    attempt: u32,
) -> Result<loopscale_workload::report::Summary, String> {
    let path = temp_report(&format!("delay-{model}-{attempt}.json"));
    let output = run_generator(
        &[
            "load",
            "--target",
            url,
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
            "500ms",
            "--duration",
            "3s",
            "--report",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_success(&output);
    let s = read_report(&path).summary;
    // Structural checks hold on every attempt, however noisy the machine.
    assert_eq!(s.errors.total(), 0, "{model}: {s:?}");
    assert!(
        s.latency_ms.p50 >= 19.9,
        "{model}: faster than the delay: {s:?}"
    );
    match model {
        // 4 loops × 3 s / 20 ms = 600 at most.
        "closed" => assert!((300..=610).contains(&s.ok), "closed: {s:?}"),
        // 100 req/s × 3 s, all started.
        _ => assert_eq!((s.requests, s.dropped), (300, 0), "open: {s:?}"),
    }
    if (s.latency_ms.p50 - 20.0).abs() <= 0.02 * 20.0 {
        Ok(s)
    } else {
        Err(format!("{model}: p50 {} ms: {s:?}", s.latency_ms.p50))
    }
}

/// The reported p50 is within 2 % of a fixed 20 ms server delay. Scheduling noise on a shared
/// machine only ever adds latency, so each model gets up to three attempts and one must pass;
/// a generator that mismeasures is off in every attempt.
#[test]
fn p50_matches_a_fixed_20ms_delay_in_both_models() {
    let _serial = serial();
    let server = start(Behavior::Delay(Duration::from_millis(20)));
    for model in ["closed", "open"] {
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            match delay_attempt(&server.url(), model, attempt) {
                Ok(_) => break,
                Err(why) => failures.push(why),
            }
        }
        assert!(
            failures.len() < 3,
            "p50 not within 2% of 20 ms in 3 attempts:\n{}",
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
