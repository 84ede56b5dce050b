//! Prometheus metrics of a worker and of the supervisor, and the merge that turns one text
//! exposition per process into the single scrape of a pod.
//!
//! Each worker keeps its own registry with a constant `worker` label; the supervisor keeps the
//! restart counter and its own process metrics (`worker="supervisor"`). A scrape collects every
//! process's text exposition (exact: numbers are never re-parsed) and merges families by name so
//! each family has one HELP and one TYPE line, as the exposition format requires.

use std::collections::HashMap;
use std::time::Duration;

use prometheus::{
    core::Collector, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::serve::config::Mode;
use crate::serve::gil::GilThread;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
const GIL_WAIT_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The metrics one worker process updates.
pub struct WorkerMetrics {
    registry: Registry,
    /// `loopscale_http_requests_total{route,code}`.
    pub requests_total: IntCounterVec,
    /// `loopscale_http_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `loopscale_http_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `loopscale_eventloop_lag_seconds`, fed by the worker's timer-drift probe.
    pub eventloop_lag: Histogram,
    /// `loopscale_threadpool_busy_threads{pool}` of this worker's pool.
    pub pool_busy: IntGauge,
    /// `loopscale_threadpool_queue_depth{pool}` of this worker's pool.
    pub pool_queue: IntGauge,
    gil_wait: HistogramVec,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

/// Which pool a worker of this mode has: anyio's limiter or libuv's thread pool.
pub fn pool_name(mode: Mode) -> &'static str {
    match mode {
        Mode::EventLoop => "libuv",
        Mode::ThreadPool => "anyio",
    }
}

impl WorkerMetrics {
    /// Registers every worker metric with the constant label `worker=<index>`.
    pub fn new(worker: usize, mode: Mode) -> Self {
        let labels = HashMap::from([("worker".to_string(), worker.to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid const label");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");

        let requests_total = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "loopscale_http_requests_total",
                    "HTTP requests answered, by route and status code.",
                ),
                &["route", "code"],
            )
            .unwrap(),
        );
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "loopscale_http_request_duration_seconds",
                    "Time from the request's arrival in the handler stack to its response, by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )
            .unwrap(),
        );
        let in_flight = register(
            &registry,
            IntGauge::new(
                "loopscale_http_requests_in_flight",
                "Requests being handled right now.",
            )
            .unwrap(),
        );
        let eventloop_lag = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "loopscale_eventloop_lag_seconds",
                    "How late a 10 ms timer on the event loop fires (timer-drift probe, like Node's monitorEventLoopDelay).",
                )
                .buckets(LAG_BUCKETS.to_vec()),
            )
            .unwrap(),
        );
        let pool = pool_name(mode);
        let busy_vec = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "loopscale_threadpool_busy_threads",
                    "Pool threads running a job (anyio's borrowed tokens / libuv's busy threads).",
                ),
                &["pool"],
            )
            .unwrap(),
        );
        let queue_vec = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "loopscale_threadpool_queue_depth",
                    "Jobs waiting for a free pool thread.",
                ),
                &["pool"],
            )
            .unwrap(),
        );
        let gil_wait = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "loopscale_gil_wait_seconds",
                    "Time a thread waited to take the GIL, by kind of thread (loop or pool).",
                )
                .buckets(GIL_WAIT_BUCKETS.to_vec()),
                &["thread"],
            )
            .unwrap(),
        );
        if mode == Mode::ThreadPool {
            // Touch both series so they exist (at zero) before the first wait.
            gil_wait.with_label_values(&["loop"]);
            gil_wait.with_label_values(&["pool"]);
        }
        WorkerMetrics {
            pool_busy: busy_vec.with_label_values(&[pool]),
            pool_queue: queue_vec.with_label_values(&[pool]),
            registry,
            requests_total,
            request_duration,
            in_flight,
            eventloop_lag,
            gil_wait,
        }
    }

    /// Records one wait for the GIL.
    pub fn observe_gil_wait(&self, thread: GilThread, waited: Duration) {
        let label = match thread {
            GilThread::Loop => "loop",
            GilThread::Pool => "pool",
        };
        self.gil_wait
            .with_label_values(&[label])
            .observe(waited.as_secs_f64());
    }

    /// This worker's metrics in the text exposition format.
    pub fn exposition(&self) -> String {
        encode(&self.registry)
    }
}

/// The supervisor's own metrics.
pub struct SupervisorMetrics {
    registry: Registry,
    process: Registry,
    /// `loopscale_worker_restarts_total{worker}`.
    pub worker_restarts: IntCounterVec,
}

