//! Turns an Experiment spec into the ordered list of steps and each step's load settings. Pure.
use std::time::Duration;

use crate::crd::{ExperimentSpec, Implementation, LoadModel, Mode, StepKey, StepOrder};

/// Every step of the experiment in the order it runs (modes × processes × replicas ×
/// repetitions).
///
/// `interleaved` (the default): repetition rounds outermost; inside a round, processes, then
/// replicas, then the modes back to back. The two modes of one configuration are measured minutes
/// apart at most, and every repetition round sees the whole matrix, so slow drift of a shared
/// machine (thermal throttling, a noisy neighbour, a cluster autoscaling) biases neither mode nor
/// any configuration. `sequential`: mode outermost, then processes, replicas, repetitions back to
/// back; easier to read while it runs, but the modes are compared across the whole run's drift.
pub fn plan(spec: &ExperimentSpec) -> Vec<StepKey> {
    let modes = &spec.workload.modes;
    let processes = &spec.matrix.processes;
    let replicas = &spec.matrix.replicas;
    let repetitions = 1..=spec.repetitions;
    let mut steps = Vec::with_capacity(modes.len() * processes.len() * replicas.len());
    match spec.order {
        StepOrder::Interleaved => {
            for repetition in repetitions {
                for &p in processes {
                    for &r in replicas {
                        for &mode in modes {
                            steps.push(StepKey {
                                mode,
                                processes: p,
                                replicas: r,
                                repetition,
                            });
                        }
                    }
                }
            }
        }
        StepOrder::Sequential => {
            for &mode in modes {
                for &p in processes {
                    for &r in replicas {
                        for repetition in repetitions.clone() {
                            steps.push(StepKey {
                                mode,
                                processes: p,
                                replicas: r,
                                repetition,
                            });
                        }
                    }
                }
            }
        }
    }
    steps
}

/// One load generator's share of a step's load: the flags of one `loopscale-workload load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorLoad {
    /// Position among the step's generators, from 0.
    pub index: u32,
    /// `--model`.
    pub model: LoadModel,
    /// `--rate` (open model): this generator's share of the total rate.
    pub rate: Option<u32>,
    /// `--concurrency`: closed model, this generator's share of the total concurrency; open
    /// model, the most requests in flight before new ones count as dropped (its connections).
    pub concurrency: u32,
    /// `--connections`: this generator's share of the total connections.
    pub connections: u32,
    /// `--warmup`, as written in the spec.
    pub warmup: String,
    /// `--duration`, as written in the spec.
    pub duration: String,
    /// `--timeout`, as written in the spec.
    pub timeout: String,
    /// `--path`: route and query of the scenario.
    pub path: String,
}

impl GeneratorLoad {
    /// The generator's command-line arguments after `load`, without `--target` and `--report`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--model".to_string(),
            self.model.as_str().to_string(),
            "--connections".into(),
            self.connections.to_string(),
            "--warmup".into(),
            self.warmup.clone(),
            "--duration".into(),
            self.duration.clone(),
            "--timeout".into(),
            self.timeout.clone(),
            "--path".into(),
            self.path.clone(),
        ];
        if let Some(rate) = self.rate {
            args.extend(["--rate".to_string(), rate.to_string()]);
        }
        args.extend(["--concurrency".to_string(), self.concurrency.to_string()]);
        args
    }
}

/// Split `total` into `parts` shares that differ by at most one and add up to `total`.
fn share(total: u32, parts: u32, index: u32) -> u32 {
    let parts = parts.max(1);
    total / parts + u32::from(index < total % parts)
}

/// The load of each generator of a step: totals from the spec split evenly (the remainder goes to
/// the first generators), so the shares add up exactly to what the spec asks for.
pub fn generator_loads(spec: &ExperimentSpec) -> Vec<GeneratorLoad> {
    let load = &spec.load;
    let n = load.generators.max(1);
    (0..n)
        .map(|index| {
            let (concurrency, connections) = match load.model {
                // Closed model: one connection per request in flight.
                LoadModel::Closed => {
                    let c = share(load.concurrency.unwrap_or(1), n, index).max(1);
                    (c, c)
                }
                // Open model: connections bound the requests in flight.
                LoadModel::Open => {
                    let c = share(load.connections, n, index).max(1);
                    (c, c)
                }
            };
            GeneratorLoad {
                index,
                model: load.model,
                rate: load.rate.map(|r| share(r, n, index).max(1)),
                concurrency,
                connections,
                warmup: load.warmup.clone(),
                duration: load.duration.clone(),
                timeout: load.timeout.clone(),
                path: spec.scenario.request_path(),
            }
        })
        .collect()
}

