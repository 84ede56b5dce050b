//! A model of CPython's GIL (the "new GIL" of CPython 3.2+, `Python/ceval_gil.c`).
//!
//! One lock per process. A thread runs Python code (here: burns CPU) only while it holds the GIL.
//! A thread that wants the GIL and has waited a whole switch interval (default 5 ms,
//! `sys.setswitchinterval`) without the holder changing asks for it; the holder notices at its
//! next check (CPython: the eval breaker between bytecodes; here: every [`CHECK_SLICE`] of CPU),
//! drops it, and queues again behind the waiters (forced switching). Hand-off is FIFO, which is
//! what CPython's forced switching achieves in practice. The event-loop thread competes like any
//! other thread: it needs the GIL for every request's Python part and for CPU work called inline
//! from an `async def` route, and blocks while it waits — that is what makes CPU work in the pool
//! slow the loop down.
//!
//! `LOOPSCALE_GIL=false` builds a [`Gil::disabled`] model: free-threaded CPython, no serialization.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::serve::cpu::{burn_cpu, thread_cpu_time};

/// How much CPU a holder burns between two checks for a drop request. CPython checks between
/// bytecodes (far finer); 200 µs keeps the check overhead negligible and the hand-off delay well
/// below a 5 ms interval.
pub const CHECK_SLICE: Duration = Duration::from_micros(200);

/// Which kind of thread waited, for the `thread` label of `loopscale_gil_wait_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilThread {
    /// The event-loop thread (request overhead, `/cpu-inline`).
    Loop,
    /// A thread-pool thread (`def` routes).
    Pool,
}

/// Receives each acquisition's wait, so the metrics module can record it without this model
/// depending on Prometheus.
pub type WaitObserver = Box<dyn Fn(GilThread, Duration) + Send + Sync>;

/// The per-process GIL (or its absence).
pub struct Gil {
    inner: Option<Inner>,
    observer: Option<WaitObserver>,
}

struct Inner {
    switch_interval: Duration,
    state: Mutex<State>,
    handed_over: Condvar,
}

#[derive(Default)]
struct State {
    /// Ticket of the thread holding the GIL.
    holder: Option<u64>,
    /// When the current holder got it (CPython's waiter timer restarts on every switch).
    held_since: Option<Instant>,
    /// Waiters in arrival order with the time each started waiting.
    waiters: VecDeque<(u64, Instant)>,
    next_ticket: u64,
    switches: u64,
}

/// The holder's duty to drop the GIL: someone waits, and neither the waiter nor the holder has
/// been in its position for less than a switch interval. Pure, so the rule is tested on its own.
pub fn drop_requested(
    now: Instant,
    held_since: Instant,
    oldest_waiter_since: Option<Instant>,
    switch_interval: Duration,
) -> bool {
    match oldest_waiter_since {
        None => false,
        Some(waiting_since) => now.duration_since(held_since.max(waiting_since)) >= switch_interval,
    }
}

impl Gil {
    /// A GIL with CPython's forced-switching rule.
    pub fn enabled(switch_interval: Duration) -> Self {
        Gil {
            inner: Some(Inner {
                switch_interval,
                state: Mutex::new(State::default()),
                handed_over: Condvar::new(),
            }),
            observer: None,
        }
    }

    /// No GIL: free-threaded CPython. Every call runs at once.
    pub fn disabled() -> Self {
        Gil {
            inner: None,
            observer: None,
        }
    }

    /// Reports every wait for the GIL (including re-acquisitions after a forced switch).
    pub fn with_wait_observer(mut self, observer: WaitObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Whether this models a GIL at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// How many times the GIL passed from one thread to a waiting one.
    pub fn switches(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| lock(&i.state).switches)
    }

    /// Runs `work` of CPU on the calling thread as Python code would: holding the GIL, dropping it
    /// when a waiter has waited a switch interval, and queueing again for the rest.
    /// Blocks the calling thread while it waits (on the loop thread that is the point).
    pub fn run_cpu(&self, thread: GilThread, work: Duration) {
        let Some(inner) = &self.inner else {
            burn_cpu(work);
            return;
        };
        let mut ticket = self.acquire(inner, thread);
        let mut remaining = work;
        loop {
            let before = thread_cpu_time();
            burn_cpu(remaining.min(CHECK_SLICE));
            remaining = remaining.saturating_sub(thread_cpu_time() - before);
            if remaining.is_zero() {
                break;
            }
            let must_drop = {
                let s = lock(&inner.state);
                drop_requested(
                    Instant::now(),
                    s.held_since.unwrap_or_else(Instant::now),
                    s.waiters.front().map(|(_, since)| *since),
                    inner.switch_interval,
                )
            };
            if must_drop {
                release(inner, ticket);
                ticket = self.acquire(inner, thread);
            }
        }
        release(inner, ticket);
    }

