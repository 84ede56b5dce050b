//! Drives a run: the open model's timer or the closed model's loops, the connection workers,
//! warm-up, the measured window, the drain, and the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::args::LoadPlan;
use super::connection::{ConnectionSlot, Exchange, RequestTemplate};
use super::jobs::{closed_loop_next, latency, Job, JobQueue};
use super::metrics::LoadMetrics;
use super::progress::{Progress, ProgressState};
use super::recorder::Recorder;
use super::schedule::OpenSchedule;
use super::timer::PreciseTimer;
use crate::report::{LoadModel, Report, ReportError};

/// Longest single sleep of the open model's timer, so a stop request is noticed quickly even at
/// low rates.
const MAX_TIMER_SLEEP: Duration = Duration::from_millis(50);

/// State shared by the timer, the workers and the progress task.
struct Shared {
    queue: JobQueue,
    recorder: Mutex<Recorder>,
    metrics: Arc<LoadMetrics>,
    in_flight: AtomicU64,
    concurrency: u64,
    model: LoadModel,
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

    /// A request is due (it counts as in flight until it ends, waiting for a connection
    /// included).
    fn begin(&self, job: Job) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.metrics.in_flight.inc();
        if job.measured {
            self.recorder.lock().expect("recorder lock").start();
        }
    }

    /// A request ended: record it if it belongs to the window. Returns the time it ended: when
    /// its response's last byte was read, if known (saves reading the clock again).
    fn end(&self, exchange: Exchange, job: Job) -> Instant {
        let now = exchange
            .wire
            .and_then(|wire| wire.read)
            .unwrap_or_else(Instant::now);
        let outcome = exchange.outcome;
        if job.measured {
            let latency = latency(self.model, job.from, exchange.wire, now);
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
        now
    }

    /// The closed model: the next request of the loop whose request ended `now`, begun.
    fn closed_next(&self, now: Instant) -> Option<Job> {
        if self.stopped() {
            return None;
        }
        let job = closed_loop_next(now, self.window_start, self.window_end)?;
        self.begin(job);
        Some(job)
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
    let template = Arc::new(RequestTemplate::new(
        plan.targets.clone(),
        plan.path.clone(),
        plan.keep_alive,
    ));
    let shared = Arc::new(Shared {
        queue: JobQueue::new(),
        recorder: Mutex::new(Recorder::new()),
        metrics,
        in_flight: AtomicU64::new(0),
        concurrency: plan.concurrency,
        model: plan.model,
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

    if plan.model == LoadModel::Closed {
        // Every loop's first request is due at once.
        for _ in 0..plan.concurrency {
            if let Some(job) = shared.closed_next(start) {
                shared.queue.push(job);
            }
        }
    }
    let workers: Vec<_> = (0..plan.connections)
        .map(|_| {
            let slot = ConnectionSlot::new(template.clone(), shared.metrics.clone(), plan.timeout);
            tokio::spawn(work(slot, shared.clone()))
        })
        .collect();

    match plan.model {
        LoadModel::Open => {
            let rate = plan.rate.expect("the plan has a rate in the open model");
            let schedule = OpenSchedule::new(rate, plan.warmup, plan.duration);
            if let Err(e) = run_open(schedule, shared.clone()).await {
                // Without a timer the run cannot go on; report what was measured so far.
                tracing::error!("open-model timer failed: {e}");
                shared.request_stop();
            }
        }
        LoadModel::Closed => {
            let deadline = tokio::time::Instant::from_std(window_end);
            while tokio::time::Instant::now() < deadline && !shared.stopped() {
                tokio::time::sleep_until(
                    deadline.min(tokio::time::Instant::now() + MAX_TIMER_SLEEP),
                )
                .await;
            }
        }
    }

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
    for task in workers {
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

/// The open model's timer: sleeps on a timerfd until each intended start (nanosecond
/// resolution, see [`PreciseTimer`]) and then queues the request for a connection, or counts it
/// as dropped at the in-flight limit. When late it queues everything already due at once.
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
                // Let the requests just queued write first; arming the timer can wait.
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
            // Latency from the intended start: time spent late or queued counts.
            let job = Job {
                from: intended,
                measured,
            };
            shared.begin(job);
            shared.queue.push(job);
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

/// A connection worker: takes due requests from the queue and sends them on its connection. In
/// the closed model it also starts each loop's next request when one ends, and sends it itself
/// when nobody else waits (see [`super::jobs::keeps_own_job`]).
async fn work(mut slot: ConnectionSlot, shared: Arc<Shared>) {
    let mut job = shared.queue.next().await;
    loop {
        let exchange = slot.request().await;
        let ended = shared.end(exchange, job);
        if !exchange.outcome.has_response() {
            // A failure can complete without ever waiting on I/O (a refused connect on
            // loopback); yield so a worker hammering a dead target cannot starve the runtime.
            tokio::task::yield_now().await;
        }
        if shared.model == LoadModel::Closed {
            if let Some(next) = shared.closed_next(ended) {
                if shared.queue.keeps_own_job() {
                    job = next;
                    continue;
                }
                shared.queue.push(next);
            }
        }
        job = shared.queue.next().await;
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
