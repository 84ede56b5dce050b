//! One worker process: one tokio `current_thread` runtime, which *is* the emulated event loop
//! (Node's libuv loop, or uvicorn's asyncio loop), serving the routes on connections that either
//! arrive from the supervisor (round-robin) or are accepted from the inherited listener
//! (shared-socket).
//!
//! The control channel to the supervisor is served by a separate plain thread, so that answering
//! a metrics gather never waits for a loop blocked by CPU work: observing must not perturb.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::serve::{Listener, ListenerExt};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::Histogram;
use tokio::sync::{oneshot, Notify};
use tower::ServiceExt;

use crate::serve::after_callback::run_after_callback;
use crate::serve::config::{Balancing, Config, Mode};
use crate::serve::control::{read_message, Message};
use crate::serve::fdpass::PassedConnections;
use crate::serve::gil::Gil;
use crate::serve::metrics::WorkerMetrics;
use crate::serve::pool::BoundedPool;
use crate::serve::ready_order::{
    loop_iteration, next_loop_iteration, MarkReads, ReadMark, ReadyOrder,
};
use crate::serve::routes::{connection_accepted, router, AppState, ConnectionMemory};
use crate::serve::working_set::WorkingSet;

/// Internal env var set by the supervisor: this process is worker number N.
pub const WORKER_INDEX_ENV: &str = "LOOPSCALE_WORKER_INDEX";
/// The fd where a worker finds its end of the control channel.
pub const CONTROL_FD: RawFd = 3;
/// The fd where a worker finds the shared listener or its end of the connection channel.
pub const CONNECTIONS_FD: RawFd = 4;
/// Resolution of the event-loop lag probe (Node's `monitorEventLoopDelay` default).
const LAG_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How long `/metrics` waits for the supervisor's merged scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's view of its pod: readiness as the supervisor last said, and the way to ask the
/// supervisor for the pod-wide scrape.
pub struct PodLink {
    pod_ready: AtomicBool,
    shutting_down: AtomicBool,
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, oneshot::Sender<String>>>,
    next_id: AtomicU64,
    supervisor_gone: Notify,
}

impl PodLink {
    /// Whether `/readyz` says ready: every worker of the pod is up and this one is not draining.
    pub fn is_ready(&self) -> bool {
        self.pod_ready.load(Ordering::SeqCst) && !self.shutting_down.load(Ordering::SeqCst)
    }

    /// The pod's merged metrics, or `None` if the supervisor does not answer in time.
    pub async fn scrape(&self) -> Option<String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().ok()?.insert(id, tx);
        if self.send(&Message::Scrape { id }).is_err() {
            self.pending.lock().ok()?.remove(&id);
            return None;
        }
        match tokio::time::timeout(SCRAPE_TIMEOUT, rx).await {
            Ok(Ok(text)) => Some(text),
            _ => {
                self.pending.lock().ok()?.remove(&id);
                None
            }
        }
    }

    fn send(&self, m: &Message) -> std::io::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("control writer poisoned"))?;
        w.write_all(&m.encode())
    }
}

/// Serves the control channel: metrics gathers, scrape replies and readiness from the supervisor.
fn control_thread(mut reader: UnixStream, pod: Arc<PodLink>, metrics: Arc<WorkerMetrics>) {
    loop {
        match read_message(&mut reader) {
            Ok(Some(Message::Gather { id })) => {
                let text = metrics.exposition();
                if pod.send(&Message::Exposition { id, text }).is_err() {
                    break;
                }
            }
            Ok(Some(Message::ScrapeReply { id, text })) => {
                if let Some(tx) = pod.pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                    let _ = tx.send(text);
                }
            }
            Ok(Some(Message::PodReady(ready))) => pod.pod_ready.store(ready, Ordering::SeqCst),
            Ok(Some(other)) => tracing::warn!("unexpected control message {other:?}"),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("control channel failed: {e}");
                break;
            }
        }
    }
    pod.pod_ready.store(false, Ordering::SeqCst);
    pod.supervisor_gone.notify_one();
}

/// Measures how late a timer fires on the loop: the loop's responsiveness.
async fn probe_lag(lag: Histogram) {
    loop {
        let start = Instant::now();
        tokio::time::sleep(LAG_PROBE_INTERVAL).await;
        lag.observe(
            start
                .elapsed()
                .saturating_sub(LAG_PROBE_INTERVAL)
                .as_secs_f64(),
        );
    }
}

