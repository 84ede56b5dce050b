//! A model of CPython's GIL as CPython 3.11 implements it (`Python/ceval_gil.h`; the reference
//! FastAPI server runs on 3.11, and 3.12's `ceval_gil.c` keeps the same algorithm).
//!
//! One lock per process. A thread runs Python code (here: burns CPU) only while it holds the GIL.
//! The model follows CPython's `take_gil` / `drop_gil` step by step, with the decisions in the
//! pure state machine [`GilState`] and the blocking in [`Gil`] (a mutex and two condition
//! variables, as in CPython):
//!
//! | CPython 3.11 | here |
//! |---|---|
//! | `gil->locked`, `gil->last_holder`, `gil->switch_number`, `gil_drop_request` under `gil->mutex` | [`GilState`] under one mutex |
//! | `take_gil`: if the GIL is free, take it at once — even when other threads are waiting | [`GilState::try_take`]: no queue, no fairness |
//! | otherwise `COND_TIMED_WAIT(gil->cond, interval)` in a loop; after each wait, if it timed out, the GIL is still locked and `switch_number` did not change meanwhile, `SET_GIL_DROP_REQUEST` | [`GilState::wait_ended`]; a waiter woken by a release that finds the GIL taken again starts a fresh interval |
//! | taking it bumps `switch_number` if the taker is not `last_holder`, signals `switch_cond`, and resets a pending drop request | [`GilState::try_take`] |
//! | the holder checks `eval_breaker` between bytecodes and calls `drop_gil` then `take_gil` | [`Gil::run_cpu`] checks every [`CHECK_SLICE`] of CPU |
//! | `drop_gil`: `locked = 0`, `COND_SIGNAL(gil->cond)` (wakes one waiter, whichever the OS picks) | [`GilState::release`], `notify_one` |
//! | `FORCE_SWITCHING`: a thread dropping on request resets the request and waits on `switch_cond` until `last_holder` is another thread | [`Release::AwaitSwitch`], [`GilState::switched_from`] |
//! | a thread blocking in I/O (`Py_BEGIN_ALLOW_THREADS`, uvloop's `with nogil: uv_run`) drops the GIL with no request pending, so it does not wait, and re-takes it for each callback (`with gil`) | [`Gil::hold_on_loop`]: the worker polls each connection's task as one callback, holding the GIL through hyper's parsing, the routing, the request overhead and the write, and drops it between polls |
//!
//! What follows from those rules, and what the earlier FIFO model got wrong: the GIL is not
//! handed to the longest waiter. A release wakes one waiter, which must then be scheduled by the
//! OS; a thread that is already running (the event loop coming back from `epoll_wait` with the
//! next request, or between two of its callbacks) takes the free GIL first, and the waiter, finding
//! it locked again, starts a new interval without asking for a drop. A thread that arrives while a
//! pool thread burns waits at least one interval, and with several pool threads longer: every
//! waiter's timed-out wait sends it behind the others, and the drop request hands the GIL to
//! whichever waiter the OS wakes, not to the one that asked.
//!
//! `workload/reference/gil-micro` runs the same experiment on real CPython and on this model (pool
//! threads burning 10 ms jobs, one thread sleeping and then running a request's Python part); the
//! distributions agree within this machine's noise (see `workload/reference/README.md`). Over
//! HTTP what matters besides these rules is *where* the loop holds the GIL: uvloop runs the
//! framework's work (httptools, Starlette, the write) inside its callbacks, so between two
//! callbacks only libuv's C code runs, for microseconds, and a pool waiter woken by the loop's
//! release rarely wins the GIL in that gap. A model that held the GIL only for the request
//! overhead left hyper's parsing and axum's routing outside it, and pool threads took the GIL in
//! those gaps: `/hello` waited 4-9x longer than on real FastAPI under 4-8 concurrent `/cpu`.
//! Holding it for each poll of a connection ([`Gil::hold_on_loop`]) matches real FastAPI's sweep.
//!
//! `LOOPSCALE_GIL=false` builds a [`Gil::disabled`] model: free-threaded CPython, no serialization.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::serve::cpu::{burn_cpu, thread_cpu_time};

/// How much CPU a holder burns between two checks for a drop request. CPython checks between
/// bytecodes (far finer); 100 µs keeps the check overhead negligible and the hand-off delay far
/// below a 5 ms interval.
pub const CHECK_SLICE: Duration = Duration::from_micros(100);

