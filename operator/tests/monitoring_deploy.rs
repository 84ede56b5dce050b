//! The monitoring wiring that cannot run here (kind needs a container engine) still has to fit
//! together: the chart ships every dashboard verbatim as a sidecar ConfigMap; the kind
//! cluster config, the kube-prometheus-stack values, `up.sh` and the chart's values agree on
//! ports and labels; and the chart's monitors select the pods the operator creates and give their
//! targets exactly the labels a local run's targets carry, so one set of dashboards reads both.
//!
//! Prometheus itself is not run here for the monitors (there is no prometheus-operator); instead
//! the tests translate each rendered PodMonitor endpoint the way prometheus-operator does
//! ([`prometheus_operator_relabel_configs`]) and apply that to the discovery labels Prometheus's
//! Kubernetes pod discovery gives the operator's pods ([`pod_discovery_labels`]) with the
//! relabeling rules of Prometheus ([`relabel`]).
//!
//! `helm` comes from `HELM`, else `deploy/testenv/bin/helm` (built by `deploy/testenv/build`,
//! which CI runs before the tests), else `PATH`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use loopscale::controller::children::{
    load_job, step_children, workload_deployment, ChildSettings,
};
use loopscale::crd::{Experiment, StepKey};
use loopscale::planner::{generator_loads, plan};
use loopscale::scrape_targets::{target_groups, Role, ScrapeTarget};
use regex::Regex;
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

fn monitors_enabled() -> Vec<Value> {
    render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "podMonitor.enabled=true",
    ])
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} rendered");
    found[0]
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| serde_yaml::to_string(v).unwrap().trim().to_string());
                    (k.as_str().unwrap().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the ports of a pod template's (only) container.
fn port_names(template: &PodTemplateSpec) -> Vec<String> {
    template.spec.as_ref().unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect()
}

/// A YAML list of strings (empty when absent).
fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a list of strings"))
        .collect()
}

/// Does a Kubernetes label selector (matchLabels and matchExpressions) select `labels`?
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = str_map(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap();
            let values = strs(&e["values"]);
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap() {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        });
    by_labels && by_expressions
}

#[test]
fn service_monitor_honors_the_operators_own_labels_and_selects_its_service() {
    let docs = monitors_enabled();
    let monitor = kind(&docs, "ServiceMonitor");
    let service = kind(&docs, "Service");
    let endpoints = monitor["spec"]["endpoints"].as_sequence().unwrap();
    assert_eq!(endpoints.len(), 1);
    // Without honorLabels the result gauges' namespace (the Experiment's) and experiment labels
    // would become exported_namespace/exported_experiment and the scaling dashboard finds nothing.
    assert_eq!(endpoints[0]["honorLabels"], true);
    assert_eq!(endpoints[0]["path"], "/metrics");
    let service_labels = str_map(&service["metadata"]["labels"]);
    assert!(
        selects(&monitor["spec"]["selector"], &service_labels),
        "the ServiceMonitor's selector misses the operator's Service"
    );
    let port_names: Vec<&Value> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert!(port_names.contains(&&endpoints[0]["port"]));
}

fn lab_experiment() -> Experiment {
    let yaml = r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {name: wiring, namespace: lab}
spec:
  workload: {modes: [thread-pool, event-loop]}
  scenario: {route: cpu, cpuMillis: 10}
  matrix: {processes: [2], replicas: [3]}
  load: {model: closed, concurrency: 8, generators: 2, warmup: 1s, duration: 2s}
"#;
    let mut exp = loopscale::validation::validate_manifest(yaml).unwrap();
    exp.metadata.uid = Some("5e1f0000-uid".into());
    exp
}

/// Images as the chart's tests name them; the pull policy is left to Kubernetes.
fn test_child_settings() -> ChildSettings {
    ChildSettings {
        workload_image: "loopscale-workload:test".into(),
        reference_images: loopscale::reference::ReferenceImages {
            express: "loopscale-reference-express:test".into(),
            fastapi: "loopscale-reference-fastapi:test".into(),
        },
        image_pull_policy: None,
    }
}

