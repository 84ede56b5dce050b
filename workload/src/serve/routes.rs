//! The HTTP routes of a worker and where each one's work runs (the heart of the model):
//!
//! | route | event-loop (Express) | thread-pool (FastAPI) |
//! |---|---|---|
//! | `/hello` | on the loop | on the loop (`async def`) |
//! | `/io?ms=` | timer on the loop | timer on the loop (`await asyncio.sleep`) |
//! | `/cpu?ms=` | on the loop: blocks it | `def` route: bounded pool, under the GIL |
//! | `/cpu-inline?ms=` | on the loop | sync call inside `async def`: on the loop, under the GIL |
//! | `/mixed?io_ms=&cpu_ms=` | timer, then CPU on the loop | timer, then CPU as `/cpu` |
//! | `/offload?ms=` | libuv pool (crypto/zlib/fs) | pool, GIL released (C code such as hashlib) |
//!
//! Every workload route spends `LOOPSCALE_REQUEST_OVERHEAD_US` of CPU on the loop: before the
//! route in thread-pool mode (holding the GIL even when that is 0 µs: the loop thread runs Python
//! for each request), two thirds before and a third after the answer in event-loop mode, as Node
//! (that third on average: each request's is drawn, [`drawn_after_answer_work`]), where each
//! request also walks its connection's own memory ([`ConnectionMemory`]).
//! Probes and `/metrics` skip it so that observing does not perturb the measurement.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::serve::after_callback::after_this_callback;
use crate::serve::config::{Config, Mode};
use crate::serve::cpu::burn_cpu;
use crate::serve::gil::{Gil, GilThread};
use crate::serve::metrics::WorkerMetrics;
use crate::serve::pool::BoundedPool;
use crate::serve::worker::PodLink;
use crate::serve::working_set::WorkingSet;

/// The longest a single request may ask to take (each parameter and their sum), so one request
/// cannot hold a worker for hours.
pub const MAX_REQUEST_MS: f64 = 60_000.0;

/// Response header naming the worker process that answered (for balancing tests and debugging).
pub const WORKER_HEADER: &str = "x-loopscale-worker";

/// What every handler of one worker shares.
pub struct AppState {
    /// Decides where each route's work runs.
    pub config: Config,
    /// This worker's index, echoed in the `x-loopscale-worker` header.
    pub worker: usize,
    /// This worker's registry.
    pub metrics: Arc<WorkerMetrics>,
    /// The process's GIL (disabled outside thread-pool mode or with `LOOPSCALE_GIL=false`).
    pub gil: Arc<Gil>,
    /// anyio's limiter in thread-pool mode, libuv's pool in event-loop mode.
    pub pool: BoundedPool,
    /// Readiness and the pod-wide scrape, via the supervisor.
    pub pod: Arc<PodLink>,
    /// The framework's memory, walked by each request and each new connection.
    pub working_set: WorkingSet,
}

type Shared = State<Arc<AppState>>;

/// A request parameter that cannot be used; answered with 400 and this one-line reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// The route needs this parameter.
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("`{name}` must be a number of milliseconds, got {value:?}")]
    NotANumber { name: &'static str, value: String },
    #[error("`{name}` must not be negative, got {value:?}")]
    Negative { name: &'static str, value: String },
    #[error("`{name}` must be at most 60000 ms (60 s), got {value:?}")]
    TooLarge { name: &'static str, value: String },
    #[error("`io_ms` + `cpu_ms` must be at most 60000 ms (60 s), got {0} ms")]
    TotalTooLarge(f64),
    #[error("bad query string: {0}")]
    Query(String),
}

impl IntoResponse for ParamError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response()
    }
}

impl From<QueryRejection> for ParamError {
    fn from(r: QueryRejection) -> Self {
        ParamError::Query(r.body_text().replace('\n', " "))
    }
}

/// The query parameters any route may carry; each route says which ones it needs.
#[derive(Debug, Default, Deserialize)]
pub struct RawParams {
    ms: Option<String>,
    io_ms: Option<String>,
    cpu_ms: Option<String>,
}

