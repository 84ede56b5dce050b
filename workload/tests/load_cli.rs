//! The generator's command line as a user meets it: bad input, env vars, live metrics checked
//! by promtool, the terminal-only progress line, early stop by signal, and `merge`.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loopscale_workload::report::{merge, Report};
use support::load::{read_report, run_generator, run_generator_with_env, temp_report};
use support::metrics::{promtool_check, scrape};
use support::stub_servers::{start, Behavior};
use support::{serial, wait_bounded, workload_binary, workload_command};

#[test]
fn bad_input_exits_2_and_names_the_flag() {
    let missing_dir = temp_report("no-such-dir/x/report.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--target", "not-a-url", "--rate", "10"], "--target"),
        (
            vec!["--target", "ftp://127.0.0.1:1", "--rate", "10"],
            "--target",
        ),
        (vec!["--rate", "10"], "--target"),
        (
            vec!["--target", "http://127.0.0.1:1", "--rate", "0"],
            "--rate",
        ),
        (vec!["--target", "http://127.0.0.1:1"], "--rate"),
        (
            vec!["--target", "http://127.0.0.1:1", "--rate=-5"],
            "--rate",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--duration",
                "0s",
            ],
            "--duration",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--duration",
                "10",
            ],
            "--duration",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--timeout",
                "0",
            ],
            "--timeout",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--warmup",
                "soon",
            ],
            "--warmup",
        ),
        (
            vec!["--target", "http://127.0.0.1:1", "--model", "sideways"],
            "--model",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--concurrency",
                "0",
            ],
            "--concurrency",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--path",
                "hello",
            ],
            "--path",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--metrics-addr",
                "nowhere",
            ],
            "--metrics-addr",
        ),
        (
            vec![
                "--target",
                "http://127.0.0.1:1",
                "--rate",
                "1",
                "--report",
                missing_dir.to_str().unwrap(),
            ],
            "--report",
        ),
    ];
    for (args, flag) in cases {
        let mut full = vec!["load"];
        full.extend_from_slice(&args);
        let output = run_generator(&full, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?}: message does not name {flag}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{args:?}: no report on bad input");
    }
    // The same checks apply to values from the environment.
    let output = run_generator_with_env(
        &["load"],
        &[
            ("LOOPSCALE_LOAD_TARGET", "http://127.0.0.1:1"),
            ("LOOPSCALE_LOAD_RATE", "0"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate"));
}

#[test]
fn env_vars_configure_a_run() {
    let _serial = serial();
    let a = start(Behavior::Fast);
    let b = start(Behavior::Fast);
    let path = temp_report("from-env.json");
    let targets = format!("{},{}", a.url(), b.url());
    let output = run_generator_with_env(
        &["load"],
        &[
            ("LOOPSCALE_LOAD_TARGET", &targets),
            ("LOOPSCALE_LOAD_MODEL", "closed"),
            ("LOOPSCALE_LOAD_CONCURRENCY", "3"),
            ("LOOPSCALE_LOAD_CONNECTIONS", "2"),
            ("LOOPSCALE_LOAD_WARMUP", "200ms"),
            ("LOOPSCALE_LOAD_DURATION", "500ms"),
            ("LOOPSCALE_LOAD_TIMEOUT", "2s"),
            ("LOOPSCALE_LOAD_PATH", "/hello?x=1"),
            ("LOOPSCALE_LOAD_REPORT", path.to_str().unwrap()),
            ("LOOPSCALE_LOAD_THREADS", "2"),
        ],
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{output:?}");
    let report = read_report(&path);
    let g = &report.generator;
    assert_eq!(g.targets, vec![a.url(), b.url()]);
    assert_eq!((g.concurrency, g.connections), (3, 2));
    assert_eq!((g.warmup_secs, g.duration_secs), (0.2, 0.5));
    assert_eq!(g.path, "/hello?x=1");
    assert_eq!(g.rate, None);
    assert!(report.summary.ok > 0);
    assert_eq!(report.window_secs, 0.5);
    // Without --report pointing at stdout, the summary goes to stdout.
    assert!(String::from_utf8_lossy(&output.stdout).contains("throughput"));
}

#[test]
fn live_metrics_pass_promtool_and_agree_with_the_report() {
    let _serial = serial();
    let server = start(Behavior::Fast);
    let path = temp_report("metrics.json");
    let mut child = workload_command("load")
        .args([
            "--target",
            &server.url(),
            "--rate",
            "200",
            "--warmup",
            "300ms",
            "--duration",
            "3s",
            "--metrics-addr",
            "127.0.0.1:0",
            "--report",
            path.to_str().unwrap(),
        ])
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).expect("first stderr line");
    let addr = line
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let live = scrape(addr.parse().expect("a socket address"));
    if let Err(why) = promtool_check(live.text()) {
        panic!("promtool check metrics: {why}\n{}", live.text());
    }
    for name in [
        "loopscale_load_requests_total",
        "loopscale_load_request_duration_seconds_bucket",
        "loopscale_load_in_flight",
        "loopscale_load_dropped_total",
    ] {
        assert!(
            live.text().contains(name),
            "{name} missing:\n{}",
            live.text()
        );
    }
    let ok_live = live.sum("loopscale_load_requests_total", &[("outcome", "ok")]);
    assert!(
        ok_live > 50.0,
        "requests counted while running:\n{}",
        live.text()
    );
    assert_eq!(live.sum("loopscale_load_measuring", &[]), 1.0);

    let output = wait_bounded(child, Duration::from_secs(20));
    assert!(output.status.success(), "{output:?}");
    let report = read_report(&path);
    assert!(report.summary.ok as f64 >= ok_live);
    let _ = stderr.read_to_string(&mut String::new());
}

#[test]
fn progress_line_only_on_a_terminal() {
    let _serial = serial();
    let server = start(Behavior::Fast);
    let args = [
        "load",
        "--target",
        &server.url(),
        "--rate",
        "100",
        "--warmup",
        "0s",
        "--duration",
        "1500ms",
    ];
    // Piped: no progress output at all, only the summary on stdout.
    let output = run_generator(&args, Duration::from_secs(20));
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("measuring") && !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "progress drawn without a terminal: {stderr:?}"
    );
    // On a pseudo-terminal (util-linux `script`): the live line shows.
    let binary = workload_binary();
    let command = std::iter::once(binary.as_str())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the generator on a pty");
    let output = wait_bounded(child, Duration::from_secs(20));
    assert!(output.status.success(), "{output:?}");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(
        screen.contains("measuring"),
        "no progress line on a terminal: {screen:?}"
    );
    assert!(
        screen.contains("throughput"),
        "summary after the line: {screen:?}"
    );
}

#[test]
fn sigterm_ends_the_window_early_and_still_reports() {
    let _serial = serial();
    let server = start(Behavior::Fast);
    let path = temp_report("stopped.json");
    let child = workload_command("load")
        .args([
            "--target",
            &server.url(),
            "--rate",
            "100",
            "--warmup",
            "0s",
            "--duration",
            "60s",
            "--report",
            path.to_str().unwrap(),
        ])
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal the generator");
    let output = wait_bounded(child, Duration::from_secs(15));
    assert!(output.status.success(), "{output:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    let report = read_report(&path);
    assert!(
        (1.0..5.0).contains(&report.window_secs),
        "window ends at the signal: {}",
        report.window_secs
    );
    let expected = report.window_secs * 100.0;
    let started = (report.summary.requests + report.summary.dropped) as f64;
    assert!((started - expected).abs() <= 3.0, "{started} vs {expected}");
    assert!(
        (report.summary.throughput_rps - 100.0).abs() < 5.0,
        "{:?}",
        report.summary
    );
}

#[test]
fn merge_command_merges_real_reports_exactly() {
    let _serial = serial();
    let server = start(Behavior::Delay(Duration::from_millis(5)));
    let mut paths = Vec::new();
    for (i, rate) in ["150", "50"].into_iter().enumerate() {
        let path = temp_report(&format!("merge-{i}.json"));
        let output = run_generator(
            &[
                "load",
                "--target",
                &server.url(),
                "--rate",
                rate,
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
        paths.push(path);
    }
    let reports: Vec<Report> = paths.iter().map(|p| read_report(p)).collect();
    let expected = merge(&reports).unwrap();

    let path_args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["merge", "--json"];
    args.extend(&path_args);
    let output = run_generator(&args, Duration::from_secs(10));
    assert!(output.status.success(), "{output:?}");
    let merged = Report::from_json(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(merged, expected);
    assert_eq!(
        merged.summary.requests,
        reports[0].summary.requests + reports[1].summary.requests
    );
    assert_eq!(merged.histogram().unwrap().len(), merged.summary.ok);
    assert_eq!(merged.generators, 2);

    let mut args = vec!["merge"];
    args.extend(&path_args);
    let output = run_generator(&args, Duration::from_secs(10));
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("generators 2"), "{text}");
    assert!(
        text.contains(&format!("requests     {}", merged.summary.requests)),
        "{text}"
    );

    // Not a report: exit 1 naming the file.
    let bogus = temp_report("bogus.json");
    std::fs::write(&bogus, "{\"version\": 99}").unwrap();
    let output = run_generator(
        &["merge", path_args[0], bogus.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bogus.json") && stderr.contains("version 99"),
        "{stderr}"
    );
}
