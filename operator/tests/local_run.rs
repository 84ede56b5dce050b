//! `loopscale run deploy/examples/quick.yaml` end to end with real `loopscale-workload serve` and
//! `load` processes: every step has a result and the numbers obey the model. Also: Ctrl-C stops
//! every child and leaves partial results.
//!
//! Needs the `loopscale-workload` binary of the same build; when cargo has not built it yet
//! (`cargo test -p loopscale`), the test builds it first.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopscale::crd::{Experiment, Implementation, Mode, Outcome, Phase};

/// The runs compete for the same 2 CPUs: never run them side by side. The first caller also
/// moves the test process (and so every process `loopscale run` starts) into its own scheduler
/// autogroup at nice -20, as the workload's data-plane tests do, so other builds on a shared
/// 2-core machine do not starve the measured servers (with autogroups, CPU is split between
/// sessions, not threads). Needs root; on a quiet machine (CI) it changes nothing.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static CLAIM: std::sync::Once = std::sync::Once::new();
    CLAIM.call_once(|| {
        if nix::unistd::setsid().is_ok() {
            let _ = std::fs::write("/proc/self/autogroup", "-20");
        }
    });
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn workload_bin() -> PathBuf {
    let loopscale = PathBuf::from(env!("CARGO_BIN_EXE_loopscale"));
    let bin = loopscale.with_file_name("loopscale-workload");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "loopscale-workload",
            "--bin",
            "loopscale-workload",
        ])
        .current_dir(repo());
        if loopscale
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "release")
        {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building loopscale-workload failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loopscale-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start `loopscale run` and collect its stderr lines as they come.
fn start_run(file: &Path, out: &Path, extra: &[&str]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopscale"))
        .arg("run")
        .arg(file)
        .arg("--out")
        .arg(out)
        .arg("--workload-bin")
        .arg(workload_bin())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("loopscale: {line}");
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loopscale run did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The exit status of a run that should be over within 5 s, and its stdout (the table).
fn finish(child: &mut Child) -> (std::process::ExitStatus, String) {
    let status = wait_with_deadline(child, Duration::from_secs(5));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    eprintln!("{stdout}");
    (status, stdout)
}

fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Processes still carrying this run's directory in their environment.
fn survivors(out: &Path) -> Vec<u32> {
    let marker = format!(
        "LOOPSCALE_RUN_DIR={}",
        out.canonicalize().unwrap().display()
    );
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                // Zombies keep their environ readable only until reaped; count live ones.
                let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                if !state.contains(") Z ") {
                    found.push(pid);
                }
            }
        }
    }
    found
}

