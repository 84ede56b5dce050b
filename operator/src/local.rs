//! The local backend: the engine's actions carried out with processes instead of pods. Each
//! replica is one `loopscale-workload serve` supervisor on its own loopback port (with
//! `implementation: reference`, the real Express or FastAPI server from `workload/reference/`);
//! each generator is one `loopscale-workload load` process aimed at every replica, writing its
//! report to a file. Every child runs in its own process group, so stopping it stops its workers
//! too.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use loopscale_workload::report::Report;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::crd::{ExperimentSpec, Implementation, StepKey};
use crate::engine::{Action, LoadObservation, Observation, WorkloadObservation};
use crate::planner::{workload_env, GeneratorLoad};
use crate::reference::ReferenceServer;
use crate::results::{measure, Measurement};
use crate::scrape_targets::{Role, ScrapeTarget};

/// Name of the data-plane binary looked up next to `loopscale`.
pub const WORKLOAD_BIN: &str = "loopscale-workload";

/// Set on every child to the run's directory, so stray processes of a run can be identified
/// (`grep -l` in `/proc/*/environ`); the workload ignores it.
pub const RUN_DIR_ENV: &str = "LOOPSCALE_RUN_DIR";

/// Find `loopscale-workload`: an explicit path (flag or `LOOPSCALE_WORKLOAD_BIN`) wins, then the
/// directory of the running `loopscale` binary (the same cargo target dir or install dir), then
/// `PATH`.
pub fn find_workload_bin(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
        return Ok(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dirs = vec![];
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            // Integration tests run from target/<profile>/deps.
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
        for dir in dirs {
            let candidate = dir.join(WORKLOAD_BIN);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(WORKLOAD_BIN);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!(
        "cannot find {WORKLOAD_BIN} next to loopscale or on PATH; build it (cargo build -p loopscale-workload) or pass --workload-bin"
    )
}

/// CPUs a step asks for: every worker process, plus one per generator.
pub fn cpus_needed(step: &StepKey, generators: u32) -> u32 {
    step.total_processes() + generators
}

/// A warning when a step asks for more CPUs than the machine has (then the step measures CPU
/// contention, not scaling).
pub fn cpu_warning(step: &StepKey, generators: u32, available: u32) -> Option<String> {
    let need = cpus_needed(step, generators);
    (need > available).then(|| {
        format!(
            "warning: {step} asks for {need} CPUs ({} worker processes + {generators} generator(s)) but this machine has {available}; the step measures contention for CPUs, not scaling",
            step.total_processes()
        )
    })
}

/// A port on the loopback interface that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Ask a replica's `/readyz`; true on a 2xx answer within the timeout.
async fn is_ready(port: u16) -> bool {
    let probe = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let request = http::Request::get("/readyz")
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().is_success())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Some(true))
    )
}

/// Stop a child and its process group: SIGTERM (servers drain), then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        // Workers that outlived their supervisor would keep their CPUs busy.
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.wait().await;
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

struct Replica {
    child: Child,
    port: u16,
    log: PathBuf,
}

struct Generator {
    child: Child,
    /// Port of its live `/metrics`, when the run publishes scrape targets.
    metrics_port: Option<u16>,
    report: PathBuf,
    log: PathBuf,
    exit: Option<std::process::ExitStatus>,
}

/// Last resort when a child is dropped without [`LocalBackend::tear_down`] (an error or a panic):
/// kill its whole process group, so no worker outlives loopscale.
fn kill_group_now(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill_group_now(&self.child);
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        kill_group_now(&self.child);
    }
}

