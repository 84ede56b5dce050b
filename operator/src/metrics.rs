//! Experiment and step-result gauges, shared by the Kubernetes controller and `loopscale run
//! --metrics-addr`, so the comparison dashboards plot local runs and cluster runs alike.
//!
//! Every result gauge is labelled `{namespace, experiment, mode, processes, replicas,
//! repetition}`; local runs use the namespace `local`.
use prometheus::{GaugeVec, Opts, Registry};

use crate::crd::{ExperimentStatus, Outcome, Phase};

const RESULT_LABELS: [&str; 6] = [
    "namespace",
    "experiment",
    "mode",
    "processes",
    "replicas",
    "repetition",
];

/// Quantiles exported by `loopscale_result_latency_seconds`, with the status field each reads.
const QUANTILES: [&str; 5] = ["0.5", "0.9", "0.99", "0.999", "1"];

/// The result and progress gauges of every Experiment this process knows.
#[derive(Clone)]
pub struct ExperimentMetrics {
    throughput: GaugeVec,
    latency: GaugeVec,
    error_ratio: GaugeVec,
    dropped_ratio: GaugeVec,
    efficiency: GaugeVec,
    phase: GaugeVec,
    completed: GaugeVec,
    total: GaugeVec,
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl ExperimentMetrics {
    /// Create the gauges and register them with `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let mut latency_labels = RESULT_LABELS.to_vec();
        latency_labels.push("quantile");
        Ok(ExperimentMetrics {
            throughput: gauge(
                registry,
                "loopscale_result_throughput_rps",
                "Successful responses per second of a finished step, summed over its load generators.",
                &RESULT_LABELS,
            )?,
            latency: gauge(
                registry,
                "loopscale_result_latency_seconds",
                "Latency quantiles of a finished step, from the merged histogram of its load generators.",
                &latency_labels,
            )?,
            error_ratio: gauge(
                registry,
                "loopscale_result_error_ratio",
                "Failed requests / requests of a finished step.",
                &RESULT_LABELS,
            )?,
            dropped_ratio: gauge(
                registry,
                "loopscale_result_dropped_ratio",
                "Open model: requests that could not start on time / (requests + dropped).",
                &RESULT_LABELS,
            )?,
            efficiency: gauge(
                registry,
                "loopscale_result_scaling_efficiency",
                "Throughput / (the mode's 1 process x 1 replica throughput x processes x replicas); 1 is linear scaling.",
                &RESULT_LABELS,
            )?,
            phase: gauge(
                registry,
                "loopscale_experiment_phase",
                "1 for the Experiment's current phase, 0 for the others.",
                &["namespace", "experiment", "phase"],
            )?,
            completed: gauge(
                registry,
                "loopscale_experiment_steps_completed",
                "Steps of the Experiment with a recorded result.",
                &["namespace", "experiment"],
            )?,
            total: gauge(
                registry,
                "loopscale_experiment_steps_total",
                "Steps in the Experiment's plan.",
                &["namespace", "experiment"],
            )?,
        })
    }

    /// Set every gauge of one Experiment from its status (idempotent; call after each change).
    pub fn observe(&self, namespace: &str, experiment: &str, status: &ExperimentStatus) {
        for phase in [
            Phase::Pending,
            Phase::Running,
            Phase::Succeeded,
            Phase::Failed,
        ] {
            self.phase
                .with_label_values(&[namespace, experiment, phase.as_str()])
                .set(f64::from(u8::from(phase == status.phase)));
        }
        self.completed
            .with_label_values(&[namespace, experiment])
            .set(f64::from(status.completed_steps));
        self.total
            .with_label_values(&[namespace, experiment])
            .set(f64::from(status.total_steps));
        for r in status
            .results
            .iter()
            .filter(|r| r.outcome == Outcome::Succeeded)
        {
            let processes = r.key.processes.to_string();
            let replicas = r.key.replicas.to_string();
            let repetition = r.key.repetition.to_string();
            let labels = [
                namespace,
                experiment,
                r.key.mode.as_str(),
                processes.as_str(),
                replicas.as_str(),
                repetition.as_str(),
            ];
            self.throughput
                .with_label_values(&labels)
                .set(r.throughput_rps);
            self.error_ratio
                .with_label_values(&labels)
                .set(r.error_ratio);
            self.dropped_ratio
                .with_label_values(&labels)
                .set(r.dropped_ratio);
            match r.scaling_efficiency {
                Some(e) => self.efficiency.with_label_values(&labels).set(e),
                None => {
                    let _ = self.efficiency.remove_label_values(&labels);
                }
            }
            let l = &r.latency_ms;
            for (q, ms) in QUANTILES.iter().zip([l.p50, l.p90, l.p99, l.p999, l.max]) {
                let mut with_q = labels.to_vec();
                with_q.push(q);
                self.latency.with_label_values(&with_q).set(ms / 1000.0);
            }
        }
    }
}

/// The registry's metrics in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LatencyMs, Mode, StepKey};
    use crate::results::{failed, succeeded, Measurement};

    #[test]
    fn results_become_labelled_gauges() {
        let registry = Registry::new();
        let m = ExperimentMetrics::register(&registry).unwrap();
        let key = StepKey {
            mode: Mode::ThreadPool,
            processes: 2,
            replicas: 1,
            repetition: 1,
        };
        let mut status = ExperimentStatus {
            phase: Phase::Running,
            completed_steps: 2,
            total_steps: 4,
            ..Default::default()
        };
        status.results.push(succeeded(
            key,
            Measurement {
                throughput_rps: 123.5,
                latency_ms: LatencyMs {
                    p50: 10.0,
                    p90: 20.0,
                    p99: 250.0,
                    p999: 300.0,
                    max: 400.0,
                },
                requests: 1000,
                error_ratio: 0.01,
                dropped_ratio: 0.0,
                window_seconds: 10.0,
                generators: 1,
            },
        ));
        status.results.push(failed(
            StepKey {
                repetition: 2,
                ..key
            },
            "timed out",
        ));
        m.observe("local", "quick", &status);
        let text = encode(&registry);
        assert!(text.contains(r#"loopscale_result_throughput_rps{experiment="quick",mode="thread-pool",namespace="local",processes="2",repetition="1",replicas="1"} 123.5"#), "{text}");
        assert!(
            text.contains(r#"quantile="0.99",repetition="1",replicas="1"} 0.25"#),
            "{text}"
        );
        assert!(text.contains(
            r#"loopscale_experiment_phase{experiment="quick",namespace="local",phase="Running"} 1"#
        ));
        assert!(text.contains(
            r#"loopscale_experiment_steps_total{experiment="quick",namespace="local"} 4"#
        ));
        // A failed step exports no result (a zero throughput would plot as a real measurement).
        assert!(!text.contains(r#"repetition="2""#));
    }
}