/// How many times uvloop's loop thread takes and drops the GIL for one HTTP request: libuv calls
/// back into Python (`with gil`) to allocate the read buffer, with the bytes read (httptools
/// parses them, uvicorn schedules the request's task), and from the idle handle that runs the
/// ready queue (the task step: the route, and the answer written with `uv_try_write`). The
/// `gil_micro` experiment runs a request's Python in that many pieces, as its CPython twin does;
/// the server instead holds the GIL per poll of a connection ([`Gil::hold_on_loop`]), in the four
/// loop callbacks session 10 traced on uvicorn (a second, near-empty one besides these three:
/// `crate::serve::routes::THREAD_POOL_LOOP_CALLBACKS`).
pub const LOOP_CALLBACKS_PER_REQUEST: u32 = 3;

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

/// Identifies a thread to the GIL, as CPython's `PyThreadState` pointer does in `last_holder`.
pub type ThreadKey = u64;

/// The calling thread's [`ThreadKey`]: unique for the life of the process.
fn current_thread_key() -> ThreadKey {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: ThreadKey = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    KEY.with(|k| *k)
}

/// What a releasing thread must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Nobody asked for the GIL: carry on (a voluntary release, e.g. around I/O).
    Done,
    /// It was dropped on request: wait until another thread has taken it (`FORCE_SWITCHING`),
    /// so the dropper cannot win it straight back.
    AwaitSwitch,
}

/// The GIL's shared state and CPython's rules for it, without any waiting or clocks, so each
/// hand-off rule is tested on its own. The caller holds the mutex around every call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GilState {
    locked: bool,
    last_holder: Option<ThreadKey>,
    switch_number: u64,
    drop_request: bool,
}

impl GilState {
    /// Takes the GIL if it is free, whoever else is waiting (CPython has no queue). Taking it
    /// from another thread counts as a switch. Taking it also clears a drop request, as CPython
    /// does; CPython needs that because its `drop_gil` resets the request outside the GIL's
    /// mutex, while [`GilState::release`] resets it atomically, so here it is only a safeguard.
    pub fn try_take(&mut self, me: ThreadKey) -> bool {
        if self.locked {
            return false;
        }
        self.locked = true;
        if self.last_holder != Some(me) {
            self.last_holder = Some(me);
            self.switch_number += 1;
        }
        self.drop_request = false;
        true
    }

    /// A waiter's timed wait ended without it getting the GIL: it asks the holder to drop only
    /// if a whole interval passed (`timed_out`) with the GIL locked and no switch since the wait
    /// began (`switch_number_before`). A wake-up by a release, or a switch among other threads,
    /// restarts its interval instead.
    pub fn wait_ended(&mut self, timed_out: bool, switch_number_before: u64) {
        if timed_out && self.locked && self.switch_number == switch_number_before {
            self.drop_request = true;
        }
    }

    /// The holder `me` releases the GIL.
    pub fn release(&mut self, me: ThreadKey) -> Release {
        debug_assert!(self.locked, "released a GIL nobody held");
        self.locked = false;
        self.last_holder = Some(me);
        if self.drop_request {
            self.drop_request = false;
            Release::AwaitSwitch
        } else {
            Release::Done
        }
    }

    /// Whether a thread other than `me` has taken the GIL since `me` released it.
    pub fn switched_from(&self, me: ThreadKey) -> bool {
        self.last_holder != Some(me)
    }

    /// Whether the holder has been asked to drop the GIL (CPython's `gil_drop_request`).
    pub fn drop_requested(&self) -> bool {
        self.drop_request
    }

    /// How many times the GIL passed to a different thread.
    pub fn switch_number(&self) -> u64 {
        self.switch_number
    }

    /// Whether some thread holds the GIL.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Whether `me` holds the GIL.
    pub fn held_by(&self, me: ThreadKey) -> bool {
        self.locked && self.last_holder == Some(me)
    }
}

/// The per-process GIL (or its absence).
pub struct Gil {
    inner: Option<Inner>,
    observer: Option<WaitObserver>,
}

struct Inner {
    switch_interval: Duration,
    state: Mutex<GilState>,
    /// CPython's `gil->cond`: signalled (one waiter) whenever the GIL is released.
    released: Condvar,
    /// CPython's `gil->switch_cond`: signalled whenever a thread takes the GIL.
    taken: Condvar,
}