#[test]
fn quick_example_runs_end_to_end_and_obeys_the_model() {
    let _serial = serial();
    let out = out_dir("quick");
    let (mut child, lines) = start_run(
        &repo().join("deploy/examples/quick.yaml"),
        &out,
        &["--metrics-addr", "127.0.0.1:0"],
    );

    // While it runs, the result metrics are served for Prometheus.
    let mut scraped = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        let snapshot = lines.lock().unwrap().clone();
        let addr = snapshot.iter().find_map(|l| {
            l.strip_prefix("metrics on http://")
                .and_then(|r| r.strip_suffix("/metrics"))
                .map(str::to_string)
        });
        if let (Some(addr), true) = (
            addr,
            snapshot.iter().any(|l| l.starts_with("StepSucceeded")),
        ) {
            if scraped.is_none() {
                scraped = scrape(&addr).filter(|m| m.contains("loopscale_result_throughput_rps{"));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, stdout) = finish(&mut child);
    assert!(status.success(), "loopscale run failed: {status}");
    let metrics = scraped.expect("result metrics were served while the run went on");
    assert!(metrics.contains(r#"namespace="local""#) && metrics.contains(r#"experiment="quick""#));
    assert!(metrics.contains("loopscale_experiment_phase{"));

    let experiment: Experiment =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let st = experiment.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded);
    assert!(!st.partial);
    assert_eq!(st.results.len(), 4, "every step has a result");
    for r in &st.results {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        assert!(r.throughput_rps > 0.0 && r.requests > 0, "{r:?}");
        assert!(r.error_ratio < 0.01, "{r:?}");
        assert!(r.scaling_efficiency.is_some(), "{r:?}");
    }
    let rps = |mode: Mode, processes: u32| {
        st.results
            .iter()
            .find(|r| r.key.mode == mode && r.key.processes == processes)
            .unwrap()
            .throughput_rps
    };
    // CPU-bound (10 ms per request): a second event-loop process adds a core's worth.
    let (el1, el2) = (rps(Mode::EventLoop, 1), rps(Mode::EventLoop, 2));
    assert!(
        el2 >= 1.5 * el1,
        "event-loop: 2 processes {el2:.1} req/s vs 1 process {el1:.1} req/s"
    );
    // Thread pool under the GIL at 1 process: one core at most, 1000 ms / 10 ms = 100 req/s.
    let tp1 = rps(Mode::ThreadPool, 1);
    assert!(
        tp1 <= 100.0 * 1.05,
        "thread-pool with the GIL at 1 process: {tp1:.1} req/s exceeds one core"
    );
    assert!(
        tp1 >= 30.0,
        "thread-pool at 1 process barely served: {tp1:.1} req/s"
    );

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(
        stdout.contains("efficiency") && stdout.contains("thread-pool"),
        "{stdout}"
    );
    assert!(
        survivors(&out).is_empty(),
        "child processes outlived the run"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn ctrl_c_stops_every_child_and_writes_partial_results() {
    let _serial = serial();
    let out = out_dir("interrupt");
    let (mut child, lines) = start_run(&repo().join("deploy/examples/quick.yaml"), &out, &[]);
    // Interrupt in the middle of the second step, once the first result is in.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        assert!(
            Instant::now() < deadline,
            "no step finished within 2 minutes"
        );
        let l = lines.lock().unwrap().clone();
        if l.iter().any(|l| l.starts_with("StepSucceeded"))
            && l.iter().any(|l| l.starts_with("StepMeasuring"))
            && l.iter().filter(|l| l.starts_with("StepMeasuring")).count() >= 2
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !survivors(&out).is_empty(),
        "the step's children should be running now"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    assert!(
        survivors(&out).is_empty(),
        "children survived Ctrl-C: {:?}",
        survivors(&out)
    );
    let experiment: Experiment =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let st = experiment.status.unwrap();
    assert!(st.partial, "results are marked partial");
    assert!(
        !st.results.is_empty() && st.results.len() < 4,
        "{} results",
        st.results.len()
    );
    assert!(std::fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("Partial results"));
    let _ = std::fs::remove_dir_all(&out);
}

/// Command lines of the live processes started by the run in `out`.
fn run_command_lines(out: &Path) -> Vec<String> {
    survivors(out)
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[test]
fn reference_example_runs_the_real_express_and_fastapi() {
    let _serial = serial();
    let reference = repo().join("workload/reference");
    assert!(
        reference.join("express/node_modules/express").is_dir()
            && reference.join("fastapi/.venv/bin/uvicorn").is_file(),
        "the reference servers are not installed: run workload/reference/install (make unit does)"
    );
    let out = out_dir("reference");
    let (mut child, _lines) = start_run(
        &repo().join("deploy/examples/reference.yaml"),
        &out,
        &["--reference-dir", reference.to_str().unwrap()],
    );
    // While it runs, the replicas are the real servers, started from the reference dir.
    let (mut express, mut fastapi) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        for line in run_command_lines(&out) {
            express |= line.starts_with("node ") && line.contains("reference/express/server.js");
            fastapi |= line.contains("fastapi/.venv/bin/python")
                && line.contains("reference/fastapi/server.py");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, stdout) = finish(&mut child);
    assert!(status.success(), "loopscale run failed: {status}");
    assert!(express, "no `node .../express/server.js` replica was seen");
    assert!(
        fastapi,
        "no `.venv/bin/python .../fastapi/server.py` replica was seen"
    );

    let experiment: Experiment =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let st = experiment.status.unwrap();
    assert_eq!(st.implementation, Some(Implementation::Reference));
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.results.len(), 4, "every step has a result");
    for r in &st.results {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        assert!(r.throughput_rps > 0.0 && r.requests > 0, "{r:?}");
        assert!(r.error_ratio < 0.01, "{r:?}");
        // 10 ms of CPU per request: one Express event loop, or one CPython process under the
        // GIL, serves at most ~100 req/s (a server that skipped the work would serve far more).
        if r.key.processes == 1 {
            assert!(
                r.throughput_rps <= 100.0 * 1.05,
                "{} at 1 process: {:.1} req/s exceeds one core",
                r.key.mode,
                r.throughput_rps
            );
        }
    }
    assert!(stdout.contains("real Express") && stdout.contains("real FastAPI"));
    assert!(
        survivors(&out).is_empty(),
        "reference servers outlived the run: {:?}",
        run_command_lines(&out)
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn reference_servers_that_are_not_installed_fail_their_steps_saying_how_to_install() {
    let _serial = serial();
    // The scripts are there, their packages are not (a fresh clone before the install).
    let dir = out_dir("reference-missing");
    let reference = dir.join("reference");
    for script in ["express/server.js", "fastapi/server.py"] {
        let path = reference.join(script);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }
    let out = dir.join("out");
    let (mut child, _lines) = start_run(
        &repo().join("deploy/examples/reference.yaml"),
        &out,
        &["--reference-dir", reference.to_str().unwrap()],
    );
    let status = wait_with_deadline(&mut child, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(1),
        "an experiment whose every step failed exits 1"
    );
    let experiment: Experiment =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let st = experiment.status.unwrap();
    assert_eq!(st.phase, Phase::Failed);
    assert_eq!(st.results.len(), 4, "every step was tried");
    for r in &st.results {
        assert_eq!(r.outcome, Outcome::Failed);
        let reason = r.reason.clone().unwrap_or_default();
        let server = match r.key.mode {
            Mode::EventLoop => "express",
            Mode::ThreadPool => "fastapi",
        };
        assert!(
            reason.contains(&format!("the {server} reference server is not installed"))
                && reason.contains("workload/reference/install"),
            "{reason}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
