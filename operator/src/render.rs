//! Human-facing views of an Experiment's results: the terminal comparison table and the
//! self-contained HTML report with inline SVG charts (no scripts, no external resources, so it
//! opens anywhere, offline). Pure string building.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::crd::{Experiment, Implementation, Mode, Outcome};
use crate::results::{baselines, summarize, ConfigSummary};

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn fmt_num(v: f64, digits: usize) -> String {
    fmt_opt(Some(v), digits)
}

/// Which servers played the modes, in words.
fn servers(experiment: &Experiment) -> String {
    match experiment.spec.workload.implementation {
        Implementation::Emulated => "servers: emulated (loopscale-workload serve)".into(),
        Implementation::Reference => {
            let names: Vec<&str> = experiment
                .spec
                .workload
                .modes
                .iter()
                .map(|m| match m {
                    Mode::EventLoop => "event-loop = real Express (Node cluster)",
                    Mode::ThreadPool => "thread-pool = real FastAPI (uvicorn --workers)",
                })
                .collect();
            format!("servers: reference: {}", names.join(", "))
        }
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The comparison table (mode × processes × replicas: req/s, p50, p99, errors, efficiency), one
/// row per configuration, averaged over repetitions as [`summarize`] describes.
pub fn table(experiment: &Experiment) -> String {
    let status = experiment.status.clone().unwrap_or_default();
    let rows = summarize(&status.results);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>8} {:>5} {:>11} {:>9} {:>9} {:>8} {:>10}",
        "mode",
        "processes",
        "replicas",
        "reps",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "efficiency"
    );
    for r in &rows {
        let reps = if r.failed > 0 {
            format!("{}+{}F", r.repetitions, r.failed)
        } else {
            r.repetitions.to_string()
        };
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>8} {:>5} {:>11} {:>9} {:>9} {:>7}% {:>10}",
            r.mode.as_str(),
            r.processes,
            r.replicas,
            reps,
            fmt_num(r.throughput_rps, 1),
            fmt_num(r.p50_ms, 2),
            fmt_num(r.p99_ms, 2),
            fmt_num(r.error_ratio * 100.0, 2),
            fmt_opt(r.scaling_efficiency, 2),
        );
    }
    for r in status
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
    {
        let _ = writeln!(
            out,
            "failed: {}: {}",
            r.key,
            r.reason.as_deref().unwrap_or("unknown")
        );
    }
    if experiment.spec.workload.implementation == Implementation::Reference {
        let _ = writeln!(out, "{}", servers(experiment));
    }
    if status.partial {
        let _ = writeln!(
            out,
            "PARTIAL: the run was interrupted; {} of {} steps recorded",
            status.completed_steps, status.total_steps
        );
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(mode: Mode) -> &'static str {
    match mode {
        Mode::EventLoop => "#1f77b4",
        Mode::ThreadPool => "#d62728",
    }
}

/// One plotted series: points (x = total processes, y) joined by a line.
struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Round `v` up to a 1/2/5 × 10^n value, for axis tops.
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if v <= m * base {
            return m * base;
        }
    }
    10.0 * base
}

/// A line chart as inline SVG: x = total processes (processes × replicas).
fn line_chart(id: &str, title: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (640.0, 360.0);
    let (left, right, top, bottom) = (70.0, 170.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let x_max = xs.iter().cloned().fold(1.0, f64::max).max(2.0);
    let y_max = nice_ceiling(ys.iter().cloned().fold(0.0, f64::max) * 1.05);
    let sx = |x: f64| left + (x - 1.0) / (x_max - 1.0) * pw;
    let sy = |y: f64| top + ph - y / y_max * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}">"#,
        t = escape(title)
    );
    let _ = write!(svg, r#"<title>{}</title>"#, escape(title));
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        left,
        escape(title)
    );
    // Grid and y ticks.
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let py = sy(y);
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            py + 4.0,
            if y_max >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        );
    }
    // x ticks at every total process count that occurs.
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in &ticks {
        let px = sx(*x);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#999"/><text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle">{x}</text>"##,
            top + ph,
            top + ph + 5.0,
            top + ph + 18.0
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{b:.1}" stroke="#333"/><line x1="{left}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}" stroke="#333"/>"##,
        b = top + ph,
        r = left + pw
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">total processes (processes × replicas)</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    let _ = write!(
        svg,
        r#"<text x="16" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y.min(y_max))))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline class="series" data-series="{}" fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            escape(&s.label),
            s.color,
            pts.join(" ")
        );
        if !s.dashed {
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    svg,
                    r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{}"/>"#,
                    s.color
                );
            }
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + pw + 15.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 22.0,
            s.color,
            lx + 28.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Per mode, the mean of a value over configurations with the same total processes.
