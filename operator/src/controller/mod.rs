//! `loopscale operator`: the Kubernetes backend of the experiment engine.
//!
//! Each reconcile observes an Experiment's children (workload Deployment, load Job, the load pods'
//! report ConfigMaps), asks the pure [`crate::engine::decide`] what to do, writes the status it
//! returns (through the status subresource, only when it changed), publishes an Event per
//! transition, and carries out the one action. It never branches on why it was called, so a
//! restart anywhere resumes the current step without losing or duplicating a result. Run it as
//! one replica: there is no leader election.
pub mod children;
pub mod metrics;
pub mod reports;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::crd::{Experiment, ExperimentStatus, StepKey};
use crate::engine::{self, Action, LoadObservation, Observation, WorkloadObservation};
use crate::planner::plan;
use children::{
    ChildSettings, LABEL_EXPERIMENT_UID, LABEL_REPORT, LABEL_STEP, LOAD_SERVICE_ACCOUNT,
};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "loopscale-operator";
/// Label every child carries; the watches select on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=loopscale-operator";
/// How long after its Job completed a step waits for reports still in flight before it counts
/// them as missing (a load pod creates its ConfigMap before it exits, so this is slack for a
/// slow API server, not for the pods).
pub const REPORT_GRACE: Duration = Duration::from_secs(60);
/// Polling interval while waiting (the watches usually wake the controller earlier).
pub const POLL: Duration = Duration::from_secs(5);

/// Everything that can fail in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A child could not be serialized for apply.
    #[error("serialization: {0}")]
    Serialization(#[source] serde_json::Error),
    /// The Experiment lacks a namespace or UID (never true of a stored object).
    #[error("experiment lacks {0}")]
    MissingObjectKey(&'static str),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// A bounded label for the errors metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "kube".into(),
            Error::Serialization(_) => "serialization".into(),
            Error::MissingObjectKey(_) => "missing_object_key".into(),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    /// The API client (the operator's own credentials).
    pub client: Client,
    /// Publishes repeated Events (rejected reports) as one series per Experiment and reason.
    pub recorder: Recorder,
    /// Who publishes the Events.
    pub reporter: Reporter,
    /// Operator and result metrics.
    pub metrics: metrics::Metrics,
    /// Image and pull policy of the children.
    pub settings: ChildSettings,
    /// ClusterRole the per-namespace `loopscale-load` RoleBinding refers to.
    pub load_cluster_role: String,
}

/// What the controller saw of one Experiment's children.
#[derive(Default)]
struct Children {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    jobs: Vec<Job>,
}

fn step_label(obj: &impl Resource) -> Option<(u32, StepKey)> {
    children::step_of(obj.meta().labels.as_ref()?)
}

/// Pick the object of the current step, else any other step's (a leftover to tear down).
fn pick<'a, K: Resource>(objects: &'a [K], current: Option<&StepKey>) -> Option<(&'a K, StepKey)> {
    let keyed: Vec<(&K, StepKey)> = objects
        .iter()
        .filter_map(|o| step_label(o).map(|(_, k)| (o, k)))
        .collect();
    keyed
        .iter()
        .find(|(_, k)| Some(k) == current)
        .or(keyed.first())
        .map(|(o, k)| (*o, *k))
}

fn job_condition(job: &Job, type_: &str) -> Option<(String, Option<SystemTime>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            let when = c.last_transition_time.as_ref().map(|t| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(t.0.as_second().max(0) as u64)
            });
            (
                format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                ),
                when,
            )
        })
}