/// Parses one duration parameter: decimal milliseconds from 0 to [`MAX_REQUEST_MS`].
pub fn parse_millis(name: &'static str, raw: Option<&str>) -> Result<Duration, ParamError> {
    let value = raw.ok_or(ParamError::Missing(name))?;
    let parsed = value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| !v.is_nan() && *v != f64::INFINITY)
        .ok_or_else(|| ParamError::NotANumber {
            name,
            value: value.to_string(),
        })?;
    if parsed < 0.0 {
        return Err(ParamError::Negative {
            name,
            value: value.to_string(),
        });
    }
    if parsed > MAX_REQUEST_MS {
        return Err(ParamError::TooLarge {
            name,
            value: value.to_string(),
        });
    }
    Ok(Duration::from_secs_f64(parsed / 1000.0))
}

fn params(q: Result<Query<RawParams>, QueryRejection>) -> Result<RawParams, ParamError> {
    Ok(q?.0)
}

/// The worker's router: workload routes, probes, metrics, and a one-line 404 for the rest.
pub fn router(state: Arc<AppState>) -> Router {
    let mut workload = Router::new()
        .route("/hello", get(hello))
        .route("/io", get(io))
        .route("/cpu", get(cpu))
        .route("/cpu-inline", get(cpu_inline))
        .route("/mixed", get(mixed))
        .route("/offload", get(offload));
    // Event-loop mode with no overhead and no working set has nothing to do per request: skip
    // the layer entirely, so the bare-framework benchmark measures only what the model needs.
    let needs_overhead = state.config.mode == Mode::ThreadPool
        || !state.config.request_overhead.is_zero()
        || !state.working_set.is_empty();
    if needs_overhead {
        workload = workload.route_layer(middleware::from_fn_with_state(
            state.clone(),
            request_overhead,
        ));
    }
    workload
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn hello() -> &'static str {
    "Hello, World!\n"
}

async fn io(
    State(s): Shared,
    q: Result<Query<RawParams>, QueryRejection>,
) -> Result<String, ParamError> {
    let ms = parse_millis("ms", params(q)?.ms.as_deref())?;
    tokio::time::sleep(ms).await;
    resumed(&s);
    Ok(format!("io {} ms\n", ms.as_secs_f64() * 1000.0))
}

/// CPU work the way a `def` route (thread-pool) or a plain handler (event-loop) does it.
async fn cpu_work(s: &AppState, work: Duration) {
    match s.config.mode {
        Mode::EventLoop => burn_cpu(work),
        Mode::ThreadPool => {
            let gil = s.gil.clone();
            s.pool.run(move || gil.run_cpu(GilThread::Pool, work)).await;
            resumed(s);
        }
    }
}

async fn cpu(
    State(s): Shared,
    q: Result<Query<RawParams>, QueryRejection>,
) -> Result<String, ParamError> {
    let ms = parse_millis("ms", params(q)?.ms.as_deref())?;
    cpu_work(&s, ms).await;
    Ok(format!("cpu {} ms\n", ms.as_secs_f64() * 1000.0))
}

async fn cpu_inline(
    State(s): Shared,
    q: Result<Query<RawParams>, QueryRejection>,
) -> Result<String, ParamError> {
    let ms = parse_millis("ms", params(q)?.ms.as_deref())?;
    match s.config.mode {
        Mode::EventLoop => burn_cpu(ms),
        Mode::ThreadPool => s.gil.run_cpu(GilThread::Loop, ms),
    }
    Ok(format!("cpu-inline {} ms\n", ms.as_secs_f64() * 1000.0))
}

