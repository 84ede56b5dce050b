//! The open model's timetable: when each request is intended to start.
//!
//! Intended start times are computed from the run's start instant (`i / rate`), never by adding
//! sleeps, so timer slack and scheduling delays do not accumulate into a lower rate; a late
//! scheduler catches up by sending everything already due, and the lateness shows up in the
//! latency (which is measured from the intended start), as in wrk2.

use std::time::Duration;

/// The intended starts of an open-model run: `rate` per second from offset 0 up to (not
/// including) `warmup + duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenSchedule {
    rate: f64,
    warmup: Duration,
    end: Duration,
}

impl OpenSchedule {
    /// `rate` must be > 0 (the flag validation guarantees it).
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> OpenSchedule {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        OpenSchedule {
            rate,
            warmup,
            end: warmup + duration,
        }
    }

    /// Offset from the run's start at which request `i` is intended to start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Number of requests intended over the whole run (warm-up included).
    pub fn total(&self) -> u64 {
        // The first i with offset(i) >= end; computed, then corrected for float rounding.
        let mut n = (self.end.as_secs_f64() * self.rate).ceil() as u64;
        while n > 0 && self.offset(n - 1) >= self.end {
            n -= 1;
        }
        while self.offset(n) < self.end {
            n += 1;
        }
        n
    }

    /// Whether request `i` belongs to the measured window (intended at or after warm-up's end).
    pub fn is_measured(&self, i: u64) -> bool {
        self.offset(i) >= self.warmup
    }

    /// Requests intended at or before `elapsed` (those that are due).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let mut n = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        while n > 0 && self.offset(n - 1) > elapsed {
            n -= 1;
        }
        while self.offset(n) <= elapsed {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn total_is_rate_times_run_length() {
        let s = OpenSchedule::new(500.0, secs(1.0), secs(5.0));
        assert_eq!(s.total(), 3000);
        let s = OpenSchedule::new(3.0, Duration::ZERO, secs(1.0));
        assert_eq!(s.total(), 3, "at 0, 1/3 and 2/3 s");
        let s = OpenSchedule::new(0.5, Duration::ZERO, secs(3.0));
        assert_eq!(s.total(), 2, "at 0 and 2 s");
        let s = OpenSchedule::new(7.3, secs(0.25), secs(9.9));
        let n = s.total();
        assert!(s.offset(n - 1) < secs(10.15) && s.offset(n) >= secs(10.15));
    }

    #[test]
    fn warm_up_is_decided_by_intended_start() {
        let s = OpenSchedule::new(100.0, secs(1.0), secs(2.0));
        assert!(!s.is_measured(99), "intended at 0.99 s");
        assert!(s.is_measured(100), "intended at 1.00 s");
        let measured = (0..s.total()).filter(|&i| s.is_measured(i)).count();
        assert_eq!(measured, 200, "rate × duration");
    }

    #[test]
    fn offsets_do_not_drift_over_long_runs() {
        let s = OpenSchedule::new(1000.0, Duration::ZERO, secs(3600.0));
        assert_eq!(s.offset(3_600_000), secs(3600.0));
        assert_eq!(s.total(), 3_600_000);
    }

    #[test]
    fn due_counts_requests_at_or_before_now() {
        let s = OpenSchedule::new(10.0, Duration::ZERO, secs(10.0));
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_by(secs(0.05)), 1);
        assert_eq!(s.due_by(secs(0.1)), 2);
        assert_eq!(s.due_by(secs(1.55)), 16);
    }
}
