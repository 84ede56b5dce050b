//! Running the real load generator, `loopscale-workload load`, and reading its report: every
//! test that drives load does it through the generator the experiments use.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use loopscale_workload::report::Report;

use super::{wait_bounded, workload_command};

/// Room over a run's own length for process start, the drain and a busy machine.
const SLACK: Duration = Duration::from_secs(30);

/// Runs `loopscale-workload` with `args`, killing it (and failing the test) after `limit`.
pub fn run_generator(args: &[&str], limit: Duration) -> Output {
    run_generator_with_env(args, &[], limit)
}

/// Like [`run_generator`], with extra environment variables.
pub fn run_generator_with_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let (role, rest) = args.split_first().expect("a role (load, merge)");
    let mut command = workload_command(role);
    command.args(rest);
    for (key, value) in env {
        command.env(key, value);
    }
    wait_bounded(command.spawn().expect("spawn loopscale-workload"), limit)
}

/// A fresh path for a report file, under cargo's scratch space for integration tests, one
/// folder per test process.
pub fn temp_report(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("loopscale-load-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Reads a report written by the generator.
pub fn read_report(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).expect("report file written");
    Report::from_json(&text).expect("valid report")
}

/// Asserts that the run had requests and every one got a 2xx/3xx answer.
pub fn assert_all_ok(report: &Report) {
    let s = &report.summary;
    assert!(
        s.ok > 0 && s.errors.total() == 0 && s.ok == s.requests,
        "{s:?}"
    );
}

/// One generator run against one server: the model, route and timing in the generator's own
/// flags, the report on stdout (`--report -`).
#[derive(Debug, Clone)]
pub struct Load {
    target: String,
    path: String,
    model: Model,
    connections: Option<u32>,
    keep_alive: bool,
    warmup: Duration,
    duration: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Model {
    Closed { concurrency: u32 },
    Open { rate: f64 },
}

impl Load {
    /// `concurrency` loops, each sending its next request when the previous one ends, on as many
    /// connections. No warm-up and 2 s unless set.
    pub fn closed(target: &str, path: &str, concurrency: u32) -> Load {
        Load::new(target, path, Model::Closed { concurrency })
    }

    /// `rate` requests per second at fixed intended times, latency measured from them.
    pub fn open(target: &str, path: &str, rate: f64) -> Load {
        Load::new(target, path, Model::Open { rate })
    }

    fn new(target: &str, path: &str, model: Model) -> Load {
        Load {
            target: target.to_string(),
            path: path.to_string(),
            model,
            connections: None,
            keep_alive: true,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
        }
    }

    pub fn connections(mut self, connections: u32) -> Load {
        self.connections = Some(connections);
        self
    }

    /// Every request on a new connection (`--disable-keepalive`).
    pub fn new_connection_per_request(mut self) -> Load {
        self.keep_alive = false;
        self
    }

    pub fn warmup(mut self, warmup: Duration) -> Load {
        self.warmup = warmup;
        self
    }

    pub fn duration(mut self, duration: Duration) -> Load {
        self.duration = duration;
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["--target".into(), self.target.clone()];
        args.extend(["--path".into(), self.path.clone()]);
        match self.model {
            Model::Closed { concurrency } => args.extend([
                "--model".into(),
                "closed".into(),
                "--concurrency".into(),
                concurrency.to_string(),
            ]),
            Model::Open { rate } => {
                args.extend(["--model".into(), "open".into()]);
                args.extend(["--rate".into(), rate.to_string()]);
            }
        }
        if let Some(connections) = self.connections {
            args.extend(["--connections".into(), connections.to_string()]);
        }
        if !self.keep_alive {
            args.push("--disable-keepalive".into());
        }
        args.extend(["--warmup".into(), format!("{}ms", self.warmup.as_millis())]);
        args.extend([
            "--duration".into(),
            format!("{}ms", self.duration.as_millis()),
        ]);
        args.extend(["--report".into(), "-".into()]);
        args
    }

    /// Starts the generator and returns at once; [`RunningLoad::report`] waits for the report.
    pub fn start(self) -> RunningLoad {
        let child = workload_command("load")
            .args(self.args())
            .spawn()
            .expect("spawn loopscale-workload load");
        RunningLoad {
            child: Some(child),
            deadline: Instant::now() + self.warmup + self.duration + SLACK,
            load: self,
        }
    }

    /// Runs the generator to the end and returns its report.
    pub fn run(self) -> Report {
        self.start().report()
    }
}

/// A generator process; killed if dropped before its report was read (a failed test).
pub struct RunningLoad {
    child: Option<Child>,
    deadline: Instant,
    load: Load,
}

impl RunningLoad {
    /// Waits for the run to end; panics unless it exits 0 with a valid report on stdout.
    pub fn report(mut self) -> Report {
        let child = self.child.take().expect("the report is read once");
        let limit = self.deadline.saturating_duration_since(Instant::now());
        let output = wait_bounded(child, limit);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{:?}: exit {:?}; stderr:\n{stderr}",
            self.load,
            output.status
        );
        Report::from_json(&String::from_utf8_lossy(&output.stdout))
            .unwrap_or_else(|e| panic!("{:?}: no valid report ({e}); stderr:\n{stderr}", self.load))
    }
}

impl Drop for RunningLoad {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
