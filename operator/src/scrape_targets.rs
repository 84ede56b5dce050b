//! Prometheus file_sd targets of a local run (`loopscale run --prometheus-sd FILE`).
//!
//! A local run's processes listen on ports picked at run time, so a static Prometheus config
//! cannot name them. The run writes their addresses to a file_sd JSON file instead
//! (`deploy/local/prometheus.yml` reads it), labelled the way a cluster's monitors label pods, so
//! the same dashboards read both: `namespace`, `experiment`, `pod` (a pod-like name per
//! supervisor or generator), `role` (`server`, `load` or `run`) and the step's `mode`,
//! `processes`, `replicas` and `repetition`.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::crd::StepKey;

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A workload replica's supervisor (one scrape covers all its workers).
    Server,
    /// A load generator.
    Load,
    /// The `loopscale run` process: result, progress and engine-loop metrics.
    Run,
}

impl Role {
    /// The `role` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Load => "load",
            Role::Run => "run",
        }
    }
}

/// One process to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// `host:port` of its `/metrics`.
    pub address: String,
    /// What it is.
    pub role: Role,
    /// Pod-like name, unique within the run.
    pub pod: String,
    /// The step it belongs to (none for the run itself).
    pub step: Option<StepKey>,
}

/// A file_sd target group: addresses sharing one label set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    /// `host:port` addresses.
    pub targets: Vec<String>,
    /// Labels Prometheus attaches to every series of these targets.
    pub labels: BTreeMap<String, String>,
}

/// One target group per target (each has its own `pod` label), in the given order.
pub fn target_groups(
    namespace: &str,
    experiment: &str,
    targets: &[ScrapeTarget],
) -> Vec<TargetGroup> {
    targets
        .iter()
        .map(|t| {
            let mut labels = BTreeMap::from([
                ("namespace".to_string(), namespace.to_string()),
                ("experiment".to_string(), experiment.to_string()),
                ("role".to_string(), t.role.as_str().to_string()),
                ("pod".to_string(), t.pod.clone()),
            ]);
            if let Some(step) = &t.step {
                labels.insert("mode".into(), step.mode.as_str().into());
                labels.insert("processes".into(), step.processes.to_string());
                labels.insert("replicas".into(), step.replicas.to_string());
                labels.insert("repetition".into(), step.repetition.to_string());
            }
            TargetGroup {
                targets: vec![t.address.clone()],
                labels,
            }
        })
        .collect()
}

/// Write the groups as file_sd JSON, atomically (temp file and rename in the same directory),
/// so Prometheus never reads half a file.
pub fn write(path: &Path, groups: &[TargetGroup]) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(groups)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Mode;

    #[test]
    fn groups_carry_the_labels_the_dashboards_filter_on() {
        let step = StepKey {
            mode: Mode::ThreadPool,
            processes: 2,
            replicas: 3,
            repetition: 1,
        };
        let targets = [
            ScrapeTarget {
                address: "127.0.0.1:9464".into(),
                role: Role::Run,
                pod: "quick-loopscale-run".into(),
                step: None,
            },
            ScrapeTarget {
                address: "127.0.0.1:40001".into(),
                role: Role::Server,
                pod: "quick-thread-pool-p2-r3-rep1-replica0".into(),
                step: Some(step),
            },
        ];
        let json = serde_json::to_value(target_groups("local", "quick", &targets)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["127.0.0.1:9464"],
                 "labels": {"namespace": "local", "experiment": "quick", "role": "run",
                            "pod": "quick-loopscale-run"}},
                {"targets": ["127.0.0.1:40001"],
                 "labels": {"namespace": "local", "experiment": "quick", "role": "server",
                            "pod": "quick-thread-pool-p2-r3-rep1-replica0", "mode": "thread-pool",
                            "processes": "2", "replicas": "3", "repetition": "1"}}
            ])
        );
    }

    #[test]
    fn written_file_is_the_json_and_replaces_the_old_one() {
        let dir = std::env::temp_dir().join(format!("loopscale-sd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("targets.json");
        std::fs::write(&path, "old").unwrap();
        write(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[]");
        assert!(!dir.join("targets.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
