//! The load generator's versioned JSON report and the exact merge of several reports.
//!
//! A report carries its latency histogram serialized (HdrHistogram V2 + DEFLATE, base64, values
//! in microseconds), so reports of generators that ran side by side merge exactly: histograms
//! add bucket by bucket and percentiles are recomputed from the sum, never averaged.
//!
//! Version policy: [`REPORT_VERSION`] is bumped when a field is removed, renamed or changes
//! meaning. Adding a field does not bump it (readers ignore unknown fields, and new fields carry
//! serde defaults so older reports still parse). A reader refuses any other version.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Version of the report format written by this build; readers accept only this version.
pub const REPORT_VERSION: u32 = 1;

/// Lowest latency the histogram tells apart: 1 µs.
pub const HISTOGRAM_LOWEST_US: u64 = 1;
/// Highest latency the histogram records exactly: one hour (larger values are clamped to it).
pub const HISTOGRAM_HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histogram (relative error ≤ 0.1 %).
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Errors reading, building or merging reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The JSON text is not a report.
    #[error("report is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The report was written by a format version this build does not read.
    #[error("report version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// The `histogram` field is not base64.
    #[error("report histogram is not base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The `histogram` field does not hold an HdrHistogram V2 serialization.
    #[error("report histogram cannot be decoded: {0}")]
    HistogramDecode(#[source] hdrhistogram::serialization::DeserializeError),
    /// Serializing the histogram failed.
    #[error("histogram cannot be serialized: {0}")]
    HistogramEncode(#[source] hdrhistogram::serialization::V2DeflateSerializeError),
    /// Adding a histogram into the merged one failed (its values do not fit the standard range).
    #[error("histograms cannot be added: {0}")]
    HistogramAdd(#[source] hdrhistogram::AdditionError),
    /// `merge` was given no reports.
    #[error("no reports to merge")]
    Empty,
    /// Reports measured different things, so merging them would mix unrelated latencies.
    #[error(
        "reports differ in {field} ({first} vs {other}); only runs of the same scenario merge"
    )]
    Mismatch {
        field: &'static str,
        first: String,
        other: String,
    },
}

/// The load model of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LoadModel {
    /// Constant arrival rate; latency from the intended start; late requests are dropped.
    Open,
    /// A fixed number of loops, each sending its next request when the previous one ends.
    Closed,
}

impl std::fmt::Display for LoadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadModel::Open => "open",
            LoadModel::Closed => "closed",
        })
    }
}

/// Echo of the settings a run used, so a report says what it measured.
///
/// In a merged report: `rate`, `concurrency` and `connections` are sums over the generators,
/// `targets` is the union (in order of first appearance), durations are the longest, and
/// `keep_alive` holds only if every generator reused its connections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GeneratorInfo {
    pub model: LoadModel,
    /// Open model: intended requests per second. `None` in the closed model.
    pub rate: Option<f64>,
    /// Closed model: loops; open model: the most requests in flight before new ones are dropped.
    pub concurrency: u64,
    /// Connections in the pool (each carrying one request at a time).
    pub connections: u64,
    /// Whether connections carry more than one request (`--disable-keepalive` makes it false).
    /// Reports written before the flag existed lack it and were keep-alive.
    #[serde(default = "keep_alive_default")]
    pub keep_alive: bool,
    /// Base URLs; each new connection picks one at random.
    pub targets: Vec<String>,
    /// Route and query sent to every target, e.g. `/io?ms=20`.
    pub path: String,
    pub warmup_secs: f64,
    pub duration_secs: f64,
}

fn keep_alive_default() -> bool {
    true
}

/// Requests that failed, by class. A request counts in exactly one class.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Errors {
    /// The TCP connection could not be established (refused, unreachable, reset during connect).
    pub connect: u64,
    /// No complete response within `--timeout` (connect + response).
    pub timeout: u64,
    /// Responses with a 4xx status.
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    pub status_5xx: u64,
    /// Any other I/O or protocol failure on an established connection (closed mid-response, …).
    pub io: u64,
}

