//! Control-plane tests of the operator and its chart (`cargo test -p loopscale --features
//! control-plane --test cluster_operator`, after `deploy/testenv/up`; `make control-plane-test`
//! does both). Real API server, controller manager, scheduler; kwok's fake nodes; the operator
//! under the chart ServiceAccount's token; a clearly marked stand-in delivers the load pods'
//! reports (see `cluster::StandIn`).
#![cfg(feature = "control-plane")]

mod cluster;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;
use loopscale::crd::{Experiment, Implementation, Mode, Outcome, Phase, StepKey};
use loopscale::planner::plan;

/// Wait for `name` to finish and require `Succeeded` (showing the operator's log otherwise).
async fn wait_succeeded(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    operator: &Operator,
) -> Experiment {
    let exp = wait_phase(
        admin,
        ns,
        name,
        &[Phase::Succeeded, Phase::Failed],
        Duration::from_secs(180),
    )
    .await;
    let status = exp.status.clone().unwrap();
    assert_eq!(
        status.phase,
        Phase::Succeeded,
        "{status:#?}\n{}",
        operator.log_text()
    );
    exp
}

/// Each step's result is exactly the merge of the reports its `generators` load pods published
/// (real `loopscale-workload load` runs; see StandIn). Returns each step's reports, in order.
fn assert_results_merge_their_reports(
    status: &loopscale::crd::ExperimentStatus,
    delivered: &std::collections::BTreeMap<String, Delivered>,
    generators: usize,
) -> Vec<Vec<loopscale_workload::report::Report>> {
    let mut out = Vec::new();
    for (i, r) in status.results.iter().enumerate() {
        let step = i as u32 + 1;
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        assert_eq!(r.generators as usize, generators);
        let reports: Vec<_> = delivered
            .values()
            .filter(|d| d.step == step)
            .map(|d| d.report.clone())
            .collect();
        assert_eq!(reports.len(), generators, "step {step}");
        let expected = loopscale::results::measure(&reports).unwrap();
        assert_eq!(r.requests, expected.requests, "{r:?}");
        assert!(r.requests > 0 && r.error_ratio == 0.0, "{r:?}");
        assert!(
            (r.throughput_rps - expected.throughput_rps).abs() < 1e-9,
            "{r:?} vs {expected:?}"
        );
        assert_eq!(r.latency_ms.p99, expected.latency_ms.p99);
        eprintln!(
            "step {step} ({}): {} req, {:.1} req/s, p99 {:.1} ms",
            r.key, r.requests, r.throughput_rps, r.latency_ms.p99
        );
        out.push(reports);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_lint_and_template_are_clean() {
    let chart = repo_root().join("charts/loopscale");
    let chart = chart.to_str().unwrap();
    let lint = ok(&run_tool("helm", &["lint", "--strict", chart], None));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    for extra in [
        &[][..],
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "podMonitor.enabled=true",
        ][..],
    ] {
        let mut args = vec!["template", "t", chart];
        args.extend_from_slice(extra);
        let out = ok(&run_tool("helm", &args, None));
        // Every rendered document is accepted by the API server's schema (dry run).
        if extra.is_empty() {
            let dry = run_tool(
                "kubectl",
                &["apply", "--dry-run=server", "-n", "default", "-f", "-"],
                Some(&out),
            );
            ok(&dry);
        } else {
            assert!(out.contains("kind: ServiceMonitor") && out.contains("kind: PodMonitor"));
        }
    }
    // The reference images come from values, and every LOOPSCALE_* env var the chart gives the
    // operator is one the binary reads.
    let out = ok(&run_tool(
        "helm",
        &[
            "template",
            "t",
            chart,
            "--set",
            "referenceImages.express.repository=reg.test/express",
            "--set",
            "referenceImages.fastapi.tag=v9",
        ],
        None,
    ));
    let chart_yaml: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("charts/loopscale/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let app_version = chart_yaml["appVersion"].as_str().unwrap();
    assert!(
        out.contains(&format!("value: \"reg.test/express:{app_version}\"")),
        "{out}"
    );
    assert!(
        out.contains("value: \"ghcr.io/loopscale/loopscale-reference-fastapi:v9\""),
        "{out}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_loopscale"))
        .args(["operator", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for name in out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: LOOPSCALE_"))
    {
        assert!(
            help.contains(&format!("env: LOOPSCALE_{name}")),
            "the chart sets LOOPSCALE_{name}, which `loopscale operator` does not read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_into_a_restricted_namespace() {
    install_chart();
    let admin = admin().await;
    let deployment = Api::<Deployment>::namespaced(admin.clone(), RELEASE_NS)
        .get(RELEASE)
        .await
        .unwrap();
    assert_eq!(deployment.status.unwrap().available_replicas, Some(1));
    let spec = deployment.spec.unwrap();
    assert_eq!(
        spec.replicas,
        Some(1),
        "one replica: there is no leader election"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].args.as_deref(),
        Some(&["operator".to_string()][..])
    );
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    // Its pod exists: Pod Security admission ("restricted" on the namespace) let it in.
    let pods = Api::<Pod>::namespaced(admin.clone(), RELEASE_NS)
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_runs_to_succeeded_in_a_restricted_namespace() {
    let _serial = serial().await;
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-run").await;
    let started = Instant::now();
    let operator = Operator::start();
    let stand_in = StandIn::start(admin.clone(), ns.clone());
    ok(&apply(&ns, &small_experiment("run", "")));
    let exp = wait_succeeded(&admin, &ns, "run", &operator).await;
    eprintln!(
        "experiment of 4 steps: {:.1} s from apply to Succeeded",
        started.elapsed().as_secs_f64()
    );
    let status = exp.status.clone().unwrap();
    assert_eq!(status.results.len(), 4);
    let keys: Vec<StepKey> = status.results.iter().map(|r| r.key).collect();
    assert_eq!(
        keys,
        plan(&exp.spec),
        "one result per planned step, in plan order"
    );
    // Each step's result is exactly the merge of the reports its two generators published
    // (real `loopscale-workload load` runs against a real server on loopback; see StandIn).
    let delivered = stand_in.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 8, "two generators per step: {delivered:?}");
    assert_results_merge_their_reports(&status, &delivered, 2);
    assert_eq!(status.progress.as_deref(), Some("4/4"));
    assert!(status.current_step.is_none());

    // Every step's children were torn down after it; the pods were admitted under "restricted"
    // (else no replica would have become ready and no load pod would have existed).
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=loopscale-operator");
    assert!(Api::<Deployment>::namespaced(admin.clone(), &ns)
        .list(&lp)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(Api::<Job>::namespaced(admin.clone(), &ns)
        .list(&lp)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(Api::<Service>::namespaced(admin.clone(), &ns)
        .list(&lp)
        .await
        .unwrap()
        .items
        .is_empty());

    // Events on the Experiment for each step transition.
    let all = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    eprintln!("{} events in {ns}", all.len());
    let events: Vec<Event> = all
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("run"))
        .collect();
    let count = |reason: &str| {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count()
    };
    assert_eq!(count("StepStarted"), 4, "{events:#?}");
    assert_eq!(count("StepSucceeded"), 4);
    assert_eq!(count("ExperimentSucceeded"), 1);
    assert!(events
        .iter()
        .all(|e| e.reporting_controller.as_deref() == Some("loopscale-operator")));

    // The operator's own endpoints and the result gauges.
    assert_eq!(operator.get("/healthz").await.0, 200);
    assert_eq!(operator.get("/readyz").await.0, 200);
    let (code, metrics) = operator.get("/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "loopscale_operator_reconciliations_total",
        "loopscale_operator_reconcile_duration_seconds_bucket",
        &format!(
            r#"loopscale_result_throughput_rps{{experiment="run",mode="thread-pool",namespace="{ns}",processes="1",repetition="1",replicas="2"}} "#
        ),
        &format!(
            r#"loopscale_experiment_phase{{experiment="run",namespace="{ns}",phase="Succeeded"}} 1"#
        ),
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // Settled: a finished Experiment is not rewritten (no spinning on status).
    let rv = experiment(&admin, &ns, "run")
        .await
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        experiment(&admin, &ns, "run")
            .await
            .metadata
            .resource_version,
        rv
    );
    let mut operator = operator;
    assert!(
        operator.terminate().success(),
        "graceful shutdown exits 0:\n{}",
        operator.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_report_is_rejected_and_the_real_one_counts() {
    let _serial = serial().await;
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-forge").await;
    let operator = Operator::start();
    let yaml = small_experiment("forge", "").replace(
        "  matrix: {processes: [1], replicas: [1, 2]}",
        "  matrix: {processes: [1], replicas: [1]}",
    );
    ok(&apply(&ns, &yaml));
    // Wait for the load pods of step 1, then forge a report for them before the stand-in runs:
    // right labels, owner and data, but a proof token of another ServiceAccount (`default`, the
    // identity of any other workload in the namespace) for the right audience.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod = wait_for(Duration::from_secs(60), "a load pod", || async {
        pods.list(&ListParams::default().labels("loopscale.dev/component=load"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let env: std::collections::BTreeMap<String, String> = pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let labels =
        loopscale_workload::load::publish::parse_labels(&env["LOOPSCALE_PUBLISH_LABELS"]).unwrap();
    let forged_proof = ok(&kubectl(&[
        "-n",
        &ns,
        "create",
        "token",
        "default",
        "--audience",
        "loopscale",
    ]));
    let mut forged = forged_report("http://forged");
    forged.summary.throughput_rps = 1e9;
    let target = loopscale_workload::load::publish::PublishTarget {
        namespace: ns.clone(),
        name: "forged-report".into(),
        labels,
        pod: (
            kube::ResourceExt::name_any(&pod),
            kube::ResourceExt::uid(&pod).unwrap(),
        ),
    };
    loopscale_workload::load::publish::publish(
        admin.clone(),
        &target,
        &forged.to_json(),
        &forged_proof,
    )
    .await
    .unwrap();
    let _stand_in = StandIn::start(admin.clone(), ns.clone());
    let exp = wait_phase(
        &admin,
        &ns,
        "forge",
        &[Phase::Succeeded, Phase::Failed],
        Duration::from_secs(120),
    )
    .await;
    let status = exp.status.unwrap();
    for r in &status.results {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        assert!(
            r.throughput_rps > 0.0 && r.throughput_rps < 1e6 && r.generators == 2,
            "the forged report must not count: {r:?}"
        );
    }
    let events = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ReportRejected"))
        .collect();
    assert!(
        !rejected.is_empty(),
        "a ReportRejected event names the forged ConfigMap"
    );
    let note = rejected[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("forged-report") && note.contains("system:serviceaccount"),
        "{note}"
    );
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_operator_mid_run_records_every_step_exactly_once() {
    let _serial = serial().await;
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-restart").await;
    let mut operator = Operator::start();
    let _stand_in = StandIn::start(admin.clone(), ns.clone());
    ok(&apply(&ns, &small_experiment("restart", "")));
    let api: Api<Experiment> = Api::namespaced(admin.clone(), &ns);
    // Kill it while the second step is in progress (one result recorded, a step running).
    wait_for(
        Duration::from_secs(120),
        "the second step to start",
        || async {
            let s = api.get("restart").await.ok()?.status?;
            (s.results.len() == 1 && s.current_step.as_ref().map(|c| c.index) == Some(2))
                .then_some(())
        },
    )
    .await;
    operator.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let operator = Operator::start();
    let exp = wait_phase(
        &admin,
        &ns,
        "restart",
        &[Phase::Succeeded, Phase::Failed],
        Duration::from_secs(180),
    )
    .await;
    let status = exp.status.unwrap();
    assert_eq!(
        status.phase,
        Phase::Succeeded,
        "{status:#?}\n{}",
        operator.log_text()
    );
    let keys: Vec<StepKey> = status.results.iter().map(|r| r.key).collect();
    let unique: BTreeSet<StepKey> = keys.iter().copied().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(unique.len(), 4, "no step recorded twice: {keys:?}");
    assert!(
        status
            .results
            .iter()
            .all(|r| r.outcome == Outcome::Succeeded),
        "{status:#?}"
    );
    // Each step's load ran once: one StepSucceeded event per step.
    let events = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let succeeded = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("StepSucceeded"))
        .count();
    assert_eq!(succeeded, 4);
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_experiment_mid_run_removes_its_children() {
    let _serial = serial().await;
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-delete").await;
    let operator = Operator::start();
    // No stand-in: the step waits for reports, with its Deployment, Service, Job and pods alive.
    ok(&apply(&ns, &small_experiment("doomed", "")));
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    let uid = experiment(&admin, &ns, "doomed")
        .await
        .metadata
        .uid
        .unwrap();
    let lp = ListParams::default().labels(&format!("loopscale.dev/experiment-uid={uid}"));
    wait_for(Duration::from_secs(60), "the first load Job", || async {
        (!jobs.list(&lp).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
    // A report ConfigMap exists too (owned by its load pod), like a real run's.
    let _stand_in = StandIn::start(admin.clone(), ns.clone());
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let report_lp = ListParams::default().labels("loopscale.dev/report=true");
    wait_for(Duration::from_secs(30), "a report ConfigMap", || async {
        (!cms.list(&report_lp).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
    drop(_stand_in);
    drop(operator); // so the operator does not remove the children itself
    ok(&kubectl(&[
        "-n",
        &ns,
        "delete",
        "experiment",
        "doomed",
        "--wait=false",
    ]));
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    wait_for(
        Duration::from_secs(90),
        "the garbage collector to remove every child",
        || async {
            let left = deployments.list(&lp).await.ok()?.items.len()
                + services.list(&lp).await.ok()?.items.len()
                + jobs.list(&lp).await.ok()?.items.len()
                + pods.list(&lp).await.ok()?.items.len()
                + cms.list(&report_lp).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
    eprintln!(
        "children gone {:.1} s after the delete",
        started.elapsed().as_secs_f64()
    );
}

fn unschedulable(name: &str, policy: &str) -> String {
    small_experiment(name, &format!("  failurePolicy: {policy}\n"))
        .replace(
            "requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 500m, memory: 128Mi}",
            "requests: {cpu: \"1000\"}",
        )
        .replace("stepTimeout: 1m", "stepTimeout: 6s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_never_becomes_ready_fails_its_step_after_step_timeout() {
    let _serial = serial().await;
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-timeout").await;
    let operator = Operator::start();
    // Each workload pod asks for 1000 CPUs: no kwok node (16 CPU) can ever take it.
    ok(&apply(&ns, &unschedulable("goes-on", "continue")));
    ok(&apply(&ns, &unschedulable("stops", "abort")));
    let started = Instant::now();
    let goes_on = wait_phase(
        &admin,
        &ns,
        "goes-on",
        &[Phase::Succeeded, Phase::Failed],
        Duration::from_secs(120),
    )
    .await;
    let stops = wait_phase(
        &admin,
        &ns,
        "stops",
        &[Phase::Succeeded, Phase::Failed],
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "both finished {:.1} s after apply",
        started.elapsed().as_secs_f64()
    );

    // continue: every step was tried and failed with its reason (and an experiment whose
    // every step failed ends Failed, by the engine's rule).
    let s = goes_on.status.unwrap();
    assert_eq!(s.results.len(), 4, "{s:#?}\n{}", operator.log_text());
    assert_eq!(s.phase, Phase::Failed);
    for r in &s.results {
        assert_eq!(r.outcome, Outcome::Failed);
        let reason = r.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("timed out after 6s") && reason.contains("Deploying"),
            "{reason}"
        );
    }
    // abort: the first failure fails the experiment; no further step ran.
    let s = stops.status.unwrap();
    assert_eq!(s.phase, Phase::Failed, "{s:#?}");
    assert_eq!(s.results.len(), 1);
    assert_eq!(s.results[0].outcome, Outcome::Failed);
    assert!(s.message.unwrap_or_default().contains("abort"));
    let events = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(events.iter().any(
        |e| e.reason.as_deref() == Some("StepFailed") && e.type_.as_deref() == Some("Warning")
    ));
    assert!(events
        .iter()
        .any(|e| e.reason.as_deref() == Some("ExperimentFailed")));
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_experiment_runs_the_real_servers_images_and_completes() {
    let _serial = serial().await;
    let admin = admin().await;
    let (ns, _cleanup) = restricted_namespace(&admin, "ls-reference").await;
    let operator = Operator::start();
    // Kwok runs no containers: one stand-in runs the real server each reference Deployment's
    // image holds, with the Deployment's env; the other runs the load pods against it.
    let servers = ReferenceStandIn::start(admin.clone(), ns.clone());
    let stand_in = StandIn::start_routed(admin.clone(), ns.clone(), Some(servers.routes.clone()));
    let yaml = small_experiment("real", "")
        .replace(
            "    modes: [event-loop, thread-pool]\n",
            "    implementation: reference\n    modes: [event-loop, thread-pool]\n    threadPoolSize: 8\n    libuvThreadPoolSize: 2\n",
        )
        .replace(
            "  matrix: {processes: [1], replicas: [1, 2]}",
            "  matrix: {processes: [2], replicas: [1]}",
        );
    ok(&apply(&ns, &yaml));
    let exp = wait_succeeded(&admin, &ns, "real", &operator).await;
    let status = exp.status.clone().unwrap();
    assert_eq!(status.implementation, Some(Implementation::Reference));

    // Each step's Deployment ran the reference image of its mode, with the env the real server
    // reads (which accepted it: it answered /readyz), probes on /readyz and /healthz.
    let runs = servers.runs.lock().unwrap().clone();
    let routes = servers.routes.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (i, key) in plan(&exp.spec).iter().enumerate() {
        let step = i as u32 + 1;
        let run = &runs[&step];
        let (image, server) = match key.mode {
            Mode::EventLoop => (REFERENCE_EXPRESS_IMAGE, "express"),
            Mode::ThreadPool => (REFERENCE_FASTAPI_IMAGE, "fastapi"),
        };
        assert_eq!(run.container.image.as_deref(), Some(image));
        assert_eq!(run.server, server);
        assert_eq!(run.container.args, None, "the image's own command");
        let env: std::collections::BTreeMap<_, _> = run
            .container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["LOOPSCALE_PROCESSES"], "2");
        assert_eq!(env["PORT"], "8080");
        assert!(!env.contains_key("LOOPSCALE_REQUEST_OVERHEAD_US"));
        assert!(!env.contains_key("LOOPSCALE_RESUME_OVERHEAD_US"));
        assert!(!env.contains_key("LOOPSCALE_CONNECTION_OVERHEAD_US"));
        match key.mode {
            Mode::EventLoop => assert_eq!(env["LOOPSCALE_LIBUV_THREADPOOL_SIZE"], "2"),
            Mode::ThreadPool => assert_eq!(env["LOOPSCALE_THREADPOOL_SIZE"], "8"),
        }
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|g| g.path.clone())
        };
        assert_eq!(
            path(&run.container.readiness_probe).as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            path(&run.container.liveness_probe).as_deref(),
            Some("/healthz")
        );
        assert_eq!(routes.get(&step), Some(&run.url), "step {step} never ready");
    }

    // The pods were admitted under "restricted" (else no replica would have become ready), and
    // each step's result is the merge of reports of load against that step's real server.
    let delivered = stand_in.delivered.lock().unwrap().clone();
    let reports = assert_results_merge_their_reports(&status, &delivered, 2);
    for (i, step_reports) in reports.iter().enumerate() {
        let url = &runs[&(i as u32 + 1)].url;
        for report in step_reports {
            assert_eq!(report.generator.targets, std::slice::from_ref(url));
        }
    }
    drop(operator);
}
