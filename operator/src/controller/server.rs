//! The `loopscale operator` process: the controller joined with an axum server for `/metrics`,
//! `/healthz` and `/readyz`, both stopped by the same SIGTERM/SIGINT.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kube::api::ListParams;
use kube::{Api, Client};

use super::children::ChildSettings;
use super::metrics::Metrics;
use crate::crd::Experiment;

/// Flags of `loopscale operator` (each also an env var, which the chart sets).
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "LOOPSCALE_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,
    /// Image of the workload and load pods (the `serve` and `load` roles), unless an Experiment's
    /// `spec.workload.image` names another.
    #[arg(long, env = "LOOPSCALE_WORKLOAD_IMAGE")]
    pub workload_image: String,
    /// Pull policy of the workload, load and reference images (unset: Kubernetes' default for
    /// the tag).
    #[arg(long, env = "LOOPSCALE_WORKLOAD_IMAGE_PULL_POLICY")]
    pub workload_image_pull_policy: Option<String>,
    /// Image of the real Express server (`workload/reference/express/Dockerfile`) that plays
    /// event-loop mode in Experiments with `spec.workload.implementation: reference`.
    #[arg(
        long,
        env = "LOOPSCALE_REFERENCE_EXPRESS_IMAGE",
        default_value = concat!("ghcr.io/loopscale/loopscale-reference-express:", env!("CARGO_PKG_VERSION"))
    )]
    pub reference_express_image: String,
    /// Image of the real FastAPI server (`workload/reference/fastapi/Dockerfile`) that plays
    /// thread-pool mode in Experiments with `spec.workload.implementation: reference`.
    #[arg(
        long,
        env = "LOOPSCALE_REFERENCE_FASTAPI_IMAGE",
        default_value = concat!("ghcr.io/loopscale/loopscale-reference-fastapi:", env!("CARGO_PKG_VERSION"))
    )]
    pub reference_fastapi_image: String,
    /// ClusterRole (from the chart) that the per-namespace `loopscale-load` ServiceAccount is
    /// bound to: `create` on ConfigMaps, nothing else.
    #[arg(
        long,
        env = "LOOPSCALE_LOAD_CLUSTER_ROLE",
        default_value = "loopscale-load"
    )]
    pub load_cluster_role: String,
}

struct AppState {
    metrics: Metrics,
    ready: AtomicBool,
}

async fn serve_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Experiments not listable yet",
        )
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Run the operator until SIGTERM/SIGINT: controller and HTTP server side by side.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let state = Arc::new(AppState {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());

    // Ready once Experiments can be listed: the CRD is installed and RBAC lets us watch them.
    let probe_client = client.clone();
    let probe_state = state.clone();
    tokio::spawn(async move {
        let api: Api<Experiment> = Api::all(probe_client);
        loop {
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => {
                    probe_state.ready.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list Experiments yet"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    });

    let settings = ChildSettings {
        workload_image: args.workload_image,
        reference_images: crate::reference::ReferenceImages {
            express: args.reference_express_image,
            fastapi: args.reference_fastapi_image,
        },
        image_pull_policy: args.workload_image_pull_policy,
    };
    let ctx = super::context(client.clone(), settings, args.load_cluster_role, metrics);
    let (served, ()) = tokio::join!(async { server.await }, super::run(client, ctx));
    served?;
    tracing::info!("operator stopped");
    Ok(())
}