/// Reconcile one Experiment: observe → decide → write status → events → act.
#[instrument(skip(exp, ctx), fields(experiment = %exp.name_any()))]
pub async fn reconcile(exp: Arc<Experiment>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    ctx.metrics.reconciliations.inc();
    let result = reconcile_inner(&exp, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(cached: &Experiment, ctx: &Context) -> Result<Requeue, Error> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let name = cached.name_any();
    let experiments: Api<Experiment> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide on the stored status, not the watch cache's copy, which may lag behind the status
    // this operator wrote a moment ago (a stale status could make it redo a finished step).
    let Some(exp) = experiments.get_opt(&name).await? else {
        return Ok(Requeue::await_change());
    };
    if exp.meta().deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    let uid = exp.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let status = exp.status.clone().unwrap_or_default();
    let current = status.current_step.as_ref().map(|c| c.key);

    let seen = observe_children(ctx, &ns, &uid).await?;
    let now = SystemTime::now();
    let workload = match pick(&seen.deployments, current.as_ref()) {
        None => WorkloadObservation::Absent,
        Some((d, step)) => WorkloadObservation::Deployed {
            step,
            ready: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                .max(0) as u32,
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
        },
    };
    let load = match pick(&seen.jobs, current.as_ref()) {
        None => LoadObservation::Absent,
        Some((job, step)) => observe_load(ctx, &exp, job, step, now).await?,
    };
    let observation = Observation {
        now,
        workload,
        load,
    };
    let decision = engine::decide(&exp.spec, &status, &observation);

    let mut new_status = decision.status.clone();
    new_status.observed_generation = exp.metadata.generation;
    if exp.status.as_ref() != Some(&new_status) {
        patch_status(&experiments, &name, &new_status).await?;
    }
    ctx.metrics.observe_status(&ns, &name, &new_status);
    for e in &decision.events {
        // A fresh Recorder per transition: the shared one would fold every later StepStarted
        // into the first one's series (its key ignores the note), hiding which step it was.
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        publish_with(&recorder, &exp, e.reason, &e.note, e.warning).await;
    }

    act(ctx, &exp, &new_status, &seen, &decision.action).await
}

async fn observe_children(ctx: &Context, ns: &str, uid: &str) -> Result<Children, Error> {
    let lp = ListParams::default().labels(&format!("{LABEL_EXPERIMENT_UID}={uid}"));
    Ok(Children {
        deployments: Api::<Deployment>::namespaced(ctx.client.clone(), ns)
            .list(&lp)
            .await?
            .items,
        services: Api::<Service>::namespaced(ctx.client.clone(), ns)
            .list(&lp)
            .await?
            .items,
        jobs: Api::<Job>::namespaced(ctx.client.clone(), ns)
            .list(&lp)
            .await?
            .items,
    })
}

/// A Job's state as the engine's load observation; a finished Job's verified reports merged.
async fn observe_load(
    ctx: &Context,
    exp: &Experiment,
    job: &Job,
    step: StepKey,
    now: SystemTime,
) -> Result<LoadObservation, Error> {
    if let Some((why, _)) = job_condition(job, "Failed") {
        return Ok(LoadObservation::Finished {
            step,
            outcome: Err(format!("load Job {} failed: {why}", job.name_any())),
        });
    }
    let Some((_, completed_at)) = job_condition(job, "Complete") else {
        return Ok(LoadObservation::Running { step });
    };
    let generators = job
        .spec
        .as_ref()
        .and_then(|s| s.completions)
        .unwrap_or(1)
        .max(1) as u32;
    let accepted = collect_reports(ctx, exp, job).await?;
    for (cm, why) in &accepted.rejected {
        warn!(configmap = %cm, reason = %why, "report rejected");
        publish_event(ctx, exp, "ReportRejected", &format!("{cm}: {why}"), true).await;
    }
    match reports::measurement(&accepted, generators) {
        Ok(m) => Ok(LoadObservation::Finished {
            step,
            outcome: Ok(m),
        }),
        Err(missing) => {
            let waited = completed_at
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if waited < REPORT_GRACE {
                Ok(LoadObservation::Running { step })
            } else {
                Ok(LoadObservation::Finished {
                    step,
                    outcome: Err(missing),
                })
            }
        }
    }
}

/// The step's report ConfigMaps, each believed only after a TokenReview of its proof token.
async fn collect_reports(
    ctx: &Context,
    exp: &Experiment,
    job: &Job,
) -> Result<reports::Accepted, Error> {
    let ns = exp.namespace().unwrap_or_default();
    let labels = job.labels();
    let step = labels.get(LABEL_STEP).cloned().unwrap_or_default();
    let uid = labels
        .get(LABEL_EXPERIMENT_UID)
        .cloned()
        .unwrap_or_default();
    let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "{LABEL_REPORT}=true,{LABEL_EXPERIMENT_UID}={uid},{LABEL_STEP}={step}"
        )))
        .await?
        .items;
    let mut accepted = reports::Accepted::default();
    if cms.is_empty() {
        return Ok(accepted);
    }
    let job_uid = job.uid().unwrap_or_default();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(
            &ListParams::default().labels(&format!("batch.kubernetes.io/controller-uid={job_uid}")),
        )
        .await?
        .items;
    let reviews: Api<TokenReview> = Api::all(ctx.client.clone());
    for cm in &cms {
        let cm_name = cm.name_any();
        let (report, token) = match reports::report_parts(cm) {
            Ok(parts) => parts,
            Err(why) => {
                accepted.rejected.push((cm_name, why));
                continue;
            }
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(reports::review_audiences()),
            },
            ..Default::default()
        };
        let reviewed = reviews.create(&PostParams::default(), &review).await?;
        match reports::verify_origin(&reviewed.status.unwrap_or_default(), &ns, &pods) {
            Ok(index) => accepted.add(&cm_name, index, report),
            Err(why) => accepted.rejected.push((cm_name, why)),
        }
    }
    Ok(accepted)
}

