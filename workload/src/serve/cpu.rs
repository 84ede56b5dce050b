//! Real CPU work, measured in the calling thread's CPU time (never a sleep), so a descheduled
//! thread does not count as working and the emulated request costs what it says on a busy node.

use std::hint::black_box;
use std::time::Duration;

/// CPU time consumed so far by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; this clock exists on every Linux kernel.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins until the calling thread has used `work` more CPU time.
pub fn burn_cpu(work: Duration) {
    let start = thread_cpu_time();
    while thread_cpu_time().saturating_sub(start) < work {
        spin();
    }
}

/// A few microseconds of arithmetic the optimizer cannot remove.
fn spin() {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..256 {
        x = black_box(x.rotate_left(5) ^ x.wrapping_mul(31));
    }
    black_box(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_cpu_consumes_at_least_the_requested_thread_cpu_time() {
        let before = thread_cpu_time();
        burn_cpu(Duration::from_millis(30));
        let used = thread_cpu_time() - before;
        assert!(used >= Duration::from_millis(30), "used {used:?}");
        // Overshoot is one spin plus one clock read: far below a millisecond of CPU.
        assert!(used < Duration::from_millis(35), "used {used:?}");
    }

    #[test]
    fn burning_zero_returns_at_once() {
        let before = thread_cpu_time();
        burn_cpu(Duration::ZERO);
        assert!(thread_cpu_time() - before < Duration::from_millis(1));
    }
}
