//! The HTML report opens in a real browser (headless Chromium, Debian's `chromium`) without
//! console errors, and the rendered page holds both charts with a line per mode and the ideal.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loopscale::crd::{Experiment, ExperimentStatus, LatencyMs, Mode, Phase, StepKey};
use loopscale::results::{apply_scaling_efficiency, failed, succeeded, Measurement};

fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let p = dir.join(candidate);
                if p.is_file() {
                    return p;
                }
            }
        }
    }
    panic!("headless Chromium is required for this test: apt-get install -y chromium (CI's .ci/run installs it)");
}

fn experiment() -> Experiment {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/quick.yaml"),
    )
    .unwrap();
    let mut e = loopscale::validation::validate_manifest(&text).unwrap();
    let mut results = Vec::new();
    for (mode, p, rps, p99) in [
        (Mode::EventLoop, 1, 98.0, 85.0),
        (Mode::ThreadPool, 1, 97.0, 90.0),
        (Mode::EventLoop, 2, 190.0, 45.0),
        (Mode::ThreadPool, 2, 185.0, 48.0),
    ] {
        let key = StepKey {
            mode,
            processes: p,
            replicas: 1,
            repetition: 1,
        };
        results.push(succeeded(
            key,
            Measurement {
                throughput_rps: rps,
                latency_ms: LatencyMs {
                    p50: p99 * 0.9,
                    p90: p99 * 0.95,
                    p99,
                    p999: p99 * 1.1,
                    max: p99 * 1.2,
                },
                requests: (rps * 5.0) as u64,
                error_ratio: 0.0,
                dropped_ratio: 0.0,
                window_seconds: 5.0,
                generators: 1,
            },
        ));
    }
    results.push(failed(
        StepKey {
            mode: Mode::EventLoop,
            processes: 2,
            replicas: 1,
            repetition: 2,
        },
        "step timed out <after 1m>",
    ));
    apply_scaling_efficiency(&mut results);
    e.status = Some(ExperimentStatus {
        phase: Phase::Succeeded,
        completed_steps: 5,
        total_steps: 5,
        results,
        ..Default::default()
    });
    e
}

/// Run Chromium headless with a hard deadline (it must never hang the test suite).
fn run_chromium(args: &[String]) -> (String, String) {
    let mut child = Command::new(chromium())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn base_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

#[test]
fn html_report_renders_in_headless_chromium_with_charts_and_no_console_errors() {
    let dir = std::env::temp_dir().join(format!("loopscale-html-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("profile")).unwrap();
    // Through the CLI, as a user would: results.json -> loopscale report --html.
    let results = dir.join("results.json");
    std::fs::write(&results, serde_json::to_vec_pretty(&experiment()).unwrap()).unwrap();
    let html = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_loopscale"))
        .arg("report")
        .arg(&results)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("event-loop") && table.contains("190.0"),
        "{table}"
    );

    let url = format!("file://{}", html.display());
    let mut args = base_args(&dir.join("profile"));
    args.extend(["--dump-dom".to_string(), url.clone()]);
    let (dom, log) = run_chromium(&args);
    for bad in [
        "Uncaught",
        "CONSOLE",
        "ERR_FILE_NOT_FOUND",
        "Failed to load resource",
    ] {
        assert!(
            !log.contains(bad),
            "console error in the report ({bad}):\n{log}"
        );
    }
    // The DOM as the browser built it: two SVG charts, a line per mode and the ideal lines.
    assert_eq!(dom.matches("<svg").count(), 2, "{dom}");
    assert!(dom.contains(r#"id="throughput""#) && dom.contains(r#"id="latency-p99""#));
    for series in [
        "event-loop",
        "thread-pool",
        "event-loop ideal",
        "thread-pool ideal",
    ] {
        assert!(
            dom.contains(&format!(r#"data-series="{series}""#)),
            "missing series {series}"
        );
    }
    assert!(
        dom.matches("<polyline").count() >= 6,
        "4 throughput lines + 2 p99 lines"
    );
    assert!(dom.contains("step timed out &lt;after 1m&gt;"));

    // A screenshot for people to look at (kept in the temp dir; the path is printed).
    let shot = dir.join("report.png");
    let mut args = base_args(&dir.join("profile"));
    args.extend([
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,1100".to_string(),
        url,
    ]);
    let _ = run_chromium(&args);
    let png = std::fs::read(&shot).expect("chromium wrote a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is not a rendered page"
    );
    eprintln!("screenshot: {}", shot.display());
}