/// The pod templates the operator creates for step 1: (role, template).
fn operator_pod_templates(exp: &Experiment) -> (StepKey, Vec<(Role, PodTemplateSpec)>) {
    let key = plan(&exp.spec)[0];
    let children = step_children(exp, 1, &key);
    let settings = test_child_settings();
    let deployment = workload_deployment(exp, &children, &key, &settings);
    let job = load_job(exp, &children, &generator_loads(&exp.spec), &settings);
    (
        key,
        vec![
            (Role::Server, deployment.spec.unwrap().template),
            (Role::Load, job.spec.unwrap().template),
        ],
    )
}

#[test]
fn pod_monitor_selects_workload_and_load_pods_by_a_port_each_has_and_nothing_else() {
    let docs = monitors_enabled();
    let monitor = kind(&docs, "PodMonitor");
    let spec = &monitor["spec"];
    assert_eq!(spec["namespaceSelector"]["any"], true);
    let endpoints = spec["podMetricsEndpoints"].as_sequence().unwrap();
    let (_, templates) = operator_pod_templates(&lab_experiment());
    for (role, template) in &templates {
        let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert!(
            selects(&spec["selector"], &labels),
            "{role:?} pods are not selected"
        );
        let ports = port_names(template);
        let scraped: Vec<&str> = endpoints
            .iter()
            .map(|e| e["port"].as_str().unwrap())
            .filter(|p| ports.iter().any(|q| q == p))
            .collect();
        assert_eq!(
            scraped.len(),
            1,
            "{role:?} pod ports {ports:?}: one endpoint each"
        );
    }
    for e in endpoints {
        assert_eq!(e["path"], "/metrics");
        assert_ne!(
            e["honorLabels"], true,
            "a pod's own metrics must not override the operator-set target labels"
        );
    }
    // The chart's operator pod is another ServiceMonitor's business.
    let operator = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the operator Deployment");
    let operator_labels = str_map(&operator["spec"]["template"]["metadata"]["labels"]);
    assert!(!selects(&spec["selector"], &operator_labels));

    // Restricting namespaces swaps `any` for the list.
    let docs = render(&[
        "--set",
        "podMonitor.enabled=true",
        "--set",
        "podMonitor.namespaces={lab,bench}",
    ]);
    let ns = &kind(&docs, "PodMonitor")["spec"]["namespaceSelector"];
    assert_eq!(ns["any"], Value::Null);
    assert_eq!(
        ns["matchNames"],
        serde_yaml::from_str::<Value>("[lab, bench]").unwrap()
    );
}

/// One Prometheus relabel rule (`relabel_config`), with Prometheus's defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelabelConfig {
    source_labels: Vec<String>,
    separator: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    regex: String,
    replacement: String,
    action: String,
}

impl RelabelConfig {
    fn new(action: &str, source_labels: &[&str], regex: &str) -> Self {
        RelabelConfig {
            source_labels: source_labels.iter().map(|s| s.to_string()).collect(),
            separator: ";".into(),
            target_label: None,
            regex: regex.into(),
            replacement: "$1".into(),
            action: action.into(),
        }
    }

    fn set(target: &str, source: &str) -> Self {
        let mut r = Self::new("replace", &[source], "(.*)");
        r.target_label = Some(target.into());
        r
    }

    /// A prometheus-operator `relabelings` entry (camelCase keys) with its defaults.
    fn from_monitor(v: &Value) -> Self {
        let sources = strs(&v["sourceLabels"]);
        let mut r = Self::new(
            v["action"].as_str().unwrap_or("replace"),
            &sources,
            v["regex"].as_str().unwrap_or("(.*)"),
        );
        r.target_label = v["targetLabel"].as_str().map(str::to_string);
        if let Some(sep) = v["separator"].as_str() {
            r.separator = sep.into();
        }
        if let Some(rep) = v["replacement"].as_str() {
            r.replacement = rep.into();
        }
        r
    }
}

