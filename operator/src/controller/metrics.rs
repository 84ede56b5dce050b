//! The operator's Prometheus metrics: its own health (reconciles, errors by a bounded label,
//! reconcile duration, as kube-rs's controller-rs exports them) next to the engine's Experiment
//! and step-result gauges ([`crate::metrics::ExperimentMetrics`]), in one registry.
use prometheus::{histogram_opts, opts, Histogram, IntCounter, IntCounterVec, Registry};

use crate::crd::ExperimentStatus;
use crate::metrics::ExperimentMetrics;

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `loopscale_operator_reconciliations_total`.
    pub reconciliations: IntCounter,
    /// `loopscale_operator_reconciliation_errors_total{error}`.
    pub errors: IntCounterVec,
    /// `loopscale_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    experiments: ExperimentMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounter::new(
            "loopscale_operator_reconciliations_total",
            "Reconciliations of Experiments.",
        )
        .unwrap();
        let errors = IntCounterVec::new(
            opts!(
                "loopscale_operator_reconciliation_errors_total",
                "Failed reconciliations by error kind."
            ),
            &["error"],
        )
        .unwrap();
        let duration = Histogram::with_opts(histogram_opts!(
            "loopscale_operator_reconcile_duration_seconds",
            "Time one reconciliation took.",
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
        ))
        .unwrap();
        registry
            .register(Box::new(reconciliations.clone()))
            .unwrap();
        registry.register(Box::new(errors.clone())).unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        let experiments = ExperimentMetrics::register(&registry).expect("metric names are unique");
        Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            experiments,
        }
    }

    /// Publish an Experiment's phase, progress and step results.
    pub fn observe_status(&self, namespace: &str, experiment: &str, status: &ExperimentStatus) {
        self.experiments.observe(namespace, experiment, status);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        crate::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;

    #[test]
    fn operator_and_experiment_metrics_share_one_exposition() {
        let m = Metrics::new();
        m.reconciliations.inc();
        m.errors.with_label_values(&["api_409"]).inc();
        m.duration.observe(0.02);
        let status = ExperimentStatus {
            phase: Phase::Running,
            total_steps: 4,
            ..Default::default()
        };
        m.observe_status("lab", "x", &status);
        let text = m.render();
        assert!(
            text.contains("loopscale_operator_reconciliations_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"loopscale_operator_reconciliation_errors_total{error="api_409"} 1"#)
        );
        assert!(text.contains("loopscale_operator_reconcile_duration_seconds_count 1"));
        assert!(text.contains(
            r#"loopscale_experiment_phase{experiment="x",namespace="lab",phase="Running"} 1"#
        ));
    }
}