/// The environment of one workload replica (the server's only configuration, see the workload's
/// env table), except `PORT`, which the backend chooses. Both backends use it as is.
///
/// The emulation gets every knob. A reference server gets the knobs its runtime has (see
/// `workload/reference/README.md`): Express the libuv pool size, FastAPI anyio's limiter, the
/// switch interval and the GIL (the CRD's rules keep those to values the runtime can honour);
/// both the processes and, when set, the balancing. `LOOPSCALE_MODE` names the mode in both,
/// for whoever reads the pod's env (the reference servers ignore it).
pub fn workload_env(spec: &ExperimentSpec, step: &StepKey) -> Vec<(String, String)> {
    let w = &spec.workload;
    let mut env = vec![
        ("LOOPSCALE_MODE".to_string(), step.mode.as_str().to_string()),
        ("LOOPSCALE_PROCESSES".into(), step.processes.to_string()),
    ];
    let thread_pool = [
        (
            "LOOPSCALE_THREADPOOL_SIZE".to_string(),
            w.thread_pool_size.to_string(),
        ),
        ("LOOPSCALE_GIL".into(), w.gil.to_string()),
        (
            "LOOPSCALE_GIL_SWITCH_INTERVAL_MS".into(),
            w.gil_switch_interval_ms.to_string(),
        ),
    ];
    let libuv = (
        "LOOPSCALE_LIBUV_THREADPOOL_SIZE".to_string(),
        w.libuv_thread_pool_size.to_string(),
    );
    match (w.implementation, step.mode) {
        (Implementation::Emulated, mode) => {
            env.extend(thread_pool);
            env.push(libuv);
            let overheads = w.overheads(mode);
            env.push((
                "LOOPSCALE_REQUEST_OVERHEAD_US".into(),
                overheads.request_us.to_string(),
            ));
            env.push((
                "LOOPSCALE_RESUME_OVERHEAD_US".into(),
                overheads.resume_us.to_string(),
            ));
            env.push((
                "LOOPSCALE_CONNECTION_OVERHEAD_US".into(),
                overheads.connection_us.to_string(),
            ));
            env.push((
                "LOOPSCALE_WORKING_SET_KIB".into(),
                overheads.working_set_kib.to_string(),
            ));
        }
        (Implementation::Reference, Mode::EventLoop) => env.push(libuv),
        (Implementation::Reference, Mode::ThreadPool) => env.extend(thread_pool),
    }
    if let Some(b) = w.balancing {
        let value = match b {
            crate::crd::Balancing::RoundRobin => "round-robin",
            crate::crd::Balancing::SharedSocket => "shared-socket",
        };
        env.push(("LOOPSCALE_BALANCING".into(), value.into()));
    }
    env
}

