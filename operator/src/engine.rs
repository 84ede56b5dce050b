//! The experiment engine: a pure function from (spec, status, what the backend observed) to the
//! new status and the one action the backend should carry out next. Both backends (local
//! processes, Kubernetes) run the same loop: observe → [`decide`] → persist the status → carry
//! out the action → observe again. Nothing here does I/O or reads the clock.
//!
//! Level-triggered and idempotent: the decision depends only on its inputs, never on why it was
//! called, and every action can be repeated safely. Results are keyed by [`StepKey`] and a key is
//! recorded at most once, so a restart at any point continues the current step and neither loses
//! nor duplicates a result.
use std::time::{Duration, SystemTime};

use crate::crd::{
    CurrentStep, ExperimentSpec, ExperimentStatus, FailurePolicy, Outcome, Phase, Stage, StepKey,
    StepResult,
};
use crate::planner::{generator_loads, parse_duration, plan, GeneratorLoad};
use crate::results::{self, Measurement};

/// What the backend sees of the world, for the engine to decide on.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The current time (the backend reads the clock, the engine does not).
    pub now: SystemTime,
    /// The workload (replicas of the server).
    pub workload: WorkloadObservation,
    /// The load generators.
    pub load: LoadObservation,
}

/// The workload as observed.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadObservation {
    /// No replicas exist.
    Absent,
    /// Replicas exist for `step`; `ready` of `desired` answer their readiness probe.
    Deployed {
        /// Which step they were deployed for (mode, processes, replicas).
        step: StepKey,
        /// Replicas that are ready.
        ready: u32,
        /// Replicas asked for.
        desired: u32,
    },
    /// Replicas for `step` cannot become ready (exited, crash-looping, unschedulable).
    Failed {
        /// Which step.
        step: StepKey,
        /// What went wrong, for the step's failure reason.
        reason: String,
    },
}

/// The load generators as observed.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadObservation {
    /// No generator exists.
    Absent,
    /// Generators for `step` are running.
    Running {
        /// Which step.
        step: StepKey,
    },
    /// Generators for `step` have all exited; their reports merged, or why there is no result.
    Finished {
        /// Which step.
        step: StepKey,
        /// The merged measurement, or the reason there is none.
        outcome: Result<Measurement, String>,
    },
}

/// The one thing the backend should do next. Every action is idempotent.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make `step.replicas` replicas of the server exist with the step's mode and processes,
    /// replacing any other step's workload.
    Deploy {
        /// The step to deploy for.
        step: StepKey,
    },
    /// Replicas exist but are not all ready yet: observe again shortly.
    WaitReady {
        /// The step being deployed.
        step: StepKey,
    },
    /// Start the step's load generators (one per entry), aimed at all replicas.
    RunLoad {
        /// The step being measured.
        step: StepKey,
        /// Each generator's flags.
        generators: Vec<GeneratorLoad>,
    },
    /// Generators are running: observe again shortly (or when they exit).
    WaitLoad {
        /// The step being measured.
        step: StepKey,
    },
    /// Remove the step's workload and generators.
    TearDown {
        /// The step whose children go.
        step: StepKey,
    },
    /// Nothing to do until `until` (between steps).
    Cooldown {
        /// When the cooldown ends.
        until: SystemTime,
    },
    /// The experiment is over; nothing is left running.
    Finish {
        /// Succeeded or Failed.
        phase: Phase,
    },
}

/// Something worth an event (Kubernetes Event, log line, progress bar message).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEvent {
    /// CamelCase reason: `StepStarted`, `StepMeasuring`, `StepSucceeded`, `StepFailed`,
    /// `ExperimentSucceeded`, `ExperimentFailed`.
    pub reason: &'static str,
    /// Human-readable detail.
    pub note: String,
    /// Whether it is a warning (a failure) rather than normal progress.
    pub warning: bool,
}

