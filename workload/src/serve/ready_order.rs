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
//! `workload/reference/README.md`). A closed-model `/hello` does not show it: its connection is
//! served every iteration, so it is always among the first.
//!
//! The model: a connection's task that was not polled in the loop's previous iteration (it became
//! ready during that one, or is new) defers its first poll of an iteration once, to the back of
//! the run queue, behind the tasks the same `epoll_wait` woke. What counts as an iteration is
//! each time the worker's loop parks ([`next_loop_iteration`], tokio's `on_thread_park`): the
//! polls tokio makes without parking (every 61 tasks, or for tasks that yielded) are part of the
//! iteration they interrupt.

use std::cell::Cell;

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

    /// The task was polled (served) in iteration `now`.
    pub fn served(&mut self, now: u64) {
        self.served_in = now;
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

    #[test]
    fn iterations_count_per_thread() {
        let before = loop_iteration();
        next_loop_iteration();
        assert_eq!(loop_iteration(), before + 1);
        let other = std::thread::spawn(loop_iteration).join().unwrap();
        assert_eq!(other, 1, "another thread's loop has its own count");
    }
}