/// Parse a spec duration (`500ms`, `10s`, `1m30s`); the schema pattern guarantees the form.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Mode::{EventLoop, ThreadPool};
    use crate::validation::validate_manifest;

    fn spec(extra: &str) -> ExperimentSpec {
        let yaml = format!(
            r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {{name: plan}}
spec:
  workload: {{modes: [event-loop, thread-pool]}}
  scenario: {{route: cpu, cpuMillis: 10}}
  matrix: {{processes: [1, 2], replicas: [1, 3]}}
  load: {{model: open, rate: 102, connections: 10, generators: 3}}
{extra}"#
        );
        validate_manifest(&yaml).unwrap().spec
    }

    /// The value `env` gives `name`, if any.
    fn env_var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn k(mode: crate::crd::Mode, processes: u32, replicas: u32, repetition: u32) -> StepKey {
        StepKey {
            mode,
            processes,
            replicas,
            repetition,
        }
    }

    #[test]
    fn interleaved_is_the_default_and_runs_modes_back_to_back() {
        let steps = plan(&spec("  repetitions: 2"));
        assert_eq!(steps.len(), 16);
        assert_eq!(
            &steps[..4],
            &[
                k(EventLoop, 1, 1, 1),
                k(ThreadPool, 1, 1, 1),
                k(EventLoop, 1, 3, 1),
                k(ThreadPool, 1, 3, 1)
            ]
        );
        // The second repetition round starts only after the whole matrix ran once.
        assert!(steps[..8].iter().all(|s| s.repetition == 1));
        assert_eq!(steps[8], k(EventLoop, 1, 1, 2));
    }

    #[test]
    fn sequential_runs_one_mode_then_the_other_with_repetitions_back_to_back() {
        let steps = plan(&spec("  repetitions: 2\n  order: sequential"));
        assert_eq!(steps.len(), 16);
        assert_eq!(
            &steps[..3],
            &[
                k(EventLoop, 1, 1, 1),
                k(EventLoop, 1, 1, 2),
                k(EventLoop, 1, 3, 1)
            ]
        );
        assert!(steps[..8].iter().all(|s| s.mode == EventLoop));
        assert!(steps[8..].iter().all(|s| s.mode == ThreadPool));
    }

    #[test]
    fn every_configuration_appears_exactly_once_per_repetition() {
        for order in ["interleaved", "sequential"] {
            let steps = plan(&spec(&format!("  repetitions: 3\n  order: {order}")));
            let mut unique = steps.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), steps.len());
            assert_eq!(steps.len(), 2 * 2 * 2 * 3);
        }
    }

    #[test]
    fn generator_shares_add_up_to_the_totals() {
        let loads = generator_loads(&spec(""));
        assert_eq!(loads.len(), 3);
        assert_eq!(
            loads.iter().map(|l| l.rate.unwrap()).collect::<Vec<_>>(),
            [34, 34, 34]
        );
        // Connections need not divide evenly: the shares differ by at most one.
        assert_eq!(
            loads.iter().map(|l| l.connections).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(loads[0].path, "/cpu?ms=10");
        let args = loads[2].args();
        assert!(args.windows(2).any(|w| w == ["--rate", "34"]));
        assert!(args.windows(2).any(|w| w == ["--model", "open"]));
        assert!(args.windows(2).any(|w| w == ["--concurrency", "3"]));
    }

    #[test]
    fn closed_model_gives_each_generator_one_connection_per_request_in_flight() {
        let mut s = spec("");
        s.load.model = LoadModel::Closed;
        s.load.rate = None;
        s.load.concurrency = Some(8);
        let loads = generator_loads(&s);
        assert_eq!(
            loads.iter().map(|l| l.concurrency).collect::<Vec<_>>(),
            [3, 3, 2]
        );
        assert_eq!(
            loads.iter().map(|l| l.connections).collect::<Vec<_>>(),
            [3, 3, 2]
        );
        assert!(loads.iter().all(|l| l.rate.is_none()));
    }

    #[test]
    fn workload_env_names_the_step_and_the_spec_settings() {
        let s = spec("");
        let env = workload_env(&s, &k(ThreadPool, 2, 3, 1));
        let get = |name: &str| env_var(&env, name);
        assert_eq!(get("LOOPSCALE_MODE"), Some("thread-pool"));
        assert_eq!(get("LOOPSCALE_PROCESSES"), Some("2"));
        assert_eq!(get("LOOPSCALE_GIL"), Some("true"));
        assert_eq!(get("LOOPSCALE_THREADPOOL_SIZE"), Some("40"));
        assert_eq!(get("LOOPSCALE_BALANCING"), None);
    }

    #[test]
    fn each_mode_gets_its_own_overheads_where_set_and_the_workload_wide_ones_elsewhere() {
        let yaml = r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {name: plan}
spec:
  workload:
    modes: [event-loop, thread-pool]
    requestOverheadUs: 100
    resumeOverheadUs: 50
    connectionOverheadUs: 80
    workingSetKiB: 256
    overheadsByMode:
      eventLoop: {requestOverheadUs: 160, resumeOverheadUs: 47, connectionOverheadUs: 158}
      threadPool: {resumeOverheadUs: 146, workingSetKiB: 768}
  scenario: {route: cpu, cpuMillis: 10}
  matrix: {processes: [1], replicas: [1]}
  load: {model: closed, concurrency: 8}
"#;
        let s = validate_manifest(yaml).unwrap().spec;
        let overheads = |mode| {
            let env = workload_env(&s, &k(mode, 1, 1, 0));
            [
                "LOOPSCALE_REQUEST_OVERHEAD_US",
                "LOOPSCALE_RESUME_OVERHEAD_US",
                "LOOPSCALE_CONNECTION_OVERHEAD_US",
                "LOOPSCALE_WORKING_SET_KIB",
            ]
            .map(|name| {
                env_var(&env, name)
                    .unwrap_or_else(|| panic!("{name} not set"))
                    .to_string()
            })
        };
        assert_eq!(overheads(EventLoop), ["160", "47", "158", "256"]);
        assert_eq!(overheads(ThreadPool), ["100", "146", "80", "768"]);
        // Without the map both modes get the workload-wide values.
        let mut wide = s.clone();
        wide.workload.overheads_by_mode = None;
        assert_eq!(
            wide.workload.overheads(EventLoop),
            wide.workload.overheads(ThreadPool)
        );
        assert_eq!(wide.workload.overheads(EventLoop).request_us, 100);
    }

    #[test]
    fn the_latest_calibrations_overheads_paste_into_an_experiment() {
        // `workload/reference/calibrate` writes the block to paste; the checked-in run's must
        // validate and give each mode's pods the overheads that run measured the emulation with.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../workload/reference/calibration-latest.json"
        );
        let latest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let block = latest["experiment_overheads_yaml"].as_str().unwrap();
        let indented: String = block.lines().map(|l| format!("    {l}\n")).collect();
        let yaml = r#"
apiVersion: loopscale.dev/v1alpha1
kind: Experiment
metadata: {name: calibrated}
spec:
  workload:
    modes: [event-loop, thread-pool]
BLOCK  scenario: {route: hello}
  matrix: {processes: [1], replicas: [1]}
  load: {model: closed, concurrency: 8}
"#
        .replace("BLOCK", &indented);
        let s = validate_manifest(&yaml)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .spec;
        for mode in [EventLoop, ThreadPool] {
            let used = &latest["used_overhead_us"][mode.as_str()];
            let env = workload_env(&s, &k(mode, 1, 1, 0));
            for (key, var) in [
                ("request_us", "LOOPSCALE_REQUEST_OVERHEAD_US"),
                ("resume_us", "LOOPSCALE_RESUME_OVERHEAD_US"),
                ("connection_us", "LOOPSCALE_CONNECTION_OVERHEAD_US"),
                ("working_set_kib", "LOOPSCALE_WORKING_SET_KIB"),
            ] {
                let want = used[key].to_string();
                assert_eq!(env_var(&env, var), Some(want.as_str()), "{mode} {var}");
            }
        }
    }

    #[test]
    fn a_reference_server_gets_only_the_knobs_its_runtime_has() {
        let mut s = spec("");
        s.workload.implementation = Implementation::Reference;
        s.workload.thread_pool_size = 7;
        s.workload.libuv_thread_pool_size = 3;
        let names = |env: &[(String, String)]| -> Vec<String> {
            env.iter().map(|(k, _)| k.clone()).collect()
        };
        let express = workload_env(&s, &k(EventLoop, 2, 1, 1));
        assert_eq!(
            names(&express),
            [
                "LOOPSCALE_MODE",
                "LOOPSCALE_PROCESSES",
                "LOOPSCALE_LIBUV_THREADPOOL_SIZE"
            ]
        );
        assert!(express.contains(&("LOOPSCALE_LIBUV_THREADPOOL_SIZE".into(), "3".into())));
        assert!(express.contains(&("LOOPSCALE_PROCESSES".into(), "2".into())));
        let fastapi = workload_env(&s, &k(ThreadPool, 1, 1, 1));
        assert_eq!(
            names(&fastapi),
            [
                "LOOPSCALE_MODE",
                "LOOPSCALE_PROCESSES",
                "LOOPSCALE_THREADPOOL_SIZE",
                "LOOPSCALE_GIL",
                "LOOPSCALE_GIL_SWITCH_INTERVAL_MS"
            ]
        );
        assert!(fastapi.contains(&("LOOPSCALE_THREADPOOL_SIZE".into(), "7".into())));
        // No request overhead for either: the real framework's cost is real.
        s.workload.balancing = Some(crate::crd::Balancing::SharedSocket);
        let both = [
            workload_env(&s, &k(EventLoop, 1, 1, 1)),
            workload_env(&s, &k(ThreadPool, 1, 1, 1)),
        ];
        for env in both {
            assert!(!names(&env).contains(&"LOOPSCALE_REQUEST_OVERHEAD_US".to_string()));
            assert!(!names(&env).contains(&"LOOPSCALE_RESUME_OVERHEAD_US".to_string()));
            assert!(!names(&env).contains(&"LOOPSCALE_CONNECTION_OVERHEAD_US".to_string()));
            assert!(!names(&env).contains(&"LOOPSCALE_WORKING_SET_KIB".to_string()));
            assert!(env.contains(&("LOOPSCALE_BALANCING".into(), "shared-socket".into())));
        }
        // The emulation gets every knob.
        s.workload.implementation = Implementation::Emulated;
        assert_eq!(workload_env(&s, &k(EventLoop, 1, 1, 1)).len(), 11);
    }

    #[test]
    fn spec_durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
    }
}
