//! The operator's Prometheus metrics: its own health (reconciles, errors by a bounded label,
//! reconcile duration, as kube-rs's controller-rs exports them; [`ReconcileMetrics`], shared with
//! a local run's engine loop) next to the engine's Experiment and step-result gauges
//! ([`ExperimentMetrics`]), in one registry.
use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};

use crate::crd::ExperimentStatus;
use crate::metrics::{ExperimentMetrics, ReconcileMetrics};

/// The error kinds ([`super::Error::metric_label`]) registered at zero when the operator starts,
/// so that the "errors" panels and the error ratio show 0 rather than "no data" while nothing has
/// failed: the kinds that are not API errors, and the API statuses a reconcile can plausibly
/// meet (RBAC denial, gone, conflict, invalid, throttled, server errors). Other API statuses still
/// get counted; their series just appear on first use.
pub const ERROR_KINDS: &[&str] = &[
    "kube",
    "serialization",
    "missing_object_key",
    "api_403",
    "api_404",
    "api_409",
    "api_422",
    "api_429",
    "api_500",
    "api_503",
];

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
        // The same definitions (names, buckets) as a local run's engine loop, so the operator
        // dashboard reads both; the error kinds are the operator's own.
        let ReconcileMetrics {
            reconciliations,
            errors,
            duration,
        } = ReconcileMetrics::register(&registry, ERROR_KINDS).expect("metric names are unique");
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
        // Pre-registered kinds keep their zero next to the one that happened.
        assert!(
            text.contains(r#"loopscale_operator_reconciliation_errors_total{error="kube"} 0"#),
            "{text}"
        );
        assert!(text.contains(
            r#"loopscale_experiment_phase{experiment="x",namespace="lab",phase="Running"} 1"#
        ));
    }

    #[test]
    fn every_error_kind_is_exported_at_zero_before_any_reconcile() {
        let text = Metrics::new().render();
        for kind in ERROR_KINDS {
            let line =
                format!(r#"loopscale_operator_reconciliation_errors_total{{error="{kind}"}} 0"#);
            assert!(text.contains(&line), "missing {line} in:\n{text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("loopscale_operator_reconciliation_errors_total{"))
            .count();
        assert_eq!(series, ERROR_KINDS.len(), "{text}");
        assert!(
            text.contains("loopscale_operator_reconciliations_total 0"),
            "{text}"
        );
    }

    #[test]
    fn pre_registered_kinds_are_labels_the_errors_really_get() {
        use super::super::Error;
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        let mut errors = vec![
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Serialization(serde_json::from_str::<u8>("x").unwrap_err()),
            Error::MissingObjectKey("uid"),
        ];
        errors.extend([403, 404, 409, 422, 429, 500, 503].map(api));
        let labels: Vec<String> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(
            labels, ERROR_KINDS,
            "ERROR_KINDS and Error::metric_label disagree"
        );
    }
}
