//! When a request's bytes actually crossed the socket, as wrk measures latency.
//!
//! hyper's client runs each connection in a task of its own and hands requests and responses
//! over channels, so the instant a worker decides to send and the instant it sees the response
//! include the client's own hops and run-queue waits. wrk's latency runs from right before its
//! `write` of the request to the read that completes the response. [`StampedIo`] wraps the
//! connection's socket and notes, on a [`WireClock`] it shares with the worker, the instant of
//! the first write of an armed request and of the last read that returned response bytes; the
//! worker reads them after the response (one request at a time per connection, no pipelining,
//! so the last read before the response completed is the one that completed it).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `written` before any write of the armed request.
const ARMED: u64 = u64::MAX;
/// Nothing armed, or nothing read yet.
const NONE: u64 = 0;

/// The two instants of one exchange on the wire, shared by a worker and its connection's I/O
/// (an `Arc`, two atomics: the connection task may run on another thread).
#[derive(Debug)]
pub struct WireClock {
    base: Instant,
    /// `NONE`, `ARMED`, or 1 + nanoseconds since `base` of the first write after arming.
    written: AtomicU64,
    /// `NONE` or 1 + nanoseconds since `base` of the last read that returned bytes after the
    /// armed request was written.
    read: AtomicU64,
}

/// What [`WireClock::take`] found for one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireTimes {
    /// Right before the first write of the request that returned bytes written.
    pub written: Instant,
    /// Right after the last read that returned response bytes, if any.
    pub read: Option<Instant>,
}

impl Default for WireClock {
    fn default() -> Self {
        WireClock::new()
    }
}

impl WireClock {
    pub fn new() -> WireClock {
        WireClock {
            base: Instant::now(),
            written: AtomicU64::new(NONE),
            read: AtomicU64::new(NONE),
        }
    }

    /// The next write starts a request: forget the previous exchange's instants.
    pub fn arm(&self) {
        self.read.store(NONE, Ordering::Relaxed);
        self.written.store(ARMED, Ordering::Release);
    }

    /// The exchange's instants, if the armed request was written; disarms.
    pub fn take(&self) -> Option<WireTimes> {
        let written = self.written.swap(NONE, Ordering::AcqRel);
        let read = self.read.swap(NONE, Ordering::AcqRel);
        if written == NONE || written == ARMED {
            return None;
        }
        Some(WireTimes {
            written: self.instant(written),
            read: (read != NONE).then(|| self.instant(read)),
        })
    }

    /// Whether the next write that returns bytes written starts the request.
    fn is_armed(&self) -> bool {
        self.written.load(Ordering::Acquire) == ARMED
    }