/// Prometheus's label name sanitizing for discovered Kubernetes labels.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What prometheus-operator generates for one PodMonitor endpoint (its `generatePodMonitorConfig`):
/// drop finished pods, keep the selector's pods and the endpoint's port, set `namespace`,
/// `container`, `pod`, `job` and `endpoint`, then the endpoint's own `relabelings`.
pub fn prometheus_operator_relabel_configs(
    monitor: &Value,
    endpoint: &Value,
) -> Vec<RelabelConfig> {
    let mut out = vec![RelabelConfig::new(
        "drop",
        &["__meta_kubernetes_pod_phase"],
        "(Failed|Succeeded)",
    )];
    let selector = &monitor["spec"]["selector"];
    let pair = |key: &str| {
        let k = sanitize(key);
        [
            format!("__meta_kubernetes_pod_label_{k}"),
            format!("__meta_kubernetes_pod_labelpresent_{k}"),
        ]
    };
    for (key, value) in str_map(&selector["matchLabels"]) {
        let [l, p] = pair(&key);
        out.push(RelabelConfig::new(
            "keep",
            &[&l, &p],
            &format!("({});true", regex::escape(&value)),
        ));
    }
    for e in selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let [l, p] = pair(e["key"].as_str().unwrap());
        let values: Vec<String> = strs(&e["values"]).into_iter().map(regex::escape).collect();
        let rule = match e["operator"].as_str().unwrap() {
            "In" => RelabelConfig::new("keep", &[&l, &p], &format!("({});true", values.join("|"))),
            "NotIn" => {
                RelabelConfig::new("drop", &[&l, &p], &format!("({});true", values.join("|")))
            }
            "Exists" => RelabelConfig::new("keep", &[&p], "true"),
            "DoesNotExist" => RelabelConfig::new("drop", &[&p], "true"),
            other => panic!("unknown selector operator {other}"),
        };
        out.push(rule);
    }
    let port = endpoint["port"]
        .as_str()
        .expect("endpoints name their port");
    out.push(RelabelConfig::new(
        "keep",
        &["__meta_kubernetes_pod_container_port_name"],
        &regex::escape(port),
    ));
    out.push(RelabelConfig::set(
        "namespace",
        "__meta_kubernetes_namespace",
    ));
    out.push(RelabelConfig::set(
        "container",
        "__meta_kubernetes_pod_container_name",
    ));
    out.push(RelabelConfig::set("pod", "__meta_kubernetes_pod_name"));
    let mut job = RelabelConfig::new("replace", &[], "(.*)");
    job.target_label = Some("job".into());
    job.replacement = format!(
        "{}/{}",
        monitor["metadata"]["namespace"].as_str().unwrap(),
        monitor["metadata"]["name"].as_str().unwrap()
    );
    out.push(job);
    let mut ep = RelabelConfig::new("replace", &[], "(.*)");
    ep.target_label = Some("endpoint".into());
    ep.replacement = port.into();
    out.push(ep);
    out.extend(
        endpoint["relabelings"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(RelabelConfig::from_monitor),
    );
    out
}

