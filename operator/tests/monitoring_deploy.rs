//! The monitoring wiring that cannot run here (kind needs a container engine) still has to fit
//! together: the chart ships every dashboard verbatim as a sidecar ConfigMap, and the kind
//! cluster config, the kube-prometheus-stack values, `up.sh` and the chart's values agree on
//! ports and labels.
//!
//! `helm` comes from `HELM`, else `deploy/testenv/bin/helm` (built by `deploy/testenv/build`,
//! which CI runs before the tests), else `PATH`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM") {
        return path.into();
    }
    let built = root().join("deploy/testenv/bin/helm");
    if built.is_file() {
        return built;
    }
    "helm".into()
}

/// `helm template` of the chart with `args`, as YAML documents.
fn render(args: &[&str]) -> Vec<Value> {
    let helm = helm();
    let out = Command::new(&helm)
        .arg("template")
        .arg("t")
        .arg(root().join("charts/loopscale"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); build it with deploy/testenv/build or set HELM",
                helm.display()
            )
        });
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    text.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| &v[key])
}

/// dashboards/*.json by file name.
fn dashboards() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// ConfigMaps carrying `label: value`, as (name, data).
fn labelled_config_maps<'a>(
    docs: &'a [Value],
    label: &str,
    value: &str,
) -> Vec<(String, &'a Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter(|d| d["metadata"]["labels"][label].as_str() == Some(value))
        .map(|d| {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (name, &d["data"])
        })
        .collect()
}

#[test]
fn chart_ships_every_dashboard_verbatim_for_the_grafana_sidecar() {
    let sources = dashboards();
    assert!(sources.len() >= 3, "dashboards/ holds {:?}", sources.keys());
    let docs = render(&[]);
    let maps = labelled_config_maps(&docs, "grafana_dashboard", "1");
    let mut shipped = BTreeMap::new();
    for (name, data) in &maps {
        let data = data.as_mapping().expect("ConfigMap data");
        assert_eq!(data.len(), 1, "{name}: one dashboard per ConfigMap");
        for (key, value) in data {
            shipped.insert(
                key.as_str().unwrap().to_string(),
                value.as_str().unwrap().to_string(),
            );
        }
    }
    assert_eq!(
        shipped.keys().collect::<Vec<_>>(),
        sources.keys().collect::<Vec<_>>(),
        "the chart's dashboards differ from dashboards/ (run dashboards/sync-chart)"
    );
    for (name, source) in &sources {
        // The `|-` block drops the final newline; everything else (Grafana's own {{ }} legend
        // templates included) must come through untouched.
        assert!(
            shipped[name] == source.trim_end_matches('\n'),
            "{name}: the ConfigMap's JSON differs from dashboards/{name} (run dashboards/sync-chart)"
        );
        serde_json::from_str::<serde_json::Value>(&shipped[name])
            .unwrap_or_else(|e| panic!("{name}: shipped JSON is invalid: {e}"));
    }
}

#[test]
fn dashboard_label_and_switch_come_from_values() {
    let docs = render(&[
        "--set",
        "dashboards.label=my_dashboards",
        "--set-string",
        "dashboards.labelValue=yes",
        "--set",
        "dashboards.annotations.grafana_folder=loopscale",
    ]);
    let maps = labelled_config_maps(&docs, "my_dashboards", "yes");
    assert_eq!(maps.len(), dashboards().len());
    assert!(labelled_config_maps(&docs, "grafana_dashboard", "1").is_empty());
    let annotated = docs
        .iter()
        .filter(|d| d["metadata"]["annotations"]["grafana_folder"] == "loopscale")
        .count();
    assert_eq!(annotated, maps.len());

    let off = render(&["--set", "dashboards.enabled=false"]);
    assert!(labelled_config_maps(&off, "grafana_dashboard", "1").is_empty());
}

#[test]
fn monitors_carry_the_labels_set_in_values() {
    let docs = render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "podMonitor.enabled=true",
        "--set-string",
        "serviceMonitor.labels.release=kube-prometheus-stack",
        "--set-string",
        "podMonitor.labels.release=kube-prometheus-stack",
    ]);
    for kind in ["ServiceMonitor", "PodMonitor"] {
        let monitor = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} rendered"));
        assert_eq!(
            monitor["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{kind}"
        );
    }
}

#[test]
fn kind_cluster_stack_values_and_up_script_agree() {
    let cluster = yaml("deploy/kind/cluster.yaml");
    let stack = yaml("deploy/kind/kube-prometheus-stack.values.yaml");
    let chart = yaml("charts/loopscale/values.yaml");

    let roles: Vec<&str> = get(&cluster, "nodes")
        .as_sequence()
        .expect("nodes")
        .iter()
        .map(|n| n["role"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);

    // Grafana's and Prometheus's NodePorts are exactly what the control-plane maps.
    let mapped: BTreeSet<u64> = get(&cluster, "nodes")[0]["extraPortMappings"]
        .as_sequence()
        .expect("control-plane extraPortMappings")
        .iter()
        .map(|m| m["containerPort"].as_u64().unwrap())
        .collect();
    let node_ports: BTreeSet<u64> = ["grafana.service", "prometheus.service"]
        .iter()
        .map(|p| {
            let service = get(&stack, p);
            assert_eq!(service["type"], "NodePort", "{p}");
            service["nodePort"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(mapped, node_ports);

    // The sidecar loads what the chart labels, from every namespace.
    let sidecar = get(&stack, "grafana.sidecar.dashboards");
    assert_eq!(sidecar["enabled"], true);
    assert_eq!(sidecar["label"], get(&chart, "dashboards.label").clone());
    assert_eq!(
        sidecar["labelValue"],
        get(&chart, "dashboards.labelValue").clone()
    );
    assert_eq!(sidecar["searchNamespace"], "ALL");

    // Prometheus selects monitors labelled with the release label that up.sh puts on the chart's.
    let spec = get(&stack, "prometheus.prometheusSpec");
    let script = std::fs::read_to_string(root().join("deploy/kind/up.sh")).unwrap();
    let release = script
        .lines()
        .find_map(|l| l.strip_prefix("kps_release=\""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("up.sh sets kps_release=\"...\"");
    for selector in ["serviceMonitorSelector", "podMonitorSelector"] {
        assert_eq!(
            spec[selector]["matchLabels"]["release"], release,
            "{selector}"
        );
    }
    for set in [
        "serviceMonitor.enabled=true",
        "podMonitor.enabled=true",
        "serviceMonitor.labels.release=${kps_release}",
        "podMonitor.labels.release=${kps_release}",
        "dashboards.enabled=true",
    ] {
        assert!(script.contains(set), "up.sh does not set {set}");
    }
    for path in ["workload/Dockerfile", "operator/Dockerfile"] {
        assert!(
            script.contains(&format!("${{root}}/{path}")),
            "up.sh builds {path}"
        );
        assert!(root().join(path).is_file(), "{path} exists");
    }
}
