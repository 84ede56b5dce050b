//! Experiment and step-result gauges, shared by the Kubernetes controller and `loopscale run
//! --metrics-addr`, so the comparison dashboards plot local runs and cluster runs alike.
//!
//! Every result gauge is labelled `{namespace, experiment, mode, processes, replicas,
//! repetition}`; local runs use the namespace `local`.
//!
//! [`ReconcileMetrics`] are the engine loop's own health, under the operator's names: a local
//! run's loop (observe, decide, act) is the same loop as a reconcile, so the operator-health
//! dashboard reads both.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::crd::{ExperimentStatus, Outcome, Phase};

const RESULT_LABELS: [&str; 6] = [
    "namespace",
    "experiment",
    "mode",
    "processes",
    "replicas",
    "repetition",
];

/// `percentile` label values of `loopscale_result_latency_seconds`: the status fields they
/// read. Not a `quantile` label: that name is reserved for summaries (`promtool check metrics`
/// rejects it on a gauge).
const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

/// Label values of the exported current step, by (namespace, experiment).
type CurrentStepLabels = HashMap<(String, String), Vec<String>>;

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
    step_info: GaugeVec,
    current_step: GaugeVec,
    /// Label values of each Experiment's exported current step, to remove it when it changes.
    current_labels: Arc<Mutex<CurrentStepLabels>>,
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
        latency_labels.push("percentile");
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
                "Latency percentiles (p50, p90, p99, p999, max) of a finished step, from the merged histogram of its load generators.",
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
                "loopscale_experiment_completed_steps",
                "Steps of the Experiment with a recorded result.",
                &["namespace", "experiment"],
            )?,
            total: gauge(
                registry,
                "loopscale_experiment_total_steps",
                "Steps in the Experiment's plan.",
                &["namespace", "experiment"],
            )?,
            step_info: gauge(
                registry,
                "loopscale_result_step_info",
                "1 for each finished step, with its total_processes (processes x replicas) as a label, for dashboards that plot results against total processes (PromQL cannot multiply labels).",
                &step_info_labels(),
            )?,
            current_step: gauge(
                registry,
                "loopscale_experiment_current_step",
                "Position in the plan (from 1) of the step being run, labelled with its configuration and stage; absent between steps and after the run.",
                &[
                    "namespace",
                    "experiment",
                    "mode",
                    "processes",
                    "replicas",
                    "repetition",
                    "stage",
                ],
            )?,
            current_labels: Arc::default(),
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
        self.observe_current_step(namespace, experiment, status);
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
            let total_processes = r.key.total_processes().to_string();
            let mut with_total = labels.to_vec();
            with_total.push(total_processes.as_str());
            self.step_info.with_label_values(&with_total).set(1.0);
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
            for (q, ms) in PERCENTILES.iter().zip([l.p50, l.p90, l.p99, l.p999, l.max]) {
                let mut with_q = labels.to_vec();
                with_q.push(q);
                self.latency.with_label_values(&with_q).set(ms / 1000.0);
            }
        }
    }
}

fn step_info_labels() -> Vec<&'static str> {
    let mut labels = RESULT_LABELS.to_vec();
    labels.push("total_processes");
    labels
}

impl ExperimentMetrics {
    /// Export the current step (one series per Experiment), replacing the previous one.
    fn observe_current_step(&self, namespace: &str, experiment: &str, status: &ExperimentStatus) {
        let wanted = status.current_step.as_ref().map(|c| {
            (
                vec![
                    namespace.to_string(),
                    experiment.to_string(),
                    c.key.mode.as_str().to_string(),
                    c.key.processes.to_string(),
                    c.key.replicas.to_string(),
                    c.key.repetition.to_string(),
                    c.stage.as_str().to_string(),
                ],
                f64::from(c.index),
            )
        });
        let mut current = self
            .current_labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (namespace.to_string(), experiment.to_string());
        if let Some(old) = current.get(&key) {
            if wanted.as_ref().map(|(labels, _)| labels) != Some(old) {
                let old: Vec<&str> = old.iter().map(String::as_str).collect();
                let _ = self.current_step.remove_label_values(&old);
                current.remove(&key);
            }
        }
        if let Some((labels, index)) = wanted {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.current_step.with_label_values(&refs).set(index);
            current.insert(key, labels);
        }
    }
}

/// Error kinds of a local run's engine loop, exported at zero from the start.
pub const LOCAL_LOOP_ERRORS: [&str; 2] = ["backend", "persist"];