    fn acquire(&self, inner: &Inner, thread: GilThread) -> u64 {
        let asked = Instant::now();
        let mut s = lock(&inner.state);
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        if s.holder.is_none() && s.waiters.is_empty() {
            s.holder = Some(ticket);
            s.held_since = Some(asked);
        } else {
            s.waiters.push_back((ticket, asked));
            while s.holder != Some(ticket) {
                s = inner
                    .handed_over
                    .wait(s)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        drop(s);
        if let Some(observe) = &self.observer {
            observe(thread, asked.elapsed());
        }
        ticket
    }
}

fn release(inner: &Inner, ticket: u64) {
    let mut s = lock(&inner.state);
    debug_assert_eq!(s.holder, Some(ticket), "released a GIL it did not hold");
    match s.waiters.pop_front() {
        Some((next, _)) => {
            s.holder = Some(next);
            s.held_since = Some(Instant::now());
            s.switches += 1;
            drop(s);
            inner.handed_over.notify_all();
        }
        None => {
            s.holder = None;
            s.held_since = None;
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this small lock leaves consistent state (no invariant spans a panic
    // point), so recovering from poison is safe and keeps the server serving.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn drop_is_requested_only_after_a_full_interval_of_waiting_under_one_holder() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let interval = ms(5);
        assert!(!drop_requested(t0 + ms(100), t0, None, interval));
        // Waiter arrived at 10 ms: not before 15 ms.
        assert!(!drop_requested(
            t0 + ms(14),
            t0,
            Some(t0 + ms(10)),
            interval
        ));
        assert!(drop_requested(t0 + ms(15), t0, Some(t0 + ms(10)), interval));
        // Waiter waiting since 0, but the holder changed at 20 ms: the timer restarts.
        assert!(!drop_requested(
            t0 + ms(22),
            t0 + ms(20),
            Some(t0),
            interval
        ));
        assert!(drop_requested(t0 + ms(25), t0 + ms(20), Some(t0), interval));
    }

    /// Runs `threads` threads that each burn `work` through `gil`, and returns the most threads
    /// ever seen burning at the same time.
    fn max_overlap(gil: Arc<Gil>, threads: usize, work: Duration) -> usize {
        let inside = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (gil, inside, max_seen) = (gil.clone(), inside.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    // Burn in 1 ms pieces, each its own GIL section, recording overlap inside.
                    for _ in 0..work.as_millis() {
                        let probe = || {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            max_seen.fetch_max(now, Ordering::SeqCst);
                        };
                        if let Some(inner) = &gil.inner {
                            let t = gil.acquire(inner, GilThread::Pool);
                            probe();
                            burn_cpu(Duration::from_millis(1));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            release(inner, t);
                        } else {
                            probe();
                            burn_cpu(Duration::from_millis(1));
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        max_seen.load(Ordering::SeqCst)
    }

    #[test]
    fn with_the_gil_on_cpu_work_never_overlaps() {
        let gil = Arc::new(Gil::enabled(Duration::from_millis(5)));
        assert_eq!(max_overlap(gil, 3, Duration::from_millis(60)), 1);
    }

    #[test]
    fn with_the_gil_off_cpu_work_overlaps() {
        // Three threads burning 60 ms each on any machine with 2+ cores overlap at some point.
        assert!(max_overlap(Arc::new(Gil::disabled()), 3, Duration::from_millis(60)) >= 2);
    }

    #[test]
    fn a_waiter_gets_the_gil_after_about_one_switch_interval_not_after_the_holders_work() {
        let waits = Arc::new(Mutex::new(Vec::new()));
        let recorded = waits.clone();
        let gil = Arc::new(
            Gil::enabled(Duration::from_millis(5))
                .with_wait_observer(Box::new(move |_, w| recorded.lock().unwrap().push(w))),
        );
        let holder = {
            let gil = gil.clone();
            std::thread::spawn(move || gil.run_cpu(GilThread::Pool, Duration::from_millis(300)))
        };
        // Let the holder take it, then ask for it with a tiny piece of work.
        while gil
            .inner
            .as_ref()
            .unwrap()
            .state
            .lock()
            .unwrap()
            .holder
            .is_none()
        {
            std::thread::yield_now();
        }
        let asked = Instant::now();
        gil.run_cpu(GilThread::Loop, Duration::from_micros(100));
        let waited = asked.elapsed();
        let holder_was_running = !holder.is_finished();
        holder.join().unwrap();
        // Without hand-off the waiter would wait for all 300 ms of the holder's work; with it,
        // about 5 ms plus scheduling noise.
        assert!(
            holder_was_running,
            "the holder finished before the waiter got in"
        );
        assert!(waited < Duration::from_millis(150), "waited {waited:?}");
        assert!(gil.switches() >= 1);
        assert!(waits.lock().unwrap().len() >= 2);
    }

    #[test]
    fn two_cpu_bound_threads_alternate_every_interval() {
        let gil = Arc::new(Gil::enabled(Duration::from_millis(5)));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let gil = gil.clone();
                std::thread::spawn(move || gil.run_cpu(GilThread::Pool, Duration::from_millis(100)))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // 200 ms of CPU in turns of ~5 ms: dozens of switches; without forced switching, at most 1.
        let switches = gil.switches();
        assert!(switches >= 10, "only {switches} switches");
    }

    #[test]
    fn disabled_gil_never_switches_and_still_does_the_work() {
        let gil = Gil::disabled();
        let before = thread_cpu_time();
        gil.run_cpu(GilThread::Pool, Duration::from_millis(10));
        assert!(thread_cpu_time() - before >= Duration::from_millis(10));
        assert_eq!(gil.switches(), 0);
        assert!(!gil.is_enabled());
    }
}
