//! The emulated GIL alone, in the same experiment as `workload/reference/gil_micro.py` runs on
//! real CPython: N threads burn 10 ms jobs back to back, as pool threads running `def` routes,
//! while one thread plays the event loop — it blocks with the GIL released for `gap` (waiting for
//! the next request), then runs a request's Python part (250 µs in three callbacks). Prints the
//! percentiles of how much later than `gap` that request finished, and the pool's jobs/s, so the
//! model's hand-off rules can be compared with CPython's without HTTP in between.
//!
//! With `--event-loop` the same runs inside a tokio `current_thread` runtime, as the emulated
//! server has it: the pool jobs go through `spawn_blocking` (each completion comes back to the
//! loop, which submits the next) and the request is a task awaiting a timer of `gap`.
//!
//!   cargo run --release -p loopscale-workload --example gil_micro -- [--event-loop] <threads> <gap-ms> [seconds]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopscale_workload::serve::gil::{Gil, GilThread};

const POOL_JOB: Duration = Duration::from_millis(10);
const REQUEST_CPU: Duration = Duration::from_micros(250);

struct Run {
    late_ms: Vec<f64>,
    jobs: u64,
    elapsed: Duration,
}

fn on_threads(gil: Arc<Gil>, threads: usize, gap: Duration, secs: f64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let jobs = Arc::new(AtomicU64::new(0));
    let pool: Vec<_> = (0..threads)
        .map(|_| {
            let (gil, stop, jobs) = (gil.clone(), stop.clone(), jobs.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    gil.run_cpu(GilThread::Pool, POOL_JOB);
                    jobs.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut late_ms = Vec::new();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t0 = Instant::now();
        std::thread::sleep(gap);
        gil.run_on_loop_per_request(REQUEST_CPU);
        late_ms.push(t0.elapsed().saturating_sub(gap).as_secs_f64() * 1000.0);
    }
    stop.store(true, Ordering::Relaxed);
    for t in pool {
        let _ = t.join();
    }
    Run {
        late_ms,
        jobs: jobs.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

fn on_event_loop(gil: Arc<Gil>, threads: usize, gap: Duration, secs: f64) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(threads.max(1))
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(secs);
        let jobs = Arc::new(AtomicU64::new(0));
        let submitters: Vec<_> = (0..threads)
            .map(|_| {
                let (gil, jobs) = (gil.clone(), jobs.clone());
                tokio::spawn(async move {
                    while Instant::now() < end {
                        let gil = gil.clone();
                        let job = move || gil.run_cpu(GilThread::Pool, POOL_JOB);
                        if tokio::task::spawn_blocking(job).await.is_err() {
                            return;
                        }
                        jobs.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut late_ms = Vec::new();
        while Instant::now() < end {
            let t0 = Instant::now();
            tokio::time::sleep(gap).await;
            gil.run_on_loop_per_request(REQUEST_CPU);
            late_ms.push(t0.elapsed().saturating_sub(gap).as_secs_f64() * 1000.0);
        }
        for s in submitters {
            let _ = s.await;
        }
        Run {
            late_ms,
            jobs: jobs.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        }
    })
}

fn parse(args: &[String]) -> Option<(usize, f64, f64)> {
    let (threads, gap_ms, secs) = match args {
        [t, g] => (t.parse().ok()?, g.parse().ok()?, 3.0),
        [t, g, s] => (t.parse().ok()?, g.parse().ok()?, s.parse().ok()?),
        _ => return None,
    };
    (threads <= 64 && (0.0..=1000.0).contains(&gap_ms) && (0.1..=60.0).contains(&secs))
        .then_some((threads, gap_ms, secs))
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let event_loop = args.first().is_some_and(|a| a == "--event-loop");
    if event_loop {
        args.remove(0);
    }
    let Some((threads, gap_ms, secs)) = parse(&args) else {
        eprintln!(
            "usage: gil_micro [--event-loop] <threads 0..=64> <gap-ms 0..=1000> [seconds 0.1..=60]"
        );
        std::process::exit(2);
    };
    let gap = Duration::from_secs_f64(gap_ms / 1000.0);
    let gil = Arc::new(Gil::enabled(Duration::from_millis(5)));
    let mut run = if event_loop {
        on_event_loop(gil, threads, gap, secs)
    } else {
        on_threads(gil, threads, gap, secs)
    };
    run.late_ms.sort_by(f64::total_cmp);
    let late = &run.late_ms;
    let q = |p: f64| late[((p * late.len() as f64) as usize).min(late.len() - 1)];
    println!(
        "emulated{} threads {threads} gap {gap_ms} ms: {} requests, p50 {:.2} p90 {:.2} p99 {:.2} ms; pool {:.1} jobs/s",
        if event_loop { " tokio" } else { "" },
        late.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        run.jobs as f64 / run.elapsed.as_secs_f64()
    );
}