async fn mixed(
    State(s): Shared,
    q: Result<Query<RawParams>, QueryRejection>,
) -> Result<String, ParamError> {
    let p = params(q)?;
    let io_ms = parse_millis("io_ms", p.io_ms.as_deref())?;
    let cpu_ms = parse_millis("cpu_ms", p.cpu_ms.as_deref())?;
    let total = (io_ms + cpu_ms).as_secs_f64() * 1000.0;
    if total > MAX_REQUEST_MS {
        return Err(ParamError::TotalTooLarge(total));
    }
    tokio::time::sleep(io_ms).await;
    resumed(&s);
    cpu_work(&s, cpu_ms).await;
    Ok(format!(
        "mixed io {} ms cpu {} ms\n",
        io_ms.as_secs_f64() * 1000.0,
        cpu_ms.as_secs_f64() * 1000.0
    ))
}

async fn offload(
    State(s): Shared,
    q: Result<Query<RawParams>, QueryRejection>,
) -> Result<String, ParamError> {
    let ms = parse_millis("ms", params(q)?.ms.as_deref())?;
    s.pool.run(move || burn_cpu(ms)).await;
    resumed(&s);
    Ok(format!("offload {} ms\n", ms.as_secs_f64() * 1000.0))
}

async fn readyz(State(s): Shared) -> Response {
    if s.pod.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): Shared) -> Response {
    match s.pod.scrape().await {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics unavailable: no answer from the supervisor\n",
        )
            .into_response(),
    }
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no route for {}\n", req.uri().path()),
    )
        .into_response()
}

/// The framework's CPU on the loop: under the GIL in thread-pool mode (inside the hold of the
/// connection's poll, honouring drop requests as CPython's eval loop does), plain CPU otherwise.
fn loop_work(s: &AppState, work: Duration) {
    match s.config.mode {
        Mode::ThreadPool => s.gil.run_cpu(GilThread::Loop, work),
        Mode::EventLoop if !work.is_zero() => burn_cpu(work),
        Mode::EventLoop => {}
    }
}

/// A connection was accepted: the framework's cost of setting it up (uvicorn's protocol object
/// and `connection_made`, Node's socket and parser), and of tearing it down later, paid on the
/// loop as one callback of its own.
pub fn connection_accepted(s: &AppState) {
    framework_entry(s, s.config.connection_overhead, 0..s.working_set.len());
}

/// A callback that enters the framework's code for a request or a connection: it walks the
/// `walk` steps of the framework's memory (cheap when cached, dear after an idle moment; see
/// `working_set`), then spends `work` of CPU, both as [`loop_work`] does (under the GIL in
/// thread-pool mode).
fn framework_entry(s: &AppState, work: Duration, walk: Range<usize>) {
    if s.working_set.is_empty() {
        return loop_work(s, work);
    }
    match s.config.mode {
        Mode::ThreadPool => s.gil.hold_on_loop(|| {
            s.working_set.walk_steps(walk);
            s.gil.run_cpu(GilThread::Loop, work);
        }),
        Mode::EventLoop => {
            s.working_set.walk_steps(walk);
            loop_work(s, work);
        }
    }
}

/// A handler resumes after a wait (its timer fired, its pool job finished): the framework's
/// cost of that extra loop callback (asyncio's task step, a Node timer callback).
fn resumed(s: &AppState) {
    loop_work(s, s.config.resume_overhead);
}

/// The share of the per-request overhead uvicorn spends in the read callback (httptools parsing
/// the bytes, `data_received` creating the request's task) rather than in the task's first step
/// (the app, the answer written). Measured on the reference server: 10-14% of the loop thread's
/// CPU per request for `/hello` and `/io?ms=1` at 1 and 4 in flight (`data_received` wrapped with
/// `time.thread_time_ns`, loop thread from `/proc/.../schedstat`:
/// `workload/reference/experiments/read_callback_share.py`).
pub const READ_CALLBACK_SHARE: f64 = 0.12;