/// The engine's answer: the status to persist, then the action to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// New status: persist it before carrying out the action.
    pub status: ExperimentStatus,
    /// What to do next.
    pub action: Action,
    /// Transitions that happened in this decision.
    pub events: Vec<EngineEvent>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

fn set_progress(status: &mut ExperimentStatus) {
    status.completed_steps = status.results.len() as u32;
    status.progress = Some(format!("{}/{}", status.completed_steps, status.total_steps));
}

fn has_result(status: &ExperimentStatus, key: &StepKey) -> bool {
    status.results.iter().any(|r| r.key == *key)
}

/// Record a result unless its key already has one (the guard against duplicates on restart).
fn record(status: &mut ExperimentStatus, result: StepResult) -> bool {
    if has_result(status, &result.key) {
        return false;
    }
    status.results.push(result);
    results::apply_scaling_efficiency(&mut status.results);
    set_progress(status);
    true
}

/// The step's children still present in the world, if any (so they can be torn down).
fn leftover(obs: &Observation) -> Option<StepKey> {
    let w = match &obs.workload {
        WorkloadObservation::Absent => None,
        WorkloadObservation::Deployed { step, .. } | WorkloadObservation::Failed { step, .. } => {
            Some(*step)
        }
    };
    let l = match &obs.load {
        LoadObservation::Absent => None,
        LoadObservation::Running { step } | LoadObservation::Finished { step, .. } => Some(*step),
    };
    l.or(w)
}

