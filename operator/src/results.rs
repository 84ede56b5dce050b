//! Step results: merged from the generators' reports (histograms added, never percentiles
//! averaged) and the scaling efficiency of each step against its mode's 1 × 1 baseline. Pure.
use std::collections::BTreeMap;

use loopscale_workload::report::{merge, Report, ReportError};

use crate::crd::{LatencyMs, Mode, Outcome, StepKey, StepResult};

/// What one step measured, before it is keyed and compared with the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Successful responses per second over the measured window, summed over generators.
    pub throughput_rps: f64,
    /// Quantiles of the merged histogram.
    pub latency_ms: LatencyMs,
    /// Requests started in the measured window.
    pub requests: u64,
    /// errors / requests.
    pub error_ratio: f64,
    /// dropped / (requests + dropped).
    pub dropped_ratio: f64,
    /// Longest generator window, seconds.
    pub window_seconds: f64,
    /// Reports merged.
    pub generators: u32,
}

/// Merge the reports of the generators that ran side by side in one step (exact: histograms and
/// counts add) and read the step's figures off the merged report.
pub fn measure(reports: &[Report]) -> Result<Measurement, ReportError> {
    let merged = merge(reports)?;
    let s = &merged.summary;
    Ok(Measurement {
        throughput_rps: s.throughput_rps,
        latency_ms: LatencyMs {
            p50: s.latency_ms.p50,
            p90: s.latency_ms.p90,
            p99: s.latency_ms.p99,
            p999: s.latency_ms.p999,
            max: s.latency_ms.max,
        },
        requests: s.requests,
        error_ratio: merged.error_ratio(),
        dropped_ratio: merged.dropped_ratio(),
        window_seconds: merged.window_secs,
        generators: reports.len() as u32,
    })
}

/// A succeeded step's result (efficiency is filled in by [`apply_scaling_efficiency`]).
pub fn succeeded(key: StepKey, m: Measurement) -> StepResult {
    StepResult {
        key,
        outcome: Outcome::Succeeded,
        reason: None,
        throughput_rps: m.throughput_rps,
        latency_ms: m.latency_ms,
        requests: m.requests,
        error_ratio: m.error_ratio,
        dropped_ratio: m.dropped_ratio,
        scaling_efficiency: None,
        window_seconds: m.window_seconds,
        generators: m.generators,
    }
}

/// A failed step's result: recorded so the step is not retried forever and the reason is visible.
pub fn failed(key: StepKey, reason: impl Into<String>) -> StepResult {
    StepResult {
        key,
        outcome: Outcome::Failed,
        reason: Some(reason.into()),
        throughput_rps: 0.0,
        latency_ms: LatencyMs::default(),
        requests: 0,
        error_ratio: 0.0,
        dropped_ratio: 0.0,
        scaling_efficiency: None,
        window_seconds: 0.0,
        generators: 0,
    }
}

