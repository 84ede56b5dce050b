//! Harness of the control-plane tests (`--features control-plane`): the real API server,
//! controller manager, scheduler and kwok from `deploy/testenv`, the chart installed with Helm,
//! and the operator run out of the cluster with the chart ServiceAccount's own token, so every
//! RBAC gap fails a test.
//!
//! Needs `deploy/testenv/up` first (KUBECONFIG, or `deploy/testenv/run/kubeconfig`). The tests
//! share one cluster and one operator release, so they run one at a time ([`serial`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use loopscale::crd::{Experiment, Phase};
use loopscale_workload::load::publish::{self, PublishTarget};
use loopscale_workload::report::{new_histogram, Counts, GeneratorInfo, LoadModel, Report};

/// Namespace and release of the chart under test.
pub const RELEASE_NS: &str = "loopscale-system";
/// Helm release name (so the ServiceAccount and ClusterRoles are named `loopscale`...).
pub const RELEASE: &str = "loopscale";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("deploy/testenv/run/kubeconfig"))
}

pub fn tool(name: &str) -> PathBuf {
    repo_root().join("deploy/testenv/bin").join(name)
}

/// Run a testenv tool (kubectl, helm) against the admin kubeconfig.
pub fn run_tool(name: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(tool(name));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name} (run deploy/testenv/build): {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn kubectl(args: &[&str]) -> Output {
    run_tool("kubectl", args, None)
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The admin client (cluster-admin), for the tests' own setup and checks.
pub async fn admin() -> Client {
    let kc =
        Kubeconfig::read_from(kubeconfig_path()).expect("deploy/testenv/up wrote a kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Tests share the cluster and the operator release: one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

static CHART: OnceLock<PathBuf> = OnceLock::new();

/// `helm upgrade --install` the chart once per test process; returns a kubeconfig that
/// authenticates as the chart's ServiceAccount (a token from the TokenRequest API).
pub fn install_chart() -> PathBuf {
    CHART
        .get_or_init(|| {
            let chart = repo_root().join("charts/loopscale");
            // The release namespace enforces Pod Security "restricted" too: the operator's own
            // pod must pass it, or `--wait` times out.
            let ns_yaml = format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {RELEASE_NS}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
            );
            ok(&run_tool("kubectl", &["apply", "-f", "-"], Some(&ns_yaml)));
            ok(&run_tool(
                "helm",
                &[
                    "upgrade",
                    "--install",
                    RELEASE,
                    chart.to_str().unwrap(),
                    "--namespace",
                    RELEASE_NS,
                    "--wait",
                    "--timeout",
                    "60s",
                ],
                None,
            ));
            let token = ok(&kubectl(&["-n", RELEASE_NS, "create", "token", RELEASE, "--duration", "2h"]));
            let server = ok(&kubectl(&["config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.server}"]));
            let ca = ok(&kubectl(&[
                "config",
                "view",
                "--raw",
                "-o",
                "jsonpath={.clusters[0].cluster.certificate-authority-data}",
            ]));
            let path = std::env::temp_dir().join(format!("loopscale-operator-sa-{}.kubeconfig", std::process::id()));
            std::fs::write(
                &path,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters: [{{name: testenv, cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}}}]\nusers: [{{name: operator, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: operator, context: {{cluster: testenv, user: operator}}}}]\ncurrent-context: operator\n",
                    token.trim()
                ),
            )
            .unwrap();
            path
        })
        .clone()
}

/// The operator binary, run out of the cluster with the chart ServiceAccount's credentials.
pub struct Operator {
    child: Child,
    /// Address of /metrics, /healthz, /readyz.
    pub addr: String,
    pub log: PathBuf,
}

impl Operator {
    pub fn start() -> Operator {
        let kubeconfig = install_chart();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!(
            "loopscale-operator-{}-{port}.log",
            std::process::id()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_loopscale"))
            .args(["operator", "--listen", &addr])
            .args([
                "--workload-image",
                "registry.invalid/loopscale-workload:test",
            ])
            .args(["--load-cluster-role", &format!("{RELEASE}-load")])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Operator { child, addr, log }
    }

    /// SIGKILL: no chance to clean up, as in a crash or a node loss.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful shutdown path.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the operator's HTTP server.
    pub async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh namespace enforcing Pod Security "restricted": every pod the operator's children
/// create must pass it, or the step never gets its pods.
pub async fn restricted_namespace(client: &Client, name: &str) -> (String, NamespaceCleanup) {
    let name = name.to_string();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}
    }))
    .unwrap();
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(&name).await.unwrap().is_some() {
        let _ = api.delete(&name, &Default::default()).await;
        wait_for(Duration::from_secs(60), "old namespace deleted", || async {
            api.get_opt(&name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    api.create(&PostParams::default(), &ns).await.unwrap();
    (name.clone(), NamespaceCleanup(name))
}

/// Deletes its namespace when the test ends, passed or failed.
pub struct NamespaceCleanup(pub String);

impl Drop for NamespaceCleanup {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// Poll `check` every 250 ms until it yields, or panic after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `kubectl apply` a manifest into `ns`.
pub fn apply(ns: &str, yaml: &str) -> Output {
    run_tool("kubectl", &["-n", ns, "apply", "-f", "-"], Some(yaml))
}

pub async fn experiment(client: &Client, ns: &str, name: &str) -> Experiment {
    Api::<Experiment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phases: &[Phase],
    limit: Duration,
) -> Experiment {
    let api: Api<Experiment> = Api::namespaced(client.clone(), ns);
    wait_for(
        limit,
        &format!("{ns}/{name} to reach {phases:?}"),
        || async {
            let e = api.get(name).await.ok()?;
            let phase = e.status.as_ref()?.phase;
            phases.contains(&phase).then_some(e)
        },
    )
    .await
}

/// Requests each stand-in generator reports, over a 2 s window: 500 ok responses per second.
pub const STAND_IN_OK: u64 = 1000;
pub const STAND_IN_WINDOW_SECS: f64 = 2.0;

/// The report a stand-in generator delivers: fixed, known numbers (10 ms each request), so the
/// test can check the operator merged exactly the verified reports.
pub fn stand_in_report(target: &str) -> Report {
    let mut h = new_histogram();
    for _ in 0..STAND_IN_OK {
        h.record(10_000).unwrap();
    }
    let info = GeneratorInfo {
        model: LoadModel::Closed,
        rate: None,
        concurrency: 4,
        connections: 4,
        targets: vec![target.to_string()],
        path: "/cpu?ms=10".into(),
        warmup_secs: 1.0,
        duration_secs: STAND_IN_WINDOW_SECS,
    };
    let counts = Counts {
        ok: STAND_IN_OK,
        ..Default::default()
    };
    Report::build(info, STAND_IN_WINDOW_SECS, &h, counts, Vec::new()).unwrap()
}

/// A bound ServiceAccount token for `pod` (TokenRequest API), as the kubelet would mount one.
pub async fn pod_token(
    admin: &Client,
    ns: &str,
    sa: &str,
    pod: &Pod,
    audience: Option<&str>,
) -> String {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            expiration_seconds: Some(3600),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

/// A client that authenticates with `token` and nothing else (no client certificate).
pub async fn token_client(token: &str) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig_path()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

/// STAND-IN FOR THE LOAD GENERATOR'S RUN — kwok runs no containers, so nothing executes
/// `loopscale-workload load` in a load pod. For each load pod kwok "runs", this delivers that
/// pod's report through exactly the path a real load pod uses: the publish request of
/// `loopscale_workload::load::publish::publish`, authenticated as the pod's `loopscale-load`
/// ServiceAccount with a token bound to that pod (what the kubelet mounts), carrying the pod's
/// projected `loopscale`-audience proof token, with the labels and name the pod spec gives the
/// container. Only the report's numbers are made up ([`stand_in_report`]).
pub struct StandIn {
    task: tokio::task::JoinHandle<()>,
    pub delivered: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
}

impl StandIn {
    pub fn start(admin: Client, ns: String) -> StandIn {
        let delivered = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let seen = delivered.clone();
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
            loop {
                let list = pods
                    .list(&ListParams::default().labels("loopscale.dev/component=load"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                for pod in list {
                    let name = pod.name_any();
                    if seen.lock().unwrap().contains(&name)
                        || pod.metadata.deletion_timestamp.is_some()
                    {
                        continue;
                    }
                    let Some(spec) = pod.spec.as_ref() else {
                        continue;
                    };
                    let container = &spec.containers[0];
                    let env: BTreeMap<String, String> = container
                        .env
                        .iter()
                        .flatten()
                        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                        .collect();
                    let args = container.args.clone().unwrap_or_default();
                    let target = args
                        .windows(2)
                        .find(|w| w[0] == "--target")
                        .map(|w| w[1].clone())
                        .unwrap_or_default();
                    let sa = spec.service_account_name.clone().unwrap_or_default();
                    let api_token = pod_token(&admin, &ns, &sa, &pod, None).await;
                    let proof = pod_token(&admin, &ns, &sa, &pod, Some("loopscale")).await;
                    let target_cm = PublishTarget {
                        namespace: ns.clone(),
                        name: name.clone(),
                        labels: publish::parse_labels(
                            env.get("LOOPSCALE_PUBLISH_LABELS")
                                .map(String::as_str)
                                .unwrap_or(""),
                        )
                        .unwrap(),
                        pod: (name.clone(), pod.uid().unwrap_or_default()),
                    };
                    let report = stand_in_report(&target).to_json();
                    match publish::publish(
                        token_client(&api_token).await,
                        &target_cm,
                        &report,
                        &proof,
                    )
                    .await
                    {
                        Ok(()) => {
                            seen.lock().unwrap().insert(name);
                        }
                        Err(e) => eprintln!("stand-in: publishing for {name} failed: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        StandIn { task, delivered }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small Experiment for the control-plane tests: 2 modes × 1 process × replicas [1, 2],
/// 2 generators, short windows.
pub fn small_experiment(name: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata:
  name: {name}
spec:
  workload:
    modes: [event-loop, thread-pool]
    resources: {{requests: {{cpu: 100m, memory: 64Mi}}, limits: {{cpu: 500m, memory: 128Mi}}}}
  scenario: {{route: cpu, cpuMillis: 10}}
  matrix: {{processes: [1], replicas: [1, 2]}}
  load: {{model: closed, concurrency: 4, generators: 2, warmup: 1s, duration: 2s, timeout: 1s}}
  cooldown: 1s
  stepTimeout: 1m
{extra_spec}"#
    )
}
