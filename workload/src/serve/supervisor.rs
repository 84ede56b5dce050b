//! The supervisor: binds the port once, starts `LOOPSCALE_PROCESSES` workers by re-executing its
//! own binary (PM2 / Node cluster primary / uvicorn's parent), balances connections, restarts
//! workers that die, answers metrics scrapes for the whole pod, and on SIGTERM drains and exits 0.
//!
//! Everything runs over inherited fds and socketpairs: nothing needs a writable filesystem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::serve::config::{Balancing, Config};
use crate::serve::control::{read_message_async, Message};
use crate::serve::fdpass::{connection_channel, send_fd};
use crate::serve::metrics::{merge_expositions, SupervisorMetrics};
use crate::serve::worker::{CONNECTIONS_FD, CONTROL_FD, WORKER_INDEX_ENV};

/// Listen backlog: enough for bursts of thousands of connects (the kernel caps it at somaxconn).
const BACKLOG: i32 = 4096;
/// How long a scrape waits for one worker's metrics before using its previous ones.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// Restart back-off for workers that die right after starting, so a crash loop does not spin.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A worker that lived this long is considered healthy again: back-off resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Slot {
    pid: Option<u32>,
    ready: bool,
    control: Option<mpsc::UnboundedSender<Message>>,
    connections: Option<mpsc::UnboundedSender<OwnedFd>>,
    last_exposition: Option<String>,
}

struct Supervisor {
    config: Config,
    metrics: SupervisorMetrics,
    slots: Mutex<Vec<Slot>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<String>>>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    ready_workers: watch::Sender<usize>,
    /// Connections a worker could not take (it died with them queued): the round-robin acceptor
    /// hands them to the next worker instead of closing them.
    rehome: mpsc::UnboundedSender<OwnedFd>,
}

impl Supervisor {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes pod readiness and tells every live worker (what their `/readyz` answers).
    fn readiness_changed(&self) {
        let slots = self.slots();
        let ready = slots.iter().filter(|s| s.ready).count();
        let pod_ready = ready == slots.len() && !self.shutting_down.load(Ordering::SeqCst);
        for s in slots.iter() {
            if let Some(tx) = &s.control {
                let _ = tx.send(Message::PodReady(pod_ready));
            }
        }
        drop(slots);
        self.ready_workers.send_replace(ready);
    }

    /// Gathers every live worker's metrics (falling back to its last answer if it is slow) and
    /// merges them with the supervisor's own into one exposition.
    async fn scrape(&self) -> String {
        let mut waits = Vec::new();
        for (i, s) in self.slots().iter().enumerate() {
            let Some(tx) = &s.control else { continue };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (reply_tx, reply_rx) = oneshot::channel();
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, reply_tx);
            if tx.send(Message::Gather { id }).is_ok() {
                waits.push((i, id, reply_rx));
            }
        }
        let mut texts = vec![self.metrics.exposition()];
        let answers = futures::future::join_all(waits.into_iter().map(|(i, id, rx)| async move {
            (i, id, tokio::time::timeout(GATHER_TIMEOUT, rx).await)
        }))
        .await;
        for (i, id, answer) in answers {
            let mut slots = self.slots();
            match answer {
                Ok(Ok(text)) => {
                    slots[i].last_exposition = Some(text.clone());
                    texts.push(text);
                }
                _ => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(old) = &slots[i].last_exposition {
                        tracing::warn!(worker = i, "no metrics in time; using the previous ones");
                        texts.push(old.clone());
                    }
                }
            }
        }
        merge_expositions(texts)
    }
}

/// Binds the listening socket with a large backlog; close-on-exec, handed to workers explicitly.
fn bind(config: &Config) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr = SocketAddr::new(config.host, config.port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Entry point of the supervisor process.
pub fn run(config: Config) -> ExitCode {
    let listener = match bind(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "loopscale-workload serve: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loopscale-workload serve: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(supervise(config, listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopscale-workload serve: {e}");
            ExitCode::from(1)
        }
    }
}

