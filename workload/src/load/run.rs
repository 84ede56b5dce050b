//! Drives a run: the open model's timer thread or the closed model's loops, warm-up, the
//! measured window, the drain, and the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::args::LoadPlan;
use super::metrics::LoadMetrics;
use super::outcome::Outcome;
use super::pool::Pool;
use super::progress::{Progress, ProgressState};
use super::recorder::Recorder;
use super::schedule::OpenSchedule;
use super::timer::PreciseTimer;
use crate::report::{LoadModel, Report, ReportError};

/// Longest single sleep of the open model's timer, so a stop request is noticed quickly even at
/// low rates.
const MAX_TIMER_SLEEP: Duration = Duration::from_millis(50);

/// State shared by the timer thread, the request tasks and the progress task.
struct Shared {
    pool: Pool,
    recorder: Mutex<Recorder>,
    metrics: Arc<LoadMetrics>,
    in_flight: AtomicU64,
    concurrency: u64,
    start: Instant,
    window_start: Instant,
    window_end: Instant,
    stop: AtomicBool,
    stopped_at: OnceLock<Instant>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A request is about to start.
    fn begin(&self, measured: bool) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.metrics.in_flight.inc();
        if measured {
            self.recorder.lock().expect("recorder lock").start();
        }
    }

    /// A request ended: record it if it belongs to the window.
    fn end(&self, outcome: Outcome, measured: bool, latency_from: Instant) {
        let now = Instant::now();
        if measured {
            let latency = now.saturating_duration_since(latency_from);
            let at = now.saturating_duration_since(self.window_start);
            let counted = self
                .recorder
                .lock()
                .expect("recorder lock")
                .finish(outcome, latency, at);
            if counted {
                self.metrics.observe(outcome, latency);
            }
        }
        self.metrics.in_flight.dec();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn request_stop(&self) {
        let _ = self.stopped_at.set(Instant::now());
        self.stop.store(true, Ordering::Relaxed);
    }

    /// End of the measured window: as planned, or earlier when stopped by a signal.
    fn effective_window_end(&self) -> Instant {
        match self.stopped_at.get() {
            Some(&at) => at.clamp(self.window_start, self.window_end),
            None => self.window_end,
        }
    }
}

/// Runs the plan and returns its report. `progress` draws the live line (or nothing).
pub async fn run(
    plan: &LoadPlan,
    metrics: Arc<LoadMetrics>,
    progress: Progress,
) -> Result<Report, ReportError> {
    let start = Instant::now();
    let window_start = start + plan.warmup;
    let window_end = window_start + plan.duration;
    let shared = Arc::new(Shared {
        pool: Pool::new(
            plan.targets.clone(),
            plan.path.clone(),
            plan.connections as usize,
            plan.timeout,
            metrics.clone(),
        ),
        recorder: Mutex::new(Recorder::new()),
        metrics,
        in_flight: AtomicU64::new(0),
        concurrency: plan.concurrency,
        start,
        window_start,
        window_end,
        stop: AtomicBool::new(false),
        stopped_at: OnceLock::new(),
    });

    let signals = tokio::spawn(stop_on_signal(shared.clone()));
    let phase = tokio::spawn(mark_window(shared.clone()));
    let progress = Arc::new(progress);
    let ticker = progress
        .is_visible()
        .then(|| tokio::spawn(tick_progress(shared.clone(), progress.clone())));

    let loops = match plan.model {
        LoadModel::Open => {
            let rate = plan.rate.expect("the plan has a rate in the open model");
            let schedule = OpenSchedule::new(rate, plan.warmup, plan.duration);
            if let Err(e) = run_open(schedule, shared.clone()).await {
                // Without a timer the run cannot go on; report what was measured so far.
                tracing::error!("open-model timer failed: {e}");
                shared.request_stop();
            }
            Vec::new()
        }
        LoadModel::Closed => {
            let loops: Vec<_> = (0..plan.concurrency)
                .map(|_| tokio::spawn(closed_loop(shared.clone())))
                .collect();
            let deadline = tokio::time::Instant::from_std(window_end);
            while tokio::time::Instant::now() < deadline && !shared.stopped() {
                tokio::time::sleep_until(
                    deadline.min(tokio::time::Instant::now() + MAX_TIMER_SLEEP),
                )
                .await;
            }
            loops
        }
    };

    // Drain: requests that started in the window get up to `--timeout` more to finish.
    let drain_deadline = Instant::now() + plan.timeout;
    while shared.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let window_end = shared.effective_window_end();
    let unfinished = shared
        .recorder
        .lock()
        .expect("recorder lock")
        .close(Instant::now().saturating_duration_since(window_start));
    shared.metrics.observe_unfinished(unfinished);
    for task in loops {
        task.abort();
    }
    signals.abort();
    phase.abort();
    shared.metrics.measuring.set(0);
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    progress.finish();

    let window_secs = window_end
        .saturating_duration_since(window_start)
        .as_secs_f64();
    let report = shared
        .recorder
        .lock()
        .expect("recorder lock")
        .report(plan.generator_info(), window_secs);
    report
}

