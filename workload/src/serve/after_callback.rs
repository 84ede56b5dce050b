//! Work a loop callback leaves for when it returns, before the loop serves anything else: where
//! Node does what follows an answer (the response's `finish`, the parser made ready for the
//! connection's next request, `process.nextTick` and microtasks run after every callback).
//!
//! The emulation used to spawn that work as a task of its own, which tokio queues behind every
//! task already woken: with 4 `/cpu` connections and a `/hello` served in one iteration, the five
//! pieces ran together at its end, and the loop polled for I/O 120 µs after its last answer
//! instead of Express's 40-90 µs. That gap decides whether the socket answered last gets its next
//! request in before the poll (level-triggered `epoll` then reports it first, see
//! `crate::serve::ready_order`) or misses the iteration and waits for a whole one more. On
//! Express, a closed-model `/hello` answered last in its iteration missed the next in 57 of 64
//! iterations (42 µs from its answer to the poll); the emulation's, before this, in none (session
//! 12, `CLOSED=1 workload/reference/experiments/ready_order_trace.py`).

use std::cell::RefCell;
use std::collections::VecDeque;

/// Work left for after the current callback.
type Work = Box<dyn FnOnce()>;

thread_local! {
    static AFTER_CALLBACK: RefCell<VecDeque<Work>> = const { RefCell::new(VecDeque::new()) };
}

/// Leaves `work` for when the current loop callback returns.
pub fn after_this_callback(work: impl FnOnce() + 'static) {
    AFTER_CALLBACK.with(|w| w.borrow_mut().push_back(Box::new(work)));
}

/// Runs the work left by the callback that just returned, in the order it was left, including
/// work that work leaves.
pub fn run_after_callback() {
    // Taken one at a time, so that work may leave more without the queue being borrowed.
    while let Some(work) = AFTER_CALLBACK.with(|w| w.borrow_mut().pop_front()) {
        work();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn work_left_runs_once_in_order_on_its_own_thread() {
        let done = Rc::new(RefCell::new(Vec::new()));
        for i in 0..2 {
            let done = done.clone();
            after_this_callback(move || {
                done.borrow_mut().push(i);
                if i == 0 {
                    let done = done.clone();
                    after_this_callback(move || done.borrow_mut().push(2));
                }
            });
        }
        assert!(done.borrow().is_empty(), "left, not run");
        let other = std::thread::spawn(|| {
            let ran = Rc::new(Cell::new(false));
            let flag = ran.clone();
            after_this_callback(move || flag.set(true));
            run_after_callback();
            ran.get()
        });
        assert!(other.join().unwrap(), "another thread runs its own");
        assert!(done.borrow().is_empty(), "not this thread's");
        run_after_callback();
        assert_eq!(*done.borrow(), vec![0, 1, 2]);
        run_after_callback();
        assert_eq!(done.borrow().len(), 3, "each runs once");
    }
}