async fn supervise(config: Config, listener: std::net::TcpListener) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let addr = listener.local_addr()?;
    tracing::info!(
        mode = %config.mode,
        processes = config.processes,
        balancing = config.balancing.as_str(),
        "listening on {addr}"
    );
    let exe = std::env::current_exe()?;
    let (ready_workers, mut ready_rx) = watch::channel(0);
    let (rehome, rehome_rx) = mpsc::unbounded_channel();
    let sup = Arc::new(Supervisor {
        metrics: SupervisorMetrics::new(config.processes),
        slots: Mutex::new((0..config.processes).map(|_| Slot::default()).collect()),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        ready_workers,
        rehome,
        config,
    });

    // Shared-socket workers inherit this fd; round-robin keeps it for the accept loop only.
    let shared_listener: Option<Arc<OwnedFd>> = match sup.config.balancing {
        Balancing::SharedSocket => Some(Arc::new(OwnedFd::from(listener.try_clone()?))),
        Balancing::RoundRobin => None,
    };
    let mut workers = JoinSet::new();
    for i in 0..sup.config.processes {
        workers.spawn(run_slot(
            sup.clone(),
            i,
            exe.clone(),
            shared_listener.clone(),
        ));
    }
    let acceptor = match sup.config.balancing {
        Balancing::RoundRobin => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            Some(tokio::spawn(accept_round_robin(
                sup.clone(),
                listener,
                rehome_rx,
            )))
        }
        Balancing::SharedSocket => {
            drop(listener);
            None
        }
    };

    let mut announced = false;
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            changed = ready_rx.changed() => {
                if changed.is_ok() && !announced && *ready_rx.borrow() == sup.config.processes {
                    announced = true;
                    tracing::info!("all {} workers ready", sup.config.processes);
                }
            }
        }
    };

    // Drain: stop taking connections, tell workers, wait up to the grace period, exit 0.
    let grace = sup.config.shutdown_grace;
    tracing::info!("{why}: stopping workers (grace {grace:?})");
    sup.shutting_down.store(true, Ordering::SeqCst);
    sup.readiness_changed();
    if let Some(a) = acceptor {
        a.abort();
    }
    drop(shared_listener);
    let pids: Vec<u32> = sup.slots().iter().filter_map(|s| s.pid).collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let drained = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left: Vec<u32> = sup.slots().iter().filter_map(|s| s.pid).collect();
        tracing::warn!("grace period over; killing workers {left:?}");
        for pid in left {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while workers.join_next().await.is_some() {}
        })
        .await;
    }
    tracing::info!("all workers stopped; exiting");
    Ok(())
}

/// Keeps worker `index` alive: spawn, serve its control channel, wait, restart unless draining.
async fn run_slot(
    sup: Arc<Supervisor>,
    index: usize,
    exe: std::path::PathBuf,
    shared_listener: Option<Arc<OwnedFd>>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    while !sup.shutting_down.load(Ordering::SeqCst) {
        if !first {
            sup.metrics
                .worker_restarts
                .with_label_values(&[&index.to_string()])
                .inc();
        }
        first = false;
        let started = Instant::now();
        match spawn_worker(&sup, index, &exe, shared_listener.as_deref()).await {
            Ok(status) => {
                if !sup.shutting_down.load(Ordering::SeqCst) {
                    tracing::warn!(worker = index, "worker exited ({status}); restarting");
                }
            }
            Err(e) => tracing::error!(worker = index, "cannot start worker: {e}"),
        }
        if sup.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = MIN_BACKOFF;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Starts one worker and runs it until it exits; returns its exit status.
async fn spawn_worker(
    sup: &Arc<Supervisor>,
    index: usize,
    exe: &std::path::Path,
    shared_listener: Option<&OwnedFd>,
) -> std::io::Result<std::process::ExitStatus> {
    let (sup_control, worker_control) = std::os::unix::net::UnixStream::pair()?;
    let (sup_connections, worker_connections): (Option<OwnedFd>, OwnedFd) = match shared_listener {
        Some(listener) => (None, listener.try_clone()?),
        None => {
            let (a, b) = connection_channel()?;
            (Some(a), b)
        }
    };
    let control_raw = worker_control.as_raw_fd();
    let connections_raw = worker_connections.as_raw_fd();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("serve").env(WORKER_INDEX_ENV, index.to_string());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || place_fds(control_raw, connections_raw));
    }
    let mut child = cmd.spawn()?;
    drop(worker_control);
    drop(worker_connections);
    let pid = child.id();
    tracing::info!(worker = index, pid, "worker started");

    sup_control.set_nonblocking(true)?;
    let control = UnixStream::from_std(sup_control)?;
    let (mut read_half, mut write_half) = control.into_split();
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = control_rx.recv().await {
            if write_half.write_all(&m.encode()).await.is_err() {
                break;
            }
        }
    });
    let reader = {
        let sup = sup.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = read_message_async(&mut read_half).await {
                handle_worker_message(&sup, index, m);
            }
        })
    };
    let passer = match sup_connections {
        Some(fd) => {
            let (tx, rx) = mpsc::unbounded_channel();
            // SAFETY: the AsyncFd owns this fd and nothing else closes or replaces it.
            let channel = unsafe { AsyncFd::register(fd)? };
            let task = tokio::spawn(pass_connections(channel, rx, index, sup.rehome.clone()));
            Some((tx, task))
        }
        None => None,
    };
    {
        let mut slots = sup.slots();
        let slot = &mut slots[index];
        slot.pid = pid;
        slot.ready = false;
        slot.control = Some(control_tx);
        slot.connections = passer.as_ref().map(|(tx, _)| tx.clone());
    }
    // Started while the shutdown collected pids: stop it like the others.
    if let (true, Some(pid)) = (sup.shutting_down.load(Ordering::SeqCst), pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }

    let status = child.wait().await;

    {
        let mut slots = sup.slots();
        let slot = &mut slots[index];
        slot.pid = None;
        slot.ready = false;
        slot.control = None;
        slot.connections = None;
        slot.last_exposition = None;
    }
    sup.readiness_changed();
    writer.abort();
    reader.abort();
    if let Some((tx, task)) = passer {
        // With the slot's sender gone the queue ends; whatever the dead worker never took is
        // re-homed by the passer (its sends fail at once), so let it finish rather than abort.
        drop(tx);
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    status
}