/// The open model's timer: a task on the runtime that sleeps on a timerfd until each intended
/// start (nanosecond resolution, see [`PreciseTimer`]) and then spawns the request, or counts it
/// as dropped at the in-flight limit. When late it sends everything already due at once.
async fn run_open(schedule: OpenSchedule, shared: Arc<Shared>) -> std::io::Result<()> {
    let timer = PreciseTimer::new()?;
    let total = schedule.total();
    let mut i = 0;
    let mut sent_without_yield = 0u32;
    while i < total && !shared.stopped() {
        let intended = shared.start + schedule.offset(i);
        let now = Instant::now();
        if intended > now {
            if sent_without_yield > 0 {
                // Let the requests just spawned write first; arming the timer can wait.
                sent_without_yield = 0;
                tokio::task::yield_now().await;
                continue;
            }
            timer
                .sleep_until(intended.min(now + MAX_TIMER_SLEEP))
                .await?;
            continue;
        }
        let measured = schedule.is_measured(i);
        if shared.in_flight.load(Ordering::Acquire) >= shared.concurrency {
            if measured {
                let at = intended.saturating_duration_since(shared.window_start);
                if shared
                    .recorder
                    .lock()
                    .expect("recorder lock")
                    .drop_request(at)
                {
                    shared.metrics.dropped.inc();
                }
            }
        } else {
            shared.begin(measured);
            let task_shared = shared.clone();
            tokio::spawn(async move {
                let outcome = task_shared.pool.request().await;
                // Latency from the intended start: time spent late or queued counts.
                task_shared.end(outcome, measured, intended);
            });
        }
        i += 1;
        // A long catch-up burst must not starve the responses of requests already sent.
        sent_without_yield += 1;
        if sent_without_yield >= 256 {
            sent_without_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// One closed-model loop: the next request starts when the previous one ends.
async fn closed_loop(shared: Arc<Shared>) {
    loop {
        let started = Instant::now();
        if started >= shared.window_end || shared.stopped() {
            return;
        }
        let measured = started >= shared.window_start;
        shared.begin(measured);
        let outcome = shared.pool.request().await;
        shared.end(outcome, measured, started);
        if !outcome.has_response() {
            // A failure can complete without ever waiting on I/O (a refused connect on
            // loopback); yield so a loop hammering a dead target cannot starve the runtime.
            tokio::task::yield_now().await;
        }
    }
}

/// Sets the `measuring` gauge for the window.
async fn mark_window(shared: Arc<Shared>) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(shared.window_start)).await;
    shared.metrics.measuring.set(1);
    tokio::time::sleep_until(tokio::time::Instant::from_std(shared.window_end)).await;
    shared.metrics.measuring.set(0);
}

/// SIGINT or SIGTERM ends the window early; the report covers what was measured.
async fn stop_on_signal(shared: Arc<Shared>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shared.request_stop();
}

async fn tick_progress(shared: Arc<Shared>, progress: Arc<Progress>) {
    let total = shared.window_end - shared.start;
    loop {
        let now = Instant::now();
        let phase = if now < shared.window_start {
            "warm-up"
        } else if now < shared.window_end {
            "measuring"
        } else {
            "draining"
        };
        let window_elapsed = now
            .min(shared.window_end)
            .saturating_duration_since(shared.window_start);
        let summary = shared
            .recorder
            .lock()
            .expect("recorder lock")
            .summary(window_elapsed.as_secs_f64());
        progress.update(&ProgressState {
            phase,
            elapsed: now - shared.start,
            total,
            summary,
            window_elapsed,
            in_flight: shared.in_flight.load(Ordering::Relaxed),
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
