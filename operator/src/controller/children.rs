//! What the operator creates for a step, as plain Kubernetes objects: the workload Deployment and
//! Service, and the load Job. Pure functions of (Experiment, step, settings), so the shape of
//! every child — names, labels, env, probes, the restricted security context — is unit-tested
//! without a cluster.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile, SecurityContext,
    Service, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeProjection, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{Experiment, Implementation, Mode, StepKey};
use crate::planner::GeneratorLoad;
use crate::reference::ReferenceImages;

/// Label on every child: the owning Experiment's UID (names can exceed a label value's 63 bytes).
pub const LABEL_EXPERIMENT_UID: &str = "loopscale.dev/experiment-uid";
/// Label on every child: the owning Experiment's name, truncated to fit a label value.
pub const LABEL_EXPERIMENT: &str = "loopscale.dev/experiment";
/// Label on every child: the step's position in the plan, from 1.
pub const LABEL_STEP: &str = "loopscale.dev/step";
/// Label on every child: `workload` or `load`.
pub const LABEL_COMPONENT: &str = "loopscale.dev/component";
/// Label on the workload pods: `emulated` or `reference` (which servers play the modes).
pub const LABEL_IMPLEMENTATION: &str = "loopscale.dev/implementation";
/// Labels carrying the step's key, so the observed children say which step they belong to.
pub const LABEL_MODE: &str = "loopscale.dev/mode";
/// See [`LABEL_MODE`].
pub const LABEL_PROCESSES: &str = "loopscale.dev/processes";
/// See [`LABEL_MODE`].
pub const LABEL_REPLICAS: &str = "loopscale.dev/replicas";
/// See [`LABEL_MODE`].
pub const LABEL_REPETITION: &str = "loopscale.dev/repetition";
/// Label a load pod puts on its report ConfigMap: marks it as a report for the operator to list.
pub const LABEL_REPORT: &str = "loopscale.dev/report";

/// The per-namespace ServiceAccount of the load pods; may only create ConfigMaps.
pub const LOAD_SERVICE_ACCOUNT: &str = "loopscale-load";
/// Audience of the projected token a load pod puts into its report as proof of origin.
pub const REPORT_TOKEN_AUDIENCE: &str = "loopscale";
/// Where the load pod's proof token is mounted.
pub const REPORT_TOKEN_DIR: &str = "/var/run/secrets/loopscale";
/// Lifetime requested for the proof token: the operator must read a report within it.
pub const REPORT_TOKEN_SECONDS: i64 = 3600;
/// Port the workload listens on (`PORT`), metrics included.
pub const WORKLOAD_PORT: i32 = 8080;
/// Port of a load pod's live metrics (`LOOPSCALE_LOAD_METRICS_ADDR`), for the chart's PodMonitor.
pub const LOAD_METRICS_PORT: i32 = 9464;
/// Name of that container port; the chart's PodMonitor scrapes the load pods by it.
pub const LOAD_METRICS_PORT_NAME: &str = "metrics";
/// Retries of a failed load pod before the Job gives up.
pub const LOAD_BACKOFF_LIMIT: i32 = 2;

/// Settings the operator brings to every child (from its command line / the chart's values).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSettings {
    /// Image of the workload (`serve`) and load (`load`) roles, unless the spec names one.
    pub workload_image: String,
    /// Images of the real servers that play the modes with `implementation: reference`.
    pub reference_images: ReferenceImages,
    /// Pull policy of every child's image (`IfNotPresent` for kind-loaded images).
    pub image_pull_policy: Option<String>,
}

/// Names and labels of one step's children.
#[derive(Debug, Clone, PartialEq)]
pub struct StepChildren {
    /// Deployment and Service name.
    pub workload: String,
    /// Job name.
    pub load: String,
    /// Labels common to every child of the step.
    pub labels: BTreeMap<String, String>,
}