/// In the child between fork and exec: put the control channel at fd 3 and the connection source
/// at fd 4 (dup2 clears close-on-exec), and die with the supervisor.
fn place_fds(control: RawFd, connections: RawFd) -> std::io::Result<()> {
    // SAFETY: plain fd syscalls on fds this process owns; async-signal-safe.
    unsafe {
        // Move both above the target numbers first, so neither dup2 clobbers the other source.
        let c = libc::fcntl(control, libc::F_DUPFD_CLOEXEC, 10);
        let k = libc::fcntl(connections, libc::F_DUPFD_CLOEXEC, 10);
        if c < 0 || k < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(c, CONTROL_FD) < 0 || libc::dup2(k, CONNECTIONS_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn handle_worker_message(sup: &Arc<Supervisor>, index: usize, m: Message) {
    match m {
        Message::WorkerReady => {
            sup.slots()[index].ready = true;
            tracing::debug!(worker = index, "worker ready");
            sup.readiness_changed();
        }
        Message::Exposition { id, text } => {
            let waiter = sup
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(text);
            }
        }
        Message::Scrape { id } => {
            let sup = sup.clone();
            tokio::spawn(async move {
                let text = sup.scrape().await;
                if let Some(tx) = &sup.slots()[index].control {
                    let _ = tx.send(Message::ScrapeReply { id, text });
                }
            });
        }
        other => tracing::warn!(worker = index, "unexpected control message {other:?}"),
    }
}

/// Round-robin balancing: accept here, hand each connection to the next ready worker in turn.
async fn accept_round_robin(
    sup: Arc<Supervisor>,
    listener: tokio::net::TcpListener,
    mut rehome: mpsc::UnboundedReceiver<OwnedFd>,
) {
    let mut ready_rx = sup.ready_workers.subscribe();
    let mut next = 0usize;
    loop {
        // Accept only while some worker can take the connection.
        if ready_rx.wait_for(|n| *n > 0).await.is_err() {
            return;
        }
        let fd = tokio::select! {
            // A worker died with connections queued for it: they go first, they waited longest.
            biased;
            Some(fd) = rehome.recv() => fd,
            accepted = listener.accept() => match accepted.and_then(|(s, _)| s.into_std()) {
                Ok(stream) => OwnedFd::from(stream),
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (placed, after) = hand_round_robin(&sup.slots(), next, fd);
        next = after;
        if let Err(fd) = placed {
            // No worker can take it right now (all dead or just dying): keep it for the next one
            // that is ready rather than closing a connection the client already made.
            let _ = sup.rehome.send(fd);
            let _ = ready_rx.wait_for(|n| *n > 0).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Gives `fd` to the first ready worker at or after `next` whose queue is open; returns the
/// connection back if none takes it, and where the next turn starts.
fn hand_round_robin(slots: &[Slot], next: usize, mut fd: OwnedFd) -> (Result<(), OwnedFd>, usize) {
    let n = slots.len();
    for i in (0..n).map(|k| (next + k) % n) {
        let Some(tx) = slots[i].connections.as_ref().filter(|_| slots[i].ready) else {
            continue;
        };
        // A closed queue means its worker is gone: the send hands the connection back.
        match tx.send(fd) {
            Ok(()) => return (Ok(()), i + 1),
            Err(mpsc::error::SendError(back)) => fd = back,
        }
    }
    (Err(fd), next)
}

/// Sends queued connections to one worker, waiting while its receive queue is full (as Node's
/// primary queues handles for a busy worker). When the worker is gone, closes its queue and
/// re-homes the connection it was sending and every one still queued, so a worker's death costs
/// only the connections it had already taken.
async fn pass_connections(
    channel: AsyncFd<OwnedFd>,
    mut queue: mpsc::UnboundedReceiver<OwnedFd>,
    index: usize,
    rehome: mpsc::UnboundedSender<OwnedFd>,
) {
    while let Some(conn) = queue.recv().await {
        let sent = loop {
            let Ok(mut guard) = channel.writable().await else {
                break false;
            };
            match guard.try_io(|fd| send_fd(fd.as_raw_fd(), conn.as_raw_fd())) {
                Ok(Ok(())) => break true,
                Ok(Err(e)) => {
                    tracing::debug!(worker = index, "cannot pass connection: {e}");
                    break false;
                }
                Err(_would_block) => continue,
            }
        };
        if !sent {
            queue.close();
            let _ = rehome.send(conn);
            while let Some(conn) = queue.recv().await {
                let _ = rehome.send(conn);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    /// A ready slot with an open queue, and the worker's end of that queue.
    fn live_slot() -> (Slot, mpsc::UnboundedReceiver<OwnedFd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = Slot {
            ready: true,
            connections: Some(tx),
            ..Slot::default()
        };
        (slot, rx)
    }

    #[test]
    fn round_robin_takes_turns_and_skips_workers_not_ready() {
        let (a, mut a_rx) = live_slot();
        let (mut b, _b_rx) = live_slot();
        b.ready = false;
        let (c, mut c_rx) = live_slot();
        let slots = [a, b, c];
        let (placed, next) = hand_round_robin(&slots, 1, connection());
        assert!(placed.is_ok());
        assert_eq!(next, 3);
        assert!(c_rx.try_recv().is_ok());
        let (placed, next) = hand_round_robin(&slots, next, connection());
        assert!(placed.is_ok());
        assert_eq!(next, 1);
        assert!(a_rx.try_recv().is_ok());
    }

    #[test]
    fn a_connection_for_a_dead_worker_goes_to_the_next_one() {
        let (a, mut a_rx) = live_slot();
        let (b, mut b_rx) = live_slot();
        // The passer closed worker 0's queue: its worker is gone but not yet reaped.
        a_rx.close();
        let slots = [a, b];
        let (placed, next) = hand_round_robin(&slots, 0, connection());
        assert!(placed.is_ok());
        assert_eq!(next, 2);
        assert!(b_rx.try_recv().is_ok());
    }

    #[test]
    fn with_no_worker_to_take_it_the_connection_comes_back() {
        let (a, mut a_rx) = live_slot();
        a_rx.close();
        let slots = [a, Slot::default()];
        let (placed, next) = hand_round_robin(&slots, 1, connection());
        assert!(placed.is_err(), "the connection is handed back, not closed");
        assert_eq!(next, 1);
    }

    #[tokio::test]
    async fn the_passer_rehomes_what_a_dead_worker_never_took() {
        let (sup_end, worker_end) = connection_channel().unwrap();
        drop(worker_end);
        let (tx, rx) = mpsc::unbounded_channel();
        let (rehome_tx, mut rehome_rx) = mpsc::unbounded_channel();
        for _ in 0..3 {
            tx.send(connection()).unwrap();
        }
        // SAFETY: the AsyncFd owns this fd and nothing else closes or replaces it.
        let channel = unsafe { AsyncFd::register(sup_end).unwrap() };
        pass_connections(channel, rx, 0, rehome_tx).await;
        let mut rehomed = 0;
        while rehome_rx.try_recv().is_ok() {
            rehomed += 1;
        }
        assert_eq!(rehomed, 3);
        assert!(tx.is_closed(), "the dead worker's queue takes nothing more");
        assert!(tx.send(connection()).is_err());
    }
}