/// The children of the current step and what became of them.
pub struct LocalBackend {
    workload_bin: PathBuf,
    work_dir: PathBuf,
    /// Where the reference servers are (`workload/reference`), for `implementation: reference`.
    reference_dir: PathBuf,
    workload: Option<(StepKey, Vec<Replica>)>,
    /// Whether the replicas serve `/metrics` (the emulation does, the reference servers do not).
    workload_metrics: bool,
    /// A step whose replicas could not be started, and why (the engine fails the step).
    deploy_failure: Option<(StepKey, String)>,
    load: Option<(StepKey, Vec<Generator>)>,
    finished: Option<(StepKey, Result<Measurement, String>)>,
    /// When the current load started, for the progress bar.
    pub load_started: Option<std::time::Instant>,
    /// Give every generator a `--metrics-addr` (for Prometheus to scrape).
    generator_metrics: bool,
}

impl LocalBackend {
    /// A backend that starts `workload_bin` and keeps logs and reports under `work_dir`.
    pub fn new(workload_bin: PathBuf, work_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work_dir.join("logs"))
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        std::fs::create_dir_all(work_dir.join("reports"))?;
        let work_dir = work_dir.canonicalize().unwrap_or(work_dir);
        Ok(LocalBackend {
            workload_bin,
            work_dir,
            reference_dir: PathBuf::from(crate::reference::DEFAULT_REFERENCE_DIR),
            workload: None,
            workload_metrics: true,
            deploy_failure: None,
            load: None,
            finished: None,
            load_started: None,
            generator_metrics: false,
        })
    }

    /// Take the reference servers (`implementation: reference`) from `dir` instead of
    /// `workload/reference` relative to the current directory.
    pub fn set_reference_dir(&mut self, dir: PathBuf) {
        self.reference_dir = dir.canonicalize().unwrap_or(dir);
    }

    /// Start generators with live metrics on a loopback port each, listed by
    /// [`LocalBackend::scrape_targets`].
    pub fn enable_generator_metrics(&mut self) {
        self.generator_metrics = true;
    }

    /// The running replicas and generators as Prometheus targets, named like pods.
    pub fn scrape_targets(&self, experiment: &str) -> Vec<ScrapeTarget> {
        let mut out = Vec::new();
        if let Some((step, replicas)) = self.workload.as_ref().filter(|_| self.workload_metrics) {
            for (i, r) in replicas.iter().enumerate() {
                out.push(ScrapeTarget {
                    address: format!("127.0.0.1:{}", r.port),
                    role: Role::Server,
                    pod: format!("{experiment}-{}-replica{i}", Self::step_id(step)),
                    step: Some(*step),
                });
            }
        }
        if let Some((step, generators)) = &self.load {
            for (i, g) in generators.iter().enumerate() {
                if let (Some(port), None) = (g.metrics_port, g.exit) {
                    out.push(ScrapeTarget {
                        address: format!("127.0.0.1:{port}"),
                        role: Role::Load,
                        pod: format!("{experiment}-{}-gen{i}", Self::step_id(step)),
                        step: Some(*step),
                    });
                }
            }
        }
        out
    }

    fn step_id(step: &StepKey) -> String {
        format!(
            "{}-p{}-r{}-rep{}",
            step.mode, step.processes, step.replicas, step.repetition
        )
    }

    /// What the world looks like now, for [`crate::engine::decide`].
    pub async fn observe(&mut self, now: SystemTime) -> Observation {
        let workload = match &mut self.workload {
            None => match &self.deploy_failure {
                Some((step, reason)) => WorkloadObservation::Failed {
                    step: *step,
                    reason: reason.clone(),
                },
                None => WorkloadObservation::Absent,
            },
            Some((step, replicas)) => {
                let mut failure = None;
                for (i, r) in replicas.iter_mut().enumerate() {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        failure = Some(format!(
                            "replica {i} exited ({status}); log {}: {}",
                            r.log.display(),
                            tail(&r.log, 3)
                        ));
                        break;
                    }
                }
                match failure {
                    Some(reason) => WorkloadObservation::Failed {
                        step: *step,
                        reason,
                    },
                    None => {
                        let mut ready = 0;
                        for r in replicas.iter() {
                            if is_ready(r.port).await {
                                ready += 1;
                            }
                        }
                        WorkloadObservation::Deployed {
                            step: *step,
                            ready,
                            desired: replicas.len() as u32,
                        }
                    }
                }
            }
        };
        if self.finished.is_none() {
            if let Some((step, generators)) = &mut self.load {
                for g in generators.iter_mut() {
                    if g.exit.is_none() {
                        if let Ok(Some(status)) = g.child.try_wait() {
                            g.exit = Some(status);
                        }
                    }
                }
                if generators.iter().all(|g| g.exit.is_some()) {
                    let outcome = collect(generators);
                    self.finished = Some((*step, outcome));
                    self.load = None;
                }
            }
        }
        let load = match (&self.finished, &self.load) {
            (Some((step, outcome)), _) => LoadObservation::Finished {
                step: *step,
                outcome: outcome.clone(),
            },
            (None, Some((step, _))) => LoadObservation::Running { step: *step },
            (None, None) => LoadObservation::Absent,
        };
        Observation {
            now,
            workload,
            load,
        }
    }

    /// Carry out one action. Idempotent, like the engine expects.
    pub async fn carry_out(
        &mut self,
        spec: &ExperimentSpec,
        action: &Action,
    ) -> anyhow::Result<()> {
        match action {
            Action::Deploy { step } => {
                self.tear_down().await;
                self.deploy(spec, step)?;
            }
            Action::WaitReady { .. } => tokio::time::sleep(Duration::from_millis(100)).await,
            Action::RunLoad { step, generators } => {
                if self.load.is_none() && self.finished.is_none() {
                    self.run_load(step, generators)?;
                }
            }
            Action::WaitLoad { .. } => {
                // Wake early when the first generator exits.
                if let Some((_, generators)) = &mut self.load {
                    if let Some(g) = generators.iter_mut().find(|g| g.exit.is_none()) {
                        if let Ok(Ok(status)) =
                            tokio::time::timeout(Duration::from_millis(250), g.child.wait()).await
                        {
                            g.exit = Some(status);
                        }
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Action::TearDown { .. } => self.tear_down().await,
            Action::Cooldown { until } => {
                if let Ok(wait) = until.duration_since(SystemTime::now()) {
                    tokio::time::sleep(wait).await;
                }
            }
            Action::Finish { .. } => {}
        }
        Ok(())
    }

    /// Start the step's replicas. A server that cannot start (not installed, no `node`) fails
    /// the step with the reason, through [`LocalBackend::observe`], rather than the run.
    fn deploy(&mut self, spec: &ExperimentSpec, step: &StepKey) -> anyhow::Result<()> {
        let (program, args, extra_env): (PathBuf, Vec<std::ffi::OsString>, &[(&str, &str)]) =
            match spec.workload.implementation {
                Implementation::Emulated => (self.workload_bin.clone(), vec!["serve".into()], &[]),
                Implementation::Reference => {
                    let server = ReferenceServer::for_mode(step.mode);
                    if let Some(why) = server.missing(&self.reference_dir, Path::exists) {
                        self.deploy_failure = Some((*step, why));
                        return Ok(());
                    }
                    let cmd = server.local_command(&self.reference_dir);
                    let args = cmd.args.into_iter().map(Into::into).collect();
                    // Loopback only; no bytecode files written into the repository.
                    let env: &[(&str, &str)] =
                        &[("HOST", "127.0.0.1"), ("PYTHONDONTWRITEBYTECODE", "1")];
                    (cmd.program, args, env)
                }
            };
        let env = workload_env(spec, step);
        let mut replicas = Vec::new();
        for i in 0..step.replicas {
            let port = free_port().context("no free loopback port")?;
            let log = self
                .work_dir
                .join("logs")
                .join(format!("{}-replica{i}.log", Self::step_id(step)));
            let file = std::fs::File::create(&log)?;
            let spawned = Command::new(&program)
                .args(&args)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .envs(extra_env.iter().copied())
                .env("PORT", port.to_string())
                .env(RUN_DIR_ENV, &self.work_dir)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => replicas.push(Replica { child, port, log }),
                Err(e) => {
                    // The replicas started so far are stopped by their Drop.
                    self.deploy_failure =
                        Some((*step, format!("cannot start {}: {e}", program.display())));
                    return Ok(());
                }
            }
        }
        self.workload_metrics = spec.workload.implementation == Implementation::Emulated;
        self.workload = Some((*step, replicas));
        Ok(())
    }

    fn run_load(&mut self, step: &StepKey, loads: &[GeneratorLoad]) -> anyhow::Result<()> {
        let ports: Vec<u16> = match &self.workload {
            Some((s, replicas)) if s == step => replicas.iter().map(|r| r.port).collect(),
            _ => anyhow::bail!("no workload deployed for {step}"),
        };
        let mut generators = Vec::new();
        for load in loads {
            let id = format!("{}-gen{}", Self::step_id(step), load.index);
            let report = self.work_dir.join("reports").join(format!("{id}.json"));
            let _ = std::fs::remove_file(&report);
            let log = self.work_dir.join("logs").join(format!("{id}.log"));
            let file = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&self.workload_bin);
            cmd.arg("load").args(load.args());
            for port in &ports {
                cmd.arg("--target").arg(format!("http://127.0.0.1:{port}"));
            }
            let metrics_port = if self.generator_metrics {
                let port = free_port().context("no free loopback port")?;
                cmd.arg("--metrics-addr").arg(format!("127.0.0.1:{port}"));
                Some(port)
            } else {
                None
            };
            let child = cmd
                .env(RUN_DIR_ENV, &self.work_dir)
                .arg("--report")
                .arg(&report)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {} load", self.workload_bin.display()))?;
            generators.push(Generator {
                child,
                metrics_port,
                report,
                log,
                exit: None,
            });
        }
        self.load = Some((*step, generators));
        self.load_started = Some(std::time::Instant::now());
        Ok(())
    }

    /// Stop every child of the current step (generators first, then replicas).
    pub async fn tear_down(&mut self) {
        // Children stay tracked until stopped, so a cancelled teardown can be finished later.
        if let Some((_, generators)) = &mut self.load {
            for g in generators.iter_mut() {
                stop(&mut g.child, Duration::from_secs(2)).await;
            }
        }
        self.load = None;
        if let Some((_, replicas)) = &mut self.workload {
            for r in replicas.iter_mut() {
                stop(&mut r.child, Duration::from_secs(5)).await;
            }
        }
        self.workload = None;
        self.deploy_failure = None;
        self.finished = None;
        self.load_started = None;
    }
}

