//! `loopscale run`: the engine loop around the local backend, with progress, result files, the
//! metrics endpoint and a clean stop on Ctrl-C.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::crd::{Experiment, ExperimentStatus, Phase, Stage};
use crate::engine::{decide, Action, EngineEvent};
use crate::local::{cpu_warning, LocalBackend};
use crate::metrics::{encode, ExperimentMetrics, ReconcileMetrics, LOCAL_LOOP_ERRORS};
use crate::planner::parse_duration;
use crate::render;
use crate::scrape_targets::{self, Role, ScrapeTarget};

/// Namespace label of local runs in the metrics.
pub const LOCAL_NAMESPACE: &str = "local";

/// Settings of one local run.
pub struct RunOptions {
    /// The `loopscale-workload` binary.
    pub workload_bin: PathBuf,
    /// Where the reference servers are (`implementation: reference`); unset: `workload/reference`
    /// relative to the current directory.
    pub reference_dir: Option<PathBuf>,
    /// Where results.json, report.html, logs and reports go.
    pub out_dir: PathBuf,
    /// Serve the result metrics here while running.
    pub metrics_addr: Option<SocketAddr>,
    /// Keep the Prometheus file_sd targets of the run's processes (itself, workload replicas,
    /// load generators) in this file while running; an empty list once it ends.
    pub prometheus_sd: Option<PathBuf>,
    /// With `metrics_addr`: keep serving the metrics this long after the last step, so a
    /// Prometheus scraping every few seconds sees the final results (Ctrl-C skips it).
    pub metrics_linger: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step ran (some may have failed under `failurePolicy: continue`).
    Succeeded,
    /// Aborted by `failurePolicy: abort`.
    Failed,
    /// Stopped by Ctrl-C or SIGTERM; results are partial.
    Interrupted,
}

/// Progress display: an overall bar and a per-step bar on a terminal, plain lines otherwise.
struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    step: ProgressBar,
    visible: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        let visible = console_is_terminal();
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} steps {elapsed_precise} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("overall");
        let step = multi.add(ProgressBar::new(1));
        step.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        step.set_prefix("step");
        Progress {
            multi,
            overall,
            step,
            visible,
        }
    }

    fn line(&self, text: &str) {
        if self.visible {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    fn event(&self, e: &EngineEvent) {
        self.line(&format!("{}: {}", e.reason, e.note));
    }

    fn update(&self, status: &ExperimentStatus, load_elapsed: Option<f64>, load_total: f64) {
        self.overall.set_length(u64::from(status.total_steps));
        self.overall.set_position(u64::from(status.completed_steps));
        match &status.current_step {
            Some(c) => {
                let stage = c.stage.as_str();
                self.step.set_message(format!(
                    "{} {}/{}: {}",
                    stage, c.index, status.total_steps, c.key
                ));
                let scale = 1000.0;
                self.step.set_length((load_total * scale) as u64);
                let pos = match (c.stage, load_elapsed) {
                    (Stage::Measuring, Some(e)) => (e.min(load_total) * scale) as u64,
                    (Stage::CoolingDown, _) => (load_total * scale) as u64,
                    _ => 0,
                };
                self.step.set_position(pos);
            }
            None => self.step.set_message("between steps"),
        }
    }

    fn finish(&self) {
        self.step.finish_and_clear();
        self.overall.finish();
    }
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Write `bytes` to `path` atomically (temp file + rename), so readers never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Write `results.json` (the Experiment with its status, the shape `kubectl get -o json` gives)
/// and `report.html`.
pub fn write_outputs(experiment: &Experiment, out_dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(experiment)?;
    write_atomically(&out_dir.join("results.json"), &json)?;
    write_atomically(
        &out_dir.join("report.html"),
        render::html(experiment).as_bytes(),
    )?;
    Ok(())
}

async fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --metrics-addr"))?;
    let local = listener.local_addr()?;
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    encode(&registry),
                )
            }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, server))
}