/// The labels Prometheus's Kubernetes discovery (role `pod`) gives one container port of a pod
/// (those the monitors can use; Prometheus adds more, e.g. the node name and pod IP).
fn pod_discovery_labels(
    namespace: &str,
    pod_name: &str,
    template: &PodTemplateSpec,
    port_name: &str,
    phase: &str,
    pod_ip: &str,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("__meta_kubernetes_namespace".into(), namespace.into());
    l.insert("__meta_kubernetes_pod_name".into(), pod_name.into());
    l.insert("__meta_kubernetes_pod_phase".into(), phase.into());
    for (k, v) in template.metadata.as_ref().unwrap().labels.iter().flatten() {
        let k = sanitize(k);
        l.insert(format!("__meta_kubernetes_pod_label_{k}"), v.clone());
        l.insert(
            format!("__meta_kubernetes_pod_labelpresent_{k}"),
            "true".into(),
        );
    }
    let container = &template.spec.as_ref().unwrap().containers[0];
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port_name))
        .unwrap_or_else(|| panic!("{pod_name} has no port {port_name}"));
    l.insert(
        "__meta_kubernetes_pod_container_name".into(),
        container.name.clone(),
    );
    l.insert(
        "__meta_kubernetes_pod_container_port_name".into(),
        port_name.into(),
    );
    l.insert(
        "__meta_kubernetes_pod_container_port_number".into(),
        port.container_port.to_string(),
    );
    l.insert(
        "__address__".into(),
        format!("{pod_ip}:{}", port.container_port),
    );
    l
}

/// Prometheus's relabeling (`replace`, `keep`, `drop`; regexes anchored), then what it does to a
/// kept target: `instance` from the address, no `__` labels. `None` when the target is dropped.
fn relabel(
    mut labels: BTreeMap<String, String>,
    configs: &[RelabelConfig],
) -> Option<BTreeMap<String, String>> {
    for c in configs {
        let value = c
            .source_labels
            .iter()
            .map(|l| labels.get(l).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(&c.separator);
        let re = Regex::new(&format!("^(?:{})$", c.regex)).unwrap();
        match c.action.as_str() {
            "keep" if !re.is_match(&value) => return None,
            "drop" if re.is_match(&value) => return None,
            "keep" | "drop" => {}
            "replace" => {
                if let Some(caps) = re.captures(&value) {
                    let target = c.target_label.clone().expect("replace needs a target");
                    let mut out = String::new();
                    caps.expand(&c.replacement, &mut out);
                    if out.is_empty() {
                        labels.remove(&target);
                    } else {
                        labels.insert(target, out);
                    }
                }
            }
            other => panic!("relabel action {other} is not emulated here"),
        }
    }
    if !labels.contains_key("instance") {
        let address = labels["__address__"].clone();
        labels.insert("instance".into(), address);
    }
    labels.retain(|k, _| !k.starts_with("__"));
    Some(labels)
}

/// Labels prometheus-operator puts on every PodMonitor target that a local run's file_sd targets
/// have no counterpart for (nothing in the dashboards filters on them), and the two Prometheus
/// adds to every target itself.
const CLUSTER_ONLY_LABELS: [&str; 2] = ["container", "endpoint"];
const PROMETHEUS_LABELS: [&str; 2] = ["job", "instance"];

/// `cluster` (a PodMonitor target's labels) has the same label names as the target `loopscale
/// run` writes for the same kind of process of the same step, once the labels that only one side
/// has by nature are set aside, and the same values except where a cluster differs by nature
/// (namespace, pod names).
fn assert_like_a_local_runs_target(
    mut cluster: BTreeMap<String, String>,
    role: Role,
    exp: &Experiment,
    key: StepKey,
    namespace: &str,
    pod_name: &str,
) {
    let local = target_groups(
        "local",
        exp.metadata.name.as_deref().unwrap(),
        &[ScrapeTarget {
            address: "127.0.0.1:40001".into(),
            role,
            pod: "wiring-local-pod".into(),
            step: Some(key),
        }],
    )
    .pop()
    .unwrap()
    .labels;
    for label in PROMETHEUS_LABELS.iter().chain(&CLUSTER_ONLY_LABELS) {
        assert!(cluster.remove(*label).is_some(), "{role:?}: no {label}");
    }
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>(),
        "{role:?}: the cluster's and the local run's target labels differ"
    );
    assert_eq!(cluster.remove("namespace").as_deref(), Some(namespace));
    assert_eq!(cluster.remove("pod").as_deref(), Some(pod_name));
    let local: BTreeMap<_, _> = local
        .into_iter()
        .filter(|(k, _)| k != "namespace" && k != "pod")
        .collect();
    assert_eq!(cluster, local, "{role:?}");
}

