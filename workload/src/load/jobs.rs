//! How requests reach connections: a queue of jobs between whoever decides that a request is
//! due (the open model's timer, the closed model's loops) and the `--connections` workers, each
//! owning one connection.
//!
//! A free worker takes the oldest job; idle workers are woken in the order they went idle, so
//! every connection carries its share of the requests. In the closed model with one loop per
//! connection (the default, and what the operator runs) a loop's next request never needs the
//! queue: see [`keeps_own_job`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::wire_clock::WireTimes;
use crate::report::LoadModel;

/// A request that is due and waits for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// When it became due: the intended start (open model) or the moment its loop started it
    /// (closed model). The open model's latency counts from here, so time spent late or waiting
    /// for a free connection is part of it; the closed model's counts from the first byte
    /// written (see [`latency`]), and this instant only decides whether it is `measured`.
    pub from: Instant,
    /// Whether it belongs to the measured window (warm-up requests are not recorded).
    pub measured: bool,
}

/// The closed model: the next request of a loop whose previous one ended `now`, or `None` once
/// the window has ended (no request starts after it).
pub fn closed_loop_next(now: Instant, window_start: Instant, window_end: Instant) -> Option<Job> {
    (now < window_end).then_some(Job {
        from: now,
        measured: now >= window_start,
    })
}

/// The latency of a request due at `from` that got a response, which the worker saw at `seen`.
///
/// It ends when the last byte of the response was read from the socket (`wire.read`), or at
/// `seen` if that is unknown. It starts at `from` in the open model (coordinated omission
/// corrected: the intended start). In the closed model it starts right before the request's
/// first byte was written (`wire.written`), as wrk measures: the client's own time between a
/// response and the next write — hyper's hand-over to the connection task, the wait in the
/// runtime's queue, and, with more loops than connections, the wait for a free connection — is
/// not the server's latency and shows up as throughput instead.
pub fn latency(
    model: LoadModel,
    from: Instant,
    wire: Option<WireTimes>,
    seen: Instant,
) -> Duration {
    let start = match (model, wire) {
        (LoadModel::Closed, Some(wire)) => wire.written,
        _ => from,
    };
    let end = wire.and_then(|wire| wire.read).unwrap_or(seen);
    end.saturating_duration_since(start)
}

/// Whether a worker that just finished a closed loop's request sends that loop's next request
/// on its own connection at once, instead of queueing it: only when no other job waits (it
/// would come first) and no worker is idle (it has waited longest for work). With one loop per
/// connection both hold all the time, so the loop and its connection stay together; with more
/// loops than connections the loops take turns, with fewer the connections do.
pub fn keeps_own_job(queued: usize, idle_workers: usize) -> bool {
    queued == 0 && idle_workers == 0
}

/// The queue of due jobs, shared by the producers and the workers.
pub struct JobQueue {
    sender: async_channel::Sender<Job>,
    receiver: async_channel::Receiver<Job>,
    /// Workers waiting in [`JobQueue::next`].
    idle: AtomicUsize,
}

impl Default for JobQueue {
    fn default() -> Self {
        JobQueue::new()
    }
}

impl JobQueue {
    pub fn new() -> JobQueue {
        let (sender, receiver) = async_channel::unbounded();
        JobQueue {
            sender,
            receiver,
            idle: AtomicUsize::new(0),
        }
    }

    /// Queues a due job (the queue is unbounded: the in-flight limit is enforced by the
    /// producers, which count a job as in flight from here).
    pub fn push(&self, job: Job) {
        // The queue owns a sender and a receiver, so it is never closed.
        let _ = self.sender.try_send(job);
    }

    /// The oldest job, waiting for one if there is none.
    pub async fn next(&self) -> Job {
        if let Ok(job) = self.receiver.try_recv() {
            return job;
        }
        self.idle.fetch_add(1, Ordering::AcqRel);
        let job = self.receiver.recv().await;
        self.idle.fetch_sub(1, Ordering::AcqRel);
        job.expect("the queue owns a sender, so it is never closed")
    }

    /// See [`keeps_own_job`].
    pub fn keeps_own_job(&self) -> bool {
        keeps_own_job(self.receiver.len(), self.idle.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn closed_loops_start_nothing_after_the_window() {
        let start = Instant::now();
        let window_start = start + Duration::from_secs(1);
        let window_end = window_start + Duration::from_secs(2);
        let warm = closed_loop_next(start, window_start, window_end).unwrap();
        assert_eq!((warm.from, warm.measured), (start, false));
        let first = closed_loop_next(window_start, window_start, window_end).unwrap();
        assert!(first.measured, "the window includes its first instant");
        let last = window_end - Duration::from_nanos(1);
        assert!(
            closed_loop_next(last, window_start, window_end)
                .unwrap()
                .measured
        );
        assert_eq!(closed_loop_next(window_end, window_start, window_end), None);
    }

    #[test]
    fn latency_counts_from_the_intended_start_or_the_first_byte_written() {
        let due = Instant::now();
        let ms = |n: u64| due + Duration::from_millis(n);
        let wire = |read: Option<Instant>| {
            Some(WireTimes {
                written: ms(3),
                read,
            })
        };
        let seen = ms(12);
        for (model, wire, expected_ms, why) in [
            (
                LoadModel::Open,
                wire(Some(ms(10))),
                10,
                "open: from the intended start, waiting included, to the last byte read",
            ),
            (
                LoadModel::Closed,
                wire(Some(ms(10))),
                7,
                "closed: from the first byte written",
            ),
            (
                LoadModel::Closed,
                wire(None),
                9,
                "no read instant: until the worker saw the response",
            ),
            (
                LoadModel::Closed,
                None,
                12,
                "no wire instants: from when it was due",
            ),
        ] {
            assert_eq!(
                latency(model, due, wire, seen),
                Duration::from_millis(expected_ms),
                "{why}"
            );
        }
    }

    #[test]
    fn a_loop_keeps_its_connection_only_when_nobody_waits() {
        assert!(keeps_own_job(0, 0));
        assert!(!keeps_own_job(1, 0), "an older job goes first");
        assert!(!keeps_own_job(0, 1), "an idle connection takes its turn");
        assert!(!keeps_own_job(3, 2));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_come_out_oldest_first_and_idle_workers_are_counted() {
        let queue = std::sync::Arc::new(JobQueue::new());
        let t0 = Instant::now();
        let job = |ms: u64| Job {
            from: t0 + Duration::from_millis(ms),
            measured: true,
        };
        queue.push(job(1));
        queue.push(job(2));
        assert!(!queue.keeps_own_job(), "jobs are waiting");
        assert_eq!(queue.next().await, job(1));
        assert_eq!(queue.next().await, job(2));
        assert!(queue.keeps_own_job());

        // Two workers wait; the first to wait gets the first job.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for worker in 0..2 {
            let (queue, done_tx) = (queue.clone(), done_tx.clone());
            tokio::spawn(async move {
                let job = queue.next().await;
                done_tx.send((worker, job)).unwrap();
            });
            tokio::task::yield_now().await;
        }
        assert_eq!(queue.idle.load(Ordering::Acquire), 2);
        assert!(!queue.keeps_own_job(), "idle workers take their turn");
        queue.push(job(3));
        assert_eq!(done_rx.recv().await.unwrap(), (0, job(3)));
        queue.push(job(4));
        assert_eq!(done_rx.recv().await.unwrap(), (1, job(4)));
        assert!(queue.keeps_own_job());
    }
}