impl Gil {
    /// A GIL with CPython 3.11's rules and this switch interval (`sys.setswitchinterval`).
    pub fn enabled(switch_interval: Duration) -> Self {
        Gil {
            inner: Some(Inner {
                // CPython's INTERVAL is at least 1 µs; a zero timeout would spin.
                switch_interval: switch_interval.max(Duration::from_micros(1)),
                state: Mutex::new(GilState::default()),
                released: Condvar::new(),
                taken: Condvar::new(),
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

    /// How many times the GIL passed from one thread to another.
    pub fn switches(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| lock(&i.state).switch_number())
    }

    /// Runs `work` of CPU on the calling thread as Python code would: holding the GIL, dropping it
    /// when a waiter asks (after waiting a switch interval), and taking it again for the rest.
    /// Blocks the calling thread while it waits (on the loop thread that is the point).
    pub fn run_cpu(&self, thread: GilThread, work: Duration) {
        let Some(inner) = &self.inner else {
            burn_cpu(work);
            return;
        };
        let me = current_thread_key();
        self.holding(inner, me, thread, || {
            let mut remaining = work;
            while !remaining.is_zero() {
                let before = thread_cpu_time();
                burn_cpu(remaining.min(CHECK_SLICE));
                remaining = remaining.saturating_sub(thread_cpu_time() - before);
                if !remaining.is_zero() && lock(&inner.state).drop_requested() {
                    drop_gil(inner, me);
                    self.take(inner, me, thread);
                }
            }
        });
    }

    /// Runs `callback` as uvloop runs a callback into Python: holding the GIL throughout (taken
    /// first, waiting as CPython's `take_gil` does) and dropping it afterwards. CPU work inside
    /// it (the request overhead, `/cpu-inline`) honours drop requests as the eval loop does.
    pub fn hold_on_loop<R>(&self, callback: impl FnOnce() -> R) -> R {
        let Some(inner) = &self.inner else {
            return callback();
        };
        self.holding(inner, current_thread_key(), GilThread::Loop, callback)
    }

    /// Runs `f` holding the GIL: taken first, and dropped afterwards, unless `me` already holds
    /// it (a loop callback, see [`Gil::hold_on_loop`]); then `f` runs inside that hold and leaves
    /// it held.
    fn holding<R>(
        &self,
        inner: &Inner,
        me: ThreadKey,
        thread: GilThread,
        f: impl FnOnce() -> R,
    ) -> R {
        let held_already = lock(&inner.state).held_by(me);
        if !held_already {
            self.take(inner, me, thread);
        }
        let out = f();
        if !held_already {
            drop_gil(inner, me);
        }
        out
    }

    /// The event loop's Python part of one request (the framework's per-request cost), run as
    /// uvloop runs it: not one GIL section but one per libuv callback ([`LOOP_CALLBACKS_PER_REQUEST`]
    /// of them: reading the socket, parsing, the task step that runs the route and writes the
    /// answer), each taking the GIL and dropping it voluntarily. Between two callbacks the loop
    /// takes the GIL back at once, before the waiter its release woke is running, so that waiter
    /// finds it locked and starts a fresh interval instead of asking for a drop: while the loop is
    /// busy, every release restarts a pool thread's clock, and the loop keeps the GIL until a pool
    /// thread wins it in a gap between requests.
    pub fn run_on_loop_per_request(&self, work: Duration) {
        if self.inner.is_none() {
            burn_cpu(work);
            return;
        }
        let section = work / LOOP_CALLBACKS_PER_REQUEST;
        let last = work - section * (LOOP_CALLBACKS_PER_REQUEST - 1);
        for i in 0..LOOP_CALLBACKS_PER_REQUEST {
            let part = if i + 1 == LOOP_CALLBACKS_PER_REQUEST {
                last
            } else {
                section
            };
            self.run_cpu(GilThread::Loop, part);
        }
    }

    /// CPython's `take_gil`.
    fn take(&self, inner: &Inner, me: ThreadKey, thread: GilThread) {
        let asked = Instant::now();
        let mut s = lock(&inner.state);
        while !s.try_take(me) {
            let switch_number_before = s.switch_number();
            let (guard, waited) = inner
                .released
                .wait_timeout(s, inner.switch_interval)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            s = guard;
            s.wait_ended(waited.timed_out(), switch_number_before);
        }
        drop(s);
        inner.taken.notify_all();
        if let Some(observe) = &self.observer {
            observe(thread, asked.elapsed());
        }
    }
}

/// CPython's `drop_gil`, with `FORCE_SWITCHING`.
fn drop_gil(inner: &Inner, me: ThreadKey) {
    let mut s = lock(&inner.state);
    let release = s.release(me);
    inner.released.notify_one();
    if release == Release::AwaitSwitch {
        // The waiter that asked is still waiting (waiters leave only with the GIL), so someone
        // takes it.
        while !s.switched_from(me) {
            s = inner
                .taken
                .wait(s)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

fn lock(state: &Mutex<GilState>) -> MutexGuard<'_, GilState> {
    // A panic while holding this small lock leaves consistent state (no invariant spans a panic
    // point), so recovering from poison is safe and keeps the server serving.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    const LOOP: ThreadKey = 1;
    const POOL_A: ThreadKey = 2;
    const POOL_B: ThreadKey = 3;

    #[test]
    fn a_free_gil_goes_to_whoever_asks_first_even_past_waiters() {
        let mut s = GilState::default();
        assert!(s.try_take(POOL_A));
        // POOL_B waits; the holder releases voluntarily; the loop thread, already running,
        // asks before POOL_B is scheduled and gets it: there is no queue.
        assert!(!s.try_take(POOL_B));
        assert_eq!(s.release(POOL_A), Release::Done);
        assert!(s.try_take(LOOP));
        // POOL_B wakes up, finds it locked again and goes back to waiting.
        assert!(!s.try_take(POOL_B));
        assert!(s.is_locked());
    }

    #[test]
    fn a_waiter_asks_for_a_drop_only_after_a_full_interval_under_one_holder() {
        let mut s = GilState::default();
        assert!(s.try_take(POOL_A));
        // Woken early (a release it lost, a spurious wake-up): no request, the interval restarts.
        let before = s.switch_number();
        s.wait_ended(false, before);
        assert!(!s.drop_requested());
        // A whole interval under the same holder: request.
        s.wait_ended(true, before);
        assert!(s.drop_requested());
    }

    #[test]
    fn a_switch_during_the_wait_cancels_the_request_for_that_interval() {
        let mut s = GilState::default();
        assert!(s.try_take(POOL_A));
        let before = s.switch_number();
        // During LOOP's wait the GIL passed from POOL_A to POOL_B.
        assert_eq!(s.release(POOL_A), Release::Done);
        assert!(s.try_take(POOL_B));
        s.wait_ended(true, before);
        assert!(!s.drop_requested(), "the holder changed during the wait");
        // The next interval under POOL_B alone does ask.
        let before = s.switch_number();
        s.wait_ended(true, before);
        assert!(s.drop_requested());
    }

    #[test]
    fn a_timeout_that_finds_the_gil_free_asks_nothing() {
        let mut s = GilState::default();
        assert!(s.try_take(POOL_A));
        let before = s.switch_number();
        assert_eq!(s.release(POOL_A), Release::Done);
        s.wait_ended(true, before);
        assert!(!s.drop_requested());
        assert!(s.try_take(LOOP));
    }

    #[test]
    fn a_requested_drop_waits_until_another_thread_took_the_gil() {
        let mut s = GilState::default();
        assert!(s.try_take(POOL_A));
        let before = s.switch_number();
        s.wait_ended(true, before);
        assert_eq!(s.release(POOL_A), Release::AwaitSwitch);
        assert!(!s.drop_requested(), "the dropper resets the request");
        assert!(!s.switched_from(POOL_A));
        assert!(s.try_take(LOOP));
        assert!(s.switched_from(POOL_A));
        assert_eq!(s.switch_number(), before + 1);
    }

    #[test]
    fn a_voluntary_release_does_not_wait_and_retaking_is_not_a_switch() {
        let mut s = GilState::default();
        assert!(s.try_take(LOOP));
        let switches = s.switch_number();
        assert_eq!(s.release(LOOP), Release::Done);
        assert!(s.try_take(LOOP));
        assert_eq!(s.switch_number(), switches);
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
                            let me = current_thread_key();
                            gil.take(inner, me, GilThread::Pool);
                            probe();
                            burn_cpu(Duration::from_millis(1));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop_gil(inner, me);
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
        while !lock(&gil.inner.as_ref().unwrap().state).is_locked() {
            std::thread::yield_now();
        }
        let asked = Instant::now();
        gil.run_cpu(GilThread::Loop, Duration::from_micros(100));
        let waited = asked.elapsed();
        let holder_was_running = !holder.is_finished();
        holder.join().unwrap();
        // Without the drop request the waiter would wait for all 300 ms of the holder's work;
        // with it, about 5 ms plus scheduling noise.
        assert!(
            holder_was_running,
            "the holder finished before the waiter got in"
        );
        assert!(waited < Duration::from_millis(150), "waited {waited:?}");
        assert!(gil.switches() >= 2);
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
        // 200 ms of CPU in turns of ~5 ms: dozens of switches; without forced switching, at most 2.
        let switches = gil.switches();
        assert!(switches >= 10, "only {switches} switches");
    }

    #[test]
    fn the_loops_part_of_a_request_takes_the_gil_once_per_uvloop_callback() {
        let takes = Arc::new(AtomicUsize::new(0));
        let counted = takes.clone();
        let gil = Gil::enabled(Duration::from_millis(5)).with_wait_observer(Box::new(
            move |thread, _| {
                assert_eq!(thread, GilThread::Loop);
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ));
        let before = thread_cpu_time();
        gil.run_on_loop_per_request(Duration::from_millis(3));
        assert!(thread_cpu_time() - before >= Duration::from_millis(3));
        assert_eq!(
            takes.load(Ordering::SeqCst),
            LOOP_CALLBACKS_PER_REQUEST as usize
        );
        assert!(!lock(&gil.inner.as_ref().unwrap().state).is_locked());
    }

    #[test]
    fn the_holder_is_known_until_it_releases() {
        let mut s = GilState::default();
        assert!(!s.held_by(LOOP));
        assert!(s.try_take(LOOP));
        assert!(s.held_by(LOOP));
        assert!(!s.held_by(POOL_A));
        assert_eq!(s.release(LOOP), Release::Done);
        assert!(!s.held_by(LOOP), "last_holder stays, but nobody holds it");
    }

    #[test]
    fn cpu_work_inside_a_loop_callback_runs_in_its_hold() {
        let takes = Arc::new(AtomicUsize::new(0));
        let counted = takes.clone();
        let gil =
            Gil::enabled(Duration::from_millis(5)).with_wait_observer(Box::new(move |_, _| {
                counted.fetch_add(1, Ordering::SeqCst);
            }));
        let me = current_thread_key();
        let state = |gil: &Gil| lock(&gil.inner.as_ref().unwrap().state).clone();
        let answer = gil.hold_on_loop(|| {
            assert!(state(&gil).held_by(me));
            gil.run_cpu(GilThread::Loop, Duration::from_millis(1));
            gil.run_cpu(GilThread::Loop, Duration::from_millis(1));
            assert!(state(&gil).held_by(me), "the callback still holds it");
            42
        });
        assert_eq!(answer, 42);
        assert_eq!(
            takes.load(Ordering::SeqCst),
            1,
            "one take for the whole callback"
        );
        assert!(!state(&gil).is_locked(), "dropped after the callback");
        // A nested hold (a callback polled from inside another) does not take it twice.
        gil.hold_on_loop(|| gil.hold_on_loop(|| assert!(state(&gil).held_by(me))));
        assert_eq!(takes.load(Ordering::SeqCst), 2);
        assert!(!state(&gil).is_locked());
    }

    #[test]
    fn a_loop_callback_burning_cpu_yields_to_a_pool_thread_that_asks_and_gets_it_back() {
        let gil = Arc::new(Gil::enabled(Duration::from_millis(2)));
        let me = current_thread_key();
        let pool = gil.hold_on_loop(|| {
            let pool_gil = gil.clone();
            let pool = std::thread::spawn(move || {
                pool_gil.run_cpu(GilThread::Pool, Duration::from_millis(5));
            });
            // Burn in 1 ms pieces (bounded) until the pool thread has asked, been handed the GIL
            // and the loop has asked it back: loop -> pool -> loop.
            for _ in 0..5_000 {
                if gil.switches() >= 3 {
                    break;
                }
                gil.run_cpu(GilThread::Loop, Duration::from_millis(1));
            }
            assert!(
                lock(&gil.inner.as_ref().unwrap().state).held_by(me),
                "the callback holds it again after yielding"
            );
            pool
        });
        // Joined outside the hold: the pool thread may still need the GIL to finish.
        pool.join().unwrap();
        assert!(gil.switches() >= 3, "only {} switches", gil.switches());
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
