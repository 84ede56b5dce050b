//! Prometheus text expositions (the server's `/metrics`, the generator's `--metrics-addr`)
//! read into samples, so tests ask for a metric by name and labels instead of matching text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use prometheus_parse::{Sample, Scrape, Value};

/// The plain-valued samples of one scrape. Histogram buckets are left out; their `_sum` and
/// `_count` series are plain samples and stay.
#[derive(Debug, Clone)]
pub struct Samples {
    samples: Vec<Sample>,
    text: String,
}

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string())))
            .expect("reading lines from a string cannot fail");
        Samples {
            samples: scrape.samples,
            text: text.to_string(),
        }
    }

    /// Sum of the samples of `name` whose labels include every `(label, value)` pair (0 when
    /// none match). Panics when the scrape has no sample of that name at all: a missing metric
    /// is a broken server or a typo, not a zero.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, value)| value).sum()
    }

    /// Like [`Samples::sum`], grouped by the value of `by` (e.g. per `worker`).
    pub fn sum_by(&self, name: &str, by: &str, labels: &[(&str, &str)]) -> BTreeMap<String, f64> {
        let mut groups = BTreeMap::new();
        for (sample, value) in self.matching(name, labels) {
            if let Some(key) = sample.labels.get(by) {
                *groups.entry(key.to_string()).or_insert(0.0) += value;
            }
        }
        groups
    }

    /// The exposition as scraped.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a Sample, f64)> + 'a {
        assert!(
            self.samples.iter().any(|s| s.metric == name),
            "no {name} in the scrape:\n{}",
            self.text
        );
        self.samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some((s, v)),
                Value::Histogram(_) | Value::Summary(_) => None,
            })
    }
}

/// Scrapes `http://addr/metrics` with the minimal client; panics unless it answers 200 with the
/// text format.
pub fn scrape(addr: SocketAddr) -> Samples {
    let answer = super::client::get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type:?}"
    );
    Samples::parse(&answer.body)
}

/// Runs `promtool check metrics` (Debian package `prometheus`) on an exposition: `Err` with
/// promtool's complaint when it finds a problem.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed");
    let mut stdin = promtool.stdin.take().expect("piped stdin");
    let text = exposition.to_string();
    // Written from a thread: promtool may answer before reading everything.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let checked = super::wait_bounded(promtool, std::time::Duration::from_secs(20));
    let _ = writer.join();
    if checked.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        ))
    }
}
