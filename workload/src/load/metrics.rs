//! Live Prometheus metrics of the generator, served on `--metrics-addr` while it runs.
//!
//! Request counters and the latency histogram count exactly what the report counts (the
//! measured window, warm-up excluded), so a dashboard and the report agree; the in-flight gauge
//! and connection counter are live throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use super::outcome::Outcome;

/// Latency buckets in seconds: 0.5 ms to 60 s, dense where request latencies usually are.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The generator's metrics, in their own registry.
#[derive(Clone)]
pub struct LoadMetrics {
    registry: Registry,
    /// `requests_total` per outcome, resolved once (in `Outcome::ALL` order) to keep label
    /// hashing off the per-request path.
    requests: [IntCounter; 6],
    duration: Histogram,
    pub in_flight: IntGauge,
    pub dropped: IntCounter,
    pub connections_opened: IntCounter,
    pub measuring: IntGauge,
}

impl LoadMetrics {
    pub fn new() -> LoadMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "loopscale_load_requests_total",
                "Requests of the measured window that ended, by outcome (ok, connect, timeout, status_4xx, status_5xx, io).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "loopscale_load_request_duration_seconds",
                "Latency of requests that got a response: from the intended start (open model) or the \
                 first byte written (closed model) to the last byte read.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "loopscale_load_in_flight",
            "Requests started and not yet ended (warm-up included).",
        )
        .expect("valid metric");
        let dropped = IntCounter::new(
            "loopscale_load_dropped_total",
            "Open model: intended requests of the measured window not sent because the in-flight limit was reached.",
        )
        .expect("valid metric");
        let connections_opened = IntCounter::new(
            "loopscale_load_connections_opened_total",
            "TCP connections opened to targets (first opens and re-opens).",
        )
        .expect("valid metric");
        let measuring = IntGauge::new(
            "loopscale_load_measuring",
            "1 while the measured window runs, 0 during warm-up and drain.",
        )
        .expect("valid metric");
        let by_outcome = Outcome::ALL.map(|o| requests.with_label_values(&[o.label()]));
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(dropped.clone()),
            Box::new(connections_opened.clone()),
            Box::new(measuring.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        LoadMetrics {
            registry,
            requests: by_outcome,
            duration,
            in_flight,
            dropped,
            connections_opened,
            measuring,
        }
    }

    /// Counts a measured request's end.
    pub fn observe(&self, outcome: Outcome, latency: Duration) {
        self.requests[outcome.index()].inc();
        if outcome.has_response() {
            self.duration.observe(latency.as_secs_f64());
        }
    }

    /// Counts measured requests still unfinished at the end as timeouts, as the report does.
    pub fn observe_unfinished(&self, count: u64) {
        self.requests[Outcome::Timeout.index()].inc_by(count);
    }

    /// The Prometheus text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buffer).expect("text exposition is UTF-8")
    }
}

impl Default for LoadMetrics {
    fn default() -> Self {
        LoadMetrics::new()
    }
}

/// Serves `GET /metrics` on an already bound listener until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<LoadMetrics>) {
    async fn handler(State(metrics): State<Arc<LoadMetrics>>) -> impl IntoResponse {
        ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.render())
    }
    let app = Router::new()
        .route("/metrics", get(handler))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("metrics server stopped: {e}");
    }
}

/// Binds the metrics listener (before the run, so a bad address fails fast).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_with_prefix() {
        let m = LoadMetrics::new();
        m.observe(Outcome::Ok, Duration::from_millis(20));
        m.observe(Outcome::Status5xx, Duration::from_millis(3));
        m.observe(Outcome::Connect, Duration::ZERO);
        m.observe_unfinished(2);
        m.dropped.inc();
        let text = m.render();
        for needle in [
            "loopscale_load_requests_total{outcome=\"ok\"} 1",
            "loopscale_load_requests_total{outcome=\"status_5xx\"} 1",
            "loopscale_load_requests_total{outcome=\"connect\"} 1",
            "loopscale_load_requests_total{outcome=\"timeout\"} 2",
            "loopscale_load_requests_total{outcome=\"io\"} 0",
            "loopscale_load_request_duration_seconds_count 2",
            "loopscale_load_request_duration_seconds_bucket{le=\"0.025\"} 2",
            "loopscale_load_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "loopscale_load_in_flight 0",
            "loopscale_load_dropped_total 1",
            "loopscale_load_connections_opened_total 0",
            "loopscale_load_measuring 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