/// Decide the next action. See the module docs for the loop the backends run around it.
pub fn decide(spec: &ExperimentSpec, status: &ExperimentStatus, obs: &Observation) -> Decision {
    let mut status = status.clone();
    let mut events = Vec::new();
    let steps = plan(spec);
    status.total_steps = steps.len() as u32;
    status.implementation = Some(spec.workload.implementation);
    set_progress(&mut status);
    let cooldown = parse_duration(&spec.cooldown).unwrap_or_default();
    let step_timeout = parse_duration(&spec.step_timeout).unwrap_or(Duration::from_secs(300));

    // A finished experiment stays finished; it only makes sure nothing is left running.
    if matches!(status.phase, Phase::Succeeded | Phase::Failed) && status.current_step.is_none() {
        let action = match leftover(obs) {
            Some(step) => Action::TearDown { step },
            None => Action::Finish {
                phase: status.phase,
            },
        };
        return Decision {
            status,
            action,
            events,
        };
    }

    // Each pass either returns an action for the world or makes one status transition; the
    // transitions are bounded (a step moves forward through its stages), so is the loop.
    for _ in 0..16 {
        let Some(current) = status.current_step.clone() else {
            // Between steps: start the first planned step without a result, or finish.
            match steps.iter().position(|k| !has_result(&status, k)) {
                Some(i) if status.phase != Phase::Failed => {
                    let key = steps[i];
                    status.phase = Phase::Running;
                    status.current_step = Some(CurrentStep {
                        index: i as u32 + 1,
                        key,
                        stage: Stage::Deploying,
                        started_at: rfc3339(obs.now),
                        cooldown_until: None,
                    });
                    events.push(EngineEvent {
                        reason: "StepStarted",
                        note: format!("step {}/{}: {key}", i + 1, steps.len()),
                        warning: false,
                    });
                    continue;
                }
                _ => {
                    if let Some(step) = leftover(obs) {
                        return Decision {
                            status,
                            action: Action::TearDown { step },
                            events,
                        };
                    }
                    if status.phase != Phase::Failed {
                        if status
                            .results
                            .iter()
                            .any(|r| r.outcome == Outcome::Succeeded)
                        {
                            status.phase = Phase::Succeeded;
                            events.push(EngineEvent {
                                reason: "ExperimentSucceeded",
                                note: format!("{} steps recorded", status.results.len()),
                                warning: false,
                            });
                        } else {
                            // Nothing was measured: calling that a success would hide the cause.
                            status.phase = Phase::Failed;
                            status.message =
                                Some("every step failed; see the results' reasons".into());
                            events.push(EngineEvent {
                                reason: "ExperimentFailed",
                                note: status.message.clone().unwrap_or_default(),
                                warning: true,
                            });
                        }
                    }
                    let phase = status.phase;
                    return Decision {
                        status,
                        action: Action::Finish { phase },
                        events,
                    };
                }
            }
        };
        let key = current.key;

        if current.stage == Stage::CoolingDown || has_result(&status, &key) {
            // The step's result is recorded: remove its children, wait out the cooldown, move on.
            if let Some(step) = leftover(obs) {
                if current.stage != Stage::CoolingDown {
                    set_stage(&mut status, Stage::CoolingDown, Some(obs.now + cooldown));
                }
                return Decision {
                    status,
                    action: Action::TearDown { step },
                    events,
                };
            }
            let until = current
                .cooldown_until
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(obs.now + cooldown);
            if status.phase != Phase::Failed && obs.now < until && !is_last(&steps, &status) {
                if current.stage != Stage::CoolingDown || current.cooldown_until.is_none() {
                    set_stage(&mut status, Stage::CoolingDown, Some(until));
                }
                return Decision {
                    status,
                    action: Action::Cooldown { until },
                    events,
                };
            }
            status.current_step = None;
            continue;
        }

        // Deploying or Measuring, no result yet. A finished load for this step is the result.
        if let LoadObservation::Finished { step, outcome } = &obs.load {
            if *step == key {
                let result = match outcome {
                    Ok(m) => results::succeeded(key, m.clone()),
                    Err(reason) => results::failed(key, reason.clone()),
                };
                fail_or_succeed(spec, &mut status, &mut events, result, obs.now + cooldown);
                continue;
            }
        }

        let started = parse_time(&current.started_at).unwrap_or(obs.now);
        let elapsed = obs.now.duration_since(started).unwrap_or_default();
        if elapsed > step_timeout {
            let reason = format!(
                "step timed out after {} in stage {}",
                humantime::format_duration(step_timeout),
                current.stage.as_str()
            );
            fail_or_succeed(
                spec,
                &mut status,
                &mut events,
                results::failed(key, reason),
                obs.now + cooldown,
            );
            continue;
        }

        // Children of another step (left over from before a restart) go first.
        if let Some(other) = leftover(obs).filter(|s| *s != key) {
            return Decision {
                status,
                action: Action::TearDown { step: other },
                events,
            };
        }

        if let LoadObservation::Running { .. } = obs.load {
            if current.stage != Stage::Measuring {
                set_stage(&mut status, Stage::Measuring, None);
            }
            return Decision {
                status,
                action: Action::WaitLoad { step: key },
                events,
            };
        }

        match &obs.workload {
            WorkloadObservation::Failed { reason, .. } => {
                let reason = format!("workload did not become ready: {reason}");
                fail_or_succeed(
                    spec,
                    &mut status,
                    &mut events,
                    results::failed(key, reason),
                    obs.now + cooldown,
                );
                continue;
            }
            WorkloadObservation::Absent => {
                if current.stage != Stage::Deploying {
                    // Replicas vanished mid-measurement (e.g. evicted): deploy again; the load
                    // restarts once they are ready, the timeout bounds the retries.
                    set_stage(&mut status, Stage::Deploying, None);
                }
                return Decision {
                    status,
                    action: Action::Deploy { step: key },
                    events,
                };
            }
            WorkloadObservation::Deployed { ready, desired, .. } => {
                if ready < desired || *desired != key.replicas {
                    let action = if *desired != key.replicas {
                        Action::Deploy { step: key }
                    } else {
                        Action::WaitReady { step: key }
                    };
                    return Decision {
                        status,
                        action,
                        events,
                    };
                }
                if current.stage != Stage::Measuring {
                    set_stage(&mut status, Stage::Measuring, None);
                    events.push(EngineEvent {
                        reason: "StepMeasuring",
                        note: format!(
                            "{key}: {ready} replicas ready, starting {} generator(s)",
                            spec.load.generators
                        ),
                        warning: false,
                    });
                }
                return Decision {
                    status,
                    action: Action::RunLoad {
                        step: key,
                        generators: generator_loads(spec),
                    },
                    events,
                };
            }
        }
    }
    unreachable!("the engine makes at most a handful of transitions per decision")
}