/// Each mode's baseline: the mean throughput of its succeeded 1 process × 1 replica steps over
/// all repetitions (the mean of throughputs is a mean of rates over equal windows, which is
/// sound; it is percentiles that must never be averaged).
pub fn baselines(results: &[StepResult]) -> BTreeMap<Mode, f64> {
    let mut sums: BTreeMap<Mode, (f64, u32)> = BTreeMap::new();
    for r in results {
        if r.outcome == Outcome::Succeeded && r.key.processes == 1 && r.key.replicas == 1 {
            let e = sums.entry(r.key.mode).or_default();
            e.0 += r.throughput_rps;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .filter(|(_, (sum, n))| *n > 0 && *sum > 0.0)
        .map(|(mode, (sum, n))| (mode, sum / f64::from(n)))
        .collect()
}

/// Set every result's scaling efficiency: throughput / (baseline of its mode × processes ×
/// replicas). 1.0 is perfect linear scaling. Absent when the mode has no succeeded 1 × 1 step
/// (not in the matrix, or it failed) and for failed steps. Recomputed over all results whenever
/// one is added, so a baseline repetition measured later updates earlier steps too.
pub fn apply_scaling_efficiency(results: &mut [StepResult]) {
    let base = baselines(results);
    for r in results.iter_mut() {
        r.scaling_efficiency = match (r.outcome, base.get(&r.key.mode)) {
            (Outcome::Succeeded, Some(b)) => {
                Some(r.throughput_rps / (b * f64::from(r.key.total_processes())))
            }
            _ => None,
        };
    }
}

/// Mean throughput per (mode, processes, replicas) over repetitions: what tables and charts show.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSummary {
    /// Mode.
    pub mode: Mode,
    /// Processes per replica.
    pub processes: u32,
    /// Replicas.
    pub replicas: u32,
    /// Succeeded repetitions.
    pub repetitions: u32,
    /// Failed repetitions.
    pub failed: u32,
    /// Mean throughput over succeeded repetitions.
    pub throughput_rps: f64,
    /// Median over repetitions of each repetition's p50 (one value per repetition; with one
    /// repetition it is exactly that step's p50).
    pub p50_ms: f64,
    /// Median over repetitions of each repetition's p99.
    pub p99_ms: f64,
    /// Mean error ratio.
    pub error_ratio: f64,
    /// Mean scaling efficiency, if known.
    pub scaling_efficiency: Option<f64>,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Group results by configuration for the comparison table and the charts, sorted by mode, total
/// processes, processes.
pub fn summarize(results: &[StepResult]) -> Vec<ConfigSummary> {
    let mut groups: BTreeMap<(Mode, u32, u32), Vec<&StepResult>> = BTreeMap::new();
    for r in results {
        groups
            .entry((r.key.mode, r.key.processes, r.key.replicas))
            .or_default()
            .push(r);
    }
    let mut out: Vec<ConfigSummary> = groups
        .into_iter()
        .map(|((mode, processes, replicas), rs)| {
            let ok: Vec<&&StepResult> = rs
                .iter()
                .filter(|r| r.outcome == Outcome::Succeeded)
                .collect();
            let n = ok.len() as f64;
            let mean = |f: &dyn Fn(&StepResult) -> f64| {
                if ok.is_empty() {
                    f64::NAN
                } else {
                    ok.iter().map(|r| f(r)).sum::<f64>() / n
                }
            };
            let effs: Vec<f64> = ok.iter().filter_map(|r| r.scaling_efficiency).collect();
            ConfigSummary {
                mode,
                processes,
                replicas,
                repetitions: ok.len() as u32,
                failed: (rs.len() - ok.len()) as u32,
                throughput_rps: mean(&|r| r.throughput_rps),
                p50_ms: median(&mut ok.iter().map(|r| r.latency_ms.p50).collect::<Vec<_>>()),
                p99_ms: median(&mut ok.iter().map(|r| r.latency_ms.p99).collect::<Vec<_>>()),
                error_ratio: mean(&|r| r.error_ratio),
                scaling_efficiency: (!effs.is_empty())
                    .then(|| effs.iter().sum::<f64>() / effs.len() as f64),
            }
        })
        .collect();
    out.sort_by_key(|c| (c.mode, c.processes * c.replicas, c.processes));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Mode::{EventLoop, ThreadPool};

    fn ok(mode: Mode, p: u32, r: u32, rep: u32, rps: f64) -> StepResult {
        let key = StepKey {
            mode,
            processes: p,
            replicas: r,
            repetition: rep,
        };
        succeeded(
            key,
            Measurement {
                throughput_rps: rps,
                latency_ms: LatencyMs {
                    p50: 1.0,
                    p90: 2.0,
                    p99: rps / 100.0,
                    p999: 4.0,
                    max: 5.0,
                },
                requests: 10,
                error_ratio: 0.0,
                dropped_ratio: 0.0,
                window_seconds: 1.0,
                generators: 1,
            },
        )
    }

    fn report(latencies_us: &[u64], ok: u64, dropped: u64) -> Report {
        use loopscale_workload::report::{new_histogram, Counts, Errors, GeneratorInfo, LoadModel};
        let mut h = new_histogram();
        for &l in latencies_us {
            h.record(l).unwrap();
        }
        let info = GeneratorInfo {
            model: LoadModel::Open,
            rate: Some(100.0),
            concurrency: 10,
            connections: 10,
            keep_alive: true,
            targets: vec!["http://127.0.0.1:1".into()],
            path: "/cpu?ms=1".into(),
            warmup_secs: 0.0,
            duration_secs: 2.0,
        };
        let counts = Counts {
            ok,
            errors: Errors {
                timeout: 1,
                ..Default::default()
            },
            dropped,
        };
        Report::build(info, 2.0, &h, counts, vec![]).unwrap()
    }

    #[test]
    fn measurement_merges_histograms_instead_of_averaging_percentiles() {
        // Generator A: 99 fast requests; generator B: 1 slow one. Averaging their p99s would give
        // ~500 ms; the merged histogram's p99 over 100 requests is still fast.
        let a = report(&[1_000; 99], 99, 0);
        let b = report(&[1_000_000], 1, 9);
        let m = measure(&[a, b]).unwrap();
        assert!(m.latency_ms.p99 < 2.0, "{m:?}");
        assert!(m.latency_ms.max > 990.0, "{m:?}");
        assert_eq!(m.generators, 2);
        assert_eq!(m.requests, 102);
        assert!((m.throughput_rps - 50.0).abs() < 1e-9);
        assert!((m.error_ratio - 2.0 / 102.0).abs() < 1e-9);
        assert!((m.dropped_ratio - 9.0 / 111.0).abs() < 1e-9);
        assert!(measure(&[]).is_err());
    }

    #[test]
    fn efficiency_divides_by_the_baseline_times_total_processes() {
        let mut rs = vec![
            ok(EventLoop, 1, 1, 1, 100.0),
            ok(EventLoop, 2, 2, 1, 300.0),
            ok(ThreadPool, 2, 1, 1, 90.0),
        ];
        apply_scaling_efficiency(&mut rs);
        assert_eq!(rs[0].scaling_efficiency, Some(1.0));
        assert_eq!(rs[1].scaling_efficiency, Some(0.75));
        // No thread-pool baseline: efficiency absent rather than guessed.
        assert_eq!(rs[2].scaling_efficiency, None);
    }

    #[test]
    fn repeated_baselines_are_averaged_and_failed_steps_have_no_efficiency() {
        let mut rs = vec![
            ok(EventLoop, 1, 1, 1, 90.0),
            ok(EventLoop, 1, 1, 2, 110.0),
            ok(EventLoop, 4, 1, 1, 200.0),
            failed(
                StepKey {
                    mode: EventLoop,
                    processes: 1,
                    replicas: 1,
                    repetition: 3,
                },
                "timed out",
            ),
        ];
        apply_scaling_efficiency(&mut rs);
        assert_eq!(rs[2].scaling_efficiency, Some(0.5));
        assert_eq!(rs[3].scaling_efficiency, None);
        assert_eq!(baselines(&rs)[&EventLoop], 100.0);
    }

    #[test]
    fn summaries_average_throughput_over_repetitions_and_take_median_percentiles() {
        let mut rs = vec![
            ok(EventLoop, 1, 1, 1, 100.0),
            ok(EventLoop, 1, 1, 2, 200.0),
            ok(EventLoop, 1, 1, 3, 600.0),
        ];
        apply_scaling_efficiency(&mut rs);
        let s = summarize(&rs);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].throughput_rps, 300.0);
        assert_eq!(s[0].p99_ms, 2.0);
        assert_eq!(s[0].repetitions, 3);
    }
}