/// Read and merge the generators' reports once they all exited.
fn collect(generators: &[Generator]) -> Result<Measurement, String> {
    let mut reports = Vec::new();
    for (i, g) in generators.iter().enumerate() {
        match g.exit {
            Some(s) if s.success() => {}
            Some(s) => return Err(format!("generator {i} exited ({s}): {}", tail(&g.log, 3))),
            None => return Err(format!("generator {i} did not finish")),
        }
        let text = std::fs::read_to_string(&g.report)
            .map_err(|e| format!("generator {i} wrote no report {}: {e}", g.report.display()))?;
        reports.push(
            Report::from_json(&text)
                .map_err(|e| format!("generator {i}'s report is unreadable: {e}"))?,
        );
    }
    measure(&reports).map_err(|e| format!("cannot merge the reports: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Mode;

    #[test]
    fn warns_only_when_the_step_needs_more_cpus_than_there_are() {
        let step = StepKey {
            mode: Mode::EventLoop,
            processes: 2,
            replicas: 2,
            repetition: 1,
        };
        assert_eq!(cpus_needed(&step, 1), 5);
        assert!(cpu_warning(&step, 1, 8).is_none());
        let w = cpu_warning(&step, 1, 4).unwrap();
        assert!(w.contains("5 CPUs") && w.contains("has 4"), "{w}");
    }

    #[test]
    fn a_missing_explicit_workload_binary_is_an_error() {
        assert!(find_workload_bin(Some("/nonexistent/loopscale-workload".into())).is_err());
    }
}