/// The engine loop's health under the operator's metric names: one "reconcile" is one pass of
/// observe, decide and act (without the waits the operator would do as requeues).
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// `loopscale_operator_reconciliations_total`.
    pub reconciliations: IntCounter,
    /// `loopscale_operator_reconciliation_errors_total{error}`.
    pub errors: IntCounterVec,
    /// `loopscale_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
}

impl ReconcileMetrics {
    /// Create the metrics in `registry`, with a zero error series for each of `error_kinds`
    /// (bounded labels, visible before the first error).
    pub fn register(registry: &Registry, error_kinds: &[&str]) -> prometheus::Result<Self> {
        let reconciliations = IntCounter::new(
            "loopscale_operator_reconciliations_total",
            "Passes of the experiment engine's loop (reconciles of Experiments).",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "loopscale_operator_reconciliation_errors_total",
                "Failed passes of the experiment engine's loop, by error kind.",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "loopscale_operator_reconcile_duration_seconds",
                "Time one pass of the experiment engine's loop took.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        for kind in error_kinds {
            errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(ReconcileMetrics {
            reconciliations,
            errors,
            duration,
        })
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
    use crate::crd::{CurrentStep, LatencyMs, Mode, Stage, StepKey};
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
            text.contains(r#"percentile="p99",processes="2",repetition="1",replicas="1"} 0.25"#),
            "{text}"
        );
        assert!(text.contains(
            r#"loopscale_experiment_phase{experiment="quick",namespace="local",phase="Running"} 1"#
        ));
        assert!(text.contains(
            r#"loopscale_experiment_total_steps{experiment="quick",namespace="local"} 4"#
        ));
        // A failed step exports no result (a zero throughput would plot as a real measurement).
        assert!(!text.contains(r#"repetition="2""#));
        assert!(text.contains(r#"loopscale_result_step_info{experiment="quick",mode="thread-pool",namespace="local",processes="2",repetition="1",replicas="1",total_processes="2"} 1"#), "{text}");
    }

    fn current(index: u32, replicas: u32, stage: Stage) -> Option<CurrentStep> {
        Some(CurrentStep {
            index,
            key: StepKey {
                mode: Mode::EventLoop,
                processes: 1,
                replicas,
                repetition: 1,
            },
            stage,
            started_at: "2026-01-01T00:00:00Z".into(),
            cooldown_until: None,
        })
    }

    #[test]
    fn only_the_current_step_is_exported_per_experiment() {
        let registry = Registry::new();
        let m = ExperimentMetrics::register(&registry).unwrap();
        let series = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("loopscale_experiment_current_step{"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let mut status = ExperimentStatus {
            phase: Phase::Running,
            total_steps: 2,
            current_step: current(1, 1, Stage::Deploying),
            ..Default::default()
        };
        m.observe("local", "a", &status);
        m.observe("local", "b", &status);
        status.current_step = current(1, 1, Stage::Measuring);
        m.observe("local", "a", &status);
        let text = encode(&registry);
        assert_eq!(series(&text).len(), 2, "{text}");
        assert!(text.contains(r#"loopscale_experiment_current_step{experiment="a",mode="event-loop",namespace="local",processes="1",repetition="1",replicas="1",stage="Measuring"} 1"#), "{text}");
        assert!(text.contains(r#"experiment="b",mode="event-loop",namespace="local",processes="1",repetition="1",replicas="1",stage="Deploying"} 1"#), "{text}");

        status.current_step = current(2, 2, Stage::Deploying);
        m.observe("local", "a", &status);
        let text = encode(&registry);
        assert!(text.contains(r#"experiment="a",mode="event-loop",namespace="local",processes="1",repetition="1",replicas="2",stage="Deploying"} 2"#), "{text}");
        assert_eq!(series(&text).len(), 2, "{text}");

        status.current_step = None;
        status.phase = Phase::Succeeded;
        m.observe("local", "a", &status);
        m.observe("local", "b", &status);
        assert!(series(&encode(&registry)).is_empty());
    }

    #[test]
    fn reconcile_metrics_use_the_operator_names_with_zero_error_series() {
        let registry = Registry::new();
        let r = ReconcileMetrics::register(&registry, &LOCAL_LOOP_ERRORS).unwrap();
        r.reconciliations.inc();
        r.duration.observe(0.003);
        let text = encode(&registry);
        assert!(
            text.contains("loopscale_operator_reconciliations_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"loopscale_operator_reconciliation_errors_total{error="backend"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loopscale_operator_reconciliation_errors_total{error="persist"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loopscale_operator_reconcile_duration_seconds_bucket{le="0.005"} 1"#),
            "{text}"
        );
    }
}