    /// A write begun at `at` returned bytes written: the first one after arming is the
    /// request's start.
    fn wrote(&self, at: Instant) {
        let _ = self.written.compare_exchange(
            ARMED,
            self.encode(at),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// A read returned bytes just now: counts only once the armed request was written.
    fn got(&self) {
        let written = self.written.load(Ordering::Acquire);
        if written != NONE && written != ARMED {
            self.read
                .store(self.encode(Instant::now()), Ordering::Release);
        }
    }

    fn encode(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos).unwrap_or(ARMED - 2) + 1
    }

    fn instant(&self, encoded: u64) -> Instant {
        self.base + Duration::from_nanos(encoded - 1)
    }
}

/// A connection's socket that notes its request's and response's instants on a [`WireClock`]
/// (a tokio stream, so hyper gets it through `TokioIo` as any other).
pub struct StampedIo<T> {
    inner: T,
    clock: std::sync::Arc<WireClock>,
}

impl<T> StampedIo<T> {
    pub fn new(inner: T, clock: std::sync::Arc<WireClock>) -> StampedIo<T> {
        StampedIo { inner, clock }
    }
}

impl<T: Unpin> StampedIo<T> {
    /// Runs one write on the inner stream; the first one of an armed request that writes bytes
    /// stamps the instant right before it. The clock is read only then (once per request).
    fn stamped_write(
        &mut self,
        write: impl FnOnce(Pin<&mut T>) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        let at = self.clock.is_armed().then(Instant::now);
        let polled = write(Pin::new(&mut self.inner));
        if let (Some(at), Poll::Ready(Ok(1..))) = (at, &polled) {
            self.clock.wrote(at);
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StampedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.got();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StampedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stamped_write(|inner| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stamped_write(|inner| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A stamped end of an in-memory pipe whose buffer holds `capacity` bytes, and the other end.
    fn pipe(capacity: usize) -> (StampedIo<DuplexStream>, DuplexStream, Arc<WireClock>) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        let clock = Arc::new(WireClock::new());
        (StampedIo::new(ours, clock.clone()), theirs, clock)
    }

    async fn write(io: &mut StampedIo<DuplexStream>, bytes: &[u8]) -> usize {
        io.write(bytes).await.unwrap()
    }

    /// Polls one write once: `None` if it would wait.
    fn try_write(io: &mut StampedIo<DuplexStream>, bytes: &[u8]) -> Option<usize> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(io).poll_write(&mut cx, bytes) {
            Poll::Ready(written) => Some(written.unwrap()),
            Poll::Pending => None,
        }
    }

    async fn read(io: &mut StampedIo<DuplexStream>) -> usize {
        let mut storage = [0u8; 64];
        io.read(&mut storage).await.unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_first_write_after_arming_is_the_start() {
        let (mut io, mut server, clock) = pipe(1024);
        clock.arm();
        assert_eq!(clock.take(), None, "armed, nothing written");

        clock.arm();
        std::thread::sleep(Duration::from_millis(2));
        let before = Instant::now();
        assert_eq!(write(&mut io, b"GET / HTTP/1.1\r\n").await, 16);
        let after = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        write(&mut io, b"\r\n").await;
        let times = clock.take().expect("the armed request was written");
        assert!(
            before <= times.written && times.written <= after,
            "the first write's instant, not the arming's nor the second write's"
        );
        assert_eq!(times.read, None, "no response read");
        assert_eq!(clock.take(), None, "taking disarms");

        let mut request = [0u8; 18];
        server.read_exact(&mut request).await.unwrap();
        write(&mut io, b"unarmed").await;
        assert_eq!(
            clock.take(),
            None,
            "a write that was not armed starts nothing"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_last_read_after_the_write_is_the_end() {
        let (mut io, mut server, clock) = pipe(1024);
        server.write_all(b"stale").await.unwrap();
        clock.arm();
        assert_eq!(read(&mut io).await, 5);
        write(&mut io, b"GET").await;
        let written = Instant::now();
        assert_eq!(
            clock.take().unwrap().read,
            None,
            "a read before the write is no response"
        );

        clock.arm();
        write(&mut io, b"GET").await;
        server.write_all(b"HTTP/1.1 200").await.unwrap();
        assert_eq!(read(&mut io).await, 12);
        std::thread::sleep(Duration::from_millis(2));
        let before_last = Instant::now();
        server.write_all(b" OK").await.unwrap();
        assert_eq!(read(&mut io).await, 3);
        let after_last = Instant::now();
        let times = clock.take().unwrap();
        let end = times.read.expect("response bytes were read");
        assert!(times.written >= written && times.written <= before_last);
        assert!(
            before_last <= end && end <= after_last,
            "the last read's instant, not the first's"
        );

        // The server closes: an end-of-stream read (no bytes) is not a response.
        clock.arm();
        write(&mut io, b"GET").await;
        drop(server);
        assert_eq!(read(&mut io).await, 0);
        assert_eq!(clock.take().unwrap().read, None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_that_waits_is_not_the_start() {
        let (mut io, mut server, clock) = pipe(4);
        assert_eq!(try_write(&mut io, b"fill"), Some(4));
        clock.arm();
        assert_eq!(try_write(&mut io, b"GET"), None, "the pipe is full");
        assert!(
            clock.is_armed(),
            "a write that wrote nothing does not stamp"
        );
        let mut drained = [0u8; 4];
        server.read_exact(&mut drained).await.unwrap();
        let before = Instant::now();
        assert_eq!(try_write(&mut io, b"GET"), Some(3));
        assert!(clock.take().unwrap().written >= before);
    }
}