#[test]
fn pod_monitor_targets_carry_exactly_the_labels_of_a_local_runs_targets() {
    let docs = monitors_enabled();
    let monitor = kind(&docs, "PodMonitor");
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_sequence()
        .unwrap();
    let exp = lab_experiment();
    let (key, templates) = operator_pod_templates(&exp);
    for (role, template) in &templates {
        let pod_name = format!("wiring-s1-{}-abcde", role.as_str());
        // Every endpoint sees every container port of every pod; exactly one keeps this pod.
        let ports = port_names(template);
        let mut kept = Vec::new();
        for endpoint in endpoints {
            let configs = prometheus_operator_relabel_configs(monitor, endpoint);
            for port in &ports {
                let found =
                    pod_discovery_labels("lab", &pod_name, template, port, "Running", "10.0.0.7");
                kept.extend(relabel(found, &configs));
            }
        }
        assert_eq!(kept.len(), 1, "{role:?}: {kept:?}");
        let cluster = kept.pop().unwrap();

        assert_like_a_local_runs_target(cluster, *role, &exp, key, "lab", &pod_name);
    }
}

#[test]
fn live_dashboard_variables_use_labels_both_setups_attach() {
    let live: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/loopscale-live.json")).unwrap(),
    )
    .unwrap();
    let local_labels: BTreeSet<String> = target_groups(
        "local",
        "x",
        &[ScrapeTarget {
            address: "127.0.0.1:1".into(),
            role: Role::Server,
            pod: "p".into(),
            step: Some(plan(&lab_experiment().spec)[0]),
        }],
    )[0]
    .labels
    .keys()
    .cloned()
    .collect();
    let label_values = Regex::new(r"label_values\([^,]*,\s*(\w+)\)").unwrap();
    let mut used = BTreeSet::new();
    for var in live["templating"]["list"].as_array().unwrap() {
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        if let Some(c) = label_values.captures(query) {
            used.insert(c[1].to_string());
        }
    }
    assert!(used.contains("experiment"), "{used:?}");
    assert!(
        used.is_subset(&local_labels),
        "the live dashboard's variables read {used:?}; targets carry {local_labels:?}"
    );
}

#[cfg(feature = "control-plane")]
mod cluster;

/// The same wiring with real discovery and relabeling: a real Prometheus discovers pods through
/// the test control plane's API server (`kubernetes_sd_configs`, role pod) with the relabel
/// configs prometheus-operator would generate from the rendered PodMonitor, for the pods the
/// operator's child builders describe (created here directly; the operator's own reconcile is
/// `cluster_operator`'s business). Debian's Prometheus is built without Kubernetes discovery, so
/// this one comes from `deploy/testenv/build-prometheus`. Needs `deploy/testenv/up`
/// (`make control-plane-test`). What stays emulated: prometheus-operator's translation itself.
#[cfg(feature = "control-plane")]
mod on_the_control_plane {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::{ListParams, PostParams};
    use kube::Api;
    use loopscale::controller::children::LOAD_SERVICE_ACCOUNT;

    use super::cluster::{admin, kubeconfig_path, kubectl, ok, restricted_namespace, wait_for};
    use super::*;

    /// A Prometheus we started; killed (by its own pid) when dropped.
    struct Prometheus {
        child: Child,
        port: u16,
        dir: PathBuf,
    }

