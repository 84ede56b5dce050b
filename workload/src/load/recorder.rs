//! Accumulates the measured window's results: latency histogram, counts by class, per-second
//! timeline. Pure state (times are offsets from the start of the measured window), so the
//! bookkeeping rules are unit-tested without I/O; the runner only feeds it.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::outcome::Outcome;
use crate::report::{
    new_histogram, summarize, Counts, GeneratorInfo, Report, ReportError, Summary, TimelineSecond,
    HISTOGRAM_HIGHEST_US,
};

/// Results of the measured window. Warm-up requests never reach it.
#[derive(Debug)]
pub struct Recorder {
    histogram: Histogram<u64>,
    counts: Counts,
    timeline: Vec<TimelineSecond>,
    started: u64,
    finished: u64,
    closed: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            histogram: new_histogram(),
            counts: Counts::default(),
            timeline: Vec::new(),
            started: 0,
            finished: 0,
            closed: false,
        }
    }

    /// A measured request started (it will be finished, or count as a timeout at close).
    pub fn start(&mut self) {
        if !self.closed {
            self.started += 1;
        }
    }

    /// A measured request ended `at` (since the window's start) after `latency`.
    /// Ignored after [`Recorder::close`] (the request was already counted as a timeout);
    /// returns whether it was counted.
    pub fn finish(&mut self, outcome: Outcome, latency: Duration, at: Duration) -> bool {
        if self.closed {
            return false;
        }
        self.finished += 1;
        if outcome.has_response() {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.histogram
                .saturating_record(micros.min(HISTOGRAM_HIGHEST_US));
        }
        let errors = &mut self.counts.errors;
        match outcome {
            Outcome::Ok => self.counts.ok += 1,
            Outcome::Connect => errors.connect += 1,
            Outcome::Timeout => errors.timeout += 1,
            Outcome::Status4xx => errors.status_4xx += 1,
            Outcome::Status5xx => errors.status_5xx += 1,
            Outcome::Io => errors.io += 1,
        }
        let second = self.second(at);
        if outcome == Outcome::Ok {
            second.completed += 1;
        } else {
            second.errors += 1;
        }
        true
    }

    /// An intended request (measured, open model) was not sent: the in-flight limit was reached.
    pub fn drop_request(&mut self, intended_at: Duration) -> bool {
        if self.closed {
            return false;
        }
        self.counts.dropped += 1;
        self.second(intended_at).dropped += 1;
        true
    }

    /// Ends recording `at` (since the window's start): requests still unfinished count as
    /// timeouts, and later completions are ignored. Returns how many were unfinished.
    pub fn close(&mut self, at: Duration) -> u64 {
        if self.closed {
            return 0;
        }
        let unfinished = self.started - self.finished;
        self.counts.errors.timeout += unfinished;
        if unfinished > 0 {
            self.second(at).errors += unfinished;
        }
        self.finished = self.started;
        self.closed = true;
        unfinished
    }

    /// Measured requests started and not yet finished.
    pub fn unfinished(&self) -> u64 {
        self.started - self.finished
    }

    /// Summary of what has been recorded so far, over a window of `window_secs`.
    pub fn summary(&self, window_secs: f64) -> Summary {
        summarize(&self.histogram, self.counts, window_secs)
    }

    /// The report of the run.
    pub fn report(
        &self,
        generator: GeneratorInfo,
        window_secs: f64,
    ) -> Result<Report, ReportError> {
        Report::build(
            generator,
            window_secs,
            &self.histogram,
            self.counts,
            self.timeline.clone(),
        )
    }

    fn second(&mut self, at: Duration) -> &mut TimelineSecond {
        let index = at.as_secs() as usize;
        while self.timeline.len() <= index {
            let second = self.timeline.len() as u64;
            self.timeline.push(TimelineSecond {
                second,
                ..TimelineSecond::default()
            });
        }
        &mut self.timeline[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LoadModel;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn info() -> GeneratorInfo {
        GeneratorInfo {
            model: LoadModel::Open,
            rate: Some(10.0),
            concurrency: 5,
            connections: 5,
            keep_alive: true,
            targets: vec!["http://a:1".into()],
            path: "/".into(),
            warmup_secs: 0.0,
            duration_secs: 3.0,
        }
    }

    #[test]
    fn outcomes_are_counted_by_class_and_second() {
        let mut r = Recorder::new();
        for (outcome, at) in [
            (Outcome::Ok, 100),
            (Outcome::Ok, 900),
            (Outcome::Status5xx, 1200),
            (Outcome::Connect, 1300),
            (Outcome::Timeout, 2500),
            (Outcome::Status4xx, 2600),
            (Outcome::Io, 2700),
        ] {
            r.start();
            assert!(r.finish(outcome, ms(20), ms(at)));
        }
        r.drop_request(ms(2999));
        let report = r.report(info(), 3.0).unwrap();
        let s = &report.summary;
        assert_eq!((s.requests, s.ok, s.dropped), (7, 2, 1));
        let e = s.errors;
        assert_eq!(
            (e.connect, e.timeout, e.status_4xx, e.status_5xx, e.io),
            (1, 1, 1, 1, 1)
        );
        let t: Vec<_> = report
            .timeline
            .iter()
            .map(|s| (s.completed, s.errors, s.dropped))
            .collect();
        assert_eq!(t, [(2, 0, 0), (0, 2, 0), (0, 3, 1)]);
        // Latency only for requests with a response: 2 ok + 4xx + 5xx.
        assert_eq!(report.histogram().unwrap().len(), 4);
    }

    #[test]
    fn latency_is_kept_in_microseconds() {
        let mut r = Recorder::new();
        for latency_us in [20_000u64, 20_100, 20_200, 500_000] {
            r.start();
            r.finish(Outcome::Ok, Duration::from_micros(latency_us), ms(10));
        }
        let h = r.report(info(), 1.0).unwrap().histogram().unwrap();
        assert_eq!(h.min(), 20_000);
        assert!(h.equivalent(h.max(), 500_000));
        assert!(h.equivalent(h.value_at_quantile(0.5), 20_100));
    }

    #[test]
    fn absurd_latency_is_clamped_not_lost() {
        let mut r = Recorder::new();
        r.start();
        r.finish(Outcome::Ok, Duration::from_secs(100_000), ms(1));
        let h = r.report(info(), 1.0).unwrap().histogram().unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.equivalent(h.max(), HISTOGRAM_HIGHEST_US));
    }

    #[test]
    fn unfinished_requests_become_timeouts_at_close() {
        let mut r = Recorder::new();
        for _ in 0..3 {
            r.start();
        }
        r.finish(Outcome::Ok, ms(5), ms(500));
        assert_eq!(r.unfinished(), 2);
        assert_eq!(r.close(ms(4200)), 2);
        assert!(
            !r.finish(Outcome::Ok, ms(5000), ms(5000)),
            "too late: ignored"
        );
        r.start(); // ignored too
        let report = r.report(info(), 3.0).unwrap();
        assert_eq!(report.summary.requests, 3);
        assert_eq!(report.summary.errors.timeout, 2);
        assert_eq!(
            report.timeline.len(),
            5,
            "window of 3 s, drained into second 4"
        );
        assert_eq!(report.timeline[4].errors, 2);
        assert_eq!(report.histogram().unwrap().len(), 1);
    }
}
