//! Harness of the control-plane tests (`--features control-plane`): the real API server,
//! controller manager, scheduler and kwok from `deploy/testenv`, the chart installed with Helm,
//! and the operator run out of the cluster with the chart ServiceAccount's own token, so every
//! RBAC gap fails a test.
//!
//! Needs `deploy/testenv/up` first (KUBECONFIG, or `deploy/testenv/run/kubeconfig`). The tests
//! share one cluster and one operator release, so they run one at a time ([`serial`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt as _;
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
use loopscale_workload::report::{new_histogram, Counts, GeneratorInfo, LoadModel, Report};

/// Reference images the test operator is given (never pulled: kwok runs no containers).
pub const REFERENCE_EXPRESS_IMAGE: &str = "registry.invalid/loopscale-reference-express:test";
/// See [`REFERENCE_EXPRESS_IMAGE`].
pub const REFERENCE_FASTAPI_IMAGE: &str = "registry.invalid/loopscale-reference-fastapi:test";

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
                "--reference-express-image",
                REFERENCE_EXPRESS_IMAGE,
                "--reference-fastapi-image",
                REFERENCE_FASTAPI_IMAGE,
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

/// Requests in a forged report, over a 2 s window.
pub const STAND_IN_OK: u64 = 1000;
pub const STAND_IN_WINDOW_SECS: f64 = 2.0;