fn short_hash(text: &str) -> String {
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// `name` cut to `max` bytes, with a hash of the whole name when cut so that two long names
/// stay distinct; never ends in `-` or `.` (DNS label rules).
pub fn bounded_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash = short_hash(name);
    let keep = max.saturating_sub(hash.len() + 1);
    let head: String = name.chars().take(keep).collect();
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

/// Names and labels of step `index` (from 1) of `exp`. Names are DNS labels (Services need
/// them): at most 63 bytes, the `-load` Job name included, so the Job's pods' `job-name` label
/// fits too.
pub fn step_children(exp: &Experiment, index: u32, key: &StepKey) -> StepChildren {
    let base = bounded_name(&exp.name_any(), 40);
    let workload = format!("{base}-s{index}");
    let load = format!("{workload}-load");
    let mut labels = BTreeMap::new();
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "loopscale-operator".into(),
    );
    labels.insert("app.kubernetes.io/part-of".into(), "loopscale".into());
    labels.insert(LABEL_EXPERIMENT.into(), bounded_name(&exp.name_any(), 63));
    labels.insert(LABEL_EXPERIMENT_UID.into(), exp.uid().unwrap_or_default());
    labels.insert(LABEL_STEP.into(), index.to_string());
    labels.insert(LABEL_MODE.into(), key.mode.as_str().into());
    labels.insert(LABEL_PROCESSES.into(), key.processes.to_string());
    labels.insert(LABEL_REPLICAS.into(), key.replicas.to_string());
    labels.insert(LABEL_REPETITION.into(), key.repetition.to_string());
    StepChildren {
        workload,
        load,
        labels,
    }
}

/// The step a child belongs to, read back from its labels; `None` for objects without them.
pub fn step_of(labels: &BTreeMap<String, String>) -> Option<(u32, StepKey)> {
    let mode = match labels.get(LABEL_MODE)?.as_str() {
        "event-loop" => Mode::EventLoop,
        "thread-pool" => Mode::ThreadPool,
        _ => return None,
    };
    let num = |k: &str| labels.get(k)?.parse::<u32>().ok();
    Some((
        num(LABEL_STEP)?,
        StepKey {
            mode,
            processes: num(LABEL_PROCESSES)?,
            replicas: num(LABEL_REPLICAS)?,
            repetition: num(LABEL_REPETITION)?,
        },
    ))
}

fn with_component(labels: &BTreeMap<String, String>, component: &str) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    l.insert(LABEL_COMPONENT.into(), component.into());
    l
}

/// Labels that select the step's workload pods (the Service and the anti-affinity use them).
fn workload_selector(children: &StepChildren) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    for k in [LABEL_EXPERIMENT_UID, LABEL_STEP] {
        s.insert(k.to_string(), children.labels[k].clone());
    }
    s.insert(LABEL_COMPONENT.into(), "workload".into());
    s
}

fn meta(exp: &Experiment, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: exp.namespace(),
        labels: Some(labels),
        owner_references: exp.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The container security context of Pod Security "restricted": no privilege escalation, no
/// capabilities, non-root, read-only root filesystem, RuntimeDefault seccomp.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod security context of Pod Security "restricted" (the image's user is 65532, nonroot).
pub fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn image(exp: &Experiment, settings: &ChildSettings) -> String {
    exp.spec
        .workload
        .image
        .clone()
        .unwrap_or_else(|| settings.workload_image.clone())
}

/// The workload server's environment for a step: the planner's (the same as the local
/// backend's) plus the port.
pub fn workload_env(exp: &Experiment, key: &StepKey) -> Vec<EnvVar> {
    let mut e: Vec<EnvVar> = crate::planner::workload_env(&exp.spec, key)
        .into_iter()
        .map(|(name, value)| env(&name, value))
        .collect();
    e.push(env("PORT", WORKLOAD_PORT));
    e
}

/// Image and arguments of the step's workload container: `loopscale-workload serve`, or the
/// reference image of the step's mode with its own command.
pub fn workload_image(
    exp: &Experiment,
    key: &StepKey,
    settings: &ChildSettings,
) -> (String, Option<Vec<String>>) {
    match exp.spec.workload.implementation {
        Implementation::Emulated => (image(exp, settings), Some(vec!["serve".into()])),
        Implementation::Reference => (
            settings.reference_images.for_mode(key.mode).to_string(),
            None,
        ),
    }
}

/// Name of the workload container's port. The reference servers have no `/metrics`, so their
/// port is not called `http`, the name the chart's PodMonitor scrapes.
fn workload_port_name(exp: &Experiment) -> &'static str {
    match exp.spec.workload.implementation {
        Implementation::Emulated => "http",
        Implementation::Reference => "web",
    }
}