/// The loop callbacks, so GIL sections, uvloop runs per `/hello` under uvicorn: traced on the
/// reference FastAPI server (`workload/reference/experiments/gil_hold_trace.py`, session 10: `with
/// gil` sections between two answers, 4 to 7, 4 the most common): the read buffer's allocation
/// (under a µs), the read callback (20-24 µs), a second near-empty one and the task step. Each one
/// the loop has to win from the pool threads under a convoy; with the read callback and the task
/// step alone (two, up to session 15), a `/hello` sent at a constant rate under 4 `/cpu` waited
/// 0.65-0.72 of FastAPI's time in every full run of sessions 11-15.
pub const THREAD_POOL_LOOP_CALLBACKS: usize = 4;

/// The share of the per-request overhead Node spends after the answer is written (the response's
/// `finish`, the parser made ready for the connection's next request, the handler's closures
/// collected): off the client's critical path, but the loop is still busy with it when the next
/// request arrives. Measured on the reference Express server (`perf trace` of its loop thread
/// under closed-loop `/hello` at 1 in flight, medians over 6,600-9,600 requests per run, four
/// runs): 160-163 µs from the request's `read` to the answer's `writev`, then 80-81 µs to the
/// loop's next `epoll_pwait` in two runs, 99-100 and 50 in the other two (a faster moment of the
/// machine); the emulation's own part of that is 18 and 11 µs, so (80 - 11) / (243 - 29) = 32% of
/// the overhead comes after the answer.
/// `workload/reference/experiments/after_answer_share.py` reproduces it.
pub const EVENT_LOOP_AFTER_ANSWER_SHARE: f64 = 1.0 / 3.0;

/// The most a request's work after the answer may take, in multiples of its mean (see
/// [`drawn_after_answer_work`]): an exponential draw exceeds it once in 22,000, and the cut
/// lowers the mean by 0.005%.
const AFTER_ANSWER_MOST_MEANS: f64 = 10.0;

/// One request's work after its answer, drawn from an exponential distribution with the
/// calibrated `mean`: Node's varies from one request to the next while the mean is what the
/// CPU per request calibrates. Traced on Express's loop thread (`/hello` alone, 1 in flight,
/// `workload/reference/experiments/after_answer_spread.py`, session 15): from the answer's write
/// to the next `epoll_wait` p10 / p50 / p90 / p99 22 / 26 / 42 / 80 µs and 27 / 41 / 62 / 98 in
/// two runs, the mean 1.3-1.4x the median; the emulation with a fixed share 22 / 27 / 34 / 48.
/// Under a convoy of `/cpu` that spread decides whether a closed-loop `/hello`, answered last in
/// an iteration, is back before the loop polls again: fixed, the emulation's missed the next
/// iteration in 58 of 59 such iterations where Express's missed in 34 of 62 (session 13).
fn drawn_after_answer_work(mean: Duration, rng: &mut impl rand::Rng) -> Duration {
    if mean.is_zero() {
        return mean;
    }
    let uniform: f64 = rng.random();
    mean.mul_f64((-(1.0 - uniform).ln()).min(AFTER_ANSWER_MOST_MEANS))
}

/// KiB of memory of its own that each connection walks per request in event-loop mode (when the
/// working set is on): Node's socket, HTTP parser and stream state, touched by every request on
/// that connection and by no other. It is what makes a connection slow to serve after the loop
/// served the others: under a closed-loop `/hello` among 4 `/cpu` connections, Express's work
/// after the `/hello`'s answer takes 2-2.6x its time when `/hello` runs alone (session 12), while
/// a shared working set, walked by the `/cpu` just before, stays cached. Measured as resident
/// memory per open keep-alive connection after three requests on each
/// (`workload/reference/experiments/connection_memory.py`, 200-1,000 connections): Express 43-60
/// KiB, the emulation 18-20 (hyper's buffers, tokio's task), FastAPI 9-11; so event-loop mode
/// adds the difference, about 32 KiB, and thread-pool mode nothing.
pub const EVENT_LOOP_CONNECTION_MEMORY_KIB: usize = 32;

/// A connection's own memory (see [`EVENT_LOOP_CONNECTION_MEMORY_KIB`]), put in each of its
/// requests' extensions so that the request's framework callbacks walk it.
#[derive(Debug, Clone)]
pub struct ConnectionMemory(Arc<WorkingSet>);