impl SupervisorMetrics {
    /// Creates the restart counter with one zero series per worker, so a rise is visible.
    pub fn new(workers: usize) -> Self {
        let registry = Registry::new();
        let worker_restarts = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "loopscale_worker_restarts_total",
                    "Worker processes the supervisor restarted after they died, by worker index.",
                ),
                &["worker"],
            )
            .unwrap(),
        );
        for w in 0..workers {
            worker_restarts.with_label_values(&[&w.to_string()]);
        }
        let labels = HashMap::from([("worker".to_string(), "supervisor".to_string())]);
        let process = Registry::new_custom(None, Some(labels)).expect("valid const label");
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        SupervisorMetrics {
            registry,
            process,
            worker_restarts,
        }
    }

    /// The supervisor's metrics in the text exposition format.
    pub fn exposition(&self) -> String {
        merge_expositions([encode(&self.registry), encode(&self.process)].iter())
    }
}

fn encode(registry: &Registry) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// Merges text expositions of several processes into one: families with the same name are
/// joined under one HELP and TYPE line (the first seen), in order of first appearance. Exact,
/// since sample lines are copied, never re-parsed.
pub fn merge_expositions<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> String {
    #[derive(Default)]
    struct Family {
        help: Option<String>,
        kind: Option<String>,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.as_ref().lines() {
            let (header, rest) = if let Some(rest) = line.strip_prefix("# HELP ") {
                (Some(true), rest)
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                (Some(false), rest)
            } else {
                (None, line)
            };
            if line.trim().is_empty() || (header.is_none() && line.starts_with('#')) {
                continue;
            }
            let name = match header {
                Some(_) => rest.split(' ').next().unwrap_or_default().to_string(),
                None => current.clone().unwrap_or_else(|| {
                    line.split(['{', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                }),
            };
            let family = families.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Family::default()
            });
            match header {
                Some(true) => {
                    family.help.get_or_insert_with(|| line.to_string());
                }
                Some(false) => {
                    family.kind.get_or_insert_with(|| line.to_string());
                }
                None => family.samples.push(line.to_string()),
            }
            current = Some(name);
        }
    }
    let mut out = String::new();
    for name in order {
        let family = &families[&name];
        for line in family
            .help
            .iter()
            .chain(family.kind.iter())
            .chain(family.samples.iter())
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_several_processes_merge_under_one_header() {
        let a = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{worker=\"0\"} 1\n\
                 # HELP y Gauge.\n# TYPE y gauge\ny{worker=\"0\"} 2.5\n";
        let b = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{worker=\"1\"} 3\n";
        let merged = merge_expositions([a, b]);
        assert_eq!(
            merged,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{worker=\"0\"} 1\n\
             x_total{worker=\"1\"} 3\n# HELP y Gauge.\n# TYPE y gauge\ny{worker=\"0\"} 2.5\n"
        );
    }

    #[test]
    fn histogram_sample_lines_stay_with_their_family() {
        let w0 = WorkerMetrics::new(0, Mode::ThreadPool);
        let w1 = WorkerMetrics::new(1, Mode::ThreadPool);
        w0.request_duration
            .with_label_values(&["/hello"])
            .observe(0.003);
        w1.request_duration
            .with_label_values(&["/hello"])
            .observe(0.2);
        let merged = merge_expositions([w0.exposition(), w1.exposition()]);
        assert_eq!(
            merged
                .matches("# TYPE loopscale_http_request_duration_seconds histogram")
                .count(),
            1
        );
        assert_eq!(
            merged.matches("# HELP process_cpu_seconds_total").count(),
            1
        );
        for w in ["0", "1"] {
            let count_line = format!(
                "loopscale_http_request_duration_seconds_count{{route=\"/hello\",worker=\"{w}\"}} 1"
            );
            assert!(merged.contains(&count_line), "{merged}");
        }
        // The bucket lines of both workers sit between this family's TYPE line and the next HELP.
        let start = merged
            .find("# TYPE loopscale_http_request_duration_seconds")
            .unwrap();
        let end = start + merged[start..].find("\n# HELP").unwrap();
        assert_eq!(
            merged[start..end]
                .matches("loopscale_http_request_duration_seconds_bucket")
                .count(),
            2 * (LATENCY_BUCKETS.len() + 1)
        );
    }

    #[test]
    fn supervisor_exposes_a_zero_restart_series_per_worker() {
        let s = SupervisorMetrics::new(2);
        let text = s.exposition();
        assert!(text.contains("loopscale_worker_restarts_total{worker=\"0\"} 0"));
        assert!(text.contains("loopscale_worker_restarts_total{worker=\"1\"} 0"));
        s.worker_restarts.with_label_values(&["1"]).inc();
        assert!(s
            .exposition()
            .contains("loopscale_worker_restarts_total{worker=\"1\"} 1"));
    }
}