/// Resolves on SIGTERM, SIGINT, or the supervisor's end of the control channel closing.
async fn shutdown_requested(pod: Arc<PodLink>, worker: usize) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(worker, "cannot install signal handlers");
        return;
    };
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = pod.supervisor_gone.notified() => "supervisor gone",
    };
    pod.shutting_down.store(true, Ordering::SeqCst);
    tracing::info!(worker, "{why}: draining in-flight requests");
}

/// Takes ownership of an fd the supervisor placed at a fixed number, checking it is open.
fn inherited_fd(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "fd {fd} is not open: {WORKER_INDEX_ENV} is internal, workers are started by the supervisor"
        ));
    }
    // SAFETY: the fd is open and nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Entry point of a worker process.
pub fn run(config: Config, worker: usize) -> ExitCode {
    let (control, connections) = match (inherited_fd(CONTROL_FD), inherited_fd(CONNECTIONS_FD)) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("loopscale-workload serve: {e}");
            return ExitCode::from(2);
        }
    };
    let control = UnixStream::from(control);
    let metrics = Arc::new(WorkerMetrics::new(worker, config.mode));
    let gil = if config.mode == Mode::ThreadPool && config.gil {
        let m = metrics.clone();
        Gil::enabled(config.gil_switch_interval).with_wait_observer(Box::new(
            move |thread, waited| m.observe_gil_wait(thread, waited),
        ))
    } else {
        Gil::disabled()
    };
    let pool_size = match config.mode {
        Mode::ThreadPool => config.threadpool_size,
        Mode::EventLoop => config.libuv_threadpool_size,
    };
    let pool = BoundedPool::new(
        pool_size,
        metrics.pool_busy.clone(),
        metrics.pool_queue.clone(),
    );
    let pod = match control.try_clone() {
        Ok(writer) => Arc::new(PodLink {
            pod_ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            writer: Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            supervisor_gone: Notify::new(),
        }),
        Err(e) => {
            eprintln!("loopscale-workload serve: worker {worker}: control channel: {e}");
            return ExitCode::from(1);
        }
    };
    {
        let (pod, metrics) = (pod.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control_thread(control, pod, metrics))
            .expect("spawn the control thread");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(pool_size + 1)
        .on_thread_park(next_loop_iteration)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loopscale-workload serve: worker {worker}: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state = Arc::new(AppState {
        config: config.clone(),
        worker,
        metrics: metrics.clone(),
        gil: Arc::new(gil),
        pool,
        pod: pod.clone(),
        working_set: WorkingSet::new(config.working_set_kib),
    });
    let result = runtime.block_on(async move {
        tokio::spawn(probe_lag(metrics.eventloop_lag.clone()));
        let app = router(state.clone());
        let shutdown = shutdown_requested(pod.clone(), worker);
        match config.balancing {
            Balancing::SharedSocket => {
                let std = std::net::TcpListener::from(connections);
                std.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(std)?;
                serve(listener, app, shutdown, &pod, worker, state).await
            }
            Balancing::RoundRobin => {
                let listener = PassedConnections::new(connections)?;
                serve(listener, app, shutdown, &pod, worker, state).await
            }
        }
    });
    match result {
        Ok(()) => {
            tracing::info!(worker, "drained; exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loopscale-workload serve: worker {worker}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve<L>(
    listener: L,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    pod: &PodLink,
    worker: usize,
    state: Arc<AppState>,
) -> std::io::Result<()>
where
    L: Listener<Io = tokio::net::TcpStream>,
    L::Addr: std::fmt::Debug,
{
    let mut listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    pod.send(&Message::WorkerReady)?;
    tracing::debug!(worker, "serving");
    // What `axum::serve(..).with_graceful_shutdown(..)` does, with three differences: each
    // accepted connection first costs `LOOPSCALE_CONNECTION_OVERHEAD_US` on the loop, each
    // connection's task is polled as a loop callback (see `LoopCallback`), and in event-loop mode
    // each connection's requests carry its own memory (see `ConnectionMemory`).
    //
    // That cost is also what spreads a shared socket's connections over the workers as in
    // uvicorn: every worker waiting in epoll is woken by a new connection, and the one that
    // accepts it is busy for that long, so the next connection goes to another. With an accept
    // that costs microseconds, the first worker awake takes the whole burst.
    let connections = GracefulShutdown::new();
    let http = http1::Builder::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        connection_accepted(&state);
        let memory = ConnectionMemory::for_new_connection(&state.config);
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(memory) = &memory {
                    req.extensions_mut().insert(memory.clone());
                }
                req
            },
        ));
        let (io, reads) = MarkReads::new(io);
        let connection = http.serve_connection(TokioIo::new(io), service);
        let connection = connections.watch(connection);
        tokio::spawn(LoopCallback::new(state.gil.clone(), reads, connection));
    }
    drop(listener);
    tracing::debug!(worker, "not accepting; draining open connections");
    connections.shutdown().await;
    Ok(())
}