/// Run `experiment` (already validated) with local processes until it finishes or is
/// interrupted; returns the experiment with its final status.
pub async fn run(
    mut experiment: Experiment,
    options: RunOptions,
) -> anyhow::Result<(Experiment, RunEnd)> {
    let name = experiment
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "experiment".into());
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;
    let spec = experiment.spec.clone();
    let mut backend = LocalBackend::new(options.workload_bin.clone(), options.out_dir.clone())?;
    if let Some(dir) = options.reference_dir.clone() {
        backend.set_reference_dir(dir);
    }
    let registry = Registry::new();
    let metrics = ExperimentMetrics::register(&registry)?;
    let reconcile = ReconcileMetrics::register(&registry, &LOCAL_LOOP_ERRORS)?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut server = None;
    let mut own_target = None;
    if let Some(addr) = options.metrics_addr {
        let (local, handle) = serve_metrics(addr, registry.clone()).await?;
        eprintln!("metrics on http://{local}/metrics");
        server = Some(handle);
        own_target = Some(ScrapeTarget {
            address: local.to_string(),
            role: Role::Run,
            pod: format!("{name}-loopscale-run"),
            step: None,
        });
    }
    let mut targets = TargetsFile::new(options.prometheus_sd.clone(), &name, own_target);
    if targets.enabled() {
        backend.enable_generator_metrics();
    }
    targets.update(&backend)?;

    let mut status = experiment.status.clone().unwrap_or_default();
    let load_total = parse_duration(&spec.load.warmup)
        .unwrap_or_default()
        .as_secs_f64()
        + parse_duration(&spec.load.duration)
            .unwrap_or_default()
            .as_secs_f64();
    let available = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let progress = Progress::new(crate::planner::plan(&spec).len() as u64);
    let mut end = RunEnd::Succeeded;
    loop {
        // One pass of observe, decide and act is the operator's reconcile; the waits it does
        // between passes (the operator's requeues) are not counted in its duration.
        let pass = Instant::now();
        let obs = backend.observe(SystemTime::now()).await;
        let decision = decide(&spec, &status, &obs);
        for e in &decision.events {
            progress.event(e);
        }
        if decision.status != status {
            status = decision.status;
            experiment.status = Some(status.clone());
            metrics.observe(LOCAL_NAMESPACE, &name, &status);
            if let Err(e) = write_outputs(&experiment, &options.out_dir) {
                reconcile.errors.with_label_values(&["persist"]).inc();
                return Err(e);
            }
        }
        let elapsed = backend.load_started.map(|t| t.elapsed().as_secs_f64());
        progress.update(&status, elapsed, load_total.max(0.001));
        let action = decision.action;
        let deciding = pass.elapsed();
        if let Action::Finish { phase } = action {
            reconcile.reconciliations.inc();
            reconcile.duration.observe(deciding.as_secs_f64());
            if phase == Phase::Failed {
                end = RunEnd::Failed;
            }
            break;
        }
        if let Action::Deploy { step } = &action {
            if let Some(w) = cpu_warning(step, spec.load.generators, available) {
                progress.line(&w);
            }
        }
        let waits = matches!(
            action,
            Action::WaitReady { .. } | Action::WaitLoad { .. } | Action::Cooldown { .. }
        );
        let stopped = tokio::select! {
            r = async {
                let acting = Instant::now();
                let r = backend.carry_out(&spec, &action).await;
                (r, acting.elapsed())
            } => {
                let (r, acting) = r;
                reconcile.reconciliations.inc();
                let busy = if waits { deciding } else { deciding + acting };
                reconcile.duration.observe(busy.as_secs_f64());
                if r.is_err() {
                    reconcile.errors.with_label_values(&["backend"]).inc();
                }
                r?;
                targets.update(&backend)?;
                false
            }
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        if stopped {
            progress.line("interrupted: stopping every child process and writing partial results");
            end = RunEnd::Interrupted;
            break;
        }
    }
    backend.tear_down().await;
    targets.update(&backend)?;
    progress.finish();
    if end == RunEnd::Interrupted {
        status.partial = true;
    }
    experiment.status = Some(status.clone());
    metrics.observe(LOCAL_NAMESPACE, &name, &status);
    write_outputs(&experiment, &options.out_dir)?;
    if server.is_some() && !options.metrics_linger.is_zero() && end != RunEnd::Interrupted {
        progress.line(&format!(
            "serving the final metrics for {} more (Ctrl-C skips)",
            humantime::format_duration(options.metrics_linger)
        ));
        tokio::select! {
            _ = tokio::time::sleep(options.metrics_linger) => {}
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
    targets.clear()?;
    if let Some(server) = server {
        server.abort();
    }
    Ok((experiment, end))
}

/// The run's file_sd targets file, rewritten whenever its processes change.
struct TargetsFile {
    path: Option<PathBuf>,
    experiment: String,
    own: Option<ScrapeTarget>,
    written: Option<Vec<ScrapeTarget>>,
}

impl TargetsFile {
    fn new(path: Option<PathBuf>, experiment: &str, own: Option<ScrapeTarget>) -> Self {
        TargetsFile {
            path,
            experiment: experiment.to_string(),
            own,
            written: None,
        }
    }

    fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Write the run's own target and the backend's current processes, if they changed.
    fn update(&mut self, backend: &LocalBackend) -> anyhow::Result<()> {
        let mut now: Vec<ScrapeTarget> = self.own.iter().cloned().collect();
        now.extend(backend.scrape_targets(&self.experiment));
        self.write(now)
    }

    /// Nothing left to scrape: the run is over.
    fn clear(&mut self) -> anyhow::Result<()> {
        self.write(Vec::new())
    }

    fn write(&mut self, now: Vec<ScrapeTarget>) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.written.as_ref() != Some(&now) {
            let groups = scrape_targets::target_groups(LOCAL_NAMESPACE, &self.experiment, &now);
            scrape_targets::write(path, &groups)?;
            self.written = Some(now);
        }
        Ok(())
    }
}