impl ConnectionMemory {
    /// The memory a new connection gets under `config`: none in thread-pool mode or without a
    /// working set (`LOOPSCALE_WORKING_SET_KIB=0` turns the memory model off).
    pub fn for_new_connection(config: &Config) -> Option<Self> {
        match config.mode {
            Mode::EventLoop if config.working_set_kib > 0 => Some(ConnectionMemory(Arc::new(
                WorkingSet::new(EVENT_LOOP_CONNECTION_MEMORY_KIB),
            ))),
            _ => None,
        }
    }
}

/// The per-request framework cost on the loop.
///
/// Thread-pool mode runs it as uvloop does, in [`THREAD_POOL_LOOP_CALLBACKS`] loop callbacks, each
/// its own GIL section (a yield ends the poll and so drops the GIL): the read buffer's allocation
/// (next to no work), the read callback ([`READ_CALLBACK_SHARE`]), a near-empty callback, then the
/// task step that runs the route and writes the answer. Under a GIL convoy each callback may wait
/// a switch interval, which is why the number of callbacks matters more than their length. Node
/// parses and calls the handler from one socket callback, so event-loop mode spends it in one
/// piece before the answer, apart from the [`EVENT_LOOP_AFTER_ANSWER_SHARE`] it spends after it.
/// (Thread-pool mode keeps all of it before the answer: uvicorn does some after too, but
/// modelling that made the closed-model convoy less like FastAPI's; see
/// `workload/reference/README.md`, sessions 10 and 15.)
async fn request_overhead(State(s): Shared, req: Request, next: Next) -> Response {
    let overhead = s.config.request_overhead;
    let after_answer = match s.config.mode {
        Mode::ThreadPool => {
            // The first callback, uvloop's read-buffer allocation (next to no Python): the poll
            // that read and parsed the request ends here.
            tokio::task::yield_now().await;
            let read = overhead.mul_f64(READ_CALLBACK_SHARE);
            framework_entry(&s, read, 0..s.working_set.len());
            // The near-empty callbacks, then the task step.
            for _ in 2..THREAD_POOL_LOOP_CALLBACKS {
                tokio::task::yield_now().await;
            }
            loop_work(&s, overhead.saturating_sub(read));
            None
        }
        Mode::EventLoop => {
            let mean_after = overhead.mul_f64(EVENT_LOOP_AFTER_ANSWER_SHARE);
            let after = drawn_after_answer_work(mean_after, &mut rand::rng());
            let (before_answer, after_answer) =
                s.working_set.split_walk(EVENT_LOOP_AFTER_ANSWER_SHARE);
            let connection = req.extensions().get::<ConnectionMemory>().map(|memory| {
                let (before, after) = memory.0.split_walk(EVENT_LOOP_AFTER_ANSWER_SHARE);
                memory.0.walk_steps(before);
                (memory.clone(), after)
            });
            framework_entry(&s, overhead.saturating_sub(mean_after), before_answer);
            Some((after, after_answer, connection))
        }
    };
    let response = next.run(req).await;
    if let Some((work, walk, connection)) = after_answer {
        // Once this connection's poll has written the answer, before the loop serves the next
        // connection: as Node, in the same callback, with its share of the framework's memory
        // and of the connection's.
        after_this_callback(move || {
            if let Some((memory, steps)) = connection {
                memory.0.walk_steps(steps);
            }
            framework_entry(&s, work, walk)
        });
    }
    response
}