/// The step's workload Deployment: `replicas` pods of `loopscale-workload serve` (or of the
/// mode's reference server), ready when `/readyz` answers, restarted only when `/healthz` has
/// not answered for a minute. The probes are patient because a CPU-bound step keeps an event
/// loop busy for a long time by design: a probe that failed under load would take a replica out
/// of the Service (or restart it) in the middle of a measurement.
pub fn workload_deployment(
    exp: &Experiment,
    children: &StepChildren,
    key: &StepKey,
    settings: &ChildSettings,
) -> Deployment {
    let mut pod_labels = with_component(&children.labels, "workload");
    pod_labels.insert(
        LABEL_IMPLEMENTATION.into(),
        exp.spec.workload.implementation.as_str().into(),
    );
    let port = workload_port_name(exp);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let (image, args) = workload_image(exp, key, settings);
    let reference = exp.spec.workload.implementation == Implementation::Reference;
    let mut pod_security = restricted_pod_security();
    if reference {
        // Each reference image runs as its own numeric non-root USER (see their Dockerfiles);
        // runAsNonRoot makes the kubelet check it.
        pod_security.run_as_user = None;
        pod_security.run_as_group = None;
    }
    // Neither reference server writes files (strace of both with 2 workers under load showed
    // no file opened for writing), so the root filesystem stays read-only; /tmp is scratch
    // space should a runtime want one (Python's tempfile, Node's os.tmpdir()).
    let (volumes, mounts) = if reference {
        (
            Some(vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("64Mi".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            }]),
        )
    } else {
        (None, None)
    };
    Deployment {
        metadata: meta(exp, &children.workload, pod_labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(key.replicas as i32),
            selector: LabelSelector {
                match_labels: Some(workload_selector(children)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security),
                    termination_grace_period_seconds: Some(10),
                    containers: vec![Container {
                        name: "workload".into(),
                        image: Some(image),
                        image_pull_policy: settings.image_pull_policy.clone(),
                        args,
                        env: Some(workload_env(exp, key)),
                        ports: Some(vec![ContainerPort {
                            name: Some(port.into()),
                            container_port: WORKLOAD_PORT,
                            ..Default::default()
                        }]),
                        readiness_probe: Some(probe("/readyz", 2, 3)),
                        liveness_probe: Some(probe("/healthz", 10, 6)),
                        resources: exp.spec.workload.resources.clone(),
                        security_context: Some(restricted_container_security()),
                        volume_mounts: mounts,
                        ..Default::default()
                    }],
                    volumes,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service in front of the step's workload pods; the load generators' target.
pub fn workload_service(exp: &Experiment, children: &StepChildren) -> Service {
    Service {
        metadata: meta(
            exp,
            &children.workload,
            with_component(&children.labels, "workload"),
        ),
        spec: Some(ServiceSpec {
            selector: Some(workload_selector(children)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: WORKLOAD_PORT,
                // By number: the container port's name depends on the implementation.
                target_port: Some(IntOrString::Int(WORKLOAD_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// URL the load generators aim at: the step's Service.
pub fn target_url(exp: &Experiment, children: &StepChildren) -> String {
    format!(
        "http://{}.{}.svc:{WORKLOAD_PORT}",
        children.workload,
        exp.namespace().unwrap_or_else(|| "default".into())
    )
}

/// The flags every generator of the step runs with. The Job's pods share one template, so each
/// gets the first generator's share; the planner's shares differ by at most one, and the CRD's
/// rules keep every share at least 1. (An uneven split loses `total mod generators` units;
/// see README-cluster.md.)
pub fn common_generator_args(generators: &[GeneratorLoad]) -> Vec<String> {
    generators
        .iter()
        .min_by_key(|g| (g.rate, g.concurrency, g.connections))
        .map(GeneratorLoad::args)
        .unwrap_or_default()
}

/// The step's load Job: `generators` indexed pods of `loopscale-workload load`, each publishing its
/// report as a ConfigMap with a proof-of-origin token (see `reports`).
pub fn load_job(
    exp: &Experiment,
    children: &StepChildren,
    generators: &[GeneratorLoad],
    settings: &ChildSettings,
) -> Job {
    let n = generators.len().max(1) as i32;
    let pod_labels = with_component(&children.labels, "load");
    let mut args = vec![
        "load".to_string(),
        "--target".into(),
        target_url(exp, children),
    ];
    args.extend(common_generator_args(generators));
    args.extend([
        "--report".into(),
        "-".into(),
        "--publish-configmap".into(),
        "$(LOOPSCALE_POD_NAME)".into(),
    ]);
    let mut report_labels: Vec<String> = [LABEL_EXPERIMENT_UID, LABEL_STEP]
        .iter()
        .map(|k| format!("{k}={}", children.labels[*k]))
        .collect();
    report_labels.push(format!("{LABEL_REPORT}=true"));
    let anti_affinity = PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(workload_selector(children)),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..Default::default()
            },
        }]),
        ..Default::default()
    };
    Job {
        metadata: meta(exp, &children.load, pod_labels.clone()),
        spec: Some(JobSpec {
            completions: Some(n),
            parallelism: Some(n),
            completion_mode: Some("Indexed".into()),
            backoff_limit: Some(LOAD_BACKOFF_LIMIT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(LOAD_SERVICE_ACCOUNT.into()),
                    security_context: Some(restricted_pod_security()),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(anti_affinity),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: "load".into(),
                        image: Some(image(exp, settings)),
                        image_pull_policy: settings.image_pull_policy.clone(),
                        args: Some(args),
                        env: Some(vec![
                            field_env("LOOPSCALE_POD_NAME", "metadata.name"),
                            field_env("LOOPSCALE_POD_UID", "metadata.uid"),
                            field_env("LOOPSCALE_POD_NAMESPACE", "metadata.namespace"),
                            env("LOOPSCALE_PUBLISH_LABELS", report_labels.join(",")),
                            env(
                                "LOOPSCALE_PUBLISH_TOKEN_FILE",
                                format!("{REPORT_TOKEN_DIR}/token"),
                            ),
                            // Live client-side metrics for the PodMonitor, on every interface
                            // (the scrape comes from Prometheus's pod).
                            env(
                                "LOOPSCALE_LOAD_METRICS_ADDR",
                                format!("0.0.0.0:{LOAD_METRICS_PORT}"),
                            ),
                        ]),
                        ports: Some(vec![ContainerPort {
                            name: Some(LOAD_METRICS_PORT_NAME.into()),
                            container_port: LOAD_METRICS_PORT,
                            ..Default::default()
                        }]),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "report-token".into(),
                            mount_path: REPORT_TOKEN_DIR.into(),
                            read_only: Some(true),
                            ..Default::default()
                        }]),
                        security_context: Some(restricted_container_security()),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "report-token".into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    audience: Some(REPORT_TOKEN_AUDIENCE.into()),
                                    expiration_seconds: Some(REPORT_TOKEN_SECONDS),
                                    path: "token".into(),
                                }),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Owner reference of `exp` (its controller), for the children above.
pub fn owner(exp: &Experiment) -> Option<OwnerReference> {
    exp.controller_owner_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{generator_loads, plan};
    use crate::validation::validate_manifest;

    fn experiment(name: &str) -> Experiment {
        let yaml = format!(
            r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}, namespace: lab}}
spec:
  workload:
    modes: [thread-pool]
    gil: false
    balancing: shared-socket
    resources: {{requests: {{cpu: 250m}}}}
  scenario: {{route: cpu, cpuMillis: 10}}
  matrix: {{processes: [2], replicas: [3]}}
  load: {{model: open, rate: 400, generators: 2, warmup: 1s, duration: 2s}}
"#
        );
        let mut e = validate_manifest(&yaml).unwrap();
        e.metadata.uid = Some("0b0e6c1e-uid".into());
        e
    }

    fn settings() -> ChildSettings {
        ChildSettings {
            workload_image: "loopscale-workload:test".into(),
            reference_images: ReferenceImages {
                express: "loopscale-reference-express:test".into(),
                fastapi: "loopscale-reference-fastapi:test".into(),
            },
            image_pull_policy: Some("IfNotPresent".into()),
        }
    }

    fn assert_restricted(pod: &PodSpec) {
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for c in &pod.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
        for v in pod.volumes.iter().flatten() {
            assert!(
                v.projected.is_some() || v.empty_dir.is_some(),
                "restricted allows only listed volume types: {v:?}"
            );
        }
    }

    #[test]
    fn the_deployment_carries_the_step_env_probe_resources_and_owner() {
        let exp = experiment("x");
        let key = plan(&exp.spec)[0];
        let c = step_children(&exp, 1, &key);
        let d = workload_deployment(&exp, &c, &key, &settings());
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_restricted(pod);
        let ctr = &pod.containers[0];
        let env: BTreeMap<_, _> = ctr
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["LOOPSCALE_MODE"], "thread-pool");
        assert_eq!(env["LOOPSCALE_PROCESSES"], "2");
        assert_eq!(env["LOOPSCALE_GIL"], "false");
        assert_eq!(env["LOOPSCALE_THREADPOOL_SIZE"], "40");
        assert_eq!(env["LOOPSCALE_BALANCING"], "shared-socket");
        assert_eq!(env["PORT"], "8080");
        assert_eq!(ctr.args.as_deref(), Some(&["serve".to_string()][..]));
        let probe = ctr
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert!(ctr
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()
            .contains_key("cpu"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Experiment", Some(true))
        );
        // The selector matches the template's labels, and the labels say which step it is.
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        assert_eq!(step_of(labels), Some((1, key)));
    }

    #[test]
    fn the_job_runs_indexed_generators_away_from_the_workload_and_publishes() {
        let exp = experiment("x");
        let key = plan(&exp.spec)[0];
        let c = step_children(&exp, 1, &key);
        let job = load_job(&exp, &c, &generator_loads(&exp.spec), &settings());
        let spec = job.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.backoff_limit, Some(LOAD_BACKOFF_LIMIT));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_restricted(pod);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some(LOAD_SERVICE_ACCOUNT)
        );
        let anti = pod
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap();
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        let selected = term
            .pod_affinity_term
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(selected[LABEL_COMPONENT], "workload");
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(args[0], "load");
        assert!(args
            .windows(2)
            .any(|w| w == ["--target", "http://x-s1.lab.svc:8080"]));
        // 400 over 2 generators (the CRD wants a multiple): 200 each.
        assert!(args.windows(2).any(|w| w == ["--rate", "200"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--path", "/cpu?ms=10"]));
        assert!(args.contains(&"--publish-configmap".to_string()));
        let vol = &pod.volumes.as_ref().unwrap()[0];
        let token = vol.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some(REPORT_TOKEN_AUDIENCE));
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap()))
            .collect()
    }

    #[test]
    fn a_reference_experiment_runs_the_real_server_of_each_mode() {
        let yaml = r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {name: real, namespace: lab}
spec:
  workload:
    implementation: reference
    modes: [event-loop, thread-pool]
    threadPoolSize: 8
    libuvThreadPoolSize: 6
  scenario: {route: cpu, cpuMillis: 10}
  matrix: {processes: [2], replicas: [1]}
  load: {model: closed, concurrency: 4, warmup: 1s, duration: 2s}
"#;
        let mut exp = validate_manifest(yaml).unwrap();
        exp.metadata.uid = Some("uid-real".into());
        let steps = plan(&exp.spec);
        let mut seen = Vec::new();
        for (i, key) in steps.iter().enumerate() {
            let c = step_children(&exp, i as u32 + 1, key);
            let d = workload_deployment(&exp, &c, key, &settings());
            let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
            assert_restricted(&pod);
            // The image's own non-root USER, checked by the kubelet (runAsNonRoot).
            let psc = pod.security_context.as_ref().unwrap();
            assert_eq!((psc.run_as_user, psc.run_as_non_root), (None, Some(true)));
            let ctr = &pod.containers[0];
            assert_eq!(ctr.args, None, "the image's own command runs the server");
            let env = env_of(ctr);
            assert_eq!(env["LOOPSCALE_PROCESSES"], "2");
            assert_eq!(env["PORT"], "8080");
            assert!(!env.contains_key("LOOPSCALE_REQUEST_OVERHEAD_US"));
            assert!(!env.contains_key("LOOPSCALE_RESUME_OVERHEAD_US"));
            assert!(!env.contains_key("LOOPSCALE_CONNECTION_OVERHEAD_US"));
            let probe_path = |p: &Option<Probe>| {
                let get = p.as_ref().unwrap().http_get.clone().unwrap();
                (get.path.unwrap(), get.port)
            };
            let web = IntOrString::String("web".into());
            assert_eq!(
                probe_path(&ctr.readiness_probe),
                ("/readyz".into(), web.clone())
            );
            assert_eq!(probe_path(&ctr.liveness_probe), ("/healthz".into(), web));
            // A writable /tmp on an emptyDir; the root filesystem stays read-only.
            let mount = &ctr.volume_mounts.as_ref().unwrap()[0];
            assert_eq!(mount.mount_path, "/tmp");
            let labels = d.spec.as_ref().unwrap().template.metadata.clone().unwrap();
            assert_eq!(labels.labels.unwrap()[LABEL_IMPLEMENTATION], "reference");
            seen.push((key.mode, ctr.image.clone().unwrap(), env));
        }
        let (mode, image, env) = &seen[0];
        assert_eq!(*mode, Mode::EventLoop);
        assert_eq!(image, "loopscale-reference-express:test");
        assert_eq!(env["LOOPSCALE_LIBUV_THREADPOOL_SIZE"], "6");
        let (mode, image, env) = &seen[1];
        assert_eq!(*mode, Mode::ThreadPool);
        assert_eq!(image, "loopscale-reference-fastapi:test");
        assert_eq!(env["LOOPSCALE_THREADPOOL_SIZE"], "8");
        assert_eq!(env["LOOPSCALE_GIL"], "true");
        // The load still runs loopscale-workload, and the Service reaches either port.
        let c = step_children(&exp, 1, &steps[0]);
        let job = load_job(&exp, &c, &generator_loads(&exp.spec), &settings());
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("loopscale-workload:test")
        );
        let svc = workload_service(&exp, &c);
        assert_eq!(
            svc.spec.unwrap().ports.unwrap()[0].target_port,
            Some(IntOrString::Int(WORKLOAD_PORT))
        );
    }

    #[test]
    fn load_pods_serve_live_metrics_on_the_named_port() {
        let exp = experiment("x");
        let key = plan(&exp.spec)[0];
        let c = step_children(&exp, 1, &key);
        let job = load_job(&exp, &c, &generator_loads(&exp.spec), &settings());
        let template = &job.spec.as_ref().unwrap().template;
        let ctr = &template.spec.as_ref().unwrap().containers[0];
        let ports = ctr.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(LOAD_METRICS_PORT_NAME))
            .expect("a container port named for the PodMonitor");
        let addr = ctr
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "LOOPSCALE_LOAD_METRICS_ADDR")
            .and_then(|e| e.value.as_deref())
            .expect("LOOPSCALE_LOAD_METRICS_ADDR");
        // The generator parses it as a socket address; it listens where the port says.
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert!(
            addr.ip().is_unspecified(),
            "{addr}: reachable from Prometheus"
        );
        assert_eq!(i32::from(addr.port()), port.container_port);
        assert_eq!(port.protocol, None, "TCP, the default");
        // The PodMonitor selects load pods by these labels.
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_COMPONENT], "load");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "loopscale-operator");
    }

    #[test]
    fn names_fit_dns_labels_and_stay_distinct() {
        let long_a = "a".repeat(60) + "-one";
        let long_b = "a".repeat(60) + "-two";
        let key = plan(&experiment("x").spec)[0];
        let a = step_children(&experiment(&long_a), 12, &key);
        let b = step_children(&experiment(&long_b), 12, &key);
        assert!(a.load.len() <= 63, "{}", a.load);
        assert_ne!(a.workload, b.workload);
        assert!(a.labels.values().all(|v| v.len() <= 63));
        assert_eq!(bounded_name("short", 40), "short");
    }
}