fn is_last(steps: &[StepKey], status: &ExperimentStatus) -> bool {
    steps.iter().all(|k| has_result(status, k))
}

fn set_stage(status: &mut ExperimentStatus, stage: Stage, cooldown_until: Option<SystemTime>) {
    if let Some(c) = status.current_step.as_mut() {
        c.stage = stage;
        c.cooldown_until = cooldown_until.map(rfc3339);
    }
}

/// Record a step's result and move it to CoolingDown; a failure under `abort` fails the
/// experiment.
fn fail_or_succeed(
    spec: &ExperimentSpec,
    status: &mut ExperimentStatus,
    events: &mut Vec<EngineEvent>,
    result: StepResult,
    cooldown_until: SystemTime,
) {
    let key = result.key;
    let failed = result.reason.clone();
    if record(status, result) {
        match &failed {
            None => events.push(EngineEvent {
                reason: "StepSucceeded",
                note: format!("{key}: result recorded"),
                warning: false,
            }),
            Some(reason) => events.push(EngineEvent {
                reason: "StepFailed",
                note: format!("{key}: {reason}"),
                warning: true,
            }),
        }
    }
    if let (Some(reason), FailurePolicy::Abort) = (failed, spec.failure_policy) {
        status.phase = Phase::Failed;
        status.message = Some(format!(
            "aborted (failurePolicy: abort) after {key} failed: {reason}"
        ));
        events.push(EngineEvent {
            reason: "ExperimentFailed",
            note: status.message.clone().unwrap_or_default(),
            warning: true,
        });
    }
    set_stage(status, Stage::CoolingDown, Some(cooldown_until));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LatencyMs, Mode, Outcome};
    use crate::validation::validate_manifest;

    fn spec(extra: &str) -> ExperimentSpec {
        let yaml = format!(
            r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {{name: engine}}
spec:
  workload: {{modes: [event-loop, thread-pool]}}
  scenario: {{route: cpu, cpuMillis: 10}}
  matrix: {{processes: [1, 2], replicas: [1, 2]}}
  load: {{model: closed, concurrency: 4, warmup: 1s, duration: 2s}}
  cooldown: 2s
  stepTimeout: 1m
{extra}"#
        );
        validate_manifest(&yaml).unwrap().spec
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn obs(now: u64, workload: WorkloadObservation, load: LoadObservation) -> Observation {
        Observation {
            now: t(now),
            workload,
            load,
        }
    }

    fn measurement(rps: f64) -> Measurement {
        Measurement {
            throughput_rps: rps,
            latency_ms: LatencyMs {
                p50: 10.0,
                p90: 11.0,
                p99: 12.0,
                p999: 13.0,
                max: 14.0,
            },
            requests: 100,
            error_ratio: 0.0,
            dropped_ratio: 0.0,
            window_seconds: 2.0,
            generators: 1,
        }
    }

    fn deployed(step: StepKey, ready: u32) -> WorkloadObservation {
        WorkloadObservation::Deployed {
            step,
            ready,
            desired: step.replicas,
        }
    }

    /// A simulated backend: carries out actions on an in-memory world, instantly.
    struct World {
        workload: WorkloadObservation,
        load: LoadObservation,
        now: u64,
        deploys: u32,
        loads_started: u32,
    }

    impl World {
        fn new() -> Self {
            World {
                workload: WorkloadObservation::Absent,
                load: LoadObservation::Absent,
                now: 0,
                deploys: 0,
                loads_started: 0,
            }
        }
        fn observe(&self) -> Observation {
            obs(self.now, self.workload.clone(), self.load.clone())
        }
        fn apply(&mut self, action: &Action) {
            self.now += 1;
            match action {
                Action::Deploy { step } => {
                    self.deploys += 1;
                    self.workload = deployed(*step, step.replicas);
                }
                Action::WaitReady { .. } | Action::WaitLoad { .. } => {}
                Action::RunLoad { step, .. } => {
                    self.loads_started += 1;
                    let rps = 100.0
                        * f64::from(step.total_processes())
                        * if step.mode == Mode::EventLoop {
                            1.0
                        } else {
                            0.5
                        };
                    self.load = LoadObservation::Finished {
                        step: *step,
                        outcome: Ok(measurement(rps)),
                    };
                }
                Action::TearDown { .. } => {
                    self.workload = WorkloadObservation::Absent;
                    self.load = LoadObservation::Absent;
                }
                Action::Cooldown { until } => {
                    self.now = until.duration_since(t(0)).unwrap().as_secs();
                }
                Action::Finish { .. } => {}
            }
        }
    }

    fn run_to_end(
        spec: &ExperimentSpec,
        mut status: ExperimentStatus,
        world: &mut World,
    ) -> ExperimentStatus {
        for _ in 0..1000 {
            let d = decide(spec, &status, &world.observe());
            status = d.status;
            if let Action::Finish { .. } = d.action {
                return status;
            }
            world.apply(&d.action);
        }
        panic!("the experiment did not finish");
    }

    #[test]
    fn a_whole_experiment_records_every_step_once_with_efficiency() {
        let spec = spec("");
        let mut world = World::new();
        let status = run_to_end(&spec, ExperimentStatus::default(), &mut world);
        assert_eq!(status.phase, Phase::Succeeded);
        assert_eq!(status.results.len(), 8);
        assert_eq!(status.progress.as_deref(), Some("8/8"));
        assert_eq!(world.deploys, 8);
        assert_eq!(world.loads_started, 8);
        assert!(status.current_step.is_none());
        let order: Vec<StepKey> = status.results.iter().map(|r| r.key).collect();
        assert_eq!(order, plan(&spec));
        for r in &status.results {
            assert_eq!(r.outcome, Outcome::Succeeded);
            assert!((r.scaling_efficiency.unwrap() - 1.0).abs() < 1e-9, "{r:?}");
        }
    }

    fn status_with_three_results_and_a_running_step(
        spec: &ExperimentSpec,
        stage: Stage,
    ) -> (ExperimentStatus, StepKey) {
        let steps = plan(spec);
        let mut status = ExperimentStatus {
            phase: Phase::Running,
            total_steps: steps.len() as u32,
            ..Default::default()
        };
        for k in &steps[..3] {
            record(&mut status, results::succeeded(*k, measurement(100.0)));
        }
        status.current_step = Some(CurrentStep {
            index: 4,
            key: steps[3],
            stage,
            started_at: rfc3339(t(0)),
            cooldown_until: None,
        });
        (status, steps[3])
    }

    #[test]
    fn restart_mid_step_continues_that_step_and_adds_no_duplicate() {
        let spec = spec("");
        let (status, fourth) =
            status_with_three_results_and_a_running_step(&spec, Stage::Measuring);

        // After a restart the generators are still running: keep waiting for them.
        let d = decide(
            &spec,
            &status,
            &obs(
                10,
                deployed(fourth, fourth.replicas),
                LoadObservation::Running { step: fourth },
            ),
        );
        assert_eq!(d.action, Action::WaitLoad { step: fourth });
        assert_eq!(d.status.results.len(), 3);
        assert_eq!(d.status.current_step.as_ref().unwrap().key, fourth);

        // The generators finished while the engine was down: their result is recorded once.
        let finished = LoadObservation::Finished {
            step: fourth,
            outcome: Ok(measurement(200.0)),
        };
        let d = decide(
            &spec,
            &status,
            &obs(10, deployed(fourth, fourth.replicas), finished.clone()),
        );
        assert_eq!(d.status.results.len(), 4);
        assert_eq!(d.action, Action::TearDown { step: fourth });
        // Deciding again on the new status with the same observation does not add it twice.
        let again = decide(
            &spec,
            &d.status,
            &obs(11, deployed(fourth, fourth.replicas), finished),
        );
        assert_eq!(again.status.results.len(), 4);
        assert_eq!(
            again
                .status
                .results
                .iter()
                .filter(|r| r.key == fourth)
                .count(),
            1
        );

        // Replicas were lost with the restart: redeploy the same step, nothing recorded.
        let d = decide(
            &spec,
            &status,
            &obs(10, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        assert_eq!(d.action, Action::Deploy { step: fourth });
        assert_eq!(d.status.results.len(), 3);
    }

    #[test]
    fn a_step_already_recorded_before_the_restart_is_not_measured_again() {
        let spec = spec("");
        let (mut status, fourth) =
            status_with_three_results_and_a_running_step(&spec, Stage::Measuring);
        record(&mut status, results::succeeded(fourth, measurement(1.0)));
        let d = decide(
            &spec,
            &status,
            &obs(10, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        assert!(
            matches!(d.action, Action::Cooldown { .. }),
            "{:?}",
            d.action
        );
        assert_eq!(d.status.results.len(), 4);
        // After the cooldown, the fifth step starts.
        let d = decide(
            &spec,
            &d.status,
            &obs(100, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        let fifth = plan(&spec)[4];
        assert_eq!(d.action, Action::Deploy { step: fifth });
        assert_eq!(d.status.current_step.unwrap().index, 5);
    }

    #[test]
    fn waits_for_every_replica_then_runs_the_generators() {
        let spec = spec(
            "  load: {model: closed, concurrency: 4, generators: 2, warmup: 1s, duration: 2s}",
        );
        let first = plan(&spec)[0];
        let d = decide(
            &spec,
            &ExperimentStatus::default(),
            &obs(0, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        assert_eq!(d.action, Action::Deploy { step: first });
        assert_eq!(d.status.phase, Phase::Running);
        assert_eq!(
            d.status.current_step.as_ref().unwrap().stage,
            Stage::Deploying
        );
        let partly = WorkloadObservation::Deployed {
            step: first,
            ready: 0,
            desired: 1,
        };
        let d = decide(&spec, &d.status, &obs(1, partly, LoadObservation::Absent));
        assert_eq!(d.action, Action::WaitReady { step: first });
        let d = decide(
            &spec,
            &d.status,
            &obs(2, deployed(first, 1), LoadObservation::Absent),
        );
        match &d.action {
            Action::RunLoad { step, generators } => {
                assert_eq!(*step, first);
                assert_eq!(generators.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.status.current_step.as_ref().unwrap().stage,
            Stage::Measuring
        );
    }

    #[test]
    fn a_step_that_times_out_fails_and_the_experiment_continues() {
        let spec = spec("");
        let first = plan(&spec)[0];
        let d = decide(
            &spec,
            &ExperimentStatus::default(),
            &obs(0, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        let stuck = WorkloadObservation::Deployed {
            step: first,
            ready: 0,
            desired: 1,
        };
        let d = decide(&spec, &d.status, &obs(61, stuck, LoadObservation::Absent));
        assert_eq!(d.action, Action::TearDown { step: first });
        assert_eq!(d.status.results.len(), 1);
        assert_eq!(d.status.results[0].outcome, Outcome::Failed);
        assert!(d.status.results[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("timed out"));
        assert_eq!(d.status.phase, Phase::Running);
        assert!(d
            .events
            .iter()
            .any(|e| e.reason == "StepFailed" && e.warning));
    }

    #[test]
    fn abort_policy_stops_after_the_first_failure_and_cleans_up() {
        let spec = spec("  failurePolicy: abort");
        let first = plan(&spec)[0];
        let d = decide(
            &spec,
            &ExperimentStatus::default(),
            &obs(0, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        let crashed = WorkloadObservation::Failed {
            step: first,
            reason: "exited with status 1".into(),
        };
        let d = decide(&spec, &d.status, &obs(1, crashed, LoadObservation::Absent));
        assert_eq!(d.action, Action::TearDown { step: first });
        assert_eq!(d.status.phase, Phase::Failed);
        let d = decide(
            &spec,
            &d.status,
            &obs(2, WorkloadObservation::Absent, LoadObservation::Absent),
        );
        assert_eq!(
            d.action,
            Action::Finish {
                phase: Phase::Failed
            }
        );
        assert_eq!(d.status.results.len(), 1);
        assert!(d.status.message.unwrap().contains("abort"));
    }

    #[test]
    fn generators_without_reports_fail_the_step() {
        let spec = spec("");
        let mut world = World::new();
        let d = decide(&spec, &ExperimentStatus::default(), &world.observe());
        world.apply(&d.action);
        let first = plan(&spec)[0];
        let d = decide(&spec, &d.status, &world.observe());
        assert!(matches!(d.action, Action::RunLoad { .. }));
        world.load = LoadObservation::Finished {
            step: first,
            outcome: Err("generator 0 exited with status 1".into()),
        };
        let d = decide(&spec, &d.status, &world.observe());
        assert_eq!(d.status.results[0].outcome, Outcome::Failed);
        assert_eq!(d.status.results[0].scaling_efficiency, None);
    }

    #[test]
    fn leftovers_of_another_step_are_torn_down_first() {
        let spec = spec("");
        let steps = plan(&spec);
        let (status, fourth) =
            status_with_three_results_and_a_running_step(&spec, Stage::Deploying);
        let d = decide(
            &spec,
            &status,
            &obs(
                1,
                deployed(steps[2], steps[2].replicas),
                LoadObservation::Absent,
            ),
        );
        assert_eq!(d.action, Action::TearDown { step: steps[2] });
        assert_ne!(steps[2], fourth);
    }

    #[test]
    fn an_experiment_where_every_step_failed_is_failed() {
        let spec = spec("");
        let mut status = ExperimentStatus::default();
        // Every deployment crashes at once.
        let mut deployed: Option<StepKey> = None;
        let mut now = 0;
        for _ in 0..200 {
            let workload = match deployed {
                Some(step) => WorkloadObservation::Failed {
                    step,
                    reason: "exited".into(),
                },
                None => WorkloadObservation::Absent,
            };
            let d = decide(&spec, &status, &obs(now, workload, LoadObservation::Absent));
            status = d.status;
            now += 10;
            match d.action {
                Action::Deploy { step } => deployed = Some(step),
                Action::TearDown { .. } => deployed = None,
                Action::Finish { phase } => {
                    assert_eq!(phase, Phase::Failed);
                    assert_eq!(status.results.len(), 8);
                    assert!(status.results.iter().all(|r| r.outcome == Outcome::Failed));
                    assert!(status.message.unwrap().contains("every step failed"));
                    return;
                }
                _ => {}
            }
        }
        panic!("did not finish");
    }

    #[test]
    fn a_finished_experiment_stays_finished() {
        let spec = spec("");
        let mut world = World::new();
        let status = run_to_end(&spec, ExperimentStatus::default(), &mut world);
        let d = decide(&spec, &status, &world.observe());
        assert_eq!(
            d.action,
            Action::Finish {
                phase: Phase::Succeeded
            }
        );
        assert_eq!(d.status, status);
        assert!(d.events.is_empty());
    }
}