/// Decrements the in-flight gauge even if the request is dropped midway.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts, times and labels every request, and names the worker in a response header.
async fn observe(State(s): Shared, req: Request, next: Next) -> Response {
    let started = Instant::now();
    s.metrics.in_flight.inc();
    let _in_flight = InFlight(s.metrics.in_flight.clone());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(req).await;
    let route = matched.as_ref().map_or("unmatched", |p| p.as_str());
    s.metrics
        .request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    s.metrics
        .requests_total
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    response
        .headers_mut()
        .insert(WORKER_HEADER, HeaderValue::from(s.worker));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn work_after_the_answer_varies_about_the_calibrated_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mean = Duration::from_micros(30);
        let mut drawn: Vec<f64> = (0..200_000)
            .map(|_| drawn_after_answer_work(mean, &mut rng).as_secs_f64() * 1e6)
            .collect();
        drawn.sort_by(f64::total_cmp);
        let average = drawn.iter().sum::<f64>() / drawn.len() as f64;
        let quantile = |q: f64| drawn[(q * drawn.len() as f64) as usize];
        // The CPU per request stays what the calibration charged.
        assert!((29.4..30.6).contains(&average), "mean {average:.2} us");
        // Exponential: the median ln 2 of the mean, the p90 ln 10; never beyond the cut.
        let (p50, p90) = (quantile(0.5), quantile(0.9));
        assert!((19.9..21.7).contains(&p50), "p50 {p50:.2} us");
        assert!((66.0..72.0).contains(&p90), "p90 {p90:.2} us");
        assert!(drawn[drawn.len() - 1] <= 300.0 + 1e-6);
        assert_eq!(
            drawn_after_answer_work(Duration::ZERO, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn only_event_loop_connections_with_a_working_set_get_memory_of_their_own() {
        let config = |mode: &str, kib: &str| {
            crate::serve::config::parse(&[
                ("LOOPSCALE_MODE", mode),
                ("LOOPSCALE_WORKING_SET_KIB", kib),
            ])
            .unwrap()
        };
        let memory = ConnectionMemory::for_new_connection(&config("event-loop", "256"))
            .expect("event-loop with a working set");
        assert_eq!(
            memory.0.len() * crate::serve::working_set::LINE_BYTES,
            EVENT_LOOP_CONNECTION_MEMORY_KIB * 1024
        );
        let other = ConnectionMemory::for_new_connection(&config("event-loop", "256")).unwrap();
        assert!(!Arc::ptr_eq(&memory.0, &other.0), "each connection its own");
        assert!(ConnectionMemory::for_new_connection(&config("event-loop", "0")).is_none());
        assert!(ConnectionMemory::for_new_connection(&config("thread-pool", "256")).is_none());
    }

    #[test]
    fn good_values_parse_to_durations() {
        assert_eq!(parse_millis("ms", Some("0")), Ok(Duration::ZERO));
        assert_eq!(
            parse_millis("ms", Some("10")),
            Ok(Duration::from_millis(10))
        );
        assert_eq!(
            parse_millis("ms", Some("0.5")),
            Ok(Duration::from_micros(500))
        );
        assert_eq!(
            parse_millis("ms", Some("60000")),
            Ok(Duration::from_secs(60))
        );
    }

    #[test]
    fn each_kind_of_bad_value_gets_its_own_reason() {
        assert_eq!(parse_millis("ms", None), Err(ParamError::Missing("ms")));
        for v in ["abc", "", "1e", "NaN", "nan", "inf", "0x10", "1,5"] {
            assert!(
                matches!(
                    parse_millis("ms", Some(v)),
                    Err(ParamError::NotANumber { .. })
                ),
                "{v}"
            );
        }
        for v in ["-1", "-0.5", "-inf"] {
            assert!(
                matches!(
                    parse_millis("ms", Some(v)),
                    Err(ParamError::Negative { .. })
                ),
                "{v}"
            );
        }
        for v in ["60000.1", "1e9", "99999999999999999999999"] {
            assert!(
                matches!(
                    parse_millis("ms", Some(v)),
                    Err(ParamError::TooLarge { .. })
                ),
                "{v}"
            );
        }
        let reason = parse_millis("io_ms", Some("-3")).unwrap_err().to_string();
        assert_eq!(reason, "`io_ms` must not be negative, got \"-3\"");
        assert!(!reason.contains('\n'));
    }
}