/// A connection's task, polled the way libuv serves a socket: in libuv's order of ready sockets
/// ([`ReadyOrder`]: the ones that read a request in the loop's previous iteration first), with
/// the work the poll left for after its answer run before the poll returns (Node's, see
/// `after_callback`), and in thread-pool mode the way uvloop runs a callback into Python: each
/// poll (reading and parsing a request, the route up to its first wait, writing an answer) holds
/// the GIL throughout, and the GIL is dropped between polls, when the loop moves on or blocks in
/// epoll. Polls of other tasks (the lag probe, the accept loop) are libuv's C side and do not
/// take it. Without a GIL the poll is the inner future's alone.
struct LoopCallback<F> {
    gil: Arc<Gil>,
    order: ReadyOrder,
    /// When the connection's socket last returned data.
    reads: ReadMark,
    task: Pin<Box<F>>,
}

impl<F> LoopCallback<F> {
    fn new(gil: Arc<Gil>, reads: ReadMark, task: F) -> Self {
        LoopCallback {
            gil,
            order: ReadyOrder::default(),
            reads,
            task: Box::pin(task),
        }
    }
}

impl<F: Future> Future for LoopCallback<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let now = loop_iteration();
        if this.order.defer(now) {
            // Behind the tasks this iteration's poll for I/O woke: tokio's current-thread
            // scheduler queues a task woken from its own thread at the back.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let task = &mut this.task;
        let polled = this.gil.hold_on_loop(|| {
            let polled = task.as_mut().poll(cx);
            run_after_callback();
            polled
        });
        if this.reads.read_in() == now {
            this.order.served(now);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::after_callback::after_this_callback;
    use crate::serve::ready_order::{loop_iteration, poll_once};
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

    #[test]
    fn work_left_by_a_poll_runs_before_the_callback_returns() {
        let ran = Arc::new(AtomicUsize::new(0));
        let flag = ran.clone();
        let inner = std::future::poll_fn(move |_| {
            let flag = flag.clone();
            after_this_callback(move || {
                flag.fetch_add(1, Ordering::Relaxed);
            });
            Poll::<()>::Pending
        });
        let mut callback = LoopCallback::new(Arc::new(Gil::disabled()), ReadMark::default(), inner);
        assert!(poll_once(&mut callback).is_none());
        assert_eq!(
            ran.load(Ordering::Relaxed),
            0,
            "a new connection's first poll defers"
        );
        assert!(poll_once(&mut callback).is_none());
        assert_eq!(
            ran.load(Ordering::Relaxed),
            1,
            "the work after the answer ran inside the callback, not in a task queued behind others"
        );
    }

    /// A connection counts as served in an iteration when it read data in it, as epoll reports a
    /// socket only when it has some: a poll that finds nothing (a new connection accepted before
    /// its request is in, a wake by a timer) does not put it ahead in the next iteration.
    #[tokio::test]
    async fn only_a_poll_that_reads_data_counts_as_served() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut server, reads) = MarkReads::new(server);
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let inner = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 16];
            let _ = Pin::new(&mut server).poll_read(cx, &mut ReadBuf::new(&mut buf));
            Poll::<()>::Pending
        });
        let mut callback = LoopCallback::new(Arc::new(Gil::disabled()), reads, inner);
        let inner_polls = |callback: &mut LoopCallback<_>| {
            let before = polls.load(Ordering::Relaxed);
            let _ = poll_once(callback);
            polls.load(Ordering::Relaxed) - before
        };

        // New, with a request in: deferred once, then served.
        client.write_all(b"GET /hello").await.unwrap();
        assert_eq!(inner_polls(&mut callback), 0, "new: deferred");
        assert_eq!(inner_polls(&mut callback), 1, "then served (it reads)");
        let read_in = loop_iteration();

        // The next iteration: it read in the one before, so it goes ahead; nothing to read.
        next_loop_iteration();
        assert_eq!(
            inner_polls(&mut callback),
            1,
            "read in {read_in}: goes ahead"
        );

        // Polled in the previous iteration, but it read nothing there: behind the others.
        next_loop_iteration();
        client.write_all(b"GET /hello").await.unwrap();
        assert_eq!(
            inner_polls(&mut callback),
            0,
            "polled without a read: deferred"
        );
        assert_eq!(inner_polls(&mut callback), 1);
        next_loop_iteration();
        assert_eq!(
            inner_polls(&mut callback),
            1,
            "read in the iteration before: ahead"
        );
    }
}
