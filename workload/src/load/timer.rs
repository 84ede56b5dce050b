//! A sleep with nanosecond resolution on the runtime's own thread: a Linux timerfd registered
//! with tokio's I/O driver.
//!
//! tokio's timer wheel has a 1 ms tick and rounds every deadline up to it, which would add
//! 0–1 ms to each open-model request's latency (measured from the intended start). A separate
//! timer thread is punctual but needs a second wake-up to hand each request to the runtime. The
//! timerfd wakes the runtime's epoll directly at the deadline: one wake-up, as a blocking client
//! that sleeps has.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A one-shot timer to sleep until an instant with nanosecond resolution.
pub struct PreciseTimer {
    fd: AsyncFd<RawTimerFd>,
}

/// The timerfd, exposing the raw descriptor tokio's `AsyncFd` registers.
struct RawTimerFd(TimerFd);

impl AsRawFd for RawTimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseTimer {
    /// Creates the timer; must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<PreciseTimer> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        Ok(PreciseTimer {
            // SAFETY: `RawTimerFd` owns the descriptor (an `OwnedFd` inside `TimerFd`), so it stays
            // open and the same for the whole life of the `AsyncFd`, which owns the `RawTimerFd`.
            fd: unsafe { AsyncFd::register_with_interest(RawTimerFd(fd), Interest::READABLE) }
                .map_err(io::Error::from)?,
        })
    }

    /// Sleeps until `deadline` (returns at once if it has passed).
    pub async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let now = Instant::now();
        if deadline <= now {
            return Ok(());
        }
        self.fd
            .get_ref()
            .0
            .set(
                Expiration::OneShot(TimeSpec::from_duration(deadline - now)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let expired = ready.try_io(|fd| {
                let mut expirations = [0u8; 8];
                nix::unistd::read(&fd.get_ref().0, &mut expirations)
                    .map(drop)
                    .map_err(io::Error::from)
            });
            match expired {
                Ok(result) => return result,
                // Spurious readiness: wait again (try_io cleared it).
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn wakes_at_the_deadline_not_at_the_next_millisecond() {
        let timer = PreciseTimer::new().unwrap();
        // A deadline 300 µs past a millisecond boundary of the runtime's clock would be rounded
        // up by tokio's wheel; the timerfd is not. Check it never wakes early, and that over
        // many sleeps it is usually well under a millisecond late.
        let mut late = Vec::new();
        for _ in 0..50 {
            let deadline = Instant::now() + Duration::from_micros(1_300);
            timer.sleep_until(deadline).await.unwrap();
            let woke = Instant::now();
            assert!(woke >= deadline, "woke early");
            late.push(woke - deadline);
        }
        late.sort();
        assert!(
            late[late.len() / 2] < Duration::from_micros(700),
            "median lateness {:?}",
            late[late.len() / 2]
        );
        timer.sleep_until(Instant::now()).await.unwrap();
    }
}