impl Errors {
    /// All failed requests.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_4xx + self.status_5xx + self.io
    }

    fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.io += other.io;
    }
}

/// Latency percentiles in milliseconds, computed from the histogram.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Reads the percentiles of a microsecond histogram; all zero when it is empty.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// The headline figures of a run (or of merged runs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Everything that started in the measured window: responses plus failed attempts.
    /// Dropped requests are not included (they never started).
    pub requests: u64,
    /// Responses with a 2xx or 3xx status.
    pub ok: u64,
    /// `ok / window_secs`; for a merged report the sum over the generators.
    pub throughput_rps: f64,
    /// Latency of every request that got an HTTP response (any status), from the histogram.
    /// Open model: measured from the intended start time; closed model: from the first byte
    /// of the request written. Both end at the last byte of the response read.
    pub latency_ms: Latency,
    pub errors: Errors,
    /// Open model: intended requests that were not sent because the in-flight limit was reached.
    pub dropped: u64,
}

/// Outcomes of one second of the measured window.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelineSecond {
    /// Seconds since the end of warm-up (0-based); a request counts in the second it ended.
    pub second: u64,
    /// Requests that ended with a 2xx/3xx response in this second.
    pub completed: u64,
    /// Requests that ended with an error (any class) in this second.
    pub errors: u64,
    /// Open model: requests dropped in this second (by intended start time).
    #[serde(default)]
    pub dropped: u64,
}

/// One load generator's results, or the exact merge of several generators' results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub version: u32,
    pub generator: GeneratorInfo,
    /// Number of generator reports merged into this one (1 for a single run).
    #[serde(default = "one")]
    pub generators: u32,
    /// Length of the measured window (warm-up excluded).
    pub window_secs: f64,
    pub summary: Summary,
    /// One entry per second of the measured window, and beyond it while requests that started
    /// inside it were still finishing.
    pub timeline: Vec<TimelineSecond>,
    /// Base64 of the HdrHistogram V2+DEFLATE serialization; values in microseconds.
    pub histogram: String,
}

fn one() -> u32 {
    1
}

/// Counts of one run, the inputs of [`Report::build`] besides the histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub errors: Errors,
    pub dropped: u64,
}

/// A histogram with the standard bounds every report uses, so any two reports add exactly.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HISTOGRAM_LOWEST_US, HISTOGRAM_HIGHEST_US, HISTOGRAM_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Serializes a histogram as the report's `histogram` field.
pub fn encode_histogram(histogram: &Histogram<u64>) -> Result<String, ReportError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(ReportError::HistogramEncode)?;
    Ok(BASE64.encode(bytes))
}

/// Decodes a report's `histogram` field into a histogram with the standard bounds.
pub fn decode_histogram(encoded: &str) -> Result<Histogram<u64>, ReportError> {
    let bytes = BASE64.decode(encoded).map_err(ReportError::Base64)?;
    let decoded: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(ReportError::HistogramDecode)?;
    // Normalize to the standard bounds so later additions never depend on what a writer chose.
    let mut standard = new_histogram();
    standard.add(&decoded).map_err(ReportError::HistogramAdd)?;
    Ok(standard)
}

/// Builds the per-second timeline from `(second, completed, errors, dropped)` additions,
/// filling seconds without events with zeros, so a chart shows gaps as zero.
pub fn timeline_with_length(
    mut timeline: Vec<TimelineSecond>,
    seconds: u64,
) -> Vec<TimelineSecond> {
    timeline.sort_by_key(|s| s.second);
    let last = timeline.last().map_or(0, |s| s.second + 1).max(seconds);
    let mut full: Vec<TimelineSecond> = (0..last)
        .map(|second| TimelineSecond {
            second,
            ..TimelineSecond::default()
        })
        .collect();
    for entry in timeline {
        let slot = &mut full[entry.second as usize];
        slot.completed += entry.completed;
        slot.errors += entry.errors;
        slot.dropped += entry.dropped;
    }
    full
}