async fn patch_status(
    api: &Api<Experiment>,
    name: &str,
    status: &ExperimentStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": Experiment::api_version(&()),
        "kind": Experiment::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish_event(ctx: &Context, exp: &Experiment, reason: &str, note: &str, warning: bool) {
    publish_with(&ctx.recorder, exp, reason, note, warning).await
}

async fn publish_with(
    recorder: &Recorder,
    exp: &Experiment,
    reason: &str,
    note: &str,
    warning: bool,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &exp.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The per-namespace identity of the load pods: the `loopscale-load` ServiceAccount, bound to
/// the chart's ClusterRole that allows only `create` on ConfigMaps.
async fn ensure_load_identity(ctx: &Context, ns: &str) -> Result<(), Error> {
    let labels = BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "loopscale-operator".to_string(),
    )]);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(LOAD_SERVICE_ACCOUNT.into()),
            namespace: Some(ns.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    apply(
        &Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns),
        &sa,
    )
    .await?;
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(LOAD_SERVICE_ACCOUNT.into()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: ctx.load_cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: LOAD_SERVICE_ACCOUNT.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    apply(
        &Api::<RoleBinding>::namespaced(ctx.client.clone(), ns),
        &binding,
    )
    .await
}

/// The plan index (from 1) of `step`.
fn index_of(exp: &Experiment, status: &ExperimentStatus, step: &StepKey) -> u32 {
    if let Some(c) = status.current_step.as_ref().filter(|c| c.key == *step) {
        return c.index;
    }
    plan(&exp.spec)
        .iter()
        .position(|k| k == step)
        .map(|i| i as u32 + 1)
        .unwrap_or(0)
}

async fn act(
    ctx: &Context,
    exp: &Experiment,
    status: &ExperimentStatus,
    seen: &Children,
    action: &Action,
) -> Result<Requeue, Error> {
    let ns = exp.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    match action {
        Action::Deploy { step } => {
            let c = children::step_children(exp, index_of(exp, status, step), step);
            ensure_load_identity(ctx, &ns).await?;
            apply(
                &Api::<Service>::namespaced(client.clone(), &ns),
                &children::workload_service(exp, &c),
            )
            .await?;
            let d = children::workload_deployment(exp, &c, step, &ctx.settings);
            apply(&Api::<Deployment>::namespaced(client, &ns), &d).await?;
            info!(step = %step, deployment = %c.workload, "deployed");
            Ok(Requeue::requeue(POLL))
        }
        Action::WaitReady { .. } | Action::WaitLoad { .. } => Ok(Requeue::requeue(POLL)),
        Action::RunLoad { step, generators } => {
            let c = children::step_children(exp, index_of(exp, status, step), step);
            ensure_load_identity(ctx, &ns).await?;
            let job = children::load_job(exp, &c, generators, &ctx.settings);
            let jobs = Api::<Job>::namespaced(client, &ns);
            // A Job's pod template is immutable: create it once, never re-apply.
            if jobs.get_opt(&c.load).await?.is_none() {
                apply(&jobs, &job).await?;
                info!(step = %step, job = %c.load, "load started");
            }
            Ok(Requeue::requeue(POLL))
        }
        Action::TearDown { step } => {
            let of_step =
                |o: &dyn Fn() -> Option<(u32, StepKey)>| o().map(|(_, k)| k) == Some(*step);
            for j in seen.jobs.iter().filter(|j| of_step(&|| step_label(*j))) {
                delete_ignoring_absent(&Api::<Job>::namespaced(client.clone(), &ns), &j.name_any())
                    .await?;
            }
            for d in seen
                .deployments
                .iter()
                .filter(|d| of_step(&|| step_label(*d)))
            {
                delete_ignoring_absent(
                    &Api::<Deployment>::namespaced(client.clone(), &ns),
                    &d.name_any(),
                )
                .await?;
            }
            for s in seen.services.iter().filter(|s| of_step(&|| step_label(*s))) {
                delete_ignoring_absent(
                    &Api::<Service>::namespaced(client.clone(), &ns),
                    &s.name_any(),
                )
                .await?;
            }
            Ok(Requeue::requeue(Duration::from_secs(1)))
        }
        Action::Cooldown { until } => {
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            Ok(Requeue::requeue(
                wait.clamp(Duration::from_millis(200), POLL),
            ))
        }
        Action::Finish { .. } => Ok(Requeue::requeue(Duration::from_secs(600))),
    }
}

/// Retry a failed reconcile after a pause long enough not to spin, short enough not to stall.
pub fn error_policy(_exp: Arc<Experiment>, error: &Error, ctx: Arc<Context>) -> Requeue {
    warn!(%error, "reconcile failed");
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label().as_str()])
        .inc();
    Requeue::requeue(Duration::from_secs(10))
}

/// Run the controller until SIGTERM/SIGINT.
pub async fn run(client: Client, ctx: Arc<Context>) {
    let experiments: Api<Experiment> = Api::all(client.clone());
    let owned = watcher::Config::default().labels(MANAGED_BY);
    Controller::new(experiments, watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<Job>::all(client), owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(experiment = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

/// Build the shared context for [`run`].
pub fn context(
    client: Client,
    settings: ChildSettings,
    load_cluster_role: String,
    metrics: metrics::Metrics,
) -> Arc<Context> {
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        client,
        metrics,
        settings,
        load_cluster_role,
    })
}