    impl Prometheus {
        fn start(config: &serde_json::Value) -> Prometheus {
            let dir = std::env::temp_dir().join(format!(
                "loopscale-monitoring-prometheus-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let config_file = dir.join("prometheus.yml");
            // JSON is YAML.
            std::fs::write(&config_file, config.to_string()).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
            let bin = super::cluster::tool("prometheus");
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}): build it with deploy/testenv/build-prometheus",
                        bin.display()
                    )
                });
            Prometheus { child, port, dir }
        }

        /// `/api/v1/targets?state=any`, or None while Prometheus is not answering yet.
        fn targets(&self) -> Option<serde_json::Value> {
            let out = Command::new("curl")
                .args(["-fsS", "--max-time", "5"])
                .arg(format!(
                    "http://127.0.0.1:{}/api/v1/targets?state=any",
                    self.port
                ))
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            serde_json::from_slice(&out.stdout).ok()
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
        }
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn str_labels(v: &serde_json::Value) -> BTreeMap<String, String> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prometheus_discovers_the_operators_pods_with_a_local_runs_labels() {
        let admin = admin().await;
        let (ns, _cleanup) = restricted_namespace(&admin, "ls-monitoring").await;
        let mut exp = lab_experiment();
        exp.metadata.namespace = Some(ns.clone());
        let (key, templates) = operator_pod_templates(&exp);
        let children = step_children(&exp, 1, &key);
        let settings = test_child_settings();

        // The workload through its real Deployment (3 replicas: the controller manager makes
        // the pods). The load pods run under loopscale-load, which the operator creates per
        // namespace. A load Job's pods finish at once under kwok (its pod-complete stage), and
        // prometheus-operator drops finished pods, so the running load pod is a bare pod from
        // the Job's own template.
        let mut deployment = workload_deployment(&exp, &children, &key, &settings);
        deployment.metadata.owner_references = None;
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": LOAD_SERVICE_ACCOUNT}
        }))
        .unwrap();
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let (_, load_template) = templates
            .iter()
            .find(|(r, _)| *r == Role::Load)
            .unwrap()
            .clone();
        let load_pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{}-0-abcde", children.load)),
                labels: load_template.metadata.as_ref().unwrap().labels.clone(),
                ..Default::default()
            },
            spec: load_template.spec.clone(),
            ..Default::default()
        };
        // Pod Security "restricted" admits it, metrics port and all.
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
        pods.create(&PostParams::default(), &load_pod)
            .await
            .unwrap();

        let running = wait_for(Duration::from_secs(90), "4 pods running with an IP", || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?.items;
                let running: Vec<Pod> = list
                    .into_iter()
                    .filter(|p| {
                        let st = p.status.as_ref();
                        st.and_then(|s| s.phase.as_deref()) == Some("Running")
                            && st.and_then(|s| s.pod_ip.as_deref()).is_some()
                    })
                    .collect();
                (running.len() == 4).then_some(running)
            }
        })
        .await;

        // prometheus-operator's translation of each endpoint, scoped to this namespace. One more
        // rule sends every scrape to a closed loopback port: the kwok pod IPs are not routable
        // and the tests talk to loopback only.
        let docs = monitors_enabled();
        let monitor = kind(&docs, "PodMonitor").clone();
        let endpoints = monitor["spec"]["podMetricsEndpoints"]
            .as_sequence()
            .unwrap()
            .clone();
        let mut to_loopback = RelabelConfig::new("replace", &[], "(.*)");
        to_loopback.target_label = Some("__address__".into());
        to_loopback.replacement = "127.0.0.1:9".into();
        let pki = kubeconfig_path().parent().unwrap().join("pki");
        let server = ok(&kubectl(&[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]));
        let mut jobs = BTreeMap::new();
        let scrape_configs: Vec<serde_json::Value> = endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let name = format!(
                    "podMonitor/{}/{}/{i}",
                    monitor["metadata"]["namespace"].as_str().unwrap(),
                    monitor["metadata"]["name"].as_str().unwrap()
                );
                let mut configs = prometheus_operator_relabel_configs(&monitor, endpoint);
                configs.push(to_loopback.clone());
                jobs.insert(name.clone(), configs.clone());
                serde_json::json!({
                    "job_name": name,
                    "honor_labels": endpoint["honorLabels"].as_bool().unwrap_or(false),
                    "scrape_interval": "1h",
                    "metrics_path": endpoint["path"].as_str().unwrap(),
                    "kubernetes_sd_configs": [{
                        "role": "pod",
                        "api_server": server,
                        "namespaces": {"names": [ns]},
                        "tls_config": {
                            "ca_file": pki.join("ca.crt"),
                            "cert_file": pki.join("admin.crt"),
                            "key_file": pki.join("admin.key"),
                        },
                    }],
                    "relabel_configs": configs,
                })
            })
            .collect();
        let prometheus = Prometheus::start(&serde_json::json!({
            "global": {"scrape_interval": "1h", "evaluation_interval": "1h"},
            "scrape_configs": scrape_configs,
        }));

        // Every (pod, port, job) Prometheus discovers; 4 pods with one port each, twice.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let targets = loop {
            let t = prometheus.targets().unwrap_or_default();
            let discovered = ["activeTargets", "droppedTargets"]
                .iter()
                .map(|k| t["data"][k].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            if discovered == 8 {
                break t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus did not discover 4 pods for each of 2 jobs in 60 s: {t:#}\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let log = prometheus.log();
        let active = targets["data"]["activeTargets"].as_array().unwrap();
        let dropped = targets["data"]["droppedTargets"].as_array().unwrap();
        assert_eq!(
            (active.len(), dropped.len()),
            (4, 4),
            "one job keeps each pod: {targets:#}\n{log}"
        );

        // Relabeling here agrees with Prometheus's, target by target, kept or dropped.
        for (target, kept) in active
            .iter()
            .map(|t| (t, true))
            .chain(dropped.iter().map(|t| (t, false)))
        {
            let found = str_labels(&target["discoveredLabels"]);
            let pool = target["scrapePool"]
                .as_str()
                .or(found.get("job").map(String::as_str))
                .expect("a target names its scrape config");
            let job = &jobs[pool];
            let emulated = relabel(found.clone(), job);
            if kept {
                assert_eq!(
                    emulated.as_ref(),
                    Some(&str_labels(&target["labels"])),
                    "{found:#?}"
                );
            } else {
                assert_eq!(emulated, None, "Prometheus dropped {found:#?}");
            }

            // The discovery labels the offline tests assume are the ones Prometheus gives.
            let pod = running
                .iter()
                .find(|p| p.metadata.name.as_ref() == Some(&found["__meta_kubernetes_pod_name"]))
                .unwrap();
            let template = PodTemplateSpec {
                metadata: Some(pod.metadata.clone()),
                spec: pod.spec.clone(),
            };
            let assumed = pod_discovery_labels(
                &ns,
                &found["__meta_kubernetes_pod_name"],
                &template,
                &found["__meta_kubernetes_pod_container_port_name"],
                "Running",
                pod.status.as_ref().unwrap().pod_ip.as_deref().unwrap(),
            );
            for (k, v) in &assumed {
                assert_eq!(found.get(k), Some(v), "discovery label {k}");
            }
        }

        // The kept targets: each workload pod by `http`, the load pod by `metrics`, each with a
        // local run's labels.
        let mut roles = BTreeMap::new();
        for target in active {
            let labels = str_labels(&target["labels"]);
            let pod = labels["pod"].clone();
            let role = if labels["endpoint"] == "http" {
                Role::Server
            } else {
                assert_eq!(labels["endpoint"], "metrics");
                Role::Load
            };
            *roles.entry(role.as_str()).or_insert(0) += 1;
            assert_like_a_local_runs_target(labels, role, &exp, key, &ns, &pod);
        }
        assert_eq!(roles, BTreeMap::from([("server", 3), ("load", 1)]));
    }
}