impl Report {
    /// Assembles a single generator's report; the summary is computed from the histogram and
    /// counts, so it can never disagree with them.
    pub fn build(
        generator: GeneratorInfo,
        window_secs: f64,
        histogram: &Histogram<u64>,
        counts: Counts,
        timeline: Vec<TimelineSecond>,
    ) -> Result<Report, ReportError> {
        let seconds = window_secs.max(0.0).ceil() as u64;
        Ok(Report {
            version: REPORT_VERSION,
            generator,
            generators: 1,
            window_secs,
            summary: summarize(histogram, counts, window_secs),
            timeline: timeline_with_length(timeline, seconds),
            histogram: encode_histogram(histogram)?,
        })
    }

    /// Parses a report and refuses versions this build does not understand.
    pub fn from_json(text: &str) -> Result<Report, ReportError> {
        // Check the version before the shape, so a future format is named as such rather than
        // reported as a confusing missing-field error.
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let probe: VersionOnly = serde_json::from_str(text).map_err(ReportError::Json)?;
        if probe.version != REPORT_VERSION {
            return Err(ReportError::UnsupportedVersion {
                found: probe.version,
                supported: REPORT_VERSION,
            });
        }
        serde_json::from_str(text).map_err(ReportError::Json)
    }

    /// The report as pretty-printed JSON (what `load --report` writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The latency histogram (microseconds) with the standard bounds.
    pub fn histogram(&self) -> Result<Histogram<u64>, ReportError> {
        decode_histogram(&self.histogram)
    }

    /// errors.total() / requests; 0 when nothing was sent.
    pub fn error_ratio(&self) -> f64 {
        ratio(self.summary.errors.total(), self.summary.requests)
    }

    /// dropped / (requests + dropped); 0 when nothing was intended.
    pub fn dropped_ratio(&self) -> f64 {
        ratio(
            self.summary.dropped,
            self.summary.requests + self.summary.dropped,
        )
    }