fn by_total(
    rows: &[ConfigSummary],
    mode: Mode,
    value: impl Fn(&ConfigSummary) -> f64,
) -> Vec<(f64, f64)> {
    let mut groups: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.mode == mode && r.repetitions > 0) {
        let v = value(r);
        if v.is_finite() {
            let e = groups.entry(r.processes * r.replicas).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    groups
        .into_iter()
        .map(|(x, (sum, n))| (f64::from(x), sum / f64::from(n)))
        .collect()
}

/// The self-contained HTML report: what was run, the charts, the table, every step's result.
pub fn html(experiment: &Experiment) -> String {
    let name = experiment
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "experiment".into());
    let status = experiment.status.clone().unwrap_or_default();
    let spec = &experiment.spec;
    let rows = summarize(&status.results);
    let base = baselines(&status.results);
    let mut modes: Vec<Mode> = rows.iter().map(|r| r.mode).collect();
    modes.dedup();

    let mut throughput = Vec::new();
    let mut p99 = Vec::new();
    for &mode in &modes {
        let pts = by_total(&rows, mode, |r| r.throughput_rps);
        if let Some(b) = base.get(&mode) {
            let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
            throughput.push(Series {
                label: format!("{mode} ideal"),
                color: color(mode),
                dashed: true,
                points: xs.iter().map(|&x| (x, b * x)).collect(),
            });
        }
        throughput.push(Series {
            label: mode.to_string(),
            color: color(mode),
            dashed: false,
            points: pts,
        });
        p99.push(Series {
            label: mode.to_string(),
            color: color(mode),
            dashed: false,
            points: by_total(&rows, mode, |r| r.p99_ms),
        });
    }

    let mut doc = String::new();
    let _ = write!(
        doc,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>loopscale: {n}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f4f4f4; }} td.l, th.l {{ text-align: left; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.partial {{ background: #fff3cd; padding: .5em 1em; border: 1px solid #e0c060; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
<h1>loopscale experiment <code>{n}</code></h1>
"#,
        n = escape(&name)
    );
    let scenario = spec.scenario.request_path();
    let load = match (spec.load.rate, spec.load.concurrency) {
        (Some(rate), _) => format!("open model, {rate} req/s"),
        (_, Some(c)) => format!("closed model, {c} in flight"),
        _ => spec.load.model.as_str().to_string(),
    };
    let _ = writeln!(
        doc,
        "<p>{}. Route <code>{}</code>; {}; {} generator(s); warm-up {}, measured {} per step; {} repetition(s), {} order; GIL {}. Phase <b>{}</b>, {} of {} steps.</p>",
        escape(&capitalized(&servers(experiment))),
        escape(&scenario),
        escape(&load),
        spec.load.generators,
        escape(&spec.load.warmup),
        escape(&spec.load.duration),
        spec.repetitions,
        match spec.order {
            crate::crd::StepOrder::Interleaved => "interleaved",
            crate::crd::StepOrder::Sequential => "sequential",
        },
        if spec.workload.gil { "on" } else { "off (free-threaded)" },
        status.phase.as_str(),
        status.completed_steps,
        status.total_steps
    );
    if status.partial {
        doc.push_str(r#"<p class="partial">Partial results: the run was interrupted before every step finished.</p>"#);
        doc.push('\n');
    }
    doc.push_str(r#"<div class="charts">"#);
    doc.push_str(&line_chart(
        "throughput",
        "Throughput vs total processes",
        "requests / s",
        &throughput,
    ));
    doc.push_str(&line_chart(
        "latency-p99",
        "p99 latency vs total processes",
        "p99 latency (ms)",
        &p99,
    ));
    doc.push_str("</div>\n<p>Dashed: ideal linear scaling from the mode's 1 process × 1 replica throughput. Scaling efficiency = throughput / (that baseline × processes × replicas).</p>\n");

    doc.push_str("<h2>Comparison</h2>\n<table><tr><th class=\"l\">mode</th><th>processes</th><th>replicas</th><th>repetitions</th><th>req/s</th><th>p50 ms</th><th>p99 ms</th><th>errors</th><th>efficiency</th></tr>\n");
    for r in &rows {
        let _ = writeln!(
            doc,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}</td></tr>",
            r.mode,
            r.processes,
            r.replicas,
            r.repetitions,
            if r.failed > 0 { format!(" (+{} failed)", r.failed) } else { String::new() },
            fmt_num(r.throughput_rps, 1),
            fmt_num(r.p50_ms, 2),
            fmt_num(r.p99_ms, 2),
            fmt_num(r.error_ratio * 100.0, 2),
            fmt_opt(r.scaling_efficiency, 2)
        );
    }
    doc.push_str("</table>\n<h2>Every step</h2>\n<table><tr><th class=\"l\">mode</th><th>processes</th><th>replicas</th><th>repetition</th><th class=\"l\">outcome</th><th>req/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max ms</th><th>requests</th><th>errors</th><th>dropped</th><th>efficiency</th></tr>\n");
    for r in &status.results {
        let outcome = match (&r.outcome, &r.reason) {
            (Outcome::Failed, Some(reason)) => format!("Failed: {}", escape(reason)),
            (o, _) => format!("{o:?}"),
        };
        let l = &r.latency_ms;
        let _ = writeln!(
            doc,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{:.2}%</td><td>{:.2}%</td><td>{}</td></tr>",
            r.key.mode,
            r.key.processes,
            r.key.replicas,
            r.key.repetition,
            outcome,
            r.throughput_rps,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            r.requests,
            r.error_ratio * 100.0,
            r.dropped_ratio * 100.0,
            fmt_opt(r.scaling_efficiency, 2)
        );
    }
    doc.push_str("</table>\n</body></html>\n");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExperimentStatus, LatencyMs, StepKey};
    use crate::results::{apply_scaling_efficiency, failed, succeeded, Measurement};
    use crate::validation::validate_manifest;

    fn experiment() -> Experiment {
        let mut e = validate_manifest(
            r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {name: "a<b"}
spec:
  workload: {modes: [event-loop, thread-pool]}
  scenario: {route: cpu, cpuMillis: 10}
  matrix: {processes: [1, 2], replicas: [1]}
  load: {model: closed, concurrency: 8}
"#
            .replace("a<b", "render")
            .as_str(),
        )
        .unwrap();
        let mut results = Vec::new();
        for (mode, p, rps) in [
            (Mode::EventLoop, 1, 100.0),
            (Mode::EventLoop, 2, 190.0),
            (Mode::ThreadPool, 1, 95.0),
        ] {
            results.push(succeeded(
                StepKey {
                    mode,
                    processes: p,
                    replicas: 1,
                    repetition: 1,
                },
                Measurement {
                    throughput_rps: rps,
                    latency_ms: LatencyMs {
                        p50: 40.0,
                        p90: 50.0,
                        p99: 60.0,
                        p999: 70.0,
                        max: 80.0,
                    },
                    requests: 1000,
                    error_ratio: 0.0,
                    dropped_ratio: 0.0,
                    window_seconds: 10.0,
                    generators: 1,
                },
            ));
        }
        results.push(failed(
            StepKey {
                mode: Mode::ThreadPool,
                processes: 2,
                replicas: 1,
                repetition: 1,
            },
            "timed out <soon>",
        ));
        apply_scaling_efficiency(&mut results);
        e.status = Some(ExperimentStatus {
            results,
            completed_steps: 4,
            total_steps: 4,
            ..Default::default()
        });
        e
    }

    #[test]
    fn the_table_has_one_row_per_configuration_with_efficiency() {
        let t = table(&experiment());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("efficiency"));
        assert!(
            lines[2].starts_with("event-loop")
                && lines[2].contains("190.0")
                && lines[2].contains("0.95"),
            "{t}"
        );
        assert!(t.contains("failed: thread-pool processes=2"), "{t}");
    }

    #[test]
    fn the_html_report_holds_both_charts_with_a_line_per_mode_and_the_ideal() {
        let h = html(&experiment());
        assert_eq!(h.matches("<svg").count(), 2);
        assert!(h.contains(r#"data-series="event-loop""#));
        assert!(h.contains(r#"data-series="event-loop ideal""#));
        assert!(h.contains(r#"data-series="thread-pool""#));
        assert!(h.contains("timed out &lt;soon&gt;"));
        assert!(!h.contains("<script"));
    }
}
