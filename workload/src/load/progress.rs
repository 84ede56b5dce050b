//! The one-line live progress display, shown only when stderr is a terminal (so logs, pipes
//! and CI output stay clean).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::Summary;

/// What the progress line shows at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressState {
    /// `warm-up`, `measuring` or `draining`.
    pub phase: &'static str,
    /// Elapsed time of the whole run and its planned length.
    pub elapsed: Duration,
    pub total: Duration,
    /// Results of the measured window so far and its elapsed length.
    pub summary: Summary,
    pub window_elapsed: Duration,
    pub in_flight: u64,
}

/// Formats the line's message.
pub fn progress_line(state: &ProgressState) -> String {
    let s = &state.summary;
    let window = state.window_elapsed.as_secs_f64();
    let rps = if window > 0.0 {
        s.ok as f64 / window
    } else {
        0.0
    };
    format!(
        "{:9} {:>6.1}/{:.0}s  ok {}  err {}  dropped {}  in flight {}  {:.1} req/s  p50 {:.2} ms  p99 {:.2} ms",
        state.phase,
        state.elapsed.as_secs_f64(),
        state.total.as_secs_f64(),
        s.ok,
        s.errors.total(),
        s.dropped,
        state.in_flight,
        rps,
        s.latency_ms.p50,
        s.latency_ms.p99,
    )
}

/// The live line on stderr, or nothing when stderr is not a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A progress line if stderr is a terminal, otherwise a no-op.
    pub fn for_stderr(total: Duration) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(
            Some(total.as_millis() as u64),
            ProgressDrawTarget::stderr_with_hz(4),
        );
        bar.set_style(
            ProgressStyle::with_template("[{bar:20}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    /// Whether anything is drawn.
    pub fn is_visible(&self) -> bool {
        self.bar.is_some()
    }

    pub fn update(&self, state: &ProgressState) {
        if let Some(bar) = &self.bar {
            bar.set_position(state.elapsed.min(state.total).as_millis() as u64);
            bar.set_message(progress_line(state));
        }
    }

    /// Removes the line, so the summary printed next starts on a clean line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Errors, Latency};

    #[test]
    fn line_shows_phase_rate_errors_and_tail() {
        let state = ProgressState {
            phase: "measuring",
            elapsed: Duration::from_secs(3),
            total: Duration::from_secs(11),
            summary: Summary {
                requests: 410,
                ok: 400,
                throughput_rps: 0.0,
                latency_ms: Latency {
                    p50: 20.1,
                    p99: 45.25,
                    ..Latency::default()
                },
                errors: Errors {
                    status_5xx: 10,
                    ..Errors::default()
                },
                dropped: 2,
            },
            window_elapsed: Duration::from_secs(2),
            in_flight: 7,
        };
        let line = progress_line(&state);
        for needle in [
            "measuring",
            "3.0/11s",
            "ok 400",
            "err 10",
            "dropped 2",
            "in flight 7",
            "200.0 req/s",
            "p99 45.25 ms",
        ] {
            assert!(line.contains(needle), "{needle} in {line}");
        }
    }
}