    /// Human-readable summary, as printed by `load` at the end and by `merge`.
    pub fn render_summary(&self) -> String {
        let s = &self.summary;
        let g = &self.generator;
        let l = &s.latency_ms;
        let e = &s.errors;
        let mut out = String::new();
        let rate = g
            .rate
            .map_or(String::new(), |r| format!(", rate {r} req/s"));
        let _ = writeln!(
            out,
            "model        {}{rate}, concurrency {}, connections {}{}, generators {}",
            g.model,
            g.concurrency,
            g.connections,
            if g.keep_alive {
                ""
            } else {
                " (a new one per request)"
            },
            self.generators
        );
        let _ = writeln!(out, "targets      {} {}", g.targets.join(", "), g.path);
        let _ = writeln!(out, "window       {:.3} s", self.window_secs);
        let _ = writeln!(
            out,
            "requests     {} (ok {}, errors {}, dropped {})",
            s.requests,
            s.ok,
            e.total(),
            s.dropped
        );
        let _ = writeln!(out, "throughput   {:.1} req/s", s.throughput_rps);
        let _ = writeln!(
            out,
            "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        let _ = writeln!(
            out,
            "errors       connect {}  timeout {}  4xx {}  5xx {}  io {}",
            e.connect, e.timeout, e.status_4xx, e.status_5xx, e.io
        );
        let _ = writeln!(
            out,
            "ratios       error {:.4}  dropped {:.4}",
            self.error_ratio(),
            self.dropped_ratio()
        );
        out
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Computes the summary from a histogram and counts over a window.
pub fn summarize(histogram: &Histogram<u64>, counts: Counts, window_secs: f64) -> Summary {
    Summary {
        requests: counts.ok + counts.errors.total(),
        ok: counts.ok,
        throughput_rps: if window_secs > 0.0 {
            counts.ok as f64 / window_secs
        } else {
            0.0
        },
        latency_ms: Latency::from_histogram(histogram),
        errors: counts.errors,
        dropped: counts.dropped,
    }
}

/// Merges reports of generators that ran side by side over the same window, exactly:
/// histograms add, counts and timelines add second by second, `window_secs` is the longest
/// window, throughput is the sum of the generators' throughputs.
///
/// Reports must share the model and the path (merging different routes would mix unrelated
/// latencies); anything else in [`GeneratorInfo`] is combined as documented there.
pub fn merge(reports: &[Report]) -> Result<Report, ReportError> {
    let first = reports.first().ok_or(ReportError::Empty)?;
    let mut histogram = new_histogram();
    let mut generator = first.generator.clone();
    generator.rate = None;
    generator.concurrency = 0;
    generator.connections = 0;
    generator.targets.clear();
    let mut counts = Counts::default();
    let mut throughput = 0.0;
    let mut window_secs: f64 = 0.0;
    let mut generators = 0;
    let mut timeline = Vec::new();
    for report in reports {
        if report.version != REPORT_VERSION {
            return Err(ReportError::UnsupportedVersion {
                found: report.version,
                supported: REPORT_VERSION,
            });
        }
        let g = &report.generator;
        if g.model != first.generator.model {
            return Err(ReportError::Mismatch {
                field: "model",
                first: first.generator.model.to_string(),
                other: g.model.to_string(),
            });
        }
        if g.path != first.generator.path {
            return Err(ReportError::Mismatch {
                field: "path",
                first: first.generator.path.clone(),
                other: g.path.clone(),
            });
        }
        histogram
            .add(report.histogram()?)
            .map_err(ReportError::HistogramAdd)?;
        if let Some(rate) = g.rate {
            generator.rate = Some(generator.rate.unwrap_or(0.0) + rate);
        }
        generator.concurrency += g.concurrency;
        generator.connections += g.connections;
        generator.keep_alive &= g.keep_alive;
        for target in &g.targets {
            if !generator.targets.contains(target) {
                generator.targets.push(target.clone());
            }
        }
        generator.warmup_secs = generator.warmup_secs.max(g.warmup_secs);
        generator.duration_secs = generator.duration_secs.max(g.duration_secs);
        counts.ok += report.summary.ok;
        counts.errors.add(&report.summary.errors);
        counts.dropped += report.summary.dropped;
        throughput += report.summary.throughput_rps;
        window_secs = window_secs.max(report.window_secs);
        generators += report.generators;
        timeline.extend(report.timeline.iter().copied());
    }
    let mut summary = summarize(&histogram, counts, window_secs);
    summary.throughput_rps = throughput;
    let seconds = window_secs.ceil() as u64;
    Ok(Report {
        version: REPORT_VERSION,
        generator,
        generators,
        window_secs,
        summary,
        timeline: timeline_with_length(timeline, seconds),
        histogram: encode_histogram(&histogram)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(rate: f64, target: &str) -> GeneratorInfo {
        GeneratorInfo {
            model: LoadModel::Open,
            rate: Some(rate),
            concurrency: 100,
            connections: 10,
            keep_alive: true,
            targets: vec![target.to_string()],
            path: "/io?ms=20".to_string(),
            warmup_secs: 1.0,
            duration_secs: 10.0,
        }
    }

    /// A deterministic pseudo-random latency sample in microseconds (xorshift), skewed so the
    /// tail matters: mostly 1–50 ms, sometimes up to 2 s.
    fn samples(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(100) {
                    50_000 + x % 2_000_000
                } else {
                    1_000 + x % 49_000
                }
            })
            .collect()
    }

    fn report_of(values: &[u64], counts: Counts, window: f64, rate: f64, target: &str) -> Report {
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        let timeline = vec![
            TimelineSecond {
                second: 0,
                completed: counts.ok / 2,
                errors: counts.errors.total().min(1),
                dropped: 0,
            },
            TimelineSecond {
                second: 1,
                completed: counts.ok - counts.ok / 2,
                errors: counts.errors.total() - counts.errors.total().min(1),
                dropped: counts.dropped,
            },
        ];
        Report::build(info(rate, target), window, &h, counts, timeline).unwrap()
    }

    #[test]
    fn histogram_round_trips_through_base64() {
        let mut h = new_histogram();
        for v in samples(7, 5000) {
            h.record(v).unwrap();
        }
        h.record(HISTOGRAM_HIGHEST_US).unwrap();
        let decoded = decode_histogram(&encode_histogram(&h).unwrap()).unwrap();
        assert_eq!(decoded, h);
        assert_eq!(decoded.len(), 5001);
    }

    #[test]
    fn histogram_covers_one_microsecond_to_an_hour_with_three_digits() {
        let mut h = new_histogram();
        h.record(1).unwrap();
        h.record(60_000_000).unwrap();
        h.record(3_600_000_000).unwrap();
        assert!(h.record(3_600_000_000 * 3).is_err(), "beyond the bound");
        // 3 significant digits: 60 s is kept to within 0.1 %.
        let max = h.max();
        assert!((max as f64 - 3_600_000_000.0).abs() / 3_600_000_000.0 < 0.001);
        assert_eq!(h.value_at_quantile(0.0), 1);
    }

    #[test]
    fn summary_comes_from_histogram_and_counts() {
        let values: Vec<u64> = (1..=1000).map(|i| i * 100).collect(); // 0.1 .. 100 ms
        let counts = Counts {
            ok: 990,
            errors: Errors {
                status_5xx: 10,
                timeout: 5,
                ..Errors::default()
            },
            dropped: 5,
        };
        let r = report_of(&values, counts, 10.0, 100.0, "http://a");
        assert_eq!(r.summary.requests, 1005);
        assert_eq!(r.summary.ok, 990);
        assert!((r.summary.throughput_rps - 99.0).abs() < 1e-9);
        let l = r.summary.latency_ms;
        assert!((l.p50 - 50.0).abs() < 0.05, "p50 {}", l.p50);
        assert!((l.p90 - 90.0).abs() < 0.1, "p90 {}", l.p90);
        assert!((l.p99 - 99.0).abs() < 0.1, "p99 {}", l.p99);
        assert!((l.max - 100.0).abs() < 0.1, "max {}", l.max);
        assert!((l.mean - 50.05).abs() < 0.1, "mean {}", l.mean);
        assert!((r.error_ratio() - 15.0 / 1005.0).abs() < 1e-12);
        assert!((r.dropped_ratio() - 5.0 / 1010.0).abs() < 1e-12);
        assert_eq!(r.timeline.len(), 10, "one entry per second of the window");
        assert_eq!(r.timeline[1].dropped, 5);
    }

    #[test]
    fn empty_run_has_zero_latency_and_ratios() {
        let r = report_of(&[], Counts::default(), 0.0, 1.0, "http://a");
        assert_eq!(r.summary.latency_ms, Latency::default());
        assert_eq!(r.error_ratio(), 0.0);
        assert_eq!(r.dropped_ratio(), 0.0);
        assert_eq!(r.summary.throughput_rps, 0.0);
    }

    #[test]
    fn json_round_trip_and_version_check() {
        let counts = Counts {
            ok: 10,
            errors: Errors {
                connect: 1,
                ..Errors::default()
            },
            dropped: 0,
        };
        let r = report_of(&samples(3, 10), counts, 2.0, 5.0, "http://a");
        let text = r.to_json();
        assert_eq!(Report::from_json(&text).unwrap(), r);
        let future = text.replacen("\"version\": 1", "\"version\": 2", 1);
        assert!(matches!(
            Report::from_json(&future),
            Err(ReportError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            Report::from_json("{\"version\": 1}"),
            Err(ReportError::Json(_))
        ));
        let mut garbled = r.clone();
        garbled.histogram = "not base64!".into();
        assert!(matches!(garbled.histogram(), Err(ReportError::Base64(_))));
        garbled.histogram = BASE64.encode(b"not a histogram");
        assert!(matches!(
            garbled.histogram(),
            Err(ReportError::HistogramDecode(_))
        ));
    }

    #[test]
    fn merge_equals_one_histogram_holding_all_samples() {
        let a_values = samples(11, 20_000);
        let b_values = samples(99, 7_000);
        let a_counts = Counts {
            ok: 19_990,
            errors: Errors {
                status_5xx: 10,
                connect: 3,
                ..Errors::default()
            },
            dropped: 2,
        };
        let b_counts = Counts {
            ok: 7_000,
            errors: Errors {
                timeout: 4,
                io: 1,
                status_4xx: 2,
                ..Errors::default()
            },
            dropped: 9,
        };
        let a = report_of(&a_values, a_counts, 10.0, 200.0, "http://a");
        let b = report_of(&b_values, b_counts, 12.0, 100.0, "http://b");
        let merged = merge(&[a.clone(), b.clone()]).unwrap();

        let mut all = new_histogram();
        for v in a_values.iter().chain(&b_values) {
            all.record(*v).unwrap();
        }
        assert_eq!(merged.histogram().unwrap(), all);
        assert_eq!(merged.summary.latency_ms, Latency::from_histogram(&all));
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.histogram().unwrap().value_at_quantile(q),
                all.value_at_quantile(q)
            );
        }
        assert_eq!(merged.summary.ok, 26_990);
        assert_eq!(merged.summary.requests, 26_990 + 13 + 7);
        assert_eq!(
            merged.summary.errors,
            Errors {
                connect: 3,
                timeout: 4,
                status_4xx: 2,
                status_5xx: 10,
                io: 1
            }
        );
        assert_eq!(merged.summary.dropped, 11);
        assert_eq!(merged.window_secs, 12.0);
        assert!((merged.summary.throughput_rps - (1999.0 + 7000.0 / 12.0)).abs() < 1e-9);
        assert_eq!(merged.generators, 2);
        assert_eq!(merged.generator.rate, Some(300.0));
        assert_eq!(merged.generator.connections, 20);
        assert_eq!(merged.generator.targets, vec!["http://a", "http://b"]);
        assert_eq!(merged.timeline.len(), 12);
        assert_eq!(
            merged.timeline[0].completed,
            a.timeline[0].completed + b.timeline[0].completed
        );
        assert_eq!(merged.timeline[1].dropped, 11);
        let total: u64 = merged.timeline.iter().map(|s| s.completed).sum();
        assert_eq!(total, 26_990);

        // Merging is associative: a merged report merges again like its parts.
        let c = report_of(&samples(5, 300), Counts::default(), 10.0, 10.0, "http://a");
        let nested = merge(&[merged, c.clone()]).unwrap();
        let flat = merge(&[a, b, c]).unwrap();
        assert_eq!(nested, flat);
    }

    #[test]
    fn merge_refuses_nothing_and_mixed_scenarios() {
        assert!(matches!(merge(&[]), Err(ReportError::Empty)));
        let a = report_of(&[1000], Counts::default(), 1.0, 1.0, "http://a");
        let mut b = a.clone();
        b.generator.path = "/cpu?ms=5".into();
        assert!(matches!(
            merge(&[a.clone(), b]),
            Err(ReportError::Mismatch { field: "path", .. })
        ));
        let mut c = a.clone();
        c.generator.model = LoadModel::Closed;
        assert!(matches!(
            merge(&[a, c]),
            Err(ReportError::Mismatch { field: "model", .. })
        ));
    }

    #[test]
    fn single_report_merges_to_itself() {
        let a = report_of(&samples(1, 100), Counts::default(), 3.0, 7.0, "http://a");
        assert_eq!(merge(std::slice::from_ref(&a)).unwrap(), a);
    }

    #[test]
    fn render_summary_names_the_figures() {
        let counts = Counts {
            ok: 99,
            errors: Errors {
                status_5xx: 1,
                ..Errors::default()
            },
            dropped: 0,
        };
        let r = report_of(&[20_000; 100], counts, 1.0, 100.0, "http://a");
        let text = r.render_summary();
        assert!(text.contains("throughput   99.0 req/s"), "{text}");
        assert!(text.contains("p50 20.0"), "{text}");
        assert!(text.contains("5xx 1"), "{text}");
    }
}