/// A forged report's numbers: fixed, 10 ms each request.
pub fn forged_report(target: &str) -> Report {
    let mut h = new_histogram();
    for _ in 0..STAND_IN_OK {
        h.record(10_000).unwrap();
    }
    let info = GeneratorInfo {
        model: LoadModel::Closed,
        rate: None,
        concurrency: 4,
        connections: 4,
        keep_alive: true,
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
        spec: Some(TokenRequestSpec {
            audiences: Some(audience.map(|a| vec![a.to_string()]).unwrap_or_default()),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            expiration_seconds: Some(3600),
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

/// A real `loopscale-workload serve` on loopback: what the stand-in's generators load, since
/// kwok's pod IPs and Service IPs are not routable (and this workplace allows loopback only).
pub struct LocalServer {
    child: Child,
    pub url: String,
}

impl LocalServer {
    pub fn start() -> LocalServer {
        let bin = loopscale::local::find_workload_bin(None)
            .expect("cargo build -p loopscale-workload first");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .arg("serve")
            .env("LOOPSCALE_MODE", "event-loop")
            .env("LOOPSCALE_PROCESSES", "1")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "loopscale-workload serve did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the stand-in delivered for one load pod.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The pod's `loopscale.dev/step` label.
    pub step: u32,
    /// The report the generator wrote (and published).
    pub report: Report,
}

/// STAND-IN FOR THE KUBELET OF THE LOAD PODS — kwok runs no containers, so nothing executes a
/// load pod's command. For each load pod kwok "runs", this runs that pod's container command
/// with the real `loopscale-workload` binary: the same args (`load ... --publish-configmap
/// <pod>`), the same env (downward-API values filled in from the pod), credentials a kubelet
/// would mount — the pod's `loopscale-load` token bound to that pod (API audience), given as a
/// kubeconfig, and the projected `loopscale`-audience proof token file — obtained through the
/// TokenRequest API. Three differences, all forced by kwok: `--target` points at a real
/// `loopscale-workload serve` on loopback instead of the unroutable Service, the live metrics
/// listen on a free loopback port instead of the pod's own, and the report also goes to a file
/// so the test can compare. The publishing request is the load role's own.
pub struct StandIn {
    task: tokio::task::JoinHandle<()>,
    pub delivered: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Delivered>>>,
    _server: LocalServer,
}

/// Per step (`loopscale.dev/step`): the loopback URL that stands in for the step's Service.
pub type Routes = std::sync::Arc<std::sync::Mutex<BTreeMap<u32, String>>>;

impl StandIn {
    pub fn start(admin: Client, ns: String) -> StandIn {
        Self::start_routed(admin, ns, None)
    }

    /// Like [`StandIn::start`], but a load pod whose step has an entry in `routes` loads that
    /// URL (e.g. a reference server of [`ReferenceStandIn`]) and waits until it has one.
    pub fn start_routed(admin: Client, ns: String, routes: Option<Routes>) -> StandIn {
        let server = LocalServer::start();
        let default_target = server.url.clone();
        let delivered = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let done = delivered.clone();
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
            let mut started: BTreeSet<String> = BTreeSet::new();
            loop {
                let list = pods
                    .list(&ListParams::default().labels("loopscale.dev/component=load"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                for pod in list {
                    let name = pod.name_any();
                    if started.contains(&name) || pod.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let target = match &routes {
                        None => default_target.clone(),
                        Some(routes) => {
                            let step = pod
                                .labels()
                                .get("loopscale.dev/step")
                                .and_then(|s| s.parse::<u32>().ok())
                                .unwrap_or(0);
                            match routes.lock().unwrap().get(&step) {
                                Some(url) => url.clone(),
                                None => continue, // its server is not up yet
                            }
                        }
                    };
                    started.insert(name.clone());
                    let admin = admin.clone();
                    let ns = ns.clone();
                    let done = done.clone();
                    tokio::spawn(async move {
                        match run_load_pod(&admin, &ns, &pod, &target).await {
                            Ok(d) => {
                                done.lock().unwrap().insert(name, d);
                            }
                            Err(e) => eprintln!("stand-in: load pod {name}: {e}"),
                        }
                    });
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        StandIn {
            task,
            delivered,
            _server: server,
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Run one load pod's container command as described on [`StandIn`].
async fn run_load_pod(
    admin: &Client,
    ns: &str,
    pod: &Pod,
    target: &str,
) -> Result<Delivered, String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let container = &spec.containers[0];
    let name = pod.name_any();
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let api_token = pod_token(admin, ns, &sa, pod, None).await;
    let proof = pod_token(admin, ns, &sa, pod, Some("loopscale")).await;
    let dir =
        std::env::temp_dir().join(format!("loopscale-stand-in-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let proof_file = dir.join("token");
    std::fs::write(&proof_file, proof).map_err(|e| e.to_string())?;
    let kubeconfig = dir.join("kubeconfig");
    let server = ok(&kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]));
    let ca = ok(&kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}}}]\nusers: [{{name: pod, user: {{token: \"{api_token}\"}}}}]\ncontexts: [{{name: pod, context: {{cluster: c, user: pod}}}}]\ncurrent-context: pod\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let report_file = dir.join("report.json");

    // The container's env, with the downward API filled in as the kubelet would.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in container.env.iter().flatten() {
        let value = match (
            &e.value,
            e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.name" => name.clone(),
                "metadata.uid" => pod.uid().unwrap_or_default(),
                "metadata.namespace" => ns.to_string(),
                // e.g. JOB_COMPLETION_INDEX, which the Job controller adds to Indexed Jobs' pods.
                other => {
                    let key = |prefix: &str| {
                        other
                            .strip_prefix(prefix)
                            .and_then(|k| k.strip_suffix("']"))
                            .map(str::to_string)
                    };
                    if let Some(k) = key("metadata.labels['") {
                        pod.labels().get(&k).cloned().unwrap_or_default()
                    } else if let Some(k) = key("metadata.annotations['") {
                        pod.annotations().get(&k).cloned().unwrap_or_default()
                    } else {
                        return Err(format!("unexpected fieldRef {other}"));
                    }
                }
            },
            _ => return Err(format!("unexpected env {}", e.name)),
        };
        env.insert(e.name.clone(), value);
    }
    // Mounted where the pod spec says; here a temp file.
    env.insert(
        "LOOPSCALE_PUBLISH_TOKEN_FILE".into(),
        proof_file.display().to_string(),
    );
    // Each pod has its own network namespace, so every load pod can listen on the same metrics
    // port; processes sharing this machine's cannot: loopback, a free port each.
    if env.contains_key("LOOPSCALE_LOAD_METRICS_ADDR") {
        env.insert("LOOPSCALE_LOAD_METRICS_ADDR".into(), "127.0.0.1:0".into());
    }
    let mut args: Vec<String> = Vec::new();
    let mut it = container.args.clone().unwrap_or_default().into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--target" => {
                it.next();
                args.extend(["--target".into(), target.to_string()]);
            }
            "--report" => {
                it.next();
                args.extend(["--report".into(), report_file.display().to_string()]);
            }
            _ => args.push(a.replace("$(LOOPSCALE_POD_NAME)", &name)),
        }
    }
    let bin = loopscale::local::find_workload_bin(None).map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(bin)
        .args(&args)
        .envs(&env)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let report =
        Report::from_json(&std::fs::read_to_string(&report_file).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let step = pod
        .labels()
        .get("loopscale.dev/step")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Delivered { step, report })
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

/// What [`ReferenceStandIn`] saw of a reference workload Deployment and the server it started.
#[derive(Debug, Clone)]
pub struct ReferenceRun {
    /// The Deployment's container, as the operator made it.
    pub container: k8s_openapi::api::core::v1::Container,
    /// Its pod template's spec.
    pub pod: k8s_openapi::api::core::v1::PodSpec,
    /// `express` or `fastapi`: the server started for its image.
    pub server: &'static str,
    /// Loopback URL of that server once `/readyz` answered 200.
    pub url: String,
}

/// STAND-IN FOR THE KUBELET OF REFERENCE WORKLOAD PODS — kwok runs no containers. For each
/// workload Deployment in the namespace whose image is one of the test operator's reference
/// images, this runs what that image runs: the real Express or FastAPI server from
/// `workload/reference` (installed by `workload/reference/install`), with the container's env
/// (so the real server must accept every value the operator sets), on a free loopback port
/// instead of the pod's 8080. Once its `/readyz` answers 200 the step's URL goes into `routes`,
/// where [`StandIn::start_routed`] points that step's load pods.
pub struct ReferenceStandIn {
    task: tokio::task::JoinHandle<()>,
    /// Per step: what was seen and started.
    pub runs: std::sync::Arc<std::sync::Mutex<BTreeMap<u32, ReferenceRun>>>,
    /// Per step: the server's URL, for the load stand-in.
    pub routes: Routes,
    children: std::sync::Arc<std::sync::Mutex<Vec<Child>>>,
}

impl ReferenceStandIn {
    pub fn start(admin: Client, ns: String) -> ReferenceStandIn {
        use k8s_openapi::api::apps::v1::Deployment;
        use loopscale::reference::ReferenceServer;
        let runs = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let routes: Routes = Default::default();
        let children = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (runs_w, routes_w, children_w) = (runs.clone(), routes.clone(), children.clone());
        let task = tokio::spawn(async move {
            let deployments: Api<Deployment> = Api::namespaced(admin, &ns);
            let reference_dir = repo_root().join("workload/reference");
            loop {
                let list = deployments
                    .list(&ListParams::default().labels("loopscale.dev/component=workload"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                for d in list {
                    let Some(step) = d
                        .labels()
                        .get("loopscale.dev/step")
                        .and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if runs_w.lock().unwrap().contains_key(&step) {
                        continue;
                    }
                    let pod = d.spec.clone().unwrap().template.spec.unwrap();
                    let container = pod.containers[0].clone();
                    let server = match container.image.as_deref() {
                        Some(REFERENCE_EXPRESS_IMAGE) => ReferenceServer::Express,
                        Some(REFERENCE_FASTAPI_IMAGE) => ReferenceServer::FastApi,
                        _ => continue,
                    };
                    let cmd = server.local_command(&reference_dir);
                    let port = std::net::TcpListener::bind("127.0.0.1:0")
                        .unwrap()
                        .local_addr()
                        .unwrap()
                        .port();
                    let mut command = Command::new(&cmd.program);
                    command.args(&cmd.args);
                    for e in container.env.iter().flatten() {
                        command.env(&e.name, e.value.clone().unwrap_or_default());
                    }
                    let spawned = command
                        .env("PORT", port.to_string())
                        .env("HOST", "127.0.0.1")
                        .env("PYTHONDONTWRITEBYTECODE", "1")
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .process_group(0)
                        .spawn();
                    match spawned {
                        Ok(child) => children_w.lock().unwrap().push(child),
                        // The step then never gets a route, and the test's wait says which.
                        Err(e) => eprintln!(
                            "reference stand-in: cannot start {} (run workload/reference/install): {e}",
                            cmd.program.display()
                        ),
                    }
                    let url = format!("http://127.0.0.1:{port}");
                    runs_w.lock().unwrap().insert(
                        step,
                        ReferenceRun {
                            container,
                            pod,
                            server: server.name(),
                            url: url.clone(),
                        },
                    );
                    let routes = routes_w.clone();
                    tokio::spawn(async move {
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while Instant::now() < deadline {
                            if readyz(port).await == Some(200) {
                                routes.lock().unwrap().insert(step, url);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        eprintln!("reference stand-in: step {step}'s server never became ready");
                    });
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        ReferenceStandIn {
            task,
            runs,
            routes,
            children,
        }
    }
}

impl Drop for ReferenceStandIn {
    fn drop(&mut self) {
        self.task.abort();
        for child in self.children.lock().unwrap().iter_mut() {
            // The process group: the cluster primary or uvicorn supervisor and its workers.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

/// Status code of `GET /readyz` on a loopback port, if it answers.
async fn readyz(port: u16) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
