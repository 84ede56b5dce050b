//! The order in which a worker's loop serves the connections that are ready, as libuv orders
//! them (Node's loop, and uvloop's under uvicorn).
//!
//! libuv polls with level-triggered `epoll`. The kernel puts a level-triggered socket it reports
//! back on the tail of its ready list at once, so at the next `epoll_wait` the sockets the loop
//! served in the iteration before, if they are readable again, come first, in the order they were
//! served; sockets that became readable during that iteration come after them. tokio (through
//! mio) polls edge-triggered, so its loop serves sockets in the order they became readable.
//!
//! The difference shows when CPU work blocks the loop. With 4 `/cpu?ms=10` connections always
//! busy, each iteration serves those 4 (40 ms), and a `/hello` sent at a constant rate arrives
//! during one: Express served it after all 4 `/cpu` of the next iteration in 397 of 405 cases
//! (p50 63 ms), the emulation in arrival order, after 0-3 of them (p50 37 ms). Traced on both
//! with `workload/reference/experiments/ready_order_trace.py` (session 11, see
//! `workload/reference/README.md`). A closed-model `/hello` (1 in flight) shows it too: its
//! connection, opened while the loop is busy, is read after the `/cpu` ones from then on, and the
//! socket an iteration answers last often misses the next `epoll_wait` (see
//! `crate::serve::after_callback`), so it waits two iterations instead of one.
//!
//! The model: a connection's task that did not read from its socket in the loop's previous
//! iteration (it became ready during that one, or is new) defers its first poll of an iteration
//! once, to the back of the run queue, behind the tasks the same `epoll_wait` woke. What counts
//! as an iteration is each time the worker's loop parks ([`next_loop_iteration`], tokio's
//! `on_thread_park`): the polls tokio makes without parking (every 61 tasks, or for tasks that
//! yielded) are part of the iteration they interrupt.
//!
//! "Served" means a read that returned data ([`MarkReads`]), not any poll: a poll that finds the
//! socket empty (a new connection accepted before its request is in, a wake by a timer or by the
//! thread pool) is not epoll reporting the socket, and does not put it at the head of libuv's
//! list. Counting those polls let a closed-model `/hello` connection accepted in the middle of an
//! iteration go first in every later one (`hCCC`, mean 33 ms), where Express reads it after the
//! `/cpu` sockets and, its answer being the iteration's last, it often misses the next
//! `epoll_wait` (`CCCCh CCCC`, mean 50-67 ms in five runs; session 12,
//! `CLOSED=1 ready_order_trace.py`).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// The current iteration of this thread's loop (a worker's loop is one thread).
    static LOOP_ITERATION: Cell<u64> = const { Cell::new(1) };
}

/// Starts the next iteration of this thread's loop: called by tokio before the loop parks, that
/// is before it polls for I/O and waits.
pub fn next_loop_iteration() {
    LOOP_ITERATION.with(|i| i.set(i.get() + 1));
}

/// The current iteration of this thread's loop.
pub fn loop_iteration() -> u64 {
    LOOP_ITERATION.with(Cell::get)
}

/// One connection's place in libuv's order, kept by its task. Pure: the caller passes the
/// iteration, so each rule is tested on its own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadyOrder {
    /// The last iteration in which the connection was served (0: never).
    served_in: u64,
    /// The last iteration in which its first poll was deferred (0: never).
    deferred_in: u64,
}

impl ReadyOrder {
    /// Whether the task, polled in iteration `now`, should go to the back of the run queue
    /// first. Its first poll in an iteration defers if it was not served in the one before; a
    /// deferred poll, or any later poll in the same iteration, goes ahead. A connection served
    /// in this iteration already (a second request, a yield) never defers.
    pub fn defer(&mut self, now: u64) -> bool {
        let served_recently = self.served_in != 0 && self.served_in + 1 >= now;
        if served_recently || self.deferred_in == now {
            return false;
        }
        self.deferred_in = now;
        true
    }

    /// The connection read data (epoll reported its socket) in iteration `now`.
    pub fn served(&mut self, now: u64) {
        self.served_in = now;
    }
}

/// The loop iteration in which a connection's socket last returned data, shared by the socket's
/// wrapper ([`MarkReads`], which sets it) and the connection's task (which reads it after each
/// poll). One task owns both, so the ordering is relaxed.
#[derive(Debug, Default, Clone)]
pub struct ReadMark(Arc<AtomicU64>);

impl ReadMark {
    /// The iteration of the last read that returned data (0: none yet).
    pub fn read_in(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection's socket that marks, in its [`ReadMark`], the loop iteration of each read that
/// returns data. Writes pass through.
#[derive(Debug)]
pub struct MarkReads<T> {
    inner: T,
    mark: ReadMark,
}

impl<T> MarkReads<T> {
    /// Wraps `inner`; the returned mark follows its reads.
    pub fn new(inner: T) -> (Self, ReadMark) {
        let mark = ReadMark::default();
        (
            MarkReads {
                inner,
                mark: mark.clone(),
            },
            mark,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MarkReads<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.mark.0.store(loop_iteration(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MarkReads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Polls `future` once with a waker that does nothing: how the tests of a connection's task and
/// socket (here and in `worker`) step them without a runtime's scheduling.
#[cfg(test)]
pub(crate) fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_defers_its_first_poll_once() {
        let mut order = ReadyOrder::default();
        assert!(
            order.defer(5),
            "a connection never served goes behind the ones served before"
        );
        assert!(!order.defer(5), "its deferred poll goes ahead");
        order.served(5);
        assert!(!order.defer(5), "more polls in the same iteration go ahead");
    }

    #[test]
    fn a_connection_served_in_the_previous_iteration_goes_first() {
        let mut order = ReadyOrder::default();
        order.served(7);
        assert!(
            !order.defer(8),
            "served in 7: level-triggered epoll reports it first in 8"
        );
        order.served(8);
        assert!(!order.defer(9));
    }

    #[test]
    fn a_connection_that_became_ready_during_an_iteration_goes_after() {
        let mut order = ReadyOrder::default();
        order.served(3);
        // Not ready in 4 (no request): in 5 it is one of the sockets that became readable
        // during 4, behind the ones 4 served.
        assert!(order.defer(5));
        assert!(!order.defer(5));
        order.served(5);
        assert!(!order.defer(6));
    }

    #[tokio::test]
    async fn only_reads_that_return_data_mark_the_iteration() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let (mut server, mark) = MarkReads::new(server);
        let mut client = client;
        let mut buf = [0u8; 16];
        let empty = poll_once(server.read(&mut buf));
        assert!(empty.is_none(), "nothing to read yet");
        assert_eq!(mark.read_in(), 0, "a read that found nothing marks nothing");
        next_loop_iteration();
        client.write_all(b"GET /").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
        assert_eq!(mark.read_in(), loop_iteration());
        let marked = mark.read_in();
        next_loop_iteration();
        server.write_all(b"ok").await.unwrap();
        assert_eq!(mark.read_in(), marked, "writes do not mark");
        drop(client);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(mark.read_in(), marked, "the end of the stream is not data");
    }

    #[test]
    fn iterations_count_per_thread() {
        let before = loop_iteration();
        next_loop_iteration();
        assert_eq!(loop_iteration(), before + 1);
        let other = std::thread::spawn(loop_iteration).join().unwrap();
        assert_eq!(other, 1, "another thread's loop has its own count");
    }
}
